/* fuzz_telemetry.c: what devices and services send about a twin, as the hub takes it: the
 * payload through twin_input_decode (size cap, pre-scan, JSON or msgpack decode), then into a
 * real LMDB store (twins/store.c) by twin_telemetry_apply, and, interleaved, by the other
 * outside writers of a twin: twin_desired_apply (a service's desired/set patch),
 * twin_presence_apply (a device's status) and twin_delete; then the stored twin read back
 * (twin_get_raw, twin_doc_decode, twin_doc_encode, twin_json_write).
 *
 * Input: one flags byte, then up to MAX_MSGS messages separated by 0xc1 (FUZZ_SEP). Flags:
 * bit 0 max_depth 32 (else 16), bit 1 max_keys 8 (else 64), bit 2 max_payload 256 (else 4096).
 * A message is one control byte, then the payload. Control: bits 0-1 pick one of four device
 * ids (one of them 128 bytes long); bits 2-4 move the hub clock by (((ctrl >> 2) & 7) - 2)
 * seconds first, so it may also step back; bits 5-7 pick what the message is:
 *   0-3  telemetry: the payload as the device sent it
 *   4    desired patch (the payload), no expected version
 *   5    desired patch after one byte of expected version
 *   6    presence: online when the payload is empty or its first byte is odd, else offline
 *   7    delete; a first payload byte, if any, is the expected version
 *
 * The store is opened once per process in a private temporary directory with small limits
 * (history 4 points, twins up to 8 KiB, at most 3 twins: the fourth device is refused with
 * -E2BIG). Each input runs in one write transaction that is then aborted, so every input starts
 * from an empty store: a crasher replays alone, and the store stays small. Messages of one
 * input meet the twins that the earlier messages made, so merges across messages happen.
 *
 * Invariants checked after every message:
 *   - a rejected payload is -EBADMSG, -ELOOP or -E2BIG with a reason; a decoded one is written
 *     as valid JSON by twin_json_write;
 *   - bad input changes nothing: after any refusal (-EINVAL, -E2BIG, -EBUSY, -ENOENT), and
 *     after a duplicate or stale seq, the stored document is byte for byte the same and the
 *     counts of twins, history series and points, outbox entries and tombstones have not moved;
 *   - telemetry: version +1 (a new twin continues a deleted one's version), last_seen = the
 *     hub clock, seq as sent (or kept), reported and meta.reported equal to twin_merge of the
 *     old ones with the message minus seq and ts at the message's ts (or the hub clock),
 *     desired untouched;
 *   - desired: version +1, desired and meta.desired equal to twin_merge of the old ones with the
 *     patch at the hub clock, reported untouched, -EBUSY exactly when the expected version is
 *     not the twin's;
 *   - presence: version +1, connected and last_seen as told, reported and desired untouched;
 *   - delete: the twin is gone, its tombstone holds its last version, -EBUSY exactly when the
 *     expected version is not the twin's;
 *   - every stored twin: its delta is twin_delta_compute(desired, reported); its bytes decode
 *     and encode back to the same bytes and twin_doc_version agrees; its reported and meta are
 *     valid JSON and decode again;
 *   - history follows reported: every finite numeric leaf (path up to TWIN_PATH_MAX) has a
 *     series, no series exists without a numeric leaf, no series has more than 4 points;
 *   - one outbox entry per twin and per tombstone; twin_list and twin_outbox_list see what the
 *     statistics count.
 */
#include "fuzz.h"
#include "twins.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 16
#define N_DEV 4
#define HISTORY_MAX 4
#define NOW0 1700000000000LL

static const char *ids[N_DEV] = {
    "ecg-0001", "pump.7:A_b-c", "d",
    ("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), /* TWIN_ID_MAX */
};

static const struct twin_limits wide = {SIZE_MAX, TWIN_DEPTH_CAP, UINT_MAX};

/* FUZZ_TRACE=1 in the environment: one line per message on stderr, to read a crasher. */
static bool trace;

/* ---------------------------------------------------------------------------------------------
 * The store
 * ------------------------------------------------------------------------------------------ */

static struct twin_store *store;

static void store_close(void)
{
    twin_store_close(store);
    store = NULL;
}

static struct twin_store *store_get(void)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    char path[4200], err[TWIN_ERR_LEN];
    int rc;

    if (store)
        return store;
    trace = getenv("FUZZ_TRACE") != NULL;
    snprintf(path, sizeof path, "%s/store", fuzz_tmpdir());
    o.path = path;
    o.map_size = 1u << 20;
    o.max_map_size = 64u << 20;
    o.history_max_points = HISTORY_MAX;
    o.max_doc_bytes = 8192;
    o.max_twins = 3;
    o.max_clock_skew_ms = 300000;
    rc = twin_store_open(&store, &o, err);
    FUZZ_CHECK(rc == 0, "twin_store_open %s: %d %s", path, rc, err);
    atexit(store_close); /* runs before fuzz_tmpdir's removal: registered later */
    return store;
}

/* ---------------------------------------------------------------------------------------------
 * Reading a twin back inside the write transaction
 * ------------------------------------------------------------------------------------------ */

struct snap {
    bool exists;
    uint64_t tomb; /* the tombstone's version when the twin does not exist; 0 = none */
    void *raw;     /* a copy in the snapshot's zone: LMDB's value dies at the next write */
    size_t len;
    struct twin_doc doc; /* decoded from raw */
};

static int snap_take(struct twin_txn *txn, int dev, msgpack_zone *z, struct snap *s)
{
    const void *buf;
    char err[TWIN_ERR_LEN];
    int rc = twin_get_raw(txn, ids[dev], strlen(ids[dev]), &buf, &s->len, err);

    memset(&s->doc, 0, sizeof s->doc);
    s->exists = rc == 0;
    s->tomb = 0;
    if (rc == -ENOENT) {
        rc = twin_tombstone_get(txn, ids[dev], strlen(ids[dev]), &s->tomb, err);
        FUZZ_CHECK(rc == 0 || rc == -ENOENT, "twin_tombstone_get: %d %s", rc, err);
        if (rc)
            s->tomb = 0;
        return 0;
    }
    if (rc)
        return rc; /* -EIO: the caller aborts the transaction */
    s->raw = msgpack_zone_malloc(z, s->len ? s->len : 1);
    FUZZ_CHECK(s->raw, "out of memory");
    memcpy(s->raw, buf, s->len);
    rc = twin_doc_decode(s->raw, s->len, z, &s->doc, err);
    FUZZ_CHECK(rc == 0, "a stored twin does not decode: %d %s", rc, err);
    return 0;
}

static bool snap_same(const struct snap *a, const struct snap *b)
{
    return a->exists == b->exists && a->tomb == b->tomb &&
           (!a->exists || (a->len == b->len && memcmp(a->raw, b->raw, a->len) == 0));
}

static bool stats_same(const struct twin_stats *a, const struct twin_stats *b)
{
    return a->twins == b->twins && a->history_series == b->history_series &&
           a->history_points == b->history_points && a->outbox == b->outbox &&
           a->tombstones == b->tombstones && a->commands == b->commands;
}

static void stats_take(struct twin_txn *txn, struct twin_stats *st)
{
    char err[TWIN_ERR_LEN];
    int rc = twin_store_stats(txn, st, err);

    FUZZ_CHECK(rc == 0, "twin_store_stats: %d %s", rc, err);
}

/* ---------------------------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------------------------ */

/* No NaN anywhere and no map key given twice: where twin_value_equal is an equivalence. */
static bool tame(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
        return o->via.f64 == o->via.f64;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (!tame(&o->via.array.ptr[i]))
                return false;
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (!tame(&o->via.map.ptr[i].val))
                return false;
            for (uint32_t j = 0; j < i; j++)
                if (twin_value_equal(&o->via.map.ptr[i].key, &o->via.map.ptr[j].key))
                    return false;
        }
    }
    return true;
}

/* Equal, or not comparable (NaN, a key twice): a check that cannot be made passes. */
static bool same_value(const msgpack_object *a, const msgpack_object *b)
{
    return !tame(a) || !tame(b) || twin_value_equal(a, b);
}

static void check_json(const msgpack_object *o, bool reparse)
{
    msgpack_sbuffer sb;
    msgpack_zone z;
    msgpack_object back;
    char err[TWIN_ERR_LEN];
    int rc;

    msgpack_sbuffer_init(&sb);
    FUZZ_CHECK(twin_json_write(o, &sb) == 0, "twin_json_write");
    FUZZ_CHECK(fuzz_json_valid(sb.data, sb.size), "twin_json_write wrote invalid JSON: %.*s",
               (int)(sb.size < 400 ? sb.size : 400), sb.data ? sb.data : "");
    if (reparse && o->type == MSGPACK_OBJECT_MAP) {
        msgpack_zone_init(&z, 4096);
        rc = twin_input_decode(sb.data, sb.size, &wide, &z, &back, err);
        FUZZ_CHECK(rc == 0, "the JSON of a stored map does not decode: %d %s", rc, err);
        msgpack_zone_destroy(&z);
    }
    msgpack_sbuffer_destroy(&sb);
}

static bool is_number(const msgpack_object *v)
{
    return v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
           v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || v->type == MSGPACK_OBJECT_FLOAT32 ||
           v->type == MSGPACK_OBJECT_FLOAT64;
}

struct leaves {
    struct twin_txn *txn;
    int dev;
    uint64_t finite, all; /* numeric leaves with a path of at most TWIN_PATH_MAX bytes */
};

/* Walks the maps of reported (arrays are leaves), counting numeric leaves and checking that
 * each finite one has a series of 1..HISTORY_MAX points. */
static int count_points(void *ctx, int64_t ts, double value)
{
    (void)ts;
    (void)value;
    (*(unsigned *)ctx)++;
    return 0;
}

static void walk_leaves(struct leaves *lv, const msgpack_object *o, char *path, size_t len)
{
    if (is_number(o)) {
        double d = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER   ? (double)o->via.u64
                   : o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? (double)o->via.i64
                                                                : o->via.f64;
        unsigned points = 0;
        char err[TWIN_ERR_LEN];
        int rc;

        if (len == 0 || len > TWIN_PATH_MAX)
            return;
        lv->all++;
        rc = twin_history_read(lv->txn, ids[lv->dev], strlen(ids[lv->dev]), path, len, 0,
                               count_points, &points, err);
        FUZZ_CHECK(rc == 0 || rc == -ENOENT, "twin_history_read: %d %s", rc, err);
        FUZZ_CHECK(points <= HISTORY_MAX, "%u points in %.*s", points, (int)len, path);
        if (isfinite(d)) {
            lv->finite++;
            FUZZ_CHECK(points > 0, "no history for the finite leaf %.*s of %s", (int)len, path,
                       ids[lv->dev]);
        }
        return;
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        size_t n = len + (len ? 1 : 0) + (k->type == MSGPACK_OBJECT_STR ? k->via.str.size : 0);

        FUZZ_CHECK(k->type == MSGPACK_OBJECT_STR, "a stored key of type %d", k->type);
        if (n > TWIN_PATH_MAX)
            continue; /* and everything under it */
        if (len)
            path[len] = '.';
        memcpy(path + len + (len ? 1 : 0), k->via.str.ptr, k->via.str.size);
        walk_leaves(lv, &o->via.map.ptr[i].val, path, n);
    }
}

static int count_list(void *ctx, const char *id, size_t id_len, const void *doc, size_t len)
{
    (void)id;
    (void)id_len;
    (void)doc;
    (void)len;
    (*(uint64_t *)ctx)++;
    return 0;
}

static int count_outbox(void *ctx, const char *id, size_t id_len, uint64_t version)
{
    (void)id;
    (void)id_len;
    (void)version;
    (*(uint64_t *)ctx)++;
    return 0;
}

/* One stored twin: decode + encode is the identity, the version reads directly, the delta is
 * what desired and reported make, and its maps are valid JSON. */
static void check_stored(const struct snap *now, msgpack_zone *z)
{
    const struct twin_doc *d = &now->doc;
    msgpack_object delta;
    msgpack_sbuffer sb;
    uint64_t version;
    int rc;

    msgpack_sbuffer_init(&sb);
    rc = twin_doc_encode(d, &sb);
    FUZZ_CHECK(rc == 0, "twin_doc_encode of a decoded twin: %d", rc);
    FUZZ_CHECK(sb.size == now->len && memcmp(sb.data, now->raw, sb.size) == 0,
               "decode + encode changed the stored bytes (%zu -> %zu)", now->len, sb.size);
    msgpack_sbuffer_destroy(&sb);
    rc = twin_doc_version(now->raw, now->len, &version);
    FUZZ_CHECK(rc == 0 && version == d->version, "twin_doc_version: %d", rc);

    rc = twin_delta_compute(z, &d->desired, &d->reported, &delta);
    FUZZ_CHECK(rc == 0, "twin_delta_compute: %d", rc);
    if (delta.type == MSGPACK_OBJECT_NIL || d->delta.type == MSGPACK_OBJECT_NIL)
        FUZZ_CHECK(delta.type == d->delta.type, "stored delta %s, computed delta %s",
                   d->delta.type == MSGPACK_OBJECT_NIL ? "absent" : "present",
                   delta.type == MSGPACK_OBJECT_NIL ? "absent" : "present");
    else if (tame(&delta) && tame(&d->delta))
        FUZZ_CHECK(twin_value_equal(&delta, &d->delta), "the stored delta is not the delta");

    check_json(&d->reported, true);
    check_json(&d->meta_reported, true);
    check_json(&d->desired, true);
    check_json(&d->delta, true);
}

/* The store as a whole: history follows reported, one outbox entry per twin and tombstone,
 * listings. */
static int check_store(struct twin_txn *txn)
{
    struct leaves lv = {.txn = txn};
    struct twin_stats st;
    uint64_t twins = 0, listed = 0, outbox = 0;
    char path[TWIN_PATH_MAX + 1], err[TWIN_ERR_LEN];
    msgpack_zone z;
    int rc;

    msgpack_zone_init(&z, 4096);
    for (int d = 0; d < N_DEV; d++) {
        struct snap s;

        rc = snap_take(txn, d, &z, &s);
        if (rc) {
            msgpack_zone_destroy(&z);
            return rc;
        }
        if (!s.exists)
            continue;
        twins++;
        lv.dev = d;
        walk_leaves(&lv, &s.doc.reported, path, 0);
        check_stored(&s, &z);
    }
    msgpack_zone_destroy(&z);
    stats_take(txn, &st);
    FUZZ_CHECK(st.twins == twins, "%" PRIu64 " twins counted, %" PRIu64 " found", st.twins, twins);
    FUZZ_CHECK(st.outbox == twins + st.tombstones,
               "%" PRIu64 " outbox entries for %" PRIu64 " twins and %" PRIu64 " tombstones",
               st.outbox, twins, st.tombstones);
    FUZZ_CHECK(st.history_series >= lv.finite && st.history_series <= lv.all,
               "%" PRIu64 " history series for %" PRIu64 " finite and %" PRIu64
               " numeric leaves: history does not follow reported",
               st.history_series, lv.finite, lv.all);
    FUZZ_CHECK(st.history_points <= HISTORY_MAX * st.history_series, "%" PRIu64 " points",
               st.history_points);
    rc = twin_list(txn, NULL, 0, count_list, &listed, err);
    FUZZ_CHECK(rc == 0 && listed == twins, "twin_list: %d, %" PRIu64 " listed", rc, listed);
    rc = twin_outbox_list(txn, count_outbox, &outbox, err);
    FUZZ_CHECK(rc == 0 && outbox == st.outbox, "twin_outbox_list: %d, %" PRIu64, rc, outbox);
    return 0;
}

/* The last value of string key k in map m, or NULL. */
static const msgpack_object *last_get(const msgpack_object *m, const char *k)
{
    const msgpack_object *v = NULL;
    size_t n = strlen(k);

    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *key = &m->via.map.ptr[i].key;

        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == n &&
            memcmp(key->via.str.ptr, k, n) == 0)
            v = &m->via.map.ptr[i].val;
    }
    return v;
}

/* An applied message: the stored twin against what the message should have made of the old
 * one. */
static void check_applied(const struct snap *old, const struct snap *now, const msgpack_object *msg,
                          int64_t now_ms, const struct twin_apply_result *res, int dev,
                          msgpack_zone *z)
{
    const struct twin_doc *d = &now->doc;
    const msgpack_object *seq = last_get(msg, "seq"), *ts = last_get(msg, "ts");
    msgpack_object nil = {.type = MSGPACK_OBJECT_NIL}, patch = *msg, rep, meta;
    uint32_t n = 0;
    int rc;

    FUZZ_CHECK(now->exists, "applied, but no twin stored");
    FUZZ_CHECK(res->created == !old->exists, "created %d", res->created);
    FUZZ_CHECK(d->version == (old->exists ? old->doc.version : old->tomb) + 1 &&
                   res->version == d->version,
               "version %" PRIu64 " after %" PRIu64 " (result says %" PRIu64 ")", d->version,
               old->exists ? old->doc.version : old->tomb, res->version);
    FUZZ_CHECK(!old->exists || same_value(&d->desired, &old->doc.desired),
               "telemetry changed desired");
    FUZZ_CHECK(d->id_len == strlen(ids[dev]) && memcmp(d->id, ids[dev], d->id_len) == 0,
               "stored under another id");
    FUZZ_CHECK(d->last_seen == now_ms, "last_seen %" PRId64 ", hub clock %" PRId64, d->last_seen,
               now_ms);
    if (old->exists)
        FUZZ_CHECK(d->created == old->doc.created, "created changed");
    if (seq) {
        FUZZ_CHECK(seq->type == MSGPACK_OBJECT_POSITIVE_INTEGER && d->has_seq &&
                       d->seq == seq->via.u64,
                   "seq not stored");
    } else {
        FUZZ_CHECK(d->has_seq == (old->exists && old->doc.has_seq) &&
                       (!d->has_seq || d->seq == old->doc.seq),
                   "seq changed by a message without one");
    }

    /* reported and its meta: what twin_merge makes of the old ones */
    patch.via.map.ptr = msgpack_zone_malloc(z, (msg->via.map.size + 1) * sizeof *patch.via.map.ptr);
    FUZZ_CHECK(patch.via.map.ptr, "out of memory");
    for (uint32_t i = 0; i < msg->via.map.size; i++) {
        const msgpack_object *k = &msg->via.map.ptr[i].key;

        if (k->type == MSGPACK_OBJECT_STR &&
            ((k->via.str.size == 3 && !memcmp(k->via.str.ptr, "seq", 3)) ||
             (k->via.str.size == 2 && !memcmp(k->via.str.ptr, "ts", 2)) ||
             (k->via.str.size == 4 && !memcmp(k->via.str.ptr, "boot", 4))))
            continue;
        patch.via.map.ptr[n++] = msg->via.map.ptr[i];
    }
    patch.via.map.size = n;
    if (last_get(msg, "batch"))
        return; /* readings each at its own time: test_twins telemetry_batch checks those */
    rc = twin_merge(z, old->exists ? &old->doc.reported : &nil, &patch,
                    old->exists ? &old->doc.meta_reported : &nil,
                    ts ? (int64_t)ts->via.u64 : now_ms, &rep, &meta, NULL, NULL);
    FUZZ_CHECK(rc == 0, "twin_merge: %d", rc);
    if (tame(&rep) && tame(&d->reported))
        FUZZ_CHECK(twin_value_equal(&rep, &d->reported),
                   "reported is not the merge of the message");
    if (tame(&meta) && tame(&d->meta_reported))
        FUZZ_CHECK(twin_value_equal(&meta, &d->meta_reported),
                   "meta.reported is not the merge of the message's timestamps");
}

/* ---------------------------------------------------------------------------------------------
 * One input
 * ------------------------------------------------------------------------------------------ */

struct run {
    struct twin_limits lim;
    struct fuzz_part msgs[MAX_MSGS];
    size_t n;
};

enum op { OP_TELEMETRY, OP_DESIRED, OP_DESIRED_AT, OP_ONLINE, OP_OFFLINE, OP_DELETE };

static bool storage_error(int rc)
{
    return rc == -EIO || rc == -ENOSPC || rc == -ENOMEM;
}

/* A desired patch accepted: desired and its meta merged at the hub clock, the rest untouched. */
static void check_desired(const struct snap *old, const struct snap *now,
                          const msgpack_object *patch, int64_t now_ms,
                          const struct twin_desired_result *res, msgpack_zone *z)
{
    const struct twin_doc *d = &now->doc;
    msgpack_object nil = {.type = MSGPACK_OBJECT_NIL}, des, meta;
    int rc;

    FUZZ_CHECK(now->exists && res->created == !old->exists, "created %d", res->created);
    FUZZ_CHECK(d->version == (old->exists ? old->doc.version : old->tomb) + 1 &&
                   res->version == d->version,
               "desired: version %" PRIu64 " (result %" PRIu64 ")", d->version, res->version);
    rc = twin_merge(z, old->exists ? &old->doc.desired : &nil, patch,
                    old->exists ? &old->doc.meta_desired : &nil, now_ms, &des, &meta, NULL, NULL);
    FUZZ_CHECK(rc == 0, "twin_merge: %d", rc);
    FUZZ_CHECK(same_value(&des, &d->desired), "desired is not the merge of the patch");
    FUZZ_CHECK(same_value(&meta, &d->meta_desired), "meta.desired is not the merge's");
    if (old->exists) {
        FUZZ_CHECK(same_value(&d->reported, &old->doc.reported) &&
                       same_value(&d->meta_reported, &old->doc.meta_reported),
                   "a desired patch changed reported");
        FUZZ_CHECK(d->connected == old->doc.connected && d->last_seen == old->doc.last_seen &&
                       d->seq == old->doc.seq && d->created == old->doc.created,
                   "a desired patch changed the device's state");
    } else {
        FUZZ_CHECK(!d->connected && d->last_seen == 0 && d->created == now_ms,
                   "a twin created by desired");
    }
}

/* Presence accepted: connected and last_seen, nothing else. */
static void check_presence(const struct snap *old, const struct snap *now, bool online,
                           int64_t now_ms, const struct twin_presence_result *res)
{
    const struct twin_doc *d = &now->doc;

    FUZZ_CHECK(now->exists && res->created == !old->exists, "presence: created %d", res->created);
    FUZZ_CHECK(d->version == (old->exists ? old->doc.version : old->tomb) + 1 &&
                   res->version == d->version,
               "presence: version %" PRIu64 " (result %" PRIu64 ")", d->version, res->version);
    FUZZ_CHECK(d->connected == online && d->last_seen == now_ms, "presence not recorded");
    if (old->exists)
        FUZZ_CHECK(same_value(&d->reported, &old->doc.reported) &&
                       same_value(&d->desired, &old->doc.desired) &&
                       res->changed == (old->doc.connected != online),
                   "presence changed more than presence");
}

/* Returns 0, or an error of the store that must abort the transaction (MDB_MAP_FULL is one:
 * twin_store_write grows the map and runs everything again). */
static int one_message(struct twin_txn *txn, const struct run *r, int dev, enum op op,
                       const uint8_t *p, size_t n, int64_t now_ms)
{
    const char *id = ids[dev];
    size_t id_len = strlen(id);
    uint64_t expected = TWIN_VERSION_ANY;
    struct snap before, after;
    struct twin_stats st0, st1;
    struct twin_apply_result res;
    struct twin_desired_result dres;
    struct twin_presence_result pres;
    struct twin_delete_result xres;
    msgpack_object obj;
    msgpack_zone z;
    char err[TWIN_ERR_LEN];
    int rc;

    msgpack_zone_init(&z, 4096);
    if ((op == OP_DESIRED_AT || op == OP_DELETE) && n > 0) {
        expected = p[0];
        p++;
        n--;
    }
    if (op == OP_TELEMETRY || op == OP_DESIRED || op == OP_DESIRED_AT) {
        err[0] = '\0';
        rc = twin_input_decode(p, n, &r->lim, &z, &obj, err);
        if (rc) {
            FUZZ_CHECK(rc == -EBADMSG || rc == -ELOOP || rc == -E2BIG, "decode: %d %s", rc, err);
            FUZZ_CHECK(err[0] && strlen(err) < TWIN_ERR_LEN, "decode %d without a reason", rc);
            rc = 0; /* refused before the store sees it: nothing to check there */
            goto done;
        }
        check_json(&obj, false);
    }

    rc = snap_take(txn, dev, &z, &before);
    if (rc)
        goto done;
    stats_take(txn, &st0);
    err[0] = '\0';
    memset(&res, 0, sizeof res);
    switch (op) {
    case OP_TELEMETRY:
        rc = twin_telemetry_apply(txn, id, id_len, &obj, now_ms, &res, err);
        break;
    case OP_DESIRED:
    case OP_DESIRED_AT:
        rc = twin_desired_apply(txn, id, id_len, &obj, expected, now_ms, &dres, err);
        break;
    case OP_ONLINE:
    case OP_OFFLINE:
        rc = twin_presence_apply(txn, id, id_len, op == OP_ONLINE, now_ms, &pres, err);
        break;
    case OP_DELETE:
        rc = twin_delete(txn, id, id_len, expected, &xres, err);
        break;
    }
    if (trace)
        fprintf(stderr, "fuzz_telemetry: %s op %d at %" PRId64 ": %d %s\n", id, op, now_ms, rc,
                err);
    if (storage_error(rc))
        goto done; /* abort (and on MDB_MAP_FULL, grow and retry) */
    if (rc == -EINVAL || rc == -E2BIG || rc == -EBUSY || rc == -ENOENT) {
        uint64_t at = before.exists ? before.doc.version : 0;

        FUZZ_CHECK(err[0] && strlen(err) < TWIN_ERR_LEN, "refused (%d) without a reason", rc);
        FUZZ_CHECK(rc != -EINVAL || op == OP_TELEMETRY || op == OP_DESIRED || op == OP_DESIRED_AT,
                   "-EINVAL for a message without a payload: %s", err);
        FUZZ_CHECK(rc != -ENOENT || ((op == OP_OFFLINE || op == OP_DELETE) && !before.exists),
                   "-ENOENT (%s) for op %d, twin %s", err, op,
                   before.exists ? "present" : "absent");
        FUZZ_CHECK(rc != -EBUSY || (expected != TWIN_VERSION_ANY && expected != at),
                   "-EBUSY at the expected version %" PRIu64 ": %s", expected, err);
        rc = snap_take(txn, dev, &z, &after);
        if (rc)
            goto done;
        stats_take(txn, &st1);
        FUZZ_CHECK(snap_same(&before, &after), "a refused message (%s) changed the twin", err);
        FUZZ_CHECK(stats_same(&st0, &st1), "a refused message (%s) changed the store", err);
        rc = 0;
        goto done;
    }
    FUZZ_CHECK(rc == 0, "op %d: %d %s", op, rc, err);
    if (op == OP_DESIRED_AT || op == OP_DELETE)
        FUZZ_CHECK(expected == TWIN_VERSION_ANY ||
                       expected == (before.exists ? before.doc.version : 0),
                   "accepted at version %" PRIu64 " while expecting %" PRIu64,
                   before.exists ? before.doc.version : 0, expected);
    rc = snap_take(txn, dev, &z, &after);
    if (rc)
        goto done;
    switch (op) {
    case OP_TELEMETRY:
        if (res.outcome != TWIN_APPLIED) {
            FUZZ_CHECK(res.outcome == TWIN_DUPLICATE || res.outcome == TWIN_STALE, "outcome %d",
                       res.outcome);
            stats_take(txn, &st1);
            if (res.outcome == TWIN_DUPLICATE) {
                FUZZ_CHECK(before.exists && snap_same(&before, &after),
                           "a duplicate changed the twin");
                FUZZ_CHECK(res.version == before.doc.version, "duplicate: version %" PRIu64,
                           res.version);
                FUZZ_CHECK(stats_same(&st0, &st1), "a duplicate changed the store");
                goto done;
            }
            /* stale: dropped, and counted in the twin; nothing else of it changes */
            const struct twin_doc *b = &before.doc, *a = &after.doc;
            FUZZ_CHECK(before.exists && after.exists && a->version == b->version + 1 &&
                           res.version == a->version,
                       "stale: version %" PRIu64 " after %" PRIu64, a->version, b->version);
            FUZZ_CHECK(a->stale.count == b->stale.count + 1 && a->stale.seq < a->seq &&
                           a->seq == b->seq && a->stale.run >= 1,
                       "stale: not counted in the twin");
            FUZZ_CHECK(twin_value_equal(&a->reported, &b->reported) &&
                           twin_value_equal(&a->meta_reported, &b->meta_reported) &&
                           twin_value_equal(&a->desired, &b->desired) &&
                           twin_value_equal(&a->delta, &b->delta) && a->gaps.count == b->gaps.count,
                       "a stale message changed the twin's state");
            FUZZ_CHECK(st1.twins == st0.twins && st1.history_points == st0.history_points &&
                           st1.history_series == st0.history_series,
                       "a stale message changed the store's history");
            goto done;
        }
        check_applied(&before, &after, &obj, now_ms, &res, dev, &z);
        break;
    case OP_DESIRED:
    case OP_DESIRED_AT:
        check_desired(&before, &after, &obj, now_ms, &dres, &z);
        break;
    case OP_ONLINE:
    case OP_OFFLINE:
        check_presence(&before, &after, op == OP_ONLINE, now_ms, &pres);
        break;
    case OP_DELETE:
        FUZZ_CHECK(before.exists && !after.exists && after.tomb == before.doc.version &&
                       xres.version == before.doc.version,
                   "delete: twin %s, tombstone %" PRIu64 " for version %" PRIu64,
                   after.exists ? "still there" : "gone", after.tomb,
                   before.exists ? before.doc.version : 0);
        break;
    }
    rc = check_store(txn);
done:
    msgpack_zone_destroy(&z);
    return rc;
}

static int apply_all(struct twin_txn *txn, void *ctx)
{
    static const enum op ops[8] = {OP_TELEMETRY, OP_TELEMETRY,  OP_TELEMETRY, OP_TELEMETRY,
                                   OP_DESIRED,   OP_DESIRED_AT, OP_ONLINE,    OP_DELETE};
    const struct run *r = ctx;
    int64_t now = NOW0;

    /* runs again from the start after a map growth: nothing outside the transaction changes */
    for (size_t i = 0; i < r->n; i++) {
        const struct fuzz_part *m = &r->msgs[i];
        enum op op;
        int rc;

        if (m->n == 0)
            continue;
        now += ((int64_t)((m->p[0] >> 2) & 7) - 2) * 1000;
        op = ops[m->p[0] >> 5];
        if (op == OP_ONLINE && m->n > 1 && !(m->p[1] & 1))
            op = OP_OFFLINE;
        rc = one_message(txn, r, m->p[0] & 3, op, m->p + 1, m->n - 1, now);
        if (rc)
            return rc;
    }
    return -ECANCELED; /* abort: the next input starts from an empty store again */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct twin_store *s = store_get();
    struct run r;
    char err[TWIN_ERR_LEN];
    int rc;

    if (size < 1)
        return 0;
    r.lim.max_depth = data[0] & 1 ? TWIN_DEPTH_CAP : 16;
    r.lim.max_keys = data[0] & 2 ? 8 : 64;
    r.lim.max_payload = data[0] & 4 ? 256 : 4096;
    r.n = fuzz_split(data + 1, size - 1, r.msgs, MAX_MSGS);
    err[0] = '\0';
    rc = twin_store_write(s, apply_all, &r, err);
    FUZZ_CHECK(rc == -ECANCELED, "twin_store_write: %d %s", rc, err);
    return 0;
}
