/* dispatch: the records the hub keeps per (dispatch, demand): an open demand or an assignment,
 * opaque bytes here (hub/dispatch.c says what they mean). They commit with the change that
 * decided them. Keyed by dispatch name first (records.c), so that one decision reads its
 * dispatch's records in one range.
 *
 * Layout (store.c opens the database):
 *   "dispatch"  name "\0" demand id -> record (1..TWIN_DISPATCH_RECORD_MAX bytes) */
#include "twins_int.h"

#include <errno.h>

static struct records dispatch_db(const struct twin_txn *txn)
{
    return (struct records){.dbi = txn->s->dbi_dispatch,
                            .present = txn->s->has_dispatch,
                            .max = TWIN_DISPATCH_RECORD_MAX,
                            .what = "dispatch record",
                            .first_max = TWIN_DISPATCH_NAME_MAX,
                            .second_max = TWIN_ID_MAX};
}

int twin_dispatch_get(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, void *buf, size_t *len, char *err)
{
    struct records r = dispatch_db(txn);
    return records__get(txn, &r, name, name_len, id, id_len, buf, TWIN_DISPATCH_RECORD_MAX, len,
                        err);
}

int twin_dispatch_put(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, const void *buf, size_t len, char *err)
{
    struct records r = dispatch_db(txn);
    return records__put(txn, &r, name, name_len, id, id_len, buf, len, err);
}

int twin_dispatch_del(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, char *err)
{
    struct records r = dispatch_db(txn);
    return records__del(txn, &r, name, name_len, id, id_len, err);
}

int twin_dispatch_list(struct twin_txn *txn, const char *name, size_t name_len, twin_records_cb cb,
                       void *ctx, char *err)
{
    struct records r = dispatch_db(txn);
    return records__list(txn, &r, name, name_len, cb, ctx, err);
}
