/* bridge/internal.h: helpers shared by the files of bridge/ (topics.c defines them, client.c
 * uses them). Not part of the public API; nothing outside bridge/ includes this.
 */
#ifndef BRIDGE_INTERNAL_H
#define BRIDGE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0..len) is well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF) without U+0000: what MQTT accepts in a string. Any thread. */
bool bridge__utf8_valid(const char *s, size_t len);

/* True when `f` is a valid subscription filter: 1..65535 bytes of MQTT UTF-8, '+' only as a
 * whole level, '#' only as the whole last level. Any thread. */
bool bridge__filter_valid(const char *f, size_t len);

/* Formats a reason into err (BRIDGE_ERR_LEN bytes); err may be NULL. Any thread. */
void bridge__seterr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
