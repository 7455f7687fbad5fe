/* http: the daemon's HTTP listener on libmicrohttpd: GET (or HEAD) /metrics, /healthz and
 * /readyz, 404 for any other path, 405 for any other method, 401 without the bearer token
 * when http.token_file is set. It binds the socket itself (so port 0 picks a free one and a
 * bad address is an error at start) and hands it to libmicrohttpd, which serves every
 * connection from one internal thread, with a connection limit, an idle timeout and a memory
 * limit per connection (http.max_request). Nothing here touches the message path: the
 * handlers read counters (metrics.c) and a store read transaction.
 *
 * Threads: http_start/http_stop on the main thread; every handler on libmicrohttpd's thread. */
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

#include "hub.h"
#include "log.h"

#define TOKEN_MAX 4096
#define PEM_MAX (1u << 20)

struct hub_http {
    struct MHD_Daemon *d;
    struct metrics_src src;
    unsigned port;
    char *token; /* NULL: none asked */
    size_t token_len;
    char *cert, *key;
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

static int read_token(struct hub_http *h, const char *path, char *err, size_t es)
{
    size_t n;
    int rc = slurp(path, TOKEN_MAX, &h->token, &n);
    if (rc < 0) {
        snprintf(err, es, "http.token_file %s: %s", path,
                 rc == -EFBIG ? "longer than 4096 bytes" : strerror(-rc));
        return -EINVAL;
    }
    while (n && (h->token[n - 1] == '\n' || h->token[n - 1] == '\r' || h->token[n - 1] == ' '))
        h->token[--n] = '\0';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h->token[i];
        if (c <= ' ' || c >= 0x7f) {
            snprintf(err, es, "http.token_file %s: the token has a space or control character",
                     path);
            return -EINVAL;
        }
    }
    if (n < 16) {
        snprintf(err, es, "http.token_file %s: a token of at least 16 characters is needed", path);
        return -EINVAL;
    }
    h->token_len = n;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------------ */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free((void *)body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"twinhub\"");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result text(struct MHD_Connection *c, unsigned status, const char *msg)
{
    return reply(c, status, "text/plain; charset=utf-8", msg, strlen(msg), false);
}

/* Compares in time independent of where the two differ. */
static bool same(const char *a, size_t an, const char *b, size_t bn)
{
    unsigned char d = an != bn;
    for (size_t i = 0; i < an && i < bn; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

static bool authorized(struct hub_http *h, struct MHD_Connection *c)
{
    if (!h->token)
        return true;
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!v || strncmp(v, "Bearer ", 7) != 0)
        return false;
    return same(v + 7, strlen(v + 7), h->token, h->token_len);
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
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf, len, true);
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
    return reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "application/json", copy, n,
                 true);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct hub_http *h = cls;
    static int started;
    (void)version;
    (void)upload_data;
    /* The first call has only the headers: a request refused is answered there, before any
     * body is read (libmicrohttpd then closes the connection); a good one is answered once
     * its (ignored) body is read. */
    if (!*con_cls) {
        if (!authorized(h, c))
            return text(c, MHD_HTTP_UNAUTHORIZED, "a bearer token is needed (http.token_file)\n");
        bool known =
            !strcmp(url, "/metrics") || !strcmp(url, "/healthz") || !strcmp(url, "/readyz");
        if (!known)
            return text(c, MHD_HTTP_NOT_FOUND, "not found: /metrics, /healthz, /readyz\n");
        if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
            return text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        *con_cls = &started;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!strcmp(url, "/metrics"))
        return metrics(h, c);
    return health(h, c, !strcmp(url, "/readyz"));
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

int http_start(struct hub_http **out, const struct config *c, const struct metrics_src *src,
               char *err, size_t es)
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
    int rc = 0;
    if (c->http_token_file[0] && (rc = read_token(h, c->http_token_file, err, es)) < 0)
        goto fail;
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
    /* one thread for every connection, epoll: no FD_SETSIZE limit on the fds it may get */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                     (tls ? MHD_USE_TLS : 0);
    /* without TLS the list ends before the certificate options */
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->http_max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->http_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)c->http_max_request,
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
    free(h->token);
    free(h->cert);
    free(h->key);
    free(h);
    return rc;
}

unsigned http_port(const struct hub_http *h)
{
    return h->port;
}

void http_stop(struct hub_http *h)
{
    if (!h)
        return;
    /* MHD_stop_daemon closes the listening socket it was given too */
    MHD_stop_daemon(h->d);
    free(h->token);
    free(h->cert);
    free(h->key);
    free(h);
}
