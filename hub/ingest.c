/* ingest: turns one received message into one committed twin change, before the message is
 * acknowledged. It owns the order size cap -> topic -> pre-scan and decode -> one LMDB write
 * transaction -> hand-off to the publisher, for telemetry here, and dispatches the other
 * topics (presence.c, requests.c, commands.c); it never publishes itself.
 *
 * Threads: ingest_on_message runs on Paho's receive thread (one at a time); it takes
 * in->limits_lock for a moment to copy the limits. ingest_set_limits: main thread (SIGHUP). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hub.h"
#include "log.h"
#include "shadow.h"

struct apply {
    struct ingest *in;
    const struct bridge_topic *t;
    const msgpack_object *telemetry;
    int64_t now;
    struct twin_apply_result res;
    unsigned flags; /* PUB_* the rules' actions need besides the state */
    char err[TWIN_ERR_LEN];
};

static int apply_fn(struct twin_txn *txn, void *ctx)
{
    struct apply *a = ctx;
    struct ingest *in = a->in;
    outlist_start(&in->out, txn); /* the transaction may run again after the map grows */
    a->flags = 0;
    int rc =
        twin_telemetry_apply(txn, a->t->id, a->t->id_len, a->telemetry, a->now, &a->res, a->err);
    if (rc < 0 || a->res.outcome != TWIN_APPLIED || !hub_rules_active(in->rules))
        return rc;
    hub_rules_changes_telemetry(&in->run.changes, a->telemetry);
    return hub_rules_on_change(in->rules, &in->run, txn, a->t->id, a->t->id_len, &a->res.doc,
                               a->now, &in->out, &a->flags, a->err);
}

int ingest_init(struct ingest *in, struct twin_store *store, struct publisher *pub,
                struct report *report, const struct bridge_topics *topics,
                const struct twin_limits *limits, bool json)
{
    memset(in, 0, sizeof(*in));
    in->store = store;
    in->pub = pub;
    in->report = report;
    in->topics = topics;
    in->limits = *limits;
    pthread_mutex_init(&in->limits_lock, NULL);
    if (!msgpack_zone_init(&in->zone, 4096))
        goto fail_zone;
    if (outlist_init(&in->out, topics, json) < 0)
        goto fail_out;
    in->out.cmd_counts = in->stats.commands;
    if (rules_run_init(&in->run) < 0)
        goto fail_out;
    return 0;
fail_out:
    rules_run_cleanup(&in->run);
    outlist_cleanup(&in->out);
    msgpack_zone_destroy(&in->zone);
fail_zone:
    pthread_mutex_destroy(&in->limits_lock);
    return -ENOMEM;
}

void ingest_set_limits(struct ingest *in, const struct twin_limits *limits)
{
    pthread_mutex_lock(&in->limits_lock);
    in->limits = *limits;
    pthread_mutex_unlock(&in->limits_lock);
}

struct twin_limits ingest_limits(struct ingest *in)
{
    struct twin_limits lim;
    pthread_mutex_lock(&in->limits_lock);
    lim = in->limits;
    pthread_mutex_unlock(&in->limits_lock);
    return lim;
}

void ingest_fatal(const struct bridge_topic *t, const char *what, int rc, const char *err)
{
    char qerr[TWIN_ERR_LEN + 8];
    log_quote(qerr, sizeof(qerr), err, strlen(err));
    log_error("cannot commit a message; exiting without acknowledging it",
              "what=\"%s\" id=%.*s rc=%d err=%s", what, (int)t->id_len, t->id, rc, qerr);
    _exit(70);
}

void ingest_flush(struct ingest *in)
{
    outlist_flush(&in->out, in->pub);
}

/* A gap in the device's seq: the broker (or the way to it) lost what it skipped. The twin
 * already counts it (doc.gaps, committed); say it where an operator looks. */
static void gap(struct ingest *in, const struct bridge_msg *m, const struct twin_apply_result *r)
{
    char why[160];
    atomic_fetch_add(&in->stats.gaps, 1);
    atomic_fetch_add(&in->stats.missed, r->gap);
    snprintf(why, sizeof(why), "seq gap: %llu messages never arrived (seq %llu..%llu)",
             (unsigned long long)r->gap, (unsigned long long)r->doc.gaps.from,
             (unsigned long long)r->doc.gaps.to);
    report_reject(in->report, REPORT_GAP, m->topic, m->topic_len, why);
}

/* A stale message: the twin counted it (doc.stale, committed); say what the operator can do,
 * since a device that restarted without `boot` is frozen until the run is long enough. */
static void stale(struct ingest *in, const struct bridge_msg *m, const struct twin_apply_result *r,
                  uint64_t restart_after)
{
    char why[320], after[96] = "";
    const struct twin_stale *st = &r->doc.stale;
    if (restart_after)
        snprintf(after, sizeof(after), "; %llu in a row counting up are taken as a restart",
                 (unsigned long long)restart_after);
    snprintf(why, sizeof(why),
             "seq %llu is below %llu, the last applied: dropped as stale (%llu so far, %llu in a "
             "row)%s (limits.seq_restart_after). If the device restarted, have it send a new "
             "boot with each start, or publish online on its status topic first",
             (unsigned long long)st->seq, (unsigned long long)r->doc.seq,
             (unsigned long long)st->count, (unsigned long long)st->run, after);
    report_reject(in->report, REPORT_STALE, m->topic, m->topic_len, why);
}

static void telemetry(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t,
                      int64_t t0)
{
    struct twin_limits lim = ingest_limits(in);

    char err[TWIN_ERR_LEN];
    msgpack_object obj;
    /* SenML packs become a batch of readings: the same path from here on */
    int rc = t->kind == BRIDGE_T_SENML
                 ? twin_senml_decode(m->payload, m->len, &lim, hub_now_ms(), &in->zone, &obj, err)
                 : twin_input_decode(m->payload, m->len, &lim, &in->zone, &obj, err);
    if (rc == -ENOMEM)
        ingest_fatal(t, "telemetry", rc, err);
    if (rc < 0) {
        report_reject(in->report, report_kind_of(rc), m->topic, m->topic_len, err);
        goto out;
    }
    struct apply a = {.in = in, .t = t, .telemetry = &obj, .now = hub_now_ms()};
    err[0] = '\0'; /* twin_store_write fills it for its own failures; fn's go to a.err */
    rc = twin_store_write(in->store, apply_fn, &a, err);
    if (rc == 0)
        hub_hist_observe(&in->commit, hub_mono_ns() - t0);
    if (rc == -EINVAL || rc == -E2BIG) {
        report_reject(in->report, report_kind_of(rc), m->topic, m->topic_len, a.err);
        goto out;
    }
    if (rc == -EBADMSG) {
        /* The stored twin is damaged, not the message: refusing keeps the hub serving the
         * rest of the fleet instead of dying on every redelivery. */
        log_error("stored twin unreadable; telemetry refused", "id=%.*s err=\"%s\"", (int)t->id_len,
                  t->id, a.err);
        report_reject(in->report, REPORT_INVALID, m->topic, m->topic_len, a.err);
        goto out;
    }
    if (rc < 0)
        ingest_fatal(t, "telemetry", rc, err[0] ? err : a.err);
    switch (a.res.outcome) {
    case TWIN_APPLIED:
        atomic_fetch_add(&in->stats.applied, 1);
        if (a.res.gap)
            gap(in, m, &a.res);
        if (a.res.restart != TWIN_RESTART_NONE) {
            static const char *const why[] = {"", "boot", "online", "stale_run"};
            atomic_fetch_add(&in->stats.restarts[a.res.restart - 1], 1);
            log_debug("device restarted: a new seq order", "id=%.*s seq=%llu reason=%s",
                     (int)t->id_len, t->id, (unsigned long long)a.res.doc.seq, why[a.res.restart]);
        }
        ingest_flush(in); /* what the rules did: events, commands */
        /* devices/{id}/desired only when the delta changed: the hot path publishes once */
        if (publisher_twin_since(in->pub, t->id, t->id_len,
                                 PUB_STATE | a.flags | (a.res.delta_changed ? PUB_DESIRED : 0),
                                 t0) < 0)
            log_warn_limited("publication postponed to the next restart", "id=%.*s reason=\"no memory\"",
                     (int)t->id_len, t->id);
        break;
    case TWIN_DUPLICATE:
        atomic_fetch_add(&in->stats.duplicate, 1);
        log_debug("duplicate telemetry ignored", "id=%.*s version=%llu", (int)t->id_len, t->id,
                  (unsigned long long)a.res.version);
        break;
    case TWIN_STALE:
        /* dropped, but counted in the twin: a committed change, published like any */
        atomic_fetch_add(&in->stats.stale, 1);
        stale(in, m, &a.res, twin_store_seq_restart(in->store));
        if (publisher_twin_since(in->pub, t->id, t->id_len, PUB_STATE, t0) < 0)
            log_warn_limited("publication postponed to the next restart", "id=%.*s reason=\"no memory\"",
                     (int)t->id_len, t->id);
        break;
    }
out:
    outlist_reset(&in->out); /* a rejected message's aborted rule outputs (flushed ones are gone) */
    msgpack_zone_clear(&in->zone);
}

/* One message, whatever its topic. */
static void dispatch(struct ingest *in, const struct bridge_msg *m, int64_t t0)
{
    struct bridge_topic t;
    char err[BRIDGE_ERR_LEN];
    if (in->aws_shadow && bridge_aws_topic_is(m->topic, m->topic_len)) {
        shadow_on_message(in, m); /* aws.shadow: AWS IoT Device Shadow requests */
        return;
    }
    if (bridge_topic_parse(in->topics, m->topic, m->topic_len, &t, err) < 0) {
        report_reject(in->report, REPORT_TOPIC, m->topic, m->topic_len, err);
        return;
    }
    switch (t.kind) {
    case BRIDGE_T_TELEMETRY:
    case BRIDGE_T_SENML:
        /* A retained copy is a replay of something already applied (the broker sends it again
         * at every subscribe): applying it would bump the version and restamp the leaves. */
        if (m->retained)
            atomic_fetch_add(&in->stats.retained, 1);
        else
            telemetry(in, m, &t, t0);
        break;
    case BRIDGE_T_STATUS:
        presence_on_status(in, m, &t);
        break;
    case BRIDGE_T_CMD_ACK:
        commands_on_ack(in, m, &t);
        break;
    case BRIDGE_T_DESIRED_SET:
    case BRIDGE_T_GET:
    case BRIDGE_T_DELETE:
    case BRIDGE_T_CMD_SEND:
        requests_on_message(in, m, &t);
        break;
    case BRIDGE_T_QUERY:
    case BRIDGE_T_HISTORY:
        if (in->reads)
            reads_submit(in->reads, in, m, &t);
        else
            requests_on_message(in, m, &t);
        break;
    default:
        /* Only what we subscribe to arrives; anything else is a broker misconfiguration. */
        report_reject(in->report, REPORT_TOPIC, m->topic, m->topic_len,
                      "topic not handled by this hub");
        break;
    }
}

void ingest_on_message(void *ctx, const struct bridge_msg *m)
{
    struct ingest *in = ctx;
    int64_t t0 = hub_mono_ns();
    /* liveness (/healthz, the systemd watchdog): a message handled for too long is a stall;
     * +1 so that a clock at 0 ms still reads as busy */
    atomic_store_explicit(&in->busy_since, t0 / 1000000 + 1, memory_order_relaxed);
    atomic_fetch_add(&in->stats.received, 1);
    dispatch(in, m, t0);
    atomic_store_explicit(&in->busy_since, 0, memory_order_relaxed);
}

void ingest_cleanup(struct ingest *in)
{
    rules_run_cleanup(&in->run);
    outlist_cleanup(&in->out);
    msgpack_zone_destroy(&in->zone);
    pthread_mutex_destroy(&in->limits_lock);
}
