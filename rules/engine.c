/* engine: which rules a change touches (the path index) and the state machine of each (rule,
 * twin): inactive -> pending (condition true, waiting `for`) -> firing -> inactive, with
 * cooldown, wake times and the transitions' actions. State lives with the host (LMDB in the
 * hub) and is read and written through struct rules_host, inside the host's transaction.
 *
 * Choices:
 * - A rule whose `for` is 0 goes from inactive straight to firing, with no pending event.
 * - The condition true during a cooldown makes the rule pending until the cooldown ends (and
 *   `for` has passed); it fires then if the condition still holds.
 * - A pending rule whose condition stops holding goes back to inactive, and says so with the
 *   event state "inactive"; a firing one resolves ("resolved") and runs on_resolve.
 * - A record is kept only while it says something: not inactive, in a cooldown, or with a
 *   wake time.
 * - A record of a changed definition (hash) starts over as inactive: its on_resolve is not run.
 * - every: P. A firing rule runs its on_fire again every P after it fired, at fired + k * P on
 *   the hub's clock, for as long as it stays firing: a periodic run, not a transition (no state
 *   changes, no event unless on_fire has an `event` action, which then publishes one with state
 *   "periodic"). Runs the hub's timer missed (the hub was down) are not made up: the next run is
 *   the first fired + k * P after the late one. A rule that is not firing costs nothing extra:
 *   its condition can only change with new data or with time, which the other wakes cover.
 * - every: with no when: is a schedule: its first evaluation for a twin (the twin's first change
 *   after the rule is loaded: any change runs a rule that reads nothing) runs on_fire at once,
 *   then every P after that, for as long as the twin exists and the rule is unchanged. It stays
 *   inactive (it is not an alarm: nothing shows it as firing) and keeps a record only for its
 *   next run.
 * - The next periodic run is stored in the record (repeat_at, format 'S'); records of the
 *   format before it ('R', 48 bytes) are read with none.
 */
#include "internal.h"

#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Changes
 * ------------------------------------------------------------------------------------------ */

void rules_changes_reset(struct rules_changes *c)
{
    c->all = false;
    c->n = 0;
}

void rules_changes_add(struct rules_changes *c, const char *path, size_t len)
{
    if (c->all)
        return;
    size_t used = c->n ? (size_t)c->off[c->n - 1] + c->len[c->n - 1] : 0;
    if (c->n == RULES_CHANGES_MAX || len > RULES_CHANGES_BYTES - used) {
        c->all = true;
        return;
    }
    for (unsigned i = 0; i < c->n; i++)
        if (c->len[i] == len && memcmp(c->buf + c->off[i], path, len) == 0)
            return;
    memcpy(c->buf + used, path, len);
    c->off[c->n] = (uint16_t)used;
    c->len[c->n] = (uint16_t)len;
    c->n++;
}

static void add_leaves(struct rules_changes *c, char *path, size_t len, const msgpack_object *o,
                       unsigned depth)
{
    if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size == 0 || depth >= TWIN_DEPTH_CAP) {
        rules_changes_add(c, path, len);
        return;
    }
    for (uint32_t i = 0; i < o->via.map.size && !c->all; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR || len + 1 + k->via.str.size > TWIN_PATH_MAX) {
            rules_changes_add(c, path, len);
            continue;
        }
        path[len] = '.';
        memcpy(path + len + 1, k->via.str.ptr, k->via.str.size);
        add_leaves(c, path, len + 1 + k->via.str.size, &o->via.map.ptr[i].val, depth + 1);
    }
}

void rules_changes_add_patch(struct rules_changes *c, const char *section,
                             const msgpack_object *patch)
{
    char path[TWIN_PATH_MAX + 1];
    size_t n = strlen(section);
    if (n > TWIN_PATH_MAX)
        return;
    memcpy(path, section, n);
    add_leaves(c, path, n, patch, 0);
}

/* Whether one of a and b is the other or a dotted prefix of it. */
static bool overlap(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    if (memcmp(a, b, n) != 0)
        return false;
    return alen == blen || (alen > blen ? a[n] : b[n]) == '.';
}

bool rules_changes_touch(const struct rules_changes *c, const char *path, size_t len)
{
    if (c->all)
        return true;
    for (unsigned i = 0; i < c->n; i++)
        if (overlap(c->buf + c->off[i], c->len[i], path, len))
            return true;
    return false;
}

/* ---------------------------------------------------------------------------------------------
 * The path index
 * ------------------------------------------------------------------------------------------ */

static uint64_t hash_key(const char *k, size_t n)
{
    return rules__hash(0, k, n);
}

/* The index key of a path a rule reads: "reported.a" for reported.a.b, "reported" for the
 * section, "connected", or "*" for what every change touches (version, last_seen, seq) or
 * never changes (id, created). */
static void key_of(const struct path *p, const char **k, size_t *n)
{
    switch (p->root) {
    case ROOT_REPORTED:
    case ROOT_DESIRED:
    case ROOT_DELTA:
    case ROOT_PREDICTED: {
        const char *dot = memchr(p->full, '.', p->full_len);
        const char *dot2 = dot ? memchr(dot + 1, '.', p->full_len - (size_t)(dot + 1 - p->full))
                               : NULL;
        *k = p->full;
        *n = dot2 ? (size_t)(dot2 - p->full) : p->full_len;
        return;
    }
    case ROOT_CONNECTED:
        *k = "connected";
        *n = 9;
        return;
    default:
        *k = "*";
        *n = 1;
        return;
    }
}

static struct index_slot *slot_find(const struct rules_set *rs, const char *k, size_t n)
{
    if (!rs->index_cap)
        return NULL;
    unsigned mask = rs->index_cap - 1;
    for (unsigned i = (unsigned)hash_key(k, n) & mask;; i = (i + 1) & mask) {
        struct index_slot *s = &rs->index[i];
        if (!s->key)
            return s;
        if (s->key_len == n && memcmp(s->key, k, n) == 0)
            return s;
    }
}

static int index_add(struct rules_set *rs, const char *k, size_t n, unsigned rank)
{
    struct index_slot *s = slot_find(rs, k, n);
    if (!s->key) {
        s->key = k;
        s->key_len = n;
    }
    if (s->n && s->rules[s->n - 1] == rank)
        return 0;
    if (s->n == s->cap) {
        unsigned cap = s->cap ? s->cap * 2 : 4;
        unsigned *r = realloc(s->rules, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        s->rules = r;
        s->cap = cap;
    }
    s->rules[s->n++] = rank;
    return 0;
}

void rules__index_free(struct rules_set *rs)
{
    for (unsigned i = 0; i < rs->index_cap; i++)
        free(rs->index[i].rules);
    free(rs->index);
    free(rs->byname);
    rs->index = NULL;
    rs->byname = NULL;
    rs->index_cap = rs->byname_cap = 0;
}

int rules__index_build(struct rules_set *rs)
{
    unsigned keys = 1;
    rules__index_free(rs);
    for (unsigned r = 0; r < rs->nrules; r++)
        keys += rs->rules[r].when->npaths + 1;
    unsigned cap = 16;
    while (cap < keys * 2)
        cap *= 2;
    rs->index = calloc(cap, sizeof(*rs->index));
    unsigned ncap = 16;
    while (ncap < rs->nrules * 2)
        ncap *= 2;
    rs->byname = calloc(ncap, sizeof(*rs->byname));
    if (!rs->index || !rs->byname)
        goto nomem;
    rs->index_cap = cap;
    rs->byname_cap = ncap;
    for (unsigned r = 0; r < rs->nrules; r++) {
        const struct rules_expr *e = rs->rules[r].when;
        bool any = e->reads_all || e->npaths == 0;
        for (unsigned p = 0; p < e->npaths && !any; p++) {
            const char *k;
            size_t n;
            key_of(&e->paths[p], &k, &n);
            if (index_add(rs, k, n, r) < 0)
                goto nomem;
        }
        if (any && index_add(rs, "*", 1, r) < 0)
            goto nomem;
        const char *name = rs->rules[r].name;
        unsigned mask = ncap - 1, i = (unsigned)hash_key(name, strlen(name)) & mask;
        while (rs->byname[i])
            i = (i + 1) & mask;
        rs->byname[i] = r + 1;
    }
    return 0;
nomem:
    rules__index_free(rs);
    return -ENOMEM;
}

static void slot_each(const struct index_slot *s, void (*cb)(void *, unsigned), void *ctx)
{
    if (s && s->key)
        for (unsigned i = 0; i < s->n; i++)
            cb(ctx, s->rules[i]);
}

void rules__index_touched(const struct rules_set *rs, const char *path, size_t len,
                          void (*cb)(void *ctx, unsigned rank), void *ctx)
{
    const char *dot = memchr(path, '.', len);
    if (!dot) {
        /* a whole section (or connected): every key under it */
        for (unsigned i = 0; i < rs->index_cap; i++) {
            const struct index_slot *s = &rs->index[i];
            if (s->key && overlap(s->key, s->key_len, path, len))
                slot_each(s, cb, ctx);
        }
    } else {
        const char *dot2 = memchr(dot + 1, '.', len - (size_t)(dot + 1 - path));
        size_t two = dot2 ? (size_t)(dot2 - path) : len;
        slot_each(slot_find(rs, path, two), cb, ctx);
        slot_each(slot_find(rs, path, (size_t)(dot - path)), cb, ctx);
    }
    slot_each(slot_find(rs, "*", 1), cb, ctx);
}

int rules_set_find(const struct rules_set *rs, const char *name, size_t len)
{
    if (!rs->byname_cap)
        return -1;
    unsigned mask = rs->byname_cap - 1;
    for (unsigned i = (unsigned)hash_key(name, len) & mask; rs->byname[i]; i = (i + 1) & mask) {
        const struct rule *r = &rs->rules[rs->byname[i] - 1];
        if (strlen(r->name) == len && memcmp(r->name, name, len) == 0)
            return (int)(rs->byname[i] - 1);
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Records
 * ------------------------------------------------------------------------------------------ */

#define RECORD_MAGIC_V1 0x52 /* 'R', version 1: 48 bytes */
#define RECORD_MAGIC 0x53    /* 'S', version 2: version 1 and repeat_at, 56 bytes */

void rules_record_encode(const struct rules_record *r, unsigned char *buf)
{
    memset(buf, 0, RULES_STATE_LEN);
    buf[0] = RECORD_MAGIC;
    buf[1] = (unsigned char)r->state;
    rules__put64(buf + 8, r->def_hash);
    rules__put64(buf + 16, (uint64_t)r->since);
    rules__put64(buf + 24, (uint64_t)r->fire_at);
    rules__put64(buf + 32, (uint64_t)r->cooldown_until);
    rules__put64(buf + 40, (uint64_t)r->wake);
    rules__put64(buf + 48, (uint64_t)r->repeat_at);
}

int rules_record_decode(const void *buf, size_t len, struct rules_record *r)
{
    const unsigned char *b = buf;
    bool v1 = b && (len == RULES_STATE_V1_LEN || len == RULES_STATE_LEN) && b[0] == RECORD_MAGIC_V1;
    if (v1 && len == RULES_STATE_LEN) /* zero-padded by the host */
        for (size_t i = RULES_STATE_V1_LEN; i < len; i++)
            v1 = v1 && b[i] == 0;
    if (!v1 && (!b || len != RULES_STATE_LEN || b[0] != RECORD_MAGIC))
        return -EBADMSG;
    if (b[1] > RULES_FIRING)
        return -EBADMSG;
    r->state = (enum rules_state)b[1];
    r->def_hash = rules__get64(b + 8);
    r->since = (int64_t)rules__get64(b + 16);
    r->fire_at = (int64_t)rules__get64(b + 24);
    r->cooldown_until = (int64_t)rules__get64(b + 32);
    r->wake = (int64_t)rules__get64(b + 40);
    r->repeat_at = v1 ? 0 : (int64_t)rules__get64(b + 48);
    if (r->repeat_at < 0)
        return -EBADMSG;
    return 0;
}

bool rules_record_current(const struct rules_set *rs, const char *rule, size_t len,
                          const void *buf, size_t n)
{
    struct rules_record r;
    int i = rules_set_find(rs, rule, len);
    return i >= 0 && rules_record_decode(buf, n, &r) == 0 && r.def_hash == rs->rules[i].hash;
}

const char *rules_state_name(enum rules_state s)
{
    return s == RULES_PENDING ? "pending" : s == RULES_FIRING ? "firing" : "inactive";
}

unsigned rules_set_count(const struct rules_set *rs)
{
    return rs->nrules;
}

const char *rules_set_name(const struct rules_set *rs, unsigned i)
{
    return i < rs->nrules ? rs->rules[i].name : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Runs
 * ------------------------------------------------------------------------------------------ */

struct rules_scratch {
    uint64_t *marks; /* a bit per rank: run it */
    unsigned nwords;
    char *stale; /* timer: names of records to delete, NUL-separated */
    size_t nstale, capstale;
    int64_t other_wake; /* timer: earliest wake of the records not run */
    char id[TWIN_ID_MAX + 1];
};

struct rules_scratch *rules_scratch_new(void)
{
    return calloc(1, sizeof(struct rules_scratch));
}

void rules_scratch_free(struct rules_scratch *sc)
{
    if (!sc)
        return;
    free(sc->marks);
    free(sc->stale);
    free(sc);
}

static int scratch_fit(struct rules_scratch *sc, unsigned nrules)
{
    unsigned words = (nrules + 63) / 64;
    if (words > sc->nwords) {
        uint64_t *m = realloc(sc->marks, words * sizeof(*m));
        if (!m)
            return -ENOMEM;
        sc->marks = m;
        sc->nwords = words;
    }
    if (sc->nwords) /* memset of NULL is undefined even for 0 bytes */
        memset(sc->marks, 0, sc->nwords * sizeof(*sc->marks));
    return 0;
}

static void mark(void *ctx, unsigned rank)
{
    struct rules_scratch *sc = ctx;
    sc->marks[rank / 64] |= 1ull << (rank % 64);
}

/* Marks the rules the changes from index `from` on touch. */
static void mark_changes(const struct rules_set *rs, struct rules_scratch *sc,
                         const struct rules_changes *c, unsigned from)
{
    if (c->all) {
        for (unsigned r = 0; r < rs->nrules; r++)
            mark(sc, r);
        return;
    }
    for (unsigned i = from; i < c->n; i++)
        rules__index_touched(rs, c->buf + c->off[i], c->len[i], mark, sc);
}

static int run_actions(const struct rules_host *h, const struct rules_fire *f,
                       const struct action_list *l)
{
    for (unsigned i = 0; i < l->n; i++) {
        if (l->v[i].kind == RULES_ACT_EVENT)
            continue; /* its fields ride on the transition's event */
        int rc = h->action(h->ctx, f, &l->v[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int transition(const struct rules_host *h, const struct rule *r, struct rules_fire *f,
                      enum rules_state from, enum rules_state to, int64_t now)
{
    const struct action_list *l = NULL;
    f->rule = r->name;
    f->from = from;
    f->to = to;
    f->ts = now;
    f->fields = NULL;
    if (to == RULES_FIRING) {
        f->event = "firing";
        l = &r->on_fire;
    } else if (to == RULES_PENDING) {
        f->event = "pending";
    } else if (from == RULES_FIRING) {
        f->event = "resolved";
        l = &r->on_resolve;
    } else {
        f->event = "inactive";
    }
    int rc;
    if (l) {
        f->fields = l->event_fields;
        if ((rc = run_actions(h, f, l)) < 0)
            return rc;
    }
    return h->transition(h->ctx, f);
}

static bool same_record(const struct rules_record *a, const struct rules_record *b)
{
    return a->state == b->state && a->def_hash == b->def_hash && a->since == b->since &&
           a->fire_at == b->fire_at && a->cooldown_until == b->cooldown_until &&
           a->wake == b->wake && a->repeat_at == b->repeat_at;
}

/* The first time of the series at + k * every (k >= 1) after `now`; INT64_MAX past the clock's
 * range. `at` is a time of the series (at > 0, every > 0). */
static int64_t next_period(int64_t at, int64_t now, int64_t every)
{
    if (at > now)
        return at;
    int64_t k = (now - at) / every + 1;
    if (k > (INT64_MAX - at) / every)
        return INT64_MAX;
    return at + k * every;
}

/* One periodic run of r's on_fire for a rule in state `state` (which it stays in). */
static int periodic(const struct rules_host *h, const struct rule *r, struct rules_fire *f,
                    enum rules_state state, int64_t now, struct rules_run_result *res)
{
    f->rule = r->name;
    f->from = f->to = state;
    f->periodic = true;
    f->event = "periodic";
    f->ts = now;
    f->fields = r->on_fire.event_fields;
    res->periodic++;
    int rc = run_actions(h, f, &r->on_fire);
    if (rc < 0 || !f->fields)
        return rc;
    return h->transition(h->ctx, f);
}

/* Writes rec (or deletes it when it says nothing) unless it is what was stored. */
static int record_store(const struct rule *r, const struct rules_host *h, struct rules_record *rec,
                        const struct rules_record *old, bool stored, bool existed, int64_t now,
                        struct rules_run_result *res)
{
    unsigned char buf[RULES_STATE_LEN];
    size_t nlen = strlen(r->name);
    int rc;
    if (rec->cooldown_until <= now)
        rec->cooldown_until = 0;
    bool empty = rec->state == RULES_INACTIVE && rec->cooldown_until == 0 &&
                 rec->wake == INT64_MAX && rec->repeat_at == 0;
    if (empty) {
        if (stored && (rc = h->state_del(h->ctx, r->name, nlen)) < 0 && rc != -ENOENT)
            return rc;
    } else if (!existed || !same_record(rec, old)) {
        rules_record_encode(rec, buf);
        if ((rc = h->state_put(h->ctx, r->name, nlen, buf)) < 0)
            return rc;
    }
    if (rec->wake < res->wake)
        res->wake = rec->wake;
    return 0;
}

/* A schedule (every: with no when:): on_fire at its first evaluation for the twin, then every
 * period; no state. */
static int step_schedule(const struct rule *r, struct rules_twin *tw, const struct rules_host *h,
                         struct rules_record *rec, const struct rules_record *old, bool stored,
                         bool existed, struct rules_run_result *res)
{
    int64_t now = tw->now;
    if (!existed) {
        *rec = (struct rules_record){
            .state = RULES_INACTIVE, .def_hash = r->hash, .since = now, .repeat_at = now};
    }
    /* a schedule has no state; a record with no next run (never stored so) starts one now */
    rec->state = RULES_INACTIVE;
    rec->fire_at = 0;
    if (rec->repeat_at <= 0)
        rec->repeat_at = now;
    if (rec->repeat_at <= now) {
        struct rules_fire f = {0};
        int rc = periodic(h, r, &f, RULES_INACTIVE, now, res);
        if (rc < 0)
            return rc;
        rec->repeat_at = next_period(rec->repeat_at, now, r->every_ms);
    }
    rec->wake = rec->repeat_at;
    return record_store(r, h, rec, old, stored, existed, now, res);
}

/* Evaluates rule `r` for the twin and moves its state machine. */
static int step(const struct rule *r, struct rules_twin *tw, const struct rules_host *h,
                struct rules_run_result *res)
{
    unsigned char buf[RULES_STATE_LEN];
    struct rules_record old = {.state = RULES_INACTIVE, .wake = INT64_MAX}, rec;
    size_t nlen = strlen(r->name);
    bool existed = false;
    int rc = h->state_get(h->ctx, r->name, nlen, buf);
    bool stored = rc == 0;
    if (stored)
        existed = rules_record_decode(buf, RULES_STATE_LEN, &rec) == 0 && rec.def_hash == r->hash;
    else if (rc != -ENOENT)
        return rc;
    if (existed)
        old = rec;
    rec = old;
    rec.def_hash = r->hash;
    if (r->schedule)
        return step_schedule(r, tw, h, &rec, &old, stored, existed, res);

    struct rules_fire f = {0};
    struct rules_value v;
    int64_t now = tw->now, wake = INT64_MAX;
    if ((rc = rules__eval(r->when, tw, &v, &wake, &f)) < 0)
        return rc;
    res->evaluated++;
    bool cond = rules_value_true(&v);
    enum rules_state next = old.state;
    switch (old.state) {
    case RULES_INACTIVE:
        if (cond) {
            int64_t at = r->for_ms > INT64_MAX - now ? INT64_MAX : now + r->for_ms;
            if (at < old.cooldown_until)
                at = old.cooldown_until;
            next = at <= now ? RULES_FIRING : RULES_PENDING;
            rec.since = now;
            rec.fire_at = at;
        }
        break;
    case RULES_PENDING:
        if (!cond)
            next = RULES_INACTIVE;
        else if (now >= old.fire_at)
            next = RULES_FIRING;
        break;
    case RULES_FIRING:
        if (!cond) {
            next = RULES_INACTIVE;
            rec.cooldown_until = r->cooldown_ms > INT64_MAX - now ? INT64_MAX : now + r->cooldown_ms;
        }
        break;
    }
    if (next != old.state) {
        if (next != RULES_PENDING)
            rec.since = now;
        if (next == RULES_INACTIVE)
            rec.fire_at = 0;
        rec.state = next;
        res->transitions++;
        if ((rc = transition(h, r, &f, old.state, next, now)) < 0)
            return rc;
        /* every: the periodic runs follow the firing; they end with it */
        rec.repeat_at = next == RULES_FIRING && r->every_ms
                            ? (r->every_ms > INT64_MAX - now ? INT64_MAX : now + r->every_ms)
                            : 0;
    } else if (rec.state == RULES_FIRING && r->every_ms) {
        if (rec.repeat_at <= 0) /* cannot be stored so; start the series here */
            rec.repeat_at = now;
        if (rec.repeat_at <= now) {
            if ((rc = periodic(h, r, &f, RULES_FIRING, now, res)) < 0)
                return rc;
            rec.repeat_at = next_period(rec.repeat_at, now, r->every_ms);
        }
    }
    if (rec.state == RULES_PENDING && rec.fire_at < wake)
        wake = rec.fire_at;
    if (rec.repeat_at && rec.repeat_at < wake)
        wake = rec.repeat_at;
    rec.wake = wake;
    return record_store(r, h, &rec, &old, stored, existed, now, res);
}

static bool admits(const struct rule *r, const char *id)
{
    return !r->match || fnmatch(r->match, id, 0) == 0;
}

/* Runs every marked rule in rank order; what their actions write marks more. */
static int run_marked(const struct rules_set *rs, struct rules_scratch *sc, struct rules_twin *tw,
                      const struct rules_host *h, struct rules_run_result *res)
{
    unsigned seen = tw->changes ? tw->changes->n : 0;
    for (unsigned w = 0; w < sc->nwords && w * 64 < rs->nrules; w++) {
        while (sc->marks[w]) {
            unsigned bit = (unsigned)__builtin_ctzll(sc->marks[w]);
            sc->marks[w] &= sc->marks[w] - 1;
            unsigned rank = w * 64 + bit;
            if (rank >= rs->nrules)
                break;
            const struct rule *r = &rs->rules[rank];
            if (!admits(r, sc->id))
                continue;
            int rc = step(r, tw, h, res);
            if (rc < 0)
                return rc;
            /* actions wrote something: the rules after this one that read it run too (the
             * load order guarantees they come later); the words before w are done, and in w
             * the bits up to this rank are cleared, so no rule runs twice */
            if (tw->changes && (tw->changes->n != seen || tw->changes->all)) {
                mark_changes(rs, sc, tw->changes, seen);
                seen = tw->changes->n;
                sc->marks[w] &= bit == 63 ? 0 : ~0ull << (bit + 1);
            }
        }
    }
    return 0;
}

static int begin(const struct rules_set *rs, struct rules_scratch *sc, struct rules_twin *tw,
                 struct rules_run_result *res)
{
    memset(res, 0, sizeof(*res));
    res->wake = INT64_MAX;
    if (tw->doc->id_len > TWIN_ID_MAX)
        return -EINVAL;
    memcpy(sc->id, tw->doc->id, tw->doc->id_len);
    sc->id[tw->doc->id_len] = '\0';
    return scratch_fit(sc, rs->nrules);
}

int rules_run_change(const struct rules_set *rs, struct rules_scratch *sc, struct rules_twin *tw,
                     const struct rules_host *h, struct rules_run_result *res)
{
    int rc = begin(rs, sc, tw, res);
    if (rc < 0 || rs->nrules == 0)
        return rc;
    if (tw->changes)
        mark_changes(rs, sc, tw->changes, 0);
    return run_marked(rs, sc, tw, h, res);
}

struct timer_walk {
    const struct rules_set *rs;
    struct rules_scratch *sc;
    int64_t now;
    int rc;
};

/* Remembers the name of a record to delete after the walk (not during: the host may be walking
 * a cursor over the records). */
static int remember_stale(struct rules_scratch *sc, const char *rule, size_t len)
{
    if (sc->nstale + len + 1 > sc->capstale) {
        size_t cap = sc->capstale ? sc->capstale * 2 : 256;
        while (cap < sc->nstale + len + 1)
            cap *= 2;
        char *p = realloc(sc->stale, cap);
        if (!p)
            return -ENOMEM;
        sc->stale = p;
        sc->capstale = cap;
    }
    memcpy(sc->stale + sc->nstale, rule, len);
    sc->stale[sc->nstale + len] = '\0';
    sc->nstale += len + 1;
    return 0;
}

static int timer_record(void *ctx, const char *rule, size_t len, const void *buf, size_t n)
{
    struct timer_walk *t = ctx;
    struct rules_record rec;
    int i = rules_set_find(t->rs, rule, len);
    if (i < 0 || rules_record_decode(buf, n, &rec) < 0 || rec.def_hash != t->rs->rules[i].hash)
        return t->rc = remember_stale(t->sc, rule, len); /* gone or redefined */
    if (rec.wake <= t->now)
        mark(t->sc, (unsigned)i);
    else if (rec.wake < t->sc->other_wake)
        t->sc->other_wake = rec.wake;
    return 0;
}

int rules_run_timer(const struct rules_set *rs, struct rules_scratch *sc, struct rules_twin *tw,
                    const struct rules_host *h, struct rules_run_result *res)
{
    int rc = begin(rs, sc, tw, res);
    if (rc < 0)
        return rc;
    sc->nstale = 0;
    sc->other_wake = INT64_MAX;
    struct timer_walk t = {.rs = rs, .sc = sc, .now = tw->now};
    if ((rc = h->state_list(h->ctx, timer_record, &t)) < 0)
        return rc;
    if (t.rc < 0)
        return t.rc;
    for (size_t off = 0; off < sc->nstale; off += strlen(sc->stale + off) + 1)
        if ((rc = h->state_del(h->ctx, sc->stale + off, strlen(sc->stale + off))) < 0 &&
            rc != -ENOENT)
            return rc;
    if ((rc = run_marked(rs, sc, tw, h, res)) < 0)
        return rc;
    if (sc->other_wake < res->wake)
        res->wake = sc->other_wake;
    return 0;
}

bool rules_glob_match(const char *g, const char *s, size_t len)
{
    char id[TWIN_ID_MAX + 1];
    if (!g)
        return true;
    if (len > TWIN_ID_MAX)
        return false;
    memcpy(id, s, len);
    id[len] = '\0';
    return fnmatch(g, id, 0) == 0;
}
