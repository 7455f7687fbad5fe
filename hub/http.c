/* http: the daemon's HTTP listener on libmicrohttpd: who may ask what (bearer tokens with a
 * read and a write role), where each request goes (/metrics, /healthz and /readyz here; /api to
 * api.c and sse.c; the rest to the dashboard's files, web.c) and the shape of every answer.
 * It binds the socket itself (so port 0 picks a free one and a bad address is an error at
 * start) and hands it to libmicrohttpd, which runs each connection on a thread of its own
 * (a stream waits for events there), with a connection limit, an idle timeout and a memory
 * limit per connection (http.max_request). Nothing here touches the message path: handlers
 * read counters (metrics.c), the stream's ring and store read transactions; a write goes
 * through the request code (requests_http) on the listener's own ingest.
 *
 * Access (the design leaves it to us):
 * - http.token_file: the read token; http.write_token_file: the write token, which reads too.
 *   With no read token (loopback only), reads need none; a write always needs the write token.
 * - The dashboard's own files need no token (they hold no data; the page asks for a token).
 *
 * Threads: http_start/http_stop on the main thread; every handler on its connection's thread. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "log.h"

#define TOKEN_MAX 4096
#define PEM_MAX (1u << 20)
#define CSP                                                                                    \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "          \
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* One request's state between libmicrohttpd's calls (its con_cls). */
struct http_req {
    enum http_role role;
    bool post;
    bool too_big;
    size_t len;
    char *body;
};

/* ---------------------------------------------------------------------------------------------
 * Files
 * ------------------------------------------------------------------------------------------ */

/* Reads a whole small file (NUL-terminated, at most `max` bytes). Returns 0 or -errno. */
static int slurp(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    char *buf = malloc(max + 1);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(buf, 1, max + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > max) {
        free(buf);
        return bad ? -EIO : -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Reads the token of config key `key` from `path` into *tok. Returns 0 or -EINVAL. */
static int read_token(const char *key, const char *path, char **tok, size_t *len, char *err,
                      size_t es)
{
    size_t n;
    int rc = slurp(path, TOKEN_MAX, tok, &n);
    if (rc < 0) {
        snprintf(err, es, "%s %s: %s", key, path,
                 rc == -EFBIG ? "longer than 4096 bytes" : strerror(-rc));
        return -EINVAL;
    }
    char *t = *tok;
    while (n && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' '))
        t[--n] = '\0';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c <= ' ' || c >= 0x7f) {
            snprintf(err, es, "%s %s: the token has a space or control character", key, path);
            return -EINVAL;
        }
    }
    if (n < 16) {
        snprintf(err, es, "%s %s: a token of at least 16 characters is needed", key, path);
        return -EINVAL;
    }
    *len = n;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------------ */

void http_headers(struct MHD_Response *r)
{
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Content-Security-Policy", CSP);
}

enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const char *type,
                           const void *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free((void *)body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    http_headers(r);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"twinhub\"");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD, POST");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result text(struct MHD_Connection *c, unsigned status, const char *msg)
{
    return http_reply(c, status, "text/plain; charset=utf-8", msg, strlen(msg), false);
}

enum MHD_Result http_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    out_pack_key(&pk, "code");
    msgpack_pack_unsigned_int(&pk, status);
    out_pack_key(&pk, "message");
    out_pack_str(&pk, msg, strlen(msg));
    enum MHD_Result rc = http_json(c, status, b.data, b.size);
    msgpack_sbuffer_destroy(&b);
    return rc;
}

enum MHD_Result http_json(struct MHD_Connection *c, unsigned status, const void *buf, size_t len)
{
    const char *type = "application/json; charset=utf-8";
    if (len && ((const char *)buf)[0] == '{') {
        char *copy = malloc(len + 1);
        if (!copy)
            return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        memcpy(copy, buf, len);
        copy[len] = '\n';
        return http_reply(c, status, type, copy, len + 1, true);
    }
    msgpack_zone zone;
    msgpack_object obj;
    size_t off = 0;
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    if (!msgpack_zone_init(&zone, 4096))
        return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    int rc = msgpack_unpack(buf, len, &off, &zone, &obj) == MSGPACK_UNPACK_SUCCESS
                 ? twin_json_write(&obj, &out)
                 : -EBADMSG;
    msgpack_zone_destroy(&zone);
    if (rc == 0 && msgpack_sbuffer_write(&out, "\n", 1) != 0)
        rc = -ENOMEM;
    if (rc < 0) {
        msgpack_sbuffer_destroy(&out);
        return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot write the answer\n");
    }
    size_t n = out.size;
    return http_reply(c, status, type, msgpack_sbuffer_release(&out), n, true);
}

const char *http_arg(struct MHD_Connection *c, const char *name)
{
    return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

/* Compares in time independent of where the two differ. */
static bool same(const char *a, size_t an, const char *b, size_t bn)
{
    unsigned char d = an != bn;
    for (size_t i = 0; i < an && i < bn; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

/* What the request's token grants; HTTP_NONE also for a wrong token (*wrong set). */
static enum http_role role_of(struct hub_http *h, struct MHD_Connection *c, bool *wrong)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    *wrong = false;
    if (!v)
        return h->token ? HTTP_NONE : HTTP_READ;
    if (strncmp(v, "Bearer ", 7) != 0) {
        *wrong = true;
        return HTTP_NONE;
    }
    size_t n = strlen(v + 7);
    /* both compared, so the time says nothing of which one nearly matched */
    bool w = h->wtoken && same(v + 7, n, h->wtoken, h->wtoken_len);
    bool r = h->token && same(v + 7, n, h->token, h->token_len);
    if (w)
        return HTTP_WRITE;
    if (r)
        return HTTP_READ;
    *wrong = true;
    return HTTP_NONE;
}

static enum MHD_Result metrics(struct hub_http *h, struct MHD_Connection *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    int rc = metrics_write(&h->src, f);
    if (fclose(f) != 0 || rc < 0) {
        free(buf);
        return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot write the metrics\n");
    }
    return http_reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf, len, true);
}

/* /healthz (live only) and /readyz (live and ready): 200 or 503 and which checks failed. */
static enum MHD_Result health(struct hub_http *h, struct MHD_Connection *c, bool ready)
{
    struct hub_checks k;
    hub_health_check(h->src.health, h->src.in, hub_mono_ms(), &k);
    bool store = false;
    if (ready) {
        /* the store answers a read */
        struct twin_txn *txn;
        char terr[TWIN_ERR_LEN];
        store = twin_store_read_begin(h->src.store, &txn, terr) == 0;
        if (store)
            twin_store_read_end(txn);
    }
    const struct {
        const char *name;
        bool ok, asked;
    } checks[] = {
        {"main_loop", k.main_loop, true},
        {"ingest", k.ingest, true},
        {"store", store, ready},
        {"broker", k.broker, ready},
        {"not_draining", k.not_draining, ready},
    };
    char body[512];
    size_t n = 0;
    bool ok = true;
    n += (size_t)snprintf(body + n, sizeof(body) - n, "{\"checks\":{");
    for (size_t i = 0, first = 1; i < sizeof(checks) / sizeof(checks[0]); i++) {
        if (!checks[i].asked)
            continue;
        ok = ok && checks[i].ok;
        n += (size_t)snprintf(body + n, sizeof(body) - n, "%s\"%s\":%s", first ? "" : ",",
                              checks[i].name, checks[i].ok ? "true" : "false");
        first = 0;
    }
    n += (size_t)snprintf(body + n, sizeof(body) - n, "},\"status\":\"%s\"}\n",
                          ok ? "ok" : "failing");
    char *copy = strdup(body);
    if (!copy)
        return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return http_reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "application/json", copy,
                      n, true);
}

static bool is(const char *url, const char *path)
{
    return !strcmp(url, path);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct hub_http *h = cls;
    (void)version;
    bool api = !strncmp(url, "/api/", 5);
    bool ops = is(url, "/metrics") || is(url, "/healthz") || is(url, "/readyz");
    /* The first call has only the headers: a request refused is answered there, before any
     * body is read (libmicrohttpd then closes the connection); a good one is answered once
     * its body is read (a POST's, up to http.max_body; other bodies are ignored). */
    struct http_req *rq = *con_cls;
    if (!rq) {
        bool get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
        bool post = !strcmp(method, MHD_HTTP_METHOD_POST);
        bool wrong;
        enum http_role role = role_of(h, c, &wrong);
        if ((api || ops) && role == HTTP_NONE)
            return api ? http_error(c, MHD_HTTP_UNAUTHORIZED, "%s",
                                    wrong ? "the bearer token is not one of the hub's"
                                          : "a bearer token is needed (http.token_file)")
                       : text(c, MHD_HTTP_UNAUTHORIZED,
                              "a bearer token is needed (http.token_file)\n");
        if (!get && !(post && api))
            return api ? http_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "%s is not allowed here",
                                    method)
                       : text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        if (!(rq = calloc(1, sizeof(*rq))))
            return MHD_NO;
        rq->role = role;
        rq->post = post;
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (rq->post && !rq->too_big) {
            if (rq->len + *upload_data_size > h->max_body) {
                rq->too_big = true;
            } else {
                char *b = realloc(rq->body, rq->len + *upload_data_size + 1);
                if (!b)
                    return MHD_NO;
                memcpy(b + rq->len, upload_data, *upload_data_size);
                rq->body = b;
                rq->len += *upload_data_size;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rq->post) {
        if (rq->too_big)
            return http_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "the body is over http.max_body "
                                                              "(%zu bytes)", h->max_body);
        return api_post(h, c, url, rq->body, rq->len, rq->role);
    }
    if (is(url, "/metrics"))
        return metrics(h, c);
    if (ops)
        return health(h, c, is(url, "/readyz"));
    if (is(url, "/api/stream"))
        return sse_start(h, c);
    if (api)
        return api_get(h, c, url);
    if (!h->web)
        return text(c, MHD_HTTP_NOT_FOUND,
                    "not found: /metrics, /healthz, /readyz, /api/ (no dashboard: http.dashboard)\n");
    return web_get(h->web, c, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct http_req *rq = *con_cls;
    if (rq) {
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[256], q[300];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = '\0';
    log_debug("http", "detail=%s", log_quote(q, sizeof(q), msg, n));
}

/* ---------------------------------------------------------------------------------------------
 * Start and stop
 * ------------------------------------------------------------------------------------------ */

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* A listening socket on host:port. Returns the fd or -errno (reason in err). */
static int bind_listen(const char *listen_s, const char *host, unsigned port, bool *loopback,
                       unsigned *bound, char *err, size_t es)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g) {
        snprintf(err, es, "http.listen %s: %s", listen_s, gai_strerror(g));
        return -EINVAL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = 0;
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) {
        rc = -errno;
        snprintf(err, es, "http.listen %s: %s", listen_s, strerror(errno));
    }
    *loopback = is_loopback(ai->ai_addr);
    freeaddrinfo(ai);
    if (rc) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* Frees what http_start set up; h->d is stopped already. */
static void destroy(struct hub_http *h)
{
    if (h->samples) {
        pthread_mutex_destroy(&h->samples_lock);
        free(h->samples);
    }
    if (h->writes_ready) {
        ingest_cleanup(&h->writes);
        pthread_mutex_destroy(&h->writes_lock);
    }
    web_close(h->web);
    free(h->token);
    free(h->wtoken);
    free(h->cert);
    free(h->key);
    free(h);
}

int http_start(struct hub_http **out, const struct config *c, const struct metrics_src *src,
               struct hub_stream *stream, char *err, size_t es)
{
    char host[128], why[128];
    unsigned port;
    *out = NULL;
    if (config_listen_split(c->http_listen, host, sizeof(host), &port, why, sizeof(why)) < 0) {
        snprintf(err, es, "http.listen %s: expected %s", c->http_listen, why);
        return -EINVAL;
    }
    struct hub_http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, es, "out of memory");
        return -ENOMEM;
    }
    h->src = *src;
    h->stream = stream;
    h->max_streams = c->http_max_streams;
    h->keepalive_ms = 15000;
    if (h->keepalive_ms > (int)c->http_timeout_s * 500)
        h->keepalive_ms = (int)c->http_timeout_s * 500; /* well inside the idle timeout */
    h->max_body = c->http_max_body;
    h->started = hub_now_ms();
    if (!(h->samples = calloc(MODEL_SAMPLES, sizeof(*h->samples)))) {
        free(h);
        snprintf(err, es, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&h->samples_lock, NULL);
    query_limits_init(&h->qlim);
    h->qlim.max_limit = c->query_max_limit;
    h->qlim.max_points = c->query_max_points;
    int rc = 0;
    if (c->http_token_file[0] &&
        (rc = read_token("http.token_file", c->http_token_file, &h->token, &h->token_len, err,
                         es)) < 0)
        goto fail;
    if (c->http_write_token_file[0] &&
        (rc = read_token("http.write_token_file", c->http_write_token_file, &h->wtoken,
                         &h->wtoken_len, err, es)) < 0)
        goto fail;
    if (h->token && h->wtoken && same(h->token, h->token_len, h->wtoken, h->wtoken_len)) {
        snprintf(err, es, "http.write_token_file: the same token as http.token_file");
        rc = -EINVAL;
        goto fail;
    }
    if (c->http_dashboard[0] && (rc = web_open(&h->web, c->http_dashboard, err, es)) < 0)
        goto fail;
    struct twin_limits lim = ingest_limits(src->in);
    if (ingest_init(&h->writes, src->store, src->pub, src->rep, src->in->topics, &lim,
                    src->in->out.json) < 0) {
        snprintf(err, es, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    h->writes.rules = src->rules;
    h->writes.out.max_stored = src->in->out.max_stored;
    h->writes.out.refused = src->in->out.refused;
    pthread_mutex_init(&h->writes_lock, NULL);
    h->writes_ready = true;
    bool tls = c->http_tls_cert[0] || c->http_tls_key[0];
    if (tls) {
        size_t n;
        if (!c->http_tls_cert[0] || !c->http_tls_key[0]) {
            snprintf(err, es, "http.tls: both cert and key are needed");
            rc = -EINVAL;
            goto fail;
        }
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            snprintf(err, es, "http.tls: this libmicrohttpd has no TLS");
            rc = -EINVAL;
            goto fail;
        }
        const char *bad = NULL;
        if ((rc = slurp(c->http_tls_cert, PEM_MAX, &h->cert, &n)) < 0)
            bad = c->http_tls_cert;
        else if ((rc = slurp(c->http_tls_key, PEM_MAX, &h->key, &n)) < 0)
            bad = c->http_tls_key;
        if (bad) {
            snprintf(err, es, "http.tls: %s: %s", bad, strerror(-rc));
            rc = -EINVAL;
            goto fail;
        }
    }
    bool loopback;
    int fd = bind_listen(c->http_listen, host, port, &loopback, &h->port, err, es);
    if (fd < 0) {
        rc = fd;
        goto fail;
    }
    if (!loopback && (!h->token || !tls)) {
        /* a token in clear text over the fleet's network protects nothing */
        snprintf(err, es,
                 "http.listen %s is not a loopback address: set http.token_file and http.tls",
                 c->http_listen);
        close(fd);
        rc = -EINVAL;
        goto fail;
    }
    /* A thread per connection: a stream waits for events on its own thread. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | (tls ? MHD_USE_TLS : 0);
    /* without TLS the list ends before the certificate options */
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->http_max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->http_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)c->http_max_request,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                            tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, h->cert,
                            MHD_OPTION_HTTPS_MEM_KEY, h->key, MHD_OPTION_END);
    if (!h->d) {
        /* libmicrohttpd has closed fd already, even when it fails */
        snprintf(err, es, "http.listen %s: libmicrohttpd did not start%s", c->http_listen,
                 tls ? " (check http.tls.cert and http.tls.key)" : "");
        rc = -EINVAL;
        goto fail;
    }
    *out = h;
    return 0;
fail:
    destroy(h);
    return rc;
}

void http_tick(struct hub_http *h)
{
    if (!h)
        return;
    int64_t now = hub_now_ms();
    pthread_mutex_lock(&h->samples_lock);
    const struct model_sample *last =
        h->samples_count ? &h->samples[(h->samples_next + MODEL_SAMPLES - 1) % MODEL_SAMPLES]
                         : NULL;
    bool due = !last || now - last->ts >= HTTP_TICK_MS;
    pthread_mutex_unlock(&h->samples_lock);
    if (!due)
        return;
    struct hub_rule_sample *rs;
    struct hub_model_sample *ms;
    unsigned nr, nm;
    if (hub_rules_sample(h->src.rules, &rs, &nr, &ms, &nm) < 0)
        return;
    pthread_mutex_lock(&h->samples_lock);
    struct model_sample *s = &h->samples[h->samples_next];
    s->ts = now;
    s->n = nm < MODEL_SAMPLE_MODELS ? nm : MODEL_SAMPLE_MODELS;
    if (s->n)
        memcpy(s->m, ms, s->n * sizeof(*ms));
    h->samples_next = (h->samples_next + 1) % MODEL_SAMPLES;
    if (h->samples_count < MODEL_SAMPLES)
        h->samples_count++;
    pthread_mutex_unlock(&h->samples_lock);
    free(rs);
    free(ms);
}

unsigned http_port(const struct hub_http *h)
{
    return h->port;
}

void http_stop(struct hub_http *h)
{
    if (!h)
        return;
    /* the streams' threads wake and end; MHD_stop_daemon joins them and closes the listening
     * socket it was given */
    stream_stop(h->stream);
    MHD_stop_daemon(h->d);
    destroy(h);
}
