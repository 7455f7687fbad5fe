/* outputs: the messages the hub publishes besides twin state (events, replies to requests,
 * commands to devices), built while a write transaction runs and held in an outlist until it
 * commits, then handed to the publisher. It owns their payloads' shapes and their encoding
 * (msgpack, or JSON for services when publish.encoding is json); it decides neither when they
 * are sent nor what a twin change means.
 *
 * Threads: an outlist belongs to the thread that uses it (ingest's to Paho's receive thread,
 * the main loop's to the main thread); nothing here takes a lock but the publisher's. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "log.h"

/* The packer's writer: a failed allocation poisons the list until the next reset, so a
 * truncated payload is never queued. */
static int write_tmp(void *data, const char *buf, size_t len)
{
    struct outlist *ol = data;
    if (msgpack_sbuffer_write(&ol->tmp, buf, len) != 0) {
        if (!ol->err)
            ol->err = -ENOMEM;
        return -1;
    }
    return 0;
}

int outlist_init(struct outlist *ol, const struct bridge_topics *topics, bool json)
{
    memset(ol, 0, sizeof(*ol));
    ol->topics = topics;
    ol->json = json;
    msgpack_sbuffer_init(&ol->data);
    msgpack_sbuffer_init(&ol->tmp);
    msgpack_packer_init(&ol->pk, ol, write_tmp);
    if (!msgpack_zone_init(&ol->zone, 4096))
        return -ENOMEM;
    return 0;
}

void outlist_cleanup(struct outlist *ol)
{
    msgpack_sbuffer_destroy(&ol->data);
    msgpack_sbuffer_destroy(&ol->tmp);
    msgpack_zone_destroy(&ol->zone);
    free(ol->v);
    ol->v = NULL;
    ol->n = ol->cap = 0;
    free(ol->twins);
    ol->twins = NULL;
    ol->ntwins = ol->captwins = 0;
}

void outlist_reset(struct outlist *ol)
{
    ol->data.size = 0;
    ol->tmp.size = 0;
    ol->n = 0;
    ol->err = 0;
    ol->ntwins = 0;
    ol->txn = NULL;
    memset(ol->cmd_entered, 0, sizeof(ol->cmd_entered));
    memset(&ol->disp, 0, sizeof(ol->disp));
}

void outlist_start(struct outlist *ol, struct twin_txn *txn)
{
    outlist_reset(ol);
    ol->txn = txn;
}

void outlist_twin(struct outlist *ol, const char *id, size_t id_len, unsigned flags)
{
    for (size_t i = 0; i < ol->ntwins; i++)
        if (ol->twins[i].len == id_len && !memcmp(ol->twins[i].id, id, id_len)) {
            ol->twins[i].flags |= flags;
            return;
        }
    if (id_len > TWIN_ID_MAX)
        return;
    if (ol->ntwins == ol->captwins) {
        size_t cap = ol->captwins ? ol->captwins * 2 : 8;
        struct outtwin *t = realloc(ol->twins, cap * sizeof(*t));
        if (!t) {
            log_warn_limited("out of memory: a twin's state waits for its next change", "id=%.*s",
                             (int)id_len, id);
            return;
        }
        ol->twins = t;
        ol->captwins = cap;
    }
    struct outtwin *t = &ol->twins[ol->ntwins++];
    memcpy(t->id, id, id_len);
    t->len = id_len;
    t->flags = flags;
}

msgpack_packer *outlist_begin(struct outlist *ol)
{
    ol->tmp.size = 0;
    return &ol->pk;
}

static int append(struct outlist *ol, const void *p, size_t n, size_t *off)
{
    *off = ol->data.size;
    if (n && msgpack_sbuffer_write(&ol->data, p, n) != 0)
        return -ENOMEM;
    return 0;
}

int outlist_end(struct outlist *ol, enum pub_class cls, const char *topic, bool service, int qos,
                const void *corr, size_t corr_len)
{
    if (ol->err)
        return ol->err;
    if (ol->n == ol->cap) {
        size_t cap = ol->cap ? ol->cap * 2 : 16;
        struct outmsg *v = realloc(ol->v, cap * sizeof(*v));
        if (!v)
            return ol->err = -ENOMEM;
        ol->v = v;
        ol->cap = cap;
    }
    struct outmsg *m = &ol->v[ol->n];
    memset(m, 0, sizeof(*m));
    m->cls = cls;
    m->qos = qos;
    m->topic_len = strlen(topic);
    int rc = append(ol, topic, m->topic_len + 1, &m->topic);
    if (rc == 0 && service && ol->json) {
        /* Our own packing: well formed, so msgpack-c may read it as it is. */
        msgpack_object obj;
        size_t off = 0;
        msgpack_zone_clear(&ol->zone);
        if (msgpack_unpack(ol->tmp.data, ol->tmp.size, &off, &ol->zone, &obj) !=
            MSGPACK_UNPACK_SUCCESS)
            rc = -ENOMEM;
        m->payload = ol->data.size;
        if (rc == 0)
            rc = twin_json_write(&obj, &ol->data);
        m->len = ol->data.size - m->payload;
    } else if (rc == 0) {
        rc = append(ol, ol->tmp.data, ol->tmp.size, &m->payload);
        m->len = ol->tmp.size;
    }
    if (rc == 0 && corr) {
        m->has_corr = true;
        m->corr_len = corr_len;
        rc = append(ol, corr, corr_len, &m->corr);
    }
    ol->tmp.size = 0;
    if (rc < 0)
        return ol->err = rc;
    ol->n++;
    return 0;
}

unsigned outlist_flush(struct outlist *ol, struct publisher *pub)
{
    unsigned dropped = 0;
    for (int i = 0; ol->cmd_counts && i < HUB_CMD_STATES; i++)
        if (ol->cmd_entered[i])
            atomic_fetch_add_explicit(&ol->cmd_counts[i], ol->cmd_entered[i], memory_order_relaxed);
    hub_dispatch_tally_flush(&ol->disp);
    for (size_t i = 0; i < ol->n; i++) {
        const struct outmsg *o = &ol->v[i];
        struct publisher_msg m = {
            .topic = ol->data.data + o->topic,
            .payload = ol->data.data + o->payload,
            .len = o->len,
            .qos = o->qos,
            .correlation = o->has_corr ? ol->data.data + o->corr : NULL,
            .correlation_len = o->corr_len,
            .stream = o->stream,
            .id = o->stream ? ol->data.data + o->id : NULL,
            .id_len = o->id_len,
            .seq = o->seq,
        };
        if (publisher_msg(pub, o->cls, &m) < 0)
            dropped++;
    }
    for (size_t i = 0; i < ol->ntwins; i++)
        if (publisher_twin(pub, ol->twins[i].id, ol->twins[i].len, ol->twins[i].flags) < 0)
            log_warn_limited("publication postponed to the next restart", "id=%.*s",
                             (int)ol->twins[i].len, ol->twins[i].id);
    outlist_reset(ol);
    if (dropped)
        log_warn_limited("messages dropped: the publisher's queue is full", "dropped=%u", dropped);
    return dropped;
}

void out_pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void out_pack_key(msgpack_packer *pk, const char *k)
{
    out_pack_str(pk, k, strlen(k));
}

static void pack_int(msgpack_packer *pk, int64_t v)
{
    if (v >= 0)
        msgpack_pack_uint64(pk, (uint64_t)v);
    else
        msgpack_pack_int64(pk, v);
}

/* Ends an event or a prediction of twin `id` on `topic`: also for the HTTP stream. */
static int end_streamed(struct outlist *ol, enum stream_kind kind, const char *topic,
                        const char *id, size_t id_len)
{
    int rc = outlist_end(ol, PUB_CLASS_REPLY, topic, true, 1, NULL, 0);
    if (rc < 0)
        return rc;
    struct outmsg *m = &ol->v[ol->n - 1];
    if (append(ol, id, id_len, &m->id) < 0)
        return ol->err = -ENOMEM;
    m->id_len = id_len;
    m->stream = (uint8_t)kind;
    if (!ol->txn)
        return 0;
    /* committed with the change: published from the store if the queue has no room, and again
     * after a crash */
    char err[TWIN_ERR_LEN];
    struct twin_event ev = {.cls = PUB_CLASS_REPLY,
                            .qos = 1,
                            .topic = ol->data.data + m->topic,
                            .topic_len = m->topic_len,
                            .payload = ol->data.data + m->payload,
                            .len = m->len};
    rc = twin_eventbox_add(ol->txn, &ev, ol->max_stored, &m->seq, err);
    if (rc == -ENOSPC || rc == -EINVAL) {
        /* past publish.max_stored_events the broker has not taken anything for a long time:
         * this one lives in memory only, and is lost if the queue is full (counted) */
        m->seq = 0;
        if (ol->refused)
            atomic_fetch_add_explicit(ol->refused, 1, memory_order_relaxed);
        log_warn_limited("event not stored", "topic=%s reason=\"%s\"", ol->data.data + m->topic,
                         err);
        return 0;
    }
    return rc < 0 ? (ol->err = rc) : 0;
}

/* An event on twins/{id}/events, packed by the caller between outlist_begin and here. */
static int end_event(struct outlist *ol, const char *id, size_t id_len)
{
    char topic[BRIDGE_TOPIC_MAX];
    if (bridge_topic_build(ol->topics, BRIDGE_T_EVENTS, id, id_len, topic, sizeof(topic)) < 0) {
        ol->tmp.size = 0;
        return ol->err = -EINVAL; /* ids are validated before they are stored */
    }
    return end_streamed(ol, STREAM_EVENT, topic, id, id_len);
}

int outlist_end_event(struct outlist *ol, const char *id, size_t id_len)
{
    return end_event(ol, id, id_len);
}

int out_event_presence(struct outlist *ol, const char *id, size_t id_len, bool connected,
                       int64_t ts)
{
    msgpack_packer *pk = outlist_begin(ol);
    msgpack_pack_map(pk, 3);
    out_pack_key(pk, "type");
    out_pack_key(pk, "presence");
    out_pack_key(pk, "connected");
    if (connected)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    out_pack_key(pk, "ts");
    pack_int(pk, ts);
    return end_event(ol, id, id_len);
}

int out_event_rule(struct outlist *ol, const char *id, size_t id_len, const struct rules_fire *f)
{
    msgpack_packer *pk = outlist_begin(ol);
    uint32_t extra = f->fields ? f->fields->via.map.size : 0;
    msgpack_pack_map(pk, 6 + extra);
    out_pack_key(pk, "type");
    out_pack_key(pk, "rule");
    out_pack_key(pk, "rule");
    out_pack_key(pk, f->rule);
    out_pack_key(pk, "state");
    out_pack_key(pk, f->event);
    out_pack_key(pk, "from");
    out_pack_key(pk, rules_state_name(f->from));
    out_pack_key(pk, "ts");
    pack_int(pk, f->ts);
    /* what decided it: {"reported.hr": 131, "avg(reported.hr, 60s)": 118.5} */
    out_pack_key(pk, "values");
    msgpack_pack_map(pk, f->n_values);
    for (unsigned i = 0; i < f->n_values; i++) {
        const struct rules_value *v = &f->values[i].v;
        out_pack_str(pk, f->values[i].text, f->values[i].len);
        switch (v->type) {
        case RULES_NUM:
            if (v->n == (double)(int64_t)v->n && v->n >= -9e15 && v->n <= 9e15)
                pack_int(pk, (int64_t)v->n);
            else
                msgpack_pack_double(pk, v->n);
            break;
        case RULES_BOOL: v->b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
        case RULES_STR: out_pack_str(pk, v->s, v->len); break;
        default: msgpack_pack_nil(pk); break;
        }
    }
    for (uint32_t i = 0; i < extra; i++) {
        msgpack_pack_object(pk, f->fields->via.map.ptr[i].key);
        msgpack_pack_object(pk, f->fields->via.map.ptr[i].val);
    }
    return end_event(ol, id, id_len);
}

/* The value of a prediction: a regressor's number (an array for several outputs), a
 * classifier's label (its number or its name). */
static void pack_prediction_value(msgpack_packer *pk, const struct rules_prediction *p)
{
    const struct twin_model_info *in = p->info;
    if (in->classifier) {
        if (in->classes_are_strings)
            out_pack_str(pk, in->class_names[p->label], strlen(in->class_names[p->label]));
        else
            msgpack_pack_double(pk, in->class_numbers[p->label]);
    } else if (in->n_outputs == 1) {
        msgpack_pack_double(pk, p->values[0]);
    } else {
        msgpack_pack_array(pk, (uint32_t)in->n_outputs);
        for (size_t i = 0; i < in->n_outputs; i++)
            msgpack_pack_double(pk, p->values[i]);
    }
}

void out_pack_prediction(msgpack_packer *pk, const char *model, const struct rules_prediction *p,
                         int64_t ts, uint64_t twin_version)
{
    const struct twin_model_info *in = p->info;
    bool proba = in->classifier && p->proba;
    msgpack_pack_map(pk, (model ? 5 : 4) + (proba ? 1 : 0) +
                             (p->score ? out_score_keys(p->score) : 0));
    if (model) {
        out_pack_key(pk, "model");
        out_pack_key(pk, model);
    }
    out_pack_key(pk, "value");
    pack_prediction_value(pk, p);
    if (proba) {
        /* {label: probability}; numeric labels as their text, so the keys stay strings */
        out_pack_key(pk, "proba");
        msgpack_pack_map(pk, (uint32_t)in->n_classes);
        for (size_t c = 0; c < in->n_classes; c++) {
            char num[32];
            const char *k = in->classes_are_strings ? in->class_names[c] : num;
            if (!in->classes_are_strings)
                snprintf(num, sizeof(num), "%.17g", in->class_numbers[c]);
            out_pack_key(pk, k);
            msgpack_pack_double(pk, p->proba[c]);
        }
    }
    out_pack_key(pk, "ts");
    pack_int(pk, ts);
    out_pack_key(pk, "twin_version");
    msgpack_pack_uint64(pk, twin_version);
    out_pack_key(pk, "model_version");
    out_pack_key(pk, in->version);
    if (p->score)
        out_pack_score(pk, p->score);
}

static const char *const score_keys[] = {"scored", "mae", "rmse", "accuracy", "learned"};

unsigned out_score_keys(const struct rules_model_score *s)
{
    return 1 + (s->scored ? (s->classifier ? 1 : 2) : 0) + (s->learns ? 1 : 0);
}

void out_pack_score(msgpack_packer *pk, const struct rules_model_score *s)
{
    out_pack_key(pk, "scored");
    msgpack_pack_uint64(pk, s->scored);
    if (s->scored && s->classifier) {
        out_pack_key(pk, "accuracy");
        msgpack_pack_double(pk, (double)s->correct / (double)s->scored);
    } else if (s->scored) {
        out_pack_key(pk, "mae");
        msgpack_pack_double(pk, s->sum_abs / (double)s->scored);
        out_pack_key(pk, "rmse");
        msgpack_pack_double(pk, sqrt(s->sum_sq / (double)s->scored));
    }
    if (s->learns) {
        out_pack_key(pk, "learned");
        msgpack_pack_uint64(pk, s->updates);
    }
}

bool out_is_score_key(const msgpack_object *key)
{
    for (size_t i = 0; i < sizeof(score_keys) / sizeof(score_keys[0]); i++)
        if (hub_key_is(key, score_keys[i]))
            return true;
    return false;
}

int out_prediction(struct outlist *ol, const char *id, size_t id_len, const char *model,
                   const struct rules_prediction *p, int64_t ts, uint64_t twin_version)
{
    char topic[BRIDGE_TOPIC_MAX];
    out_pack_prediction(outlist_begin(ol), model, p, ts, twin_version);
    if (bridge_topic_build(ol->topics, BRIDGE_T_PREDICTIONS, id, id_len, topic, sizeof(topic)) < 0) {
        ol->tmp.size = 0;
        return ol->err = -EINVAL;
    }
    return end_streamed(ol, STREAM_PREDICTION, topic, id, id_len);
}

int out_event_command(struct outlist *ol, const struct twin_command *c)
{
    msgpack_packer *pk = outlist_begin(ol);
    const char *st = twin_command_state_name(c->state);
    msgpack_pack_map(pk, 5);
    out_pack_key(pk, "type");
    out_pack_key(pk, "command");
    out_pack_key(pk, "id");
    out_pack_str(pk, c->id, strlen(c->id));
    out_pack_key(pk, "cmd");
    out_pack_str(pk, c->cmd, c->cmd_len);
    out_pack_key(pk, "state");
    out_pack_str(pk, st, strlen(st));
    out_pack_key(pk, "ts");
    pack_int(pk, c->updated);
    return end_event(ol, c->twin_id, c->twin_id_len);
}

int out_command(struct outlist *ol, const struct twin_command *c)
{
    char topic[BRIDGE_TOPIC_MAX];
    if (bridge_topic_build(ol->topics, BRIDGE_T_COMMANDS, c->twin_id, c->twin_id_len, topic,
                           sizeof(topic)) < 0)
        return ol->err = -EINVAL;
    msgpack_packer *pk = outlist_begin(ol);
    msgpack_pack_map(pk, 5);
    out_pack_key(pk, "id");
    out_pack_str(pk, c->id, strlen(c->id));
    out_pack_key(pk, "cmd");
    out_pack_str(pk, c->cmd, c->cmd_len);
    out_pack_key(pk, "args");
    msgpack_pack_object(pk, c->args);
    out_pack_key(pk, "ts");
    pack_int(pk, c->created);
    out_pack_key(pk, "expires");
    if (c->expires > 0)
        pack_int(pk, c->expires);
    else
        msgpack_pack_nil(pk);
    return outlist_end(ol, PUB_CLASS_COMMAND, topic, false, 1, NULL, 0);
}
