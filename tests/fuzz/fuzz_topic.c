/* fuzz_topic.c: the topic scheme (bridge/topics.c) on arbitrary bytes: bridge_topics_init on
 * hostile prefixes, bridge_topic_parse of any received topic, bridge_id_valid,
 * bridge_topic_build / bridge_topic_filter with any id and buffer size, and
 * bridge_topic_publishable, with the invariants that keep the hub on its own topics:
 *   - whatever parses builds back to the very same bytes, and is publishable;
 *   - whatever builds parses back to the same kind and id, is publishable, and its id is valid;
 *   - id validity and publishability agree with independent implementations of DESIGN.md §3
 *     and of "UTF-8 without '+', '#', C0/C1 controls or DEL";
 *   - a failed bridge_topics_init leaves the prefixes as they were;
 *   - no call reads or writes outside the buffers it is given (exact-size heap copies).
 * A rejected topic is logged and reported (hub/report.c): log_quote (hub/log.c) gets the same
 * bytes, in buffers of many sizes, and must write one NUL-terminated logfmt value with no raw
 * control byte, whole when the buffer is large enough.
 *
 * Input: the topic, whole. Or, when the first byte is 'P': three prefixes each ending at a NUL
 * byte (devices, twins, hub; a missing one keeps its default), then the topic.
 */
#include "bridge.h"
#include "fuzz.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define N_KIND_TRIES (BRIDGE_T_LAST + 2) /* every kind, plus one past the end */

static bool ref_id_valid(const uint8_t *s, size_t n)
{
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";

    if (n < 1 || n > 128 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(ok, s[i]))
            return false;
    return true;
}

static bool ref_publishable(const uint8_t *s, size_t n)
{
    if (n < 1 || n > BRIDGE_TOPIC_MAX || !fuzz_utf8_valid(s, n))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f || s[i] == '+' || s[i] == '#')
            return false;
        /* C1 controls U+0080..U+009F are 0xc2 0x80..0x9f in UTF-8 */
        if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return false;
    }
    return true;
}

static bool hub_kind(enum bridge_topic_kind k)
{
    return k == BRIDGE_T_HUB_STATUS || k == BRIDGE_T_HUB_ERRORS || k == BRIDGE_T_QUERY;
}

/* A heap copy of exactly n bytes (1 when n is 0), so that ASan sees any read past the end. */
static char *exact_copy(const void *p, size_t n)
{
    char *c = malloc(n ? n : 1);

    FUZZ_CHECK(c, "out of memory");
    if (n)
        memcpy(c, p, n);
    return c;
}

static void check_prefix(const char *p)
{
    size_t n = strlen(p);

    FUZZ_CHECK(n >= 2 && n <= BRIDGE_PREFIX_MAX - 1, "prefix \"%s\" of %zu bytes", p, n);
    FUZZ_CHECK(p[n - 1] == '/' && p[0] != '$' && p[0] != '/', "prefix \"%s\"", p);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        FUZZ_CHECK(c > 0x20 && c < 0x7f && c != '+' && c != '#', "prefix \"%s\" byte %zu", p, i);
        FUZZ_CHECK(!(c == '/' && i + 1 < n && p[i + 1] == '/'), "empty level in \"%s\"", p);
    }
}

/* topic[0..n) parsed to `t`: it must build back to itself. */
static void check_parsed(const struct bridge_topics *tp, const char *topic, size_t n,
                         const struct bridge_topic *t)
{
    char buf[BRIDGE_TOPIC_MAX + 1];
    int len;

    FUZZ_CHECK(t->kind > BRIDGE_T_UNKNOWN && t->kind <= BRIDGE_T_LAST, "kind %d", t->kind);
    FUZZ_CHECK(bridge_topic_publishable(topic, n), "parsed topic %.*s is not publishable", (int)n,
               topic);
    if (hub_kind(t->kind)) {
        FUZZ_CHECK(t->id == NULL && t->id_len == 0, "hub topic with an id");
        len = bridge_topic_build(tp, t->kind, NULL, 0, buf, sizeof buf);
    } else {
        FUZZ_CHECK(t->id >= topic && t->id + t->id_len <= topic + n, "id outside the topic");
        FUZZ_CHECK(bridge_id_valid(t->id, t->id_len), "parsed an invalid id");
        FUZZ_CHECK(ref_id_valid((const uint8_t *)t->id, t->id_len), "parsed an invalid id");
        len = bridge_topic_build(tp, t->kind, t->id, t->id_len, buf, sizeof buf);
    }
    FUZZ_CHECK(len > 0 && (size_t)len == n && memcmp(buf, topic, n) == 0,
               "%.*s parsed as kind %d but builds back as %.*s (%d)", (int)n, topic, t->kind,
               len > 0 ? len : 0, buf, len);
}

/* Builds kind for id[0..n) and checks the result both ways. */
static void check_build(const struct bridge_topics *tp, int kind, const char *id, size_t n)
{
    char buf[BRIDGE_TOPIC_MAX + 1], err[BRIDGE_ERR_LEN];
    struct bridge_topic t;
    int len = bridge_topic_build(tp, (enum bridge_topic_kind)kind, id, n, buf, sizeof buf);
    char *small;
    int rc;

    if (kind <= BRIDGE_T_UNKNOWN || kind > BRIDGE_T_LAST) {
        FUZZ_CHECK(len == -EINVAL, "kind %d built: %d", kind, len);
        return;
    }
    if (!hub_kind((enum bridge_topic_kind)kind) && !ref_id_valid((const uint8_t *)id, n)) {
        FUZZ_CHECK(len == -EINVAL, "invalid id built into kind %d: %d", kind, len);
        return;
    }
    FUZZ_CHECK(len > 0 && (size_t)len < sizeof buf, "kind %d: build returned %d", kind, len);
    FUZZ_CHECK(buf[len] == '\0' && strlen(buf) == (size_t)len, "build: not NUL-terminated");
    FUZZ_CHECK(bridge_topic_publishable(buf, (size_t)len), "built %s is not publishable", buf);
    FUZZ_CHECK(ref_publishable((const uint8_t *)buf, (size_t)len), "built %s is not ok", buf);
    rc = bridge_topic_parse(tp, buf, (size_t)len, &t, err);
    FUZZ_CHECK(rc == 0, "built %s does not parse: %s", buf, err);
    FUZZ_CHECK(t.kind == (enum bridge_topic_kind)kind, "built %s as kind %d, parses as %d", buf,
               kind, t.kind);
    if (!hub_kind(t.kind))
        FUZZ_CHECK(t.id_len == n && memcmp(t.id, id, n) == 0, "built %s: id changed", buf);

    /* exactly big enough, and one byte short, in a buffer of exactly that size */
    small = malloc((size_t)len + 1);
    FUZZ_CHECK(small, "out of memory");
    FUZZ_CHECK(
        bridge_topic_build(tp, (enum bridge_topic_kind)kind, id, n, small, (size_t)len + 1) == len,
        "exact buffer");
    FUZZ_CHECK(bridge_topic_build(tp, (enum bridge_topic_kind)kind, id, n, small, (size_t)len) ==
                   -ENOSPC,
               "short buffer");
    free(small);
}

static void check_filter(const struct bridge_topics *tp, int kind)
{
    char buf[BRIDGE_TOPIC_MAX + 1], *small;
    int len = bridge_topic_filter(tp, (enum bridge_topic_kind)kind, buf, sizeof buf);

    if (kind <= BRIDGE_T_UNKNOWN || kind > BRIDGE_T_LAST) {
        FUZZ_CHECK(len == -EINVAL, "filter of kind %d: %d", kind, len);
        return;
    }
    FUZZ_CHECK(len > 0 && buf[len] == '\0' && strlen(buf) == (size_t)len, "filter %d", kind);
    FUZZ_CHECK(!strchr(buf, '#'), "filter %s", buf);
    if (!hub_kind((enum bridge_topic_kind)kind))
        FUZZ_CHECK(strstr(buf, "/+/") != NULL, "filter %s has no '+' level", buf);
    small = malloc((size_t)len);
    FUZZ_CHECK(small, "out of memory");
    FUZZ_CHECK(bridge_topic_filter(tp, (enum bridge_topic_kind)kind, small, (size_t)len) == -ENOSPC,
               "short filter buffer");
    free(small);
}

static void check_quote(const char *s, size_t n)
{
    static const size_t sizes[] = {1, 2, 3, 4, 7, 16, 64};

    for (size_t i = 0; i <= sizeof sizes / sizeof sizes[0]; i++) {
        /* the last size holds any escaped form: 6 bytes per input byte, quotes, NUL */
        size_t size = i < sizeof sizes / sizeof sizes[0] ? sizes[i] : 6 * n + 3;
        char *buf = malloc(size);
        size_t len;

        FUZZ_CHECK(buf, "out of memory");
        memset(buf, 'Z', size);
        FUZZ_CHECK(log_quote(buf, size, s, n) == buf, "log_quote return");
        FUZZ_CHECK(memchr(buf, '\0', size), "log_quote: not terminated in %zu bytes", size);
        len = strlen(buf);
        for (size_t k = 0; k < len; k++)
            FUZZ_CHECK((unsigned char)buf[k] >= 0x20 && buf[k] != 0x7f,
                       "log_quote wrote control byte 0x%02x", (unsigned char)buf[k]);
        if (len && buf[0] == '"')
            FUZZ_CHECK(len >= 2 && buf[len - 1] == '"', "log_quote left a quote open");
        if (i == sizeof sizes / sizeof sizes[0]) {
            if (len && buf[0] != '"')
                FUZZ_CHECK(len == n && memcmp(buf, s, n) == 0, "bare value changed");
            else
                FUZZ_CHECK(len >= n + 2, "quoted value cut short in %zu bytes", size);
        }
        free(buf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bridge_topics tp, before;
    struct bridge_topic t;
    char err[BRIDGE_ERR_LEN];
    char *topic;
    int rc;

    rc = bridge_topics_init(&tp, NULL, NULL, NULL, err);
    FUZZ_CHECK(rc == 0, "default prefixes: %s", err);
    if (size > 0 && data[0] == 'P') {
        /* prefixes: NUL-terminated strings taken from the input */
        char *pre[3] = {NULL, NULL, NULL};
        size_t at = 1;

        for (int i = 0; i < 3 && at < size; i++) {
            const uint8_t *nul = memchr(data + at, 0, size - at);
            size_t n = nul ? (size_t)(nul - (data + at)) : size - at;

            pre[i] = malloc(n + 1);
            FUZZ_CHECK(pre[i], "out of memory");
            memcpy(pre[i], data + at, n);
            pre[i][n] = '\0';
            at += n + (nul ? 1 : 0);
        }
        before = tp;
        err[0] = '\0';
        rc = bridge_topics_init(&tp, pre[0], pre[1], pre[2], err);
        for (int i = 0; i < 3; i++)
            free(pre[i]);
        if (rc) {
            FUZZ_CHECK(rc == -EINVAL && err[0], "bridge_topics_init: %d", rc);
            FUZZ_CHECK(memcmp(&tp, &before, sizeof tp) == 0, "failed init changed the prefixes");
            return 0;
        }
        check_prefix(tp.devices);
        check_prefix(tp.twins);
        check_prefix(tp.hub);
        data += at;
        size -= at;
    }

    topic = exact_copy(data, size);
    check_quote(topic, size);
    FUZZ_CHECK(bridge_id_valid(topic, size) == ref_id_valid(data, size), "bridge_id_valid");
    FUZZ_CHECK(bridge_topic_publishable(topic, size) == ref_publishable(data, size),
               "bridge_topic_publishable disagrees with the reference on %zu bytes", size);

    err[0] = '\0';
    rc = bridge_topic_parse(&tp, topic, size, &t, err);
    if (rc == 0) {
        check_parsed(&tp, topic, size, &t);
    } else {
        FUZZ_CHECK(rc == -EINVAL && t.kind == BRIDGE_T_UNKNOWN && t.id == NULL && err[0],
                   "parse failure %d", rc);
    }
    (void)bridge_topic_parse(&tp, topic, size, NULL, NULL); /* out and err may be NULL */

    for (int k = 0; k < N_KIND_TRIES; k++) {
        check_build(&tp, k, topic, size);
        check_filter(&tp, k);
    }
    free(topic);
    return 0;
}
