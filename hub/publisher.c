/* publisher: sends committed twin state with a bounded number of publishes in flight,
 * coalescing per twin, and trims the store's outbox of what the broker acknowledged. It does
 * not decide what changed (ingest does) and never writes a twin.
 *
 * Threads and locks:
 *   publisher_state, publisher_raw, publisher_wake: any thread (ingest runs them on Paho's
 *     receive thread); take p->lock briefly, never touch the network.
 *   run(): the publisher's own thread; reads LMDB and calls bridge_client_publish without
 *     p->lock held.
 *   on_state_done, on_raw_done: Paho's threads, via the bridge; take p->lock.
 *   publisher_flush_acked: the publisher thread on its timer, and main at shutdown.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hub.h"
#include "log.h"

#define FLUSH_EVERY_MS 250
#define FLUSH_AT 4096

struct entry {
    struct entry *hnext; /* hash chain */
    struct entry *qnext; /* FIFO of queued entries */
    struct publisher *p;
    bool inflight;
    bool dirty;       /* committed again while in flight: publish once more */
    uint64_t version; /* the version in flight */
    size_t off, len;  /* its payload in p->batch, while the publisher thread sends it */
    int rc;
    size_t id_len;
    char id[TWIN_ID_MAX + 1];
};

struct raw {
    struct raw *next;
    struct publisher *p;
    size_t len;
    char *topic;
    char payload[]; /* topic follows the payload */
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

    struct raw *rhead, *rtail;
    unsigned nraw;

    unsigned inflight, max_inflight;

    struct acked *acked; /* acknowledged, not yet removed from the outbox */
    size_t nacked, acked_cap;

    struct publisher_stats st;
    msgpack_sbuffer batch; /* run() only: the payloads of the batch being sent */
};

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static struct entry **slot(struct publisher *p, const char *id, size_t n)
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
    struct entry **s = slot(p, e->id, e->id_len);
    *s = e->hnext;
    p->count--;
    e->hnext = p->spare;
    p->spare = e;
}

static void signal_idle(struct publisher *p)
{
    if (p->count == 0 && p->nraw == 0 && p->inflight == 0)
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

int publisher_state(struct publisher *p, const char *id, size_t id_len)
{
    if (id_len > TWIN_ID_MAX)
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&p->lock);
    struct entry **s = slot(p, id, id_len);
    if (*s) {
        /* Already waiting: the thread reads the latest version when it sends. */
        if ((*s)->inflight)
            (*s)->dirty = true;
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

int publisher_raw(struct publisher *p, const char *topic, const void *payload, size_t len)
{
    size_t tlen = strlen(topic);
    pthread_mutex_lock(&p->lock);
    if (p->nraw >= p->o.raw_capacity) {
        p->st.raw_dropped++;
        pthread_mutex_unlock(&p->lock);
        return -ENOBUFS;
    }
    p->nraw++; /* reserve the place before allocating without the lock */
    pthread_mutex_unlock(&p->lock);

    struct raw *r = malloc(sizeof(*r) + len + tlen + 1);
    pthread_mutex_lock(&p->lock);
    if (!r) {
        p->nraw--;
        p->st.raw_dropped++;
        pthread_mutex_unlock(&p->lock);
        return -ENOBUFS;
    }
    r->next = NULL;
    r->p = p;
    r->len = len;
    memcpy(r->payload, payload, len);
    r->topic = r->payload + len;
    memcpy(r->topic, topic, tlen + 1);
    if (p->rtail)
        p->rtail->next = r;
    else
        p->rhead = r;
    p->rtail = r;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return 0;
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
    return publisher_state(ctx, id, id_len);
}

int publisher_recover(struct publisher *p, char *err)
{
    struct twin_txn *txn;
    int rc = twin_store_read_begin(p->o.store, &txn, err);
    if (rc < 0)
        return rc;
    rc = twin_outbox_list(txn, recover_one, p, err);
    twin_store_read_end(txn);
    return rc;
}

/* Paho thread: a state publication completed. */
static void on_state_done(void *ctx, int status)
{
    struct entry *e = ctx;
    struct publisher *p = e->p;
    pthread_mutex_lock(&p->lock);
    p->inflight--;
    e->inflight = false;
    if (status == 0) {
        p->st.published++;
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
    } else if (status == -ECONNRESET) {
        /* The connection dropped before the acknowledgement: send again once it is back. */
        e->dirty = true;
    } else if (status != -ECANCELED) {
        /* Refused by the broker (not authorized, quota): retrying at once would only spin.
         * The outbox keeps it; the twin's next commit or the next start sends it again. */
        p->st.failed++;
        log_debug("state publication refused", "id=%s status=%d", e->id, status);
    }
    if (e->dirty && !p->stop) {
        e->dirty = false;
        enqueue(p, e);
    } else {
        remove_entry(p, e);
    }
    pthread_cond_signal(&p->wake);
    signal_idle(p);
    pthread_mutex_unlock(&p->lock);
}

static void on_raw_done(void *ctx, int status)
{
    struct raw *r = ctx;
    struct publisher *p = r->p;
    (void)status; /* QoS 0 reports: a lost one is not worth a retry */
    free(r);
    pthread_mutex_lock(&p->lock);
    p->inflight--;
    p->nraw--;
    pthread_cond_signal(&p->wake);
    signal_idle(p);
    pthread_mutex_unlock(&p->lock);
}

/* Removes the acknowledged versions from the outbox. */
struct flush {
    struct acked *a;
    size_t n;
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
    return 0;
}

int publisher_flush_acked(struct publisher *p, char *err)
{
    pthread_mutex_lock(&p->lock);
    struct flush f = {p->acked, p->nacked};
    p->acked = NULL;
    p->nacked = p->acked_cap = 0;
    pthread_mutex_unlock(&p->lock);
    if (f.n == 0) {
        free(f.a);
        return 0;
    }
    int rc = twin_store_write(p->o.store, flush_apply, &f, err);
    free(f.a);
    return rc;
}

/* Copies the current state of `e` (its latest committed version) into p->batch, as it will
 * be published. Returns 0, -ENOENT (twin gone), or another negative code (logged). */
static int copy_state(struct publisher *p, struct twin_txn *txn, struct entry *e)
{
    char err[TWIN_ERR_LEN];
    const void *doc;
    size_t len;
    int rc = twin_get_raw(txn, e->id, e->id_len, &doc, &len, err);
    if (rc == -ENOENT)
        return rc;
    if (rc == 0 && (rc = twin_doc_version(doc, len, &e->version)) < 0)
        snprintf(err, sizeof(err), "stored document unreadable");
    if (rc < 0) {
        log_error("cannot read twin for publishing", "id=%s err=\"%s\"", e->id, err);
        return rc;
    }
    e->off = p->batch.size;
    if (p->o.json) {
        /* Our own bytes, but a damaged page must not reach msgpack-c unchecked either. */
        struct twin_limits lim = {len, TWIN_DEPTH_CAP, UINT32_MAX};
        msgpack_object obj;
        size_t off = 0;
        if (twin_input_scan(doc, len, &lim, err) < 0 ||
            msgpack_unpack(doc, len, &off, twin_txn_zone(txn), &obj) != MSGPACK_UNPACK_SUCCESS) {
            log_error("cannot read twin for publishing", "id=%s err=\"stored document: %s\"", e->id,
                      err);
            return -EBADMSG;
        }
        rc = twin_json_write(&obj, &p->batch);
    } else {
        rc = msgpack_sbuffer_write(&p->batch, doc, len) == 0 ? 0 : -ENOMEM;
    }
    e->len = p->batch.size - e->off;
    return rc;
}

static int send_state(struct publisher *p, struct entry *e)
{
    char topic[BRIDGE_TOPIC_MAX];
    if (bridge_topic_build(p->o.topics, BRIDGE_T_STATE, e->id, e->id_len, topic, sizeof(topic)) < 0)
        return -EINVAL; /* ids are validated before they are stored: cannot happen */
    return bridge_client_publish(p->o.bridge, topic, p->batch.data + e->off, e->len, p->o.qos, true,
                                 NULL, on_state_done, e);
}

static void send_batch(struct publisher *p, struct entry *batch, struct raw *raws)
{
    char err[TWIN_ERR_LEN];
    struct twin_txn *txn = NULL;

    /* Copy first and end the read transaction before calling into Paho: Paho's receive thread
     * holds Paho's lock while ingest commits, and a commit that grows the map waits for every
     * read transaction of this process to end. */
    p->batch.size = 0;
    if (batch && twin_store_read_begin(p->o.store, &txn, err) < 0)
        log_error("cannot read the store for publishing", "err=\"%s\"", err);
    for (struct entry *e = batch; e; e = e->qnext)
        e->rc = txn ? copy_state(p, txn, e) : -EIO;
    if (txn)
        twin_store_read_end(txn);

    struct entry *requeue = NULL, *rqtail = NULL;
    for (struct entry *e = batch, *next; e; e = next) {
        next = e->qnext;
        /* After an accepted publish `e` belongs to its completion: don't touch it again. */
        int copied = e->rc, rc = copied == 0 ? send_state(p, e) : copied;
        if (rc == 0)
            continue;
        pthread_mutex_lock(&p->lock);
        p->inflight--;
        e->inflight = false;
        if (copied < 0 && copied != -EIO) {
            /* Gone, or unreadable (logged): the outbox keeps what needs publishing. */
            remove_entry(p, e);
        } else {
            e->qnext = NULL;
            if (rqtail)
                rqtail->qnext = e;
            else
                requeue = e;
            rqtail = e;
            p->st.queued++;
        }
        pthread_mutex_unlock(&p->lock);
    }

    for (struct raw *r = raws, *next; r; r = next) {
        next = r->next;
        if (bridge_client_publish(p->o.bridge, r->topic, r->payload, r->len, 0, false, NULL,
                                  on_raw_done, r) < 0)
            on_raw_done(r, -ENOTCONN);
    }

    if (requeue) {
        /* Not connected or a store error: put them back in front and retry after a pause. */
        pthread_mutex_lock(&p->lock);
        rqtail->qnext = p->qhead;
        if (!p->qhead)
            p->qtail = rqtail;
        p->qhead = requeue;
        pthread_mutex_unlock(&p->lock);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
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
        bool work =
            (p->qhead || p->rhead) && p->inflight < window && bridge_client_connected(p->o.bridge);
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
        /* Take what fits in the window, state first: it is what subscribers wait for. */
        struct entry *batch = NULL, **bt = &batch;
        struct raw *raws = NULL, **rt = &raws;
        if (bridge_client_connected(p->o.bridge)) {
            while (p->qhead && p->inflight < window) {
                struct entry *e = p->qhead;
                p->qhead = e->qnext;
                if (!p->qhead)
                    p->qtail = NULL;
                p->st.queued--;
                e->inflight = true;
                e->qnext = NULL;
                *bt = e;
                bt = &e->qnext;
                p->inflight++;
            }
            while (p->rhead && p->inflight < window) {
                struct raw *r = p->rhead;
                p->rhead = r->next;
                if (!p->rhead)
                    p->rtail = NULL;
                r->next = NULL;
                *rt = r;
                rt = &r->next;
                p->inflight++;
            }
        }
        bool flush = p->nacked >= FLUSH_AT ||
                     (p->nacked > 0 && hub_mono_ms() - last_flush >= FLUSH_EVERY_MS);
        pthread_mutex_unlock(&p->lock);

        if (batch || raws)
            send_batch(p, batch, raws);
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
    while (rc == 0 && (p->count || p->nraw || p->inflight))
        rc = pthread_cond_timedwait(&p->drained, &p->lock, &ts);
    pthread_mutex_unlock(&p->lock);
    return rc == 0 ? 0 : -ETIMEDOUT;
}

void publisher_stats(struct publisher *p, struct publisher_stats *st)
{
    pthread_mutex_lock(&p->lock);
    *st = p->st;
    st->inflight = p->inflight;
    pthread_mutex_unlock(&p->lock);
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
    for (struct raw *r = p->rhead, *next; r; r = next) {
        next = r->next;
        free(r);
    }
    free(p->buckets);
    free(p->acked);
    msgpack_sbuffer_destroy(&p->batch);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->drained);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
