/* presence.c: a device going online or offline (its status message, usually its retained
 * will), applied to its twin inside a write transaction: connected, last_seen, version, outbox.
 * What an event about it looks like, and re-sending what the device missed, is the hub's
 * business.
 */
#include "twins_int.h"

#include <errno.h>

int twin_presence_apply(struct twin_txn *txn, const char *id, size_t id_len, bool online,
                        int64_t now_ms, struct twin_presence_result *res, char *err)
{
    struct twin_doc doc;
    bool created;
    int rc;

    rc = store__need_write(txn, "twin_presence_apply", err);
    if (rc)
        return rc;
    if (!res || !id || id_len == 0 || id_len > TWIN_ID_MAX) {
        twins__errf(err, "twin_presence_apply: bad arguments");
        return -EINVAL;
    }
    if (online) {
        rc = store__twin_load(txn, id, id_len, now_ms, "presence", &doc, &created, err);
    } else {
        /* never created by an offline: a deleted twin's will must not bring it back */
        created = false;
        rc = twin_get(txn, id, id_len, &doc, err);
    }
    if (rc)
        return rc;
    res->changed = created || doc.connected != online;
    /* back online: what it sends next begins a new seq order (it may have restarted). Only on
     * the change: a retained online delivered again when the hub resubscribes is no restart,
     * and the telemetry a device sent before it came online again arrives before this */
    if (online && !doc.connected && doc.has_seq)
        doc.seq_restart = true;
    doc.id = id;
    doc.id_len = id_len;
    doc.connected = online;
    doc.last_seen = now_ms;
    doc.version++;
    rc = store__twin_save(txn, &doc, created, err); /* -E2BIG writes nothing */
    if (rc)
        return rc;
    res->version = doc.version;
    res->created = created;
    return 0;
}
