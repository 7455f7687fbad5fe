/* hub: the daemon's private wiring. main.c owns the process (config, signals, the main loop);
 * ingest.c turns received messages into committed twin changes; publisher.c sends what was
 * committed; report.c counts rejected input and reports it on hub/errors. */
#ifndef HUB_HUB_H
#define HUB_HUB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bridge.h"
#include "config.h"
#include "twins.h"

/* ---------------------------------------------------------------------------------------------
 * publisher.c: a thread that publishes committed twin state with a bounded number of publishes
 * in flight, coalescing per twin: a twin whose state changed several times while waiting is
 * published once, at its latest committed version (read from LMDB when it is sent). What the
 * broker acknowledged is removed from the store's outbox in batches; what is left there is
 * published again after a restart.
 * ------------------------------------------------------------------------------------------ */

struct publisher;

struct publisher_options {
    struct twin_store *store;
    struct bridge_client *bridge;
    const struct bridge_topics *topics;
    int qos;
    unsigned max_inflight;
    bool json;
    unsigned raw_capacity; /* queued hub/errors reports; more are dropped (counted) */
};

struct publisher_stats {
    uint64_t published;   /* state publications acknowledged */
    uint64_t failed;      /* publications that failed and were queued again */
    uint64_t coalesced;   /* state requests merged into one already waiting */
    uint64_t raw_dropped; /* reports dropped because the queue was full */
    uint64_t queued;      /* twins waiting now */
    uint64_t inflight;    /* publishes in flight now */
};

/* Creates the publisher (not yet running). Returns 0 or -ENOMEM. */
int publisher_new(struct publisher **out, const struct publisher_options *o);
/* Starts its thread. Returns 0 or -errno from pthread_create. */
int publisher_start(struct publisher *p);
/* Asks for the state of twin `id` to be published (any thread; never blocks on the network).
 * Returns 0 or -ENOMEM (the outbox still has it: it is published after a restart). */
int publisher_state(struct publisher *p, const char *id, size_t id_len);
/* Queues one message (QoS 0, copied). Returns 0, or -ENOBUFS when raw_capacity are waiting
 * (or no memory): the message is dropped and counted. Any thread. */
int publisher_raw(struct publisher *p, const char *topic, const void *payload, size_t len);
/* Queues the state of every twin left in the store's outbox (at start). Main thread. */
int publisher_recover(struct publisher *p, char *err);
/* Wakes the thread (after a reconnect). Any thread. */
void publisher_wake(struct publisher *p);
/* Waits up to timeout_ms until nothing is queued or in flight. Returns 0 or -ETIMEDOUT. */
int publisher_drain(struct publisher *p, unsigned timeout_ms);
/* Removes acknowledged entries from the outbox (one write transaction). Main thread. */
int publisher_flush_acked(struct publisher *p, char *err);
void publisher_stats(struct publisher *p, struct publisher_stats *st);
/* Stops the thread; what is queued stays in the outbox. Completions may still arrive. */
void publisher_stop(struct publisher *p);
/* Frees (stopping first). NULL allowed. Call after the bridge client is freed, so that no
 * completion can arrive any more. */
void publisher_free(struct publisher *p);

/* ---------------------------------------------------------------------------------------------
 * report.c: rejected input. Every rejection is counted and logged at debug; a token bucket
 * (errors.rate per second, errors.burst) decides which are logged at warn and published on
 * hub/errors as {topic, reason, ts, suppressed}.
 * ------------------------------------------------------------------------------------------ */

enum report_kind {
    REPORT_TOPIC = 0, /* unknown topic or bad id */
    REPORT_SIZE,      /* over limits.max_payload / max_keys */
    REPORT_DEPTH,     /* over limits.max_depth */
    REPORT_MALFORMED, /* not msgpack / JSON */
    REPORT_INVALID,   /* wrong types, bad keys */
    REPORT_KINDS
};

struct report {
    struct publisher *pub;
    char topic[BRIDGE_TOPIC_MAX];
    bool json;
    pthread_mutex_t lock; /* guards the bucket */
    double rate, burst, tokens;
    int64_t last_ms; /* monotonic */
    uint64_t suppressed;
    _Atomic uint64_t count[REPORT_KINDS];
};

void report_init(struct report *r, struct publisher *pub, const char *topic, bool json, double rate,
                 unsigned burst);
void report_set_rate(struct report *r, double rate, unsigned burst);
/* Counts and maybe reports one rejection. Any thread. */
void report_reject(struct report *r, enum report_kind kind, const char *topic, size_t topic_len,
                   const char *reason);
void report_cleanup(struct report *r);

/* ---------------------------------------------------------------------------------------------
 * ingest.c: the message callback (Paho's receive thread).
 * ------------------------------------------------------------------------------------------ */

struct ingest_stats {
    _Atomic uint64_t received, applied, duplicate, stale, retained;
};

struct ingest {
    struct twin_store *store;
    struct publisher *pub;
    struct report *report;
    const struct bridge_topics *topics;
    pthread_mutex_t limits_lock; /* guards limits (SIGHUP changes them) */
    struct twin_limits limits;
    msgpack_zone zone; /* reused for every message; only the receive thread touches it */
    struct ingest_stats stats;
};

int ingest_init(struct ingest *in, struct twin_store *store, struct publisher *pub,
                struct report *report, const struct bridge_topics *topics,
                const struct twin_limits *limits);
void ingest_set_limits(struct ingest *in, const struct twin_limits *limits);
/* bridge_message_cb: commits before it returns (the broker's PUBACK follows the return). */
void ingest_on_message(void *ctx, const struct bridge_msg *m);
void ingest_cleanup(struct ingest *in);

/* Wall clock (ms since epoch), for timestamps that leave the process. */
int64_t hub_now_ms(void);
/* Monotonic clock (ms), for intervals and rate limits: immune to clock steps. */
int64_t hub_mono_ms(void);

#endif
