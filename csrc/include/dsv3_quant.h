/* Weight formats: ONE table of traits (block sizes, code width, scale kind, scalar decode,
 * quantiser, and the linear kernels per ISA), plus quantise / dequantise entry points.
 *
 * Every format is described by the same decomposition, which every kernel follows:
 *     W[n, k] = code(n, k) * group_scale(n, k / G)
 * code = the unscaled value of the stored code (exact in f32), G = the format's K group
 * (fp8_block 128, nvfp4 16, int4 `group`, f32/bf16/int8: the whole row). fp8_block additionally
 * shares one scale per 128 rows. Kernels compute y[m, n] = sum_g s(n, g) * sum_{k in g} x[m,k] code(n,k).
 *
 * Stored layouts (exactly as checkpoints hold them; kernels read them directly, see linear.c):
 *   f32       data float [n, k]
 *   bf16      data uint16 (bf16 bits) [n, k]
 *   fp8_block data e4m3fn [n, k]; scale f32 [ceil(n/128), ceil(k/128)] (DeepSeek weight_scale_inv)
 *   nvfp4     data u8 [n, k/2], element 2i in the low nibble (e2m1); scale e4m3fn [n, k/16];
 *             scale2 f32 (ModelOpt weight_scale_2). Requires k % 16 == 0.
 *   int8      data int8 [n, k]; scale f32 [n] (symmetric per output channel)
 *   int4      data u8 [n, k/2], element 2i in the low nibble, two's complement in [-8, 7]
 *             (symmetric quantisation uses [-7, 7]); scale f32 [n, ceil(k/group)], group 32 or 128.
 *             Requires k even.
 */
#ifndef DSV3_QUANT_H
#define DSV3_QUANT_H

#include "dsv3.h"
#include "dsv3_linear.h"

typedef enum { DSV3_SCALE_NONE = 0, DSV3_SCALE_F32 = 1, DSV3_SCALE_E4M3 = 2 } dsv3_scale_kind;

/* Fast-mode activations quantised per block of 32 columns (Q8, see csrc/linear/act_q8.c), prepared once
 * per call in the layout the kernel asks for (dsv3_format_traits.fast_x). */
typedef struct {
    const int8_t *q;    /* [m, k] codes; full layout blocks in the kernel's order, the K tail natural */
    const float *d;     /* [m, ceil(k/32)] block scales: x ~= q * d */
    const float *dl;    /* [m, kb / lane] block scale of each dot lane (SIMD layouts), else NULL */
    const float *e;     /* [m, kb / 32] offset compensation of each Q8 block in the full layout blocks,
                         * -off * d * (sum of its codes) (SIMD layouts: the kernels add off to the weights) */
    const float *e4;    /* [m, ceil(kb / 128)] e summed per 128 columns, ((e0 + e1) + e2) + e3 */
    const int32_t *c16; /* DSV3_X_Q8_EO64C: [m, kb / 128 * 8] 12 * (sum of the codes) of each 16-column block of
                         * the full 128-blocks, per 128 in the order 0, 1, 4, 5, 2, 3, 6, 7, else NULL */
    const float *d16;   /* DSV3_X_Q8_EO64C: [m, kb / 128 * 8] d of each of those 16-column blocks, same order */
    int64_t lanes;      /* row stride of dl (kb / lane) */
    int64_t kb;         /* columns in full layout blocks (the rest is the natural-order tail) */
} dsv3_act_q8;

/* Arguments of every linear kernel (one signature for every format). */
typedef struct {
    const float *x;        /* [m, k] f32 activations (weight-only) or dequantised act codes (fp8 dynamic) */
    const float *xs;       /* fp8 dynamic: per-token per-128-group act scales [m, ceil(k/128)], else NULL */
    const int8_t *xq;      /* int8 dynamic: per-token int8 activations [m, k], else NULL */
    const uint8_t *xu;     /* int8 dynamic (VNNI): |xq| as u8 [m, k], else NULL */
    const float *xs_tok;   /* int8 dynamic: per-token act scale [m] */
    const uint16_t *xb;    /* large-M bf16 path: x as bf16 [m, k], else NULL */
    const uint16_t *xh, *xl; /* bf16x2 small-M kernels: x = xh + xl (bf16 each), [m, k] in the
                              * kernel's x layout (dsv3_xlayout), else NULL */
    int64_t m;
    const dsv3_weight *w;
    const dsv3_act_q8 *q8;   /* fast mode, int8/int4 weights: Q8 activations, else NULL */
    const float *xp;       /* fast fp8_block on AVX2, DSV3_X_F32_P32: bf16(x) * 2^56 as f32 [m, k], else NULL */
    const float *bias;     /* [n] or NULL */
    float *y;              /* [m, n] */
} dsv3_lin_args;

/* Computes output columns [n0, n1) for all m rows. */
typedef void (*dsv3_lin_kernel)(const dsv3_lin_args *a, int64_t n0, int64_t n1);

/* Activation layout a small-M kernel wants (prepared once per call by the dispatcher). */
typedef enum {
    DSV3_X_F32 = 0,       /* x as given (f32) */
    DSV3_X_BF16X2 = 1,    /* x split into bf16 hi + lo (16 significant bits), natural order */
    DSV3_X_BF16X2_P64 = 2 /* same, each 64-block in the in-lane byte-unpack order of the fp8 decoder:
                           * [0-7, 16-23, 32-39, 48-55, 8-15, 24-31, 40-47, 56-63] */,
    DSV3_X_BF16X2_N128 = 3 /* same, each 128-block in the order of the 4-bit (vpmovzxbw + vpermw) decoder:
                            * source o -> (o >> 6) * 64 + (o & 1) * 32 + ((o & 63) >> 1) */,
    /* fast mode (dsv3_format_traits.fast_x): */
    DSV3_X_BF16_HI = 4,   /* x rounded once to bf16 (hi only), in the order of the format's gemv_x */
    DSV3_X_Q8 = 5,        /* Q8 codes in natural order, no lane arrays (scalar twin, AVX2 int8) */
    DSV3_X_Q8_L4 = 6,     /* natural order; dot lanes of 4 columns (vpdpbusd lanes, sign trick)
                           * (AVX-512 int8: vpdpbusd of abs(w) with x * sign(w)) */
    DSV3_X_Q8_EO64 = 7,   /* each 64-block as its 32 even then 32 odd columns; lanes of 8 columns,
                           * compensation for weights + 8 (AVX2 int4: low / high nibbles) */
    DSV3_X_Q8_EO128 = 8,  /* the same with 128-blocks (AVX-512 int4) */
    DSV3_X_BF16_P32 = 9   /* x rounded once to bf16 (RNE) times 2^56 (exact for |x| < 2^71), each full 32-block
                           * in the order of the AVX2 fast fp8 decoder (decode_avx2.h, e4m3x32_raw): natural column c
                           * at 16 ((c & 3) >> 1) + 2 (c >> 2) + (c & 1); the K tail natural */,
    DSV3_X_Q8_O8 = 10,    /* natural order, no lane arrays; e / e4 compensation for weights + 8 (full 32-blocks:
                           * packed int4, int4p.h) */
    DSV3_X_Q8_EO64C = 11, /* DSV3_X_Q8_EO64 without e / e4, with c16 (the AVX2 nvfp4 kernel: weights + 12) */
    DSV3_X_F32_P32 = 12   /* the values of DSV3_X_BF16_P32 (bf16(x) * 2^56) as f32, each full 32-block in the order
                           * of the decoded vectors (e4m3x32_raw): natural column c at 8 (c & 3) + (c >> 2); the K tail
                           * natural (the AVX2 fast fp8 kernel, small K) */
} dsv3_xlayout;

typedef struct {
    const char *name;          /* "f32", "bf16", "fp8_block", "nvfp4", "int8", "int4" */
    int code_bits;             /* bits of one stored weight code */
    int block_n;               /* rows sharing one scale (fp8_block 128, per-channel 1, none 0) */
    int block_k;               /* K group of one scale: >0 fixed, -1 whole row, -2 w->group, 0 none */
    dsv3_scale_kind scale_kind;
    int has_scale2;            /* nvfp4 global scale */
    /* scalar reference decode: unscaled codes of row n, columns [k0, k0+len) as f32 */
    void (*code_row)(const dsv3_weight *w, int64_t n, int64_t k0, int64_t len, float *out);
    /* scale of (row n, K group g) */
    float (*group_scale)(const dsv3_weight *w, int64_t n, int64_t g);
    /* weight-only kernels per ISA (small M, f32 FMA); large-M kernels (NULL: use gemv);
     * dynamic-activation kernels (NULL: mode not supported for the format) */
    dsv3_lin_kernel gemv[DSV3_ISA_COUNT];
    dsv3_lin_kernel gemm[DSV3_ISA_COUNT];
    dsv3_lin_kernel dynamic[DSV3_ISA_COUNT];
    unsigned char gemv_x[DSV3_ISA_COUNT]; /* dsv3_xlayout of gemv / dynamic kernels per ISA */
    /* fast activation mode (dsv3_weight.act = DSV3_ACT_FAST, small M): kernel per ISA (NULL: the exact
     * gemv runs) and its activation layout (DSV3_X_BF16_HI or one of the DSV3_X_Q8* layouts) */
    dsv3_lin_kernel fast[DSV3_ISA_COUNT];
    unsigned char fast_x[DSV3_ISA_COUNT];
    /* fast mode, large M (where the ISA's gemm would run): kernel per ISA reading Q8 activations in
     * natural order (DSV3_X_Q8); NULL: the gemm runs */
    dsv3_lin_kernel fast_gemm[DSV3_ISA_COUNT];
    /* packed layout for the fast mode (dsv3_weight.packed; NULL / 0: the format has none): buffer bytes for
     * (n, k, group), the packer from the stored layout (team-callable, no barrier), the small-M kernels on it
     * per ISA, their activation layout and the rows of one work item (the layout's row interleave). The
     * large-M kernels (gemm, fast_gemm) of such a format read either layout. */
    size_t (*packed_bytes)(int64_t n, int64_t k, int group);
    void (*pack_team)(const dsv3_weight *w, void *buf, dsv3_isa isa); /* isa: a supported one; same bytes on each */
    dsv3_lin_kernel packed_fast[DSV3_ISA_COUNT];
    unsigned char packed_x;
    int packed_rows;
    /* the inverse of pack_team (team-callable, no barrier): the stored layout's data and scale arrays
     * (dsv3_quant_layout sizes) from w->packed, for a checkpoint that stores only the packed layout */
    void (*unpack_team)(const dsv3_weight *w, void *data, void *scale);
} dsv3_format_traits;

extern const dsv3_format_traits dsv3_formats[DSV3_FMT_COUNT];

/* Parse a format name; fails with a message listing the known names. */
dsv3_status dsv3_format_parse(const char *name, dsv3_format *out, dsv3_error *err);
/* K group of the format for this weight (whole row -> k). */
int64_t dsv3_weight_kgroup(const dsv3_weight *w);

/* Sizes of the stored arrays for a format and shape (validates k / group constraints).
 * data_bytes: bytes of `data`; scale_rows x scale_cols: elements of `scale` (0 x 0 if none). */
dsv3_status dsv3_quant_layout(dsv3_format fmt, int64_t n, int64_t k, int group, size_t *data_bytes,
                              int64_t *scale_rows, int64_t *scale_cols, dsv3_error *err);
/* Checks a dsv3_weight's fields (format, shape, pointers, group) before a kernel reads it. */
dsv3_status dsv3_weight_validate(const dsv3_weight *w, dsv3_error *err);

/* Quantise w f32 [n, k] into the caller's buffers sized by dsv3_quant_layout.
 * fp8_block: S = amax/448 (1 if 0), ue8m0 rounds S up to a power of two, q = e4m3(w/S) RNE.
 * nvfp4: ModelOpt (scale2 = amax/2688, block scale e4m3(max(amax_b/(6*scale2), 2^-9)), 0 -> 1,
 *        codes by ModelOpt's thresholds). int8/int4: S = amax/127 (/7) per channel/group (1 if 0),
 *        q = rint(w/S) clamped. f32/bf16: copy / RNE. scale2 receives the global scale (1 if none).
 * The scaled formats (fp8_block, nvfp4, int8, int4) refuse a NaN or inf weight with DSV3_E_VALUE
 * naming its [row, col]; f32/bf16 store it as it is. */
dsv3_status dsv3_quantize(dsv3_format fmt, const float *w, int64_t n, int64_t k, int group, int ue8m0,
                          void *data, void *scale, float *scale2, dsv3_error *err);
/* Bytes of w's packed layout (dsv3_format_traits.packed_bytes), 0 when its format has none. */
size_t dsv3_weight_packed_bytes(const dsv3_weight *w);
/* Packs w (stored layout) into buf (dsv3_weight_packed_bytes, 64-byte aligned) over a thread team; the caller
 * then sets w->packed = buf (the kernels read only the packed copy from then on; w->data stays the stored
 * layout for other readers). A packed weight runs in the fast precision only (dsv3_linear refuses exact). */
dsv3_status dsv3_weight_pack(const dsv3_weight *w, void *buf, int isa, dsv3_error *err); /* isa -1: active */
/* The inverse: w->packed -> the stored layout in the caller's data / scale buffers (dsv3_quant_layout sizes),
 * over a thread team. A weight may come with only its packed layout (w->data NULL: a checkpoint converted
 * with dsv3 convert --pack); the exact kernels need this stored layout back. */
dsv3_status dsv3_weight_unpack(const dsv3_weight *w, void *data, void *scale, dsv3_error *err);
/* Alignment (bytes) of dsv3_weight.packed: the layout's chunks and scale groups are 64-byte vectors. */
#define DSV3_PACKED_ALIGN 64
/* 1 when rows [r0, r1) of w hold a NaN code (fp8_block: an e4m3 S.1111.111; other formats: 0). The scan behind
 * dsv3_weight.nan_free (the model loader runs it on its fp8_block weights, split over threads by rows). */
int dsv3_weight_rows_nan(const dsv3_weight *w, int64_t r0, int64_t r1);
/* out f32 [n, k] = code * group_scale, exactly (the kernels' reference). */
dsv3_status dsv3_dequantize(const dsv3_weight *w, float *out, dsv3_error *err);

#endif /* DSV3_QUANT_H */
