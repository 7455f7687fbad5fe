/* fuzz_util.c: the helpers every target links (see fuzz.h): failing with a reason, a strict
 * JSON validator and UTF-8 check written independently of twins/json.c, splitting inputs, and a
 * per-process scratch directory removed at exit. Single-threaded, like the targets.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void tmpdir_remove(void);

void fuzz_fail(const char *file, int line, const char *what, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s:%d: check failed: %s: ", file, line, what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    tmpdir_remove(); /* abort() skips atexit: do not leave the scratch directory behind */
    abort();
}

/* ---------------------------------------------------------------------------------------------
 * UTF-8 (Unicode 15, table 3-7, "well-formed UTF-8 byte sequences")
 * ------------------------------------------------------------------------------------------ */

/* Length of the well-formed sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    /* per lead byte: the length and the allowed range of the second byte */
    static const struct {
        unsigned char lo_lead, hi_lead, len, lo2, hi2;
    } rows[] = {
        {0xc2, 0xdf, 2, 0x80, 0xbf}, {0xe0, 0xe0, 3, 0xa0, 0xbf}, {0xe1, 0xec, 3, 0x80, 0xbf},
        {0xed, 0xed, 3, 0x80, 0x9f}, {0xee, 0xef, 3, 0x80, 0xbf}, {0xf0, 0xf0, 4, 0x90, 0xbf},
        {0xf1, 0xf3, 4, 0x80, 0xbf}, {0xf4, 0xf4, 4, 0x80, 0x8f},
    };

    if (s[0] < 0x80)
        return 1;
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        if (s[0] < rows[r].lo_lead || s[0] > rows[r].hi_lead)
            continue;
        if (n < rows[r].len || s[1] < rows[r].lo2 || s[1] > rows[r].hi2)
            return 0;
        for (size_t i = 2; i < rows[r].len; i++)
            if (s[i] < 0x80 || s[i] > 0xbf)
                return 0;
        return rows[r].len;
    }
    return 0;
}

bool fuzz_utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len(s + i, n - i);

        if (!k)
            return false;
        i += k;
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------
 * JSON (RFC 8259 grammar)
 * ------------------------------------------------------------------------------------------ */

struct jv {
    const unsigned char *s;
    size_t n, i;
};

static void jv_ws(struct jv *v)
{
    while (v->i < v->n &&
           (v->s[v->i] == ' ' || v->s[v->i] == '\t' || v->s[v->i] == '\n' || v->s[v->i] == '\r'))
        v->i++;
}

static bool jv_digit(const struct jv *v)
{
    return v->i < v->n && v->s[v->i] >= '0' && v->s[v->i] <= '9';
}

static bool jv_number(struct jv *v)
{
    if (v->s[v->i] == '-')
        v->i++;
    if (!jv_digit(v))
        return false;
    if (v->s[v->i] == '0') {
        v->i++;
    } else {
        while (jv_digit(v))
            v->i++;
    }
    if (v->i < v->n && v->s[v->i] == '.') {
        v->i++;
        if (!jv_digit(v))
            return false;
        while (jv_digit(v))
            v->i++;
    }
    if (v->i < v->n && (v->s[v->i] == 'e' || v->s[v->i] == 'E')) {
        v->i++;
        if (v->i < v->n && (v->s[v->i] == '+' || v->s[v->i] == '-'))
            v->i++;
        if (!jv_digit(v))
            return false;
        while (jv_digit(v))
            v->i++;
    }
    return true;
}

static bool jv_string(struct jv *v)
{
    v->i++; /* the opening quote */
    while (v->i < v->n) {
        unsigned char c = v->s[v->i];
        size_t k;

        if (c == '"') {
            v->i++;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            if (v->i + 1 >= v->n)
                return false;
            c = v->s[v->i + 1];
            if (c == 'u') {
                if (v->n - v->i < 6)
                    return false;
                for (size_t h = 2; h < 6; h++) {
                    unsigned char x = v->s[v->i + h];

                    if (!((x >= '0' && x <= '9') || (x >= 'a' && x <= 'f') ||
                          (x >= 'A' && x <= 'F')))
                        return false;
                }
                v->i += 6;
            } else if (strchr("\"\\/bfnrt", c) && c) {
                v->i += 2;
            } else {
                return false;
            }
            continue;
        }
        k = utf8_len(v->s + v->i, v->n - v->i);
        if (!k)
            return false;
        v->i += k;
    }
    return false;
}

static bool jv_literal(struct jv *v, const char *w)
{
    size_t k = strlen(w);

    if (v->n - v->i < k || memcmp(v->s + v->i, w, k) != 0)
        return false;
    v->i += k;
    return true;
}

static bool jv_value(struct jv *v, unsigned depth)
{
    unsigned char close;

    jv_ws(v);
    if (v->i >= v->n)
        return false;
    switch (v->s[v->i]) {
    case '"':
        return jv_string(v);
    case 't':
        return jv_literal(v, "true");
    case 'f':
        return jv_literal(v, "false");
    case 'n':
        return jv_literal(v, "null");
    case '{':
    case '[':
        break;
    default:
        return jv_number(v);
    }
    if (depth >= 512)
        return false;
    close = v->s[v->i] == '{' ? '}' : ']';
    v->i++;
    jv_ws(v);
    if (v->i < v->n && v->s[v->i] == close) {
        v->i++;
        return true;
    }
    for (;;) {
        if (close == '}') {
            jv_ws(v);
            if (v->i >= v->n || v->s[v->i] != '"' || !jv_string(v))
                return false;
            jv_ws(v);
            if (v->i >= v->n || v->s[v->i] != ':')
                return false;
            v->i++;
        }
        if (!jv_value(v, depth + 1))
            return false;
        jv_ws(v);
        if (v->i >= v->n)
            return false;
        if (v->s[v->i] == ',') {
            v->i++;
            continue;
        }
        if (v->s[v->i] != close)
            return false;
        v->i++;
        return true;
    }
}

bool fuzz_json_valid(const char *s, size_t n)
{
    struct jv v = {(const unsigned char *)s, n, 0};

    if (!s || !jv_value(&v, 0))
        return false;
    jv_ws(&v);
    return v.i == n;
}

/* ---------------------------------------------------------------------------------------------
 * Inputs and scratch space
 * ------------------------------------------------------------------------------------------ */

size_t fuzz_split(const uint8_t *data, size_t size, struct fuzz_part *parts, size_t max)
{
    size_t k = 0;

    while (k + 1 < max) {
        const uint8_t *sep = size ? memchr(data, FUZZ_SEP, size) : NULL;

        if (!sep)
            break;
        parts[k].p = data;
        parts[k].n = (size_t)(sep - data);
        k++;
        size -= parts[k - 1].n + 1;
        data = sep + 1;
    }
    parts[k].p = data;
    parts[k].n = size;
    return k + 1;
}

void fuzz_rm_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (!d) {
        unlink(path);
        return;
    }
    while ((e = readdir(d))) {
        char sub[4096];
        struct stat st;

        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            fuzz_rm_tree(sub);
        else
            unlink(sub);
    }
    closedir(d);
    rmdir(path);
}

static char tmpdir[4096];
static pid_t tmpdir_owner;

static void tmpdir_remove(void)
{
    /* a child that inherited the handler (fork) leaves the parent's directory alone */
    if (tmpdir[0] && getpid() == tmpdir_owner)
        fuzz_rm_tree(tmpdir);
}

const char *fuzz_tmpdir(void)
{
    const char *base = getenv("TMPDIR");

    if (tmpdir[0])
        return tmpdir;
    if (!base || !base[0])
        base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/twinhub-fuzz-XXXXXX", base);
    if (!mkdtemp(tmpdir))
        fuzz_fail(__FILE__, __LINE__, "mkdtemp", "%s: %s", tmpdir, strerror(errno));
    tmpdir_owner = getpid();
    atexit(tmpdir_remove);
    return tmpdir;
}
