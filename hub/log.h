/* log: one line per event on stderr, logfmt (`ts=... level=info msg="..." key=value`).
 * Owned by hub/; libraries report through callbacks that end here. Thread-safe: each line is
 * written with a single write(2). */
#ifndef HUB_LOG_H
#define HUB_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Parses "error" | "warn" | "info" | "debug". Returns the level or -1. */
int log_level_parse(const char *s);
const char *log_level_name(enum log_level l);
/* Sets the threshold (any thread; takes effect for the next line). */
void log_set_level(enum log_level l);
enum log_level log_get_level(void);

/* Writes `ts=<RFC 3339 ms> level=<l> msg="<msg>"` followed by `fmt` (already key=value text,
 * the caller quotes values with log_quote when they may contain spaces). */
void log_write(enum log_level l, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes s[0..n) into buf as a logfmt value: bare when it is safe, else quoted with \" \\ \n
 * and control bytes escaped; truncated to fit. Returns buf. */
char *log_quote(char *buf, size_t size, const char *s, size_t n);

/* A line that may repeat at the rate of input (a full queue, a refused action): at most one
 * every LOG_LIMIT_MS from one place; the next line written says how many were held back since
 * (`suppressed=N`, always present). Any thread. */
#define LOG_LIMIT_MS 10000
struct log_limit {
    _Atomic long long next_ms;  /* monotonic: no line before this */
    _Atomic unsigned long long suppressed;
};
void log_write_limited(struct log_limit *lim, enum log_level l, const char *msg, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));
/* The same with a limit of its own for each place it is written. */
#define log_warn_limited(msg, ...)                                                             \
    do {                                                                                       \
        static struct log_limit log_lim_;                                                      \
        log_write_limited(&log_lim_, LOG_WARN, msg, __VA_ARGS__);                              \
    } while (0)

#define log_error(msg, ...) log_write(LOG_ERROR, msg, __VA_ARGS__)
#define log_warn(msg, ...) log_write(LOG_WARN, msg, __VA_ARGS__)
#define log_info(msg, ...) log_write(LOG_INFO, msg, __VA_ARGS__)
#define log_debug(msg, ...) log_write(LOG_DEBUG, msg, __VA_ARGS__)

#endif
