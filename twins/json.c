/* json.c: JSON at the edges. Converts an outside JSON object (strict RFC 8259) into msgpack
 * bytes under the same limits as msgpack input, and writes any msgpack value as JSON text for
 * twinctl and `encoding: json`. It does not decide when JSON is used: scan.c (input) and the
 * callers (output) do.
 *
 * Numbers go through the C locale whatever the process's locale is, so '.' is always the
 * decimal point. Any thread.
 */
#include "twins_int.h"

#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>

/* ---------------------------------------------------------------------------------------------
 * Shared: the C locale, UTF-8
 * ------------------------------------------------------------------------------------------ */

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* Switches the calling thread to the C locale; returns what to restore (0: nothing). */
static locale_t c_locale_enter(void)
{
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale ? uselocale(c_locale) : (locale_t)0;
}

static void c_locale_leave(locale_t old)
{
    if (old)
        uselocale(old);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not one: no overlongs, no
 * surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    unsigned lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2;
    else if (c >= 0xe0 && c <= 0xef)
        k = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        k = 4;
    else
        return 0;
    if (n < k)
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < k; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return k;
}

/* ---------------------------------------------------------------------------------------------
 * JSON -> msgpack
 *
 * One pass. A container's or string's header is written once its count or length is known:
 * 5 bytes are reserved, and the body is moved down when a shorter header fits.
 * ------------------------------------------------------------------------------------------ */

struct jp {
    const unsigned char *s;
    size_t len, pos;
    unsigned max_depth, max_keys;
    msgpack_zone *zone;
    unsigned char *out;
    size_t n, cap;
    char *err;
};

bool twin_utf8_valid(const void *buf, size_t n)
{
    const unsigned char *s = buf;

    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_seq(s + i, n - i)))
            return false;
    return true;
}

static int jp_reserve(struct jp *j, size_t more)
{
    unsigned char *o;
    size_t cap;

    if (j->cap - j->n >= more)
        return 0;
    if (more > SIZE_MAX / 2 - j->n) {
        twins__errf(j->err, "out of memory converting JSON");
        return -ENOMEM;
    }
    cap = j->cap * 2 > j->n + more ? j->cap * 2 : j->n + more + 256;
    o = msgpack_zone_malloc(j->zone, cap);
    if (!o) {
        twins__errf(j->err, "out of memory converting JSON");
        return -ENOMEM;
    }
    if (j->n)
        memcpy(o, j->out, j->n);
    j->out = o;
    j->cap = cap;
    return 0;
}

static void be_put(unsigned char *o, uint64_t v, size_t n)
{
    for (size_t i = n; i-- > 0; v >>= 8)
        o[i] = (unsigned char)v;
}

static int jp_unexpected(struct jp *j, const char *expected)
{
    if (j->pos >= j->len) {
        twins__errf(j->err, "unexpected end of input at offset %zu, expected %s", j->pos, expected);
    } else {
        unsigned c = j->s[j->pos];

        if (c >= 0x20 && c < 0x7f)
            twins__errf(j->err, "unexpected '%c' at offset %zu, expected %s", c, j->pos, expected);
        else
            twins__errf(j->err, "unexpected byte 0x%02x at offset %zu, expected %s", c, j->pos,
                        expected);
    }
    return -EBADMSG;
}

static void jp_ws(struct jp *j)
{
    while (j->pos < j->len) {
        unsigned c = j->s[j->pos];

        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        j->pos++;
    }
}

/* Writes the header of a str/array/map whose body starts at start + 5, moving the body down
 * when a shorter header fits. */
static void jp_header(struct jp *j, size_t start, uint64_t count, unsigned char fix,
                      unsigned fixmax, unsigned char t8, unsigned char t16, unsigned char t32)
{
    unsigned char h[5];
    size_t hdr;

    if (count <= fixmax) {
        h[0] = (unsigned char)(fix | count);
        hdr = 1;
    } else if (t8 && count <= 0xff) {
        h[0] = t8;
        h[1] = (unsigned char)count;
        hdr = 2;
    } else if (count <= 0xffff) {
        h[0] = t16;
        be_put(h + 1, count, 2);
        hdr = 3;
    } else {
        h[0] = t32;
        be_put(h + 1, count, 4);
        hdr = 5;
    }
    if (hdr < 5)
        memmove(j->out + start + hdr, j->out + start + 5, j->n - start - 5);
    j->n -= 5 - hdr;
    memcpy(j->out + start, h, hdr);
}

static int jp_value(struct jp *j, unsigned depth);

static int jp_hex4(const unsigned char *s, unsigned *cp)
{
    unsigned v = 0;

    for (int i = 0; i < 4; i++) {
        unsigned c = s[i], d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *cp = v;
    return 0;
}

static size_t utf8_put(unsigned char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Reads the \uXXXX escape at s[pos] (pos at the backslash), joining a surrogate pair.
 * *used receives the bytes consumed. */
static int jp_escape_u(struct jp *j, size_t pos, unsigned *cp, size_t *used)
{
    const unsigned char *s = j->s;
    unsigned hi, lo;

    if (j->len - pos < 6 || jp_hex4(s + pos + 2, &hi)) {
        twins__errf(j->err, "invalid \\u escape at offset %zu", pos);
        return -EBADMSG;
    }
    if (hi >= 0xdc00 && hi <= 0xdfff) {
        twins__errf(j->err, "unpaired surrogate \\u%04X at offset %zu", hi, pos);
        return -EBADMSG;
    }
    if (hi < 0xd800 || hi > 0xdbff) {
        *cp = hi;
        *used = 6;
        return 0;
    }
    if (j->len - pos < 12 || s[pos + 6] != '\\' || s[pos + 7] != 'u' || jp_hex4(s + pos + 8, &lo) ||
        lo < 0xdc00 || lo > 0xdfff) {
        twins__errf(j->err, "unpaired surrogate \\u%04X at offset %zu", hi, pos);
        return -EBADMSG;
    }
    *cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
    *used = 12;
    return 0;
}

static int jp_string(struct jp *j)
{
    size_t at = j->pos, start, k = 0;
    unsigned char *o;
    int rc;

    j->pos++;
    /* the decoded body is never longer than the text that encodes it */
    rc = jp_reserve(j, 5 + (j->len - j->pos));
    if (rc)
        return rc;
    start = j->n;
    o = j->out + start + 5;
    for (;;) {
        unsigned c;

        if (j->pos >= j->len) {
            twins__errf(j->err, "unterminated string starting at offset %zu", at);
            return -EBADMSG;
        }
        c = j->s[j->pos];
        if (c == '"') {
            j->pos++;
            break;
        }
        if (c < 0x20) {
            twins__errf(j->err, "control character 0x%02x in string at offset %zu", c, j->pos);
            return -EBADMSG;
        }
        if (c >= 0x80) {
            size_t m = utf8_seq(j->s + j->pos, j->len - j->pos);

            if (!m) {
                twins__errf(j->err, "invalid UTF-8 at offset %zu", j->pos);
                return -EBADMSG;
            }
            memcpy(o + k, j->s + j->pos, m);
            k += m;
            j->pos += m;
            continue;
        }
        if (c != '\\') {
            o[k++] = (unsigned char)c;
            j->pos++;
            continue;
        }
        if (j->pos + 1 >= j->len) {
            twins__errf(j->err, "unterminated string starting at offset %zu", at);
            return -EBADMSG;
        }
        c = j->s[j->pos + 1];
        switch (c) {
        case '"':
        case '\\':
        case '/':
            o[k++] = (unsigned char)c;
            break;
        case 'b':
            o[k++] = '\b';
            break;
        case 'f':
            o[k++] = '\f';
            break;
        case 'n':
            o[k++] = '\n';
            break;
        case 'r':
            o[k++] = '\r';
            break;
        case 't':
            o[k++] = '\t';
            break;
        case 'u': {
            unsigned cp;
            size_t used;

            rc = jp_escape_u(j, j->pos, &cp, &used);
            if (rc)
                return rc;
            k += utf8_put(o + k, cp);
            j->pos += used;
            continue;
        }
        default:
            if (c >= 0x20 && c < 0x7f)
                twins__errf(j->err, "invalid escape '\\%c' at offset %zu", c, j->pos);
            else
                twins__errf(j->err, "invalid escape at offset %zu", j->pos);
            return -EBADMSG;
        }
        j->pos += 2;
    }
    j->n = start + 5 + k;
    jp_header(j, start, k, 0xa0, 31, 0xd9, 0xda, 0xdb);
    return 0;
}

static int jp_emit_uint(struct jp *j, uint64_t v)
{
    int rc = jp_reserve(j, 9);
    unsigned char *o;

    if (rc)
        return rc;
    o = j->out + j->n;
    if (v <= 0x7f) {
        o[0] = (unsigned char)v;
        j->n += 1;
    } else if (v <= 0xff) {
        o[0] = 0xcc;
        o[1] = (unsigned char)v;
        j->n += 2;
    } else if (v <= 0xffff) {
        o[0] = 0xcd;
        be_put(o + 1, v, 2);
        j->n += 3;
    } else if (v <= 0xffffffffu) {
        o[0] = 0xce;
        be_put(o + 1, v, 4);
        j->n += 5;
    } else {
        o[0] = 0xcf;
        be_put(o + 1, v, 8);
        j->n += 9;
    }
    return 0;
}

static int jp_emit_int(struct jp *j, int64_t v)
{
    int rc = jp_reserve(j, 9);
    unsigned char *o;

    if (rc)
        return rc;
    o = j->out + j->n;
    if (v >= -32) {
        o[0] = (unsigned char)(int8_t)v;
        j->n += 1;
    } else if (v >= INT8_MIN) {
        o[0] = 0xd0;
        o[1] = (unsigned char)(int8_t)v;
        j->n += 2;
    } else if (v >= INT16_MIN) {
        o[0] = 0xd1;
        be_put(o + 1, (uint64_t)v, 2);
        j->n += 3;
    } else if (v >= INT32_MIN) {
        o[0] = 0xd2;
        be_put(o + 1, (uint64_t)v, 4);
        j->n += 5;
    } else {
        o[0] = 0xd3;
        be_put(o + 1, (uint64_t)v, 8);
        j->n += 9;
    }
    return 0;
}

static int jp_emit_double(struct jp *j, double d)
{
    int rc = jp_reserve(j, 9);
    uint64_t bits;

    if (rc)
        return rc;
    memcpy(&bits, &d, sizeof bits);
    j->out[j->n] = 0xcb;
    be_put(j->out + j->n + 1, bits, 8);
    j->n += 9;
    return 0;
}

static bool is_digit(const struct jp *j, size_t pos)
{
    return pos < j->len && j->s[pos] >= '0' && j->s[pos] <= '9';
}

static int jp_number(struct jp *j)
{
    size_t at = j->pos, digits, tl;
    bool neg = false, integral = true;
    char tmp[64], *t, *end;
    locale_t old;
    double d;

    if (j->s[j->pos] == '-') {
        neg = true;
        j->pos++;
    }
    digits = j->pos;
    if (!is_digit(j, j->pos)) {
        twins__errf(j->err, "invalid number at offset %zu", at);
        return -EBADMSG;
    }
    if (j->s[j->pos] == '0')
        j->pos++;
    else
        while (is_digit(j, j->pos))
            j->pos++;
    if (j->pos < j->len && j->s[j->pos] == '.') {
        integral = false;
        j->pos++;
        if (!is_digit(j, j->pos)) {
            twins__errf(j->err, "invalid number at offset %zu: digits expected after '.'", at);
            return -EBADMSG;
        }
        while (is_digit(j, j->pos))
            j->pos++;
    }
    if (j->pos < j->len && (j->s[j->pos] == 'e' || j->s[j->pos] == 'E')) {
        integral = false;
        j->pos++;
        if (j->pos < j->len && (j->s[j->pos] == '+' || j->s[j->pos] == '-'))
            j->pos++;
        if (!is_digit(j, j->pos)) {
            twins__errf(j->err, "invalid number at offset %zu: digits expected in the exponent",
                        at);
            return -EBADMSG;
        }
        while (is_digit(j, j->pos))
            j->pos++;
    }
    if (integral) {
        uint64_t v = 0;
        bool fits = true;

        for (size_t i = digits; i < j->pos; i++) {
            unsigned dg = j->s[i] - '0';

            if (v > (UINT64_MAX - dg) / 10) {
                fits = false;
                break;
            }
            v = v * 10 + dg;
        }
        if (fits && (!neg || v == 0))
            return jp_emit_uint(j, v);
        if (fits && v <= (uint64_t)INT64_MAX)
            return jp_emit_int(j, -(int64_t)v);
        if (fits && v == (uint64_t)INT64_MAX + 1)
            return jp_emit_int(j, INT64_MIN);
        /* too large for an integer: a double, as other JSON readers do */
    }
    tl = j->pos - at;
    t = tl < sizeof tmp ? tmp : msgpack_zone_malloc(j->zone, tl + 1);
    if (!t) {
        twins__errf(j->err, "out of memory converting JSON");
        return -ENOMEM;
    }
    memcpy(t, j->s + at, tl);
    t[tl] = '\0';
    old = c_locale_enter();
    d = strtod(t, &end);
    c_locale_leave(old);
    if (end != t + tl) {
        twins__errf(j->err, "invalid number at offset %zu", at);
        return -EBADMSG;
    }
    if (isinf(d)) {
        twins__errf(j->err, "number out of range at offset %zu", at);
        return -EBADMSG;
    }
    return jp_emit_double(j, d);
}

static int jp_literal(struct jp *j, const char *word, unsigned char byte)
{
    size_t n = strlen(word);
    int rc;

    if (j->len - j->pos < n || memcmp(j->s + j->pos, word, n) != 0)
        return jp_unexpected(j, "a value");
    rc = jp_reserve(j, 1);
    if (rc)
        return rc;
    j->out[j->n++] = byte;
    j->pos += n;
    return 0;
}

/* A map or an array at nesting depth `depth` (the top-level object is depth 1). */
static int jp_container(struct jp *j, unsigned depth, bool is_map)
{
    unsigned char close = is_map ? '}' : ']';
    size_t at = j->pos, start;
    uint64_t count = 0;
    int rc;

    if (depth > j->max_depth) {
        twins__errf(j->err, "nesting deeper than %u at offset %zu", j->max_depth, at);
        return -ELOOP;
    }
    j->pos++;
    rc = jp_reserve(j, 5);
    if (rc)
        return rc;
    start = j->n;
    j->n += 5;
    jp_ws(j);
    if (j->pos < j->len && j->s[j->pos] == close) {
        j->pos++;
    } else {
        for (;;) {
            if (count >= j->max_keys) {
                twins__errf(j->err, "%s at offset %zu has more than %u entries",
                            is_map ? "object" : "array", at, j->max_keys);
                return -E2BIG;
            }
            if (is_map) {
                if (j->pos >= j->len || j->s[j->pos] != '"')
                    return jp_unexpected(j, "a string key");
                rc = jp_string(j);
                if (rc)
                    return rc;
                jp_ws(j);
                if (j->pos >= j->len || j->s[j->pos] != ':')
                    return jp_unexpected(j, "':'");
                j->pos++;
                jp_ws(j);
            }
            rc = jp_value(j, depth + 1);
            if (rc)
                return rc;
            count++;
            jp_ws(j);
            if (j->pos < j->len && j->s[j->pos] == ',') {
                j->pos++;
                jp_ws(j);
                continue;
            }
            if (j->pos < j->len && j->s[j->pos] == close) {
                j->pos++;
                break;
            }
            return jp_unexpected(j, is_map ? "',' or '}'" : "',' or ']'");
        }
    }
    if (is_map)
        jp_header(j, start, count, 0x80, 15, 0, 0xde, 0xdf);
    else
        jp_header(j, start, count, 0x90, 15, 0, 0xdc, 0xdd);
    return 0;
}

static int jp_value(struct jp *j, unsigned depth)
{
    if (j->pos >= j->len)
        return jp_unexpected(j, "a value");
    switch (j->s[j->pos]) {
    case '{':
        return jp_container(j, depth, true);
    case '[':
        return jp_container(j, depth, false);
    case '"':
        return jp_string(j);
    case 't':
        return jp_literal(j, "true", 0xc3);
    case 'f':
        return jp_literal(j, "false", 0xc2);
    case 'n':
        return jp_literal(j, "null", 0xc0);
    default:
        if (j->s[j->pos] == '-' || is_digit(j, j->pos))
            return jp_number(j);
        return jp_unexpected(j, "a value");
    }
}

int json__to_msgpack(const unsigned char *p, size_t len, const struct twin_limits *lim,
                     bool array_ok, msgpack_zone *zone, const unsigned char **out,
                     size_t *out_len, char *err)
{
    struct jp j = {
        .s = p,
        .len = len,
        .max_depth = lim->max_depth < TWIN_DEPTH_CAP ? lim->max_depth : TWIN_DEPTH_CAP,
        .max_keys = lim->max_keys,
        .zone = zone,
        .err = err,
    };
    int rc;

    /* every JSON token of n bytes becomes at most 3n bytes of msgpack ("1e5" -> a float64),
     * so one allocation is enough; jp_reserve still grows if that reasoning is ever wrong */
    if (len > SIZE_MAX / 4) {
        twins__errf(err, "payload too large");
        return -E2BIG;
    }
    rc = jp_reserve(&j, 3 * len + 256);
    if (rc)
        return rc;
    jp_ws(&j);
    if (j.pos >= len || (p[j.pos] != '{' && !(array_ok && p[j.pos] == '[')))
        return jp_unexpected(&j, array_ok ? "'[' or '{'" : "'{'");
    bool array = p[j.pos] == '[';
    rc = jp_value(&j, 1);
    if (rc)
        return rc;
    jp_ws(&j);
    if (j.pos < len) {
        twins__errf(err, "trailing characters at offset %zu after the JSON %s", j.pos,
                    array ? "array" : "object");
        return -EBADMSG;
    }
    *out = j.out;
    *out_len = j.n;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * msgpack -> JSON
 * ------------------------------------------------------------------------------------------ */

static int put(msgpack_sbuffer *sb, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    return msgpack_sbuffer_write(sb, p, n) ? -ENOMEM : 0;
}

static int puts_(msgpack_sbuffer *sb, const char *s)
{
    return put(sb, s, strlen(s));
}

static int jw_str(msgpack_sbuffer *sb, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, run = 0;
    int rc = put(sb, "\"", 1);

    while (!rc && i < n) {
        unsigned c = s[i];
        char esc[8];
        size_t el = 2;

        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t m = utf8_seq(s + i, n - i);

            if (m) {
                i += m;
                continue;
            }
        }
        rc = put(sb, s + run, i - run);
        if (rc)
            break;
        esc[0] = '\\';
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            if (c >= 0x80) { /* not UTF-8: U+FFFD REPLACEMENT CHARACTER */
                memcpy(esc, "\xef\xbf\xbd", 3);
                el = 3;
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                el = 6;
            }
        }
        rc = put(sb, esc, el);
        run = ++i;
    }
    if (!rc && n > run) /* an empty string may have a NULL pointer: no arithmetic on it */
        rc = put(sb, s + run, n - run);
    if (!rc)
        rc = put(sb, "\"", 1);
    return rc;
}

static int jw_base64(msgpack_sbuffer *sb, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char buf[256];
    size_t k = 0;
    int rc = put(sb, "\"", 1);

    for (size_t i = 0; !rc && i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        size_t m = n - i < 3 ? n - i : 3;

        if (m > 1)
            v |= (uint32_t)p[i + 1] << 8;
        if (m > 2)
            v |= p[i + 2];
        buf[k++] = tab[v >> 18 & 63];
        buf[k++] = tab[v >> 12 & 63];
        buf[k++] = m > 1 ? tab[v >> 6 & 63] : '=';
        buf[k++] = m > 2 ? tab[v & 63] : '=';
        if (k == sizeof buf) {
            rc = put(sb, buf, k);
            k = 0;
        }
    }
    if (!rc)
        rc = put(sb, buf, k);
    if (!rc)
        rc = put(sb, "\"", 1);
    return rc;
}

/* Shortest of %.15g..%.17g (float32: %.6g..%.9g) that reads back as the same value; an
 * integral value keeps a ".0" so that it reads back as a float. */
static int jw_double(msgpack_sbuffer *sb, double d, bool f32)
{
    char buf[40];
    locale_t old;
    int n = 0;

    if (!isfinite(d))
        return puts_(sb, "null");
    old = c_locale_enter();
    for (int prec = f32 ? 6 : 15; prec <= (f32 ? 9 : 17); prec++) {
        double back;

        n = snprintf(buf, sizeof buf, "%.*g", prec, d);
        back = strtod(buf, NULL);
        if (f32 ? (float)back == (float)d : back == d)
            break;
    }
    c_locale_leave(old);
    if (n < 0 || (size_t)n >= sizeof buf - 2)
        return -ENOMEM; /* cannot happen: %.17g of a double fits */
    if (!strpbrk(buf, ".eE")) {
        buf[n++] = '.';
        buf[n++] = '0';
    }
    return put(sb, buf, (size_t)n);
}

static int jw_value(const msgpack_object *o, msgpack_sbuffer *sb);

static int jw_key(const msgpack_object *k, msgpack_sbuffer *sb)
{
    msgpack_sbuffer tmp;
    int rc;

    if (k->type == MSGPACK_OBJECT_STR)
        return jw_str(sb, (const unsigned char *)k->via.str.ptr, k->via.str.size);
    /* JSON keys are strings: write the key's own JSON text, quoted */
    msgpack_sbuffer_init(&tmp);
    rc = jw_value(k, &tmp);
    if (!rc)
        rc = jw_str(sb, (const unsigned char *)tmp.data, tmp.size);
    msgpack_sbuffer_destroy(&tmp);
    return rc;
}

static int jw_value(const msgpack_object *o, msgpack_sbuffer *sb)
{
    char buf[32];
    int rc = 0;

    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return puts_(sb, "null");
    case MSGPACK_OBJECT_BOOLEAN:
        return puts_(sb, o->via.boolean ? "true" : "false");
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(buf, sizeof buf, "%" PRIu64, o->via.u64);
        return puts_(sb, buf);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(buf, sizeof buf, "%" PRId64, o->via.i64);
        return puts_(sb, buf);
    case MSGPACK_OBJECT_FLOAT32:
        return jw_double(sb, o->via.f64, true);
    case MSGPACK_OBJECT_FLOAT64:
        return jw_double(sb, o->via.f64, false);
    case MSGPACK_OBJECT_STR:
        return jw_str(sb, (const unsigned char *)o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
        return jw_base64(sb, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
    case MSGPACK_OBJECT_EXT:
        snprintf(buf, sizeof buf, "{\"ext\":%d,\"data\":", (int)o->via.ext.type);
        rc = puts_(sb, buf);
        if (!rc)
            rc = jw_base64(sb, (const unsigned char *)o->via.ext.ptr, o->via.ext.size);
        if (!rc)
            rc = put(sb, "}", 1);
        return rc;
    case MSGPACK_OBJECT_ARRAY:
        rc = put(sb, "[", 1);
        for (uint32_t i = 0; !rc && i < o->via.array.size; i++) {
            if (i)
                rc = put(sb, ",", 1);
            if (!rc)
                rc = jw_value(&o->via.array.ptr[i], sb);
        }
        return rc ? rc : put(sb, "]", 1);
    case MSGPACK_OBJECT_MAP:
        rc = put(sb, "{", 1);
        for (uint32_t i = 0; !rc && i < o->via.map.size; i++) {
            if (i)
                rc = put(sb, ",", 1);
            if (!rc)
                rc = jw_key(&o->via.map.ptr[i].key, sb);
            if (!rc)
                rc = put(sb, ":", 1);
            if (!rc)
                rc = jw_value(&o->via.map.ptr[i].val, sb);
        }
        return rc ? rc : put(sb, "}", 1);
    }
    return puts_(sb, "null"); /* a type msgpack-c does not define */
}

int twin_json_write(const msgpack_object *obj, msgpack_sbuffer *out)
{
    if (!obj || !out)
        return -EINVAL;
    return jw_value(obj, out);
}
