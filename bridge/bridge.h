/* bridge: the only code that talks to the MQTT library (Eclipse Paho C, MQTTAsync).
 *
 * It owns the connection (TLS, MQTT 3.1.1 or 5, persistent session, will and birth message,
 * automatic reconnect with backoff, resubscribe after every connect), publishing with a
 * completion callback, and the topic scheme (parse, build, validate). It knows nothing of
 * twins, msgpack or rules; it does not print or exit (a log callback reports what happens).
 *
 * Errors: 0 or a negative code: -EINVAL (bad argument, bad topic, bad id), -ENOTCONN (not
 * connected), -ENOMEM, -EIO (the MQTT library refused; its code and text are in `err` or the
 * log line).
 */
#ifndef BRIDGE_H
#define BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIDGE_ERR_LEN 256
#define BRIDGE_ID_MAX 128
#define BRIDGE_PREFIX_MAX 64
#define BRIDGE_TOPIC_MAX 512

/* ---------------------------------------------------------------------------------------------
 * Topics
 * ------------------------------------------------------------------------------------------ */

/* Device ids: 1..128 bytes of [A-Za-z0-9._:-], not starting with '.'. */
bool bridge_id_valid(const char *id, size_t len);

/* Topic prefixes, each ending in '/': defaults "devices/", "twins/", "hub/". */
struct bridge_topics {
    char devices[BRIDGE_PREFIX_MAX];
    char twins[BRIDGE_PREFIX_MAX];
    char hub[BRIDGE_PREFIX_MAX];
};

/* Sets the prefixes; NULL keeps the default. A prefix must be 1..62 printable bytes with no
 * '+', '#' or control characters and no empty level; a missing trailing '/' is added.
 * Printable means ASCII 0x21..0x7e (no spaces); a prefix must not start with '$' (broker
 * topics), and no prefix may equal or contain another (a topic would mean two things).
 * Returns 0 or -EINVAL with the reason in err (BRIDGE_ERR_LEN); on error *t is unchanged. */
int bridge_topics_init(struct bridge_topics *t, const char *devices, const char *twins,
                       const char *hub, char *err);

enum bridge_topic_kind {
    BRIDGE_T_UNKNOWN = 0,
    /* devices -> hub */
    BRIDGE_T_TELEMETRY, /* devices/{id}/telemetry */
    BRIDGE_T_STATUS,    /* devices/{id}/status */
    BRIDGE_T_CMD_ACK,   /* devices/{id}/commands/ack */
    BRIDGE_T_SENML,     /* devices/{id}/senml: SenML (RFC 8428) JSON readings */
    /* hub -> devices */
    BRIDGE_T_DESIRED,  /* devices/{id}/desired */
    BRIDGE_T_COMMANDS, /* devices/{id}/commands */
    /* services -> hub */
    BRIDGE_T_DESIRED_SET, /* twins/{id}/desired/set */
    BRIDGE_T_GET,         /* twins/{id}/get */
    BRIDGE_T_CMD_SEND,    /* twins/{id}/commands/send */
    BRIDGE_T_DELETE,      /* twins/{id}/delete */
    /* hub -> services */
    BRIDGE_T_STATE,       /* twins/{id}/state */
    BRIDGE_T_EVENTS,      /* twins/{id}/events */
    BRIDGE_T_PREDICTIONS, /* twins/{id}/predictions */
    BRIDGE_T_HUB_STATUS,  /* hub/status (no id) */
    BRIDGE_T_HUB_ERRORS,  /* hub/errors (no id) */
    /* services -> hub: reads, answered off the receive thread */
    BRIDGE_T_HISTORY, /* twins/{id}/history */
    BRIDGE_T_QUERY,   /* hub/query (no id): the fleet query */
    BRIDGE_T_LAST = BRIDGE_T_QUERY
};

struct bridge_topic {
    enum bridge_topic_kind kind;
    const char *id; /* points into the parsed topic; NULL for hub topics */
    size_t id_len;
};

/* Whether `topic` lies in the hub's own scheme, whatever its id: anything under the devices or
 * hub prefix, or a twins topic the hub reads or writes (state, events, predictions, desired/set,
 * ...), with or without /accepted or /rejected after it, even with an id that is not valid.
 * A response topic the hub is asked to publish on must not be one (a bad id would otherwise
 * let a request forge an event for every twins/+/events subscriber). */
bool bridge_topic_reserved(const struct bridge_topics *t, const char *topic, size_t len);

/* Parses a received topic. On success the id has been validated. Returns 0, or -EINVAL with a
 * reason ("bad device id", "unknown topic") when the topic is not one of ours or its id is
 * invalid; *out is then BRIDGE_T_UNKNOWN. Never reads past len. */
int bridge_topic_parse(const struct bridge_topics *t, const char *topic, size_t len,
                       struct bridge_topic *out, char *err);

/* Builds the topic of `kind` for `id` (validated here again) into buf (NUL-terminated).
 * Returns the length, or -EINVAL (bad id, unknown kind) or -ENOSPC (buf too small). */
int bridge_topic_build(const struct bridge_topics *t, enum bridge_topic_kind kind, const char *id,
                       size_t id_len, char *buf, size_t buflen);

/* The subscription filter for a kind: "devices/+/telemetry" etc. Same returns as build. */
int bridge_topic_filter(const struct bridge_topics *t, enum bridge_topic_kind kind, char *buf,
                        size_t buflen);

/* True when `topic` may be published to: 1..BRIDGE_TOPIC_MAX bytes, valid UTF-8, no '+', '#',
 * NUL or control characters. The client refuses any other topic. */
bool bridge_topic_publishable(const char *topic, size_t len);

/* ---------------------------------------------------------------------------------------------
 * AWS IoT Device Shadow topics (aws.c; used only with aws.shadow: true)
 *   $aws/things/{thing}/shadow/{update|get|delete}[/{accepted|rejected|delta|documents}]
 *   $aws/things/{thing}/shadow/name/{shadow}/...   (a named shadow)
 * ------------------------------------------------------------------------------------------ */

#define BRIDGE_AWS_NAME_MAX 64 /* bytes of a shadow name */
#define BRIDGE_AWS_FILTERS 6   /* subscription filters: 3 operations, classic and named */

enum bridge_aws_op { BRIDGE_AWS_UPDATE = 0, BRIDGE_AWS_GET, BRIDGE_AWS_DELETE };
/* What follows the operation in a topic the hub publishes (bridge_aws_topic_build). */
enum bridge_aws_reply {
    BRIDGE_AWS_ACCEPTED = 0,
    BRIDGE_AWS_REJECTED,
    BRIDGE_AWS_DELTA,     /* update/delta */
    BRIDGE_AWS_DOCUMENTS, /* update/documents */
};

struct bridge_aws_topic {
    enum bridge_aws_op op;
    const char *thing; /* a valid device id; points into the parsed topic */
    size_t thing_len;
    const char *name; /* the named shadow; NULL (name_len 0) for the classic shadow */
    size_t name_len;
};

/* Shadow names: 1..BRIDGE_AWS_NAME_MAX bytes of [A-Za-z0-9:_-] (AWS's rule). */
bool bridge_aws_name_valid(const char *name, size_t len);
/* Whether `topic` starts with "$aws/" (what the hub hands to its shadow code). */
bool bridge_aws_topic_is(const char *topic, size_t len);
/* Parses a request topic ($aws/things/{thing}/shadow[/name/{name}]/{op}): the thing must be a
 * valid device id, the name valid. Returns 0, or -EINVAL with the reason in err (a reply topic,
 * an unknown operation, a bad thing or shadow name). Never reads past len. */
int bridge_aws_topic_parse(const char *topic, size_t len, struct bridge_aws_topic *out, char *err);
/* Builds the topic of t's operation followed by /{reply} (reply -1: the request topic itself)
 * into buf. Thing and name are validated again. Returns the length, -EINVAL or -ENOSPC. */
int bridge_aws_topic_build(const struct bridge_aws_topic *t, int reply, char *buf, size_t buflen);
/* Subscription filter i (0..BRIDGE_AWS_FILTERS-1): $aws/things/+/shadow/update, .../get,
 * .../delete, then the same under name/+/. Returns the length, -EINVAL or -ENOSPC. */
int bridge_aws_filter(int i, char *buf, size_t buflen);

/* ---------------------------------------------------------------------------------------------
 * Client
 * ------------------------------------------------------------------------------------------ */

struct bridge_msg {
    const char *topic;
    size_t topic_len;
    const void *payload;
    size_t len;
    int qos;
    bool retained;
    bool dup;
    /* MQTT 5 request/response properties; NULL/0 when absent or on MQTT 3.1.1 */
    const char *response_topic;
    size_t response_topic_len;
    const void *correlation;
    size_t correlation_len;
};

/* Called on Paho's receive thread for every message. The message (QoS 1: its PUBACK) is
 * acknowledged when this returns, so anything that must be durable has to be committed
 * before returning. Everything in `m` dies when it returns. */
typedef void (*bridge_message_cb)(void *ctx, const struct bridge_msg *m);

/* Called on a Paho thread when the connection comes up (after resubscribing and publishing
 * the birth message) or goes down (`reason` says why). */
typedef void (*bridge_connection_cb)(void *ctx, bool connected, const char *reason);

/* Completion of one publish, on a Paho thread: status 0 = QoS 1 acknowledged by the broker or
 * QoS 0 written to the socket; negative = failed (the message may not have arrived). Called
 * exactly once for every publish that bridge_client_publish accepted (returned 0), including
 * at bridge_client_stop/free for those still in flight (status -ECANCELED). Other statuses:
 * -ECONNRESET (the broker lost the session before acknowledging), -EACCES (MQTT 5 PUBACK
 * "not authorized"), -EIO (anything else). */
typedef void (*bridge_publish_cb)(void *ctx, int status);

enum bridge_log_level { BRIDGE_LOG_ERROR = 0, BRIDGE_LOG_WARN, BRIDGE_LOG_INFO, BRIDGE_LOG_DEBUG };
typedef void (*bridge_log_cb)(void *ctx, enum bridge_log_level level, const char *msg);

struct bridge_tls {
    const char *ca;   /* CA bundle (PEM); when set, the system trust store is not used */
    const char *cert; /* client certificate (PEM), for mutual TLS */
    const char *key;  /* its private key (PEM) */
    bool verify;      /* verify the server certificate and host name (default true) */
};

struct bridge_options {
    const char *url;           /* tcp://host:port, ssl://host:port (mqtts:// accepted) */
    const char *client_id;     /* fixed, so the session persists */
    const char *username;      /* optional */
    const char *password;      /* optional */
    int mqtt_version;          /* 5 (default) or 4 (= 3.1.1) */
    bool clean_start;          /* false: persistent session */
    unsigned session_expiry_s; /* MQTT 5 Session Expiry Interval when !clean_start */
    unsigned keepalive_s;
    unsigned reconnect_min_s; /* automatic reconnect backoff, doubling from min to max */
    unsigned reconnect_max_s;
    unsigned connect_timeout_s;
    unsigned max_inflight; /* MQTT receive maximum / Paho maxInflight for our publishes */

    /* will, published by the broker if we vanish; birth, published by us on every connect */
    const char *will_topic;
    const void *will_payload;
    size_t will_len;
    bool will_retained;
    int will_qos;
    const char *birth_topic;
    const void *birth_payload;
    size_t birth_len;
    bool birth_retained;
    int birth_qos;

    struct bridge_tls tls;

    /* subscribed again after every (re)connect */
    const char *const *subscriptions;
    int n_subscriptions;
    int sub_qos;

    bridge_message_cb on_message;
    bridge_connection_cb on_connection;
    bridge_log_cb on_log;
    void *ctx; /* passed to the three callbacks above */
};

/* Fills defaults: MQTT 5, persistent session with a 1-day expiry, keepalive 30 s, reconnect
 * 1..30 s, connect timeout 10 s, max_inflight 64, sub_qos 1, tls.verify true. */
void bridge_options_init(struct bridge_options *o);

struct bridge_client;

/* Creates a client (nothing connects yet). Options are copied. Returns 0 or -EINVAL / -EIO /
 * -ENOMEM with the reason in err (BRIDGE_ERR_LEN). TLS files are checked for readability here,
 * and refused with a tcp:// or mqtt:// URL rather than ignored. */
int bridge_client_new(struct bridge_client **out, const struct bridge_options *o, char *err);

/* Starts connecting in the background; on_connection reports the outcome, and reconnects
 * continue automatically after a failure. Returns 0 or -EIO; -EINVAL when already started or
 * stopped (a stopped client is not started again: free it and make a new one). */
int bridge_client_start(struct bridge_client *c, char *err);

/* Waits up to timeout_ms for the first successful connect (later: for the connection to be
 * back). Returns 0 or -ETIMEDOUT. */
int bridge_client_wait_connected(struct bridge_client *c, unsigned timeout_ms);

/* The broker's MQTT 5 Receive Maximum from the CONNACK: how many QoS 1 publishes it takes in
 * flight (Mosquitto's default is 20). Publishing more at once only parks them in Paho's queue,
 * which its send thread rechecks about once a second. 0 when none is known (MQTT 3.1.1, or not
 * yet connected). Any thread. */
unsigned bridge_client_send_quota(struct bridge_client *c);

bool bridge_client_connected(struct bridge_client *c);

/* Optional MQTT 5 properties of a publish (ignored on 3.1.1). */
struct bridge_pub_props {
    const void *correlation;
    size_t correlation_len;
    const char *response_topic;
    const char *content_type;
};

/* Queues one publish. The topic must satisfy bridge_topic_publishable; payload is copied.
 * `done` (may be NULL) is called exactly once when it completes, on a Paho thread, unless this
 * returns an error, in which case it is never called. Must not be called from the message
 * callback for QoS 1 in a hot path (see DESIGN.md §6): the hub publishes from its own thread.
 * Keep at most max_inflight (MQTT 5: also the broker's Receive Maximum, 20 by default in
 * Mosquitto; logged at connect) QoS 1 publishes outstanding: Paho queues the rest and its send
 * thread looks at that queue again only when a new command arrives or once a second.
 * Returns 0, -EINVAL (topic, qos, properties), -ENOTCONN, -ENOMEM, -EIO. Any thread. */
int bridge_client_publish(struct bridge_client *c, const char *topic, const void *payload,
                          size_t len, int qos, bool retained, const struct bridge_pub_props *props,
                          bridge_publish_cb done, void *done_ctx);

/* Disconnects cleanly (the will is not sent), after waiting up to timeout_ms for in-flight
 * publishes. Before disconnecting, publishes `final` (e.g. the retained "offline") if given.
 * Then fails what is still outstanding with -ECANCELED. Returns 0; -ETIMEDOUT (the final
 * message was not acknowledged in time), -ENOTCONN (final given but not connected), or the
 * final message's failure. Stopping twice returns 0. If the broker stops acknowledging, Paho
 * 1.3.12 holds the DISCONNECT behind the unacknowledged publishes: the connection then closes
 * (still with a DISCONNECT) in bridge_client_free, and messages may arrive until then.
 * Caller's thread, never from a bridge callback. */
struct bridge_final {
    const char *topic;
    const void *payload;
    size_t len;
    bool retained;
    int qos;
};
int bridge_client_stop(struct bridge_client *c, const struct bridge_final *final,
                       unsigned timeout_ms);

/* Frees the client (stopping it first, without a final message). NULL allowed. No callback
 * runs after it returns. Caller's thread, never from a bridge callback. */
void bridge_client_free(struct bridge_client *c);

#endif
