/* command.c: the durable command queue: commands per device in LMDB, their state machine, the
 * per-device cap, deadlines and the drop of finished commands after their retention. It does not
 * send anything or build events: every state change goes to the caller's twin_command_cb, and
 * the hub publishes after the commit.
 *
 * Layout (store.c opens the databases):
 *   "commands"   id "\0" be64(n) -> record, the msgpack map
 *                {id, cmd, args, state, created, expires, updated, attempts, result?, drop?}
 *                n comes from the store-wide counter "cmd_seq" in "info": a device's commands
 *                are contiguous and in creation order, and ids are never reused.
 *   "deadlines"  be64(due) id be64(n) -> empty. One entry per command that has a due time: its
 *                deadline (`expires`) while pending, its drop time (`drop`) once final. The
 *                timer pass (twin_command_expire) reads from the front and stops at the first
 *                entry in the future, so it costs one lookup when nothing is due.
 *
 * Every function checks its input and reads what it needs before its first write, so a rejected
 * call leaves the transaction as it was. Records are read into the transaction's zone (copied
 * first in a write transaction, whose later writes may move LMDB's pages); counting, choosing
 * what the cap pushes out and deleting a twin's commands only peek at the stored bytes.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>

#define CKEY_MAX (TWIN_ID_MAX + 1 + 8)
#define DKEY_MAX (8 + TWIN_ID_MAX + 8)

/* ---------------------------------------------------------------------------------------------
 * States
 * ------------------------------------------------------------------------------------------ */

static const char *const state_names[] = {
    [TWIN_CMD_NONE] = "none",           [TWIN_CMD_QUEUED] = "queued",
    [TWIN_CMD_SENT] = "sent",           [TWIN_CMD_DELIVERED] = "delivered",
    [TWIN_CMD_SUCCEEDED] = "succeeded", [TWIN_CMD_FAILED] = "failed",
    [TWIN_CMD_EXPIRED] = "expired",
};

const char *twin_command_state_name(enum twin_command_state st)
{
    if ((unsigned)st < sizeof state_names / sizeof state_names[0])
        return state_names[st];
    return "unknown";
}

int twin_command_state_parse(const char *s, size_t len, enum twin_command_state *out)
{
    if (!s || !out)
        return -EINVAL;
    for (unsigned i = TWIN_CMD_QUEUED; i <= TWIN_CMD_EXPIRED; i++) {
        if (strlen(state_names[i]) == len && memcmp(state_names[i], s, len) == 0) {
            *out = (enum twin_command_state)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool twin_command_state_final(enum twin_command_state st)
{
    return st == TWIN_CMD_SUCCEEDED || st == TWIN_CMD_FAILED || st == TWIN_CMD_EXPIRED;
}

/* The time of a command's entry in "deadlines": its deadline while pending, its drop time once
 * final; 0: none. */
static int64_t due_of(enum twin_command_state st, int64_t expires, int64_t drop)
{
    return twin_command_state_final(st) ? drop : expires;
}

/* ---------------------------------------------------------------------------------------------
 * Keys and ids
 * ------------------------------------------------------------------------------------------ */

static void ckey(unsigned char *buf, const char *id, size_t id_len, uint64_t n, MDB_val *k)
{
    memcpy(buf, id, id_len);
    buf[id_len] = '\0';
    store__be64_put(buf + id_len + 1, n);
    k->mv_size = id_len + 1 + 8;
    k->mv_data = buf;
}

static void dkey(unsigned char *buf, int64_t due, const char *id, size_t id_len, uint64_t n,
                 MDB_val *k)
{
    store__be64_put(buf, (uint64_t)due);
    memcpy(buf + 8, id, id_len);
    store__be64_put(buf + 8 + id_len, n);
    k->mv_size = 8 + id_len + 8;
    k->mv_data = buf;
}

static void id_format(uint64_t n, char *out)
{
    snprintf(out, TWIN_CMD_ID_LEN + 1, "%016" PRIx64, n);
}

/* A command id is exactly 16 lowercase hex digits of a number above 0. */
static bool id_parse(const char *s, size_t len, uint64_t *n)
{
    uint64_t v = 0;

    if (len != TWIN_CMD_ID_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c >= '0' && c <= '9')
            v = v << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v << 4 | (uint64_t)(c - 'a' + 10);
        else
            return false;
    }
    *n = v;
    return v != 0;
}

/* The command number behind cmd_id; an id that cannot be ours is a command we do not have. */
static int cmd_number(const char *id, size_t id_len, const char *cmd_id, size_t cmd_id_len,
                      uint64_t *n, char *err)
{
    if (!cmd_id || cmd_id_len == 0) {
        twins__errf(err, "no command id");
        return -EINVAL;
    }
    if (!id_parse(cmd_id, cmd_id_len, n)) {
        twins__errf(err, "no command '%.*s' for twin '%.*s' (ids are %d hex digits)",
                    (int)(cmd_id_len > 64 ? 64 : cmd_id_len), cmd_id, (int)id_len, id,
                    TWIN_CMD_ID_LEN);
        return -ENOENT;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Records
 * ------------------------------------------------------------------------------------------ */

static int pack_key(msgpack_packer *pk, const char *k)
{
    size_t n = strlen(k);

    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, k, n);
}

static int pack_int(msgpack_packer *pk, int64_t v)
{
    return v >= 0 ? msgpack_pack_uint64(pk, (uint64_t)v) : msgpack_pack_int64(pk, v);
}

static int rec_encode(msgpack_sbuffer *sb, const struct twin_command *c)
{
    bool result = c->result.type != MSGPACK_OBJECT_NIL, drop = c->drop != 0;
    const char *st = twin_command_state_name(c->state);
    msgpack_packer pk;
    int bad;

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    bad = msgpack_pack_map(&pk, 8 + (size_t)result + (size_t)drop);
    bad = bad || pack_key(&pk, "id") || msgpack_pack_str(&pk, TWIN_CMD_ID_LEN) ||
          msgpack_pack_str_body(&pk, c->id, TWIN_CMD_ID_LEN);
    bad = bad || pack_key(&pk, "cmd") || msgpack_pack_str(&pk, c->cmd_len) ||
          msgpack_pack_str_body(&pk, c->cmd, c->cmd_len);
    bad = bad || pack_key(&pk, "args") || msgpack_pack_object(&pk, c->args);
    bad = bad || pack_key(&pk, "state") || pack_key(&pk, st);
    bad = bad || pack_key(&pk, "created") || pack_int(&pk, c->created);
    bad = bad || pack_key(&pk, "expires") || pack_int(&pk, c->expires);
    bad = bad || pack_key(&pk, "updated") || pack_int(&pk, c->updated);
    bad = bad || pack_key(&pk, "attempts") || msgpack_pack_uint32(&pk, c->attempts);
    if (result)
        bad = bad || pack_key(&pk, "result") || msgpack_pack_object(&pk, c->result);
    if (drop)
        bad = bad || pack_key(&pk, "drop") || pack_int(&pk, c->drop);
    return bad ? -ENOMEM : 0;
}

static bool get_i64(const msgpack_object *v, int64_t *out)
{
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return true;
    }
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX) {
        *out = (int64_t)v->via.u64;
        return true;
    }
    return false;
}

#define KEY(lit) twins__key_is(k, lit, sizeof lit - 1)

/* Decodes record bytes of command n of twin id into *c (in the transaction's zone). */
static int rec_decode(struct twin_txn *txn, const char *id, size_t id_len, uint64_t n,
                      const void *buf, size_t len, struct twin_command *c, char *err)
{
    msgpack_object o;
    size_t end, off = 0;
    bool has_cmd = false, has_state = false, ok = true;
    int rc;

    memset(c, 0, sizeof *c);
    c->twin_id = id;
    c->twin_id_len = id_len;
    id_format(n, c->id);
    c->args.type = c->result.type = MSGPACK_OBJECT_NIL;
    if (txn->write) {
        void *copy = msgpack_zone_malloc(&txn->zone, len ? len : 1);

        if (!copy) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        memcpy(copy, buf, len);
        buf = copy;
    }
    rc = scan__object(buf, len, TWIN_DEPTH_CAP, UINT_MAX, &end, NULL);
    if (rc || end != len)
        goto bad;
    rc = msgpack_unpack(buf, len, &off, &txn->zone, &o);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    if (rc != MSGPACK_UNPACK_SUCCESS || o.type != MSGPACK_OBJECT_MAP)
        goto bad;
    for (uint32_t i = 0; i < o.via.map.size && ok; i++) {
        const msgpack_object *k = &o.via.map.ptr[i].key, *v = &o.via.map.ptr[i].val;

        if (KEY("cmd")) {
            ok = v->type == MSGPACK_OBJECT_STR;
            c->cmd = v->via.str.ptr;
            c->cmd_len = v->via.str.size;
            has_cmd = true;
        } else if (KEY("args")) {
            c->args = *v;
        } else if (KEY("state")) {
            ok = v->type == MSGPACK_OBJECT_STR &&
                 twin_command_state_parse(v->via.str.ptr, v->via.str.size, &c->state) == 0;
            has_state = true;
        } else if (KEY("created")) {
            ok = get_i64(v, &c->created);
        } else if (KEY("expires")) {
            ok = get_i64(v, &c->expires);
        } else if (KEY("updated")) {
            ok = get_i64(v, &c->updated);
        } else if (KEY("attempts")) {
            ok = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= UINT32_MAX;
            c->attempts = (uint32_t)v->via.u64;
        } else if (KEY("result")) {
            c->result = *v;
        } else if (KEY("drop")) {
            ok = get_i64(v, &c->drop);
        }
        /* "id" is the key's number again; unknown keys are skipped (a newer hub's) */
    }
    if (ok && has_cmd && has_state)
        return 0;
bad:
    twins__errf(err, "command %016" PRIx64 " of twin '%.*s': damaged record", n, (int)id_len, id);
    return -EBADMSG;
}

/* What the cap and deletion need of a record, read from its bytes without allocating. */
struct peek {
    enum twin_command_state state;
    int64_t expires, drop;
};

static bool peek_int(const unsigned char *p, size_t len, size_t off, int64_t *out)
{
    struct scan_head h;

    if (scan__head(p, len, off, &h, NULL))
        return false;
    if (h.kind == SCAN_UINT && h.u <= INT64_MAX)
        *out = (int64_t)h.u;
    else if (h.kind == SCAN_INT)
        *out = (int64_t)h.u;
    else
        return false;
    return true;
}

static bool rec_peek(const void *buf, size_t len, struct peek *pk)
{
    const unsigned char *p = buf;
    struct scan_head h;
    bool has_state = false;
    size_t off;
    uint64_t n;

    memset(pk, 0, sizeof *pk);
    if (scan__head(p, len, 0, &h, NULL) || h.kind != SCAN_MAP)
        return false;
    n = h.n;
    off = h.hdr;
    for (uint64_t i = 0; i < n; i++) {
        const char *key;

        if (scan__head(p, len, off, &h, NULL))
            return false;
        if (h.kind != SCAN_STR) {
            if (scan__skip(p, len, &off) || scan__skip(p, len, &off))
                return false;
            continue;
        }
        key = (const char *)p + off + h.hdr;
        off += h.hdr + h.n;
        if (h.n == 5 && !memcmp(key, "state", 5)) {
            if (scan__head(p, len, off, &h, NULL) || h.kind != SCAN_STR ||
                twin_command_state_parse((const char *)p + off + h.hdr, h.n, &pk->state))
                return false;
            has_state = true;
        } else if (h.n == 7 && !memcmp(key, "expires", 7)) {
            if (!peek_int(p, len, off, &pk->expires))
                return false;
        } else if (h.n == 4 && !memcmp(key, "drop", 4)) {
            if (!peek_int(p, len, off, &pk->drop))
                return false;
        }
        if (scan__skip(p, len, &off))
            return false;
    }
    return has_state;
}

/* ---------------------------------------------------------------------------------------------
 * Reading and writing records and deadlines
 * ------------------------------------------------------------------------------------------ */

static int cmd_load(struct twin_txn *txn, const char *id, size_t id_len, uint64_t n,
                    struct twin_command *c, char *err)
{
    unsigned char kb[CKEY_MAX];
    MDB_val k, v;
    int rc;

    ckey(kb, id, id_len, n, &k);
    if (!txn->s->has_commands)
        rc = MDB_NOTFOUND; /* a store no writer of this build has opened */
    else
        rc = mdb_get(txn->txn, txn->s->dbi_commands, &k, &v);
    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "no command %016" PRIx64 " for twin '%.*s'", n, (int)id_len, id);
        return -ENOENT;
    }
    if (rc)
        return store__mdb_error(txn, rc, "reading a command", err);
    return rec_decode(txn, id, id_len, n, v.mv_data, v.mv_size, c, err);
}

static int cmd_store(struct twin_txn *txn, const struct twin_command *c, uint64_t n, char *err)
{
    unsigned char kb[CKEY_MAX];
    MDB_val k, v;
    int rc;

    msgpack_sbuffer_clear(&txn->sbuf);
    if (rec_encode(&txn->sbuf, c)) {
        twins__errf(err, "out of memory encoding a command");
        return -ENOMEM;
    }
    ckey(kb, c->twin_id, c->twin_id_len, n, &k);
    v.mv_size = txn->sbuf.size;
    v.mv_data = txn->sbuf.data;
    rc = mdb_put(txn->txn, txn->s->dbi_commands, &k, &v, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing a command", err);
    return 0;
}

static int due_put(struct twin_txn *txn, int64_t due, const char *id, size_t id_len, uint64_t n,
                   char *err)
{
    unsigned char kb[DKEY_MAX];
    MDB_val k, v = {0, kb};
    int rc;

    if (due <= 0)
        return 0;
    dkey(kb, due, id, id_len, n, &k);
    rc = mdb_put(txn->txn, txn->s->dbi_deadlines, &k, &v, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing a deadline", err);
    return 0;
}

static int due_del(struct twin_txn *txn, int64_t due, const char *id, size_t id_len, uint64_t n,
                   char *err)
{
    unsigned char kb[DKEY_MAX];
    MDB_val k;
    int rc;

    if (due <= 0)
        return 0;
    dkey(kb, due, id, id_len, n, &k);
    rc = mdb_del(txn->txn, txn->s->dbi_deadlines, &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "deleting a deadline", err);
    return 0;
}

/* Deletes command n of twin id and its deadline entry at `due` (0: none). */
static int cmd_drop(struct twin_txn *txn, const char *id, size_t id_len, uint64_t n, int64_t due,
                    char *err)
{
    unsigned char kb[CKEY_MAX];
    MDB_val k;
    int rc;

    ckey(kb, id, id_len, n, &k);
    rc = mdb_del(txn->txn, txn->s->dbi_commands, &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "deleting a command", err);
    return due_del(txn, due, id, id_len, n, err);
}

/* Moves *c (command n) to state `to` at now_ms, with `result` when given, and stores it, its
 * deadline entry following: a final state trades the deadline for a drop time. */
static int cmd_move(struct twin_txn *txn, struct twin_command *c, uint64_t n,
                    enum twin_command_state to, int64_t now_ms, const msgpack_object *result,
                    char *err)
{
    int64_t before = due_of(c->state, c->expires, c->drop), after;
    int rc;

    c->state = to;
    c->updated = now_ms;
    if (result)
        c->result = *result;
    if (twin_command_state_final(to) && !c->drop) {
        uint64_t keep = atomic_load(&txn->s->cmd_keep);

        c->drop = !keep                                   ? 0
                  : keep > (uint64_t)(INT64_MAX - now_ms) ? INT64_MAX
                                                          : now_ms + (int64_t)keep;
    }
    after = due_of(c->state, c->expires, c->drop);
    if (before != after) {
        rc = due_del(txn, before, c->twin_id, c->twin_id_len, n, err);
        if (!rc)
            rc = due_put(txn, after, c->twin_id, c->twin_id_len, n, err);
        if (rc)
            return rc;
    }
    return cmd_store(txn, c, n, err);
}

/* ---------------------------------------------------------------------------------------------
 * A device's commands in order
 * ------------------------------------------------------------------------------------------ */

/* Positions cur at the first command of twin id numbered `from` or later. Returns 0 with its
 * key, value and number, MDB_NOTFOUND when the twin has none, or an LMDB error. */
static int seek(MDB_cursor *cur, const char *id, size_t id_len, uint64_t from, MDB_val *k,
                MDB_val *v, uint64_t *n)
{
    unsigned char kb[CKEY_MAX];
    int rc;

    ckey(kb, id, id_len, from, k);
    rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
    if (rc)
        return rc;
    if (k->mv_size != id_len + 1 + 8 || memcmp(k->mv_data, id, id_len) != 0 ||
        ((const char *)k->mv_data)[id_len] != '\0')
        return MDB_NOTFOUND;
    *n = store__be64_get((const unsigned char *)k->mv_data + id_len + 1);
    return 0;
}

static int count_of(MDB_cursor *cur, const char *id, size_t id_len, uint64_t *count)
{
    MDB_val k, v;
    uint64_t n;
    int rc;

    *count = 0;
    for (rc = seek(cur, id, id_len, 0, &k, &v, &n); rc == 0;) {
        (*count)++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        if (rc == 0 && (k.mv_size != id_len + 1 + 8 || memcmp(k.mv_data, id, id_len) != 0 ||
                        ((const char *)k.mv_data)[id_len] != '\0'))
            rc = MDB_NOTFOUND;
    }
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Makes room for one more command of twin id under the cap: drops the oldest final commands
 * (damaged ones count as final), then expires and drops the oldest pending ones, reporting
 * each. Two passes of at most the device's commands each. */
static int make_room(struct twin_txn *txn, MDB_cursor *cur, const char *id, size_t id_len,
                     int64_t now_ms, twin_command_cb cb, void *ctx, char *err)
{
    uint64_t count, excess, n;
    unsigned cap = atomic_load(&txn->s->cmd_max);
    MDB_val k, v;
    int rc;

    rc = count_of(cur, id, id_len, &count);
    if (rc)
        return store__mdb_error(txn, rc, "counting commands", err);
    if (count < cap)
        return 0;
    excess = count - cap + 1;
    for (rc = seek(cur, id, id_len, 0, &k, &v, &n); rc == 0 && excess;
         rc = seek(cur, id, id_len, n + 1, &k, &v, &n)) {
        struct peek pk;
        bool readable = rec_peek(v.mv_data, v.mv_size, &pk);

        if (readable && !twin_command_state_final(pk.state))
            continue;
        rc = cmd_drop(txn, id, id_len, n, readable ? pk.drop : 0, err);
        if (rc)
            return rc;
        excess--;
    }
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "reading commands", err);
    for (rc = seek(cur, id, id_len, 0, &k, &v, &n); rc == 0 && excess;
         rc = seek(cur, id, id_len, n + 1, &k, &v, &n)) {
        struct twin_command c;
        enum twin_command_state from;

        rc = rec_decode(txn, id, id_len, n, v.mv_data, v.mv_size, &c, err);
        if (rc == -EBADMSG) {
            /* rec_peek took it, rec_decode does not: dropped like the first pass's unreadable
             * ones, so that one damaged record cannot block the device's queue */
            struct peek pk;
            int64_t due = rec_peek(v.mv_data, v.mv_size, &pk) ? due_of(pk.state, pk.expires,
                                                                       pk.drop)
                                                              : 0;
            rc = cmd_drop(txn, id, id_len, n, due, err);
            if (rc)
                return rc;
            excess--;
            continue;
        }
        if (rc)
            return rc;
        from = c.state;
        rc = cmd_drop(txn, id, id_len, n, c.expires, err);
        if (rc)
            return rc;
        c.state = TWIN_CMD_EXPIRED;
        c.updated = now_ms;
        if (cb && (rc = cb(ctx, &c, from)))
            return rc;
        excess--;
    }
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "reading commands", err);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Checks of what a caller or a device hands in
 * ------------------------------------------------------------------------------------------ */

static bool too_deep(const msgpack_object *o, unsigned depth)
{
    if (o->type != MSGPACK_OBJECT_MAP && o->type != MSGPACK_OBJECT_ARRAY)
        return false;
    if (depth > TWINS_TREE_DEPTH_MAX)
        return true;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (too_deep(&o->via.array.ptr[i], depth + 1))
                return true;
        return false;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++)
        if (too_deep(&o->via.map.ptr[i].key, depth + 1) ||
            too_deep(&o->via.map.ptr[i].val, depth + 1))
            return true;
    return false;
}

/* args or result: nested at most as telemetry, at most TWIN_CMD_ARGS_MAX bytes encoded. */
static int check_payload(struct twin_txn *txn, const msgpack_object *o, const char *what, char *err)
{
    msgpack_packer pk;
    size_t size;

    if (too_deep(o, 1)) {
        twins__errf(err, "%s nested deeper than %d levels", what, TWINS_TREE_DEPTH_MAX);
        return -EINVAL;
    }
    msgpack_sbuffer_clear(&txn->sbuf);
    msgpack_packer_init(&pk, &txn->sbuf, msgpack_sbuffer_write);
    if (msgpack_pack_object(&pk, *o)) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    size = txn->sbuf.size;
    msgpack_sbuffer_clear(&txn->sbuf);
    if (size > TWIN_CMD_ARGS_MAX) {
        twins__errf(err, "%s of %zu bytes, the limit is %d", what, size, TWIN_CMD_ARGS_MAX);
        return -E2BIG;
    }
    return 0;
}

static int check_name(const char *cmd, size_t len, char *err)
{
    if (!cmd || len == 0 || len > TWIN_CMD_NAME_MAX) {
        twins__errf(err, "command name must be 1..%d bytes", TWIN_CMD_NAME_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)cmd[i];

        if (c < 0x20 || c == 0x7f) {
            twins__errf(err, "command name contains control byte 0x%02x", c);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_now(int64_t now_ms, char *err)
{
    if (now_ms < 0) {
        twins__errf(err, "now_ms %" PRId64 " is negative", now_ms);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The public calls
 * ------------------------------------------------------------------------------------------ */

int twin_command_add(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd,
                     size_t cmd_len, const msgpack_object *args, int64_t expires_ms, int64_t now_ms,
                     struct twin_command *out, twin_command_cb cb, void *ctx, char *err)
{
    unsigned char seqb[8];
    MDB_val sk = {7, "cmd_seq"}, sv, tk = {id_len, (void *)id};
    MDB_cursor *cur;
    struct twin_command c;
    uint64_t n;
    int rc;

    rc = store__need_write(txn, "twin_command_add", err);
    if (!rc)
        rc = twins__check_id(id, id_len, err);
    if (!rc)
        rc = check_name(cmd, cmd_len, err);
    if (!rc && args)
        rc = check_payload(txn, args, "command args", err);
    if (!rc)
        rc = check_now(now_ms, err);
    if (rc)
        return rc;
    if (expires_ms != 0 && expires_ms <= now_ms) {
        twins__errf(err, "command deadline %" PRId64 " is not after now %" PRId64, expires_ms,
                    now_ms);
        return -EINVAL;
    }
    rc = mdb_get(txn->txn, txn->s->dbi_twins, &tk, &sv);
    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "no twin '%.*s'", (int)id_len, id);
        return -ENOENT;
    }
    if (rc)
        return store__mdb_error(txn, rc, "reading a twin", err);
    rc = mdb_get(txn->txn, txn->s->dbi_info, &sk, &sv);
    if (rc == MDB_NOTFOUND) {
        n = 1;
    } else if (rc) {
        return store__mdb_error(txn, rc, "reading the command counter", err);
    } else if (sv.mv_size != 8) {
        twins__errf(err, "command counter is %zu bytes, expected 8", sv.mv_size);
        return -EBADMSG;
    } else {
        n = store__le64_get(sv.mv_data) + 1;
    }

    /* checks done: from here on, writes */
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_commands, &cur);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    rc = make_room(txn, cur, id, id_len, now_ms, cb, ctx, err);
    mdb_cursor_close(cur);
    if (rc)
        return rc;
    memset(&c, 0, sizeof c);
    c.twin_id = id;
    c.twin_id_len = id_len;
    id_format(n, c.id);
    c.cmd = cmd;
    c.cmd_len = cmd_len;
    c.args.type = c.result.type = MSGPACK_OBJECT_NIL;
    if (args)
        c.args = *args;
    c.state = TWIN_CMD_QUEUED;
    c.created = c.updated = now_ms;
    c.expires = expires_ms;
    rc = cmd_store(txn, &c, n, err);
    if (!rc)
        rc = due_put(txn, c.expires, id, id_len, n, err);
    if (rc)
        return rc;
    store__le64_put(seqb, n);
    sv.mv_size = sizeof seqb;
    sv.mv_data = seqb;
    rc = mdb_put(txn->txn, txn->s->dbi_info, &sk, &sv, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing the command counter", err);
    if (out)
        *out = c;
    return cb ? cb(ctx, &c, TWIN_CMD_NONE) : 0;
}

int twin_command_mark_sent(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                           size_t cmd_id_len, int64_t now_ms, struct twin_command *out,
                           twin_command_cb cb, void *ctx, char *err)
{
    struct twin_command c;
    enum twin_command_state from;
    uint64_t n;
    int rc;

    rc = store__need_write(txn, "twin_command_mark_sent", err);
    if (!rc)
        rc = twins__check_id(id, id_len, err);
    if (!rc)
        rc = check_now(now_ms, err);
    if (!rc)
        rc = cmd_number(id, id_len, cmd_id, cmd_id_len, &n, err);
    if (!rc)
        rc = cmd_load(txn, id, id_len, n, &c, err);
    if (rc)
        return rc;
    from = c.state;
    if (from != TWIN_CMD_QUEUED && from != TWIN_CMD_SENT) {
        twins__errf(err, "command %s is %s; it is not sent again", c.id,
                    twin_command_state_name(from));
        return -EPERM;
    }
    if (c.attempts < UINT32_MAX)
        c.attempts++;
    rc = cmd_move(txn, &c, n, TWIN_CMD_SENT, now_ms, NULL, err);
    if (rc)
        return rc;
    if (out)
        *out = c;
    return cb && from != TWIN_CMD_SENT ? cb(ctx, &c, from) : 0;
}

int twin_command_update(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                        size_t cmd_id_len, enum twin_command_state status,
                        const msgpack_object *result, int64_t now_ms, struct twin_command *out,
                        twin_command_cb cb, void *ctx, char *err)
{
    struct twin_command c;
    enum twin_command_state from;
    uint64_t n;
    int rc;

    rc = store__need_write(txn, "twin_command_update", err);
    if (!rc)
        rc = twins__check_id(id, id_len, err);
    if (!rc)
        rc = check_now(now_ms, err);
    if (rc)
        return rc;
    if (status != TWIN_CMD_DELIVERED && status != TWIN_CMD_SUCCEEDED && status != TWIN_CMD_FAILED) {
        twins__errf(err, "ack status must be delivered, succeeded or failed, not %s",
                    twin_command_state_name(status));
        return -EINVAL;
    }
    if (result)
        rc = check_payload(txn, result, "command result", err);
    if (!rc)
        rc = cmd_number(id, id_len, cmd_id, cmd_id_len, &n, err);
    if (!rc)
        rc = cmd_load(txn, id, id_len, n, &c, err);
    if (rc)
        return rc;
    from = c.state;
    if (from == status) {
        if (out)
            *out = c; /* a duplicate ack: nothing changes */
        return 0;
    }
    /* forward only: queued < sent < delivered < succeeded | failed, and never out of a final
     * state (enum order; acks are delivered, succeeded or failed) */
    if (twin_command_state_final(from) || status < from) {
        twins__errf(err, "command %s is %s; an ack '%s' cannot change it", c.id,
                    twin_command_state_name(from), twin_command_state_name(status));
        return -EPERM;
    }
    rc = cmd_move(txn, &c, n, status, now_ms, result, err);
    if (rc)
        return rc;
    if (out)
        *out = c;
    return cb ? cb(ctx, &c, from) : 0;
}

int twin_command_get(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                     size_t cmd_id_len, struct twin_command *out, char *err)
{
    uint64_t n;
    int rc;

    if (!txn || !out)
        return -EINVAL;
    rc = twins__check_id(id, id_len, err);
    if (!rc)
        rc = cmd_number(id, id_len, cmd_id, cmd_id_len, &n, err);
    if (rc)
        return rc;
    return cmd_load(txn, id, id_len, n, out, err);
}

int twin_command_list(struct twin_txn *txn, const char *id, size_t id_len, twin_command_cb cb,
                      void *ctx, char *err)
{
    char first[TWIN_ERR_LEN] = "";
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t n;
    int rc, damaged = 0;

    if (!txn || !cb)
        return -EINVAL;
    rc = twins__check_id(id, id_len, err);
    if (rc)
        return rc;
    if (!txn->s->has_commands)
        return 0;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_commands, &cur);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    /* seek per command, not MDB_NEXT: the callback may write in this transaction */
    for (rc = seek(cur, id, id_len, 0, &k, &v, &n); rc == 0;
         rc = seek(cur, id, id_len, n + 1, &k, &v, &n)) {
        struct twin_command c;
        int drc = rec_decode(txn, id, id_len, n, v.mv_data, v.mv_size, &c, first[0] ? NULL : first);

        if (drc == -EBADMSG) {
            damaged = drc; /* one bad record does not hide the others */
            continue;
        }
        if (!drc)
            drc = cb(ctx, &c, c.state);
        if (drc) {
            mdb_cursor_close(cur);
            if (drc == -ENOMEM)
                twins__errf(err, "out of memory");
            return drc;
        }
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "listing commands", err);
    if (damaged)
        twins__errf(err, "%s", first);
    return damaged;
}

int twin_command_expire(struct twin_txn *txn, int64_t now_ms, unsigned max, twin_command_cb cb,
                        void *ctx, struct twin_expire_result *res, char *err)
{
    MDB_cursor *cur;
    MDB_val k, v;
    unsigned done = 0;
    int rc;

    rc = store__need_write(txn, "twin_command_expire", err);
    if (!rc)
        rc = check_now(now_ms, err);
    if (rc)
        return rc;
    if (!res)
        return -EINVAL;
    memset(res, 0, sizeof *res);
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_deadlines, &cur);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    for (;;) {
        char id[TWIN_ID_MAX];
        size_t id_len;
        struct twin_command c;
        enum twin_command_state from;
        int64_t due;
        uint64_t n;

        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc)
            break;
        if (k.mv_size < 8 + 1 + 8 || k.mv_size > DKEY_MAX) {
            rc = mdb_cursor_del(cur, 0); /* not ours: it would stall the pass forever */
            if (rc)
                break;
            continue;
        }
        due = (int64_t)store__be64_get(k.mv_data);
        if (due > now_ms)
            break;
        if (max && done >= max) {
            res->more = true;
            break;
        }
        id_len = k.mv_size - 16;
        memcpy(id, (const char *)k.mv_data + 8, id_len);
        n = store__be64_get((const unsigned char *)k.mv_data + 8 + id_len);
        /* this entry goes whatever the record says: a stale one must not stall the pass */
        rc = mdb_cursor_del(cur, 0);
        if (rc)
            break;
        done++;
        rc = cmd_load(txn, id, id_len, n, &c, NULL);
        if (rc == -ENOENT || rc == -EBADMSG)
            continue; /* gone with its twin, or unreadable: nothing to expire */
        if (rc) {
            mdb_cursor_close(cur);
            twins__errf(err, "reading command %016" PRIx64 " of '%.*s' failed", n, (int)id_len, id);
            return rc;
        }
        from = c.state;
        if (twin_command_state_final(from)) {
            if (c.drop <= 0 || c.drop > now_ms)
                continue; /* a stale entry; the record keeps its own */
            rc = cmd_drop(txn, id, id_len, n, 0, err);
            if (rc) {
                mdb_cursor_close(cur);
                return rc;
            }
            res->dropped++;
            continue;
        }
        if (c.expires <= 0 || c.expires > now_ms)
            continue;
        rc = cmd_move(txn, &c, n, TWIN_CMD_EXPIRED, now_ms, NULL, err);
        if (!rc && cb)
            rc = cb(ctx, &c, from);
        if (rc) {
            mdb_cursor_close(cur);
            return rc;
        }
        res->expired++;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "expiring commands", err);
    return 0;
}

int twin_command_next_deadline(struct twin_txn *txn, int64_t *at_ms, char *err)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    if (!txn || !at_ms)
        return -EINVAL;
    if (!txn->s->has_commands) {
        twins__errf(err, "no command is due");
        return -ENOENT;
    }
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_deadlines, &cur);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "no command is due");
        return -ENOENT;
    }
    if (rc)
        return store__mdb_error(txn, rc, "reading deadlines", err);
    if (k.mv_size < 8) {
        twins__errf(err, "deadline entry of %zu bytes", k.mv_size);
        return -EBADMSG;
    }
    *at_ms = (int64_t)store__be64_get(k.mv_data);
    return 0;
}

int command__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *count,
                         char *err)
{
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t n, removed = 0;
    int rc;

    rc = store__need_write(txn, "command__remove_twin", err);
    if (!rc)
        rc = twins__check_id(id, id_len, err);
    if (rc)
        return rc;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_commands, &cur);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    for (rc = seek(cur, id, id_len, 0, &k, &v, &n); rc == 0;
         rc = seek(cur, id, id_len, n + 1, &k, &v, &n)) {
        struct peek pk;
        int64_t due = rec_peek(v.mv_data, v.mv_size, &pk) ? due_of(pk.state, pk.expires, pk.drop)
                                                          : 0; /* expire skips what is left */

        rc = cmd_drop(txn, id, id_len, n, due, err);
        if (rc) {
            mdb_cursor_close(cur);
            return rc;
        }
        removed++;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "deleting commands", err);
    if (count)
        *count = removed;
    return 0;
}
