/* history.c: the bounded time series of numeric leaves, one per (twin, path), in the "points"
 * database. It stores and reads points; what is historized is telemetry.c's decision (paths are
 * relative to `reported`: "vitals.hr"), and which series go when their leaf does.
 *
 * Key: id "\0" path. Data (MDB_DUPSORT | MDB_DUPFIXED): 16 bytes, big-endian: the ts in 6
 * bytes (ms since 1970, 0 .. 2^48 - 1, the year 10889), then 2 bytes that number the points of
 * one millisecond in the order they came (0, 1, ...), then the double's 8 bytes. So LMDB keeps
 * the duplicates in time order, points of one millisecond in arrival order, and two equal
 * readings as two points; the oldest is the first.
 *
 * Schema 1 stores kept points in "history" as ts (8 bytes) then value: points of one
 * millisecond came back in value order and equal ones were stored once. A writer that opens
 * such a store moves every series to "points" (history__migrate, in transactions of a bounded
 * size, so a crash midway leaves each series whole in one database or the other), then drops
 * "history" and writes schema 2. Until then a reader (a read-only opener) finds each series
 * in one of the two and reads both formats.
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

#define NTH_MAX 0xffff       /* points of one series in one millisecond: at most NTH_MAX + 1 */

static void point_put(unsigned char *b, int64_t ts, unsigned nth, double value)
{
    uint64_t t = (uint64_t)ts << 16 | nth, v;

    memcpy(&v, &value, sizeof v);
    for (int i = 0; i < 8; i++) {
        b[7 - i] = (unsigned char)(t >> (8 * i));
        b[15 - i] = (unsigned char)(v >> (8 * i));
    }
}

/* A point of either format: `v1` for schema 1's "history" (ts in 8 bytes, no number). */
static void point_get(const unsigned char *b, bool v1, int64_t *ts, unsigned *nth, double *value)
{
    uint64_t t = 0, v = 0;

    for (int i = 0; i < 8; i++) {
        t = t << 8 | b[i];
        v = v << 8 | b[8 + i];
    }
    *ts = v1 ? (int64_t)t : (int64_t)(t >> 16);
    if (nth)
        *nth = v1 ? 0 : (unsigned)(t & NTH_MAX);
    memcpy(value, &v, sizeof *value);
}

/* The history cursor of a write transaction: write-transaction cursors cannot be renewed, so
 * there is one per transaction, opened on first use and closed with the transaction. */
static int hist_cursor(struct twin_txn *txn, char *err)
{
    int rc;

    if (txn->hist)
        return 0;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_points, &txn->hist);
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
    MDB_val k, d;
    unsigned max, nth = 0, put = 0;
    size_t n;
    int64_t last;
    unsigned last_nth;
    double ignored;
    int rc;

    rc = store__need_write(txn, "twin_history_append", err);
    if (!rc)
        rc = hkey(id, id_len, path, path_len, kb, &k, err);
    if (rc)
        return rc;
    if (ts < 0 || ts > TWIN_TS_MAX) {
        twins__errf(err, "history timestamp %lld is %s", (long long)ts,
                    ts < 0 ? "negative" : "past 2^48 ms (the year 10889)");
        return -EINVAL;
    }
    max = atomic_load(&txn->s->history_max);
    if (max == 0)
        return 0; /* history is switched off */
    rc = hist_cursor(txn, err);
    if (rc)
        return rc;
    /* the point's number within its millisecond: one more than the last point at ts */
    rc = mdb_cursor_get(txn->hist, &k, &d, MDB_SET);
    if (rc == 0)
        rc = mdb_cursor_get(txn->hist, &k, &d, MDB_LAST_DUP);
    if (rc == 0) {
        point_get(d.mv_data, false, &last, &last_nth, &ignored);
        if (last < ts) {
            put = MDB_APPENDDUP; /* the usual case: a newer reading, at the end */
        } else if (last == ts) {
            nth = last_nth + 1;
            put = MDB_APPENDDUP;
        } else {
            /* an older reading: the last point at or before ts is the one before the first
             * point after ts (there is one: the last) */
            unsigned char probe[16];

            point_put(probe, ts + 1, 0, 0.0);
            d = (MDB_val){sizeof probe, probe};
            rc = mdb_cursor_get(txn->hist, &k, &d, MDB_GET_BOTH_RANGE);
            if (rc == 0)
                rc = mdb_cursor_get(txn->hist, &k, &d, MDB_PREV_DUP);
            if (rc == 0) {
                point_get(d.mv_data, false, &last, &last_nth, &ignored);
                if (last == ts)
                    nth = last_nth + 1;
            }
            if (rc == MDB_NOTFOUND)
                rc = 0; /* nothing before it */
        }
    } else if (rc == MDB_NOTFOUND) {
        rc = 0; /* a new series */
    }
    if (rc)
        return store__mdb_error(txn, rc, "appending history", err);
    if (nth > NTH_MAX)
        return 0; /* more than NTH_MAX + 1 points in one millisecond: the rest are not kept,
                   * rather than refusing the device's message (a clock stuck on one ts) */
    point_put(pt, ts, nth, value);
    d = (MDB_val){sizeof pt, pt};
    k.mv_size = id_len + 1 + path_len;
    k.mv_data = kb;
    rc = mdb_cursor_put(txn->hist, &k, &d, put);
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

/* Where the series under key k is: "points", or, in a store not yet migrated, "history".
 * Returns the database and sets *v1 for the old one. */
static MDB_dbi series_db(struct twin_txn *txn, MDB_val *k, bool *v1)
{
    MDB_val d;

    *v1 = false;
    if (!txn->s->has_legacy ||
        (txn->s->has_points && mdb_get(txn->txn, txn->s->dbi_points, k, &d) == 0))
        return txn->s->dbi_points;
    *v1 = true;
    return txn->s->dbi_legacy;
}

int twin_history_read(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                      size_t path_len, int64_t since_ms, twin_history_cb cb, void *ctx, char *err)
{
    char kb[HKEY_MAX];
    unsigned char from[16];
    MDB_val k, d = {sizeof from, from};
    MDB_cursor *c;
    bool v1;
    int rc;

    if (!txn || !cb)
        return -EINVAL;
    rc = hkey(id, id_len, path, path_len, kb, &k, err);
    if (rc)
        return rc;
    MDB_dbi dbi = series_db(txn, &k, &v1);
    /* the smallest point at since_ms: ts, number 0 (or, schema 1, the zero bytes of +0.0) */
    since_ms = since_ms < 0 ? 0 : since_ms;
    if (v1) {
        for (int i = 0; i < 16; i++)
            from[i] = i < 8 ? (unsigned char)((uint64_t)since_ms >> (8 * (7 - i))) : 0;
    } else if (since_ms > TWIN_TS_MAX) {
        return 0;
    } else {
        point_put(from, since_ms, 0, 0.0);
    }
    rc = mdb_cursor_open(txn->txn, dbi, &c);
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
        point_get(d.mv_data, v1, &ts, NULL, &v);
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

/* Every series key of twin `id` in `dbi`, in path order, to cb. */
static int series_walk(struct twin_txn *txn, MDB_dbi dbi, const char *id, size_t id_len,
                       twin_series_cb cb, void *ctx, char *err)
{
    char kb[HKEY_MAX];
    MDB_val k, d;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn->txn, dbi, &c);

    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    memcpy(kb, id, id_len);
    kb[id_len] = '\0';
    k.mv_size = id_len + 1;
    k.mv_data = kb;
    /* every key id "\0" path: the first at or after id "\0", then the next key */
    rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0) {
        size_t n = k.mv_size - (id_len + 1);

        if (k.mv_size <= id_len + 1 || memcmp(k.mv_data, kb, id_len + 1) != 0 || n > TWIN_PATH_MAX)
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

int twin_history_series(struct twin_txn *txn, const char *id, size_t id_len, twin_series_cb cb,
                        void *ctx, char *err)
{
    int rc;

    if (!txn || !cb)
        return -EINVAL;
    if ((rc = twins__check_id(id, id_len, err)))
        return rc;
    rc = txn->s->has_points ? series_walk(txn, txn->s->dbi_points, id, id_len, cb, ctx, err) : 0;
    if (!rc && txn->s->has_legacy) /* a store not yet migrated: the series not moved yet */
        rc = series_walk(txn, txn->s->dbi_legacy, id, id_len, cb, ctx, err);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Schema 1 to 2
 * ------------------------------------------------------------------------------------------ */

#define MIGRATE_POINTS (1u << 18) /* points moved per transaction, about 8 MiB of pages */

struct migrate {
    uint64_t series, points, dropped;
    bool done;
    char *err;
};

/* Moves series from "history" to "points" until MIGRATE_POINTS have moved or none is left;
 * twin_store_write runs it again from the start if the map had to grow. */
static int migrate_batch(struct twin_txn *txn, void *ctx)
{
    struct migrate *m = ctx;
    struct twin_store *s = txn->s;
    MDB_cursor *from, *to;
    MDB_val k, d;
    uint64_t moved = 0, series = 0, dropped = 0;
    int rc = mdb_cursor_open(txn->txn, s->dbi_legacy, &from);

    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", m->err);
    rc = mdb_cursor_open(txn->txn, s->dbi_points, &to);
    if (rc) {
        mdb_cursor_close(from);
        return store__mdb_error(txn, rc, "mdb_cursor_open", m->err);
    }
    m->done = false;
    while (moved < MIGRATE_POINTS && (rc = mdb_cursor_get(from, &k, &d, MDB_FIRST)) == 0) {
        char kb[HKEY_MAX + 64];
        MDB_val key = {k.mv_size < sizeof kb ? k.mv_size : sizeof kb, kb};
        int64_t prev = -1;
        unsigned nth = 0;

        MDB_val had;
        memcpy(kb, k.mv_data, key.mv_size);
        bool appended = mdb_get(txn->txn, s->dbi_points, &key, &had) == MDB_NOTFOUND;
        for (; rc == 0; rc = mdb_cursor_get(from, &k, &d, MDB_NEXT_DUP)) {
            unsigned char pt[16];
            MDB_val pd = {sizeof pt, pt};
            int64_t ts;
            double v;

            if (d.mv_size != 16) {
                dropped++;
                continue;
            }
            point_get(d.mv_data, true, &ts, NULL, &v);
            nth = ts == prev ? nth + 1 : 0;
            prev = ts;
            if (ts < 0 || ts > TWIN_TS_MAX || nth > NTH_MAX) {
                dropped++; /* beyond what schema 2 holds: none a device could have sent */
                continue;
            }
            point_put(pt, ts, nth, v); /* in order: ts, then the old (value) order */
            /* in order, so appended; a series a schema 1 writer touched while half moved
             * already has points: those land in their place */
            rc = mdb_cursor_put(to, &key, &pd, appended ? MDB_APPENDDUP : 0);
            if (rc)
                break;
            moved++;
        }
        if (rc != MDB_NOTFOUND)
            break;
        rc = mdb_cursor_get(from, &key, &d, MDB_SET);
        if (rc == 0)
            rc = mdb_cursor_del(from, MDB_NODUPDATA);
        if (rc)
            break;
        series++;
    }
    mdb_cursor_close(from);
    mdb_cursor_close(to);
    if (rc == MDB_NOTFOUND) {
        m->done = true;
        rc = 0;
    }
    if (rc)
        return store__mdb_error(txn, rc, "moving history to schema 2", m->err);
    m->series += series;
    m->points += moved;
    m->dropped += dropped;
    return 0;
}

static int migrate_finish(struct twin_txn *txn, void *ctx)
{
    struct migrate *m = ctx;
    MDB_dbi legacy;
    int rc = store__schema_put(txn, 2, m->err);

    /* opened here each time: mdb_drop closes the handle even when the commit then fails (a full
     * map) and twin_store_write runs this again */
    if (!rc && (rc = mdb_dbi_open(txn->txn, "history", 0, &legacy)) == 0)
        rc = mdb_drop(txn->txn, legacy, 1);
    if (rc == MDB_NOTFOUND)
        rc = 0; /* dropped by the run that committed */
    if (rc > 0)
        rc = store__mdb_error(txn, rc, "dropping the schema 1 history", m->err);
    return rc;
}

int history__migrate(struct twin_store *s, char *err)
{
    struct migrate m = {.err = err};
    int rc;

    do
        rc = twin_store_write(s, migrate_batch, &m, err);
    while (!rc && !m.done);
    if (!rc)
        rc = twin_store_write(s, migrate_finish, &m, err);
    if (!rc)
        s->has_legacy = false;
    return rc;
}
