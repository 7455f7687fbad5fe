/* metrics: the hub's counters as Prometheus text (/metrics), the histograms that the hot path
 * fills, the liveness and readiness checks, and the standard process_* metrics read from
 * /proc. It owns no counter of its own but the histograms' shape: the modules count, this file
 * names and prints. Names follow Prometheus' conventions: twinhub_ prefix, _total counters,
 * base units (_seconds, _bytes).
 *
 * Threads: hub_hist_observe on any (Paho's, the publisher's); metrics_write and
 * hub_health_check on the HTTP thread. Nothing here takes a lock; publisher_stats copies under
 * the publisher's for a moment, hub_rules_sample under the rules' (shared) for a moment.
 *
 * Per-rule and per-model series are labelled with names from the rules file (bounded by it:
 * rules.max_rules, max_models); nothing a device sends becomes a label. Every label value goes
 * through metrics_label_put, whatever the loader allows in a name today. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "hub.h"

/* Upper bounds of the histogram buckets, in ns: 5 µs to 10 s. */
static const int64_t bounds_ns[HUB_HIST_BUCKETS] = {
    5000,      10000,     25000,      50000,      100000,     250000,     500000,
    1000000,   2500000,   5000000,    10000000,   25000000,   50000000,   100000000,
    250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000};

void hub_hist_observe(struct hub_hist *h, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    int i = 0;
    while (i < HUB_HIST_BUCKETS && ns > bounds_ns[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

void hub_health_check(const struct hub_health *h, const struct ingest *in, int64_t now,
                      struct hub_checks *out)
{
    int64_t beat = atomic_load(&h->main_beat);
    int64_t busy = atomic_load(&in->busy_since);
    out->main_loop = now - beat <= (int64_t)h->stall_ms;
    out->ingest = busy == 0 || now - (busy - 1) <= (int64_t)h->stall_ms;
    out->broker = atomic_load(&h->connected);
    out->not_draining = !atomic_load(&h->draining);
}

/* ---------------------------------------------------------------------------------------------
 * Text format
 * ------------------------------------------------------------------------------------------ */

int metrics_label_put(FILE *f, const char *s, size_t n)
{
    size_t run = 0; /* bytes before s[i] that need no escape, not yet written */
    for (size_t i = 0; i < n; i++) {
        const char *esc = s[i] == '\\'   ? "\\\\"
                          : s[i] == '"'  ? "\\\""
                          : s[i] == '\n' ? "\\n"
                                         : NULL;
        if (!esc) {
            run++;
            continue;
        }
        if ((run && fwrite(s + i - run, 1, run, f) != run) || fputs(esc, f) == EOF)
            return -EIO;
        run = 0;
    }
    if (run && fwrite(s + n - run, 1, run, f) != run)
        return -EIO;
    return 0;
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v)
{
    head(f, name, "counter", help);
    fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static void gauge(FILE *f, const char *name, const char *help, double v)
{
    head(f, name, "gauge", help);
    fprintf(f, "%s %.17g\n", name, v);
}

static void histogram(FILE *f, const char *name, const char *help, struct hub_hist *h)
{
    uint64_t cum = 0;
    head(f, name, "histogram", help);
    for (int i = 0; i <= HUB_HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        if (i < HUB_HIST_BUCKETS)
            fprintf(f, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, (double)bounds_ns[i] / 1e9, cum);
        else
            fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    }
    /* _count is the +Inf bucket: the two agree even while observations land */
    fprintf(f, "%s_sum %.9f\n%s_count %" PRIu64 "\n", name,
            (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9, name, cum);
}

static uint64_t ld(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

/* process_*: resident and virtual memory, CPU seconds, start time, open and max fds. */
static void process_metrics(FILE *f)
{
    char buf[1024];
    FILE *st = fopen("/proc/self/stat", "r");
    if (st) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, st);
        fclose(st);
        buf[n] = '\0';
        /* the fields after the command name, which may hold spaces and parentheses */
        char *p = strrchr(buf, ')');
        unsigned long long utime, stime, start, vsize;
        long long rss;
        if (p && sscanf(p + 2,
                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                        "%*d %*d %llu %llu %lld",
                        &utime, &stime, &start, &vsize, &rss) == 5) {
            double tick = (double)sysconf(_SC_CLK_TCK);
            double btime = 0;
            FILE *ps = fopen("/proc/stat", "r");
            char line[256];
            while (ps && fgets(line, sizeof(line), ps))
                if (sscanf(line, "btime %lf", &btime) == 1)
                    break;
            if (ps)
                fclose(ps);
            head(f, "process_cpu_seconds_total", "counter",
                 "Total user and system CPU time spent in seconds.");
            fprintf(f, "process_cpu_seconds_total %.2f\n", (double)(utime + stime) / tick);
            gauge(f, "process_start_time_seconds",
                  "Start time of the process since unix epoch in seconds.",
                  btime + (double)start / tick);
            gauge(f, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                  (double)vsize);
            gauge(f, "process_resident_memory_bytes", "Resident memory size in bytes.",
                  (double)rss * (double)sysconf(_SC_PAGESIZE));
        }
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long n = 0;
        while (readdir(d))
            n++;
        closedir(d);
        gauge(f, "process_open_fds", "Number of open file descriptors.", (double)(n - 3));
    }
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd > 0)
        gauge(f, "process_max_fds", "Maximum number of open file descriptors.", (double)maxfd);
}

/* NAME{LABEL="value"} and the space before the sample's value. */
static void series(FILE *f, const char *name, const char *label, const char *value)
{
    fprintf(f, "%s{%s=\"", name, label);
    metrics_label_put(f, value, strlen(value));
    fputs("\"} ", f);
}

/* One counter per label value: NAME{LABEL="value"} v. */
static void labelled(FILE *f, const char *name, const char *type, const char *help,
                     const char *label, const char *const *values, const uint64_t *v, int n)
{
    head(f, name, type, help);
    for (int i = 0; i < n; i++) {
        series(f, name, label, values[i]);
        fprintf(f, "%" PRIu64 "\n", v[i]);
    }
}

/* The per-model families: what each shows of a model, and for which models. */
enum model_field {
    MF_PREDICTIONS,
    MF_SCORED,
    MF_ABS,
    MF_SQ,
    MF_CORRECT,
    MF_MAE,
    MF_RMSE,
    MF_ACCURACY
};

static const struct {
    const char *name, *type, *help;
    enum model_field field;
} model_families[] = {
    {"twinhub_model_predictions_total", "counter", "Predictions stored, by model.", MF_PREDICTIONS},
    {"twinhub_model_scored_total", "counter",
     "Predictions compared with their target's value, by model (models with a target).", MF_SCORED},
    {"twinhub_model_absolute_error_total", "counter",
     "Sum of |target - prediction| over the scored predictions, by regressor; over "
     "twinhub_model_scored_total in a rate(), the MAE of a window.",
     MF_ABS},
    {"twinhub_model_squared_error_total", "counter",
     "Sum of (target - prediction)^2 over the scored predictions, by regressor.", MF_SQ},
    {"twinhub_model_correct_total", "counter",
     "Scored predictions that named the target's value, by classifier.", MF_CORRECT},
    {"twinhub_model_mean_absolute_error", "gauge",
     "Mean absolute error of the regressor's scored predictions over all twins since the hub "
     "started (in the target's unit).",
     MF_MAE},
    {"twinhub_model_root_mean_squared_error", "gauge",
     "Root mean squared error of the regressor's scored predictions over all twins since the "
     "hub started (in the target's unit).",
     MF_RMSE},
    {"twinhub_model_accuracy_ratio", "gauge",
     "Share of the classifier's scored predictions that were right, over all twins since the "
     "hub started (0 to 1).",
     MF_ACCURACY},
};

/* Whether model m has a sample in the family of `field`, and its value. */
static bool model_value(const struct hub_model_sample *m, enum model_field field, double *v)
{
    bool reg = m->kind == HUB_MODEL_REGRESSOR, cls = m->kind == HUB_MODEL_CLASSIFIER;
    double n = (double)m->scored;
    switch (field) {
    case MF_PREDICTIONS:
        *v = (double)m->predictions;
        return true;
    case MF_SCORED:
        *v = n;
        return m->has_target;
    case MF_ABS:
        *v = m->sum_abs;
        return reg;
    case MF_SQ:
        *v = m->sum_sq;
        return reg;
    case MF_CORRECT:
        *v = (double)m->correct;
        return cls;
    case MF_MAE:
        *v = m->sum_abs / n;
        return reg && m->scored;
    case MF_RMSE:
        *v = sqrt(m->sum_sq / n);
        return reg && m->scored;
    case MF_ACCURACY:
        *v = (double)m->correct / n;
        return cls && m->scored;
    }
    return false;
}

/* twinhub_rule_* and twinhub_model_* by name: a copy of the counters of the loaded rules.
 * Counters and gauges alike count since the hub started (carried across reloads by name, see
 * hub/rules.c), over every twin; a family with no sample is left out. */
static void rules_metrics(FILE *f, struct hub_rules *hr)
{
    struct hub_rule_sample *rs;
    struct hub_model_sample *ms;
    unsigned nr, nm;
    if (hub_rules_sample(hr, &rs, &nr, &ms, &nm) < 0)
        return;
    if (nr)
        head(f, "twinhub_rule_fired_total", "counter",
             "Times each loaded rule fired (became firing for a twin), over all twins.");
    for (unsigned i = 0; i < nr; i++) {
        series(f, "twinhub_rule_fired_total", "rule", rs[i].name);
        fprintf(f, "%" PRIu64 "\n", rs[i].fired);
    }
    for (size_t k = 0; k < sizeof(model_families) / sizeof(model_families[0]); k++) {
        bool headed = false;
        for (unsigned i = 0; i < nm; i++) {
            double v;
            if (!model_value(&ms[i], model_families[k].field, &v))
                continue;
            if (!headed)
                head(f, model_families[k].name, model_families[k].type, model_families[k].help);
            headed = true;
            series(f, model_families[k].name, "model", ms[i].name);
            fprintf(f, "%.17g\n", v);
        }
    }
    free(rs);
    free(ms);
}

int metrics_write(const struct metrics_src *src, FILE *f)
{
    struct ingest *in = src->in;
    struct ingest_stats *is = &in->stats;
    struct hub_health *h = src->health;

    head(f, "twinhub_build_info", "gauge", "The running twinhub's version.");
    series(f, "twinhub_build_info", "version", TWINHUB_VERSION);
    fputs("1\n", f);

    /* what came in */
    counter(f, "twinhub_messages_received_total", "Messages received from the broker.",
            ld(&is->received));
    counter(f, "twinhub_telemetry_applied_total", "Telemetry messages committed to a twin.",
            ld(&is->applied));
    counter(f, "twinhub_telemetry_duplicate_total",
            "Telemetry whose seq equals the last applied one (nothing changed).",
            ld(&is->duplicate));
    counter(f, "twinhub_telemetry_stale_total",
            "Telemetry whose seq is below the last applied one of its boot (dropped, counted in "
            "the twin).",
            ld(&is->stale));
    {
        static const char *const why[] = {"boot", "online", "stale_run"};
        uint64_t v[3];
        for (int i = 0; i < 3; i++)
            v[i] = ld(&is->restarts[i]);
        labelled(f, "twinhub_telemetry_restarts_total", "counter",
                 "Devices whose seq began a new order: a new boot, back online, or a run of "
                 "stale messages (limits.seq_restart_after).",
                 "reason", why, v, 3);
    }
    counter(f, "twinhub_telemetry_retained_total",
            "Retained telemetry copies ignored (replays of what was applied).", ld(&is->retained));
    counter(f, "twinhub_telemetry_gaps_total",
            "Gaps in a device's seq: telemetry lost before it reached the hub.", ld(&is->gaps));
    counter(f, "twinhub_telemetry_missed_total",
            "Seq numbers skipped in those gaps: messages that never arrived.", ld(&is->missed));
    counter(f, "twinhub_status_messages_total", "Device status messages that changed a twin.",
            ld(&is->status));
    counter(f, "twinhub_requests_total", "Requests from services (desired/set, get, ...).",
            ld(&is->requests));
    counter(f, "twinhub_requests_rejected_total", "Requests answered with rejected.",
            ld(&is->requests_rejected));
    counter(f, "twinhub_command_acks_total", "Command acknowledgements from devices.",
            ld(&is->acks));
    {
        /* counters, not gauges of the queue: an operator alerts on increase() of failed and
         * expired; what is stored in any state is twinhub_commands_stored */
        const char *names[HUB_CMD_STATES];
        uint64_t v[HUB_CMD_STATES];
        int n = 0;
        for (int k = TWIN_CMD_QUEUED; k < HUB_CMD_STATES; k++) {
            names[n] = twin_command_state_name((enum twin_command_state)k);
            v[n++] = ld(&is->commands[k]);
        }
        labelled(f, "twinhub_commands_total", "counter",
                 "Command state changes committed, by the state entered (queued: a new command; "
                 "sent: handed to the publisher, first time only).",
                 "state", names, v, n);
    }
    {
        char codes[HUB_REPLY_CODES][8];
        const char *names[HUB_REPLY_CODES];
        uint64_t v[HUB_REPLY_CODES];
        for (int k = 0; k < HUB_REPLY_CODES; k++) {
            snprintf(codes[k], sizeof(codes[k]), "%d", hub_reply_codes[k]);
            names[k] = codes[k];
            v[k] = ld(&is->replies[k]);
        }
        labelled(f, "twinhub_replies_total", "counter",
                 "Replies to requests, by code (200 accepted; 400, 404, 409, 413, 500 rejected).",
                 "code", names, v, HUB_REPLY_CODES);
    }
    {
        const char *names[REPORT_KINDS];
        uint64_t v[REPORT_KINDS];
        int n = 0;
        for (int k = 0; k < REPORT_KINDS; k++) {
            if (!report_kind_rejects(k))
                continue;
            names[n] = report_kind_name((enum report_kind)k);
            v[n++] = ld(&src->rep->count[k]);
        }
        labelled(f, "twinhub_messages_rejected_total", "counter",
                 "Input rejected (counted, reported on hub/errors, nothing changed), by reason.",
                 "reason", names, v, n);
    }
    counter(f, "twinhub_error_reports_suppressed_total",
            "Reports of rejected input not published on hub/errors: over errors.rate (each is "
            "counted in the next report's suppressed).",
            ld(&src->rep->suppressed));
    histogram(f, "twinhub_commit_duration_seconds",
              "Telemetry from its arrival to the commit of its transaction.", &in->commit);

    /* what went out */
    struct publisher_stats ps;
    publisher_stats(src->pub, &ps);
    histogram(f, "twinhub_publish_latency_seconds",
              "From a twin's commit to the broker's acknowledgement of its published state.",
              publisher_latency(src->pub));
    histogram(f, "twinhub_telemetry_to_publish_seconds",
              "Telemetry from its arrival to the broker's acknowledgement of the first twin state "
              "that carries it (one observation per state published: its oldest telemetry).",
              publisher_telemetry_latency(src->pub));
    counter(f, "twinhub_publications_total",
            "Twin publications (state, desired) acknowledged by the broker.", ps.published);
    counter(f, "twinhub_publications_coalesced_total",
            "Twin publications merged into one already waiting.", ps.coalesced);
    counter(f, "twinhub_events_spilled_total",
            "Event messages left in the store for later: the publisher's queue was full.",
            ps.spilled);
    counter(f, "twinhub_events_from_store_total",
            "Event messages read back from the store to publish (spilled, or after a restart).",
            ps.from_store);
    counter(f, "twinhub_events_refused_total",
            "Event messages not stored: publish.max_stored_events were waiting already.",
            atomic_load_explicit(publisher_refused(src->pub), memory_order_relaxed));
    counter(f, "twinhub_publications_failed_total", "Publications and messages the broker refused.",
            ps.failed);
    gauge(f, "twinhub_publisher_queued", "Twins waiting to be published.", (double)ps.queued);
    gauge(f, "twinhub_publisher_inflight", "Publishes awaiting the broker's acknowledgement.",
          (double)ps.inflight);
    {
        static const char *const cls[PUB_CLASSES] = {"report", "reply", "command"};
        labelled(f, "twinhub_messages_sent_total", "counter",
                 "Messages acknowledged by the broker (report: hub/errors, QoS 0, written), by "
                 "class.",
                 "class", cls, ps.sent, PUB_CLASSES);
        labelled(f, "twinhub_messages_dropped_total", "counter",
                 "Messages dropped because their class's queue was full, by class.", "class", cls,
                 ps.dropped, PUB_CLASSES);
        labelled(f, "twinhub_messages_waiting", "gauge", "Messages waiting or in flight, by class.",
                 "class", cls, ps.waiting, PUB_CLASSES);
    }

    /* the store */
    struct twin_txn *txn;
    struct twin_stats st;
    char err[TWIN_ERR_LEN];
    if (twin_store_read_begin(src->store, &txn, err) == 0) {
        if (twin_store_usage(txn, &st, err) == 0) {
            gauge(f, "twinhub_twins", "Twins in the store.", (double)st.twins);
            gauge(f, "twinhub_store_map_size_bytes", "The LMDB map size.", (double)st.map_size);
            gauge(f, "twinhub_store_used_bytes", "LMDB pages in use, in bytes.",
                  (double)st.used_bytes);
            gauge(f, "twinhub_outbox", "Committed twin changes not yet acknowledged as published.",
                  (double)st.outbox);
            gauge(f, "twinhub_commands_stored", "Commands in the store, in any state.",
                  (double)st.commands);
            gauge(f, "twinhub_history_points", "History points in the store.",
                  (double)st.history_points);
        }
        uint64_t events = 0;
        if (twin_eventbox_count(txn, &events, err) == 0)
            gauge(f, "twinhub_events_stored",
                  "Event messages committed and not yet acknowledged by the broker.",
                  (double)events);
        twin_store_read_end(txn);
    }

    /* the broker */
    gauge(f, "twinhub_broker_connected", "1 while connected to the broker and subscribed.",
          atomic_load(&h->connected) ? 1 : 0);
    uint64_t connects = ld(&h->connects);
    counter(f, "twinhub_broker_reconnects_total", "Connections to the broker after the first.",
            connects ? connects - 1 : 0);

    /* rules and models */
    struct hub_rules_stats *rs = &src->rules->stats;
    counter(f, "twinhub_rules_evaluated_total", "Rule evaluations.", ld(&rs->evaluated));
    counter(f, "twinhub_rule_transitions_total", "Rule state changes (pending, firing, resolved).",
            ld(&rs->transitions));
    counter(f, "twinhub_rule_actions_total", "Actions run by rules.", ld(&rs->actions));
    counter(f, "twinhub_rule_action_errors_total", "Actions that failed.", ld(&rs->action_errors));
    counter(f, "twinhub_predictions_total", "Model predictions stored.", ld(&rs->predictions));
    counter(f, "twinhub_predictions_skipped_total", "Predictions skipped: inputs missing.",
            ld(&rs->predictions_skipped));
    counter(f, "twinhub_predictions_scored_total",
            "Predictions compared with their target's value.", ld(&rs->scored));
    counter(f, "twinhub_model_learn_steps_total", "Online learning steps.", ld(&rs->learn_steps));
    counter(f, "twinhub_rules_reloads_total", "Rules files loaded again.", ld(&rs->reloads));
    counter(f, "twinhub_rules_reload_failures_total", "Rules files that failed to load again.",
            ld(&rs->reload_failures));
    rules_metrics(f, src->rules);

    /* dispatch */
    struct hub_dispatch_stats *ds = &src->rules->dispatch;
    counter(f, "twinhub_dispatch_opened_total", "Demands opened (a dispatch's rule fired).",
            ld(&ds->opened));
    counter(f, "twinhub_dispatch_assigned_total", "Demands given a resource.", ld(&ds->assigned));
    counter(f, "twinhub_dispatch_completed_total", "Assignments the resource reported done.",
            ld(&ds->completed));
    counter(f, "twinhub_dispatch_returned_total",
            "Assignments handed back (resource offline, command failed or expired).",
            ld(&ds->returned));
    counter(f, "twinhub_dispatch_released_total",
            "Assignments ended because their demand ended first.", ld(&ds->released));
    counter(f, "twinhub_dispatch_decisions_total", "Assignment problems solved.",
            ld(&ds->decisions));
    counter(f, "twinhub_dispatch_greedy_decisions_total",
            "Decisions with more open demands than max_demands (the rest assigned greedily).",
            ld(&ds->greedy_decisions));
    counter(f, "twinhub_dispatch_solver_failures_total",
            "Decisions the solver failed on (assigned greedily).", ld(&ds->solver_failures));
    counter(f, "twinhub_dispatch_compared_decisions_total",
            "Decisions whose nearest-free baseline served the same priority (cost compared).",
            ld(&ds->compared));
    head(f, "twinhub_dispatch_cost_total", "counter",
         "Total cost of the assignments of the compared decisions.");
    fprintf(f, "twinhub_dispatch_cost_total %.17g\n",
            atomic_load_explicit(&ds->cost, memory_order_relaxed));
    head(f, "twinhub_dispatch_greedy_cost_total", "counter",
         "What the nearest-free baseline (by priority, then age) would have cost on the same "
         "decisions.");
    fprintf(f, "twinhub_dispatch_greedy_cost_total %.17g\n",
            atomic_load_explicit(&ds->greedy_cost, memory_order_relaxed));
    histogram(f, "twinhub_dispatch_wait_seconds", "From a demand opening to its assignment.",
              &ds->wait);
    histogram(f, "twinhub_dispatch_decision_seconds",
              "One decision: reading, evaluating and solving.", &ds->solve);

    process_metrics(f);
    return ferror(f) ? -EIO : 0;
}
