/* desired.c: a service's change of a twin's desired state inside a write transaction: checks,
 * optimistic locking, the RFC 7396 merge into `desired` with meta timestamps, the delta,
 * version and outbox. The twin id has been validated by the caller; the transaction is the
 * caller's (twin_store_write). What a request looks like on the wire is the hub's business.
 *
 * As in telemetry.c, everything that can refuse the change is checked before anything is
 * written; the last check, the size of the new document (twin_put, -E2BIG), writes nothing
 * when it refuses.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>

int twin_desired_apply(struct twin_txn *txn, const char *id, size_t id_len,
                       const msgpack_object *patch, uint64_t expected_version, int64_t now_ms,
                       struct twin_desired_result *res, char *err)
{
    struct twin_doc doc;
    msgpack_object desired, meta;
    bool created, changed;
    uint64_t current;
    int rc;

    rc = store__need_write(txn, "twin_desired_apply", err);
    if (rc)
        return rc;
    if (!patch || !res || !id || id_len == 0 || id_len > TWIN_ID_MAX) {
        twins__errf(err, "twin_desired_apply: bad arguments");
        return -EINVAL;
    }
    /* RFC 7396 lets a patch that is not an object replace the whole target, but desired is
     * a map by definition */
    if (patch->type != MSGPACK_OBJECT_MAP) {
        twins__errf(err, "desired must be a map, got %s", check__type_name(patch->type));
        return -EINVAL;
    }
    rc = check__tree(patch, "desired", err);
    if (rc)
        return rc;

    rc = store__twin_load(txn, id, id_len, now_ms, "desired state", &doc, &created, err);
    if (rc)
        return rc;
    current = created ? 0 : doc.version;
    if (expected_version != TWIN_VERSION_ANY && expected_version != current) {
        if (created)
            twins__errf(err, "version conflict: no twin '%.*s', expected version %" PRIu64,
                        (int)id_len, id, expected_version);
        else
            twins__errf(err,
                        "version conflict: twin '%.*s' is at version %" PRIu64 ", not %" PRIu64,
                        (int)id_len, id, current, expected_version);
        return -EBUSY;
    }

    rc = merge__apply(&txn->zone, &doc.desired, patch, &doc.meta_desired, now_ms, &desired, &meta,
                      NULL, NULL, NULL);
    if (rc) {
        twins__errf(err, "out of memory merging desired state");
        return -ENOMEM;
    }
    doc.desired = desired;
    doc.meta_desired = meta;
    rc = delta__refresh(&txn->zone, &doc, &changed);
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
    res->version = doc.version;
    res->created = created;
    res->delta_changed = changed;
    res->doc = doc;
    return 0;
}
