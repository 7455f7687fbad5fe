/* shadow.c: one update of a twin's reported and desired state together, as an AWS IoT Device
 * Shadow update makes it, inside a write transaction: the checks, optimistic locking, both RFC
 * 7396 merges with meta timestamps, history of the numeric leaves written under reported (and
 * removal of the series of leaves taken out), the delta, one version and the outbox. What an
 * AWS request or reply looks like is the hub's business (hub/shadow.c).
 *
 * As in telemetry.c and desired.c, everything that can refuse the change is checked before
 * anything is written; the last check, the size of the new document (twin_put, -E2BIG),
 * writes nothing when it refuses. The history bookkeeping is telemetry.c's, repeated here: a
 * shadow's reported state is written whole by the device, with no seq, ts or boot.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>

/* One history change the merge asked for, applied once the document is stored. */
struct hop {
    struct hop *next;
    char *path;
    size_t path_len;
    double value;
    bool remove;
};

struct hops {
    msgpack_zone *zone;
    struct hop *head, **tail;
    int rc;
};

static bool number(const msgpack_object *v, double *d)
{
    switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *d = (double)v->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *d = (double)v->via.i64;
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *d = v->via.f64;
        return true;
    default:
        return false;
    }
}

static void hop_add(struct hops *h, const char *path, size_t path_len, double value, bool remove)
{
    struct hop *op = msgpack_zone_malloc(h->zone, sizeof *op);
    if (op)
        op->path = msgpack_zone_malloc(h->zone, path_len);
    if (!op || !op->path) {
        h->rc = -ENOMEM;
        return;
    }
    memcpy(op->path, path, path_len);
    op->path_len = path_len;
    op->value = value;
    op->remove = remove;
    op->next = NULL;
    *h->tail = op;
    h->tail = &op->next;
}

/* Every leaf the merge writes under reported: finite numbers go to history. */
static void on_leaf(void *ctx, const char *path, size_t path_len, const msgpack_object *v)
{
    struct hops *h = ctx;
    double d;
    if (h->rc || !number(v, &d) || !isfinite(d) || path_len == 0 || path_len > TWIN_PATH_MAX)
        return;
    hop_add(h, path, path_len, d, false);
}

/* The series of every number under v (v included), path[0..len) being v's path. */
static void remove_under(struct hops *h, const msgpack_object *v, char *path, size_t len)
{
    double d;
    if (number(v, &d)) {
        if (len)
            hop_add(h, path, len, 0, true);
        return;
    }
    if (v->type != MSGPACK_OBJECT_MAP)
        return; /* arrays are leaves, and not historized */
    for (uint32_t i = 0; i < v->via.map.size && !h->rc; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key;
        size_t sep = len ? 1 : 0, n;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        n = len + sep + k->via.str.size;
        if (n > TWIN_PATH_MAX)
            continue;
        if (sep)
            path[len] = '.';
        memcpy(path + len + sep, k->via.str.ptr, k->via.str.size);
        remove_under(h, &v->via.map.ptr[i].val, path, n);
    }
}

/* A value taken out of reported: its numbers lose their series, unless a number replaces a
 * number (the series goes on). */
static void on_gone(void *ctx, const char *path, size_t path_len, const msgpack_object *old,
                    const msgpack_object *now)
{
    struct hops *h = ctx;
    char buf[TWIN_PATH_MAX + 1];
    double d;
    if (h->rc || path_len > TWIN_PATH_MAX)
        return;
    if (old->type != MSGPACK_OBJECT_MAP && (!number(old, &d) || (now && number(now, &d))))
        return;
    if (path_len)
        memcpy(buf, path, path_len);
    remove_under(h, old, buf, path_len);
}

static int check_patch(const msgpack_object *p, const char *root, char *err)
{
    if (!p)
        return 0;
    if (p->type != MSGPACK_OBJECT_MAP) {
        twins__errf(err, "%s must be a map, got %s", root, check__type_name(p->type));
        return -EINVAL;
    }
    return check__tree(p, root, err);
}

int twin_shadow_apply(struct twin_txn *txn, const char *id, size_t id_len,
                      const msgpack_object *reported, const msgpack_object *desired,
                      uint64_t expected_version, int64_t now_ms, struct twin_shadow_result *res,
                      char *err)
{
    struct hops ops = {0};
    struct twin_doc doc;
    msgpack_object value, meta;
    bool created;
    int rc;

    rc = store__need_write(txn, "twin_shadow_apply", err);
    if (rc)
        return rc;
    if (!res || !id || id_len == 0 || id_len > TWIN_ID_MAX || now_ms < 0) {
        twins__errf(err, "twin_shadow_apply: bad arguments");
        return -EINVAL;
    }
    if ((rc = check_patch(reported, "reported", err)) ||
        (rc = check_patch(desired, "desired", err)))
        return rc;

    rc = store__twin_load(txn, id, id_len, now_ms, "shadow update", &doc, &created, err);
    if (rc)
        return rc;
    /* a missing twin is at its tombstone's version (0 if it never existed): a client that saw
     * the deletion's version may go on from it */
    if (expected_version != TWIN_VERSION_ANY && expected_version != doc.version) {
        twins__errf(
            err, "version conflict: twin '%.*s' is at version %" PRIu64 ", not %" PRIu64 "%s",
            (int)id_len, id, doc.version, expected_version, created ? " (it does not exist)" : "");
        return -EBUSY;
    }
    res->before = doc;
    res->existed = !created;

    if (desired) {
        if (merge__apply(&txn->zone, &doc.desired, desired, &doc.meta_desired, now_ms, &value,
                         &meta, NULL, NULL, NULL)) {
            twins__errf(err, "out of memory merging desired state");
            return -ENOMEM;
        }
        doc.desired = value;
        doc.meta_desired = meta;
    }
    if (reported) {
        ops.zone = &txn->zone;
        ops.tail = &ops.head;
        if (merge__apply(&txn->zone, &doc.reported, reported, &doc.meta_reported, now_ms, &value,
                         &meta, on_leaf, on_gone, &ops) ||
            ops.rc) {
            twins__errf(err, "out of memory merging reported state");
            return -ENOMEM;
        }
        doc.reported = value;
        doc.meta_reported = meta;
        doc.last_seen = now_ms; /* the device reported: it was there */
    }
    rc = delta__refresh(&txn->zone, &doc, &res->delta_changed);
    if (rc) {
        twins__errf(err, "out of memory computing the delta");
        return rc;
    }
    doc.id = id;
    doc.id_len = id_len;
    doc.version++;
    rc = store__twin_save(txn, &doc, created, err); /* -E2BIG writes nothing */
    if (rc)
        return rc;
    for (const struct hop *op = ops.head; op; op = op->next) {
        if (op->remove)
            rc = history__remove(txn, id, id_len, op->path, op->path_len, err);
        else
            rc = twin_history_append(txn, id, id_len, op->path, op->path_len, now_ms, op->value,
                                     err);
        if (rc)
            return rc;
    }
    res->version = doc.version;
    res->created = created;
    res->doc = doc;
    return 0;
}
