/* tests/unit/bridge/test_topics.c: the topic scheme (bridge/topics.c), table-driven: ids,
 * prefixes, parse/build/filter of every kind, extra levels, NUL bytes, the publishable check.
 * Every parsed topic is copied into a heap buffer of exactly its length, so AddressSanitizer
 * catches any read past `len`.
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

/* bridge_topic_parse on an exact-length heap copy (no NUL after it). */
static int parse_exact(const struct bridge_topics *t, const char *topic, size_t len,
                       struct bridge_topic *out, char *err)
{
    char *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    memcpy(buf, topic, len);
    int rc = bridge_topic_parse(t, buf, len, out, err);
    /* the id points into the topic: check it before the copy goes */
    if (rc == 0 && out->id) {
        CHECK(out->id >= buf && out->id + out->id_len <= buf + len, "id outside the topic");
        static char idcopy[BRIDGE_ID_MAX + 1];
        memcpy(idcopy, out->id, out->id_len);
        idcopy[out->id_len] = '\0';
        out->id = idcopy;
    }
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Ids
 * ------------------------------------------------------------------------------------------ */

static void test_ids(void)
{
    char long128[129], long129[130];
    memset(long128, 'a', 128);
    long128[128] = '\0';
    memset(long129, 'b', 129);
    long129[129] = '\0';
    static const struct {
        const char *id;
        size_t len; /* 0: strlen */
        bool ok;
    } cases[] = {
        {"a", 0, true},
        {"0", 0, true},
        {"ecg-001", 0, true},
        {"A.b_c:d-e", 0, true},
        {"trailing.", 0, true},
        {"-leading-dash", 0, true},
        {"", 0, false},
        {".hidden", 0, false},
        {".", 0, false},
        {"a/b", 0, false},
        {"a+b", 0, false},
        {"+", 0, false},
        {"a#b", 0, false},
        {"#", 0, false},
        {"a b", 0, false},
        {" a", 0, false},
        {"a\tb", 0, false},
        {"caf\xc3\xa9", 0, false},
        {"\xe2\x9d\xa4", 0, false},
        {"a\0b", 3, false},
        {"ab\0", 3, false},
        {"a$b", 0, false},
        {"a*b", 0, false},
        {"a\"b", 0, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].id);
        CHECK(bridge_id_valid(cases[i].id, len) == cases[i].ok, "id case %zu", i);
    }
    CHECK(bridge_id_valid(long128, 128), "128 bytes is the maximum");
    CHECK(!bridge_id_valid(long129, 129), "129 bytes is too long");
    CHECK(!bridge_id_valid(NULL, 0), "NULL id");
    CHECK(!bridge_id_valid(NULL, 3), "NULL id with a length");
    /* only `len` bytes count: a valid prefix of an invalid string is valid */
    CHECK(bridge_id_valid("ab/c", 2), "prefix of an invalid string");
}

/* ---------------------------------------------------------------------------------------------
 * Prefixes
 * ------------------------------------------------------------------------------------------ */

static void test_prefixes(void)
{
    struct bridge_topics t;
    char err[BRIDGE_ERR_LEN];
    CHECK(bridge_topics_init(&t, NULL, NULL, NULL, err) == 0, "defaults: %s", err);
    CHECK(strcmp(t.devices, "devices/") == 0 && strcmp(t.twins, "twins/") == 0 &&
              strcmp(t.hub, "hub/") == 0,
          "default prefixes %s %s %s", t.devices, t.twins, t.hub);

    char p62[63], p63[64], p62s[64];
    memset(p62, 'p', 62);
    p62[62] = '\0';
    memset(p63, 'q', 63);
    p63[63] = '\0';
    memcpy(p62s, p62, 62);
    p62s[62] = '/';
    p62s[63] = '\0';

    static const struct {
        const char *in;
        const char *want; /* NULL: must be refused */
    } cases[] = {
        {"fleet/dev", "fleet/dev/"},
        {"fleet/dev/", "fleet/dev/"},
        {"d", "d/"},
        {"a.b-c_d:e", "a.b-c_d:e/"},
        {"", NULL},
        {"/", NULL},
        {"//", NULL},
        {"a//b", NULL},
        {"a//", NULL},
        {"/a", NULL},
        {"a+", NULL},
        {"+/x", NULL},
        {"a/#", NULL},
        {"#", NULL},
        {"a b", NULL},
        {"a\tb", NULL},
        {"a\x7f", NULL},
        {"a\x01", NULL},
        {"caf\xc3\xa9", NULL},
        {"$SYS", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        int rc = bridge_topics_init(&t, cases[i].in, "tw", "hb", err);
        if (cases[i].want) {
            CHECK(rc == 0, "prefix case %zu \"%s\": rc=%d err=%s", i, cases[i].in, rc, err);
            CHECK(rc != 0 || strcmp(t.devices, cases[i].want) == 0, "prefix case %zu: got %s", i,
                  t.devices);
        } else {
            CHECK(rc == -EINVAL && err[0], "prefix case %zu \"%s\" accepted", i, cases[i].in);
        }
    }
    CHECK(bridge_topics_init(&t, p62, NULL, NULL, err) == 0, "62 bytes: %s", err);
    CHECK(strlen(t.devices) == 63 && t.devices[62] == '/', "62 bytes plus '/'");
    CHECK(bridge_topics_init(&t, p62s, NULL, NULL, err) == 0, "62 bytes and '/': %s", err);
    CHECK(bridge_topics_init(&t, p63, NULL, NULL, err) == -EINVAL, "63 bytes accepted");
    /* the twins and hub prefixes go through the same checks */
    CHECK(bridge_topics_init(&t, NULL, "a//b", NULL, err) == -EINVAL, "twins a//b");
    CHECK(bridge_topics_init(&t, NULL, NULL, "h+", err) == -EINVAL, "hub h+");
    /* equal or nested prefixes would make a topic mean two things */
    CHECK(bridge_topics_init(&t, "x", "x/", NULL, err) == -EINVAL, "equal prefixes");
    CHECK(bridge_topics_init(&t, "a", NULL, "a/b", err) == -EINVAL, "nested prefixes");
    CHECK(bridge_topics_init(&t, "ab", "a", NULL, err) == 0,
          "\"a/\" is not a prefix of "
          "\"ab/\": %s",
          err);
    /* a refused init leaves the structure as it was */
    CHECK(bridge_topics_init(&t, "keep/dev", NULL, NULL, err) == 0, "keep");
    CHECK(bridge_topics_init(&t, "a//b", NULL, NULL, err) == -EINVAL, "refused");
    CHECK(strcmp(t.devices, "keep/dev/") == 0, "unchanged after a refusal: %s", t.devices);
    CHECK(bridge_topics_init(NULL, NULL, NULL, NULL, err) == -EINVAL, "NULL topics");
}

/* ---------------------------------------------------------------------------------------------
 * Parse, build, filter for every kind
 * ------------------------------------------------------------------------------------------ */

struct kind_case {
    enum bridge_topic_kind kind;
    const char *topic;  /* with the default prefixes and id "dev-1" */
    const char *filter; /* the subscription filter */
};

static const struct kind_case kinds[] = {
    {BRIDGE_T_TELEMETRY, "devices/dev-1/telemetry", "devices/+/telemetry"},
    {BRIDGE_T_STATUS, "devices/dev-1/status", "devices/+/status"},
    {BRIDGE_T_CMD_ACK, "devices/dev-1/commands/ack", "devices/+/commands/ack"},
    {BRIDGE_T_SENML, "devices/dev-1/senml", "devices/+/senml"},
    {BRIDGE_T_DESIRED, "devices/dev-1/desired", "devices/+/desired"},
    {BRIDGE_T_COMMANDS, "devices/dev-1/commands", "devices/+/commands"},
    {BRIDGE_T_DESIRED_SET, "twins/dev-1/desired/set", "twins/+/desired/set"},
    {BRIDGE_T_GET, "twins/dev-1/get", "twins/+/get"},
    {BRIDGE_T_CMD_SEND, "twins/dev-1/commands/send", "twins/+/commands/send"},
    {BRIDGE_T_DELETE, "twins/dev-1/delete", "twins/+/delete"},
    {BRIDGE_T_STATE, "twins/dev-1/state", "twins/+/state"},
    {BRIDGE_T_EVENTS, "twins/dev-1/events", "twins/+/events"},
    {BRIDGE_T_PREDICTIONS, "twins/dev-1/predictions", "twins/+/predictions"},
    {BRIDGE_T_HUB_STATUS, "hub/status", "hub/status"},
    {BRIDGE_T_HUB_ERRORS, "hub/errors", "hub/errors"},
    {BRIDGE_T_HISTORY, "twins/dev-1/history", "twins/+/history"},
    {BRIDGE_T_QUERY, "hub/query", "hub/query"},
};
#define N_KINDS (sizeof(kinds) / sizeof(kinds[0]))

static bool hub_kind(enum bridge_topic_kind k)
{
    return k == BRIDGE_T_HUB_STATUS || k == BRIDGE_T_HUB_ERRORS || k == BRIDGE_T_QUERY;
}

/* Replaces the default prefix of `topic` by the custom one. */
static void with_prefixes(const struct bridge_topics *t, const char *topic, char *out,
                          size_t outlen)
{
    static const char *defaults[3] = {"devices/", "twins/", "hub/"};
    const char *custom[3] = {t->devices, t->twins, t->hub};
    for (int i = 0; i < 3; i++) {
        size_t dl = strlen(defaults[i]);
        if (strncmp(topic, defaults[i], dl) == 0) {
            snprintf(out, outlen, "%s%s", custom[i], topic + dl);
            return;
        }
    }
    snprintf(out, outlen, "%s", topic);
}

static void check_kinds(const struct bridge_topics *t, const char *label)
{
    char err[BRIDGE_ERR_LEN], want[BRIDGE_TOPIC_MAX], buf[BRIDGE_TOPIC_MAX];
    bool seen[BRIDGE_T_LAST + 1] = {false};
    for (size_t i = 0; i < N_KINDS; i++) {
        const struct kind_case *k = &kinds[i];
        seen[k->kind] = true;
        with_prefixes(t, k->topic, want, sizeof(want));

        int n = bridge_topic_build(t, k->kind, "dev-1", 5, buf, sizeof(buf));
        CHECK(n == (int)strlen(want) && strcmp(buf, want) == 0, "%s build %d: got %d \"%s\"", label,
              k->kind, n, n >= 0 ? buf : "");

        struct bridge_topic pt;
        err[0] = '\0';
        int rc = parse_exact(t, want, strlen(want), &pt, err);
        CHECK(rc == 0 && pt.kind == k->kind, "%s parse \"%s\": rc=%d kind=%d err=%s", label, want,
              rc, pt.kind, err);
        if (hub_kind(k->kind))
            CHECK(pt.id == NULL && pt.id_len == 0, "%s hub topic has an id", label);
        else
            CHECK(rc == 0 && pt.id_len == 5 && memcmp(pt.id, "dev-1", 5) == 0,
                  "%s parse \"%s\": wrong id", label, want);

        with_prefixes(t, k->filter, want, sizeof(want));
        n = bridge_topic_filter(t, k->kind, buf, sizeof(buf));
        CHECK(n == (int)strlen(want) && strcmp(buf, want) == 0, "%s filter %d: got \"%s\"", label,
              k->kind, n >= 0 ? buf : "");

        /* exact fit and one byte short */
        n = bridge_topic_build(t, k->kind, "dev-1", 5, buf, sizeof(buf));
        char *exact = malloc((size_t)n + 1);
        CHECK(bridge_topic_build(t, k->kind, "dev-1", 5, exact, (size_t)n + 1) == n, "%s exact fit",
              label);
        CHECK(bridge_topic_build(t, k->kind, "dev-1", 5, exact, (size_t)n) == -ENOSPC,
              "%s one short", label);
        CHECK(bridge_topic_filter(t, k->kind, exact, 1) == -ENOSPC, "%s filter short", label);
        free(exact);
    }
    for (int k = BRIDGE_T_TELEMETRY; k <= BRIDGE_T_LAST; k++)
        CHECK(seen[k], "kind %d missing from the table", k);

    /* ids at the limits */
    char id128[129];
    memset(id128, 'z', 128);
    id128[128] = '\0';
    int n = bridge_topic_build(t, BRIDGE_T_STATE, id128, 128, buf, sizeof(buf));
    CHECK(n > 0, "%s 128-byte id", label);
    struct bridge_topic pt;
    CHECK(parse_exact(t, buf, (size_t)n, &pt, err) == 0 && pt.id_len == 128,
          "%s parse a 128-byte id", label);
}

static void test_kinds(void)
{
    struct bridge_topics t;
    char err[BRIDGE_ERR_LEN];
    CHECK(bridge_topics_init(&t, NULL, NULL, NULL, err) == 0, "defaults");
    check_kinds(&t, "default");
    CHECK(bridge_topics_init(&t, "site-a/fleet/dev", "site-a/fleet/twin", "site-a/hub01", err) == 0,
          "custom: %s", err);
    check_kinds(&t, "custom");
    CHECK(bridge_topics_init(&t, "d", "t", "h/", err) == 0, "short: %s", err);
    check_kinds(&t, "short");

    /* with custom prefixes, the default ones are unknown */
    struct bridge_topic pt;
    CHECK(parse_exact(&t, "devices/x/telemetry", 19, &pt, err) == -EINVAL &&
              pt.kind == BRIDGE_T_UNKNOWN,
          "default prefix under custom ones");

    /* build and filter refuse unknown kinds; build refuses bad ids */
    char buf[BRIDGE_TOPIC_MAX];
    CHECK(bridge_topic_build(&t, BRIDGE_T_UNKNOWN, "a", 1, buf, sizeof(buf)) == -EINVAL, "k0");
    CHECK(bridge_topic_build(&t, (enum bridge_topic_kind)99, "a", 1, buf, sizeof(buf)) == -EINVAL,
          "k99");
    CHECK(bridge_topic_filter(&t, BRIDGE_T_UNKNOWN, buf, sizeof(buf)) == -EINVAL, "f0");
    CHECK(bridge_topic_build(&t, BRIDGE_T_HUB_STATUS, NULL, 0, buf, sizeof(buf)) == 8 &&
              strcmp(buf, "h/status") == 0,
          "hub topic needs no id: %s", buf);
}

/* ---------------------------------------------------------------------------------------------
 * Topics that are not ours, or carry a bad id
 * ------------------------------------------------------------------------------------------ */

static void test_rejects(void)
{
    struct bridge_topics t;
    char err[BRIDGE_ERR_LEN];
    CHECK(bridge_topics_init(&t, NULL, NULL, NULL, err) == 0, "defaults");
    char id129[160];
    snprintf(id129, sizeof(id129), "devices/%0129d/telemetry", 0);

    static const struct {
        const char *topic;
        size_t len;      /* 0: strlen */
        const char *why; /* expected err */
    } cases[] = {
        /* bad ids */
        {"devices//telemetry", 0, "bad device id"},
        {"devices/.x/telemetry", 0, "bad device id"},
        {"devices/a b/telemetry", 0, "bad device id"},
        {"devices/a+b/telemetry", 0, "bad device id"},
        {"devices/+/telemetry", 0, "bad device id"},
        {"devices/#/status", 0, "bad device id"},
        {"devices/caf\xc3\xa9/telemetry", 0, "bad device id"},
        {"twins/\xff/state", 0, "bad device id"},
        {"twins/a\tb/get", 0, "bad device id"},
        {"twins//desired/set", 0, "bad device id"},
        /* a '/' in the id is an extra level */
        {"devices/a/b/telemetry", 0, "unknown topic"},
        {"twins/a/b/state", 0, "unknown topic"},
        /* extra or missing levels */
        {"devices/x/telemetry/extra", 0, "unknown topic"},
        {"devices/x/telemetry/", 0, "unknown topic"},
        {"devices/x/commands/ack/x", 0, "unknown topic"},
        {"devices/x/commands/", 0, "unknown topic"},
        {"devices/x/", 0, "unknown topic"},
        {"devices/x", 0, "unknown topic"},
        {"devices/", 0, "unknown topic"},
        {"devices", 0, "unknown topic"},
        {"/devices/x/telemetry", 0, "unknown topic"},
        {"devices/x/Telemetry", 0, "unknown topic"},
        {"twins/x/desired", 0, "unknown topic"}, /* a device kind under twins/ */
        {"devices/x/desired/set", 0, "unknown topic"},
        {"twins/x/desired/set/accepted", 0, "unknown topic"},
        {"twins/x/commands", 0, "unknown topic"},
        {"hub/status/x", 0, "unknown topic"},
        {"hub/statu", 0, "unknown topic"},
        {"hub/", 0, "unknown topic"},
        {"hub/x/status", 0, "unknown topic"},
        {"xhub/status", 0, "unknown topic"},
        {"other/x/telemetry", 0, "unknown topic"},
        {"", 0, "unknown topic"},
        /* NUL bytes */
        {"devices/x\0/telemetry", 20, "NUL byte in topic"},
        {"devices/x/telemetry\0", 20, "NUL byte in topic"},
        {"hub/status\0", 11, "NUL byte in topic"},
        {"\0", 1, "NUL byte in topic"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].topic);
        struct bridge_topic pt = {BRIDGE_T_STATE, "junk", 4};
        err[0] = '\0';
        int rc = parse_exact(&t, cases[i].topic, len, &pt, err);
        CHECK(rc == -EINVAL, "reject case %zu \"%s\": rc=%d", i, cases[i].topic, rc);
        CHECK(pt.kind == BRIDGE_T_UNKNOWN && pt.id == NULL && pt.id_len == 0,
              "reject case %zu: out not reset", i);
        CHECK(strcmp(err, cases[i].why) == 0, "reject case %zu \"%s\": err \"%s\" want \"%s\"", i,
              cases[i].topic, err, cases[i].why);
    }
    struct bridge_topic pt;
    CHECK(parse_exact(&t, id129, strlen(id129), &pt, err) == -EINVAL &&
              strcmp(err, "bad device id") == 0,
          "129-byte id: %s", err);

    /* len limits what is read: a longer buffer cut at the right place parses */
    const char *longer = "devices/abc/telemetryXYZ";
    CHECK(parse_exact(&t, longer, 21, &pt, err) == 0 && pt.kind == BRIDGE_T_TELEMETRY,
          "cut at len");
    CHECK(parse_exact(&t, longer, 17, &pt, err) == -EINVAL, "cut short");
    CHECK(parse_exact(&t, "hub/statusX", 10, &pt, err) == 0 && pt.kind == BRIDGE_T_HUB_STATUS,
          "hub cut at len");

    /* too long, NULL */
    char big[BRIDGE_TOPIC_MAX + 2];
    memset(big, 'a', sizeof(big));
    memcpy(big, "devices/x/", 10);
    CHECK(parse_exact(&t, big, sizeof(big), &pt, err) == -EINVAL, "longer than the maximum");
    CHECK(bridge_topic_parse(&t, NULL, 5, &pt, err) == -EINVAL, "NULL topic");
    CHECK(bridge_topic_parse(NULL, "hub/status", 10, &pt, err) == -EINVAL, "NULL topics");
    CHECK(bridge_topic_parse(&t, "hub/status", 10, &pt, NULL) == 0, "NULL err is allowed");

    /* build refuses every bad id */
    static const char *bad_ids[] = {"", ".x", "a/b", "a+b", "a#b", "a b", "caf\xc3\xa9"};
    char buf[BRIDGE_TOPIC_MAX];
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++)
        CHECK(bridge_topic_build(&t, BRIDGE_T_DESIRED, bad_ids[i], strlen(bad_ids[i]), buf,
                                 sizeof(buf)) == -EINVAL,
              "build with bad id \"%s\"", bad_ids[i]);
    CHECK(bridge_topic_build(&t, BRIDGE_T_DESIRED, "a\0b", 3, buf, sizeof(buf)) == -EINVAL,
          "build with NUL in id");
    CHECK(bridge_topic_build(&t, BRIDGE_T_DESIRED, NULL, 3, buf, sizeof(buf)) == -EINVAL,
          "build with NULL id");
    CHECK(bridge_topic_build(&t, BRIDGE_T_DESIRED, id129 + 8, 129, buf, sizeof(buf)) == -EINVAL,
          "build with a 129-byte id");
}

/* ---------------------------------------------------------------------------------------------
 * Publishable
 * ------------------------------------------------------------------------------------------ */

static void test_publishable(void)
{
    static const struct {
        const char *topic;
        size_t len; /* 0: strlen */
        bool ok;
    } cases[] = {
        {"a", 0, true},
        {"devices/x/desired", 0, true},
        {"/leading/slash", 0, true},
        {"a//b", 0, true},
        {"caf\xc3\xa9/\xe2\x9d\xa4/\xf0\x9f\x98\x80", 0, true},
        {"with space", 0, true},
        {"", 0, false},
        {"a/+/b", 0, false},
        {"+", 0, false},
        {"a/#", 0, false},
        {"#", 0, false},
        {"a\x01", 0, false},
        {"a\n", 0, false},
        {"a\x1f", 0, false},
        {"a\x7f", 0, false},
        {"a\xc2\x80", 0, false}, /* C1 control */
        {"a\xc2\x9f", 0, false},
        {"a\xc2\xa0", 0, true}, /* first code point past C1 */
        {"a\0b", 3, false},
        {"a\0", 2, false},
        {"\xc0\xaf", 0, false},         /* overlong '/' */
        {"\xe0\x80\xaf", 0, false},     /* overlong */
        {"\xed\xa0\x80", 0, false},     /* surrogate */
        {"\xe2\x82", 0, false},         /* truncated */
        {"\xf4\x90\x80\x80", 0, false}, /* past U+10FFFF */
        {"\xf8\x88\x80\x80\x80", 0, false},
        {"\xff", 0, false},
        {"\x80", 0, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].topic);
        char *buf = malloc(len ? len : 1);
        memcpy(buf, cases[i].topic, len);
        CHECK(bridge_topic_publishable(buf, len) == cases[i].ok, "publishable case %zu", i);
        free(buf);
    }
    char big[BRIDGE_TOPIC_MAX + 1];
    memset(big, 'x', sizeof(big));
    CHECK(bridge_topic_publishable(big, BRIDGE_TOPIC_MAX), "512 bytes");
    CHECK(!bridge_topic_publishable(big, BRIDGE_TOPIC_MAX + 1), "513 bytes");
    CHECK(!bridge_topic_publishable(NULL, 3), "NULL");
    /* a multi-byte character cut by len is malformed */
    CHECK(!bridge_topic_publishable("\xc3\xa9", 1), "cut character");
}

/* Topics a request may not name as its response topic: the hub's scheme, whatever the id. */
static void test_reserved(void)
{
    static const struct {
        const char *topic;
        bool reserved;
    } cases[] = {
        {"devices/d1/telemetry", true},     {"devices/anything", true},
        {"hub/status", true},               {"hub/whatever", true},
        {"twins/d1/events", true},          {"twins/a b/events", true}, /* bad id */
        {"twins/.x/state", true},           {"twins/d1/predictions", true},
        {"twins/d1/desired/set", true},     {"twins/d1/desired/set/accepted", true},
        {"twins/a b/get/rejected", true},   {"twins/_replies/twinctl-1", false},
        {"twins/d1/mine", false},           {"twins/d1/events/x", false},
        {"replies/svc-1", false},           {"devicesX/d1/telemetry", false},
    };
    struct bridge_topics t;
    char err[BRIDGE_ERR_LEN];
    CHECK(bridge_topics_init(&t, NULL, NULL, NULL, err) == 0, "defaults");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK(bridge_topic_reserved(&t, cases[i].topic, strlen(cases[i].topic)) ==
                  cases[i].reserved,
              "reserved %s", cases[i].topic);
}

int main(void)
{
    test_ids();
    test_prefixes();
    test_kinds();
    test_rejects();
    test_publishable();
    test_reserved();
    if (failures) {
        fprintf(stderr, "test_topics: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_topics: all checks passed\n");
    return 0;
}
