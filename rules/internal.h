/* rules/internal.h: what the files of the rules library share and nobody outside sees: tokens,
 * the compiled form of an expression, and the loaded set. Nothing here is part of rules.h's
 * contract. */
#ifndef RULES_INTERNAL_H
#define RULES_INTERNAL_H

#include "rules.h"

#include <stdarg.h>
#include <stdio.h>

/* ---------------------------------------------------------------------------------------------
 * Tokens (lexer.c)
 * ------------------------------------------------------------------------------------------ */

enum tok_kind {
    T_END,
    T_NUM,      /* num */
    T_DURATION, /* num, in ms */
    T_STR,      /* text between the quotes, escapes not yet resolved */
    T_IDENT,
    T_QIDENT, /* `a key` */
    T_LPAREN,
    T_RPAREN,
    T_COMMA,
    T_DOT,
    T_PLUS,
    T_MINUS,
    T_STAR,
    T_SLASH,
    T_PERCENT,
    T_EQ,
    T_NE,
    T_LT,
    T_LE,
    T_GT,
    T_GE,
    T_AND,
    T_OR,
    T_NOT,
    T_TRUE,
    T_FALSE,
    T_NIL,
};

struct token {
    enum tok_kind kind;
    size_t off, len; /* in the text */
    double num;
};

/* Reads the token at text[*pos], skipping blanks; advances *pos. Returns 0 or -EINVAL with
 * "COL: what" in err. */
int rules__lex(const char *text, size_t len, size_t *pos, struct token *t, char *err);
const char *rules__tok_name(enum tok_kind k);

/* ---------------------------------------------------------------------------------------------
 * Compiled expressions (compile.c, eval.c)
 * ------------------------------------------------------------------------------------------ */

enum root {
    ROOT_REPORTED,
    ROOT_DESIRED,
    ROOT_DELTA,
    ROOT_PREDICTED,
    ROOT_CONNECTED,
    ROOT_VERSION,
    ROOT_ID,
    ROOT_LAST_SEEN,
    ROOT_SEQ,
    ROOT_CREATED,
    ROOT_WAITING, /* a dispatch cost's demand.waiting: seconds the demand has waited */
    ROOT_LOAD,    /* a dispatch cost's resource.load: demands the resource has now */
};

/* Whose twin a path reads: the twin being run, or in a dispatch cost the demand's or the
 * resource's. */
enum side { SIDE_SELF = 0, SIDE_DEMAND, SIDE_RESOURCE };

/* A path into the twin: root, then `sub` below it (dotted; empty for the scalar roots). */
struct path {
    enum root root;
    enum side side;
    const char *full; /* "reported.a.b", in the expression's string buffer */
    uint16_t full_len;
    const char *sub; /* "a.b" */
    uint16_t sub_len;
};

enum op {
    OP_CONST,   /* push consts[arg] */
    OP_PATH,    /* push the value at paths[arg] */
    OP_NEG,
    OP_NOT,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_MOD,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_AND,     /* top not true: replace it by false and jump to arg; else pop it */
    OP_OR,      /* top true: replace it by true and jump to arg; else pop it */
    OP_TOBOOL,  /* top becomes true only if it is true */
    OP_CALL,    /* math function fn over the n values on top */
    OP_WINDOW,  /* aggregate fn over the history of paths[arg] for the last `dur` ms */
    OP_AGE,     /* ms since paths[arg] was last written */
    OP_AGE_CMP, /* age(paths[arg]) <cmp fn> consts[n], with the time it flips */
    OP_CHANGED, /* whether this commit wrote paths[arg] */
    OP_NOW,
    OP_RECORD, /* note the top of the stack as a deciding value, text [text_off, +text_len) */
};

enum fn {
    FN_ABS,
    FN_MIN,
    FN_MAX,
    FN_CLAMP,
    FN_SQRT,
    FN_EXP,
    FN_LOG,
    FN_ROUND,
    FN_HYPOT,
    /* windows */
    FN_AVG,
    FN_SUM,
    FN_COUNT,
    FN_STDDEV,
    FN_RATE,
    FN_DELTA,
    FN_ZSCORE,
    FN_WMIN,
    FN_WMAX,
};

struct insn {
    uint8_t op, fn;
    uint16_t n;
    uint32_t arg;
    int64_t dur;
    uint32_t text_off, text_len;
};

struct rules_expr {
    char *text; /* a copy of the source */
    size_t text_len;
    struct insn *code;
    unsigned ncode;
    struct rules_value *consts;
    unsigned nconsts;
    struct path *paths;
    unsigned npaths;
    char *strs; /* path names and string constants */
    unsigned depth;      /* stack slots needed */
    bool reads_all;      /* reads version, last_seen or seq: every change touches it */
    bool time_dependent; /* age, now, windows */
    int64_t tick_ms;     /* re-evaluate after this when the next change can't be computed */
    enum rules_type type; /* static type of the result; RULES_OTHER: unknown until run */
};

/* rules_expr_compile for an expression the host evaluates on one twin alone, with no history,
 * no change list and no wake time (a dispatch's demand and resource expressions): windows,
 * age() and changed() are errors there, whose message ends with `instead` (borrowed: what to
 * write in their place). Same returns as rules_expr_compile. */
int rules__expr_compile_stateless(const char *text, size_t len, const char *instead,
                                  struct rules_expr **out, char *err);

/* Evaluates; `rec` (may be NULL) receives the deciding values (OP_RECORD). */
int rules__eval(const struct rules_expr *e, const struct rules_twin *tw, struct rules_value *out,
                int64_t *wake, struct rules_fire *rec);

/* Reads the value at `p` in the twin; type NIL when absent. */
void rules__path_value(const struct twin_doc *doc, const struct path *p, struct rules_value *v);

/* ---------------------------------------------------------------------------------------------
 * A loaded set (load.c, engine.c)
 * ------------------------------------------------------------------------------------------ */

struct action_list {
    struct rules_action *v;
    unsigned n;
    const msgpack_object *event_fields; /* the `event` action's map, or NULL */
};

struct rule {
    char name[RULES_NAME_MAX + 1];
    char *match; /* glob; NULL: every twin */
    struct rules_expr *when; /* a rule with `every:` and no `when:` gets `true` */
    int64_t for_ms, cooldown_ms;
    int64_t every_ms; /* every: the period of on_fire's periodic runs; 0: none */
    bool schedule;    /* every: with no when: on_fire every period, no state, no transitions */
    struct action_list on_fire, on_resolve;
    uint64_t hash; /* of the definition: name, match, when, for, cooldown, every (actions are
                      not part of it: changing them keeps the state) */
    unsigned line;
};

struct model_def {
    char name[RULES_NAME_MAX + 1];
    char *file;
    struct rules_expr **inputs;
    unsigned ninputs;
    struct rules_expr *target; /* a reported path; NULL: none */
    int64_t horizon_ms;
    double rate;               /* learn: > 0; 0 when the model does not learn */
    uint64_t hash;             /* of the definition: file's bytes, inputs, target, horizon, rate */
    struct twin_model *model;  /* loaded with the set (model.c) */
    double *x, *values, *proba; /* its input and result buffers, sized at load */
    double *tmp;                /* LSTM: one series while its window is put in order */
    /* the record of the twin being run, decoded (learn.c) */
    size_t n_theta, n_x;        /* learn: n_params and n_inputs; else 0 */
    double *theta;              /* n_theta */
    double *pend_x;             /* RULES_MODEL_PENDING_MAX * n_x */
    int64_t pend_ts[RULES_MODEL_PENDING_MAX];
    double pend_y[RULES_MODEL_PENDING_MAX]; /* the value, or a classifier's label index */
    struct rules_model_score score;
};

/* Loads the .twm of model m (file relative to base_dir), checks its inputs, target and learn
 * settings against it and sizes its buffers. Returns 0, or an error with the reason in err
 * (RULES_ERR_LEN). */
int rules__model_open(struct model_def *m, const char *base_dir, char *err);
void rules__model_close(struct model_def *m);
/* An input or target that is a plain path under reported (the LSTM's inputs, targets). */
const struct path *rules__reported_path(const struct rules_expr *e);

/* learn.c: the twin's record of model m. Reads rec into m's buffers (a missing, damaged or
 * other definition's record starts over from the file's weights). */
void rules__record_load(struct model_def *m, const struct rules_model_record *rec);
/* Writes m's buffers into rec and marks it changed. */
void rules__record_store(const struct model_def *m, struct rules_model_record *rec);
/* Adds the prediction just made (m->x, m->values or label) to the waiting list. */
void rules__record_wait(struct model_def *m, int64_t now, double y);

/* An index entry: a path key ("reported.hr", "reported", "*") -> rules reading it. */
struct index_slot {
    const char *key; /* NULL: empty slot */
    size_t key_len;
    unsigned *rules; /* ranks */
    unsigned n, cap;
};

struct rules_set {
    struct rule *rules; /* in evaluation (dependency) order */
    unsigned nrules;
    struct rules_dispatch *dispatch; /* dispatch: entries, in file order */
    unsigned ndispatch;
    struct model_def *models;
    unsigned nmodels;
    struct index_slot *index;
    unsigned index_cap; /* a power of two */
    unsigned *byname;   /* rank + 1 by name hash; 0: empty */
    unsigned byname_cap;
    msgpack_zone zone;  /* action arguments */
    char *keys;         /* index key strings */
    struct rules_options opt;
};

/* Builds rs->index and rs->byname from rs->rules in their current order (ranks). Returns 0 or
 * -ENOMEM. rules__index_free frees both. */
int rules__index_build(struct rules_set *rs);
void rules__index_free(struct rules_set *rs);
/* Calls cb for every rank indexed under a key that the change of `path` touches. */
void rules__index_touched(const struct rules_set *rs, const char *path, size_t len,
                          void (*cb)(void *ctx, unsigned rank), void *ctx);

/* Little-endian 64-bit fields of stored records. */
static inline void rules__put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t rules__get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* FNV-1a, for definition hashes. */
uint64_t rules__hash(uint64_t h, const void *p, size_t n);

/* Edit distance capped at 3, for "did you mean". */
unsigned rules__distance(const char *a, size_t alen, const char *b, size_t blen);

#endif
