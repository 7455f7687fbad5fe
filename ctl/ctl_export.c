/* ctl_export: `twinctl export` and `twinctl import`, the command-line face of twins/export.c:
 * files, lines, line numbers, progress and the two passes of an import; what a line holds and
 * what is checked in it belong to the twins library.
 *
 * Import is offline: it writes the store directly, and a store that a hub has open for writing
 * is refused (twin_store_open's writer lock). Through the hub over MQTT, a twin would come back
 * as new telemetry, with new versions, new timestamps and no way to carry its desired version,
 * meta or history as they were; writing the store keeps every byte, so export, import and
 * export again give the same file. Single-threaded. */
#include "ctl_export.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bridge.h"
#include "ctl_json.h"
#include "ctl_store.h"
#include "progress.h"
#include "twins.h"

#define LINE_MAX_BYTES (256u << 20) /* one twin with its history; the twins' own limits are less   \
                                     */
#define ERRORS_SHOWN 20
#define BATCH_TWINS 1000
#define BATCH_BYTES (32u << 20)
#define ERR_MAX (1600 + TWIN_ERR_LEN) /* FILE:LINE: reason */

static int store_options_open(const struct config *cfg, bool read_only, struct twin_store **s,
                              char *err)
{
    struct twin_store_options so = ctl_store_options(cfg, cfg->db_path, read_only);
    return twin_store_open(s, &so, err);
}

/* ---------------------------------------------------------------------------------------------
 * export
 * ------------------------------------------------------------------------------------------ */

struct export_walk {
    struct twin_txn *txn;
    bool history;
    msgpack_zone zone;
    msgpack_sbuffer out;
    struct progress p;
    uint64_t n, total;
    char *err;
};

static int export_one(void *ctx, const char *id, size_t id_len, const void *doc, size_t len)
{
    struct export_walk *w = ctx;
    msgpack_zone_clear(&w->zone);
    w->out.size = 0;
    int rc = twin_export_line(w->txn, id, id_len, doc, len, w->history, &w->zone, &w->out, w->err);
    if (rc)
        return rc;
    if (fwrite(w->out.data, 1, w->out.size, stdout) != w->out.size) {
        snprintf(w->err, TWIN_ERR_LEN, "writing to stdout: %s", strerror(errno));
        return -EIO;
    }
    progress_update(&w->p, ++w->n, w->total);
    return 0;
}

int ctl_export_main(const struct config *cfg, const char *prefix, bool history, bool quiet)
{
    char err[TWIN_ERR_LEN];
    struct twin_store *s;
    struct twin_stats st = {0};
    struct export_walk w = {.history = history, .err = err};
    int rc = store_options_open(cfg, true, &s, err);
    if (rc < 0) {
        fprintf(stderr, "twinctl: cannot open %s: %s\n", cfg->db_path, err);
        return 2;
    }
    if ((rc = twin_store_read_begin(s, &w.txn, err)) < 0) {
        fprintf(stderr, "twinctl: cannot read %s: %s\n", cfg->db_path, err);
        twin_store_close(s);
        return 2;
    }
    if (!msgpack_zone_init(&w.zone, 1 << 16)) {
        fprintf(stderr, "twinctl: out of memory\n");
        twin_store_read_end(w.txn);
        twin_store_close(s);
        return 2;
    }
    msgpack_sbuffer_init(&w.out);
    /* the bar's total: every twin, when the export is every twin */
    if (!*prefix && twin_store_usage(w.txn, &st, err) == 0)
        w.total = st.twins;
    progress_init(&w.p, "export", "twins", quiet);
    rc = twin_list(w.txn, prefix, strlen(prefix), export_one, &w, err);
    progress_end(&w.p, w.n, w.total);
    twin_store_read_end(w.txn);
    twin_store_close(s);
    msgpack_sbuffer_destroy(&w.out);
    msgpack_zone_destroy(&w.zone);
    if (rc == 0 && fflush(stdout) != 0) {
        snprintf(err, sizeof err, "writing to stdout: %s", strerror(errno));
        rc = -EIO;
    }
    if (rc < 0) {
        fprintf(stderr, "twinctl: export of %s stopped after %" PRIu64 " twins: %s\n", cfg->db_path,
                w.n, err);
        return 2;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * import: reading lines
 * ------------------------------------------------------------------------------------------ */

struct reader {
    FILE *f;
    char *buf;
    size_t len, cap;
    size_t full; /* the line's length, even past LINE_MAX_BYTES (then only counted) */
    uint64_t lineno;
};

/* The next line, without its '\n', into r->buf[0..len). Returns 1, 0 at the end, -errno. */
static int read_line(struct reader *r)
{
    int c;
    r->len = r->full = 0;
    flockfile(r->f);
    while ((c = getc_unlocked(r->f)) != EOF && c != '\n') {
        r->full++;
        if (r->len == LINE_MAX_BYTES)
            continue;
        if (r->len == r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 4096;
            char *b = realloc(r->buf, cap);
            if (!b) {
                funlockfile(r->f);
                return -ENOMEM;
            }
            r->buf = b;
            r->cap = cap;
        }
        r->buf[r->len++] = (char)c;
    }
    funlockfile(r->f);
    if (c == EOF && ferror(r->f))
        return -EIO;
    if (c == EOF && r->full == 0)
        return 0;
    r->lineno++;
    return 1;
}

static bool blank(const struct reader *r)
{
    for (size_t i = 0; i < r->len; i++)
        if (r->buf[i] != ' ' && r->buf[i] != '\t' && r->buf[i] != '\r')
            return false;
    return true;
}

/* The line parsed and checked as twins/export.c checks it, and its id as a device id.
 * Returns 0 or -errno with the reason in err. */
static int parse_line(struct reader *r, size_t max_doc, msgpack_zone *zone,
                      struct twin_import *im, char *err)
{
    if (r->full > r->len) {
        snprintf(err, TWIN_ERR_LEN, "line of %zu bytes, above the limit of %u", r->full,
                 LINE_MAX_BYTES);
        return -E2BIG;
    }
    msgpack_zone_clear(zone);
    int rc = twin_import_parse(r->buf, r->len, LINE_MAX_BYTES, max_doc, zone, im, err);
    if (rc)
        return rc;
    if (!bridge_id_valid(im->doc.id, im->doc.id_len)) {
        snprintf(err, TWIN_ERR_LEN,
                 "id '%.*s' is not a device id (1..%d of A-Z a-z 0-9 . _ : -, not starting "
                 "with '.')",
                 im->doc.id_len > 140 ? 140 : (int)im->doc.id_len, im->doc.id, BRIDGE_ID_MAX);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * import: pass 1, every line checked, nothing written
 * ------------------------------------------------------------------------------------------ */

struct seen {
    char *id;
    uint64_t line;
};

struct import {
    const char *file;
    struct reader r;
    msgpack_zone zone;
    struct twin_store *s;
    struct seen *seen;
    size_t nseen, capseen;
    uint64_t twins, points, bad;
    size_t max_doc; /* limits.max_twin_size */
    struct progress p;
    off_t size;
    bool quiet;
};

static void bad_line(struct import *im, uint64_t line, const char *why)
{
    if (im->bad++ < ERRORS_SHOWN) {
        progress_clear(&im->p);
        fprintf(stderr, "twinctl: %s:%" PRIu64 ": %s\n", im->file, line, why);
    }
}

static int seen_add(struct import *im, const struct twin_doc *d)
{
    if (im->nseen == im->capseen) {
        size_t cap = im->capseen ? im->capseen * 2 : 1024;
        struct seen *n = realloc(im->seen, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        im->seen = n;
        im->capseen = cap;
    }
    char *id = strndup(d->id, d->id_len);
    if (!id)
        return -ENOMEM;
    im->seen[im->nseen++] = (struct seen){id, im->r.lineno};
    return 0;
}

static int seen_cmp(const void *a, const void *b)
{
    const struct seen *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int check_all(struct import *im)
{
    char err[TWIN_ERR_LEN];
    struct twin_txn *txn = NULL;
    int rc;
    if (im->s && (rc = twin_store_read_begin(im->s, &txn, err)) < 0) {
        fprintf(stderr, "twinctl: cannot read the store: %s\n", err);
        return rc;
    }
    progress_init(&im->p, "check", NULL, im->quiet);
    while ((rc = read_line(&im->r)) > 0) {
        struct twin_import t;
        if (blank(&im->r))
            continue;
        rc = parse_line(&im->r, im->max_doc, &im->zone, &t, err);
        if (rc == 0 && txn)
            rc = twin_import_check(txn, &t, err);
        if (rc == -ENOMEM || rc == -EIO)
            break;
        if (rc) {
            bad_line(im, im->r.lineno, err);
            continue;
        }
        if ((rc = seen_add(im, &t.doc)) < 0)
            break;
        im->twins++;
        im->points += t.points;
        if (im->p.on)
            progress_update(&im->p, (uint64_t)ftello(im->r.f), (uint64_t)im->size);
    }
    if (txn)
        twin_store_read_end(txn);
    if (rc < 0) {
        fprintf(stderr, "twinctl: %s:%" PRIu64 ": %s\n", im->file, im->r.lineno,
                rc == -ENOMEM ? "out of memory"
                : rc == -EIO  ? "read error"
                              : err);
        return rc;
    }
    progress_end(&im->p, (uint64_t)im->size, (uint64_t)im->size);
    /* the same id twice: the later line would find the earlier one in the store */
    if (im->nseen > 1)
        qsort(im->seen, im->nseen, sizeof *im->seen, seen_cmp);
    for (size_t i = 1; i < im->nseen; i++)
        if (strcmp(im->seen[i].id, im->seen[i - 1].id) == 0) {
            snprintf(err, sizeof err, "twin '%s' is also on line %" PRIu64, im->seen[i].id,
                     im->seen[i - 1].line);
            bad_line(im, im->seen[i].line, err);
        }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * import: pass 2, the lines written in transactions of BATCH_TWINS or BATCH_BYTES
 * ------------------------------------------------------------------------------------------ */

struct batch {
    struct import *im;
    off_t start, next;
    uint64_t line0, done, points;
    bool end;
    char *err; /* what stopped it, with the line: said once twin_store_write gives up */
};

/* One transaction's lines. twin_store_write runs it again from the start when the map had to
 * grow, so it begins by going back to where its batch starts. */
static int write_batch(struct twin_txn *txn, void *ctx)
{
    struct batch *b = ctx;
    struct import *im = b->im;
    char why[TWIN_ERR_LEN];
    uint64_t n = 0, bytes = 0, points = 0;
    int rc;
    if (fseeko(im->r.f, b->start, SEEK_SET) != 0)
        return -EIO;
    im->r.lineno = b->line0;
    b->end = false;
    while (n < BATCH_TWINS && bytes < BATCH_BYTES) {
        if ((rc = read_line(&im->r)) < 0)
            return rc;
        if (rc == 0) {
            b->end = true;
            break;
        }
        if (blank(&im->r))
            continue;
        struct twin_import t;
        if ((rc = parse_line(&im->r, im->max_doc, &im->zone, &t, why)) < 0 ||
            (rc = twin_import_write(txn, &t, why)) < 0) {
            /* checked in pass 1: only the store (full, I/O; a full map is grown and the batch
             * run again) or the file changing gets here */
            snprintf(b->err, ERR_MAX, "%.1500s:%" PRIu64 ": %s", im->file, im->r.lineno, why);
            return rc;
        }
        n++;
        points += t.points;
        bytes += im->r.len;
    }
    b->next = ftello(im->r.f);
    b->done = n;
    b->points = points;
    return 0;
}

static int write_all(struct import *im, uint64_t *written, uint64_t *points)
{
    char err[ERR_MAX] = ""; /* twin_store_write's own reasons are shorter */
    struct batch b = {.im = im, .err = err};
    progress_init(&im->p, "import", "twins", im->quiet);
    for (;;) {
        b.line0 = im->r.lineno;
        int rc = twin_store_write(im->s, write_batch, &b, err);
        if (rc < 0) {
            progress_end(&im->p, *written, im->twins);
            fprintf(stderr, "twinctl: import stopped after %" PRIu64 " twins: %s\n", *written, err);
            return rc;
        }
        *written += b.done;
        *points += b.points;
        progress_update(&im->p, *written, im->twins);
        if (b.end)
            break;
        b.start = b.next;
    }
    progress_end(&im->p, *written, im->twins);
    if (twin_store_sync(im->s, err) < 0) {
        fprintf(stderr, "twinctl: import written but not synced to disk: %s\n", err);
        return -EIO;
    }
    return 0;
}

int ctl_import_main(const struct config *cfg, const char *file, bool quiet)
{
    char err[TWIN_ERR_LEN], data[4096];
    struct import im = {.file = file, .quiet = quiet, .max_doc = cfg->max_twin_size};
    struct stat st;
    uint64_t written = 0, points = 0;
    int code = 2, rc;
    im.r.f = strcmp(file, "-") ? fopen(file, "rb") : NULL;
    if (!im.r.f) {
        fprintf(stderr, "twinctl: cannot open %s: %s\n", file,
                strcmp(file, "-") ? strerror(errno) : "import reads a file, not stdin");
        return 2;
    }
    if (fstat(fileno(im.r.f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "twinctl: %s is not a regular file (import reads it twice)\n", file);
        fclose(im.r.f);
        return 2;
    }
    im.size = st.st_size;
    if (!msgpack_zone_init(&im.zone, 1 << 16)) {
        fclose(im.r.f);
        return 2;
    }
    /* an existing store is opened for writing now: a running hub is found before the long
     * check, and nothing can write it between the check and the import */
    snprintf(data, sizeof data, "%s/data.mdb", cfg->db_path);
    if (stat(data, &st) == 0 && (rc = store_options_open(cfg, false, &im.s, err)) < 0) {
        fprintf(stderr, "twinctl: cannot open %s for writing: %s\n", cfg->db_path, err);
        goto done;
    }
    if (check_all(&im) < 0)
        goto done;
    if (im.bad) {
        if (im.bad > ERRORS_SHOWN)
            fprintf(stderr, "twinctl: %s: ... and %" PRIu64 " more\n", file, im.bad - ERRORS_SHOWN);
        fprintf(stderr, "twinctl: %s: %" PRIu64 " bad line%s; nothing was imported\n", file, im.bad,
                im.bad == 1 ? "" : "s");
        code = 1;
        goto done;
    }
    if (!im.s && (rc = store_options_open(cfg, false, &im.s, err)) < 0) {
        fprintf(stderr, "twinctl: cannot create the store at %s: %s\n", cfg->db_path, err);
        goto done;
    }
    im.r.lineno = 0;
    if (write_all(&im, &written, &points) < 0)
        goto done;
    printf("{\"file\":");
    ctl_json_str(stdout, file, strlen(file));
    printf(",\"db\":");
    ctl_json_str(stdout, cfg->db_path, strlen(cfg->db_path));
    printf(",\"twins\":%" PRIu64 ",\"points\":%" PRIu64 "}\n", written, points);
    code = 0;
done:
    twin_store_close(im.s);
    fclose(im.r.f);
    free(im.r.buf);
    for (size_t i = 0; i < im.nseen; i++)
        free(im.seen[i].id);
    free(im.seen);
    msgpack_zone_destroy(&im.zone);
    return code;
}
