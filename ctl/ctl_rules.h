/* ctl_rules.h: `twinctl rules`, the command-line face of the rules engine (ctl_rules.c). */
#ifndef CTL_RULES_H
#define CTL_RULES_H

#include <msgpack.h>
#include <stdio.h>

#include "twins.h"

/* `twinctl rules check FILE`: loads FILE as the hub would, without a hub. Prints a summary on
 * stdout when valid, every error on stderr (one per line) when not. Returns 0 valid, 1 invalid
 * (or unreadable). */
int ctl_rules_check(const char *path);

/* `twinctl rules state ID`: prints, as one JSON object, twin `id`'s wake time and every rule
 * record the store holds for it, as of `txn`. `rules_path` (may be "" or NULL) is the
 * configured rules file: records of rules it no longer has (or whose definition changed) are
 * marked "current": false. Returns 0, 1 (no such twin) or 2 (store error). */
int ctl_rules_state(struct twin_txn *txn, const char *id, const char *rules_path, FILE *out);

/* For `twinctl stats`: packs into pk, as one map, every model that has records in the store,
 * its records summed over the twins: {name: {twins, pending, scored, mae, rmse (regressors) or
 * accuracy (classifiers) once one is scored, learned (models that learn), missed, damaged}}.
 * Returns 0, -ENOMEM, or a store error (err says which). */
int ctl_models_pack(struct twin_txn *txn, msgpack_packer *pk, char *err);

#endif
