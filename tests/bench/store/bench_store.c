/* bench_store: what applying telemetry to the twin store costs, without MQTT. It owns nothing
 * but its temporary stores; it prints figures and never fails on time.
 *
 * Each message goes the way the hub's ingest takes it: twin_input_decode of an ECG-monitor
 * payload (seq, ts, heart_rate, spo2, temperature, ecg: 25 ints), then one twin_store_write
 * running twin_telemetry_apply, one transaction per message. Devices send in turn, so every
 * transaction touches a different twin than the last. Scenarios: store.sync os with and without
 * MDB_WRITEMAP, each with history on and off, and store.sync commit (fewer messages, each
 * commit waits for the disk). Each scenario runs in a fresh directory, which is removed.
 *
 *   bench_store [-n messages] [-d devices] [-c commit_messages] [-r runs] [-t dir] [-o text]
 */
#include "twins.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HISTORY_ON 600 /* history.max_points default */
#define ECG_SAMPLES 25

struct options {
    long messages, devices, commit_messages, runs;
    const char *dir;
    const char *only; /* run only the scenarios whose name contains it */
};

/* All payloads, encoded before the clock starts: message m is device m % devices. */
struct payloads {
    msgpack_sbuffer buf;
    size_t *off; /* messages + 1 offsets into buf */
    long n;
};

struct scenario {
    const char *name;
    enum twin_sync sync;
    bool writemap;
    unsigned history;
    bool commit; /* uses commit_messages */
};

struct figures {
    double us_per_msg;
    double sync_ms; /* the twin_store_sync after the last message */
    size_t used, map;
    long long file, disk;
    long applied;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void device_id(long d, char *out, size_t cap)
{
    snprintf(out, cap, "ecg-%04d", (int)(d % 10000)); /* devices <= 9999 */
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str(pk, strlen(k));
    msgpack_pack_str_body(pk, k, strlen(k));
}

/* One monitor reading: about 130 bytes (MEASUREMENTS.md measured 144-byte maps). */
static void pack_message(msgpack_packer *pk, uint64_t seq, int64_t ts)
{
    msgpack_pack_map(pk, 6);
    pack_key(pk, "seq");
    msgpack_pack_uint64(pk, seq);
    pack_key(pk, "ts");
    msgpack_pack_int64(pk, ts);
    pack_key(pk, "heart_rate");
    msgpack_pack_int(pk, 60 + (int)rnd(40));
    pack_key(pk, "spo2");
    msgpack_pack_int(pk, 94 + (int)rnd(6));
    pack_key(pk, "temperature");
    msgpack_pack_double(pk, 36.0 + rnd(150) / 100.0);
    pack_key(pk, "ecg");
    msgpack_pack_array(pk, ECG_SAMPLES);
    for (int i = 0; i < ECG_SAMPLES; i++)
        msgpack_pack_int(pk, (int)rnd(1500) - 300);
}

static int payloads_make(struct payloads *p, long n, long devices)
{
    msgpack_packer pk;
    int64_t t0 = wall_ms();

    msgpack_sbuffer_init(&p->buf);
    p->off = malloc(((size_t)n + 1) * sizeof *p->off);
    if (!p->off)
        return -ENOMEM;
    p->n = n;
    msgpack_packer_init(&pk, &p->buf, msgpack_sbuffer_write);
    for (long m = 0; m < n; m++) {
        uint64_t seq = (uint64_t)(m / devices) + 1;

        p->off[m] = p->buf.size;
        pack_message(&pk, seq, t0 + (int64_t)seq * 1000);
    }
    p->off[n] = p->buf.size;
    return 0;
}

static void payloads_free(struct payloads *p)
{
    msgpack_sbuffer_destroy(&p->buf);
    free(p->off);
}

/* ---------------------------------------------------------------------------------------------
 * One run
 * ------------------------------------------------------------------------------------------ */

struct apply {
    const char *id;
    size_t id_len;
    const msgpack_object *telemetry;
    int64_t now;
    struct twin_apply_result res;
    char err[TWIN_ERR_LEN];
};

static int apply_fn(struct twin_txn *txn, void *ctx)
{
    struct apply *a = ctx;

    return twin_telemetry_apply(txn, a->id, a->id_len, a->telemetry, a->now, &a->res, a->err);
}

static void rm_store(const char *dir)
{
    char path[PATH_MAX + 16];

    snprintf(path, sizeof path, "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
}

/* Decoding alone, for scale. */
static double decode_only(const struct payloads *p, long n)
{
    const struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    msgpack_zone zone;
    msgpack_object obj;
    char err[TWIN_ERR_LEN];
    double t0;

    msgpack_zone_init(&zone, 4096);
    t0 = now_s();
    for (long m = 0; m < n; m++) {
        msgpack_zone_clear(&zone);
        if (twin_input_decode(p->buf.data + p->off[m], p->off[m + 1] - p->off[m], &lim, &zone, &obj,
                              err)) {
            fprintf(stderr, "bench_store: decode: %s\n", err);
            exit(1);
        }
    }
    t0 = now_s() - t0;
    msgpack_zone_destroy(&zone);
    return t0 * 1e6 / (double)n;
}

static int run(const struct scenario *sc, const struct payloads *p, long n, long devices,
               const char *base, struct figures *f)
{
    const struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    struct twin_store *s = NULL;
    struct twin_txn *t;
    struct twin_stats st;
    struct stat sb;
    char dir[PATH_MAX], path[PATH_MAX + 16], err[TWIN_ERR_LEN];
    char(*id)[16] = NULL;
    msgpack_zone zone;
    double t0;
    int rc;

    if ((size_t)snprintf(dir, sizeof dir, "%s/bench-store-XXXXXX", base) >= sizeof dir) {
        fprintf(stderr, "bench_store: directory name too long: %s\n", base);
        return -ENAMETOOLONG;
    }
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench_store: mkdtemp %s: %s\n", dir, strerror(errno));
        return -errno;
    }
    o.path = dir;
    o.sync = sc->sync;
    o.writemap = sc->writemap;
    o.history_max_points = sc->history;
    o.max_clock_skew_ms = 0; /* its timestamps run ahead of the clock on purpose */
    rc = twin_store_open(&s, &o, err);
    if (rc) {
        fprintf(stderr, "bench_store: open: %s\n", err);
        rm_store(dir);
        return rc;
    }
    id = malloc((size_t)devices * sizeof *id);
    if (!id) {
        twin_store_close(s);
        rm_store(dir);
        return -ENOMEM;
    }
    for (long d = 0; d < devices; d++)
        device_id(d, id[d], sizeof id[d]);
    msgpack_zone_init(&zone, 4096);
    memset(f, 0, sizeof *f);

    t0 = now_s();
    for (long m = 0; m < n; m++) {
        msgpack_object obj;
        struct apply a;

        msgpack_zone_clear(&zone);
        rc = twin_input_decode(p->buf.data + p->off[m], p->off[m + 1] - p->off[m], &lim, &zone,
                               &obj, err);
        if (rc)
            break;
        a.id = id[m % devices];
        a.id_len = strlen(a.id);
        a.telemetry = &obj;
        a.now = wall_ms();
        a.err[0] = '\0';
        rc = twin_store_write(s, apply_fn, &a, err);
        if (rc) {
            if (a.err[0])
                snprintf(err, sizeof err, "%s", a.err);
            break;
        }
        if (a.res.outcome == TWIN_APPLIED)
            f->applied++;
    }
    f->us_per_msg = (now_s() - t0) * 1e6 / (double)n;
    if (rc) {
        fprintf(stderr, "bench_store: %s: %s (%d)\n", sc->name, err, rc);
        goto out;
    }
    t0 = now_s();
    rc = twin_store_sync(s, err);
    f->sync_ms = (now_s() - t0) * 1e3;
    if (rc) {
        fprintf(stderr, "bench_store: sync: %s\n", err);
        goto out;
    }
    rc = twin_store_read_begin(s, &t, err);
    if (rc == 0) {
        rc = twin_store_stats(t, &st, err);
        twin_store_read_end(t);
    }
    if (rc) {
        fprintf(stderr, "bench_store: stats: %s\n", err);
        goto out;
    }
    f->used = st.used_bytes;
    f->map = st.map_size;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    if (stat(path, &sb) == 0) {
        f->file = (long long)sb.st_size;
        f->disk = (long long)sb.st_blocks * 512;
    }
out:
    msgpack_zone_destroy(&zone);
    free(id);
    twin_store_close(s);
    rm_store(dir);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Main
 * ------------------------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_store [-n messages] [-d devices] [-c commit_messages] [-r runs] "
               "[-t dir] [-o text]\n"
               "  -n  messages per scenario (default 200000)\n"
               "  -d  devices, sending in turn (default 1000)\n"
               "  -c  messages for the store.sync commit scenarios (default 2000)\n"
               "  -r  runs of each scenario; the median is printed (default 3)\n"
               "  -t  directory for the temporary stores (default $TMPDIR or /tmp)\n"
               "  -o  only the scenarios whose name contains text (\"writemap\", \"commit\")\n");
}

static long arg_long(const char *s, const char *what)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v <= 0) {
        fprintf(stderr, "bench_store: %s must be a positive integer, got '%s'\n", what, s);
        exit(2);
    }
    return v;
}

static double mib(double bytes)
{
    return bytes / (1024.0 * 1024.0);
}

int main(int argc, char **argv)
{
    static const struct scenario scenarios[] = {
        {"sync os", TWIN_SYNC_OS, false, HISTORY_ON, false},
        {"sync os + writemap", TWIN_SYNC_OS, true, HISTORY_ON, false},
        {"sync os, history off", TWIN_SYNC_OS, false, 0, false},
        {"sync os + writemap, history off", TWIN_SYNC_OS, true, 0, false},
        {"sync commit", TWIN_SYNC_COMMIT, false, HISTORY_ON, true},
        {"sync commit + writemap", TWIN_SYNC_COMMIT, true, HISTORY_ON, true},
    };
    struct options opt = {200000, 1000, 2000, 3, NULL, NULL};
    struct payloads p;
    double *us;
    int c;

    while ((c = getopt(argc, argv, "n:d:c:r:t:o:h")) != -1) {
        switch (c) {
        case 'n':
            opt.messages = arg_long(optarg, "-n");
            break;
        case 'd':
            opt.devices = arg_long(optarg, "-d");
            break;
        case 'c':
            opt.commit_messages = arg_long(optarg, "-c");
            break;
        case 'r':
            opt.runs = arg_long(optarg, "-r");
            break;
        case 't':
            opt.dir = optarg;
            break;
        case 'o':
            opt.only = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || opt.devices > 9999) {
        usage(stderr);
        return 2;
    }
    if (!opt.dir)
        opt.dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    {
        long most = opt.messages > opt.commit_messages ? opt.messages : opt.commit_messages;

        if (payloads_make(&p, most, opt.devices)) {
            fprintf(stderr, "bench_store: out of memory\n");
            return 1;
        }
    }
    us = malloc((size_t)opt.runs * sizeof *us);
    if (!us)
        return 1;

    printf("bench_store: %ld devices in turn, payload %.0f bytes on average, one transaction "
           "per message, median of %ld run%s, stores in %s\n",
           opt.devices, (double)p.off[p.n] / (double)p.n, opt.runs, opt.runs == 1 ? "" : "s",
           opt.dir);
    printf("history on = %d points per (twin, field); heart_rate, spo2 and temperature are "
           "historized, the ecg array is not\n\n",
           HISTORY_ON);
    printf("%-32s %9s %9s %11s %10s %9s %9s %9s %9s\n", "scenario", "messages", "us/msg", "msgs/s",
           "sync ms", "used MiB", "file MiB", "disk MiB", "map MiB");
    for (long r = 0; r < opt.runs; r++)
        us[r] = decode_only(&p, opt.messages);
    qsort(us, (size_t)opt.runs, sizeof *us, cmp_double);
    printf("%-32s %9ld %9.2f %11.0f\n", "decode only (no store)", opt.messages, us[opt.runs / 2],
           1e6 / us[opt.runs / 2]);
    fflush(stdout);

    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        const struct scenario *sc = &scenarios[i];
        long n = sc->commit ? opt.commit_messages : opt.messages;
        struct figures f = {0}, last = {0};
        double sync_ms[64];
        long runs = opt.runs < 64 ? opt.runs : 64;

        if (opt.only && !strstr(sc->name, opt.only))
            continue;
        for (long r = 0; r < runs; r++) {
            if (run(sc, &p, n, opt.devices, opt.dir, &f)) {
                free(us);
                payloads_free(&p);
                return 1;
            }
            us[r] = f.us_per_msg;
            sync_ms[r] = f.sync_ms;
            last = f;
        }
        qsort(us, (size_t)runs, sizeof *us, cmp_double);
        qsort(sync_ms, (size_t)runs, sizeof *sync_ms, cmp_double);
        printf("%-32s %9ld %9.2f %11.0f %10.2f %9.1f %9.1f %9.1f %9.1f\n", sc->name, n,
               us[runs / 2], 1e6 / us[runs / 2], sync_ms[runs / 2], mib((double)last.used),
               mib((double)last.file), mib((double)last.disk), mib((double)last.map));
        if (last.applied != n)
            printf("  (only %ld of %ld messages applied)\n", last.applied, n);
        fflush(stdout);
    }
    printf("\nus/msg: decode + write transaction + commit, per message. sync ms: the "
           "twin_store_sync (forced flush) after the last message. used: pages in use; file: "
           "data.mdb's size; disk: blocks allocated to it; map: the LMDB map.\n");
    free(us);
    payloads_free(&p);
    return 0;
}
