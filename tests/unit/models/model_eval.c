/* model_eval: the parity tests' bridge to the C runtime. Loads a .twm, predicts every row of a
 * file of raw doubles and writes raw doubles back, so that test_parity.py can compare them with
 * scikit-learn bit for bit without a text round trip.
 *
 *   model_eval MODEL.twm IN.f64 OUT.f64
 *
 * IN holds n rows of n_inputs doubles. OUT holds, per row: the n_outputs values, the label
 * index (-1 when the row was refused with -EDOM), n_classes probabilities (NaN when the model
 * has none) and n_decision values. stdout gets one line: "n_outputs n_classes n_decision
 * has_proba". Exit 0, or 1 with the reason on stderr when the model does not load.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model.h"

static double *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    double *buf = NULL;
    long len;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)len + sizeof(double));
        if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len)
            *n = (size_t)len / sizeof(double);
        else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    char err[TWIN_MODEL_ERR_LEN];
    struct twin_model *m;
    size_t n = 0;
    int code = 1;

    if (argc != 4) {
        fprintf(stderr, "usage: model_eval MODEL.twm IN.f64 OUT.f64\n");
        return 2;
    }
    if (twin_model_load_file(argv[1], &m, err)) {
        fprintf(stderr, "model_eval: %s\n", err);
        return 1;
    }
    const struct twin_model_info *in = twin_model_info_get(m);
    double *x = read_all(argv[2], &n);
    size_t nc = in->n_classes, nd = in->n_decision, no = in->n_outputs;
    size_t width = no + 1 + nc + nd;
    double *row = malloc((width + 1) * sizeof *row);
    FILE *out = fopen(argv[3], "wb");

    if (!x || !row || !out) {
        fprintf(stderr, "model_eval: %s\n", strerror(errno));
        goto done;
    }
    printf("%zu %zu %zu %d\n", no, nc, nd, in->has_proba ? 1 : 0);
    for (size_t i = 0; i + in->n_inputs <= n; i += in->n_inputs) {
        struct twin_model_out o = {row, row + no + 1, row + no + 1 + nc, 0};
        for (size_t j = 0; j < width; j++)
            row[j] = NAN;
        int rc = twin_model_predict(m, x + i, &o);
        row[no] = rc ? -1.0 : in->classifier ? (double)o.label : 0.0;
        if (rc && rc != -EDOM) {
            fprintf(stderr, "model_eval: predict: %s\n", strerror(-rc));
            goto done;
        }
        if (fwrite(row, sizeof *row, width, out) != width)
            goto done;
    }
    code = 0;
done:
    if (out && fclose(out) != 0)
        code = 1;
    free(row);
    free(x);
    twin_model_free(m);
    return code;
}
