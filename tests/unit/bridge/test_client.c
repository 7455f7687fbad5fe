/* tests/unit/bridge/test_client.c: bridge/client.c against a real mosquitto on 127.0.0.1:
 * MQTT 5 and 3.1.1 connects, QoS 0/1 in and out, done callbacks exactly once, retained birth,
 * broker restart (reconnect, resubscribe, birth again), the will of a vanished client, MQTT 5
 * request/response properties, stop with a final message, cancellation at stop and free,
 * refused topics and options. Usage: test_client /path/to/mosquitto
 * (and, internally, test_client --will-child PORT VERSION TOPIC PAYLOAD).
 */
#include "bridge.h"
#include "mosq.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct mosq broker;
static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* A failed precondition: stop here (the atexit handler kills the broker). */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond);             \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* ---------------------------------------------------------------------------------------------
 * A box: what one client's callbacks saw (they run on Paho's threads)
 * ------------------------------------------------------------------------------------------ */

#define MAXMSG 1024

struct rx {
    char topic[128];
    char payload[64];
    size_t len;
    int qos;
    bool retained;
    bool has_rt, has_corr;
    char rt[64];
    unsigned char corr[32];
    size_t corr_len;
};

struct box {
    const char *name;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ups, downs;
    char reason[256]; /* of the last on_connection */
    struct rx msgs[MAXMSG];
    int n;
};

static void box_init(struct box *b, const char *name)
{
    memset(b, 0, sizeof(*b));
    b->name = name;
    pthread_mutex_init(&b->mu, NULL);
    cond_init(&b->cv);
}

static void box_cleanup(struct box *b)
{
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
}

static void on_message(void *ctx, const struct bridge_msg *m)
{
    struct box *b = ctx;
    pthread_mutex_lock(&b->mu);
    if (b->n < MAXMSG) {
        struct rx *r = &b->msgs[b->n];
        memset(r, 0, sizeof(*r));
        snprintf(r->topic, sizeof(r->topic), "%.*s", (int)m->topic_len, m->topic);
        r->len = m->len;
        memcpy(r->payload, m->payload,
               m->len < sizeof(r->payload) - 1 ? m->len : sizeof(r->payload) - 1);
        r->qos = m->qos;
        r->retained = m->retained;
        if (m->response_topic) {
            r->has_rt = true;
            snprintf(r->rt, sizeof(r->rt), "%.*s", (int)m->response_topic_len, m->response_topic);
        }
        if (m->correlation) {
            r->has_corr = true;
            r->corr_len = m->correlation_len;
            memcpy(r->corr, m->correlation,
                   m->correlation_len < sizeof(r->corr) ? m->correlation_len : sizeof(r->corr));
        }
        b->n++;
    }
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void on_connection(void *ctx, bool up, const char *reason)
{
    struct box *b = ctx;
    pthread_mutex_lock(&b->mu);
    if (up)
        b->ups++;
    else
        b->downs++;
    snprintf(b->reason, sizeof(b->reason), "%s", reason ? reason : "");
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void on_log(void *ctx, enum bridge_log_level lv, const char *msg)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    struct box *b = ctx;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (lv <= BRIDGE_LOG_INFO)
        fprintf(stderr, "  %5lld.%03ld [%s] %s: %s\n", (long long)now.tv_sec % 100000,
                now.tv_nsec / 1000000, b->name, names[lv], msg);
}

/* Messages on `topic` (with `payload`, unless NULL). b->mu held. */
static int count_locked(struct box *b, const char *topic, const char *payload)
{
    int n = 0;
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->msgs[i].topic, topic) == 0 &&
            (!payload || (b->msgs[i].len == strlen(payload) &&
                          memcmp(b->msgs[i].payload, payload, b->msgs[i].len) == 0)))
            n++;
    return n;
}

static int count(struct box *b, const char *topic, const char *payload)
{
    pthread_mutex_lock(&b->mu);
    int n = count_locked(b, topic, payload);
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* Waits until at least `want` such messages arrived; returns how many did. */
static int wait_msgs(struct box *b, const char *topic, const char *payload, int want, int ms)
{
    struct timespec dl;
    deadline_in(&dl, ms);
    pthread_mutex_lock(&b->mu);
    while (count_locked(b, topic, payload) < want &&
           pthread_cond_timedwait(&b->cv, &b->mu, &dl) != ETIMEDOUT)
        ;
    int n = count_locked(b, topic, payload);
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* The last message on `topic`, copied into *out; false when none. */
static bool last_msg(struct box *b, const char *topic, struct rx *out)
{
    bool found = false;
    pthread_mutex_lock(&b->mu);
    for (int i = b->n - 1; i >= 0 && !found; i--)
        if (strcmp(b->msgs[i].topic, topic) == 0) {
            *out = b->msgs[i];
            found = true;
        }
    pthread_mutex_unlock(&b->mu);
    return found;
}

static int wait_count(struct box *b, const int *field, int want, int ms)
{
    struct timespec dl;
    deadline_in(&dl, ms);
    pthread_mutex_lock(&b->mu);
    while (*field < want && pthread_cond_timedwait(&b->cv, &b->mu, &dl) != ETIMEDOUT)
        ;
    int n = *field;
    pthread_mutex_unlock(&b->mu);
    return n;
}

static int ups(struct box *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->ups;
    pthread_mutex_unlock(&b->mu);
    return n;
}

static int downs(struct box *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->downs;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * Publish completions: each slot must see exactly one call
 * ------------------------------------------------------------------------------------------ */

#define MAXSLOT 512

struct tracker;
struct slot {
    struct tracker *t;
    int calls;
    int status;
};

struct tracker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int total;
    struct slot s[MAXSLOT];
};

static void tracker_init(struct tracker *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    cond_init(&t->cv);
    for (int i = 0; i < MAXSLOT; i++)
        t->s[i].t = t;
}

static void tracker_cleanup(struct tracker *t)
{
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
}

static void on_done(void *ctx, int status)
{
    struct slot *s = ctx;
    pthread_mutex_lock(&s->t->mu);
    s->calls++;
    s->status = status;
    s->t->total++;
    pthread_cond_broadcast(&s->t->cv);
    pthread_mutex_unlock(&s->t->mu);
}

static int wait_done(struct tracker *t, int want, int ms)
{
    struct timespec dl;
    deadline_in(&dl, ms);
    pthread_mutex_lock(&t->mu);
    while (t->total < want && pthread_cond_timedwait(&t->cv, &t->mu, &dl) != ETIMEDOUT)
        ;
    int n = t->total;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Slots [0, n) each called exactly once with `status`. */
static void check_slots(struct tracker *t, int n, int status, const char *what)
{
    pthread_mutex_lock(&t->mu);
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (t->s[i].calls != 1 || t->s[i].status != status) {
            if (bad++ < 5)
                fprintf(stderr, "  %s: slot %d calls=%d status=%d (want 1, %d)\n", what, i,
                        t->s[i].calls, t->s[i].status, status);
        }
    for (int i = n; i < MAXSLOT; i++)
        if (t->s[i].calls)
            bad++;
    pthread_mutex_unlock(&t->mu);
    CHECK(bad == 0, "%s: %d slots not called exactly once with %d", what, bad, status);
}

/* ---------------------------------------------------------------------------------------------
 * Clients
 * ------------------------------------------------------------------------------------------ */

static char url[64];

static void opts(struct bridge_options *o, struct box *b, const char *id, int version)
{
    bridge_options_init(o);
    o->url = url;
    o->client_id = id;
    o->mqtt_version = version;
    o->reconnect_min_s = 1;
    o->reconnect_max_s = 2;
    o->connect_timeout_s = 5;
    o->on_message = on_message;
    o->on_connection = on_connection;
    o->on_log = on_log;
    o->ctx = b;
}

static struct bridge_client *start(const struct bridge_options *o)
{
    struct bridge_client *c;
    char err[BRIDGE_ERR_LEN] = "";
    int rc = bridge_client_new(&c, o, err);
    REQUIRE(rc == 0, "bridge_client_new(%s): %d %s", o->client_id, rc, err);
    rc = bridge_client_start(c, err);
    REQUIRE(rc == 0, "bridge_client_start(%s): %d %s", o->client_id, rc, err);
    return c;
}

/* A client subscribed to one filter, up. */
static struct bridge_client *observer(struct box *b, const char *id, const char *filter)
{
    static const char *subs[1];
    struct bridge_options o;
    opts(&o, b, id, 5);
    subs[0] = filter;
    o.subscriptions = subs;
    o.n_subscriptions = 1;
    struct bridge_client *c = start(&o);
    REQUIRE(bridge_client_wait_connected(c, 10000) == 0, "%s not connected", id);
    REQUIRE(wait_count(b, &b->ups, 1, 5000) == 1, "%s: no on_connection(true)", id);
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------------------------ */

static void test_options(void)
{
    struct box b;
    box_init(&b, "options");
    struct bridge_options o;
    struct bridge_client *c = NULL;
    char err[BRIDGE_ERR_LEN];
    static const char *bad_filter[] = {"a/#/b"};
    static const char *good_filter[] = {"a/+/b"};

    /* each refused with -EINVAL and a reason, leaving *out NULL */
#define REFUSE(label, stmt)                                                                        \
    do {                                                                                           \
        opts(&o, &b, "opt", 5);                                                                    \
        stmt;                                                                                      \
        err[0] = '\0';                                                                             \
        c = (struct bridge_client *)&o;                                                            \
        int rc_ = bridge_client_new(&c, &o, err);                                                  \
        CHECK(rc_ == -EINVAL && c == NULL && err[0], "%s: rc=%d err=%s", label, rc_, err);         \
        if (rc_ == 0)                                                                              \
            bridge_client_free(c);                                                                 \
    } while (0)

    REFUSE("no url", o.url = NULL);
    REFUSE("ws scheme", o.url = "ws://127.0.0.1:1");
    REFUSE("no scheme", o.url = "127.0.0.1:1883");
    REFUSE("empty host", o.url = "tcp://");
    REFUSE("mqtt 3", o.mqtt_version = 3);
    REFUSE("mqtt 0", o.mqtt_version = 0);
    REFUSE("no client id", o.client_id = NULL);
    REFUSE("empty client id", o.client_id = "");
    REFUSE("bad utf-8 client id", o.client_id = "\xff");
    REFUSE("bad filter", (o.subscriptions = bad_filter, o.n_subscriptions = 1));
    REFUSE("NULL subscriptions", (o.subscriptions = NULL, o.n_subscriptions = 1));
    REFUSE("sub qos 3", (o.subscriptions = good_filter, o.n_subscriptions = 1, o.sub_qos = 3));
    REFUSE("will wildcard", (o.will_topic = "a/+", o.will_payload = "x", o.will_len = 1));
    REFUSE("will qos", (o.will_topic = "a", o.will_qos = 5));
    REFUSE("birth wildcard", o.birth_topic = "a/#");
    REFUSE("tls over tcp", o.tls.ca = "/etc/hostname");
    REFUSE("missing CA", (o.url = "ssl://127.0.0.1:1", o.tls.ca = "/nonexistent/ca.pem"));
    REFUSE("cert without key", (o.url = "mqtts://127.0.0.1:1", o.tls.cert = "/etc/hostname"));
    REFUSE("reconnect 0", o.reconnect_min_s = 0);
    REFUSE("reconnect max < min", (o.reconnect_min_s = 5, o.reconnect_max_s = 2));
    REFUSE("max_inflight 0", o.max_inflight = 0);
#undef REFUSE
    CHECK(bridge_client_new(&c, NULL, err) == -EINVAL, "NULL options");

    /* accepted, never started: publish is refused, stop and free are fine */
    opts(&o, &b, "opt-ok", 5);
    o.subscriptions = good_filter;
    o.n_subscriptions = 1;
    o.url = "mqtts://127.0.0.1:1"; /* TLS mapping; nothing connects */
    o.tls.ca = "/etc/hostname";
    err[0] = '\0';
    CHECK(bridge_client_new(&c, &o, err) == 0, "valid options: %s", err);
    CHECK(!bridge_client_connected(c), "connected before start");
    CHECK(bridge_client_publish(c, "a", "x", 1, 0, false, NULL, NULL, NULL) == -ENOTCONN,
          "publish before start");
    CHECK(bridge_client_publish(c, "a/+", "x", 1, 0, false, NULL, NULL, NULL) == -EINVAL,
          "bad topic before start");
    CHECK(bridge_client_wait_connected(c, 10) == -ETIMEDOUT, "wait before start");
    CHECK(bridge_client_stop(c, NULL, 100) == 0, "stop before start");
    CHECK(bridge_client_start(c, err) == -EINVAL, "start after stop");
    bridge_client_free(c);
    bridge_client_free(NULL);
    CHECK(b.ups == 0 && b.downs == 0, "callbacks without a connection");
    box_cleanup(&b);
}

/* Connect, QoS 0 and 1 both ways, done exactly once, retained birth, refused topics, stop. */
static void test_basic(int version)
{
    char id[32], filter[32], status[32], q0[32], q1[32], load[32], bad[32];
    snprintf(id, sizeof(id), "basic-%d", version);
    snprintf(filter, sizeof(filter), "basic/%d/#", version);
    snprintf(status, sizeof(status), "basic/%d/status", version);
    snprintf(q0, sizeof(q0), "basic/%d/q0", version);
    snprintf(q1, sizeof(q1), "basic/%d/q1", version);
    snprintf(load, sizeof(load), "basic/%d/load", version);
    snprintf(bad, sizeof(bad), "basic/%d/+", version);
    fprintf(stderr, "test_basic(mqtt %d)\n", version);

    struct box b, ob;
    box_init(&b, id);
    box_init(&ob, "observer");
    static struct tracker t;
    tracker_init(&t);
    const char *subs[] = {filter};
    struct bridge_options o;
    opts(&o, &b, id, version);
    o.subscriptions = subs;
    o.n_subscriptions = 1;
    o.birth_topic = status;
    o.birth_payload = "online";
    o.birth_len = 6;
    o.birth_retained = true;
    o.birth_qos = 1;
    struct bridge_client *c = start(&o);
    char err[BRIDGE_ERR_LEN];
    CHECK(bridge_client_start(c, err) == -EINVAL, "second start");
    REQUIRE(bridge_client_wait_connected(c, 10000) == 0, "not connected");
    CHECK(bridge_client_connected(c), "connected");
    CHECK(wait_count(&b, &b.ups, 1, 5000) == 1, "on_connection(true) once");

    CHECK(bridge_client_publish(c, q0, "zero", 4, 0, false, NULL, on_done, &t.s[0]) == 0, "qos 0");
    CHECK(bridge_client_publish(c, q1, "one", 3, 1, false, NULL, on_done, &t.s[1]) == 0, "qos 1");
    CHECK(wait_msgs(&b, q0, "zero", 1, 5000) == 1, "qos 0 received");
    CHECK(wait_msgs(&b, q1, "one", 1, 5000) == 1, "qos 1 received");
    struct rx r;
    CHECK(last_msg(&b, q0, &r) && r.qos == 0 && !r.retained, "qos 0: qos=%d retained=%d", r.qos,
          r.retained);
    CHECK(last_msg(&b, q1, &r) && r.qos == 1 && !r.retained, "qos 1: qos=%d retained=%d", r.qos,
          r.retained);
    CHECK(wait_done(&t, 2, 5000) == 2, "both done");
    /* our own birth came back through the subscription */
    CHECK(wait_msgs(&b, status, "online", 1, 5000) == 1, "birth seen by its client");

    /* refused topics: the callback never runs */
    static const char *refused[] = {"", "a/#", "#", "a\x01", "a\xff"};
    CHECK(bridge_client_publish(c, bad, "x", 1, 1, false, NULL, on_done, &t.s[2]) == -EINVAL,
          "publish to %s", bad);
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        CHECK(bridge_client_publish(c, refused[i], "x", 1, 1, false, NULL, on_done, &t.s[2]) ==
                  -EINVAL,
              "publish to refused topic %zu", i);
    CHECK(bridge_client_publish(c, q1, "x", 1, 3, false, NULL, on_done, &t.s[2]) == -EINVAL,
          "qos 3");
    CHECK(bridge_client_publish(c, q1, NULL, 5, 1, false, NULL, on_done, &t.s[2]) == -EINVAL,
          "NULL payload with a length");
    /* an empty payload is fine */
    CHECK(bridge_client_publish(c, q0, NULL, 0, 1, false, NULL, on_done, &t.s[2]) == 0,
          "empty payload");
    CHECK(wait_msgs(&b, q0, "", 1, 5000) == 1, "empty payload received");

    /* a burst: every completion exactly once, everything received. (More than the broker's
     * receive maximum, 20 by default, waits in Paho's queue, which its send thread looks at
     * again only when something new is queued or once a second: keep the burst modest.) */
    const int N = 150;
    int accepted = 0;
    for (int i = 0; i < N; i++) {
        char p[16];
        int len = snprintf(p, sizeof(p), "m%d", i);
        accepted += bridge_client_publish(c, load, p, (size_t)len, 1, false, NULL, on_done,
                                          &t.s[3 + i]) == 0;
    }
    CHECK(accepted == N, "accepted %d of %d", accepted, N);
    CHECK(wait_done(&t, 3 + N, 15000) == 3 + N, "burst done: %d", t.total);
    CHECK(wait_msgs(&b, load, NULL, N, 15000) == N, "burst received");
    check_slots(&t, 3 + N, 0, "basic");

    /* a second client sees the birth as a retained message */
    struct bridge_client *obs = observer(&ob, "basic-observer", status);
    CHECK(wait_msgs(&ob, status, "online", 1, 5000) == 1, "observer got the birth");
    CHECK(last_msg(&ob, status, &r) && r.retained, "birth retained for a new subscriber");

    CHECK(bridge_client_stop(c, NULL, 2000) == 0, "stop");
    CHECK(!bridge_client_connected(c), "connected after stop");
    CHECK(bridge_client_publish(c, q1, "x", 1, 1, false, NULL, on_done, &t.s[N + 3]) == -ENOTCONN,
          "publish after stop");
    CHECK(bridge_client_stop(c, NULL, 100) == 0, "second stop");
    bridge_client_free(c);
    check_slots(&t, 3 + N, 0, "basic after free");
    CHECK(ups(&b) == 1 && downs(&b) == 0, "ups=%d downs=%d", ups(&b), downs(&b));
    bridge_client_free(obs);
    tracker_cleanup(&t);
    box_cleanup(&b);
    box_cleanup(&ob);
}

/* MQTT 5 correlation data and response topic arrive in bridge_msg; 3.1.1 ignores them. */
static void test_props(void)
{
    fprintf(stderr, "test_props\n");
    struct box b5, b4;
    box_init(&b5, "props-5");
    box_init(&b4, "props-4");
    const char *subs5[] = {"rr/#"}, *subs4[] = {"rr4/#"};
    struct bridge_options o;
    opts(&o, &b5, "props-5", 5);
    o.subscriptions = subs5;
    o.n_subscriptions = 1;
    struct bridge_client *c5 = start(&o);
    opts(&o, &b4, "props-4", 4);
    o.subscriptions = subs4;
    o.n_subscriptions = 1;
    struct bridge_client *c4 = start(&o);
    REQUIRE(bridge_client_wait_connected(c5, 10000) == 0, "props-5 not connected");
    REQUIRE(bridge_client_wait_connected(c4, 10000) == 0, "props-4 not connected");

    static const unsigned char corr[] = {0x00, 0x01, 0xff, 'c', 'o', 'r', 'r'};
    struct bridge_pub_props p = {corr, sizeof(corr), "rr/resp/x", "application/msgpack"};
    CHECK(bridge_client_publish(c5, "rr/req", "q", 1, 1, false, &p, NULL, NULL) == 0, "v5");
    CHECK(bridge_client_publish(c5, "rr/plain", "q", 1, 1, false, NULL, NULL, NULL) == 0,
          "v5 without properties");
    CHECK(wait_msgs(&b5, "rr/req", "q", 1, 5000) == 1, "request received");
    CHECK(wait_msgs(&b5, "rr/plain", "q", 1, 5000) == 1, "plain received");
    struct rx r;
    CHECK(last_msg(&b5, "rr/req", &r) && r.has_rt && strcmp(r.rt, "rr/resp/x") == 0,
          "response topic: %s", r.rt);
    CHECK(r.has_corr && r.corr_len == sizeof(corr) && memcmp(r.corr, corr, sizeof(corr)) == 0,
          "correlation data (len %zu)", r.corr_len);
    CHECK(last_msg(&b5, "rr/plain", &r) && !r.has_rt && !r.has_corr, "no properties");

    CHECK(bridge_client_publish(c4, "rr4/req", "q", 1, 1, false, &p, NULL, NULL) == 0, "v4");
    CHECK(wait_msgs(&b4, "rr4/req", "q", 1, 5000) == 1, "3.1.1 request received");
    CHECK(last_msg(&b4, "rr4/req", &r) && !r.has_rt && !r.has_corr, "3.1.1 has no properties");

    struct bridge_pub_props badp = {NULL, 0, "rr/+", NULL};
    CHECK(bridge_client_publish(c5, "rr/req", "q", 1, 1, false, &badp, NULL, NULL) == -EINVAL,
          "wildcard response topic");
    bridge_client_free(c5);
    bridge_client_free(c4);
    box_cleanup(&b5);
    box_cleanup(&b4);
}

/* The child of test_will: connects with a will, says "up", vanishes without DISCONNECT. */
static int will_child(char **argv)
{
    static char curl[64], cid[32];
    snprintf(curl, sizeof(curl), "tcp://127.0.0.1:%s", argv[2]);
    snprintf(cid, sizeof(cid), "will-child-%s", argv[3]);
    struct bridge_options o;
    bridge_options_init(&o);
    o.url = curl;
    o.client_id = cid;
    o.mqtt_version = atoi(argv[3]);
    o.will_topic = argv[4];
    o.will_payload = argv[5];
    o.will_len = strlen(argv[5]);
    o.will_qos = 1;
    struct bridge_client *c;
    char err[BRIDGE_ERR_LEN];
    if (bridge_client_new(&c, &o, err) < 0 || bridge_client_start(c, err) < 0) {
        fprintf(stderr, "will child: %s\n", err);
        _exit(2);
    }
    if (bridge_client_wait_connected(c, 10000) < 0)
        _exit(3);
    if (write(1, "up\n", 3) != 3)
        _exit(4);
    _exit(0); /* no DISCONNECT: the broker must publish the will */
}

static void test_will(const char *self, int version)
{
    fprintf(stderr, "test_will(mqtt %d)\n", version);
    char topic[32], port[16], ver[8];
    snprintf(topic, sizeof(topic), "will/%d", version);
    snprintf(port, sizeof(port), "%d", broker.port);
    snprintf(ver, sizeof(ver), "%d", version);
    struct box ob;
    box_init(&ob, "will-observer");
    struct bridge_client *obs = observer(&ob, "will-observer", topic);

    int p[2];
    REQUIRE(pipe(p) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        /* exec: a fresh process, not a copy of one with Paho's threads running */
        close(p[0]);
        dup2(p[1], 1);
        execl(self, self, "--will-child", port, ver, topic, "gone", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char buf[8] = "";
    struct pollfd pfd = {p[0], POLLIN, 0};
    ssize_t n = 0;
    if (poll(&pfd, 1, 15000) == 1)
        n = read(p[0], buf, sizeof(buf) - 1);
    close(p[0]);
    int st = -1;
    if (n <= 0)
        kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    CHECK(n == 3 && strncmp(buf, "up\n", 3) == 0, "the child connected (read %zd)", n);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
    CHECK(wait_msgs(&ob, topic, "gone", 1, 10000) == 1, "will published");
    bridge_client_free(obs);
    box_cleanup(&ob);
}

/* stop with a final message: it arrives, and the clean disconnect keeps the will back. */
static void test_final(int version)
{
    fprintf(stderr, "test_final(mqtt %d)\n", version);
    char id[32], topic[32];
    snprintf(id, sizeof(id), "final-%d", version);
    snprintf(topic, sizeof(topic), "final/%d/status", version);
    struct box b, ob, ob2;
    box_init(&b, id);
    box_init(&ob, "final-observer");
    box_init(&ob2, "final-observer2");
    struct bridge_client *obs = observer(&ob, "final-observer", topic);

    struct bridge_options o;
    opts(&o, &b, id, version);
    o.will_topic = topic;
    o.will_payload = "will";
    o.will_len = 4;
    o.will_retained = true;
    o.will_qos = 1;
    o.birth_topic = topic;
    o.birth_payload = "online";
    o.birth_len = 6;
    o.birth_retained = true;
    o.birth_qos = 1;
    struct bridge_client *c = start(&o);
    REQUIRE(bridge_client_wait_connected(c, 10000) == 0, "not connected");
    CHECK(wait_msgs(&ob, topic, "online", 1, 5000) == 1, "birth");

    struct bridge_final fin = {topic, "offline", 7, true, 1};
    CHECK(bridge_client_stop(c, &fin, 3000) == 0, "stop with final");
    CHECK(wait_msgs(&ob, topic, "offline", 1, 5000) == 1, "final received");
    sleep_ms(1500);
    CHECK(count(&ob, topic, "will") == 0, "will published after a clean stop");
    bridge_client_free(c);
    sleep_ms(500);
    CHECK(count(&ob, topic, "will") == 0, "will published after free");

    struct bridge_client *obs2 = observer(&ob2, "final-observer2", topic);
    struct rx r;
    CHECK(wait_msgs(&ob2, topic, "offline", 1, 5000) == 1 && last_msg(&ob2, topic, &r) &&
              r.retained,
          "final retained");
    CHECK(ups(&b) == 1 && downs(&b) == 0, "ups=%d downs=%d", ups(&b), downs(&b));
    bridge_client_free(obs);
    bridge_client_free(obs2);
    box_cleanup(&b);
    box_cleanup(&ob);
    box_cleanup(&ob2);
}

/* Broker killed and restarted on the same port (no persistence: sessions, subscriptions and
 * retained messages are gone): clients reconnect, resubscribe and publish their birth again. */
static void test_reconnect(void)
{
    fprintf(stderr, "test_reconnect\n");
    struct box b5, b4, ob;
    box_init(&b5, "rc-5");
    box_init(&b4, "rc-4");
    box_init(&ob, "rc-observer");
    const char *subs5[] = {"rc/5/in"}, *subs4[] = {"rc/4/in"};
    struct bridge_options o;
    opts(&o, &b5, "rc-5", 5);
    o.subscriptions = subs5;
    o.n_subscriptions = 1;
    o.birth_topic = "rc/5/status";
    o.birth_payload = "online";
    o.birth_len = 6;
    o.birth_retained = true;
    o.birth_qos = 1;
    struct bridge_client *c5 = start(&o);
    opts(&o, &b4, "rc-4", 4);
    o.subscriptions = subs4;
    o.n_subscriptions = 1;
    o.birth_topic = "rc/4/status";
    o.birth_payload = "online";
    o.birth_len = 6;
    o.birth_retained = true;
    o.birth_qos = 1;
    struct bridge_client *c4 = start(&o);
    REQUIRE(bridge_client_wait_connected(c5, 10000) == 0, "rc-5 not connected");
    REQUIRE(bridge_client_wait_connected(c4, 10000) == 0, "rc-4 not connected");
    struct bridge_client *obs = observer(&ob, "rc-observer", "rc/+/status");
    CHECK(wait_msgs(&ob, "rc/5/status", "online", 1, 5000) == 1, "birth 5");
    CHECK(wait_msgs(&ob, "rc/4/status", "online", 1, 5000) == 1, "birth 4");
    CHECK(bridge_client_publish(obs, "rc/5/in", "before", 6, 1, false, NULL, NULL, NULL) == 0,
          "publish before");
    CHECK(wait_msgs(&b5, "rc/5/in", "before", 1, 5000) == 1, "received before");

    /* QoS 1 publishes the broker never acknowledges before it dies */
    static struct tracker t;
    tracker_init(&t);
    const int N = 10;
    mosq_pause(&broker);
    for (int i = 0; i < N; i++)
        CHECK(bridge_client_publish(i % 2 ? c4 : c5, "rc/lost", "x", 1, 1, false, NULL, on_done,
                                    &t.s[i]) == 0,
              "publish %d before the kill", i);
    sleep_ms(200);
    mosq_kill(&broker);
    CHECK(wait_count(&b5, &b5.downs, 1, 10000) == 1, "rc-5 saw the loss");
    CHECK(wait_count(&b4, &b4.downs, 1, 10000) == 1, "rc-4 saw the loss");
    CHECK(!bridge_client_connected(c5) && !bridge_client_connected(c4), "still connected");
    CHECK(bridge_client_publish(c5, "rc/5/x", "x", 1, 1, false, NULL, NULL, NULL) == -ENOTCONN,
          "publish while down");
    pthread_mutex_lock(&b5.mu);
    CHECK(strstr(b5.reason, "connection lost") != NULL, "reason: %s", b5.reason);
    pthread_mutex_unlock(&b5.mu);
    sleep_ms(300);
    REQUIRE(mosq_restart(&broker) == 0, "restart");

    CHECK(wait_count(&b5, &b5.ups, 2, 30000) == 2, "rc-5 back up");
    CHECK(wait_count(&b4, &b4.ups, 2, 30000) == 2, "rc-4 back up");
    CHECK(wait_count(&ob, &ob.ups, 2, 30000) == 2, "observer back up");
    CHECK(bridge_client_wait_connected(c5, 1000) == 0, "rc-5 connected");
    /* the broker forgot the retained births: seeing them again means they were republished */
    CHECK(wait_msgs(&ob, "rc/5/status", "online", 2, 10000) == 2, "birth 5 again");
    CHECK(wait_msgs(&ob, "rc/4/status", "online", 2, 10000) == 2, "birth 4 again");
    /* and the broker forgot the subscriptions: receiving means they were made again */
    CHECK(bridge_client_publish(obs, "rc/5/in", "after", 5, 1, false, NULL, NULL, NULL) == 0,
          "publish after 5");
    CHECK(bridge_client_publish(obs, "rc/4/in", "after", 5, 1, false, NULL, NULL, NULL) == 0,
          "publish after 4");
    CHECK(wait_msgs(&b5, "rc/5/in", "after", 1, 5000) == 1, "rc-5 resubscribed");
    CHECK(wait_msgs(&b4, "rc/4/in", "after", 1, 5000) == 1, "rc-4 resubscribed");
    /* the new broker has no session (session present 0): Paho fails what was in flight */
    CHECK(wait_done(&t, N, 5000) == N, "in-flight publishes completed: %d", t.total);
    check_slots(&t, N, -ECONNRESET, "in flight across the restart");

    bridge_client_free(c5);
    bridge_client_free(c4);
    bridge_client_free(obs);
    check_slots(&t, N, -ECONNRESET, "nothing more after free");
    tracker_cleanup(&t);
    box_cleanup(&b5);
    box_cleanup(&b4);
    box_cleanup(&ob);
}

/* Publishes that cannot complete (the broker is frozen) are cancelled exactly once: at stop
 * (after the final message times out) and at free. Nothing is called after free. */
static void test_cancel(void)
{
    fprintf(stderr, "test_cancel\n");
    struct box b1, b2;
    box_init(&b1, "cancel-stop");
    box_init(&b2, "cancel-free");
    static struct tracker t1, t2;
    tracker_init(&t1);
    tracker_init(&t2);
    struct bridge_options o;
    opts(&o, &b1, "cancel-stop", 5);
    o.max_inflight = 8; /* some in flight, the rest queued inside Paho */
    struct bridge_client *c1 = start(&o);
    opts(&o, &b2, "cancel-free", 4);
    o.max_inflight = 8;
    struct bridge_client *c2 = start(&o);
    REQUIRE(bridge_client_wait_connected(c1, 10000) == 0, "cancel-stop not connected");
    REQUIRE(bridge_client_wait_connected(c2, 10000) == 0, "cancel-free not connected");

    mosq_pause(&broker);
    const int N = 40;
    int ok1 = 0, ok2 = 0;
    for (int i = 0; i < N; i++) {
        ok1 +=
            bridge_client_publish(c1, "cancel/1", "x", 1, 1, false, NULL, on_done, &t1.s[i]) == 0;
        ok2 +=
            bridge_client_publish(c2, "cancel/2", "x", 1, 1, false, NULL, on_done, &t2.s[i]) == 0;
    }
    CHECK(ok1 == N && ok2 == N, "accepted %d, %d", ok1, ok2);
    sleep_ms(300);
    CHECK(wait_done(&t1, 1, 0) == 0 && wait_done(&t2, 1, 0) == 0, "completed while frozen");

    struct bridge_final fin = {"cancel/status", "offline", 7, true, 1};
    int rc = bridge_client_stop(c1, &fin, 500);
    CHECK(rc == -ETIMEDOUT, "stop with an unconfirmed final: %d", rc);
    check_slots(&t1, N, -ECANCELED, "cancelled at stop");
    bridge_client_free(c1);
    bridge_client_free(c2);
    check_slots(&t2, N, -ECANCELED, "cancelled at free");

    /* free wrote a DISCONNECT before closing, but the thawed broker answers the first PUBLISH
     * with a PUBACK, the closed socket answers with a reset, and the reset discards the unread
     * DISCONNECT: against a broker that stopped answering, the will may go out. */
    mosq_resume(&broker);
    sleep_ms(500);
    check_slots(&t1, N, -ECANCELED, "nothing after free (1)");
    check_slots(&t2, N, -ECANCELED, "nothing after free (2)");
    tracker_cleanup(&t1);
    tracker_cleanup(&t2);
    box_cleanup(&b1);
    box_cleanup(&b2);
}

/* Nothing listens: the first failure is reported, waiting times out, free is clean. */
static void test_connect_fail(void)
{
    fprintf(stderr, "test_connect_fail\n");
    struct box b;
    box_init(&b, "nobroker");
    static char nourl[64];
    snprintf(nourl, sizeof(nourl), "tcp://127.0.0.1:%d", mosq_free_port());
    struct bridge_options o;
    opts(&o, &b, "nobroker", 5);
    o.url = nourl;
    struct bridge_client *c = start(&o);
    CHECK(wait_count(&b, &b.downs, 1, 10000) >= 1, "connect failure reported");
    CHECK(bridge_client_wait_connected(c, 300) == -ETIMEDOUT, "wait_connected");
    CHECK(!bridge_client_connected(c), "connected");
    CHECK(bridge_client_publish(c, "a", "x", 1, 1, false, NULL, NULL, NULL) == -ENOTCONN,
          "publish");
    pthread_mutex_lock(&b.mu);
    CHECK(strstr(b.reason, "connect failed") != NULL, "reason: %s", b.reason);
    pthread_mutex_unlock(&b.mu);
    bridge_client_free(c);
    CHECK(ups(&b) == 0, "ups");
    box_cleanup(&b);
}

/* ---------------------------------------------------------------------------------------------
 * Main
 * ------------------------------------------------------------------------------------------ */

static bool selected(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

static void at_exit(void)
{
    if (failures)
        mosq_dump_log(&broker);
    mosq_cleanup(&broker);
}

static void on_signal(int sig)
{
    mosq_emergency_kill(); /* the guard removes the directory */
    signal(sig, SIG_DFL);
    raise(sig);
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--will-child") == 0)
        return will_child(argv);
    if (argc != 2) {
        fprintf(stderr, "usage: %s /path/to/mosquitto\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    static char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    REQUIRE(sl > 0, "readlink /proc/self/exe");
    self[sl] = '\0';

    REQUIRE(mosq_start(&broker, argv[1]) == 0, "cannot start %s", argv[1]);
    atexit(at_exit);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", broker.port);
    fprintf(stderr, "mosquitto on %s, directory %s\n", url, broker.dir);

    /* TEST_ONLY=name[,name...] runs some groups (for debugging) */
    const char *only = getenv("TEST_ONLY");
#define RUN(name, call)                                                                            \
    do {                                                                                           \
        if (!only || selected(only, name))                                                         \
            call;                                                                                  \
    } while (0)
    RUN("options", test_options());
    RUN("basic", (test_basic(5), test_basic(4)));
    RUN("props", test_props());
    RUN("will", (test_will(self, 5), test_will(self, 4)));
    RUN("final", (test_final(5), test_final(4)));
    RUN("connect_fail", test_connect_fail());
    RUN("reconnect", test_reconnect());
    /* Last: Paho 1.3.12 leaks the topic and payload of publishes still queued (never written)
     * when a client is destroyed (MQTTAsync_NULLPublishCommands clears the pointers for
     * commands that never reached MQTTProtocol_storePublication). Its heap tracker keeps them
     * reachable until a later client re-initializes the library, which LeakSanitizer would
     * then report; nothing of ours is involved. */
    RUN("cancel", test_cancel());
#undef RUN

    /* nothing left over */
    char dir[sizeof(broker.dir)];
    memcpy(dir, broker.dir, sizeof(dir));
    pid_t pid = broker.pid;
    if (failures)
        mosq_dump_log(&broker);
    mosq_cleanup(&broker);
    struct stat stt;
    CHECK(stat(dir, &stt) != 0, "%s left over", dir);
    CHECK(pid <= 0 || kill(pid, 0) != 0, "broker %d still running", (int)pid);
    if (failures) {
        fprintf(stderr, "test_client: %d check(s) failed\n", failures);
        return 1;
    }
    fprintf(stderr, "test_client: all checks passed\n");
    return 0;
}
