/* histops.c: what a merge into `reported` asks of history, collected while the merge runs and
 * done once the document is stored (telemetry.c, shadow.c): a point for every finite number
 * written, a chunk for every array configured as a waveform (wave.c), and the removal of the
 * series of every number a merge takes out. Kept in merge order: a key that appears twice in
 * one message ({"k": 1, "k": nil}) is appended, then deleted, and leaves no series behind.
 * Paths only grow downwards, so nothing past TWIN_PATH_MAX is historized (the leaf is stored,
 * just not kept as a series). */
#include "twins_int.h"

#include <errno.h>
#include <math.h>

void histops__init(struct hist_ops *c, struct twin_txn *txn, int64_t ts)
{
    *c = (struct hist_ops){.s = txn->s, .zone = &txn->zone, .ts = ts};
    c->tail = &c->head;
}

/* Queues an op for path[0..path_len), which the caller has checked is 1..TWIN_PATH_MAX. */
static struct hist_op *op_add(struct hist_ops *c, const char *path, size_t path_len, double value,
                              bool remove)
{
    struct hist_op *op = msgpack_zone_malloc(c->zone, sizeof *op);

    if (op)
        op->path = msgpack_zone_malloc(c->zone, path_len);
    if (!op || !op->path) {
        c->rc = -ENOMEM;
        return NULL;
    }
    memcpy(op->path, path, path_len);
    *op = (struct hist_op){
        .path = op->path, .path_len = path_len, .ts = c->ts, .value = value, .remove = remove};
    *c->tail = op;
    c->tail = &op->next;
    return op;
}

size_t histops__push(char *path, size_t len, const msgpack_object *k)
{
    size_t n, sep = len ? 1 : 0;

    if (k->type != MSGPACK_OBJECT_STR)
        return 0; /* what twinhub writes under reported has string keys only */
    n = k->via.str.size;
    if (len + sep + n > TWIN_PATH_MAX)
        return 0;
    if (sep)
        path[len] = '.';
    memcpy(path + len + sep, k->via.str.ptr, n);
    return len + sep + n;
}

void histops__leaf(void *ctx, const char *path, size_t path_len, const msgpack_object *v)
{
    struct hist_ops *c = ctx;
    double d;

    if (c->rc || path_len == 0 || path_len > TWIN_PATH_MAX)
        return;
    if (v->type == MSGPACK_OBJECT_ARRAY) {
        /* an array configured as a waveform: a chunk of its samples, at this time */
        if (wave__spec(c->s, path, path_len)) {
            struct hist_op *op = op_add(c, path, path_len, 0, false);
            if (op)
                op->wave = v;
        }
        return;
    }
    if (twins__number(v, &d) && isfinite(d))
        op_add(c, path, path_len, d, false);
}

void histops__under(struct hist_ops *c, const msgpack_object *v, char *path, size_t len)
{
    if (v->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < v->via.map.size && !c->rc; i++) {
            size_t n = histops__push(path, len, &v->via.map.ptr[i].key);
            if (n)
                histops__under(c, &v->via.map.ptr[i].val, path, n);
        }
        return;
    }
    histops__leaf(c, path, len, v);
}

/* Queues the removal of every number under v (v included), path[0..len) being v's path. */
static void remove_under(struct hist_ops *c, const msgpack_object *v, char *path, size_t len)
{
    double d;

    if (twins__number(v, &d)) {
        if (len)
            op_add(c, path, len, 0, true);
        return;
    }
    if (v->type != MSGPACK_OBJECT_MAP)
        return; /* arrays are leaves, and not historized */
    for (uint32_t i = 0; i < v->via.map.size && !c->rc; i++) {
        size_t n = histops__push(path, len, &v->via.map.ptr[i].key);
        if (n)
            remove_under(c, &v->via.map.ptr[i].val, path, n);
    }
}

void histops__gone(void *ctx, const char *path, size_t path_len, const msgpack_object *old,
                   const msgpack_object *now)
{
    struct hist_ops *c = ctx;
    char buf[TWIN_PATH_MAX + 1];
    double d;

    /* the usual case, a number over a number, returns at once: the series goes on */
    if (c->rc || path_len > TWIN_PATH_MAX)
        return;
    if (old->type != MSGPACK_OBJECT_MAP &&
        (!twins__number(old, &d) || (now && twins__number(now, &d))))
        return;
    if (path_len)
        memcpy(buf, path, path_len);
    remove_under(c, old, buf, path_len);
}

int histops__apply(struct twin_txn *txn, const char *id, size_t id_len, const struct hist_ops *c,
                   char *err)
{
    int rc = 0;

    for (const struct hist_op *op = c->head; op && !rc; op = op->next) {
        if (op->wave)
            rc = wave__append(txn, id, id_len, op->path, op->path_len, op->ts, op->wave, err);
        else if (op->remove)
            rc = history__remove(txn, id, id_len, op->path, op->path_len, err);
        else
            rc = twin_history_append(txn, id, id_len, op->path, op->path_len, op->ts, op->value,
                                     err);
    }
    return rc;
}
