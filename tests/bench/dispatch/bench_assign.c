/* bench_assign: what one dispatch decision costs (rules/assign.c), and what greedy gives up.
 * Prints figures; never fails on time.
 *
 * A ward plan: demands and resources at random positions in a 100 m x 30 m rectangle, cost the
 * Euclidean distance in metres, 20% of the pairs not allowed (skills), every resource free for
 * one demand, priorities 1 or 2. Per cell (10, 100, 1000 open demands against 5, 50, 200
 * resources) a fresh instance per run, solved by rules_assign_solve and by rules_assign_greedy:
 * the median and the 90th percentile of each time, how often greedy served less priority, and
 * greedy's total cost relative to the optimum's over the runs where both served the same.
 * Runs per cell: 20, or fewer once a cell has used its time (the whole bench stays under a
 * minute on two cores).
 *
 *   bench_assign [--quick] [--runs N] [--seed S]
 *   --quick   10 and 100 demands against 5 and 50 resources, 3 runs each (the ctest smoke run)
 */
#include "rules.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CELL_SECONDS 20.0

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* splitmix64 */
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

struct plan {
    struct rules_assign p;
    double *cost, *priority;
    unsigned *capacity;
};

static int plan_new(struct plan *w, unsigned n, unsigned m, uint64_t *rng)
{
    w->cost = malloc(sizeof(double) * n * m);
    w->priority = malloc(sizeof(double) * n);
    w->capacity = malloc(sizeof(unsigned) * m);
    double *rx = malloc(sizeof(double) * m), *ry = malloc(sizeof(double) * m);
    if (!w->cost || !w->priority || !w->capacity || !rx || !ry) {
        free(rx);
        free(ry);
        return -1;
    }
    for (unsigned j = 0; j < m; j++) {
        rx[j] = 100 * uniform(rng);
        ry[j] = 30 * uniform(rng);
        w->capacity[j] = 1;
    }
    for (unsigned i = 0; i < n; i++) {
        double x = 100 * uniform(rng), y = 30 * uniform(rng);
        w->priority[i] = uniform(rng) < 0.5 ? 1 : 2;
        for (unsigned j = 0; j < m; j++)
            w->cost[(size_t)i * m + j] = uniform(rng) < 0.2 ? NAN : hypot(x - rx[j], y - ry[j]);
    }
    free(rx);
    free(ry);
    w->p = (struct rules_assign){n, m, w->cost, w->capacity, w->priority};
    return 0;
}

static void plan_free(struct plan *w)
{
    free(w->cost);
    free(w->priority);
    free(w->capacity);
}

static double served(const struct plan *w, const int *out)
{
    double s = 0;
    for (unsigned i = 0; i < w->p.n_demands; i++)
        if (out[i] >= 0)
            s += w->priority[i];
    return s;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile of v (n > 0), nearest rank; sorts v. */
static double quantile(double *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof(*v), by_value);
    int k = (int)ceil(q * n) - 1;
    return v[k < 0 ? 0 : k];
}

static int cell(unsigned n, unsigned m, int runs, uint64_t *rng)
{
    double *ts = malloc(sizeof(double) * (size_t)runs), *tg = malloc(sizeof(double) * (size_t)runs);
    int *out = malloc(sizeof(int) * n), *gout = malloc(sizeof(int) * n);
    if (!ts || !tg || !out || !gout) {
        fprintf(stderr, "bench_assign: out of memory\n");
        return -1;
    }
    double ratio_sum = 0, start = now_s();
    int done = 0, compared = 0, short_runs = 0;
    while (done < runs && (done < 3 || now_s() - start < CELL_SECONDS)) {
        struct plan w;
        if (plan_new(&w, n, m, rng) < 0) {
            fprintf(stderr, "bench_assign: out of memory\n");
            return -1;
        }
        double total, gtotal, t0 = now_s();
        int rc = rules_assign_solve(&w.p, out, &total);
        double t1 = now_s();
        int grc = rules_assign_greedy(&w.p, gout, &gtotal);
        double t2 = now_s();
        if (rc != 0 || grc != 0) {
            fprintf(stderr, "bench_assign: %ux%u: solve %d, greedy %d\n", n, m, rc, grc);
            plan_free(&w);
            return -1;
        }
        ts[done] = t1 - t0;
        tg[done] = t2 - t1;
        if (fabs(served(&w, out) - served(&w, gout)) < 1e-9) {
            if (total > 0) {
                ratio_sum += gtotal / total;
                compared++;
            }
        } else {
            short_runs++;
        }
        done++;
        plan_free(&w);
    }
    double s50 = quantile(ts, done, 0.5), s90 = quantile(ts, done, 0.9);
    double g50 = quantile(tg, done, 0.5), g90 = quantile(tg, done, 0.9);
    printf("%7u %9u %5d %11.3f %11.3f %11.4f %11.4f %9d ", n, m, done, s50 * 1e3, s90 * 1e3,
           g50 * 1e3, g90 * 1e3, short_runs);
    if (compared)
        printf("%12.4f\n", ratio_sum / compared);
    else
        printf("%12s\n", "-");
    fflush(stdout);
    free(ts);
    free(tg);
    free(out);
    free(gout);
    return 0;
}

int main(int argc, char **argv)
{
    int runs = 20, quick = 0;
    uint64_t rng = 2024;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[a], "--runs") == 0 && a + 1 < argc) {
            runs = atoi(argv[++a]);
        } else if (strcmp(argv[a], "--seed") == 0 && a + 1 < argc) {
            rng = strtoull(argv[++a], NULL, 10);
        } else {
            fprintf(stderr, "usage: bench_assign [--quick] [--runs N] [--seed S]\n");
            return 2;
        }
    }
    if (runs < 1)
        runs = 1;
    static const unsigned demands[] = {10, 100, 1000}, resources[] = {5, 50, 200};
    unsigned nd = quick ? 2 : 3, nr = quick ? 2 : 3;
    if (quick)
        runs = 3;
    printf("dispatch decisions: ward 100 m x 30 m, cost = distance (m), 20%% of pairs not "
           "allowed, capacity 1, priority 1 or 2\n");
    printf("times in ms per decision; greedy/opt: greedy's total over the optimum's, runs where "
           "both serve the same priority; short: runs where greedy serves less\n");
    printf("%7s %9s %5s %11s %11s %11s %11s %9s %12s\n", "demands", "resources", "runs",
           "solve p50", "solve p90", "greedy p50", "greedy p90", "short", "greedy/opt");
    double start = now_s();
    for (unsigned a = 0; a < nd; a++)
        for (unsigned b = 0; b < nr; b++)
            if (cell(demands[a], resources[b], runs, &rng) < 0)
                return 1;
    printf("total %.1f s\n", now_s() - start);
    return 0;
}
