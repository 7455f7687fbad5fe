/* fuzz.h: what the libFuzzer targets in tests/fuzz/ share: the entry point that both libFuzzer
 * and the replay driver (replay.c) call, a check that aborts with a reason (an abort is what
 * libFuzzer records as a crash and ctest as a failure), a strict JSON validator for what
 * twin_json_write produces, the input splitter and a scratch directory. Nothing here knows a
 * target; each target is one fuzz_<name>.c.
 */
#ifndef TWINHUB_FUZZ_H
#define TWINHUB_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* libFuzzer's entry point, defined by each target. Returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The byte that separates the parts of an input (messages, target and patch, ...): 0xc1 is
 * the one byte msgpack never uses and is never valid UTF-8, so it cannot be part of a valid
 * value at the top level. It may still occur inside a str or bin body; the fuzzer copes. */
#define FUZZ_SEP 0xc1

/* Prints "file:line: check failed: what: <reason>" and aborts. */
void fuzz_fail(const char *file, int line, const char *what, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

/* Aborts with a reason unless cond holds. An invariant, not an input check. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                     \
    } while (0)

/* True when s[0..n) is exactly one JSON value (RFC 8259, strict: UTF-8 only, no leading zeros,
 * no control characters in strings, no trailing bytes; surrounding whitespace allowed).
 * Nesting is limited to 512 levels (more is reported as invalid). */
bool fuzz_json_valid(const char *s, size_t n);

/* True when s[0..n) is well-formed UTF-8 (Unicode table 3-7: no overlongs, no surrogates,
 * nothing above U+10FFFF). Written independently of the libraries' decoders. */
bool fuzz_utf8_valid(const unsigned char *s, size_t n);

/* One part of an input split at FUZZ_SEP. */
struct fuzz_part {
    const uint8_t *p;
    size_t n;
};

/* Splits data[0..size) at FUZZ_SEP into at most max parts (the last one takes the rest).
 * Returns the number of parts (>= 1; an empty input is one empty part). */
size_t fuzz_split(const uint8_t *data, size_t size, struct fuzz_part *parts, size_t max);

/* A private directory for the process (under $TMPDIR, else /tmp), created on first call and
 * removed with everything in it at exit. Returns its path (static storage) or aborts. */
const char *fuzz_tmpdir(void);

/* Removes path and, when it is a directory, everything under it. */
void fuzz_rm_tree(const char *path);

#endif
