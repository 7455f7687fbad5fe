/* predicted: writes one model's result into a twin's `predicted` map (predicted.<model>), as
 * its own committed change (version +1, outbox). What a prediction holds is the caller's; this
 * file only places it in the document. */
#include "twins_int.h"

#include <errno.h>

int twin_predicted_set(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                       size_t model_len, const msgpack_object *value, struct twin_doc *out,
                       char *err)
{
    struct twin_doc doc;
    int rc = store__need_write(txn, "twin_predicted_set", err);
    if (rc)
        return rc;
    if (!model || model_len == 0 || model_len > TWIN_KEY_MAX || memchr(model, '.', model_len) ||
        !value) {
        twins__errf(err, "predicted: a model name has 1 to %d bytes and no '.'", TWIN_KEY_MAX);
        return -EINVAL;
    }
    if ((rc = twin_get(txn, id, id_len, &doc, err)) < 0)
        return rc;
    const msgpack_object *old = &doc.predicted;
    uint32_t n = old->type == MSGPACK_OBJECT_MAP ? old->via.map.size : 0;
    msgpack_zone *z = twin_txn_zone(txn);
    msgpack_object_kv *kv = msgpack_zone_malloc(z, sizeof(*kv) * (n + 1));
    if (!kv) {
        twins__errf(err, "out of memory setting predicted.%.*s", (int)model_len, model);
        return -ENOMEM;
    }
    uint32_t m = 0;
    bool replaced = false;
    for (uint32_t i = 0; i < n; i++) {
        kv[m] = old->via.map.ptr[i];
        if (twins__key_is(&kv[m].key, model, model_len)) {
            kv[m].val = *value;
            replaced = true;
        }
        m++;
    }
    if (!replaced) {
        kv[m].key.type = MSGPACK_OBJECT_STR;
        kv[m].key.via.str.ptr = model;
        kv[m].key.via.str.size = (uint32_t)model_len;
        kv[m].val = *value;
        m++;
    }
    doc.predicted.type = MSGPACK_OBJECT_MAP;
    doc.predicted.via.map.size = m;
    doc.predicted.via.map.ptr = kv;
    doc.version++;
    if ((rc = twin_put(txn, &doc, err)) < 0)
        return rc;
    if (out)
        *out = doc;
    return 0;
}
