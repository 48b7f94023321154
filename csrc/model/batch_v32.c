/* DeepSeek-V3.2 sparse attention in the batched engine (batch_v32.h): each slot's index-key cache, and
 * the attention core of a step as dsv3_mla_forward_indexed (csrc/mla/sparse.c) computes each token alone.
 *
 * The index keys and queries of all the step's tokens come from one linear call each (rows computed
 * independently: dsv3_batch.h's contract); each sequence's keys go to its own slot. A sequence's queries
 * that see at most index_topk rows attend densely over its latent cache (one segment), every other query
 * scores its own slot's keys, keeps its top-k rows by the indexer's tie rule and attends to them gathered
 * (in the cache's row layout) as one token over that many rows. All these segments, dense and sparse, go
 * through dsv3_mla_attend_many, which gives each the form dsv3_mla_attend gives it alone and runs the
 * absorbed ones together (W_UK / W_UV read once for many sequences). Sparse queries are gathered in
 * groups that bound the gather buffer; the selections of a group run one query per thread in a fixed
 * order, so nothing depends on the thread count or on the other sequences. */
#include "batch_v32.h"
#include "model/model_internal.h"

#include <omp.h>
#include <string.h>

#define GATHER_BUDGET ((int64_t)32 << 20) /* bytes of gathered latent rows per group of sparse queries */
#define GROUP_MAX 64                       /* sparse queries per group at most */

struct dsv3_batch_index {
    dsv3_indexer_dims ix;
    const dsv3_layer *ly; /* borrowed: [layers] the layers whose index keys these are */
    int64_t slots, layers, cap;
    int64_t key_row;      /* floats per cached index key (dsv3_indexer_key_row) */
    int64_t row_bytes;    /* bytes per latent cache row (the gathered rows keep that layout) */
    int64_t kmax;         /* rows one query can select: min(index_topk, cap) */
    int64_t group;        /* sparse queries per group */
    float *keys;          /* owned: [slots, layers, cap, key_row] */
    uint8_t *gather;      /* owned: [group, kmax] latent rows */
    int64_t *sel;         /* owned: [group, kmax] selected rows, ascending */
    int64_t *counts;      /* owned: [group] rows selected */
    int64_t *qrow;        /* owned: [group] the query's index among the step's tokens */
    int64_t *qT;          /* owned: [group] rows the query sees (its position + 1) */
    const float **qkeys;  /* owned: [group] its slot's index keys of the layer */
    const uint8_t **qlat; /* owned: [group] its slot's latent cache of the layer */
    dsv3_mla_seg *segs;   /* owned: [segs_cap] the attention core's segments (dense parts, then a group) */
    int64_t segs_cap;
};

int64_t dsv3_batch_token_bytes(const dsv3_model *m, int with_mtp)
{
    const int64_t keys = m->index.topk > 0 ? dsv3_indexer_key_row(&m->index) * (int64_t)sizeof(float) : 0;
    return (dsv3_model_kv_layout(m).row_bytes + keys) * (m->cfg.num_hidden_layers + (with_mtp && m->mtp ? 1 : 0));
}

dsv3_status dsv3_batch_index_create(const dsv3_model *m, const dsv3_layer *layers, int64_t nlayers, int64_t slots,
                                    int64_t cap, dsv3_batch_index **out, dsv3_error *err)
{
    *out = NULL;
    if (m->index.topk <= 0)
        return DSV3_OK;
    const int64_t kr = dsv3_indexer_key_row(&m->index), L = nlayers;
    const int64_t row_bytes = dsv3_model_kv_layout(m).row_bytes;
    const int64_t kmax = m->index.topk < cap ? m->index.topk : cap;
    int64_t group = GATHER_BUDGET / (kmax * row_bytes);
    group = group < 1 ? 1 : group > GROUP_MAX ? GROUP_MAX : group;
    size_t n = 0;
    if (!dsv3_mul_size((size_t)slots, (size_t)L, &n) || !dsv3_mul_size(n, (size_t)cap, &n) ||
        !dsv3_mul_size(n, (size_t)kr * sizeof(float), &n))
        return dsv3_fail(err, DSV3_E_VALUE, "batch: the index-key caches of %lld slots of %lld tokens overflow the "
                         "address space", (long long)slots, (long long)cap);
    dsv3_batch_index *x = dsv3_alloc(sizeof *x);
    if (!x)
        return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory");
    memset(x, 0, sizeof *x);
    x->ix = m->index;
    x->ly = layers;
    x->slots = slots;
    x->layers = L;
    x->cap = cap;
    x->key_row = kr;
    x->row_bytes = row_bytes;
    x->kmax = kmax;
    x->group = group;
    x->keys = dsv3_alloc(n);
    x->gather = dsv3_alloc((size_t)(group * kmax * row_bytes));
    x->sel = dsv3_alloc((size_t)(group * kmax) * sizeof(int64_t));
    x->counts = dsv3_alloc((size_t)group * sizeof(int64_t));
    x->qrow = dsv3_alloc((size_t)group * sizeof(int64_t));
    x->qT = dsv3_alloc((size_t)group * sizeof(int64_t));
    x->qkeys = dsv3_alloc((size_t)group * sizeof(*x->qkeys));
    x->qlat = dsv3_alloc((size_t)group * sizeof(*x->qlat));
    x->segs_cap = slots + group;
    x->segs = dsv3_alloc((size_t)x->segs_cap * sizeof(dsv3_mla_seg));
    if (!x->keys || !x->gather || !x->sel || !x->counts || !x->qrow || !x->qT || !x->qkeys || !x->qlat || !x->segs) {
        dsv3_batch_index_free(x);
        return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory for the index-key caches of %lld slots x %lld "
                         "tokens (%.1f MiB)", (long long)slots, (long long)cap, (double)n / (1 << 20));
    }
    *out = x;
    return DSV3_OK;
}

void dsv3_batch_index_free(dsv3_batch_index *x)
{
    if (!x)
        return;
    dsv3_free(x->keys);
    dsv3_free(x->gather);
    dsv3_free(x->sel);
    dsv3_free(x->counts);
    dsv3_free(x->qrow);
    dsv3_free(x->qT);
    dsv3_free((void *)x->qkeys);
    dsv3_free((void *)x->qlat);
    dsv3_free(x->segs);
    dsv3_free(x);
}

static float *slot_keys(const dsv3_batch_index *x, int64_t slot, int64_t layer)
{
    return x->keys + ((slot * x->layers + layer) * x->cap) * x->key_row;
}

void dsv3_batch_index_copy(dsv3_batch_index *x, int64_t src, int64_t dst, int64_t n)
{
    if (!x || src == dst || n <= 0)
        return;
    for (int64_t l = 0; l < x->layers; l++)
        memcpy(slot_keys(x, dst, l), slot_keys(x, src, l), (size_t)(n * x->key_row) * sizeof(float));
}

/* The g sparse queries listed in x (qrow, qT, qkeys, qlat) select and gather their rows, one query per
 * thread as sparse.c's select_chunk; then the attention core runs segs [0, ns) (dense parts) and one
 * segment per sparse query (one token over its gathered rows). */
static dsv3_status run_group(dsv3_batch_index *x, dsv3_model *m, int64_t l, int64_t g, int64_t ns, int isa,
                             dsv3_error *err)
{
    const dsv3_indexer_dims *ix = &x->ix;
    dsv3_indexer_scratch *is = &m->ws.index;
    dsv3_mla_scratch *ws = &m->ws.mla;
    const int64_t H = ix->heads, hd = ix->head_dim, kmax = x->kmax, rb = x->row_bytes;
    const int nt = dsv3_num_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t j = 0; j < g; j++) {
        const int me = omp_get_thread_num();
        float *score = is->score + (int64_t)me * is->rows;
        const int64_t i = x->qrow[j];
        dsv3_indexer_scores(ix, is->q + i * H * hd, is->w + i * H, x->qkeys[j], x->qT[j], score,
                            is->kblk + (int64_t)me * DSV3_INDEXER_SCORE_BLOCK * hd);
        const int64_t *sel = x->sel + j * kmax;
        const int64_t c = dsv3_indexer_select(score, x->qT[j], ix->topk, x->sel + j * kmax,
                                              is->order + (int64_t)me * is->rows);
        x->counts[j] = c;
        uint8_t *dst = x->gather + j * kmax * rb;
        for (int64_t r = 0; r < c; r++)
            memcpy(dst + r * rb, x->qlat[j] + sel[r] * rb, (size_t)rb);
    }
    for (int64_t j = 0; j < g; j++)
        x->segs[ns + j] = (dsv3_mla_seg){x->gather + j * kmax * rb, x->counts[j] - 1, 1, x->qrow[j]};
    return dsv3_mla_attend_many(&m->mla, &x->ly[l].attn, m->attn_mode, ws->q, x->segs, ns + g, ws->attn, ws,
                                isa, err);
}

dsv3_status dsv3_batch_index_attend(dsv3_batch_index *x, dsv3_model *m, int64_t l, const dsv3_batch_seq *seqs,
                                    const dsv3_mla_seg *segs, int64_t nseq, const float *xin, int64_t t,
                                    const float *cs, int isa, dsv3_error *err)
{
    const dsv3_mla_dims *d = &m->mla;
    const dsv3_indexer_weights *iw = &x->ly[l].indexer;
    const dsv3_indexer_dims *ix = &x->ix;
    dsv3_indexer_scratch *is = &m->ws.index;
    dsv3_mla_scratch *ws = &m->ws.mla;
    const int64_t half = d->rope / 2, kr = x->key_row, topk = ix->topk;
    const float *cos_j = cs, *sin_j = cs + t * half;
    /* index keys of every token (is->keys [t, key_row]), then into each sequence's slot */
    dsv3_status st = dsv3_indexer_keys(d, ix, iw, xin, t, cos_j, sin_j, is->keys, is->kf, isa, err);
    if (st != DSV3_OK)
        return st;
    int any_sparse = 0;
    for (int64_t i = 0; i < nseq; i++) {
        const dsv3_mla_seg *g = &segs[i];
        memcpy(slot_keys(x, seqs[i].slot, l) + g->past * kr, is->keys + g->off * kr,
               (size_t)(g->n * kr) * sizeof(float));
        any_sparse |= topk - g->past < g->n; /* a query past index_topk rows */
    }
    if (any_sparse)
        st = dsv3_indexer_queries(d, ix, iw, ws->qa, xin, t, cos_j, sin_j, is->q, is->w, isa, err);
    /* the dense parts: queries [0, n_dense) of a sequence see at most topk rows; a verification chunk's
     * each as its decode step (one segment per token) */
    int64_t need = x->group;
    for (int64_t i = 0; i < nseq; i++)
        need += seqs[i].logits == DSV3_BATCH_VERIFY ? seqs[i].n : 1;
    if (st == DSV3_OK && need > x->segs_cap) {
        dsv3_mla_seg *grown = dsv3_alloc((size_t)need * sizeof *grown);
        if (!grown)
            return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory for %lld attention segments", (long long)need);
        dsv3_free(x->segs);
        x->segs = grown;
        x->segs_cap = need;
    }
    int64_t ns = 0, g = 0;
    for (int64_t i = 0; i < nseq; i++) {
        const dsv3_mla_seg *q = &segs[i];
        const int64_t n_dense = topk - q->past >= q->n ? q->n : topk - q->past > 0 ? topk - q->past : 0;
        if (seqs[i].logits == DSV3_BATCH_VERIFY)
            for (int64_t j = 0; j < n_dense; j++)
                x->segs[ns++] = (dsv3_mla_seg){q->cache, q->past + j, 1, q->off + j};
        else if (n_dense > 0)
            x->segs[ns++] = (dsv3_mla_seg){q->cache, q->past, n_dense, q->off};
    }
    /* the sparse queries, group by group (the dense segments join the first call) */
    for (int64_t i = 0; i < nseq && st == DSV3_OK; i++) {
        const dsv3_mla_seg *q = &segs[i];
        const int64_t first = topk - q->past > 0 ? topk - q->past : 0;
        for (int64_t j = first; j < q->n && st == DSV3_OK; j++) {
            x->qrow[g] = q->off + j;
            x->qT[g] = q->past + j + 1;
            x->qkeys[g] = slot_keys(x, seqs[i].slot, l);
            x->qlat[g] = q->cache;
            if (++g == x->group) {
                st = run_group(x, m, l, g, ns, isa, err);
                ns = g = 0;
            }
        }
    }
    if (st == DSV3_OK && (g > 0 || ns > 0))
        st = run_group(x, m, l, g, ns, isa, err);
    return st;
}
