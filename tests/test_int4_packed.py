"""The packed int4 layout (csrc/linear/int4p.h; dsv3_weight.packed) and the kernels reading it.

- The layout: lib.pack_weight against a numpy re-statement of int4p.h (16-row groups, chunks of 8 codes,
  low nibbles = codes 8c..8c+3 + 8, high = 8c+4..8c+7 + 8, scales [group][ngrp][16], zero padding).
- Small-M kernels (dot_q8_int4p_*.c): every SIMD ISA bitwise equal to the scalar twin (same f32 steps per
  lane), on random codes including -8 and 7, K tails (K % 32 != 0, K % 8 != 0), N not a multiple of 16,
  group 32 and 128, M = 1..13; against a float64 reference of the Q8 definition (act_q8.h) at the fast mode's
  bound 1e-5 * T (T = |x| @ |W|^T) and against the stored-layout fast kernel at the same bound.
- Rows independent of M, of the thread count and of the rows beside them (the batched engine's contract).
- Large M (AVX2 GEMM from 12 rows, AVX-512 from 32): the tile decoders read the packed copy: bitwise the
  same as from the stored layout.
- A model loaded in the fast precision packs its int4 weights (DSV3_PACK=0 keeps the stored layout): close
  to the unpacked model and within the fast bounds against transformers fp32 (tests/test_fast_mode.py's
  accuracy test runs packed by default); exact precision never packs.
"""
import os

import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib
from test_fast_mode import q8_linear_reference, scale_t

ISAS = [i for i in ("scalar", "avx2", "avx512") if i in lib.isa_info()[1]]
SIMD = [i for i in ISAS if i != "scalar"]
GEMM_MIN = {"avx2": 12, "avx512": 32}


def rnd(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def random_int4(n, k, group, seed):
    """An int4 QuantizedTensor with uniformly random codes in [-8, 7] (rows 0 and 1 all -8 and all 7)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-8, 8, (n, k))
    codes[0] = -8
    if n > 1:
        codes[1] = 7
    nib = (codes & 15).astype(np.uint8)
    data = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, (n, (k + group - 1) // group)).astype(np.float32)
    return quant.from_checkpoint("int4", data, scale=scale, group=group), codes


def layout_reference(codes, scale, group):
    """int4p.h in numpy: (codes u8 [NG, K8, 16, 4], scales f32 [NG, ngrp, 16])."""
    n, k = codes.shape
    ng, k8 = (n + 15) // 16, (k + 7) // 8
    c = np.zeros((ng * 16, k8 * 8), np.int64)
    c[:n, :k] = codes
    c = (c + 8).reshape(ng, 16, k8, 8).transpose(0, 2, 1, 3)  # [NG, K8, 16, 8]
    packed = (c[..., :4] | (c[..., 4:] << 4)).astype(np.uint8)
    s = np.zeros((ng * 16, scale.shape[1]), np.float32)
    s[:n] = scale
    return packed, s.reshape(ng, 16, -1).transpose(0, 2, 1)


def packed(qt):
    return quant.packed_native(qt)


def fast(x, w, isa, bias=None):
    return dsv3.ops.linear(x, w, bias=bias, isa=isa, precision="fast")


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("n,k", [(16, 256), (37, 200), (5, 1002), (33, 130)])
def test_layout_is_the_stated_one(group, n, k):
    qt, codes = random_int4(n, k, group, 1)
    buf = lib.pack_weight(qt.to_native())
    want_codes, want_scales = layout_reference(codes, np.asarray(qt.arrays["weight_scale"]), group)
    cb = want_codes.size
    pad = (cb + 63) // 64 * 64
    assert buf.size == pad + want_scales.size * 4
    np.testing.assert_array_equal(buf[:cb].reshape(want_codes.shape), want_codes)
    assert np.all(buf[cb:pad] == 0x88)
    np.testing.assert_array_equal(buf[pad:].view(np.float32).reshape(want_scales.shape), want_scales)
    # the format table's reference decode reads the packed copy the same
    np.testing.assert_array_equal(quant.dequantize(qt), lib.dequantize(packed(qt)))


SHAPES = [(37, 200), (16, 256), (5, 1002), (33, 130), (40, 512), (3, 40)]


@pytest.mark.parametrize("group", [32, 128])
def test_simd_kernels_bitwise_equal_the_scalar_twin(group):
    for i, (n, k) in enumerate(SHAPES):
        qt, _ = random_int4(n, k, group, 10 + i)
        w = packed(qt)
        bias = rnd((n,), 20 + i)
        x = rnd((13, k), 30 + i)
        x[0, :32] = 0.0  # a zero block
        for m in range(1, 14):
            ys = fast(x[:m], w, "scalar", bias)
            for isa in SIMD:
                if m >= GEMM_MIN[isa]:
                    continue
                np.testing.assert_array_equal(fast(x[:m], w, isa, bias), ys, err_msg=f"{isa} g{group} {n}x{k} m={m}")


@pytest.mark.parametrize("group", [32, 128])
def test_packed_matches_the_definition_and_the_stored_layout(group):
    for i, (n, k) in enumerate(SHAPES):
        qt, _ = random_int4(n, k, group, 40 + i)
        w = packed(qt)
        wd = quant.dequantize(qt)
        for m in (1, 2, 5, 11):
            x = rnd((m, k), 50 + i + m)
            ref = q8_linear_reference(x, wd)
            t = scale_t(x, wd)
            for isa in ISAS:
                y = fast(x, w, isa)
                assert np.all(np.abs(y - ref) <= 1e-5 * t + 1e-6), (isa, group, n, k, m)
                assert np.all(np.abs(y - fast(x, qt, isa)) <= 2e-5 * t + 1e-6), (isa, group, n, k, m)


def test_rows_independent_of_m_threads_and_neighbours():
    qt, _ = random_int4(50, 640, 32, 60)
    w = packed(qt)
    x = rnd((11, 640), 61)
    before = dsv3.get_num_threads()
    try:
        for isa in ISAS:
            dsv3.set_num_threads(1)
            y1 = fast(x, w, isa)
            dsv3.set_num_threads(2)
            np.testing.assert_array_equal(fast(x, w, isa), y1, err_msg=isa)
            for r in range(11):
                np.testing.assert_array_equal(fast(x[r:r + 1], w, isa)[0], y1[r], err_msg=f"{isa} row {r}")
            # a single output row alone (one row of the weight) is the same row of the 16-row group
            sub = quant.from_checkpoint("int4", np.asarray(qt.arrays["weight"])[17:18].copy(),
                                        scale=np.asarray(qt.arrays["weight_scale"])[17:18].copy(), group=32)
            np.testing.assert_array_equal(fast(x, packed(sub), isa)[:, 0], y1[:, 17], err_msg=isa)
    finally:
        dsv3.set_num_threads(before)


@pytest.mark.parametrize("group", [32, 128])
def test_large_m_reads_the_packed_copy(group):
    """The GEMM paths decode tiles from the packed layout: the same tile, so bitwise the stored layout's result."""
    for n, k in ((37, 200), (40, 512)):
        qt, _ = random_int4(n, k, group, 70)
        w = packed(qt)
        for isa in SIMD:
            m = GEMM_MIN[isa] + 3
            x = rnd((m, k), 71)
            np.testing.assert_array_equal(fast(x, w, isa), fast(x, qt, isa), err_msg=f"{isa} g{group} {n}x{k}")


def test_packed_weight_refuses_exact_and_bad_buffers():
    qt, _ = random_int4(20, 64, 32, 80)
    w = packed(qt)
    x = rnd((1, 64), 81)
    with pytest.raises(ValueError, match="packed"):
        dsv3.ops.linear(x, w, precision="exact")
    bad = dict(w)
    bad["packed"] = w["packed"][:-4]
    with pytest.raises(ValueError, match="expected"):
        dsv3.ops.linear(x, bad, precision="fast")
    with pytest.raises(ValueError, match="no packed layout"):
        lib.pack_weight(quant.quantize(rnd((4, 64), 82), "int8").to_native())


# ---- the model: packing at load -------------------------------------------------------------------------------
def _model_logits(cfg, qts, precision, seqs, pack):
    old = os.environ.get("DSV3_PACK")
    os.environ["DSV3_PACK"] = "1" if pack else "0"
    try:
        m = dsv3.Model.from_tensors(cfg, qts, precision=precision)
    finally:
        if old is None:
            del os.environ["DSV3_PACK"]
        else:
            os.environ["DSV3_PACK"] = old
    out = []
    for ids in seqs:
        m.reset()
        out.append(m.forward(ids))
    return np.stack(out)


@pytest.mark.parametrize("group", [32, 128])
def test_model_packs_int4_in_the_fast_precision_only(group):
    pytest.importorskip("transformers")
    from dsv3 import parity_hf
    from hf_reference import native_config
    from test_fast_mode import _is_linear, _small_config

    cfg = _small_config()
    hf = parity_hf.build_model(cfg)
    state = parity_hf.random_state_dict(hf, 0)
    state["lm_head.weight"] = state["lm_head.weight"] * np.float32(4.0)
    canon = parity_hf.hf_to_canonical(state)
    qts = {k: (quant.quantize(v, "int4", group=group) if _is_linear(k) else v) for k, v in canon.items()}
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, cfg.vocab_size, 5).astype(np.int64), rng.integers(0, cfg.vocab_size, 5).astype(np.int64)]
    ncfg = native_config(hf.config)
    yp = _model_logits(ncfg, qts, "fast", seqs, True)
    yn = _model_logits(ncfg, qts, "fast", seqs, False)
    assert not np.array_equal(yp, yn)  # packing is active (other f32 rounding than the stored-layout kernels)
    # same accuracy class: the top-1 of clear winners agrees, logits close (std ~8)
    srt = np.sort(yn, axis=-1)
    clear = srt[..., -1] - srt[..., -2] >= 1.0
    assert np.array_equal(yp.argmax(-1)[clear], yn.argmax(-1)[clear])
    assert np.median(np.abs(yp - yn)) < 0.05
    # exact precision never packs: DSV3_PACK changes nothing
    np.testing.assert_array_equal(_model_logits(ncfg, qts, "exact", seqs, True),
                                  _model_logits(ncfg, qts, "exact", seqs, False))
