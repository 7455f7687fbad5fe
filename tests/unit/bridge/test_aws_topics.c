/* tests/unit/bridge/test_aws_topics.c: AWS IoT Device Shadow topic names (bridge/aws.c),
 * table-driven: the request topics that parse (classic and named, every operation), the ones
 * that do not (reply topics, unknown operations, bad thing and shadow names, NUL bytes, extra
 * or empty levels), building reply topics, and the subscription filters. Every parsed topic is
 * an exact-length heap copy, so AddressSanitizer catches any read past `len`.
 */
#include "bridge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define LONG64 "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
#define LONG128 LONG64 LONG64

static const struct {
    const char *topic;
    int op; /* -1: refused */
    const char *thing, *name;
} cases[] = {
    {"$aws/things/ecg-0001/shadow/update", BRIDGE_AWS_UPDATE, "ecg-0001", NULL},
    {"$aws/things/ecg-0001/shadow/get", BRIDGE_AWS_GET, "ecg-0001", NULL},
    {"$aws/things/ecg-0001/shadow/delete", BRIDGE_AWS_DELETE, "ecg-0001", NULL},
    {"$aws/things/pump.7:A_b-c/shadow/name/cfg/update", BRIDGE_AWS_UPDATE, "pump.7:A_b-c", "cfg"},
    {"$aws/things/a/shadow/name/x:y_z-1/get", BRIDGE_AWS_GET, "a", "x:y_z-1"},
    {"$aws/things/a/shadow/name/" LONG64 "/delete", BRIDGE_AWS_DELETE, "a", LONG64},
    {"$aws/things/" LONG128 "/shadow/get", BRIDGE_AWS_GET, LONG128, NULL},
    /* a thing called "name" is still a thing */
    {"$aws/things/name/shadow/update", BRIDGE_AWS_UPDATE, "name", NULL},
    {"$aws/things/a/shadow/name/name/update", BRIDGE_AWS_UPDATE, "a", "name"},
    /* refused */
    {"$aws/things/a/shadow/update/accepted", -1, NULL, NULL},
    {"$aws/things/a/shadow/update/delta", -1, NULL, NULL},
    {"$aws/things/a/shadow/name/n/get/rejected", -1, NULL, NULL},
    {"$aws/things/a/shadow/list", -1, NULL, NULL},
    {"$aws/things/a/shadow/update/", -1, NULL, NULL},
    {"$aws/things/a/shadow", -1, NULL, NULL},
    {"$aws/things/a/shadow/", -1, NULL, NULL},
    {"$aws/things/a/shadow/name/update", -1, NULL, NULL},
    {"$aws/things/a/shadow/name//update", -1, NULL, NULL},
    {"$aws/things/a/shadow/name/bad.name/update", -1, NULL, NULL},
    {"$aws/things/a/shadow/name/" LONG64 "n/update", -1, NULL, NULL},
    {"$aws/things//shadow/update", -1, NULL, NULL},
    {"$aws/things/.hidden/shadow/update", -1, NULL, NULL},
    {"$aws/things/" LONG128 "n/shadow/update", -1, NULL, NULL},
    {"$aws/things/a b/shadow/update", -1, NULL, NULL},
    {"$aws/things/a/jobs/get", -1, NULL, NULL},
    {"$aws/thing/a/shadow/get", -1, NULL, NULL},
    {"$aws/things/a", -1, NULL, NULL},
    {"$aws/things/", -1, NULL, NULL},
    {"$aws/", -1, NULL, NULL},
    {"devices/a/telemetry", -1, NULL, NULL},
    {"", -1, NULL, NULL},
};

static int parse_exact(const char *topic, size_t len, struct bridge_aws_topic *t, char *err)
{
    char *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    memcpy(buf, topic, len);
    int rc = bridge_aws_topic_parse(buf, len, t, err);
    if (rc == 0) {
        CHECK(t->thing >= buf && t->thing + t->thing_len <= buf + len, "thing outside the topic");
        CHECK(!t->name || (t->name >= buf && t->name + t->name_len <= buf + len),
              "name outside the topic");
    }
    free(buf);
    return rc;
}

static void test_parse(void)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct bridge_aws_topic t;
        char err[BRIDGE_ERR_LEN] = "";
        const char *topic = cases[i].topic;
        int rc = parse_exact(topic, strlen(topic), &t, err);
        if (cases[i].op < 0) {
            CHECK(rc == -EINVAL && err[0], "%s: parsed (rc %d)", topic, rc);
            continue;
        }
        CHECK(rc == 0, "%s: %d %s", topic, rc, err);
        if (rc)
            continue;
        /* parse again on the original (the copy is gone) to compare the parts */
        bridge_aws_topic_parse(topic, strlen(topic), &t, err);
        CHECK((int)t.op == cases[i].op, "%s: op %d", topic, (int)t.op);
        CHECK(t.thing_len == strlen(cases[i].thing) &&
                  !memcmp(t.thing, cases[i].thing, t.thing_len),
              "%s: thing %.*s", topic, (int)t.thing_len, t.thing);
        if (cases[i].name)
            CHECK(t.name && t.name_len == strlen(cases[i].name) &&
                      !memcmp(t.name, cases[i].name, t.name_len),
                  "%s: name", topic);
        else
            CHECK(!t.name && t.name_len == 0, "%s: a classic shadow has no name", topic);
        /* the request topic builds back to itself */
        char buf[BRIDGE_TOPIC_MAX + 1];
        int n = bridge_aws_topic_build(&t, -1, buf, sizeof buf);
        CHECK(n == (int)strlen(topic) && !strcmp(buf, topic), "%s: built back as %s", topic, buf);
    }
    /* a NUL inside, and topics that only start like ours */
    struct bridge_aws_topic t;
    CHECK(bridge_aws_topic_parse("$aws/things/a\0b/shadow/get", 26, &t, NULL) == -EINVAL, "NUL");
    CHECK(bridge_aws_topic_parse("$aws/things/a/shadow/get", 23, &t, NULL) == -EINVAL,
          "cut short: 'ge'");
    CHECK(bridge_aws_topic_is("$aws/x", 6) && !bridge_aws_topic_is("$aw", 3) &&
              !bridge_aws_topic_is("twins/a/get", 11),
          "bridge_aws_topic_is");
}

static void test_build(void)
{
    char buf[BRIDGE_TOPIC_MAX + 1];
    struct bridge_aws_topic t = {.op = BRIDGE_AWS_UPDATE, .thing = "ecg-0001", .thing_len = 8};
    static const char *const want[] = {
        "$aws/things/ecg-0001/shadow/update/accepted",
        "$aws/things/ecg-0001/shadow/update/rejected",
        "$aws/things/ecg-0001/shadow/update/delta",
        "$aws/things/ecg-0001/shadow/update/documents",
    };
    for (int r = BRIDGE_AWS_ACCEPTED; r <= BRIDGE_AWS_DOCUMENTS; r++) {
        int n = bridge_aws_topic_build(&t, r, buf, sizeof buf);
        CHECK(n > 0 && !strcmp(buf, want[r]), "reply %d: %s", r, buf);
        CHECK(bridge_topic_publishable(buf, (size_t)n), "reply %d: not publishable", r);
    }
    t.op = BRIDGE_AWS_GET;
    t.name = "cfg";
    t.name_len = 3;
    CHECK(bridge_aws_topic_build(&t, BRIDGE_AWS_REJECTED, buf, sizeof buf) > 0 &&
              !strcmp(buf, "$aws/things/ecg-0001/shadow/name/cfg/get/rejected"),
          "named: %s", buf);
    CHECK(bridge_aws_topic_build(&t, BRIDGE_AWS_ACCEPTED, buf, 10) == -ENOSPC, "too small");
    t.name = "a.b";
    CHECK(bridge_aws_topic_build(&t, BRIDGE_AWS_ACCEPTED, buf, sizeof buf) == -EINVAL,
          "a bad name is never built");
    t.name = NULL;
    t.name_len = 0;
    t.thing = "+";
    t.thing_len = 1;
    CHECK(bridge_aws_topic_build(&t, BRIDGE_AWS_ACCEPTED, buf, sizeof buf) == -EINVAL,
          "a bad thing is never built");
    t.thing = "a";
    CHECK(bridge_aws_topic_build(&t, 9, buf, sizeof buf) == -EINVAL, "an unknown reply");
}

static void test_filters(void)
{
    static const char *const want[BRIDGE_AWS_FILTERS] = {
        "$aws/things/+/shadow/update",     "$aws/things/+/shadow/get",
        "$aws/things/+/shadow/delete",     "$aws/things/+/shadow/name/+/update",
        "$aws/things/+/shadow/name/+/get", "$aws/things/+/shadow/name/+/delete",
    };
    char buf[BRIDGE_TOPIC_MAX];
    for (int i = 0; i < BRIDGE_AWS_FILTERS; i++) {
        int n = bridge_aws_filter(i, buf, sizeof buf);
        CHECK(n == (int)strlen(want[i]) && !strcmp(buf, want[i]), "filter %d: %s", i, buf);
    }
    CHECK(bridge_aws_filter(BRIDGE_AWS_FILTERS, buf, sizeof buf) == -EINVAL, "filter past the end");
    CHECK(bridge_aws_filter(0, buf, 5) == -ENOSPC, "filter into a small buffer");
}

int main(void)
{
    test_parse();
    test_build();
    test_filters();
    if (failures) {
        fprintf(stderr, "test_aws_topics: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_aws_topics: all checks passed\n");
    return 0;
}
