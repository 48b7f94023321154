/* Storage formats of the MLA latent cache (csrc/mla/kv_cache.c): the one description of a cache row.
 *
 * A cached token of one layer is the f32 vector [c (kv_lora) | k_pe (rope)].
 * It is stored in one of these row layouts (R = kv_lora, P = rope, offsets in bytes):
 *
 *   | dtype | latent c            | scales                            | k_pe          | bytes (V3: R 512, P 64) |
 *   |-------|---------------------|-----------------------------------|---------------|-------------------------|
 *   | f32   | f32 [R] at 0        | none                              | f32 [P] at 4R | 4(R+P)        = 2304    |
 *   | bf16  | bf16 [R] at 0 (RNE) | none                              | bf16 [P] at 2R| 2(R+P)        = 1152    |
 *   | fp8   | e4m3fn [R] at 0     | f32 [ceil(R/128)] at R            | bf16 [P] after| R+4ceil(R/128)+2P = 656 |
 *
 * fp8 follows FlashMLA's FP8 KV cache (DeepSeek-V3.2's sparse decode kernel, 656 bytes per token for
 * V3: 512 e4m3 latent values, 4 f32 scales, one per 128 values, then the 64 rope values in bf16, not
 * quantised "for accuracy"). Scale of a block = amax/448 (1 when the block is all zero; some users of
 * this layout round it up to a power of two, UE8M0-style: dsv3 keeps the plain amax/448, the finer one);
 * code = e4m3(c / scale), round to nearest even. Decoding: c = f32(code) * scale (one rounding), so
 * every reader, scalar or SIMD, sees the same f32 value of each element.
 * Rows are packed back to back (no padding): a row may start at any byte, readers use unaligned loads. */
#ifndef DSV3_KV_CACHE_H
#define DSV3_KV_CACHE_H

#include "dsv3.h"

typedef enum { DSV3_KV_F32 = 0, DSV3_KV_BF16 = 1, DSV3_KV_FP8 = 2, DSV3_KV_DTYPE_COUNT = 3 } dsv3_kv_dtype;

#define DSV3_KV_FP8_BLOCK 128 /* latent values per f32 scale */
#define DSV3_KV_FP8_MAX 448.0f

/* One row of the table above. */
typedef struct {
    const char *name;    /* "f32", "bf16", "fp8": the Python option's spelling */
    int latent_bytes;    /* bytes per latent value */
    int scale_block;     /* latent values per f32 scale after the latent part (0: no scales) */
    int rope_bytes;      /* bytes per rope value */
} dsv3_kv_format;

extern const dsv3_kv_format dsv3_kv_formats[DSV3_KV_DTYPE_COUNT];

/* A row layout for given dims, derived from the table (byte offsets; what the kernels walk). */
typedef struct {
    dsv3_kv_dtype dtype;
    int64_t R, P;           /* latent and rope values */
    int64_t scale_off;      /* first f32 scale (fp8) */
    int64_t rope_off;       /* first rope value */
    int64_t row_bytes;      /* stride between rows */
} dsv3_kv_layout;

dsv3_kv_layout dsv3_kv_layout_of(dsv3_kv_dtype dtype, int64_t kv_lora, int64_t rope);

/* "f32" / "bf16" / "fp8" -> dtype; DSV3_E_VALUE naming the choices otherwise. */
dsv3_status dsv3_kv_dtype_parse(const char *name, dsv3_kv_dtype *out, dsv3_error *err);

/* Store n f32 rows src [n, R+P] as cache rows at dst (n * row_bytes bytes). */
void dsv3_kv_store_rows(const dsv3_kv_layout *g, const float *src, int64_t n, void *dst);

/* Decode elements [k0, k0+cnt) of the f32 row vector of cache row `row` into out[0..cnt). */
void dsv3_kv_decode(const dsv3_kv_layout *g, const void *row, int64_t k0, int64_t cnt, float *out);

/* Decode the latent parts of rows [0, n) to lat [n, R] (ld R). */
void dsv3_kv_decode_latent(const dsv3_kv_layout *g, const void *rows, int64_t n, float *lat);

#endif
