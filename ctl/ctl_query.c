/* ctl_query: `twinctl query` and `twinctl history --from --to --step`, the command-line face of
 * query/: arguments, pages, JSON lines and tables. What a query means, its rows and cursors,
 * and what a bucket holds are query/'s. Single-threaded.
 *
 * Choices made here: without --limit every page is followed (1000 rows each) in one read
 * transaction, so the rows are one snapshot; with --limit one page is printed and, when there
 * is more, "twinctl: next page: --cursor C" goes to stderr (exit 0). --table gathers every row
 * first to size its columns. */
#include "ctl_query.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "config.h"
#include "ctl_fail.h"
#include "query.h"



/* ---------------------------------------------------------------------------------------------
 * Table cells
 * ------------------------------------------------------------------------------------------ */

struct table {
    unsigned ncols;
    char **cells; /* row-major */
    size_t n, cap;
    int *width;
};

static int table_add(struct table *t, const char *s, size_t len)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        char **p = realloc(t->cells, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        t->cells = p;
        t->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c)
        return -ENOMEM;
    memcpy(c, s, len);
    c[len] = '\0';
    t->cells[t->n++] = c;
    return 0;
}

/* A value as a person reads it: strings bare, nil as "-", the rest as JSON. */
static int table_add_obj(struct table *t, const msgpack_object *o, msgpack_sbuffer *sb)
{
    if (!o || o->type == MSGPACK_OBJECT_NIL)
        return table_add(t, "-", 1);
    if (o->type == MSGPACK_OBJECT_STR)
        return table_add(t, o->via.str.ptr, o->via.str.size);
    msgpack_sbuffer_clear(sb);
    if (twin_json_write(o, sb) < 0)
        return -ENOMEM;
    return table_add(t, sb->data, sb->size);
}

static void table_print(struct table *t)
{
    if (!t->ncols)
        return;
    t->width = calloc(t->ncols, sizeof *t->width);
    if (!t->width)
        return;
    for (size_t i = 0; i < t->n; i++) {
        int w = (int)strlen(t->cells[i]);
        if (w > t->width[i % t->ncols])
            t->width[i % t->ncols] = w;
    }
    for (size_t i = 0; i < t->n; i++) {
        unsigned c = (unsigned)(i % t->ncols);
        if (c + 1 == t->ncols)
            printf("%s\n", t->cells[i]);
        else
            printf("%-*s  ", t->width[c], t->cells[i]);
    }
}

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t->width);
}

static const msgpack_object *get(const msgpack_object *m, const char *k)
{
    return m && m->type == MSGPACK_OBJECT_MAP ? twin_value_get(m, k, strlen(k)) : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * query
 * ------------------------------------------------------------------------------------------ */

static int print_rows(const msgpack_object *rows, const struct query_spec *s, bool table,
                      struct table *t, msgpack_sbuffer *sb)
{
    for (uint32_t i = 0; rows && i < rows->via.array.size; i++) {
        const msgpack_object *r = &rows->via.array.ptr[i];
        if (!table) {
            msgpack_sbuffer_clear(sb);
            if (twin_json_write(r, sb) < 0)
                return -ENOMEM;
            fwrite(sb->data, 1, sb->size, stdout);
            fputc('\n', stdout);
            continue;
        }
        int rc = table_add_obj(t, get(r, "id"), sb);
        if (rc == 0)
            rc = table_add_obj(t, get(r, "version"), sb);
        if (s->nfields == 0) {
            if (rc == 0)
                rc = table_add_obj(t, get(r, "connected"), sb);
            if (rc == 0)
                rc = table_add_obj(t, get(r, "reported"), sb);
        }
        for (unsigned f = 0; f < s->nfields && rc == 0; f++) {
            const msgpack_object *v = NULL;
            for (uint32_t k = 0; r->type == MSGPACK_OBJECT_MAP && k < r->via.map.size; k++) {
                const msgpack_object *key = &r->via.map.ptr[k].key;
                if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == s->field_len[f] &&
                    memcmp(key->via.str.ptr, s->fields[f], s->field_len[f]) == 0)
                    v = &r->via.map.ptr[k].val;
            }
            rc = table_add_obj(t, v, sb);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ctl_query_main(struct twin_txn *txn, const struct ctl_query_args *a)
{
    char err[QUERY_ERR_LEN > TWIN_ERR_LEN ? QUERY_ERR_LEN : TWIN_ERR_LEN];
    struct query_spec s = {0};
    struct query_limits l;
    struct table t = {0};
    static char cursor[QUERY_CURSOR_MAX];
    int code = EXIT_ERROR;

    query_limits_init(&l);
    s.where = a->where;
    s.where_len = a->where ? strlen(a->where) : 0;
    if (a->fields && query_fields_split(&s, a->fields, strlen(a->fields), err) < 0)
        return ctl_fail(EXIT_ERROR, "%s", err);
    s.order = a->order;
    s.order_len = a->order ? strlen(a->order) : 0;
    s.prefix = a->prefix;
    s.prefix_len = a->prefix ? strlen(a->prefix) : 0;
    s.cursor = a->cursor;
    s.cursor_len = a->cursor ? strlen(a->cursor) : 0;
    s.limit = l.max_limit;
    if (a->limit) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(a->limit, &end, 10);
        if (!*a->limit || *end || errno || a->limit[0] == '-' || n == 0)
            return ctl_fail(EXIT_ERROR, "--limit: expected a whole number above 0, got '%s'", a->limit);
        if (n > l.max_limit)
            return ctl_fail(EXIT_ERROR, "--limit: at most %u", l.max_limit);
        s.limit = (unsigned)n;
    }

    msgpack_sbuffer sb, js;
    msgpack_zone zone;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_init(&js);
    if (!msgpack_zone_init(&zone, 65536)) {
        code = ctl_fail(EXIT_ERROR, "out of memory");
        goto out;
    }
    if (a->table) {
        t.ncols = 2 + (s.nfields ? s.nfields : 2);
        int rc = table_add(&t, "ID", 2) || table_add(&t, "VERSION", 7);
        if (s.nfields == 0)
            rc = rc || table_add(&t, "CONNECTED", 9) || table_add(&t, "REPORTED", 8);
        for (unsigned f = 0; f < s.nfields && !rc; f++)
            rc = table_add(&t, s.fields[f], s.field_len[f]);
        if (rc) {
            code = ctl_fail(EXIT_ERROR, "out of memory");
            goto out;
        }
    }
    int64_t now = hub_now_ms();
    for (;;) {
        struct query *q;
        struct query_result res;
        msgpack_packer pk;
        msgpack_object ans;
        size_t off = 0;

        int rc = query_new(&s, &l, &q, err);
        if (rc < 0) {
            code = ctl_fail(EXIT_ERROR, "%s", rc == -ENOMEM ? "out of memory" : err);
            goto out;
        }
        msgpack_sbuffer_clear(&sb);
        msgpack_zone_clear(&zone);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc = query_run(q, txn, now, &pk, &res, err);
        query_free(q);
        if (rc < 0) {
            code = ctl_fail(EXIT_ERROR, "query: %s", err);
            goto out;
        }
        if (msgpack_unpack(sb.data, sb.size, &off, &zone, &ans) != MSGPACK_UNPACK_SUCCESS) {
            code = ctl_fail(EXIT_ERROR, "query: cannot read its own answer");
            goto out;
        }
        if (print_rows(get(&ans, "rows"), &s, a->table, &t, &js) < 0) {
            code = ctl_fail(EXIT_ERROR, "out of memory");
            goto out;
        }
        if (!res.more)
            break;
        if (a->limit) {
            fflush(stdout);
            ctl_fail(EXIT_FOUND, "next page: --cursor %s", res.next);
            break;
        }
        memcpy(cursor, res.next, sizeof cursor);
        s.cursor = cursor;
        s.cursor_len = strlen(cursor);
    }
    if (a->table)
        table_print(&t);
    code = EXIT_FOUND;

out:
    table_free(&t);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&js);
    return code;
}

/* ---------------------------------------------------------------------------------------------
 * history ranges
 * ------------------------------------------------------------------------------------------ */


/* The shortest text that reads back as the same double; whole numbers without a point. */
static void num_text(char *buf, size_t size, double v)
{
    if (!isfinite(v)) {
        snprintf(buf, size, "null");
        return;
    }
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

static double num(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)o->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return o->via.f64;
    default:
        return NAN;
    }
}

int ctl_history_range(struct twin_txn *txn, const char *id, const char *path, const char *from,
                      const char *to, const char *step, bool table)
{
    char err[QUERY_ERR_LEN], when[HUB_ISO_LEN];
    struct query_limits l;
    struct query_range r = {.path = path, .path_len = strlen(path), .from = 0, .to = TWIN_TS_MAX};
    int64_t now = hub_now_ms();
    uint64_t total = 0;
    int code = EXIT_ERROR;

    query_limits_init(&l);
    if (from && config_parse_time_ms(from, now, &r.from) < 0)
        return ctl_fail(EXIT_ERROR,
                    "--from: expected ms since the epoch, 2026-12-07T10:00:00Z or -10m, got '%s'",
                    from);
    if (to && config_parse_time_ms(to, now, &r.to) < 0)
        return ctl_fail(EXIT_ERROR,
                    "--to: expected ms since the epoch, 2026-12-07T10:00:00Z or -10m, got '%s'",
                    to);
    if (step) {
        uint64_t d;
        if (config_parse_duration_ms(step, 1000, &d) < 0 || d == 0 || d > (uint64_t)TWIN_TS_MAX)
            return ctl_fail(EXIT_ERROR, "--step: expected a duration above 0 (60s, 1m, 1h), got '%s'",
                        step);
        r.step = (int64_t)d;
    }
    if (r.to < r.from)
        return ctl_fail(EXIT_ERROR, "--to is before --from");

    msgpack_sbuffer sb;
    msgpack_zone zone;
    msgpack_sbuffer_init(&sb);
    if (!msgpack_zone_init(&zone, 65536)) {
        msgpack_sbuffer_destroy(&sb);
        return ctl_fail(EXIT_ERROR, "out of memory");
    }
    bool header = table && r.step;
    for (;;) {
        msgpack_packer pk;
        msgpack_object ans;
        size_t off = 0;
        msgpack_sbuffer_clear(&sb);
        msgpack_zone_clear(&zone);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        int rc = query_history(txn, id, strlen(id), &r, &l, &pk, err);
        if (rc == -ENOENT) {
            code = ctl_fail(EXIT_NOT_FOUND, "no twin '%s'", id);
            goto out;
        }
        if (rc < 0) {
            code = ctl_fail(EXIT_ERROR, "history: %s", err);
            goto out;
        }
        if (msgpack_unpack(sb.data, sb.size, &off, &zone, &ans) != MSGPACK_UNPACK_SUCCESS) {
            code = ctl_fail(EXIT_ERROR, "history: cannot read its own answer");
            goto out;
        }
        if (header) {
            printf("%-24s  %12s  %12s  %12s  %s\n", "T", "MIN", "MAX", "AVG", "COUNT");
            header = false;
        }
        const msgpack_object *pts = get(&ans, r.step ? "buckets" : "points");
        const msgpack_object *more = get(&ans, "more");
        int64_t last = 0;
        for (uint32_t i = 0; pts && i < pts->via.array.size; i++) {
            const msgpack_object *p = pts->via.array.ptr[i].via.array.ptr;
            char v[5][40];
            last = (int64_t)num(&p[0]);
            for (int j = 1; j < (r.step ? 5 : 2); j++)
                num_text(v[j], sizeof v[j], num(&p[j]));
            if (table && r.step)
                printf("%-24s  %12s  %12s  %12s  %s\n", hub_iso_time(when, sizeof when, last), v[1],
                       v[2], v[3], v[4]);
            else if (table)
                printf("%s  %s\n", hub_iso_time(when, sizeof when, last), v[1]);
            else if (r.step)
                printf("{\"t\":%lld,\"min\":%s,\"max\":%s,\"avg\":%s,\"count\":%s}\n",
                       (long long)last, v[1], v[2], v[3], v[4]);
            else
                printf("{\"ts\":%lld,\"value\":%s}\n", (long long)last, v[1]);
        }
        total += pts ? pts->via.array.size : 0;
        if (!more || more->type != MSGPACK_OBJECT_BOOLEAN || !more->via.boolean)
            break;
        r.from = last + (r.step ? r.step : 1);
        if (r.from > r.to)
            break;
    }
    if (total == 0) {
        code = ctl_fail(EXIT_NOT_FOUND, "no history of reported.%s for twin '%s' between %s and %s",
                    strncmp(path, "reported.", 9) == 0 ? path + 9 : path, id,
                    from ? from : "the start", to ? to : "the end");
        goto out;
    }
    code = EXIT_FOUND;

out:
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
    return code;
}
