/* sse: GET /api/stream, the live stream of committed state changes, events and predictions as
 * Server-Sent Events (web/API.md), filtered by twin ids, a query and kinds, resumable with
 * Last-Event-ID for as long as the stream's ring (stream.c) still holds what followed, and
 * saying so (event: reset) when it does not. A state event carries the twin as it is committed
 * when the event is written, so a reader that falls behind sees the latest version once, not
 * every one in between. It does not decide what enters the ring.
 *
 * Threads: sse_start and the reader on the connection's thread (libmicrohttpd runs a thread
 * per connection; the reader waits there for the ring, http.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"

#define IDS_MAX 256
#define SSE_BLOCK (32u << 10)

enum { K_STATE = 1u << STREAM_STATE, K_EVENT = 1u << STREAM_EVENT,
       K_PREDICTION = 1u << STREAM_PREDICTION };

struct sse {
    struct hub_http *h;
    uint64_t after; /* the last entry written (or skipped) */
    unsigned kinds;
    char *ids;      /* the ids argument, NUL between ids */
    const char *id[IDS_MAX];
    size_t id_len[IDS_MAX];
    unsigned nids;
    struct query *q; /* where and fields; NULL: every twin, whole documents */
    struct stream_batch *b;
    msgpack_sbuffer out; /* written, not yet handed to libmicrohttpd */
    size_t out_off;
    msgpack_sbuffer row;
    msgpack_packer pk;
    msgpack_zone zone;
    int64_t wrote_ms; /* hub_mono_ms of the last bytes handed out */
};

static void sse_free(void *cls)
{
    struct sse *s = cls;
    atomic_fetch_sub(&s->h->streams, 1);
    query_free(s->q);
    free(s->ids);
    free(s->b);
    msgpack_sbuffer_destroy(&s->out);
    msgpack_sbuffer_destroy(&s->row);
    msgpack_zone_destroy(&s->zone);
    free(s);
}

static void put(struct sse *s, const char *p, size_t n)
{
    msgpack_sbuffer_write(&s->out, p, n);
}

static void puts_(struct sse *s, const char *p)
{
    put(s, p, strlen(p));
}

/* "id: <boot>-<seq>\nevent: <name>\ndata: " */
static void head(struct sse *s, uint64_t seq, const char *name)
{
    char line[128];
    int n = snprintf(line, sizeof(line), "id: %s-%" PRIu64 "\nevent: %s\ndata: ",
                     stream_boot(s->h->stream), seq, name);
    put(s, line, (size_t)n);
}

/* The msgpack value in s->row as the JSON of the data line, then the end of the event. */
static void data_end(struct sse *s)
{
    msgpack_object obj;
    size_t off = 0;
    msgpack_zone_clear(&s->zone);
    if (msgpack_unpack(s->row.data, s->row.size, &off, &s->zone, &obj) == MSGPACK_UNPACK_SUCCESS)
        twin_json_write(&obj, &s->out);
    else
        puts_(s, "null");
    puts_(s, "\n\n");
    s->row.size = 0;
}

static bool wanted_id(const struct sse *s, const struct stream_entry *e)
{
    if (!s->nids)
        return true;
    for (unsigned i = 0; i < s->nids; i++)
        if (s->id_len[i] == e->id_len && !memcmp(s->id[i], e->id, e->id_len))
            return true;
    return false;
}

/* Whether a later state of the same twin is in the batch (this one would say less). */
static bool superseded(const struct stream_batch *b, unsigned i)
{
    for (unsigned k = i + 1; k < b->n; k++)
        if (b->v[k].kind == STREAM_STATE && b->v[k].id_len == b->v[i].id_len &&
            !memcmp(b->v[k].id, b->v[i].id, b->v[i].id_len))
            return true;
    return false;
}

/* Writes the events of one batch, in one read transaction. */
static void write_batch(struct sse *s)
{
    struct stream_batch *b = s->b;
    struct twin_txn *txn = NULL;
    char err[TWIN_ERR_LEN];
    int64_t now = hub_now_ms();
    for (unsigned i = 0; i < b->n; i++) {
        const struct stream_entry *e = &b->v[i];
        if (!(s->kinds & (1u << e->kind)) || !wanted_id(s, e) ||
            (e->kind == STREAM_STATE && superseded(b, i)))
            continue;
        if (!txn && twin_store_read_begin(s->h->src.store, &txn, err) < 0) {
            txn = NULL;
            break;
        }
        const void *doc;
        size_t len;
        int rc = twin_get_raw(txn, e->id, e->id_len, &doc, &len, err);
        bool matched = true;
        msgpack_packer *pk = &s->pk;
        s->row.size = 0;
        if (rc == -ENOENT) {
            if (e->kind != STREAM_STATE || s->q) /* no twin, nothing a query can match */
                continue;
            head(s, e->seq, "state");
            msgpack_pack_map(pk, 2);
            out_pack_key(pk, "id");
            out_pack_str(pk, e->id, e->id_len);
            out_pack_key(pk, "deleted");
            msgpack_pack_true(pk);
            data_end(s);
            continue;
        }
        if (rc < 0)
            continue;
        if (e->kind == STREAM_STATE) {
            uint64_t version = 0;
            twin_doc_version(doc, len, &version);
            msgpack_pack_map(pk, 3);
            out_pack_key(pk, "id");
            out_pack_str(pk, e->id, e->id_len);
            out_pack_key(pk, "version");
            msgpack_pack_uint64(pk, version);
            out_pack_key(pk, "row");
            if (s->q) {
                char qerr[QUERY_ERR_LEN];
                if (query_row(s->q, txn, e->id, e->id_len, doc, len, now, pk, &matched, qerr) <
                    0)
                    matched = false;
            } else {
                msgpack_sbuffer_write(&s->row, doc, len);
            }
            if (!matched) {
                s->row.size = 0;
                continue;
            }
            head(s, e->seq, "state");
            data_end(s);
            continue;
        }
        if (s->q) {
            /* events of the twins the query matches now */
            char qerr[QUERY_ERR_LEN];
            if (query_row(s->q, txn, e->id, e->id_len, doc, len, now, pk, &matched, qerr) < 0)
                matched = false;
            s->row.size = 0;
            if (!matched)
                continue;
        }
        const char *name = e->kind == STREAM_EVENT ? "event" : "prediction";
        msgpack_pack_map(pk, 3);
        out_pack_key(pk, "id");
        out_pack_str(pk, e->id, e->id_len);
        out_pack_key(pk, "ts");
        msgpack_pack_int64(pk, e->ts);
        out_pack_key(pk, name);
        msgpack_object obj;
        struct twin_limits lim = {e->len, TWIN_DEPTH_CAP, UINT32_MAX};
        msgpack_zone_clear(&s->zone);
        if (twin_input_decode(e->payload, e->len, &lim, &s->zone, &obj, err) == 0)
            msgpack_pack_object(pk, obj);
        else
            msgpack_pack_nil(pk);
        head(s, e->seq, name);
        data_end(s);
    }
    if (txn)
        twin_store_read_end(txn);
}

static void reset(struct sse *s, const char *reason, uint64_t missed)
{
    head(s, s->after, "reset");
    msgpack_pack_map(&s->pk, 2);
    out_pack_key(&s->pk, "reason");
    out_pack_key(&s->pk, reason);
    out_pack_key(&s->pk, "missed");
    if (missed)
        msgpack_pack_uint64(&s->pk, missed);
    else
        msgpack_pack_nil(&s->pk);
    data_end(s);
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *s = cls;
    (void)pos;
    while (s->out_off == s->out.size) {
        s->out.size = 0;
        s->out_off = 0;
        int rc = stream_read(s->h->stream, s->after, s->h->keepalive_ms, s->b);
        if (rc < 0)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (s->b->missed)
            reset(s, "overrun", s->b->missed);
        s->after = s->b->last;
        if (s->b->n)
            write_batch(s);
        /* Silence for a keepalive period, even while the ring moves with what the filters
         * leave out: a comment, so that a client that left is noticed at the write. */
        if (s->out.size == 0 && hub_mono_ms() - s->wrote_ms >= s->h->keepalive_ms)
            puts_(s, ": keepalive\n\n");
    }
    s->wrote_ms = hub_mono_ms();
    size_t n = s->out.size - s->out_off;
    if (n > max)
        n = max;
    memcpy(buf, s->out.data + s->out_off, n);
    s->out_off += n;
    return (ssize_t)n;
}

/* Parses ids=a,b,c into s. Returns 0 or -EINVAL (why in err). */
static int parse_ids(struct sse *s, const char *v, char *err, size_t es)
{
    if (!(s->ids = strdup(v)))
        return -ENOMEM;
    for (char *p = s->ids, *next; p && *p; p = next) {
        next = strchr(p, ',');
        if (next)
            *next++ = '\0';
        size_t n = strlen(p);
        if (!bridge_id_valid(p, n)) {
            snprintf(err, es, "ids: '%.40s' is not a twin id", p);
            return -EINVAL;
        }
        if (s->nids == IDS_MAX) {
            snprintf(err, es, "ids: at most %d", IDS_MAX);
            return -EINVAL;
        }
        s->id[s->nids] = p;
        s->id_len[s->nids++] = n;
    }
    return 0;
}

static int parse_kinds(struct sse *s, const char *v, char *err, size_t es)
{
    s->kinds = 0;
    for (const char *p = v; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 5 && !memcmp(p, "state", 5))
            s->kinds |= K_STATE;
        else if (n == 5 && !memcmp(p, "event", 5))
            s->kinds |= K_EVENT;
        else if (n == 10 && !memcmp(p, "prediction", 10))
            s->kinds |= K_PREDICTION;
        else {
            snprintf(err, es, "kinds: '%.*s' is not state, event or prediction", (int)n, p);
            return -EINVAL;
        }
        p += n + (end ? 1 : 0);
    }
    return 0;
}

/* Last-Event-ID "<boot>-<seq>": where to go on from. Returns false when the id is from
 * another run of the hub (or not one of ours). */
static bool resume_point(struct sse *s, const char *v, uint64_t *after)
{
    const char *boot = stream_boot(s->h->stream), *dash = strchr(v, '-');
    size_t bl = strlen(boot);
    if (!dash || (size_t)(dash - v) != bl || memcmp(v, boot, bl))
        return false;
    char *end;
    errno = 0;
    unsigned long long q = strtoull(dash + 1, &end, 10);
    if (errno || *end || end == dash + 1)
        return false;
    *after = q;
    return true;
}

enum MHD_Result sse_start(struct hub_http *h, struct MHD_Connection *c)
{
    if (!h->stream)
        return http_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "no stream");
    if (atomic_fetch_add(&h->streams, 1) >= h->max_streams) {
        atomic_fetch_sub(&h->streams, 1);
        return http_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "%u streams are open already (http.max_streams)", h->max_streams);
    }
    char err[QUERY_ERR_LEN] = "";
    struct sse *s = calloc(1, sizeof(*s));
    if (!s || !(s->b = malloc(sizeof(*s->b))) || !msgpack_zone_init(&s->zone, 4096)) {
        if (s)
            free(s->b);
        free(s);
        atomic_fetch_sub(&h->streams, 1);
        return http_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    }
    s->h = h;
    s->wrote_ms = hub_mono_ms();
    s->kinds = K_STATE | K_EVENT | K_PREDICTION;
    msgpack_sbuffer_init(&s->out);
    msgpack_sbuffer_init(&s->row);
    msgpack_packer_init(&s->pk, &s->row, msgpack_sbuffer_write);
    int rc = 0;
    const char *v;
    if ((v = http_arg(c, "ids")))
        rc = parse_ids(s, v, err, sizeof(err));
    if (rc == 0 && (v = http_arg(c, "kinds")))
        rc = parse_kinds(s, v, err, sizeof(err));
    const char *where = http_arg(c, "where"), *fields = http_arg(c, "fields");
    if (rc == 0 && ((where && *where) || (fields && *fields))) {
        struct query_spec qs = {0};
        if (where) {
            qs.where = where;
            qs.where_len = strlen(where);
        }
        if (fields)
            rc = query_fields_split(&qs, fields, strlen(fields), err);
        if (rc == 0)
            rc = query_new(&qs, &h->qlim, &s->q, err);
    }
    if (rc < 0) {
        sse_free(s);
        return http_error(c, rc == -ENOMEM ? MHD_HTTP_INTERNAL_SERVER_ERROR : MHD_HTTP_BAD_REQUEST,
                          "%s", err);
    }
    /* From where the reader left off, or from now. */
    s->after = stream_last(h->stream);
    puts_(s, "retry: 2000\n\n");
    const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
    if (last && *last) {
        uint64_t at;
        if (resume_point(s, last, &at))
            s->after = at < s->after ? at : s->after;
        else
            reset(s, "restarted", 0);
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK, reader, s, sse_free);
    if (!r) {
        sse_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    http_headers(r);
    enum MHD_Result ans = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ans;
}
