/* top: `twinctl top`, a live table of the fleet read from LMDB. */
#ifndef HUB_TOP_H
#define HUB_TOP_H

#include <stddef.h>
#include <stdint.h>

#define TOP_MAX_FIELDS 8

struct top_field {
    char path[256]; /* into the document: reported.heart_rate */
    char label[24];
};

struct top_options {
    const char *db_path;
    const char *prefix; /* "" for all */
    struct top_field fields[TOP_MAX_FIELDS];
    unsigned n_fields;
    uint64_t interval_ms; /* between frames */
    uint64_t seconds;     /* stop after; 0 = until Ctrl-C */
    uint64_t wait_ms;     /* wait this long for the store to appear */
    unsigned limit;       /* rows; 0 = fit the terminal */
};

/* Parses "reported.heart_rate=HR,reported.spo2" (label defaults to the last path element).
 * Returns 0 or -EINVAL with the reason in err. */
int top_parse_fields(struct top_options *o, const char *list, char *err, size_t errlen);

/* Draws frames until o->seconds pass or SIGINT/SIGTERM. Returns the exit code: 0, or 2 on an
 * I/O error (reason on stderr). */
int top_run(const struct top_options *o);

#endif
