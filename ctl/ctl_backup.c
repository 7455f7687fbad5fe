/* ctl_backup: `twinctl backup FILE` and `twinctl restore FILE DIR`, the command-line face of
 * twins/backup.c: it opens the store, shows progress and prints what was written; the file
 * format and the copy belong to the twins library. Single-threaded. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "ctl_backup.h"
#include "twins.h"

struct progress {
    const char *what;
    int64_t start_ms, last_ms;
    bool on;
};

/* A progress bar on stderr: bytes done, rate, ETA; at most ten redraws a second. */
static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    struct progress *p = ctx;
    int64_t now = hub_mono_ms();
    if (!p->on || (done < total && now - p->last_ms < 100))
        return;
    p->last_ms = now;
    double secs = (double)(now - p->start_ms) / 1000.0, mib = 1024.0 * 1024.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    char bar[21];
    for (int i = 0; i < 20; i++)
        bar[i] = i < pct / 5 ? '#' : '.';
    bar[20] = '\0';
    fprintf(stderr, "\r%-8s [%s] %3d%%  %.1f / %.1f MiB  %.1f MiB/s  ETA %.0fs ", p->what, bar, pct,
            (double)done / mib, (double)total / mib, rate / mib, eta);
    if (done >= total)
        fputc('\n', stderr);
}

static void progress_init(struct progress *p, const char *what, bool quiet)
{
    p->what = what;
    p->start_ms = p->last_ms = hub_mono_ms();
    p->on = !quiet && isatty(STDERR_FILENO);
    p->last_ms -= 1000;
}

static void print_info(const char *key, const char *val, const struct twin_backup_info *info,
                       long long twins)
{
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", info->sha256[i]);
    /* paths are the user's own arguments; printed as JSON strings with the two characters
     * that need escaping in them refused by the callers' checks below */
    printf("{\"%s\":\"%s\",\"bytes\":%" PRIu64 ",\"schema\":%u,\"sha256\":\"%s\","
           "\"created\":%" PRId64,
           key, val, info->bytes, info->schema, hex, info->created_ms);
    if (twins >= 0)
        printf(",\"twins\":%lld", twins);
    printf("}\n");
}

/* A read-only store at `path` with the configured map sizes. Returns 0 or -errno (err). */
static int open_read_only(const struct config *cfg, const char *path, struct twin_store **s,
                          char *err)
{
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    so.path = path;
    so.read_only = true;
    so.map_size = cfg->map_size;
    so.max_map_size = cfg->max_map_size;
    return twin_store_open(s, &so, err);
}

static bool plain_path(const char *what, const char *p)
{
    for (const char *c = p; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) {
            fprintf(stderr,
                    "twinctl: %s: quotes, backslashes and control characters are not "
                    "supported in paths\n",
                    what);
            return false;
        }
    return true;
}

int ctl_backup_main(const struct config *cfg, const char *file, bool quiet)
{
    char err[TWIN_ERR_LEN];
    struct stat st;
    if (!plain_path("backup FILE", file))
        return 2;
    if (stat(cfg->db_path, &st) != 0) {
        fprintf(stderr, "twinctl: no database at %s (set --db, TWINHUB_STORE_PATH or store.path)\n",
                cfg->db_path);
        return 2;
    }
    struct twin_store *s;
    if (open_read_only(cfg, cfg->db_path, &s, err) < 0) {
        fprintf(stderr, "twinctl: cannot open %s: %s\n", cfg->db_path, err);
        return 2;
    }
    struct progress p;
    progress_init(&p, "checksum", quiet);
    if (p.on)
        fprintf(stderr, "copying %s (compacted, one read transaction)...\n", cfg->db_path);
    struct twin_backup_info info;
    int rc = twin_store_backup(s, file, hub_now_ms(), on_progress, &p, &info, err);
    twin_store_close(s);
    if (rc < 0) {
        fprintf(stderr, "twinctl: backup of %s failed: %s\n", cfg->db_path, err);
        return 2;
    }
    print_info("file", file, &info, -1);
    return 0;
}

int ctl_restore_main(const struct config *cfg, const char *file, const char *dir, bool quiet)
{
    char err[TWIN_ERR_LEN];
    if (!plain_path("restore DIR", dir))
        return 2;
    struct progress p;
    progress_init(&p, "restore", quiet);
    struct twin_backup_info info;
    int rc = twin_store_restore(file, dir, on_progress, &p, &info, err);
    if (rc < 0) {
        fprintf(stderr, "twinctl: restore of %s failed: %s\n", file, err);
        return rc == -EBADMSG || rc == -EPROTO ? 1 : 2;
    }
    /* what was restored opens as a store of this build, and holds what it counts */
    struct twin_store *s;
    struct twin_txn *txn;
    struct twin_stats st = {0};
    if (open_read_only(cfg, dir, &s, err) < 0) {
        fprintf(stderr, "twinctl: restored %s, but it does not open: %s\n", dir, err);
        return 1;
    }
    if (twin_store_read_begin(s, &txn, err) == 0) {
        rc = twin_store_usage(txn, &st, err);
        twin_store_read_end(txn);
    }
    twin_store_close(s);
    if (rc < 0) {
        fprintf(stderr, "twinctl: restored %s, but cannot read it: %s\n", dir, err);
        return 1;
    }
    print_info("dir", dir, &info, (long long)st.twins);
    return 0;
}
