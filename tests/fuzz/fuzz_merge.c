/* fuzz_merge.c: RFC 7396 merge on msgpack values (twins/merge.c) and value equality
 * (twins/value.c), on any two (or three) values a device or service could send.
 *
 * Input: TARGET 0xc1 PATCH [0xc1 META], each msgpack or a JSON object, decoded with
 * twin_input_decode. Without META, the meta tree is the one a first merge of TARGET would make.
 * Invariants:
 *   - merging is idempotent: merging PATCH into the result again, with the meta it produced and
 *     the same ts, gives an equal value and an equal meta; with a later ts, an equal value;
 *   - RFC 7396 at the top level (when both are maps with string keys and TARGET has no key
 *     twice): for the last occurrence of each key of PATCH, nil removes it from the result and
 *     from meta, a map leaves a map, anything else is in the result as it is in PATCH with meta
 *     `ts`; every other key of TARGET is unchanged, and so is its meta; a PATCH that is not a map
 *     replaces everything and meta becomes `ts`;
 *   - where no key is given twice and there is no NaN, twin_merge equals a reference merge
 *     written here from RFC 7396 (value and meta, at every depth);
 *   - twin_value_equal is reflexive and symmetric on values without NaN and without a key
 *     given twice (both are known not to hold there; see tests/fuzz/README.md);
 *   - twin_value_path agrees with twin_value_get for single-segment paths;
 *   - twin_json_write of the result and of its meta is valid JSON.
 */
#include "fuzz.h"
#include "twins.h"

#include <errno.h>
#include <string.h>

#define TS0 1000
#define TS1 1700000000000LL

static const struct twin_limits lim = {4096, 16, 64};

/* True when o holds no NaN and no map with a key given twice (keys compared as
 * twin_value_equal compares them): where twin_value_equal is an equivalence. */
static bool tame(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return o->via.f64 == o->via.f64;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (!tame(&o->via.array.ptr[i]))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (!tame(&o->via.map.ptr[i].key) || !tame(&o->via.map.ptr[i].val))
                return false;
            for (uint32_t j = 0; j < i; j++)
                if (twin_value_equal(&o->via.map.ptr[i].key, &o->via.map.ptr[j].key))
                    return false;
        }
        return true;
    default:
        return true;
    }
}

static bool string_keys(const msgpack_object *m)
{
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (m->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
            return false;
    return true;
}

/* The value of the last occurrence of string key k in map m, or NULL. */
static const msgpack_object *last_get(const msgpack_object *m, const msgpack_object *k)
{
    const msgpack_object *v = NULL;

    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (m->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR &&
            m->via.map.ptr[i].key.via.str.size == k->via.str.size &&
            (k->via.str.size == 0 ||
             memcmp(m->via.map.ptr[i].key.via.str.ptr, k->via.str.ptr, k->via.str.size) == 0))
            v = &m->via.map.ptr[i].val;
    return v;
}

static bool is_ts(const msgpack_object *o, int64_t ts)
{
    return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == (uint64_t)ts;
}

static void check_json(const msgpack_object *o)
{
    msgpack_sbuffer sb;

    msgpack_sbuffer_init(&sb);
    FUZZ_CHECK(twin_json_write(o, &sb) == 0, "twin_json_write");
    FUZZ_CHECK(fuzz_json_valid(sb.data, sb.size), "invalid JSON: %.*s",
               (int)(sb.size < 400 ? sb.size : 400), sb.data ? sb.data : "");
    msgpack_sbuffer_destroy(&sb);
}

/* ---------------------------------------------------------------------------------------------
 * A reference merge, written from RFC 7396 and the meta rules in twins.h, for values where keys
 * are unique (tame): the result must equal twin_merge's at every depth.
 * ------------------------------------------------------------------------------------------ */

static const msgpack_object *ref_find(const msgpack_object_kv *kv, uint32_t n,
                                      const msgpack_object *k, uint32_t *at)
{
    for (uint32_t i = 0; i < n; i++)
        if (twin_value_equal(&kv[i].key, k)) {
            *at = i;
            return &kv[i].val;
        }
    return NULL;
}

static void ref_remove(msgpack_object_kv *kv, uint32_t *n, uint32_t at)
{
    memmove(kv + at, kv + at + 1, (*n - at - 1) * sizeof *kv);
    (*n)--;
}

/* t, m: NULL when absent. */
static void ref_merge(msgpack_zone *z, const msgpack_object *t, const msgpack_object *p,
                      const msgpack_object *m, msgpack_object *r, msgpack_object *rm)
{
    const msgpack_object_map *pm = &p->via.map;
    uint32_t nt = t && t->type == MSGPACK_OBJECT_MAP ? t->via.map.size : 0;
    uint32_t nm = m && m->type == MSGPACK_OBJECT_MAP ? m->via.map.size : 0;
    msgpack_object_kv *kv, *mkv;

    if (p->type != MSGPACK_OBJECT_MAP) {
        *r = *p;
        rm->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        rm->via.u64 = TS1;
        return;
    }
    kv = msgpack_zone_malloc(z, (nt + pm->size + 1) * sizeof *kv);
    mkv = msgpack_zone_malloc(z, (nm + pm->size + 1) * sizeof *mkv);
    FUZZ_CHECK(kv && mkv, "out of memory");
    if (nt)
        memcpy(kv, t->via.map.ptr, nt * sizeof *kv);
    if (nm)
        memcpy(mkv, m->via.map.ptr, nm * sizeof *mkv);
    for (uint32_t i = 0; i < pm->size; i++) {
        const msgpack_object *k = &pm->ptr[i].key, *v = &pm->ptr[i].val;
        uint32_t ti = 0, mi = 0;
        const msgpack_object *old = ref_find(kv, nt, k, &ti), *oldm = ref_find(mkv, nm, k, &mi);
        msgpack_object nv, nmv;

        if (v->type == MSGPACK_OBJECT_NIL) {
            if (old)
                ref_remove(kv, &nt, ti);
            if (oldm)
                ref_remove(mkv, &nm, mi);
            continue;
        }
        ref_merge(z, old, v, oldm, &nv, &nmv);
        if (old) {
            kv[ti].val = nv;
        } else {
            kv[nt].key = *k;
            kv[nt++].val = nv;
        }
        if (oldm) {
            mkv[mi].val = nmv;
        } else {
            mkv[nm].key = *k;
            mkv[nm++].val = nmv;
        }
    }
    r->type = rm->type = MSGPACK_OBJECT_MAP;
    r->via.map.ptr = kv;
    r->via.map.size = nt;
    rm->via.map.ptr = mkv;
    rm->via.map.size = nm;
}

/* RFC 7396 at the top level of r = merge(t, p) with meta m -> rm. */
static void check_top(const msgpack_object *t, const msgpack_object *p, const msgpack_object *m,
                      const msgpack_object *r, const msgpack_object *rm)
{
    if (p->type != MSGPACK_OBJECT_MAP) {
        FUZZ_CHECK(!tame(p) || twin_value_equal(r, p), "a leaf patch is not the result");
        FUZZ_CHECK(is_ts(rm, TS1), "a leaf patch: meta is not ts");
        return;
    }
    FUZZ_CHECK(r->type == MSGPACK_OBJECT_MAP, "a map patch gave type %d", r->type);
    if (t->type != MSGPACK_OBJECT_MAP || !string_keys(t) || !string_keys(p) || !tame(t))
        return;
    for (uint32_t i = 0; i < p->via.map.size; i++) {
        const msgpack_object *k = &p->via.map.ptr[i].key;
        const msgpack_object *v = last_get(p, k);
        const msgpack_object *got = twin_value_get(r, k->via.str.ptr, k->via.str.size);
        const msgpack_object *mg = twin_value_get(rm, k->via.str.ptr, k->via.str.size);

        if (v->type == MSGPACK_OBJECT_NIL) {
            FUZZ_CHECK(!got, "key %.*s deleted by the patch is still there", (int)k->via.str.size,
                       k->via.str.ptr);
            if (m->type == MSGPACK_OBJECT_MAP && tame(m))
                FUZZ_CHECK(!mg, "meta of deleted key %.*s is still there", (int)k->via.str.size,
                           k->via.str.ptr);
        } else if (v->type == MSGPACK_OBJECT_MAP) {
            FUZZ_CHECK(got && got->type == MSGPACK_OBJECT_MAP, "key %.*s is not a map",
                       (int)k->via.str.size, k->via.str.ptr);
        } else {
            FUZZ_CHECK(got, "key %.*s written by the patch is missing", (int)k->via.str.size,
                       k->via.str.ptr);
            FUZZ_CHECK(!tame(v) || twin_value_equal(got, v), "key %.*s differs from the patch",
                       (int)k->via.str.size, k->via.str.ptr);
            FUZZ_CHECK(is_ts(mg, TS1), "meta of key %.*s is not ts", (int)k->via.str.size,
                       k->via.str.ptr);
        }
        if (k->via.str.size && !memchr(k->via.str.ptr, '.', k->via.str.size))
            FUZZ_CHECK(twin_value_path(r, k->via.str.ptr, k->via.str.size) == got,
                       "twin_value_path and twin_value_get disagree");
    }
    for (uint32_t i = 0; i < t->via.map.size; i++) {
        const msgpack_object *k = &t->via.map.ptr[i].key;
        const msgpack_object *got;

        if (last_get(p, k))
            continue;
        got = twin_value_get(r, k->via.str.ptr, k->via.str.size);
        FUZZ_CHECK(got && twin_value_equal(got, &t->via.map.ptr[i].val),
                   "key %.*s not in the patch changed", (int)k->via.str.size, k->via.str.ptr);
        if (m->type == MSGPACK_OBJECT_MAP && tame(m)) {
            const msgpack_object *was = twin_value_get(m, k->via.str.ptr, k->via.str.size);
            const msgpack_object *now = twin_value_get(rm, k->via.str.ptr, k->via.str.size);

            FUZZ_CHECK((!was && !now) || (was && now && twin_value_equal(was, now)),
                       "meta of key %.*s not in the patch changed", (int)k->via.str.size,
                       k->via.str.ptr);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_part parts[3];
    size_t np = fuzz_split(data, size, parts, 3);
    msgpack_object t, p, m, r, rm, r2, rm2, r3, rm3;
    msgpack_zone zone;
    char err[TWIN_ERR_LEN];
    int rc;

    if (np < 2)
        return 0;
    msgpack_zone_init(&zone, 4096);
    if (twin_input_decode(parts[0].p, parts[0].n, &lim, &zone, &t, err) ||
        twin_input_decode(parts[1].p, parts[1].n, &lim, &zone, &p, err))
        goto done;
    if (np == 3) {
        if (twin_input_decode(parts[2].p, parts[2].n, &lim, &zone, &m, err))
            goto done;
    } else {
        msgpack_object nil = {.type = MSGPACK_OBJECT_NIL}, first;

        rc = twin_merge(&zone, &nil, &t, &nil, TS0, &first, &m, NULL, NULL);
        FUZZ_CHECK(rc == 0, "twin_merge: %d", rc);
        FUZZ_CHECK(!tame(&t) || twin_value_equal(&first, &t) || t.type == MSGPACK_OBJECT_MAP,
                   "a leaf merged into nothing changed");
    }

    /* the values as given */
    if (tame(&t) && tame(&p)) {
        FUZZ_CHECK(twin_value_equal(&t, &t) && twin_value_equal(&p, &p), "not reflexive");
        FUZZ_CHECK(twin_value_equal(&t, &p) == twin_value_equal(&p, &t), "not symmetric");
    }

    rc = twin_merge(&zone, &t, &p, &m, TS1, &r, &rm, NULL, NULL);
    FUZZ_CHECK(rc == 0, "twin_merge: %d", rc);
    check_top(&t, &p, &m, &r, &rm);
    if (tame(&t) && tame(&p) && tame(&m)) {
        msgpack_object er, erm;

        ref_merge(&zone, &t, &p, &m, &er, &erm);
        FUZZ_CHECK(twin_value_equal(&r, &er), "twin_merge differs from the reference merge");
        FUZZ_CHECK(twin_value_equal(&rm, &erm), "meta differs from the reference merge's");
    }
    check_json(&r);
    check_json(&rm);

    /* A target with a key twice is not a document the merge could have made (it keeps keys
     * unique), and it loses one copy per merge: idempotence is for the others. */
    rc = twin_merge(&zone, &r, &p, &rm, TS1, &r2, &rm2, NULL, NULL);
    FUZZ_CHECK(rc == 0, "twin_merge again: %d", rc);
    if (!tame(&t) || !tame(&m))
        goto done;
    if (tame(&r) && tame(&r2))
        FUZZ_CHECK(twin_value_equal(&r, &r2), "merging the patch twice changed the value");
    if (tame(&rm) && tame(&rm2))
        FUZZ_CHECK(twin_value_equal(&rm, &rm2), "merging the patch twice changed the meta");

    rc = twin_merge(&zone, &r, &p, &rm, TS1 + 1, &r3, &rm3, NULL, NULL);
    FUZZ_CHECK(rc == 0, "twin_merge later: %d", rc);
    if (tame(&r) && tame(&r3))
        FUZZ_CHECK(twin_value_equal(&r, &r3), "merging the patch again later changed the value");

    /* without meta: the same value */
    rc = twin_merge(&zone, &t, &p, NULL, TS1, &r3, NULL, NULL, NULL);
    FUZZ_CHECK(rc == 0, "twin_merge without meta: %d", rc);
    if (tame(&r) && tame(&r3))
        FUZZ_CHECK(twin_value_equal(&r, &r3), "meta changed the merged value");
done:
    msgpack_zone_destroy(&zone);
    return 0;
}
