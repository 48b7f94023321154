/* Element access of a latent cache row (internal to csrc/mla/): the scalar decode every kernel's
 * reference twin uses, and the SIMD twins reproduce (dsv3_kv_cache.h gives the layouts). */
#ifndef DSV3_KV_ROWS_H
#define DSV3_KV_ROWS_H

#include "dsv3_dtypes.h"
#include "dsv3_kv_cache.h"

#include <string.h>

static inline float dsv3_kv_scale_at(const dsv3_kv_layout *g, const uint8_t *row, int64_t k)
{
    float s;
    memcpy(&s, row + g->scale_off + (k / DSV3_KV_FP8_BLOCK) * 4, sizeof s);
    return s;
}

/* Element k (< R + P) of a row as f32. */
static inline float dsv3_kv_elem(const dsv3_kv_layout *g, const uint8_t *row, int64_t k)
{
    uint16_t h;
    float f;
    if (k < g->R) {
        switch (g->dtype) {
        case DSV3_KV_BF16:
            memcpy(&h, row + 2 * k, 2);
            return dsv3_bf16_to_f32(h);
        case DSV3_KV_FP8:
            return dsv3_e4m3_to_f32(row[k]) * dsv3_kv_scale_at(g, row, k);
        default:
            memcpy(&f, row + 4 * k, 4);
            return f;
        }
    }
    if (g->dtype == DSV3_KV_F32) {
        memcpy(&f, row + g->rope_off + 4 * (k - g->R), 4);
        return f;
    }
    memcpy(&h, row + g->rope_off + 2 * (k - g->R), 2);
    return dsv3_bf16_to_f32(h);
}

#endif
