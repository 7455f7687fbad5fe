/* twinhub: the daemon. Reads the configuration, opens the store, wires the bridge's message
 * callback to ingest and ingest to the publisher, and runs the main loop on the main thread:
 * signals (SIGTERM/SIGINT drain and stop, SIGHUP reloads), the background store sync of
 * `store.sync: os`, and a periodic statistics line. Every signal is blocked in every thread
 * and taken here with sigtimedwait. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "hub.h"
#include "log.h"

#define STATS_EVERY_MS 60000
#define DRAIN_MS 5000
#define MAX_OVERRIDES 64
/* What may wait in the publisher (see hub.h): hub/errors reports, replies and events (lost
 * when dropped), commands to devices (kept in the store when dropped: sent again when the
 * device next comes online), and all their payloads together. */
#define COMMAND_TIMER_SLACK_MS 10
#define REPORTS_WAITING 256
#define READS_WAITING 64 /* hub/query and history requests queued for the reads thread */
#define COMMANDS_WAITING 65536
#define MESSAGES_MAX_BYTES (256u << 20)

static const char usage[] =
    "usage: twinhub [-c FILE] [options]\n"
    "\n"
    "  -c, --config FILE      YAML configuration (see deploy/twinhub.yaml)\n"
    "      --broker URL       broker.url (tcp://host:port, ssl://host:port)\n"
    "      --db PATH          store.path (LMDB directory)\n"
    "      --rules FILE       rules.file\n"
    "      --log-level L      log.level: error | warn | info | debug\n"
    "      --set KEY=VALUE    any configuration key (repeatable), e.g. --set store.sync=commit\n"
    "      --print-config     print the effective configuration and exit\n"
    "  -h, --help             this text\n"
    "  -V, --version          the version\n"
    "\n"
    "Precedence: defaults < file < TWINHUB_<KEY> variables (TWINHUB_STORE_SYNC, ...) < flags.\n"
    "Signals: SIGTERM/SIGINT drain and stop; SIGHUP re-reads log.level, limits.*, history.*,\n"
    "errors.*, commands.* and rules.file.\n";

struct args {
    const char *file;
    const char *keys[MAX_OVERRIDES];
    const char *values[MAX_OVERRIDES];
    char *owned[MAX_OVERRIDES];
    int n;
    bool print;
};

/* Builds the configuration: defaults, file, environment, flags. */
static int load_config(const struct args *a, struct config *c, char *err)
{
    config_defaults(c);
    int rc;
    if (a->file && (rc = config_load_file(c, a->file, err)) < 0)
        return rc;
    if ((rc = config_load_env(c, NULL, err)) < 0)
        return rc;
    for (int i = 0; i < a->n; i++) {
        if ((rc = config_set(c, a->keys[i], a->values[i], err)) < 0)
            return rc;
    }
    return 0;
}

static int add_override(struct args *a, const char *key, const char *value)
{
    if (a->n == MAX_OVERRIDES) {
        fprintf(stderr, "twinhub: too many overrides (at most %d)\n", MAX_OVERRIDES);
        return -1;
    }
    a->keys[a->n] = key;
    a->values[a->n] = value;
    a->n++;
    return 0;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},    {"broker", required_argument, NULL, 'b'},
        {"db", required_argument, NULL, 'd'},        {"rules", required_argument, NULL, 'r'},
        {"log-level", required_argument, NULL, 'l'}, {"set", required_argument, NULL, 's'},
        {"print-config", no_argument, NULL, 'p'},    {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},         {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        int rc = 0;
        switch (o) {
        case 'c':
            a->file = optarg;
            break;
        case 'b':
            rc = add_override(a, "broker.url", optarg);
            break;
        case 'd':
            rc = add_override(a, "store.path", optarg);
            break;
        case 'r':
            rc = add_override(a, "rules.file", optarg);
            break;
        case 'l':
            rc = add_override(a, "log.level", optarg);
            break;
        case 's': {
            char *eq = strchr(optarg, '=');
            if (!eq) {
                fprintf(stderr, "twinhub: --set expects KEY=VALUE, got '%s'\n", optarg);
                return 2;
            }
            char *key = strndup(optarg, (size_t)(eq - optarg));
            if (!key)
                return 2;
            a->owned[a->n] = key;
            rc = add_override(a, key, eq + 1);
            break;
        }
        case 'p':
            a->print = true;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        case 'V':
            printf("twinhub %s\n", TWINHUB_VERSION);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
        if (rc < 0)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "twinhub: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return -1; /* go on */
}

/* Everything the daemon runs, in the order it is built (and torn down in reverse). */
/* What the hub subscribes to. */
static const enum bridge_topic_kind sub_kinds[] = {
    BRIDGE_T_TELEMETRY, BRIDGE_T_STATUS, BRIDGE_T_CMD_ACK, BRIDGE_T_SENML,
    BRIDGE_T_DESIRED_SET, BRIDGE_T_GET, BRIDGE_T_DELETE, BRIDGE_T_CMD_SEND,
    BRIDGE_T_HISTORY, BRIDGE_T_QUERY,
};
#define NSUBS (sizeof(sub_kinds) / sizeof(sub_kinds[0]))

struct hub {
    struct config cfg;
    struct bridge_topics topics;
    char sub[NSUBS][BRIDGE_TOPIC_MAX];
    char aws_sub[BRIDGE_AWS_FILTERS][BRIDGE_TOPIC_MAX]; /* aws.shadow: $aws/things/+/shadow/... */
    char status_topic[BRIDGE_TOPIC_MAX], errors_topic[BRIDGE_TOPIC_MAX];
    struct twin_store *store;
    struct ingest in;
    struct bridge_client *client;
    struct publisher *pub;
    struct report rep;
    struct outlist timer_out; /* the main loop's: events of expired commands, re-sends */
    struct hub_rules rules;
    struct rules_run timer_run; /* the main loop's rule runs */
    struct hub_health health;
    struct hub_http *http; /* NULL: http.listen "" */
    struct hub_stream *stream; /* what the HTTP stream serves; NULL: http.listen "" */
    struct reads *reads;       /* hub/query and twins/{id}/history */
};

/* systemd's notify protocol (sd_notify: nothing happens without $NOTIFY_SOCKET). Any thread.
 */
static void notify(const char *state)
{
    sd_notify(0, state);
}

static struct twin_limits limits_of(const struct config *c)
{
    struct twin_limits l = {c->max_payload, c->max_depth, c->max_keys};
    return l;
}

static void on_bridge_log(void *ctx, enum bridge_log_level level, const char *msg)
{
    (void)ctx;
    char q[BRIDGE_ERR_LEN + 16];
    log_write((enum log_level)level, "mqtt", "detail=%s",
              log_quote(q, sizeof(q), msg, strlen(msg)));
}

/* Paho's thread: the connection came up (subscribed) or went down. */
static void on_connection(void *ctx, bool up, const char *reason)
{
    struct ingest *in = ctx;
    struct hub *h = (struct hub *)(void *)((char *)in - offsetof(struct hub, in));
    char q[BRIDGE_ERR_LEN + 16], status[sizeof(h->cfg.broker_url) + 64];
    atomic_store(&h->health.connected, up);
    if (up) {
        log_info("connected to the broker", "subscribed=yes");
        publisher_wake(in->pub);
        snprintf(status, sizeof(status), "STATUS=serving: connected to %s", h->cfg.broker_url);
        notify(status);
        /* ready once subscribed: telemetry flows from here */
        if (atomic_fetch_add(&h->health.connects, 1) == 0)
            notify("READY=1");
    } else {
        log_warn("disconnected from the broker", "reason=%s",
                 log_quote(q, sizeof(q), reason ? reason : "", reason ? strlen(reason) : 0));
        snprintf(status, sizeof(status), "STATUS=disconnected from %s, reconnecting",
                 h->cfg.broker_url);
        notify(status);
    }
}

static void reload(const struct args *a, struct hub *h)
{
    struct config *cur = &h->cfg;
    struct config next;
    char err[CONFIG_ERR_LEN], restart[512] = "";
    if (load_config(a, &next, err) < 0) {
        char q[CONFIG_ERR_LEN + 16];
        log_error("reload failed; keeping the running configuration", "err=%s",
                  log_quote(q, sizeof(q), err, strlen(err)));
        return;
    }
    config_apply_reload(cur, &next, restart, sizeof(restart));
    log_set_level((enum log_level)cur->log_level);
    struct twin_limits lim = limits_of(cur);
    ingest_set_limits(&h->in, &lim);
    report_set_rate(&h->rep, cur->errors_rate, cur->errors_burst);
    twin_store_set_history_max(h->store, cur->history_max_points);
    twin_store_set_max_doc(h->store, cur->max_twin_size);
    twin_store_set_limits(h->store, cur->max_twins, (uint64_t)cur->max_clock_skew_s * 1000);
    twin_store_set_seq_restart(h->store, cur->seq_restart_after);
    twin_store_set_command_limits(h->store, cur->commands_max,
                                  (uint64_t)cur->command_retention_s * 1000);
    log_info("configuration reloaded", "restart_needed=\"%s\"", restart);
    /* rules.tick is read by the next load; SIGHUP always reloads the rules file */
    h->rules.opt.tick_ms = cur->rules_tick_ms;
    hub_rules_reload(&h->rules, cur->rules_path, h->store);
}

static void log_stats(struct hub *h)
{
    struct ingest *in = &h->in;
    struct report *rep = &h->rep;
    struct publisher_stats ps;
    publisher_stats(h->pub, &ps);
    uint64_t rejected = 0;
    for (int k = 0; k < REPORT_KINDS; k++)
        if (report_kind_rejects(k))
            rejected += atomic_load(&rep->count[k]);
    log_info("stats",
             "received=%llu applied=%llu duplicate=%llu stale=%llu restarts=%llu gaps=%llu "
             "missed=%llu "
             "retained=%llu rejected=%llu published=%llu "
             "coalesced=%llu publish_failed=%llu queued=%llu inflight=%llu reports_dropped=%llu "
             "status=%llu requests=%llu requests_rejected=%llu acks=%llu messages_sent=%llu "
             "messages_dropped=%llu commands_dropped=%llu",
             (unsigned long long)atomic_load(&in->stats.received),
             (unsigned long long)atomic_load(&in->stats.applied),
             (unsigned long long)atomic_load(&in->stats.duplicate),
             (unsigned long long)atomic_load(&in->stats.stale),
             (unsigned long long)(atomic_load(&in->stats.restarts[0]) +
                                  atomic_load(&in->stats.restarts[1]) +
                                  atomic_load(&in->stats.restarts[2])),
             (unsigned long long)atomic_load(&in->stats.gaps),
             (unsigned long long)atomic_load(&in->stats.missed),
             (unsigned long long)atomic_load(&in->stats.retained), (unsigned long long)rejected,
             (unsigned long long)ps.published, (unsigned long long)ps.coalesced,
             (unsigned long long)ps.failed, (unsigned long long)ps.queued,
             (unsigned long long)ps.inflight, (unsigned long long)ps.dropped[PUB_CLASS_REPORT],
             (unsigned long long)atomic_load(&in->stats.status),
             (unsigned long long)atomic_load(&in->stats.requests),
             (unsigned long long)atomic_load(&in->stats.requests_rejected),
             (unsigned long long)atomic_load(&in->stats.acks),
             (unsigned long long)(ps.sent[PUB_CLASS_REPLY] + ps.sent[PUB_CLASS_COMMAND]),
             (unsigned long long)ps.dropped[PUB_CLASS_REPLY],
             (unsigned long long)ps.dropped[PUB_CLASS_COMMAND]);
    if (!hub_rules_active(&h->rules))
        return;
    struct hub_rules_stats *rs = &h->rules.stats;
    log_info("rules stats",
             "evaluated=%llu transitions=%llu actions=%llu action_errors=%llu predictions=%llu "
             "predictions_skipped=%llu scored=%llu learn_steps=%llu reloads=%llu "
             "reload_failures=%llu",
             (unsigned long long)atomic_load(&rs->evaluated),
             (unsigned long long)atomic_load(&rs->transitions),
             (unsigned long long)atomic_load(&rs->actions),
             (unsigned long long)atomic_load(&rs->action_errors),
             (unsigned long long)atomic_load(&rs->predictions),
             (unsigned long long)atomic_load(&rs->predictions_skipped),
             (unsigned long long)atomic_load(&rs->scored),
             (unsigned long long)atomic_load(&rs->learn_steps),
             (unsigned long long)atomic_load(&rs->reloads),
             (unsigned long long)atomic_load(&rs->reload_failures));
}

/* When the command timer runs next (hub clock); INT64_MAX: nothing is due. Main thread. */
static int64_t next_due(struct hub *h)
{
    char err[TWIN_ERR_LEN];
    int64_t at;
    int rc = commands_next_due(h->store, &at, err);
    if (rc == 0)
        return at;
    if (rc != -ENOENT)
        log_error("cannot read the command deadlines", "err=\"%s\"", err);
    return INT64_MAX;
}

/* When the rules' timer runs next: the earliest wake time; INT64_MAX: none. Main thread. */
static int64_t next_wake(struct hub *h)
{
    return h->rules.set ? hub_rules_next_due(h->store) : INT64_MAX;
}

/* The rules' timer: `for` deadlines, absence, windows. Main thread. */
static void run_rule_timers(struct hub *h)
{
    char err[TWIN_ERR_LEN] = "";
    if (hub_rules_timer(&h->rules, &h->timer_run, h->store, h->pub, &h->timer_out, hub_now_ms(),
                        err) < 0)
        log_error("rule timer pass failed", "err=\"%s\"", err);
}

/* The command timer: expires what is due, an event for each. Main thread. */
static void expire_commands(struct hub *h)
{
    char err[TWIN_ERR_LEN];
    uint64_t n;
    if (commands_expire(h->store, &h->rules, h->pub, &h->timer_out, hub_now_ms(), &n, err) < 0)
        log_error("command expiry failed", "err=\"%s\"", err);
    else if (n)
        log_debug("commands expired", "count=%llu", (unsigned long long)n);
}

/* The systemd watchdog: WATCHDOG=1 every half period, but only while ingest makes progress
 * (a message stuck in its callback longer than http.stall withholds it, and systemd restarts
 * the hub). Main thread, every turn of the loop. */
static void watchdog(struct hub *h, uint64_t period_us, int64_t *last)
{
    int64_t now = hub_mono_ms();
    if (!period_us || now - *last < (int64_t)(period_us / 2000))
        return;
    struct hub_checks k;
    hub_health_check(&h->health, &h->in, now, &k);
    if (!k.ingest) {
        log_error("ingest stalled; withholding the watchdog", "stall_ms=%u", h->health.stall_ms);
        return;
    }
    notify("WATCHDOG=1");
    *last = now;
}

/* The main loop: returns when SIGTERM or SIGINT arrives. Commands expire within
 * COMMAND_TIMER_SLACK_MS of their deadline: the deadline is read again every round (a command
 * queued meanwhile may be due sooner), and a round lasts at most a second. */
static void serve(const struct args *a, struct hub *h)
{
    const struct config *cfg = &h->cfg;
    uint64_t wd_us = 0;
    int64_t wd_last = 0;
    if (sd_watchdog_enabled(0, &wd_us) <= 0)
        wd_us = 0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    int64_t last_sync = hub_mono_ms(), last_stats = last_sync;
    char err[TWIN_ERR_LEN];
    for (;;) {
        atomic_store(&h->health.main_beat, hub_mono_ms());
        watchdog(h, wd_us, &wd_last);
        unsigned tick = cfg->sync_interval_ms ? cfg->sync_interval_ms : 1000;
        if (tick > 1000)
            tick = 1000;
        /* each timer runs only when it is due; both deadlines are read once before and once
         * after */
        int64_t cmd = next_due(h), wake = next_wake(h), wall = hub_now_ms();
        if (cmd <= wall || wake <= wall) {
            if (cmd <= wall)
                expire_commands(h);
            if (wake <= wall)
                run_rule_timers(h);
            cmd = next_due(h);
            wake = next_wake(h);
            wall = hub_now_ms();
        }
        int64_t due = cmd < wake ? cmd : wake;
        if (due - wall < (int64_t)tick)
            tick = due - wall < COMMAND_TIMER_SLACK_MS ? COMMAND_TIMER_SLACK_MS
                                                       : (unsigned)(due - wall);
        struct timespec ts = {tick / 1000, (long)(tick % 1000) * 1000000};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            log_info("stopping", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
            atomic_store(&h->health.draining, true);
            notify("STOPPING=1\nSTATUS=stopping: draining the publisher");
            return;
        }
        if (sig == SIGHUP) {
            /* RELOADING=1 and READY=1 only once ready (subscribed): a reload before the first
             * connection keeps the unit activating */
            bool ready = atomic_load(&h->health.connects) > 0;
            notify(ready ? "RELOADING=1\nSTATUS=reloading the configuration and rules"
                         : "STATUS=reloading the configuration and rules");
            reload(a, h);
            if (!ready)
                notify("STATUS=reloaded, not connected yet");
            else
                notify(atomic_load(&h->health.connected)
                           ? "READY=1\nSTATUS=serving: reloaded"
                           : "READY=1\nSTATUS=reloaded, disconnected");
        } else {
            hub_rules_poll(&h->rules, h->store);
        }
        int64_t now = hub_mono_ms();
        if (!cfg->sync_commit && now - last_sync >= (int64_t)cfg->sync_interval_ms) {
            if (twin_store_sync(h->store, err) < 0)
                log_error("store sync failed", "err=\"%s\"", err);
            last_sync = now;
        }
        if (now - last_stats >= STATS_EVERY_MS) {
            log_stats(h);
            last_stats = now;
        }
        http_tick(h->http);
    }
}

static void client_options(struct hub *h, struct bridge_options *bo, const char **subs)
{
    const struct config *c = &h->cfg;
    bridge_options_init(bo);
    bo->url = c->broker_url;
    bo->client_id = c->client_id;
    bo->username = c->username[0] ? c->username : NULL;
    bo->password = c->password[0] ? c->password : NULL;
    bo->mqtt_version = c->mqtt_version;
    bo->session_expiry_s = c->session_expiry_s;
    bo->keepalive_s = c->keepalive_s;
    bo->reconnect_min_s = c->reconnect_min_s;
    bo->reconnect_max_s = c->reconnect_max_s;
    bo->max_inflight = c->publish_inflight;
    bo->will_topic = bo->birth_topic = h->status_topic;
    bo->will_payload = "offline";
    bo->will_len = 7;
    bo->birth_payload = "online";
    bo->birth_len = 6;
    bo->will_retained = bo->birth_retained = true;
    bo->will_qos = bo->birth_qos = 1;
    bo->tls.ca = c->tls_ca[0] ? c->tls_ca : NULL;
    bo->tls.cert = c->tls_cert[0] ? c->tls_cert : NULL;
    bo->tls.key = c->tls_key[0] ? c->tls_key : NULL;
    bo->tls.verify = c->tls_verify;
    for (size_t i = 0; i < NSUBS; i++)
        subs[i] = h->sub[i];
    bo->subscriptions = subs;
    bo->n_subscriptions = (int)NSUBS;
    /* `#` does not match $ topics: AWS IoT Device Shadow's are subscribed to one by one */
    for (int i = 0; c->aws_shadow && i < BRIDGE_AWS_FILTERS; i++)
        subs[bo->n_subscriptions++] = h->aws_sub[i];
    bo->sub_qos = 1;
    bo->on_message = ingest_on_message;
    bo->on_connection = on_connection;
    bo->on_log = on_bridge_log;
    bo->ctx = &h->in;
}

/* Builds and starts everything. On error, what was built is torn down and the reason logged. */
static int hub_open(struct hub *h)
{
    const struct config *c = &h->cfg;
    char terr[TWIN_ERR_LEN], berr[BRIDGE_ERR_LEN];
    int rc =
        bridge_topics_init(&h->topics, c->devices_prefix, c->twins_prefix, c->hub_prefix, berr);
    if (rc < 0) {
        log_error("bad topic prefix", "err=\"%s\"", berr);
        return rc;
    }
    for (size_t i = 0; i < NSUBS; i++)
        bridge_topic_filter(&h->topics, sub_kinds[i], h->sub[i], sizeof(h->sub[i]));
    bridge_topic_build(&h->topics, BRIDGE_T_HUB_STATUS, NULL, 0, h->status_topic,
                       sizeof(h->status_topic));
    bridge_topic_build(&h->topics, BRIDGE_T_HUB_ERRORS, NULL, 0, h->errors_topic,
                       sizeof(h->errors_topic));

    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    so.path = c->db_path;
    so.sync = c->sync_commit ? TWIN_SYNC_COMMIT : TWIN_SYNC_OS;
    so.map_size = c->map_size;
    so.max_map_size = c->max_map_size;
    so.history_max_points = c->history_max_points;
    so.max_doc_bytes = c->max_twin_size;
    so.writemap = c->writemap;
    so.max_twins = c->max_twins;
    so.max_clock_skew_ms = (uint64_t)c->max_clock_skew_s * 1000;
    so.seq_restart_after = c->seq_restart_after;
    struct twin_waveform waves[TWIN_WAVEFORMS_MAX];
    const char *ws = c->waveforms;
    char why[160];
    while (so.nwaveforms < TWIN_WAVEFORMS_MAX &&
           config_waveform_next(&ws, waves[so.nwaveforms].path, sizeof(waves[0].path),
                                &waves[so.nwaveforms].rate, why, sizeof(why)) > 0)
        waves[so.nwaveforms++].seconds = c->waveform_s;
    so.waveforms = waves;
    so.commands_max = c->commands_max;
    so.command_retention_ms = (uint64_t)c->command_retention_s * 1000;
    if ((rc = twin_store_open(&h->store, &so, terr)) < 0) {
        log_error("cannot open the store", "path=\"%s\" err=\"%s\"", c->db_path, terr);
        return rc;
    }

    if ((rc = hub_rules_open(&h->rules, c->rules_path, &h->rep, c->rules_tick_ms, h->store)) < 0) {
        log_error("cannot load the rules file; fix it or unset rules.file", "file=%s",
                  c->rules_path);
        goto fail_rules;
    }
    if ((rc = rules_run_init(&h->timer_run)) < 0) {
        log_error("cannot set up the rule timer", "err=\"no memory\"");
        goto fail_ingest;
    }
    struct twin_limits lim = limits_of(c);
    if ((rc = ingest_init(&h->in, h->store, NULL, &h->rep, &h->topics, &lim, c->publish_json)) <
        0) {
        log_error("cannot set up ingest", "err=\"no memory\"");
        goto fail_ingest;
    }
    h->in.rules = &h->rules;
    h->in.aws_shadow = c->aws_shadow;
    for (int i = 0; i < BRIDGE_AWS_FILTERS; i++)
        bridge_aws_filter(i, h->aws_sub[i], sizeof(h->aws_sub[i]));
    if (c->aws_shadow)
        log_info("AWS IoT Device Shadow mode", "topics=\"$aws/things/+/shadow/...\"");
    struct bridge_options bo;
    const char *subs[NSUBS + BRIDGE_AWS_FILTERS];
    client_options(h, &bo, subs);
    if ((rc = bridge_client_new(&h->client, &bo, berr)) < 0) {
        log_error("cannot create the MQTT client", "err=\"%s\"", berr);
        goto fail_client;
    }
    if (c->http_listen[0] &&
        (rc = stream_new(&h->stream, c->http_stream_buffer, c->http_stream_bytes)) < 0) {
        log_error("cannot set up the HTTP stream's buffer", "err=\"no memory\"");
        goto fail_publisher;
    }
    struct publisher_options po = {
        .stream = h->stream,
        .store = h->store,
        .bridge = h->client,
        .topics = &h->topics,
        .qos = c->publish_qos,
        .max_inflight = c->publish_inflight,
        .json = c->publish_json,
        .capacity = {[PUB_CLASS_REPORT] = REPORTS_WAITING,
                     [PUB_CLASS_REPLY] = c->publish_queued_events,
                     [PUB_CLASS_COMMAND] = COMMANDS_WAITING},
        .max_bytes = MESSAGES_MAX_BYTES,
        .aws_shadow = c->aws_shadow,
    };
    if ((rc = publisher_new(&h->pub, &po)) < 0) {
        log_error("cannot create the publisher", "err=\"no memory\"");
        goto fail_publisher;
    }
    h->in.pub = h->pub;
    h->in.out.max_stored = c->publish_stored_events;
    h->in.out.refused = publisher_refused(h->pub);
    query_limits_init(&h->in.query_limits);
    h->in.query_limits.max_limit = c->query_max_limit;
    h->in.query_limits.max_points = c->query_max_points;
    report_init(&h->rep, h->pub, h->errors_topic, c->publish_json, c->errors_rate, c->errors_burst);
    if ((rc = outlist_init(&h->timer_out, &h->topics, c->publish_json)) < 0) {
        log_error("cannot set up the command timer", "err=\"no memory\"");
        goto fail_start;
    }
    h->timer_out.cmd_counts = h->in.stats.commands; /* /metrics: commands by state */
    h->timer_out.max_stored = c->publish_stored_events;
    h->timer_out.refused = publisher_refused(h->pub);

    /* Whatever was committed but not acknowledged as published before the last stop. */
    if ((rc = publisher_recover(h->pub, terr)) < 0) {
        log_error("cannot read the outbox", "err=\"%s\"", terr);
        goto fail_start;
    }
    /* Commands that connected devices may not have received before the last stop. */
    uint64_t resent;
    if ((rc = commands_resend_connected(h->store, h->pub, &h->timer_out, &resent, terr)) < 0) {
        log_error("cannot re-send queued commands", "err=\"%s\"", terr);
        goto fail_start;
    }
    if (resent)
        log_info("queued commands sent again", "devices=%llu", (unsigned long long)resent);
    if ((rc = publisher_start(h->pub)) < 0) {
        log_error("cannot start the publisher", "err=%d", rc);
        goto fail_start;
    }
    if ((rc = reads_start(&h->reads, &h->in, READS_WAITING)) < 0) {
        log_error("cannot start the reads thread", "err=%d", rc);
        goto fail_start;
    }
    h->in.reads = h->reads;
    h->health.stall_ms = c->http_stall_ms;
    atomic_store(&h->health.main_beat, hub_mono_ms());
    if (c->http_listen[0]) {
        struct metrics_src ms = {&h->in, &h->rep, h->pub, &h->rules, h->store, &h->health};
        char herr[512];
        if ((rc = http_start(&h->http, c, &ms, h->stream, herr, sizeof(herr))) < 0) {
            log_error("cannot start the HTTP listener", "err=\"%s\"", herr);
            goto fail_start;
        }
        log_info("http listening", "listen=\"%s\" port=%u tls=%s auth=%s writes=%s dashboard=%s",
                 c->http_listen, http_port(h->http), c->http_tls_cert[0] ? "yes" : "no",
                 c->http_token_file[0] ? "bearer" : "none",
                 c->http_write_token_file[0] ? "token" : "off",
                 c->http_dashboard[0] ? "yes" : "no");
    }
    notify("STATUS=connecting to the broker");
    if ((rc = bridge_client_start(h->client, berr)) < 0) {
        log_error("cannot start the MQTT client", "err=\"%s\"", berr);
        goto fail_start;
    }
    return 0;

fail_start:
    http_stop(h->http);
    h->http = NULL;
    publisher_stop(h->pub);
    bridge_client_free(h->client);
    reads_stop(h->reads);
    h->reads = NULL;
    publisher_free(h->pub);
    stream_free(h->stream);
    h->stream = NULL;
    outlist_cleanup(&h->timer_out);
    report_cleanup(&h->rep);
    goto fail_client;
fail_publisher:
    bridge_client_free(h->client);
    stream_free(h->stream);
    h->stream = NULL;
fail_client:
    ingest_cleanup(&h->in);
fail_ingest:
    rules_run_cleanup(&h->timer_run);
    hub_rules_close(&h->rules);
fail_rules:
    twin_store_close(h->store);
    return rc;
}

/* Drains, says "offline", and tears everything down. */
static void hub_close(struct hub *h)
{
    char err[TWIN_ERR_LEN];
    if (publisher_drain(h->pub, DRAIN_MS) < 0)
        log_warn("drain timed out; the rest is published after the next start", "timeout_ms=%d",
                 DRAIN_MS);
    struct bridge_final fin = {h->status_topic, "offline", 7, true, 1};
    bridge_client_stop(h->client, &fin, 2000);
    publisher_stop(h->pub);
    bridge_client_free(h->client); /* cancels what is in flight; no callback runs after this */
    reads_stop(h->reads);
    h->reads = NULL;
    if (publisher_flush_acked(h->pub, err) < 0)
        log_error("cannot trim the outbox", "err=\"%s\"", err);
    log_stats(h);
    http_stop(h->http); /* it reads the publisher, the store and the rest */
    h->http = NULL;
    publisher_free(h->pub);
    stream_free(h->stream);
    h->stream = NULL;
    outlist_cleanup(&h->timer_out);
    report_cleanup(&h->rep);
    ingest_cleanup(&h->in);
    rules_run_cleanup(&h->timer_run);
    hub_rules_close(&h->rules);
    if (twin_store_sync(h->store, err) < 0)
        log_error("store sync failed", "err=\"%s\"", err);
    twin_store_close(h->store);
}

/* Runs the daemon with parsed arguments; returns the exit status. */
static int run(const struct args *a)
{
    static struct hub h;
    char err[CONFIG_ERR_LEN];
    if (load_config(a, &h.cfg, err) < 0) {
        fprintf(stderr, "twinhub: %s\n", err);
        return 2;
    }
    if (a->print) {
        config_print(&h.cfg, stdout);
        return 0;
    }
    log_set_level((enum log_level)h.cfg.log_level);

    /* Block the signals before any thread exists, so only sigtimedwait takes them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (hub_open(&h) < 0)
        return 1;
    log_info("started", "version=%s broker=%s db=\"%s\" sync=%s", TWINHUB_VERSION, h.cfg.broker_url,
             h.cfg.db_path, h.cfg.sync_commit ? "commit" : "os");
    serve(a, &h);
    hub_close(&h);
    log_info("stopped", "status=%d", 0);
    return 0;
}

int main(int argc, char **argv)
{
    struct args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc < 0)
        rc = run(&a);
    for (int i = 0; i < a.n; i++)
        free(a.owned[i]);
    return rc;
}
