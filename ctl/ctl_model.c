/* ctl_model.c: `twinctl model info FILE` (what a .twm model is, as JSON) and `twinctl model
 * predict FILE [--proba]` (CSV rows on stdin, one CSV row of outputs per row on stdout), so that
 * scripts can check a model outside the hub. Every fact about models comes from twins/models;
 * this file owns the text formats only. Single-threaded.
 *
 * predict writes, per input row: a regressor's outputs; a classifier's label (its name, or its
 * number); with --proba, the class probabilities instead (in the order of `info`'s classes).
 * Numbers are printed with 17 significant digits, so they read back exactly. Blank lines and
 * lines starting with '#' are skipped. The first bad row (wrong count, not a number, NaN or
 * infinite) stops the run: exit 1, the rows before it already printed.
 */
#include "ctl_model.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl_json.h"
#include "models/model.h"

enum { EXIT_OK = 0, EXIT_BAD = 1, EXIT_USAGE = 2 };

static const char usage_text[] = "usage: twinctl model info FILE\n"
                                 "       twinctl model predict FILE [--proba] < rows.csv\n";

static void json_str(const char *s)
{
    ctl_json_str(stdout, s, strlen(s));
}

static void csv_str(const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static int info(struct twin_model *m)
{
    const struct twin_model_info *in = twin_model_info_get(m);

    printf("{\"kind\":");
    json_str(in->kind);
    printf(",\"estimator\":");
    json_str(in->estimator);
    printf(",\"features\":%zu,\"window\":%zu,\"inputs\":%zu,\"outputs\":%zu", in->n_features,
           in->window, in->n_inputs, in->n_outputs);
    printf(",\"classifier\":%s", in->classifier ? "true" : "false");
    if (in->classifier) {
        printf(",\"classes\":[");
        for (size_t i = 0; i < in->n_classes; i++) {
            if (i)
                putchar(',');
            if (in->classes_are_strings)
                json_str(in->class_names[i]);
            else
                printf("%.17g", in->class_numbers[i]);
        }
        printf("],\"proba\":%s,\"decision\":%zu", in->has_proba ? "true" : "false", in->n_decision);
    }
    printf(",\"preprocess\":[");
    for (size_t i = 0; i < in->n_preprocess; i++) {
        if (i)
            putchar(',');
        json_str(in->preprocess[i]);
    }
    printf("],\"learnable\":%s,\"version\":", in->n_params ? "true" : "false");
    json_str(in->version);
    printf("}\n");
    return EXIT_OK;
}

/* Parses one CSV row of exactly n numbers into x. Returns 0 or -1 with a reason in why. */
static int row_parse(char *line, double *x, size_t n, char *why, size_t whylen)
{
    char *p = line, *end;
    size_t i = 0;

    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (i == n) {
            snprintf(why, whylen, "more than %zu values", n);
            return -1;
        }
        errno = 0;
        x[i] = strtod(p, &end);
        if (end == p) {
            snprintf(why, whylen, "value %zu is not a number", i + 1);
            return -1;
        }
        i++;
        p = end;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (*p == 0)
            break;
        if (*p != ',') {
            snprintf(why, whylen, "value %zu is not a number", i);
            return -1;
        }
        p++;
    }
    if (i != n) {
        snprintf(why, whylen, "%zu values, the model takes %zu", i, n);
        return -1;
    }
    return 0;
}

static int predict(struct twin_model *m, const char *path, bool want_proba)
{
    const struct twin_model_info *in = twin_model_info_get(m);
    double *x = calloc(in->n_inputs, sizeof *x);
    double *v = calloc(in->n_outputs, sizeof *v);
    double *p = calloc(in->n_classes ? in->n_classes : 1, sizeof *p);
    char *line = NULL, why[128];
    size_t cap = 0, lineno = 0;
    int code = EXIT_USAGE;

    if (!x || !v || !p) {
        fprintf(stderr, "twinctl: out of memory\n");
        goto done;
    }
    if (want_proba && !in->has_proba) {
        fprintf(stderr, "twinctl: %s: this model has no probabilities (--proba)\n", path);
        code = EXIT_BAD;
        goto done;
    }
    code = EXIT_OK;
    while (getline(&line, &cap, stdin) > 0) {
        struct twin_model_out out = {v, p, NULL, 0};
        char *s = line;
        int rc;
        lineno++;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
            s++;
        if (*s == 0 || *s == '#')
            continue;
        if (row_parse(s, x, in->n_inputs, why, sizeof why)) {
            fprintf(stderr, "twinctl: stdin:%zu: %s\n", lineno, why);
            code = EXIT_BAD;
            break;
        }
        rc = twin_model_predict(m, x, &out);
        if (rc) {
            fprintf(stderr, "twinctl: stdin:%zu: %s\n", lineno,
                    rc == -EDOM ? "a value is NaN or infinite" : strerror(-rc));
            code = EXIT_BAD;
            break;
        }
        if (want_proba) {
            for (size_t i = 0; i < in->n_classes; i++)
                printf(i ? ",%.17g" : "%.17g", p[i]);
        } else if (in->classifier && in->classes_are_strings) {
            csv_str(in->class_names[out.label]);
        } else {
            for (size_t i = 0; i < in->n_outputs; i++)
                printf(i ? ",%.17g" : "%.17g", v[i]);
        }
        putchar('\n');
    }
    if (ferror(stdin)) {
        fprintf(stderr, "twinctl: reading stdin: %s\n", strerror(errno));
        code = EXIT_USAGE;
    }
done:
    free(line);
    free(x);
    free(v);
    free(p);
    return code;
}

int ctl_model_main(int argc, char **argv)
{
    char err[TWIN_MODEL_ERR_LEN];
    struct twin_model *m;
    bool want_proba = false, is_info;
    const char *path = NULL;
    int code, rc;

    if (argc < 2) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    is_info = strcmp(argv[0], "info") == 0;
    if (!is_info && strcmp(argv[0], "predict") != 0) {
        fprintf(stderr, "twinctl: unknown model command '%s'\n%s", argv[0], usage_text);
        return EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        if (!is_info && strcmp(argv[i], "--proba") == 0)
            want_proba = true;
        else if ((argv[i][0] == '-' && argv[i][1] != 0) || path)
            path = "";
        else
            path = argv[i];
    }
    if (!path || !*path) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    rc = twin_model_load_file(path, &m, err);
    if (rc) {
        fprintf(stderr, "twinctl: %s\n", err);
        return EXIT_BAD;
    }
    code = is_info ? info(m) : predict(m, path, want_proba);
    twin_model_free(m);
    return code;
}
