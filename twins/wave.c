/* wave.c: waveforms, the array leaves the store is configured to keep as signals (an ECG strip):
 * each message's array is a chunk of samples at the configured rate, its last sample one sample
 * period before the message's (or reading's) ts (a device sends what it sampled since its last
 * message), kept in the "waves" database for the last `seconds` of the
 * signal; older chunks are dropped as newer ones come. What is a waveform is the store's
 * configuration (twin_store_options.waveforms); telemetry.c hands over the arrays.
 *
 * Key: id "\0" path "\0" be64(ts of the first sample). Data: le32 float rate (Hz), then the
 * samples as le32 floats (a waveform is a signal: 24 bits of mantissa hold any ADC's counts).
 */
#include "twins_int.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#define WKEY_MAX (TWIN_ID_MAX + 1 + TWIN_PATH_MAX + 1 + 8)

const struct twin_waveform *wave__spec(const struct twin_store *s, const char *path, size_t len)
{
    for (unsigned i = 0; i < s->nwaves; i++)
        if (strlen(s->waves[i].path) == len && memcmp(s->waves[i].path, path, len) == 0)
            return &s->waves[i];
    return NULL;
}

static size_t wkey(char *buf, const char *id, size_t id_len, const char *path, size_t path_len,
                   int64_t ts)
{
    size_t n = 0;

    memcpy(buf, id, id_len);
    n += id_len;
    buf[n++] = '\0';
    memcpy(buf + n, path, path_len);
    n += path_len;
    buf[n++] = '\0';
    for (int i = 7; i >= 0; i--)
        buf[n++] = (char)((uint64_t)ts >> (8 * i));
    return n;
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(u >> (8 * i));
}

static float get_f32(const unsigned char *p)
{
    uint32_t u = 0;
    float f;

    for (int i = 0; i < 4; i++)
        u |= (uint32_t)p[i] << (8 * i);
    memcpy(&f, &u, 4);
    return f;
}

static int64_t key_ts(const MDB_val *k)
{
    const unsigned char *p = (const unsigned char *)k->mv_data + k->mv_size - 8;
    uint64_t t = 0;

    for (int i = 0; i < 8; i++)
        t = t << 8 | p[i];
    return (int64_t)t;
}

/* The end of a chunk: the time just after its last sample. */
static int64_t chunk_end(int64_t ts, size_t n, double rate)
{
    return ts + (int64_t)llround((double)n * 1000.0 / rate);
}

int wave__append(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                 size_t path_len, int64_t ts, const msgpack_object *samples, char *err)
{
    const struct twin_waveform *w = wave__spec(txn->s, path, path_len);
    char kb[WKEY_MAX], probe[WKEY_MAX];
    uint32_t n = samples->via.array.size;
    MDB_cursor *c;
    MDB_val k, d;
    int rc;

    if (!w || samples->type != MSGPACK_OBJECT_ARRAY || n == 0 || ts < 0)
        return 0;
    double x;
    for (uint32_t i = 0; i < n; i++)
        if (!twins__number(&samples->via.array.ptr[i], &x))
            return 0; /* not a signal: the leaf is stored, nothing is kept as a waveform */
    ts -= (int64_t)llround((double)n * 1000.0 / w->rate); /* the first sample's time */
    if (ts < 0)
        return 0;
    k.mv_size = wkey(kb, id, id_len, path, path_len, ts);
    k.mv_data = kb;
    d.mv_size = 4 + 4 * (size_t)n;
    d.mv_data = NULL;
    rc = mdb_put(txn->txn, txn->s->dbi_waves, &k, &d, MDB_RESERVE); /* d: where to write */
    if (rc)
        return store__mdb_error(txn, rc, "writing a waveform", err);
    unsigned char *p = d.mv_data;
    put_f32(p, (float)w->rate);
    for (uint32_t i = 0; i < n; i++) {
        twins__number(&samples->via.array.ptr[i], &x);
        put_f32(p + 4 + 4 * (size_t)i, (float)x);
    }
    /* the newest chunk of this signal sets what is kept: the last `seconds` before its end */
    size_t pre = id_len + 1 + path_len + 1;
    memcpy(probe, kb, pre);
    memset(probe + pre, 0xff, 8);
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_waves, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    k.mv_size = pre + 8;
    k.mv_data = probe;
    rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    rc = rc == 0 ? mdb_cursor_get(c, &k, &d, MDB_PREV) : mdb_cursor_get(c, &k, &d, MDB_LAST);
    int64_t keep_from = INT64_MIN;
    if (rc == 0 && k.mv_size == pre + 8 && memcmp(k.mv_data, kb, pre) == 0 && d.mv_size >= 4)
        keep_from = chunk_end(key_ts(&k), (d.mv_size - 4) / 4, get_f32(d.mv_data)) -
                    (int64_t)w->seconds * 1000;
    /* the oldest first, while they end before keep_from */
    k.mv_size = pre;
    k.mv_data = kb;
    rc = keep_from == INT64_MIN ? MDB_NOTFOUND : mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == pre + 8 && memcmp(k.mv_data, kb, pre) == 0 && d.mv_size >= 4 &&
           chunk_end(key_ts(&k), (d.mv_size - 4) / 4, get_f32(d.mv_data)) <= keep_from) {
        rc = mdb_cursor_del(c, 0);
        if (rc == 0)
            rc = mdb_cursor_get(c, &k, &d, MDB_GET_CURRENT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND && rc != EINVAL)
        return store__mdb_error(txn, rc, "trimming a waveform", err);
    return 0;
}

int wave__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, char *err)
{
    char kb[TWIN_ID_MAX + 1];
    MDB_cursor *c;
    MDB_val k, d;
    int rc;

    if (!txn->s->has_waves)
        return 0;
    memcpy(kb, id, id_len);
    kb[id_len] = '\0';
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_waves, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    k.mv_size = id_len + 1;
    k.mv_data = kb;
    rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size > id_len + 1 && memcmp(k.mv_data, kb, id_len + 1) == 0) {
        rc = mdb_cursor_del(c, 0);
        if (rc == 0)
            rc = mdb_cursor_get(c, &k, &d, MDB_GET_CURRENT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND && rc != EINVAL)
        return store__mdb_error(txn, rc, "deleting waveforms", err);
    return 0;
}

int twin_wave_read(struct twin_txn *txn, const char *id, size_t id_len, const char *path,
                   size_t path_len, int64_t from_ms, int64_t to_ms, twin_wave_cb cb, void *ctx,
                   char *err)
{
    char kb[WKEY_MAX];
    float *buf = NULL;
    size_t cap = 0;
    MDB_cursor *c;
    MDB_val k, d;
    int rc;

    if (!txn || !cb)
        return -EINVAL;
    if ((rc = twins__check_id(id, id_len, err)))
        return rc;
    if (!path || path_len == 0 || path_len > TWIN_PATH_MAX || memchr(path, '\0', path_len)) {
        twins__errf(err, "waveform path must be 1..%d bytes", TWIN_PATH_MAX);
        return -EINVAL;
    }
    if (!txn->s->has_waves)
        return 0;
    size_t pre = id_len + 1 + path_len + 1;
    rc = mdb_cursor_open(txn->txn, txn->s->dbi_waves, &c);
    if (rc)
        return store__mdb_error(txn, rc, "mdb_cursor_open", err);
    /* from the signal's first chunk: what is kept is at most waveform_seconds long, and chunks
     * may overlap (a late one lands among the others), so none is skipped by a seek */
    wkey(kb, id, id_len, path, path_len, 0);
    k.mv_size = pre;
    k.mv_data = kb;
    rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
    int cbrc = 0;
    while (rc == 0 && k.mv_size == pre + 8 && memcmp(k.mv_data, kb, pre) == 0) {
        int64_t ts = key_ts(&k);
        size_t n = d.mv_size >= 4 ? (d.mv_size - 4) / 4 : 0;
        double rate = n ? get_f32(d.mv_data) : 0;

        if (ts > to_ms)
            break;
        if (n && rate > 0 && chunk_end(ts, n, rate) > from_ms) {
            if (n > cap) {
                float *nb = realloc(buf, n * sizeof *nb);
                if (!nb) {
                    cbrc = -ENOMEM;
                    twins__errf(err, "out of memory");
                    break;
                }
                buf = nb;
                cap = n;
            }
            for (size_t i = 0; i < n; i++)
                buf[i] = get_f32((const unsigned char *)d.mv_data + 4 + 4 * i);
            if ((cbrc = cb(ctx, ts, rate, buf, n)))
                break;
        }
        rc = mdb_cursor_get(c, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(c);
    free(buf);
    if (cbrc)
        return cbrc;
    if (rc && rc != MDB_NOTFOUND)
        return store__mdb_error(txn, rc, "reading a waveform", err);
    return 0;
}
