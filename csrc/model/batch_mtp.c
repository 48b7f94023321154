/* The batched engine's per-slot MTP caches and the MTP layer's forward over a ragged batch
 * (dsv3_batch_mtp.h): the operations of dsv3_mtp_forward (csrc/model/mtp.c) with the linears, norms and
 * MoE over all the step's rows at once and the attention core of each sequence over its slot's cache in
 * the form it would take alone (as csrc/model/batch.c runs the main layers). */
#include "dsv3_batch_mtp.h"
#include "dsv3_ops.h"
#include "mla/mla_internal.h"
#include "model/model_internal.h"

#include <string.h>

struct dsv3_batch_mtp {
    dsv3_model *m;         /* borrowed: the MTP layer's weights and the workspace */
    int64_t slots, cap;    /* slot count, rows per slot */
    int64_t row_bytes;     /* one latent row in the model's kv layout */
    uint8_t *cache;        /* owned: [slots, cap] rows */
    int64_t *len;          /* owned: [slots] positions cached */
    dsv3_kv_layout kv;     /* the model's cache row layout */
    int64_t *rows;         /* owned: [rows_cap] indices of the output rows among the step's rows */
    int64_t rows_cap;
    float *g;              /* owned: [rows_cap, hidden] g of the output rows */
    dsv3_mla_seg *segs;    /* owned: [slots] the step's sequences for the attention core */
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
    b->kv = dsv3_model_kv_layout(m);
    b->cache = dsv3_alloc(n);
    b->len = dsv3_alloc((size_t)slots * sizeof(int64_t));
    b->segs = dsv3_alloc((size_t)slots * sizeof(dsv3_mla_seg));
    if (!b->cache || !b->len || !b->segs) {
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
    dsv3_free(b->rows);
    dsv3_free(b->g);
    dsv3_free(b->segs);
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
                              const dsv3_batch_seq *seqs, int64_t nseq, int64_t *total, int64_t *max_rows,
                              dsv3_error *err)
{
    if (nseq < 1 || nseq > b->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: a step needs 1..%lld sequences, got %lld",
                         (long long)b->slots, (long long)nseq);
    if (!ids || !hidden_in)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: %s is NULL", ids ? "hidden_in" : "ids");
    int64_t t = 0, mr = 0;
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

/* The output rows (indices into the step's rows) in order; grows b->rows / b->g. */
static dsv3_status select_rows(dsv3_batch_mtp *b, const dsv3_batch_seq *seqs, int64_t nseq, int64_t r,
                               dsv3_error *err)
{
    if (r > b->rows_cap) {
        int64_t *rows = dsv3_alloc((size_t)r * sizeof(int64_t));
        float *g = dsv3_alloc((size_t)(r * b->m->cfg.hidden_size) * sizeof(float));
        if (!rows || !g) {
            dsv3_free(rows);
            dsv3_free(g);
            return dsv3_fail(err, DSV3_E_NOMEM, "batch MTP: out of memory for %lld output rows", (long long)r);
        }
        dsv3_free(b->rows);
        dsv3_free(b->g);
        b->rows = rows;
        b->g = g;
        b->rows_cap = r;
    }
    for (int64_t i = 0, off = 0, k = 0; i < nseq; off += seqs[i].n, i++) {
        if (seqs[i].logits == DSV3_LOGITS_ALL)
            for (int64_t j = 0; j < seqs[i].n; j++)
                b->rows[k++] = off + j;
        else if (seqs[i].logits == DSV3_LOGITS_LAST)
            b->rows[k++] = off + seqs[i].n - 1;
    }
    return DSV3_OK;
}

/* The MTP block's attention over each sequence's slot cache: the steps of dsv3_mla_forward with the
 * projections over all t rows (as batch.c's attention_step). x, out [t, hidden]; cs: the rows' rope tables. */
static dsv3_status attention(dsv3_batch_mtp *b, const dsv3_batch_seq *seqs, int64_t nseq, const float *x, int64_t t,
                             const float *cs, float *out, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    const dsv3_mla_dims *d = &m->mla;
    const dsv3_mla_weights *w = &m->mtp->layer.attn;
    dsv3_mla_scratch *ws = &m->ws.mla;
    const int64_t half = d->rope / 2, row = d->kv_lora + d->rope;
    const float *cos_j = cs, *sin_j = cs + t * half;
    if (m->attn_mode == DSV3_ATTN_ABSORBED && !w->w_uv)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: absorbed mode needs the W_UV views (dsv3_mla_absorb)");
    dsv3_status st = dsv3_mla_project_q(d, w, x, t, cos_j, sin_j, ws->q, ws->qa, isa, err);
    float *ckv = m->ws.cache; /* [t, row]: kv_a_proj of every row, then stored in each slot's cache */
    if (st == DSV3_OK)
        st = dsv3_linear(x, t, &w->kv_a_proj, d->attention_bias ? w->kv_a_bias.f32 : NULL, ckv, isa, err);
    for (int64_t i = 0, off = 0; i < nseq && st == DSV3_OK; off += seqs[i].n, i++) {
        const int64_t n = seqs[i].n, past = b->len[seqs[i].slot];
        uint8_t *cache = slot_rows(b, seqs[i].slot);
        dsv3_mla_finish_latent(d, w, ckv + off * row, n, cos_j + off * half, sin_j + off * half);
        dsv3_kv_store_rows(&b->kv, ckv + off * row, n, cache + past * b->row_bytes);
        b->segs[i] = (dsv3_mla_seg){cache, past, n, off};
    }
    if (st == DSV3_OK)
        st = dsv3_mla_attend_many(d, w, m->attn_mode, ws->q, b->segs, nseq, ws->attn, ws, isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(ws->attn, t, &w->o_proj, d->attention_bias ? w->o_bias.f32 : NULL, out, isa, err);
    return st;
}

static dsv3_status forward_pinned(dsv3_batch_mtp *b, const int64_t *ids, const float *hin, const dsv3_batch_seq *seqs,
                                  int64_t nseq, int64_t t, int64_t max_rows, int64_t r, float *logits,
                                  float *hout, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    dsv3_mtp *mt = m->mtp;
    const dsv3_model_config *c = &m->cfg;
    const int64_t D = c->hidden_size, half = c->qk_rope_head_dim / 2;
    const float eps = c->rms_norm_eps;
    dsv3_status st = dsv3_model_reserve(m, t, max_rows, err);
    if (st == DSV3_OK)
        st = select_rows(b, seqs, nseq, r, err);
    m->ws.lin.used = 0;
    if (st != DSV3_OK)
        return st;
    float *cs = m->ws.rope; /* cos | sin of each row's own position (its slot's length + index) */
    int64_t *pos = (int64_t *)(void *)(cs + 2 * t * half);
    for (int64_t i = 0, k = 0; i < nseq; i++)
        for (int64_t j = 0; j < seqs[i].n; j++)
            pos[k++] = b->len[seqs[i].slot] + j;
    dsv3_rope_cos_sin(pos, t, m->inv_freq, half, c->rope_attention_scaling, cs, cs + t * half);
    float *h = m->ws.h, *a = h + t * D, *o = a + t * D, *cat = a; /* ws.h: 3 t rows; cat [t, 2 hidden] over a, o */
    dsv3_embed_rows(mt->embed.data ? &mt->embed : &m->embed, D, ids, t, h);
    for (int64_t i = 0; i < t; i++) {
        dsv3_rmsnorm_f32(h + i * D, 1, D, mt->enorm.f32, eps, cat + i * 2 * D);
        dsv3_rmsnorm_f32(hin + i * D, 1, D, mt->hnorm.f32, eps, cat + i * 2 * D + D);
    }
    st = dsv3_linear(cat, t, &mt->eh_proj, NULL, h, isa, err);
    if (st == DSV3_OK) { /* the decoder block: h += attn(ln1(h)); h += ffn(ln2(h)) */
        dsv3_rmsnorm_f32(h, t, D, mt->layer.input_layernorm.f32, eps, a);
        st = attention(b, seqs, nseq, a, t, cs, o, isa, err);
    }
    if (st == DSV3_OK)
        st = dsv3_model_residual_ffn(m, &mt->layer, h, t, a, o, isa, err);
    if (st != DSV3_OK || r == 0)
        return st;
    for (int64_t k = 0; k < r; k++) /* only the rows asked go through shared_head.norm and the head */
        dsv3_rmsnorm_f32(h + b->rows[k] * D, 1, D, mt->head_norm.f32, eps, b->g + k * D);
    const dsv3_weight *head = mt->head.data ? &mt->head : c->tie_word_embeddings ? &m->embed : &m->lm_head;
    st = dsv3_linear(b->g, r, head, NULL, logits, isa, err);
    if (st == DSV3_OK && hout)
        memcpy(hout, b->g, (size_t)(r * D) * sizeof(float));
    return st;
}

dsv3_status dsv3_batch_mtp_forward(dsv3_batch_mtp *b, const int64_t *ids, const float *hidden_in,
                                   const dsv3_batch_seq *seqs, int64_t nseq, float *logits, float *hidden_out,
                                   int isa, dsv3_error *err)
{
    int64_t t = 0, max_rows = 0;
    dsv3_status st = check_step(b, ids, hidden_in, seqs, nseq, &t, &max_rows, err);
    if (st != DSV3_OK)
        return st;
    const int64_t r = dsv3_batch_out_rows(seqs, nseq);
    if (r > 0 && !logits)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: %lld logits rows asked but no output buffer", (long long)r);
    const dsv3_model_call scope = dsv3_model_call_begin(b->m);
    st = forward_pinned(b, ids, hidden_in, seqs, nseq, t, max_rows, r, logits, hidden_out, isa, err);
    dsv3_model_call_end(scope);
    if (st == DSV3_OK) /* on failure no length moves (rows past a length are never read) */
        for (int64_t i = 0; i < nseq; i++)
            b->len[seqs[i].slot] += seqs[i].n;
    return st;
}
