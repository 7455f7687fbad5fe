/* linear.c: kinds "linear" (LinearRegression, Ridge, Lasso, ElasticNet, SGDRegressor,
 * LinearSVR: X·coefᵀ + intercept) and "logistic" (LogisticRegression, LinearSVC and other
 * linear classifiers: the same decision, then scikit-learn's label and probability rules).
 * Online learning of these parameters is learn.c's.
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>

enum { LINEAR_PROBA_NONE, LINEAR_PROBA_OVR, LINEAR_PROBA_SOFTMAX };

static int rows_load(struct twin_model *m, const msgpack_object *root, size_t rows, char *err)
{
    struct model_linear *l = model__alloc(m, 1, sizeof *l, err);
    size_t nf = m->info.n_features;
    int rc;

    if (!l)
        return -ENOMEM;
    if (rows > SIZE_MAX / nf) {
        model__errf(err, "coef: too large");
        return -EINVAL;
    }
    l->rows = rows;
    if ((rc = model__field_doubles(m, root, "", "coef", rows * nf, &l->coef, NULL, err)) ||
        (rc = model__field_doubles(m, root, "", "intercept", rows, &l->intercept, NULL, err)))
        return rc;
    m->impl = l;
    return 0;
}

static int linear_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    int rc;

    if (m->info.classifier) {
        model__errf(err, "classes: a linear regressor has none (linear classifiers are kind "
                         "logistic)");
        return -EINVAL;
    }
    rc = rows_load(m, root, m->info.n_outputs, err);
    if (rc)
        return rc;
    if (m->info.n_outputs == 1)
        m->info.n_params = m->info.n_features + 1;
    return 0;
}

static void decide(const struct model_linear *l, size_t nf, const double *x, double *d)
{
    for (size_t k = 0; k < l->rows; k++) {
        const double *w = l->coef + k * nf;
        double s = 0;
        for (size_t j = 0; j < nf; j++)
            s += x[j] * w[j];
        d[k] = s + l->intercept[k];
    }
}

static void linear_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    decide(m->impl, m->info.n_features, x, out->values);
}

static int logistic_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    static const char *const probas[] = {"none", "ovr", "softmax"};
    struct model_linear *l;
    size_t nc = m->info.n_classes;
    int rc, proba;

    if (!m->info.classifier || nc < 2) {
        model__errf(err, "classes: a logistic model needs at least 2 classes");
        return -EINVAL;
    }
    if ((rc = model__field_enum(root, "", "proba", probas, 3, &proba, err)) ||
        (rc = rows_load(m, root, nc == 2 ? 1 : nc, err)))
        return rc;
    l = m->impl;
    l->proba = proba;
    m->info.has_proba = proba != LINEAR_PROBA_NONE;
    m->info.n_decision = l->rows;
    return 0;
}

/* sklearn.utils.extmath.softmax on one row: subtract the max, exp, divide by the sum. */
static void softmax(double *p, size_t n)
{
    double max = p[0], sum = 0;

    for (size_t k = 1; k < n; k++)
        if (p[k] > max)
            max = p[k];
    for (size_t k = 0; k < n; k++) {
        p[k] = exp(p[k] - max);
        sum += p[k];
    }
    for (size_t k = 0; k < n; k++)
        p[k] /= sum;
}

static void logistic_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    const struct model_linear *l = m->impl;
    double *d = out->decision, *p = out->proba;
    size_t nc = m->info.n_classes;

    decide(l, m->info.n_features, x, d);
    /* LinearClassifierMixin.predict: the sign for two classes, else the first largest */
    out->label = l->rows == 1 ? (d[0] > 0) : model__argmax(d, nc);
    if (l->proba == LINEAR_PROBA_OVR) {
        /* _predict_proba_lr: expit, then (several classes) divide by the row's sum */
        if (l->rows == 1) {
            p[1] = model__expit(d[0]);
            p[0] = 1 - p[1];
            return;
        }
        double sum = 0;
        for (size_t k = 0; k < nc; k++) {
            p[k] = model__expit(d[k]);
            sum += p[k];
        }
        for (size_t k = 0; k < nc; k++)
            p[k] /= sum;
    } else if (l->proba == LINEAR_PROBA_SOFTMAX) {
        /* multinomial: softmax of the decision, [-d, d] for two classes */
        if (l->rows == 1) {
            p[0] = -d[0];
            p[1] = d[0];
        } else {
            for (size_t k = 0; k < nc; k++)
                p[k] = d[k];
        }
        softmax(p, nc);
    }
}

const struct model_kind model__linear = {"linear", linear_load, linear_predict};
const struct model_kind model__logistic = {"logistic", logistic_load, logistic_predict};
