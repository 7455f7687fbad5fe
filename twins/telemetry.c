/* telemetry.c: applying one device telemetry map to its twin inside a write transaction:
 * validation, the seq check, the merge into `reported` with meta timestamps, history of numeric
 * leaves, version and outbox. The device id has been validated by the caller; the transaction
 * is the caller's (twin_store_write).
 *
 * Everything is validated before anything is written, so a rejected message leaves the store
 * as it was even when the caller keeps using the transaction. The last check, the size of the
 * new document (twin_put, -E2BIG), comes after the merge: so the merge only collects the
 * numeric leaves, and they go to history once the document is stored.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>

/* The telemetry map sits at depth 1; its children become `reported`'s children, which sit one
 * level deeper in the stored document and two deeper in its meta tree. Deeper telemetry would
 * make a document that msgpack-c (nesting limit TWIN_DEPTH_CAP) could not read back. */
#define TELEMETRY_DEPTH_MAX (TWIN_DEPTH_CAP - 2)

static const char *type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "str";
    case MSGPACK_OBJECT_BIN:
        return "bin";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    }
    return "unknown";
}

/* ---------------------------------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------------------------------ */

/* The path named in reasons ("reported.vitals.hr", "reported.ecg[3]"), cut short if long. */
struct vpath {
    char buf[320];
    size_t len;
};

static size_t vpath_room(const struct vpath *p)
{
    return sizeof p->buf - p->len;
}

static void vpath_grew(struct vpath *p, int w)
{
    if (w > 0)
        p->len += (size_t)w < vpath_room(p) ? (size_t)w : vpath_room(p) - 1;
}

/* Appends ".key"; returns the length to restore. */
static size_t vpath_key(struct vpath *p, const msgpack_object *k)
{
    size_t saved = p->len;

    vpath_grew(
        p, snprintf(p->buf + p->len, vpath_room(p), ".%.*s", (int)k->via.str.size, k->via.str.ptr));
    return saved;
}

/* Appends "[i]"; returns the length to restore. */
static size_t vpath_index(struct vpath *p, uint32_t i)
{
    size_t saved = p->len;

    vpath_grew(p, snprintf(p->buf + p->len, vpath_room(p), "[%" PRIu32 "]", i));
    return saved;
}

/* Writes key k (at most 64 bytes of it) printably into out. */
static void key_show(const msgpack_object *k, char *out, size_t cap)
{
    size_t o = 0;

    for (uint32_t i = 0; i < k->via.str.size && i < 64 && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)k->via.str.ptr[i];

        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o] = '\0';
}

static int bad_key(const msgpack_object *k, const struct vpath *p, const char *why, char *err)
{
    char shown[300];

    key_show(k, shown, sizeof shown);
    twins__errf(err, "bad key \"%s\" in %.*s: %s", shown, (int)p->len, p->buf, why);
    return -EINVAL;
}

static int check_key(const msgpack_object *k, const struct vpath *p, char *err)
{
    char why[64];

    if (k->type != MSGPACK_OBJECT_STR) {
        twins__errf(err, "bad key in %.*s: keys must be strings, got %s", (int)p->len, p->buf,
                    type_name(k->type));
        return -EINVAL;
    }
    if (k->via.str.size == 0)
        return bad_key(k, p, "empty", err);
    if (k->via.str.size > TWIN_KEY_MAX) {
        snprintf(why, sizeof why, "%" PRIu32 " bytes long, the limit is %d", k->via.str.size,
                 TWIN_KEY_MAX);
        return bad_key(k, p, why, err);
    }
    for (uint32_t i = 0; i < k->via.str.size; i++) {
        unsigned char c = (unsigned char)k->via.str.ptr[i];

        if (c == '.')
            return bad_key(k, p, "contains '.'", err);
        if (c < 0x20 || c == 0x7f) {
            snprintf(why, sizeof why, "contains control byte 0x%02x", c);
            return bad_key(k, p, why, err);
        }
    }
    return 0;
}

static int check_value(const msgpack_object *o, struct vpath *p, unsigned depth, char *err)
{
    if (o->type == MSGPACK_OBJECT_EXT) {
        twins__errf(err, "unsupported msgpack ext type at %.*s", (int)p->len, p->buf);
        return -EINVAL;
    }
    if (o->type != MSGPACK_OBJECT_MAP && o->type != MSGPACK_OBJECT_ARRAY)
        return 0;
    if (depth > TELEMETRY_DEPTH_MAX) {
        twins__errf(err, "%.*s is nested deeper than %d levels", (int)p->len, p->buf,
                    TELEMETRY_DEPTH_MAX);
        return -EINVAL;
    }
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            size_t saved = vpath_index(p, i);
            int rc = check_value(&o->via.array.ptr[i], p, depth + 1, err);

            p->len = saved;
            if (rc)
                return rc;
        }
        return 0;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        size_t saved;
        int rc = check_key(&kv->key, p, err);

        if (rc)
            return rc;
        saved = vpath_key(p, &kv->key);
        rc = check_value(&kv->val, p, depth + 1, err);
        p->len = saved;
        if (rc)
            return rc;
    }
    return 0;
}

static int check_uint(const msgpack_object *v, const char *key, uint64_t *out, char *err)
{
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = v->via.u64;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        twins__errf(err, "%s must be a non-negative integer, got %" PRId64, key, v->via.i64);
    else
        twins__errf(err, "%s must be a non-negative integer, got %s", key, type_name(v->type));
    return -EINVAL;
}

/* ---------------------------------------------------------------------------------------------
 * Apply
 * ------------------------------------------------------------------------------------------ */

/* A numeric leaf the merge wrote, waiting to be appended to history. */
struct leaf {
    struct leaf *next;
    char *path;
    size_t path_len;
    double value;
};

struct leaf_ctx {
    msgpack_zone *zone;
    struct leaf *head, **tail;
    int rc;
};

/* Every leaf the merge writes: finite numbers are kept for history (the merge reuses `path`). */
static void on_leaf(void *ctx, const char *path, size_t path_len, const msgpack_object *v)
{
    struct leaf_ctx *c = ctx;
    struct leaf *l;
    double d;

    if (c->rc)
        return;
    switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        d = (double)v->via.u64;
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        d = (double)v->via.i64;
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        d = v->via.f64;
        break;
    default:
        return;
    }
    /* a path too long for history is not an error: the leaf is stored, just not historized */
    if (!isfinite(d) || path_len == 0 || path_len > TWIN_PATH_MAX)
        return;
    l = msgpack_zone_malloc(c->zone, sizeof *l);
    if (l)
        l->path = msgpack_zone_malloc(c->zone, path_len);
    if (!l || !l->path) {
        c->rc = -ENOMEM;
        return;
    }
    memcpy(l->path, path, path_len);
    l->path_len = path_len;
    l->value = d;
    l->next = NULL;
    *c->tail = l;
    c->tail = &l->next;
}

int twin_telemetry_apply(struct twin_txn *txn, const char *id, size_t id_len,
                         const msgpack_object *telemetry, int64_t now_ms,
                         struct twin_apply_result *res, char *err)
{
    const msgpack_object *seq_v = NULL, *ts_v = NULL;
    struct leaf_ctx lc = {0};
    struct twin_doc doc;
    struct vpath path = {.buf = "reported", .len = 8};
    msgpack_object patch, reported, meta;
    uint64_t seq = 0, ts_u;
    int64_t ts = now_ms;
    uint32_t nkeys;
    int rc;

    rc = store__need_write(txn, "twin_telemetry_apply", err);
    if (rc)
        return rc;
    if (!telemetry || !res || !id || id_len == 0 || id_len > TWIN_ID_MAX) {
        twins__errf(err, "twin_telemetry_apply: bad arguments");
        return -EINVAL;
    }
    if (telemetry->type != MSGPACK_OBJECT_MAP) {
        twins__errf(err, "telemetry must be a map, got %s", type_name(telemetry->type));
        return -EINVAL;
    }

    /* 1. validate everything, write nothing */
    rc = check_value(telemetry, &path, 1, err);
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
            if (!rc && ts_u > INT64_MAX) {
                twins__errf(err, "ts %" PRIu64 " is out of range", ts_u);
                rc = -EINVAL;
            }
            ts = (int64_t)ts_u;
            ts_v = &kv->val;
            nkeys--;
        }
        if (rc)
            return rc;
    }

    /* 2. the twin as it is, and the seq check */
    rc = twin_get(txn, id, id_len, &doc, err);
    res->created = rc == -ENOENT;
    if (rc == -ENOENT) {
        memset(&doc, 0, sizeof doc);
        doc.reported.type = doc.desired.type = doc.delta.type = doc.predicted.type =
            doc.meta_reported.type = doc.meta_desired.type = MSGPACK_OBJECT_NIL;
        doc.created = now_ms;
    } else if (rc) {
        return rc;
    }
    if (ts < 0) {
        /* only the hub clock can be negative; history would refuse it after the put */
        twins__errf(err, "no ts in the telemetry and now_ms %" PRId64 " is negative", ts);
        return -EINVAL;
    }
    if (seq_v && !res->created && doc.has_seq && seq <= doc.seq) {
        res->outcome = seq == doc.seq ? TWIN_DUPLICATE : TWIN_STALE;
        res->version = doc.version;
        return 0;
    }

    /* 3. merge everything but seq and ts into reported */
    patch = *telemetry;
    if (seq_v || ts_v) {
        msgpack_object_kv *kv = msgpack_zone_malloc(&txn->zone, (nkeys + 1) * sizeof *kv);
        uint32_t n = 0;

        if (!kv) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        for (uint32_t i = 0; i < telemetry->via.map.size; i++) {
            const msgpack_object_kv *src = &telemetry->via.map.ptr[i];

            if (!twins__key_is(&src->key, "seq", 3) && !twins__key_is(&src->key, "ts", 2))
                kv[n++] = *src;
        }
        patch.via.map.ptr = kv;
        patch.via.map.size = n;
    }
    lc.zone = &txn->zone;
    lc.tail = &lc.head;
    rc = twin_merge(&txn->zone, &doc.reported, &patch, &doc.meta_reported, ts, &reported, &meta,
                    on_leaf, &lc);
    if (rc || lc.rc) {
        twins__errf(err, "out of memory merging telemetry");
        return -ENOMEM;
    }

    /* 4. the new state: delta and desired are left as they were (computed elsewhere) */
    doc.id = id;
    doc.id_len = id_len;
    doc.reported = reported;
    doc.meta_reported = meta;
    doc.version++;
    doc.last_seen = now_ms;
    if (seq_v) {
        doc.seq = seq;
        doc.has_seq = true;
    }
    rc = twin_put(txn, &doc, err); /* -E2BIG writes nothing */
    if (rc)
        return rc;

    /* 5. history of the numeric leaves written */
    for (const struct leaf *l = lc.head; l; l = l->next) {
        rc = twin_history_append(txn, id, id_len, l->path, l->path_len, ts, l->value, err);
        if (rc)
            return rc;
    }
    res->outcome = TWIN_APPLIED;
    res->version = doc.version;
    return 0;
}
