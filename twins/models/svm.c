/* svm.c: kind "svm": libsvm's models as scikit-learn fits them (SVC, NuSVC, SVR, NuSVR) with
 * linear, rbf, poly and sigmoid kernels: the kernel values, one-vs-one decisions and votes with
 * libsvm's tie rule, the "ovr"-shaped decision_function, break_ties, and Platt probabilities
 * with libsvm's pairwise coupling. Every loop runs in libsvm's order so the sums round alike.
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>

enum { SVM_C_SVC, SVM_NU_SVC, SVM_EPSILON_SVR, SVM_NU_SVR };
enum { KERNEL_LINEAR, KERNEL_RBF, KERNEL_POLY, KERNEL_SIGMOID };
enum { SHAPE_OVR, SHAPE_OVO };

#define MAX_DEGREE 1000

struct svm {
    int type, kernel, shape;
    bool break_ties;
    double gamma, coef0;
    int degree;
    size_t n_sv, n_class, n_pairs;
    double *sv;              /* n_sv x n_features */
    double *coef;            /* (n_class - 1) x n_sv, libsvm's sv_coef; regressors: 1 x n_sv */
    double *intercept;       /* n_pairs (regressors 1): -rho */
    size_t *start;           /* n_class: first support vector of each class */
    int32_t *count;          /* n_class: support vectors of each class */
    double *prob_a, *prob_b; /* n_pairs, or NULL: no predict_proba */
    /* scratch */
    double *kvalue; /* n_sv */
    double *dec;    /* n_pairs: libsvm's decision values */
    int *vote;      /* n_class */
    double *conf;   /* n_class: ovr shape */
    double *r, *q;  /* n_class x n_class: pairwise probabilities, coupling matrix */
    double *qp;     /* n_class */
};

static int svm_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    static const char *const types[] = {"c_svc", "nu_svc", "epsilon_svr", "nu_svr"};
    static const char *const kernels[] = {"linear", "rbf", "poly", "sigmoid"};
    static const char *const shapes[] = {"ovr", "ovo"};
    struct svm *s = model__alloc(m, 1, sizeof *s, err);
    size_t nf = m->info.n_features, degree, rows;
    bool classify;
    int rc;

    if (!s)
        return -ENOMEM;
    m->impl = s;
    if ((rc = model__field_enum(root, "", "svm_type", types, 4, &s->type, err)) ||
        (rc = model__field_enum(root, "", "kernel", kernels, 4, &s->kernel, err)) ||
        (rc = model__field_double(root, "", "gamma", &s->gamma, err)) ||
        (rc = model__field_double(root, "", "coef0", &s->coef0, err)) ||
        (rc = model__field_size(root, "", "degree", 0, MAX_DEGREE, &degree, err)) ||
        (rc = model__field_size(root, "", "n_sv", 1, UINT32_MAX, &s->n_sv, err)))
        return rc;
    s->degree = (int)degree;
    classify = s->type == SVM_C_SVC || s->type == SVM_NU_SVC;
    if (classify != m->info.classifier) {
        model__errf(err, "classes: %s for svm_type %s", classify ? "missing" : "unexpected",
                    types[s->type]);
        return -EINVAL;
    }
    if (s->n_sv > SIZE_MAX / nf) {
        model__errf(err, "n_sv: too large");
        return -EINVAL;
    }
    if ((rc =
             model__field_doubles(m, root, "", "support_vectors", s->n_sv * nf, &s->sv, NULL, err)))
        return rc;
    if (!classify) {
        if (m->info.n_outputs != 1) {
            model__errf(err, "outputs: an SVR has 1");
            return -EINVAL;
        }
        s->n_class = 2;
        s->n_pairs = 1;
        if ((rc = model__field_doubles(m, root, "", "dual_coef", s->n_sv, &s->coef, NULL, err)) ||
            (rc = model__field_doubles(m, root, "", "intercept", 1, &s->intercept, NULL, err)))
            return rc;
        return (s->kvalue = model__alloc(m, s->n_sv, sizeof(double), err)) ? 0 : -ENOMEM;
    }

    int shape;
    size_t nc = m->info.n_classes, total = 0;
    if (nc < 2) {
        model__errf(err, "classes: an SVC needs at least 2");
        return -EINVAL;
    }
    s->n_class = nc;
    s->n_pairs = nc * (nc - 1) / 2;
    rows = nc - 1;
    if (rows > SIZE_MAX / s->n_sv) {
        model__errf(err, "dual_coef: too large");
        return -EINVAL;
    }
    if ((rc = model__field_enum(root, "", "decision_shape", shapes, 2, &shape, err)) ||
        (rc = model__field_bool(root, "", "break_ties", &s->break_ties, err)) ||
        (rc = model__field_ints(m, root, "", "n_support", nc, 0, INT32_MAX, &s->count, err)) ||
        (rc =
             model__field_doubles(m, root, "", "dual_coef", rows * s->n_sv, &s->coef, NULL, err)) ||
        (rc = model__field_doubles(m, root, "", "intercept", s->n_pairs, &s->intercept, NULL, err)))
        return rc;
    s->shape = shape;
    if (!(s->start = model__alloc(m, nc, sizeof *s->start, err)))
        return -ENOMEM;
    for (size_t i = 0; i < nc; i++) {
        s->start[i] = total;
        total += (size_t)s->count[i];
    }
    if (total != s->n_sv) {
        model__errf(err, "n_support: adds up to %zu, n_sv is %zu", total, s->n_sv);
        return -EINVAL;
    }
    if (model__field(root, "prob_a") || model__field(root, "prob_b")) {
        if ((rc = model__field_doubles(m, root, "", "prob_a", s->n_pairs, &s->prob_a, NULL, err)) ||
            (rc = model__field_doubles(m, root, "", "prob_b", s->n_pairs, &s->prob_b, NULL, err)))
            return rc;
        if (!(s->r = model__alloc(m, nc * nc, sizeof(double), err)) ||
            !(s->q = model__alloc(m, nc * nc, sizeof(double), err)) ||
            !(s->qp = model__alloc(m, nc, sizeof(double), err)))
            return -ENOMEM;
        m->info.has_proba = true;
    }
    if (s->break_ties && s->shape == SHAPE_OVO) {
        model__errf(err, "break_ties: scikit-learn refuses it with decision_shape ovo");
        return -EINVAL;
    }
    m->info.n_decision = nc == 2 ? 1 : s->shape == SHAPE_OVR ? nc : s->n_pairs;
    if (!(s->kvalue = model__alloc(m, s->n_sv, sizeof(double), err)) ||
        !(s->dec = model__alloc(m, s->n_pairs, sizeof(double), err)) ||
        !(s->vote = model__alloc(m, nc, sizeof(int), err)) ||
        !(s->conf = model__alloc(m, nc, sizeof(double), err)))
        return -ENOMEM;
    return 0;
}

/* libsvm's powi: exponentiation by squaring, in its order of products. */
static double powi(double base, int times)
{
    double tmp = base, ret = 1.0;

    for (int t = times; t > 0; t /= 2) {
        if (t % 2 == 1)
            ret *= tmp;
        tmp = tmp * tmp;
    }
    return ret;
}

static double kernel(const struct svm *s, const double *x, const double *v, size_t nf)
{
    double sum = 0;

    if (s->kernel == KERNEL_RBF) {
        for (size_t i = 0; i < nf; i++) {
            double d = x[i] - v[i];
            sum += d * d;
        }
        return exp(-s->gamma * sum);
    }
    for (size_t i = 0; i < nf; i++)
        sum += x[i] * v[i];
    switch (s->kernel) {
    case KERNEL_POLY:
        return powi(s->gamma * sum + s->coef0, s->degree);
    case KERNEL_SIGMOID:
        return tanh(s->gamma * sum + s->coef0);
    default:
        return sum;
    }
}

static double sigmoid_predict(double dec, double a, double b)
{
    double f = dec * a + b;

    /* 1-p used later; libsvm avoids the catastrophic cancellation this way */
    if (f >= 0)
        return exp(-f) / (1.0 + exp(-f));
    return 1.0 / (1 + exp(f));
}

/* libsvm's multiclass_probability: method 2 of Wu, Lin and Weng, its iteration and stopping
 * rule unchanged. r is k x k pairwise probabilities; p receives k probabilities. */
static void couple(struct svm *s, size_t k, double *p)
{
    const double *r = s->r;
    double *q = s->q, *qp = s->qp, pqp, eps = 0.005 / (double)k;
    size_t max_iter = k > 100 ? k : 100;

    for (size_t t = 0; t < k; t++) {
        p[t] = 1.0 / (double)k;
        q[t * k + t] = 0;
        for (size_t j = 0; j < t; j++) {
            q[t * k + t] += r[j * k + t] * r[j * k + t];
            q[t * k + j] = q[j * k + t];
        }
        for (size_t j = t + 1; j < k; j++) {
            q[t * k + t] += r[j * k + t] * r[j * k + t];
            q[t * k + j] = -r[j * k + t] * r[t * k + j];
        }
    }
    for (size_t iter = 0; iter < max_iter; iter++) {
        double max_error = 0;
        pqp = 0;
        for (size_t t = 0; t < k; t++) {
            qp[t] = 0;
            for (size_t j = 0; j < k; j++)
                qp[t] += q[t * k + j] * p[j];
            pqp += p[t] * qp[t];
        }
        for (size_t t = 0; t < k; t++) {
            double e = fabs(qp[t] - pqp);
            if (e > max_error)
                max_error = e;
        }
        if (max_error < eps)
            break;
        for (size_t t = 0; t < k; t++) {
            double diff = (-qp[t] + pqp) / q[t * k + t];
            p[t] += diff;
            pqp = (pqp + diff * (diff * q[t * k + t] + 2 * qp[t])) / (1 + diff) / (1 + diff);
            for (size_t j = 0; j < k; j++) {
                qp[j] = (qp[j] + diff * q[t * k + j]) / (1 + diff);
                p[j] /= (1 + diff);
            }
        }
    }
}

static void proba(struct svm *s, double *p)
{
    const double min_prob = 1e-7;
    size_t k = s->n_class, n = 0;

    for (size_t i = 0; i < k; i++)
        for (size_t j = i + 1; j < k; j++, n++) {
            double v = sigmoid_predict(s->dec[n], s->prob_a[n], s->prob_b[n]);
            v = v > min_prob ? v : min_prob;
            v = v < 1 - min_prob ? v : 1 - min_prob;
            s->r[i * k + j] = v;
            s->r[j * k + i] = 1 - v;
        }
    couple(s, k, p);
}

/* sklearn.utils.multiclass._ovr_decision_function(dec < 0, -dec, n_classes) */
static void ovr_shape(struct svm *s, double *out)
{
    size_t k = s->n_class, n = 0;

    for (size_t i = 0; i < k; i++) {
        out[i] = 0;
        s->conf[i] = 0;
    }
    for (size_t i = 0; i < k; i++)
        for (size_t j = i + 1; j < k; j++, n++) {
            double c = -s->dec[n];
            s->conf[i] -= c;
            s->conf[j] += c;
            if (s->dec[n] < 0)
                out[j] += 1;
            else
                out[i] += 1;
        }
    for (size_t i = 0; i < k; i++)
        out[i] = out[i] + s->conf[i] / (3 * (fabs(s->conf[i]) + 1));
}

static void svm_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    struct svm *s = m->impl;
    size_t nf = m->info.n_features, k = s->n_class, n = 0;

    for (size_t i = 0; i < s->n_sv; i++)
        s->kvalue[i] = kernel(s, x, s->sv + i * nf, nf);
    if (!m->info.classifier) {
        double sum = 0;
        for (size_t i = 0; i < s->n_sv; i++)
            sum += s->coef[i] * s->kvalue[i];
        out->values[0] = sum + s->intercept[0];
        return;
    }
    for (size_t i = 0; i < k; i++)
        s->vote[i] = 0;
    for (size_t i = 0; i < k; i++)
        for (size_t j = i + 1; j < k; j++, n++) {
            const double *c1 = s->coef + (j - 1) * s->n_sv, *c2 = s->coef + i * s->n_sv;
            size_t si = s->start[i], sj = s->start[j];
            double sum = 0;
            for (size_t t = 0; t < (size_t)s->count[i]; t++)
                sum += c1[si + t] * s->kvalue[si + t];
            for (size_t t = 0; t < (size_t)s->count[j]; t++)
                sum += c2[sj + t] * s->kvalue[sj + t];
            s->dec[n] = sum + s->intercept[n];
            if (s->dec[n] > 0)
                ++s->vote[i];
            else
                ++s->vote[j];
        }
    /* libsvm: the first class with the most votes */
    size_t best = 0;
    for (size_t i = 1; i < k; i++)
        if (s->vote[i] > s->vote[best])
            best = i;
    if (k == 2) {
        out->decision[0] = -s->dec[0];
    } else if (s->shape == SHAPE_OVR) {
        ovr_shape(s, out->decision);
        if (s->break_ties)
            best = model__argmax(out->decision, k);
    } else {
        for (size_t i = 0; i < s->n_pairs; i++)
            out->decision[i] = s->dec[i];
    }
    out->label = best;
    if (s->prob_a)
        proba(s, out->proba);
}

const struct model_kind model__svm = {"svm", svm_load, svm_predict};
