/* dsv3_convert: picks the kernel for (src, dst, ISA) from the per-ISA tables and splits large
 * arrays across OpenMP threads (element-wise, so the result does not depend on the thread count). */
#include <string.h>

#include "convert_kernels.h"

#define CHUNK ((size_t)1 << 16) /* elements per task; a multiple of every kernel's vector width */

static const struct {
    const char *name, *short_name;
    size_t size;
} DTYPES[DSV3_DTYPE_COUNT] = {
    [DSV3_DTYPE_F32] = {"float32", "f32", 4},        [DSV3_DTYPE_BF16] = {"bfloat16", "bf16", 2},
    [DSV3_DTYPE_E4M3] = {"float8_e4m3fn", "e4m3", 1}, [DSV3_DTYPE_E5M2] = {"float8_e5m2", "e5m2", 1},
    [DSV3_DTYPE_UE8M0] = {"float8_e8m0fnu", "ue8m0", 1}, [DSV3_DTYPE_E2M1] = {"float4_e2m1fn", "e2m1", 1},
};

size_t dsv3_dtype_size(dsv3_dtype t) { return ((unsigned)t < DSV3_DTYPE_COUNT) ? DTYPES[t].size : 0; }

const char *dsv3_dtype_name(dsv3_dtype t) { return ((unsigned)t < DSV3_DTYPE_COUNT) ? DTYPES[t].name : "?"; }

dsv3_status dsv3_dtype_parse(const char *name, dsv3_dtype *out, dsv3_error *err)
{
    for (int i = 0; i < DSV3_DTYPE_COUNT; i++)
        if (strcmp(name, DTYPES[i].name) == 0 || strcmp(name, DTYPES[i].short_name) == 0) {
            *out = (dsv3_dtype)i;
            return DSV3_OK;
        }
    return dsv3_fail(err, DSV3_E_VALUE,
                     "unknown dtype '%s': expected float32, bfloat16, float8_e4m3fn, float8_e5m2, "
                     "float8_e8m0fnu or float4_e2m1fn",
                     name);
}

static const dsv3_convert_kernels *table_for(dsv3_isa isa)
{
    switch (isa) {
    case DSV3_ISA_AVX512: return &dsv3_convert_avx512;
    case DSV3_ISA_AVX2: return &dsv3_convert_avx2;
    default: return &dsv3_convert_scalar;
    }
}

static dsv3_cvt_fn pick(const dsv3_convert_kernels *t, dsv3_dtype dst_t, dsv3_dtype src_t)
{
    if (src_t == DSV3_DTYPE_F32)
        return t->from_f32[dst_t];
    if (dst_t == DSV3_DTYPE_F32)
        return t->to_f32[src_t];
    if (src_t == DSV3_DTYPE_E4M3 && dst_t == DSV3_DTYPE_BF16)
        return t->e4m3_to_bf16;
    return NULL;
}

dsv3_status dsv3_convert(dsv3_dtype dst_t, void *dst, dsv3_dtype src_t, const void *src, size_t n, int isa,
                         dsv3_error *err)
{
    if ((unsigned)dst_t >= DSV3_DTYPE_COUNT || (unsigned)src_t >= DSV3_DTYPE_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "dsv3_convert: invalid dtype (%d -> %d)", (int)src_t, (int)dst_t);
    dsv3_isa resolved;
    dsv3_status st = dsv3_isa_resolve(isa, &resolved, err);
    if (st != DSV3_OK)
        return st;
    if (n == 0)
        return DSV3_OK;
    if (!dst || !src)
        return dsv3_fail(err, DSV3_E_VALUE, "dsv3_convert: NULL buffer for %zu elements", n);
    const size_t ssz = DTYPES[src_t].size, dsz = DTYPES[dst_t].size;
    if (src_t == dst_t) {
        size_t bytes;
        if (!dsv3_mul_size(n, ssz, &bytes))
            return dsv3_fail(err, DSV3_E_VALUE, "dsv3_convert: %zu elements overflow size_t", n);
        memmove(dst, src, bytes);
        return DSV3_OK;
    }
    dsv3_cvt_fn fn = pick(table_for(resolved), dst_t, src_t);
    if (!fn)
        fn = pick(&dsv3_convert_scalar, dst_t, src_t);
    if (!fn)
        return dsv3_fail(err, DSV3_E_VALUE, "dsv3_convert: no conversion from %s to %s (one side must be float32)",
                         DTYPES[src_t].name, DTYPES[dst_t].name);
    if (n <= CHUNK) {
        fn(dst, src, n);
        return DSV3_OK;
    }
    const long long chunks = (long long)((n + CHUNK - 1) / CHUNK);
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
#pragma omp parallel for num_threads(dsv3_num_threads()) schedule(static)
    for (long long c = 0; c < chunks; c++) {
        const size_t i0 = (size_t)c * CHUNK, len = (n - i0 < CHUNK) ? n - i0 : CHUNK;
        fn(d + i0 * dsz, s + i0 * ssz, len);
    }
    return DSV3_OK;
}
