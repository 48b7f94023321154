"""AVX2 linear kernels against the scalar reference path, and CPU-independent NaN decoding.

- The AVX2 large-M GEMM (f32 FMA on weight tiles decoded to f32, csrc/linear/gemm_avx2.c) runs from
  AVX2_GEMM_MIN_M rows: every format, odd M/N/K (M not a multiple of the 6-row micro-kernel, N not a
  multiple of the 16/32-column tiles, K not a multiple of 8, of the K group where the format allows
  it, and K spanning several K blocks), bias and bf16 x, against the scalar kernels (independent
  decode: the format table's code_row) and float64 x @ dequantize(W)^T, at the f32 bound 1e-5 * T
  (T = |x| @ |W|^T).
- e4m3 NaN codes (0x7F / 0xFF) in fp8_block weights and in nvfp4 block scales are NaN on every ISA
  and every M path, exactly where `dequantize` and the scalar path put them (issue 9, defect 3)."""
import numpy as np
import ml_dtypes
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib

ISAS = [i for i in ("scalar", "avx2", "avx512") if i in lib.isa_info()[1]]
HAS_AVX2 = "avx2" in ISAS
FORMATS = [("f32", {}), ("bf16", {}), ("fp8_block", {}), ("fp8_block", {"ue8m0": True}), ("nvfp4", {}),
           ("int8", {}), ("int4", {"group": 32}), ("int4", {"group": 128})]
AVX2_GEMM_MIN_M = 12  # csrc/linear/linear.c: GEMM_MIN_M_AVX2
# M values on the AVX2 GEMM path: micro-kernel tails 1..5 rows after full 6-row tiles, and one exact multiple
GEMM_MS = (AVX2_GEMM_MIN_M, 17, 40, 67, 72)


def rnd(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def tol(x, wd, rel=1e-5):
    return rel * (np.abs(x.astype(np.float64)) @ np.abs(wd.astype(np.float64)).T) + 1e-30


def shapes_for(fmt, params):
    """(n, k) pairs: N tails (1, 13, 45, 77 columns), K tails (not a multiple of 8, of the group), K over
    several 256-wide K blocks. nvfp4 needs K % 16 == 0, int4 an even K."""
    if fmt == "nvfp4":
        return [(45, 272), (13, 16), (77, 784)]
    if fmt == "int4":
        return [(45, 300), (13, 34), (77, 778)]  # 300 = 2 * 128 + 44, 778 = 24 * 32 + 10
    return [(45, 300), (13, 13), (77, 777), (1, 64)]


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2 (dsv3.cpu_info())")
@pytest.mark.parametrize("fmt,params", FORMATS, ids=lambda v: str(v))
def test_avx2_gemm_matches_scalar_and_float64(fmt, params):
    for si, (n, k) in enumerate(shapes_for(fmt, params)):
        w = rnd((n, k), 100 + si, 0.05)
        qt = quant.quantize(w, fmt, **params)
        wd = quant.dequantize(qt)
        bias = rnd((n,), 200 + si)
        for m in GEMM_MS:
            x = rnd((m, k), 300 + m)
            ref = x.astype(np.float64) @ wd.astype(np.float64).T + bias
            ys = dsv3.ops.linear(x, qt, bias=bias, isa="scalar")
            y = dsv3.ops.linear(x, qt, bias=bias, isa="avx2")
            assert y.shape == (m, n) and y.dtype == np.float32
            bnd = tol(x, wd)
            assert np.all(np.abs(y - ref) <= bnd), (fmt, n, k, m, np.abs(y - ref).max())
            assert np.all(np.abs(y - ys) <= 2 * bnd), (fmt, n, k, m)
            # bf16 x: exactly the f32 result of the widened x (the GEMM reads x in f32)
            xb = x.astype(ml_dtypes.bfloat16)
            np.testing.assert_array_equal(dsv3.ops.linear(xb, qt, bias=bias, isa="avx2"),
                                          dsv3.ops.linear(xb.astype(np.float32), qt, bias=bias, isa="avx2"))


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2 (dsv3.cpu_info())")
@pytest.mark.parametrize("fmt,params", [("bf16", {}), ("fp8_block", {}), ("int4", {"group": 128})],
                         ids=lambda v: str(v))
def test_avx2_gemm_rows_and_threads_independent(fmt, params):
    """Every y element is one lane's fixed-order sum: a row's result does not depend on M (which
    micro-kernel tail it fell in) nor on the thread count."""
    n, k = 70, 600
    qt = quant.quantize(rnd((n, k), 7, 0.05), fmt, **params)
    x = rnd((67, k), 8)
    y = dsv3.ops.linear(x, qt, isa="avx2")
    np.testing.assert_array_equal(y[:40], dsv3.ops.linear(x[:40], qt, isa="avx2"))
    np.testing.assert_array_equal(y[:AVX2_GEMM_MIN_M], dsv3.ops.linear(x[:AVX2_GEMM_MIN_M], qt, isa="avx2"))
    old = dsv3.get_num_threads()
    try:
        for t in (1, 2, 3):
            dsv3.set_num_threads(t)
            np.testing.assert_array_equal(dsv3.ops.linear(x, qt, isa="avx2"), y)
    finally:
        dsv3.set_num_threads(old)


def nan_weights():
    """fp8_block weights and nvfp4 weights with e4m3 NaN codes (both signs), at vector and K-tail
    columns; returns [(name, qt, rows that must be NaN)]."""
    out = []
    for k in (300, 256):
        qt = quant.quantize(rnd((40, k), 41, 0.05), "fp8_block")
        codes = qt.arrays["weight"].view(np.uint8)
        codes[3, 5] = 0x7F
        codes[17, k - 1] = 0xFF
        codes[30, 130] = 0xFF
        out.append((f"fp8_block K={k}", qt, [3, 17, 30]))
    for k in (272, 256):
        qt = quant.quantize(rnd((40, k), 42, 0.05), "nvfp4")
        scales = qt.arrays["weight_scale"].view(np.uint8)
        scales[5, 0] = 0x7F
        scales[20, k // 16 - 1] = 0xFF
        scales[33, 9] = 0x7F
        out.append((f"nvfp4 K={k}", qt, [5, 20, 33]))
    return out


@pytest.mark.parametrize("case", range(4))
def test_e4m3_nan_codes_are_nan_on_every_isa(case):
    """Issue 9 defect 3: AVX2 (and the AVX-512 f32 decoders) read the e4m3 NaN codes as +-480; the
    scalar path and dequantize give NaN. Every ISA and every M path must give NaN in exactly the
    output columns whose weight row holds a NaN code, and agree with scalar elsewhere."""
    name, qt, rows = nan_weights()[case]
    wd = quant.dequantize(qt)
    n, k = wd.shape
    bad = np.zeros(n, bool)
    bad[rows] = True
    assert np.array_equal(np.isnan(wd).any(1), bad), name  # the reference agrees on where NaN is
    wfin = np.where(np.isnan(wd), 0, wd)
    modes = ["weight_only", "dynamic"] if name.startswith("fp8") else ["weight_only"]
    for m in (1, 3, 5, 24, 40, 67):
        x = rnd((m, k), 50 + m)
        for mode in modes:
            ys = dsv3.ops.linear(x, qt, mode=mode, isa="scalar")
            assert np.array_equal(np.isnan(ys), np.broadcast_to(bad, ys.shape)), (name, m, mode)
            for isa in ISAS[1:]:
                y = dsv3.ops.linear(x, qt, mode=mode, isa=isa)
                assert np.array_equal(np.isnan(y), np.isnan(ys)), (name, m, mode, isa)
                rel = 8e-3 if isa == "avx512" and mode == "weight_only" and m >= 24 else 1e-5
                assert np.all(np.abs(y[:, ~bad] - ys[:, ~bad]) <= 2 * tol(x, wfin, rel)[:, ~bad]), (name, m, isa)


@pytest.mark.parametrize("fmt,params", [("fp8_block", {}), ("nvfp4", {}), ("int4", {"group": 32})],
                         ids=lambda v: str(v))
def test_extreme_scales_every_path(fmt, params):
    """Scales near the ends of the f32 range: the raw decoders (value / RAW_SCALE, the factor folded into
    the scale) must hand over to the exact decoders wherever folding would overflow or lose bits to a
    subnormal, on the small-M (M = 1 with its extra FMA chains, M = 3) and GEMM paths."""
    for mag in (1e-36, 1e-30, 1e30):
        w = rnd((40, 512), 5, mag)
        qt = quant.quantize(w, fmt, **params)
        wd = quant.dequantize(qt)
        assert np.all(np.isfinite(wd))
        for m in (1, 3, 40):
            x = rnd((m, 512), 6 + m, 1e-6 if mag > 1 else 1.0)
            ref = x.astype(np.float64) @ wd.astype(np.float64).T
            for isa in ISAS:
                y = dsv3.ops.linear(x, qt, isa=isa)
                rel = 8e-3 if isa == "avx512" and m >= 24 else 1e-5
                # absolute slack for results in the f32 subnormal range (products below 2^-126 round there)
                assert np.all(np.abs(y - ref) <= tol(x, wd, rel) + 1e-43), (fmt, mag, m, isa, np.abs(y - ref).max())


@pytest.mark.skipif(not HAS_AVX2, reason="needs AVX2")
@pytest.mark.parametrize("fmt,precision", [("f32", "exact"), ("f32", "fast"), ("bf16", "exact"), ("bf16", "fast"),
                                            ("int8", "exact")])  # int8 fast: the Q8 kernels (dot_q8_avx2.c)
def test_one_group_walk_rows_are_bitwise_single_rows(fmt, precision):
    """The one-group formats' AVX2 small-M walk (gemv_template.h gemv_onegroup: four FMA chains per row; tiles
    of 1 or 4 weight rows at M = 1, of 2 rows of x at M > 1): every row of every M below the GEMM (1..11), and
    every weight row of a 4-row tile (N = 11: tiles and a remainder; K > 2048 takes them), is bit for bit that
    row computed alone; K tails of 1-3 vectors and of K % 8 != 0 elements; and within the f32 bound of
    float64 x @ dequantize(W)^T."""
    for k in (37, 56, 1000, 2600):
        qt = quant.quantize(rnd((11, k), 61, 0.05), fmt)
        wd = quant.dequantize(qt).astype(np.float64)
        bias = rnd((11,), 62)
        x = rnd((AVX2_GEMM_MIN_M - 1, k), 63)
        single = np.stack([dsv3.ops.linear(x[r:r + 1], qt, bias=bias, isa="avx2", precision=precision)[0]
                           for r in range(len(x))])
        ref = x.astype(np.float64) @ wd.T + bias
        assert np.all(np.abs(single - ref) <= tol(x, wd) + 1e-6 * np.abs(bias)), (fmt, k)
        for m in range(2, len(x) + 1):
            np.testing.assert_array_equal(dsv3.ops.linear(x[:m], qt, bias=bias, isa="avx2", precision=precision),
                                          single[:m], err_msg=f"{fmt} {precision} k={k} m={m}")
        for r in range(11):
            yr = dsv3.ops.linear(x[:1], quant.quantize(rnd((11, k), 61, 0.05)[r:r + 1], fmt), bias=bias[r:r + 1],
                                 isa="avx2", precision=precision)
            np.testing.assert_array_equal(yr[0, 0], single[0, r], err_msg=f"{fmt} {precision} k={k} row {r}")
