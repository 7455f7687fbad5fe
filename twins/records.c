/* records: keyed records kept beside twins, opaque bytes under "first \0 second" in one LMDB
 * database each: the rules engine's per-rule records (rulestate.c) and the models' per-model
 * records (modelstate.c), keyed by twin id then name, and dispatch's records (dispatch.c),
 * keyed by dispatch name then twin id, so that one decision reads its dispatch in one range.
 * What a record means is the caller's; this file reads, writes, lists and removes them in the
 * caller's transaction. */
#include "twins_int.h"

#include <errno.h>

#define KEY_MAX RECORDS_KEY_MAX
_Static_assert(TWIN_RULE_NAME_MAX == 64 && TWIN_MODEL_NAME_MAX == 64 &&
                   TWIN_DISPATCH_NAME_MAX + 1 + TWIN_ID_MAX <= KEY_MAX,
               "one key buffer for every layout");

static size_t first_max(const struct records *r)
{
    return r->first_max ? r->first_max : TWIN_ID_MAX;
}

static size_t second_max(const struct records *r)
{
    return r->second_max ? r->second_max : 64;
}

/* first "\0" second (second_len 0: the prefix of first's records, first "\0"). */
static int key_build(const struct records *r, unsigned char *k, const char *id, size_t id_len,
                     const char *name, size_t name_len, size_t *n, char *err)
{
    if (!id || id_len == 0 || id_len > first_max(r) || memchr(id, '\0', id_len) ||
        name_len > second_max(r) || (name_len && memchr(name, '\0', name_len))) {
        twins__errf(err, "%s: bad key ('%.*s' / '%.*s')", r->what, (int)(id ? id_len : 0),
                    id ? id : "", (int)name_len, name ? name : "");
        return -EINVAL;
    }
    memcpy(k, id, id_len);
    k[id_len] = '\0';
    if (name_len)
        memcpy(k + id_len + 1, name, name_len);
    *n = id_len + 1 + name_len;
    return 0;
}

static int need_name(const struct records *r, size_t name_len, char *err)
{
    if (name_len == 0) {
        twins__errf(err, "%s: empty key", r->what);
        return -EINVAL;
    }
    return 0;
}

int records__key(const struct records *r, unsigned char *k, const char *id, size_t id_len,
                 size_t *n, char *err)
{
    return key_build(r, k, id, id_len, NULL, 0, n, err);
}

int records__get(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                 const char *name, size_t name_len, void *buf, size_t cap, size_t *len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc = key_build(r, kb, id, id_len, name, name_len, &kn, err);
    if (rc || (rc = need_name(r, name_len, err)))
        return rc;
    if (!r->present) {
        twins__errf(err, "store has no %s yet (no writer of this version opened it)", r->what);
        return -ENOENT;
    }
    MDB_val k = {kn, kb}, v;
    rc = mdb_get(txn->txn, r->dbi, &k, &v);
    if (rc)
        return store__mdb_error(txn, rc, r->what, err);
    if (v.mv_size == 0 || v.mv_size > r->max || v.mv_size > cap) {
        twins__errf(err, "%s of '%.*s' / '%.*s' has %zu bytes", r->what, (int)id_len, id,
                    (int)name_len, name, v.mv_size);
        return -EBADMSG;
    }
    memcpy(buf, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return 0;
}

int records__put(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                 const char *name, size_t name_len, const void *buf, size_t len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc = store__need_write(txn, r->what, err);
    if (rc || (rc = key_build(r, kb, id, id_len, name, name_len, &kn, err)) ||
        (rc = need_name(r, name_len, err)))
        return rc;
    if (len == 0 || len > r->max) {
        twins__errf(err, "%s: a record of %zu bytes (1 to %zu)", r->what, len, r->max);
        return -EINVAL;
    }
    MDB_val k = {kn, kb}, v = {len, (void *)buf};
    rc = mdb_put(txn->txn, r->dbi, &k, &v, 0);
    return rc ? store__mdb_error(txn, rc, r->what, err) : 0;
}

int records__del(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                 const char *name, size_t name_len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc = store__need_write(txn, r->what, err);
    if (rc || (rc = key_build(r, kb, id, id_len, name, name_len, &kn, err)) ||
        (rc = need_name(r, name_len, err)))
        return rc;
    MDB_val k = {kn, kb};
    rc = mdb_del(txn->txn, r->dbi, &k, NULL);
    return rc ? store__mdb_error(txn, rc, r->what, err) : 0;
}

int records__list(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                  twin_records_cb cb, void *ctx, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn = 0;
    int rc;
    if (!r->present)
        return 0;
    if (id && (rc = key_build(r, kb, id, id_len, NULL, 0, &kn, err)))
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn->txn, r->dbi, &c)))
        return store__mdb_error(txn, rc, r->what, err);
    MDB_val k = {kn, kb}, v;
    rc = mdb_cursor_get(c, &k, &v, kn ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        if (kn && (k.mv_size < kn || memcmp(k.mv_data, kb, kn) != 0))
            break;
        const char *key = k.mv_data;
        const char *nul = memchr(key, '\0', k.mv_size);
        size_t il = nul ? (size_t)(nul - key) : 0;
        /* a name (not rulestate's wake), and a key this file could have written */
        if (nul && il + 1 < k.mv_size && il >= 1 && il <= first_max(r) &&
            k.mv_size - il - 1 <= second_max(r)) {
            int stop = cb(ctx, key, il, nul + 1, k.mv_size - il - 1, v.mv_data, v.mv_size);
            if (stop) {
                mdb_cursor_close(c);
                return stop;
            }
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : store__mdb_error(txn, rc, r->what, err);
}

int records__remove_twin(struct twin_txn *txn, const struct records *r, const char *id,
                         size_t id_len, char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    int rc;
    if (!r->present)
        return 0;
    if ((rc = key_build(r, kb, id, id_len, NULL, 0, &kn, err)))
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn->txn, r->dbi, &c)))
        return store__mdb_error(txn, rc, r->what, err);
    for (;;) {
        MDB_val k = {kn, kb}, v;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc || k.mv_size < kn || memcmp(k.mv_data, kb, kn) != 0 || (rc = mdb_cursor_del(c, 0)))
            break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : store__mdb_error(txn, rc, r->what, err);
}
