/* dispatch (the hub's side): the rules file's dispatch: entries, run inside the write
 * transaction of every change that can open or end a demand or free or move a resource, so an
 * assignment, its command and desired state for the resource and its events commit with the
 * change that decided them.
 *
 * A demand is a twin the entry's demand match admits while its rule fires (or its when: holds).
 * Its record (twin_dispatch_*, one per demand) goes open -> assigned -> served and is deleted
 * when the demand ends:
 * - open: waiting for a resource (since `opened`);
 * - assigned: a resource was chosen and told (command, desired.<key>); it counts against the
 *   resource's capacity. It stays assigned (under way: never re-planned) until the resource's
 *   command succeeds (served), fails or expires (back to open, and that resource is not offered
 *   this demand again), or the resource goes offline or is deleted or its command leaves the
 *   queue unanswered (back to open), or the demand ends (released: the resource's
 *   desired.<key> cleared and on_release's command sent);
 * - served: the resource reported its command done; the demand is not a demand again until its
 *   condition has ended once (a new episode).
 * A resource is a connected twin the resource match admits, with capacity (default 1) above its
 * assignments, that its when: admits; a pair is allowed when the resource has every skill the
 * demand requires and the cost is a finite number.
 *
 * Each decision solves every open demand against every resource with room left, to the optimum
 * (rules_assign_solve: first the most priority served, then the least total cost), the first
 * max_demands of them by priority and age; the rest, if any, greedily by priority
 * (rules_assign_greedy) with the capacity left. The greedy answer to the same problem is counted
 * beside it (twinhub_dispatch_greedy_cost_total): the nearest-free baseline.
 *
 * Threads: called with the rules set held shared, inside the one write transaction (Paho's
 * receive thread or the main thread's timer and command passes), like the rules. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "log.h"

#define RESOURCES_MAX 10000 /* resources one decision reads */
#define DEMANDS_MAX 100000  /* records of one dispatch one decision reads */
#define DECLINED_BYTES 520  /* the resources a demand is not offered again: the latest that fit */
#define DECIDE_ROUNDS 4     /* decisions in a row while resources refuse the command */

enum dstate { D_OPEN = 0, D_ASSIGNED, D_SERVED };
static const char *const dstate_name[] = {"open", "assigned", "served"};

/* One record, decoded. */
struct drec {
    enum dstate state;
    int64_t opened, assigned;
    double priority, cost;
    char resource[TWIN_ID_MAX + 1]; /* assigned, served */
    char command[TWIN_CMD_ID_LEN + 1];
    /* the resources that handed it back, oldest first, each NUL-terminated; when the next one
     * does not fit the oldest are forgotten (and may be offered it again) */
    char declined[DECLINED_BYTES];
    size_t declined_len;
};

struct dem {
    char id[TWIN_ID_MAX + 1];
    size_t len;
    struct drec r;
    struct twin_doc doc;
};

struct cand {
    char id[TWIN_ID_MAX + 1];
    size_t len;
    struct twin_doc doc;
    unsigned load, room;
};

/* One call's context. */
struct dx {
    const struct rules_set *set;
    struct dispatch_tally *t; /* counted after the commit (outlist_flush) */
    struct twin_txn *txn;
    int64_t now;
    struct outlist *ol;
    char *err;
    msgpack_sbuffer sb;
    msgpack_zone zone;
};

/* ---------------------------------------------------------------------------------------------
 * Records
 * ------------------------------------------------------------------------------------------ */

static void pack_s(msgpack_packer *pk, const char *k, const char *v)
{
    out_pack_key(pk, k);
    out_pack_str(pk, v, strlen(v));
}

static void pack_i(msgpack_packer *pk, const char *k, int64_t v)
{
    out_pack_key(pk, k);
    msgpack_pack_int64(pk, v);
}

static void pack_d(msgpack_packer *pk, const char *k, double v)
{
    out_pack_key(pk, k);
    msgpack_pack_double(pk, v);
}

static int rec_put(struct dx *x, const struct rules_dispatch *D, const char *id, size_t len,
                   const struct drec *r)
{
    msgpack_packer pk;
    x->sb.size = 0;
    msgpack_packer_init(&pk, &x->sb, msgpack_sbuffer_write);
    unsigned n = 4 + (r->state != D_OPEN ? 4 : 0) + (r->declined_len ? 1 : 0);
    msgpack_pack_map(&pk, n);
    pack_s(&pk, "state", dstate_name[r->state]);
    pack_i(&pk, "opened", r->opened);
    pack_d(&pk, "priority", r->priority);
    pack_d(&pk, "cost", r->cost);
    if (r->state != D_OPEN) {
        pack_s(&pk, "resource", r->resource);
        pack_i(&pk, "assigned", r->assigned);
        pack_s(&pk, "command", r->command);
        pack_s(&pk, "dispatch", D->name);
    }
    if (r->declined_len) {
        unsigned k = 0;
        for (size_t o = 0; o < r->declined_len; o += strlen(r->declined + o) + 1)
            k++;
        out_pack_key(&pk, "declined");
        msgpack_pack_array(&pk, k);
        for (size_t o = 0; o < r->declined_len; o += strlen(r->declined + o) + 1)
            out_pack_str(&pk, r->declined + o, strlen(r->declined + o));
    }
    return twin_dispatch_put(x->txn, D->name, strlen(D->name), id, len, x->sb.data, x->sb.size,
                             x->err);
}

static void copy_str(char *dst, size_t cap, const msgpack_object *v)
{
    size_t n = v->type == MSGPACK_OBJECT_STR ? v->via.str.size : 0;
    if (n >= cap)
        n = 0;
    if (n)
        memcpy(dst, v->via.str.ptr, n);
    dst[n] = '\0';
}

static bool declined_has(const struct drec *r, const char *id, size_t len)
{
    for (size_t o = 0; o < r->declined_len; o += strlen(r->declined + o) + 1)
        if (strlen(r->declined + o) == len && !memcmp(r->declined + o, id, len))
            return true;
    return false;
}

/* Adds resource `id` to what r is not offered again, forgetting the oldest to make room. */
static void declined_add(struct drec *r, const char *id, size_t len)
{
    if (len == 0 || len + 1 > sizeof(r->declined) || declined_has(r, id, len))
        return;
    while (r->declined_len + len + 1 > sizeof(r->declined)) {
        size_t first = strlen(r->declined) + 1;
        memmove(r->declined, r->declined + first, r->declined_len - first);
        r->declined_len -= first;
    }
    memcpy(r->declined + r->declined_len, id, len);
    r->declined[r->declined_len + len] = '\0';
    r->declined_len += len + 1;
}

static void declined_decode(struct drec *r, const msgpack_object *v)
{
    /* a string: a record written before the list */
    uint32_t n = v->type == MSGPACK_OBJECT_ARRAY ? v->via.array.size : 1;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *s = v->type == MSGPACK_OBJECT_ARRAY ? &v->via.array.ptr[i] : v;
        if (s->type == MSGPACK_OBJECT_STR && s->via.str.size <= TWIN_ID_MAX &&
            !memchr(s->via.str.ptr, '\0', s->via.str.size))
            declined_add(r, s->via.str.ptr, s->via.str.size);
    }
}

static double num(const msgpack_object *v)
{
    switch (v->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return v->via.f64;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)v->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)v->via.i64;
    default:
        return 0;
    }
}

static int rec_decode(const void *buf, size_t len, struct drec *r)
{
    msgpack_zone z;
    msgpack_object o;
    if (!msgpack_zone_init(&z, 512))
        return -ENOMEM;
    memset(r, 0, sizeof(*r));
    int rc = -EBADMSG;
    size_t off = 0;
    if (msgpack_unpack(buf, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS && off == len &&
        o.type == MSGPACK_OBJECT_MAP) {
        char st[16] = "";
        for (uint32_t i = 0; i < o.via.map.size; i++) {
            const msgpack_object *k = &o.via.map.ptr[i].key, *v = &o.via.map.ptr[i].val;
            if (hub_key_is(k, "state"))
                copy_str(st, sizeof(st), v);
            else if (hub_key_is(k, "opened"))
                r->opened = (int64_t)num(v);
            else if (hub_key_is(k, "assigned"))
                r->assigned = (int64_t)num(v);
            else if (hub_key_is(k, "priority"))
                r->priority = num(v);
            else if (hub_key_is(k, "cost"))
                r->cost = num(v);
            else if (hub_key_is(k, "resource"))
                copy_str(r->resource, sizeof(r->resource), v);
            else if (hub_key_is(k, "command"))
                copy_str(r->command, sizeof(r->command), v);
            else if (hub_key_is(k, "declined"))
                declined_decode(r, v);
        }
        for (int s = 0; s < 3; s++)
            if (!strcmp(st, dstate_name[s])) {
                r->state = (enum dstate)s;
                rc = 0;
            }
        if (rc == 0 && r->state != D_OPEN && !r->resource[0])
            rc = -EBADMSG; /* an assignment to nobody */
    }
    msgpack_zone_destroy(&z);
    return rc;
}

static int rec_get(struct dx *x, const struct rules_dispatch *D, const char *id, size_t len,
                   struct drec *r)
{
    unsigned char buf[TWIN_DISPATCH_RECORD_MAX];
    size_t n;
    int rc = twin_dispatch_get(x->txn, D->name, strlen(D->name), id, len, buf, &n, x->err);
    if (rc < 0 && rc != -EBADMSG)
        return rc;
    if (rc == -EBADMSG || rec_decode(buf, n, r) < 0) {
        log_warn_limited("dispatch record unreadable; the demand starts over",
                         "dispatch=%s id=%.*s", D->name, (int)len, id);
        return -ENOENT;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * What the entry's expressions say
 * ------------------------------------------------------------------------------------------ */

static int eval(const struct rules_expr *e, const struct twin_doc *self, const struct twin_doc *dm,
                const struct twin_doc *rs, double waiting, double load, int64_t now,
                struct rules_value *v)
{
    struct rules_twin tw = {.doc = self ? self : dm,
                            .now = now,
                            .demand = dm,
                            .resource = rs,
                            .waiting_s = waiting,
                            .load = load};
    return rules_expr_eval(e, &tw, v, NULL);
}

/* 1: twin id (doc: as it is now) is a demand of D; 0: it is not; < 0: a store error. */
static int is_demand(struct dx *x, const struct rules_dispatch *D, const char *id, size_t len,
                     const struct twin_doc *doc)
{
    if (D->demand_rule) {
        unsigned char buf[TWIN_RULE_STATE_MAX];
        size_t n;
        struct rules_record r;
        int rc = twin_rule_state_get(x->txn, id, len, D->demand_rule, strlen(D->demand_rule), buf,
                                     &n, x->err);
        if (rc == -ENOENT || rc == -EINVAL || rc == -EBADMSG)
            return 0; /* the rule never ran on this twin, or its record is unreadable */
        if (rc < 0)
            return rc;
        return (n == RULES_STATE_LEN || n == RULES_STATE_V1_LEN) &&
               rules_record_decode(buf, n, &r) == 0 && r.state == RULES_FIRING;
    }
    struct rules_value v;
    return eval(D->demand_when, doc, NULL, NULL, 0, 0, x->now, &v) == 0 && rules_value_true(&v);
}

static double priority_of(struct dx *x, const struct rules_dispatch *D, const struct twin_doc *doc)
{
    struct rules_value v;
    if (!D->priority || eval(D->priority, doc, NULL, NULL, 0, 0, x->now, &v) < 0 ||
        v.type != RULES_NUM || !isfinite(v.n))
        return 1;
    return v.n < 1e-3 ? 1e-3 : v.n > 1e6 ? 1e6 : v.n;
}

/* Whether the string list or string at reported.<path> of doc holds `skill`. */
static bool has_skill(const struct twin_doc *doc, const char *path, const char *skill, size_t n)
{
    const msgpack_object *v = twin_value_path(&doc->reported, path, strlen(path));
    if (!v)
        return false;
    if (v->type == MSGPACK_OBJECT_STR)
        return v->via.str.size == n && !memcmp(v->via.str.ptr, skill, n);
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return false;
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *s = &v->via.array.ptr[i];
        if (s->type == MSGPACK_OBJECT_STR && s->via.str.size == n &&
            !memcmp(s->via.str.ptr, skill, n))
            return true;
    }
    return false;
}

/* Whether resource c has every skill demand d requires. */
static bool skilled(const struct rules_dispatch *D, const struct dem *d, const struct cand *c)
{
    for (unsigned i = 0; i < D->n_requires; i++)
        if (!D->skills_path ||
            !has_skill(&c->doc, D->skills_path, D->requires[i], strlen(D->requires[i])))
            return false;
    if (!D->requires_path)
        return true;
    const msgpack_object *need =
        twin_value_path(&d->doc.reported, D->requires_path, strlen(D->requires_path));
    if (!need)
        return true;
    const msgpack_object *list = need;
    uint32_t cnt = need->type == MSGPACK_OBJECT_ARRAY ? need->via.array.size : 1;
    for (uint32_t i = 0; i < cnt; i++) {
        const msgpack_object *s =
            need->type == MSGPACK_OBJECT_ARRAY ? &list->via.array.ptr[i] : need;
        if (s->type != MSGPACK_OBJECT_STR)
            continue;
        if (!D->skills_path || !has_skill(&c->doc, D->skills_path, s->via.str.ptr, s->via.str.size))
            return false;
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * Events, commands, desired state
 * ------------------------------------------------------------------------------------------ */

static void pack_value(msgpack_packer *pk, const struct rules_value *v)
{
    switch (v->type) {
    case RULES_NUM:
        if (v->n == floor(v->n) && fabs(v->n) < 9e15)
            msgpack_pack_int64(pk, (int64_t)v->n);
        else
            msgpack_pack_double(pk, v->n);
        break;
    case RULES_STR:
        out_pack_str(pk, v->s, v->len);
        break;
    case RULES_BOOL:
        if (v->b)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        break;
    default:
        msgpack_pack_nil(pk);
        break;
    }
}

/* The with: values of the pair, evaluated once per assignment. */
struct withv {
    unsigned n;
    struct rules_value v[RULES_WITH_MAX];
};

static void with_eval(struct dx *x, const struct rules_dispatch *D, const struct dem *d,
                      const struct cand *c, struct withv *w)
{
    w->n = D->n_with;
    for (unsigned i = 0; i < D->n_with; i++)
        if (eval(D->with[i].expr, NULL, &d->doc, &c->doc, (double)(x->now - d->r.opened) / 1000.0,
                 c->load, x->now, &w->v[i]) < 0 ||
            w->v[i].type == RULES_OTHER)
            w->v[i] = (struct rules_value){.type = RULES_NIL};
}

static void pack_with(msgpack_packer *pk, const struct rules_dispatch *D, const struct withv *w)
{
    for (unsigned i = 0; w && i < w->n; i++) {
        out_pack_key(pk, D->with[i].name);
        pack_value(pk, &w->v[i]);
    }
}

/* An event on twins/{id}/events: {type: dispatch, dispatch, state, demand, resource?, cost?,
 * waited_ms?, ts, <with>, <the entry's event fields>}. */
static int event(struct dx *x, const struct rules_dispatch *D, const char *id, size_t id_len,
                 const char *state, const struct dem *d, const char *resource, double cost,
                 const struct withv *w)
{
    const msgpack_object *ef = D->event_fields;
    unsigned n =
        5 + (resource ? 1 : 0) + (resource ? 2 : 0) + (w ? w->n : 0) + (ef ? ef->via.map.size : 0);
    msgpack_packer *pk = outlist_begin(x->ol);
    msgpack_pack_map(pk, n);
    pack_s(pk, "type", "dispatch");
    pack_s(pk, "dispatch", D->name);
    pack_s(pk, "state", state);
    out_pack_key(pk, "demand");
    out_pack_str(pk, d->id, d->len);
    if (resource) {
        pack_s(pk, "resource", resource);
        pack_d(pk, "cost", cost);
        pack_i(pk, "waited_ms", x->now - d->r.opened);
    }
    pack_i(pk, "ts", x->now);
    pack_with(pk, D, w);
    for (uint32_t i = 0; ef && i < ef->via.map.size; i++) {
        msgpack_pack_object(pk, ef->via.map.ptr[i].key);
        msgpack_pack_object(pk, ef->via.map.ptr[i].val);
    }
    return outlist_end_event(x->ol, id, id_len);
}

/* Packs `extra` entries first, then the static args (a map or nil) without the keys the hub
 * sets, into x->sb, and unpacks it into x->zone. */
static int args_object(struct dx *x, const msgpack_object *stat, const struct rules_dispatch *D,
                       const struct dem *d, double cost, bool with_cost, const struct withv *w,
                       msgpack_object *out)
{
    static const char *const hub_keys[] = {"demand", "dispatch", "cost", NULL};
    msgpack_packer pk;
    unsigned n = 2 + (with_cost ? 1 : 0) + (w ? w->n : 0);
    for (uint32_t i = 0; stat->type == MSGPACK_OBJECT_MAP && i < stat->via.map.size; i++) {
        bool mine = false;
        for (const char *const *k = hub_keys; *k; k++)
            mine |= hub_key_is(&stat->via.map.ptr[i].key, *k);
        for (unsigned j = 0; w && j < w->n; j++)
            mine |= hub_key_is(&stat->via.map.ptr[i].key, D->with[j].name);
        n += !mine;
    }
    x->sb.size = 0;
    msgpack_packer_init(&pk, &x->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    out_pack_key(&pk, "demand");
    out_pack_str(&pk, d->id, d->len);
    pack_s(&pk, "dispatch", D->name);
    if (with_cost)
        pack_d(&pk, "cost", cost);
    pack_with(&pk, D, w);
    for (uint32_t i = 0; stat->type == MSGPACK_OBJECT_MAP && i < stat->via.map.size; i++) {
        bool mine = false;
        for (const char *const *k = hub_keys; *k; k++)
            mine |= hub_key_is(&stat->via.map.ptr[i].key, *k);
        for (unsigned j = 0; w && j < w->n; j++)
            mine |= hub_key_is(&stat->via.map.ptr[i].key, D->with[j].name);
        if (!mine) {
            msgpack_pack_object(&pk, stat->via.map.ptr[i].key);
            msgpack_pack_object(&pk, stat->via.map.ptr[i].val);
        }
    }
    size_t off = 0;
    return msgpack_unpack(x->sb.data, x->sb.size, &off, &x->zone, out) == MSGPACK_UNPACK_SUCCESS
               ? 0
               : -ENOMEM;
}

/* A command to resource `rid`: queued, and sent now when it is connected. *cmd_id (may be NULL)
 * receives its id. A command the resource cannot take is logged and skipped. */
static int command(struct dx *x, const char *rid, size_t rlen, bool connected, const char *cmd,
                   size_t cmd_len, const msgpack_object *args, int64_t expires_ms, char *cmd_id)
{
    struct twin_command c;
    int64_t expires = expires_ms ? x->now + expires_ms : 0;
    int rc = twin_command_add(x->txn, rid, rlen, cmd, cmd_len, args, expires, x->now, &c,
                              commands_on_event, x->ol, x->err);
    if (rc == -EINVAL || rc == -E2BIG || rc == -ENOENT || rc == -EBADMSG) {
        log_warn_limited("dispatch command refused", "resource=%.*s cmd=%.*s reason=\"%s\"",
                         (int)rlen, rid, (int)cmd_len, cmd, x->err);
        return 0;
    }
    if (rc < 0)
        return rc;
    if (cmd_id)
        snprintf(cmd_id, TWIN_CMD_ID_LEN + 1, "%s", c.id);
    return connected ? commands_send_one(x->txn, rid, rlen, c.id, x->now, x->ol, x->err) : 0;
}

/* The resource's desired.<key>: the assignment ({demand, dispatch, since, cost, <with>}), or
 * nil to clear it. */
static int desired_put(struct dx *x, const struct rules_dispatch *D, const char *rid, size_t rlen,
                       const struct dem *d, int64_t since, double cost, const struct withv *w)
{
    msgpack_packer pk;
    x->sb.size = 0;
    msgpack_packer_init(&pk, &x->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    out_pack_key(&pk, D->desired_key);
    if (!d) {
        msgpack_pack_nil(&pk);
    } else {
        msgpack_pack_map(&pk, 4 + (w ? w->n : 0));
        out_pack_key(&pk, "demand");
        out_pack_str(&pk, d->id, d->len);
        pack_s(&pk, "dispatch", D->name);
        pack_i(&pk, "since", since);
        pack_d(&pk, "cost", cost);
        pack_with(&pk, D, w);
    }
    msgpack_object patch;
    size_t off = 0;
    if (msgpack_unpack(x->sb.data, x->sb.size, &off, &x->zone, &patch) != MSGPACK_UNPACK_SUCCESS)
        return -ENOMEM;
    struct twin_desired_result res;
    int rc = twin_desired_apply(x->txn, rid, rlen, &patch, TWIN_VERSION_ANY, x->now, &res, x->err);
    if (rc == -EINVAL || rc == -E2BIG || rc == -ENOENT) {
        log_warn_limited("dispatch desired state refused", "resource=%.*s reason=\"%s\"", (int)rlen,
                         rid, x->err);
        return 0;
    }
    if (rc < 0)
        return rc;
    outlist_twin(x->ol, rid, rlen, PUB_STATE | (res.delta_changed ? PUB_DESIRED : 0));
    return 0;
}

/* An assignment of resource rid (f.d): the one carried by command cmd_id (the first), or with
 * cmd_id NULL the latest but not_id's. */
struct find {
    const char *rid, *cmd_id, *not_id;
    size_t rlen, not_len;
    struct dem d;
    bool found;
};

static int find_assigned(void *ctx, const char *name, size_t nlen, const char *id, size_t len,
                         const void *buf, size_t n)
{
    struct find *f = ctx;
    struct drec r;
    (void)name;
    (void)nlen;
    if ((f->not_id && len == f->not_len && !memcmp(id, f->not_id, len)) ||
        rec_decode(buf, n, &r) < 0 || r.state != D_ASSIGNED || strlen(r.resource) != f->rlen ||
        memcmp(r.resource, f->rid, f->rlen) || (f->cmd_id && strcmp(r.command, f->cmd_id)) ||
        (f->found && r.assigned < f->d.r.assigned))
        return 0;
    f->d.r = r;
    memcpy(f->d.id, id, len);
    f->d.id[len] = '\0';
    f->d.len = len;
    f->found = true;
    return f->cmd_id ? 1 : 0;
}

/* Assignment d of resource rid ended: its desired.<key>, if it shows d, shows the resource's
 * latest other assignment (capacity above 1) or nothing. */
static int desired_clear(struct dx *x, const struct rules_dispatch *D, const char *rid, size_t rlen,
                         const struct dem *d)
{
    struct twin_doc rd;
    int rc = twin_get(x->txn, rid, rlen, &rd, x->err);
    if (rc == -ENOENT || rc == -EBADMSG)
        return 0;
    if (rc < 0)
        return rc;
    const msgpack_object *shown =
        twin_value_path(&rd.desired, D->desired_key, strlen(D->desired_key));
    if (!shown || shown->type == MSGPACK_OBJECT_NIL)
        return 0;
    const msgpack_object *sd = twin_value_path(shown, "demand", 6);
    const msgpack_object *sn = twin_value_path(shown, "dispatch", 8);
    size_t nl = strlen(D->name);
    if ((sd && sd->type == MSGPACK_OBJECT_STR &&
         (sd->via.str.size != d->len || memcmp(sd->via.str.ptr, d->id, d->len))) ||
        (sn && sn->type == MSGPACK_OBJECT_STR &&
         (sn->via.str.size != nl || memcmp(sn->via.str.ptr, D->name, nl))))
        return 0; /* it shows another assignment */
    struct find f = {.rid = rid, .rlen = rlen, .not_id = d->id, .not_len = d->len};
    if ((rc = twin_dispatch_list(x->txn, D->name, strlen(D->name), find_assigned, &f, x->err)) < 0)
        return rc;
    if (!f.found)
        return desired_put(x, D, rid, rlen, NULL, 0, 0, NULL);
    struct cand c = {.len = rlen, .doc = rd};
    memcpy(c.id, rid, rlen);
    c.id[rlen] = '\0';
    rc = twin_get(x->txn, f.d.id, f.d.len, &f.d.doc, x->err);
    if (rc < 0 && rc != -ENOENT && rc != -EBADMSG)
        return rc;
    struct withv w = {0};
    if (rc == 0)
        with_eval(x, D, &f.d, &c, &w);
    return desired_put(x, D, rid, rlen, &f.d, f.d.r.assigned, f.d.r.cost, &w);
}

/* Ends demand d's assignment on the resource's side: its desired.<key> cleared, and with
 * `cancel` the command marked failed (it is not sent again) and on_release's command sent. */
static int unassign(struct dx *x, const struct rules_dispatch *D, struct dem *d, bool cancel)
{
    const char *rid = d->r.resource;
    size_t rlen = strlen(rid);
    int rc;
    if (!rlen)
        return 0;
    if (D->desired_key && (rc = desired_clear(x, D, rid, rlen, d)) < 0)
        return rc;
    if (!cancel)
        return 0;
    if (d->r.command[0]) {
        struct twin_command c;
        rc = twin_command_update(x->txn, rid, rlen, d->r.command, strlen(d->r.command),
                                 TWIN_CMD_FAILED, NULL, x->now, &c, commands_on_event, x->ol,
                                 x->err);
        if (rc < 0 && rc != -EPERM && rc != -ENOENT && rc != -EINVAL && rc != -EBADMSG)
            return rc; /* -EPERM: it was done or failed already; -EBADMSG: damaged */
    }
    if (D->release_cmd) {
        struct twin_doc rd;
        bool connected = twin_get(x->txn, rid, rlen, &rd, x->err) == 0 && rd.connected;
        msgpack_object args;
        if ((rc = args_object(x, &D->release_args, D, d, 0, false, NULL, &args)) < 0 ||
            (rc = command(x, rid, rlen, connected, D->release_cmd, D->release_cmd_len, &args, 0,
                          NULL)) < 0)
            return rc;
    }
    return 0;
}

/* Demand d, assigned, goes back to open; events on both twins (not on a resource that is gone).
 * With `cancel` the resource is told (unassign). With `declined` (its command failed or went
 * unanswered) it is not offered to that resource again; a resource that went offline or lost
 * the command through no act of its own may be offered it again once it is back. */
static int hand_back_one(struct dx *x, const struct rules_dispatch *D, struct dem *d,
                         bool resource_gone, bool cancel, bool declined, const char *why)
{
    char rid[TWIN_ID_MAX + 1];
    int rc;
    snprintf(rid, sizeof(rid), "%s", d->r.resource);
    if (!resource_gone && (rc = unassign(x, D, d, cancel)) < 0)
        return rc;
    if (declined)
        declined_add(&d->r, rid, strlen(rid));
    d->r.state = D_OPEN;
    d->r.resource[0] = d->r.command[0] = '\0';
    x->t->returned++;
    log_info("dispatch returned", "dispatch=%s demand=%s resource=%s reason=%s", D->name, d->id,
             rid, why);
    if ((rc = rec_put(x, D, d->id, d->len, &d->r)) < 0 ||
        (rc = event(x, D, d->id, d->len, "returned", d, rid, d->r.cost, NULL)) < 0)
        return rc;
    return resource_gone ? 0 : event(x, D, rid, strlen(rid), "returned", d, rid, d->r.cost, NULL);
}

/* Demand d's assignment ended with its command in state `st` (final): served (succeeded) or
 * handed back; events on both twins. */
static int command_ended(struct dx *x, const struct rules_dispatch *D, struct dem *d,
                         enum twin_command_state st, const char *why)
{
    char rid[TWIN_ID_MAX + 1];
    int rc;
    if (st != TWIN_CMD_SUCCEEDED)
        return hand_back_one(x, D, d, false, false, true, why);
    snprintf(rid, sizeof(rid), "%s", d->r.resource);
    if ((rc = unassign(x, D, d, false)) < 0)
        return rc;
    d->r.state = D_SERVED;
    x->t->completed++;
    log_info("dispatch done", "dispatch=%s demand=%s resource=%s", D->name, d->id, rid);
    if ((rc = rec_put(x, D, d->id, d->len, &d->r)) < 0 ||
        (rc = event(x, D, d->id, d->len, "done", d, rid, d->r.cost, NULL)) < 0)
        return rc;
    return event(x, D, rid, strlen(rid), "done", d, rid, d->r.cost, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Decisions
 * ------------------------------------------------------------------------------------------ */

struct lists {
    struct dem *d;
    size_t nd, capd;
    struct cand *c;
    size_t nc, capc;
    const struct rules_dispatch *D;
    bool full;
};

/* Room for one more element of *v (n used, *cap allocated, `size` bytes each). */
static int grow(void **v, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*v, c * size);
    if (!p)
        return -ENOMEM;
    *v = p;
    *cap = c;
    return 0;
}

static int collect_dem(void *ctx, const char *name, size_t nlen, const char *id, size_t len,
                       const void *buf, size_t n)
{
    struct lists *l = ctx;
    (void)name;
    (void)nlen;
    if (l->nd == DEMANDS_MAX) {
        l->full = true;
        return 1;
    }
    if (grow((void **)&l->d, l->nd, &l->capd, sizeof(*l->d)) < 0)
        return -ENOMEM;
    struct dem *d = &l->d[l->nd];
    if (rec_decode(buf, n, &d->r) < 0)
        return 0; /* rec_get starts it over when its twin next changes */
    memcpy(d->id, id, len);
    d->id[len] = '\0';
    d->len = len;
    l->nd++;
    return 0;
}

static int collect_res(void *ctx, const char *id, size_t len, const void *doc, size_t n)
{
    struct lists *l = ctx;
    (void)doc;
    (void)n;
    if (!rules_glob_match(l->D->resource_match, id, len))
        return 0;
    if (l->nc == RESOURCES_MAX) {
        l->full = true;
        return 1;
    }
    if (grow((void **)&l->c, l->nc, &l->capc, sizeof(*l->c)) < 0)
        return -ENOMEM;
    struct cand *c = &l->c[l->nc++];
    memcpy(c->id, id, len);
    c->id[len] = '\0';
    c->len = len;
    c->load = c->room = 0;
    return 0;
}

static int by_priority(const void *a, const void *b)
{
    const struct dem *x = *(const struct dem *const *)a, *y = *(const struct dem *const *)b;
    if (x->r.priority != y->r.priority)
        return x->r.priority > y->r.priority ? -1 : 1;
    if (x->r.opened != y->r.opened)
        return x->r.opened < y->r.opened ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* Assigns d to c. A resource that cannot take the command (refused: too large, a bad name)
 * declines d instead (*refused set): d stays open for another decision. */
static int assign(struct dx *x, const struct rules_dispatch *D, struct dem *d, struct cand *c,
                  double cost, bool *refused)
{
    struct withv w;
    msgpack_object args;
    int rc;
    with_eval(x, D, d, c, &w);
    d->r.command[0] = '\0';
    if (D->cmd) {
        if ((rc = args_object(x, &D->args, D, d, cost, true, &w, &args)) < 0 ||
            (rc = command(x, c->id, c->len, c->doc.connected, D->cmd, D->cmd_len, &args,
                          D->expires_ms, d->r.command)) < 0)
            return rc;
        if (!d->r.command[0]) {
            declined_add(&d->r, c->id, c->len);
            *refused = true;
            return rec_put(x, D, d->id, d->len, &d->r);
        }
    }
    d->r.state = D_ASSIGNED;
    d->r.assigned = x->now;
    d->r.cost = cost;
    snprintf(d->r.resource, sizeof(d->r.resource), "%s", c->id);
    if ((D->desired_key && (rc = desired_put(x, D, c->id, c->len, d, x->now, cost, &w)) < 0) ||
        (rc = rec_put(x, D, d->id, d->len, &d->r)) < 0 ||
        (rc = event(x, D, d->id, d->len, "assigned", d, c->id, cost, &w)) < 0 ||
        (rc = event(x, D, c->id, c->len, "assigned", d, c->id, cost, &w)) < 0)
        return rc;
    c->load++;
    c->room--;
    x->t->assigned++;
    if (x->t->nwait < DISPATCH_TALLY_OBS)
        x->t->wait_ns[x->t->nwait++] = (x->now - d->r.opened) * 1000000;
    log_info("dispatch assigned", "dispatch=%s demand=%s resource=%s cost=%.3g waited_ms=%lld",
             D->name, d->id, c->id, cost, (long long)(x->now - d->r.opened));
    return 0;
}

static bool twin_exists(struct dx *x, const char *id, size_t len, int *rc)
{
    const void *buf;
    size_t n;
    *rc = twin_get_raw(x->txn, id, len, &buf, &n, x->err);
    if (*rc == -ENOENT || *rc == -EINVAL) { /* -EINVAL: no twin can have that id */
        *rc = 0;
        return false;
    }
    return true;
}

/* Records whose twins are gone (deleted): an assignment whose demand is gone is released, one
 * whose resource is gone returns to open, a served demand that is gone is forgotten. And an
 * assignment whose command the hub no longer holds as pending (dropped from a full queue by
 * commands.max_per_device, or ended without the hub hearing of it) ends as its command did. */
static int sweep(struct dx *x, const struct rules_dispatch *D, struct lists *l)
{
    int rc = 0;
    for (size_t i = 0; i < l->nd; i++) {
        struct dem *d = &l->d[i];
        if (d->r.state == D_OPEN)
            continue; /* decide reads its twin */
        if (!twin_exists(x, d->id, d->len, &rc)) {
            if (d->r.state == D_ASSIGNED) {
                char rid[TWIN_ID_MAX + 1];
                snprintf(rid, sizeof(rid), "%s", d->r.resource);
                if ((rc = unassign(x, D, d, true)) < 0)
                    return rc;
                x->t->released++;
                log_info("dispatch released", "dispatch=%s demand=%s resource=%s reason=deleted",
                         D->name, d->id, rid);
                if ((rc = event(x, D, rid, strlen(rid), "released", d, NULL, 0, NULL)) < 0)
                    return rc;
            }
            if ((rc = twin_dispatch_del(x->txn, D->name, strlen(D->name), d->id, d->len, x->err)) <
                0)
                return rc;
            d->r.state = D_SERVED; /* out of this decision */
            continue;
        }
        if (rc < 0)
            return rc;
        if (d->r.state != D_ASSIGNED)
            continue;
        if (!twin_exists(x, d->r.resource, strlen(d->r.resource), &rc)) {
            if (rc < 0 || (rc = hand_back_one(x, D, d, true, false, false, "deleted")) < 0)
                return rc;
            continue;
        }
        if (rc < 0)
            return rc;
        if (!d->r.command[0])
            continue; /* no on_assign command: it lasts until the demand ends */
        struct twin_command c;
        rc = twin_command_get(x->txn, d->r.resource, strlen(d->r.resource), d->r.command,
                              strlen(d->r.command), &c, x->err);
        if (rc == -ENOENT || rc == -EBADMSG || rc == -EINVAL)
            rc = hand_back_one(x, D, d, false, false, false, "command dropped");
        else if (rc == 0 && twin_command_state_final(c.state))
            rc = command_ended(x, D, d, c.state, "command ended");
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Open demand d's cost against resource c: NAN where the pair is not allowed. */
static double pair_cost(struct dx *x, const struct rules_dispatch *D, const struct dem *d,
                        const struct cand *c)
{
    struct rules_value v;
    if ((c->len == d->len && !memcmp(c->id, d->id, d->len)) || declined_has(&d->r, c->id, c->len) ||
        !skilled(D, d, c))
        return NAN;
    if (eval(D->cost, NULL, &d->doc, &c->doc, (double)(x->now - d->r.opened) / 1000.0, c->load,
             x->now, &v) == 0 &&
        v.type == RULES_NUM && isfinite(v.n) && fabs(v.n) < 1e12)
        return v.n;
    return NAN;
}

/* Solves dispatch D's open demands against its resources with room, and carries out what the
 * solution says. *refused: a resource refused its command (another decision may place it). */
static int decide_once(struct dx *x, const struct rules_dispatch *D, bool *refused)
{
    struct lists l = {.D = D};
    struct dem **open = NULL;
    double *cost = NULL, *prio = NULL, *row = NULL, *tail = NULL, total = 0, gtotal = 0;
    unsigned *cap = NULL;
    int *out = NULL, *gout = NULL;
    struct cand **room = NULL;
    int rc = twin_dispatch_list(x->txn, D->name, strlen(D->name), collect_dem, &l, x->err);
    if (rc < 0 || (rc = sweep(x, D, &l)) < 0)
        goto done;
    if (l.full)
        log_warn_limited("dispatch records past the limit not read this decision",
                         "dispatch=%s limit=%d", D->name, DEMANDS_MAX);
    size_t nopen = 0;
    for (size_t i = 0; i < l.nd; i++)
        nopen += l.d[i].r.state == D_OPEN;
    rc = 0;
    if (nopen == 0)
        goto done;
    int64_t t0 = hub_mono_ns();
    /* resources: connected, admitted by when:, with room */
    char prefix[TWIN_ID_MAX + 1];
    memcpy(prefix, D->resource_match, D->resource_prefix_len);
    l.full = false;
    if ((rc = twin_list(x->txn, prefix, D->resource_prefix_len, collect_res, &l, x->err)) < 0)
        goto done;
    if (l.full)
        log_warn_limited("dispatch resources past the limit not offered this decision",
                         "dispatch=%s limit=%d", D->name, RESOURCES_MAX);
    size_t nroom = 0;
    room = calloc(l.nc ? l.nc : 1, sizeof(*room));
    open = calloc(nopen, sizeof(*open));
    if (!room || !open) {
        rc = -ENOMEM;
        goto done;
    }
    for (size_t j = 0; j < l.nc; j++) {
        struct cand *c = &l.c[j];
        if ((rc = twin_get(x->txn, c->id, c->len, &c->doc, x->err)) == -ENOENT || rc == -EBADMSG)
            continue;
        if (rc < 0)
            goto done;
        rc = 0;
        for (size_t i = 0; i < l.nd; i++)
            if (l.d[i].r.state == D_ASSIGNED && !strcmp(l.d[i].r.resource, c->id))
                c->load++;
        struct rules_value v;
        if (!c->doc.connected || (D->resource_when && (eval(D->resource_when, &c->doc, NULL, NULL,
                                                            0, 0, x->now, &v) < 0 ||
                                                       !rules_value_true(&v))))
            continue;
        double capacity = 1;
        if (D->capacity && eval(D->capacity, &c->doc, NULL, NULL, 0, 0, x->now, &v) == 0)
            capacity = v.type == RULES_NUM && isfinite(v.n) ? v.n : 1; /* not said: 1 */
        capacity = capacity < 0 ? 0 : capacity > 1000 ? 1000 : floor(capacity);
        if (capacity > c->load) {
            c->room = (unsigned)capacity - c->load;
            room[nroom++] = c;
        }
    }
    /* open demands, their twins read; a demand whose twin is gone ends */
    size_t n = 0;
    for (size_t i = 0; i < l.nd; i++) {
        struct dem *d = &l.d[i];
        if (d->r.state != D_OPEN)
            continue;
        rc = twin_get(x->txn, d->id, d->len, &d->doc, x->err);
        if (rc == -ENOENT || rc == -EBADMSG) {
            if ((rc = twin_dispatch_del(x->txn, D->name, strlen(D->name), d->id, d->len, x->err)) <
                    0 &&
                rc != -ENOENT)
                goto done;
            continue;
        }
        if (rc < 0)
            goto done;
        open[n++] = d;
    }
    rc = 0;
    if (n == 0 || nroom == 0)
        goto done;
    qsort(open, n, sizeof(*open), by_priority);
    /* the costs of the first max_demands only: the rest take a row each, greedily */
    size_t nopt = n < D->max_demands ? n : D->max_demands;
    cost = malloc(nopt * nroom * sizeof(*cost));
    prio = malloc(nopt * sizeof(*prio));
    cap = malloc(nroom * sizeof(*cap));
    out = malloc(n * sizeof(*out));
    gout = malloc(nopt * sizeof(*gout));
    row = malloc(nroom * sizeof(*row));
    tail = malloc((n - nopt + 1) * sizeof(*tail));
    if (!cost || !prio || !cap || !out || !gout || !row || !tail) {
        rc = -ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < nopt; i++) {
        prio[i] = open[i]->r.priority > 0 ? open[i]->r.priority : 1;
        for (size_t j = 0; j < nroom; j++)
            cost[i * nroom + j] = pair_cost(x, D, open[i], room[j]);
    }
    for (size_t j = 0; j < nroom; j++)
        cap[j] = room[j]->room;
    struct rules_assign p = {.n_demands = (unsigned)nopt,
                             .n_resources = (unsigned)nroom,
                             .cost = cost,
                             .capacity = cap,
                             .priority = prio};
    rc = rules_assign_solve(&p, out, &total);
    if (rc < 0 && rc != -ENOMEM) {
        /* -EIO, or -EDOM: costs a device made so large that the two objectives do not fit one
         * double. Never a reason to fail the change that asked for the decision. */
        log_warn_limited("dispatch solver failed; assigning greedily",
                         "dispatch=%s demands=%zu rc=%d", D->name, nopt, rc);
        x->t->solver_failures++;
        rc = rules_assign_greedy(&p, out, &total);
        if (rc == -EDOM) {
            rc = 0; /* nothing assigned this time */
            goto done;
        }
    }
    if (rc < 0)
        goto done;
    /* the baseline on the same problem: nearest free resource, by priority and age (counted
     * below unless a resource refuses its command: that plan is not carried out) */
    bool compared = false;
    if (rules_assign_greedy(&p, gout, &gtotal) == 0) {
        double ps = 0, gs = 0;
        for (size_t i = 0; i < nopt; i++) {
            ps += out[i] >= 0 ? prio[i] : 0;
            gs += gout[i] >= 0 ? prio[i] : 0;
        }
        compared = fabs(ps - gs) < 1e-9 && ps > 0;
    }
    /* past max_demands: by priority and age, each the least costly resource with room left */
    if (n > nopt) {
        for (size_t i = 0; i < nopt; i++)
            if (out[i] >= 0)
                cap[out[i]]--;
        for (size_t i = nopt; i < n; i++) {
            out[i] = -1;
            for (size_t j = 0; j < nroom; j++) {
                row[j] = cap[j] ? pair_cost(x, D, open[i], room[j]) : NAN;
                if (!isnan(row[j]) && (out[i] < 0 || row[j] < row[out[i]]))
                    out[i] = (int)j;
            }
            if (out[i] >= 0) {
                cap[out[i]]--;
                tail[i - nopt] = row[out[i]];
            }
        }
        x->t->greedy_decisions++;
    }
    x->t->decisions++;
    if (x->t->nsolve < DISPATCH_TALLY_OBS)
        x->t->solve_ns[x->t->nsolve++] = hub_mono_ns() - t0;
    for (size_t i = 0; i < n; i++) {
        if (out[i] < 0)
            continue;
        double cij = i < nopt ? cost[i * nroom + out[i]] : tail[i - nopt];
        if ((rc = assign(x, D, open[i], room[out[i]], cij, refused)) < 0)
            goto done;
    }
    if (compared && !*refused) {
        x->t->cost += total;
        x->t->greedy_cost += gtotal;
        x->t->compared++;
    }
done:
    free(l.d);
    free(l.c);
    free(open);
    free(room);
    free(cost);
    free(prio);
    free(cap);
    free(out);
    free(gout);
    free(row);
    free(tail);
    return rc == -ENOMEM ? -ENOMEM : rc;
}

/* Decides, and again while resources refuse their command (each refusal takes that pair out). */
static int decide(struct dx *x, const struct rules_dispatch *D)
{
    int rc = 0;
    bool refused = true;
    for (int round = 0; rc == 0 && refused && round < DECIDE_ROUNDS; round++) {
        refused = false;
        rc = decide_once(x, D, &refused);
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------------ */

static void add_double(_Atomic double *a, double d)
{
    double old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, old + d, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

void hub_dispatch_tally_flush(struct dispatch_tally *t)
{
    struct hub_dispatch_stats *st = t->to;
    if (!st)
        return;
#define ADD(f)                                                                                     \
    if (t->f)                                                                                      \
    atomic_fetch_add_explicit(&st->f, t->f, memory_order_relaxed)
    ADD(opened);
    ADD(assigned);
    ADD(completed);
    ADD(returned);
    ADD(released);
    ADD(decisions);
    ADD(greedy_decisions);
    ADD(solver_failures);
    ADD(compared);
#undef ADD
    if (t->compared) {
        add_double(&st->cost, t->cost);
        add_double(&st->greedy_cost, t->greedy_cost);
    }
    for (unsigned i = 0; i < t->nwait; i++)
        hub_hist_observe(&st->wait, t->wait_ns[i]);
    for (unsigned i = 0; i < t->nsolve; i++)
        hub_hist_observe(&st->solve, t->solve_ns[i]);
    memset(t, 0, sizeof(*t));
}

static int dx_init(struct dx *x)
{
    msgpack_sbuffer_init(&x->sb);
    return msgpack_zone_init(&x->zone, 2048) ? 0 : -ENOMEM;
}

static void dx_cleanup(struct dx *x)
{
    msgpack_sbuffer_destroy(&x->sb);
    msgpack_zone_destroy(&x->zone);
}

/* Hands demands assigned to resource `rid` back (it went offline or was deleted). Sets *any
 * when it held any. */
static int hand_back(struct dx *x, const struct rules_dispatch *D, const char *rid, size_t rlen,
                     bool gone, bool *any)
{
    struct lists l = {.D = D};
    int rc = twin_dispatch_list(x->txn, D->name, strlen(D->name), collect_dem, &l, x->err);
    for (size_t i = 0; rc >= 0 && i < l.nd; i++) {
        struct dem *d = &l.d[i];
        if (d->r.state != D_ASSIGNED || strlen(d->r.resource) != rlen ||
            memcmp(d->r.resource, rid, rlen))
            continue;
        *any = true;
        rc = hand_back_one(x, D, d, gone, true, false, gone ? "deleted" : "offline");
    }
    free(l.d);
    free(l.c);
    return rc < 0 ? rc : 0;
}

/* doc NULL: twin id was deleted in this transaction. */
static int on_twin(struct dx *x, const struct rules_dispatch *D, const char *id, size_t len,
                   const struct twin_doc *doc)
{
    bool again = false;
    int rc;
    if (rules_glob_match(D->demand_match, id, len)) {
        struct dem d = {.len = len};
        memcpy(d.id, id, len);
        if (doc)
            d.doc = *doc;
        int want = doc ? is_demand(x, D, id, len, doc) : 0;
        if (want < 0)
            return want;
        rc = rec_get(x, D, id, len, &d.r);
        if (rc < 0 && rc != -ENOENT)
            return rc;
        bool have = rc == 0;
        if (want && !have) {
            d.r = (struct drec){
                .state = D_OPEN, .opened = x->now, .priority = priority_of(x, D, doc)};
            x->t->opened++;
            if ((rc = rec_put(x, D, id, len, &d.r)) < 0 ||
                (rc = event(x, D, id, len, "open", &d, NULL, 0, NULL)) < 0)
                return rc;
            again = true;
        } else if (!want && have) {
            if (d.r.state == D_ASSIGNED) {
                /* the demand ended before its resource was done: release it */
                char rid[TWIN_ID_MAX + 1];
                snprintf(rid, sizeof(rid), "%s", d.r.resource);
                if ((rc = unassign(x, D, &d, true)) < 0)
                    return rc;
                x->t->released++;
                log_info("dispatch released", "dispatch=%s demand=%.*s resource=%s reason=%s",
                         D->name, (int)len, id, rid, doc ? "ended" : "deleted");
                if (twin_exists(x, rid, strlen(rid), &rc) &&
                    (rc = event(x, D, rid, strlen(rid), "released", &d, NULL, 0, NULL)) < 0)
                    return rc;
                if (rc < 0)
                    return rc;
                again = true;
            }
            if (doc && d.r.state != D_SERVED &&
                (rc = event(x, D, id, len, d.r.state == D_OPEN ? "cancelled" : "released", &d, NULL,
                            0, NULL)) < 0)
                return rc;
            if ((rc = twin_dispatch_del(x->txn, D->name, strlen(D->name), id, len, x->err)) < 0)
                return rc;
        }
    }
    if (rules_glob_match(D->resource_match, id, len)) {
        /* a resource that changed: it may have moved, freed up or come on shift */
        if ((!doc || !doc->connected) && (rc = hand_back(x, D, id, len, !doc, &again)) < 0)
            return rc;
        again = true;
    }
    return again ? decide(x, D) : 0;
}

int hub_dispatch_twin(const struct rules_set *set, struct hub_dispatch_stats *st,
                      struct twin_txn *txn, const char *id, size_t id_len,
                      const struct twin_doc *doc, int64_t now, struct outlist *ol, char *err)
{
    unsigned n = set ? rules_set_dispatch_count(set) : 0, mine = 0;
    /* a twin that no entry names as a demand or a resource costs two glob matches, nothing
     * allocated */
    for (unsigned i = 0; i < n; i++) {
        const struct rules_dispatch *D = rules_set_dispatch(set, i);
        mine += rules_glob_match(D->demand_match, id, id_len) ||
                rules_glob_match(D->resource_match, id, id_len);
    }
    if (mine == 0)
        return 0;
    ol->disp.to = st;
    struct dx x = {.set = set, .t = &ol->disp, .txn = txn, .now = now, .ol = ol, .err = err};
    int rc = dx_init(&x);
    for (unsigned i = 0; rc == 0 && i < n; i++)
        rc = on_twin(&x, rules_set_dispatch(set, i), id, id_len, doc);
    dx_cleanup(&x);
    return rc;
}

int hub_dispatch_command(const struct rules_set *set, struct hub_dispatch_stats *st,
                         struct twin_txn *txn, const struct twin_command *c, int64_t now,
                         struct outlist *ol, char *err)
{
    unsigned n = set ? rules_set_dispatch_count(set) : 0;
    if (n == 0 || !twin_command_state_final(c->state))
        return 0;
    ol->disp.to = st;
    struct dx x = {.set = set, .t = &ol->disp, .txn = txn, .now = now, .ol = ol, .err = err};
    int rc = dx_init(&x);
    for (unsigned i = 0; rc == 0 && i < n; i++) {
        const struct rules_dispatch *D = rules_set_dispatch(set, i);
        struct find f = {.rid = c->twin_id, .rlen = c->twin_id_len, .cmd_id = c->id};
        rc = twin_dispatch_list(txn, D->name, strlen(D->name), find_assigned, &f, err);
        if (rc < 0)
            break;
        rc = 0;
        if (!f.found)
            continue;
        const char *why = c->state == TWIN_CMD_EXPIRED ? "expired" : "failed";
        if ((rc = command_ended(&x, D, &f.d, c->state, why)) < 0 || (rc = decide(&x, D)) < 0)
            break;
    }
    dx_cleanup(&x);
    return rc;
}
