/* eventbox: the messages the hub must not lose once committed (rule transitions, presence,
 * command states, dispatch, predictions: what services act on), written in the transaction of
 * the change that produced them and deleted once the broker acknowledged them, so a full queue
 * or a crash delays them but never drops them. Opaque here: a topic, correlation data, a
 * payload, the publisher's class and QoS.
 *
 * Layout (store.c opens the database):
 *   "events"  be64(seq) -> u8 format (1), u8 class, u8 qos, u8 0, le32 topic_len, le32 corr_len,
 *                          topic, correlation data, payload
 * seq: one more than the last key (so it only grows while the database is not emptied, and
 * an emptied one starts again at 1: no reader keeps numbers across restarts). */
#include "twins_int.h"

#include <errno.h>

#define HEAD 12

static void le32_put(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t le32_get(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int twin_eventbox_add(struct twin_txn *txn, const struct twin_event *ev, uint64_t max_stored,
                      uint64_t *seq, char *err)
{
    int rc = store__need_write(txn, "twin_eventbox_add", err);
    if (rc)
        return rc;
    if (!ev->topic || ev->topic_len == 0 || ev->topic_len > TWIN_EVENT_TOPIC_MAX ||
        ev->corr_len > TWIN_EVENT_CORR_MAX || ev->len > TWIN_EVENT_PAYLOAD_MAX ||
        (ev->len && !ev->payload) || (ev->corr_len && !ev->corr)) {
        twins__errf(err, "event message: bad topic, correlation data or payload size");
        return -EINVAL;
    }
    MDB_stat st;
    if (max_stored && (rc = mdb_stat(txn->txn, txn->s->dbi_events, &st)) == 0 &&
        st.ms_entries >= max_stored) {
        twins__errf(err, "%zu event messages wait for the broker already (the limit)",
                    (size_t)st.ms_entries);
        return -ENOSPC;
    }
    if (rc)
        return store__mdb_error(txn, rc, "counting event messages", err);
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn->txn, txn->s->dbi_events, &c)))
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    MDB_val k, v;
    uint64_t next = 1;
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    if (rc == 0 && k.mv_size == 8)
        next = store__be64_get(k.mv_data) + 1;
    else if (rc && rc != MDB_NOTFOUND) {
        mdb_cursor_close(c);
        return store__mdb_error(txn, rc, "the last event message", err);
    }
    unsigned char kb[8];
    store__be64_put(kb, next);
    k = (MDB_val){8, kb};
    v = (MDB_val){HEAD + ev->topic_len + ev->corr_len + ev->len, NULL};
    rc = mdb_cursor_put(c, &k, &v, MDB_RESERVE | MDB_APPEND);
    mdb_cursor_close(c);
    if (rc)
        return store__mdb_error(txn, rc, "storing an event message", err);
    unsigned char *p = v.mv_data;
    p[0] = 1;
    p[1] = ev->cls;
    p[2] = ev->qos;
    p[3] = 0;
    le32_put(p + 4, (uint32_t)ev->topic_len);
    le32_put(p + 8, (uint32_t)ev->corr_len);
    memcpy(p + HEAD, ev->topic, ev->topic_len);
    if (ev->corr_len)
        memcpy(p + HEAD + ev->topic_len, ev->corr, ev->corr_len);
    if (ev->len)
        memcpy(p + HEAD + ev->topic_len + ev->corr_len, ev->payload, ev->len);
    if (seq)
        *seq = next;
    return 0;
}

int twin_eventbox_list(struct twin_txn *txn, uint64_t after, unsigned max, twin_event_cb cb,
                       void *ctx, char *err)
{
    if (!txn->s->has_events)
        return 0;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn->txn, txn->s->dbi_events, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    unsigned char kb[8];
    store__be64_put(kb, after + 1);
    MDB_val k = {8, kb}, v;
    unsigned n = 0;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && n < max) {
        const unsigned char *p = v.mv_data;
        uint32_t tl = v.mv_size >= HEAD ? le32_get(p + 4) : 0;
        uint32_t cl = v.mv_size >= HEAD ? le32_get(p + 8) : 0;
        if (k.mv_size != 8 || v.mv_size < HEAD || p[0] != 1 || tl == 0 ||
            (uint64_t)tl + cl > v.mv_size - HEAD) {
            mdb_cursor_close(c);
            twins__errf(err, "event message %llu is damaged (%zu bytes)",
                        k.mv_size == 8 ? (unsigned long long)store__be64_get(k.mv_data) : 0ull,
                        v.mv_size);
            return -EBADMSG;
        }
        struct twin_event ev = {
            .seq = store__be64_get(k.mv_data),
            .cls = p[1],
            .qos = p[2],
            .topic = (const char *)p + HEAD,
            .topic_len = tl,
            .corr = cl ? p + HEAD + tl : NULL,
            .corr_len = cl,
            .payload = p + HEAD + tl + cl,
            .len = v.mv_size - HEAD - tl - cl,
        };
        if ((rc = cb(ctx, &ev))) {
            mdb_cursor_close(c);
            return rc;
        }
        n++;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : store__mdb_error(txn, rc, "listing events", err);
}

int twin_eventbox_done(struct twin_txn *txn, uint64_t seq, char *err)
{
    int rc = store__need_write(txn, "twin_eventbox_done", err);
    if (rc)
        return rc;
    unsigned char kb[8];
    store__be64_put(kb, seq);
    MDB_val k = {8, kb};
    rc = mdb_del(txn->txn, txn->s->dbi_events, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return -ENOENT;
    return rc ? store__mdb_error(txn, rc, "deleting an event message", err) : 0;
}

int twin_eventbox_count(struct twin_txn *txn, uint64_t *n, char *err)
{
    MDB_stat st;
    *n = 0;
    if (!txn->s->has_events)
        return 0;
    int rc = mdb_stat(txn->txn, txn->s->dbi_events, &st);
    if (rc)
        return store__mdb_error(txn, rc, "counting event messages", err);
    *n = st.ms_entries;
    return 0;
}
