/* compile: parses an expression into a small tree, checks the types it can know before any twin
 * is seen, and emits the postfix program eval.c runs. It owns the grammar, the function table
 * and "did you mean"; it does not evaluate anything.
 *
 *   expr  := or
 *   or    := and ('or' and)*
 *   and   := not ('and' not)*
 *   not   := 'not' not | cmp
 *   cmp   := add (('=='|'!='|'<'|'<='|'>'|'>=') add)?      a < b < c is an error
 *   add   := mul (('+'|'-') mul)*
 *   mul   := unary (('*'|'/'|'%') unary)*
 *   unary := '-' unary | primary
 *   primary := NUMBER | DURATION | STRING | true | false | nil | path | NAME '(' args ')'
 *            | '(' expr ')'
 *   path  := ROOT ('.' (NAME | `quoted name`))*
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define EXPR_TEXT_MAX 4096
#define NEST_MAX 48 /* parser recursion */
#define ARGS_MAX 8
#define WINDOW_MAX_MS (365.0 * 86400000)

enum ty { TY_ANY, TY_NUM, TY_BOOL, TY_STR, TY_NIL };

enum nk { N_CONST, N_PATH, N_NEG, N_NOT, N_BIN, N_AND, N_OR, N_CALL, N_WINDOW, N_AGE, N_CHANGED, N_NOW };

struct node {
    enum nk kind;
    enum ty ty;
    uint8_t op; /* N_BIN: OP_*; N_CALL, N_WINDOW: FN_* */
    unsigned a, b;          /* children (N_NEG, N_NOT: a; N_BIN, N_AND, N_OR: a, b) */
    unsigned args[ARGS_MAX]; /* N_CALL */
    unsigned nargs;
    unsigned path, cst; /* N_PATH, N_WINDOW, N_AGE, N_CHANGED: path; N_CONST: cst */
    int64_t dur;        /* N_WINDOW */
    bool is_dur;        /* N_CONST from a duration literal */
    bool nil_test;      /* N_BIN == or != with a literal nil: a presence test */
    size_t off, len;    /* text span */
};

struct pc {
    const char *text;
    size_t len, pos;
    struct token tok;
    char *err;
    unsigned nest;
    struct node *nodes;
    unsigned nnodes, capnodes;
    struct rules_value *consts;
    size_t *const_str; /* offset into strs of a string constant; SIZE_MAX: not a string */
    unsigned nconsts, capconsts;
    struct path *paths;
    size_t *path_full; /* offsets into strs */
    unsigned npaths, cappaths;
    char *strs;
    size_t nstrs, capstrs;
    struct insn *code;
    unsigned ncode, capcode, depth, maxdepth, nrecord;
    bool reads_all, time_dependent;
    bool pair; /* a dispatch cost: paths start with demand. or resource. */
    const char *instead; /* non-NULL: evaluated with no history, changes or timer (windows,
                            age() and changed() are errors); what to write in their place */
};

static const struct fninfo {
    const char *name;
    enum fn fn;
    unsigned min, max;
    bool window;
} fns[] = {
    {"abs", FN_ABS, 1, 1, false},     {"min", FN_MIN, 1, ARGS_MAX, false},
    {"max", FN_MAX, 1, ARGS_MAX, false}, {"clamp", FN_CLAMP, 3, 3, false},
    {"sqrt", FN_SQRT, 1, 1, false},   {"exp", FN_EXP, 1, 1, false},
    {"log", FN_LOG, 1, 1, false},     {"round", FN_ROUND, 1, 2, false},
    {"hypot", FN_HYPOT, 2, 2, false}, {"avg", FN_AVG, 2, 2, true},
    {"sum", FN_SUM, 2, 2, true},      {"count", FN_COUNT, 2, 2, true},
    {"stddev", FN_STDDEV, 2, 2, true}, {"rate", FN_RATE, 2, 2, true},
    {"delta", FN_DELTA, 2, 2, true},  {"zscore", FN_ZSCORE, 2, 2, true},
    {"age", 0, 1, 1, false},          {"changed", 0, 1, 1, false},
    {"now", 0, 0, 0, false},
};
#define NFNS (sizeof(fns) / sizeof(fns[0]))

static const struct {
    const char *name;
    enum root root;
    bool section; /* has a map below it */
} roots[] = {
    {"reported", ROOT_REPORTED, true}, {"desired", ROOT_DESIRED, true},
    {"delta", ROOT_DELTA, true},       {"predicted", ROOT_PREDICTED, true},
    {"connected", ROOT_CONNECTED, false}, {"version", ROOT_VERSION, false},
    {"id", ROOT_ID, false},            {"last_seen", ROOT_LAST_SEEN, false},
    {"seq", ROOT_SEQ, false},          {"created", ROOT_CREATED, false},
};
#define NROOTS (sizeof(roots) / sizeof(roots[0]))

static int fail_at(struct pc *c, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(struct pc *c, size_t off, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(c->err, RULES_ERR_LEN, "%zu: ", off + 1);
    va_start(ap, fmt);
    vsnprintf(c->err + n, RULES_ERR_LEN - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static const char *ty_name(enum ty t)
{
    static const char *const n[] = {"unknown", "a number", "true or false", "a string", "nil"};
    return n[t];
}

/* ---------------------------------------------------------------------------------------------
 * Growing arrays
 * ------------------------------------------------------------------------------------------ */

static int grow(void **p, unsigned *cap, unsigned need, size_t size)
{
    if (need <= *cap)
        return 0;
    unsigned n = *cap ? *cap * 2 : 8;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, (size_t)n * size);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

static int new_node(struct pc *c, enum nk kind, size_t off, unsigned *out)
{
    if (grow((void **)&c->nodes, &c->capnodes, c->nnodes + 1, sizeof(struct node)) < 0)
        return -ENOMEM;
    struct node *n = &c->nodes[c->nnodes];
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->off = off;
    *out = c->nnodes++;
    return 0;
}

/* Appends bytes to the string buffer; *at receives their offset. */
static int add_str(struct pc *c, const char *s, size_t n, size_t *at)
{
    if (c->nstrs + n + 1 > c->capstrs) {
        size_t cap = c->capstrs ? c->capstrs * 2 : 256;
        while (cap < c->nstrs + n + 1)
            cap *= 2;
        char *q = realloc(c->strs, cap);
        if (!q)
            return -ENOMEM;
        c->strs = q;
        c->capstrs = cap;
    }
    *at = c->nstrs;
    memcpy(c->strs + c->nstrs, s, n);
    c->strs[c->nstrs + n] = '\0';
    c->nstrs += n + 1;
    return 0;
}

static int add_const(struct pc *c, const struct rules_value *v, size_t str_at, unsigned *out)
{
    unsigned cap = c->capconsts;
    if (grow((void **)&c->consts, &c->capconsts, c->nconsts + 1, sizeof(*c->consts)) < 0)
        return -ENOMEM;
    if (c->capconsts != cap && grow((void **)&c->const_str, &cap, c->capconsts, sizeof(size_t)) < 0)
        return -ENOMEM;
    c->consts[c->nconsts] = *v;
    c->const_str[c->nconsts] = str_at;
    *out = c->nconsts++;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------------------------ */

static int next(struct pc *c)
{
    return rules__lex(c->text, c->len, &c->pos, &c->tok, c->err);
}

static int expect(struct pc *c, enum tok_kind k, const char *what)
{
    if (c->tok.kind != k)
        return fail_at(c, c->tok.off, "expected %s%s, found %s", rules__tok_name(k), what,
                       rules__tok_name(c->tok.kind));
    return next(c);
}

static int parse_or(struct pc *c, unsigned *out);

static bool word_tok(enum tok_kind k)
{
    return k == T_IDENT || k == T_AND || k == T_OR || k == T_NOT || k == T_TRUE ||
           k == T_FALSE || k == T_NIL;
}

static void suggest(char *buf, size_t size, const char *name, size_t len, bool functions)
{
    unsigned best = 3;
    const char *pick = NULL;
    unsigned n = functions ? NFNS : NROOTS;
    for (unsigned i = 0; i < n; i++) {
        const char *cand = functions ? fns[i].name : roots[i].name;
        unsigned d = rules__distance(name, len, cand, strlen(cand));
        if (d < best) {
            best = d;
            pick = cand;
        }
    }
    if (pick)
        snprintf(buf, size, "; did you mean '%s'?", pick);
    else
        buf[0] = '\0';
}

/* Where the text consumed so far ends (before the blanks ahead of the current token). */
static size_t span_end(struct pc *c)
{
    size_t e = c->tok.off;
    while (e > 0 && isspace((unsigned char)c->text[e - 1]))
        e--;
    return e;
}

static int add_path_node(struct pc *c, size_t start, enum root root, enum side side,
                         const char *full, size_t flen, size_t sub_len, enum ty ty, unsigned *out);

/* In a pair expression: "demand." or "resource." before the root; *side says which, and
 * demand.waiting or resource.load is a root of its own (*special). Leaves the token on the
 * root's name. */
static int parse_side(struct pc *c, enum side *side, enum root *special, char *full, size_t *flen)
{
    const char *name = c->text + c->tok.off;
    size_t nlen = c->tok.len;
    bool demand = nlen == 6 && !memcmp(name, "demand", 6);
    if (!demand && !(nlen == 8 && !memcmp(name, "resource", 8)))
        return fail_at(c, c->tok.off,
                       "a dispatch expression reads demand.<path> or resource.<path>, not '%.*s'",
                       (int)(nlen > 40 ? 40 : nlen), name);
    *side = demand ? SIDE_DEMAND : SIDE_RESOURCE;
    *flen = (size_t)snprintf(full, TWIN_PATH_MAX + 16, "%s.", demand ? "demand" : "resource");
    int rc = next(c);
    if (rc < 0)
        return rc;
    if (c->tok.kind != T_DOT)
        return fail_at(c, c->tok.off, "expected '.' after '%s'", demand ? "demand" : "resource");
    if ((rc = next(c)) < 0)
        return rc;
    if (!word_tok(c->tok.kind))
        return fail_at(c, c->tok.off, "expected a path after '%s.'",
                       demand ? "demand" : "resource");
    name = c->text + c->tok.off;
    nlen = c->tok.len;
    *special = ROOT_REPORTED; /* none */
    if (demand && nlen == 7 && !memcmp(name, "waiting", 7))
        *special = ROOT_WAITING;
    if (!demand && nlen == 4 && !memcmp(name, "load", 4))
        *special = ROOT_LOAD;
    return 0;
}

static int parse_path(struct pc *c, unsigned *out)
{
    size_t start = c->tok.off;
    char full[TWIN_PATH_MAX + 16];
    size_t flen = 0;
    enum side side = SIDE_SELF;
    enum root special = ROOT_REPORTED;
    int rc;
    if (c->pair && (rc = parse_side(c, &side, &special, full, &flen)) < 0)
        return rc;
    const char *name = c->text + c->tok.off;
    size_t nlen = c->tok.len;
    unsigned r = 0;
    while (r < NROOTS && !(strlen(roots[r].name) == nlen && memcmp(roots[r].name, name, nlen) == 0))
        r++;
    if (special != ROOT_REPORTED) {
        /* demand.waiting, resource.load: numbers with nothing below them */
        memcpy(full + flen, name, nlen);
        flen += nlen;
        if ((rc = next(c)) < 0)
            return rc;
        if (c->tok.kind == T_DOT)
            return fail_at(c, c->tok.off, "'%.*s' has nothing below it", (int)nlen, name);
        return add_path_node(c, start, special, side, full, flen, 0, TY_NUM, out);
    }
    if (r == NROOTS) {
        char hint[64];
        suggest(hint, sizeof(hint), name, nlen, false);
        if (hint[0])
            return fail_at(c, start, "unknown name '%.*s'%s", (int)nlen, name, hint);
        suggest(hint, sizeof(hint), name, nlen, true);
        return fail_at(c, start,
                       "unknown name '%.*s'%s (a path starts with reported, desired, delta or "
                       "predicted, or is connected, version, id, last_seen, seq or created)",
                       (int)nlen, name, hint);
    }
    size_t prefix = flen;
    flen += (size_t)snprintf(full + flen, sizeof(full) - flen, "%s", roots[r].name);
    if ((rc = next(c)) < 0)
        return rc;
    while (c->tok.kind == T_DOT) {
        if (!roots[r].section)
            return fail_at(c, c->tok.off, "'%s' has nothing below it", roots[r].name);
        if ((rc = next(c)) < 0)
            return rc;
        if (!word_tok(c->tok.kind) && c->tok.kind != T_QIDENT)
            return fail_at(c, c->tok.off, "expected a key after '.', found %s",
                           rules__tok_name(c->tok.kind));
        const char *k = c->text + c->tok.off;
        for (size_t i = 0; i < c->tok.len; i++)
            if (k[i] == '.' || (unsigned char)k[i] < 0x20)
                return fail_at(c, c->tok.off, "a key cannot hold '.' or control characters");
        if (c->tok.len > TWIN_KEY_MAX)
            return fail_at(c, c->tok.off, "key longer than %d bytes", TWIN_KEY_MAX);
        if (flen + 1 + c->tok.len > TWIN_PATH_MAX)
            return fail_at(c, c->tok.off, "path longer than %d bytes", TWIN_PATH_MAX);
        full[flen++] = '.';
        memcpy(full + flen, k, c->tok.len);
        flen += c->tok.len;
        if ((rc = next(c)) < 0)
            return rc;
    }
    size_t rootlen = prefix + strlen(roots[r].name);
    enum ty ty = TY_ANY;
    switch (roots[r].root) {
    case ROOT_CONNECTED:
        ty = TY_BOOL;
        break;
    case ROOT_ID:
        ty = TY_STR;
        break;
    case ROOT_VERSION:
    case ROOT_LAST_SEEN:
    case ROOT_SEQ:
    case ROOT_CREATED:
        ty = TY_NUM;
        break;
    default:
        break;
    }
    return add_path_node(c, start, roots[r].root, side, full, flen,
                         flen > rootlen ? flen - rootlen - 1 : 0, ty, out);
}

/* Adds the node of a path read at `start`: one paths[] entry per distinct full text. */
static int add_path_node(struct pc *c, size_t start, enum root root, enum side side,
                         const char *full, size_t flen, size_t sub_len, enum ty ty, unsigned *out)
{
    int rc;
    unsigned p = 0;
    while (p < c->npaths && !(c->paths[p].full_len == flen &&
                              memcmp(c->strs + c->path_full[p], full, flen) == 0))
        p++;
    if (p == c->npaths) {
        unsigned cap = c->cappaths;
        if (grow((void **)&c->paths, &c->cappaths, c->npaths + 1, sizeof(*c->paths)) < 0 ||
            (c->cappaths != cap &&
             grow((void **)&c->path_full, &cap, c->cappaths, sizeof(size_t)) < 0))
            return -ENOMEM;
        size_t at;
        if (add_str(c, full, flen, &at) < 0)
            return -ENOMEM;
        c->paths[p] = (struct path){
            .root = root, .side = side, .full_len = (uint16_t)flen, .sub_len = (uint16_t)sub_len};
        c->path_full[p] = at;
        c->npaths++;
        if (root == ROOT_VERSION || root == ROOT_LAST_SEEN || root == ROOT_SEQ)
            c->reads_all = true;
    }
    if ((rc = new_node(c, N_PATH, start, out)) < 0)
        return rc;
    struct node *n = &c->nodes[*out];
    n->path = p;
    n->len = span_end(c) - start;
    n->ty = ty;
    return 0;
}

static int check_num(struct pc *c, unsigned child, const char *what)
{
    struct node *n = &c->nodes[child];
    if (n->ty != TY_ANY && n->ty != TY_NUM)
        return fail_at(c, n->off, "%s needs a number; this is %s", what, ty_name(n->ty));
    return 0;
}

static int parse_call(struct pc *c, unsigned *out)
{
    size_t start = c->tok.off;
    const char *name = c->text + c->tok.off;
    size_t nlen = c->tok.len;
    unsigned f = 0;
    while (f < NFNS && !(strlen(fns[f].name) == nlen && memcmp(fns[f].name, name, nlen) == 0))
        f++;
    if (f == NFNS) {
        char hint[64];
        suggest(hint, sizeof(hint), name, nlen, true);
        return fail_at(c, start, "unknown function '%.*s'%s", (int)nlen, name, hint);
    }
    int rc = next(c); /* the name */
    if (rc == 0)
        rc = next(c); /* '(' */
    if (rc < 0)
        return rc;
    unsigned args[ARGS_MAX], nargs = 0;
    if (c->tok.kind != T_RPAREN) {
        for (;;) {
            if (nargs == ARGS_MAX)
                return fail_at(c, c->tok.off, "%s takes at most %d arguments", fns[f].name,
                               ARGS_MAX);
            if ((rc = parse_or(c, &args[nargs])) < 0)
                return rc;
            nargs++;
            if (c->tok.kind != T_COMMA)
                break;
            if ((rc = next(c)) < 0)
                return rc;
        }
    }
    size_t close = c->tok.off;
    if ((rc = expect(c, T_RPAREN, " to close the arguments")) < 0)
        return rc;
    /* min(reported.x, 60s) and max(...) are window aggregates: a path and a duration */
    bool window = fns[f].window;
    enum fn fn = fns[f].fn;
    if ((fn == FN_MIN || fn == FN_MAX) && nargs == 2 &&
        c->nodes[args[0]].kind == N_PATH && c->nodes[args[1]].kind == N_CONST &&
        c->nodes[args[1]].is_dur) {
        window = true;
        fn = fn == FN_MIN ? FN_WMIN : FN_WMAX;
    }
    if (nargs < fns[f].min || nargs > fns[f].max) {
        if (fns[f].min == fns[f].max)
            return fail_at(c, start, "%s takes %u argument%s, not %u", fns[f].name, fns[f].min,
                           fns[f].min == 1 ? "" : "s", nargs);
        return fail_at(c, start, "%s takes %u to %u arguments, not %u", fns[f].name, fns[f].min,
                       fns[f].max, nargs);
    }
    const char *fname = fns[f].name;
    bool is_age = strcmp(fname, "age") == 0, is_changed = strcmp(fname, "changed") == 0;
    bool is_now = strcmp(fname, "now") == 0;
    enum nk kind = window ? N_WINDOW : is_age ? N_AGE : is_changed ? N_CHANGED : is_now ? N_NOW
                                                                                       : N_CALL;
    if ((rc = new_node(c, kind, start, out)) < 0)
        return rc;
    struct node *n = &c->nodes[*out];
    n->len = close + 1 - start;
    n->op = (uint8_t)fn;
    n->ty = kind == N_CHANGED ? TY_BOOL : TY_NUM;
    if (c->pair && (window || is_age || is_changed))
        return fail_at(c, start, "a dispatch expression reads no history: %s is not allowed here",
                       fname);
    if (c->instead && (window || is_age || is_changed))
        return fail_at(c, start,
                       "%s() is not allowed here: the hub evaluates this on the twin alone, with "
                       "no history, no change list and no timer; %s",
                       fname, c->instead);
    if (window || is_age || is_changed) {
        struct node *p = &c->nodes[args[0]];
        if (p->kind != N_PATH)
            return fail_at(c, p->off, "%s takes a path as its first argument, such as "
                                      "reported.heart_rate", fname);
        struct path *pp = &c->paths[p->path];
        n->path = p->path;
        if (window && (pp->root != ROOT_REPORTED || pp->sub_len == 0))
            return fail_at(c, p->off, "%s reads history, which is kept for reported values "
                                      "only: use a path such as reported.heart_rate", fname);
        if (is_age && ((pp->root != ROOT_REPORTED && pp->root != ROOT_DESIRED) ||
                       pp->sub_len == 0))
            return fail_at(c, p->off, "age needs a path under reported or desired");
        c->time_dependent |= window || is_age;
    }
    if (window) {
        struct node *d = &c->nodes[args[1]];
        if (d->kind != N_CONST || !d->is_dur)
            return fail_at(c, d->off, "%s needs a duration as its second argument, such as 60s",
                           fname);
        double ms = c->consts[d->cst].n;
        if (!(ms >= 1) || ms > WINDOW_MAX_MS)
            return fail_at(c, d->off, "a window is 1ms to 365d long");
        n->dur = (int64_t)ms;
    }
    if (is_now)
        c->time_dependent = true;
    if (kind == N_CALL) {
        for (unsigned i = 0; i < nargs; i++)
            if ((rc = check_num(c, args[i], fname)) < 0)
                return rc;
        memcpy(n->args, args, sizeof(args[0]) * nargs);
        n->nargs = nargs;
    }
    return 0;
}

static int parse_primary(struct pc *c, unsigned *out)
{
    struct token t = c->tok;
    struct rules_value v = {.type = RULES_NIL};
    size_t str_at = SIZE_MAX;
    int rc;

    switch (t.kind) {
    case T_LPAREN:
        if ((rc = next(c)) < 0 || (rc = parse_or(c, out)) < 0)
            return rc;
        return expect(c, T_RPAREN, " to close '('");
    case T_IDENT: {
        size_t save = c->pos;
        struct token peek;
        if ((rc = rules__lex(c->text, c->len, &save, &peek, c->err)) < 0)
            return rc;
        return peek.kind == T_LPAREN ? parse_call(c, out) : parse_path(c, out);
    }
    case T_NUM:
    case T_DURATION:
        v.type = RULES_NUM;
        v.n = t.num;
        break;
    case T_TRUE:
    case T_FALSE:
        v.type = RULES_BOOL;
        v.b = t.kind == T_TRUE;
        break;
    case T_NIL:
        break;
    case T_STR: {
        /* resolve \" \' \\ \n \t; anything else after a backslash is an error */
        char buf[EXPR_TEXT_MAX];
        size_t n = 0;
        for (size_t i = 0; i < t.len; i++) {
            char ch = c->text[t.off + i];
            if (ch == '\\') {
                char e = c->text[t.off + ++i];
                ch = e == 'n' ? '\n' : e == 't' ? '\t' : e;
                if (e != 'n' && e != 't' && e != '\\' && e != '"' && e != '\'')
                    return fail_at(c, t.off + i - 1, "unknown escape '\\%c'", e);
            }
            buf[n++] = ch;
        }
        if ((rc = add_str(c, buf, n, &str_at)) < 0)
            return rc;
        v.type = RULES_STR;
        v.len = (uint32_t)n;
        break;
    }
    default:
        return fail_at(c, t.off, "expected a value, found %s", rules__tok_name(t.kind));
    }
    unsigned cst;
    size_t off = t.kind == T_STR ? t.off - 1 : t.off; /* the opening quote */
    if ((rc = add_const(c, &v, str_at, &cst)) < 0 || (rc = new_node(c, N_CONST, off, out)) < 0)
        return rc;
    struct node *n = &c->nodes[*out];
    n->cst = cst;
    n->is_dur = t.kind == T_DURATION;
    n->len = t.kind == T_STR ? t.len + 2 : t.len;
    n->ty = v.type == RULES_NUM ? TY_NUM : v.type == RULES_BOOL ? TY_BOOL
                                  : v.type == RULES_STR   ? TY_STR
                                                          : TY_NIL;
    return next(c);
}

static int enter(struct pc *c)
{
    if (++c->nest > NEST_MAX)
        return fail_at(c, c->tok.off, "expression nested deeper than %d", NEST_MAX);
    return 0;
}

static int parse_unary(struct pc *c, unsigned *out)
{
    int rc = enter(c);
    if (rc < 0)
        return rc;
    if (c->tok.kind == T_MINUS) {
        size_t off = c->tok.off;
        unsigned a;
        if ((rc = next(c)) < 0 || (rc = parse_unary(c, &a)) < 0)
            return rc;
        if ((rc = check_num(c, a, "'-'")) < 0)
            return rc;
        struct node *an = &c->nodes[a];
        if (an->kind == N_CONST) { /* a negative literal stays a literal (age comparisons) */
            c->consts[an->cst].n = -c->consts[an->cst].n;
            an->len += an->off - off;
            an->off = off;
            *out = a;
        } else {
            if ((rc = new_node(c, N_NEG, off, out)) < 0)
                return rc;
            c->nodes[*out].a = a;
            c->nodes[*out].ty = TY_NUM;
        }
    } else {
        rc = parse_primary(c, out);
    }
    c->nest--;
    return rc;
}

static int binary(struct pc *c, enum nk kind, enum op op, unsigned a, unsigned b, unsigned *out)
{
    int rc = new_node(c, kind, c->nodes[a].off, out);
    if (rc < 0)
        return rc;
    struct node *n = &c->nodes[*out];
    n->op = (uint8_t)op;
    n->a = a;
    n->b = b;
    return 0;
}

static int parse_mul(struct pc *c, unsigned *out)
{
    int rc = parse_unary(c, out);
    while (rc == 0 && (c->tok.kind == T_STAR || c->tok.kind == T_SLASH || c->tok.kind == T_PERCENT)) {
        enum op op = c->tok.kind == T_STAR ? OP_MUL : c->tok.kind == T_SLASH ? OP_DIV : OP_MOD;
        const char *name = c->tok.kind == T_STAR ? "'*'" : c->tok.kind == T_SLASH ? "'/'" : "'%'";
        unsigned b;
        if ((rc = next(c)) < 0 || (rc = parse_unary(c, &b)) < 0 ||
            (rc = check_num(c, *out, name)) < 0 || (rc = check_num(c, b, name)) < 0 ||
            (rc = binary(c, N_BIN, op, *out, b, out)) < 0)
            return rc;
        c->nodes[*out].ty = TY_NUM;
    }
    return rc;
}

static int parse_add(struct pc *c, unsigned *out)
{
    int rc = parse_mul(c, out);
    while (rc == 0 && (c->tok.kind == T_PLUS || c->tok.kind == T_MINUS)) {
        enum op op = c->tok.kind == T_PLUS ? OP_ADD : OP_SUB;
        const char *name = op == OP_ADD ? "'+'" : "'-'";
        unsigned b;
        if ((rc = next(c)) < 0 || (rc = parse_mul(c, &b)) < 0 ||
            (rc = check_num(c, *out, name)) < 0 || (rc = check_num(c, b, name)) < 0 ||
            (rc = binary(c, N_BIN, op, *out, b, out)) < 0)
            return rc;
        c->nodes[*out].ty = TY_NUM;
    }
    return rc;
}

static bool cmp_tok(enum tok_kind k)
{
    return k == T_EQ || k == T_NE || k == T_LT || k == T_LE || k == T_GT || k == T_GE;
}

static int parse_cmp(struct pc *c, unsigned *out)
{
    int rc = parse_add(c, out);
    if (rc < 0 || !cmp_tok(c->tok.kind))
        return rc;
    struct token t = c->tok;
    static const enum op ops[] = {[T_EQ] = OP_EQ, [T_NE] = OP_NE, [T_LT] = OP_LT,
                                  [T_LE] = OP_LE, [T_GT] = OP_GT, [T_GE] = OP_GE};
    unsigned b;
    if ((rc = next(c)) < 0 || (rc = parse_add(c, &b)) < 0)
        return rc;
    if (cmp_tok(c->tok.kind))
        return fail_at(c, c->tok.off, "comparisons do not chain; write a < b and b < c");
    enum ty ta = c->nodes[*out].ty, tb = c->nodes[b].ty;
    bool order = t.kind != T_EQ && t.kind != T_NE;
    if (order && (ta == TY_NIL || tb == TY_NIL))
        return fail_at(c, t.off, "%.*s with nil is always false; test presence with == nil or "
                                 "!= nil", (int)t.len, c->text + t.off);
    if (order && (ta == TY_BOOL || tb == TY_BOOL))
        return fail_at(c, t.off, "%.*s does not order true and false", (int)t.len, c->text + t.off);
    if (ta != TY_ANY && tb != TY_ANY && ta != tb && ta != TY_NIL && tb != TY_NIL)
        return fail_at(c, t.off, "compares %s with %s: always false", ty_name(ta), ty_name(tb));
    if ((rc = binary(c, N_BIN, ops[t.kind], *out, b, out)) < 0)
        return rc;
    c->nodes[*out].ty = TY_BOOL;
    c->nodes[*out].nil_test = ta == TY_NIL || tb == TY_NIL;
    return 0;
}

static int check_bool(struct pc *c, unsigned child, const char *what)
{
    struct node *n = &c->nodes[child];
    if (n->ty != TY_ANY && n->ty != TY_BOOL)
        return fail_at(c, n->off, "'%s' needs true or false; this is %s", what, ty_name(n->ty));
    return 0;
}

static int parse_not(struct pc *c, unsigned *out)
{
    int rc = enter(c);
    if (rc < 0)
        return rc;
    if (c->tok.kind == T_NOT) {
        size_t off = c->tok.off;
        unsigned a;
        if ((rc = next(c)) < 0 || (rc = parse_not(c, &a)) < 0 || (rc = check_bool(c, a, "not")) < 0 ||
            (rc = new_node(c, N_NOT, off, out)) < 0)
            return rc;
        c->nodes[*out].a = a;
        c->nodes[*out].ty = TY_BOOL;
    } else {
        rc = parse_cmp(c, out);
    }
    c->nest--;
    return rc;
}

static int parse_and(struct pc *c, unsigned *out)
{
    int rc = parse_not(c, out);
    while (rc == 0 && c->tok.kind == T_AND) {
        unsigned b;
        if ((rc = next(c)) < 0 || (rc = parse_not(c, &b)) < 0 ||
            (rc = check_bool(c, *out, "and")) < 0 || (rc = check_bool(c, b, "and")) < 0 ||
            (rc = binary(c, N_AND, OP_AND, *out, b, out)) < 0)
            return rc;
        c->nodes[*out].ty = TY_BOOL;
    }
    return rc;
}

static int parse_or(struct pc *c, unsigned *out)
{
    int rc = enter(c);
    if (rc < 0)
        return rc;
    rc = parse_and(c, out);
    while (rc == 0 && c->tok.kind == T_OR) {
        unsigned b;
        if ((rc = next(c)) < 0 || (rc = parse_and(c, &b)) < 0 ||
            (rc = check_bool(c, *out, "or")) < 0 || (rc = check_bool(c, b, "or")) < 0 ||
            (rc = binary(c, N_OR, OP_OR, *out, b, out)) < 0)
            return rc;
        c->nodes[*out].ty = TY_BOOL;
    }
    c->nest--;
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Emitting
 * ------------------------------------------------------------------------------------------ */

static int emit(struct pc *c, struct insn in, int stack)
{
    if (grow((void **)&c->code, &c->capcode, c->ncode + 1, sizeof(struct insn)) < 0)
        return -ENOMEM;
    c->code[c->ncode++] = in;
    c->depth = (unsigned)((int)c->depth + stack);
    if (c->depth > c->maxdepth)
        c->maxdepth = c->depth;
    return 0;
}

/* Notes the value just pushed for node n as a deciding value, if it is an input. */
static int record(struct pc *c, const struct node *n, bool inside_call)
{
    if (inside_call || c->nrecord == RULES_VALUES_MAX)
        return 0;
    c->nrecord++;
    return emit(c, (struct insn){.op = OP_RECORD, .text_off = (uint32_t)n->off,
                                 .text_len = (uint32_t)n->len}, 0);
}

static bool is_age_cmp(const struct pc *c, const struct node *n)
{
    if (n->kind != N_BIN || n->op < OP_LT || n->op > OP_GE)
        return false;
    const struct node *a = &c->nodes[n->a], *b = &c->nodes[n->b];
    return (a->kind == N_AGE && b->kind == N_CONST && b->ty == TY_NUM) ||
           (b->kind == N_AGE && a->kind == N_CONST && a->ty == TY_NUM);
}

static int gen(struct pc *c, unsigned idx, bool inside_call)
{
    const struct node *n = &c->nodes[idx];
    int rc;

    switch (n->kind) {
    case N_CONST:
        return emit(c, (struct insn){.op = OP_CONST, .arg = n->cst}, +1);
    case N_PATH:
        if ((rc = emit(c, (struct insn){.op = OP_PATH, .arg = n->path}, +1)) < 0)
            return rc;
        return record(c, n, inside_call);
    case N_NEG:
    case N_NOT:
        if ((rc = gen(c, n->a, inside_call)) < 0)
            return rc;
        return emit(c, (struct insn){.op = n->kind == N_NEG ? OP_NEG : OP_NOT}, 0);
    case N_BIN:
        if (is_age_cmp(c, n)) {
            /* age(p) OP k, or k OP age(p) turned around, fused so eval can say when it flips */
            bool age_left = c->nodes[n->a].kind == N_AGE;
            const struct node *age = &c->nodes[age_left ? n->a : n->b];
            const struct node *k = &c->nodes[age_left ? n->b : n->a];
            static const uint8_t flip[] = {[OP_LT] = OP_GT, [OP_LE] = OP_GE, [OP_GT] = OP_LT,
                                           [OP_GE] = OP_LE};
            uint8_t op = age_left ? n->op : flip[n->op];
            bool rec = !inside_call && c->nrecord < RULES_VALUES_MAX;
            c->nrecord += rec;
            return emit(c, (struct insn){.op = OP_AGE_CMP, .fn = op, .n = (uint16_t)k->cst,
                                         .arg = age->path, .dur = rec,
                                         .text_off = (uint32_t)age->off,
                                         .text_len = (uint32_t)age->len}, +1);
        }
        if ((rc = gen(c, n->a, inside_call)) < 0 || (rc = gen(c, n->b, inside_call)) < 0)
            return rc;
        return emit(c, (struct insn){.op = n->op, .fn = n->nil_test}, -1);
    case N_AND:
    case N_OR: {
        if ((rc = gen(c, n->a, inside_call)) < 0)
            return rc;
        unsigned jump = c->ncode;
        if ((rc = emit(c, (struct insn){.op = n->kind == N_AND ? OP_AND : OP_OR}, -1)) < 0 ||
            (rc = gen(c, n->b, inside_call)) < 0 ||
            (rc = emit(c, (struct insn){.op = OP_TOBOOL}, 0)) < 0)
            return rc;
        c->code[jump].arg = c->ncode;
        return 0;
    }
    case N_CALL:
        for (unsigned i = 0; i < n->nargs; i++)
            if ((rc = gen(c, n->args[i], true)) < 0)
                return rc;
        if ((rc = emit(c, (struct insn){.op = OP_CALL, .fn = n->op, .n = (uint16_t)n->nargs},
                       1 - (int)n->nargs)) < 0)
            return rc;
        return record(c, n, inside_call);
    case N_WINDOW:
    case N_AGE:
        if ((rc = emit(c, (struct insn){.op = n->kind == N_WINDOW ? OP_WINDOW : OP_AGE,
                                        .fn = n->op, .arg = n->path, .dur = n->dur}, +1)) < 0)
            return rc;
        return record(c, n, inside_call);
    case N_CHANGED:
        return emit(c, (struct insn){.op = OP_CHANGED, .arg = n->path}, +1);
    case N_NOW:
        return emit(c, (struct insn){.op = OP_NOW}, +1);
    }
    return -EINVAL;
}

/* ---------------------------------------------------------------------------------------------
 * The entry points
 * ------------------------------------------------------------------------------------------ */

static void pc_free(struct pc *c)
{
    free(c->nodes);
    free(c->consts);
    free(c->const_str);
    free(c->paths);
    free(c->path_full);
    free(c->strs);
    free(c->code);
}

static int compile(const char *text, size_t len, bool pair, const char *instead,
                   struct rules_expr **out, char *err)
{
    struct pc c = {.text = text, .len = len, .err = err, .pair = pair, .instead = instead};
    unsigned root;
    int rc;

    if (len == 0)
        return snprintf(err, RULES_ERR_LEN, "1: empty expression"), -EINVAL;
    if (len > EXPR_TEXT_MAX)
        return snprintf(err, RULES_ERR_LEN, "1: expression longer than %d bytes", EXPR_TEXT_MAX),
               -EINVAL;
    if (memchr(text, '\0', len))
        return snprintf(err, RULES_ERR_LEN, "%zu: NUL byte in the expression",
                        (size_t)((const char *)memchr(text, '\0', len) - text) + 1),
               -EINVAL;
    if ((rc = next(&c)) < 0 || (rc = parse_or(&c, &root)) < 0)
        goto fail;
    if (c.tok.kind != T_END) {
        rc = fail_at(&c, c.tok.off, "unexpected %s after the expression",
                     rules__tok_name(c.tok.kind));
        goto fail;
    }
    if ((rc = gen(&c, root, false)) < 0)
        goto fail;
    if (c.maxdepth > RULES_STACK_MAX) {
        rc = fail_at(&c, 0, "expression needs more than %d values at once; split it",
                     RULES_STACK_MAX);
        goto fail;
    }
    struct rules_expr *e = calloc(1, sizeof(*e));
    if (!e || !(e->text = malloc(len + 1))) {
        free(e);
        rc = -ENOMEM;
        goto fail;
    }
    memcpy(e->text, text, len);
    e->text[len] = '\0';
    e->text_len = len;
    e->code = c.code;
    e->ncode = c.ncode;
    e->consts = c.consts;
    e->nconsts = c.nconsts;
    e->paths = c.paths;
    e->npaths = c.npaths;
    e->strs = c.strs;
    e->depth = c.maxdepth;
    e->reads_all = c.reads_all;
    e->time_dependent = c.time_dependent;
    e->tick_ms = 1000;
    static const enum rules_type types[] = {[TY_ANY] = RULES_OTHER, [TY_NUM] = RULES_NUM,
                                            [TY_BOOL] = RULES_BOOL, [TY_STR] = RULES_STR,
                                            [TY_NIL] = RULES_NIL};
    e->type = types[c.nodes[root].ty];
    /* offsets into strs become pointers now that strs stops moving */
    for (unsigned i = 0; i < c.npaths; i++) {
        struct path *p = &e->paths[i];
        p->full = e->strs + c.path_full[i];
        p->sub = p->sub_len ? p->full + p->full_len - p->sub_len : p->full + p->full_len;
    }
    for (unsigned i = 0; i < c.nconsts; i++)
        if (c.const_str[i] != SIZE_MAX)
            e->consts[i].s = e->strs + c.const_str[i];
    free(c.nodes);
    free(c.const_str);
    free(c.path_full);
    *out = e;
    return 0;
fail:
    pc_free(&c);
    return rc;
}

void rules_expr_free(struct rules_expr *e)
{
    if (!e)
        return;
    free(e->text);
    free(e->code);
    free(e->consts);
    free(e->paths);
    free(e->strs);
    free(e);
}

unsigned rules__distance(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Levenshtein over short names (case-insensitive); anything longer than 32 is far. */
    unsigned row[33];
    if (alen > 32 || blen > 32)
        return 99;
    for (size_t j = 0; j <= blen; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= alen; i++) {
        unsigned prev = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= blen; j++) {
            unsigned cur = row[j];
            unsigned sub =
                prev + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            unsigned ins = row[j] + 1, del = row[j - 1] + 1;
            unsigned best = ins < del ? ins : del;
            row[j] = sub < best ? sub : best;
            prev = cur;
        }
    }
    return row[blen];
}

int rules_expr_compile(const char *text, size_t len, struct rules_expr **out, char *err)
{
    return compile(text, len, false, NULL, out, err);
}

int rules_expr_compile_pair(const char *text, size_t len, struct rules_expr **out, char *err)
{
    return compile(text, len, true, NULL, out, err);
}

int rules__expr_compile_stateless(const char *text, size_t len, const char *instead,
                                  struct rules_expr **out, char *err)
{
    return compile(text, len, false, instead, out, err);
}
