/* progress.h: twinctl's progress bar for long work (backup, restore, export, import): count,
 * rate and ETA on stderr, redrawn at most ten times a second, only when stderr is a terminal
 * and --quiet was not given. */
#ifndef CTL_PROGRESS_H
#define CTL_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress {
    const char *what; /* "backup", "export", ... */
    const char *unit; /* "twins"; NULL: bytes, shown in MiB */
    int64_t start_ms, last_ms;
    bool on, ended;
};

/* Starts a bar; it stays silent when `quiet` or stderr is not a terminal. */
void progress_init(struct progress *p, const char *what, const char *unit, bool quiet);

/* `done` of `total` (0: not known; the bar then shows the count and rate only). Finishes the
 * line when done >= total > 0. A twin_progress_cb: ctx is the struct progress. */
void progress_update(void *ctx, uint64_t done, uint64_t total);

/* Wipes the bar's line, for a message in between; the next update draws it again. */
void progress_clear(struct progress *p);

/* Draws the last state and ends the line, if the bar is on and not ended yet. */
void progress_end(struct progress *p, uint64_t done, uint64_t total);

#endif
