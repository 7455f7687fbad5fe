/* shadow.c: one update of a twin's reported and desired state together, as an AWS IoT Device
 * Shadow update makes it, inside a write transaction: the checks, optimistic locking, both RFC
 * 7396 merges with meta timestamps, history of the numeric leaves written under reported (and
 * removal of the series of leaves taken out), the delta, one version and the outbox. What an
 * AWS request or reply looks like is the hub's business (hub/shadow.c).
 *
 * As in telemetry.c and desired.c, everything that can refuse the change is checked before
 * anything is written; the last check, the size of the new document (twin_put, -E2BIG),
 * writes nothing when it refuses. History is histops.c's, as for telemetry: a shadow's reported
 * state is written by the device, with no seq, ts or boot, so its points are at now_ms.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>

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
    struct hist_ops ops;
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

    histops__init(&ops, txn, now_ms); /* empty unless reported is merged */
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
        if (merge__apply(&txn->zone, &doc.reported, reported, &doc.meta_reported, now_ms, &value,
                         &meta, histops__leaf, histops__gone, &ops) ||
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
    if ((rc = histops__apply(txn, id, id_len, &ops, err)))
        return rc;
    res->version = doc.version;
    res->created = created;
    res->doc = doc;
    return 0;
}
