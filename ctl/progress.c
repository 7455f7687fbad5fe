/* progress: see progress.h. */
#include "progress.h"

#include <stdio.h>
#include <unistd.h>

#include "clock.h"

void progress_init(struct progress *p, const char *what, const char *unit, bool quiet)
{
    p->what = what;
    p->unit = unit;
    p->start_ms = hub_mono_ms();
    p->last_ms = p->start_ms - 1000;
    p->on = !quiet && isatty(STDERR_FILENO);
    p->ended = false;
}

static void draw(struct progress *p, uint64_t done, uint64_t total, int64_t now)
{
    double secs = (double)(now - p->start_ms) / 1000.0, scale = p->unit ? 1.0 : 1024.0 * 1024.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    const char *unit = p->unit ? p->unit : "MiB";
    char bar[21];

    if (!total) {
        fprintf(stderr, "\r%-8s %.*f %s  %.*f %s/s ", p->what, p->unit ? 0 : 1,
                (double)done / scale, unit, p->unit ? 0 : 1, rate / scale, unit);
        return;
    }
    uint64_t left = done < total ? total - done : 0;
    double eta = rate > 0 ? (double)left / rate : 0;
    int pct = done >= total ? 100 : (int)(100.0 * (double)done / (double)total);
    for (int i = 0; i < 20; i++)
        bar[i] = i < pct / 5 ? '#' : '.';
    bar[20] = '\0';
    fprintf(stderr, "\r%-8s [%s] %3d%%  %.*f / %.*f %s  %.*f %s/s  ETA %.0fs ", p->what, bar, pct,
            p->unit ? 0 : 1, (double)done / scale, p->unit ? 0 : 1, (double)total / scale, unit,
            p->unit ? 0 : 1, rate / scale, unit, eta);
}

void progress_update(void *ctx, uint64_t done, uint64_t total)
{
    struct progress *p = ctx;
    int64_t now = hub_mono_ms();
    bool last = total && done >= total;

    if (!p->on || p->ended || (!last && now - p->last_ms < 100))
        return;
    p->last_ms = now;
    draw(p, done, total, now);
    if (last) {
        fputc('\n', stderr);
        p->ended = true;
    }
}

void progress_end(struct progress *p, uint64_t done, uint64_t total)
{
    if (!p->on || p->ended)
        return;
    draw(p, done, total, hub_mono_ms());
    fputc('\n', stderr);
    p->ended = true;
}

void progress_clear(struct progress *p)
{
    if (p->on && !p->ended)
        fputs("\r\033[K", stderr);
}
