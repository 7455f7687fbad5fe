/* bench_sub: the counting subscriber of the benchmarks. It subscribes to one filter, decodes
 * every message (a twin state document, or raw telemetry as a relay forwards it), records the
 * latency from the device's timestamp, and reports when every device has reached a final seq.
 * It prints figures and never judges them.
 *
 * Threads: on_message runs on Paho's receive thread and does all the work under st.mu; main()
 * waits on st.cond for "all done", the timeout or a signal.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "twins.h"

#define LAT_MAX (64u << 20) /* latency samples kept; later ones are counted but not kept */

enum mode { MODE_STATE, MODE_TELEMETRY };

struct dev_slot {
    char *id; /* NULL: free */
    uint64_t seq;
    bool done;
};

static struct {
    const char *broker, *topic, *ready_file;
    unsigned devices;
    uint64_t final_seq;
    enum mode mode;
    unsigned timeout_s;
    int qos;
    bool verbose;
    int id_level; /* the level of the topic that holds the id ('+' in the filter), -1: none */

    pthread_mutex_t mu;
    pthread_cond_t cond;
    msgpack_zone zone;
    struct twin_limits lim;
    uint64_t received, retained_skipped, bad, unknown_ids;
    struct dev_slot *table;
    size_t table_cap, table_len;
    unsigned devices_done;
    int64_t done_unix_ms;
    uint32_t *lat_us; /* latency in microseconds, one per message with a usable ts */
    size_t lat_len, lat_cap;
    uint32_t lat_max_us;
} st;

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    (void)sig;
    stop_signal = 1;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* Finds or adds the id. Returns NULL when the table is full (counted by the caller). */
static struct dev_slot *dev_find(const char *id, size_t n)
{
    size_t mask = st.table_cap - 1, i = hash(id, n) & mask;
    for (;;) {
        struct dev_slot *s = &st.table[i];
        if (!s->id) {
            if (st.table_len * 4 >= st.table_cap * 3)
                return NULL;
            s->id = malloc(n + 1);
            if (!s->id)
                return NULL;
            memcpy(s->id, id, n);
            s->id[n] = '\0';
            st.table_len++;
            return s;
        }
        if (strlen(s->id) == n && memcmp(s->id, id, n) == 0)
            return s;
        i = (i + 1) & mask;
    }
}

/* The id is the topic level where the filter has '+'; without one, the whole topic. */
static bool topic_id(const char *topic, size_t len, const char **id, size_t *id_len)
{
    if (st.id_level < 0) {
        *id = topic;
        *id_len = len;
        return true;
    }
    int level = 0;
    size_t b = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || topic[i] == '/') {
            if (level == st.id_level) {
                *id = topic + b;
                *id_len = i - b;
                return i > b;
            }
            level++;
            b = i + 1;
        }
    }
    return false;
}

static bool as_u64(const msgpack_object *o, uint64_t *out)
{
    if (!o)
        return false;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = o->via.u64;
        return true;
    }
    return false;
}

static bool as_i64(const msgpack_object *o, int64_t *out)
{
    if (!o)
        return false;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) {
        *out = (int64_t)o->via.f64;
        return true;
    }
    return false;
}

static void lat_record(int64_t now_us, int64_t ts_ms)
{
    int64_t d = now_us - ts_ms * 1000;
    if (d < 0)
        d = 0; /* clocks are the same host's; ts is truncated to the ms */
    if (d > UINT32_MAX)
        d = UINT32_MAX;
    if ((uint32_t)d > st.lat_max_us)
        st.lat_max_us = (uint32_t)d;
    if (st.lat_len == st.lat_cap) {
        if (st.lat_cap >= LAT_MAX)
            return;
        size_t cap = st.lat_cap ? st.lat_cap * 2 : 65536;
        uint32_t *p = realloc(st.lat_us, cap * sizeof *p);
        if (!p)
            return;
        st.lat_us = p;
        st.lat_cap = cap;
    }
    st.lat_us[st.lat_len++] = (uint32_t)d;
}

/* Paho's receive thread. */
static void on_message(void *ctx, const struct bridge_msg *m)
{
    (void)ctx;
    int64_t now_us = wall_us();
    char err[TWIN_ERR_LEN];
    msgpack_object obj;
    const char *id;
    size_t id_len;

    pthread_mutex_lock(&st.mu);
    if (m->retained) {
        /* left over from an earlier run: not part of this one */
        st.retained_skipped++;
        goto out;
    }
    st.received++;
    if (!topic_id(m->topic, m->topic_len, &id, &id_len) ||
        twin_input_decode(m->payload, m->len, &st.lim, &st.zone, &obj, err) < 0 ||
        obj.type != MSGPACK_OBJECT_MAP) {
        st.bad++;
        goto out;
    }
    uint64_t seq;
    int64_t ts;
    const msgpack_object *seq_o = twin_value_get(&obj, "seq", 3);
    const msgpack_object *ts_o =
        st.mode == MODE_STATE
            ? twin_value_path(&obj, "meta.reported.heart_rate", strlen("meta.reported.heart_rate"))
            : twin_value_get(&obj, "ts", 2);
    if (as_i64(ts_o, &ts))
        lat_record(now_us, ts);
    if (!as_u64(seq_o, &seq)) {
        st.bad++;
        goto out;
    }
    struct dev_slot *d = dev_find(id, id_len);
    if (!d) {
        st.unknown_ids++;
        goto out;
    }
    if (seq > d->seq)
        d->seq = seq;
    if (!d->done && d->seq >= st.final_seq) {
        d->done = true;
        if (++st.devices_done == st.devices) {
            st.done_unix_ms = now_us / 1000;
            pthread_cond_signal(&st.cond);
        }
    }
out:
    msgpack_zone_clear(&st.zone);
    pthread_mutex_unlock(&st.mu);
}

static void on_connection(void *ctx, bool connected, const char *reason)
{
    (void)ctx;
    if (st.verbose || !connected)
        fprintf(stderr, "bench_sub: %s%s%s\n", connected ? "connected" : "disconnected",
                reason ? ": " : "", reason ? reason : "");
}

static void on_log(void *ctx, enum bridge_log_level level, const char *msg)
{
    (void)ctx;
    if (level <= BRIDGE_LOG_WARN || st.verbose)
        fprintf(stderr, "bench_sub: bridge: %s\n", msg);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(double p)
{
    if (st.lat_len == 0)
        return 0;
    size_t i = (size_t)(p * (double)(st.lat_len - 1) + 0.5);
    return st.lat_us[i] / 1000.0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_sub --broker URL --topic FILTER --devices D --final-seq S\n"
            "                 [--mode state|telemetry] [--qos 0|1] [--timeout SECONDS]\n"
            "                 [--ready-file PATH] [--verbose]\n"
            "Counts messages on FILTER until D devices (the '+' level of the topic) have\n"
            "reached seq >= S. state: seq and meta.reported.heart_rate of a twin document;\n"
            "telemetry: seq and ts of the message. Prints one line; exits 0 when every\n"
            "device is done, 1 on timeout or signal. --ready-file is created once subscribed.\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"broker", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"devices", required_argument, NULL, 'd'},
        {"final-seq", required_argument, NULL, 's'},
        {"mode", required_argument, NULL, 'm'},
        {"timeout", required_argument, NULL, 'T'},
        {"qos", required_argument, NULL, 'q'},
        {"ready-file", required_argument, NULL, 'r'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    char *end;

    st.mode = MODE_STATE;
    st.timeout_s = 120;
    st.qos = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            st.broker = optarg;
            break;
        case 't':
            st.topic = optarg;
            break;
        case 'd':
            st.devices = (unsigned)strtoul(optarg, &end, 10);
            if (*end || st.devices == 0) {
                fprintf(stderr, "bench_sub: --devices: expected a positive number\n");
                return 2;
            }
            break;
        case 's':
            st.final_seq = strtoull(optarg, &end, 10);
            if (*end || st.final_seq == 0) {
                fprintf(stderr, "bench_sub: --final-seq: expected a positive number\n");
                return 2;
            }
            break;
        case 'm':
            if (strcmp(optarg, "state") == 0) {
                st.mode = MODE_STATE;
            } else if (strcmp(optarg, "telemetry") == 0) {
                st.mode = MODE_TELEMETRY;
            } else {
                fprintf(stderr, "bench_sub: --mode: expected state or telemetry\n");
                return 2;
            }
            break;
        case 'T':
            st.timeout_s = (unsigned)strtoul(optarg, &end, 10);
            if (*end || st.timeout_s == 0) {
                fprintf(stderr, "bench_sub: --timeout: expected a positive number of seconds\n");
                return 2;
            }
            break;
        case 'q':
            if (strcmp(optarg, "0") && strcmp(optarg, "1")) {
                fprintf(stderr, "bench_sub: --qos: expected 0 or 1\n");
                return 2;
            }
            st.qos = optarg[0] - '0';
            break;
        case 'r':
            st.ready_file = optarg;
            break;
        case 'v':
            st.verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!st.broker || !st.topic || !st.devices || !st.final_seq || optind < argc) {
        usage(stderr);
        return 2;
    }

    st.id_level = -1;
    for (int level = 0, i = 0;; i++) {
        if (st.topic[i] == '+') {
            st.id_level = level;
            break;
        }
        if (st.topic[i] == '\0')
            break;
        if (st.topic[i] == '/')
            level++;
    }
    st.lim = (struct twin_limits){1u << 20, TWIN_DEPTH_CAP, 65536};
    st.table_cap = 64;
    while (st.table_cap < (size_t)st.devices * 4)
        st.table_cap *= 2;
    st.table = calloc(st.table_cap, sizeof *st.table);
    if (!st.table || !msgpack_zone_init(&st.zone, 8192)) {
        fprintf(stderr, "bench_sub: out of memory\n");
        return 1;
    }
    pthread_mutex_init(&st.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st.cond, &ca);

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char client_id[64], err[BRIDGE_ERR_LEN];
    snprintf(client_id, sizeof client_id, "bench_sub-%ld", (long)getpid());
    const char *subs[1] = {st.topic};
    struct bridge_options bo;
    bridge_options_init(&bo);
    bo.url = st.broker;
    bo.client_id = client_id;
    bo.clean_start = true;
    bo.max_inflight = 1000; /* MQTT 5 receive maximum: do not throttle the broker */
    bo.subscriptions = subs;
    bo.n_subscriptions = 1;
    bo.sub_qos = st.qos;
    bo.on_message = on_message;
    bo.on_connection = on_connection;
    bo.on_log = on_log;

    struct bridge_client *c = NULL;
    int rc = 1;
    if (bridge_client_new(&c, &bo, err) < 0 || bridge_client_start(c, err) < 0) {
        fprintf(stderr, "bench_sub: %s\n", err);
        goto out;
    }
    if (bridge_client_wait_connected(c, 10000) < 0) {
        fprintf(stderr, "bench_sub: could not connect to %s\n", st.broker);
        goto out;
    }
    if (st.ready_file) {
        FILE *f = fopen(st.ready_file, "w");
        if (f)
            fclose(f);
    }

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += st.timeout_s;
    pthread_mutex_lock(&st.mu);
    while (st.devices_done < st.devices && !stop_signal) {
        struct timespec now, until;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline.tv_sec ||
            (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec))
            break;
        /* wake at least every 100 ms to see signals */
        until = now;
        until.tv_nsec += 100000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&st.cond, &st.mu, &until);
    }
    rc = st.devices_done >= st.devices ? 0 : 1;
    pthread_mutex_unlock(&st.mu);

out:
    bridge_client_free(c); /* no more callbacks after this */
    qsort(st.lat_us, st.lat_len, sizeof *st.lat_us, cmp_u32);
    printf("bench_sub: received=%" PRIu64 " devices_done=%u done_unix_ms=%" PRId64
           " p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
           st.received, st.devices_done, st.done_unix_ms, pct_ms(0.50), pct_ms(0.90), pct_ms(0.99),
           st.lat_max_us / 1000.0);
    fflush(stdout);
    if (st.bad || st.unknown_ids || st.retained_skipped)
        fprintf(stderr,
                "bench_sub: undecodable=%" PRIu64 " ids_over_table=%" PRIu64
                " retained_skipped=%" PRIu64 "\n",
                st.bad, st.unknown_ids, st.retained_skipped);
    for (size_t i = 0; i < st.table_cap; i++)
        free(st.table[i].id);
    free(st.table);
    free(st.lat_us);
    msgpack_zone_destroy(&st.zone);
    pthread_cond_destroy(&st.cond);
    pthread_mutex_destroy(&st.mu);
    return rc;
}
