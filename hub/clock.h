/* clock.h: the two clocks every executable in hub/ reads (clock.c). */
#ifndef HUB_CLOCK_H
#define HUB_CLOCK_H

#include <stdint.h>

/* Wall clock, ms since the epoch: timestamps in twins, messages and deadlines. */
int64_t hub_now_ms(void);
/* Monotonic clock, ms: intervals (sync, stats, flush). */
int64_t hub_mono_ms(void);
/* The same clock in ns: durations the metrics' histograms count. */
int64_t hub_mono_ns(void);

#endif
