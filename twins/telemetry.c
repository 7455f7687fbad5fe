/* telemetry.c: applying one device telemetry map to its twin inside a write transaction:
 * validation, the seq check, the merge into `reported` with meta timestamps, history of numeric
 * leaves (and deleting the series of leaves that are gone), the delta, version and outbox. The
 * device id has been validated by the caller; the transaction is the caller's
 * (twin_store_write).
 *
 * Everything is validated before anything is written, so a rejected message leaves the store
 * as it was even when the caller keeps using the transaction. The last check, the size of the
 * new document (twin_put, -E2BIG), comes after the merge: so the merge only collects what
 * history must do, and history does it once the document is stored.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>

/* ---------------------------------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------------------------------ */

static int check_uint(const msgpack_object *v, const char *key, uint64_t *out, char *err)
{
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = v->via.u64;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        twins__errf(err, "%s must be a non-negative integer, got %" PRId64, key, v->via.i64);
    else
        twins__errf(err, "%s must be a non-negative integer, got %s", key,
                    check__type_name(v->type));
    return -EINVAL;
}

/* ---------------------------------------------------------------------------------------------
 * Apply
 * ------------------------------------------------------------------------------------------ */

/* ---------------------------------------------------------------------------------------------
 * Batches: several timestamped readings in one message ({"batch": [{"ts": ..., ...}, ...]})
 * ------------------------------------------------------------------------------------------ */

struct reading {
    int64_t ts;
    uint32_t order;     /* in the message: equal times keep it */
    msgpack_object map; /* the reading without its ts */
};

static int reading_cmp(const void *a, const void *b)
{
    const struct reading *x = a, *y = b;

    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

/* The newest meta time under m: a leaf's own, or the newest in a subtree; INT64_MIN if none. */
static int64_t meta_newest(const msgpack_object *m)
{
    int64_t best = INT64_MIN;

    if (m->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return m->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)m->via.u64;
    if (m->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return m->via.i64;
    if (m->type != MSGPACK_OBJECT_MAP)
        return best;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        int64_t t = meta_newest(&m->via.map.ptr[i].val);
        if (t > best)
            best = t;
    }
    return best;
}

/* `patch` without what the twin holds from later than ts: a leaf, or a subtree, whose meta time
 * is newer keeps its value, and the reading's value only goes to history. So a device that
 * flushes what it buffered offline after newer live readings does not turn its twin back. */
static int older_out(msgpack_zone *z, const msgpack_object *patch, const msgpack_object *meta,
                     int64_t ts, struct hist_ops *c, char *path, size_t len, msgpack_object *out)
{
    msgpack_object_kv *kv = msgpack_zone_malloc(z, (patch->via.map.size + 1) * sizeof *kv);
    uint32_t n = 0;

    if (!kv)
        return -ENOMEM;
    for (uint32_t i = 0; i < patch->via.map.size; i++) {
        const msgpack_object_kv *e = &patch->via.map.ptr[i];
        const msgpack_object *mk =
            meta->type == MSGPACK_OBJECT_MAP
                ? twin_value_get(meta, e->key.via.str.ptr, e->key.via.str.size)
                : NULL;
        size_t sub = histops__push(path, len, &e->key);

        /* a map into a map: entry by entry (past TWIN_PATH_MAX, as one: nothing so deep has
         * history, and a path cut short would name another series) */
        if (sub && mk && mk->type == MSGPACK_OBJECT_MAP && e->val.type == MSGPACK_OBJECT_MAP) {
            msgpack_object inner;
            int rc = older_out(z, &e->val, mk, ts, c, path, sub, &inner);
            if (rc)
                return rc;
            kv[n].key = e->key;
            kv[n++].val = inner;
        } else if (mk && meta_newest(mk) > ts) {
            if (sub)
                histops__under(c, &e->val, path, sub);
        } else {
            kv[n++] = *e;
        }
    }
    *out = *patch;
    out->via.map.ptr = kv;
    out->via.map.size = n;
    return c->rc;
}

/* Checks the readings of a batch and collects them, with the message's own keys (patch, at
 * message time ts) as one more. Returns the count, or -EINVAL with a reason. */
static int readings_of(msgpack_zone *z, const msgpack_object *batch, const msgpack_object *patch,
                       int64_t ts, int64_t now_ms, uint64_t max_skew, struct reading **out,
                       char *err)
{
    uint32_t n = batch->via.array.size, k = 0;
    struct reading *r = msgpack_zone_malloc(z, (n + 1) * sizeof *r);

    if (!r) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    if (patch->via.map.size)
        r[k++] = (struct reading){ts, 0, *patch};
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *m = &batch->via.array.ptr[i];
        const msgpack_object *t = NULL;
        msgpack_object_kv *kv;
        uint32_t nk = 0;

        if (m->type != MSGPACK_OBJECT_MAP) {
            twins__errf(err, "batch[%" PRIu32 "] must be a map with its ts, got %s", i,
                        check__type_name(m->type));
            return -EINVAL;
        }
        kv = msgpack_zone_malloc(z, (m->via.map.size + 1) * sizeof *kv);
        if (!kv) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        for (uint32_t j = 0; j < m->via.map.size; j++) {
            const msgpack_object_kv *e = &m->via.map.ptr[j];
            if (twins__key_is(&e->key, "ts", 2)) {
                t = &e->val;
            } else if (twins__key_is(&e->key, "seq", 3) || twins__key_is(&e->key, "boot", 4) ||
                       twins__key_is(&e->key, "batch", 5)) {
                twins__errf(err, "batch[%" PRIu32 "]: %.*s belongs to the message, not a reading",
                            i, (int)e->key.via.str.size, e->key.via.str.ptr);
                return -EINVAL;
            } else {
                kv[nk++] = *e;
            }
        }
        if (!t || t->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            t->via.u64 > (uint64_t)TWIN_TS_MAX) {
            twins__errf(err,
                        "batch[%" PRIu32 "]: each reading needs its ts (ms since 1970, up to "
                        "the year 10889)",
                        i);
            return -EINVAL;
        }
        if (max_skew && t->via.u64 > (uint64_t)now_ms && t->via.u64 - (uint64_t)now_ms > max_skew) {
            twins__errf(err,
                        "batch[%" PRIu32 "]: ts %" PRIu64 " is %" PRIu64
                        " ms ahead of the hub clock; limits.max_clock_skew is %" PRIu64 " ms",
                        i, t->via.u64, t->via.u64 - (uint64_t)now_ms, max_skew);
            return -EINVAL;
        }
        r[k].ts = (int64_t)t->via.u64;
        r[k].order = i + 1;
        r[k].map = *m;
        r[k].map.via.map.ptr = kv;
        r[k++].map.via.map.size = nk;
    }
    qsort(r, k, sizeof *r, reading_cmp);
    *out = r;
    return (int)k;
}

int twin_telemetry_apply(struct twin_txn *txn, const char *id, size_t id_len,
                         const msgpack_object *telemetry, int64_t now_ms,
                         struct twin_apply_result *res, char *err)
{
    const msgpack_object *seq_v = NULL, *ts_v = NULL, *boot_v = NULL, *batch_v = NULL;
    struct hist_ops ops;
    struct reading *rd = NULL;
    int nr = 0;
    struct twin_doc doc;
    msgpack_object patch, reported, meta;
    uint64_t seq = 0, ts_u = 0, max_skew;
    int64_t ts = now_ms;
    uint32_t nkeys;
    bool created, new_order = false;
    int rc;

    rc = store__need_write(txn, "twin_telemetry_apply", err);
    if (rc)
        return rc;
    if (!telemetry || !res || !id || id_len == 0 || id_len > TWIN_ID_MAX) {
        twins__errf(err, "twin_telemetry_apply: bad arguments");
        return -EINVAL;
    }
    if (telemetry->type != MSGPACK_OBJECT_MAP) {
        twins__errf(err, "telemetry must be a map, got %s", check__type_name(telemetry->type));
        return -EINVAL;
    }

    /* 1. validate everything, write nothing */
    rc = check__tree(telemetry, "reported", err);
    if (rc)
        return rc;
    nkeys = telemetry->via.map.size;
    for (uint32_t i = 0; i < telemetry->via.map.size; i++) {
        const msgpack_object_kv *kv = &telemetry->via.map.ptr[i];

        if (twins__key_is(&kv->key, "seq", 3)) {
            rc = check_uint(&kv->val, "seq", &seq, err);
            seq_v = &kv->val;
            nkeys--;
        } else if (twins__key_is(&kv->key, "ts", 2)) {
            rc = check_uint(&kv->val, "ts", &ts_u, err);
            if (!rc && ts_u > (uint64_t)TWIN_TS_MAX) {
                twins__errf(err, "ts %" PRIu64 " is out of range (after the year 10889)", ts_u);
                rc = -EINVAL;
            }
            ts = (int64_t)ts_u;
            ts_v = &kv->val;
            nkeys--;
        } else if (twins__key_is(&kv->key, "boot", 4)) {
            const msgpack_object *b = &kv->val;
            if (b->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
                b->type != MSGPACK_OBJECT_NEGATIVE_INTEGER &&
                (b->type != MSGPACK_OBJECT_STR || b->via.str.size == 0 ||
                 b->via.str.size > TWIN_BOOT_MAX)) {
                twins__errf(err, "boot must be an integer or a string of 1..%d bytes, got %s",
                            TWIN_BOOT_MAX, check__type_name(b->type));
                rc = -EINVAL;
            }
            boot_v = b;
            nkeys--;
        } else if (twins__key_is(&kv->key, "batch", 5)) {
            if (kv->val.type != MSGPACK_OBJECT_ARRAY) {
                twins__errf(err, "batch must be an array of readings, got %s",
                            check__type_name(kv->val.type));
                rc = -EINVAL;
            }
            batch_v = &kv->val;
            nkeys--;
        }
        if (rc)
            return rc;
    }
    /* a clock far ahead would sort every later point before this one, and history drops the
     * oldest first; behind is fine: devices flush readings they buffered offline */
    max_skew = atomic_load(&txn->s->max_skew);
    if (ts_v && max_skew && ts > now_ms && (uint64_t)ts - (uint64_t)now_ms > max_skew) {
        twins__errf(err,
                    "ts %" PRId64 " is %" PRIu64 " ms ahead of the hub clock; "
                    "limits.max_clock_skew is %" PRIu64 " ms",
                    ts, (uint64_t)ts - (uint64_t)now_ms, max_skew);
        return -EINVAL;
    }

    /* the patch: everything but seq, ts, boot and batch; a batch's readings in time order,
     * each checked, before anything is decided */
    patch = *telemetry;
    if (seq_v || ts_v || boot_v || batch_v) {
        msgpack_object_kv *kv = msgpack_zone_malloc(&txn->zone, (nkeys + 1) * sizeof *kv);
        uint32_t n = 0;

        if (!kv) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        for (uint32_t i = 0; i < telemetry->via.map.size; i++) {
            const msgpack_object_kv *src = &telemetry->via.map.ptr[i];

            if (!twins__key_is(&src->key, "seq", 3) && !twins__key_is(&src->key, "ts", 2) &&
                !twins__key_is(&src->key, "boot", 4) && !twins__key_is(&src->key, "batch", 5))
                kv[n++] = *src;
        }
        patch.via.map.ptr = kv;
        patch.via.map.size = n;
    }
    if (ts < 0) {
        /* only the hub clock can be negative; history would refuse it after the put */
        twins__errf(err, "no ts in the telemetry and now_ms %" PRId64 " is negative", ts);
        return -EINVAL;
    }
    if (batch_v) {
        nr = readings_of(&txn->zone, batch_v, &patch, ts, now_ms, max_skew, &rd, err);
        if (nr < 0)
            return nr;
    }

    /* 2. the twin as it is (or a new one within max_twins), and the seq check */
    rc = store__twin_load(txn, id, id_len, now_ms, "telemetry", &doc, &created, err);
    if (rc)
        return rc;
    res->created = created;
    res->delta_changed = false;
    res->gap = 0;
    res->restart = TWIN_RESTART_NONE;
    /* a new boot, or a device that came online again, starts a new seq order (if it had one:
     * the first boot a twin hears of, perhaps after its status, begins the first) */
    if (!created && doc.has_seq && boot_v &&
        !(doc.boot.type != MSGPACK_OBJECT_NIL && twin_value_equal(&doc.boot, boot_v))) {
        new_order = true;
        res->restart = TWIN_RESTART_BOOT;
    } else if (!created && seq_v && doc.seq_restart) {
        new_order = true;
        res->restart = TWIN_RESTART_ONLINE;
    }
    if (seq_v && !created && doc.has_seq && seq <= doc.seq && !new_order) {
        uint64_t after = atomic_load(&txn->s->seq_restart_after);
        if (seq == doc.seq) {
            res->outcome = TWIN_DUPLICATE; /* a redelivery: nothing changes */
            res->version = doc.version;
            return 0;
        }
        /* stale: counted in the twin; a run of them counting up by one is a device that
         * restarted without saying so, taken as one at limits.seq_restart_after in a row */
        uint64_t run = doc.stale.run && seq == doc.stale.seq + 1 ? doc.stale.run + 1 : 1;
        if (!after || run < after) {
            doc.stale.count++;
            doc.stale.run = run;
            doc.stale.seq = seq;
            doc.stale.ts = now_ms;
            doc.last_seen = now_ms;
            doc.id = id;
            doc.id_len = id_len;
            doc.version++;
            rc = store__twin_save(txn, &doc, false, err);
            if (rc)
                return rc;
            res->outcome = TWIN_STALE;
            res->version = doc.version;
            res->doc = doc;
            return 0;
        }
        new_order = true;
        res->restart = TWIN_RESTART_STALE_RUN;
    }

    /* 3. merge everything but seq, ts and boot into reported */
    histops__init(&ops, txn, ts);
    if (!batch_v) {
        rc = merge__apply(&txn->zone, &doc.reported, &patch, &doc.meta_reported, ts, &reported,
                          &meta, histops__leaf, histops__gone, &ops);
    } else {
        /* the readings in time order, each at its own time; the newest value of each leaf
         * stays in reported, every number goes to history */
        reported = doc.reported;
        meta = doc.meta_reported;
        rc = 0;
        for (int i = 0; i < nr && !rc && !ops.rc; i++) {
            char path[TWIN_PATH_MAX + 1];
            msgpack_object part, r2, m2;
            ops.ts = rd[i].ts;
            rc = older_out(&txn->zone, &rd[i].map, &meta, rd[i].ts, &ops, path, 0, &part);
            if (!rc)
                rc = merge__apply(&txn->zone, &reported, &part, &meta, rd[i].ts, &r2, &m2,
                                  histops__leaf, histops__gone, &ops);
            if (!rc) {
                reported = r2;
                meta = m2;
            }
        }
    }
    if (rc || ops.rc) {
        twins__errf(err, "out of memory merging telemetry");
        return -ENOMEM;
    }

    /* 4. the new state, and the delta against desired (nothing to do while desired is empty) */
    doc.id = id;
    doc.id_len = id_len;
    doc.reported = reported;
    doc.meta_reported = meta;
    rc = delta__refresh(&txn->zone, &doc, &res->delta_changed);
    if (rc) {
        twins__errf(err, "out of memory computing the delta");
        return rc;
    }
    doc.version++;
    doc.last_seen = now_ms;
    doc.stale.run = 0;
    /* the new order began with this seq; a new boot without one leaves it to the next seq */
    doc.seq_restart = seq_v ? false : doc.seq_restart || res->restart == TWIN_RESTART_BOOT;
    if (boot_v)
        doc.boot = *boot_v;
    if (seq_v) {
        if (!created && doc.has_seq && !new_order && seq - doc.seq > 1) {
            res->gap = seq - doc.seq - 1;
            doc.gaps.count++;
            doc.gaps.missed += res->gap;
            doc.gaps.from = doc.seq + 1;
            doc.gaps.to = seq - 1;
            doc.gaps.ts = now_ms;
        }
        doc.seq = seq;
        doc.has_seq = true;
    }
    rc = store__twin_save(txn, &doc, created, err); /* -E2BIG writes nothing */
    if (rc)
        return rc;

    /* 5. history: points of the numeric leaves written, series of those taken out */
    rc = histops__apply(txn, id, id_len, &ops, err);
    if (rc)
        return rc;
    res->outcome = TWIN_APPLIED;
    res->version = doc.version;
    res->doc = doc;
    return 0;
}
