/* model.h: the model runtime: loads a .twm file (twins/models/FORMAT.md) and predicts with it,
 * exactly as scikit-learn (or PyTorch for the LSTM) does. It owns the file format, the checks of
 * a hostile file and the arithmetic; it knows nothing of twins, rules, LMDB or MQTT. It does not
 * print or exit.
 *
 * Errors: functions return 0 or a negative errno-style code, and, where they take `char *err`
 * (TWIN_MODEL_ERR_LEN bytes, may be NULL), a reason a person can act on.
 *   -EINVAL    bad argument, or a model file that is not a valid .twm (the reason says where)
 *   -EBADMSG   a model file that is not well-formed msgpack (truncated, trailing bytes)
 *   -E2BIG     a model file over TWIN_MODEL_MAX_FILE or over an allocation bound
 *   -ENOTSUP   a .twm of a later format version, or a kind or option this runtime lacks
 *   -EDOM      an input value that is NaN or infinite (the prediction is refused)
 *   -ENOMEM    out of memory
 *   -EIO       twin_model_load_file could not read the file (errno's text in `err`)
 *
 * Threads: a loaded model is read-only except for its scratch memory, allocated at load so that
 * predicting allocates nothing. One model handle is therefore used by one thread at a time
 * (predict, predict_batch, predict_params and learn_step write the scratch); load the file once
 * per thread, or hold a lock, to predict from several threads. Loading and freeing distinct
 * handles is safe from any thread.
 */
#ifndef TWIN_MODEL_H
#define TWIN_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "twins.h"

#define TWIN_MODEL_ERR_LEN TWIN_ERR_LEN
#define TWIN_MODEL_MAX_FILE (256u << 20) /* bytes of a .twm file */
#define TWIN_MODEL_VERSION_LEN 32        /* "fnv1a64:" + 16 hex digits + NUL, rounded up */
#define TWIN_MODEL_MAX_PREPROCESS 8      /* steps in a preprocessing chain */

/* A loaded model: opaque, from twin_model_load, freed with twin_model_free. */
struct twin_model;

/* What a model is, filled at load. Every pointer lives as long as the model. */
struct twin_model_info {
    const char *kind;      /* "linear", "logistic", "svm", "tree", "mlp", "lstm" */
    const char *estimator; /* the exported class, e.g. "RandomForestClassifier" (may be "") */
    size_t n_features;     /* inputs per sample; per time step for "lstm" */
    size_t window;         /* "lstm": time steps per sample; 0 for every other kind */
    size_t n_inputs;       /* doubles in one sample: n_features * (window ? window : 1) */
    size_t n_outputs;      /* values one prediction gives: targets of a regressor; 1 for a
                            * classifier (its label) */
    bool classifier;
    size_t n_classes;               /* classifiers: labels in class_numbers or class_names */
    bool classes_are_strings;       /* which of the two arrays below holds the labels */
    const double *class_numbers;    /* n_classes, or NULL */
    const char *const *class_names; /* n_classes NUL-terminated, or NULL */
    bool has_proba;                 /* the estimator has predict_proba: n_classes probabilities */
    size_t n_decision;              /* values of its decision_function; 0 when it has none */
    size_t n_preprocess;            /* steps applied to the input before the estimator */
    const char *const *preprocess;  /* their names: "standard", "minmax" */
    const char *version;            /* "fnv1a64:<16 hex>" of the file's bytes, for model_version */
    size_t n_params; /* online learning: the parameter vector's size, 0 when the model
                      * can't learn (only single-output "linear" regressors can) */
};

/* One prediction's results. The caller points each array it wants at its own memory (or sets
 * it to NULL); the model writes through them and fills `label`. */
struct twin_model_out {
    double *values;   /* n_outputs: a regressor's predictions; for a classifier the label as a
                       * number (class_numbers[label]) or NaN when the labels are strings */
    double *proba;    /* n_classes probabilities, when has_proba (else left untouched) */
    double *decision; /* n_decision values of decision_function, in scikit-learn's shape:
                       * 1 for a binary classifier, n_classes (ovr) or n_classes*(n_classes-1)/2
                       * (an SVC with decision_function_shape="ovo") otherwise */
    size_t label;     /* classifiers: the predicted class, an index into the labels */
};

/* Batch results: row-major arrays of n rows, each NULL or as wide as in twin_model_out. */
struct twin_model_batch {
    double *values;   /* n * n_outputs */
    double *proba;    /* n * n_classes */
    double *decision; /* n * n_decision */
    size_t *labels;   /* n */
};

/* ---------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------ */

/* Loads a model from the .twm bytes buf[0..len). Checks everything before it trusts it: the
 * msgpack structure (every count bounded by the bytes that remain, no trailing bytes, nesting
 * at most 16) before any allocation, then the format, version and kind, every shape, every
 * index (tree children point forward inside their tree, so no tree has a cycle; feature
 * indices below n_features), every number finite. The bytes are borrowed for the call.
 * On success *out is a new model (free with twin_model_free). On error *out is NULL and err
 * says why. Returns 0, -EINVAL, -EBADMSG, -E2BIG, -ENOTSUP, -ENOMEM. Any thread. */
int twin_model_load(const void *buf, size_t len, struct twin_model **out, char *err);

/* Reads the file at `path` (at most TWIN_MODEL_MAX_FILE bytes) and loads it as twin_model_load.
 * Returns as twin_model_load, or -EIO / -ENOENT when the file can't be read. */
int twin_model_load_file(const char *path, struct twin_model **out, char *err);

/* Frees a model and everything it owns. NULL is accepted. */
void twin_model_free(struct twin_model *m);

/* The model's description; valid until twin_model_free. */
const struct twin_model_info *twin_model_info_get(const struct twin_model *m);

/* ---------------------------------------------------------------------------------------------
 * Prediction (one thread at a time per model; no allocation)
 * ------------------------------------------------------------------------------------------ */

/* Predicts one sample. `x` holds info->n_inputs doubles in the order the model was trained on
 * (the LSTM: window steps of n_features, oldest first); preprocessing is applied here. `out`
 * says where the results go (see struct twin_model_out).
 * Returns 0, or -EDOM when a value of x is NaN or infinite (scikit-learn refuses those too;
 * nothing is written). */
int twin_model_predict(struct twin_model *m, const double *x, struct twin_model_out *out);

/* Predicts n samples, x being n rows of n_inputs doubles. On -EDOM the rows before the
 * offending one are written and *n_done (when not NULL) says how many; on success *n_done = n.
 * Returns 0 or -EDOM. */
int twin_model_predict_batch(struct twin_model *m, const double *x, size_t n,
                             const struct twin_model_batch *out, size_t *n_done);

/* ---------------------------------------------------------------------------------------------
 * Online learning (single-output "linear" regressors; info->n_params > 0)
 *
 * The parameter vector θ has n_params = n_features + 1 doubles: the coefficients in feature
 * order, then the intercept. It belongs to the caller (the hub keeps one per twin); the model's
 * own parameters never change.
 * ------------------------------------------------------------------------------------------ */

/* Copies the model's trained θ into theta[0..n). Returns 0, or -EINVAL when the model can't
 * learn or n != n_params. */
int twin_model_params_copy(const struct twin_model *m, double *theta, size_t n);

/* Predicts one sample with θ instead of the model's own parameters (the same preprocessing).
 * Returns 0, -EINVAL (the model can't learn), -EDOM (x not finite). */
int twin_model_predict_params(struct twin_model *m, const double *theta, const double *x,
                              double *y);

/* One least-mean-squares step: ŷ = θ·[x', 1], θ ← θ + rate·(y_true − ŷ)·[x', 1], where x' is x
 * after the model's preprocessing. *y_pred (when not NULL) receives ŷ, the prediction before
 * the step. Returns 0; -EINVAL when the model can't learn or rate is not finite and > 0;
 * -EDOM when x or y_true is not finite; -ERANGE when the step would make θ non-finite (θ is
 * then unchanged). */
int twin_model_learn_step(struct twin_model *m, double *theta, const double *x, double y_true,
                          double rate, double *y_pred);

#endif
