/* test_query: the fleet query and history ranges of query/ against a real store in a scratch
 * directory, seeded through the twins library (telemetry, presence, predictions, rule states):
 * filters, fields, the rules field, orders and paging through cursors, prefixes, limits,
 * errors that name the part and column, history points and buckets. Table-driven. */
#include "query.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static const int64_t T0 = 1800000000000; /* ms */
static char dir[] = "/tmp/test_query.XXXXXX";
static struct twin_store *store;

/* ---------------------------------------------------------------------------------------------
 * Seeding
 * ------------------------------------------------------------------------------------------ */

struct seed {
    const char *id;
    const char *json; /* telemetry, NULL: none */
    int64_t now;
    int online; /* -1: no presence, 0 offline, 1 online */
};

static int seed_fn(struct twin_txn *txn, void *ctx)
{
    const struct seed *s = ctx;
    char err[TWIN_ERR_LEN];
    struct twin_limits lim = {65536, 16, 1024};
    msgpack_zone z;
    msgpack_object o;
    int rc = 0;

    msgpack_zone_init(&z, 4096);
    if (s->json) {
        struct twin_apply_result res;
        rc = twin_input_decode(s->json, strlen(s->json), &lim, &z, &o, err);
        if (rc == 0)
            rc = twin_telemetry_apply(txn, s->id, strlen(s->id), &o, s->now, &res, err);
    }
    if (rc == 0 && s->online >= 0) {
        struct twin_presence_result pr;
        rc = twin_presence_apply(txn, s->id, strlen(s->id), s->online, s->now, &pr, err);
    }
    if (rc)
        fprintf(stderr, "seed %s: %s\n", s->id, err);
    msgpack_zone_destroy(&z);
    return rc;
}

static int extras_fn(struct twin_txn *txn, void *ctx)
{
    char err[TWIN_ERR_LEN];
    unsigned char buf[RULES_STATE_LEN];
    struct rules_record rec = {.state = RULES_FIRING, .since = T0, .wake = INT64_MAX};
    int rc;
    (void)ctx;

    const char *names[] = {"tachycardia", "lead_off", "quiet"};
    const enum rules_state states[] = {RULES_FIRING, RULES_PENDING, RULES_INACTIVE};
    for (int i = 0; i < 3; i++) {
        rec.state = states[i];
        rules_record_encode(&rec, buf);
        rc = twin_rule_state_put(txn, "ecg-0001", 8, names[i], strlen(names[i]), buf,
                                 RULES_STATE_LEN, err);
        if (rc)
            goto fail;
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_zone z;
    msgpack_object o;
    size_t off = 0;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "value", 5);
    msgpack_pack_double(&pk, 131.5);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_int64(&pk, T0);
    msgpack_zone_init(&z, 1024);
    msgpack_unpack(sb.data, sb.size, &off, &z, &o);
    rc = twin_predicted_set(txn, "ecg-0001", 8, "hr_forecast", 11, &o, NULL, err);
    msgpack_zone_destroy(&z);
    msgpack_sbuffer_destroy(&sb);
    if (rc == 0)
        return 0;
fail:
    fprintf(stderr, "extras: %s\n", err);
    return rc;
}

static int seed(void)
{
    char err[TWIN_ERR_LEN], db[64];
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    snprintf(db, sizeof db, "%s/db", dir);
    so.path = db;
    so.map_size = 4u << 20;
    if (twin_store_open(&store, &so, err) < 0) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    static char js[4][160];
    snprintf(js[0], sizeof js[0], "{\"seq\":2,\"ts\":%lld,\"heart_rate\":120,\"spo2\":95}",
             (long long)(T0 - 50000));
    snprintf(js[1], sizeof js[1],
             "{\"seq\":3,\"ts\":%lld,\"heart_rate\":130,\"spo2\":92,\"ecg\":[1,2,3],"
             "\"name\":\"b\\u00e9d 4\"}",
             (long long)(T0 - 20000));
    snprintf(js[2], sizeof js[2], "{\"seq\":1,\"ts\":%lld,\"heart_rate\":140}",
             (long long)(T0 - 200000)); /* older than the window: history only */
    const struct seed seeds[] = {
        {"ecg-0001", js[2], T0 - 200000, -1},
        {"ecg-0001", js[0], T0 - 50000, -1},
        {"ecg-0001", js[1], T0 - 20000, 1},
        {"ecg-0002", "{\"heart_rate\":80,\"spo2\":98}", T0 - 10000, 1},
        {"ecg-0003", "{\"heart_rate\":150}", T0 - 10000, 0},
        {"ecg-0004", "{\"spo2\":97}", T0 - 10000, 1},
        {"ecg-0005", "{\"heart_rate\":130,\"spo2\":99}", T0 - 10000, 1},
        {"pump-1", "{\"rate\":5}", T0 - 10000, 1},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
        if (twin_store_write(store, seed_fn, (void *)&seeds[i], err) < 0)
            return -1;
    if (twin_store_write(store, extras_fn, NULL, err) < 0)
        return -1;
    return 0;
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

static bool str_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static double num(const msgpack_object *o)
{
    if (!o)
        return NAN;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)o->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return o->via.f64;
    default:
        return NAN;
    }
}

struct answer {
    msgpack_sbuffer sb;
    msgpack_zone zone;
    msgpack_object obj;
    struct query_result res;
    int rc;
    char err[QUERY_ERR_LEN];
};

static void answer_init(struct answer *a)
{
    msgpack_sbuffer_init(&a->sb);
    msgpack_zone_init(&a->zone, 4096);
    a->obj.type = MSGPACK_OBJECT_NIL;
}

static void answer_cleanup(struct answer *a)
{
    msgpack_sbuffer_destroy(&a->sb);
    msgpack_zone_destroy(&a->zone);
}

static void decode(struct answer *a)
{
    size_t off = 0;
    if (a->rc == 0 &&
        msgpack_unpack(a->sb.data, a->sb.size, &off, &a->zone, &a->obj) != MSGPACK_UNPACK_SUCCESS)
        a->rc = -EBADMSG;
}

/* Compiles and runs one page; a->rc is query_new's error or query_run's. */
static void run_page(const struct query_spec *s, const struct query_limits *l, struct answer *a)
{
    struct query *q;
    struct twin_txn *txn;
    char terr[TWIN_ERR_LEN];

    msgpack_sbuffer_clear(&a->sb);
    msgpack_zone_clear(&a->zone);
    a->obj.type = MSGPACK_OBJECT_NIL;
    a->err[0] = '\0';
    a->rc = query_new(s, l, &q, a->err);
    if (a->rc)
        return;
    if (twin_store_read_begin(store, &txn, terr) < 0) {
        a->rc = -EIO;
        query_free(q);
        return;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &a->sb, msgpack_sbuffer_write);
    a->rc = query_run(q, txn, T0, &pk, &a->res, a->err);
    CHECK(a->rc == 0 || a->sb.size == 0, "packed something on error");
    decode(a);
    twin_store_read_end(txn);
    query_free(q);
}

static void spec_set(struct query_spec *s, const char *where, const char *fields, const char *order,
                     const char *prefix, unsigned limit)
{
    char err[QUERY_ERR_LEN];
    memset(s, 0, sizeof *s);
    s->where = where;
    s->where_len = where ? strlen(where) : 0;
    if (fields && query_fields_split(s, fields, strlen(fields), err) < 0)
        CHECK(0, "split %s: %s", fields, err);
    s->order = order;
    s->order_len = order ? strlen(order) : 0;
    s->prefix = prefix;
    s->prefix_len = prefix ? strlen(prefix) : 0;
    s->limit = limit;
}

/* Runs every page of a query, appending row ids, comma-separated, to ids. Returns pages. */
static int run_all(struct query_spec *s, const struct query_limits *l, char *ids, size_t cap)
{
    struct answer a;
    static char cursor[QUERY_CURSOR_MAX];
    int pages = 0;

    ids[0] = '\0';
    answer_init(&a);
    s->cursor = NULL;
    s->cursor_len = 0;
    for (;;) {
        run_page(s, l, &a);
        pages++;
        if (a.rc) {
            CHECK(0, "page %d: %d %s", pages, a.rc, a.err);
            break;
        }
        const msgpack_object *rows = get(&a.obj, "rows"), *next = get(&a.obj, "next");
        CHECK(rows && rows->type == MSGPACK_OBJECT_ARRAY, "no rows");
        if (!rows || rows->type != MSGPACK_OBJECT_ARRAY)
            break;
        CHECK(rows->via.array.size == a.res.rows, "rows %u, result %u", rows->via.array.size,
              a.res.rows);
        for (uint32_t i = 0; i < rows->via.array.size; i++) {
            const msgpack_object *id = get(&rows->via.array.ptr[i], "id");
            if (id && id->type == MSGPACK_OBJECT_STR)
                snprintf(ids + strlen(ids), cap - strlen(ids), "%s%.*s", ids[0] ? "," : "",
                         (int)id->via.str.size, id->via.str.ptr);
        }
        CHECK(a.res.more == (next && next->type == MSGPACK_OBJECT_STR), "more/next disagree");
        if (!a.res.more || pages > 50)
            break;
        CHECK(strlen(a.res.next) < QUERY_CURSOR_MAX &&
                  strspn(a.res.next,
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
                      strlen(a.res.next),
              "cursor not URL-safe: %s", a.res.next);
        memcpy(cursor, a.res.next, sizeof cursor);
        s->cursor = cursor;
        s->cursor_len = strlen(cursor);
    }
    answer_cleanup(&a);
    return pages;
}

/* ---------------------------------------------------------------------------------------------
 * Cases
 * ------------------------------------------------------------------------------------------ */

static void test_pages(void)
{
    static const struct {
        const char *where, *order, *prefix;
        unsigned limit;
        size_t max_reply; /* 0: default */
        const char *ids;
        int pages;
    } cases[] = {
        {NULL, NULL, NULL, 0, 0, "ecg-0001,ecg-0002,ecg-0003,ecg-0004,ecg-0005,pump-1", 1},
        {"reported.heart_rate > 120 and connected", NULL, NULL, 0, 0, "ecg-0001,ecg-0005", 1},
        {"  reported.heart_rate > 120  ", NULL, NULL, 1, 0, "ecg-0001,ecg-0003,ecg-0005", 3},
        {"reported.spo2 < 94 or not connected", NULL, NULL, 0, 0, "ecg-0001,ecg-0003", 1},
        {"reported.name == \"b\xc3\xa9"
         "d 4\"",
         NULL, NULL, 0, 0, "ecg-0001", 1},
        {"avg(reported.heart_rate, 60s) == 125", NULL, NULL, 0, 0, "ecg-0001", 1},
        {"count(reported.heart_rate, 1h) == 3", NULL, NULL, 0, 0, "ecg-0001", 1},
        {"reported.missing > 1", NULL, NULL, 0, 0, "", 1},
        {"age(reported.heart_rate) < 15s", NULL, NULL, 0, 0, "ecg-0002,ecg-0003,ecg-0005", 1},
        {"desired.x == nil and version > 0", NULL, NULL, 0, 0,
         "ecg-0001,ecg-0002,ecg-0003,ecg-0004,ecg-0005,pump-1", 1},
        {NULL, NULL, "ecg-", 2, 0, "ecg-0001,ecg-0002,ecg-0003,ecg-0004,ecg-0005", 3},
        {NULL, NULL, "pump", 0, 0, "pump-1", 1},
        {NULL, NULL, "zz", 0, 0, "", 1},
        {NULL, NULL, NULL, 4, 0, "ecg-0001,ecg-0002,ecg-0003,ecg-0004,ecg-0005,pump-1", 2},
        /* by an expression: ties by id, nil last both ways */
        {NULL, "-reported.heart_rate", NULL, 0, 0,
         "ecg-0003,ecg-0001,ecg-0005,ecg-0002,ecg-0004,pump-1", 1},
        {NULL, "reported.heart_rate", NULL, 0, 0,
         "ecg-0002,ecg-0001,ecg-0005,ecg-0003,ecg-0004,pump-1", 1},
        {NULL, "-reported.heart_rate", NULL, 2, 0,
         "ecg-0003,ecg-0001,ecg-0005,ecg-0002,ecg-0004,pump-1", 3},
        {NULL, "reported.heart_rate", NULL, 1, 0,
         "ecg-0002,ecg-0001,ecg-0005,ecg-0003,ecg-0004,pump-1", 6},
        {NULL, " - reported.heart_rate", "ecg-", 3, 0,
         "ecg-0003,ecg-0001,ecg-0005,ecg-0002,ecg-0004", 2},
        {"connected", "-reported.spo2", NULL, 2, 0, "ecg-0005,ecg-0002,ecg-0004,ecg-0001,pump-1",
         3},
        {NULL, "id", NULL, 2, 0, "ecg-0001,ecg-0002,ecg-0003,ecg-0004,ecg-0005,pump-1", 3},
        {NULL, "-connected", NULL, 4, 0, "ecg-0001,ecg-0002,ecg-0004,ecg-0005,pump-1,ecg-0003", 2},
        /* max_reply ends pages early; each still has a row */
        {NULL, NULL, NULL, 0, 1100, "ecg-0001,ecg-0002,ecg-0003,ecg-0004,ecg-0005,pump-1", 6},
        {NULL, "-reported.heart_rate", NULL, 0, 1100,
         "ecg-0003,ecg-0001,ecg-0005,ecg-0002,ecg-0004,pump-1", 6},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct query_spec s;
        struct query_limits l;
        char ids[512];
        query_limits_init(&l);
        if (cases[i].max_reply)
            l.max_reply = cases[i].max_reply;
        spec_set(&s, cases[i].where, cases[i].max_reply ? NULL : "reported.heart_rate",
                 cases[i].order, cases[i].prefix, cases[i].limit);
        if (cases[i].max_reply)
            s.nfields = 0; /* whole documents: each is some hundreds of bytes */
        int pages = run_all(&s, &l, ids, sizeof ids);
        CHECK(strcmp(ids, cases[i].ids) == 0, "case %zu (%s | %s): got %s, want %s", i,
              cases[i].where ? cases[i].where : "-", cases[i].order ? cases[i].order : "-", ids,
              cases[i].ids);
        CHECK(pages == cases[i].pages, "case %zu: %d pages, want %d", i, pages, cases[i].pages);
    }
}

static void test_fields(void)
{
    struct query_spec s;
    struct answer a;
    answer_init(&a);
    spec_set(&s, "id == \"ecg-0001\"",
             "reported.heart_rate, reported.ecg, avg(reported.heart_rate, 60s),"
             "predicted.hr_forecast, connected, rules, reported.missing, reported.heart_rate * 2,"
             "reported, id, reported.name",
             NULL, NULL, 0);
    CHECK(s.nfields == 11, "split into %u", s.nfields);
    run_page(&s, NULL, &a);
    CHECK(a.rc == 0, "run: %d %s", a.rc, a.err);
    const msgpack_object *rows = get(&a.obj, "rows");
    CHECK(rows && rows->type == MSGPACK_OBJECT_ARRAY && rows->via.array.size == 1, "one row");
    if (!rows || rows->type != MSGPACK_OBJECT_ARRAY || rows->via.array.size != 1)
        goto out;
    const msgpack_object *r = &rows->via.array.ptr[0];
    CHECK(r->via.map.size == 12, "row has %u keys", r->via.map.size);
    CHECK(str_is(get(r, "id"), "ecg-0001"), "id");
    CHECK(num(get(r, "version")) >= 4, "version");
    CHECK(num(get(r, "reported.heart_rate")) == 130, "hr");
    const msgpack_object *ecg = get(r, "reported.ecg");
    CHECK(ecg && ecg->type == MSGPACK_OBJECT_ARRAY && ecg->via.array.size == 3 &&
              num(&ecg->via.array.ptr[2]) == 3,
          "ecg as an array");
    CHECK(num(get(r, "avg(reported.heart_rate, 60s)")) == 125, "avg %g",
          num(get(r, "avg(reported.heart_rate, 60s)")));
    const msgpack_object *pred = get(r, "predicted.hr_forecast");
    CHECK(pred && num(get(pred, "value")) == 131.5, "predicted map");
    const msgpack_object *c = get(r, "connected");
    CHECK(c && c->type == MSGPACK_OBJECT_BOOLEAN && c->via.boolean, "connected");
    const msgpack_object *rules = get(r, "rules");
    CHECK(rules && rules->type == MSGPACK_OBJECT_MAP && rules->via.map.size == 2, "rules map");
    CHECK(str_is(get(rules, "tachycardia"), "firing"), "tachycardia firing");
    CHECK(str_is(get(rules, "lead_off"), "pending"), "lead_off pending");
    CHECK(get(rules, "quiet") == NULL, "inactive rule left out");
    const msgpack_object *m = get(r, "reported.missing");
    CHECK(m && m->type == MSGPACK_OBJECT_NIL, "missing is nil");
    CHECK(num(get(r, "reported.heart_rate * 2")) == 260, "arithmetic");
    const msgpack_object *rep = get(r, "reported");
    CHECK(rep && rep->type == MSGPACK_OBJECT_MAP && num(get(rep, "spo2")) == 92, "section");
    CHECK(str_is(get(r, "reported.name"), "b\xc3\xa9"
                                          "d 4"),
          "string bytes as they are");
    CHECK(a.res.scanned == 6 && a.res.matched == 1 && a.res.rows == 1, "counts %llu %llu %u",
          (unsigned long long)a.res.scanned, (unsigned long long)a.res.matched, a.res.rows);

    /* whole documents when no fields: the stored bytes */
    spec_set(&s, "id == \"ecg-0002\"", NULL, NULL, NULL, 0);
    run_page(&s, NULL, &a);
    rows = get(&a.obj, "rows");
    CHECK(a.rc == 0 && rows && rows->via.array.size == 1 &&
              num(get(get(&rows->via.array.ptr[0], "reported"), "heart_rate")) == 80 &&
              get(&rows->via.array.ptr[0], "meta") != NULL,
          "whole document");
    CHECK(get(&a.obj, "next")->type == MSGPACK_OBJECT_NIL, "next nil");
    CHECK(get(&a.obj, "took_ms") && get(&a.obj, "scanned") && get(&a.obj, "matched"), "keys");
out:
    answer_cleanup(&a);
}

static void test_errors(void)
{
    static const struct {
        const char *where, *fields, *order;
        unsigned limit;
        const char *cursor;
        const char *err; /* the start of the message */
    } cases[] = {
        {"avgg(reported.heart_rate, 60s) > 1", NULL, NULL, 0, NULL,
         "where:1:1: unknown function 'avgg'"},
        {"reported.heart_rate > avgg(reported.heart_rate, 60s)", NULL, NULL, 0, NULL,
         "where:1:23: unknown function 'avgg'"},
        {"reported.hr >", NULL, NULL, 0, NULL, "where:1:"},
        {NULL, "reported.hr, foo.bar", NULL, 0, NULL, "fields[1]:1:1: unknown name 'foo'"},
        {NULL, "reported.hr, reported.hr", NULL, 0, NULL, "fields[1]: 'reported.hr' is fields[0]"},
        {NULL, NULL, "-avgg(reported.hr, 1m)", 0, NULL, "order:1:2: unknown function 'avgg'"},
        {NULL, NULL, "-", 0, NULL, "order: an expression must follow '-'"},
        {NULL, NULL, NULL, 1001, NULL, "limit: at most 1000"},
        {NULL, NULL, NULL, 0, "garbage!", "cursor: not a cursor"},
        {NULL, NULL, NULL, 0, "Q", "cursor: not a cursor"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct query_spec s;
        struct query *q = NULL;
        char err[QUERY_ERR_LEN] = "";
        spec_set(&s, cases[i].where, cases[i].fields, cases[i].order, NULL, cases[i].limit);
        s.cursor = cases[i].cursor;
        s.cursor_len = s.cursor ? strlen(s.cursor) : 0;
        int rc = query_new(&s, NULL, &q, err);
        CHECK(rc == -EINVAL && q == NULL, "case %zu: rc %d", i, rc);
        CHECK(strncmp(err, cases[i].err, strlen(cases[i].err)) == 0, "case %zu: '%s', want '%s'", i,
              err, cases[i].err);
    }

    /* a cursor of one order is refused by another */
    struct query_spec s;
    struct answer a;
    char cur[QUERY_CURSOR_MAX];
    answer_init(&a);
    spec_set(&s, NULL, NULL, NULL, NULL, 1);
    run_page(&s, NULL, &a);
    CHECK(a.rc == 0 && a.res.more, "first page");
    memcpy(cur, a.res.next, sizeof cur);
    const char *orders[] = {"reported.heart_rate", "-reported.heart_rate"};
    for (int i = 0; i < 2; i++) {
        spec_set(&s, NULL, NULL, orders[i], NULL, 1);
        s.cursor = cur;
        s.cursor_len = strlen(cur);
        run_page(&s, NULL, &a);
        CHECK(a.rc == -EINVAL && strcmp(a.err, "cursor: not a cursor of this order") == 0,
              "order %s took an id cursor: %d %s", orders[i], a.rc, a.err);
        if (i == 0) {
            s.cursor = NULL;
            s.cursor_len = 0;
            run_page(&s, NULL, &a);
            memcpy(cur, a.res.next, sizeof cur);
        }
    }
    /* query_fields_split */
    const struct {
        const char *text;
        int rc;
        unsigned n;
    } splits[] = {
        {"a,avg(b, 60s),rules", 0, 3},
        {" a , \"x,y\" , clamp(a, 1, 2) ", 0, 3},
        {"a,,b", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,x,y,z,a1,b1,c1,d1,e1,f1,g1", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        struct query_spec sp = {0};
        char err[QUERY_ERR_LEN];
        int rc = query_fields_split(&sp, splits[i].text, strlen(splits[i].text), err);
        CHECK(rc == splits[i].rc, "split '%s': %d", splits[i].text, rc);
        if (rc == 0)
            CHECK(sp.nfields == splits[i].n, "split '%s': %u fields", splits[i].text, sp.nfields);
    }
    struct query_spec sp = {0};
    char err[QUERY_ERR_LEN];
    query_fields_split(&sp, "a, avg(b, 60s) ,rules", 21, err);
    CHECK(sp.field_len[1] == 11 && memcmp(sp.fields[1], "avg(b, 60s)", 11) == 0, "trimmed");
    answer_cleanup(&a);
}

static void test_history(void)
{
    static const struct {
        const char *id, *path;
        int64_t from, to, step;
        unsigned limit;
        int rc;
        unsigned n;
        bool more;
        double first[5]; /* the first point or bucket */
    } cases[] = {
        {"ecg-0001", "heart_rate", 0, T0, 0, 0, 0, 3, false, {T0 - 200000, 140}},
        {"ecg-0001", "reported.heart_rate", T0 - 60000, T0, 0, 0, 0, 2, false, {T0 - 50000, 120}},
        {"ecg-0001", "heart_rate", 0, T0 - 30000, 0, 0, 0, 2, false, {T0 - 200000, 140}},
        {"ecg-0001", "heart_rate", 0, T0, 0, 2, 0, 2, true, {T0 - 200000, 140}},
        {"ecg-0001", "heart_rate", 0, T0, 0, 3, 0, 3, false, {T0 - 200000, 140}},
        /* buckets of an hour hold everything: min 120, max 140, avg 130, count 3 */
        {"ecg-0001",
         "heart_rate",
         0,
         T0,
         3600000,
         0,
         0,
         1,
         false,
         {(double)(T0 - 200000) - (double)((T0 - 200000) % 3600000), 120, 140, 130, 3}},
        {"ecg-0001",
         "heart_rate",
         0,
         T0,
         60000,
         0,
         0,
         2,
         false,
         {(double)(T0 - 200000) - (double)((T0 - 200000) % 60000), 140, 140, 140, 1}},
        {"ecg-0001",
         "heart_rate",
         0,
         T0,
         60000,
         1,
         0,
         1,
         true,
         {(double)(T0 - 200000) - (double)((T0 - 200000) % 60000), 140, 140, 140, 1}},
        {"ecg-0001", "nothing", 0, T0, 0, 0, 0, 0, false, {0}},
        {"ecg-0009", "heart_rate", 0, T0, 0, 0, -ENOENT, 0, false, {0}},
        {"ecg-0001", "heart_rate", T0, 0, 0, 0, -EINVAL, 0, false, {0}},
        {"ecg-0001", "heart_rate", 0, T0, -5, 0, -EINVAL, 0, false, {0}},
        {"ecg-0001", "heart_rate", 0, T0, 0, 10001, -EINVAL, 0, false, {0}},
        {"ecg-0001", "", 0, T0, 0, 0, -EINVAL, 0, false, {0}},
    };
    struct twin_txn *txn;
    char terr[TWIN_ERR_LEN];
    struct query_limits l;
    query_limits_init(&l);
    if (twin_store_read_begin(store, &txn, terr) < 0) {
        CHECK(0, "read_begin: %s", terr);
        return;
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct answer a;
        struct query_range r = {cases[i].path, strlen(cases[i].path), cases[i].from,
                                cases[i].to,   cases[i].step,         cases[i].limit};
        msgpack_packer pk;
        answer_init(&a);
        msgpack_packer_init(&pk, &a.sb, msgpack_sbuffer_write);
        a.rc = query_history(txn, cases[i].id, strlen(cases[i].id), &r, &l, &pk, a.err);
        CHECK(a.rc == cases[i].rc, "case %zu: rc %d (%s)", i, a.rc, a.err);
        CHECK(a.rc == 0 || a.sb.size == 0, "case %zu: packed on error", i);
        decode(&a);
        if (a.rc == 0 && cases[i].rc == 0) {
            const msgpack_object *pts = get(&a.obj, cases[i].step ? "buckets" : "points");
            CHECK(pts && pts->type == MSGPACK_OBJECT_ARRAY && pts->via.array.size == cases[i].n,
                  "case %zu: %u points", i, pts ? pts->via.array.size : 0);
            const msgpack_object *more = get(&a.obj, "more");
            CHECK(more && more->type == MSGPACK_OBJECT_BOOLEAN &&
                      more->via.boolean == cases[i].more,
                  "case %zu: more", i);
            CHECK(str_is(get(&a.obj, "path"), "reported.heart_rate") ||
                      str_is(get(&a.obj, "path"), "reported.nothing"),
                  "case %zu: path", i);
            if (pts && pts->type == MSGPACK_OBJECT_ARRAY && pts->via.array.size) {
                const msgpack_object *p = &pts->via.array.ptr[0];
                unsigned n = cases[i].step ? 5 : 2;
                for (unsigned j = 0; j < n && p->type == MSGPACK_OBJECT_ARRAY; j++)
                    CHECK(num(&p->via.array.ptr[j]) == cases[i].first[j], "case %zu [%u]: %g", i, j,
                          num(&p->via.array.ptr[j]));
            }
        }
        answer_cleanup(&a);
    }
    twin_store_read_end(txn);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    int rc = seed();
    if (rc == 0) {
        test_pages();
        test_fields();
        test_errors();
        test_history();
    } else {
        failures++;
    }
    twin_store_close(store);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    printf("test_query: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
