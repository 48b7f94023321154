"""The latent KV cache's storage dtypes (csrc/include/dsv3_kv_cache.h): f32 (default, exact), bf16, fp8.

- the row layouts and the encoder against an independent numpy / ml_dtypes reference (bf16: round to
  nearest even; fp8: FlashMLA's row [e4m3 latent | f32 scale per 128 | bf16 rope], scale amax/448);
- the in-register kernels (dots_kv / wsum_kv): the scalar twin equals the f32 kernels over the decoded rows
  bit for bit, and every SIMD ISA of this CPU equals the scalar twin bit for bit;
- whole models: each dtype against the f32 cache and transformers fp32 (stated bounds: bf16 logits within
  1e-2 of max |logit|, fp8 within 8e-2; top-1 agreement), in both attention forms, naive mode and the
  batched engine; cache bytes per token halve (bf16) and drop to ~0.28x (fp8, V3 dims).
"""
import ml_dtypes
import numpy as np
import pytest
import torch  # noqa: F401  (transformers below)

import dsv3
from dsv3 import parity_hf
from dsv3._native import lib
from dsv3.engine import Engine
from hf_reference import TINY, canonical_tensors, hf_logits, native_config
from transformers import DeepseekV3Config

SUPPORTED = [i for i in lib.isa_info()[1] if i != "scalar"]
RNG = np.random.default_rng(11)
DTYPES = ("bf16", "fp8")
# relative logit error bounds (of max |logit|) against the f32 cache, stated in the Model docstring
BOUND = {"f32": 1e-5, "bf16": 1e-2, "fp8": 8e-2}


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# ---- layouts and the encoder ----
def reference_pack(rows, R, dtype):
    """Independent encoder of REFERENCE rows [n, R+P] -> (decoded f32 [n, R+P], raw bytes [n, row_bytes])."""
    lat, rope = rows[:, :R], rows[:, R:]
    rope_bf = rope.astype(ml_dtypes.bfloat16)
    if dtype == "bf16":
        lat_bf = lat.astype(ml_dtypes.bfloat16)
        raw = np.concatenate([lat_bf.view(np.uint8), rope_bf.view(np.uint8)], axis=1)
        return np.concatenate([lat_bf.astype(np.float32), rope_bf.astype(np.float32)], axis=1), raw
    nblk = -(-R // 128)
    dec, codes, scales = np.empty_like(lat), np.empty(lat.shape, np.uint8), np.empty((len(rows), nblk), np.float32)
    for b in range(nblk):
        blk = lat[:, b * 128:(b + 1) * 128]
        amax = np.abs(blk).max(axis=1)
        s = np.where(amax > 0, amax / np.float32(448.0), np.float32(1.0)).astype(np.float32)
        q = (blk / s[:, None]).astype(ml_dtypes.float8_e4m3fn)
        codes[:, b * 128:(b + 1) * 128] = q.view(np.uint8)
        dec[:, b * 128:(b + 1) * 128] = q.astype(np.float32) * s[:, None]
        scales[:, b] = s
    raw = np.concatenate([codes, scales.view(np.uint8), rope_bf.view(np.uint8)], axis=1)
    return np.concatenate([dec, rope_bf.astype(np.float32)], axis=1), raw


def test_format_table_and_v3_row_bytes():
    f = lib.kv_cache_formats()
    assert set(f) == {"f32", "bf16", "fp8"}
    assert f["fp8"] == {"latent_bytes": 1, "scale_block": 128, "rope_bytes": 2}
    x = rand(3, 576)
    # V3 (kv_lora 512, rope 64): 2304 / 1152 / 656 bytes per layer (FlashMLA's fp8 row is 656 bytes)
    assert [lib.kv_cache_pack(x, 512, d).shape[1] for d in ("f32", "bf16", "fp8")] == [2304, 1152, 656]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,P", [(16, 16), (512, 64), (130, 8), (20, 6), (272, 0)])
def test_pack_matches_reference(dtype, R, P):
    rows = rand(9, R + P, scale=3.0)
    rows[2, :R] = 0.0  # an all-zero latent: scale 1
    rows[4, :min(R, 128)] *= 1e-4  # subnormal e4m3 codes
    dec_ref, raw_ref = reference_pack(rows, R, dtype)
    packed = lib.kv_cache_pack(rows, R, dtype)
    np.testing.assert_array_equal(packed, raw_ref)
    np.testing.assert_array_equal(lib.kv_cache_unpack(packed, R, P, dtype), dec_ref)
    f32 = lib.kv_cache_pack(rows, R, "f32")
    np.testing.assert_array_equal(lib.kv_cache_unpack(f32, R, P, "f32"), rows)


def test_pack_errors():
    with pytest.raises(ValueError, match="kv_cache_dtype must be"):
        lib.kv_cache_pack(rand(2, 8), 4, "fp16")
    with pytest.raises(ValueError, match="bytes"):
        lib.kv_cache_unpack(np.zeros((2, 7), np.uint8), 4, 4, "bf16")
    with pytest.raises(TypeError):
        lib.kv_cache_unpack(np.zeros((2, 16), np.float32), 4, 4, "bf16")


# ---- the in-register kernels ----
KERNEL_SHAPES = [(16, 16, 3, 5), (512, 64, 8, 70), (20, 6, 5, 3), (130, 8, 4, 17), (272, 16, 9, 33), (7, 1, 2, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,P,na,nb", KERNEL_SHAPES)
def test_dots_kv_twins(dtype, R, P, na, nb):
    a, rows = rand(na, R + P), rand(nb, R + P, scale=2.0)
    rows[-1, R // 2] = np.nan  # NaN codes decode alike on every ISA
    packed = lib.kv_cache_pack(rows, R, dtype)
    dec = lib.kv_cache_unpack(packed, R, P, dtype)
    ref = lib.mla_dots_kv(a, packed, R, dtype, isa="scalar")
    np.testing.assert_array_equal(ref, lib.mla_dots(a, dec, isa="scalar"))  # = f32 kernel on decoded rows
    for isa in SUPPORTED:
        np.testing.assert_array_equal(lib.mla_dots_kv(a, packed, R, dtype, isa=isa), ref, err_msg=isa)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,P,np_,T", KERNEL_SHAPES)
def test_wsum_kv_twins(dtype, R, P, np_, T):
    p, rows = rand(np_, T), rand(T, R + P, scale=2.0)
    packed = lib.kv_cache_pack(rows, R, dtype)
    dec = lib.kv_cache_unpack(packed, R, P, dtype)
    ref = lib.mla_wsum_kv(p, packed, R, P, dtype, isa="scalar")
    np.testing.assert_array_equal(ref, lib.mla_wsum(p, np.ascontiguousarray(dec[:, :R]), isa="scalar"))
    for isa in SUPPORTED:
        np.testing.assert_array_equal(lib.mla_wsum_kv(p, packed, R, P, dtype, isa=isa), ref, err_msg=isa)


# ---- whole models ----
CONFIGS = {"tiny": {}, "wide": dict(kv_lora_rank=272, num_experts_per_tok=3)}  # wide: fp8 blocks 128+128+16


def build_hf(over, seed=0):
    hf = parity_hf.build_model(DeepseekV3Config(**dict(TINY, **over)))
    parity_hf.load_state_dict(hf, parity_hf.random_state_dict(hf, seed))
    return hf


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    hf = build_hf(CONFIGS[request.param])
    ids = np.random.default_rng(0).integers(0, TINY["vocab_size"], 40)
    return hf, ids, hf_logits(hf, ids)


def make(hf, dtype, **kw):
    return dsv3.Model.from_tensors(native_config(hf.config), canonical_tensors(hf), max_seq_len=64,
                                   precision="exact", kv_cache_dtype=dtype, **kw)


def prompt_then_decode(m, ids, split=24):
    """Logits of every position: a prompt of `split` tokens, then one decode step per token."""
    m.reset()
    out = [m.forward(ids[:split])] + [m.forward(ids[i:i + 1]) for i in range(split, len(ids))]
    return np.concatenate(out)


def rel(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("dtype", ("f32",) + DTYPES)
def test_logits_against_f32_cache_and_transformers(pair, dtype):
    hf, ids, ref = pair
    out = prompt_then_decode(make(hf, dtype), ids)
    f32 = prompt_then_decode(make(hf, "f32"), ids)
    assert rel(f32, ref) < 1e-5  # the default keeps parity
    err = rel(out, f32)
    assert err <= BOUND[dtype], f"{dtype}: logits relative error {err:.3g} > {BOUND[dtype]}"
    assert rel(out, ref) <= BOUND[dtype] + 1e-5
    if dtype != "f32":
        assert err > 0  # the cache really is rounded
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    assert agree >= {"f32": 1.0, "bf16": 1.0, "fp8": 0.95}[dtype], f"{dtype}: top-1 agreement {agree}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_attention_forms_and_naive_mode(pair, dtype, monkeypatch):
    """The prompt in the expanded (flash) form and in the absorbed form read the same rounded rows; naive
    mode too. All agree with each other to f32 rounding (the rounding is in the cache, not the form)."""
    hf, ids, _ = pair
    outs = {}
    for form in ("expanded", "absorbed"):
        monkeypatch.setenv("DSV3_MLA_FORM", form)
        outs[form] = prompt_then_decode(make(hf, dtype), ids)
    monkeypatch.delenv("DSV3_MLA_FORM")
    outs["naive"] = prompt_then_decode(make(hf, dtype, attention="naive"), ids)
    assert rel(outs["absorbed"], outs["expanded"]) < 1e-5
    assert rel(outs["naive"], outs["expanded"]) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_generation_matches_f32(pair, dtype):
    hf, ids, _ = pair
    gen = {d: make(hf, d).generate(ids[:8], max_new_tokens=16) for d in ("f32", dtype)}
    same = int(np.argmax(np.append(gen["f32"] != gen[dtype], True)))  # length of the common prefix
    assert same >= {"bf16": 16, "fp8": 8}[dtype], (gen["f32"], gen[dtype])


@pytest.mark.parametrize("isa", SUPPORTED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_module_agrees_across_isas(pair, dtype, isa):
    hf, _, _ = pair
    m = make(hf, dtype)
    x = rand(7, TINY["hidden_size"])
    outs = {}
    for which in ("scalar", isa):
        m.reset()
        a = m._native.run_module("attention", 1, x[:6], start_pos=0, use_cache=True, isa=which)
        b = m._native.run_module("attention", 1, x[6:], start_pos=6, use_cache=True, isa=which)
        outs[which] = np.concatenate([a, b])
    np.testing.assert_allclose(outs[isa], outs["scalar"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_results(pair, dtype):
    hf, ids, _ = pair
    m = make(hf, dtype)
    n = dsv3.get_num_threads()
    try:
        dsv3.set_num_threads(1)
        one = prompt_then_decode(m, ids)
        dsv3.set_num_threads(max(2, n))
        many = prompt_then_decode(m, ids)
    finally:
        dsv3.set_num_threads(n)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_engine_equals_single_sequence(pair, dtype):
    hf, ids, _ = pair
    m = make(hf, dtype)
    p0, p1 = ids[:9], ids[9:14]
    m.reset()
    r0 = m.forward(p0), m.forward(ids[20:21])
    m.reset()
    r1 = m.forward(p1), m.forward(ids[21:22])
    b = lib.Batch(m._native, 2, 32)
    lo = b.forward(np.concatenate([p0, p1]), np.array([[0, 9, 2], [1, 5, 2]], np.int64))
    np.testing.assert_array_equal(lo[:9], r0[0])
    np.testing.assert_array_equal(lo[9:], r1[0])
    lo = b.forward(ids[20:22], np.array([[0, 1, 1], [1, 1, 1]], np.int64))
    np.testing.assert_array_equal(lo[0], r0[1][0])
    np.testing.assert_array_equal(lo[1], r1[1][0])
    assert Engine(m, max_batch=2, max_seq_len=32).kv_cache_dtype == dtype


def test_cache_memory_reported_and_validated():
    hf = build_hf(CONFIGS["wide"])
    sizes = {d: make(hf, d) for d in ("f32", "bf16", "fp8")}
    L, R, P = 2, 272, 16
    assert sizes["f32"].kv_cache_dtype == "f32" and make(hf, "f32").cache_bytes_per_token == L * (R + P) * 4
    assert sizes["bf16"].cache_bytes_per_token * 2 == sizes["f32"].cache_bytes_per_token
    assert sizes["fp8"].cache_bytes_per_token == L * (R + 3 * 4 + 2 * P)
    assert sizes["fp8"].cache_bytes == 64 * sizes["fp8"].cache_bytes_per_token
    assert "bf16" in sizes["bf16"]._repr_html_() and "fp8" in repr(sizes["fp8"])
    for bad in ("fp16", "F32", None, 8):
        with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
            make(hf, bad)
    with pytest.raises(ValueError, match="kv_cache_dtype must be"):
        lib.Model(native_config(hf.config), {}, 8, "absorbed", kv_cache_dtype="int4")
