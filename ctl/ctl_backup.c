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
#include "ctl_store.h"
#include "progress.h"
#include "twins.h"

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

/* A read-only store at `path`, opened as the configuration says. Returns 0 or -errno (err). */
static int open_read_only(const struct config *cfg, const char *path, struct twin_store **s,
                          char *err)
{
    struct twin_store_options so = ctl_store_options(cfg, path, true);
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
    progress_init(&p, "checksum", NULL, quiet);
    if (p.on)
        fprintf(stderr, "copying %s (compacted, one read transaction)...\n", cfg->db_path);
    struct twin_backup_info info;
    int rc = twin_store_backup(s, file, hub_now_ms(), progress_update, &p, &info, err);
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
    progress_init(&p, "restore", NULL, quiet);
    struct twin_backup_info info;
    int rc = twin_store_restore(file, dir, progress_update, &p, &info, err);
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
