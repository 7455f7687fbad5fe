/* log: formats logfmt lines and writes each with one write(2) to stderr. Owns the level
 * threshold; what to log and when is the caller's business. Any thread may call anything here:
 * the threshold is an atomic, every line is built on the caller's stack. */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One line at most: PIPE_BUF on Linux, so a line written to a pipe (journald, a supervisor)
 * is never interleaved with another thread's. Longer lines are cut and marked. */
#define LINE_MAX_BYTES 4096

static atomic_int threshold = LOG_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

int log_level_parse(const char *s)
{
    if (!s)
        return -1;
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

const char *log_level_name(enum log_level l)
{
    if ((int)l < 0 || (int)l >= (int)(sizeof names / sizeof names[0]))
        return "unknown";
    return names[l];
}

void log_set_level(enum log_level l)
{
    atomic_store_explicit(&threshold, (int)l, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&threshold, memory_order_relaxed);
}

/* A byte that may appear in a bare (unquoted) logfmt value. Bytes >= 0x80 are UTF-8 and pass
 * through as written. */
static bool bare_ok(unsigned char ch)
{
    return ch > ' ' && ch != 0x7f && ch != '"' && ch != '=' && ch != '\\';
}

char *log_quote(char *buf, size_t size, const char *s, size_t n)
{
    if (size == 0)
        return buf;
    if (!s)
        n = 0;

    bool bare = n > 0;
    for (size_t i = 0; i < n && bare; i++)
        bare = bare_ok((unsigned char)s[i]);
    if (bare) {
        size_t k = n < size - 1 ? n : size - 1;
        memcpy(buf, s, k);
        buf[k] = '\0';
        return buf;
    }
    if (size < 3) { /* not even room for "" */
        buf[0] = '\0';
        return buf;
    }

    /* Keep room for the closing quote and the NUL; an escape is written whole or not at all. */
    size_t o = 0, end = size - 2;
    buf[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        size_t k;
        switch (ch) {
        case '"':
            k = (size_t)snprintf(esc, sizeof esc, "\\\"");
            break;
        case '\\':
            k = (size_t)snprintf(esc, sizeof esc, "\\\\");
            break;
        case '\n':
            k = (size_t)snprintf(esc, sizeof esc, "\\n");
            break;
        case '\r':
            k = (size_t)snprintf(esc, sizeof esc, "\\r");
            break;
        case '\t':
            k = (size_t)snprintf(esc, sizeof esc, "\\t");
            break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                k = (size_t)snprintf(esc, sizeof esc, "\\u%04x", ch);
            } else {
                esc[0] = (char)ch;
                k = 1;
            }
        }
        if (o + k > end)
            break;
        memcpy(buf + o, esc, k);
        o += k;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* Cuts line[0..*len) so that the marker and a newline fit, closing a quoted value that the cut
 * left open so the line still parses. */
static void cut(char *line, size_t *len)
{
    static const char mark[] = " log_truncated=true";
    size_t keep = LINE_MAX_BYTES - (sizeof mark - 1) - 2; /* room for '"' and '\n' */
    if (*len > keep)
        *len = keep;
    bool quoted = false;
    for (size_t i = 0; i < *len; i++) {
        if (line[i] == '\\' && quoted)
            i++;
        else if (line[i] == '"')
            quoted = !quoted;
    }
    /* A trailing lone backslash inside quotes would escape our closing quote. */
    if (quoted && *len > 0 && line[*len - 1] == '\\') {
        size_t bs = 0;
        for (size_t i = *len; i > 0 && line[i - 1] == '\\'; i--)
            bs++;
        if (bs % 2)
            (*len)--;
    }
    if (quoted)
        line[(*len)++] = '"';
    memcpy(line + *len, mark, sizeof mark - 1);
    *len += sizeof mark - 1;
}

/* Writes one line: the head, fmt with ap, and `tail` (NULL: none) after a space. */
static void vwrite(enum log_level l, const char *msg, const char *tail, const char *fmt,
                   va_list ap) __attribute__((format(printf, 4, 0)));
static void vwrite(enum log_level l, const char *msg, const char *tail, const char *fmt,
                   va_list ap)
{
    int saved_errno = errno; /* callers log and then look at errno */
    char line[LINE_MAX_BYTES + 64];
    size_t cap = sizeof line - 1; /* the last byte is for '\n' */
    size_t len = 0;

    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    int w = snprintf(line, cap,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     now.tv_nsec / 1000000L, log_level_name(l));
    len = w > 0 ? (size_t)w : 0;

    /* msg is always quoted so that every line reads the same. */
    const char *m = msg ? msg : "";
    char *q = line + len;
    log_quote(q, 1024, m, strlen(m));
    if (q[0] != '"') { /* log_quote left it bare: quote it ourselves */
        size_t k = strlen(q);
        memmove(q + 1, q, k);
        q[0] = '"';
        q[k + 1] = '"';
        q[k + 2] = '\0';
    }
    len += strlen(q);

    if (fmt && fmt[0]) {
        line[len++] = ' ';
        w = vsnprintf(line + len, cap - len, fmt, ap);
        if (w > 0)
            len += (size_t)w;
    }
    if (tail && len < cap) {
        w = snprintf(line + len, cap - len, " %s", tail);
        if (w > 0)
            len += (size_t)w;
    }
    if (len > LINE_MAX_BYTES - 1)
        cut(line, &len);
    line[len++] = '\n';

    for (size_t off = 0; off < len;) {
        ssize_t n = write(STDERR_FILENO, line + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* nowhere left to report it */
        }
        off += (size_t)n;
    }
    errno = saved_errno;
}

void log_write(enum log_level l, const char *msg, const char *fmt, ...)
{
    if ((int)l > atomic_load_explicit(&threshold, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    vwrite(l, msg, NULL, fmt, ap);
    va_end(ap);
}

void log_write_limited(struct log_limit *lim, enum log_level l, const char *msg, const char *fmt,
                       ...)
{
    if ((int)l > atomic_load_explicit(&threshold, memory_order_relaxed))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    long long next = atomic_load_explicit(&lim->next_ms, memory_order_relaxed);
    /* one thread wins the slot; the others count themselves held back */
    if (now < next || !atomic_compare_exchange_strong(&lim->next_ms, &next, now + LOG_LIMIT_MS)) {
        atomic_fetch_add_explicit(&lim->suppressed, 1, memory_order_relaxed);
        return;
    }
    char tail[48];
    snprintf(tail, sizeof(tail), "suppressed=%llu",
             atomic_exchange_explicit(&lim->suppressed, 0, memory_order_relaxed));
    va_list ap;
    va_start(ap, fmt);
    vwrite(l, msg, tail, fmt, ap);
    va_end(ap);
}
