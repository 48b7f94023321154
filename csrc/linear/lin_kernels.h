/* Leaf linear kernels, one per (format, ISA), all with the dsv3_lin_kernel signature.
 * Referenced only by the format table (csrc/quant/formats.c) and the dispatcher (linear.c). */
#ifndef DSV3_LIN_KERNELS_H
#define DSV3_LIN_KERNELS_H

#include "dsv3_quant.h"

#define DSV3_DECLARE_KERNELS(isa)                                                                   \
    void dsv3_gemv_f32_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);                       \
    void dsv3_gemv_bf16_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);                      \
    void dsv3_gemv_fp8_block_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);                 \
    void dsv3_gemv_nvfp4_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);                     \
    void dsv3_gemv_int8_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);                      \
    void dsv3_gemv_int4_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);                      \
    void dsv3_dyn_int8_##isa(const dsv3_lin_args *a, int64_t n0, int64_t n1);

DSV3_DECLARE_KERNELS(scalar)
DSV3_DECLARE_KERNELS(avx2)
DSV3_DECLARE_KERNELS(avx512)

/* Small-M AVX-512 BF16 kernels: weights decoded to bf16 in registers (fp8: two vpermi2b lookups +
 * sign), x as bf16 hi + lo (dsv3_xlayout), vdpbf16ps. */
void dsv3_gemv_bf16_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemv_int8_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1); /* int8: fp8 decoder after |q|, sign */
void dsv3_gemv_fp8_block_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemv_nvfp4_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemv_int4_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);

/* Large-M AVX-512 BF16 kernels (x as bf16, weight tiles decoded to bf16 in a per-thread buffer). */
void dsv3_gemm_bf16_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_nvfp4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_int4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
/* Large-M AVX2 kernels: f32 FMA on weight tiles decoded (and scaled) to f32 in a per-thread
 * buffer; x in f32 (gemm_avx2.c). */
void dsv3_gemm_bf16_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_fp8_block_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_nvfp4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_int8_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemm_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
/* K chunk of the small-M kernels (multiple of 128: fp8 groups, 64-wide decode blocks, every VL).
 * Measured: chunking K (1024, 4096) to keep x in L1 was slower than streaming whole weight rows
 * (it breaks the hardware prefetch streams), so the default is "no chunking"; the kernels still
 * support it (tests cover K > chunk only when this is lowered). */
#define DSV3_GEMV_KC (1 << 30)
/* Columns per large-M work item (threads split N in multiples of this). */
#define DSV3_GEMM_NR 32

#endif
