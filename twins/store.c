/* store.c: the LMDB environment behind the twins: opening it, transactions, growing the map on
 * MDB_MAP_FULL, and the plain records (twin documents, the outbox, tombstones, statistics).
 * History and commands have their own files (history.c, command.c); what a document contains is
 * doc.c's business.
 *
 * Layout: one environment directory with the named databases
 *   "twins"       id -> encoded document
 *   "points"      id "\0" path -> 16-byte points (history.c), MDB_DUPSORT | MDB_DUPFIXED
 *   "outbox"      id -> uint64 version, little-endian: committed but not known to be published
 *   "info"        "schema" -> uint32 little-endian schema version (TWINS_SCHEMA);
 *                 "cmd_seq" -> uint64 little-endian, the last command number (command.c)
 *   "tombstones"  id -> uint64 version, little-endian: the last version of a deleted twin
 *   "commands"    id "\0" be64(number) -> command record (command.c)
 *   "deadlines"   be64(time) id be64(number) -> empty: when each command is due (command.c)
 *   "rulestate"   id "\0" rule -> the rules engine's record; id "\0" -> wake (rulestate.c)
 *   "wakes"       be64(time) id -> empty: when each twin's rules run again (rulestate.c)
 *   "modelstate"  id "\0" model -> the models' record per twin (modelstate.c)
 *   "waves"       id "\0" path "\0" be64(ts) -> a chunk of a waveform's samples (wave.c)
 * The databases after "info" came after schema 1 was first written; they only add records, and
 * writers create them when missing. Schema 2 changed the history points: schema 1 kept them in
 * "history" (ts, value), which a writer moves to "points" at open (history.c); a reader of a
 * store no writer has migrated yet reads both.
 *
 * Threads and locks: every transaction holds s->lock shared for its whole life; growing the map
 * (mdb_env_set_mapsize, which needs no transaction active in the process) takes it exclusive.
 * twin_store_write also holds s->wlock, taken first, which guards the reused write transaction
 * struct. So a thread must not call twin_store_write while it holds a read transaction: the
 * growth would wait for that thread's own shared lock. twin_store_sync holds s->lock shared too:
 * with MDB_WRITEMAP it msyncs the map, which a resize unmaps and maps again.
 *
 * MDB_WRITEMAP (opt->writemap), as LMDB 0.9.24 does it: mdb_env_open and every
 * mdb_env_set_mapsize ftruncate the data file to the map size, leaving it sparse; a page the
 * disk cannot back then raises SIGBUS when LMDB first writes it through the map. So the file is
 * reserved (posix_fallocate) up to the map size at open and at each growth, and a growth that
 * cannot be reserved is undone and reported as -ENOSPC. Read-only openers (twinctl) drop
 * WRITEMAP (LMDB ignores it with MDB_RDONLY) and read the same pages through the shared page
 * cache. WRITEMAP cannot be used with nested transactions; this file begins none. MDB_MAPASYNC is
 * never set: with MDB_NOSYNC it changes nothing, and without it, it turns the per-commit msync
 * into MS_ASYNC, which flushes nothing on Linux.
 */
#include "twins_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define WZONE_CHUNK (64u << 10) /* first chunk of the write transaction's zone */
#define WZONE_CHUNK_MAX (4u << 20)
#define RZONE_CHUNK (16u << 10)
#define RESIZED_RETRIES 8

/* ---------------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------------ */

int store__mdb_error(struct twin_txn *txn, int rc, const char *what, char *err)
{
    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "%s: not found", what);
        return -ENOENT;
    }
    if (rc == ENOMEM) {
        twins__errf(err, "%s: out of memory", what);
        return -ENOMEM;
    }
    if (rc == ENOSPC) {
        twins__errf(err, "%s: %s", what, mdb_strerror(rc));
        return -ENOSPC;
    }
    if (rc == MDB_MAP_FULL && txn)
        txn->map_full = true;
    twins__errf(err, "%s: %s", what, mdb_strerror(rc));
    return -EIO;
}

int store__need_write(const struct twin_txn *txn, const char *what, char *err)
{
    if (txn && txn->write)
        return 0;
    twins__errf(err, "%s needs a write transaction", what);
    return -EINVAL;
}

/* ---------------------------------------------------------------------------------------------
 * Map size
 * ------------------------------------------------------------------------------------------ */

static void map_size_refresh(struct twin_store *s)
{
    MDB_envinfo info;

    if (mdb_env_info(s->env, &info) == 0)
        atomic_store(&s->map_size, info.me_mapsize);
}

/* Reserves bytes [from, to) of the data file on disk, for MDB_WRITEMAP (see the top of this
 * file). Returns 0 or an errno value. A filesystem that cannot reserve leaves the file sparse. */
static int reserve(struct twin_store *s, size_t from, size_t to)
{
    mdb_filehandle_t fd;
    int rc;

    if (!s->writemap || to <= from)
        return 0;
    rc = mdb_env_get_fd(s->env, &fd);
    if (rc)
        return rc;
    do
        rc = posix_fallocate(fd, (off_t)from, (off_t)(to - from));
    while (rc == EINTR);
    return rc == EOPNOTSUPP ? 0 : rc;
}

/* mdb_env_set_mapsize failed: LMDB has unmapped the old map and kept its address. */
static int map_broken(struct twin_store *s, int rc, size_t size, char *err)
{
    atomic_store(&s->broken, true);
    twins__errf(err, "resizing the map to %zu bytes: %s; the store must be reopened", size,
                mdb_strerror(rc));
    return rc == ENOSPC || rc == EFBIG ? -ENOSPC : rc == ENOMEM ? -ENOMEM : -EIO;
}

/* Doubles the map, up to max_map_size. Called with no transaction held by this thread. */
static int map_grow(struct twin_store *s, char *err)
{
    MDB_envinfo info;
    size_t next;
    int rc;

    pthread_rwlock_wrlock(&s->lock);
    mdb_env_info(s->env, &info);
    if (info.me_mapsize >= s->max_map_size) {
        pthread_rwlock_unlock(&s->lock);
        twins__errf(err, "store full: map at max_map_size %zu bytes", s->max_map_size);
        return -ENOSPC;
    }
    next = info.me_mapsize > s->max_map_size / 2 ? s->max_map_size : info.me_mapsize * 2;
    rc = mdb_env_set_mapsize(s->env, next);
    if (rc) {
        rc = map_broken(s, rc, next, err);
        pthread_rwlock_unlock(&s->lock);
        return rc;
    }
    rc = reserve(s, info.me_mapsize, next);
    if (rc) {
        /* shrink back: the file beyond the old size is not backed (this also frees whatever
         * part of the reservation succeeded) */
        int back = mdb_env_set_mapsize(s->env, info.me_mapsize);

        if (back) {
            rc = map_broken(s, back, info.me_mapsize, err);
        } else {
            twins__errf(err, "store full: cannot reserve %zu bytes on disk to grow the map: %s",
                        next, strerror(rc));
            rc = rc == ENOSPC || rc == EFBIG ? -ENOSPC : -EIO;
            map_size_refresh(s);
        }
        pthread_rwlock_unlock(&s->lock);
        return rc;
    }
    map_size_refresh(s);
    pthread_rwlock_unlock(&s->lock);
    return 0;
}

/* Another process grew the map (MDB_MAP_RESIZED): adopt its size. */
static int map_adopt(struct twin_store *s, char *err)
{
    int rc;

    pthread_rwlock_wrlock(&s->lock);
    rc = mdb_env_set_mapsize(s->env, 0);
    if (rc)
        rc = map_broken(s, rc, 0, err);
    else
        map_size_refresh(s);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* Begins an LMDB transaction holding s->lock shared (released again on failure). */
static int txn_begin(struct twin_store *s, unsigned flags, MDB_txn **out, char *err)
{
    for (int tries = 0;; tries++) {
        int rc;

        pthread_rwlock_rdlock(&s->lock);
        if (atomic_load(&s->broken)) {
            pthread_rwlock_unlock(&s->lock);
            twins__errf(err, "the store is unusable after a failed map resize; reopen it");
            return -EIO;
        }
        rc = mdb_txn_begin(s->env, NULL, flags, out);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&s->lock);
        if (rc != MDB_MAP_RESIZED || tries == RESIZED_RETRIES)
            return store__mdb_error(NULL, rc, "mdb_txn_begin", err);
        rc = map_adopt(s, err);
        if (rc)
            return rc;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Open and close
 * ------------------------------------------------------------------------------------------ */

static int mkdir_p(const char *path)
{
    char *p = strdup(path);
    struct stat st;
    int rc = 0;

    if (!p)
        return -ENOMEM;
    for (char *q = p + 1;; q++) {
        if (*q != '/' && *q != '\0')
            continue;
        char c = *q;

        *q = '\0';
        if (mkdir(p, 0750) != 0 && errno != EEXIST) {
            rc = -errno;
            break;
        }
        *q = c;
        if (!c)
            break;
    }
    if (!rc && (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = -ENOTDIR;
    free(p);
    return rc;
}

static int dbi_open(struct twin_store *s, MDB_txn *txn, const char *path, const char *name,
                    unsigned flags, MDB_dbi *dbi, char *err)
{
    int rc = mdb_dbi_open(txn, name, flags | (s->read_only ? 0 : MDB_CREATE), dbi);

    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "store at %s has no '%s' database", path, name);
        return -ENOENT;
    }
    if (rc) {
        twins__errf(err, "store at %s: opening '%s': %s", path, name, mdb_strerror(rc));
        return rc == ENOMEM ? -ENOMEM : -EIO;
    }
    return 0;
}

/* Opens the named databases and checks (or, new, writes) the schema version. */
static int store_setup(struct twin_store *s, const char *path, char *err)
{
    MDB_val k = {6, "schema"}, v;
    unsigned char ver[4];
    MDB_txn *txn;
    int rc;

    rc = txn_begin(s, s->read_only ? MDB_RDONLY : 0, &txn, err);
    if (rc)
        return rc;
    rc = dbi_open(s, txn, path, "twins", 0, &s->dbi_twins, err);
    if (!rc)
        rc = dbi_open(s, txn, path, "outbox", 0, &s->dbi_outbox, err);
    if (!rc)
        rc = dbi_open(s, txn, path, "info", 0, &s->dbi_info, err);
    if (rc)
        goto fail_txn;
    /* history: "points", and schema 1's "history" if it is still there (never created) */
    s->has_points = true;
    rc = dbi_open(s, txn, path, "points", MDB_DUPSORT | MDB_DUPFIXED, &s->dbi_points, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_points = false;
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    rc = mdb_dbi_open(txn, "history", MDB_DUPSORT | MDB_DUPFIXED, &s->dbi_legacy);
    s->has_legacy = rc == 0;
    if (rc && rc != MDB_NOTFOUND) {
        rc = store__mdb_error(NULL, rc, "opening the schema 1 history", err);
        goto fail_txn;
    }
    s->has_commands = true;
    rc = dbi_open(s, txn, path, "tombstones", 0, &s->dbi_tombstones, err);
    if (!rc)
        rc = dbi_open(s, txn, path, "commands", 0, &s->dbi_commands, err);
    if (!rc)
        rc = dbi_open(s, txn, path, "deadlines", 0, &s->dbi_deadlines, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_commands = false; /* a store no writer of this build has opened yet */
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    s->has_rules = true;
    rc = dbi_open(s, txn, path, "rulestate", 0, &s->dbi_rulestate, err);
    if (!rc)
        rc = dbi_open(s, txn, path, "wakes", 0, &s->dbi_wakes, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_rules = false;
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    s->has_models = true;
    rc = dbi_open(s, txn, path, "modelstate", 0, &s->dbi_modelstate, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_models = false;
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    s->has_waves = true;
    rc = dbi_open(s, txn, path, "waves", 0, &s->dbi_waves, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_waves = false;
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    s->has_dispatch = true;
    rc = dbi_open(s, txn, path, "dispatch", 0, &s->dbi_dispatch, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_dispatch = false;
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    s->has_events = true;
    rc = dbi_open(s, txn, path, "events", 0, &s->dbi_events, err);
    if (rc == -ENOENT && s->read_only) {
        s->has_events = false;
        rc = 0;
    }
    if (rc)
        goto fail_txn;
    rc = mdb_get(txn, s->dbi_info, &k, &v);
    if (rc == MDB_NOTFOUND && !s->read_only) {
        s->schema = TWINS_SCHEMA;
        for (int i = 0; i < 4; i++)
            ver[i] = (unsigned char)(TWINS_SCHEMA >> (8 * i));
        v.mv_size = sizeof ver;
        v.mv_data = ver;
        rc = mdb_put(txn, s->dbi_info, &k, &v, 0);
        if (rc) {
            rc = store__mdb_error(NULL, rc, "writing the schema version", err);
            goto fail_txn;
        }
    } else if (rc == MDB_NOTFOUND) {
        twins__errf(err, "store at %s has no schema version", path);
        rc = -EINVAL;
        goto fail_txn;
    } else if (rc) {
        rc = store__mdb_error(NULL, rc, "reading the schema version", err);
        goto fail_txn;
    } else {
        const unsigned char *b = v.mv_data;
        uint32_t have = 0;

        if (v.mv_size != 4) {
            twins__errf(err, "store at %s has a malformed schema version (%zu bytes)", path,
                        v.mv_size);
            rc = -EINVAL;
            goto fail_txn;
        }
        for (int i = 0; i < 4; i++)
            have |= (uint32_t)b[i] << (8 * i);
        if (have == 0 || have > TWINS_SCHEMA) {
            twins__errf(err, "store at %s has schema version %u; this build reads versions 1 to %u",
                        path, have, TWINS_SCHEMA);
            rc = -EINVAL;
            goto fail_txn;
        }
        s->schema = have;
    }
    /* commit even a read-only transaction: that is what keeps the DBI handles open */
    rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&s->lock);
    if (rc)
        return store__mdb_error(NULL, rc, "committing the store setup", err);
    return 0;

fail_txn:
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* One writing process per store: a writer holds flock(LOCK_EX) on <dir>/writer.lock for as
 * long as the store is open (the kernel drops it when the process dies), so a second hub, or an
 * import, on a store a hub is running on fails at once instead of writing behind its back.
 * LMDB itself would let both write (its own locks only serialize the transactions). Readers
 * take nothing. *fd is -1 for readers. */
static int writer_lock(const struct twin_store_options *opt, int *fd, char *err)
{
    char path[4096];

    *fd = -1;
    if (opt->read_only)
        return 0;
    if ((size_t)snprintf(path, sizeof path, "%s/writer.lock", opt->path) >= sizeof path) {
        twins__errf(err, "store path too long");
        return -EINVAL;
    }
    *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0660);
    if (*fd < 0) {
        int e = errno;

        twins__errf(err, "cannot open %s: %s", path, strerror(e));
        return e == EACCES || e == EROFS ? -e : -EIO;
    }
    if (flock(*fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    int e = errno;

    close(*fd);
    *fd = -1;
    if (e == EWOULDBLOCK) {
        twins__errf(err,
                    "another process writes the store at %s (a running twinhub?): %s is locked",
                    opt->path, path);
        return -EBUSY;
    }
    twins__errf(err, "cannot lock %s: %s", path, strerror(e));
    return -EIO;
}

int twin_store_open(struct twin_store **out, const struct twin_store_options *opt, char *err)
{
    char data[4096];
    struct twin_store *s;
    struct stat st;
    unsigned flags = MDB_NOTLS;
    bool exists;
    int writer_fd, rc;

    if (!out || !opt || !opt->path || !*opt->path) {
        twins__errf(err, "twin_store_open: no path");
        return -EINVAL;
    }
    *out = NULL;
    if ((size_t)snprintf(data, sizeof data, "%s/data.mdb", opt->path) >= sizeof data) {
        twins__errf(err, "store path too long");
        return -EINVAL;
    }
    if (!opt->read_only) {
        rc = mkdir_p(opt->path);
        if (rc) {
            twins__errf(err, "cannot create store directory %s: %s", opt->path, strerror(-rc));
            return rc;
        }
    }
    rc = writer_lock(opt, &writer_fd, err);
    if (rc)
        return rc;
    exists = stat(data, &st) == 0;
    if (opt->read_only && !exists) {
        int e = errno;

        twins__errf(err, "no store at %s (%s: %s)", opt->path, data, strerror(e));
        return e == ENOENT || e == ENOTDIR ? -ENOENT : -EIO;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        if (writer_fd >= 0)
            close(writer_fd);
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    s->writer_fd = writer_fd;
    s->read_only = opt->read_only;
    for (unsigned i = 0; i < opt->nwaveforms && s->nwaves < TWIN_WAVEFORMS_MAX; i++)
        if (opt->waveforms[i].rate > 0 && opt->waveforms[i].path[0])
            s->waves[s->nwaves++] = opt->waveforms[i];
    s->writemap = opt->writemap && !opt->read_only;
    atomic_init(&s->history_max, opt->history_max_points);
    atomic_init(&s->max_doc, opt->max_doc_bytes);
    atomic_init(&s->max_twins, opt->max_twins);
    atomic_init(&s->max_skew, opt->max_clock_skew_ms);
    atomic_init(&s->cmd_max, opt->commands_max ? opt->commands_max : TWIN_COMMANDS_MAX_DEFAULT);
    atomic_init(&s->cmd_keep, opt->command_retention_ms);
    atomic_init(&s->seq_restart_after, opt->seq_restart_after);
    atomic_init(&s->map_size, 0);
    atomic_init(&s->broken, false);
    s->max_map_size = opt->max_map_size > opt->map_size ? opt->max_map_size : opt->map_size;
    rc = pthread_rwlock_init(&s->lock, NULL);
    if (rc) {
        twins__errf(err, "pthread_rwlock_init: %s", strerror(rc));
        rc = -rc;
        goto fail_lock;
    }
    rc = pthread_mutex_init(&s->wlock, NULL);
    if (rc) {
        twins__errf(err, "pthread_mutex_init: %s", strerror(rc));
        rc = -rc;
        goto fail_wlock;
    }
    s->wzone_chunk = WZONE_CHUNK;
    if (!msgpack_zone_init(&s->wtxn.zone, s->wzone_chunk)) {
        twins__errf(err, "out of memory");
        rc = -ENOMEM;
        goto fail_zone;
    }
    msgpack_sbuffer_init(&s->wtxn.sbuf);
    s->wtxn.s = s;
    s->wtxn.write = true;

    rc = mdb_env_create(&s->env);
    if (rc) {
        rc = store__mdb_error(NULL, rc, "mdb_env_create", err);
        goto fail_env;
    }
    mdb_env_set_maxdbs(s->env, 32);
    /* an existing store keeps the size it grew to (0: LMDB takes it from the file) */
    if (!opt->read_only && !exists && opt->map_size)
        mdb_env_set_mapsize(s->env, opt->map_size);
    if (opt->read_only)
        flags |= MDB_RDONLY;
    else if (opt->sync == TWIN_SYNC_OS)
        flags |= MDB_NOSYNC; /* TWIN_SYNC_COMMIT: LMDB's default, a flush per commit */
    if (s->writemap)
        flags |= MDB_WRITEMAP;
    rc = mdb_env_open(s->env, opt->path, flags, 0660);
    if (rc) {
        if (rc == ENOENT) {
            twins__errf(err, "no store at %s", opt->path);
            rc = -ENOENT;
        } else {
            twins__errf(err, "cannot open store at %s: %s", opt->path, mdb_strerror(rc));
            rc = rc == ENOMEM ? -ENOMEM : -EIO;
        }
        goto fail_open;
    }
    {
        int dead = 0;

        mdb_reader_check(s->env, &dead); /* slots of crashed readers */
    }
    map_size_refresh(s);
    if (!opt->read_only && atomic_load(&s->map_size) < opt->map_size) {
        rc = mdb_env_set_mapsize(s->env, opt->map_size);
        if (rc) {
            rc = map_broken(s, rc, opt->map_size, err);
            goto fail_map;
        }
        map_size_refresh(s);
    }
    rc = reserve(s, 0, atomic_load(&s->map_size));
    if (rc) {
        twins__errf(err, "cannot reserve %zu bytes on disk for the store at %s: %s",
                    atomic_load(&s->map_size), opt->path, strerror(rc));
        rc = rc == ENOSPC || rc == EFBIG ? -ENOSPC : -EIO;
        goto fail_open;
    }
    rc = store_setup(s, opt->path, err);
    if (rc)
        goto fail_open;
    if (!s->read_only && s->has_legacy) {
        /* schema 1: every series moves to the new points first, then the schema says 2 */
        rc = history__migrate(s, err);
        if (rc) {
            twin_store_close(s);
            return rc;
        }
        s->schema = TWINS_SCHEMA;
    }
    *out = s;
    return 0;

fail_open:
    mdb_env_close(s->env);
fail_map: /* a failed resize left LMDB's map pointer dangling: closing would unmap it again */
fail_env:
    msgpack_sbuffer_destroy(&s->wtxn.sbuf);
    msgpack_zone_destroy(&s->wtxn.zone);
fail_zone:
    pthread_mutex_destroy(&s->wlock);
fail_wlock:
    pthread_rwlock_destroy(&s->lock);
fail_lock:
    if (s->writer_fd >= 0)
        close(s->writer_fd);
    free(s);
    return rc;
}

void twin_store_close(struct twin_store *s)
{
    if (!s)
        return;
    /* after a failed resize the environment is abandoned (its descriptors and reader slot
     * stay until the process exits): closing it would munmap an address LMDB no longer owns */
    if (!atomic_load(&s->broken))
        mdb_env_close(s->env);
    msgpack_sbuffer_destroy(&s->wtxn.sbuf);
    msgpack_zone_destroy(&s->wtxn.zone);
    pthread_mutex_destroy(&s->wlock);
    pthread_rwlock_destroy(&s->lock);
    if (s->writer_fd >= 0)
        close(s->writer_fd); /* releases the writer's lock */
    free(s);
}

int twin_store_sync(struct twin_store *s, char *err)
{
    int rc;

    if (!s)
        return -EINVAL;
    if (s->read_only)
        return 0;
    pthread_rwlock_rdlock(&s->lock);
    if (atomic_load(&s->broken)) {
        pthread_rwlock_unlock(&s->lock);
        twins__errf(err, "the store is unusable after a failed map resize; reopen it");
        return -EIO;
    }
    rc = mdb_env_sync(s->env, 1);
    pthread_rwlock_unlock(&s->lock);
    if (rc)
        return store__mdb_error(NULL, rc, "mdb_env_sync", err);
    return 0;
}

void twin_store_set_history_max(struct twin_store *s, unsigned max_points)
{
    if (s)
        atomic_store(&s->history_max, max_points);
}

void twin_store_set_seq_restart(struct twin_store *s, uint64_t after)
{
    if (s)
        atomic_store(&s->seq_restart_after, after);
}

uint64_t twin_store_seq_restart(struct twin_store *s)
{
    return s ? atomic_load(&s->seq_restart_after) : 0;
}

void twin_store_set_max_doc(struct twin_store *s, size_t bytes)
{
    if (s)
        atomic_store(&s->max_doc, bytes);
}

void twin_store_set_limits(struct twin_store *s, uint64_t max_twins, uint64_t max_clock_skew_ms)
{
    if (!s)
        return;
    atomic_store(&s->max_twins, max_twins);
    atomic_store(&s->max_skew, max_clock_skew_ms);
}

void twin_store_set_command_limits(struct twin_store *s, unsigned commands_max,
                                   uint64_t command_retention_ms)
{
    if (!s)
        return;
    atomic_store(&s->cmd_max, commands_max ? commands_max : TWIN_COMMANDS_MAX_DEFAULT);
    atomic_store(&s->cmd_keep, command_retention_ms);
}

size_t twin_store_map_size(struct twin_store *s)
{
    return s ? atomic_load(&s->map_size) : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------------------------ */

/* Readies the reused write transaction struct: an empty zone (a bigger one when the last
 * transaction spilled out of the first chunk) and an empty encoding buffer. */
static uintptr_t wtxn_reset(struct twin_store *s, bool outgrown)
{
    struct twin_txn *t = &s->wtxn;

    if (outgrown && s->wzone_chunk < WZONE_CHUNK_MAX) {
        msgpack_zone z;

        if (msgpack_zone_init(&z, s->wzone_chunk * 2)) {
            msgpack_zone_destroy(&t->zone);
            t->zone = z;
            s->wzone_chunk *= 2;
        }
    }
    msgpack_zone_clear(&t->zone);
    msgpack_sbuffer_clear(&t->sbuf);
    t->map_full = false;
    t->hist = NULL;
    t->txn = NULL;
    return (uintptr_t)t->zone.chunk_list.ptr;
}

int twin_store_write(struct twin_store *s, twin_write_fn fn, void *ctx, char *err)
{
    struct twin_txn *t;
    bool outgrown = false;
    int rc;

    if (!s || !fn) {
        twins__errf(err, "twin_store_write: no store or no function");
        return -EINVAL;
    }
    if (s->read_only) {
        twins__errf(err, "the store is open read-only");
        return -EINVAL;
    }
    t = &s->wtxn;
    pthread_mutex_lock(&s->wlock);
    for (;;) {
        uintptr_t base = wtxn_reset(s, outgrown), at;
        int frc;

        rc = txn_begin(s, 0, &t->txn, err);
        if (rc)
            break;
        frc = fn(t, ctx);
        at = (uintptr_t)t->zone.chunk_list.ptr;
        outgrown = at < base || at > base + s->wzone_chunk;
        if (t->map_full) {
            /* whatever fn returned: its transaction is dead, grow and run it again */
            mdb_txn_abort(t->txn);
            t->txn = NULL;
            pthread_rwlock_unlock(&s->lock);
            rc = map_grow(s, err);
            if (rc)
                break;
            continue;
        }
        if (frc) {
            /* err is left alone: fn reports through its own channel, often this very buffer */
            mdb_txn_abort(t->txn);
            t->txn = NULL;
            pthread_rwlock_unlock(&s->lock);
            rc = frc;
            break;
        }
        rc = mdb_txn_commit(t->txn);
        t->txn = NULL;
        pthread_rwlock_unlock(&s->lock);
        if (rc == MDB_MAP_FULL) {
            rc = map_grow(s, err);
            if (rc)
                break;
            continue;
        }
        if (rc)
            rc = store__mdb_error(NULL, rc, "mdb_txn_commit", err);
        break;
    }
    if (outgrown)
        wtxn_reset(s, true); /* grow now, while no message waits for it */
    pthread_mutex_unlock(&s->wlock);
    return rc;
}

int twin_store_read_begin(struct twin_store *s, struct twin_txn **out, char *err)
{
    struct twin_txn *t;
    int rc;

    if (!s || !out) {
        twins__errf(err, "twin_store_read_begin: no store");
        return -EINVAL;
    }
    *out = NULL;
    t = calloc(1, sizeof *t);
    if (!t || !msgpack_zone_init(&t->zone, RZONE_CHUNK)) {
        free(t);
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    msgpack_sbuffer_init(&t->sbuf);
    t->s = s;
    rc = txn_begin(s, MDB_RDONLY, &t->txn, err);
    if (rc) {
        msgpack_zone_destroy(&t->zone);
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void twin_store_read_end(struct twin_txn *txn)
{
    if (!txn || txn->write)
        return;
    mdb_txn_abort(txn->txn);
    pthread_rwlock_unlock(&txn->s->lock);
    msgpack_sbuffer_destroy(&txn->sbuf);
    msgpack_zone_destroy(&txn->zone);
    free(txn);
}

msgpack_zone *twin_txn_zone(struct twin_txn *txn)
{
    return txn ? &txn->zone : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Documents
 * ------------------------------------------------------------------------------------------ */

int twins__check_id(const char *id, size_t id_len, char *err)
{
    if (!id || id_len == 0 || id_len > TWIN_ID_MAX) {
        twins__errf(err, "twin id must be 1..%d bytes", TWIN_ID_MAX);
        return -EINVAL;
    }
    return 0;
}

int twin_get_raw(struct twin_txn *txn, const char *id, size_t id_len, const void **buf, size_t *len,
                 char *err)
{
    MDB_val k = {id_len, (void *)id}, v;
    int rc;

    if (!txn || !buf || !len)
        return -EINVAL;
    rc = twins__check_id(id, id_len, err);
    if (rc)
        return rc;
    rc = mdb_get(txn->txn, txn->s->dbi_twins, &k, &v);
    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "no twin '%.*s'", (int)id_len, id);
        return -ENOENT;
    }
    if (rc)
        return store__mdb_error(txn, rc, "reading a twin", err);
    *buf = v.mv_data;
    *len = v.mv_size;
    return 0;
}

int twin_get(struct twin_txn *txn, const char *id, size_t id_len, struct twin_doc *doc, char *err)
{
    const void *buf = NULL; /* set by twin_get_raw on success; -O3 cannot tell */
    size_t len = 0;
    int rc;

    if (!doc)
        return -EINVAL;
    rc = twin_get_raw(txn, id, id_len, &buf, &len, err);
    if (rc)
        return rc;
    if (txn->write) {
        /* the decoded strings point into buf, and a later put in this transaction may move
         * LMDB's dirty pages under it: decode a copy that lives as long as the zone */
        void *copy = msgpack_zone_malloc(&txn->zone, len ? len : 1);

        if (!copy) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        memcpy(copy, buf, len);
        buf = copy;
    }
    return twin_doc_decode(buf, len, &txn->zone, doc, err);
}

/* The size bound of twin_put: -E2BIG when the encoded document in txn->sbuf is above
 * max_doc_bytes and above the size the twin is stored at now. */
static int doc_size_check(struct twin_txn *txn, const struct twin_doc *doc, char *err)
{
    size_t max = atomic_load(&txn->s->max_doc), size = txn->sbuf.size;
    MDB_val k = {doc->id_len, (void *)doc->id}, old;
    int rc;

    if (!max || size <= max)
        return 0;
    rc = mdb_get(txn->txn, txn->s->dbi_twins, &k, &old);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "reading a twin", err);
    if (rc == 0 && size <= old.mv_size)
        return 0; /* above a lowered limit already, and not growing */
    twins__errf(err, "twin %.*s would grow to %zu bytes, above limits.max_twin_size %zu",
                (int)doc->id_len, doc->id, size, max);
    return -E2BIG;
}

int twin_put(struct twin_txn *txn, const struct twin_doc *doc, char *err)
{
    unsigned char ver[8];
    MDB_val k, v;
    int rc;

    rc = store__need_write(txn, "twin_put", err);
    if (rc)
        return rc;
    if (!doc)
        return -EINVAL;
    rc = twins__check_id(doc->id, doc->id_len, err);
    if (rc)
        return rc;
    msgpack_sbuffer_clear(&txn->sbuf);
    rc = twin_doc_encode(doc, &txn->sbuf);
    if (rc) {
        twins__errf(err, rc == -ENOMEM ? "out of memory encoding a twin"
                                       : "twin document has a field of the wrong type");
        return rc;
    }
    rc = doc_size_check(txn, doc, err);
    if (rc)
        return rc;
    k.mv_size = doc->id_len;
    k.mv_data = (void *)doc->id;
    v.mv_size = txn->sbuf.size;
    v.mv_data = txn->sbuf.data;
    rc = mdb_put(txn->txn, txn->s->dbi_twins, &k, &v, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing a twin", err);
    store__le64_put(ver, doc->version);
    v.mv_size = sizeof ver;
    v.mv_data = ver;
    rc = mdb_put(txn->txn, txn->s->dbi_outbox, &k, &v, 0);
    if (rc)
        return store__mdb_error(txn, rc, "writing the outbox", err);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * New twins and tombstones
 * ------------------------------------------------------------------------------------------ */

int twin_tombstone_get(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *version,
                       char *err)
{
    MDB_val k = {id_len, (void *)id}, v;
    int rc;

    if (!txn || !version)
        return -EINVAL;
    rc = twins__check_id(id, id_len, err);
    if (rc)
        return rc;
    if (!txn->s->has_commands)
        rc = MDB_NOTFOUND;
    else
        rc = mdb_get(txn->txn, txn->s->dbi_tombstones, &k, &v);
    if (rc == MDB_NOTFOUND) {
        twins__errf(err, "no tombstone for '%.*s'", (int)id_len, id);
        return -ENOENT;
    }
    if (rc)
        return store__mdb_error(txn, rc, "reading a tombstone", err);
    if (v.mv_size != 8) {
        twins__errf(err, "tombstone of '%.*s' is %zu bytes, expected 8", (int)id_len, id,
                    v.mv_size);
        return -EBADMSG;
    }
    *version = store__le64_get(v.mv_data);
    return 0;
}

int store__schema_put(struct twin_txn *txn, uint32_t version, char *err)
{
    unsigned char ver[4];
    MDB_val k = {6, "schema"}, v = {sizeof ver, ver};
    int rc;

    for (int i = 0; i < 4; i++)
        ver[i] = (unsigned char)(version >> (8 * i));
    rc = mdb_put(txn->txn, txn->s->dbi_info, &k, &v, 0);
    return rc ? store__mdb_error(txn, rc, "writing the schema version", err) : 0;
}

int store__tomb_clear(struct twin_txn *txn, const char *id, size_t id_len, char *err)
{
    MDB_val k = {id_len, (void *)id};
    int rc = mdb_del(txn->txn, txn->s->dbi_tombstones, &k, NULL);

    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "deleting a tombstone", err);
    return 0;
}

int store__twin_load(struct twin_txn *txn, const char *id, size_t id_len, int64_t now_ms,
                     const char *what, struct twin_doc *doc, bool *created, char *err)
{
    uint64_t max_twins, last = 0;
    int rc = twin_get(txn, id, id_len, doc, err);

    *created = false;
    if (rc != -ENOENT)
        return rc;
    max_twins = atomic_load(&txn->s->max_twins);
    if (max_twins) {
        MDB_stat ms;
        int mrc = mdb_stat(txn->txn, txn->s->dbi_twins, &ms); /* O(1): the txn's own record */

        if (mrc)
            return store__mdb_error(txn, mrc, "mdb_stat", err);
        if (ms.ms_entries >= max_twins) {
            twins__errf(err,
                        "store holds %zu twins, limits.max_twins %" PRIu64
                        "; %s for new twin '%.*s' refused",
                        ms.ms_entries, max_twins, what, (int)id_len, id);
            return -E2BIG;
        }
    }
    rc = twin_tombstone_get(txn, id, id_len, &last, err);
    if (rc && rc != -ENOENT)
        return rc;
    memset(doc, 0, sizeof *doc);
    doc->reported.type = doc->desired.type = doc->delta.type = doc->predicted.type =
        doc->meta_reported.type = doc->meta_desired.type = MSGPACK_OBJECT_NIL;
    doc->id = id;
    doc->id_len = id_len;
    doc->version = rc ? 0 : last;
    doc->created = now_ms;
    *created = true;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Listing and the outbox
 * ------------------------------------------------------------------------------------------ */

int twin_list(struct twin_txn *txn, const char *prefix, size_t prefix_len, twin_list_cb cb,
              void *ctx, char *err)
{
    return twin_list_after(txn, prefix, prefix_len, NULL, 0, cb, ctx, err);
}

int twin_list_after(struct twin_txn *txn, const char *prefix, size_t prefix_len, const char *after,
                    size_t after_len, twin_list_cb cb, void *ctx, char *err)
{
    MDB_cursor *c;
    MDB_val k = {prefix_len, (void *)prefix}, v;
    int rc;

    if (!txn || !cb || (!prefix && prefix_len) || (!after && after_len))
        return -EINVAL;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_twins, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    /* start at the later of the prefix and `after`; skip `after` itself */
    bool from_after = after_len > 0;
    if (from_after && prefix_len) {
        int cmp = memcmp(after, prefix, after_len < prefix_len ? after_len : prefix_len);
        from_after = cmp > 0 || (cmp == 0 && after_len >= prefix_len);
    }
    if (from_after) {
        k.mv_size = after_len;
        k.mv_data = (void *)after;
    }
    rc = mdb_cursor_get(c, &k, &v, prefix_len || from_after ? MDB_SET_RANGE : MDB_FIRST);
    if (rc == 0 && from_after && k.mv_size == after_len && memcmp(k.mv_data, after, after_len) == 0)
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    while (rc == 0) {
        if (prefix_len && (k.mv_size < prefix_len || memcmp(k.mv_data, prefix, prefix_len)))
            break;
        rc = cb(ctx, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
        if (rc) {
            mdb_cursor_close(c);
            return rc;
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "listing twins", err);
    return 0;
}

int twin_outbox_list(struct twin_txn *txn, twin_outbox_cb cb, void *ctx, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;

    if (!txn || !cb)
        return -EINVAL;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_outbox, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    while (rc == 0) {
        if (v.mv_size != 8) {
            mdb_cursor_close(c);
            twins__errf(err, "outbox entry of '%.*s' is %zu bytes, expected 8", (int)k.mv_size,
                        (const char *)k.mv_data, v.mv_size);
            return -EBADMSG;
        }
        rc = cb(ctx, k.mv_data, k.mv_size, store__le64_get(v.mv_data));
        if (rc) {
            mdb_cursor_close(c);
            return rc;
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "listing the outbox", err);
    return 0;
}

int twin_outbox_done(struct twin_txn *txn, const char *id, size_t id_len, uint64_t version,
                     char *err)
{
    MDB_val k = {id_len, (void *)id}, v;
    int rc;

    rc = store__need_write(txn, "twin_outbox_done", err);
    if (!rc)
        rc = twins__check_id(id, id_len, err);
    if (rc)
        return rc;
    rc = mdb_get(txn->txn, txn->s->dbi_outbox, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return store__mdb_error(txn, rc, "reading the outbox", err);
    if (v.mv_size == 8 && store__le64_get(v.mv_data) > version)
        return 0; /* a newer version is waiting to be published */
    rc = mdb_del(txn->txn, txn->s->dbi_outbox, &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "deleting from the outbox", err);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Statistics
 * ------------------------------------------------------------------------------------------ */

int twin_store_usage(struct twin_txn *txn, struct twin_stats *st, char *err)
{
    MDB_stat ms;
    MDB_envinfo info;
    int rc;

    if (!txn || !st)
        return -EINVAL;
    memset(st, 0, sizeof *st);
    rc = mdb_stat(txn->txn, txn->s->dbi_twins, &ms);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_stat", err);
    st->twins = ms.ms_entries;
    rc = mdb_stat(txn->txn, txn->s->dbi_outbox, &ms);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_stat", err);
    st->outbox = ms.ms_entries;
    if (txn->s->has_commands) {
        rc = mdb_stat(txn->txn, txn->s->dbi_commands, &ms);
        if (!rc)
            st->commands = ms.ms_entries;
        if (!rc)
            rc = mdb_stat(txn->txn, txn->s->dbi_tombstones, &ms);
        if (rc)
            return store__mdb_error(txn, rc, "mdb_stat", err);
        st->tombstones = ms.ms_entries;
    }
    st->history_points = 0;
    for (int i = 0; i < 2; i++) {
        if (!(i ? txn->s->has_legacy : txn->s->has_points))
            continue;
        rc = mdb_stat(txn->txn, i ? txn->s->dbi_legacy : txn->s->dbi_points, &ms);
        if (rc)
            return store__mdb_error(txn, rc, "mdb_stat", err);
        st->history_points += ms.ms_entries; /* counts every duplicate */
    }
    rc = mdb_env_stat(txn->s->env, &ms);
    if (!rc)
        rc = mdb_env_info(txn->s->env, &info);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_env_info", err);
    st->map_size = info.me_mapsize;
    st->used_bytes = (info.me_last_pgno + 1) * (size_t)ms.ms_psize;
    st->last_txn = info.me_last_txnid;
    st->schema = txn->s->schema;
    return 0;
}

int twin_store_stats(struct twin_txn *txn, struct twin_stats *st, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = twin_store_usage(txn, st, err);

    if (rc)
        return rc;
    for (int i = 0; i < 2; i++) {
        if (!(i ? txn->s->has_legacy : txn->s->has_points))
            continue;
        rc = mdb_cursor_open(txn->txn, i ? txn->s->dbi_legacy : txn->s->dbi_points, &c);
        if (rc)
            return store__mdb_error(txn, rc, "mdb_cursor_open", err);
        for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_NODUP))
            st->history_series++;
        mdb_cursor_close(c);
        if (rc != MDB_NOTFOUND)
            return store__mdb_error(txn, rc, "counting history series", err);
    }
    return 0;
}
