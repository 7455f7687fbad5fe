/* ward: twinsim's ward plan (where the beds and the nurses' station are) and its nurses' model
 * (a FIFO of tasks, the straight walk to each at a set speed, the service there) on a clock the
 * caller gives. It knows nothing of MQTT, msgpack or the monitors; twinsim.c wires it up.
 * Not thread-safe: one caller (twinsim's loop thread).
 */
#ifndef TWINSIM_WARD_H
#define TWINSIM_WARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WARD_QUEUE_MAX 16   /* tasks one nurse holds (being served, walked to, waiting) */
#define WARD_DEMAND_MAX 128 /* bytes of a demand's twin id */
#define WARD_REF_MAX 128    /* bytes of the caller's reference of a task */

/* Bed k (0-based device index): two rows along a corridor, 4 m apart along it, 8 m across. */
void ward_bed_pos(unsigned k, double *x, double *y);
/* Where nurse i (0-based) starts: the nurses' station, in the corridor (y = 4). */
void ward_station_pos(unsigned i, double *x, double *y);

struct ward_task {
    char demand[WARD_DEMAND_MAX + 1]; /* the twin to attend */
    double x, y;                      /* where it is */
    unsigned char ref[WARD_REF_MAX];  /* the caller's (twinsim: the command id, packed) */
    size_t ref_len;
    int64_t queued_ns;  /* given */
    int64_t started_ns; /* the walk began; 0: still waiting behind another task */
    int64_t arrived_ns; /* 0: not there yet */
    double walked_m;
};

struct ward_nurse {
    double x, y;                           /* metres, at at_ns */
    double speed;                          /* m/s, > 0 */
    int64_t service_ns;                    /* at the bedside */
    int64_t at_ns;                         /* the clock the model has reached */
    struct ward_task task[WARD_QUEUE_MAX]; /* a ring: task[head] is the current one */
    unsigned head, len;
};

enum ward_event_kind {
    WARD_EV_WALK,   /* the walk to a task began (started_ns) */
    WARD_EV_ARRIVE, /* arrived (arrived_ns): the service begins */
    WARD_EV_DONE,   /* served: the task is off the queue (ev.task is its copy) */
};

struct ward_event {
    enum ward_event_kind kind;
    int64_t at_ns;         /* when it happened (at or before the step's now) */
    struct ward_task task; /* a copy of the task, as of the event */
};

/* A free nurse at (x, y) at time now_ns; speed m/s (> 0) and service s (>= 0). */
void ward_nurse_init(struct ward_nurse *n, double x, double y, double speed, double service_s,
                     int64_t now_ns);

/* Queues task t (demand, x, y, ref; the rest is set here) at now_ns, after the nurse has been
 * stepped to now_ns. Returns 0, or -ENOSPC (WARD_QUEUE_MAX tasks already: nothing changes). */
int ward_nurse_attend(struct ward_nurse *n, const struct ward_task *t, int64_t now_ns);

/* Drops every task for `demand` that is waiting or being walked to (one being served
 * finishes), after the nurse has been stepped to now_ns; a nurse stopped mid-walk stays where
 * she is. Copies the dropped tasks to dropped (room for WARD_QUEUE_MAX) and returns how many. */
unsigned ward_nurse_cancel(struct ward_nurse *n, const char *demand, int64_t now_ns,
                           struct ward_task *dropped);

/* Advances the nurse towards now_ns up to its next event: returns true with *ev filled (call
 * again: more may follow), or false once it has reached now_ns. */
bool ward_nurse_step(struct ward_nurse *n, int64_t now_ns, struct ward_event *ev);

/* When ward_nurse_step would next return an event if nothing is queued meanwhile (INT64_MAX
 * when the nurse is free). */
int64_t ward_nurse_next_ns(const struct ward_nurse *n);

/* The task whose ref is ref[0..len), or NULL. */
const struct ward_task *ward_nurse_find(const struct ward_nurse *n, const void *ref, size_t len);

static inline bool ward_nurse_busy(const struct ward_nurse *n)
{
    return n->len > 0;
}

#endif
