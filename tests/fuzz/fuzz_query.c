/* fuzz_query.c: the fleet query and history ranges of query/ (query_fields_split, query_new,
 * query_run page after page, query_row, query_history) over a real LMDB store, and the time
 * parser every caller of them uses (config_parse_time_ms, hub/config.c).
 *
 * The store is built once per process in the scratch directory (queries only read): six twins
 * with numbers (integers, floats, NaN, infinities, the largest uint64), strings (UTF-8, control
 * bytes, invalid UTF-8, empty, long), bins, nested maps and arrays, missing fields, desired and
 * delta, predicted, rule states, and history (several points of heart_rate, one series each of
 * the other numeric leaves); one id has bytes that are not UTF-8, one is 128 bytes long.
 *
 * Input: one flags byte, then parts separated by 0xc1 (FUZZ_SEP), in this order (a missing part
 * is empty):
 *   0 where   1 fields   2 order   3 prefix (empty: none)   4 cursor (empty: none)
 *   5 limit (little-endian, up to 4 bytes)   6 history path   7 from   8 to
 *   9 step (little-endian signed, up to 8 bytes)   10 history limit (little-endian, up to 4)
 *   11 a time string for config_parse_time_ms   12 a stored document for query_row
 * Flags: bits 0-1 the limits (0 defaults; 1 max_limit 3, max_reply 1500, max_points 4,
 * max_expr 64; 2 all 0; 3 defaults with max_reply 1100); bit 2 the fields part is split at
 * '\n' into raw fields (empty ones, duplicates, more than QUERY_FIELDS_MAX) instead of through
 * query_fields_split; bit 3 the hub time is T0 + 1 h instead of T0; bits 4-6 the twin of the
 * history range (6: one that does not exist, 7: an empty id); bit 7 from and to are little-
 * endian signed 8-byte numbers instead of time strings (config_parse_time_ms, relative to the
 * hub time; a string that does not parse is T0 - 300 s for from and T0 for to).
 *
 * Invariants:
 *   - query_fields_split: 0 with 1..QUERY_FIELDS_MAX trimmed non-empty fields inside the text,
 *     or -EINVAL with "fields: ...";
 *   - query_new: 0, -EINVAL or -ENOMEM; an error is NUL-terminated within QUERY_ERR_LEN and
 *     starts with its part ("limit:" first when the limit is over, "prefix:", "where:",
 *     "fields[" / "fields:", "order:", "cursor:" only when that part was given), and a
 *     "part:1:COL:" names a column inside that part's text (+1);
 *   - query_run: 0 or -EIO/-ENOMEM with nothing packed; the answer is exactly one msgpack map
 *     {rows, next, scanned, matched, took_ms}; rows an array of res.rows <= the limit rows,
 *     next a URL-safe string shorter than QUERY_CURSOR_MAX exactly when res.more, rows <=
 *     matched <= scanned (by id, and no next page: matched == rows);
 *   - every row equals query_row's row of that twin, which matches exactly when the where,
 *     compiled and evaluated here against the fully decoded document, is true; a field's value
 *     agrees with the field evaluated here;
 *   - following next (each cursor compiles) ends within twins + 1 pages, never returns an id
 *     twice, by id in ascending id order; from the first page, the union of the pages is the
 *     set of twins with the prefix that query_row matches (any order); from a given cursor, by
 *     id, every matching id from the first row on;
 *   - query_row on arbitrary bytes: 0, -EBADMSG, -ENOMEM or -EIO;
 *   - query_history: -EINVAL exactly for a bad range, -ENOENT exactly for no twin, else one map
 *     {id, path, from, to, [step,] points|buckets, more}: points (ts, value) equal to the series
 *     read directly between from and to, at most the limit, more exactly when it cut; buckets
 *     aligned to step, t ascending, each the min, max, count (and avg) of its points;
 *   - config_parse_time_ms: 0 or -EINVAL, and agrees with an independent strict reading of the
 *     documented forms (digits, "now", "-<duration>", YYYY-MM-DD[THH:MM:SS[.fff]Z]).
 */
#include "fuzz.h"

#include "config.h"
#include "query.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T0 1800000000000LL
#define NTWINS 6
#define NPARTS 13
#define MAX_PAGES 50

static struct twin_store *store;
static bool trace; /* FUZZ_TRACE set: what each step answered, on stderr */
static char ids[NTWINS][TWIN_ID_MAX + 1];
static size_t id_lens[NTWINS];

/* ---------------------------------------------------------------------------------------------
 * The store
 * ------------------------------------------------------------------------------------------ */

struct seed {
    int twin;
    const void *payload; /* JSON text, or msgpack when len is set */
    size_t len;
    int64_t now;
    int kind; /* 0 telemetry, 1 desired, 2 online, 3 offline */
};

static int seed_fn(struct twin_txn *txn, void *ctx)
{
    const struct seed *s = ctx;
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    char err[TWIN_ERR_LEN] = "";
    msgpack_zone z;
    msgpack_object o;
    int rc = 0;
    const char *id = ids[s->twin];
    size_t il = id_lens[s->twin];

    msgpack_zone_init(&z, 4096);
    if (s->kind <= 1) {
        size_t len = s->len ? s->len : strlen(s->payload);
        rc = twin_input_decode(s->payload, len, &lim, &z, &o, err);
        FUZZ_CHECK(rc == 0, "seed for twin %d: %s", s->twin, err);
    }
    if (s->kind == 0) {
        struct twin_apply_result res;
        rc = twin_telemetry_apply(txn, id, il, &o, s->now, &res, err);
    } else if (s->kind == 1) {
        struct twin_desired_result res;
        rc = twin_desired_apply(txn, id, il, &o, TWIN_VERSION_ANY, s->now, &res, err);
    } else {
        struct twin_presence_result pr;
        rc = twin_presence_apply(txn, id, il, s->kind == 2, s->now, &pr, err);
    }
    FUZZ_CHECK(rc == 0, "seed for twin %d (kind %d): %d %s", s->twin, s->kind, rc, err);
    msgpack_zone_destroy(&z);
    return 0;
}

static int extras_fn(struct twin_txn *txn, void *ctx)
{
    char err[TWIN_ERR_LEN] = "";
    unsigned char buf[RULES_STATE_LEN];
    struct rules_record rec = {.since = T0, .wake = INT64_MAX};
    static const char *const names[] = {"tachycardia", "lead_off", "quiet"};
    static const enum rules_state states[] = {RULES_FIRING, RULES_PENDING, RULES_INACTIVE};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone z;
    msgpack_object o;
    size_t off = 0;
    int rc;

    (void)ctx;
    for (int i = 0; i < 3; i++) {
        rec.state = states[i];
        rules_record_encode(&rec, buf);
        rc = twin_rule_state_put(txn, ids[0], id_lens[0], names[i], strlen(names[i]), buf,
                                 RULES_STATE_LEN, err);
        FUZZ_CHECK(rc == 0, "rule state: %s", err);
    }
    /* a rule state that does not decode: the rules field leaves it out */
    rc = twin_rule_state_put(txn, ids[1], id_lens[1], "broken", 6, "x", 1, err);
    FUZZ_CHECK(rc == 0, "rule state: %s", err);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "value", 5);
    msgpack_pack_double(&pk, 131.5);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_int64(&pk, T0);
    msgpack_zone_init(&z, 1024);
    FUZZ_CHECK(msgpack_unpack(sb.data, sb.size, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS, "unpack");
    rc = twin_predicted_set(txn, ids[0], id_lens[0], "hr_forecast", 11, &o, NULL, err);
    FUZZ_CHECK(rc == 0, "predicted: %s", err);
    rc = twin_predicted_set(txn, ids[3], id_lens[3], "m", 1, &o.via.map.ptr[0].val, NULL, err);
    FUZZ_CHECK(rc == 0, "predicted: %s", err);
    msgpack_zone_destroy(&z);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

/* Telemetry in msgpack for what JSON cannot say: NaN, infinities, bins, invalid UTF-8. */
static size_t odd_payload(unsigned char *out, size_t cap)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t n;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 10);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_int64(&pk, T0 - 30000);
    msgpack_pack_str_with_body(&pk, "nan", 3);
    msgpack_pack_double(&pk, NAN);
    msgpack_pack_str_with_body(&pk, "inf", 3);
    msgpack_pack_double(&pk, -INFINITY);
    msgpack_pack_str_with_body(&pk, "bad", 3);
    msgpack_pack_str_with_body(&pk, "\xc3\x28\xff", 3);
    msgpack_pack_str_with_body(&pk, "bin", 3);
    msgpack_pack_bin_with_body(&pk, "\x00\x01\x02", 3);
    msgpack_pack_str_with_body(&pk, "f32", 3);
    msgpack_pack_float(&pk, 0.1f);
    msgpack_pack_str_with_body(&pk, "heart_rate", 10);
    msgpack_pack_int64(&pk, -7);
    msgpack_pack_str_with_body(&pk, "deep", 4);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "a", 1);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "b", 1);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "c", 1);
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "a b", 3);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    msgpack_pack_str_with_body(&pk, "\xe2\x82\xac", 3);
    msgpack_pack_str_with_body(&pk, "euro", 4);
    n = sb.size < cap ? sb.size : cap;
    memcpy(out, sb.data, n);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

static void store_close(void)
{
    twin_store_close(store);
    store = NULL;
}

static void store_build(void)
{
    static unsigned char odd[512];
    static char js[4][256];
    char err[TWIN_ERR_LEN], db[4200];
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    const char *dir = fuzz_tmpdir();

    static const char *const names[NTWINS] = {"ecg-0001", "ecg-0002",     "ecg-10",
                                              "pump-1",   "\xff\xfe-odd", NULL};
    for (int i = 0; i < NTWINS; i++) {
        if (names[i]) {
            snprintf(ids[i], sizeof ids[i], "%s", names[i]);
        } else {
            memset(ids[i], 'x', TWIN_ID_MAX);
            ids[i][0] = 'e';
            ids[i][TWIN_ID_MAX] = '\0';
        }
        id_lens[i] = strlen(ids[i]);
    }
    snprintf(db, sizeof db, "%s/db", dir);
    so.path = db;
    so.map_size = 4u << 20;
    so.max_clock_skew_ms = 0;
    FUZZ_CHECK(twin_store_open(&store, &so, err) == 0, "open: %s", err);
    atexit(store_close); /* runs before the scratch directory goes (atexit is LIFO) */

    snprintf(js[0], sizeof js[0], "{\"seq\":1,\"ts\":%lld,\"heart_rate\":140,\"spo2\":95}",
             (long long)(T0 - 200000));
    snprintf(js[1], sizeof js[1],
             "{\"seq\":2,\"ts\":%lld,\"heart_rate\":120,\"spo2\":92.5,\"v\":{\"a\":1,"
             "\"b\":{\"c\":-2.5}}}",
             (long long)(T0 - 50000));
    snprintf(js[2], sizeof js[2],
             "{\"seq\":3,\"ts\":%lld,\"heart_rate\":130,\"ecg\":[1,2,3],"
             "\"name\":\"b\\u00e9d 4\"}",
             (long long)(T0 - 20000));
    snprintf(js[3], sizeof js[3], "{\"ts\":%lld,\"heart_rate\":130.5}", (long long)(T0 - 20000));
    const struct seed seeds[] = {
        {0, js[0], 0, T0 - 200000, 0},
        {0, js[1], 0, T0 - 50000, 0},
        {0, js[2], 0, T0 - 20000, 0},
        {0, js[3], 0, T0 - 20000, 0}, /* a second point in the same millisecond */
        {0, NULL, 0, T0 - 20000, 2},
        {1,
         "{\"heart_rate\":80,\"spo2\":98.25,\"flag\":true,\"neg\":-1e300,\"i\":-9007199254740993,"
         "\"tiny\":5e-324,\"name\":\"\"}",
         0, T0 - 10000, 0},
        {1, NULL, 0, T0 - 10000, 2},
        {2,
         "{\"name\":\"zz\\u0001\\u007f\\uffff\\ud83d\\ude00\",\"arr\":[],\"m\":{},"
         "\"list\":[1,\"two\",[3],{\"four\":4}],\"spo2\":\"97\",\"long\":\""
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "a"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1\""
         "}",
         0, T0 - 100000, 0},
        {2, NULL, 0, T0 - 100000, 3},
        {3, "{\"rate\":5,\"mode\":\"auto\",\"limits\":{\"max\":9}}", 0, T0 - 5000, 1},
        {3, "{\"rate\":4,\"mode\":\"auto\"}", 0, T0 - 4000, 0},
        {4, odd, 0, T0 - 30000, 0},
        {5,
         "{\"heart_rate\":150,\"spo2\":97,\"long\":\""
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "a"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2\""
         "}",
         0, T0 - 10000, 0},
        {5, NULL, 0, T0 - 10000, 2},
    };
    size_t odd_len = odd_payload(odd, sizeof odd);
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        struct seed s = seeds[i];
        if (s.payload == odd)
            s.len = odd_len;
        FUZZ_CHECK(twin_store_write(store, seed_fn, &s, err) == 0, "seed %zu: %s", i, err);
    }
    FUZZ_CHECK(twin_store_write(store, extras_fn, NULL, err) == 0, "extras: %s", err);
}

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------ */

static const msgpack_object *get(const msgpack_object *m, const char *k)
{
    if (!m || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    return twin_value_get(m, k, strlen(k));
}

static bool is_uint(const msgpack_object *o)
{
    return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

static bool is_num(const msgpack_object *o)
{
    return o && (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                 o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || o->type == MSGPACK_OBJECT_FLOAT32 ||
                 o->type == MSGPACK_OBJECT_FLOAT64);
}

static double num(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)o->via.i64;
    default:
        return o->via.f64;
    }
}

static int64_t inum(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64 : o->via.i64;
}

static bool is_int(const msgpack_object *o)
{
    return o && (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                 o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
}

/* Unpacks exactly one object from buf[0..len) into zone: no trailing bytes. */
static void unpack_one(const char *buf, size_t len, msgpack_zone *z, msgpack_object *o,
                       const char *what)
{
    size_t off = 0;
    int rc = msgpack_unpack(buf, len, &off, z, o);
    FUZZ_CHECK(rc == MSGPACK_UNPACK_SUCCESS && off == len,
               "%s: not one msgpack object (%d, %zu of %zu)", what, rc, off, len);
}

/* Packs o and compares the bytes with b's: the same value, the same types. */
static bool same_value(const msgpack_object *a, const msgpack_object *b)
{
    msgpack_sbuffer sa, sb;
    msgpack_packer pa, pb;
    bool eq;

    msgpack_sbuffer_init(&sa);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pa, &sa, msgpack_sbuffer_write);
    msgpack_packer_init(&pb, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pa, *a);
    msgpack_pack_object(&pb, *b);
    eq = sa.size == sb.size && memcmp(sa.data, sb.data, sa.size) == 0;
    msgpack_sbuffer_destroy(&sa);
    msgpack_sbuffer_destroy(&sb);
    return eq;
}

static uint64_t le(const struct fuzz_part *p, size_t max)
{
    uint64_t v = 0;
    for (size_t i = 0; i < p->n && i < max; i++)
        v |= (uint64_t)p->p[i] << (8 * i);
    return v;
}

static int twin_of(const char *id, size_t len)
{
    for (int i = 0; i < NTWINS; i++)
        if (id_lens[i] == len && memcmp(ids[i], id, len) == 0)
            return i;
    return -1;
}

static int id_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* ---------------------------------------------------------------------------------------------
 * Reference evaluation against the whole document
 * ------------------------------------------------------------------------------------------ */

struct ref_ctx {
    struct twin_txn *txn;
    int twin;
};

static int ref_history(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                       void *cb_ctx)
{
    struct ref_ctx *r = ctx;
    char terr[TWIN_ERR_LEN];
    return twin_history_read(r->txn, ids[r->twin], id_lens[r->twin], path, len, since, cb, cb_ctx,
                             terr);
}

/* Evaluates text against twin i decoded whole. Returns 0 (*v set; a string may point into the
 * expression, which the caller frees with rules_expr_free after looking at it), 1 (does not
 * compile: the query must not have either), or the evaluator's error. */
static int ref_eval(struct twin_txn *txn, int i, const struct twin_doc *doc, const char *text,
                    size_t len, int64_t now, struct rules_value *v, struct rules_expr **e)
{
    char rerr[RULES_ERR_LEN];
    struct ref_ctx rc = {txn, i};
    struct rules_twin tw = {.doc = doc, .now = now, .history = ref_history, .history_ctx = &rc};
    *e = NULL;
    if (rules_expr_compile(text, len, e, rerr) < 0)
        return 1;
    return rules_expr_eval(*e, &tw, v, NULL);
}

/* Whether a row's packed value agrees with the value evaluated here. */
static void check_field(const msgpack_object *got, const struct rules_value *v, const char *text,
                        size_t len)
{
    switch (v->type) {
    case RULES_BOOL:
        FUZZ_CHECK(got->type == MSGPACK_OBJECT_BOOLEAN && got->via.boolean == v->b,
                   "field '%.*s': a boolean %d evaluated, packed type %d", (int)len, text, v->b,
                   got->type);
        break;
    case RULES_NUM:
        if (!isfinite(v->n)) {
            FUZZ_CHECK(got->type == MSGPACK_OBJECT_NIL || (is_num(got) && !isfinite(num(got))) ||
                           (is_num(got) && isnan(v->n)),
                       "field '%.*s': %g evaluated, packed type %d", (int)len, text, v->n,
                       got->type);
        } else {
            FUZZ_CHECK(is_num(got) && num(got) == v->n, "field '%.*s': %.17g evaluated, packed %g",
                       (int)len, text, v->n, is_num(got) ? num(got) : NAN);
        }
        break;
    case RULES_STR:
        FUZZ_CHECK(got->type == MSGPACK_OBJECT_STR && got->via.str.size == v->len &&
                       memcmp(got->via.str.ptr, v->s, v->len) == 0,
                   "field '%.*s': a string evaluated, packed type %d", (int)len, text, got->type);
        break;
    default:
        /* nil, or a bare path packed as the map, array, bin or non-finite number it names
           (which the evaluator sees as nil) */
        FUZZ_CHECK(got->type == MSGPACK_OBJECT_NIL || got->type == MSGPACK_OBJECT_MAP ||
                       got->type == MSGPACK_OBJECT_ARRAY || got->type == MSGPACK_OBJECT_BIN ||
                       got->type == MSGPACK_OBJECT_EXT || (is_num(got) && !isfinite(num(got))),
                   "field '%.*s': nothing evaluated, packed type %d", (int)len, text, got->type);
        break;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Queries
 * ------------------------------------------------------------------------------------------ */

struct ctx {
    struct fuzz_part part[NPARTS];
    struct query_limits lim;
    int64_t now;
    struct twin_txn *txn;
    struct query_spec spec;
    unsigned limit; /* rows per page query_new must settle on */
    /* per twin: query_row's answer */
    bool matched[NTWINS];
    msgpack_zone rowzone;
    msgpack_object row[NTWINS];
};

static bool has_prefix(const struct ctx *c, int i)
{
    const struct query_spec *s = &c->spec;
    return !s->prefix || !s->prefix_len ||
           (id_lens[i] >= s->prefix_len && memcmp(ids[i], s->prefix, s->prefix_len) == 0);
}

/* "part:1:COL:" names a column inside text[0..len) (+1). */
static void check_col(const char *err, size_t skip, size_t len)
{
    if (strncmp(err + skip, ":1:", 3) != 0)
        return;
    char *end;
    unsigned long col = strtoul(err + skip + 3, &end, 10);
    FUZZ_CHECK(end != err + skip + 3 && *end == ':' && col >= 1 && col <= len + 1,
               "a column outside the part's %zu bytes: %s", len, err);
}

static void check_new_error(const struct ctx *c, const struct query_spec *s, int rc,
                            const char *err)
{
    FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM, "query_new returned %d", rc);
    FUZZ_CHECK(memchr(err, '\0', QUERY_ERR_LEN), "query_new: the error is not terminated");
    if (rc == -ENOMEM)
        return;
    if (s->limit > c->lim.max_limit) {
        FUZZ_CHECK(strncmp(err, "limit:", 6) == 0, "limit %u over %u: %s", s->limit,
                   c->lim.max_limit, err);
        return;
    }
    FUZZ_CHECK(strncmp(err, "limit:", 6) != 0, "a good limit refused: %s", err);
    if (s->prefix_len > TWIN_ID_MAX) {
        FUZZ_CHECK(strncmp(err, "prefix:", 7) == 0, "a long prefix: %s", err);
        return;
    }
    if (strncmp(err, "where:", 6) == 0) {
        FUZZ_CHECK(s->where_len > 0, "where: without a where");
        check_col(err, 5, s->where_len);
    } else if (strncmp(err, "fields[", 7) == 0) {
        char *end;
        unsigned long i = strtoul(err + 7, &end, 10);
        FUZZ_CHECK(i < s->nfields && i < QUERY_FIELDS_MAX && strncmp(end, "]:", 2) == 0,
                   "fields error naming no field: %s", err);
        check_col(end + 1, 0, s->field_len[i]);
    } else if (strncmp(err, "fields:", 7) == 0) {
        FUZZ_CHECK(s->nfields > QUERY_FIELDS_MAX, "fields: with %u fields: %s", s->nfields, err);
    } else if (strncmp(err, "order:", 6) == 0) {
        FUZZ_CHECK(s->order_len > 0, "order: without an order");
        check_col(err, 5, s->order_len);
    } else {
        FUZZ_CHECK(strncmp(err, "cursor:", 7) == 0 && s->cursor_len > 0,
                   "query_new error naming no part: '%s'", err);
    }
}

/* query_new, checking what it answers. Returns the query or NULL. */
static struct query *compile(struct ctx *c, const struct query_spec *s)
{
    struct query *q = NULL;
    char err[QUERY_ERR_LEN];

    memset(err, 0x5a, sizeof err);
    int rc = query_new(s, &c->lim, &q, err);
    if (trace)
        fprintf(stderr, "fuzz_query: query_new %d %s\n", rc, rc ? err : "");
    if (rc < 0) {
        FUZZ_CHECK(q == NULL, "query_new failed and gave a query");
        check_new_error(c, s, rc, err);
        return NULL;
    }
    FUZZ_CHECK(rc == 0 && q, "query_new returned %d", rc);
    FUZZ_CHECK(s->limit <= c->lim.max_limit, "limit %u over %u accepted", s->limit,
               c->lim.max_limit);
    return q;
}

/* query_row on every twin, against the where evaluated here. */
static void rows_of_twins(struct ctx *c, struct query *q)
{
    for (int i = 0; i < NTWINS; i++) {
        const void *buf;
        size_t len;
        char terr[TWIN_ERR_LEN], err[QUERY_ERR_LEN];
        msgpack_sbuffer sb;
        msgpack_packer pk;
        bool matched = true;

        FUZZ_CHECK(twin_get_raw(c->txn, ids[i], id_lens[i], &buf, &len, terr) == 0, "%s", terr);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        int rc = query_row(q, c->txn, ids[i], id_lens[i], buf, len, c->now, &pk, &matched, err);
        FUZZ_CHECK(rc == 0, "query_row of %d: %d %s", i, rc, err);
        FUZZ_CHECK(matched == (sb.size > 0), "query_row: matched %d, %zu bytes", matched, sb.size);
        c->matched[i] = matched;
        c->row[i].type = MSGPACK_OBJECT_NIL;
        if (matched) {
            char *copy = msgpack_zone_malloc(&c->rowzone, sb.size);
            FUZZ_CHECK(copy, "no memory");
            memcpy(copy, sb.data, sb.size);
            unpack_one(copy, sb.size, &c->rowzone, &c->row[i], "query_row");
        }
        msgpack_sbuffer_destroy(&sb);

        /* the where and the fields, evaluated here against the whole document */
        msgpack_zone z;
        struct twin_doc doc;
        struct rules_value v;
        msgpack_zone_init(&z, 4096);
        FUZZ_CHECK(twin_doc_decode(buf, len, &z, &doc, terr) == 0, "decode: %s", terr);
        const struct query_spec *s = &c->spec;
        bool want = true;
        const char *w = s->where;
        size_t wl = s->where_len;
        while (wl && (*w == ' ' || *w == '\t' || *w == '\n' || *w == '\r'))
            w++, wl--;
        while (wl &&
               (w[wl - 1] == ' ' || w[wl - 1] == '\t' || w[wl - 1] == '\n' || w[wl - 1] == '\r'))
            wl--;
        if (wl) {
            struct rules_expr *e;
            rc = ref_eval(c->txn, i, &doc, s->where, s->where_len, c->now, &v, &e);
            FUZZ_CHECK(rc == 0, "the where compiles here: %d", rc);
            want = rules_value_true(&v);
            rules_expr_free(e);
        }
        FUZZ_CHECK(matched == want, "twin %d: query_row matched %d, the where evaluates %d", i,
                   matched, want);
        if (matched && s->nfields) {
            const msgpack_object *r = &c->row[i];
            FUZZ_CHECK(r->type == MSGPACK_OBJECT_MAP, "a row that is not a map");
            const msgpack_object *id = get(r, "id"), *ver = get(r, "version");
            FUZZ_CHECK(id && id->type == MSGPACK_OBJECT_STR && id->via.str.size == id_lens[i] &&
                           memcmp(id->via.str.ptr, ids[i], id_lens[i]) == 0,
                       "the row's id");
            FUZZ_CHECK(is_uint(ver) && ver->via.u64 == doc.version, "the row's version");
            for (unsigned f = 0; f < s->nfields; f++) {
                const char *t = s->fields[f];
                size_t tl = s->field_len[f];
                while (tl && (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r'))
                    t++, tl--;
                while (tl && (t[tl - 1] == ' ' || t[tl - 1] == '\t' || t[tl - 1] == '\n' ||
                              t[tl - 1] == '\r'))
                    tl--;
                const msgpack_object *got = twin_value_get(r, t, tl);
                FUZZ_CHECK(got, "field '%.*s' missing from the row", (int)tl, t);
                if ((tl == 2 && !memcmp(t, "id", 2)) || (tl == 7 && !memcmp(t, "version", 7)))
                    continue;
                if (tl == 5 && !memcmp(t, "rules", 5)) {
                    FUZZ_CHECK(got->type == MSGPACK_OBJECT_MAP, "the rules field");
                    continue;
                }
                struct rules_expr *e;
                rc = ref_eval(c->txn, i, &doc, s->fields[f], s->field_len[f], c->now, &v, &e);
                FUZZ_CHECK(rc == 0, "a field compiles here: %d", rc);
                check_field(got, &v, t, tl);
                rules_expr_free(e);
            }
            FUZZ_CHECK(r->via.map.size <= s->nfields + 2, "a row of %u keys for %u fields",
                       r->via.map.size, s->nfields);
        } else if (matched) {
            msgpack_object whole;
            unpack_one(buf, len, &z, &whole, "the stored document");
            FUZZ_CHECK(same_value(&c->row[i], &whole), "a row without fields is not the document");
        }
        msgpack_zone_destroy(&z);
    }
}

/* One page: query_run, the answer's shape. Fills seen[] with the rows' twins in order. */
static void run_page(struct ctx *c, struct query *q, struct query_result *res, int *seen,
                     unsigned *nseen, bool by_id)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone z;
    msgpack_object o;
    char err[QUERY_ERR_LEN];

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    memset(err, 0x5a, sizeof err);
    int rc = query_run(q, c->txn, c->now, &pk, res, err);
    FUZZ_CHECK(memchr(err, '\0', QUERY_ERR_LEN), "query_run: the error is not terminated");
    if (rc < 0) {
        FUZZ_CHECK(rc == -ENOMEM || rc == -EIO, "query_run returned %d (%s)", rc, err);
        FUZZ_CHECK(sb.size == 0, "query_run failed and packed %zu bytes", sb.size);
        FUZZ_CHECK(rc == -ENOMEM, "query_run on a sound store: %d %s", rc, err);
        msgpack_sbuffer_destroy(&sb);
        *nseen = 0;
        res->more = false;
        return;
    }
    FUZZ_CHECK(rc == 0, "query_run returned %d", rc);
    msgpack_zone_init(&z, 4096);
    unpack_one(sb.data, sb.size, &z, &o, "query_run");
    FUZZ_CHECK(o.type == MSGPACK_OBJECT_MAP && o.via.map.size == 5, "the answer is not a map of 5");
    const msgpack_object *rows = get(&o, "rows"), *next = get(&o, "next"),
                         *scanned = get(&o, "scanned"), *matched = get(&o, "matched"),
                         *took = get(&o, "took_ms");
    FUZZ_CHECK(rows && rows->type == MSGPACK_OBJECT_ARRAY && rows->via.array.size == res->rows,
               "rows: %u packed, %u told",
               rows && rows->type == MSGPACK_OBJECT_ARRAY ? rows->via.array.size : 0, res->rows);
    FUZZ_CHECK(res->rows <= c->limit, "%u rows over the limit %u", res->rows, c->limit);
    FUZZ_CHECK(
        next && (res->more ? next->type == MSGPACK_OBJECT_STR : next->type == MSGPACK_OBJECT_NIL),
        "next and more disagree");
    if (res->more) {
        size_t n = strnlen(res->next, QUERY_CURSOR_MAX);
        FUZZ_CHECK(n < QUERY_CURSOR_MAX && n > 0, "a cursor of %zu bytes", n);
        FUZZ_CHECK(strspn(res->next, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-_") == n,
                   "a cursor that is not URL-safe: %s", res->next);
        FUZZ_CHECK(next->via.str.size == n && memcmp(next->via.str.ptr, res->next, n) == 0,
                   "the packed next is not res.next");
    }
    FUZZ_CHECK(is_uint(scanned) && scanned->via.u64 == res->scanned, "scanned");
    FUZZ_CHECK(is_uint(matched) && matched->via.u64 == res->matched, "matched");
    FUZZ_CHECK(took &&
                   (took->type == MSGPACK_OBJECT_FLOAT64 || took->type == MSGPACK_OBJECT_FLOAT32) &&
                   took->via.f64 >= 0,
               "took_ms");
    FUZZ_CHECK(res->rows <= res->matched && res->matched <= res->scanned && res->scanned <= NTWINS,
               "rows %u, matched %llu, scanned %llu", res->rows, (unsigned long long)res->matched,
               (unsigned long long)res->scanned);
    if (by_id && !res->more)
        FUZZ_CHECK(res->matched == res->rows, "by id, the last page: matched %llu, rows %u",
                   (unsigned long long)res->matched, res->rows);
    *nseen = 0;
    for (uint32_t k = 0; k < rows->via.array.size; k++) {
        const msgpack_object *r = &rows->via.array.ptr[k], *id = get(r, "id");
        FUZZ_CHECK(id && id->type == MSGPACK_OBJECT_STR, "a row without an id");
        int i = twin_of(id->via.str.ptr, id->via.str.size);
        FUZZ_CHECK(i >= 0, "a row of no twin");
        FUZZ_CHECK(c->matched[i] && has_prefix(c, i), "twin %d is a row, query_row: %d", i,
                   c->matched[i]);
        FUZZ_CHECK(same_value(r, &c->row[i]), "twin %d: the page's row is not query_row's", i);
        seen[(*nseen)++] = i;
        if (trace) {
            msgpack_sbuffer js;
            msgpack_sbuffer_init(&js);
            if (twin_json_write(r, &js) == 0)
                fprintf(stderr, "fuzz_query: row %.*s\n", (int)js.size, js.data);
            msgpack_sbuffer_destroy(&js);
        }
    }
    msgpack_zone_destroy(&z);
    msgpack_sbuffer_destroy(&sb);
}

/* Follows next from q's first page. from_start: q has no cursor of the input's. */
static void run_pages(struct ctx *c, struct query *q, const struct query_spec *s, bool from_start)
{
    bool by_id = !s->order || !s->order_len; /* a blank order is by id too */
    bool got[NTWINS] = {0};
    int first = -1, last = -1;
    static char cursor[QUERY_CURSOR_MAX];
    struct query_spec ns = *s;
    struct query *cur = q;
    unsigned pages = 0;

    {
        const char *o = s->order;
        size_t ol = s->order_len;
        while (ol && (*o == ' ' || *o == '\t' || *o == '\n' || *o == '\r'))
            o++, ol--;
        by_id = ol == 0;
    }
    for (;;) {
        struct query_result res;
        int seen[NTWINS + 1];
        unsigned n;

        run_page(c, cur, &res, seen, &n, by_id);
        if (cur != q)
            query_free(cur);
        pages++;
        for (unsigned k = 0; k < n; k++) {
            int i = seen[k];
            FUZZ_CHECK(!got[i], "twin %d returned twice (page %u)", i, pages);
            got[i] = true;
            if (by_id && last >= 0)
                FUZZ_CHECK(id_cmp(ids[last], id_lens[last], ids[i], id_lens[i]) < 0,
                           "by id, twin %d after twin %d", i, last);
            if (first < 0)
                first = i;
            last = i;
        }
        if (trace)
            fprintf(stderr, "fuzz_query: page %u: %u rows, more %d\n", pages, n, res.more);
        if (!res.more)
            break;
        FUZZ_CHECK(n > 0, "an empty page with a next one");
        FUZZ_CHECK(pages <= NTWINS && pages < MAX_PAGES, "%u pages and more", pages);
        memcpy(cursor, res.next, sizeof cursor);
        ns.cursor = cursor;
        ns.cursor_len = strlen(cursor);
        char err[QUERY_ERR_LEN];
        cur = NULL;
        int rc = query_new(&ns, &c->lim, &cur, err);
        if (rc == -ENOMEM)
            return;
        FUZZ_CHECK(rc == 0, "a cursor the query gave is refused: %s (%s)", err, cursor);
    }
    for (int i = 0; i < NTWINS; i++) {
        bool want = c->matched[i] && has_prefix(c, i);
        if (!from_start)
            want = want && by_id && first >= 0 &&
                   id_cmp(ids[i], id_lens[i], ids[first], id_lens[first]) >= 0;
        if (from_start || by_id)
            FUZZ_CHECK(got[i] == want, "twin %d: in the pages %d, matched %d, prefix %d", i, got[i],
                       c->matched[i], has_prefix(c, i));
    }
}

static void run_query(struct ctx *c, unsigned flags)
{
    struct query_spec *s = &c->spec;
    const struct fuzz_part *p = c->part;
    char err[QUERY_ERR_LEN];

    memset(s, 0, sizeof *s);
    s->where = (const char *)p[0].p;
    s->where_len = p[0].n;
    if (flags & 4) {
        const char *t = (const char *)p[1].p, *end = t + p[1].n;
        while (p[1].n && s->nfields <= QUERY_FIELDS_MAX) {
            const char *nl = memchr(t, '\n', (size_t)(end - t));
            size_t n = nl ? (size_t)(nl - t) : (size_t)(end - t);
            if (s->nfields < QUERY_FIELDS_MAX) {
                s->fields[s->nfields] = t;
                s->field_len[s->nfields] = n;
            }
            s->nfields++;
            if (!nl)
                break;
            t = nl + 1;
        }
    } else if (p[1].n) {
        memset(err, 0x5a, sizeof err);
        int rc = query_fields_split(s, (const char *)p[1].p, p[1].n, err);
        if (rc < 0) {
            FUZZ_CHECK(rc == -EINVAL && memchr(err, '\0', QUERY_ERR_LEN) &&
                           strncmp(err, "fields:", 7) == 0,
                       "query_fields_split: %d '%.*s'", rc, QUERY_ERR_LEN - 1, err);
            s->nfields = 0;
        } else {
            FUZZ_CHECK(s->nfields >= 1 && s->nfields <= QUERY_FIELDS_MAX, "%u fields", s->nfields);
            for (unsigned i = 0; i < s->nfields; i++) {
                const char *f = s->fields[i];
                size_t n = s->field_len[i];
                FUZZ_CHECK(n > 0 && f >= (const char *)p[1].p &&
                               f + n <= (const char *)p[1].p + p[1].n,
                           "field %u outside the text", i);
                FUZZ_CHECK(f[0] != ' ' && f[n - 1] != ' ', "field %u not trimmed", i);
            }
        }
    }
    s->order = (const char *)p[2].p;
    s->order_len = p[2].n;
    s->prefix = p[3].n ? (const char *)p[3].p : NULL;
    s->prefix_len = p[3].n;
    s->limit = (unsigned)le(&p[5], 4);
    c->limit = s->limit ? s->limit : QUERY_LIMIT_DEFAULT;
    if (c->limit > c->lim.max_limit)
        c->limit = c->lim.max_limit ? c->lim.max_limit : 1;

    /* from the first page */
    struct query *q = compile(c, s);
    if (!q)
        goto with_cursor;
    rows_of_twins(c, q);
    run_pages(c, q, s, true);
    query_free(q);

with_cursor:
    if (!p[4].n)
        return;
    s->cursor = (const char *)p[4].p;
    s->cursor_len = p[4].n;
    q = compile(c, s);
    if (!q)
        return;
    /* the same where and fields: rows_of_twins's answers stand, unless the first compile
       failed (a cursor cannot make a query compile) */
    run_pages(c, q, s, false);
    query_free(q);
}

/* query_row on bytes that may not be a document. */
static void run_odd_row(struct ctx *c)
{
    struct query_spec s = {0};
    struct query *q = NULL;
    char err[QUERY_ERR_LEN];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    bool matched;

    s.fields[0] = "reported.heart_rate";
    s.field_len[0] = 19;
    s.fields[1] = "rules";
    s.field_len[1] = 5;
    s.nfields = c->part[0].n & 1 ? 2 : 0;
    s.where = "version > 0 or age(reported.x) < 1s or desired.y == nil";
    s.where_len = strlen(s.where);
    if (query_new(&s, &c->lim, &q, err) < 0)
        return;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc =
        query_row(q, c->txn, ids[0], id_lens[0], c->part[12].p ? (const void *)c->part[12].p : "",
                  c->part[12].n, c->now, &pk, &matched, err);
    FUZZ_CHECK(rc == 0 || rc == -EBADMSG || rc == -ENOMEM || rc == -EIO, "query_row: %d", rc);
    FUZZ_CHECK(rc == 0 || sb.size == 0, "query_row failed and packed");
    if (rc == 0 && matched) {
        msgpack_zone z;
        msgpack_object o;
        msgpack_zone_init(&z, 1024);
        unpack_one(sb.data, sb.size, &z, &o, "query_row of odd bytes");
        msgpack_zone_destroy(&z);
    }
    msgpack_sbuffer_destroy(&sb);
    query_free(q);
}

/* ---------------------------------------------------------------------------------------------
 * History ranges
 * ------------------------------------------------------------------------------------------ */

struct series {
    int64_t ts[64];
    double v[64];
    unsigned n;
    int64_t to;
};

static int collect(void *ctx, int64_t ts, double v)
{
    struct series *s = ctx;
    if (ts > s->to)
        return 1;
    FUZZ_CHECK(s->n < 64, "more history than the store holds");
    s->ts[s->n] = ts;
    s->v[s->n++] = v;
    return 0;
}

static bool same_double(double a, double b)
{
    return a == b || (isnan(a) && isnan(b));
}

static void run_history(struct ctx *c, int twin, int64_t from, int64_t to)
{
    const struct fuzz_part *path = &c->part[6];
    struct query_range r = {
        (const char *)path->p,        path->n, from, to, (int64_t)le(&c->part[9], 8),
        (unsigned)le(&c->part[10], 4)};
    const char *id = twin < NTWINS ? ids[twin] : twin == NTWINS ? "nope" : "";
    size_t id_len = strlen(id);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char err[QUERY_ERR_LEN];

    if (c->part[9].n && c->part[9].n < 8 && (c->part[9].p[c->part[9].n - 1] & 0x80))
        r.step |= (int64_t)(~0ULL << (8 * c->part[9].n)); /* sign-extend a short step */
    if (!r.path)
        r.path = "";
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    memset(err, 0x5a, sizeof err);
    int rc = query_history(c->txn, id, id_len, &r, &c->lim, &pk, err);
    if (trace)
        fprintf(stderr, "fuzz_query: history [%lld, %lld] step %lld: %d %s (%zu bytes)\n",
                (long long)from, (long long)to, (long long)r.step, rc, rc ? err : "", sb.size);
    FUZZ_CHECK(rc == 0 || memchr(err, '\0', QUERY_ERR_LEN), "query_history: unterminated error");

    const char *p = r.path;
    size_t plen = r.path_len;
    if (plen > 9 && memcmp(p, "reported.", 9) == 0)
        p += 9, plen -= 9;
    bool bad = plen == 0 || plen > TWIN_PATH_MAX || memchr(p, '\0', plen) || to < from ||
               r.step < 0 || r.limit > c->lim.max_points || id_len == 0;
    if (bad) {
        FUZZ_CHECK(rc == -EINVAL && sb.size == 0, "a bad range answered %d", rc);
        goto out;
    }
    if (twin == NTWINS) {
        FUZZ_CHECK(rc == -ENOENT && sb.size == 0, "no twin answered %d", rc);
        goto out;
    }
    FUZZ_CHECK(rc == 0, "query_history: %d %s", rc, err);

    /* the series, read here */
    struct series ref = {.to = to};
    char terr[TWIN_ERR_LEN];
    int hr = twin_history_read(c->txn, id, id_len, p, plen, from, collect, &ref, terr);
    FUZZ_CHECK(hr >= 0, "twin_history_read: %s", terr);
    unsigned limit = r.limit ? r.limit : c->lim.max_points ? c->lim.max_points : 1;

    msgpack_zone z;
    msgpack_object o;
    msgpack_zone_init(&z, 4096);
    unpack_one(sb.data, sb.size, &z, &o, "query_history");
    FUZZ_CHECK(o.type == MSGPACK_OBJECT_MAP && o.via.map.size == (r.step ? 7u : 6u),
               "the answer is not a map of %d", r.step ? 7 : 6);
    const msgpack_object *oid = get(&o, "id"), *opath = get(&o, "path"), *ofrom = get(&o, "from"),
                         *oto = get(&o, "to"), *more = get(&o, "more"),
                         *pts = get(&o, r.step ? "buckets" : "points");
    FUZZ_CHECK(oid && oid->type == MSGPACK_OBJECT_STR && oid->via.str.size == id_len &&
                   memcmp(oid->via.str.ptr, id, id_len) == 0,
               "history: id");
    FUZZ_CHECK(opath && opath->type == MSGPACK_OBJECT_STR && opath->via.str.size == 9 + plen &&
                   memcmp(opath->via.str.ptr, "reported.", 9) == 0 &&
                   memcmp(opath->via.str.ptr + 9, p, plen) == 0,
               "history: path");
    FUZZ_CHECK(is_int(ofrom) && inum(ofrom) == from && is_int(oto) && inum(oto) == to,
               "history: from, to");
    FUZZ_CHECK(more && more->type == MSGPACK_OBJECT_BOOLEAN, "history: more");
    FUZZ_CHECK(pts && pts->type == MSGPACK_OBJECT_ARRAY && pts->via.array.size <= limit,
               "history: points");
    if (!r.step) {
        unsigned want = ref.n < limit ? ref.n : limit;
        FUZZ_CHECK(pts->via.array.size == want && more->via.boolean == (ref.n > limit),
                   "history: %u points and more %d, the series has %u (limit %u)",
                   pts->via.array.size, more->via.boolean, ref.n, limit);
        for (unsigned i = 0; i < want; i++) {
            const msgpack_object *pt = &pts->via.array.ptr[i];
            FUZZ_CHECK(pt->type == MSGPACK_OBJECT_ARRAY && pt->via.array.size == 2 &&
                           is_int(&pt->via.array.ptr[0]) && is_num(&pt->via.array.ptr[1]),
                       "history: a point's shape");
            int64_t ts = inum(&pt->via.array.ptr[0]);
            FUZZ_CHECK(ts >= from && ts <= to && (i == 0 || ts >= ref.ts[i - 1]),
                       "history: ts %lld outside [%lld, %lld] or out of order", (long long)ts,
                       (long long)from, (long long)to);
            FUZZ_CHECK(ts == ref.ts[i] && same_double(num(&pt->via.array.ptr[1]), ref.v[i]),
                       "history: point %u is not the series'", i);
        }
    } else {
        const msgpack_object *ostep = get(&o, "step");
        FUZZ_CHECK(is_int(ostep) && inum(ostep) == r.step, "history: step");
        unsigned nb = 0, k = 0;
        bool cut = false;
        while (k < ref.n) {
            int64_t t = ref.ts[k] - ref.ts[k] % r.step;
            double mn = ref.v[k], mx = ref.v[k];
            uint64_t cnt = 0;
            for (; k < ref.n && ref.ts[k] - ref.ts[k] % r.step == t; k++, cnt++) {
                if (ref.v[k] < mn)
                    mn = ref.v[k];
                if (ref.v[k] > mx)
                    mx = ref.v[k];
            }
            if (nb == limit) {
                cut = true;
                break;
            }
            FUZZ_CHECK(nb < pts->via.array.size, "history: %u buckets, fewer than the series'",
                       pts->via.array.size);
            const msgpack_object *b = &pts->via.array.ptr[nb];
            FUZZ_CHECK(b->type == MSGPACK_OBJECT_ARRAY && b->via.array.size == 5 &&
                           is_int(&b->via.array.ptr[0]) && is_num(&b->via.array.ptr[1]) &&
                           is_num(&b->via.array.ptr[2]) && is_num(&b->via.array.ptr[3]) &&
                           is_uint(&b->via.array.ptr[4]),
                       "history: a bucket's shape");
            int64_t bt = inum(&b->via.array.ptr[0]);
            FUZZ_CHECK(bt == t && bt % r.step == 0 && bt <= to &&
                           (bt >= from || from - bt < r.step),
                       "history: bucket t %lld (want %lld, step %lld, [%lld, %lld])", (long long)bt,
                       (long long)t, (long long)r.step, (long long)from, (long long)to);
            double bmin = num(&b->via.array.ptr[1]), bmax = num(&b->via.array.ptr[2]),
                   bavg = num(&b->via.array.ptr[3]);
            FUZZ_CHECK(same_double(bmin, mn) && same_double(bmax, mx) &&
                           b->via.array.ptr[4].via.u64 == cnt,
                       "history: bucket %u is not the series'", nb);
            if (isfinite(bmin) && isfinite(bmax) && isfinite(bavg))
                FUZZ_CHECK(bavg >= bmin - fabs(bmin) * 1e-12 && bavg <= bmax + fabs(bmax) * 1e-12,
                           "history: avg %g outside [%g, %g]", bavg, bmin, bmax);
            nb++;
        }
        FUZZ_CHECK(pts->via.array.size == nb && more->via.boolean == cut,
                   "history: %u buckets and more %d, the series makes %u and %d",
                   pts->via.array.size, more->via.boolean, nb, cut);
    }
    msgpack_zone_destroy(&z);
out:
    msgpack_sbuffer_destroy(&sb);
}

/* ---------------------------------------------------------------------------------------------
 * config_parse_time_ms, against a strict reading of its comment
 * ------------------------------------------------------------------------------------------ */

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int num_at(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Returns 0 (*ms), -EINVAL, or 1: a duration, for config_parse_duration_ms to say. */
static int ref_time(const char *t, int64_t now, int64_t *ms)
{
    size_t n = strlen(t);

    if (n == 0)
        return -EINVAL;
    if (strcmp(t, "now") == 0) {
        *ms = now;
        return 0;
    }
    if (t[0] == '-')
        return 1;
    if (digits(t, n)) {
        uint64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            v = v * 10 + (uint64_t)(t[i] - '0');
            if (v > (uint64_t)TWIN_TS_MAX)
                return -EINVAL;
        }
        *ms = (int64_t)v;
        return 0;
    }
    if (n < 10 || !digits(t, 4) || t[4] != '-' || !digits(t + 5, 2) || t[7] != '-' ||
        !digits(t + 8, 2))
        return -EINVAL;
    int y = num_at(t, 4), mo = num_at(t + 5, 2), d = num_at(t + 8, 2), h = 0, mi = 0, s = 0;
    int frac = 0;
    if (n > 10) {
        const char *p = t + 10;
        if (n < 20 || p[0] != 'T' || !digits(p + 1, 2) || p[3] != ':' || !digits(p + 4, 2) ||
            p[6] != ':' || !digits(p + 7, 2))
            return -EINVAL;
        h = num_at(p + 1, 2);
        mi = num_at(p + 4, 2);
        s = num_at(p + 7, 2);
        p += 9;
        if (*p == '.') {
            size_t k = strspn(p + 1, "0123456789");
            if (k == 0)
                return -EINVAL;
            for (size_t i = 0; i < 3; i++)
                frac = frac * 10 + (i < k ? p[1 + i] - '0' : 0);
            p += 1 + k;
        }
        if (strcmp(p, "Z") != 0)
            return -EINVAL;
    }
    static const int dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > dim[mo - 1] + (mo == 2 && leap) || h > 23 ||
        mi > 59 || s > 60 || (h == 23 && mi == 59 && s == 60))
        return -EINVAL;
    *ms = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s) * 1000 + frac;
    return 0;
}

/* Parses part p as a time; *ok whether it did. */
static int64_t parse_time(const struct fuzz_part *p, int64_t now, int64_t fallback)
{
    char text[256];
    size_t n = p->n < sizeof text - 1 ? p->n : sizeof text - 1;
    int64_t ms = 0x5a5a5a5a, want = 0;

    if (n)
        memcpy(text, p->p, n);
    text[n] = '\0';
    int rc = config_parse_time_ms(text, now, &ms);
    if (trace)
        fprintf(stderr, "fuzz_query: time '%s': %d %lld\n", text, rc, (long long)ms);
    FUZZ_CHECK(rc == 0 || rc == -EINVAL, "config_parse_time_ms('%s'): %d", text, rc);
    int ref = ref_time(text, now, &want);
    if (ref == 1) {
        uint64_t d;
        ref = config_parse_duration_ms(text + 1, 1000, &d) == 0 && d <= (uint64_t)now ? 0 : -EINVAL;
        want = now - (int64_t)(ref == 0 ? d : 0);
    }
    FUZZ_CHECK(rc == ref, "config_parse_time_ms('%s'): %d, a strict reading says %d", text, rc,
               ref);
    if (rc == 0) {
        FUZZ_CHECK(ms == want, "config_parse_time_ms('%s'): %lld, a strict reading says %lld", text,
                   (long long)ms, (long long)want);
        FUZZ_CHECK(ms >= 0 && ms <= TWIN_TS_MAX, "config_parse_time_ms('%s'): %lld", text,
                   (long long)ms);
    }
    return rc == 0 ? ms : fallback;
}

/* ---------------------------------------------------------------------------------------------
 * The entry point
 * ------------------------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ctx c;
    char terr[TWIN_ERR_LEN];

    if (!store) {
        trace = getenv("FUZZ_TRACE") != NULL;
        store_build();
    }
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    memset(&c, 0, sizeof c);
    size_t n = fuzz_split(data + 1, size - 1, c.part, NPARTS);
    for (size_t i = n; i < NPARTS; i++)
        c.part[i] = (struct fuzz_part){(const uint8_t *)"", 0};
    query_limits_init(&c.lim);
    switch (flags & 3) {
    case 1:
        c.lim = (struct query_limits){3, 1500, 4, 64};
        break;
    case 2:
        c.lim = (struct query_limits){0, 0, 0, 0};
        break;
    case 3:
        c.lim.max_reply = 1100;
        break;
    default:
        break;
    }
    c.now = flags & 8 ? T0 + 3600000 : T0;
    msgpack_zone_init(&c.rowzone, 4096);
    FUZZ_CHECK(twin_store_read_begin(store, &c.txn, terr) == 0, "read_begin: %s", terr);

    run_query(&c, flags);
    run_odd_row(&c);

    int64_t from, to;
    if (flags & 0x80) {
        from = (int64_t)le(&c.part[7], 8);
        to = (int64_t)le(&c.part[8], 8);
    } else {
        from = parse_time(&c.part[7], c.now, T0 - 300000);
        to = parse_time(&c.part[8], c.now, T0);
    }
    run_history(&c, (flags >> 4) & 7, from, to);
    parse_time(&c.part[11], c.now, 0);

    twin_store_read_end(c.txn);
    msgpack_zone_destroy(&c.rowzone);
    return 0;
}
