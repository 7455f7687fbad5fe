/* config: the one table of every setting (name, type, default, limits, reloadable) and the
 * code that fills a struct config from it: defaults, a YAML file (libyaml's document API),
 * TWINHUB_* variables, single flags, printing and SIGHUP reloads. It does not decide where
 * the file is or what a changed value does; hub/main.c does.
 *
 * Choices made here (the design and the issue were silent):
 * - A scalar that YAML would call null (empty, ~, null) is the empty text: strings become "",
 *   every other type rejects it.
 * - A key set twice in one file is an error (YAML says keys are unique; libyaml doesn't check).
 * - Unknown TWINHUB_* variables are ignored: the environment is shared with scripts, units and
 *   test harnesses (TWINHUB_CONFIG is a likely one). Unknown keys in the file are errors.
 * - Durations and sizes accept one optional space before the unit ("64 MiB"); units are
 *   case-insensitive for sizes (KiB is 1024, KB is 1000) and lower case for durations; parts
 *   may be combined ("1h30m").
 * - store.map_size <= store.max_map_size and broker.reconnect_min <= broker.reconnect_max are
 *   checked at the end of config_load_file and config_load_env, on the values as they stand.
 * - config_print masks broker.password as a comment: loading the output leaves it unset
 *   rather than set to a mask.
 * Not thread-safe: called from main before threads start, and from the SIGHUP path on a copy. */
#include "config.h"
#include "log.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <yaml.h>

extern char **environ;

/* ---------------------------------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------------------------------ */

enum ktype { K_STRING, K_BOOL, K_UINT, K_DURATION, K_SIZE, K_ENUM, K_DOUBLE };

enum { K_RELOAD = 1, K_SECRET = 2 };

struct enum_val {
    const char *name;
    int value;
};

/* Extra checks on a string value; write the reason (after "expected") into why. */
typedef int (*str_check_fn)(const char *s, char *why, size_t size);

struct key {
    const char *name; /* dotted, as in the file: "store.sync" */
    enum ktype type;
    size_t off, size;  /* the field in struct config */
    const char *def;   /* default, as text; parsed like any other value */
    uint64_t min, max; /* K_UINT, K_SIZE: the value; K_DURATION: milliseconds */
    double dmin, dmax; /* K_DOUBLE */
    uint64_t unit_ms;  /* K_DURATION: what the field counts (1 or 1000) and a bare number means */
    const struct enum_val *enums; /* K_ENUM, NULL-terminated; field is bool or int */
    str_check_fn check;           /* K_STRING, optional */
    unsigned flags;
};

static int check_nonempty(const char *s, char *why, size_t size);
static int check_url(const char *s, char *why, size_t size);
static int check_prefix(const char *s, char *why, size_t size);
static int check_listen(const char *s, char *why, size_t size);
static int check_waveforms(const char *s, char *why, size_t size);

static const struct enum_val mqtt_versions[] = {{"5", 5}, {"4", 4}, {NULL, 0}};
static const struct enum_val syncs[] = {{"os", 0}, {"commit", 1}, {NULL, 0}};
static const struct enum_val encodings[] = {{"msgpack", 0}, {"json", 1}, {NULL, 0}};
static const struct enum_val levels[] = {
    {"error", LOG_ERROR}, {"warn", LOG_WARN}, {"info", LOG_INFO}, {"debug", LOG_DEBUG}, {NULL, 0}};

#define FIELD(f) .off = offsetof(struct config, f), .size = sizeof(((struct config *)0)->f)
#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define SEC 1000ull
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

#define STR(n, f, d, chk, fl)                                                                      \
    {                                                                                              \
        .name = n, .type = K_STRING, FIELD(f), .def = d, .check = chk, .flags = fl                 \
    }
#define BOOL(n, f, d, fl)                                                                          \
    {                                                                                              \
        .name = n, .type = K_BOOL, FIELD(f), .def = d, .flags = fl                                 \
    }
#define UINT(n, f, d, lo, hi, fl)                                                                  \
    {                                                                                              \
        .name = n, .type = K_UINT, FIELD(f), .def = d, .min = lo, .max = hi, .flags = fl           \
    }
#define DUR(n, f, d, unit, lo, hi, fl)                                                             \
    {                                                                                              \
        .name = n, .type = K_DURATION, FIELD(f), .def = d, .unit_ms = unit, .min = lo, .max = hi,  \
        .flags = fl                                                                                \
    }
#define SIZE(n, f, d, lo, hi, fl)                                                                  \
    {                                                                                              \
        .name = n, .type = K_SIZE, FIELD(f), .def = d, .min = lo, .max = hi, .flags = fl           \
    }
#define ENUM(n, f, d, e, fl)                                                                       \
    {                                                                                              \
        .name = n, .type = K_ENUM, FIELD(f), .def = d, .enums = e, .flags = fl                     \
    }
#define DBL(n, f, d, lo, hi, fl)                                                                   \
    {                                                                                              \
        .name = n, .type = K_DOUBLE, FIELD(f), .def = d, .dmin = lo, .dmax = hi, .flags = fl       \
    }

/* Every key, grouped by section (config_print relies on the grouping). Keys marked K_RELOAD
 * are copied by config_apply_reload; the others need a restart. */
static const struct key keys[] = {
    STR("broker.url", broker_url, "tcp://127.0.0.1:1883", check_url, 0),
    STR("broker.client_id", client_id, "twinhub", check_nonempty, 0),
    STR("broker.username", username, "", NULL, 0),
    STR("broker.password", password, "", NULL, K_SECRET),
    ENUM("broker.mqtt_version", mqtt_version, "5", mqtt_versions, 0),
    DUR("broker.keepalive", keepalive_s, "30s", SEC, 0, 65535 * SEC, 0),
    DUR("broker.session_expiry", session_expiry_s, "1d", SEC, 0, (UINT32_MAX * SEC), 0),
    DUR("broker.reconnect_min", reconnect_min_s, "1s", SEC, 1 * SEC, HOUR, 0),
    DUR("broker.reconnect_max", reconnect_max_s, "30s", SEC, 1 * SEC, DAY, 0),
    STR("broker.tls.ca", tls_ca, "", NULL, 0),
    STR("broker.tls.cert", tls_cert, "", NULL, 0),
    STR("broker.tls.key", tls_key, "", NULL, 0),
    BOOL("broker.tls.verify", tls_verify, "true", 0),

    STR("topics.devices", devices_prefix, "devices/", check_prefix, 0),
    STR("topics.twins", twins_prefix, "twins/", check_prefix, 0),
    STR("topics.hub", hub_prefix, "hub/", check_prefix, 0),

    STR("store.path", db_path, "./twinhub.db", check_nonempty, 0),
    ENUM("store.sync", sync_commit, "os", syncs, 0),
    DUR("store.sync_interval_ms", sync_interval_ms, "1000", 1, 10, HOUR, 0),
    SIZE("store.map_size", map_size, "64MiB", 1 * MIB, 1024 * GIB, 0),
    SIZE("store.max_map_size", max_map_size, "4GiB", 1 * MIB, 1024 * GIB, 0),
    BOOL("store.writemap", writemap, "false", 0),

    SIZE("limits.max_payload", max_payload, "64KiB", 64, 256 * MIB, K_RELOAD),
    UINT("limits.max_depth", max_depth, "16", 1, 32, K_RELOAD),
    UINT("limits.max_keys", max_keys, "1024", 1, 65536, K_RELOAD),
    SIZE("limits.max_twin_size", max_twin_size, "256KiB", 1 * KIB, 256 * MIB, K_RELOAD),
    UINT("limits.max_twins", max_twins, "100000", 0, 1000000000, K_RELOAD),
    DUR("limits.max_clock_skew", max_clock_skew_s, "5m", SEC, 0, 365 * DAY, K_RELOAD),
    UINT("limits.seq_restart_after", seq_restart_after, "32", 0, 1000000, K_RELOAD),

    UINT("history.max_points", history_max_points, "600", 0, 1000000, K_RELOAD),
    STR("history.waveforms", waveforms, "", check_waveforms, 0),
    DUR("history.waveform_seconds", waveform_s, "60s", SEC, SEC, HOUR, 0),

    UINT("commands.max_per_device", commands_max, "100", 1, 1000000, K_RELOAD),
    DUR("commands.retention", command_retention_s, "24h", SEC, 0, 3650 * DAY, K_RELOAD),

    UINT("publish.qos", publish_qos, "1", 0, 2, 0),
    UINT("publish.max_inflight", publish_inflight, "64", 1, 65535, 0),
    ENUM("publish.encoding", publish_json, "msgpack", encodings, 0),
    UINT("publish.max_queued_events", publish_queued_events, "16384", 1, 10000000, 0),
    UINT("publish.max_stored_events", publish_stored_events, "1000000", 0, 1000000000, 0),

    DBL("errors.rate", errors_rate, "10", 0, 1e6, K_RELOAD),
    UINT("errors.burst", errors_burst, "20", 1, 1000000, K_RELOAD),

    STR("rules.file", rules_path, "", NULL, K_RELOAD),
    DUR("rules.tick", rules_tick_ms, "1s", 1, 10, HOUR, K_RELOAD),

    ENUM("log.level", log_level, "info", levels, K_RELOAD),

    STR("http.listen", http_listen, "127.0.0.1:9464", check_listen, 0),
    STR("http.tls.cert", http_tls_cert, "", NULL, 0),
    STR("http.tls.key", http_tls_key, "", NULL, 0),
    STR("http.token_file", http_token_file, "", NULL, 0),
    UINT("http.max_connections", http_max_connections, "32", 1, 100000, 0),
    DUR("http.timeout", http_timeout_s, "10s", SEC, 1 * SEC, HOUR, 0),
    SIZE("http.max_request", http_max_request, "16KiB", 4 * KIB, 1 * MIB, 0),
    DUR("http.stall", http_stall_ms, "30s", 1, 1 * SEC, HOUR, 0),
    STR("http.write_token_file", http_write_token_file, "", NULL, 0),
    STR("http.dashboard", http_dashboard, "", NULL, 0),
    UINT("http.max_streams", http_max_streams, "16", 0, 100000, 0),
    UINT("http.stream_buffer", http_stream_buffer, "16384", 1, 10000000, 0),
    SIZE("http.stream_bytes", http_stream_bytes, "16MiB", 1 * MIB, 4096 * MIB, 0),
    SIZE("http.max_body", http_max_body, "64KiB", 1 * KIB, 16 * MIB, 0),
    UINT("query.max_limit", query_max_limit, "1000", 1, 1000000, 0),
    UINT("query.max_points", query_max_points, "10000", 1, 10000000, 0),

    BOOL("aws.shadow", aws_shadow, "false", 0),
};
#define NKEYS (sizeof keys / sizeof keys[0])

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------ */

static void seterr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(char *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, CONFIG_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* A value as it appears in a message: 'text', with control bytes shown as '?' and cut at 60
 * bytes. */
static const char *shown(char *buf, size_t size, const char *s, size_t n)
{
    size_t o = 0;
    buf[o++] = '\'';
    for (size_t i = 0; i < n && o + 5 < size; i++) {
        if (i == 60) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)s[i];
        buf[o++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    buf[o++] = '\'';
    buf[o] = '\0';
    return buf;
}

static const struct key *key_find(const char *name, size_t n)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strlen(keys[i].name) == n && memcmp(keys[i].name, name, n) == 0)
            return &keys[i];
    return NULL;
}

/* True when some key lives under "name." */
static bool is_section(const char *name, size_t n)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strncmp(keys[i].name, name, n) == 0 && keys[i].name[n] == '.')
            return true;
    return false;
}

static void *field(struct config *c, const struct key *k)
{
    return (char *)c + k->off;
}

static const void *cfield(const struct config *c, const struct key *k)
{
    return (const char *)c + k->off;
}

/* Integer fields are unsigned, int (same width; the table keeps values in range) or 64-bit. */
static void put_uint(struct config *c, const struct key *k, uint64_t v)
{
    if (k->size == sizeof(uint64_t))
        *(uint64_t *)field(c, k) = v;
    else if (k->size == sizeof(unsigned))
        *(unsigned *)field(c, k) = (unsigned)v;
    else if (k->size == sizeof(bool))
        *(bool *)field(c, k) = v != 0;
    else
        assert(!"unsupported field width");
}

static uint64_t get_uint(const struct config *c, const struct key *k)
{
    if (k->size == sizeof(uint64_t))
        return *(const uint64_t *)cfield(c, k);
    if (k->size == sizeof(unsigned))
        return *(const unsigned *)cfield(c, k);
    return *(const bool *)cfield(c, k);
}

/* ---------------------------------------------------------------------------------------------
 * Durations and sizes
 * ------------------------------------------------------------------------------------------ */

/* Reads digits at *p. Returns 0, -EINVAL (no digits) or -ERANGE. */
static int digits(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    int rc = 0;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            rc = -ERANGE;
        else
            v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return rc;
}

static int mul_add(uint64_t *acc, uint64_t n, uint64_t unit)
{
    if (unit && n > UINT64_MAX / unit)
        return -ERANGE;
    if (*acc > UINT64_MAX - n * unit)
        return -ERANGE;
    *acc += n * unit;
    return 0;
}

/* As config_parse_duration_ms, telling overflow (-ERANGE) from bad text (-EINVAL). */
static int parse_duration(const char *s, uint64_t unit_ms, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", SEC}, {"m", MIN}, {"h", HOUR}, {"d", DAY}};
    uint64_t total = 0;
    int overflow = 0;
    const char *p = s;

    if (!s || !*s)
        return -EINVAL;
    uint64_t n;
    int rc = digits(&p, &n);
    if (rc == -EINVAL)
        return rc;
    overflow |= rc;
    if (*p == '\0') { /* a bare number counts unit_ms */
        if (overflow || mul_add(&total, n, unit_ms))
            return -ERANGE;
        *out = total;
        return 0;
    }
    for (;;) {
        if (*p == ' ')
            p++;
        size_t best = 0, len = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t l = strlen(units[i].suffix);
            if (strncmp(p, units[i].suffix, l) == 0 && l > len && !isalpha((unsigned char)p[l])) {
                best = i;
                len = l;
            }
        }
        if (!len)
            return -EINVAL;
        if (mul_add(&total, n, units[best].ms))
            overflow = -ERANGE;
        p += len;
        if (*p == '\0')
            break;
        rc = digits(&p, &n);
        if (rc == -EINVAL)
            return rc;
        overflow |= rc;
    }
    if (overflow)
        return -ERANGE;
    *out = total;
    return 0;
}

int config_parse_duration_ms(const char *s, uint64_t unit_ms, uint64_t *out)
{
    uint64_t v;
    if (parse_duration(s, unit_ms, &v))
        return -EINVAL;
    *out = v;
    return 0;
}

static const struct {
    const char *suffix;
    uint64_t bytes;
} size_units[] = {
    {"", 1},
    {"b", 1},
    {"kib", KIB},
    {"mib", MIB},
    {"gib", GIB},
    {"tib", 1024 * GIB},
    {"kb", 1000},
    {"mb", 1000000},
    {"gb", 1000000000},
    {"tb", 1000000000000ull},
};

/* As config_parse_size, telling overflow (-ERANGE) from bad text (-EINVAL). */
static int parse_size(const char *s, uint64_t *out)
{
    const char *p = s;
    uint64_t n;
    if (!s)
        return -EINVAL;
    int rc = digits(&p, &n);
    if (rc == -EINVAL)
        return rc;
    if (*p == ' ' && p[1])
        p++;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++) {
        if (strcasecmp(p, size_units[i].suffix) == 0) {
            uint64_t v = 0;
            if (rc || mul_add(&v, n, size_units[i].bytes))
                return -ERANGE;
            *out = v;
            return 0;
        }
    }
    return -EINVAL;
}

int config_parse_size(const char *s, uint64_t *out)
{
    uint64_t v;
    if (parse_size(s, &v))
        return -EINVAL;
    *out = v;
    return 0;
}

/* The shortest exact spelling: "1d", "90s", "250ms". */
static void format_duration(char *buf, size_t size, uint64_t ms)
{
    static const struct {
        const char *suffix;
        uint64_t ms;
    } units[] = {{"d", DAY}, {"h", HOUR}, {"m", MIN}, {"s", SEC}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (ms && ms % units[i].ms == 0) {
            snprintf(buf, size, "%llu%s", (unsigned long long)(ms / units[i].ms), units[i].suffix);
            return;
        }
    }
    snprintf(buf, size, ms ? "%llums" : "%llus", (unsigned long long)ms);
}

static void format_size(char *buf, size_t size, uint64_t b)
{
    static const struct {
        const char *suffix;
        uint64_t bytes;
    } units[] = {{"TiB", 1024 * GIB}, {"GiB", GIB}, {"MiB", MIB}, {"KiB", KIB}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (b && b % units[i].bytes == 0) {
            snprintf(buf, size, "%llu%s", (unsigned long long)(b / units[i].bytes),
                     units[i].suffix);
            return;
        }
    }
    snprintf(buf, size, "%llu", (unsigned long long)b);
}

/* The shortest text that reads back as the same double. */
static void format_double(char *buf, size_t size, double d)
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

/* ---------------------------------------------------------------------------------------------
 * One value: parse, check, store
 * ------------------------------------------------------------------------------------------ */

static void describe_enum(char *buf, size_t size, const struct enum_val *e)
{
    size_t o = 0, n = 0;
    while (e[n].name)
        n++;
    buf[0] = '\0';
    for (size_t i = 0; i < n && o < size; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        int w = snprintf(buf + o, size - o, "%s'%s'", sep, e[i].name);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

/* What a value of this key looks like, for "expected ...". */
static void describe(char *buf, size_t size, const struct key *k)
{
    switch (k->type) {
    case K_STRING:
        snprintf(buf, size, "a string");
        break;
    case K_BOOL:
        snprintf(buf, size, "true or false");
        break;
    case K_UINT:
        snprintf(buf, size, "a whole number");
        break;
    case K_DURATION:
        snprintf(buf, size, "a duration (250ms, 30s, 5m, 1h, 1d%s)",
                 k->unit_ms == 1 ? " or milliseconds" : " or seconds");
        break;
    case K_SIZE:
        snprintf(buf, size, "a size (512KiB, 64MiB, 4GiB or bytes)");
        break;
    case K_ENUM:
        describe_enum(buf, size, k->enums);
        break;
    case K_DOUBLE:
        snprintf(buf, size, "a number");
        break;
    }
}

/* Formats the value held in c for key k, as config_print writes it (strings unquoted). */
static void format_value(char *buf, size_t size, const struct config *c, const struct key *k)
{
    switch (k->type) {
    case K_STRING:
        snprintf(buf, size, "%s", (const char *)cfield(c, k));
        break;
    case K_BOOL:
        snprintf(buf, size, "%s", *(const bool *)cfield(c, k) ? "true" : "false");
        break;
    case K_UINT:
        snprintf(buf, size, "%llu", (unsigned long long)get_uint(c, k));
        break;
    case K_DURATION:
        /* A key counted in milliseconds ("sync_interval_ms") reads best as a bare number. */
        if (k->unit_ms == 1)
            snprintf(buf, size, "%llu", (unsigned long long)get_uint(c, k));
        else
            format_duration(buf, size, get_uint(c, k) * k->unit_ms);
        break;
    case K_SIZE:
        format_size(buf, size, get_uint(c, k));
        break;
    case K_ENUM: {
        int v = k->size == sizeof(bool) ? *(const bool *)cfield(c, k) : *(const int *)cfield(c, k);
        snprintf(buf, size, "?");
        for (const struct enum_val *e = k->enums; e->name; e++)
            if (e->value == v) {
                snprintf(buf, size, "%s", e->name);
                break;
            }
        break;
    }
    case K_DOUBLE:
        format_double(buf, size, *(const double *)cfield(c, k));
        break;
    }
}

/* Checks an integer (K_UINT / K_DURATION in ms / K_SIZE) against the key's range. */
static int check_range(const struct key *k, const char *text, uint64_t v, bool overflow, char *why,
                       size_t size)
{
    char lim[32];
    if (!overflow && v >= k->min && v <= k->max)
        return 0;
    bool above = overflow || v > k->max;
    uint64_t bound = above ? k->max : k->min;
    if (k->type == K_DURATION)
        format_duration(lim, sizeof lim, bound);
    else if (k->type == K_SIZE)
        format_size(lim, sizeof lim, bound);
    else
        snprintf(lim, sizeof lim, "%llu", (unsigned long long)bound);
    snprintf(why, size, "%.60s is %s the %s %s", text, above ? "above" : "below",
             above ? "maximum" : "minimum", lim);
    return -EINVAL;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Parses text[0..n) as a value of key k and stores it in c. On error c is unchanged and why
 * holds the reason, without the key ("expected 'os' or 'commit', got 'always'"). */
static int key_set(struct config *c, const struct key *k, const char *text, size_t n, char *why,
                   size_t whysize)
{
    char desc[160], got[80], s[1024];

    if (memchr(text, '\0', n)) {
        snprintf(why, whysize, "the value contains a NUL byte");
        return -EINVAL;
    }
    if (k->type == K_STRING) {
        if (n >= k->size) {
            snprintf(why, whysize, "%zu bytes is longer than the maximum %zu", n, k->size - 1);
            return -EINVAL;
        }
    } else if (n >= sizeof s) {
        n = sizeof s - 1; /* long enough to fail parsing below */
    }
    memcpy(s, text, n);
    s[n] = '\0';

    describe(desc, sizeof desc, k);
    if (n == 0)
        snprintf(got, sizeof got, "nothing");
    else
        shown(got, sizeof got, s, n);

    switch (k->type) {
    case K_STRING: {
        char reason[160];
        if (k->check && k->check(s, reason, sizeof reason)) {
            snprintf(why, whysize, "expected %s, got %s", reason, got);
            return -EINVAL;
        }
        memcpy(field(c, k), s, n + 1);
        return 0;
    }
    case K_BOOL: {
        bool b;
        if (!parse_bool(s, &b))
            goto bad;
        *(bool *)field(c, k) = b;
        return 0;
    }
    case K_UINT: {
        const char *p = s;
        uint64_t v;
        int rc = digits(&p, &v);
        if (rc == -EINVAL || *p)
            goto bad;
        if (check_range(k, s, v, rc == -ERANGE, why, whysize))
            return -EINVAL;
        put_uint(c, k, v);
        return 0;
    }
    case K_DURATION: {
        uint64_t ms;
        int rc = parse_duration(s, k->unit_ms, &ms);
        if (rc == -EINVAL)
            goto bad;
        if (check_range(k, s, ms, rc == -ERANGE, why, whysize))
            return -EINVAL;
        if (ms % k->unit_ms) {
            snprintf(why, whysize, "%.60s is not a whole number of seconds", s);
            return -EINVAL;
        }
        put_uint(c, k, ms / k->unit_ms);
        return 0;
    }
    case K_SIZE: {
        uint64_t v;
        int rc = parse_size(s, &v);
        if (rc == -EINVAL)
            goto bad;
        if (check_range(k, s, v, rc == -ERANGE, why, whysize))
            return -EINVAL;
        put_uint(c, k, v);
        return 0;
    }
    case K_ENUM:
        for (const struct enum_val *e = k->enums; e->name; e++) {
            if (strcasecmp(s, e->name) == 0) {
                if (k->size == sizeof(bool))
                    *(bool *)field(c, k) = e->value != 0;
                else
                    *(int *)field(c, k) = e->value;
                return 0;
            }
        }
        goto bad;
    case K_DOUBLE: {
        char *end;
        if (!n || isspace((unsigned char)s[0]))
            goto bad;
        errno = 0;
        double d = strtod(s, &end);
        if (*end || !isfinite(d))
            goto bad;
        if (d < k->dmin || d > k->dmax) {
            char lim[40];
            bool above = d > k->dmax;
            format_double(lim, sizeof lim, above ? k->dmax : k->dmin);
            snprintf(why, whysize, "%.60s is %s the %s %s", s, above ? "above" : "below",
                     above ? "maximum" : "minimum", lim);
            return -EINVAL;
        }
        *(double *)field(c, k) = d;
        return 0;
    }
    }
bad:
    snprintf(why, whysize, "expected %s, got %s", desc, got);
    return -EINVAL;
}

static int check_nonempty(const char *s, char *why, size_t size)
{
    if (*s)
        return 0;
    snprintf(why, size, "a non-empty string");
    return -EINVAL;
}

/* The schemes Paho's MQTTAsync_create accepts. */
static int check_url(const char *s, char *why, size_t size)
{
    static const char *const schemes[] = {"tcp://",   "mqtt://", "ssl://",
                                          "mqtts://", "ws://",   "wss://"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t l = strlen(schemes[i]);
        if (strncmp(s, schemes[i], l) == 0 && s[l])
            return 0;
    }
    snprintf(why, size, "a broker URL (tcp://, ssl://, mqtt://, mqtts://, ws:// or wss://)");
    return -EINVAL;
}

int config_listen_split(const char *s, char *host, size_t host_size, unsigned *port, char *why,
                        size_t why_size)
{
    const char *colon, *h = s, *he;
    if (s[0] == '[') {
        h = s + 1;
        he = strchr(h, ']');
        if (!he || he[1] != ':') {
            snprintf(why, why_size, "[IPv6 address]:port");
            return -EINVAL;
        }
        colon = he + 1;
    } else {
        colon = strrchr(s, ':');
        he = colon;
        if (!colon || memchr(s, ':', (size_t)(colon - s))) {
            snprintf(why, why_size, "host:port (an IPv6 address in brackets: [::1]:9464)");
            return -EINVAL;
        }
    }
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (!isdigit((unsigned char)colon[1]) || *end || errno || p > 65535) {
        snprintf(why, why_size, "a port of 0..65535 after the ':'");
        return -EINVAL;
    }
    size_t n = (size_t)(he - h);
    if (n == 0 || n >= host_size) {
        snprintf(why, why_size, "a host of 1..%zu characters before the port", host_size - 1);
        return -EINVAL;
    }
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (unsigned)p;
    return 0;
}

int config_waveform_next(const char **s, char *path, size_t path_size, double *rate, char *why,
                         size_t size)
{
    const char *p = *s, *eq, *end;
    if (!*p)
        return 0;
    end = strchr(p, ',');
    if (!end)
        end = p + strlen(p);
    eq = memchr(p, '=', (size_t)(end - p));
    size_t n = eq ? (size_t)(eq - p) : 0;
    if (!eq || n == 0 || n >= path_size || n > 256) {
        snprintf(why, size, "path=Hz entries such as ecg=250 ('%.*s' has no rate)",
                 (int)(end - p), p);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)p[i]) || p[i] == '_' || p[i] == '-' ||
              (p[i] == '.' && i && i + 1 < n && p[i + 1] != '.'))) {
            snprintf(why, size, "a path under reported such as ecg or vitals.pleth ('%.*s')",
                     (int)n, p);
            return -EINVAL;
        }
    char num[32], *stop;
    size_t m = (size_t)(end - eq - 1);
    if (m == 0 || m >= sizeof(num)) {
        snprintf(why, size, "a rate in Hz after '=' ('%.*s')", (int)(end - p), p);
        return -EINVAL;
    }
    memcpy(num, eq + 1, m);
    num[m] = '\0';
    double r = strtod(num, &stop);
    if (*stop || !(r > 0) || r > 100000) {
        snprintf(why, size, "a rate of Hz above 0 and at most 100000 ('%.*s')", (int)(end - p),
                 p);
        return -EINVAL;
    }
    memcpy(path, p, n);
    path[n] = '\0';
    *rate = r;
    *s = *end ? end + 1 : end;
    return 1;
}

static int check_waveforms(const char *s, char *why, size_t size)
{
    char path[257];
    double rate;
    int rc, count = 0;
    while ((rc = config_waveform_next(&s, path, sizeof(path), &rate, why, size)) > 0)
        if (++count > 8) {
            snprintf(why, size, "at most 8 waveforms");
            return -EINVAL;
        }
    return rc;
}

static int check_listen(const char *s, char *why, size_t size)
{
    char host[128];
    unsigned port;
    return s[0] ? config_listen_split(s, host, sizeof(host), &port, why, size) : 0;
}

/* Topic prefixes are joined to ids without a separator and must not let a subscription or a
 * publish leave the hub's own scheme. */
static int check_prefix(const char *s, char *why, size_t size)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '/' && !strpbrk(s, "+#") && s[0] != '/' && !strstr(s, "//"))
        return 0;
    snprintf(why, size, "a topic prefix ending in '/' without '+', '#' or empty levels");
    return -EINVAL;
}

/* ---------------------------------------------------------------------------------------------
 * Suggestions for unknown keys
 * ------------------------------------------------------------------------------------------ */

#define NAME_MAX_LEN 64

/* Optimal string alignment distance, case-insensitive: a swap of two neighbours ("tsl" for
 * "tls") costs one, as it does for the person who typed it. */
static size_t edit_distance(const char *a, size_t na, const char *b, size_t nb)
{
    size_t rows[3][NAME_MAX_LEN + 1];
    size_t *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    if (na > NAME_MAX_LEN || nb > NAME_MAX_LEN)
        return SIZE_MAX;
    for (size_t j = 0; j <= nb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            int ai = tolower((unsigned char)a[i - 1]), bj = tolower((unsigned char)b[j - 1]);
            size_t best = prev[j - 1] + (ai != bj);
            if (prev[j] + 1 < best)
                best = prev[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && ai == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == bj && prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
        size_t *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[nb];
}

/* Calls fn for each distinct child name (section or key) under `prefix` ("" or "broker."). */
static void children(const char *prefix, void (*fn)(void *ctx, const char *name, size_t n),
                     void *ctx)
{
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < NKEYS; i++) {
        if (strncmp(keys[i].name, prefix, pl) != 0)
            continue;
        const char *name = keys[i].name + pl;
        size_t n = strcspn(name, ".");
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strncmp(keys[j].name, prefix, pl) == 0 &&
                   strncmp(keys[j].name + pl, name, n) == 0 &&
                   (keys[j].name[pl + n] == '.' || keys[j].name[pl + n] == '\0');
        if (!seen)
            fn(ctx, name, n);
    }
}

struct suggest {
    const char *name;
    size_t n;
    const char *best;
    size_t best_n, best_d;
    char list[256];
};

static void suggest_one(void *ctx, const char *name, size_t n)
{
    struct suggest *sg = ctx;
    size_t d = edit_distance(sg->name, sg->n, name, n);
    if (d < sg->best_d) {
        sg->best = name;
        sg->best_n = n;
        sg->best_d = d;
    }
    size_t o = strlen(sg->list);
    snprintf(sg->list + o, sizeof sg->list - o, "%s%.*s", o ? ", " : "", (int)n, name);
}

/* Writes "(did you mean 'broker.tls'?)" or "(expected one of: ...)" for an unknown name. */
static void suggest(char *buf, size_t size, const char *prefix, const char *name, size_t n)
{
    struct suggest sg = {.name = name, .n = n, .best_d = SIZE_MAX};
    children(prefix, suggest_one, &sg);
    size_t limit = n < 6 ? 1 : n < 12 ? 2 : 3;
    if (sg.best && sg.best_d <= limit)
        snprintf(buf, size, " (did you mean '%s%.*s'?)", prefix, (int)sg.best_n, sg.best);
    else
        snprintf(buf, size, " (expected one of: %s)", sg.list);
}

/* ---------------------------------------------------------------------------------------------
 * Whole-config checks
 * ------------------------------------------------------------------------------------------ */

/* Relations between keys. `where` prefixes the message ("twinhub.yaml:12: " or "").
 * Returns 0 or -EINVAL. */
static int check_relations(const struct config *c, const char *where, char *err)
{
    char a[32], b[32];
    if (c->map_size > c->max_map_size) {
        format_size(a, sizeof a, c->map_size);
        format_size(b, sizeof b, c->max_map_size);
        seterr(err, "%sstore.map_size: %s is above store.max_map_size %s", where, a, b);
        return -EINVAL;
    }
    if (c->reconnect_min_s > c->reconnect_max_s) {
        format_duration(a, sizeof a, c->reconnect_min_s * SEC);
        format_duration(b, sizeof b, c->reconnect_max_s * SEC);
        seterr(err, "%sbroker.reconnect_min: %s is above broker.reconnect_max %s", where, a, b);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Public: defaults, set, env
 * ------------------------------------------------------------------------------------------ */

void config_defaults(struct config *c)
{
    char why[CONFIG_ERR_LEN];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NKEYS; i++) {
        int rc = key_set(c, &keys[i], keys[i].def, strlen(keys[i].def), why, sizeof why);
        assert(rc == 0 && "a default in the table does not parse");
        (void)rc;
    }
}

int config_set(struct config *c, const char *key, const char *value, char *err)
{
    char why[CONFIG_ERR_LEN], hint[300];
    const struct key *k = key_find(key, strlen(key));
    if (!k) {
        /* Suggest against the full dotted names: a flag names the whole key. */
        struct suggest sg = {.name = key, .n = strlen(key), .best_d = SIZE_MAX};
        for (size_t i = 0; i < NKEYS; i++) {
            size_t d = edit_distance(key, sg.n, keys[i].name, strlen(keys[i].name));
            if (d < sg.best_d) {
                sg.best_d = d;
                sg.best = keys[i].name;
            }
        }
        hint[0] = '\0';
        if (sg.best && sg.best_d <= 3)
            snprintf(hint, sizeof hint, " (did you mean '%s'?)", sg.best);
        seterr(err, "unknown key '%s'%s", key, hint);
        return -EINVAL;
    }
    if (key_set(c, k, value, strlen(value), why, sizeof why)) {
        seterr(err, "%s: %s", k->name, why);
        return -EINVAL;
    }
    return 0;
}

/* "broker.tls.ca" -> "TWINHUB_BROKER_TLS_CA" */
static void env_name(char *buf, size_t size, const char *key)
{
    size_t o = (size_t)snprintf(buf, size, "TWINHUB_");
    for (; *key && o + 1 < size; key++)
        buf[o++] = *key == '.' ? '_' : (char)toupper((unsigned char)*key);
    buf[o] = '\0';
}

int config_load_env(struct config *c, char *const *envp, char *err)
{
    char name[96], why[CONFIG_ERR_LEN];
    if (!envp)
        envp = environ;
    /* Walk the table, not the environment, so keys apply in table order whatever the order of
     * envp, and a variable set twice (possible in a hand-built envp) takes its first value as
     * getenv would. */
    for (size_t i = 0; i < NKEYS; i++) {
        env_name(name, sizeof name, keys[i].name);
        size_t nl = strlen(name);
        for (char *const *e = envp; *e; e++) {
            if (strncmp(*e, name, nl) != 0 || (*e)[nl] != '=')
                continue;
            const char *v = *e + nl + 1;
            if (key_set(c, &keys[i], v, strlen(v), why, sizeof why)) {
                seterr(err, "%s: %s: %s", name, keys[i].name, why);
                return -EINVAL;
            }
            break;
        }
    }
    return check_relations(c, "environment: ", err);
}

/* ---------------------------------------------------------------------------------------------
 * The YAML file
 * ------------------------------------------------------------------------------------------ */

struct load {
    struct config *c;
    const char *path;
    yaml_document_t *doc;
    char *err;
    unsigned line[NKEYS]; /* where each key was set in this file; 0 = not set */
};

static unsigned line_of(const yaml_node_t *n)
{
    return (unsigned)n->start_mark.line + 1;
}

static const char *kind_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a map";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a value";
    }
}

/* YAML's null: a plain scalar that is empty, "~" or "null". */
static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    return len == 0 || (len == 1 && s[0] == '~') ||
           (len == 4 &&
            (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 || memcmp(s, "NULL", 4) == 0));
}

static int load_leaf(struct load *ld, const struct key *k, const yaml_node_t *v)
{
    char why[CONFIG_ERR_LEN], desc[160];
    size_t idx = (size_t)(k - keys);

    if (ld->line[idx]) {
        seterr(ld->err, "%s:%u: %s: set twice (first on line %u)", ld->path, line_of(v), k->name,
               ld->line[idx]);
        return -EINVAL;
    }
    if (v->type != YAML_SCALAR_NODE) {
        describe(desc, sizeof desc, k);
        seterr(ld->err, "%s:%u: %s: expected %s, got %s", ld->path, line_of(v), k->name, desc,
               kind_name(v));
        return -EINVAL;
    }
    const char *s = is_null(v) ? "" : (const char *)v->data.scalar.value;
    size_t n = is_null(v) ? 0 : v->data.scalar.length;
    if (key_set(ld->c, k, s, n, why, sizeof why)) {
        seterr(ld->err, "%s:%u: %s: %s", ld->path, line_of(v), k->name, why);
        return -EINVAL;
    }
    ld->line[idx] = line_of(v);
    return 0;
}

/* Loads the pairs of `map`, whose keys are under `prefix` ("" at the top, "broker." below). */
static int load_map(struct load *ld, const yaml_node_t *map, const char *prefix)
{
    char full[NAME_MAX_LEN * 2], hint[320];
    size_t pl = strlen(prefix);

    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = yaml_document_get_node(ld->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(ld->doc, p->value);
        if (kn->type != YAML_SCALAR_NODE) {
            seterr(ld->err, "%s:%u: expected a key name, got %s", ld->path, line_of(kn),
                   kind_name(kn));
            return -EINVAL;
        }
        const char *name = (const char *)kn->data.scalar.value;
        size_t n = kn->data.scalar.length;
        if (n > NAME_MAX_LEN || memchr(name, '\0', n)) {
            char got[80];
            seterr(ld->err, "%s:%u: unknown key %s", ld->path, line_of(kn),
                   shown(got, sizeof got, name, n));
            return -EINVAL;
        }
        memcpy(full, prefix, pl);
        memcpy(full + pl, name, n);
        full[pl + n] = '\0';

        const struct key *k = key_find(full, pl + n);
        if (k) {
            int rc = load_leaf(ld, k, vn);
            if (rc)
                return rc;
        } else if (is_section(full, pl + n)) {
            if (is_null(vn)) /* "tls:" with nothing under it */
                continue;
            if (vn->type != YAML_MAPPING_NODE) {
                char got[80];
                seterr(ld->err, "%s:%u: %s: expected a map, got %s", ld->path, line_of(vn), full,
                       vn->type == YAML_SCALAR_NODE
                           ? shown(got, sizeof got, (const char *)vn->data.scalar.value,
                                   vn->data.scalar.length)
                           : kind_name(vn));
                return -EINVAL;
            }
            full[pl + n] = '.';
            full[pl + n + 1] = '\0';
            int rc = load_map(ld, vn, full);
            if (rc)
                return rc;
        } else {
            suggest(hint, sizeof hint, prefix, name, n);
            seterr(ld->err, "%s:%u: unknown key '%s'%s", ld->path, line_of(kn), full, hint);
            return -EINVAL;
        }
    }
    return 0;
}

static void syntax_error(const yaml_parser_t *ps, const char *path, char *err)
{
    const char *problem = ps->problem ? ps->problem : "malformed YAML";
    if (ps->error == YAML_READER_ERROR) {
        seterr(err, "%s: %s at byte %zu", path, problem, ps->problem_offset);
        return;
    }
    if (ps->context)
        seterr(err, "%s:%zu:%zu: %s (%s at line %zu)", path, ps->problem_mark.line + 1,
               ps->problem_mark.column + 1, problem, ps->context, ps->context_mark.line + 1);
    else
        seterr(err, "%s:%zu:%zu: %s", path, ps->problem_mark.line + 1, ps->problem_mark.column + 1,
               problem);
}

int config_load_file(struct config *c, const char *path, char *err)
{
    struct load ld = {.c = c, .path = path, .err = err};
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    struct stat st;
    int rc = 0;

    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        seterr(err, "%s: %s", path, strerror(e));
        return e == ENOENT ? -ENOENT : -EINVAL;
    }
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        seterr(err, "%s: is a directory", path);
        rc = -EINVAL;
        goto fail_open;
    }
    if (!yaml_parser_initialize(&parser)) {
        seterr(err, "%s: out of memory", path);
        rc = -ENOMEM;
        goto fail_open;
    }
    yaml_parser_set_input_file(&parser, f);

    if (!yaml_parser_load(&parser, &doc)) {
        if (parser.error == YAML_MEMORY_ERROR) {
            seterr(err, "%s: out of memory", path);
            rc = -ENOMEM;
        } else {
            syntax_error(&parser, path, err);
            rc = -EINVAL;
        }
        goto fail_parser;
    }
    ld.doc = &doc;

    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !is_null(root)) {
        if (root->type != YAML_MAPPING_NODE) {
            seterr(err, "%s:%u: expected a map of sections (broker, store, ...), got %s", path,
                   line_of(root), kind_name(root));
            rc = -EINVAL;
            goto fail_doc;
        }
        rc = load_map(&ld, root, "");
        if (rc)
            goto fail_doc;
    }

    /* One document per file: a second one is almost always a stray '---'. */
    if (!yaml_parser_load(&parser, &extra)) {
        syntax_error(&parser, path, err);
        rc = -EINVAL;
        goto fail_doc;
    }
    root = yaml_document_get_root_node(&extra);
    if (root) {
        seterr(err, "%s:%u: expected one YAML document, found a second", path, line_of(root));
        rc = -EINVAL;
    }
    yaml_document_delete(&extra);
    if (rc)
        goto fail_doc;

    /* Name the line of the key that made the relation false, when this file set it. */
    char where[300];
    snprintf(where, sizeof where, "%s: ", path);
    rc = check_relations(c, where, err);
    if (rc) {
        const struct key *k = c->map_size > c->max_map_size ? key_find("store.map_size", 14)
                                                            : key_find("broker.reconnect_min", 20);
        unsigned line = ld.line[k - keys];
        if (line) {
            snprintf(where, sizeof where, "%s:%u: ", path, line);
            check_relations(c, where, err);
        }
        goto fail_doc;
    }
    snprintf(c->source, sizeof c->source, "%s", path);

fail_doc:
    yaml_document_delete(&doc);
fail_parser:
    yaml_parser_delete(&parser);
fail_open:
    fclose(f);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Print and reload
 * ------------------------------------------------------------------------------------------ */

/* Writes s as a YAML double-quoted scalar. Besides C0 controls and DEL, the C1 controls
 * (U+0080..U+009F: libyaml refuses them raw, and reads NEL as a line break it folds), the line
 * and paragraph separators and the BOM are escaped, so what is printed loads back the same. */
static void print_quoted(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            fprintf(out, "\\%c", *p);
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(out, "\\x%02x", *p);
        } else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            fprintf(out, "\\x%02x", p[1]);
            p++;
        } else if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) {
            fprintf(out, "\\u%04x", 0x2000 + (p[2] - 0x80));
            p += 2;
        } else if (p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
            fputs("\\ufeff", out);
            p += 2;
        } else if (p[0] == 0xef && p[1] == 0xbf && (p[2] == 0xbe || p[2] == 0xbf)) {
            /* U+FFFE and U+FFFF: libyaml refuses them raw */
            fprintf(out, "\\u%04x", 0xffc0 + (p[2] - 0x80));
            p += 2;
        } else {
            fputc(*p, out);
        }
    }
    fputc('"', out);
}

void config_print(const struct config *c, FILE *out)
{
    char val[300];
    const char *prev = "";

    if (c->source[0])
        fprintf(out, "# twinhub: effective configuration (file: %s, then TWINHUB_* and flags)\n",
                c->source);
    else
        fprintf(out, "# twinhub: effective configuration (defaults, then TWINHUB_* and flags)\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        /* Open the sections that differ from the previous key's. */
        size_t common = 0;
        for (size_t j = 0; prev[j] && prev[j] == k->name[j]; j++)
            if (prev[j] == '.')
                common = j + 1;
        size_t depth = 0;
        for (size_t j = 0; j < common; j++)
            depth += k->name[j] == '.';
        const char *seg = k->name + common;
        for (const char *dot; (dot = strchr(seg, '.')); seg = dot + 1) {
            if (depth == 0 && i > 0)
                fputc('\n', out);
            fprintf(out, "%*s%.*s:\n", (int)depth * 2, "", (int)(dot - seg), seg);
            depth++;
        }
        prev = k->name;

        if (k->flags & K_SECRET) {
            const char *s = cfield(c, k);
            fprintf(out, "%*s# %s: %s\n", (int)depth * 2, "", seg,
                    s[0] ? "(set, hidden)" : "(not set)");
            continue;
        }
        fprintf(out, "%*s%s: ", (int)depth * 2, "", seg);
        if (k->type == K_STRING) {
            print_quoted(out, cfield(c, k));
        } else {
            format_value(val, sizeof val, c, k);
            fputs(val, out);
        }
        fputs(k->flags & K_RELOAD ? "  # reloads on SIGHUP\n" : "\n", out);
    }
}

static bool same(const struct config *a, const struct config *b, const struct key *k)
{
    if (k->type == K_STRING)
        return strcmp(cfield(a, k), cfield(b, k)) == 0;
    return memcmp(cfield(a, k), cfield(b, k), k->size) == 0;
}

void config_apply_reload(struct config *cur, const struct config *next, char *restart_keys,
                         size_t size)
{
    size_t o = 0;
    if (restart_keys && size)
        restart_keys[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        if (k->flags & K_RELOAD) {
            memcpy(field(cur, k), cfield(next, k), k->size);
            continue;
        }
        if (same(cur, next, k) || !restart_keys || !size)
            continue;
        /* Whole names only: a cut list ends at the last name that fit. */
        size_t need = (o ? 1 : 0) + strlen(k->name);
        if (o + need + 1 > size)
            continue;
        o += (size_t)snprintf(restart_keys + o, size - o, "%s%s", o ? "," : "", k->name);
    }
}

/* Whether s starts with `shape`: 'd' a digit, anything else itself. */
static bool time_shaped(const char *s, const char *shape)
{
    for (; *shape; s++, shape++)
        if (*shape == 'd' ? !(*s >= '0' && *s <= '9') : *s != *shape)
            return false;
    return true;
}

int config_parse_time_ms(const char *text, int64_t now_ms, int64_t *ms)
{
    if (!text || !*text)
        return -EINVAL;
    if (strcmp(text, "now") == 0) {
        *ms = now_ms;
        return 0;
    }
    if (text[0] == '-') {
        uint64_t d;
        if (config_parse_duration_ms(text + 1, 1000, &d) < 0 || d > (uint64_t)now_ms)
            return -EINVAL;
        *ms = now_ms - (int64_t)d;
        return 0;
    }
    if (strspn(text, "0123456789") == strlen(text)) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(text, &end, 10);
        if (errno || v > (1ull << 48) - 1) /* twins.h's TWIN_TS_MAX */
            return -EINVAL;
        *ms = (int64_t)v;
        return 0;
    }
    int y, mo, d, h = 0, mi = 0, s = 0, frac = 0, n = 0;
    /* %d alone would take signs and blanks ("2026-+1-01", "T01:-1:00Z" as 00:59) */
    if (!time_shaped(text, "dddd-dd-dd") || sscanf(text, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 ||
        n != 10)
        return -EINVAL;
    const char *p = text + n;
    if (*p == 'T') {
        int m = 0;
        if (!time_shaped(p, "Tdd:dd:dd") || sscanf(p, "T%2d:%2d:%2d%n", &h, &mi, &s, &m) != 3 ||
            m != 9)
            return -EINVAL;
        p += m;
        if (*p == '.') {
            int digits = 0;
            for (p++; *p >= '0' && *p <= '9'; p++, digits++)
                if (digits < 3)
                    frac = frac * 10 + (*p - '0');
            if (digits == 0)
                return -EINVAL;
            for (; digits < 3; digits++)
                frac *= 10;
        }
        if (strcmp(p, "Z") != 0)
            return -EINVAL;
    } else if (*p) {
        return -EINVAL;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60 || y < 1970)
        return -EINVAL;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = s};
    time_t sec = timegm(&tm);
    if (sec == (time_t)-1 || tm.tm_mday != d) /* 2026-02-30 */
        return -EINVAL;
    *ms = (int64_t)sec * 1000 + frac;
    return 0;
}
