"""DeepSeek-V3.2 sparse attention (the lightning indexer, dsv3_indexer.h) against transformers'
DeepseekV32ForCausalLM in float32: prompts longer than index_topk, prefill and decode, every attention
form; plus an independent numpy indexer that checks what transformers selects and that the test
configurations have no tie at the top-k boundary (where torch.topk's order is undefined)."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DeepseekV32Config"):
    pytest.skip("this transformers has no deepseek_v32", allow_module_level=True)

import dsv3  # noqa: E402
from dsv3 import parity_hf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import hf_reference as H  # noqa: E402

# two V3.2 configurations (prompt length, config overrides of transformers' tiny tester). With 4 index
# heads instead of 8 many rows score exactly 0 (every head's relu is 0): ties at the top-k boundary, where
# torch.topk's pick is undefined (and differs from dsv3's earlier-position rule), so parity is not defined.
V32 = {
    "k8": (48, dict(index_n_heads=8, index_head_dim=32, index_topk=8)),
    "k16_yarn_grouped": (64, dict(index_n_heads=8, index_head_dim=24, index_topk=16, rope_parameters=H.YARN,
                                  n_routed_experts=16, num_experts_per_tok=3, n_group=4, topk_group=2,
                                  n_shared_experts=2, num_hidden_layers=3)),
}
TOL = 1e-4  # relative to the largest |logit|


def hf_v32(name, seed=0):
    over = V32[name][1]
    cfg = transformers.DeepseekV32Config(**dict(H.TINY, **over))
    model = parity_hf.build_model(cfg)
    parity_hf.load_state_dict(model, parity_hf.random_state_dict(model, seed))
    return model


@pytest.fixture(scope="module", params=sorted(V32))
def case(request):
    name = request.param
    model = hf_v32(name)
    n = V32[name][0]
    ids = np.random.default_rng(7).integers(0, model.config.vocab_size, n)
    with torch.no_grad():
        ref = model(torch.tensor(ids)[None]).logits[0].numpy()
    return name, model, ids, ref


def dsv3_model(model, attention="absorbed", **over):
    cfg = dict(H.native_config(model.config), **over)
    return dsv3.Model.from_tensors(cfg, H.canonical_tensors(model), attention=attention, precision="exact",
                                   max_seq_len=128)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("form", ["naive", "absorbed", "expanded"])
def test_prefill_matches_transformers(case, form, monkeypatch):
    name, model, ids, ref = case
    if form == "expanded":
        monkeypatch.setenv("DSV3_MLA_FORM", "expanded")
    m = dsv3_model(model, "naive" if form == "naive" else "absorbed")
    got = m.forward(ids)
    assert rel(got, ref) < TOL, (name, form, rel(got, ref))
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def test_decode_matches_transformers_with_its_cache(case):
    """Prefill of 40 tokens, then one token at a time: dsv3 and transformers (DynamicCache, its
    index-key cache included) give the same logits at every step."""
    name, model, ids, _ = case
    p = 40
    with torch.no_grad():
        out = model(torch.tensor(ids[:p])[None], use_cache=True)
        cache, ref = out.past_key_values, [out.logits[0, -1].numpy()]
        for t in ids[p:]:
            out = model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            ref.append(out.logits[0, -1].numpy())
    ref = np.stack(ref)
    m = dsv3_model(model)
    got = [m.forward(ids[:p])[-1]] + [m.forward(ids[i:i + 1])[0] for i in range(p, len(ids))]
    got = np.stack(got)
    assert rel(got, ref) < TOL, (name, rel(got, ref))
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def test_greedy_generation_equals_transformers(case):
    """dsv3's greedy generate equals greedy decoding with transformers' forward and its cache. (Not
    model.generate(): in transformers 5.24 that disagrees with the model's own forward for
    DeepseekV32, full-sequence or cached, from the second new token on.)"""
    name, model, ids, _ = case
    p = 36
    ref = []
    with torch.no_grad():
        out = model(torch.tensor(ids[:p])[None], use_cache=True)
        for _ in range(12):
            ref.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[ref[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    m = dsv3_model(model)
    got = np.asarray(m.generate(ids[:p], max_new_tokens=12))
    assert np.array_equal(got, ref), (name, got, ref)


def test_dense_attention_would_fail(case):
    """The same weights with the indexer keeping every row (dense attention) are far from transformers'
    sparse model: the parity above is not vacuous."""
    name, model, ids, ref = case
    got = dsv3_model(model, index_topk=10 ** 6).forward(ids)
    k = model.config.index_topk
    assert rel(got[:k], ref[:k]) < TOL  # the first index_topk positions see every row either way
    assert rel(got, ref) > 1e-2, name


def _numpy_indexer(model, layer, x, positions_past=0):
    """Independent index scores of one layer for attention inputs x [S, hidden] at positions 0..S-1:
    [S, S] with -inf above the diagonal."""
    a = model.model.layers[layer].self_attn
    ix = a.indexer
    f = lambda t: t.detach().double().numpy()  # noqa: E731
    c = model.config
    qa = x @ f(a.q_a_proj.weight).T
    qa = qa / np.sqrt((qa ** 2).mean(-1, keepdims=True) + 1e-6) * f(a.q_a_layernorm.weight)
    nh, hd, r = c.index_n_heads, c.index_head_dim, c.qk_rope_head_dim
    q = (qa @ f(ix.wq_b.weight).T).reshape(len(x), nh, hd)
    k = x @ f(ix.wk.weight).T
    k = (k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6) * f(ix.k_norm.weight) \
        + f(ix.k_norm.bias)
    pos = np.arange(len(x))[:, None]
    cos, sin = model.model.rotary_emb(torch.zeros(1), torch.tensor(pos.T))
    cos, sin = f(cos[0])[:, : r // 2], f(sin[0])[:, : r // 2]

    def rope(t):  # half-split pairs (t[j], t[j + r/2])
        a_, b_ = t[..., : r // 2].copy(), t[..., r // 2: r].copy()
        cc, ss = (cos, sin) if t.ndim == 2 else (cos[:, None], sin[:, None])
        t[..., : r // 2], t[..., r // 2: r] = a_ * cc - b_ * ss, b_ * cc + a_ * ss
        return t

    q, k = rope(q), rope(k)
    w = x @ f(ix.weights_proj.weight).T * nh ** -0.5
    s = np.einsum("shd,td->sht", q, k) * hd ** -0.5
    score = np.einsum("sh,sht->st", w, np.maximum(s, 0))
    score[np.triu_indices(len(x), 1)] = -np.inf
    return score


def test_transformers_selection_matches_an_independent_indexer_without_ties(case):
    """What transformers' indexer selects equals the top-k of an independent float64 numpy indexer, and
    the k-th and (k+1)-th scores of every query that drops rows are apart (no tie to break)."""
    name, model, ids, _ = case
    got_in, got_out = {}, {}

    def hook(layer):
        def fn(mod, args, kwargs, out):
            got_in[layer] = (args[0] if args else kwargs["hidden_states"])[0].detach().double().numpy()
            got_out[layer] = out[0].numpy()
        return fn

    hs = [model.model.layers[i].self_attn.indexer.register_forward_hook(hook(i), with_kwargs=True)
          for i in range(model.config.num_hidden_layers)]
    try:
        with torch.no_grad():
            model(torch.tensor(ids)[None])
    finally:
        for h in hs:
            h.remove()
    k = model.config.index_topk
    for layer, x in got_in.items():
        score = _numpy_indexer(model, layer, x)
        for i in range(k, len(ids)):
            order = np.argsort(-score[i, : i + 1], kind="stable")
            top = np.sort(order[:k])
            assert np.array_equal(np.sort(got_out[layer][i]), top), (name, layer, i)
            gap = score[i, order[k - 1]] - score[i, order[k]]
            assert gap > 2e-6 * np.abs(score[i, : i + 1]).max(), (name, layer, i, gap)  # >> f32 rounding


def test_thread_count_does_not_change_the_bits(case):
    _, model, ids, _ = case
    m = dsv3_model(model)
    before = dsv3.get_num_threads()
    a = m.forward(ids)
    try:
        dsv3.set_num_threads(1)
        m.reset()
        b = m.forward(ids)
    finally:
        dsv3.set_num_threads(before)
    assert np.array_equal(a, b)


def test_probes_without_cache_and_batched_engine(case):
    """run_module("attention") without the cache equals the layer's attention in the full forward (its
    own index keys, sparse past index_topk); the batched engine runs V3.2 (tests/test_engine_v32.py): a
    prefill of 40 then decode tokens, beside another sequence, equal transformers' logits."""
    _, model, ids, logits = case
    m = dsv3_model(model)
    x = np.random.default_rng(3).standard_normal((len(ids), model.config.hidden_size)).astype(np.float32)
    got = m.run_module("attention", 0, x)
    pos = torch.arange(len(ids))[None]
    a = model.model.layers[0].self_attn
    with torch.no_grad():
        pe = model.model.rotary_emb(torch.tensor(x)[None], pos)
        mask = torch.full((len(ids), len(ids)), float("-inf")).triu(1)[None, None]
        ref = a(torch.tensor(x)[None], position_embeddings=pe, attention_mask=mask)[0][0].numpy()
    assert rel(got, ref) < TOL
    b = dsv3._lib.Batch(m._native, 2, 128)
    other = np.asarray(ids[::-1], np.int64)
    rows = [b.forward(np.concatenate([other[:20], ids[:40]]).astype(np.int64),
                      np.array([[0, 20, 0], [1, 40, 2]], np.int64))]
    for i in range(40, len(ids)):
        rows.append(b.forward(np.array([ids[i], other[i - 20]], np.int64), np.array([[1, 1, 1], [0, 1, 1]]))[:1])
    got = np.concatenate(rows)
    assert rel(got, logits) < TOL and np.array_equal(got.argmax(-1), logits.argmax(-1))


def _parity_v32_config(tmp_path):
    import json
    from dsv3 import parity
    cfg = parity.default_config()
    cfg.update(model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"], index_n_heads=8,
               index_head_dim=16, index_topk=8)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return cfg, str(path)


def test_parity_tool_runs_v32_with_indexer_rows(tmp_path):
    """`dsv3 parity --config <V3.2 config>` loads the indexer (it used to stop on the unexpected indexer
    tensor) and reports the indexer's scores and selected rows; a perturbed indexer weight fails them."""
    import json
    import subprocess
    from dsv3 import parity
    cfg, path = _parity_v32_config(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "dsv3", "parity", "--config", path, "--seq-len", "40",
                        "--new-tokens", "4", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["module"]: row for row in json.loads(r.stdout)["rows"]}
    assert rows["indexer rows[1]"]["passed"] and rows["indexer scores[1]"]["passed"]
    assert "32/40 queries" in rows["indexer rows[1]"]["note"]
    bad = parity.run(config=cfg, modules="indexer", seq_len=40, progress=False,
                     corrupt="perturb:model.layers.1.self_attn.indexer.wk.weight")
    assert not {r.module: r for r in bad.rows}["indexer scores[1]"].passed


def test_fp8_index_keys_accuracy(case):
    """index_keys="fp8" (DeepSeek's stored form: Hadamard-rotated e4m3 keys, a power-of-two scale per 128):
    the queries that keep every row are unaffected; scores stay within e4m3's precision of the f32 ones and
    at least 90% of the selected rows are the same (measured on these random models: 97-99%; the logits of
    positions whose selection changes move by the attention of a different row set)."""
    name, model, ids, ref = case
    f32 = dsv3_model(model)
    fp8 = dsv3.Model.from_tensors(H.native_config(model.config), H.canonical_tensors(model), precision="exact",
                                  max_seq_len=128, index_keys="fp8")
    k = model.config.index_topk
    got = fp8.forward(ids)
    assert rel(got[:k], ref[:k]) < TOL and np.isfinite(got).all()
    x = np.random.default_rng(3).standard_normal((len(ids), model.config.hidden_size)).astype(np.float32)
    shared = total = 0
    for layer in range(model.config.num_hidden_layers):
        ra, sa = f32.run_module("indexer", layer, x)
        rb, sb = fp8.run_module("indexer", layer, x)
        tri = np.tril(np.ones(sa.shape, dtype=bool))
        assert np.abs(sa[tri] - sb[tri]).max() < 0.1 * np.abs(sa[tri]).max(), (name, layer)
        for i in range(k, len(ids)):
            shared += len(set(ra[i].tolist()) & set(rb[i].tolist()))
            total += k
    assert shared / total >= 0.9, (name, shared / total)
    with pytest.raises(ValueError, match="index_keys"):
        dsv3.Model.from_tensors(H.native_config(model.config), H.canonical_tensors(model), index_keys="fp16")


def test_indexer_probe_needs_a_v32_model():
    model = H.build_hf("tiny")
    m = dsv3.Model.from_tensors(H.native_config(model.config), H.canonical_tensors(model), precision="exact")
    with pytest.raises(ValueError, match="no indexer"):
        m.run_module("indexer", 0, np.zeros((3, model.config.hidden_size), np.float32))


@pytest.mark.parametrize("fmt", ["bf16", "fp8_block", "int8", "int4"])
def test_weight_formats_match_transformers_on_the_same_weights(tmp_path, fmt):
    """Every weight format runs V3.2 with its indexer (wq_b / wk stored in the format; weights_proj and the
    norms as float): against transformers fp32 holding the same (dequantised) weights, the indexer rows, the
    logits (prompt of 40 > index_topk 8) and teacher-forced top-1 match in exact mode. (Against the unquantised
    weights a format's rounding can move a near-boundary score and change a selection: a discrete change.)"""
    import ml_dtypes
    from dsv3 import parity, quant
    cfg, _ = _parity_v32_config(tmp_path)
    model = parity_hf.build_model(parity_hf.hf_config_from(dsv3.load_config(cfg)))
    t = parity_hf.hf_to_canonical(parity_hf.random_state_dict(model, 0))
    out = {}
    for name, w in t.items():
        is_linear = w.ndim == 2 and "embed" not in name and "lm_head" not in name and "norm" not in name \
            and not name.endswith(("mlp.gate.weight", "weights_proj.weight"))
        if not is_linear:
            out[name] = w
        elif fmt == "bf16":
            out[name] = w.astype(ml_dtypes.bfloat16)
        else:
            out[name] = quant.quantize(np.ascontiguousarray(w), fmt)
    assert any(hasattr(v, "fmt") or v.dtype != np.float32 for k, v in out.items() if ".indexer.wq_b" in k)
    rep = parity.run(config=cfg, tensors=out, modules="indexer logits top1", seq_len=40, progress=False)
    assert rep.passed, str(rep)


@pytest.mark.parametrize("kv", ["bf16", "fp8"])
def test_sparse_attention_over_a_bf16_or_fp8_latent_cache(case, kv):
    """The selected rows are gathered in the cache's own layout. With a bf16 / fp8 latent cache the median
    position past index_topk is within that cache's stated accuracy (tests/test_kv_cache_dtype.py) of
    transformers fp32 (not every position: the rounding moves the next layers' indexer inputs, and a
    selection with two close scores at the top-k boundary can flip), and decoding token by token gives
    bitwise the prefill's logits. A wrong gather (row size or layout) would put every position past
    index_topk far outside the bound."""
    name, model, ids, ref = case
    bound = {"bf16": 1e-2, "fp8": 8e-2}[kv]
    cfg = H.native_config(model.config)
    m = dsv3.Model.from_tensors(cfg, H.canonical_tensors(model), precision="exact", max_seq_len=128,
                                kv_cache_dtype=kv)
    k = model.config.index_topk
    full = m.forward(ids)
    per_pos = np.abs(full[k:] - ref[k:]).max(-1) / np.abs(ref).max()
    assert np.median(per_pos) < bound, (name, kv, np.sort(per_pos))
    m.reset()
    p = 40
    got = np.stack([m.forward(ids[:p])[-1]] + [m.forward(ids[i:i + 1])[0] for i in range(p, len(ids))])
    assert np.array_equal(got, full[p - 1:]), (name, kv)
