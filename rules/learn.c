/* learn: what a model with a target keeps per twin — its predictions waiting for the target's
 * value, its error so far, and, when it learns online, the twin's own weights — encoded as the
 * record the host stores, and the scoring and least-mean-squares steps that change it. The
 * arithmetic of a step is twins/models' (twin_model_learn_step).
 *
 * Record (little-endian):
 *   0  u8 magic 'M'   1  u8 version 1   2  u8 flags (1 classifier, 2 learns)   3  u8 pending
 *   4  u16 n_theta    6  u16 n_x        8  u64 definition hash
 *   16 u64 scored     24 u64 correct    32 u64 updates    40 u64 missed
 *   48 f64 sum_abs    56 f64 sum_sq
 *   64 f64 theta[n_theta], then per waiting prediction: i64 ts, f64 value, f64 x[n_x]
 * A classifier's waiting value is its label's index. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#define MAGIC 0x4d
#define VERSION 1
#define F_CLASSIFIER 1
#define F_LEARNS 2
#define HEADER 64

static void putf(unsigned char *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    rules__put64(p, u);
}

static double getf(const unsigned char *p)
{
    uint64_t u = rules__get64(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* The header of a record: its score, and the sizes it claims, checked against its length. */
struct header {
    unsigned flags, pending;
    size_t n_theta, n_x;
    uint64_t hash;
    struct rules_model_score score;
};

static int header_read(const unsigned char *b, size_t n, struct header *h)
{
    if (n < HEADER || b[0] != MAGIC || b[1] != VERSION || b[2] > (F_CLASSIFIER | F_LEARNS) ||
        b[3] > RULES_MODEL_PENDING_MAX)
        return -EBADMSG;
    h->flags = b[2];
    h->pending = b[3];
    h->n_theta = (size_t)b[4] | (size_t)b[5] << 8;
    h->n_x = (size_t)b[6] | (size_t)b[7] << 8;
    if (h->n_theta > RULES_LEARN_INPUTS_MAX + 1 || h->n_x > RULES_LEARN_INPUTS_MAX ||
        n != HEADER + 8 * h->n_theta + h->pending * (16 + 8 * h->n_x))
        return -EBADMSG;
    h->hash = rules__get64(b + 8);
    struct rules_model_score *s = &h->score;
    *s = (struct rules_model_score){.classifier = h->flags & F_CLASSIFIER,
                                    .learns = h->flags & F_LEARNS,
                                    .scored = rules__get64(b + 16),
                                    .correct = rules__get64(b + 24),
                                    .updates = rules__get64(b + 32),
                                    .missed = rules__get64(b + 40),
                                    .sum_abs = getf(b + 48),
                                    .sum_sq = getf(b + 56),
                                    .pending = h->pending};
    if (s->correct > s->scored || !(s->sum_abs >= 0) || !(s->sum_sq >= 0) ||
        !isfinite(s->sum_abs) || !isfinite(s->sum_sq))
        return -EBADMSG;
    return 0;
}

int rules_model_record_score(const void *buf, size_t n, struct rules_model_score *score)
{
    struct header h;
    int rc = header_read(buf, n, &h);
    if (rc == 0)
        *score = h.score;
    return rc;
}

bool rules_model_record_current(const struct rules_set *rs, const char *model, size_t len,
                                const void *buf, size_t n)
{
    struct header h;
    for (unsigned i = 0; i < rs->nmodels; i++) {
        const struct model_def *m = &rs->models[i];
        if (strlen(m->name) == len && memcmp(m->name, model, len) == 0)
            return m->target && header_read(buf, n, &h) == 0 && h.hash == m->hash;
    }
    return false;
}

/* The rest of a record whose header fits m: weights and waiting predictions, each checked. */
static bool body_read(struct model_def *m, const unsigned char *b, const struct header *h)
{
    const struct twin_model_info *in = twin_model_info_get(m->model);
    const unsigned char *p = b + HEADER;
    for (size_t j = 0; j < m->n_theta; j++, p += 8)
        if (!isfinite(m->theta[j] = getf(p)))
            return false;
    for (unsigned k = 0; k < h->pending; k++) {
        m->pend_ts[k] = (int64_t)rules__get64(p);
        m->pend_y[k] = getf(p + 8);
        p += 16;
        if (!isfinite(m->pend_y[k]) ||
            (in->classifier && (m->pend_y[k] < 0 || m->pend_y[k] >= (double)in->n_classes ||
                                m->pend_y[k] != floor(m->pend_y[k]))))
            return false;
        for (size_t j = 0; j < m->n_x; j++, p += 8)
            if (!isfinite(m->pend_x[k * m->n_x + j] = getf(p)))
                return false;
    }
    return true;
}

void rules__record_load(struct model_def *m, const struct rules_model_record *rec)
{
    const struct twin_model_info *in = twin_model_info_get(m->model);
    unsigned flags = (in->classifier ? F_CLASSIFIER : 0) | (m->rate > 0 ? F_LEARNS : 0);
    struct header h;
    if (rec && rec->len && header_read(rec->buf, rec->len, &h) == 0 && h.hash == m->hash &&
        h.flags == flags && h.n_theta == m->n_theta && h.n_x == m->n_x &&
        body_read(m, rec->buf, &h)) {
        m->score = h.score;
        return;
    }
    /* none yet, damaged, or another definition's: start over from the file */
    m->score = (struct rules_model_score){.classifier = in->classifier, .learns = m->rate > 0};
    if (m->n_theta)
        twin_model_params_copy(m->model, m->theta, m->n_theta);
}

void rules__record_store(const struct model_def *m, struct rules_model_record *rec)
{
    unsigned char *b = rec->buf;
    memset(b, 0, HEADER);
    b[0] = MAGIC;
    b[1] = VERSION;
    b[2] = (unsigned char)((m->score.classifier ? F_CLASSIFIER : 0) |
                           (m->score.learns ? F_LEARNS : 0));
    b[3] = (unsigned char)m->score.pending;
    b[4] = (unsigned char)m->n_theta;
    b[5] = (unsigned char)(m->n_theta >> 8);
    b[6] = (unsigned char)m->n_x;
    b[7] = (unsigned char)(m->n_x >> 8);
    rules__put64(b + 8, m->hash);
    rules__put64(b + 16, m->score.scored);
    rules__put64(b + 24, m->score.correct);
    rules__put64(b + 32, m->score.updates);
    rules__put64(b + 40, m->score.missed);
    putf(b + 48, m->score.sum_abs);
    putf(b + 56, m->score.sum_sq);
    unsigned char *p = b + HEADER;
    for (size_t j = 0; j < m->n_theta; j++, p += 8)
        putf(p, m->theta[j]);
    for (unsigned k = 0; k < m->score.pending; k++) {
        rules__put64(p, (uint64_t)m->pend_ts[k]);
        putf(p + 8, m->pend_y[k]);
        p += 16;
        for (size_t j = 0; j < m->n_x; j++, p += 8)
            putf(p, m->pend_x[k * m->n_x + j]);
    }
    rec->len = (size_t)(p - b);
    rec->changed = true;
}

void rules__record_wait(struct model_def *m, int64_t now, double y)
{
    unsigned k = m->score.pending;
    if (k == RULES_MODEL_PENDING_MAX) {
        m->score.missed++; /* the waiting ones are scored first; this one never will be */
        return;
    }
    m->pend_ts[k] = now;
    m->pend_y[k] = y;
    if (m->n_x)
        memcpy(m->pend_x + k * m->n_x, m->x, m->n_x * sizeof(double));
    m->score.pending++;
}

const char *rules_set_model_target(const struct rules_set *rs, unsigned i, size_t *len)
{
    if (i >= rs->nmodels || !rs->models[i].target)
        return NULL;
    const struct path *p = rules__reported_path(rs->models[i].target);
    *len = p->full_len;
    return p->full;
}

/* Compares waiting prediction k with the target's value v. Returns whether it was scored
 * (false: v is not a value this model could have predicted, and the prediction waits on). */
static bool score_one(struct model_def *m, unsigned k, const struct rules_value *v)
{
    const struct twin_model_info *in = twin_model_info_get(m->model);
    struct rules_model_score *s = &m->score;
    if (!in->classifier) {
        if (v->type != RULES_NUM || !isfinite(v->n))
            return false;
        double e = v->n - m->pend_y[k];
        if (!isfinite(s->sum_abs + fabs(e)) || !isfinite(s->sum_sq + e * e)) {
            s->missed++; /* an error past what a double holds can't be scored or learnt */
            return true;
        }
        s->scored++;
        s->sum_abs += fabs(e);
        s->sum_sq += e * e;
        /* -ERANGE (the step would overflow the weights) leaves them as they were */
        if (m->rate > 0 && twin_model_learn_step(m->model, m->theta, m->pend_x + k * m->n_x,
                                                 v->n, m->rate, NULL) == 0)
            s->updates++;
        return true;
    }
    size_t label = (size_t)m->pend_y[k];
    bool right;
    if (in->classes_are_strings) {
        if (v->type != RULES_STR)
            return false;
        const char *name = in->class_names[label];
        right = strlen(name) == v->len && memcmp(name, v->s, v->len) == 0;
    } else if (v->type == RULES_NUM || v->type == RULES_BOOL) {
        right = (v->type == RULES_NUM ? v->n : v->b ? 1.0 : 0.0) == in->class_numbers[label];
    } else {
        return false;
    }
    s->scored++;
    s->correct += right;
    return true;
}

/* now - since, saturated: stored times are not trusted to be near now. */
static int64_t elapsed(int64_t now, int64_t since)
{
    int64_t d;
    return __builtin_sub_overflow(now, since, &d) ? (now > since ? INT64_MAX : INT64_MIN) : d;
}

int rules_model_score(const struct rules_set *rs, unsigned i, const struct rules_twin *tw,
                      struct rules_model_record *rec, struct rules_model_score *score)
{
    if (i >= rs->nmodels)
        return -EINVAL;
    struct model_def *m = &rs->models[i];
    rec->changed = false;
    if (!m->target || !rec->len)
        return 0;
    rules__record_load(m, rec);
    if (!m->score.pending)
        return 0;
    struct rules_value v;
    rules__path_value(tw->doc, rules__reported_path(m->target), &v);
    unsigned keep = 0, n = m->score.pending;
    bool changed = false;
    for (unsigned k = 0; k < n; k++) {
        int64_t age = elapsed(tw->now, m->pend_ts[k]);
        bool done = false;
        if (age < 0) {
            m->score.missed++; /* the clock went back past it: it could wait for hours */
            done = true;
        } else if (age >= m->horizon_ms) {
            /* a value more than a horizon late is not that horizon's truth */
            if (m->horizon_ms > 0 && age > 2 * m->horizon_ms) {
                m->score.missed++;
                done = true;
            } else {
                done = score_one(m, k, &v);
            }
        }
        changed |= done;
        if (done)
            continue;
        if (keep != k) {
            m->pend_ts[keep] = m->pend_ts[k];
            m->pend_y[keep] = m->pend_y[k];
            memmove(m->pend_x + keep * m->n_x, m->pend_x + k * m->n_x, m->n_x * sizeof(double));
        }
        keep++;
    }
    m->score.pending = keep;
    if (!changed)
        return 0;
    rules__record_store(m, rec);
    if (score)
        *score = m->score;
    return 0;
}
