/* bench_rules: what the rules engine costs. Prints figures; never fails on time.
 *
 * 1. Evaluations per second of a typical condition
 *    (reported.heart_rate > 120 and reported.spo2 < 94) on a decoded twin, the evaluator alone,
 *    and of a window condition (avg(reported.heart_rate, 60s) > 100) over 60 history points.
 * 2. The cost per telemetry message with 0, 1, 100 and 1,000 rules loaded, in a real LMDB store
 *    (store.sync os): decode, then one write transaction that applies the telemetry and runs
 *    the rules it touched, persisting their state, as the hub's ingest does. The N rules read
 *    N different fields (reported.f0 .. f<N-1>) plus heart_rate for the first, so a message
 *    (heart_rate, spo2, temperature) evaluates a handful of them, not N. A last scenario makes
 *    all 1,000 read heart_rate, each matching one device id: the glob filter's cost.
 * 3. What a model with a target adds, in a real LMDB store, one write transaction per step as
 *    in the hub: a prediction that is kept in the twin's record (read, predict with the twin's
 *    weights, write), the target arriving for it (read, score, one least-mean-squares step,
 *    write), and the target arriving with nothing waiting (read only: the common case). The
 *    model is tests/data/models/linear.twm (3 inputs, a scaler, learning); the arithmetic
 *    alone is in bench_models.
 *
 *   bench_rules [-n messages] [-d devices] [-e evaluations] [-t dir]
 */
#include "rules.h"
#include "twins.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* ---------------------------------------------------------------------------------------------
 * The evaluator alone
 * ------------------------------------------------------------------------------------------ */

static int history60(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                     void *cb_ctx)
{
    (void)ctx;
    (void)path;
    (void)len;
    for (int i = 0; i < 60; i++)
        cb(cb_ctx, since + 1000 * i, 80 + i % 7);
    return 0;
}

static void bench_eval(long n)
{
    static const char *const exprs[] = {
        "reported.heart_rate > 120 and reported.spo2 < 94",
        "avg(reported.heart_rate, 60s) > 100",
    };
    const char *json = "{\"heart_rate\": 130, \"spo2\": 92.5, \"temperature\": 37.1}";
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    msgpack_zone zone;
    msgpack_zone_init(&zone, 1024);
    struct twin_doc doc = {.id = "ecg-0001", .id_len = 8};
    char err[TWIN_ERR_LEN];
    twin_input_decode(json, strlen(json), &lim, &zone, &doc.reported, err);
    doc.meta_reported.type = doc.desired.type = doc.meta_desired.type = MSGPACK_OBJECT_NIL;
    doc.delta.type = doc.predicted.type = MSGPACK_OBJECT_NIL;
    for (size_t i = 0; i < sizeof(exprs) / sizeof(exprs[0]); i++) {
        struct rules_expr *e;
        char cerr[RULES_ERR_LEN];
        if (rules_expr_compile(exprs[i], strlen(exprs[i]), &e, cerr) < 0) {
            fprintf(stderr, "bench_rules: %s\n", cerr);
            exit(1);
        }
        struct rules_twin tw = {.doc = &doc, .now = 100000, .history = history60};
        struct rules_value v;
        long runs = i == 0 ? n : n / 20;
        long trues = 0;
        double t0 = now_s();
        for (long k = 0; k < runs; k++) {
            rules_expr_eval(e, &tw, &v, NULL);
            trues += rules_value_true(&v);
        }
        double dt = now_s() - t0;
        printf("eval  %-52s %11.0f evaluations/s  %7.1f ns each (%ld true)\n", exprs[i],
               (double)runs / dt, dt / (double)runs * 1e9, trues);
        rules_expr_free(e);
    }
    msgpack_zone_destroy(&zone);
}

/* ---------------------------------------------------------------------------------------------
 * Per message, in a real store
 * ------------------------------------------------------------------------------------------ */

struct host {
    struct twin_txn *txn;
    const char *id;
    size_t id_len;
    char err[TWIN_ERR_LEN];
};

static int h_get(void *ctx, const char *rule, size_t len, void *buf)
{
    struct host *h = ctx;
    unsigned char tmp[TWIN_RULE_STATE_MAX];
    size_t n;
    int rc = twin_rule_state_get(h->txn, h->id, h->id_len, rule, len, tmp, &n, h->err);
    if (rc == 0 && n == RULES_STATE_LEN)
        memcpy(buf, tmp, n);
    return rc == 0 && n != RULES_STATE_LEN ? -ENOENT : rc;
}

static int h_put(void *ctx, const char *rule, size_t len, const void *buf)
{
    struct host *h = ctx;
    return twin_rule_state_put(h->txn, h->id, h->id_len, rule, len, buf, RULES_STATE_LEN, h->err);
}

static int h_del(void *ctx, const char *rule, size_t len)
{
    struct host *h = ctx;
    return twin_rule_state_del(h->txn, h->id, h->id_len, rule, len, h->err);
}

static int h_list(void *ctx, int (*cb)(void *, const char *, size_t, const void *, size_t),
                  void *cb_ctx)
{
    (void)ctx;
    (void)cb;
    (void)cb_ctx;
    return 0;
}

static int h_action(void *ctx, const struct rules_fire *f, const struct rules_action *a)
{
    (void)ctx;
    (void)f;
    (void)a;
    return 0;
}

static int h_transition(void *ctx, const struct rules_fire *f)
{
    (void)ctx;
    (void)f;
    return 0;
}

static int h_history(void *ctx, const char *path, size_t len, int64_t since, twin_history_cb cb,
                     void *cb_ctx)
{
    struct host *h = ctx;
    return twin_history_read(h->txn, h->id, h->id_len, path, len, since, cb, cb_ctx, h->err);
}

struct msg_ctx {
    const msgpack_object *telemetry;
    const char *id;
    size_t id_len;
    const struct rules_set *rs;
    struct rules_scratch *sc;
    struct rules_changes changes;
    unsigned long evaluated;
};

static int apply_fn(struct twin_txn *txn, void *arg)
{
    struct msg_ctx *m = arg;
    struct twin_apply_result res;
    char err[TWIN_ERR_LEN];
    int64_t now = wall_ms();
    int rc = twin_telemetry_apply(txn, m->id, m->id_len, m->telemetry, now, &res, err);
    if (rc < 0 || !m->rs)
        return rc;
    struct host h = {.txn = txn, .id = m->id, .id_len = m->id_len};
    rules_changes_reset(&m->changes);
    rules_changes_add(&m->changes, "reported.heart_rate", 19);
    rules_changes_add(&m->changes, "reported.spo2", 13);
    rules_changes_add(&m->changes, "reported.temperature", 20);
    /* as the hub does: the document the apply stored, and the wake only ever lowered */
    struct rules_twin tw = {.doc = &res.doc, .now = now, .changes = &m->changes,
                            .history = h_history, .history_ctx = &h};
    struct rules_host host = {.ctx = &h, .state_get = h_get, .state_put = h_put,
                              .state_del = h_del, .state_list = h_list, .action = h_action,
                              .transition = h_transition};
    struct rules_run_result rr;
    rc = rules_run_change(m->rs, m->sc, &tw, &host, &rr);
    m->evaluated += rr.evaluated;
    if (rc == 0 && rr.wake != INT64_MAX)
        rc = twin_rule_wake_lower(txn, m->id, m->id_len, rr.wake, h.err);
    return rc;
}

/* N rules: rule i reads reported.f<i> (rule 0 also heart_rate, with a window); `same`: all read
 * heart_rate and match one device each. */
static struct rules_set *make_rules(long n, bool same, long devices)
{
    size_t cap = (size_t)n * 160 + 64;
    char *text = malloc(cap);
    size_t len = (size_t)snprintf(text, cap, "rules:\n");
    for (long i = 0; i < n; i++) {
        if (same)
            len += (size_t)snprintf(text + len, cap - len,
                                    "  - name: r%ld\n    match: \"ecg-%04ld\"\n"
                                    "    when: reported.heart_rate > 120\n    for: 10s\n",
                                    i, i % devices + 1);
        else if (i == 0)
            len += (size_t)snprintf(text + len, cap - len,
                                    "  - name: r0\n    when: reported.heart_rate > 120 and "
                                    "avg(reported.heart_rate, 60s) > 100\n    for: 10s\n");
        else
            len += (size_t)snprintf(text + len, cap - len,
                                    "  - name: r%ld\n    when: reported.f%ld > %ld\n", i, i, i);
    }
    struct rules_set *rs = NULL;
    struct rules_errors errs = {0};
    if (rules_set_parse("bench.yaml", text, len, ".", NULL, &rs, &errs) < 0) {
        fprintf(stderr, "bench_rules: %s\n", errs.text ? errs.text : "cannot load");
        exit(1);
    }
    rules_errors_free(&errs);
    free(text);
    return rs;
}

static void remove_dir(const char *dir)
{
    char p[4200];
    const char *files[] = {"data.mdb", "lock.mdb"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* A new store in a new folder under tmp (its name into dir, 4096 bytes); exits on error. */
static struct twin_store *store_new(const char *tmp, char *dir)
{
    char err[TWIN_ERR_LEN];
    snprintf(dir, 4096, "%s/bench_rules.XXXXXX", tmp);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    so.path = dir;
    struct twin_store *st;
    if (twin_store_open(&st, &so, err) < 0) {
        fprintf(stderr, "bench_rules: %s\n", err);
        exit(1);
    }
    return st;
}

static void bench_messages(long n, long devices, const char *tmp)
{
    struct {
        const char *name;
        long rules;
        bool same;
    } sc[] = {{"no rules", 0, false},        {"1 rule", 1, false},
              {"100 rules", 100, false},     {"1000 rules", 1000, false},
              {"1000 rules, all on heart_rate, one device each", 1000, true}};
    double base = 0;
    for (size_t s = 0; s < sizeof(sc) / sizeof(sc[0]); s++) {
        char dir[4096], err[TWIN_ERR_LEN];
        struct twin_store *st = store_new(tmp, dir);
        struct msg_ctx m = {.rs = sc[s].rules ? make_rules(sc[s].rules, sc[s].same, devices) : NULL,
                            .sc = rules_scratch_new()};
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_zone zone;
        msgpack_zone_init(&zone, 4096);
        struct twin_limits lim = TWIN_LIMITS_DEFAULT;
        char ids[64][16];
        for (long d = 0; d < devices && d < 64; d++)
            snprintf(ids[d], sizeof(ids[d]), "ecg-%04ld", d + 1);
        double t0 = now_s();
        for (long i = 0; i < n; i++) {
            msgpack_packer pk;
            sb.size = 0;
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            msgpack_pack_map(&pk, 4);
            msgpack_pack_str_with_body(&pk, "seq", 3);
            msgpack_pack_uint64(&pk, (uint64_t)(i / devices + 1));
            msgpack_pack_str_with_body(&pk, "heart_rate", 10);
            msgpack_pack_int64(&pk, 100 + i % 40);
            msgpack_pack_str_with_body(&pk, "spo2", 4);
            msgpack_pack_double(&pk, 95.5);
            msgpack_pack_str_with_body(&pk, "temperature", 11);
            msgpack_pack_double(&pk, 36.9);
            msgpack_object obj;
            msgpack_zone_clear(&zone);
            if (twin_input_decode(sb.data, sb.size, &lim, &zone, &obj, err) < 0) {
                fprintf(stderr, "bench_rules: %s\n", err);
                exit(1);
            }
            long d = i % (devices < 64 ? devices : 64);
            m.telemetry = &obj;
            m.id = ids[d];
            m.id_len = strlen(ids[d]);
            if (twin_store_write(st, apply_fn, &m, err) < 0) {
                fprintf(stderr, "bench_rules: %s\n", err);
                exit(1);
            }
        }
        double per = (now_s() - t0) / (double)n * 1e6;
        if (s == 0)
            base = per;
        printf("store %-52s %7.2f us/message  (+%5.2f us for rules; %.2f rules evaluated per "
               "message)\n",
               sc[s].name, per, per - base, (double)m.evaluated / (double)n);
        msgpack_sbuffer_destroy(&sb);
        msgpack_zone_destroy(&zone);
        rules_scratch_free(m.sc);
        rules_set_free((struct rules_set *)m.rs);
        twin_store_close(st);
        remove_dir(dir);
    }
}

/* One step of section 3 for one twin, in the store's write transaction. */
struct learn_ctx {
    const struct rules_set *rs;
    struct rules_twin tw;
    struct rules_model_record rec;
    const char *id;
    int what; /* 0: write a record only; 1: predict; 2: target (score and learn) */
};

static int learn_fn(struct twin_txn *txn, void *arg)
{
    struct learn_ctx *l = arg;
    char err[TWIN_ERR_LEN];
    if (l->what == 0) /* the baseline: a record of the same size written, nothing computed */
        return twin_model_state_put(txn, l->id, strlen(l->id), "base", 4, l->rec.buf, 200, err);
    int rc = twin_model_state_get(txn, l->id, strlen(l->id), "lin", 3, l->rec.buf,
                                  RULES_MODEL_STATE_MAX, &l->rec.len, err);
    if (rc == -ENOENT)
        l->rec.len = 0;
    else if (rc < 0)
        return rc;
    struct rules_prediction p;
    if (l->what == 1)
        rc = rules_model_predict(l->rs, 0, &l->tw, &l->rec, &p);
    else
        rc = rules_model_score(l->rs, 0, &l->tw, &l->rec, NULL);
    if (rc == 0 && l->rec.changed)
        rc = twin_model_state_put(txn, l->id, strlen(l->id), "lin", 3, l->rec.buf, l->rec.len,
                                  err);
    return rc;
}

static void bench_learn(long n, long devices, const char *tmp)
{
    char dir[4096], err[TWIN_ERR_LEN];
    struct twin_store *st = store_new(tmp, dir);
    static const char text[] = "models:\n  lin:\n    file: " BENCH_MODELS "/linear.twm\n"
                               "    inputs: [reported.heart_rate, reported.spo2, "
                               "reported.temperature]\n"
                               "    learn: {target: reported.y, rate: 0.001}\n";
    struct rules_errors errs = {0};
    struct rules_set *rs = NULL;
    if (rules_set_parse("bench.yaml", text, sizeof(text) - 1, NULL, NULL, &rs, &errs) < 0) {
        fprintf(stderr, "bench_rules: %s", errs.text ? errs.text : "cannot load the model\n");
        exit(1);
    }
    rules_errors_free(&errs);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    static const char body[] = "{\"heart_rate\": 72, \"spo2\": 97.5, \"temperature\": 36.9, "
                               "\"y\": 75}";
    struct twin_doc doc = {.id = "ecg-0001", .id_len = 8};
    if (twin_input_decode(body, sizeof(body) - 1, &lim, &zone, &doc.reported, err) < 0) {
        fprintf(stderr, "bench_rules: %s\n", err);
        exit(1);
    }
    doc.meta_reported.type = doc.desired.type = doc.meta_desired.type = MSGPACK_OBJECT_NIL;
    doc.delta.type = doc.predicted.type = MSGPACK_OBJECT_NIL;
    struct learn_ctx l = {.rs = rs, .tw = {.doc = &doc}};
    l.rec.buf = calloc(1, RULES_MODEL_STATE_MAX);
    char ids[64][16];
    for (long d = 0; d < devices && d < 64; d++)
        snprintf(ids[d], sizeof(ids[d]), "ecg-%04ld", d + 1);
    /* time[0]: a transaction writing a record; [1] predict and [2] its target, alternating, so that
     * each target scores one prediction; [3] a target with nothing waiting */
    static const char *const names[] = {"write one record (baseline)",
                                        "predict, kept for its target",
                                        "target arrives: score + LMS step",
                                        "target arrives, nothing waiting"};
    static const int steps[3][2] = {{0, -1}, {1, 2}, {2, -1}};
    static const int slot[3][2] = {{0, -1}, {1, 2}, {3, -1}};
    double total[4] = {0};
    for (int phase = 0; phase < 3; phase++)
        for (long i = 0; i < n; i++)
            for (int k = 0; k < 2 && steps[phase][k] >= 0; k++) {
                l.id = ids[i % (devices < 64 ? devices : 64)];
                l.what = steps[phase][k];
                l.tw.now = 1000000 + 2 * i + k;
                double t0 = now_s();
                if (twin_store_write(st, learn_fn, &l, err) < 0) {
                    fprintf(stderr, "bench_rules: %s\n", err);
                    exit(1);
                }
                total[slot[phase][k]] += now_s() - t0;
            }
    for (int s = 0; s < 4; s++) {
        double per = total[s] / (double)n * 1e6, base = total[0] / (double)n * 1e6;
        printf("target %-45s %7.2f us/step", names[s], per);
        if (s == 1 || s == 2)
            printf("  (+%5.2f us over the baseline)", per - base);
        putchar('\n');
    }
    free(l.rec.buf);
    msgpack_zone_destroy(&zone);
    rules_set_free(rs);
    twin_store_close(st);
    remove_dir(dir);
}

int main(int argc, char **argv)
{
    long n = 50000, devices = 50, evals = 5000000;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int c;
    while ((c = getopt(argc, argv, "n:d:e:t:")) != -1) {
        switch (c) {
        case 'n': n = atol(optarg); break;
        case 'd': devices = atol(optarg); break;
        case 'e': evals = atol(optarg); break;
        case 't': tmp = optarg; break;
        default:
            fprintf(stderr, "usage: bench_rules [-n messages] [-d devices] [-e evaluations] "
                            "[-t dir]\n");
            return 2;
        }
    }
    if (n < 1 || devices < 1 || devices > 64 || evals < 20) {
        fprintf(stderr, "bench_rules: -n >= 1, 1 <= -d <= 64, -e >= 20\n");
        return 2;
    }
    bench_eval(evals);
    bench_messages(n, devices, tmp);
    bench_learn(n, devices, tmp);
    return 0;
}
