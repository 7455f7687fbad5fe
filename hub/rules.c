/* rules (the hub's side): loads the rules file and swaps it on reload (SIGHUP, or the file
 * changed on disk), runs the rules inside the write transaction of every committed change
 * (telemetry, device status, desired/set) and in the main loop's timer pass (for deadlines,
 * absence, every: periods: each twin's one wake time in LMDB), and carries out
 * their actions through the twins library in that same transaction: desired state, commands,
 * rule state and wake times commit with the change that caused them, and what they publish
 * waits in the caller's outlist until the commit. What a rule means is rules/'s business.
 *
 * Threads: hub_rules_on_change runs on Paho's receive thread (ingest's rules_run);
 * hub_rules_timer, hub_rules_reload and hub_rules_poll on the main thread (its own rules_run).
 * hr->lock guards hr->set: runs hold it shared for one twin, a reload holds it exclusive only
 * to swap the pointer (never while it holds a store lock, so no order problem with the store's
 * write lock).
 *
 * The counters of each rule and model (/metrics: fired, predictions, scores) live in arrays
 * swapped with the set, indexed like it: runs add to them with relaxed atomics under the shared
 * lock, hub_rules_sample copies them under it for a scrape. A reload carries them over, under
 * the exclusive lock, to every rule and model of the new file with the same name, redefined or
 * not, so an operator's series go on across SIGHUP (a redefined model's error sums mix the two
 * definitions: rate() over a window after the reload shows the new one alone); a rule or model
 * that is gone loses its series, and one that comes back later starts at 0. Names come from the
 * rules file only, so the series are bounded by it (rules.max_rules, max_models), never by
 * devices. Like the other rule counters they count what a transaction did as it ran: one run
 * again after the map grew (rare) counts twice. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hub.h"
#include "log.h"

#define TIMER_BATCH 100    /* twins per write transaction of the timer pass */
#define SWEEP_BATCH 10000 /* stale records deleted per transaction after a reload */

/* ---------------------------------------------------------------------------------------------
 * The host: what the engine asks of the store for one twin
 * ------------------------------------------------------------------------------------------ */

struct host {
    struct hub_rules *hr;
    const struct rules_set *set; /* the set this run holds */
    struct hub_rule_stats *rule_stats; /* and its counters */
    struct hub_model_stats *model_stats;
    struct rules_run *rr;
    struct twin_txn *txn;
    const char *id;
    size_t id_len;
    struct twin_doc doc;
    int64_t now;
    struct outlist *ol;
    unsigned flags; /* PUB_* the twin needs after the commit */
    char *err;
};

static int h_state_get(void *ctx, const char *rule, size_t len, void *buf)
{
    struct host *h = ctx;
    unsigned char tmp[TWIN_RULE_STATE_MAX];
    size_t n;
    int rc = twin_rule_state_get(h->txn, h->id, h->id_len, rule, len, tmp, &n, h->err);
    if (rc == -EBADMSG || (rc == 0 && n != RULES_STATE_LEN && n != RULES_STATE_V1_LEN))
        return -ENOENT; /* a damaged record starts over; the next write replaces it */
    if (rc == 0) {
        /* a record from before every: is shorter; the engine reads it zero-padded */
        memset(buf, 0, RULES_STATE_LEN);
        memcpy(buf, tmp, n);
    }
    return rc;
}

static int h_state_put(void *ctx, const char *rule, size_t len, const void *buf)
{
    struct host *h = ctx;
    return twin_rule_state_put(h->txn, h->id, h->id_len, rule, len, buf, RULES_STATE_LEN, h->err);
}

static int h_state_del(void *ctx, const char *rule, size_t len)
{
    struct host *h = ctx;
    return twin_rule_state_del(h->txn, h->id, h->id_len, rule, len, h->err);
}

struct list_walk {
    int (*cb)(void *, const char *, size_t, const void *, size_t);
    void *ctx;
};

static int list_one(void *ctx, const char *id, size_t id_len, const char *rule, size_t rule_len,
                    const void *buf, size_t len)
{
    struct list_walk *w = ctx;
    (void)id;
    (void)id_len;
    return w->cb(w->ctx, rule, rule_len, buf, len);
}

static int h_state_list(void *ctx, int (*cb)(void *, const char *, size_t, const void *, size_t),
                        void *cb_ctx)
{
    struct host *h = ctx;
    struct list_walk w = {cb, cb_ctx};
    return twin_rule_state_list(h->txn, h->id, h->id_len, list_one, &w, h->err);
}

static int h_history(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                     void *cb_ctx)
{
    struct host *h = ctx;
    return twin_history_read(h->txn, h->id, h->id_len, path, len, since, cb, cb_ctx, h->err);
}

/* An action the store refused (a patch it will not take, a command too large): the rule's
 * problem, not the twin's. Logged and counted; the transaction goes on untouched. */
static void refused(struct host *h, const struct rules_fire *f, const char *what, const char *why)
{
    atomic_fetch_add(&h->hr->stats.action_errors, 1);
    log_warn_limited("rule action refused", "rule=%s id=%.*s action=%s reason=\"%s\"", f->rule,
             (int)h->id_len, h->id, what, why);
}

static int act_desired(struct host *h, const struct rules_fire *f, const struct rules_action *a)
{
    struct twin_desired_result res;
    int rc = twin_desired_apply(h->txn, h->id, h->id_len, &a->args, TWIN_VERSION_ANY, h->now, &res,
                                h->err);
    if (rc == -EINVAL || rc == -E2BIG) {
        refused(h, f, "desired", h->err);
        return 0;
    }
    if (rc < 0)
        return rc;
    h->flags |= PUB_STATE | (res.delta_changed ? PUB_DESIRED : 0);
    rules_changes_add_patch(h->rr->tw.changes, "desired", &a->args);
    rules_changes_add(h->rr->tw.changes, "delta", 5);
    h->doc = res.doc; /* the rules after this one read the twin as it is now */
    return 0;
}

static int act_command(struct host *h, const struct rules_fire *f, const struct rules_action *a)
{
    struct twin_command c;
    int64_t expires = a->expires_ms ? h->now + a->expires_ms : 0;
    const msgpack_object *args = a->args.type == MSGPACK_OBJECT_NIL ? NULL : &a->args;
    int rc = twin_command_add(h->txn, h->id, h->id_len, a->cmd, a->cmd_len, args, expires, h->now,
                              &c, commands_on_event, h->ol, h->err);
    if (rc == -EINVAL || rc == -E2BIG || rc == -ENOENT) {
        refused(h, f, "command", h->err);
        return 0;
    }
    if (rc < 0)
        return rc;
    /* to the device now when it is connected; else queued until it comes online */
    if (h->doc.connected)
        return commands_send_one(h->txn, h->id, h->id_len, c.id, h->now, h->ol, h->err);
    return 0;
}

/* The twin's record of model i into h->rr->rec (len 0: none, or the model has no target). */
static int record_get(struct host *h, unsigned i)
{
    struct rules_model_record *rec = &h->rr->rec;
    const char *name = rules_set_model_name(h->set, i);
    size_t dummy;
    rec->len = 0;
    rec->changed = false;
    if (!rules_set_model_target(h->set, i, &dummy))
        return 0;
    int rc = twin_model_state_get(h->txn, h->id, h->id_len, name, strlen(name), rec->buf,
                                  RULES_MODEL_STATE_MAX, &rec->len, h->err);
    if (rc == -ENOENT || rc == -EBADMSG) { /* a damaged record starts over */
        rec->len = 0;
        return 0;
    }
    return rc;
}

static int record_put(struct host *h, unsigned i)
{
    const struct rules_model_record *rec = &h->rr->rec;
    const char *name = rules_set_model_name(h->set, i);
    if (!rec->changed)
        return 0;
    return twin_model_state_put(h->txn, h->id, h->id_len, name, strlen(name), rec->buf, rec->len,
                                h->err);
}

/* Stores the map packed in sb as predicted.<name> (a change of its own: version +1); h->doc
 * becomes the twin as stored, for the rules after this. -E2BIG / -EINVAL: the store refused
 * it (h->doc unchanged). */
static int predicted_put(struct host *h, const char *name, const msgpack_sbuffer *sb)
{
    msgpack_zone *z = twin_txn_zone(h->txn);
    char *bytes = sb->size ? msgpack_zone_malloc(z, sb->size) : NULL;
    msgpack_object value;
    size_t off = 0;
    if (!bytes)
        return -ENOMEM;
    memcpy(bytes, sb->data, sb->size);
    if (msgpack_unpack(bytes, sb->size, &off, z, &value) != MSGPACK_UNPACK_SUCCESS)
        return -ENOMEM;
    return twin_predicted_set(h->txn, h->id, h->id_len, name, strlen(name), &value, &h->doc,
                              h->err);
}

/* Runs the model, stores predicted.<model> in the twin (a change of its own: version +1) and
 * publishes twins/{id}/predictions after the commit. Inputs that are missing skip it. A model
 * with a target keeps the prediction in the twin's record until the target's value comes. */
static int act_predict(struct host *h, const struct rules_fire *f, const struct rules_action *a)
{
    struct rules_prediction p;
    const char *name = rules_set_model_name(h->set, a->model);
    int rc = record_get(h, a->model);
    if (rc < 0)
        return rc;
    rc = rules_model_predict(h->set, a->model, &h->rr->tw, &h->rr->rec, &p);
    if (rc == -ENODATA) {
        atomic_fetch_add(&h->hr->stats.predictions_skipped, 1);
        log_debug("prediction skipped: an input is missing", "rule=%s id=%.*s model=%s", f->rule,
                  (int)h->id_len, h->id, name);
        return 0;
    }
    if (rc < 0)
        return rc;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint64_t from = h->doc.version;
    out_pack_prediction(&pk, NULL, &p, h->now, from);
    rc = predicted_put(h, name, &sb);
    msgpack_sbuffer_destroy(&sb);
    if (rc == -E2BIG || rc == -EINVAL) {
        refused(h, f, "predict", h->err);
        return 0;
    }
    /* only a prediction the twin shows waits for its target */
    if (rc < 0 || (rc = record_put(h, a->model)) < 0)
        return rc;
    atomic_fetch_add(&h->hr->stats.predictions, 1);
    atomic_fetch_add_explicit(&h->model_stats[a->model].predictions, 1, memory_order_relaxed);
    h->flags |= PUB_STATE;
    char path[RULES_NAME_MAX + 16];
    int n = snprintf(path, sizeof(path), "predicted.%s", name);
    rules_changes_add(h->rr->tw.changes, path, (size_t)n);
    return out_prediction(h->ol, h->id, h->id_len, name, &p, h->now, from);
}

/* predicted.<model> with its score keys replaced by s's; the rules reading them run. */
static int store_score(struct host *h, unsigned i, const struct rules_model_score *s)
{
    const char *name = rules_set_model_name(h->set, i);
    const msgpack_object *old = NULL;
    if (h->doc.predicted.type == MSGPACK_OBJECT_MAP)
        for (uint32_t k = 0; k < h->doc.predicted.via.map.size; k++)
            if (hub_key_is(&h->doc.predicted.via.map.ptr[k].key, name))
                old = &h->doc.predicted.via.map.ptr[k].val;
    if (!old || old->type != MSGPACK_OBJECT_MAP)
        return 0; /* nothing to show the score in */
    uint32_t keep = 0;
    for (uint32_t k = 0; k < old->via.map.size; k++)
        keep += !out_is_score_key(&old->via.map.ptr[k].key);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, keep + out_score_keys(s));
    for (uint32_t k = 0; k < old->via.map.size; k++)
        if (!out_is_score_key(&old->via.map.ptr[k].key)) {
            msgpack_pack_object(&pk, old->via.map.ptr[k].key);
            msgpack_pack_object(&pk, old->via.map.ptr[k].val);
        }
    out_pack_score(&pk, s);
    int rc = predicted_put(h, name, &sb);
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0)
        return rc;
    h->flags |= PUB_STATE;
    char path[RULES_NAME_MAX + 16];
    int n = snprintf(path, sizeof(path), "predicted.%s", name);
    rules_changes_add(h->rr->tw.changes, path, (size_t)n);
    return 0;
}

static void add_double(_Atomic double *a, double d)
{
    double old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, old + d, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

/* What one scoring added to a twin's score (`before` -> `s`), into the counters. */
static void count_score(struct host *h, unsigned i, const struct rules_model_score *before,
                        const struct rules_model_score *s)
{
    struct hub_model_stats *ms = &h->model_stats[i];
    struct rules_model_score b = *before;
    if (s->scored < b.scored || s->updates < b.updates)
        b = (struct rules_model_score){0}; /* started over (a current record never does) */
    atomic_fetch_add(&h->hr->stats.scored, s->scored - b.scored);
    atomic_fetch_add(&h->hr->stats.learn_steps, s->updates - b.updates);
    if (s->scored == b.scored)
        return;
    atomic_store_explicit(&ms->kind, s->classifier ? HUB_MODEL_CLASSIFIER : HUB_MODEL_REGRESSOR,
                          memory_order_relaxed);
    if (s->classifier) {
        atomic_fetch_add_explicit(&ms->correct, s->correct - b.correct, memory_order_relaxed);
    } else {
        /* the twin's sums grow by this scoring's errors; never below 0 by rounding */
        double da = s->sum_abs - b.sum_abs, dq = s->sum_sq - b.sum_sq;
        add_double(&ms->sum_abs, da > 0 ? da : 0);
        add_double(&ms->sum_sq, dq > 0 ? dq : 0);
    }
    atomic_fetch_add_explicit(&ms->scored, s->scored - b.scored, memory_order_relaxed);
}

/* Before the rules of a change: each model whose target the change wrote scores the twin's
 * predictions that were waiting for it (and learns from them). */
static int score_targets(struct host *h)
{
    unsigned n = rules_set_model_count(h->set);
    for (unsigned i = 0; i < n; i++) {
        size_t len;
        const char *target = rules_set_model_target(h->set, i, &len);
        if (!target || !rules_changes_touch(h->rr->tw.changes, target, len))
            continue;
        struct rules_model_score before, s;
        int rc = record_get(h, i);
        if (rc < 0)
            return rc;
        if (!h->rr->rec.len || rules_model_record_score(h->rr->rec.buf, h->rr->rec.len, &before))
            continue; /* nothing waits (a damaged record starts over at the next prediction) */
        if ((rc = rules_model_score(h->set, i, &h->rr->tw, &h->rr->rec, &s)) < 0)
            return rc;
        if (!h->rr->rec.changed)
            continue;
        /* a changed record was current, so `before` is its score */
        count_score(h, i, &before, &s);
        if ((rc = record_put(h, i)) < 0)
            return rc;
        rc = store_score(h, i, &s);
        if (rc == -E2BIG || rc == -EINVAL) { /* the twin can't take it: the score is kept */
            atomic_fetch_add(&h->hr->stats.action_errors, 1);
            log_warn_limited("model score not shown in the twin", "id=%.*s model=%s reason=\"%s\"",
                     (int)h->id_len, h->id, rules_set_model_name(h->set, i), h->err);
        } else if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int h_action(void *ctx, const struct rules_fire *f, const struct rules_action *a)
{
    struct host *h = ctx;
    atomic_fetch_add(&h->hr->stats.actions, 1);
    switch (a->kind) {
    case RULES_ACT_DESIRED: return act_desired(h, f, a);
    case RULES_ACT_COMMAND: return act_command(h, f, a);
    case RULES_ACT_PREDICT: return act_predict(h, f, a);
    default: return 0;
    }
}

static int h_transition(void *ctx, const struct rules_fire *f)
{
    struct host *h = ctx;
    if (f->periodic) {
        /* an every: run with an event action: not a transition, not counted as a firing, and
         * too frequent for the info log */
        log_debug("rule", "rule=%s id=%.*s state=%s", f->rule, (int)h->id_len, h->id, f->event);
        return out_event_rule(h->ol, h->id, h->id_len, f);
    }
    if (f->to == RULES_FIRING) {
        int i = rules_set_find(h->set, f->rule, strlen(f->rule));
        if (i >= 0)
            atomic_fetch_add_explicit(&h->rule_stats[i].fired, 1, memory_order_relaxed);
    }
    log_debug("rule", "rule=%s id=%.*s state=%s", f->rule, (int)h->id_len, h->id, f->event);
    return out_event_rule(h->ol, h->id, h->id_len, f);
}

static const struct rules_host host_cbs = {
    .state_get = h_state_get,
    .state_put = h_state_put,
    .state_del = h_state_del,
    .state_list = h_state_list,
    .action = h_action,
    .transition = h_transition,
};

/* ---------------------------------------------------------------------------------------------
 * Runs
 * ------------------------------------------------------------------------------------------ */

int rules_run_init(struct rules_run *rr)
{
    memset(rr, 0, sizeof(*rr));
    rr->sc = rules_scratch_new();
    rr->tw.changes = &rr->changes;
    rr->rec.buf = malloc(RULES_MODEL_STATE_MAX);
    if (!rr->sc || !rr->rec.buf) {
        rules_run_cleanup(rr);
        return -ENOMEM;
    }
    return 0;
}

void rules_run_cleanup(struct rules_run *rr)
{
    rules_scratch_free(rr->sc);
    free(rr->rec.buf);
    rr->sc = NULL;
    rr->rec.buf = NULL;
}

/* The top-level keys of a batch reading, but its ts. */
static void hub_rules_changes_add_keys(struct rules_changes *c, const msgpack_object *reading)
{
    char path[TWIN_PATH_MAX + 16];
    if (reading->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < reading->via.map.size; i++) {
        const msgpack_object *k = &reading->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size > TWIN_KEY_MAX ||
            (k->via.str.size == 2 && !memcmp(k->via.str.ptr, "ts", 2)))
            continue;
        int len = snprintf(path, sizeof(path), "reported.%.*s", (int)k->via.str.size,
                           k->via.str.ptr);
        rules_changes_add(c, path, (size_t)len);
    }
}

void hub_rules_changes_telemetry(struct rules_changes *c, const msgpack_object *telemetry)
{
    char path[TWIN_PATH_MAX + 16];
    rules_changes_reset(c);
    if (telemetry->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < telemetry->via.map.size; i++) {
        const msgpack_object_kv *kv = &telemetry->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size > TWIN_KEY_MAX)
            continue;
        const char *k = kv->key.via.str.ptr;
        uint32_t n = kv->key.via.str.size;
        if ((n == 3 && !memcmp(k, "seq", 3)) || (n == 2 && !memcmp(k, "ts", 2)) ||
            (n == 4 && !memcmp(k, "boot", 4)))
            continue; /* not merged into reported */
        if (n == 5 && !memcmp(k, "batch", 5) && kv->val.type == MSGPACK_OBJECT_ARRAY) {
            /* the readings: the keys each one writes */
            for (uint32_t j = 0; j < kv->val.via.array.size; j++)
                hub_rules_changes_add_keys(c, &kv->val.via.array.ptr[j]);
            continue;
        }
        int len = snprintf(path, sizeof(path), "reported.%.*s", (int)n, k);
        rules_changes_add(c, path, (size_t)len);
    }
}

/* Runs (change or timer) for twin `id` with the set held shared; sets the wake time. */
static int run_twin(struct hub_rules *hr, struct rules_run *rr, struct twin_txn *txn,
                    const char *id, size_t id_len, const struct twin_doc *doc, int64_t now,
                    bool timer, struct outlist *ol, unsigned *flags, char *err)
{
    struct host h = {.hr = hr, .rr = rr, .txn = txn, .id = id, .id_len = id_len, .now = now,
                     .ol = ol, .err = err};
    struct rules_host x = host_cbs;
    struct rules_run_result res;
    int rc = 0;
    if (doc)
        h.doc = *doc;
    else
        rc = twin_get(txn, id, id_len, &h.doc, err);
    if (rc == -ENOENT)
        return timer ? twin_rule_wake_set(txn, id, id_len, INT64_MAX, err) : 0;
    if (rc < 0)
        return rc;
    x.ctx = &h;
    rr->tw.doc = &h.doc;
    rr->tw.now = now;
    rr->tw.history = h_history;
    rr->tw.history_ctx = &h;
    pthread_rwlock_rdlock(&hr->lock);
    h.set = hr->set;
    h.rule_stats = hr->rule_stats;
    h.model_stats = hr->model_stats;
    if (!h.set)
        rc = 0;
    else if (timer)
        rc = rules_run_timer(h.set, rr->sc, &rr->tw, &x, &res);
    else if ((rc = score_targets(&h)) == 0)
        rc = rules_run_change(h.set, rr->sc, &rr->tw, &x, &res);
    /* dispatch reads the rule states this run wrote, and the twin as its actions left it */
    if (rc == 0 && h.set)
        rc = hub_dispatch_twin(h.set, &hr->dispatch, txn, id, id_len, &h.doc, now, ol, err);
    pthread_rwlock_unlock(&hr->lock);
    if (rc < 0 || !h.set)
        return rc;
    atomic_fetch_add(&hr->stats.evaluated, res.evaluated);
    atomic_fetch_add(&hr->stats.transitions, res.transitions);
    *flags |= h.flags;
    /* a change only knows the wakes of the rules it ran: it keeps an earlier one (a spare
     * timer run costs little); the timer knows them all */
    if (!timer)
        return res.wake == INT64_MAX ? 0 : twin_rule_wake_lower(txn, id, id_len, res.wake, err);
    /* never spin on one twin within a millisecond */
    return twin_rule_wake_set(txn, id, id_len, res.wake <= now ? now + 1 : res.wake, err);
}

bool hub_rules_active(struct hub_rules *hr)
{
    /* run_twin looks again under the lock */
    return hr && __atomic_load_n(&hr->set, __ATOMIC_ACQUIRE);
}

int hub_rules_sample(struct hub_rules *hr, struct hub_rule_sample **rules, unsigned *n_rules,
                     struct hub_model_sample **models, unsigned *n_models)
{
    *rules = NULL;
    *models = NULL;
    *n_rules = *n_models = 0;
    pthread_rwlock_rdlock(&hr->lock);
    const struct rules_set *set = hr->set;
    unsigned nr = set ? rules_set_count(set) : 0, nm = set ? rules_set_model_count(set) : 0;
    struct hub_rule_sample *r = nr ? malloc(nr * sizeof(*r)) : NULL;
    struct hub_model_sample *m = nm ? malloc(nm * sizeof(*m)) : NULL;
    if ((nr && !r) || (nm && !m)) {
        pthread_rwlock_unlock(&hr->lock);
        free(r);
        free(m);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < nr; i++) {
        snprintf(r[i].name, sizeof(r[i].name), "%s", rules_set_name(set, i));
        r[i].fired = atomic_load_explicit(&hr->rule_stats[i].fired, memory_order_relaxed);
    }
    for (unsigned i = 0; i < nm; i++) {
        const struct hub_model_stats *ms = &hr->model_stats[i];
        size_t len;
        snprintf(m[i].name, sizeof(m[i].name), "%s", rules_set_model_name(set, i));
        m[i].has_target = rules_set_model_target(set, i, &len) != NULL;
        m[i].kind = atomic_load_explicit(&ms->kind, memory_order_relaxed);
        m[i].predictions = atomic_load_explicit(&ms->predictions, memory_order_relaxed);
        m[i].scored = atomic_load_explicit(&ms->scored, memory_order_relaxed);
        m[i].correct = atomic_load_explicit(&ms->correct, memory_order_relaxed);
        m[i].sum_abs = atomic_load_explicit(&ms->sum_abs, memory_order_relaxed);
        m[i].sum_sq = atomic_load_explicit(&ms->sum_sq, memory_order_relaxed);
    }
    pthread_rwlock_unlock(&hr->lock);
    *rules = r;
    *models = m;
    *n_rules = nr;
    *n_models = nm;
    return 0;
}

int hub_rules_on_change(struct hub_rules *hr, struct rules_run *rr, struct twin_txn *txn,
                        const char *id, size_t id_len, const struct twin_doc *doc, int64_t now,
                        struct outlist *ol, unsigned *flags, char *err)
{
    if (!hub_rules_active(hr))
        return 0;
    return run_twin(hr, rr, txn, id, id_len, doc, now, false, ol, flags, err);
}

/* ---------------------------------------------------------------------------------------------
 * The timer pass (main thread)
 * ------------------------------------------------------------------------------------------ */

struct due_twin {
    char id[TWIN_ID_MAX];
    size_t len;
    unsigned flags;
};

struct timer_pass {
    struct hub_rules *hr;
    struct rules_run *rr;
    struct twin_txn *txn;
    struct outlist *ol;
    int64_t now;
    struct due_twin due[TIMER_BATCH];
    unsigned n;
    char *err;
};

static int timer_one(void *ctx, const char *id, size_t id_len, int64_t at)
{
    struct timer_pass *t = ctx;
    struct due_twin *d = &t->due[t->n++];
    (void)at;
    memcpy(d->id, id, id_len);
    d->len = id_len;
    d->flags = 0;
    rules_changes_reset(&t->rr->changes);
    return run_twin(t->hr, t->rr, t->txn, id, id_len, NULL, t->now, true, t->ol, &d->flags, t->err);
}

static int timer_fn(struct twin_txn *txn, void *ctx)
{
    struct timer_pass *t = ctx;
    t->txn = txn;
    t->n = 0;
    outlist_start(t->ol, txn);
    return twin_rule_wake_due(txn, t->now, TIMER_BATCH, timer_one, t, t->err);
}

/* Clears the wake of the twin the pass stopped at (t->due[t->n - 1]). */
static int unwake_fn(struct twin_txn *txn, void *ctx)
{
    struct timer_pass *t = ctx;
    const struct due_twin *d = &t->due[t->n - 1];
    return twin_rule_wake_set(txn, d->id, d->len, INT64_MAX, t->err);
}

int hub_rules_timer(struct hub_rules *hr, struct rules_run *rr, struct twin_store *store,
                    struct publisher *pub, struct outlist *ol, int64_t now, char *err)
{
    struct timer_pass *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    *t = (struct timer_pass){.hr = hr, .rr = rr, .ol = ol, .now = now, .err = err};
    int rc;
    do {
        rc = twin_store_write(store, timer_fn, t, err);
        if (rc == -EBADMSG && t->n) {
            /* a damaged twin would stop every timer behind it, pass after pass: its rules
             * lose their timer (they run again at its next change); the others go on */
            const struct due_twin *d = &t->due[t->n - 1];
            log_error("stored twin unreadable; its rule timer is dropped", "id=%.*s err=\"%s\"",
                      (int)d->len, d->id, err);
            if ((rc = twin_store_write(store, unwake_fn, t, err)) < 0)
                break;
            t->n = TIMER_BATCH; /* go round again */
            continue;
        }
        if (rc < 0) {
            outlist_reset(ol); /* the aborted transaction's events */
            break;
        }
        outlist_flush(ol, pub);
        for (unsigned i = 0; i < t->n; i++)
            if (t->due[i].flags && publisher_twin(pub, t->due[i].id, t->due[i].len,
                                                  t->due[i].flags) < 0)
                log_warn_limited("publication postponed to the next restart", "id=%.*s",
                         (int)t->due[i].len, t->due[i].id);
    } while (t->n == TIMER_BATCH);
    free(t);
    return rc;
}

int64_t hub_rules_next_due(struct twin_store *store)
{
    struct twin_txn *txn;
    char err[TWIN_ERR_LEN];
    int64_t at = INT64_MAX;
    if (twin_store_read_begin(store, &txn, err) < 0)
        return INT64_MAX;
    if (twin_rule_wake_next(txn, &at, err) < 0)
        at = INT64_MAX;
    twin_store_read_end(txn);
    return at;
}

/* ---------------------------------------------------------------------------------------------
 * Loading and reloading (main thread)
 * ------------------------------------------------------------------------------------------ */

/* Logs each line of errs. */
static void log_errors(const struct rules_errors *errs)
{
    const char *p = errs->text;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char q[RULES_ERR_LEN + 300];
        log_error("rules file error", "err=%s", log_quote(q, sizeof(q), p, n));
        p = nl ? nl + 1 : p + n;
    }
}

static int load(struct hub_rules *hr, const char *path, struct rules_set **out,
                struct rules_errors *errs)
{
    memset(errs, 0, sizeof(*errs));
    return rules_set_load(path, &hr->opt, out, errs);
}

/* The counters of a set about to be swapped in, and where each of its rules and models sits in
 * the running set (-1: not there), found before the swap so the exclusive lock only copies. */
struct stats_swap {
    struct hub_rule_stats *rules;
    struct hub_model_stats *models;
    int *rule_from, *model_from;
};

static int model_index(const struct rules_set *rs, const char *name)
{
    unsigned n = rs ? rules_set_model_count(rs) : 0;
    for (unsigned i = 0; i < n; i++)
        if (strcmp(rules_set_model_name(rs, i), name) == 0)
            return (int)i;
    return -1;
}

static void stats_swap_free(struct stats_swap *sw)
{
    free(sw->rules);
    free(sw->models);
    free(sw->rule_from);
    free(sw->model_from);
    memset(sw, 0, sizeof(*sw));
}

/* Zeroed counters for `next` (NULL: none) and their places in `old` (the running set; only the
 * main thread swaps it, so it reads it unlocked). Returns 0 or -ENOMEM (sw empty). */
static int stats_swap_init(struct stats_swap *sw, const struct rules_set *old,
                           const struct rules_set *next)
{
    unsigned nr = next ? rules_set_count(next) : 0, nm = next ? rules_set_model_count(next) : 0;
    memset(sw, 0, sizeof(*sw));
    if ((nr && (!(sw->rules = calloc(nr, sizeof(*sw->rules))) ||
                !(sw->rule_from = malloc(nr * sizeof(int))))) ||
        (nm && (!(sw->models = calloc(nm, sizeof(*sw->models))) ||
                !(sw->model_from = malloc(nm * sizeof(int)))))) {
        stats_swap_free(sw);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < nr; i++) {
        const char *name = rules_set_name(next, i);
        sw->rule_from[i] = old ? rules_set_find(old, name, strlen(name)) : -1;
    }
    for (unsigned i = 0; i < nm; i++)
        sw->model_from[i] = model_index(old, rules_set_model_name(next, i));
    return 0;
}

/* Under the exclusive lock: carries the running counters over to sw's, swaps them and `next`
 * in, and leaves the old counters in sw to free. */
static void stats_swap_in(struct hub_rules *hr, struct stats_swap *sw, struct rules_set *next)
{
    unsigned nr = next ? rules_set_count(next) : 0, nm = next ? rules_set_model_count(next) : 0;
    for (unsigned i = 0; i < nr; i++)
        if (sw->rule_from[i] >= 0)
            atomic_store_explicit(
                &sw->rules[i].fired,
                atomic_load_explicit(&hr->rule_stats[sw->rule_from[i]].fired, memory_order_relaxed),
                memory_order_relaxed);
    for (unsigned i = 0; i < nm; i++) {
        if (sw->model_from[i] < 0)
            continue;
        struct hub_model_stats *from = &hr->model_stats[sw->model_from[i]], *to = &sw->models[i];
        atomic_store(&to->predictions, atomic_load(&from->predictions));
        atomic_store(&to->scored, atomic_load(&from->scored));
        atomic_store(&to->correct, atomic_load(&from->correct));
        atomic_store(&to->sum_abs, atomic_load(&from->sum_abs));
        atomic_store(&to->sum_sq, atomic_load(&from->sum_sq));
        atomic_store(&to->kind, atomic_load(&from->kind));
    }
    struct hub_rule_stats *old_rules = hr->rule_stats;
    struct hub_model_stats *old_models = hr->model_stats;
    hr->rule_stats = sw->rules;
    hr->model_stats = sw->models;
    __atomic_store_n(&hr->set, next, __ATOMIC_RELEASE);
    sw->rules = old_rules;
    sw->models = old_models;
}

static void remember_file(struct hub_rules *hr)
{
    struct stat st;
    hr->have_st = stat(hr->path, &st) == 0;
    if (hr->have_st)
        hr->st = st;
}

/* The records a sweep walks: the rules' or the models'. */
struct sweep_kind {
    const char *what;
    int (*list)(struct twin_txn *, const char *, size_t, twin_records_cb, void *, char *);
    int (*del)(struct twin_txn *, const char *, size_t, const char *, size_t, char *);
    bool (*current)(const struct rules_set *, const char *, size_t, const void *, size_t);
};

static const struct sweep_kind sweep_kinds[] = {
    {"rules", twin_rule_state_list, twin_rule_state_del, rules_record_current},
    {"models", twin_model_state_list, twin_model_state_del, rules_model_record_current},
};

struct sweep {
    struct hub_rules *hr;
    const struct sweep_kind *kind;
    struct {
        char id[TWIN_ID_MAX];
        size_t id_len;
        char name[RULES_NAME_MAX];
        size_t name_len;
    } *stale;
    unsigned n;
    uint64_t deleted;
    char *err;
};

static int sweep_one(void *ctx, const char *id, size_t id_len, const char *name, size_t name_len,
                     const void *buf, size_t len)
{
    struct sweep *s = ctx;
    if (name_len > RULES_NAME_MAX || s->kind->current(s->hr->set, name, name_len, buf, len))
        return 0;
    memcpy(s->stale[s->n].id, id, id_len);
    s->stale[s->n].id_len = id_len;
    memcpy(s->stale[s->n].name, name, name_len);
    s->stale[s->n].name_len = name_len;
    return ++s->n == SWEEP_BATCH ? 1 : 0;
}

static int sweep_fn(struct twin_txn *txn, void *ctx)
{
    struct sweep *s = ctx;
    s->n = 0;
    int rc = s->kind->list(txn, NULL, 0, sweep_one, s, s->err);
    if (rc < 0)
        return rc;
    for (unsigned i = 0; i < s->n; i++)
        if ((rc = s->kind->del(txn, s->stale[i].id, s->stale[i].id_len, s->stale[i].name,
                               s->stale[i].name_len, s->err)) < 0 &&
            rc != -ENOENT)
            return rc;
    s->deleted += s->n;
    return 0;
}

/* Deletes the records of rules and models that are gone or were redefined, so they cannot
 * come back (and twinctl stats does not count them). */
static void sweep(struct hub_rules *hr, struct twin_store *store)
{
    char err[TWIN_ERR_LEN] = "";
    struct sweep s = {.hr = hr, .err = err};
    s.stale = malloc(sizeof(*s.stale) * SWEEP_BATCH);
    if (!s.stale)
        return;
    pthread_rwlock_rdlock(&hr->lock);
    for (size_t k = 0; k < sizeof(sweep_kinds) / sizeof(sweep_kinds[0]) && hr->set; k++) {
        int rc;
        s.kind = &sweep_kinds[k];
        s.deleted = 0;
        do
            rc = twin_store_write(store, sweep_fn, &s, err);
        while (rc == 0 && s.n == SWEEP_BATCH);
        if (rc < 0)
            log_error("cannot clear the state of removed rules or models", "of=%s err=\"%s\"",
                      s.kind->what, err);
        else if (s.deleted)
            log_info("state of removed or changed rules or models cleared", "of=%s records=%llu",
                     s.kind->what, (unsigned long long)s.deleted);
    }
    pthread_rwlock_unlock(&hr->lock);
    free(s.stale);
}

int hub_rules_open(struct hub_rules *hr, const char *path, struct report *rep, int64_t tick_ms,
                   struct twin_store *store)
{
    memset(hr, 0, sizeof(*hr));
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* a reload must not wait behind a stream of runs */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&hr->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    rules_options_init(&hr->opt);
    if (tick_ms > 0)
        hr->opt.tick_ms = tick_ms;
    hr->report = rep;
    if (!path || !path[0])
        return 0;
    snprintf(hr->path, sizeof(hr->path), "%s", path);
    struct rules_errors errs;
    int rc = load(hr, path, &hr->set, &errs);
    struct stats_swap sw;
    if (rc == 0 && (rc = stats_swap_init(&sw, NULL, hr->set)) < 0) {
        log_error("cannot load the rules file", "file=%s err=\"no memory\"", path);
        rules_set_free(hr->set);
        hr->set = NULL;
    } else if (rc == 0) {
        hr->rule_stats = sw.rules;
        hr->model_stats = sw.models;
        sw.rules = NULL;
        sw.models = NULL;
        stats_swap_free(&sw);
    }
    if (rc < 0)
        log_errors(&errs);
    else
        log_info("rules loaded", "file=%s rules=%u", path, rules_set_count(hr->set));
    rules_errors_free(&errs);
    remember_file(hr);
    if (rc == 0)
        sweep(hr, store);
    return rc;
}

int hub_rules_reload(struct hub_rules *hr, const char *path, struct twin_store *store)
{
    struct rules_set *next = NULL;
    struct rules_errors errs;
    if (!path || !path[0]) {
        if (!hr->set)
            return 0;
        hr->path[0] = '\0';
    } else {
        snprintf(hr->path, sizeof(hr->path), "%s", path);
        int rc = load(hr, path, &next, &errs);
        remember_file(hr);
        if (rc < 0) {
            atomic_fetch_add(&hr->stats.reload_failures, 1);
            log_errors(&errs);
            log_error("rules reload failed; the previous rules keep running",
                      "file=%s errors=%u", path, errs.count);
            /* hub/errors gets the first error (they are all in the log) */
            const char *text = errs.text ? errs.text : "cannot load";
            const char *nl = strchr(text, '\n');
            char first[RULES_ERR_LEN + 64];
            snprintf(first, sizeof(first), "%.*s%s", (int)(nl ? nl - text : (long)strlen(text)),
                     text, errs.count > 1 ? " (and more: see the hub's log)" : "");
            if (hr->report)
                report_reject(hr->report, REPORT_RULES, path, strlen(path), first);
            rules_errors_free(&errs);
            return rc;
        }
        rules_errors_free(&errs);
    }
    struct stats_swap sw;
    if (stats_swap_init(&sw, hr->set, next) < 0) {
        atomic_fetch_add(&hr->stats.reload_failures, 1);
        log_error("rules reload failed; the previous rules keep running",
                  "file=%s err=\"no memory\"", path ? path : "");
        rules_set_free(next);
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&hr->lock);
    struct rules_set *old = hr->set;
    stats_swap_in(hr, &sw, next);
    pthread_rwlock_unlock(&hr->lock);
    stats_swap_free(&sw);
    rules_set_free(old);
    atomic_fetch_add(&hr->stats.reloads, 1);
    log_info("rules reloaded", "file=%s rules=%u", path ? path : "",
             next ? rules_set_count(next) : 0);
    if (next)
        sweep(hr, store);
    return 0;
}

void hub_rules_poll(struct hub_rules *hr, struct twin_store *store)
{
    struct stat st;
    if (!hr->path[0])
        return;
    bool have = stat(hr->path, &st) == 0;
    if (have == hr->have_st &&
        (!have || (st.st_mtim.tv_sec == hr->st.st_mtim.tv_sec &&
                   st.st_mtim.tv_nsec == hr->st.st_mtim.tv_nsec && st.st_size == hr->st.st_size &&
                   st.st_ino == hr->st.st_ino)))
        return;
    char path[sizeof(hr->path)];
    memcpy(path, hr->path, sizeof(path));
    log_info("rules file changed on disk; reloading", "file=%s", path);
    hub_rules_reload(hr, path, store);
}

void hub_rules_close(struct hub_rules *hr)
{
    rules_set_free(hr->set);
    hr->set = NULL;
    free(hr->rule_stats);
    free(hr->model_stats);
    hr->rule_stats = NULL;
    hr->model_stats = NULL;
    pthread_rwlock_destroy(&hr->lock);
}

int hub_rules_dispatch_deleted(struct hub_rules *hr, struct twin_txn *txn, const char *id,
                               size_t id_len, int64_t now, struct outlist *ol, char *err)
{
    if (!hub_rules_active(hr))
        return 0;
    pthread_rwlock_rdlock(&hr->lock);
    int rc = hub_dispatch_twin(hr->set, &hr->dispatch, txn, id, id_len, NULL, now, ol, err);
    pthread_rwlock_unlock(&hr->lock);
    return rc;
}

int hub_rules_dispatch_command(struct hub_rules *hr, struct twin_txn *txn,
                               const struct twin_command *c, int64_t now, struct outlist *ol,
                               char *err)
{
    if (!hub_rules_active(hr))
        return 0;
    pthread_rwlock_rdlock(&hr->lock);
    int rc = hub_dispatch_command(hr->set, &hr->dispatch, txn, c, now, ol, err);
    pthread_rwlock_unlock(&hr->lock);
    return rc;
}
