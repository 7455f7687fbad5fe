/* rulestate: the records the rules engine keeps per (twin, rule), opaque bytes here, and each
 * twin's wake time with the index the hub's timer reads. What a record means is rules/'s
 * business; this file only stores it, in the caller's transaction, so that a rule's state
 * commits with the change that caused it.
 *
 * Layout (store.c opens the databases):
 *   "rulestate"  id "\0" rule -> record (1..TWIN_RULE_STATE_MAX bytes)
 *                id "\0"      -> be64(wake): the twin's wake time (no rule name)
 *   "wakes"      be64(wake) id -> empty: the twins in the order they are due */
#include "twins_int.h"

#include <errno.h>
#include <limits.h>

#define KEY_MAX (TWIN_ID_MAX + 1 + TWIN_RULE_NAME_MAX)
#define DUE_MAX 256

/* Sign-flipped so that negative times sort first in the big-endian key. */
static uint64_t time_key(int64_t t)
{
    return (uint64_t)t ^ (1ull << 63);
}

static struct records rules_db(const struct twin_txn *txn)
{
    return (struct records){.dbi = txn->s->dbi_rulestate,
                            .present = txn->s->has_rules,
                            .max = TWIN_RULE_STATE_MAX,
                            .what = "rule state"};
}

static int need_db(struct twin_txn *txn, char *err)
{
    if (!txn->s->has_rules) {
        twins__errf(err, "store has no rule state yet (no writer of this version opened it)");
        return -ENOENT;
    }
    return 0;
}

int twin_rule_state_get(struct twin_txn *txn, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, void *buf, size_t *len, char *err)
{
    struct records r = rules_db(txn);
    return records__get(txn, &r, id, id_len, rule, rule_len, buf, TWIN_RULE_STATE_MAX, len, err);
}

int twin_rule_state_put(struct twin_txn *txn, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, const void *buf, size_t len, char *err)
{
    struct records r = rules_db(txn);
    return records__put(txn, &r, id, id_len, rule, rule_len, buf, len, err);
}

int twin_rule_state_del(struct twin_txn *txn, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, char *err)
{
    struct records r = rules_db(txn);
    return records__del(txn, &r, id, id_len, rule, rule_len, err);
}

int twin_rule_state_list(struct twin_txn *txn, const char *id, size_t id_len, twin_records_cb cb,
                         void *ctx, char *err)
{
    struct records r = rules_db(txn);
    return records__list(txn, &r, id, id_len, cb, ctx, err);
}

int twin_rule_wake_get(struct twin_txn *txn, const char *id, size_t id_len, int64_t *at,
                       char *err)
{
    unsigned char kb[KEY_MAX];
    size_t kn;
    struct records r = rules_db(txn);
    int rc = records__key(&r, kb, id, id_len, &kn, err);
    *at = INT64_MAX;
    if (rc)
        return rc;
    if (need_db(txn, err))
        return 0;
    MDB_val k = {kn, kb}, v;
    rc = mdb_get(txn->txn, txn->s->dbi_rulestate, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return store__mdb_error(txn, rc, "reading a wake time", err);
    if (v.mv_size != 8) {
        twins__errf(err, "wake time of '%.*s' has %zu bytes", (int)id_len, id, v.mv_size);
        return -EBADMSG;
    }
    *at = (int64_t)(store__be64_get(v.mv_data) ^ (1ull << 63));
    return 0;
}

/* Moves twin id's wake from `old` to `at` (INT64_MAX: none) in both databases. */
static int wake_move(struct twin_txn *txn, const char *id, size_t id_len, int64_t old, int64_t at,
                     char *err)
{
    unsigned char kb[KEY_MAX], wk[8 + TWIN_ID_MAX], tb[8];
    size_t kn = 0;
    struct records r = rules_db(txn);
    int rc = records__key(&r, kb, id, id_len, &kn, err);
    if (rc)
        return rc;
    memcpy(wk + 8, id, id_len);
    MDB_val k = {kn, kb}, w = {8 + id_len, wk}, v = {8, tb};
    if (old != INT64_MAX) {
        store__be64_put(wk, time_key(old));
        rc = mdb_del(txn->txn, txn->s->dbi_wakes, &w, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return store__mdb_error(txn, rc, "deleting a wake", err);
    }
    if (at == INT64_MAX) {
        rc = mdb_del(txn->txn, txn->s->dbi_rulestate, &k, NULL);
        return rc && rc != MDB_NOTFOUND ? store__mdb_error(txn, rc, "deleting a wake time", err)
                                        : 0;
    }
    store__be64_put(tb, time_key(at));
    store__be64_put(wk, time_key(at));
    MDB_val empty = {0, ""};
    if ((rc = mdb_put(txn->txn, txn->s->dbi_rulestate, &k, &v, 0)) ||
        (rc = mdb_put(txn->txn, txn->s->dbi_wakes, &w, &empty, 0)))
        return store__mdb_error(txn, rc, "writing a wake", err);
    return 0;
}

int twin_rule_wake_set(struct twin_txn *txn, const char *id, size_t id_len, int64_t at,
                       char *err)
{
    int64_t old;
    int rc = store__need_write(txn, "twin_rule_wake_set", err);
    if (rc || (rc = twin_rule_wake_get(txn, id, id_len, &old, err)))
        return rc;
    return old == at ? 0 : wake_move(txn, id, id_len, old, at, err);
}

int twin_rule_wake_lower(struct twin_txn *txn, const char *id, size_t id_len, int64_t at,
                         char *err)
{
    int64_t old;
    int rc = store__need_write(txn, "twin_rule_wake_lower", err);
    if (rc || (rc = twin_rule_wake_get(txn, id, id_len, &old, err)))
        return rc;
    return at >= old ? 0 : wake_move(txn, id, id_len, old, at, err);
}

int twin_rule_wake_due(struct twin_txn *txn, int64_t now, unsigned max, twin_rule_wake_cb cb,
                       void *ctx, char *err)
{
    struct {
        char id[TWIN_ID_MAX];
        size_t len;
        int64_t at;
    } *due;
    unsigned n = 0;
    int rc = need_db(txn, err);
    if (rc)
        return rc == -ENOENT ? 0 : rc;
    if (max > DUE_MAX)
        max = DUE_MAX;
    due = malloc(sizeof(*due) * (max ? max : 1));
    if (!due)
        return -ENOMEM;
    /* collect first: cb writes to the store, which must not happen under our cursor */
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn->txn, txn->s->dbi_wakes, &c))) {
        free(due);
        return store__mdb_error(txn, rc, "opening the wake cursor", err);
    }
    MDB_val k, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    while (rc == 0 && n < max) {
        if (k.mv_size <= 8 || k.mv_size > 8 + TWIN_ID_MAX) {
            rc = -EBADMSG;
            break;
        }
        int64_t at = (int64_t)(store__be64_get(k.mv_data) ^ (1ull << 63));
        if (at > now)
            break;
        due[n].len = k.mv_size - 8;
        memcpy(due[n].id, (const char *)k.mv_data + 8, due[n].len);
        due[n].at = at;
        n++;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc == -EBADMSG)
        twins__errf(err, "a wake entry has a key of %zu bytes", k.mv_size);
    else if (rc && rc != MDB_NOTFOUND)
        rc = store__mdb_error(txn, rc, "reading the wakes", err);
    else
        rc = 0;
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = cb(ctx, due[i].id, due[i].len, due[i].at);
    free(due);
    return rc;
}

int twin_rule_wake_next(struct twin_txn *txn, int64_t *at, char *err)
{
    int rc = need_db(txn, err);
    if (rc)
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn->txn, txn->s->dbi_wakes, &c)))
        return store__mdb_error(txn, rc, "opening the wake cursor", err);
    MDB_val k, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    mdb_cursor_close(c);
    if (rc)
        return store__mdb_error(txn, rc, "reading the wakes", err);
    if (k.mv_size < 8)
        return twins__errf(err, "a wake entry has a key of %zu bytes", k.mv_size), -EBADMSG;
    *at = (int64_t)(store__be64_get(k.mv_data) ^ (1ull << 63));
    return 0;
}

/* Deletes every record and the wake of twin `id` (twin_delete). */
int rulestate__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, char *err)
{
    struct records r = rules_db(txn);
    if (!txn->s->has_rules)
        return 0;
    int rc = twin_rule_wake_set(txn, id, id_len, INT64_MAX, err);
    return rc ? rc : records__remove_twin(txn, &r, id, id_len, err);
}
