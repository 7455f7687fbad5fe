/* shadow: AWS IoT Device Shadow mode (aws.shadow: true). It owns the mapping between AWS's
 * shadow documents and twins - requests on $aws/things/{thing}/shadow/... and their replies,
 * update/documents, and the update/delta messages the publisher sends - and nothing of how a
 * twin changes (twins/shadow.c, twin_delete) or how topics are spelt (bridge/aws.c).
 *
 * The mapping (README, "AWS IoT Device Shadow mode", says it for operators):
 * - The classic shadow of thing {id} is twin {id}: state.reported is `reported`, state.desired
 *   `desired`, state.delta `delta`, version the twin's version, metadata the twin's meta
 *   timestamps in seconds. A twinhub service (twins/{id}/desired/set) and an AWS device see
 *   one twin.
 * - Named shadow {name} of thing {id} lives in the same twin, at reported.$shadows.{name} and
 *   desired.$shadows.{name} (its delta at delta.$shadows.{name}); the classic shadow's views
 *   leave $shadows out. It exists while either section holds it. One twin per device keeps the
 *   broker's ACL (a device reaches only $aws/things/{its id}/...) and the twin's owner the
 *   same; the price is one version for all of a thing's shadows.
 * - Deleting the classic shadow deletes the twin (as twins/{id}/delete: history, commands and
 *   named shadows too); deleting a named shadow removes its two subtrees (a change, version
 *   + 1).
 *
 * Choices where AWS's documents leave room:
 * - Payloads must be JSON objects in UTF-8 (415 otherwise), within limits.max_payload (413),
 *   limits.max_depth (400) and limits.max_keys (413). Top-level members other than state,
 *   version and clientToken are refused (400), as the hub's own requests refuse unknown keys so
 *   that a misspelt `version` cannot make a write unconditional; thingName and shadowName, which
 *   the AWS IoT Device SDK v2 puts in every request, are ignored (the topic names the thing).
 * - A missing twin counts as version 0, or as its tombstone's version after a deletion, so a
 *   client (the v1 SDK's thingShadow) that saw the deletion's version goes on from it.
 * - get and delete ignore `version`, as AWS does: the v1 SDK's thingShadow sends the last one
 *   it saw with every operation, and the shared version moves with twinhub's own changes.
 * - update/delta is published by the publisher from the committed twin, whenever it publishes
 *   the twin's delta to devices/{id}/desired (the delta changed, whoever changed it) and after
 *   an update through the shadow topics that wrote desired, when the delta is not empty. It
 *   carries no clientToken. update/documents is published for updates through the shadow
 *   topics only (twinhub's own changes are on twins/{id}/state).
 * - 401 and 403 are the broker's (its ACL drops what a client may not publish), 429 is never
 *   sent (one request at a time per hub: nothing is ever in flight).
 *
 * Threads: shadow_on_message and shadow_handle run on Paho's receive thread (ingest's);
 * shadow_publish_delta on the publisher's thread. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "hub.h"
#include "log.h"
#include "shadow.h"

#define TOKEN_MAX 64 /* bytes of a clientToken (AWS's limit) */
#define NAMED SHADOW_NAMED_KEY
#define NAMED_LEN (sizeof(NAMED) - 1)

/* AWS's messages (Device Shadow error messages). */
#define M_JSON "Invalid JSON"
#define M_NO_STATE "Missing required node: state"
#define M_STATE "State node must be an object"
#define M_DESIRED "Desired node must be an object"
#define M_REPORTED "Reported node must be an object"
#define M_VERSION "Invalid version"
#define M_TOKEN "Invalid clientToken"
#define M_NODE "State contains an invalid node"
#define M_CONFLICT "Version conflict"
#define M_SIZE "The payload exceeds the maximum size allowed"
#define M_ENCODING "Unsupported documented encoding; supported encoding is UTF-8"
#define M_INTERNAL "Internal service failure"

struct shadow_rq {
    struct ingest *in;
    const struct bridge_msg *m;
    struct bridge_aws_topic t;
    struct bridge_topic bt; /* the thing, as ingest_fatal names it */
    const char *what;       /* "update", "get", "delete" */
    int64_t now;
    msgpack_zone *z; /* what replies are built in, outside a transaction */

    /* the request */
    bool has_token;
    const char *token;
    size_t token_len;
    uint64_t version;                         /* TWIN_VERSION_ANY: none */
    const msgpack_object *state;              /* as it came (a map, or nil) */
    const msgpack_object *desired, *reported; /* maps, or NULL */
    bool desired_null, reported_null;         /* the section is to be cleared */

    /* the outcome, set by the transaction */
    bool delta_changed, wrote_desired;
    unsigned rule_flags;
    char msg[TWIN_ERR_LEN]; /* a 404's message */
    char err[TWIN_ERR_LEN]; /* the detail reported on hub/errors and logged */
};

/* ---------------------------------------------------------------------------------------------
 * Building documents: msgpack_object trees in a zone, written out as JSON (twin_json_write)
 * ------------------------------------------------------------------------------------------ */

static msgpack_object o_str(const char *s, size_t n)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)n;
    return o;
}

static msgpack_object o_uint(uint64_t v)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER};
    o.via.u64 = v;
    return o;
}

static msgpack_object o_int(int64_t v)
{
    if (v >= 0)
        return o_uint((uint64_t)v);
    msgpack_object o = {.type = MSGPACK_OBJECT_NEGATIVE_INTEGER};
    o.via.i64 = v;
    return o;
}

static const msgpack_object o_nil = {.type = MSGPACK_OBJECT_NIL};

/* An empty map with room for `cap` entries. Returns 0 or -ENOMEM. */
static int o_map(msgpack_zone *z, msgpack_object *o, uint32_t cap)
{
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = 0;
    o->via.map.ptr = NULL;
    if (cap && !(o->via.map.ptr = msgpack_zone_malloc(z, cap * sizeof(msgpack_object_kv))))
        return -ENOMEM;
    return 0;
}

/* Appends key -> v to a map made by o_map (within its room). */
static void o_put(msgpack_object *map, msgpack_object key, msgpack_object v)
{
    msgpack_object_kv *kv = &map->via.map.ptr[map->via.map.size++];
    kv->key = key;
    kv->val = v;
}

static void o_putk(msgpack_object *map, const char *key, msgpack_object v)
{
    o_put(map, o_str(key, strlen(key)), v);
}

static bool is_key(const msgpack_object *k, const char *s, size_t n)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           (n == 0 || memcmp(k->via.str.ptr, s, n) == 0);
}

static bool empty(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_NIL || (o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 0);
}

/* AWS's metadata of value v: the same shape, every leaf {"timestamp": seconds}; arrays give an
 * array of their elements' metadata. `m` is twinhub's meta of v (a map of the same shape, or a
 * leaf's ms timestamp; NULL: none), `ts_ms` the time of leaves it does not name. */
static int meta_of(msgpack_zone *z, const msgpack_object *v, const msgpack_object *m, int64_t ts_ms,
                   msgpack_object *out)
{
    int64_t t = ts_ms;
    if (m && m->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        t = m->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)m->via.u64;
    else if (m && m->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        t = m->via.i64;
    const msgpack_object *mm = m && m->type == MSGPACK_OBJECT_MAP ? m : NULL;
    if (v->type == MSGPACK_OBJECT_MAP) {
        if (o_map(z, out, v->via.map.size) < 0)
            return -ENOMEM;
        for (uint32_t i = 0; i < v->via.map.size; i++) {
            const msgpack_object_kv *kv = &v->via.map.ptr[i];
            const msgpack_object *cm = NULL;
            if (mm && kv->key.type == MSGPACK_OBJECT_STR)
                cm = twin_value_get(mm, kv->key.via.str.ptr, kv->key.via.str.size);
            msgpack_object c;
            if (meta_of(z, &kv->val, cm, t, &c) < 0)
                return -ENOMEM;
            o_put(out, kv->key, c);
        }
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_ARRAY) {
        uint32_t n = v->via.array.size;
        out->type = MSGPACK_OBJECT_ARRAY;
        out->via.array.size = n;
        out->via.array.ptr = n ? msgpack_zone_malloc(z, n * sizeof(msgpack_object)) : NULL;
        if (n && !out->via.array.ptr)
            return -ENOMEM;
        for (uint32_t i = 0; i < n; i++)
            if (meta_of(z, &v->via.array.ptr[i], NULL, t, &out->via.array.ptr[i]) < 0)
                return -ENOMEM;
        return 0;
    }
    if (o_map(z, out, 1) < 0)
        return -ENOMEM;
    o_putk(out, "timestamp", o_int(t / 1000));
    return 0;
}

/* The part of a twin section (reported, desired, delta, or their meta) that shadow `t` sees:
 * the section without $shadows for the classic shadow, $shadows.{name} for a named one. NIL
 * when there is none. */
static int part_of(msgpack_zone *z, const msgpack_object *sec, const struct bridge_aws_topic *t,
                   msgpack_object *out)
{
    *out = o_nil;
    if (sec->type != MSGPACK_OBJECT_MAP)
        return 0;
    const msgpack_object *named = twin_value_get(sec, NAMED, NAMED_LEN);
    if (t->name) {
        const msgpack_object *p = named ? twin_value_get(named, t->name, t->name_len) : NULL;
        if (p)
            *out = *p;
        return 0;
    }
    if (!named) {
        *out = *sec;
        return 0;
    }
    if (o_map(z, out, sec->via.map.size) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < sec->via.map.size; i++)
        if (!is_key(&sec->via.map.ptr[i].key, NAMED, NAMED_LEN))
            o_put(out, sec->via.map.ptr[i].key, sec->via.map.ptr[i].val);
    return 0;
}

/* Whether shadow `t` exists in twin d: the classic one as long as the twin does, a named one
 * while reported or desired holds it. */
static bool named_exists(const struct twin_doc *d, const struct bridge_aws_topic *t)
{
    msgpack_object p;
    if (!t->name)
        return true;
    if (part_of(NULL, &d->reported, t, &p) == 0 && p.type != MSGPACK_OBJECT_NIL)
        return true;
    return part_of(NULL, &d->desired, t, &p) == 0 && p.type != MSGPACK_OBJECT_NIL;
}

/* {state: {desired?, reported?, delta?}, metadata: {desired?, reported?}} of shadow t in twin
 * d, empty sections left out (as AWS does). */
static int state_of(msgpack_zone *z, const struct twin_doc *d, const struct bridge_aws_topic *t,
                    bool with_delta, msgpack_object *state, msgpack_object *metadata)
{
    msgpack_object des, rep, del = o_nil, mdes, mrep;
    if (part_of(z, &d->desired, t, &des) < 0 || part_of(z, &d->reported, t, &rep) < 0 ||
        (with_delta && part_of(z, &d->delta, t, &del) < 0) ||
        part_of(z, &d->meta_desired, t, &mdes) < 0 || part_of(z, &d->meta_reported, t, &mrep) < 0)
        return -ENOMEM;
    if (o_map(z, state, 3) < 0 || o_map(z, metadata, 2) < 0)
        return -ENOMEM;
    msgpack_object m;
    if (!empty(&des)) {
        o_putk(state, "desired", des);
        if (meta_of(z, &des, &mdes, 0, &m) < 0)
            return -ENOMEM;
        o_putk(metadata, "desired", m);
    }
    if (!empty(&rep)) {
        o_putk(state, "reported", rep);
        if (meta_of(z, &rep, &mrep, 0, &m) < 0)
            return -ENOMEM;
        o_putk(metadata, "reported", m);
    }
    if (!empty(&del))
        o_putk(state, "delta", del);
    return 0;
}

/* Adds timestamp (seconds) and clientToken (when the request had a valid one). */
static void put_tail(struct shadow_rq *rq, msgpack_object *doc)
{
    o_putk(doc, "timestamp", o_int(rq->now / 1000));
    if (rq->has_token)
        o_putk(doc, "clientToken", o_str(rq->token, rq->token_len));
}

/* Queues doc as JSON on topic, in the outlist (published after the commit). */
static int emit(struct outlist *ol, const msgpack_object *doc, const char *topic)
{
    msgpack_sbuffer js;
    msgpack_sbuffer_init(&js);
    int rc = twin_json_write(doc, &js);
    if (rc == 0) {
        /* the packer writes these bytes as they are, and a payload that is not for services
         * is queued as packed: the JSON text goes out untouched */
        msgpack_packer *pk = outlist_begin(ol);
        msgpack_pack_str_body(pk, js.data, js.size);
        rc = outlist_end(ol, PUB_CLASS_REPLY, topic, false, 1, NULL, 0);
    }
    msgpack_sbuffer_destroy(&js);
    return rc;
}

static int emit_reply(struct shadow_rq *rq, int reply, const msgpack_object *doc)
{
    char topic[BRIDGE_TOPIC_MAX + 1];
    if (bridge_aws_topic_build(&rq->t, reply, topic, sizeof(topic)) < 0)
        return -EINVAL; /* thing and name were validated by the parse: cannot happen */
    return emit(&rq->in->out, doc, topic);
}

/* ---------------------------------------------------------------------------------------------
 * Replies and rejections
 * ------------------------------------------------------------------------------------------ */

/* twinhub_replies_total{code}: 415 counts with the 400s, an unlisted code as 500. */
static void count_reply(struct ingest *in, int code)
{
    int i = HUB_REPLY_CODES - 1;
    if (code == 415)
        code = 400;
    for (int k = 0; k < HUB_REPLY_CODES; k++)
        if (hub_reply_codes[k] == code)
            i = k;
    atomic_fetch_add_explicit(&in->stats.replies[i], 1, memory_order_relaxed);
}

/* Leaves {code, message, timestamp, clientToken?} on .../rejected in in->out (nothing was
 * committed); counts it, and reports bad input (with `detail`, or the message) on hub/errors. */
static void reject(struct shadow_rq *rq, int code, const char *message, enum report_kind kind,
                   const char *detail)
{
    struct ingest *in = rq->in;
    msgpack_object doc;
    outlist_reset(&in->out);
    msgpack_zone_clear(rq->z);
    int rc = o_map(rq->z, &doc, 4);
    if (rc == 0) {
        o_putk(&doc, "code", o_int(code));
        o_putk(&doc, "message", o_str(message, strlen(message)));
        put_tail(rq, &doc);
        rc = emit_reply(rq, BRIDGE_AWS_REJECTED, &doc);
    }
    if (rc < 0)
        log_warn_limited("cannot build a reply", "what=shadow/%s thing=%.*s reason=\"no memory\"", rq->what,
                 (int)rq->t.thing_len, rq->t.thing);
    const char *why = detail && detail[0] ? detail : message;
    char q[TWIN_ERR_LEN + 16];
    log_debug("shadow request rejected", "what=%s thing=%.*s shadow=%.*s code=%d message=%s",
              rq->what, (int)rq->t.thing_len, rq->t.thing, (int)rq->t.name_len,
              rq->t.name ? rq->t.name : "", code, log_quote(q, sizeof(q), why, strlen(why)));
    if (code == 400 || code == 413 || code == 415)
        report_reject(in->report, kind, rq->m->topic, rq->m->topic_len, why);
    atomic_fetch_add(&in->stats.requests_rejected, 1);
    count_reply(in, code);
}

static int not_found(struct shadow_rq *rq)
{
    if (rq->t.name)
        snprintf(rq->msg, sizeof(rq->msg), "No shadow exists with name: '%.*s'",
                 (int)rq->t.name_len, rq->t.name);
    else
        snprintf(rq->msg, sizeof(rq->msg), "No shadow exists with name: '%.*s'",
                 (int)rq->t.thing_len, rq->t.thing);
    return -ENOENT;
}

/* After a failed transaction: a rejection becomes a reply, anything else ends the hub. */
static void failed(struct shadow_rq *rq, int rc, const char *store_err)
{
    switch (rc) {
    case -EINVAL:
        reject(rq, 400, M_NODE, REPORT_INVALID, rq->err);
        return;
    case -EBUSY:
        reject(rq, 409, M_CONFLICT, REPORT_INVALID, rq->err);
        return;
    case -E2BIG:
        /* limits.max_twin_size (AWS's message), or limits.max_twins (ours: AWS has no such) */
        reject(rq, 413, strstr(rq->err, "max_twins") ? rq->err : M_SIZE, REPORT_SIZE, rq->err);
        return;
    case -ENOENT:
        if (!rq->msg[0])
            not_found(rq);
        reject(rq, 404, rq->msg, REPORT_INVALID, NULL);
        return;
    case -EBADMSG:
        log_error("stored twin unreadable; shadow request not applied",
                  "what=%s thing=%.*s err=\"%s\"", rq->what, (int)rq->t.thing_len, rq->t.thing,
                  rq->err);
        reject(rq, 500, M_INTERNAL, REPORT_INVALID, rq->err);
        return;
    default:
        ingest_fatal(&rq->bt, rq->what, rc, store_err && store_err[0] ? store_err : rq->err);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------------------------ */

/* A null inside an array anywhere under v (AWS: "Arrays can't have null values"); the path
 * into err. */
static bool null_in_array(const msgpack_object *v, bool in_array, char *path, size_t len,
                          size_t cap)
{
    if (v->type == MSGPACK_OBJECT_NIL)
        return in_array;
    if (v->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            int w = snprintf(path + len, cap - len, "[%u]", (unsigned)i);
            size_t nl = w > 0 && (size_t)w < cap - len ? len + (size_t)w : len;
            if (null_in_array(&v->via.array.ptr[i], true, path, nl, cap))
                return true;
        }
        path[len] = '\0';
        return false;
    }
    if (v->type != MSGPACK_OBJECT_MAP)
        return false;
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key;
        size_t nl = len;
        if (k->type == MSGPACK_OBJECT_STR) {
            int w = snprintf(path + len, cap - len, ".%.*s", (int)k->via.str.size, k->via.str.ptr);
            nl = w > 0 && (size_t)w < cap - len ? len + (size_t)w : len;
        }
        if (null_in_array(&v->via.map.ptr[i].val, false, path, nl, cap))
            return true;
    }
    path[len] = '\0';
    return false;
}

/* Checks one section of the request's state (desired or reported). Returns 0 or a rejection
 * (code, message) with the detail in rq->err. */
static int section(struct shadow_rq *rq, const char *name, const msgpack_object *v,
                   const msgpack_object **out, bool *null, const char **message)
{
    char path[200];
    if (v->type == MSGPACK_OBJECT_NIL) {
        *null = true;
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_MAP) {
        *message = name[0] == 'd' ? M_DESIRED : M_REPORTED;
        snprintf(rq->err, sizeof(rq->err), "state.%s must be an object", name);
        return 400;
    }
    if (!rq->t.name && twin_value_get(v, NAMED, NAMED_LEN)) {
        *message = M_NODE;
        snprintf(rq->err, sizeof(rq->err),
                 "state.%s.%s is where a thing's named shadows are kept: use "
                 "$aws/things/%.*s/shadow/name/{name}/update",
                 name, NAMED, (int)rq->t.thing_len, rq->t.thing);
        return 400;
    }
    int n = snprintf(path, sizeof(path), "state.%s", name);
    if (null_in_array(v, false, path, (size_t)n, sizeof(path))) {
        *message = M_NODE;
        snprintf(rq->err, sizeof(rq->err), "%s: arrays can't hold null", path);
        return 400;
    }
    *out = v;
    return 0;
}

/* Reads the request map into rq: clientToken first, so that any rejection can echo it.
 * Returns 0, or 400 with *message (AWS's) and the detail in rq->err. */
static int parse(struct shadow_rq *rq, const msgpack_object *o, const char **message)
{
    const msgpack_object_map *map = &o->via.map;
    const msgpack_object *state = NULL;
    bool update = rq->t.op == BRIDGE_AWS_UPDATE;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (!is_key(k, "clientToken", 11))
            continue;
        if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > TOKEN_MAX) {
            *message = M_TOKEN;
            snprintf(rq->err, sizeof(rq->err), "clientToken must be a string of at most %d bytes",
                     TOKEN_MAX);
            return 400;
        }
        rq->has_token = true;
        rq->token = v->via.str.ptr;
        rq->token_len = v->via.str.size;
    }
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (is_key(k, "clientToken", 11) || is_key(k, "thingName", 9) ||
            is_key(k, "shadowName", 10) || (is_key(k, "version", 7) && !update))
            continue;
        if (is_key(k, "version", 7)) {
            if (v->type == MSGPACK_OBJECT_NIL)
                continue;
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 >= TWIN_VERSION_ANY) {
                *message = M_VERSION;
                snprintf(rq->err, sizeof(rq->err), "version must be a non-negative integer");
                return 400;
            }
            rq->version = v->via.u64;
        } else if (is_key(k, "state", 5) && update) {
            state = v;
        } else {
            bool s = k->type == MSGPACK_OBJECT_STR;
            snprintf(rq->err, sizeof(rq->err), "Unknown node: '%.*s' (%s takes %s)",
                     s ? (int)(k->via.str.size > 64 ? 64 : k->via.str.size) : 1,
                     s ? k->via.str.ptr : "?", rq->what,
                     update ? "state, version and clientToken" : "clientToken; version is ignored");
            *message = rq->err;
            return 400;
        }
    }
    if (!update)
        return 0;
    if (!state) {
        *message = M_NO_STATE;
        return 400;
    }
    rq->state = state;
    if (state->type == MSGPACK_OBJECT_NIL) {
        rq->desired_null = rq->reported_null = true;
        return 0;
    }
    if (state->type != MSGPACK_OBJECT_MAP) {
        *message = M_STATE;
        return 400;
    }
    for (uint32_t i = 0; i < state->via.map.size; i++) {
        const msgpack_object *k = &state->via.map.ptr[i].key, *v = &state->via.map.ptr[i].val;
        int code = 0;
        if (is_key(k, "desired", 7))
            code = section(rq, "desired", v, &rq->desired, &rq->desired_null, message);
        else if (is_key(k, "reported", 8))
            code = section(rq, "reported", v, &rq->reported, &rq->reported_null, message);
        else {
            *message = M_NODE;
            snprintf(rq->err, sizeof(rq->err), "state.%.*s: a state holds desired and reported",
                     k->type == MSGPACK_OBJECT_STR
                         ? (int)(k->via.str.size > 64 ? 64 : k->via.str.size)
                         : 1,
                     k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?");
            code = 400;
        }
        if (code)
            return code;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Patches: what an update or a delete writes into the twin
 * ------------------------------------------------------------------------------------------ */

/* {key: nil} for every key of `m` (a map, or nothing) but $shadows: what clearing the classic
 * shadow's section writes. */
static int clearing(msgpack_zone *z, const msgpack_object *m, bool keep_named, msgpack_object *out)
{
    uint32_t n = m && m->type == MSGPACK_OBJECT_MAP ? m->via.map.size : 0;
    if (o_map(z, out, n) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        if (!keep_named || !is_key(&m->via.map.ptr[i].key, NAMED, NAMED_LEN))
            o_put(out, m->via.map.ptr[i].key, o_nil);
    return 0;
}

/* {$shadows: {name: v}}. */
static int wrap(msgpack_zone *z, const struct bridge_aws_topic *t, msgpack_object v,
                msgpack_object *out)
{
    msgpack_object inner;
    if (o_map(z, &inner, 1) < 0 || o_map(z, out, 1) < 0)
        return -ENOMEM;
    o_put(&inner, o_str(t->name, t->name_len), v);
    o_putk(out, NAMED, inner);
    return 0;
}

/* The patch an update writes into one section of twin d (`sec`: d's section), or none. */
static int update_patch(struct shadow_rq *rq, msgpack_zone *z, const msgpack_object *sec,
                        const msgpack_object *given, bool null, msgpack_object *out, bool *has)
{
    *has = false;
    msgpack_object part, p;
    if (given && !null) {
        *has = true;
        if (rq->t.name)
            return wrap(z, &rq->t, *given, out);
        *out = *given;
        return 0;
    }
    if (!null)
        return 0;
    if (!rq->t.name) {
        *has = true;
        return clearing(z, sec, true, out);
    }
    if (part_of(z, sec, &rq->t, &part) < 0)
        return -ENOMEM;
    if (part.type == MSGPACK_OBJECT_NIL)
        return 0; /* nothing to clear */
    /* {k: nil, ...} empties a map; over anything else the empty map replaces it */
    *has = true;
    if (clearing(z, &part, false, &p) < 0)
        return -ENOMEM;
    return wrap(z, &rq->t, p, out);
}

/* The patch that deletes named shadow t from one section of twin d: $shadows.{name} goes, and
 * $shadows with it when it held nothing else. */
static int delete_patch(msgpack_zone *z, const msgpack_object *sec,
                        const struct bridge_aws_topic *t, msgpack_object *out, bool *has)
{
    const msgpack_object *named =
        sec->type == MSGPACK_OBJECT_MAP ? twin_value_get(sec, NAMED, NAMED_LEN) : NULL;
    *has = named && named->type == MSGPACK_OBJECT_MAP &&
           twin_value_get(named, t->name, t->name_len) != NULL;
    if (!*has)
        return 0;
    if (named->via.map.size == 1) {
        if (o_map(z, out, 1) < 0)
            return -ENOMEM;
        o_putk(out, NAMED, o_nil);
        return 0;
    }
    return wrap(z, t, o_nil, out);
}

/* ---------------------------------------------------------------------------------------------
 * The requests
 * ------------------------------------------------------------------------------------------ */

/* Runs the rules over what this change wrote (as requests.c and ingest.c do). */
static int rules(struct shadow_rq *rq, struct twin_txn *txn, const msgpack_object *rp,
                 const msgpack_object *dp, bool delta)
{
    struct ingest *in = rq->in;
    if (!hub_rules_active(in->rules))
        return 0;
    rules_changes_reset(&in->run.changes);
    if (rp)
        rules_changes_add_patch(&in->run.changes, "reported", rp);
    if (dp)
        rules_changes_add_patch(&in->run.changes, "desired", dp);
    if (delta)
        rules_changes_add(&in->run.changes, "delta", 5);
    return hub_rules_on_change(in->rules, &in->run, txn, rq->bt.id, rq->bt.id_len, NULL, rq->now,
                               &in->out, &rq->rule_flags, rq->err);
}

/* {state, metadata, version} of shadow t in twin d (update/documents' previous and current). */
static int snapshot(msgpack_zone *z, const struct twin_doc *d, const struct bridge_aws_topic *t,
                    bool exists, msgpack_object *out)
{
    msgpack_object state, meta;
    if (o_map(z, out, 3) < 0)
        return -ENOMEM;
    if (exists) {
        if (state_of(z, d, t, false, &state, &meta) < 0)
            return -ENOMEM;
    } else if (o_map(z, &state, 0) < 0 || o_map(z, &meta, 0) < 0) {
        return -ENOMEM;
    }
    o_putk(out, "state", state);
    o_putk(out, "metadata", meta);
    o_putk(out, "version", o_uint(d->version));
    return 0;
}

static int update_fn(struct twin_txn *txn, void *ctx)
{
    struct shadow_rq *rq = ctx;
    struct ingest *in = rq->in;
    msgpack_zone *z = twin_txn_zone(txn);
    struct twin_doc prev, cur;
    struct twin_shadow_result res;
    msgpack_object rp, dp;
    bool has_r, has_d;
    outlist_start(&in->out, txn);
    rq->rule_flags = 0;
    rq->msg[0] = '\0';

    int rc = twin_get(txn, rq->bt.id, rq->bt.id_len, &prev, rq->err);
    bool existed = rc == 0;
    if (rc < 0 && rc != -ENOENT)
        return rc;
    static const msgpack_object none = {.type = MSGPACK_OBJECT_NIL};
    const msgpack_object *prep = existed ? &prev.reported : &none;
    const msgpack_object *pdes = existed ? &prev.desired : &none;
    if (update_patch(rq, z, prep, rq->reported, rq->reported_null, &rp, &has_r) < 0 ||
        update_patch(rq, z, pdes, rq->desired, rq->desired_null, &dp, &has_d) < 0)
        return -ENOMEM;
    bool shadow_existed = existed && (!rq->t.name || named_exists(&prev, &rq->t));
    if (rq->t.name && !shadow_existed && !has_r && !has_d) {
        /* state: null (or {}) for a named shadow not there yet: it exists from now on, empty */
        msgpack_object e;
        if (o_map(z, &e, 0) < 0 || wrap(z, &rq->t, e, &rp) < 0)
            return -ENOMEM;
        has_r = true;
    }
    rc = twin_shadow_apply(txn, rq->bt.id, rq->bt.id_len, has_r ? &rp : NULL, has_d ? &dp : NULL,
                           rq->version, rq->now, &res, rq->err);
    if (rc < 0)
        return rc;
    rq->delta_changed = res.delta_changed;
    rq->wrote_desired = has_d;
    if ((rc = rules(rq, txn, has_r ? &rp : NULL, has_d ? &dp : NULL, res.delta_changed)) < 0)
        return rc;
    if ((rc = twin_get(txn, rq->bt.id, rq->bt.id_len, &cur, rq->err)) < 0)
        return rc;

    /* update/accepted: the request's state as it came, its metadata, the committed version */
    msgpack_object doc, meta, m;
    if (o_map(z, &doc, 5) < 0 || o_map(z, &meta, 2) < 0)
        return -ENOMEM;
    o_putk(&doc, "state", *rq->state);
    if (rq->state->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < rq->state->via.map.size; i++) {
            const msgpack_object_kv *kv = &rq->state->via.map.ptr[i];
            if (meta_of(z, &kv->val, NULL, rq->now, &m) < 0)
                return -ENOMEM;
            o_put(&meta, kv->key, m);
        }
    }
    o_putk(&doc, "metadata", meta);
    o_putk(&doc, "version", o_uint(cur.version));
    put_tail(rq, &doc);
    if ((rc = emit_reply(rq, BRIDGE_AWS_ACCEPTED, &doc)) < 0)
        return rc;

    /* update/documents: the shadow before and after */
    msgpack_object before, after;
    if (snapshot(z, &res.before, &rq->t, shadow_existed, &before) < 0 ||
        snapshot(z, &cur, &rq->t, true, &after) < 0 || o_map(z, &doc, 4) < 0)
        return -ENOMEM;
    o_putk(&doc, "previous", before);
    o_putk(&doc, "current", after);
    put_tail(rq, &doc);
    return emit_reply(rq, BRIDGE_AWS_DOCUMENTS, &doc);
}

static int delete_fn(struct twin_txn *txn, void *ctx)
{
    struct shadow_rq *rq = ctx;
    struct ingest *in = rq->in;
    msgpack_zone *z = twin_txn_zone(txn);
    uint64_t version;
    int rc;
    outlist_start(&in->out, txn);
    rq->rule_flags = 0;
    rq->msg[0] = '\0';
    if (!rq->t.name) {
        struct twin_delete_result res;
        rc = twin_delete(txn, rq->bt.id, rq->bt.id_len, rq->version, &res, rq->err);
        if (rc == -ENOENT)
            return not_found(rq);
        if (rc < 0 || (rc = hub_rules_dispatch_deleted(in->rules, txn, rq->bt.id, rq->bt.id_len,
                                                       rq->now, &in->out, rq->err)) < 0)
            return rc;
        version = res.version;
    } else {
        struct twin_doc prev, cur;
        struct twin_shadow_result res;
        msgpack_object rp, dp;
        bool has_r, has_d;
        rc = twin_get(txn, rq->bt.id, rq->bt.id_len, &prev, rq->err);
        if (rc == -ENOENT)
            return not_found(rq);
        if (rc < 0)
            return rc;
        if (delete_patch(z, &prev.reported, &rq->t, &rp, &has_r) < 0 ||
            delete_patch(z, &prev.desired, &rq->t, &dp, &has_d) < 0)
            return -ENOMEM;
        if (!has_r && !has_d)
            return not_found(rq);
        rc = twin_shadow_apply(txn, rq->bt.id, rq->bt.id_len, has_r ? &rp : NULL,
                               has_d ? &dp : NULL, rq->version, rq->now, &res, rq->err);
        if (rc < 0)
            return rc;
        rq->delta_changed = res.delta_changed;
        if ((rc = rules(rq, txn, has_r ? &rp : NULL, has_d ? &dp : NULL, res.delta_changed)) < 0)
            return rc;
        if ((rc = twin_get(txn, rq->bt.id, rq->bt.id_len, &cur, rq->err)) < 0)
            return rc;
        version = cur.version;
    }
    msgpack_object doc;
    if (o_map(z, &doc, 3) < 0)
        return -ENOMEM;
    o_putk(&doc, "version", o_uint(version));
    put_tail(rq, &doc);
    return emit_reply(rq, BRIDGE_AWS_ACCEPTED, &doc);
}

/* get: a read transaction; the reply is the committed document. Returns 0 or as failed(). */
static int get(struct shadow_rq *rq)
{
    struct ingest *in = rq->in;
    struct twin_txn *txn;
    struct twin_doc d;
    char err[TWIN_ERR_LEN] = "";
    outlist_reset(&in->out);
    int rc = twin_store_read_begin(in->store, &txn, err);
    if (rc < 0)
        ingest_fatal(&rq->bt, rq->what, rc, err);
    msgpack_zone *z = twin_txn_zone(txn);
    rc = twin_get(txn, rq->bt.id, rq->bt.id_len, &d, rq->err);
    if (rc == 0 && rq->t.name && !named_exists(&d, &rq->t))
        rc = -ENOENT;
    if (rc == -ENOENT)
        not_found(rq);
    if (rc == 0) {
        msgpack_object doc, state, meta;
        if (state_of(z, &d, &rq->t, true, &state, &meta) < 0 || o_map(z, &doc, 5) < 0) {
            rc = -ENOMEM;
        } else {
            o_putk(&doc, "state", state);
            o_putk(&doc, "metadata", meta);
            o_putk(&doc, "version", o_uint(d.version));
            put_tail(rq, &doc);
            rc = emit_reply(rq, BRIDGE_AWS_ACCEPTED, &doc);
        }
    }
    twin_store_read_end(txn);
    if (rc == -ENOMEM)
        ingest_fatal(&rq->bt, rq->what, rc, "out of memory");
    return rc;
}

static const char *const op_names[] = {"update", "get", "delete"};

unsigned shadow_handle(struct ingest *in, const struct bridge_msg *m)
{
    struct shadow_rq rq = {.in = in, .m = m, .version = TWIN_VERSION_ANY, .now = hub_now_ms()};
    char terr[BRIDGE_ERR_LEN];
    unsigned flags = 0;
    outlist_reset(&in->out);
    if (bridge_aws_topic_parse(m->topic, m->topic_len, &rq.t, terr) < 0) {
        /* never a reply to a topic we would have to build from a bad name */
        report_reject(in->report, REPORT_TOPIC, m->topic, m->topic_len, terr);
        return 0;
    }
    if (m->retained) {
        /* a replay by the broker at every subscribe of the hub */
        atomic_fetch_add(&in->stats.retained, 1);
        return 0;
    }
    atomic_fetch_add(&in->stats.requests, 1);
    rq.what = op_names[rq.t.op];
    rq.bt.kind = BRIDGE_T_UNKNOWN;
    rq.bt.id = rq.t.thing;
    rq.bt.id_len = rq.t.thing_len;
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 2048))
        ingest_fatal(&rq.bt, rq.what, -ENOMEM, "out of memory");
    rq.z = &z;

    /* JSON objects only (get and delete may come empty), within the limits */
    struct twin_limits lim = ingest_limits(in);
    const unsigned char *p = m->payload;
    size_t i = 0;
    while (i < m->len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    msgpack_object obj = {.type = MSGPACK_OBJECT_MAP};
    const char *message = NULL;
    int code = 0, rc;
    char depth[96];
    if (i == m->len && rq.t.op != BRIDGE_AWS_UPDATE) {
        /* empty: nothing to read */
    } else if (m->len > lim.max_payload) {
        snprintf(rq.err, sizeof(rq.err), "payload of %zu bytes is above limits.max_payload %zu",
                 m->len, lim.max_payload);
        reject(&rq, 413, M_SIZE, REPORT_SIZE, rq.err);
        goto out;
    } else if (!twin_utf8_valid(p, m->len)) {
        reject(&rq, 415, M_ENCODING, REPORT_MALFORMED, "payload is not UTF-8");
        goto out;
    } else if (i == m->len || p[i] != '{') {
        reject(&rq, 400, M_JSON, REPORT_MALFORMED, "a shadow request must be a JSON object");
        goto out;
    } else if ((rc = twin_input_decode(m->payload, m->len, &lim, &in->zone, &obj, rq.err)) < 0) {
        if (rc == -ENOMEM)
            ingest_fatal(&rq.bt, rq.what, rc, rq.err);
        if (rc == -ELOOP) {
            snprintf(depth, sizeof(depth),
                     "JSON contains too many levels of nesting; maximum is %u", lim.max_depth);
            reject(&rq, 400, depth, REPORT_DEPTH, rq.err);
        } else if (rc == -E2BIG) {
            reject(&rq, 413, M_SIZE, REPORT_SIZE, rq.err);
        } else {
            reject(&rq, 400, M_JSON, REPORT_MALFORMED, rq.err);
        }
        goto out;
    }
    if ((code = parse(&rq, &obj, &message)) != 0) {
        reject(&rq, code, message, REPORT_INVALID, rq.err);
        goto out;
    }

    if (rq.t.op == BRIDGE_AWS_GET) {
        rc = get(&rq);
        if (rc < 0)
            failed(&rq, rc, "");
        else
            count_reply(in, 200);
        goto out;
    }
    char err[TWIN_ERR_LEN] = "";
    rc =
        twin_store_write(in->store, rq.t.op == BRIDGE_AWS_UPDATE ? update_fn : delete_fn, &rq, err);
    if (rc < 0) {
        failed(&rq, rc, err);
        goto out;
    }
    count_reply(in, 200);
    log_debug("shadow request applied", "what=%s thing=%.*s shadow=%.*s", rq.what,
              (int)rq.t.thing_len, rq.t.thing, (int)rq.t.name_len, rq.t.name ? rq.t.name : "");
    if (rq.t.op == BRIDGE_AWS_DELETE && !rq.t.name)
        flags = PUB_STATE | PUB_DESIRED; /* both cleared: empty retained messages */
    else
        flags = PUB_STATE | rq.rule_flags | (rq.delta_changed ? PUB_DESIRED : 0) |
                (rq.wrote_desired ? PUB_DELTA : 0);
out:
    msgpack_zone_destroy(&z);
    msgpack_zone_clear(&in->zone);
    return flags;
}

void shadow_on_message(struct ingest *in, const struct bridge_msg *m)
{
    unsigned flags = shadow_handle(in, m);
    struct bridge_aws_topic t;
    if (flags && bridge_aws_topic_parse(m->topic, m->topic_len, &t, NULL) == 0 &&
        publisher_twin(in->pub, t.thing, t.thing_len, flags) < 0)
        log_warn_limited("publication postponed to the next restart", "id=%.*s reason=\"no memory\"",
                 (int)t.thing_len, t.thing);
    ingest_flush(in);
}

/* ---------------------------------------------------------------------------------------------
 * update/delta, from the publisher
 * ------------------------------------------------------------------------------------------ */

static void delta_msg(struct publisher *p, msgpack_zone *z, const struct bridge_aws_topic *t,
                      const msgpack_object *delta, const msgpack_object *meta, uint64_t version,
                      int64_t now)
{
    char topic[BRIDGE_TOPIC_MAX + 1];
    msgpack_object doc, m;
    msgpack_sbuffer js;
    if (bridge_aws_topic_build(t, BRIDGE_AWS_DELTA, topic, sizeof(topic)) < 0)
        return;
    msgpack_sbuffer_init(&js);
    int rc = o_map(z, &doc, 4);
    if (rc == 0 && (rc = meta_of(z, delta, meta, now, &m)) == 0) {
        o_putk(&doc, "version", o_uint(version));
        o_putk(&doc, "timestamp", o_int(now / 1000));
        o_putk(&doc, "state", *delta);
        o_putk(&doc, "metadata", m);
        rc = twin_json_write(&doc, &js);
    }
    if (rc == 0) {
        struct publisher_msg pm = {.topic = topic, .payload = js.data, .len = js.size, .qos = 1};
        rc = publisher_msg(p, PUB_CLASS_REPLY, &pm);
    }
    if (rc < 0)
        log_warn_limited("shadow delta not published", "topic=%s reason=%s", topic,
                 rc == -ENOBUFS ? "\"queue full\"" : "\"no memory\"");
    msgpack_sbuffer_destroy(&js);
}

void shadow_publish_delta(struct publisher *p, struct twin_txn *txn, const char *id, size_t id_len)
{
    char err[TWIN_ERR_LEN];
    struct twin_doc d;
    int rc = twin_get(txn, id, id_len, &d, err);
    if (rc < 0) {
        if (rc != -ENOENT)
            log_error("cannot read the twin for its shadow delta", "id=%.*s err=\"%s\"",
                      (int)id_len, id, err);
        return;
    }
    if (d.delta.type != MSGPACK_OBJECT_MAP)
        return;
    msgpack_zone *z = twin_txn_zone(txn);
    int64_t now = hub_now_ms();
    struct bridge_aws_topic t = {.op = BRIDGE_AWS_UPDATE, .thing = id, .thing_len = id_len};
    msgpack_object part, meta;
    if (part_of(z, &d.delta, &t, &part) == 0 && !empty(&part) &&
        part_of(z, &d.meta_desired, &t, &meta) == 0)
        delta_msg(p, z, &t, &part, &meta, d.version, now);
    const msgpack_object *named = twin_value_get(&d.delta, NAMED, NAMED_LEN);
    if (!named || named->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < named->via.map.size; i++) {
        const msgpack_object_kv *kv = &named->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR ||
            !bridge_aws_name_valid(kv->key.via.str.ptr, kv->key.via.str.size) || empty(&kv->val))
            continue; /* a key a service wrote that no shadow name can reach */
        t.name = kv->key.via.str.ptr;
        t.name_len = kv->key.via.str.size;
        if (part_of(z, &d.meta_desired, &t, &meta) == 0)
            delta_msg(p, z, &t, &kv->val, &meta, d.version, now);
    }
}
