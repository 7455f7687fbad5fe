/* ctl_json.h: a JSON string for twinctl's own output (ctl_model.c, ctl_rules.c): quotes, with
 * '"', '\\' and control characters escaped. Bytes >= 0x80 pass as they are. */
#ifndef CTL_JSON_H
#define CTL_JSON_H

#include <stdio.h>

static inline void ctl_json_str(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

#endif
