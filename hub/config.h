/* config: the hub's settings, from a YAML file, then TWINHUB_* environment variables, then
 * command-line flags (each overriding the one before). Every key is listed once, in config.c,
 * with its type, default, limits, and whether SIGHUP can change it. twinctl and twinsim read
 * the same file for the broker address and TLS. */
#ifndef HUB_CONFIG_H
#define HUB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_ERR_LEN 512

struct config {
    /* broker */
    char broker_url[256];      /* broker.url: tcp://127.0.0.1:1883 */
    char client_id[128];       /* broker.client_id: twinhub */
    char username[128];        /* broker.username */
    char password[128];        /* broker.password */
    int mqtt_version;          /* broker.mqtt_version: 5 | 4 (3.1.1) */
    unsigned keepalive_s;      /* broker.keepalive: 30s */
    unsigned session_expiry_s; /* broker.session_expiry: 1d */
    unsigned reconnect_min_s;  /* broker.reconnect_min: 1s */
    unsigned reconnect_max_s;  /* broker.reconnect_max: 30s */
    char tls_ca[256];          /* broker.tls.ca */
    char tls_cert[256];        /* broker.tls.cert */
    char tls_key[256];         /* broker.tls.key */
    bool tls_verify;           /* broker.tls.verify: true */

    /* topics */
    char devices_prefix[64]; /* topics.devices: devices/ */
    char twins_prefix[64];   /* topics.twins: twins/ */
    char hub_prefix[64];     /* topics.hub: hub/ */

    /* store */
    char db_path[256];         /* store.path: ./twinhub.db */
    bool sync_commit;          /* store.sync: os | commit */
    unsigned sync_interval_ms; /* store.sync_interval_ms: 1000 */
    uint64_t map_size;         /* store.map_size: 64MiB */
    uint64_t max_map_size;     /* store.max_map_size: 4GiB */
    bool writemap;             /* store.writemap: false (MDB_WRITEMAP: faster, less protected) */

    /* limits (reloadable) */
    uint64_t max_payload;      /* limits.max_payload: 64KiB */
    unsigned max_depth;        /* limits.max_depth: 16 (<= 32) */
    unsigned max_keys;         /* limits.max_keys: 1024 */
    uint64_t max_twin_size;    /* limits.max_twin_size: 256KiB (one encoded twin document) */
    unsigned max_twins;        /* limits.max_twins: 100000 (0: no limit) */
    unsigned max_clock_skew_s; /* limits.max_clock_skew: 5m, how far a device's ts may run
                                  ahead of the hub's clock (0: no check) */
    unsigned seq_restart_after; /* limits.seq_restart_after: 32 stale messages in a row,
                                   counting up, are a device that restarted (0: never) */

    /* history (reloadable) */
    unsigned history_max_points; /* history.max_points: 600 */
    char waveforms[512];         /* history.waveforms: "" or "ecg=250,pleth=125" (path=Hz) */
    unsigned waveform_s;         /* history.waveform_seconds: 60s kept of each waveform */

    /* commands (reloadable) */
    unsigned commands_max;        /* commands.max_per_device: 100 (stored per device, any
                                     state; at the cap the oldest finished, then the oldest
                                     pending, make room) */
    unsigned command_retention_s; /* commands.retention: 1d, how long a finished command
                                     is kept (0: until the cap pushes it out) */

    /* publishing */
    int publish_qos;           /* publish.qos: 1 */
    unsigned publish_inflight; /* publish.max_inflight: 64 */
    bool publish_json;         /* publish.encoding: msgpack | json */
    unsigned publish_queued_events; /* publish.max_queued_events: replies, events and predictions
                                       in memory (events past it wait in the store); 16384 */
    unsigned publish_stored_events; /* publish.max_stored_events: events waiting in the store
                                       for the broker, past which new ones are not stored (0: no
                                       limit); 1,000,000 */

    /* errors (reloadable) */
    double errors_rate;    /* errors.rate: 10 (reports per second on hub/errors) */
    unsigned errors_burst; /* errors.burst: 20 */

    /* rules (later issues) */
    char rules_path[256];   /* rules.file: "" = no rules; reloaded on SIGHUP and on change */
    unsigned rules_tick_ms; /* rules.tick: 1s, how soon a rule whose next change can't be
                               computed (now(), age() in arithmetic) is evaluated again */

    /* log (reloadable) */
    int log_level; /* log.level: info (enum log_level) */

    /* http: /metrics, /healthz, /readyz */
    char http_listen[128];         /* http.listen: 127.0.0.1:9464 (host:port, [v6]:port; port 0:
                                      any free one, logged; "" turns the listener off) */
    char http_tls_cert[256];       /* http.tls.cert: PEM; with http.tls.key, HTTPS */
    char http_tls_key[256];        /* http.tls.key */
    char http_token_file[256];     /* http.token_file: a bearer token every request must carry
                                      (required when http.listen is not loopback) */
    unsigned http_max_connections; /* http.max_connections: 32 */
    unsigned http_timeout_s;       /* http.timeout: 10s, an idle connection is closed */
    uint64_t http_max_request;     /* http.max_request: 16KiB of headers per request */
    char http_write_token_file[256]; /* http.write_token_file: the token that grants writes (POST) */
    char http_dashboard[256];      /* http.dashboard: the dashboard's files; "": none */
    unsigned http_max_streams;     /* http.max_streams: 16 live streams at once */
    unsigned http_stream_buffer;   /* http.stream_buffer: 16384 recent entries for resuming */
    uint64_t http_stream_bytes;    /* http.stream_bytes: 16MiB of their payloads */
    uint64_t http_max_body;        /* http.max_body: 64KiB of a POST's body */
    unsigned query_max_limit;      /* query.max_limit: 1000 rows per page */
    unsigned query_max_points;     /* query.max_points: 10000 points or buckets per answer */
    unsigned http_stall_ms;        /* http.stall: 30s, a message handled longer than this makes
                                      /healthz fail and withholds the systemd watchdog */

    /* aws: AWS IoT Device Shadow compatibility (hub/shadow.c) */
    bool aws_shadow; /* aws.shadow: false; true also serves $aws/things/{id}/shadow/... */

    /* where each value came from, for error messages and --print-config */
    char source[256]; /* the file read, or "" */
};

/* Splits an http.listen value "host:port" or "[v6addr]:port" into host (brackets removed)
 * and port. Returns 0, or -EINVAL with the reason in why. */
/* The next entry of a history.waveforms list at *s ("ecg=250,vitals.pleth=125"): its reported
 * path into path[0..path_size) and its rate (Hz, above 0, at most 100000); *s moves past it.
 * Returns 1 (an entry), 0 (the end), -EINVAL (why says what and where). */
int config_waveform_next(const char **s, char *path, size_t path_size, double *rate, char *why,
                         size_t size);

int config_listen_split(const char *s, char *host, size_t host_size, unsigned *port, char *why,
                        size_t why_size);

/* Fills every field with its default. */
void config_defaults(struct config *c);

/* Reads a YAML file over the current values. Unknown keys, wrong types and values out of
 * range are errors naming file, line and key ("twinhub.yaml:7: store.sync: expected 'os' or
 * 'commit', got 'always'"). On error *c may be partly updated: load into a copy. Returns 0,
 * -ENOENT (no such file), -EINVAL (the reason in err). */
int config_load_file(struct config *c, const char *path, char *err);

/* Applies TWINHUB_<KEY> variables (key with '.' -> '_', upper case: TWINHUB_STORE_SYNC,
 * TWINHUB_BROKER_URL, TWINHUB_LOG_LEVEL) from `envp` (NULL: environ). Returns 0 or -EINVAL. */
int config_load_env(struct config *c, char *const *envp, char *err);

/* Sets one key from text, as a flag would ("store.sync", "commit"). Returns 0 or -EINVAL. */
int config_set(struct config *c, const char *key, const char *value, char *err);

/* Writes the effective configuration as YAML (passwords masked) to `out`. */
void config_print(const struct config *c, FILE *out);

/* Copies into `cur` the keys SIGHUP may change from `next`; for every key that differs and
 * cannot change at run time, writes its name to `restart_keys` (comma-separated) so the hub
 * can log "restart needed". */
void config_apply_reload(struct config *cur, const struct config *next, char *restart_keys,
                         size_t size);

/* Parses "250ms", "30s", "5m", "1h", "1d" or a bare number of `unit_ms`. Returns 0/-EINVAL. */
int config_parse_duration_ms(const char *s, uint64_t unit_ms, uint64_t *out);
/* A time as every part of the product reads one (twinctl, the HTTP API): "1765100000000" (ms
 * since the epoch), "2026-12-07T10:00:00Z" (ISO 8601 UTC, optional .mmm; a bare date is its
 * midnight), "now" or "-10m" (a duration back from now_ms). Returns 0 or -EINVAL. */
int config_parse_time_ms(const char *text, int64_t now_ms, int64_t *ms);
/* Parses "64MiB", "4GiB", "512KiB", "1000" (bytes), also "KB/MB/GB" as powers of 1000. */
int config_parse_size(const char *s, uint64_t *out);

#endif
