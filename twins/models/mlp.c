/* mlp.c: kind "mlp": scikit-learn's multilayer perceptrons (MLPRegressor, MLPClassifier) with
 * the identity, logistic, tanh and relu activations and the identity, logistic and softmax
 * outputs, as _forward_pass_fast computes them, and the classifier's label rules.
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>

enum { ACT_IDENTITY, ACT_LOGISTIC, ACT_TANH, ACT_RELU, ACT_SOFTMAX };

#define MAX_LAYERS 64

struct layer {
    size_t n_in, n_out;
    double *coef; /* n_in x n_out, as sklearn's coefs_[i] */
    double *intercept;
};

struct mlp {
    int act, out_act;
    size_t n_layers;
    struct layer *layers;
    double *a, *b; /* scratch: activations, as wide as the widest layer */
};

static int mlp_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    static const char *const acts[] = {"identity", "logistic", "tanh", "relu", "softmax"};
    struct mlp *p = model__alloc(m, 1, sizeof *p, err);
    const struct twin_model_info *in = &m->info;
    const msgpack_object *layers;
    size_t width = in->n_features, want;
    int rc;

    if (!p)
        return -ENOMEM;
    m->impl = p;
    if ((rc = model__field_enum(root, "", "activation", acts, 4, &p->act, err)) ||
        (rc = model__field_enum(root, "", "out_activation", acts, 5, &p->out_act, err)) ||
        (rc = model__field_array(root, "", "layers", &layers, err)))
        return rc;
    p->n_layers = layers->via.array.size;
    if (p->n_layers == 0 || p->n_layers > MAX_LAYERS) {
        model__errf(err, "layers: 1 to %d expected, found %zu", MAX_LAYERS, p->n_layers);
        return -EINVAL;
    }
    if (!(p->layers = model__alloc(m, p->n_layers, sizeof *p->layers, err)))
        return -ENOMEM;
    for (size_t i = 0; i < p->n_layers; i++) {
        const msgpack_object *o = &layers->via.array.ptr[i];
        struct layer *l = &p->layers[i];
        size_t prev = i ? p->layers[i - 1].n_out : in->n_features;
        char ctx[32];
        snprintf(ctx, sizeof ctx, "layers[%zu]", i);
        if (o->type != MSGPACK_OBJECT_MAP) {
            model__errf(err, "%s: expected a map", ctx);
            return -EINVAL;
        }
        if ((rc = model__field_size(o, ctx, "n_in", prev, prev, &l->n_in, err)) ||
            (rc = model__field_size(o, ctx, "n_out", 1, UINT32_MAX, &l->n_out, err)))
            return rc;
        if (l->n_out > SIZE_MAX / l->n_in) {
            model__errf(err, "%s: too large", ctx);
            return -EINVAL;
        }
        if ((rc = model__field_doubles(m, o, ctx, "coef", l->n_in * l->n_out, &l->coef, NULL,
                                       err)) ||
            (rc = model__field_doubles(m, o, ctx, "intercept", l->n_out, &l->intercept, NULL, err)))
            return rc;
        if (l->n_out > width)
            width = l->n_out;
    }
    /* what the last layer must give, and through which output */
    size_t last = p->layers[p->n_layers - 1].n_out;
    bool ok;
    if (!in->classifier) {
        want = in->n_outputs;
        ok = p->out_act == ACT_IDENTITY;
    } else if (in->n_classes == 2) {
        want = 1;
        ok = p->out_act == ACT_LOGISTIC;
    } else {
        want = in->n_classes;
        ok = p->out_act == ACT_SOFTMAX && in->n_classes > 2;
    }
    if (last != want || !ok) {
        model__errf(err, "the last layer gives %zu values through %s; expected %zu through %s",
                    last, acts[p->out_act], want,
                    !in->classifier ? "identity"
                    : want == 1     ? "logistic"
                                    : "softmax");
        return -EINVAL;
    }
    if (in->classifier)
        m->info.has_proba = true;
    if (!(p->a = model__alloc(m, width, sizeof(double), err)) ||
        !(p->b = model__alloc(m, width, sizeof(double), err)))
        return -ENOMEM;
    return 0;
}

static void activate(int act, double *v, size_t n)
{
    switch (act) {
    case ACT_LOGISTIC:
        for (size_t i = 0; i < n; i++)
            v[i] = model__expit(v[i]);
        break;
    case ACT_TANH:
        for (size_t i = 0; i < n; i++)
            v[i] = tanh(v[i]);
        break;
    case ACT_RELU:
        for (size_t i = 0; i < n; i++)
            v[i] = v[i] > 0 ? v[i] : 0;
        break;
    case ACT_SOFTMAX: {
        double max = v[0], sum = 0;
        for (size_t i = 1; i < n; i++)
            if (v[i] > max)
                max = v[i];
        for (size_t i = 0; i < n; i++) {
            v[i] = exp(v[i] - max);
            sum += v[i];
        }
        for (size_t i = 0; i < n; i++)
            v[i] /= sum;
        break;
    }
    default:
        break;
    }
}

static void mlp_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    struct mlp *p = m->impl;
    const double *a = x;
    double *b = p->a;

    for (size_t i = 0; i < p->n_layers; i++) {
        const struct layer *l = &p->layers[i];
        for (size_t j = 0; j < l->n_out; j++)
            b[j] = 0;
        for (size_t k = 0; k < l->n_in; k++) {
            const double *w = l->coef + k * l->n_out;
            for (size_t j = 0; j < l->n_out; j++)
                b[j] += a[k] * w[j];
        }
        for (size_t j = 0; j < l->n_out; j++)
            b[j] += l->intercept[j];
        activate(i + 1 < p->n_layers ? p->act : p->out_act, b, l->n_out);
        a = b;
        b = b == p->a ? p->b : p->a;
    }
    /* a: the output layer */
    if (!m->info.classifier) {
        for (size_t j = 0; j < m->info.n_outputs; j++)
            out->values[j] = a[j];
        return;
    }
    if (m->info.n_classes == 2) {
        /* LabelBinarizer.inverse_transform: the positive class above 0.5 */
        out->proba[0] = 1 - a[0];
        out->proba[1] = a[0];
        out->label = a[0] > 0.5;
        return;
    }
    for (size_t j = 0; j < m->info.n_classes; j++)
        out->proba[j] = a[j];
    out->label = model__argmax(a, m->info.n_classes);
}

const struct model_kind model__mlp = {"mlp", mlp_load, mlp_predict};
