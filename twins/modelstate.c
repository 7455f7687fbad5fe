/* modelstate: the records the hub keeps per (twin, model), opaque bytes here: a learning
 * model's weights for that twin, its predictions waiting for their target, its error so far.
 * rules/ says what a record means; this file stores it in the caller's transaction, so that it
 * commits with the change that caused it.
 *
 * Layout (store.c opens the database):
 *   "modelstate"  id "\0" model -> record (1..TWIN_MODEL_STATE_MAX bytes) */
#include "twins_int.h"

static struct records models_db(const struct twin_txn *txn)
{
    return (struct records){.dbi = txn->s->dbi_modelstate,
                            .present = txn->s->has_models,
                            .max = TWIN_MODEL_STATE_MAX,
                            .what = "model state"};
}

int twin_model_state_get(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                         size_t model_len, void *buf, size_t cap, size_t *len, char *err)
{
    struct records r = models_db(txn);
    return records__get(txn, &r, id, id_len, model, model_len, buf, cap, len, err);
}

int twin_model_state_put(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                         size_t model_len, const void *buf, size_t len, char *err)
{
    struct records r = models_db(txn);
    return records__put(txn, &r, id, id_len, model, model_len, buf, len, err);
}

int twin_model_state_del(struct twin_txn *txn, const char *id, size_t id_len, const char *model,
                         size_t model_len, char *err)
{
    struct records r = models_db(txn);
    return records__del(txn, &r, id, id_len, model, model_len, err);
}

int twin_model_state_list(struct twin_txn *txn, const char *id, size_t id_len,
                          twin_records_cb cb, void *ctx, char *err)
{
    struct records r = models_db(txn);
    return records__list(txn, &r, id, id_len, cb, ctx, err);
}

int modelstate__remove_twin(struct twin_txn *txn, const char *id, size_t id_len, char *err)
{
    struct records r = models_db(txn);
    return records__remove_twin(txn, &r, id, id_len, err);
}
