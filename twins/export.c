/* export.c: a twin as one line of JSON and back (twinctl export and import). A line is the
 * stored document as JSON, exactly what `twinctl get` prints, with, when asked, one more member
 * last: "history": {path: [[ts, value], ...]}, every series of the twin, oldest point first.
 * JSON keeps every value a twin can hold apart (integers and floats: twin_json_write writes
 * 72.0 for a float), so export, import and export again give the same bytes.
 *
 * Import is two steps: twin_import_parse checks a line and touches no store, so a caller can
 * check a whole file before it writes any of it; twin_import_write stores a checked line.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>

/* ---------------------------------------------------------------------------------------------
 * Export
 * ------------------------------------------------------------------------------------------ */

static int jput(msgpack_sbuffer *out, const char *s, size_t n)
{
    return msgpack_sbuffer_write(out, s, n) ? -ENOMEM : 0;
}

static int jstr(msgpack_sbuffer *out, const char *s, size_t n)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};

    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)n;
    return twin_json_write(&o, out);
}

struct series_walk {
    msgpack_sbuffer *out;
    uint64_t points;
    int rc;
};

static int point_write(void *ctx, int64_t ts, double value)
{
    struct series_walk *w = ctx;
    char buf[32];
    msgpack_object v = {.type = MSGPACK_OBJECT_FLOAT64};
    int n = snprintf(buf, sizeof buf, "%s[%" PRId64 ",", w->points ? "," : "", ts);

    v.via.f64 = value;
    if (jput(w->out, buf, (size_t)n) || twin_json_write(&v, w->out) || jput(w->out, "]", 1))
        return -ENOMEM;
    w->points++;
    return 0;
}

struct twin_export_walk {
    struct twin_txn *txn;
    const char *id;
    size_t id_len;
    msgpack_sbuffer *out;
    unsigned series;
    char *err;
};

static int series_write(void *ctx, const char *path, size_t path_len)
{
    struct twin_export_walk *e = ctx;
    struct series_walk w = {.out = e->out};
    int rc;

    if ((e->series++ && jput(e->out, ",", 1)) || jstr(e->out, path, path_len) ||
        jput(e->out, ":[", 2))
        return -ENOMEM;
    rc = twin_history_read(e->txn, e->id, e->id_len, path, path_len, INT64_MIN, point_write, &w,
                           e->err);
    if (rc)
        return rc;
    return jput(e->out, "]", 1);
}

int twin_export_line(struct twin_txn *txn, const char *id, size_t id_len, const void *doc,
                     size_t len, bool history, msgpack_zone *zone, msgpack_sbuffer *out, char *err)
{
    msgpack_object o;
    size_t off = 0, start;
    int rc;

    if (!txn || !doc || !zone || !out)
        return -EINVAL;
    /* stored bytes are ours, but checked as any stored document is before msgpack-c sees them */
    rc = scan__object(doc, len, TWIN_DEPTH_CAP, UINT_MAX, &off, err);
    if (rc || off != len ||
        (off = 0, msgpack_unpack(doc, len, &off, zone, &o)) != MSGPACK_UNPACK_SUCCESS ||
        o.type != MSGPACK_OBJECT_MAP || o.via.map.size == 0) {
        twins__errf(err, "twin '%.*s': its stored document is damaged", (int)id_len, id);
        return rc == -ENOMEM ? -ENOMEM : -EBADMSG;
    }
    start = out->size;
    if (twin_json_write(&o, out))
        return -ENOMEM;
    if (history) {
        struct twin_export_walk e = {txn, id, id_len, out, 0, err};

        out->size--; /* the document's closing '}': history goes inside it */
        if (jput(out, ",\"history\":{", 12)) {
            out->size = start;
            return -ENOMEM;
        }
        rc = twin_history_series(txn, id, id_len, series_write, &e, err);
        if (rc == -ENOMEM)
            twins__errf(err, "out of memory");
        if (rc || jput(out, "}}", 2)) {
            out->size = start;
            return rc ? rc : -ENOMEM;
        }
    }
    if (jput(out, "\n", 1)) {
        out->size = start;
        return -ENOMEM;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Import
 * ------------------------------------------------------------------------------------------ */

/* The members a document may have (doc.c writes these), and "history". */
static const char *const members[] = {
    "id",        "version", "reported", "desired",     "delta", "predicted", "meta",   "connected",
    "last_seen", "seq",     "boot",     "seq_restart", "gaps",  "stale",     "created"};

static bool known_member(const msgpack_object *k)
{
    for (size_t i = 0; i < sizeof members / sizeof members[0]; i++)
        if (twins__key_is(k, members[i], strlen(members[i])))
            return true;
    return false;
}

static int check_history(const msgpack_object *h, uint64_t *points, char *err)
{
    if (h->type != MSGPACK_OBJECT_MAP) {
        twins__errf(err,
                    "history: expected an object of series {\"path\": [[ts, value], ...]}, "
                    "got %s",
                    check__type_name(h->type));
        return -EINVAL;
    }
    for (uint32_t i = 0; i < h->via.map.size; i++) {
        const msgpack_object *k = &h->via.map.ptr[i].key, *v = &h->via.map.ptr[i].val;
        int kn =
            (int)(k->type == MSGPACK_OBJECT_STR && k->via.str.size < 200 ? k->via.str.size : 200);
        const char *kp = k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?";

        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0 ||
            k->via.str.size > TWIN_PATH_MAX || memchr(kp, '\0', k->via.str.size)) {
            twins__errf(err, "history: series name '%.*s' is not a path of 1..%d bytes", kn, kp,
                        TWIN_PATH_MAX);
            return -EINVAL;
        }
        for (uint32_t j = 0; j < i; j++)
            if (twin_value_equal(&h->via.map.ptr[j].key, k)) {
                twins__errf(err, "history: series '%.*s' appears twice", kn, kp);
                return -EINVAL;
            }
        if (v->type != MSGPACK_OBJECT_ARRAY) {
            twins__errf(err, "history.%.*s: expected an array of [ts, value], got %s", kn, kp,
                        check__type_name(v->type));
            return -EINVAL;
        }
        for (uint32_t j = 0; j < v->via.array.size; j++) {
            const msgpack_object *p = &v->via.array.ptr[j], *ts, *val;

            if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 2) {
                twins__errf(err, "history.%.*s[%" PRIu32 "]: expected [ts, value]", kn, kp, j);
                return -EINVAL;
            }
            ts = &p->via.array.ptr[0];
            val = &p->via.array.ptr[1];
            if (ts->type != MSGPACK_OBJECT_POSITIVE_INTEGER || ts->via.u64 > (uint64_t)TWIN_TS_MAX) {
                twins__errf(err,
                            "history.%.*s[%" PRIu32 "]: ts must be a whole number of ms since "
                            "1970, 0 up to 2^48",
                            kn, kp, j);
                return -EINVAL;
            }
            double x;
            if (!twins__number(val, &x) || !isfinite(x)) {
                twins__errf(err, "history.%.*s[%" PRIu32 "]: value must be a finite number", kn, kp,
                            j);
                return -EINVAL;
            }
        }
        *points += v->via.array.size;
    }
    return 0;
}

int twin_import_parse(const char *line, size_t len, size_t max_line, size_t max_doc,
                      msgpack_zone *zone, struct twin_import *out, char *err)
{
    struct twin_limits lim = {max_line, TWIN_DEPTH_CAP, UINT_MAX};
    msgpack_object o, d;
    msgpack_sbuffer sb;
    size_t i = 0;
    char *buf;
    int rc;

    if (!line || !zone || !out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->history.type = MSGPACK_OBJECT_NIL;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
        i++;
    if (i == len || line[i] != '{') {
        twins__errf(err, "expected a JSON object (one twin per line)");
        return -EINVAL;
    }
    if (len > max_line) {
        twins__errf(err, "line of %zu bytes, above the limit of %zu", len, max_line);
        return -E2BIG;
    }
    rc = twin_input_decode(line, len, &lim, zone, &o, err);
    if (rc)
        return rc == -ENOMEM ? -ENOMEM : -EINVAL;
    /* the document without "history", members checked */
    d = o;
    d.via.map.ptr = msgpack_zone_malloc(zone, (o.via.map.size + 1) * sizeof *o.via.map.ptr);
    if (!d.via.map.ptr) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    d.via.map.size = 0;
    for (uint32_t k = 0; k < o.via.map.size; k++) {
        const msgpack_object *key = &o.via.map.ptr[k].key;

        for (uint32_t j = 0; j < k; j++)
            if (twin_value_equal(&o.via.map.ptr[j].key, key)) {
                twins__errf(err, "member '%.*s' appears twice", (int)key->via.str.size,
                            key->via.str.ptr);
                return -EINVAL;
            }
        if (twins__key_is(key, "history", 7)) {
            out->history = o.via.map.ptr[k].val;
            rc = check_history(&out->history, &out->points, err);
            if (rc)
                return rc;
            continue;
        }
        if (!known_member(key)) {
            twins__errf(err, "unknown member '%.*s' (from a newer twinhub?)",
                        key->type == MSGPACK_OBJECT_STR ? (int)key->via.str.size : 1,
                        key->type == MSGPACK_OBJECT_STR ? key->via.str.ptr : "?");
            return -EINVAL;
        }
        d.via.map.ptr[d.via.map.size++] = o.via.map.ptr[k];
    }
    /* as stored bytes, decoded as the store decodes them: the same checks, the same doc */
    msgpack_sbuffer_init(&sb);
    {
        msgpack_packer pk;

        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc = msgpack_pack_object(&pk, d) ? -ENOMEM : 0;
    }
    buf = rc ? NULL : msgpack_zone_malloc(zone, sb.size ? sb.size : 1);
    if (buf)
        memcpy(buf, sb.data, sb.size);
    len = sb.size;
    msgpack_sbuffer_destroy(&sb);
    if (!buf) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    rc = twin_doc_decode(buf, len, zone, &out->doc, err);
    if (rc) {
        if (err && strncmp(err, "stored document: ", 17) == 0)
            memmove(err, err + 17, strlen(err + 17) + 1);
        return rc == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    if (twins__check_id(out->doc.id, out->doc.id_len, err) ||
        memchr(out->doc.id, '\0', out->doc.id_len)) {
        twins__errf(err, "id: expected 1..%d bytes without NUL", TWIN_ID_MAX);
        return -EINVAL;
    }
    if (max_doc) { /* limits.max_twin_size, as twin_put will check it */
        msgpack_sbuffer_init(&sb);
        rc = twin_doc_encode(&out->doc, &sb);
        size_t size = sb.size;
        msgpack_sbuffer_destroy(&sb);
        if (rc) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        if (size > max_doc) {
            twins__errf(err, "the document is %zu bytes, above limits.max_twin_size %zu", size,
                        max_doc);
            return -E2BIG;
        }
    }
    if (out->doc.version == 0) {
        twins__errf(err, "version: a stored twin has version 1 or more");
        return -EINVAL;
    }
    if ((out->doc.reported.type != MSGPACK_OBJECT_NIL &&
         (rc = check__tree(&out->doc.reported, "reported", err))) ||
        (out->doc.desired.type != MSGPACK_OBJECT_NIL &&
         (rc = check__tree(&out->doc.desired, "desired", err))))
        return rc;
    return 0;
}

int twin_import_check(struct twin_txn *txn, const struct twin_import *im, char *err)
{
    const struct twin_doc *d = &im->doc;
    const void *buf;
    size_t len;
    uint64_t v;
    int rc = twin_get_raw(txn, d->id, d->id_len, &buf, &len, err);

    if (rc == 0) {
        if (twin_doc_version(buf, len, &v))
            v = 0;
        twins__errf(err, "twin '%.*s' is already in the store (version %" PRIu64 ")",
                    (int)d->id_len, d->id, v);
        return -EEXIST;
    }
    if (rc != -ENOENT)
        return rc;
    rc = twin_tombstone_get(txn, d->id, d->id_len, &v, err);
    if (rc == 0 && v >= d->version) {
        twins__errf(err,
                    "twin '%.*s' was deleted from this store at version %" PRIu64
                    "; version %" PRIu64 " would be used twice",
                    (int)d->id_len, d->id, v, d->version);
        return -EEXIST;
    }
    return rc == -ENOENT ? 0 : rc;
}

int twin_import_write(struct twin_txn *txn, const struct twin_import *im, char *err)
{
    const struct twin_doc *d = &im->doc;
    const msgpack_object *h = &im->history;
    int rc = store__need_write(txn, "twin_import_write", err);

    if (rc || (rc = twin_import_check(txn, im, err)) ||
        (rc = store__tomb_clear(txn, d->id, d->id_len, err)) || (rc = twin_put(txn, d, err)))
        return rc;
    for (uint32_t i = 0; h->type == MSGPACK_OBJECT_MAP && i < h->via.map.size; i++) {
        const msgpack_object *k = &h->via.map.ptr[i].key, *pts = &h->via.map.ptr[i].val;

        for (uint32_t j = 0; j < pts->via.array.size; j++) {
            const msgpack_object *ts = &pts->via.array.ptr[j].via.array.ptr[0];
            const msgpack_object *val = &pts->via.array.ptr[j].via.array.ptr[1];
            double x = 0;
            twins__number(val, &x); /* check_history made sure it is a finite number */

            rc = twin_history_append(txn, d->id, d->id_len, k->via.str.ptr, k->via.str.size,
                                     (int64_t)ts->via.u64, x, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}
