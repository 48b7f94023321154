"""dsv3.ops.linear over every format and ISA.

References and tolerances (relative to the |x||w| scale, i.e. T = |x| @ |W|^T per output):
- weight_only vs float64 x @ dequantize(W)^T: |y - ref| <= 1e-5 * T (fp32 FMA paths: per-group
  partial sums, fixed order); the large-M AVX-512 path (M >= 32; fp8_block M >= 24) rounds x to bf16 before vdpbf16ps,
  bounded by 2^-8 * T, checked at 8e-3 * T.
- every ISA vs scalar: same bounds (the summation order differs: SIMD lanes vs sequential).
- fp8 dynamic vs a numpy re-implementation of DeepSeek act_quant + fp8_gemm: 1e-5 * T.
- int8 dynamic vs numpy integer arithmetic: exact (int32 dots, same float32 epilogue).
- bf16 x gives exactly the result of x.astype(float32); thread count never changes a bit."""
import sys

import numpy as np
import ml_dtypes
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib

ISAS = [i for i in ("scalar", "avx2", "avx512") if i in lib.isa_info()[1]]
FORMATS = [("f32", {}), ("bf16", {}), ("fp8_block", {}), ("fp8_block", {"ue8m0": True}), ("nvfp4", {}),
           ("int8", {}), ("int4", {"group": 32}), ("int4", {"group": 128})]
BF16 = ml_dtypes.bfloat16


def rnd(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def kfor(fmt, k):
    return k // 16 * 16 if fmt == "nvfp4" else k


def gemm_min_m(fmt):
    """First M at which the AVX-512 weight-only path uses the bf16 GEMM (csrc/linear/linear.c)."""
    return 24 if fmt == "fp8_block" else 32


def bound(x, wd, isa, m, fmt=None):
    t = np.abs(x.astype(np.float64)) @ np.abs(wd.astype(np.float64)).T
    rel = 8e-3 if (isa == "avx512" and m >= gemm_min_m(fmt)) else 1e-5
    return rel * t + 1e-30


@pytest.mark.parametrize("fmt,params", FORMATS, ids=lambda v: str(v))
@pytest.mark.parametrize("n,k", [(576, 300), (1, 576), (77, 1024), (9, 2100)])
def test_weight_only_vs_float64(fmt, params, n, k):
    k = kfor(fmt, k)
    w = rnd((n, k), 1, 0.05)
    qt = quant.quantize(w, fmt, **params)
    wd = quant.dequantize(qt)
    for m in (1, 3, 16, 17, 24, 64):
        x = rnd((m, k), m)
        ref = x.astype(np.float64) @ wd.astype(np.float64).T
        for isa in ISAS:
            y = dsv3.ops.linear(x, qt, isa=isa)
            assert y.dtype == np.float32 and y.shape == (m, n)
            err = np.abs(y - ref)
            assert np.all(err <= bound(x, wd, isa, m, fmt)), (fmt, m, isa, err.max())


@pytest.mark.parametrize("fmt,params", FORMATS, ids=lambda v: str(v))
def test_isa_paths_agree_with_scalar(fmt, params):
    k = kfor(fmt, 300)
    w = rnd((130, k), 2, 0.05)
    qt = quant.quantize(w, fmt, **params)
    wd = quant.dequantize(qt)
    for m in (1, 5, 40):
        x = rnd((m, k), 7 + m)
        ys = dsv3.ops.linear(x, qt, isa="scalar")
        for isa in ISAS[1:]:
            y = dsv3.ops.linear(x, qt, isa=isa)
            assert np.all(np.abs(y - ys) <= 2 * bound(x, wd, isa, m, fmt)), (isa, m)


def ref_act_quant_fp8_gemm(x, qt):
    """DeepSeek act_quant (s = max(amax, 1e-4)/448, e4m3 RNE per token and 128-wide group) +
    fp8_gemm (fp32 group dots, * s_a * s_w, accumulated over groups)."""
    q, s = qt.arrays["weight"].astype(np.float32), qt.arrays["weight_scale_inv"]
    m, k = x.shape
    n = q.shape[0]
    y = np.zeros((m, n), np.float32)
    for g in range(-(-k // 128)):
        xg = x[:, g * 128:(g + 1) * 128]
        sa = np.maximum(np.abs(xg).max(1), np.float32(1e-4)) / np.float32(448)
        xq = (xg / sa[:, None]).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        dot = xq @ q[:, g * 128:(g + 1) * 128].T
        sw = np.repeat(s[:, g], 128)[:n]
        y += dot * sa[:, None] * sw[None, :]
    return y, None


@pytest.mark.parametrize("n,k", [(576, 300), (130, 256), (1, 576)])
def test_fp8_dynamic_matches_deepseek(n, k):
    w = rnd((n, k), 3, 0.05)
    qt = quant.quantize(w, "fp8_block")
    wd = quant.dequantize(qt)
    for m in (1, 4, 17):
        x = rnd((m, k), 11 * m)
        ref, _ = ref_act_quant_fp8_gemm(x, qt)
        assert not np.allclose(ref, x @ wd.T, rtol=1e-6, atol=0)  # activation quantisation is visible
        for isa in ISAS:
            y = dsv3.ops.linear(x, qt, mode="dynamic", isa=isa)
            assert np.all(np.abs(y - ref) <= 1e-5 * (np.abs(x) @ np.abs(wd).T) + 1e-30), isa


@pytest.mark.parametrize("n,k", [(576, 300), (77, 1024), (1, 576)])
def test_int8_dynamic_exact(n, k):
    w = rnd((n, k), 4, 0.05)
    qt = quant.quantize(w, "int8")
    bias = rnd((n,), 9)
    for m in (1, 3, 17):
        x = rnd((m, k), 13 * m)
        amax = np.abs(x).max(1)
        sx = np.where(amax == 0, np.float32(1), amax / np.float32(127)).astype(np.float32)
        qx = np.clip(np.rint(x / sx[:, None]), -127, 127).astype(np.int64)
        dot = qx @ qt.arrays["weight"].astype(np.int64).T
        ref = (dot.astype(np.float32) * sx[:, None]) * qt.arrays["weight_scale"][None, :] + bias
        for isa in ISAS:
            y = dsv3.ops.linear(x, qt, bias=bias, mode="dynamic", isa=isa)
            np.testing.assert_array_equal(y, ref.astype(np.float32), err_msg=isa)


@pytest.mark.parametrize("fmt,params", FORMATS[::2], ids=lambda v: str(v))
def test_bf16_input_and_bias(fmt, params):
    k = kfor(fmt, 300)
    qt = quant.quantize(rnd((50, k), 5, 0.05), fmt, **params)
    bias = rnd((50,), 6)
    for m in (2, 40):
        xb = rnd((m, k), 8).astype(BF16)
        for isa in ISAS:
            y = dsv3.ops.linear(xb, qt, bias=bias, isa=isa)
            y32 = dsv3.ops.linear(xb.astype(np.float32), qt, isa=isa)
            np.testing.assert_array_equal(y, (y32 + bias).astype(np.float32))


def test_plain_arrays_and_leading_dims():
    w = rnd((20, 64), 1)
    x = rnd((2, 3, 64), 2)
    y = dsv3.ops.linear(x, w)
    assert y.shape == (2, 3, 20)
    x2 = x.reshape(6, 64)
    ref = x2.astype(np.float64) @ w.astype(np.float64).T
    assert np.all(np.abs(y.reshape(6, 20) - ref) <= bound(x2, w, None, 6))
    wb = w.astype(BF16).astype(np.float32)
    yb = dsv3.ops.linear(x[0], w.astype(BF16))
    assert np.all(np.abs(yb - x[0].astype(np.float64) @ wb.astype(np.float64).T) <= bound(x[0], wb, None, 3))


@pytest.mark.parametrize("fmt,params", FORMATS, ids=lambda v: str(v))
def test_threads_do_not_change_results(fmt, params):
    k = kfor(fmt, 576)
    qt = quant.quantize(rnd((200, k), 3, 0.05), fmt, **params)
    old = dsv3.get_num_threads()
    try:
        for m in (1, 16, 40):
            x = rnd((m, k), m)
            dsv3.set_num_threads(1)
            y1 = dsv3.ops.linear(x, qt)
            dsv3.set_num_threads(2)
            y2 = dsv3.ops.linear(x, qt)
            np.testing.assert_array_equal(y1, y2)
    finally:
        dsv3.set_num_threads(old)


def test_bad_inputs():
    qt = quant.quantize(rnd((32, 64), 1), "fp8_block")
    x = rnd((2, 64), 2)
    with pytest.raises(TypeError, match="x must have dtype float32 or bfloat16"):
        dsv3.ops.linear(x.astype(np.float64), qt)
    with pytest.raises(ValueError, match="x has 63 columns but the weight has K = 64"):
        dsv3.ops.linear(rnd((2, 63), 2), qt)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        dsv3.ops.linear(rnd((2, 128), 2)[:, ::2], qt)
    with pytest.raises(ValueError, match=r"bias: expected shape \[32\], got \[31\]"):
        dsv3.ops.linear(x, qt, bias=rnd((31,), 3))
    with pytest.raises(ValueError, match="mode must be"):
        dsv3.ops.linear(x, qt, mode="static")
    with pytest.raises(ValueError, match="dynamic' supports fp8_block and int8"):
        dsv3.ops.linear(x, quant.quantize(rnd((32, 64), 1), "int4", group=32), mode="dynamic")
    with pytest.raises(ValueError, match="isa|sse9"):
        dsv3.ops.linear(x, qt, isa="sse9")
    bad = qt.to_native()
    bad["scale"] = np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match=r"weight\['scale'\]: expected shape \[1, 1\], got \[2, 1\]"):
        lib.linear(x, bad)
    bad = dict(qt.to_native(), format="fp5")
    with pytest.raises(ValueError, match="unknown weight format 'fp5'"):
        lib.linear(x, bad)
    bad = dict(quant.quantize(rnd((32, 64), 1), "int4", group=32).to_native(), group=64)
    with pytest.raises(ValueError, match="group must be 32 or 128, got 64"):
        lib.linear(x, bad)
    bad = dict(qt.to_native(), data=qt.arrays["weight"].view(np.int8))
    with pytest.raises(TypeError, match=r"weight\['data'\] must have dtype float8_e4m3fn or uint8"):
        lib.linear(x, bad)


def test_no_reference_leaks():
    qt = quant.quantize(rnd((40, 128), 1), "int8")
    native = qt.to_native()
    x, bias = rnd((3, 128), 2), rnd((40,), 3)
    objs = [x, bias, native, native["data"], native["scale"]]
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(200):
        lib.linear(x, native, bias)
        lib.linear(x, native, bias, "dynamic")
        lib.dequantize(native)
        try:
            lib.linear(x[:, :64].copy(), native)
        except ValueError:
            pass
    assert [sys.getrefcount(o) for o in objs] == before


@pytest.mark.parametrize("fmt,params", [("fp8_block", {}), ("nvfp4", {}), ("int4", {"group": 32})],
                         ids=lambda v: str(v))
def test_huge_and_tiny_scales(fmt, params):
    """Scales far from 1 (weights ~1e5 and ~1e-5): the raw-decode fast path must fall back exactly."""
    for mag in (1e5, 1e-5):
        w = rnd((40, 256), 3, mag)
        qt = quant.quantize(w, fmt, **params)
        wd = quant.dequantize(qt)
        x = rnd((2, 256), 4)
        ref = x.astype(np.float64) @ wd.astype(np.float64).T
        for isa in ISAS:
            y = dsv3.ops.linear(x, qt, isa=isa)
            assert np.all(np.isfinite(y))
            assert np.all(np.abs(y - ref) <= bound(x, wd, isa, 2)), (mag, isa)


@pytest.mark.parametrize("wdt,ms,rel", [(np.float32, (8, 40, 130), 1e-5), (BF16, (32, 130), 8e-3)],
                         ids=["f32", "bf16"])
def test_large_m_onednn_route(monkeypatch, wdt, ms, rel):
    """With DSV3_LINEAR_ONEDNN=1, f32 weights with M >= 8 and bf16 weights with M >= 32 on the active
    path go to oneDNN when it loads: same accuracy bound as our kernels for that M, the thread count
    changes no bit on this shape, bias added exactly as elsewhere; without it (the default) dsv3's own
    kernel runs (bitwise equal to the result with the active ISA named, which DSV3_ISA may force below the
    CPU's best)."""
    from dsv3 import onednn
    w, bias = rnd((300, 1100), 21, 0.05).astype(wdt), rnd((300,), 22)
    wd = w.astype(np.float32)
    old = dsv3.get_num_threads()
    try:
        for m in ms:
            x = rnd((m, 1100), 23 + m)
            monkeypatch.setenv("DSV3_LINEAR_ONEDNN", "1")
            ref = x.astype(np.float64) @ wd.astype(np.float64).T
            dsv3.set_num_threads(1)
            y1 = dsv3.ops.linear(x, w)
            dsv3.set_num_threads(2)
            y2 = dsv3.ops.linear(x, w)
            np.testing.assert_array_equal(y1, y2)
            assert np.all(np.abs(y2 - ref) <= rel * (np.abs(x) @ np.abs(wd).T))
            np.testing.assert_array_equal(dsv3.ops.linear(x, w, bias=bias), (y2 + bias).astype(np.float32))
            np.testing.assert_array_equal(dsv3.ops.linear(x.astype(BF16), w),
                                          dsv3.ops.linear(x.astype(BF16).astype(np.float32), w))
            monkeypatch.delenv("DSV3_LINEAR_ONEDNN")
            own = dsv3.ops.linear(x, w)
            np.testing.assert_array_equal(own, dsv3.ops.linear(x, w, isa=dsv3.cpu_info()["isa"]))
            if onednn.supports(w.dtype):  # else (bf16 below AVX-512) the route falls back to our kernels
                np.testing.assert_array_equal(y2, lib.onednn_linear(x, w))
                assert not np.array_equal(y2, own)  # the route is really taken
    finally:
        dsv3.set_num_threads(old)


@pytest.mark.parametrize("fmt,group", [("nvfp4", 16), ("int4", 32), ("int4", 128)])
def test_nibble_kernel_block_layout(fmt, group):
    """4-bit kernels (128-code vpshufb blocks, x permuted per block): one non-zero x column at a
    time must pick exactly that column of the dequantised weight, on every ISA and for columns
    in the full blocks and in the K tail."""
    k = 272  # two 128-blocks + a 16-column tail
    params = {} if fmt == "nvfp4" else {"group": group}
    qt = quant.quantize(rnd((9, k), 31, 0.05), fmt, **params)
    wd = quant.dequantize(qt)
    for col in (0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 100, 127, 128, 129, 200, 255, 256, 271):
        x = np.zeros((1, k), np.float32)
        x[0, col] = 2.0
        for isa in ISAS:
            np.testing.assert_array_equal(dsv3.ops.linear(x, qt, isa=isa)[0], (2.0 * wd[:, col]).astype(np.float32),
                                          err_msg=f"{fmt} col {col} {isa}")


@pytest.mark.parametrize("fmt,params", [f for f in FORMATS if f[0] != "f32"], ids=lambda v: str(v))
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_decode_row_walk_is_bitwise_the_batch_row(fmt, params, precision):
    """At M = 1 the AVX-512 small-M kernels and every Q8 fast kernel walk the weight rows one after
    another (one sequential stream) where a batch uses 4-row tiles (csrc/linear/gemv_dot_avx512.c,
    rows_sequential; dot_q8_*.c): the per-row arithmetic is the same, so a decode row equals the same
    row of a small batch bit for bit. K = 576 takes the row walk, K = 2560 (exact: 10 KB of x hi + lo
    per row, more than 8 KB and than the row) the 4-row tiles at M = 1 too; N = 11 leaves a partial tile.
    Every ISA: the AVX2 exact small-group kernels (gemv_template.h: four FMA chains for one row, two
    for several) run every row as the one-row walk for this guarantee."""
    paths = list(ISAS)
    for k in (576, 2560):
        qt = quant.quantize(rnd((11, k), 41, 0.05), fmt, **params)
        x = rnd((3, k), 42)
        for isa in paths:
            yb = dsv3.ops.linear(x, qt, isa=isa, precision=precision)
            for r in range(3):
                np.testing.assert_array_equal(dsv3.ops.linear(x[r:r + 1], qt, isa=isa, precision=precision)[0],
                                              yb[r], err_msg=f"{fmt} {precision} k={k} {isa} row {r}")


@pytest.mark.parametrize("fmt", ["f32", "bf16", "int8"])
def test_decode_row_tiles_are_bitwise_single_rows(fmt):
    """Decode (M = 1) with rows long enough that x outgrows the one-row walk (K = 2600: 10 KB of f32 x on
    AVX2, of bf16 hi + lo on AVX-512) reads several weight rows per pass (gemv_template.h gemv_rows_onegroup,
    gemv_dot_avx512.c 4-row tiles); every row must still come out bit for bit as when it is the only row
    (a one-row weight takes the single-row path), with and without bias, on every SIMD path."""
    k, n = 2600, 11
    w = rnd((n, k), 51, 0.05)
    x = rnd((1, k), 52)
    bias = rnd((n,), 53)
    full = quant.quantize(w, fmt)
    for isa in ISAS[1:]:
        for b in (None, bias):
            y = dsv3.ops.linear(x, full, bias=b, isa=isa)
            for r in range(n):
                yr = dsv3.ops.linear(x, quant.quantize(w[r:r + 1], fmt), bias=None if b is None else b[r:r + 1],
                                     isa=isa)
                np.testing.assert_array_equal(y[0, r], yr[0, 0], err_msg=f"{fmt} {isa} row {r}")


@pytest.mark.parametrize("fmt", ["bf16", "fp8_block", "int8"])
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_small_m_tiles_are_bitwise_single_rows(fmt, precision):
    """The AVX-512 small-M kernels tile up to 8 rows of x against 1-4 weight rows, the tile shape chosen
    from M and from how many rows of x fit in L1 (csrc/linear/gemv_dot_avx512.c dot_rows: one pass
    of up to 8 rows over single weight rows, or passes of 2 rows over 4-row tiles); every row of every
    M from 1 to 17 must come out bit for bit as that row alone (batched decode == one at a time).
    K = 640 fits 8 rows (fast) / 6 rows (exact, hi + lo) per pass, K = 2600 only 2 (and a K tail);
    N = 13 leaves partial tiles."""
    if "avx512" not in ISAS:
        pytest.skip("the tiled small-M kernels are AVX-512 only (this CPU has no AVX-512)")
    if precision == "fast" and fmt == "int8":
        pytest.skip("int8 fast mode runs the Q8 kernels (dot_q8_*.c), not these tiles")
    for k in (640, 2600):
        qt = quant.quantize(rnd((13, k), 61, 0.05), fmt)
        x = rnd((17, k), 62)
        single = np.stack([dsv3.ops.linear(x[r:r + 1], qt, isa="avx512", precision=precision)[0] for r in range(17)])
        for m in range(2, 18):
            np.testing.assert_array_equal(dsv3.ops.linear(x[:m], qt, isa="avx512", precision=precision), single[:m],
                                          err_msg=f"{fmt} {precision} k={k} m={m}")
