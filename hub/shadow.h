/* shadow.h: AWS IoT Device Shadow mode (aws.shadow: true), hub/shadow.c. The classic shadow of
 * thing {id} is twin {id} itself; named shadows live in the same twin under reported.$shadows
 * and desired.$shadows (README, "AWS IoT Device Shadow mode"). */
#ifndef HUB_SHADOW_H
#define HUB_SHADOW_H

#include "hub.h"

/* The key under reported, desired, delta and meta that holds a thing's named shadows:
 * reported.$shadows.{name} is the reported state of shadow {name}. */
#define SHADOW_NAMED_KEY "$shadows"

/* A message on a topic starting with "$aws/" (the hub subscribes only to the shadow request
 * topics): update, get or delete of a classic or named shadow. Like requests_on_message: one
 * write transaction (a read for get), committed before it returns, then the reply, the
 * update/documents message and the twin's publications are queued. A bad request is refused
 * on .../rejected with AWS's code and message, counted and reported on hub/errors, and changes
 * nothing; a storage failure exits the hub (ingest_fatal). Receive thread. */
void shadow_on_message(struct ingest *in, const struct bridge_msg *m);

/* The part of shadow_on_message before the publisher (a fuzz target calls it): leaves the
 * reply and what the change causes in in->out and returns the PUB_* flags the twin needs (0
 * when nothing changed). */
unsigned shadow_handle(struct ingest *in, const struct bridge_msg *m);

/* For the publisher thread, while it reads the committed twin `id` to publish its delta on
 * devices/{id}/desired (read transaction txn, no publisher lock held): queues
 * $aws/things/{id}/shadow/update/delta, and .../shadow/name/{name}/update/delta for each named
 * shadow, for every one whose part of the delta is not empty, as publisher_msg messages (QoS
 * 1). Failures are logged; nothing is returned. */
void shadow_publish_delta(struct publisher *p, struct twin_txn *txn, const char *id, size_t id_len);

#endif
