/* learn.c: online learning for single-output linear regressors: the trained parameter vector,
 * prediction with a caller's vector, and the least-mean-squares step. The vectors belong to the
 * caller (the hub keeps one per twin); the model itself never changes. One thread at a time per
 * model (the preprocessed sample goes through the model's scratch).
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static bool learnable(const struct twin_model *m)
{
    return m && m->info.n_params > 0;
}

int twin_model_params_copy(const struct twin_model *m, double *theta, size_t n)
{
    const struct model_linear *l;

    if (!learnable(m) || !theta || n != m->info.n_params)
        return -EINVAL;
    l = m->impl;
    memcpy(theta, l->coef, m->info.n_features * sizeof *theta);
    theta[m->info.n_features] = l->intercept[0];
    return 0;
}

/* θ·[x', 1] with x' = the preprocessed sample in m->xbuf. */
static double dot(const struct twin_model *m, const double *theta)
{
    size_t nf = m->info.n_features;
    double s = 0;

    for (size_t j = 0; j < nf; j++)
        s += m->xbuf[j] * theta[j];
    return s + theta[nf];
}

int twin_model_predict_params(struct twin_model *m, const double *theta, const double *x, double *y)
{
    if (!learnable(m) || !theta || !x || !y)
        return -EINVAL;
    if (!model__finite(x, m->info.n_inputs))
        return -EDOM;
    model__prep_apply(m, x, m->xbuf);
    *y = dot(m, theta);
    return 0;
}

int twin_model_learn_step(struct twin_model *m, double *theta, const double *x, double y_true,
                          double rate, double *y_pred)
{
    size_t nf;
    double yhat, g;

    if (!learnable(m) || !theta || !x || !isfinite(rate) || rate <= 0)
        return -EINVAL;
    if (!model__finite(x, m->info.n_inputs) || !isfinite(y_true))
        return -EDOM;
    nf = m->info.n_features;
    model__prep_apply(m, x, m->xbuf);
    yhat = dot(m, theta);
    if (y_pred)
        *y_pred = yhat;
    g = rate * (y_true - yhat);
    /* check the whole step before writing any of it, so θ is unchanged on -ERANGE */
    if (!isfinite(g) || !isfinite(theta[nf] + g))
        return -ERANGE;
    for (size_t j = 0; j < nf; j++)
        if (!isfinite(theta[j] + g * m->xbuf[j]))
            return -ERANGE;
    for (size_t j = 0; j < nf; j++)
        theta[j] += g * m->xbuf[j];
    theta[nf] += g;
    return 0;
}
