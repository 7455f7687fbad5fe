/* range.c: history ranges of one twin's numeric field: raw points, or min/max/avg/count per
 * bucket of `step` ms aligned to multiples of step, read from twins' history between two
 * times. It owns the range's checks and the packed answer, not the history (twins/history.c).
 *
 * Choices made here: `path` is packed as "reported.<path>" whichever form was given; a raw
 * answer cut by its limit resumes at the last ts + 1 (points of that same millisecond beyond
 * the limit are not repeated); a bucket answer resumes at the last bucket's t + step. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STOP 1


struct bucket {
    int64_t t;
    double min, max, sum;
    uint64_t count;
};

struct range_walk {
    const struct query_range *r;
    unsigned limit;
    bool more;
    /* raw */
    int64_t *ts;
    double *v;
    /* buckets */
    struct bucket *b;
    unsigned n;
};

static int raw_point(void *ctx, int64_t ts, double value)
{
    struct range_walk *w = ctx;
    if (ts > w->r->to)
        return STOP;
    if (w->n == w->limit) {
        w->more = true;
        return STOP;
    }
    w->ts[w->n] = ts;
    w->v[w->n++] = value;
    return 0;
}

static int bucket_point(void *ctx, int64_t ts, double value)
{
    struct range_walk *w = ctx;
    if (ts > w->r->to)
        return STOP;
    int64_t t = ts - ts % w->r->step; /* ts >= 0: history holds no earlier time */
    struct bucket *b = w->n ? &w->b[w->n - 1] : NULL;
    if (!b || b->t != t) {
        if (w->n == w->limit) {
            w->more = true;
            return STOP;
        }
        b = &w->b[w->n++];
        *b = (struct bucket){t, value, value, 0.0, 0};
    }
    if (value < b->min)
        b->min = value;
    if (value > b->max)
        b->max = value;
    b->sum += value;
    b->count++;
    return 0;
}


int query_history(struct twin_txn *txn, const char *id, size_t id_len, const struct query_range *r,
                  const struct query_limits *l, msgpack_packer *pk, char *err)
{
    char terr[TWIN_ERR_LEN];
    struct query_limits defl;
    const void *doc;
    size_t doc_len;
    int rc;

    if (!txn || !id || !r || !pk)
        return -EINVAL;
    if (!l) {
        query_limits_init(&defl);
        l = &defl;
    }
    const char *path = r->path;
    size_t plen = r->path ? r->path_len : 0;
    if (plen > 9 && memcmp(path, "reported.", 9) == 0)
        path += 9, plen -= 9;
    if (plen == 0 || plen > TWIN_PATH_MAX || memchr(path, '\0', plen)) {
        query__errf(err, "path: expected a field path of 1 to %d bytes", TWIN_PATH_MAX);
        return -EINVAL;
    }
    if (r->to < r->from) {
        query__errf(err, "to: %lld is before from %lld", (long long)r->to, (long long)r->from);
        return -EINVAL;
    }
    if (r->step < 0) {
        query__errf(err, "step: expected 0 (raw points) or a number of ms above 0");
        return -EINVAL;
    }
    if (r->limit > l->max_points) {
        query__errf(err, "limit: at most %u", l->max_points);
        return -EINVAL;
    }
    if (id_len == 0 || id_len > TWIN_ID_MAX) {
        query__errf(err, "id: expected 1 to %d bytes", TWIN_ID_MAX);
        return -EINVAL;
    }
    rc = twin_get_raw(txn, id, id_len, &doc, &doc_len, terr);
    if (rc == -ENOENT) {
        query__errf(err, "no twin '%.*s'", (int)id_len, id);
        return rc;
    }
    if (rc < 0) {
        query__errf(err, "%s", terr);
        return -EIO;
    }

    struct range_walk w = {.r = r, .limit = r->limit ? r->limit : l->max_points};
    if (w.limit == 0)
        w.limit = 1;
    if (r->step) {
        w.b = malloc(w.limit * sizeof *w.b);
    } else {
        w.ts = malloc(w.limit * sizeof *w.ts);
        w.v = malloc(w.limit * sizeof *w.v);
    }
    if (r->step ? !w.b : (!w.ts || !w.v)) {
        query__errf(err, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    rc = twin_history_read(txn, id, id_len, path, plen, r->from, r->step ? bucket_point : raw_point,
                           &w, terr);
    if (rc == STOP)
        rc = 0;
    if (rc < 0) {
        query__errf(err, "history of '%.*s' %.*s: %s", (int)id_len, id, (int)plen, path, terr);
        rc = rc == -ENOMEM ? rc : -EIO;
        goto out;
    }

    msgpack_pack_map(pk, r->step ? 7 : 6);
    query__pack_str(pk, "id", 2);
    query__pack_str(pk, id, id_len);
    query__pack_str(pk, "path", 4);
    msgpack_pack_str(pk, 9 + plen);
    msgpack_pack_str_body(pk, "reported.", 9);
    msgpack_pack_str_body(pk, path, plen);
    query__pack_str(pk, "from", 4);
    msgpack_pack_int64(pk, r->from);
    query__pack_str(pk, "to", 2);
    msgpack_pack_int64(pk, r->to);
    if (r->step) {
        query__pack_str(pk, "step", 4);
        msgpack_pack_int64(pk, r->step);
        query__pack_str(pk, "buckets", 7);
        msgpack_pack_array(pk, w.n);
        for (unsigned i = 0; i < w.n; i++) {
            const struct bucket *b = &w.b[i];
            msgpack_pack_array(pk, 5);
            msgpack_pack_int64(pk, b->t);
            msgpack_pack_double(pk, b->min);
            msgpack_pack_double(pk, b->max);
            msgpack_pack_double(pk, b->sum / (double)b->count);
            msgpack_pack_uint64(pk, b->count);
        }
    } else {
        query__pack_str(pk, "points", 6);
        msgpack_pack_array(pk, w.n);
        for (unsigned i = 0; i < w.n; i++) {
            msgpack_pack_array(pk, 2);
            msgpack_pack_int64(pk, w.ts[i]);
            msgpack_pack_double(pk, w.v[i]);
        }
    }
    query__pack_str(pk, "more", 4);
    if (w.more)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    rc = 0;

out:
    free(w.b);
    free(w.ts);
    free(w.v);
    return rc;
}
