/* load.c: a .twm file from bytes to a checked model: the msgpack gate, the common header
 * (format, version, kind, shapes, classes, preprocessing), the hand-off to the kind's loader,
 * the scratch memory, and freeing. Each kind's parameters are the kind's file (linear.c,
 * svm.c, ...); predicting is predict.c's. Any thread.
 */
#include "models_int.h"

#include <errno.h>
#include <sys/stat.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Every allocation of a model is a block on its list, so that one walk frees a half-loaded
 * model as surely as a whole one. */
struct model_block {
    struct model_block *next;
    size_t bytes; /* what it took from the budget */
    _Alignas(max_align_t) unsigned char data[];
};

#define MAX_FEATURES (1u << 20)
#define MAX_OUTPUTS (1u << 16)
#define MAX_CLASSES (1u << 16)
#define MAX_WINDOW (1u << 16)
#define MAX_DEPTH 16

static const struct model_kind *const kinds[] = {
    &model__linear, &model__logistic, &model__svm, &model__tree, &model__mlp, &model__lstm,
};

void model__errf(char *err, const char *fmt, ...)
{
    va_list ap;

    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(err, TWIN_MODEL_ERR_LEN, fmt, ap);
    va_end(ap);
}

void *model__alloc(struct twin_model *m, size_t n, size_t size, char *err)
{
    struct model_block *b;
    size_t bytes;

    if (size && n > (SIZE_MAX - sizeof *b) / size) {
        model__errf(err, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    bytes = n * size;
    if (bytes > m->budget) {
        m->over_budget = true;
        model__errf(err,
                    "the model asks for more memory than its file's size allows "
                    "(%zu bytes more)",
                    bytes);
        return NULL;
    }
    b = calloc(1, sizeof *b + (bytes ? bytes : 1));
    if (!b) {
        model__errf(err, "out of memory (%zu bytes)", bytes);
        return NULL;
    }
    m->budget -= bytes;
    b->bytes = bytes;
    b->next = m->blocks;
    m->blocks = b;
    return b->data;
}

void model__free(struct twin_model *m, void *p)
{
    struct model_block **pb;

    if (!p)
        return;
    for (pb = &m->blocks; *pb; pb = &(*pb)->next) {
        struct model_block *b = *pb;
        if ((void *)b->data == p) {
            *pb = b->next;
            m->budget += b->bytes;
            free(b);
            return;
        }
    }
}

char *model__strdup(struct twin_model *m, const char *s, size_t len, char *err)
{
    char *d = model__alloc(m, len + 1, 1, err);

    if (d)
        memcpy(d, s, len);
    return d;
}

size_t model__argmax(const double *v, size_t n)
{
    size_t best = 0;

    for (size_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

double model__expit(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

void twin_model_free(struct twin_model *m)
{
    struct model_block *b, *next;

    if (!m)
        return;
    for (b = m->blocks; b; b = next) {
        next = b->next;
        free(b);
    }
    free(m);
}

const struct twin_model_info *twin_model_info_get(const struct twin_model *m)
{
    return &m->info;
}

/* FNV-1a, 64 bits: a cheap identity for model_version (not a defence against forgery). */
static void version_make(struct twin_model *m, const unsigned char *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    snprintf(m->version, sizeof m->version, "fnv1a64:%016llx", (unsigned long long)h);
    m->info.version = m->version;
}

static int classes_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    const msgpack_object *a = model__field(root, "classes");
    struct twin_model_info *in = &m->info;
    int rc;

    if (!a || a->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size == 0 ||
        a->via.array.size > MAX_CLASSES) {
        model__errf(err, "classes: expected an array of 1 to %u labels", MAX_CLASSES);
        return -EINVAL;
    }
    in->classifier = true;
    in->n_classes = a->via.array.size;
    in->classes_are_strings = a->via.array.ptr[0].type == MSGPACK_OBJECT_STR;
    if (in->classes_are_strings) {
        const char **names = model__alloc(m, in->n_classes, sizeof *names, err);
        if (!names)
            return -ENOMEM;
        for (size_t i = 0; i < in->n_classes; i++) {
            const msgpack_object *o = &a->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR) {
                model__errf(err, "classes[%zu]: expected a string like classes[0]", i);
                return -EINVAL;
            }
            if (memchr(o->via.str.ptr, 0, o->via.str.size)) {
                model__errf(err, "classes[%zu]: a label holds a NUL byte", i);
                return -EINVAL;
            }
            names[i] = model__strdup(m, o->via.str.ptr, o->via.str.size, err);
            if (!names[i])
                return -ENOMEM;
        }
        in->class_names = names;
        return 0;
    }
    double *nums;
    rc = model__field_doubles(m, root, "", "classes", in->n_classes, &nums, NULL, err);
    if (rc)
        return rc;
    in->class_numbers = nums;
    return 0;
}

static int prep_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    static const char *const types[] = {"standard", "minmax"};
    const msgpack_object *a = model__field(root, "preprocess");
    size_t nf = m->info.n_features;
    char ctx[32];
    int rc, type;

    if (!a || a->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (a->type != MSGPACK_OBJECT_ARRAY) {
        model__errf(err, "preprocess: expected an array");
        return -EINVAL;
    }
    if (a->via.array.size > TWIN_MODEL_MAX_PREPROCESS) {
        model__errf(err, "preprocess: %u steps, at most %d", a->via.array.size,
                    TWIN_MODEL_MAX_PREPROCESS);
        return -EINVAL;
    }
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *s = &a->via.array.ptr[i];
        struct model_prep *p = &m->prep[i];
        snprintf(ctx, sizeof ctx, "preprocess[%u]", i);
        if (s->type != MSGPACK_OBJECT_MAP) {
            model__errf(err, "%s: expected a map", ctx);
            return -EINVAL;
        }
        rc = model__field_enum(s, ctx, "type", types, 2, &type, err);
        if (rc)
            return rc;
        p->type = (enum model_prep_type)type;
        m->prep_names[i] = types[type];
        if (p->type == MODEL_PREP_STANDARD) {
            const msgpack_object *o = model__field(s, "mean");
            if (o && o->type != MSGPACK_OBJECT_NIL &&
                (rc = model__field_doubles(m, s, ctx, "mean", nf, &p->mean, NULL, err)))
                return rc;
            o = model__field(s, "scale");
            if (o && o->type != MSGPACK_OBJECT_NIL &&
                (rc = model__field_doubles(m, s, ctx, "scale", nf, &p->scale, NULL, err)))
                return rc;
        } else {
            const msgpack_object *c = model__field(s, "clip");
            if ((rc = model__field_doubles(m, s, ctx, "scale", nf, &p->scale, NULL, err)) ||
                (rc = model__field_doubles(m, s, ctx, "min", nf, &p->min, NULL, err)))
                return rc;
            if (c && c->type != MSGPACK_OBJECT_NIL) {
                if (c->type != MSGPACK_OBJECT_ARRAY || c->via.array.size != 2 ||
                    model__number(&c->via.array.ptr[0], &p->lo) ||
                    model__number(&c->via.array.ptr[1], &p->hi) || !(p->lo <= p->hi)) {
                    model__errf(err, "%s.clip: expected [low, high] or nil", ctx);
                    return -EINVAL;
                }
                p->clip = true;
            }
        }
        m->n_prep++;
    }
    m->info.n_preprocess = m->n_prep;
    m->info.preprocess = m->prep_names;
    return 0;
}

/* The common header; leaves the kind's own fields to the kind. */
static int header_load(struct twin_model *m, const msgpack_object *root, char *err)
{
    struct twin_model_info *in = &m->info;
    const msgpack_object *o;
    const char *s;
    size_t len, version;
    int rc;

    if (root->type != MSGPACK_OBJECT_MAP) {
        model__errf(err, "not a model: the file is not a msgpack map");
        return -EINVAL;
    }
    if ((rc = model__field_str(root, "", "format", &s, &len, err)))
        return rc;
    if (len != 13 || memcmp(s, "twinhub-model", 13) != 0) {
        model__errf(err, "not a model: format is '%.*s', not 'twinhub-model'",
                    (int)(len > 32 ? 32 : len), s);
        return -EINVAL;
    }
    if ((rc = model__field_size(root, "", "version", 1, UINT32_MAX, &version, err)))
        return rc;
    if (version != 1) {
        model__errf(err, "format version %zu: this runtime reads version 1", version);
        return -ENOTSUP;
    }
    if ((rc = model__field_str(root, "", "kind", &s, &len, err)))
        return rc;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strlen(kinds[i]->name) == len && memcmp(kinds[i]->name, s, len) == 0)
            m->kind = kinds[i];
    if (!m->kind) {
        model__errf(err,
                    "kind '%.*s' is not one this runtime knows (linear, logistic, svm, "
                    "tree, mlp, lstm)",
                    (int)(len > 32 ? 32 : len), s);
        return -ENOTSUP;
    }
    in->kind = m->kind->name;
    in->estimator = "";
    o = model__field(root, "estimator");
    if (o && o->type != MSGPACK_OBJECT_NIL) {
        if ((rc = model__field_str(root, "", "estimator", &s, &len, err)))
            return rc;
        if (len > 128 || memchr(s, 0, len)) {
            model__errf(err, "estimator: expected a name of at most 128 bytes");
            return -EINVAL;
        }
        if (!(in->estimator = model__strdup(m, s, len, err)))
            return -ENOMEM;
    }
    if ((rc = model__field_size(root, "", "n_features", 1, MAX_FEATURES, &in->n_features, err)) ||
        (rc = model__field_size(root, "", "outputs", 1, MAX_OUTPUTS, &in->n_outputs, err)))
        return rc;
    o = model__field(root, "window");
    if (m->kind == &model__lstm) {
        if ((rc = model__field_size(root, "", "window", 1, MAX_WINDOW, &in->window, err)))
            return rc;
    } else if (o && o->type != MSGPACK_OBJECT_NIL) {
        model__errf(err, "window: only an lstm reads a window");
        return -EINVAL;
    }
    in->n_inputs = in->n_features * (in->window ? in->window : 1);
    if ((rc = classes_load(m, root, err)))
        return rc;
    if (in->classifier && in->n_outputs != 1) {
        model__errf(err, "outputs: a classifier has 1 output (its label), not %zu", in->n_outputs);
        return -EINVAL;
    }
    return prep_load(m, root, err);
}

static int scratch_make(struct twin_model *m, char *err)
{
    const struct twin_model_info *in = &m->info;

    if (!(m->xbuf = model__alloc(m, in->n_inputs, sizeof(double), err)) ||
        !(m->valbuf = model__alloc(m, in->n_outputs, sizeof(double), err)) ||
        !(m->probbuf = model__alloc(m, in->n_classes ? in->n_classes : 1, sizeof(double), err)) ||
        !(m->decbuf = model__alloc(m, in->n_decision ? in->n_decision : 1, sizeof(double), err)))
        return -ENOMEM;
    return 0;
}

int twin_model_load(const void *buf, size_t len, struct twin_model **out, char *err)
{
    const struct twin_limits lim = {len, MAX_DEPTH, UINT_MAX};
    struct twin_model *m = NULL;
    msgpack_zone zone;
    msgpack_object root;
    msgpack_unpack_return ur;
    size_t off = 0;
    int rc;

    if (!out || (!buf && len)) {
        model__errf(err, "twin_model_load: no buffer or no output");
        return -EINVAL;
    }
    *out = NULL;
    if (len > TWIN_MODEL_MAX_FILE) {
        model__errf(err, "model file of %zu bytes is over the limit of %u", len,
                    TWIN_MODEL_MAX_FILE);
        return -E2BIG;
    }
    /* msgpack-c allocates count x 24 bytes per header before it reads an element: prove every
     * count fits in the bytes that follow before it sees them */
    rc = twin_input_scan(buf, len, &lim, err);
    if (rc)
        return rc == -ELOOP ? -EINVAL : rc;
    if (!msgpack_zone_init(&zone, 4096)) {
        model__errf(err, "out of memory");
        return -ENOMEM;
    }
    ur = msgpack_unpack(buf, len, &off, &zone, &root);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        model__errf(err, "out of memory decoding %zu bytes of msgpack", len);
        rc = -ENOMEM;
        goto fail_unpack;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        model__errf(err, "msgpack-c rejected the file (code %d, offset %zu of %zu)", (int)ur, off,
                    len);
        rc = -EBADMSG;
        goto fail_unpack;
    }
    m = calloc(1, sizeof *m);
    if (!m) {
        model__errf(err, "out of memory");
        rc = -ENOMEM;
        goto fail_unpack;
    }
    /* every array the model keeps comes from the file (at least one byte per number) and every
     * scratch buffer is as wide as some array: 32 bytes per file byte is a generous bound */
    m->budget = len * 32 + (1u << 20);
    if ((rc = header_load(m, &root, err)) || (rc = m->kind->load(m, &root, err)) ||
        (rc = scratch_make(m, err)))
        goto fail_model;
    version_make(m, buf, len);
    msgpack_zone_destroy(&zone);
    *out = m;
    return 0;

fail_model:
    if (m->over_budget)
        rc = -E2BIG;
    else if (rc != -ENOTSUP && rc != -ENOMEM)
        rc = -EINVAL;
    twin_model_free(m);
fail_unpack:
    msgpack_zone_destroy(&zone);
    return rc;
}

int twin_model_load_file(const char *path, struct twin_model **out, char *err)
{
    FILE *f;
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0, n;
    int rc;

    if (out)
        *out = NULL;
    if (!path || !out) {
        model__errf(err, "twin_model_load_file: no path or no output");
        return -EINVAL;
    }
    f = fopen(path, "rb");
    if (!f) {
        rc = errno == ENOENT ? -ENOENT : -EIO;
        model__errf(err, "%s: %s", path, strerror(errno));
        return rc;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        /* a device or a pipe could feed the reader forever */
        model__errf(err, "%s: not a regular file", path);
        fclose(f);
        return -EINVAL;
    }
    do {
        if (len == cap) {
            unsigned char *nb;
            if (cap > TWIN_MODEL_MAX_FILE) {
                model__errf(err, "%s: over the limit of %u bytes", path, TWIN_MODEL_MAX_FILE);
                rc = -E2BIG;
                goto fail_read;
            }
            cap = cap ? cap * 2 : 65536;
            nb = realloc(buf, cap);
            if (!nb) {
                model__errf(err, "%s: out of memory", path);
                rc = -ENOMEM;
                goto fail_read;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    if (ferror(f)) {
        model__errf(err, "%s: %s", path, strerror(errno));
        rc = -EIO;
        goto fail_read;
    }
    rc = twin_model_load(buf, len, out, err);
    if (rc && err) {
        /* name the file in front of the reason */
        char reason[TWIN_MODEL_ERR_LEN];
        memcpy(reason, err, sizeof reason);
        reason[sizeof reason - 1] = 0;
        model__errf(err, "%s: %s", path, reason);
    }
fail_read:
    free(buf);
    fclose(f);
    return rc;
}
