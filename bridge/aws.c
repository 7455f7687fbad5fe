/* bridge/aws.c: the topic names of AWS IoT Device Shadow (aws.shadow: true) - parsing the
 * request topics devices publish, building the reply topics the hub publishes, and the
 * subscription filters. It knows nothing of shadow documents (hub/shadow.c owns those). Pure
 * functions on caller memory: no MQTT, no allocation, no locks; any thread may call them.
 *
 *   $aws/things/{thing}/shadow/{update|get|delete}[/{accepted|rejected|delta|documents}]
 *   $aws/things/{thing}/shadow/name/{shadow}/{update|get|delete}[/...]
 *
 * A thing is a device id (bridge_id_valid: AWS's own rule, [a-zA-Z0-9:_-]{1,128}, plus '.'
 * not first, so that every twin can be reached); a shadow name follows AWS:
 * [a-zA-Z0-9:_-]{1,64}.
 */
#include "bridge.h"
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define AWS_PREFIX "$aws/things/"
#define AWS_PREFIX_LEN (sizeof(AWS_PREFIX) - 1)

static const char *const ops[] = {
    [BRIDGE_AWS_UPDATE] = "update",
    [BRIDGE_AWS_GET] = "get",
    [BRIDGE_AWS_DELETE] = "delete",
};

static const char *const replies[] = {
    [BRIDGE_AWS_ACCEPTED] = "accepted",
    [BRIDGE_AWS_REJECTED] = "rejected",
    [BRIDGE_AWS_DELTA] = "delta",
    [BRIDGE_AWS_DOCUMENTS] = "documents",
};

bool bridge_aws_name_valid(const char *name, size_t len)
{
    if (!name || len == 0 || len > BRIDGE_AWS_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == ':' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

bool bridge_aws_topic_is(const char *topic, size_t len)
{
    return topic && len >= 5 && memcmp(topic, "$aws/", 5) == 0;
}

/* Takes the next level of [*p, end) into (*lv, *lvlen) and moves *p past its '/'. Returns
 * false when nothing is left. */
static bool level(const char **p, const char *end, const char **lv, size_t *lvlen)
{
    if (*p > end)
        return false;
    const char *slash = memchr(*p, '/', (size_t)(end - *p));
    const char *stop = slash ? slash : end;
    *lv = *p;
    *lvlen = (size_t)(stop - *p);
    *p = slash ? slash + 1 : end + 1;
    return true;
}

static bool is(const char *lv, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(lv, s, n) == 0;
}

int bridge_aws_topic_parse(const char *topic, size_t len, struct bridge_aws_topic *out, char *err)
{
    struct bridge_aws_topic t = {0};
    const char *lv, *end = topic + len, *p;
    size_t n;
    if (out)
        memset(out, 0, sizeof(*out));
    if (!topic || !out || len <= AWS_PREFIX_LEN || len > BRIDGE_TOPIC_MAX ||
        memcmp(topic, AWS_PREFIX, AWS_PREFIX_LEN) != 0) {
        bridge__seterr(err, "not a shadow topic");
        return -EINVAL;
    }
    if (memchr(topic, '\0', len)) {
        bridge__seterr(err, "NUL byte in topic");
        return -EINVAL;
    }
    p = topic + AWS_PREFIX_LEN;
    if (!level(&p, end, &t.thing, &t.thing_len) || !level(&p, end, &lv, &n) ||
        !is(lv, n, "shadow") || !level(&p, end, &lv, &n)) {
        bridge__seterr(err, "not a shadow topic");
        return -EINVAL;
    }
    if (is(lv, n, "name")) {
        if (!level(&p, end, &t.name, &t.name_len) || !level(&p, end, &lv, &n)) {
            bridge__seterr(err, "not a shadow topic");
            return -EINVAL;
        }
    }
    int op = -1;
    for (int i = 0; i < (int)(sizeof(ops) / sizeof(ops[0])); i++)
        if (is(lv, n, ops[i]))
            op = i;
    if (op < 0 || p <= end) { /* an unknown operation, or a reply topic (more levels) */
        bridge__seterr(err, "not a shadow request topic");
        return -EINVAL;
    }
    if (!bridge_id_valid(t.thing, t.thing_len)) {
        bridge__seterr(err, "bad thing name (a device id: 1..%d bytes of [A-Za-z0-9._:-])",
                       BRIDGE_ID_MAX);
        return -EINVAL;
    }
    if (t.name && !bridge_aws_name_valid(t.name, t.name_len)) {
        bridge__seterr(err, "bad shadow name (1..%d bytes of [A-Za-z0-9:_-])", BRIDGE_AWS_NAME_MAX);
        return -EINVAL;
    }
    t.op = (enum bridge_aws_op)op;
    *out = t;
    return 0;
}

int bridge_aws_topic_build(const struct bridge_aws_topic *t, int reply, char *buf, size_t buflen)
{
    if (!t || !buf || (int)t->op < 0 || t->op > BRIDGE_AWS_DELETE || reply < -1 ||
        reply > BRIDGE_AWS_DOCUMENTS || !bridge_id_valid(t->thing, t->thing_len) ||
        (t->name && !bridge_aws_name_valid(t->name, t->name_len)))
        return -EINVAL;
    int n;
    if (t->name)
        n = snprintf(buf, buflen, AWS_PREFIX "%.*s/shadow/name/%.*s/%s%s%s", (int)t->thing_len,
                     t->thing, (int)t->name_len, t->name, ops[t->op], reply >= 0 ? "/" : "",
                     reply >= 0 ? replies[reply] : "");
    else
        n = snprintf(buf, buflen, AWS_PREFIX "%.*s/shadow/%s%s%s", (int)t->thing_len, t->thing,
                     ops[t->op], reply >= 0 ? "/" : "", reply >= 0 ? replies[reply] : "");
    if (n < 0 || (size_t)n >= buflen)
        return -ENOSPC;
    return n;
}

int bridge_aws_filter(int i, char *buf, size_t buflen)
{
    if (i < 0 || i >= BRIDGE_AWS_FILTERS || !buf)
        return -EINVAL;
    int op = i % 3;
    int n = snprintf(buf, buflen, AWS_PREFIX "+/shadow/%s%s", i < 3 ? "" : "name/+/", ops[op]);
    if (n < 0 || (size_t)n >= buflen)
        return -ENOSPC;
    return n;
}
