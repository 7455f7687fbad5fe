/* test_assign.c: unit tests of the dispatch solver (rules/assign.c) through rules.h: the LP
 * against an exhaustive search on thousands of small random instances, the greedy baseline on
 * hand-made cases, the empty and refused inputs, a large instance against greedy, and two
 * threads solving at once. Seeds are fixed: a failure repeats.
 * `test_assign NAME` runs one test. */
#include "rules.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static const char *current;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: [%s] ", __FILE__, __LINE__, current);                              \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        failures++;                                                                                \
    } while (0)
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            FAIL("CHECK failed: %s", #c);                                                          \
    } while (0)
#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            FAIL("%s is %lld, expected %lld", #a, a_, b_);                                         \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double a_ = (a), b_ = (b);                                                                 \
        if (!(fabs(a_ - b_) <= (tol)))                                                             \
            FAIL("%s is %.17g, expected %.17g", #a, a_, b_);                                       \
    } while (0)

/* splitmix64: a fixed sequence per seed on every platform. */
static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
    return (double)(next(s) >> 11) / 9007199254740992.0;
}

static unsigned below(uint64_t *s, unsigned n)
{
    return (unsigned)(next(s) % n);
}

/* ---------------------------------------------------------------------------------------------
 * What an answer must be
 * ------------------------------------------------------------------------------------------ */

struct score {
    double priority, cost;
};

/* Checks that out is an assignment of p (allowed pairs only, no capacity exceeded) and that
 * total is its cost; returns what it serves and costs. */
static struct score check_feasible(const struct rules_assign *p, const int *out, double total,
                                   const char *who)
{
    struct score s = {0, 0};
    unsigned *used = calloc(p->n_resources + 1, sizeof(*used));
    for (unsigned i = 0; i < p->n_demands; i++) {
        if (out[i] == -1)
            continue;
        if (out[i] < 0 || (unsigned)out[i] >= p->n_resources) {
            FAIL("%s: demand %u has resource %d of %u", who, i, out[i], p->n_resources);
            continue;
        }
        double c = p->cost[(size_t)i * p->n_resources + (unsigned)out[i]];
        if (isnan(c))
            FAIL("%s: demand %u got resource %d, not allowed", who, i, out[i]);
        if (++used[out[i]] > p->capacity[out[i]])
            FAIL("%s: resource %d over its capacity %u", who, out[i], p->capacity[out[i]]);
        s.priority += p->priority[i];
        s.cost += c;
    }
    if (!(fabs(total - s.cost) <= 1e-9 * (1 + fabs(s.cost))))
        FAIL("%s: total %.17g, the pairs sum to %.17g", who, total, s.cost);
    free(used);
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * Exhaustive search: every demand to each allowed resource with room, or to none; best is the
 * greatest priority served, then the least cost. Branches that cannot reach the best priority,
 * or can only tie it at no less cost, are cut.
 * ------------------------------------------------------------------------------------------ */

#define PRI_EPS 1e-9

struct search {
    const struct rules_assign *p;
    unsigned room[8];
    double rest_pri[9], rest_cost[9]; /* from demand i on: priority sum, least possible cost */
    struct score best;
};

static void search(struct search *s, unsigned i, double pri, double cost)
{
    const struct rules_assign *p = s->p;
    if (pri + s->rest_pri[i] < s->best.priority - PRI_EPS)
        return;
    if (pri + s->rest_pri[i] <= s->best.priority + PRI_EPS &&
        cost + s->rest_cost[i] >= s->best.cost)
        return;
    if (i == p->n_demands) {
        if (pri > s->best.priority + PRI_EPS ||
            (pri >= s->best.priority - PRI_EPS && cost < s->best.cost))
            s->best = (struct score){pri, cost};
        return;
    }
    for (unsigned j = 0; j < p->n_resources; j++) {
        double c = p->cost[i * p->n_resources + j];
        if (isnan(c) || s->room[j] == 0)
            continue;
        s->room[j]--;
        search(s, i + 1, pri + p->priority[i], cost + c);
        s->room[j]++;
    }
    search(s, i + 1, pri, cost);
}

static struct score brute(const struct rules_assign *p)
{
    struct search s = {.p = p, .best = {-1, INFINITY}};
    for (unsigned j = 0; j < p->n_resources; j++)
        s.room[j] = p->capacity[j];
    for (unsigned i = p->n_demands; i-- > 0;) {
        double lo = 0;
        for (unsigned j = 0; j < p->n_resources; j++)
            if (!isnan(p->cost[i * p->n_resources + j]))
                lo = fmin(lo, p->cost[i * p->n_resources + j]);
        s.rest_pri[i] = s.rest_pri[i + 1] + p->priority[i];
        s.rest_cost[i] = s.rest_cost[i + 1] + lo;
    }
    search(&s, 0, 0, 0);
    return s.best;
}

/* A small random instance: costs in one of three styles (small integers with ties and
 * negatives, reals of both signs, reals with a few repeated values), priorities from {1, 2, 3}
 * or real. */
struct small {
    struct rules_assign p;
    double cost[64], priority[8];
    unsigned capacity[8];
};

static void small_random(uint64_t *rng, struct small *s)
{
    unsigned n = 1 + below(rng, 8), m = 1 + below(rng, 8);
    unsigned style = below(rng, 3);
    bool real_pri = below(rng, 2);
    for (unsigned k = 0; k < n * m; k++) {
        if (uniform(rng) < 0.2)
            s->cost[k] = NAN;
        else if (style == 0)
            s->cost[k] = (double)below(rng, 6) - 2;
        else if (style == 1)
            s->cost[k] = uniform(rng) * 20 - 5;
        else
            s->cost[k] = (double)below(rng, 4) * 0.25 + (below(rng, 3) ? 0 : uniform(rng));
    }
    for (unsigned j = 0; j < m; j++)
        s->capacity[j] = below(rng, 4);
    for (unsigned i = 0; i < n; i++)
        s->priority[i] = real_pri ? 0.05 + 3 * uniform(rng) : 1 + below(rng, 3);
    s->p = (struct rules_assign){n, m, s->cost, s->capacity, s->priority};
}

static void test_brute_force(void)
{
    uint64_t rng = 20240611;
    int out[8], gout[8];
    unsigned greedy_fewer = 0, greedy_worse = 0;
    for (int t = 0; t < 3000; t++) {
        struct small s;
        small_random(&rng, &s);
        double total = NAN, gtotal = NAN;
        int rc = rules_assign_solve(&s.p, out, &total);
        if (rc != 0) {
            FAIL("instance %d: rules_assign_solve returned %d", t, rc);
            continue;
        }
        struct score got = check_feasible(&s.p, out, total, "solve");
        struct score want = brute(&s.p);
        if (!(fabs(got.priority - want.priority) <= PRI_EPS) ||
            !(fabs(got.cost - want.cost) <= 1e-6 * (1 + fabs(want.cost))))
            FAIL("instance %d (%ux%u): served %.17g at %.17g, best is %.17g at %.17g", t,
                 s.p.n_demands, s.p.n_resources, got.priority, got.cost, want.priority, want.cost);
        CHECK_INT(rules_assign_greedy(&s.p, gout, &gtotal), 0);
        struct score g = check_feasible(&s.p, gout, gtotal, "greedy");
        CHECK(g.priority <= want.priority + PRI_EPS);
        if (fabs(g.priority - want.priority) <= PRI_EPS) {
            CHECK(g.cost >= want.cost - 1e-9);
            greedy_worse += g.cost > want.cost + 1e-9;
        } else {
            greedy_fewer++;
        }
    }
    /* The instances must exercise both ways greedy falls short, or they test little. */
    CHECK(greedy_worse > 50);
    CHECK(greedy_fewer > 50);
}

/* ---------------------------------------------------------------------------------------------
 * Hand-made cases
 * ------------------------------------------------------------------------------------------ */

struct want {
    int out[4];
    double total;
};

static void check_exact(const struct rules_assign *p, const int *want, double total, bool greedy,
                        int line)
{
    int out[8];
    double got = NAN;
    int rc = greedy ? rules_assign_greedy(p, out, &got) : rules_assign_solve(p, out, &got);
    if (rc != 0) {
        FAIL("line %d: returned %d", line, rc);
        return;
    }
    for (unsigned i = 0; i < p->n_demands; i++)
        if (out[i] != want[i])
            FAIL("line %d (%s): demand %u got %d, expected %d", line, greedy ? "greedy" : "solve",
                 i, out[i], want[i]);
    if (!(fabs(got - total) <= 1e-12))
        FAIL("line %d (%s): total %.17g, expected %.17g", line, greedy ? "greedy" : "solve", got,
             total);
}

static void test_greedy(void)
{
    /* The priority 2 demand chooses first; its cheaper resource goes, d2 is left out. */
    double c1[] = {1, 5, 2, 1, 1, NAN};
    unsigned cap1[] = {1, 1};
    double pr1[] = {1, 2, 1};
    struct rules_assign p1 = {3, 2, c1, cap1, pr1};
    check_exact(&p1, (int[]){0, 1, -1}, 2, true, __LINE__);

    /* Ties: equal costs go to the lower resource, equal priorities to the lower demand. */
    double c2[] = {3, 3, 3, 3, 3, 3};
    unsigned cap2[] = {1, 0, 1};
    double pr2[] = {1, 1};
    struct rules_assign p2 = {2, 3, c2, cap2, pr2};
    check_exact(&p2, (int[]){0, 2}, 6, true, __LINE__);
    unsigned cap2b[] = {1, 0, 0};
    p2.capacity = cap2b;
    check_exact(&p2, (int[]){0, -1}, 3, true, __LINE__);
    double pr2b[] = {1, 1.5};
    p2.priority = pr2b;
    check_exact(&p2, (int[]){-1, 0}, 3, true, __LINE__);

    /* Greedy pays more than it must: d0 takes r0 that d1 needed more. */
    double c3[] = {1, 2, 1, 10};
    unsigned cap3[] = {1, 1};
    double pr3[] = {1, 1};
    struct rules_assign p3 = {2, 2, c3, cap3, pr3};
    check_exact(&p3, (int[]){0, 1}, 11, true, __LINE__);
    check_exact(&p3, (int[]){1, 0}, 3, false, __LINE__);

    /* Greedy serves fewer: d1 can only use r0, which d0 took. */
    double c4[] = {1, 2, 1, NAN};
    struct rules_assign p4 = {2, 2, c4, cap3, pr3};
    check_exact(&p4, (int[]){0, -1}, 1, true, __LINE__);
    check_exact(&p4, (int[]){1, 0}, 3, false, __LINE__);

    /* A negative cost is a cost like any other: the least wins. */
    double c5[] = {0.5, -2, -1};
    unsigned cap5[] = {1, 1, 1};
    double pr5[] = {1};
    struct rules_assign p5 = {1, 3, c5, cap5, pr5};
    check_exact(&p5, (int[]){1}, -2, true, __LINE__);
    check_exact(&p5, (int[]){1}, -2, false, __LINE__);
}

/* The lexicographic order must hold for real priorities and costs of both signs: these are the
 * cases an objective of sum c x + priority * M * u with M = 1 + sum max |c| gets wrong. */
static void test_lexicographic(void)
{
    /* 1.5 against 1.0 with one place: the dearer, higher demand is served. */
    double c1[] = {100, 0};
    unsigned cap1[] = {1};
    double pr1[] = {1.5, 1.0};
    struct rules_assign p1 = {2, 1, c1, cap1, pr1};
    check_exact(&p1, (int[]){0, -1}, 100, false, __LINE__);
    double pr1b[] = {1.0000001, 1.0};
    p1.priority = pr1b;
    check_exact(&p1, (int[]){0, -1}, 100, false, __LINE__);

    /* Serving both needs d0 to move from -10 to +10: 20 more, more than sum max |c| = 10. */
    double c2[] = {10, -10, NAN, 0};
    unsigned cap2[] = {1, 1};
    double pr2[] = {1, 1};
    struct rules_assign p2 = {2, 2, c2, cap2, pr2};
    check_exact(&p2, (int[]){0, 1}, 10, false, __LINE__);

    /* Many distinct priorities, and an order a single near tie would upset. */
    double c3[] = {50, 40, 30, 20, 10};
    unsigned cap3[] = {2};
    double pr3[] = {1.001, 1.002, 1.003, 1.0005, 1.0};
    struct rules_assign p3 = {5, 1, c3, cap3, pr3};
    check_exact(&p3, (int[]){-1, 0, 0, -1, -1}, 70, false, __LINE__);
}

static void test_edges(void)
{
    int out[4] = {7, 7, 7, 7};
    double total = NAN;
    unsigned cap[] = {1, 2, 3};

    /* No demand: nothing to write, a zero total. */
    struct rules_assign none = {0, 3, NULL, cap, NULL};
    CHECK_INT(rules_assign_solve(&none, out, &total), 0);
    CHECK(total == 0 && out[0] == 7);
    total = NAN;
    CHECK_INT(rules_assign_greedy(&none, out, &total), 0);
    CHECK(total == 0 && out[0] == 7);
    struct rules_assign empty = {0, 0, NULL, NULL, NULL};
    CHECK_INT(rules_assign_solve(&empty, out, &total), 0);
    CHECK_INT(rules_assign_greedy(&empty, out, &total), 0);

    /* No resource. */
    double pr[] = {1, 2, 3};
    struct rules_assign nores = {3, 0, NULL, NULL, pr};
    total = NAN;
    CHECK_INT(rules_assign_solve(&nores, out, &total), 0);
    CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1 && total == 0);
    memset(out, 0, sizeof(out));
    CHECK_INT(rules_assign_greedy(&nores, out, &total), 0);
    CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1 && total == 0);

    /* Every pair NAN; then every capacity 0. */
    double nan9[9] = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
    struct rules_assign allnan = {3, 3, nan9, cap, pr};
    memset(out, 0, sizeof(out));
    CHECK_INT(rules_assign_solve(&allnan, out, &total), 0);
    CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1 && total == 0);
    memset(out, 0, sizeof(out));
    CHECK_INT(rules_assign_greedy(&allnan, out, &total), 0);
    CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1 && total == 0);
    double c9[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    unsigned zero[] = {0, 0, 0};
    struct rules_assign full = {3, 3, c9, zero, pr};
    memset(out, 0, sizeof(out));
    CHECK_INT(rules_assign_solve(&full, out, &total), 0);
    CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1 && total == 0);
    memset(out, 0, sizeof(out));
    CHECK_INT(rules_assign_greedy(&full, out, &total), 0);
    CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1 && total == 0);

    /* A single pair, and one allowed pair among NANs and full resources. */
    double c1[] = {4.5};
    unsigned cap1[] = {1};
    struct rules_assign one = {1, 1, c1, cap1, pr};
    check_exact(&one, (int[]){0}, 4.5, false, __LINE__);
    check_exact(&one, (int[]){0}, 4.5, true, __LINE__);
    double c6[] = {NAN, 1, NAN, NAN, NAN, 2};
    unsigned cap6[] = {5, 0, 1};
    struct rules_assign lone = {2, 3, c6, cap6, pr};
    check_exact(&lone, (int[]){-1, 2}, 2, false, __LINE__);
    check_exact(&lone, (int[]){-1, 2}, 2, true, __LINE__);
    /* Capacity above the demands: a resource takes them all. */
    double c7[] = {1, 2, 3};
    unsigned cap7[] = {1000};
    struct rules_assign big = {3, 1, c7, cap7, pr};
    check_exact(&big, (int[]){0, 0, 0}, 6, false, __LINE__);

    /* Refused: an infinite cost (even where capacity is 0), a priority not finite and > 0;
     * out and total untouched. */
    static const double bad_cost[] = {INFINITY, -INFINITY};
    for (size_t k = 0; k < 2; k++) {
        double c[] = {1, bad_cost[k]};
        unsigned cp[] = {1, 0};
        struct rules_assign p = {1, 2, c, cp, pr};
        out[0] = 7;
        total = 5;
        CHECK_INT(rules_assign_solve(&p, out, &total), -EDOM);
        CHECK_INT(rules_assign_greedy(&p, out, &total), -EDOM);
        CHECK(out[0] == 7 && total == 5);
    }
    static const double bad_pri[] = {0, -0.0, -1, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof(bad_pri) / sizeof(bad_pri[0]); k++) {
        double prb[] = {1, bad_pri[k]};
        double c[] = {1, 2};
        struct rules_assign p = {2, 1, c, cap1, prb};
        out[0] = out[1] = 7;
        total = 5;
        CHECK_INT(rules_assign_solve(&p, out, &total), -EDOM);
        CHECK_INT(rules_assign_greedy(&p, out, &total), -EDOM);
        CHECK(out[0] == 7 && out[1] == 7 && total == 5);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Large instances
 * ------------------------------------------------------------------------------------------ */

struct large {
    struct rules_assign p;
    double *cost, *priority;
    unsigned *capacity;
};

static void large_random(uint64_t *rng, struct large *l, unsigned n, unsigned m, unsigned cap_max)
{
    l->cost = malloc(sizeof(double) * n * m);
    l->priority = malloc(sizeof(double) * n);
    l->capacity = malloc(sizeof(unsigned) * m);
    for (size_t k = 0; k < (size_t)n * m; k++)
        l->cost[k] = uniform(rng) < 0.2 ? NAN : 100 * uniform(rng);
    for (unsigned j = 0; j < m; j++)
        l->capacity[j] = 1 + below(rng, cap_max);
    for (unsigned i = 0; i < n; i++)
        l->priority[i] = 1 + below(rng, 2);
    l->p = (struct rules_assign){n, m, l->cost, l->capacity, l->priority};
}

static void large_free(struct large *l)
{
    free(l->cost);
    free(l->priority);
    free(l->capacity);
}

static void solve_against_greedy(struct large *l)
{
    int *out = malloc(sizeof(int) * l->p.n_demands), *gout = malloc(sizeof(int) * l->p.n_demands);
    double total = NAN, gtotal = NAN;
    CHECK_INT(rules_assign_solve(&l->p, out, &total), 0);
    CHECK_INT(rules_assign_greedy(&l->p, gout, &gtotal), 0);
    struct score s = check_feasible(&l->p, out, total, "solve");
    struct score g = check_feasible(&l->p, gout, gtotal, "greedy");
    CHECK(s.priority >= g.priority - PRI_EPS);
    if (fabs(s.priority - g.priority) <= PRI_EPS)
        CHECK(s.cost <= g.cost + 1e-6);
    /* Every resource here is allowed for hundreds of demands, and there are more priority 2
     * demands than places: the optimum fills every place, with priority 2 demands only. */
    unsigned cap = 0, served = 0;
    for (unsigned j = 0; j < l->p.n_resources; j++)
        cap += l->capacity[j];
    for (unsigned i = 0; i < l->p.n_demands; i++)
        served += out[i] >= 0;
    CHECK_INT(served, cap);
    CHECK_NEAR(s.priority, 2.0 * cap, PRI_EPS);
    free(out);
    free(gout);
}

static void test_large(void)
{
    uint64_t rng = 77;
    struct large l;
    large_random(&rng, &l, 1000, 100, 2);
    solve_against_greedy(&l);
    large_free(&l);
    /* 200,000 pair columns */
    large_random(&rng, &l, 1000, 200, 1);
    solve_against_greedy(&l);
    large_free(&l);
}

/* ---------------------------------------------------------------------------------------------
 * Two threads at once: GLPK's environment is per thread
 * ------------------------------------------------------------------------------------------ */

#define THREAD_CASES 200

struct job {
    struct small cases[THREAD_CASES];
    int out[THREAD_CASES][8];
    double total[THREAD_CASES];
    int rc;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    for (int t = 0; t < THREAD_CASES; t++) {
        int rc = rules_assign_solve(&j->cases[t].p, j->out[t], &j->total[t]);
        if (rc != 0)
            j->rc = rc;
    }
    return NULL;
}

static void test_threads(void)
{
    static struct job jobs[2];
    uint64_t rng = 5;
    for (int k = 0; k < 2; k++) {
        for (int t = 0; t < THREAD_CASES; t++) {
            small_random(&rng, &jobs[k].cases[t]);
        }
    }
    pthread_t th[2];
    for (int k = 0; k < 2; k++)
        CHECK_INT(pthread_create(&th[k], NULL, run_job, &jobs[k]), 0);
    for (int k = 0; k < 2; k++)
        CHECK_INT(pthread_join(th[k], NULL), 0);
    for (int k = 0; k < 2; k++) {
        CHECK_INT(jobs[k].rc, 0);
        for (int t = 0; t < THREAD_CASES; t++) {
            struct small *s = &jobs[k].cases[t];
            struct score got = check_feasible(&s->p, jobs[k].out[t], jobs[k].total[t], "thread");
            struct score want = brute(&s->p);
            CHECK_NEAR(got.priority, want.priority, PRI_EPS);
            CHECK_NEAR(got.cost, want.cost, 1e-6 * (1 + fabs(want.cost)));
        }
    }
}

static const struct {
    const char *name;
    void (*fn)(void);
} tests[] = {
    {"brute_force", test_brute_force},
    {"greedy", test_greedy},
    {"lexicographic", test_lexicographic},
    {"edges", test_edges},
    {"large", test_large},
    {"threads", test_threads},
};

int main(int argc, char **argv)
{
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0)
            continue;
        current = tests[i].name;
        tests[i].fn();
    }
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all assign tests passed\n");
    return 0;
}
