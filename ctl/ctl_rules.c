/* ctl_rules: `twinctl rules check FILE` (validate a rules file without a hub), `twinctl
 * rules state ID` (each rule's state for a twin, read from the store) and the models' scores
 * that `twinctl stats` shows. The rules and records themselves are rules/'s; this file only
 * loads, sums and prints. */
#include "ctl_rules.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl_json.h"
#include "hub.h"
#include "rules.h"

int ctl_rules_check(const char *path)
{
    struct rules_set *rs = NULL;
    struct rules_errors errs = {0};
    int rc = rules_set_load(path, NULL, &rs, &errs);
    if (rc < 0) {
        fputs(errs.text ? errs.text : "", stderr);
        if (rc == -ENOMEM)
            fprintf(stderr, "%s: out of memory\n", path);
        fprintf(stderr, "%s: invalid (%u error%s)\n", path, errs.count, errs.count == 1 ? "" : "s");
        rules_errors_free(&errs);
        return 1;
    }
    unsigned n = rules_set_count(rs);
    printf("%s: valid, %u rule%s in evaluation order:", path, n, n == 1 ? "" : "s");
    for (unsigned i = 0; i < n; i++)
        printf(" %s", rules_set_name(rs, i));
    putchar('\n');
    rules_set_free(rs);
    rules_errors_free(&errs);
    return 0;
}

static void json_time(FILE *out, const char *key, int64_t t)
{
    fprintf(out, ", \"%s\": ", key);
    if (t == 0 || t == INT64_MAX)
        fputs("null", out);
    else
        fprintf(out, "%" PRId64, t);
}

struct walk {
    FILE *out;
    const struct rules_set *rs;
    unsigned n;
};

static int print_record(void *ctx, const char *id, size_t id_len, const char *rule,
                        size_t rule_len, const void *buf, size_t len)
{
    struct walk *w = ctx;
    struct rules_record r;
    (void)id;
    (void)id_len;
    fputs(w->n++ ? ",\n    {\"rule\": " : "\n    {\"rule\": ", w->out);
    ctl_json_str(w->out, rule, rule_len);
    if (rules_record_decode(buf, len, &r) < 0) {
        fputs(", \"state\": \"damaged\"}", w->out);
        return 0;
    }
    fprintf(w->out, ", \"state\": \"%s\"", rules_state_name(r.state));
    json_time(w->out, "since", r.since);
    json_time(w->out, "fire_at", r.state == RULES_PENDING ? r.fire_at : 0);
    json_time(w->out, "cooldown_until", r.cooldown_until);
    json_time(w->out, "wake", r.wake);
    if (w->rs)
        fprintf(w->out, ", \"current\": %s",
                rules_record_current(w->rs, rule, rule_len, buf, len) ? "true" : "false");
    fputc('}', w->out);
    return 0;
}

int ctl_rules_state(struct twin_txn *txn, const char *id, const char *rules_path, FILE *out)
{
    char err[TWIN_ERR_LEN];
    struct twin_doc doc;
    int rc = twin_get(txn, id, strlen(id), &doc, err);
    if (rc == -ENOENT) {
        fprintf(stderr, "twinctl: no twin '%s'\n", id);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "twinctl: %s\n", err);
        return 2;
    }
    /* the configured file says which records are still current; without one, none is judged */
    struct rules_set *rs = NULL;
    struct rules_errors errs = {0};
    if (rules_path && rules_path[0] && rules_set_load(rules_path, NULL, &rs, &errs) < 0)
        fprintf(stderr, "twinctl: %s does not load; records are not checked against it\n",
                rules_path);
    rules_errors_free(&errs);
    int64_t wake;
    if ((rc = twin_rule_wake_get(txn, id, strlen(id), &wake, err)) < 0) {
        fprintf(stderr, "twinctl: %s\n", err);
        rules_set_free(rs);
        return 2;
    }
    fputs("{\"id\": ", out);
    ctl_json_str(out, id, strlen(id));
    json_time(out, "wake", wake);
    fputs(", \"rules\": [", out);
    struct walk w = {out, rs, 0};
    rc = twin_rule_state_list(txn, id, strlen(id), print_record, &w, err);
    fputs(w.n ? "\n]}\n" : "]}\n", out);
    rules_set_free(rs);
    if (rc < 0) {
        fprintf(stderr, "twinctl: %s\n", err);
        return 2;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Models' scores, summed over twins (twinctl stats)
 * ------------------------------------------------------------------------------------------ */

struct model_sum {
    char name[TWIN_MODEL_NAME_MAX + 1];
    uint64_t twins, pending, damaged;
    struct rules_model_score s;
};

struct sums {
    struct model_sum *v;
    size_t n, cap;
};

static int sum_one(void *ctx, const char *id, size_t id_len, const char *name, size_t name_len,
                   const void *buf, size_t len)
{
    struct sums *ms = ctx;
    struct rules_model_score s;
    (void)id;
    (void)id_len;
    size_t i = 0;
    while (i < ms->n && !(strlen(ms->v[i].name) == name_len &&
                          memcmp(ms->v[i].name, name, name_len) == 0))
        i++;
    if (i == ms->n) {
        if (ms->n == ms->cap) {
            size_t cap = ms->cap ? 2 * ms->cap : 8;
            struct model_sum *v = realloc(ms->v, cap * sizeof(*v));
            if (!v)
                return -ENOMEM;
            ms->v = v;
            ms->cap = cap;
        }
        memset(&ms->v[i], 0, sizeof(ms->v[i]));
        memcpy(ms->v[i].name, name, name_len < TWIN_MODEL_NAME_MAX ? name_len : TWIN_MODEL_NAME_MAX);
        ms->n++;
    }
    struct model_sum *m = &ms->v[i];
    if (rules_model_record_score(buf, len, &s) < 0) {
        m->damaged++;
        return 0;
    }
    m->twins++;
    m->pending += s.pending;
    m->s.classifier = s.classifier;
    m->s.learns |= s.learns;
    m->s.scored += s.scored;
    m->s.correct += s.correct;
    m->s.sum_abs += s.sum_abs;
    m->s.sum_sq += s.sum_sq;
    m->s.updates += s.updates;
    m->s.missed += s.missed;
    return 0;
}

int ctl_models_pack(struct twin_txn *txn, msgpack_packer *pk, char *err)
{
    struct sums ms = {0};
    int rc = twin_model_state_list(txn, NULL, 0, sum_one, &ms, err);
    if (rc < 0) {
        if (rc == -ENOMEM)
            snprintf(err, TWIN_ERR_LEN, "out of memory");
        free(ms.v);
        return rc;
    }
    msgpack_pack_map(pk, (uint32_t)ms.n);
    for (size_t i = 0; i < ms.n; i++) {
        const struct model_sum *m = &ms.v[i];
        const struct rules_model_score *s = &m->s;
        out_pack_key(pk, m->name);
        msgpack_pack_map(pk, 4 + out_score_keys(s));
        const struct {
            const char *k;
            uint64_t v;
        } counts[] = {
            {"twins", m->twins}, {"pending", m->pending}, {"missed", s->missed},
            {"damaged", m->damaged}};
        for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
            out_pack_key(pk, counts[k].k);
            msgpack_pack_uint64(pk, counts[k].v);
        }
        out_pack_score(pk, s); /* as predicted.<model> shows it */
    }
    free(ms.v);
    return 0;
}
