/* assign: one dispatch decision — which open demand gets which resource with room left — solved
 * exactly as a linear program with GLPK, and the greedy baseline beside it. It keeps nothing
 * between calls and knows nothing of what a demand or a resource is: the hub builds the costs.
 *
 * The linear program (rules_assign_solve). A pair (i, j) is allowed when cost[i][j] is not NAN
 * and resource j has capacity; a demand with no allowed pair, and a resource in none, stay out.
 *   columns  x_ij in [0, 1] per allowed pair (row-major), then u_i in [0, 1] per demand left
 *   rows     per demand:   sum_j x_ij + u_i = 1          (u_i = 1: demand i gets nothing)
 *            per resource: sum_i x_ij <= capacity_j
 *   minimise sum c_ij x_ij + sum M w_i u_i
 * The matrix is the incidence matrix of a bipartite graph (plus unit columns): totally
 * unimodular, so every basic solution — every vertex the simplex visits, not only the optimum —
 * is integral, and the optimum of the LP is the optimum over assignments.
 *
 * Choices:
 * - Lexicographic without trusting the priorities' scale: w_i is not priority_i but its rank
 *   among the distinct priorities of the demands in the program (1 for the lowest). The sets of
 *   demands that can be served together are the independent sets of a transversal matroid, and
 *   for a matroid the sets of greatest weight depend only on the order of the weights (a set is
 *   one of them iff it is of greatest size within every "priority >= p" class), so ranks select
 *   the same sets as the priorities themselves. Ranks are integers: two assignments that differ
 *   in served weight differ by at least M in the objective. With priority_i * M instead, 1.5
 *   against 1.0 differs by 0.5 M only, and a cheaper low-priority demand could win.
 * - M = 1 + the sum over demands of (max(0, greatest c_ij) - min(0, least c_ij)): the largest
 *   difference in total cost between two assignments, plus one. The sum of max |c_ij| is too
 *   small once costs have both signs (a demand moving from -10 to +10 changes the cost by 20).
 * - The cost stays exact to GLPK's tolerance on reduced costs, 1e-7 + 1e-10 |c| per column; the
 *   u columns' coefficients are M w_i, so near-ties in cost closer than about 1e-10 M K (K
 *   priority levels) may be broken either way. A total M K above 1e15 (costs so large that the
 *   two objectives no longer fit one double) is refused with -EDOM.
 * - The answer is read back robustly: every x within 1e-6 of 0 or 1, each demand at most once,
 *   no capacity exceeded. Integrality cannot fail in exact arithmetic (above); floating point
 *   only perturbs an integral vertex by rounding, so the check is a guard: if it fails, the same
 *   problem is solved again with glp_intopt, columns integer, which is exact by construction.
 * - GLPK never prints (glp_term_out off, message level off) and never aborts the process: its
 *   error hook, which it calls on bad input and when its own allocations fail and after which it
 *   would call abort(), jumps back here instead, frees GLPK's environment (as its manual requires
 *   after such a jump) and the call returns -EIO. Inputs are checked first and every empty case
 *   (no demand, no resource, no allowed pair) is answered without GLPK, so the hook is for GLPK
 *   running out of memory.
 * - Threads. GLPK 5.0 keeps its environment (memory accounting, terminal output, error hook)
 *   behind one pointer in thread-local storage: Debian's libglpk.so.40 has a TLS segment, and
 *   glp_term_out and glp_error_hook set the calling thread's only. So threads may solve at the
 *   same time, each in its own environment (tests/unit/rules/test_assign.c runs two). A thread's
 *   environment is made by its first GLPK call and is not freed when the thread ends; so a call
 *   that finds it holding nothing (GLPK's block count 0: nobody else in this thread uses GLPK,
 *   the hub's case) frees it on the way out, at a cost of some microseconds per call. One that
 *   holds another user's problems is left alone (its error hook, which GLPK cannot read back,
 *   is reset to none); glp_free_env would destroy them.
 * - Memory: 1000 demands x 200 resources, all allowed, is 201,000 columns and 401,000 nonzeros:
 *   about 10 MB of our arrays (ia, ja, ar, the pairs, the values read back) besides GLPK's copy
 *   of the problem. Sizes past GLPK's int indices are refused with -ENOMEM.
 *
 * Neither function keeps a pointer to p or out. */
#include "rules.h"

#include <errno.h>
#include <glpk.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdlib.h>

#define INTEGRAL_TOL 1e-6
#define OBJECTIVE_MAX 1e15

/* ---------------------------------------------------------------------------------------------
 * Inputs and the order of demands
 * ------------------------------------------------------------------------------------------ */

static int check(const struct rules_assign *p)
{
    size_t n = (size_t)p->n_demands * p->n_resources;
    for (size_t k = 0; k < n; k++)
        if (isinf(p->cost[k]))
            return -EDOM;
    for (unsigned i = 0; i < p->n_demands; i++)
        if (!isfinite(p->priority[i]) || !(p->priority[i] > 0))
            return -EDOM;
    return 0;
}

static bool allowed(const struct rules_assign *p, unsigned i, unsigned j)
{
    return p->capacity[j] > 0 && !isnan(p->cost[(size_t)i * p->n_resources + j]);
}

struct ranked {
    double priority;
    unsigned i;
};

/* Highest priority first; ties: lower index first (qsort is not stable, the index makes the
 * order total). */
static int by_priority(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->priority != y->priority)
        return x->priority > y->priority ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* ---------------------------------------------------------------------------------------------
 * Greedy
 * ------------------------------------------------------------------------------------------ */

int rules_assign_greedy(const struct rules_assign *p, int *out, double *total)
{
    int err = check(p);
    if (err < 0)
        return err;
    *total = 0;
    if (p->n_demands == 0)
        return 0;
    struct ranked *order = malloc(sizeof(*order) * p->n_demands);
    unsigned *room = malloc(sizeof(*room) * (p->n_resources ? p->n_resources : 1));
    if (!order || !room) {
        err = -ENOMEM;
        goto out;
    }
    for (unsigned i = 0; i < p->n_demands; i++)
        order[i] = (struct ranked){p->priority[i], i};
    qsort(order, p->n_demands, sizeof(*order), by_priority);
    for (unsigned j = 0; j < p->n_resources; j++)
        room[j] = p->capacity[j];
    double sum = 0;
    for (unsigned r = 0; r < p->n_demands; r++) {
        unsigned i = order[r].i;
        const double *c = p->cost + (size_t)i * p->n_resources;
        int best = -1;
        for (unsigned j = 0; j < p->n_resources; j++)
            if (room[j] > 0 && !isnan(c[j]) && (best < 0 || c[j] < c[best]))
                best = (int)j;
        out[i] = best;
        if (best >= 0) {
            room[best]--;
            sum += c[best];
        }
    }
    *total = sum;
out:
    free(room);
    free(order);
    return err;
}

/* ---------------------------------------------------------------------------------------------
 * The linear program
 * ------------------------------------------------------------------------------------------ */

/* The program in GLPK's terms, built before GLPK is called. Columns 1..n_pairs are the pairs,
 * then one u per demand row; rows 1..n_dem are the demands, then the resources. */
struct lp {
    int n_pairs, n_dem, n_res, nnz;
    int *pair_dem, *pair_res; /* per pair (0-based): the demand and the resource */
    int *dem_row;             /* per demand: its row, 0 when it has no allowed pair */
    int *res_row;             /* per resource: its row, 0 when it is in no allowed pair */
    double *u_cost;           /* per demand row: M w_i */
    int *ia, *ja;             /* 1-based, nnz */
    double *ar;
};

static void lp_free(struct lp *lp)
{
    free(lp->pair_dem);
    free(lp->pair_res);
    free(lp->dem_row);
    free(lp->res_row);
    free(lp->u_cost);
    free(lp->ia);
    free(lp->ja);
    free(lp->ar);
}

/* Counts the allowed pairs and the rows; leaves lp->n_pairs 0 when there is nothing to solve.
 * Returns 0 or -ENOMEM (more than GLPK's int indices hold, or no memory). */
static int lp_build(const struct rules_assign *p, struct lp *lp)
{
    size_t pairs = 0;
    for (unsigned i = 0; i < p->n_demands; i++)
        for (unsigned j = 0; j < p->n_resources; j++)
            pairs += allowed(p, i, j);
    if (pairs == 0)
        return 0;
    /* nnz = 2 pairs + demands, and GLPK counts columns and nonzeros in int (1-based) */
    if (p->n_demands >= INT_MAX / 2 || pairs > ((size_t)INT_MAX - 1 - p->n_demands) / 2)
        return -ENOMEM;
    lp->pair_dem = malloc(sizeof(int) * pairs);
    lp->pair_res = malloc(sizeof(int) * pairs);
    lp->dem_row = calloc(p->n_demands, sizeof(int));
    lp->res_row = calloc(p->n_resources, sizeof(int));
    lp->u_cost = malloc(sizeof(double) * p->n_demands);
    lp->ia = malloc(sizeof(int) * (2 * pairs + p->n_demands + 1));
    lp->ja = malloc(sizeof(int) * (2 * pairs + p->n_demands + 1));
    lp->ar = malloc(sizeof(double) * (2 * pairs + p->n_demands + 1));
    struct ranked *order = malloc(sizeof(*order) * p->n_demands);
    if (!lp->pair_dem || !lp->pair_res || !lp->dem_row || !lp->res_row || !lp->u_cost || !lp->ia ||
        !lp->ja || !lp->ar || !order) {
        free(order);
        return -ENOMEM;
    }

    /* Pairs, demand rows, and M from each demand's range of costs (0 included: unserved). */
    double big = 1;
    int k = 0, n_order = 0;
    for (unsigned i = 0; i < p->n_demands; i++) {
        const double *c = p->cost + (size_t)i * p->n_resources;
        double hi = 0, lo = 0;
        int first = k;
        for (unsigned j = 0; j < p->n_resources; j++) {
            if (!allowed(p, i, j))
                continue;
            lp->pair_dem[k] = (int)i;
            lp->pair_res[k++] = (int)j;
            hi = fmax(hi, c[j]);
            lo = fmin(lo, c[j]);
        }
        if (k == first)
            continue;
        lp->dem_row[i] = ++lp->n_dem;
        big += hi - lo;
        order[n_order++] = (struct ranked){p->priority[i], i};
    }
    lp->n_pairs = k;
    for (k = 0; k < lp->n_pairs; k++)
        if (!lp->res_row[lp->pair_res[k]])
            lp->res_row[lp->pair_res[k]] = lp->n_dem + ++lp->n_res;

    /* Ranks: 1 for the lowest priority present, one more per distinct greater priority. */
    qsort(order, (size_t)n_order, sizeof(*order), by_priority);
    int levels = 1;
    for (int r = 1; r < n_order; r++)
        levels += order[r].priority != order[r - 1].priority;
    int level = levels;
    for (int r = 0; r < n_order; r++) {
        if (r > 0 && order[r].priority != order[r - 1].priority)
            level--;
        lp->u_cost[lp->dem_row[order[r].i] - 1] = big * level;
    }
    free(order);
    if (!(big * levels <= OBJECTIVE_MAX))
        return -EDOM;

    /* The matrix: per pair its demand row and its resource row, per demand row its u. */
    int e = 0;
    for (k = 0; k < lp->n_pairs; k++) {
        e++;
        lp->ia[e] = lp->dem_row[lp->pair_dem[k]];
        lp->ja[e] = k + 1;
        lp->ar[e] = 1;
        e++;
        lp->ia[e] = lp->res_row[lp->pair_res[k]];
        lp->ja[e] = k + 1;
        lp->ar[e] = 1;
    }
    for (int r = 1; r <= lp->n_dem; r++) {
        e++;
        lp->ia[e] = r;
        lp->ja[e] = lp->n_pairs + r;
        lp->ar[e] = 1;
    }
    lp->nnz = e;
    return 0;
}

static bool near_integral(double v)
{
    return fabs(v) <= INTEGRAL_TOL || fabs(v - 1) <= INTEGRAL_TOL;
}

/* Loads and solves the program; x[k] (n_pairs) gets each pair's value. Runs inside the error
 * trap of lp_run. Returns 0 or -EIO. */
static int lp_glpk(const struct rules_assign *p, const struct lp *lp, double *x)
{
    int err = 0;
    glp_prob *P = glp_create_prob();
    glp_set_obj_dir(P, GLP_MIN);
    glp_add_rows(P, lp->n_dem + lp->n_res);
    for (int r = 1; r <= lp->n_dem; r++)
        glp_set_row_bnds(P, r, GLP_FX, 1, 1);
    for (unsigned j = 0; j < p->n_resources; j++)
        if (lp->res_row[j])
            glp_set_row_bnds(P, lp->res_row[j], GLP_UP, 0, p->capacity[j]);
    glp_add_cols(P, lp->n_pairs + lp->n_dem);
    for (int k = 0; k < lp->n_pairs; k++) {
        size_t at = (size_t)lp->pair_dem[k] * p->n_resources + (size_t)lp->pair_res[k];
        glp_set_col_bnds(P, k + 1, GLP_DB, 0, 1);
        glp_set_obj_coef(P, k + 1, p->cost[at]);
    }
    for (int r = 1; r <= lp->n_dem; r++) {
        glp_set_col_bnds(P, lp->n_pairs + r, GLP_DB, 0, 1);
        glp_set_obj_coef(P, lp->n_pairs + r, lp->u_cost[r - 1]);
    }
    glp_load_matrix(P, lp->nnz, lp->ia, lp->ja, lp->ar);

    glp_smcp smcp;
    glp_init_smcp(&smcp);
    smcp.msg_lev = GLP_MSG_OFF;
    smcp.presolve = GLP_ON;
    if (glp_simplex(P, &smcp) != 0 || glp_get_status(P) != GLP_OPT) {
        err = -EIO;
        goto out;
    }
    bool integral = true;
    for (int k = 0; k < lp->n_pairs; k++) {
        x[k] = glp_get_col_prim(P, k + 1);
        integral = integral && near_integral(x[k]);
    }
    if (integral)
        goto out;

    /* Not reached in exact arithmetic (see the top of the file): branch and bound on the same
     * problem, whose LP relaxation is the one just solved. */
    for (int c = 1; c <= lp->n_pairs + lp->n_dem; c++)
        glp_set_col_kind(P, c, GLP_IV);
    glp_iocp iocp;
    glp_init_iocp(&iocp);
    iocp.msg_lev = GLP_MSG_OFF;
    iocp.presolve = GLP_ON;
    if (glp_intopt(P, &iocp) != 0 || glp_mip_status(P) != GLP_OPT) {
        err = -EIO;
        goto out;
    }
    for (int k = 0; k < lp->n_pairs; k++) {
        x[k] = glp_mip_col_val(P, k + 1);
        if (!near_integral(x[k]))
            err = -EIO;
    }
out:
    glp_delete_prob(P);
    return err;
}

struct trap {
    jmp_buf env;
};

/* GLPK's error hook: GLPK would call abort() when it returns. */
static void on_glpk_error(void *info)
{
    longjmp(((struct trap *)info)->env, 1);
}

/* lp_glpk with GLPK silenced and its errors caught, in the calling thread's GLPK environment.
 * Only GLPK runs between setjmp and a jump, and nothing of ours that it changes is read after
 * one. An environment that held nothing when we came (no memory block of GLPK's: a new one, or
 * one nobody uses) is freed when we leave, so that a thread leaves nothing behind; one that
 * holds someone's problems stays, with its terminal setting as it was. */
static int lp_run(const struct rules_assign *p, const struct lp *lp, double *x)
{
    struct trap trap;
    int blocks;
    glp_mem_usage(&blocks, NULL, NULL, NULL);
    int term = glp_term_out(GLP_OFF);
    if (setjmp(trap.env)) {
        /* the environment is undefined after an error: free it all, the problem with it (the
         * next call makes a new one) */
        glp_free_env();
        return -EIO;
    }
    glp_error_hook(on_glpk_error, &trap);
    int err = lp_glpk(p, lp, x);
    glp_error_hook(NULL, NULL);
    if (blocks == 0)
        glp_free_env();
    else
        glp_term_out(term);
    return err;
}

int rules_assign_solve(const struct rules_assign *p, int *out, double *total)
{
    int err = check(p);
    if (err < 0)
        return err;
    struct lp lp = {0};
    double *x = NULL;
    int *pick = NULL;
    err = lp_build(p, &lp);
    if (err < 0)
        goto out;
    if (lp.n_pairs == 0) {
        /* nothing can be assigned: no GLPK (it would be given empty rows or matrices) */
        for (unsigned i = 0; i < p->n_demands; i++)
            out[i] = -1;
        *total = 0;
        goto out;
    }
    x = malloc(sizeof(*x) * (size_t)lp.n_pairs);
    pick = malloc(sizeof(*pick) * p->n_demands);
    if (!x || !pick) {
        err = -ENOMEM;
        goto out;
    }
    err = lp_run(p, &lp, x);
    if (err < 0)
        goto out;

    /* Read back, and refuse anything that is not an assignment: each demand at most once
     * (its row), no resource past its capacity (lp.res_row is done with: it counts). */
    for (unsigned i = 0; i < p->n_demands; i++)
        pick[i] = -1;
    for (unsigned j = 0; j < p->n_resources; j++)
        lp.res_row[j] = 0;
    double sum = 0;
    for (int k = 0; k < lp.n_pairs; k++) {
        if (x[k] <= 0.5)
            continue;
        int i = lp.pair_dem[k], j = lp.pair_res[k];
        if (pick[i] >= 0 || (unsigned)++lp.res_row[j] > p->capacity[j]) {
            err = -EIO;
            goto out;
        }
        pick[i] = j;
        sum += p->cost[(size_t)i * p->n_resources + (size_t)j];
    }
    for (unsigned i = 0; i < p->n_demands; i++)
        out[i] = pick[i];
    *total = sum;
out:
    free(pick);
    free(x);
    lp_free(&lp);
    return err;
}
