/* dispatch: the records the hub keeps per (dispatch, demand): an open demand or an assignment,
 * opaque bytes here (hub/dispatch.c says what they mean). They commit with the change that
 * decided them. records.c keys by twin first; these are keyed by dispatch first, so that one
 * decision reads its dispatch's records in one range.
 *
 * Layout (store.c opens the database):
 *   "dispatch"  name "\0" demand id -> record (1..TWIN_DISPATCH_RECORD_MAX bytes) */
#include "twins_int.h"

#include <errno.h>

#define KEY_MAX (TWIN_DISPATCH_NAME_MAX + 1 + TWIN_ID_MAX)

/* name "\0" id (id_len 0: the dispatch's prefix, name "\0"). */
static int key_build(unsigned char *k, const char *name, size_t name_len, const char *id,
                     size_t id_len, size_t *n, char *err)
{
    if (!name || name_len == 0 || name_len > TWIN_DISPATCH_NAME_MAX ||
        memchr(name, '\0', name_len) || id_len > TWIN_ID_MAX ||
        (id_len && memchr(id, '\0', id_len))) {
        twins__errf(err, "dispatch record: bad dispatch name or twin id");
        return -EINVAL;
    }
    memcpy(k, name, name_len);
    k[name_len] = '\0';
    if (id_len)
        memcpy(k + name_len + 1, id, id_len);
    *n = name_len + 1 + id_len;
    return 0;
}

static int need_id(size_t id_len, char *err)
{
    if (id_len == 0) {
        twins__errf(err, "dispatch record: empty twin id");
        return -EINVAL;
    }
    return 0;
}

int twin_dispatch_get(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, void *buf, size_t *len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc = key_build(kb, name, name_len, id, id_len, &kn, err);
    if (rc || (rc = need_id(id_len, err)))
        return rc;
    if (!txn->s->has_dispatch) {
        twins__errf(err, "store has no dispatch records yet (no writer of this version opened it)");
        return -ENOENT;
    }
    MDB_val k = {kn, kb}, v;
    rc = mdb_get(txn->txn, txn->s->dbi_dispatch, &k, &v);
    if (rc)
        return store__mdb_error(txn, rc, "dispatch record", err);
    if (v.mv_size == 0 || v.mv_size > TWIN_DISPATCH_RECORD_MAX) {
        twins__errf(err, "dispatch record of '%.*s' / '%.*s' has %zu bytes", (int)name_len, name,
                    (int)id_len, id, v.mv_size);
        return -EBADMSG;
    }
    memcpy(buf, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return 0;
}

int twin_dispatch_put(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, const void *buf, size_t len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc = store__need_write(txn, "dispatch record", err);
    if (rc || (rc = key_build(kb, name, name_len, id, id_len, &kn, err)) ||
        (rc = need_id(id_len, err)))
        return rc;
    if (len == 0 || len > TWIN_DISPATCH_RECORD_MAX) {
        twins__errf(err, "dispatch record: %zu bytes (1 to %d)", len, TWIN_DISPATCH_RECORD_MAX);
        return -EINVAL;
    }
    MDB_val k = {kn, kb}, v = {len, (void *)buf};
    rc = mdb_put(txn->txn, txn->s->dbi_dispatch, &k, &v, 0);
    return rc ? store__mdb_error(txn, rc, "dispatch record", err) : 0;
}

int twin_dispatch_del(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc = store__need_write(txn, "dispatch record", err);
    if (rc || (rc = key_build(kb, name, name_len, id, id_len, &kn, err)) ||
        (rc = need_id(id_len, err)))
        return rc;
    MDB_val k = {kn, kb};
    rc = mdb_del(txn->txn, txn->s->dbi_dispatch, &k, NULL);
    return rc ? store__mdb_error(txn, rc, "dispatch record", err) : 0;
}

int twin_dispatch_list(struct twin_txn *txn, const char *name, size_t name_len, twin_records_cb cb,
                       void *ctx, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn = 0;
    int rc;
    if (!txn->s->has_dispatch)
        return 0;
    if (name && (rc = key_build(kb, name, name_len, NULL, 0, &kn, err)))
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn->txn, txn->s->dbi_dispatch, &c)))
        return store__mdb_error(txn, rc, "dispatch record", err);
    MDB_val k = {kn, kb}, v;
    rc = mdb_cursor_get(c, &k, &v, kn ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        if (kn && (k.mv_size < kn || memcmp(k.mv_data, kb, kn) != 0))
            break;
        const char *key = k.mv_data;
        const char *nul = memchr(key, '\0', k.mv_size);
        size_t nl = nul ? (size_t)(nul - key) : 0;
        /* a key this file could have written */
        if (nul && nl >= 1 && nl <= TWIN_DISPATCH_NAME_MAX && k.mv_size - nl - 1 >= 1 &&
            k.mv_size - nl - 1 <= TWIN_ID_MAX) {
            int stop = cb(ctx, key, nl, nul + 1, k.mv_size - nl - 1, v.mv_data, v.mv_size);
            if (stop) {
                mdb_cursor_close(c);
                return stop;
            }
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : store__mdb_error(txn, rc, "dispatch record", err);
}
