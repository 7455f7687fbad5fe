/* twins: the twin document on msgpack values and its LMDB store.
 *
 * This library owns what a twin is (the document, how telemetry merges into it, its history)
 * and where it lives (LMDB). It knows nothing of MQTT or rules; it does not print or exit.
 *
 * Errors: functions return 0 or a negative errno-style code, and, where they take
 * `char *err` (TWIN_ERR_LEN bytes), a reason a person can act on.
 *   -EINVAL    bad argument or bad input (wrong type, bad key)
 *   -EBADMSG   malformed msgpack or JSON
 *   -E2BIG     over a size or count limit (payload, keys, the size of a twin, the number of
 *              twins)
 *   -ELOOP     nested deeper than the depth limit
 *   -ENOENT    no such twin
 *   -ENOMEM    out of memory
 *   -ENOSPC    the LMDB map reached store.max_map_size, or the disk is full
 *   -EIO       any other storage error (the LMDB message is in `err`)
 *
 * Threads: values and documents are plain data. A twin_store may be used from several threads:
 * one write transaction at a time (LMDB's rule), any number of read transactions, each
 * transaction used by the thread that began it.
 */
#ifndef TWINS_H
#define TWINS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TWIN_ERR_LEN 256
#define TWIN_ID_MAX 128   /* bytes */
#define TWIN_KEY_MAX 64   /* bytes of one map key in reported/desired */
#define TWIN_PATH_MAX 256 /* bytes of a dotted path such as "vitals.hr" */
#define TWIN_DEPTH_CAP 32 /* msgpack-c's own nesting limit; max_depth may not exceed it */

/* ---------------------------------------------------------------------------------------------
 * Input: pre-scan and decode of outside payloads
 * ------------------------------------------------------------------------------------------ */

/* Limits applied to every outside payload. Defaults: TWIN_LIMITS_DEFAULT. */
struct twin_limits {
    size_t max_payload; /* bytes of the raw payload (msgpack or JSON) */
    unsigned max_depth; /* nesting of maps/arrays; the top-level map is depth 1 */
    unsigned max_keys;  /* entries in one map (and elements in one array) */
};
#define TWIN_LIMITS_DEFAULT                                                                        \
    {                                                                                              \
        65536, 16, 1024                                                                            \
    }

/* Checks that buf[0..len) is exactly one well-formed msgpack object: every length and count
 * fits in the bytes that remain, nesting is at most lim->max_depth, no map or array has more
 * than lim->max_keys entries, no trailing bytes. Allocates nothing.
 * Returns 0, -EBADMSG (malformed, truncated, trailing), -ELOOP (too deep), -E2BIG (too large
 * or too many keys). Any thread. */
int twin_input_scan(const void *buf, size_t len, const struct twin_limits *lim, char *err);

/* Decodes an outside payload into *out. Msgpack, or a JSON object when the first non-blank
 * byte is '{' (converted to msgpack first, with the same limits). Runs twin_input_scan before
 * msgpack-c sees a byte, so nothing can make the decoder allocate without bound.
 * `out` points into `buf` and into `zone`: valid while both live. Caller owns `zone`
 * (msgpack_zone_init / msgpack_zone_destroy). Returns as twin_input_scan. Any thread. */
int twin_input_decode(const void *buf, size_t len, const struct twin_limits *lim,
                      msgpack_zone *zone, msgpack_object *out, char *err);

/* Writes `obj` as JSON text to `out` (appends). Strings are escaped; binary becomes base64;
 * non-finite floats become null; map keys that are not strings are written as their JSON text
 * in quotes. Returns 0 or -ENOMEM. */
int twin_json_write(const msgpack_object *obj, msgpack_sbuffer *out);

/* ---------------------------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------------------------ */

/* Deep equality of two msgpack values (maps compared as unordered sets of keys; an int and a
 * float are equal when numerically equal). */
bool twin_value_equal(const msgpack_object *a, const msgpack_object *b);

/* Looks up a dotted path ("vitals.hr") in a map. Returns the value or NULL. Borrowed. */
const msgpack_object *twin_value_path(const msgpack_object *map, const char *path, size_t len);

/* Looks up key `k` in a map. Returns the value or NULL. */
const msgpack_object *twin_value_get(const msgpack_object *map, const char *k, size_t len);

/* RFC 7396 merge of `patch` into `target`, writing the result to *out (allocated in `zone`;
 * target and patch are not modified). Maps merge recursively, nil deletes the key, anything
 * else replaces. When meta is non-NULL, *meta_out receives `meta` updated in the same shape:
 * every leaf written by the patch gets `ts`, deleted keys lose their entry.
 * When `leaf_cb` is non-NULL it is called for every leaf the patch writes, with its dotted path
 * from the root of target (history uses it). Returns 0 or -ENOMEM. */
typedef void (*twin_leaf_cb)(void *ctx, const char *path, size_t path_len,
                             const msgpack_object *value);
int twin_merge(msgpack_zone *zone, const msgpack_object *target, const msgpack_object *patch,
               const msgpack_object *meta, int64_t ts, msgpack_object *out,
               msgpack_object *meta_out, twin_leaf_cb leaf_cb, void *leaf_ctx);

/* ---------------------------------------------------------------------------------------------
 * The twin document
 * ------------------------------------------------------------------------------------------ */

/* A twin, decoded. Every msgpack_object lives in the zone given to twin_doc_decode (or is
 * set by the caller). Absent maps are MSGPACK_OBJECT_NIL. Stored and published as the msgpack
 * map {id, version, reported, desired, delta?, predicted?, meta: {reported, desired},
 * connected, last_seen, seq, created}. */
struct twin_doc {
    const char *id;
    size_t id_len;
    uint64_t version; /* +1 for every committed change, never reused */
    msgpack_object reported;
    msgpack_object desired;
    msgpack_object delta;
    msgpack_object predicted;
    msgpack_object meta_reported;
    msgpack_object meta_desired;
    bool connected;
    int64_t last_seen; /* hub clock, ms since epoch, of the last message from the device */
    uint64_t seq;      /* last applied telemetry seq; 0 = none yet */
    bool has_seq;
    int64_t created; /* hub clock, ms since epoch */
};

/* Decodes a stored document. `doc` points into buf and zone. Returns 0 or -EBADMSG. */
int twin_doc_decode(const void *buf, size_t len, msgpack_zone *zone, struct twin_doc *doc,
                    char *err);

/* Encodes `doc` as msgpack into `out` (appends). Returns 0 or -ENOMEM. */
int twin_doc_encode(const struct twin_doc *doc, msgpack_sbuffer *out);

/* Reads the version of an encoded document without decoding it. Returns 0 or -EBADMSG. */
int twin_doc_version(const void *buf, size_t len, uint64_t *version);

/* ---------------------------------------------------------------------------------------------
 * The store (LMDB)
 * ------------------------------------------------------------------------------------------ */

enum twin_sync {
    TWIN_SYNC_OS = 0, /* commits don't fsync; call twin_store_sync periodically */
    TWIN_SYNC_COMMIT, /* fsync per commit */
};

struct twin_store_options {
    const char *path; /* directory; created if missing (not when read_only) */
    bool read_only;   /* for twinctl: MDB_RDONLY, works while the hub runs */
    enum twin_sync sync;
    size_t map_size;             /* initial map size, bytes; grown on MDB_MAP_FULL */
    size_t max_map_size;         /* growth stops here: -ENOSPC */
    unsigned history_max_points; /* per (twin, field); oldest dropped first */
    /* Largest encoded twin document, bytes; 0 = no limit. A write that would make a twin
     * larger than this and larger than it already is fails with -E2BIG (see twin_put). */
    size_t max_doc_bytes;
    /* MDB_WRITEMAP: LMDB writes into a writable map instead of write()-ing pages, which is
     * faster per commit but lets any stray write in this process reach the database. The data
     * file is then as large as the map and is reserved on disk (posix_fallocate) when opened
     * and when grown, so a full disk fails the open or the growth with -ENOSPC instead of
     * killing the process with SIGBUS. With TWIN_SYNC_OS it is MDB_NOSYNC | MDB_WRITEMAP;
     * with TWIN_SYNC_COMMIT, synchronous msync per commit (never MDB_MAPASYNC, which is no
     * flush at all on Linux). Ignored when read_only: readers in other processes (twinctl)
     * may open a store that the hub writes with or without it. */
    bool writemap;
    /* Most twins the store may hold; 0 = no limit. Telemetry for a new twin beyond it is
     * refused with -E2BIG (see twin_telemetry_apply); existing twins still update. */
    uint64_t max_twins;
    /* How far a telemetry `ts` may be ahead of the hub clock, ms; 0 = no check. Further ahead
     * is refused with -EINVAL. Old timestamps are always allowed (buffered readings). */
    uint64_t max_clock_skew_ms;
};
#define TWIN_STORE_OPTIONS_DEFAULT                                                                 \
    {                                                                                              \
        NULL, false, TWIN_SYNC_OS, 64u << 20, 4096ull << 20, 600, 256u << 10, false, 100000,       \
            300000                                                                                 \
    }

struct twin_store;
struct twin_txn;

/* Opens (creating if needed) the store. Clears stale reader slots (mdb_reader_check).
 * On success *out is set; caller closes with twin_store_close. Returns 0, -EINVAL (bad options,
 * foreign schema), -ENOENT (read_only and no store), -ENOSPC (writemap: the disk cannot hold the
 * map), -ENOMEM, -EIO. */
int twin_store_open(struct twin_store **out, const struct twin_store_options *opt, char *err);
/* Closes; every transaction must have ended. NULL is allowed. After a failed map resize (see
 * twin_store_write) the LMDB environment is abandoned rather than closed: LMDB has already
 * unmapped it. */
void twin_store_close(struct twin_store *s);
/* Flushes to disk (mdb_env_sync, forced). For TWIN_SYNC_OS, called by the hub on a timer. */
int twin_store_sync(struct twin_store *s, char *err);
/* Changes the history bound for future appends (SIGHUP). Any thread. */
void twin_store_set_history_max(struct twin_store *s, unsigned max_points);
/* Changes max_doc_bytes for future writes (SIGHUP); 0 = no limit. Twins already larger stay as
 * they are and may still be written at or below their current size. Any thread. */
void twin_store_set_max_doc(struct twin_store *s, size_t bytes);
/* Changes max_twins and max_clock_skew_ms for future telemetry (SIGHUP); 0 = no limit, no
 * check. Twins already above a lowered max_twins stay; only new ones are refused. Any thread. */
void twin_store_set_limits(struct twin_store *s, uint64_t max_twins, uint64_t max_clock_skew_ms);
/* Current map size in bytes. */
size_t twin_store_map_size(struct twin_store *s);

/* Runs fn(txn, ctx) in one write transaction and commits it. When LMDB reports MDB_MAP_FULL
 * (in fn or at commit) the transaction is aborted, the map doubled (up to max_map_size) and
 * fn run again from the start: fn must leave nothing outside ctx that a retry would double,
 * and must reset what it records in ctx at its start. A non-zero return from fn aborts the
 * transaction and is returned. On any error nothing is committed.
 * Its own codes: -ENOSPC (map at max_map_size, disk full, or, with writemap, no room on disk to
 * reserve the doubled map), -EIO (LMDB failed; also every call after a map resize that LMDB
 * could not complete, which leaves the store unusable until reopened), -EINVAL (read-only
 * store), -ENOMEM. It never returns -E2BIG or -EBADMSG of its own: those come from fn. */
typedef int (*twin_write_fn)(struct twin_txn *txn, void *ctx);
int twin_store_write(struct twin_store *s, twin_write_fn fn, void *ctx, char *err);

/* Read transactions (any thread; values returned by reads die at twin_store_read_end). */
int twin_store_read_begin(struct twin_store *s, struct twin_txn **out, char *err);
void twin_store_read_end(struct twin_txn *txn);

/* The zone that belongs to a transaction: freed when the transaction ends. */
msgpack_zone *twin_txn_zone(struct twin_txn *txn);

/* Raw encoded document of twin `id`. *buf is valid until the transaction ends or the next
 * write in it. Returns 0, -ENOENT, -EIO. */
int twin_get_raw(struct twin_txn *txn, const char *id, size_t id_len, const void **buf, size_t *len,
                 char *err);

/* Decoded document (in the transaction's zone). Returns 0, -ENOENT, -EBADMSG, -EIO. */
int twin_get(struct twin_txn *txn, const char *id, size_t id_len, struct twin_doc *doc, char *err);

/* Stores `doc` (encoding it), bumping nothing: the caller has set doc->version.
 * Also records (id, version) in the outbox. Write transactions only.
 * Size bound: when max_doc_bytes is set and the encoded document is larger than it, the put is
 * refused with -E2BIG ("twin ecg-0001 would grow to 300123 bytes, above limits.max_twin_size
 * 262144") unless the twin is already stored at that size or larger, so a twin left above a
 * lowered limit can still be written as long as it does not grow. A refused put writes nothing.
 * Returns 0, -EINVAL (read transaction, bad id, a field of the wrong type), -E2BIG, -ENOMEM,
 * -ENOSPC, -EIO. */
int twin_put(struct twin_txn *txn, const struct twin_doc *doc, char *err);

/* ---------------------------------------------------------------------------------------------
 * Telemetry
 * ------------------------------------------------------------------------------------------ */

enum twin_apply_outcome {
    TWIN_APPLIED = 0,
    TWIN_DUPLICATE, /* seq equal to the last applied one: nothing changed */
    TWIN_STALE,     /* seq below the last applied one: nothing changed */
};

struct twin_apply_result {
    enum twin_apply_outcome outcome;
    uint64_t version; /* the twin's version after the call */
    bool created;     /* the twin did not exist before */
};

/* Applies one telemetry map from device `id` (already validated) in a write transaction:
 * checks `seq` (uint; not above the last applied one -> DUPLICATE/STALE, nothing written),
 * takes `ts` (int ms since epoch, device clock; `now_ms` when absent), merges every other key
 * into reported (RFC 7396) with meta timestamps, appends numeric leaves to history, sets
 * last_seen = now_ms, bumps version, stores the twin and records it in the outbox.
 * History follows reported: when the message deletes a key or replaces a value so that a
 * numeric leaf is gone (nil, a map replaced by a scalar, a number by a string or a map), that
 * leaf's history series is deleted in the same transaction. A number replaced by a number keeps
 * its series.
 * Map keys must be strings of 1..TWIN_KEY_MAX bytes without '.' or control characters; `seq`
 * and `ts` must have the types above, and `ts` may be at most max_clock_skew_ms ahead of
 * now_ms (any amount behind it).
 * Returns:
 *   0        see res->outcome
 *   -EINVAL  the message is bad (reason in err), including a `ts` too far ahead ("ts
 *            1795290000000 is 3600000 ms ahead of the hub clock; limits.max_clock_skew is
 *            300000 ms"); nothing written
 *   -E2BIG   the message is well formed but would make the twin larger than max_doc_bytes
 *            (see twin_put), or would create a twin while the store holds max_twins or more
 *            ("store holds 100000 twins, limits.max_twins 100000; telemetry for new twin 'x'
 *            refused"); reason in err, nothing written. Like -EINVAL, a rejection of this
 *            input, not a storage failure: the caller should count it and ack the message.
 *   -EBADMSG the twin stored for `id` is damaged (not the message's fault)
 *   -ENOMEM, -ENOSPC, -EIO  storage or memory failures (MDB_MAP_FULL surfaces as -EIO inside
 *            fn and is handled by twin_store_write, which returns -ENOSPC when it cannot grow).
 * With -EINVAL and -E2BIG the transaction is untouched and may still be committed. */
int twin_telemetry_apply(struct twin_txn *txn, const char *id, size_t id_len,
                         const msgpack_object *telemetry, int64_t now_ms,
                         struct twin_apply_result *res, char *err);

/* ---------------------------------------------------------------------------------------------
 * History
 * ------------------------------------------------------------------------------------------ */

/* Appends a point to the history of (id, path). Oldest points beyond history_max_points are
 * dropped. Write transactions only. (Telemetry deletes the series of a leaf it removes from
 * reported; see twin_telemetry_apply.) */
int twin_history_append(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                        size_t path_len, int64_t ts, double value, char *err);

/* Calls cb for every point of (id, path) with ts >= since_ms, oldest first. A non-zero return
 * from cb stops the walk and is returned. */
typedef int (*twin_history_cb)(void *ctx, int64_t ts, double value);
int twin_history_read(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                      size_t path_len, int64_t since_ms, twin_history_cb cb, void *ctx, char *err);

/* ---------------------------------------------------------------------------------------------
 * Listing, outbox, statistics
 * ------------------------------------------------------------------------------------------ */

/* Calls cb for every twin whose id starts with prefix (NULL or "" for all), in id order.
 * A non-zero return from cb stops the walk and is returned. */
typedef int (*twin_list_cb)(void *ctx, const char *id, size_t id_len, const void *doc, size_t len);
int twin_list(struct twin_txn *txn, const char *prefix, size_t prefix_len, twin_list_cb cb,
              void *ctx, char *err);

/* The outbox holds, per twin, the latest committed version whose state is not yet known to
 * be published. twin_put records into it; the hub deletes what the broker acknowledged, and
 * after a restart publishes whatever is left. */
typedef int (*twin_outbox_cb)(void *ctx, const char *id, size_t id_len, uint64_t version);
int twin_outbox_list(struct twin_txn *txn, twin_outbox_cb cb, void *ctx, char *err);
/* Removes the outbox entry of `id` if its version is <= `version`. Write transactions only. */
int twin_outbox_done(struct twin_txn *txn, const char *id, size_t id_len, uint64_t version,
                     char *err);

struct twin_stats {
    uint64_t twins;
    uint64_t history_series; /* (twin, field) pairs */
    uint64_t history_points;
    uint64_t outbox;
    size_t map_size;   /* bytes */
    size_t used_bytes; /* pages in use x page size */
    uint64_t last_txn;
};
int twin_store_stats(struct twin_txn *txn, struct twin_stats *st, char *err);

#endif
