/* api: the HTTP API's JSON answers (web/API.md): the fleet query and one twin, its history,
 * waveforms, rule states, commands and recent events, the models' scores and the hub's
 * counters; and the two writes, which go through the MQTT requests' own code (requests_http),
 * so they are checked, versioned and answered exactly like twins/{id}/desired/set and
 * twins/{id}/commands/send. Every read is one read transaction of committed data. It does not
 * know how a query runs (query/) or how answers are framed (http.c).
 *
 * Threads: libmicrohttpd's connection threads; a write holds h->writes_lock. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "log.h"

#define WAVE_SPAN_MAX_MS (120 * 1000)
#define EVENTS_DEFAULT 50

/* A packer over a growing buffer, and the answer it becomes. */
struct answer {
    msgpack_sbuffer b;
    msgpack_packer pk;
};

static void answer_init(struct answer *a)
{
    msgpack_sbuffer_init(&a->b);
    msgpack_packer_init(&a->pk, &a->b, msgpack_sbuffer_write);
}

static enum MHD_Result answer_send(struct answer *a, struct MHD_Connection *c)
{
    enum MHD_Result rc = http_json(c, MHD_HTTP_OK, a->b.data, a->b.size);
    msgpack_sbuffer_destroy(&a->b);
    return rc;
}

static void pack_int(msgpack_packer *pk, int64_t v)
{
    if (v >= 0)
        msgpack_pack_uint64(pk, (uint64_t)v);
    else
        msgpack_pack_int64(pk, v);
}

/* ---------------------------------------------------------------------------------------------
 * Arguments
 * ------------------------------------------------------------------------------------------ */

/* A time argument, or `def` when absent. Returns 0, or answers 400 and returns -1. */
static int time_arg(struct MHD_Connection *c, const char *name, int64_t now, int64_t def,
                    int64_t *out, enum MHD_Result *ans)
{
    const char *v = http_arg(c, name);
    *out = def;
    if (v && config_parse_time_ms(v, now, out) < 0) {
        *ans = http_error(c, MHD_HTTP_BAD_REQUEST,
                          "%s: expected ms since epoch, 2026-12-07T10:00:00Z or -10m", name);
        return -1;
    }
    return 0;
}

static int uint_arg(struct MHD_Connection *c, const char *name, unsigned *out,
                    enum MHD_Result *ans)
{
    const char *v = http_arg(c, name);
    if (!v)
        return 0;
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (!*v || *end || errno || n > 100000000ul || v[0] == '-') {
        *ans = http_error(c, MHD_HTTP_BAD_REQUEST, "%s: expected a whole number", name);
        return -1;
    }
    *out = (unsigned)n;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The fleet
 * ------------------------------------------------------------------------------------------ */

static enum MHD_Result twins(struct hub_http *h, struct MHD_Connection *c)
{
    char err[QUERY_ERR_LEN] = "";
    enum MHD_Result ans = MHD_NO;
    struct query_spec s = {0};
    const char *v;
    if ((v = http_arg(c, "where"))) {
        s.where = v;
        s.where_len = strlen(v);
    }
    if ((v = http_arg(c, "order"))) {
        s.order = v;
        s.order_len = strlen(v);
    }
    if ((v = http_arg(c, "prefix"))) {
        s.prefix = v;
        s.prefix_len = strlen(v);
    }
    if ((v = http_arg(c, "cursor"))) {
        s.cursor = v;
        s.cursor_len = strlen(v);
    }
    if ((v = http_arg(c, "fields")) && query_fields_split(&s, v, strlen(v), err) < 0)
        return http_error(c, MHD_HTTP_BAD_REQUEST, "%s", err);
    if (uint_arg(c, "limit", &s.limit, &ans) < 0)
        return ans;
    struct query *q;
    int rc = query_new(&s, &h->qlim, &q, err);
    if (rc < 0)
        return http_error(c, rc == -ENOMEM ? MHD_HTTP_INTERNAL_SERVER_ERROR : MHD_HTTP_BAD_REQUEST,
                          "%s", err);
    struct twin_txn *txn;
    char terr[TWIN_ERR_LEN];
    if ((rc = twin_store_read_begin(h->src.store, &txn, terr)) < 0) {
        query_free(q);
        return http_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the store: %s", terr);
    }
    struct answer a;
    answer_init(&a);
    struct query_result res;
    rc = query_run(q, txn, hub_now_ms(), &a.pk, &res, err);
    twin_store_read_end(txn);
    query_free(q);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&a.b);
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
    }
    return answer_send(&a, c);
}

/* ---------------------------------------------------------------------------------------------
 * One twin
 * ------------------------------------------------------------------------------------------ */

struct one {
    struct hub_http *h;
    struct MHD_Connection *c;
    const char *id;
    size_t id_len;
    struct twin_txn *txn;
    const void *doc;
    size_t len;
    struct answer a;
    unsigned n;
};

static enum MHD_Result doc(struct one *o)
{
    return http_json(o->c, MHD_HTTP_OK, o->doc, o->len);
}

static enum MHD_Result history(struct one *o)
{
    enum MHD_Result ans = MHD_NO;
    int64_t now = hub_now_ms();
    struct query_range r = {0};
    const char *path = http_arg(o->c, "path");
    if (!path)
        return http_error(o->c, MHD_HTTP_BAD_REQUEST, "path: missing (reported.heart_rate)");
    r.path = path;
    r.path_len = strlen(path);
    if (time_arg(o->c, "from", now, now - 3600 * 1000, &r.from, &ans) < 0 ||
        time_arg(o->c, "to", now, now, &r.to, &ans) < 0 || uint_arg(o->c, "limit", &r.limit, &ans))
        return ans;
    const char *step = http_arg(o->c, "step");
    uint64_t step_ms = 0;
    /* a bare number is ms, as every other time of the API */
    if (step && (config_parse_duration_ms(step, 1, &step_ms) < 0 || step_ms > TWIN_TS_MAX))
        return http_error(o->c, MHD_HTTP_BAD_REQUEST, "step: expected a duration (60s, 1m)");
    r.step = (int64_t)step_ms;
    char err[QUERY_ERR_LEN] = "";
    answer_init(&o->a);
    int rc = query_history(o->txn, o->id, o->id_len, &r, &o->h->qlim, &o->a.pk, err);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&o->a.b);
        return http_error(o->c,
                          rc == -EINVAL   ? MHD_HTTP_BAD_REQUEST
                          : rc == -ENOENT ? MHD_HTTP_NOT_FOUND
                                          : MHD_HTTP_INTERNAL_SERVER_ERROR,
                          "%s", err);
    }
    return answer_send(&o->a, o->c);
}

static int wave_one(void *ctx, int64_t ts, double rate, const float *x, size_t n)
{
    struct one *o = ctx;
    msgpack_packer *pk = &o->a.pk;
    msgpack_pack_map(pk, 3);
    out_pack_key(pk, "ts");
    pack_int(pk, ts);
    out_pack_key(pk, "hz");
    msgpack_pack_double(pk, rate);
    out_pack_key(pk, "samples");
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        msgpack_pack_float(pk, x[i]);
    o->n++;
    return 0;
}

/* The walk packs chunks into a buffer of their own: their count goes first. */
static enum MHD_Result wave(struct one *o)
{
    enum MHD_Result ans = MHD_NO;
    int64_t now = hub_now_ms(), from, to;
    const char *path = http_arg(o->c, "path");
    if (!path)
        return http_error(o->c, MHD_HTTP_BAD_REQUEST, "path: missing (reported.ecg)");
    if (time_arg(o->c, "from", now, now - 10 * 1000, &from, &ans) < 0 ||
        time_arg(o->c, "to", now, INT64_MAX, &to, &ans) < 0)
        return ans;
    if (to != INT64_MAX && to < from)
        return http_error(o->c, MHD_HTTP_BAD_REQUEST, "to: before from");
    if ((to == INT64_MAX ? now : to) - from > WAVE_SPAN_MAX_MS)
        return http_error(o->c, MHD_HTTP_BAD_REQUEST, "from: at most %d s before to",
                          WAVE_SPAN_MAX_MS / 1000);
    const char *sub = !strncmp(path, "reported.", 9) ? path + 9 : path;
    char err[TWIN_ERR_LEN] = "";
    answer_init(&o->a);
    int rc = twin_wave_read(o->txn, o->id, o->id_len, sub, strlen(sub), from, to, wave_one, o,
                            err);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&o->a.b);
        return http_error(o->c, rc == -EINVAL ? MHD_HTTP_BAD_REQUEST : MHD_HTTP_INTERNAL_SERVER_ERROR,
                          "path: %s", err);
    }
    struct answer head;
    answer_init(&head);
    msgpack_pack_map(&head.pk, 3);
    out_pack_key(&head.pk, "id");
    out_pack_str(&head.pk, o->id, o->id_len);
    out_pack_key(&head.pk, "path");
    out_pack_str(&head.pk, path, strlen(path));
    out_pack_key(&head.pk, "chunks");
    msgpack_pack_array(&head.pk, o->n);
    msgpack_sbuffer_write(&head.b, o->a.b.data, o->a.b.size);
    msgpack_sbuffer_destroy(&o->a.b);
    return answer_send(&head, o->c);
}

static int rule_one(void *ctx, const char *id, size_t id_len, const char *name, size_t name_len,
                    const void *buf, size_t len)
{
    (void)id;
    (void)id_len;
    struct one *o = ctx;
    struct rules_record r;
    if (rules_record_decode(buf, len, &r) < 0)
        return 0;
    msgpack_packer *pk = &o->a.pk;
    msgpack_pack_map(pk, 4);
    out_pack_key(pk, "rule");
    out_pack_str(pk, name, name_len);
    out_pack_key(pk, "state");
    out_pack_key(pk, rules_state_name(r.state));
    out_pack_key(pk, "since");
    pack_int(pk, r.since);
    out_pack_key(pk, "fire_at");
    if (r.state == RULES_PENDING)
        pack_int(pk, r.fire_at);
    else
        msgpack_pack_nil(pk);
    o->n++;
    return 0;
}

static int command_one(void *ctx, const struct twin_command *cmd, enum twin_command_state from)
{
    (void)from;
    struct one *o = ctx;
    msgpack_packer *pk = &o->a.pk;
    msgpack_pack_map(pk, 9);
    out_pack_key(pk, "id");
    out_pack_key(pk, cmd->id);
    out_pack_key(pk, "cmd");
    out_pack_str(pk, cmd->cmd, cmd->cmd_len);
    out_pack_key(pk, "args");
    msgpack_pack_object(pk, cmd->args);
    out_pack_key(pk, "state");
    out_pack_key(pk, twin_command_state_name(cmd->state));
    out_pack_key(pk, "created");
    pack_int(pk, cmd->created);
    out_pack_key(pk, "updated");
    pack_int(pk, cmd->updated);
    out_pack_key(pk, "expires");
    if (cmd->expires)
        pack_int(pk, cmd->expires);
    else
        msgpack_pack_nil(pk);
    out_pack_key(pk, "attempts");
    msgpack_pack_uint32(pk, cmd->attempts);
    out_pack_key(pk, "result");
    msgpack_pack_object(pk, cmd->result);
    o->n++;
    return 0;
}

/* {key: [items the walk packed]} */
static enum MHD_Result list(struct one *o, const char *key, int rc, const char *err)
{
    if (rc < 0) {
        msgpack_sbuffer_destroy(&o->a.b);
        return http_error(o->c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
    }
    struct answer head;
    answer_init(&head);
    msgpack_pack_map(&head.pk, 1);
    out_pack_key(&head.pk, key);
    msgpack_pack_array(&head.pk, o->n);
    msgpack_sbuffer_write(&head.b, o->a.b.data, o->a.b.size);
    msgpack_sbuffer_destroy(&o->a.b);
    return answer_send(&head, o->c);
}

/* Packs a published payload (msgpack, or JSON as publish.encoding) as a value. */
static int pack_payload(msgpack_packer *pk, const void *p, size_t len, msgpack_zone *zone)
{
    msgpack_object obj;
    struct twin_limits lim = {len, TWIN_DEPTH_CAP, UINT32_MAX};
    char err[TWIN_ERR_LEN];
    if (twin_input_decode(p, len, &lim, zone, &obj, err) < 0) {
        msgpack_pack_nil(pk);
        return -EBADMSG;
    }
    msgpack_pack_object(pk, obj);
    return 0;
}

static enum MHD_Result events(struct one *o)
{
    enum MHD_Result ans = MHD_NO;
    unsigned max = EVENTS_DEFAULT;
    if (uint_arg(o->c, "limit", &max, &ans) < 0)
        return ans;
    if (max > STREAM_BATCH_MAX)
        return http_error(o->c, MHD_HTTP_BAD_REQUEST, "limit: at most %d", STREAM_BATCH_MAX);
    if (!o->h->stream)
        return http_error(o->c, MHD_HTTP_SERVICE_UNAVAILABLE, "no stream");
    struct stream_batch *b = malloc(sizeof(*b));
    msgpack_zone zone;
    if (!b || !msgpack_zone_init(&zone, 4096)) {
        free(b);
        return http_error(o->c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    }
    int64_t since;
    stream_events(o->h->stream, o->id, o->id_len, max, b, &since);
    answer_init(&o->a);
    msgpack_packer *pk = &o->a.pk;
    msgpack_pack_map(pk, 2);
    out_pack_key(pk, "events");
    msgpack_pack_array(pk, b->n);
    for (unsigned i = 0; i < b->n; i++) {
        msgpack_pack_map(pk, 3);
        out_pack_key(pk, "kind");
        out_pack_key(pk, b->v[i].kind == STREAM_EVENT ? "event" : "prediction");
        out_pack_key(pk, "ts");
        pack_int(pk, b->v[i].ts);
        out_pack_key(pk, b->v[i].kind == STREAM_EVENT ? "event" : "prediction");
        pack_payload(pk, b->v[i].payload, b->v[i].len, &zone);
        msgpack_zone_clear(&zone);
    }
    out_pack_key(pk, "since");
    pack_int(pk, since);
    msgpack_zone_destroy(&zone);
    free(b);
    return answer_send(&o->a, o->c);
}

static enum MHD_Result twin(struct hub_http *h, struct MHD_Connection *c, const char *rest)
{
    const char *slash = strchr(rest, '/');
    size_t id_len = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *what = slash ? slash + 1 : "";
    if (!bridge_id_valid(rest, id_len))
        return http_error(c, MHD_HTTP_BAD_REQUEST, "not a twin id: 1 to 128 of [A-Za-z0-9._:-]");
    struct one o = {.h = h, .c = c, .id = rest, .id_len = id_len};
    char err[TWIN_ERR_LEN] = "";
    int rc = twin_store_read_begin(h->src.store, &o.txn, err);
    if (rc < 0)
        return http_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the store: %s", err);
    enum MHD_Result ans;
    rc = twin_get_raw(o.txn, o.id, o.id_len, &o.doc, &o.len, err);
    if (rc == -ENOENT) {
        ans = http_error(c, MHD_HTTP_NOT_FOUND, "no twin '%.*s'", (int)id_len, rest);
    } else if (rc < 0) {
        ans = http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
    } else if (!*what) {
        ans = doc(&o);
    } else if (!strcmp(what, "history")) {
        ans = history(&o);
    } else if (!strcmp(what, "wave")) {
        ans = wave(&o);
    } else if (!strcmp(what, "rules")) {
        answer_init(&o.a);
        rc = twin_rule_state_list(o.txn, o.id, o.id_len, rule_one, &o, err);
        ans = list(&o, "rules", rc, err);
    } else if (!strcmp(what, "commands")) {
        answer_init(&o.a);
        rc = twin_command_list(o.txn, o.id, o.id_len, command_one, &o, err);
        ans = list(&o, "commands", rc, err);
    } else if (!strcmp(what, "events")) {
        ans = events(&o);
    } else {
        ans = http_error(c, MHD_HTTP_NOT_FOUND,
                         "not found: /api/twins/{id}[/history|/wave|/rules|/commands|/events]");
    }
    twin_store_read_end(o.txn);
    return ans;
}

/* ---------------------------------------------------------------------------------------------
 * Models and the hub
 * ------------------------------------------------------------------------------------------ */

/* A model's scores from counters, the entries of a map (only what it has: scored, then mae and
 * rmse or accuracy) after a header of `extra` more entries the caller packs after them. */
static void pack_scores(msgpack_packer *pk, unsigned extra, const struct hub_model_sample *m,
                        uint64_t scored, double sum_abs, double sum_sq, uint64_t correct)
{
    bool reg = m->kind == HUB_MODEL_REGRESSOR && scored;
    bool cls = m->kind == HUB_MODEL_CLASSIFIER && scored;
    msgpack_pack_map(pk, extra + 1 + (reg ? 2 : 0) + (cls ? 1 : 0));
    out_pack_key(pk, "scored");
    msgpack_pack_uint64(pk, scored);
    if (reg) {
        out_pack_key(pk, "mae");
        msgpack_pack_double(pk, sum_abs / (double)scored);
        out_pack_key(pk, "rmse");
        msgpack_pack_double(pk, sqrt(sum_sq / (double)scored));
    }
    if (cls) {
        out_pack_key(pk, "accuracy");
        msgpack_pack_double(pk, (double)correct / (double)scored);
    }
}

/* The same model in an earlier sample, or NULL. */
static const struct hub_model_sample *model_in(const struct model_sample *s, const char *name)
{
    for (unsigned i = 0; s && i < s->n; i++)
        if (!strcmp(s->m[i].name, name))
            return &s->m[i];
    return NULL;
}

/* {models: [{scored, mae?, rmse?, accuracy?, model, kind, predictions}...] since the hub
 * started, history: [{ts, models: {name: {scored, mae?, rmse?, accuracy?, total}}}...]}:
 * every http_tick's sample, with the scores of the interval since the sample before and the
 * predictions scored in all (total). */
static enum MHD_Result models(struct hub_http *h, struct MHD_Connection *c)
{
    struct hub_rule_sample *rs;
    struct hub_model_sample *ms;
    unsigned nr, nm;
    struct model_sample *ring = malloc(MODEL_SAMPLES * sizeof(*ring));
    if (!ring || hub_rules_sample(h->src.rules, &rs, &nr, &ms, &nm) < 0) {
        free(ring);
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    }
    pthread_mutex_lock(&h->samples_lock);
    unsigned count = h->samples_count;
    for (unsigned i = 0; i < count; i++)
        ring[i] = h->samples[(h->samples_next + MODEL_SAMPLES - count + i) % MODEL_SAMPLES];
    pthread_mutex_unlock(&h->samples_lock);
    struct answer a;
    answer_init(&a);
    msgpack_pack_map(&a.pk, 2);
    out_pack_key(&a.pk, "models");
    msgpack_pack_array(&a.pk, nm);
    for (unsigned i = 0; i < nm; i++) {
        const struct hub_model_sample *m = &ms[i];
        pack_scores(&a.pk, 3, m, m->scored, m->sum_abs, m->sum_sq, m->correct);
        out_pack_key(&a.pk, "model");
        out_pack_key(&a.pk, m->name);
        out_pack_key(&a.pk, "kind");
        out_pack_key(&a.pk, m->kind == HUB_MODEL_REGRESSOR    ? "regressor"
                            : m->kind == HUB_MODEL_CLASSIFIER ? "classifier"
                                                              : "unscored");
        out_pack_key(&a.pk, "predictions");
        msgpack_pack_uint64(&a.pk, m->predictions);
    }
    out_pack_key(&a.pk, "history");
    msgpack_pack_array(&a.pk, count);
    for (unsigned i = 0; i < count; i++) {
        const struct model_sample *s = &ring[i], *prev = i ? &ring[i - 1] : NULL;
        msgpack_pack_map(&a.pk, 2);
        out_pack_key(&a.pk, "ts");
        pack_int(&a.pk, s->ts);
        out_pack_key(&a.pk, "models");
        msgpack_pack_map(&a.pk, s->n);
        for (unsigned k = 0; k < s->n; k++) {
            const struct hub_model_sample *m = &s->m[k], *p = model_in(prev, m->name);
            /* a reload that restarted the counters: the interval is the whole */
            if (p && p->scored > m->scored)
                p = NULL;
            out_pack_key(&a.pk, m->name);
            pack_scores(&a.pk, 1, m, m->scored - (p ? p->scored : 0),
                        m->sum_abs - (p ? p->sum_abs : 0), m->sum_sq - (p ? p->sum_sq : 0),
                        m->correct - (p ? p->correct : 0));
            out_pack_key(&a.pk, "total");
            msgpack_pack_uint64(&a.pk, m->scored);
        }
    }
    free(rs);
    free(ms);
    free(ring);
    return answer_send(&a, c);
}

static bool bucket(const char *line, size_t l)
{
    for (size_t i = 0; i + 8 <= l; i++)
        if (!memcmp(line + i, "_bucket{", 8))
            return true;
    return false;
}

/* The hub page's figures are /metrics' own: its text, read back into {name: value}, where a
 * series with labels is "name{label=\"v\"}". Histograms' buckets are left out. */
static enum MHD_Result hub(struct hub_http *h, struct MHD_Connection *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    int rc = metrics_write(&h->src, f);
    if (fclose(f) != 0 || rc < 0) {
        free(text);
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot read the counters");
    }
    unsigned n = 0;
    for (char *p = text; (p = strchr(p, '\n')); p++)
        n++;
    struct answer a;
    answer_init(&a);
    int64_t now = hub_now_ms();
    msgpack_pack_map(&a.pk, 4);
    out_pack_key(&a.pk, "version");
    out_pack_key(&a.pk, TWINHUB_VERSION);
    out_pack_key(&a.pk, "now");
    pack_int(&a.pk, now);
    out_pack_key(&a.pk, "uptime_s");
    msgpack_pack_double(&a.pk, (double)(now - h->started) / 1000.0);
    out_pack_key(&a.pk, "counters");
    /* count first, then pack: a second pass over the lines */
    unsigned kept = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass)
            msgpack_pack_map(&a.pk, kept);
        for (char *line = text, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            size_t l = next ? (size_t)(next - line) : strlen(line);
            if (next)
                next++;
            if (!l || line[0] == '#')
                continue;
            const char *sp = line + l;
            while (sp > line && sp[-1] != ' ')
                sp--;
            if (sp == line || bucket(line, l))
                continue;
            sp--;
            if (!pass) {
                kept++;
                continue;
            }
            out_pack_str(&a.pk, line, (size_t)(sp - line));
            char num[64];
            size_t nl = l - (size_t)(sp + 1 - line);
            snprintf(num, sizeof(num), "%.*s", (int)(nl < 63 ? nl : 63), sp + 1);
            msgpack_pack_double(&a.pk, strtod(num, NULL));
        }
    }
    (void)n;
    free(text);
    return answer_send(&a, c);
}

/* ---------------------------------------------------------------------------------------------
 * Dispatch
 * ------------------------------------------------------------------------------------------ */

#define DISPATCH_LIST_MAX 10000

struct dlist {
    struct answer a;
    unsigned n;
    bool more;
    msgpack_zone zone;
};

/* One record: {dispatch, demand, <the record's own keys>} (hub/dispatch.c writes them). */
static int dispatch_one(void *ctx, const char *name, size_t name_len, const char *id, size_t id_len,
                        const void *buf, size_t len)
{
    struct dlist *l = ctx;
    msgpack_object rec;
    size_t off = 0;
    if (l->n == DISPATCH_LIST_MAX) {
        l->more = true;
        return 1;
    }
    msgpack_zone_clear(&l->zone);
    if (msgpack_unpack(buf, len, &off, &l->zone, &rec) != MSGPACK_UNPACK_SUCCESS ||
        rec.type != MSGPACK_OBJECT_MAP)
        return 0;
    uint32_t own = 0;
    for (uint32_t i = 0; i < rec.via.map.size; i++)
        own += !hub_key_is(&rec.via.map.ptr[i].key, "dispatch");
    msgpack_packer *pk = &l->a.pk;
    msgpack_pack_map(pk, 2 + own);
    out_pack_key(pk, "dispatch");
    out_pack_str(pk, name, name_len);
    out_pack_key(pk, "demand");
    out_pack_str(pk, id, id_len);
    for (uint32_t i = 0; i < rec.via.map.size; i++)
        if (!hub_key_is(&rec.via.map.ptr[i].key, "dispatch")) {
            msgpack_pack_object(pk, rec.via.map.ptr[i].key);
            msgpack_pack_object(pk, rec.via.map.ptr[i].val);
        }
    l->n++;
    return 0;
}

/* GET /api/dispatch: every open demand and assignment, by dispatch and demand id. */
static enum MHD_Result dispatch(struct hub_http *h, struct MHD_Connection *c)
{
    struct dlist l = {0};
    struct twin_txn *txn;
    char err[TWIN_ERR_LEN] = "";
    if (!msgpack_zone_init(&l.zone, 1024))
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    int rc = twin_store_read_begin(h->src.store, &txn, err);
    if (rc < 0) {
        msgpack_zone_destroy(&l.zone);
        return http_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the store: %s", err);
    }
    answer_init(&l.a);
    rc = twin_dispatch_list(txn, NULL, 0, dispatch_one, &l, err);
    twin_store_read_end(txn);
    msgpack_zone_destroy(&l.zone);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&l.a.b);
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err);
    }
    struct answer head;
    answer_init(&head);
    msgpack_pack_map(&head.pk, 3);
    /* the loaded entries: which twins each one's demands and resources are */
    struct hub_rules *hr = h->src.rules;
    out_pack_key(&head.pk, "entries");
    if (hr) {
        pthread_rwlock_rdlock(&hr->lock);
        unsigned n = hr->set ? rules_set_dispatch_count(hr->set) : 0;
        msgpack_pack_array(&head.pk, n);
        for (unsigned i = 0; i < n; i++) {
            const struct rules_dispatch *d = rules_set_dispatch(hr->set, i);
            msgpack_pack_map(&head.pk, 4);
            out_pack_key(&head.pk, "name");
            out_pack_key(&head.pk, d->name);
            out_pack_key(&head.pk, "demand_match");
            out_pack_key(&head.pk, d->demand_match ? d->demand_match : "*");
            out_pack_key(&head.pk, "demand_rule");
            if (d->demand_rule)
                out_pack_key(&head.pk, d->demand_rule);
            else
                msgpack_pack_nil(&head.pk);
            out_pack_key(&head.pk, "resource_match");
            out_pack_key(&head.pk, d->resource_match);
        }
        pthread_rwlock_unlock(&hr->lock);
    } else {
        msgpack_pack_array(&head.pk, 0);
    }
    out_pack_key(&head.pk, "more");
    if (l.more)
        msgpack_pack_true(&head.pk);
    else
        msgpack_pack_false(&head.pk);
    out_pack_key(&head.pk, "records");
    msgpack_pack_array(&head.pk, l.n);
    msgpack_sbuffer_write(&head.b, l.a.b.data, l.a.b.size);
    msgpack_sbuffer_destroy(&l.a.b);
    return answer_send(&head, c);
}

enum MHD_Result api_get(struct hub_http *h, struct MHD_Connection *c, const char *url)
{
    const char *p = url + 4; /* after "/api" */
    if (!strcmp(p, "/twins"))
        return twins(h, c);
    if (!strncmp(p, "/twins/", 7) && p[7])
        return twin(h, c, p + 7);
    if (!strcmp(p, "/models"))
        return models(h, c);
    if (!strcmp(p, "/hub"))
        return hub(h, c);
    if (!strcmp(p, "/dispatch"))
        return dispatch(h, c);
    return http_error(c, MHD_HTTP_NOT_FOUND,
                      "not found: /api/twins, /api/twins/{id}, /api/models, /api/hub, "
                      "/api/dispatch, /api/stream");
}

/* ---------------------------------------------------------------------------------------------
 * Writes
 * ------------------------------------------------------------------------------------------ */

/* The code of a rejection's payload {code, message, token}; 500 when it has none. */
static unsigned code_in(const void *p, size_t len)
{
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 1024))
        return 500;
    msgpack_object obj;
    struct twin_limits lim = {len, TWIN_DEPTH_CAP, UINT32_MAX};
    char err[TWIN_ERR_LEN];
    unsigned code = 500;
    if (twin_input_decode(p, len, &lim, &zone, &obj, err) == 0 && obj.type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < obj.via.map.size; i++)
            if (hub_key_is(&obj.via.map.ptr[i].key, "code") &&
                obj.via.map.ptr[i].val.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                obj.via.map.ptr[i].val.via.u64 >= 400 && obj.via.map.ptr[i].val.via.u64 < 600)
                code = (unsigned)obj.via.map.ptr[i].val.via.u64;
    msgpack_zone_destroy(&zone);
    return code;
}

enum MHD_Result api_post(struct hub_http *h, struct MHD_Connection *c, const char *url,
                         const char *body, size_t len, enum http_role role)
{
    const char *p = url + 4;
    if (strncmp(p, "/twins/", 7) != 0)
        return http_error(c, MHD_HTTP_NOT_FOUND,
                          "not found: POST /api/twins/{id}/desired or /api/twins/{id}/commands");
    const char *id = p + 7, *slash = strchr(id, '/');
    if (!slash)
        return http_error(c, MHD_HTTP_NOT_FOUND,
                          "not found: POST /api/twins/{id}/desired or /api/twins/{id}/commands");
    size_t id_len = (size_t)(slash - id);
    enum bridge_topic_kind kind;
    if (!strcmp(slash, "/desired"))
        kind = BRIDGE_T_DESIRED_SET;
    else if (!strcmp(slash, "/commands"))
        kind = BRIDGE_T_CMD_SEND;
    else
        return http_error(c, MHD_HTTP_NOT_FOUND,
                          "not found: POST /api/twins/{id}/desired or /api/twins/{id}/commands");
    if (role != HTTP_WRITE)
        return http_error(c, MHD_HTTP_FORBIDDEN, "%s",
                          h->wtoken ? "writes need the write token (http.write_token_file)"
                                    : "writes are off: set http.write_token_file");
    if (!bridge_id_valid(id, id_len))
        return http_error(c, MHD_HTTP_BAD_REQUEST, "not a twin id: 1 to 128 of [A-Za-z0-9._:-]");
    if (!len || body[0] != '{')
        return http_error(c, MHD_HTTP_BAD_REQUEST, "the body must be a JSON object");
    msgpack_sbuffer reply;
    msgpack_sbuffer_init(&reply);
    pthread_mutex_lock(&h->writes_lock);
    int code = requests_http(&h->writes, kind, id, id_len, body, len, &reply);
    pthread_mutex_unlock(&h->writes_lock);
    enum MHD_Result ans;
    if (code < 0)
        ans = http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "the request failed (%s)",
                         strerror(-code));
    else
        ans = http_json(c, code ? (unsigned)code : code_in(reply.data, reply.size), reply.data,
                        reply.size);
    msgpack_sbuffer_destroy(&reply);
    return ans;
}
