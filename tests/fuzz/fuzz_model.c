/* fuzz_model.c: .twm model files (twins/models) on arbitrary bytes: twin_model_load, and, for a
 * file that loads, predictions of a few inputs and the online-learning calls. Invariants:
 *   - a refused file is one of the documented codes with a reason, never a crash or a leak;
 *   - a loaded model's info is consistent (n_inputs = n_features * (window or 1), classifiers
 *     have classes and one output, labels are in range);
 *   - predicting finite inputs returns 0, a NaN input -EDOM; probabilities are within [0, 1]
 *     when finite.
 */
#include "fuzz.h"
#include "models/model.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VALUES 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct twin_model *m = NULL;
    char err[TWIN_MODEL_ERR_LEN] = "";
    int rc = twin_model_load(data, size, &m, err);
    if (rc < 0) {
        FUZZ_CHECK(rc == -EINVAL || rc == -EBADMSG || rc == -E2BIG || rc == -ENOTSUP ||
                       rc == -ENOMEM,
                   "twin_model_load returned %d", rc);
        FUZZ_CHECK(m == NULL, "a refused model handed out");
        FUZZ_CHECK(rc == -ENOMEM || err[0], "refused without a reason (rc %d)", rc);
        return 0;
    }
    const struct twin_model_info *in = twin_model_info_get(m);
    FUZZ_CHECK(in->n_inputs == in->n_features * (in->window ? in->window : 1),
               "n_inputs %zu for %zu features x %zu", in->n_inputs, in->n_features, in->window);
    FUZZ_CHECK(!in->classifier || (in->n_classes >= 1 && in->n_outputs == 1),
               "classifier with %zu classes and %zu outputs", in->n_classes, in->n_outputs);
    if (in->n_inputs > MAX_VALUES || in->n_outputs > MAX_VALUES || in->n_classes > MAX_VALUES ||
        in->n_decision > MAX_VALUES) {
        twin_model_free(m);
        return 0;
    }
    static double x[MAX_VALUES], values[MAX_VALUES], proba[MAX_VALUES], decision[MAX_VALUES];
    struct twin_model_out out = {.values = values, .proba = proba, .decision = decision};
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < in->n_inputs; i++)
            x[i] = k == 0 ? 0 : k == 1 ? (double)(i % 7) - 3 : 1e6 * (double)(i % 3);
        FUZZ_CHECK(twin_model_predict(m, x, &out) == 0, "finite input refused");
        if (in->classifier)
            FUZZ_CHECK(out.label < in->n_classes, "label %zu of %zu", out.label, in->n_classes);
        for (size_t c = 0; in->has_proba && c < in->n_classes; c++)
            FUZZ_CHECK(!isfinite(proba[c]) || (proba[c] >= -1e-9 && proba[c] <= 1 + 1e-9),
                       "probability %g", proba[c]);
    }
    if (in->n_inputs) {
        x[0] = NAN;
        FUZZ_CHECK(twin_model_predict(m, x, &out) == -EDOM, "NaN input not refused");
        x[0] = 0;
    }
    if (in->n_params && in->n_params <= MAX_VALUES) {
        static double theta[MAX_VALUES];
        double y;
        FUZZ_CHECK(twin_model_params_copy(m, theta, in->n_params) == 0, "params_copy");
        rc = twin_model_predict_params(m, theta, x, &y);
        FUZZ_CHECK(rc == 0, "predict_params %d", rc);
        rc = twin_model_learn_step(m, theta, x, 1.0, 0.01, &y);
        FUZZ_CHECK(rc == 0 || rc == -ERANGE, "learn_step %d", rc);
    }
    twin_model_free(m);
    return 0;
}
