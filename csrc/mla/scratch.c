/* The attention scratch (dsv3_mla_scratch): one block carved into named buffers, grown on demand. */
#include "dsv3_linear_plan.h"
#include "mla_internal.h"

#include <string.h>

/* Floats of each buffer of a scratch for (tokens, rows, threads, mode), in the struct's order. */
enum { BUF_Q, BUF_QA, BUF_ATTN, BUF_QC, BUF_LAT, BUF_PROBS, BUF_KV, BUF_PART, BUF_EX, BUF_FSTATE, BUF_FTHR,
       BUF_FRESH, BUF_UVY, BUF_UVPLAN, BUF_UVARENA, BUF_COUNT };

size_t dsv3_mla_uv_arena_bytes(const dsv3_mla_dims *d, int64_t m)
{
    return (size_t)d->heads * (dsv3_linear_bound_bytes(d->kv_lora, m) + 256); /* + per-plan alignment slack */
}

static void buffer_sizes(const dsv3_mla_dims *d, dsv3_attn_mode mode, int64_t tokens, int64_t rows, int threads,
                         int64_t n[BUF_COUNT])
{
    const int64_t H = d->heads, R = d->kv_lora;
    memset(n, 0, BUF_COUNT * sizeof n[0]);
    n[BUF_Q] = tokens * H * (d->nope + d->rope);
    n[BUF_QA] = tokens * d->q_lora;
    n[BUF_ATTN] = tokens * H * d->v;
    n[BUF_FRESH] = tokens * (R + d->rope); /* small; kept for every cache dtype so a reserve never depends on it */
    if (mode == DSV3_ATTN_NAIVE) {
        n[BUF_LAT] = rows * R;
        n[BUF_PROBS] = (int64_t)threads * rows;
        n[BUF_KV] = rows * H * (d->nope + d->v);
        return;
    }
    /* block rows grow with T only past nb_max blocks of KV_BLOCK rows: the largest is at T = rows */
    const int64_t bl = dsv3_mla_block_rows(d, rows) > DSV3_MLA_KV_BLOCK ? dsv3_mla_block_rows(d, rows)
                                                                       : DSV3_MLA_KV_BLOCK;
    n[BUF_QC] = tokens * H * (R + d->rope);
    n[BUF_LAT] = tokens * H * R;
    n[BUF_PROBS] = (int64_t)threads * DSV3_MLA_HEAD_GROUP * bl;
    n[BUF_PART] = dsv3_mla_part_tokens(d, tokens) * H * dsv3_mla_nb_max(d) * (R + 2);
    const int64_t uvt = tokens < DSV3_MLA_UV_TOKENS ? tokens : DSV3_MLA_UV_TOKENS;
    n[BUF_UVY] = uvt * H * d->v;
    n[BUF_UVPLAN] = dsv3_mla_ceil_div(H * (int64_t)sizeof(dsv3_lin_plan), (int64_t)sizeof(float));
    n[BUF_UVARENA] = dsv3_mla_ceil_div((int64_t)dsv3_mla_uv_arena_bytes(d, uvt), (int64_t)sizeof(float));
    if (tokens > 1) {
        const int64_t c = dsv3_mla_flash_chunk(d);
        n[BUF_EX] = c * (R + H * (d->nope + d->v) + H * (d->nope + d->rope) + H * d->v);
        n[BUF_FSTATE] = tokens * H * 2;
        n[BUF_FTHR] = (int64_t)threads * DSV3_MLA_FLASH_Q * (DSV3_MLA_FLASH_KV + d->v);
    }
}

dsv3_status dsv3_mla_scratch_reserve(dsv3_mla_scratch *ws, const dsv3_mla_dims *d, dsv3_attn_mode mode,
                                     int64_t tokens, int64_t rows, dsv3_error *err)
{
    const int threads = dsv3_num_threads();
    if (ws->block && ws->mode == mode && tokens <= ws->tokens && rows <= ws->rows && threads <= ws->threads)
        return DSV3_OK;
    if (ws->block && ws->mode == mode) { /* grow every dimension to cover both the old and new needs */
        tokens = tokens > ws->tokens ? tokens : ws->tokens;
        rows = rows > ws->rows ? rows : ws->rows;
    }
    const int keep_threads = ws->block && ws->mode == mode && ws->threads > threads;
    const int nt = keep_threads ? ws->threads : threads;
    int64_t n[BUF_COUNT], bytes[BUF_COUNT];
    buffer_sizes(d, mode, tokens, rows, nt, n);
    for (int i = 0; i < BUF_COUNT; i++)
        bytes[i] = n[i] <= INT64_MAX / (int64_t)sizeof(float) ? n[i] * (int64_t)sizeof(float) : -1;
    void *at[BUF_COUNT];
    float *block = dsv3_alloc_carved(bytes, BUF_COUNT, at);
    if (!block)
        return dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory for the scratch of %lld tokens over %lld "
                         "cached rows", (long long)tokens, (long long)rows);
    dsv3_free(ws->block);
    float **bufs[BUF_COUNT] = {&ws->q,    &ws->qa,   &ws->attn, &ws->qc,     &ws->lat, &ws->probs,
                               &ws->kv,   &ws->part, &ws->ex,   &ws->fstate, &ws->fthr, &ws->fresh,
                               &ws->uvy,  &ws->uvplan, &ws->uvarena};
    for (int i = 0; i < BUF_COUNT; i++)
        *bufs[i] = n[i] > 0 ? at[i] : NULL;
    ws->uvarena_bytes = (size_t)n[BUF_UVARENA] * sizeof(float);
    ws->block = block;
    ws->tokens = tokens;
    ws->rows = rows;
    ws->threads = nt;
    ws->mode = mode;
    return DSV3_OK;
}

void dsv3_mla_scratch_free(dsv3_mla_scratch *ws)
{
    dsv3_free(ws->block);
    memset(ws, 0, sizeof *ws);
}
