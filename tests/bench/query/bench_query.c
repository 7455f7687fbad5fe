/* bench_query: what the fleet query and history ranges of query/ cost on a store of N ECG
 * monitors, without MQTT. It owns nothing but its store; it prints figures and never fails on
 * time.
 *
 * The store is filled through twin_telemetry_apply, as the hub would: per twin three readings
 * a minute apart (heart_rate 50..169, spo2, temperature; the last with 25 ECG samples), so
 * three history points per field, and 70% of the twins online. Then, each in its own read
 * transaction, timed over `runs` runs:
 *   where       reported.heart_rate > 120 and connected, limit 100, by id (the first page)
 *   where-all   the same, every page of 1000 followed through its cursor (a full scan)
 *   order       the same ordered by -reported.heart_rate, limit 100 (a full scan + selection)
 *   history     buckets of 60 s of one twin's heart_rate over the last hour, `runs` twins
 *
 *   bench_query [-n twins] [-r runs] [-k dir]    (-k: keep/reuse the store in dir)
 * BENCH_QUERY_TWINS in the environment sets the default of -n (10000). */
#include "query.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 5000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str(pk, strlen(k));
    msgpack_pack_str_body(pk, k, strlen(k));
}

struct fill {
    long from, to;
    int64_t t0;
    msgpack_sbuffer sb;
    msgpack_zone zone;
    char err[TWIN_ERR_LEN];
};

static int fill_fn(struct twin_txn *txn, void *ctx)
{
    struct fill *f = ctx;
    for (long d = f->from; d < f->to; d++) {
        char id[32];
        int n = snprintf(id, sizeof id, "ecg-%07ld", d);
        for (int m = 0; m < 3; m++) {
            msgpack_packer pk;
            msgpack_object o;
            size_t off = 0;
            msgpack_sbuffer_clear(&f->sb);
            msgpack_zone_clear(&f->zone);
            msgpack_packer_init(&pk, &f->sb, msgpack_sbuffer_write);
            msgpack_pack_map(&pk, m == 2 ? 6 : 5);
            pack_key(&pk, "seq");
            msgpack_pack_uint64(&pk, (uint64_t)m + 1);
            pack_key(&pk, "ts");
            msgpack_pack_int64(&pk, f->t0 - (2 - m) * 60000);
            pack_key(&pk, "heart_rate");
            msgpack_pack_int(&pk, 50 + (int)rnd(120));
            pack_key(&pk, "spo2");
            msgpack_pack_int(&pk, 90 + (int)rnd(10));
            pack_key(&pk, "temperature");
            msgpack_pack_double(&pk, 36.0 + rnd(150) / 100.0);
            if (m == 2) {
                pack_key(&pk, "ecg");
                msgpack_pack_array(&pk, 25);
                for (int i = 0; i < 25; i++)
                    msgpack_pack_int(&pk, (int)rnd(1500) - 300);
            }
            msgpack_unpack(f->sb.data, f->sb.size, &off, &f->zone, &o);
            struct twin_apply_result res;
            int rc =
                twin_telemetry_apply(txn, id, (size_t)n, &o, f->t0 - (2 - m) * 60000, &res, f->err);
            if (rc)
                return rc;
        }
        if (rnd(10) < 7) {
            struct twin_presence_result pr;
            int rc = twin_presence_apply(txn, id, (size_t)n, true, f->t0, &pr, f->err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int fill(struct twin_store *s, long n, int64_t t0)
{
    struct fill f = {.t0 = t0};
    char err[TWIN_ERR_LEN];
    double t = now_s();
    int rc = 0;
    msgpack_sbuffer_init(&f.sb);
    msgpack_zone_init(&f.zone, 4096);
    for (long d = 0; d < n && rc == 0; d += BATCH) {
        f.from = d;
        f.to = d + BATCH < n ? d + BATCH : n;
        rc = twin_store_write(s, fill_fn, &f, err);
        if (rc)
            fprintf(stderr, "bench_query: fill: %s %s\n", err, f.err);
    }
    msgpack_zone_destroy(&f.zone);
    msgpack_sbuffer_destroy(&f.sb);
    double dt = now_s() - t;
    printf("fill        %ld twins in %.1f s (%.0f twins/s)\n", n, dt, (double)n / dt);
    return rc;
}

struct timing {
    double ms;
    uint64_t scanned, matched, rows;
};

/* One query (every page when `all`), in one read transaction. */
static int time_query(struct twin_store *s, const char *where, const char *order, unsigned limit,
                      bool all, int64_t now, struct timing *t)
{
    char err[QUERY_ERR_LEN], terr[TWIN_ERR_LEN];
    static char cursor[QUERY_CURSOR_MAX];
    struct query_spec sp = {.where = where, .where_len = strlen(where), .limit = limit};
    struct query_limits l;
    struct twin_txn *txn;
    msgpack_sbuffer sb;
    int rc;

    query_limits_init(&l);
    if (order) {
        sp.order = order;
        sp.order_len = strlen(order);
    }
    memset(t, 0, sizeof *t);
    msgpack_sbuffer_init(&sb);
    double t0 = now_s();
    if ((rc = twin_store_read_begin(s, &txn, terr)) < 0)
        return rc;
    for (;;) {
        struct query *q;
        struct query_result res;
        msgpack_packer pk;
        if ((rc = query_new(&sp, &l, &q, err)) < 0)
            break;
        msgpack_sbuffer_clear(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc = query_run(q, txn, now, &pk, &res, err);
        query_free(q);
        if (rc < 0)
            break;
        t->scanned += res.scanned;
        t->matched += res.matched;
        t->rows += res.rows;
        if (!all || !res.more)
            break;
        memcpy(cursor, res.next, sizeof cursor);
        sp.cursor = cursor;
        sp.cursor_len = strlen(cursor);
    }
    twin_store_read_end(txn);
    t->ms = (now_s() - t0) * 1000.0;
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0)
        fprintf(stderr, "bench_query: %s\n", err);
    return rc;
}

int main(int argc, char **argv)
{
    const char *env = getenv("BENCH_QUERY_TWINS");
    long n = env ? atol(env) : 10000, runs = 5;
    const char *keep = NULL;
    char dir[] = "/tmp/bench_query.XXXXXX", err[TWIN_ERR_LEN];
    int o;

    while ((o = getopt(argc, argv, "n:r:k:")) != -1) {
        switch (o) {
        case 'n':
            n = atol(optarg);
            break;
        case 'r':
            runs = atol(optarg);
            break;
        case 'k':
            keep = optarg;
            break;
        default:
            fprintf(stderr, "usage: bench_query [-n twins] [-r runs] [-k dir]\n");
            return 2;
        }
    }
    if (n <= 0 || runs <= 0)
        return 2;
    if (!keep && !mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    const char *path = keep ? keep : dir;
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    struct twin_store *s;
    so.path = path;
    so.map_size = 256u << 20;
    so.max_map_size = 64ull << 30;
    so.writemap = true;
    so.max_twins = 0;
    if (twin_store_open(&s, &so, err) < 0) {
        fprintf(stderr, "bench_query: open %s: %s\n", path, err);
        return 2;
    }
    /* a kept store remembers when it was filled */
    char stamp[4096];
    snprintf(stamp, sizeof stamp, "%s/bench_query.t0", path);
    int64_t t0 = 0;
    long have = 0;
    FILE *f = fopen(stamp, "r");
    if (f) {
        if (fscanf(f, "%lld %ld", (long long *)&t0, &have) != 2)
            have = 0;
        fclose(f);
    }
    int rc = 0;
    if (have != n) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        t0 = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        rc = fill(s, n, t0);
        if (rc == 0 && (f = fopen(stamp, "w")) != NULL) {
            fprintf(f, "%lld %ld\n", (long long)t0, n);
            fclose(f);
        }
    }
    const char *where = "reported.heart_rate > 120 and connected";
    const struct {
        const char *name, *order;
        unsigned limit;
        bool all;
    } qs[] = {
        {"where", NULL, 100, false},
        {"where-all", NULL, 1000, true},
        {"order", "-reported.heart_rate", 100, false},
    };
    printf("twins %ld, runs %ld, where: %s\n", n, runs, where);
    for (size_t i = 0; i < sizeof qs / sizeof qs[0] && rc == 0; i++) {
        double best = 1e300, sum = 0;
        struct timing t;
        for (long r = 0; r < runs && rc == 0; r++) {
            rc = time_query(s, where, qs[i].order, qs[i].limit, qs[i].all, t0, &t);
            sum += t.ms;
            if (t.ms < best)
                best = t.ms;
        }
        if (rc == 0)
            printf("%-11s %10.3f ms/query (best %.3f)  scanned %llu  matched %llu  rows %llu  "
                   "%.0f twins/s\n",
                   qs[i].name, sum / (double)runs, best, (unsigned long long)t.scanned,
                   (unsigned long long)t.matched, (unsigned long long)t.rows,
                   (double)t.scanned / (best / 1000.0));
    }
    if (rc == 0) {
        struct twin_txn *txn;
        struct query_limits l;
        msgpack_sbuffer sb;
        query_limits_init(&l);
        msgpack_sbuffer_init(&sb);
        double t = now_s();
        rc = twin_store_read_begin(s, &txn, err);
        bool began = rc == 0;
        for (long r = 0; r < runs * 200 && rc == 0; r++) {
            char id[32];
            char qerr[QUERY_ERR_LEN];
            int len = snprintf(id, sizeof id, "ecg-%07ld", (long)rnd((uint32_t)n));
            struct query_range range = {"reported.heart_rate", 19, t0 - 3600000, t0, 60000, 0};
            msgpack_packer pk;
            msgpack_sbuffer_clear(&sb);
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            rc = query_history(txn, id, (size_t)len, &range, &l, &pk, qerr);
            if (rc < 0)
                fprintf(stderr, "bench_query: history: %s\n", qerr);
        }
        if (began)
            twin_store_read_end(txn);
        double dt = (now_s() - t) * 1000.0;
        printf("history     %10.4f ms/query (buckets of 60 s over 1 h, %ld twins)\n",
               dt / (double)(runs * 200), runs * 200);
        msgpack_sbuffer_destroy(&sb);
    }
    twin_store_close(s);
    if (!keep) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_query: could not remove %s\n", dir);
    }
    return rc ? 1 : 0;
}
