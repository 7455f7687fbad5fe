/* top: `twinctl top`, a live table of the fleet's twins read straight from LMDB (id, chosen
 * fields, the rules firing for it, version, how long ago each device was last seen), redrawn
 * every interval. It reads only; the hub may or may not be running. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "rules.h"
#include "top.h"
#include "twins.h"

struct frame {
    const struct top_options *o;
    struct twin_txn *txn;
    int64_t now;
    unsigned rows, shown;
    uint64_t twins, versions, firing;
};

#define ALARMS_WIDTH 24

/* The names of the rules firing for one twin, comma-separated, cut at ALARMS_WIDTH. */
struct alarms {
    char text[ALARMS_WIDTH + 1];
    size_t len;
    unsigned n;
};

static int alarm_one(void *ctx, const char *id, size_t id_len, const char *rule, size_t rule_len,
                     const void *buf, size_t len)
{
    struct alarms *a = ctx;
    struct rules_record r;
    (void)id;
    (void)id_len;
    if (rules_record_decode(buf, len, &r) < 0 || r.state != RULES_FIRING)
        return 0;
    int n = snprintf(a->text + a->len, sizeof(a->text) - a->len, "%s%.*s", a->n ? "," : "",
                     (int)rule_len, rule);
    a->len += n > 0 ? (size_t)n : 0;
    if (a->len >= sizeof(a->text))
        a->len = sizeof(a->text) - 1;
    a->n++;
    return 0;
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}


static void print_value(const msgpack_object *v)
{
    if (!v) {
        printf(" %8s", "-");
        return;
    }
    switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        printf(" %8llu", (unsigned long long)v->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        printf(" %8lld", (long long)v->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        printf(" %8.1f", v->via.f64);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        printf(" %8s", v->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_STR:
        printf(" %8.*s", (int)(v->via.str.size > 8 ? 8 : v->via.str.size), v->via.str.ptr);
        break;
    default:
        printf(" %8s", "...");
        break;
    }
}

static uint64_t uint_at(const msgpack_object *doc, const char *key)
{
    const msgpack_object *v = twin_value_get(doc, key, strlen(key));
    if (!v)
        return 0;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return v->via.u64;
    return 0;
}

static int row(void *ctx, const char *id, size_t id_len, const void *buf, size_t len)
{
    struct frame *f = ctx;
    msgpack_zone zone;
    msgpack_object doc;
    size_t off = 0;
    f->twins++;
    msgpack_zone_init(&zone, 1024);
    if (msgpack_unpack(buf, len, &off, &zone, &doc) != MSGPACK_UNPACK_SUCCESS ||
        doc.type != MSGPACK_OBJECT_MAP) {
        msgpack_zone_destroy(&zone);
        return 0;
    }
    uint64_t version = uint_at(&doc, "version");
    f->versions += version;
    struct alarms al = {.len = 0};
    char err[TWIN_ERR_LEN];
    twin_rule_state_list(f->txn, id, id_len, alarm_one, &al, err);
    f->firing += al.n;
    if (f->shown < f->rows) {
        f->shown++;
        printf("%-16.*s", (int)id_len, id);
        for (unsigned i = 0; i < f->o->n_fields; i++) {
            const char *p = f->o->fields[i].path;
            print_value(twin_value_path(&doc, p, strlen(p)));
        }
        printf(" %-*s", ALARMS_WIDTH, al.n ? al.text : "-");
        const msgpack_object *seen = twin_value_get(&doc, "last_seen", 9);
        double age = -1;
        if (seen && seen->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            age = (double)(f->now - (int64_t)seen->via.u64) / 1000.0;
        printf(" %9llu", (unsigned long long)version);
        if (age >= 0)
            printf(" %8.1fs ago\n", age);
        else
            printf(" %12s\n", "never");
    }
    msgpack_zone_destroy(&zone);
    return 0;
}

static unsigned screen_rows(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 6)
        return ws.ws_row - 4u;
    return 0;
}

/* Opens the store, waiting up to wait_ms for the hub to create it. */
static int open_store(const char *path, uint64_t wait_ms, struct twin_store **s, char *err)
{
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    so.path = path;
    so.read_only = true;
    int64_t until = hub_now_ms() + (int64_t)wait_ms;
    for (;;) {
        int rc = twin_store_open(s, &so, err);
        if (rc != -ENOENT || hub_now_ms() >= until || stop)
            return rc;
        usleep(100 * 1000);
    }
}

int top_run(const struct top_options *o)
{
    char err[TWIN_ERR_LEN];
    struct twin_store *store;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int rc = open_store(o->db_path, o->wait_ms, &store, err);
    if (rc < 0) {
        fprintf(stderr, "twinctl: %s\n", err);
        return 2;
    }
    bool tty = isatty(STDOUT_FILENO);
    int64_t start = hub_now_ms(), last = start;
    uint64_t last_versions = 0;
    while (!stop) {
        struct frame f = {.o = o, .now = hub_now_ms()};
        f.rows = o->limit ? o->limit : (tty ? screen_rows() : 0);
        if (!f.rows)
            f.rows = 50;
        struct twin_txn *txn;
        if (twin_store_read_begin(store, &txn, err) < 0) {
            fprintf(stderr, "twinctl: %s\n", err);
            twin_store_close(store);
            return 2;
        }
        if (tty)
            fputs("\033[H\033[2J", stdout);
        printf("%-16s", "id");
        for (unsigned i = 0; i < o->n_fields; i++)
            printf(" %8s", o->fields[i].label);
        printf(" %-*s %9s %13s\n", ALARMS_WIDTH, "alarms", "version", "last seen");
        f.txn = txn;
        rc = twin_list(txn, o->prefix, strlen(o->prefix), row, &f, err);
        twin_store_read_end(txn);
        double dt = (double)(f.now - last) / 1000.0;
        printf("-- %llu twins, %.0f updates/s, %llu alarm%s firing%s%s\n",
               (unsigned long long)f.twins,
               dt > 0 && last_versions ? (double)(f.versions - last_versions) / dt : 0.0,
               (unsigned long long)f.firing, f.firing == 1 ? "" : "s",
               f.shown < f.twins ? " (more below)" : "", tty ? "; Ctrl-C to stop" : "");
        fflush(stdout);
        last = f.now;
        last_versions = f.versions;
        if (rc < 0) {
            fprintf(stderr, "twinctl: %s\n", err);
            break;
        }
        if (o->seconds && hub_now_ms() - start >= (int64_t)o->seconds * 1000)
            break;
        for (uint64_t slept = 0; slept < o->interval_ms && !stop; slept += 50)
            usleep(50 * 1000);
    }
    twin_store_close(store);
    return rc < 0 ? 2 : 0;
}

int top_parse_fields(struct top_options *o, const char *list, char *err, size_t errlen)
{
    o->n_fields = 0;
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (o->n_fields == TOP_MAX_FIELDS) {
            snprintf(err, errlen, "--fields: at most %d fields", TOP_MAX_FIELDS);
            return -EINVAL;
        }
        struct top_field *f = &o->fields[o->n_fields];
        const char *eq = memchr(p, '=', n);
        size_t plen = eq ? (size_t)(eq - p) : n;
        if (plen == 0 || plen >= sizeof(f->path)) {
            snprintf(err, errlen, "--fields: bad path '%.*s'", (int)n, p);
            return -EINVAL;
        }
        memcpy(f->path, p, plen);
        f->path[plen] = '\0';
        const char *label = eq ? eq + 1 : strrchr(f->path, '.');
        size_t llen = eq ? n - plen - 1 : 0;
        if (!eq)
            llen = strlen(label ? ++label : (label = f->path));
        snprintf(f->label, sizeof(f->label), "%.*s", (int)(llen > 8 ? 8 : llen), label);
        o->n_fields++;
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}
