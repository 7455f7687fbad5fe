/* clock.h: the two clocks every executable in hub/ reads (clock.c). */
#ifndef HUB_CLOCK_H
#define HUB_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Wall clock, ms since the epoch: timestamps in twins, messages and deadlines. */
int64_t hub_now_ms(void);
/* Monotonic clock, ms: intervals (sync, stats, flush). */
int64_t hub_mono_ms(void);
/* The same clock in ns: durations the metrics' histograms count. */
int64_t hub_mono_ns(void);

/* ms since epoch as "2026-11-21T17:53:58.123Z" into buf (HUB_ISO_LEN bytes hold any year);
 * a time gmtime cannot take as the number. Returns buf. */
#define HUB_ISO_LEN 96
const char *hub_iso_time(char *buf, size_t size, int64_t ms);

#endif
