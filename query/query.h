/* query: reads of many twins and of long history that the whole product shares: the fleet
 * query (`twinctl query`, hub/query over MQTT, GET /api/twins) and history ranges (`twinctl
 * history --from --to --step`, twins/{id}/history over MQTT, GET /api/twins/{id}/history).
 * A query's filter, its fields and its order are expressions of the rules' language
 * (rules_expr_compile), run against committed twins in one read transaction. It knows nothing
 * of MQTT or HTTP: it packs its answers as msgpack, which each caller turns into what it
 * serves. Any thread, each with its own transaction. */
#ifndef QUERY_QUERY_H
#define QUERY_QUERY_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rules.h"
#include "twins.h"

#define QUERY_ERR_LEN 256
#define QUERY_FIELDS_MAX 32      /* fields of one query */
#define QUERY_CURSOR_MAX 400     /* bytes of a cursor, NUL included: URL-safe text */
#define QUERY_LIMIT_DEFAULT 100  /* rows when the caller asks for no limit */

/* Bounds a caller configures (query.* in twinhub.yaml); query_limits_init sets the defaults. */
struct query_limits {
    unsigned max_limit;        /* rows per page (default 1000) */
    size_t max_reply;          /* bytes of one packed answer (default 4 MiB): a page ends early,
                                  with a cursor, before it would pass this */
    unsigned max_points;       /* history: points or buckets per answer (default 10000) */
    size_t max_expr;           /* bytes of an expression (default 1024) */
};
void query_limits_init(struct query_limits *l);

/* ---------------------------------------------------------------------------------------------
 * Fleet query
 * ------------------------------------------------------------------------------------------ */

/* What a caller asks; every string is borrowed for query_new, with its length (need not be
 * NUL-terminated). */
struct query_spec {
    const char *where;  /* an expression; NULL or empty: every twin */
    size_t where_len;
    const char *fields[QUERY_FIELDS_MAX]; /* expressions ("reported.heart_rate",
                                             "avg(reported.heart_rate, 60s)") or the special
                                             field "rules" (the twin's rule states that are not
                                             inactive: {rule: "pending"|"firing"}); none: the
                                             whole document */
    size_t field_len[QUERY_FIELDS_MAX];
    unsigned nfields;
    const char *order;  /* an expression, '-' in front: descending; NULL or empty: by id */
    size_t order_len;
    const char *prefix; /* only ids that start with it; NULL: all */
    size_t prefix_len;
    unsigned limit;     /* rows per page; 0: QUERY_LIMIT_DEFAULT; over max_limit: -EINVAL */
    const char *cursor; /* `next` of the page before; NULL or empty: the first page */
    size_t cursor_len;
};

struct query;

/* Compiles a query. An error names the part and the column: "where:1:17: unknown function
 * 'avgg'", "fields[2]:1:3: ...", "order:1:1: ...", "limit: at most 1000", "cursor: not a
 * cursor of this order". Returns 0, -EINVAL (err says why), -ENOMEM. Caller frees with
 * query_free. */
int query_new(const struct query_spec *s, const struct query_limits *l, struct query **out,
              char *err);
void query_free(struct query *q);

/* Splits a comma-separated field list ("a,avg(b, 60s),rules") at the commas outside
 * parentheses and quotes into s->fields (trimmed). Returns 0 or -EINVAL (too many, empty). */
int query_fields_split(struct query_spec *s, const char *text, size_t len, char *err);

struct query_result {
    uint64_t scanned, matched; /* twins read and twins that matched, on this page's walk */
    unsigned rows;             /* rows packed */
    bool more;                 /* a next page exists; next holds its cursor */
    char next[QUERY_CURSOR_MAX];
    int64_t took_us;
};

/* Runs `q` over the committed twins of `txn` at hub time `now` (age(), now(), windows) and
 * packs one map into pk:
 *   {rows: [row...], next: cursor|nil, scanned, matched, took_ms}
 * A row is the whole document when the query has no fields, else a map {id, version,
 * <field text>: value...} (a field that is missing or not a value is nil). Rows come in the
 * query's order (ties by id); a twin whose where is not true (missing fields, wrong types) is
 * not a row. On error nothing is packed. Returns 0, -ENOMEM, -EIO (err says why). */
int query_run(struct query *q, struct twin_txn *txn, int64_t now, msgpack_packer *pk,
              struct query_result *res, char *err);

/* The same for one twin (the live stream): whether its stored document `doc` (len bytes, as
 * twin_get_raw gives it) matches q's where, and when it does (*matched), its row packed into
 * pk exactly as query_run packs rows. q's order, limit and cursor play no part. Returns 0,
 * -ENOMEM, -EIO, -EBADMSG (err says why). */
int query_row(struct query *q, struct twin_txn *txn, const char *id, size_t id_len,
              const void *doc, size_t len, int64_t now, msgpack_packer *pk, bool *matched,
              char *err);

/* ---------------------------------------------------------------------------------------------
 * History ranges
 * ------------------------------------------------------------------------------------------ */

struct query_range {
    const char *path;  /* "reported.heart_rate" (the "reported." is optional) */
    size_t path_len;
    int64_t from, to;  /* ms since epoch, inclusive; to < from: -EINVAL */
    int64_t step;      /* 0: raw points; > 0: buckets of step ms aligned to multiples of step */
    unsigned limit;    /* points or buckets; 0: the limit's max_points; over it: -EINVAL */
};

/* Packs the history of one twin's numeric field between from and to into pk:
 *   raw:     {id, path, from, to, points: [[ts, value]...], more}
 *   buckets: {id, path, from, to, step, buckets: [[t, min, max, avg, count]...], more}
 * oldest first; empty buckets are left out; `more` is true when the limit cut the answer
 * (its last ts + 1 is where to go on). Returns 0, -ENOENT (no such twin), -EINVAL (bad range:
 * err says which part), -ENOMEM, -EIO. */
int query_history(struct twin_txn *txn, const char *id, size_t id_len,
                  const struct query_range *r, const struct query_limits *l, msgpack_packer *pk,
                  char *err);

#endif
