/* tree.c: kind "tree": scikit-learn's decision trees alone ("single": DecisionTree and
 * ExtraTree), averaged ("forest": RandomForest, ExtraTrees) and boosted ("boost":
 * GradientBoosting), classifiers and regressors. Inputs are rounded to float32 first, as
 * scikit-learn's trees do, so every split falls the same way. A tree's children must point
 * forward inside it, which is what makes a walk end.
 */
#include "models_int.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* Deepest tree padded into a complete one (2^depth leaves, at most twice the real ones). */
#define COMPLETE_MAX_DEPTH 24

enum { ENSEMBLE_SINGLE, ENSEMBLE_FOREST, ENSEMBLE_BOOST };
enum { LINK_IDENTITY, LINK_LOGISTIC, LINK_EXPONENTIAL, LINK_SOFTMAX };

/* A tree as prediction walks it, built at load from the file's arrays (which are then freed):
 * every reachable node renumbered in file order, the internal nodes first and the leaves after
 * them, one 16-byte struct each, so that a step reads one cache line. A leaf's children are itself,
 * so that a walk of exactly `depth` steps (the longest path) ends on the right leaf whichever path
 * it took: the loop has no branch that depends on the sample, and the walks of successive trees
 * overlap in the processor. Thresholds are kept as float32, rounded down: for a float32 x, x <= t
 * exactly when x <= the largest float32 not above t, so every split falls as scikit-learn's
 * (float32 sample, float64 threshold). */
struct tree_node {
    float threshold;   /* go to child[0] when x[feature] <= threshold (NaN: child[1]) */
    uint32_t feature;  /* leaves: 0 */
    uint32_t child[2]; /* leaves: their own index */
};

/* A tree whose leaves are all at or near its deepest level (forests with max_depth on enough
 * data, boosting's shallow trees) is padded into a complete one: a leaf above the last level
 * becomes splits that lead, either way, to copies of its values. Its nodes need no children
 * (node k's are 2k + 1 and 2k + 2): 8 bytes a split, and a step one load less. */
struct tree_split {
    float threshold;
    uint32_t feature;
};

struct tree {
    uint32_t depth;            /* the longest path from the root: a complete tree's every walk */
    uint32_t min_depth;        /* the shortest: steps a walk takes before it looks for a leaf */
    uint32_t n_internal;       /* nodes [0, n_internal) split; the rest are leaves */
    struct tree_node *nodes;   /* NULL when complete */
    struct tree_split *splits; /* complete: 2^depth - 1 splits, breadth-first */
    double *value; /* per leaf (node - n_internal), width values: forest classifiers' leaves
                    * already divided by their sum, as predict_proba does per tree */
};

struct forest {
    int ensemble, link;
    size_t n_trees, width, per_stage;
    struct tree *trees;
    double learning_rate;
    double *init; /* boost: per_stage initial raw predictions */
    float *x32;   /* scratch: the sample rounded to float32 */
    double *acc;  /* scratch: width (or per_stage) accumulators */
};

/* The largest float32 not above t (t finite). */
static float f32_down(double t)
{
    float f;

    if (t >= FLT_MAX)
        return FLT_MAX;
    if (t < -FLT_MAX)
        return -INFINITY;
    f = (float)t;
    return (double)f > t ? nextafterf(f, -INFINITY) : f;
}

/* A leaf's width values into out, divided by their sum (a zero sum counts as 1) when
 * `normalize`, in predict_proba's order. */
static void leaf_copy(double *out, const double *v, size_t width, bool normalize)
{
    double norm = 0;

    if (!normalize) {
        for (size_t j = 0; j < width; j++)
            out[j] = v[j];
        return;
    }
    for (size_t j = 0; j < width; j++)
        norm += v[j];
    if (norm == 0.0)
        norm = 1.0;
    for (size_t j = 0; j < width; j++)
        out[j] = v[j] / norm;
}

struct tree_src {
    const int32_t *left, *right, *feature;
    const double *threshold, *value;
    size_t width;
    bool normalize;
};

/* Fills slot `slot` (at level `level`) of a complete tree and everything below it from node k
 * of the file. Recursion as deep as the tree (at most COMPLETE_MAX_DEPTH). */
static void complete_fill(struct tree *t, const struct tree_src *src, uint32_t k, size_t slot,
                          uint32_t level)
{
    size_t w = src->width;

    if (src->left[k] < 0) {
        /* a leaf: pass-through splits below it, its values in every last-level slot under it */
        size_t first = slot, count = 1;
        for (uint32_t d = level; d < t->depth; d++) {
            for (size_t i = first; i < first + count; i++)
                t->splits[i] = (struct tree_split){0, 0};
            first = 2 * first + 1;
            count *= 2;
        }
        first -= t->n_internal;
        leaf_copy(t->value + first * w, src->value + (size_t)k * w, w, src->normalize);
        for (size_t i = 1; i < count; i++)
            memcpy(t->value + (first + i) * w, t->value + first * w, w * sizeof *t->value);
        return;
    }
    t->splits[slot].threshold = f32_down(src->threshold[k]);
    t->splits[slot].feature = (uint32_t)src->feature[k];
    complete_fill(t, src, (uint32_t)src->left[k], 2 * slot + 1, level + 1);
    complete_fill(t, src, (uint32_t)src->right[k], 2 * slot + 2, level + 1);
}

/* Lays out the checked file arrays of one tree (n nodes) for prediction into t; `normalize`:
 * divide each leaf's values by their sum (a zero sum counts as 1), in predict_proba's order.
 * Only the nodes a walk can reach are kept. On error t holds nothing to free. */
static int tree_build(struct twin_model *m, struct tree *t, size_t n, size_t width, bool normalize,
                      const int32_t *left, const int32_t *right, const int32_t *feature,
                      const double *threshold, const double *value, char *err)
{
    /* depth: the longest path to each node (UNSEEN: not reachable), which the children's
     * being after their parent lets one pass in file order find (shortest: likewise the
     * shortest); queue: the reachable nodes; pos: each one's new index */
    uint32_t *depth = model__alloc(m, 4 * n, sizeof *depth, err), *queue, *pos, *shortest;
    size_t tail = 0, n_int = 0, n_leaves = 0;
    const uint32_t UNSEEN = UINT32_MAX;

    if (!depth)
        return -ENOMEM;
    queue = depth + n;
    pos = queue + n;
    shortest = pos + n;
    t->depth = 0;
    t->min_depth = UNSEEN;
    for (size_t k = 0; k < n; k++)
        depth[k] = pos[k] = shortest[k] = UNSEEN;
    depth[0] = shortest[0] = 0;
    for (size_t k = 0; k < n; k++) {
        if (depth[k] == UNSEEN)
            continue;
        if (left[k] < 0) {
            t->depth = depth[k] > t->depth ? depth[k] : t->depth;
            t->min_depth = shortest[k] < t->min_depth ? shortest[k] : t->min_depth;
            continue;
        }
        for (int c = 0; c < 2; c++) {
            uint32_t ch = (uint32_t)(c ? right[k] : left[k]);
            if (depth[ch] == UNSEEN || depth[ch] < depth[k] + 1)
                depth[ch] = depth[k] + 1;
            if (shortest[ch] > shortest[k] + 1)
                shortest[ch] = shortest[k] + 1;
        }
    }
    /* the reachable nodes in file order: scikit-learn's depth-first order, where a left
     * child follows its parent (deep sparse trees walk faster so than breadth-first) */
    for (size_t k = 0; k < n; k++) {
        if (depth[k] == UNSEEN)
            continue;
        queue[tail++] = (uint32_t)k;
        if (left[k] < 0)
            n_leaves++;
        else
            n_int++;
    }
    if (t->depth <= COMPLETE_MAX_DEPTH && ((size_t)1 << t->depth) <= 2 * n_leaves) {
        const struct tree_src src = {left, right, feature, threshold, value, width, normalize};
        size_t slots = (size_t)1 << t->depth;
        model__free(m, depth);
        t->n_internal = (uint32_t)(slots - 1);
        if (!(t->splits = model__alloc(m, slots - 1, sizeof *t->splits, err)) ||
            !(t->value = model__alloc(m, slots, width * sizeof *t->value, err))) {
            model__free(m, t->splits);
            t->splits = NULL;
            return -ENOMEM;
        }
        complete_fill(t, &src, 0, 0, 0);
        return 0;
    }
    t->n_internal = (uint32_t)n_int;
    t->nodes = model__alloc(m, tail, sizeof *t->nodes, err);
    t->value = t->nodes ? model__alloc(m, n_leaves, width * sizeof *t->value, err) : NULL;
    if (!t->value) {
        model__free(m, t->nodes);
        model__free(m, depth);
        t->nodes = NULL;
        return -ENOMEM;
    }
    n_int = n_leaves = 0;
    for (size_t q = 0; q < tail; q++) {
        uint32_t k = queue[q];
        pos[k] = (uint32_t)(left[k] < 0 ? t->n_internal + n_leaves++ : n_int++);
    }
    for (size_t q = 0; q < tail; q++) {
        uint32_t k = queue[q], i = pos[k];
        struct tree_node *nd = &t->nodes[i];
        if (left[k] >= 0) {
            nd->threshold = f32_down(threshold[k]);
            nd->feature = (uint32_t)feature[k];
            nd->child[0] = pos[left[k]];
            nd->child[1] = pos[right[k]];
            continue;
        }
        nd->threshold = 0;
        nd->feature = 0;
        nd->child[0] = nd->child[1] = i;
        leaf_copy(t->value + (size_t)(i - t->n_internal) * width, value + (size_t)k * width, width,
                  normalize);
    }
    model__free(m, depth);
    return 0;
}

/* Checks the file's arrays of tree i and builds its layout; the arrays themselves are freed
 * before it returns, whatever it returns. */
static int tree_one_load(struct twin_model *m, const msgpack_object *o, size_t i, size_t width,
                         bool normalize, struct tree *t, char *err)
{
    const msgpack_object *left;
    int32_t *l = NULL, *r = NULL, *feat = NULL;
    double *thr = NULL, *val = NULL;
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
    if ((rc = model__field_ints(m, o, ctx, "left", n, -1, (int64_t)n - 1, &l, err)) ||
        (rc = model__field_ints(m, o, ctx, "right", n, -1, (int64_t)n - 1, &r, err)) ||
        (rc = model__field_ints(m, o, ctx, "feature", n, 0, (int64_t)m->info.n_features - 1, &feat,
                                err)) ||
        (rc = model__field_doubles(m, o, ctx, "threshold", n, &thr, NULL, err)) ||
        (rc = model__field_doubles(m, o, ctx, "value", n * width, &val, NULL, err)))
        goto done;
    for (size_t k = 0; k < n; k++) {
        if ((l[k] < 0) != (r[k] < 0)) {
            model__errf(err, "%s: node %zu has one child", ctx, k);
            rc = -EINVAL;
            goto done;
        }
        /* children after their parent: no cycle, and a walk takes at most n steps */
        if (l[k] >= 0 && ((size_t)l[k] <= k || (size_t)r[k] <= k)) {
            model__errf(err, "%s: node %zu points back to node %d", ctx, k,
                        (size_t)l[k] <= k ? l[k] : r[k]);
            rc = -EINVAL;
            goto done;
        }
    }
    rc = tree_build(m, t, n, width, normalize, l, r, feat, thr, val, err);
done:
    /* newest first: each is then found at once */
    model__free(m, val);
    model__free(m, thr);
    model__free(m, feat);
    model__free(m, r);
    model__free(m, l);
    return rc;
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
        !(f->x32 = model__alloc(m, m->info.n_features, sizeof(float), err)) ||
        !(f->acc = model__alloc(m, f->width > f->per_stage ? f->width : f->per_stage,
                                sizeof(double), err)))
        return -ENOMEM;
    for (size_t i = 0; i < f->n_trees; i++)
        if ((rc = tree_one_load(m, &trees->via.array.ptr[i], i, f->width,
                                f->ensemble == ENSEMBLE_FOREST && m->info.classifier, &f->trees[i],
                                err)))
            return rc;
    return 0;
}

/* numpy's astype(float32): round to nearest, and past FLT_MAX's rounding edge, infinity. */
static float to_f32(double v)
{
    if (fabs(v) >= 0x1.ffffffp127)
        return v < 0 ? -INFINITY : INFINITY;
    return (float)v;
}

/* The leaf a sample reaches. A complete tree: exactly t->depth steps, none of which branches
 * on the sample. Otherwise the shortest path's steps the same way (a leaf loops onto itself),
 * then steps until a leaf: a deep sparse tree's paths differ too much in length to walk them
 * all as far as the longest. */
static const double *leaf(const struct tree *t, const float *x, size_t width)
{
    const struct tree_node *nodes = t->nodes;
    uint32_t k = 0;

    if (!nodes) {
        const struct tree_split *sp = t->splits;
        for (uint32_t s = 0; s < t->depth; s++)
            k = 2 * k + 1 + !(x[sp[k].feature] <= sp[k].threshold);
        return t->value + (size_t)(k - t->n_internal) * width;
    }
    for (uint32_t s = 0; s < t->min_depth; s++) {
        const struct tree_node *nd = &nodes[k];
        k = nd->child[!(x[nd->feature] <= nd->threshold)];
    }
    while (k < t->n_internal) {
        const struct tree_node *nd = &nodes[k];
        k = nd->child[!(x[nd->feature] <= nd->threshold)];
    }
    return t->value + (size_t)(k - t->n_internal) * width;
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
        /* a classifier's leaves were divided by their sums at load */
        const double *v = leaf(&f->trees[i], f->x32, w);
        for (size_t j = 0; j < w; j++)
            acc[j] += v[j];
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
