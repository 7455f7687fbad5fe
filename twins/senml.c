/* senml.c: SenML (RFC 8428) JSON packs turned into a batch of timestamped readings, the form
 * twin_telemetry_apply takes ({"batch": [{"ts": ms, <path>: value}, ...]}). It resolves the
 * base fields (bn, bt, bv, bver), each record's name and time, and one value of v, vs, vb or vd;
 * it writes nothing and knows nothing of twins. Any thread.
 *
 * Names become paths under reported: what follows the last ':' of the resolved name (a device
 * URN such as "urn:dev:ow:10e2073a01080063:" names the device, which the topic already does),
 * with '/' and '.' separating levels: "urn:dev:mac:0024befffe804ff1:temp" is reported.temp,
 * "3303/0/5700" is reported.3303.0.5700. Units (u, bu), sums (s, bs) and update times (ut) are
 * not kept; a field ending in '_' (must-understand, RFC 8428 section 4.4) is refused.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>

#define T_RELATIVE 268435456.0 /* 2^28 s: times below it are relative to now (section 4.5.3) */

struct base {
    char name[TWIN_PATH_MAX + 1];
    size_t name_len;
    double time, value;
    bool has_value;
};

/* A finite number: SenML's values and times. */
static bool num_of(const msgpack_object *v, double *out)
{
    return twins__number(v, out) && isfinite(*out);
}

/* name[0..len) as nested single-key maps around v: "a.b" -> {"a": {"b": v}}. */
static int nest(msgpack_zone *z, const char *name, size_t len, const msgpack_object *v,
                msgpack_object *out, uint32_t rec, char *err)
{
    size_t start, end;
    msgpack_object cur = *v;

    /* the part after the last ':' */
    for (size_t i = len; i > 0; i--)
        if (name[i - 1] == ':') {
            name += i;
            len -= i;
            break;
        }
    if (len == 0) {
        twins__errf(err,
                    "record %" PRIu32 ": the name ends with ':' (no field name after the "
                    "device's)",
                    rec);
        return -EINVAL;
    }
    start = end = len;
    /* from the last segment outwards */
    while (end > 0) {
        start = end;
        while (start > 0 && name[start - 1] != '/' && name[start - 1] != '.')
            start--;
        size_t n = end - start;
        if (n == 0 || n > TWIN_KEY_MAX) {
            twins__errf(err,
                        "record %" PRIu32 ": name '%.*s' has an empty or too long part "
                        "(1..%d bytes between '/' or '.')",
                        rec, (int)len, name, TWIN_KEY_MAX);
            return -EINVAL;
        }
        msgpack_object_kv *kv = msgpack_zone_malloc(z, sizeof *kv);
        if (!kv) {
            twins__errf(err, "out of memory");
            return -ENOMEM;
        }
        kv->key.type = MSGPACK_OBJECT_STR;
        kv->key.via.str.ptr = name + start;
        kv->key.via.str.size = (uint32_t)n;
        kv->val = cur;
        cur.type = MSGPACK_OBJECT_MAP;
        cur.via.map.size = 1;
        cur.via.map.ptr = kv;
        end = start ? start - 1 : 0;
        if (start == 0)
            break;
    }
    *out = cur;
    return 0;
}

static bool key_is(const msgpack_object *k, const char *s)
{
    return twins__key_is(k, s, strlen(s));
}

/* One record into out[0] = {"ts": ms, <path>: value}; base fields update b. */
static int record(msgpack_zone *z, const msgpack_object *r, uint32_t i, struct base *b,
                  int64_t now_ms, msgpack_object *out, char *err)
{
    const msgpack_object *n = NULL, *t = NULL, *vnum = NULL, *vother = NULL;
    double d = 0;
    int values = 0;

    if (r->type != MSGPACK_OBJECT_MAP) {
        twins__errf(err, "record %" PRIu32 " must be an object, got %s", i,
                    check__type_name(r->type));
        return -EINVAL;
    }
    for (uint32_t j = 0; j < r->via.map.size; j++) {
        const msgpack_object *k = &r->via.map.ptr[j].key, *v = &r->via.map.ptr[j].val;
        size_t kl = k->via.str.size;

        if (k->type != MSGPACK_OBJECT_STR)
            continue; /* JSON keys are strings */
        if (key_is(k, "bn")) {
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > TWIN_PATH_MAX) {
                twins__errf(err, "record %" PRIu32 ": bn must be a string of at most %d bytes", i,
                            TWIN_PATH_MAX);
                return -EINVAL;
            }
            memcpy(b->name, v->via.str.ptr, v->via.str.size);
            b->name_len = v->via.str.size;
        } else if (key_is(k, "bt")) {
            if (!num_of(v, &b->time)) {
                twins__errf(err, "record %" PRIu32 ": bt must be a number (seconds)", i);
                return -EINVAL;
            }
        } else if (key_is(k, "bv")) {
            if (!num_of(v, &b->value)) {
                twins__errf(err, "record %" PRIu32 ": bv must be a number", i);
                return -EINVAL;
            }
            b->has_value = true;
        } else if (key_is(k, "bver")) {
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > 10) {
                twins__errf(err,
                            "record %" PRIu32 ": bver %s is not a SenML version this hub "
                            "reads (up to 10)",
                            i, check__type_name(v->type));
                return -EINVAL;
            }
        } else if (key_is(k, "n")) {
            n = v;
        } else if (key_is(k, "t")) {
            t = v;
        } else if (key_is(k, "v")) {
            if (!num_of(v, &d)) {
                twins__errf(err, "record %" PRIu32 ": v must be a finite number, got %s", i,
                            check__type_name(v->type));
                return -EINVAL;
            }
            vnum = v;
            values++;
        } else if (key_is(k, "vs") || key_is(k, "vb") || key_is(k, "vd")) {
            if ((key_is(k, "vb") && v->type != MSGPACK_OBJECT_BOOLEAN) ||
                (!key_is(k, "vb") && v->type != MSGPACK_OBJECT_STR)) {
                twins__errf(err, "record %" PRIu32 ": %.*s must be a %s, got %s", i, (int)kl,
                            k->via.str.ptr, key_is(k, "vb") ? "boolean" : "string",
                            check__type_name(v->type));
                return -EINVAL;
            }
            vother = v;
            values++;
        } else if (kl && k->via.str.ptr[kl - 1] == '_') {
            twins__errf(err,
                        "record %" PRIu32 ": field '%.*s' must be understood, and this "
                        "hub does not know it",
                        i, (int)(kl > 64 ? 64 : kl), k->via.str.ptr);
            return -EINVAL;
        }
        /* u, bu, s, bs, ut and other fields: not kept */
    }
    if (values > 1 || (values == 0 && !b->has_value)) {
        twins__errf(err, "record %" PRIu32 ": %s", i,
                    values ? "more than one of v, vs, vb, vd" : "no value (v, vs, vb or vd)");
        return -EINVAL;
    }
    /* the name: bn + n, 1..TWIN_PATH_MAX bytes */
    char name[2 * TWIN_PATH_MAX + 2];
    size_t len = b->name_len;
    memcpy(name, b->name, len);
    if (n) {
        if (n->type != MSGPACK_OBJECT_STR || len + n->via.str.size > TWIN_PATH_MAX) {
            twins__errf(err, "record %" PRIu32 ": n must be a string; bn + n at most %d bytes", i,
                        TWIN_PATH_MAX);
            return -EINVAL;
        }
        memcpy(name + len, n->via.str.ptr, n->via.str.size);
        len += n->via.str.size;
    }
    if (len == 0) {
        twins__errf(err, "record %" PRIu32 ": no name (n, or bn)", i);
        return -EINVAL;
    }
    char *stored = msgpack_zone_malloc(z, len);
    if (!stored) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    memcpy(stored, name, len);
    /* the time: bt + t, seconds; below 2^28 it counts from now */
    double secs = b->time, tt = 0;
    if (t && !num_of(t, &tt)) {
        twins__errf(err, "record %" PRIu32 ": t must be a number (seconds)", i);
        return -EINVAL;
    }
    secs += tt;
    double ms = secs < T_RELATIVE ? (double)now_ms + secs * 1000.0 : secs * 1000.0;
    if (!(ms >= 0) || ms > (double)TWIN_TS_MAX) {
        twins__errf(err, "record %" PRIu32 ": time %.3f s is before 1970 or too far ahead", i,
                    secs);
        return -EINVAL;
    }
    msgpack_object value;
    if (vother) {
        value = *vother;
    } else { /* v, or bv alone, plus bv (section 4.5.2) */
        value.type = MSGPACK_OBJECT_FLOAT64;
        value.via.f64 = (vnum ? d : 0) + (b->has_value ? b->value : 0);
        if (!isfinite(value.via.f64)) {
            twins__errf(err, "record %" PRIu32 ": v + bv is not a finite number", i);
            return -EINVAL;
        }
    }
    msgpack_object nested;
    int rc = nest(z, stored, len, &value, &nested, i, err);
    if (rc)
        return rc;
    /* {"ts": ms, <the nested path's first key>: ...} */
    msgpack_object_kv *kv = msgpack_zone_malloc(z, 2 * sizeof *kv);
    if (!kv) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    kv[0].key.type = MSGPACK_OBJECT_STR;
    kv[0].key.via.str.ptr = "ts";
    kv[0].key.via.str.size = 2;
    kv[0].val.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    kv[0].val.via.u64 = (uint64_t)llround(ms);
    kv[1] = nested.via.map.ptr[0];
    out->type = MSGPACK_OBJECT_MAP;
    out->via.map.size = 2;
    out->via.map.ptr = kv;
    return 0;
}

int twin_senml_decode(const void *buf, size_t len, const struct twin_limits *lim, int64_t now_ms,
                      msgpack_zone *zone, msgpack_object *out, char *err)
{
    static const struct twin_limits defaults = TWIN_LIMITS_DEFAULT;
    const unsigned char *mp;
    size_t mp_len, off = 0;
    msgpack_object pack;
    struct base b = {0};
    int rc;

    if (!buf || !zone || !out)
        return -EINVAL;
    if (!lim)
        lim = &defaults;
    if (len > lim->max_payload) {
        twins__errf(err, "payload of %zu bytes is over limits.max_payload (%zu)", len,
                    lim->max_payload);
        return -E2BIG;
    }
    rc = json__to_msgpack(buf, len, lim, true, zone, &mp, &mp_len, err);
    if (rc)
        return rc;
    if (msgpack_unpack((const char *)mp, mp_len, &off, zone, &pack) != MSGPACK_UNPACK_SUCCESS) {
        twins__errf(err, "out of memory decoding the SenML pack");
        return -ENOMEM;
    }
    if (pack.type != MSGPACK_OBJECT_ARRAY || pack.via.array.size == 0) {
        twins__errf(err, "a SenML pack is a JSON array of records, and not an empty one");
        return -EINVAL;
    }
    msgpack_object *readings = msgpack_zone_malloc(zone, pack.via.array.size * sizeof *readings);
    msgpack_object_kv *top = msgpack_zone_malloc(zone, sizeof *top);
    if (!readings || !top) {
        twins__errf(err, "out of memory");
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < pack.via.array.size; i++) {
        rc = record(zone, &pack.via.array.ptr[i], i, &b, now_ms, &readings[i], err);
        if (rc)
            return rc;
    }
    top->key.type = MSGPACK_OBJECT_STR;
    top->key.via.str.ptr = "batch";
    top->key.via.str.size = 5;
    top->val.type = MSGPACK_OBJECT_ARRAY;
    top->val.via.array.size = pack.via.array.size;
    top->val.via.array.ptr = readings;
    out->type = MSGPACK_OBJECT_MAP;
    out->via.map.size = 1;
    out->via.map.ptr = top;
    return 0;
}
