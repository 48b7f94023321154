/* The latent cache's storage formats (dsv3_kv_cache.h): the table, the layouts derived from it, and
 * the row encoder / decoders used outside the attention kernels' hot loops. */
#include "dsv3_kv_cache.h"
#include "kv_rows.h"

#include <math.h>
#include <string.h>

const dsv3_kv_format dsv3_kv_formats[DSV3_KV_DTYPE_COUNT] = {
    [DSV3_KV_F32] = {"f32", 4, 0, 4},
    [DSV3_KV_BF16] = {"bf16", 2, 0, 2},
    [DSV3_KV_FP8] = {"fp8", 1, DSV3_KV_FP8_BLOCK, 2},
};

dsv3_kv_layout dsv3_kv_layout_of(dsv3_kv_dtype dtype, int64_t kv_lora, int64_t rope)
{
    const dsv3_kv_format *f = &dsv3_kv_formats[dtype];
    const int64_t scales = f->scale_block ? (kv_lora + f->scale_block - 1) / f->scale_block : 0;
    dsv3_kv_layout g = {dtype, kv_lora, rope, 0, 0, 0};
    g.scale_off = kv_lora * f->latent_bytes;
    g.rope_off = g.scale_off + 4 * scales;
    g.row_bytes = g.rope_off + rope * f->rope_bytes;
    return g;
}

dsv3_status dsv3_kv_dtype_parse(const char *name, dsv3_kv_dtype *out, dsv3_error *err)
{
    for (int t = 0; t < DSV3_KV_DTYPE_COUNT; t++)
        if (name && strcmp(name, dsv3_kv_formats[t].name) == 0) {
            *out = (dsv3_kv_dtype)t;
            return DSV3_OK;
        }
    return dsv3_fail(err, DSV3_E_VALUE, "kv_cache_dtype must be 'f32', 'bf16' or 'fp8', got '%s'",
                     name ? name : "(null)");
}

static void store_fp8_latent(const float *c, int64_t R, uint8_t *row, int64_t scale_off)
{
    for (int64_t b0 = 0; b0 < R; b0 += DSV3_KV_FP8_BLOCK) {
        const int64_t n = R - b0 < DSV3_KV_FP8_BLOCK ? R - b0 : DSV3_KV_FP8_BLOCK;
        float amax = 0.f;
        for (int64_t k = 0; k < n; k++)
            amax = fabsf(c[b0 + k]) > amax ? fabsf(c[b0 + k]) : amax; /* NaN never wins: it is stored as NaN */
        const float scale = amax > 0.f && amax < INFINITY ? amax / DSV3_KV_FP8_MAX : 1.f;
        for (int64_t k = 0; k < n; k++)
            row[b0 + k] = dsv3_f32_to_e4m3(c[b0 + k] / scale);
        memcpy(row + scale_off + (b0 / DSV3_KV_FP8_BLOCK) * 4, &scale, sizeof scale);
    }
}

void dsv3_kv_store_rows(const dsv3_kv_layout *g, const float *src, int64_t n, void *dst)
{
    const int64_t w = g->R + g->P;
    uint8_t *out = dst;
    if (g->dtype == DSV3_KV_F32) {
        memmove(out, src, (size_t)(n * w) * sizeof(float)); /* the projection may already be in place */
        return;
    }
    for (int64_t t = 0; t < n; t++) {
        const float *x = src + t * w;
        uint8_t *row = out + t * g->row_bytes;
        if (g->dtype == DSV3_KV_FP8) {
            store_fp8_latent(x, g->R, row, g->scale_off);
        } else {
            for (int64_t k = 0; k < g->R; k++) {
                const uint16_t h = dsv3_f32_to_bf16(x[k]);
                memcpy(row + 2 * k, &h, 2);
            }
        }
        for (int64_t k = 0; k < g->P; k++) {
            const uint16_t h = dsv3_f32_to_bf16(x[g->R + k]);
            memcpy(row + g->rope_off + 2 * k, &h, 2);
        }
    }
}

void dsv3_kv_decode(const dsv3_kv_layout *g, const void *row, int64_t k0, int64_t cnt, float *out)
{
    if (g->dtype == DSV3_KV_F32 && (k0 >= g->R || k0 + cnt <= g->R)) { /* one part: contiguous floats */
        const int64_t at = k0 < g->R ? 4 * k0 : g->rope_off + 4 * (k0 - g->R);
        memcpy(out, (const uint8_t *)row + at, (size_t)cnt * sizeof(float));
        return;
    }
    for (int64_t k = 0; k < cnt; k++)
        out[k] = dsv3_kv_elem(g, row, k0 + k);
}

void dsv3_kv_decode_latent(const dsv3_kv_layout *g, const void *rows, int64_t n, float *lat)
{
    const uint8_t *r = rows;
    for (int64_t t = 0; t < n; t++)
        if (g->dtype == DSV3_KV_F32)
            memcpy(lat + t * g->R, r + t * g->row_bytes, (size_t)g->R * sizeof(float));
        else
            dsv3_kv_decode(g, r + t * g->row_bytes, 0, g->R, lat + t * g->R);
}
