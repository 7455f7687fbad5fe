/* query.c: the fleet query: compiles a query's filter, fields and order with the rules'
 * expression compiler, walks the committed twins of one read transaction, and packs one page
 * of rows with the cursor of the next. History ranges are range.c's; nothing here knows MQTT
 * or HTTP.
 *
 * Choices made here (the contract leaves them open):
 * - Order by an expression: numbers, strings and booleans sort by type first (booleans, then
 *   numbers, then strings), then by value; nil, missing, NaN and maps or arrays sort last in
 *   both directions; ties by id, ascending. Strings sort by their first QUERY__STR_KEY bytes,
 *   which is what a cursor can hold, so that a cursor resumes exactly.
 * - `matched` counts every twin that matched on the page's walk: by id, up to the one that
 *   proves there is a next page; by an expression, every match of the whole walk.
 * - A damaged stored document is skipped (it is no row) rather than failing every query.
 * - A page holds at least one row when anything matches, even one larger than max_reply on its
 *   own (a twin is bounded by the store's max_doc_bytes), so paging always advances. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STOP 1             /* a walk's "enough", told apart from negative errors */
#define QUERY__STR_KEY 128 /* bytes of a string that ordering looks at */
#define REPLY_SLACK 1024   /* bytes of the answer's map besides its rows */

void query_limits_init(struct query_limits *l)
{
    l->max_limit = 1000;
    l->max_reply = 4u << 20;
    l->max_points = 10000;
    l->max_expr = 1024;
}

void query__errf(char *err, const char *fmt, ...)
{
    va_list ap;
    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(err, QUERY_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------------
 * Compiled parts
 * ------------------------------------------------------------------------------------------ */

enum bare { BARE_NONE = -1, BARE_REPORTED, BARE_DESIRED, BARE_DELTA, BARE_PREDICTED };

struct qexpr {
    struct rules_expr *e; /* NULL: the `rules` field, or no where */
    char *text;           /* as given, trimmed: the row's key */
    size_t len;
    bool rules;     /* the special field */
    bool skip;      /* "id" or "version": already in every row */
    enum bare bare; /* a bare path into a section: packed as the object it names */
    char sub[TWIN_PATH_MAX + 1];
    size_t sub_len;
};

/* A position in an order: a row's sort key and id. */
enum okind { K_BOOL, K_NUM, K_STR, K_NIL /* last */ };
struct okey {
    uint8_t kind;
    bool b;
    double n;
    uint8_t slen;
    uint8_t idlen;
    char s[QUERY__STR_KEY];
    char id[TWIN_ID_MAX];
};

struct query {
    struct qexpr where;
    struct qexpr fields[QUERY_FIELDS_MAX];
    unsigned nfields;
    struct qexpr order; /* e NULL: by id */
    bool desc;
    uint32_t order_hash;
    char prefix[TWIN_ID_MAX];
    size_t prefix_len;
    unsigned limit;
    struct query_limits lim;
    bool has_cursor;
    struct okey cursor;
    unsigned parts; /* TWIN_PART_* the expressions may read: the rest is not unpacked */
};

static bool blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void trim(const char **s, size_t *len)
{
    while (*len && blank(**s))
        (*s)++, (*len)--;
    while (*len && blank((*s)[*len - 1]))
        (*len)--;
}

static bool ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool ident_char(char c)
{
    return ident_start(c) || (c >= '0' && c <= '9');
}

/* Whether text is only a path into reported, desired, delta or predicted (names, `quoted
 * names`, dots); if so, the part below the section goes to x->sub. Anything this does not
 * recognise is evaluated instead, which is never wrong, only less complete for maps. */
static void bare_path(struct qexpr *x, const char *t, size_t len)
{
    static const char *const roots[] = {"reported", "desired", "delta", "predicted"};
    size_t i = 0, n = 0;
    int seg = 0;

    x->bare = BARE_NONE;
    for (;;) {
        const char *k;
        size_t klen;
        while (i < len && blank(t[i]))
            i++;
        if (i < len && t[i] == '`') {
            k = t + ++i;
            while (i < len && t[i] != '`')
                i++;
            if (i == len)
                return;
            klen = (size_t)(t + i - k);
            i++;
        } else if (i < len && ident_start(t[i])) {
            k = t + i;
            while (i < len && ident_char(t[i]))
                i++;
            klen = (size_t)(t + i - k);
        } else {
            return;
        }
        if (klen == 0)
            return;
        if (seg == 0) {
            int r = -1;
            for (int j = 0; j < 4; j++)
                if (strlen(roots[j]) == klen && memcmp(roots[j], k, klen) == 0)
                    r = j;
            if (r < 0)
                return;
            x->bare = (enum bare)r;
        } else {
            if (n + (n > 0) + klen > TWIN_PATH_MAX) {
                x->bare = BARE_NONE;
                return;
            }
            if (n)
                x->sub[n++] = '.';
            memcpy(x->sub + n, k, klen);
            n += klen;
        }
        seg++;
        while (i < len && blank(t[i]))
            i++;
        if (i == len)
            break;
        if (t[i] != '.') {
            x->bare = BARE_NONE;
            return;
        }
        i++;
    }
    x->sub[n] = '\0';
    x->sub_len = n;
}

/* The sections text may read: every word that names one (a word in a string or a quoted name
 * only costs an unpack); age() reads meta. */
static unsigned parts_of(const char *t, size_t len)
{
    static const struct {
        const char *w;
        unsigned part;
    } words[] = {{"reported", TWIN_PART_REPORTED},
                 {"desired", TWIN_PART_DESIRED},
                 {"delta", TWIN_PART_DELTA},
                 {"predicted", TWIN_PART_PREDICTED},
                 {"age", TWIN_PART_META}};
    unsigned parts = 0;
    for (size_t i = 0; i < len;) {
        if (!ident_start(t[i])) {
            i++;
            continue;
        }
        size_t s = i;
        while (i < len && ident_char(t[i]))
            i++;
        for (size_t j = 0; j < sizeof words / sizeof words[0]; j++)
            if (strlen(words[j].w) == i - s && memcmp(words[j].w, t + s, i - s) == 0)
                parts |= words[j].part;
    }
    return parts;
}

/* Compiles text[0..len) (`shift` bytes into what the caller typed) as part `what`; the rules'
 * "COL: what" becomes "what:1:COL: what". */
static int compile(struct qexpr *x, const char *what, const char *text, size_t len, size_t shift,
                   const struct query_limits *l, unsigned *parts, char *err)
{
    char rerr[RULES_ERR_LEN];
    const char *t = text;
    size_t tlen = len;

    trim(&t, &tlen);
    if (tlen > l->max_expr) {
        query__errf(err, "%s: longer than %zu bytes", what, l->max_expr);
        return -EINVAL;
    }
    x->text = malloc(tlen + 1);
    if (!x->text)
        return -ENOMEM;
    memcpy(x->text, t, tlen);
    x->text[tlen] = '\0';
    x->len = tlen;
    rerr[0] = '\0';
    int rc = rules_expr_compile(text, len, &x->e, rerr);
    if (rc == -EINVAL) {
        char *end;
        unsigned long col = strtoul(rerr, &end, 10);
        if (end != rerr && end[0] == ':')
            query__errf(err, "%s:1:%lu:%s", what, col + shift, end + 1);
        else
            query__errf(err, "%s: %s", what, rerr);
    } else if (rc < 0) {
        query__errf(err, "%s: out of memory", what);
    }
    if (rc < 0)
        return rc;
    bare_path(x, t, tlen);
    *parts |= parts_of(t, tlen);
    return 0;
}

static void qexpr_cleanup(struct qexpr *x)
{
    rules_expr_free(x->e);
    free(x->text);
    x->e = NULL;
    x->text = NULL;
}

void query_free(struct query *q)
{
    if (!q)
        return;
    qexpr_cleanup(&q->where);
    for (unsigned i = 0; i < q->nfields; i++)
        qexpr_cleanup(&q->fields[i]);
    qexpr_cleanup(&q->order);
    free(q);
}

/* ---------------------------------------------------------------------------------------------
 * Cursors: "Q" then base64url (no padding) of
 *   mode 'i' | 'o', order hash (4 bytes, big-endian),
 *   'o' only: kind (1), value (bool: 1; num: 8, the double's bits big-endian; str: 1 + len),
 *   id length (1), id.
 * ------------------------------------------------------------------------------------------ */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static uint32_t fnv1a(const char *s, size_t n, uint32_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void cursor_encode(const struct query *q, const struct okey *k, char *out)
{
    unsigned char raw[8 + 1 + 8 + 1 + QUERY__STR_KEY + 1 + TWIN_ID_MAX];
    size_t n = 0;

    raw[n++] = q->order.e ? 'o' : 'i';
    for (int i = 3; i >= 0; i--)
        raw[n++] = (unsigned char)(q->order_hash >> (8 * i));
    if (q->order.e) {
        raw[n++] = k->kind;
        if (k->kind == K_BOOL) {
            raw[n++] = k->b;
        } else if (k->kind == K_NUM) {
            uint64_t u;
            memcpy(&u, &k->n, 8);
            for (int i = 7; i >= 0; i--)
                raw[n++] = (unsigned char)(u >> (8 * i));
        } else if (k->kind == K_STR) {
            raw[n++] = k->slen;
            memcpy(raw + n, k->s, k->slen);
            n += k->slen;
        }
    }
    raw[n++] = k->idlen;
    memcpy(raw + n, k->id, k->idlen);
    n += k->idlen;

    size_t o = 0;
    out[o++] = 'Q';
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)raw[i + 1] << 8;
        if (i + 2 < n)
            v |= raw[i + 2];
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = b64[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = b64[v & 63];
    }
    out[o] = '\0';
}

static int b64_val(char c)
{
    const char *p = c ? strchr(b64, c) : NULL;
    return p ? (int)(p - b64) : -1;
}

static int cursor_decode(struct query *q, const char *text, size_t len, char *err)
{
    unsigned char raw[QUERY_CURSOR_MAX];
    size_t n = 0, i;
    struct okey *k = &q->cursor;

    if (len >= QUERY_CURSOR_MAX || len < 2 || text[0] != 'Q' || (len - 1) % 4 == 1)
        goto bad;
    for (i = 1; i < len; i += 4) {
        uint32_t v = 0;
        size_t m = len - i < 4 ? len - i : 4;
        for (size_t j = 0; j < 4; j++) {
            int d = j < m ? b64_val(text[i + j]) : 0;
            if (d < 0)
                goto bad;
            v = v << 6 | (uint32_t)d;
        }
        raw[n++] = (unsigned char)(v >> 16);
        if (m > 2)
            raw[n++] = (unsigned char)(v >> 8);
        if (m > 3)
            raw[n++] = (unsigned char)v;
    }
    i = 0;
    if (n < 6)
        goto bad;
    char mode = (char)raw[i++];
    uint32_t h = 0;
    for (int j = 0; j < 4; j++)
        h = h << 8 | raw[i++];
    if ((mode != 'i' && mode != 'o') || (mode == 'o') != (q->order.e != NULL) ||
        h != q->order_hash) {
        query__errf(err, "cursor: not a cursor of this order");
        return -EINVAL;
    }
    memset(k, 0, sizeof *k);
    if (mode == 'o') {
        if (i >= n || raw[i] > K_NIL)
            goto bad;
        k->kind = raw[i++];
        if (k->kind == K_BOOL) {
            if (i >= n || raw[i] > 1)
                goto bad;
            k->b = raw[i++];
        } else if (k->kind == K_NUM) {
            uint64_t u = 0;
            if (n - i < 8)
                goto bad;
            for (int j = 0; j < 8; j++)
                u = u << 8 | raw[i++];
            memcpy(&k->n, &u, 8);
            if (isnan(k->n))
                goto bad;
        } else if (k->kind == K_STR) {
            if (i >= n || raw[i] > QUERY__STR_KEY || n - i - 1 < raw[i])
                goto bad;
            k->slen = raw[i++];
            memcpy(k->s, raw + i, k->slen);
            i += k->slen;
        }
    }
    if (i >= n || raw[i] == 0 || raw[i] > TWIN_ID_MAX || n - i - 1 != raw[i])
        goto bad;
    k->idlen = raw[i++];
    memcpy(k->id, raw + i, k->idlen);
    q->has_cursor = true;
    return 0;

bad:
    query__errf(err, "cursor: not a cursor");
    return -EINVAL;
}

/* ---------------------------------------------------------------------------------------------
 * query_new
 * ------------------------------------------------------------------------------------------ */

int query_new(const struct query_spec *s, const struct query_limits *l, struct query **out,
              char *err)
{
    struct query_limits defl;
    char what[32];
    int rc;

    if (!s || !out)
        return -EINVAL;
    if (!l) {
        query_limits_init(&defl);
        l = &defl;
    }
    struct query *q = calloc(1, sizeof *q);
    if (!q) {
        query__errf(err, "out of memory");
        return -ENOMEM;
    }
    q->lim = *l;
    q->where.bare = q->order.bare = BARE_NONE;

    if (s->limit > l->max_limit) {
        query__errf(err, "limit: at most %u", l->max_limit);
        rc = -EINVAL;
        goto fail;
    }
    q->limit = s->limit ? s->limit : QUERY_LIMIT_DEFAULT;
    if (q->limit > l->max_limit)
        q->limit = l->max_limit ? l->max_limit : 1;

    if (s->prefix && s->prefix_len) {
        if (s->prefix_len > TWIN_ID_MAX) {
            query__errf(err, "prefix: at most %d bytes", TWIN_ID_MAX);
            rc = -EINVAL;
            goto fail;
        }
        memcpy(q->prefix, s->prefix, s->prefix_len);
        q->prefix_len = s->prefix_len;
    }

    const char *w = s->where;
    size_t wl = s->where ? s->where_len : 0;
    trim(&w, &wl);
    if (wl && (rc = compile(&q->where, "where", s->where, s->where_len, 0, l, &q->parts, err)) < 0)
        goto fail;

    if (s->nfields > QUERY_FIELDS_MAX) {
        query__errf(err, "fields: at most %d", QUERY_FIELDS_MAX);
        rc = -EINVAL;
        goto fail;
    }
    for (unsigned i = 0; i < s->nfields; i++) {
        struct qexpr *x = &q->fields[i];
        const char *t = s->fields[i];
        size_t tl = t ? s->field_len[i] : 0;
        x->bare = BARE_NONE;
        trim(&t, &tl);
        snprintf(what, sizeof what, "fields[%u]", i);
        if (tl == 0) {
            query__errf(err, "%s: empty", what);
            rc = -EINVAL;
            goto fail;
        }
        for (unsigned j = 0; j < i; j++)
            if (q->fields[j].len == tl && memcmp(q->fields[j].text, t, tl) == 0) {
                query__errf(err, "%s: '%.*s' is fields[%u] already", what, (int)tl, t, j);
                rc = -EINVAL;
                goto fail;
            }
        q->nfields = i + 1; /* from here on query_free frees it */
        if (tl == 5 && memcmp(t, "rules", 5) == 0) {
            if (!(x->text = strdup("rules"))) {
                rc = -ENOMEM;
                goto fail;
            }
            x->len = 5;
            x->rules = true;
            continue;
        }
        if ((rc = compile(x, what, s->fields[i], s->field_len[i], 0, l, &q->parts, err)) < 0)
            goto fail;
        x->skip = (x->len == 2 && memcmp(x->text, "id", 2) == 0) ||
                  (x->len == 7 && memcmp(x->text, "version", 7) == 0);
    }

    const char *o = s->order;
    size_t ol = s->order ? s->order_len : 0;
    trim(&o, &ol);
    if (ol && (o[0] == '-' || o[0] == '+')) {
        q->desc = o[0] == '-';
        o++;
        ol--;
        if (ol == 0) {
            query__errf(err, "order: an expression must follow '%c'", q->desc ? '-' : '+');
            rc = -EINVAL;
            goto fail;
        }
    }
    if (ol &&
        (rc = compile(&q->order, "order", o, ol, (size_t)(o - s->order), l, &q->parts, err)) < 0)
        goto fail;
    q->order_hash = fnv1a(q->order.text ? q->order.text : "", q->order.len,
                          q->desc ? 2166136261u ^ 0x5a5a5a5au : 2166136261u);

    if (s->cursor && s->cursor_len && (rc = cursor_decode(q, s->cursor, s->cursor_len, err)) < 0)
        goto fail;
    *out = q;
    return 0;

fail:
    if (rc == -ENOMEM && err)
        query__errf(err, "out of memory");
    query_free(q);
    return rc;
}

int query_fields_split(struct query_spec *s, const char *text, size_t len, char *err)
{
    size_t i = 0, start = 0;
    int depth = 0;
    char quote = 0;

    s->nfields = 0;
    for (;; i++) {
        if (i < len && quote) {
            if (text[i] == '\\' && quote != '`' && i + 1 < len)
                i++;
            else if (text[i] == quote)
                quote = 0;
            continue;
        }
        if (i < len && (text[i] == '"' || text[i] == '\'' || text[i] == '`')) {
            quote = text[i];
            continue;
        }
        if (i < len && text[i] == '(')
            depth++;
        else if (i < len && text[i] == ')' && depth > 0)
            depth--;
        if (i < len && (text[i] != ',' || depth > 0))
            continue;
        const char *f = text + start;
        size_t fl = i - start;
        trim(&f, &fl);
        if (fl == 0) {
            query__errf(err, "fields: field %u is empty", s->nfields + 1);
            return -EINVAL;
        }
        if (s->nfields == QUERY_FIELDS_MAX) {
            query__errf(err, "fields: at most %d", QUERY_FIELDS_MAX);
            return -EINVAL;
        }
        s->fields[s->nfields] = f;
        s->field_len[s->nfields++] = fl;
        start = i + 1;
        if (i >= len)
            break;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Running
 * ------------------------------------------------------------------------------------------ */

struct rstate {
    const char *name;
    size_t len;
    enum rules_state st;
};

struct run {
    struct query *q;
    struct twin_txn *txn;
    msgpack_zone zone;
    struct twin_doc doc;
    struct rules_twin tw;
    const char *id; /* the twin being read (the history callback's) */
    size_t id_len;
    char terr[TWIN_ERR_LEN];
    msgpack_sbuffer rows;
    msgpack_packer rpk;
    size_t budget; /* bytes of rows the answer may hold */
    struct query_result *res;
    struct okey last; /* of the last row packed */
    struct okey *heap;
    unsigned nheap, capheap;
    struct rstate *rs;
    unsigned nrs, caprs;
    int rc; /* an error a walk stopped for */
};

static int history(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                   void *cb_ctx)
{
    struct run *r = ctx;
    return twin_history_read(r->txn, r->id, r->id_len, path, len, since, cb, cb_ctx, r->terr);
}

/* Decodes a stored document into r->doc. Returns 0, 1 (damaged: skip it), -ENOMEM. */
static int load(struct run *r, const char *id, size_t id_len, const void *buf, size_t len)
{
    msgpack_zone_clear(&r->zone);
    r->id = id;
    r->id_len = id_len;
    int rc = twin_doc_decode_parts(buf, len, r->q->parts, &r->zone, &r->doc, r->terr);
    if (rc == -ENOMEM)
        return rc;
    return rc < 0 ? 1 : 0;
}

static int eval(struct run *r, const struct qexpr *x, struct rules_value *v, char *err)
{
    int rc = rules_expr_eval(x->e, &r->tw, v, NULL);
    if (rc < 0) {
        query__errf(err, "twin '%.*s': %s", (int)r->id_len, r->id, r->terr);
        return -EIO;
    }
    return 0;
}

static void okey_set(struct okey *k, const struct rules_value *v, const char *id, size_t id_len)
{
    k->kind = K_NIL;
    if (v) {
        if (v->type == RULES_BOOL) {
            k->kind = K_BOOL;
            k->b = v->b;
        } else if (v->type == RULES_NUM && !isnan(v->n)) {
            k->kind = K_NUM;
            k->n = v->n == 0 ? 0.0 : v->n; /* -0 and 0 are one key */
        } else if (v->type == RULES_STR) {
            k->kind = K_STR;
            k->slen = (uint8_t)(v->len < QUERY__STR_KEY ? v->len : QUERY__STR_KEY);
            memcpy(k->s, v->s, k->slen);
        }
    }
    k->idlen = (uint8_t)id_len;
    memcpy(k->id, id, id_len);
}

static int id_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* < 0: a comes before b in the query's order. */
static int okey_cmp(const struct query *q, const struct okey *a, const struct okey *b)
{
    if ((a->kind == K_NIL) != (b->kind == K_NIL))
        return a->kind == K_NIL ? 1 : -1;
    if (a->kind != K_NIL) {
        int c = 0;
        if (a->kind != b->kind)
            c = a->kind < b->kind ? -1 : 1;
        else if (a->kind == K_BOOL)
            c = (int)a->b - (int)b->b;
        else if (a->kind == K_NUM)
            c = (a->n > b->n) - (a->n < b->n);
        else
            c = id_cmp(a->s, a->slen, b->s, b->slen);
        if (c)
            return q->desc ? -c : c;
    }
    return id_cmp(a->id, a->idlen, b->id, b->idlen);
}

static int rule_one(void *ctx, const char *id, size_t id_len, const char *name, size_t name_len,
                    const void *buf, size_t len)
{
    struct run *r = ctx;
    struct rules_record rec;
    (void)id, (void)id_len;
    if (rules_record_decode(buf, len, &rec) < 0 || rec.state == RULES_INACTIVE)
        return 0;
    if (r->nrs == r->caprs) {
        unsigned cap = r->caprs ? r->caprs * 2 : 8;
        struct rstate *p = realloc(r->rs, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        r->rs = p;
        r->caprs = cap;
    }
    r->rs[r->nrs++] = (struct rstate){name, name_len, rec.state};
    return 0;
}


static void pack_value(msgpack_packer *pk, const struct rules_value *v)
{
    switch (v->type) {
    case RULES_BOOL:
        if (v->b)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        return;
    case RULES_NUM:
        if (!isfinite(v->n))
            msgpack_pack_nil(pk);
        else if (fabs(v->n) < 9007199254740992.0 && v->n == (double)(int64_t)v->n)
            msgpack_pack_int64(pk, (int64_t)v->n);
        else
            msgpack_pack_double(pk, v->n);
        return;
    case RULES_STR:
        query__pack_str(pk, v->s, v->len);
        return;
    default:
        msgpack_pack_nil(pk);
        return;
    }
}

static const msgpack_object *section(const struct twin_doc *d, enum bare b)
{
    switch (b) {
    case BARE_REPORTED:
        return &d->reported;
    case BARE_DESIRED:
        return &d->desired;
    case BARE_DELTA:
        return &d->delta;
    case BARE_PREDICTED:
        return &d->predicted;
    default:
        return NULL;
    }
}

static int pack_field(struct run *r, const struct qexpr *x, char *err)
{
    msgpack_packer *pk = &r->rpk;
    if (x->rules) {
        r->nrs = 0;
        int rc = twin_rule_state_list(r->txn, r->id, r->id_len, rule_one, r, r->terr);
        if (rc == -ENOMEM)
            return rc;
        if (rc < 0) {
            query__errf(err, "twin '%.*s': rule states: %s", (int)r->id_len, r->id, r->terr);
            return -EIO;
        }
        msgpack_pack_map(pk, r->nrs);
        for (unsigned i = 0; i < r->nrs; i++) {
            query__pack_str(pk, r->rs[i].name, r->rs[i].len);
            const char *st = rules_state_name(r->rs[i].st);
            query__pack_str(pk, st, strlen(st));
        }
        return 0;
    }
    if (x->bare != BARE_NONE) {
        const msgpack_object *sec = section(&r->doc, x->bare), *o = NULL;
        if (sec->type == MSGPACK_OBJECT_MAP)
            o = x->sub_len ? twin_value_path(sec, x->sub, x->sub_len) : sec;
        if (o)
            msgpack_pack_object(pk, *o);
        else
            msgpack_pack_nil(pk);
        return 0;
    }
    struct rules_value v;
    int rc = eval(r, x, &v, err);
    if (rc < 0)
        return rc;
    pack_value(pk, &v);
    return 0;
}

/* Packs the row of the loaded twin (stored bytes buf[0..len)) into r->rows. Returns 0, 1 (the
 * answer would pass max_reply: nothing packed), or an error. */
static int pack_row(struct run *r, const void *buf, size_t len, char *err)
{
    struct query *q = r->q;
    size_t before = r->rows.size;
    int rc = 0;

    if (q->nfields == 0) {
        rc = msgpack_sbuffer_write(&r->rows, buf, len);
    } else {
        unsigned n = 2;
        for (unsigned i = 0; i < q->nfields; i++)
            n += !q->fields[i].skip;
        msgpack_pack_map(&r->rpk, n);
        query__pack_str(&r->rpk, "id", 2);
        query__pack_str(&r->rpk, r->id, r->id_len);
        query__pack_str(&r->rpk, "version", 7);
        msgpack_pack_uint64(&r->rpk, r->doc.version);
        for (unsigned i = 0; i < q->nfields && rc == 0; i++) {
            if (q->fields[i].skip)
                continue;
            query__pack_str(&r->rpk, q->fields[i].text, q->fields[i].len);
            rc = pack_field(r, &q->fields[i], err);
        }
    }
    if (rc == 0 && r->rows.size > r->budget && r->res->rows > 0)
        rc = 1;
    if (rc) {
        r->rows.size = before;
        return rc;
    }
    r->res->rows++;
    return 0;
}

/* Whether the loaded twin passes where. Returns 1, 0 or an error. */
static int match(struct run *r, char *err)
{
    struct rules_value v;
    if (!r->q->where.e)
        return 1;
    int rc = eval(r, &r->q->where, &v, err);
    if (rc < 0)
        return rc;
    return rules_value_true(&v);
}

struct walk {
    struct run *r;
    char *err;
};

static int by_id_one(void *ctx, const char *id, size_t id_len, const void *buf, size_t len)
{
    struct walk *w = ctx;
    struct run *r = w->r;
    int rc;

    r->res->scanned++;
    if ((rc = load(r, id, id_len, buf, len)) != 0)
        return rc < 0 ? rc : 0;
    if ((rc = match(r, w->err)) <= 0)
        return rc;
    r->res->matched++;
    if (r->res->rows == r->q->limit) {
        r->res->more = true;
        return STOP;
    }
    rc = pack_row(r, buf, len, w->err);
    if (rc == 1) {
        r->res->more = true;
        return STOP;
    }
    if (rc < 0)
        return rc;
    okey_set(&r->last, NULL, id, id_len);
    return 0;
}

/* The heap keeps the capheap keys that come first in the order, the one that comes last on
 * top. */
static void heap_down(const struct query *q, struct okey *h, unsigned n, unsigned i)
{
    for (;;) {
        unsigned l = 2 * i + 1, m = i;
        if (l < n && okey_cmp(q, &h[l], &h[m]) > 0)
            m = l;
        if (l + 1 < n && okey_cmp(q, &h[l + 1], &h[m]) > 0)
            m = l + 1;
        if (m == i)
            return;
        struct okey t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_up(const struct query *q, struct okey *h, unsigned i)
{
    while (i > 0) {
        unsigned p = (i - 1) / 2;
        if (okey_cmp(q, &h[i], &h[p]) <= 0)
            return;
        struct okey t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static int by_order_one(void *ctx, const char *id, size_t id_len, const void *buf, size_t len)
{
    struct walk *w = ctx;
    struct run *r = w->r;
    struct query *q = r->q;
    struct rules_value v;
    struct okey k;
    int rc;

    r->res->scanned++;
    if ((rc = load(r, id, id_len, buf, len)) != 0)
        return rc < 0 ? rc : 0;
    if ((rc = match(r, w->err)) <= 0)
        return rc;
    r->res->matched++;
    if ((rc = eval(r, &q->order, &v, w->err)) < 0)
        return rc;
    okey_set(&k, &v, id, id_len);
    if (q->has_cursor && okey_cmp(q, &k, &q->cursor) <= 0)
        return 0;
    if (r->nheap < r->capheap) {
        r->heap[r->nheap] = k;
        heap_up(q, r->heap, r->nheap++);
    } else if (okey_cmp(q, &k, &r->heap[0]) < 0) {
        r->heap[0] = k;
        heap_down(q, r->heap, r->nheap, 0);
    }
    return 0;
}

static int run_order(struct run *r, char *err)
{
    struct query *q = r->q;
    struct walk w = {r, err};
    char terr[TWIN_ERR_LEN];

    r->capheap = q->limit + 1;
    r->heap = malloc(r->capheap * sizeof *r->heap);
    if (!r->heap)
        return -ENOMEM;
    int rc = twin_list(r->txn, q->prefix, q->prefix_len, by_order_one, &w, terr);
    if (rc < 0 && rc != -ENOMEM && rc != -EIO)
        rc = -EIO;
    if (rc < 0) {
        if (rc == -EIO && err && !err[0])
            query__errf(err, "%s", terr);
        return rc;
    }
    /* heapsort: the last in the order goes to the end, and so on: first comes first */
    for (unsigned end = r->nheap; end > 1; end--) {
        struct okey t = r->heap[0];
        r->heap[0] = r->heap[end - 1];
        r->heap[end - 1] = t;
        heap_down(q, r->heap, end - 1, 0);
    }
    for (unsigned i = 0; i < r->nheap; i++) {
        const struct okey *k = &r->heap[i];
        const void *buf;
        size_t len;
        if (r->res->rows == q->limit) {
            r->res->more = true;
            break;
        }
        rc = twin_get_raw(r->txn, k->id, k->idlen, &buf, &len, terr);
        if (rc < 0) {
            query__errf(err, "twin '%.*s': %s", (int)k->idlen, k->id, terr);
            return rc == -ENOMEM ? rc : -EIO;
        }
        if ((rc = load(r, k->id, k->idlen, buf, len)) != 0) {
            if (rc < 0)
                return rc;
            continue;
        }
        rc = pack_row(r, buf, len, err);
        if (rc == 1) {
            r->res->more = true;
            break;
        }
        if (rc < 0)
            return rc;
        r->last = *k;
    }
    return 0;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int run_init(struct run *r, struct query *q, struct twin_txn *txn, int64_t now,
                    struct query_result *res)
{
    memset(r, 0, sizeof *r);
    r->q = q;
    r->txn = txn;
    r->res = res;
    r->budget = q->lim.max_reply > REPLY_SLACK ? q->lim.max_reply - REPLY_SLACK : 0;
    r->tw.doc = &r->doc;
    r->tw.now = now;
    r->tw.history = history;
    r->tw.history_ctx = r;
    if (!msgpack_zone_init(&r->zone, 8192))
        return -ENOMEM;
    msgpack_sbuffer_init(&r->rows);
    msgpack_packer_init(&r->rpk, &r->rows, msgpack_sbuffer_write);
    return 0;
}

static void run_cleanup(struct run *r)
{
    free(r->heap);
    free(r->rs);
    msgpack_sbuffer_destroy(&r->rows);
    msgpack_zone_destroy(&r->zone);
}

int query_row(struct query *q, struct twin_txn *txn, const char *id, size_t id_len, const void *doc,
              size_t len, int64_t now, msgpack_packer *pk, bool *matched, char *err)
{
    struct query_result res = {0};
    struct run r;
    int rc;

    if (!q || !txn || !id || !doc || !pk || !matched)
        return -EINVAL;
    *matched = false;
    if (err)
        err[0] = '\0';
    if (run_init(&r, q, txn, now, &res) < 0) {
        query__errf(err, "out of memory");
        return -ENOMEM;
    }
    r.budget = SIZE_MAX;
    rc = load(&r, id, id_len, doc, len);
    if (rc == 1) {
        query__errf(err, "twin '%.*s': %s", (int)id_len, id, r.terr);
        rc = -EBADMSG;
    }
    if (rc == 0 && (rc = match(&r, err)) == 1 && (rc = pack_row(&r, doc, len, err)) == 0) {
        *matched = true;
        if (pk->callback(pk->data, r.rows.data, r.rows.size) < 0) {
            query__errf(err, "out of memory");
            rc = -ENOMEM;
        }
    }
    if (rc == -ENOMEM && err && !err[0])
        query__errf(err, "out of memory");
    run_cleanup(&r);
    return rc < 0 ? rc : 0;
}

int query_run(struct query *q, struct twin_txn *txn, int64_t now, msgpack_packer *pk,
              struct query_result *res, char *err)
{
    struct query_result dummy;
    struct run r;
    int64_t t0 = mono_us();
    int rc;

    if (!q || !txn || !pk)
        return -EINVAL;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    if (err)
        err[0] = '\0';
    if (run_init(&r, q, txn, now, res) < 0) {
        query__errf(err, "out of memory");
        return -ENOMEM;
    }

    if (q->order.e) {
        rc = run_order(&r, err);
    } else {
        struct walk w = {&r, err};
        char terr[TWIN_ERR_LEN];
        const char *after = q->has_cursor ? q->cursor.id : NULL;
        size_t after_len = q->has_cursor ? q->cursor.idlen : 0;
        rc = twin_list_after(txn, q->prefix, q->prefix_len, after, after_len, by_id_one, &w, terr);
        if (rc == STOP)
            rc = 0;
        if (rc < 0 && rc != -ENOMEM && rc != -EIO)
            rc = -EIO;
        if (rc == -EIO && err && !err[0])
            query__errf(err, "%s", terr);
    }
    if (rc < 0) {
        if (rc == -ENOMEM)
            query__errf(err, "out of memory");
        goto out;
    }
    if (res->more)
        cursor_encode(q, &r.last, res->next);
    res->took_us = mono_us() - t0;

    msgpack_pack_map(pk, 5);
    query__pack_str(pk, "rows", 4);
    msgpack_pack_array(pk, res->rows);
    if (r.rows.size && pk->callback(pk->data, r.rows.data, r.rows.size) < 0) {
        rc = -ENOMEM;
        query__errf(err, "out of memory");
        goto out;
    }
    query__pack_str(pk, "next", 4);
    if (res->more)
        query__pack_str(pk, res->next, strlen(res->next));
    else
        msgpack_pack_nil(pk);
    query__pack_str(pk, "scanned", 7);
    msgpack_pack_uint64(pk, res->scanned);
    query__pack_str(pk, "matched", 7);
    msgpack_pack_uint64(pk, res->matched);
    query__pack_str(pk, "took_ms", 7);
    msgpack_pack_double(pk, (double)res->took_us / 1000.0);
    rc = 0;

out:
    run_cleanup(&r);
    return rc;
}
