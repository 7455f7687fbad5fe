/* report: counts rejected input (and telemetry lost upstream), logs it, and reports it on
 * hub/errors under a token bucket so a flood of bad messages cannot flood the log or the broker.
 * It does not decide what is bad.
 * Any thread may call report_reject (ingest runs it on Paho's receive thread); r->lock guards
 * the bucket. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "hub.h"
#include "log.h"

static const char *const kind_names[REPORT_KINDS] = {"topic",   "size",  "depth", "malformed",
                                                     "invalid", "rules", "gap",   "stale"};

const char *report_kind_name(enum report_kind k)
{
    return k >= 0 && k < REPORT_KINDS ? kind_names[k] : "?";
}

void report_init(struct report *r, struct publisher *pub, const char *topic, bool json, double rate,
                 unsigned burst)
{
    memset(r, 0, sizeof(*r));
    r->pub = pub;
    snprintf(r->topic, sizeof(r->topic), "%s", topic);
    r->json = json;
    pthread_mutex_init(&r->lock, NULL);
    report_set_rate(r, rate, burst);
    for (int i = 0; i < REPORT_BUCKETS; i++)
        r->bucket[i].tokens = r->burst;
}

enum report_kind report_kind_of(int rc)
{
    switch (rc) {
    case -E2BIG:
        return REPORT_SIZE;
    case -ELOOP:
        return REPORT_DEPTH;
    case -EBADMSG:
        return REPORT_MALFORMED;
    default:
        return REPORT_INVALID;
    }
}

void report_set_rate(struct report *r, double rate, unsigned burst)
{
    pthread_mutex_lock(&r->lock);
    r->rate = rate;
    r->burst = burst;
    for (int i = 0; i < REPORT_BUCKETS; i++)
        if (r->bucket[i].tokens > r->burst)
            r->bucket[i].tokens = r->burst;
    pthread_mutex_unlock(&r->lock);
}

void report_reject(struct report *r, enum report_kind kind, const char *topic, size_t topic_len,
                   const char *reason)
{
    atomic_fetch_add(&r->count[kind], 1);
    int64_t now = hub_now_ms(), mono = hub_mono_ms();
    uint64_t suppressed = 0;
    bool send = false;
    struct report_bucket *bk =
        &r->bucket[report_kind_rejects(kind) ? REPORT_BUCKET_REJECT : REPORT_BUCKET_GAP];
    pthread_mutex_lock(&r->lock);
    bk->tokens += (double)(mono - bk->last_ms) * r->rate / 1000.0;
    if (bk->tokens > r->burst)
        bk->tokens = r->burst;
    bk->last_ms = mono;
    if (bk->tokens >= 1.0) {
        bk->tokens -= 1.0;
        send = true;
        suppressed = bk->suppressed;
        bk->suppressed = 0;
    } else {
        bk->suppressed++;
        atomic_fetch_add_explicit(&r->suppressed, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&r->lock);

    /* a flood of bad input is mostly suppressed: quote only what a log line will show */
    if (!send && log_get_level() < LOG_DEBUG)
        return;
    char qtopic[160], qreason[320];
    const char *what = kind == REPORT_GAP     ? "telemetry lost upstream"
                       : kind == REPORT_STALE ? "stale telemetry dropped"
                                              : "input rejected";
    log_quote(qtopic, sizeof(qtopic), topic, topic_len);
    log_quote(qreason, sizeof(qreason), reason, strlen(reason));
    if (!send) {
        log_debug(what, "kind=%s topic=%s reason=%s", kind_names[kind], qtopic, qreason);
        return;
    }
    log_warn(what, "kind=%s topic=%s reason=%s suppressed=%llu", kind_names[kind], qtopic, qreason,
             (unsigned long long)suppressed);
    if (!r->pub)
        return;

    /* {topic, reason, kind, ts, suppressed}: the topic travels in the payload, never as one. */
    bool queued = false;
    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    out_pack_str(&pk, "topic", 5);
    out_pack_str(&pk, topic, topic_len < 256 ? topic_len : 256);
    out_pack_str(&pk, "reason", 6);
    out_pack_str(&pk, reason, strlen(reason));
    out_pack_str(&pk, "kind", 4);
    out_pack_str(&pk, kind_names[kind], strlen(kind_names[kind]));
    out_pack_str(&pk, "ts", 2);
    msgpack_pack_int64(&pk, now);
    out_pack_str(&pk, "suppressed", 10);
    msgpack_pack_uint64(&pk, suppressed);
    if (r->json) {
        msgpack_zone zone;
        msgpack_object obj;
        msgpack_sbuffer js;
        size_t off = 0;
        msgpack_zone_init(&zone, 512);
        msgpack_sbuffer_init(&js);
        if (msgpack_unpack(buf.data, buf.size, &off, &zone, &obj) == MSGPACK_UNPACK_SUCCESS &&
            twin_json_write(&obj, &js) == 0)
            queued = publisher_raw(r->pub, r->topic, js.data, js.size) == 0;
        msgpack_sbuffer_destroy(&js);
        msgpack_zone_destroy(&zone);
    } else {
        queued = publisher_raw(r->pub, r->topic, buf.data, buf.size) == 0;
    }
    msgpack_sbuffer_destroy(&buf);
    if (!queued) {
        /* Not sent after all: it and what it carried count in the next report. */
        pthread_mutex_lock(&r->lock);
        bk->suppressed += 1 + suppressed;
        pthread_mutex_unlock(&r->lock);
    }
}

void report_cleanup(struct report *r)
{
    pthread_mutex_destroy(&r->lock);
}
