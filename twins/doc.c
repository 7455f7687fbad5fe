/* doc.c: the twin document's stored form. Encodes a struct twin_doc as the msgpack map
 * {id, version, reported, desired, delta?, predicted?, meta: {reported, desired}, connected,
 * last_seen, seq?, boot?, seq_restart?, gaps?, stale?, created}, decodes it back, and reads its version without decoding. It
 * does not know where documents are kept (store.c) or how they change (telemetry.c, merge.c). Any
 * thread.
 */
#include "twins_int.h"

#include <errno.h>
#include <limits.h>

/* ---------------------------------------------------------------------------------------------
 * Encode
 * ------------------------------------------------------------------------------------------ */

static bool map_or_nil(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_MAP || o->type == MSGPACK_OBJECT_NIL;
}

static bool nonempty_map(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_MAP && o->via.map.size > 0;
}

static int pack_key(msgpack_packer *pk, const char *k)
{
    size_t n = strlen(k);

    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, k, n);
}

/* A map, or an empty map for nil. */
static int pack_map(msgpack_packer *pk, const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_NIL)
        return msgpack_pack_map(pk, 0);
    return msgpack_pack_object(pk, *o);
}

/* A boot id: absent (nil), an integer, or a string of 1..TWIN_BOOT_MAX bytes. */
static bool boot_ok(const msgpack_object *b)
{
    return b->type == MSGPACK_OBJECT_NIL || b->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
           b->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
           (b->type == MSGPACK_OBJECT_STR && b->via.str.size >= 1 &&
            b->via.str.size <= TWIN_BOOT_MAX);
}

static int pack_int(msgpack_packer *pk, int64_t v)
{
    return v >= 0 ? msgpack_pack_uint64(pk, (uint64_t)v) : msgpack_pack_int64(pk, v);
}

int twin_doc_encode(const struct twin_doc *doc, msgpack_sbuffer *out)
{
    msgpack_packer pk;
    bool delta, predicted;
    size_t n;
    int bad;

    if (!doc || !out || !doc->id || doc->id_len == 0 || doc->id_len > TWIN_ID_MAX)
        return -EINVAL;
    if (!map_or_nil(&doc->reported) || !map_or_nil(&doc->desired) || !map_or_nil(&doc->delta) ||
        !map_or_nil(&doc->predicted) || !map_or_nil(&doc->meta_reported) ||
        !map_or_nil(&doc->meta_desired))
        return -EINVAL;
    delta = nonempty_map(&doc->delta);
    predicted = nonempty_map(&doc->predicted);
    if (!boot_ok(&doc->boot))
        return -EINVAL;
    n = 8 + (size_t)delta + (size_t)predicted + (size_t)doc->has_seq + (doc->gaps.count > 0) +
        (doc->boot.type != MSGPACK_OBJECT_NIL) + (size_t)doc->seq_restart + (doc->stale.count > 0);
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    bad = msgpack_pack_map(&pk, n);
    bad = bad || pack_key(&pk, "id") || msgpack_pack_str(&pk, doc->id_len) ||
          msgpack_pack_str_body(&pk, doc->id, doc->id_len);
    bad = bad || pack_key(&pk, "version") || msgpack_pack_uint64(&pk, doc->version);
    bad = bad || pack_key(&pk, "reported") || pack_map(&pk, &doc->reported);
    bad = bad || pack_key(&pk, "desired") || pack_map(&pk, &doc->desired);
    if (delta)
        bad = bad || pack_key(&pk, "delta") || pack_map(&pk, &doc->delta);
    if (predicted)
        bad = bad || pack_key(&pk, "predicted") || pack_map(&pk, &doc->predicted);
    bad = bad || pack_key(&pk, "meta") || msgpack_pack_map(&pk, 2);
    bad = bad || pack_key(&pk, "reported") || pack_map(&pk, &doc->meta_reported);
    bad = bad || pack_key(&pk, "desired") || pack_map(&pk, &doc->meta_desired);
    bad = bad || pack_key(&pk, "connected") ||
          (doc->connected ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    bad = bad || pack_key(&pk, "last_seen") || pack_int(&pk, doc->last_seen);
    if (doc->has_seq)
        bad = bad || pack_key(&pk, "seq") || msgpack_pack_uint64(&pk, doc->seq);
    if (doc->boot.type != MSGPACK_OBJECT_NIL)
        bad = bad || pack_key(&pk, "boot") || msgpack_pack_object(&pk, doc->boot);
    if (doc->seq_restart)
        bad = bad || pack_key(&pk, "seq_restart") || msgpack_pack_true(&pk);
    if (doc->gaps.count > 0) {
        const struct twin_gaps *g = &doc->gaps;
        bad = bad || pack_key(&pk, "gaps") || msgpack_pack_map(&pk, 5);
        bad = bad || pack_key(&pk, "count") || msgpack_pack_uint64(&pk, g->count);
        bad = bad || pack_key(&pk, "missed") || msgpack_pack_uint64(&pk, g->missed);
        bad = bad || pack_key(&pk, "from") || msgpack_pack_uint64(&pk, g->from);
        bad = bad || pack_key(&pk, "to") || msgpack_pack_uint64(&pk, g->to);
        bad = bad || pack_key(&pk, "ts") || pack_int(&pk, g->ts);
    }
    if (doc->stale.count > 0) {
        const struct twin_stale *st = &doc->stale;
        bad = bad || pack_key(&pk, "stale") || msgpack_pack_map(&pk, 4);
        bad = bad || pack_key(&pk, "count") || msgpack_pack_uint64(&pk, st->count);
        bad = bad || pack_key(&pk, "run") || msgpack_pack_uint64(&pk, st->run);
        bad = bad || pack_key(&pk, "seq") || msgpack_pack_uint64(&pk, st->seq);
        bad = bad || pack_key(&pk, "ts") || pack_int(&pk, st->ts);
    }
    bad = bad || pack_key(&pk, "created") || pack_int(&pk, doc->created);
    return bad ? -ENOMEM : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Decode
 * ------------------------------------------------------------------------------------------ */

static int bad_type(const char *key, const char *want, char *err)
{
    twins__errf(err, "stored document: '%s' must be %s", key, want);
    return -EBADMSG;
}

static int get_int(const msgpack_object *v, const char *key, int64_t *out, char *err)
{
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX) {
        *out = (int64_t)v->via.u64;
        return 0;
    }
    return bad_type(key, "an integer", err);
}

static int get_map(const msgpack_object *v, const char *key, msgpack_object *out, char *err)
{
    if (!map_or_nil(v))
        return bad_type(key, "a map", err);
    *out = *v;
    return 0;
}

static int decode_meta(const msgpack_object *m, struct twin_doc *doc, char *err)
{
    if (m->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (m->type != MSGPACK_OBJECT_MAP)
        return bad_type("meta", "a map", err);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        int rc = 0;

        if (twins__key_is(k, "reported", 8))
            rc = get_map(v, "meta.reported", &doc->meta_reported, err);
        else if (twins__key_is(k, "desired", 7))
            rc = get_map(v, "meta.desired", &doc->meta_desired, err);
        if (rc)
            return rc;
    }
    return 0;
}

#define KEY(lit) twins__key_is(k, lit, sizeof lit - 1)

static int get_uint(const msgpack_object *v, const char *key, uint64_t *out, char *err)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return bad_type(key, "an unsigned integer", err);
    *out = v->via.u64;
    return 0;
}

static int decode_gaps(const msgpack_object *m, struct twin_gaps *g, char *err)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return bad_type("gaps", "a map", err);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        int rc = 0;

        if (KEY("count"))
            rc = get_uint(v, "gaps.count", &g->count, err);
        else if (KEY("missed"))
            rc = get_uint(v, "gaps.missed", &g->missed, err);
        else if (KEY("from"))
            rc = get_uint(v, "gaps.from", &g->from, err);
        else if (KEY("to"))
            rc = get_uint(v, "gaps.to", &g->to, err);
        else if (KEY("ts"))
            rc = get_int(v, "gaps.ts", &g->ts, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int decode_stale(const msgpack_object *m, struct twin_stale *st, char *err)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return bad_type("stale", "a map", err);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        int rc = 0;

        if (KEY("count"))
            rc = get_uint(v, "stale.count", &st->count, err);
        else if (KEY("run"))
            rc = get_uint(v, "stale.run", &st->run, err);
        else if (KEY("seq"))
            rc = get_uint(v, "stale.seq", &st->seq, err);
        else if (KEY("ts"))
            rc = get_int(v, "stale.ts", &st->ts, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* One entry of a stored document's map into doc. Returns 0 or -EBADMSG. */
static int decode_entry(const msgpack_object *k, const msgpack_object *v, struct twin_doc *doc,
                        bool *has_id, bool *has_version, char *err)
{
    int rc;

    rc = 0;
    if (KEY("id")) {
        if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
            v->via.str.size > TWIN_ID_MAX)
            return bad_type("id", "a string of 1..128 bytes", err);
        doc->id = v->via.str.ptr;
        doc->id_len = v->via.str.size;
        *has_id = true;
    } else if (KEY("version")) {
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return bad_type("version", "an unsigned integer", err);
        doc->version = v->via.u64;
        *has_version = true;
    } else if (KEY("reported")) {
        rc = get_map(v, "reported", &doc->reported, err);
    } else if (KEY("desired")) {
        rc = get_map(v, "desired", &doc->desired, err);
    } else if (KEY("delta")) {
        rc = get_map(v, "delta", &doc->delta, err);
    } else if (KEY("predicted")) {
        rc = get_map(v, "predicted", &doc->predicted, err);
    } else if (KEY("meta")) {
        rc = decode_meta(v, doc, err);
    } else if (KEY("connected")) {
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return bad_type("connected", "a boolean", err);
        doc->connected = v->via.boolean;
    } else if (KEY("last_seen")) {
        rc = get_int(v, "last_seen", &doc->last_seen, err);
    } else if (KEY("created")) {
        rc = get_int(v, "created", &doc->created, err);
    } else if (KEY("seq")) {
        rc = get_uint(v, "seq", &doc->seq, err);
        doc->has_seq = rc == 0;
    } else if (KEY("gaps")) {
        rc = decode_gaps(v, &doc->gaps, err);
    } else if (KEY("boot")) {
        if (!boot_ok(v) || v->type == MSGPACK_OBJECT_NIL)
            return bad_type("boot", "an integer or a string of 1..32 bytes", err);
        doc->boot = *v;
    } else if (KEY("seq_restart")) {
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return bad_type("seq_restart", "a boolean", err);
        doc->seq_restart = v->via.boolean;
    } else if (KEY("stale")) {
        rc = decode_stale(v, &doc->stale, err);
    }
    /* unknown keys are skipped: a newer hub may have added some */
    return rc;
}

int twin_doc_decode(const void *buf, size_t len, msgpack_zone *zone, struct twin_doc *doc,
                    char *err)
{
    msgpack_object o;
    size_t end, off = 0;
    bool has_id = false, has_version = false;
    int rc;

    if (!buf || !zone || !doc)
        return -EINVAL;
    memset(doc, 0, sizeof *doc);
    doc->reported.type = doc->desired.type = doc->delta.type = doc->predicted.type =
        doc->meta_reported.type = doc->meta_desired.type = doc->boot.type = MSGPACK_OBJECT_NIL;
    /* stored bytes are ours, but a damaged file must not make msgpack-c allocate gigabytes */
    rc = scan__object(buf, len, TWIN_DEPTH_CAP, UINT_MAX, &end, err);
    if (rc) {
        if (err) {
            char why[TWIN_ERR_LEN];

            memcpy(why, err, sizeof why);
            why[sizeof why - 1] = '\0';
            twins__errf(err, "stored document: %s", why);
        }
        return -EBADMSG;
    }
    if (end != len) {
        twins__errf(err, "stored document: %zu trailing bytes", len - end);
        return -EBADMSG;
    }
    switch (msgpack_unpack(buf, len, &off, zone, &o)) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        twins__errf(err, "stored document: out of memory");
        return -ENOMEM;
    default:
        twins__errf(err, "stored document: msgpack-c rejected it");
        return -EBADMSG;
    }
    if (o.type != MSGPACK_OBJECT_MAP) {
        twins__errf(err, "stored document: not a map");
        return -EBADMSG;
    }
    for (uint32_t i = 0; i < o.via.map.size; i++) {
        rc = decode_entry(&o.via.map.ptr[i].key, &o.via.map.ptr[i].val, doc, &has_id,
                          &has_version, err);
        if (rc)
            return rc;
    }
    if (!has_id || !has_version) {
        twins__errf(err, "stored document: no '%s'", has_id ? "version" : "id");
        return -EBADMSG;
    }
    return 0;
}

int twin_doc_decode_parts(const void *buf, size_t len, unsigned parts, msgpack_zone *zone,
                          struct twin_doc *doc, char *err)
{
    static const struct {
        const char *name;
        unsigned part;
    } sections[] = {{"reported", TWIN_PART_REPORTED}, {"desired", TWIN_PART_DESIRED},
                    {"delta", TWIN_PART_DELTA},       {"predicted", TWIN_PART_PREDICTED},
                    {"meta", TWIN_PART_META}};
    const unsigned char *p = buf;
    struct scan_head h;
    bool has_id = false, has_version = false;
    size_t off;
    int rc;

    if (!buf || !zone || !doc)
        return -EINVAL;
    if ((parts & TWIN_PART_ALL) == TWIN_PART_ALL)
        return twin_doc_decode(buf, len, zone, doc, err);
    memset(doc, 0, sizeof *doc);
    doc->reported.type = doc->desired.type = doc->delta.type = doc->predicted.type =
        doc->meta_reported.type = doc->meta_desired.type = doc->boot.type = MSGPACK_OBJECT_NIL;
    /* the top-level map entry by entry: the sections not asked for are only skipped (bounds
     * checked by scan__head), each entry read is checked whole before msgpack-c sees it */
    if (scan__head(p, len, 0, &h, err) || h.kind != SCAN_MAP)
        goto bad;
    uint64_t n = h.n;
    off = h.hdr;
    for (uint64_t i = 0; i < n; i++) {
        size_t voff, vend;
        if (scan__head(p, len, off, &h, err))
            goto bad;
        bool str = h.kind == SCAN_STR;
        const char *kp = (const char *)p + off + h.hdr;
        size_t kn = (size_t)h.n;
        if (scan__skip(p, len, &off))
            goto bad;
        voff = off;
        bool want = str;
        for (size_t j = 0; str && j < sizeof sections / sizeof sections[0]; j++)
            if (strlen(sections[j].name) == kn && memcmp(sections[j].name, kp, kn) == 0)
                want = parts & sections[j].part;
        if (!want) {
            if (scan__skip(p, len, &off))
                goto bad;
            continue;
        }
        /* one pass: the check of the entry is also its skip */
        size_t end, uoff = 0;
        if (scan__object(p + voff, len - voff, TWIN_DEPTH_CAP, UINT_MAX, &end, err))
            goto bad;
        vend = voff + end;
        off = vend;
        msgpack_object k = {.type = MSGPACK_OBJECT_STR}, v;
        k.via.str.ptr = kp;
        k.via.str.size = (uint32_t)kn;
        switch (msgpack_unpack((const char *)p + voff, vend - voff, &uoff, zone, &v)) {
        case MSGPACK_UNPACK_SUCCESS: break;
        case MSGPACK_UNPACK_NOMEM_ERROR:
            twins__errf(err, "stored document: out of memory");
            return -ENOMEM;
        default: goto bad;
        }
        rc = decode_entry(&k, &v, doc, &has_id, &has_version, err);
        if (rc)
            return rc;
    }
    if (off != len) {
        twins__errf(err, "stored document: %zu trailing bytes", len - off);
        return -EBADMSG;
    }
    if (!has_id || !has_version) {
        twins__errf(err, "stored document: no '%s'", has_id ? "version" : "id");
        return -EBADMSG;
    }
    return 0;

bad:
    twins__errf(err, "stored document: malformed");
    return -EBADMSG;
}

/* ---------------------------------------------------------------------------------------------
 * Version without decoding
 * ------------------------------------------------------------------------------------------ */

int twin_doc_version(const void *buf, size_t len, uint64_t *version)
{
    const unsigned char *p = buf;
    struct scan_head h;
    size_t off = 0;
    uint64_t n;

    if (!buf || !version)
        return -EINVAL;
    if (scan__head(p, len, 0, &h, NULL) || h.kind != SCAN_MAP)
        return -EBADMSG;
    n = h.n;
    off = h.hdr;
    for (uint64_t i = 0; i < n; i++) {
        if (scan__head(p, len, off, &h, NULL))
            return -EBADMSG;
        if (h.kind == SCAN_STR && h.n == 7 && memcmp(p + off + h.hdr, "version", 7) == 0) {
            off += h.hdr + h.n;
            if (scan__head(p, len, off, &h, NULL) || h.kind != SCAN_UINT)
                return -EBADMSG;
            *version = h.u;
            return 0;
        }
        if (scan__skip(p, len, &off) || scan__skip(p, len, &off))
            return -EBADMSG;
    }
    return -EBADMSG;
}
