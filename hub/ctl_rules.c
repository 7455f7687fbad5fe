/* ctl_rules: `twinctl rules check FILE` (validate a rules file without a hub) and `twinctl
 * rules state ID` (each rule's state for a twin, read from the store). The rules themselves
 * are rules/'s; this file only loads and prints. */
#include "ctl_rules.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "ctl_json.h"
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
