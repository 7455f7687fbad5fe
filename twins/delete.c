/* delete.c: deleting a twin inside a write transaction: its document, history and commands go,
 * its tombstone (the last version) stays so a twin created again under the same id continues
 * the count, and the outbox keeps the deletion until it is published. Creating a twin from a
 * tombstone is store.c's (store__twin_load).
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>

int twin_delete(struct twin_txn *txn, const char *id, size_t id_len, uint64_t expected_version,
                struct twin_delete_result *res, char *err)
{
    unsigned char ver[8];
    MDB_val k = {id_len, (void *)id}, v = {sizeof ver, ver};
    const void *buf;
    size_t len;
    uint64_t version;
    int rc;

    rc = store__need_write(txn, "twin_delete", err);
    if (rc)
        return rc;
    if (!res || !id || id_len == 0 || id_len > TWIN_ID_MAX) {
        twins__errf(err, "twin_delete: bad arguments");
        return -EINVAL;
    }
    memset(res, 0, sizeof *res);
    rc = twin_get_raw(txn, id, id_len, &buf, &len, err);
    if (rc)
        return rc;
    if (twin_doc_version(buf, len, &version)) {
        twins__errf(err, "stored document of '%.*s' has no readable version", (int)id_len, id);
        return -EBADMSG;
    }
    if (expected_version != TWIN_VERSION_ANY && expected_version != version) {
        twins__errf(err, "version conflict: twin '%.*s' is at version %" PRIu64 ", not %" PRIu64,
                    (int)id_len, id, version, expected_version);
        return -EBUSY;
    }

    rc = mdb_del(txn->txn, txn->s->dbi_twins, &k, NULL);
    if (rc)
        return store__mdb_error(txn, rc, "deleting a twin", err);
    store__le64_put(ver, version);
    rc = mdb_put(txn->txn, txn->s->dbi_tombstones, &k, &v, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing a tombstone", err);
    /* the deletion is a committed change that the publisher still has to announce */
    rc = mdb_put(txn->txn, txn->s->dbi_outbox, &k, &v, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing the outbox", err);
    rc = history__remove_twin(txn, id, id_len, &res->history_series, err);
    if (!rc)
        rc = command__remove_twin(txn, id, id_len, &res->commands, err);
    if (!rc)
        rc = rulestate__remove_twin(txn, id, id_len, err);
    if (!rc)
        rc = modelstate__remove_twin(txn, id, id_len, err);
    if (!rc)
        rc = wave__remove_twin(txn, id, id_len, err);
    if (rc)
        return rc;
    res->version = version;
    return 0;
}
