/* twinctl: the operator's tool. Reads twins straight from LMDB (read-only, while the hub runs
 * or not) through the twins library and prints JSON for scripts or tables for people. It owns
 * argument parsing and output formats; every fact about twins comes from twins/.
 *
 * Commands live in one table (`commands` below): a new one is a row and a function.
 * Exit codes: 0 found, 1 not found (no such twin, no history), 2 usage or I/O error; every
 * failure prints one line "twinctl: <reason>" on stderr. The two writes (set-desired, send) go
 * over MQTT to the hub, like any service's requests (see request()): 0 accepted, 1 rejected
 * (the reply, with its code, is still printed), 2 timeout, usage or connection error.
 *
 * Choices made here: the database is --db, else TWINHUB_STORE_PATH, else store.path of the
 * file given with -c (like twinhub, no file is read unless -c names one), else the default.
 * `list` with no match is not an error (exit 0, no lines; --table prints the header).
 * `history --since` takes a duration back from now (bare number: seconds). In --table output
 * timestamps (last_seen, created, meta.*, predicted.*.ts) are ISO 8601 UTC. Single-threaded. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "clock.h"
#include "config.h"
#include "ctl_fail.h"
#include "ctl_backup.h"
#include "ctl_export.h"
#include "ctl_model.h"
#include "ctl_query.h"
#include "ctl_rules.h"
#include "ctl_store.h"
#include "top.h"
#include "twins.h"


/* Options that belong to some commands only: ctl->opt[O_x] holds the text given, OPT_x is the
 * bit a command lists to accept it. --ca, --cert and --key go with --broker (OPT_BROKER). */
enum {
    O_PREFIX,
    O_LIMIT,
    O_SINCE,
    O_FIELDS,
    O_INTERVAL,
    O_SECONDS,
    O_WAIT,
    O_VERSION,
    O_EXPIRES,
    O_TIMEOUT,
    O_BROKER,
    O_CA,
    O_CERT,
    O_KEY,
    O_QUIET,
    O_HISTORY,
    O_ORDER,
    O_CURSOR,
    O_FROM,
    O_TO,
    O_STEP,
    NOPT
};
#define OPT_PREFIX (1u << O_PREFIX)
#define OPT_LIMIT (1u << O_LIMIT)
#define OPT_SINCE (1u << O_SINCE)
#define OPT_FIELDS (1u << O_FIELDS)
#define OPT_INTERVAL (1u << O_INTERVAL)
#define OPT_SECONDS (1u << O_SECONDS)
#define OPT_WAIT (1u << O_WAIT)
#define OPT_VERSION (1u << O_VERSION)
#define OPT_EXPIRES (1u << O_EXPIRES)
#define OPT_TIMEOUT (1u << O_TIMEOUT)
#define OPT_BROKER (1u << O_BROKER)
#define OPT_QUIET (1u << O_QUIET)
#define OPT_HISTORY (1u << O_HISTORY)
#define OPT_ORDER (1u << O_ORDER)
#define OPT_CURSOR (1u << O_CURSOR)
#define OPT_FROM (1u << O_FROM)
#define OPT_TO (1u << O_TO)
#define OPT_STEP (1u << O_STEP)
#define OPT_MQTT (OPT_TIMEOUT | OPT_BROKER)
#define OPT_VAL 256 /* getopt_long's value for option O_x is OPT_VAL + O_x */

struct ctl {
    /* from the command line */
    const char *config_file;
    const char *db;
    bool table;
    const char *opt[NOPT]; /* O_x -> the text given, or NULL */
    unsigned opts_given;   /* OPT_x bits */
    char **args;           /* after the command name */
    int nargs;

    struct config cfg;
    struct twin_store *store;
    struct twin_txn *txn;
    msgpack_sbuffer out; /* JSON under construction */
    msgpack_sbuffer req; /* an MQTT request under construction */
    msgpack_packer pk;   /* into req */
    msgpack_zone zone;   /* decoded arguments and replies */
};

struct command {
    const char *name;
    const char *usage; /* what follows the name */
    const char *help;
    int min_args, max_args;
    unsigned opts;    /* OPT_* it accepts */
    bool needs_store; /* open the store and a read transaction before run */
    int (*run)(struct ctl *ctl);
};

static int cmd_get(struct ctl *ctl);
static int cmd_list(struct ctl *ctl);
static int cmd_query(struct ctl *ctl);
static int cmd_history(struct ctl *ctl);
static int cmd_stats(struct ctl *ctl);
static int cmd_top(struct ctl *ctl);
static int cmd_help(struct ctl *ctl);
static int cmd_set_desired(struct ctl *ctl);
static int cmd_send(struct ctl *ctl);
static int cmd_commands(struct ctl *ctl);
static int cmd_model(struct ctl *ctl);
static int cmd_rules(struct ctl *ctl);
static int cmd_backup(struct ctl *ctl);
static int cmd_restore(struct ctl *ctl);
static int cmd_wave(struct ctl *ctl);
static int cmd_export(struct ctl *ctl);
static int cmd_import(struct ctl *ctl);
static int cmd_dispatch(struct ctl *ctl);

static const struct command commands[] = {
    {"get", "ID", "print one twin document", 1, 1, 0, true, cmd_get},
    {"list", "[--prefix P] [--limit N]", "print twins in id order, one per line", 0, 0,
     OPT_PREFIX | OPT_LIMIT, true, cmd_list},
    {"query", "[EXPR] [--fields F1,F2] [--order [-]EXPR] [--limit N] [--cursor C] [--prefix P]",
     "print the twins where EXPR (the rules' language) is true, one per line: their FIELDS, in "
     "id order or by --order ('-': descending); every page unless --limit",
     0, 1, OPT_FIELDS | OPT_ORDER | OPT_LIMIT | OPT_CURSOR | OPT_PREFIX, true, cmd_query},
    {"history", "ID PATH [--since 10m | --from T] [--to T] [--step 1m]",
     "print the history of reported.PATH, oldest first; with --step, min/max/avg/count per "
     "bucket. T: ms since the epoch, 2026-12-07T10:00:00Z or -10m",
     2, 2, OPT_SINCE | OPT_FROM | OPT_TO | OPT_STEP, true, cmd_history},
    {"wave", "ID PATH [--since 10s]",
     "print the waveform kept of reported.PATH (history.waveforms): chunks of samples", 2, 2,
     OPT_SINCE, true, cmd_wave},
    {"stats", "", "print store statistics", 0, 0, 0, true, cmd_stats},
    {"top", "[--fields PATH=LABEL,...] [--prefix P] [--interval 1s] [--seconds N] [--wait 10s]",
     "a live table of the twins, redrawn every interval", 0, 0,
     OPT_FIELDS | OPT_PREFIX | OPT_LIMIT | OPT_INTERVAL | OPT_SECONDS | OPT_WAIT, false, cmd_top},
    {"set-desired", "ID '<json>' [--version N]",
     "merge into the twin's desired state over MQTT; print the reply", 2, 2, OPT_VERSION | OPT_MQTT,
     false, cmd_set_desired},
    {"send", "ID CMD ['<json args>'] [--expires 30s]",
     "queue a command for the device over MQTT; print the reply", 2, 3, OPT_EXPIRES | OPT_MQTT,
     false, cmd_send},
    {"commands", "ID", "print the twin's commands, oldest first", 1, 1, 0, true, cmd_commands},
    {"dispatch", "[NAME]",
     "print the open demands and assignments of every dispatch (or NAME), one per line", 0, 1, 0,
     true, cmd_dispatch},
    {"backup", "FILE [--quiet]",
     "write a consistent, compacted copy of the store (while the hub runs) to a new FILE", 1, 1,
     OPT_QUIET, false, cmd_backup},
    {"restore", "FILE DIR [--quiet]",
     "check a backup and restore it into the empty or new directory DIR", 2, 2, OPT_QUIET, false,
     cmd_restore},
    {"export", "[--prefix P] [--history] [--quiet]",
     "write twins (with --history, their history too) as JSON Lines to stdout, in id order", 0, 0,
     OPT_PREFIX | OPT_HISTORY | OPT_QUIET, false, cmd_export},
    {"import", "FILE [--quiet]",
     "load an export into a store no hub runs on; a bad line changes nothing", 1, 1, OPT_QUIET,
     false, cmd_import},
    {"model", "info FILE | predict FILE [--proba]",
     "describe a .twm model (JSON), or predict CSV rows read from stdin", 2, 3, 0, false,
     cmd_model},
    {"rules", "check FILE | state ID",
     "validate a rules file without a hub (exit 0 valid, 1 invalid), or print each rule's "
     "state for a twin",
     2, 2, 0, false, cmd_rules},
    {"help", "", "print this text", 0, 0, 0, false, cmd_help},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])


static void usage(FILE *f)
{
    fprintf(f, "usage: twinctl [-c FILE] [--db PATH] [--table] COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char head[256];
        int n = snprintf(head, sizeof head, "%s %s", commands[i].name, commands[i].usage);
        if (n <= 34) /* the description beside it, or on the next line under the column */
            fprintf(f, "  %-34s %s\n", head, commands[i].help);
        else
            fprintf(f, "  %s\n  %-34s %s\n", head, "", commands[i].help);
    }
    fprintf(f, "\noptions:\n"
               "  -c, --config FILE    read store.path (and the rest) from this YAML file\n"
               "      --db PATH        the LMDB directory (overrides TWINHUB_STORE_PATH and "
               "the file)\n"
               "      --table          aligned text for people instead of JSON\n"
               "      --broker URL     the broker for set-desired and send (else broker.url)\n"
               "      --ca/--cert/--key FILE  TLS files (else broker.tls.*)\n"
               "      --timeout 10s    how long set-desired and send wait for the reply\n"
               "  -h, --help           this text\n"
               "  -V, --version        the version\n"
               "\nexit status: 0 found, 1 not found, 2 usage or I/O error; set-desired and send:\n"
               "0 accepted, 1 rejected, 2 timeout, usage or connection error\n");
}

/* ---------------------------------------------------------------------------------------------
 * Output helpers
 * ------------------------------------------------------------------------------------------ */

/* Writes obj as one line of JSON. */
static int emit_json(struct ctl *ctl, const msgpack_object *obj)
{
    msgpack_sbuffer_clear(&ctl->out);
    if (twin_json_write(obj, &ctl->out) < 0)
        return ctl_fail(EXIT_ERROR, "out of memory");
    fwrite(ctl->out.data, 1, ctl->out.size, stdout);
    fputc('\n', stdout);
    return 0;
}



static msgpack_object str_obj(const char *s)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)strlen(s);
    return o;
}

static msgpack_object uint_obj(uint64_t v)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER};
    o.via.u64 = v;
    return o;
}

static msgpack_object int_obj(int64_t v)
{
    if (v >= 0)
        return uint_obj((uint64_t)v);
    msgpack_object o = {.type = MSGPACK_OBJECT_NEGATIVE_INTEGER};
    o.via.i64 = v;
    return o;
}

/* A history value: whole numbers print as integers (72, not 72.0). */
static msgpack_object num_obj(double v)
{
    if (isfinite(v) && fabs(v) < 9007199254740992.0 && v == (double)(int64_t)v)
        return int_obj((int64_t)v);
    msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64};
    o.via.f64 = v;
    return o;
}

/* ---------------------------------------------------------------------------------------------
 * The store
 * ------------------------------------------------------------------------------------------ */

static int open_store(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    const char *path = ctl->cfg.db_path;
    struct stat st;

    if (stat(path, &st) != 0)
        return ctl_fail(EXIT_ERROR, "no database at %s (set --db, TWINHUB_STORE_PATH or store.path)",
                    path);
    struct twin_store_options so = ctl_store_options(&ctl->cfg, path, true);
    int rc = twin_store_open(&ctl->store, &so, err);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot open %s: %s", path, err);
    rc = twin_store_read_begin(ctl->store, &ctl->txn, err);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read %s: %s", path, err);
    return 0;
}

static int check_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > TWIN_ID_MAX)
        return ctl_fail(EXIT_ERROR, "'%.*s' is not a twin id (1 to %d bytes)", 140, id, TWIN_ID_MAX);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * get
 * ------------------------------------------------------------------------------------------ */

static bool is_timestamp(const char *path)
{
    size_t n = strlen(path);
    return strcmp(path, "last_seen") == 0 || strcmp(path, "created") == 0 ||
           strncmp(path, "meta.", 5) == 0 ||
           (strncmp(path, "predicted.", 10) == 0 && n > 3 && strcmp(path + n - 3, ".ts") == 0);
}

/* Prints "path = value" for every leaf under obj (maps are walked, anything else is a leaf). */
static int print_leaves(struct ctl *ctl, const msgpack_object *obj, char *path, size_t len,
                        size_t cap)
{
    if (obj->type == MSGPACK_OBJECT_MAP && obj->via.map.size > 0) {
        for (uint32_t i = 0; i < obj->via.map.size; i++) {
            const msgpack_object_kv *kv = &obj->via.map.ptr[i];
            size_t n = len;
            if (n && n + 1 < cap)
                path[n++] = '.';
            if (kv->key.type == MSGPACK_OBJECT_STR) {
                size_t k = kv->key.via.str.size;
                if (n + k >= cap)
                    k = cap - n - 1;
                memcpy(path + n, kv->key.via.str.ptr, k);
                n += k;
            } else {
                msgpack_sbuffer_clear(&ctl->out);
                if (twin_json_write(&kv->key, &ctl->out) < 0)
                    return ctl_fail(EXIT_ERROR, "out of memory");
                size_t k = ctl->out.size < cap - n - 1 ? ctl->out.size : cap - n - 1;
                memcpy(path + n, ctl->out.data, k);
                n += k;
            }
            path[n] = '\0';
            int rc = print_leaves(ctl, &kv->val, path, n, cap);
            if (rc)
                return rc;
        }
        path[len] = '\0';
        return 0;
    }

    char when[HUB_ISO_LEN];
    if (is_timestamp(path) && (obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER)) {
        printf("%s = %s\n", path, hub_iso_time(when, sizeof when, (int64_t)obj->via.u64));
        return 0;
    }
    msgpack_sbuffer_clear(&ctl->out);
    if (twin_json_write(obj, &ctl->out) < 0)
        return ctl_fail(EXIT_ERROR, "out of memory");
    printf("%s = %.*s\n", path, (int)ctl->out.size, ctl->out.data);
    return 0;
}

static int cmd_get(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN], path[TWIN_PATH_MAX * 2];
    const char *id = ctl->args[0];
    const void *buf;
    size_t len, off = 0;
    msgpack_object doc;

    if (check_id(id))
        return EXIT_ERROR;
    int rc = twin_get_raw(ctl->txn, id, strlen(id), &buf, &len, err);
    if (rc == -ENOENT)
        return ctl_fail(EXIT_NOT_FOUND, "no twin '%s' in %s", id, ctl->cfg.db_path);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read twin '%s': %s", id, err);
    if (msgpack_unpack(buf, len, &off, twin_txn_zone(ctl->txn), &doc) != MSGPACK_UNPACK_SUCCESS)
        return ctl_fail(EXIT_ERROR, "twin '%s' in %s is not valid msgpack", id, ctl->cfg.db_path);

    if (!ctl->table)
        return emit_json(ctl, &doc);
    path[0] = '\0';
    return print_leaves(ctl, &doc, path, 0, sizeof path);
}

/* ---------------------------------------------------------------------------------------------
 * list
 * ------------------------------------------------------------------------------------------ */

#define STOP 1 /* a callback's "enough", told apart from negative errors */

struct list_walk {
    struct ctl *ctl;
    msgpack_zone zone;
    uint64_t limit, seen;
    int id_width, version_width;
    bool measuring; /* first pass of --table: widths only */
    int rc;
};

static int list_one(void *vctx, const char *id, size_t id_len, const void *buf, size_t len)
{
    struct list_walk *w = vctx;
    char err[TWIN_ERR_LEN];

    if (w->limit && w->seen == w->limit)
        return STOP;
    w->seen++;
    msgpack_zone_clear(&w->zone);

    if (w->measuring) {
        uint64_t version = 0;
        char v[24];
        twin_doc_version(buf, len, &version);
        int vw = snprintf(v, sizeof v, "%llu", (unsigned long long)version);
        if ((int)id_len > w->id_width)
            w->id_width = (int)id_len;
        if (vw > w->version_width)
            w->version_width = vw;
        return 0;
    }

    if (!w->ctl->table) {
        msgpack_object doc;
        size_t off = 0;
        if (msgpack_unpack(buf, len, &off, &w->zone, &doc) != MSGPACK_UNPACK_SUCCESS) {
            w->rc = ctl_fail(EXIT_ERROR, "twin '%.*s' is not valid msgpack", (int)id_len, id);
            return STOP;
        }
        w->rc = emit_json(w->ctl, &doc);
        return w->rc ? STOP : 0;
    }

    struct twin_doc doc;
    char when[HUB_ISO_LEN];
    if (twin_doc_decode(buf, len, &w->zone, &doc, err) < 0) {
        w->rc = ctl_fail(EXIT_ERROR, "twin '%.*s': %s", (int)id_len, id, err);
        return STOP;
    }
    uint32_t nkeys = doc.reported.type == MSGPACK_OBJECT_MAP ? doc.reported.via.map.size : 0;
    printf("%-*.*s  %*llu  %-24s  %u\n", w->id_width, (int)id_len, id, w->version_width,
           (unsigned long long)doc.version,
           doc.last_seen > 0 ? hub_iso_time(when, sizeof when, doc.last_seen) : "-", nkeys);
    return 0;
}

static int cmd_list(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    struct list_walk w = {.ctl = ctl, .id_width = 2, .version_width = 7};
    const char *prefix = ctl->opt[O_PREFIX] ? ctl->opt[O_PREFIX] : "";

    if (ctl->opt[O_LIMIT]) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(ctl->opt[O_LIMIT], &end, 10);
        if (!*ctl->opt[O_LIMIT] || *end || errno || ctl->opt[O_LIMIT][0] == '-' || n == 0)
            return ctl_fail(EXIT_ERROR, "--limit: expected a whole number above 0, got '%s'",
                        ctl->opt[O_LIMIT]);
        w.limit = n;
    }
    if (!msgpack_zone_init(&w.zone, 4096))
        return ctl_fail(EXIT_ERROR, "out of memory");

    int rc = 0;
    if (ctl->table) {
        w.measuring = true;
        rc = twin_list(ctl->txn, prefix, strlen(prefix), list_one, &w, err);
        if (rc < 0)
            goto fail_list;
        w.measuring = false;
        w.seen = 0;
        printf("%-*s  %*s  %-24s  %s\n", w.id_width, "ID", w.version_width, "VERSION", "LAST_SEEN",
               "REPORTED");
    }
    rc = twin_list(ctl->txn, prefix, strlen(prefix), list_one, &w, err);
    if (rc < 0)
        goto fail_list;
    msgpack_zone_destroy(&w.zone);
    return w.rc;

fail_list:
    msgpack_zone_destroy(&w.zone);
    return ctl_fail(EXIT_ERROR, "cannot list twins in %s: %s", ctl->cfg.db_path, err);
}

/* ---------------------------------------------------------------------------------------------
 * history
 * ------------------------------------------------------------------------------------------ */

struct history_walk {
    struct ctl *ctl;
    uint64_t points;
    int rc;
};

static int history_one(void *vctx, int64_t ts, double value)
{
    struct history_walk *w = vctx;
    char when[HUB_ISO_LEN];

    w->points++;
    if (w->ctl->table) {
        char num[40];
        /* The shortest text that reads back as the same double. */
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(num, sizeof num, "%.*g", prec, value);
            if (strtod(num, NULL) == value)
                break;
        }
        printf("%s  %s\n", hub_iso_time(when, sizeof when, ts), num);
        return 0;
    }
    msgpack_object_kv kv[2] = {
        {str_obj("ts"), int_obj(ts)},
        {str_obj("value"), num_obj(value)},
    };
    msgpack_object o = {.type = MSGPACK_OBJECT_MAP};
    o.via.map.size = 2;
    o.via.map.ptr = kv;
    w->rc = emit_json(w->ctl, &o);
    return w->rc ? STOP : 0;
}

/* `ID PATH [--since D]` of history and wave: the id checked, PATH inside reported (a leading
 * "reported." dropped), --since as a time (INT64_MIN without it). Returns 0 or EXIT_ERROR. */
static int series_args(struct ctl *ctl, const char **path, int64_t *since)
{
    const char *p = ctl->args[1];
    if (check_id(ctl->args[0]))
        return EXIT_ERROR;
    if (strncmp(p, "reported.", 9) == 0)
        p += 9;
    if (!*p || strlen(p) > TWIN_PATH_MAX)
        return ctl_fail(EXIT_ERROR, "'%s' is not a field path (1 to %d bytes)", ctl->args[1],
                    TWIN_PATH_MAX);
    *path = p;
    *since = INT64_MIN;
    if (ctl->opt[O_SINCE]) {
        uint64_t ms;
        if (config_parse_duration_ms(ctl->opt[O_SINCE], 1000, &ms) < 0 || ms > (uint64_t)INT64_MAX)
            return ctl_fail(EXIT_ERROR, "--since: expected a duration (30s, 10m, 1h, 1d), got '%s'",
                        ctl->opt[O_SINCE]);
        *since = hub_now_ms() - (int64_t)ms;
    }
    return 0;
}

static int cmd_history(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    const char *id = ctl->args[0], *path;
    const void *buf;
    size_t len;
    int64_t since;

    if (series_args(ctl, &path, &since))
        return EXIT_ERROR;
    int rc = twin_get_raw(ctl->txn, id, strlen(id), &buf, &len, err);
    if (rc == -ENOENT)
        return ctl_fail(EXIT_NOT_FOUND, "no twin '%s' in %s", id, ctl->cfg.db_path);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read twin '%s': %s", id, err);
    if (ctl->opts_given & (OPT_FROM | OPT_TO | OPT_STEP)) {
        if (ctl->opt[O_SINCE] && ctl->opt[O_FROM])
            return ctl_fail(EXIT_ERROR, "history takes --since or --from, not both");
        char since_text[32];
        const char *from = ctl->opt[O_FROM];
        if (ctl->opt[O_SINCE]) {
            snprintf(since_text, sizeof since_text, "%lld", (long long)since);
            from = since_text;
        }
        return ctl_history_range(ctl->txn, id, path, from, ctl->opt[O_TO], ctl->opt[O_STEP],
                                 ctl->table);
    }

    struct history_walk w = {.ctl = ctl};
    rc = twin_history_read(ctl->txn, id, strlen(id), path, strlen(path), since, history_one, &w,
                           err);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read history of '%s' %s: %s", id, path, err);
    if (w.rc)
        return w.rc;
    if (w.points == 0)
        return ctl_fail(EXIT_NOT_FOUND, "no history of reported.%s for twin '%s'%s%s", path, id,
                    ctl->opt[O_SINCE] ? " in the last " : "",
                    ctl->opt[O_SINCE] ? ctl->opt[O_SINCE] : "");
    return EXIT_FOUND;
}

/* ---------------------------------------------------------------------------------------------
 * query (ctl_query.c)
 * ------------------------------------------------------------------------------------------ */

static int cmd_query(struct ctl *ctl)
{
    struct ctl_query_args a = {.where = ctl->nargs ? ctl->args[0] : NULL,
                               .fields = ctl->opt[O_FIELDS],
                               .order = ctl->opt[O_ORDER],
                               .cursor = ctl->opt[O_CURSOR],
                               .prefix = ctl->opt[O_PREFIX],
                               .limit = ctl->opt[O_LIMIT],
                               .table = ctl->table};
    return ctl_query_main(ctl->txn, &a);
}

/* ---------------------------------------------------------------------------------------------
 * wave
 * ------------------------------------------------------------------------------------------ */

struct wave_walk {
    struct ctl *ctl;
    uint64_t chunks, samples;
};

/* {"ts":..,"rate":..,"samples":[...]} per chunk, one JSON array in all; --table: ts value */
static int wave_one(void *ctx, int64_t ts, double rate, const float *x, size_t n)
{
    struct wave_walk *w = ctx;
    if (w->ctl->table) {
        for (size_t i = 0; i < n; i++)
            printf("%.3f\t%.9g\n", (double)ts / 1000.0 + (double)i / rate, (double)x[i]);
    } else {
        printf("%s{\"ts\":%lld,\"rate\":%.9g,\"samples\":[", w->chunks ? "," : "[",
               (long long)ts, rate);
        for (size_t i = 0; i < n; i++)
            printf("%s%.9g", i ? "," : "", (double)x[i]);
        printf("]}");
    }
    w->chunks++;
    w->samples += n;
    return 0;
}

static int cmd_wave(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    const char *id = ctl->args[0], *path;
    int64_t since;
    if (series_args(ctl, &path, &since))
        return EXIT_ERROR;
    struct wave_walk w = {.ctl = ctl};
    int rc = twin_wave_read(ctl->txn, id, strlen(id), path, strlen(path), since, INT64_MAX,
                            wave_one, &w, err);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read the waveform of '%s' %s: %s", id, path, err);
    if (w.chunks == 0)
        return ctl_fail(EXIT_NOT_FOUND, "no waveform of reported.%s for twin '%s'%s%s", path, id,
                    ctl->opt[O_SINCE] ? " in the last " : "",
                    ctl->opt[O_SINCE] ? ctl->opt[O_SINCE] : "");
    if (!ctl->table)
        printf("]\n");
    return EXIT_FOUND;
}

/* ---------------------------------------------------------------------------------------------
 * stats
 * ------------------------------------------------------------------------------------------ */

/* One line per model for the table: "model NAME  key=value ..." */
static void print_models(const msgpack_object *models)
{
    for (uint32_t i = 0; models->type == MSGPACK_OBJECT_MAP && i < models->via.map.size; i++) {
        const msgpack_object_kv *m = &models->via.map.ptr[i];
        printf("%-16s%.*s", "model", (int)m->key.via.str.size, m->key.via.str.ptr);
        for (uint32_t k = 0; m->val.type == MSGPACK_OBJECT_MAP && k < m->val.via.map.size; k++) {
            const msgpack_object_kv *f = &m->val.via.map.ptr[k];
            printf(" %.*s=", (int)f->key.via.str.size, f->key.via.str.ptr);
            if (f->val.type == MSGPACK_OBJECT_FLOAT64)
                printf("%.4g", f->val.via.f64);
            else
                printf("%llu", (unsigned long long)f->val.via.u64);
        }
        putchar('\n');
    }
}

static int cmd_stats(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    struct twin_stats st;

    int rc = twin_store_stats(ctl->txn, &st, err);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read statistics of %s: %s", ctl->cfg.db_path, err);
    /* the models' scores, summed over twins, as an object in ctl->zone (strings in sb) */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_object models;
    size_t off = 0;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rc = ctl_models_pack(ctl->txn, &pk, err);
    if (rc == 0 && msgpack_unpack(sb.data, sb.size, &off, &ctl->zone, &models) !=
                       MSGPACK_UNPACK_SUCCESS) {
        snprintf(err, sizeof(err), "out of memory");
        rc = -ENOMEM;
    }
    if (rc < 0) {
        msgpack_sbuffer_destroy(&sb);
        return ctl_fail(EXIT_ERROR, "cannot read the models' records of %s: %s", ctl->cfg.db_path,
                    err);
    }

    const struct {
        const char *name;
        uint64_t value;
        bool bytes;
    } rows[] = {
        {"twins", st.twins, false},
        {"history_series", st.history_series, false},
        {"history_points", st.history_points, false},
        {"outbox", st.outbox, false},
        {"map_size", st.map_size, true},
        {"used_bytes", st.used_bytes, true},
        {"last_txn", st.last_txn, false},
        {"schema", st.schema, false},
    };
    enum { NROWS = sizeof rows / sizeof rows[0] };

    if (ctl->table) {
        printf("%-16s%s\n", "path", ctl->cfg.db_path);
        for (size_t i = 0; i < NROWS; i++) {
            printf("%-16s%llu", rows[i].name, (unsigned long long)rows[i].value);
            if (rows[i].bytes)
                printf(" (%.1f MiB)", (double)rows[i].value / (1024.0 * 1024.0));
            putchar('\n');
        }
        print_models(&models);
        msgpack_sbuffer_destroy(&sb);
        return EXIT_FOUND;
    }
    msgpack_object_kv kv[NROWS + 2];
    kv[0].key = str_obj("path");
    kv[0].val = str_obj(ctl->cfg.db_path);
    for (size_t i = 0; i < NROWS; i++) {
        kv[i + 1].key = str_obj(rows[i].name);
        kv[i + 1].val = uint_obj(rows[i].value);
    }
    kv[NROWS + 1].key = str_obj("models");
    kv[NROWS + 1].val = models;
    msgpack_object o = {.type = MSGPACK_OBJECT_MAP};
    o.via.map.size = NROWS + 2;
    o.via.map.ptr = kv;
    rc = emit_json(ctl, &o);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* A live table; the store is opened by top itself, which can wait for it to appear. */
static int cmd_top(struct ctl *ctl)
{
    struct top_options o = {.db_path = ctl->cfg.db_path,
                            .prefix = ctl->opt[O_PREFIX] ? ctl->opt[O_PREFIX] : "",
                            .interval_ms = 1000,
                            .wait_ms = 0};
    char err[CONFIG_ERR_LEN];
    uint64_t v;
    if (top_parse_fields(&o,
                         ctl->opt[O_FIELDS] ? ctl->opt[O_FIELDS]
                                            : "reported.heart_rate=HR,reported.spo2=SpO2",
                         err, sizeof(err)) < 0)
        return ctl_fail(EXIT_ERROR, "%s", err);
    const struct {
        const char *text, *name;
        uint64_t unit, *out;
    } durations[] = {
        {ctl->opt[O_INTERVAL], "--interval", 1, &o.interval_ms},
        {ctl->opt[O_SECONDS], "--seconds", 1000, &o.seconds},
        {ctl->opt[O_WAIT], "--wait", 1, &o.wait_ms},
    };
    for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
        if (!durations[i].text)
            continue;
        if (config_parse_duration_ms(durations[i].text, durations[i].unit, &v) < 0)
            return ctl_fail(EXIT_ERROR, "%s: bad duration '%s'", durations[i].name, durations[i].text);
        *durations[i].out = v;
    }
    o.seconds /= 1000;
    if (ctl->opt[O_LIMIT]) {
        char *end;
        unsigned long n = strtoul(ctl->opt[O_LIMIT], &end, 10);
        if (*end || n == 0 || n > 100000)
            return ctl_fail(EXIT_ERROR, "--limit: expected 1..100000, got '%s'", ctl->opt[O_LIMIT]);
        o.limit = (unsigned)n;
    }
    return top_run(&o);
}

/* ---------------------------------------------------------------------------------------------
 * Writes over MQTT: set-desired, send
 *
 * A clean MQTT 5 session with a client id of its own (twinctl-<pid>-<random>), subscribed to
 * a private response topic under the twins prefix (twins/_replies/<client id>, which the hub
 * accepts); when that topic would lie in the hub's scheme (odd prefixes), to <request>/accepted
 * and /rejected instead. The request carries a token, also sent as the correlation data; the
 * first message that matches either is the reply. A reply with a `code` is a rejection.
 * ------------------------------------------------------------------------------------------ */

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char token[64];
    size_t token_len;
    bool got;
    char *payload; /* the reply, copied off Paho's thread */
    size_t len;
    char down[160]; /* why the connection went down, for the error line */
};

static void on_reply(void *vctx, const struct bridge_msg *m)
{
    struct waiter *w = vctx;
    bool mine = m->correlation ? m->correlation_len == w->token_len &&
                                     memcmp(m->correlation, w->token, w->token_len) == 0
                               : memmem(m->payload, m->len, w->token, w->token_len) != NULL;
    if (!mine)
        return;
    pthread_mutex_lock(&w->lock);
    if (!w->got && (w->payload = malloc(m->len + 1)) != NULL) {
        memcpy(w->payload, m->payload, m->len);
        w->len = m->len;
        w->got = true;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
}

static void on_conn(void *vctx, bool connected, const char *reason)
{
    struct waiter *w = vctx;
    if (connected)
        return;
    pthread_mutex_lock(&w->lock);
    snprintf(w->down, sizeof w->down, "%s", reason ? reason : "connection lost");
    pthread_mutex_unlock(&w->lock);
}

static void on_bridge_log(void *ctx, enum bridge_log_level level, const char *msg)
{
    (void)ctx, (void)level, (void)msg; /* the one-line reason on stderr is ours */
}

static int parse_duration(const char *text, const char *name, uint64_t unit, uint64_t *out)
{
    if (config_parse_duration_ms(text, unit, out) < 0 || *out > (uint64_t)INT64_MAX)
        return ctl_fail(EXIT_ERROR, "%s: expected a duration (500ms, 30s, 10m, 1h), got '%s'", name,
                    text);
    return 0;
}

/* A JSON object from the command line, into ctl->zone. */
static int json_arg(struct ctl *ctl, const char *text, const char *what, msgpack_object *out)
{
    char err[TWIN_ERR_LEN];
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    const char *p = text;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p != '{')
        return ctl_fail(EXIT_ERROR, "%s: expected a JSON object, got '%.60s'", what, text);
    if (twin_input_decode(text, strlen(text), &lim, &ctl->zone, out, err) < 0 ||
        out->type != MSGPACK_OBJECT_MAP)
        return ctl_fail(EXIT_ERROR, "%s: not a valid JSON object: %s", what, err);
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Publishes the request in ctl->req (a msgpack map still missing its token: `nkeys` keys so
 * far, packed after the map header that request_begin left room for) to `kind` of twin `id`,
 * waits for the reply, prints it. */
static int request(struct ctl *ctl, enum bridge_topic_kind kind, const char *id)
{
    char err[BRIDGE_ERR_LEN > CONFIG_ERR_LEN ? BRIDGE_ERR_LEN : CONFIG_ERR_LEN];
    char topic[BRIDGE_TOPIC_MAX], reply_topic[BRIDGE_TOPIC_MAX], filters[2][BRIDGE_TOPIC_MAX + 16];
    char client_id[64];
    struct bridge_topics tp;
    uint64_t timeout_ms = 10000;
    int code = EXIT_ERROR;

    if (ctl->opt[O_TIMEOUT] && parse_duration(ctl->opt[O_TIMEOUT], "--timeout", 1000, &timeout_ms))
        return EXIT_ERROR;
    if (timeout_ms == 0 || timeout_ms > UINT32_MAX)
        return ctl_fail(EXIT_ERROR, "--timeout: expected a duration above 0, got '%s'",
                    ctl->opt[O_TIMEOUT]);
    const struct {
        const char *text, *key;
    } flags[] = {
        {ctl->opt[O_BROKER], "broker.url"},
        {ctl->opt[O_CA], "broker.tls.ca"},
        {ctl->opt[O_CERT], "broker.tls.cert"},
        {ctl->opt[O_KEY], "broker.tls.key"},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (flags[i].text && config_set(&ctl->cfg, flags[i].key, flags[i].text, err) < 0)
            return ctl_fail(EXIT_ERROR, "%s", err);
    if (bridge_topics_init(&tp, ctl->cfg.devices_prefix, ctl->cfg.twins_prefix, ctl->cfg.hub_prefix,
                           err) < 0)
        return ctl_fail(EXIT_ERROR, "topics: %s", err);
    if (bridge_topic_build(&tp, kind, id, strlen(id), topic, sizeof topic) < 0)
        return ctl_fail(EXIT_ERROR, "'%s' is not a twin id", id);

    uint32_t rnd;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = (uint32_t)hub_now_ms() ^ (uint32_t)getpid() << 16;
    snprintf(client_id, sizeof client_id, "twinctl-%ld-%08x", (long)getpid(), (unsigned)rnd);

    struct waiter w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    w.token_len =
        (size_t)snprintf(w.token, sizeof w.token, "%s-%lld", client_id, (long long)hub_now_ms());

    /* the private topic, unless the hub would read it as one of its own */
    snprintf(reply_topic, sizeof reply_topic, "%s_replies/%s", tp.twins, client_id);
    bool private = bridge_topic_parse(&tp, reply_topic, strlen(reply_topic), NULL, NULL) != 0 &&
                   strncmp(reply_topic, tp.devices, strlen(tp.devices)) != 0 &&
                   strncmp(reply_topic, tp.hub, strlen(tp.hub)) != 0;
    const char *subs[2] = {filters[0], filters[1]};
    if (private) {
        snprintf(filters[0], sizeof filters[0], "%s", reply_topic);
    } else {
        snprintf(filters[0], sizeof filters[0], "%s/accepted", topic);
        snprintf(filters[1], sizeof filters[1], "%s/rejected", topic);
    }

    /* the token ends the request */
    pack_str(&ctl->pk, "token", 5);
    pack_str(&ctl->pk, w.token, w.token_len);

    struct bridge_options o;
    bridge_options_init(&o);
    o.url = ctl->cfg.broker_url;
    o.client_id = client_id;
    o.username = ctl->cfg.username[0] ? ctl->cfg.username : NULL;
    o.password = ctl->cfg.password[0] ? ctl->cfg.password : NULL;
    o.mqtt_version = 5;
    o.clean_start = true;
    o.session_expiry_s = 0;
    o.connect_timeout_s = (unsigned)((timeout_ms + 999) / 1000);
    o.tls.ca = ctl->cfg.tls_ca[0] ? ctl->cfg.tls_ca : NULL;
    o.tls.cert = ctl->cfg.tls_cert[0] ? ctl->cfg.tls_cert : NULL;
    o.tls.key = ctl->cfg.tls_key[0] ? ctl->cfg.tls_key : NULL;
    o.tls.verify = ctl->cfg.tls_verify;
    o.subscriptions = subs;
    o.n_subscriptions = private ? 1 : 2;
    o.on_message = on_reply;
    o.on_connection = on_conn;
    o.on_log = on_bridge_log;
    o.ctx = &w;

    struct bridge_client *c = NULL;
    int64_t deadline = hub_now_ms() + (int64_t)timeout_ms;
    if (bridge_client_new(&c, &o, err) < 0 || bridge_client_start(c, err) < 0) {
        code = ctl_fail(EXIT_ERROR, "cannot connect to %s: %s", o.url, err);
        goto out;
    }
    if (bridge_client_wait_connected(c, (unsigned)timeout_ms) < 0) {
        pthread_mutex_lock(&w.lock);
        code = ctl_fail(EXIT_ERROR, "cannot connect to %s within %s: %s", o.url,
                    ctl->opt[O_TIMEOUT] ? ctl->opt[O_TIMEOUT] : "10s",
                    w.down[0] ? w.down : "no answer");
        pthread_mutex_unlock(&w.lock);
        goto out;
    }
    struct bridge_pub_props props = {.correlation = w.token,
                                     .correlation_len = w.token_len,
                                     .response_topic = private ? reply_topic : NULL};
    int rc =
        bridge_client_publish(c, topic, ctl->req.data, ctl->req.size, 1, false, &props, NULL, NULL);
    if (rc < 0) {
        code = ctl_fail(EXIT_ERROR, "cannot publish to %s: %s", topic, strerror(-rc));
        goto out;
    }

    struct timespec ts = {.tv_sec = deadline / 1000, .tv_nsec = (deadline % 1000) * 1000000};
    pthread_mutex_lock(&w.lock);
    while (!w.got && pthread_cond_timedwait(&w.cond, &w.lock, &ts) != ETIMEDOUT)
        ;
    bool got = w.got;
    pthread_mutex_unlock(&w.lock);
    if (!got) {
        code = ctl_fail(EXIT_ERROR, "no reply on %s within %s", private ? reply_topic : filters[0],
                    ctl->opt[O_TIMEOUT] ? ctl->opt[O_TIMEOUT] : "10s");
        goto out;
    }

    msgpack_object reply;
    char terr[TWIN_ERR_LEN];
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    lim.max_payload = w.len;
    if (twin_input_decode(w.payload, w.len, &lim, &ctl->zone, &reply, terr) < 0 ||
        reply.type != MSGPACK_OBJECT_MAP) {
        code = ctl_fail(EXIT_ERROR, "the reply is not a map: %s", terr);
        goto out;
    }
    bool rejected = false;
    for (uint32_t i = 0; i < reply.via.map.size; i++) {
        const msgpack_object *k = &reply.via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 4 &&
            memcmp(k->via.str.ptr, "code", 4) == 0)
            rejected = true;
    }
    code = emit_json(ctl, &reply);
    if (code == 0)
        code = rejected ? EXIT_NOT_FOUND : EXIT_FOUND;

out:
    bridge_client_free(c);
    free(w.payload);
    return code;
}

static int cmd_set_desired(struct ctl *ctl)
{
    msgpack_object desired;
    uint64_t version = 0;
    if (check_id(ctl->args[0]) || json_arg(ctl, ctl->args[1], "desired", &desired))
        return EXIT_ERROR;
    if (ctl->opt[O_VERSION]) {
        char *end;
        errno = 0;
        version = strtoull(ctl->opt[O_VERSION], &end, 10);
        if (!*ctl->opt[O_VERSION] || *end || errno || ctl->opt[O_VERSION][0] == '-')
            return ctl_fail(EXIT_ERROR, "--version: expected a whole number, got '%s'",
                        ctl->opt[O_VERSION]);
    }
    msgpack_pack_map(&ctl->pk, ctl->opt[O_VERSION] ? 3 : 2);
    pack_str(&ctl->pk, "desired", 7);
    msgpack_pack_object(&ctl->pk, desired);
    if (ctl->opt[O_VERSION]) {
        pack_str(&ctl->pk, "version", 7);
        msgpack_pack_uint64(&ctl->pk, version);
    }
    return request(ctl, BRIDGE_T_DESIRED_SET, ctl->args[0]);
}

static int cmd_send(struct ctl *ctl)
{
    msgpack_object args = {.type = MSGPACK_OBJECT_NIL};
    uint64_t expires = 0;
    const char *name = ctl->args[1];
    if (check_id(ctl->args[0]))
        return EXIT_ERROR;
    if (!*name || strlen(name) > TWIN_CMD_NAME_MAX)
        return ctl_fail(EXIT_ERROR, "'%s' is not a command name (1 to %d bytes)", name,
                    TWIN_CMD_NAME_MAX);
    if (ctl->nargs > 2 && json_arg(ctl, ctl->args[2], "args", &args))
        return EXIT_ERROR;
    if (ctl->opt[O_EXPIRES] && parse_duration(ctl->opt[O_EXPIRES], "--expires", 1000, &expires))
        return EXIT_ERROR;
    if (ctl->opt[O_EXPIRES] && expires == 0)
        return ctl_fail(EXIT_ERROR, "--expires: expected a duration above 0, got '%s'",
                    ctl->opt[O_EXPIRES]);
    msgpack_pack_map(&ctl->pk, 2 + (ctl->nargs > 2) + (ctl->opt[O_EXPIRES] != NULL));
    pack_str(&ctl->pk, "cmd", 3);
    pack_str(&ctl->pk, name, strlen(name));
    if (ctl->nargs > 2) {
        pack_str(&ctl->pk, "args", 4);
        msgpack_pack_object(&ctl->pk, args);
    }
    if (ctl->opt[O_EXPIRES]) {
        pack_str(&ctl->pk, "expires_in_ms", 13);
        msgpack_pack_uint64(&ctl->pk, expires);
    }
    return request(ctl, BRIDGE_T_CMD_SEND, ctl->args[0]);
}

/* ---------------------------------------------------------------------------------------------
 * commands (from LMDB)
 * ------------------------------------------------------------------------------------------ */

static int command_one(void *vctx, const struct twin_command *c, enum twin_command_state from)
{
    struct ctl *ctl = vctx;
    char created[HUB_ISO_LEN], expires[HUB_ISO_LEN];
    (void)from;
    if (ctl->table) {
        printf("%-16s  %-20.*s  %-9s  %-24s  %-24s  %u\n", c->id, (int)c->cmd_len, c->cmd,
               twin_command_state_name(c->state), hub_iso_time(created, sizeof created, c->created),
               c->expires ? hub_iso_time(expires, sizeof expires, c->expires) : "-", c->attempts);
        return 0;
    }
    msgpack_object_kv kv[9] = {
        {str_obj("id"), str_obj(c->id)},
        {str_obj("cmd"), {.type = MSGPACK_OBJECT_STR}},
        {str_obj("args"), c->args},
        {str_obj("state"), str_obj(twin_command_state_name(c->state))},
        {str_obj("created"), int_obj(c->created)},
        {str_obj("expires"), int_obj(c->expires)},
        {str_obj("updated"), int_obj(c->updated)},
        {str_obj("attempts"), uint_obj(c->attempts)},
        {str_obj("result"), c->result},
    };
    kv[1].val.via.str.ptr = c->cmd;
    kv[1].val.via.str.size = (uint32_t)c->cmd_len;
    msgpack_object o = {.type = MSGPACK_OBJECT_MAP};
    o.via.map.size = c->result.type == MSGPACK_OBJECT_NIL ? 8 : 9;
    o.via.map.ptr = kv;
    return emit_json(ctl, &o) ? STOP : 0;
}

static int cmd_commands(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    const char *id = ctl->args[0];
    const void *buf;
    size_t len;

    if (check_id(id))
        return EXIT_ERROR;
    int rc = twin_get_raw(ctl->txn, id, strlen(id), &buf, &len, err);
    if (rc == -ENOENT)
        return ctl_fail(EXIT_NOT_FOUND, "no twin '%s' in %s", id, ctl->cfg.db_path);
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read twin '%s': %s", id, err);
    if (ctl->table)
        printf("%-16s  %-20s  %-9s  %-24s  %-24s  %s\n", "ID", "CMD", "STATE", "CREATED", "EXPIRES",
               "ATTEMPTS");
    rc = twin_command_list(ctl->txn, id, strlen(id), command_one, ctl, err);
    if (rc == STOP)
        return EXIT_ERROR;
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot list the commands of '%s': %s", id, err);
    return EXIT_FOUND;
}

/* One record: {dispatch, demand, <the record's own keys: state, opened, priority, cost, and
 * when assigned or served resource, assigned, command; declined: the resources that declined
 * it>}. */
static int dispatch_one(void *vctx, const char *name, size_t name_len, const char *id,
                        size_t id_len, const void *buf, size_t len)
{
    struct ctl *ctl = vctx;
    msgpack_object rec;
    size_t off = 0;
    static char hname[] = "dispatch", hid[] = "demand";
    msgpack_zone_clear(&ctl->zone);
    if (msgpack_unpack(buf, len, &off, &ctl->zone, &rec) != MSGPACK_UNPACK_SUCCESS ||
        rec.type != MSGPACK_OBJECT_MAP || rec.via.map.size > 32) {
        fprintf(stderr, "twinctl: dispatch record %.*s/%.*s is unreadable; skipped\n",
                (int)name_len, name, (int)id_len, id);
        return 0;
    }
    if (ctl->table) {
        const msgpack_object *st = twin_value_get(&rec, "state", 5);
        const msgpack_object *res = twin_value_get(&rec, "resource", 8);
        const msgpack_object *opened = twin_value_get(&rec, "opened", 6);
        const msgpack_object *cost = twin_value_get(&rec, "cost", 4);
        char at[HUB_ISO_LEN];
        printf("%-16.*s  %-24.*s  %-9.*s  %-24.*s  %-24s  %.1f\n", (int)name_len, name, (int)id_len,
               id, st && st->type == MSGPACK_OBJECT_STR ? (int)st->via.str.size : 1,
               st && st->type == MSGPACK_OBJECT_STR ? st->via.str.ptr : "?",
               res && res->type == MSGPACK_OBJECT_STR ? (int)res->via.str.size : 1,
               res && res->type == MSGPACK_OBJECT_STR ? res->via.str.ptr : "-",
               opened && opened->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                   ? hub_iso_time(at, sizeof at, (int64_t)opened->via.u64)
                   : "-",
               cost && cost->type == MSGPACK_OBJECT_FLOAT64 ? cost->via.f64 : 0.0);
        return 0;
    }
    msgpack_object_kv kv[34];
    kv[0] = (msgpack_object_kv){str_obj(hname), {.type = MSGPACK_OBJECT_STR}};
    kv[0].val.via.str.ptr = name;
    kv[0].val.via.str.size = (uint32_t)name_len;
    kv[1] = (msgpack_object_kv){str_obj(hid), {.type = MSGPACK_OBJECT_STR}};
    kv[1].val.via.str.ptr = id;
    kv[1].val.via.str.size = (uint32_t)id_len;
    uint32_t n = 2;
    for (uint32_t i = 0; i < rec.via.map.size; i++)
        if (!(rec.via.map.ptr[i].key.type == MSGPACK_OBJECT_STR &&
              rec.via.map.ptr[i].key.via.str.size == 8 &&
              !memcmp(rec.via.map.ptr[i].key.via.str.ptr, "dispatch", 8)))
            kv[n++] = rec.via.map.ptr[i];
    msgpack_object o = {.type = MSGPACK_OBJECT_MAP};
    o.via.map.size = n;
    o.via.map.ptr = kv;
    return emit_json(ctl, &o) ? STOP : 0;
}

static int cmd_dispatch(struct ctl *ctl)
{
    char err[TWIN_ERR_LEN];
    const char *name = ctl->nargs ? ctl->args[0] : NULL;
    if (ctl->table)
        printf("%-16s  %-24s  %-9s  %-24s  %-24s  %s\n", "DISPATCH", "DEMAND", "STATE", "RESOURCE",
               "OPENED", "COST");
    int rc = twin_dispatch_list(ctl->txn, name, name ? strlen(name) : 0, dispatch_one, ctl, err);
    if (rc == STOP)
        return EXIT_ERROR;
    if (rc < 0)
        return ctl_fail(EXIT_ERROR, "cannot read the dispatch records: %s", err);
    return EXIT_FOUND;
}

static int cmd_help(struct ctl *ctl)
{
    (void)ctl;
    usage(stdout);
    return EXIT_FOUND;
}

/* ---------------------------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------------------------ */

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"db", required_argument, NULL, 'd'},
    {"table", no_argument, NULL, 't'},
    {"help", no_argument, NULL, 'h'},
    {"version", optional_argument, NULL, OPT_VAL + O_VERSION},
    {"prefix", required_argument, NULL, OPT_VAL + O_PREFIX},
    {"limit", required_argument, NULL, OPT_VAL + O_LIMIT},
    {"since", required_argument, NULL, OPT_VAL + O_SINCE},
    {"fields", required_argument, NULL, OPT_VAL + O_FIELDS},
    {"interval", required_argument, NULL, OPT_VAL + O_INTERVAL},
    {"seconds", required_argument, NULL, OPT_VAL + O_SECONDS},
    {"wait", required_argument, NULL, OPT_VAL + O_WAIT},
    {"expires", required_argument, NULL, OPT_VAL + O_EXPIRES},
    {"timeout", required_argument, NULL, OPT_VAL + O_TIMEOUT},
    {"broker", required_argument, NULL, OPT_VAL + O_BROKER},
    {"ca", required_argument, NULL, OPT_VAL + O_CA},
    {"cert", required_argument, NULL, OPT_VAL + O_CERT},
    {"key", required_argument, NULL, OPT_VAL + O_KEY},
    {"quiet", no_argument, NULL, OPT_VAL + O_QUIET},
    {"history", no_argument, NULL, OPT_VAL + O_HISTORY},
    {"order", required_argument, NULL, OPT_VAL + O_ORDER},
    {"cursor", required_argument, NULL, OPT_VAL + O_CURSOR},
    {"from", required_argument, NULL, OPT_VAL + O_FROM},
    {"to", required_argument, NULL, OPT_VAL + O_TO},
    {"step", required_argument, NULL, OPT_VAL + O_STEP},
    {NULL, 0, NULL, 0},
};

/* "--name" of the command-specific option whose bit is `bit` (one bit). */
static const char *opt_name(unsigned bit)
{
    static char buf[24];
    for (const struct option *o = long_opts; o->name; o++)
        if (o->val >= OPT_VAL && (1u << (o->val - OPT_VAL)) == bit) {
            snprintf(buf, sizeof(buf), "--%s", o->name);
            return buf;
        }
    return "?";
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Parses argv into ctl; returns the command, or NULL with *code set (help, version, error). */
static const struct command *parse_args(int argc, char **argv, struct ctl *ctl, int *code)
{
    bool help = false, show_version = false;
    int o;

    opterr = 0; /* our own one-line messages */
    while ((o = getopt_long(argc, argv, ":c:hV", long_opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            ctl->config_file = optarg;
            break;
        case 'd':
            ctl->db = optarg;
            break;
        case 't':
            ctl->table = true;
            break;
        case 'h':
            help = true;
            break;
        case OPT_VAL + O_VERSION:
            /* --version alone: the program's; --version N / --version=N: set-desired's (N is
             * the next argument unless that is an option or a command name) */
            if (!optarg && optind < argc && argv[optind][0] != '-' && !find_command(argv[optind]))
                optarg = argv[optind++];
            if (!optarg) {
                show_version = true;
                break;
            }
            ctl->opt[O_VERSION] = optarg;
            ctl->opts_given |= OPT_VERSION;
            break;
        case 'V':
            show_version = true;
            break;
        case ':':
            *code = ctl_fail(EXIT_ERROR, "%s needs a value (see twinctl --help)", argv[optind - 1]);
            return NULL;
        default:
            if (o >= OPT_VAL && o < OPT_VAL + NOPT) {
                /* --ca, --cert and --key are accepted wherever --broker is */
                unsigned i = (unsigned)(o - OPT_VAL);
                ctl->opt[i] = optarg;
                ctl->opts_given |= i >= O_BROKER && i <= O_KEY ? OPT_BROKER : 1u << i;
                break;
            }
            if (optopt)
                *code = ctl_fail(EXIT_ERROR, "unknown option '-%c' (see twinctl --help)", optopt);
            else
                *code =
                    ctl_fail(EXIT_ERROR, "unknown option '%s' (see twinctl --help)", argv[optind - 1]);
            return NULL;
        }
    }

    if (show_version) {
        printf("twinctl %s\n", TWINHUB_VERSION);
        *code = EXIT_FOUND;
        return NULL;
    }
    if (optind == argc) {
        usage(help ? stdout : stderr);
        *code = help ? EXIT_FOUND : EXIT_ERROR;
        return NULL;
    }
    const char *name = argv[optind];
    const struct command *cmd = find_command(name);
    if (!cmd) {
        *code = ctl_fail(EXIT_ERROR, "unknown command '%s' (see twinctl --help)", name);
        return NULL;
    }
    if (help) {
        printf("usage: twinctl [-c FILE] [--db PATH] [--table] %s %s\n  %s\n", cmd->name,
               cmd->usage, cmd->help);
        *code = EXIT_FOUND;
        return NULL;
    }
    ctl->args = argv + optind + 1;
    ctl->nargs = argc - optind - 1;
    if (ctl->nargs < cmd->min_args || ctl->nargs > cmd->max_args) {
        *code = ctl_fail(EXIT_ERROR, "usage: twinctl %s %s", cmd->name, cmd->usage);
        return NULL;
    }
    unsigned extra = ctl->opts_given & ~cmd->opts;
    if (extra) {
        *code = ctl_fail(EXIT_ERROR, "%s does not take %s", cmd->name, opt_name(extra & -extra));
        return NULL;
    }
    return cmd;
}

/* defaults < -c FILE < TWINHUB_* < --db, as twinhub builds its configuration. */
static int load_config(struct ctl *ctl)
{
    char err[CONFIG_ERR_LEN];
    config_defaults(&ctl->cfg);
    if (ctl->config_file && config_load_file(&ctl->cfg, ctl->config_file, err) < 0)
        return ctl_fail(EXIT_ERROR, "%s", err);
    if (config_load_env(&ctl->cfg, NULL, err) < 0)
        return ctl_fail(EXIT_ERROR, "%s", err);
    if (ctl->db && config_set(&ctl->cfg, "store.path", ctl->db, err) < 0)
        return ctl_fail(EXIT_ERROR, "--db: %s", err);
    return 0;
}

/* `rules` is ctl_rules.c's; `state` needs the store, `check` only the file. */
static int cmd_rules(struct ctl *ctl)
{
    if (!strcmp(ctl->args[0], "check"))
        return ctl_rules_check(ctl->args[1]);
    if (strcmp(ctl->args[0], "state") != 0)
        return ctl_fail(EXIT_ERROR, "usage: twinctl rules check FILE | state ID");
    int rc = check_id(ctl->args[1]);
    if (rc == 0)
        rc = open_store(ctl);
    if (rc)
        return rc;
    return ctl_rules_state(ctl->txn, ctl->args[1], ctl->cfg.rules_path, stdout);
}

/* `model` is ctl_model.c's: it needs no store, and its --proba must not meet getopt. */
static int cmd_backup(struct ctl *ctl)
{
    return ctl_backup_main(&ctl->cfg, ctl->args[0], ctl->opts_given & OPT_QUIET);
}

static int cmd_restore(struct ctl *ctl)
{
    return ctl_restore_main(&ctl->cfg, ctl->args[0], ctl->args[1], ctl->opts_given & OPT_QUIET);
}

static int cmd_export(struct ctl *ctl)
{
    return ctl_export_main(&ctl->cfg, ctl->opt[O_PREFIX] ? ctl->opt[O_PREFIX] : "",
                           ctl->opts_given & OPT_HISTORY, ctl->opts_given & OPT_QUIET);
}

static int cmd_import(struct ctl *ctl)
{
    return ctl_import_main(&ctl->cfg, ctl->args[0], ctl->opts_given & OPT_QUIET);
}

static int cmd_model(struct ctl *ctl)
{
    return ctl_model_main(ctl->nargs, ctl->args);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "model") == 0)
        return ctl_model_main(argc - 2, argv + 2);
    struct ctl ctl = {0};
    int code = EXIT_ERROR;

    const struct command *cmd = parse_args(argc, argv, &ctl, &code);
    if (!cmd)
        goto out;
    if (load_config(&ctl))
        goto out;
    msgpack_sbuffer_init(&ctl.out);
    msgpack_sbuffer_init(&ctl.req);
    msgpack_packer_init(&ctl.pk, &ctl.req, msgpack_sbuffer_write);
    if (!msgpack_zone_init(&ctl.zone, 4096)) {
        code = ctl_fail(EXIT_ERROR, "out of memory");
        goto fail_store;
    }
    if (cmd->needs_store && open_store(&ctl))
        goto fail_store;

    code = cmd->run(&ctl);

fail_store:
    if (ctl.txn)
        twin_store_read_end(ctl.txn);
    twin_store_close(ctl.store);
    msgpack_sbuffer_destroy(&ctl.out);
    msgpack_sbuffer_destroy(&ctl.req);
    msgpack_zone_destroy(&ctl.zone);
out:
    if (fflush(stdout) != 0 || ferror(stdout)) {
        ctl_fail(EXIT_ERROR, "writing output: %s", strerror(errno));
        code = EXIT_ERROR;
    }
    return code;
}
