/* test_twins.c: unit tests of the twins library, through its public header only: the msgpack
 * pre-scan, JSON in and out, values, merge, documents, the LMDB store (round trip, read-only
 * beside a writer, map growth, -ENOSPC, schema, MDB_WRITEMAP), telemetry, the bounds on a twin's
 * size, the number of twins and the device clock, history (and its removal with the leaf),
 * outbox and statistics.
 *
 * Table-driven where the cases are data. Every store test works in its own mkdtemp directory
 * and removes it. The round trip, growth and read-only tests run twice, the second time
 * ("..._writemap") with writers opened with MDB_WRITEMAP. `test_twins NAME` runs one test.
 */
#include "twins.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Harness
 * ------------------------------------------------------------------------------------------ */

static int failures;
static const char *current;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: [%s] ", __FILE__, __LINE__, current);                              \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        failures++;                                                                                \
    } while (0)

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            FAIL("CHECK failed: %s", #c);                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            FAIL("%s is %lld, expected %lld (%s)", #a, a_, b_, #b);                                \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (strcmp(a_, b_) != 0)                                                                   \
            FAIL("%s is\n    %s\n  expected\n    %s", #a, a_, b_);                                 \
    } while (0)

#define CHECK_HAS(s, sub)                                                                          \
    do {                                                                                           \
        const char *s_ = (s), *sub_ = (sub);                                                       \
        if (!strstr(s_, sub_))                                                                     \
            FAIL("\"%s\" does not contain \"%s\"", s_, sub_);                                      \
    } while (0)

static const struct twin_limits BIG = {1u << 24, TWIN_DEPTH_CAP, 1u << 20};
static const struct twin_limits DEF = TWIN_LIMITS_DEFAULT;

/* Parses "c4 02 01 02" into out; returns the byte count. */
static size_t unhex(const char *hex, unsigned char *out)
{
    size_t n = 0;

    while (*hex) {
        unsigned v;

        if (*hex == ' ') {
            hex++;
            continue;
        }
        if (sscanf(hex, "%2x", &v) != 1)
            break;
        out[n++] = (unsigned char)v;
        hex += 2;
    }
    return n;
}

/* Decodes JSON text of any value into zone z (wrapped in an object and unwrapped). */
static msgpack_object V(msgpack_zone *z, const char *json)
{
    size_t n = strlen(json) + 8;
    char *w = malloc(n), err[TWIN_ERR_LEN];
    msgpack_object o;
    int rc;

    snprintf(w, n, "{\"v\":%s}", json);
    rc = twin_input_decode(w, strlen(w), &BIG, z, &o, err);
    free(w);
    if (rc) {
        FAIL("bad test JSON %s: %s", json, err);
        o.type = MSGPACK_OBJECT_NIL;
        return o;
    }
    return o.via.map.ptr[0].val;
}

/* JSON text of o, in one of four rotating static buffers. */
static const char *TJ(const msgpack_object *o)
{
    static char bufs[4][1 << 16];
    static int next;
    char *b = bufs[next++ & 3];
    msgpack_sbuffer sb;

    msgpack_sbuffer_init(&sb);
    if (twin_json_write(o, &sb)) {
        strcpy(b, "<error>");
    } else {
        size_t n = sb.size < sizeof bufs[0] - 1 ? sb.size : sizeof bufs[0] - 1;

        if (n)
            memcpy(b, sb.data, n);
        b[n] = '\0';
    }
    msgpack_sbuffer_destroy(&sb);
    return b;
}

static msgpack_object str_obj(const char *s)
{
    msgpack_object o;

    o.type = MSGPACK_OBJECT_STR;
    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)strlen(s);
    return o;
}

/* ---------------------------------------------------------------------------------------------
 * Temporary directories
 * ------------------------------------------------------------------------------------------ */

static void tmp_make(char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/twins-test-XXXXXX");
    if (!mkdtemp(path))
        FAIL("mkdtemp: %s", strerror(errno));
}

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (!d) {
        unlink(path);
        return;
    }
    while ((e = readdir(d))) {
        char sub[4096];
        struct stat st;

        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            rm_tree(sub);
        else
            unlink(sub);
    }
    closedir(d);
    if (rmdir(path) != 0)
        FAIL("rmdir %s: %s", path, strerror(errno));
}

static void tmp_remove(const char *path)
{
    struct stat st;

    rm_tree(path);
    CHECK(stat(path, &st) != 0 && errno == ENOENT);
}

/* Set while a test runs in its "_writemap" variant: store_open opens with MDB_WRITEMAP. */
static bool writemap_mode;

static struct twin_store *store_open(const char *path, size_t map, size_t max, unsigned hist,
                                     bool ro)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    struct twin_store *s = NULL;
    char err[TWIN_ERR_LEN];
    int rc;

    o.path = path;
    o.read_only = ro;
    o.writemap = writemap_mode; /* ignored by read-only openers */
    if (map)
        o.map_size = map;
    if (max)
        o.max_map_size = max;
    o.history_max_points = hist;
    rc = twin_store_open(&s, &o, err);
    if (rc) {
        FAIL("twin_store_open %s: %d %s", path, rc, err);
        return NULL;
    }
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * Write-transaction helpers
 * ------------------------------------------------------------------------------------------ */

struct put_ctx {
    const struct twin_doc *doc;
    int attempts;
    char err[TWIN_ERR_LEN];
};

static int put_fn(struct twin_txn *txn, void *ctx)
{
    struct put_ctx *c = ctx;

    c->attempts++;
    return twin_put(txn, c->doc, c->err);
}

struct tele_ctx {
    const char *id;
    msgpack_object tele[4];
    int n;
    int64_t now;
    struct twin_apply_result res[4];
    int rcs[4];
    bool ignore; /* record errors and commit anyway */
    int attempts;
    char err[TWIN_ERR_LEN];
};

static int tele_fn(struct twin_txn *txn, void *ctx)
{
    struct tele_ctx *c = ctx;

    c->attempts++;
    for (int i = 0; i < c->n; i++) {
        int rc = twin_telemetry_apply(txn, c->id, strlen(c->id), &c->tele[i], c->now, &c->res[i],
                                      c->err);
        c->rcs[i] = rc;
        if (rc && !c->ignore)
            return rc;
    }
    return 0;
}

/* Applies one telemetry JSON (or raw msgpack when hex is set) to `id`; returns the rc. */
static int apply(struct twin_store *s, const char *id, const char *json, int64_t now,
                 struct twin_apply_result *res, char *err)
{
    msgpack_zone z;
    struct tele_ctx c = {.id = id, .n = 1, .now = now};
    char werr[TWIN_ERR_LEN] = "";
    int rc;

    msgpack_zone_init(&z, 4096);
    rc = twin_input_decode(json, strlen(json), &BIG, &z, &c.tele[0], err);
    if (rc) {
        FAIL("bad telemetry %s: %s", json, err);
        msgpack_zone_destroy(&z);
        return rc;
    }
    rc = twin_store_write(s, tele_fn, &c, werr);
    if (res)
        *res = c.res[0];
    if (err)
        strcpy(err, c.err[0] ? c.err : werr);
    msgpack_zone_destroy(&z);
    return rc;
}

/* Reads twin `id` and hands it to check(). */
static int read_doc(struct twin_store *s, const char *id,
                    void (*check)(const struct twin_doc *, void *), void *ctx)
{
    struct twin_txn *t;
    struct twin_doc doc;
    char err[TWIN_ERR_LEN];
    int rc = twin_store_read_begin(s, &t, err);

    if (rc) {
        FAIL("read_begin: %s", err);
        return rc;
    }
    rc = twin_get(t, id, strlen(id), &doc, err);
    if (!rc && check)
        check(&doc, ctx);
    twin_store_read_end(t);
    return rc;
}

/* A copy of the raw stored bytes of `id` (caller frees), NULL when absent. */
static void *raw_copy(struct twin_store *s, const char *id, size_t *len)
{
    struct twin_txn *t;
    const void *buf;
    void *copy = NULL;
    char err[TWIN_ERR_LEN];

    if (twin_store_read_begin(s, &t, err))
        return NULL;
    if (twin_get_raw(t, id, strlen(id), &buf, len, err) == 0) {
        copy = malloc(*len);
        memcpy(copy, buf, *len);
    }
    twin_store_read_end(t);
    return copy;
}

static struct twin_stats stats_of(struct twin_store *s)
{
    struct twin_stats st = {0};
    struct twin_txn *t;
    char err[TWIN_ERR_LEN];

    if (twin_store_read_begin(s, &t, err)) {
        FAIL("read_begin: %s", err);
        return st;
    }
    if (twin_store_stats(t, &st, err))
        FAIL("stats: %s", err);
    twin_store_read_end(t);
    return st;
}

/* Size and allocated bytes (st_blocks) of the data file of the store in dir. */
static void data_file(const char *dir, long long *size, long long *alloc)
{
    char path[128];
    struct stat st;

    snprintf(path, sizeof path, "%s/data.mdb", dir);
    *size = *alloc = -1;
    if (stat(path, &st) != 0) {
        FAIL("stat %s: %s", path, strerror(errno));
        return;
    }
    *size = (long long)st.st_size;
    *alloc = (long long)st.st_blocks * 512;
}

/* With MDB_WRITEMAP the data file is as large as the map and reserved on disk; without it, it
 * holds the pages in use only. */
static void check_data_file(const char *dir, struct twin_store *s)
{
    long long size, alloc, map = (long long)twin_store_map_size(s);

    data_file(dir, &size, &alloc);
    if (writemap_mode) {
        CHECK_INT(size, map);
        CHECK(alloc >= map);
    } else {
        CHECK(size > 0 && size <= map);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Pre-scan
 * ------------------------------------------------------------------------------------------ */

static const struct {
    const char *name, *hex;
} samples[] = {
    {"positive fixint", "05"},
    {"negative fixint", "ff"},
    {"fixmap", "81 a1 61 01"},
    {"empty fixmap", "80"},
    {"fixarray", "92 01 02"},
    {"empty fixarray", "90"},
    {"fixstr", "a2 61 62"},
    {"empty fixstr", "a0"},
    {"nil", "c0"},
    {"false", "c2"},
    {"true", "c3"},
    {"bin8", "c4 02 01 02"},
    {"bin16", "c5 00 01 ff"},
    {"bin32", "c6 00 00 00 01 ff"},
    {"ext8", "c7 01 05 aa"},
    {"ext16", "c8 00 01 05 aa"},
    {"ext32", "c9 00 00 00 01 05 aa"},
    {"fixext1", "d4 05 aa"},
    {"fixext2", "d5 05 aa bb"},
    {"fixext4", "d6 05 01 02 03 04"},
    {"fixext8", "d7 05 01 02 03 04 05 06 07 08"},
    {"fixext16", "d8 05 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"},
    {"float32", "ca 3f 80 00 00"},
    {"float64", "cb 3f f0 00 00 00 00 00 00"},
    {"uint8", "cc ff"},
    {"uint16", "cd ff ff"},
    {"uint32", "ce ff ff ff ff"},
    {"uint64", "cf ff ff ff ff ff ff ff ff"},
    {"int8", "d0 80"},
    {"int16", "d1 80 00"},
    {"int32", "d2 80 00 00 00"},
    {"int64", "d3 80 00 00 00 00 00 00 00"},
    {"str8", "d9 03 61 62 63"},
    {"str16", "da 00 03 61 62 63"},
    {"str32", "db 00 00 00 03 61 62 63"},
    {"array16", "dc 00 02 01 02"},
    {"array32", "dd 00 00 00 02 01 02"},
    {"map16", "de 00 01 a1 61 01"},
    {"map32", "df 00 00 00 01 a1 61 01"},
    {"nested", "82 a1 61 93 01 cb 40 09 21 fb 54 44 2d 18 c0 a1 62 81 a1 63 c3"},
};

static void test_scan_types(void)
{
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        unsigned char b[64];
        size_t n = unhex(samples[i].hex, b), off = 0;
        char err[TWIN_ERR_LEN] = "";
        msgpack_object o;
        int rc = twin_input_scan(b, n, &DEF, err);

        if (rc)
            FAIL("%s rejected: %s", samples[i].name, err);
        if (msgpack_unpack((const char *)b, n, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS || off != n)
            FAIL("msgpack-c disagrees on %s", samples[i].name);
        /* every truncation of every type is malformed */
        for (size_t k = 0; k < n; k++) {
            rc = twin_input_scan(b, k, &DEF, err);
            if (rc != -EBADMSG)
                FAIL("%s cut to %zu bytes: rc %d", samples[i].name, k, rc);
        }
        /* and one byte too many is trailing garbage */
        b[n] = 0x00;
        rc = twin_input_scan(b, n + 1, &DEF, err);
        CHECK_INT(rc, -EBADMSG);
        CHECK_HAS(err, "1 trailing byte after the object");
        rc = twin_input_decode(b, n, &DEF, &z, &o, err);
        if (rc)
            FAIL("decode of %s: %s", samples[i].name, err);
    }
    msgpack_zone_destroy(&z);
}

static void test_scan_reasons(void)
{
    static const struct {
        const char *hex;
        int rc;
        const char *reason;
    } cases[] = {
        {"", -EBADMSG, "empty payload"},
        {"db 00 00 00", -EBADMSG, "truncated str32 at offset 0"},
        {"91 db 00 00 00 05 61", -EBADMSG, "truncated str32 at offset 1"},
        {"93 01 02 df ff ff ff ff 01 02 03 04 05", -EBADMSG,
         "map at offset 3 declares 4294967295 entries, 5 bytes remain"},
        {"dd ff ff ff ff", -EBADMSG, "array at offset 0 declares 4294967295 entries, 0 bytes"},
        {"de ff ff", -EBADMSG, "map at offset 0 declares 65535 entries"},
        {"9f 01", -EBADMSG, "array at offset 0 declares 15 entries, 1 bytes remain"},
        {"c1", -EBADMSG, "invalid byte 0xc1 at offset 0"},
        {"92 01 c1", -EBADMSG, "invalid byte 0xc1 at offset 2"},
        {"81 a1 61 01 02 03", -EBADMSG, "2 trailing bytes after the object at offset 4"},
        {"cd 01", -EBADMSG, "truncated uint16 at offset 0"},
        {"c4 05 01", -EBADMSG, "truncated bin8 at offset 0"},
        {"d8 05 00", -EBADMSG, "truncated fixext16 at offset 0"},
        {"c9 00 00", -EBADMSG, "truncated ext32 at offset 0"},
        {"92 01", -EBADMSG, "array at offset 0 declares 2 entries, 1 bytes remain"},
        {"92 a1 61", -EBADMSG, "an object expected at offset 3"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char b[64];
        size_t n = unhex(cases[i].hex, b);
        char err[TWIN_ERR_LEN] = "";
        int rc = twin_input_scan(b, n, &DEF, err);

        if (rc != cases[i].rc)
            FAIL("case %zu (%s): rc %d, expected %d (%s)", i, cases[i].hex, rc, cases[i].rc, err);
        CHECK_HAS(err, cases[i].reason);
    }
}

/* n nested one-element arrays around 0x01, optionally innermost empty */
static size_t nest(unsigned char *b, unsigned n, bool empty_inner)
{
    size_t k = 0;

    for (unsigned i = 0; i < n; i++)
        b[k++] = (empty_inner && i == n - 1) ? 0x90 : 0x91;
    if (!empty_inner)
        b[k++] = 0x01;
    return k;
}

static void test_scan_limits(void)
{
    unsigned char b[70000];
    struct twin_limits lim = DEF, deep = {65536, 40, 1024};
    char err[TWIN_ERR_LEN] = "";
    msgpack_zone z;
    msgpack_object o;
    size_t n, off;

    msgpack_zone_init(&z, 4096);
    n = nest(b, 16, false);
    CHECK_INT(twin_input_scan(b, n, &DEF, err), 0);
    n = nest(b, 17, false);
    CHECK_INT(twin_input_scan(b, n, &DEF, err), -ELOOP);
    CHECK_HAS(err, "nesting deeper than 16 at offset 16");
    n = nest(b, 17, true); /* an empty container still nests */
    CHECK_INT(twin_input_scan(b, n, &DEF, err), -ELOOP);

    /* max_depth above msgpack-c's own limit is capped at TWIN_DEPTH_CAP */
    n = nest(b, 32, false);
    CHECK_INT(twin_input_scan(b, n, &deep, err), 0);
    off = 0;
    CHECK(msgpack_unpack((const char *)b, n, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS);
    n = nest(b, 33, false);
    CHECK_INT(twin_input_scan(b, n, &deep, err), -ELOOP);
    CHECK_HAS(err, "nesting deeper than 32 at offset 32");
    off = 0;
    CHECK(msgpack_unpack((const char *)b, n, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS);
    CHECK_INT(twin_input_decode(b, n, &deep, &z, &o, err), -ELOOP);

    /* entries per array and per map */
    b[0] = 0xdc;
    b[1] = 0x04;
    b[2] = 0x00; /* 1024 */
    memset(b + 3, 0, 1024);
    CHECK_INT(twin_input_scan(b, 3 + 1024, &DEF, err), 0);
    b[2] = 0x01; /* 1025 */
    b[3 + 1024] = 0;
    CHECK_INT(twin_input_scan(b, 3 + 1025, &DEF, err), -E2BIG);
    CHECK_HAS(err, "array at offset 0 has 1025 entries, the limit is 1024");
    lim.max_keys = 2;
    n = unhex("83 a1 61 01 a1 62 02 a1 63 03", b);
    CHECK_INT(twin_input_scan(b, n, &lim, err), -E2BIG);
    CHECK_HAS(err, "map at offset 0 has 3 entries, the limit is 2");

    /* payload size */
    b[0] = 0xc5;
    b[1] = 0xff;
    b[2] = 0xff;
    memset(b + 3, 0, 65535);
    CHECK_INT(twin_input_scan(b, 3 + 65535, &DEF, err), -E2BIG);
    CHECK_HAS(err, "payload of 65538 bytes is over limits.max_payload (65536)");
    CHECK_INT(twin_input_decode(b, 3 + 65535, &DEF, &z, &o, err), -E2BIG);

    /* the 5-byte bomb never reaches msgpack-c */
    n = unhex("dd ff ff ff ff", b);
    CHECK_INT(twin_input_decode(b, n, &DEF, &z, &o, err), -EBADMSG);
    msgpack_zone_destroy(&z);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Whatever the scan accepts, msgpack-c decodes completely. */
static void test_scan_fuzz(void)
{
    msgpack_zone z;
    unsigned accepted = 0;

    msgpack_zone_init(&z, 4096);
    for (int it = 0; it < 50000; it++) {
        unsigned char b[80];
        size_t n, off = 0;
        msgpack_object o;
        int rc;

        if (it % 3 == 0) {
            n = 1 + rnd() % 24;
            for (size_t i = 0; i < n; i++)
                b[i] = (unsigned char)rnd();
        } else {
            /* a valid sample or two inside an array, then mutated */
            size_t a = rnd() % (sizeof samples / sizeof samples[0]);
            size_t c = rnd() % (sizeof samples / sizeof samples[0]);

            b[0] = 0x92;
            n = 1 + unhex(samples[a].hex, b + 1);
            n += unhex(samples[c].hex, b + n);
            for (int m = (int)(rnd() % 3); m >= 0; m--)
                b[rnd() % n] = (unsigned char)rnd();
            if (rnd() % 4 == 0)
                n = rnd() % n + 1;
        }
        rc = twin_input_scan(b, n, &DEF, NULL);
        if (rc)
            continue;
        accepted++;
        if (msgpack_unpack((const char *)b, n, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS ||
            off != n) {
            FAIL("scan accepted what msgpack-c rejects (iteration %d)", it);
            break;
        }
        msgpack_zone_clear(&z);
    }
    CHECK(accepted > 1000);
    msgpack_zone_destroy(&z);
}

/* ---------------------------------------------------------------------------------------------
 * JSON
 * ------------------------------------------------------------------------------------------ */

static void test_json_input(void)
{
    static const struct {
        const char *in;
        int rc;
        const char *out; /* JSON written back, or a piece of the reason */
    } cases[] = {
        {"{\"a\":1,\"b\":-2,\"c\":1.5,\"d\":true,\"e\":false,\"f\":null,\"g\":\"x\","
         "\"h\":[1,[2]],\"i\":{}}",
         0,
         "{\"a\":1,\"b\":-2,\"c\":1.5,\"d\":true,\"e\":false,\"f\":null,\"g\":\"x\","
         "\"h\":[1,[2]],\"i\":{}}"},
        {" \t\r\n{ \"a\" : [ 1 , 2 ] , \"b\" : { } }\r\n ", 0, "{\"a\":[1,2],\"b\":{}}"},
        {"{\"s\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t\"}", 0,
         "{\"s\":\"q\\\" b\\\\ s/ \\b\\f\\n\\r\\t\"}"},
        {"{\"u\":\"\\u0041\\u00e9\\u20AC\\ud83d\\ude00\"}", 0,
         "{\"u\":\"A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}"},
        {"{\"z\":\"a\\u0000b\"}", 0, "{\"z\":\"a\\u0000b\"}"},
        {"{\"raw\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}", 0,
         "{\"raw\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}"},
        {"{\"n\":[0,-0,127,128,255,256,65535,65536,4294967295,4294967296,-32,-33,-128,-129,"
         "-32768,-32769,-2147483648,-2147483649]}",
         0,
         "{\"n\":[0,0,127,128,255,256,65535,65536,4294967295,4294967296,-32,-33,-128,-129,"
         "-32768,-32769,-2147483648,-2147483649]}"},
        {"{\"big\":[18446744073709551615,-9223372036854775808,18446744073709551616,"
         "-9223372036854775809]}",
         0,
         "{\"big\":[18446744073709551615,-9223372036854775808,1.8446744073709552e+19,"
         "-9.223372036854776e+18]}"},
        {"{\"f\":[1.0,1e2,1E+2,2.5e-3,0.1,-0.0,1e308]}", 0,
         "{\"f\":[1.0,100.0,100.0,0.0025,0.1,-0.0,1e+308]}"},
        {"{\"k\":\"" /* a 300-byte string: str16 header */
         "0123456789012345678901234567890123456789012345678901234567890123456789"
         "0123456789012345678901234567890123456789012345678901234567890123456789"
         "0123456789012345678901234567890123456789012345678901234567890123456789"
         "0123456789012345678901234567890123456789012345678901234567890123456789"
         "01234567890123456789\"}",
         0, NULL},
        /* malformed: the reason names the offset */
        {"{\"a\":1,}", -EBADMSG, "unexpected '}' at offset 7, expected a string key"},
        {"{\"a\":[1,]}", -EBADMSG, "unexpected ']' at offset 8, expected a value"},
        {"{\"a\":01}", -EBADMSG, "unexpected '1' at offset 6"},
        {"{\"a\":1.}", -EBADMSG, "invalid number at offset 5"},
        {"{\"a\":1e}", -EBADMSG, "invalid number at offset 5"},
        {"{\"a\":.5}", -EBADMSG, "unexpected '.' at offset 5"},
        {"{\"a\":+1}", -EBADMSG, "unexpected '+' at offset 5"},
        {"{\"a\":-}", -EBADMSG, "invalid number at offset 5"},
        {"{\"a\":\"\\x\"}", -EBADMSG, "invalid escape '\\x' at offset 6"},
        {"{\"a\":\"\\u12G4\"}", -EBADMSG, "invalid \\u escape at offset 6"},
        {"{\"a\":\"\\ud800\"}", -EBADMSG, "unpaired surrogate \\uD800 at offset 6"},
        {"{\"a\":\"\\udc00\"}", -EBADMSG, "unpaired surrogate \\uDC00 at offset 6"},
        {"{\"a\":\"\\ud800\\u0041\"}", -EBADMSG, "unpaired surrogate \\uD800 at offset 6"},
        {"{\"a\":\"x\x01\"}", -EBADMSG, "control character 0x01 in string at offset 7"},
        {"{\"a\":\"\n\"}", -EBADMSG, "control character 0x0a in string at offset 6"},
        {"{\"a\":\"\xff\"}", -EBADMSG, "invalid UTF-8 at offset 6"},
        {"{\"a\":\"\xc0\x80\"}", -EBADMSG, "invalid UTF-8 at offset 6"},
        {"{\"a\":\"\xed\xa0\x80\"}", -EBADMSG, "invalid UTF-8 at offset 6"},
        {"{\"a\":\"\xe2\x82\"}", -EBADMSG, "invalid UTF-8 at offset 6"},
        {"{\"a\":\"\xf4\x90\x80\x80\"}", -EBADMSG, "invalid UTF-8 at offset 6"},
        {"{\"a\":1} x", -EBADMSG, "trailing characters at offset 8"},
        {"{\"a\":1}{}", -EBADMSG, "trailing characters at offset 7"},
        {"{\"a\" 1}", -EBADMSG, "unexpected '1' at offset 5, expected ':'"},
        {"{a:1}", -EBADMSG, "unexpected 'a' at offset 1, expected a string key"},
        {"{\"a\":tru}", -EBADMSG, "unexpected 't' at offset 5, expected a value"},
        {"{\"a\":nul", -EBADMSG, "unexpected 'n' at offset 5"},
        {"{\"a\":1e999}", -EBADMSG, "number out of range at offset 5"},
        {"{\"a\":\"abc", -EBADMSG, "unterminated string starting at offset 5"},
        {"{", -EBADMSG, "unexpected end of input at offset 1"},
        {"{\"a\":1 \"b\":2}", -EBADMSG, "unexpected '\"' at offset 7, expected ',' or '}'"},
        {"{\"a\":[1 2]}", -EBADMSG, "expected ',' or ']'"},
        {"{\"a\":\x01}", -EBADMSG, "unexpected byte 0x01 at offset 5"},
    };
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[TWIN_ERR_LEN] = "";
        msgpack_object o;
        int rc = twin_input_decode(cases[i].in, strlen(cases[i].in), &DEF, &z, &o, err);

        if (rc != cases[i].rc) {
            FAIL("case %zu %s: rc %d, expected %d (%s)", i, cases[i].in, rc, cases[i].rc, err);
            continue;
        }
        if (rc == 0 && cases[i].out)
            CHECK_STR(TJ(&o), cases[i].out);
        else if (rc)
            CHECK_HAS(err, cases[i].out);
    }
    msgpack_zone_destroy(&z);
}

static void test_json_types(void)
{
    msgpack_zone z;
    msgpack_object o;
    const msgpack_object *v;
    const char *in = "{\"u\":18446744073709551615,\"i\":-9223372036854775808,\"f\":1.0,"
                     "\"s\":\"" /* 300 bytes */
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxx\",\"n\":-5}";
    char err[TWIN_ERR_LEN];

    msgpack_zone_init(&z, 4096);
    CHECK_INT(twin_input_decode(in, strlen(in), &DEF, &z, &o, err), 0);
    v = twin_value_get(&o, "u", 1);
    CHECK(v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 == UINT64_MAX);
    v = twin_value_get(&o, "i", 1);
    CHECK(v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 == INT64_MIN);
    v = twin_value_get(&o, "f", 1);
    CHECK(v && v->type == MSGPACK_OBJECT_FLOAT64 && v->via.f64 == 1.0);
    v = twin_value_get(&o, "s", 1);
    CHECK(v && v->type == MSGPACK_OBJECT_STR && v->via.str.size == 300);
    v = twin_value_get(&o, "n", 1);
    CHECK(v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 == -5);
    msgpack_zone_destroy(&z);
}

static void test_json_limits(void)
{
    char buf[20000], err[TWIN_ERR_LEN];
    struct twin_limits lim = DEF;
    msgpack_zone z;
    msgpack_object o;
    size_t n;

    msgpack_zone_init(&z, 4096);
    /* depth: the object is depth 1, each '[' one more */
    for (int depth = 16; depth <= 17; depth++) {
        n = (size_t)sprintf(buf, "{\"a\":");
        for (int i = 1; i < depth; i++)
            buf[n++] = '[';
        buf[n++] = '1';
        for (int i = 1; i < depth; i++)
            buf[n++] = ']';
        buf[n++] = '}';
        buf[n] = '\0';
        CHECK_INT(twin_input_decode(buf, n, &DEF, &z, &o, err), depth == 16 ? 0 : -ELOOP);
    }
    CHECK_HAS(err, "nesting deeper than 16 at offset 20");

    /* entries */
    n = (size_t)sprintf(buf, "{");
    for (int i = 0; i < 1025; i++)
        n += (size_t)sprintf(buf + n, "%s\"k%d\":%d", i ? "," : "", i, i);
    n += (size_t)sprintf(buf + n, "}");
    CHECK_INT(twin_input_decode(buf, n, &DEF, &z, &o, err), -E2BIG);
    CHECK_HAS(err, "object at offset 0 has more than 1024 entries");
    n = (size_t)sprintf(buf, "{\"a\":[");
    for (int i = 0; i < 1025; i++)
        n += (size_t)sprintf(buf + n, "%s0", i ? "," : "");
    n += (size_t)sprintf(buf + n, "]}");
    CHECK_INT(twin_input_decode(buf, n, &DEF, &z, &o, err), -E2BIG);
    CHECK_HAS(err, "array at offset 5 has more than 1024 entries");
    lim.max_keys = 2;
    CHECK_INT(twin_input_decode("{\"a\":1,\"b\":2}", 13, &lim, &z, &o, err), 0);
    CHECK_INT(twin_input_decode("{\"a\":1,\"b\":2,\"c\":3}", 19, &lim, &z, &o, err), -E2BIG);

    /* size: the raw payload is what is bounded */
    lim = DEF;
    lim.max_payload = 10;
    CHECK_INT(twin_input_decode("{\"a\":12345}", 11, &lim, &z, &o, err), -E2BIG);
    CHECK_INT(twin_input_decode("{\"a\":1234}", 10, &lim, &z, &o, err), 0);

    /* 1,000 floats of 3 bytes each become 9,000 bytes of msgpack */
    n = (size_t)sprintf(buf, "{\"a\":[");
    for (int i = 0; i < 1000; i++)
        n += (size_t)sprintf(buf + n, "%s1e1", i ? "," : "");
    n += (size_t)sprintf(buf + n, "]}");
    CHECK_INT(twin_input_decode(buf, n, &DEF, &z, &o, err), 0);
    CHECK(o.via.map.ptr[0].val.via.array.size == 1000 &&
          o.via.map.ptr[0].val.via.array.ptr[999].via.f64 == 10.0);
    msgpack_zone_destroy(&z);
}

static void test_json_write(void)
{
    static const unsigned char bin[] = "foobar";
    msgpack_zone z;
    msgpack_object o, kv_keys;
    msgpack_object_kv kvs[3];
    msgpack_object arr[8];
    const char *b64[] = {"\"\"",         "\"Zg==\"",     "\"Zm8=\"",    "\"Zm9v\"",
                         "\"Zm9vYg==\"", "\"Zm9vYmE=\"", "\"Zm9vYmFy\""};

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i <= 6; i++) {
        o.type = MSGPACK_OBJECT_BIN;
        o.via.bin.ptr = (const char *)bin;
        o.via.bin.size = (uint32_t)i;
        CHECK_STR(TJ(&o), b64[i]);
    }
    o.type = MSGPACK_OBJECT_EXT;
    o.via.ext.type = 5;
    o.via.ext.ptr = "\x01\x02";
    o.via.ext.size = 2;
    CHECK_STR(TJ(&o), "{\"ext\":5,\"data\":\"AQI=\"}");

    /* floats */
    {
        static const struct {
            double d;
            bool f32;
            const char *out;
        } fl[] = {
            {1.0, false, "1.0"},
            {0.1, false, "0.1"},
            {-0.0, false, "-0.0"},
            {1e300, false, "1e+300"},
            {1.0 / 3, false, "0.3333333333333333"},
            {(double)0.1f, true, "0.1"},
            {123456789.0, false, "123456789.0"},
            {NAN, false, "null"},
            {INFINITY, false, "null"},
            {-INFINITY, true, "null"},
        };
        for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) {
            o.type = fl[i].f32 ? MSGPACK_OBJECT_FLOAT32 : MSGPACK_OBJECT_FLOAT64;
            o.via.f64 = fl[i].d;
            CHECK_STR(TJ(&o), fl[i].out);
        }
    }

    /* strings: control characters escaped, invalid UTF-8 replaced */
    o.type = MSGPACK_OBJECT_STR;
    o.via.str.ptr = "a\x01\x1f\x7f\"\\\xff\xc3\xa9z\xe2\x82";
    o.via.str.size = (uint32_t)strlen(o.via.str.ptr);
    CHECK_STR(TJ(&o),
              "\"a\\u0001\\u001f\\u007f\\\"\\\\\xef\xbf\xbd\xc3\xa9z\xef\xbf\xbd\xef\xbf\xbd\"");

    /* keys that are not strings are written as their JSON text, quoted */
    kvs[0].key.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    kvs[0].key.via.u64 = 1;
    kvs[0].val = str_obj("a");
    kvs[1].key.type = MSGPACK_OBJECT_BOOLEAN;
    kvs[1].key.via.boolean = true;
    kvs[1].val.type = MSGPACK_OBJECT_NIL;
    kvs[2].key = str_obj("s");
    kvs[2].val.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    kvs[2].val.via.i64 = -7;
    kv_keys.type = MSGPACK_OBJECT_MAP;
    kv_keys.via.map.ptr = kvs;
    kv_keys.via.map.size = 3;
    CHECK_STR(TJ(&kv_keys), "{\"1\":\"a\",\"true\":null,\"s\":-7}");

    /* empty containers */
    arr[0].type = MSGPACK_OBJECT_ARRAY;
    arr[0].via.array.size = 0;
    arr[0].via.array.ptr = NULL;
    CHECK_STR(TJ(&arr[0]), "[]");

    /* round trip: JSON -> msgpack -> JSON -> msgpack gives equal values */
    {
        static const char *docs[] = {
            "{\"a\":{\"b\":[1,2.5,\"x\",null,true,false,{\"c\":-3}]},\"d\":\"\\u00e9\\n\"}",
            "{\"big\":18446744073709551615,\"neg\":-9223372036854775808,\"f\":1e-300}",
            "{\"pi\":3.141592653589793,\"e\":2.718281828459045,\"t\":0.30000000000000004}",
            "{}",
        };
        for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
            msgpack_object a, b;
            char err[TWIN_ERR_LEN];
            const char *text;

            CHECK_INT(twin_input_decode(docs[i], strlen(docs[i]), &DEF, &z, &a, err), 0);
            text = TJ(&a);
            CHECK_INT(twin_input_decode(text, strlen(text), &DEF, &z, &b, err), 0);
            CHECK(twin_value_equal(&a, &b));
            CHECK_STR(TJ(&b), text);
        }
    }
    msgpack_zone_destroy(&z);
}

/* ---------------------------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------------------------ */

static void test_values(void)
{
    static const struct {
        const char *a, *b;
        bool eq;
    } cases[] = {
        {"1", "1", true},
        {"1", "1.0", true},
        {"-1", "-1.0", true},
        {"1", "1.5", false},
        {"-1", "1", false},
        {"18446744073709551615", "1.8446744073709552e19", false},
        {"9007199254740992", "9007199254740992.0", true},
        {"\"a\"", "\"a\"", true},
        {"\"a\"", "\"b\"", false},
        {"null", "null", true},
        {"null", "false", false},
        {"true", "true", true},
        {"[1,2]", "[1,2]", true},
        {"[1,2]", "[2,1]", false},
        {"[1,2]", "[1,2,3]", false},
        {"{\"a\":1,\"b\":{\"c\":[1]}}", "{\"b\":{\"c\":[1.0]},\"a\":1}", true},
        {"{\"a\":1}", "{\"a\":1,\"b\":2}", false},
        {"{\"a\":1}", "{\"b\":1}", false},
        {"{}", "[]", false},
        {"\"1\"", "1", false},
    };
    msgpack_zone z;
    msgpack_object m;
    const msgpack_object *v;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_object a = V(&z, cases[i].a), b = V(&z, cases[i].b);

        if (twin_value_equal(&a, &b) != cases[i].eq || twin_value_equal(&b, &a) != cases[i].eq)
            FAIL("equal(%s, %s) should be %d", cases[i].a, cases[i].b, cases[i].eq);
    }
    m = V(&z, "{\"vitals\":{\"hr\":72,\"bp\":{\"sys\":120}},\"name\":\"x\"}");
    v = twin_value_path(&m, "vitals.hr", 9);
    CHECK(v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 == 72);
    v = twin_value_path(&m, "vitals.bp.sys", 13);
    CHECK(v && v->via.u64 == 120);
    v = twin_value_path(&m, "vitals.bp.sys.x", 15);
    CHECK(v == NULL);
    CHECK(twin_value_path(&m, "vitals.hr2", 10) == NULL);
    CHECK(twin_value_path(&m, "vitals..hr", 10) == NULL);
    CHECK(twin_value_path(&m, "vitals.", 7) == NULL);
    CHECK(twin_value_path(&m, "", 0) == NULL);
    v = twin_value_path(&m, "vitals.hr.junk", 9); /* only len bytes count */
    CHECK(v && v->via.u64 == 72);
    v = twin_value_path(&m, "vitals", 6);
    CHECK(v && v->type == MSGPACK_OBJECT_MAP);
    v = twin_value_get(&m, "name", 4);
    CHECK(v && v->type == MSGPACK_OBJECT_STR);
    CHECK(twin_value_get(&m, "nam", 3) == NULL);
    CHECK(twin_value_get(v, "x", 1) == NULL); /* not a map */
    msgpack_zone_destroy(&z);
}

/* ---------------------------------------------------------------------------------------------
 * Merge
 * ------------------------------------------------------------------------------------------ */

static void test_merge_rfc7396(void)
{
    /* RFC 7396, Appendix A */
    static const struct {
        const char *target, *patch, *result;
    } cases[] = {
        {"{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
        {"{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}"},
        {"{\"a\":\"b\"}", "{\"a\":null}", "{}"},
        {"{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}"},
        {"{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
        {"{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}"},
        {"{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}"},
        {"{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}"},
        {"[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]"},
        {"{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]"},
        {"{\"a\":\"foo\"}", "null", "null"},
        {"{\"a\":\"foo\"}", "\"bar\"", "\"bar\""},
        {"{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}"},
        {"[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}"},
        {"{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}"},
        /* ours: order kept, new keys appended, duplicates in a patch: the last wins */
        {"{\"x\":1,\"y\":2,\"z\":3}", "{\"y\":null,\"w\":4,\"x\":5}", "{\"x\":5,\"z\":3,\"w\":4}"},
        {"{}", "{\"a\":1,\"a\":null,\"a\":2}", "{\"a\":2}"},
    };
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_object t = V(&z, cases[i].target), p = V(&z, cases[i].patch), out;
        char before_t[512], before_p[512];

        snprintf(before_t, sizeof before_t, "%s", TJ(&t));
        snprintf(before_p, sizeof before_p, "%s", TJ(&p));
        CHECK_INT(twin_merge(&z, &t, &p, NULL, 0, &out, NULL, NULL, NULL), 0);
        CHECK_STR(TJ(&out), cases[i].result);
        /* inputs untouched */
        CHECK_STR(TJ(&t), before_t);
        CHECK_STR(TJ(&p), before_p);
    }
    msgpack_zone_destroy(&z);
}

struct leaves {
    char paths[16][64];
    int n;
};

static void collect_leaf(void *ctx, const char *path, size_t len, const msgpack_object *v)
{
    struct leaves *l = ctx;

    (void)v;
    if (l->n < 16)
        snprintf(l->paths[l->n++], sizeof l->paths[0], "%.*s", (int)len, path);
}

static void test_merge_meta(void)
{
    static const struct {
        const char *target, *meta, *patch;
        int64_t ts;
        const char *result, *meta_out, *leaves;
    } cases[] = {
        {"{}", "{}", "{\"hr\":72,\"vitals\":{\"spo2\":98,\"bp\":{\"sys\":120}}}", 100,
         "{\"hr\":72,\"vitals\":{\"spo2\":98,\"bp\":{\"sys\":120}}}",
         "{\"hr\":100,\"vitals\":{\"spo2\":100,\"bp\":{\"sys\":100}}}",
         "hr vitals.spo2 vitals.bp.sys"},
        /* untouched leaves keep their ts; the same value rewritten gets the new ts */
        {"{\"a\":1,\"b\":{\"c\":2,\"d\":3}}", "{\"a\":10,\"b\":{\"c\":10,\"d\":10}}",
         "{\"b\":{\"c\":2}}", 200, "{\"a\":1,\"b\":{\"c\":2,\"d\":3}}",
         "{\"a\":10,\"b\":{\"c\":200,\"d\":10}}", "b.c"},
        /* deletes lose their meta and call nothing */
        {"{\"a\":1,\"b\":{\"c\":2,\"d\":3}}", "{\"a\":10,\"b\":{\"c\":10,\"d\":10}}",
         "{\"a\":null,\"b\":{\"d\":null},\"x\":null}", 300, "{\"b\":{\"c\":2}}",
         "{\"b\":{\"c\":10}}", ""},
        /* a map replacing a leaf and a leaf replacing a map */
        {"{\"a\":1,\"b\":{\"c\":2}}", "{\"a\":10,\"b\":{\"c\":10}}", "{\"a\":{\"x\":5},\"b\":7}",
         400, "{\"a\":{\"x\":5},\"b\":7}", "{\"a\":{\"x\":400},\"b\":400}", "a.x b"},
        /* arrays are leaves */
        {"{}", "{}", "{\"ecg\":[1,2,3],\"e\":{}}", -5, "{\"ecg\":[1,2,3],\"e\":{}}",
         "{\"ecg\":-5,\"e\":{}}", "ecg"},
        /* meta missing or of the wrong shape is rebuilt */
        {"{\"a\":{\"b\":1}}", "{\"a\":7}", "{\"a\":{\"c\":2}}", 9, "{\"a\":{\"b\":1,\"c\":2}}",
         "{\"a\":{\"c\":9}}", "a.c"},
        {"{\"a\":1}", "null", "{\"b\":2}", 9, "{\"a\":1,\"b\":2}", "{\"b\":9}", "b"},
    };
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_object t = V(&z, cases[i].target), m = V(&z, cases[i].meta),
                       p = V(&z, cases[i].patch), out, mout;
        struct leaves l = {.n = 0};
        char joined[512] = "";

        CHECK_INT(twin_merge(&z, &t, &p, &m, cases[i].ts, &out, &mout, collect_leaf, &l), 0);
        CHECK_STR(TJ(&out), cases[i].result);
        CHECK_STR(TJ(&mout), cases[i].meta_out);
        for (int k = 0; k < l.n; k++) {
            if (k)
                strcat(joined, " ");
            strcat(joined, l.paths[k]);
        }
        CHECK_STR(joined, cases[i].leaves);
    }
    msgpack_zone_destroy(&z);
}

/* Large maps take the hashed path: the result must be the same as the linear one. */
static void test_merge_large(void)
{
    char *t = malloc(100000), *p = malloc(100000);
    size_t tn = 0, pn = 0;
    msgpack_zone z;
    msgpack_object tv, pv, out, mv, mout;
    struct leaves l = {.n = 0};

    msgpack_zone_init(&z, 65536);
    tn += (size_t)sprintf(t + tn, "{");
    for (int i = 0; i < 600; i++)
        tn += (size_t)sprintf(t + tn, "%s\"k%d\":%d", i ? "," : "", i, i);
    sprintf(t + tn, "}");
    pn += (size_t)sprintf(p + pn, "{");
    for (int i = 0; i < 600; i += 3) /* delete every 6th, overwrite the other 3rds, add new */
        pn += (size_t)sprintf(p + pn, "%s\"k%d\":%s", i ? "," : "", i, i % 2 ? "-1" : "null");
    for (int i = 600; i < 700; i++)
        pn += (size_t)sprintf(p + pn, ",\"k%d\":%d", i, i);
    sprintf(p + pn, "}");
    tv = V(&z, t);
    pv = V(&z, p);
    mv = V(&z, "{}");
    CHECK_INT(twin_merge(&z, &tv, &pv, &mv, 1, &out, &mout, collect_leaf, &l), 0);
    CHECK(out.type == MSGPACK_OBJECT_MAP);
    CHECK_INT(out.via.map.size, 600 - 100 + 100);
    for (int i = 0; i < 700; i++) {
        char k[16];
        int kl = sprintf(k, "k%d", i);
        const msgpack_object *v = twin_value_get(&out, k, (size_t)kl);

        if (i < 600 && i % 3 == 0 && i % 2 == 0)
            CHECK(v == NULL);
        else if (i < 600 && i % 3 == 0)
            CHECK(v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 == -1);
        else
            CHECK(v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 == (uint64_t)i);
    }
    CHECK_INT(mout.via.map.size, 100 + 100);
    msgpack_zone_destroy(&z);
    free(t);
    free(p);
}

/* ---------------------------------------------------------------------------------------------
 * Documents
 * ------------------------------------------------------------------------------------------ */

static struct twin_doc doc_sample(msgpack_zone *z)
{
    struct twin_doc d;

    memset(&d, 0, sizeof d);
    d.id = "ecg-001";
    d.id_len = 7;
    d.version = 42;
    d.reported = V(z, "{\"hr\":72,\"vitals\":{\"spo2\":98.5}}");
    d.desired = V(z, "{\"sample_hz\":250}");
    d.delta = V(z, "{\"sample_hz\":250}");
    d.predicted = V(z, "{\"hr_forecast\":{\"value\":80.5,\"ts\":5,\"twin_version\":41}}");
    d.meta_reported = V(z, "{\"hr\":1000,\"vitals\":{\"spo2\":1000}}");
    d.meta_desired = V(z, "{\"sample_hz\":900}");
    d.connected = true;
    d.last_seen = 1700000000123;
    d.seq = 17;
    d.has_seq = true;
    d.created = -5;
    return d;
}

static void test_doc(void)
{
    msgpack_zone z;
    msgpack_sbuffer sb;
    struct twin_doc d, back;
    msgpack_object o;
    uint64_t ver = 0;
    size_t off = 0;
    char err[TWIN_ERR_LEN];
    static const char *order_full[] = {"id",        "version",   "reported", "desired",
                                       "delta",     "predicted", "meta",     "connected",
                                       "last_seen", "seq",       "created"};
    static const char *order_min[] = {"id",   "version",   "reported",  "desired",
                                      "meta", "connected", "last_seen", "created"};

    msgpack_zone_init(&z, 4096);
    msgpack_sbuffer_init(&sb);
    d = doc_sample(&z);
    CHECK_INT(twin_doc_encode(&d, &sb), 0);
    CHECK_INT(twin_doc_version(sb.data, sb.size, &ver), 0);
    CHECK_INT(ver, 42);
    CHECK_INT(twin_doc_decode(sb.data, sb.size, &z, &back, err), 0);
    CHECK(back.id_len == 7 && memcmp(back.id, "ecg-001", 7) == 0);
    CHECK_INT(back.version, 42);
    CHECK(twin_value_equal(&back.reported, &d.reported));
    CHECK(twin_value_equal(&back.desired, &d.desired));
    CHECK(twin_value_equal(&back.delta, &d.delta));
    CHECK(twin_value_equal(&back.predicted, &d.predicted));
    CHECK(twin_value_equal(&back.meta_reported, &d.meta_reported));
    CHECK(twin_value_equal(&back.meta_desired, &d.meta_desired));
    CHECK(back.connected);
    CHECK_INT(back.last_seen, 1700000000123);
    CHECK(back.has_seq && back.seq == 17);
    CHECK_INT(back.created, -5);
    /* key order */
    CHECK(msgpack_unpack(sb.data, sb.size, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS);
    CHECK_INT(o.via.map.size, 11);
    for (uint32_t i = 0; i < o.via.map.size && i < 11; i++) {
        const msgpack_object *k = &o.via.map.ptr[i].key;

        CHECK(k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(order_full[i]) &&
              !memcmp(k->via.str.ptr, order_full[i], k->via.str.size));
    }

    /* nothing optional: delta/predicted empty, no seq, maps nil */
    memset(&d, 0, sizeof d);
    d.id = "x";
    d.id_len = 1;
    d.version = 1;
    d.reported.type = d.desired.type = d.predicted.type = d.meta_reported.type =
        d.meta_desired.type = MSGPACK_OBJECT_NIL;
    d.delta = V(&z, "{}");
    msgpack_sbuffer_clear(&sb);
    CHECK_INT(twin_doc_encode(&d, &sb), 0);
    off = 0;
    CHECK(msgpack_unpack(sb.data, sb.size, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS);
    CHECK_INT(o.via.map.size, 8);
    for (uint32_t i = 0; i < o.via.map.size && i < 8; i++) {
        const msgpack_object *k = &o.via.map.ptr[i].key;

        CHECK(k->via.str.size == strlen(order_min[i]) &&
              !memcmp(k->via.str.ptr, order_min[i], k->via.str.size));
    }
    CHECK_STR(TJ(&o), "{\"id\":\"x\",\"version\":1,\"reported\":{},\"desired\":{},"
                      "\"meta\":{\"reported\":{},\"desired\":{}},\"connected\":false,"
                      "\"last_seen\":0,\"created\":0}");
    CHECK_INT(twin_doc_decode(sb.data, sb.size, &z, &back, err), 0);
    CHECK(!back.has_seq && back.delta.type == MSGPACK_OBJECT_NIL &&
          back.predicted.type == MSGPACK_OBJECT_NIL);

    /* encode refuses what decode could not read back */
    d.reported = V(&z, "[1]");
    CHECK_INT(twin_doc_encode(&d, &sb), -EINVAL);
    d.reported.type = MSGPACK_OBJECT_NIL;
    d.id_len = 0;
    CHECK_INT(twin_doc_encode(&d, &sb), -EINVAL);
    msgpack_sbuffer_destroy(&sb);
    msgpack_zone_destroy(&z);
}

static void test_doc_decode_bad(void)
{
    static const struct {
        const char *json;
        int rc;
        const char *reason;
    } cases[] = {
        {"{\"id\":\"a\",\"version\":3}", 0, ""},
        {"{\"version\":3,\"id\":\"a\",\"future\":[1,2],\"meta\":{\"other\":1}}", 0, ""},
        {"{\"version\":3}", -EBADMSG, "no 'id'"},
        {"{\"id\":\"a\"}", -EBADMSG, "no 'version'"},
        {"{\"id\":1,\"version\":3}", -EBADMSG, "'id' must be"},
        {"{\"id\":\"\",\"version\":3}", -EBADMSG, "'id' must be"},
        {"{\"id\":\"a\",\"version\":-3}", -EBADMSG, "'version' must be"},
        {"{\"id\":\"a\",\"version\":3,\"reported\":[1]}", -EBADMSG, "'reported' must be a map"},
        {"{\"id\":\"a\",\"version\":3,\"desired\":1}", -EBADMSG, "'desired' must be a map"},
        {"{\"id\":\"a\",\"version\":3,\"delta\":\"x\"}", -EBADMSG, "'delta' must be a map"},
        {"{\"id\":\"a\",\"version\":3,\"predicted\":true}", -EBADMSG, "'predicted' must be"},
        {"{\"id\":\"a\",\"version\":3,\"meta\":[]}", -EBADMSG, "'meta' must be a map"},
        {"{\"id\":\"a\",\"version\":3,\"meta\":{\"reported\":1}}", -EBADMSG,
         "'meta.reported' must be a map"},
        {"{\"id\":\"a\",\"version\":3,\"connected\":1}", -EBADMSG, "'connected' must be"},
        {"{\"id\":\"a\",\"version\":3,\"last_seen\":1.5}", -EBADMSG, "'last_seen' must be"},
        {"{\"id\":\"a\",\"version\":3,\"created\":\"x\"}", -EBADMSG, "'created' must be"},
        {"{\"id\":\"a\",\"version\":3,\"seq\":-1}", -EBADMSG, "'seq' must be"},
    };
    msgpack_zone z;
    struct twin_doc d;
    char err[TWIN_ERR_LEN];
    uint64_t ver;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_object o;
        msgpack_sbuffer sb;
        msgpack_packer pk;

        CHECK_INT(twin_input_decode(cases[i].json, strlen(cases[i].json), &DEF, &z, &o, err), 0);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, o);
        err[0] = '\0';
        if (twin_doc_decode(sb.data, sb.size, &z, &d, err) != cases[i].rc)
            FAIL("case %zu %s: expected %d (%s)", i, cases[i].json, cases[i].rc, err);
        CHECK_HAS(err, cases[i].reason);
        msgpack_sbuffer_destroy(&sb);
    }
    /* not a map, truncated, trailing, a bomb */
    {
        static const char *hex[] = {"93 01 02 03", "82 a2 69 64", "80 00",
                                    "81 a2 69 64 dd ff ff ff ff"};
        for (size_t i = 0; i < 4; i++) {
            unsigned char b[32];
            size_t n = unhex(hex[i], b);

            CHECK_INT(twin_doc_decode(b, n, &z, &d, err), -EBADMSG);
            CHECK_INT(twin_doc_version(b, n, &ver), -EBADMSG);
        }
    }
    /* version found past nested values, without decoding */
    {
        const char *j = "{\"x\":[1,{\"version\":9},[[\"version\"]]],\"y\":\"version\","
                        "\"version\":7,\"z\":1}";
        msgpack_object o;
        msgpack_sbuffer sb;
        msgpack_packer pk;

        CHECK_INT(twin_input_decode(j, strlen(j), &DEF, &z, &o, err), 0);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, o);
        CHECK_INT(twin_doc_version(sb.data, sb.size, &ver), 0);
        CHECK_INT(ver, 7);
        /* a version that is not an unsigned integer */
        msgpack_sbuffer_clear(&sb);
        CHECK_INT(twin_input_decode("{\"version\":\"7\"}", 15, &DEF, &z, &o, err), 0);
        msgpack_pack_object(&pk, o);
        CHECK_INT(twin_doc_version(sb.data, sb.size, &ver), -EBADMSG);
        msgpack_sbuffer_destroy(&sb);
    }
    msgpack_zone_destroy(&z);
}

/* ---------------------------------------------------------------------------------------------
 * Store
 * ------------------------------------------------------------------------------------------ */

static void check_sample(const struct twin_doc *d, void *ctx)
{
    msgpack_zone *z = ctx;
    struct twin_doc want = doc_sample(z);

    CHECK_INT(d->version, want.version);
    CHECK(twin_value_equal(&d->reported, &want.reported));
    CHECK(twin_value_equal(&d->predicted, &want.predicted));
    CHECK(d->connected && d->has_seq && d->seq == 17);
}

static int fail_fn(struct twin_txn *txn, void *ctx)
{
    const struct twin_doc *d = ctx;
    char err[TWIN_ERR_LEN];

    if (twin_put(txn, d, err))
        return -EIO;
    return -ECANCELED; /* put, then change its mind */
}

static void test_store_roundtrip(void)
{
    char dir[64], path[128], err[TWIN_ERR_LEN];
    msgpack_zone z;
    struct twin_doc d;
    struct put_ctx pc = {0};
    struct twin_store *s;
    struct twin_txn *t;
    const void *raw;
    size_t len;
    uint64_t ver;

    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/a/b/db", dir); /* created with its parents */
    s = store_open(path, 0, 0, 10, false);
    if (!s)
        goto out;
    d = doc_sample(&z);
    pc.doc = &d;
    CHECK_INT(twin_store_write(s, put_fn, &pc, err), 0);
    CHECK_INT(pc.attempts, 1);
    CHECK_INT(read_doc(s, "ecg-001", check_sample, &z), 0);
    CHECK_INT(read_doc(s, "nope", NULL, NULL), -ENOENT);

    /* a failing fn commits nothing and leaves err to fn */
    d.version = 43;
    strcpy(err, "untouched");
    CHECK_INT(twin_store_write(s, fail_fn, &d, err), -ECANCELED);
    CHECK_STR(err, "untouched");
    d.version = 42;
    CHECK_INT(read_doc(s, "ecg-001", check_sample, &z), 0);

    /* raw bytes and the version reader agree */
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_get_raw(t, "ecg-001", 7, &raw, &len, err), 0);
    CHECK_INT(twin_doc_version(raw, len, &ver), 0);
    CHECK_INT(ver, 42);
    CHECK_INT(twin_get_raw(t, "nope", 4, &raw, &len, err), -ENOENT);
    CHECK_HAS(err, "no twin 'nope'");
    CHECK_INT(twin_get_raw(t, "", 0, &raw, &len, err), -EINVAL);
    CHECK_INT(twin_put(t, &d, err), -EINVAL); /* read transaction */
    CHECK(twin_txn_zone(t) != NULL);
    twin_store_read_end(t);
    CHECK_INT(twin_store_sync(s, err), 0);
    twin_store_close(s);

    /* reopen: still there */
    s = store_open(path, 0, 0, 10, false);
    if (!s)
        goto out;
    CHECK_INT(read_doc(s, "ecg-001", check_sample, &z), 0);
    twin_store_close(s);

    /* read-only */
    s = store_open(path, 0, 0, 10, true);
    if (!s)
        goto out;
    CHECK_INT(read_doc(s, "ecg-001", check_sample, &z), 0);
    CHECK_INT(twin_store_write(s, put_fn, &pc, err), -EINVAL);
    twin_store_close(s);
out:
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

static void test_store_open_errors(void)
{
    char dir[64], path[128], err[TWIN_ERR_LEN];
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    struct twin_store *s = NULL;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {6, "schema"}, v = {4, "\x02\x00\x00\x00"};

    tmp_make(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/missing", dir);
    o.path = path;
    o.read_only = true;
    CHECK_INT(twin_store_open(&s, &o, err), -ENOENT);
    CHECK_HAS(err, "no store at");
    CHECK(s == NULL);
    o.path = NULL;
    CHECK_INT(twin_store_open(&s, &o, err), -EINVAL);

    /* a store of another schema version is refused */
    snprintf(path, sizeof path, "%s/db", dir);
    s = store_open(path, 0, 0, 10, false);
    twin_store_close(s);
    CHECK_INT(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    CHECK_INT(mdb_env_open(env, path, 0, 0660), 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_INT(mdb_dbi_open(txn, "info", 0, &dbi), 0);
    CHECK_INT(mdb_put(txn, dbi, &k, &v, 0), 0);
    CHECK_INT(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    o.path = path;
    o.read_only = false;
    CHECK_INT(twin_store_open(&s, &o, err), -EINVAL);
    CHECK_HAS(err, "schema version 2; this build reads version 1");
    o.read_only = true;
    CHECK_INT(twin_store_open(&s, &o, err), -EINVAL);
    tmp_remove(dir);
}

static void make_blob_doc(struct twin_doc *d, msgpack_object_kv *kv, const char *id, int i)
{
    static char blob[201];

    memset(blob, 'b', 200);
    memset(d, 0, sizeof *d);
    d->id = id;
    d->id_len = strlen(id);
    d->version = (uint64_t)i + 1;
    kv[0].key = str_obj("blob");
    kv[0].val = str_obj(blob);
    kv[1].key = str_obj("n");
    kv[1].val.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    kv[1].val.via.u64 = (uint64_t)i;
    d->reported.type = MSGPACK_OBJECT_MAP;
    d->reported.via.map.ptr = kv;
    d->reported.via.map.size = 2;
    d->desired.type = d->delta.type = d->predicted.type = d->meta_reported.type =
        d->meta_desired.type = MSGPACK_OBJECT_NIL;
}

static void check_blob(const struct twin_doc *d, void *ctx)
{
    int i = *(int *)ctx;
    const msgpack_object *n = twin_value_get(&d->reported, "n", 1);
    const msgpack_object *b = twin_value_get(&d->reported, "blob", 4);

    CHECK_INT(d->version, i + 1);
    CHECK(n && n->via.u64 == (uint64_t)i);
    CHECK(b && b->type == MSGPACK_OBJECT_STR && b->via.str.size == 200);
}

static void test_store_growth(void)
{
    char dir[64], id[32], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_doc d;
    msgpack_object_kv kv[2];
    int n = 3000, attempts = 0;
    struct twin_stats st;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 64 << 10, 64 << 20, 10, false);
    if (!s)
        goto out;
    CHECK_INT(twin_store_map_size(s), 64 << 10);
    check_data_file(dir, s);
    for (int i = 0; i < n; i++) {
        struct put_ctx pc = {.doc = &d};

        snprintf(id, sizeof id, "dev-%05d", i);
        make_blob_doc(&d, kv, id, i);
        if (twin_store_write(s, put_fn, &pc, err)) {
            FAIL("write %d: %s / %s", i, err, pc.err);
            break;
        }
        attempts += pc.attempts;
    }
    CHECK(attempts > n); /* fn ran again after growing */
    CHECK(twin_store_map_size(s) > (64u << 10));
    CHECK(twin_store_map_size(s) <= (64u << 20));
    check_data_file(dir, s); /* grown, and (writemap) reserved as far as the map goes */
    twin_store_close(s);

    s = store_open(dir, 64 << 10, 64 << 20, 10, false);
    if (!s)
        goto out;
    CHECK(twin_store_map_size(s) > (64u << 10)); /* a reopened store keeps its size */
    st = stats_of(s);
    CHECK_INT(st.twins, n);
    CHECK_INT(st.outbox, n);
    CHECK(st.used_bytes > (size_t)n * 200 && st.used_bytes <= st.map_size);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "dev-%05d", i);
        if (read_doc(s, id, check_blob, &i)) {
            FAIL("twin %s missing", id);
            break;
        }
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

static void test_store_full(void)
{
    char dir[64], id[32], err[TWIN_ERR_LEN] = "";
    struct twin_store *s;
    struct twin_doc d;
    msgpack_object_kv kv[2];
    int i, rc = 0;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 64 << 10, 256 << 10, 10, false);
    if (!s)
        goto out;
    for (i = 0; i < 100000; i++) {
        struct put_ctx pc = {.doc = &d};

        snprintf(id, sizeof id, "dev-%05d", i);
        make_blob_doc(&d, kv, id, i);
        rc = twin_store_write(s, put_fn, &pc, err);
        if (rc)
            break;
    }
    CHECK_INT(rc, -ENOSPC);
    CHECK_HAS(err, "store full: map at max_map_size 262144 bytes");
    CHECK_INT(twin_store_map_size(s), 256 << 10);
    CHECK(i > 100);
    /* what was committed is intact, the failed one is absent, reads still work */
    for (int k = 0; k < i; k++) {
        snprintf(id, sizeof id, "dev-%05d", k);
        if (read_doc(s, id, check_blob, &k)) {
            FAIL("twin %s missing", id);
            break;
        }
    }
    snprintf(id, sizeof id, "dev-%05d", i);
    CHECK_INT(read_doc(s, id, NULL, NULL), -ENOENT);
    CHECK_INT(stats_of(s).twins, i);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Read-only in another process, beside a writer that grows the map under it. */
static void test_store_readonly_concurrent(void)
{
    char dir[64], err[TWIN_ERR_LEN], id[32];
    int p2c[2], c2p[2], status;
    struct twin_store *s;
    struct twin_doc d;
    msgpack_object_kv kv[2];
    pid_t pid;
    char c;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 64 << 10, 64 << 20, 10, false);
    if (!s || pipe(p2c) || pipe(c2p))
        goto out;
    {
        struct put_ctx pc = {.doc = &d};

        make_blob_doc(&d, kv, "dev-00000", 0);
        CHECK_INT(twin_store_write(s, put_fn, &pc, err), 0);
    }
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        /* the child never touches the parent's environment */
        failures = 0; /* the exit status reports this child's checks only */
        struct twin_store *ro = store_open(dir, 0, 0, 0, true);
        int zero = 0, last = 1999;

        if (ro) {
            CHECK_INT(read_doc(ro, "dev-00000", check_blob, &zero), 0);
            CHECK_INT(read_doc(ro, "dev-01999", NULL, NULL), -ENOENT);
        }
        if (write(c2p[1], "1", 1) != 1 || read(p2c[0], &c, 1) != 1)
            failures++;
        if (ro) {
            /* the writer grew the map meanwhile: MDB_MAP_RESIZED is handled */
            CHECK_INT(read_doc(ro, "dev-01999", check_blob, &last), 0);
            CHECK(twin_store_map_size(ro) > (64u << 10));
            twin_store_close(ro);
        }
        _exit(failures ? 1 : 0);
    }
    if (pid < 0 || read(c2p[0], &c, 1) != 1) {
        FAIL("fork or pipe failed");
    } else {
        for (int i = 1; i < 2000; i++) {
            struct put_ctx pc = {.doc = &d};

            snprintf(id, sizeof id, "dev-%05d", i);
            make_blob_doc(&d, kv, id, i);
            if (twin_store_write(s, put_fn, &pc, err)) {
                FAIL("write %d: %s", i, err);
                break;
            }
        }
        CHECK(twin_store_map_size(s) > (64u << 10));
        check_data_file(dir, s);
        if (write(p2c[1], "2", 1) != 1)
            FAIL("pipe");
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    close(p2c[0]);
    close(p2c[1]);
    close(c2p[0]);
    close(c2p[1]);
out:
    twin_store_close(s);
    tmp_remove(dir);
}

/* The "_writemap" variants of the store tests. */
static void test_store_roundtrip_writemap(void)
{
    writemap_mode = true;
    test_store_roundtrip();
    writemap_mode = false;
}

static void test_store_growth_writemap(void)
{
    writemap_mode = true;
    test_store_growth();
    writemap_mode = false;
}

static void test_store_readonly_concurrent_writemap(void)
{
    writemap_mode = true;
    test_store_readonly_concurrent();
    writemap_mode = false;
}

/* A growth that LMDB cannot make (here ftruncate past RLIMIT_FSIZE, as a full or size-limited
 * filesystem would refuse it) fails cleanly, leaves the store refusing transactions instead of
 * touching the map LMDB unmapped, and loses nothing committed. In a child: the limit is
 * per process. */
static void growth_refused_child(const char *dir)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    struct rlimit rl = {4u << 20, 4u << 20};
    struct twin_store *s = NULL;
    struct twin_txn *t;
    struct twin_doc d;
    msgpack_object_kv kv[2];
    char id[32], err[TWIN_ERR_LEN] = "";
    int i, rc = 0;

    signal(SIGXFSZ, SIG_IGN); /* past the limit: EFBIG rather than death */
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) {
        FAIL("setrlimit: %s", strerror(errno));
        return;
    }
    o.path = dir;
    o.writemap = true;
    o.map_size = 1u << 20;
    o.max_map_size = 64u << 20;
    CHECK_INT(twin_store_open(&s, &o, err), 0);
    if (!s)
        return;
    for (i = 0; i < 100000; i++) {
        struct put_ctx pc = {.doc = &d};

        snprintf(id, sizeof id, "dev-%05d", i);
        make_blob_doc(&d, kv, id, i);
        rc = twin_store_write(s, put_fn, &pc, err);
        if (rc)
            break;
    }
    CHECK_INT(rc, -ENOSPC);
    CHECK_HAS(err, "resizing the map to 8388608 bytes: File too large; the store must be reopened");
    CHECK(i > 1000);
    {
        struct put_ctx pc = {.doc = &d};

        CHECK_INT(twin_store_write(s, put_fn, &pc, err), -EIO);
        CHECK_HAS(err, "unusable after a failed map resize");
    }
    CHECK_INT(twin_store_read_begin(s, &t, err), -EIO);
    CHECK_INT(twin_store_sync(s, err), -EIO);
    twin_store_close(s); /* abandons the environment */

    s = store_open(dir, 0, 0, 0, true);
    if (!s)
        return;
    CHECK_INT(stats_of(s).twins, i);
    for (int k = 0; k < i; k++) {
        snprintf(id, sizeof id, "dev-%05d", k);
        if (read_doc(s, id, check_blob, &k)) {
            FAIL("twin %s missing", id);
            break;
        }
    }
    twin_store_close(s);
}

/* MDB_WRITEMAP beyond the shared tests: with fsync per commit, across reopenings with and without
 * it, read-only openers, and a growth that cannot be made. */
static void test_store_writemap(void)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s = NULL;
    struct put_ctx pc = {0};
    struct twin_doc d;
    msgpack_zone z;
    int status;
    pid_t pid;

    CHECK(!o.writemap); /* off by default */
    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    o.path = dir;
    o.writemap = true;
    o.sync = TWIN_SYNC_COMMIT;
    CHECK_INT(twin_store_open(&s, &o, err), 0);
    if (!s)
        goto out;
    d = doc_sample(&z);
    pc.doc = &d;
    CHECK_INT(twin_store_write(s, put_fn, &pc, err), 0);
    CHECK_INT(twin_store_sync(s, err), 0);
    writemap_mode = true;
    check_data_file(dir, s);
    writemap_mode = false;
    twin_store_close(s);

    /* without writemap, then read-only asking for it (ignored): the same data */
    s = store_open(dir, 0, 0, 10, false);
    if (s) {
        CHECK_INT(read_doc(s, "ecg-001", check_sample, &z), 0);
        twin_store_close(s);
    }
    s = NULL;
    o.read_only = true;
    CHECK_INT(twin_store_open(&s, &o, err), 0);
    if (s) {
        CHECK_INT(read_doc(s, "ecg-001", check_sample, &z), 0);
        CHECK_INT(twin_store_sync(s, err), 0);
        twin_store_close(s);
    }
    tmp_remove(dir);

    tmp_make(dir, sizeof dir);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
        failures = 0; /* the exit status reports this child's checks only */
        growth_refused_child(dir);
        _exit(failures ? 1 : 0);
    }
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
out:
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

struct reader {
    struct twin_store *s;
    atomic_int *stop;
    int reads, errors;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;

    while (!atomic_load(r->stop)) {
        struct twin_txn *t;
        struct twin_doc d;
        struct twin_stats st;
        char err[TWIN_ERR_LEN];
        int rc;

        if (twin_store_read_begin(r->s, &t, err)) {
            r->errors++;
            continue;
        }
        rc = twin_get(t, "dev-00000", 9, &d, err);
        if (rc && rc != -ENOENT)
            r->errors++;
        if (twin_store_stats(t, &st, err))
            r->errors++;
        twin_store_read_end(t);
        r->reads++;
    }
    return NULL;
}

/* Readers in other threads while the writer grows the map. */
static void test_store_threads(void)
{
    char dir[64], id[32], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_doc d;
    msgpack_object_kv kv[2];
    atomic_int stop = 0;
    struct reader r[2];
    pthread_t th[2];

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 64 << 10, 64 << 20, 10, false);
    if (!s)
        goto out;
    for (int i = 0; i < 2; i++) {
        r[i] = (struct reader){.s = s, .stop = &stop};
        pthread_create(&th[i], NULL, reader_main, &r[i]);
    }
    for (int i = 0; i < 1500; i++) {
        struct put_ctx pc = {.doc = &d};

        snprintf(id, sizeof id, "dev-%05d", i);
        make_blob_doc(&d, kv, id, i);
        if (twin_store_write(s, put_fn, &pc, err)) {
            FAIL("write %d: %s", i, err);
            break;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(r[i].errors, 0);
        CHECK(r[i].reads > 0);
    }
    CHECK(twin_store_map_size(s) > (64u << 10));
    CHECK_INT(stats_of(s).twins, 1500);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* ---------------------------------------------------------------------------------------------
 * Telemetry
 * ------------------------------------------------------------------------------------------ */

struct points {
    int64_t ts[16];
    double v[16];
    int n, stop_after;
};

static int collect_point(void *ctx, int64_t ts, double v)
{
    struct points *p = ctx;

    if (p->n < 16) {
        p->ts[p->n] = ts;
        p->v[p->n] = v;
    }
    p->n++;
    if (p->stop_after && p->n == p->stop_after)
        return 42;
    return 0;
}

static struct points history_of(struct twin_store *s, const char *id, const char *path,
                                int64_t since)
{
    struct points p = {.n = 0};
    struct twin_txn *t;
    char err[TWIN_ERR_LEN];

    if (twin_store_read_begin(s, &t, err)) {
        FAIL("read_begin: %s", err);
        return p;
    }
    if (twin_history_read(t, id, strlen(id), path, strlen(path), since, collect_point, &p, err))
        FAIL("history_read: %s", err);
    twin_store_read_end(t);
    return p;
}

struct expect_doc {
    const char *reported, *meta;
    uint64_t version, seq;
    bool has_seq;
    int64_t last_seen, created;
};

static void check_expect(const struct twin_doc *d, void *ctx)
{
    const struct expect_doc *e = ctx;

    CHECK_STR(TJ(&d->reported), e->reported);
    CHECK_STR(TJ(&d->meta_reported), e->meta);
    CHECK_INT(d->version, e->version);
    CHECK_INT(d->has_seq, e->has_seq);
    CHECK_INT(d->seq, e->seq);
    CHECK_INT(d->last_seen, e->last_seen);
    CHECK_INT(d->created, e->created);
    CHECK(!d->connected);
    CHECK(d->desired.type == MSGPACK_OBJECT_MAP && d->desired.via.map.size == 0);
    CHECK(d->delta.type == MSGPACK_OBJECT_NIL);
}

struct outbox_seen {
    char ids[8][32];
    uint64_t versions[8];
    int n;
};

static int collect_outbox(void *ctx, const char *id, size_t len, uint64_t version)
{
    struct outbox_seen *o = ctx;

    if (o->n < 8) {
        snprintf(o->ids[o->n], sizeof o->ids[0], "%.*s", (int)len, id);
        o->versions[o->n] = version;
    }
    o->n++;
    return 0;
}

static struct outbox_seen outbox_of(struct twin_store *s)
{
    struct outbox_seen o = {.n = 0};
    struct twin_txn *t;
    char err[TWIN_ERR_LEN];

    if (twin_store_read_begin(s, &t, err))
        return o;
    if (twin_outbox_list(t, collect_outbox, &o, err))
        FAIL("outbox_list: %s", err);
    twin_store_read_end(t);
    return o;
}

static void test_telemetry_apply(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;
    struct expect_doc e;
    struct points p;
    struct outbox_seen ob;
    struct twin_stats st;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;

    /* create */
    CHECK_INT(apply(s, "ecg-1",
                    "{\"seq\":1,\"ts\":1000,\"hr\":72,\"vitals\":{\"spo2\":98.5,\"ok\":true},"
                    "\"name\":\"x\",\"gone\":null}",
                    5000, &res, err),
              0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    CHECK_INT(res.version, 1);
    CHECK(res.created);
    e = (struct expect_doc){"{\"hr\":72,\"vitals\":{\"spo2\":98.5,\"ok\":true},\"name\":\"x\"}",
                            "{\"hr\":1000,\"vitals\":{\"spo2\":1000,\"ok\":1000},\"name\":1000}",
                            1,
                            1,
                            true,
                            5000,
                            5000};
    CHECK_INT(read_doc(s, "ecg-1", check_expect, &e), 0);
    p = history_of(s, "ecg-1", "hr", 0);
    CHECK(p.n == 1 && p.ts[0] == 1000 && p.v[0] == 72);
    p = history_of(s, "ecg-1", "vitals.spo2", 0);
    CHECK(p.n == 1 && p.ts[0] == 1000 && p.v[0] == 98.5);
    CHECK_INT(history_of(s, "ecg-1", "name", 0).n, 0);
    CHECK_INT(history_of(s, "ecg-1", "vitals.ok", 0).n, 0);
    ob = outbox_of(s);
    CHECK(ob.n == 1 && !strcmp(ob.ids[0], "ecg-1") && ob.versions[0] == 1);

    /* merge: no ts -> hub time; nil deletes; untouched leaves keep their meta */
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":2,\"hr\":80,\"vitals\":{\"ok\":null}}", 6000, &res, err),
              0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    CHECK_INT(res.version, 2);
    CHECK(!res.created);
    e = (struct expect_doc){"{\"hr\":80,\"vitals\":{\"spo2\":98.5},\"name\":\"x\"}",
                            "{\"hr\":6000,\"vitals\":{\"spo2\":1000},\"name\":1000}",
                            2,
                            2,
                            true,
                            6000,
                            5000};
    CHECK_INT(read_doc(s, "ecg-1", check_expect, &e), 0);
    p = history_of(s, "ecg-1", "hr", 0);
    CHECK(p.n == 2 && p.ts[1] == 6000 && p.v[1] == 80);

    /* duplicate and stale change nothing, not even last_seen */
    {
        size_t l1, l2;
        void *before = raw_copy(s, "ecg-1", &l1), *after;

        st = stats_of(s);
        CHECK_INT(apply(s, "ecg-1", "{\"seq\":2,\"hr\":1}", 7000, &res, err), 0);
        CHECK_INT(res.outcome, TWIN_DUPLICATE);
        CHECK_INT(res.version, 2);
        CHECK_INT(apply(s, "ecg-1", "{\"seq\":1,\"hr\":1}", 7000, &res, err), 0);
        CHECK_INT(res.outcome, TWIN_STALE);
        CHECK_INT(res.version, 2);
        after = raw_copy(s, "ecg-1", &l2);
        CHECK(before && after && l1 == l2 && !memcmp(before, after, l1));
        CHECK_INT(stats_of(s).history_points, st.history_points);
        free(before);
        free(after);
    }

    /* no seq: applied, seq kept; versions bump by one */
    for (int i = 0; i < 3; i++) {
        CHECK_INT(apply(s, "ecg-1", "{\"spo2\":97}", 8000 + i, &res, err), 0);
        CHECK_INT(res.version, 3 + i);
    }
    e = (struct expect_doc){"{\"hr\":80,\"vitals\":{\"spo2\":98.5},\"name\":\"x\",\"spo2\":97}",
                            "{\"hr\":6000,\"vitals\":{\"spo2\":1000},\"name\":1000,\"spo2\":8002}",
                            5,
                            2,
                            true,
                            8002,
                            5000};
    CHECK_INT(read_doc(s, "ecg-1", check_expect, &e), 0);
    ob = outbox_of(s);
    CHECK(ob.n == 1 && ob.versions[0] == 5);

    /* seq above the last applied one after a gap */
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":10}", 9000, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    CHECK_INT(res.version, 6);

    /* a second twin, without seq */
    CHECK_INT(apply(s, "ecg-2", "{\"a\":{\"b\":{\"c\":-1.5}}}", 100, &res, err), 0);
    CHECK(res.created && res.version == 1);
    e = (struct expect_doc){
        "{\"a\":{\"b\":{\"c\":-1.5}}}", "{\"a\":{\"b\":{\"c\":100}}}", 1, 0, false, 100, 100};
    CHECK_INT(read_doc(s, "ecg-2", check_expect, &e), 0);
    p = history_of(s, "ecg-2", "a.b.c", 0);
    CHECK(p.n == 1 && p.v[0] == -1.5);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

static void test_telemetry_bad(void)
{
    static const struct {
        const char *in; /* JSON, or msgpack hex when it starts with "hex:" */
        const char *reason;
    } cases[] = {
        {"hex:92 01 02", "telemetry must be a map, got array"},
        {"hex:a1 61", "telemetry must be a map, got str"},
        {"{\"ok\":1,\"a.b\":1}", "bad key \"a.b\" in reported: contains '.'"},
        {"{\"v\":{\"x.y\":1}}", "bad key \"x.y\" in reported.v: contains '.'"},
        {"{\"\":1}", "bad key \"\" in reported: empty"},
        {"{\"k0123456789012345678901234567890123456789012345678901234567890123\":1}",
         "65 bytes long, the limit is 64"},
        {"{\"a\\u0001\":1}", "bad key \"a\\x01\" in reported: contains control byte 0x01"},
        {"{\"v\":{\"w\":{\"a\\u007f\":1}}}", "in reported.v.w: contains control byte 0x7f"},
        {"{\"arr\":[1,{\"a.b\":1}]}", "in reported.arr[1]: contains '.'"},
        {"{\"seq\":-1,\"a\":1}", "seq must be a non-negative integer, got -1"},
        {"{\"seq\":\"1\"}", "seq must be a non-negative integer, got str"},
        {"{\"seq\":1.5}", "seq must be a non-negative integer, got float"},
        {"{\"ts\":-5}", "ts must be a non-negative integer, got -5"},
        {"{\"ts\":true}", "ts must be a non-negative integer, got bool"},
        {"{\"ts\":18446744073709551615}", "ts 18446744073709551615 is out of range"},
        {"{\"ts\":400021,\"hr\":null}",
         "ts 400021 is 400001 ms ahead of the hub clock; limits.max_clock_skew is 300000 ms"},
        {"hex:81 01 02", "bad key in reported: keys must be strings, got int"},
        {"hex:82 a1 61 01 a1 78 d4 05 aa", "unsupported msgpack ext type at reported.x"},
        {"hex:81 a1 61 91 c7 01 05 aa", "unsupported msgpack ext type at reported.a[0]"},
    };
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;
    struct twin_stats before, after;
    msgpack_zone z;
    size_t l1, l2;
    void *raw1, *raw2;

    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    CHECK_INT(apply(s, "d", "{\"seq\":5,\"hr\":1}", 10, &res, err), 0);
    before = stats_of(s);
    raw1 = raw_copy(s, "d", &l1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct tele_ctx c = {.id = "d", .n = 1, .now = 20};
        char werr[TWIN_ERR_LEN];
        unsigned char b[64]; /* the decoded object points into it */
        int rc;

        if (!strncmp(cases[i].in, "hex:", 4)) {
            size_t n = unhex(cases[i].in + 4, b);

            rc = twin_input_decode(b, n, &DEF, &z, &c.tele[0], err);
        } else {
            rc = twin_input_decode(cases[i].in, strlen(cases[i].in), &DEF, &z, &c.tele[0], err);
        }
        if (rc) {
            FAIL("case %zu: bad test input: %s", i, err);
            continue;
        }
        rc = twin_store_write(s, tele_fn, &c, werr);
        if (rc != -EINVAL)
            FAIL("case %zu %s: rc %d (%s)", i, cases[i].in, rc, c.err);
        CHECK_HAS(c.err, cases[i].reason);
        /* validation precedes every write: a caller that ignores the error and commits
         * the transaction still commits nothing of the message, in an existing twin or not */
        c.ignore = true;
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
        CHECK_INT(c.rcs[0], -EINVAL);
        c.id = "fresh";
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
        CHECK_INT(c.rcs[0], -EINVAL);
    }
    after = stats_of(s);
    raw2 = raw_copy(s, "d", &l2);
    CHECK(raw1 && raw2 && l1 == l2 && !memcmp(raw1, raw2, l1));
    CHECK_INT(after.twins, before.twins);
    CHECK_INT(after.history_points, before.history_points);
    CHECK_INT(after.outbox, before.outbox);
    CHECK_INT(after.last_txn, before.last_txn);
    CHECK_INT(read_doc(s, "fresh", NULL, NULL), -ENOENT);
    free(raw1);
    free(raw2);

    /* too deep for the stored document: the telemetry map is depth 1, 31 is one too many */
    {
        unsigned char b[128];
        size_t n = 0;
        struct twin_limits deep = {65536, 32, 1024};
        struct tele_ctx c = {.id = "d", .n = 1, .now = 20};
        char werr[TWIN_ERR_LEN];

        for (int i = 0; i < 31; i++) {
            b[n++] = 0x81;
            b[n++] = 0xa1;
            b[n++] = 'a';
        }
        b[n++] = 0x01;
        CHECK_INT(twin_input_decode(b, n, &deep, &z, &c.tele[0], err), 0);
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), -EINVAL);
        CHECK_HAS(c.err, "nested deeper than 30 levels");
        n -= 4; /* 30 levels: accepted, and the document reads back */
        b[n++] = 0x01;
        CHECK_INT(twin_input_decode(b, n, &deep, &z, &c.tele[0], err), 0);
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
        CHECK_INT(read_doc(s, "d", NULL, NULL), 0);
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

/* Reads the size out of "twin ID would grow to N bytes, above limits.max_twin_size MAX". */
static size_t grown_to(const char *err, const char *id, size_t max)
{
    char want[TWIN_ERR_LEN];
    const char *p;
    size_t n = 0;

    snprintf(want, sizeof want, "twin %s would grow to ", id);
    p = strstr(err, want);
    if (!p || sscanf(p + strlen(want), "%zu", &n) != 1) {
        FAIL("no size in \"%s\"", err);
        return 0;
    }
    snprintf(want, sizeof want, " bytes, above limits.max_twin_size %zu", max);
    CHECK_HAS(err, want);
    return n;
}

/* max_doc_bytes: a device that sends a new key in every message is stopped at the bound, with
 * nothing of the refused message written (not its history, not its seq); twins at or above the
 * bound may still change without growing; the bound can change at run time. */
static void test_telemetry_doc_limit(void)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    char dir[64], err[TWIN_ERR_LEN], werr[TWIN_ERR_LEN], json[128], key[8];
    struct twin_store *s = NULL;
    struct twin_apply_result res;
    struct twin_stats before, after;
    msgpack_zone z;
    void *raw1 = NULL, *raw2 = NULL;
    size_t l1 = 0, l2 = 0, size;
    int i, rc = 0;

    CHECK_INT(o.max_doc_bytes, 256u << 10); /* the default */
    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    o.path = dir;
    o.max_doc_bytes = 1024;
    o.history_max_points = 100;
    CHECK_INT(twin_store_open(&s, &o, err), 0);
    if (!s)
        goto out;
    /* now_ms stays in 1000..65535 and versions below 128 so that rewriting a key does not
     * change the document's size */
    for (i = 0; i < 100; i++) {
        snprintf(json, sizeof json, "{\"seq\":%d,\"k%02d\":%d}", i + 1, i, i);
        rc = apply(s, "ecg-0001", json, 1000 + i, &res, err);
        if (rc)
            break;
    }
    CHECK_INT(rc, -E2BIG);
    CHECK(i > 5);
    size = grown_to(err, "ecg-0001", 1024);
    CHECK(size > 1024 && size < 1024 + 64);

    /* nothing of it was written, even when the caller commits anyway */
    before = stats_of(s);
    raw1 = raw_copy(s, "ecg-0001", &l1);
    CHECK(l1 <= 1024);
    {
        struct tele_ctx c = {.id = "ecg-0001", .n = 1, .now = 1000 + i, .ignore = true};

        CHECK_INT(twin_input_decode(json, strlen(json), &DEF, &z, &c.tele[0], err), 0);
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
        CHECK_INT(c.rcs[0], -E2BIG);
        CHECK_INT(grown_to(c.err, "ecg-0001", 1024), size);
    }
    after = stats_of(s);
    raw2 = raw_copy(s, "ecg-0001", &l2);
    CHECK(raw1 && raw2 && l1 == l2 && !memcmp(raw1, raw2, l1));
    CHECK_INT(after.history_points, before.history_points);
    CHECK_INT(after.last_txn, before.last_txn);
    snprintf(key, sizeof key, "k%02d", i);
    CHECK_INT(history_of(s, "ecg-0001", key, 0).n, 0);
    CHECK_INT(history_of(s, "ecg-0001", "k00", 0).n, 1);

    /* rewriting a key without growing is accepted, with the refused message's seq: it was not
     * taken */
    snprintf(json, sizeof json, "{\"seq\":%d,\"k00\":7}", i + 1);
    CHECK_INT(apply(s, "ecg-0001", json, 1000 + i, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    CHECK_INT(history_of(s, "ecg-0001", "k00", 0).n, 2);

    /* a lowered bound: the twin above it may change without growing, not grow */
    twin_store_set_max_doc(s, 512);
    snprintf(json, sizeof json, "{\"seq\":%d,\"k01\":8}", i + 2);
    CHECK_INT(apply(s, "ecg-0001", json, 1000 + i, &res, err), 0);
    snprintf(json, sizeof json, "{\"seq\":%d,\"k01\":8000}", i + 3);
    CHECK_INT(apply(s, "ecg-0001", json, 1000 + i, &res, err), -E2BIG);
    CHECK(grown_to(err, "ecg-0001", 512) > 512);
    /* deleting keys shrinks it */
    snprintf(json, sizeof json, "{\"seq\":%d,\"k01\":null,\"k02\":null}", i + 3);
    CHECK_INT(apply(s, "ecg-0001", json, 1000 + i, &res, err), 0);

    /* no bound */
    twin_store_set_max_doc(s, 0);
    snprintf(json, sizeof json, "{\"seq\":%d,\"k99\":1,\"k98\":2,\"k97\":3}", i + 4);
    CHECK_INT(apply(s, "ecg-0001", json, 1000 + i, &res, err), 0);

    /* a new twin over the bound is not created */
    twin_store_set_max_doc(s, 64);
    CHECK_INT(apply(s, "fresh", "{\"long\":\"0123456789012345678901234567890123456789\"}", 1000,
                    &res, err),
              -E2BIG);
    CHECK(grown_to(err, "fresh", 64) > 64);
    CHECK_INT(read_doc(s, "fresh", NULL, NULL), -ENOENT);

    /* the bound is twin_put's: any writer meets it */
    {
        struct twin_doc d;
        msgpack_object_kv kv[2];
        struct put_ctx pc = {.doc = &d};

        make_blob_doc(&d, kv, "blob", 0);
        CHECK_INT(twin_store_write(s, put_fn, &pc, err), -E2BIG);
        CHECK(grown_to(pc.err, "blob", 64) > 200);
        twin_store_set_max_doc(s, 4096);
        CHECK_INT(twin_store_write(s, put_fn, &pc, err), 0);
    }
    twin_store_close(s);
out:
    free(raw1);
    free(raw2);
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

/* Several messages in one transaction, long paths, non-finite numbers. */
static void test_telemetry_more(void)
{
    char dir[64], err[TWIN_ERR_LEN], werr[TWIN_ERR_LEN], json[1024];
    struct twin_store *s;
    struct twin_apply_result res;
    msgpack_zone z;
    struct tele_ctx c = {.id = "multi", .n = 3, .now = 50};
    struct expect_doc e;
    size_t n = 0;

    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    CHECK_INT(twin_input_decode("{\"seq\":1,\"a\":1}", 15, &DEF, &z, &c.tele[0], err), 0);
    CHECK_INT(twin_input_decode("{\"seq\":2,\"b\":2}", 15, &DEF, &z, &c.tele[1], err), 0);
    CHECK_INT(twin_input_decode("{\"seq\":2,\"c\":3}", 15, &DEF, &z, &c.tele[2], err), 0);
    CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
    CHECK(c.res[0].outcome == TWIN_APPLIED && c.res[0].version == 1 && c.res[0].created);
    CHECK(c.res[1].outcome == TWIN_APPLIED && c.res[1].version == 2 && !c.res[1].created);
    CHECK(c.res[2].outcome == TWIN_DUPLICATE && c.res[2].version == 2);
    e = (struct expect_doc){"{\"a\":1,\"b\":2}", "{\"a\":50,\"b\":50}", 2, 2, true, 50, 50};
    CHECK_INT(read_doc(s, "multi", check_expect, &e), 0);

    /* a path over TWIN_PATH_MAX is stored but not historized */
    n += (size_t)sprintf(json + n, "{");
    for (int i = 0; i < 5; i++)
        n += (size_t)sprintf(json + n,
                             "\"k%d_567890123456789012345678901234567890123456789012345678\":{", i);
    n += (size_t)sprintf(json + n, "\"x\":1");
    for (int i = 0; i < 5; i++)
        n += (size_t)sprintf(json + n, "}");
    n += (size_t)sprintf(json + n, ",\"short\":2}");
    CHECK_INT(apply(s, "long", json, 60, &res, err), 0);
    CHECK_INT(stats_of(s).history_series, 2 + 1); /* multi.a, multi.b, long.short */

    /* NaN and infinities are stored, not historized */
    {
        unsigned char b[64];
        size_t k = unhex("82 a3 6e 61 6e cb 7f f8 00 00 00 00 00 00 a3 69 6e 66 ca 7f 80 00 00", b);
        struct tele_ctx c2 = {.id = "nan", .n = 1, .now = 70};

        CHECK_INT(twin_input_decode(b, k, &DEF, &z, &c2.tele[0], err), 0);
        CHECK_INT(twin_store_write(s, tele_fn, &c2, werr), 0);
        CHECK_INT(history_of(s, "nan", "nan", 0).n, 0);
        CHECK_INT(history_of(s, "nan", "inf", 0).n, 0);
    }

    /* a wide twin outgrows the write transaction's first zone chunk, twice over */
    {
        char *wide = malloc(40000);
        size_t k = 0;
        struct twin_stats st;

        k += (size_t)sprintf(wide + k, "{");
        for (int i = 0; i < 1000; i++)
            k += (size_t)sprintf(wide + k, "%s\"key%04d\":%d", i ? "," : "", i, i);
        sprintf(wide + k, "}");
        for (int round = 1; round <= 3; round++) {
            CHECK_INT(apply(s, "wide", wide, 80 + round, &res, err), 0);
            CHECK_INT(res.version, round);
        }
        free(wide);
        st = stats_of(s);
        CHECK_INT(st.twins, 4);
        CHECK_INT(history_of(s, "wide", "key0999", 0).n, 3);
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

/* Applies msgpack given as hex (for what JSON cannot say, such as a key twice in one map). */
static int apply_hex(struct twin_store *s, const char *id, const char *hex, int64_t now, char *err)
{
    unsigned char b[256];
    size_t n = unhex(hex, b);
    msgpack_zone z;
    struct tele_ctx c = {.id = id, .n = 1, .now = now};
    char werr[TWIN_ERR_LEN] = "";
    int rc;

    msgpack_zone_init(&z, 4096);
    rc = twin_input_decode(b, n, &BIG, &z, &c.tele[0], err);
    if (rc) {
        FAIL("bad test msgpack %s: %s", hex, err);
    } else {
        rc = twin_store_write(s, tele_fn, &c, werr);
        strcpy(err, c.err[0] ? c.err : werr);
    }
    msgpack_zone_destroy(&z);
    return rc;
}

/* A history series lives as long as its leaf holds a number: deleting the key or replacing the
 * value by something else (a string, a map, an array; a map by a scalar) deletes the series in
 * the same transaction; a number replaced by a number keeps it. */
static void test_history_gone(void)
{
    static const struct {
        const char *msg;    /* applied in turn to twin "d" */
        const char *series; /* every series of "d" afterwards, as path=points */
    } steps[] = {
        {"{\"a\":1,\"m\":{\"x\":1,\"y\":{\"z\":2},\"s\":\"t\"},\"mx\":1,\"n\":3,\"keep\":4,"
         "\"arr\":[1,2],\"q\":7}",
         "a=1 keep=1 m.x=1 m.y.z=1 mx=1 n=1 q=1"},
        /* the value changes, the type too (int -> float, uint -> negative): series go on */
        {"{\"a\":2,\"keep\":5.5,\"q\":-1,\"m\":{\"x\":9}}",
         "a=2 keep=2 m.x=2 m.y.z=1 mx=1 n=1 q=2"},
        /* nil deletes the key and its series; nil on a missing key changes nothing */
        {"{\"a\":null,\"nothere\":null}", "keep=2 m.x=2 m.y.z=1 mx=1 n=1 q=2"},
        /* a nested nil */
        {"{\"m\":{\"y\":{\"z\":null}}}", "keep=2 m.x=2 mx=1 n=1 q=2"},
        /* a map replaced by a scalar takes every number under it ("mx" is another path) */
        {"{\"m\":\"gone\"}", "keep=2 mx=1 n=1 q=2"},
        /* a number replaced by a string, by a map, by an array */
        {"{\"n\":\"str\"}", "keep=2 mx=1 q=2"},
        {"{\"keep\":{\"v\":1}}", "keep.v=1 mx=1 q=2"},
        {"{\"q\":[1,2]}", "keep.v=1 mx=1"},
        /* a string back to a number starts a new series */
        {"{\"n\":5}", "keep.v=1 mx=1 n=1"},
        /* a map deleted whole */
        {"{\"keep\":null}", "mx=1 n=1"},
        /* bool, nil-to-number and back */
        {"{\"mx\":true,\"n\":null}", ""},
        {"{\"n\":1}", "n=1"},
    };
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    CHECK_INT(apply(s, "e", "{\"a\":1,\"m\":{\"x\":1}}", 10, &res, err), 0); /* a neighbour */
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        static const char *paths[] = {"a", "keep", "keep.v", "m.x", "m.y.z", "mx", "n", "q"};
        char got[256] = "";
        size_t n = 0;
        int series = 0;

        if (apply(s, "d", steps[i].msg, 100 + (int64_t)i, &res, err) != 0) {
            FAIL("step %zu %s: %s", i, steps[i].msg, err);
            continue;
        }
        for (size_t j = 0; j < sizeof paths / sizeof paths[0]; j++) {
            int pts = history_of(s, "d", paths[j], 0).n;

            if (pts) {
                n += (size_t)snprintf(got + n, sizeof got - n, "%s%s=%d", n ? " " : "", paths[j],
                                      pts);
                series++;
            }
        }
        if (strcmp(got, steps[i].series) != 0)
            FAIL("step %zu %s: series\n    %s\n  expected\n    %s", i, steps[i].msg, got,
                 steps[i].series);
        /* no series outside the paths looked at; the neighbour's two are untouched */
        CHECK_INT(stats_of(s).history_series, series + 2);
    }
    CHECK_INT(history_of(s, "e", "a", 0).n, 1);
    CHECK_INT(history_of(s, "e", "m.x", 0).n, 1);

    /* a key twice in one map: the merge's order decides, and history follows reported */
    CHECK_INT(apply_hex(s, "dup", "82 a1 6b 01 a1 6b c0", 200, err), 0); /* {k:1, k:nil} */
    CHECK_INT(history_of(s, "dup", "k", 0).n, 0);
    CHECK_INT(apply_hex(s, "dup", "82 a1 6b c0 a1 6b 02", 201, err), 0); /* {k:nil, k:2} */
    CHECK_INT(history_of(s, "dup", "k", 0).n, 1);
    /* {m:{x:1}, m:5}: m.x is written, then replaced with its map */
    CHECK_INT(apply_hex(s, "dup", "82 a1 6d 81 a1 78 01 a1 6d 05", 202, err), 0);
    CHECK_INT(history_of(s, "dup", "m.x", 0).n, 0);
    CHECK_INT(history_of(s, "dup", "m", 0).n, 1);
    CHECK_INT(stats_of(s).history_series, 1 + 2 + 2); /* d.n, e's two, dup.k and dup.m */

    /* a refused message deletes nothing: here over the size bound */
    twin_store_set_max_doc(s, 200);
    CHECK_INT(apply(s, "dup",
                    "{\"k\":null,\"m\":null,\"pad\":\"0123456789012345678901234567890123"
                    "456789012345678901234567890123456789012345678901234567890123456789"
                    "0123456789012345678901234567890123456789\"}",
                    203, &res, err),
              -E2BIG);
    CHECK_INT(history_of(s, "dup", "k", 0).n, 1);
    CHECK_INT(history_of(s, "dup", "m", 0).n, 1);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* The review's case: a device that deletes its last key and adds a new one in every message
 * keeps a small twin, and must keep a small history too. */
static void test_history_bounded(void)
{
    char dir[64], err[TWIN_ERR_LEN], json[128];
    struct twin_store *s;
    struct twin_apply_result res;
    struct twin_stats st;
    int rc = 0;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    for (int i = 1; i <= 500 && !rc; i++) {
        if (i % 2)
            snprintf(json, sizeof json, "{\"seq\":%d,\"k%d\":null,\"k%d\":1}", i, i - 1, i);
        else /* the same with a map under the key */
            snprintf(json, sizeof json, "{\"seq\":%d,\"k%d\":null,\"k%d\":{\"v\":1,\"w\":2}}", i,
                     i - 1, i);
        rc = apply(s, "churn", json, 1000 + i, &res, err);
    }
    CHECK_INT(rc, 0);
    st = stats_of(s);
    CHECK_INT(st.history_series, 2); /* k500.v, k500.w */
    CHECK_INT(st.history_points, 2);
    CHECK_INT(history_of(s, "churn", "k500.w", 0).n, 1);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* max_twins: telemetry that would create a twin beyond it is refused with nothing written;
 * existing twins still update; the bound can change at run time, and 0 lifts it. */
static void test_telemetry_max_twins(void)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    char dir[64], err[TWIN_ERR_LEN], werr[TWIN_ERR_LEN];
    struct twin_store *s = NULL;
    struct twin_apply_result res;
    struct twin_stats before, after;
    msgpack_zone z;

    CHECK_INT(o.max_twins, 100000); /* the defaults */
    CHECK_INT(o.max_clock_skew_ms, 300000);
    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    o.path = dir;
    o.max_twins = 3;
    CHECK_INT(twin_store_open(&s, &o, err), 0);
    if (!s)
        goto out;
    CHECK_INT(apply(s, "a", "{\"x\":1}", 10, &res, err), 0);
    CHECK_INT(apply(s, "b", "{\"x\":1}", 10, &res, err), 0);
    CHECK_INT(apply(s, "c", "{\"x\":1}", 10, &res, err), 0);
    before = stats_of(s);
    CHECK_INT(apply(s, "d", "{\"x\":1}", 11, &res, err), -E2BIG);
    CHECK_STR(err, "store holds 3 twins, limits.max_twins 3; telemetry for new twin 'd' refused");
    /* nothing written, even when the caller commits anyway */
    {
        struct tele_ctx c = {.id = "d", .n = 1, .now = 12, .ignore = true};

        CHECK_INT(twin_input_decode("{\"x\":2}", 7, &DEF, &z, &c.tele[0], err), 0);
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
        CHECK_INT(c.rcs[0], -E2BIG);
    }
    after = stats_of(s);
    CHECK_INT(read_doc(s, "d", NULL, NULL), -ENOENT);
    CHECK_INT(history_of(s, "d", "x", 0).n, 0);
    CHECK_INT(after.twins, 3);
    CHECK_INT(after.history_points, before.history_points);
    CHECK_INT(after.outbox, before.outbox);
    CHECK_INT(after.last_txn, before.last_txn);

    /* existing twins still update */
    CHECK_INT(apply(s, "a", "{\"x\":2}", 13, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.version == 2 && !res.created);

    /* raised at run time */
    twin_store_set_limits(s, 4, 300000);
    CHECK_INT(apply(s, "d", "{\"x\":1}", 14, &res, err), 0);
    CHECK(res.created);
    CHECK_INT(apply(s, "e", "{\"x\":1}", 15, &res, err), -E2BIG);
    CHECK_HAS(err, "store holds 4 twins, limits.max_twins 4; telemetry for new twin 'e'");
    /* 0: no limit */
    twin_store_set_limits(s, 0, 300000);
    CHECK_INT(apply(s, "e", "{\"x\":1}", 16, &res, err), 0);
    /* lowered below the count: twins stay and update, none is added */
    twin_store_set_limits(s, 2, 300000);
    CHECK_INT(apply(s, "f", "{\"x\":1}", 17, &res, err), -E2BIG);
    CHECK_STR(err, "store holds 5 twins, limits.max_twins 2; telemetry for new twin 'f' refused");
    CHECK_INT(apply(s, "e", "{\"x\":2}", 18, &res, err), 0);
    CHECK_INT(stats_of(s).twins, 5);
    twin_store_close(s);
out:
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

/* max_clock_skew_ms: a ts too far ahead of the hub clock is refused with nothing written; any
 * ts behind it is taken (devices flush buffered readings); the bound can change at run time. */
static void test_telemetry_clock_skew(void)
{
    const int64_t now = 1795286400000; /* 2026-11-22 */
    char dir[64], err[TWIN_ERR_LEN], werr[TWIN_ERR_LEN], json[128];
    struct twin_store *s;
    struct twin_apply_result res;
    struct twin_stats before, after;
    struct points p;
    msgpack_zone z;
    size_t l1, l2;
    void *raw1 = NULL, *raw2 = NULL;

    msgpack_zone_init(&z, 4096);
    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false); /* the default bound, 300000 ms */
    if (!s)
        goto out;

    /* a new twin is not created */
    snprintf(json, sizeof json, "{\"seq\":1,\"ts\":%" PRId64 ",\"hr\":70}", now + 3600000);
    CHECK_INT(apply(s, "clk", json, now, &res, err), -EINVAL);
    CHECK_STR(err, "ts 1795290000000 is 3600000 ms ahead of the hub clock; "
                   "limits.max_clock_skew is 300000 ms");
    CHECK_INT(read_doc(s, "clk", NULL, NULL), -ENOENT);

    /* exactly at the bound is accepted, one ms over is not */
    snprintf(json, sizeof json, "{\"seq\":1,\"ts\":%" PRId64 ",\"hr\":70}", now + 300000);
    CHECK_INT(apply(s, "clk", json, now, &res, err), 0);
    snprintf(json, sizeof json, "{\"seq\":2,\"ts\":%" PRId64 ",\"hr\":71,\"x\":null}",
             now + 300001);
    CHECK_INT(apply(s, "clk", json, now, &res, err), -EINVAL);
    CHECK_HAS(err, "is 300001 ms ahead of the hub clock");

    /* nothing of it written to an existing twin, even when the caller commits anyway: not the
     * seq, not last_seen, not history */
    before = stats_of(s);
    raw1 = raw_copy(s, "clk", &l1);
    {
        struct tele_ctx c = {.id = "clk", .n = 1, .now = now, .ignore = true};

        CHECK_INT(twin_input_decode(json, strlen(json), &DEF, &z, &c.tele[0], err), 0);
        CHECK_INT(twin_store_write(s, tele_fn, &c, werr), 0);
        CHECK_INT(c.rcs[0], -EINVAL);
    }
    after = stats_of(s);
    raw2 = raw_copy(s, "clk", &l2);
    CHECK(raw1 && raw2 && l1 == l2 && !memcmp(raw1, raw2, l1));
    CHECK_INT(after.history_points, before.history_points);
    CHECK_INT(after.last_txn, before.last_txn);

    /* behind the hub clock by any amount: a reading buffered for 30 days */
    snprintf(json, sizeof json, "{\"seq\":2,\"ts\":%" PRId64 ",\"hr\":72}",
             now - (int64_t)30 * 86400000);
    CHECK_INT(apply(s, "clk", json, now, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    p = history_of(s, "clk", "hr", 0);
    CHECK(p.n == 2 && p.ts[0] == now - (int64_t)30 * 86400000 && p.ts[1] == now + 300000);
    /* no ts: the hub clock */
    CHECK_INT(apply(s, "clk", "{\"seq\":3,\"hr\":73}", now, &res, err), 0);

    /* the bound changes at run time; 0 switches the check off */
    twin_store_set_limits(s, 100000, 10);
    snprintf(json, sizeof json, "{\"seq\":4,\"ts\":%" PRId64 "}", now + 11);
    CHECK_INT(apply(s, "clk", json, now, &res, err), -EINVAL);
    CHECK_HAS(err, "is 11 ms ahead of the hub clock; limits.max_clock_skew is 10 ms");
    snprintf(json, sizeof json, "{\"seq\":4,\"ts\":%" PRId64 "}", now + 10);
    CHECK_INT(apply(s, "clk", json, now, &res, err), 0);
    twin_store_set_limits(s, 100000, 0);
    snprintf(json, sizeof json, "{\"seq\":5,\"ts\":%" PRId64 "}", now + 3600000);
    CHECK_INT(apply(s, "clk", json, now, &res, err), 0);

    /* the distance cannot overflow: the largest ts against a negative hub clock */
    twin_store_set_limits(s, 100000, 300000);
    CHECK_INT(apply(s, "clk", "{\"seq\":6,\"ts\":9223372036854775807}", -5, &res, err), -EINVAL);
    CHECK_HAS(err, "ts 9223372036854775807 is 9223372036854775812 ms ahead");
    twin_store_close(s);
out:
    free(raw1);
    free(raw2);
    tmp_remove(dir);
    msgpack_zone_destroy(&z);
}

/* ---------------------------------------------------------------------------------------------
 * History, outbox, listing, statistics
 * ------------------------------------------------------------------------------------------ */

struct hist_ctx {
    const char *id, *path;
    int64_t ts[16];
    double v[16];
    int n;
    char err[TWIN_ERR_LEN];
};

static int hist_fn(struct twin_txn *txn, void *ctx)
{
    struct hist_ctx *h = ctx;

    for (int i = 0; i < h->n; i++) {
        int rc = twin_history_append(txn, h->id, strlen(h->id), h->path, strlen(h->path), h->ts[i],
                                     h->v[i], h->err);
        if (rc)
            return rc;
    }
    return 0;
}

static int hist_append(struct twin_store *s, const char *id, const char *path, int64_t ts, double v)
{
    struct hist_ctx h = {.id = id, .path = path, .n = 1, .ts = {ts}, .v = {v}};
    char err[TWIN_ERR_LEN];

    return twin_store_write(s, hist_fn, &h, err);
}

static int bad_hist_fn(struct twin_txn *txn, void *ctx)
{
    char *err = ctx, longp[300];
    int ok = 0;

    memset(longp, 'p', sizeof longp);
    ok += twin_history_append(txn, "d", 1, "x", 0, 1, 1, err) == -EINVAL;
    ok += twin_history_append(txn, "d", 1, longp, 257, 1, 1, err) == -EINVAL;
    ok += twin_history_append(txn, "d", 1, longp, 256, 1, 1, err) == 0;
    ok += twin_history_append(txn, "", 0, "x", 1, 1, 1, err) == -EINVAL;
    ok += twin_history_append(txn, "d", 1, "x", 1, -1, 1, err) == -EINVAL;
    return ok == 5 ? 0 : -EPROTO;
}

static void test_history(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct hist_ctx h = {.id = "d", .path = "x", .n = 8};
    struct points p;
    struct twin_txn *t;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 5, false);
    if (!s)
        goto out;
    for (int i = 0; i < 8; i++) {
        h.ts[i] = i + 1;
        h.v[i] = (i + 1) * 1.5;
    }
    CHECK_INT(twin_store_write(s, hist_fn, &h, err), 0);
    p = history_of(s, "d", "x", 0);
    CHECK_INT(p.n, 5);
    for (int i = 0; i < 5 && i < p.n; i++) {
        CHECK_INT(p.ts[i], i + 4);
        CHECK(p.v[i] == (i + 4) * 1.5);
    }
    p = history_of(s, "d", "x", 6);
    CHECK(p.n == 3 && p.ts[0] == 6 && p.ts[2] == 8);
    CHECK_INT(history_of(s, "d", "x", 100).n, 0);
    CHECK_INT(history_of(s, "d", "nothing", 0).n, 0);
    CHECK_INT(history_of(s, "d", "x", -50).n, 5);

    /* an append older than everything is the oldest: dropped at once */
    CHECK_INT(hist_append(s, "d", "x", 2, 99), 0);
    p = history_of(s, "d", "x", 0);
    CHECK(p.n == 5 && p.ts[0] == 4);
    /* the same point twice is one point; two values at one ts are two */
    CHECK_INT(hist_append(s, "d", "x", 9, 1), 0);
    CHECK_INT(hist_append(s, "d", "x", 9, 1), 0);
    p = history_of(s, "d", "x", 9);
    CHECK_INT(p.n, 1);
    CHECK_INT(hist_append(s, "d", "x", 9, 2), 0);
    p = history_of(s, "d", "x", 9);
    CHECK_INT(p.n, 2);
    /* other series are their own */
    CHECK_INT(hist_append(s, "d", "y", 1, 1), 0);
    CHECK_INT(hist_append(s, "d2", "x", 1, 1), 0);
    CHECK_INT(history_of(s, "d", "x", 0).n, 5);
    CHECK_INT(history_of(s, "d", "y", 0).n, 1);
    CHECK_INT(history_of(s, "d2", "x", 0).n, 1);

    /* a lower bound applies at the next append; 0 switches history off */
    twin_store_set_history_max(s, 2);
    CHECK_INT(hist_append(s, "d", "x", 20, 7), 0);
    p = history_of(s, "d", "x", 0);
    CHECK(p.n == 2 && p.ts[0] == 9 && p.ts[1] == 20);
    twin_store_set_history_max(s, 0);
    CHECK_INT(hist_append(s, "d", "x", 21, 7), 0);
    CHECK_INT(history_of(s, "d", "x", 0).n, 2);
    twin_store_set_history_max(s, 5);

    /* the callback can stop the walk */
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    {
        struct points q = {.n = 0, .stop_after = 1};

        CHECK_INT(twin_history_read(t, "d", 1, "x", 1, 0, collect_point, &q, err), 42);
        CHECK_INT(q.n, 1);
        CHECK_INT(twin_history_append(t, "d", 1, "x", 1, 1, 1, err), -EINVAL);
    }
    twin_store_read_end(t);

    /* argument checks */
    CHECK_INT(twin_store_write(s, bad_hist_fn, err, err), 0);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

struct done_ctx {
    const char *id;
    uint64_t version;
    char err[TWIN_ERR_LEN];
};

static int done_fn(struct twin_txn *txn, void *ctx)
{
    struct done_ctx *d = ctx;

    return twin_outbox_done(txn, d->id, strlen(d->id), d->version, d->err);
}

struct list_seen {
    char ids[8][32];
    int n, stop_at;
};

static int collect_list(void *ctx, const char *id, size_t len, const void *doc, size_t dlen)
{
    struct list_seen *l = ctx;
    uint64_t v;

    if (twin_doc_version(doc, dlen, &v))
        return -EBADMSG;
    if (l->n < 8)
        snprintf(l->ids[l->n], sizeof l->ids[0], "%.*s", (int)len, id);
    l->n++;
    return l->stop_at && l->n == l->stop_at ? 7 : 0;
}

static struct list_seen list_of(struct twin_store *s, const char *prefix, int stop_at, int *rc)
{
    struct list_seen l = {.n = 0, .stop_at = stop_at};
    struct twin_txn *t;
    char err[TWIN_ERR_LEN];

    if (twin_store_read_begin(s, &t, err))
        return l;
    *rc = twin_list(t, prefix, prefix ? strlen(prefix) : 0, collect_list, &l, err);
    twin_store_read_end(t);
    return l;
}

static void test_outbox_list(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;
    struct outbox_seen ob;
    struct list_seen l;
    struct done_ctx d = {.id = "a1"};
    int rc = -1;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    CHECK_INT(apply(s, "a1", "{\"x\":1}", 1, &res, err), 0);
    CHECK_INT(apply(s, "a1", "{\"x\":2}", 2, &res, err), 0);
    CHECK_INT(apply(s, "a2", "{\"x\":1}", 3, &res, err), 0);
    CHECK_INT(apply(s, "b1", "{\"x\":1}", 4, &res, err), 0);
    ob = outbox_of(s);
    CHECK_INT(ob.n, 3);
    CHECK(!strcmp(ob.ids[0], "a1") && ob.versions[0] == 2);
    CHECK(!strcmp(ob.ids[1], "a2") && ob.versions[1] == 1);

    /* an older acknowledgement leaves the newer version waiting */
    d.version = 1;
    CHECK_INT(twin_store_write(s, done_fn, &d, err), 0);
    CHECK_INT(outbox_of(s).n, 3);
    d.version = 2;
    CHECK_INT(twin_store_write(s, done_fn, &d, err), 0);
    ob = outbox_of(s);
    CHECK(ob.n == 2 && !strcmp(ob.ids[0], "a2"));
    CHECK_INT(twin_store_write(s, done_fn, &d, err), 0); /* already gone: fine */
    d.id = "zz";
    CHECK_INT(twin_store_write(s, done_fn, &d, err), 0);

    /* listing by prefix, in id order */
    l = list_of(s, NULL, 0, &rc);
    CHECK(rc == 0 && l.n == 3 && !strcmp(l.ids[0], "a1") && !strcmp(l.ids[2], "b1"));
    l = list_of(s, "a", 0, &rc);
    CHECK(rc == 0 && l.n == 2 && !strcmp(l.ids[1], "a2"));
    l = list_of(s, "b1", 0, &rc);
    CHECK(rc == 0 && l.n == 1);
    l = list_of(s, "c", 0, &rc);
    CHECK(rc == 0 && l.n == 0);
    l = list_of(s, "", 0, &rc);
    CHECK(rc == 0 && l.n == 3);
    l = list_of(s, NULL, 2, &rc);
    CHECK(rc == 7 && l.n == 2);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

static void test_stats(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;
    struct twin_stats st;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 3, false);
    if (!s)
        goto out;
    st = stats_of(s);
    CHECK(st.twins == 0 && st.history_series == 0 && st.history_points == 0 && st.outbox == 0);
    for (int i = 0; i < 5; i++)
        CHECK_INT(apply(s, "a", "{\"x\":1,\"y\":{\"z\":2.5},\"s\":\"t\"}", 10 + i, &res, err), 0);
    CHECK_INT(apply(s, "b", "{\"x\":1}", 20, &res, err), 0);
    st = stats_of(s);
    CHECK_INT(st.twins, 2);
    CHECK_INT(st.history_series, 3); /* a/x, a/y.z, b/x */
    CHECK_INT(st.history_points, 3 + 3 + 1);
    CHECK_INT(st.outbox, 2);
    CHECK_INT(st.map_size, twin_store_map_size(s));
    CHECK(st.used_bytes > 0 && st.used_bytes < st.map_size);
    CHECK(st.last_txn >= 6);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* ---------------------------------------------------------------------------------------------
 * Main
 * ------------------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    void (*fn)(void);
} tests[] = {
    {"scan_types", test_scan_types},
    {"scan_reasons", test_scan_reasons},
    {"scan_limits", test_scan_limits},
    {"scan_fuzz", test_scan_fuzz},
    {"json_input", test_json_input},
    {"json_types", test_json_types},
    {"json_limits", test_json_limits},
    {"json_write", test_json_write},
    {"values", test_values},
    {"merge_rfc7396", test_merge_rfc7396},
    {"merge_meta", test_merge_meta},
    {"merge_large", test_merge_large},
    {"doc", test_doc},
    {"doc_decode_bad", test_doc_decode_bad},
    {"store_roundtrip", test_store_roundtrip},
    {"store_open_errors", test_store_open_errors},
    {"store_growth", test_store_growth},
    {"store_full", test_store_full},
    {"store_readonly_concurrent", test_store_readonly_concurrent},
    {"store_roundtrip_writemap", test_store_roundtrip_writemap},
    {"store_growth_writemap", test_store_growth_writemap},
    {"store_readonly_concurrent_writemap", test_store_readonly_concurrent_writemap},
    {"store_writemap", test_store_writemap},
    {"store_threads", test_store_threads},
    {"telemetry_apply", test_telemetry_apply},
    {"telemetry_bad", test_telemetry_bad},
    {"telemetry_doc_limit", test_telemetry_doc_limit},
    {"telemetry_more", test_telemetry_more},
    {"telemetry_max_twins", test_telemetry_max_twins},
    {"telemetry_clock_skew", test_telemetry_clock_skew},
    {"history_gone", test_history_gone},
    {"history_bounded", test_history_bounded},
    {"history", test_history},
    {"outbox_list", test_outbox_list},
    {"stats", test_stats},
};

int main(int argc, char **argv)
{
    int ran = 0;

    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int before = failures;

        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
            continue;
        current = tests[i].name;
        tests[i].fn();
        ran++;
        printf("%-36s %s\n", tests[i].name, failures == before ? "ok" : "FAILED");
    }
    if (!ran) {
        fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    printf("%d test%s, %d failure%s\n", ran, ran == 1 ? "" : "s", failures,
           failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
