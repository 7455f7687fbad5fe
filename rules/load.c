/* load: reads a rules file (YAML, libyaml's document API) into a struct rules_set: checks every
 * key, compiles every expression, turns action arguments into msgpack, orders the rules so that
 * a rule runs after the rules whose actions write what it reads, and rejects loops. Every
 * error is collected with its file:line:column; the set is built only when there are none.
 *
 * Choices:
 * - A rule's definition, for keeping its state across reloads, is its match, when, for,
 *   cooldown and every: changing only its actions keeps its state. A rule without every: hashes
 *   as before every: existed, so an upgrade keeps the state of every rule.
 * - every: takes a duration of at least rules_options.min_every_ms (1s): the floor bounds what
 *   one rule can cost per twin and second. A rule with every: may leave out when: (a schedule,
 *   engine.c); a schedule never resolves, so for:, cooldown: and on_resolve: are errors there.
 * - on_fire / on_resolve take a list of actions or a single one.
 * - YAML plain scalars in action arguments follow the YAML 1.2 core schema (null, true/false,
 *   integers, floats); quoted ones are strings.
 * - A loop (rule a writes what b reads, b writes what a reads, or a rule reading what it
 *   writes) is an error naming the rules in it. */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#define ARG_NODES_MAX 4096 /* YAML nodes in one action's arguments (aliases count each time) */
#define HORIZON_MAX_MS (365LL * 24 * 3600 * 1000)

uint64_t rules__hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    if (h == 0)
        h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

void rules_options_init(struct rules_options *o)
{
    o->max_rules = 10000;
    o->max_models = 100;
    o->max_errors = 50;
    o->max_file_bytes = 4u << 20;
    o->tick_ms = 1000;
    o->min_every_ms = 1000;
}

void rules_errors_free(struct rules_errors *e)
{
    free(e->text);
    memset(e, 0, sizeof(*e));
}

struct loader {
    const char *name;
    const char *base_dir;
    yaml_document_t *doc;
    struct rules_errors *errs;
    const struct rules_options *o;
    struct rules_set *rs;
    bool oom;
};

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------ */

static void add_error(struct loader *L, size_t line, size_t col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_error(struct loader *L, size_t line, size_t col, const char *fmt, ...)
{
    struct rules_errors *e = L->errs;
    char msg[RULES_ERR_LEN + 256];
    int n = line ? snprintf(msg, sizeof(msg), "%s:%zu:%zu: ", L->name, line, col)
                 : snprintf(msg, sizeof(msg), "%s: ", L->name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    e->count++;
    if (e->count > L->o->max_errors)
        return;
    if (e->count == L->o->max_errors)
        snprintf(msg, sizeof(msg), "%s: too many errors; stopping here", L->name);
    size_t len = strlen(msg);
    /* one error per line: text quoted from the file may hold newlines or other controls */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
            msg[i] = '?';
    if (e->len + len + 2 > e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 1024;
        while (cap < e->len + len + 2)
            cap *= 2;
        char *t = realloc(e->text, cap);
        if (!t) {
            L->oom = true;
            return;
        }
        e->text = t;
        e->cap = cap;
    }
    memcpy(e->text + e->len, msg, len);
    e->len += len;
    e->text[e->len++] = '\n';
    e->text[e->len] = '\0';
}

#define ERR(L, node, ...)                                                                          \
    add_error((L), (node)->start_mark.line + 1, (node)->start_mark.column + 1, __VA_ARGS__)

static const char *kind_name(const yaml_node_t *n)
{
    return n->type == YAML_MAPPING_NODE ? "a map" : n->type == YAML_SEQUENCE_NODE ? "a list"
                                                                                  : "a value";
}

static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    return len == 0 || (len == 1 && s[0] == '~') ||
           (len == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

static yaml_node_t *node(struct loader *L, int id)
{
    return yaml_document_get_node(L->doc, id);
}

/* The text of a scalar node, or NULL with an error naming `what`. */
static const char *scalar(struct loader *L, const yaml_node_t *n, const char *what, size_t *len)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n)) {
        ERR(L, n, "%s: expected %s, got %s", what, "a value", is_null(n) ? "nothing" : kind_name(n));
        return NULL;
    }
    *len = n->data.scalar.length;
    return (const char *)n->data.scalar.value;
}

/* Checks the keys of map `n` against `allowed` (NULL-terminated): unknown and repeated keys
 * are errors, with a suggestion. Returns false when any was bad. */
static bool check_keys(struct loader *L, const yaml_node_t *n, const char *where,
                       const char *const *allowed)
{
    bool ok = true;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(L, p->key);
        if (k->type != YAML_SCALAR_NODE) {
            ERR(L, k, "%s: a key must be a name, not %s", where, kind_name(k));
            ok = false;
            continue;
        }
        const char *name = (const char *)k->data.scalar.value;
        size_t len = k->data.scalar.length;
        const char *const *a = allowed;
        while (*a && !(strlen(*a) == len && memcmp(*a, name, len) == 0))
            a++;
        if (!*a) {
            const char *best = NULL;
            unsigned bd = 3;
            for (a = allowed; *a; a++) {
                unsigned d = rules__distance(name, len, *a, strlen(*a));
                if (d < bd) {
                    bd = d;
                    best = *a;
                }
            }
            char hint[96] = "";
            if (best)
                snprintf(hint, sizeof(hint), "; did you mean '%s'?", best);
            ERR(L, k, "%s: unknown key '%.*s'%s", where, (int)(len > 64 ? 64 : len), name, hint);
            ok = false;
            continue;
        }
        for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
            yaml_node_t *k2 = node(L, q->key);
            if (k2->type == YAML_SCALAR_NODE && k2->data.scalar.length == len &&
                memcmp(k2->data.scalar.value, name, len) == 0) {
                ERR(L, k, "%s: '%s' set twice (first on line %zu)", where, *a,
                    k2->start_mark.line + 1);
                ok = false;
            }
        }
    }
    return ok;
}

static yaml_node_t *get(struct loader *L, const yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node(L, p->key);
        if (k->type == YAML_SCALAR_NODE && k->data.scalar.length == strlen(key) &&
            memcmp(k->data.scalar.value, key, k->data.scalar.length) == 0)
            return node(L, p->value);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------------------------ */

/* "250ms", "30s", "5m", "1h", "1h30m", or 0. Returns 0 or -EINVAL. */
static int duration(const char *s, size_t len, int64_t *ms)
{
    size_t pos = 0;
    double total = 0;
    char err[RULES_ERR_LEN];
    if (len == 1 && s[0] == '0') {
        *ms = 0;
        return 0;
    }
    for (;;) {
        struct token t;
        if (rules__lex(s, len, &pos, &t, err) < 0)
            return -EINVAL;
        if (t.kind == T_END)
            break;
        if (t.kind != T_DURATION)
            return -EINVAL;
        total += t.num;
    }
    if (pos == 0 || total < 0 || total > 9e15 || total != floor(total))
        return -EINVAL;
    *ms = (int64_t)total;
    return 0;
}

/* ms as the shortest duration text that reads back the same: "1s", "1m30s", "250ms". */
static const char *duration_text(char *buf, size_t len, int64_t ms)
{
    static const struct {
        int64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && ms > 0 && n < len; i++)
        if (ms >= units[i].ms) {
            int w =
                snprintf(buf + n, len - n, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
            n += w > 0 ? (size_t)w : 0;
            ms %= units[i].ms;
        }
    if (!buf[0])
        snprintf(buf, len, "0");
    return buf;
}

static int duration_node(struct loader *L, const yaml_node_t *n, const char *what, int64_t *ms)
{
    size_t len;
    const char *s = scalar(L, n, what, &len);
    if (!s)
        return -EINVAL;
    if (len == 0 || memchr(s, '\0', len) || duration(s, len, ms) < 0) {
        ERR(L, n, "%s: expected a duration such as 250ms, 30s, 5m or 1h, got '%.*s'", what,
            (int)(len > 40 ? 40 : len), s);
        return -EINVAL;
    }
    return 0;
}

static char *zdup(struct loader *L, const char *s, size_t n)
{
    char *p = msgpack_zone_malloc(&L->rs->zone, n + 1);
    if (!p) {
        L->oom = true;
        return NULL;
    }
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* A plain scalar as the YAML 1.2 core schema reads it. */
static void plain_scalar(const char *s, size_t n, msgpack_object *o)
{
    char buf[64], *end;
    o->type = MSGPACK_OBJECT_STR;
    if (n == 4 && (!memcmp(s, "true", 4) || !memcmp(s, "True", 4) || !memcmp(s, "TRUE", 4))) {
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = true;
        return;
    }
    if (n == 5 && (!memcmp(s, "false", 5) || !memcmp(s, "False", 5) || !memcmp(s, "FALSE", 5))) {
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = false;
        return;
    }
    if (n == 0 || n >= sizeof(buf))
        return;
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    if (isdigit((unsigned char)buf[0]) || ((buf[0] == '-' || buf[0] == '+') && n > 1)) {
        long long v = strtoll(buf, &end, 10);
        if (*end == '\0' && errno == 0) {
            if (v >= 0) {
                o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
                o->via.u64 = (uint64_t)v;
            } else {
                o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
                o->via.i64 = v;
            }
            return;
        }
    }
    if (isdigit((unsigned char)buf[0]) || buf[0] == '.' || buf[0] == '-' || buf[0] == '+') {
        double d = strtod(buf, &end);
        if (*end == '\0' && isfinite(d) && strpbrk(buf, "0123456789")) {
            o->type = MSGPACK_OBJECT_FLOAT64;
            o->via.f64 = d;
        }
    }
}

/* Converts a YAML node into a msgpack object in the set's zone. `budget` bounds the nodes
 * visited (aliases make a small file a big tree). */
static int to_object(struct loader *L, const yaml_node_t *n, unsigned depth, unsigned *budget,
                     msgpack_object *o)
{
    memset(o, 0, sizeof(*o));
    if (depth > 16 || (*budget)-- == 0) {
        ERR(L, n, "value nested too deep or too large");
        return -EINVAL;
    }
    if (n->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)n->data.scalar.value;
        size_t len = n->data.scalar.length;
        if (is_null(n))
            return 0;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            plain_scalar(s, len, o);
        else
            o->type = MSGPACK_OBJECT_STR;
        if (o->type == MSGPACK_OBJECT_STR) {
            char *p = zdup(L, s, len);
            if (!p)
                return -ENOMEM;
            o->via.str.ptr = p;
            o->via.str.size = (uint32_t)len;
        }
        return 0;
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)cnt;
        o->via.array.ptr = cnt ? msgpack_zone_malloc(&L->rs->zone, cnt * sizeof(msgpack_object))
                               : NULL;
        if (cnt && !o->via.array.ptr)
            return L->oom = true, -ENOMEM;
        for (size_t i = 0; i < cnt; i++) {
            int rc = to_object(L, node(L, n->data.sequence.items.start[i]), depth + 1, budget,
                               &o->via.array.ptr[i]);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = (uint32_t)cnt;
    o->via.map.ptr = cnt ? msgpack_zone_malloc(&L->rs->zone, cnt * sizeof(msgpack_object_kv))
                         : NULL;
    if (cnt && !o->via.map.ptr)
        return L->oom = true, -ENOMEM;
    for (size_t i = 0; i < cnt; i++) {
        yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
        yaml_node_t *k = node(L, p->key);
        if (k->type != YAML_SCALAR_NODE || k->data.scalar.length == 0) {
            ERR(L, k, "a key must be a non-empty name");
            return -EINVAL;
        }
        msgpack_object_kv *kv = &o->via.map.ptr[i];
        char *ks = zdup(L, (const char *)k->data.scalar.value, k->data.scalar.length);
        if (!ks)
            return -ENOMEM;
        kv->key.type = MSGPACK_OBJECT_STR;
        kv->key.via.str.ptr = ks;
        kv->key.via.str.size = (uint32_t)k->data.scalar.length;
        int rc = to_object(L, node(L, p->value), depth + 1, budget, &kv->val);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Expressions
 * ------------------------------------------------------------------------------------------ */

/* Compiles the expression in scalar node n: over one twin, over a pair (a dispatch's cost and
 * with:), or, with `instead`, over one twin that the hub evaluates alone (no history, no change
 * list, no timer: windows, age() and changed() are errors saying `instead`). Errors carry the
 * file position of the column the compiler names (exact for one-line plain and quoted
 * scalars). */
static struct rules_expr *expression_as(struct loader *L, const yaml_node_t *n, const char *what,
                                        bool pair, const char *instead)
{
    size_t len;
    const char *s = scalar(L, n, what, &len);
    if (!s)
        return NULL;
    struct rules_expr *e = NULL;
    char err[RULES_ERR_LEN];
    int rc = pair      ? rules_expr_compile_pair(s, len, &e, err)
             : instead ? rules__expr_compile_stateless(s, len, instead, &e, err)
                       : rules_expr_compile(s, len, &e, err);
    if (rc == -ENOMEM) {
        L->oom = true;
        return NULL;
    }
    if (rc < 0) {
        char *colon;
        unsigned long col = strtoul(err, &colon, 10);
        size_t line = n->start_mark.line + 1, c = n->start_mark.column + 1;
        bool quoted = n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                      n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
        bool block = n->data.scalar.style == YAML_LITERAL_SCALAR_STYLE ||
                     n->data.scalar.style == YAML_FOLDED_SCALAR_STYLE;
        /* walk the text to the column: newlines in it move to the next line */
        size_t at = col ? col - 1 : 0, lc = c + (quoted ? 1 : 0);
        if (block) {
            line++;
            lc = 1;
        }
        for (size_t i = 0; i < at && i < len; i++) {
            if (s[i] == '\n') {
                line++;
                lc = 1;
            } else {
                lc++;
            }
        }
        add_error(L, line, lc, "%s: %s", what, colon[0] == ':' ? colon + 2 : err);
        return NULL;
    }
    e->tick_ms = L->o->tick_ms;
    return e;
}

static struct rules_expr *expression(struct loader *L, const yaml_node_t *n, const char *what)
{
    return expression_as(L, n, what, false, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Models and actions
 * ------------------------------------------------------------------------------------------ */

static int model_find(const struct rules_set *rs, const char *name, size_t len)
{
    for (unsigned i = 0; i < rs->nmodels; i++)
        if (strlen(rs->models[i].name) == len && memcmp(rs->models[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static bool good_name(const char *s, size_t len)
{
    if (len == 0 || len > RULES_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.' &&
            s[i] != ':')
            return false;
    return true;
}

/* target, horizon and learn: {target, rate, horizon} of model m (map n): the target and
 * horizon may be written in learn: or beside it, once. The model file checks the rest. */
static void model_target(struct loader *L, const yaml_node_t *n, struct model_def *m,
                         const char *where)
{
    static const char *const learn_keys[] = {"target", "rate", "horizon", NULL};
    const yaml_node_t *learn = get(L, n, "learn");
    const yaml_node_t *target = get(L, n, "target"), *horizon = get(L, n, "horizon");
    if (learn) {
        if (learn->type != YAML_MAPPING_NODE) {
            ERR(L, learn, "%s: learn: expected a map with target and rate, got %s", where,
                kind_name(learn));
            return;
        }
        if (!check_keys(L, learn, "learn", learn_keys))
            return;
        const yaml_node_t *t = get(L, learn, "target"), *h = get(L, learn, "horizon");
        const yaml_node_t *rate = get(L, learn, "rate");
        if ((t && target) || (h && horizon)) {
            ERR(L, t && target ? t : h, "%s: learn: %s is given twice (in learn: and beside it)",
                where, t && target ? "target" : "horizon");
            return;
        }
        target = target ? target : t;
        horizon = horizon ? horizon : h;
        size_t len;
        const char *r = rate ? scalar(L, rate, "rate", &len) : NULL;
        char buf[64], *end = NULL;
        if (r && len < sizeof(buf)) {
            memcpy(buf, r, len);
            buf[len] = '\0';
            m->rate = strtod(buf, &end);
        }
        if (!rate)
            ERR(L, learn, "%s: learn: 'rate' is missing (the step size, such as 0.01)", where);
        else if (r && (len >= sizeof(buf) || end == buf || *end || !isfinite(m->rate) ||
                       !(m->rate > 0))) {
            ERR(L, rate, "learn: rate: expected a number above 0 such as 0.01, got '%.*s'",
                (int)(len > 40 ? 40 : len), r);
            m->rate = 0;
        }
        if (!target)
            ERR(L, learn, "%s: learn: 'target' is missing (the reported path the model "
                          "predicts)", where);
    }
    if (horizon && duration_node(L, horizon, "horizon", &m->horizon_ms) == 0 &&
        m->horizon_ms > HORIZON_MAX_MS)
        ERR(L, horizon, "horizon: at most 365d");
    if (horizon && !target)
        ERR(L, horizon, "%s: horizon: needs a target", where);
    if (target && (m->target = expression(L, target, "target")) &&
        !rules__reported_path(m->target))
        ERR(L, target, "target: expected a reported path such as reported.heart_rate, got '%.*s'",
            (int)(m->target->text_len > 60 ? 60 : m->target->text_len), m->target->text);
}

static void load_models(struct loader *L, const yaml_node_t *n)
{
    static const char *const model_keys[] = {"file", "inputs", "target", "horizon", "learn",
                                             NULL};
    if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "models: expected a map of model names, got %s", kind_name(n));
        return;
    }
    size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if (cnt > L->o->max_models) {
        ERR(L, n, "models: %zu models, more than the limit of %u", cnt, L->o->max_models);
        return;
    }
    L->rs->models = calloc(cnt ? cnt : 1, sizeof(struct model_def));
    if (!L->rs->models) {
        L->oom = true;
        return;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node(L, p->key), *v = node(L, p->value);
        size_t len;
        const char *name = scalar(L, k, "models", &len);
        if (!name)
            continue;
        if (!good_name(name, len)) {
            ERR(L, k, "models: a model name is 1 to %d characters of A-Z a-z 0-9 _ - . :",
                RULES_NAME_MAX);
            continue;
        }
        if (model_find(L->rs, name, len) >= 0) {
            ERR(L, k, "models: '%.*s' defined twice", (int)len, name);
            continue;
        }
        char where[RULES_NAME_MAX + 16];
        snprintf(where, sizeof(where), "model '%.*s'", (int)len, name);
        if (v->type != YAML_MAPPING_NODE) {
            ERR(L, v, "%s: expected a map with file and inputs, got %s", where, kind_name(v));
            continue;
        }
        struct model_def *m = &L->rs->models[L->rs->nmodels++];
        memcpy(m->name, name, len);
        if (!check_keys(L, v, where, model_keys))
            continue;
        yaml_node_t *file = get(L, v, "file"), *inputs = get(L, v, "inputs");
        unsigned before = L->errs->count;
        model_target(L, v, m, where);
        if (!file)
            ERR(L, v, "%s: 'file' is missing", where);
        else if ((name = scalar(L, file, "file", &len)) != NULL)
            m->file = zdup(L, name, len);
        if (!inputs || inputs->type != YAML_SEQUENCE_NODE) {
            ERR(L, inputs ? inputs : v, "%s: 'inputs' must be a list of expressions", where);
            continue;
        }
        size_t ni = (size_t)(inputs->data.sequence.items.top - inputs->data.sequence.items.start);
        m->inputs = calloc(ni ? ni : 1, sizeof(*m->inputs));
        if (!m->inputs) {
            L->oom = true;
            return;
        }
        unsigned before_inputs = L->errs->count;
        for (size_t i = 0; i < ni; i++) {
            struct rules_expr *e =
                expression(L, node(L, inputs->data.sequence.items.start[i]), "input");
            if (e)
                m->inputs[m->ninputs++] = e;
        }
        if (L->errs->count != before_inputs &&
            inputs->data.sequence.style == YAML_FLOW_SEQUENCE_STYLE)
            ERR(L, inputs, "%s: in a [flow, list] every comma ends an item, also the one inside "
                           "avg(x, 60s): write inputs as a block list (- avg(...)) or quote each",
                where);
        char err[RULES_ERR_LEN];
        if (m->file && L->errs->count == before && rules__model_open(m, L->base_dir, err) < 0)
            ERR(L, file, "%s: %s", where, err);
    }
}

/* The value of a command action (a map {cmd, args, expires} or the command's name) into a. */
static int command_action(struct loader *L, const yaml_node_t *v, struct rules_action *a)
{
    static const char *const cmd_keys[] = {"cmd", "args", "expires", NULL};
    unsigned budget = ARG_NODES_MAX;
    size_t len;
    memset(a, 0, sizeof(*a));
    a->kind = RULES_ACT_COMMAND;
    a->args.type = MSGPACK_OBJECT_NIL;
    const yaml_node_t *cmd = v;
    if (v->type == YAML_MAPPING_NODE) {
        if (!check_keys(L, v, "command", cmd_keys))
            return -EINVAL;
        cmd = get(L, v, "cmd");
        if (!cmd) {
            ERR(L, v, "command: 'cmd' is missing");
            return -EINVAL;
        }
        const yaml_node_t *args = get(L, v, "args"), *exp = get(L, v, "expires");
        if (args && to_object(L, args, 0, &budget, &a->args) < 0)
            return -EINVAL;
        if (exp && duration_node(L, exp, "expires", &a->expires_ms) < 0)
            return -EINVAL;
    }
    const char *c = scalar(L, cmd, "cmd", &len);
    if (!c)
        return -EINVAL;
    if (len > TWIN_CMD_NAME_MAX || memchr(c, '\0', len)) {
        ERR(L, cmd, "cmd: a command name is 1 to %d bytes", TWIN_CMD_NAME_MAX);
        return -EINVAL;
    }
    a->cmd = zdup(L, c, len);
    a->cmd_len = len;
    return a->cmd ? 0 : -ENOMEM;
}

/* The fields the hub sets in a rule's events: an event action may not name them. */
static const char *const rule_event_keys[] = {"type", "rule", "state", "values", "ts", NULL};

/* The map of a desired or event action (a->kind set; n: the action, for errors). An event's
 * fields may not be one of `reserved` (NULL-terminated): the hub sets those. */
static int map_action(struct loader *L, const yaml_node_t *n, const yaml_node_t *v,
                      const char *kind, struct rules_action *a, struct action_list *l,
                      const char *const *reserved)
{
    unsigned budget = ARG_NODES_MAX;
    a->args.type = MSGPACK_OBJECT_NIL;
    if (v->type != YAML_MAPPING_NODE || v->data.mapping.pairs.top == v->data.mapping.pairs.start) {
        ERR(L, v, "%s: expected a map of %s, got %s", kind,
            a->kind == RULES_ACT_DESIRED ? "desired values" : "event fields",
            is_null(v) ? "nothing" : kind_name(v));
        return -EINVAL;
    }
    if (to_object(L, v, 0, &budget, &a->args) < 0)
        return -EINVAL;
    for (uint32_t i = 0; i < a->args.via.map.size; i++) {
        const msgpack_object *key = &a->args.via.map.ptr[i].key;
        const char *ks = key->via.str.ptr;
        uint32_t kl = key->via.str.size;
        yaml_node_t *kn = node(L, v->data.mapping.pairs.start[i].key);
        if (a->kind == RULES_ACT_DESIRED && (memchr(ks, '.', kl) || kl > TWIN_KEY_MAX)) {
            ERR(L, kn, "desired: a key has 1 to %d bytes and no '.'", TWIN_KEY_MAX);
            return -EINVAL;
        }
        for (const char *const *r = reserved; a->kind == RULES_ACT_EVENT && *r; r++)
            if (strlen(*r) == kl && !memcmp(*r, ks, kl)) {
                ERR(L, kn, "event: '%s' is set by the hub; choose another field name", *r);
                return -EINVAL;
            }
    }
    if (a->kind == RULES_ACT_EVENT) {
        if (l->event_fields) {
            ERR(L, n, "%s: one event action per list", kind);
            return -EINVAL;
        }
        l->event_fields = &a->args;
    }
    return 0;
}

static int action(struct loader *L, const yaml_node_t *n, struct rules_action *a,
                  struct action_list *l, const char *where)
{
    static const char *const kinds[] = {"command", "desired", "event", "predict", NULL};
    if (n->type != YAML_MAPPING_NODE ||
        n->data.mapping.pairs.top - n->data.mapping.pairs.start != 1) {
        ERR(L, n, "%s: an action is a map with one of command, desired, event, predict", where);
        return -EINVAL;
    }
    if (!check_keys(L, n, where, kinds))
        return -EINVAL;
    yaml_node_t *k = node(L, n->data.mapping.pairs.start->key);
    yaml_node_t *v = node(L, n->data.mapping.pairs.start->value);
    const char *kind = (const char *)k->data.scalar.value;
    memset(a, 0, sizeof(*a));
    a->args.type = MSGPACK_OBJECT_NIL;
    size_t len;
    if (!strcmp(kind, "predict")) {
        a->kind = RULES_ACT_PREDICT;
        const char *m = scalar(L, v, "predict", &len);
        if (!m)
            return -EINVAL;
        int i = model_find(L->rs, m, len);
        if (i < 0) {
            ERR(L, v, "predict: no model '%.*s' under models:", (int)(len > 64 ? 64 : len), m);
            return -EINVAL;
        }
        a->model = (unsigned)i;
        return 0;
    }
    if (!strcmp(kind, "command"))
        return command_action(L, v, a);
    a->kind = !strcmp(kind, "desired") ? RULES_ACT_DESIRED : RULES_ACT_EVENT;
    return map_action(L, n, v, kind, a, l, rule_event_keys);
}

static void action_list(struct loader *L, const yaml_node_t *n, struct action_list *l,
                        const char *where)
{
    size_t cnt = 1;
    if (n->type == YAML_SEQUENCE_NODE)
        cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    else if (is_null(n))
        return;
    else if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "%s: expected a list of actions, got %s", where, kind_name(n));
        return;
    }
    l->v = msgpack_zone_malloc(&L->rs->zone, (cnt ? cnt : 1) * sizeof(*l->v));
    if (!l->v) {
        L->oom = true;
        return;
    }
    for (size_t i = 0; i < cnt; i++) {
        const yaml_node_t *a =
            n->type == YAML_SEQUENCE_NODE ? node(L, n->data.sequence.items.start[i]) : n;
        if (action(L, a, &l->v[l->n], l, where) == 0)
            l->n++;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Rules
 * ------------------------------------------------------------------------------------------ */

static bool defined(const struct rules_set *rs, const char *name, size_t len)
{
    for (unsigned i = 0; i < rs->nrules; i++)
        if (strlen(rs->rules[i].name) == len && memcmp(rs->rules[i].name, name, len) == 0)
            return true;
    return false;
}

static void load_rule(struct loader *L, const yaml_node_t *n)
{
    static const char *const rule_keys[] = {"name",  "match",   "when",       "for", "cooldown",
                                            "every", "on_fire", "on_resolve", NULL};
    struct rules_set *rs = L->rs;
    if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "rules: each rule is a map with name and when, got %s", kind_name(n));
        return;
    }
    struct rule *r = &rs->rules[rs->nrules];
    memset(r, 0, sizeof(*r));
    r->line = (unsigned)n->start_mark.line + 1;
    const yaml_node_t *name = get(L, n, "name");
    size_t len = 0;
    const char *s = name ? scalar(L, name, "name", &len) : NULL;
    char where[RULES_NAME_MAX + 16] = "rule";
    if (!name)
        ERR(L, n, "rule: 'name' is missing");
    else if (s && !good_name(s, len))
        ERR(L, name, "name: a rule name is 1 to %d characters of A-Z a-z 0-9 _ - . :",
            RULES_NAME_MAX);
    else if (s && defined(rs, s, len))
        ERR(L, name, "name: rule '%.*s' defined twice", (int)len, s);
    else if (s) {
        memcpy(r->name, s, len);
        snprintf(where, sizeof(where), "rule '%s'", r->name);
    }
    bool ok = check_keys(L, n, where, rule_keys) && r->name[0];
    const yaml_node_t *v;
    if ((v = get(L, n, "match")) != NULL) {
        if (!(s = scalar(L, v, "match", &len)) || !len || memchr(s, '\0', len))
            ok = false;
        else if (!(r->match = zdup(L, s, len)))
            return;
        if (r->match && !strcmp(r->match, "*"))
            r->match = NULL;
    }
    const yaml_node_t *every = get(L, n, "every");
    if (every && duration_node(L, every, "every", &r->every_ms) == 0 &&
        r->every_ms < L->o->min_every_ms) {
        char min[32];
        size_t elen = every->data.scalar.length;
        ERR(L, every, "every: expected a period of at least %s, got '%.*s'",
            duration_text(min, sizeof(min), L->o->min_every_ms), (int)(elen > 40 ? 40 : elen),
            (const char *)every->data.scalar.value);
        r->every_ms = 0;
    }
    if (every && r->every_ms == 0)
        ok = false;
    if (!(v = get(L, n, "when")) && every) {
        /* a schedule: on_fire every period, for every twin the match admits */
        r->schedule = true;
        static const char *const never[] = {"for", "cooldown", "on_resolve"};
        for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
            if ((v = get(L, n, never[i]))) {
                ERR(L, v,
                    "%s: a rule with every: and no when: never resolves, so it takes no "
                    "%s (give it a when: to have one)",
                    never[i], never[i]);
                ok = false;
            }
        char err[RULES_ERR_LEN];
        int rc = rules_expr_compile("true", 4, &r->when, err);
        if (rc < 0) {
            L->oom = true;
            return;
        }
    } else if (!v) {
        ERR(L, n, "%s: 'when' is missing (a rule without one needs every:)", where);
        ok = false;
    } else if (!(r->when = expression(L, v, "when"))) {
        ok = false;
    } else if (r->when->type != RULES_BOOL && r->when->type != RULES_OTHER) {
        ERR(L, v, "when: a condition must be true or false; this is %s",
            r->when->type == RULES_NUM ? "a number" : r->when->type == RULES_STR ? "a string"
                                                                                 : "nil");
        ok = false;
    }
    if ((v = get(L, n, "for")) && duration_node(L, v, "for", &r->for_ms) < 0)
        ok = false;
    if ((v = get(L, n, "cooldown")) && duration_node(L, v, "cooldown", &r->cooldown_ms) < 0)
        ok = false;
    unsigned before = L->errs->count;
    if ((v = get(L, n, "on_fire")))
        action_list(L, v, &r->on_fire, "on_fire");
    if ((v = get(L, n, "on_resolve")))
        action_list(L, v, &r->on_resolve, "on_resolve");
    ok = ok && L->errs->count == before;
    if (!ok) {
        rules_expr_free(r->when);
        return;
    }
    uint64_t h = rules__hash(0, r->name, strlen(r->name) + 1);
    h = rules__hash(h, r->match ? r->match : "*", strlen(r->match ? r->match : "*") + 1);
    h = rules__hash(h, r->when->text, r->when->text_len + 1);
    h = rules__hash(h, &r->for_ms, sizeof(r->for_ms));
    h = rules__hash(h, &r->cooldown_ms, sizeof(r->cooldown_ms));
    if (r->every_ms) {
        h = rules__hash(h, "every", 6);
        h = rules__hash(h, &r->every_ms, sizeof(r->every_ms));
        h = rules__hash(h, &r->schedule, sizeof(r->schedule));
    }
    r->hash = h;
    rs->nrules++;
}

/* ---------------------------------------------------------------------------------------------
 * Dispatch
 * ------------------------------------------------------------------------------------------ */

/* What the hub sets itself (hub/dispatch.c), which with: names and event fields may not
 * shadow: the keys of a dispatch event, of the resource's desired.<key> and of the command's
 * args. with: values go into all three. */
static const char *const dispatch_event_keys[] = {
    "type", "dispatch", "state", "demand", "resource", "waited_ms", "cost", "ts", NULL};
static const char *const dispatch_with_keys[] = {
    "type", "dispatch", "state", "demand", "resource", "waited_ms", "cost", "ts", "since", NULL};

/* The hub evaluates a dispatch's demand and resource expressions on the twin alone (no history,
 * no change list, no timer): what to write instead of a window, age() or changed(). */
#define DEMAND_INSTEAD                                                                             \
    "windows, age() and changed() need a rule: use demand.rule: with a rule that has them"
#define VALUE_INSTEAD                                                                              \
    "windows, age() and changed() need a rule: let a rule that has them write a desired value "    \
    "(a desired: action) and read that here"

static bool listed(const char *const *list, const char *s, size_t len)
{
    for (; *list; list++)
        if (strlen(*list) == len && !memcmp(*list, s, len))
            return true;
    return false;
}

/* The key node among the first `upto` pairs of map n that is s[0..len), or NULL. */
static const yaml_node_t *key_among(struct loader *L, const yaml_node_t *n, size_t upto,
                                    const char *s, size_t len)
{
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
         p < n->data.mapping.pairs.top && p < n->data.mapping.pairs.start + upto; p++) {
        const yaml_node_t *k = node(L, p->key);
        if (k->type == YAML_SCALAR_NODE && k->data.scalar.length == len &&
            !memcmp(k->data.scalar.value, s, len))
            return k;
    }
    return NULL;
}

/* A reported path given as text ("reported.skills"): its part below reported, or NULL with an
 * error. */
static const char *reported_path(struct loader *L, const yaml_node_t *n, const char *what)
{
    size_t len;
    const char *s = scalar(L, n, what, &len);
    if (!s)
        return NULL;
    bool ok = len > 9 && len <= TWIN_PATH_MAX && !memcmp(s, "reported.", 9) &&
              !memchr(s, '\0', len) && s[len - 1] != '.';
    for (size_t i = 9; ok && i < len; i++)
        ok = (unsigned char)s[i] >= 0x20 && !(s[i] == '.' && s[i - 1] == '.');
    if (!ok) {
        ERR(L, n, "%s: expected a path under reported, such as reported.skills", what);
        return NULL;
    }
    return zdup(L, s + 9, len - 9);
}

static const char *glob(struct loader *L, const yaml_node_t *n, const char *what)
{
    size_t len;
    const char *s = scalar(L, n, what, &len);
    if (!s)
        return NULL;
    if (!len || len > TWIN_ID_MAX || memchr(s, '\0', len)) {
        ERR(L, n, "%s: a glob of 1 to %d bytes over twin ids, such as \"nurse-*\"", what,
            TWIN_ID_MAX);
        return NULL;
    }
    /* * and ? only: the dashboard (web/js/dispatch.js) matches the same twins as the hub */
    const char *set = memchr(s, '[', len) ? "[" : memchr(s, '\\', len) ? "\\" : NULL;
    if (set) {
        ERR(L, n, "%s: only * and ? are wildcards in a dispatch glob; '%s' is not allowed", what,
            set);
        return NULL;
    }
    return zdup(L, s, len);
}

static void dispatch_demand(struct loader *L, const yaml_node_t *n, struct rules_dispatch *d)
{
    static const char *const keys[] = {"match", "rule", "when", "priority", "requires", NULL};
    const yaml_node_t *v;
    if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "demand: expected a map with rule: or when:, got %s", kind_name(n));
        return;
    }
    check_keys(L, n, "demand", keys);
    if ((v = get(L, n, "match")) && !(d->demand_match = glob(L, v, "match")))
        return;
    const yaml_node_t *rule = get(L, n, "rule"), *when = get(L, n, "when");
    if (!rule == !when) {
        ERR(L, n,
            "demand: give one of rule: (a demand while that rule fires) or when: (while "
            "a condition holds)");
    } else if (rule) {
        size_t len;
        const char *s = scalar(L, rule, "rule", &len);
        if (s && !defined(L->rs, s, len))
            ERR(L, rule, "rule: no rule '%.*s' under rules:", (int)(len > 64 ? 64 : len), s);
        else if (s)
            d->demand_rule = zdup(L, s, len);
    } else if ((d->demand_when = expression_as(L, when, "when", false, DEMAND_INSTEAD)) &&
               d->demand_when->type != RULES_BOOL && d->demand_when->type != RULES_OTHER) {
        ERR(L, when, "when: a condition must be true or false");
    }
    if ((v = get(L, n, "priority")))
        d->priority = expression_as(L, v, "priority", false, VALUE_INSTEAD);
    if ((v = get(L, n, "requires"))) {
        if (v->type == YAML_SEQUENCE_NODE) {
            size_t cnt = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
            if (cnt > RULES_SKILLS_MAX)
                ERR(L, v, "requires: %zu skills, more than the limit of %d", cnt, RULES_SKILLS_MAX);
            for (size_t i = 0; i < cnt && i < RULES_SKILLS_MAX; i++) {
                const yaml_node_t *it = node(L, v->data.sequence.items.start[i]);
                size_t len;
                const char *s = scalar(L, it, "requires", &len);
                if (!s)
                    continue;
                if (!len || len > RULES_SKILL_LEN || memchr(s, '\0', len)) {
                    ERR(L, it, "requires: a skill is 1 to %d bytes, not %zu", RULES_SKILL_LEN, len);
                    continue;
                }
                d->requires[d->n_requires++] = zdup(L, s, len);
            }
        } else {
            d->requires_path = reported_path(L, v, "requires");
        }
    }
}

static void dispatch_resource(struct loader *L, const yaml_node_t *n, struct rules_dispatch *d)
{
    static const char *const keys[] = {"match", "when", "capacity", "skills", NULL};
    const yaml_node_t *v;
    if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "resource: expected a map with match:, got %s", kind_name(n));
        return;
    }
    check_keys(L, n, "resource", keys);
    if (!(v = get(L, n, "match")))
        ERR(L, n, "resource: 'match' is missing (a glob such as \"nurse-*\")");
    else if ((d->resource_match = glob(L, v, "match")))
        d->resource_prefix_len = strcspn(d->resource_match, "*?[\\");
    if ((v = get(L, n, "when")) &&
        (d->resource_when = expression_as(L, v, "when", false, VALUE_INSTEAD)) &&
        d->resource_when->type != RULES_BOOL && d->resource_when->type != RULES_OTHER)
        ERR(L, v, "when: a condition must be true or false");
    if ((v = get(L, n, "capacity")) &&
        (d->capacity = expression_as(L, v, "capacity", false, VALUE_INSTEAD)) &&
        d->capacity->type != RULES_NUM && d->capacity->type != RULES_OTHER)
        ERR(L, v, "capacity: expected a number of demands at once");
    if ((v = get(L, n, "skills")))
        d->skills_path = reported_path(L, v, "skills");
}

static void dispatch_assign(struct loader *L, const yaml_node_t *n, struct rules_dispatch *d)
{
    static const char *const keys[] = {"command", "with", "desired", "event", NULL};
    const yaml_node_t *v;
    if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "on_assign: expected a map of command, with, desired, event, got %s",
            kind_name(n));
        return;
    }
    check_keys(L, n, "on_assign", keys);
    struct rules_action a;
    struct action_list l = {0};
    if ((v = get(L, n, "command"))) {
        /* the command's grammar is the rules' (cmd, args, expires) */
        if (command_action(L, v, &a) == 0) {
            d->cmd = a.cmd;
            d->cmd_len = a.cmd_len;
            d->args = a.args;
            d->expires_ms = a.expires_ms;
            if (a.args.type != MSGPACK_OBJECT_NIL && a.args.type != MSGPACK_OBJECT_MAP)
                ERR(L, v, "command: args must be a map (the hub adds demand and dispatch)");
        }
    }
    if ((v = get(L, n, "with"))) {
        if (v->type != YAML_MAPPING_NODE) {
            ERR(L, v, "with: expected a map of name: expression over demand. and resource.");
        } else {
            size_t cnt = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
            if (cnt > RULES_WITH_MAX)
                ERR(L, v, "with: at most %d values", RULES_WITH_MAX);
            for (size_t i = 0; i < cnt && i < RULES_WITH_MAX; i++) {
                yaml_node_pair_t *p = &v->data.mapping.pairs.start[i];
                const yaml_node_t *k = node(L, p->key);
                size_t len;
                const char *s = scalar(L, k, "with", &len);
                if (!s)
                    continue;
                const yaml_node_t *first;
                if (!len || len > TWIN_KEY_MAX || memchr(s, '.', len) || memchr(s, '\0', len)) {
                    ERR(L, k, "with: '%.*s' is not a name of its own (1 to %d bytes, no '.')",
                        (int)(len > 40 ? 40 : len), s, TWIN_KEY_MAX);
                    continue;
                }
                if (listed(dispatch_with_keys, s, len)) {
                    ERR(L, k,
                        "with: '%.*s' is set by the hub (in the events, the desired value or "
                        "the command's args); choose another name",
                        (int)len, s);
                    continue;
                }
                if ((first = key_among(L, v, i, s, len))) {
                    ERR(L, k, "with: '%.*s' set twice (first on line %zu)", (int)len, s,
                        first->start_mark.line + 1);
                    continue;
                }
                struct rules_with *w = &d->with[d->n_with];
                memcpy(w->name, s, len);
                w->name[len] = '\0';
                if ((w->expr = expression_as(L, node(L, p->value), w->name, true, NULL)))
                    d->n_with++;
            }
        }
    }
    if ((v = get(L, n, "desired"))) {
        size_t len;
        const char *s = scalar(L, v, "desired", &len);
        if (s && (!len || len > TWIN_KEY_MAX || memchr(s, '.', len) || memchr(s, '\0', len)))
            ERR(L, v,
                "desired: the key of the resource's desired state that holds the "
                "assignment (1 to %d bytes, no '.')",
                TWIN_KEY_MAX);
        else if (s)
            d->desired_key = zdup(L, s, len);
    }
    if ((v = get(L, n, "event"))) {
        memset(&a, 0, sizeof(a));
        a.kind = RULES_ACT_EVENT;
        msgpack_object *f = msgpack_zone_malloc(&L->rs->zone, sizeof(*f));
        if (!f)
            L->oom = true;
        else if (map_action(L, n, v, "event", &a, &l, dispatch_event_keys) == 0) {
            /* map_action took only scalar keys: check them for repeats and with: names */
            const yaml_node_t *with = get(L, n, "with"), *first;
            bool ok = true;
            for (size_t i = 0; i < a.args.via.map.size; i++) {
                const yaml_node_t *k = node(L, v->data.mapping.pairs.start[i].key);
                const char *ks = (const char *)k->data.scalar.value;
                size_t kl = k->data.scalar.length;
                if ((first = key_among(L, v, i, ks, kl))) {
                    ERR(L, k, "event: '%.*s' set twice (first on line %zu)",
                        (int)(kl > 64 ? 64 : kl), ks, first->start_mark.line + 1);
                    ok = false;
                } else if (with && with->type == YAML_MAPPING_NODE &&
                           (first = key_among(L, with, RULES_WITH_MAX, ks, kl))) {
                    ERR(L, k,
                        "event: '%.*s' is a with: value (line %zu) that the event carries; "
                        "choose another field name",
                        (int)(kl > 64 ? 64 : kl), ks, first->start_mark.line + 1);
                    ok = false;
                }
            }
            if (ok)
                d->event_fields = (*f = a.args, f);
        }
    }
}

static void dispatch_free(struct rules_dispatch *d)
{
    rules_expr_free(d->demand_when);
    rules_expr_free(d->priority);
    rules_expr_free(d->resource_when);
    rules_expr_free(d->capacity);
    rules_expr_free(d->cost);
    for (unsigned i = 0; i < RULES_WITH_MAX; i++)
        rules_expr_free(d->with[i].expr);
    memset(d, 0, sizeof(*d));
}

static void load_dispatch_one(struct loader *L, const yaml_node_t *n)
{
    static const char *const keys[] = {"name",        "demand",    "resource",   "cost",
                                       "max_demands", "on_assign", "on_release", NULL};
    struct rules_set *rs = L->rs;
    if (n->type != YAML_MAPPING_NODE) {
        ERR(L, n, "dispatch: each entry is a map with name, demand, resource and cost, got %s",
            kind_name(n));
        return;
    }
    struct rules_dispatch *d = &rs->dispatch[rs->ndispatch];
    memset(d, 0, sizeof(*d));
    d->line = (unsigned)n->start_mark.line + 1;
    d->max_demands = 200;
    d->release_args.type = MSGPACK_OBJECT_NIL;
    d->args.type = MSGPACK_OBJECT_NIL;
    unsigned before = L->errs->count;
    const yaml_node_t *v = get(L, n, "name");
    size_t len = 0;
    const char *s = v ? scalar(L, v, "name", &len) : NULL;
    if (!v)
        ERR(L, n, "dispatch: 'name' is missing");
    else if (s && !good_name(s, len))
        ERR(L, v,
            "name: a dispatch name is 1 to %d characters of A-Z a-z 0-9 _ - . :", RULES_NAME_MAX);
    else if (s)
        memcpy(d->name, s, len);
    for (unsigned i = 0; d->name[0] && i < rs->ndispatch; i++)
        if (!strcmp(rs->dispatch[i].name, d->name))
            ERR(L, v, "name: dispatch '%s' defined twice", d->name);
    check_keys(L, n, "dispatch", keys);
    if (!(v = get(L, n, "demand")))
        ERR(L, n, "dispatch: 'demand' is missing");
    else
        dispatch_demand(L, v, d);
    if (!(v = get(L, n, "resource")))
        ERR(L, n, "dispatch: 'resource' is missing");
    else
        dispatch_resource(L, v, d);
    if (!(v = get(L, n, "cost")))
        ERR(L, n, "dispatch: 'cost' is missing (an expression over demand. and resource.)");
    else if ((d->cost = expression_as(L, v, "cost", true, NULL)) && d->cost->type != RULES_NUM &&
             d->cost->type != RULES_OTHER)
        ERR(L, v, "cost: expected a number");
    if ((v = get(L, n, "max_demands"))) {
        s = scalar(L, v, "max_demands", &len);
        char buf[16], *end;
        unsigned long m = 0;
        if (s && len && len < sizeof(buf)) {
            memcpy(buf, s, len);
            buf[len] = '\0';
            m = strtoul(buf, &end, 10);
            if (*end || buf[0] == '-')
                m = 0;
        }
        if (s && (m < 1 || m > 100000))
            ERR(L, v, "max_demands: expected 1 to 100000 open demands per decision");
        else
            d->max_demands = (unsigned)m;
    }
    if ((v = get(L, n, "on_assign")))
        dispatch_assign(L, v, d);
    if ((v = get(L, n, "on_release"))) {
        static const char *const rkeys[] = {"command", NULL};
        const yaml_node_t *c;
        struct rules_action a;
        if (v->type != YAML_MAPPING_NODE)
            ERR(L, v, "on_release: expected a map with command:");
        else if (check_keys(L, v, "on_release", rkeys) && (c = get(L, v, "command")) &&
                 command_action(L, c, &a) == 0) {
            d->release_cmd = a.cmd;
            d->release_cmd_len = a.cmd_len;
            d->release_args = a.args;
            if (a.args.type != MSGPACK_OBJECT_NIL && a.args.type != MSGPACK_OBJECT_MAP)
                ERR(L, c, "command: args must be a map (the hub adds demand and dispatch)");
        }
    }
    if (L->errs->count != before) {
        dispatch_free(d);
        return;
    }
    rs->ndispatch++;
}

static void load_dispatch(struct loader *L, const yaml_node_t *n)
{
    if (n->type != YAML_SEQUENCE_NODE) {
        ERR(L, n, "dispatch: expected a list of dispatch entries, got %s", kind_name(n));
        return;
    }
    size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (cnt > RULES_DISPATCH_MAX) {
        ERR(L, n, "dispatch: %zu entries, more than the limit of %d", cnt, RULES_DISPATCH_MAX);
        return;
    }
    if (!(L->rs->dispatch = calloc(cnt ? cnt : 1, sizeof(*L->rs->dispatch)))) {
        L->oom = true;
        return;
    }
    for (size_t i = 0; i < cnt && !L->oom; i++)
        load_dispatch_one(L, node(L, n->data.sequence.items.start[i]));
}

unsigned rules_set_dispatch_count(const struct rules_set *rs)
{
    return rs->ndispatch;
}

const struct rules_dispatch *rules_set_dispatch(const struct rules_set *rs, unsigned i)
{
    return i < rs->ndispatch ? &rs->dispatch[i] : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Ordering
 * ------------------------------------------------------------------------------------------ */

/* What rule r's actions write, as paths: desired leaves and predicted.<model>. */
static void writes_of(const struct rules_set *rs, const struct rule *r, struct rules_changes *c)
{
    const struct action_list *lists[] = {&r->on_fire, &r->on_resolve};
    rules_changes_reset(c);
    for (int l = 0; l < 2; l++)
        for (unsigned i = 0; i < lists[l]->n; i++) {
            const struct rules_action *a = &lists[l]->v[i];
            if (a->kind == RULES_ACT_DESIRED)
                rules_changes_add_patch(c, "desired", &a->args);
            else if (a->kind == RULES_ACT_PREDICT) {
                char p[RULES_NAME_MAX + 16];
                int n = snprintf(p, sizeof(p), "predicted.%s", rs->models[a->model].name);
                rules_changes_add(c, p, (size_t)n);
            }
        }
}

struct adj {
    unsigned from, to;
};

struct adj_list {
    struct adj *v;
    unsigned n, cap;
    unsigned from;
    bool oom;
};

static void add_edge(void *ctx, unsigned to)
{
    struct adj_list *a = ctx;
    if (a->n == a->cap) {
        unsigned cap = a->cap ? a->cap * 2 : 64;
        struct adj *v = realloc(a->v, cap * sizeof(*v));
        if (!v) {
            a->oom = true;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (struct adj){a->from, to};
}

/* Orders rs->rules so that every writer comes before its readers, file order otherwise.
 * Returns 0, -EINVAL (a loop, reported) or -ENOMEM. */
static int order_rules(struct loader *L)
{
    struct rules_set *rs = L->rs;
    unsigned n = rs->nrules;
    struct adj_list adj = {0};
    struct rules_changes *c = malloc(sizeof(*c));
    unsigned *indeg = calloc(n ? n : 1, sizeof(unsigned)), *order = malloc((n ? n : 1) * sizeof(unsigned));
    bool *done = calloc(n ? n : 1, sizeof(bool));
    int rc = -ENOMEM;
    if (!c || !indeg || !order || !done)
        goto out;
    if (rules__index_build(rs) < 0)
        goto out;
    for (unsigned r = 0; r < n; r++) {
        writes_of(rs, &rs->rules[r], c);
        adj.from = r;
        if (c->all) {
            for (unsigned t = 0; t < n; t++)
                add_edge(&adj, t);
            continue;
        }
        for (unsigned i = 0; i < c->n; i++)
            rules__index_touched(rs, c->buf + c->off[i], c->len[i], add_edge, &adj);
    }
    if (adj.oom)
        goto out;
    /* drop edges that the index over-approximates: the reader must read a written path */
    unsigned m = 0;
    for (unsigned i = 0; i < adj.n; i++) {
        const struct rule *w = &rs->rules[adj.v[i].from], *rd = &rs->rules[adj.v[i].to];
        writes_of(rs, w, c);
        bool real = rd->when->reads_all && c->n > 0;
        for (unsigned p = 0; p < rd->when->npaths && !real; p++)
            real = rules_changes_touch(c, rd->when->paths[p].full, rd->when->paths[p].full_len);
        bool dup = m && adj.v[m - 1].from == adj.v[i].from && adj.v[m - 1].to == adj.v[i].to;
        if (real && !dup)
            adj.v[m++] = adj.v[i];
    }
    adj.n = m;
    for (unsigned i = 0; i < adj.n; i++)
        indeg[adj.v[i].to]++;
    /* Kahn's algorithm, taking the earliest rule in the file among those ready */
    unsigned placed = 0;
    while (placed < n) {
        unsigned pick = n;
        for (unsigned r = 0; r < n && pick == n; r++)
            if (!done[r] && indeg[r] == 0)
                pick = r;
        if (pick == n)
            break;
        done[pick] = true;
        order[placed++] = pick;
        for (unsigned i = 0; i < adj.n; i++)
            if (adj.v[i].from == pick)
                indeg[adj.v[i].to]--;
    }
    if (placed < n) {
        /* follow edges among the rest until a rule repeats: that is the loop */
        unsigned start = 0;
        while (done[start])
            start++;
        unsigned path[64], len = 0, cur = start;
        bool *seen = calloc(n, sizeof(bool));
        if (!seen)
            goto out;
        while (!seen[cur] && len < 64) {
            seen[cur] = true;
            path[len++] = cur;
            for (unsigned i = 0; i < adj.n; i++)
                if (adj.v[i].from == cur && !done[adj.v[i].to]) {
                    cur = adj.v[i].to;
                    break;
                }
        }
        free(seen);
        char text[RULES_ERR_LEN] = "";
        size_t tl = 0;
        unsigned first = 0;
        while (first < len && path[first] != cur)
            first++;
        for (unsigned i = first; i < len && tl < sizeof(text) - 80; i++)
            tl += (size_t)snprintf(text + tl, sizeof(text) - tl, "'%s' -> ", rs->rules[path[i]].name);
        snprintf(text + tl, sizeof(text) - tl, "'%s'", rs->rules[cur].name);
        add_error(L, rs->rules[cur].line, 1,
                  "rules %s form a loop: each one's actions write what the next one reads", text);
        rc = -EINVAL;
        goto out;
    }
    struct rule *sorted = malloc((n ? n : 1) * sizeof(struct rule));
    if (!sorted)
        goto out;
    for (unsigned i = 0; i < n; i++)
        sorted[i] = rs->rules[order[i]];
    if (n)
        memcpy(rs->rules, sorted, n * sizeof(struct rule));
    free(sorted);
    rc = rules__index_build(rs);
out:
    free(adj.v);
    free(c);
    free(indeg);
    free(order);
    free(done);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The entry points
 * ------------------------------------------------------------------------------------------ */

void rules_set_free(struct rules_set *rs)
{
    if (!rs)
        return;
    for (unsigned i = 0; i < rs->nrules; i++)
        rules_expr_free(rs->rules[i].when);
    for (unsigned i = 0; i < rs->nmodels; i++) {
        for (unsigned j = 0; j < rs->models[i].ninputs; j++)
            rules_expr_free(rs->models[i].inputs[j]);
        free(rs->models[i].inputs);
        rules_expr_free(rs->models[i].target);
        rules__model_close(&rs->models[i]);
    }
    free(rs->models);
    free(rs->rules);
    for (unsigned i = 0; i < rs->ndispatch; i++)
        dispatch_free(&rs->dispatch[i]);
    free(rs->dispatch);
    rules__index_free(rs);
    msgpack_zone_destroy(&rs->zone);
    free(rs);
}

static void syntax_error(struct loader *L, const yaml_parser_t *ps)
{
    const char *problem = ps->problem ? ps->problem : "malformed YAML";
    if (ps->error == YAML_READER_ERROR)
        add_error(L, 0, 0, "%s at byte %zu", problem, ps->problem_offset);
    else
        add_error(L, ps->problem_mark.line + 1, ps->problem_mark.column + 1, "%s%s%s", problem,
                  ps->context ? " " : "", ps->context ? ps->context : "");
}

int rules_set_parse(const char *name, const char *text, size_t len, const char *base_dir,
                    const struct rules_options *o, struct rules_set **out,
                    struct rules_errors *errs)
{
    struct rules_options defaults;
    if (!o) {
        rules_options_init(&defaults);
        o = &defaults;
    }
    struct loader L = {.name = name, .base_dir = base_dir, .errs = errs, .o = o};
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = -EINVAL;

    if (len > o->max_file_bytes) {
        add_error(&L, 0, 0, "%zu bytes, more than the limit of %zu", len, o->max_file_bytes);
        return -EINVAL;
    }
    struct rules_set *rs = calloc(1, sizeof(*rs));
    if (!rs || !msgpack_zone_init(&rs->zone, 4096)) {
        free(rs);
        return -ENOMEM;
    }
    rs->opt = *o;
    L.rs = rs;
    if (!yaml_parser_initialize(&parser)) {
        rules_set_free(rs);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        syntax_error(&L, &parser);
        goto fail_parser;
    }
    L.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !is_null(root)) {
        static const char *const top_keys[] = {"rules", "models", "dispatch", NULL};
        if (root->type != YAML_MAPPING_NODE) {
            ERR(&L, root, "expected a map with rules: (and models:), got %s", kind_name(root));
            goto fail_doc;
        }
        check_keys(&L, root, "top level", top_keys);
        yaml_node_t *models = get(&L, root, "models"), *rules = get(&L, root, "rules");
        if (models && !is_null(models))
            load_models(&L, models);
        if (rules && !is_null(rules)) {
            if (rules->type != YAML_SEQUENCE_NODE) {
                ERR(&L, rules, "rules: expected a list of rules, got %s", kind_name(rules));
            } else {
                size_t cnt =
                    (size_t)(rules->data.sequence.items.top - rules->data.sequence.items.start);
                if (cnt > o->max_rules) {
                    ERR(&L, rules, "rules: %zu rules, more than the limit of %u", cnt,
                        o->max_rules);
                } else if (!(rs->rules = calloc(cnt ? cnt : 1, sizeof(struct rule)))) {
                    L.oom = true;
                } else {
                    for (size_t i = 0; i < cnt && !L.oom; i++)
                        load_rule(&L, node(&L, rules->data.sequence.items.start[i]));
                }
            }
        }
        yaml_node_t *dispatch = get(&L, root, "dispatch");
        if (dispatch && !is_null(dispatch) && !L.oom)
            load_dispatch(&L, dispatch);
    }
    if (!L.oom && errs->count == 0 && (rc = order_rules(&L)) == -ENOMEM)
        L.oom = true;
    if (L.oom)
        rc = -ENOMEM;
    else if (errs->count)
        rc = -EINVAL;
    else
        rc = 0;
fail_doc:
    yaml_document_delete(&doc);
fail_parser:
    yaml_parser_delete(&parser);
    if (rc < 0) {
        rules_set_free(rs);
        return rc;
    }
    *out = rs;
    return 0;
}

int rules_set_load(const char *path, const struct rules_options *o, struct rules_set **out,
                   struct rules_errors *errs)
{
    struct rules_options defaults;
    if (!o) {
        rules_options_init(&defaults);
        o = &defaults;
    }
    struct loader L = {.name = path, .errs = errs, .o = o};
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        add_error(&L, 0, 0, "%s", strerror(e));
        return e == ENOENT ? -ENOENT : -EIO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        add_error(&L, 0, 0, "not a regular file");
        fclose(f);
        return -EIO;
    }
    if ((size_t)st.st_size > o->max_file_bytes) {
        add_error(&L, 0, 0, "%lld bytes, more than the limit of %zu", (long long)st.st_size,
                  o->max_file_bytes);
        fclose(f);
        return -EINVAL;
    }
    char *text = malloc((size_t)st.st_size + 1);
    if (!text) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(text, 1, (size_t)st.st_size, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        add_error(&L, 0, 0, "read error");
        free(text);
        return -EIO;
    }
    /* model files are relative to the rules file's folder */
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash && (size_t)(slash - path) < sizeof(dir)) {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    } else {
        strcpy(dir, ".");
    }
    int rc = rules_set_parse(path, text, n, dir, o, out, errs);
    free(text);
    return rc;
}
