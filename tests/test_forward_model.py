"""Whole-model parity (logits, prefill+decode, generation) against transformers, thread
independence, load-time validation, bad input and reference counting."""
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

import dsv3
from hf_reference import (CONFIGS, assert_close, build_hf, build_pair, canonical_tensors, hf_logits, max_abs,
                          native_config)

IDS = np.array([3, 17, 42, 5, 9, 11, 98, 0, 64, 23, 7, 7, 51], dtype=np.int64)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("attention", ["absorbed", "naive"])
def test_logits(name, attention):
    hf, m = build_pair(name, attention=attention)
    ref = hf_logits(hf, IDS)
    out = m.forward(IDS)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.std(ref) > 0.3  # logits are not flat
    assert max_abs(out, ref) < 1e-4
    assert m.cache_len == len(IDS)


@pytest.mark.parametrize("name", ["tiny", "grouped", "v2_lite"])
def test_prefill_then_decode_equals_long_prefill(name):
    hf, m = build_pair(name)
    full = m.forward(IDS)
    m.reset()
    parts = [m.forward(IDS[:6])] + [m.forward(IDS[i:i + 1]) for i in range(6, 9)] + [m.forward(IDS[9:])]
    assert_close(np.concatenate(parts), full, rel=2e-6, what="prefill+decode")
    assert m.cache_len == len(IDS)


def test_absorbed_and_naive_agree():
    _, a = build_pair("grouped", attention="absorbed")
    _, n = build_pair("grouped", attention="naive")
    assert max_abs(a.forward(IDS), n.forward(IDS)) < 1e-5


def test_thread_count_does_not_change_results():
    _, m = build_pair("grouped")
    before = dsv3.get_num_threads()
    try:
        dsv3.set_num_threads(1)
        one = m.forward(IDS)
        m.reset()
        dsv3.set_num_threads(2)
        two = m.forward(IDS)
    finally:
        dsv3.set_num_threads(before)
    assert np.array_equal(one, two)


def manual_greedy(hf, ids, n):
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(hf_logits(hf, seq)[-1])))
    return seq[len(ids):]


@pytest.mark.parametrize("name", ["tiny", "v2_lite"])
def test_greedy_generation_matches_transformers(name):
    hf, m = build_pair(name)
    new = m.generate(IDS[:5], max_new_tokens=32)
    assert new.dtype == np.int64 and len(new) == 32
    assert list(new) == manual_greedy(hf, IDS[:5], 32)


def test_sampling_is_seeded():
    _, m = build_pair("tiny")
    a = m.generate(IDS[:4], 12, temperature=1.0, seed=7)
    b = m.generate(IDS[:4], 12, temperature=1.0, seed=7)
    c = m.generate(IDS[:4], 12, temperature=1.0, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    greedy = m.generate(IDS[:4], 12)
    assert np.array_equal(m.generate(IDS[:4], 12, temperature=0.7, top_k=1, seed=1), greedy)
    assert np.array_equal(m.generate(IDS[:4], 12, temperature=0.7, top_p=1e-6, seed=1), greedy)


def test_sampler_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2, 1e-9], dtype=np.float32))
    state, counts = 123, np.zeros(4)
    for _ in range(4000):
        tok, state = dsv3._lib.sample(logits, 1.0, 0, 1.0, state)
        counts[tok] += 1
    assert np.allclose(counts / 4000, [0.5, 0.3, 0.2, 0.0], atol=0.03)
    counts[:] = 0
    for _ in range(2000):  # top_p 0.7 keeps {0, 1}: renormalised 0.625 / 0.375
        tok, state = dsv3._lib.sample(logits, 1.0, 0, 0.7, state)
        counts[tok] += 1
    assert counts[2] == 0 and abs(counts[0] / 2000 - 0.625) < 0.04


def test_sampler_rejects_nan_and_inf():
    bad = np.array([0.5, np.nan, 0.1], dtype=np.float32)
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"logits\[1\] is nan"):
            dsv3._lib.sample(bad, temperature, 0, 1.0, 1)
    inf = np.array([0.5, 0.1, np.inf], dtype=np.float32)
    assert dsv3._lib.sample(inf, 0.0, 0, 1.0, 1)[0] == 2  # greedy: +inf is the maximum
    with pytest.raises(ValueError, match=r"logits\[2\] is inf"):
        dsv3._lib.sample(inf, 1.0, 0, 1.0, 1)


def test_generation_stops_at_eos_and_capacity():
    hf, m = build_pair("tiny", max_seq_len=10)
    greedy = manual_greedy(hf, IDS[:4], 3)
    out = m.generate(IDS[:4], 20, eos_token_id=greedy[1])
    assert list(out) == greedy[:2]
    with pytest.warns(RuntimeWarning, match="cache full"):
        out = m.generate(IDS[:4], 20)
    assert len(out) == 7  # 4 prompt + 6 decoded fill the 10 positions; the 7th token is sampled from the last
    with pytest.raises(ValueError, match="does not fit"):
        m.generate(np.arange(11), 2)


def test_bfloat16_weights():
    hf = build_hf("tiny")
    t = canonical_tensors(hf)
    m = dsv3.Model.from_tensors(native_config(hf.config), t, dtype="bfloat16", precision="exact")
    with torch.no_grad():  # reference: the same model with weights rounded to bf16, f32 compute
        for name, p in hf.named_parameters():
            if not name.endswith("mlp.gate.weight"):
                p.copy_(p.to(torch.bfloat16).float())
    assert max_abs(m.forward(IDS), hf_logits(hf, IDS)) < 1e-4
    assert "bfloat16" in repr(m)
    # bf16 arrays given directly (no dtype=) read the same values
    router = (".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")  # kept f32, as dtype= does
    t_bf16 = {k: (v if k.endswith(router) else v.astype(ml_dtypes.bfloat16)) for k, v in t.items()}
    m2 = dsv3.Model.from_tensors(native_config(hf.config), t_bf16, precision="exact")
    m.reset()
    assert np.array_equal(m2.forward(IDS), m.forward(IDS))


def test_bad_input():
    hf, m = build_pair("tiny", max_seq_len=16)
    with pytest.raises(ValueError, match=r"token id 99 at position 1 is out of range \[0, 99\)"):
        m.forward(np.array([1, 99]))
    with pytest.raises(ValueError, match="out of range"):
        m.forward(np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        m.forward(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-dimensional"):
        m.forward(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="do not fit in the cache"):
        m.forward(np.arange(17) % 99)
    m.forward(np.arange(10))
    with pytest.raises(ValueError, match="10 of 16 positions used"):
        m.forward(np.arange(7))
    assert m.cache_len == 10  # failed calls leave the cache unchanged
    with pytest.raises(TypeError, match="x must have dtype float32"):
        m.run_module("mlp", 0, np.zeros((2, 32)))
    with pytest.raises(ValueError, match=r"x: expected shape \[S, 32\]"):
        m.run_module("mlp", 0, np.zeros((2, 31), np.float32))
    with pytest.raises(ValueError, match="unknown module kind"):
        m.run_module("nope", 0, np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="layer 5 out of range"):
        m.run_module("mlp", 5, np.zeros((2, 32), np.float32))


def test_load_validation():
    hf = build_hf("tiny")
    cfg, t = native_config(hf.config), canonical_tensors(hf)
    missing = dict(t)
    del missing["model.layers.1.mlp.experts.3.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing tensor model.layers.1.mlp.experts.3.up_proj.weight \(expected "
                                         r"shape \[16, 32\]\)"):
        dsv3.Model.from_tensors(cfg, missing)
    wrong = dict(t)
    wrong["model.layers.0.self_attn.kv_b_proj.weight"] = np.zeros((256, 15), np.float32)
    with pytest.raises(ValueError, match=r"kv_b_proj.weight: expected shape \[256, 16\], got \[256, 15\]"):
        dsv3.Model.from_tensors(cfg, wrong)
    wrong = dict(t)
    wrong["model.norm.weight"] = np.zeros(31, np.float32)
    with pytest.raises(ValueError, match=r"model.norm.weight: expected shape \[32\], got \[31\]"):
        dsv3.Model.from_tensors(cfg, wrong)
    extra = dict(t, **{"model.layers.2.mlp.gate.weight": np.zeros((8, 32), np.float32)})
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.2.mlp.gate.weight'"):
        dsv3.Model.from_tensors(cfg, extra)
    with pytest.raises(TypeError, match="int32"):
        dsv3.Model.from_tensors(cfg, dict(t, **{"model.norm.weight": np.zeros(32, np.int32)}))
    with pytest.raises(TypeError, match="model.norm.weight: dtype int32 is not a floating type"):
        dsv3.Model.from_tensors(cfg, dict(t, **{"model.norm.weight": np.zeros(32, np.int32)}), dtype="bfloat16")
    with pytest.raises(TypeError, match="complex64 is not a floating type"):
        dsv3.Model.from_tensors(cfg, dict(t, **{"model.norm.weight": np.zeros(32, np.complex64)}))
    with pytest.raises(ValueError, match="n_group"):
        dsv3.Model.from_tensors(dict(cfg, n_group=3), t)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        dsv3.Model.from_tensors(dict(cfg, num_experts_per_tok=9), t)
    with pytest.raises(ValueError, match=r"hidden_size must be <= 2\^24, got 33554432"):
        dsv3.Model.from_tensors(dict(cfg, hidden_size=2**25), t)
    width = 2**24 * (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"] + cfg["v_head_dim"])
    with pytest.raises(ValueError, match=rf"num_attention_heads \* \(.*\) = {width} \(max 2\^28\)"):
        dsv3.Model.from_tensors(dict(cfg, num_attention_heads=2**24), t)
    with pytest.raises(ValueError, match=rf"vocab_size \* hidden_size = {2**24 * 2**17} \(max 2\^40\)"):
        dsv3.Model.from_tensors(dict(cfg, vocab_size=2**24, hidden_size=2**17), t)
    with pytest.raises(ValueError, match="missing key 'kv_lora_rank'"):
        dsv3.Model.from_tensors({k: v for k, v in cfg.items() if k != "kv_lora_rank"}, t)
    with pytest.raises(ValueError, match="scoring_func"):
        dsv3.Model.from_tensors(dict(cfg, scoring_func="relu"), t)
    with pytest.raises(ValueError, match="attention"):
        dsv3.Model.from_tensors(cfg, t, attention="flash")


def test_tied_embeddings():
    hf = build_hf("tiny")
    t = canonical_tensors(hf)
    t.pop("lm_head.weight")
    cfg = dict(native_config(hf.config), tie_word_embeddings=1)
    m = dsv3.Model.from_tensors(cfg, t, precision="exact")
    with torch.no_grad():
        hf.lm_head.weight.copy_(hf.model.embed_tokens.weight)
    assert max_abs(m.forward(IDS), hf_logits(hf, IDS)) < 1e-4


def test_no_reference_leaks():
    hf = build_hf("tiny")
    t = canonical_tensors(hf)
    emb = t["model.embed_tokens.weight"]
    m = dsv3.Model.from_tensors(native_config(hf.config), t, max_seq_len=4096)
    ids = np.array([1, 2, 3], dtype=np.int64)
    x = np.zeros((2, 32), np.float32)
    before = (sys.getrefcount(ids), sys.getrefcount(emb), sys.getrefcount(x))
    for _ in range(50):
        m.forward(ids)
        m.run_module("router", 1, x)
        m.run_module("attention", 0, x)
        m.rope_cos_sin(np.arange(3))
        try:
            m.forward(np.array([1000]))
        except ValueError:
            pass
    assert (sys.getrefcount(ids), sys.getrefcount(emb), sys.getrefcount(x)) == before
    del m  # the model released its references to the weights
    assert sys.getrefcount(emb) < before[1]
