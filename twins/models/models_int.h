/* models_int.h: what the files of the model runtime share and nobody outside sees: the model
 * struct, the table of kinds, the allocator that bounds a model's memory by its file's size and
 * the readers of checked fields. Nothing here is part of the contract in model.h.
 */
#ifndef MODELS_INT_H
#define MODELS_INT_H

#include "model.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

/* Formats a reason into err (TWIN_MODEL_ERR_LEN bytes); err may be NULL. */
void model__errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------------------------------
 * The model
 * ------------------------------------------------------------------------------------------ */

enum model_prep_type { MODEL_PREP_STANDARD, MODEL_PREP_MINMAX };

/* One preprocessing step over n_features values (applied to every step of an LSTM window).
 * standard: x = (x - mean) / scale (either may be NULL: skipped), as StandardScaler.transform.
 * minmax: x = x * scale + min, then clipped to [lo, hi] when clip, as MinMaxScaler.transform. */
struct model_prep {
    enum model_prep_type type;
    double *mean, *scale, *min;
    bool clip;
    double lo, hi;
};

struct twin_model;

/* A kind: loads its parameters from the file's map and predicts from a preprocessed sample.
 * predict writes out->values (n_outputs), and for classifiers out->label, out->proba (when
 * has_proba) and out->decision (when n_decision); all three pointers are valid. */
struct model_kind {
    const char *name;
    int (*load)(struct twin_model *m, const msgpack_object *root, char *err);
    void (*predict)(struct twin_model *m, const double *x, struct twin_model_out *out);
};

extern const struct model_kind model__linear, model__logistic, model__svm, model__tree, model__mlp,
    model__lstm;

struct model_block;

struct twin_model {
    struct twin_model_info info;
    const struct model_kind *kind;
    void *impl; /* the kind's parameters */
    size_t n_prep;
    struct model_prep prep[TWIN_MODEL_MAX_PREPROCESS];
    const char *prep_names[TWIN_MODEL_MAX_PREPROCESS];
    double *xbuf;               /* n_inputs: the sample after preprocessing */
    double *probbuf;            /* n_classes: where proba goes when the caller wants none */
    double *decbuf;             /* n_decision: likewise */
    double *valbuf;             /* n_outputs: likewise */
    struct model_block *blocks; /* every allocation of this model */
    size_t budget;              /* bytes model__alloc may still hand out */
    bool over_budget;           /* a load failed on the budget: -E2BIG */
    char version[TWIN_MODEL_VERSION_LEN];
};

/* Zeroed memory for n objects of `size` bytes, owned by the model (freed with it). Refuses
 * (NULL, reason in err) when n * size overflows or exceeds what the file's size allows. */
void *model__alloc(struct twin_model *m, size_t n, size_t size, char *err);

/* Gives back a block model__alloc returned (NULL: nothing), and its bytes to the budget: for
 * what a loader needs only while it loads. The search starts at the newest block, so freeing
 * what was just allocated costs little. */
void model__free(struct twin_model *m, void *p);

/* Copies a msgpack string into model memory, NUL-terminated. */
char *model__strdup(struct twin_model *m, const char *s, size_t len, char *err);

/* Label of a classifier: index of the largest value, the first on ties (numpy's argmax). */
size_t model__argmax(const double *v, size_t n);

/* scipy.special.expit: 1 / (1 + exp(-x)). */
double model__expit(double x);

/* Whether x[0..n) are all finite. */
bool model__finite(const double *x, size_t n);

/* Applies the preprocessing chain to a raw sample x (n_inputs values) into y (predict.c). */
void model__prep_apply(const struct twin_model *m, const double *x, double *y);

/* The parameters of kinds "linear" and "logistic" (linear.c), which learn.c reads too:
 * rows x n_features coefficients, row-major, and rows intercepts. */
struct model_linear {
    size_t rows;
    double *coef;
    double *intercept;
    int proba; /* logistic: LINEAR_PROBA_* */
};

/* ---------------------------------------------------------------------------------------------
 * Fields of the file (field.c). `ctx` names the map for messages ("", "trees[3]", ...). All
 * return 0 or -EINVAL with the reason in err.
 * ------------------------------------------------------------------------------------------ */

/* The value at `key` in `map`, or NULL. */
const msgpack_object *model__field(const msgpack_object *map, const char *key);

/* A required map / array field. */
int model__field_map(const msgpack_object *map, const char *ctx, const char *key,
                     const msgpack_object **out, char *err);
int model__field_array(const msgpack_object *map, const char *ctx, const char *key,
                       const msgpack_object **out, char *err);

/* A required string field; *s points into the file's decoded object (not NUL-terminated). */
int model__field_str(const msgpack_object *map, const char *ctx, const char *key, const char **s,
                     size_t *len, char *err);

/* A required string field that must be one of names[0..n); *out is its index. */
int model__field_enum(const msgpack_object *map, const char *ctx, const char *key,
                      const char *const *names, size_t n, int *out, char *err);

/* A required integer field in [lo, hi]. */
int model__field_size(const msgpack_object *map, const char *ctx, const char *key, size_t lo,
                      size_t hi, size_t *out, char *err);

/* A required finite number (integer or float). */
int model__field_double(const msgpack_object *map, const char *ctx, const char *key, double *out,
                        char *err);

/* An optional bool field (absent: false). */
int model__field_bool(const msgpack_object *map, const char *ctx, const char *key, bool *out,
                      char *err);

/* A required array of exactly n finite numbers, copied into model memory. When n is 0 any
 * non-zero length is taken and stored in *n_out (which may otherwise be NULL). */
int model__field_doubles(struct twin_model *m, const msgpack_object *map, const char *ctx,
                         const char *key, size_t n, double **out, size_t *n_out, char *err);

/* A required array of exactly n integers in [lo, hi], copied into model memory. */
int model__field_ints(struct twin_model *m, const msgpack_object *map, const char *ctx,
                      const char *key, size_t n, int64_t lo, int64_t hi, int32_t **out, char *err);

/* A finite number from an object (integer or float). */
int model__number(const msgpack_object *o, double *out);

#endif
