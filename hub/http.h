/* http.h: what the parts of the daemon's HTTP listener share: http.c (the listener, access,
 * routing, answers), api.c (the JSON API), sse.c (the live stream) and web.c (the dashboard's
 * files). Nothing outside them includes it; main.c sees hub.h's http_start and http_stop.
 *
 * Threads: libmicrohttpd runs every connection on a thread of its own (thread per connection,
 * at most http.max_connections), so a stream may wait for events without holding up the rest;
 * every function here runs there unless it says otherwise. */
#ifndef HUB_HTTP_H
#define HUB_HTTP_H

#include <microhttpd.h>

#include "hub.h"
#include "query.h"

enum http_role { HTTP_NONE = 0, HTTP_READ, HTTP_WRITE };

struct web_files;

/* The models' scores over time (http_tick): a ring of samples of every model's counters. */
#define MODEL_SAMPLES 360 /* an hour at http_tick's 10 s */
#define MODEL_SAMPLE_MODELS 16
struct model_sample {
    int64_t ts;
    unsigned n;
    struct hub_model_sample m[MODEL_SAMPLE_MODELS];
};

struct hub_http {
    struct MHD_Daemon *d;
    struct metrics_src src;
    struct hub_stream *stream;   /* NULL: no stream (the API answers 503 for it) */
    struct ingest writes;        /* POSTs go through requests_http with it ... */
    pthread_mutex_t writes_lock; /* ... one at a time */
    bool writes_ready;
    struct query_limits qlim;
    struct web_files *web; /* NULL: no dashboard */
    unsigned port;
    char *token, *wtoken; /* the read and the write token; NULL: none asked */
    size_t token_len, wtoken_len;
    char *cert, *key;
    _Atomic unsigned streams; /* streams open now */
    unsigned max_streams;
    int keepalive_ms; /* a comment on a silent stream this often */
    size_t max_body;  /* bytes of a POST body */
    int64_t started;  /* hub ms */
    pthread_mutex_t samples_lock; /* guards the ring below */
    struct model_sample *samples; /* MODEL_SAMPLES, oldest at (next - count) */
    unsigned samples_next, samples_count;
};

/* ---------------------------------------------------------------------------------------------
 * Answers (http.c). Each returns what libmicrohttpd's handler returns. Every answer carries
 * Cache-Control: no-store, X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer and
 * the dashboard's Content-Security-Policy.
 * ------------------------------------------------------------------------------------------ */

/* body: malloc'd and taken (owned) or static. */
enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const char *type,
                           const void *body, size_t len, bool owned);
/* {"code": status, "message": "..."} */
enum MHD_Result http_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The msgpack value in buf[0, len) as JSON (a JSON payload, first byte '{', as it is). */
enum MHD_Result http_json(struct MHD_Connection *c, unsigned status, const void *buf, size_t len);
/* Adds the headers every answer has. */
void http_headers(struct MHD_Response *r);
/* A query-string argument, or NULL. */
const char *http_arg(struct MHD_Connection *c, const char *name);

/* ---------------------------------------------------------------------------------------------
 * api.c: GET /api/..., POST /api/twins/{id}/desired and /commands (web/API.md).
 * ------------------------------------------------------------------------------------------ */

enum MHD_Result api_get(struct hub_http *h, struct MHD_Connection *c, const char *url);
/* role: the request's; a write needs HTTP_WRITE. */
enum MHD_Result api_post(struct hub_http *h, struct MHD_Connection *c, const char *url,
                         const char *body, size_t len, enum http_role role);
/* ---------------------------------------------------------------------------------------------
 * sse.c: GET /api/stream.
 * ------------------------------------------------------------------------------------------ */

enum MHD_Result sse_start(struct hub_http *h, struct MHD_Connection *c);

/* ---------------------------------------------------------------------------------------------
 * web.c: the dashboard's files, read into memory at start (http.dashboard).
 * ------------------------------------------------------------------------------------------ */

/* Reads every regular file of dir and of its subdirectories (one level), at most 256 files
 * and 32 MiB. Returns 0, or -errno with the reason in err. Main thread. */
int web_open(struct web_files **out, const char *dir, char *err, size_t es);
void web_close(struct web_files *w);
/* GET of a path that is not /api or /metrics...: the file, "/" being index.html; 404. */
enum MHD_Result web_get(const struct web_files *w, struct MHD_Connection *c, const char *url);

#endif
