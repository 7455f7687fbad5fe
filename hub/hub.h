/* hub: the daemon's private wiring. main.c owns the process (config, signals, the main loop);
 * ingest.c turns received messages into committed twin changes (presence.c: device status);
 * publisher.c sends what was committed; outputs.c builds the messages besides twin state
 * (events, replies, commands to devices); report.c counts rejected input and reports it on
 * hub/errors. */
#ifndef HUB_HUB_H
#define HUB_HUB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "bridge.h"
#include "clock.h"
#include "config.h"
#include "query.h"
#include "rules.h"
#include "twins.h"

/* ---------------------------------------------------------------------------------------------
 * metrics.c: histograms that the hot path fills with a few relaxed atomic adds, and the
 * Prometheus text of everything the hub counts (metrics_write).
 * ------------------------------------------------------------------------------------------ */

#define HUB_HIST_BUCKETS 20

/* Durations in Prometheus' histogram shape: counts per bucket (not cumulative here), their
 * number and their sum. Any thread observes, any thread reads; no lock. */
struct hub_hist {
    _Atomic uint64_t bucket[HUB_HIST_BUCKETS + 1]; /* the last: above the highest bound */
    _Atomic uint64_t count, sum_ns;
};

/* Counts one duration of `ns` nanoseconds (hub_mono_ns differences). */
void hub_hist_observe(struct hub_hist *h, int64_t ns);

/* Writes the n bytes of `s` to `f` as a label value of the text format, without the quotes:
 * backslash, double quote and line feed become \\, \" and \n, every other byte stays as it
 * is. Returns 0 or -EIO. Any thread. */
int metrics_label_put(FILE *f, const char *s, size_t n);

/* ---------------------------------------------------------------------------------------------
 * stream.c: the recent history of committed changes, events and predictions, for the HTTP
 * stream (sse.c) and a twin's recent events. Bounded: http.stream_buffer entries and
 * http.stream_bytes bytes of payload; the oldest go first.
 * ------------------------------------------------------------------------------------------ */

enum stream_kind { STREAM_STATE = 1, STREAM_EVENT, STREAM_PREDICTION };

#define STREAM_BATCH_MAX 64
#define STREAM_PAYLOAD_MAX (256u << 10) /* an event's payload beyond this is not kept */

struct hub_stream;

/* An entry as a reader gets it: payload points into the batch. */
struct stream_entry {
    uint64_t seq;
    uint8_t kind; /* enum stream_kind */
    uint8_t id_len;
    char id[TWIN_ID_MAX + 1];
    int64_t ts; /* hub ms when it was pushed */
    size_t len;
    const unsigned char *payload; /* as published: msgpack or JSON (publish.encoding) */
};

/* What one stream_read copies out: caller's memory (large: allocate it). */
struct stream_batch {
    unsigned n;
    struct stream_entry v[STREAM_BATCH_MAX];
    uint64_t missed; /* entries after `after` that the ring no longer had */
    uint64_t last;   /* the number to ask after next time */
    size_t used;
    unsigned char bytes[2 * STREAM_PAYLOAD_MAX];
};

/* Returns 0 or -ENOMEM. cap: entries (at least 1); max_bytes: payload bytes held. */
int stream_new(struct hub_stream **out, size_t cap, size_t max_bytes);
/* After stream_stop and once no reader is left. NULL is fine. */
void stream_free(struct hub_stream *s);
/* Numbers this run of the hub apart from earlier ones ("<hex>"); readers' ids carry it. */
const char *stream_boot(const struct hub_stream *s);
/* Adds an entry (copies payload; a state has none). After the commit it reports. Any thread;
 * s NULL: nothing. Never blocks on a reader. */
void stream_push(struct hub_stream *s, enum stream_kind kind, const char *id, size_t id_len,
                 const void *payload, size_t len);
/* Copies the entries after number `after`, waiting up to timeout_ms for one when there is
 * none yet (b->n 0 after a timeout). `after` beyond the newest is taken as the newest.
 * Returns 0, or -ECANCELED once stream_stop ran. */
int stream_read(struct hub_stream *s, uint64_t after, int timeout_ms, struct stream_batch *b);
/* The number of the newest entry (0: none). */
uint64_t stream_last(struct hub_stream *s);
/* The newest `max` events and predictions of twin `id` (at most STREAM_BATCH_MAX), oldest
 * first, and *since: the hub time from which the ring holds every one of them. Returns 0. */
int stream_events(struct hub_stream *s, const char *id, size_t id_len, unsigned max,
                  struct stream_batch *b, int64_t *since);
/* Wakes and ends every reader (stream_read returns -ECANCELED from now on). */
void stream_stop(struct hub_stream *s);
/* Entries pushed, not kept for want of memory, and held now. */
void stream_stats(struct hub_stream *s, uint64_t *pushed, uint64_t *lost, uint64_t *held);

/* ---------------------------------------------------------------------------------------------
 * publisher.c: a thread that publishes with a bounded number of publishes in flight.
 *
 * Twin publications are coalesced per twin: publisher_twin() asks for some of PUB_* to be
 * published for a twin, and the thread reads what it sends from the committed twin when it
 * sends it, so a twin that changed several times while waiting is published once, at its
 * latest committed version. What the broker acknowledged of twins/{id}/state is removed from
 * the store's outbox in batches; what is left there is published again (state and desired)
 * after a restart. A twin has at most one round of publications in flight, so its retained
 * messages reach the broker in commit order.
 *
 * Messages (publisher_msg) are published as given, in order, never coalesced: replies and
 * events (QoS 1), commands to devices (QoS 1), hub/errors reports (QoS 0). Each class has a
 * capacity of messages waiting, and all of them together a bound in payload bytes; a message
 * over either is dropped and counted (publisher_stats.dropped). Events and predictions are
 * never dropped: they were committed to the store's event messages with their change
 * (publisher_msg.seq), and past the capacity the publisher reads them from there, in order,
 * as the queue empties (the spill), and again after a restart; each is deleted from the store
 * once the broker acknowledged it. A dropped reply is lost (replies are not stored); a dropped
 * command stays in the store's queue, marked sent, and is sent again when its device next
 * comes online or the hub restarts. A QoS 1 message whose connection dropped before the
 * acknowledgement is sent again once the connection is back.
 * ------------------------------------------------------------------------------------------ */

/* What publisher_twin asks for. */
enum {
    PUB_STATE = 1u << 0,   /* twins/{id}/state, retained: the document, empty once deleted */
    PUB_DESIRED = 1u << 1, /* devices/{id}/desired, retained: {version, delta}, empty when in
                              sync or deleted */
    PUB_DELTA = 1u << 2,   /* devices/{id}/desired again, only when the delta is not empty (a
                              device came online: what it missed, not a clear of what it has) */
};

enum pub_class {
    PUB_CLASS_REPORT = 0, /* hub/errors, QoS 0 */
    PUB_CLASS_REPLY,      /* replies to requests and events on twins/{id}/events, QoS 1 */
    PUB_CLASS_COMMAND,    /* devices/{id}/commands, QoS 1 */
    PUB_CLASSES
};

struct publisher;

struct publisher_options {
    struct twin_store *store;
    struct bridge_client *bridge;
    const struct bridge_topics *topics;
    int qos; /* of twin state and desired */
    unsigned max_inflight;
    bool json;                      /* twin state as JSON (devices/{id}/desired stays msgpack) */
    unsigned capacity[PUB_CLASSES]; /* messages waiting per class; 0: that class is dropped */
    size_t max_bytes;               /* payload bytes of all messages waiting; 0: no bound */
    bool aws_shadow; /* aws.shadow: a delta published on devices/{id}/desired also goes to the
                        thing's shadows' update/delta (shadow_publish_delta) */
    struct hub_stream *stream; /* every state asked for and every event and prediction queued
                                  is pushed there too; NULL: none */
};

struct publisher_stats {
    uint64_t published;            /* twin publications (state, desired) acknowledged */
    uint64_t failed;               /* publications and messages refused by the broker */
    uint64_t coalesced;            /* twin requests merged into one already waiting */
    uint64_t queued;               /* twins waiting now */
    uint64_t inflight;             /* publishes in flight now */
    uint64_t sent[PUB_CLASSES];    /* messages acknowledged (QoS 0: written) */
    uint64_t dropped[PUB_CLASSES]; /* messages dropped: over capacity, no memory */
    uint64_t waiting[PUB_CLASSES]; /* messages waiting or in flight now */
    uint64_t spilled;              /* event messages left to the store: the queue was full */
    uint64_t from_store;           /* event messages read back from the store to publish */
};

/* Creates the publisher (not yet running). Returns 0 or -ENOMEM. */
int publisher_new(struct publisher **out, const struct publisher_options *o);
/* Starts its thread. Returns 0 or -errno from pthread_create. */
int publisher_start(struct publisher *p);
/* Asks for `flags` (PUB_*) of twin `id` to be published (any thread; never blocks on the
 * network). Call it after the commit it reports. Returns 0, -EINVAL (id too long, no flags) or
 * -ENOMEM (the outbox still has the state: published after a restart). */
int publisher_twin(struct publisher *p, const char *id, size_t id_len, unsigned flags);
/* The same for a change that telemetry which arrived at `arrived_ns` (hub_mono_ns) made: the
 * broker's acknowledgement of the first state that carries it ends its telemetry-to-publish
 * time (publisher_telemetry_latency). */
int publisher_twin_since(struct publisher *p, const char *id, size_t id_len, unsigned flags,
                         int64_t arrived_ns);

/* One message for publisher_msg; everything is copied. */
struct publisher_msg {
    const char *topic; /* NUL-terminated, publishable */
    const void *payload;
    size_t len;
    int qos;
    bool retained;
    const void *correlation; /* MQTT 5 correlation data to attach; NULL: none */
    size_t correlation_len;
    uint8_t stream;        /* STREAM_EVENT or STREAM_PREDICTION: pushed to the stream too; 0 */
    const char *id;        /* ... as twin id's */
    size_t id_len;
    uint64_t seq; /* the committed copy's number in the store's event messages (deleted once
                     the broker acknowledged it); 0: none */
};

/* Queues one message of class `cls` (any thread). Returns 0, -ENOBUFS (over the class's
 * capacity or the byte bound: dropped and counted), -ENOMEM (dropped and counted), -EINVAL. */
int publisher_msg(struct publisher *p, enum pub_class cls, const struct publisher_msg *m);
/* A hub/errors report: publisher_msg of PUB_CLASS_REPORT at QoS 0. Any thread. Returns as
 * publisher_msg (0: queued). */
int publisher_raw(struct publisher *p, const char *topic, const void *payload, size_t len);
/* Queues the state and desired state of every twin left in the store's outbox (at start).
 * Main thread. */
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
/* The count of event messages not stored (over publish.max_stored_events), for outlists'
 * `refused`. */
_Atomic uint64_t *publisher_refused(struct publisher *p);
/* From a twin's publication being asked for (after its commit) to the broker's
 * acknowledgement of the state that carries it. Read by the metrics; any thread. */
struct hub_hist *publisher_latency(struct publisher *p);
/* From telemetry's arrival to the broker's acknowledgement of the first twins/{id}/state that
 * carries it (the oldest telemetry of a coalesced round). Any thread. */
struct hub_hist *publisher_telemetry_latency(struct publisher *p);
/* Frees (stopping first). NULL allowed. Call after the bridge client is freed, so that no
 * completion can arrive any more. */
void publisher_free(struct publisher *p);

/* ---------------------------------------------------------------------------------------------
 * outputs.c: messages built while a write transaction runs and queued in the publisher only
 * after it commits (outlist), and the payloads of the hub's events, replies and commands.
 * An outlist belongs to one thread. Payloads to services are msgpack, or JSON when `json`;
 * payloads to devices are always msgpack.
 * ------------------------------------------------------------------------------------------ */

/* Commands' states as counter indices: enum twin_command_state (queued: a new command). */
#define HUB_CMD_STATES (TWIN_CMD_EXPIRED + 1)

struct outmsg {
    enum pub_class cls;
    int qos;
    size_t topic, topic_len, payload, len, corr, corr_len; /* offsets into outlist.data */
    bool has_corr;
    uint8_t stream;        /* enum stream_kind of an event or a prediction; 0: neither */
    size_t id, id_len;     /* its twin's id (offset into outlist.data) */
    uint64_t seq;          /* its number in the store's event messages; 0: not stored */
};

/* What dispatch (hub/dispatch.c) counted in one transaction: added to the owner's statistics
 * by outlist_flush after the commit, so that a transaction that ran again counts once and an
 * aborted one not at all. Past DISPATCH_TALLY_OBS waits or decision times in one transaction
 * the histograms miss the rest (the counters do not). */
#define DISPATCH_TALLY_OBS 32
struct hub_dispatch_stats;
struct dispatch_tally {
    struct hub_dispatch_stats *to; /* NULL: nothing counted yet */
    uint64_t opened, assigned, completed, returned, released;
    uint64_t decisions, greedy_decisions, solver_failures, compared;
    double cost, greedy_cost;
    unsigned nwait, nsolve;
    int64_t wait_ns[DISPATCH_TALLY_OBS], solve_ns[DISPATCH_TALLY_OBS];
};
void hub_dispatch_tally_flush(struct dispatch_tally *t);

struct outlist {
    const struct bridge_topics *topics;
    bool json;
    msgpack_sbuffer data; /* topics (NUL-terminated), payloads, correlation data */
    msgpack_sbuffer tmp;  /* the payload being packed */
    msgpack_packer pk;    /* packs into tmp */
    msgpack_zone zone;    /* JSON conversion */
    struct outmsg *v;
    size_t n, cap;
    int err; /* the first failure since the last reset (-ENOMEM, -EINVAL) */
    /* Command state changes of the transaction (commands_on_event), by the state entered:
     * outlist_flush adds them to cmd_counts, after the commit, so a transaction that ran again
     * counts once and an aborted one not at all. */
    unsigned cmd_entered[HUB_CMD_STATES];
    _Atomic uint64_t *cmd_counts; /* HUB_CMD_STATES counters (the owner's); NULL: not counted */
    /* Twins other than the caller's own that the transaction changed (dispatch writes the
     * desired state of resources): publisher_twin after the commit. */
    struct outtwin {
        char id[TWIN_ID_MAX];
        size_t len;
        unsigned flags;
    } * twins;
    size_t ntwins, captwins;
    struct dispatch_tally disp;
    /* The write transaction being run (outlist_start): events and predictions are stored in it
     * (twin_eventbox_add), so that none is lost once committed; NULL: kept in memory only. */
    struct twin_txn *txn;
    uint64_t max_stored;       /* publish.max_stored_events: refused past it (lost, counted) */
    _Atomic uint64_t *refused; /* the owner's count of those; NULL: not counted */
};

int outlist_init(struct outlist *ol, const struct bridge_topics *topics, bool json);
void outlist_cleanup(struct outlist *ol);
/* Forgets every message (after a transaction failed), and the transaction. */
void outlist_reset(struct outlist *ol);
/* The same at the start of a write transaction's function (it may run again): events and
 * predictions added from now on are stored in txn. */
void outlist_start(struct outlist *ol, struct twin_txn *txn);
/* Starts a payload: returns the packer to pack exactly one value with. */
msgpack_packer *outlist_begin(struct outlist *ol);
/* Ends the payload begun with outlist_begin and adds it for `topic`: to services (`service`:
 * JSON when ol->json) or to devices (msgpack). Returns 0 or ol->err. */
int outlist_end(struct outlist *ol, enum pub_class cls, const char *topic, bool service, int qos,
                const void *corr, size_t corr_len);
/* Queues every message in the publisher (after the commit they report) and resets; logs what
 * the publisher dropped and returns how many. */
unsigned outlist_flush(struct outlist *ol, struct publisher *pub);

/* Asks for `flags` (PUB_*) of twin `id` after the commit (outlist_flush). Out of memory, the
 * transaction's outbox still has the twin: it goes out at the next restart, or with the twin's
 * next change. */
void outlist_twin(struct outlist *ol, const char *id, size_t id_len, unsigned flags);
/* Ends the payload begun with outlist_begin as an event on twins/{id}/events (streamed).
 * Returns 0 or ol->err. */
int outlist_end_event(struct outlist *ol, const char *id, size_t id_len);

/* An event {type: "presence", connected, ts} for twin `id`. Returns 0 or ol->err. */
int out_event_presence(struct outlist *ol, const char *id, size_t id_len, bool connected,
                       int64_t ts);

/* An event {type: "command", id, cmd, state, ts} for command `c` (ts: its last change).
 * Returns 0 or ol->err. */
int out_event_command(struct outlist *ol, const struct twin_command *c);
/* A prediction as a map: {model (when not NULL), value, proba (classifiers that have it), ts,
 * twin_version, model_version, and, when the model has a target, its score (out_pack_score)}. */
void out_pack_prediction(msgpack_packer *pk, const char *model, const struct rules_prediction *p,
                         int64_t ts, uint64_t twin_version);
/* The keys of a model's score, for predicted.<model>: scored, then mae and rmse (regressors) or
 * accuracy (classifiers) once one is scored, and learned (steps taken) when the model learns.
 * out_score_keys says how many out_pack_score packs; both leave the map header to the caller.
 * out_is_score_key says whether a key is one of them. */
unsigned out_score_keys(const struct rules_model_score *s);
void out_pack_score(msgpack_packer *pk, const struct rules_model_score *s);
bool out_is_score_key(const msgpack_object *key);
/* twins/{id}/predictions {model, value, proba?, ts, twin_version, model_version} */
int out_prediction(struct outlist *ol, const char *id, size_t id_len, const char *model,
                   const struct rules_prediction *p, int64_t ts, uint64_t twin_version);
/* twins/{id}/events {type: rule, rule, state, from, ts, values, <the event action's fields>} */
int out_event_rule(struct outlist *ol, const char *id, size_t id_len, const struct rules_fire *f);
/* The message devices/{id}/commands {id, cmd, args, ts, expires} for command `c` (ts: when it
 * was created; expires: its deadline, nil for none; args nil for none). Always msgpack.
 * Returns 0 or ol->err. */
int out_command(struct outlist *ol, const struct twin_command *c);

/* Packs a string key or value. */
void out_pack_str(msgpack_packer *pk, const char *s, size_t n);
/* The same for a NUL-terminated key. */
void out_pack_key(msgpack_packer *pk, const char *k);
/* Whether map key k is the string s. */
static inline bool hub_key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

/* ---------------------------------------------------------------------------------------------
 * report.c: rejected input, and telemetry lost before it reached the hub (a gap in a device's
 * seq). Every report is counted and logged at debug; a token bucket (errors.rate per second,
 * errors.burst; one for rejections, one for gaps) decides which are logged at warn and published
 * on hub/errors as {topic, reason, kind, ts, suppressed}.
 * ------------------------------------------------------------------------------------------ */

enum report_kind {
    REPORT_TOPIC = 0, /* unknown topic or bad id */
    REPORT_SIZE,      /* over limits.max_payload / max_keys */
    REPORT_DEPTH,     /* over limits.max_depth */
    REPORT_MALFORMED, /* not msgpack / JSON */
    REPORT_INVALID,   /* wrong types, bad keys */
    REPORT_RULES,     /* a rules file that failed to (re)load */
    /* the kinds from here on are not rejections but notices about a device's telemetry */
    REPORT_GAP,   /* telemetry that a gap in seq says was lost upstream */
    REPORT_STALE, /* telemetry dropped as stale: a seq not above the last applied one */
    REPORT_KINDS
};

/* Whether a kind is a rejection of input (the others are notices: gaps, stale drops). */
static inline bool report_kind_rejects(int kind)
{
    return kind < REPORT_GAP;
}

/* A token bucket of reports and what it suppressed since its last report: one for
 * rejections, one for the notices (REPORT_GAP, REPORT_STALE). */
enum { REPORT_BUCKET_REJECT = 0, REPORT_BUCKET_GAP, REPORT_BUCKETS };
struct report_bucket {
    double tokens;
    int64_t last_ms; /* monotonic */
    uint64_t suppressed;
};

struct report {
    struct publisher *pub;
    char topic[BRIDGE_TOPIC_MAX];
    bool json;
    pthread_mutex_t lock; /* guards the buckets */
    double rate, burst;
    /* rejections and gaps each have their own bucket, so that a fleet's gaps (many at once
     * after a broker's drops) never crowd out the reports of bad input, nor those the gaps */
    struct report_bucket bucket[REPORT_BUCKETS];
    _Atomic uint64_t count[REPORT_KINDS];
    _Atomic uint64_t suppressed; /* reports held back by the bucket (not published) */
};

void report_init(struct report *r, struct publisher *pub, const char *topic, bool json, double rate,
                 unsigned burst);
void report_set_rate(struct report *r, double rate, unsigned burst);
/* Counts and maybe reports one rejection (or, with REPORT_GAP, one loss). Any thread. */
void report_reject(struct report *r, enum report_kind kind, const char *topic, size_t topic_len,
                   const char *reason);
/* "topic", "size", ... as in the reports' `kind`. */
const char *report_kind_name(enum report_kind k);
/* The kind of a twins library error code (-E2BIG: size, -ELOOP: depth, ...). */
enum report_kind report_kind_of(int rc);
void report_cleanup(struct report *r);

/* ---------------------------------------------------------------------------------------------
 * rules.c: the rules file, reloads, and rule runs inside the store's write transactions.
 * ------------------------------------------------------------------------------------------ */

struct hub_rules_stats {
    _Atomic uint64_t evaluated, transitions, actions, action_errors, reloads, reload_failures;
    _Atomic uint64_t predictions, predictions_skipped; /* skipped: inputs missing */
    _Atomic uint64_t scored, learn_steps; /* predictions compared with their target; LMS steps */
};

/* What the hub counts of one rule and one model of the loaded set, for /metrics. Runs add to
 * them with relaxed atomics while they hold hub_rules.lock shared; the arrays are swapped with
 * the set. Kept across a reload for every rule and model that keeps its name (rules.c). */
struct hub_rule_stats {
    _Atomic uint64_t fired; /* transitions to firing, over all twins */
};
struct hub_model_stats {
    _Atomic uint64_t predictions;   /* stored (skipped ones not) */
    _Atomic uint64_t scored;        /* predictions compared with their target */
    _Atomic uint64_t correct;       /* classifiers: those that named the target */
    _Atomic double sum_abs, sum_sq; /* regressors: sums of |error| and error^2 */
    _Atomic int kind;               /* HUB_MODEL_*: what its scores said it is */
};
enum { HUB_MODEL_UNSCORED = 0, HUB_MODEL_REGRESSOR, HUB_MODEL_CLASSIFIER };

/* A copy of one rule's or model's counters with its name (hub_rules_sample). */
struct hub_rule_sample {
    char name[RULES_NAME_MAX + 1];
    uint64_t fired;
};
struct hub_model_sample {
    char name[RULES_NAME_MAX + 1];
    bool has_target;
    int kind; /* HUB_MODEL_* */
    uint64_t predictions, scored, correct;
    double sum_abs, sum_sq;
};

/* What dispatch counts (dispatch.c), for /metrics; kept across reloads. */
struct hub_dispatch_stats {
    _Atomic uint64_t opened, assigned, completed, returned, released;
    _Atomic uint64_t decisions, greedy_decisions, solver_failures;
    _Atomic uint64_t compared;        /* decisions whose baseline served the same priority */
    _Atomic double cost, greedy_cost; /* their total cost: optimal, and nearest-free greedy */
    struct hub_hist wait;             /* a demand opened -> assigned */
    struct hub_hist solve;            /* one decision: read, evaluate, solve */
};

/* Runs every dispatch entry of `set` for twin `id` after its rules ran in this transaction
 * (doc: the twin as it is now; NULL: deleted): opens or ends its demand, hands back what an
 * offline or deleted resource held, and decides when anything changed. Returns 0 or a store
 * error (abort). */
int hub_dispatch_twin(const struct rules_set *set, struct hub_dispatch_stats *st,
                      struct twin_txn *txn, const char *id, size_t id_len,
                      const struct twin_doc *doc, int64_t now, struct outlist *ol, char *err);
/* After command `c` reached a final state in this transaction: the assignment it carried is
 * served (succeeded) or handed back (failed, expired), and the dispatch decides again. */
int hub_dispatch_command(const struct rules_set *set, struct hub_dispatch_stats *st,
                         struct twin_txn *txn, const struct twin_command *c, int64_t now,
                         struct outlist *ol, char *err);

struct hub_rules {
    pthread_rwlock_t lock; /* guards set and the arrays below (see rules.c) */
    struct rules_set *set; /* NULL: no rules */
    struct hub_rule_stats *rule_stats;   /* one per rule of set, by index */
    struct hub_model_stats *model_stats; /* one per model of set, by index */
    char path[256];        /* rules.file; "" for none */
    struct stat st;        /* of the file when last loaded, to notice a change */
    bool have_st;
    struct rules_options opt;
    struct report *report;
    struct hub_rules_stats stats;
    struct hub_dispatch_stats dispatch;
};

/* One thread's working memory for rule runs. */
struct rules_run {
    struct rules_scratch *sc;
    struct rules_changes changes; /* what the change being run wrote */
    struct rules_twin tw;
    struct rules_model_record rec; /* a model's record of the twin being run (its buffer:
                                      RULES_MODEL_STATE_MAX bytes) */
};
int rules_run_init(struct rules_run *rr);
void rules_run_cleanup(struct rules_run *rr);

/* Loads the rules file `path` ("" or NULL: no rules) and clears the state of rules and models
 * that are gone or changed since the store last ran (as a reload does). On error logs every
 * problem and returns it (the hub does not start with a bad file). tick_ms: rules.tick. Main
 * thread, before the other threads start. */
int hub_rules_open(struct hub_rules *hr, const char *path, struct report *rep, int64_t tick_ms,
                   struct twin_store *store);
void hub_rules_close(struct hub_rules *hr);
/* Loads `path` again (SIGHUP, or the file changed): on success swaps it in and clears the
 * state of rules and models that are gone or changed; on failure keeps the running rules, logs
 * every error and reports the first on hub/errors. Main thread. */
int hub_rules_reload(struct hub_rules *hr, const char *path, struct twin_store *store);
/* Reloads when the file's mtime, size or inode changed since it was loaded. Main thread. */
void hub_rules_poll(struct hub_rules *hr, struct twin_store *store);
/* Whether rules are loaded (a cheap look, any thread; NULL hr: no). */
bool hub_rules_active(struct hub_rules *hr);
/* Copies the counters of every loaded rule and model, with their names, into arrays the caller
 * frees (free(*rules), free(*models); NULL with a count of 0 when there are none). Holds
 * hr->lock shared for the copy only. Returns 0 or -ENOMEM (nothing to free). Any thread. */
int hub_rules_sample(struct hub_rules *hr, struct hub_rule_sample **rules, unsigned *n_rules,
                     struct hub_model_sample **models, unsigned *n_models);
/* The changed paths of a telemetry map: reported.<key> for each key but seq and ts. */
void hub_rules_changes_telemetry(struct rules_changes *c, const msgpack_object *telemetry);
/* In a write transaction, after a change of twin `id` described by rr->changes: runs the rules
 * it touches, carries out their actions in txn, queues their events and commands in ol, and
 * ORs into *flags the PUB_* the twin needs. `doc` is the twin as the change stored it, when
 * the caller has it (telemetry does); NULL: read from txn. Returns 0 or a store error (abort
 * the transaction). hr NULL or without rules: nothing. */
int hub_rules_on_change(struct hub_rules *hr, struct rules_run *rr, struct twin_txn *txn,
                        const char *id, size_t id_len, const struct twin_doc *doc, int64_t now,
                        struct outlist *ol, unsigned *flags, char *err);
/* The timer pass: runs the rules of every twin whose wake time is <= now, in transactions of a
 * bounded size, and publishes what they did after each commit. Main thread. */
int hub_rules_timer(struct hub_rules *hr, struct rules_run *rr, struct twin_store *store,
                    struct publisher *pub, struct outlist *ol, int64_t now, char *err);
/* The earliest wake time in the store; INT64_MAX when none. */
int64_t hub_rules_next_due(struct twin_store *store);
/* hub_dispatch_command with the set held shared (nothing without rules). */
int hub_rules_dispatch_command(struct hub_rules *hr, struct twin_txn *txn,
                               const struct twin_command *c, int64_t now, struct outlist *ol,
                               char *err);
/* hub_dispatch_twin for twin `id` deleted in this transaction (hr may be NULL). */
int hub_rules_dispatch_deleted(struct hub_rules *hr, struct twin_txn *txn, const char *id,
                               size_t id_len, int64_t now, struct outlist *ol, char *err);

/* ---------------------------------------------------------------------------------------------
 * ingest.c: the message callback (Paho's receive thread) and what it dispatches to:
 * telemetry (ingest.c), device status (presence.c), requests from services (requests.c),
 * command acks (commands.c).
 * ------------------------------------------------------------------------------------------ */

/* The codes a reply to a request carries (requests.c): 200 accepted, the rest rejected. */
#define HUB_REPLY_CODES 7
extern const int hub_reply_codes[HUB_REPLY_CODES];

struct ingest_stats {
    _Atomic uint64_t received, applied, duplicate, stale, retained;
    _Atomic uint64_t gaps, missed;      /* gaps in devices' seq, and the seq numbers they skipped */
    _Atomic uint64_t restarts[3];       /* new seq orders, by TWIN_RESTART_BOOT/ONLINE/STALE_RUN */
    _Atomic uint64_t status;            /* device status messages that changed a twin */
    _Atomic uint64_t requests;          /* requests from services (not retained) */
    _Atomic uint64_t requests_rejected; /* of which replied to with `rejected` */
    _Atomic uint64_t acks;              /* command acks from devices (not retained) */
    _Atomic uint64_t replies[HUB_REPLY_CODES]; /* replies to requests, by hub_reply_codes[] */
    /* command state changes committed, by the state entered (HUB_CMD_STATES): ingest's and
     * the main loop's outlists both count here */
    _Atomic uint64_t commands[HUB_CMD_STATES];
};

struct ingest {
    struct twin_store *store;
    struct publisher *pub;
    struct report *report;
    const struct bridge_topics *topics;
    pthread_mutex_t limits_lock; /* guards limits (SIGHUP changes them) */
    struct twin_limits limits;
    msgpack_zone zone;  /* reused for every message; only the receive thread touches it */
    struct outlist out; /* the same: what one message's transaction publishes */
    struct ingest_stats stats;
    struct hub_hist commit;     /* telemetry: arrival to commit, one message's transaction */
    _Atomic int64_t busy_since; /* hub_mono_ms when the message being handled arrived; 0 idle */
    struct hub_rules *rules;    /* NULL: no rules run (set by the owner before messages flow) */
    struct rules_run run;       /* the receive thread's rule runs */
    bool aws_shadow;            /* aws.shadow: $aws/... requests go to shadow.c */
    struct query_limits query_limits; /* query.*, under limits_lock; max_limit 0: defaults */
    struct reads *reads;        /* hub/query and twins/{id}/history go there; NULL: done here */
};

int ingest_init(struct ingest *in, struct twin_store *store, struct publisher *pub,
                struct report *report, const struct bridge_topics *topics,
                const struct twin_limits *limits, bool json);
void ingest_set_limits(struct ingest *in, const struct twin_limits *limits);
/* bridge_message_cb: commits before it returns (the broker's PUBACK follows the return). */
void ingest_on_message(void *ctx, const struct bridge_msg *m);
void ingest_cleanup(struct ingest *in);
/* The current limits (a copy). Receive thread. */
struct twin_limits ingest_limits(struct ingest *in);
/* Queues the messages of in->out after a commit; logs what the publisher dropped. */
void ingest_flush(struct ingest *in);
/* An error that cannot be fixed in place (storage, memory) while handling message `t`: logs
 * and exits before returning, so the broker keeps the message (no PUBACK) and redelivers it to
 * the restarted hub. */
_Noreturn void ingest_fatal(const struct bridge_topic *t, const char *what, int rc,
                            const char *err);

/* presence.c: devices/{id}/status. Receive thread. */
void presence_on_status(struct ingest *in, const struct bridge_msg *m,
                        const struct bridge_topic *t);
/* requests.c: twins/{id}/desired/set, get, delete, commands/send. Receive thread. */
void requests_on_message(struct ingest *in, const struct bridge_msg *m,
                         const struct bridge_topic *t);
/* The part of requests_on_message before the publisher: resets in->out, does the request (one
 * write transaction, committed; a read for get) and leaves its reply, and the events and
 * commands it causes, in in->out. A retained request leaves in->out empty. A bad request is
 * counted and reported (in->report). A storage failure exits (ingest_fatal). Returns the PUB_*
 * flags the twin needs published (0 when nothing changed). */
unsigned requests_handle(struct ingest *in, const struct bridge_msg *m,
                         const struct bridge_topic *t);
/* Answers a request with a rejection {code, message} and nothing else (reads.c: 429 when too
 * many reads wait). Receive thread. */
void requests_refuse(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t,
                     int code, const char *message);
/* A request that came over HTTP (api.c): does it as requests_on_message would, on the calling
 * thread with `in` (the HTTP listener's own ingest, one caller at a time), and puts the reply's
 * payload (msgpack or JSON, as publish.encoding) into `reply` instead of publishing it.
 * Returns 200 (accepted), 0 (rejected: the code is in the reply), -EINVAL (bad id), -ENOMEM. */
int requests_http(struct ingest *in, enum bridge_topic_kind kind, const char *id, size_t id_len,
                  const void *payload, size_t len, msgpack_sbuffer *reply);

/* ---------------------------------------------------------------------------------------------
 * commands.c: commands to devices, their acks, the expiry timer, re-sending after a restart.
 * ------------------------------------------------------------------------------------------ */

/* twin_command_cb: an event on twins/{id}/events for the change, added to the outlist `ctx`.
 * Returns 0 or -ENOMEM (the transaction must then be aborted). */
int commands_on_event(void *ctx, const struct twin_command *c, enum twin_command_state from);
/* In a write transaction: marks command `cmd_id` of twin `id` sent and adds its message (and
 * the event for queued -> sent) to `ol`. Returns as twin_command_mark_sent, or ol's error. */
int commands_send_one(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                      int64_t now, struct outlist *ol, char *err);
/* The same for every command of twin `id` still queued or sent, oldest first (the device came
 * online, or the hub restarted). A damaged record is logged and skipped. */
int commands_send_pending(struct twin_txn *txn, const char *id, size_t id_len, int64_t now,
                          struct outlist *ol, char *err);
/* devices/{id}/commands/ack {id, status, result?}. Receive thread. */
void commands_on_ack(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t);
/* The part of commands_on_ack before the publisher: resets in->out, applies the ack in one
 * write transaction (committed) and leaves the event it causes in in->out. Returns 0 (applied,
 * or a duplicate that changed nothing), 1 (retained: ignored), or the negative code of a
 * rejected ack (counted and reported; nothing changed, in->out empty). A storage failure exits
 * (ingest_fatal). */
int commands_ack_handle(struct ingest *in, const struct bridge_msg *m,
                        const struct bridge_topic *t);
/* The timer pass: expires the commands due at `now` (and drops finished ones past their
 * retention) in transactions of a bounded size, queuing an event for each expired command
 * after each commit. *expired: how many. Returns 0 or a store error (reason in err). Main
 * thread, with its own outlist. */
int commands_expire(struct twin_store *store, struct hub_rules *hr, struct publisher *pub,
                    struct outlist *ol, int64_t now, uint64_t *expired, char *err);
/* When commands_expire has work next (hub clock, ms). Returns 0, -ENOENT (nothing due ever),
 * or a store error. */
int commands_next_due(struct twin_store *store, int64_t *at, char *err);
/* At start: sends again every queued or sent command of the twins marked connected (what was
 * committed before the last stop may not have reached the device). *devices: how many twins
 * had some. Returns 0 or a store error. Main thread, before the bridge starts. */
int commands_resend_connected(struct twin_store *store, struct publisher *pub, struct outlist *ol,
                              uint64_t *devices, char *err);

/* ---------------------------------------------------------------------------------------------
 * reads.c: hub/query and twins/{id}/history, answered on a thread of their own so that a long
 * query never holds up ingest: a bounded queue of copied requests (beyond it: 429).
 * ------------------------------------------------------------------------------------------ */

struct reads;

/* Starts the thread, with an ingest of its own made like `like` (store, publisher, report,
 * topics, limits, encoding). Returns 0, -ENOMEM or -errno of pthread_create. Main thread. */
int reads_start(struct reads **out, struct ingest *like, unsigned max_waiting);
/* Queues a copy of request m (kind BRIDGE_T_QUERY or BRIDGE_T_HISTORY), or refuses it with 429
 * through `in` when max_waiting wait already. Receive thread. */
void reads_submit(struct reads *r, struct ingest *in, const struct bridge_msg *m,
                  const struct bridge_topic *t);
/* Stops the thread (what waits is dropped: the requester's deadline passes) and frees. NULL is
 * fine. Main thread, before the publisher is freed. */
void reads_stop(struct reads *r);

/* ---------------------------------------------------------------------------------------------
 * Health and metrics: what the main loop and the bridge's callbacks say about the hub, read
 * by the HTTP thread (http.c) and the systemd watchdog (main.c).
 * ------------------------------------------------------------------------------------------ */

struct hub_health {
    _Atomic int64_t main_beat; /* hub_mono_ms of the main loop's last turn */
    _Atomic bool connected;    /* to the broker, subscriptions made */
    _Atomic bool draining;     /* SIGTERM taken: stopping */
    _Atomic uint64_t connects; /* connections made; reconnects are the ones after the first */
    unsigned stall_ms;         /* http.stall */
};

/* What the live and ready checks found. */
struct hub_checks {
    bool main_loop, ingest;    /* liveness: each made progress within http.stall */
    bool broker, not_draining; /* readiness (with liveness, and a read of the store: http.c) */
};

/* Runs the checks against `in` (its busy_since) at hub_mono_ms() `now`. Any thread. */
void hub_health_check(const struct hub_health *h, const struct ingest *in, int64_t now,
                      struct hub_checks *out);

/* Everything /metrics reads. Borrowed; lives as long as the HTTP listener. */
struct metrics_src {
    struct ingest *in;
    struct report *rep;
    struct publisher *pub;
    struct hub_rules *rules;
    struct twin_store *store;
    struct hub_health *health;
};

/* Writes every metric in the Prometheus text format (version 0.0.4) to `out`. Takes no lock
 * longer than a copy of counters (the publisher's; the rules' shared, for the per-rule and
 * per-model ones), and a read transaction of the store. Any thread. Returns 0 or -EIO (a write
 * failed). */
int metrics_write(const struct metrics_src *src, FILE *out);

/* ---------------------------------------------------------------------------------------------
 * http.c: the HTTP listener (libmicrohttpd, a thread per connection): /metrics, /healthz,
 * /readyz, the JSON API and its stream, the dashboard (http.h has the parts).
 * ------------------------------------------------------------------------------------------ */

struct hub_http;

/* Binds http.listen and starts serving; on error nothing is left and the reason is in err.
 * Refuses a listener off loopback without http.token_file. Returns 0, -EINVAL (configuration:
 * token or TLS files), -EADDRINUSE and other -errno of socket/bind/listen, -ENOMEM. Main
 * thread. */
int http_start(struct hub_http **out, const struct config *c, const struct metrics_src *src,
               struct hub_stream *stream, char *err, size_t err_size);
/* The port it listens on (the one picked when http.listen asked for port 0). */
unsigned http_port(const struct hub_http *h);
/* Stops the thread and closes every connection. NULL is fine. Main thread. */
void http_stop(struct hub_http *h);
/* Samples the models' scores for GET /api/models' history when HTTP_TICK_MS passed since the
 * last sample. NULL is fine. Main thread, from its loop. */
#define HTTP_TICK_MS 10000
void http_tick(struct hub_http *h);

#endif
