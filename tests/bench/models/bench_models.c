/* bench_models: what one prediction costs in the model runtime, per kind at realistic sizes. It
 * owns nothing but the models it builds; it prints figures and never fails on time.
 *
 * With no FILE it builds, from seeded random parameters, the models issue 5 names: a random
 * forest of 100 full trees of depth 8 (10 features), an RBF SVR with 500 support vectors and 10
 * features, an MLP 10-64-64-1 (relu), an LSTM of 32 units over 60 steps of 4 features; given
 * .twm files (bench_sklearn.py writes them from real scikit-learn models) it times those. Each
 * figure is the median of -r runs of -n predictions on distinct random samples, or, with -x, on
 * the rows of ROWS.f64 (raw native doubles, n_inputs a row: bench_forest.py writes it so that
 * both sides predict the same rows), taken in turn.
 *
 *   bench_models [-n predictions] [-r runs] [-x ROWS.f64] [FILE.twm ...]
 */
#include "models/model.h"

#include <math.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* splitmix64 -> uniform [0, 1) */
static double uniform(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static double normal(void)
{
    double u = uniform() + 1e-300, v = uniform();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void randoms(msgpack_packer *pk, size_t n, double scale)
{
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_double(pk, normal() * scale);
}

static void header(msgpack_packer *pk, const char *kind, int nf, int window, size_t extra)
{
    msgpack_pack_map(pk, (uint32_t)(6 + (window > 0) + extra));
    str(pk, "format");
    str(pk, "twinhub-model");
    str(pk, "version");
    msgpack_pack_int(pk, 1);
    str(pk, "kind");
    str(pk, kind);
    str(pk, "estimator");
    str(pk, "bench");
    str(pk, "n_features");
    msgpack_pack_int(pk, nf);
    if (window > 0) {
        str(pk, "window");
        msgpack_pack_int(pk, window);
    }
    str(pk, "outputs");
    msgpack_pack_int(pk, 1);
}

static void build_forest(msgpack_packer *pk)
{
    const int trees = 100, depth = 8, nodes = (1 << (depth + 1)) - 1, internal = (1 << depth) - 1;

    header(pk, "tree", 10, 0, 2);
    str(pk, "ensemble");
    str(pk, "forest");
    str(pk, "trees");
    msgpack_pack_array(pk, trees);
    for (int t = 0; t < trees; t++) {
        msgpack_pack_map(pk, 5);
        /* breadth-first numbering: the children of k are 2k+1 and 2k+2 */
        str(pk, "left");
        msgpack_pack_array(pk, nodes);
        for (int k = 0; k < nodes; k++)
            msgpack_pack_int(pk, k < internal ? 2 * k + 1 : -1);
        str(pk, "right");
        msgpack_pack_array(pk, nodes);
        for (int k = 0; k < nodes; k++)
            msgpack_pack_int(pk, k < internal ? 2 * k + 2 : -1);
        str(pk, "feature");
        msgpack_pack_array(pk, nodes);
        for (int k = 0; k < nodes; k++)
            msgpack_pack_int(pk, (int)(uniform() * 10));
        str(pk, "threshold");
        randoms(pk, nodes, 0.7);
        str(pk, "value");
        randoms(pk, nodes, 10);
    }
}

static void build_svr(msgpack_packer *pk)
{
    const int n_sv = 500, nf = 10;

    header(pk, "svm", nf, 0, 9);
    str(pk, "svm_type");
    str(pk, "epsilon_svr");
    str(pk, "kernel");
    str(pk, "rbf");
    str(pk, "gamma");
    msgpack_pack_double(pk, 0.1);
    str(pk, "coef0");
    msgpack_pack_double(pk, 0);
    str(pk, "degree");
    msgpack_pack_int(pk, 3);
    str(pk, "n_sv");
    msgpack_pack_int(pk, n_sv);
    str(pk, "support_vectors");
    randoms(pk, (size_t)n_sv * nf, 1);
    str(pk, "dual_coef");
    randoms(pk, n_sv, 5);
    str(pk, "intercept");
    randoms(pk, 1, 1);
}

static void build_mlp(msgpack_packer *pk)
{
    const int sizes[] = {10, 64, 64, 1};

    header(pk, "mlp", 10, 0, 3);
    str(pk, "activation");
    str(pk, "relu");
    str(pk, "out_activation");
    str(pk, "identity");
    str(pk, "layers");
    msgpack_pack_array(pk, 3);
    for (int i = 0; i < 3; i++) {
        msgpack_pack_map(pk, 4);
        str(pk, "n_in");
        msgpack_pack_int(pk, sizes[i]);
        str(pk, "n_out");
        msgpack_pack_int(pk, sizes[i + 1]);
        str(pk, "coef");
        randoms(pk, (size_t)sizes[i] * sizes[i + 1], 1 / sqrt(sizes[i]));
        str(pk, "intercept");
        randoms(pk, sizes[i + 1], 0.1);
    }
}

static void build_lstm(msgpack_packer *pk)
{
    const int h = 32, nf = 4;

    header(pk, "lstm", nf, 60, 2);
    str(pk, "layers");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 6);
    str(pk, "hidden");
    msgpack_pack_int(pk, h);
    str(pk, "n_in");
    msgpack_pack_int(pk, nf);
    str(pk, "w_ih");
    randoms(pk, 4 * h * nf, 0.2);
    str(pk, "w_hh");
    randoms(pk, 4 * h * h, 0.2);
    str(pk, "b_ih");
    randoms(pk, 4 * h, 0.1);
    str(pk, "b_hh");
    randoms(pk, 4 * h, 0.1);
    str(pk, "head");
    msgpack_pack_map(pk, 2);
    str(pk, "weight");
    randoms(pk, h, 0.3);
    str(pk, "bias");
    randoms(pk, 1, 0.1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The rows of a file of raw doubles: *n_rows rows of `width` values (a trailing partial row is
 * dropped). NULL when it cannot be read or holds no row; caller frees. */
static double *rows_read(const char *path, size_t width, size_t *n_rows)
{
    FILE *f = fopen(path, "rb");
    double *buf = NULL;
    long len;

    *n_rows = 0;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
        size_t n = (size_t)len / sizeof(double) / width;
        buf = n ? malloc(n * width * sizeof *buf) : NULL;
        if (buf && fread(buf, sizeof *buf, n * width, f) == n * width) {
            *n_rows = n;
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

/* Times n predictions, runs times, over the rows of `rows` (NULL: 1024 random normal samples);
 * prints the median µs per prediction. */
static int bench(const char *name, struct twin_model *m, long n, long runs, const char *rows)
{
    const struct twin_model_info *in = twin_model_info_get(m);
    size_t samples = 1024;
    double *x =
        rows ? rows_read(rows, in->n_inputs, &samples) : malloc(samples * in->n_inputs * sizeof *x);
    double *v = malloc(in->n_outputs * sizeof *v), *p = malloc((in->n_classes + 1) * 8);
    double *d = malloc((in->n_decision + 1) * 8), *times = malloc((size_t)runs * sizeof *times);
    double sink = 0;

    if (!x || !v || !p || !d || !times) {
        fprintf(stderr, "bench_models: %s: %s\n", name, x ? "out of memory" : "no rows");
        free(x);
        free(v);
        free(p);
        free(d);
        free(times);
        return -1;
    }
    for (size_t i = 0; !rows && i < samples * in->n_inputs; i++)
        x[i] = normal();
    for (long r = 0; r < runs; r++) {
        double t0 = now_s();
        for (long i = 0; i < n; i++) {
            struct twin_model_out out = {v, p, d, 0};
            twin_model_predict(m, x + (size_t)i % samples * in->n_inputs, &out);
            sink += v[0];
        }
        times[r] = (now_s() - t0) / (double)n * 1e6;
    }
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    printf("%-28s %-6s %10.2f us/prediction  (%ld x %ld, checksum %.6g)\n", name, in->kind,
           times[runs / 2], runs, n, sink);
    free(x);
    free(v);
    free(p);
    free(d);
    free(times);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*build)(msgpack_packer *);
        long divide; /* fewer predictions for the costly ones */
    } builtin[] = {
        {"forest 100 x depth 8", build_forest, 4},
        {"svr rbf 500 sv x 10", build_svr, 8},
        {"mlp 10-64-64-1", build_mlp, 4},
        {"lstm 32 units x 60 steps", build_lstm, 40},
    };
    char err[TWIN_MODEL_ERR_LEN];
    const char *rows = NULL;
    long n = 40000, runs = 3;
    int o, code = 0;

    while ((o = getopt(argc, argv, "n:r:x:")) != -1) {
        if (o == 'n')
            n = atol(optarg);
        else if (o == 'r')
            runs = atol(optarg);
        else if (o == 'x')
            rows = optarg;
        else {
            fprintf(stderr, "usage: bench_models [-n predictions] [-r runs] [-x ROWS.f64] "
                            "[FILE.twm ...]\n");
            return 2;
        }
    }
    if (n < 1 || runs < 1) {
        fprintf(stderr, "bench_models: -n and -r must be positive\n");
        return 2;
    }
    if (optind < argc) {
        for (int i = optind; i < argc; i++) {
            struct twin_model *m;
            if (twin_model_load_file(argv[i], &m, err)) {
                fprintf(stderr, "bench_models: %s\n", err);
                code = 1;
                continue;
            }
            const char *base = strrchr(argv[i], '/');
            if (bench(base ? base + 1 : argv[i], m, n, runs, rows))
                code = 1;
            twin_model_free(m);
        }
        return code;
    }
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct twin_model *m;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        builtin[i].build(&pk);
        if (twin_model_load(sb.data, sb.size, &m, err)) {
            fprintf(stderr, "bench_models: %s: %s\n", builtin[i].name, err);
            code = 1;
        } else {
            long k = n / builtin[i].divide;
            if (bench(builtin[i].name, m, k > 0 ? k : 1, runs, NULL))
                code = 1;
            twin_model_free(m);
        }
        msgpack_sbuffer_destroy(&sb);
    }
    return code;
}
