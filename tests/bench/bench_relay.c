/* bench_relay: the reference "plain Paho relay" the hub is measured against. It subscribes to
 * devices/+/telemetry and republishes every payload unchanged to relay/{id}/telemetry, at the
 * same QoS, from a worker thread with a bounded window of publishes in flight. No other work.
 *
 * Threads: on_message runs on Paho's receive thread and only copies the message into a queue
 * (q.mu). The worker thread (main) takes from the queue and publishes, waiting (w.mu) while
 * the window is full; on_publish_done (a Paho thread) frees window places under w.mu.
 *
 * Why the callback does not block on a full queue: Paho's receive thread holds the library's
 * global mutex while it runs messageArrived, and the worker's publishes (MQTTAsync_send takes
 * that mutex to assign a message id) and every completion (PUBACKs are read by the receive
 * thread, QoS 0 completions come from the send thread under the same mutex) need it. A callback
 * waiting for queue space therefore waits for a worker that waits for the callback: measured,
 * the relay stalled for good at the first full queue until the broker dropped it for a missed
 * keepalive. With MQTTAsync there is no backpressure to the broker that does not also stop our
 * own publishing. So the queue is bounded (--queue, default 1,000,000 messages, memory taken per
 * message) and a message that finds it full is counted as dropped and reported, never waited
 * for.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
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

/* One queued message: the topic (NUL-terminated) then the payload. */
struct entry {
    struct entry *next;
    size_t len;
    char *payload;
    char topic[];
};

static struct {
    int qos;
    unsigned queue_cap, window;
    struct bridge_topics in, out;

    /* the queue */
    pthread_mutex_t qmu;
    pthread_cond_t not_empty;
    struct entry *head, *tail;
    unsigned len, max_len;
    bool closing;
    uint64_t received, rejected, dropped;

    /* the window */
    pthread_mutex_t wmu;
    pthread_cond_t wcond;
    unsigned inflight;
    uint64_t acked, failed;
} R;

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    (void)sig;
    stop_signal = 1;
}

static void ts_in(struct timespec *t, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_sec += ms / 1000;
    t->tv_nsec += (ms % 1000) * 1000000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

/* Paho's receive thread: copy into the queue; never wait (see the top of the file). */
static void on_message(void *ctx, const struct bridge_msg *m)
{
    (void)ctx;
    struct bridge_topic t;
    char err[BRIDGE_ERR_LEN], topic[BRIDGE_TOPIC_MAX + 1];
    int n;

    if (bridge_topic_parse(&R.in, m->topic, m->topic_len, &t, err) < 0 ||
        t.kind != BRIDGE_T_TELEMETRY ||
        (n = bridge_topic_build(&R.out, BRIDGE_T_TELEMETRY, t.id, t.id_len, topic, sizeof topic)) <
            0) {
        pthread_mutex_lock(&R.qmu);
        R.rejected++;
        pthread_mutex_unlock(&R.qmu);
        return;
    }
    struct entry *e = malloc(sizeof *e + (size_t)n + 1 + m->len);
    if (e) {
        memcpy(e->topic, topic, (size_t)n + 1);
        e->payload = e->topic + n + 1;
        memcpy(e->payload, m->payload, m->len);
        e->len = m->len;
        e->next = NULL;
    }
    pthread_mutex_lock(&R.qmu);
    if (!e || R.len >= R.queue_cap || R.closing) {
        R.dropped++;
        pthread_mutex_unlock(&R.qmu);
        free(e);
        return;
    }
    if (R.tail)
        R.tail->next = e;
    else
        R.head = e;
    R.tail = e;
    if (++R.len > R.max_len)
        R.max_len = R.len;
    R.received++;
    pthread_cond_signal(&R.not_empty);
    pthread_mutex_unlock(&R.qmu);
}

/* Paho thread. */
static void on_publish_done(void *ctx, int status)
{
    (void)ctx;
    pthread_mutex_lock(&R.wmu);
    if (status == 0)
        R.acked++;
    else
        R.failed++;
    R.inflight--;
    pthread_cond_signal(&R.wcond);
    pthread_mutex_unlock(&R.wmu);
}

static void on_connection(void *ctx, bool connected, const char *reason)
{
    (void)ctx;
    if (!connected)
        fprintf(stderr, "bench_relay: disconnected: %s\n", reason ? reason : "");
}

static void on_log(void *ctx, enum bridge_log_level level, const char *msg)
{
    (void)ctx;
    if (level <= BRIDGE_LOG_WARN)
        fprintf(stderr, "bench_relay: bridge: %s\n", msg);
}

/* The worker: publish the head of the queue once the window has room. */
static void relay(struct bridge_client *c)
{
    uint64_t published = 0;
    for (;;) {
        struct timespec until;
        pthread_mutex_lock(&R.qmu);
        while (R.len == 0 && !stop_signal) {
            ts_in(&until, 100);
            pthread_cond_timedwait(&R.not_empty, &R.qmu, &until);
        }
        if (R.len == 0) { /* stop_signal */
            pthread_mutex_unlock(&R.qmu);
            break;
        }
        struct entry *e = R.head;
        R.head = e->next;
        if (!R.head)
            R.tail = NULL;
        R.len--;
        pthread_mutex_unlock(&R.qmu);

        pthread_mutex_lock(&R.wmu);
        while (R.inflight >= R.window && !stop_signal) {
            ts_in(&until, 100);
            pthread_cond_timedwait(&R.wcond, &R.wmu, &until);
        }
        bool go = R.inflight < R.window;
        if (go)
            R.inflight++;
        pthread_mutex_unlock(&R.wmu);
        if (!go) {
            free(e);
            break;
        }

        int r;
        while ((r = bridge_client_publish(c, e->topic, e->payload, e->len, R.qos, false, NULL,
                                          on_publish_done, NULL)) < 0 &&
               r != -EINVAL && !stop_signal)
            usleep(1000); /* not connected: wait for the reconnect */
        if (r < 0) {
            pthread_mutex_lock(&R.wmu);
            R.inflight--;
            R.failed++;
            pthread_mutex_unlock(&R.wmu);
        } else {
            published++;
        }
        free(e);
    }

    pthread_mutex_lock(&R.qmu);
    R.closing = true;
    uint64_t received = R.received, rejected = R.rejected, dropped = R.dropped;
    unsigned max_len = R.max_len;
    pthread_mutex_unlock(&R.qmu);

    /* wait (bounded) for the window to empty */
    struct timespec until;
    ts_in(&until, 10000);
    pthread_mutex_lock(&R.wmu);
    while (R.inflight > 0 && pthread_cond_timedwait(&R.wcond, &R.wmu, &until) != ETIMEDOUT)
        ;
    uint64_t acked = R.acked, failed = R.failed;
    pthread_mutex_unlock(&R.wmu);
    printf("bench_relay: received=%" PRIu64 " published=%" PRIu64 " acked=%" PRIu64
           " failed=%" PRIu64 " rejected=%" PRIu64 " dropped=%" PRIu64 " max_queue=%u\n",
           received, published, acked, failed, rejected, dropped, max_len);
    fflush(stdout);
    if (dropped)
        fprintf(stderr,
                "bench_relay: %" PRIu64 " messages found the queue full (--queue %u) and "
                "were dropped\n",
                dropped, R.queue_cap);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_relay --broker URL [--qos 0|1] [--max-inflight W] [--queue N]\n"
               "                   [--out-prefix relay/] [--ready-file PATH]\n"
               "Republishes devices/+/telemetry unchanged to relay/{id}/telemetry until SIGINT or\n"
               "SIGTERM, then prints one line of counts. --queue bounds the messages waiting\n"
               "for the publisher (default 1000000); one that finds it full is dropped and\n"
               "counted (waiting would stall Paho: see the top of bench_relay.c).\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"broker", required_argument, NULL, 'b'},
        {"qos", required_argument, NULL, 'q'},
        {"max-inflight", required_argument, NULL, 'w'},
        {"queue", required_argument, NULL, 'n'},
        {"out-prefix", required_argument, NULL, 'o'},
        {"ready-file", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *broker = NULL, *out_prefix = "relay/", *ready_file = NULL;
    char *end, err[BRIDGE_ERR_LEN];
    int ch;

    R.qos = 1;
    R.window = 64;
    R.queue_cap = 1000000;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            broker = optarg;
            break;
        case 'q':
            if (strcmp(optarg, "0") && strcmp(optarg, "1")) {
                fprintf(stderr, "bench_relay: --qos: expected 0 or 1\n");
                return 2;
            }
            R.qos = optarg[0] - '0';
            break;
        case 'w':
            R.window = (unsigned)strtoul(optarg, &end, 10);
            if (*end || R.window == 0 || R.window > 65535) {
                fprintf(stderr, "bench_relay: --max-inflight: expected 1..65535\n");
                return 2;
            }
            break;
        case 'n':
            R.queue_cap = (unsigned)strtoul(optarg, &end, 10);
            if (*end || R.queue_cap == 0 || R.queue_cap > 100000000) {
                fprintf(stderr, "bench_relay: --queue: expected 1..100000000\n");
                return 2;
            }
            break;
        case 'o':
            out_prefix = optarg;
            break;
        case 'r':
            ready_file = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!broker || optind < argc) {
        usage(stderr);
        return 2;
    }
    if (bridge_topics_init(&R.in, NULL, NULL, NULL, err) < 0 ||
        bridge_topics_init(&R.out, out_prefix, NULL, NULL, err) < 0) {
        fprintf(stderr, "bench_relay: %s\n", err);
        return 2;
    }
    pthread_mutex_init(&R.qmu, NULL);
    pthread_mutex_init(&R.wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&R.not_empty, &ca);
    pthread_cond_init(&R.wcond, &ca);

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char client_id[64], filter[BRIDGE_TOPIC_MAX + 1];
    snprintf(client_id, sizeof client_id, "bench_relay-%ld", (long)getpid());
    bridge_topic_filter(&R.in, BRIDGE_T_TELEMETRY, filter, sizeof filter);
    const char *subs[1] = {filter};
    struct bridge_options bo;
    bridge_options_init(&bo);
    bo.url = broker;
    bo.client_id = client_id;
    bo.clean_start = true;
    bo.max_inflight = R.window;
    bo.subscriptions = subs;
    bo.n_subscriptions = 1;
    bo.sub_qos = R.qos;
    bo.on_message = on_message;
    bo.on_connection = on_connection;
    bo.on_log = on_log;

    struct bridge_client *c = NULL;
    int rc = 1;
    if (bridge_client_new(&c, &bo, err) < 0 || bridge_client_start(c, err) < 0) {
        fprintf(stderr, "bench_relay: %s\n", err);
        goto out;
    }
    if (bridge_client_wait_connected(c, 10000) < 0) {
        fprintf(stderr, "bench_relay: could not connect to %s\n", broker);
        goto out;
    }
    /* QoS 1: stay within the broker's Receive Maximum (Mosquitto's default is 20); more in
     * flight only parks publishes in Paho's queue, which its send thread rechecks about once a
     * second */
    unsigned quota = bridge_client_send_quota(c);
    if (R.qos == 1 && quota && quota < R.window)
        R.window = quota;
    if (ready_file) {
        FILE *f = fopen(ready_file, "w");
        if (f)
            fclose(f);
    }
    relay(c);
    rc = 0;
out:
    bridge_client_free(c);
    while (R.head) {
        struct entry *e = R.head;
        R.head = e->next;
        free(e);
    }
    return rc;
}
