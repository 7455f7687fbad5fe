/* ctl_fail.h: twinctl's exit codes and its one way of saying what went wrong, shared by the
 * files of ctl/. */
#ifndef CTL_FAIL_H
#define CTL_FAIL_H

#include <stdarg.h>
#include <stdio.h>

enum { EXIT_FOUND = 0, EXIT_NOT_FOUND = 1, EXIT_ERROR = 2 };

/* "twinctl: <what>" on stderr; returns code, for `return ctl_fail(EXIT_ERROR, ...)`. */
static inline int ctl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int ctl_fail(int code, const char *fmt, ...)
{
    va_list ap;
    fputs("twinctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

#endif
