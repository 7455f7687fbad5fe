/* tree.c: kind "tree": scikit-learn's decision trees alone ("single": DecisionTree and
 * ExtraTree), averaged ("forest": RandomForest, ExtraTrees) and boosted ("boost":
 * GradientBoosting), classifiers and regressors. Inputs are rounded to float32 first, as
 * scikit-learn's trees do, so every split falls the same way. A tree's children must point
 * forward inside it, which is what makes a walk end.
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>

enum { ENSEMBLE_SINGLE, ENSEMBLE_FOREST, ENSEMBLE_BOOST };
enum { LINK_IDENTITY, LINK_LOGISTIC, LINK_EXPONENTIAL, LINK_SOFTMAX };

struct tree {
    size_t n_nodes;
    int32_t *left, *right, *feature; /* leaves: left = right = -1 */
    double *threshold;
    double *value; /* n_nodes x width */
};

struct forest {
    int ensemble, link;
    size_t n_trees, width, per_stage;
    struct tree *trees;
    double learning_rate;
    double *init; /* boost: per_stage initial raw predictions */
    double *x32;  /* scratch: the sample rounded to float32 */
    double *acc;  /* scratch: width (or per_stage) accumulators */
};

static int tree_one_load(struct twin_model *m, const msgpack_object *o, size_t i, size_t width,
                         struct tree *t, char *err)
{
    const msgpack_object *left;
    char ctx[32];
    size_t n;
    int rc;

    snprintf(ctx, sizeof ctx, "trees[%zu]", i);
    if (o->type != MSGPACK_OBJECT_MAP) {
        model__errf(err, "%s: expected a map", ctx);
        return -EINVAL;
    }
    if ((rc = model__field_array(o, ctx, "left", &left, err)))
        return rc;
    n = left->via.array.size;
    if (n == 0 || n > INT32_MAX) {
        model__errf(err, "%s: a tree has 1 to %d nodes", ctx, INT32_MAX);
        return -EINVAL;
    }
    if (width > SIZE_MAX / n) {
        model__errf(err, "%s.value: too large", ctx);
        return -EINVAL;
    }
    t->n_nodes = n;
    if ((rc = model__field_ints(m, o, ctx, "left", n, -1, (int64_t)n - 1, &t->left, err)) ||
        (rc = model__field_ints(m, o, ctx, "right", n, -1, (int64_t)n - 1, &t->right, err)) ||
        (rc = model__field_ints(m, o, ctx, "feature", n, 0, (int64_t)m->info.n_features - 1,
                                &t->feature, err)) ||
        (rc = model__field_doubles(m, o, ctx, "threshold", n, &t->threshold, NULL, err)) ||
        (rc = model__field_doubles(m, o, ctx, "value", n * width, &t->value, NULL, err)))
        return rc;
    for (size_t k = 0; k < n; k++) {
        int32_t l = t->left[k], r = t->right[k];
        if ((l < 0) != (r < 0)) {
            model__errf(err, "%s: node %zu has one child", ctx, k);
            return -EINVAL;
        }
        /* children after their parent: no cycle, and a walk takes at most n steps */
        if (l >= 0 && ((size_t)l <= k || (size_t)r <= k)) {
            model__errf(err, "%s: node %zu points back to node %d", ctx, k, (size_t)l <= k ? l : r);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_shape(struct twin_model *m, struct forest *f, char *err)
{
    const struct twin_model_info *in = &m->info;

    if (f->ensemble != ENSEMBLE_BOOST) {
        f->width = in->classifier ? in->n_classes : in->n_outputs;
        m->info.has_proba = in->classifier;
        return 0;
    }
    f->width = 1;
    switch (f->link) {
    case LINK_IDENTITY:
        if (in->classifier || f->per_stage != 1 || in->n_outputs != 1)
            goto bad;
        break;
    case LINK_LOGISTIC:
    case LINK_EXPONENTIAL:
        if (!in->classifier || in->n_classes != 2 || f->per_stage != 1)
            goto bad;
        break;
    default:
        if (!in->classifier || in->n_classes < 3 || f->per_stage != in->n_classes)
            goto bad;
    }
    if (in->classifier) {
        m->info.has_proba = true;
        m->info.n_decision = f->per_stage;
    }
    return 0;
bad:
    model__errf(err, "link, per_stage and classes do not fit together (a regressor: identity, "
                     "1; two classes: logistic or exponential, 1; more: softmax, one per class)");
    return -EINVAL;
}

static int tree_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    static const char *const ensembles[] = {"single", "forest", "boost"};
    static const char *const links[] = {"identity", "logistic", "exponential", "softmax"};
    struct forest *f = model__alloc(m, 1, sizeof *f, err);
    const msgpack_object *trees;
    int rc;

    if (!f)
        return -ENOMEM;
    m->impl = f;
    f->per_stage = 1;
    if ((rc = model__field_enum(root, "", "ensemble", ensembles, 3, &f->ensemble, err)))
        return rc;
    if (f->ensemble == ENSEMBLE_BOOST &&
        ((rc = model__field_enum(root, "", "link", links, 4, &f->link, err)) ||
         (rc = model__field_size(root, "", "per_stage", 1, UINT16_MAX, &f->per_stage, err)) ||
         (rc = model__field_double(root, "", "learning_rate", &f->learning_rate, err)) ||
         (rc = model__field_doubles(m, root, "", "init", f->per_stage, &f->init, NULL, err))))
        return rc;
    if ((rc = check_shape(m, f, err)) || (rc = model__field_array(root, "", "trees", &trees, err)))
        return rc;
    f->n_trees = trees->via.array.size;
    if (f->n_trees == 0 || (f->ensemble == ENSEMBLE_SINGLE && f->n_trees != 1) ||
        f->n_trees % f->per_stage != 0) {
        model__errf(err, "trees: %zu trees for ensemble %s with %zu per stage", f->n_trees,
                    ensembles[f->ensemble], f->per_stage);
        return -EINVAL;
    }
    if (!(f->trees = model__alloc(m, f->n_trees, sizeof *f->trees, err)) ||
        !(f->x32 = model__alloc(m, m->info.n_features, sizeof(double), err)) ||
        !(f->acc = model__alloc(m, f->width > f->per_stage ? f->width : f->per_stage,
                                sizeof(double), err)))
        return -ENOMEM;
    for (size_t i = 0; i < f->n_trees; i++)
        if ((rc = tree_one_load(m, &trees->via.array.ptr[i], i, f->width, &f->trees[i], err)))
            return rc;
    return 0;
}

/* numpy's astype(float32): round to nearest, and past FLT_MAX's rounding edge, infinity. */
static double to_f32(double v)
{
    if (fabs(v) >= 0x1.ffffffp127)
        return copysign(INFINITY, v);
    return (double)(float)v;
}

static const double *leaf(const struct tree *t, const double *x, size_t width)
{
    size_t k = 0;

    while (t->left[k] >= 0)
        k = (size_t)(x[t->feature[k]] <= t->threshold[k] ? t->left[k] : t->right[k]);
    return t->value + k * width;
}

static void boost_predict(struct twin_model *m, struct forest *f, struct twin_model_out *out)
{
    size_t k = f->per_stage;
    double *raw = f->acc, *p = out->proba;

    for (size_t j = 0; j < k; j++)
        raw[j] = f->init[j];
    for (size_t i = 0; i < f->n_trees; i += k)
        for (size_t j = 0; j < k; j++)
            raw[j] += f->learning_rate * leaf(&f->trees[i + j], f->x32, 1)[0];
    if (!m->info.classifier) {
        out->values[0] = raw[0];
        return;
    }
    for (size_t j = 0; j < k; j++)
        out->decision[j] = raw[j];
    if (f->link == LINK_LOGISTIC || f->link == LINK_EXPONENTIAL) {
        /* _gb_losses: proba[:, 1] = expit(raw) (exponential: expit(2 raw)), proba[:, 0] =
         * 1 - that; the label is the argmax of proba, exponential's the sign of raw */
        p[1] = model__expit(f->link == LINK_LOGISTIC ? raw[0] : 2.0 * raw[0]);
        p[0] = 1.0 - p[1];
        out->label = f->link == LINK_LOGISTIC ? model__argmax(p, 2) : raw[0] >= 0;
        return;
    }
    /* softmax: exp(raw - logsumexp(raw)), scipy's logsumexp */
    double max = raw[0], sum = 0, lse;
    for (size_t j = 1; j < k; j++)
        if (raw[j] > max)
            max = raw[j];
    for (size_t j = 0; j < k; j++)
        sum += exp(raw[j] - max);
    lse = log(sum);
    lse += max;
    for (size_t j = 0; j < k; j++)
        p[j] = exp(raw[j] - lse);
    out->label = model__argmax(p, k);
}

static void tree_predict(struct twin_model *m, const double *x, struct twin_model_out *out)
{
    struct forest *f = m->impl;
    size_t w = f->width;
    double *acc = f->acc;

    for (size_t j = 0; j < m->info.n_features; j++)
        f->x32[j] = to_f32(x[j]);
    if (f->ensemble == ENSEMBLE_BOOST) {
        boost_predict(m, f, out);
        return;
    }
    if (f->ensemble == ENSEMBLE_SINGLE) {
        const double *v = leaf(&f->trees[0], f->x32, w);
        if (!m->info.classifier) {
            for (size_t j = 0; j < w; j++)
                out->values[j] = v[j];
            return;
        }
        /* DecisionTreeClassifier: the label from the raw counts, proba normalized */
        double norm = 0;
        out->label = model__argmax(v, w);
        for (size_t j = 0; j < w; j++)
            norm += v[j];
        if (norm == 0.0)
            norm = 1.0;
        for (size_t j = 0; j < w; j++)
            out->proba[j] = v[j] / norm;
        return;
    }
    /* forests: the sum of the trees' outputs (a classifier's trees give probabilities), in
     * tree order, divided by the number of trees */
    for (size_t j = 0; j < w; j++)
        acc[j] = 0;
    for (size_t i = 0; i < f->n_trees; i++) {
        const double *v = leaf(&f->trees[i], f->x32, w);
        if (m->info.classifier) {
            double norm = 0;
            for (size_t j = 0; j < w; j++)
                norm += v[j];
            if (norm == 0.0)
                norm = 1.0;
            for (size_t j = 0; j < w; j++)
                acc[j] += v[j] / norm;
        } else {
            for (size_t j = 0; j < w; j++)
                acc[j] += v[j];
        }
    }
    for (size_t j = 0; j < w; j++)
        acc[j] /= (double)f->n_trees;
    if (!m->info.classifier) {
        for (size_t j = 0; j < w; j++)
            out->values[j] = acc[j];
        return;
    }
    for (size_t j = 0; j < w; j++)
        out->proba[j] = acc[j];
    out->label = model__argmax(acc, w);
}

const struct model_kind model__tree = {"tree", tree_load, tree_predict};
