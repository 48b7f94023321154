/* Large-M AVX-512 kernels (placeholder: forwards to the small-M kernels). */
#include "linear/lin_kernels.h"

void dsv3_gemm_bf16_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dsv3_gemv_bf16_avx512(a, n0, n1); }
void dsv3_gemm_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dsv3_gemv_fp8_block_avx512(a, n0, n1); }
void dsv3_gemm_nvfp4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dsv3_gemv_nvfp4_avx512(a, n0, n1); }
void dsv3_gemm_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dsv3_gemv_int8_avx512(a, n0, n1); }
void dsv3_gemm_int4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dsv3_gemv_int4_avx512(a, n0, n1); }
