/* fuzz_request.c: what services and devices ask of the hub, through the hub's own handlers
 * (hub/requests.c, hub/commands.c, hub/ingest.c, hub/presence.c, linked from the hubd library)
 * into a real LMDB store: twins/{id}/desired/set, get, delete and commands/send requests
 * (requests_handle: payload decode, envelope parse, response-topic checks, the write
 * transaction with twin_desired_apply / twin_delete / twin_command_add / twin_command_mark_sent,
 * the reply), device command acks (commands_ack_handle: twin_command_update), and, to give them
 * twins and commands to work on, telemetry and device status through ingest_on_message, and the
 * command timer (commands_expire: twin_command_expire) and the restart re-send
 * (commands_resend_connected).
 *
 * Input: one flags byte, then up to MAX_MSGS messages separated by 0xc1 (FUZZ_SEP). Flags:
 * bit 0 max_depth 32 (else 16), bit 1 max_keys 8 (else 64), bit 2 max_payload 256 (else 4096),
 * bit 3 publish.encoding json (replies and events as JSON). A message is one control byte, then
 * the payload. Control: bits 0-1 pick one of four device ids (one 128 bytes long); bits 2-4
 * what the message is:
 *   0 twins/{id}/desired/set   1 twins/{id}/commands/send   2 twins/{id}/get
 *   3 twins/{id}/delete        4 devices/{id}/commands/ack  5 devices/{id}/telemetry
 *   6 devices/{id}/status      7 the timer: commands_expire at the hub clock plus the first
 *                                payload byte in seconds, then, when bit 5 is set,
 *                                commands_resend_connected
 * bit 5 marks the message retained; bit 6 (ops 0-4): the payload starts with one length byte
 * and that many bytes of MQTT 5 response topic; bit 7 (ops 0-4): the message carries the
 * correlation data "corr" + the message's index.
 * Command ids are a store-wide counter from 1 ("0000000000000001"): acks can name them.
 *
 * Every input starts from an empty store (opened afresh in a private directory: the handlers
 * commit), with a publisher that is never started (it only queues: nothing leaves the process)
 * and small limits: 3 twins, 8 KiB twins, 4 history points, 4 commands per device, finished
 * commands kept 2 s. The handlers read the real clock (hub_now_ms).
 *
 * Invariants checked after every message:
 *   - every message the handlers leave for the publisher goes to a publishable topic of the
 *     hub's scheme for the request's own id (events: twins/{id}/events; commands:
 *     devices/{id}/commands), or is the request's reply; every payload decodes (JSON ones are
 *     valid JSON by the independent validator);
 *   - a retained request or ack changes nothing and is not answered;
 *   - a request gets exactly one reply, on <request topic>/accepted or /rejected, or on its
 *     response topic, which then is publishable and outside the hub's own topics; the
 *     correlation data is echoed; a rejection is {code, message, token} with code 400, 404, 409
 *     or 413, and a good token is echoed;
 *   - what an independent reading of the request format (DESIGN.md §3 and the choices listed
 *     in hub/requests.c) calls malformed is rejected with 400 (413: over a limit);
 *   - bad input changes nothing: after any rejection every twin's bytes, tombstone and
 *     commands, and the store's counts are as they were, and nothing but the reply is queued;
 *   - desired/set: 409 exactly when an expected version is given and is not the twin's (0:
 *     absent); accepted: version +1 (a deleted twin's continued), the reply's version and desired
 *     are the stored ones; get: 404 exactly when there is no twin, else the reply is the stored
 *     document (plus the token); delete: 404 without a twin, 409 on a version mismatch, else the
 *     twin is gone and its tombstone and the reply hold its last version; commands/send:
 *     accepted only for an existing twin and a name of 1..64 bytes without control bytes; the
 *     reply's id is a new command, queued, or sent with its message to devices/{id}/commands
 *     when the twin is connected; the twin document is untouched;
 *   - acks: applied only for an existing command, moving it forward (queued < sent <
 *     delivered < succeeded | failed, never out of a final state) to the acked state, or
 *     repeating it (nothing changes); a malformed ack ({id: str, status: delivered | succeeded
 *     | failed}) is refused; nothing but the command changes;
 *   - status online leaves no command of that twin queued; the timer leaves no pending command
 *     whose deadline has passed; no device holds more than 4 commands;
 *   - every stored twin decodes, and its delta is twin_delta_compute(desired, reported).
 */
#include "fuzz.h"
#include "hub.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 16
#define N_DEV 4
#define CMDS_MAX 4
#define TOKEN_MAX 64
#define EXPIRES_MAX_MS (3650ull * 86400 * 1000)

static const char *ids[N_DEV] = {
    "ecg-0001", "pump.7:A_b-c", "d",
    ("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), /* TWIN_ID_MAX */
};

enum op { OP_SET, OP_SEND, OP_GET, OP_DELETE, OP_ACK, OP_TELEMETRY, OP_STATUS, OP_TIMER };

static const struct twin_limits wide = {SIZE_MAX, TWIN_DEPTH_CAP, UINT_MAX};

/* FUZZ_TRACE=1 in the environment: the hub's debug log and one line per message on stderr. */
static bool trace;

/* ---------------------------------------------------------------------------------------------
 * The hub's pieces, fresh for every input
 * ------------------------------------------------------------------------------------------ */

struct hub {
    struct twin_store *store;
    struct bridge_topics topics;
    struct publisher *pub;
    struct report rep;
    struct ingest in;
    struct outlist timer_out;
    struct twin_limits lim;
    bool json;
};

static void hub_open(struct hub *h)
{
    struct twin_store_options o = TWIN_STORE_OPTIONS_DEFAULT;
    char path[4200], err[TWIN_ERR_LEN];
    int rc;

    snprintf(path, sizeof path, "%s/store", fuzz_tmpdir());
    fuzz_rm_tree(path);
    o.path = path;
    o.map_size = 1u << 20;
    o.max_map_size = 64u << 20;
    o.history_max_points = 4;
    o.max_doc_bytes = 8192;
    o.max_twins = 3;
    o.max_clock_skew_ms = 300000;
    o.commands_max = CMDS_MAX;
    o.command_retention_ms = 2000;
    rc = twin_store_open(&h->store, &o, err);
    FUZZ_CHECK(rc == 0, "twin_store_open %s: %d %s", path, rc, err);
    rc = bridge_topics_init(&h->topics, NULL, NULL, NULL, err);
    FUZZ_CHECK(rc == 0, "bridge_topics_init: %d %s", rc, err);

    struct publisher_options po = {
        .store = h->store,
        .bridge = NULL, /* never started: messages only wait */
        .topics = &h->topics,
        .qos = 1,
        .max_inflight = 1,
        .json = h->json,
        .capacity = {[PUB_CLASS_REPORT] = 8, [PUB_CLASS_REPLY] = 64, [PUB_CLASS_COMMAND] = 64},
        .max_bytes = 1u << 20,
    };
    rc = publisher_new(&h->pub, &po);
    FUZZ_CHECK(rc == 0, "publisher_new: %d", rc);
    report_init(&h->rep, h->pub, "hub/errors", h->json, 1000.0, 1000);
    rc = ingest_init(&h->in, h->store, h->pub, &h->rep, &h->topics, &h->lim, h->json);
    FUZZ_CHECK(rc == 0, "ingest_init: %d", rc);
    rc = outlist_init(&h->timer_out, &h->topics, h->json);
    FUZZ_CHECK(rc == 0, "outlist_init: %d", rc);
}

static void hub_close(struct hub *h)
{
    outlist_cleanup(&h->timer_out);
    ingest_cleanup(&h->in);
    report_cleanup(&h->rep);
    publisher_free(h->pub);
    twin_store_close(h->store);
}

/* ---------------------------------------------------------------------------------------------
 * A snapshot of everything a message could change
 * ------------------------------------------------------------------------------------------ */

struct cmd_snap {
    char id[TWIN_CMD_ID_LEN + 1];
    enum twin_command_state state;
    int64_t expires;
};

struct dev_snap {
    bool exists;
    uint64_t tomb; /* tombstone's version when the twin does not exist; 0: none */
    void *raw;     /* the stored document, copied */
    size_t len;
    struct twin_doc doc;
    size_t ncmd;
    struct cmd_snap cmd[CMDS_MAX + 1];
};

struct snap {
    msgpack_zone zone;
    msgpack_sbuffer blob; /* every byte of it, to compare whole */
    msgpack_packer pk;
    struct twin_stats st;
    struct dev_snap d[N_DEV];
};

static int snap_cmd(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct snap *s = ((void **)ctx)[0];
    struct dev_snap *d = ((void **)ctx)[1];

    (void)from;
    FUZZ_CHECK(d->ncmd < CMDS_MAX, "more than %d commands stored for one device", CMDS_MAX);
    memcpy(d->cmd[d->ncmd].id, c->id, sizeof c->id);
    d->cmd[d->ncmd].state = c->state;
    d->cmd[d->ncmd].expires = c->expires;
    d->ncmd++;
    msgpack_pack_array(&s->pk, 11);
    msgpack_pack_str_with_body(&s->pk, c->id, strlen(c->id));
    msgpack_pack_str_with_body(&s->pk, c->cmd, c->cmd_len);
    msgpack_pack_object(&s->pk, c->args);
    msgpack_pack_int(&s->pk, c->state);
    msgpack_pack_int64(&s->pk, c->created);
    msgpack_pack_int64(&s->pk, c->expires);
    msgpack_pack_int64(&s->pk, c->updated);
    msgpack_pack_uint32(&s->pk, c->attempts);
    msgpack_pack_object(&s->pk, c->result);
    msgpack_pack_int64(&s->pk, c->drop);
    msgpack_pack_str_with_body(&s->pk, c->twin_id, c->twin_id_len);
    return 0;
}

static void snap_take(struct hub *h, struct snap *s)
{
    struct twin_txn *txn;
    char err[TWIN_ERR_LEN];
    int rc;

    memset(s, 0, sizeof *s);
    msgpack_zone_init(&s->zone, 4096);
    msgpack_sbuffer_init(&s->blob);
    msgpack_packer_init(&s->pk, &s->blob, msgpack_sbuffer_write);
    rc = twin_store_read_begin(h->store, &txn, err);
    FUZZ_CHECK(rc == 0, "twin_store_read_begin: %d %s", rc, err);
    rc = twin_store_stats(txn, &s->st, err);
    FUZZ_CHECK(rc == 0, "twin_store_stats: %d %s", rc, err);
    msgpack_pack_array(&s->pk, 6);
    msgpack_pack_uint64(&s->pk, s->st.twins);
    msgpack_pack_uint64(&s->pk, s->st.history_series);
    msgpack_pack_uint64(&s->pk, s->st.history_points);
    msgpack_pack_uint64(&s->pk, s->st.outbox);
    msgpack_pack_uint64(&s->pk, s->st.commands);
    msgpack_pack_uint64(&s->pk, s->st.tombstones);
    for (int i = 0; i < N_DEV; i++) {
        struct dev_snap *d = &s->d[i];
        const void *buf;
        void *ctx[2] = {s, d};

        rc = twin_get_raw(txn, ids[i], strlen(ids[i]), &buf, &d->len, err);
        FUZZ_CHECK(rc == 0 || rc == -ENOENT, "twin_get_raw: %d %s", rc, err);
        d->exists = rc == 0;
        if (d->exists) {
            d->raw = msgpack_zone_malloc(&s->zone, d->len ? d->len : 1);
            FUZZ_CHECK(d->raw, "out of memory");
            memcpy(d->raw, buf, d->len);
            rc = twin_doc_decode(d->raw, d->len, &s->zone, &d->doc, err);
            FUZZ_CHECK(rc == 0, "a stored twin does not decode: %d %s", rc, err);
            msgpack_pack_bin_with_body(&s->pk, d->raw, d->len);
        } else {
            rc = twin_tombstone_get(txn, ids[i], strlen(ids[i]), &d->tomb, err);
            FUZZ_CHECK(rc == 0 || rc == -ENOENT, "twin_tombstone_get: %d %s", rc, err);
            if (rc)
                d->tomb = 0;
            msgpack_pack_uint64(&s->pk, d->tomb);
        }
        rc = twin_command_list(txn, ids[i], strlen(ids[i]), snap_cmd, ctx, err);
        FUZZ_CHECK(rc == 0, "twin_command_list: %d %s", rc, err);
        FUZZ_CHECK(d->exists || d->ncmd == 0, "%zu commands for a twin that does not exist",
                   d->ncmd);
    }
    twin_store_read_end(txn);
}

static void snap_free(struct snap *s)
{
    msgpack_sbuffer_destroy(&s->blob);
    msgpack_zone_destroy(&s->zone);
}

static bool snap_same(const struct snap *a, const struct snap *b)
{
    return a->blob.size == b->blob.size && memcmp(a->blob.data, b->blob.data, a->blob.size) == 0;
}

static const struct cmd_snap *cmd_find(const struct dev_snap *d, const char *id, size_t n)
{
    for (size_t i = 0; i < d->ncmd; i++)
        if (n == TWIN_CMD_ID_LEN && memcmp(d->cmd[i].id, id, n) == 0)
            return &d->cmd[i];
    return NULL;
}

/* No NaN anywhere and no map key given twice: where twin_value_equal is an equivalence. */
static bool tame(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
        return o->via.f64 == o->via.f64;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (!tame(&o->via.array.ptr[i]))
                return false;
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (!tame(&o->via.map.ptr[i].val))
                return false;
            for (uint32_t j = 0; j < i; j++)
                if (twin_value_equal(&o->via.map.ptr[i].key, &o->via.map.ptr[j].key))
                    return false;
        }
    }
    return true;
}

/* Every stored twin: its delta is what desired and reported make. */
static void check_twins(const struct snap *s)
{
    msgpack_zone z;

    msgpack_zone_init(&z, 4096);
    for (int i = 0; i < N_DEV; i++) {
        const struct twin_doc *d = &s->d[i].doc;
        msgpack_object delta;

        if (!s->d[i].exists)
            continue;
        FUZZ_CHECK(d->id_len == strlen(ids[i]) && memcmp(d->id, ids[i], d->id_len) == 0,
                   "twin %s stored under another id", ids[i]);
        FUZZ_CHECK(twin_delta_compute(&z, &d->desired, &d->reported, &delta) == 0,
                   "twin_delta_compute");
        if (delta.type == MSGPACK_OBJECT_NIL || d->delta.type == MSGPACK_OBJECT_NIL)
            FUZZ_CHECK(delta.type == d->delta.type, "stored delta %s, computed delta %s",
                       d->delta.type == MSGPACK_OBJECT_NIL ? "absent" : "present",
                       delta.type == MSGPACK_OBJECT_NIL ? "absent" : "present");
        else if (tame(&delta) && tame(&d->delta))
            FUZZ_CHECK(twin_value_equal(&delta, &d->delta), "the stored delta is not the delta");
    }
    msgpack_zone_destroy(&z);
}

/* ---------------------------------------------------------------------------------------------
 * An independent reading of the request formats (DESIGN.md §3, hub/requests.c's choices)
 * ------------------------------------------------------------------------------------------ */

static bool key_is(const msgpack_object *k, const char *s)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) &&
           memcmp(k->via.str.ptr, s, k->via.str.size) == 0;
}

struct ref {
    bool valid;
    bool dup;      /* a key given twice: which of the values counts is not checked */
    bool token_ok; /* every token in it is a string of at most 64 bytes */
    const msgpack_object *token;
    const msgpack_object *version; /* NULL: none (or nil) */
    const msgpack_object *desired;
    const msgpack_object *cmd;
};

static void ref_request(enum op op, const msgpack_object *o, struct ref *r)
{
    static const char *keys[][5] = {
        [OP_SET] = {"desired", "version", "token"},
        [OP_SEND] = {"cmd", "args", "expires_in_ms", "token"},
        [OP_GET] = {"token"},
        [OP_DELETE] = {"version", "token"},
    };

    memset(r, 0, sizeof *r);
    r->valid = o->type == MSGPACK_OBJECT_MAP;
    r->token_ok = true;
    if (!r->valid)
        return;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        bool known = false;

        for (int j = 0; j < 5 && keys[op][j]; j++)
            known |= key_is(k, keys[op][j]);
        for (uint32_t j = 0; j < i; j++)
            if (known && twin_value_equal(k, &o->via.map.ptr[j].key))
                r->dup = true;
        if (!known) {
            r->valid = false;
        } else if (key_is(k, "token")) {
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > TOKEN_MAX)
                r->valid = r->token_ok = false;
            r->token = v;
        } else if (key_is(k, "version")) {
            if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 < UINT64_MAX)
                r->version = v;
            else if (v->type != MSGPACK_OBJECT_NIL)
                r->valid = false;
        } else if (key_is(k, "desired")) {
            r->valid &= v->type == MSGPACK_OBJECT_MAP;
            r->desired = v;
        } else if (key_is(k, "cmd")) {
            r->valid &= v->type == MSGPACK_OBJECT_STR;
            r->cmd = v;
        } else if (key_is(k, "expires_in_ms")) {
            r->valid &=
                v->type == MSGPACK_OBJECT_NIL || (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                                                  v->via.u64 >= 1 && v->via.u64 <= EXPIRES_MAX_MS);
        }
    }
    if ((op == OP_SET && !r->desired) || (op == OP_SEND && !r->cmd))
        r->valid = false;
}

/* twins/<any one level>/<a suffix the hub reads or writes>: the shape alone, the level need not
 * be a valid id. */
static bool ref_twins_shape(const char *t, size_t n)
{
    static const char *const sfx[] = {"desired/set", "get",    "commands/send", "delete",
                                      "state",       "events", "predictions"};
    if (n < 6 || memcmp(t, "twins/", 6) != 0)
        return false;
    const char *slash = memchr(t + 6, '/', n - 6);
    if (!slash)
        return false;
    size_t rest = n - (size_t)(slash + 1 - t);
    for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++)
        if (strlen(sfx[i]) == rest && memcmp(slash + 1, sfx[i], rest) == 0)
            return true;
    return false;
}

/* A topic a reply must never go to (DESIGN.md §3, hub/requests.c): starting with '$', under
 * devices/ or hub/, shaped like one the hub reads or writes (whatever its id), or like one of
 * its reply topics. */
static bool ref_own_topic(const char *t, size_t n)
{
    static const char *const ends[] = {"/accepted", "/rejected"};

    if (n == 0 || t[0] == '$' || (n >= 8 && memcmp(t, "devices/", 8) == 0) ||
        (n >= 4 && memcmp(t, "hub/", 4) == 0) || ref_twins_shape(t, n))
        return true;
    for (int i = 0; i < 2; i++) {
        size_t el = strlen(ends[i]);

        if (n > el && memcmp(t + n - el, ends[i], el) == 0 && ref_twins_shape(t, n - el))
            return true;
    }
    return false;
}

/* A command name twin_command_add takes: 1..64 bytes, no control bytes. */
static bool ref_cmd_name(const msgpack_object *c)
{
    if (c->via.str.size < 1 || c->via.str.size > TWIN_CMD_NAME_MAX)
        return false;
    for (uint32_t i = 0; i < c->via.str.size; i++)
        if ((unsigned char)c->via.str.ptr[i] < 0x20 || c->via.str.ptr[i] == 0x7f)
            return false;
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * What the handlers left for the publisher
 * ------------------------------------------------------------------------------------------ */

/* The last value of string key k in map m, or NULL. */
static const msgpack_object *map_get(const msgpack_object *m, const char *k)
{
    const msgpack_object *v = NULL;

    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (key_is(&m->via.map.ptr[i].key, k))
            v = &m->via.map.ptr[i].val;
    return v;
}

static bool str_eq(const msgpack_object *a, const msgpack_object *b)
{
    return a && b && a->type == MSGPACK_OBJECT_STR && b->type == MSGPACK_OBJECT_STR &&
           a->via.str.size == b->via.str.size &&
           memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0;
}

/* Decodes payload p[0..n) of a message: JSON when `json` (checked by the independent
 * validator), else msgpack. */
static void decode_out(const char *p, size_t n, bool json, msgpack_zone *z, msgpack_object *o)
{
    char err[TWIN_ERR_LEN];
    int rc;

    if (json) {
        FUZZ_CHECK(fuzz_json_valid(p, n), "invalid JSON queued: %.*s", (int)(n < 300 ? n : 300), p);
        rc = twin_input_decode(p, n, &wide, z, o, err);
        FUZZ_CHECK(rc == 0, "a JSON payload queued does not decode: %d %s", rc, err);
    } else {
        size_t off = 0;

        rc = twin_input_scan(p, n, &wide, err);
        FUZZ_CHECK(rc == 0, "a msgpack payload queued does not scan: %d %s", rc, err);
        FUZZ_CHECK(msgpack_unpack(p, n, &off, z, o) == MSGPACK_UNPACK_SUCCESS && off == n,
                   "a msgpack payload queued does not unpack");
    }
}

struct sent {
    size_t replies, events, commands;
    const struct outmsg *reply;
    msgpack_object reply_obj;
    bool accepted;
    const msgpack_object *cmd_ids[8]; /* ids of the messages to devices/{id}/commands */
};

/* Walks what the handlers queued for one message about device `dev`. `req`: the reply topic
 * prefix (the request topic) when a reply is due, NULL when none is. */
static void check_out(const struct hub *h, const struct outlist *ol, int dev, const char *req,
                      const char *resp, size_t resp_len, const void *corr, size_t corr_len,
                      msgpack_zone *z, struct sent *s)
{
    char want_ev[BRIDGE_TOPIC_MAX], want_cmd[BRIDGE_TOPIC_MAX];
    size_t id_len = strlen(ids[dev]);

    memset(s, 0, sizeof *s);
    FUZZ_CHECK(bridge_topic_build(&h->topics, BRIDGE_T_EVENTS, ids[dev], id_len, want_ev,
                                  sizeof want_ev) > 0,
               "bridge_topic_build");
    FUZZ_CHECK(bridge_topic_build(&h->topics, BRIDGE_T_COMMANDS, ids[dev], id_len, want_cmd,
                                  sizeof want_cmd) > 0,
               "bridge_topic_build");
    FUZZ_CHECK(!ol->err, "the outlist failed: %d", ol->err);
    for (size_t i = 0; i < ol->n; i++) {
        const struct outmsg *m = &ol->v[i];
        const char *topic = ol->data.data + m->topic, *payload = ol->data.data + m->payload;
        msgpack_object o;

        FUZZ_CHECK(m->topic_len == strlen(topic) && bridge_topic_publishable(topic, m->topic_len),
                   "a message queued for an unpublishable topic");
        FUZZ_CHECK(m->qos == 1, "qos %d", m->qos); /* an outlist never holds retained ones */
        if (m->cls == PUB_CLASS_COMMAND) {
            FUZZ_CHECK(strcmp(topic, want_cmd) == 0, "a command queued for %s", topic);
            FUZZ_CHECK(!m->has_corr, "a command with correlation data");
            decode_out(payload, m->len, false, z, &o);
            FUZZ_CHECK(s->commands < 8, "more than 8 commands for one message");
            s->cmd_ids[s->commands++] = map_get(&o, "id");
            FUZZ_CHECK(map_get(&o, "id") && map_get(&o, "cmd") && map_get(&o, "ts"),
                       "a command without id, cmd, ts");
            continue;
        }
        FUZZ_CHECK(m->cls == PUB_CLASS_REPLY, "a message of class %d", m->cls);
        decode_out(payload, m->len, h->json, z, &o);
        FUZZ_CHECK(o.type == MSGPACK_OBJECT_MAP, "a payload queued is not a map");
        if (strcmp(topic, want_ev) == 0 && !m->has_corr) {
            const msgpack_object *type = map_get(&o, "type");

            FUZZ_CHECK(type && type->type == MSGPACK_OBJECT_STR, "an event without a type");
            s->events++;
            continue;
        }
        /* the reply */
        FUZZ_CHECK(req, "a message to %s, where no reply is due", topic);
        s->replies++;
        s->reply = m;
        s->reply_obj = o;
        FUZZ_CHECK(m->has_corr == (corr != NULL) &&
                       (!corr || (m->corr_len == corr_len &&
                                  memcmp(ol->data.data + m->corr, corr, corr_len) == 0)),
                   "correlation data not echoed");
        {
            size_t rl = strlen(req);
            bool to_req = m->topic_len > rl && memcmp(topic, req, rl) == 0;
            const msgpack_object *code = map_get(&o, "code");

            bool resp_ok = resp && resp_len >= 1 && resp_len <= BRIDGE_TOPIC_MAX &&
                           bridge_topic_publishable(resp, resp_len) &&
                           !ref_own_topic(resp, resp_len);

            if (resp_ok) {
                /* a usable response topic: the reply goes there, whatever it says */
                FUZZ_CHECK(m->topic_len == resp_len && memcmp(topic, resp, resp_len) == 0,
                           "a reply to %s instead of the response topic", topic);
                s->accepted = code == NULL;
            } else if (to_req && strcmp(topic + rl, "/accepted") == 0) {
                s->accepted = true;
                FUZZ_CHECK(!resp, "accepted despite a response topic the hub must refuse");
            } else {
                FUZZ_CHECK(to_req && strcmp(topic + rl, "/rejected") == 0, "a reply to %s", topic);
                s->accepted = false;
            }
            if (!s->accepted) {
                const msgpack_object *msg = map_get(&o, "message");

                FUZZ_CHECK(code && code->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                               (code->via.u64 == 400 || code->via.u64 == 404 ||
                                code->via.u64 == 409 || code->via.u64 == 413),
                           "a rejection with a bad code");
                FUZZ_CHECK(msg && msg->type == MSGPACK_OBJECT_STR && msg->via.str.size > 0,
                           "a rejection without a message");
                FUZZ_CHECK(o.via.map.size == 3 && map_get(&o, "token"),
                           "a rejection is {code, message, token}");
            }
        }
    }
    FUZZ_CHECK(!req || s->replies == 1, "%zu replies to one request", s->replies);
}

static uint64_t reply_code(const struct sent *s)
{
    const msgpack_object *c = map_get(&s->reply_obj, "code");

    return s->accepted || !c ? 0 : c->via.u64;
}

static uint64_t reply_uint(const struct sent *s, const char *k)
{
    const msgpack_object *v = map_get(&s->reply_obj, k);

    FUZZ_CHECK(v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER, "reply without '%s'", k);
    return v->via.u64;
}

/* ---------------------------------------------------------------------------------------------
 * One message
 * ------------------------------------------------------------------------------------------ */

static uint64_t reports(const struct hub *h)
{
    uint64_t n = 0;

    for (int k = 0; k < REPORT_KINDS; k++)
        n += atomic_load(&h->rep.count[k]);
    return n;
}

static const enum bridge_topic_kind kind_of[] = {
    [OP_SET] = BRIDGE_T_DESIRED_SET, [OP_SEND] = BRIDGE_T_CMD_SEND,
    [OP_GET] = BRIDGE_T_GET,         [OP_DELETE] = BRIDGE_T_DELETE,
    [OP_ACK] = BRIDGE_T_CMD_ACK,     [OP_TELEMETRY] = BRIDGE_T_TELEMETRY,
    [OP_STATUS] = BRIDGE_T_STATUS,
};

/* A heap copy of exactly n bytes (1 when n is 0), so that ASan sees any read past the end. */
static void *exact_copy(const void *p, size_t n)
{
    void *c = malloc(n ? n : 1);

    FUZZ_CHECK(c, "out of memory");
    if (n)
        memcpy(c, p, n);
    return c;
}

static void check_request(struct hub *h, enum op op, int dev, const struct bridge_msg *m,
                          const struct snap *before, const struct snap *after, unsigned flags,
                          const struct sent *s, uint64_t reports0)
{
    const struct dev_snap *b = &before->d[dev], *a = &after->d[dev];
    msgpack_zone z;
    msgpack_object obj = {.type = MSGPACK_OBJECT_MAP};
    struct ref r;
    char err[TWIN_ERR_LEN];
    uint64_t code = reply_code(s);
    bool resp_ok = true;
    int rc = 0;

    msgpack_zone_init(&z, 4096);
    if (m->response_topic) {
        /* the hub's own rules, restated: publishable, not '$', not the hub's scheme */
        const char *t = m->response_topic;
        size_t n = m->response_topic_len;

        resp_ok = n >= 1 && n <= BRIDGE_TOPIC_MAX && bridge_topic_publishable(t, n) &&
                  !ref_own_topic(t, n);
        if (!resp_ok)
            FUZZ_CHECK(code == 400, "a bad response topic answered with %" PRIu64, code);
    }
    if (m->len > 0 || (op != OP_GET && op != OP_DELETE))
        rc = twin_input_decode(m->payload, m->len, &h->lim, &z, &obj, err);
    if (rc < 0 || !resp_ok) {
        if (resp_ok)
            FUZZ_CHECK(code == (rc == -E2BIG ? 413u : 400u),
                       "an undecodable request (%d %s) answered with %" PRIu64, rc, err, code);
        goto rejected;
    }
    ref_request(op, &obj, &r);
    if (!r.valid) {
        FUZZ_CHECK(code == 400, "a malformed request answered with %" PRIu64, code);
        goto rejected;
    }
    if (!r.dup && r.token) {
        const msgpack_object *tok = map_get(&s->reply_obj, "token");

        FUZZ_CHECK(h->json || str_eq(tok, r.token), "the token is not echoed");
    }
    uint64_t cur = b->exists ? b->doc.version : 0;
    bool conflict = !r.dup && r.version && r.version->via.u64 != cur;
    switch (op) {
    case OP_SET:
        FUZZ_CHECK(code != 404, "desired/set answered 404");
        /* refused at a version conflict; a bad patch may be reported first (400, 413) */
        if (conflict)
            FUZZ_CHECK(code == 409 || code == 400 || code == 413,
                       "desired/set at version %" PRIu64 " of %" PRIu64 ": %" PRIu64,
                       r.version->via.u64, cur, code);
        if (code == 409)
            FUZZ_CHECK(r.dup || conflict, "desired/set: 409 without a conflict");
        if (!s->accepted)
            break;
        FUZZ_CHECK(a->exists && a->doc.version == (b->exists ? b->doc.version : b->tomb) + 1,
                   "desired/set: version %" PRIu64 " after %" PRIu64,
                   a->exists ? a->doc.version : 0, b->exists ? b->doc.version : b->tomb);
        FUZZ_CHECK(reply_uint(s, "version") == a->doc.version, "desired/set: reply version");
        FUZZ_CHECK(flags & PUB_STATE, "desired/set: state not published");
        if (!h->json && tame(&a->doc.desired)) {
            const msgpack_object *d = map_get(&s->reply_obj, "desired");

            FUZZ_CHECK(d && twin_value_equal(d, &a->doc.desired),
                       "desired/set: the reply's desired is not the stored one");
        }
        if (b->exists)
            FUZZ_CHECK(b->doc.connected == a->doc.connected &&
                           b->doc.last_seen == a->doc.last_seen && b->doc.seq == a->doc.seq,
                       "desired/set changed the device's state");
        break;
    case OP_GET:
        FUZZ_CHECK(snap_same(before, after), "get changed the store");
        FUZZ_CHECK(flags == 0, "get: flags %u", flags);
        FUZZ_CHECK(s->accepted == b->exists && (b->exists || code == 404),
                   "get of a twin that %s: %" PRIu64, b->exists ? "exists" : "does not", code);
        if (s->accepted && !h->json) {
            const struct outmsg *o = s->reply;
            const char *p = h->in.out.data.data + o->payload;

            if (!r.token)
                FUZZ_CHECK(o->len == b->len && memcmp(p, b->raw, b->len) == 0,
                           "get: the reply is not the stored document");
            else
                FUZZ_CHECK(o->len > b->len && reply_uint(s, "version") == b->doc.version &&
                               map_get(&s->reply_obj, "token"),
                           "get: the reply is not the document and the token");
        }
        if (s->accepted && h->json)
            FUZZ_CHECK(reply_uint(s, "version") == b->doc.version, "get: the reply's version");
        break;
    case OP_DELETE:
        if (!b->exists)
            FUZZ_CHECK(code == 404 || code == 409, "delete of no twin: %" PRIu64, code);
        else if (conflict)
            FUZZ_CHECK(code == 409, "delete at version %" PRIu64 " of %" PRIu64 ": %" PRIu64,
                       r.version->via.u64, cur, code);
        else if (!r.dup)
            FUZZ_CHECK(s->accepted, "delete refused: %" PRIu64, code);
        if (!s->accepted)
            break;
        FUZZ_CHECK(b->exists && !a->exists && a->tomb == b->doc.version &&
                       reply_uint(s, "version") == b->doc.version && a->ncmd == 0,
                   "delete: the twin, its commands, its tombstone or the reply");
        FUZZ_CHECK(flags == (PUB_STATE | PUB_DESIRED), "delete: flags %u", flags);
        break;
    case OP_SEND: {
        const msgpack_object *id = map_get(&s->reply_obj, "id");
        const struct cmd_snap *c;

        if (!s->accepted)
            break;
        FUZZ_CHECK(b->exists && a->exists, "a command for a twin that does not exist");
        FUZZ_CHECK(r.dup || ref_cmd_name(r.cmd), "a command name twin_command_add must refuse");
        FUZZ_CHECK(b->len == a->len && memcmp(b->raw, a->raw, b->len) == 0,
                   "commands/send changed the twin document");
        FUZZ_CHECK(flags == 0, "commands/send: flags %u", flags);
        FUZZ_CHECK(id && id->type == MSGPACK_OBJECT_STR &&
                       !cmd_find(b, id->via.str.ptr, id->via.str.size),
                   "commands/send: the reply's id is not a new command");
        c = cmd_find(a, id->via.str.ptr, id->via.str.size);
        FUZZ_CHECK(c, "commands/send: the reply's id is not stored");
        FUZZ_CHECK(c->state == (a->doc.connected ? TWIN_CMD_SENT : TWIN_CMD_QUEUED),
                   "commands/send: a new command is %s for a twin %sconnected",
                   twin_command_state_name(c->state), a->doc.connected ? "" : "not ");
        FUZZ_CHECK(s->events >= 1, "commands/send: no event");
        FUZZ_CHECK(s->commands == (a->doc.connected ? 1u : 0u) &&
                       (!s->commands || str_eq(s->cmd_ids[0], id)),
                   "commands/send: %zu messages to the device", s->commands);
        break;
    }
    default:
        break;
    }
    if (s->accepted)
        goto done;
rejected:
    FUZZ_CHECK(!s->accepted, "accepted what had to be refused");
    FUZZ_CHECK(snap_same(before, after), "a rejected request (%" PRIu64 ") changed the store",
               code);
    FUZZ_CHECK(flags == 0 && s->events == 0 && s->commands == 0,
               "a rejected request published something");
    if (code == 400 || code == 413)
        FUZZ_CHECK(reports(h) == reports0 + 1, "a bad request not counted");
done:
    msgpack_zone_destroy(&z);
}

static void check_ack(struct hub *h, int dev, const struct bridge_msg *m, int rc,
                      const struct snap *before, const struct snap *after, const struct sent *s,
                      uint64_t reports0)
{
    const struct dev_snap *b = &before->d[dev], *a = &after->d[dev];
    msgpack_zone z;
    msgpack_object obj;
    char err[TWIN_ERR_LEN];
    const msgpack_object *id = NULL, *status = NULL;
    enum twin_command_state st = TWIN_CMD_NONE;
    bool valid;

    msgpack_zone_init(&z, 4096);
    valid = twin_input_decode(m->payload, m->len, &h->lim, &z, &obj, err) == 0 &&
            obj.type == MSGPACK_OBJECT_MAP;
    if (valid) {
        id = map_get(&obj, "id");
        status = map_get(&obj, "status");
        valid =
            id && id->type == MSGPACK_OBJECT_STR && status && status->type == MSGPACK_OBJECT_STR;
    }
    if (valid) {
        static const char *names[] = {"delivered", "succeeded", "failed"};
        static const enum twin_command_state states[] = {TWIN_CMD_DELIVERED, TWIN_CMD_SUCCEEDED,
                                                         TWIN_CMD_FAILED};
        for (int i = 0; i < 3; i++)
            if (status->via.str.size == strlen(names[i]) &&
                memcmp(status->via.str.ptr, names[i], status->via.str.size) == 0)
                st = states[i];
        valid = st != TWIN_CMD_NONE;
    }
    if (!valid)
        FUZZ_CHECK(rc < 0, "a malformed ack applied");
    if (rc < 0) {
        FUZZ_CHECK(snap_same(before, after), "a refused ack changed the store");
        FUZZ_CHECK(h->in.out.n == 0, "a refused ack queued %zu messages", h->in.out.n);
        FUZZ_CHECK(reports(h) == reports0 + 1, "a refused ack not counted");
        goto out;
    }
    FUZZ_CHECK(rc == 0, "commands_ack_handle: %d", rc);
    {
        const struct cmd_snap *cb = cmd_find(b, id->via.str.ptr, id->via.str.size),
                              *ca = cmd_find(a, id->via.str.ptr, id->via.str.size);

        FUZZ_CHECK(cb && ca, "an ack applied to no command");
        FUZZ_CHECK(ca->state == st, "acked %s, the command is %s", twin_command_state_name(st),
                   twin_command_state_name(ca->state));
        if (cb->state == st) {
            FUZZ_CHECK(snap_same(before, after) && h->in.out.n == 0,
                       "a repeated ack changed something");
        } else {
            FUZZ_CHECK(!twin_command_state_final(cb->state) && cb->state < st,
                       "an ack moved a command from %s to %s", twin_command_state_name(cb->state),
                       twin_command_state_name(st));
            FUZZ_CHECK(s->events == 1 && s->commands == 0, "an ack queued %zu events, %zu commands",
                       s->events, s->commands);
        }
        FUZZ_CHECK(b->exists && a->exists && b->len == a->len &&
                       memcmp(b->raw, a->raw, b->len) == 0,
                   "an ack changed the twin document");
    }
out:
    msgpack_zone_destroy(&z);
}

struct run {
    struct hub h;
    struct fuzz_part msgs[MAX_MSGS];
    size_t n;
};

static void one_message(struct run *r, size_t idx)
{
    struct hub *h = &r->h;
    const struct fuzz_part *part = &r->msgs[idx];
    int dev = part->p[0] & 3;
    enum op op = (enum op)((part->p[0] >> 2) & 7);
    bool retained = part->p[0] & 0x20;
    const uint8_t *p = part->p + 1;
    size_t n = part->n - 1, id_len = strlen(ids[dev]);
    char topic[BRIDGE_TOPIC_MAX], corr_buf[16], err[TWIN_ERR_LEN];
    char *resp = NULL, *topic_copy = NULL;
    void *payload = NULL;
    struct snap before, after;
    struct sent s;
    msgpack_zone z;
    uint64_t reports0 = reports(h);
    int rc;

    if (op == OP_TIMER) {
        int64_t at = hub_now_ms() + (n ? p[0] : 0) * 1000LL;
        uint64_t count = 0;

        rc = commands_expire(h->store, NULL, h->pub, &h->timer_out, at, &count, err);
        FUZZ_CHECK(rc == 0, "commands_expire: %d %s", rc, err);
        if (retained) {
            rc = commands_resend_connected(h->store, h->pub, &h->timer_out, &count, err);
            FUZZ_CHECK(rc == 0, "commands_resend_connected: %d %s", rc, err);
        }
        snap_take(h, &after);
        for (int d = 0; d < N_DEV; d++)
            for (size_t i = 0; i < after.d[d].ncmd; i++) {
                const struct cmd_snap *c = &after.d[d].cmd[i];

                FUZZ_CHECK(twin_command_state_final(c->state) || !c->expires || c->expires > at,
                           "command %s is %s past its deadline", c->id,
                           twin_command_state_name(c->state));
            }
        check_twins(&after);
        snap_free(&after);
        return;
    }

    struct bridge_msg m = {.qos = 1, .retained = retained};
    if (op <= OP_ACK && (part->p[0] & 0x40) && n > 0) {
        size_t rl = p[0] < n - 1 ? p[0] : n - 1;

        resp = exact_copy(p + 1, rl);
        m.response_topic = resp;
        m.response_topic_len = rl;
        p += 1 + rl;
        n -= 1 + rl;
    }
    if (op <= OP_ACK && (part->p[0] & 0x80)) {
        snprintf(corr_buf, sizeof corr_buf, "corr%02u", (unsigned)idx % 100);
        m.correlation = corr_buf;
        m.correlation_len = 6;
    }
    int tl = bridge_topic_build(&h->topics, kind_of[op], ids[dev], id_len, topic, sizeof topic);
    FUZZ_CHECK(tl > 0, "bridge_topic_build: %d", tl);
    topic_copy = exact_copy(topic, (size_t)tl); /* not terminated, as Paho may hand it */
    payload = exact_copy(p, n);
    m.topic = topic_copy;
    m.topic_len = (size_t)tl;
    m.payload = payload;
    m.len = n;
    /* what ingest_on_message does first */
    struct bridge_topic t;
    rc = bridge_topic_parse(&h->topics, topic_copy, (size_t)tl, &t, err);
    FUZZ_CHECK(rc == 0 && t.kind == kind_of[op], "bridge_topic_parse: %d %s", rc, err);

    snap_take(h, &before);
    msgpack_zone_init(&z, 4096);
    if (trace)
        fprintf(stderr, "fuzz_request: message %zu: %s op %d retained %d payload %zu\n", idx,
                ids[dev], op, retained, n);
    switch (op) {
    case OP_SET:
    case OP_SEND:
    case OP_GET:
    case OP_DELETE: {
        unsigned flags = requests_handle(&h->in, &m, &t);
        snap_take(h, &after);
        if (retained) {
            FUZZ_CHECK(flags == 0 && h->in.out.n == 0 && snap_same(&before, &after),
                       "a retained request was handled");
            break;
        }
        check_out(h, &h->in.out, dev, topic, resp, m.response_topic_len, m.correlation,
                  m.correlation_len, &z, &s);
        check_request(h, op, dev, &m, &before, &after, flags, &s, reports0);
        break;
    }
    case OP_ACK: {
        rc = commands_ack_handle(&h->in, &m, &t);
        snap_take(h, &after);
        if (retained) {
            FUZZ_CHECK(rc == 1 && h->in.out.n == 0 && snap_same(&before, &after),
                       "a retained ack was handled");
            break;
        }
        check_out(h, &h->in.out, dev, NULL, NULL, 0, NULL, 0, &z, &s);
        check_ack(h, dev, &m, rc, &before, &after, &s, reports0);
        break;
    }
    default:
        /* telemetry and status: the whole path, dispatch included, into the publisher */
        ingest_on_message(&h->in, &m);
        snap_take(h, &after);
        if (retained && op == OP_TELEMETRY)
            FUZZ_CHECK(snap_same(&before, &after), "retained telemetry applied");
        if (op == OP_STATUS && after.d[dev].exists && after.d[dev].doc.connected &&
            !snap_same(&before, &after))
            for (size_t i = 0; i < after.d[dev].ncmd; i++)
                FUZZ_CHECK(after.d[dev].cmd[i].state != TWIN_CMD_QUEUED,
                           "command %s still queued after the device came online",
                           after.d[dev].cmd[i].id);
        break;
    }
    outlist_reset(&h->in.out);
    check_twins(&after);
    msgpack_zone_destroy(&z);
    snap_free(&before);
    snap_free(&after);
    free(payload);
    free(topic_copy);
    free(resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    struct run r;

    if (!init) {
        init = true;
        trace = getenv("FUZZ_TRACE") != NULL;
        log_set_level(trace ? LOG_DEBUG : LOG_ERROR);
    }
    if (size < 1)
        return 0;
    memset(&r, 0, sizeof r);
    r.h.lim.max_depth = data[0] & 1 ? TWIN_DEPTH_CAP : 16;
    r.h.lim.max_keys = data[0] & 2 ? 8 : 64;
    r.h.lim.max_payload = data[0] & 4 ? 256 : 4096;
    r.h.json = data[0] & 8;
    r.n = fuzz_split(data + 1, size - 1, r.msgs, MAX_MSGS);
    hub_open(&r.h);
    for (size_t i = 0; i < r.n; i++)
        if (r.msgs[i].n > 0)
            one_message(&r, i);
    hub_close(&r.h);
    return 0;
}
