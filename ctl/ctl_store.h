/* ctl_store.h: the store options twinctl opens a store with, from the configuration (map sizes,
 * history bound, twin size), so every command reads and writes it as the hub would. */
#ifndef CTL_STORE_H
#define CTL_STORE_H

#include <stdbool.h>

#include "config.h"
#include "twins.h"

static inline struct twin_store_options ctl_store_options(const struct config *cfg,
                                                          const char *path, bool read_only)
{
    struct twin_store_options so = TWIN_STORE_OPTIONS_DEFAULT;
    so.path = path;
    so.read_only = read_only;
    so.map_size = cfg->map_size;
    so.max_map_size = cfg->max_map_size;
    so.history_max_points = cfg->history_max_points;
    so.max_doc_bytes = cfg->max_twin_size;
    return so;
}

#endif
