/* merge.c: RFC 7396 merge patch on msgpack values, and the meta tree of write timestamps that
 * travels with it. Builds new values in a zone and never touches its inputs; it does not decide
 * what is merged where (telemetry.c and the callers of twin_merge do). It reports each leaf it
 * writes and each value it takes out through callbacks, which history uses.
 *
 * Meta semantics (our choice, as AWS IoT Device Shadow): a leaf's meta `ts` is when a patch
 * last *wrote* it, even when the value written equals the old one. Any thread.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>

/* Above this many key comparisons ((target + patch entries) x patch entries) a map merge
 * indexes its keys in a hash table instead of searching linearly. */
#define MERGE_LINEAR_MAX 512u

/* ---------------------------------------------------------------------------------------------
 * A map under construction: a copy of the old entries, tombstones, new entries appended, and an
 * optional hash index over string keys.
 * ------------------------------------------------------------------------------------------ */

struct kvset {
    msgpack_object_kv *kv;
    unsigned char *dead;
    uint32_t n;
    uint32_t *tab; /* entry index + 1, 0 = empty slot; NULL: linear search */
    uint32_t mask;
};

static uint32_t key_hash(const msgpack_object *k)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (uint32_t i = 0; i < k->via.str.size; i++)
        h = (h ^ (unsigned char)k->via.str.ptr[i]) * 16777619u;
    return h;
}

static bool key_equal(const msgpack_object *a, const msgpack_object *b)
{
    if (a->type == MSGPACK_OBJECT_STR && b->type == MSGPACK_OBJECT_STR)
        return a->via.str.size == b->via.str.size &&
               (a->via.str.size == 0 ||
                memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0);
    return twin_value_equal(a, b);
}

static void kvset_index(struct kvset *s, uint32_t i)
{
    uint32_t h = key_hash(&s->kv[i].key) & s->mask;

    while (s->tab[h])
        h = (h + 1) & s->mask;
    s->tab[h] = i + 1;
}

/* Starts from the entries of `from` (may be NULL: empty), leaving room for `extra` more.
 * `patch` is the map whose keys will be looked up; it decides whether an index pays off. */
static int kvset_init(struct kvset *s, msgpack_zone *z, const msgpack_object *from,
                      const msgpack_object_map *patch)
{
    uint32_t n0 = from && from->type == MSGPACK_OBJECT_MAP ? from->via.map.size : 0;
    size_t cap = (size_t)n0 + patch->size;
    bool strings = true;

    s->n = n0;
    s->tab = NULL;
    s->kv = msgpack_zone_malloc(z, cap * sizeof *s->kv + 1);
    s->dead = msgpack_zone_malloc(z, cap + 1);
    if (!s->kv || !s->dead)
        return -ENOMEM;
    if (n0)
        memcpy(s->kv, from->via.map.ptr, n0 * sizeof *s->kv);
    memset(s->dead, 0, cap + 1);
    if (((uint64_t)n0 + patch->size) * patch->size <= MERGE_LINEAR_MAX)
        return 0;
    for (uint32_t i = 0; strings && i < n0; i++)
        strings = s->kv[i].key.type == MSGPACK_OBJECT_STR;
    for (uint32_t i = 0; strings && i < patch->size; i++)
        strings = patch->ptr[i].key.type == MSGPACK_OBJECT_STR;
    if (!strings)
        return 0;
    {
        size_t slots = 16;

        while (slots < 2 * cap)
            slots *= 2;
        s->tab = msgpack_zone_malloc(z, slots * sizeof *s->tab);
        if (!s->tab)
            return -ENOMEM;
        memset(s->tab, 0, slots * sizeof *s->tab);
        s->mask = (uint32_t)(slots - 1);
        for (uint32_t i = 0; i < n0; i++)
            kvset_index(s, i);
    }
    return 0;
}

/* Index of the live entry with key k, or -1. */
static int64_t kvset_find(const struct kvset *s, const msgpack_object *k)
{
    if (s->tab) {
        uint32_t h = key_hash(k) & s->mask;

        for (; s->tab[h]; h = (h + 1) & s->mask) {
            uint32_t i = s->tab[h] - 1;

            if (!s->dead[i] && key_equal(&s->kv[i].key, k))
                return i;
        }
        return -1;
    }
    for (uint32_t i = 0; i < s->n; i++)
        if (!s->dead[i] && key_equal(&s->kv[i].key, k))
            return i;
    return -1;
}

static void kvset_add(struct kvset *s, const msgpack_object *k, const msgpack_object *v)
{
    s->kv[s->n].key = *k;
    s->kv[s->n].val = *v;
    if (s->tab)
        kvset_index(s, s->n);
    s->n++;
}

static void kvset_finish(struct kvset *s, msgpack_object *out)
{
    uint32_t m = 0;

    for (uint32_t i = 0; i < s->n; i++)
        if (!s->dead[i])
            s->kv[m++] = s->kv[i];
    out->type = MSGPACK_OBJECT_MAP;
    out->via.map.size = m;
    out->via.map.ptr = s->kv;
}

/* ---------------------------------------------------------------------------------------------
 * The merge
 * ------------------------------------------------------------------------------------------ */

struct mctx {
    msgpack_zone *zone;
    msgpack_object ts; /* the meta value of a written leaf */
    bool meta;
    twin_leaf_cb cb;
    merge__gone_cb gone;
    void *cb_ctx;
    char *path; /* dotted path of the value being merged, from the root of target */
    size_t len, cap;
};

/* Appends ".key" (or "key" at the root) to the path; *saved receives the old length. */
static int path_push(struct mctx *c, const msgpack_object *k, size_t *saved)
{
    char num[24];
    const char *s = num;
    size_t n, need;

    if (k->type == MSGPACK_OBJECT_STR) {
        s = k->via.str.ptr;
        n = k->via.str.size;
    } else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        n = (size_t)snprintf(num, sizeof num, "%" PRIu64, k->via.u64);
    } else if (k->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        n = (size_t)snprintf(num, sizeof num, "%" PRId64, k->via.i64);
    } else {
        num[0] = '?';
        n = 1;
    }
    *saved = c->len;
    need = c->len + 1 + n;
    if (need > c->cap) {
        size_t cap = c->cap * 2 > need ? c->cap * 2 : need + 64;
        char *p = msgpack_zone_malloc(c->zone, cap);

        if (!p)
            return -ENOMEM;
        memcpy(p, c->path, c->len);
        c->path = p;
        c->cap = cap;
    }
    if (c->len)
        c->path[c->len++] = '.';
    if (n)
        memcpy(c->path + c->len, s, n);
    c->len += n;
    return 0;
}

/* Merges patch into target (NULL: absent) with meta (NULL: none) into *out and *meta_out. */
static int merge(struct mctx *c, const msgpack_object *target, const msgpack_object *patch,
                 const msgpack_object *meta, msgpack_object *out, msgpack_object *meta_out)
{
    const msgpack_object_map *p = &patch->via.map;
    struct kvset vals, metas;
    int rc;

    /* replaced whole: by a leaf, or by a map where there was no map (nil there means absent) */
    if (c->gone && target && target->type != MSGPACK_OBJECT_NIL &&
        (patch->type != MSGPACK_OBJECT_MAP || target->type != MSGPACK_OBJECT_MAP))
        c->gone(c->cb_ctx, c->path, c->len, target, patch);
    if (patch->type != MSGPACK_OBJECT_MAP) {
        /* a leaf (arrays included): replaces whatever was there */
        *out = *patch;
        if (c->meta)
            *meta_out = c->ts;
        if (c->cb)
            c->cb(c->cb_ctx, c->path, c->len, patch);
        return 0;
    }
    rc = kvset_init(&vals, c->zone, target, p);
    if (!rc && c->meta)
        rc = kvset_init(&metas, c->zone, meta, p);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < p->size; i++) {
        const msgpack_object *k = &p->ptr[i].key, *v = &p->ptr[i].val;
        int64_t vi = kvset_find(&vals, k), mi = c->meta ? kvset_find(&metas, k) : -1;
        msgpack_object nv, nm;
        size_t saved;

        if (v->type == MSGPACK_OBJECT_NIL) {
            /* delete: the key and its meta go; a missing key stays missing */
            if (vi >= 0 && c->gone) {
                rc = path_push(c, k, &saved);
                if (rc)
                    return rc;
                c->gone(c->cb_ctx, c->path, c->len, &vals.kv[vi].val, NULL);
                c->len = saved;
            }
            if (vi >= 0)
                vals.dead[vi] = 1;
            if (mi >= 0)
                metas.dead[mi] = 1;
            continue;
        }
        rc = path_push(c, k, &saved);
        if (rc)
            return rc;
        rc = merge(c, vi >= 0 ? &vals.kv[vi].val : NULL, v, mi >= 0 ? &metas.kv[mi].val : NULL, &nv,
                   &nm);
        c->len = saved;
        if (rc)
            return rc;
        if (vi >= 0)
            vals.kv[vi].val = nv;
        else
            kvset_add(&vals, k, &nv);
        if (!c->meta)
            continue;
        if (mi >= 0)
            metas.kv[mi].val = nm;
        else
            kvset_add(&metas, k, &nm);
    }
    kvset_finish(&vals, out);
    if (c->meta)
        kvset_finish(&metas, meta_out);
    return 0;
}

int merge__apply(msgpack_zone *zone, const msgpack_object *target, const msgpack_object *patch,
                 const msgpack_object *meta, int64_t ts, msgpack_object *out,
                 msgpack_object *meta_out, twin_leaf_cb leaf_cb, merge__gone_cb gone_cb,
                 void *cb_ctx)
{
    char path[TWIN_PATH_MAX + 1];
    struct mctx c = {
        .zone = zone,
        .meta = meta && meta_out,
        .cb = leaf_cb,
        .gone = gone_cb,
        .cb_ctx = cb_ctx,
        .path = path,
        .cap = sizeof path,
    };
    msgpack_object nm;

    if (!zone || !patch || !out)
        return -EINVAL;
    if (ts >= 0) {
        c.ts.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        c.ts.via.u64 = (uint64_t)ts;
    } else {
        c.ts.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        c.ts.via.i64 = ts;
    }
    path[0] = '\0';
    return merge(&c, target, patch, c.meta ? meta : NULL, out, c.meta ? meta_out : &nm);
}

int twin_merge(msgpack_zone *zone, const msgpack_object *target, const msgpack_object *patch,
               const msgpack_object *meta, int64_t ts, msgpack_object *out,
               msgpack_object *meta_out, twin_leaf_cb leaf_cb, void *leaf_ctx)
{
    return merge__apply(zone, target, patch, meta, ts, out, meta_out, leaf_cb, NULL, leaf_ctx);
}
