"""Quantisation formats: codes and scales vs independent numpy references written from the specs
(DeepSeek weight quant, NVIDIA ModelOpt nvfp4_tensor.py).

Tolerances: codes must be bit-identical; scales are computed with the same float32 operations as
the reference and must be bit-identical too; dequantize(qt) is code * scale in float32 (exact)."""
import numpy as np
import ml_dtypes
import pytest

import dsv3
from dsv3 import quant

E4M3 = ml_dtypes.float8_e4m3fn
E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def rnd(n, k, seed=0, scale=1.0):
    r = np.random.default_rng(seed)
    w = (r.standard_normal((n, k)) * scale).astype(np.float32)
    w[0, :5] = 0.0
    return w


# ---------------- independent numpy references ----------------
def ref_fp8_block(w, ue8m0=False):
    n, k = w.shape
    nb, kb = -(-n // 128), -(-k // 128)
    s = np.zeros((nb, kb), np.float32)
    q = np.zeros((n, k), E4M3)
    for i in range(nb):
        for j in range(kb):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = np.float32(np.abs(blk).max())
            S = np.float32(1.0) if amax == 0 else amax / np.float32(448.0)
            if ue8m0:
                S = np.float32(2.0 ** np.ceil(np.log2(np.float64(S))))
            s[i, j] = S
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / S).astype(E4M3)
    return q, s


def ref_e2m1_codes(v):
    """ModelOpt _cast_fp4: searchsorted(bounds, |v|) (left), +1 where |v| == bounds[[1, 3, 5]], sign bit."""
    bounds = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5], np.float32)
    a = np.abs(v)
    ordv = np.searchsorted(bounds, a, side="left").astype(np.uint8)
    ordv += np.isin(a, bounds[[1, 3, 5]]).astype(np.uint8)  # 0.75, 1.75, 3.5
    return ((v < 0).astype(np.uint8) << 3) + ordv


def ref_nvfp4(w):
    n, k = w.shape
    s2 = np.float32(np.abs(w).max()) / np.float32(6.0 * 448.0)
    bamax = np.abs(w.reshape(n, k // 16, 16)).max(-1)
    bs = bamax / (np.float32(6.0) * s2)
    bs[bs == 0] = 1.0
    bs = np.maximum(bs, np.float32(2.0 ** -9)).astype(E4M3)
    div = bs.astype(np.float32) * s2
    scaled = (w.reshape(n, k // 16, 16) / div[..., None]).reshape(n, k)
    codes = ref_e2m1_codes(scaled)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, bs, s2


def ref_int(w, group, qmax):
    n, k = w.shape
    ng = -(-k // group)
    s = np.zeros((n, ng), np.float32)
    q = np.zeros((n, k), np.int8)
    for g in range(ng):
        blk = w[:, g * group:(g + 1) * group]
        amax = np.abs(blk).max(1)
        S = np.where(amax == 0, np.float32(1), amax / np.float32(qmax)).astype(np.float32)
        s[:, g] = S
        q[:, g * group:(g + 1) * group] = np.clip(np.rint(blk / S[:, None]), -qmax, qmax)
    return q, s


def pack_int4(q):
    u = (q.astype(np.int16) & 15).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def ref_dequant(qt):
    """Independent decode of the stored arrays (code * scale, float32)."""
    a, (n, k) = qt.arrays, qt.shape
    if qt.fmt == "f32":
        return a["weight"]
    if qt.fmt == "bf16":
        return a["weight"].astype(np.float32)
    if qt.fmt == "fp8_block":
        s = np.repeat(np.repeat(a["weight_scale_inv"], 128, 0), 128, 1)[:n, :k]
        return a["weight"].astype(np.float32) * s
    if qt.fmt == "int8":
        return a["weight"].astype(np.float32) * a["weight_scale"][:, None]
    lo, hi = a["weight"] & 15, a["weight"] >> 4
    nib = np.stack([lo, hi], -1).reshape(n, k)
    if qt.fmt == "nvfp4":
        sc = a["weight_scale"].astype(np.float32) * np.float32(a["weight_scale_2"])
        return (E2M1_VALUES[nib].reshape(n, k // 16, 16) * sc[..., None]).reshape(n, k)
    g = qt.params["group"]
    codes = np.where(nib >= 8, nib.astype(np.int16) - 16, nib).astype(np.float32)
    return codes * np.repeat(a["weight_scale"], g, 1)[:, :k]


SHAPES = [(576, 300), (130, 256), (1, 576), (200, 1024)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ue8m0", [False, True])
def test_fp8_block_matches_deepseek(shape, ue8m0):
    w = rnd(*shape, seed=1, scale=0.05)
    qt = quant.quantize(w, "fp8_block", ue8m0=ue8m0)
    q, s = ref_fp8_block(w, ue8m0)
    assert qt.arrays["weight"].dtype == E4M3 and qt.arrays["weight_scale_inv"].shape == s.shape
    np.testing.assert_array_equal(qt.arrays["weight"].view(np.uint8), q.view(np.uint8))
    np.testing.assert_array_equal(qt.arrays["weight_scale_inv"], s)
    if ue8m0:
        m, _ = np.frexp(s)
        assert np.all(m == 0.5)
    np.testing.assert_array_equal(quant.dequantize(qt), ref_dequant(qt))


@pytest.mark.parametrize("shape", [(576, 304), (3, 16), (64, 1024)])
def test_nvfp4_matches_modelopt(shape):
    w = rnd(*shape, seed=2)
    w[1, 16:32] = 1e-30  # tiny block: scale clamps at 2^-9
    qt = quant.quantize(w, "nvfp4")
    packed, bs, s2 = ref_nvfp4(w)
    np.testing.assert_array_equal(qt.arrays["weight"], packed)
    np.testing.assert_array_equal(qt.arrays["weight_scale"].view(np.uint8), bs.view(np.uint8))
    assert np.float32(qt.arrays["weight_scale_2"]) == s2
    np.testing.assert_array_equal(quant.dequantize(qt), ref_dequant(qt))


def test_nvfp4_ties_follow_modelopt():
    # global amax 2688 -> weight_scale_2 = 1; a block with amax 6 has block scale 1, so x/scale = x.
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], np.float32)
    w = np.zeros((1, 32), np.float32)
    w[0, :8], w[0, 8:16], w[0, 16] = ties, -ties, 2688.0
    qt = quant.quantize(w, "nvfp4")
    np.testing.assert_array_equal(qt.arrays["weight"], ref_nvfp4(w)[0])
    got = quant.dequantize(qt)[0, :16]
    # ModelOpt's code adds 1 at bounds[[1, 3, 5]] = 0.75, 1.75, 3.5: every tie goes to the even code
    np.testing.assert_array_equal(got[:8], [0, 1, 1, 2, 2, 4, 4, 6])
    np.testing.assert_array_equal(got[8:], -np.array([0, 1, 1, 2, 2, 4, 4, 6], np.float32))


def test_zero_blocks():
    w = np.zeros((130, 256), np.float32)
    for fmt, params in [("fp8_block", {}), ("int8", {}), ("int4", {"group": 32})]:
        qt = quant.quantize(w, fmt, **params)
        assert np.all(qt.arrays[quant._SCALE_NAME[fmt]] == 1.0), fmt
        assert np.all(quant.dequantize(qt) == 0)
    qt = quant.quantize(w, "nvfp4")
    assert np.all(quant.dequantize(qt) == 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_per_channel(shape):
    w = rnd(*shape, seed=3)
    qt = quant.quantize(w, "int8")
    q, s = ref_int(w, shape[1], 127)
    np.testing.assert_array_equal(qt.arrays["weight"], q)
    np.testing.assert_array_equal(qt.arrays["weight_scale"], s[:, 0])
    np.testing.assert_array_equal(quant.dequantize(qt), ref_dequant(qt))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [32, 128])
def test_int4_groups(shape, group):
    w = rnd(*shape, seed=4)
    qt = quant.quantize(w, "int4", group=group)
    q, s = ref_int(w, group, 7)
    np.testing.assert_array_equal(qt.arrays["weight"], pack_int4(q))
    np.testing.assert_array_equal(qt.arrays["weight_scale"], s)
    np.testing.assert_array_equal(quant.dequantize(qt), ref_dequant(qt))


def test_bf16_f32():
    w = rnd(33, 70, seed=5)
    qt = quant.quantize(w, "bf16")
    np.testing.assert_array_equal(qt.arrays["weight"].view(np.uint16), w.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(quant.dequantize(qt), w.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(quant.dequantize(quant.quantize(w, "f32")), w)


def test_from_checkpoint_zero_copy_and_pack():
    w = rnd(256, 384, seed=6)
    ref = quant.quantize(w, "fp8_block")
    qt = quant.from_checkpoint("fp8_block", ref.arrays["weight"], ref.arrays["weight_scale_inv"])
    assert qt.arrays["weight"] is ref.arrays["weight"] and qt.shape == (256, 384)
    n4 = quant.quantize(w, "nvfp4")
    qt4 = quant.from_checkpoint("nvfp4", n4.arrays["weight"], n4.arrays["weight_scale"],
                                n4.arrays["weight_scale_2"], input_scale=np.float32(1.0))
    assert qt4.shape == (256, 384)
    np.testing.assert_array_equal(quant.dequantize(qt4), quant.dequantize(n4))
    p = quant.pack(qt)
    assert p.params["packed"] == quant.PACKED_LAYOUT and p.arrays["weight"] is qt.arrays["weight"]
    assert qt.nbytes == 256 * 384 + 2 * 3 * 4


def test_bad_inputs():
    w = rnd(128, 256)
    with pytest.raises(ValueError, match="unknown weight format 'fp5'"):
        quant.quantize(w, "fp5")
    with pytest.raises(ValueError, match="group must be 32 or 128"):
        quant.quantize(w, "int4", group=64)
    with pytest.raises(TypeError, match="unexpected parameter 'group'"):
        quant.quantize(w, "fp8_block", group=128)
    with pytest.raises(ValueError, match="multiple of 16"):
        quant.quantize(rnd(4, 40), "nvfp4")
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize(w[0], "int8")
    with pytest.raises(TypeError, match="float"):
        quant.quantize(np.zeros((4, 4), np.int32), "int8")
    ref = quant.quantize(w, "fp8_block")
    with pytest.raises(ValueError, match=r"\['scale'\]: expected shape \[1, 2\], got \[1, 3\]"):
        quant.from_checkpoint("fp8_block", ref.arrays["weight"], np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match=r"\['scale'\] must have dtype float32"):
        quant.from_checkpoint("fp8_block", ref.arrays["weight"], np.ones((1, 2), np.float64))
    with pytest.raises(ValueError, match=r"\['data'\] must be C-contiguous"):
        quant.from_checkpoint("fp8_block", np.zeros((256, 128), E4M3)[::2], np.ones((1, 1), np.float32))
    with pytest.raises(TypeError, match=r"\['data'\] must have dtype int8"):
        quant.from_checkpoint("int8", np.zeros((4, 8), np.uint8), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="needs scale"):
        quant.from_checkpoint("int4", np.zeros((4, 8), np.uint8), group=32)
    with pytest.raises(ValueError, match="group must be 32 or 128"):
        quant.from_checkpoint("int4", np.zeros((4, 8), np.uint8), np.ones((4, 1), np.float32), group=16)
    with pytest.raises(ValueError, match=r"\['scale2'\]"):
        dsv3._lib.dequantize({"format": "nvfp4", "shape": (1, 16), "data": np.zeros((1, 8), np.uint8),
                              "scale": np.zeros((1, 1), E4M3)})
    with pytest.raises(TypeError, match="QuantizedTensor"):
        quant.dequantize(w)
