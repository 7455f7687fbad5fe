/* check.c: the checks every value written under reported or desired passes (telemetry.c,
 * desired.c): key shape, nesting, no ext values, with reasons that name the path. It decides
 * nothing about what a key means (seq, ts) and writes nothing. Any thread.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>

const char *check__type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "str";
    case MSGPACK_OBJECT_BIN:
        return "bin";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    }
    return "unknown";
}

/* The path named in reasons ("reported.vitals.hr", "reported.ecg[3]"), cut short if long. */
struct vpath {
    char buf[320];
    size_t len;
};

static size_t vpath_room(const struct vpath *p)
{
    return sizeof p->buf - p->len;
}

static void vpath_grew(struct vpath *p, int w)
{
    if (w > 0)
        p->len += (size_t)w < vpath_room(p) ? (size_t)w : vpath_room(p) - 1;
}

/* Appends ".key"; returns the length to restore. */
static size_t vpath_key(struct vpath *p, const msgpack_object *k)
{
    size_t saved = p->len;

    vpath_grew(
        p, snprintf(p->buf + p->len, vpath_room(p), ".%.*s", (int)k->via.str.size, k->via.str.ptr));
    return saved;
}

/* Appends "[i]"; returns the length to restore. */
static size_t vpath_index(struct vpath *p, uint32_t i)
{
    size_t saved = p->len;

    vpath_grew(p, snprintf(p->buf + p->len, vpath_room(p), "[%" PRIu32 "]", i));
    return saved;
}

/* Writes key k (at most 64 bytes of it) printably into out. */
static void key_show(const msgpack_object *k, char *out, size_t cap)
{
    size_t o = 0;

    for (uint32_t i = 0; i < k->via.str.size && i < 64 && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)k->via.str.ptr[i];

        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o] = '\0';
}

static int bad_key(const msgpack_object *k, const struct vpath *p, const char *why, char *err)
{
    char shown[300];

    key_show(k, shown, sizeof shown);
    twins__errf(err, "bad key \"%s\" in %.*s: %s", shown, (int)p->len, p->buf, why);
    return -EINVAL;
}

static int check_key(const msgpack_object *k, const struct vpath *p, char *err)
{
    char why[64];

    if (k->type != MSGPACK_OBJECT_STR) {
        twins__errf(err, "bad key in %.*s: keys must be strings, got %s", (int)p->len, p->buf,
                    check__type_name(k->type));
        return -EINVAL;
    }
    if (k->via.str.size == 0)
        return bad_key(k, p, "empty", err);
    if (k->via.str.size > TWIN_KEY_MAX) {
        snprintf(why, sizeof why, "%" PRIu32 " bytes long, the limit is %d", k->via.str.size,
                 TWIN_KEY_MAX);
        return bad_key(k, p, why, err);
    }
    for (uint32_t i = 0; i < k->via.str.size; i++) {
        unsigned char c = (unsigned char)k->via.str.ptr[i];

        if (c == '.')
            return bad_key(k, p, "contains '.'", err);
        if (c < 0x20 || c == 0x7f) {
            snprintf(why, sizeof why, "contains control byte 0x%02x", c);
            return bad_key(k, p, why, err);
        }
    }
    return 0;
}

/* Whether check_value can fail on o or descend into it: the path is built only for those. */
static bool needs_check(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_EXT || o->type == MSGPACK_OBJECT_MAP ||
           o->type == MSGPACK_OBJECT_ARRAY;
}

static int check_value(const msgpack_object *o, struct vpath *p, unsigned depth, char *err)
{
    if (o->type == MSGPACK_OBJECT_EXT) {
        twins__errf(err, "unsupported msgpack ext type at %.*s", (int)p->len, p->buf);
        return -EINVAL;
    }
    if (o->type != MSGPACK_OBJECT_MAP && o->type != MSGPACK_OBJECT_ARRAY)
        return 0;
    if (depth > TWINS_TREE_DEPTH_MAX) {
        twins__errf(err, "%.*s is nested deeper than %d levels", (int)p->len, p->buf,
                    TWINS_TREE_DEPTH_MAX);
        return -EINVAL;
    }
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (!needs_check(&o->via.array.ptr[i]))
                continue;
            size_t saved = vpath_index(p, i);
            int rc = check_value(&o->via.array.ptr[i], p, depth + 1, err);

            p->len = saved;
            if (rc)
                return rc;
        }
        return 0;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        size_t saved;
        int rc = check_key(&kv->key, p, err);

        if (rc)
            return rc;
        if (!needs_check(&kv->val))
            continue;
        saved = vpath_key(p, &kv->key);
        rc = check_value(&kv->val, p, depth + 1, err);
        p->len = saved;
        if (rc)
            return rc;
    }
    return 0;
}

int check__tree(const msgpack_object *o, const char *root, char *err)
{
    struct vpath p;
    int n = snprintf(p.buf, sizeof p.buf, "%s", root);

    p.len = n > 0 ? (size_t)n : 0;
    return check_value(o, &p, 1, err);
}
