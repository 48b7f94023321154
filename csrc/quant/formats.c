/* The format table: one row of traits per weight format (see dsv3_quant.h), the scalar reference
 * decode every kernel is tested against, and the shape rules of the stored arrays. */
#include "dsv3_quant.h"

#include <string.h>

#include "dsv3_dtypes.h"
#include "linear/act_q8.h"
#include "linear/dot_fp.h"
#include "linear/int4p.h"
#include "linear/lin_kernels.h"

/* ---- scalar reference decode: unscaled code values ---- */
static void code_row_f32(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out)
{
    memcpy(out, (const float *)w->data + n * w->k + k0, (size_t)len * sizeof(float));
}

static void code_row_bf16(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out)
{
    const uint16_t *r = (const uint16_t *)w->data + n * w->k + k0;
    for (int64_t i = 0; i < len; i++)
        out[i] = dsv3_bf16_to_f32(r[i]);
}

static void code_row_fp8(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out)
{
    const uint8_t *r = (const uint8_t *)w->data + n * w->k + k0;
    for (int64_t i = 0; i < len; i++)
        out[i] = dsv3_e4m3_to_f32(r[i]);
}

static uint8_t nibble_at(const dsv3_weight *w, int64_t n, int64_t k)
{
    const uint8_t b = ((const uint8_t *)w->data)[n * (w->k / 2) + k / 2];
    return (k & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 15u);
}

static void code_row_nvfp4(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out)
{
    for (int64_t i = 0; i < len; i++)
        out[i] = dsv3_e2m1_to_f32(nibble_at(w, n, k0 + i));
}

static void code_row_int8(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out)
{
    const int8_t *r = (const int8_t *)w->data + n * w->k + k0;
    for (int64_t i = 0; i < len; i++)
        out[i] = (float)r[i];
}

static void code_row_int4(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out)
{
    if (w->packed) { /* the packed layout (int4p.h) once a weight has it */
        for (int64_t i = 0; i < len; i++)
            out[i] = (float)int4p_code(w, n, k0 + i);
        return;
    }
    for (int64_t i = 0; i < len; i++) {
        const int v = nibble_at(w, n, k0 + i);
        out[i] = (float)(v >= 8 ? v - 16 : v);
    }
}

/* ---- group scales ---- */
static float scale_one(const dsv3_weight *w, int64_t n, int64_t g)
{
    (void)w; (void)n; (void)g;
    return 1.0f;
}

static float scale_fp8(const dsv3_weight *w, int64_t n, int64_t g)
{
    return ((const float *)w->scale)[(n / 128) * ((w->k + 127) / 128) + g];
}

static float scale_nvfp4(const dsv3_weight *w, int64_t n, int64_t g)
{
    return dsv3_e4m3_to_f32(((const uint8_t *)w->scale)[n * (w->k / 16) + g]) * w->scale2;
}

static float scale_int8(const dsv3_weight *w, int64_t n, int64_t g)
{
    (void)g;
    return ((const float *)w->scale)[n];
}

static float scale_int4(const dsv3_weight *w, int64_t n, int64_t g)
{
    if (w->packed)
        return int4p_scale(w, n, g);
    return ((const float *)w->scale)[n * ((w->k + w->group - 1) / w->group) + g];
}

#define KERNELS(kind, f) {dsv3_##kind##_##f##_scalar, dsv3_##kind##_##f##_avx2, dsv3_##kind##_##f##_avx512}
#define NO_KERNELS {NULL, NULL, NULL}
/* fast mode, x rounded once to bf16: AVX-512 only (on AVX2 the f32 kernels stay: no bf16 dot there) */
#define FAST_BF16HI(f) .fast = {dsv3_fast_bf16hi_scalar, NULL, dsv3_gemv_##f##_dot1_avx512}, \
                       .fast_x = {DSV3_X_F32, DSV3_X_F32, DSV3_X_BF16_HI}
#define FAST_Q8(f, avx2_x, avx512_x) .fast = KERNELS(q8, f), .fast_x = {DSV3_X_Q8, avx2_x, avx512_x}

const dsv3_format_traits dsv3_formats[DSV3_FMT_COUNT] = {
    [DSV3_FMT_F32] = {"f32", 32, 0, 0, DSV3_SCALE_NONE, 0, code_row_f32, scale_one,
                      /* no GEMM on any ISA: f32 weights (parity work) keep one kernel for every M, so a
                       * sequence's results never depend on how many rows share the call (batched engine) */
                      KERNELS(gemv, f32), NO_KERNELS, NO_KERNELS},
    [DSV3_FMT_BF16] = {"bf16", 16, 0, 0, DSV3_SCALE_NONE, 0, code_row_bf16, scale_one,
                       {dsv3_gemv_bf16_scalar, dsv3_gemv_bf16_avx2, dsv3_gemv_bf16_dot_avx512},
                       {NULL, dsv3_gemm_bf16_avx2, dsv3_gemm_bf16_avx512}, NO_KERNELS, {0, 0, DSV3_X_BF16X2},
                       FAST_BF16HI(bf16)},
    [DSV3_FMT_FP8_BLOCK] = {"fp8_block", 8, 128, 128, DSV3_SCALE_F32, 0, code_row_fp8, scale_fp8,
                            {dsv3_gemv_fp8_block_scalar, dsv3_gemv_fp8_block_avx2, dsv3_gemv_fp8_block_dot_avx512},
                            {NULL, dsv3_gemm_fp8_block_avx2, dsv3_gemm_fp8_block_avx512},
                            /* same kernels, activation scales in xs */
                            {dsv3_gemv_fp8_block_scalar, dsv3_gemv_fp8_block_avx2, dsv3_gemv_fp8_block_dot_avx512},
                            {0, 0, DSV3_X_BF16X2_P64},
                            /* fast: x rounded to bf16; AVX2 (no bf16 dot) converts it back to f32 in the order
                             * of its cheaper e4m3 decoder (dot_fp.h; the plan prepares it as f32, DSV3_X_F32_P32,
                             * up to K = 4096); AVX-512 decodes e4m3 to bf16 by shifts for vdpbf16ps against x hi
                             * in even / odd column order (act_q8.h, dot_fp8_avx512.c) */
                            .fast = {dsv3_fast_bf16hi_scalar, dsv3_fast_fp8_block_avx2, dsv3_fast_fp8_block_avx512},
                            .fast_x = {DSV3_X_F32, DSV3_X_BF16_P32, DSV3_X_BF16X2_N128}},
    [DSV3_FMT_NVFP4] = {"nvfp4", 4, 1, 16, DSV3_SCALE_E4M3, 1, code_row_nvfp4, scale_nvfp4,
                        {dsv3_gemv_nvfp4_scalar, dsv3_gemv_nvfp4_avx2, dsv3_gemv_nvfp4_dot_avx512},
                        {NULL, dsv3_gemm_nvfp4_avx2, dsv3_gemm_nvfp4_avx512}, NO_KERNELS, {0, 0, DSV3_X_BF16X2_N128},
                        /* fast: Q8 activations, integer dots with the doubled e2m1 codes (dot_fp.h) */
                        FAST_Q8(nvfp4, DSV3_X_Q8_EO64C, DSV3_X_Q8_EO128)},
    [DSV3_FMT_INT8] = {"int8", 8, 1, -1, DSV3_SCALE_F32, 0, code_row_int8, scale_int8,
                       {dsv3_gemv_int8_scalar, dsv3_gemv_int8_avx2, dsv3_gemv_int8_dot_avx512},
                       {NULL, dsv3_gemm_int8_avx2, dsv3_gemm_int8_avx512}, KERNELS(dyn, int8), {0, 0, DSV3_X_BF16X2_P64},
                       FAST_Q8(int8, DSV3_X_Q8, DSV3_X_Q8_L4)},
    [DSV3_FMT_INT4] = {"int4", 4, 1, -2, DSV3_SCALE_F32, 0, code_row_int4, scale_int4,
                       {dsv3_gemv_int4_scalar, dsv3_gemv_int4_avx2, dsv3_gemv_int4_dot_avx512},
                       {NULL, dsv3_gemm_int4_avx2, dsv3_gemm_int4_avx512}, NO_KERNELS, {0, 0, DSV3_X_BF16X2_N128},
                       FAST_Q8(int4, DSV3_X_Q8_EO64, DSV3_X_Q8_EO128), .fast_gemm = {NULL, dsv3_gemm_q8_int4_avx2, NULL},
                       /* packed at load in the fast mode: 16 rows interleaved (int4p.h) */
                       .packed_bytes = dsv3_int4_packed_bytes, .pack_team = dsv3_int4_pack_team,
                       .packed_fast = KERNELS(q8, int4p), .packed_x = DSV3_X_Q8_O8, .packed_rows = DSV3_INT4P_ROWS,
                       .unpack_team = dsv3_int4_unpack_team},
};

dsv3_status dsv3_format_parse(const char *name, dsv3_format *out, dsv3_error *err)
{
    for (int f = 0; f < DSV3_FMT_COUNT; f++)
        if (name && strcmp(name, dsv3_formats[f].name) == 0) {
            *out = (dsv3_format)f;
            return DSV3_OK;
        }
    return dsv3_fail(err, DSV3_E_VALUE,
                     "unknown weight format '%s' (expected f32, bf16, fp8_block, nvfp4, int8 or int4)",
                     name ? name : "(null)");
}

int64_t dsv3_weight_kgroup(const dsv3_weight *w)
{
    const int bk = dsv3_formats[w->fmt].block_k;
    return bk > 0 ? bk : (bk == -2 ? w->group : w->k);
}

dsv3_status dsv3_quant_layout(dsv3_format fmt, int64_t n, int64_t k, int group, size_t *data_bytes,
                              int64_t *scale_rows, int64_t *scale_cols, dsv3_error *err)
{
    if ((int)fmt < 0 || fmt >= DSV3_FMT_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "unknown weight format %d", (int)fmt);
    const dsv3_format_traits *t = &dsv3_formats[fmt];
    if (n <= 0 || k <= 0 || n > ((int64_t)1 << 40) / k)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: bad weight shape [%lld, %lld]", t->name, (long long)n,
                         (long long)k);
    if (t->code_bits == 4 && k % 2)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: K must be even (two codes per byte), got %lld", t->name,
                         (long long)k);
    if (fmt == DSV3_FMT_NVFP4 && k % 16)
        return dsv3_fail(err, DSV3_E_VALUE, "nvfp4: K must be a multiple of 16, got %lld", (long long)k);
    if (t->block_k == -2 && group != 32 && group != 128)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: group must be 32 or 128, got %d", t->name, group);
    *data_bytes = (size_t)(n * k * t->code_bits / 8);
    *scale_rows = *scale_cols = 0;
    if (t->scale_kind != DSV3_SCALE_NONE) {
        const int64_t g = t->block_k > 0 ? t->block_k : (t->block_k == -2 ? group : k);
        *scale_rows = t->block_n > 1 ? (n + t->block_n - 1) / t->block_n : n;
        *scale_cols = t->block_k == -1 ? 1 : (k + g - 1) / g;
    }
    return DSV3_OK;
}

size_t dsv3_weight_packed_bytes(const dsv3_weight *w)
{
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    return t->packed_bytes ? t->packed_bytes(w->n, w->k, w->group) : 0;
}

dsv3_status dsv3_weight_pack(const dsv3_weight *w, void *buf, int isa, dsv3_error *err)
{
    const dsv3_weight src = {.fmt = w->fmt, .n = w->n, .k = w->k, .data = w->data, .scale = w->scale,
                             .scale2 = w->scale2, .group = w->group, .ue8m0 = w->ue8m0}; /* the stored layout */
    dsv3_status st = dsv3_weight_validate(&src, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    if (!t->pack_team)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weights have no packed layout", t->name);
    if (!buf)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: no buffer to pack into", t->name);
    dsv3_isa id;
    if ((st = dsv3_isa_resolve(isa, &id, err)) != DSV3_OK)
        return st;
#pragma omp parallel num_threads(dsv3_num_threads())
    t->pack_team(&src, buf, id);
    return DSV3_OK;
}

dsv3_status dsv3_weight_unpack(const dsv3_weight *w, void *data, void *scale, dsv3_error *err)
{
    dsv3_status st = dsv3_weight_validate(w, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    if (!t->unpack_team)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weights have no packed layout", t->name);
    if (!w->packed)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weight: no packed layout to unpack", t->name);
    if (!data || !scale)
        return dsv3_fail(err, DSV3_E_VALUE, "%s: no buffers to unpack into", t->name);
#pragma omp parallel num_threads(dsv3_num_threads())
    t->unpack_team(w, data, scale);
    return DSV3_OK;
}

int dsv3_weight_rows_nan(const dsv3_weight *w, int64_t r0, int64_t r1)
{
    if (w->fmt != DSV3_FMT_FP8_BLOCK)
        return 0;
    const uint8_t *p = (const uint8_t *)w->data + r0 * w->k;
    const int64_t len = (r1 - r0) * w->k;
    int bad = 0;
    for (int64_t i0 = 0; i0 < len && !bad; i0 += 4096) /* chunks, vectorisable, early out */
        for (int64_t i = i0; i < (i0 + 4096 < len ? i0 + 4096 : len); i++)
            bad |= (p[i] & 0x7f) == 0x7f;
    return bad;
}

dsv3_status dsv3_weight_validate(const dsv3_weight *w, dsv3_error *err)
{
    size_t bytes;
    int64_t sr, sc;
    if (!w)
        return dsv3_fail(err, DSV3_E_VALUE, "linear: weight is NULL");
    dsv3_status st = dsv3_quant_layout(w->fmt, w->n, w->k, w->group, &bytes, &sr, &sc, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    if (w->packed && !t->packed_bytes)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weights have no packed layout", t->name);
    if (w->packed && (uintptr_t)w->packed % DSV3_PACKED_ALIGN)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weight: packed layout at %p is not %d-byte aligned", t->name,
                         w->packed, DSV3_PACKED_ALIGN);
    if (w->packed && !w->data) /* packed only (dsv3 convert --pack): the kernels read the packed copy alone */
        return DSV3_OK;
    if (!w->data)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weight: data is NULL", t->name);
    if (t->scale_kind != DSV3_SCALE_NONE && !w->scale)
        return dsv3_fail(err, DSV3_E_VALUE, "%s weight: scale is NULL", t->name);
    return DSV3_OK;
}
