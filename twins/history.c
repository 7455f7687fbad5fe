/* history.c: the bounded time series of numeric leaves, one per (twin, path), in the "history"
 * database. It stores and reads points; what is historized is telemetry.c's decision (paths are
 * relative to `reported`: "vitals.hr"), and which series go when their leaf does.
 *
 * Key: id "\0" path. Data (MDB_DUPSORT | MDB_DUPFIXED): 16 bytes, the big-endian uint64 ts
 * (>= 0) then the double's 8 bytes in big-endian order, so LMDB keeps the duplicates in time
 * order and the oldest is the first.
 */
#include "twins_int.h"

#include <errno.h>

#define HKEY_MAX (TWIN_ID_MAX + 1 + TWIN_PATH_MAX)

static int hkey(const char *id, size_t id_len, const char *path, size_t path_len, char *buf,
                MDB_val *k, char *err)
{
    if (twins__check_id(id, id_len, err))
        return -EINVAL;
    if (!path || path_len == 0 || path_len > TWIN_PATH_MAX) {
        twins__errf(err, "history path must be 1..%d bytes", TWIN_PATH_MAX);
        return -EINVAL;
    }
    memcpy(buf, id, id_len);
    buf[id_len] = '\0';
    memcpy(buf + id_len + 1, path, path_len);
    k->mv_size = id_len + 1 + path_len;
    k->mv_data = buf;
    return 0;
}

static void point_put(unsigned char *b, int64_t ts, double value)
{
    uint64_t t = (uint64_t)ts, v;

    memcpy(&v, &value, sizeof v);
    for (int i = 0; i < 8; i++) {
        b[7 - i] = (unsigned char)(t >> (8 * i));
        b[15 - i] = (unsigned char)(v >> (8 * i));
    }
}

static void point_get(const unsigned char *b, int64_t *ts, double *value)
{
    uint64_t t = 0, v = 0;

    for (int i = 0; i < 8; i++) {
        t = t << 8 | b[i];
        v = v << 8 | b[8 + i];
    }
    *ts = (int64_t)t;
    memcpy(value, &v, sizeof *value);
}

/* The history cursor of a write transaction: write-transaction cursors cannot be renewed, so
 * there is one per transaction, opened on first use and closed with the transaction. */
static int hist_cursor(struct twin_txn *txn, char *err)
{
    int rc;

    if (txn->hist)
        return 0;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_history, &txn->hist);
    if (rc) {
        txn->hist = NULL;
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    }
    return 0;
}

int twin_history_append(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                        size_t path_len, int64_t ts, double value, char *err)
{
    char kb[HKEY_MAX];
    unsigned char pt[16];
    MDB_val k, d = {sizeof pt, pt};
    unsigned max;
    size_t n;
    int rc;

    rc = store__need_write(txn, "twin_history_append", err);
    if (!rc)
        rc = hkey(id, id_len, path, path_len, kb, &k, err);
    if (rc)
        return rc;
    if (ts < 0) {
        twins__errf(err, "history timestamp %lld is negative", (long long)ts);
        return -EINVAL;
    }
    max = atomic_load(&txn->s->history_max);
    if (max == 0)
        return 0; /* history is switched off */
    point_put(pt, ts, value);
    rc = hist_cursor(txn, err);
    if (rc)
        return rc;
    rc = mdb_cursor_put(txn->hist, &k, &d, 0);
    if (!rc)
        rc = mdb_cursor_count(txn->hist, &n);
    while (!rc && n > max) {
        MDB_val fk, fd;

        rc = mdb_cursor_get(txn->hist, &fk, &fd, MDB_FIRST_DUP);
        if (!rc)
            rc = mdb_cursor_del(txn->hist, 0);
        n--;
    }
    if (rc)
        return store__mdb_error(txn, rc, "appending history", err);
    return 0;
}

int history__remove(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                    size_t path_len, char *err)
{
    char kb[HKEY_MAX];
    MDB_val k, d;
    int rc;

    rc = store__need_write(txn, "history__remove", err);
    if (!rc)
        rc = hkey(id, id_len, path, path_len, kb, &k, err);
    if (!rc)
        rc = hist_cursor(txn, err);
    if (rc)
        return rc;
    rc = mdb_cursor_get(txn->hist, &k, &d, MDB_SET);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (!rc)
        rc = mdb_cursor_del(txn->hist, MDB_NODUPDATA); /* the key with all its points */
    if (rc)
        return store__mdb_error(txn, rc, "deleting history", err);
    return 0;
}

int twin_history_read(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                      size_t path_len, int64_t since_ms, twin_history_cb cb, void *ctx, char *err)
{
    char kb[HKEY_MAX];
    unsigned char from[16];
    MDB_val k, d = {sizeof from, from};
    MDB_cursor *c;
    int rc;

    if (!txn || !cb)
        return -EINVAL;
    rc = hkey(id, id_len, path, path_len, kb, &k, err);
    if (rc)
        return rc;
    /* the smallest point at since_ms: ts, then the eight zero bytes of +0.0 */
    point_put(from, since_ms > 0 ? since_ms : 0, 0.0);
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_history, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    rc = mdb_cursor_get(c, &k, &d, MDB_GET_BOTH_RANGE);
    while (rc == 0) {
        int64_t ts;
        double v;

        if (d.mv_size != 16) {
            mdb_cursor_close(c);
            twins__errf(err, "history point of %zu bytes, expected 16", d.mv_size);
            return -EBADMSG;
        }
        point_get(d.mv_data, &ts, &v);
        rc = cb(ctx, ts, v);
        if (rc) {
            mdb_cursor_close(c);
            return rc;
        }
        rc = mdb_cursor_get(c, &k, &d, MDB_NEXT_DUP);
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "reading history", err);
    return 0;
}

int history__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *count,
                         char *err)
{
    char kb[TWIN_ID_MAX + 1];
    MDB_val k, d;
    uint64_t n = 0;
    int rc;

    rc = store__need_write(txn, "history__remove_twin", err);
    if (rc)
        return rc;
    if ((rc = twins__check_id(id, id_len, err)))
        return rc;
    rc = hist_cursor(txn, err);
    if (rc)
        return rc;
    memcpy(kb, id, id_len);
    kb[id_len] = '\0';
    /* every key id "\0" path: the first at or after id "\0", deleted with all its points */
    for (;;) {
        k.mv_size = id_len + 1;
        k.mv_data = kb;
        rc = mdb_cursor_get(txn->hist, &k, &d, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND)
            break;
        if (rc)
            return store__mdb_error(txn, rc, "deleting history", err);
        if (k.mv_size <= id_len || memcmp(k.mv_data, kb, id_len + 1) != 0)
            break;
        rc = mdb_cursor_del(txn->hist, MDB_NODUPDATA);
        if (rc)
            return store__mdb_error(txn, rc, "deleting history", err);
        n++;
    }
    if (count)
        *count = n;
    return 0;
}

int twin_history_series(struct twin_txn *txn, const char *id, size_t id_len, twin_series_cb cb,
                        void *ctx, char *err)
{
    char kb[HKEY_MAX];
    MDB_val k, d;
    MDB_cursor *c;
    int rc;

    if (!txn || !cb)
        return -EINVAL;
    if ((rc = twins__check_id(id, id_len, err)))
        return rc;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_history, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    memcpy(kb, id, id_len);
    kb[id_len] = '\0';
    k.mv_size = id_len + 1;
    k.mv_data = kb;
    /* every key id "\0" path, in path order: the first at or after id "\0", then the next key */
    rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0) {
        size_t n = k.mv_size - (id_len + 1);

        if (k.mv_size <= id_len + 1 || memcmp(k.mv_data, kb, id_len + 1) != 0 ||
            n > TWIN_PATH_MAX)
            break;
        /* a copy: the callback may read (and a write transaction may move) the database */
        memcpy(kb + id_len + 1, (const char *)k.mv_data + id_len + 1, n);
        rc = cb(ctx, kb + id_len + 1, n);
        if (rc) {
            mdb_cursor_close(c);
            return rc;
        }
        rc = mdb_cursor_get(c, &k, &d, MDB_NEXT_NODUP);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "listing history", err);
    return 0;
}
