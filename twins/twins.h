/* twins: the twin document on msgpack values and its LMDB store.
 *
 * This library owns what a twin is (the document, how telemetry and desired state merge into
 * it, its delta, its history, its queued commands) and where it lives (LMDB). It knows nothing
 * of MQTT or rules; it does not print or exit.
 *
 * Errors: functions return 0 or a negative errno-style code, and, where they take
 * `char *err` (TWIN_ERR_LEN bytes), a reason a person can act on.
 *   -EINVAL    bad argument or bad input (wrong type, bad key)
 *   -EBADMSG   malformed msgpack or JSON
 *   -E2BIG     over a size or count limit (payload, keys, the size of a twin, the number of
 *              twins)
 *   -ELOOP     nested deeper than the depth limit
 *   -ENOENT    no such twin (or command)
 *   -EBUSY     version conflict: the twin is not at the version the caller expected (HTTP 409)
 *   -EPERM     a command state change its state machine does not allow
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
/* The latest time a twin holds, ms since 1970 (2^48 - 1: the year 10889); telemetry, batches,
 * SenML and imports with a later one are refused before anything is written. */
#define TWIN_TS_MAX ((int64_t)((1ull << 48) - 1))
#define TWIN_DEPTH_CAP 32 /* msgpack-c's own nesting limit; max_depth may not exceed it */
/* Expected version meaning "any": no optimistic locking (twin_desired_apply, twin_delete). */
#define TWIN_VERSION_ANY UINT64_MAX

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

/* Decodes a SenML (RFC 8428) JSON pack into the batch form twin_telemetry_apply takes:
 * {"batch": [{"ts": ms, <path>: value}, ...]}, one reading per record. Base fields (bn, bt, bv,
 * bver) carry over; the name is bn + n, and what follows its last ':' becomes a path under
 * reported ('/' and '.' separate levels: "3303/0/5700" -> 3303.0.5700); the time is bt + t
 * seconds, relative to now_ms below 2^28 s; the value is v (+ bv), vs, vb or vd. Units, sums and
 * update times are not kept; a field ending in '_' is refused. Within lim like
 * twin_input_decode; *out points into zone. Returns 0, -EINVAL (reason: "record 3: no value (v,
 * vs, vb or vd)"), -EBADMSG (not JSON), -ELOOP, -E2BIG, -ENOMEM. Any thread. */
int twin_senml_decode(const void *buf, size_t len, const struct twin_limits *lim, int64_t now_ms,
                      msgpack_zone *zone, msgpack_object *out, char *err);

/* Whether buf[0..n) is valid UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), as json.c reads strings. Any thread. */
bool twin_utf8_valid(const void *buf, size_t n);

/* Writes `obj` as JSON text to `out` (appends). Strings are escaped; binary becomes base64;
 * non-finite floats become null; map keys that are not strings are written as their JSON text
 * in quotes. Returns 0 or -ENOMEM. */
int twin_json_write(const msgpack_object *obj, msgpack_sbuffer *out);

/* ---------------------------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------------------------ */

/* Deep equality of two msgpack values (maps compared as unordered sets of keys; an int and a
 * float are equal when numerically equal; a NaN equals a NaN, since this asks whether two
 * stored values are the same, so that a NaN in desired and reported makes no delta). */
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

/* Gaps in a device's telemetry `seq`: messages the hub never received (lost upstream, at the
 * broker or on the way; see twin_telemetry_apply). Stored as the map
 * {count, missed, from, to, ts}, absent while count is 0. */
struct twin_gaps {
    uint64_t count;  /* gaps seen */
    uint64_t missed; /* seq numbers missing in them, summed */
    uint64_t from;   /* the last gap: first and last missing seq ... */
    uint64_t to;
    int64_t ts; /* ... and when it was seen (hub clock, ms since epoch) */
};

/* Telemetry dropped as stale: a `seq` not above the last applied one of the same boot (see
 * twin_telemetry_apply). Stored as the map {count, run, seq, ts}, absent while count is 0. */
struct twin_stale {
    uint64_t count; /* messages dropped as stale */
    uint64_t run;   /* of them, the last ones in a row, each seq one above the one before */
    uint64_t seq;   /* the last dropped seq ... */
    int64_t ts;     /* ... and when (hub clock, ms since epoch) */
};
#define TWIN_BOOT_MAX 32 /* bytes of a string boot id */

/* A twin, decoded. Every msgpack_object lives in the zone given to twin_doc_decode (or is
 * set by the caller). Absent maps are MSGPACK_OBJECT_NIL. Stored and published as the msgpack
 * map {id, version, reported, desired, delta?, predicted?, meta: {reported, desired},
 * connected, last_seen, seq?, boot?, seq_restart?, gaps?, stale?, created}. */
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
    msgpack_object boot; /* the device's boot id as it last sent it (int or string), or NIL */
    bool seq_restart;    /* the device came online again: its next seq starts a new order */
    struct twin_gaps gaps;
    struct twin_stale stale;
    int64_t created; /* hub clock, ms since epoch */
};

/* Decodes a stored document. `doc` points into buf and zone. Returns 0 or -EBADMSG. */
int twin_doc_decode(const void *buf, size_t len, msgpack_zone *zone, struct twin_doc *doc,
                    char *err);

/* The same, unpacking only the sections in `parts` (TWIN_PART_*; the scalars id, version,
 * connected, last_seen, seq, created, boot, gaps, stale always): the others stay NIL. For
 * readers of many twins that look at a few paths (query/). A damage in a section skipped is
 * not seen. Returns 0, -EBADMSG, -ENOMEM. */
#define TWIN_PART_REPORTED 1u
#define TWIN_PART_DESIRED 2u
#define TWIN_PART_DELTA 4u
#define TWIN_PART_PREDICTED 8u
#define TWIN_PART_META 16u /* meta.reported and meta.desired (age()) */
#define TWIN_PART_ALL 31u
int twin_doc_decode_parts(const void *buf, size_t len, unsigned parts, msgpack_zone *zone,
                          struct twin_doc *doc, char *err);

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

/* An array leaf kept as a signal (wave.c): its samples at `rate` Hz, the last `seconds`. */
struct twin_waveform {
    char path[TWIN_PATH_MAX + 1]; /* under reported: "ecg" */
    double rate;                  /* samples per second */
    unsigned seconds;             /* kept per twin, back from the newest sample */
};
#define TWIN_WAVEFORMS_MAX 8

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
    /* Commands stored per device, in any state; 0 = TWIN_COMMANDS_MAX_DEFAULT (there is no
     * "unlimited"). See twin_command_add for what happens at the cap. */
    unsigned commands_max;
    /* How long a command in a final state (succeeded, failed, expired) is kept, ms, before
     * twin_command_expire drops it; 0 = kept until the per-device cap pushes it out. */
    uint64_t command_retention_ms;
    /* Stale telemetry messages in a row, each seq one above the one before, that are taken as
     * a device that restarted without a `boot` (see twin_telemetry_apply); 0 = never. */
    uint64_t seq_restart_after;
    /* Array leaves kept as waveforms (at most TWIN_WAVEFORMS_MAX; copied at open). */
    const struct twin_waveform *waveforms;
    unsigned nwaveforms;
};
#define TWIN_COMMANDS_MAX_DEFAULT 100
#define TWIN_STORE_OPTIONS_DEFAULT                                                                 \
    {                                                                                              \
        NULL, false, TWIN_SYNC_OS, 64u << 20, 4096ull << 20, 600, 256u << 10, false, 100000,       \
            300000, TWIN_COMMANDS_MAX_DEFAULT, 86400000, 32, NULL, 0                               \
    }

struct twin_store;
struct twin_txn;

/* Opens (creating if needed) the store. Clears stale reader slots (mdb_reader_check).
 * A writer (!read_only) holds an exclusive lock on <dir>/writer.lock until it closes: one
 * writing process per store, any number of readers.
 * On success *out is set; caller closes with twin_store_close. Returns 0, -EINVAL (bad options,
 * foreign schema), -ENOENT (read_only and no store), -EBUSY (another process has it open for
 * writing), -ENOSPC (writemap: the disk cannot hold the map), -ENOMEM, -EIO. */
int twin_store_open(struct twin_store **out, const struct twin_store_options *opt, char *err);
/* Closes; every transaction must have ended. NULL is allowed. After a failed map resize (see
 * twin_store_write) the LMDB environment is abandoned rather than closed: LMDB has already
 * unmapped it. */
void twin_store_close(struct twin_store *s);
/* Flushes to disk (mdb_env_sync, forced). For TWIN_SYNC_OS, called by the hub on a timer. */
int twin_store_sync(struct twin_store *s, char *err);
/* Changes seq_restart_after for future messages (SIGHUP), and reads it. Any thread. */
void twin_store_set_seq_restart(struct twin_store *s, uint64_t after);
uint64_t twin_store_seq_restart(struct twin_store *s);
/* Changes the history bound for future appends (SIGHUP). Any thread. */
void twin_store_set_history_max(struct twin_store *s, unsigned max_points);
/* Changes max_doc_bytes for future writes (SIGHUP); 0 = no limit. Twins already larger stay as
 * they are and may still be written at or below their current size. Any thread. */
void twin_store_set_max_doc(struct twin_store *s, size_t bytes);
/* Changes max_twins and max_clock_skew_ms for future telemetry (SIGHUP); 0 = no limit, no
 * check. Twins already above a lowered max_twins stay; only new ones are refused. Any thread. */
void twin_store_set_limits(struct twin_store *s, uint64_t max_twins, uint64_t max_clock_skew_ms);
/* Changes commands_max (0 = TWIN_COMMANDS_MAX_DEFAULT) and command_retention_ms for future calls
 * (SIGHUP). A device above a lowered cap loses its oldest commands at its next twin_command_add;
 * a command already final keeps the drop time it was given. Any thread. */
void twin_store_set_command_limits(struct twin_store *s, unsigned commands_max,
                                   uint64_t command_retention_ms);
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

/* Stores `doc` (encoding it), bumping nothing: the caller has set doc->version; the delta is
 * stored as given (twin_delta_compute). Also records (id, version) in the outbox. Write
 * transactions only.
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
    TWIN_STALE,     /* seq below the last applied one: dropped, counted in doc.stale */
};

/* Why a message started a new seq order (twin_apply_result.restart). */
enum twin_restart {
    TWIN_RESTART_NONE = 0,
    TWIN_RESTART_BOOT,      /* its `boot` differs from the twin's: the device restarted */
    TWIN_RESTART_ONLINE,    /* the device came online again since its last telemetry */
    TWIN_RESTART_STALE_RUN, /* seq_restart_after stale messages in a row, counting up */
};

struct twin_apply_result {
    enum twin_apply_outcome outcome;
    uint64_t version;    /* the twin's version after the call */
    bool created;        /* the twin did not exist before */
    bool delta_changed;  /* doc.delta differs from what it was (see twin_desired_apply) */
    uint64_t gap;        /* TWIN_APPLIED: seq numbers skipped by this message (doc.gaps.from
                            ..to), 0 when it follows the last applied seq or there is none */
    enum twin_restart restart; /* TWIN_APPLIED: why this seq began a new order, if it did */
    struct twin_doc doc; /* TWIN_APPLIED, TWIN_STALE: the twin as stored; points into the
                            transaction's zone and the caller's id: valid until the transaction
                            ends */
};

/* Applies one telemetry map from device `id` (already validated) in a write transaction:
 * checks `seq` within its order (uint; equal to the last applied one -> DUPLICATE, nothing
 * written; below it -> STALE: the message is dropped, but the twin counts it in doc.stale, a
 * committed change (version + 1, last_seen); more than one above it -> a gap: res->gap and
 * doc.gaps count the seq numbers skipped, which the hub never received. A device that counts
 * by one shows every message lost upstream this way; one that counts otherwise shows gaps that
 * mean nothing. A new twin, or one without a seq yet, has no gap).
 * A seq order ends when the device restarts, and the message that begins the next one is
 * applied whatever its seq, without a gap (res->restart says why): it carries a `boot` (int or
 * string of 1..TWIN_BOOT_MAX bytes, stored in doc.boot) other than the twin's; or the device
 * came online since its last telemetry (doc.seq_restart, set by twin_presence_apply); or it is
 * the seq_restart_after-th stale message in a row, each seq one above the one before (a device
 * that restarted and said nothing: after that many, it is not a redelivery; 0 never),
 * takes `ts` (int ms since epoch, device clock; `now_ms` when absent), merges every other key
 * into reported (RFC 7396) with meta timestamps, appends numeric leaves to history, sets
 * last_seen = now_ms, recomputes the delta (only when desired is not empty; see
 * twin_delta_compute), bumps version, stores the twin and records it in the outbox. A twin
 * created here continues the version of a deleted one (see twin_delete).
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
 * Desired state and delta
 *
 * The delta follows AWS IoT Device Shadow: walk desired; a leaf (anything but a map; arrays are
 * leaves, compared and copied whole) that is absent from reported or differs from it
 * (twin_value_equal) is in the delta at its path from the root; maps recurse. Where desired has
 * a map and reported has something else or nothing, the delta holds the whole desired subtree.
 * An empty map in desired has no leaves and asks for nothing. Desired is never cleared when
 * reported catches up: the delta just empties. The stored document carries the delta (absent
 * when empty), recomputed in the same transaction by every change of desired and of reported.
 * ------------------------------------------------------------------------------------------ */

/* The delta of `desired` against `reported` (each a map or nil) into *out: a map in `zone`
 * holding at least one leaf, or MSGPACK_OBJECT_NIL when they agree. *out shares values with
 * `desired`. Returns 0, -EINVAL (not maps), -ENOMEM. Any thread. */
int twin_delta_compute(msgpack_zone *zone, const msgpack_object *desired,
                       const msgpack_object *reported, msgpack_object *out);

/* The stored delta of twin `id` and the twin's version: what the hub publishes retained on
 * devices/{id}/desired as {version, delta}, or an empty message when *delta is NIL. Both live in
 * the transaction's zone. Returns 0, -EINVAL, -ENOENT, -EBADMSG, -EIO. */
int twin_delta_get(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *version,
                   msgpack_object *delta, char *err);

struct twin_desired_result {
    uint64_t version;    /* the twin's version after the call */
    bool created;        /* the twin did not exist before */
    bool delta_changed;  /* publish devices/{id}/desired again */
    struct twin_doc doc; /* the twin as stored; points into the transaction's zone and the
                            caller's id: valid until the transaction ends */
};

/* Merges `patch` (a map, RFC 7396: maps merge, nil deletes, anything else replaces) into the
 * desired state of twin `id` (already validated) in a write transaction, with meta.desired
 * timestamps (now_ms), recomputes the delta, bumps the version, stores the twin and records it
 * in the outbox. Every accepted call bumps the version, even a patch that changes nothing (as
 * AWS does): the caller's reply names a version that is committed.
 * A missing twin is created (as AWS and Ditto do: a service may prepare a device before it
 * first connects), disconnected, last_seen 0, subject to max_twins; it continues the version of
 * a deleted one.
 * Optimistic locking: unless `expected_version` is TWIN_VERSION_ANY, the call proceeds only
 * when the twin is at that version; a missing twin counts as version 0.
 * Keys are checked as for telemetry (strings of 1..TWIN_KEY_MAX bytes, no '.', no control
 * bytes), nesting at most as deep as telemetry may go, no msgpack ext values.
 * Returns:
 *   0        see *res
 *   -EINVAL  bad patch (reason in err: not a map, bad key, too deep, ext)
 *   -EBUSY   the twin is not at expected_version ("twin 'x' is at version 7, not 5")
 *   -E2BIG   the twin would grow beyond max_doc_bytes, or a new twin beyond max_twins
 *   -EBADMSG the stored twin is damaged
 *   -ENOMEM, -ENOSPC, -EIO  as twin_telemetry_apply
 * Every error leaves the transaction untouched: it may still be committed. */
int twin_desired_apply(struct twin_txn *txn, const char *id, size_t id_len,
                       const msgpack_object *patch, uint64_t expected_version, int64_t now_ms,
                       struct twin_desired_result *res, char *err);

/* ---------------------------------------------------------------------------------------------
 * Shadow updates (shadow.c): reported and desired in one change, as AWS IoT Device Shadow
 * updates them
 * ------------------------------------------------------------------------------------------ */

struct twin_shadow_result {
    uint64_t version;       /* the twin's version after the call */
    bool created;           /* the twin did not exist before */
    bool existed;           /* !created */
    bool delta_changed;     /* publish devices/{id}/desired again */
    struct twin_doc before; /* the twin as it was (when it existed; a new one's empty document
                               otherwise), in the transaction's zone */
    struct twin_doc doc;    /* the twin as stored; valid until the transaction ends */
};

/* Merges `reported` and `desired` (each a map, RFC 7396, or NULL: not written) into twin `id`
 * (already validated) in a write transaction, as one committed change: meta timestamps now_ms
 * on every leaf written, numeric leaves written under reported appended to history at now_ms
 * and the series of those taken out deleted (as telemetry does), last_seen = now_ms when
 * reported is written, the delta recomputed, version + 1, stored, in the outbox. reported has
 * no reserved keys here (seq, ts and boot are leaves like any other). A missing twin is created
 * (within max_twins, continuing a deleted one's version).
 * Optimistic locking: unless `expected_version` is TWIN_VERSION_ANY the call proceeds only when
 * the twin is at that version, a missing twin counting as its tombstone's version (0 when it
 * never existed), so a client that saw a deletion may go on from its version.
 * Keys are checked as for telemetry and desired state.
 * Returns 0, -EINVAL (bad patch, reason in err), -EBUSY (version conflict), -E2BIG (max_doc_bytes
 * or max_twins), -EBADMSG (the stored twin is damaged), -ENOMEM, -ENOSPC, -EIO. Every rejection
 * (-EINVAL, -EBUSY, -E2BIG) leaves the transaction untouched. */
int twin_shadow_apply(struct twin_txn *txn, const char *id, size_t id_len,
                      const msgpack_object *reported, const msgpack_object *desired,
                      uint64_t expected_version, int64_t now_ms, struct twin_shadow_result *res,
                      char *err);

/* ---------------------------------------------------------------------------------------------
 * Presence
 * ------------------------------------------------------------------------------------------ */

struct twin_presence_result {
    uint64_t version; /* the twin's version after the call */
    bool created;     /* the twin did not exist before */
    bool changed;     /* `connected` changed (or the twin was created): worth an event */
};

/* Records that device `id` went online or offline (devices/{id}/status) in a write
 * transaction: sets connected and last_seen = now_ms, bumps the version (a committed change of
 * the document, published like any other), stores the twin and records it in the outbox.
 * Nothing else is recomputed. `online` for a missing twin creates it (subject to max_twins,
 * continuing a deleted twin's version); `offline` for a missing twin is -ENOENT, so the
 * retained will of a deleted twin's device does not bring the twin back.
 * Returns 0, -EINVAL (bad arguments), -ENOENT, -E2BIG (max_twins, or max_doc_bytes as for
 * twin_put), -EBADMSG (stored twin damaged), -ENOMEM, -ENOSPC, -EIO. Errors leave the
 * transaction untouched. */
int twin_presence_apply(struct twin_txn *txn, const char *id, size_t id_len, bool online,
                        int64_t now_ms, struct twin_presence_result *res, char *err);

/* ---------------------------------------------------------------------------------------------
 * Deletion
 * ------------------------------------------------------------------------------------------ */

struct twin_delete_result {
    uint64_t version;        /* the deleted twin's last version, kept in its tombstone */
    uint64_t history_series; /* series removed */
    uint64_t commands;       /* commands removed, in any state (no events for them) */
};

/* Deletes twin `id` in a write transaction: its document, every history series, every stored
 * command (and their deadlines). It keeps a tombstone (id -> last version) so that a twin
 * created later under the same id continues at that version + 1, and nobody mistakes a new
 * twin for an old one; the tombstone goes when the twin is created again.
 * The outbox keeps an entry (id, last version): the deletion is a committed change still to be
 * published (an empty retained twins/{id}/state). A publisher that finds no twin for an outbox
 * entry asks twin_tombstone_get, publishes the deletion, then calls twin_outbox_done as usual.
 * Optimistic locking as twin_desired_apply (TWIN_VERSION_ANY: none).
 * Returns 0, -EINVAL (bad arguments), -ENOENT (no such twin), -EBUSY (version conflict; nothing
 * written), -EBADMSG, -ENOMEM, -ENOSPC, -EIO. */
int twin_delete(struct twin_txn *txn, const char *id, size_t id_len, uint64_t expected_version,
                struct twin_delete_result *res, char *err);

/* The last version of deleted twin `id`. Returns 0, -ENOENT (no tombstone: never deleted, or
 * created again since), -EINVAL, -EBADMSG, -EIO. */
int twin_tombstone_get(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *version,
                       char *err);

/* ---------------------------------------------------------------------------------------------
 * Command queue
 *
 * Commands live in LMDB until they are dropped, per device in creation order. States:
 *
 *   queued -> sent -> delivered -> succeeded | failed      (any forward step may be skipped)
 *   queued | sent | delivered -> expired                   (deadline passed, or pushed out)
 *
 * succeeded, failed and expired are final. A command's id is 16 lowercase hex digits, unique in
 * the store and never reused (a store-wide counter), e.g. "000000000000002a".
 * Every state change is reported through a twin_command_cb, called inside the transaction:
 * what it records must be reset when twin_store_write runs fn again (MDB_MAP_FULL), and is
 * true only once the transaction commits; publish events after the commit.
 * ------------------------------------------------------------------------------------------ */

#define TWIN_CMD_ID_LEN 16      /* characters of a command id */
#define TWIN_CMD_NAME_MAX 64    /* bytes of a command name */
#define TWIN_CMD_ARGS_MAX 16384 /* encoded bytes of a command's args, and of an ack's result */

enum twin_command_state {
    TWIN_CMD_NONE = 0, /* as `from`: the command did not exist before */
    TWIN_CMD_QUEUED,
    TWIN_CMD_SENT,
    TWIN_CMD_DELIVERED,
    TWIN_CMD_SUCCEEDED,
    TWIN_CMD_FAILED,
    TWIN_CMD_EXPIRED,
};

/* "queued", "sent", ... ("none" for TWIN_CMD_NONE, "unknown" otherwise). */
const char *twin_command_state_name(enum twin_command_state st);
/* Parses a state name (as in an ack's `status`). Returns 0 or -EINVAL. */
int twin_command_state_parse(const char *s, size_t len, enum twin_command_state *out);
/* True for succeeded, failed, expired. */
bool twin_command_state_final(enum twin_command_state st);

/* A stored command. Strings and values live in the transaction's zone (or point into
 * arguments given to the call that reports it): valid until the transaction ends. Stored as
 * the msgpack map {id, cmd, args, state, created, expires, updated, attempts, result?, drop?}. */
struct twin_command {
    const char *twin_id;
    size_t twin_id_len;
    char id[TWIN_CMD_ID_LEN + 1]; /* NUL-terminated */
    const char *cmd;
    size_t cmd_len;
    msgpack_object args; /* NIL when none */
    enum twin_command_state state;
    int64_t created;       /* hub clock, ms */
    int64_t expires;       /* deadline, hub clock, ms; 0 = none */
    int64_t updated;       /* last state change (or send) */
    uint32_t attempts;     /* times marked sent */
    msgpack_object result; /* from the device's ack; NIL when none */
    int64_t drop;          /* final commands: when twin_command_expire drops it; 0 = not timed */
};

/* Called for each state change (from -> cmd->state; from is TWIN_CMD_NONE for a new command)
 * and, by twin_command_list, for each command (from == cmd->state). A non-zero return stops
 * the call, which returns it; the transaction is then half done and must be aborted (return the
 * code from the twin_store_write function). */
typedef int (*twin_command_cb)(void *ctx, const struct twin_command *cmd,
                               enum twin_command_state from);

/* Queues command `cmd` (1..TWIN_CMD_NAME_MAX bytes, no control bytes) with `args` (NULL for
 * none; any value up to TWIN_CMD_ARGS_MAX encoded bytes, nested as deep as telemetry may go)
 * for existing twin `id`, in state queued, with deadline `expires_ms` (hub clock; 0 = none,
 * otherwise after now_ms). Does not change the twin's document or version.
 * Per-device cap (commands_max, counting every stored command): when the device is at it, room
 * is made first by dropping its oldest final command (no event: it is history), and when it
 * has none by expiring its oldest pending command, which is dropped too and reported through cb
 * (from its state to expired). Then the new command is reported (from TWIN_CMD_NONE).
 * *out (may be NULL) receives the new command.
 * Returns 0, -EINVAL (bad name, args, deadline, now_ms < 0), -E2BIG (args too large), -ENOENT
 * (no such twin), a non-zero return of cb, -EBADMSG (the command counter is damaged), -ENOMEM,
 * -ENOSPC, -EIO. A rejected command (-EINVAL, -E2BIG, -ENOENT) leaves the transaction
 * untouched. */
int twin_command_add(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd,
                     size_t cmd_len, const msgpack_object *args, int64_t expires_ms, int64_t now_ms,
                     struct twin_command *out, twin_command_cb cb, void *ctx, char *err);

/* Records that command `cmd_id` of twin `id` was handed to the publisher: queued -> sent
 * (reported), or sent -> sent for a re-send (not a state change: not reported). Either way
 * attempts goes up by one and updated = now_ms. Call it in the transaction that decides to
 * send, so the command is published only after that commit.
 * Returns 0, -ENOENT (no such command for this twin), -EPERM (delivered or final: "command
 * 000000000000002a is delivered; it is not sent again"), a non-zero return of cb, -EINVAL,
 * -EBADMSG, -ENOMEM, -ENOSPC, -EIO. Errors but cb's leave the transaction untouched. */
int twin_command_mark_sent(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                           size_t cmd_id_len, int64_t now_ms, struct twin_command *out,
                           twin_command_cb cb, void *ctx, char *err);

/* Applies a device's ack {id, status, result?} for command `cmd_id` of twin `id`: `status` is
 * delivered, succeeded or failed; `result` (NULL for none; at most TWIN_CMD_ARGS_MAX encoded
 * bytes, nested as deep as args may be) is stored when given, replacing an earlier one. Any
 * forward step is allowed (queued or sent ->
 * succeeded, ...). An ack repeating the current state is a duplicate: 0, nothing written,
 * cb not called. A step back or out of a final state (succeeded -> delivered, failed ->
 * succeeded, expired -> anything) is -EPERM with both states in err.
 * *out (may be NULL) receives the command as it is after the call.
 * Returns 0, -EINVAL (status not an ack status, no command id, result too deep), -E2BIG
 * (result too large), -ENOENT (no such command for this twin, including any id that is not 16
 * lowercase hex digits), -EPERM, a non-zero return of cb, -EBADMSG, -ENOMEM, -ENOSPC, -EIO.
 * Errors but cb's leave the transaction untouched. */
int twin_command_update(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                        size_t cmd_id_len, enum twin_command_state status,
                        const msgpack_object *result, int64_t now_ms, struct twin_command *out,
                        twin_command_cb cb, void *ctx, char *err);

/* Reads command `cmd_id` of twin `id` into *out (in the transaction's zone). Any transaction.
 * Returns 0, -ENOENT (as twin_command_update), -EINVAL, -EBADMSG, -EIO. */
int twin_command_get(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                     size_t cmd_id_len, struct twin_command *out, char *err);

/* Calls cb for every stored command of twin `id`, oldest first (from == cmd->state): for
 * twinctl, and for re-sending the queued and sent ones when the device comes online. Any
 * transaction. A damaged record is skipped and the walk goes on; the call then returns
 * -EBADMSG naming the first one. Returns 0, cb's non-zero return, -EINVAL, -EBADMSG, -EIO. */
int twin_command_list(struct twin_txn *txn, const char *id, size_t id_len, twin_command_cb cb,
                      void *ctx, char *err);

struct twin_expire_result {
    uint64_t expired; /* commands moved to expired (each reported) */
    uint64_t dropped; /* final commands dropped after command_retention_ms (not reported) */
    bool more;        /* stopped at `max` with more due: call again */
};

/* The timer pass, in a write transaction, over every device: commands whose deadline is at or
 * before now_ms, in any pending state, move to expired (reported through cb); final commands
 * whose retention has run out are dropped. Earliest deadline first, at most `max` deadline
 * entries per call (0 = no limit), so a backlog can be worked off in bounded transactions.
 * Costs one index lookup when nothing is due. A deadline entry whose command is gone or damaged
 * is removed and skipped, so nothing can stall the pass.
 * Returns 0, cb's non-zero return, -EINVAL, -ENOMEM, -ENOSPC, -EIO. */
int twin_command_expire(struct twin_txn *txn, int64_t now_ms, unsigned max, twin_command_cb cb,
                        void *ctx, struct twin_expire_result *res, char *err);

/* The earliest deadline or drop time of any stored command (when the hub's timer should run
 * twin_command_expire next). Returns 0, -ENOENT (none), -EINVAL, -EIO. Any transaction. */
int twin_command_next_deadline(struct twin_txn *txn, int64_t *at_ms, char *err);

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

/* Calls cb for every history series of twin `id`, in path order (path valid during the call).
 * A non-zero return from cb stops the walk and is returned. Any transaction. */
typedef int (*twin_series_cb)(void *ctx, const char *path, size_t path_len);
int twin_history_series(struct twin_txn *txn, const char *id, size_t id_len, twin_series_cb cb,
                        void *ctx, char *err);

/* Waveforms (wave.c): every chunk of samples of (id, path) that reaches into [from_ms, to_ms],
 * in order of their first samples: cb gets the time of its first sample, the rate (Hz) and the samples (valid
 * during the call). A non-zero return from cb stops the walk and is returned. Any transaction.
 * Returns 0, -EINVAL, -ENOMEM, -EIO. */
typedef int (*twin_wave_cb)(void *ctx, int64_t ts, double rate, const float *samples, size_t n);
int twin_wave_read(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                   size_t path_len, int64_t from_ms, int64_t to_ms, twin_wave_cb cb, void *ctx,
                   char *err);

/* Sets predicted.<model> of existing twin `id` to `value` (any msgpack value; borrowed for the
 * call), replacing an earlier one, as a committed change: version +1, stored, outbox. *out
 * (may be NULL) receives the twin as stored, valid as twin_apply_result's doc. Returns 0, -ENOENT
 * (no such twin), -EINVAL (bad model name: 1..TWIN_KEY_MAX bytes, no '.'), -E2BIG (the twin would
 * grow past max_doc_bytes), -EBADMSG, -ENOMEM, -ENOSPC, -EIO. Errors leave the transaction
 * untouched. */
int twin_predicted_set(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                       size_t model_len, const msgpack_object *value, struct twin_doc *out,
                       char *err);

/* ---------------------------------------------------------------------------------------------
 * Rule state: the rules engine's records per (twin, rule), opaque here, and each twin's wake
 * time (when its rules must run again with no message arriving). Written in the transaction
 * of the change that caused them; twin_delete removes a twin's.
 * ------------------------------------------------------------------------------------------ */

#define TWIN_RULE_NAME_MAX 64  /* bytes of a rule name */
#define TWIN_RULE_STATE_MAX 64 /* bytes of one record */

/* Reads the record of (id, rule) into buf (TWIN_RULE_STATE_MAX bytes); *len its size.
 * Returns 0, -ENOENT, -EINVAL (bad id or name), -EBADMSG, -EIO. */
int twin_rule_state_get(struct twin_txn *txn, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, void *buf, size_t *len, char *err);
/* Writes (replaces) the record of (id, rule): 1..TWIN_RULE_STATE_MAX bytes. Write
 * transactions. Returns 0, -EINVAL, -EIO. */
int twin_rule_state_put(struct twin_txn *txn, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, const void *buf, size_t len, char *err);
/* Deletes the record of (id, rule). Returns 0, -ENOENT, -EINVAL, -EIO. */
int twin_rule_state_del(struct twin_txn *txn, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, char *err);
/* Calls cb for every record of twin `id` (NULL: of every twin, in id order). A non-zero return
 * of cb stops the walk and is returned; cb must not write to the store. */
typedef int (*twin_records_cb)(void *ctx, const char *id, size_t id_len, const char *name,
                               size_t name_len, const void *buf, size_t len);
int twin_rule_state_list(struct twin_txn *txn, const char *id, size_t id_len, twin_records_cb cb,
                         void *ctx, char *err);
/* The wake time of twin `id` (hub ms); INT64_MAX when it has none. Returns 0 or an error. */
int twin_rule_wake_get(struct twin_txn *txn, const char *id, size_t id_len, int64_t *at, char *err);
/* Sets it (INT64_MAX: none), keeping the index in order. Write transactions. */
int twin_rule_wake_set(struct twin_txn *txn, const char *id, size_t id_len, int64_t at, char *err);
/* Sets it to `at` only when that is earlier than the current one. Write transactions. */
int twin_rule_wake_lower(struct twin_txn *txn, const char *id, size_t id_len, int64_t at,
                         char *err);
/* Calls cb for the twins whose wake time is <= now, earliest first, at most `max` (capped at
 * 256); cb may write to the store (it should set a new wake time for the twin, or the next call
 * reports it again). Returns 0, cb's non-zero return, or an error. */
typedef int (*twin_rule_wake_cb)(void *ctx, const char *id, size_t id_len, int64_t at);
int twin_rule_wake_due(struct twin_txn *txn, int64_t now, unsigned max, twin_rule_wake_cb cb,
                       void *ctx, char *err);
/* The earliest wake time of any twin. Returns 0, -ENOENT (none), or an error. */
int twin_rule_wake_next(struct twin_txn *txn, int64_t *at, char *err);

/* ---------------------------------------------------------------------------------------------
 * Model state: the hub's records per (twin, model) — a learning model's own weights, the
 * predictions waiting for their target, the error so far — opaque here (rules/ owns their
 * meaning). Written in the transaction of the change that caused them; twin_delete removes a
 * twin's.
 * ------------------------------------------------------------------------------------------ */

#define TWIN_MODEL_NAME_MAX 64           /* bytes of a model name */
#define TWIN_MODEL_STATE_MAX (32u << 10) /* bytes of one record */

/* Reads the record of (id, model) into buf (cap bytes); *len its size. Returns 0, -ENOENT,
 * -EINVAL (bad id or name), -EBADMSG (a record over cap or TWIN_MODEL_STATE_MAX), -EIO. */
int twin_model_state_get(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                         size_t model_len, void *buf, size_t cap, size_t *len, char *err);
/* Writes (replaces) it: 1..TWIN_MODEL_STATE_MAX bytes. Write transactions. Returns 0, -EINVAL,
 * -EIO. */
int twin_model_state_put(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                         size_t model_len, const void *buf, size_t len, char *err);
/* Deletes it. Returns 0, -ENOENT, -EINVAL, -EIO. */
int twin_model_state_del(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                         size_t model_len, char *err);
/* Calls cb for every record of twin `id` (NULL: every twin's, in id order), as
 * twin_rule_state_list. */
int twin_model_state_list(struct twin_txn *txn, const char *id, size_t id_len, twin_records_cb cb,
                          void *ctx, char *err);

/* ---------------------------------------------------------------------------------------------
 * Dispatch records: the hub's open demands and assignments, keyed by (dispatch name, demand
 * id), opaque here (hub/dispatch.c owns their meaning), written in the transaction of the
 * change that decided them.
 * ------------------------------------------------------------------------------------------ */

#define TWIN_DISPATCH_NAME_MAX 64     /* bytes of a dispatch name */
#define TWIN_DISPATCH_RECORD_MAX 2048 /* bytes of one record */

/* Reads the record of (dispatch, demand id) into buf (TWIN_DISPATCH_RECORD_MAX bytes); *len its
 * size. Returns 0, -ENOENT, -EINVAL (bad name or id), -EBADMSG, -EIO. */
int twin_dispatch_get(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, void *buf, size_t *len, char *err);
/* Writes (replaces) it: 1..TWIN_DISPATCH_RECORD_MAX bytes. Write transactions. */
int twin_dispatch_put(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, const void *buf, size_t len, char *err);
/* Deletes it. Returns 0, -ENOENT, -EINVAL, -EIO. */
int twin_dispatch_del(struct twin_txn *txn, const char *name, size_t name_len, const char *id,
                      size_t id_len, char *err);
/* Calls cb(ctx, name, name_len, id, id_len, buf, len) for every record of dispatch `name`
 * (NULL: of every dispatch), in (name, id) order. A non-zero return of cb stops the walk and is
 * returned; cb must not write to the store. */
int twin_dispatch_list(struct twin_txn *txn, const char *name, size_t name_len, twin_records_cb cb,
                       void *ctx, char *err);

/* ---------------------------------------------------------------------------------------------
 * Event messages (eventbox.c): what the hub publishes to services that must not be lost once
 * committed, kept in the store from the commit that made them until the broker acknowledged
 * them (the hub deletes them then), in the order they were added.
 * ------------------------------------------------------------------------------------------ */

#define TWIN_EVENT_TOPIC_MAX 1024
#define TWIN_EVENT_CORR_MAX 65535
#define TWIN_EVENT_PAYLOAD_MAX (16u << 20)

struct twin_event {
    uint64_t seq;     /* its place in the order (set by twin_eventbox_add) */
    uint8_t cls, qos; /* the caller's: the publisher's class and the QoS */
    const char *topic;
    size_t topic_len;
    const void *corr; /* MQTT 5 correlation data; NULL: none */
    size_t corr_len;
    const void *payload;
    size_t len;
};

/* Adds one at the end (write transactions); *seq (may be NULL) its number. max_stored: refuse
 * (-ENOSPC, nothing written) when that many wait already; 0: no limit. Returns 0, -EINVAL,
 * -ENOSPC, -EIO and the store's write errors. */
int twin_eventbox_add(struct twin_txn *txn, const struct twin_event *ev, uint64_t max_stored,
                      uint64_t *seq, char *err);
/* Calls cb for at most `max` of them with seq > after, oldest first; what ev points to is
 * valid during the call only. A non-zero return of cb stops the walk and is returned. */
typedef int (*twin_event_cb)(void *ctx, const struct twin_event *ev);
int twin_eventbox_list(struct twin_txn *txn, uint64_t after, unsigned max, twin_event_cb cb,
                       void *ctx, char *err);
/* Deletes number seq. Returns 0, -ENOENT, -EIO. */
int twin_eventbox_done(struct twin_txn *txn, uint64_t seq, char *err);
/* How many wait. */
int twin_eventbox_count(struct twin_txn *txn, uint64_t *n, char *err);

/* ---------------------------------------------------------------------------------------------
 * Listing, outbox, statistics
 * ------------------------------------------------------------------------------------------ */

/* Calls cb for every twin whose id starts with prefix (NULL or "" for all), in id order.
 * A non-zero return from cb stops the walk and is returned. */
typedef int (*twin_list_cb)(void *ctx, const char *id, size_t id_len, const void *doc, size_t len);
int twin_list(struct twin_txn *txn, const char *prefix, size_t prefix_len, twin_list_cb cb,
              void *ctx, char *err);
/* The same, resuming a walk: only the twins whose id sorts after `after` (bytewise; NULL or
 * after_len 0: from the first), so a page that goes on from its last id costs what it reads. */
int twin_list_after(struct twin_txn *txn, const char *prefix, size_t prefix_len, const char *after,
                    size_t after_len, twin_list_cb cb, void *ctx, char *err);

/* The outbox holds, per twin, the latest committed version whose state is not yet known to
 * be published. twin_put records into it; the hub deletes what the broker acknowledged, and
 * after a restart publishes whatever is left. An entry whose twin is gone was left by
 * twin_delete: the deletion is what remains to be published (see twin_tombstone_get). */
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
    uint64_t commands;   /* stored, in any state */
    uint64_t tombstones; /* deleted twins not created again */
    uint32_t schema;     /* the store's schema version (1: not migrated yet, read as it is) */
};
/* Every field of twin_stats; history_series takes a walk over every series (slow on a big
 * store). Any transaction. Returns 0, -EINVAL, -EIO. */
int twin_store_stats(struct twin_txn *txn, struct twin_stats *st, char *err);
/* The same without history_series (left 0): a few constant-time reads, cheap enough for every
 * scrape of the metrics. */
int twin_store_usage(struct twin_txn *txn, struct twin_stats *st, char *err);

/* ---------------------------------------------------------------------------------------------
 * Export and import (export.c): a twin as one line of JSON, its stored document as
 * `twinctl get` prints it, with its history as a last member when asked:
 *   {"id":"ecg-0001","version":42,...,"created":1700000000000,
 *    "history":{"heart_rate":[[1700000001000,72.0],...],"vitals.temp":[...]}}
 * Export, import and export again give the same bytes.
 * ------------------------------------------------------------------------------------------ */

/* Appends the line of twin `id`, whose stored document is doc[0..len) (from twin_list), and a
 * '\n' to `out`; with `history`, every series of the twin, oldest point first. Decoding uses
 * `zone`, which the caller may clear after each line. On error `out` is as it was.
 * Any transaction. Returns 0, -EBADMSG (a damaged document), -ENOMEM, -EIO. */
int twin_export_line(struct twin_txn *txn, const char *id, size_t id_len, const void *doc,
                     size_t len, bool history, msgpack_zone *zone, msgpack_sbuffer *out,
                     char *err);

/* A line, parsed and checked; points into the line's zone. */
struct twin_import {
    struct twin_doc doc;
    msgpack_object history; /* NIL, or a map of path -> [[ts, value], ...], checked */
    uint64_t points;        /* history points in it */
};

/* Parses one line (without its '\n'): a JSON object of at most max_line bytes whose members
 * are a document's (unknown ones are refused, as they would be lost) and "history"; the
 * document decodes as a stored one, its reported and desired pass the checks telemetry and
 * desired state pass. Touches no store. Returns 0, -EINVAL or -E2BIG (what and where in err:
 * "history.heart_rate[3]: expected [ts, value]"), -ENOMEM. */
int twin_import_parse(const char *line, size_t len, size_t max_line, size_t max_doc,
                      msgpack_zone *zone, struct twin_import *out, char *err);

/* Whether a parsed twin can go into the store as it is: -EEXIST if a twin with its id is
 * there, or was deleted at its version or later (versions are never used twice); 0 if it can;
 * -EIO. Any transaction. */
int twin_import_check(struct twin_txn *txn, const struct twin_import *im, char *err);

/* Stores a parsed twin: twin_import_check, then the document as it is (version, timestamps,
 * meta; into the outbox, so a hub started on the store publishes it) and its history points
 * in the order given (a series keeps the latest history_max_points). Write transactions only.
 * Returns 0, -EEXIST, -E2BIG (max_doc_bytes), -ENOSPC, -ENOMEM, -EIO. */
int twin_import_write(struct twin_txn *txn, const struct twin_import *im, char *err);

/* ---------------------------------------------------------------------------------------------
 * Backup and restore (backup.c): one file, a header (format, schema version, length, SHA-256)
 * and a compacted copy of the store taken in one read transaction while writers go on.
 * ------------------------------------------------------------------------------------------ */

/* Called as work proceeds: `done` of `total` bytes. */
typedef void (*twin_progress_cb)(void *ctx, uint64_t done, uint64_t total);

struct twin_backup_info {
    uint32_t schema;
    uint64_t bytes; /* of store data */
    int64_t created_ms;
    unsigned char sha256[32];
};

/* Writes a backup of `s` (open read-only or not) to `path`, which must not exist: the copy goes
 * to path.partial and is renamed once complete and synced. `progress` (may be NULL) follows the
 * checksum pass. *info (may be NULL) describes what was written. On error nothing is left at
 * either name. Returns 0, -EEXIST, -ENOSPC, -EIO or another -errno (reason in err). */
int twin_store_backup(struct twin_store *s, const char *path, int64_t now_ms,
                      twin_progress_cb progress, void *pctx, struct twin_backup_info *info,
                      char *err);

/* Restores the backup at `path` into the directory `dir` (made if missing; it must be empty),
 * checking the header, the length and the SHA-256 while it copies. On error `dir` is as it was
 * (removed again if this call made it). Returns 0, -EBADMSG (not a backup, truncated, damaged),
 * -EPROTO (a newer format or schema), -ENOTEMPTY, or another -errno (reason in err). */
int twin_store_restore(const char *path, const char *dir, twin_progress_cb progress, void *pctx,
                       struct twin_backup_info *info, char *err);

#endif
