/* predict.c: the public prediction calls: the finiteness check, the preprocessing chain and
 * the hand-off to the kind, one sample or a batch, with no allocation. The arithmetic of each
 * kind is in its own file. One thread at a time per model (the scratch is the model's).
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>
#include <string.h>

bool model__finite(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

/* The same operations, in the same order, as StandardScaler.transform (x -= mean; x /= scale)
 * and MinMaxScaler.transform (x *= scale; x += min; clip), so the results are bit-identical. */
void model__prep_apply(const struct twin_model *m, const double *x, double *y)
{
    size_t nf = m->info.n_features, steps = m->info.window ? m->info.window : 1;

    memcpy(y, x, m->info.n_inputs * sizeof *y);
    for (size_t s = 0; s < m->n_prep; s++) {
        const struct model_prep *p = &m->prep[s];
        for (size_t t = 0; t < steps; t++) {
            double *v = y + t * nf;
            if (p->type == MODEL_PREP_STANDARD) {
                if (p->mean)
                    for (size_t j = 0; j < nf; j++)
                        v[j] -= p->mean[j];
                if (p->scale)
                    for (size_t j = 0; j < nf; j++)
                        v[j] /= p->scale[j];
                continue;
            }
            for (size_t j = 0; j < nf; j++) {
                v[j] *= p->scale[j];
                v[j] += p->min[j];
                if (p->clip)
                    v[j] = v[j] < p->lo ? p->lo : v[j] > p->hi ? p->hi : v[j];
            }
        }
    }
}

int twin_model_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    struct twin_model_out o;

    if (!m || !x || !out)
        return -EINVAL;
    if (!model__finite(x, m->info.n_inputs))
        return -EDOM;
    model__prep_apply(m, x, m->xbuf);
    o.values = out->values ? out->values : m->valbuf;
    o.proba = out->proba ? out->proba : m->probbuf;
    o.decision = out->decision ? out->decision : m->decbuf;
    o.label = 0;
    m->kind->predict(m, m->xbuf, &o);
    if (m->info.classifier)
        o.values[0] = m->info.classes_are_strings ? NAN : m->info.class_numbers[o.label];
    out->label = o.label;
    return 0;
}

int twin_model_predict_batch(struct twin_model *m, const double *x, size_t n,
                             const struct twin_model_batch *out, size_t *n_done)
{
    const struct twin_model_info *in;
    size_t i;
    int rc = 0;

    if (n_done)
        *n_done = 0;
    if (!m || (!x && n) || !out)
        return -EINVAL;
    in = &m->info;
    for (i = 0; i < n; i++) {
        struct twin_model_out o = {
            out->values ? out->values + i * in->n_outputs : NULL,
            out->proba ? out->proba + i * in->n_classes : NULL,
            out->decision ? out->decision + i * in->n_decision : NULL,
            0,
        };
        rc = twin_model_predict(m, x + i * in->n_inputs, &o);
        if (rc)
            break;
        if (out->labels)
            out->labels[i] = o.label;
    }
    if (n_done)
        *n_done = i;
    return rc;
}
