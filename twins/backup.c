/* backup.c: the store's backup file, written while a hub keeps writing, and its restore. It
 * owns the file format; the copy itself is LMDB's (mdb_env_copyfd2 with MDB_CP_COMPACT: one
 * read transaction, so the copy is the store as one commit left it, and free pages are left
 * out).
 *
 * A backup file is a header of BACKUP_HEADER bytes, then the compacted data.mdb:
 *   0   16  magic "TWINHUB-BACKUP\0\0"
 *   16   4  format version (1), little-endian like every field below
 *   20   4  the store's schema version (as the copied store has it)
 *   24   8  length of the data that follows, bytes
 *   32   8  when the backup was taken, ms since the epoch
 *   40  32  SHA-256 of the data
 *   72  56  zero
 * The header is written last (until then it is zero and the file has a temporary name), so a
 * file under the final name is complete. Any thread; no store lock is held (LMDB's read
 * transaction does not stop writers). */
#include "twins_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define BACKUP_HEADER 128
#define BACKUP_FORMAT 1u
#define CHUNK (1u << 20)

static const char magic[16] = "TWINHUB-BACKUP";

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int errno_rc(char *err, const char *what, const char *path)
{
    int e = errno;
    twins__errf(err, "%s %s: %s", what, path, strerror(e));
    return -e;
}

/* SHA-256 of `len` bytes of fd from `off`, also copied to out_fd when it is >= 0, reporting
 * progress. Returns 0 or -errno (reason in err). */
static int hash_range(int fd, off_t off, uint64_t len, int out_fd, unsigned char digest[32],
                      twin_progress_cb progress, void *pctx, const char *path, char *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = malloc(CHUNK);
    int rc = 0;
    if (!md || !buf || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        twins__errf(err, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t done = 0; done < len;) {
        size_t want = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
        ssize_t n = pread(fd, buf, want, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            rc = errno_rc(err, "reading", path);
            goto out;
        }
        EVP_DigestUpdate(md, buf, (size_t)n);
        for (ssize_t w = 0; out_fd >= 0 && w < n;) {
            ssize_t m = write(out_fd, buf + w, (size_t)(n - w));
            if (m < 0 && errno == EINTR)
                continue;
            if (m < 0) {
                rc = errno_rc(err, "writing", "the restored store");
                goto out;
            }
            w += m;
        }
        done += (uint64_t)n;
        if (progress)
            progress(pctx, done, len);
    }
    unsigned int dl;
    EVP_DigestFinal_ex(md, digest, &dl);
out:
    EVP_MD_CTX_free(md);
    free(buf);
    return rc;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* The directory part of `path` ("." when none). */
static void dir_of(const char *path, char *out, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, size, ".");
    else if (slash == path)
        snprintf(out, size, "/");
    else
        snprintf(out, size, "%.*s", (int)(slash - path), path);
}

int twin_store_backup(struct twin_store *s, const char *path, int64_t now_ms,
                      twin_progress_cb progress, void *pctx, struct twin_backup_info *info,
                      char *err)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (!s || !path || !*path) {
        twins__errf(err, "twin_store_backup: bad arguments");
        return -EINVAL;
    }
    if (snprintf(tmp, sizeof(tmp), "%s.partial", path) >= (int)sizeof(tmp)) {
        twins__errf(err, "backup path too long");
        return -ENAMETOOLONG;
    }
    struct stat st;
    if (stat(path, &st) == 0) {
        twins__errf(err, "%s exists; a backup never overwrites a file", path);
        return -EEXIST;
    }
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno_rc(err, "creating", tmp);
    unsigned char h[BACKUP_HEADER] = {0};
    int rc = 0;
    if (write(fd, h, sizeof(h)) != (ssize_t)sizeof(h)) {
        rc = errno_rc(err, "writing", tmp);
        goto fail;
    }
    /* LMDB writes the copy from the file's current offset, after the header */
    int mrc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
    if (mrc) {
        twins__errf(err, "copying the store to %s: %s", tmp, mdb_strerror(mrc));
        rc = mrc == ENOSPC ? -ENOSPC : -EIO;
        goto fail;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < (off_t)BACKUP_HEADER || fsync(fd) < 0) {
        rc = errno_rc(err, "writing", tmp);
        goto fail;
    }
    uint64_t len = (uint64_t)end - BACKUP_HEADER;
    unsigned char digest[32];
    if ((rc = hash_range(fd, BACKUP_HEADER, len, -1, digest, progress, pctx, tmp, err)) < 0)
        goto fail;
    memcpy(h, magic, sizeof(magic));
    put_le(h + 16, BACKUP_FORMAT, 4);
    put_le(h + 20, s->schema, 4); /* a reader of a store not migrated yet copies schema 1 */
    put_le(h + 24, len, 8);
    put_le(h + 32, (uint64_t)now_ms, 8);
    memcpy(h + 40, digest, 32);
    if (pwrite(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) || fsync(fd) < 0) {
        rc = errno_rc(err, "writing", tmp);
        goto fail;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
        rc = errno_rc(err, "renaming to", path);
        unlink(tmp);
        return rc;
    }
    dir_of(path, dir, sizeof(dir));
    fsync_dir(dir);
    if (info) {
        info->schema = s->schema;
        info->bytes = len;
        info->created_ms = now_ms;
        memcpy(info->sha256, digest, 32);
    }
    return 0;
fail:
    close(fd);
    unlink(tmp);
    return rc;
}

/* Whether `dir` has anything in it (1), nothing (0), or cannot be read (-errno). */
static int dir_used(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *e;
    int used = 0;
    while (!used && (e = readdir(d)))
        used = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return used;
}

int twin_store_restore(const char *path, const char *dir, twin_progress_cb progress, void *pctx,
                       struct twin_backup_info *info, char *err)
{
    char data[PATH_MAX], tmp[PATH_MAX];
    if (!path || !dir || !*dir) {
        twins__errf(err, "twin_store_restore: bad arguments");
        return -EINVAL;
    }
    if (snprintf(data, sizeof(data), "%s/data.mdb", dir) >= (int)sizeof(data) ||
        snprintf(tmp, sizeof(tmp), "%s/data.mdb.partial", dir) >= (int)sizeof(tmp)) {
        twins__errf(err, "store path too long");
        return -ENAMETOOLONG;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno_rc(err, "opening", path);
    unsigned char h[BACKUP_HEADER];
    struct stat st;
    int rc = 0, out = -1;
    bool made_dir = false;
    if (fstat(fd, &st) < 0 || pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        memcmp(h, magic, sizeof(magic)) != 0) {
        twins__errf(err, "%s is not a twinhub backup (no header)", path);
        rc = -EBADMSG;
        goto out;
    }
    uint64_t format = get_le(h + 16, 4), schema = get_le(h + 20, 4), len = get_le(h + 24, 8);
    if (format != BACKUP_FORMAT) {
        twins__errf(err, "%s: backup format %llu; this build reads format %u", path,
                    (unsigned long long)format, BACKUP_FORMAT);
        rc = -EPROTO;
        goto out;
    }
    if (schema > TWINS_SCHEMA || schema == 0) {
        twins__errf(err, "%s: store schema %llu; this build reads schema 1 to %u", path,
                    (unsigned long long)schema, TWINS_SCHEMA);
        rc = -EPROTO;
        goto out;
    }
    if ((uint64_t)st.st_size != len + BACKUP_HEADER) {
        twins__errf(err, "%s: %llu bytes of data, the header says %llu (truncated or damaged)",
                    path, (unsigned long long)((uint64_t)st.st_size - BACKUP_HEADER),
                    (unsigned long long)len);
        rc = -EBADMSG;
        goto out;
    }
    int used = dir_used(dir);
    if (used == -ENOENT) {
        if (mkdir(dir, 0750) < 0) {
            rc = errno_rc(err, "creating", dir);
            goto out;
        }
        made_dir = true;
    } else if (used < 0) {
        errno = -used;
        rc = errno_rc(err, "reading", dir);
        goto out;
    } else if (used) {
        twins__errf(err, "%s is not empty; restore only into an empty or new directory", dir);
        rc = -ENOTEMPTY;
        goto out;
    }
    out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (out < 0) {
        rc = errno_rc(err, "creating", tmp);
        goto out;
    }
    unsigned char digest[32];
    if ((rc = hash_range(fd, BACKUP_HEADER, len, out, digest, progress, pctx, path, err)) < 0)
        goto out;
    if (memcmp(digest, h + 40, 32) != 0) {
        twins__errf(err, "%s: the data does not match its SHA-256 (damaged); nothing restored",
                    path);
        rc = -EBADMSG;
        goto out;
    }
    if (fsync(out) < 0 || close(out) < 0) {
        out = -1;
        rc = errno_rc(err, "writing", tmp);
        goto out;
    }
    out = -1;
    if (rename(tmp, data) < 0) {
        rc = errno_rc(err, "renaming to", data);
        goto out;
    }
    fsync_dir(dir);
    if (info) {
        info->schema = (uint32_t)schema;
        info->bytes = len;
        info->created_ms = (int64_t)get_le(h + 32, 8);
        memcpy(info->sha256, digest, 32);
    }
out:
    if (out >= 0)
        close(out);
    if (rc < 0) {
        unlink(tmp);
        if (made_dir)
            rmdir(dir);
    }
    close(fd);
    return rc;
}
