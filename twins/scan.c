/* scan.c: the gate for outside payloads. Walks msgpack bytes without allocating and proves they
 * are exactly one well-formed object within the limits before msgpack-c sees them (its unpacker
 * allocates count x 24 bytes per header before reading an element, reports its nesting limit
 * as "no memory" and accepts trailing bytes). Then decodes them. JSON text is converted to
 * msgpack by json.c first; building twin documents is doc.c's business.
 */
#include "twins_int.h"

#include <errno.h>
#include <limits.h>

static uint64_t be_read(const unsigned char *p, size_t n)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Fixed part of the formats 0xc0..0xdf: name, kind, and how many bytes follow the tag as a
 * length (str, bin, ext, containers) or as the value itself (ints, floats, fixext body). */
struct fmt {
    const char *name;
    enum scan_kind kind;
    unsigned char lenbytes; /* big-endian length field after the tag */
    unsigned char fixed;    /* bytes of value after the tag (ints, floats), or fixext body */
};

static const struct fmt formats[32] = {
    [0x00] = {"nil", SCAN_NIL, 0, 0},       [0x01] = {NULL, SCAN_NIL, 0, 0},
    [0x02] = {"false", SCAN_BOOL, 0, 0},    [0x03] = {"true", SCAN_BOOL, 0, 0},
    [0x04] = {"bin8", SCAN_BIN, 1, 0},      [0x05] = {"bin16", SCAN_BIN, 2, 0},
    [0x06] = {"bin32", SCAN_BIN, 4, 0},     [0x07] = {"ext8", SCAN_EXT, 1, 0},
    [0x08] = {"ext16", SCAN_EXT, 2, 0},     [0x09] = {"ext32", SCAN_EXT, 4, 0},
    [0x0a] = {"float32", SCAN_FLOAT, 0, 4}, [0x0b] = {"float64", SCAN_FLOAT, 0, 8},
    [0x0c] = {"uint8", SCAN_UINT, 0, 1},    [0x0d] = {"uint16", SCAN_UINT, 0, 2},
    [0x0e] = {"uint32", SCAN_UINT, 0, 4},   [0x0f] = {"uint64", SCAN_UINT, 0, 8},
    [0x10] = {"int8", SCAN_INT, 0, 1},      [0x11] = {"int16", SCAN_INT, 0, 2},
    [0x12] = {"int32", SCAN_INT, 0, 4},     [0x13] = {"int64", SCAN_INT, 0, 8},
    [0x14] = {"fixext1", SCAN_EXT, 0, 1},   [0x15] = {"fixext2", SCAN_EXT, 0, 2},
    [0x16] = {"fixext4", SCAN_EXT, 0, 4},   [0x17] = {"fixext8", SCAN_EXT, 0, 8},
    [0x18] = {"fixext16", SCAN_EXT, 0, 16}, [0x19] = {"str8", SCAN_STR, 1, 0},
    [0x1a] = {"str16", SCAN_STR, 2, 0},     [0x1b] = {"str32", SCAN_STR, 4, 0},
    [0x1c] = {"array16", SCAN_ARRAY, 2, 0}, [0x1d] = {"array32", SCAN_ARRAY, 4, 0},
    [0x1e] = {"map16", SCAN_MAP, 2, 0},     [0x1f] = {"map32", SCAN_MAP, 4, 0},
};

int scan__head(const unsigned char *p, size_t len, size_t off, struct scan_head *h, char *err)
{
    unsigned b;
    size_t rem;

    if (off >= len) {
        twins__errf(err, "truncated input: an object expected at offset %zu", off);
        return -EBADMSG;
    }
    b = p[off];
    rem = len - off;
    h->n = 0;
    h->u = 0;
    h->hdr = 1;
    if (b <= 0x7f) {
        h->kind = SCAN_UINT;
        h->name = "positive fixint";
        h->u = b;
        return 0;
    }
    if (b >= 0xe0) {
        h->kind = SCAN_INT;
        h->name = "negative fixint";
        h->u = (uint64_t)(int64_t)(int8_t)b;
        return 0;
    }
    if (b <= 0x8f) {
        h->kind = SCAN_MAP;
        h->name = "fixmap";
        h->n = b & 0x0f;
    } else if (b <= 0x9f) {
        h->kind = SCAN_ARRAY;
        h->name = "fixarray";
        h->n = b & 0x0f;
    } else if (b <= 0xbf) {
        h->kind = SCAN_STR;
        h->name = "fixstr";
        h->n = b & 0x1f;
    } else {
        const struct fmt *f = &formats[b - 0xc0];

        if (!f->name) {
            twins__errf(err, "invalid byte 0x%02x at offset %zu", b, off);
            return -EBADMSG;
        }
        h->kind = f->kind;
        h->name = f->name;
        h->hdr = 1 + (size_t)f->lenbytes + (f->kind == SCAN_EXT ? 1 : 0);
        if (f->kind == SCAN_EXT && !f->lenbytes)
            h->n = f->fixed; /* fixext: type byte, then a fixed body */
        else
            h->hdr += f->fixed;
        if (h->hdr > rem) {
            twins__errf(err, "truncated %s at offset %zu", h->name, off);
            return -EBADMSG;
        }
        if (f->lenbytes)
            h->n = be_read(p + off + 1, f->lenbytes);
        if (f->kind == SCAN_BOOL) {
            h->u = b & 1;
        } else if (f->kind == SCAN_UINT) {
            h->u = be_read(p + off + 1, f->fixed);
        } else if (f->kind == SCAN_INT) {
            uint64_t raw = be_read(p + off + 1, f->fixed);
            unsigned bits = 8u * f->fixed;
            int64_t v;

            /* sign-extend the two's complement value of `bits` bits */
            if (bits < 64 && (raw >> (bits - 1)) & 1)
                raw |= ~(uint64_t)0 << bits;
            memcpy(&v, &raw, sizeof v);
            h->u = raw;
            if (v >= 0)
                h->kind = SCAN_UINT;
        }
    }
    rem -= h->hdr;
    if (h->kind == SCAN_MAP || h->kind == SCAN_ARRAY) {
        /* every entry takes at least one byte: a count above what remains is a lie */
        uint64_t need = h->kind == SCAN_MAP ? 2 * h->n : h->n;

        if (need > rem) {
            twins__errf(err, "%s at offset %zu declares %llu entries, %zu bytes remain",
                        h->kind == SCAN_MAP ? "map" : "array", off, (unsigned long long)h->n, rem);
            return -EBADMSG;
        }
    } else if (h->n > rem) {
        twins__errf(err, "truncated %s at offset %zu (%llu bytes declared, %zu remain)", h->name,
                    off, (unsigned long long)h->n, rem);
        return -EBADMSG;
    }
    return 0;
}

int scan__object(const unsigned char *p, size_t len, unsigned max_depth, unsigned max_keys,
                 size_t *end, char *err)
{
    /* left[d]: objects still to read at nesting level d (level 0 holds the one top object) */
    uint64_t left[TWIN_DEPTH_CAP + 1];
    unsigned depth = 0;
    size_t off = 0;
    int rc;

    if (max_depth > TWIN_DEPTH_CAP)
        max_depth = TWIN_DEPTH_CAP;
    left[0] = 1;
    for (;;) {
        struct scan_head h;

        while (left[depth] == 0) {
            if (depth == 0) {
                *end = off;
                return 0;
            }
            depth--;
        }
        left[depth]--;
        rc = scan__head(p, len, off, &h, err);
        if (rc)
            return rc;
        if (h.kind != SCAN_MAP && h.kind != SCAN_ARRAY) {
            off += h.hdr + h.n;
            continue;
        }
        /* msgpack-c counts empty containers against its nesting limit too */
        if (depth + 1 > max_depth) {
            twins__errf(err, "nesting deeper than %u at offset %zu", max_depth, off);
            return -ELOOP;
        }
        if (h.n > max_keys) {
            twins__errf(err, "%s at offset %zu has %llu entries, the limit is %u",
                        h.kind == SCAN_MAP ? "map" : "array", off, (unsigned long long)h.n,
                        max_keys);
            return -E2BIG;
        }
        off += h.hdr;
        if (h.n)
            left[++depth] = h.kind == SCAN_MAP ? 2 * h.n : h.n;
    }
}

int scan__skip(const unsigned char *p, size_t len, size_t *off)
{
    /* bounded by the bytes: every pending object needs one, so no depth limit is needed */
    uint64_t pending = 1;
    size_t o = *off;

    while (pending) {
        struct scan_head h;
        int rc = scan__head(p, len, o, &h, NULL);

        if (rc)
            return rc;
        pending--;
        if (h.kind == SCAN_MAP || h.kind == SCAN_ARRAY) {
            pending += h.kind == SCAN_MAP ? 2 * h.n : h.n;
            o += h.hdr;
        } else {
            o += h.hdr + h.n;
        }
    }
    *off = o;
    return 0;
}

int twin_input_scan(const void *buf, size_t len, const struct twin_limits *lim, char *err)
{
    static const struct twin_limits defaults = TWIN_LIMITS_DEFAULT;
    size_t end;
    int rc;

    if (!lim)
        lim = &defaults;
    if (len == 0 || !buf) {
        twins__errf(err, "empty payload");
        return -EBADMSG;
    }
    if (len > lim->max_payload) {
        twins__errf(err, "payload of %zu bytes is over limits.max_payload (%zu)", len,
                    lim->max_payload);
        return -E2BIG;
    }
    rc = scan__object(buf, len, lim->max_depth, lim->max_keys, &end, err);
    if (rc)
        return rc;
    if (end != len) {
        twins__errf(err, "%zu trailing byte%s after the object at offset %zu", len - end,
                    len - end == 1 ? "" : "s", end);
        return -EBADMSG;
    }
    return 0;
}

int twin_input_decode(const void *buf, size_t len, const struct twin_limits *lim,
                      msgpack_zone *zone, msgpack_object *out, char *err)
{
    static const struct twin_limits defaults = TWIN_LIMITS_DEFAULT;
    const unsigned char *p = buf;
    msgpack_unpack_return ur;
    size_t i = 0, off = 0;
    int rc;

    if (!zone || !out) {
        twins__errf(err, "twin_input_decode: no zone or no output");
        return -EINVAL;
    }
    if (!lim)
        lim = &defaults;
    if (len > lim->max_payload) {
        twins__errf(err, "payload of %zu bytes is over limits.max_payload (%zu)", len,
                    lim->max_payload);
        return -E2BIG;
    }
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    if (i < len && p[i] == '{') {
        /* the converted bytes may outgrow max_payload (3 bytes of JSON can make a 9-byte
         * float); the raw payload was the one to bound */
        struct twin_limits mp = {SIZE_MAX, lim->max_depth, lim->max_keys};

        rc = json__to_msgpack(p, len, lim, false, zone, &p, &len, err);
        if (rc)
            return rc;
        rc = twin_input_scan(p, len, &mp, err);
    } else {
        rc = twin_input_scan(p, len, lim, err);
    }
    if (rc)
        return rc;
    /* msgpack_unpack references p for strings, bins and exts: out lives as long as p */
    ur = msgpack_unpack((const char *)p, len, &off, zone, out);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        twins__errf(err, "out of memory decoding %zu bytes of msgpack", len);
        return -ENOMEM;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        twins__errf(err, "msgpack-c rejected the payload (code %d, offset %zu of %zu)", (int)ur,
                    off, len);
        return -EBADMSG;
    }
    return 0;
}
