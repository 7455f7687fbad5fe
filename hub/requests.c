/* requests: what services and operators ask of a twin over MQTT (DESIGN.md §3), one write
 * transaction per request (a read for get), and the reply to each, queued in the publisher
 * only after the commit. It owns the request payloads, the reply payloads and where replies go;
 * what a change does to a twin is the twins library's.
 *
 *   twins/{id}/desired/set   {desired: map, version?, token?}   accepted {version, token, desired}
 *   twins/{id}/get           {token?} (or empty)               accepted: the document (+ token)
 *   twins/{id}/delete        {version?, token?} (or empty)     accepted {version, token}
 *   twins/{id}/commands/send {cmd, args?, expires_in_ms?, token?}   accepted {id, token}
 *   rejected {code, message, token}: 400 bad request, 404 no such twin, 409 version conflict,
 *   413 too large, 500 internal (a damaged stored twin).
 *
 * Replies go to `<request topic>/accepted` or `/rejected`, or, when the request carries an
 * MQTT 5 response topic, to that topic (a rejection is told apart by its `code`), with the
 * request's correlation data echoed whenever it has some.
 *
 * Choices (the design is silent):
 * - Unknown keys in a request are refused (400): a misspelt `versoin` must not turn a
 *   conditional write into an unconditional one. `version`, `args` and `expires_in_ms` may be
 *   nil, meaning absent. `version` 0 on desired/set means "only if the twin does not exist".
 * - A token is a string of at most 64 bytes; a request with a bad token is refused, the reply
 *   without a token.
 * - The accepted reply of desired/set carries the whole desired state as committed (not just
 *   the patch), and of delete the deleted twin's last version; get's is the document with
 *   `token` added when the request had one.
 * - A response topic must be publishable and must not lie in the hub's own scheme (under the
 *   devices or hub prefix, or any twins/ topic the hub reads or writes, its reply topics
 *   twins/{id}/<request>/accepted and /rejected included): a request could otherwise make the
 *   hub talk to a device or to itself, or forge a reply to another twin's request.
 *   Such a request is refused (400) on `<request topic>/rejected` and changes nothing.
 * - A retained request is a replay by the broker (at every subscribe of the hub): ignored.
 * - A storage failure exits the hub before the request is acknowledged, as for telemetry, so
 *   the broker redelivers it; a version conflict or a refused change is a reply, not an error.
 *   Bad requests (400, 413) are also counted and reported on hub/errors like bad telemetry.
 *
 * requests_handle does the request and leaves its reply in in->out; requests_on_message then
 * hands that and the twin's publication to the publisher (a fuzz target calls the former).
 *
 * Threads: Paho's receive thread (requests_on_message), like the rest of ingest. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "hub.h"
#include "log.h"
#include "query.h"

#define TOKEN_MAX 64
#define EXPIRES_MAX_MS (3650ull * 86400 * 1000) /* ten years */

struct request {
    struct ingest *in;
    const struct bridge_msg *m;
    const struct bridge_topic *t;
    const char *what;                  /* "desired/set", ... */
    char topic[BRIDGE_TOPIC_MAX + 16]; /* the response topic, or the request topic */
    bool response;
    int64_t now;

    /* the request */
    bool has_token;
    const char *token;
    size_t token_len;
    uint64_t version; /* TWIN_VERSION_ANY: none */
    const msgpack_object *desired, *args;
    const char *cmd;
    size_t cmd_len;
    uint64_t expires_in_ms; /* 0: none */
    struct query_spec qs;   /* query */
    struct query_range range; /* history */

    /* the outcome, filled by the transaction */
    bool delta_changed;
    unsigned rule_flags; /* PUB_* the rules' actions need */
    char err[TWIN_ERR_LEN];
};

/* ---------------------------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------------------------ */

const int hub_reply_codes[HUB_REPLY_CODES] = {200, 400, 404, 409, 413, 429, 500};

/* Counts one reply (/metrics: twinhub_replies_total{code}), once its outcome is final: after
 * the commit of what it accepts, or when it is refused. */
static void count_reply(struct ingest *in, int code)
{
    int i = HUB_REPLY_CODES - 1; /* an unlisted code counts as 500 */
    for (int k = 0; k < HUB_REPLY_CODES; k++)
        if (hub_reply_codes[k] == code)
            i = k;
    atomic_fetch_add_explicit(&in->stats.replies[i], 1, memory_order_relaxed);
}

static void pack_token(struct request *rq, msgpack_packer *pk)
{
    out_pack_key(pk, "token");
    if (rq->has_token)
        out_pack_str(pk, rq->token, rq->token_len);
    else
        msgpack_pack_nil(pk);
}

/* Ends a reply packed after outlist_begin(&in->out). */
static int reply_end(struct request *rq, bool accepted)
{
    char topic[sizeof(rq->topic) + 16];
    if (rq->response)
        snprintf(topic, sizeof(topic), "%s", rq->topic);
    else
        snprintf(topic, sizeof(topic), "%s/%s", rq->topic, accepted ? "accepted" : "rejected");
    return outlist_end(&rq->in->out, PUB_CLASS_REPLY, topic, true, 1, rq->m->correlation,
                       rq->m->correlation_len);
}

static const char *reason_of(int code)
{
    switch (code) {
    case 400:
        return "bad request";
    case 404:
        return "no such twin";
    case 409:
        return "version conflict";
    case 413:
        return "too large";
    default:
        return "internal error";
    }
}

/* Leaves the reply {code, message, token} in in->out (nothing was committed) and counts a bad
 * request. */
static void reject(struct request *rq, int code, enum report_kind kind, const char *message)
{
    struct ingest *in = rq->in;
    outlist_reset(&in->out);
    msgpack_packer *pk = outlist_begin(&in->out);
    msgpack_pack_map(pk, 3);
    out_pack_key(pk, "code");
    msgpack_pack_int(pk, code);
    out_pack_key(pk, "message");
    out_pack_str(pk, message, strlen(message));
    pack_token(rq, pk);
    if (reply_end(rq, false) < 0)
        log_warn_limited("cannot build a reply", "what=%s id=%.*s reason=\"no memory\"", rq->what,
                 (int)rq->t->id_len, rq->t->id);
    char q[TWIN_ERR_LEN + 16];
    log_debug("request rejected", "what=%s id=%.*s code=%d message=%s", rq->what,
              (int)rq->t->id_len, rq->t->id, code,
              log_quote(q, sizeof(q), message, strlen(message)));
    if (code == 400 || code == 413)
        report_reject(in->report, kind, rq->m->topic, rq->m->topic_len, message);
    atomic_fetch_add(&in->stats.requests_rejected, 1);
    count_reply(in, code);
}

/* The reply code of an error a transaction returned (rejections only: storage errors are
 * fatal before this is asked). */
static int code_of(int rc)
{
    switch (rc) {
    case -EINVAL:
    case -ELOOP:
    case -EPERM:
        return 400;
    case -ENOENT:
        return 404;
    case -EBUSY:
        return 409;
    case -E2BIG:
        return 413;
    default:
        return 500; /* -EBADMSG: the stored twin is damaged */
    }
}

static bool is_rejection(int rc)
{
    return rc == -EINVAL || rc == -ELOOP || rc == -EPERM || rc == -ENOENT || rc == -EBUSY ||
           rc == -E2BIG || rc == -EBADMSG;
}

/* After a failed twin_store_write: a rejection becomes a reply, anything else ends the hub. */
static void failed(struct request *rq, int rc, const char *store_err)
{
    if (!is_rejection(rc))
        ingest_fatal(rq->t, rq->what, rc, store_err[0] ? store_err : rq->err);
    int code = code_of(rc);
    if (code == 500)
        log_error("stored twin unreadable; request not applied", "what=%s id=%.*s err=\"%s\"",
                  rq->what, (int)rq->t->id_len, rq->t->id, rq->err);
    reject(rq, code, report_kind_of(rc), rq->err[0] ? rq->err : reason_of(code));
}

/* ---------------------------------------------------------------------------------------------
 * Where the reply goes
 * ------------------------------------------------------------------------------------------ */

/* Sets rq->topic. Returns 0, or -EINVAL with rq->topic set to the request topic when the
 * response topic may not be used (the reason in rq->err). */
static int destination(struct request *rq)
{
    const struct bridge_topics *tp = rq->in->topics;
    const struct bridge_msg *m = rq->m;
    if (bridge_topic_build(tp, rq->t->kind, rq->t->id, rq->t->id_len, rq->topic, BRIDGE_TOPIC_MAX) <
        0)
        return -EINVAL; /* the id was validated by the parse: cannot happen */
    if (!m->response_topic)
        return 0;
    const char *rt = m->response_topic;
    size_t n = m->response_topic_len;
    const char *why = NULL;
    if (!bridge_topic_publishable(rt, n))
        why = "response topic is not publishable (empty, too long, wildcards or control "
              "characters)";
    else if (rt[0] == '$')
        why = "response topic starts with '$'";
    else if (bridge_topic_reserved(tp, rt, n))
        why = "response topic lies in the hub's own topics";
    if (why) {
        snprintf(rq->err, sizeof(rq->err), "%s", why);
        return -EINVAL;
    }
    memcpy(rq->topic, rt, n);
    rq->topic[n] = '\0';
    rq->response = true;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------------------------ */

static int bad(struct request *rq, const char *why)
{
    snprintf(rq->err, sizeof(rq->err), "%s", why);
    return -EINVAL;
}

/* A non-negative integer below `max`, or nil (absent). */
static int get_uint(struct request *rq, const msgpack_object *v, const char *name, uint64_t max,
                    uint64_t *out, bool *present)
{
    *present = false;
    if (v->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > max) {
        snprintf(rq->err, sizeof(rq->err), "'%s' must be an integer from 0 to %" PRIu64, name, max);
        return -EINVAL;
    }
    *out = v->via.u64;
    *present = true;
    return 0;
}

/* A string value of a read's key: *p and *n, or nil (absent). */
static int get_str(struct request *rq, const msgpack_object *v, const char *name, const char **p,
                   size_t *n)
{
    if (v->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (v->type != MSGPACK_OBJECT_STR) {
        snprintf(rq->err, sizeof(rq->err), "'%s' must be a string", name);
        return -EINVAL;
    }
    *p = v->via.str.ptr;
    *n = v->via.str.size;
    return 0;
}

/* A time of a history request: ms since epoch, or below 0: that long before now. */
static int get_time(struct request *rq, const msgpack_object *v, const char *name, int64_t *out)
{
    if (v->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= TWIN_TS_MAX) {
        *out = (int64_t)v->via.u64;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 >= -(int64_t)TWIN_TS_MAX) {
        *out = rq->now + v->via.i64;
        return 0;
    }
    snprintf(rq->err, sizeof(rq->err),
             "'%s' must be ms since epoch, or a negative ms count before now", name);
    return -EINVAL;
}

/* One key of a query {where, fields, order, prefix, limit, cursor} or a history request
 * {path, from, to, step, limit}. */
static int parse_read(struct request *rq, const msgpack_object *k, const msgpack_object *v)
{
    struct query_spec *q = &rq->qs;
    struct query_range *r = &rq->range;
    bool query = rq->t->kind == BRIDGE_T_QUERY, present;
    uint64_t u = 0;
    int rc;
    if (query && hub_key_is(k, "where"))
        return get_str(rq, v, "where", &q->where, &q->where_len);
    if (query && hub_key_is(k, "order"))
        return get_str(rq, v, "order", &q->order, &q->order_len);
    if (query && hub_key_is(k, "prefix"))
        return get_str(rq, v, "prefix", &q->prefix, &q->prefix_len);
    if (query && hub_key_is(k, "cursor"))
        return get_str(rq, v, "cursor", &q->cursor, &q->cursor_len);
    if (query && hub_key_is(k, "fields")) {
        if (v->type == MSGPACK_OBJECT_STR) {
            char err[QUERY_ERR_LEN];
            if (query_fields_split(q, v->via.str.ptr, v->via.str.size, err) < 0)
                return bad(rq, err);
            return 0;
        }
        if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > QUERY_FIELDS_MAX) {
            snprintf(rq->err, sizeof(rq->err),
                     "'fields' must be a list of at most %d strings (or one, commas between)",
                     QUERY_FIELDS_MAX);
            return -EINVAL;
        }
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            const msgpack_object *f = &v->via.array.ptr[i];
            if (f->type != MSGPACK_OBJECT_STR)
                return bad(rq, "'fields' must be a list of strings");
            q->fields[q->nfields] = f->via.str.ptr;
            q->field_len[q->nfields++] = f->via.str.size;
        }
        return 0;
    }
    if (hub_key_is(k, "limit")) {
        rc = get_uint(rq, v, "limit", 100000000, &u, &present);
        if (present && query)
            q->limit = (unsigned)u;
        else if (present)
            r->limit = (unsigned)u;
        return rc;
    }
    if (!query && hub_key_is(k, "path")) {
        const char *p = NULL;
        size_t n = 0;
        if ((rc = get_str(rq, v, "path", &p, &n)) < 0)
            return rc;
        r->path = p;
        r->path_len = n;
        return 0;
    }
    if (!query && hub_key_is(k, "from"))
        return get_time(rq, v, "from", &r->from);
    if (!query && hub_key_is(k, "to"))
        return get_time(rq, v, "to", &r->to);
    if (!query && hub_key_is(k, "step")) {
        rc = get_uint(rq, v, "step", 366ull * 86400 * 1000, &u, &present);
        r->step = (int64_t)u;
        return rc;
    }
    char name[TWIN_KEY_MAX + 1] = "?";
    if (k->type == MSGPACK_OBJECT_STR)
        snprintf(name, sizeof(name), "%.*s",
                 (int)(k->via.str.size > TWIN_KEY_MAX ? TWIN_KEY_MAX : k->via.str.size),
                 k->via.str.ptr);
    snprintf(rq->err, sizeof(rq->err), "unknown key '%s' in a %s request", name, rq->what);
    return -EINVAL;
}

/* Reads the request map into rq: the token first, so that any rejection can echo it. */
static int parse(struct request *rq, const msgpack_object *o)
{
    enum bridge_topic_kind kind = rq->t->kind;
    if (o->type != MSGPACK_OBJECT_MAP)
        return bad(rq, "a request must be a map");
    const msgpack_object_map *map = &o->via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (!hub_key_is(k, "token"))
            continue;
        if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > TOKEN_MAX) {
            snprintf(rq->err, sizeof(rq->err), "'token' must be a string of at most %d bytes",
                     TOKEN_MAX);
            return -EINVAL;
        }
        rq->has_token = true;
        rq->token = v->via.str.ptr;
        rq->token_len = v->via.str.size;
    }
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        bool present;
        int rc = 0;
        if (hub_key_is(k, "token"))
            continue;
        if (hub_key_is(k, "version") && (kind == BRIDGE_T_DESIRED_SET || kind == BRIDGE_T_DELETE)) {
            uint64_t ver = 0;
            rc = get_uint(rq, v, "version", TWIN_VERSION_ANY - 1, &ver, &present);
            if (present)
                rq->version = ver;
        } else if (hub_key_is(k, "desired") && kind == BRIDGE_T_DESIRED_SET) {
            if (v->type != MSGPACK_OBJECT_MAP)
                return bad(rq, "'desired' must be a map");
            rq->desired = v;
        } else if (hub_key_is(k, "cmd") && kind == BRIDGE_T_CMD_SEND) {
            if (v->type != MSGPACK_OBJECT_STR)
                return bad(rq, "'cmd' must be a string");
            rq->cmd = v->via.str.ptr;
            rq->cmd_len = v->via.str.size;
        } else if (hub_key_is(k, "args") && kind == BRIDGE_T_CMD_SEND) {
            rq->args = v->type == MSGPACK_OBJECT_NIL ? NULL : v;
        } else if (hub_key_is(k, "expires_in_ms") && kind == BRIDGE_T_CMD_SEND) {
            uint64_t ms = 0;
            rc = get_uint(rq, v, "expires_in_ms", EXPIRES_MAX_MS, &ms, &present);
            if (rc == 0 && present && ms == 0)
                return bad(rq, "'expires_in_ms' must be above 0 (leave it out for no deadline)");
            rq->expires_in_ms = ms;
        } else if (kind == BRIDGE_T_QUERY || kind == BRIDGE_T_HISTORY) {
            rc = parse_read(rq, k, v);
        } else {
            char name[TWIN_KEY_MAX + 1] = "?";
            if (k->type == MSGPACK_OBJECT_STR)
                snprintf(name, sizeof(name), "%.*s",
                         (int)(k->via.str.size > TWIN_KEY_MAX ? TWIN_KEY_MAX : k->via.str.size),
                         k->via.str.ptr);
            snprintf(rq->err, sizeof(rq->err), "unknown key '%s' in a %s request", name, rq->what);
            return -EINVAL;
        }
        if (rc < 0)
            return rc;
    }
    if (kind == BRIDGE_T_DESIRED_SET && !rq->desired)
        return bad(rq, "a desired/set request needs 'desired' (a map)");
    if (kind == BRIDGE_T_CMD_SEND && !rq->cmd)
        return bad(rq, "a commands/send request needs 'cmd' (a string)");
    if (kind == BRIDGE_T_HISTORY && !rq->range.path)
        return bad(rq, "a history request needs 'path' (reported.heart_rate)");
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The requests
 * ------------------------------------------------------------------------------------------ */

static int set_fn(struct twin_txn *txn, void *ctx)
{
    struct request *rq = ctx;
    struct twin_desired_result res;
    struct twin_doc doc;
    outlist_start(&rq->in->out, txn);
    int rc = twin_desired_apply(txn, rq->t->id, rq->t->id_len, rq->desired, rq->version, rq->now,
                                &res, rq->err);
    if (rc < 0)
        return rc;
    /* the rules run in this transaction; the reply then names what is committed, their
     * changes included */
    struct ingest *in = rq->in;
    rq->rule_flags = 0;
    if (in->rules) {
        rules_changes_reset(&in->run.changes);
        rules_changes_add_patch(&in->run.changes, "desired", rq->desired);
        rules_changes_add(&in->run.changes, "delta", 5);
        if ((rc = hub_rules_on_change(in->rules, &in->run, txn, rq->t->id, rq->t->id_len, NULL,
                                      rq->now, &in->out, &rq->rule_flags, rq->err)) < 0)
            return rc;
    }
    if ((rc = twin_get(txn, rq->t->id, rq->t->id_len, &doc, rq->err)) < 0)
        return rc;
    rq->delta_changed = res.delta_changed;
    msgpack_packer *pk = outlist_begin(&rq->in->out);
    msgpack_pack_map(pk, 3);
    out_pack_key(pk, "version");
    msgpack_pack_uint64(pk, doc.version);
    pack_token(rq, pk);
    out_pack_key(pk, "desired");
    if (doc.desired.type == MSGPACK_OBJECT_MAP)
        msgpack_pack_object(pk, doc.desired);
    else
        msgpack_pack_map(pk, 0);
    return reply_end(rq, true);
}

static int delete_fn(struct twin_txn *txn, void *ctx)
{
    struct request *rq = ctx;
    struct twin_delete_result res;
    outlist_start(&rq->in->out, txn);
    int rc = twin_delete(txn, rq->t->id, rq->t->id_len, rq->version, &res, rq->err);
    if (rc < 0 || (rc = hub_rules_dispatch_deleted(rq->in->rules, txn, rq->t->id, rq->t->id_len,
                                                   rq->now, &rq->in->out, rq->err)) < 0)
        return rc;
    msgpack_packer *pk = outlist_begin(&rq->in->out);
    msgpack_pack_map(pk, 2);
    out_pack_key(pk, "version");
    msgpack_pack_uint64(pk, res.version);
    pack_token(rq, pk);
    return reply_end(rq, true);
}

static int send_fn(struct twin_txn *txn, void *ctx)
{
    struct request *rq = ctx;
    struct twin_command c;
    outlist_start(&rq->in->out, txn);
    int64_t expires = rq->expires_in_ms ? rq->now + (int64_t)rq->expires_in_ms : 0;
    int rc = twin_command_add(txn, rq->t->id, rq->t->id_len, rq->cmd, rq->cmd_len, rq->args,
                              expires, rq->now, &c, commands_on_event, &rq->in->out, rq->err);
    if (rc < 0)
        return rc;
    /* To the device at once when it is connected; otherwise it waits, queued, until the device
     * comes online (presence.c). */
    struct twin_doc doc;
    if ((rc = twin_get(txn, rq->t->id, rq->t->id_len, &doc, rq->err)) < 0)
        return rc;
    if (doc.connected && (rc = commands_send_one(txn, rq->t->id, rq->t->id_len, c.id, rq->now,
                                                 &rq->in->out, rq->err)) < 0)
        return rc;
    msgpack_packer *pk = outlist_begin(&rq->in->out);
    msgpack_pack_map(pk, 2);
    out_pack_key(pk, "id");
    out_pack_str(pk, c.id, strlen(c.id));
    pack_token(rq, pk);
    return reply_end(rq, true);
}

/* Packs the map in buf (our own msgpack: well formed) with the request's token added, and
 * ends the accepted reply. Returns as reply_end, or -EBADMSG (not a readable map). */
static int accept_map(struct request *rq, const void *buf, size_t len, msgpack_zone *zone)
{
    /* checked before msgpack-c reads it all the same: a stored twin may be damaged */
    struct twin_limits lim = {len, TWIN_DEPTH_CAP, UINT32_MAX};
    msgpack_object obj;
    size_t off = 0;
    if (twin_input_scan(buf, len, &lim, rq->err) < 0 ||
        msgpack_unpack(buf, len, &off, zone, &obj) != MSGPACK_UNPACK_SUCCESS ||
        obj.type != MSGPACK_OBJECT_MAP)
        return -EBADMSG;
    msgpack_packer *pk = outlist_begin(&rq->in->out);
    if (rq->has_token) {
        msgpack_pack_map(pk, obj.via.map.size + 1);
        for (uint32_t i = 0; i < obj.via.map.size; i++) {
            msgpack_pack_object(pk, obj.via.map.ptr[i].key);
            msgpack_pack_object(pk, obj.via.map.ptr[i].val);
        }
        pack_token(rq, pk);
    } else {
        msgpack_pack_object(pk, obj);
    }
    return reply_end(rq, true);
}

/* A read transaction; a storage failure that cannot be fixed ends the hub. */
static struct twin_txn *read_begin(struct request *rq)
{
    struct twin_txn *txn;
    char err[TWIN_ERR_LEN] = "";
    int rc = twin_store_read_begin(rq->in->store, &txn, err);
    if (rc < 0)
        ingest_fatal(rq->t, rq->what, rc, err);
    return txn;
}

/* get: a read transaction; the reply is the stored document (committed by definition). */
static void get(struct request *rq)
{
    struct ingest *in = rq->in;
    const void *doc;
    size_t len;
    outlist_reset(&in->out);
    struct twin_txn *txn = read_begin(rq);
    int rc = twin_get_raw(txn, rq->t->id, rq->t->id_len, &doc, &len, rq->err);
    if (rc == 0 && (rc = accept_map(rq, doc, len, twin_txn_zone(txn))) == -EBADMSG)
        snprintf(rq->err, sizeof(rq->err), "stored document of '%.*s' is unreadable",
                 (int)rq->t->id_len, rq->t->id);
    twin_store_read_end(txn);
    if (rc == -ENOMEM)
        ingest_fatal(rq->t, rq->what, rc, "out of memory");
    if (rc == 0)
        count_reply(in, 200);
    if (rc == -ENOENT)
        snprintf(rq->err, sizeof(rq->err), "no twin '%.*s'", (int)rq->t->id_len, rq->t->id);
    if (rc < 0)
        failed(rq, rc, "");
}

/* hub/query and twins/{id}/history: the query library packs the answer, which goes out as
 * the accepted reply; a bad query is a 400 that names the part and the column. */
static void read_request(struct request *rq)
{
    struct ingest *in = rq->in;
    struct query_limits ql;
    query_limits_init(&ql);
    pthread_mutex_lock(&in->limits_lock);
    if (in->query_limits.max_limit)
        ql = in->query_limits;
    pthread_mutex_unlock(&in->limits_lock);
    char err[QUERY_ERR_LEN] = "";
    struct query *q = NULL;
    int rc = 0;
    if (rq->t->kind == BRIDGE_T_QUERY && (rc = query_new(&rq->qs, &ql, &q, err)) < 0) {
        if (rc == -ENOMEM)
            ingest_fatal(rq->t, rq->what, rc, "out of memory");
        reject(rq, 400, REPORT_INVALID, err);
        return;
    }
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    struct twin_txn *txn = read_begin(rq);
    if (q) {
        struct query_result res;
        rc = query_run(q, txn, rq->now, &pk, &res, err);
    } else {
        if (rq->range.from == 0 && rq->range.to == 0) {
            rq->range.from = rq->now - 3600 * 1000;
            rq->range.to = rq->now;
        } else if (rq->range.to == 0) {
            rq->range.to = rq->now;
        }
        rc = query_history(txn, rq->t->id, rq->t->id_len, &rq->range, &ql, &pk, err);
    }
    outlist_reset(&in->out);
    if (rc == 0)
        rc = accept_map(rq, b.data, b.size, twin_txn_zone(txn));
    twin_store_read_end(txn);
    query_free(q);
    msgpack_sbuffer_destroy(&b);
    if (rc == -ENOMEM)
        ingest_fatal(rq->t, rq->what, rc, "out of memory");
    if (rc == 0) {
        count_reply(in, 200);
        return;
    }
    reject(rq, rc == -EINVAL ? 400 : rc == -ENOENT ? 404 : 500, REPORT_INVALID,
           err[0] ? err : "the read failed");
}

static const char *name_of(enum bridge_topic_kind k)
{
    switch (k) {
    case BRIDGE_T_DESIRED_SET:
        return "desired/set";
    case BRIDGE_T_GET:
        return "get";
    case BRIDGE_T_CMD_SEND:
        return "commands/send";
    case BRIDGE_T_HISTORY:
        return "history";
    case BRIDGE_T_QUERY:
        return "query";
    default:
        return "delete";
    }
}

/* A request about to be handled: nothing of its payload read yet. */
static struct request request_of(struct ingest *in, const struct bridge_msg *m,
                                 const struct bridge_topic *t)
{
    return (struct request){
        .in = in,
        .m = m,
        .t = t,
        .what = name_of(t->kind),
        .version = TWIN_VERSION_ANY,
        .now = hub_now_ms(),
    };
}

unsigned requests_handle(struct ingest *in, const struct bridge_msg *m,
                         const struct bridge_topic *t)
{
    unsigned flags = 0;
    struct request rq = request_of(in, m, t);
    outlist_reset(&in->out);
    if (m->retained) {
        atomic_fetch_add(&in->stats.retained, 1);
        return 0;
    }
    atomic_fetch_add(&in->stats.requests, 1);
    if (destination(&rq) < 0) {
        reject(&rq, 400, REPORT_INVALID, rq.err);
        return 0;
    }

    /* get and delete may come without a payload */
    msgpack_object obj = {.type = MSGPACK_OBJECT_MAP};
    if (m->len > 0 ||
        (t->kind != BRIDGE_T_GET && t->kind != BRIDGE_T_DELETE && t->kind != BRIDGE_T_QUERY)) {
        struct twin_limits lim = ingest_limits(in);
        int rc = twin_input_decode(m->payload, m->len, &lim, &in->zone, &obj, rq.err);
        if (rc == -ENOMEM)
            ingest_fatal(t, rq.what, rc, rq.err);
        if (rc < 0) {
            reject(&rq, rc == -E2BIG ? 413 : 400, report_kind_of(rc), rq.err);
            goto out;
        }
    }
    if (parse(&rq, &obj) < 0) {
        reject(&rq, 400, REPORT_INVALID, rq.err);
        goto out;
    }

    twin_write_fn fn = NULL;
    switch (t->kind) {
    case BRIDGE_T_DESIRED_SET:
        fn = set_fn;
        break;
    case BRIDGE_T_DELETE:
        fn = delete_fn;
        break;
    case BRIDGE_T_CMD_SEND:
        fn = send_fn;
        break;
    case BRIDGE_T_QUERY:
    case BRIDGE_T_HISTORY:
        read_request(&rq);
        goto out;
    default:
        get(&rq);
        goto out;
    }
    char err[TWIN_ERR_LEN] = "";
    int rc = twin_store_write(in->store, fn, &rq, err);
    if (rc < 0) {
        failed(&rq, rc, err);
        goto out;
    }
    log_debug("request applied", "what=%s id=%.*s", rq.what, (int)t->id_len, t->id);
    count_reply(in, 200);
    if (t->kind == BRIDGE_T_DESIRED_SET)
        flags = PUB_STATE | rq.rule_flags | (rq.delta_changed ? PUB_DESIRED : 0);
    else if (t->kind == BRIDGE_T_DELETE)
        flags = PUB_STATE | PUB_DESIRED; /* both cleared: empty retained messages */
out:
    msgpack_zone_clear(&in->zone);
    return flags;
}

void requests_on_message(struct ingest *in, const struct bridge_msg *m,
                         const struct bridge_topic *t)
{
    unsigned flags = requests_handle(in, m, t);
    if (flags && publisher_twin(in->pub, t->id, t->id_len, flags) < 0)
        log_warn_limited("publication postponed to the next restart", "id=%.*s reason=\"no memory\"",
                 (int)t->id_len, t->id);
    ingest_flush(in);
}

int requests_http(struct ingest *in, enum bridge_topic_kind kind, const char *id, size_t id_len,
                  const void *payload, size_t len, msgpack_sbuffer *reply)
{
    char topic[BRIDGE_TOPIC_MAX];
    int n = bridge_topic_build(in->topics, kind, id, id_len, topic, sizeof(topic));
    if (n < 0)
        return -EINVAL;
    struct bridge_msg m = {
        .topic = topic, .topic_len = (size_t)n, .payload = payload, .len = len, .qos = 1};
    struct bridge_topic t = {.kind = kind, .id = id, .id_len = id_len};
    unsigned flags = requests_handle(in, &m, &t);
    /* The reply is the HTTP answer: it is taken out of what goes to the broker. */
    int code = 500;
    struct outlist *ol = &in->out;
    for (size_t i = 0; i < ol->n; i++) {
        const struct outmsg *o = &ol->v[i];
        const char *ot = ol->data.data + o->topic;
        if (o->cls != PUB_CLASS_REPLY || strncmp(ot, topic, (size_t)n) || ot[n] != '/')
            continue;
        code = 0;
        if (!strcmp(ot + n + 1, "accepted"))
            code = 200;
        if (msgpack_sbuffer_write(reply, ol->data.data + o->payload, o->len) != 0)
            code = -ENOMEM;
        memmove(&ol->v[i], &ol->v[i + 1], (ol->n - i - 1) * sizeof(*o));
        ol->n--;
        break;
    }
    if (flags && publisher_twin(in->pub, id, id_len, flags) < 0)
        log_warn_limited("publication postponed to the next restart", "id=%.*s reason=\"no memory\"",
                 (int)id_len, id);
    ingest_flush(in);
    return code;
}

void requests_refuse(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t,
                     int code, const char *message)
{
    struct request rq = request_of(in, m, t);
    outlist_reset(&in->out);
    atomic_fetch_add(&in->stats.requests, 1);
    if (destination(&rq) < 0)
        message = rq.err;
    reject(&rq, code, REPORT_INVALID, message);
    ingest_flush(in);
}
