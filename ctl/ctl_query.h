/* ctl_query.h: `twinctl query` (the fleet query) and `twinctl history --from --to --step`
 * (history ranges): the command-line face of query/ (ctl_query.c). */
#ifndef CTL_QUERY_H
#define CTL_QUERY_H

#include <stdbool.h>
#include <stdint.h>

#include "twins.h"

/* What the command line gave (NULL: not given). */
struct ctl_query_args {
    const char *where, *fields, *order, *cursor, *prefix, *limit;
    bool table;
};

/* Runs the query over `txn` and prints its rows, one JSON object a line (table: aligned
 * columns), following every page unless --limit is given (then the next page's cursor goes to
 * stderr when there is more). Returns twinctl's exit codes: 0 (even with no rows), 2 (a bad
 * query, with "twinctl: where:1:17: ..." on stderr; or a store error). */
int ctl_query_main(struct twin_txn *txn, const struct ctl_query_args *a);

/* `history ID PATH` with any of --from, --to (default: from the first point, to now) and
 * --step (default: raw points): every point or bucket, one JSON object a line (table:
 * aligned columns), over as many pages as it takes. Returns 0, 1 (no such twin, or nothing in
 * the range), 2 (bad arguments, store error). */
int ctl_history_range(struct twin_txn *txn, const char *id, const char *path, const char *from,
                      const char *to, const char *step, bool table);

#endif
