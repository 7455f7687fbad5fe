/* ctl_backup.h: `twinctl backup` and `twinctl restore` (ctl_backup.c), over twins/backup.c. */
#ifndef CTL_BACKUP_H
#define CTL_BACKUP_H

#include <stdbool.h>

#include "config.h"

/* Writes a backup of the store at cfg->db_path (read-only; the hub may be running) to `file`,
 * which must not exist, and prints {file, bytes, schema, sha256, created} as JSON. Progress on
 * stderr when it is a terminal and !quiet. Returns the exit code: 0 done, 2 error. */
int ctl_backup_main(const struct config *cfg, const char *file, bool quiet);

/* Restores `file` into the empty or new directory `dir`, opens the result to check it, and
 * prints {dir, bytes, schema, sha256, created, twins} as JSON. Returns 0, 1 (not a usable
 * backup: damaged, newer, not a backup), 2 (usage or I/O error). */
int ctl_restore_main(const struct config *cfg, const char *file, const char *dir, bool quiet);

#endif
