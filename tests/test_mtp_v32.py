"""The MTP layer and speculative decoding on DeepSeek-V3.2 (sparse attention, the lightning indexer): the MTP
layer's forward against transformers' DeepseekV32 decoder layer run on the MTP layer's weights (DeepSeek's
inference code treats the layer as one more Block), its own index keys and index-key cache; the verification
forward (each token its own top-k over its own prefix, bitwise its one-token decode step); greedy speculative
output bitwise plain greedy's, for prompts and generation lengths that cross index_topk; sampling reproducible
by seed; the cache bytes per token; loading from a checkpoint."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DeepseekV32Config"):
    pytest.skip("this transformers has no deepseek_v32", allow_module_level=True)

import dsv3  # noqa: E402
from dsv3.testing.mtp import agreeing_mtp  # noqa: E402
from mtp_helpers import V32, build, check_full_cache_stop, torch_hidden, torch_mtp  # noqa: E402

IDS = np.array([3, 17, 5, 60, 2, 9, 41, 77, 12, 30, 8, 51, 66, 23, 90, 14, 7, 45, 38, 2], np.int64)  # 20 > topk


def _main_tensors(tensors, n):
    return {k: v for k, v in tensors.items() if not k.startswith(f"model.layers.{n}.")}


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("name", sorted(V32))
@pytest.mark.parametrize("attention", ["absorbed", "naive"])
def test_v32_mtp_forward_matches_transformers_layer(name, attention):
    """The MTP layer over 20 positions in two chunks (the second crossing and passing index_topk) and a chained
    step: logits and g within 1e-5 of the reference (transformers' V3.2 decoder layer N of an N+1-layer model
    holding the MTP block, its indexer selecting among the MTP layer's own keys); the same layer with dense
    attention is far from it, so the MTP layer's selection is what is tested."""
    main, big, ncfg, tensors = build(name)
    topk = ncfg["index_topk"]
    m = dsv3.Model.from_tensors(ncfg, tensors, precision="exact", mtp=True, max_seq_len=64, attention=attention)
    lo, hid = m.forward(IDS, hidden=True)
    href = torch_hidden(main, IDS)
    assert _rel(hid, href) < 1e-5
    nxt = np.append(IDS[1:], 8)
    ref_logits, ref_g = torch_mtp(big, tensors, nxt, href)
    cut = topk - 2
    l1, g1 = m.mtp_forward(nxt[:cut], href[:cut], logits="all")
    l2, g2 = m.mtp_forward(nxt[cut:], href[cut:], logits="all")
    assert m.mtp_cache_len == len(IDS)
    assert _rel(np.concatenate([l1, l2]), ref_logits) < 1e-5
    assert _rel(np.concatenate([g1, g2]), ref_g) < 1e-5
    last, _ = m.mtp_forward(np.array([4]), ref_g[-1:], logits="last")  # a chained step: its own g in
    ref_chain, _ = torch_mtp(big, tensors, np.append(nxt, 4), np.concatenate([href, ref_g[-1:]]))
    assert _rel(last[0], ref_chain[-1]) < 1e-5
    dense = dsv3.Model.from_tensors(dict(ncfg, index_topk=10 ** 6), tensors, precision="exact", mtp=True,
                                    max_seq_len=64, attention=attention)
    ld, _ = dense.mtp_forward(nxt, href, logits="all")
    assert _rel(ld[:topk], ref_logits[:topk]) < 1e-5 and _rel(ld, ref_logits) > 1e-2


@pytest.mark.parametrize("kw", [dict(precision="exact"), dict(precision="exact", attention="naive"),
                                dict(precision="exact", kv_cache_dtype="bf16", index_keys="fp8"),
                                dict(precision="fast", dtype="bfloat16", kv_cache_dtype="fp8")])
def test_v32_verification_forward_equals_decode_steps(kw):
    """k+1 tokens in one step_attention forward, before, across and past index_topk: every row's logits bitwise
    those of one-token decode steps (each token selects its own top-k over its own prefix); a plain prefill of
    the same tokens differs where it attends densely in another form, so the per-token form is what runs."""
    _, _, ncfg, tensors = build("v32")
    m = dsv3.Model.from_tensors(ncfg, _main_tensors(tensors, ncfg["num_hidden_layers"]), max_seq_len=64, **kw)
    for past, n in [(1, 5), (5, 6), (11, 5)]:  # rows seen: <= topk, across it, > topk
        m.reset()
        m.forward(IDS[:past], logits="none")
        steps = [m.forward(IDS[past + j:past + j + 1])[0] for j in range(n)]
        m.truncate(past)
        lo, hid = m.forward(IDS[past:past + n], hidden=True, step_attention=True)
        assert np.array_equal(lo, np.stack(steps)), (kw, past, n)
        assert hid.shape == (n, ncfg["hidden_size"]) and m.cache_len == past + n
        if past == 1 and kw == dict(precision="exact"):  # the prefill form (one causal call over f32 rows): other bits
            m.truncate(past)
            assert not np.array_equal(m.forward(IDS[past:past + n]), lo)


@pytest.mark.parametrize("name", sorted(V32))
@pytest.mark.parametrize("kw", [dict(precision="exact"), dict(precision="exact", attention="naive"),
                                dict(precision="fast", dtype="bfloat16", kv_cache_dtype="bf16", index_keys="fp8")])
def test_v32_greedy_speculative_equals_plain_greedy(name, kw):
    """Greedy output with MTP drafts is plain greedy's, bit for bit, on V3.2, with prompts and generation
    lengths crossing index_topk, at every acceptance level (an MTP layer that agrees fully, partly, or a
    random one), several draft lengths, up to a full cache; full agreement accepts every draft."""
    _, _, ncfg, tensors = build(name)
    n = ncfg["num_hidden_layers"]
    models = [(d, agreeing_mtp(_main_tensors(tensors, n), n, d)) for d in (0.0, 0.4)] + [("random", tensors)]
    for damp, t in models:
        m = dsv3.Model.from_tensors(ncfg, t, mtp=True, max_seq_len=48, **kw)
        for prompt, new in ((IDS[:11], 24), (IDS[:2], 14)):
            ref = m.generate(prompt, new)
            for k in (1, 2, 4):
                out = m.generate(prompt, new, speculative="mtp", num_draft=k)
                assert np.array_equal(ref, out), (damp, k, len(prompt))
                s = m.speculative_stats
                assert s.rounds > 0 and 0 <= s.accepted <= s.drafted <= k * s.rounds
                # the tokens: the first after the prompt, a + 1 per round, at most one plain step at the end
                assert new - 1 <= 1 + s.rounds + s.accepted <= new
                if damp == 0.0:
                    assert s.acceptance_rate == 1.0
                if damp == "random":
                    assert s.acceptance_rate < 0.5
        check_full_cache_stop(m, IDS)


def test_v32_sampled_speculative_is_reproducible_by_seed():
    """Sampling with MTP drafts on V3.2: the same seed gives the same tokens and the same counts, another seed
    other tokens; logprobs, penalty and stop ids behave as plain greedy's under speculation."""
    _, _, ncfg, tensors = build("v32")
    n = ncfg["num_hidden_layers"]
    m = dsv3.Model.from_tensors(ncfg, agreeing_mtp(_main_tensors(tensors, n), n, 0.2), precision="exact", mtp=True,
                                max_seq_len=64)
    kw = dict(do_sample=True, temperature=0.8, top_p=0.95, speculative="mtp", num_draft=3)
    a = m.generate(IDS[:10], 30, seed=11, **kw)
    sa = m.speculative_stats
    b = m.generate(IDS[:10], 30, seed=11, **kw)
    sb = m.speculative_stats
    c = m.generate(IDS[:10], 30, seed=12, **kw)
    assert np.array_equal(a, b) and (sa.rounds, sa.drafted, sa.accepted) == (sb.rounds, sb.drafted, sb.accepted)
    assert not np.array_equal(a, c)
    assert len(a) == 30 and sa.rounds > 0 and 0 < sa.accepted <= sa.drafted
    for extra in (dict(logprobs=3), dict(repetition_penalty=1.5), dict(stop=[int(m.generate(IDS[:10], 6)[4])])):
        ref = m.generate(IDS[:10], 20, return_dict=True, **extra)
        out = m.generate(IDS[:10], 20, return_dict=True, speculative="mtp", num_draft=3, **extra)
        assert np.array_equal(ref.token_ids, out.token_ids) and ref.finish_reason == out.finish_reason, extra
        assert ref.logprobs == out.logprobs and ref.top_logprobs == out.top_logprobs


@pytest.mark.parametrize("keys", ["f32", "fp8"])
def test_v32_cache_bytes_count_the_mtp_index_keys(keys):
    """cache_bytes_per_token: per layer the latent row (kv_lora + rope f32) and the index-key row (head_dim f32,
    or FP8 codes + one f32 scale per 128), the MTP layer's too when it is loaded."""
    _, _, ncfg, tensors = build("v32")
    n = ncfg["num_hidden_layers"]
    key = 4 * ncfg["index_head_dim"] if keys == "f32" else ncfg["index_head_dim"] + 4
    per_layer = 4 * (ncfg["kv_lora_rank"] + ncfg["qk_rope_head_dim"]) + key
    with_mtp = dsv3.Model.from_tensors(ncfg, tensors, precision="exact", mtp=True, max_seq_len=16, index_keys=keys)
    plain = dsv3.Model.from_tensors(ncfg, _main_tensors(tensors, n), precision="exact", max_seq_len=16,
                                    index_keys=keys)
    assert plain.cache_bytes_per_token == n * per_layer
    assert with_mtp.cache_bytes_per_token == (n + 1) * per_layer
    assert dsv3._lib.batch_token_bytes(with_mtp._native, mtp=True) == (n + 1) * per_layer
    assert dsv3._lib.batch_token_bytes(with_mtp._native) == n * per_layer


@pytest.mark.parametrize("layout", ["hf", "fp8_block"])
def test_v32_mtp_layer_loads_from_a_checkpoint_with_its_indexer(tmp_path, layout):
    """A V3.2 checkpoint's MTP layer (its indexer weights named by the C tensor table; FP8 wq_b / wk in the
    fp8_block layout) loads with mtp=True, and so does its `convert --keep-mtp` copy, with the same MTP logits;
    speculative decoding equals plain greedy; without one of its indexer tensors loading names it."""
    from dsv3.convert import convert
    from dsv3.parity import default_config
    from dsv3.testing.checkpoints import write_checkpoint
    cfg = dsv3.load_config(dict(default_config(), model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"],
                                index_n_heads=8, index_head_dim=16, index_topk=6))
    src = write_checkpoint(str(tmp_path / "v32"), cfg, layout=layout, dtype="float32", shards=2, mtp=True,
                           scale=cfg.hidden_size ** -0.5)
    dst = str(tmp_path / "dst")
    convert(src, dst, format="bf16", keep_mtp=True, quiet=True)
    prompt = IDS[:9] % cfg.vocab_size
    outs, h = [], None
    for path in (src, dst):  # the MTP layer over the same hidden states (the source model's)
        m = dsv3.Model.from_pretrained(path, max_seq_len=48, precision="exact", mtp=True)
        assert m.has_mtp
        if h is None:
            _, h = m.forward(prompt, hidden=True)
        outs.append(m.mtp_forward(np.append(prompt[1:], 5), h, logits="all")[0])
        ref = m.generate(prompt[:3], 20)
        assert np.array_equal(m.generate(prompt[:3], 20, speculative="mtp", num_draft=3), ref)
    assert np.array_equal(outs[0], outs[1])
    t = dict(m._checkpoint.canonical_tensors())
    name = f"model.layers.{cfg.num_hidden_layers}.self_attn.indexer.wk.weight"
    del t[name]
    with pytest.raises(ValueError, match="missing tensor " + name.replace(".", r"\.")):
        dsv3.Model.from_tensors(m.config, t, precision="exact", mtp=True)
