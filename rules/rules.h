/* rules: operators' rules files. load.c reads the YAML file, lexer.c and compile.c turn every
 * expression into a compact program once, eval.c runs a program against one twin without
 * allocating, engine.c picks the rules a change touches and steps each (rule, twin) state
 * machine and its every: period. It knows nothing of MQTT or LMDB: a twin, a clock and the
 * host's callbacks go in (history, persisted rule state, actions), transitions and actions come
 * out.
 *
 * Threads: a loaded struct rules_set is immutable and may be read by any number of threads at
 * once; a struct rules_scratch belongs to one thread. */
#ifndef RULES_H
#define RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "models/model.h"
#include "twins.h"

#define RULES_ERR_LEN 512   /* one error message, "file:line:col: what" */
#define RULES_NAME_MAX 64   /* bytes of a rule or model name */
#define RULES_STATE_LEN 56  /* bytes of an encoded state record (rules_record_encode) */
#define RULES_STATE_V1_LEN 48 /* bytes of a record written before every: (read, never written) */
#define RULES_VALUES_MAX 8  /* values reported with a transition */
#define RULES_CHANGES_MAX 64
#define RULES_CHANGES_BYTES 4096
#define RULES_STACK_MAX 32 /* values an expression may hold at once while evaluating */

/* ---------------------------------------------------------------------------------------------
 * Values and expressions
 * ------------------------------------------------------------------------------------------ */

enum rules_type { RULES_NIL, RULES_BOOL, RULES_NUM, RULES_STR, RULES_OTHER /* map or array */ };

/* A value an expression produced. `s` points into the twin or the compiled expression: valid
 * while both are. */
struct rules_value {
    enum rules_type type;
    bool b;
    double n;
    const char *s;
    uint32_t len;
};

/* The paths one committed change wrote, dotted from the document's root ("reported.hr",
 * "desired.sample_hz", "predicted.hr_forecast", "connected"). Past RULES_CHANGES_MAX paths or
 * RULES_CHANGES_BYTES bytes it degrades to "everything changed" (all). Caller's memory. */
struct rules_changes {
    bool all;
    unsigned n;
    uint16_t off[RULES_CHANGES_MAX], len[RULES_CHANGES_MAX];
    char buf[RULES_CHANGES_BYTES];
};

void rules_changes_reset(struct rules_changes *c);
void rules_changes_add(struct rules_changes *c, const char *path, size_t len);
/* Adds every leaf path that merge patch `patch` writes (a nil, which deletes, included), below
 * `section`: {"a": {"b": 1}} under "desired" adds "desired.a.b". */
void rules_changes_add_patch(struct rules_changes *c, const char *section,
                             const msgpack_object *patch);
/* Whether a change wrote `path` or something above or below it. */
bool rules_changes_touch(const struct rules_changes *c, const char *path, size_t len);

/* Reads the history of reported.<path>: calls cb for each point with ts >= since_ms, oldest
 * first (twin_history_read's contract). */
typedef int (*rules_history_fn)(void *ctx, const char *path, size_t len, int64_t since_ms,
                                twin_history_cb cb, void *cb_ctx);

/* One twin as an evaluation sees it. */
struct rules_twin {
    const struct twin_doc *doc;
    int64_t now;                         /* hub clock, ms since epoch */
    struct rules_changes *changes; /* what this commit wrote; runs add what actions write.
                                      NULL (rules_expr_eval only): nothing */
    rules_history_fn history;            /* NULL: every window is empty */
    void *history_ctx;
    /* A dispatch cost (rules_expr_compile_pair) reads these instead of doc: */
    const struct twin_doc *demand, *resource; /* NULL: their paths read nil */
    double waiting_s;                         /* demand.waiting: seconds since the demand opened */
    double load; /* resource.load: demands assigned to the resource now */
};

struct rules_expr;

/* Compiles one expression. Errors go to err as "COL: what" (1-based column in text).
 * Returns 0, -EINVAL (bad expression), -ENOMEM. Caller frees with rules_expr_free. */
int rules_expr_compile(const char *text, size_t len, struct rules_expr **out, char *err);
/* The same for an expression over a pair of twins, a dispatch's cost or assignment values:
 * every path starts with demand. or resource. (demand.reported.pos.x, resource.connected),
 * and demand.waiting and resource.load are numbers the host supplies; history windows, age()
 * and changed() are errors there. */
int rules_expr_compile_pair(const char *text, size_t len, struct rules_expr **out, char *err);
void rules_expr_free(struct rules_expr *e);

/* Evaluates `e` against twin `tw`. Allocates nothing. *wake (may be NULL) is lowered to the
 * earliest hub time after tw->now at which the result may change with no new data (age()
 * crossing a threshold, a history point leaving a window, now()); it is left alone when the
 * result depends on data only. Returns 0, or a negative error of tw->history. */
int rules_expr_eval(const struct rules_expr *e, const struct rules_twin *tw,
                    struct rules_value *out, int64_t *wake);

/* Whether a value counts as true: only the boolean true does. */
static inline bool rules_value_true(const struct rules_value *v)
{
    return v->type == RULES_BOOL && v->b;
}

/* ---------------------------------------------------------------------------------------------
 * Rules files
 * ------------------------------------------------------------------------------------------ */

struct rules_options {
    unsigned max_rules;    /* default 10,000 */
    unsigned max_models;   /* default 100 */
    unsigned max_errors;   /* errors collected before giving up; default 50 */
    size_t max_file_bytes; /* default 4 MiB */
    int64_t tick_ms; /* how soon to evaluate again an expression whose next change cannot be
                        computed (now(), age() inside arithmetic); default 1000 */
    int64_t min_every_ms; /* the shortest `every:` period a file may ask for; default 1000 */
};
void rules_options_init(struct rules_options *o);

/* Every error found by one load, one line each ("rules.yaml:12:17: unknown function 'avgg';
 * did you mean 'avg'?\n"). Caller's memory; rules_errors_free frees the text. */
struct rules_errors {
    char *text;
    size_t len, cap;
    unsigned count;
};
void rules_errors_free(struct rules_errors *e);

struct rules_set;

/* Loads a rules file. Relative model file names are relative to the file's folder.
 * Returns 0, -EINVAL (the file is invalid: every error in errs), -ENOENT/-EIO (cannot read it:
 * in errs), -ENOMEM. On error *out is untouched. Caller frees with rules_set_free. */
int rules_set_load(const char *path, const struct rules_options *o, struct rules_set **out,
                   struct rules_errors *errs);
/* The same from text in memory; `name` is what errors call the file. */
int rules_set_parse(const char *name, const char *text, size_t len, const char *base_dir,
                    const struct rules_options *o, struct rules_set **out,
                    struct rules_errors *errs);
void rules_set_free(struct rules_set *rs);

unsigned rules_set_count(const struct rules_set *rs);
/* The name of rule i (0 <= i < count), in evaluation order. */
const char *rules_set_name(const struct rules_set *rs, unsigned i);
/* Finds a rule by name; -1 when there is none. */
int rules_set_find(const struct rules_set *rs, const char *name, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Models (models: in the rules file; twins/models runs them)
 * ------------------------------------------------------------------------------------------ */

unsigned rules_set_model_count(const struct rules_set *rs);
const char *rules_set_model_name(const struct rules_set *rs, unsigned i);

/* How well a model has done for one twin since its definition last changed: its predictions
 * compared with the target values that came after them (`target:` in the rules file). */
struct rules_model_score {
    bool classifier;        /* accuracy = correct / scored; else MAE and RMSE of sum_abs/sum_sq */
    bool learns;            /* `learn:`: the twin has weights of its own */
    uint64_t scored;        /* predictions compared with their target */
    uint64_t correct;       /* classifiers: those whose label was the target */
    double sum_abs, sum_sq; /* regressors: sums of |error| and error^2 */
    uint64_t updates;       /* learning steps taken */
    uint64_t missed;        /* predictions never scored: their target came more than a horizon
                               late, or RULES_MODEL_PENDING_MAX were already waiting */
    unsigned pending;       /* predictions waiting for their target */
};

/* One prediction; the arrays belong to the set and hold until its next prediction. */
struct rules_prediction {
    const struct twin_model_info *info;
    const double *values; /* info->n_outputs */
    const double *proba;  /* info->n_classes when info->has_proba, else NULL */
    size_t label;         /* classifiers */
    const struct rules_model_score *score; /* the twin's, with this prediction waiting; NULL
                                              when the model has no target */
};

/* A model's record for one twin, which the host keeps (twin_model_state_*): the twin's weights
 * when the model learns, its predictions waiting for their target, its score. The host reads
 * it into buf (RULES_MODEL_STATE_MAX bytes; len 0: it has none), and after a call stores
 * buf[0..len) when `changed`. A record that is damaged or was made by another definition of the
 * model (file, inputs, target, horizon, rate) starts over. */
#define RULES_MODEL_STATE_MAX TWIN_MODEL_STATE_MAX
#define RULES_MODEL_PENDING_MAX 8    /* predictions of one (twin, model) waiting for a target */
#define RULES_LEARN_INPUTS_MAX 256   /* inputs of a model that learns */
struct rules_model_record {
    unsigned char *buf;
    size_t len;
    bool changed;
};

/* Runs model i of the set on twin tw: evaluates its inputs (for an LSTM, each input is a
 * reported path and gives its last `window` history points, oldest first) and predicts, with
 * the twin's own weights when the model learns. When the model has a target and rec is given,
 * the prediction joins rec's waiting list (rec->changed). rec may be NULL: the file's weights,
 * nothing tracked.
 * Returns 0; -ENODATA when an input is missing or not a number, or there is too little history,
 * or a learning model's value is not finite (nothing predicted, rec unchanged); or a history
 * error. Uses the model's own buffers, as rules_model_score does: one thread at a time per set
 * (the hub predicts and scores only inside its single write transaction). */
int rules_model_predict(const struct rules_set *rs, unsigned i, const struct rules_twin *tw,
                        struct rules_model_record *rec, struct rules_prediction *out);

/* The target of model i ("reported.heart_rate"), or NULL when it has none. */
const char *rules_set_model_target(const struct rules_set *rs, unsigned i, size_t *len);

/* Scores the predictions of model i waiting in rec against the target's value in tw->doc, the
 * twin after a change that wrote it: each prediction made at least `horizon` before tw->now is
 * compared (regressors: error = target - value; classifiers: right or wrong), and, when the
 * model learns, the twin's weights take one least-mean-squares step towards the target with
 * the inputs of that prediction. A prediction whose target came more than a horizon late, or
 * that is dated after tw->now (the clock went back), or whose error a double can't sum, is
 * dropped (missed); one whose target is missing or of the wrong type waits. When anything
 * changed, rec->changed is set and *score (may be NULL) is the new score. Returns 0. Model
 * buffers as rules_model_predict. */
int rules_model_score(const struct rules_set *rs, unsigned i, const struct rules_twin *tw,
                      struct rules_model_record *rec, struct rules_model_score *score);

/* Whether a stored record belongs to a loaded model with the same definition (reload
 * sweeps). */
bool rules_model_record_current(const struct rules_set *rs, const char *model, size_t len,
                                const void *buf, size_t n);
/* Reads the score of a stored record with no rules set at hand (twinctl). Returns 0 or
 * -EBADMSG. */
int rules_model_record_score(const void *buf, size_t n, struct rules_model_score *score);

/* ---------------------------------------------------------------------------------------------
 * Rule state, transitions and actions
 * ------------------------------------------------------------------------------------------ */

enum rules_state { RULES_INACTIVE = 0, RULES_PENDING, RULES_FIRING };
const char *rules_state_name(enum rules_state s);

/* The state of one (rule, twin), as persisted by the host. */
struct rules_record {
    enum rules_state state;
    uint64_t def_hash;      /* of the rule's definition when the state was entered */
    int64_t since;          /* entered the state (hub ms) */
    int64_t fire_at;        /* PENDING: when it fires if the condition still holds */
    int64_t cooldown_until; /* no firing before this */
    int64_t wake;           /* evaluate again at this time even if nothing changes; INT64_MAX */
    int64_t repeat_at;      /* every: the next periodic run of on_fire (firing, or a rule with no
                               when); 0: none */
};
/* Encodes into RULES_STATE_LEN bytes; decodes (returns -EBADMSG when buf is not a record). A
 * record of RULES_STATE_V1_LEN bytes (written before every:, alone or zero-padded to
 * RULES_STATE_LEN) decodes with repeat_at 0. */
void rules_record_encode(const struct rules_record *r, unsigned char *buf);
int rules_record_decode(const void *buf, size_t len, struct rules_record *r);

enum rules_action_kind { RULES_ACT_COMMAND, RULES_ACT_DESIRED, RULES_ACT_EVENT, RULES_ACT_PREDICT };

/* One action of on_fire or on_resolve. Objects live in the rules set. */
struct rules_action {
    enum rules_action_kind kind;
    const char *cmd; /* COMMAND */
    size_t cmd_len;
    msgpack_object args;  /* COMMAND: its args (NIL: none); DESIRED: the patch; EVENT: fields */
    int64_t expires_ms;   /* COMMAND: relative deadline, 0 = none */
    unsigned model;       /* PREDICT: index of the model */
};

/* A value the condition read, with the text that read it ("reported.hr", "avg(...)"). */
struct rules_input {
    const char *text;
    size_t len;
    struct rules_value v;
};

/* A transition of (rule, twin) and what decided it; or, with `periodic`, a run of on_fire on an
 * `every:` period that changes no state (from == to: firing, or inactive for a rule with no
 * when). */
struct rules_fire {
    const char *rule;
    enum rules_state from, to;
    bool periodic;
    const char *event;     /* what twins/{id}/events says: pending, firing, resolved, inactive;
                              periodic */
    int64_t ts;            /* hub clock */
    const msgpack_object *fields; /* the rule's `event` action fields for this edge, or NULL */
    unsigned n_values;     /* the paths and functions the condition read, with their values */
    struct rules_input values[RULES_VALUES_MAX];
};

/* What the engine asks of its host, for the twin being run. Every callback returns 0 or a
 * negative error, which stops the run and is returned by it (the host should then abort its
 * transaction). */
struct rules_host {
    void *ctx;
    /* The record of `rule` for this twin: 0 with RULES_STATE_LEN bytes in buf (a record of
     * RULES_STATE_V1_LEN bytes zero-padded), or -ENOENT. */
    int (*state_get)(void *ctx, const char *rule, size_t len, void *buf);
    int (*state_put)(void *ctx, const char *rule, size_t len, const void *buf);
    int (*state_del)(void *ctx, const char *rule, size_t len);
    /* Calls cb for every record of this twin (the timer's walk). */
    int (*state_list)(void *ctx,
                      int (*cb)(void *cb_ctx, const char *rule, size_t len, const void *buf,
                                size_t n),
                      void *cb_ctx);
    /* Carries out one action of a transition inside the host's transaction. When it changes
     * the twin, it updates the document tw->doc points to and adds what it wrote to
     * tw->changes, so that the rules after this one see it. */
    int (*action)(void *ctx, const struct rules_fire *f, const struct rules_action *a);
    /* After the actions of a transition: the event for twins/{id}/events. Also after the actions
     * of a periodic run (f->periodic) whose on_fire has an `event` action; a periodic run
     * without one publishes nothing of its own. */
    int (*transition)(void *ctx, const struct rules_fire *f);
};

/* Per-thread working memory of runs. */
struct rules_scratch;
struct rules_scratch *rules_scratch_new(void);
void rules_scratch_free(struct rules_scratch *sc);

struct rules_run_result {
    unsigned evaluated;   /* conditions evaluated */
    unsigned transitions; /* state changes */
    unsigned periodic;    /* periodic runs of on_fire (every:) */
    int64_t wake;         /* earliest wake among the records written; INT64_MAX: none */
};

/* Runs the rules a committed change touches, for twin tw->doc->id: rules whose match admits
 * the twin and that read a path in tw->changes (which the host extends with what actions
 * write), in dependency order, each at most once. res->wake is the earliest wake among the
 * records this run wrote (the host keeps the earlier of it and the twin's current one).
 * Returns 0, a host error, or -ENOMEM. */
int rules_run_change(const struct rules_set *rs, struct rules_scratch *sc, struct rules_twin *tw,
                     const struct rules_host *h, struct rules_run_result *res);

/* Runs the rules of a twin whose wake time has come: every record with wake <= tw->now is
 * evaluated again, or run for its every: period (and the rules that read what their actions
 * write, as rules_run_change);
 * records of rules no longer loaded, or whose definition changed, are deleted. tw->changes
 * must be given, empty. res->wake is the twin's earliest wake among all its records
 * afterwards (INT64_MAX: none). */
int rules_run_timer(const struct rules_set *rs, struct rules_scratch *sc, struct rules_twin *tw,
                    const struct rules_host *h, struct rules_run_result *res);

/* Whether a record belongs to a loaded rule with the same definition (reload sweeps). */
bool rules_record_current(const struct rules_set *rs, const char *rule, size_t len,
                          const void *buf, size_t n);

/* ---------------------------------------------------------------------------------------------
 * Dispatch (dispatch: in the rules file): which twins are demands and which are resources, what
 * pairing them costs, and what an assignment does. The hub keeps the open demands and the
 * assignments in the store and solves the assignment problem (below) at every change.
 * ------------------------------------------------------------------------------------------ */

#define RULES_DISPATCH_MAX 16 /* dispatch entries in one file */
#define RULES_WITH_MAX 16     /* values computed at assignment (with:) */
#define RULES_SKILLS_MAX 16   /* skills a demand may require (a requires: list) */
#define RULES_SKILL_LEN 64    /* bytes of one skill in a requires: list */

struct rules_with {
    char name[TWIN_KEY_MAX + 1];
    struct rules_expr *expr; /* a pair expression */
};

/* One dispatch entry, read-only while its set is loaded. */
struct rules_dispatch {
    char name[RULES_NAME_MAX + 1];
    unsigned line;
    /* demand: a twin the demand match admits while `demand_rule` fires for it, or while
     * demand_when holds */
    const char *demand_match; /* glob; NULL: every twin */
    const char *demand_rule;  /* a rule of the set; NULL: demand_when */
    struct rules_expr *demand_when;
    struct rules_expr *priority;            /* over the demand; NULL: 1 */
    const char *requires[RULES_SKILLS_MAX]; /* skills a resource must have */
    unsigned n_requires;
    const char *requires_path; /* or the demand's reported.<path> (a string or a list of them);
                                  NULL: none. The sub-path below reported. */
    /* resources: twins the resource match admits */
    const char *resource_match;       /* glob (required) */
    size_t resource_prefix_len;       /* its literal prefix: the store is scanned from there */
    struct rules_expr *resource_when; /* may take new demands; NULL: always */
    struct rules_expr *capacity;      /* demands at once, over the resource; NULL: 1 */
    const char *skills_path; /* the resource's reported.<path>: a string or a list; NULL: none */
    struct rules_expr *cost; /* a pair expression; not a number: the pair is not allowed */
    unsigned max_demands;    /* open demands one decision solves to the optimum */
    /* on_assign */
    const char *cmd; /* a command to the resource; NULL: none */
    size_t cmd_len;
    msgpack_object args; /* its static args (a map or NIL) */
    int64_t expires_ms;
    struct rules_with with[RULES_WITH_MAX]; /* args, event and desired values of the pair */
    unsigned n_with;
    const char *desired_key; /* the resource's desired.<key> holds the assignment; NULL */
    const msgpack_object *event_fields; /* extra fields of the dispatch events; NULL */
    /* on_release: a command to the resource when its demand ends before it is done */
    const char *release_cmd;
    size_t release_cmd_len;
    msgpack_object release_args;
};

unsigned rules_set_dispatch_count(const struct rules_set *rs);
const struct rules_dispatch *rules_set_dispatch(const struct rules_set *rs, unsigned i);
/* Whether twin id `s` matches glob `g`: fnmatch(3) with no flags in the C locale, byte by byte
 * (* and ? over any bytes, '/' and a leading '.' included; [set], [!set] and [^set] with
 * ranges and [:class:]; \ quotes the next byte); NULL: everything. A dispatch entry's globs
 * take * and ? only (load.c), so that web/js/dispatch.js's globRe matches the same twins. */
bool rules_glob_match(const char *g, const char *s, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Dispatch: the assignment problem of open demands and free resources (assign.c)
 * ------------------------------------------------------------------------------------------ */

/* One decision: every open demand against every resource with room left. */
struct rules_assign {
    unsigned n_demands, n_resources;
    const double *cost;       /* n_demands x n_resources, row-major; NAN: the pair is not allowed
                                 (skills, eligibility); every other value finite */
    const unsigned *capacity; /* per resource: demands it may still take (0: none) */
    const double *priority;   /* per demand: finite, > 0 */
};

/* Solves p to the optimum with GLPK's simplex (a transportation problem: its LP optimum is
 * integral): first as many demands of the highest priority as can be served, then as many of
 * the next, and so on (only the order of the priorities counts, not their size), then the
 * least total cost among those assignments. out[i] (n_demands) is demand i's resource, or
 * -1 when it gets none; *total the summed cost of the pairs chosen. Allocates; any thread, one
 * call at a time per thread. Returns 0, -EDOM (a cost infinite, a priority not finite and
 * > 0), -ENOMEM, -EIO (the solver failed: out untouched). */
int rules_assign_solve(const struct rules_assign *p, int *out, double *total);

/* The baseline and the fallback past a size cap: demands in order of priority (highest first;
 * ties: lower index first) each take the allowed resource with room left at the least cost
 * (ties: lower index). Same out and total as rules_assign_solve. Returns 0, -EDOM or
 * -ENOMEM. */
int rules_assign_greedy(const struct rules_assign *p, int *out, double *total);

#endif
