/* ctl_export.h: `twinctl export` and `twinctl import` (ctl_export.c), over twins/export.c. */
#ifndef CTL_EXPORT_H
#define CTL_EXPORT_H

#include <stdbool.h>

#include "config.h"

/* Writes every twin whose id starts with `prefix` ("" for all) of the store at cfg->db_path as
 * JSON Lines to stdout, in id order, with their history when `history`. Read-only: the hub may
 * run. Progress on stderr when it is a terminal and !quiet. Returns the exit code: 0 done,
 * 2 error. */
int ctl_export_main(const struct config *cfg, const char *prefix, bool history, bool quiet);

/* Loads the JSON Lines of `file` (an export) into the store at cfg->db_path, made if missing.
 * Offline: refused while a hub has the store open. Every line is checked before any is
 * written; bad lines are listed as FILE:LINE: reason and nothing changes. Prints {file, db,
 * twins, points} as JSON. Returns 0, 1 (bad lines, or twins already in the store), 2 (usage,
 * I/O or store error). */
int ctl_import_main(const struct config *cfg, const char *file, bool quiet);

#endif
