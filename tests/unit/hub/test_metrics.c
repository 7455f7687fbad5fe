/* test_metrics: the histograms' buckets (upper bounds inclusive, the last one open) and the
 * liveness and readiness checks, against hand-set clocks (hub/metrics.c). */
#include <stdio.h>
#include <string.h>

#include "hub.h"

static int failures, checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static void test_hist(void)
{
    static struct hub_hist h;
    const struct {
        int64_t ns;
        int bucket;
    } cases[] = {
        {-5, 0}, /* a clock that went back counts as 0 */
        {0, 0},
        {5000, 0}, /* le="5e-06" holds 5 µs itself */
        {5001, 1},
        {1000000, 7},      /* 1 ms */
        {10000000000, 19}, /* 10 s, the highest bound */
        {10000000001, 20}, /* above it: only +Inf */
    };
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t before[HUB_HIST_BUCKETS + 1];
        for (int b = 0; b <= HUB_HIST_BUCKETS; b++)
            before[b] = atomic_load(&h.bucket[b]);
        hub_hist_observe(&h, cases[i].ns);
        sum += cases[i].ns > 0 ? (uint64_t)cases[i].ns : 0;
        for (int b = 0; b <= HUB_HIST_BUCKETS; b++)
            CHECK(atomic_load(&h.bucket[b]) == before[b] + (b == cases[i].bucket),
                  "%lld ns: bucket %d", (long long)cases[i].ns, b);
    }
    CHECK(atomic_load(&h.count) == sizeof(cases) / sizeof(cases[0]), "count");
    CHECK(atomic_load(&h.sum_ns) == sum, "sum %llu", (unsigned long long)sum);
}

static void test_health(void)
{
    static struct ingest in;
    struct hub_health h = {.stall_ms = 1000};
    struct hub_checks k;
    int64_t now = 100000;

    atomic_store(&h.main_beat, now - 200);
    atomic_store(&h.connected, true);
    hub_health_check(&h, &in, now, &k);
    CHECK(k.main_loop && k.ingest && k.broker && k.not_draining, "all well");

    atomic_store(&h.main_beat, now - 1001);
    hub_health_check(&h, &in, now, &k);
    CHECK(!k.main_loop && k.ingest, "a main loop that did not turn within the stall");

    atomic_store(&h.main_beat, now);
    atomic_store(&in.busy_since, now - 900 + 1); /* busy_since is ms + 1 */
    hub_health_check(&h, &in, now, &k);
    CHECK(k.ingest, "a message in its handler for 900 ms of 1000");
    atomic_store(&in.busy_since, now - 1001 + 1);
    hub_health_check(&h, &in, now, &k);
    CHECK(!k.ingest && k.main_loop, "a message in its handler past the stall");
    atomic_store(&in.busy_since, 0);

    atomic_store(&h.connected, false);
    atomic_store(&h.draining, true);
    hub_health_check(&h, &in, now, &k);
    CHECK(k.ingest && !k.broker && !k.not_draining, "disconnected and stopping");
}

int main(void)
{
    test_hist();
    test_health();
    printf("test_metrics: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
