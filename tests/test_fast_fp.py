"""Fast-mode kernels of the floating-point weight formats (csrc/linear/dot_fp.h): nvfp4 Q8 on every ISA and
fp8_block on AVX2, against references written here from the stated definitions.

- nvfp4: x quantised to Q8 (test_fast_mode.q8_reference: blocks of 32, d = amax/127, round half to even), then
  y = sum_b d_b * sum_{k in b} q_k * W[n, k] with W = dequantize(weight) (e4m3 block scale * scale2 * e2m1), in
  float64 here; the kernels sum exact int32 16-column dots then f32, so |y - ref| <= 1e-5 * T, T = |x| @ |W|^T;
  every SIMD kernel against its scalar twin (dsv3_q8_nvfp4_scalar) at the same bound.
- fp8_block on AVX2 and AVX-512 (dot_fp_avx2.c, dot_fp8_avx512.c): the bf16-hi definition, y = bf16(x) @ W^T
  (float64 here), 1e-5 * T (also for x scaled by 1e-12 and 1e12: the AVX2 kernel carries x * 2^56, the AVX-512 one
  codes * 2^-8); their scalar twin is the bf16-hi scalar kernel (dsv3_fast_bf16hi_scalar), at the same bound. Every
  e4m3 code, through both decode paths of the AVX-512 kernel (shifts; tables for zero-exponent and NaN groups),
  exactly; a NaN code gives a NaN row. Rows of a batch (M = 1..23, below the fp8 GEMM) are bitwise the rows alone,
  with 1 and 2 threads.
"""
import ml_dtypes
import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib

from test_fast_mode import q8_linear_reference, rnd, scale_t

ISAS = [i for i in ("scalar", "avx2", "avx512") if i in lib.isa_info()[1]]
SIMD = [i for i in ISAS if i != "scalar"]
E4M3 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16
needs_avx2 = pytest.mark.skipif("avx2" not in ISAS, reason="this CPU has no AVX2")
FP8_FAST_ISAS = [i for i in ("avx2", "avx512") if i in ISAS]  # the fast fp8 kernels of dot_fp.h / act_q8.h

# (m, k, n): M over the tiles (1, 2, 4, 11); K with full 128-blocks, a last 64-block (320, 448), 16/32-column
# tails beyond the last full 64 / 128 block (48, 496, 1008), the expert row length 7168
NVFP4_SHAPES = [(1, 256, 9), (1, 320, 7), (2, 512, 13), (3, 448, 8), (4, 1008, 7), (11, 384, 5), (1, 48, 3),
                (5, 160, 6), (1, 7168, 6), (1, 496, 4)]
# fp8: K tails that are not a multiple of 32 (50, 7 * 64 + 48 + 5) and partial last 128-groups
FP8_SHAPES = [(1, 256, 9), (2, 512, 13), (3, 448, 8), (4, 1000, 7), (11, 384, 5), (1, 50, 3), (5, 160, 6),
              (1, 7168, 5), (1, 501, 130), (6, 2048, 3)]


def fast(x, qt, isa, bias=None):
    return dsv3.ops.linear(x, qt, bias=bias, isa=isa, precision="fast")


def nvfp4_tensor(codes, scale_codes, scale2):
    """nvfp4 weight from nibble codes [n, k] (element 2i in the low nibble) and e4m3 scale bytes [n, k/16]."""
    codes = np.asarray(codes, np.uint8)
    data = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return quant.from_checkpoint("nvfp4", data, scale=np.asarray(scale_codes, np.uint8).view(E4M3),
                                 scale2=np.array(scale2, np.float32))


@pytest.mark.parametrize("isa", ISAS)
def test_nvfp4_q8_matches_the_definition(isa):
    for i, (m, k, n) in enumerate(NVFP4_SHAPES):
        x, w = rnd((m, k), i), rnd((n, k), 100 + i)
        bias = rnd((n,), 200 + i)
        qt = quant.quantize(w, "nvfp4")
        wd = quant.dequantize(qt)
        ref, t = q8_linear_reference(x, wd, bias), scale_t(x, wd)
        y = fast(x, qt, isa, bias)
        assert np.all(np.abs(y - ref) <= 1e-5 * t + 1e-6), (isa, (m, k, n))
        if isa != "scalar":
            ys = fast(x, qt, "scalar", bias)
            assert np.all(np.abs(y - ys) <= 1e-5 * t + 1e-6), (isa, (m, k, n))
            assert not np.array_equal(y, dsv3.ops.linear(x, qt, bias=bias, isa=isa, precision="exact"))


def test_nvfp4_q8_extreme_codes_and_scales():
    """Every code +-6 against saturated x (the largest int16 pair sums of the AVX2 kernel), the -0 code,
    subnormal and largest e4m3 block scales, a global scale; a NaN block scale makes its row NaN."""
    m, k, n = 2, 384, 5
    x = rnd((m, k), 1)
    x[0, :32] = 10.0   # codes +127 in block 0
    x[1, 32:64] = -3.0  # codes -127 in block 1
    codes = np.zeros((n, k), np.uint8)
    codes[0] = 0x7                    # +6 everywhere
    codes[1] = 0xF                    # -6 everywhere
    codes[2, ::2], codes[2, 1::2] = 0x8, 0x7  # -0 and +6
    codes[3] = np.arange(k) % 16      # every code
    codes[4] = (np.arange(k) * 7) % 16
    sc = np.full((n, k // 16), 0x38, np.uint8)  # 1.0
    sc[0, ::3] = 0x01                 # smallest subnormal, 2^-9
    sc[1, 1::2] = 0x7E                # 448
    sc[3] = np.arange(k // 16) * 5 % 0x7E
    sc[4, 2] = 0xFE                   # -448
    qt = nvfp4_tensor(codes, sc, 0.37)
    wd = quant.dequantize(qt)
    ref, t = q8_linear_reference(x, wd), scale_t(x, wd)
    for isa in ISAS:
        y = fast(x, qt, isa)
        assert np.all(np.abs(y - ref) <= 1e-5 * t + 1e-6), isa
    sc[2, 5] = 0x7F  # NaN scale code: row 2 is NaN, the others unchanged
    qt = nvfp4_tensor(codes, sc, 0.37)
    for isa in ISAS:
        y = fast(x, qt, isa)
        assert np.all(np.isnan(y[:, 2])) and np.all(np.isfinite(np.delete(y, 2, axis=1))), isa


def test_nvfp4_non_finite_activations_give_nan():
    x, w = rnd((2, 256), 6), rnd((4, 256), 7)
    x[0, 40] = np.nan
    x[1, 200] = np.inf
    qt = quant.quantize(w, "nvfp4")
    for isa in ISAS:
        assert np.all(np.isnan(fast(x, qt, isa))), isa


@pytest.mark.parametrize("isa", FP8_FAST_ISAS)
def test_fp8_fast_matches_the_definition(isa):
    for i, (m, k, n) in enumerate(FP8_SHAPES):
        x, w = rnd((m, k), i), rnd((n, k), 50 + i)
        bias = rnd((n,), 60 + i)
        qt = quant.quantize(w, "fp8_block")
        wd = quant.dequantize(qt)
        t = scale_t(x, wd)
        for scale in (1.0, 1e-12, 1e12):  # bf16(x) * 2^56 in the kernel's layout: no overflow, no denormal products
            xs = x * np.float32(scale)
            ref = xs.astype(BF16).astype(np.float64) @ wd.T.astype(np.float64) + bias
            y = fast(xs, qt, isa, bias)
            assert np.all(np.abs(y - ref) <= 1e-5 * t * scale + 1e-5 * np.abs(bias)), (isa, (m, k, n), scale)
        y = fast(x, qt, isa, bias)
        ys = fast(x, qt, "scalar", bias)  # the scalar twin (dsv3_fast_bf16hi_scalar)
        assert np.all(np.abs(y - ys) <= 1e-5 * t), (m, k, n)
        assert not np.array_equal(y, dsv3.ops.linear(x, qt, bias=bias, isa=isa, precision="exact"))


@pytest.mark.parametrize("isa", FP8_FAST_ISAS)
def test_fp8_fast_codes(isa):
    """Every e4m3 code (subnormals, +-448, -0) decodes exactly; a NaN code makes its row (only) NaN (AVX2: through
    the exact kernel; AVX-512: its table path), in both tile paths (M = 1 and M > 1)."""
    k, n = 384, 130  # two 128-row scale blocks
    codes = np.tile(np.arange(256, dtype=np.uint8), (n, 2))[:, :k].copy()
    codes[(codes & 0x7F) == 0x7F] = 0x42
    for r in range(n):
        codes[r] = np.roll(codes[r], r)
    scale = np.array([[0.5, 2.0, 0.25], [3.0, 1e-3, 7.0]], np.float32)
    qt = quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=scale)
    wd = quant.dequantize(qt)
    for m in (1, 3):
        x = rnd((m, k), m)
        t = scale_t(x, wd)
        ref = x.astype(BF16).astype(np.float64) @ wd.T.astype(np.float64)
        assert np.all(np.abs(fast(x, qt, isa) - ref) <= 1e-5 * t), m
    codes[7, 100] = 0x7F
    codes[129, 300] = 0xFF
    qt = quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=scale)
    for m in (1, 3):
        y = fast(rnd((m, k), 9), qt, isa)
        nan = np.isnan(y)
        assert nan[:, 7].all() and nan[:, 129].all() and nan.sum() == 2 * m, m


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_block"])
def test_fast_fp_independent_of_threads_and_x_dtype(fmt):
    x, w = rnd((5, 640), 4), rnd((70, 640), 5)
    qt = quant.quantize(w, fmt)
    before = dsv3.get_num_threads()
    try:
        for isa in ISAS:
            for xm in (x, x[:1]):
                dsv3.set_num_threads(1)
                y1 = fast(xm, qt, isa)
                dsv3.set_num_threads(2)
                np.testing.assert_array_equal(y1, fast(xm, qt, isa))
                xb = xm.astype(ml_dtypes.bfloat16)
                np.testing.assert_array_equal(fast(xb, qt, isa), fast(xb.astype(np.float32), qt, isa))
    finally:
        dsv3.set_num_threads(before)


# K: full 128-blocks only, + a last 64-block, + a 16-column tail after it, + a tail after full 128-blocks
ROW_KS = [256, 320, 336, 400]


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_block"])
def test_fast_fp_rows_do_not_depend_on_m(fmt):
    """Every row of a call with M = 1..13 rows is bitwise the M = 1 result of that row (the tiles of 1-4 rows
    do the same arithmetic per row), on every ISA, below the GEMM threshold (AVX2: from 12 rows the f32 GEMM,
    another kernel, runs)."""
    for k in ROW_KS:
        x, w = rnd((13, k), k), rnd((9, k), k + 1)
        qt = quant.quantize(w, fmt)
        for isa in ISAS:
            one = np.concatenate([fast(x[i:i + 1], qt, isa) for i in range(13)])
            for m in range(1, 12 if isa == "avx2" else 14):
                np.testing.assert_array_equal(fast(x[:m], qt, isa), one[:m], err_msg=f"{isa} k={k} m={m}")


@pytest.mark.parametrize("isa", ISAS)
def test_nvfp4_q8_nan_scale_anywhere_gives_only_its_row_nan(isa):
    """A NaN block scale in the first block, a middle one, the last full 128-block, a last 64-block or the K tail
    makes exactly its row NaN; the other rows are bitwise those of the weight without it."""
    k, n = 400, 6  # 3 full 128-blocks, a 64-block, a 16-column tail: scale blocks 0..24
    x = rnd((3, k), 11)
    base = quant.quantize(rnd((n, k), 12), "nvfp4")
    codes = np.zeros((n, k), np.uint8)
    data = np.asarray(base.arrays["weight"]).view(np.uint8)
    codes[:, 0::2], codes[:, 1::2] = data & 15, data >> 4
    sc = np.asarray(base.arrays["weight_scale"]).view(np.uint8).copy()
    scale2 = float(np.asarray(base.arrays["weight_scale_2"]).reshape(-1)[0])
    y0 = fast(x, nvfp4_tensor(codes, sc, scale2), isa)
    for block in (0, 9, 23, 24, 20):
        s = sc.copy()
        s[block % n, block] = 0x7F if block % 2 else 0xFF
        y = fast(x, nvfp4_tensor(codes, s, scale2), isa)
        assert np.isnan(y[:, block % n]).all(), (isa, block)
        np.testing.assert_array_equal(np.delete(y, block % n, axis=1), np.delete(y0, block % n, axis=1))


@pytest.mark.parametrize("isa", ISAS)
def test_nvfp4_q8_saturated_codes_every_block_kind(isa):
    """x codes +-127 everywhere against codes +-6 (the largest int16 sums of the AVX2 kernel, whose weights enter
    as 2 e2m1 + 12 in 0..24) and every code, over full 128-blocks, a last 64-block and a tail: the reference."""
    k, n = 464, 4
    x = np.where(np.arange(k) % 3 == 0, -1.0, 1.0).astype(np.float32)[None, :] * np.array([[1.0], [-2.0]], np.float32)
    codes = np.zeros((n, k), np.uint8)
    codes[0], codes[1] = 0x7, 0xF
    codes[2] = np.arange(k) % 16
    codes[3] = np.where(np.arange(k) % 3 == 0, 0xF, 0x7)  # the sign of x: every product +6 * 127
    sc = np.full((n, k // 16), 0x38, np.uint8)
    sc[2] = np.arange(k // 16) % 0x7E
    qt = nvfp4_tensor(codes, sc, 1.5)
    wd = quant.dequantize(qt)
    ref, t = q8_linear_reference(x, wd), scale_t(x, wd)
    y = fast(x, qt, isa)
    assert np.all(np.abs(y - ref) <= 1e-5 * t + 1e-6), isa
    assert abs(y[0, 3] - 6 * 1.5 * k * np.sign(ref[0, 3])) <= 1e-5 * t[0, 3]


@pytest.mark.parametrize("isa", FP8_FAST_ISAS)
def test_fp8_subnormal_codes_and_tiny_x(isa):
    """Rows of subnormal e4m3 codes only (AVX2: decoded to f32 denormals, times x carrying 2^56; AVX-512: the table
    path) against the bf16-hi definition, with x of ordinary size and of 1e-20."""
    k, n = 288, 3
    codes = np.zeros((n, k), np.uint8)
    codes[0] = np.arange(k) % 8                          # +subnormals (and zero)
    codes[1] = 0x80 | (np.arange(k) % 8)                 # -subnormals
    codes[2] = np.where(np.arange(k) % 2 == 0, 0x01, 0x7E)  # the smallest and the largest magnitude
    qt = quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=np.array([[0.75, 3.0, 1e-3]], np.float32))
    wd = quant.dequantize(qt)
    for s in (1.0, 1e-20):
        x = rnd((2, k), 3) * np.float32(s)
        ref = x.astype(BF16).astype(np.float64) @ wd.T.astype(np.float64)
        assert np.all(np.abs(fast(x, qt, isa) - ref) <= 1e-5 * scale_t(x, wd) + 1e-30), s


@pytest.mark.parametrize("isa", FP8_FAST_ISAS)
def test_fp8_nan_scanned_weight_is_bitwise_the_checked_one(isa):
    """A weight scanned once for NaN codes (dsv3.quant.nan_scanned_native sets "nan_free", as the model loader
    does) runs the fast kernel without its NaN checks: bitwise the results of the checking kernel, for every tile
    (M = 1..4); AVX2 in both x layouts (f32 up to K = 4096, bf16 above: K = 4096 / 4160 / 7168 below), AVX-512
    sending groups with exponent-1 codes to its table path only when checking (the same values either way)."""
    for i, (m, k, n) in enumerate(FP8_SHAPES + [(4, 4096, 3), (3, 4160, 2)]):
        x, w = rnd((m, k), i), rnd((n, k), 70 + i)
        bias = rnd((n,), 80 + i)
        qt = quant.quantize(w, "fp8_block")
        d = quant.nan_scanned_native(qt)
        assert d["nan_free"] is True
        for mm in range(1, m + 1):
            np.testing.assert_array_equal(fast(x[:mm], d, isa, bias), fast(x[:mm], qt, isa, bias),
                                          err_msg=f"{(m, k, n)} m={mm}")


@pytest.mark.parametrize("isa", FP8_FAST_ISAS)
def test_fp8_fast_every_code_exact_in_both_decode_paths(isa):
    """Row r holds code r at one column, x is 1 there and 0 elsewhere, scale 1: y[r] is the e4m3 value of r exactly
    (ml_dtypes), NaN for the NaN codes. The other codes of the row are 1.0 (0x38: the AVX-512 kernel decodes the
    group by shifts unless code r itself needs its table path) or 0 (0x00: every group by the tables); the column
    is even, odd, in the first or the second 64-block of a group, and in a later group."""
    k, n = 384, 256
    want = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)
    for fill in (0x38, 0x00):
        for col in (0, 5, 70, 131, 383):
            codes = np.full((n, k), fill, np.uint8)
            codes[:, col] = np.arange(256)
            qt = quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=np.ones((2, 3), np.float32))
            x = np.zeros((2, k), np.float32)
            x[:, col] = 1.0
            for d in (qt, quant.nan_scanned_native(qt)):
                y = fast(x, d, isa)
                np.testing.assert_array_equal(y[0], want, err_msg=f"{isa} fill={fill:#x} col={col}")
                np.testing.assert_array_equal(y[1], want)


@pytest.mark.parametrize("isa", FP8_FAST_ISAS)
def test_fp8_fast_batch_rows_are_the_rows_alone(isa):
    """Every row of a call with M = 1..23 rows (below the AVX-512 fp8 GEMM at 24; AVX2: below its GEMM at 12) is
    bitwise that row computed alone, with 1 and 2 threads, for K with full groups only (256, 2048), a tail after
    them (320, 4160) and the long expert rows (7168: several x rows no longer fit the kernel's L1 budget, so other
    tiles run), weights with zero and subnormal codes (table path) among normal ones."""
    mmax = 23 if isa == "avx512" else 11
    before = dsv3.get_num_threads()
    try:
        for k, n in ((256, 9), (320, 13), (2048, 6), (4160, 5), (7168, 5)):
            x = rnd((mmax, k), k)
            codes = np.asarray(quant.quantize(rnd((n, k), k + 1), "fp8_block").arrays["weight"]).view(np.uint8).copy()
            codes[::2, 3::97] = 0x00
            codes[1::3, 11::61] = 0x83
            qt = quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=np.full((1, (k + 127) // 128), 0.01, np.float32))
            dsv3.set_num_threads(1)
            one = np.concatenate([fast(x[i:i + 1], qt, isa) for i in range(mmax)])
            for threads in (1, 2):
                dsv3.set_num_threads(threads)
                for m in range(1, mmax + 1):
                    np.testing.assert_array_equal(fast(x[:m], qt, isa), one[:m], err_msg=f"{isa} k={k} m={m} t={threads}")
    finally:
        dsv3.set_num_threads(before)


def test_nan_scan_finds_every_nan_code():
    """The scan behind "nan_free" (dsv3_weight_rows_nan): a NaN code (0x7f or 0xff) in the first byte, the last
    byte or the middle of the codes is found; other codes (0x7e, 0xfe, 0x80) are not NaN; formats other than
    fp8_block have no NaN codes; a weight whose scan finds one keeps the kernels' checks (its row NaN)."""
    n, k = 5, 300
    codes = (np.arange(n * k).reshape(n, k) % 0x7E).astype(np.uint8)
    codes[1, 3], codes[2, 7], codes[3, 11] = 0x7E, 0xFE, 0x80
    scale = np.ones((1, 3), np.float32)
    assert lib.weight_nan_free(quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=scale).to_native())
    for pos, code in (((0, 0), 0x7F), ((n - 1, k - 1), 0xFF), ((2, 150), 0x7F)):
        c = codes.copy()
        c[pos] = code
        qt = quant.from_checkpoint("fp8_block", c.view(E4M3), scale=scale)
        d = quant.nan_scanned_native(qt)
        assert d["nan_free"] is False, pos
        for isa in ISAS:
            for m in (1, 3):
                y = fast(rnd((m, k), 5), d, isa)
                assert np.isnan(y[:, pos[0]]).all() and np.isfinite(np.delete(y, pos[0], axis=1)).all(), (isa, pos)
    for fmt in ("int8", "nvfp4", "bf16"):
        assert quant.nan_scanned_native(quant.quantize(rnd((4, 64), 1), fmt))["nan_free"] is True, fmt


def test_model_fast_fp8_nan_code_still_gives_nan():
    """A model loaded in the fast precision scans its fp8_block weights once (csrc/model/pack_weights.c): the
    weights without NaN codes run the kernels without per-row checks (finite logits), and a NaN code in one
    weight still makes the logits NaN (on the active ISA; the suite runs again with DSV3_ISA=avx2)."""
    pytest.importorskip("torch")
    from dsv3 import parity_hf
    from hf_reference import native_config
    from test_fast_mode import _is_linear, _small_config

    hf = parity_hf.build_model(_small_config())
    canon = parity_hf.hf_to_canonical(parity_hf.random_state_dict(hf, 0))
    qts = {k: (quant.quantize(v, "fp8_block") if _is_linear(k) else v) for k, v in canon.items()}
    ids = np.arange(1, 9, dtype=np.int64)
    out = dsv3.Model.from_tensors(native_config(hf.config), qts, precision="fast").forward(ids)
    assert np.isfinite(out).all()
    name = "model.layers.0.mlp.down_proj.weight"
    codes = np.asarray(qts[name].arrays["weight"]).view(np.uint8).copy()
    codes[3, 40] = 0x7F
    qts[name] = quant.from_checkpoint("fp8_block", codes.view(E4M3), scale=qts[name].arrays["weight_scale_inv"])
    out = dsv3.Model.from_tensors(native_config(hf.config), qts, precision="fast").forward(ids)
    assert np.isnan(out).all()


@needs_avx2
def test_fp8_avx2_gemm_scanned_weight_same_tiles():
    """The AVX2 GEMM (M >= 12) decodes fp8 tiles 32 codes of 8 rows at a time (gemm_avx2.c, pack_fp8_32), with the
    NaN-code fix-up unless the weight was scanned free of them: both give bitwise the results of each other (and
    the float64 reference within 1e-5 * T), for K with 32-code tails (300, 1000), partial 8-row groups (N = 13),
    scales of every size (1e-30 .. 1e30: |s| >= 2^8 takes a second multiply), both precisions."""
    for k, n in ((256, 13), (300, 40), (1000, 7)):
        for mag in (1e-30, 0.02, 1e30):
            qt = quant.quantize(rnd((n, k), k + n, mag), "fp8_block")
            wd = quant.dequantize(qt).astype(np.float64)
            d = quant.nan_scanned_native(qt)
            for m in (12, 40):
                x = rnd((m, k), m, 1e-6 if mag > 1 else 1.0)
                t = np.abs(x.astype(np.float64)) @ np.abs(wd).T
                for precision in ("exact", "fast"):
                    y = dsv3.ops.linear(x, qt, isa="avx2", precision=precision)
                    np.testing.assert_array_equal(dsv3.ops.linear(x, d, isa="avx2", precision=precision), y)
                    assert np.all(np.abs(y - x.astype(np.float64) @ wd.T) <= 1e-5 * t + 1e-43), (k, n, mag, m)
