/* query/internal.h: what query.c and range.c share and nobody outside sees. */
#ifndef QUERY_INTERNAL_H
#define QUERY_INTERNAL_H

#include "query.h"

/* Writes a reason into err (QUERY_ERR_LEN bytes; NULL: nothing). */
void query__errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Packs the n bytes of s as a msgpack string. */
static inline void query__pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

#endif
