/* twins_int.h: what the files of the twins library share and nobody outside it sees: the store
 * and transaction structs, the msgpack header reader that scan.c and doc.c walk bytes with, the
 * checks of values written into a twin, and error formatting. Nothing here is part of the
 * contract in twins.h.
 */
#ifndef TWINS_INT_H
#define TWINS_INT_H

#include "twins.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------ */

/* Formats a reason into err (TWIN_ERR_LEN bytes); err may be NULL. */
static inline void twins__errf(char *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void twins__errf(char *err, const char *fmt, ...)
{
    va_list ap;

    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(err, TWIN_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------------
 * Msgpack headers (scan.c)
 * ------------------------------------------------------------------------------------------ */

enum scan_kind {
    SCAN_NIL,
    SCAN_BOOL,
    SCAN_UINT,  /* positive fixint, uint8..64, and int8..64 holding a value >= 0 */
    SCAN_INT,   /* negative values */
    SCAN_FLOAT, /* float32, float64 */
    SCAN_STR,
    SCAN_BIN,
    SCAN_EXT,
    SCAN_ARRAY,
    SCAN_MAP,
};

/* One msgpack header as read by scan__head. */
struct scan_head {
    enum scan_kind kind;
    const char *name; /* the format's name: "fixmap", "str32", ... */
    size_t hdr;       /* bytes of the tag, length fields and ext type byte */
    uint64_t n;       /* body bytes (str, bin, ext, float, int) or entries (array, map) */
    uint64_t u;       /* SCAN_UINT: the value; SCAN_INT: the int64 bits; SCAN_BOOL: 0/1 */
};

/* Reads the header at p[off] (off <= len). Checks that the header and any str/bin/ext body fit
 * in len, and that an array of n entries has >= n bytes left (a map >= 2n).
 * Returns 0 or -EBADMSG with the reason in err. Allocates nothing. */
int scan__head(const unsigned char *p, size_t len, size_t off, struct scan_head *h, char *err);

/* Checks that p[0..len) starts with one well-formed object no deeper than max_depth (capped at
 * TWIN_DEPTH_CAP) with no map or array of more than max_keys entries. *end receives the offset
 * just past it. Returns 0, -EBADMSG, -ELOOP, -E2BIG. */
int scan__object(const unsigned char *p, size_t len, unsigned max_depth, unsigned max_keys,
                 size_t *end, char *err);

/* Moves *off past one object (of any depth; iterative). Returns 0 or -EBADMSG. */
int scan__skip(const unsigned char *p, size_t len, size_t *off);

/* ---------------------------------------------------------------------------------------------
 * JSON input (json.c)
 * ------------------------------------------------------------------------------------------ */

/* Converts the JSON object text p[0..len) (strict RFC 8259; with array_ok an array too) into
 * msgpack bytes allocated in zone: *out, *out_len. Applies lim->max_depth and lim->max_keys (the
 * caller has checked max_payload). Returns 0, -EBADMSG, -ELOOP, -E2BIG, -ENOMEM; the reason
 * names the offset. */
int json__to_msgpack(const unsigned char *p, size_t len, const struct twin_limits *lim,
                     bool array_ok, msgpack_zone *zone, const unsigned char **out,
                     size_t *out_len, char *err);

/* ---------------------------------------------------------------------------------------------
 * Checks of values written into a twin (check.c)
 * ------------------------------------------------------------------------------------------ */

/* Deepest a value written under reported or desired may nest, counting the patch map as 1: its
 * children become children of `reported` (one level deeper in the stored document) and its meta
 * tree is two deeper; deeper would make a document msgpack-c (TWIN_DEPTH_CAP) cannot read. */
#define TWINS_TREE_DEPTH_MAX (TWIN_DEPTH_CAP - 2)

/* "nil", "bool", "int", "float", "str", "bin", "ext", "array", "map". */
const char *check__type_name(msgpack_object_type t);

/* Checks a patch for reported or desired: every map key (in maps inside arrays too) a string of
 * 1..TWIN_KEY_MAX bytes without '.' or control bytes, no ext values, nesting at most
 * TWINS_TREE_DEPTH_MAX with `o` at depth 1. Reasons name the path from `root` ("reported",
 * "desired"): 'bad key "a.b" in desired.x: contains '.''. Returns 0 or -EINVAL. */
int check__tree(const msgpack_object *o, const char *root, char *err);

/* ---------------------------------------------------------------------------------------------
 * Values (value.c)
 * ------------------------------------------------------------------------------------------ */

/* True when msgpack key `k` is the string s[0..n). */
static inline bool twins__key_is(const msgpack_object *k, const char *s, size_t n)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           (n == 0 || memcmp(k->via.str.ptr, s, n) == 0);
}

/* The number v holds (any integer or float type) into *d; false for anything else. */
static inline bool twins__number(const msgpack_object *v, double *d)
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

/* ---------------------------------------------------------------------------------------------
 * What a merge into reported asks of history (histops.c)
 * ------------------------------------------------------------------------------------------ */

/* A point to append (at ts), a series to delete, or a waveform chunk, waiting until the
 * document is stored. */
struct hist_op {
    struct hist_op *next;
    char *path;
    size_t path_len;
    int64_t ts;
    double value;
    bool remove;
    const msgpack_object *wave; /* a chunk of this waveform's samples; valid for the txn */
};

struct hist_ops {
    const struct twin_store *s;
    msgpack_zone *zone;
    struct hist_op *head, **tail;
    int64_t ts; /* of what is queued now: the message's, or its reading's in a batch */
    int rc;     /* -ENOMEM once a queueing failed */
};

/* An empty queue in txn's zone, its points at ts. */
void histops__init(struct hist_ops *c, struct twin_txn *txn, int64_t ts);
/* The merge's callbacks (twin_leaf_cb, merge__gone_cb), ctx a struct hist_ops: a leaf written
 * queues its point (or waveform chunk); a value taken out queues the removal of the series of
 * every number under it, unless a number replaces a number. */
void histops__leaf(void *ctx, const char *path, size_t path_len, const msgpack_object *v);
void histops__gone(void *ctx, const char *path, size_t path_len, const msgpack_object *old,
                   const msgpack_object *now);
/* Points (and chunks) for everything under v, path[0..len) being v's path. */
void histops__under(struct hist_ops *c, const msgpack_object *v, char *path, size_t len);
/* Appends ".key" (or "key" at the top) to path[0..len); the new length, or 0 when the key is
 * not a string or the path would pass TWIN_PATH_MAX. */
size_t histops__push(char *path, size_t len, const msgpack_object *k);
/* Does what was queued, in order. Write transactions. Returns 0 or -errno (err). */
int histops__apply(struct twin_txn *txn, const char *id, size_t id_len, const struct hist_ops *c,
                   char *err);

/* ---------------------------------------------------------------------------------------------
 * Merge (merge.c)
 * ------------------------------------------------------------------------------------------ */

/* Called for every value of target that the patch takes out: a key deleted (`now` NULL) or a
 * value replaced whole by `now` (a leaf over anything, or a map over a non-map; a map merged
 * into a map is not replaced, its entries are). `path` is as for twin_leaf_cb; `old` and the
 * path buffer are valid during the call only. Calls come in patch order, interleaved with the
 * leaf callbacks, so a key that appears twice in one patch is seen written, then taken out. */
typedef void (*merge__gone_cb)(void *ctx, const char *path, size_t path_len,
                               const msgpack_object *old, const msgpack_object *now);

/* twin_merge with a gone callback too (both callbacks get `cb_ctx`; either may be NULL). */
int merge__apply(msgpack_zone *zone, const msgpack_object *target, const msgpack_object *patch,
                 const msgpack_object *meta, int64_t ts, msgpack_object *out,
                 msgpack_object *meta_out, twin_leaf_cb leaf_cb, merge__gone_cb gone_cb,
                 void *cb_ctx);

/* ---------------------------------------------------------------------------------------------
 * Delta (delta.c)
 * ------------------------------------------------------------------------------------------ */

/* Recomputes doc->delta from doc->desired and doc->reported (in zone); *changed tells whether it
 * differs from what doc->delta was (nil and an empty map are the same: no delta). An empty
 * desired costs nothing. Returns 0 or -ENOMEM (doc unchanged). */
int delta__refresh(msgpack_zone *zone, struct twin_doc *doc, bool *changed);

/* ---------------------------------------------------------------------------------------------
 * History (history.c)
 * ------------------------------------------------------------------------------------------ */

/* Deletes every point of (id, path); a series that does not exist is not an error. Write
 * transactions only. Returns 0, -EINVAL, -ENOMEM, -EIO. */
int history__remove(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                    size_t path_len, char *err);

/* Waveforms (wave.c): the spec of a path (NULL: not a waveform); a chunk of samples (an array
 * of numbers; anything else is not kept) at ts; every waveform of a twin removed. Write
 * transactions. Return 0 or -errno (err). */
const struct twin_waveform *wave__spec(const struct twin_store *s, const char *path, size_t len);
int wave__append(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                 size_t path_len, int64_t ts, const msgpack_object *samples, char *err);
int wave__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, char *err);

/* Moves a schema 1 store's history to schema 2 and writes the new schema (writers, at open).
 * Returns 0 or -errno (err). */
int history__migrate(struct twin_store *s, char *err);

/* Deletes every series of twin `id` (every key id "\0" ...); *count (may be NULL) receives how
 * many. Write transactions only. Returns 0, -EINVAL, -ENOMEM, -EIO. */
int history__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *count,
                         char *err);

/* ---------------------------------------------------------------------------------------------
 * Commands (command.c)
 * ------------------------------------------------------------------------------------------ */

/* Deletes every command of twin `id` and its deadline; *count (may be NULL) receives how many.
 * Write transactions only. Returns 0, -EINVAL, -ENOMEM, -EIO. */
int command__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *count,
                         char *err);

/* ---------------------------------------------------------------------------------------------
 * The store (store.c)
 * ------------------------------------------------------------------------------------------ */

/* 1: the first stores; 2: history points numbered within their millisecond (history.c). */
#define TWINS_SCHEMA 2u

struct twin_txn {
    struct twin_store *s;
    MDB_txn *txn;
    bool write;
    bool map_full;    /* an LMDB call in this transaction reported MDB_MAP_FULL */
    MDB_cursor *hist; /* history cursor of a write transaction, opened on first append */
    msgpack_zone zone;
    msgpack_sbuffer sbuf; /* encoding scratch of write transactions */
};

struct twin_store {
    MDB_env *env;
    MDB_dbi dbi_twins, dbi_points, dbi_outbox, dbi_info;
    MDB_dbi dbi_legacy; /* schema 1's "history", until history__migrate moves it to points */
    MDB_dbi dbi_commands, dbi_deadlines, dbi_tombstones;
    MDB_dbi dbi_rulestate, dbi_wakes; /* rulestate.c */
    MDB_dbi dbi_modelstate;           /* modelstate.c */
    MDB_dbi dbi_waves;                /* wave.c */
    MDB_dbi dbi_dispatch;             /* dispatch.c */
    MDB_dbi dbi_events;               /* eventbox.c */
    bool has_waves, has_dispatch, has_events;
    struct twin_waveform waves[TWIN_WAVEFORMS_MAX];
    unsigned nwaves;
    /* Whether the databases added after the first stores were made exist: a writer creates
     * them, and a read-only opener of a store no writer of this build has opened sees them as
     * empty. */
    bool has_commands, has_rules, has_models;
    bool has_points, has_legacy; /* writers: always points, and legacy only while opening */
    uint32_t schema;             /* as found (a reader of a store not migrated sees 1) */
    bool read_only;
    int writer_fd; /* a writer's flock on <dir>/writer.lock (-1 for readers) */
    /* Every transaction holds `lock` shared; a map resize takes it exclusive, because
     * mdb_env_set_mapsize needs no transaction active in the process. */
    pthread_rwlock_t lock;
    /* One twin_store_write at a time: it guards wtxn and is taken before `lock`. */
    pthread_mutex_t wlock;
    _Atomic size_t map_size;
    size_t max_map_size;
    _Atomic unsigned history_max;
    _Atomic size_t max_doc;     /* max_doc_bytes; 0 = no limit */
    _Atomic uint64_t max_twins; /* 0 = no limit */
    _Atomic uint64_t max_skew;  /* max_clock_skew_ms; 0 = no check */
    _Atomic unsigned cmd_max;   /* commands per device (never 0) */
    _Atomic uint64_t cmd_keep;  /* command_retention_ms; 0 = until pushed out by the cap */
    _Atomic uint64_t seq_restart_after; /* 0 = never */
    bool writemap;              /* MDB_WRITEMAP: the data file is reserved as large as the map */
    /* A map resize failed after LMDB had unmapped the old map (mdb_env_set_mapsize leaves its
     * map pointer dangling then): no transaction may begin, and close must not unmap again. */
    _Atomic bool broken;
    struct twin_txn wtxn; /* reused by every write transaction */
    size_t wzone_chunk;   /* chunk size of wtxn.zone; doubled when a transaction outgrows it */
};

/* Translates an LMDB code once: MDB_NOTFOUND -> -ENOENT, ENOMEM -> -ENOMEM, anything else
 * -> -EIO with "what: <mdb_strerror>" in err. MDB_MAP_FULL also marks txn (if not NULL) so
 * twin_store_write grows the map and runs the transaction again. */
int store__mdb_error(struct twin_txn *txn, int rc, const char *what, char *err);

/* Writes the schema version into "info". Write transactions only. Returns 0, -EIO. */
int store__schema_put(struct twin_txn *txn, uint32_t version, char *err);

/* -EINVAL with a reason unless txn is a write transaction. */
int store__need_write(const struct twin_txn *txn, const char *what, char *err);
/* -EINVAL ("twin id must be 1..TWIN_ID_MAX bytes") unless id has 1..TWIN_ID_MAX bytes. */
int twins__check_id(const char *id, size_t id_len, char *err);

/* Little-endian uint64 of outbox entries, tombstones and the command counter. */
static inline void store__le64_put(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t store__le64_get(const unsigned char *b)
{
    uint64_t v = 0;

    for (int i = 8; i-- > 0;)
        v = v << 8 | b[i];
    return v;
}

/* The twin that a write is about to change: the stored one (*created false), or, when there is
 * none, a new empty one (*created true: disconnected, created = now_ms, version = the tombstone's
 * or 0, so that the caller's version++ continues a deleted twin). A new twin beyond max_twins is
 * -E2BIG: "store holds N twins, limits.max_twins M; <what> for new twin 'x' refused".
 * Returns 0, -E2BIG, -EBADMSG, -ENOMEM, -EIO. Writes nothing. */
int store__twin_load(struct twin_txn *txn, const char *id, size_t id_len, int64_t now_ms,
                     const char *what, struct twin_doc *doc, bool *created, char *err);

/* Removes the tombstone of `id` (a twin created again); none is not an error. Returns 0 or
 * -EIO. */
int store__tomb_clear(struct twin_txn *txn, const char *id, size_t id_len, char *err);

/* twin_put, and for a twin that store__twin_load had to create, the removal of its tombstone.
 * Returns as twin_put, or -EIO. */
static inline int store__twin_save(struct twin_txn *txn, const struct twin_doc *doc, bool created,
                                   char *err)
{
    int rc = twin_put(txn, doc, err);
    return !rc && created ? store__tomb_clear(txn, doc->id, doc->id_len, err) : rc;
}

/* Big-endian 64-bit keys (command.c, rulestate.c): they sort as numbers. */
static inline void store__be64_put(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[7 - i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t store__be64_get(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

/* Deletes every rule record and the wake of twin `id` (rulestate.c). */
int rulestate__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, char *err);
/* Deletes every model record of twin `id` (modelstate.c). */
int modelstate__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, char *err);

/* One database of keyed records, id "\0" name -> 1..max opaque bytes (records.c), as the
 * rule state and the model state keep them. `what` names them in errors. */
struct records {
    MDB_dbi dbi;
    bool present; /* false: a read-only store no writer of this build has opened */
    size_t max;
    const char *what;
    /* the key's two parts: 1..first_max and 1..second_max bytes (0: TWIN_ID_MAX and 64, a
     * twin id then a rule's or model's name; dispatch.c has a dispatch name then a twin id) */
    size_t first_max, second_max;
};
#define RECORDS_KEY_MAX (TWIN_ID_MAX + 1 + 64)
/* The prefix id "\0" of twin id's records into k (RECORDS_KEY_MAX bytes); *n its length. */
int records__key(const struct records *r, unsigned char *k, const char *id, size_t id_len,
                 size_t *n, char *err);
/* As twin_rule_state_get and friends (twins.h), for any such database; records__get also
 * refuses a record over `cap` bytes (-EBADMSG). */
int records__get(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                 const char *name, size_t name_len, void *buf, size_t cap, size_t *len, char *err);
int records__put(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                 const char *name, size_t name_len, const void *buf, size_t len, char *err);
int records__del(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                 const char *name, size_t name_len, char *err);
int records__list(struct twin_txn *txn, const struct records *r, const char *id, size_t id_len,
                  twin_records_cb cb, void *ctx, char *err);
int records__remove_twin(struct twin_txn *txn, const struct records *r, const char *id,
                         size_t id_len, char *err);

#endif
