/* value.c: questions asked of msgpack values: are two equal, what is at a key or a dotted
 * path. It changes nothing; merge.c builds new values. Any thread.
 */
#include "twins_int.h"

#include <math.h>

static bool is_float(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64;
}

static bool is_number(const msgpack_object *o)
{
    return is_float(o) || o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
           o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

/* An integer below zero (a NEGATIVE_INTEGER built by hand may hold a value >= 0). */
static bool int_negative(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 < 0;
}

static bool int_float_equal(const msgpack_object *i, double d)
{
    if (d != d || d != trunc(d))
        return false;
    if (int_negative(i)) {
        if (d < -9223372036854775808.0 || d >= 0)
            return false;
        return (int64_t)d == i->via.i64;
    }
    if (d < 0 || d >= 18446744073709551616.0)
        return false;
    return (uint64_t)d == i->via.u64;
}

static bool number_equal(const msgpack_object *a, const msgpack_object *b)
{
    if (is_float(a) && is_float(b)) /* two NaNs are the same stored value */
        return a->via.f64 == b->via.f64 || (isnan(a->via.f64) && isnan(b->via.f64));
    if (is_float(a))
        return int_float_equal(b, a->via.f64);
    if (is_float(b))
        return int_float_equal(a, b->via.f64);
    if (int_negative(a) != int_negative(b))
        return false;
    return a->via.u64 == b->via.u64; /* same bits for i64 and u64 */
}

static bool map_equal(const msgpack_object_map *a, const msgpack_object_map *b)
{
    if (a->size != b->size)
        return false;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object_kv *kv = &a->ptr[i];
        bool found = false;

        /* fast path: maps built the same way keep the same order */
        if (twin_value_equal(&kv->key, &b->ptr[i].key)) {
            if (!twin_value_equal(&kv->val, &b->ptr[i].val))
                return false;
            continue;
        }
        for (uint32_t j = 0; j < b->size; j++) {
            if (twin_value_equal(&kv->key, &b->ptr[j].key)) {
                if (!twin_value_equal(&kv->val, &b->ptr[j].val))
                    return false;
                found = true;
                break;
            }
        }
        if (!found)
            return false;
    }
    return true;
}

bool twin_value_equal(const msgpack_object *a, const msgpack_object *b)
{
    if (!a || !b)
        return a == b;
    if (is_number(a) && is_number(b))
        return number_equal(a, b);
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case MSGPACK_OBJECT_NIL:
        return true;
    case MSGPACK_OBJECT_BOOLEAN:
        return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_STR:
        return a->via.str.size == b->via.str.size &&
               (a->via.str.size == 0 ||
                memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0);
    case MSGPACK_OBJECT_BIN:
        return a->via.bin.size == b->via.bin.size &&
               (a->via.bin.size == 0 ||
                memcmp(a->via.bin.ptr, b->via.bin.ptr, a->via.bin.size) == 0);
    case MSGPACK_OBJECT_EXT:
        return a->via.ext.type == b->via.ext.type && a->via.ext.size == b->via.ext.size &&
               (a->via.ext.size == 0 ||
                memcmp(a->via.ext.ptr, b->via.ext.ptr, a->via.ext.size) == 0);
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size)
            return false;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!twin_value_equal(&a->via.array.ptr[i], &b->via.array.ptr[i]))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        return map_equal(&a->via.map, &b->via.map);
    default:
        return false; /* numbers were handled above */
    }
}

const msgpack_object *twin_value_get(const msgpack_object *map, const char *k, size_t len)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP || (!k && len))
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (twins__key_is(&map->via.map.ptr[i].key, k, len))
            return &map->via.map.ptr[i].val;
    return NULL;
}

const msgpack_object *twin_value_path(const msgpack_object *map, const char *path, size_t len)
{
    const msgpack_object *cur = map;
    size_t i = 0;

    if (!path || len == 0)
        return NULL;
    while (cur) {
        const char *dot = memchr(path + i, '.', len - i);
        size_t seg = dot ? (size_t)(dot - (path + i)) : len - i;

        if (seg == 0)
            return NULL;
        cur = twin_value_get(cur, path + i, seg);
        if (!dot)
            return cur;
        i += seg + 1;
        if (i == len)
            return NULL; /* "a." */
    }
    return NULL;
}
