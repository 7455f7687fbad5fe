/* stream: the recent history of what the hub committed and published, for the HTTP API's live
 * stream (sse.c) and a twin's recent events (api.c). A ring of http.stream_buffer entries, each
 * a twin's state change (the id only: readers take the document from the store, so they see
 * committed data at its latest version), an event or a prediction (a copy of the payload as
 * published). Entries are numbered from 1 in the order they were pushed; a reader that asks
 * for what follows a number the ring no longer holds is told how many it missed. It does not
 * know HTTP, and nothing on the message path waits for a reader.
 *
 * Threads: stream_push on whoever hands the publisher a committed change (Paho's receive
 * thread, the rule timer, the main loop), under s->lock for a copy; stream_read and
 * stream_events on libmicrohttpd's connection threads, which may wait on s->cond. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hub.h"

struct stream_slot {
    uint64_t seq;
    uint8_t kind;
    uint8_t id_len;
    char id[TWIN_ID_MAX + 1];
    int64_t ts;
    size_t len;
    unsigned char *payload; /* NULL for a state */
};

struct hub_stream {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct stream_slot *ring;
    size_t cap;
    uint64_t first, next; /* the ring holds [first, next) */
    size_t bytes, max_bytes;
    unsigned waiters;
    bool stopping;
    char boot[24];
    int64_t started; /* hub ms */
    _Atomic uint64_t pushed, lost; /* lost: not kept, out of memory */
};

int stream_new(struct hub_stream **out, size_t cap, size_t max_bytes)
{
    struct hub_stream *s = calloc(1, sizeof(*s));
    if (!s || !(s->ring = calloc(cap ? cap : 1, sizeof(*s->ring)))) {
        free(s);
        return -ENOMEM;
    }
    s->cap = cap ? cap : 1;
    s->max_bytes = max_bytes;
    s->first = s->next = 1;
    /* A restarted hub numbers from 1 again; the boot tells a reader's old ids from new ones. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->started = hub_now_ms();
    snprintf(s->boot, sizeof(s->boot), "%llx%04x",
             (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000,
             (unsigned)getpid() & 0xffff);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    *out = s;
    return 0;
}

void stream_free(struct hub_stream *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->cap; i++)
        free(s->ring[i].payload);
    free(s->ring);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

const char *stream_boot(const struct hub_stream *s)
{
    return s->boot;
}

/* Drops the oldest entry. Under s->lock, with the ring not empty. */
static void evict(struct hub_stream *s)
{
    struct stream_slot *o = &s->ring[s->first % s->cap];
    s->bytes -= o->len;
    free(o->payload);
    o->payload = NULL;
    o->len = 0;
    s->first++;
}

void stream_push(struct hub_stream *s, enum stream_kind kind, const char *id, size_t id_len,
                 const void *payload, size_t len)
{
    if (!s || id_len > TWIN_ID_MAX)
        return;
    unsigned char *copy = NULL;
    if (len) {
        /* a payload a reader's batch cannot hold is not kept (limits.max_payload is smaller) */
        if (len > STREAM_PAYLOAD_MAX || len > s->max_bytes || !(copy = malloc(len))) {
            atomic_fetch_add_explicit(&s->lost, 1, memory_order_relaxed);
            return;
        }
        memcpy(copy, payload, len);
    }
    int64_t now = hub_now_ms();
    pthread_mutex_lock(&s->lock);
    if (s->next - s->first == s->cap)
        evict(s);
    while (s->bytes + len > s->max_bytes && s->first < s->next)
        evict(s);
    struct stream_slot *e = &s->ring[s->next % s->cap];
    e->seq = s->next++;
    e->kind = (uint8_t)kind;
    e->id_len = (uint8_t)id_len;
    memcpy(e->id, id, id_len);
    e->id[id_len] = '\0';
    e->ts = now;
    e->len = len;
    e->payload = copy;
    s->bytes += len;
    if (s->waiters)
        pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add_explicit(&s->pushed, 1, memory_order_relaxed);
}

/* Copies entry e into b, or returns false when b is full. */
static bool take(struct stream_batch *b, const struct stream_slot *e)
{
    if (b->n == STREAM_BATCH_MAX || b->used + e->len > sizeof(b->bytes))
        return false;
    struct stream_entry *o = &b->v[b->n++];
    o->seq = e->seq;
    o->kind = e->kind;
    o->id_len = e->id_len;
    memcpy(o->id, e->id, (size_t)e->id_len + 1);
    o->ts = e->ts;
    o->len = e->len;
    o->payload = b->bytes + b->used;
    if (e->len)
        memcpy(b->bytes + b->used, e->payload, e->len);
    b->used += e->len;
    return true;
}

int stream_read(struct hub_stream *s, uint64_t after, int timeout_ms, struct stream_batch *b)
{
    b->n = 0;
    b->used = 0;
    b->missed = 0;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    if (after >= s->next) /* from the future: a number of another boot, or a fresh reader */
        after = s->next - 1;
    while (!s->stopping && after + 1 >= s->next) {
        s->waiters++;
        int rc = pthread_cond_timedwait(&s->cond, &s->lock, &until);
        s->waiters--;
        if (rc == ETIMEDOUT)
            break;
    }
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return -ECANCELED;
    }
    uint64_t from = after + 1;
    if (from < s->first) {
        b->missed = s->first - from;
        from = s->first;
    }
    for (uint64_t q = from; q < s->next; q++)
        if (!take(b, &s->ring[q % s->cap]))
            break;
    b->last = b->n ? b->v[b->n - 1].seq : from - 1;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

uint64_t stream_last(struct hub_stream *s)
{
    pthread_mutex_lock(&s->lock);
    uint64_t last = s->next - 1;
    pthread_mutex_unlock(&s->lock);
    return last;
}

int stream_events(struct hub_stream *s, const char *id, size_t id_len, unsigned max,
                  struct stream_batch *b, int64_t *since)
{
    b->n = 0;
    b->used = 0;
    b->missed = 0;
    pthread_mutex_lock(&s->lock);
    /* newest first, to find the last `max`; then put them in order */
    uint64_t q = s->next;
    while (q > s->first && b->n < max) {
        const struct stream_slot *e = &s->ring[(q - 1) % s->cap];
        if (e->kind != STREAM_STATE && e->id_len == id_len && !memcmp(e->id, id, id_len) &&
            !take(b, e))
            break;
        q--;
    }
    /* what the ring holds of this twin is complete from the entry the walk stopped at */
    *since = q > s->first ? s->ring[(q - 1) % s->cap].ts
             : s->first == 1 ? s->started
                             : s->ring[s->first % s->cap].ts;
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < b->n / 2; i++) {
        struct stream_entry t = b->v[i];
        b->v[i] = b->v[b->n - 1 - i];
        b->v[b->n - 1 - i] = t;
    }
    return 0;
}

void stream_stop(struct hub_stream *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void stream_stats(struct hub_stream *s, uint64_t *pushed, uint64_t *lost, uint64_t *held)
{
    *pushed = atomic_load_explicit(&s->pushed, memory_order_relaxed);
    *lost = atomic_load_explicit(&s->lost, memory_order_relaxed);
    pthread_mutex_lock(&s->lock);
    *held = s->next - s->first;
    pthread_mutex_unlock(&s->lock);
}
