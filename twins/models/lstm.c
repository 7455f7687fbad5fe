/* lstm.c: kind "lstm": one or more stacked nn.LSTM layers (PyTorch's state_dict layout, gates
 * in the order i, f, g, o, zero initial state) run over a window of steps, then a linear head
 * on the last step's hidden state. Computed in double from the exported weights.
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>

#define MAX_LAYERS 64

struct lstm_layer {
    size_t n_in, hidden;
    double *w_ih, *w_hh; /* 4H x n_in, 4H x H */
    double *b_ih, *b_hh; /* 4H */
    double *h, *c;       /* scratch: state, H each */
};

struct lstm {
    size_t n_layers;
    struct lstm_layer *layers;
    double *head_w, *head_b; /* outputs x H_last, outputs */
    double *gates;           /* scratch: 4 x the widest hidden */
};

static int lstm_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    struct lstm *s = model__alloc(m, 1, sizeof *s, err);
    const msgpack_object *layers, *head;
    size_t widest = 0, no = m->info.n_outputs, h;
    int rc;

    if (!s)
        return -ENOMEM;
    m->impl = s;
    if (m->info.classifier) {
        model__errf(err, "classes: an lstm is a regressor here");
        return -EINVAL;
    }
    if ((rc = model__field_array(root, "", "layers", &layers, err)) ||
        (rc = model__field_map(root, "", "head", &head, err)))
        return rc;
    s->n_layers = layers->via.array.size;
    if (s->n_layers == 0 || s->n_layers > MAX_LAYERS) {
        model__errf(err, "layers: 1 to %d expected, found %zu", MAX_LAYERS, s->n_layers);
        return -EINVAL;
    }
    if (!(s->layers = model__alloc(m, s->n_layers, sizeof *s->layers, err)))
        return -ENOMEM;
    for (size_t i = 0; i < s->n_layers; i++) {
        const msgpack_object *o = &layers->via.array.ptr[i];
        struct lstm_layer *l = &s->layers[i];
        size_t prev = i ? s->layers[i - 1].hidden : m->info.n_features;
        char ctx[32];
        snprintf(ctx, sizeof ctx, "layers[%zu]", i);
        if (o->type != MSGPACK_OBJECT_MAP) {
            model__errf(err, "%s: expected a map", ctx);
            return -EINVAL;
        }
        if ((rc = model__field_size(o, ctx, "n_in", prev, prev, &l->n_in, err)) ||
            (rc = model__field_size(o, ctx, "hidden", 1, 1u << 16, &l->hidden, err)))
            return rc;
        h = l->hidden;
        if (4 * h > SIZE_MAX / (l->n_in > h ? l->n_in : h)) {
            model__errf(err, "%s: too large", ctx);
            return -EINVAL;
        }
        if ((rc = model__field_doubles(m, o, ctx, "w_ih", 4 * h * l->n_in, &l->w_ih, NULL, err)) ||
            (rc = model__field_doubles(m, o, ctx, "w_hh", 4 * h * h, &l->w_hh, NULL, err)) ||
            (rc = model__field_doubles(m, o, ctx, "b_ih", 4 * h, &l->b_ih, NULL, err)) ||
            (rc = model__field_doubles(m, o, ctx, "b_hh", 4 * h, &l->b_hh, NULL, err)))
            return rc;
        if (!(l->h = model__alloc(m, h, sizeof(double), err)) ||
            !(l->c = model__alloc(m, h, sizeof(double), err)))
            return -ENOMEM;
        if (h > widest)
            widest = h;
    }
    h = s->layers[s->n_layers - 1].hidden;
    if (no > SIZE_MAX / h) {
        model__errf(err, "head: too large");
        return -EINVAL;
    }
    if ((rc = model__field_doubles(m, head, "head", "weight", no * h, &s->head_w, NULL, err)) ||
        (rc = model__field_doubles(m, head, "head", "bias", no, &s->head_b, NULL, err)))
        return rc;
    return (s->gates = model__alloc(m, 4 * widest, sizeof(double), err)) ? 0 : -ENOMEM;
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* One step of one layer: gates = W_ih x + b_ih + W_hh h + b_hh; c = f c + i g; h = o tanh(c). */
static void step(struct lstm_layer *l, const double *x, double *gates)
{
    size_t h = l->hidden;

    for (size_t r = 0; r < 4 * h; r++) {
        const double *wi = l->w_ih + r * l->n_in, *wh = l->w_hh + r * h;
        double a = 0, b = 0;
        for (size_t j = 0; j < l->n_in; j++)
            a += wi[j] * x[j];
        for (size_t j = 0; j < h; j++)
            b += wh[j] * l->h[j];
        gates[r] = a + l->b_ih[r] + b + l->b_hh[r];
    }
    for (size_t j = 0; j < h; j++) {
        double i = sigmoid(gates[j]), f = sigmoid(gates[h + j]);
        double g = tanh(gates[2 * h + j]), o = sigmoid(gates[3 * h + j]);
        l->c[j] = f * l->c[j] + i * g;
        l->h[j] = o * tanh(l->c[j]);
    }
}

static void lstm_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    struct lstm *s = m->impl;
    size_t nf = m->info.n_features;

    for (size_t i = 0; i < s->n_layers; i++)
        for (size_t j = 0; j < s->layers[i].hidden; j++)
            s->layers[i].h[j] = s->layers[i].c[j] = 0;
    /* time-major: each step goes up the stack, which gives what layer-major gives */
    for (size_t t = 0; t < m->info.window; t++) {
        const double *in = x + t * nf;
        for (size_t i = 0; i < s->n_layers; i++) {
            step(&s->layers[i], in, s->gates);
            in = s->layers[i].h;
        }
    }
    const struct lstm_layer *top = &s->layers[s->n_layers - 1];
    for (size_t k = 0; k < m->info.n_outputs; k++) {
        const double *w = s->head_w + k * top->hidden;
        double sum = 0;
        for (size_t j = 0; j < top->hidden; j++)
            sum += w[j] * top->h[j];
        out->values[k] = sum + s->head_b[k];
    }
}

const struct model_kind model__lstm = {"lstm", lstm_load, lstm_predict};
