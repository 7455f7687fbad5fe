/* fuzz_shadow.c: AWS IoT Device Shadow requests through the hub's own handler (hub/shadow.c,
 * linked from the hubd library) into a real LMDB store: $aws/things/{thing}/shadow/update, get
 * and delete, classic and named (shadow_handle: payload checks, JSON decode, the request parse,
 * the write transaction with twin_shadow_apply / twin_delete, the replies and update/documents),
 * telemetry through ingest_on_message to give the twins state of their own, and the update/delta
 * messages the publisher would send (shadow_publish_delta, in a read transaction).
 *
 * Input: one flags byte, then up to MAX_MSGS messages separated by 0xc1 (FUZZ_SEP). Flags: bit 0
 * max_depth 32 (else 16), bit 1 max_keys 8 (else 64), bit 2 max_payload 256 (else 4096). A
 * message is one control byte, then the payload. Control: bits 0-1 pick one of three things
 * (one 128 bytes long) or a thing name that is not a device id; bits 2-3 the operation (update,
 * get, delete, or telemetry on devices/{id}/telemetry); bits 4-5 the shadow (classic, "cfg",
 * a 64-byte name, or a name that is not one); bit 6 marks the message retained.
 *
 * Every input starts from an empty store (3 twins, 8 KiB twins, 4 history points) with a
 * publisher that is never started (it only queues). Invariants checked after every message:
 *   - what the handler leaves for the publisher goes to $aws/things/{the request's thing}/
 *     shadow[/name/{its name}]/{its op}/accepted, /rejected or (update) /documents, is
 *     publishable and is valid JSON; a request with a bad thing or shadow name, or retained,
 *     gets nothing; any other one exactly one reply, plus update/documents when an update is
 *     accepted;
 *   - a rejection is {code, message, timestamp[, clientToken]} with an AWS code (400, 404, 409,
 *     413, 415, 500), and changes nothing: every twin's bytes and tombstone, the store's counts;
 *   - an accepted update bumps the twin's version by one (a new twin: its tombstone's + 1), and
 *     its reply names the stored version; an accepted get names the stored version;
 *   - every stored twin decodes, and its delta is twin_delta_compute(desired, reported);
 *   - shadow_publish_delta over every twin queues only valid JSON (checked by its return
 *     quietly: it must not crash or leak).
 */
#include "fuzz.h"
#include "hub.h"
#include "log.h"
#include "shadow.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 16
#define N_THINGS 3

static const char *things[N_THINGS + 1] = {
    "ecg-0001", "pump.7:A_b-c",
    ("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), /* TWIN_ID_MAX */
    ".hidden",                                                            /* not a device id */
};
static const char *names[4] = {
    NULL, "cfg", "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", "bad.name"};
static const char *ops[3] = {"update", "get", "delete"};

struct hub {
    struct twin_store *store;
    struct bridge_topics topics;
    struct publisher *pub;
    struct report rep;
    struct ingest in;
    struct twin_limits lim;
};

static void hub_open(struct hub *h)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    char path[4200], err[TWIN_ERR_LEN];
    snprintf(path, sizeof path, "%s/store", fuzz_tmpdir());
    fuzz_rm_tree(path);
    o.path = path;
    o.map_size = 1u << 20;
    o.max_map_size = 64u << 20;
    o.history_max_points = 4;
    o.max_doc_bytes = 8192;
    o.max_twins = 3;
    int rc = twin_store_open(&h->store, &o, err);
    FUZZ_CHECK(rc == 0, "twin_store_open %s: %d %s", path, rc, err);
    rc = bridge_topics_init(&h->topics, NULL, NULL, NULL, err);
    FUZZ_CHECK(rc == 0, "bridge_topics_init: %d %s", rc, err);
    struct publisher_options po = {
        .store = h->store,
        .topics = &h->topics,
        .qos = 1,
        .max_inflight = 1,
        .capacity = {[PUB_CLASS_REPORT] = 8, [PUB_CLASS_REPLY] = 64, [PUB_CLASS_COMMAND] = 8},
        .max_bytes = 1u << 20,
        .aws_shadow = true,
    };
    rc = publisher_new(&h->pub, &po);
    FUZZ_CHECK(rc == 0, "publisher_new: %d", rc);
    report_init(&h->rep, h->pub, "hub/errors", false, 1000.0, 1000);
    rc = ingest_init(&h->in, h->store, h->pub, &h->rep, &h->topics, &h->lim, false);
    FUZZ_CHECK(rc == 0, "ingest_init: %d", rc);
    h->in.aws_shadow = true;
}

static void hub_close(struct hub *h)
{
    ingest_cleanup(&h->in);
    report_cleanup(&h->rep);
    publisher_free(h->pub);
    twin_store_close(h->store);
}

/* Everything a request could change, as bytes: counts, each twin's document or tombstone. */
struct snap {
    msgpack_sbuffer blob;
    uint64_t version[N_THINGS]; /* the twin's, or its tombstone's; 0: neither */
    bool exists[N_THINGS];
};

static void snap_take(struct hub *h, struct snap *s)
{
    struct twin_txn *txn;
    struct twin_stats st;
    char err[TWIN_ERR_LEN];
    msgpack_packer pk;
    memset(s, 0, sizeof *s);
    msgpack_sbuffer_init(&s->blob);
    msgpack_packer_init(&pk, &s->blob, msgpack_sbuffer_write);
    int rc = twin_store_read_begin(h->store, &txn, err);
    FUZZ_CHECK(rc == 0, "twin_store_read_begin: %d %s", rc, err);
    rc = twin_store_stats(txn, &st, err);
    FUZZ_CHECK(rc == 0, "twin_store_stats: %d %s", rc, err);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint64(&pk, st.twins);
    msgpack_pack_uint64(&pk, st.history_series);
    msgpack_pack_uint64(&pk, st.history_points);
    msgpack_pack_uint64(&pk, st.tombstones);
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    for (int i = 0; i < N_THINGS; i++) {
        const void *buf;
        size_t len;
        rc = twin_get_raw(txn, things[i], strlen(things[i]), &buf, &len, err);
        FUZZ_CHECK(rc == 0 || rc == -ENOENT, "twin_get_raw: %d %s", rc, err);
        s->exists[i] = rc == 0;
        if (rc == 0) {
            struct twin_doc d;
            msgpack_object delta;
            msgpack_pack_bin_with_body(&pk, buf, len);
            rc = twin_doc_decode(buf, len, &z, &d, err);
            FUZZ_CHECK(rc == 0, "a stored twin does not decode: %d %s", rc, err);
            s->version[i] = d.version;
            FUZZ_CHECK(twin_delta_compute(&z, &d.desired, &d.reported, &delta) == 0,
                       "twin_delta_compute");
            FUZZ_CHECK((delta.type == MSGPACK_OBJECT_NIL) == (d.delta.type == MSGPACK_OBJECT_NIL),
                       "stored and computed delta disagree on being empty");
            /* what the publisher would send for it */
            shadow_publish_delta(h->pub, txn, things[i], strlen(things[i]));
        } else {
            uint64_t tomb = 0;
            rc = twin_tombstone_get(txn, things[i], strlen(things[i]), &tomb, err);
            FUZZ_CHECK(rc == 0 || rc == -ENOENT, "twin_tombstone_get: %d %s", rc, err);
            s->version[i] = rc == 0 ? tomb : 0;
            msgpack_pack_uint64(&pk, s->version[i]);
        }
    }
    msgpack_zone_destroy(&z);
    twin_store_read_end(txn);
}

static bool snap_same(const struct snap *a, const struct snap *b)
{
    return a->blob.size == b->blob.size && memcmp(a->blob.data, b->blob.data, a->blob.size) == 0;
}

/* The integer value of `key` in the JSON object text j[0..n), by a plain scan of the hub's own
 * compact JSON ("key":123; inside a string the quotes would be escaped): the first occurrence
 * followed by a number, or with `last` the last one (the top-level version follows the state,
 * which may hold keys of that name). -1 when there is none. */
static long long json_int(const char *j, size_t n, const char *key, bool last)
{
    char pat[64];
    long long found = -1;
    int pl = snprintf(pat, sizeof pat, "\"%s\":", key);
    for (size_t i = 0; i + (size_t)pl < n; i++) {
        if (memcmp(j + i, pat, (size_t)pl) != 0)
            continue;
        size_t k = i + (size_t)pl;
        if (j[k] < '0' || j[k] > '9')
            continue;
        long long v = 0;
        for (; k < n && j[k] >= '0' && j[k] <= '9' && v < (1ll << 60); k++)
            v = v * 10 + (j[k] - '0');
        found = v;
        if (!last)
            break;
    }
    return found;
}

static void one_message(struct hub *h, const struct fuzz_part *part)
{
    unsigned ctl = part->p[0];
    int ti = ctl & 3, op = (ctl >> 2) & 3, ni = (ctl >> 4) & 3;
    bool retained = ctl & 0x40;
    const uint8_t *payload = part->p + 1;
    size_t len = part->n - 1;
    char topic[BRIDGE_TOPIC_MAX + 64], base[BRIDGE_TOPIC_MAX + 64];
    struct bridge_msg m = {.payload = payload, .len = len, .qos = 1, .retained = retained};

    if (op == 3) { /* telemetry for a twin's state of its own */
        if (ti == N_THINGS)
            return;
        snprintf(topic, sizeof topic, "devices/%s/telemetry", things[ti]);
        m.topic = topic;
        m.topic_len = strlen(topic);
        ingest_on_message(&h->in, &m);
        return;
    }
    if (names[ni])
        snprintf(base, sizeof base, "$aws/things/%s/shadow/name/%s/%s", things[ti], names[ni],
                 ops[op]);
    else
        snprintf(base, sizeof base, "$aws/things/%s/shadow/%s", things[ti], ops[op]);
    m.topic = base;
    m.topic_len = strlen(base);
    bool bad_topic = ti == N_THINGS || ni == 3;

    struct snap before, after;
    snap_take(h, &before);
    unsigned flags = shadow_handle(&h->in, &m);
    snap_take(h, &after);
    struct outlist *ol = &h->in.out;

    if (bad_topic || retained) {
        FUZZ_CHECK(ol->n == 0 && flags == 0, "%s: %zu messages for a %s request", base, ol->n,
                   bad_topic ? "bad topic's" : "retained");
        FUZZ_CHECK(snap_same(&before, &after), "%s: a request never answered changed the store",
                   base);
        goto out;
    }
    FUZZ_CHECK(ol->n >= 1 && ol->n <= 2, "%s: %zu messages queued", base, ol->n);
    int replies = 0, documents = 0;
    long long code = 0, version = -1;
    bool accepted = false;
    for (size_t i = 0; i < ol->n; i++) {
        const struct outmsg *o = &ol->v[i];
        const char *t = ol->data.data + o->topic;
        const char *p = ol->data.data + o->payload;
        size_t bl = strlen(base);
        FUZZ_CHECK(bridge_topic_publishable(t, o->topic_len), "unpublishable topic %s", t);
        FUZZ_CHECK(o->topic_len > bl && memcmp(t, base, bl) == 0 && t[bl] == '/',
                   "%s: a message on %s", base, t);
        FUZZ_CHECK(fuzz_json_valid(p, o->len), "%s: not JSON on %s: %.*s", base, t, (int)o->len, p);
        const char *sfx = t + bl + 1;
        if (strcmp(sfx, "accepted") == 0) {
            replies++;
            accepted = true;
            version = json_int(p, o->len, "version", true);
        } else if (strcmp(sfx, "rejected") == 0) {
            replies++;
            code = json_int(p, o->len, "code", false);
            FUZZ_CHECK(json_int(p, o->len, "timestamp", false) >= 0,
                       "a rejection without timestamp");
        } else {
            FUZZ_CHECK(op == 0 && strcmp(sfx, "documents") == 0, "%s: a message on %s", base, t);
            documents++;
        }
    }
    FUZZ_CHECK(replies == 1, "%s: %d replies", base, replies);
    FUZZ_CHECK(documents == (accepted && op == 0 ? 1 : 0), "%s: %d documents messages", base,
               documents);
    if (!accepted) {
        FUZZ_CHECK(code == 400 || code == 404 || code == 409 || code == 413 || code == 415 ||
                       code == 500,
                   "%s: rejected with code %lld", base, code);
        FUZZ_CHECK(snap_same(&before, &after), "%s: a rejected request changed the store", base);
        FUZZ_CHECK(flags == 0, "%s: a rejection asks for publications", base);
    } else if (op == 0) {
        FUZZ_CHECK(after.exists[ti] && after.version[ti] == before.version[ti] + 1,
                   "%s: version %llu -> %llu", base, (unsigned long long)before.version[ti],
                   (unsigned long long)after.version[ti]);
        FUZZ_CHECK(version == (long long)after.version[ti], "%s: reply version %lld, stored %llu",
                   base, version, (unsigned long long)after.version[ti]);
    } else if (op == 1) {
        FUZZ_CHECK(snap_same(&before, &after), "%s: get changed the store", base);
        FUZZ_CHECK(version == (long long)after.version[ti], "%s: get names version %lld, not %llu",
                   base, version, (unsigned long long)after.version[ti]);
    } else {
        FUZZ_CHECK(!names[ni] ? !after.exists[ti] : after.version[ti] == before.version[ti] + 1,
                   "%s: after delete: exists %d, version %llu -> %llu", base, after.exists[ti],
                   (unsigned long long)before.version[ti], (unsigned long long)after.version[ti]);
    }
out:
    outlist_reset(ol);
    msgpack_sbuffer_destroy(&before.blob);
    msgpack_sbuffer_destroy(&after.blob);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    struct fuzz_part parts[MAX_MSGS];
    struct hub h;
    if (!init) {
        init = true;
        log_set_level(getenv("FUZZ_TRACE") ? LOG_DEBUG : LOG_ERROR);
    }
    if (size < 1)
        return 0;
    memset(&h, 0, sizeof h);
    h.lim.max_depth = data[0] & 1 ? TWIN_DEPTH_CAP : 16;
    h.lim.max_keys = data[0] & 2 ? 8 : 64;
    h.lim.max_payload = data[0] & 4 ? 256 : 4096;
    size_t n = fuzz_split(data + 1, size - 1, parts, MAX_MSGS);
    hub_open(&h);
    for (size_t i = 0; i < n; i++)
        if (parts[i].n > 0)
            one_message(&h, &parts[i]);
    hub_close(&h);
    return 0;
}
