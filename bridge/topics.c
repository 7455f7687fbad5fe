/* bridge/topics.c: the topic scheme of DESIGN.md §3 - device id validation, topic prefixes,
 * parsing received topics, building and filtering ours, and the publishable check the client
 * applies to every publish. Pure functions on caller memory: no MQTT, no allocation, no locks;
 * any thread may call them.
 */
#include "bridge.h"
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum scope { SCOPE_DEVICES, SCOPE_TWINS, SCOPE_HUB };

/* Every kind: which prefix it hangs off and what follows "{prefix}{id}/" (or "{prefix}" for
 * hub topics). Indexed by enum bridge_topic_kind. */
static const struct {
    enum scope scope;
    const char *suffix;
} kinds[] = {
    [BRIDGE_T_TELEMETRY] = {SCOPE_DEVICES, "telemetry"},
    [BRIDGE_T_STATUS] = {SCOPE_DEVICES, "status"},
    [BRIDGE_T_CMD_ACK] = {SCOPE_DEVICES, "commands/ack"},
    [BRIDGE_T_SENML] = {SCOPE_DEVICES, "senml"},
    [BRIDGE_T_DESIRED] = {SCOPE_DEVICES, "desired"},
    [BRIDGE_T_COMMANDS] = {SCOPE_DEVICES, "commands"},
    [BRIDGE_T_DESIRED_SET] = {SCOPE_TWINS, "desired/set"},
    [BRIDGE_T_GET] = {SCOPE_TWINS, "get"},
    [BRIDGE_T_CMD_SEND] = {SCOPE_TWINS, "commands/send"},
    [BRIDGE_T_DELETE] = {SCOPE_TWINS, "delete"},
    [BRIDGE_T_STATE] = {SCOPE_TWINS, "state"},
    [BRIDGE_T_EVENTS] = {SCOPE_TWINS, "events"},
    [BRIDGE_T_PREDICTIONS] = {SCOPE_TWINS, "predictions"},
    [BRIDGE_T_HUB_STATUS] = {SCOPE_HUB, "status"},
    [BRIDGE_T_HUB_ERRORS] = {SCOPE_HUB, "errors"},
    [BRIDGE_T_HISTORY] = {SCOPE_TWINS, "history"},
    [BRIDGE_T_QUERY] = {SCOPE_HUB, "query"},
};
#define N_KINDS ((int)(sizeof(kinds) / sizeof(kinds[0])))

void bridge__seterr(char *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, BRIDGE_ERR_LEN, fmt, ap);
    va_end(ap);
}

#define PREFIX_BODY_MAX (BRIDGE_PREFIX_MAX - 2) /* room for the '/' and the NUL */

static bool id_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == ':' || ch == '-';
}

bool bridge_id_valid(const char *id, size_t len)
{
    if (!id || len == 0 || len > BRIDGE_ID_MAX || id[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!id_char((unsigned char)id[i]))
            return false;
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * Prefixes
 * ------------------------------------------------------------------------------------------ */

/* Copies `in` (or `def` when NULL) into out with exactly one trailing '/'. Printable ASCII
 * without spaces only, so a prefix can never smuggle a wildcard, a control character or an
 * odd encoding into a topic; '$' is refused at the start because such topics belong to the
 * broker ($SYS) and are not matched by ordinary wildcards. */
static int prefix_set(char out[BRIDGE_PREFIX_MAX], const char *in, const char *def,
                      const char *name, char *err)
{
    const char *p = in ? in : def;
    size_t len = strnlen(p, BRIDGE_PREFIX_MAX);
    if (len > 0 && p[len - 1] == '/')
        len--; /* the trailing '/' is ours to add */
    if (len == 0) {
        bridge__seterr(err, "%s prefix: empty", name);
        return -EINVAL;
    }
    if (len > PREFIX_BODY_MAX) {
        bridge__seterr(err, "%s prefix: longer than %d bytes", name, PREFIX_BODY_MAX);
        return -EINVAL;
    }
    if (p[0] == '$') {
        bridge__seterr(err, "%s prefix: must not start with '$' (reserved for the broker)", name);
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= 0x20 || ch >= 0x7f) {
            bridge__seterr(err, "%s prefix: byte 0x%02x at %zu is not printable ASCII", name, ch,
                           i);
            return -EINVAL;
        }
        if (ch == '+' || ch == '#') {
            bridge__seterr(err, "%s prefix: wildcard '%c' at %zu", name, ch, i);
            return -EINVAL;
        }
        if (ch == '/' && (i == 0 || p[i - 1] == '/')) {
            bridge__seterr(err, "%s prefix: empty level at %zu", name, i);
            return -EINVAL;
        }
    }
    if (p[len - 1] == '/') {
        bridge__seterr(err, "%s prefix: empty level at the end", name);
        return -EINVAL;
    }
    memcpy(out, p, len);
    out[len] = '/';
    out[len + 1] = '\0';
    return 0;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

int bridge_topics_init(struct bridge_topics *t, const char *devices, const char *twins,
                       const char *hub, char *err)
{
    struct bridge_topics n;
    int rc;
    if (!t) {
        bridge__seterr(err, "no topics structure");
        return -EINVAL;
    }
    if ((rc = prefix_set(n.devices, devices, "devices/", "devices", err)) < 0 ||
        (rc = prefix_set(n.twins, twins, "twins/", "twins", err)) < 0 ||
        (rc = prefix_set(n.hub, hub, "hub/", "hub", err)) < 0)
        return rc;
    /* One prefix inside another would make a topic mean two things (with devices "a/" and hub
     * "a/x/", "a/x/status" is both the hub's status and device x's). */
    const char *p[3] = {n.devices, n.twins, n.hub};
    const char *names[3] = {"devices", "twins", "hub"};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            if (i != j && starts_with(p[j], p[i])) {
                bridge__seterr(err, "%s prefix \"%s\" overlaps %s prefix \"%s\"", names[i], p[i],
                               names[j], p[j]);
                return -EINVAL;
            }
    *t = n;
    return 0;
}

static const char *prefix_of(const struct bridge_topics *t, enum scope s)
{
    return s == SCOPE_DEVICES ? t->devices : s == SCOPE_TWINS ? t->twins : t->hub;
}

/* ---------------------------------------------------------------------------------------------
 * Parse, build, filter
 * ------------------------------------------------------------------------------------------ */

/* Matches `rest` (not NUL-terminated, rlen bytes) against the suffixes of one scope. */
static enum bridge_topic_kind suffix_match(enum scope s, const char *rest, size_t rlen)
{
    for (int k = 1; k < N_KINDS; k++) {
        if (kinds[k].scope != s)
            continue;
        size_t sl = strlen(kinds[k].suffix);
        if (sl == rlen && memcmp(kinds[k].suffix, rest, rlen) == 0)
            return (enum bridge_topic_kind)k;
    }
    return BRIDGE_T_UNKNOWN;
}

/* Parses "{prefix}{id}/{suffix}" for one id-carrying scope. Returns 1 when the topic is this
 * scope's (out filled), 0 when it is not, -EINVAL when it is but the id is bad. */
/* The kind of `topic` in scope s by its shape alone: prefix, one level, a known suffix; the
 * level (the id) is not checked. BRIDGE_T_UNKNOWN when it has not that shape. */
static enum bridge_topic_kind shape_of(const struct bridge_topics *t, enum scope s,
                                       const char *topic, size_t len, const char **id,
                                       size_t *id_len)
{
    const char *prefix = prefix_of(t, s);
    size_t pl = strlen(prefix);
    if (len <= pl || memcmp(topic, prefix, pl) != 0)
        return BRIDGE_T_UNKNOWN;
    *id = topic + pl;
    const char *slash = memchr(*id, '/', len - pl);
    if (!slash)
        return BRIDGE_T_UNKNOWN;
    *id_len = (size_t)(slash - *id);
    const char *rest = slash + 1;
    return suffix_match(s, rest, (size_t)(topic + len - rest));
}

static int parse_scoped(const struct bridge_topics *t, enum scope s, const char *topic, size_t len,
                        struct bridge_topic *out)
{
    const char *id;
    size_t id_len;
    enum bridge_topic_kind k = shape_of(t, s, topic, len, &id, &id_len);
    if (k == BRIDGE_T_UNKNOWN)
        return 0;
    if (!bridge_id_valid(id, id_len))
        return -EINVAL;
    out->kind = k;
    out->id = id;
    out->id_len = id_len;
    return 1;
}

bool bridge_topic_reserved(const struct bridge_topics *t, const char *topic, size_t len)
{
    static const char *const replies[] = {"/accepted", "/rejected"};
    const char *id;
    size_t id_len;
    if ((len >= strlen(t->devices) && memcmp(topic, t->devices, strlen(t->devices)) == 0) ||
        (len >= strlen(t->hub) && memcmp(topic, t->hub, strlen(t->hub)) == 0))
        return true;
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        size_t rl = strlen(replies[i]);
        if (len > rl && memcmp(topic + len - rl, replies[i], rl) == 0 &&
            shape_of(t, SCOPE_TWINS, topic, len - rl, &id, &id_len) != BRIDGE_T_UNKNOWN)
            return true;
    }
    return shape_of(t, SCOPE_TWINS, topic, len, &id, &id_len) != BRIDGE_T_UNKNOWN;
}

int bridge_topic_parse(const struct bridge_topics *t, const char *topic, size_t len,
                       struct bridge_topic *out, char *err)
{
    struct bridge_topic dummy;
    if (!out)
        out = &dummy;
    out->kind = BRIDGE_T_UNKNOWN;
    out->id = NULL;
    out->id_len = 0;
    if (!t || !topic || len == 0) {
        bridge__seterr(err, "unknown topic");
        return -EINVAL;
    }
    if (len > BRIDGE_TOPIC_MAX) {
        bridge__seterr(err, "topic too long");
        return -EINVAL;
    }
    if (memchr(topic, '\0', len)) {
        bridge__seterr(err, "NUL byte in topic");
        return -EINVAL;
    }

    size_t hl = strlen(t->hub);
    if (len > hl && memcmp(topic, t->hub, hl) == 0) {
        enum bridge_topic_kind k = suffix_match(SCOPE_HUB, topic + hl, len - hl);
        if (k != BRIDGE_T_UNKNOWN) {
            out->kind = k;
            return 0;
        }
    }
    for (enum scope s = SCOPE_DEVICES; s <= SCOPE_TWINS; s++) {
        int rc = parse_scoped(t, s, topic, len, out);
        if (rc > 0)
            return 0;
        if (rc < 0) {
            bridge__seterr(err, "bad device id");
            return rc;
        }
    }
    bridge__seterr(err, "unknown topic");
    return -EINVAL;
}

/* Writes the parts into buf; returns the length or -ENOSPC. */
static int join(char *buf, size_t buflen, const char *a, const char *b, size_t blen, const char *c)
{
    size_t al = strlen(a), cl = strlen(c);
    size_t sep = blen ? 1 : 0; /* hub topics have no middle part */
    size_t total = al + blen + sep + cl;
    if (!buf || total + 1 > buflen)
        return -ENOSPC;
    memcpy(buf, a, al);
    if (blen) {
        memcpy(buf + al, b, blen);
        buf[al + blen] = '/';
    }
    memcpy(buf + al + blen + sep, c, cl);
    buf[total] = '\0';
    return (int)total;
}

int bridge_topic_build(const struct bridge_topics *t, enum bridge_topic_kind kind, const char *id,
                       size_t id_len, char *buf, size_t buflen)
{
    if (!t || kind <= BRIDGE_T_UNKNOWN || (int)kind >= N_KINDS)
        return -EINVAL;
    if (kinds[kind].scope == SCOPE_HUB)
        return join(buf, buflen, t->hub, NULL, 0, kinds[kind].suffix);
    if (!bridge_id_valid(id, id_len))
        return -EINVAL;
    return join(buf, buflen, prefix_of(t, kinds[kind].scope), id, id_len, kinds[kind].suffix);
}

int bridge_topic_filter(const struct bridge_topics *t, enum bridge_topic_kind kind, char *buf,
                        size_t buflen)
{
    if (!t || kind <= BRIDGE_T_UNKNOWN || (int)kind >= N_KINDS)
        return -EINVAL;
    if (kinds[kind].scope == SCOPE_HUB)
        return join(buf, buflen, t->hub, NULL, 0, kinds[kind].suffix);
    return join(buf, buflen, prefix_of(t, kinds[kind].scope), "+", 1, kinds[kind].suffix);
}

/* ---------------------------------------------------------------------------------------------
 * Publishable
 * ------------------------------------------------------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at s (at most n bytes) and its code point, or 0
 * when it is malformed: overlong forms, surrogates and code points past U+10FFFF included. */
static size_t utf8_next(const unsigned char *s, size_t n, unsigned long *cp)
{
    unsigned char b = s[0];
    size_t len;
    unsigned long v, min;
    if (b < 0x80) {
        *cp = b;
        return 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
        len = 2, v = b & 0x1f, min = 0x80;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3, v = b & 0x0f, min = 0x800;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4, v = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

bool bridge__utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    if (!s)
        return false;
    for (size_t i = 0; i < len;) {
        unsigned long cp;
        size_t n = utf8_next(u + i, len - i, &cp);
        if (n == 0 || cp == 0)
            return false;
        i += n;
    }
    return true;
}

bool bridge__filter_valid(const char *f, size_t len)
{
    if (!f || len == 0 || len > 65535 || !bridge__utf8_valid(f, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        bool level_start = i == 0 || f[i - 1] == '/';
        bool level_end = i + 1 == len || f[i + 1] == '/';
        if (f[i] == '+' && !(level_start && level_end))
            return false;
        if (f[i] == '#' && !(level_start && i + 1 == len))
            return false;
    }
    return true;
}

bool bridge_topic_publishable(const char *topic, size_t len)
{
    if (!topic || len == 0 || len > BRIDGE_TOPIC_MAX)
        return false;
    const unsigned char *s = (const unsigned char *)topic;
    for (size_t i = 0; i < len;) {
        unsigned long cp;
        size_t n = utf8_next(s + i, len - i, &cp);
        if (n == 0)
            return false;
        /* C0 controls (NUL included), DEL and the C1 controls MQTT says not to use */
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == '+' || cp == '#')
            return false;
        i += n;
    }
    return true;
}
