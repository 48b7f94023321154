"""The AVX-512 small-M dot kernels (csrc/linear/gemv_dot_avx512.c, dot_rows) against themselves one row at a time.

Batched decode must equal one sequence at a time bit for bit, so a row of x gives the same bits whatever M, whatever
tile computes it (one pass of all M rows against single weight rows, for x up to 16 KB or, at M >= 5, 32 KB except
fp8_block exact; passes of 2-4 rows over 2-4-row tiles beyond), however the tile's sums are reduced (one
_mm512_reduce_add_ps per output in 1-3-output tiles, reduce_add8's transposed tree in larger ones) and whatever the
thread count. The K values put M = 1..16 through every tile choice: K = 1000 (fast: 8 rows of x = 16 KB, exact: 5-8
rows = 20-32 KB), 1984 (fast: 5-8 rows = 20-31 KB, the 32 KB one pass), 2050 (fast: 8 rows just over 32 KB; a K
tail of 2), 2600 (passes of 2 rows, K tail of 40); N = 13 leaves partial tiles. Against the scalar twins (the
summation order differs, so at the bound of tests/test_linear.py / test_fast_mode.py, 1e-5 * |x| @ |W|^T):
dsv3_gemv_*_scalar (exact) and dsv3_fast_bf16hi_scalar (fast, against bf16(x) @ W^T; a K tail beyond the last
full 64-block keeps x in f32 there, bound 2^-8 * |x| @ |W|^T over the tail, as test_fast_mode.py)."""
import ml_dtypes
import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib

ISAS = [i for i in ("scalar", "avx2", "avx512") if i in lib.isa_info()[1]]
KS = (1000, 1984, 2050, 2600)
CASES = [("bf16", "exact"), ("bf16", "fast"), ("fp8_block", "exact"), ("fp8_block", "fast"), ("int8", "exact")]

pytestmark = pytest.mark.skipif("avx512" not in ISAS,
                                reason="the small-M dot kernels are AVX-512 only (this CPU has no AVX-512)")


def rnd(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def xrows(k, m=16):
    """m rows of x: random, with an all-zero row and a row of mixed signs and magnitudes (1e-3 .. 1e3)."""
    x = rnd((m, k), 71)
    x[3] = 0.0
    x[5] *= np.float32(10.0) ** np.random.default_rng(72).integers(-3, 4, k).astype(np.float32)
    return x


@pytest.mark.parametrize("fmt,precision", CASES, ids=lambda v: str(v))
def test_every_m_and_thread_count_is_bitwise_the_single_row(fmt, precision):
    old = dsv3.get_num_threads()
    try:
        for k in KS:
            qt = quant.quantize(rnd((13, k), 73, 0.05), fmt)
            bias = rnd((13,), 74)
            x = xrows(k)
            dsv3.set_num_threads(1)
            single = np.stack([dsv3.ops.linear(x[r:r + 1], qt, bias=bias, isa="avx512", precision=precision)[0]
                               for r in range(16)])
            for threads in (1, 2):
                dsv3.set_num_threads(threads)
                for m in range(1, 17):
                    y = dsv3.ops.linear(x[:m], qt, bias=bias, isa="avx512", precision=precision)
                    assert y.tobytes() == single[:m].tobytes(), f"{fmt} {precision} k={k} m={m} threads={threads}"
    finally:
        dsv3.set_num_threads(old)


@pytest.mark.parametrize("fmt,precision", CASES, ids=lambda v: str(v))
def test_tiles_against_the_scalar_twin(fmt, precision):
    for k in KS:
        qt = quant.quantize(rnd((13, k), 75, 0.05), fmt)
        wd = quant.dequantize(qt).astype(np.float64)
        x = xrows(k)
        xr = x.astype(ml_dtypes.bfloat16).astype(np.float64) if precision == "fast" else x.astype(np.float64)
        kb = k // 64 * 64  # fast mode: the AVX-512 kernels keep x in f32 beyond the last full 64-block
        tail = np.abs(x[:, kb:].astype(np.float64)) @ np.abs(wd[:, kb:]).T if precision == "fast" else 0.0
        bound = 1e-5 * (np.abs(xr) @ np.abs(wd).T) + 2.0 ** -8 * tail + 1e-30
        ys = dsv3.ops.linear(x, qt, isa="scalar", precision=precision)
        for m in (1, 2, 4, 5, 8, 16):
            y = dsv3.ops.linear(x[:m], qt, isa="avx512", precision=precision)
            assert np.all(np.abs(y - ys[:m]) <= bound[:m]), f"{fmt} {precision} k={k} m={m} vs scalar"
            assert np.all(np.abs(y - xr[:m] @ wd.T) <= bound[:m]), f"{fmt} {precision} k={k} m={m}"
