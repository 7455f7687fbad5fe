/* test_rules.c: unit tests of the rules library through rules.h: expressions (parsing,
 * precedence, every function, windows over a fake history, missing fields, NaN, wake times),
 * compile errors with their columns, rules files (every load error with file:line:column,
 * ordering, loops), and the state machine on a fake clock with an in-memory host (for,
 * cooldown, absence, flapping, chains, definition changes, every: periods and their records).
 * No broker, no disk.
 * `test_rules NAME` runs one test. */
#include "rules.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static const char *current;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: [%s] ", __FILE__, __LINE__, current);                              \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        failures++;                                                                                \
    } while (0)
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            FAIL("CHECK failed: %s", #c);                                                          \
    } while (0)
#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            FAIL("%s is %lld, expected %lld", #a, a_, b_);                                         \
    } while (0)

/* ---------------------------------------------------------------------------------------------
 * A twin and a history to evaluate against
 * ------------------------------------------------------------------------------------------ */

static msgpack_zone zone;

static msgpack_object json(const char *text)
{
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    msgpack_object o;
    char err[TWIN_ERR_LEN];
    if (twin_input_decode(text, strlen(text), &lim, &zone, &o, err) < 0) {
        fprintf(stderr, "bad test JSON %s: %s\n", text, err);
        abort();
    }
    return o;
}

static struct twin_doc make_doc(const char *reported, const char *meta, const char *desired)
{
    struct twin_doc d = {.id = "ecg-001", .id_len = 7, .version = 7, .connected = true,
                         .last_seen = 5000, .created = 100};
    d.reported = json(reported);
    d.meta_reported = json(meta);
    d.desired = json(desired);
    d.meta_desired = json("{}");
    d.delta.type = d.predicted.type = MSGPACK_OBJECT_NIL;
    return d;
}

struct point {
    const char *path;
    int64_t ts;
    double v;
};

static const struct point hist[] = {
    {"hr", 1000, 60}, {"hr", 2000, 70}, {"hr", 3000, 80}, {"hr", 4000, 90}, {"flat", 3000, 5},
    {"flat", 3500, 5}, {"one", 3900, 1},
};

static int history(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                   void *cb_ctx)
{
    (void)ctx;
    for (size_t i = 0; i < sizeof(hist) / sizeof(hist[0]); i++)
        if (strlen(hist[i].path) == len && !memcmp(hist[i].path, path, len) && hist[i].ts >= since)
            cb(cb_ctx, hist[i].ts, hist[i].v);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Expressions
 * ------------------------------------------------------------------------------------------ */

enum want { W_NUM, W_TRUE, W_FALSE, W_NIL, W_STR };

static const struct ecase {
    const char *expr;
    enum want want;
    double num;
} ecases[] = {
    /* literals, precedence, associativity */
    {"1 + 2 * 3", W_NUM, 7},
    {"(1 + 2) * 3", W_NUM, 9},
    {"10 - 4 - 3", W_NUM, 3},
    {"2 * 3 % 4", W_NUM, 2},
    {"-2 * 3", W_NUM, -6},
    {"- -2", W_NUM, 2},
    {"7 / 2", W_NUM, 3.5},
    {"1.5e3", W_NUM, 1500},
    {"250ms + 2s + 1m + 1h", W_NUM, 250 + 2000 + 60000 + 3600000},
    {"1d", W_NUM, 86400000},
    {"true or false and false", W_TRUE, 0},
    {"(true or false) and false", W_FALSE, 0},
    {"not 1 > 2", W_TRUE, 0},
    {"not not true", W_TRUE, 0},
    {"1 < 2 and 2 <= 2 and 3 > 2 and 3 >= 3 and 1 == 1 and 1 != 2", W_TRUE, 0},
    {"nil == nil", W_TRUE, 0},
    {"'a' < 'b' and \"ab\" > 'a'", W_TRUE, 0},
    {"'it\\'s' == \"it's\"", W_TRUE, 0},
    {"true == true", W_TRUE, 0},
    /* paths */
    {"reported.heart_rate", W_NUM, 130},
    {"reported.vitals.spo2 < 94", W_TRUE, 0},
    {"reported.mode == 'run'", W_TRUE, 0},
    {"reported.`odd-key` == 3", W_TRUE, 0},
    {"reported.on", W_TRUE, 0},
    {"desired.sample_hz == 50", W_TRUE, 0},
    {"connected and version == 7 and id == 'ecg-001' and last_seen == 5000", W_TRUE, 0},
    {"created == 100", W_TRUE, 0},
    {"seq == nil", W_TRUE, 0},
    {"reported.vitals == nil", W_FALSE, 0},
    {"reported.vitals != nil", W_TRUE, 0},
    /* missing fields: a comparison is false, never an error */
    {"reported.nope > 1", W_FALSE, 0},
    {"reported.nope < 1", W_FALSE, 0},
    {"reported.nope == 1", W_FALSE, 0},
    {"reported.nope != 1", W_FALSE, 0},
    {"reported.nope == nil", W_TRUE, 0},
    {"reported.nope != nil", W_FALSE, 0},
    {"not (reported.nope > 1)", W_TRUE, 0},
    {"reported.nope + 1", W_NIL, 0},
    {"reported.nope and true", W_FALSE, 0},
    {"reported.nope or true", W_TRUE, 0},
    {"reported.heart_rate.deeper > 1", W_FALSE, 0},
    {"reported.mode + 1", W_NIL, 0},
    {"reported.mode > 1", W_FALSE, 0},
    {"reported.vitals > 1", W_FALSE, 0},
    /* division by zero and NaN */
    {"1 / 0", W_NIL, 0},
    {"1 / 0 > 0", W_FALSE, 0},
    {"5 % 0 == nil", W_TRUE, 0},
    {"5.5 % 2", W_NUM, 1.5},
    {"sqrt(-1)", W_NIL, 0},
    {"log(-1) == nil", W_TRUE, 0},
    {"log(0) < -1e308", W_TRUE, 0},
    {"reported.big * reported.big * reported.big > 1e308", W_TRUE, 0},
    /* functions */
    {"abs(-3)", W_NUM, 3},
    {"min(3, 1, 2)", W_NUM, 1},
    {"max(3, 1, 2)", W_NUM, 3},
    {"min(reported.heart_rate, 100)", W_NUM, 100},
    {"max(4)", W_NUM, 4},
    {"clamp(5, 0, 3)", W_NUM, 3},
    {"clamp(-5, 0, 3)", W_NUM, 0},
    {"clamp(2, 0, 3)", W_NUM, 2},
    {"clamp(1, 3, 0)", W_NIL, 0},
    {"sqrt(16)", W_NUM, 4},
    {"exp(0)", W_NUM, 1},
    {"log(1)", W_NUM, 0},
    {"round(2.5)", W_NUM, 3},
    {"round(-2.5)", W_NUM, -3},
    {"round(1.2345, 2)", W_NUM, 1.23},
    {"round(1.5, 0.5)", W_NIL, 0},
    {"abs(reported.nope)", W_NIL, 0},
    {"abs(reported.mode)", W_NIL, 0},
    /* windows: now is 4500; points hr 60@1000 70@2000 80@3000 90@4000 */
    {"avg(reported.hr, 10s)", W_NUM, 75},
    {"avg(reported.hr, 2s)", W_NUM, 85},
    {"min(reported.hr, 10s)", W_NUM, 60},
    {"max(reported.hr, 10s)", W_NUM, 90},
    {"sum(reported.hr, 10s)", W_NUM, 300},
    {"count(reported.hr, 10s)", W_NUM, 4},
    {"count(reported.hr, 1ms)", W_NUM, 0},
    {"sum(reported.hr, 1ms)", W_NUM, 0},
    {"avg(reported.hr, 1ms)", W_NIL, 0},
    {"stddev(reported.hr, 10s)", W_NUM, 11.180339887498949},
    {"rate(reported.hr, 10s)", W_NUM, 10},
    {"delta(reported.hr, 10s)", W_NUM, 30},
    {"delta(reported.one, 10s)", W_NIL, 0},
    {"rate(reported.one, 10s)", W_NIL, 0},
    {"zscore(reported.hr, 10s)", W_NUM, 1.3416407864998738},
    {"zscore(reported.flat, 10s)", W_NIL, 0},
    {"stddev(reported.one, 10s)", W_NUM, 0},
    {"avg(reported.nothing, 1h)", W_NIL, 0},
    /* age, changed, now: meta heart_rate 4000, ecg 1000, vitals.spo2 3000 */
    {"age(reported.heart_rate)", W_NUM, 500},
    {"age(reported.ecg) > 2s", W_TRUE, 0},
    {"age(reported.ecg) > 4s", W_FALSE, 0},
    {"2s < age(reported.ecg)", W_TRUE, 0},
    {"age(reported.vitals)", W_NUM, 1500},
    {"age(reported.nope) > 0", W_FALSE, 0},
    {"age(reported.nope) == nil", W_TRUE, 0},
    {"changed(reported.heart_rate)", W_TRUE, 0},
    {"changed(reported)", W_TRUE, 0},
    {"changed(reported.vitals.spo2)", W_FALSE, 0},
    {"changed(desired.sample_hz)", W_FALSE, 0},
    {"now()", W_NUM, 4500},
    {"now() - last_seen", W_NUM, -500},
};

static void eval_one(const struct ecase *c, const struct twin_doc *doc,
                     struct rules_changes *changes)
{
    struct rules_expr *e;
    char err[RULES_ERR_LEN];
    if (rules_expr_compile(c->expr, strlen(c->expr), &e, err) < 0) {
        FAIL("%s: does not compile: %s", c->expr, err);
        return;
    }
    struct rules_twin tw = {.doc = doc, .now = 4500, .changes = changes, .history = history};
    struct rules_value v;
    int64_t wake = INT64_MAX;
    CHECK_INT(rules_expr_eval(e, &tw, &v, &wake), 0);
    switch (c->want) {
    case W_NUM:
        if (v.type != RULES_NUM || fabs(v.n - c->num) > 1e-9 * fmax(1, fabs(c->num)))
            FAIL("%s: got type %d %.17g, expected %.17g", c->expr, v.type, v.n, c->num);
        break;
    case W_TRUE:
    case W_FALSE:
        if (v.type != RULES_BOOL || v.b != (c->want == W_TRUE))
            FAIL("%s: got type %d (%d), expected %s", c->expr, v.type, v.b,
                 c->want == W_TRUE ? "true" : "false");
        break;
    case W_NIL:
        if (v.type != RULES_NIL)
            FAIL("%s: got type %d (%g), expected nil", c->expr, v.type, v.n);
        break;
    case W_STR: break;
    }
    rules_expr_free(e);
}

static struct twin_doc sample_doc(void)
{
    return make_doc("{\"heart_rate\": 130, \"vitals\": {\"spo2\": 92}, \"mode\": \"run\", "
                    "\"odd-key\": 3, \"on\": true, \"ecg\": [1, 2], \"big\": 1e200}",
                    "{\"heart_rate\": 4000, \"ecg\": 1000, \"vitals\": {\"spo2\": 3000}, "
                    "\"mode\": 4000, \"odd-key\": 4000, \"on\": 4000, \"big\": 4000}",
                    "{\"sample_hz\": 50}");
}

static void test_expressions(void)
{
    struct twin_doc doc = sample_doc();
    struct rules_changes changes;
    rules_changes_reset(&changes);
    rules_changes_add(&changes, "reported.heart_rate", 19);
    for (size_t i = 0; i < sizeof(ecases) / sizeof(ecases[0]); i++)
        eval_one(&ecases[i], &doc, &changes);
}

/* When an expression says it may change with no new data. */
static void test_wake(void)
{
    static const struct {
        const char *expr;
        int64_t wake; /* INT64_MAX: none */
    } cases[] = {
        {"age(reported.ecg) > 5s", 6001},      /* false now (3500 ms); true from 1000+5000+1 */
        {"age(reported.ecg) >= 5s", 6000},
        {"age(reported.ecg) > 2s", INT64_MAX}, /* already true: stays so until ecg is written */
        {"age(reported.ecg) < 5s", 6000},      /* true now; false from 6000 */
        {"age(reported.ecg) <= 5s", 6001},
        {"age(reported.ecg) < 2s", INT64_MAX},
        {"5s < age(reported.ecg)", 6001},
        {"avg(reported.hr, 10s) > 0", 11001}, /* the oldest point, 1000, leaves at 11001 */
        {"reported.heart_rate > 100", INT64_MAX},
        {"now() > 0", 5500},                   /* the tick */
        {"age(reported.ecg) * 2 > 0", 5500},
    };
    struct twin_doc doc = sample_doc();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct rules_expr *e;
        char err[RULES_ERR_LEN];
        if (rules_expr_compile(cases[i].expr, strlen(cases[i].expr), &e, err) < 0) {
            FAIL("%s: %s", cases[i].expr, err);
            continue;
        }
        struct rules_twin tw = {.doc = &doc, .now = 4500, .history = history};
        struct rules_value v;
        int64_t wake = INT64_MAX;
        rules_expr_eval(e, &tw, &v, &wake);
        if (wake != cases[i].wake)
            FAIL("%s: wake %lld, expected %lld", cases[i].expr, (long long)wake,
                 (long long)cases[i].wake);
        rules_expr_free(e);
    }
}

static void test_compile_errors(void)
{
    static const struct {
        const char *expr;
        const char *err;
    } cases[] = {
        {"avgg(reported.hr, 5s) > 1", "1: unknown function 'avgg'; did you mean 'avg'?"},
        {"reportd.hr > 1", "1: unknown name 'reportd'; did you mean 'reported'?"},
        {"reported.hr >", "14: expected a value, found the end"},
        {"reported.hr = 1", "13: '=' is not an operator; compare with '=='"},
        {"reported.a && true", "12: '&' is not an operator; use 'and'"},
        {"1 < 2 < 3", "7: comparisons do not chain; write a < b and b < c"},
        {"'a' + 1", "1: '+' needs a number; this is a string"},
        {"reported.a + true", "14: '+' needs a number; this is true or false"},
        {"1 and true", "1: 'and' needs true or false; this is a number"},
        {"abs('x' == 'x')", "5: abs needs a number; this is true or false"},
        {"not 'x'", "5: 'not' needs true or false; this is a string"},
        {"avg(reported.hr, 60)", "18: avg needs a duration as its second argument, such as 60s"},
        {"avg(desired.x, 5s) > 1", "5: avg reads history, which is kept for reported values only: "
                                   "use a path such as reported.heart_rate"},
        {"avg(1, 5s)", "5: avg takes a path as its first argument, such as reported.heart_rate"},
        {"age(connected) > 1s", "5: age needs a path under reported or desired"},
        {"abs(1, 2)", "1: abs takes 1 argument, not 2"},
        {"avg(reported.hr, 366d) > 1", "18: a window is 1ms to 365d long"},
        {"avg(reported.hr, 0s) > 1", "18: a window is 1ms to 365d long"},
        {"clamp(1)", "1: clamp takes 3 arguments, not 1"},
        {"reported.x > 5kg", "15: unknown unit 'kg' (durations take ms, s, m, h or d)"},
        {"reported.x > nil", "12: > with nil is always false; test presence with == nil or != nil"},
        {"1 == 'a'", "3: compares a number with a string: always false"},
        {"connected.x", "10: 'connected' has nothing below it"},
        {"(1 + 2", "7: expected ')' to close '(', found the end"},
        {"1 2", "3: unexpected a number after the expression"},
        {"'open", "1: unterminated string"},
        {"", "1: empty expression"},
        {"reported.`` > 1", "10: empty quoted name"},
        {"reported.$x", "10: unexpected character '$'"},
        {"max(1,2,3,4,5,6,7,8,9)", "21: max takes at most 8 arguments"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct rules_expr *e = NULL;
        char err[RULES_ERR_LEN] = "";
        int rc = rules_expr_compile(cases[i].expr, strlen(cases[i].expr), &e, err);
        if (rc != -EINVAL)
            FAIL("%s: rc %d, expected -EINVAL", cases[i].expr, rc);
        else if (strcmp(err, cases[i].err) != 0)
            FAIL("%s:\n   got: %s\n  want: %s", cases[i].expr, err, cases[i].err);
        rules_expr_free(e);
    }
    /* nesting far past the limit is an error, not a stack overflow */
    char deep[4000];
    memset(deep, '(', 2000);
    memcpy(deep + 2000, "1", 2);
    struct rules_expr *e = NULL;
    char err[RULES_ERR_LEN];
    CHECK_INT(rules_expr_compile(deep, strlen(deep), &e, err), -EINVAL);
    CHECK(strstr(err, "nested deeper") != NULL);
    memset(deep, 0, sizeof(deep));
    for (int i = 0; i < 200; i++)
        strcat(deep, "not ");
    strcat(deep, "true");
    CHECK_INT(rules_expr_compile(deep, strlen(deep), &e, err), -EINVAL);
    /* too many values at once */
    char wide[2000] = "";
    for (int i = 0; i < 40; i++)
        strcat(wide, "1 + (");
    strcat(wide, "1");
    for (int i = 0; i < 40; i++)
        strcat(wide, ")");
    CHECK_INT(rules_expr_compile(wide, strlen(wide), &e, err), -EINVAL);
}

/* ---------------------------------------------------------------------------------------------
 * Rules files
 * ------------------------------------------------------------------------------------------ */

static struct rules_set *parse(const char *text, struct rules_errors *errs)
{
    struct rules_set *rs = NULL;
    memset(errs, 0, sizeof(*errs));
    int rc = rules_set_parse("rules.yaml", text, strlen(text), ".", NULL, &rs, errs);
    if (rc == 0)
        CHECK(rs != NULL);
    return rs;
}

/* A rules file and every error it must give, one per line, in order. */
struct error_case {
    const char *text;
    const char *errors;
};

static void expect_errors(const struct error_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct rules_errors errs;
        struct rules_set *rs = parse(cases[i].text, &errs);
        if (rs)
            FAIL("case %zu loaded; expected errors", i);
        else if (!errs.text || strcmp(errs.text, cases[i].errors) != 0)
            FAIL("case %zu:\n   got: %s\n  want: %s", i, errs.text ? errs.text : "(none)",
                 cases[i].errors);
        rules_set_free(rs);
        rules_errors_free(&errs);
    }
}

static void test_load_errors(void)
{
    static const struct error_case cases[] = {
        {"rules:\n"
         "  - name: a\n"
         "    when: avgg(reported.hr, 5s) > 1\n",
         "rules.yaml:3:11: when: unknown function 'avgg'; did you mean 'avg'?\n"},
        {"rules:\n"
         "  - name: a\n"
         "    when: \"reported.hr >\"\n",
         "rules.yaml:3:25: when: expected a value, found the end\n"},
        {"rules:\n"
         "  - name: a\n"
         "    when: reported.hr > 1\n"
         "    cooldwn: 5m\n"
         "    for: 5 minutes\n",
         "rules.yaml:4:5: rule 'a': unknown key 'cooldwn'; did you mean 'cooldown'?\n"
         "rules.yaml:5:10: for: expected a duration such as 250ms, 30s, 5m or 1h, got '5 "
         "minutes'\n"},
        {"rules:\n"
         "  - name: a\n"
         "    when: reported.hr\n"
         "  - name: a\n"
         "    when: 5\n",
         "rules.yaml:4:11: name: rule 'a' defined twice\n"
         "rules.yaml:5:11: when: a condition must be true or false; this is a number\n"},
        {"rules:\n"
         "  - when: true\n"
         "    on_fire:\n"
         "      - predict: nope\n"
         "      - shout: {x: 1}\n"
         "      - desired: {a.b: 1}\n"
         "      - event: {rule: x}\n"
         "      - command: {args: {a: 1}}\n",
         "rules.yaml:2:5: rule: 'name' is missing\n"
         "rules.yaml:4:18: predict: no model 'nope' under models:\n"
         "rules.yaml:5:9: on_fire: unknown key 'shout'\n"
         "rules.yaml:6:19: desired: a key has 1 to 64 bytes and no '.'\n"
         "rules.yaml:7:17: event: 'rule' is set by the hub; choose another field name\n"
         "rules.yaml:8:18: command: 'cmd' is missing\n"},
        {"rulez: []\n", "rules.yaml:1:1: top level: unknown key 'rulez'; did you mean 'rules'?\n"},
        {"models:\n"
         "  m:\n"
         "    file: x.twm\n"
         "    inputs: [avg(reported.a, 60s)]\n"
         "    learn: {target: reported.y, rate: 0.1}\n",
         "rules.yaml:4:28: input: expected ')' to close the arguments, found the end\n"
         "rules.yaml:4:33: input: unexpected ')' after the expression\n"
         "rules.yaml:4:13: model 'm': in a [flow, list] every comma ends an item, also the one "
         "inside avg(x, 60s): write inputs as a block list (- avg(...)) or quote each\n"},
        {"models:\n  m:\n    file: /nonexistent.twm\n    inputs: [reported.a]\n",
         "rules.yaml:3:11: model 'm': /nonexistent.twm: No such file or "
         "directory\n"},
        {"rules: {a: 1}\n", "rules.yaml:1:8: rules: expected a list of rules, got a map\n"},
        {"rules:\n  - name: [x]\n    when: true\n",
         "rules.yaml:2:11: name: expected a value, got a list\n"},
        {"rules:\n  - name: a\n    when: true\n   bad: indent\n",
         "rules.yaml:4:4: did not find expected '-' indicator while parsing a block collection\n"},
        {"rules:\n"
         "  - name: a\n"
         "    when: desired.x > 1\n"
         "    on_fire: [{desired: {y: 1}}]\n"
         "  - name: b\n"
         "    when: desired.y > 1\n"
         "    on_fire: [{desired: {x: 1}}]\n",
         "rules.yaml:2:1: rules 'a' -> 'b' -> 'a' form a loop: each one's actions write what the "
         "next one reads\n"},
        {"rules:\n"
         "  - name: self\n"
         "    when: desired.x > 1\n"
         "    on_resolve: {desired: {x: 2}}\n",
         "rules.yaml:2:1: rules 'self' -> 'self' form a loop: each one's actions write what the "
         "next one reads\n"},
    };
    expect_errors(cases, sizeof(cases) / sizeof(cases[0]));
}

/* Rules run after the rules that write what they read, whatever the file order. */
static void test_order(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: reader\n"
                                 "    when: desired.mode == 'alarm'\n"
                                 "  - name: plain\n"
                                 "    when: reported.x > 1\n"
                                 "  - name: writer\n"
                                 "    when: reported.hr > 120\n"
                                 "    on_fire: [{desired: {mode: alarm}}]\n",
                                 &errs);
    if (!rs) {
        FAIL("did not load: %s", errs.text);
        rules_errors_free(&errs);
        return;
    }
    CHECK_INT(rules_set_count(rs), 3);
    CHECK(strcmp(rules_set_name(rs, 0), "plain") == 0);
    CHECK(strcmp(rules_set_name(rs, 1), "writer") == 0);
    CHECK(strcmp(rules_set_name(rs, 2), "reader") == 0);
    CHECK_INT(rules_set_find(rs, "reader", 6), 2);
    CHECK_INT(rules_set_find(rs, "nope", 4), -1);
    rules_set_free(rs);
    /* an empty file is a valid file with no rules */
    rs = parse("", &errs);
    CHECK(rs && rules_set_count(rs) == 0);
    rules_set_free(rs);
    rs = parse("# nothing\nrules:\n", &errs);
    CHECK(rs && rules_set_count(rs) == 0);
    rules_set_free(rs);
}

/* ---------------------------------------------------------------------------------------------
 * The state machine, with an in-memory host and a fake clock
 * ------------------------------------------------------------------------------------------ */

#define RECS 16
struct host {
    struct rules_twin tw;
    struct twin_doc doc;
    struct rules_changes changes;
    struct {
        char rule[RULES_NAME_MAX + 1];
        unsigned char buf[RULES_STATE_LEN];
        bool used;
    } recs[RECS];
    char log[4096]; /* "rule:event;" and "rule:action;" in order */
    const char *set_mode; /* a desired action writes desired.mode = this */
};

static int h_get(void *ctx, const char *rule, size_t len, void *buf)
{
    struct host *h = ctx;
    for (int i = 0; i < RECS; i++)
        if (h->recs[i].used && strlen(h->recs[i].rule) == len && !memcmp(h->recs[i].rule, rule, len)) {
            memcpy(buf, h->recs[i].buf, RULES_STATE_LEN);
            return 0;
        }
    return -ENOENT;
}

static int h_put(void *ctx, const char *rule, size_t len, const void *buf)
{
    struct host *h = ctx;
    int free_slot = -1;
    for (int i = 0; i < RECS; i++) {
        if (h->recs[i].used && strlen(h->recs[i].rule) == len && !memcmp(h->recs[i].rule, rule, len)) {
            memcpy(h->recs[i].buf, buf, RULES_STATE_LEN);
            return 0;
        }
        if (!h->recs[i].used && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0)
        return -ENOSPC;
    h->recs[free_slot].used = true;
    memcpy(h->recs[free_slot].rule, rule, len);
    h->recs[free_slot].rule[len] = '\0';
    memcpy(h->recs[free_slot].buf, buf, RULES_STATE_LEN);
    return 0;
}

static int h_del(void *ctx, const char *rule, size_t len)
{
    struct host *h = ctx;
    for (int i = 0; i < RECS; i++)
        if (h->recs[i].used && strlen(h->recs[i].rule) == len && !memcmp(h->recs[i].rule, rule, len)) {
            h->recs[i].used = false;
            return 0;
        }
    return -ENOENT;
}

static int h_list(void *ctx, int (*cb)(void *, const char *, size_t, const void *, size_t),
                  void *cb_ctx)
{
    struct host *h = ctx;
    for (int i = 0; i < RECS; i++)
        if (h->recs[i].used) {
            int rc = cb(cb_ctx, h->recs[i].rule, strlen(h->recs[i].rule), h->recs[i].buf,
                        RULES_STATE_LEN);
            if (rc)
                return rc;
        }
    return 0;
}

static int h_action(void *ctx, const struct rules_fire *f, const struct rules_action *a)
{
    struct host *h = ctx;
    static const char *const kinds[] = {"command", "desired", "event", "predict"};
    size_t n = strlen(h->log);
    snprintf(h->log + n, sizeof(h->log) - n, "%s:%s;", f->rule, kinds[a->kind]);
    if (a->kind == RULES_ACT_DESIRED && h->set_mode) {
        char text[128];
        snprintf(text, sizeof(text), "{\"mode\": \"%s\"}", h->set_mode);
        h->doc.desired = json(text);
        rules_changes_add_patch(&h->changes, "desired", &a->args);
    }
    return 0;
}

static int h_transition(void *ctx, const struct rules_fire *f)
{
    struct host *h = ctx;
    size_t n = strlen(h->log);
    snprintf(h->log + n, sizeof(h->log) - n, "%s:%s", f->rule, f->event);
    n = strlen(h->log);
    for (unsigned i = 0; i < f->n_values; i++) {
        n = strlen(h->log);
        const struct rules_value *v = &f->values[i].v;
        if (v->type == RULES_STR)
            snprintf(h->log + n, sizeof(h->log) - n, "%s%.*s=%.*s", i ? "," : "(",
                     (int)f->values[i].len, f->values[i].text, (int)v->len, v->s);
        else
            snprintf(h->log + n, sizeof(h->log) - n, "%s%.*s=%g", i ? "," : "(",
                     (int)f->values[i].len, f->values[i].text, v->n);
    }
    n = strlen(h->log);
    snprintf(h->log + n, sizeof(h->log) - n, "%s;", f->n_values ? ")" : "");
    return 0;
}

static const struct rules_host host_cbs = {.state_get = h_get, .state_put = h_put,
                                           .state_del = h_del, .state_list = h_list,
                                           .action = h_action, .transition = h_transition};

static struct rules_host hooks(struct host *h)
{
    struct rules_host x = host_cbs;
    x.ctx = h;
    return x;
}

/* Sets reported.hr (written at `now`) and runs the rules for that change. */
static void report(struct host *h, struct rules_set *rs, struct rules_scratch *sc, double hr,
                   int64_t now, struct rules_run_result *res)
{
    char rep[64], meta[64];
    snprintf(rep, sizeof(rep), "{\"hr\": %g}", hr);
    snprintf(meta, sizeof(meta), "{\"hr\": %lld}", (long long)now);
    h->doc.reported = json(rep);
    h->doc.meta_reported = json(meta);
    rules_changes_reset(&h->changes);
    rules_changes_add(&h->changes, "reported.hr", 11);
    h->tw.now = now;
    h->log[0] = '\0';
    struct rules_host x = hooks(h);
    CHECK_INT(rules_run_change(rs, sc, &h->tw, &x, res), 0);
}

static void timer(struct host *h, struct rules_set *rs, struct rules_scratch *sc, int64_t now,
                  struct rules_run_result *res)
{
    rules_changes_reset(&h->changes);
    h->tw.now = now;
    h->log[0] = '\0';
    struct rules_host x = hooks(h);
    CHECK_INT(rules_run_timer(rs, sc, &h->tw, &x, res), 0);
}

static void host_init(struct host *h)
{
    memset(h, 0, sizeof(*h));
    h->doc = make_doc("{}", "{}", "{}");
    h->tw.doc = &h->doc;
    h->tw.changes = &h->changes;
    h->tw.history = history;
}

#define CHECK_LOG(h, want)                                                                         \
    do {                                                                                           \
        if (strcmp((h)->log, (want)) != 0)                                                        \
            FAIL("log '%s', expected '%s'", (h)->log, (want));                                     \
    } while (0)

static void test_for_and_cooldown(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: tachy\n"
                                 "    when: reported.hr > 120\n"
                                 "    for: 30s\n"
                                 "    cooldown: 5m\n"
                                 "    on_fire: [{command: alert}, {event: {severity: high}}]\n"
                                 "    on_resolve: [{desired: {sample_hz: 50}}]\n",
                                 &errs);
    if (!rs) {
        FAIL("%s", errs.text);
        return;
    }
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    report(h, rs, sc, 130, 1000, &res);
    CHECK_LOG(h, "tachy:pending(reported.hr=130);");
    CHECK_INT(res.wake, 31000);
    report(h, rs, sc, 131, 10000, &res); /* still pending, no event, same deadline */
    CHECK_LOG(h, "");
    CHECK_INT(res.wake, 31000);
    timer(h, rs, sc, 30999, &res); /* not due yet: nothing */
    CHECK_LOG(h, "");
    timer(h, rs, sc, 31000, &res);
    CHECK_LOG(h, "tachy:command;tachy:firing(reported.hr=131);");
    CHECK_INT(res.wake, INT64_MAX);
    report(h, rs, sc, 140, 40000, &res); /* firing stays firing: no re-fire */
    CHECK_LOG(h, "");
    report(h, rs, sc, 80, 50000, &res);
    CHECK_LOG(h, "tachy:desired;tachy:resolved(reported.hr=80);");
    /* within the cooldown: pending until it ends (50000 + 300000) */
    report(h, rs, sc, 150, 60000, &res);
    CHECK_LOG(h, "tachy:pending(reported.hr=150);");
    CHECK_INT(res.wake, 350000);
    timer(h, rs, sc, 350000, &res);
    CHECK_LOG(h, "tachy:command;tachy:firing(reported.hr=150);");
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
}

static void test_flapping(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: tachy\n"
                                 "    when: reported.hr > 120\n"
                                 "    for: 10s\n",
                                 &errs);
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    int fired = 0;
    for (int i = 0; i < 20; i++) {
        report(h, rs, sc, i % 2 ? 80 : 130, 1000 + i * 6000, &res);
        fired += strstr(h->log, "firing") != NULL;
        timer(h, rs, sc, 1000 + i * 6000 + 5999, &res);
        fired += strstr(h->log, "firing") != NULL;
    }
    CHECK_INT(fired, 0);
    /* a pending that clears says so; an inactive rule keeps no record */
    report(h, rs, sc, 130, 500000, &res);
    report(h, rs, sc, 80, 501000, &res);
    CHECK_LOG(h, "tachy:inactive(reported.hr=80);");
    int used = 0;
    for (int i = 0; i < RECS; i++)
        used += h->recs[i].used;
    CHECK_INT(used, 0);
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
}

/* An absence rule fires from the timer alone, with no message arriving. */
static void test_absence(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: lead_off\n"
                                 "    match: \"ecg-*\"\n"
                                 "    when: age(reported.hr) > 2s\n"
                                 "    on_fire: [{event: {severity: warning}}]\n",
                                 &errs);
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    report(h, rs, sc, 70, 1000, &res);
    CHECK_LOG(h, "");
    CHECK_INT(res.wake, 3001);
    timer(h, rs, sc, 3001, &res);
    CHECK_LOG(h, "lead_off:firing(age(reported.hr)=2001);");
    CHECK_INT(res.wake, INT64_MAX);
    report(h, rs, sc, 70, 4000, &res); /* the device is back */
    CHECK_LOG(h, "lead_off:resolved(age(reported.hr)=0);");
    CHECK_INT(res.wake, 6001);
    /* a twin the match does not admit is not evaluated */
    h->doc.id = "pump-1";
    h->doc.id_len = 6;
    report(h, rs, sc, 70, 9000, &res);
    CHECK_INT(res.evaluated, 0);
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
}

/* A rule reads what an earlier rule's action wrote, in the same run; rules whose paths the
 * change did not touch are not evaluated. */
static void test_chain_and_selection(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: follower\n"
                                 "    when: desired.mode == 'alarm'\n"
                                 "  - name: other\n"
                                 "    when: reported.spo2 < 90\n"
                                 "  - name: leader\n"
                                 "    when: reported.hr > 120\n"
                                 "    on_fire: [{desired: {mode: alarm}}]\n",
                                 &errs);
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    h->set_mode = "alarm";
    report(h, rs, sc, 130, 1000, &res);
    CHECK_LOG(h, "leader:desired;leader:firing(reported.hr=130);follower:firing(desired.mode=alarm);");
    CHECK_INT(res.evaluated, 2); /* 'other' reads reported.spo2 only */
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
}

/* A reload keeps the state of an unchanged rule and restarts a changed one. */
static void test_reload(void)
{
    const char *v1 = "rules:\n"
                     "  - name: a\n"
                     "    when: reported.hr > 120\n"
                     "    for: 1m\n"
                     "  - name: b\n"
                     "    when: reported.hr > 100\n"
                     "    for: 1m\n";
    const char *v2 = "rules:\n"
                     "  - name: a\n"
                     "    when: reported.hr > 120\n"
                     "    for: 1m\n"
                     "    on_fire: [{command: ping}]\n" /* actions only: same definition */
                     "  - name: b\n"
                     "    when: reported.hr > 110\n"
                     "    for: 1m\n";
    struct rules_errors errs;
    struct rules_set *rs = parse(v1, &errs), *rs2 = parse(v2, &errs);
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    report(h, rs, sc, 130, 1000, &res);
    CHECK_LOG(h, "a:pending(reported.hr=130);b:pending(reported.hr=130);");
    unsigned char buf[RULES_STATE_LEN];
    CHECK_INT(h_get(h, "a", 1, buf), 0);
    CHECK(rules_record_current(rs2, "a", 1, buf, RULES_STATE_LEN));
    CHECK_INT(h_get(h, "b", 1, buf), 0);
    CHECK(!rules_record_current(rs2, "b", 1, buf, RULES_STATE_LEN));
    /* after the reload, the timer fires a on time; b starts over at its next evaluation */
    timer(h, rs2, sc, 61000, &res);
    CHECK_LOG(h, "a:command;a:firing(reported.hr=130);");
    CHECK_INT(h_get(h, "b", 1, buf), -ENOENT);
    report(h, rs2, sc, 130, 62000, &res);
    CHECK_LOG(h, "b:pending(reported.hr=130);");
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
    rules_set_free(rs2);
}

static void test_records(void)
{
    struct rules_record r = {.state = RULES_PENDING, .def_hash = 0x1122334455667788ull,
                             .since = -5, .fire_at = 1700000000000, .cooldown_until = 0,
                             .wake = INT64_MAX}, back;
    unsigned char buf[RULES_STATE_LEN];
    rules_record_encode(&r, buf);
    CHECK_INT(rules_record_decode(buf, sizeof(buf), &back), 0);
    CHECK(back.state == r.state && back.def_hash == r.def_hash && back.since == r.since &&
          back.fire_at == r.fire_at && back.wake == r.wake);
    CHECK_INT(rules_record_decode(buf, sizeof(buf) - 1, &back), -EBADMSG);
    buf[1] = 9;
    CHECK_INT(rules_record_decode(buf, sizeof(buf), &back), -EBADMSG);
}

/* ---------------------------------------------------------------------------------------------
 * every: periodic runs of on_fire
 * ------------------------------------------------------------------------------------------ */

static void test_every_load_errors(void)
{
    static const struct error_case cases[] = {
        {"rules:\n"
         "  - name: a\n"
         "    every: 500ms\n"
         "    on_fire: {command: ping}\n",
         "rules.yaml:3:12: every: expected a period of at least 1s, got '500ms'\n"},
        {"rules:\n"
         "  - name: a\n"
         "    every: 0\n"
         "  - name: b\n"
         "    every: often\n"
         "    when: reported.hr > 1\n",
         "rules.yaml:3:12: every: expected a period of at least 1s, got '0'\n"
         "rules.yaml:5:12: every: expected a duration such as 250ms, 30s, 5m or 1h, got "
         "'often'\n"},
        {"rules:\n"
         "  - name: sched\n"
         "    every: 10s\n"
         "    for: 5s\n"
         "    cooldown: 1m\n"
         "    on_fire: [{command: ping}]\n"
         "    on_resolve: [{command: pong}]\n",
         "rules.yaml:4:10: for: a rule with every: and no when: never resolves, so it takes no "
         "for (give it a when: to have one)\n"
         "rules.yaml:5:15: cooldown: a rule with every: and no when: never resolves, so it takes "
         "no cooldown (give it a when: to have one)\n"
         "rules.yaml:7:17: on_resolve: a rule with every: and no when: never resolves, so it "
         "takes no on_resolve (give it a when: to have one)\n"},
        {"rules:\n"
         "  - name: a\n"
         "    on_fire: {command: ping}\n"
         "  - name: b\n"
         "    evry: 10s\n"
         "    when: true\n",
         "rules.yaml:2:5: rule 'a': 'when' is missing (a rule without one needs every:)\n"
         "rules.yaml:5:5: rule 'b': unknown key 'evry'; did you mean 'every'?\n"},
        {"rules:\n"
         "  - name: a\n"
         "    every: [10s]\n",
         "rules.yaml:3:12: every: expected a value, got a list\n"},
    };
    expect_errors(cases, sizeof(cases) / sizeof(cases[0]));
    /* the floor is the host's: rules_options.min_every_ms */
    struct rules_options o;
    rules_options_init(&o);
    CHECK_INT(o.min_every_ms, 1000);
    o.min_every_ms = 90000;
    const char *text = "rules:\n  - name: a\n    every: 1m\n";
    struct rules_set *rs = NULL;
    struct rules_errors errs = {0};
    CHECK_INT(rules_set_parse("r.yaml", text, strlen(text), ".", &o, &rs, &errs), -EINVAL);
    CHECK(errs.text &&
          strcmp(errs.text, "r.yaml:3:12: every: expected a period of at least 1m30s, got "
                            "'1m'\n") == 0);
    rules_errors_free(&errs);
    o.min_every_ms = 60000;
    CHECK_INT(rules_set_parse("r.yaml", text, strlen(text), ".", &o, &rs, &errs), 0);
    rules_set_free(rs);
    rules_errors_free(&errs);
}

static int used_records(const struct host *h)
{
    int used = 0;
    for (int i = 0; i < RECS; i++)
        used += h->recs[i].used;
    return used;
}

static struct rules_record record_of(struct host *h, const char *rule)
{
    unsigned char buf[RULES_STATE_LEN];
    struct rules_record r = {0};
    if (h_get(h, rule, strlen(rule), buf) < 0)
        FAIL("no record of %s", rule);
    else
        CHECK_INT(rules_record_decode(buf, sizeof(buf), &r), 0);
    return r;
}

/* A schedule (every: with no when:): on_fire at the twin's first change, then every period on
 * the timer, at first + k * period; a late timer does not make up the runs it missed; no state
 * and no event, unless on_fire has an event action. */
static void test_every_schedule(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: forecast\n"
                                 "    match: \"ecg-*\"\n"
                                 "    every: 10s\n"
                                 "    on_fire: [{command: ping}]\n"
                                 "  - name: beat\n"
                                 "    every: 1m\n"
                                 "    on_fire: [{event: {kind: heartbeat}}]\n",
                                 &errs);
    if (!rs) {
        FAIL("%s", errs.text);
        rules_errors_free(&errs);
        return;
    }
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    report(h, rs, sc, 70, 1000, &res); /* any change starts them: they read nothing */
    CHECK_LOG(h, "forecast:command;beat:periodic;");
    CHECK_INT(res.periodic, 2);
    CHECK_INT(res.transitions, 0);
    CHECK_INT(res.wake, 11000);
    struct rules_record r = record_of(h, "forecast");
    CHECK_INT(r.state, RULES_INACTIVE);
    CHECK_INT(r.repeat_at, 11000);
    CHECK_INT(r.wake, 11000);
    CHECK_INT(record_of(h, "beat").repeat_at, 61000);
    report(h, rs, sc, 71, 5000, &res); /* a change between runs runs nothing */
    CHECK_LOG(h, "");
    CHECK_INT(res.wake, 11000);
    timer(h, rs, sc, 10999, &res);
    CHECK_LOG(h, "");
    CHECK_INT(res.wake, 11000);
    timer(h, rs, sc, 11000, &res);
    CHECK_LOG(h, "forecast:command;");
    CHECK_INT(res.wake, 21000);
    timer(h, rs, sc, 21250, &res); /* a little late: the series stays at 1000 + k * 10s */
    CHECK_LOG(h, "forecast:command;");
    CHECK_INT(res.wake, 31000);
    /* the hub was away for 25 s: one run now, the missed ones are not made up */
    timer(h, rs, sc, 56000, &res);
    CHECK_LOG(h, "forecast:command;");
    CHECK_INT(res.periodic, 1);
    CHECK_INT(res.wake, 61000);
    timer(h, rs, sc, 61000, &res);
    CHECK_LOG(h, "forecast:command;beat:periodic;");
    CHECK_INT(res.wake, 71000);
    CHECK_INT(used_records(h), 2);
    /* a twin the match does not admit gets only the other schedule */
    struct host *o = malloc(sizeof(*o));
    host_init(o);
    o->doc.id = "pump-1";
    o->doc.id_len = 6;
    report(o, rs, sc, 70, 2000, &res);
    CHECK_LOG(o, "beat:periodic;");
    CHECK_INT(used_records(o), 1);
    free(o);
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
}

/* every: with a when: on_fire again every period while the rule is firing, not while it is
 * pending or inactive; the runs end when it resolves and start again at the next firing. */
static void test_every_firing(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("rules:\n"
                                 "  - name: tachy\n"
                                 "    when: reported.hr > 120\n"
                                 "    for: 2s\n"
                                 "    every: 10s\n"
                                 "    on_fire: [{command: alert}, {event: {severity: high}}]\n"
                                 "    on_resolve: [{desired: {sample_hz: 2}}]\n",
                                 &errs);
    if (!rs) {
        FAIL("%s", errs.text);
        rules_errors_free(&errs);
        return;
    }
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    report(h, rs, sc, 80, 1000, &res); /* never true: no record, no timer */
    CHECK_LOG(h, "");
    CHECK_INT(res.wake, INT64_MAX);
    CHECK_INT(used_records(h), 0);
    report(h, rs, sc, 130, 2000, &res);
    CHECK_LOG(h, "tachy:pending(reported.hr=130);");
    CHECK_INT(res.wake, 4000);
    timer(h, rs, sc, 4000, &res);
    CHECK_LOG(h, "tachy:command;tachy:firing(reported.hr=130);");
    CHECK_INT(res.wake, 14000);
    CHECK_INT(record_of(h, "tachy").repeat_at, 14000);
    report(h, rs, sc, 131, 9000, &res); /* a change while firing: no run */
    CHECK_LOG(h, "");
    timer(h, rs, sc, 14000, &res);
    CHECK_LOG(h, "tachy:command;tachy:periodic(reported.hr=131);");
    CHECK_INT(res.periodic, 1);
    CHECK_INT(res.transitions, 0);
    CHECK_INT(res.wake, 24000);
    report(h, rs, sc, 135, 24100, &res); /* a change after the time: the run happens in it */
    CHECK_LOG(h, "tachy:command;tachy:periodic(reported.hr=135);");
    CHECK_INT(res.wake, 34000);
    report(h, rs, sc, 90, 30000, &res);
    CHECK_LOG(h, "tachy:desired;tachy:resolved(reported.hr=90);");
    CHECK_INT(res.wake, INT64_MAX);
    CHECK_INT(used_records(h), 0);
    timer(h, rs, sc, 34000, &res);
    CHECK_LOG(h, "");
    /* firing again: a new series from the new firing */
    report(h, rs, sc, 140, 40000, &res);
    timer(h, rs, sc, 42500, &res);
    CHECK_LOG(h, "tachy:command;tachy:firing(reported.hr=140);");
    CHECK_INT(res.wake, 52500);
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
}

/* The next run is in the record: a hub that restarts (a new set from the same file, new
 * scratch, the stored records) goes on with the same series; a changed period is another
 * definition and starts over; records from before every: still read. */
static void test_every_restart(void)
{
    const char *text = "rules:\n"
                       "  - name: forecast\n"
                       "    every: 10s\n"
                       "    on_fire: [{command: ping}]\n";
    struct rules_errors errs;
    struct rules_set *rs = parse(text, &errs);
    struct rules_scratch *sc = rules_scratch_new();
    struct host *h = malloc(sizeof(*h));
    struct rules_run_result res;
    host_init(h);
    report(h, rs, sc, 70, 1000, &res);
    CHECK_LOG(h, "forecast:command;");
    timer(h, rs, sc, 11000, &res);
    CHECK_LOG(h, "forecast:command;");
    rules_scratch_free(sc);
    rules_set_free(rs);
    /* the restart: nothing but the records survives */
    rs = parse(text, &errs);
    sc = rules_scratch_new();
    unsigned char buf[RULES_STATE_LEN];
    CHECK_INT(h_get(h, "forecast", 8, buf), 0);
    CHECK(rules_record_current(rs, "forecast", 8, buf, sizeof(buf)));
    report(h, rs, sc, 72, 15000, &res); /* its first change after the restart: not a first run */
    CHECK_LOG(h, "");
    CHECK_INT(res.wake, 21000);
    timer(h, rs, sc, 21000, &res);
    CHECK_LOG(h, "forecast:command;");
    CHECK_INT(res.wake, 31000);
    /* another period: another definition, a new series from its first evaluation */
    struct rules_set *rs2 = parse("rules:\n"
                                  "  - name: forecast\n"
                                  "    every: 20s\n"
                                  "    on_fire: [{command: ping}]\n",
                                  &errs);
    CHECK(!rules_record_current(rs2, "forecast", 8, buf, sizeof(buf)));
    timer(h, rs2, sc, 31000, &res); /* the timer drops the old definition's record */
    CHECK_LOG(h, "");
    CHECK_INT(used_records(h), 0);
    report(h, rs2, sc, 73, 32000, &res);
    CHECK_LOG(h, "forecast:command;");
    CHECK_INT(res.wake, 52000);
    /* a when: makes it another rule too: an alarm that repeats, not a schedule */
    struct rules_set *rs3 = parse("rules:\n"
                                  "  - name: forecast\n"
                                  "    when: true\n"
                                  "    every: 20s\n"
                                  "    on_fire: [{command: ping}]\n",
                                  &errs);
    CHECK_INT(h_get(h, "forecast", 8, buf), 0);
    CHECK(!rules_record_current(rs3, "forecast", 8, buf, sizeof(buf)));
    report(h, rs3, sc, 74, 33000, &res);
    CHECK_LOG(h, "forecast:command;forecast:firing;");
    CHECK_INT(res.wake, 53000);
    free(h);
    rules_scratch_free(sc);
    rules_set_free(rs);
    rules_set_free(rs2);
    rules_set_free(rs3);
}

/* The record's format: repeat_at round-trips; a record of the format before every: (48 bytes,
 * alone or zero-padded) reads with none; damaged ones do not read. */
static void test_every_records(void)
{
    struct rules_record r = {.state = RULES_FIRING,
                             .def_hash = 0x0102030405060708ull,
                             .since = 1700000000000,
                             .fire_at = 1700000000000,
                             .cooldown_until = 0,
                             .wake = 1700000010000,
                             .repeat_at = 1700000010000},
                        back;
    unsigned char buf[RULES_STATE_LEN];
    CHECK_INT(RULES_STATE_LEN, 56);
    rules_record_encode(&r, buf);
    CHECK_INT(buf[0], 'S');
    CHECK_INT(rules_record_decode(buf, sizeof(buf), &back), 0);
    CHECK(back.state == r.state && back.def_hash == r.def_hash && back.since == r.since &&
          back.wake == r.wake && back.repeat_at == r.repeat_at);
    CHECK_INT(rules_record_decode(buf, RULES_STATE_V1_LEN, &back), -EBADMSG);
    /* version 1, as the hub wrote it before every: */
    unsigned char v1[RULES_STATE_LEN];
    memcpy(v1, buf, RULES_STATE_V1_LEN);
    memset(v1 + RULES_STATE_V1_LEN, 0, RULES_STATE_LEN - RULES_STATE_V1_LEN);
    v1[0] = 'R';
    back.repeat_at = 5;
    CHECK_INT(rules_record_decode(v1, RULES_STATE_V1_LEN, &back), 0);
    CHECK(back.state == RULES_FIRING && back.def_hash == r.def_hash && back.wake == r.wake &&
          back.repeat_at == 0);
    CHECK_INT(rules_record_decode(v1, sizeof(v1), &back), 0); /* zero-padded by a host */
    CHECK_INT(back.repeat_at, 0);
    v1[RULES_STATE_LEN - 1] = 1;
    CHECK_INT(rules_record_decode(v1, sizeof(v1), &back), -EBADMSG);
    buf[55] = 0x80; /* a negative time */
    CHECK_INT(rules_record_decode(buf, sizeof(buf), &back), -EBADMSG);
}

static void test_changes(void)
{
    struct rules_changes c;
    rules_changes_reset(&c);
    msgpack_object patch = json("{\"a\": {\"b\": 1, \"c\": {\"d\": null}}, \"e\": 2}");
    rules_changes_add_patch(&c, "reported", &patch);
    CHECK_INT(c.n, 3);
    CHECK(rules_changes_touch(&c, "reported.a.b", 12));
    CHECK(rules_changes_touch(&c, "reported.a", 10));
    CHECK(rules_changes_touch(&c, "reported.a.c.d.x", 16));
    CHECK(!rules_changes_touch(&c, "reported.a.x", 12));
    CHECK(!rules_changes_touch(&c, "reported.ab", 11));
    CHECK(!rules_changes_touch(&c, "desired", 7));
    for (int i = 0; i < 100; i++) {
        char p[32];
        int n = snprintf(p, sizeof(p), "reported.k%d", i);
        rules_changes_add(&c, p, (size_t)n);
    }
    CHECK(c.all);
    CHECK(rules_changes_touch(&c, "desired.anything", 16));
}


/* ---------------------------------------------------------------------------------------------
 * Models with a target: scoring, online learning, their records (learn.c), on the committed
 * fixtures of tests/data/models (RULES_TEST_MODELS)
 * ------------------------------------------------------------------------------------------ */

#define MODEL(f) RULES_TEST_MODELS "/" f

static void test_learn_errors(void)
{
    static const struct error_case cases[] = {
        {"models:\n  m:\n    file: " MODEL("svr.twm") "\n    inputs: [reported.a, reported.b, "
         "reported.c]\n    learn: {target: reported.y, rate: 0.1}\n",
         "rules.yaml:3:11: model 'm': learn: " MODEL("svr.twm") " is a SVR (svm); only a "
         "single-output linear regressor learns online (give target: alone to track its "
         "error)\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n    learn: {rate: 0.1}\n",
         "rules.yaml:5:12: model 'm': learn: 'target' is missing (the reported path the model "
         "predicts)\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n"
         "    learn: {target: reported.y}\n",
         "rules.yaml:5:12: model 'm': learn: 'rate' is missing (the step size, such as 0.01)\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n"
         "    learn: {target: reported.y, rate: -1}\n",
         "rules.yaml:5:39: learn: rate: expected a number above 0 such as 0.01, got '-1'\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n"
         "    learn: {target: reported.y, rate: fast}\n",
         "rules.yaml:5:39: learn: rate: expected a number above 0 such as 0.01, got 'fast'\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n"
         "    target: avg(reported.y, 5s)\n",
         "rules.yaml:5:13: target: expected a reported path such as reported.heart_rate, got "
         "'avg(reported.y, 5s)'\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n    target: desired.y\n",
         "rules.yaml:5:13: target: expected a reported path such as reported.heart_rate, got "
         "'desired.y'\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n    horizon: 5s\n",
         "rules.yaml:5:14: model 'm': horizon: needs a target\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n    target: reported.y\n"
         "    horizon: 400d\n",
         "rules.yaml:6:14: horizon: at most 365d\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n    target: reported.y\n"
         "    learn: {target: reported.y, rate: 1}\n",
         "rules.yaml:6:21: model 'm': learn: target is given twice (in learn: and beside it)\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n    learn: fast\n",
         "rules.yaml:5:12: model 'm': learn: expected a map with target and rate, got a "
         "value\n"},
        {"models:\n  m:\n    file: x.twm\n    inputs: [reported.a]\n"
         "    learn: {target: reported.y, rate: 1, step: 2}\n",
         "rules.yaml:5:42: learn: unknown key 'step'\n"},
    };
    expect_errors(cases, sizeof(cases) / sizeof(cases[0]));
}

static unsigned char recbuf[RULES_MODEL_STATE_MAX];

static struct rules_twin twin_at(const struct twin_doc *doc, int64_t now)
{
    return (struct rules_twin){.doc = doc, .now = now};
}

/* A linear regressor (3 features, standard scaler) that learns reported.y 10 s ahead. */
static void test_learn_regressor(void)
{
    struct rules_errors errs;
    const char *text = "models:\n  lin:\n    file: " MODEL("linear.twm") "\n"
                       "    inputs: [reported.a, reported.b, reported.c]\n"
                       "    learn: {target: reported.y, rate: 0.05, horizon: 10s}\n";
    struct rules_set *rs = parse(text, &errs);
    if (!rs) {
        FAIL("load: %s", errs.text);
        rules_errors_free(&errs);
        return;
    }
    rules_errors_free(&errs);
    size_t tlen;
    const char *target = rules_set_model_target(rs, 0, &tlen);
    CHECK(target && tlen == 10 && memcmp(target, "reported.y", 10) == 0);

    /* the same model outside the set, stepped by hand: what the hub must match exactly */
    struct twin_model *ref;
    char err[TWIN_MODEL_ERR_LEN];
    CHECK_INT(twin_model_load_file(MODEL("linear.twm"), &ref, err), 0);
    double theta[4], want;
    CHECK_INT(twin_model_params_copy(ref, theta, 4), 0);

    struct rules_model_record rec = {.buf = recbuf};
    struct rules_prediction p;
    struct twin_doc d1 = make_doc("{\"a\": 0.5, \"b\": 48, \"c\": 1.1}", "{}", "{}");
    struct rules_twin tw = twin_at(&d1, 1000);
    const double x1[3] = {0.5, 48, 1.1}, x2[3] = {-1, 55, 0.9};
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    CHECK_INT(twin_model_predict_params(ref, theta, x1, &want), 0);
    CHECK(p.values[0] == want);
    double y1 = p.values[0];
    CHECK(rec.changed && p.score && p.score->pending == 1 && p.score->scored == 0 &&
          p.score->learns && !p.score->classifier);

    /* the target, too early (5 s of 10): it waits */
    struct twin_doc d2 = make_doc("{\"a\": 0.5, \"b\": 48, \"c\": 1.1, \"y\": 20}", "{}", "{}");
    struct rules_model_score sc;
    tw = twin_at(&d2, 6000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(!rec.changed);
    /* a target that is not a number: it waits too */
    struct twin_doc dbad = make_doc("{\"y\": \"high\"}", "{}", "{}");
    tw = twin_at(&dbad, 12000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(!rec.changed);
    /* at 11 s: scored against 20, and one LMS step */
    tw = twin_at(&d2, 11000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(rec.changed);
    CHECK(sc.scored == 1 && sc.updates == 1 && sc.pending == 0 && sc.missed == 0);
    CHECK(sc.sum_abs == fabs(20 - y1) && sc.sum_sq == (20 - y1) * (20 - y1));
    CHECK_INT(twin_model_learn_step(ref, theta, x1, 20, 0.05, NULL), 0);

    /* the next prediction uses the twin's new weights */
    struct twin_doc d3 = make_doc("{\"a\": -1, \"b\": 55, \"c\": 0.9}", "{}", "{}");
    tw = twin_at(&d3, 20000);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    CHECK_INT(twin_model_predict_params(ref, theta, x2, &want), 0);
    CHECK(p.values[0] == want);
    CHECK(p.score->scored == 1 && p.score->pending == 1);
    struct rules_model_score back;
    CHECK_INT(rules_model_record_score(rec.buf, rec.len, &back), 0);
    CHECK(back.scored == 1 && back.updates == 1 && back.pending == 1);
    CHECK(rules_model_record_current(rs, "lin", 3, rec.buf, rec.len));

    /* its target comes more than a horizon late (21 s after): missed, not scored */
    tw = twin_at(&d2, 41000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(rec.changed && sc.scored == 1 && sc.missed == 1 && sc.pending == 0);

    /* eight wait at most; a ninth is missed */
    for (int i = 0; i < RULES_MODEL_PENDING_MAX + 1; i++) {
        tw = twin_at(&d3, 50000 + i);
        CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    }
    CHECK(p.score->pending == RULES_MODEL_PENDING_MAX && p.score->missed == 2);
    /* one target scores all that are due: the first four (50.000 .. 50.003 s, due at 60.003) */
    tw = twin_at(&d2, 60003);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(sc.scored == 5 && sc.updates == 5 && sc.pending == 4);

    /* another definition (rate) does not take this record: the file's weights again */
    struct rules_set *rs2 = parse("models:\n  lin:\n    file: " MODEL("linear.twm") "\n"
                                  "    inputs: [reported.a, reported.b, reported.c]\n"
                                  "    learn: {target: reported.y, rate: 0.01, horizon: 10s}\n",
                                  &errs);
    rules_errors_free(&errs);
    CHECK(rs2 && !rules_model_record_current(rs2, "lin", 3, rec.buf, rec.len));
    if (rs2) {
        double file_theta[4];
        twin_model_params_copy(ref, file_theta, 4);
        tw = twin_at(&d3, 70000);
        CHECK_INT(rules_model_predict(rs2, 0, &tw, &rec, &p), 0);
        CHECK_INT(twin_model_predict_params(ref, file_theta, x2, &want), 0);
        CHECK(p.values[0] == want && p.score->scored == 0 && p.score->pending == 1);
    }
    rules_set_free(rs2);

    /* without a record (twinctl): the file's weights, nothing tracked */
    CHECK_INT(rules_model_predict(rs, 0, &tw, NULL, &p), 0);
    CHECK(p.score == NULL);

    /* an error past what a double sums is missed, the record stays good; so is a prediction
     * dated after now (the clock went back) */
    struct twin_doc dhuge = make_doc("{\"y\": 1e300}", "{}", "{}");
    tw = twin_at(&d3, 100000);
    rec.len = 0;
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    tw = twin_at(&dhuge, 110000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(rec.changed && sc.missed == 2 && sc.scored == 0 && sc.pending == 0);
    CHECK(isfinite(sc.sum_sq) && rules_model_record_score(rec.buf, rec.len, &back) == 0);
    tw = twin_at(&d3, 200000);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    tw = twin_at(&d2, 150000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(rec.changed && sc.missed == 3 && sc.scored == 0 && sc.pending == 0);

    /* weights that overflow on these inputs start over from the file's, not predict nothing:
     * each weight 1e308 with the sign of its scaled feature, so that nothing cancels */
    double file_w[4], unit[4], big[4];
    for (int j = 0; j < 4; j++) {
        memset(unit, 0, sizeof(unit));
        unit[j] = 1;
        CHECK_INT(twin_model_predict_params(ref, unit, x2, &want), 0);
        big[j] = copysign(1e308, want);
        memcpy(rec.buf + 64 + 8 * j, &big[j], 8); /* x86: the record's little-endian f64 */
    }
    CHECK_INT(twin_model_predict_params(ref, big, x2, &want), 0);
    CHECK(isinf(want));
    twin_model_params_copy(ref, file_w, 4);
    CHECK_INT(twin_model_predict_params(ref, file_w, x2, &want), 0);
    tw = twin_at(&d3, 210000);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    CHECK(p.values[0] == want && rec.changed);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    CHECK(p.values[0] == want);

    /* damaged records start over and never crash: every truncation, every byte flipped */
    tw = twin_at(&d3, 80000);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    unsigned char good[RULES_MODEL_STATE_MAX];
    size_t n = rec.len;
    memcpy(good, rec.buf, n);
    for (size_t cut = 0; cut < n; cut++) {
        rec.len = cut;
        CHECK(rules_model_record_score(rec.buf, cut, &back) < 0);
        tw = twin_at(&d2, 95000);
        CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
        memcpy(rec.buf, good, n);
    }
    for (size_t i = 0; i < n; i++)
        for (unsigned bit = 0; bit < 8; bit++) {
            memcpy(rec.buf, good, n);
            rec.len = n;
            rec.buf[i] ^= (unsigned char)(1u << bit);
            tw = twin_at(&d2, 95000);
            CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
            memcpy(rec.buf, good, n);
            rec.buf[i] ^= (unsigned char)(1u << bit);
            rec.len = n;
            CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
            CHECK(isfinite(p.values[0]) && p.score->pending >= 1);
        }
    twin_model_free(ref);
    rules_set_free(rs);
}

/* A classifier with string labels (low, mid, high) scored against reported.label. */
static void test_learn_classifier(void)
{
    struct rules_errors errs;
    struct rules_set *rs = parse("models:\n  cls:\n    file: " MODEL("logistic.twm") "\n"
                                 "    inputs: [reported.a, reported.b, reported.c]\n"
                                 "    target: reported.label\n",
                                 &errs);
    if (!rs) {
        FAIL("load: %s", errs.text);
        rules_errors_free(&errs);
        return;
    }
    rules_errors_free(&errs);
    struct rules_model_record rec = {.buf = recbuf};
    struct rules_prediction p;
    struct rules_model_score sc;
    struct twin_doc d = make_doc("{\"a\": 1.5, \"b\": 50, \"c\": 1}", "{}", "{}");
    struct rules_twin tw = twin_at(&d, 1000);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    CHECK(p.score && p.score->classifier && !p.score->learns);
    const char *label = p.info->class_names[p.label];
    char right[64], wrong[64];
    snprintf(right, sizeof(right), "{\"label\": \"%s\"}", label);
    snprintf(wrong, sizeof(wrong), "{\"label\": \"%s\"}", strcmp(label, "low") ? "low" : "mid");
    /* a number can't be one of these labels: it waits */
    struct twin_doc dn = make_doc("{\"label\": 2}", "{}", "{}");
    tw = twin_at(&dn, 2000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(!rec.changed);
    struct twin_doc dr = make_doc(right, "{}", "{}"), dw = make_doc(wrong, "{}", "{}");
    tw = twin_at(&dr, 2000); /* horizon 0: the next value */
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(rec.changed && sc.scored == 1 && sc.correct == 1);
    tw = twin_at(&d, 3000);
    CHECK_INT(rules_model_predict(rs, 0, &tw, &rec, &p), 0);
    tw = twin_at(&dw, 4000);
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(sc.scored == 2 && sc.correct == 1 && sc.missed == 0 && sc.pending == 0);
    /* nothing waits: a target changes nothing */
    CHECK_INT(rules_model_score(rs, 0, &tw, &rec, &sc), 0);
    CHECK(!rec.changed);
    rules_set_free(rs);
}

/* ---------------------------------------------------------------------------------------------
 * Dispatch entries
 * ------------------------------------------------------------------------------------------ */

static const char *const ward = "rules:\n"
                                "  - name: tachycardia\n"
                                "    when: reported.hr > 120\n";

static void test_dispatch_load_errors(void)
{
    char text[14][1024];
    static const char *const bodies[] = {
        /* 0: no resource, no cost, and a demand with both rule and when */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachycardia, when: reported.hr > 1}\n",
        /* 1: an unknown rule, a key misspelt, a pair path in a single-twin expression */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachy}\n"
        "    resource: {match: \"nurse-*\", capacty: 2}\n"
        "    cost: reported.x\n",
        /* 2: a window in a cost, a bad with: name, the desired key with a dot */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachycardia}\n"
        "    resource: {match: \"nurse-*\", skills: skills}\n"
        "    cost: avg(demand.reported.x, 60s)\n"
        "    on_assign:\n"
        "      with: {demand: demand.id, x: resource.reported.x}\n"
        "      desired: a.b\n",
        /* 3: max_demands out of range, on_release without cmd, a cost that is a string */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachycardia}\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: \"'far'\"\n"
        "    max_demands: 0\n"
        "    on_release: {command: {args: {a: 1}}}\n",
        /* 4: a typo in a pair path */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachycardia}\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: demnd.reported.x - resource.reported.x\n",
        /* 5: history and rule state in the expressions the hub evaluates on one twin alone */
        "dispatch:\n"
        "  - name: d\n"
        "    demand:\n"
        "      when: avg(reported.hr, 5m) > 120\n"
        "      priority: 1 + age(reported.acuity)\n"
        "    resource:\n"
        "      match: \"nurse-*\"\n"
        "      when: changed(reported.on_shift)\n"
        "      capacity: min(reported.load, 60s)\n"
        "    cost: 1\n",
        /* 6: with: names the hub sets or repeated; event fields repeated or also with: names
         * (rule is a rule event's field, not a dispatch event's) */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachycardia}\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: 1\n"
        "    on_assign:\n"
        "      with:\n"
        "        waited_ms: demand.waiting\n"
        "        since: demand.waiting\n"
        "        x: demand.reported.x\n"
        "        x: resource.reported.x\n"
        "      event: {sev: 1, sev: 2, x: 3, rule: r}\n",
        /* 7: event fields the hub sets */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {rule: tachycardia}\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: 1\n"
        "    on_assign: {event: {waited_ms: 1}}\n"
        "  - name: e\n"
        "    demand: {rule: tachycardia}\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: 1\n"
        "    on_assign: {event: {sev: 1, demand: 1}}\n",
        /* 8: a requires: list past RULES_SKILLS_MAX, a skill past RULES_SKILL_LEN */
        "dispatch:\n"
        "  - name: d\n"
        "    demand:\n"
        "      rule: tachycardia\n"
        "      requires: [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q]\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: 1\n"
        "  - name: e\n"
        "    demand:\n"
        "      rule: tachycardia\n"
        "      requires: [ok, "
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx, \"\"]\n"
        "    resource: {match: \"nurse-*\"}\n"
        "    cost: 1\n",
        /* 9: a [set] and a \\ in dispatch globs (the dashboard takes * and ? only) */
        "dispatch:\n"
        "  - name: d\n"
        "    demand: {match: \"ecg-[0-9]*\", rule: tachycardia}\n"
        "    resource: {match: \"nurse\\\\*\"}\n"
        "    cost: 1\n",
    };
    static const char *const want[] = {
        "rules.yaml:6:13: demand: give one of rule: (a demand while that rule fires) or when: "
        "(while a condition holds)\n"
        "rules.yaml:5:5: dispatch: 'resource' is missing\n"
        "rules.yaml:5:5: dispatch: 'cost' is missing (an expression over demand. and "
        "resource.)\n",
        "rules.yaml:6:20: rule: no rule 'tachy' under rules:\n"
        "rules.yaml:7:34: resource: unknown key 'capacty'; did you mean 'capacity'?\n"
        "rules.yaml:8:11: cost: a dispatch expression reads demand.<path> or "
        "resource.<path>, not 'reported'\n",
        "rules.yaml:7:42: skills: expected a path under reported, such as reported.skills\n"
        "rules.yaml:8:11: cost: a dispatch expression reads no history: avg is not allowed "
        "here\n"
        "rules.yaml:10:14: with: 'demand' is set by the hub (in the events, the desired value "
        "or the command's args); choose another name\n"
        "rules.yaml:11:16: desired: the key of the resource's desired state that holds the "
        "assignment (1 to 64 bytes, no '.')\n",
        "rules.yaml:8:11: cost: expected a number\n"
        "rules.yaml:9:18: max_demands: expected 1 to 100000 open demands per decision\n"
        "rules.yaml:10:27: command: 'cmd' is missing\n",
        "rules.yaml:8:11: cost: a dispatch expression reads demand.<path> or resource.<path>, "
        "not 'demnd'\n",
        "rules.yaml:7:13: when: avg() is not allowed here: the hub evaluates this on the twin "
        "alone, with no history, no change list and no timer; windows, age() and changed() "
        "need a rule: use demand.rule: with a rule that has them\n"
        "rules.yaml:8:21: priority: age() is not allowed here: the hub evaluates this on the "
        "twin alone, with no history, no change list and no timer; windows, age() and "
        "changed() need a rule: let a rule that has them write a desired value (a desired: "
        "action) and read that here\n"
        "rules.yaml:11:13: when: changed() is not allowed here: the hub evaluates this on the "
        "twin alone, with no history, no change list and no timer; windows, age() and "
        "changed() need a rule: let a rule that has them write a desired value (a desired: "
        "action) and read that here\n"
        "rules.yaml:12:17: capacity: min() is not allowed here: the hub evaluates this on the "
        "twin alone, with no history, no change list and no timer; windows, age() and "
        "changed() need a rule: let a rule that has them write a desired value (a desired: "
        "action) and read that here\n",
        "rules.yaml:11:9: with: 'waited_ms' is set by the hub (in the events, the desired value "
        "or the command's args); choose another name\n"
        "rules.yaml:12:9: with: 'since' is set by the hub (in the events, the desired value or "
        "the command's args); choose another name\n"
        "rules.yaml:14:9: with: 'x' set twice (first on line 13)\n"
        "rules.yaml:15:23: event: 'sev' set twice (first on line 15)\n"
        "rules.yaml:15:31: event: 'x' is a with: value (line 13) that the event carries; choose "
        "another field name\n",
        "rules.yaml:9:25: event: 'waited_ms' is set by the hub; choose another field name\n"
        "rules.yaml:14:33: event: 'demand' is set by the hub; choose another field name\n",
        "rules.yaml:8:17: requires: 17 skills, more than the limit of 16\n"
        "rules.yaml:14:22: requires: a skill is 1 to 64 bytes, not 65\n"
        "rules.yaml:14:89: requires: a skill is 1 to 64 bytes, not 0\n",
        "rules.yaml:6:21: match: only * and ? are wildcards in a dispatch glob; '[' is not "
        "allowed\n"
        "rules.yaml:7:23: match: only * and ? are wildcards in a dispatch glob; '\\' is not "
        "allowed\n",
    };
    enum { N = sizeof(bodies) / sizeof(bodies[0]) };
    _Static_assert(N == sizeof(want) / sizeof(want[0]), "a want per body");
    _Static_assert(N <= sizeof(text) / sizeof(text[0]), "room for every case");
    struct error_case cases[N];
    for (size_t i = 0; i < N; i++) {
        snprintf(text[i], sizeof(text[i]), "%s%s", ward, bodies[i]);
        cases[i] = (struct error_case){text[i], want[i]};
    }
    expect_errors(cases, N);
}

/* The limits themselves load: RULES_SKILLS_MAX skills, one of RULES_SKILL_LEN bytes; names the
 * hub sets in rule events but not in dispatch events; now() where the hub has a clock. */
static void test_dispatch_load_limits(void)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "%s"
             "dispatch:\n"
             "  - name: d\n"
             "    demand:\n"
             "      when: reported.call == true and now() > 0\n"
             "      requires: [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o,\n"
             "                 %.64s]\n"
             "    resource: {match: \"nurse-*\", capacity: reported.beds}\n"
             "    cost: 1\n"
             "    on_assign:\n"
             "      with: {rule: demand.id, values: demand.waiting}\n"
             "      desired: task\n"
             "      event: {severity: high, state_note: x}\n",
             ward, "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy");
    struct rules_errors errs;
    struct rules_set *rs = parse(text, &errs);
    if (!rs) {
        FAIL("dispatch file did not load: %s", errs.text ? errs.text : "?");
        rules_errors_free(&errs);
        return;
    }
    const struct rules_dispatch *d = rules_set_dispatch(rs, 0);
    CHECK_INT(d->n_requires, RULES_SKILLS_MAX);
    CHECK_INT(strlen(d->requires[RULES_SKILLS_MAX - 1]), RULES_SKILL_LEN);
    CHECK_INT(d->n_with, 2);
    CHECK(d->event_fields && d->event_fields->via.map.size == 2);
    rules_set_free(rs);
    rules_errors_free(&errs);
}

static void test_dispatch_eval(void)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "%s"
             "dispatch:\n"
             "  - name: nurse_call\n"
             "    demand: {match: \"ecg-*\", rule: tachycardia, priority: reported.acuity,\n"
             "             requires: [cardiac]}\n"
             "    resource:\n"
             "      match: \"nurse-*\"\n"
             "      when: connected and reported.on_shift == true\n"
             "      capacity: 2\n"
             "      skills: reported.skills\n"
             "    cost: hypot(demand.reported.x - resource.reported.x, demand.reported.y - "
             "resource.reported.y) - demand.waiting + 10 * resource.load\n"
             "    max_demands: 50\n"
             "    on_assign:\n"
             "      command: {cmd: attend, args: {level: high}, expires: 10m}\n"
             "      with: {bed: demand.id, far: demand.reported.x > 10}\n"
             "      desired: task\n"
             "      event: {severity: high}\n"
             "    on_release: {command: cancel}\n",
             ward);
    struct rules_errors errs;
    struct rules_set *rs = parse(text, &errs);
    if (!rs) {
        FAIL("dispatch file did not load: %s", errs.text ? errs.text : "?");
        rules_errors_free(&errs);
        return;
    }
    CHECK_INT(rules_set_dispatch_count(rs), 1);
    const struct rules_dispatch *d = rules_set_dispatch(rs, 0);
    CHECK(!strcmp(d->name, "nurse_call") && !strcmp(d->demand_rule, "tachycardia"));
    CHECK(!strcmp(d->demand_match, "ecg-*") && !strcmp(d->resource_match, "nurse-*"));
    CHECK_INT(d->resource_prefix_len, 6);
    CHECK_INT(d->n_requires, 1);
    CHECK(!strcmp(d->requires[0], "cardiac") && !strcmp(d->skills_path, "skills"));
    CHECK_INT(d->max_demands, 50);
    CHECK(d->cmd_len == 6 && !memcmp(d->cmd, "attend", 6) && d->expires_ms == 600000);
    CHECK(d->args.type == MSGPACK_OBJECT_MAP && d->args.via.map.size == 1);
    CHECK_INT(d->n_with, 2);
    CHECK(!strcmp(d->desired_key, "task") && d->event_fields && d->event_fields->via.map.size == 1);
    CHECK(d->release_cmd_len == 6 && !memcmp(d->release_cmd, "cancel", 6));
    CHECK(rules_glob_match(d->resource_match, "nurse-01", 8));
    CHECK(!rules_glob_match(d->resource_match, "ecg-01", 6));
    CHECK(rules_glob_match(NULL, "x", 1));

    struct twin_doc dm = make_doc("{\"x\": 13, \"y\": 0}", "{}", "{}");
    struct twin_doc rsrc = make_doc("{\"x\": 10, \"y\": 4, \"on_shift\": true}", "{}", "{}");
    struct rules_twin tw = {
        .now = 10000, .demand = &dm, .resource = &rsrc, .waiting_s = 2, .load = 1};
    tw.doc = &dm;
    struct rules_value v;
    CHECK(rules_expr_eval(d->cost, &tw, &v, NULL) == 0);
    CHECK(v.type == RULES_NUM && fabs(v.n - (5 - 2 + 10)) < 1e-12);
    CHECK(rules_expr_eval(d->with[1].expr, &tw, &v, NULL) == 0);
    CHECK(v.type == RULES_BOOL && v.b);
    CHECK(rules_expr_eval(d->with[0].expr, &tw, &v, NULL) == 0);
    CHECK(v.type == RULES_STR && v.len == 7 && !memcmp(v.s, "ecg-001", 7));
    /* a missing side reads nil: the cost is not a number, so the pair is not allowed */
    tw.resource = NULL;
    CHECK(rules_expr_eval(d->cost, &tw, &v, NULL) == 0);
    CHECK(v.type != RULES_NUM);
    tw.doc = &rsrc;
    CHECK(rules_expr_eval(d->resource_when, &tw, &v, NULL) == 0 && rules_value_true(&v));
    rules_set_free(rs);
    rules_errors_free(&errs);
}

static const struct {
    const char *name;
    void (*fn)(void);
} tests[] = {
    {"expressions", test_expressions},
    {"wake", test_wake},
    {"compile_errors", test_compile_errors},
    {"load_errors", test_load_errors},
    {"order", test_order},
    {"for_and_cooldown", test_for_and_cooldown},
    {"flapping", test_flapping},
    {"absence", test_absence},
    {"chain_and_selection", test_chain_and_selection},
    {"reload", test_reload},
    {"records", test_records},
    {"changes", test_changes},
    {"every_load_errors", test_every_load_errors},
    {"every_schedule", test_every_schedule},
    {"every_firing", test_every_firing},
    {"every_restart", test_every_restart},
    {"every_records", test_every_records},
    {"learn_errors", test_learn_errors},
    {"learn_regressor", test_learn_regressor},
    {"learn_classifier", test_learn_classifier},
    {"dispatch_load_errors", test_dispatch_load_errors},
    {"dispatch_load_limits", test_dispatch_load_limits},
    {"dispatch_eval", test_dispatch_eval},
};

int main(int argc, char **argv)
{
    msgpack_zone_init(&zone, 4096);
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
            continue;
        current = tests[i].name;
        tests[i].fn();
    }
    msgpack_zone_destroy(&zone);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all rules tests passed\n");
    return 0;
}
