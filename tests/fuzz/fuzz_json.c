/* fuzz_json.c: the JSON side of twins/json.c alone. An input whose first non-blank byte is '{'
 * goes through twin_input_decode (JSON -> msgpack, then the pre-scan and msgpack-c), and every
 * value it decodes is written back with twin_json_write. Invariants:
 *   - a rejection is -EBADMSG, -ELOOP or -E2BIG with a reason, never anything else;
 *   - what the decoder accepts is valid JSON by an independent strict validator (the decoder
 *     claims strict RFC 8259), and decodes to a map;
 *   - what twin_json_write writes, for the whole object and for every value inside it, is valid
 *     JSON;
 *   - writing is a round trip: the written object decodes again to an equal value
 *     (twin_value_equal), and writing that gives the very same text.
 * Other inputs are ignored: the msgpack path belongs to fuzz_telemetry and fuzz_merge.
 */
#include "fuzz.h"
#include "twins.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

/* Limits for reading back what we wrote: as deep as msgpack-c allows, no count limit. */
static const struct twin_limits wide = {SIZE_MAX, TWIN_DEPTH_CAP, UINT_MAX};

static void check_written(const msgpack_object *o, unsigned depth)
{
    msgpack_sbuffer sb;
    int rc;

    msgpack_sbuffer_init(&sb);
    rc = twin_json_write(o, &sb);
    FUZZ_CHECK(rc == 0, "twin_json_write: %d", rc);
    FUZZ_CHECK(fuzz_json_valid(sb.data, sb.size), "twin_json_write wrote invalid JSON: %.*s",
               (int)(sb.size < 400 ? sb.size : 400), sb.data ? sb.data : "");
    msgpack_sbuffer_destroy(&sb);
    if (depth > 8)
        return; /* deeper values were written as part of their parents already */
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++)
            check_written(&o->via.array.ptr[i], depth + 1);
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            check_written(&o->via.map.ptr[i].key, depth + 1);
            check_written(&o->via.map.ptr[i].val, depth + 1);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct twin_limits lim = TWIN_LIMITS_DEFAULT;
    msgpack_zone zone, zone2;
    msgpack_object obj, back;
    msgpack_sbuffer j1, j2;
    char err[TWIN_ERR_LEN];
    size_t i = 0;
    int rc;

    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    if (i < size && data[i] == '[') {
        /* a SenML pack: a batch of readings, or a reason; never a crash */
        msgpack_zone_init(&zone, 4096);
        err[0] = '\0';
        rc = twin_senml_decode(data, size, &lim, 1700000000000, &zone, &obj, err);
        FUZZ_CHECK(rc == 0 || (err[0] && strlen(err) < TWIN_ERR_LEN), "senml %d without a reason",
                   rc);
        FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -EBADMSG || rc == -ELOOP || rc == -E2BIG,
                   "senml: %d %s", rc, err);
        if (rc == 0) {
            FUZZ_CHECK(fuzz_json_valid((const char *)data, size), "senml accepted invalid JSON");
            FUZZ_CHECK(obj.type == MSGPACK_OBJECT_MAP && obj.via.map.size == 1 &&
                           obj.via.map.ptr[0].val.type == MSGPACK_OBJECT_ARRAY,
                       "senml: not a batch");
        }
        msgpack_zone_destroy(&zone);
        return 0;
    }
    if (i == size || data[i] != '{')
        return 0;

    msgpack_zone_init(&zone, 4096);
    err[0] = '\0';
    rc = twin_input_decode(data, size, &lim, &zone, &obj, err);
    if (rc) {
        FUZZ_CHECK(rc == -EBADMSG || rc == -ELOOP || rc == -E2BIG, "decode: %d %s", rc, err);
        FUZZ_CHECK(err[0] && strlen(err) < TWIN_ERR_LEN, "decode %d without a reason", rc);
        msgpack_zone_destroy(&zone);
        return 0;
    }
    FUZZ_CHECK(fuzz_json_valid((const char *)data, size), "the decoder accepted invalid JSON");
    FUZZ_CHECK(obj.type == MSGPACK_OBJECT_MAP, "a JSON object decoded as type %d", obj.type);

    check_written(&obj, 0);

    msgpack_sbuffer_init(&j1);
    msgpack_sbuffer_init(&j2);
    FUZZ_CHECK(twin_json_write(&obj, &j1) == 0, "twin_json_write");
    msgpack_zone_init(&zone2, 4096);
    rc = twin_input_decode(j1.data, j1.size, &wide, &zone2, &back, err);
    FUZZ_CHECK(rc == 0, "what twin_json_write wrote does not decode: %d %s: %.*s", rc, err,
               (int)(j1.size < 400 ? j1.size : 400), j1.data);
    FUZZ_CHECK(twin_value_equal(&obj, &back), "JSON round trip changed the value: %.*s",
               (int)(j1.size < 400 ? j1.size : 400), j1.data);
    FUZZ_CHECK(twin_json_write(&back, &j2) == 0, "twin_json_write");
    FUZZ_CHECK(j1.size == j2.size && memcmp(j1.data, j2.data, j1.size) == 0,
               "writing is not a fixpoint: %.*s vs %.*s", (int)(j1.size < 200 ? j1.size : 200),
               j1.data, (int)(j2.size < 200 ? j2.size : 200), j2.data);
    msgpack_sbuffer_destroy(&j1);
    msgpack_sbuffer_destroy(&j2);
    msgpack_zone_destroy(&zone2);
    msgpack_zone_destroy(&zone);
    return 0;
}
