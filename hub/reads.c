/* reads: the read requests over MQTT that may take long (hub/query over the whole fleet,
 * twins/{id}/history over a long range), answered on a thread of their own with an ingest of
 * its own, so that ingest never waits behind one. Requests are copied into a bounded queue;
 * when it is full the request is refused at once with 429. What a request means and how it is
 * answered is requests.c's.
 *
 * Threads: reads_submit on Paho's receive thread; the reads thread runs requests_on_message;
 * reads_start and reads_stop on the main thread. r->lock guards the queue. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "log.h"

struct read_msg {
    struct read_msg *next;
    struct bridge_msg m;
    struct bridge_topic t;
    char data[]; /* topic (NUL-terminated), payload, response topic, correlation */
};

struct reads {
    pthread_t th;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct read_msg *head, *tail;
    unsigned n, max;
    bool stop;
    struct ingest in;
};

static void *run(void *arg)
{
    struct reads *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->head && !r->stop)
            pthread_cond_wait(&r->cond, &r->lock);
        if (r->stop)
            break;
        struct read_msg *rm = r->head;
        r->head = rm->next;
        if (!r->head)
            r->tail = NULL;
        r->n--;
        pthread_mutex_unlock(&r->lock);
        requests_on_message(&r->in, &rm->m, &rm->t);
        free(rm);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

int reads_start(struct reads **out, struct ingest *like, unsigned max_waiting)
{
    struct reads *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    struct twin_limits lim = ingest_limits(like);
    if (ingest_init(&r->in, like->store, like->pub, like->report, like->topics, &lim,
                    like->out.json) < 0) {
        free(r);
        return -ENOMEM;
    }
    r->in.query_limits = like->query_limits;
    r->max = max_waiting;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    int rc = pthread_create(&r->th, NULL, run, r);
    if (rc) {
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        ingest_cleanup(&r->in);
        free(r);
        return -rc;
    }
    *out = r;
    return 0;
}

void reads_submit(struct reads *r, struct ingest *in, const struct bridge_msg *m,
                  const struct bridge_topic *t)
{
    size_t rt = m->response_topic ? m->response_topic_len : 0;
    size_t cl = m->correlation ? m->correlation_len : 0;
    struct read_msg *rm = malloc(sizeof(*rm) + m->topic_len + 1 + m->len + rt + cl);
    pthread_mutex_lock(&r->lock);
    bool full = r->n >= r->max;
    pthread_mutex_unlock(&r->lock);
    if (!rm || full) {
        free(rm);
        requests_refuse(in, m, t, 429,
                        full ? "too many reads wait; ask again later" : "out of memory");
        return;
    }
    char *p = rm->data;
    rm->m = *m;
    memcpy(p, m->topic, m->topic_len);
    p[m->topic_len] = '\0';
    rm->m.topic = p;
    rm->t = *t;
    if (t->id)
        rm->t.id = p + (t->id - m->topic); /* the id lies in the topic */
    p += m->topic_len + 1;
    if (m->len)
        memcpy(p, m->payload, m->len);
    rm->m.payload = p;
    p += m->len;
    if (rt) {
        memcpy(p, m->response_topic, rt);
        rm->m.response_topic = p;
        p += rt;
    }
    if (cl) {
        memcpy(p, m->correlation, cl);
        rm->m.correlation = p;
    }
    rm->next = NULL;
    pthread_mutex_lock(&r->lock);
    if (r->tail)
        r->tail->next = rm;
    else
        r->head = rm;
    r->tail = rm;
    r->n++;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

void reads_stop(struct reads *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->th, NULL);
    for (struct read_msg *rm = r->head, *next; rm; rm = next) {
        next = rm->next;
        free(rm);
    }
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    ingest_cleanup(&r->in);
    free(r);
}
