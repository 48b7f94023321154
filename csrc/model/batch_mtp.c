/* The batched engine's per-slot MTP caches and the MTP layer's forward over a ragged batch
 * (dsv3_batch_mtp.h): each sequence runs as dsv3_mtp_forward runs it alone, over its slot's cache. */
#include "dsv3_batch_mtp.h"
#include "dsv3_mtp.h"

#include <string.h>

struct dsv3_batch_mtp {
    dsv3_model *m;         /* borrowed: the MTP layer's weights and the workspace */
    int64_t slots, cap;    /* slot count, rows per slot */
    int64_t row_bytes;     /* one latent row in the model's kv layout */
    uint8_t *cache;        /* owned: [slots, cap] rows */
    int64_t *len;          /* owned: [slots] positions cached */
    float *g;              /* owned: [g_rows, hidden] every row's g of a sequence asking for its last one */
    int64_t g_rows;
};

dsv3_status dsv3_batch_mtp_create(dsv3_model *m, int64_t slots, int64_t slot_capacity, dsv3_batch_mtp **out,
                                  dsv3_error *err)
{
    *out = NULL;
    if (!m || !m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: the model is not prepared");
    if (!m->mtp)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: the model has no MTP layer (load it with mtp=True)");
    if (slots < 1 || slot_capacity < 1)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: need at least one slot of at least one token (got %lld x %lld)",
                         (long long)slots, (long long)slot_capacity);
    const int64_t rb = dsv3_model_kv_layout(m).row_bytes;
    size_t n = 0;
    if (!dsv3_mul_size((size_t)slots, (size_t)slot_capacity, &n) || !dsv3_mul_size(n, (size_t)rb, &n))
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: %lld slots of %lld tokens overflow the address space",
                         (long long)slots, (long long)slot_capacity);
    dsv3_batch_mtp *b = dsv3_alloc(sizeof *b);
    if (!b)
        return dsv3_fail(err, DSV3_E_NOMEM, "batch MTP: out of memory");
    memset(b, 0, sizeof *b);
    b->m = m;
    b->slots = slots;
    b->cap = slot_capacity;
    b->row_bytes = rb;
    b->cache = dsv3_alloc(n);
    b->len = dsv3_alloc((size_t)slots * sizeof(int64_t));
    if (!b->cache || !b->len) {
        dsv3_batch_mtp_free(b);
        return dsv3_fail(err, DSV3_E_NOMEM, "batch MTP: out of memory for the MTP caches of %lld slots x %lld tokens "
                         "(%.1f MiB)", (long long)slots, (long long)slot_capacity, (double)n / (1 << 20));
    }
    memset(b->len, 0, (size_t)slots * sizeof(int64_t));
    *out = b;
    return DSV3_OK;
}

void dsv3_batch_mtp_free(dsv3_batch_mtp *b)
{
    if (!b)
        return;
    dsv3_free(b->cache);
    dsv3_free(b->len);
    dsv3_free(b->g);
    dsv3_free(b);
}

int64_t dsv3_batch_mtp_slots(const dsv3_batch_mtp *b) { return b->slots; }
int64_t dsv3_batch_mtp_capacity(const dsv3_batch_mtp *b) { return b->cap; }

int64_t dsv3_batch_mtp_length(const dsv3_batch_mtp *b, int64_t slot)
{
    return slot >= 0 && slot < b->slots ? b->len[slot] : -1;
}

static uint8_t *slot_rows(const dsv3_batch_mtp *b, int64_t slot)
{
    return b->cache + (size_t)(slot * b->cap * b->row_bytes);
}

dsv3_status dsv3_batch_mtp_copy_prefix(dsv3_batch_mtp *b, int64_t src, int64_t dst, int64_t n, dsv3_error *err)
{
    if (src < 0 || src >= b->slots || dst < 0 || dst >= b->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: slots %lld, %lld: out of range [0, %lld)", (long long)src,
                         (long long)dst, (long long)b->slots);
    if (n < 0 || n > b->len[src])
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: slot %lld holds %lld positions, cannot keep %lld",
                         (long long)src, (long long)b->len[src], (long long)n);
    if (src != dst)
        memcpy(slot_rows(b, dst), slot_rows(b, src), (size_t)(n * b->row_bytes));
    b->len[dst] = n;
    return DSV3_OK;
}

static dsv3_status check_step(const dsv3_batch_mtp *b, const int64_t *ids, const float *hidden_in,
                              const dsv3_batch_seq *seqs, int64_t nseq, int64_t *max_n, dsv3_error *err)
{
    if (nseq < 1 || nseq > b->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: a step needs 1..%lld sequences, got %lld",
                         (long long)b->slots, (long long)nseq);
    if (!ids || !hidden_in)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: %s is NULL", ids ? "hidden_in" : "ids");
    int64_t mn = 0;
    for (int64_t i = 0; i < nseq; i++) {
        const dsv3_batch_seq *q = &seqs[i];
        if (q->slot < 0 || q->slot >= b->slots)
            return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: sequence %lld: slot %lld out of range [0, %lld)",
                             (long long)i, (long long)q->slot, (long long)b->slots);
        for (int64_t j = 0; j < i; j++)
            if (seqs[j].slot == q->slot)
                return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: slot %lld appears twice in one step",
                                 (long long)q->slot);
        if (q->n < 1 || q->n > b->cap - b->len[q->slot])
            return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: sequence %lld (slot %lld): %lld new positions do not fit "
                             "(%lld of %lld used)", (long long)i, (long long)q->slot, (long long)q->n,
                             (long long)b->len[q->slot], (long long)b->cap);
        if (q->logits < DSV3_LOGITS_NONE || q->logits > DSV3_LOGITS_ALL)
            return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: sequence %lld: logits mode %lld is not none/last/all",
                             (long long)i, (long long)q->logits);
        mn = q->n > mn ? q->n : mn;
    }
    *max_n = mn;
    return DSV3_OK;
}

dsv3_status dsv3_batch_mtp_forward(dsv3_batch_mtp *b, const int64_t *ids, const float *hidden_in,
                                   const dsv3_batch_seq *seqs, int64_t nseq, float *logits, float *hidden_out,
                                   int isa, dsv3_error *err)
{
    int64_t max_n = 0;
    dsv3_status st = check_step(b, ids, hidden_in, seqs, nseq, &max_n, err);
    if (st != DSV3_OK)
        return st;
    const int64_t D = b->m->cfg.hidden_size, V = b->m->cfg.vocab_size, r = dsv3_batch_out_rows(seqs, nseq);
    if (r > 0 && !logits)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: %lld logits rows asked but no output buffer", (long long)r);
    if (hidden_out && max_n > b->g_rows) {
        float *g = dsv3_alloc((size_t)(max_n * D) * sizeof(float));
        if (!g)
            return dsv3_fail(err, DSV3_E_NOMEM, "batch MTP: out of memory for %lld hidden rows", (long long)max_n);
        dsv3_free(b->g);
        b->g = g;
        b->g_rows = max_n;
    }
    for (int64_t i = 0, off = 0, out = 0; i < nseq && st == DSV3_OK; off += seqs[i].n, i++) {
        const dsv3_batch_seq *q = &seqs[i];
        const dsv3_logits_mode which = (dsv3_logits_mode)q->logits;
        const int64_t rows = which == DSV3_LOGITS_ALL ? q->n : which == DSV3_LOGITS_LAST;
        float *g = !hidden_out || !rows ? NULL : which == DSV3_LOGITS_ALL ? hidden_out + out * D : b->g;
        st = dsv3_mtp_forward_at(b->m, slot_rows(b, q->slot), b->len[q->slot], b->cap, ids + off, hidden_in + off * D,
                                 q->n, rows ? logits + out * V : NULL, which, g, isa, err);
        if (st == DSV3_OK && g && g == b->g) /* only the last row was asked */
            memcpy(hidden_out + out * D, b->g + (q->n - 1) * D, (size_t)D * sizeof(float));
        out += rows;
    }
    if (st == DSV3_OK) /* every sequence ran: only now the lengths move */
        for (int64_t i = 0; i < nseq; i++)
            b->len[seqs[i].slot] += seqs[i].n;
    return st;
}
