/* model: the models of a rules file: loading each .twm with the set (twins/models does the
 * arithmetic), checking that its inputs, target and learning fit it, and running it on a twin:
 * evaluating the input expressions (or, for an LSTM, reading a window of history per input)
 * into the model's input vector. What a target does with a prediction is learn.c's. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const struct path *rules__reported_path(const struct rules_expr *e)
{
    if (e->npaths != 1 || e->ncode < 1 || e->code[0].op != OP_PATH)
        return NULL;
    for (unsigned i = 1; i < e->ncode; i++)
        if (e->code[i].op != OP_RECORD)
            return NULL;
    return e->paths[0].root == ROOT_REPORTED && e->paths[0].sub_len ? &e->paths[0] : NULL;
}

int rules__model_open(struct model_def *m, const char *base_dir, char *err)
{
    char path[4096], merr[TWIN_MODEL_ERR_LEN];
    if (m->file[0] == '/' || !base_dir)
        snprintf(path, sizeof(path), "%s", m->file);
    else
        snprintf(path, sizeof(path), "%s/%s", base_dir, m->file);
    int rc = twin_model_load_file(path, &m->model, merr);
    if (rc < 0) {
        snprintf(err, RULES_ERR_LEN, "%s", merr); /* it names the file */
        return rc;
    }
    const struct twin_model_info *in = twin_model_info_get(m->model);
    if (in->n_features != m->ninputs) {
        snprintf(err, RULES_ERR_LEN, "%.300s takes %zu feature%s%s; inputs lists %u", path,
                 in->n_features, in->n_features == 1 ? "" : "s", in->window ? " per step" : "",
                 m->ninputs);
        return -EINVAL;
    }
    for (unsigned i = 0; in->window && i < m->ninputs; i++)
        if (!rules__reported_path(m->inputs[i])) {
            snprintf(err, RULES_ERR_LEN,
                     "%.300s is an LSTM over %zu steps of history: input %u must be a path such as "
                     "reported.heart_rate",
                     path, in->window, i + 1);
            return -EINVAL;
        }
    if (m->target && !in->classifier && in->n_outputs != 1) {
        snprintf(err, RULES_ERR_LEN, "target: %.300s predicts %zu values; a target scores one",
                 path, in->n_outputs);
        return -EINVAL;
    }
    if (m->rate > 0 && !in->n_params) {
        snprintf(err, RULES_ERR_LEN,
                 "learn: %.300s is a %s (%s); only a single-output linear regressor learns "
                 "online (give target: alone to track its error)",
                 path, in->estimator[0] ? in->estimator : in->kind, in->kind);
        return -EINVAL;
    }
    if (m->rate > 0 && in->n_inputs > RULES_LEARN_INPUTS_MAX) {
        snprintf(err, RULES_ERR_LEN, "learn: %.300s takes %zu inputs; a model that learns takes "
                 "at most %d", path, in->n_inputs, RULES_LEARN_INPUTS_MAX);
        return -EINVAL;
    }
    m->n_theta = m->rate > 0 ? in->n_params : 0;
    m->n_x = m->rate > 0 ? in->n_inputs : 0;
    m->x = calloc(in->n_inputs ? in->n_inputs : 1, sizeof(double));
    m->values = calloc(in->n_outputs ? in->n_outputs : 1, sizeof(double));
    m->proba = calloc(in->n_classes ? in->n_classes : 1, sizeof(double));
    m->tmp = calloc(in->window ? in->window : 1, sizeof(double));
    m->theta = calloc(m->n_theta ? m->n_theta : 1, sizeof(double));
    m->pend_x = calloc(m->n_x ? m->n_x * RULES_MODEL_PENDING_MAX : 1, sizeof(double));
    if (!m->x || !m->values || !m->proba || !m->tmp || !m->theta || !m->pend_x)
        return -ENOMEM;
    /* the definition a twin's record belongs to: change any of it and the record starts over */
    uint64_t h = rules__hash(0, in->version, strlen(in->version) + 1);
    for (unsigned i = 0; i < m->ninputs; i++)
        h = rules__hash(h, m->inputs[i]->text, m->inputs[i]->text_len + 1);
    if (m->target)
        h = rules__hash(h, m->target->text, m->target->text_len + 1);
    h = rules__hash(h, &m->horizon_ms, sizeof(m->horizon_ms));
    m->hash = rules__hash(h, &m->rate, sizeof(m->rate));
    return 0;
}

void rules__model_close(struct model_def *m)
{
    twin_model_free(m->model);
    free(m->x);
    free(m->values);
    free(m->proba);
    free(m->tmp);
    free(m->theta);
    free(m->pend_x);
    m->model = NULL;
    m->x = m->values = m->proba = m->tmp = m->theta = m->pend_x = NULL;
}

unsigned rules_set_model_count(const struct rules_set *rs)
{
    return rs->nmodels;
}

const char *rules_set_model_name(const struct rules_set *rs, unsigned i)
{
    return i < rs->nmodels ? rs->models[i].name : NULL;
}

/* The last `window` points of one series, oldest first, into x[k * stride]. */
struct series {
    double *x;
    size_t stride, window, n;
};

static int series_point(void *ctx, int64_t ts, double v)
{
    struct series *s = ctx;
    (void)ts;
    /* a ring over the window: keep the latest `window` points */
    s->x[(s->n % s->window) * s->stride] = v;
    s->n++;
    return 0;
}

int rules_model_predict(const struct rules_set *rs, unsigned i, const struct rules_twin *tw,
                        struct rules_model_record *rec, struct rules_prediction *out)
{
    if (i >= rs->nmodels || !rs->models[i].model)
        return -EINVAL;
    struct model_def *m = &rs->models[i];
    const struct twin_model_info *in = twin_model_info_get(m->model);
    int rc;
    if (!in->window) {
        for (unsigned k = 0; k < m->ninputs; k++) {
            struct rules_value v;
            if ((rc = rules_expr_eval(m->inputs[k], tw, &v, NULL)) < 0)
                return rc;
            if (v.type != RULES_NUM || !isfinite(v.n))
                return -ENODATA;
            m->x[k] = v.n;
        }
    } else {
        if (!tw->history)
            return -ENODATA;
        for (unsigned k = 0; k < m->ninputs; k++) {
            const struct path *p = rules__reported_path(m->inputs[k]);
            struct series s = {m->x + k, m->ninputs, in->window, 0};
            if ((rc = tw->history(tw->history_ctx, p->sub, p->sub_len, INT64_MIN, series_point,
                                  &s)) < 0)
                return rc;
            if (s.n < in->window)
                return -ENODATA;
            /* rotate the ring so that the oldest point of the window comes first */
            size_t start = s.n % in->window;
            for (size_t j = 0; start && j < in->window; j++)
                m->tmp[j] = m->x[((start + j) % in->window) * m->ninputs + k];
            for (size_t j = 0; start && j < in->window; j++)
                m->x[j * m->ninputs + k] = m->tmp[j];
        }
    }
    bool track = rec && m->target;
    if (rec)
        rec->changed = false;
    if (track)
        rules__record_load(m, rec);
    struct twin_model_out o = {.values = m->values, .proba = in->has_proba ? m->proba : NULL};
    rc = track && m->n_theta ? twin_model_predict_params(m->model, m->theta, m->x, m->values)
                             : twin_model_predict(m->model, m->x, &o);
    if (rc == 0 && track && m->n_theta && !isfinite(m->values[0])) {
        /* this twin's weights took it past what a double holds on these inputs: rather than
         * predicting nothing from now on, it starts over from the file's weights */
        twin_model_params_copy(m->model, m->theta, m->n_theta);
        rc = twin_model_predict_params(m->model, m->theta, m->x, m->values);
    }
    if (rc < 0)
        return rc == -EDOM ? -ENODATA : rc;
    if (track && !in->classifier && !isfinite(m->values[0]))
        return -ENODATA; /* these inputs overflow the file's own weights: nothing to keep */
    out->info = in;
    out->values = m->values;
    out->proba = in->has_proba ? m->proba : NULL;
    out->label = o.label;
    out->score = NULL;
    if (track) {
        rules__record_wait(m, tw->now, in->classifier ? (double)o.label : m->values[0]);
        rules__record_store(m, rec);
        out->score = &m->score;
    }
    return 0;
}
