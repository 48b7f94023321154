"""Small-M tiles whose rows must be bitwise the row alone (batched decode == one sequence at a time), for every M
below the AVX2 GEMM (1..11), whichever tile computes a row:

- the one-group formats' walk (csrc/linear/gemv_template.h, f32 / bf16 / int8 weight-only; on AVX2 also bf16 in
  the fast precision, which keeps f32 x there): M = 1 whole-K tiles of 1 or 4 weight rows; M = 2, 3 with x within
  16 KB whole-K tiles of 2 rows of x by one weight row; beyond, K segments of 64 vectors, tiles of 4 x 2, 3 x 2,
  2 x 4, 1 x 4 and their column remainders (N = 11: items of 4 columns and one of 3), chains advanced segment by
  segment. AVX-512 also runs this walk for f32 weights;
- int8 in the fast precision on AVX2 (csrc/linear/dot_q8_avx2.c, Q8 activations): M = 1 one row after another;
  M > 1 segments of 32 blocks of 32 columns, tiles of 4 x 2 .. 1 x 1.

K values put several segments and a partial last one behind a K tail (1-7 elements past the vectors, 5-31
columns past the Q8 blocks); thread counts 1 and 2 give the same bits; rows permuted land in other tiles. Against
the scalar twin (independent decode, sequential sum) at the f32 bound 1e-5 * |x| @ |W|^T, and (exact) float64
x @ dequantize(W)^T at the same bound."""
import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib

ISAS = lib.isa_info()[1]
GEMM_MIN_M_AVX2 = 12  # csrc/linear/linear.c: GEMM_MIN_M_AVX2
CASES = [("avx2", "bf16", "exact"), ("avx2", "bf16", "fast"), ("avx2", "f32", "exact"), ("avx2", "int8", "exact"),
         ("avx512", "f32", "exact"), ("avx2", "int8", "fast")]
# vectors + K tail: 125; 128 + 5; 187 + 4 (M = 2, 3 of these three: x within 16 KB, whole-K tiles); 256 + 5 (4
# segments + tail); 575 + 7 (9 segments)
KS = (1000, 1029, 1500, 2053, 4607)


def rnd(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def threads():
    before = dsv3.get_num_threads()
    yield
    dsv3.set_num_threads(before)


@pytest.mark.parametrize("isa,fmt,precision", CASES, ids=lambda v: str(v))
def test_segmented_tiles_are_bitwise_single_rows(isa, fmt, precision, threads):
    if isa not in ISAS:
        pytest.skip(f"this CPU has no {isa} (dsv3.cpu_info())")
    n = 11
    for k in KS:
        qt = quant.quantize(rnd((n, k), 71, 0.05), fmt)
        wd = quant.dequantize(qt).astype(np.float64)
        bias = rnd((n,), 72)
        x = rnd((GEMM_MIN_M_AVX2 - 1, k), 73)
        dsv3.set_num_threads(1)
        single = np.stack([dsv3.ops.linear(x[r:r + 1], qt, bias=bias, isa=isa, precision=precision)[0]
                           for r in range(len(x))])
        bound = 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(wd).T) + 1e-6 * np.abs(bias)
        if precision == "exact" or fmt != "int8":  # int8 fast: x quantised per 32-block (the twin's definition)
            ref = x.astype(np.float64) @ wd.T + bias
            assert np.all(np.abs(single - ref) <= bound), (fmt, k)
        # the twin: bf16 fast on AVX2 keeps the exact f32 kernel (the scalar fast one rounds x to bf16, AVX-512's)
        scalar = dsv3.ops.linear(x, qt, bias=bias, isa="scalar", precision=precision if fmt == "int8" else "exact")
        assert np.all(np.abs(single - scalar) <= 2 * bound), (fmt, k)
        for nt in (1, 2):
            dsv3.set_num_threads(nt)
            for m in range(2, len(x) + 1):
                np.testing.assert_array_equal(dsv3.ops.linear(x[:m], qt, bias=bias, isa=isa, precision=precision),
                                              single[:m], err_msg=f"{isa} {fmt} {precision} k={k} m={m} threads={nt}")
            # rows of x in another order land in other tiles: each row's bits stay its own
            perm = np.random.default_rng(k).permutation(len(x))
            np.testing.assert_array_equal(dsv3.ops.linear(x[perm], qt, bias=bias, isa=isa, precision=precision),
                                          single[perm], err_msg=f"{isa} {fmt} k={k} permuted threads={nt}")
