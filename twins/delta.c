/* delta.c: the delta of a twin, desired against reported, as AWS IoT Device Shadow computes it
 * (see twins.h), and reading the stored one. It builds values in a zone and never touches its
 * inputs; when the delta is recomputed (telemetry.c, desired.c) is not its business. Any thread.
 */
#include "twins_int.h"

#include <errno.h>

/* Above this many key comparisons (desired entries x reported entries) the reported map's keys
 * are hashed instead of searched linearly: a big desired against a big reported on every
 * telemetry message would otherwise cost quadratic time. */
#define DELTA_LINEAR_MAX 256u

/* The keys of one reported map, for lookups. */
struct index {
    const msgpack_object *map; /* NULL: nothing is reported here */
    uint32_t *tab;             /* entry index + 1, 0 = empty; NULL: linear search */
    uint32_t mask;
};

static uint32_t key_hash(const char *p, uint32_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (uint32_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

static int index_init(struct index *ix, msgpack_zone *z, const msgpack_object *reported,
                      uint32_t lookups)
{
    const msgpack_object_map *m;
    size_t slots = 16;

    ix->map = reported && reported->type == MSGPACK_OBJECT_MAP ? reported : NULL;
    ix->tab = NULL;
    if (!ix->map)
        return 0;
    m = &ix->map->via.map;
    if ((uint64_t)m->size * lookups <= DELTA_LINEAR_MAX)
        return 0;
    for (uint32_t i = 0; i < m->size; i++)
        if (m->ptr[i].key.type != MSGPACK_OBJECT_STR)
            return 0; /* not written by us: search it linearly */
    while (slots < 2 * (size_t)m->size)
        slots *= 2;
    ix->tab = msgpack_zone_malloc(z, slots * sizeof *ix->tab);
    if (!ix->tab)
        return -ENOMEM;
    memset(ix->tab, 0, slots * sizeof *ix->tab);
    ix->mask = (uint32_t)(slots - 1);
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        uint32_t h = key_hash(k->via.str.ptr, k->via.str.size) & ix->mask;

        while (ix->tab[h])
            h = (h + 1) & ix->mask;
        ix->tab[h] = i + 1;
    }
    return 0;
}

/* The reported value at key k, or NULL. With duplicate keys (not written by us) the first. */
static const msgpack_object *index_get(const struct index *ix, const msgpack_object *k)
{
    const msgpack_object_map *m;

    if (!ix->map)
        return NULL;
    m = &ix->map->via.map;
    if (!ix->tab || k->type != MSGPACK_OBJECT_STR) {
        for (uint32_t i = 0; i < m->size; i++)
            if (twin_value_equal(&m->ptr[i].key, k))
                return &m->ptr[i].val;
        return NULL;
    }
    for (uint32_t h = key_hash(k->via.str.ptr, k->via.str.size) & ix->mask; ix->tab[h];
         h = (h + 1) & ix->mask) {
        const msgpack_object_kv *kv = &m->ptr[ix->tab[h] - 1];

        if (twin_value_equal(&kv->key, k))
            return &kv->val;
    }
    return NULL;
}

/* The delta of desired map d against r (a map, or NULL / anything else: nothing reported
 * there). *out is a map, possibly empty. Recursion follows desired, which the checks of
 * check.c keep at most TWINS_TREE_DEPTH_MAX deep. */
static int delta_map(msgpack_zone *z, const msgpack_object *d, const msgpack_object *r,
                     msgpack_object *out)
{
    const msgpack_object_map *dm = &d->via.map;
    msgpack_object_kv *kv = NULL;
    struct index ix = {0};
    uint32_t n = 0;
    int rc;

    out->type = MSGPACK_OBJECT_MAP;
    out->via.map.size = 0;
    out->via.map.ptr = NULL;
    if (dm->size == 0)
        return 0;
    rc = index_init(&ix, z, r, dm->size);
    if (rc)
        return rc;
    kv = msgpack_zone_malloc(z, dm->size * sizeof *kv);
    if (!kv)
        return -ENOMEM;
    for (uint32_t i = 0; i < dm->size; i++) {
        const msgpack_object *k = &dm->ptr[i].key, *dv = &dm->ptr[i].val;
        const msgpack_object *rv = index_get(&ix, k);

        if (dv->type == MSGPACK_OBJECT_MAP) {
            msgpack_object sub;

            /* a map over something else or nothing: every leaf under it differs */
            rc = delta_map(z, dv, rv && rv->type == MSGPACK_OBJECT_MAP ? rv : NULL, &sub);
            if (rc)
                return rc;
            if (sub.via.map.size == 0)
                continue;
            kv[n].key = *k;
            kv[n++].val = sub;
        } else if (!rv || !twin_value_equal(dv, rv)) {
            kv[n].key = *k;
            kv[n++].val = *dv;
        }
    }
    out->via.map.size = n;
    out->via.map.ptr = n ? kv : NULL;
    return 0;
}

static bool empty(const msgpack_object *o)
{
    return o->type != MSGPACK_OBJECT_MAP || o->via.map.size == 0;
}

int twin_delta_compute(msgpack_zone *zone, const msgpack_object *desired,
                       const msgpack_object *reported, msgpack_object *out)
{
    int rc;

    if (!zone || !desired || !reported || !out)
        return -EINVAL;
    if ((desired->type != MSGPACK_OBJECT_MAP && desired->type != MSGPACK_OBJECT_NIL) ||
        (reported->type != MSGPACK_OBJECT_MAP && reported->type != MSGPACK_OBJECT_NIL))
        return -EINVAL;
    if (empty(desired)) {
        out->type = MSGPACK_OBJECT_NIL;
        return 0;
    }
    rc = delta_map(zone, desired, reported, out);
    if (rc)
        return rc;
    if (out->via.map.size == 0)
        out->type = MSGPACK_OBJECT_NIL;
    return 0;
}

int delta__refresh(msgpack_zone *zone, struct twin_doc *doc, bool *changed)
{
    msgpack_object nd;
    int rc;

    /* the telemetry hot path: nothing desired, nothing to compare */
    if (empty(&doc->desired)) {
        *changed = !empty(&doc->delta);
        doc->delta.type = MSGPACK_OBJECT_NIL;
        return 0;
    }
    rc = delta_map(zone, &doc->desired,
                   doc->reported.type == MSGPACK_OBJECT_MAP ? &doc->reported : NULL, &nd);
    if (rc)
        return rc;
    if (nd.via.map.size == 0)
        nd.type = MSGPACK_OBJECT_NIL;
    if (empty(&nd) || empty(&doc->delta))
        *changed = empty(&nd) != empty(&doc->delta);
    else
        *changed = !twin_value_equal(&nd, &doc->delta);
    doc->delta = nd;
    return 0;
}

int twin_delta_get(struct twin_txn *txn, const char *id, size_t id_len, uint64_t *version,
                   msgpack_object *delta, char *err)
{
    struct twin_doc doc;
    int rc;

    if (!txn || !version || !delta)
        return -EINVAL;
    rc = twin_get(txn, id, id_len, &doc, err);
    if (rc)
        return rc;
    *version = doc.version;
    *delta = empty(&doc.delta) ? (msgpack_object){.type = MSGPACK_OBJECT_NIL} : doc.delta;
    return 0;
}
