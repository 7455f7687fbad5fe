/* field.c: typed, checked reads of a .twm file's fields (numbers, sizes, names, arrays) into
 * model memory, each failure a reason naming the field. What the fields mean is each kind's
 * business; the bytes were proven well-formed by load.c before any of this runs.
 */
#include "models_int.h"

#include <errno.h>
#include <math.h>
#include <string.h>

const msgpack_object *model__field(const msgpack_object *map, const char *key)
{
    return twin_value_get(map, key, strlen(key));
}

static const msgpack_object *need(const msgpack_object *map, const char *ctx, const char *key,
                                  char *err)
{
    const msgpack_object *o = model__field(map, key);

    if (!o)
        model__errf(err, "%s%s%s: missing", ctx, *ctx ? "." : "", key);
    return o;
}

static int bad(char *err, const char *ctx, const char *key, const char *what)
{
    model__errf(err, "%s%s%s: %s", ctx, *ctx ? "." : "", key, what);
    return -EINVAL;
}

int model__number(const msgpack_object *o, double *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64))
            return -EDOM;
        *out = o->via.f64;
        return 0;
    default:
        return -EINVAL;
    }
}

int model__field_map(const msgpack_object *map, const char *ctx, const char *key,
                     const msgpack_object **out, char *err)
{
    const msgpack_object *o = need(map, ctx, key, err);

    if (!o)
        return -EINVAL;
    if (o->type != MSGPACK_OBJECT_MAP)
        return bad(err, ctx, key, "expected a map");
    *out = o;
    return 0;
}

int model__field_array(const msgpack_object *map, const char *ctx, const char *key,
                       const msgpack_object **out, char *err)
{
    const msgpack_object *o = need(map, ctx, key, err);

    if (!o)
        return -EINVAL;
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return bad(err, ctx, key, "expected an array");
    *out = o;
    return 0;
}

int model__field_str(const msgpack_object *map, const char *ctx, const char *key, const char **s,
                     size_t *len, char *err)
{
    const msgpack_object *o = need(map, ctx, key, err);

    if (!o)
        return -EINVAL;
    if (o->type != MSGPACK_OBJECT_STR)
        return bad(err, ctx, key, "expected a string");
    *s = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}

int model__field_enum(const msgpack_object *map, const char *ctx, const char *key,
                      const char *const *names, size_t n, int *out, char *err)
{
    const char *s;
    size_t len;
    int rc = model__field_str(map, ctx, key, &s, &len, err);

    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    model__errf(err, "%s%s%s: unknown value '%.*s'", ctx, *ctx ? "." : "", key,
                (int)(len > 64 ? 64 : len), s);
    return -EINVAL;
}

int model__field_size(const msgpack_object *map, const char *ctx, const char *key, size_t lo,
                      size_t hi, size_t *out, char *err)
{
    const msgpack_object *o = need(map, ctx, key, err);

    if (!o)
        return -EINVAL;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return bad(err, ctx, key, "expected a non-negative integer");
    if (o->via.u64 < lo || o->via.u64 > hi) {
        model__errf(err, "%s%s%s: %llu is outside [%zu, %zu]", ctx, *ctx ? "." : "", key,
                    (unsigned long long)o->via.u64, lo, hi);
        return -EINVAL;
    }
    *out = (size_t)o->via.u64;
    return 0;
}

int model__field_double(const msgpack_object *map, const char *ctx, const char *key, double *out,
                        char *err)
{
    const msgpack_object *o = need(map, ctx, key, err);
    int rc;

    if (!o)
        return -EINVAL;
    rc = model__number(o, out);
    if (rc == -EDOM)
        return bad(err, ctx, key, "not a finite number");
    if (rc)
        return bad(err, ctx, key, "expected a number");
    return 0;
}

int model__field_bool(const msgpack_object *map, const char *ctx, const char *key, bool *out,
                      char *err)
{
    const msgpack_object *o = model__field(map, key);

    *out = false;
    if (!o || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return bad(err, ctx, key, "expected true or false");
    *out = o->via.boolean;
    return 0;
}

int model__field_doubles(struct twin_model *m, const msgpack_object *map, const char *ctx,
                         const char *key, size_t n, double **out, size_t *n_out, char *err)
{
    const msgpack_object *a;
    double *v;
    int rc = model__field_array(map, ctx, key, &a, err);

    if (rc)
        return rc;
    if (n == 0 && a->via.array.size == 0)
        return bad(err, ctx, key, "empty array");
    if (n && a->via.array.size != n) {
        model__errf(err, "%s%s%s: expected %zu numbers, found %u", ctx, *ctx ? "." : "", key, n,
                    a->via.array.size);
        return -EINVAL;
    }
    n = a->via.array.size;
    v = model__alloc(m, n, sizeof *v, err);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        rc = model__number(&a->via.array.ptr[i], &v[i]);
        if (rc) {
            model__errf(err, "%s%s%s[%zu]: %s", ctx, *ctx ? "." : "", key, i,
                        rc == -EDOM ? "not a finite number" : "expected a number");
            return -EINVAL;
        }
    }
    *out = v;
    if (n_out)
        *n_out = n;
    return 0;
}

int model__field_ints(struct twin_model *m, const msgpack_object *map, const char *ctx,
                      const char *key, size_t n, int64_t lo, int64_t hi, int32_t **out, char *err)
{
    const msgpack_object *a;
    int32_t *v;
    int rc = model__field_array(map, ctx, key, &a, err);

    if (rc)
        return rc;
    if (a->via.array.size != n) {
        model__errf(err, "%s%s%s: expected %zu integers, found %u", ctx, *ctx ? "." : "", key, n,
                    a->via.array.size);
        return -EINVAL;
    }
    if (lo < INT32_MIN || hi > INT32_MAX)
        return bad(err, ctx, key, "internal: bounds wider than int32");
    v = model__alloc(m, n ? n : 1, sizeof *v, err);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        int64_t x;
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
            x = (int64_t)o->via.u64;
        else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            x = o->via.i64;
        else {
            model__errf(err, "%s%s%s[%zu]: expected an integer", ctx, *ctx ? "." : "", key, i);
            return -EINVAL;
        }
        if (x < lo || x > hi) {
            model__errf(err, "%s%s%s[%zu]: %lld is outside [%lld, %lld]", ctx, *ctx ? "." : "", key,
                        i, (long long)x, (long long)lo, (long long)hi);
            return -EINVAL;
        }
        v[i] = (int32_t)x;
    }
    *out = v;
    return 0;
}
