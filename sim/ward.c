/* ward: twinsim's ward plan and its nurses' model (tasks, the walk, the service); no MQTT. */
#include "ward.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#define NS_PER_S 1e9

void ward_bed_pos(unsigned k, double *x, double *y)
{
    *x = 2.0 + 4.0 * (double)(k / 2);
    *y = k % 2 == 0 ? 0.0 : 8.0;
}

void ward_station_pos(unsigned i, double *x, double *y)
{
    *x = 2.0 * (double)i;
    *y = 4.0;
}

void ward_nurse_init(struct ward_nurse *n, double x, double y, double speed, double service_s,
                     int64_t now_ns)
{
    memset(n, 0, sizeof *n);
    n->x = x;
    n->y = y;
    n->speed = speed;
    n->service_ns = (int64_t)llround(service_s * NS_PER_S);
    n->at_ns = now_ns;
}

static struct ward_task *task_at(struct ward_nurse *n, unsigned j)
{
    return &n->task[(n->head + j) % WARD_QUEUE_MAX];
}

int ward_nurse_attend(struct ward_nurse *n, const struct ward_task *t, int64_t now_ns)
{
    if (n->len == WARD_QUEUE_MAX)
        return -ENOSPC;
    if (n->len == 0)
        n->at_ns = now_ns; /* a free nurse stands still: her clock is now */
    struct ward_task *q = task_at(n, n->len++);
    *q = *t;
    q->queued_ns = now_ns;
    q->started_ns = 0;
    q->arrived_ns = 0;
    q->walked_m = 0;
    return 0;
}

unsigned ward_nurse_cancel(struct ward_nurse *n, const char *demand, int64_t now_ns,
                           struct ward_task *dropped)
{
    struct ward_task keep[WARD_QUEUE_MAX];
    unsigned nk = 0, nd = 0;
    for (unsigned j = 0; j < n->len; j++) {
        struct ward_task *t = task_at(n, j);
        if (!t->arrived_ns && strcmp(t->demand, demand) == 0)
            dropped[nd++] = *t;
        else
            keep[nk++] = *t;
    }
    if (nd == 0)
        return 0;
    n->head = 0;
    n->len = nk;
    memcpy(n->task, keep, nk * sizeof keep[0]);
    /* a next task's walk begins from here, now; one being walked to or served goes on */
    if ((nk == 0 || !n->task[0].started_ns) && n->at_ns < now_ns)
        n->at_ns = now_ns;
    return nd;
}

bool ward_nurse_step(struct ward_nurse *n, int64_t now_ns, struct ward_event *ev)
{
    if (n->len == 0) {
        if (n->at_ns < now_ns)
            n->at_ns = now_ns;
        return false;
    }
    struct ward_task *t = task_at(n, 0);
    if (!t->started_ns) {
        t->started_ns = n->at_ns > t->queued_ns ? n->at_ns : t->queued_ns;
        if (t->started_ns == 0)
            t->started_ns = 1; /* 0 means "waiting" */
        n->at_ns = t->started_ns;
        *ev = (struct ward_event){.kind = WARD_EV_WALK, .at_ns = t->started_ns, .task = *t};
        return true;
    }
    if (!t->arrived_ns) {
        double dx = t->x - n->x, dy = t->y - n->y, dist = hypot(dx, dy);
        double can = n->speed * (double)(now_ns - n->at_ns) / NS_PER_S;
        if (can >= dist) {
            n->at_ns += (int64_t)llround(dist / n->speed * NS_PER_S);
            if (n->at_ns > now_ns)
                n->at_ns = now_ns;
            n->x = t->x;
            n->y = t->y;
            t->walked_m += dist;
            t->arrived_ns = n->at_ns;
            *ev = (struct ward_event){.kind = WARD_EV_ARRIVE, .at_ns = n->at_ns, .task = *t};
            return true;
        }
        if (can > 0) {
            n->x += dx / dist * can;
            n->y += dy / dist * can;
            t->walked_m += can;
        }
        n->at_ns = now_ns;
        return false;
    }
    int64_t end = t->arrived_ns + n->service_ns;
    if (now_ns >= end) {
        n->at_ns = end;
        *ev = (struct ward_event){.kind = WARD_EV_DONE, .at_ns = end, .task = *t};
        n->head = (n->head + 1) % WARD_QUEUE_MAX;
        n->len--;
        return true;
    }
    n->at_ns = now_ns;
    return false;
}

int64_t ward_nurse_next_ns(const struct ward_nurse *n)
{
    if (n->len == 0)
        return INT64_MAX;
    const struct ward_task *t = &n->task[n->head];
    if (!t->started_ns)
        return n->at_ns;
    if (!t->arrived_ns) {
        double dist = hypot(t->x - n->x, t->y - n->y);
        return n->at_ns + (int64_t)ceil(dist / n->speed * NS_PER_S);
    }
    return t->arrived_ns + n->service_ns;
}

const struct ward_task *ward_nurse_find(const struct ward_nurse *n, const void *ref, size_t len)
{
    for (unsigned j = 0; j < n->len; j++) {
        const struct ward_task *t = &n->task[(n->head + j) % WARD_QUEUE_MAX];
        if (t->ref_len == len && memcmp(t->ref, ref, len) == 0)
            return t;
    }
    return NULL;
}
