/* eval: runs a compiled expression against one twin on a fixed stack, allocating nothing, and
 * says when its result could change with no new data (the wake time). It owns the meaning of
 * every operator and function; compile.c owns the grammar and the static checks.
 *
 * Defined results (the README's rules section repeats them):
 * - A missing field is nil. Arithmetic or a function with a nil, string or boolean operand
 *   gives nil; any comparison with nil is false, except == nil and != nil written literally.
 * - Division or % by zero, and any result that is NaN (sqrt(-1), log(-1)), give nil; NaN never
 *   leaves the evaluator. Infinities are kept (log(0) is -inf).
 * - and, or and not treat only true as true: nil and every non-boolean are not true.
 * - Durations are numbers of milliseconds; age() and now() count milliseconds; rate() is per
 *   second.
 * - Windows cover [now - duration, now] on the hub's clock over the stored history points
 *   (whose times are the device's ts). An empty window: count and sum 0, the rest nil; rate,
 *   delta and zscore need two points; stddev is the population standard deviation; zscore is
 *   (latest - mean) / stddev, nil when stddev is 0. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static void set_num(struct rules_value *v, double x)
{
    memset(v, 0, sizeof(*v));
    if (isnan(x))
        return; /* nil */
    v->type = RULES_NUM;
    v->n = x;
}

static void set_bool(struct rules_value *v, bool b)
{
    memset(v, 0, sizeof(*v));
    v->type = RULES_BOOL;
    v->b = b;
}

static void from_object(const msgpack_object *o, struct rules_value *v)
{
    memset(v, 0, sizeof(*v));
    if (!o)
        return;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: set_num(v, (double)o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: set_num(v, (double)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: set_num(v, o->via.f64); break;
    case MSGPACK_OBJECT_BOOLEAN: set_bool(v, o->via.boolean); break;
    case MSGPACK_OBJECT_STR:
        v->type = RULES_STR;
        v->s = o->via.str.ptr;
        v->len = o->via.str.size;
        break;
    case MSGPACK_OBJECT_NIL: break;
    default: v->type = RULES_OTHER; break;
    }
}

static const msgpack_object *section(const struct twin_doc *d, enum root r)
{
    switch (r) {
    case ROOT_REPORTED: return &d->reported;
    case ROOT_DESIRED: return &d->desired;
    case ROOT_DELTA: return &d->delta;
    case ROOT_PREDICTED: return &d->predicted;
    default: return NULL;
    }
}

void rules__path_value(const struct twin_doc *d, const struct path *p, struct rules_value *v)
{
    memset(v, 0, sizeof(*v));
    switch (p->root) {
    case ROOT_CONNECTED: set_bool(v, d->connected); return;
    case ROOT_VERSION: set_num(v, (double)d->version); return;
    case ROOT_LAST_SEEN: set_num(v, (double)d->last_seen); return;
    case ROOT_CREATED: set_num(v, (double)d->created); return;
    case ROOT_SEQ:
        if (d->has_seq)
            set_num(v, (double)d->seq);
        return;
    case ROOT_ID:
        v->type = RULES_STR;
        v->s = d->id;
        v->len = (uint32_t)d->id_len;
        return;
    default: break;
    }
    const msgpack_object *sec = section(d, p->root);
    if (!sec || sec->type != MSGPACK_OBJECT_MAP)
        return;
    if (p->sub_len == 0) {
        v->type = RULES_OTHER;
        return;
    }
    from_object(twin_value_path(sec, p->sub, p->sub_len), v);
}

/* The latest write time under a meta entry: the number itself, or the greatest below a map. */
static bool meta_ts(const msgpack_object *o, unsigned depth, int64_t *ts)
{
    if (!o || depth > TWIN_DEPTH_CAP)
        return false;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *ts = o->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *ts = o->via.i64;
        return true;
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return false;
    bool any = false;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        int64_t t = 0;
        if (meta_ts(&o->via.map.ptr[i].val, depth + 1, &t) && (!any || t > *ts)) {
            *ts = t;
            any = true;
        }
    }
    return any;
}

static bool written_at(const struct twin_doc *d, const struct path *p, int64_t *ts)
{
    const msgpack_object *meta = p->root == ROOT_DESIRED ? &d->meta_desired : &d->meta_reported;
    if (meta->type != MSGPACK_OBJECT_MAP)
        return false;
    return meta_ts(twin_value_path(meta, p->sub, p->sub_len), 0, ts);
}

static void lower(int64_t *wake, int64_t now, int64_t t)
{
    if (wake && t > now && t < *wake)
        *wake = t;
}

/* ---------------------------------------------------------------------------------------------
 * Windows
 * ------------------------------------------------------------------------------------------ */

struct window {
    uint64_t n;
    double mean, m2, sum, min, max; /* m2: Welford's sum of squared differences */
    int64_t first_ts, last_ts;
    double first, last;
};

static int window_point(void *ctx, int64_t ts, double v)
{
    struct window *w = ctx;
    if (w->n == 0) {
        w->first_ts = ts;
        w->first = v;
        w->min = w->max = v;
    }
    w->n++;
    double d = v - w->mean;
    w->mean += d / (double)w->n;
    w->m2 += d * (v - w->mean);
    w->sum += v;
    if (v < w->min)
        w->min = v;
    if (v > w->max)
        w->max = v;
    w->last_ts = ts;
    w->last = v;
    return 0;
}

static int window(const struct rules_twin *tw, const struct insn *in, const struct path *p,
                  struct rules_value *v, int64_t *wake)
{
    struct window w = {0};
    int64_t since = tw->now - in->dur;
    if (tw->history) {
        int rc = tw->history(tw->history_ctx, p->sub, p->sub_len, since, window_point, &w);
        if (rc < 0)
            return rc;
    }
    /* the window changes when its oldest point leaves it */
    if (w.n && w.first_ts <= INT64_MAX - in->dur - 1)
        lower(wake, tw->now, w.first_ts + in->dur + 1);
    double sd = w.n ? sqrt(w.m2 / (double)w.n) : NAN;
    double r = NAN;
    switch ((enum fn)in->fn) {
    case FN_COUNT: r = (double)w.n; break;
    case FN_SUM: r = w.sum; break;
    case FN_AVG: r = w.n ? w.mean : NAN; break;
    case FN_WMIN: r = w.n ? w.min : NAN; break;
    case FN_WMAX: r = w.n ? w.max : NAN; break;
    case FN_STDDEV: r = sd; break;
    case FN_DELTA: r = w.n >= 2 ? w.last - w.first : NAN; break;
    case FN_RATE:
        r = w.n >= 2 && w.last_ts > w.first_ts
                ? (w.last - w.first) / ((double)(w.last_ts - w.first_ts) / 1000.0)
                : NAN;
        break;
    case FN_ZSCORE: r = w.n >= 2 && sd > 0 ? (w.last - w.mean) / sd : NAN; break;
    default: break;
    }
    set_num(v, r);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Operators and functions
 * ------------------------------------------------------------------------------------------ */

static bool equal(const struct rules_value *a, const struct rules_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case RULES_NIL: return true;
    case RULES_BOOL: return a->b == b->b;
    case RULES_NUM: return a->n == b->n;
    case RULES_STR: return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
    default: return false;
    }
}

/* <0, 0, >0, or 2 when the two cannot be ordered */
static int order(const struct rules_value *a, const struct rules_value *b)
{
    if (a->type == RULES_NUM && b->type == RULES_NUM)
        return a->n < b->n ? -1 : a->n > b->n ? 1 : 0;
    if (a->type == RULES_STR && b->type == RULES_STR) {
        size_t n = a->len < b->len ? a->len : b->len;
        int c = memcmp(a->s, b->s, n);
        if (c)
            return c < 0 ? -1 : 1;
        return a->len < b->len ? -1 : a->len > b->len ? 1 : 0;
    }
    return 2;
}

static bool compare(uint8_t op, bool nil_test, const struct rules_value *a,
                    const struct rules_value *b)
{
    if (a->type == RULES_NIL || b->type == RULES_NIL) {
        if (!nil_test)
            return false;
        bool same = a->type == b->type;
        return op == OP_EQ ? same : op == OP_NE ? !same : false;
    }
    if (op == OP_EQ)
        return equal(a, b);
    if (op == OP_NE)
        return !equal(a, b);
    int c = order(a, b);
    if (c == 2)
        return false;
    switch (op) {
    case OP_LT: return c < 0;
    case OP_LE: return c <= 0;
    case OP_GT: return c > 0;
    default: return c >= 0;
    }
}

static double arith(uint8_t op, double a, double b)
{
    switch (op) {
    case OP_ADD: return a + b;
    case OP_SUB: return a - b;
    case OP_MUL: return a * b;
    case OP_DIV: return b == 0 ? NAN : a / b;
    default: return b == 0 ? NAN : fmod(a, b);
    }
}

static double call(enum fn fn, const struct rules_value *a, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (a[i].type != RULES_NUM)
            return NAN;
    double x = a[0].n, r;
    switch (fn) {
    case FN_ABS: return fabs(x);
    case FN_MIN:
    case FN_MAX:
        r = x;
        for (unsigned i = 1; i < n; i++)
            r = (fn == FN_MIN) == (a[i].n < r) ? a[i].n : r;
        return r;
    case FN_CLAMP: return a[1].n > a[2].n ? NAN : x < a[1].n ? a[1].n : x > a[2].n ? a[2].n : x;
    case FN_SQRT: return x < 0 ? NAN : sqrt(x);
    case FN_EXP: return exp(x);
    case FN_LOG: return x < 0 ? NAN : log(x);
    case FN_ROUND:
        if (n == 1)
            return round(x);
        if (a[1].n != floor(a[1].n) || a[1].n < 0 || a[1].n > 15)
            return NAN;
        r = pow(10, a[1].n);
        return round(x * r) / r;
    case FN_HYPOT:
        return hypot(x, a[1].n);
    default: return NAN;
    }
}

/* The first time after now at which `age OP k` changes its result, or 0 for never. */
static int64_t age_flip(uint8_t op, int64_t written, double k, bool result)
{
    /* age = now - written: > k from written + floor(k) + 1, >= k from written + ceil(k) */
    double edge;
    switch (op) {
    case OP_GT: edge = result ? 0 : floor(k) + 1; break;
    case OP_GE: edge = result ? 0 : ceil(k); break;
    case OP_LT: edge = result ? ceil(k) : 0; break;
    default: edge = result ? floor(k) + 1 : 0; break; /* LE */
    }
    if (edge <= 0 || edge > 9e15)
        return 0;
    return written + (int64_t)edge;
}

/* A path of the twin being run, or of a dispatch cost's demand or resource. */
static void path_value(const struct rules_twin *tw, const struct path *p, struct rules_value *v)
{
    if (p->root == ROOT_WAITING || p->root == ROOT_LOAD) {
        *v = (struct rules_value){.type = RULES_NUM,
                                  .n = p->root == ROOT_WAITING ? tw->waiting_s : tw->load};
        return;
    }
    const struct twin_doc *d = p->side == SIDE_DEMAND     ? tw->demand
                               : p->side == SIDE_RESOURCE ? tw->resource
                                                          : tw->doc;
    if (!d) {
        *v = (struct rules_value){.type = RULES_NIL};
        return;
    }
    rules__path_value(d, p, v);
}

int rules__eval(const struct rules_expr *e, const struct rules_twin *tw, struct rules_value *out,
                int64_t *wake, struct rules_fire *rec)
{
    struct rules_value st[RULES_STACK_MAX];
    unsigned sp = 0;
    int rc;

    for (unsigned pc = 0; pc < e->ncode; pc++) {
        const struct insn *in = &e->code[pc];
        struct rules_value *top = sp ? &st[sp - 1] : NULL;
        switch ((enum op)in->op) {
        case OP_CONST: st[sp++] = e->consts[in->arg]; break;
        case OP_PATH:
            path_value(tw, &e->paths[in->arg], &st[sp++]);
            break;
        case OP_NEG:
            if (top->type == RULES_NUM)
                top->n = -top->n;
            else
                memset(top, 0, sizeof(*top));
            break;
        case OP_NOT: set_bool(top, !rules_value_true(top)); break;
        case OP_ADD:
        case OP_SUB:
        case OP_MUL:
        case OP_DIV:
        case OP_MOD: {
            struct rules_value *a = &st[sp - 2];
            if (a->type == RULES_NUM && top->type == RULES_NUM)
                set_num(a, arith(in->op, a->n, top->n));
            else
                memset(a, 0, sizeof(*a));
            sp--;
            break;
        }
        case OP_EQ:
        case OP_NE:
        case OP_LT:
        case OP_LE:
        case OP_GT:
        case OP_GE:
            set_bool(&st[sp - 2], compare(in->op, in->fn, &st[sp - 2], top));
            sp--;
            break;
        case OP_AND:
        case OP_OR: {
            bool t = rules_value_true(top);
            if (t == (in->op == OP_OR)) {
                set_bool(top, t);
                pc = in->arg - 1;
            } else {
                sp--;
            }
            break;
        }
        case OP_TOBOOL: set_bool(top, rules_value_true(top)); break;
        case OP_CALL:
            sp -= in->n;
            set_num(&st[sp], call((enum fn)in->fn, &st[sp], in->n));
            sp++;
            break;
        case OP_WINDOW:
            if ((rc = window(tw, in, &e->paths[in->arg], &st[sp++], wake)) < 0)
                return rc;
            break;
        case OP_AGE:
        case OP_AGE_CMP: {
            int64_t at = 0;
            struct rules_value age = {.type = RULES_NIL};
            if (written_at(tw->doc, &e->paths[in->arg], &at))
                set_num(&age, tw->now > at ? (double)(tw->now - at) : 0);
            if (in->op == OP_AGE) {
                st[sp++] = age;
                if (age.type == RULES_NUM)
                    lower(wake, tw->now, tw->now + e->tick_ms);
                break;
            }
            const struct rules_value *k = &e->consts[in->n];
            bool r = compare(in->fn, false, &age, k);
            if (age.type == RULES_NUM && in->dur && rec && rec->n_values < RULES_VALUES_MAX)
                rec->values[rec->n_values++] = (struct rules_input){
                    e->text + in->text_off, in->text_len, age};
            if (age.type == RULES_NUM) {
                int64_t flip = age_flip(in->fn, tw->now - (int64_t)age.n, k->n, r);
                if (flip)
                    lower(wake, tw->now, flip);
            }
            set_bool(&st[sp++], r);
            break;
        }
        case OP_CHANGED: {
            const struct path *p = &e->paths[in->arg];
            set_bool(&st[sp++], tw->changes && rules_changes_touch(tw->changes, p->full,
                                                                   p->full_len));
            break;
        }
        case OP_NOW:
            set_num(&st[sp++], (double)tw->now);
            lower(wake, tw->now, tw->now + e->tick_ms);
            break;
        case OP_RECORD:
            if (rec && rec->n_values < RULES_VALUES_MAX)
                rec->values[rec->n_values++] = (struct rules_input){
                    e->text + in->text_off, in->text_len, *top};
            break;
        }
    }
    *out = sp ? st[sp - 1] : (struct rules_value){.type = RULES_NIL};
    return 0;
}

int rules_expr_eval(const struct rules_expr *e, const struct rules_twin *tw,
                    struct rules_value *out, int64_t *wake)
{
    return rules__eval(e, tw, out, wake, NULL);
}
