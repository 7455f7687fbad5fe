/* commands: the hub's side of the command queue that the twins library keeps in LMDB: sending
 * commands to devices, their acknowledgements (devices/{id}/commands/ack), the expiry timer,
 * re-sending after a restart, and an event on twins/{id}/events for every change of state.
 * What a command is and how it moves is the library's.
 *
 * When a command is marked sent (the choice the issue left open): in the same write
 * transaction that decides to send it (twin_command_mark_sent), and the message is queued in
 * the publisher after that commit. So `sent` means "handed to the publisher", not "acknowledged
 * by the broker"; a message lost on the way (the hub killed before publishing it, the queue
 * full, the broker refusing it) leaves the command `sent` in the store, and `sent` commands are
 * sent again, with the queued ones, whenever the device comes online (presence.c) and, for
 * devices the twin says are connected, when the hub starts (commands_resend_connected). The
 * store is the truth and nothing is lost; a device may see a command twice after a restart or a
 * reconnect, and tells by its id. This costs no write transaction per acknowledgement, which
 * marking on the broker's PUBACK would.
 *
 * Threads: commands_on_ack and the send helpers run on Paho's receive thread (ingest's
 * outlist); commands_expire, commands_next_due and commands_resend_connected on the main
 * thread with the main loop's outlist. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "log.h"

#define EXPIRE_BATCH 1000 /* deadlines per write transaction of the timer pass */

int commands_on_event(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct outlist *ol = ctx;
    (void)from;
    int rc = out_event_command(ol, c);
    /* counted in /metrics when the outlist is flushed, after the commit */
    if (rc == 0 && c->state > TWIN_CMD_NONE && c->state < HUB_CMD_STATES)
        ol->cmd_entered[c->state]++;
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Sending
 * ------------------------------------------------------------------------------------------ */

int commands_send_one(struct twin_txn *txn, const char *id, size_t id_len, const char *cmd_id,
                      int64_t now, struct outlist *ol, char *err)
{
    struct twin_command c;
    int rc = twin_command_mark_sent(txn, id, id_len, cmd_id, strlen(cmd_id), now, &c,
                                    commands_on_event, ol, err);
    if (rc < 0)
        return rc;
    return out_command(ol, &c);
}

struct pending {
    struct twin_txn *txn;
    int64_t now;
    struct outlist *ol;
    char *err;
};

static int send_pending_one(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct pending *pd = ctx;
    (void)from;
    if (c->state != TWIN_CMD_QUEUED && c->state != TWIN_CMD_SENT)
        return 0; /* delivered or final: the device has it, or it is over */
    return commands_send_one(pd->txn, c->twin_id, c->twin_id_len, c->id, pd->now, pd->ol, pd->err);
}

int commands_send_pending(struct twin_txn *txn, const char *id, size_t id_len, int64_t now,
                          struct outlist *ol, char *err)
{
    struct pending pd = {txn, now, ol, err};
    int rc = twin_command_list(txn, id, id_len, send_pending_one, &pd, err);
    if (rc == -EBADMSG) {
        /* a damaged record is skipped (the rest were sent); it must not block the device */
        log_error("damaged command skipped", "id=%.*s err=\"%s\"", (int)id_len, id, err);
        rc = 0;
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Acknowledgements
 * ------------------------------------------------------------------------------------------ */

struct ack {
    struct hub_rules *rules;
    const struct bridge_topic *t;
    const char *cmd_id;
    size_t cmd_id_len;
    enum twin_command_state status;
    const msgpack_object *result;
    int64_t now;
    struct outlist *ol;
    char err[TWIN_ERR_LEN];
};

static int ack_fn(struct twin_txn *txn, void *ctx)
{
    struct ack *a = ctx;
    struct twin_command c;
    outlist_start(a->ol, txn);
    int rc = twin_command_update(txn, a->t->id, a->t->id_len, a->cmd_id, a->cmd_id_len, a->status,
                                 a->result, a->now, &c, commands_on_event, a->ol, a->err);
    if (rc < 0)
        return rc;
    /* a resource's dispatch command that is done, or declined: the same transaction */
    return hub_rules_dispatch_command(a->rules, txn, &c, a->now, a->ol, a->err);
}

/* {id, status, result?}; other keys are ignored (a newer device may say more). */
static const char *ack_parse(struct ack *a, const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return "an ack must be a map {id, status, result?}";
    const char *status = NULL;
    size_t status_len = 0;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (hub_key_is(k, "id")) {
            if (v->type != MSGPACK_OBJECT_STR)
                return "ack 'id' must be a string";
            a->cmd_id = v->via.str.ptr;
            a->cmd_id_len = v->via.str.size;
        } else if (hub_key_is(k, "status")) {
            if (v->type != MSGPACK_OBJECT_STR)
                return "ack 'status' must be a string";
            status = v->via.str.ptr;
            status_len = v->via.str.size;
        } else if (hub_key_is(k, "result")) {
            a->result = v->type == MSGPACK_OBJECT_NIL ? NULL : v;
        }
    }
    if (!a->cmd_id)
        return "an ack needs 'id'";
    if (!status || twin_command_state_parse(status, status_len, &a->status) < 0 ||
        (a->status != TWIN_CMD_DELIVERED && a->status != TWIN_CMD_SUCCEEDED &&
         a->status != TWIN_CMD_FAILED))
        return "ack 'status' must be delivered, succeeded or failed";
    return NULL;
}

int commands_ack_handle(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t)
{
    struct ack a = {.rules = in->rules, .t = t, .now = hub_now_ms(), .ol = &in->out};
    outlist_reset(&in->out);
    if (m->retained) {
        atomic_fetch_add(&in->stats.retained, 1); /* a replay; applied when it was live */
        return 1;
    }
    atomic_fetch_add(&in->stats.acks, 1);
    struct twin_limits lim = ingest_limits(in);
    msgpack_object obj;
    int rc = twin_input_decode(m->payload, m->len, &lim, &in->zone, &obj, a.err);
    if (rc == -ENOMEM)
        ingest_fatal(t, "command ack", rc, a.err);
    if (rc < 0) {
        report_reject(in->report, report_kind_of(rc), m->topic, m->topic_len, a.err);
        goto out;
    }
    const char *why = ack_parse(&a, &obj);
    if (why) {
        report_reject(in->report, REPORT_INVALID, m->topic, m->topic_len, why);
        rc = -EINVAL;
        goto out;
    }
    char err[TWIN_ERR_LEN] = "";
    rc = twin_store_write(in->store, ack_fn, &a, err);
    if (rc == -EINVAL || rc == -E2BIG || rc == -ENOENT || rc == -EPERM || rc == -EBADMSG) {
        /* an unknown or finished command, a step back: the device's mistake (or a late
         * duplicate), nothing changes */
        outlist_reset(&in->out);
        if (rc == -EBADMSG)
            log_error("stored command unreadable; ack not applied", "id=%.*s err=\"%s\"",
                      (int)t->id_len, t->id, a.err);
        report_reject(in->report, rc == -E2BIG ? REPORT_SIZE : REPORT_INVALID, m->topic,
                      m->topic_len, a.err);
        goto out;
    }
    if (rc < 0)
        ingest_fatal(t, "command ack", rc, err[0] ? err : a.err);
out:
    msgpack_zone_clear(&in->zone);
    return rc;
}

void commands_on_ack(struct ingest *in, const struct bridge_msg *m, const struct bridge_topic *t)
{
    if (commands_ack_handle(in, m, t) == 0)
        ingest_flush(in);
}

/* ---------------------------------------------------------------------------------------------
 * The timer
 * ------------------------------------------------------------------------------------------ */

struct expired_cmd {
    char twin[TWIN_ID_MAX];
    size_t len;
    char id[TWIN_CMD_ID_LEN + 1];
};

struct expire {
    struct hub_rules *rules;
    int64_t now;
    struct outlist *ol;
    struct twin_expire_result res;
    struct expired_cmd *cmds; /* EXPIRE_BATCH: those that expired in this transaction */
    unsigned ncmds;
    char err[TWIN_ERR_LEN];
};

static int on_expire(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    struct expire *x = ctx;
    int rc = commands_on_event(x->ol, c, from);
    if (rc == 0 && c->state == TWIN_CMD_EXPIRED && x->cmds && x->ncmds < EXPIRE_BATCH &&
        c->twin_id_len <= TWIN_ID_MAX) {
        struct expired_cmd *e = &x->cmds[x->ncmds++];
        memcpy(e->twin, c->twin_id, c->twin_id_len);
        e->len = c->twin_id_len;
        memcpy(e->id, c->id, sizeof(e->id));
    }
    return rc;
}

static int expire_fn(struct twin_txn *txn, void *ctx)
{
    struct expire *x = ctx;
    outlist_start(x->ol, txn);
    x->ncmds = 0;
    int rc = twin_command_expire(txn, x->now, EXPIRE_BATCH, on_expire, x, &x->res, x->err);
    /* after the walk, which must not see the writes dispatch makes */
    for (unsigned i = 0; rc == 0 && i < x->ncmds; i++) {
        struct twin_command c;
        const struct expired_cmd *e = &x->cmds[i];
        rc = twin_command_get(txn, e->twin, e->len, e->id, strlen(e->id), &c, x->err);
        if (rc == -ENOENT) {
            rc = 0;
            continue;
        }
        if (rc == 0)
            rc = hub_rules_dispatch_command(x->rules, txn, &c, x->now, x->ol, x->err);
    }
    return rc;
}

int commands_expire(struct twin_store *store, struct hub_rules *hr, struct publisher *pub,
                    struct outlist *ol, int64_t now, uint64_t *expired, char *err)
{
    struct expire x = {.rules = hr, .now = now, .ol = ol};
    if (hub_rules_active(hr) && !(x.cmds = malloc(EXPIRE_BATCH * sizeof(*x.cmds))))
        return snprintf(err, TWIN_ERR_LEN, "out of memory"), -ENOMEM;
    *expired = 0;
    do {
        err[0] = '\0';
        int rc = twin_store_write(store, expire_fn, &x, err);
        if (rc < 0) {
            outlist_reset(ol);
            if (!err[0])
                snprintf(err, TWIN_ERR_LEN, "%s", x.err);
            free(x.cmds);
            return rc;
        }
        *expired += x.res.expired;
        outlist_flush(ol, pub);
    } while (x.res.more);
    free(x.cmds);
    return 0;
}

int commands_next_due(struct twin_store *store, int64_t *at, char *err)
{
    struct twin_txn *txn;
    int rc = twin_store_read_begin(store, &txn, err);
    if (rc < 0)
        return rc;
    rc = twin_command_next_deadline(txn, at, err);
    twin_store_read_end(txn);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * After a restart
 * ------------------------------------------------------------------------------------------ */

struct ids {
    char (*v)[TWIN_ID_MAX + 1];
    size_t n, cap;
    struct twin_txn *txn;
    msgpack_zone zone;
    char err[TWIN_ERR_LEN];
};

static int is_pending(void *ctx, const struct twin_command *c, enum twin_command_state from)
{
    (void)ctx;
    (void)from;
    return c->state == TWIN_CMD_QUEUED || c->state == TWIN_CMD_SENT; /* 1 stops the walk */
}

static int collect(void *ctx, const char *id, size_t id_len, const void *doc, size_t len)
{
    struct ids *ids = ctx;
    struct twin_doc d;
    msgpack_zone_clear(&ids->zone);
    if (twin_doc_decode(doc, len, &ids->zone, &d, ids->err) < 0 || !d.connected)
        return 0; /* unreadable ones are logged when they are used */
    int rc = twin_command_list(ids->txn, id, id_len, is_pending, NULL, ids->err);
    if (rc != 1)
        return rc == -EBADMSG ? 0 : rc;
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        void *v = realloc(ids->v, cap * sizeof(*ids->v));
        if (!v)
            return -ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    memcpy(ids->v[ids->n], id, id_len);
    ids->v[ids->n][id_len] = '\0';
    ids->n++;
    return 0;
}

struct resend {
    const char *id;
    int64_t now;
    struct outlist *ol;
    char err[TWIN_ERR_LEN];
};

static int resend_fn(struct twin_txn *txn, void *ctx)
{
    struct resend *r = ctx;
    outlist_start(r->ol, txn);
    return commands_send_pending(txn, r->id, strlen(r->id), r->now, r->ol, r->err);
}

int commands_resend_connected(struct twin_store *store, struct publisher *pub, struct outlist *ol,
                              uint64_t *devices, char *err)
{
    struct ids ids = {0};
    *devices = 0;
    if (!msgpack_zone_init(&ids.zone, 4096)) {
        snprintf(err, TWIN_ERR_LEN, "out of memory");
        return -ENOMEM;
    }
    int rc = twin_store_read_begin(store, &ids.txn, err);
    if (rc == 0) {
        rc = twin_list(ids.txn, NULL, 0, collect, &ids, err);
        if (rc < 0 && !err[0])
            snprintf(err, TWIN_ERR_LEN, "%s", ids.err[0] ? ids.err : "listing twins failed");
        twin_store_read_end(ids.txn);
    }
    msgpack_zone_destroy(&ids.zone);
    /* One transaction per device, each queued after its commit. */
    for (size_t i = 0; rc == 0 && i < ids.n; i++) {
        struct resend r = {.id = ids.v[i], .now = hub_now_ms(), .ol = ol};
        err[0] = '\0';
        rc = twin_store_write(store, resend_fn, &r, err);
        if (rc < 0) {
            outlist_reset(ol);
            if (!err[0])
                snprintf(err, TWIN_ERR_LEN, "%s", r.err);
            break;
        }
        if (outlist_flush(ol, pub))
            log_info("the device's dropped commands are sent when it next comes online",
                     "id=%s", ids.v[i]);
        (*devices)++;
    }
    free(ids.v);
    return rc;
}
