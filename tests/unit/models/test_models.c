/* test_models: the model runtime's contracts that need no scikit-learn: every committed
 * fixture loads and predicts; every truncation and many corruptions of them are refused or load
 * into something that predicts without a crash (run under ASan/UBSan); hand-built hostile files
 * (cycles and out-of-range indices in trees, huge counts, wrong types, non-finite numbers,
 * later versions, shapes that don't add up, allocation bombs) are refused with the right code;
 * NaN input, batches and online learning behave as model.h says.
 *
 *   test_models DATA_DIR      (tests/data/models)
 */
#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"

static int failures;
static const char *data_dir;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static unsigned char *slurp(const char *name, size_t *len)
{
    char path[512];
    FILE *f;
    unsigned char *buf;
    long n;

    snprintf(path, sizeof path, "%s/%s", data_dir, name);
    f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* A sample of ones, predicted with every output wanted. */
static int predict_ones(struct twin_model *m)
{
    const struct twin_model_info *in = twin_model_info_get(m);
    double *x = calloc(in->n_inputs, sizeof *x);
    double *v = calloc(in->n_outputs, sizeof *v);
    double *p = calloc(in->n_classes + 1, sizeof *p);
    double *d = calloc(in->n_decision + 1, sizeof *d);
    struct twin_model_out out = {v, p, d, 0};
    int rc;

    for (size_t i = 0; i < in->n_inputs; i++)
        x[i] = 1.0 + 0.1 * (double)i;
    rc = twin_model_predict(m, x, &out);
    if (rc == 0 && in->classifier && out.label >= in->n_classes)
        rc = -ERANGE;
    free(x);
    free(v);
    free(p);
    free(d);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Fixtures: load, truncate, corrupt
 * ------------------------------------------------------------------------------------------ */

struct fixture {
    const char *file, *kind;
    bool classifier;
    size_t n_classes, n_decision, n_inputs;
    bool has_proba, learnable;
};

static const struct fixture fixtures[] = {
    {"linear.twm", "linear", false, 0, 0, 3, false, true},
    {"logistic.twm", "logistic", true, 3, 3, 3, true, false},
    {"svc.twm", "svm", true, 3, 3, 3, true, false},
    {"svr.twm", "svm", false, 0, 0, 3, false, false},
    {"forest.twm", "tree", false, 0, 0, 3, false, false},
    {"gb.twm", "tree", true, 3, 3, 3, true, false},
    {"mlp.twm", "mlp", true, 2, 0, 3, true, false},
    {"lstm.twm", "lstm", false, 0, 0, 12, false, false},
};

static void test_fixture(const struct fixture *fx)
{
    char err[TWIN_MODEL_ERR_LEN];
    struct twin_model *m;
    size_t len, loaded = 0;
    unsigned char *buf = slurp(fx->file, &len);
    unsigned char *copy = malloc(len);
    int rc;

    rc = twin_model_load(buf, len, &m, err);
    CHECK(rc == 0, "%s: %s", fx->file, err);
    if (rc == 0) {
        const struct twin_model_info *in = twin_model_info_get(m);
        CHECK(strcmp(in->kind, fx->kind) == 0, "%s: kind %s", fx->file, in->kind);
        CHECK(in->classifier == fx->classifier, "%s: classifier", fx->file);
        CHECK(in->n_classes == fx->n_classes, "%s: %zu classes", fx->file, in->n_classes);
        CHECK(in->n_decision == fx->n_decision, "%s: %zu decision", fx->file, in->n_decision);
        CHECK(in->n_inputs == fx->n_inputs, "%s: %zu inputs", fx->file, in->n_inputs);
        CHECK(in->has_proba == fx->has_proba, "%s: has_proba", fx->file);
        CHECK((in->n_params > 0) == fx->learnable, "%s: n_params %zu", fx->file, in->n_params);
        CHECK(strncmp(in->version, "fnv1a64:", 8) == 0 && strlen(in->version) == 24,
              "%s: version %s", fx->file, in->version);
        CHECK(predict_ones(m) == 0, "%s: predict", fx->file);
        twin_model_free(m);
    }

    /* every proper prefix is an incomplete msgpack object: refused */
    for (size_t n = 0; n < len; n++) {
        memcpy(copy, buf, n);
        m = (struct twin_model *)&m; /* must be reset to NULL on failure */
        rc = twin_model_load(n ? copy : NULL, n, &m, err);
        CHECK(rc < 0 && m == NULL, "%s truncated at %zu: rc %d", fx->file, n, rc);
        if (rc == 0)
            twin_model_free(m);
    }
    /* every byte replaced by a few values: refused, or loaded and predicting without a crash */
    static const unsigned char subst[] = {0x00, 0x01, 0x7f, 0x80, 0xc0, 0xc1,
                                          0xca, 0xcb, 0xd0, 0xdd, 0xdf, 0xff};
    for (size_t i = 0; i < len; i++) {
        for (size_t s = 0; s < sizeof subst; s++) {
            if (buf[i] == subst[s])
                continue;
            memcpy(copy, buf, len);
            copy[i] = subst[s];
            rc = twin_model_load(copy, len, &m, err);
            if (rc == 0) {
                loaded++;
                rc = predict_ones(m);
                CHECK(rc == 0 || rc == -EDOM, "%s byte %zu = %#x: predict %d", fx->file, i,
                      subst[s], rc);
                twin_model_free(m);
            } else {
                CHECK(m == NULL && err[0], "%s byte %zu: no reason", fx->file, i);
            }
        }
    }
    printf("  %s: %zu bytes, every truncation refused, %zu of %zu corruptions still loaded\n",
           fx->file, len, loaded, len * sizeof subst);
    free(copy);
    free(buf);
}

/* ---------------------------------------------------------------------------------------------
 * Hand-built hostile files
 * ------------------------------------------------------------------------------------------ */

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void pk_doubles(msgpack_packer *pk, size_t n, ...)
{
    va_list ap;

    va_start(ap, n);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_double(pk, va_arg(ap, double));
    va_end(ap);
}

static void pk_ints(msgpack_packer *pk, size_t n, ...)
{
    va_list ap;

    va_start(ap, n);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_int(pk, va_arg(ap, int));
    va_end(ap);
}

/* The header every model has; `extra` more map entries follow. */
static void pk_header(msgpack_packer *pk, const char *kind, int n_features, size_t extra)
{
    msgpack_pack_map(pk, (uint32_t)(5 + extra));
    pk_str(pk, "format");
    pk_str(pk, "twinhub-model");
    pk_str(pk, "version");
    msgpack_pack_int(pk, 1);
    pk_str(pk, "kind");
    pk_str(pk, kind);
    pk_str(pk, "n_features");
    msgpack_pack_int(pk, n_features);
    pk_str(pk, "outputs");
    msgpack_pack_int(pk, 1);
}

enum tree_bad {
    TREE_OK,
    TREE_SELF,
    TREE_BACK,
    TREE_OUT,
    TREE_ONE_CHILD,
    TREE_FEATURE,
    TREE_NAN,
    TREE_INF_VALUE,
    TREE_SHORT_VALUE,
    TREE_BOMB
};

/* A regression stump on feature 0 (threshold 0.5, leaves 1 and 2), broken as asked. */
static void pk_tree(msgpack_packer *pk, enum tree_bad bad)
{
    pk_header(pk, "tree", bad == TREE_BOMB ? 1 << 20 : 2, 2);
    pk_str(pk, "ensemble");
    pk_str(pk, "single");
    pk_str(pk, "trees");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 5);
    pk_str(pk, "left");
    if (bad == TREE_SELF)
        pk_ints(pk, 3, 0, -1, -1);
    else if (bad == TREE_BACK)
        pk_ints(pk, 3, 1, -1, 0);
    else if (bad == TREE_OUT)
        pk_ints(pk, 3, 1, -1, 3);
    else if (bad == TREE_ONE_CHILD)
        pk_ints(pk, 3, 1, 2, -1);
    else
        pk_ints(pk, 3, 1, -1, -1);
    pk_str(pk, "right");
    if (bad == TREE_BACK)
        pk_ints(pk, 3, 2, -1, 1);
    else
        pk_ints(pk, 3, 2, -1, -1);
    pk_str(pk, "feature");
    pk_ints(pk, 3, bad == TREE_FEATURE ? 2 : 0, 0, 0);
    pk_str(pk, "threshold");
    pk_doubles(pk, 3, bad == TREE_NAN ? NAN : 0.5, 0.0, 0.0);
    pk_str(pk, "value");
    if (bad == TREE_SHORT_VALUE)
        pk_doubles(pk, 2, 0.0, 1.0);
    else
        pk_doubles(pk, 3, 0.0, bad == TREE_INF_VALUE ? INFINITY : 1.0, 2.0);
}

static int load_sbuf(const msgpack_sbuffer *sb, char *err)
{
    struct twin_model *m = NULL;
    int rc = twin_model_load(sb->data, sb->size, &m, err);

    if (rc == 0) {
        double x[2] = {0.25, 1}, y = 0;
        struct twin_model_out out = {&y, NULL, NULL, 0};
        rc = twin_model_predict(m, x, &out);
        if (rc == 0 && twin_model_info_get(m)->n_features == 2 && y != 1.0)
            rc = -ERANGE; /* the stump's left leaf */
        twin_model_free(m);
    }
    return rc;
}

static void test_trees(void)
{
    static const struct {
        enum tree_bad bad;
        int rc;
        const char *reason;
    } cases[] = {
        {TREE_OK, 0, ""},
        {TREE_SELF, -EINVAL, "points back"},
        {TREE_BACK, -EINVAL, "points back"},
        {TREE_OUT, -EINVAL, "outside"},
        {TREE_ONE_CHILD, -EINVAL, "one child"},
        {TREE_FEATURE, -EINVAL, "feature[0]"},
        {TREE_NAN, -EINVAL, "not a finite number"},
        {TREE_INF_VALUE, -EINVAL, "not a finite number"},
        {TREE_SHORT_VALUE, -EINVAL, "expected 3 numbers"},
        {TREE_BOMB, -E2BIG, "memory"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        char err[TWIN_MODEL_ERR_LEN] = "";
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pk_tree(&pk, cases[i].bad);
        int rc = load_sbuf(&sb, err);
        CHECK(rc == cases[i].rc && strstr(err, cases[i].reason), "tree case %zu: rc %d (%s)", i, rc,
              err);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Raw byte strings: structure attacks and header errors. */
static void test_raw(void)
{
    static const struct {
        const char *name;
        const char *bytes;
        size_t len;
        int rc;
    } cases[] = {
        {"empty", "", 0, -EBADMSG},
        {"array32 of 4G elements", "\xdd\xff\xff\xff\xff", 5, -EBADMSG},
        {"map32 of 4G entries", "\xdf\xff\xff\xff\xff\xa1x", 7, -EBADMSG},
        {"str32 of 4 GB", "\x81\xa1x\xdb\xff\xff\xff\xff", 8, -EBADMSG},
        {"trailing byte", "\x80\xc0", 2, -EBADMSG},
        {"reserved 0xc1", "\x81\xa1x\xc1", 4, -EBADMSG},
        {"not a map", "\x93\x01\x02\x03", 4, -EINVAL},
        {"empty map", "\x80", 1, -EINVAL},
        {"17 nested arrays",
         "\x81\xa1x\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x90", 20,
         -EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[TWIN_MODEL_ERR_LEN] = "";
        struct twin_model *m = NULL;
        int rc = twin_model_load(cases[i].bytes, cases[i].len, &m, err);
        CHECK(rc == cases[i].rc && m == NULL && err[0], "%s: rc %d (%s)", cases[i].name, rc, err);
    }
}

enum lin_bad {
    LIN_OK,
    LIN_FORMAT,
    LIN_VERSION,
    LIN_KIND,
    LIN_NF_TYPE,
    LIN_COEF_NAN,
    LIN_COEF_STR,
    LIN_COEF_SHORT,
    LIN_PREP_SHORT,
    LIN_PREP_TYPE,
    LIN_NF_ZERO,
    LIN_CLASSES
};

static void pk_linear(msgpack_packer *pk, enum lin_bad bad)
{
    msgpack_pack_map(pk, bad == LIN_CLASSES ? 9 : 8);
    pk_str(pk, "format");
    pk_str(pk, bad == LIN_FORMAT ? "twinhub-modle" : "twinhub-model");
    pk_str(pk, "version");
    msgpack_pack_int(pk, bad == LIN_VERSION ? 2 : 1);
    pk_str(pk, "kind");
    pk_str(pk, bad == LIN_KIND ? "knn" : "linear");
    pk_str(pk, "n_features");
    if (bad == LIN_NF_TYPE)
        pk_str(pk, "two");
    else
        msgpack_pack_int(pk, bad == LIN_NF_ZERO ? 0 : 2);
    pk_str(pk, "outputs");
    msgpack_pack_int(pk, 1);
    pk_str(pk, "preprocess");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 3);
    pk_str(pk, "type");
    pk_str(pk, bad == LIN_PREP_TYPE ? "robust" : "standard");
    pk_str(pk, "mean");
    if (bad == LIN_PREP_SHORT)
        pk_doubles(pk, 1, 1.0);
    else
        pk_doubles(pk, 2, 1.0, -1.0);
    pk_str(pk, "scale");
    pk_doubles(pk, 2, 2.0, 4.0);
    pk_str(pk, "coef");
    if (bad == LIN_COEF_STR) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_double(pk, 3.0);
        pk_str(pk, "5");
    } else if (bad == LIN_COEF_SHORT) {
        pk_doubles(pk, 1, 3.0);
    } else {
        pk_doubles(pk, 2, bad == LIN_COEF_NAN ? NAN : 3.0, 5.0);
    }
    pk_str(pk, "intercept");
    pk_doubles(pk, 1, 0.5);
    if (bad == LIN_CLASSES) {
        pk_str(pk, "classes");
        pk_ints(pk, 2, 0, 1);
    }
}

static struct twin_model *linear_load(enum lin_bad bad, int *rc, char *err)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct twin_model *m = NULL;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pk_linear(&pk, bad);
    *rc = twin_model_load(sb.data, sb.size, &m, err);
    msgpack_sbuffer_destroy(&sb);
    return m;
}

static void test_linear_errors(void)
{
    static const struct {
        enum lin_bad bad;
        int rc;
        const char *reason;
    } cases[] = {
        {LIN_FORMAT, -EINVAL, "not a model"},
        {LIN_VERSION, -ENOTSUP, "version 2"},
        {LIN_KIND, -ENOTSUP, "knn"},
        {LIN_NF_TYPE, -EINVAL, "n_features"},
        {LIN_NF_ZERO, -EINVAL, "n_features"},
        {LIN_COEF_NAN, -EINVAL, "coef[0]: not a finite number"},
        {LIN_COEF_STR, -EINVAL, "coef[1]: expected a number"},
        {LIN_COEF_SHORT, -EINVAL, "coef: expected 2 numbers"},
        {LIN_PREP_SHORT, -EINVAL, "preprocess[0].mean"},
        {LIN_PREP_TYPE, -EINVAL, "robust"},
        {LIN_CLASSES, -EINVAL, "classes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[TWIN_MODEL_ERR_LEN] = "";
        int rc;
        struct twin_model *m = linear_load(cases[i].bad, &rc, err);
        CHECK(m == NULL && rc == cases[i].rc && strstr(err, cases[i].reason),
              "linear case %zu: rc %d (%s)", i, rc, err);
        twin_model_free(m);
    }
}

/* ---------------------------------------------------------------------------------------------
 * The API: prediction, NaN, batches, online learning
 * ------------------------------------------------------------------------------------------ */

static void test_api(void)
{
    char err[TWIN_MODEL_ERR_LEN];
    int rc;
    struct twin_model *m = linear_load(LIN_OK, &rc, err);

    CHECK(rc == 0, "linear: %s", err);
    if (!m)
        return;
    const struct twin_model_info *in = twin_model_info_get(m);
    CHECK(in->n_preprocess == 1 && strcmp(in->preprocess[0], "standard") == 0, "preprocess");
    CHECK(in->n_params == 3, "n_params %zu", in->n_params);

    /* y = 3 (x0 - 1) / 2 + 5 (x1 + 1) / 4 + 0.5 */
    double x[2] = {3, 7}, y = 0;
    struct twin_model_out out = {&y, NULL, NULL, 0};
    CHECK(twin_model_predict(m, x, &out) == 0 && y == 3.0 + 10.0 + 0.5, "predict %g", y);

    double bad[2] = {NAN, 1};
    y = 42;
    CHECK(twin_model_predict(m, bad, &out) == -EDOM && y == 42, "NaN refused, nothing written");
    bad[0] = -INFINITY;
    CHECK(twin_model_predict(m, bad, &out) == -EDOM, "-inf refused");

    double rows[8] = {3, 7, 1, -1, INFINITY, 0, 3, 7}, ys[4] = {0};
    struct twin_model_batch b = {ys, NULL, NULL, NULL};
    size_t done = 99;
    CHECK(twin_model_predict_batch(m, rows, 4, &b, &done) == -EDOM && done == 2, "batch %zu", done);
    CHECK(ys[0] == 13.5 && ys[1] == 0.5 && ys[2] == 0, "batch values %g %g %g", ys[0], ys[1],
          ys[2]);
    CHECK(twin_model_predict_batch(m, rows, 2, &b, &done) == 0 && done == 2, "batch ok");

    /* online learning */
    double theta[3], yp;
    CHECK(twin_model_params_copy(m, theta, 2) == -EINVAL, "params size checked");
    CHECK(twin_model_params_copy(m, theta, 3) == 0 && theta[0] == 3 && theta[1] == 5 &&
              theta[2] == 0.5,
          "params %g %g %g", theta[0], theta[1], theta[2]);
    CHECK(twin_model_predict_params(m, theta, x, &yp) == 0 && yp == 13.5, "predict_params %g", yp);
    /* x' = (1, 2): ŷ = 13.5, error 10 - 13.5 = -3.5, rate 0.1: θ += -0.35 (1, 2, 1), after
     * which ŷ = 13.5 - 0.35 (1 + 4 + 1) = 11.4 */
    CHECK(twin_model_learn_step(m, theta, x, 10.0, 0.1, &yp) == 0 && yp == 13.5, "step");
    CHECK(fabs(theta[0] - 2.65) < 1e-15 && fabs(theta[1] - 4.3) < 1e-15 &&
              fabs(theta[2] - 0.15) < 1e-15,
          "theta %.17g %.17g %.17g", theta[0], theta[1], theta[2]);
    CHECK(twin_model_predict_params(m, theta, x, &yp) == 0 && fabs(yp - 11.4) < 1e-12,
          "after the step %g", yp);
    for (int i = 0; i < 200; i++)
        twin_model_learn_step(m, theta, x, 10.0, 0.1, NULL);
    CHECK(twin_model_predict_params(m, theta, x, &yp) == 0 && fabs(yp - 10.0) < 1e-9,
          "converges %g", yp);
    double saved[3];
    memcpy(saved, theta, sizeof saved);
    CHECK(twin_model_learn_step(m, theta, x, 1e300, 1e300, NULL) == -ERANGE &&
              memcmp(saved, theta, sizeof saved) == 0,
          "overflowing step refused, theta unchanged");
    CHECK(twin_model_learn_step(m, theta, x, 1.0, 0, NULL) == -EINVAL, "rate 0");
    CHECK(twin_model_learn_step(m, theta, x, NAN, 0.1, NULL) == -EDOM, "NaN target");
    CHECK(twin_model_learn_step(m, theta, bad, 1.0, 0.1, NULL) == -EDOM, "NaN input");
    /* the model's own parameters never move */
    CHECK(twin_model_predict(m, x, &out) == 0 && y == 13.5, "model unchanged %g", y);
    twin_model_free(m);

    /* a model that can't learn says so */
    size_t len;
    unsigned char *buf = slurp("svr.twm", &len);
    CHECK(twin_model_load(buf, len, &m, err) == 0, "svr: %s", err);
    CHECK(twin_model_params_copy(m, theta, 3) == -EINVAL, "svr can't learn");
    CHECK(twin_model_learn_step(m, theta, x, 1, 0.1, NULL) == -EINVAL, "svr can't learn");
    twin_model_free(m);
    free(buf);

    char path[512];
    snprintf(path, sizeof path, "%s/no-such.twm", data_dir);
    CHECK(twin_model_load_file(path, &m, err) == -ENOENT && m == NULL && strstr(err, path),
          "missing file: %s", err);
    snprintf(path, sizeof path, "%s/gb.twm", data_dir);
    CHECK(twin_model_load_file(path, &m, err) == 0, "load_file: %s", err);
    twin_model_free(m);
    twin_model_free(NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_models DATA_DIR\n");
        return 2;
    }
    data_dir = argv[1];
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        test_fixture(&fixtures[i]);
    test_trees();
    test_raw();
    test_linear_errors();
    test_api();
    if (failures) {
        printf("test_models: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_models: all checks passed\n");
    return 0;
}
