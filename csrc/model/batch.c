/* The batched engine: a pool of sequence slots, each with its own latent cache, and one forward
 * call over a ragged batch (see dsv3_batch.h). The attention projections, norms, MLP/MoE and the head
 * run over all the step's tokens at once; the attention core runs each sequence over its own cache, the
 * decode tokens of all sequences in one call (W_UK / W_UV read once per step, dsv3_mla_attend_many). */
#include "dsv3_batch.h"
#include "dsv3_ops.h"
#include "mla/mla_internal.h"
#include "model/batch_v32.h"
#include "model/model_internal.h"

#include <string.h>

struct dsv3_batch {
    dsv3_model *m;      /* borrowed: weights and workspace */
    int64_t slots, cap; /* slot count, rows per slot and layer */
    int64_t row;        /* floats per latent row: kv_lora + rope */
    dsv3_kv_layout kv;  /* the model's cache row layout (its kv_cache_dtype) */
    uint8_t *cache;     /* owned: [slots, layers, cap] rows of kv.row_bytes */
    int64_t *len;       /* owned: [slots] tokens cached */
    float *sel;         /* owned: [sel_cap, hidden] normed hidden states of the logits rows */
    int64_t sel_cap;
    dsv3_mla_seg *segs; /* owned: [segs_cap] the step's sequences (a verification chunk: its tokens) */
    int64_t segs_cap;
    dsv3_batch_index *index; /* owned, V3.2 only: the slots' index-key caches (csrc/model/batch_v32.c) */
};

dsv3_status dsv3_batch_create(dsv3_model *m, int64_t slots, int64_t slot_capacity, dsv3_batch **out,
                              dsv3_error *err)
{
    *out = NULL;
    if (!m || !m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: the model is not prepared");
    if (slots < 1 || slot_capacity < 1)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: need at least one slot of at least one token (got %lld x %lld)",
                         (long long)slots, (long long)slot_capacity);
    const int64_t row = m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim, L = m->cfg.num_hidden_layers;
    const dsv3_kv_layout kv = dsv3_model_kv_layout(m);
    size_t n = 0;
    if (!dsv3_mul_size((size_t)slots, (size_t)L, &n) || !dsv3_mul_size(n, (size_t)slot_capacity, &n) ||
        !dsv3_mul_size(n, (size_t)kv.row_bytes, &n))
        return dsv3_fail(err, DSV3_E_VALUE, "batch: %lld slots of %lld tokens overflow the address space",
                         (long long)slots, (long long)slot_capacity);
    dsv3_batch *b = dsv3_alloc(sizeof *b);
    if (!b)
        return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory");
    memset(b, 0, sizeof *b);
    b->m = m;
    b->slots = slots;
    b->cap = slot_capacity;
    b->row = row;
    b->kv = kv;
    b->cache = dsv3_alloc(n);
    b->len = dsv3_alloc((size_t)slots * sizeof(int64_t));
    b->segs = dsv3_alloc((size_t)slots * sizeof(dsv3_mla_seg));
    if (!b->cache || !b->len || !b->segs) {
        dsv3_batch_free(b);
        return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory for the KV cache of %lld slots x %lld tokens "
                         "(%.1f MiB)", (long long)slots, (long long)slot_capacity, (double)n / (1 << 20));
    }
    memset(b->len, 0, (size_t)slots * sizeof(int64_t));
    b->segs_cap = slots;
    const dsv3_status st = dsv3_batch_index_create(m, slots, slot_capacity, &b->index, err); /* V3.2 */
    if (st != DSV3_OK) {
        dsv3_batch_free(b);
        return st;
    }
    *out = b;
    return DSV3_OK;
}

void dsv3_batch_free(dsv3_batch *b)
{
    if (!b)
        return;
    dsv3_free(b->cache);
    dsv3_free(b->len);
    dsv3_free(b->sel);
    dsv3_free(b->segs);
    dsv3_batch_index_free(b->index);
    dsv3_free(b);
}

int64_t dsv3_batch_slots(const dsv3_batch *b) { return b->slots; }
int64_t dsv3_batch_capacity(const dsv3_batch *b) { return b->cap; }

int64_t dsv3_batch_length(const dsv3_batch *b, int64_t slot)
{
    return slot >= 0 && slot < b->slots ? b->len[slot] : -1;
}

dsv3_status dsv3_batch_release(dsv3_batch *b, int64_t slot, dsv3_error *err)
{
    if (slot < 0 || slot >= b->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: slot %lld out of range [0, %lld)", (long long)slot,
                         (long long)b->slots);
    b->len[slot] = 0;
    return DSV3_OK;
}

static uint8_t *slot_cache(const dsv3_batch *b, int64_t slot, int64_t layer);

dsv3_status dsv3_batch_copy_prefix(dsv3_batch *b, int64_t src, int64_t dst, int64_t n, dsv3_error *err)
{
    if (src < 0 || src >= b->slots || dst < 0 || dst >= b->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: slots %lld, %lld: out of range [0, %lld)", (long long)src,
                         (long long)dst, (long long)b->slots);
    if (n < 0 || n > b->len[src])
        return dsv3_fail(err, DSV3_E_VALUE, "batch: slot %lld holds %lld tokens, cannot copy %lld", (long long)src,
                         (long long)b->len[src], (long long)n);
    if (src != dst)
        for (int64_t l = 0; l < b->m->cfg.num_hidden_layers; l++)
            memcpy(slot_cache(b, dst, l), slot_cache(b, src, l), (size_t)(n * b->kv.row_bytes));
    dsv3_batch_index_copy(b->index, src, dst, n); /* V3.2: the index keys of the same rows */
    b->len[dst] = n;
    return DSV3_OK;
}

dsv3_status dsv3_batch_truncate(dsv3_batch *b, int64_t slot, int64_t length, dsv3_error *err)
{
    return dsv3_batch_copy_prefix(b, slot, slot, length, err);
    return DSV3_OK;
}

/* A sequence's output rows are always its last ones: its last `count` new tokens. */
static int64_t seq_logits_rows(const dsv3_batch_seq *q)
{
    switch (q->logits) {
    case DSV3_LOGITS_ALL:
    case DSV3_BATCH_VERIFY:
        return q->n;
    case DSV3_LOGITS_LAST:
    case DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST:
        return 1;
    default:
        return 0;
    }
}

static int64_t seq_hidden_rows(const dsv3_batch_seq *q)
{
    return q->logits >= DSV3_BATCH_HIDDEN_ALL ? q->n : seq_logits_rows(q);
}

int64_t dsv3_batch_out_rows(const dsv3_batch_seq *seqs, int64_t nseq)
{
    int64_t r = 0;
    for (int64_t i = 0; i < nseq; i++)
        r += seq_logits_rows(&seqs[i]);
    return r;
}

int64_t dsv3_batch_hidden_rows(const dsv3_batch_seq *seqs, int64_t nseq)
{
    int64_t r = 0;
    for (int64_t i = 0; i < nseq; i++)
        r += seq_hidden_rows(&seqs[i]);
    return r;
}

static uint8_t *slot_cache(const dsv3_batch *b, int64_t slot, int64_t layer)
{
    return b->cache + ((slot * b->m->cfg.num_hidden_layers + layer) * b->cap) * b->kv.row_bytes;
}

/* Every argument is checked before anything runs; returns the total tokens in *total. */
static dsv3_status check_step(const dsv3_batch *b, const int64_t *ids, const dsv3_batch_seq *seqs, int64_t nseq,
                              int64_t *total, int64_t *max_rows, dsv3_error *err)
{
    if (nseq < 1 || nseq > b->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: a step needs 1..%lld sequences, got %lld", (long long)b->slots,
                         (long long)nseq);
    int64_t t = 0, mr = 0;
    for (int64_t i = 0; i < nseq; i++) {
        const dsv3_batch_seq *q = &seqs[i];
        if (q->slot < 0 || q->slot >= b->slots)
            return dsv3_fail(err, DSV3_E_VALUE, "batch: sequence %lld: slot %lld out of range [0, %lld)",
                             (long long)i, (long long)q->slot, (long long)b->slots);
        for (int64_t j = 0; j < i; j++)
            if (seqs[j].slot == q->slot)
                return dsv3_fail(err, DSV3_E_VALUE, "batch: slot %lld appears twice in one step", (long long)q->slot);
        if (q->n < 1 || q->n > b->cap - b->len[q->slot])
            return dsv3_fail(err, DSV3_E_VALUE,
                             "batch: sequence %lld (slot %lld): %lld new tokens do not fit (%lld of %lld positions used)",
                             (long long)i, (long long)q->slot, (long long)q->n, (long long)b->len[q->slot],
                             (long long)b->cap);
        if (q->logits < DSV3_LOGITS_NONE || q->logits > DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST)
            return dsv3_fail(err, DSV3_E_VALUE, "batch: sequence %lld: logits mode %lld is not none/last/all/verify "
                             "or hidden-all with none/last (0..5)", (long long)i, (long long)q->logits);
        if (q->logits == DSV3_BATCH_VERIFY && b->index)
            return dsv3_fail(err, DSV3_E_VALUE, "batch: sequence %lld: the verification mode (speculative decoding) "
                             "is not supported with DeepSeek-V3.2 sparse attention (index_topk > 0)", (long long)i);
        t += q->n;
        mr = b->len[q->slot] + q->n > mr ? b->len[q->slot] + q->n : mr;
    }
    const int64_t V = b->m->cfg.vocab_size;
    for (int64_t i = 0; i < t; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return dsv3_fail(err, DSV3_E_VALUE, "token id %lld at position %lld is out of range [0, %lld)",
                             (long long)ids[i], (long long)i, (long long)V);
    *total = t;
    *max_rows = mr;
    return DSV3_OK;
}

/* cos | sin [t, rope/2] of each token's own position (its slot's length + index), then the positions. */
static const float *step_rope(dsv3_batch *b, const dsv3_batch_seq *seqs, int64_t nseq, int64_t t)
{
    dsv3_model *m = b->m;
    const int64_t half = m->cfg.qk_rope_head_dim / 2;
    float *cs = m->ws.rope;
    int64_t *pos = (int64_t *)(void *)(cs + 2 * t * half);
    for (int64_t i = 0, k = 0; i < nseq; i++)
        for (int64_t j = 0; j < seqs[i].n; j++)
            pos[k++] = b->len[seqs[i].slot] + j;
    dsv3_rope_cos_sin(pos, t, m->inv_freq, half, m->cfg.rope_attention_scaling, cs, cs + t * half);
    return cs;
}

/* Attention of every sequence: dsv3_mla_forward's steps (csrc/mla/mla.c) with the projections over all
 * t tokens at once. x, out [t, hidden]; cs: step_rope. Per token the same operations as dsv3_mla_forward. */
static dsv3_status attention_step(dsv3_batch *b, int64_t l, const dsv3_batch_seq *seqs, int64_t nseq, const float *x,
                                  int64_t t, const float *cs, float *out, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    const dsv3_mla_dims *d = &m->mla;
    const dsv3_mla_weights *w = &m->layers[l].attn;
    dsv3_mla_scratch *ws = &m->ws.mla;
    const int64_t half = d->rope / 2, row = b->row;
    const float *cos_j = cs, *sin_j = cs + t * half;
    if (m->attn_mode == DSV3_ATTN_ABSORBED && !w->w_uv)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: absorbed mode needs the W_UV views (dsv3_mla_absorb)");
    dsv3_status st = dsv3_mla_project_q(d, w, x, t, cos_j, sin_j, ws->q, ws->qa, isa, err);
    float *ckv = m->ws.cache; /* [t, row]: kv_a_proj of every token, then copied into each slot's cache */
    if (st == DSV3_OK)
        st = dsv3_linear(x, t, &w->kv_a_proj, d->attention_bias ? w->kv_a_bias.f32 : NULL, ckv, isa, err);
    int64_t nseg = 0;
    for (int64_t i = 0, off = 0; i < nseq && st == DSV3_OK; off += seqs[i].n, i++) {
        const int64_t n = seqs[i].n, past = b->len[seqs[i].slot];
        uint8_t *cache = slot_cache(b, seqs[i].slot, l);
        dsv3_mla_finish_latent(d, w, ckv + off * row, n, cos_j + off * half, sin_j + off * half);
        dsv3_kv_store_rows(&b->kv, ckv + off * row, n, cache + past * b->kv.row_bytes); /* in the cache's dtype */
        if (seqs[i].logits == DSV3_BATCH_VERIFY) /* token j attends rows [0, past + j] as a decode step */
            for (int64_t j = 0; j < n; j++)
                b->segs[nseg++] = (dsv3_mla_seg){cache, past + j, 1, off + j};
        else
            b->segs[nseg++] = (dsv3_mla_seg){cache, past, n, off};
    }
    /* each sequence in the form it would take alone; the absorbed ones (decode) in one call that reads
     * W_UK / W_UV once for all of them */
    if (st == DSV3_OK && b->index) /* V3.2: dense or over the rows each query's indexer selects */
        st = dsv3_batch_index_attend(b->index, m, l, seqs, b->segs, nseq, x, t, cs, isa, err);
    else if (st == DSV3_OK)
        st = dsv3_mla_attend_many(d, w, m->attn_mode, ws->q, b->segs, nseg, ws->attn, ws, isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(ws->attn, t, &w->o_proj, d->attention_bias ? w->o_bias.f32 : NULL, out, isa, err);
    return st;
}

/* h [t, hidden] in place through one layer; a, o: [t, hidden] temporaries. */
static dsv3_status layer_step(dsv3_batch *b, int64_t l, const dsv3_batch_seq *seqs, int64_t nseq, float *h,
                              int64_t t, const float *cs, float *a, float *o, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    dsv3_layer *ly = &m->layers[l];
    const int64_t D = m->cfg.hidden_size;
    dsv3_rmsnorm_f32(h, t, D, ly->input_layernorm.f32, m->cfg.rms_norm_eps, a);
    const dsv3_status st = attention_step(b, l, seqs, nseq, a, t, cs, o, isa, err);
    return st == DSV3_OK ? dsv3_model_residual_ffn(m, ly, h, t, a, o, isa, err) : st; /* as forward's layer */
}

/* Grows b->sel to r output rows and b->segs to the step's attention segments. */
static dsv3_status reserve_step(dsv3_batch *b, const dsv3_batch_seq *seqs, int64_t nseq, int64_t r, dsv3_error *err)
{
    if (r > b->sel_cap) {
        float *sel = dsv3_alloc((size_t)(r * b->m->cfg.hidden_size) * sizeof(float));
        if (!sel)
            return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory for %lld output rows", (long long)r);
        dsv3_free(b->sel);
        b->sel = sel;
        b->sel_cap = r;
    }
    int64_t nseg = 0; /* attention segments: one per sequence, one per token of a verification chunk */
    for (int64_t i = 0; i < nseq; i++)
        nseg += seqs[i].logits == DSV3_BATCH_VERIFY ? seqs[i].n : 1;
    if (nseg > b->segs_cap) {
        dsv3_mla_seg *segs = dsv3_alloc((size_t)nseg * sizeof *segs);
        if (!segs)
            return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory for %lld attention segments", (long long)nseg);
        dsv3_free(b->segs);
        b->segs = segs;
        b->segs_cap = nseg;
    }
    return DSV3_OK;
}

/* The final norm of each sequence's last `rows(seq)` tokens of h [t, D] into out, in order. */
static void norm_rows(const dsv3_model *m, const dsv3_batch_seq *seqs, int64_t nseq, const float *h,
                      int64_t (*rows)(const dsv3_batch_seq *), float *out)
{
    const int64_t D = m->cfg.hidden_size;
    for (int64_t i = 0, off = 0, k = 0; i < nseq; off += seqs[i].n, i++) {
        const int64_t c = rows(&seqs[i]);
        dsv3_rmsnorm_f32(h + (off + seqs[i].n - c) * D, c, D, m->norm.f32, m->cfg.rms_norm_eps, out + k * D);
        k += c;
    }
}

static dsv3_status batch_forward_pinned(dsv3_batch *b, const int64_t *ids, const dsv3_batch_seq *seqs, int64_t nseq,
                                       float *logits, float *hidden, int isa, dsv3_error *err)
{
    int64_t t = 0, max_rows = 0;
    dsv3_status st = check_step(b, ids, seqs, nseq, &t, &max_rows, err);
    if (st != DSV3_OK)
        return st;
    dsv3_model *m = b->m;
    const dsv3_model_config *c = &m->cfg;
    const int64_t D = c->hidden_size, r = dsv3_batch_out_rows(seqs, nseq);
    if (r > 0 && !logits)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: %lld logits rows asked but no output buffer", (long long)r);
    st = dsv3_model_reserve(m, t, max_rows, err); /* the model's workspace, grown once for this step */
    if (st == DSV3_OK)
        st = reserve_step(b, seqs, nseq, r, err);
    m->ws.lin.used = 0;
    if (st != DSV3_OK)
        return st;
    const float *cs = step_rope(b, seqs, nseq, t);
    float *h = m->ws.h, *a = h + t * D, *o = a + t * D;
    dsv3_model_embed_rows(m, ids, t, h);
    for (int64_t l = 0; l < c->num_hidden_layers && st == DSV3_OK; l++)
        st = layer_step(b, l, seqs, nseq, h, t, cs, a, o, isa, err);
    if (st == DSV3_OK && hidden)
        norm_rows(m, seqs, nseq, h, seq_hidden_rows, hidden);
    if (st == DSV3_OK && r > 0) { /* only the logits rows go through the final norm and the head */
        norm_rows(m, seqs, nseq, h, seq_logits_rows, b->sel);
        st = dsv3_linear(b->sel, r, c->tie_word_embeddings ? &m->embed : &m->lm_head, NULL, logits, isa, err);
    }
    if (st == DSV3_OK)
        for (int64_t i = 0; i < nseq; i++)
            b->len[seqs[i].slot] += seqs[i].n;
    return st;
}

dsv3_status dsv3_batch_forward(dsv3_batch *b, const int64_t *ids, const dsv3_batch_seq *seqs, int64_t nseq,
                               float *logits, float *hidden, int isa, dsv3_error *err)
{
    const dsv3_model_call scope = dsv3_model_call_begin(b->m);
    const dsv3_status st = batch_forward_pinned(b, ids, seqs, nseq, logits, hidden, isa, err);
    dsv3_model_call_end(scope);
    return st;
}
