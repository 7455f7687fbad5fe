/* fuzz_rules.c: the rules engine's parsers on arbitrary bytes. The first byte chooses:
 *   even: the input (after that byte) is a rules file, loaded with rules_set_parse; a file that
 *         loads is then run, through an in-memory host, over a small twin for a few changes and
 *         timer passes;
 *   3:    the input (after that byte and a second one choosing the model) is a stored model
 *         record (learn.c) of a fixed set's linear regressor that learns, or classifier with a
 *         target (the committed fixtures of tests/data/models); its definition hash is patched
 *         in so that the rest is reached. It is scored against a target and predicted with;
 *   other odd: the input is one expression, compiled and, when it compiles, evaluated against
 *         a fixed twin with a fake history.
 * Invariants:
 *   - a rejected file is -EINVAL with at least one error, every error line naming the file;
 *     a rejected expression is -EINVAL with "COL: reason", COL within the text (+1);
 *   - a loaded set finds every one of its rules by name, in order;
 *   - evaluation returns 0 and never yields a NaN number or an unknown type;
 *   - the engine's runs return 0 and report wake times after `now` (or none); transitions
 *     change state, periodic runs (every:) do not and are published only with an event action;
 *   - a model record, whatever its bytes, is scored and predicted with (0, finite values); a
 *     record either call writes reads back, belongs to the set and has a sane score.
 */
#include "fuzz.h"
#include "rules.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static msgpack_zone zone;
static bool ready;
static struct twin_doc doc;

static msgpack_object json(const char *text)
{
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    msgpack_object o;
    char err[TWIN_ERR_LEN];
    FUZZ_CHECK(twin_input_decode(text, strlen(text), &lim, &zone, &o, err) == 0, "%s", err);
    return o;
}

static void setup(void)
{
    if (ready)
        return;
    msgpack_zone_init(&zone, 4096);
    doc = (struct twin_doc){.id = "ecg-0001", .id_len = 8, .version = 3, .connected = true};
    doc.reported = json("{\"heart_rate\": 130, \"spo2\": 92.5, \"mode\": \"run\", "
                        "\"v\": {\"a\": 1, \"b\": [1, 2]}, \"ecg\": [1, 2, 3]}");
    doc.meta_reported = json("{\"heart_rate\": 1000, \"spo2\": 1000, \"mode\": 900, "
                             "\"v\": {\"a\": 800, \"b\": 700}, \"ecg\": 1000}");
    doc.desired = json("{\"sample_hz\": 50}");
    doc.meta_desired = json("{\"sample_hz\": 500}");
    doc.delta.type = doc.predicted.type = MSGPACK_OBJECT_NIL;
    ready = true;
}

static int history(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                   void *cb_ctx)
{
    (void)ctx;
    (void)path;
    for (int i = 0; i < (int)(len % 7); i++)
        if (since <= 1000 + 100 * i)
            cb(cb_ctx, 1000 + 100 * i, (double)(i * 13 % 5) - 1.5);
    return 0;
}

static void check_value(const struct rules_value *v)
{
    FUZZ_CHECK(v->type <= RULES_OTHER, "type %d", v->type);
    FUZZ_CHECK(v->type != RULES_NUM || !isnan(v->n), "a NaN number left the evaluator");
}

/* ---------------------------------------------------------------------------------------------
 * An in-memory host: a handful of records
 * ------------------------------------------------------------------------------------------ */

#define RECS 32
static struct {
    char rule[RULES_NAME_MAX + 1];
    unsigned char buf[RULES_STATE_LEN];
    bool used;
} recs[RECS];

static int find(const char *rule, size_t len)
{
    for (int i = 0; i < RECS; i++)
        if (recs[i].used && strlen(recs[i].rule) == len && !memcmp(recs[i].rule, rule, len))
            return i;
    return -1;
}

static int h_get(void *ctx, const char *rule, size_t len, void *buf)
{
    (void)ctx;
    int i = find(rule, len);
    if (i < 0)
        return -ENOENT;
    memcpy(buf, recs[i].buf, RULES_STATE_LEN);
    return 0;
}

static int h_put(void *ctx, const char *rule, size_t len, const void *buf)
{
    (void)ctx;
    FUZZ_CHECK(len > 0 && len <= RULES_NAME_MAX, "rule name of %zu bytes", len);
    int i = find(rule, len);
    for (int k = 0; i < 0 && k < RECS; k++)
        if (!recs[k].used)
            i = k;
    if (i < 0)
        return 0; /* full: forget it (the engine copes with a missing record) */
    recs[i].used = true;
    memcpy(recs[i].rule, rule, len);
    recs[i].rule[len] = '\0';
    memcpy(recs[i].buf, buf, RULES_STATE_LEN);
    return 0;
}

static int h_del(void *ctx, const char *rule, size_t len)
{
    (void)ctx;
    int i = find(rule, len);
    if (i < 0)
        return -ENOENT;
    recs[i].used = false;
    return 0;
}

static int h_list(void *ctx, int (*cb)(void *, const char *, size_t, const void *, size_t),
                  void *cb_ctx)
{
    (void)ctx;
    for (int i = 0; i < RECS; i++)
        if (recs[i].used) {
            int rc = cb(cb_ctx, recs[i].rule, strlen(recs[i].rule), recs[i].buf, RULES_STATE_LEN);
            if (rc)
                return rc;
        }
    return 0;
}

static int h_action(void *ctx, const struct rules_fire *f, const struct rules_action *a)
{
    (void)ctx;
    FUZZ_CHECK(a->kind <= RULES_ACT_PREDICT, "action kind %d", a->kind);
    FUZZ_CHECK(f->rule && f->rule[0], "a transition without a rule name");
    return 0;
}

static int h_transition(void *ctx, const struct rules_fire *f)
{
    (void)ctx;
    /* a periodic run (every:) stays where it is; a transition never does */
    FUZZ_CHECK((f->from != f->to) != f->periodic, "from %d to %d, periodic %d", f->from, f->to,
               f->periodic);
    FUZZ_CHECK(!f->periodic || (f->fields && strcmp(f->event, "periodic") == 0),
               "a periodic run published without an event action, or as '%s'", f->event);
    FUZZ_CHECK(f->n_values <= RULES_VALUES_MAX, "%u values", f->n_values);
    for (unsigned i = 0; i < f->n_values; i++)
        check_value(&f->values[i].v);
    return 0;
}

static void run_file(const char *text, size_t len)
{
    struct rules_set *rs = NULL;
    struct rules_errors errs = {0};
    int rc = rules_set_parse("fuzz.yaml", text, len, ".", NULL, &rs, &errs);
    if (rc < 0) {
        FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM, "rules_set_parse returned %d", rc);
        if (rc == -EINVAL) {
            FUZZ_CHECK(errs.count > 0 && errs.text, "rejected without an error");
            for (const char *p = errs.text; *p; p = strchr(p, '\n') + 1) {
                FUZZ_CHECK(strncmp(p, "fuzz.yaml", 9) == 0, "error not naming the file: %s", p);
                FUZZ_CHECK(strchr(p, '\n'), "error line without a newline");
            }
        }
        rules_errors_free(&errs);
        return;
    }
    rules_errors_free(&errs);
    unsigned n = rules_set_count(rs);
    for (unsigned i = 0; i < n; i++) {
        const char *name = rules_set_name(rs, i);
        FUZZ_CHECK(rules_set_find(rs, name, strlen(name)) == (int)i, "rule %s not found", name);
    }
    memset(recs, 0, sizeof(recs));
    struct rules_scratch *sc = rules_scratch_new();
    FUZZ_CHECK(sc, "no memory");
    struct rules_changes ch;
    struct rules_twin tw = {.doc = &doc, .changes = &ch, .history = history};
    struct rules_host h = {.state_get = h_get, .state_put = h_put, .state_del = h_del,
                           .state_list = h_list, .action = h_action, .transition = h_transition};
    static const char *const paths[] = {"reported.heart_rate", "desired.sample_hz", "connected",
                                        "reported.v.a", "predicted.m"};
    for (int step = 0; step < 6; step++) {
        struct rules_run_result res;
        tw.now = 1000 + step * 700;
        rules_changes_reset(&ch);
        if (step % 2 == 0) {
            for (int k = 0; k <= step / 2; k++)
                rules_changes_add(&ch, paths[(step + k) % 5], strlen(paths[(step + k) % 5]));
            rc = rules_run_change(rs, sc, &tw, &h, &res);
        } else {
            rc = rules_run_timer(rs, sc, &tw, &h, &res);
        }
        FUZZ_CHECK(rc == 0, "run returned %d", rc);
        FUZZ_CHECK(res.wake > tw.now || res.wake == INT64_MAX || step % 2 == 1,
                   "wake %lld not after now %lld", (long long)res.wake, (long long)tw.now);
    }
    rules_scratch_free(sc);
    rules_set_free(rs);
}

static void run_expr(const char *text, size_t len)
{
    struct rules_expr *e = NULL;
    char err[RULES_ERR_LEN] = "";
    int rc = rules_expr_compile(text, len, &e, err);
    if (rc < 0) {
        FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM, "compile returned %d", rc);
        char *end;
        unsigned long col = strtoul(err, &end, 10);
        FUZZ_CHECK(rc == -ENOMEM || (col >= 1 && col <= len + 1 && end[0] == ':'),
                   "error without a column in the text: %s", err);
        return;
    }
    struct rules_changes ch;
    rules_changes_reset(&ch);
    rules_changes_add(&ch, "reported.heart_rate", 19);
    struct rules_twin tw = {.doc = &doc, .now = 5000, .changes = &ch, .history = history};
    struct rules_value v;
    int64_t wake = INT64_MAX;
    FUZZ_CHECK(rules_expr_eval(e, &tw, &v, &wake) == 0, "eval failed");
    check_value(&v);
    FUZZ_CHECK(wake > tw.now, "wake %lld not after now", (long long)wake);
    rules_expr_free(e);
}

/* ---------------------------------------------------------------------------------------------
 * Model records
 * ------------------------------------------------------------------------------------------ */

static struct rules_set *models;

static void check_record(const struct rules_model_record *rec, const char *name)
{
    struct rules_model_score s;
    FUZZ_CHECK(rec->len > 0 && rec->len <= RULES_MODEL_STATE_MAX, "record of %zu bytes",
               rec->len);
    FUZZ_CHECK(rules_model_record_score(rec->buf, rec->len, &s) == 0, "a written record is bad");
    FUZZ_CHECK(rules_model_record_current(models, name, strlen(name), rec->buf, rec->len),
               "a written record is not the set's");
    FUZZ_CHECK(s.correct <= s.scored && s.pending <= RULES_MODEL_PENDING_MAX &&
                   isfinite(s.sum_abs) && isfinite(s.sum_sq),
               "score out of range");
}

static void run_record(const uint8_t *data, size_t size)
{
    static unsigned char buf[RULES_MODEL_STATE_MAX];
    static unsigned char first[RULES_MODEL_STATE_MAX];
    if (!models) {
        static const char text[] =
            "models:\n"
            "  lin:\n    file: " FUZZ_MODELS "/linear.twm\n"
            "    inputs: [reported.heart_rate, reported.spo2, reported.v.a]\n"
            "    learn: {target: reported.heart_rate, rate: 0.01, horizon: 1s}\n"
            "  cls:\n    file: " FUZZ_MODELS "/logistic.twm\n"
            "    inputs: [reported.heart_rate, reported.spo2, reported.v.a]\n"
            "    target: reported.mode\n";
        struct rules_errors errs = {0};
        int rc = rules_set_parse("fuzz.yaml", text, sizeof(text) - 1, NULL, NULL, &models, &errs);
        FUZZ_CHECK(rc == 0, "the fixed models do not load: %s", errs.text ? errs.text : "");
        rules_errors_free(&errs);
    }
    if (size < 1)
        return;
    unsigned i = data[0] & 1;
    const char *name = rules_set_model_name(models, i);
    struct rules_model_record rec = {.buf = buf, .len = size - 1};
    if (rec.len > RULES_MODEL_STATE_MAX)
        return;
    memcpy(buf, data + 1, rec.len);
    /* the definition hash, from a record the set writes itself */
    struct rules_model_record fresh = {.buf = first};
    struct rules_prediction p;
    struct rules_twin tw = {.doc = &doc, .now = 5000};
    FUZZ_CHECK(rules_model_predict(models, i, &tw, &fresh, &p) == 0, "predict failed");
    if (rec.len >= 16)
        memcpy(buf + 8, first + 8, 8);
    for (int step = 0; step < 2; step++) {
        tw.now = step ? 4000 : INT64_MAX - 5;
        FUZZ_CHECK(rules_model_score(models, i, &tw, &rec, NULL) == 0, "score failed");
        if (rec.changed)
            check_record(&rec, name);
    }
    FUZZ_CHECK(rules_model_predict(models, i, &tw, &rec, &p) == 0, "predict failed");
    FUZZ_CHECK(isfinite(p.values[0]) || p.info->classifier, "a prediction that is not finite");
    check_record(&rec, name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size == 0)
        return 0;
    if (data[0] == 3)
        run_record(data + 1, size - 1);
    else if (data[0] & 1)
        run_expr((const char *)data + 1, size - 1);
    else
        run_file((const char *)data + 1, size - 1);
    return 0;
}
