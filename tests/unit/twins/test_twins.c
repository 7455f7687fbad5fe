/* test_twins.c: unit tests of the twins library, through its public header only: the msgpack
 * pre-scan, JSON in and out, values, merge, documents, the LMDB store (round trip, read-only
 * beside a writer, map growth, -ENOSPC, schema, MDB_WRITEMAP), telemetry, the bounds on a twin's
 * size, the number of twins and the device clock, history (and its removal with the leaf),
 * outbox and statistics; desired state (RFC 7396 Appendix A), delta, versions and optimistic
 * locking, presence, deletion and tombstones, and the command queue (transitions, cap, expiry,
 * restarts, damaged records, map growth).
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
    {
        /* msgpack carries NaN (JSON cannot): the same stored value as itself, not a number */
        msgpack_object nan_a = {.type = MSGPACK_OBJECT_FLOAT64, .via.f64 = NAN};
        msgpack_object nan_b = {.type = MSGPACK_OBJECT_FLOAT32, .via.f64 = -NAN};
        msgpack_object zero = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 0};
        CHECK(twin_value_equal(&nan_a, &nan_b) && twin_value_equal(&nan_b, &nan_a));
        CHECK(!twin_value_equal(&nan_a, &zero) && !twin_value_equal(&zero, &nan_a));
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
                                       "last_seen", "seq",       "gaps",     "created"};
    static const char *order_min[] = {"id",   "version",   "reported",  "desired",
                                      "meta", "connected", "last_seen", "created"};

    msgpack_zone_init(&z, 4096);
    msgpack_sbuffer_init(&sb);
    d = doc_sample(&z);
    d.gaps = (struct twin_gaps){2, 30, 7, 16, 1700000000100};
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
    CHECK(back.gaps.count == 2 && back.gaps.missed == 30 && back.gaps.from == 7 &&
          back.gaps.to == 16 && back.gaps.ts == 1700000000100);
    CHECK_INT(back.created, -5);
    /* key order */
    CHECK(msgpack_unpack(sb.data, sb.size, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS);
    CHECK_INT(o.via.map.size, 12);
    CHECK_STR(TJ(&o.via.map.ptr[10].val),
              "{\"count\":2,\"missed\":30,\"from\":7,\"to\":16,\"ts\":1700000000100}");
    for (uint32_t i = 0; i < o.via.map.size && i < 12; i++) {
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
        {"{\"id\":\"a\",\"version\":3,\"gaps\":[]}", -EBADMSG, "'gaps' must be a map"},
        {"{\"id\":\"a\",\"version\":3,\"gaps\":{\"missed\":-2}}", -EBADMSG,
         "'gaps.missed' must be"},
        {"{\"id\":\"a\",\"version\":3,\"gaps\":{\"ts\":\"x\"}}", -EBADMSG, "'gaps.ts' must be"},
        {"{\"id\":\"a\",\"version\":3,\"gaps\":{\"count\":1,\"later\":1}}", 0, ""},
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
    MDB_val k = {6, "schema"}, v = {4, "\x03\x00\x00\x00"};

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
    CHECK_HAS(err, "schema version 3; this build reads versions 1 to 2");
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
    int status = 0;
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

static void check_gaps(const struct twin_doc *d, void *ctx)
{
    const struct twin_gaps *e = ctx;

    CHECK_INT(d->gaps.count, e->count);
    CHECK_INT(d->gaps.missed, e->missed);
    CHECK_INT(d->gaps.from, e->from);
    CHECK_INT(d->gaps.to, e->to);
    CHECK_INT(d->gaps.ts, e->ts);
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

    /* a duplicate changes nothing, not even last_seen (a stale one is counted: see
     * test_telemetry_restart) */
    {
        size_t l1, l2;
        void *before = raw_copy(s, "ecg-1", &l1), *after;

        st = stats_of(s);
        CHECK_INT(apply(s, "ecg-1", "{\"seq\":2,\"hr\":1}", 7000, &res, err), 0);
        CHECK_INT(res.outcome, TWIN_DUPLICATE);
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

    /* seq above the last applied one after a gap: applied, and the gap counted (3..9) */
    CHECK_INT(read_doc(s, "ecg-1", check_gaps, &(struct twin_gaps){0}), 0);
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":10}", 9000, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    CHECK_INT(res.version, 6);
    CHECK_INT(res.gap, 7);
    CHECK_INT(read_doc(s, "ecg-1", check_gaps, &(struct twin_gaps){1, 7, 3, 9, 9000}), 0);
    /* the next one in order adds nothing; a second gap adds up and names itself */
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":11}", 9100, &res, err), 0);
    CHECK_INT(res.gap, 0);
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":13}", 9200, &res, err), 0);
    CHECK_INT(res.gap, 1);
    CHECK_INT(read_doc(s, "ecg-1", check_gaps, &(struct twin_gaps){2, 8, 12, 12, 9200}), 0);
    /* stale and duplicate are not gaps, and change nothing of them */
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":12}", 9300, &res, err), 0);
    CHECK(res.outcome == TWIN_STALE && res.gap == 0);
    CHECK_INT(read_doc(s, "ecg-1", check_gaps, &(struct twin_gaps){2, 8, 12, 12, 9200}), 0);

    /* a second twin, without seq */
    CHECK_INT(apply(s, "ecg-2", "{\"a\":{\"b\":{\"c\":-1.5}}}", 100, &res, err), 0);
    CHECK(res.created && res.version == 1 && res.gap == 0);
    e = (struct expect_doc){
        "{\"a\":{\"b\":{\"c\":-1.5}}}", "{\"a\":{\"b\":{\"c\":100}}}", 1, 0, false, 100, 100};
    CHECK_INT(read_doc(s, "ecg-2", check_expect, &e), 0);
    p = history_of(s, "ecg-2", "a.b.c", 0);
    CHECK(p.n == 1 && p.v[0] == -1.5);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Restarts: a new boot, a device back online, a run of stale messages counting up. */
struct presence_ctx {
    const char *id;
    bool online;
    int64_t now;
    struct twin_presence_result res;
    char err[TWIN_ERR_LEN];
};

static int presence_fn(struct twin_txn *txn, void *ctx)
{
    struct presence_ctx *p = ctx;
    return twin_presence_apply(txn, p->id, strlen(p->id), p->online, p->now, &p->res, p->err);
}

struct restart_seen {
    uint64_t seq, version;
    bool has_boot, seq_restart;
    struct twin_stale stale;
    int64_t last_seen;
    char boot[40];
};

static void read_restart(const struct twin_doc *d, void *ctx)
{
    struct restart_seen *r = ctx;
    r->seq = d->seq;
    r->version = d->version;
    r->seq_restart = d->seq_restart;
    r->stale = d->stale;
    r->last_seen = d->last_seen;
    r->has_boot = d->boot.type != MSGPACK_OBJECT_NIL;
    snprintf(r->boot, sizeof r->boot, "%s", r->has_boot ? TJ(&d->boot) : "");
}

static struct restart_seen restart_of(struct twin_store *s, const char *id)
{
    struct restart_seen r = {0};
    CHECK_INT(read_doc(s, id, read_restart, &r), 0);
    return r;
}

static void test_telemetry_restart(void)
{
    char dir[64], err[TWIN_ERR_LEN], json[128];
    struct twin_store *s;
    struct twin_apply_result res;
    struct restart_seen r;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    CHECK_INT(twin_store_seq_restart(s), 32); /* the default */

    /* boot: a new value starts a new seq order, without a gap; duplicates are still caught */
    for (int i = 1; i <= 5; i++) {
        snprintf(json, sizeof json, "{\"seq\":%d,\"boot\":7,\"hr\":%d}", i, 60 + i);
        CHECK_INT(apply(s, "a", json, 1000 + i, &res, err), 0);
    }
    CHECK_INT(res.restart, TWIN_RESTART_NONE);
    CHECK_INT(apply(s, "a", "{\"seq\":1,\"boot\":8,\"hr\":90}", 2000, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_BOOT && res.gap == 0);
    r = restart_of(s, "a");
    CHECK(r.seq == 1 && r.version == 6 && !strcmp(r.boot, "8"));
    CHECK_INT(apply(s, "a", "{\"seq\":1,\"boot\":8,\"hr\":91}", 2001, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_DUPLICATE);
    CHECK_INT(apply(s, "a", "{\"seq\":3,\"boot\":8}", 2002, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.gap == 1); /* gaps within a boot */
    /* a string is another boot than the integer it spells */
    CHECK_INT(apply(s, "a", "{\"seq\":1,\"boot\":\"8\"}", 2003, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_BOOT);
    CHECK_STR(restart_of(s, "a").boot, "\"8\"");
    CHECK_INT(history_of(s, "a", "hr", 0).n, 6);

    /* stale: dropped, but counted in the twin, a committed change */
    CHECK_INT(apply(s, "a", "{\"seq\":2,\"boot\":\"8\",\"hr\":1}", 2004, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_APPLIED);
    {
        struct twin_stats st = stats_of(s);
        CHECK_INT(apply(s, "a", "{\"seq\":1,\"boot\":\"8\",\"hr\":2}", 2005, &res, err), 0);
        CHECK_INT(res.outcome, TWIN_STALE);
        r = restart_of(s, "a");
        CHECK(r.version == res.version && r.seq == 2 && r.stale.count == 1 &&
              r.stale.run == 1 && r.stale.seq == 1 && r.stale.ts == 2005 && r.last_seen == 2005);
        CHECK_INT(stats_of(s).history_points, st.history_points);
        CHECK_INT(history_of(s, "a", "hr", 0).n, 7); /* 1 is the last, not 2 */
        CHECK_INT(history_of(s, "a", "hr", 0).v[6], 1);
    }

    /* no boot: a run of stale messages counting up is a restart at seq_restart_after */
    twin_store_set_seq_restart(s, 4);
    for (int i = 1; i <= 50; i++) {
        snprintf(json, sizeof json, "{\"seq\":%d,\"v\":%d}", i, i);
        CHECK_INT(apply(s, "b", json, 3000 + i, &res, err), 0);
    }
    CHECK_INT(apply(s, "b", "{\"seq\":10}", 3100, &res, err), 0); /* a stray old one */
    CHECK_INT(res.outcome, TWIN_STALE);
    for (int i = 1; i <= 3; i++) {
        snprintf(json, sizeof json, "{\"seq\":%d,\"v\":%d}", i, 100 + i);
        CHECK_INT(apply(s, "b", json, 3100 + i, &res, err), 0);
        CHECK_INT(res.outcome, TWIN_STALE);
        CHECK_INT(restart_of(s, "b").stale.run, i); /* 10 then 1 is no run: it starts at 1 */
    }
    CHECK_INT(apply(s, "b", "{\"seq\":4,\"v\":104}", 3104, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_STALE_RUN && res.gap == 0);
    r = restart_of(s, "b");
    CHECK(r.seq == 4 && r.stale.count == 4 && r.stale.run == 0);
    CHECK_INT(apply(s, "b", "{\"seq\":5}", 3105, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_NONE && res.gap == 0);
    /* 0: never */
    twin_store_set_seq_restart(s, 0);
    for (int i = 1; i <= 10; i++) {
        snprintf(json, sizeof json, "{\"seq\":%d}", i);
        CHECK_INT(apply(s, "b", json, 3200 + i, &res, err), 0);
        CHECK(res.outcome == (i == 5 ? TWIN_DUPLICATE : i < 5 ? TWIN_STALE : TWIN_APPLIED));
    }
    twin_store_set_seq_restart(s, 32);

    /* back online: the next seq begins a new order, once; a repeated online is no restart */
    for (int i = 1; i <= 9; i++) {
        snprintf(json, sizeof json, "{\"seq\":%d}", i);
        CHECK_INT(apply(s, "c", json, 4000 + i, &res, err), 0);
    }
    struct presence_ctx pc = {.id = "c", .online = true, .now = 4100};
    CHECK_INT(twin_store_write(s, presence_fn, &pc, err), 0); /* offline -> online */
    CHECK(restart_of(s, "c").seq_restart);
    pc.now = 4101;
    CHECK_INT(twin_store_write(s, presence_fn, &pc, err), 0); /* online again */
    CHECK_INT(apply(s, "c", "{\"seq\":1}", 4200, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_ONLINE && res.gap == 0);
    CHECK(!restart_of(s, "c").seq_restart);
    CHECK_INT(apply(s, "c", "{\"seq\":1}", 4201, &res, err), 0);
    CHECK_INT(res.outcome, TWIN_DUPLICATE);
    pc.now = 4202; /* still online: a retained online delivered again starts nothing */
    CHECK_INT(twin_store_write(s, presence_fn, &pc, err), 0);
    CHECK(!restart_of(s, "c").seq_restart);
    pc.online = false;
    pc.now = 4203;
    CHECK_INT(twin_store_write(s, presence_fn, &pc, err), 0);
    pc.online = true;
    pc.now = 4204;
    CHECK_INT(twin_store_write(s, presence_fn, &pc, err), 0);
    CHECK(restart_of(s, "c").seq_restart);
    /* a message without seq leaves the new order to the next one that has a seq */
    CHECK_INT(apply(s, "c", "{\"x\":1}", 4205, &res, err), 0);
    CHECK(restart_of(s, "c").seq_restart);
    CHECK_INT(apply(s, "c", "{\"seq\":1}", 4206, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_ONLINE);

    /* the first boot a twin hears of is no restart, even when its status came first */
    pc = (struct presence_ctx){.id = "e", .online = true, .now = 4300};
    CHECK_INT(twin_store_write(s, presence_fn, &pc, err), 0);
    CHECK_INT(apply(s, "e", "{\"seq\":5,\"boot\":1}", 4301, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_NONE);
    CHECK_INT(apply(s, "f", "{\"seq\":5}", 4302, &res, err), 0);
    CHECK_INT(apply(s, "f", "{\"seq\":6,\"boot\":1}", 4303, &res, err), 0);
    CHECK(res.outcome == TWIN_APPLIED && res.restart == TWIN_RESTART_BOOT); /* new firmware */

    /* bad boot ids are refused, nothing written */
    static const char *const bad[] = {"{\"seq\":9,\"boot\":true}", "{\"seq\":9,\"boot\":\"\"}",
                                      "{\"seq\":9,\"boot\":1.5}", "{\"boot\":[1]}",
                                      "{\"boot\":\"0123456789abcdef0123456789abcdefX\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = restart_of(s, "a").version;
        CHECK_INT(apply(s, "a", bad[i], 5000, &res, err), -EINVAL);
        CHECK_HAS(err, "boot must be an integer or a string of 1..32 bytes");
        CHECK_INT(restart_of(s, "a").version, v);
    }
    CHECK_INT(apply(s, "a", "{\"boot\":\"0123456789abcdef0123456789abcdef\"}", 5001, &res, err),
              0);
out:
    twin_store_close(s);
    tmp_remove(dir);
}

struct doc_text {
    char reported[512], meta[512], v[128];
    bool spo2;
};

static void read_text(const struct twin_doc *d, void *ctx)
{
    struct doc_text *t = ctx;
    const msgpack_object *v = twin_value_get(&d->reported, "v", 1);
    snprintf(t->reported, sizeof t->reported, "%s", TJ(&d->reported));
    snprintf(t->meta, sizeof t->meta, "%s", TJ(&d->meta_reported));
    snprintf(t->v, sizeof t->v, "%s", v ? TJ(v) : "");
    t->spo2 = twin_value_get(&d->reported, "spo2", 4) != NULL;
}

static struct doc_text text_of(struct twin_store *s, const char *id)
{
    struct doc_text t = {"", "", "", false};
    CHECK_INT(read_doc(s, id, read_text, &t), 0);
    return t;
}

/* Batches: readings at their own times, the newest value of each leaf kept, all in history. */
static void test_telemetry_batch(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;
    struct points p;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    CHECK_INT(apply(s, "w", "{\"seq\":1,\"ts\":10000,\"hr\":70}", 100000, &res, err), 0);
    /* a flush of older readings: hr stays 70 (newer), a new leaf comes in, history gets all */
    CHECK_INT(apply(s, "w",
                    "{\"seq\":2,\"ts\":20000,\"spo2\":97,\"batch\":[{\"ts\":6000,\"hr\":61},"
                    "{\"ts\":5000,\"hr\":60,\"t\":36.1}]}",
                    100001, &res, err),
              0);
    CHECK(res.outcome == TWIN_APPLIED && res.version == 2);
    CHECK_STR(text_of(s, "w").reported, "{\"hr\":70,\"t\":36.1,\"spo2\":97}"); /* time order */
    CHECK_STR(text_of(s, "w").meta, "{\"hr\":10000,\"t\":5000,\"spo2\":20000}");
    p = history_of(s, "w", "hr", 0);
    CHECK(p.n == 3 && p.ts[0] == 5000 && p.v[0] == 60 && p.ts[1] == 6000 && p.ts[2] == 10000);
    CHECK_INT(history_of(s, "w", "t", 0).n, 1);
    /* newer readings in any order: the newest wins; equal times keep the message's order */
    CHECK_INT(apply(s, "w",
                    "{\"seq\":3,\"batch\":[{\"ts\":30000,\"hr\":80},{\"ts\":25000,\"hr\":75},"
                    "{\"ts\":40000,\"hr\":1},{\"ts\":40000,\"hr\":2}]}",
                    100002, &res, err),
              0);
    CHECK_STR(text_of(s, "w").reported, "{\"hr\":2,\"t\":36.1,\"spo2\":97}");
    p = history_of(s, "w", "hr", 20000);
    CHECK(p.n == 4 && p.v[0] == 75 && p.v[1] == 80 && p.v[2] == 1 && p.v[3] == 2);
    /* nested: an older reading fills in what is missing and leaves the newer leaf */
    CHECK_INT(apply(s, "w", "{\"batch\":[{\"ts\":50000,\"v\":{\"a\":1}}]}", 100003, &res, err),
              0);
    CHECK_INT(apply(s, "w", "{\"batch\":[{\"ts\":45000,\"v\":{\"a\":0,\"b\":2}}]}", 100004, &res,
                    err),
              0);
    CHECK_STR(text_of(s, "w").v, "{\"a\":1,\"b\":2}");
    p = history_of(s, "w", "v.a", 0);
    CHECK(p.n == 2 && p.ts[0] == 45000 && p.v[0] == 0 && p.v[1] == 1);
    /* deeper than TWIN_PATH_MAX: an older reading there goes nowhere, not into a short path */
    {
        char k[61], deep[600], older[640];
        memset(k, 'k', 60);
        k[60] = '\0';
        snprintf(deep, sizeof deep, "{\"ts\":70000,\"d\":{\"%s\":{\"%s\":{\"%s\":{\"%s\":"
                                     "{\"%s\":{\"x\":1}}}}}}}", k, k, k, k, k);
        CHECK_INT(apply(s, "w", deep, 100005, &res, err), 0);
        snprintf(older, sizeof older, "{\"batch\":[{\"ts\":65000,\"d\":{\"%s\":{\"%s\":{"
                                      "\"%s\":{\"%s\":{\"%s\":{\"x\":5}}}}}}}]}", k, k, k, k, k);
        CHECK_INT(apply(s, "w", older, 100005, &res, err), 0);
        CHECK_INT(history_of(s, "w", "x", 0).n, 0);
        CHECK_INT(history_of(s, "w", k, 0).n, 0);
    }
    /* an older nil does not delete a newer leaf */
    CHECK_INT(apply(s, "w", "{\"batch\":[{\"ts\":1000,\"spo2\":null}]}", 100005, &res, err), 0);
    CHECK(text_of(s, "w").spo2);
    /* a stale batch is stale */
    CHECK_INT(apply(s, "w", "{\"seq\":2,\"batch\":[{\"ts\":60000,\"hr\":9}]}", 100006, &res, err),
              0);
    CHECK_INT(res.outcome, TWIN_STALE);
    /* bad batches are refused whole, nothing written */
    static const struct {
        const char *msg, *why;
    } bad[] = {
        {"{\"batch\":{\"ts\":1}}", "batch must be an array of readings, got map"},
        {"{\"batch\":[1]}", "batch[0] must be a map with its ts, got int"},
        {"{\"batch\":[{\"ts\":1,\"a\":1},{\"a\":2}]}", "batch[1]: each reading needs its ts"},
        {"{\"batch\":[{\"ts\":-1,\"a\":1}]}", "batch[0]: each reading needs its ts"},
        {"{\"batch\":[{\"ts\":1,\"seq\":4}]}", "batch[0]: seq belongs to the message"},
        {"{\"batch\":[{\"ts\":99999999999999,\"a\":1}]}", "batch[0]: ts 99999999999999 is"},
        {"{\"batch\":[{\"ts\":1,\"a.b\":1}]}", "contains '.'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = restart_of(s, "w").version;
        CHECK_INT(apply(s, "w", bad[i].msg, 100010, &res, err), -EINVAL);
        CHECK_HAS(err, bad[i].why);
        CHECK_INT(restart_of(s, "w").version, v);
    }
out:
    twin_store_close(s);
    tmp_remove(dir);
}

static void test_senml(void)
{
    static const struct {
        const char *in;
        int rc;
        const char *out; /* the batch, or a part of the reason */
    } cases[] = {
        /* RFC 8428 section 5.1.2: a base name (the device), a base time, relative times */
        {"[{\"bn\":\"urn:dev:ow:10e2073a01080063:\",\"bt\":1.276020076e9,\"u\":\"V\","
         "\"n\":\"voltage\",\"v\":120.1},{\"n\":\"current\",\"t\":-5,\"v\":1.2},"
         "{\"n\":\"current\",\"t\":-4,\"v\":1.3}]",
         0,
         "{\"batch\":[{\"ts\":1276020076000,\"voltage\":120.1},{\"ts\":1276020071000,"
         "\"current\":1.2},{\"ts\":1276020072000,\"current\":1.3}]}"},
        /* no time: now; a time below 2^28 s: from now */
        {"[{\"n\":\"temp\",\"v\":21}]", 0, "{\"batch\":[{\"ts\":1700000000000,\"temp\":21.0}]}"},
        {"[{\"n\":\"temp\",\"t\":-1.5,\"v\":21}]", 0,
         "{\"batch\":[{\"ts\":1699999998500,\"temp\":21.0}]}"},
        /* levels, strings, booleans, base values */
        {"[{\"n\":\"3303/0/5700\",\"v\":1},{\"n\":\"door.state\",\"vs\":\"open\"},"
         "{\"n\":\"alarm\",\"vb\":true},{\"bv\":10,\"n\":\"x\",\"v\":1},{\"n\":\"y\"}]",
         0,
         "{\"batch\":[{\"ts\":1700000000000,\"3303\":{\"0\":{\"5700\":1.0}}},"
         "{\"ts\":1700000000000,\"door\":{\"state\":\"open\"}},{\"ts\":1700000000000,"
         "\"alarm\":true},{\"ts\":1700000000000,\"x\":11.0},{\"ts\":1700000000000,\"y\":10.0}]}"},
        {"{\"n\":\"a\",\"v\":1}", -EINVAL, "a SenML pack is a JSON array of records"},
        {"7", -EBADMSG, "expected '[' or '{'"},
        {"[]", -EINVAL, "not an empty one"},
        {"[1]", -EINVAL, "record 0 must be an object, got int"},
        {"[{\"n\":\"a\"}]", -EINVAL, "record 0: no value"},
        {"[{\"n\":\"a\",\"v\":1,\"vs\":\"x\"}]", -EINVAL, "record 0: more than one of"},
        {"[{\"n\":\"a\",\"v\":\"1\"}]", -EINVAL, "record 0: v must be a finite number, got str"},
        {"[{\"n\":\"a\",\"vb\":1}]", -EINVAL, "vb must be a boolean"},
        {"[{\"n\":\"a\",\"v\":1,\"foo_\":2}]", -EINVAL, "field 'foo_' must be understood"},
        {"[{\"v\":1}]", -EINVAL, "record 0: no name"},
        {"[{\"n\":\"urn:dev:x:\",\"v\":1}]", -EINVAL, "the name ends with ':'"},
        {"[{\"n\":\"a//b\",\"v\":1}]", -EINVAL, "has an empty or too long part"},
        {"[{\"n\":\"a\",\"v\":1,\"t\":\"now\"}]", -EINVAL, "t must be a number"},
        {"[{\"n\":\"a\",\"v\":1,\"bt\":-1e12}]", -EINVAL, "before 1970"},
        {"[{\"n\":\"a\",\"v\":1,\"bver\":99}]", -EINVAL, "not a SenML version"},
        {"[{\"n\":\"a\",\"v\":1}", -EBADMSG, "offset"},
    };
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[TWIN_ERR_LEN] = "";
        msgpack_object o;
        int rc = twin_senml_decode(cases[i].in, strlen(cases[i].in), &BIG, 1700000000000, &z, &o,
                                   err);
        if (rc != cases[i].rc)
            FAIL("case %zu %s: rc %d, expected %d (%s)", i, cases[i].in, rc, cases[i].rc, err);
        else if (rc == 0)
            CHECK_STR(TJ(&o), cases[i].out);
        else
            CHECK_HAS(err, cases[i].out);
        msgpack_zone_clear(&z);
    }
    msgpack_zone_destroy(&z);
}

/* Waveforms: chunks of an array leaf's samples, the last `seconds` kept, read by range. */
struct wave_seen {
    int chunks;
    size_t samples;
    int64_t first_ts[64];
    size_t n[64];
    float first[64];
};

static int wave_collect(void *ctx, int64_t ts, double rate, const float *x, size_t n)
{
    struct wave_seen *w = ctx;
    CHECK(rate == 100);
    if (w->chunks < 64) {
        w->first_ts[w->chunks] = ts;
        w->n[w->chunks] = n;
        w->first[w->chunks] = x[0];
    }
    w->chunks++;
    w->samples += n;
    return 0;
}

static struct wave_seen wave_of(struct twin_store *s, const char *id, int64_t from, int64_t to)
{
    struct wave_seen w = {0};
    struct twin_txn *t;
    char err[TWIN_ERR_LEN];
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_wave_read(t, id, strlen(id), "ecg", 3, from, to, wave_collect, &w, err), 0);
    twin_store_read_end(t);
    return w;
}

static int delete_m_fn(struct twin_txn *txn, void *ctx)
{
    struct twin_delete_result res;
    return twin_delete(txn, "m", 1, TWIN_VERSION_ANY, &res, ctx);
}

static void test_waveforms(void)
{
    char dir[64], err[TWIN_ERR_LEN], json[512];
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    struct twin_waveform spec = {"ecg", 100, 2};
    struct twin_store *s = NULL;
    struct twin_apply_result res;
    struct wave_seen w;

    tmp_make(dir, sizeof dir);
    o.path = dir;
    o.waveforms = &spec;
    o.nwaveforms = 1;
    CHECK_INT(twin_store_open(&s, &o, err), 0);
    if (!s)
        goto out;
    /* 30 messages of 10 samples at 100 Hz, each ending at its ts: 3 s of signal */
    for (int m = 1; m <= 30; m++) {
        int n = snprintf(json, sizeof json, "{\"seq\":%d,\"ts\":%d,\"ecg\":[", m, 1000 + 100 * m);
        for (int i = 0; i < 10; i++)
            n += snprintf(json + n, sizeof json - (size_t)n, "%s%d", i ? "," : "", m * 10 + i);
        snprintf(json + n, sizeof json - (size_t)n, "],\"other\":[1,2]}");
        CHECK_INT(apply(s, "m", json, 5000, &res, err), 0);
    }
    /* the last 2 s before the newest sample's end (4000): 20 chunks, contiguous */
    w = wave_of(s, "m", INT64_MIN, INT64_MAX);
    CHECK(w.chunks == 20 && w.samples == 200);
    CHECK(w.first_ts[0] == 2000 && w.first[0] == 110 && w.first_ts[19] == 3900);
    for (int i = 1; i < 20 && i < w.chunks; i++)
        CHECK_INT(w.first_ts[i] - w.first_ts[i - 1], 100);
    /* a range: the chunks that reach into it */
    w = wave_of(s, "m", 3050, 3250);
    CHECK(w.chunks == 3 && w.first_ts[0] == 3000 && w.first_ts[2] == 3200);
    CHECK_INT(wave_of(s, "m", 9000, INT64_MAX).chunks, 0);
    CHECK_INT(wave_of(s, "nobody", INT64_MIN, INT64_MAX).chunks, 0);
    /* an older chunk in a batch lands in its place (one starting at the same ms is the same
     * chunk, sent again) */
    CHECK_INT(apply(s, "m", "{\"batch\":[{\"ts\":3650,\"ecg\":[7,7,7,7,7,7]}]}", 5001, &res, err),
              0);
    w = wave_of(s, "m", 3592, 3598);
    CHECK(w.chunks == 2 && w.first_ts[0] == 3500 && w.first_ts[1] == 3590 && w.n[1] == 6);
    /* not numbers, or an array not configured: stored in reported, not kept as a signal */
    CHECK_INT(apply(s, "m", "{\"ts\":4200,\"ecg\":[1,\"x\"]}", 5002, &res, err), 0);
    CHECK_INT(wave_of(s, "m", 4100, INT64_MAX).chunks, 0);
    /* a long late chunk under shorter ones is read where it reaches, not skipped */
    {
        char b[1200];
        int n = snprintf(b, sizeof b, "{\"batch\":[{\"ts\":3900,\"ecg\":[");
        for (int i = 0; i < 100; i++)
            n += snprintf(b + n, sizeof b - (size_t)n, "%s9", i ? "," : "");
        snprintf(b + n, sizeof b - (size_t)n, "]}]}");
        CHECK_INT(apply(s, "m", b, 5003, &res, err), 0);
        w = wave_of(s, "m", 3850, 3860);
        CHECK(w.chunks == 2 && w.first_ts[0] == 2900 && w.n[0] == 100 && w.first_ts[1] == 3800);
    }
    /* deleting the twin deletes its waveform */
    CHECK_INT(twin_store_write(s, delete_m_fn, err, err), 0);
    CHECK_INT(wave_of(s, "m", INT64_MIN, INT64_MAX).chunks, 0);
out:
    twin_store_close(s);
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

    /* past the latest time a twin holds: refused before anything is written, skew or not */
    CHECK_INT(apply(s, "clk", "{\"seq\":6,\"ts\":281474976710656}", now, &res, err), -EINVAL);
    CHECK_HAS(err, "ts 281474976710656 is out of range (after the year 10889)");
    CHECK_INT(apply(s, "clk", "{\"batch\":[{\"ts\":281474976710656,\"a\":1}]}", now, &res, err),
              -EINVAL);
    CHECK_HAS(err, "batch[0]: each reading needs its ts");

    /* the distance cannot overflow: the largest ts against a negative hub clock */
    twin_store_set_limits(s, 100000, 300000);
    CHECK_INT(apply(s, "clk", "{\"seq\":6,\"ts\":281474976710655}", -5, &res, err), -EINVAL);
    CHECK_HAS(err, "ts 281474976710655 is 281474976710660 ms ahead");
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
    /* the same reading twice is two points, and the points of one millisecond keep the
     * order they came in, whatever their values */
    CHECK_INT(hist_append(s, "d", "x", 9, 1), 0);
    CHECK_INT(hist_append(s, "d", "x", 9, 1), 0);
    p = history_of(s, "d", "x", 9);
    CHECK_INT(p.n, 2);
    CHECK_INT(hist_append(s, "d", "x", 9, -5), 0);
    p = history_of(s, "d", "x", 9);
    CHECK(p.n == 3 && p.v[0] == 1 && p.v[1] == 1 && p.v[2] == -5);
    /* a late reading lands in its place: after what came before it at its millisecond */
    CHECK_INT(hist_append(s, "d", "x", 10, 3), 0);
    CHECK_INT(hist_append(s, "d", "x", 9, 7), 0);
    p = history_of(s, "d", "x", 9);
    CHECK(p.n == 5 && p.ts[3] == 9 && p.v[3] == 7 && p.ts[4] == 10 && p.v[4] == 3);
    CHECK_INT(hist_append(s, "d", "x", 8, 8), 0); /* older than all: the oldest, dropped */
    p = history_of(s, "d", "x", 0);
    CHECK(p.n == 5 && p.ts[0] == 9 && p.v[0] == 1 && p.v[4] == 3);
    /* more readings at 9 go before 10 and push the oldest out */
    for (int i = 0; i < 4; i++)
        CHECK_INT(hist_append(s, "d", "x", 9, 2), 0);
    p = history_of(s, "d", "x", 0);
    CHECK(p.n == 5 && p.v[0] == 2 && p.v[3] == 2 && p.ts[3] == 9 && p.ts[4] == 10);
    /* timestamps past 2^48 ms (the year 10889) are refused */
    CHECK_INT(hist_append(s, "d", "z", 1ll << 48, 1), -EINVAL);
    CHECK_INT(hist_append(s, "d", "z", (1ll << 48) - 1, 1), 0);
    CHECK_INT(history_of(s, "d", "z", (1ll << 48) - 1).n, 1);
    CHECK_INT(history_of(s, "d", "z", INT64_MAX).n, 0);
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
    CHECK(p.n == 2 && p.ts[0] == 10 && p.ts[1] == 20);
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

/* ---------------------------------------------------------------------------------------------
 * Export and import (export.c), and the one-writer lock
 * ------------------------------------------------------------------------------------------ */

struct export_ctx {
    bool history;
    msgpack_zone zone;
    msgpack_sbuffer out;
    int rc;
    char err[TWIN_ERR_LEN];
    struct twin_txn *txn;
};

static int export_cb(void *ctx, const char *id, size_t id_len, const void *doc, size_t len)
{
    struct export_ctx *e = ctx;

    msgpack_zone_clear(&e->zone);
    return twin_export_line(e->txn, id, id_len, doc, len, e->history, &e->zone, &e->out, e->err);
}

/* Every twin of s as export lines (caller frees). */
static char *export_all(struct twin_store *s, bool history)
{
    struct export_ctx e = {.history = history};
    char *text = NULL;

    msgpack_zone_init(&e.zone, 4096);
    msgpack_sbuffer_init(&e.out);
    if (twin_store_read_begin(s, &e.txn, e.err) == 0) {
        e.rc = twin_list(e.txn, "", 0, export_cb, &e, e.err);
        twin_store_read_end(e.txn);
    }
    if (e.rc)
        FAIL("export: %d %s", e.rc, e.err);
    text = strndup(e.out.data ? e.out.data : "", e.out.size);
    msgpack_sbuffer_destroy(&e.out);
    msgpack_zone_destroy(&e.zone);
    return text;
}

struct import_ctx {
    const char *text;
    int rc_line; /* 1-based line that failed */
    char err[TWIN_ERR_LEN];
};

static int import_fn(struct twin_txn *txn, void *ctx)
{
    struct import_ctx *c = ctx;
    msgpack_zone z;
    int line = 0, rc = 0;

    msgpack_zone_init(&z, 4096);
    for (const char *p = c->text; *p && !rc;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        struct twin_import im;

        line++;
        msgpack_zone_clear(&z);
        rc = twin_import_parse(p, n, 1u << 20, 0, &z, &im, c->err);
        if (!rc)
            rc = twin_import_write(txn, &im, c->err);
        if (rc)
            c->rc_line = line;
        p += n + (nl != NULL);
    }
    msgpack_zone_destroy(&z);
    return rc;
}

static void test_export_import(void)
{
    char a[64], b[64], err[TWIN_ERR_LEN];
    struct twin_store *s, *t = NULL;
    struct twin_apply_result res;
    char *one = NULL, *two = NULL, *bare = NULL;

    tmp_make(a, sizeof a);
    tmp_make(b, sizeof b);
    s = store_open(a, 0, 0, 100, false);
    if (!s)
        goto out;
    /* floats that are whole, float32, big and negative ints, strings that need escaping, an
     * array, nested maps, desired and delta, and history with several series */
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":1,\"hr\":72.0,\"n\":-3,\"big\":18446744073709551615,"
                               "\"s\":\"a\\\"b\\\\c\\u0001\\u00e9\",\"arr\":[1,2.5,\"x\"],"
                               "\"v\":{\"t\":36.6,\"u\":{\"w\":1}}}",
                    1000, &res, err),
              0);
    CHECK_INT(apply(s, "ecg-1", "{\"seq\":2,\"hr\":0.1,\"v\":{\"t\":1e300}}", 2000, &res, err), 0);
    CHECK_INT(apply(s, "ecg-2", "{\"x\":1}", 1500, &res, err), 0);
    CHECK_INT(apply(s, "ecg-3", "{}", 1600, &res, err), 0);
    CHECK_INT(hist_append(s, "ecg-2", "x", 1400, 0.30000000000000004), 0);
    one = export_all(s, true);
    bare = export_all(s, false);
    CHECK_HAS(one, "\"hr\":[[1000,72.0],[2000,0.1]],\"n\":[[1000,-3.0]],\"v.t\":[[1000,36.6],"
                   "[2000,1e+300]]");
    CHECK_HAS(one, "[1400,0.30000000000000004]");
    CHECK(strstr(bare, "history") == NULL);
    CHECK(strstr(one, "{\"id\":\"ecg-3\"") != NULL && strstr(one, "\"history\":{}}\n"));

    /* into an empty store, and out again: the same bytes */
    t = store_open(b, 0, 0, 100, false);
    if (!t)
        goto out;
    struct import_ctx ic = {.text = one};
    CHECK_INT(twin_store_write(t, import_fn, &ic, err), 0);
    two = export_all(t, true);
    CHECK_STR(two, one);
    /* the stored documents are the same bytes, and in the outbox to be published */
    for (int i = 1; i <= 3; i++) {
        char id[16];
        size_t la = 0, lb = 0;
        snprintf(id, sizeof id, "ecg-%d", i);
        void *ra = raw_copy(s, id, &la), *rb = raw_copy(t, id, &lb);
        CHECK(ra && rb && la == lb && memcmp(ra, rb, la) == 0);
        free(ra);
        free(rb);
    }
    CHECK_INT(outbox_of(t).n, 3);

    /* again: every twin is there already */
    ic = (struct import_ctx){.text = one};
    CHECK_INT(twin_store_write(t, import_fn, &ic, err), -EEXIST);
    CHECK_INT(ic.rc_line, 1);
    CHECK_HAS(ic.err, "twin 'ecg-1' is already in the store (version 2)");

out:
    free(one);
    free(two);
    free(bare);
    twin_store_close(s);
    twin_store_close(t);
    tmp_remove(a);
    tmp_remove(b);
}

static void test_import_bad(void)
{
    static const struct {
        const char *line;
        int rc;
        const char *why;
    } cases[] = {
        {"", -EINVAL, "expected a JSON object"},
        {"[1,2]", -EINVAL, "expected a JSON object"},
        {"\x92\x01\x02", -EINVAL, "expected a JSON object"}, /* msgpack is not a line */
        {"{\"id\":\"a\"", -EINVAL, "unexpected end of input"},
        {"{\"id\":\"a\"}", -EINVAL, "no 'version'"},
        {"{\"version\":1}", -EINVAL, "no 'id'"},
        {"{\"id\":\"a\",\"version\":0}", -EINVAL, "version 1 or more"},
        {"{\"id\":\"a\",\"version\":-1}", -EINVAL, "'version' must be an unsigned integer"},
        {"{\"id\":\"\",\"version\":1}", -EINVAL, "'id' must be a string of 1..128 bytes"},
        {"{\"id\":\"a\",\"version\":1,\"what\":1}", -EINVAL, "unknown member 'what'"},
        {"{\"id\":\"a\",\"version\":1,\"version\":2}", -EINVAL, "member 'version' appears twice"},
        {"{\"id\":\"a\",\"version\":1,\"reported\":[]}", -EINVAL, "'reported' must be a map"},
        {"{\"id\":\"a\",\"version\":1,\"reported\":{\"a.b\":1}}", -EINVAL,
         "bad key \"a.b\" in reported: contains '.'"},
        {"{\"id\":\"a\",\"version\":1,\"desired\":{\"\":1}}", -EINVAL, "in desired"},
        {"{\"id\":\"a\",\"version\":1,\"history\":[]}", -EINVAL, "history: expected an object"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"hr\":{}}}", -EINVAL,
         "history.hr: expected an array of [ts, value], got map"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"hr\":[[1,2],[3]]}}", -EINVAL,
         "history.hr[1]: expected [ts, value]"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"hr\":[[-1,2]]}}", -EINVAL,
         "history.hr[0]: ts must be a whole number"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"hr\":[[1.5,2]]}}", -EINVAL,
         "history.hr[0]: ts must be"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"hr\":[[1,\"x\"]]}}", -EINVAL,
         "history.hr[0]: value must be a finite number"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"hr\":[[1,null]]}}", -EINVAL,
         "value must be a finite number"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"\":[]}}", -EINVAL, "is not a path"},
        {"{\"id\":\"a\",\"version\":1,\"history\":{\"x\":[],\"x\":[]}}", -EINVAL,
         "series 'x' appears twice"},
        {"{\"id\":\"a\",\"version\":1,\"connected\":1}", -EINVAL, "'connected' must be a boolean"},
        {"{\"id\":\"a\",\"version\":1,\"reported\":{\"x\":1}} trailing", -EINVAL, ""},
        /* good ones */
        {"{\"id\":\"a\",\"version\":1}", 0, NULL},
        {"  {\"id\":\"a\",\"version\":1,\"history\":{\"x\":[[0,1],[5,-2],[6,1e-300]]}}\r", 0,
         NULL},
    };
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[TWIN_ERR_LEN] = "";
        struct twin_import im;
        int rc = twin_import_parse(cases[i].line, strlen(cases[i].line), 4096, 0, &z, &im, err);

        if (rc != cases[i].rc)
            FAIL("case %zu %s: rc %d, expected %d (%s)", i, cases[i].line, rc, cases[i].rc, err);
        else if (rc)
            CHECK_HAS(err, cases[i].why);
        msgpack_zone_clear(&z);
    }
    /* the line limit */
    {
        char err[TWIN_ERR_LEN];
        struct twin_import im;
        const char *l = "{\"id\":\"a\",\"version\":1}";
        CHECK_INT(twin_import_parse(l, strlen(l), 10, 0, &z, &im, err), -E2BIG);
        CHECK_HAS(err, "line of 22 bytes, above the limit of 10");
        /* and the document's own limit, as the store will apply it */
        l = "{\"id\":\"a\",\"version\":1,\"reported\":{\"x\":\"0123456789012345678901234567890\"}}";
        CHECK_INT(twin_import_parse(l, strlen(l), 4096, 40, &z, &im, err), -E2BIG);
        CHECK_HAS(err, "above limits.max_twin_size 40");
        CHECK_INT(twin_import_parse(l, strlen(l), 4096, 4096, &z, &im, err), 0);
    }
    msgpack_zone_destroy(&z);
}

static int delete_fn(struct twin_txn *txn, void *ctx)
{
    struct twin_delete_result res;
    return twin_delete(txn, "gone", 4, TWIN_VERSION_ANY, &res, ctx);
}

static void test_import_tombstone(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_apply_result res;
    struct import_ctx ic;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    for (int i = 1; i <= 4; i++)
        CHECK_INT(apply(s, "gone", "{\"x\":1}", 1000 + i, &res, err), 0);
    CHECK_INT(twin_store_write(s, delete_fn, err, err), 0); /* its tombstone: version 4 */
    ic = (struct import_ctx){.text = "{\"id\":\"gone\",\"version\":4}"};
    CHECK_INT(twin_store_write(s, import_fn, &ic, err), -EEXIST);
    CHECK_HAS(ic.err, "twin 'gone' was deleted from this store at version 4; version 4 would be "
                      "used twice");
    ic = (struct import_ctx){.text = "{\"id\":\"gone\",\"version\":5}"};
    CHECK_INT(twin_store_write(s, import_fn, &ic, err), 0);
    CHECK_INT(stats_of(s).tombstones, 0);
out:
    twin_store_close(s);
    tmp_remove(dir);
}

static void test_store_one_writer(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    struct twin_store *s, *t = NULL, *r = NULL;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 100, false);
    if (!s)
        goto out;
    o.path = dir;
    CHECK_INT(twin_store_open(&t, &o, err), -EBUSY);
    CHECK_HAS(err, "another process writes the store at");
    CHECK_HAS(err, "writer.lock is locked");
    CHECK(t == NULL);
    o.read_only = true; /* readers are never refused */
    CHECK_INT(twin_store_open(&r, &o, err), 0);
    twin_store_close(s);
    s = NULL;
    o.read_only = false;
    CHECK_INT(twin_store_open(&t, &o, err), 0);
    /* a writer that dies drops its lock: a child takes it and is killed */
    twin_store_close(t);
    t = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        struct twin_store *c = NULL;
        char cerr[TWIN_ERR_LEN];
        if (twin_store_open(&c, &o, cerr) != 0)
            _exit(3);
        for (;;)
            pause();
    }
    for (int i = 0; i < 500; i++) { /* until the child holds it */
        if (twin_store_open(&t, &o, err) == -EBUSY)
            break;
        twin_store_close(t);
        t = NULL;
        usleep(10000);
    }
    CHECK(t == NULL);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK_INT(twin_store_open(&t, &o, err), 0);
out:
    twin_store_close(s);
    twin_store_close(t);
    twin_store_close(r);
    tmp_remove(dir);
}

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
 * Issue 3 helpers: one operation per write transaction, events, documents as JSON
 * ------------------------------------------------------------------------------------------ */

enum op_kind {
    OP_TELE,
    OP_DESIRED,
    OP_PRESENCE,
    OP_DELETE,
    OP_CMD_ADD,
    OP_CMD_SENT,
    OP_CMD_ACK,
    OP_EXPIRE,
};

/* Command events as text: "twin/cmd:from>to ...", reset when the transaction runs again. */
struct events {
    char text[2048];
    int n;
};

static int record_event(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct events *e = ctx;
    size_t len = strlen(e->text);

    snprintf(e->text + len, sizeof e->text - len, "%s%.*s/%.*s:%s>%s", len ? " " : "",
             (int)c->twin_id_len, c->twin_id, (int)c->cmd_len, c->cmd,
             twin_command_state_name(from), twin_command_state_name(c->state));
    e->n++;
    return 0;
}

struct op {
    enum op_kind kind;
    const char *id;
    const char *json;   /* telemetry, desired patch, command args, ack result; NULL: none */
    bool lock;          /* pass `expected` (otherwise TWIN_VERSION_ANY) */
    uint64_t expected;  /* desired, delete */
    int64_t now;        /* hub clock */
    int64_t expires;    /* command deadline */
    bool online;        /* presence */
    const char *cmd;    /* OP_CMD_ADD: the name; OP_CMD_SENT / OP_CMD_ACK: the command id */
    const char *status; /* OP_CMD_ACK */
    unsigned max;       /* OP_EXPIRE */
    bool commit_anyway; /* record the error and commit the transaction regardless */
    /* results */
    int rc, attempts;
    struct twin_apply_result tres;
    struct twin_desired_result dres;
    struct twin_presence_result pres;
    struct twin_delete_result delres;
    struct twin_expire_result xres;
    char cmd_id[TWIN_CMD_ID_LEN + 1]; /* of the command added or changed */
    char state[16];                   /* its state after the call */
    struct events ev;
    msgpack_object obj;
    char err[TWIN_ERR_LEN];
};

static int op_fn(struct twin_txn *txn, void *ctx)
{
    struct op *o = ctx;
    size_t id_len = o->id ? strlen(o->id) : 0;
    uint64_t expected = o->lock ? o->expected : TWIN_VERSION_ANY;
    const msgpack_object *obj = o->json ? &o->obj : NULL;
    struct twin_command c;
    enum twin_command_state st = TWIN_CMD_NONE;
    int rc = -EPROTO;

    o->attempts++;
    memset(&o->ev, 0, sizeof o->ev);
    o->err[0] = '\0';
    memset(&c, 0, sizeof c);
    switch (o->kind) {
    case OP_TELE:
        rc = twin_telemetry_apply(txn, o->id, id_len, &o->obj, o->now, &o->tres, o->err);
        break;
    case OP_DESIRED:
        rc = twin_desired_apply(txn, o->id, id_len, &o->obj, expected, o->now, &o->dres, o->err);
        break;
    case OP_PRESENCE:
        rc = twin_presence_apply(txn, o->id, id_len, o->online, o->now, &o->pres, o->err);
        break;
    case OP_DELETE:
        rc = twin_delete(txn, o->id, id_len, expected, &o->delres, o->err);
        break;
    case OP_CMD_ADD:
        rc = twin_command_add(txn, o->id, id_len, o->cmd, o->cmd ? strlen(o->cmd) : 0, obj,
                              o->expires, o->now, &c, record_event, &o->ev, o->err);
        break;
    case OP_CMD_SENT:
        rc = twin_command_mark_sent(txn, o->id, id_len, o->cmd, o->cmd ? strlen(o->cmd) : 0, o->now,
                                    &c, record_event, &o->ev, o->err);
        break;
    case OP_CMD_ACK:
        if (twin_command_state_parse(o->status, strlen(o->status), &st))
            st = (enum twin_command_state)99;
        rc = twin_command_update(txn, o->id, id_len, o->cmd, o->cmd ? strlen(o->cmd) : 0, st, obj,
                                 o->now, &c, record_event, &o->ev, o->err);
        break;
    case OP_EXPIRE:
        rc = twin_command_expire(txn, o->now, o->max, record_event, &o->ev, &o->xres, o->err);
        break;
    }
    if (!rc && (o->kind == OP_CMD_ADD || o->kind == OP_CMD_SENT || o->kind == OP_CMD_ACK)) {
        memcpy(o->cmd_id, c.id, sizeof o->cmd_id);
        snprintf(o->state, sizeof o->state, "%s", twin_command_state_name(c.state));
    }
    o->rc = rc;
    return o->commit_anyway ? 0 : rc;
}

/* Runs one operation in its own write transaction; returns its code. */
static int run(struct twin_store *s, struct op *o)
{
    msgpack_zone z;
    char werr[TWIN_ERR_LEN] = "";
    int rc;

    msgpack_zone_init(&z, 4096);
    if (o->json && twin_input_decode(o->json, strlen(o->json), &BIG, &z, &o->obj, werr)) {
        /* not a map: V() wraps any JSON value */
        o->obj = V(&z, o->json);
    }
    o->attempts = 0;
    rc = twin_store_write(s, op_fn, o, werr);
    if (rc && !o->err[0])
        snprintf(o->err, sizeof o->err, "%s", werr);
    msgpack_zone_destroy(&z);
    return o->commit_anyway && rc == 0 ? o->rc : rc;
}

/* A twin as JSON fields, read in its own read transaction. rc: twin_get's. */
struct docinfo {
    int rc;
    uint64_t version;
    bool connected;
    int64_t last_seen, created;
    char reported[1024], desired[1024], delta[1024], meta_desired[1024];
};

static struct docinfo doc_info(struct twin_store *s, const char *id)
{
    struct docinfo d = {.rc = -1};
    struct twin_txn *t;
    struct twin_doc doc;
    char err[TWIN_ERR_LEN];

    if (twin_store_read_begin(s, &t, err)) {
        FAIL("read_begin: %s", err);
        return d;
    }
    d.rc = twin_get(t, id, strlen(id), &doc, err);
    if (!d.rc) {
        d.version = doc.version;
        d.connected = doc.connected;
        d.last_seen = doc.last_seen;
        d.created = doc.created;
        snprintf(d.reported, sizeof d.reported, "%s", TJ(&doc.reported));
        snprintf(d.desired, sizeof d.desired, "%s", TJ(&doc.desired));
        snprintf(d.delta, sizeof d.delta, "%s", TJ(&doc.delta));
        snprintf(d.meta_desired, sizeof d.meta_desired, "%s", TJ(&doc.meta_desired));
    }
    twin_store_read_end(t);
    return d;
}

/* The stored delta of `id` through twin_delta_get, as JSON ("null" when in sync). */
static const char *delta_of(struct twin_store *s, const char *id, uint64_t *version)
{
    static char out[1024];
    struct twin_txn *t;
    msgpack_object d;
    uint64_t v = 0;
    char err[TWIN_ERR_LEN];
    int rc;

    if (twin_store_read_begin(s, &t, err))
        return "<read_begin>";
    rc = twin_delta_get(t, id, strlen(id), &v, &d, err);
    snprintf(out, sizeof out, "%s", rc ? err : TJ(&d));
    if (version)
        *version = v;
    twin_store_read_end(t);
    return out;
}

/* Puts a twin with the given desired and reported (JSON maps) at `version`, through twin_put. */
static void seed(struct twin_store *s, const char *id, const char *desired, const char *reported,
                 uint64_t version)
{
    struct twin_doc d;
    struct put_ctx pc = {.doc = &d};
    char err[TWIN_ERR_LEN];
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    memset(&d, 0, sizeof d);
    d.id = id;
    d.id_len = strlen(id);
    d.version = version;
    d.desired = V(&z, desired);
    d.reported = V(&z, reported);
    d.delta.type = d.predicted.type = d.meta_reported.type = d.meta_desired.type =
        MSGPACK_OBJECT_NIL;
    d.created = 1;
    if (twin_store_write(s, put_fn, &pc, err))
        FAIL("seed %s: %s / %s", id, err, pc.err);
    msgpack_zone_destroy(&z);
}

struct cmd_list {
    char text[2048];
    int n;
};

static int collect_cmd(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct cmd_list *l = ctx;
    size_t len = strlen(l->text);

    (void)from;
    snprintf(l->text + len, sizeof l->text - len, "%s%.*s:%s", len ? " " : "", (int)c->cmd_len,
             c->cmd, twin_command_state_name(c->state));
    l->n++;
    return 0;
}

/* "name:state ..." of the commands of `id`, oldest first; *rc receives the list's code. */
static const char *cmds_of(struct twin_store *s, const char *id, int *rc)
{
    static struct cmd_list l;
    struct twin_txn *t;
    char err[TWIN_ERR_LEN];
    int r;

    memset(&l, 0, sizeof l);
    if (twin_store_read_begin(s, &t, err))
        return "<read_begin>";
    r = twin_command_list(t, id, strlen(id), collect_cmd, &l, err);
    if (rc)
        *rc = r;
    else if (r)
        FAIL("twin_command_list %s: %d %s", id, r, err);
    twin_store_read_end(t);
    return l.text;
}

/* Command cmd_id of `id` as read back: fills *c's scalars, returns the state name or "ENOENT". */
static const char *cmd_get(struct twin_store *s, const char *id, const char *cmd_id,
                           struct twin_command *c, char *result_json)
{
    static char state[32];
    struct twin_txn *t;
    struct twin_command tc;
    char err[TWIN_ERR_LEN];
    int rc;

    if (twin_store_read_begin(s, &t, err))
        return "<read_begin>";
    rc = twin_command_get(t, id, strlen(id), cmd_id, strlen(cmd_id), &tc, err);
    if (rc) {
        snprintf(state, sizeof state, "%s", rc == -ENOENT ? "ENOENT" : "error");
    } else {
        snprintf(state, sizeof state, "%s", twin_command_state_name(tc.state));
        if (result_json)
            snprintf(result_json, 256, "%s", TJ(&tc.result));
        if (c) {
            *c = tc;
            c->cmd = NULL; /* dies with the transaction */
            c->twin_id = NULL;
            c->args.type = c->result.type = MSGPACK_OBJECT_NIL;
        }
    }
    twin_store_read_end(t);
    return state;
}

/* Creates twin `id` by telemetry at `now`. */
static void make_twin(struct twin_store *s, const char *id, int64_t now)
{
    struct op o = {.kind = OP_TELE, .id = id, .json = "{\"hr\":70}", .now = now};

    if (run(s, &o))
        FAIL("make_twin %s: %s", id, o.err);
}

/* Adds command `name` to `id`; returns its id in a rotating static buffer ("" on failure). */
static const char *add_cmd(struct twin_store *s, const char *id, const char *name, int64_t expires,
                           int64_t now, char *events)
{
    static char ids[8][TWIN_CMD_ID_LEN + 1];
    static int next;
    char *out = ids[next++ & 7];
    struct op o = {.kind = OP_CMD_ADD, .id = id, .cmd = name, .expires = expires, .now = now};

    out[0] = '\0';
    if (run(s, &o)) {
        FAIL("add_cmd %s %s: %d %s", id, name, o.rc, o.err);
        return out;
    }
    if (events)
        strcpy(events, o.ev.text);
    memcpy(out, o.cmd_id, sizeof o.cmd_id);
    return out;
}

/* ---------------------------------------------------------------------------------------------
 * Desired state
 * ------------------------------------------------------------------------------------------ */

/* RFC 7396 Appendix A, every example, through twin_desired_apply: at the top of desired where
 * target and patch are both objects, and every example one level down (under "v"), where
 * arrays, strings and null may stand for target, patch and result. */
static void test_desired_rfc7396(void)
{
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
    };
    char dir[64], t[256], p[256], r[256];
    struct twin_store *s;
    int top = 0;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct op o = {.kind = OP_DESIRED, .id = "rfc", .lock = true, .expected = 10, .now = 77};
        struct docinfo d;

        /* one level down */
        snprintf(t, sizeof t, "{\"v\":%s}", cases[i].target);
        snprintf(p, sizeof p, "{\"v\":%s}", cases[i].patch);
        if (!strcmp(cases[i].result, "null"))
            snprintf(r, sizeof r, "{}");
        else
            snprintf(r, sizeof r, "{\"v\":%s}", cases[i].result);
        seed(s, "rfc", t, "{}", 10);
        o.json = p;
        CHECK_INT(run(s, &o), 0);
        CHECK_INT(o.dres.version, 11);
        d = doc_info(s, "rfc");
        CHECK_STR(d.desired, r);

        /* at the top, where both are objects */
        if (cases[i].target[0] != '{' || cases[i].patch[0] != '{')
            continue;
        seed(s, "rfc", cases[i].target, "{}", 10);
        o.json = cases[i].patch;
        CHECK_INT(run(s, &o), 0);
        CHECK_INT(o.dres.version, 11);
        d = doc_info(s, "rfc");
        CHECK_STR(d.desired, cases[i].result);
        top++;
    }
    CHECK_INT(top, 10);

    /* a patch that is not an object cannot replace desired: refused, nothing written */
    {
        static const char *const bad[] = {"[\"c\",\"d\"]", "null", "\"bar\"", "5"};

        seed(s, "rfc", "{\"a\":1}", "{}", 10);
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            struct op o = {.kind = OP_DESIRED, .id = "rfc", .json = bad[i], .now = 1};

            CHECK_INT(run(s, &o), -EINVAL);
            CHECK_HAS(o.err, "desired must be a map, got ");
        }
        CHECK_INT(doc_info(s, "rfc").version, 10);
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* meta.desired, created twins, versions, delta flags and every refusal leaving all as it was. */
static void test_desired_apply(void)
{
    char dir[64], json[256], deep[512];
    struct twin_store *s;
    struct twin_stats before, after;
    struct docinfo d;
    size_t l1, l2;
    void *raw1 = NULL, *raw2 = NULL;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;

    /* a missing twin is created at version 1, disconnected, never seen */
    {
        struct op o = {.kind = OP_DESIRED,
                       .id = "pump-1",
                       .json = "{\"rate\":5,\"cfg\":{\"mode\":\"auto\",\"limits\":[1,2]}}",
                       .now = 1000};

        CHECK_INT(run(s, &o), 0);
        CHECK(o.dres.created && o.dres.delta_changed);
        CHECK_INT(o.dres.version, 1);
        CHECK_INT(o.attempts, 1);
    }
    d = doc_info(s, "pump-1");
    CHECK_INT(d.rc, 0);
    CHECK_STR(d.desired, "{\"rate\":5,\"cfg\":{\"mode\":\"auto\",\"limits\":[1,2]}}");
    CHECK_STR(d.meta_desired, "{\"rate\":1000,\"cfg\":{\"mode\":1000,\"limits\":1000}}");
    CHECK_STR(d.delta, d.desired); /* nothing reported yet */
    CHECK_STR(d.reported, "{}");
    CHECK(!d.connected && d.last_seen == 0 && d.created == 1000);
    CHECK_INT(outbox_of(s).versions[0], 1);

    /* meta: written leaves get the new time (even when the value is the same), others keep
     * theirs, deleted ones lose it */
    {
        struct op o = {.kind = OP_DESIRED,
                       .id = "pump-1",
                       .json = "{\"rate\":5,\"cfg\":{\"limits\":null,\"x\":true}}",
                       .now = 2000};

        CHECK_INT(run(s, &o), 0);
        CHECK(!o.dres.created && o.dres.delta_changed);
        CHECK_INT(o.dres.version, 2);
    }
    d = doc_info(s, "pump-1");
    CHECK_STR(d.desired, "{\"rate\":5,\"cfg\":{\"mode\":\"auto\",\"x\":true}}");
    CHECK_STR(d.meta_desired, "{\"rate\":2000,\"cfg\":{\"mode\":1000,\"x\":2000}}");

    /* every accepted call bumps the version, even one that changes nothing */
    {
        struct op o = {.kind = OP_DESIRED, .id = "pump-1", .json = "{}", .now = 3000};

        CHECK_INT(run(s, &o), 0);
        CHECK_INT(o.dres.version, 3);
        CHECK(!o.dres.delta_changed);
        o.json = "{\"nothing\":null}";
        CHECK_INT(run(s, &o), 0);
        CHECK_INT(o.dres.version, 4);
        CHECK(!o.dres.delta_changed);
    }

    /* refusals: every one leaves the twin, the outbox and the store as they were, even when
     * the caller commits anyway */
    memset(deep, 0, sizeof deep);
    for (int i = 0; i < 31; i++)
        strcat(deep, "{\"a\":");
    strcat(deep, "1");
    for (int i = 0; i < 31; i++)
        strcat(deep, "}");
    snprintf(json, sizeof json, "{\"%065d\":1}", 0);
    {
        static const struct {
            const char *json, *reason;
        } bad[] = {
            {"{\"a.b\":1}", "bad key \"a.b\" in desired: contains '.'"},
            {"{\"cfg\":{\"\":1}}", "bad key \"\" in desired.cfg: empty"},
            {"{\"cfg\":{\"x\\u0001\":1}}", "bad key \"x\\x01\" in desired.cfg: contains control"},
            {"{\"arr\":[{\"a.b\":1}]}", "bad key \"a.b\" in desired.arr[0]: contains '.'"},
            {NULL, "bytes long, the limit is 64"},
            {NULL, "is nested deeper than 30 levels"},
        };

        raw1 = raw_copy(s, "pump-1", &l1);
        before = stats_of(s);
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            struct op o = {.kind = OP_DESIRED,
                           .id = "pump-1",
                           .json = bad[i].json ? bad[i].json
                                   : i == 4    ? json
                                               : deep,
                           .now = 4000,
                           .commit_anyway = true};

            CHECK_INT(run(s, &o), -EINVAL);
            CHECK_HAS(o.err, bad[i].reason);
        }
    }
    /* non-string keys and ext values, in msgpack */
    {
        static const char *const hex[] = {"81 01 02", "81 a1 61 d4 05 aa"};

        for (size_t i = 0; i < 2; i++) {
            unsigned char b[16];
            size_t n = unhex(hex[i], b);
            msgpack_zone z;
            struct op o = {.kind = OP_DESIRED, .id = "pump-1", .now = 4000, .commit_anyway = true};
            char werr[TWIN_ERR_LEN];

            msgpack_zone_init(&z, 1024);
            CHECK_INT(twin_input_decode(b, n, &DEF, &z, &o.obj, werr), 0);
            CHECK_INT(twin_store_write(s, op_fn, &o, werr), 0);
            CHECK_INT(o.rc, -EINVAL);
            CHECK_HAS(o.err, i == 0 ? "keys must be strings, got int" : "unsupported msgpack ext");
            msgpack_zone_destroy(&z);
        }
    }
    /* a version conflict, and a twin growing beyond max_doc_bytes */
    {
        struct op o = {.kind = OP_DESIRED,
                       .id = "pump-1",
                       .json = "{\"rate\":6}",
                       .lock = true,
                       .expected = 3,
                       .now = 4000,
                       .commit_anyway = true};
        char big[2048];

        CHECK_INT(run(s, &o), -EBUSY);
        CHECK_STR(o.err, "version conflict: twin 'pump-1' is at version 4, not 3");
        twin_store_set_max_doc(s, 400);
        memset(big, 0, sizeof big);
        strcpy(big, "{\"blob\":\"");
        memset(big + strlen(big), 'x', 1000);
        strcat(big, "\"}");
        o.json = big;
        o.lock = false;
        CHECK_INT(run(s, &o), -E2BIG);
        CHECK_HAS(o.err, "twin pump-1 would grow to");
        twin_store_set_max_doc(s, 256u << 10);
    }
    after = stats_of(s);
    raw2 = raw_copy(s, "pump-1", &l2);
    CHECK(raw1 && raw2 && l1 == l2 && !memcmp(raw1, raw2, l1));
    CHECK_INT(after.last_txn, before.last_txn); /* ten commits that wrote nothing */
    CHECK_INT(after.outbox, before.outbox);
    CHECK_INT(doc_info(s, "pump-1").version, 4);

    /* max_twins applies to twins created by desired state */
    twin_store_set_limits(s, 1, 300000);
    {
        struct op o = {.kind = OP_DESIRED, .id = "pump-2", .json = "{\"a\":1}", .now = 5000};

        CHECK_INT(run(s, &o), -E2BIG);
        CHECK_STR(o.err, "store holds 1 twins, limits.max_twins 1; desired state for new twin "
                         "'pump-2' refused");
        CHECK_INT(doc_info(s, "pump-2").rc, -ENOENT);
    }
    twin_store_set_limits(s, 0, 300000);

    /* argument checks */
    {
        struct op o = {.kind = OP_DESIRED, .id = "", .json = "{}", .now = 1};

        CHECK_INT(run(s, &o), -EINVAL);
    }
    twin_store_close(s);
out:
    free(raw1);
    free(raw2);
    tmp_remove(dir);
}

/* Optimistic locking: a table of (twin at version, expected) -> accepted or 409, nothing
 * changed on 409. A missing twin counts as version 0. */
static void test_desired_version(void)
{
    static const struct {
        uint64_t at; /* 0: no twin */
        bool lock;
        uint64_t expected;
        int rc;
        uint64_t after;
        const char *reason;
    } cases[] = {
        {3, true, 3, 0, 4, NULL},
        {3, false, 0, 0, 4, NULL},
        {3, true, 2, -EBUSY, 3, "version conflict: twin 'v' is at version 3, not 2"},
        {3, true, 4, -EBUSY, 3, "version conflict: twin 'v' is at version 3, not 4"},
        {3, true, 0, -EBUSY, 3, "is at version 3, not 0"},
        {0, true, 0, 0, 1, NULL},
        {0, false, 0, 0, 1, NULL},
        {0, true, 1, -EBUSY, 0, "version conflict: no twin 'v', expected version 1"},
        {1ull << 40, true, 1ull << 40, 0, (1ull << 40) + 1, NULL},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[64];
        struct twin_store *s;
        struct op o = {.kind = OP_DESIRED,
                       .id = "v",
                       .json = "{\"x\":1}",
                       .lock = cases[i].lock,
                       .expected = cases[i].expected,
                       .now = 10,
                       .commit_anyway = true};
        struct twin_stats before, after;

        tmp_make(dir, sizeof dir);
        s = store_open(dir, 0, 0, 10, false);
        if (!s) {
            tmp_remove(dir);
            continue;
        }
        if (cases[i].at)
            seed(s, "v", "{\"x\":0}", "{}", cases[i].at);
        before = stats_of(s);
        CHECK_INT(run(s, &o), cases[i].rc);
        after = stats_of(s);
        if (cases[i].reason)
            CHECK_HAS(o.err, cases[i].reason);
        if (cases[i].rc) {
            CHECK_INT(after.last_txn, before.last_txn);
            CHECK_INT(after.twins, before.twins);
            CHECK_INT(after.outbox, before.outbox);
            CHECK_INT(doc_info(s, "v").rc, cases[i].at ? 0 : -ENOENT);
        } else {
            CHECK_INT(o.dres.version, cases[i].after);
        }
        if (cases[i].at)
            CHECK_INT(doc_info(s, "v").version, cases[i].after);
        twin_store_close(s);
        tmp_remove(dir);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Delta
 * ------------------------------------------------------------------------------------------ */

static void test_delta_compute(void)
{
    static const struct {
        const char *desired, *reported, *delta;
    } cases[] = {
        {"{}", "{}", "null"},
        {"null", "{\"a\":1}", "null"},
        {"{\"a\":1}", "null", "{\"a\":1}"},
        {"{\"a\":1}", "{}", "{\"a\":1}"},
        {"{\"a\":1}", "{\"a\":1}", "null"},
        {"{\"a\":1}", "{\"a\":1.0}", "null"}, /* numerically equal */
        {"{\"a\":1}", "{\"a\":2}", "{\"a\":1}"},
        {"{\"a\":1}", "{\"a\":\"1\"}", "{\"a\":1}"},
        {"{\"a\":true}", "{\"a\":false}", "{\"a\":true}"},
        {"{\"a\":1}", "{\"a\":1,\"b\":2}", "null"}, /* reported extras are not the device's to do */
        {"{\"a\":1,\"b\":2,\"c\":3}", "{\"b\":2}", "{\"a\":1,\"c\":3}"},
        /* nested maps: the path from the root */
        {"{\"a\":{\"b\":1,\"c\":2}}", "{\"a\":{\"b\":1,\"c\":3}}", "{\"a\":{\"c\":2}}"},
        {"{\"a\":{\"b\":{\"c\":{\"d\":1,\"e\":2}}}}", "{\"a\":{\"b\":{\"c\":{\"d\":1,\"e\":3}}}}",
         "{\"a\":{\"b\":{\"c\":{\"e\":2}}}}"},
        {"{\"a\":{\"b\":1},\"x\":{\"y\":2}}", "{\"a\":{\"b\":1},\"x\":{\"y\":2}}", "null"},
        /* arrays compare and copy whole */
        {"{\"a\":[1,2,3]}", "{\"a\":[1,2]}", "{\"a\":[1,2,3]}"},
        {"{\"a\":[1,2,3]}", "{\"a\":[1,2,4]}", "{\"a\":[1,2,3]}"},
        {"{\"a\":[1,2,3]}", "{\"a\":[1,2,3]}", "null"},
        {"{\"a\":[{\"b\":1}]}", "{\"a\":[{\"b\":1}]}", "null"},
        {"{\"a\":[{\"b\":1},2]}", "{\"a\":[{\"b\":2},2]}", "{\"a\":[{\"b\":1},2]}"},
        {"{\"a\":[]}", "{}", "{\"a\":[]}"},
        /* type changes: a map against a scalar or an array takes the whole desired subtree */
        {"{\"a\":{\"b\":1,\"c\":{\"d\":2}}}", "{\"a\":5}", "{\"a\":{\"b\":1,\"c\":{\"d\":2}}}"},
        {"{\"a\":{\"b\":1}}", "{\"a\":[1]}", "{\"a\":{\"b\":1}}"},
        {"{\"a\":{\"b\":1}}", "{}", "{\"a\":{\"b\":1}}"},
        {"{\"a\":5}", "{\"a\":{\"b\":1}}", "{\"a\":5}"},
        {"{\"a\":[1]}", "{\"a\":{\"0\":1}}", "{\"a\":[1]}"},
        /* an empty map asks for nothing */
        {"{\"a\":{}}", "{}", "null"},
        {"{\"a\":{\"b\":{},\"c\":1}}", "{}", "{\"a\":{\"c\":1}}"},
        {"{\"a\":{\"b\":{}}}", "{\"a\":3}", "null"},
    };
    msgpack_zone z;
    msgpack_object out;

    msgpack_zone_init(&z, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_object d = V(&z, cases[i].desired), r = V(&z, cases[i].reported);
        char before_d[512], before_r[512];

        snprintf(before_d, sizeof before_d, "%s", TJ(&d));
        snprintf(before_r, sizeof before_r, "%s", TJ(&r));
        CHECK_INT(twin_delta_compute(&z, &d, &r, &out), 0);
        if (strcmp(TJ(&out), cases[i].delta))
            FAIL("case %zu: delta of %s against %s is %s, expected %s", i, cases[i].desired,
                 cases[i].reported, TJ(&out), cases[i].delta);
        CHECK(strcmp(cases[i].delta, "null") ? out.type == MSGPACK_OBJECT_MAP
                                             : out.type == MSGPACK_OBJECT_NIL);
        CHECK_STR(TJ(&d), before_d);
        CHECK_STR(TJ(&r), before_r);
    }

    /* large maps take the hashed lookup: the same answer */
    {
        char *dj = malloc(20000), *rj = malloc(20000);
        size_t dn = 0, rn = 0;

        dn += (size_t)sprintf(dj + dn, "{");
        rn += (size_t)sprintf(rj + rn, "{");
        for (int i = 0; i < 400; i++) {
            dn += (size_t)sprintf(dj + dn, "%s\"k%d\":%d", i ? "," : "", i, i);
            /* reported in reverse order; every 7th differs, every 50th missing */
            if ((399 - i) % 50)
                rn += (size_t)sprintf(rj + rn, "%s\"k%d\":%d", rn > 1 ? "," : "", 399 - i,
                                      (399 - i) % 7 ? 399 - i : -1);
        }
        sprintf(dj + dn, "}");
        sprintf(rj + rn, "}");
        {
            msgpack_object d = V(&z, dj), r = V(&z, rj);
            int expect = 0;

            CHECK_INT(twin_delta_compute(&z, &d, &r, &out), 0);
            for (int i = 0; i < 400; i++) {
                char k[16];
                int kl = sprintf(k, "k%d", i);
                bool in = i % 7 == 0 || i % 50 == 0;

                expect += in;
                CHECK(!!twin_value_get(&out, k, (size_t)kl) == in);
            }
            CHECK_INT(out.via.map.size, expect);
        }
        free(dj);
        free(rj);
    }

    /* not maps */
    {
        msgpack_object a = V(&z, "[1]"), m = V(&z, "{}");

        CHECK_INT(twin_delta_compute(&z, &a, &m, &out), -EINVAL);
        CHECK_INT(twin_delta_compute(&z, &m, &a, &out), -EINVAL);
        CHECK_INT(twin_delta_compute(NULL, &m, &m, &out), -EINVAL);
    }
    msgpack_zone_destroy(&z);
}

/* The stored delta through a sequence of desired changes and telemetry: recomputed by both,
 * the changed flag exactly when it changes, desired never cleared by reported catching up. */
static void test_delta_store(void)
{
    static const struct {
        char kind; /* 't' telemetry, 'd' desired */
        const char *json, *delta;
        bool changed;
    } steps[] = {
        {'t', "{\"hr\":70,\"cfg\":{\"rate\":50,\"mode\":\"a\"},\"leds\":[1,0]}", "null", false},
        {'d', "{\"cfg\":{\"rate\":250}}", "{\"cfg\":{\"rate\":250}}", true},
        {'t', "{\"hr\":71}", "{\"cfg\":{\"rate\":250}}", false},
        {'d', "{\"leds\":[1,1],\"alarm\":{\"hi\":120,\"lo\":40}}",
         "{\"cfg\":{\"rate\":250},\"leds\":[1,1],\"alarm\":{\"hi\":120,\"lo\":40}}", true},
        {'t', "{\"alarm\":{\"hi\":120}}",
         "{\"cfg\":{\"rate\":250},\"leds\":[1,1],\"alarm\":{\"lo\":40}}", true},
        /* arrays whole: a partial report is still a difference */
        {'t', "{\"leds\":[1]}", "{\"cfg\":{\"rate\":250},\"leds\":[1,1],\"alarm\":{\"lo\":40}}",
         false},
        {'t', "{\"cfg\":{\"rate\":250.0}}", "{\"leds\":[1,1],\"alarm\":{\"lo\":40}}", true},
        /* caught up: the delta empties, desired stays */
        {'t', "{\"leds\":[1,1],\"alarm\":{\"lo\":40}}", "null", true},
        {'t', "{\"hr\":72}", "null", false},
        /* a reported leaf deleted: back in the delta */
        {'t', "{\"alarm\":{\"lo\":null}}", "{\"alarm\":{\"lo\":40}}", true},
        /* reported turns a map into a scalar: the whole desired subtree */
        {'t', "{\"alarm\":5}", "{\"alarm\":{\"hi\":120,\"lo\":40}}", true},
        /* desired deletes what is left over */
        {'d', "{\"alarm\":null}", "null", true},
        {'d', "{\"hr\":72}", "null", false},
        {'d', "{\"mode\":{\"x\":{}}}", "null", false},
        {'d', "{\"cfg\":{\"mode\":\"b\"}}", "{\"cfg\":{\"mode\":\"b\"}}", true},
        {'t', "{\"cfg\":null}", "{\"cfg\":{\"rate\":250,\"mode\":\"b\"}}", true},
        {'t', "{\"cfg\":{\"rate\":250,\"mode\":\"b\"}}", "null", true},
    };
    char dir[64];
    struct twin_store *s;
    uint64_t version = 0, v = 0;
    struct docinfo d;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct op o = {.kind = steps[i].kind == 't' ? OP_TELE : OP_DESIRED,
                       .id = "dev",
                       .json = steps[i].json,
                       .now = 1000 + (int64_t)i};
        bool changed;

        if (run(s, &o)) {
            FAIL("step %zu: %s", i, o.err);
            continue;
        }
        changed = steps[i].kind == 't' ? o.tres.delta_changed : o.dres.delta_changed;
        if (changed != steps[i].changed)
            FAIL("step %zu (%s): delta_changed %d", i, steps[i].json, changed);
        CHECK_STR(delta_of(s, "dev", &v), steps[i].delta);
        CHECK_INT(v, ++version);
        CHECK_INT(steps[i].kind == 't' ? o.tres.version : o.dres.version, version);
    }
    d = doc_info(s, "dev");
    CHECK_STR(
        d.desired,
        "{\"cfg\":{\"rate\":250,\"mode\":\"b\"},\"leds\":[1,1],\"hr\":72,\"mode\":{\"x\":{}}}");
    CHECK_STR(d.delta, "null");
    CHECK_STR(
        d.meta_desired,
        "{\"cfg\":{\"rate\":1001,\"mode\":1014},\"leds\":1003,\"hr\":1012,\"mode\":{\"x\":{}}}");

    /* a duplicate telemetry message changes nothing, the delta flag included */
    {
        struct op o = {.kind = OP_TELE, .id = "dev", .json = "{\"seq\":5,\"hr\":1}", .now = 2000};

        CHECK_INT(run(s, &o), 0);
        CHECK(o.tres.delta_changed);
        o.json = "{\"seq\":5,\"hr\":72}";
        CHECK_INT(run(s, &o), 0);
        CHECK(o.tres.outcome == TWIN_DUPLICATE && !o.tres.delta_changed);
        CHECK_STR(delta_of(s, "dev", NULL), "{\"hr\":72}");
    }
    /* telemetry on a twin with no desired state never reports a delta change */
    {
        struct op o = {.kind = OP_TELE, .id = "plain", .json = "{\"a\":1}", .now = 1};

        CHECK_INT(run(s, &o), 0);
        CHECK(!o.tres.delta_changed);
        o.json = "{\"a\":{\"b\":2}}";
        CHECK_INT(run(s, &o), 0);
        CHECK(!o.tres.delta_changed);
        CHECK_STR(delta_of(s, "plain", NULL), "null");
    }
    CHECK_HAS(delta_of(s, "nobody", NULL), "no twin 'nobody'");
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* ---------------------------------------------------------------------------------------------
 * Versions, presence, deletion
 * ------------------------------------------------------------------------------------------ */

/* One twin through every kind of change: each committed change is +1, refusals and duplicates
 * are +0, and a twin deleted and created again (by any of the three ways) continues the count. */
static void test_versions(void)
{
    static const struct {
        enum op_kind kind;
        const char *json; /* telemetry, patch */
        bool online;
        bool lock;
        uint64_t expected;
        int rc;
        uint64_t version; /* the twin's after the step; 0: it does not exist */
        bool created;
    } steps[] = {
        {OP_TELE, "{\"seq\":1,\"hr\":70}", false, false, 0, 0, 1, true},
        {OP_TELE, "{\"seq\":1,\"hr\":71}", false, false, 0, 0, 1, false}, /* duplicate */
        {OP_DESIRED, "{\"rate\":5}", false, false, 0, 0, 2, false},
        {OP_PRESENCE, NULL, true, false, 0, 0, 3, false},
        {OP_DESIRED, "{\"rate\":6}", false, true, 2, -EBUSY, 3, false},
        {OP_DESIRED, "{\"rate\":6}", false, true, 3, 0, 4, false},
        {OP_TELE, "{\"seq\":2,\"hr\":71}", false, false, 0, 0, 5, false},
        {OP_PRESENCE, NULL, false, false, 0, 0, 6, false},
        {OP_PRESENCE, NULL, false, false, 0, 0, 7,
         false}, /* the same state again: still a commit */
        {OP_DELETE, NULL, false, true, 6, -EBUSY, 7, false},
        {OP_DELETE, NULL, false, true, 7, 0, 0, false},
        {OP_DELETE, NULL, false, false, 0, -ENOENT, 0, false},
        {OP_DESIRED, "{\"rate\":7}", false, true, 7, -EBUSY, 0, false},  /* gone: version 0 */
        {OP_PRESENCE, NULL, false, false, 0, -ENOENT, 0, false},         /* an offline will */
        {OP_TELE, "{\"seq\":1,\"hr\":72}", false, false, 0, 0, 8, true}, /* seq starts over */
        {OP_DELETE, NULL, false, false, 0, 0, 0, false},
        {OP_PRESENCE, NULL, true, false, 0, 0, 9, true},
        {OP_DELETE, NULL, false, true, 9, 0, 0, false},
        {OP_DESIRED, "{\"rate\":8}", false, true, 0, 0, 10, true},
        {OP_DESIRED, "{\"rate\":9}", false, true, 10, 0, 11, false},
    };
    char dir[64];
    struct twin_store *s;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct op o = {.kind = steps[i].kind,
                       .id = "twin-v",
                       .json = steps[i].json,
                       .online = steps[i].online,
                       .lock = steps[i].lock,
                       .expected = steps[i].expected,
                       .now = 100 + (int64_t)i,
                       .commit_anyway = true};
        struct twin_stats before = stats_of(s), after;
        struct docinfo d;
        uint64_t v = 0, created_v;
        bool created = false;
        int rc = run(s, &o);

        after = stats_of(s);
        if (rc != steps[i].rc)
            FAIL("step %zu: rc %d, expected %d (%s)", i, rc, steps[i].rc, o.err);
        d = doc_info(s, "twin-v");
        if (steps[i].version)
            CHECK_INT(d.version, steps[i].version);
        else
            CHECK_INT(d.rc, -ENOENT);
        if (rc) {
            CHECK_INT(after.last_txn, before.last_txn); /* nothing written */
            continue;
        }
        switch (steps[i].kind) {
        case OP_TELE:
            v = o.tres.version;
            created = o.tres.created;
            break;
        case OP_DESIRED:
            v = o.dres.version;
            created = o.dres.created;
            break;
        case OP_PRESENCE:
            v = o.pres.version;
            created = o.pres.created;
            break;
        default:
            v = o.delres.version;
            break;
        }
        if (steps[i].kind == OP_DELETE) {
            /* the tombstone holds the last version, the outbox the deletion to publish */
            struct twin_txn *t;
            char err[TWIN_ERR_LEN];
            struct outbox_seen ob = outbox_of(s);

            CHECK_INT(twin_store_read_begin(s, &t, err), 0);
            CHECK_INT(twin_tombstone_get(t, "twin-v", 6, &created_v, err), 0);
            CHECK_INT(created_v, v);
            twin_store_read_end(t);
            CHECK(ob.n == 1 && ob.versions[0] == v);
            CHECK_INT(after.tombstones, 1);
        } else {
            CHECK_INT(v, steps[i].version);
            if (created != steps[i].created)
                FAIL("step %zu: created %d", i, created);
            CHECK_INT(after.tombstones, 0); /* gone once the twin is back */
            CHECK_INT(outbox_of(s).versions[0], v);
        }
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

static void test_presence(void)
{
    static const struct {
        bool online;
        int rc;
        bool created, changed, connected;
        uint64_t version;
    } steps[] = {
        {true, 0, true, true, true, 1},    {true, 0, false, false, true, 2},
        {false, 0, false, true, false, 3}, {false, 0, false, false, false, 4},
        {true, 0, false, true, true, 5},
    };
    char dir[64];
    struct twin_store *s;
    struct docinfo d;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;

    /* offline for a twin that does not exist creates nothing */
    {
        struct op o = {.kind = OP_PRESENCE, .id = "ghost", .online = false, .now = 5};

        CHECK_INT(run(s, &o), -ENOENT);
        CHECK_INT(doc_info(s, "ghost").rc, -ENOENT);
        CHECK_INT(stats_of(s).twins, 0);
    }
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct op o = {.kind = OP_PRESENCE,
                       .id = "dev-p",
                       .online = steps[i].online,
                       .now = 1000 * (int64_t)(i + 1)};

        CHECK_INT(run(s, &o), steps[i].rc);
        CHECK(o.pres.created == steps[i].created);
        if (o.pres.changed != steps[i].changed)
            FAIL("step %zu: changed %d", i, o.pres.changed);
        CHECK_INT(o.pres.version, steps[i].version);
        d = doc_info(s, "dev-p");
        CHECK(d.connected == steps[i].connected);
        CHECK_INT(d.last_seen, 1000 * (int64_t)(i + 1));
        CHECK_INT(d.created, 1000);
        CHECK_INT(outbox_of(s).versions[0], steps[i].version);
    }

    /* presence touches nothing else: reported, desired, delta, history stay */
    {
        struct op o = {.kind = OP_DESIRED, .id = "dev-p", .json = "{\"x\":1}", .now = 7000};
        struct op t = {.kind = OP_TELE, .id = "dev-p", .json = "{\"y\":2}", .now = 7001};
        struct op p = {.kind = OP_PRESENCE, .id = "dev-p", .online = false, .now = 7002};
        struct docinfo before;

        CHECK_INT(run(s, &o), 0);
        CHECK_INT(run(s, &t), 0);
        before = doc_info(s, "dev-p");
        CHECK_INT(run(s, &p), 0);
        d = doc_info(s, "dev-p");
        CHECK_STR(d.reported, before.reported);
        CHECK_STR(d.desired, before.desired);
        CHECK_STR(d.delta, "{\"x\":1}");
        CHECK_STR(d.meta_desired, before.meta_desired);
        CHECK_INT(d.version, before.version + 1);
        CHECK_INT(history_of(s, "dev-p", "y", 0).n, 1);
    }

    /* max_twins: online for a new twin is refused like telemetry */
    twin_store_set_limits(s, 1, 300000);
    {
        struct op o = {.kind = OP_PRESENCE, .id = "dev-q", .online = true, .now = 8000};

        CHECK_INT(run(s, &o), -E2BIG);
        CHECK_HAS(o.err, "presence for new twin 'dev-q' refused");
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Deleting a twin takes its history and commands, and only its own (ids that share a prefix
 * are other twins), keeps a tombstone, and refuses a wrong version with nothing changed. */
static void test_delete(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_stats st;
    const char *ab1;
    int rc;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    for (int i = 0; i < 3; i++) {
        struct op a = {.kind = OP_TELE,
                       .id = "a",
                       .json = "{\"hr\":70,\"v\":{\"x\":1,\"y\":2}}",
                       .now = 100 + i};
        struct op ab = {.kind = OP_TELE, .id = "ab", .json = "{\"hr\":70}", .now = 100 + i};
        struct op a0 = {.kind = OP_TELE, .id = "a0", .json = "{\"hr\":70}", .now = 100 + i};

        CHECK_INT(run(s, &a), 0);
        CHECK_INT(run(s, &ab), 0);
        CHECK_INT(run(s, &a0), 0);
    }
    add_cmd(s, "a", "c1", 5000, 200, NULL);
    add_cmd(s, "a", "c2", 0, 200, NULL);
    ab1 = add_cmd(s, "ab", "c3", 5000, 200, NULL);
    add_cmd(s, "a0", "c4", 6000, 200, NULL);
    st = stats_of(s);
    CHECK_INT(st.history_series, 5);
    CHECK_INT(st.commands, 4);

    {
        struct op o = {
            .kind = OP_DELETE, .id = "a", .lock = true, .expected = 2, .commit_anyway = true};

        CHECK_INT(run(s, &o), -EBUSY);
        CHECK_STR(o.err, "version conflict: twin 'a' is at version 3, not 2");
        CHECK_INT(stats_of(s).last_txn, st.last_txn);
        o.expected = 3;
        CHECK_INT(run(s, &o), 0);
        CHECK_INT(o.delres.version, 3);
        CHECK_INT(o.delres.history_series, 3);
        CHECK_INT(o.delres.commands, 2);
    }
    st = stats_of(s);
    CHECK_INT(st.twins, 2);
    CHECK_INT(st.history_series, 2);
    CHECK_INT(st.commands, 2);
    CHECK_INT(st.tombstones, 1);
    CHECK_INT(history_of(s, "a", "hr", 0).n, 0);
    CHECK_INT(history_of(s, "ab", "hr", 0).n, 3);
    CHECK_INT(history_of(s, "a0", "hr", 0).n, 3);
    CHECK_STR(cmds_of(s, "a", NULL), "");
    CHECK_STR(cmds_of(s, "ab", NULL), "c3:queued");
    CHECK_STR(cmds_of(s, "a0", NULL), "c4:queued");
    CHECK_STR(cmd_get(s, "ab", ab1, NULL, NULL), "queued");

    /* the deleted twin's deadlines went with it: only the others expire */
    {
        struct op x = {.kind = OP_EXPIRE, .now = 10000};

        CHECK_INT(run(s, &x), 0);
        CHECK_STR(x.ev.text, "ab/c3:queued>expired a0/c4:queued>expired");
    }
    /* a command for a deleted twin is refused */
    {
        struct op c = {.kind = OP_CMD_ADD, .id = "a", .cmd = "c5", .now = 300};

        CHECK_INT(run(s, &c), -ENOENT);
        CHECK_STR(c.err, "no twin 'a'");
    }
    /* created again: history starts empty, the version continues */
    {
        struct op o = {.kind = OP_TELE, .id = "a", .json = "{\"seq\":1,\"hr\":80}", .now = 400};
        struct twin_txn *t;
        uint64_t v;

        CHECK_INT(run(s, &o), 0);
        CHECK(o.tres.created);
        CHECK_INT(o.tres.version, 4);
        CHECK_INT(history_of(s, "a", "hr", 0).n, 1);
        CHECK_INT(twin_store_read_begin(s, &t, err), 0);
        CHECK_INT(twin_tombstone_get(t, "a", 1, &v, err), -ENOENT);
        CHECK_INT(twin_tombstone_get(t, "", 0, &v, err), -EINVAL);
        twin_store_read_end(t);
    }
    /* a read transaction cannot delete */
    {
        struct twin_txn *t;
        struct twin_delete_result r;

        CHECK_INT(twin_store_read_begin(s, &t, err), 0);
        rc = twin_delete(t, "a", 1, TWIN_VERSION_ANY, &r, err);
        CHECK_INT(rc, -EINVAL);
        twin_store_read_end(t);
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* ---------------------------------------------------------------------------------------------
 * Command queue
 * ------------------------------------------------------------------------------------------ */

static void test_command_states(void)
{
    static const struct {
        const char *name;
        enum twin_command_state st;
        bool final;
    } names[] = {
        {"queued", TWIN_CMD_QUEUED, false},       {"sent", TWIN_CMD_SENT, false},
        {"delivered", TWIN_CMD_DELIVERED, false}, {"succeeded", TWIN_CMD_SUCCEEDED, true},
        {"failed", TWIN_CMD_FAILED, true},        {"expired", TWIN_CMD_EXPIRED, true},
    };
    enum twin_command_state st;

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        CHECK_STR(twin_command_state_name(names[i].st), names[i].name);
        CHECK_INT(twin_command_state_parse(names[i].name, strlen(names[i].name), &st), 0);
        CHECK_INT(st, names[i].st);
        CHECK(twin_command_state_final(names[i].st) == names[i].final);
    }
    CHECK_STR(twin_command_state_name(TWIN_CMD_NONE), "none");
    CHECK_STR(twin_command_state_name((enum twin_command_state)42), "unknown");
    CHECK_INT(twin_command_state_parse("none", 4, &st), -EINVAL);
    CHECK_INT(twin_command_state_parse("sen", 3, &st), -EINVAL);
    CHECK_INT(twin_command_state_parse("sentx", 5, &st), -EINVAL);
    CHECK_INT(twin_command_state_parse("Sent", 4, &st), -EINVAL);
}

/* Every transition a device or the hub can ask for, from every state it can be asked in. */
static void test_command_transitions(void)
{
    static const struct {
        const char *path; /* steps before: sent, delivered, succeeded, failed, expire */
        const char *ack;  /* "sent" (mark_sent) or an ack status */
        int rc;
        const char *state, *events, *reason;
    } cases[] = {
        /* forward */
        {"", "sent", 0, "sent", "d/c:queued>sent", NULL},
        {"sent", "sent", 0, "sent", "", NULL}, /* a re-send: attempts 2, no state change */
        {"", "delivered", 0, "delivered", "d/c:queued>delivered", NULL},
        {"", "succeeded", 0, "succeeded", "d/c:queued>succeeded", NULL},
        {"sent", "delivered", 0, "delivered", "d/c:sent>delivered", NULL},
        {"sent", "succeeded", 0, "succeeded", "d/c:sent>succeeded", NULL},
        {"sent", "failed", 0, "failed", "d/c:sent>failed", NULL},
        {"sent delivered", "succeeded", 0, "succeeded", "d/c:delivered>succeeded", NULL},
        {"sent delivered", "failed", 0, "failed", "d/c:delivered>failed", NULL},
        /* duplicates: nothing changes, no event */
        {"sent delivered", "delivered", 0, "delivered", "", NULL},
        {"sent delivered succeeded", "succeeded", 0, "succeeded", "", NULL},
        {"sent failed", "failed", 0, "failed", "", NULL},
        /* back, or out of a final state */
        {"sent delivered succeeded", "delivered", -EPERM, "succeeded", "",
         "is succeeded; an ack 'delivered' cannot change it"},
        {"sent succeeded", "failed", -EPERM, "succeeded", "",
         "is succeeded; an ack 'failed' cannot change it"},
        {"sent failed", "succeeded", -EPERM, "failed", "", "is failed; an ack 'succeeded'"},
        {"sent failed", "delivered", -EPERM, "failed", "", "is failed; an ack 'delivered'"},
        {"expire", "delivered", -EPERM, "expired", "", "is expired; an ack 'delivered'"},
        {"sent expire", "succeeded", -EPERM, "expired", "", "is expired; an ack 'succeeded'"},
        {"sent delivered", "sent", -EPERM, "delivered", "", "is delivered; it is not sent again"},
        {"sent succeeded", "sent", -EPERM, "succeeded", "", "is succeeded; it is not sent again"},
        {"expire", "sent", -EPERM, "expired", "", "is expired; it is not sent again"},
        /* not an ack status */
        {"sent", "queued", -EINVAL, "sent", "",
         "ack status must be delivered, succeeded or failed, not queued"},
        {"sent", "expired", -EINVAL, "sent", "", "not expired"},
        {"sent", "bogus", -EINVAL, "sent", "", "not unknown"},
    };
    char dir[64];
    struct twin_store *s;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[64], *save = NULL;
        const char *id = add_cmd(s, "d", "c", 1000 + 10 * (int64_t)i, 10 * (int64_t)i, NULL);
        struct twin_command before, after;
        struct op o = {.id = "d", .cmd = id, .now = 10 * (int64_t)i + 5, .commit_anyway = true};
        int64_t t = 10 * (int64_t)i + 1;

        snprintf(path, sizeof path, "%s", cases[i].path);
        for (char *step = strtok_r(path, " ", &save); step; step = strtok_r(NULL, " ", &save)) {
            struct op p = {.id = "d", .cmd = id, .now = t++};

            if (!strcmp(step, "sent")) {
                p.kind = OP_CMD_SENT;
            } else if (!strcmp(step, "expire")) {
                p.kind = OP_EXPIRE;
                p.now = 1000 + 10 * (int64_t)i;
            } else {
                p.kind = OP_CMD_ACK;
                p.status = step;
            }
            if (run(s, &p))
                FAIL("case %zu: step %s: %s", i, step, p.err);
        }
        cmd_get(s, "d", id, &before, NULL);
        if (!strcmp(cases[i].ack, "sent")) {
            o.kind = OP_CMD_SENT;
        } else {
            o.kind = OP_CMD_ACK;
            o.status = cases[i].ack;
        }
        if (run(s, &o) != cases[i].rc)
            FAIL("case %zu (%s then %s): rc %d, expected %d: %s", i, cases[i].path, cases[i].ack,
                 o.rc, cases[i].rc, o.err);
        CHECK_STR(cmd_get(s, "d", id, &after, NULL), cases[i].state);
        CHECK_STR(o.ev.text, cases[i].events);
        if (cases[i].reason)
            CHECK_HAS(o.err, cases[i].reason);
        if (!o.rc && o.kind == OP_CMD_SENT) {
            CHECK_INT(after.attempts, before.attempts + 1);
            CHECK_INT(after.updated, o.now);
        } else if (o.rc || !o.ev.n) {
            /* refused or a duplicate: the record is as it was */
            CHECK_INT(after.updated, before.updated);
            CHECK_INT(after.attempts, before.attempts);
        } else {
            CHECK_INT(after.updated, o.now);
            CHECK_STR(o.state, cases[i].state);
        }
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Adding: what is refused, ids, the record's fields, acks with results, unknown ids. */
static void test_command_add(void)
{
    char dir[64], name65[80], big[TWIN_CMD_ARGS_MAX + 64], deep[512], result[256];
    struct twin_store *s;
    struct twin_stats before, after;
    struct twin_command c;
    const char *id1, *id2;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    make_twin(s, "e", 1);
    memset(name65, 'n', 65);
    name65[65] = '\0';
    snprintf(big, sizeof big, "{\"blob\":\"");
    memset(big + strlen(big), 'x', TWIN_CMD_ARGS_MAX);
    strcpy(big + strlen("{\"blob\":\"") + TWIN_CMD_ARGS_MAX, "\"}");
    deep[0] = '\0';
    for (int i = 0; i < 31; i++)
        strcat(deep, "[");
    for (int i = 0; i < 31; i++)
        strcat(deep, "]");
    {
        static const struct {
            const char *id, *cmd, *args;
            int64_t expires, now;
            int rc;
            const char *reason;
        } bad[] = {
            {"d", "", NULL, 0, 10, -EINVAL, "command name must be 1..64 bytes"},
            {"d", NULL, NULL, 0, 10, -EINVAL, "command name must be 1..64 bytes"},
            {"d", "x", NULL, 0, 10, -EINVAL, NULL}, /* name65, set below */
            {"d", "a\tb", NULL, 0, 10, -EINVAL, "control byte 0x09"},
            {"d", "x", NULL, 10, 10, -EINVAL, "command deadline 10 is not after now 10"},
            {"d", "x", NULL, 5, 10, -EINVAL, "is not after now"},
            {"d", "x", NULL, 0, -1, -EINVAL, "now_ms -1 is negative"},
            {"d", "x", "big", 0, 10, -E2BIG, "command args of 16"},
            {"d", "x", "deep", 0, 10, -EINVAL, "command args nested deeper than 30 levels"},
            {"nobody", "x", NULL, 0, 10, -ENOENT, "no twin 'nobody'"},
            {"", "x", NULL, 0, 10, -EINVAL, "twin id must be"},
        };

        before = stats_of(s);
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            struct op o = {.kind = OP_CMD_ADD,
                           .id = bad[i].id,
                           .cmd = i == 2 ? name65 : bad[i].cmd,
                           .expires = bad[i].expires,
                           .now = bad[i].now,
                           .commit_anyway = true};

            if (bad[i].args)
                o.json = !strcmp(bad[i].args, "big") ? big : deep;
            if (run(s, &o) != bad[i].rc)
                FAIL("case %zu: rc %d: %s", i, o.rc, o.err);
            if (bad[i].reason)
                CHECK_HAS(o.err, bad[i].reason);
            CHECK_INT(o.ev.n, 0);
        }
        after = stats_of(s);
        CHECK_INT(after.last_txn, before.last_txn);
        CHECK_INT(after.commands, 0);
    }

    /* ids: 16 hex digits from a store-wide counter, in order across twins */
    {
        struct op o = {.kind = OP_CMD_ADD,
                       .id = "d",
                       .cmd = "set.rate",
                       .json = "{\"hz\":250,\"ramp\":[1,2]}",
                       .expires = 5000,
                       .now = 100};

        CHECK_INT(run(s, &o), 0);
        CHECK_STR(o.cmd_id, "0000000000000001");
        CHECK_STR(o.state, "queued");
        CHECK_STR(o.ev.text, "d/set.rate:none>queued");
    }
    id1 = "0000000000000001";
    id2 = add_cmd(s, "e", "reboot", 0, 101, NULL);
    CHECK_STR(id2, "0000000000000002");
    CHECK_STR(add_cmd(s, "d", "x", 0, 102, NULL), "0000000000000003");
    CHECK_STR(cmd_get(s, "d", id1, &c, NULL), "queued");
    CHECK_INT(c.created, 100);
    CHECK_INT(c.updated, 100);
    CHECK_INT(c.expires, 5000);
    CHECK_INT(c.attempts, 0);
    CHECK_INT(c.drop, 0);
    CHECK_STR(c.id, id1);
    {
        struct twin_txn *t;
        struct twin_command tc;
        char err[TWIN_ERR_LEN];

        CHECK_INT(twin_store_read_begin(s, &t, err), 0);
        CHECK_INT(twin_command_get(t, "d", 1, id1, 16, &tc, err), 0);
        CHECK_STR(TJ(&tc.args), "{\"hz\":250,\"ramp\":[1,2]}");
        CHECK(tc.cmd_len == 8 && !memcmp(tc.cmd, "set.rate", 8));
        CHECK(tc.twin_id_len == 1 && tc.twin_id[0] == 'd');
        CHECK_INT(twin_command_get(t, "e", 1, id2, 16, &tc, err), 0);
        CHECK(tc.args.type == MSGPACK_OBJECT_NIL && tc.result.type == MSGPACK_OBJECT_NIL);
        /* unknown, malformed, or another twin's */
        CHECK_INT(twin_command_get(t, "d", 1, id2, 16, &tc, err), -ENOENT);
        CHECK_STR(err, "no command 0000000000000002 for twin 'd'");
        CHECK_INT(twin_command_get(t, "d", 1, "0000000000000999", 16, &tc, err), -ENOENT);
        CHECK_INT(twin_command_get(t, "d", 1, "000000000000001", 15, &tc, err), -ENOENT);
        CHECK_INT(twin_command_get(t, "d", 1, "000000000000000A", 16, &tc, err), -ENOENT);
        CHECK_INT(twin_command_get(t, "d", 1, "0000000000000000", 16, &tc, err), -ENOENT);
        CHECK_INT(twin_command_get(t, "d", 1, "xyz", 3, &tc, err), -ENOENT);
        CHECK_STR(err, "no command 'xyz' for twin 'd' (ids are 16 hex digits)");
        CHECK_INT(twin_command_get(t, "d", 1, "", 0, &tc, err), -EINVAL);
        /* writes need a write transaction */
        CHECK_INT(twin_command_add(t, "d", 1, "x", 1, NULL, 0, 1, NULL, NULL, NULL, err), -EINVAL);
        twin_store_read_end(t);
    }

    /* acks with a result; the result is bounded like args */
    {
        struct op o = {.kind = OP_CMD_ACK,
                       .id = "d",
                       .cmd = id1,
                       .status = "succeeded",
                       .json = big,
                       .now = 200,
                       .commit_anyway = true};

        CHECK_INT(run(s, &o), -E2BIG);
        CHECK_HAS(o.err, "command result of");
        o.json = "{\"applied\":250,\"ok\":true}";
        CHECK_INT(run(s, &o), 0);
        CHECK_STR(cmd_get(s, "d", id1, &c, result), "succeeded");
        CHECK_STR(result, "{\"applied\":250,\"ok\":true}");
        CHECK_INT(c.drop, 200 + 86400000); /* the default retention */
        o.cmd = "0000000000000999";
        CHECK_INT(run(s, &o), -ENOENT);
        o.id = "e"; /* d's command acked on e's topic */
        o.cmd = id1;
        CHECK_INT(run(s, &o), -ENOENT);
    }
    CHECK_STR(cmds_of(s, "d", NULL), "set.rate:succeeded x:queued");
    CHECK_STR(cmds_of(s, "e", NULL), "reboot:queued");
    CHECK_STR(cmds_of(s, "nobody", NULL), "");
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* The per-device cap: finished commands make room first, silently; then the oldest pending
 * one expires, with an event. Other devices are not touched. */
static void test_command_cap(void)
{
    char dir[64], ev[2048];
    struct twin_store *s;
    const char *c2, *c3;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    make_twin(s, "e", 1);
    twin_store_set_command_limits(s, 3, 86400000);
    add_cmd(s, "d", "c1", 1000, 10, ev);
    CHECK_STR(ev, "d/c1:none>queued");
    c2 = add_cmd(s, "d", "c2", 1000, 11, NULL);
    c3 = add_cmd(s, "d", "c3", 0, 12, NULL);
    add_cmd(s, "e", "e1", 1000, 12, NULL);
    add_cmd(s, "d", "c4", 1000, 13, ev);
    CHECK_STR(ev, "d/c1:queued>expired d/c4:none>queued");
    CHECK_STR(cmds_of(s, "d", NULL), "c2:queued c3:queued c4:queued");

    /* a finished command goes first, even when it is not the oldest */
    {
        struct op sent = {.kind = OP_CMD_SENT, .id = "d", .cmd = c2, .now = 14};
        struct op ack = {
            .kind = OP_CMD_ACK, .id = "d", .cmd = c3, .status = "succeeded", .now = 15};

        CHECK_INT(run(s, &sent), 0);
        CHECK_INT(run(s, &ack), 0);
    }
    add_cmd(s, "d", "c5", 1000, 16, ev);
    CHECK_STR(ev, "d/c5:none>queued");
    CHECK_STR(cmds_of(s, "d", NULL), "c2:sent c4:queued c5:queued");
    add_cmd(s, "d", "c6", 1000, 17, ev);
    CHECK_STR(ev, "d/c2:sent>expired d/c6:none>queued");
    CHECK_STR(cmds_of(s, "e", NULL), "e1:queued");

    /* a lowered cap pushes out as many as it takes, oldest first */
    twin_store_set_command_limits(s, 1, 86400000);
    add_cmd(s, "d", "c7", 1000, 18, ev);
    CHECK_STR(ev, "d/c4:queued>expired d/c5:queued>expired d/c6:queued>expired d/c7:none>queued");
    CHECK_STR(cmds_of(s, "d", NULL), "c7:queued");
    CHECK_INT(stats_of(s).commands, 2);

    /* what the cap pushed out has left no deadline behind */
    {
        struct op x = {.kind = OP_EXPIRE, .now = 1000};

        CHECK_INT(run(s, &x), 0);
        CHECK_STR(x.ev.text, "d/c7:queued>expired e/e1:queued>expired");
        CHECK_INT(x.xres.expired, 2);
    }

    /* 0 is the default cap, 100 */
    twin_store_set_command_limits(s, 0, 86400000);
    for (int i = 0; i < 99; i++)
        add_cmd(s, "d", "n", 0, 2000 + i, NULL);
    add_cmd(s, "d", "last", 0, 3000, ev);
    CHECK_STR(ev, "d/last:none>queued"); /* c7 (expired) made room */
    add_cmd(s, "d", "over", 0, 3001, ev);
    CHECK_STR(ev, "d/n:queued>expired d/over:none>queued");
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Expiry by deadline over every device, earliest first; a stuck command (no deadline, or a far
 * one) blocks nothing; finished commands are dropped after the retention. */
static void test_command_expiry(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_txn *t;
    int64_t at = 0;
    const char *b4, *a6;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    twin_store_set_command_limits(s, 100, 10000);
    make_twin(s, "a", 1);
    make_twin(s, "b", 1);
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_command_next_deadline(t, &at, err), -ENOENT);
    twin_store_read_end(t);

    add_cmd(s, "a", "a1", 1000, 10, NULL);
    add_cmd(s, "a", "a2", 0, 11, NULL); /* no deadline: stuck forever */
    add_cmd(s, "a", "a3", 3000, 12, NULL);
    b4 = add_cmd(s, "b", "b4", 2000, 13, NULL);
    add_cmd(s, "b", "b5", 1000, 14, NULL);
    a6 = add_cmd(s, "a", "a6", 900000000, 15, NULL); /* stuck in sent, far deadline */
    {
        struct op p = {.kind = OP_CMD_SENT, .id = "a", .cmd = a6, .now = 16};

        CHECK_INT(run(s, &p), 0);
    }
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_command_next_deadline(t, &at, err), 0);
    CHECK_INT(at, 1000);
    twin_store_read_end(t);

    {
        static const struct {
            int64_t now;
            unsigned max;
            const char *events;
            uint64_t expired, dropped;
            bool more;
        } passes[] = {
            {999, 0, "", 0, 0, false},
            {1000, 0, "a/a1:queued>expired b/b5:queued>expired", 2, 0, false},
            {1000, 0, "", 0, 0, false},
            {5000, 1, "b/b4:queued>expired", 1, 0, true},
            {5000, 1, "a/a3:queued>expired", 1, 0, false},
            {10999, 0, "", 0, 0, false},
            {11000, 0, "", 0, 2, false}, /* a1, b5 finished at 1000: dropped */
            {15000, 0, "", 0, 2, false}, /* b4, a3 */
            {800000000, 0, "", 0, 0, false},
            {900000000, 0, "a/a6:sent>expired", 1, 0, false},
        };

        for (size_t i = 0; i < sizeof passes / sizeof passes[0]; i++) {
            struct op x = {.kind = OP_EXPIRE, .now = passes[i].now, .max = passes[i].max};

            CHECK_INT(run(s, &x), 0);
            if (strcmp(x.ev.text, passes[i].events))
                FAIL("pass %zu: events \"%s\"", i, x.ev.text);
            CHECK_INT(x.xres.expired, passes[i].expired);
            CHECK_INT(x.xres.dropped, passes[i].dropped);
            CHECK(x.xres.more == passes[i].more);
        }
    }
    CHECK_STR(cmds_of(s, "a", NULL), "a2:queued a6:expired");
    CHECK_STR(cmds_of(s, "b", NULL), "");
    CHECK_STR(cmd_get(s, "b", b4, NULL, NULL), "ENOENT");

    /* acks of expired commands are refused; succeeded ones are dropped after the retention too,
     * and a retention of 0 keeps finished commands (until the cap pushes them out) */
    {
        const char *c = add_cmd(s, "b", "ok", 0, 1000000000, NULL);
        struct op ack = {
            .kind = OP_CMD_ACK, .id = "b", .cmd = c, .status = "succeeded", .now = 1000000001};
        struct op x = {.kind = OP_EXPIRE, .now = 1000010001};

        CHECK_INT(run(s, &ack), 0);
        twin_store_set_command_limits(s, 100, 0);
        c = add_cmd(s, "b", "keep", 0, 1000000002, NULL);
        ack.cmd = c;
        ack.now = 1000000003;
        CHECK_INT(run(s, &ack), 0);
        CHECK_INT(run(s, &x), 0);
        CHECK_INT(x.xres.dropped, 2); /* ok, and a6 (expired at 900000000) */
        CHECK_STR(cmds_of(s, "b", NULL), "keep:succeeded");
        CHECK_STR(cmds_of(s, "a", NULL), "a2:queued");
        x.now = INT64_MAX;
        CHECK_INT(run(s, &x), 0);
        CHECK_INT(x.xres.dropped, 0);
        CHECK_STR(cmds_of(s, "b", NULL), "keep:succeeded");
    }
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_command_next_deadline(t, &at, err), -ENOENT); /* a2 has none, keep has none */
    twin_store_read_end(t);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* The hub's catch-up on `online`, in one transaction: presence, then every queued or sent
 * command marked sent again while the list walks (the callback writes as it goes). */
struct resend {
    struct twin_txn *txn;
    int64_t now;
    int sent, rc;
    struct twin_presence_result pres;
    struct events ev;
};

static int resend_one(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct resend *r = ctx;
    char err[TWIN_ERR_LEN];

    (void)from;
    if (c->state != TWIN_CMD_QUEUED && c->state != TWIN_CMD_SENT)
        return 0;
    r->sent++;
    return twin_command_mark_sent(r->txn, c->twin_id, c->twin_id_len, c->id, strlen(c->id), r->now,
                                  NULL, record_event, &r->ev, err);
}

static int online_fn(struct twin_txn *txn, void *ctx)
{
    struct resend *r = ctx;
    char err[TWIN_ERR_LEN];
    int rc;

    r->txn = txn;
    r->sent = 0;
    memset(&r->ev, 0, sizeof r->ev);
    rc = twin_presence_apply(txn, "d", 1, true, r->now, &r->pres, err);
    if (!rc)
        rc = twin_command_list(txn, "d", 1, resend_one, r, err);
    return rc;
}

static void test_command_resend(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_command c;
    const char *ids[4];
    static const char *const names[] = {"c1", "c2", "c3", "c4"};
    struct resend r = {.now = 100};

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    for (int i = 0; i < 4; i++)
        ids[i] = add_cmd(s, "d", names[i], 0, 10 + i, NULL);
    {
        struct op p = {.kind = OP_CMD_SENT, .id = "d", .now = 20};
        struct op a = {.kind = OP_CMD_ACK, .id = "d", .now = 21};

        for (int i = 1; i < 4; i++) {
            p.cmd = ids[i];
            CHECK_INT(run(s, &p), 0);
        }
        a.cmd = ids[2];
        a.status = "delivered";
        CHECK_INT(run(s, &a), 0);
        a.cmd = ids[3];
        a.status = "succeeded";
        CHECK_INT(run(s, &a), 0);
    }
    CHECK_INT(twin_store_write(s, online_fn, &r, err), 0);
    CHECK_INT(r.sent, 2);
    CHECK_STR(r.ev.text, "d/c1:queued>sent");
    CHECK(r.pres.changed);
    CHECK_STR(cmds_of(s, "d", NULL), "c1:sent c2:sent c3:delivered c4:succeeded");
    CHECK_STR(cmd_get(s, "d", ids[1], &c, NULL), "sent");
    CHECK_INT(c.attempts, 2);
    CHECK_INT(c.updated, 100);
    CHECK(doc_info(s, "d").connected);
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Everything survives a restart: commands in their states, the counter, deadlines, desired
 * state and delta, tombstones. */
static void test_command_restart(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_txn *t;
    const char *c1, *c2;
    char id1[17], id2[17];
    uint64_t v;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    make_twin(s, "gone", 1);
    {
        struct op o = {.kind = OP_DESIRED, .id = "d", .json = "{\"rate\":250}", .now = 2};
        struct op del = {.kind = OP_DELETE, .id = "gone"};

        CHECK_INT(run(s, &o), 0);
        CHECK_INT(run(s, &del), 0);
    }
    c1 = add_cmd(s, "d", "c1", 5000, 10, NULL);
    snprintf(id1, sizeof id1, "%s", c1);
    c2 = add_cmd(s, "d", "c2", 6000, 11, NULL);
    snprintf(id2, sizeof id2, "%s", c2);
    add_cmd(s, "d", "c3", 0, 12, NULL);
    {
        struct op p = {.kind = OP_CMD_SENT, .id = "d", .cmd = id1, .now = 13};

        CHECK_INT(run(s, &p), 0);
    }
    twin_store_close(s);

    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    CHECK_STR(cmds_of(s, "d", NULL), "c1:sent c2:queued c3:queued");
    CHECK_STR(delta_of(s, "d", NULL), "{\"rate\":250}");
    CHECK_STR(add_cmd(s, "d", "c4", 0, 20, NULL), "0000000000000004");
    {
        struct op x = {.kind = OP_EXPIRE, .now = 5500};
        struct op ack = {
            .kind = OP_CMD_ACK, .id = "d", .cmd = id2, .status = "delivered", .now = 5600};

        CHECK_INT(run(s, &x), 0);
        CHECK_STR(x.ev.text, "d/c1:sent>expired");
        CHECK_INT(run(s, &ack), 0);
        CHECK_STR(ack.ev.text, "d/c2:queued>delivered");
    }
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_tombstone_get(t, "gone", 4, &v, err), 0);
    CHECK_INT(v, 1);
    twin_store_read_end(t);
    twin_store_close(s);

    /* and a read-only opener (twinctl) sees the same */
    s = store_open(dir, 0, 0, 10, true);
    if (!s)
        goto out;
    CHECK_STR(cmds_of(s, "d", NULL), "c1:expired c2:delivered c3:queued c4:queued");
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* Damaged records and stale deadline entries (planted through LMDB) hold nothing up: listing
 * reports the others and says what is wrong, expiry skips them, the cap pushes them out. */
static void test_command_damaged(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi cmds, dl;
    unsigned char key[32];
    MDB_val k, v;
    int rc = 0;

    tmp_make(dir, sizeof dir);
    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    add_cmd(s, "d", "c1", 1000, 10, NULL);
    add_cmd(s, "d", "c2", 3000, 10, NULL);
    twin_store_close(s);

    /* plant a garbage record (number 100, after c1 and c2), a deadline for it, and a deadline
     * for a command that does not exist */
    CHECK_INT(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    CHECK_INT(mdb_env_open(env, dir, 0, 0660), 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_INT(mdb_dbi_open(txn, "commands", 0, &cmds), 0);
    CHECK_INT(mdb_dbi_open(txn, "deadlines", 0, &dl), 0);
    memcpy(key, "d\0\0\0\0\0\0\0\0\x64", 10); /* d "\0" be64(100) */
    k.mv_size = 10;
    k.mv_data = key;
    v.mv_size = 3;
    v.mv_data = "\x81\xa1x"; /* a map missing its value */
    CHECK_INT(mdb_put(txn, cmds, &k, &v, 0), 0);
    memcpy(key,
           "\0\0\0\0\0\0\x03\x20"
           "d\0\0\0\0\0\0\0\x64",
           17); /* be64(800) d be64(100) */
    k.mv_size = 17;
    v.mv_size = 0;
    CHECK_INT(mdb_put(txn, dl, &k, &v, 0), 0);
    memcpy(key,
           "\0\0\0\0\0\0\x03\x20"
           "d\0\0\0\0\0\0\0\x65",
           17); /* be64(800) d be64(101) */
    CHECK_INT(mdb_put(txn, dl, &k, &v, 0), 0);
    CHECK_INT(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    CHECK_STR(cmds_of(s, "d", &rc), "c1:queued c2:queued");
    CHECK_INT(rc, -EBADMSG);
    {
        struct twin_txn *t;
        struct cmd_list l = {.n = 0};

        CHECK_INT(twin_store_read_begin(s, &t, err), 0);
        CHECK_INT(twin_command_list(t, "d", 1, collect_cmd, &l, err), -EBADMSG);
        CHECK_STR(err, "command 0000000000000064 of twin 'd': damaged record");
        twin_store_read_end(t);
    }
    {
        struct op x = {.kind = OP_EXPIRE, .now = 1000};

        CHECK_INT(run(s, &x), 0);
        CHECK_STR(x.ev.text, "d/c1:queued>expired");
        CHECK_INT(x.xres.expired, 1);
    }
    /* at the cap the damaged record counts as finished: it goes before the older pending c2
     * (first the finished c1 goes, then the damaged one) */
    twin_store_set_command_limits(s, 3, 86400000);
    {
        char ev[2048];

        add_cmd(s, "d", "c3", 0, 2000, ev);
        CHECK_STR(ev, "d/c3:none>queued");
        CHECK_STR(cmds_of(s, "d", &rc), "c2:queued c3:queued");
        CHECK_INT(rc, -EBADMSG);
        add_cmd(s, "d", "c4", 0, 2001, ev);
        CHECK_STR(ev, "d/c4:none>queued");
        CHECK_STR(cmds_of(s, "d", &rc), "c2:queued c3:queued c4:queued");
        CHECK_INT(rc, 0);
    }
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* A store written before the command queue existed: read-only openers see no commands and no
 * tombstones; the first writer adds the databases. */
static void test_store_without_commands(void)
{
    char dir[64], err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_txn *t;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {6, "schema"}, v = {4, "\x01\x00\x00\x00"};
    struct cmd_list l = {.n = 0};
    int64_t at;
    uint64_t ver;
    struct twin_command c;

    tmp_make(dir, sizeof dir);
    CHECK_INT(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    CHECK_INT(mdb_env_open(env, dir, 0, 0660), 0);
    CHECK_INT(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_INT(mdb_dbi_open(txn, "twins", MDB_CREATE, &dbi), 0);
    CHECK_INT(mdb_dbi_open(txn, "history", MDB_CREATE | MDB_DUPSORT | MDB_DUPFIXED, &dbi), 0);
    CHECK_INT(mdb_dbi_open(txn, "outbox", MDB_CREATE, &dbi), 0);
    CHECK_INT(mdb_dbi_open(txn, "info", MDB_CREATE, &dbi), 0);
    CHECK_INT(mdb_put(txn, dbi, &k, &v, 0), 0);
    CHECK_INT(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    s = store_open(dir, 0, 0, 10, true);
    if (!s)
        goto out;
    CHECK_INT(twin_store_read_begin(s, &t, err), 0);
    CHECK_INT(twin_command_list(t, "d", 1, collect_cmd, &l, err), 0);
    CHECK_INT(l.n, 0);
    CHECK_INT(twin_command_next_deadline(t, &at, err), -ENOENT);
    CHECK_INT(twin_command_get(t, "d", 1, "0000000000000001", 16, &c, err), -ENOENT);
    CHECK_INT(twin_tombstone_get(t, "d", 1, &ver, err), -ENOENT);
    twin_store_read_end(t);
    CHECK_INT(stats_of(s).commands, 0);
    twin_store_close(s);

    s = store_open(dir, 0, 0, 10, false);
    if (!s)
        goto out;
    make_twin(s, "d", 1);
    add_cmd(s, "d", "c", 0, 2, NULL);
    twin_store_close(s);
    s = store_open(dir, 0, 0, 10, true);
    if (!s)
        goto out;
    CHECK_STR(cmds_of(s, "d", NULL), "c:queued");
    twin_store_close(s);
out:
    tmp_remove(dir);
}

/* MDB_MAP_FULL in the middle of desired state and commands: the transaction runs again from
 * the start, and nothing is counted or reported twice. */
static void test_command_growth(void)
{
    char dir[64], id[32], args[9000];
    struct twin_store *s;
    int n = 120, attempts = 0, ops = 0;

    snprintf(args, sizeof args, "{\"blob\":\"");
    memset(args + strlen(args), 'y', 8000);
    strcpy(args + strlen("{\"blob\":\"") + 8000, "\"}");
    tmp_make(dir, sizeof dir);
    s = store_open(dir, 64 << 10, 64 << 20, 10, false);
    if (!s)
        goto out;
    for (int i = 0; i < n; i++) {
        struct op d = {.kind = OP_DESIRED, .id = id, .json = args, .now = i + 1};
        struct op c = {.kind = OP_CMD_ADD,
                       .id = id,
                       .cmd = "blob",
                       .json = args,
                       .expires = 100000,
                       .now = i + 1};
        char want[17];

        snprintf(id, sizeof id, "dev-%03d", i % 10);
        if (run(s, &d) || run(s, &c)) {
            FAIL("op %d: %s / %s", i, d.err, c.err);
            break;
        }
        attempts += d.attempts + c.attempts;
        ops += 2;
        snprintf(want, sizeof want, "%016x", i + 1);
        CHECK_STR(c.cmd_id, want);
        CHECK_INT(c.ev.n, 1);
    }
    CHECK(attempts > ops); /* some ran twice */
    CHECK(twin_store_map_size(s) > (64u << 10));
    CHECK_INT(stats_of(s).commands, n);
    {
        struct op x = {.kind = OP_EXPIRE, .now = 100000};

        CHECK_INT(run(s, &x), 0);
        CHECK_INT(x.xres.expired, n);
        CHECK_INT(x.ev.n, n);
    }
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
    {"store_one_writer", test_store_one_writer},
    {"export_import", test_export_import},
    {"import_bad", test_import_bad},
    {"import_tombstone", test_import_tombstone},
    {"telemetry_apply", test_telemetry_apply},
    {"telemetry_restart", test_telemetry_restart},
    {"telemetry_batch", test_telemetry_batch},
    {"senml", test_senml},
    {"waveforms", test_waveforms},
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
    {"desired_rfc7396", test_desired_rfc7396},
    {"desired_apply", test_desired_apply},
    {"desired_version", test_desired_version},
    {"delta_compute", test_delta_compute},
    {"delta_store", test_delta_store},
    {"versions", test_versions},
    {"presence", test_presence},
    {"delete", test_delete},
    {"command_states", test_command_states},
    {"command_transitions", test_command_transitions},
    {"command_add", test_command_add},
    {"command_cap", test_command_cap},
    {"command_expiry", test_command_expiry},
    {"command_resend", test_command_resend},
    {"command_restart", test_command_restart},
    {"command_damaged", test_command_damaged},
    {"store_without_commands", test_store_without_commands},
    {"command_growth", test_command_growth},
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
