/* The parts of a batched ragged step that the main model's (batch.c) and the MTP layer's (batch_mtp.c)
 * share (batch_step.h). */
#include "model/batch_step.h"
#include "dsv3_ops.h"
#include "model/model_internal.h"

#include <string.h>

dsv3_status dsv3_slot_pool_init(dsv3_slot_pool *p, const dsv3_model *m, int64_t slots, int64_t layers, int64_t cap,
                                const char *what, dsv3_error *err)
{
    memset(p, 0, sizeof *p);
    if (slots < 1 || cap < 1)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: need at least one slot of at least one token (got %lld x %lld)",
                         what, (long long)slots, (long long)cap);
    const dsv3_kv_layout kv = dsv3_model_kv_layout(m);
    size_t n = 0;
    if (!dsv3_mul_size((size_t)slots, (size_t)layers, &n) || !dsv3_mul_size(n, (size_t)cap, &n) ||
        !dsv3_mul_size(n, (size_t)kv.row_bytes, &n))
        return dsv3_fail(err, DSV3_E_VALUE, "%s: %lld slots of %lld tokens overflow the address space", what,
                         (long long)slots, (long long)cap);
    p->cache = dsv3_alloc(n);
    p->len = dsv3_alloc((size_t)slots * sizeof(int64_t));
    if (!p->cache || !p->len) {
        dsv3_slot_pool_free(p);
        return dsv3_fail(err, DSV3_E_NOMEM, "%s: out of memory for the KV cache of %lld slots x %lld tokens "
                         "(%.1f MiB)", what, (long long)slots, (long long)cap, (double)n / (1 << 20));
    }
    memset(p->len, 0, (size_t)slots * sizeof(int64_t));
    p->what = what;
    p->slots = slots;
    p->layers = layers;
    p->cap = cap;
    p->kv = kv;
    return DSV3_OK;
}

void dsv3_slot_pool_free(dsv3_slot_pool *p)
{
    dsv3_free(p->cache);
    dsv3_free(p->len);
    memset(p, 0, sizeof *p);
}

int64_t dsv3_slot_pool_length(const dsv3_slot_pool *p, int64_t slot)
{
    return slot >= 0 && slot < p->slots ? p->len[slot] : -1;
}

uint8_t *dsv3_slot_pool_rows(const dsv3_slot_pool *p, int64_t slot, int64_t layer)
{
    return p->cache + ((slot * p->layers + layer) * p->cap) * p->kv.row_bytes;
}

dsv3_status dsv3_slot_pool_copy_prefix(dsv3_slot_pool *p, int64_t src, int64_t dst, int64_t n, dsv3_error *err)
{
    if (src < 0 || src >= p->slots || dst < 0 || dst >= p->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: slots %lld, %lld: out of range [0, %lld)", p->what, (long long)src,
                         (long long)dst, (long long)p->slots);
    if (n < 0 || n > p->len[src])
        return dsv3_fail(err, DSV3_E_VALUE, "%s: slot %lld holds %lld tokens, cannot copy %lld", p->what,
                         (long long)src, (long long)p->len[src], (long long)n);
    if (src != dst)
        for (int64_t l = 0; l < p->layers; l++)
            memcpy(dsv3_slot_pool_rows(p, dst, l), dsv3_slot_pool_rows(p, src, l), (size_t)(n * p->kv.row_bytes));
    p->len[dst] = n;
    return DSV3_OK;
}

void dsv3_slot_pool_advance(dsv3_slot_pool *p, const dsv3_batch_seq *seqs, int64_t nseq)
{
    for (int64_t i = 0; i < nseq; i++)
        p->len[seqs[i].slot] += seqs[i].n;
}

int64_t dsv3_batch_seq_logits_rows(const dsv3_batch_seq *q)
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

int64_t dsv3_batch_seq_hidden_rows(const dsv3_batch_seq *q)
{
    return q->logits >= DSV3_BATCH_HIDDEN_ALL ? q->n : dsv3_batch_seq_logits_rows(q);
}

int64_t dsv3_batch_out_rows(const dsv3_batch_seq *seqs, int64_t nseq)
{
    int64_t r = 0;
    for (int64_t i = 0; i < nseq; i++)
        r += dsv3_batch_seq_logits_rows(&seqs[i]);
    return r;
}

int64_t dsv3_batch_hidden_rows(const dsv3_batch_seq *seqs, int64_t nseq)
{
    int64_t r = 0;
    for (int64_t i = 0; i < nseq; i++)
        r += dsv3_batch_seq_hidden_rows(&seqs[i]);
    return r;
}

void dsv3_batch_scratch_free(dsv3_batch_scratch *s)
{
    dsv3_free(s->sel);
    dsv3_free(s->segs);
    memset(s, 0, sizeof *s);
}

/* Every argument checked; the step's tokens in *total and the longest sequence after it in *max_rows. */
static dsv3_status check_step(const dsv3_model *m, const dsv3_slot_pool *p, const int64_t *ids,
                              const dsv3_batch_seq *seqs, int64_t nseq, int64_t max_mode, int64_t *total,
                              int64_t *max_rows, dsv3_error *err)
{
    const char *what = p->what;
    if (nseq < 1 || nseq > p->slots)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: a step needs 1..%lld sequences, got %lld", what,
                         (long long)p->slots, (long long)nseq);
    int64_t t = 0, mr = 0;
    for (int64_t i = 0; i < nseq; i++) {
        const dsv3_batch_seq *q = &seqs[i];
        if (q->slot < 0 || q->slot >= p->slots)
            return dsv3_fail(err, DSV3_E_VALUE, "%s: sequence %lld: slot %lld out of range [0, %lld)", what,
                             (long long)i, (long long)q->slot, (long long)p->slots);
        for (int64_t j = 0; j < i; j++)
            if (seqs[j].slot == q->slot)
                return dsv3_fail(err, DSV3_E_VALUE, "%s: slot %lld appears twice in one step", what,
                                 (long long)q->slot);
        if (q->n < 1 || q->n > p->cap - p->len[q->slot])
            return dsv3_fail(err, DSV3_E_VALUE,
                             "%s: sequence %lld (slot %lld): %lld new tokens do not fit (%lld of %lld positions used)",
                             what, (long long)i, (long long)q->slot, (long long)q->n, (long long)p->len[q->slot],
                             (long long)p->cap);
        if (q->logits < DSV3_LOGITS_NONE || q->logits > max_mode)
            return dsv3_fail(err, DSV3_E_VALUE, "%s: sequence %lld: logits mode %lld is not in [0, %lld] (none / "
                             "last / all%s)", what, (long long)i, (long long)q->logits, (long long)max_mode,
                             max_mode > DSV3_LOGITS_ALL ? " / verify / hidden-all with none / last" : "");
        t += q->n;
        mr = p->len[q->slot] + q->n > mr ? p->len[q->slot] + q->n : mr;
    }
    const int64_t V = m->cfg.vocab_size;
    for (int64_t i = 0; i < t; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return dsv3_fail(err, DSV3_E_VALUE, "token id %lld at position %lld is out of range [0, %lld)",
                             (long long)ids[i], (long long)i, (long long)V);
    *total = t;
    *max_rows = mr;
    return DSV3_OK;
}

/* Grows s->sel to r output rows and s->segs to the step's attention segments. */
static dsv3_status reserve_scratch(dsv3_batch_scratch *s, const char *what, int64_t D, const dsv3_batch_seq *seqs,
                                   int64_t nseq, int64_t r, dsv3_error *err)
{
    if (r > s->sel_cap) {
        float *sel = dsv3_alloc((size_t)(r * D) * sizeof(float));
        if (!sel)
            return dsv3_fail(err, DSV3_E_NOMEM, "%s: out of memory for %lld output rows", what, (long long)r);
        dsv3_free(s->sel);
        s->sel = sel;
        s->sel_cap = r;
    }
    int64_t nseg = 0; /* attention segments: one per sequence, one per token of a verification chunk */
    for (int64_t i = 0; i < nseq; i++)
        nseg += seqs[i].logits == DSV3_BATCH_VERIFY ? seqs[i].n : 1;
    if (nseg > s->segs_cap) {
        dsv3_mla_seg *segs = dsv3_alloc((size_t)nseg * sizeof *segs);
        if (!segs)
            return dsv3_fail(err, DSV3_E_NOMEM, "%s: out of memory for %lld attention segments", what,
                             (long long)nseg);
        dsv3_free(s->segs);
        s->segs = segs;
        s->segs_cap = nseg;
    }
    return DSV3_OK;
}

dsv3_status dsv3_batch_step_begin(dsv3_model *m, const dsv3_slot_pool *p, dsv3_batch_scratch *s, const int64_t *ids,
                                  const dsv3_batch_seq *seqs, int64_t nseq, int64_t max_mode, const float *logits,
                                  int64_t *total, const float **cs_out, dsv3_error *err)
{
    int64_t t = 0, max_rows = 0;
    dsv3_status st = check_step(m, p, ids, seqs, nseq, max_mode, &t, &max_rows, err);
    if (st != DSV3_OK)
        return st;
    const int64_t r = dsv3_batch_out_rows(seqs, nseq);
    if (r > 0 && !logits)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: %lld logits rows asked but no output buffer", p->what, (long long)r);
    st = dsv3_model_reserve(m, t, max_rows, err); /* the model's workspace, grown once for this step */
    if (st == DSV3_OK)
        st = reserve_scratch(s, p->what, m->cfg.hidden_size, seqs, nseq, r, err);
    m->ws.lin.used = 0;
    if (st != DSV3_OK)
        return st;
    const int64_t half = m->cfg.qk_rope_head_dim / 2; /* cos | sin [t, half], then the positions */
    float *cs = m->ws.rope;
    int64_t *pos = (int64_t *)(void *)(cs + 2 * t * half);
    for (int64_t i = 0, k = 0; i < nseq; i++)
        for (int64_t j = 0; j < seqs[i].n; j++)
            pos[k++] = p->len[seqs[i].slot] + j;
    dsv3_rope_cos_sin(pos, t, m->inv_freq, half, m->cfg.rope_attention_scaling, cs, cs + t * half);
    *total = t;
    *cs_out = cs;
    return DSV3_OK;
}

dsv3_status dsv3_batch_attention(dsv3_model *m, const dsv3_mla_weights *w, const dsv3_slot_pool *p, int64_t layer,
                                 dsv3_batch_index *index, dsv3_batch_scratch *s, const dsv3_batch_seq *seqs,
                                 int64_t nseq, const float *x, int64_t t, const float *cs, float *out, int isa,
                                 dsv3_error *err)
{
    const dsv3_mla_dims *d = &m->mla;
    dsv3_mla_scratch *ws = &m->ws.mla;
    const int64_t half = d->rope / 2, row = d->kv_lora + d->rope, rb = p->kv.row_bytes;
    const float *cos_j = cs, *sin_j = cs + t * half;
    if (m->attn_mode == DSV3_ATTN_ABSORBED && !w->w_uv)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: absorbed mode needs the W_UV views (dsv3_mla_absorb)");
    dsv3_status st = dsv3_mla_project_q(d, w, x, t, cos_j, sin_j, ws->q, ws->qa, isa, err);
    float *ckv = m->ws.cache; /* [t, row]: kv_a_proj of every token, then stored in each slot's cache */
    if (st == DSV3_OK)
        st = dsv3_linear(x, t, &w->kv_a_proj, d->attention_bias ? w->kv_a_bias.f32 : NULL, ckv, isa, err);
    int64_t nseg = 0;
    for (int64_t i = 0, off = 0; i < nseq && st == DSV3_OK; off += seqs[i].n, i++) {
        const int64_t n = seqs[i].n, past = p->len[seqs[i].slot];
        uint8_t *cache = dsv3_slot_pool_rows(p, seqs[i].slot, layer);
        dsv3_mla_finish_latent(d, w, ckv + off * row, n, cos_j + off * half, sin_j + off * half);
        dsv3_kv_store_rows(&p->kv, ckv + off * row, n, cache + past * rb); /* in the cache's dtype */
        if (seqs[i].logits == DSV3_BATCH_VERIFY && !index) /* token j attends rows [0, past + j] as a decode
                                                              * step (V3.2 splits its chunks itself) */
            for (int64_t j = 0; j < n; j++)
                s->segs[nseg++] = (dsv3_mla_seg){cache, past + j, 1, off + j};
        else
            s->segs[nseg++] = (dsv3_mla_seg){cache, past, n, off};
    }
    /* each sequence in the form it would take alone; the absorbed ones (decode) in one call that reads
     * W_UK / W_UV once for all of them */
    if (st == DSV3_OK && index) /* V3.2: dense or over the rows each query's indexer selects */
        st = dsv3_batch_index_attend(index, m, layer, seqs, s->segs, nseq, x, t, cs, isa, err);
    else if (st == DSV3_OK)
        st = dsv3_mla_attend_many(d, w, m->attn_mode, ws->q, s->segs, nseg, ws->attn, ws, isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(ws->attn, t, &w->o_proj, d->attention_bias ? w->o_bias.f32 : NULL, out, isa, err);
    return st;
}

/* The norm of each sequence's last rows(seq) tokens of h [t, D] into out, in order. */
static void norm_rows(const dsv3_model *m, const dsv3_batch_seq *seqs, int64_t nseq, const float *h,
                      const float *norm_w, int64_t (*rows)(const dsv3_batch_seq *), float *out)
{
    const int64_t D = m->cfg.hidden_size;
    for (int64_t i = 0, off = 0, k = 0; i < nseq; off += seqs[i].n, i++) {
        const int64_t c = rows(&seqs[i]);
        dsv3_rmsnorm_f32(h + (off + seqs[i].n - c) * D, c, D, norm_w, m->cfg.rms_norm_eps, out + k * D);
        k += c;
    }
}

dsv3_status dsv3_batch_step_outputs(dsv3_model *m, dsv3_batch_scratch *s, const dsv3_batch_seq *seqs, int64_t nseq,
                                    const float *h, const float *norm_w, const dsv3_weight *head, float *logits,
                                    float *hidden, int isa, dsv3_error *err)
{
    const int64_t r = dsv3_batch_out_rows(seqs, nseq);
    if (hidden)
        norm_rows(m, seqs, nseq, h, norm_w, dsv3_batch_seq_hidden_rows, hidden);
    if (r == 0)
        return DSV3_OK;
    norm_rows(m, seqs, nseq, h, norm_w, dsv3_batch_seq_logits_rows, s->sel); /* only these rows reach the head */
    return dsv3_linear(s->sel, r, head, NULL, logits, isa, err);
}
