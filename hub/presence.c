/* presence: devices/{id}/status, "online" or "offline" (plain text or a msgpack string),
 * usually the device's retained will. One write transaction sets `connected` and `last_seen`
 * (twin_presence_apply); after the commit the state is published, an event
 * {type: "presence", connected, ts} when `connected` changed, and on "online" what the device
 * may have missed: its delta (devices/{id}/desired, when not empty) and every command still
 * queued or sent (commands.c).
 *
 * Choices (the design is silent):
 * - A retained status is the broker replaying what it holds, at every subscribe of the hub: it
 *   is applied only when it changes `connected` (the hub missed it while it was away), and then
 *   like a live one; otherwise it changes nothing, not even last_seen, and re-sends nothing
 *   (after a restart the hub re-sends to connected devices by itself, see main.c).
 * - An empty payload (someone clearing the retained status) is ignored; "offline" for a twin
 *   that does not exist changes nothing (a deleted twin's will must not bring it back).
 *
 * Threads: Paho's receive thread (presence_on_status), like the rest of ingest. */
#include <errno.h>
#include <string.h>

#include "hub.h"
#include "log.h"

/* Reads "online" / "offline", plain or as a msgpack str. Returns 0 or -EINVAL. */
static int parse_status(const unsigned char *p, size_t len, bool *online)
{
    const unsigned char *s = p;
    size_t n = len;
    if (len >= 1 && p[0] >= 0xa0 && p[0] <= 0xbf) { /* fixstr */
        s = p + 1;
        n = p[0] & 0x1f;
        if (n != len - 1)
            return -EINVAL;
    } else if (len >= 2 && p[0] == 0xd9) { /* str 8 */
        s = p + 2;
        n = p[1];
        if (n != len - 2)
            return -EINVAL;
    }
    if (n == 6 && memcmp(s, "online", 6) == 0)
        *online = true;
    else if (n == 7 && memcmp(s, "offline", 7) == 0)
        *online = false;
    else
        return -EINVAL;
    return 0;
}

struct presence {
    const struct bridge_topic *t;
    bool online, retained;
    int64_t now;
    struct outlist *out;
    struct twin_presence_result res;
    struct ingest *in;
    unsigned flags; /* PUB_* the rules' actions need */
    bool skipped; /* a replay that changes nothing */
    char err[TWIN_ERR_LEN];
};

static int presence_fn(struct twin_txn *txn, void *ctx)
{
    struct presence *a = ctx;
    const struct bridge_topic *t = a->t;
    outlist_start(a->out, txn);
    a->skipped = false;
    a->flags = 0;
    if (a->retained) {
        struct twin_doc doc;
        int rc = twin_get(txn, t->id, t->id_len, &doc, a->err);
        if (rc == -ENOENT) {
            a->skipped = !a->online;
        } else if (rc < 0) {
            return rc;
        } else if (doc.connected == a->online) {
            a->skipped = true;
        }
        if (a->skipped)
            return 0;
    }
    int rc = twin_presence_apply(txn, t->id, t->id_len, a->online, a->now, &a->res, a->err);
    if (rc < 0)
        return rc;
    /* Marked sent in this transaction, published after its commit (see commands.c). */
    if (a->online && (rc = commands_send_pending(txn, t->id, t->id_len, a->now, a->out, a->err)))
        return rc;
    if (!a->res.changed)
        return 0;
    if ((rc = out_event_presence(a->out, t->id, t->id_len, a->online, a->now)) < 0)
        return rc;
    if (!a->in->rules)
        return 0;
    rules_changes_reset(&a->in->run.changes);
    rules_changes_add(&a->in->run.changes, "connected", 9);
    return hub_rules_on_change(a->in->rules, &a->in->run, txn, t->id, t->id_len, NULL, a->now,
                               a->out, &a->flags, a->err);
}

void presence_on_status(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t)
{
    struct presence a = {.t = t, .retained = m->retained, .now = hub_now_ms(), .out = &in->out,
                         .in = in};
    if (m->len == 0) {
        log_debug("empty status ignored", "id=%.*s", (int)t->id_len, t->id);
        return;
    }
    if (parse_status(m->payload, m->len, &a.online) < 0) {
        report_reject(in->report, REPORT_INVALID, m->topic, m->topic_len,
                      "status must be 'online' or 'offline' (text or a msgpack string)");
        return;
    }
    char err[TWIN_ERR_LEN] = "";
    int rc = twin_store_write(in->store, presence_fn, &a, err);
    if (rc == -ENOENT) {
        outlist_reset(&in->out);
        log_debug("offline for a twin that does not exist ignored", "id=%.*s", (int)t->id_len,
                  t->id);
        return;
    }
    if (rc == -E2BIG || rc == -EINVAL || rc == -EBADMSG) {
        outlist_reset(&in->out);
        if (rc == -EBADMSG)
            log_error("stored twin unreadable; status not applied", "id=%.*s err=\"%s\"",
                      (int)t->id_len, t->id, a.err);
        report_reject(in->report, report_kind_of(rc == -EBADMSG ? -EINVAL : rc), m->topic,
                      m->topic_len, a.err);
        return;
    }
    if (rc < 0)
        ingest_fatal(t, "status", rc, err[0] ? err : a.err);
    if (a.skipped) {
        atomic_fetch_add(&in->stats.retained, 1);
        return;
    }
    atomic_fetch_add(&in->stats.status, 1);
    log_debug("presence", "id=%.*s online=%d changed=%d version=%llu", (int)t->id_len, t->id,
              a.online, a.res.changed, (unsigned long long)a.res.version);
    if (publisher_twin(in->pub, t->id, t->id_len,
                       PUB_STATE | a.flags | (a.online ? PUB_DELTA : 0)) < 0)
        log_warn_limited("publication postponed to the next restart", "id=%.*s reason=\"no memory\"",
                 (int)t->id_len, t->id);
    ingest_flush(in);
}
