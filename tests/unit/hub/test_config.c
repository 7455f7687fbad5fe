/* test_config: hub/config (file, environment, flags, print, reload, durations, sizes) and the
 * pieces of hub/log that can be checked without a terminal. Table-driven; every case runs in a
 * scratch directory so error messages name "twinhub.yaml" exactly as an operator would see. */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
static int checks;

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

static void write_file(const char *path, const char *text, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fwrite(text, 1, n, f);
    fclose(f);
}

static int load_text(struct config *c, const char *text, char *err)
{
    write_file("twinhub.yaml", text, strlen(text));
    return config_load_file(c, "twinhub.yaml", err);
}

/* config_print into a heap string; caller frees. */
static char *print_str(const struct config *c)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    config_print(c, f);
    fclose(f);
    return buf;
}

/* --------------------------------------------------------------------------------------------
 * Files that must be rejected, with the exact message
 * ----------------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    const char *yaml;
    const char *err;
} bad_files[] = {
    {"unknown top-level key", "brokr:\n  url: tcp://h:1883\n",
     "twinhub.yaml:1: unknown key 'brokr' (did you mean 'broker'?)"},
    {"unknown key, later line", "log:\n  level: info\n\nbrokr:\n  url: tcp://h:1883\n",
     "twinhub.yaml:4: unknown key 'brokr' (did you mean 'broker'?)"},
    {"unknown nested key", "broker:\n  tsl:\n    ca: ca.pem\n",
     "twinhub.yaml:2: unknown key 'broker.tsl' (did you mean 'broker.tls'?)"},
    {"unknown leaf key", "store:\n  snyc: os\n",
     "twinhub.yaml:2: unknown key 'store.snyc' (did you mean 'store.sync'?)"},
    {"unknown key, nothing close", "zzzzzzzz: 1\n",
     "twinhub.yaml:1: unknown key 'zzzzzzzz' (expected one of: broker, topics, store, limits, "
     "history, commands, publish, errors, rules, log, http, query, aws)"},
    {"http.listen without a port", "http: {listen: localhost}\n",
     "twinhub.yaml:1: http.listen: expected host:port (an IPv6 address in brackets: "
     "[::1]:9464), got 'localhost'"},
    {"http.listen port out of range", "http: {listen: \"127.0.0.1:70000\"}\n",
     "twinhub.yaml:1: http.listen: expected a port of 0..65535 after the ':', got "
     "'127.0.0.1:70000'"},
    {"http.listen bare IPv6", "http: {listen: \"::1:9464\"}\n",
     "twinhub.yaml:1: http.listen: expected host:port (an IPv6 address in brackets: "
     "[::1]:9464), got '::1:9464'"},
    {"waveform without a rate", "history: {waveforms: ecg}\n",
     "twinhub.yaml:1: history.waveforms: expected path=Hz entries such as ecg=250 ('ecg' has no "
     "rate), got 'ecg'"},
    {"waveform rate 0", "history: {waveforms: \"ecg=250,pleth=0\"}\n",
     "twinhub.yaml:1: history.waveforms: expected a rate of Hz above 0 and at most 100000 "
     "('pleth=0'), got 'ecg=250,pleth=0'"},
    {"waveform bad path", "history: {waveforms: \"a..b=3\"}\n",
     "twinhub.yaml:1: history.waveforms: expected a path under reported such as ecg or "
     "vitals.pleth ('a..b'), got 'a..b=3'"},
    {"http.listen signed port", "http: {listen: \"127.0.0.1: -0\"}\n",
     "twinhub.yaml:1: http.listen: expected a port of 0..65535 after the ':', got "
     "'127.0.0.1: -0'"},
    {"http.listen IPv6 unclosed", "http: {listen: \"[::1:9464\"}\n",
     "twinhub.yaml:1: http.listen: expected [IPv6 address]:port, got '[::1:9464'"},
    {"enum", "broker:\n  url: tcp://h:1883\nstore:\n  path: /var/lib/twinhub\n\n\n  sync: always\n",
     "twinhub.yaml:7: store.sync: expected 'os' or 'commit', got 'always'"},
    {"enum of four", "log: {level: verbose}\n",
     "twinhub.yaml:1: log.level: expected 'error', 'warn', 'info' or 'debug', got 'verbose'"},
    {"mqtt version", "broker:\n  mqtt_version: 3\n",
     "twinhub.yaml:2: broker.mqtt_version: expected '5' or '4', got '3'"},
    {"syntax: block mapping", "store:\n  sync: os\n bad: [\n",
     "twinhub.yaml:3:2: did not find expected key (while parsing a block mapping at line 1)"},
    {"syntax: tab", "store:\n\tsync: os\n",
     "twinhub.yaml:2:1: found character that cannot start any token (while scanning for the "
     "next token at line 2)"},
    {"syntax: unclosed flow map", "store: {sync: os\n",
     "twinhub.yaml:2:1: did not find expected ',' or '}' (while parsing a flow mapping at line "
     "1)"},
    {"syntax: undefined alias", "store: *x\n", "twinhub.yaml:1:8: found undefined alias"},
    {"not UTF-8", "log: {level: \xff}\n", "twinhub.yaml: invalid leading UTF-8 octet at byte 13"},
    {"root is a list", "- broker\n- store\n",
     "twinhub.yaml:1: expected a map of sections (broker, store, ...), got a list"},
    {"root is a scalar", "hello\n",
     "twinhub.yaml:1: expected a map of sections (broker, store, ...), got a value"},
    {"section is a scalar", "store: fast\n", "twinhub.yaml:1: store: expected a map, got 'fast'"},
    {"section is a list", "broker:\n  tls:\n    - ca.pem\n",
     "twinhub.yaml:3: broker.tls: expected a map, got a list"},
    {"leaf is a list", "store:\n  sync: [os]\n",
     "twinhub.yaml:2: store.sync: expected 'os' or 'commit', got a list"},
    {"leaf is a map", "broker:\n  url: {host: h}\n",
     "twinhub.yaml:2: broker.url: expected a string, got a map"},
    {"key is a list", "? [a, b]\n: 1\n", "twinhub.yaml:1: expected a key name, got a list"},
    {"above maximum", "limits:\n  max_depth: 40\n",
     "twinhub.yaml:2: limits.max_depth: 40 is above the maximum 32"},
    {"below minimum", "limits:\n  max_keys: 0\n",
     "twinhub.yaml:2: limits.max_keys: 0 is below the minimum 1"},
    {"uint overflow", "limits:\n  max_keys: 99999999999999999999999\n",
     "twinhub.yaml:2: limits.max_keys: 99999999999999999999999 is above the maximum 65536"},
    {"size above maximum", "limits: {max_payload: 1GiB}\n",
     "twinhub.yaml:1: limits.max_payload: 1GiB is above the maximum 256MiB"},
    {"size below minimum", "store: {map_size: 4KiB}\n",
     "twinhub.yaml:1: store.map_size: 4KiB is below the minimum 1MiB"},
    {"duration above maximum", "broker: {keepalive: 1d}\n",
     "twinhub.yaml:1: broker.keepalive: 1d is above the maximum 65535s"},
    {"duration below minimum", "store: {sync_interval_ms: 5}\n",
     "twinhub.yaml:1: store.sync_interval_ms: 5 is below the minimum 10ms"},
    {"duration not whole seconds", "broker: {keepalive: 1500ms}\n",
     "twinhub.yaml:1: broker.keepalive: 1500ms is not a whole number of seconds"},
    {"duration bad unit", "broker: {keepalive: 30x}\n",
     "twinhub.yaml:1: broker.keepalive: expected a duration (250ms, 30s, 5m, 1h, 1d or "
     "seconds), got '30x'"},
    {"size bad unit", "store: {map_size: 64Mi}\n",
     "twinhub.yaml:1: store.map_size: expected a size (512KiB, 64MiB, 4GiB or bytes), got "
     "'64Mi'"},
    {"negative uint", "history: {max_points: -3}\n",
     "twinhub.yaml:1: history.max_points: expected a whole number, got '-3'"},
    {"uint with junk", "publish: {qos: 1x}\n",
     "twinhub.yaml:1: publish.qos: expected a whole number, got '1x'"},
    {"qos above maximum", "publish: {qos: 3}\n",
     "twinhub.yaml:1: publish.qos: 3 is above the maximum 2"},
    {"bad bool", "broker: {tls: {verify: maybe}}\n",
     "twinhub.yaml:1: broker.tls.verify: expected true or false, got 'maybe'"},
    {"bad double", "errors: {rate: fast}\n",
     "twinhub.yaml:1: errors.rate: expected a number, got 'fast'"},
    {"double nan", "errors: {rate: nan}\n",
     "twinhub.yaml:1: errors.rate: expected a number, got 'nan'"},
    {"double below minimum", "errors: {rate: -1}\n",
     "twinhub.yaml:1: errors.rate: -1 is below the minimum 0"},
    {"null for a number", "limits:\n  max_depth:\n",
     "twinhub.yaml:2: limits.max_depth: expected a whole number, got nothing"},
    {"string too long",
     "broker:\n  client_id: "
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
     "twinhub.yaml:2: broker.client_id: 136 bytes is longer than the maximum 127"},
    {"string with NUL", "rules: {file: \"a\\0b\"}\n",
     "twinhub.yaml:1: rules.file: the value contains a NUL byte"},
    {"empty required string", "store: {path: \"\"}\n",
     "twinhub.yaml:1: store.path: expected a non-empty string, got nothing"},
    {"bad url", "broker: {url: 127.0.0.1:1883}\n",
     "twinhub.yaml:1: broker.url: expected a broker URL (tcp://, ssl://, mqtt://, mqtts://, "
     "ws:// or wss://), got '127.0.0.1:1883'"},
    {"topic prefix with wildcard", "topics: {devices: dev/+/}\n",
     "twinhub.yaml:1: topics.devices: expected a topic prefix ending in '/' without '+', '#' or "
     "empty levels, got 'dev/+/'"},
    {"topic prefix without slash", "topics: {twins: twins}\n",
     "twinhub.yaml:1: topics.twins: expected a topic prefix ending in '/' without '+', '#' or "
     "empty levels, got 'twins'"},
    {"duplicate key", "store:\n  sync: os\n  path: db\n  sync: commit\n",
     "twinhub.yaml:4: store.sync: set twice (first on line 2)"},
    {"duplicate through dotted key", "store:\n  sync: os\nstore.sync: commit\n",
     "twinhub.yaml:3: store.sync: set twice (first on line 2)"},
    {"two documents", "log: {level: info}\n---\nlog: {level: debug}\n",
     "twinhub.yaml:3: expected one YAML document, found a second"},
    {"map size above max map size", "store:\n  map_size: 8GiB\n",
     "twinhub.yaml:2: store.map_size: 8GiB is above store.max_map_size 4GiB"},
    {"reconnect min above max", "broker: {reconnect_min: 1m, reconnect_max: 10s}\n",
     "twinhub.yaml:1: broker.reconnect_min: 1m is above broker.reconnect_max 10s"},
};

static void test_bad_files(void)
{
    char err[CONFIG_ERR_LEN];
    for (size_t i = 0; i < sizeof bad_files / sizeof bad_files[0]; i++) {
        struct config c;
        config_defaults(&c);
        err[0] = '\0';
        int rc = load_text(&c, bad_files[i].yaml, err);
        CHECK(rc == -EINVAL, "%s: rc %d", bad_files[i].name, rc);
        CHECK(strcmp(err, bad_files[i].err) == 0, "%s:\n   got  %s\n   want %s", bad_files[i].name,
              err, bad_files[i].err);
    }
}

/* --------------------------------------------------------------------------------------------
 * Files that load
 * ----------------------------------------------------------------------------------------- */

static void test_good_files(void)
{
    struct config c, d;
    char err[CONFIG_ERR_LEN];
    config_defaults(&d);

    static const char *const empty[] = {"", "# only a comment\n", "---\n", "~\n",
                                        "broker:\nstore:\n"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        config_defaults(&c);
        int rc = load_text(&c, empty[i], err);
        CHECK(rc == 0, "empty file %zu: %d %s", i, rc, err);
        CHECK(strcmp(c.broker_url, d.broker_url) == 0 && c.max_depth == d.max_depth,
              "empty file %zu changed values", i);
        CHECK(strcmp(c.source, "twinhub.yaml") == 0, "source '%s'", c.source);
    }

    /* The example from the issue. */
    config_defaults(&c);
    int rc =
        load_text(&c,
                  "broker:\n"
                  "  url: tcp://127.0.0.1:1883\n"
                  "  client_id: twinhub\n"
                  "  tls: {ca: certs/ca.pem, cert: certs/hub.pem, key: certs/hub.key, verify: "
                  "true}\n"
                  "store: {path: /var/lib/twinhub, sync: os, sync_interval_ms: 1000, map_size: "
                  "64MiB, max_map_size: 4GiB}\n"
                  "limits: {max_payload: 64KiB, max_depth: 16, max_keys: 1024}\n"
                  "history: {max_points: 600}\n"
                  "publish: {qos: 1, max_inflight: 64, encoding: msgpack}\n"
                  "errors: {rate: 10, burst: 20}\n"
                  "rules: {file: rules.yaml}\n"
                  "log: {level: info}\n"
                  "topics: {devices: devices/, twins: twins/, hub: hub/}\n",
                  err);
    CHECK(rc == 0, "example: %d %s", rc, err);
    CHECK(strcmp(c.tls_ca, "certs/ca.pem") == 0, "relative path kept: '%s'", c.tls_ca);
    CHECK(strcmp(c.rules_path, "rules.yaml") == 0, "rules '%s'", c.rules_path);
    CHECK(strcmp(c.db_path, "/var/lib/twinhub") == 0, "db '%s'", c.db_path);
    CHECK(c.map_size == 64ull << 20 && c.max_map_size == 4ull << 30, "sizes");

    /* Values of every type, spelled the ways operators spell them. */
    config_defaults(&c);
    rc = load_text(&c,
                   "broker:\n"
                   "  keepalive: 1m\n"
                   "  session_expiry: 2h\n"
                   "  reconnect_max: 5m\n"
                   "  mqtt_version: 4\n"
                   "  tls:\n"
                   "    verify: no\n"
                   "    ca:\n"
                   "store:\n"
                   "  path: data/twins\n"
                   "  sync: COMMIT\n"
                   "  sync_interval_ms: 2s\n"
                   "  map_size: 128 MiB\n"
                   "  max_map_size: 1000000000\n"
                   "limits: {max_payload: 1KB, max_depth: 32}\n"
                   "publish: {encoding: json, qos: 0}\n"
                   "errors: {rate: 0.5}\n"
                   "log: {level: DEBUG}\n",
                   err);
    CHECK(rc == 0, "types: %d %s", rc, err);
    CHECK(c.keepalive_s == 60 && c.session_expiry_s == 7200 && c.reconnect_max_s == 300,
          "durations %u %u %u", c.keepalive_s, c.session_expiry_s, c.reconnect_max_s);
    CHECK(c.mqtt_version == 4, "mqtt %d", c.mqtt_version);
    CHECK(!c.tls_verify && c.tls_ca[0] == '\0', "tls");
    CHECK(strcmp(c.db_path, "data/twins") == 0, "relative db path '%s'", c.db_path);
    CHECK(c.sync_commit && c.sync_interval_ms == 2000, "sync");
    CHECK(c.map_size == 128ull << 20 && c.max_map_size == 1000000000, "sizes");
    CHECK(c.max_payload == 1000 && c.max_depth == 32, "limits");
    CHECK(c.publish_json && c.publish_qos == 0, "publish");
    CHECK(c.errors_rate == 0.5, "rate %g", c.errors_rate);
    CHECK(c.log_level == LOG_DEBUG, "log %d", c.log_level);

    /* A failed load of a missing file says so and returns -ENOENT. */
    rc = config_load_file(&c, "no-such.yaml", err);
    CHECK(rc == -ENOENT, "missing: %d", rc);
    CHECK(strcmp(err, "no-such.yaml: No such file or directory") == 0, "missing: %s", err);
    rc = config_load_file(&c, ".", err);
    CHECK(rc == -EINVAL && strcmp(err, ".: is a directory") == 0, "dir: %d %s", rc, err);
}

static void test_defaults(void)
{
    struct config c;
    config_defaults(&c);
    CHECK(strcmp(c.broker_url, "tcp://127.0.0.1:1883") == 0, "url");
    CHECK(strcmp(c.client_id, "twinhub") == 0, "client_id");
    CHECK(c.username[0] == '\0' && c.password[0] == '\0', "credentials");
    CHECK(c.mqtt_version == 5, "mqtt_version");
    CHECK(c.keepalive_s == 30 && c.session_expiry_s == 86400, "keepalive/session");
    CHECK(c.reconnect_min_s == 1 && c.reconnect_max_s == 30, "reconnect");
    CHECK(c.tls_ca[0] == '\0' && c.tls_verify, "tls");
    CHECK(strcmp(c.devices_prefix, "devices/") == 0 && strcmp(c.twins_prefix, "twins/") == 0 &&
              strcmp(c.hub_prefix, "hub/") == 0,
          "topics");
    CHECK(strcmp(c.db_path, "./twinhub.db") == 0, "db_path");
    CHECK(!c.sync_commit && c.sync_interval_ms == 1000, "sync");
    CHECK(c.map_size == 64ull << 20 && c.max_map_size == 4ull << 30, "map sizes");
    CHECK(c.max_payload == 65536 && c.max_depth == 16 && c.max_keys == 1024, "limits");
    CHECK(c.history_max_points == 600, "history");
    CHECK(c.publish_qos == 1 && c.publish_inflight == 64 && !c.publish_json, "publish");
    CHECK(c.errors_rate == 10 && c.errors_burst == 20, "errors");
    CHECK(c.rules_path[0] == '\0', "rules");
    CHECK(c.log_level == LOG_INFO, "log");
    CHECK(c.source[0] == '\0', "source");
}

/* --------------------------------------------------------------------------------------------
 * Environment and flags
 * ----------------------------------------------------------------------------------------- */

static void test_env(void)
{
    struct config c;
    char err[CONFIG_ERR_LEN];

    char *const ok[] = {"PATH=/usr/bin",
                        "TWINHUB_STORE_SYNC=commit",
                        "TWINHUB_BROKER_URL=ssl://broker.example:8883",
                        "TWINHUB_BROKER_TLS_CA=certs/ca.pem",
                        "TWINHUB_LOG_LEVEL=debug",
                        "TWINHUB_STORE_MAP_SIZE=256MiB",
                        "TWINHUB_STORE_SYNC_INTERVAL_MS=250ms",
                        "TWINHUB_BROKER_TLS_VERIFY=false",
                        "TWINHUB_CONFIG=/etc/twinhub.yaml", /* not a key: ignored */
                        "TWINHUB_STORE=x",
                        NULL};
    config_defaults(&c);
    int rc = config_load_env(&c, ok, err);
    CHECK(rc == 0, "env: %d %s", rc, err);
    CHECK(c.sync_commit, "store.sync");
    CHECK(strcmp(c.broker_url, "ssl://broker.example:8883") == 0, "url '%s'", c.broker_url);
    CHECK(strcmp(c.tls_ca, "certs/ca.pem") == 0, "ca '%s'", c.tls_ca);
    CHECK(c.log_level == LOG_DEBUG, "log");
    CHECK(c.map_size == 256ull << 20, "map size");
    CHECK(c.sync_interval_ms == 250, "interval %u", c.sync_interval_ms);
    CHECK(!c.tls_verify, "verify");

    /* The file, then the environment over it. */
    config_defaults(&c);
    rc = load_text(&c, "store: {sync: os, path: from-file}\n", err);
    CHECK(rc == 0, "file: %s", err);
    char *const over[] = {"TWINHUB_STORE_SYNC=commit", NULL};
    rc = config_load_env(&c, over, err);
    CHECK(rc == 0 && c.sync_commit && strcmp(c.db_path, "from-file") == 0, "env over file");

    /* NULL envp means the process environment. */
    setenv("TWINHUB_HISTORY_MAX_POINTS", "42", 1);
    config_defaults(&c);
    rc = config_load_env(&c, NULL, err);
    CHECK(rc == 0 && c.history_max_points == 42, "environ: %d %u", rc, c.history_max_points);
    unsetenv("TWINHUB_HISTORY_MAX_POINTS");

    static const struct {
        const char *var;
        const char *err;
    } bad[] = {
        {"TWINHUB_STORE_SYNC=always",
         "TWINHUB_STORE_SYNC: store.sync: expected 'os' or 'commit', got 'always'"},
        {"TWINHUB_LIMITS_MAX_DEPTH=40",
         "TWINHUB_LIMITS_MAX_DEPTH: limits.max_depth: 40 is above the maximum 32"},
        {"TWINHUB_BROKER_KEEPALIVE=soon",
         "TWINHUB_BROKER_KEEPALIVE: broker.keepalive: expected a duration (250ms, 30s, 5m, 1h, "
         "1d or seconds), got 'soon'"},
        {"TWINHUB_STORE_PATH=", "TWINHUB_STORE_PATH: store.path: expected a non-empty string, got "
                                "nothing"},
        {"TWINHUB_STORE_MAP_SIZE=8GiB",
         "environment: store.map_size: 8GiB is above store.max_map_size 4GiB"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *const envp[] = {(char *)bad[i].var, NULL};
        config_defaults(&c);
        err[0] = '\0';
        rc = config_load_env(&c, envp, err);
        CHECK(rc == -EINVAL, "%s: rc %d", bad[i].var, rc);
        CHECK(strcmp(err, bad[i].err) == 0, "%s:\n   got  %s\n   want %s", bad[i].var, err,
              bad[i].err);
    }
}

static void test_set(void)
{
    struct config c;
    char err[CONFIG_ERR_LEN];
    config_defaults(&c);
    CHECK(config_set(&c, "store.sync", "commit", err) == 0 && c.sync_commit, "set sync");
    CHECK(config_set(&c, "store.path", "/tmp/x", err) == 0 && strcmp(c.db_path, "/tmp/x") == 0,
          "set path");
    CHECK(config_set(&c, "log.level", "warn", err) == 0 && c.log_level == LOG_WARN, "set log");
    CHECK(config_set(&c, "store.snyc", "os", err) == -EINVAL &&
              strcmp(err, "unknown key 'store.snyc' (did you mean 'store.sync'?)") == 0,
          "unknown: %s", err);
    CHECK(config_set(&c, "store", "os", err) == -EINVAL, "section is not a key");
    CHECK(config_set(&c, "publish.qos", "5", err) == -EINVAL &&
              strcmp(err, "publish.qos: 5 is above the maximum 2") == 0,
          "range: %s", err);
    CHECK(c.publish_qos == 1, "failed set left the value");
}

/* --------------------------------------------------------------------------------------------
 * Durations and sizes
 * ----------------------------------------------------------------------------------------- */

static void test_durations(void)
{
    static const struct {
        const char *s;
        uint64_t unit;
        int rc;
        uint64_t ms;
    } cases[] = {
        {"250ms", 1000, 0, 250},
        {"30s", 1000, 0, 30000},
        {"5m", 1000, 0, 300000},
        {"1h", 1000, 0, 3600000},
        {"1d", 1000, 0, 86400000},
        {"1h30m", 1000, 0, 5400000},
        {"1m30s500ms", 1000, 0, 90500},
        {"5 m", 1000, 0, 300000},
        {"0", 1000, 0, 0},
        {"30", 1000, 0, 30000},
        {"1000", 1, 0, 1000},
        {"", 1000, -EINVAL, 0},
        {"s", 1000, -EINVAL, 0},
        {"5x", 1000, -EINVAL, 0},
        {"-1s", 1000, -EINVAL, 0},
        {"1.5s", 1000, -EINVAL, 0},
        {"30S", 1000, -EINVAL, 0},
        {"5 ", 1000, -EINVAL, 0},
        {"1h30", 1000, -EINVAL, 0},
        {"99999999999999999999d", 1000, -EINVAL, 0},
        {"999999999999999d", 1000, -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t ms = 12345;
        int rc = config_parse_duration_ms(cases[i].s, cases[i].unit, &ms);
        CHECK(rc == cases[i].rc, "duration '%s': rc %d", cases[i].s, rc);
        if (rc == 0)
            CHECK(ms == cases[i].ms, "duration '%s': %llu", cases[i].s, (unsigned long long)ms);
        else
            CHECK(ms == 12345, "duration '%s': output written on error", cases[i].s);
    }
}

static void test_sizes(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t bytes;
    } cases[] = {
        {"64MiB", 0, 64ull << 20},
        {"4GiB", 0, 4ull << 30},
        {"512KiB", 0, 512ull << 10},
        {"1000", 0, 1000},
        {"1KB", 0, 1000},
        {"2MB", 0, 2000000},
        {"3GB", 0, 3000000000ull},
        {"1TiB", 0, 1ull << 40},
        {"64 MiB", 0, 64ull << 20},
        {"64mib", 0, 64ull << 20},
        {"10B", 0, 10},
        {"0", 0, 0},
        {"", -EINVAL, 0},
        {"MiB", -EINVAL, 0},
        {"64Mi", -EINVAL, 0},
        {"1K", -EINVAL, 0},
        {"-1", -EINVAL, 0},
        {"1.5GiB", -EINVAL, 0},
        {"64MiB ", -EINVAL, 0},
        {"99999999999TiB", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t b = 777;
        int rc = config_parse_size(cases[i].s, &b);
        CHECK(rc == cases[i].rc, "size '%s': rc %d", cases[i].s, rc);
        if (rc == 0)
            CHECK(b == cases[i].bytes, "size '%s': %llu", cases[i].s, (unsigned long long)b);
    }
}

/* --------------------------------------------------------------------------------------------
 * Reload
 * ----------------------------------------------------------------------------------------- */

static void test_reload(void)
{
    struct config cur, next;
    char restart[256];
    config_defaults(&cur);
    next = cur;

    config_apply_reload(&cur, &next, restart, sizeof restart);
    CHECK(restart[0] == '\0', "nothing changed: '%s'", restart);

    next.log_level = LOG_DEBUG;
    next.max_depth = 8;
    next.max_keys = 10;
    next.max_payload = 1000;
    next.history_max_points = 5;
    next.errors_rate = 2.5;
    next.errors_burst = 3;
    snprintf(next.rules_path, sizeof next.rules_path, "rules2.yaml");
    snprintf(next.broker_url, sizeof next.broker_url, "tcp://other:1883");
    snprintf(next.db_path, sizeof next.db_path, "/elsewhere");
    next.sync_commit = true;

    config_apply_reload(&cur, &next, restart, sizeof restart);
    CHECK(cur.log_level == LOG_DEBUG && cur.max_depth == 8 && cur.max_keys == 10 &&
              cur.max_payload == 1000 && cur.history_max_points == 5 && cur.errors_rate == 2.5 &&
              cur.errors_burst == 3 && strcmp(cur.rules_path, "rules2.yaml") == 0,
          "reloadable keys copied");
    CHECK(strcmp(cur.broker_url, "tcp://127.0.0.1:1883") == 0 &&
              strcmp(cur.db_path, "./twinhub.db") == 0 && !cur.sync_commit,
          "restart keys not copied");
    CHECK(strcmp(restart, "broker.url,store.path,store.sync") == 0, "restart '%s'", restart);

    /* A short buffer keeps whole names. */
    char small[16];
    config_apply_reload(&cur, &next, small, sizeof small);
    CHECK(strcmp(small, "broker.url") == 0, "short list '%s'", small);
    config_apply_reload(&cur, &next, NULL, 0);
}

/* --------------------------------------------------------------------------------------------
 * Print -> load round trip
 * ----------------------------------------------------------------------------------------- */

/* Every key, each with a value other than its default. */
static const char every_key[] = "broker:\n"
                                "  url: \"ssl://broker.example:8883\"\n"
                                "  client_id: 'hub-\"7\"'\n"
                                "  username: ops\n"
                                "  password: s3cret\n"
                                "  mqtt_version: 4\n"
                                "  keepalive: 45s\n"
                                "  session_expiry: 2h\n"
                                "  reconnect_min: 2s\n"
                                "  reconnect_max: 2m\n"
                                "  tls:\n"
                                "    ca: certs/ca.pem\n"
                                "    cert: certs/hub.pem\n"
                                "    key: \"certs/hub key #1.pem\"\n"
                                "    verify: false\n"
                                "topics:\n"
                                "  devices: site1/devices/\n"
                                "  twins: site1/twins/\n"
                                "  hub: site1/hub/\n"
                                "store:\n"
                                "  path: /var/lib/twinhub\n"
                                "  sync: commit\n"
                                "  sync_interval_ms: 1500\n"
                                "  map_size: 100000000\n"
                                "  max_map_size: 8GiB\n"
                                "  writemap: true\n"
                                "limits:\n"
                                "  max_payload: 128KiB\n"
                                "  max_depth: 8\n"
                                "  max_keys: 256\n"
                                "  max_twin_size: 1MiB\n"
                                "  max_twins: 5000\n"
                                "  max_clock_skew: 1m\n"
                                "  seq_restart_after: 7\n"
                                "history:\n"
                                "  max_points: 1200\n"
                                "  waveforms: ecg=250,v.pleth=62.5\n"
                                "  waveform_seconds: 2m\n"
                                "commands:\n"
                                "  max_per_device: 20\n"
                                "  retention: 1h\n"
                                "publish:\n"
                                "  qos: 2\n"
                                "  max_inflight: 32\n"
                                "  encoding: json\n"
                                "  max_queued_events: 100\n"
                                "  max_stored_events: 5000\n"
                                "errors:\n"
                                "  rate: 0.1\n"
                                "  burst: 7\n"
                                "rules:\n"
                                "  file: rules.yaml\n"
                                "  tick: 250ms\n"
                                "log:\n"
                                "  level: warn\n"
                                "http:\n"
                                "  listen: \"[::1]:9999\"\n"
                                "  tls: {cert: h.pem, key: h.key}\n"
                                "  token_file: /etc/twinhub/token\n"
                                "  max_connections: 4\n"
                                "  timeout: 3s\n"
                                "  max_request: 8KiB\n"
                                "  stall: 5s\n"
                                "  write_token_file: /etc/twinhub/write-token\n"
                                "  dashboard: /usr/share/twinhub/web\n"
                                "  max_streams: 4\n"
                                "  stream_buffer: 1000\n"
                                "  stream_bytes: 2MiB\n"
                                "  max_body: 8KiB\n"
                                "query:\n"
                                "  max_limit: 50\n"
                                "  max_points: 500\n"
                                "aws:\n"
                                "  shadow: true\n";

/* Lines that hold one key's value ("  name: value", or "  # password: ..."): every line but
 * the title comment and section headers. Cuts text into lines in place. */
static size_t value_lines(char *text, char **lines, size_t max)
{
    size_t n = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && n < max;
         l = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(l);
        if (l == text || l[len - 1] == ':')
            continue;
        lines[n++] = l;
    }
    return n;
}

static void test_round_trip(void)
{
    struct config a, b, d;
    char err[CONFIG_ERR_LEN];

    config_defaults(&a);
    int rc = load_text(&a, every_key, err);
    CHECK(rc == 0, "every key: %d %s", rc, err);
    CHECK(strcmp(a.client_id, "hub-\"7\"") == 0, "client_id '%s'", a.client_id);

    char *pa = print_str(&a);
    CHECK(!strstr(pa, "s3cret"), "password printed:\n%s", pa);
    write_file("printed.yaml", pa, strlen(pa));
    config_defaults(&b);
    rc = config_load_file(&b, "printed.yaml", err);
    CHECK(rc == 0, "printed config does not load: %s\n%s", err, pa);
    CHECK(b.password[0] == '\0', "masked password loaded as '%s'", b.password);
    /* Equal apart from the title comment (it names the file) and the masked password. */
    memcpy(b.password, a.password, sizeof b.password);
    char *pb = print_str(&b);
    CHECK(strcmp(strchr(pa, '\n'), strchr(pb, '\n')) == 0, "round trip differs:\n%s\n---\n%s", pa,
          pb);
    CHECK(strcmp(a.tls_key, b.tls_key) == 0 && a.errors_rate == b.errors_rate &&
              a.map_size == b.map_size && a.sync_interval_ms == b.sync_interval_ms,
          "fields");

    /* every_key really sets every key: each printed value differs from the default's. */
    config_defaults(&d);
    char *pd = print_str(&d);
    char *la[64], *ld[64];
    size_t na = value_lines(pa, la, 64), nd = value_lines(pd, ld, 64);
    CHECK(na == nd && na > 30, "value lines %zu vs %zu", na, nd);
    for (size_t i = 0; i < na && i < nd; i++)
        CHECK(strcmp(la[i], ld[i]) != 0, "key not covered by every_key: %s", la[i]);

    /* Defaults round-trip too. */
    free(pd);
    pd = print_str(&d);
    write_file("printed.yaml", pd, strlen(pd));
    config_defaults(&b);
    rc = config_load_file(&b, "printed.yaml", err);
    char *pb2 = print_str(&b);
    CHECK(rc == 0 && strcmp(strchr(pd, '\n'), strchr(pb2, '\n')) == 0, "defaults: %s", err);

    free(pa);
    free(pb);
    free(pd);
    free(pb2);
}

/* --------------------------------------------------------------------------------------------
 * log
 * ----------------------------------------------------------------------------------------- */

static void test_log(void)
{
    char buf[64];
    CHECK(strcmp(log_quote(buf, sizeof buf, "plain", 5), "plain") == 0, "bare");
    CHECK(strcmp(log_quote(buf, sizeof buf, "", 0), "\"\"") == 0, "empty");
    CHECK(strcmp(log_quote(buf, sizeof buf, "a b", 3), "\"a b\"") == 0, "space");
    CHECK(strcmp(log_quote(buf, sizeof buf, "k=v", 3), "\"k=v\"") == 0, "equals");
    CHECK(strcmp(log_quote(buf, sizeof buf, "q\"\\\n\x01", 5), "\"q\\\"\\\\\\n\\u0001\"") == 0,
          "escapes: %s", buf);
    CHECK(strcmp(log_quote(buf, 8, "abcdefghijk", 11), "abcdefg") == 0, "bare cut: %s", buf);
    CHECK(strcmp(log_quote(buf, 8, "a\"cdefghij", 10), "\"a\\\"cd\"") == 0, "quoted cut: %s", buf);
    CHECK(strcmp(log_quote(buf, 5, "a\nbcd", 5), "\"a\"") == 0, "escape not split: %s", buf);

    CHECK(log_level_parse("warn") == LOG_WARN && log_level_parse("loud") == -1, "parse");
    CHECK(strcmp(log_level_name(LOG_DEBUG), "debug") == 0, "name");

    /* Lines go to stderr: capture them through a pipe. */
    int fds[2], saved = dup(STDERR_FILENO);
    CHECK(pipe(fds) == 0, "pipe");
    dup2(fds[1], STDERR_FILENO);
    log_set_level(LOG_INFO);
    log_info("hub started", "version=%s", "0.1.0");
    log_debug("hidden", "x=%d", 1);
    log_warn("bad \"input\"", "topic=%s", "devices/x");
    char big[6000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_error("long", "v=\"%s\"", big);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    char out[16384];
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    out[n > 0 ? n : 0] = '\0';

    char *l1 = out, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    CHECK(strncmp(l1, "ts=", 3) == 0 && strlen(l1) > 28 && l1[7] == '-' && l1[13] == 'T' &&
              l1[26] == 'Z',
          "ts: %.40s", l1);
    CHECK(strstr(l1, "Z level=info msg=\"hub started\" version=0.1.0\n") != NULL, "line1: %.80s",
          l1);
    CHECK(strstr(l2, "level=warn msg=\"bad \\\"input\\\"\" topic=devices/x\n") != NULL,
          "line2: %.80s", l2);
    size_t len3 = strlen(l3);
    CHECK(len3 <= 4096 && len3 > 4000, "long line %zu bytes", len3);
    CHECK(len3 > 20 && strcmp(l3 + len3 - 21, "\" log_truncated=true\n") == 0, "cut: %s",
          l3 + (len3 > 40 ? len3 - 40 : 0));
    CHECK(!strstr(out, "hidden"), "debug written at info");
    CHECK(log_get_level() == LOG_INFO, "level");
}

int main(void)
{
    char dir[] = "/tmp/test_config.XXXXXX";
    if (!mkdtemp(dir) || chdir(dir) != 0) {
        perror("scratch directory");
        return 2;
    }

    test_defaults();
    test_bad_files();
    test_good_files();
    test_env();
    test_set();
    test_durations();
    test_sizes();
    test_reload();
    test_round_trip();
    test_log();

    unlink("twinhub.yaml");
    unlink("printed.yaml");
    if (chdir("/") != 0 || rmdir(dir) != 0) {
        fprintf(stderr, "scratch directory %s left behind\n", dir);
        failures++;
    }
    printf("test_config: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
