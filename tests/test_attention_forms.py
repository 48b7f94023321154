"""The two forms of latent-cache attention (csrc/mla/): absorbed (split-KV decode) and expanded (flash
prefill), each forced with DSV3_MLA_FORM, against transformers fp32 over contexts long enough for
several KV blocks and flash chunks; results independent of the thread count; the exp/sum kernel
bitwise equal across ISAs and accurate."""
import numpy as np
import pytest
from transformers import DeepseekV3Config, DynamicCache

import dsv3
from dsv3 import parity_hf
from dsv3._native import lib
from hf_reference import TINY, assert_close, canonical_tensors, hf_attention, native_config, random_hidden

SUPPORTED = [i for i in lib.isa_info()[1] if i != "scalar"]
FORMS = ["absorbed", "expanded"]
# 4 heads (one head group); 12 heads with odd head dims (a partial head group, kernel tails)
SHAPES = {"tiny": {}, "wide": dict(num_attention_heads=12, num_key_value_heads=12, kv_lora_rank=40,
                                   qk_nope_head_dim=20, qk_rope_head_dim=6, v_head_dim=24)}


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request):
    cfg = DeepseekV3Config(**dict(TINY, **SHAPES[request.param]))
    hf = parity_hf.build_model(cfg)
    parity_hf.load_state_dict(hf, parity_hf.random_state_dict(hf, 3))
    ours = dsv3.Model.from_tensors(native_config(hf.config), canonical_tensors(hf), max_seq_len=700)
    return hf, ours


@pytest.fixture(params=FORMS)
def form(request, monkeypatch):
    monkeypatch.setenv("DSV3_MLA_FORM", request.param)
    return request.param


def test_long_prompt_matches_transformers(pair, form):
    """600 rows: 10 KV blocks per decoded token, 2 flash chunks of 512 rows for 4 heads."""
    hf, m = pair
    x = random_hidden(hf.config, 600, seed=5)
    ref = hf_attention(hf, 1, x)
    assert_close(m.run_module("attention", 1, x), ref, what=f"prompt of 600 ({form})")


def test_cached_steps_match_transformers(pair, form):
    """A prompt, a second chunk after it (past > 0, causal inside the chunk), then decode steps."""
    hf, m = pair
    x = random_hidden(hf.config, 305, seed=6)
    cache = DynamicCache(config=hf.config)
    spans = [(0, 90), (90, 300), (300, 301), (301, 302), (302, 305)]
    m.reset()
    try:
        for a, b in spans:
            ref = hf_attention(hf, 0, x[a:b], a, cache)
            out = m.run_module("attention", 0, x[a:b], start_pos=a, use_cache=True)
            assert_close(out, ref, what=f"rows {a}:{b} ({form})")
    finally:
        m.reset()


def test_independent_of_thread_count(pair, form):
    hf, m = pair
    x = random_hidden(hf.config, 200, seed=7)
    before = dsv3.get_num_threads()
    outs = []
    try:
        for nt in (1, 2, 3):
            dsv3.set_num_threads(nt)
            m.reset()
            m.run_module("attention", 1, x[:150], start_pos=0, use_cache=True)
            step = m.run_module("attention", 1, x[150:151], start_pos=150, use_cache=True)
            outs.append((m.run_module("attention", 1, x), step))
    finally:
        dsv3.set_num_threads(before)
        m.reset()
    for nt, (a, b) in zip((2, 3), outs[1:]):
        np.testing.assert_array_equal(a, outs[0][0], err_msg=f"prompt, {nt} threads")
        np.testing.assert_array_equal(b, outs[0][1], err_msg=f"decode step, {nt} threads")


def test_forms_agree_on_the_bench_shape():
    """V3 head dims (16 heads, kv_lora 512, nope 128, rope 64, v 128), several KV blocks: the two
    forms agree to f32 rounding (each is checked against transformers on the small shapes)."""
    from dsv3.testing.checkpoints import tiny_config
    cfg = tiny_config(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16,
                      num_key_value_heads=16, q_lora_rank=32, kv_lora_rank=512, qk_nope_head_dim=128,
                      qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=1)
    hf_cfg = DeepseekV3Config(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    hf = parity_hf.build_model(hf_cfg)
    parity_hf.load_state_dict(hf, parity_hf.random_state_dict(hf, 4))
    m = dsv3.Model.from_tensors(native_config(hf.config), canonical_tensors(hf), max_seq_len=300)
    x = random_hidden(hf.config, 260, seed=8)
    import os
    outs = {}
    for f in FORMS:
        os.environ["DSV3_MLA_FORM"] = f
        try:
            outs[f] = m.run_module("attention", 0, x)
        finally:
            del os.environ["DSV3_MLA_FORM"]
    assert np.std(outs["absorbed"]) > 1e-4
    assert_close(outs["expanded"], outs["absorbed"], what="expanded vs absorbed")
    assert_close(outs["expanded"], hf_attention(hf, 0, x), what="expanded vs transformers")


@pytest.mark.parametrize("n", [0, 1, 7, 16, 17, 33, 64, 100])
def test_expsum_matches_reference(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 20).astype(np.float32)
    m = float(x.max()) if n else 0.0
    ref, total = lib.mla_expsum(x, m, isa="scalar")
    exact = np.exp((x - np.float32(m)).astype(np.float64))  # the kernel subtracts in float32
    np.testing.assert_allclose(ref, exact, rtol=3e-7, atol=1e-37)
    assert abs(total - exact.sum()) <= 1e-6 * max(1.0, exact.sum())
    for isa in SUPPORTED:
        got, s = lib.mla_expsum(x, m, isa=isa)
        np.testing.assert_array_equal(got, ref, err_msg=isa)
        assert s == total, isa


def test_exp_accuracy_over_its_range():
    """Every 97th float in [-87, 0]: within 2 ulp of exp; below -87 it clamps to exp(-87)."""
    x = np.linspace(-87.0, 0.0, 200001, dtype=np.float32)
    got, _ = lib.mla_expsum(x, 0.0, isa="scalar")
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - exact) / ulp) <= 2.0
    low, _ = lib.mla_expsum(np.array([-100.0, -np.inf], np.float32), 0.0, isa="scalar")
    assert np.all(low == low[0]) and 0 < low[0] < 2e-38


def test_expsum_bad_input():
    with pytest.raises(TypeError):
        lib.mla_expsum(np.zeros(3), 0.0)
    with pytest.raises(ValueError):
        lib.mla_expsum(np.zeros((2, 2), np.float32), 0.0)
    with pytest.raises(ValueError):
        lib.mla_expsum(np.zeros(3, np.float32), 0.0, isa="sse9")
