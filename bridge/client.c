/* bridge/client.c: the MQTT connection, on Eclipse Paho C's MQTTAsync (Debian's 1.3.12): connect
 * with TLS, will and persistent session, automatic reconnect, resubscribe and birth message
 * after every connect, publishes with exactly-once completion callbacks, and a clean stop.
 * It owns no topic scheme (topics.c) and knows nothing of payloads.
 *
 * Threads and locks
 * -----------------
 * Paho runs two threads shared by all its clients: a send thread (works the command queue:
 * CONNECT, SUBSCRIBE, PUBLISH, DISCONNECT; runs the reconnect timer) and a receive thread
 * (reads packets). Both hold Paho's global mutex while they call us. Our functions run on:
 *
 *   caller's thread:    bridge_client_new/start/stop/free, bridge_client_wait_connected,
 *                       bridge_client_connected, bridge_options_init; bridge_client_publish
 *                       (any thread, Paho's included)
 *   receive thread:     on_arrived (messageArrived), on_lost (connectionLost), on_connected
 *                       (after every CONNACK), on_server_disconnect (MQTT 5 DISCONNECT),
 *                       on_connect_ok*, on_sub_ok* / on_sub_fail* (SUBACK), on_pub_ok* and
 *                       on_pub_fail* for QoS 1 (PUBACK), on_connect_fail* (CONNACK refused,
 *                       TCP/TLS failure), on_tls_error (OpenSSL errors in the handshake)
 *   send thread:        on_pub_ok* for QoS 0 (written to the socket), on_pub_fail* and
 *                       on_sub_fail* when a write fails, on_connect_fail* (connect timeout,
 *                       immediate socket error), on_disc_done* (DISCONNECT done), on_lost
 *                       (when a write fails), on_tls_error (a handshake started here)
 *   caller of free:     inside MQTTAsync_destroy Paho 1.3.12 fails every command it still
 *                       holds (OPERATION_INCOMPLETE): on_pub_fail*, on_sub_fail*,
 *                       on_disc_done*, on_connect_fail* run there; by then every record is
 *                       retired and c->destroying is set, so none reaches a user callback
 *
 * c->lock guards the fields marked (L) below; it is a leaf lock: we never call Paho, a user
 * callback or on_log while holding it, so it nests inside Paho's mutex without ever being
 * taken the other way round. User callbacks (on_message, on_connection, done) run without
 * c->lock, on the Paho thread named above, with Paho's mutex held: they may call
 * bridge_client_publish but must not call bridge_client_stop or bridge_client_free.
 *
 * Publish completion
 * ------------------
 * Every accepted publish owns a record (struct pub_rec) whose address is the Paho context.
 * Paho 1.3.12 calls at most one of onSuccess/onFailure per command, and frees the command
 * right after. A record completed by Paho goes back to a free list and is reused; a record
 * completed by us (-ECANCELED at stop) is still known to Paho, which may answer it later (a
 * late PUBACK, or OPERATION_INCOMPLETE from inside MQTTAsync_destroy), so it is retired and
 * never reused: the late callback finds it not busy and does nothing. Records are freed only
 * after MQTTAsync_destroy, when Paho can call nothing.
 */
#include "bridge.h"
#include "internal.h"

#include <MQTTAsync.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Paho's queue of publish commands not yet written (it counts QoS 0 too). The hub bounds its
 * own publishes in flight well below this; past it a publish fails with -EIO. */
#define PAHO_QUEUE_MAX 10000
/* Paho checks a DISCONNECT's in-flight timeout on a 3 s timer: allow for that. */
#define DISCONNECT_GRACE_MS 3500
/* How long to wait for a DISCONNECT queued behind publishes the broker does not acknowledge:
 * Paho 1.3.12 queues a DISCONNECT after them, and only MQTTAsync_destroy gets past them. */
#define DISCONNECT_STUCK_MS 250

enum state { ST_NEW, ST_STARTED, ST_STOPPING, ST_STOPPED };

struct bridge_client;

struct pub_rec {
    struct bridge_client *c;
    struct pub_rec *prev, *next; /* (L) on busy, free or retired */
    bridge_publish_cb done;      /* (L) */
    void *done_ctx;              /* (L) */
    bool busy;                   /* (L) accepted and not completed yet */
};

struct bridge_client {
    MQTTAsync h;
    bool v5, tls;
    struct bridge_options o; /* a copy; its strings and payloads point at our own copies */
    char *url;               /* as given to Paho: mqtts:// -> ssl://, mqtt:// -> tcp:// */
    char **subs;
    int *sub_qos;
    MQTTAsync_willOptions will;
    MQTTAsync_SSLOptions ssl;
    MQTTProperties connect_props;

    pthread_mutex_t lock;
    pthread_cond_t cond; /* signalled on every change of up, outstanding, submitting, flags */
    atomic_bool up;      /* connected, resubscribed, birth queued: publishes are accepted */
    atomic_bool destroying;
    enum state state;          /* (L) */
    bool sub_pending;          /* (L) a SUBSCRIBE of the current connection awaits its SUBACK */
    MQTTAsync_token sub_token; /* (L) its token */
    int session_present;       /* (L) from the first CONNACK, -1 once logged */
    int server_recv_max;       /* (L) MQTT 5 Receive Maximum of the first CONNACK, 0: none */
    int send_quota;            /* (L) the same, kept for bridge_client_send_quota */
    bool disc_pending;         /* (L) our DISCONNECT has not completed */
    bool final_pending;        /* (L) the final message has not completed */
    int final_status;          /* (L) */
    unsigned submitting;       /* (L) publishes between taking a record and Paho's answer */
    size_t outstanding;        /* (L) busy records */
    struct pub_rec *busy, *free_recs, *retired; /* (L) */
    char disc_reason[128]; /* (L) why the server sent DISCONNECT (MQTT 5), for on_lost */
};

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------ */

/* Formats one line for on_log. Any thread, without c->lock. */
static void say(struct bridge_client *c, enum bridge_log_level lv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(struct bridge_client *c, enum bridge_log_level lv, const char *fmt, ...)
{
    if (!c->o.on_log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    c->o.on_log(c->o.ctx, lv, buf);
}

static const char *ptext(int rc)
{
    const char *s = MQTTAsync_strerror(rc);
    return s ? s : "unknown error";
}

static const char *rctext(int reason)
{
    const char *s = MQTTReasonCode_toString((enum MQTTReasonCodes)reason);
    return s ? s : "unknown reason";
}

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Copies n bytes into a buffer of at least one byte, so an empty payload is not NULL. */
static void *dup_mem(const void *p, size_t n)
{
    void *d = malloc(n ? n : 1);
    if (d && n)
        memcpy(d, p, n);
    return d;
}

static void deadline_after(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static unsigned ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (long long)(deadline->tv_sec - now.tv_sec) * 1000 +
                   (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms > 0 ? (unsigned)(ms > UINT_MAX ? UINT_MAX : ms) : 0;
}

/* Waits on c->cond until the deadline; c->lock held. Returns false once it has passed. */
static bool wait_until(struct bridge_client *c, const struct timespec *deadline)
{
    return pthread_cond_timedwait(&c->cond, &c->lock, deadline) != ETIMEDOUT;
}

static bool is_up(struct bridge_client *c)
{
    return atomic_load(&c->up);
}

/* ---------------------------------------------------------------------------------------------
 * Publish records (all under c->lock)
 * ------------------------------------------------------------------------------------------ */

static void list_push(struct pub_rec **head, struct pub_rec *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head)
        (*head)->prev = r;
    *head = r;
}

static void list_unlink(struct pub_rec **head, struct pub_rec *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static struct pub_rec *rec_take(struct bridge_client *c)
{
    struct pub_rec *r = c->free_recs;
    if (r)
        list_unlink(&c->free_recs, r);
    else if (!(r = calloc(1, sizeof(*r))))
        return NULL;
    r->c = c;
    r->busy = true;
    list_push(&c->busy, r);
    c->outstanding++;
    return r;
}

/* Ends a busy record: to the free list when Paho is done with it, else retired for good. */
static void rec_end(struct bridge_client *c, struct pub_rec *r, bool paho_done)
{
    list_unlink(&c->busy, r);
    r->busy = false;
    r->done = NULL;
    r->done_ctx = NULL;
    list_push(paho_done ? &c->free_recs : &c->retired, r);
    c->outstanding--;
    pthread_cond_broadcast(&c->cond);
}

static void rec_free_all(struct pub_rec *r)
{
    while (r) {
        struct pub_rec *next = r->next;
        free(r);
        r = next;
    }
}

/* Completes a publish from a Paho callback; false when it was already completed (cancelled
 * at stop). Receive or send thread with Paho's mutex held, or inside MQTTAsync_destroy. */
static bool complete(struct pub_rec *r, int status)
{
    struct bridge_client *c = r->c;
    pthread_mutex_lock(&c->lock);
    if (!r->busy) {
        pthread_mutex_unlock(&c->lock);
        return false;
    }
    bridge_publish_cb done = r->done;
    void *ctx = r->done_ctx;
    rec_end(c, r, true);
    pthread_mutex_unlock(&c->lock);
    if (done)
        done(ctx, status);
    return true;
}

/* Fails every publish still outstanding with -ECANCELED, one at a time so no lock is held
 * while `done` runs. Caller's thread (stop, free), after submitting reached 0. */
static void cancel_all(struct bridge_client *c)
{
    size_t n = 0;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        struct pub_rec *r = c->busy;
        if (!r) {
            pthread_mutex_unlock(&c->lock);
            break;
        }
        bridge_publish_cb done = r->done;
        void *ctx = r->done_ctx;
        rec_end(c, r, false);
        pthread_mutex_unlock(&c->lock);
        n++;
        if (done)
            done(ctx, -ECANCELED);
    }
    if (n)
        say(c, BRIDGE_LOG_WARN, "cancelled %zu publishes still in flight", n);
}

/* Paho's failure to errno: a v5 PUBACK reason, a session lost before the ack, or other. */
static int pub_status(int code, int reason)
{
    if (reason >= MQTTREASONCODE_UNSPECIFIED_ERROR)
        return reason == MQTTREASONCODE_NOT_AUTHORIZED ? -EACCES : -EIO;
    if (code == MQTTASYNC_OPERATION_INCOMPLETE)
        return -ECONNRESET;
    return -EIO;
}

static void on_pub_ok3(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    complete(ctx, 0);
}

static void on_pub_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    (void)d;
    complete(ctx, 0);
}

static void on_pub_fail3(void *ctx, MQTTAsync_failureData *d)
{
    struct pub_rec *r = ctx;
    struct bridge_client *c = r->c; /* r may be reused once completed */
    if (complete(r, pub_status(d->code, 0)))
        say(c, BRIDGE_LOG_DEBUG, "publish failed rc=%d (%s)", d->code, ptext(d->code));
}

static void on_pub_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    struct pub_rec *r = ctx;
    struct bridge_client *c = r->c;
    if (complete(r, pub_status(d->code, d->reasonCode)))
        say(c, BRIDGE_LOG_DEBUG, "publish failed rc=%d (%s) reason=0x%02x (%s)", d->code,
            ptext(d->code), (unsigned)d->reasonCode, rctext(d->reasonCode));
}

/* Hands one publish to Paho. `internal` publishes (the final message) are allowed while
 * stopping; others need the client up. Returns 0 (done will be called exactly once),
 * -ENOTCONN, -ENOMEM or -EIO (done never called). Any thread. */
static int submit(struct bridge_client *c, bool internal, const char *topic, const void *payload,
                  size_t len, int qos, bool retained, const struct bridge_pub_props *props,
                  bridge_publish_cb done, void *done_ctx)
{
    pthread_mutex_lock(&c->lock);
    if (internal ? c->state != ST_STOPPING : (c->state != ST_STARTED || !is_up(c))) {
        pthread_mutex_unlock(&c->lock);
        return -ENOTCONN;
    }
    struct pub_rec *r = rec_take(c);
    if (!r) {
        pthread_mutex_unlock(&c->lock);
        return -ENOMEM;
    }
    r->done = done;
    r->done_ctx = done_ctx;
    c->submitting++;
    pthread_mutex_unlock(&c->lock);

    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = (void *)(payload ? payload : "");
    m.payloadlen = (int)len;
    m.qos = qos;
    m.retained = retained;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = r;
    if (c->v5) {
        ro.onSuccess5 = on_pub_ok5;
        ro.onFailure5 = on_pub_fail5;
    } else {
        ro.onSuccess = on_pub_ok3;
        ro.onFailure = on_pub_fail3;
    }
    int prc = 0;
    if (c->v5 && props) {
        MQTTProperty p;
        if (props->correlation) {
            memset(&p, 0, sizeof(p));
            p.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA;
            p.value.data.data = (char *)props->correlation;
            p.value.data.len = (int)props->correlation_len;
            prc |= MQTTProperties_add(&m.properties, &p);
        }
        if (props->response_topic) {
            memset(&p, 0, sizeof(p));
            p.identifier = MQTTPROPERTY_CODE_RESPONSE_TOPIC;
            p.value.data.data = (char *)props->response_topic;
            p.value.data.len = (int)strlen(props->response_topic);
            prc |= MQTTProperties_add(&m.properties, &p);
        }
        if (props->content_type) {
            memset(&p, 0, sizeof(p));
            p.identifier = MQTTPROPERTY_CODE_CONTENT_TYPE;
            p.value.data.data = (char *)props->content_type;
            p.value.data.len = (int)strlen(props->content_type);
            prc |= MQTTProperties_add(&m.properties, &p);
        }
    }
    /* Paho copies topic, payload and properties before returning. */
    int rc = prc ? MQTTASYNC_FAILURE : MQTTAsync_sendMessage(c->h, topic, &m, &ro);
    MQTTProperties_free(&m.properties);

    pthread_mutex_lock(&c->lock);
    c->submitting--;
    if (rc != MQTTASYNC_SUCCESS && r->busy)
        rec_end(c, r, true); /* Paho refused it: it holds no reference to r */
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);

    switch (rc) {
    case MQTTASYNC_SUCCESS:
        return 0;
    case MQTTASYNC_DISCONNECTED:
        return -ENOTCONN;
    case MQTTASYNC_MAX_BUFFERED_MESSAGES:
        say(c, BRIDGE_LOG_WARN, "publish refused: Paho's queue is full (%d) topic=%s",
            PAHO_QUEUE_MAX, topic);
        return -EIO;
    default:
        say(c, BRIDGE_LOG_ERROR, "publish refused rc=%d (%s) topic=%s", rc,
            prc ? "bad MQTT 5 property" : ptext(rc), topic);
        return -EIO;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Connection callbacks
 * ------------------------------------------------------------------------------------------ */

/* The connection is usable: queue the birth message, then report it. Receive thread. */
static void came_up(struct bridge_client *c, const char *note)
{
    pthread_mutex_lock(&c->lock);
    bool started = c->state == ST_STARTED && !atomic_load(&c->destroying);
    pthread_mutex_unlock(&c->lock);
    if (!started)
        return;
    if (c->o.birth_topic) {
        int rc = MQTTAsync_send(c->h, c->o.birth_topic, (int)c->o.birth_len, c->o.birth_payload,
                                c->o.birth_qos, c->o.birth_retained, NULL);
        if (rc != MQTTASYNC_SUCCESS)
            say(c, BRIDGE_LOG_ERROR, "birth message refused rc=%d (%s) topic=%s", rc, ptext(rc),
                c->o.birth_topic);
    }
    pthread_mutex_lock(&c->lock);
    started = c->state == ST_STARTED;
    if (started) {
        atomic_store(&c->up, true);
        pthread_cond_broadcast(&c->cond);
    }
    pthread_mutex_unlock(&c->lock);
    if (started && c->o.on_connection)
        c->o.on_connection(c->o.ctx, true, note);
}

/* True (and no longer pending) when a SUBACK answers the SUBSCRIBE of this connection; stale
 * answers from an earlier connection, or anything during destroy, are ignored. */
static bool sub_current(struct bridge_client *c, MQTTAsync_token token)
{
    if (atomic_load(&c->destroying))
        return false;
    pthread_mutex_lock(&c->lock);
    bool ok = c->sub_pending && token == c->sub_token;
    if (ok)
        c->sub_pending = false;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

static void sub_refused(struct bridge_client *c, int i, int code)
{
    say(c, BRIDGE_LOG_ERROR, "subscription refused filter=%s reason=0x%02x (%s)", c->subs[i],
        (unsigned)code, rctext(code));
}

static void on_sub_ok3(void *ctx, MQTTAsync_successData *d)
{
    struct bridge_client *c = ctx;
    if (!sub_current(c, d->token))
        return;
    int refused = 0, n = c->o.n_subscriptions;
    for (int i = 0; i < n; i++) {
        int q = n == 1 ? d->alt.qos : d->alt.qosList ? d->alt.qosList[i] : 0;
        if (q == MQTT_BAD_SUBSCRIBE) {
            sub_refused(c, i, q);
            refused++;
        }
    }
    came_up(c, refused ? "connected; some subscriptions refused" : "connected");
}

static void on_sub_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    struct bridge_client *c = ctx;
    if (!sub_current(c, d->token))
        return;
    int refused = 0, n = c->o.n_subscriptions;
    for (int i = 0; i < n; i++) {
        /* Paho fills the array only when more than one filter was asked for */
        int code = n == 1 ? (int)d->reasonCode
                   : (d->alt.sub.reasonCodes && i < d->alt.sub.reasonCodeCount)
                       ? (int)d->alt.sub.reasonCodes[i]
                       : 0;
        if (code >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
            sub_refused(c, i, code);
            refused++;
        }
    }
    came_up(c, refused ? "connected; some subscriptions refused" : "connected");
}

static void on_sub_fail3(void *ctx, MQTTAsync_failureData *d)
{
    struct bridge_client *c = ctx;
    if (!sub_current(c, d->token))
        return;
    say(c, BRIDGE_LOG_ERROR, "subscribe failed rc=%d (%s)", d->code, ptext(d->code));
    came_up(c, "connected; subscribe failed");
}

static void on_sub_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    struct bridge_client *c = ctx;
    if (!sub_current(c, d->token))
        return;
    say(c, BRIDGE_LOG_ERROR, "subscribe failed rc=%d (%s) reason=0x%02x (%s)", d->code,
        ptext(d->code), (unsigned)d->reasonCode, rctext(d->reasonCode));
    came_up(c, "connected; subscribe failed");
}

/* After every successful CONNACK, the first and each automatic reconnect. Paho does not
 * resubscribe, and with a session the broker lost (restart without persistence, expiry) we
 * would receive nothing: so subscribe every time. Receive thread. */
static void on_connected(void *ctx, char *cause)
{
    struct bridge_client *c = ctx;
    pthread_mutex_lock(&c->lock);
    enum state st = c->state;
    int sp = c->session_present, recv_max = c->server_recv_max;
    c->session_present = -1;
    c->server_recv_max = 0;
    c->sub_pending = false;
    c->sub_token = 0;
    pthread_mutex_unlock(&c->lock);

    if (st != ST_STARTED) {
        /* a reconnect that was under way when we stopped: undo it */
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        MQTTAsync_disconnect(c->h, &d);
        return;
    }
    if (sp >= 0)
        say(c, BRIDGE_LOG_INFO, "connected url=%s session_present=%s", c->url, sp ? "yes" : "no");
    if (recv_max > 0 && (unsigned)recv_max < c->o.max_inflight)
        /* Paho then holds the rest in its queue, and its send thread wakes for them only
         * when something new is queued, or once a second */
        say(c, BRIDGE_LOG_INFO,
            "server receive maximum %d < max_inflight %u: keep at most %d QoS 1 publishes "
            "outstanding (bridge_client_send_quota), or raise the broker's "
            "max_inflight_messages",
            recv_max, c->o.max_inflight, recv_max);
    if (sp < 0)
        say(c, BRIDGE_LOG_INFO, "reconnected url=%s (%s)", c->url, cause ? cause : "");

    if (c->o.n_subscriptions == 0) {
        came_up(c, "connected");
        return;
    }
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = c;
    if (c->v5) {
        ro.onSuccess5 = on_sub_ok5;
        ro.onFailure5 = on_sub_fail5;
    } else {
        ro.onSuccess = on_sub_ok3;
        ro.onFailure = on_sub_fail3;
    }
    pthread_mutex_lock(&c->lock);
    c->sub_pending = true;
    pthread_mutex_unlock(&c->lock);
    /* The SUBACK is read by this very thread, and a failed write reports token 0, so no answer
     * can be matched before the token is stored below. */
    int rc = MQTTAsync_subscribeMany(c->h, c->o.n_subscriptions, c->subs, c->sub_qos, &ro);
    pthread_mutex_lock(&c->lock);
    if (rc == MQTTASYNC_SUCCESS)
        c->sub_token = ro.token;
    else
        c->sub_pending = false;
    pthread_mutex_unlock(&c->lock);
    if (rc != MQTTASYNC_SUCCESS) {
        say(c, BRIDGE_LOG_ERROR, "subscribe refused rc=%d (%s)", rc, ptext(rc));
        came_up(c, "connected; subscribe failed");
    }
}

/* Paho always passes cause NULL; an MQTT 5 server DISCONNECT may have told us why. Receive
 * thread (socket error) or send thread (failed write). */
static void on_lost(void *ctx, char *cause)
{
    struct bridge_client *c = ctx;
    char reason[sizeof(c->disc_reason) + 32];
    pthread_mutex_lock(&c->lock);
    atomic_store(&c->up, false);
    c->sub_pending = false; /* a SUBACK for the old connection must not count */
    snprintf(reason, sizeof(reason), "connection lost%s%s", c->disc_reason[0] ? ": " : "",
             c->disc_reason[0] ? c->disc_reason : (cause ? cause : ""));
    c->disc_reason[0] = '\0';
    bool report = c->state == ST_STARTED;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    if (!report)
        return;
    say(c, BRIDGE_LOG_WARN, "%s; reconnecting every %u..%u s", reason, c->o.reconnect_min_s,
        c->o.reconnect_max_s);
    if (c->o.on_connection)
        c->o.on_connection(c->o.ctx, false, reason);
}

/* MQTT 5: the server closes with a reason (session taken over, not authorized, ...). Remember
 * it for on_lost, which follows. Receive thread. */
static void on_server_disconnect(void *ctx, MQTTProperties *props, enum MQTTReasonCodes code)
{
    struct bridge_client *c = ctx;
    MQTTProperty *p =
        props ? MQTTProperties_getProperty(props, MQTTPROPERTY_CODE_REASON_STRING) : NULL;
    char why[sizeof(c->disc_reason)];
    if (p && p->value.data.data)
        snprintf(why, sizeof(why), "server disconnect 0x%02x (%s): %.*s", (unsigned)code,
                 rctext(code), p->value.data.len, p->value.data.data);
    else
        snprintf(why, sizeof(why), "server disconnect 0x%02x (%s)", (unsigned)code, rctext(code));
    pthread_mutex_lock(&c->lock);
    memcpy(c->disc_reason, why, sizeof(why));
    pthread_mutex_unlock(&c->lock);
    say(c, BRIDGE_LOG_WARN, "%s", why);
}

/* The first CONNACK (Paho calls connect onSuccess once; on_connected follows at once). */
static void connect_ok(struct bridge_client *c, int session_present, int recv_max)
{
    pthread_mutex_lock(&c->lock);
    c->session_present = session_present ? 1 : 0;
    c->server_recv_max = recv_max;
    c->send_quota = recv_max;
    pthread_mutex_unlock(&c->lock);
}

static void on_connect_ok3(void *ctx, MQTTAsync_successData *d)
{
    connect_ok(ctx, d->alt.connect.sessionPresent, 0);
}

static void on_connect_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    int recv_max = 0;
    if (MQTTProperties_hasProperty(&d->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
        recv_max =
            MQTTProperties_getNumericValue(&d->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    connect_ok(ctx, d->alt.connect.sessionPresent, recv_max);
}

/* The first connect failed (Paho reports only that one; the retries that follow are silent).
 * Receive thread (CONNACK refused) or send thread (TCP/TLS failure, timeout). */
static void connect_failed(struct bridge_client *c, int code, int reason, const char *msg)
{
    /* A refused CONNACK comes as a positive code: the 3.1.1 return code, or the MQTT 5 reason
     * code (Paho leaves reasonCode 0 then). */
    static const char *const v3[] = {"",
                                     "unacceptable protocol version",
                                     "identifier rejected",
                                     "server unavailable",
                                     "bad user name or password",
                                     "not authorized"};
    if (atomic_load(&c->destroying))
        return;
    pthread_mutex_lock(&c->lock);
    bool report = c->state == ST_STARTED;
    pthread_mutex_unlock(&c->lock);
    if (!report)
        return;
    if (code > 0 && !reason && c->v5)
        reason = code;
    char why[256];
    if (reason)
        snprintf(why, sizeof(why), "connect refused reason=0x%02x (%s)", (unsigned)reason,
                 rctext(reason));
    else if (code > 0)
        snprintf(why, sizeof(why), "connect refused rc=%d (%s)", code,
                 code < (int)(sizeof(v3) / sizeof(v3[0])) ? v3[code] : "unknown");
    else
        snprintf(why, sizeof(why), "connect failed rc=%d (%s)%s%s", code, ptext(code),
                 msg ? ": " : "", msg ? msg : "");
    say(c, BRIDGE_LOG_ERROR, "%s url=%s; retrying every %u..%u s", why, c->url,
        c->o.reconnect_min_s, c->o.reconnect_max_s);
    if (c->o.on_connection)
        c->o.on_connection(c->o.ctx, false, why);
}

static void on_connect_fail3(void *ctx, MQTTAsync_failureData *d)
{
    connect_failed(ctx, d ? d->code : MQTTASYNC_FAILURE, 0, d ? d->message : NULL);
}

static void on_connect_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    connect_failed(ctx, d ? d->code : MQTTASYNC_FAILURE, d ? (int)d->reasonCode : 0,
                   d ? d->message : NULL);
}

/* OpenSSL's error queue during a TLS handshake (bad CA, host name mismatch, ...). Send or
 * receive thread. */
static int on_tls_error(const char *str, size_t len, void *u)
{
    struct bridge_client *c = u;
    while (len > 0 && (str[len - 1] == '\n' || str[len - 1] == '\r'))
        len--;
    say(c, BRIDGE_LOG_ERROR, "tls: %.*s", (int)(len > 400 ? 400 : len), str);
    return 1; /* keep printing the queue */
}

/* ---------------------------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------------------------ */

/* Receive thread. The QoS 1 PUBACK goes out when this returns, whatever it returns (returning
 * 0 would only make Paho redeliver from memory), so always 1. */
static int on_arrived(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
    struct bridge_client *c = ctx;
    if (c->o.on_message) {
        struct bridge_msg m;
        memset(&m, 0, sizeof(m));
        m.topic = topic;
        m.topic_len = topic_len > 0 ? (size_t)topic_len : strlen(topic); /* 0: NUL-terminated */
        m.payload = msg->payload;
        m.len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
        m.qos = msg->qos;
        m.retained = msg->retained != 0;
        m.dup = msg->dup != 0;
        if (c->v5 && msg->struct_version >= 1 && msg->properties.count > 0) {
            MQTTProperty *p;
            p = MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
            if (p && p->value.data.data) {
                m.response_topic = p->value.data.data;
                m.response_topic_len = (size_t)p->value.data.len;
            }
            p = MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_CORRELATION_DATA);
            if (p && p->value.data.data) {
                m.correlation = p->value.data.data;
                m.correlation_len = (size_t)p->value.data.len;
            }
        }
        c->o.on_message(c->o.ctx, &m);
    }
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------ */

void bridge_options_init(struct bridge_options *o)
{
    memset(o, 0, sizeof(*o));
    o->mqtt_version = 5;
    o->clean_start = false;
    o->session_expiry_s = 86400;
    o->keepalive_s = 30;
    o->reconnect_min_s = 1;
    o->reconnect_max_s = 30;
    o->connect_timeout_s = 10;
    o->max_inflight = 64;
    o->sub_qos = 1;
    o->tls.verify = true;
}

static const struct {
    const char *given, *paho;
    bool tls;
} schemes[] = {
    {"tcp://", "tcp://", false},
    {"mqtt://", "tcp://", false},
    {"ssl://", "ssl://", true},
    {"mqtts://", "ssl://", true},
};

/* Sets *out to the URL Paho understands (mqtts:// and mqtt:// mapped). Returns 0, -EINVAL or
 * -ENOMEM (err set). */
static int url_map(const char *url, char **out, bool *tls, char *err)
{
    if (!url) {
        bridge__seterr(err, "no broker URL");
        return -EINVAL;
    }
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        size_t gl = strlen(schemes[i].given);
        if (strncasecmp(url, schemes[i].given, gl) != 0)
            continue;
        const char *rest = url + gl;
        if (!*rest || strchr(rest, ' ') || strchr(rest, '/')) {
            bridge__seterr(err, "broker URL \"%s\": expected %shost:port", url, schemes[i].given);
            return -EINVAL;
        }
        size_t pl = strlen(schemes[i].paho), rl = strlen(rest);
        if (!(*out = malloc(pl + rl + 1))) {
            bridge__seterr(err, "out of memory");
            return -ENOMEM;
        }
        memcpy(*out, schemes[i].paho, pl);
        memcpy(*out + pl, rest, rl + 1);
        *tls = schemes[i].tls;
        return 0;
    }
    bridge__seterr(err, "broker URL \"%s\": scheme must be tcp://, mqtt://, ssl:// or mqtts://",
                   url);
    return -EINVAL;
}

static bool str_ok(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    return n <= max && bridge__utf8_valid(s, n);
}

static bool topic_ok(const char *t)
{
    return bridge_topic_publishable(t, strnlen(t, BRIDGE_TOPIC_MAX + 1));
}

static int file_ok(const char *what, const char *path, char *err)
{
    if (path && access(path, R_OK) != 0) {
        bridge__seterr(err, "%s: cannot read \"%s\": %s", what, path, strerror(errno));
        return -EINVAL;
    }
    return 0;
}

/* Everything Paho would refuse later (or worse, accept), refused now with a reason. */
static int options_check(const struct bridge_options *o, bool tls, char *err)
{
    int rc;
    if (!o->client_id || !*o->client_id || !str_ok(o->client_id, 65535)) {
        bridge__seterr(err, "client id: must be 1..65535 bytes of UTF-8");
        return -EINVAL;
    }
    if ((o->username && !str_ok(o->username, 65535)) ||
        (o->password && !str_ok(o->password, 65535))) {
        bridge__seterr(err, "username/password: must be UTF-8 of at most 65535 bytes");
        return -EINVAL;
    }
    if (o->mqtt_version != 4 && o->mqtt_version != 5) {
        bridge__seterr(err, "mqtt_version: %d (must be 4 for 3.1.1, or 5)", o->mqtt_version);
        return -EINVAL;
    }
    if (o->keepalive_s > 65535 || o->connect_timeout_s == 0 || o->connect_timeout_s > 3600) {
        bridge__seterr(err, "keepalive_s must be 0..65535 and connect_timeout_s 1..3600");
        return -EINVAL;
    }
    if (o->reconnect_min_s == 0 || o->reconnect_max_s < o->reconnect_min_s ||
        o->reconnect_max_s > 86400) {
        bridge__seterr(err, "reconnect: need 1 <= reconnect_min_s <= reconnect_max_s <= 86400");
        return -EINVAL;
    }
    if (o->max_inflight == 0 || o->max_inflight > 65535) {
        bridge__seterr(err, "max_inflight: must be 1..65535");
        return -EINVAL;
    }
    if (o->will_topic && (!topic_ok(o->will_topic) || o->will_qos < 0 || o->will_qos > 2 ||
                          o->will_len > 65535 || (o->will_len && !o->will_payload))) {
        bridge__seterr(err, "will: bad topic, qos or payload (at most 65535 bytes)");
        return -EINVAL;
    }
    if (o->birth_topic && (!topic_ok(o->birth_topic) || o->birth_qos < 0 || o->birth_qos > 2 ||
                           o->birth_len > INT_MAX || (o->birth_len && !o->birth_payload))) {
        bridge__seterr(err, "birth: bad topic, qos or payload");
        return -EINVAL;
    }
    if (o->n_subscriptions < 0 || (o->n_subscriptions > 0 && !o->subscriptions) || o->sub_qos < 0 ||
        o->sub_qos > 2) {
        bridge__seterr(err, "subscriptions: bad count, list or qos");
        return -EINVAL;
    }
    for (int i = 0; i < o->n_subscriptions; i++) {
        const char *f = o->subscriptions[i];
        if (!f || !bridge__filter_valid(f, strnlen(f, 65536))) {
            bridge__seterr(err, "subscription %d: \"%s\" is not a valid filter", i,
                           f ? f : "(null)");
            return -EINVAL;
        }
    }
    if (!tls && (o->tls.ca || o->tls.cert || o->tls.key)) {
        /* refuse rather than silently send credentials in the clear */
        bridge__seterr(err, "TLS files given but the broker URL is not ssl:// or mqtts://");
        return -EINVAL;
    }
    if (!o->tls.cert != !o->tls.key) {
        bridge__seterr(err, "tls: a client certificate needs its key, and a key its certificate");
        return -EINVAL;
    }
    if ((rc = file_ok("tls.ca", o->tls.ca, err)) < 0 ||
        (rc = file_ok("tls.cert", o->tls.cert, err)) < 0 ||
        (rc = file_ok("tls.key", o->tls.key, err)) < 0)
        return rc;
    return 0;
}

static void client_release(struct bridge_client *c)
{
    free(c->url);
    free((void *)c->o.client_id);
    free((void *)c->o.username);
    free((void *)c->o.password);
    free((void *)c->o.will_topic);
    free((void *)c->o.will_payload);
    free((void *)c->o.birth_topic);
    free((void *)c->o.birth_payload);
    free((void *)c->o.tls.ca);
    free((void *)c->o.tls.cert);
    free((void *)c->o.tls.key);
    if (c->subs)
        for (int i = 0; i < c->o.n_subscriptions; i++)
            free(c->subs[i]);
    free(c->subs);
    free(c->sub_qos);
    MQTTProperties_free(&c->connect_props);
    rec_free_all(c->busy);
    rec_free_all(c->free_recs);
    rec_free_all(c->retired);
    free(c);
}

/* Takes owned copies of every string and payload in o. */
static int options_copy(struct bridge_client *c, const struct bridge_options *o)
{
    c->o = *o;
    c->o.client_id = c->o.username = c->o.password = NULL;
    c->o.will_topic = c->o.birth_topic = NULL;
    c->o.will_payload = c->o.birth_payload = NULL;
    c->o.tls.ca = c->o.tls.cert = c->o.tls.key = NULL;
    c->o.subscriptions = NULL;
    c->o.n_subscriptions = 0;

    if (!(c->o.client_id = dup_str(o->client_id)) ||
        (o->username && !(c->o.username = dup_str(o->username))) ||
        (o->password && !(c->o.password = dup_str(o->password))) ||
        (o->tls.ca && !(c->o.tls.ca = dup_str(o->tls.ca))) ||
        (o->tls.cert && !(c->o.tls.cert = dup_str(o->tls.cert))) ||
        (o->tls.key && !(c->o.tls.key = dup_str(o->tls.key))))
        return -ENOMEM;
    if (o->will_topic && (!(c->o.will_topic = dup_str(o->will_topic)) ||
                          !(c->o.will_payload = dup_mem(o->will_payload, o->will_len))))
        return -ENOMEM;
    if (o->birth_topic && (!(c->o.birth_topic = dup_str(o->birth_topic)) ||
                           !(c->o.birth_payload = dup_mem(o->birth_payload, o->birth_len))))
        return -ENOMEM;
    if (o->n_subscriptions > 0) {
        c->subs = calloc((size_t)o->n_subscriptions, sizeof(char *));
        c->sub_qos = calloc((size_t)o->n_subscriptions, sizeof(int));
        if (!c->subs || !c->sub_qos)
            return -ENOMEM;
        for (int i = 0; i < o->n_subscriptions; i++) {
            if (!(c->subs[i] = strdup(o->subscriptions[i])))
                return -ENOMEM;
            c->o.n_subscriptions = i + 1; /* what client_release frees */
            c->sub_qos[i] = o->sub_qos;
        }
        c->o.subscriptions = (const char *const *)c->subs;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Lifecycle
 * ------------------------------------------------------------------------------------------ */

int bridge_client_new(struct bridge_client **out, const struct bridge_options *o, char *err)
{
    int rc;
    bool tls = false;
    if (!out || !o) {
        bridge__seterr(err, "no options");
        return -EINVAL;
    }
    *out = NULL;
    struct bridge_client *c = calloc(1, sizeof(*c));
    if (!c) {
        bridge__seterr(err, "out of memory");
        return -ENOMEM;
    }
    c->connect_props = (MQTTProperties)MQTTProperties_initializer;
    if ((rc = url_map(o->url, &c->url, &tls, err)) < 0)
        goto fail_copy;
    if ((rc = options_check(o, tls, err)) < 0)
        goto fail_copy;
    if ((rc = options_copy(c, o)) < 0) {
        bridge__seterr(err, "out of memory");
        goto fail_copy;
    }
    c->v5 = o->mqtt_version == 5;
    c->tls = tls;
    c->session_present = -1;
    atomic_init(&c->up, false);
    atomic_init(&c->destroying, false);

    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        bridge__seterr(err, "out of memory");
        rc = -ENOMEM;
        goto fail_copy;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    rc = pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        bridge__seterr(err, "cannot create a condition variable");
        rc = -ENOMEM;
        goto fail_copy;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        bridge__seterr(err, "cannot create a mutex");
        rc = -ENOMEM;
        goto fail_mutex;
    }

    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = c->v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    co.sendWhileDisconnected = 0;
    co.maxBufferedMessages = PAHO_QUEUE_MAX;
    co.deleteOldestMessages = 0; /* a full queue refuses the new publish, never drops one */
    int prc = MQTTAsync_createWithOptions(&c->h, c->url, c->o.client_id,
                                          MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (prc != MQTTASYNC_SUCCESS) {
        bridge__seterr(err, "MQTTAsync_createWithOptions(%s): rc=%d (%s)", c->url, prc, ptext(prc));
        rc = prc == MQTTASYNC_BAD_UTF8_STRING ? -EINVAL : -EIO;
        goto fail_create;
    }
    if ((prc = MQTTAsync_setCallbacks(c->h, c, on_lost, on_arrived, NULL)) != MQTTASYNC_SUCCESS ||
        (prc = MQTTAsync_setConnected(c->h, c, on_connected)) != MQTTASYNC_SUCCESS ||
        (prc = MQTTAsync_setDisconnected(c->h, c, on_server_disconnect)) != MQTTASYNC_SUCCESS) {
        bridge__seterr(err, "MQTTAsync_setCallbacks: rc=%d (%s)", prc, ptext(prc));
        rc = -EIO;
        goto fail_callbacks;
    }
    *out = c;
    return 0;

fail_callbacks:
    MQTTAsync_destroy(&c->h);
fail_create:
    pthread_mutex_destroy(&c->lock);
fail_mutex:
    pthread_cond_destroy(&c->cond);
fail_copy:
    client_release(c);
    return rc;
}

/* Fills the Paho connect options from ours; they point into c, which outlives them. */
static int connect_options(struct bridge_client *c, MQTTAsync_connectOptions *co, char *err)
{
    const struct bridge_options *o = &c->o;
    if (c->v5) {
        *co = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer5;
        co->cleansession = 0; /* must be 0 with MQTT 5 */
        co->cleanstart = o->clean_start;
        co->onSuccess5 = on_connect_ok5;
        co->onFailure5 = on_connect_fail5;
        MQTTProperties_free(&c->connect_props);
        MQTTProperty p;
        int prc = 0;
        if (!o->clean_start && o->session_expiry_s) {
            /* without it an MQTT 5 session ends with the connection */
            memset(&p, 0, sizeof(p));
            p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
            p.value.integer4 = o->session_expiry_s;
            prc |= MQTTProperties_add(&c->connect_props, &p);
        }
        memset(&p, 0, sizeof(p));
        p.identifier = MQTTPROPERTY_CODE_RECEIVE_MAXIMUM;
        p.value.integer2 = (unsigned short)o->max_inflight;
        prc |= MQTTProperties_add(&c->connect_props, &p);
        if (prc) {
            bridge__seterr(err, "cannot build the CONNECT properties");
            return -ENOMEM;
        }
        co->connectProperties = &c->connect_props;
    } else {
        *co = (MQTTAsync_connectOptions)MQTTAsync_connectOptions_initializer;
        co->MQTTVersion = MQTTVERSION_3_1_1;
        co->cleansession = o->clean_start;
        co->onSuccess = on_connect_ok3;
        co->onFailure = on_connect_fail3;
    }
    co->context = c;
    co->keepAliveInterval = (int)o->keepalive_s;
    co->connectTimeout = (int)o->connect_timeout_s;
    co->maxInflight = (int)o->max_inflight;
    co->retryInterval = 0; /* MQTT 3.1.1+: resend only after a reconnect */
    co->automaticReconnect = 1;
    co->minRetryInterval = (int)o->reconnect_min_s;
    co->maxRetryInterval = (int)o->reconnect_max_s;
    co->username = o->username;
    co->password = o->password;
    if (o->will_topic) {
        c->will = (MQTTAsync_willOptions)MQTTAsync_willOptions_initializer;
        c->will.topicName = o->will_topic;
        c->will.message = NULL; /* binary payload below */
        c->will.payload.data = o->will_payload;
        c->will.payload.len = (int)o->will_len;
        c->will.retained = o->will_retained;
        c->will.qos = o->will_qos;
        co->will = &c->will;
    }
    if (c->tls) {
        /* struct_version 5 (1.3.12's latest) has verify (v2), ssl_error_cb (v3) and
         * disableDefaultTrustStore (v4). With a trustStore Paho loads only that file; the flag
         * keeps it that way should that change. */
        c->ssl = (MQTTAsync_SSLOptions)MQTTAsync_SSLOptions_initializer;
        c->ssl.trustStore = o->tls.ca;
        c->ssl.keyStore = o->tls.cert;
        c->ssl.privateKey = o->tls.key;
        c->ssl.enableServerCertAuth = o->tls.verify;
        c->ssl.verify = o->tls.verify;
        c->ssl.disableDefaultTrustStore = o->tls.ca != NULL;
        c->ssl.ssl_error_cb = on_tls_error;
        c->ssl.ssl_error_context = c;
        co->ssl = &c->ssl;
    }
    return 0;
}

int bridge_client_start(struct bridge_client *c, char *err)
{
    if (!c) {
        bridge__seterr(err, "no client");
        return -EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    if (c->state != ST_NEW) {
        pthread_mutex_unlock(&c->lock);
        bridge__seterr(err, "client already started (or stopped)");
        return -EINVAL;
    }
    c->state = ST_STARTED;
    pthread_mutex_unlock(&c->lock);

    MQTTAsync_connectOptions co;
    int rc = connect_options(c, &co, err);
    int prc = rc < 0 ? MQTTASYNC_FAILURE : MQTTAsync_connect(c->h, &co);
    if (prc != MQTTASYNC_SUCCESS) {
        pthread_mutex_lock(&c->lock);
        c->state = ST_NEW;
        pthread_mutex_unlock(&c->lock);
        if (rc == 0)
            bridge__seterr(err, "MQTTAsync_connect(%s): rc=%d (%s)", c->url, prc, ptext(prc));
        return -EIO;
    }
    say(c, BRIDGE_LOG_INFO, "connecting url=%s client_id=%s mqtt=%s session=%s", c->url,
        c->o.client_id, c->v5 ? "5" : "3.1.1", c->o.clean_start ? "clean" : "persistent");
    if (c->tls && !c->o.tls.verify)
        say(c, BRIDGE_LOG_WARN, "TLS server certificate and host name are NOT verified");
    return 0;
}

int bridge_client_wait_connected(struct bridge_client *c, unsigned timeout_ms)
{
    if (!c)
        return -EINVAL;
    struct timespec deadline;
    deadline_after(&deadline, timeout_ms);
    pthread_mutex_lock(&c->lock);
    while (!is_up(c) && wait_until(c, &deadline))
        ;
    bool up = is_up(c);
    pthread_mutex_unlock(&c->lock);
    return up ? 0 : -ETIMEDOUT;
}

bool bridge_client_connected(struct bridge_client *c)
{
    return c && is_up(c);
}

unsigned bridge_client_send_quota(struct bridge_client *c)
{
    pthread_mutex_lock(&c->lock);
    int q = c->send_quota;
    pthread_mutex_unlock(&c->lock);
    return q > 0 ? (unsigned)q : 0;
}

int bridge_client_publish(struct bridge_client *c, const char *topic, const void *payload,
                          size_t len, int qos, bool retained, const struct bridge_pub_props *props,
                          bridge_publish_cb done, void *done_ctx)
{
    if (!c || !topic || !topic_ok(topic) || qos < 0 || qos > 2 || len > INT_MAX ||
        (len && !payload))
        return -EINVAL;
    if (props && ((props->correlation && props->correlation_len > 65535) ||
                  (props->response_topic && !topic_ok(props->response_topic)) ||
                  (props->content_type && !str_ok(props->content_type, 65535))))
        return -EINVAL;
    return submit(c, false, topic, payload, len, qos, retained, props, done, done_ctx);
}

/* ---------------------------------------------------------------------------------------------
 * Stop
 * ------------------------------------------------------------------------------------------ */

static void on_final_done(void *ctx, int status)
{
    struct bridge_client *c = ctx;
    pthread_mutex_lock(&c->lock);
    c->final_pending = false;
    c->final_status = status;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void disc_done(struct bridge_client *c)
{
    pthread_mutex_lock(&c->lock);
    c->disc_pending = false;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void on_disc_ok3(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    disc_done(ctx);
}

static void on_disc_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    (void)d;
    disc_done(ctx);
}

static void on_disc_fail3(void *ctx, MQTTAsync_failureData *d)
{
    (void)d;
    disc_done(ctx);
}

static void on_disc_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    (void)d;
    disc_done(ctx);
}

/* Publishes the final message and waits for it. Caller's thread, state ST_STOPPING. */
static int send_final(struct bridge_client *c, const struct bridge_final *f, bool was_up,
                      const struct timespec *deadline)
{
    if (!f->topic || !topic_ok(f->topic) || f->qos < 0 || f->qos > 2 || f->len > INT_MAX ||
        (f->len && !f->payload))
        return -EINVAL;
    if (!was_up) {
        say(c, BRIDGE_LOG_WARN, "not connected: final message not sent topic=%s", f->topic);
        return -ENOTCONN;
    }
    pthread_mutex_lock(&c->lock);
    c->final_pending = true;
    c->final_status = 0;
    pthread_mutex_unlock(&c->lock);
    int rc =
        submit(c, true, f->topic, f->payload, f->len, f->qos, f->retained, NULL, on_final_done, c);
    pthread_mutex_lock(&c->lock);
    if (rc == 0) {
        while (c->final_pending && wait_until(c, deadline))
            ;
        rc = c->final_pending ? -ETIMEDOUT : c->final_status;
    }
    c->final_pending = false;
    pthread_mutex_unlock(&c->lock);
    if (rc < 0)
        say(c, BRIDGE_LOG_WARN, "final message not confirmed topic=%s err=%d", f->topic, rc);
    return rc;
}

/* A clean DISCONNECT (the broker discards the will), waiting for it to complete. Paho waits up
 * to `ms` for its own QoS 1 flows first. When publishes are still outstanding (the broker does
 * not acknowledge), Paho 1.3.12 queues the DISCONNECT behind them: it then completes only in
 * MQTTAsync_destroy (bridge_client_free), which still sends a DISCONNECT before closing, so
 * the will stays back either way. Caller's thread. */
static void disconnect(struct bridge_client *c, unsigned ms)
{
    pthread_mutex_lock(&c->lock);
    size_t stuck = c->outstanding;
    pthread_mutex_unlock(&c->lock);
    if (stuck)
        ms = 0;
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    if (c->v5) {
        d = (MQTTAsync_disconnectOptions)MQTTAsync_disconnectOptions_initializer5;
        d.onSuccess5 = on_disc_ok5;
        d.onFailure5 = on_disc_fail5;
    } else {
        d.onSuccess = on_disc_ok3;
        d.onFailure = on_disc_fail3;
    }
    d.timeout = ms > INT_MAX ? INT_MAX : (int)ms;
    d.context = c;
    pthread_mutex_lock(&c->lock);
    c->disc_pending = true;
    pthread_mutex_unlock(&c->lock);
    int rc = MQTTAsync_disconnect(c->h, &d);
    if (rc != MQTTASYNC_SUCCESS) {
        pthread_mutex_lock(&c->lock);
        c->disc_pending = false;
        pthread_mutex_unlock(&c->lock);
        /* DISCONNECTED: between connections; Paho stops reconnecting, and on_connected undoes
         * a connect that was already under way */
        if (rc != MQTTASYNC_DISCONNECTED)
            say(c, BRIDGE_LOG_WARN, "disconnect refused rc=%d (%s)", rc, ptext(rc));
        return;
    }
    struct timespec deadline;
    unsigned wait = stuck                                 ? DISCONNECT_STUCK_MS
                    : ms > UINT_MAX - DISCONNECT_GRACE_MS ? UINT_MAX
                                                          : ms + DISCONNECT_GRACE_MS;
    deadline_after(&deadline, wait);
    pthread_mutex_lock(&c->lock);
    while (c->disc_pending && wait_until(c, &deadline))
        ;
    bool late = c->disc_pending;
    pthread_mutex_unlock(&c->lock);
    if (!late)
        say(c, BRIDGE_LOG_INFO, "disconnected url=%s", c->url);
    else if (stuck)
        say(c, BRIDGE_LOG_WARN,
            "disconnect queued behind %zu unacknowledged publishes: the connection closes "
            "at free",
            stuck);
    else
        say(c, BRIDGE_LOG_WARN, "disconnect did not complete in %u ms", wait);
}

int bridge_client_stop(struct bridge_client *c, const struct bridge_final *final,
                       unsigned timeout_ms)
{
    if (!c)
        return -EINVAL;
    struct timespec deadline;
    deadline_after(&deadline, timeout_ms);
    pthread_mutex_lock(&c->lock);
    if (c->state == ST_STOPPING || c->state == ST_STOPPED) {
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    bool started = c->state == ST_STARTED;
    bool was_up = is_up(c);
    c->state = ST_STOPPING; /* from here on only the final message is accepted */
    atomic_store(&c->up, false);
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);

    int rc = final && !started ? -ENOTCONN : 0;
    if (started) {
        if (final)
            rc = send_final(c, final, was_up, &deadline);
        /* let what is in flight finish, then disconnect with what time is left */
        pthread_mutex_lock(&c->lock);
        while (c->outstanding > 0 && was_up && wait_until(c, &deadline))
            ;
        pthread_mutex_unlock(&c->lock);
        disconnect(c, ms_left(&deadline));
    }

    pthread_mutex_lock(&c->lock);
    while (c->submitting > 0) /* a publish racing with us: Paho answers it promptly */
        pthread_cond_wait(&c->cond, &c->lock);
    c->state = ST_STOPPED;
    pthread_mutex_unlock(&c->lock);
    cancel_all(c);
    return rc;
}

void bridge_client_free(struct bridge_client *c)
{
    if (!c)
        return;
    bridge_client_stop(c, NULL, 0);
    atomic_store(&c->destroying, true);
    MQTTAsync_destroy(&c->h); /* after this, Paho calls nothing of ours */
    cancel_all(c);            /* nothing left after stop; kept for clarity of the contract */
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    client_release(c);
}
