/* test_metrics: the histograms' buckets (upper bounds inclusive, the last one open), the
 * liveness and readiness checks, against hand-set clocks, and the escaping of label values in
 * the text format (hub/metrics.c). */
#include <stdio.h>
#include <stdlib.h>
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

/* The exposition format's label values: backslash, double quote and line feed escaped, every
 * other byte (UTF-8, tabs, a NUL inside the length) as it is. */
static void test_label_escape(void)
{
    /* whole literals, NULs inside them included */
#define T(in, want)                                                                                \
    {                                                                                              \
        in, sizeof(in) - 1, want, sizeof(want) - 1                                                 \
    }
    const struct {
        const char *in;
        size_t len;
        const char *want;
        size_t want_len;
    } cases[] = {
        T("", ""),
        T("tachycardia", "tachycardia"),
        T("a\\b", "a\\\\b"),
        T("say \"hi\"", "say \\\"hi\\\""),
        T("two\nlines", "two\\nlines"),
        T("\\", "\\\\"),
        T("\"", "\\\""),
        T("\n", "\\n"),
        T("\\n", "\\\\n"), /* a backslash then n: not a line feed */
        T("\\\"\n\\", "\\\\\\\"\\n\\\\"),
        T("tab\there\rcr", "tab\there\rcr"), /* only the three are escaped */
        T("caf\xc3\xa9 \xe2\x99\xa5", "caf\xc3\xa9 \xe2\x99\xa5"),
        T("nul\0after", "nul\0after"),
        {"cut\"here", 3, "cut", 3}, /* the first n bytes only */
    };
#undef T
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        CHECK(f != NULL, "open_memstream");
        if (!f)
            return;
        int rc = metrics_label_put(f, cases[i].in, cases[i].len);
        fclose(f);
        CHECK(rc == 0, "case %zu: rc %d", i, rc);
        CHECK(size == cases[i].want_len && memcmp(buf, cases[i].want, size) == 0,
              "case %zu: got %zu bytes \"%.*s\", want \"%s\"", i, size, (int)size, buf,
              cases[i].want);
        free(buf);
    }
}

int main(void)
{
    test_hist();
    test_health();
    test_label_escape();
    printf("test_metrics: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
