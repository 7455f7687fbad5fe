/* publisher: sends what was committed with a bounded number of publishes in flight: twin state
 * and desired state coalesced per twin (read from the store when sent), and messages as given
 * (replies, events, commands, reports). It trims the store's outbox of what the broker
 * acknowledged. It does not decide what changed (ingest does) and never writes a twin.
 *
 * Threads and locks:
 *   publisher_twin, publisher_msg, publisher_raw, publisher_wake: any thread (ingest runs them
 *     on Paho's receive thread); take p->lock briefly, never touch the network.
 *   run(): the publisher's own thread; reads LMDB and calls bridge_client_publish without
 *     p->lock held, and never while a read transaction is open (see send_batch).
 *   on_slot_done, on_msg_done: Paho's threads, via the bridge; take p->lock.
 *   publisher_flush_acked: the publisher thread on its timer, and main at shutdown.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hub.h"
#include "log.h"
#include "shadow.h"

#define FLUSH_EVERY_MS 250
#define FLUSH_AT 4096
#define RETRY_PAUSE_MS 50

/* The two publications of a twin's round: twins/{id}/state and devices/{id}/desired. */
enum { SLOT_STATE = 0, SLOT_DESIRED, SLOTS };

struct entry;

struct slot {
    struct entry *e;
    unsigned flag;   /* what to ask for again when it must be retried */
    bool send;       /* part of the round being sent */
    size_t off, len; /* its payload in p->batch, while the publisher thread sends it */
};

struct entry {
    struct entry *hnext; /* hash chain */
    struct entry *qnext; /* FIFO of queued entries */
    struct publisher *p;
    bool inflight;
    unsigned flags;    /* asked for, not yet taken into a round */
    unsigned round;    /* flags of the round in flight */
    unsigned pending;  /* publishes of the round not yet completed */
    unsigned reserved; /* room in the window taken for the round (one per slot it may send) */
    bool failed;       /* one of them failed: the round does not trim the outbox */
    bool deleted;      /* the twin is gone: the round publishes its deletion */
    uint64_t version;  /* the version the round publishes */
    int64_t asked_ns;  /* when `flags` went from none to some (hub_mono_ns) */
    int64_t round_ns;  /* asked_ns of what the round in flight publishes */
    int64_t tele_ns;   /* arrival of the oldest telemetry among `flags` (hub_mono_ns); 0: none */
    int64_t round_tele_ns; /* tele_ns of the round in flight */
    int rc;
    struct slot slot[SLOTS];
    size_t id_len;
    char id[TWIN_ID_MAX + 1];
};

struct msg {
    struct msg *next;
    struct publisher *p;
    uint64_t seq; /* its number in the store's event messages; 0: not stored */
    enum pub_class cls;
    int qos;
    bool retained;
    size_t len, corr_len;
    char *topic;
    unsigned char *corr; /* NULL: none */
    char payload[];      /* topic and correlation data follow the payload */
};

struct acked {
    uint64_t version;
    size_t id_len;
    char id[TWIN_ID_MAX + 1];
};

struct publisher {
    struct publisher_options o;
    pthread_mutex_t lock;
    pthread_cond_t wake;    /* the thread waits here for work or room */
    pthread_cond_t drained; /* publisher_drain waits here */
    pthread_t thread;
    bool running, stop;

    struct entry **buckets; /* every twin queued or in flight, by id */
    size_t nbuckets, count;
    struct entry *qhead, *qtail;
    struct entry *spare; /* freed entries, reused */

    struct msg *mhead, *mtail;  /* messages waiting (not in flight) */
    unsigned nmsg[PUB_CLASSES]; /* messages waiting or in flight, per class */
    unsigned nmsg_all;
    size_t msg_bytes; /* their payload bytes */

    unsigned inflight, max_inflight;

    struct acked *acked; /* acknowledged, not yet removed from the outbox */
    size_t nacked, acked_cap;
    uint64_t *acked_ev; /* event messages acknowledged, not yet deleted from the store */
    size_t nacked_ev, acked_ev_cap;

    /* Event messages are committed to the store (outlist); the queue holds copies. When it has
     * no room, or after a restart, they are read from the store instead, in order: `spill` is
     * set, and every later one goes there too until the reader has caught up. */
    bool spill;
    uint64_t spill_after;     /* the reader goes on after this number */
    uint64_t skipped_max;     /* the newest event not queued because of the spill */
    uint64_t last_queued;     /* the newest event queued as a copy */
    _Atomic uint64_t refused; /* event messages not stored (publish.max_stored_events) */

    struct publisher_stats st;
    struct hub_hist latency; /* asked to acknowledged, of twins/{id}/state */
    struct hub_hist tele;    /* telemetry's arrival to the same acknowledgement */
    msgpack_sbuffer batch;   /* run() only: the payloads of the batch being sent */
};

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static struct entry **slot_of(struct publisher *p, const char *id, size_t n)
{
    struct entry **e = &p->buckets[hash(id, n) & (p->nbuckets - 1)];
    while (*e && ((*e)->id_len != n || memcmp((*e)->id, id, n) != 0))
        e = &(*e)->hnext;
    return e;
}

static int grow(struct publisher *p)
{
    size_t n = p->nbuckets * 2;
    struct entry **b = calloc(n, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < p->nbuckets; i++) {
        struct entry *e = p->buckets[i], *next;
        for (; e; e = next) {
            next = e->hnext;
            struct entry **to = &b[hash(e->id, e->id_len) & (n - 1)];
            e->hnext = *to;
            *to = e;
        }
    }
    free(p->buckets);
    p->buckets = b;
    p->nbuckets = n;
    return 0;
}

static void enqueue(struct publisher *p, struct entry *e)
{
    e->qnext = NULL;
    if (p->qtail)
        p->qtail->qnext = e;
    else
        p->qhead = e;
    p->qtail = e;
    p->st.queued++;
}

static void remove_entry(struct publisher *p, struct entry *e)
{
    struct entry **s = slot_of(p, e->id, e->id_len);
    *s = e->hnext;
    p->count--;
    e->hnext = p->spare;
    p->spare = e;
}

static void signal_idle(struct publisher *p)
{
    if (p->count == 0 && p->nmsg_all == 0 && p->inflight == 0 && !p->spill)
        pthread_cond_broadcast(&p->drained);
}

int publisher_new(struct publisher **out, const struct publisher_options *o)
{
    struct publisher *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->o = *o;
    p->max_inflight = o->max_inflight ? o->max_inflight : 1;
    p->nbuckets = 1024;
    p->buckets = calloc(p->nbuckets, sizeof(*p->buckets));
    if (!p->buckets) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->drained, NULL);
    msgpack_sbuffer_init(&p->batch);
    *out = p;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Asking
 * ------------------------------------------------------------------------------------------ */

int publisher_twin(struct publisher *p, const char *id, size_t id_len, unsigned flags)
{
    return publisher_twin_since(p, id, id_len, flags, 0);
}

/* The oldest of a telemetry arrival time and another (0: none). */
static int64_t oldest(int64_t a, int64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

int publisher_twin_since(struct publisher *p, const char *id, size_t id_len, unsigned flags,
                         int64_t arrived_ns)
{
    if (id_len > TWIN_ID_MAX || !flags)
        return -EINVAL;
    if (flags & PUB_STATE)
        stream_push(p->o.stream, STREAM_STATE, id, id_len, NULL, 0);
    int rc = 0;
    int64_t now = hub_mono_ns();
    pthread_mutex_lock(&p->lock);
    struct entry **s = slot_of(p, id, id_len);
    if (*s) {
        /* Already waiting (or in flight: it goes again when the round ends); the thread
         * reads the latest version when it sends. */
        if (!(*s)->flags)
            (*s)->asked_ns = now;
        (*s)->flags |= flags;
        (*s)->tele_ns = oldest((*s)->tele_ns, arrived_ns);
        p->st.coalesced++;
        goto out;
    }
    struct entry *e = p->spare;
    if (e) {
        p->spare = e->hnext;
    } else if (!(e = malloc(sizeof(*e)))) {
        rc = -ENOMEM;
        goto out;
    }
    memset(e, 0, offsetof(struct entry, id));
    e->p = p;
    for (int i = 0; i < SLOTS; i++)
        e->slot[i].e = e;
    e->flags = flags;
    e->asked_ns = now;
    e->tele_ns = arrived_ns;
    e->id_len = id_len;
    memcpy(e->id, id, id_len);
    e->id[id_len] = '\0';
    e->hnext = NULL;
    *s = e;
    p->count++;
    enqueue(p, e);
    if (p->count > p->nbuckets)
        grow(p); /* on failure chains just get longer */
    pthread_cond_signal(&p->wake);
out:
    pthread_mutex_unlock(&p->lock);
    return rc;
}

static void msg_link(struct publisher *p, struct msg *m)
{
    m->next = NULL;
    if (p->mtail)
        p->mtail->next = m;
    else
        p->mhead = m;
    p->mtail = m;
}

/* A message leaves: sent, dropped or failed. Under p->lock. */
static void msg_release(struct publisher *p, struct msg *m)
{
    p->nmsg[m->cls]--;
    p->nmsg_all--;
    p->msg_bytes -= m->len;
    free(m);
}

int publisher_msg(struct publisher *p, enum pub_class cls, const struct publisher_msg *m)
{
    if ((unsigned)cls >= PUB_CLASSES || !m || !m->topic || (m->len && !m->payload) ||
        (m->correlation_len && !m->correlation))
        return -EINVAL;
    /* The stream keeps what was committed, whether or not the queue below has room. */
    if (m->stream)
        stream_push(p->o.stream, (enum stream_kind)m->stream, m->id, m->id_len, m->payload,
                    m->len);
    size_t tlen = strlen(m->topic);
    size_t clen = m->correlation ? m->correlation_len : 0;
    /* Copy before taking the lock: a full queue wastes one allocation, a busy one waits less. */
    struct msg *r = malloc(sizeof(*r) + m->len + tlen + 1 + clen);
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    bool full = p->nmsg[cls] >= p->o.capacity[cls] ||
                (p->o.max_bytes && p->msg_bytes + m->len > p->o.max_bytes);
    if (m->seq && (p->spill || full || !r)) {
        /* it is in the store: the reader publishes it in its turn */
        if (!p->spill) {
            p->spill = true;
            p->spill_after = p->last_queued;
        }
        if (m->seq - 1 < p->spill_after)
            p->spill_after = m->seq - 1; /* committed after the reader's last look (at worst
                                            what lies between is published twice) */
        if (m->seq > p->skipped_max)
            p->skipped_max = m->seq;
        p->st.spilled++;
        pthread_cond_signal(&p->wake);
        pthread_mutex_unlock(&p->lock);
        free(r);
        return 0;
    }
    if (!r)
        rc = -ENOMEM;
    else if (full)
        rc = -ENOBUFS;
    if (rc < 0) {
        p->st.dropped[cls]++;
        pthread_mutex_unlock(&p->lock);
        free(r);
        return rc;
    }
    r->p = p;
    r->seq = m->seq;
    if (m->seq > p->last_queued)
        p->last_queued = m->seq;
    r->cls = cls;
    r->qos = m->qos;
    r->retained = m->retained;
    r->len = m->len;
    if (m->len)
        memcpy(r->payload, m->payload, m->len);
    r->topic = r->payload + m->len;
    memcpy(r->topic, m->topic, tlen + 1);
    r->corr = NULL;
    r->corr_len = clen;
    if (m->correlation) {
        r->corr = (unsigned char *)r->topic + tlen + 1;
        if (clen)
            memcpy(r->corr, m->correlation, clen);
    }
    p->nmsg[cls]++;
    p->nmsg_all++;
    p->msg_bytes += m->len;
    msg_link(p, r);
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int publisher_raw(struct publisher *p, const char *topic, const void *payload, size_t len)
{
    struct publisher_msg m = {.topic = topic, .payload = payload, .len = len, .qos = 0};
    return publisher_msg(p, PUB_CLASS_REPORT, &m);
}

void publisher_wake(struct publisher *p)
{
    pthread_mutex_lock(&p->lock);
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

static int recover_one(void *ctx, const char *id, size_t id_len, uint64_t version)
{
    (void)version;
    /* Desired too: whether its publication got through before the stop is not recorded, and
     * publishing the same retained message again changes nothing. */
    return publisher_twin(ctx, id, id_len, PUB_STATE | PUB_DESIRED);
}

int publisher_recover(struct publisher *p, char *err)
{
    struct twin_txn *txn;
    int rc = twin_store_read_begin(p->o.store, &txn, err);
    if (rc < 0)
        return rc;
    rc = twin_outbox_list(txn, recover_one, p, err);
    uint64_t waiting = 0;
    if (rc == 0)
        rc = twin_eventbox_count(txn, &waiting, err);
    twin_store_read_end(txn);
    if (rc == 0 && waiting) {
        /* every event message the broker had not acknowledged, again, in order */
        pthread_mutex_lock(&p->lock);
        p->spill = true;
        p->spill_after = 0;
        pthread_mutex_unlock(&p->lock);
        log_info("event messages to publish again", "count=%llu", (unsigned long long)waiting);
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Completions
 * ------------------------------------------------------------------------------------------ */

static void record_acked(struct publisher *p, struct entry *e)
{
    if (p->nacked == p->acked_cap) {
        size_t cap = p->acked_cap ? p->acked_cap * 2 : 256;
        struct acked *a = realloc(p->acked, cap * sizeof(*a));
        if (a) {
            p->acked = a;
            p->acked_cap = cap;
        }
    }
    /* Without room the outbox keeps the entry: one more publication after a restart. */
    if (p->nacked < p->acked_cap) {
        struct acked *a = &p->acked[p->nacked++];
        a->version = e->version;
        a->id_len = e->id_len;
        memcpy(a->id, e->id, e->id_len + 1);
    }
}

/* The last publication of e's round completed. Under p->lock. */
static void round_end(struct publisher *p, struct entry *e)
{
    e->inflight = false;
    /* Only a round that published the state at e->version may trim the outbox up to it: a
     * desired-only round read a version whose state may still be on its way. */
    if (!e->failed && (e->round & PUB_STATE))
        record_acked(p, e);
    e->round = 0;
    if (e->flags && !p->stop)
        enqueue(p, e);
    else
        remove_entry(p, e);
    pthread_cond_signal(&p->wake);
    signal_idle(p);
}

/* One publication of a round completed with `status` (0, or a bridge_publish_cb status;
 * -ENOTCONN and -EAGAIN for a publish that could not be handed over). Under p->lock. */
static void slot_done(struct publisher *p, struct slot *s, int status)
{
    struct entry *e = s->e;
    p->inflight--;
    e->pending--;
    if (status == 0) {
        p->st.published++;
        if (s == &e->slot[SLOT_STATE]) {
            int64_t now = hub_mono_ns();
            hub_hist_observe(&p->latency, now - e->round_ns);
            if (e->round_tele_ns)
                hub_hist_observe(&p->tele, now - e->round_tele_ns);
        }
    } else if (status == -ECONNRESET || status == -ENOTCONN || status == -EAGAIN) {
        /* Lost with the connection, or not handed over: send again (at the latest version)
         * once it is back. */
        e->failed = true;
        e->flags |= s->flag;
        if (s == &e->slot[SLOT_STATE]) /* its telemetry still waits */
            e->tele_ns = oldest(e->tele_ns, e->round_tele_ns);
    } else {
        /* Refused by the broker (not authorized, quota), or cancelled at shutdown: retrying at
         * once would only spin. The outbox keeps the state; the twin's next commit or the next
         * start sends it again. */
        e->failed = true;
        if (status != -ECANCELED) {
            p->st.failed++;
            log_debug("twin publication not accepted", "id=%s slot=%s status=%d", e->id,
                      s == &e->slot[SLOT_STATE] ? "state" : "desired", status);
        }
    }
    if (e->pending == 0)
        round_end(p, e);
}

/* Paho thread: a twin publication completed. */
static void on_slot_done(void *ctx, int status)
{
    struct slot *s = ctx;
    struct publisher *p = s->e->p;
    pthread_mutex_lock(&p->lock);
    slot_done(p, s, status);
    pthread_mutex_unlock(&p->lock);
}

/* A message completed (Paho thread), or could not be handed over (publisher thread). */
/* An event message the store may forget: the broker has it, or refused it for good. */
static void event_acked(struct publisher *p, uint64_t seq)
{
    if (p->nacked_ev == p->acked_ev_cap) {
        size_t cap = p->acked_ev_cap ? p->acked_ev_cap * 2 : 256;
        uint64_t *a = realloc(p->acked_ev, cap * sizeof(*a));
        if (!a)
            return; /* published again after a restart: at least once */
        p->acked_ev = a;
        p->acked_ev_cap = cap;
    }
    p->acked_ev[p->nacked_ev++] = seq;
}

static void msg_done(struct publisher *p, struct msg *m, int status)
{
    p->inflight--;
    if (m->seq && status != -ECANCELED &&
        (status == 0 ||
         !((status == -ECONNRESET || status == -ENOTCONN || status == -EAGAIN) && !p->stop)))
        event_acked(p, m->seq);
    if (status == 0) {
        p->st.sent[m->cls]++;
        msg_release(p, m);
    } else if ((status == -ECONNRESET || status == -ENOTCONN || status == -EAGAIN) && m->qos > 0 &&
               !p->stop) {
        msg_link(p, m); /* at least once: again when the connection is back */
    } else {
        if (status != -ECANCELED) {
            p->st.failed++;
            log_debug("message not accepted", "topic=%s status=%d", m->topic, status);
        }
        p->st.dropped[m->cls]++;
        msg_release(p, m);
    }
    pthread_cond_signal(&p->wake);
    signal_idle(p);
}

static void on_msg_done(void *ctx, int status)
{
    struct msg *m = ctx;
    struct publisher *p = m->p;
    pthread_mutex_lock(&p->lock);
    msg_done(p, m, status);
    pthread_mutex_unlock(&p->lock);
}

/* ---------------------------------------------------------------------------------------------
 * Trimming the outbox
 * ------------------------------------------------------------------------------------------ */

struct flush {
    struct acked *a;
    size_t n;
    uint64_t *ev;
    size_t nev;
};

static int flush_apply(struct twin_txn *txn, void *ctx)
{
    struct flush *f = ctx;
    char err[TWIN_ERR_LEN];
    for (size_t i = 0; i < f->n; i++) {
        int rc = twin_outbox_done(txn, f->a[i].id, f->a[i].id_len, f->a[i].version, err);
        if (rc < 0 && rc != -ENOENT)
            return rc;
    }
    for (size_t i = 0; i < f->nev; i++) {
        int rc = twin_eventbox_done(txn, f->ev[i], err);
        if (rc < 0 && rc != -ENOENT)
            return rc;
    }
    return 0;
}

int publisher_flush_acked(struct publisher *p, char *err)
{
    pthread_mutex_lock(&p->lock);
    struct flush f = {p->acked, p->nacked, p->acked_ev, p->nacked_ev};
    p->acked = NULL;
    p->nacked = p->acked_cap = 0;
    p->acked_ev = NULL;
    p->nacked_ev = p->acked_ev_cap = 0;
    pthread_mutex_unlock(&p->lock);
    int rc = 0;
    if (f.n || f.nev)
        rc = twin_store_write(p->o.store, flush_apply, &f, err);
    free(f.a);
    free(f.ev);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Event messages from the store
 * ------------------------------------------------------------------------------------------ */

#define SPILL_BATCH 256

struct spill_read {
    struct publisher *p;
    struct msg *head, **tail;
    unsigned n;
    uint64_t last;
};

static int spill_one(void *ctx, const struct twin_event *ev)
{
    struct spill_read *r = ctx;
    struct msg *m = malloc(sizeof(*m) + ev->len + ev->topic_len + 1 + ev->corr_len);
    if (!m)
        return -ENOMEM;
    m->next = NULL;
    m->p = r->p;
    m->seq = ev->seq;
    m->cls = ev->cls < PUB_CLASSES ? (enum pub_class)ev->cls : PUB_CLASS_REPLY;
    m->qos = ev->qos;
    m->retained = false;
    m->len = ev->len;
    if (ev->len)
        memcpy(m->payload, ev->payload, ev->len);
    m->topic = m->payload + ev->len;
    memcpy(m->topic, ev->topic, ev->topic_len);
    m->topic[ev->topic_len] = '\0';
    m->corr_len = ev->corr_len;
    m->corr = NULL;
    if (ev->corr_len) {
        m->corr = (unsigned char *)m->topic + ev->topic_len + 1;
        memcpy(m->corr, ev->corr, ev->corr_len);
    }
    *r->tail = m;
    r->tail = &m->next;
    r->n++;
    r->last = ev->seq;
    return 0;
}

/* Reads the next event messages of the spill into the queue (at most `room`). Called by run()
 * without p->lock; takes it to link them. */
static void spill_read(struct publisher *p, uint64_t after, unsigned room)
{
    char err[TWIN_ERR_LEN];
    struct spill_read r = {.p = p, .last = after};
    r.tail = &r.head;
    struct twin_txn *txn;
    int rc = twin_store_read_begin(p->o.store, &txn, err);
    if (rc == 0) {
        rc = twin_eventbox_list(txn, after, room, spill_one, &r, err);
        twin_store_read_end(txn);
    }
    if (rc < 0)
        log_error("cannot read the event messages to publish", "err=\"%s\"", err);
    pthread_mutex_lock(&p->lock);
    if (p->spill_after == after) {
        p->spill_after = r.last;
        /* caught up: nothing skipped since the reader's look */
        if (rc == 0 && r.n < room && p->skipped_max <= r.last)
            p->spill = false;
    } else {
        /* one was committed behind the reader meanwhile: read again from there; what this
         * read took is queued anyway (at least once) */
    }
    for (struct msg *m = r.head, *next; m; m = next) {
        next = m->next;
        p->nmsg[m->cls]++;
        p->nmsg_all++;
        p->msg_bytes += m->len;
        if (m->seq > p->last_queued)
            p->last_queued = m->seq;
        msg_link(p, m);
    }
    p->st.from_store += r.n;
    signal_idle(p);
    pthread_mutex_unlock(&p->lock);
    if (rc < 0) {
        struct timespec ts = {0, RETRY_PAUSE_MS * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Sending
 * ------------------------------------------------------------------------------------------ */

static void slot_payload(struct publisher *p, struct slot *s, size_t off)
{
    s->send = true;
    s->off = off;
    s->len = p->batch.size - off;
}

/* The state of e as it will be published, appended to p->batch. */
static int copy_state(struct publisher *p, struct twin_txn *txn, struct entry *e, const void *doc,
                      size_t len)
{
    char err[TWIN_ERR_LEN];
    size_t off = p->batch.size;
    int rc;
    if (p->o.json) {
        /* Our own bytes, but a damaged page must not reach msgpack-c unchecked either. */
        struct twin_limits lim = {len, TWIN_DEPTH_CAP, UINT32_MAX};
        msgpack_object obj;
        size_t uoff = 0;
        if (twin_input_scan(doc, len, &lim, err) < 0 ||
            msgpack_unpack(doc, len, &uoff, twin_txn_zone(txn), &obj) != MSGPACK_UNPACK_SUCCESS) {
            log_error("cannot read twin for publishing", "id=%s err=\"stored document: %s\"", e->id,
                      err);
            return -EBADMSG;
        }
        rc = twin_json_write(&obj, &p->batch);
    } else {
        rc = msgpack_sbuffer_write(&p->batch, doc, len) == 0 ? 0 : -ENOMEM;
    }
    if (rc == 0)
        slot_payload(p, &e->slot[SLOT_STATE], off);
    return rc;
}

/* {version, delta} of e, or nothing when in sync (an empty payload for PUB_DESIRED, no
 * publication for PUB_DELTA alone). Always msgpack: devices read it. */
static int copy_desired(struct publisher *p, struct twin_txn *txn, struct entry *e)
{
    char err[TWIN_ERR_LEN];
    uint64_t version;
    msgpack_object delta;
    int rc = twin_delta_get(txn, e->id, e->id_len, &version, &delta, err);
    if (rc < 0) {
        log_error("cannot read the delta for publishing", "id=%s err=\"%s\"", e->id, err);
        return rc;
    }
    size_t off = p->batch.size;
    struct slot *s = &e->slot[SLOT_DESIRED];
    if (delta.type == MSGPACK_OBJECT_NIL) {
        if (e->round & PUB_DESIRED)
            slot_payload(p, s, off);
        return 0;
    }
    if (p->o.aws_shadow)
        shadow_publish_delta(p, txn, e->id, e->id_len); /* queued messages; no lock held here */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &p->batch, msgpack_sbuffer_write);
    bool bad = msgpack_pack_map(&pk, 2) != 0;
    out_pack_str(&pk, "version", 7);
    bad = bad || msgpack_pack_uint64(&pk, version) != 0;
    out_pack_str(&pk, "delta", 5);
    bad = bad || msgpack_pack_object(&pk, delta) != 0;
    if (bad)
        return -ENOMEM;
    slot_payload(p, s, off);
    return 0;
}

/* Copies what e's round publishes (its latest committed version) into p->batch. Returns 0
 * (e->slot[].send say what to send), -ENOENT (no twin and no tombstone: nothing to publish),
 * -EIO (read failed: try again), or another negative code (logged). */
static int copy_twin(struct publisher *p, struct twin_txn *txn, struct entry *e)
{
    char err[TWIN_ERR_LEN];
    const void *doc;
    size_t len;
    e->deleted = false;
    e->slot[SLOT_STATE].send = e->slot[SLOT_DESIRED].send = false;
    e->slot[SLOT_STATE].flag = PUB_STATE;
    e->slot[SLOT_DESIRED].flag = e->round & (PUB_DESIRED | PUB_DELTA);
    int rc = twin_get_raw(txn, e->id, e->id_len, &doc, &len, err);
    if (rc == -ENOENT) {
        /* Deleted (twin_delete left the outbox entry): publish the deletion, empty retained
         * messages that clear the broker's copies. */
        rc = twin_tombstone_get(txn, e->id, e->id_len, &e->version, err);
        if (rc == -ENOENT)
            return rc;
        if (rc < 0) {
            log_error("cannot read tombstone for publishing", "id=%s err=\"%s\"", e->id, err);
            return rc == -EBADMSG ? rc : -EIO;
        }
        e->deleted = true;
        if (e->round & PUB_STATE)
            slot_payload(p, &e->slot[SLOT_STATE], p->batch.size);
        if (e->round & PUB_DESIRED)
            slot_payload(p, &e->slot[SLOT_DESIRED], p->batch.size);
        return 0;
    }
    if (rc == 0 && (rc = twin_doc_version(doc, len, &e->version)) < 0)
        snprintf(err, sizeof(err), "stored document unreadable");
    if (rc < 0) {
        log_error("cannot read twin for publishing", "id=%s err=\"%s\"", e->id, err);
        return rc == -EIO ? rc : -EBADMSG;
    }
    if ((e->round & PUB_STATE) && (rc = copy_state(p, txn, e, doc, len)) < 0)
        return rc;
    if ((e->round & (PUB_DESIRED | PUB_DELTA)) && (rc = copy_desired(p, txn, e)) < 0)
        return rc == -EIO ? rc : -EBADMSG;
    return 0;
}

static int send_slot(struct publisher *p, struct entry *e, int i)
{
    char topic[BRIDGE_TOPIC_MAX];
    struct slot *s = &e->slot[i];
    enum bridge_topic_kind kind = i == SLOT_STATE ? BRIDGE_T_STATE : BRIDGE_T_DESIRED;
    if (bridge_topic_build(p->o.topics, kind, e->id, e->id_len, topic, sizeof(topic)) < 0)
        return -EINVAL; /* ids are validated before they are stored: cannot happen */
    int qos = i == SLOT_STATE ? p->o.qos : 1;
    return bridge_client_publish(p->o.bridge, topic, p->batch.data + s->off, s->len, qos, true,
                                 NULL, on_slot_done, s);
}

static int send_msg(struct publisher *p, struct msg *m)
{
    struct bridge_pub_props props = {.correlation = m->corr, .correlation_len = m->corr_len};
    return bridge_client_publish(p->o.bridge, m->topic, m->payload, m->len, m->qos, m->retained,
                                 m->corr ? &props : NULL, on_msg_done, m);
}

/* A publish call that failed: what the completion would have said. */
static int call_status(int rc)
{
    /* -ENOTCONN: not connected now; -EIO/-ENOMEM: Paho's queue full or out of memory. */
    return rc == -ENOTCONN || rc == -EIO || rc == -ENOMEM ? -EAGAIN : rc;
}

/* Sends one batch taken by run(): every slot counted in p->inflight already (reserved). */
static void send_batch(struct publisher *p, struct entry *batch, struct msg *msgs)
{
    char err[TWIN_ERR_LEN];
    struct twin_txn *txn = NULL;
    bool pause = false;

    /* Copy first and end the read transaction before calling into Paho: Paho's receive thread
     * holds Paho's lock while ingest commits, and a commit that grows the map waits for every
     * read transaction of this process to end. */
    p->batch.size = 0;
    if (batch && twin_store_read_begin(p->o.store, &txn, err) < 0)
        log_error("cannot read the store for publishing", "err=\"%s\"", err);
    for (struct entry *e = batch; e; e = e->qnext)
        e->rc = txn ? copy_twin(p, txn, e) : -EIO;
    if (txn)
        twin_store_read_end(txn);

    for (struct entry *e = batch, *next; e; e = next) {
        next = e->qnext;
        /* Settle the reservations first: once the last publish of the round is handed over,
         * its completion may end the round (and reuse e) at any time. */
        int nsend = 0;
        pthread_mutex_lock(&p->lock);
        e->failed = false;
        if (e->rc < 0) {
            /* -EIO: ask again after a pause. Gone or unreadable (logged): the outbox keeps
             * what needs publishing. */
            if (e->rc == -EIO) {
                e->flags |= e->round;
                e->failed = true;
                pause = true;
            }
            e->slot[SLOT_STATE].send = e->slot[SLOT_DESIRED].send = false;
        }
        for (int i = 0; i < SLOTS; i++)
            nsend += e->slot[i].send;
        p->inflight -= e->reserved - (unsigned)nsend; /* run() reserved the most it may send */
        e->pending = (unsigned)nsend;
        if (nsend == 0) {
            /* Nothing to send (an error, or a delta re-send with nothing in it); what was
             * asked for meanwhile is read again in a round of its own. */
            e->failed = e->failed || e->rc < 0;
            round_end(p, e);
        }
        pthread_mutex_unlock(&p->lock);
        if (nsend == 0)
            continue;
        int last = e->slot[SLOT_DESIRED].send ? SLOT_DESIRED : SLOT_STATE;
        for (int i = 0; i <= last; i++) {
            if (!e->slot[i].send)
                continue;
            struct slot *s = &e->slot[i];
            int rc = send_slot(p, e, i);
            if (rc < 0) {
                pause = true;
                pthread_mutex_lock(&p->lock);
                slot_done(p, s, call_status(rc));
                pthread_mutex_unlock(&p->lock);
            }
            /* After handing over slot `last`, e belongs to the completions. */
        }
    }

    for (struct msg *m = msgs, *next; m; m = next) {
        next = m->next;
        int rc = send_msg(p, m);
        if (rc < 0) {
            pause = pause || m->qos > 0;
            pthread_mutex_lock(&p->lock);
            msg_done(p, m, call_status(rc));
            pthread_mutex_unlock(&p->lock);
        }
    }

    if (pause) {
        /* Not connected, Paho's queue full or a store error: retry after a pause. */
        struct timespec ts = {0, RETRY_PAUSE_MS * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* The publications a round with `flags` may send. */
static unsigned slots_of(unsigned flags)
{
    return ((flags & PUB_STATE) ? 1u : 0u) + ((flags & (PUB_DESIRED | PUB_DELTA)) ? 1u : 0u);
}

static void *run(void *arg)
{
    struct publisher *p = arg;
    char err[TWIN_ERR_LEN];
    int64_t last_flush = hub_mono_ms();

    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        unsigned window = p->max_inflight, quota = bridge_client_send_quota(p->o.bridge);
        if (quota && quota < window)
            window = quota;
        if (window < SLOTS)
            window = SLOTS; /* a twin's round needs room for both of its publications */
        unsigned cap = p->o.capacity[PUB_CLASS_REPLY];
        unsigned room = p->nmsg[PUB_CLASS_REPLY] < cap ? cap - p->nmsg[PUB_CLASS_REPLY] : 0;
        if (room > SPILL_BATCH)
            room = SPILL_BATCH;
        bool spill = p->spill && room >= (cap < 2 * SPILL_BATCH ? (cap + 1) / 2 : SPILL_BATCH) &&
                     (!p->o.max_bytes || p->msg_bytes < p->o.max_bytes / 2);
        bool work = ((p->qhead && p->inflight + slots_of(p->qhead->flags) <= window) ||
                     (p->mhead && p->inflight < window) || spill) &&
                    bridge_client_connected(p->o.bridge);
        if (!work) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&p->wake, &p->lock, &ts);
        }
        /* Take what fits in the window, twins and messages in turn, so neither a busy fleet
         * nor a burst of replies starves the other. A twin reserves room for each publication
         * it may send (telemetry: one); send_batch gives back what it does not use. */
        struct entry *batch = NULL, **bt = &batch;
        struct msg *msgs = NULL, **mt = &msgs;
        if (bridge_client_connected(p->o.bridge)) {
            bool progress = true;
            while (progress) {
                progress = false;
                if (p->qhead && p->inflight + slots_of(p->qhead->flags) <= window) {
                    struct entry *e = p->qhead;
                    p->qhead = e->qnext;
                    if (!p->qhead)
                        p->qtail = NULL;
                    p->st.queued--;
                    e->inflight = true;
                    e->round = e->flags;
                    e->round_ns = e->asked_ns;
                    e->round_tele_ns = e->tele_ns;
                    e->tele_ns = 0;
                    e->flags = 0;
                    e->reserved = slots_of(e->round);
                    e->qnext = NULL;
                    *bt = e;
                    bt = &e->qnext;
                    p->inflight += e->reserved;
                    progress = true;
                }
                if (p->mhead && p->inflight < window) {
                    struct msg *m = p->mhead;
                    p->mhead = m->next;
                    if (!p->mhead)
                        p->mtail = NULL;
                    m->next = NULL;
                    *mt = m;
                    mt = &m->next;
                    p->inflight++;
                    progress = true;
                }
            }
        }
        size_t nack = p->nacked + p->nacked_ev;
        bool flush = nack >= FLUSH_AT || (nack > 0 && hub_mono_ms() - last_flush >= FLUSH_EVERY_MS);
        uint64_t after = p->spill_after;
        spill = spill && bridge_client_connected(p->o.bridge);
        pthread_mutex_unlock(&p->lock);

        if (batch || msgs)
            send_batch(p, batch, msgs);
        if (spill)
            spill_read(p, after, room);
        if (flush) {
            if (publisher_flush_acked(p, err) < 0)
                log_error("cannot trim the outbox", "err=\"%s\"", err);
            last_flush = hub_mono_ms();
        }
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int publisher_start(struct publisher *p)
{
    int rc = pthread_create(&p->thread, NULL, run, p);
    if (rc != 0)
        return -rc;
    p->running = true;
    return 0;
}

int publisher_drain(struct publisher *p, unsigned timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    int rc = 0;
    pthread_mutex_lock(&p->lock);
    while (rc == 0 && (p->count || p->nmsg_all || p->inflight || p->spill))
        rc = pthread_cond_timedwait(&p->drained, &p->lock, &ts);
    pthread_mutex_unlock(&p->lock);
    return rc == 0 ? 0 : -ETIMEDOUT;
}

void publisher_stats(struct publisher *p, struct publisher_stats *st)
{
    pthread_mutex_lock(&p->lock);
    *st = p->st;
    st->inflight = p->inflight;
    for (int c = 0; c < PUB_CLASSES; c++)
        st->waiting[c] = p->nmsg[c];
    pthread_mutex_unlock(&p->lock);
}

_Atomic uint64_t *publisher_refused(struct publisher *p)
{
    return &p->refused;
}

struct hub_hist *publisher_latency(struct publisher *p)
{
    return &p->latency;
}

struct hub_hist *publisher_telemetry_latency(struct publisher *p)
{
    return &p->tele;
}

void publisher_stop(struct publisher *p)
{
    if (!p->running)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    p->running = false;
}

void publisher_free(struct publisher *p)
{
    if (!p)
        return;
    publisher_stop(p);
    for (size_t i = 0; i < p->nbuckets; i++) {
        for (struct entry *e = p->buckets[i], *next; e; e = next) {
            next = e->hnext;
            free(e);
        }
    }
    for (struct entry *e = p->spare, *next; e; e = next) {
        next = e->hnext;
        free(e);
    }
    for (struct msg *m = p->mhead, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    free(p->buckets);
    free(p->acked);
    free(p->acked_ev);
    msgpack_sbuffer_destroy(&p->batch);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->drained);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
