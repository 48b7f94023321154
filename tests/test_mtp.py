"""The MTP layer and speculative decoding: the C MTP forward against an independent torch reference, cache
rollback, the verification forward, greedy speculative output equal to plain greedy bit for bit, the
sampling acceptance rule, and loading the layer from checkpoints."""
import numpy as np
import pytest

import dsv3
from dsv3.testing.mtp import agreeing_mtp
from mtp_helpers import build, check_full_cache_stop, torch_hidden, torch_mtp

IDS = np.array([3, 17, 5, 60, 2, 9, 41, 77, 12], np.int64)


def _main_tensors(tensors, n):
    return {k: v for k, v in tensors.items() if not k.startswith(f"model.layers.{n}.")}


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("name", ["tiny", "grouped", "no_q_lora", "yarn", "bias"])
@pytest.mark.parametrize("attention", ["absorbed", "naive"])
def test_mtp_forward_matches_torch_reference(name, attention):
    """Prefill, then two more positions through the MTP layer's own cache: logits and output hidden
    states within 1e-5 (relative to the largest value) of the torch reference, exact mode."""
    main, big, ncfg, tensors = build(name)
    m = dsv3.Model.from_tensors(ncfg, tensors, precision="exact", mtp=True, max_seq_len=32, attention=attention)
    ids = IDS[:7]
    lo, hid = m.forward(ids, hidden=True)
    href = torch_hidden(main, ids)
    assert _rel(hid, href) < 1e-5
    nxt = np.append(ids[1:], 8)
    ref_logits, ref_g = torch_mtp(big, tensors, nxt, href)
    l1, g1 = m.mtp_forward(nxt[:5], href[:5], logits="all")
    l2, g2 = m.mtp_forward(nxt[5:], href[5:], logits="all")
    assert m.mtp_cache_len == 7 and m.cache_len == 7
    assert _rel(np.concatenate([l1, l2]), ref_logits) < 1e-5
    assert _rel(np.concatenate([g1, g2]), ref_g) < 1e-5
    last, g_last = m.mtp_forward(np.array([4]), ref_g[-1:], logits="last")  # a chained step: its own hidden in
    ref_chain, _ = torch_mtp(big, tensors, np.append(nxt, 4), np.concatenate([href, ref_g[-1:]]))
    assert last.shape == (1, ncfg["vocab_size"]) and _rel(last[0], ref_chain[-1]) < 1e-5


def test_mtp_head_falls_back_to_lm_head_and_errors():
    main, big, ncfg, tensors = build("tiny")
    n = ncfg["num_hidden_layers"]
    t = dict(tensors)
    del t[f"model.layers.{n}.shared_head.head.weight"]
    m = dsv3.Model.from_tensors(ncfg, t, precision="exact", mtp=True, max_seq_len=16)
    h = np.ones((2, ncfg["hidden_size"]), np.float32)
    _, g = m.mtp_forward(np.array([1, 2]), h, logits="none")
    lo, _ = m.mtp_forward(np.array([3]), h[:1], logits="last")
    m.mtp_truncate(2)
    lo2, g2 = m.mtp_forward(np.array([3]), h[:1], logits="last")
    assert np.array_equal(lo, lo2)
    np.testing.assert_allclose(lo[0], g2[0] @ t["lm_head.weight"].T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unexpected tensor"):
        dsv3.Model.from_tensors(ncfg, t, precision="exact")  # MTP tensors without mtp=True
    plain = dsv3.Model.from_tensors(ncfg, _main_tensors(t, n), precision="exact")
    with pytest.raises(ValueError, match="no MTP layer"):
        plain.mtp_forward(np.array([1]), h[:1])
    with pytest.raises(ValueError, match="mtp=True"):
        plain.generate(IDS, 3, speculative="mtp")
    with pytest.raises(ValueError, match="hidden: expected shape"):
        m.mtp_forward(np.array([1, 2]), h[:1])
    with pytest.raises(ValueError, match="truncate"):
        m.mtp_truncate(99)
    with pytest.raises(ValueError, match="missing tensor"):
        dsv3.Model.from_tensors(ncfg, _main_tensors(t, n), precision="exact", mtp=True)


def test_truncate_rolls_back_the_cache():
    """Tokens after a truncation see exactly the kept prefix: the same bits as a model that never saw the
    dropped tokens."""
    _, _, ncfg, tensors = build("grouped")
    t = _main_tensors(tensors, ncfg["num_hidden_layers"])
    a = dsv3.Model.from_tensors(ncfg, t, precision="exact", max_seq_len=32)
    b = dsv3.Model.from_tensors(ncfg, t, precision="exact", max_seq_len=32)
    a.forward(IDS[:6])
    a.forward(np.array([90, 91, 92]))  # rejected drafts
    a.truncate(6)
    assert a.cache_len == 6
    b.forward(IDS[:6])
    assert np.array_equal(a.forward(IDS[6:]), b.forward(IDS[6:]))
    with pytest.raises(ValueError, match="truncate"):
        a.truncate(a.cache_len + 1)
    with pytest.raises(ValueError, match="truncate"):
        a.truncate(-1)


@pytest.mark.parametrize("name,prec,dtype", [("tiny", "exact", None), ("grouped", "exact", None),
                                             ("grouped", "fast", "bfloat16"), ("kimi", "fast", "bfloat16")])
def test_verification_forward_equals_decode_steps(name, prec, dtype):
    """k+1 tokens in one step_attention forward: every row's logits bitwise those of one-token decode
    steps; the hidden states are the final norm's output (lm_head of them gives the logits)."""
    _, _, ncfg, tensors = build(name)
    t = _main_tensors(tensors, ncfg["num_hidden_layers"])
    m = dsv3.Model.from_tensors(ncfg, t, precision=prec, dtype=dtype, max_seq_len=32)
    for prompt in (IDS[:2], IDS[:7]):  # a short prompt: the cost model would pick the expanded form
        m.reset()
        m.forward(prompt, logits="none")
        steps = [m.forward(IDS[i:i + 1])[0] for i in range(5)]
        m.truncate(len(prompt))
        lo, hid = m.forward(IDS[:5], hidden=True, step_attention=True)
        assert np.array_equal(lo, np.stack(steps))
        assert hid.shape == (5, ncfg["hidden_size"])


@pytest.mark.parametrize("name", ["tiny", "grouped", "no_q_lora", "half_split"])
@pytest.mark.parametrize("prec,dtype,attention", [("exact", None, "absorbed"), ("fast", "bfloat16", "absorbed"),
                                                  ("exact", None, "naive")])
def test_greedy_speculative_equals_plain_greedy(name, prec, dtype, attention):
    """Greedy output with MTP drafts is plain greedy's, bit for bit, at every acceptance level (an MTP
    layer that agrees fully, partly, or a random one), for several draft lengths, up to a full cache."""
    _, _, ncfg, tensors = build(name)
    n = ncfg["num_hidden_layers"]
    models = [(d, agreeing_mtp(_main_tensors(tensors, n), n, d)) for d in (0.0, 0.4)] + [("random", tensors)]
    for damp, t in models:
        m = dsv3.Model.from_tensors(ncfg, t, precision=prec, dtype=dtype, mtp=True, max_seq_len=40,
                                    attention=attention)
        for prompt, new in ((IDS, 24), (IDS[:1], 12)):
            ref = m.generate(prompt, new)
            for k in (1, 2, 4):
                out = m.generate(prompt, new, speculative="mtp", num_draft=k)
                assert np.array_equal(ref, out), (damp, k)
                s = m.speculative_stats
                if damp == 0.0:
                    assert s.acceptance_rate == 1.0
        check_full_cache_stop(m, IDS)


def test_greedy_speculative_logprobs_penalty_and_stops():
    _, _, ncfg, tensors = build("tiny")
    n = ncfg["num_hidden_layers"]
    m = dsv3.Model.from_tensors(ncfg, agreeing_mtp(_main_tensors(tensors, n), n, 0.3), precision="exact", mtp=True,
                                max_seq_len=64)
    for kw in (dict(logprobs=3), dict(repetition_penalty=1.5), dict(stop=[int(m.generate(IDS, 6)[4])])):
        ref = m.generate(IDS, 20, return_dict=True, **kw)
        out = m.generate(IDS, 20, return_dict=True, speculative="mtp", num_draft=3, **kw)
        assert np.array_equal(ref.token_ids, out.token_ids) and ref.finish_reason == out.finish_reason, kw
        assert ref.logprobs == out.logprobs and ref.top_logprobs == out.top_logprobs
    with pytest.raises(ValueError, match="num_draft"):
        m.generate(IDS, 3, speculative="mtp", num_draft=0)
    with pytest.raises(ValueError, match="speculative"):
        m.generate(IDS, 3, speculative="eagle")


@pytest.mark.parametrize("layout", ["hf", "hf_fused", "fp8_block", "nvfp4"])
def test_mtp_layer_loads_from_hub_layouts_and_keep_mtp_conversions(tmp_path, layout):
    """The MTP layer of a hub-layout checkpoint and of its `convert --keep-mtp` copy (stored verbatim in the
    source's format) load with mtp=True and give the same MTP logits; without mtp it is skipped."""
    from dsv3.checkpoint import CheckpointError
    from dsv3.convert import convert
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    src = write_checkpoint(str(tmp_path / "src"), tiny_config(), layout=layout, mtp=True, shards=2)
    dst = str(tmp_path / "dst")
    convert(src, dst, format="bf16", keep_mtp=True, quiet=True)
    outs = []
    for path in (src, dst):
        m = dsv3.Model.from_pretrained(path, mtp=True, precision="exact", max_seq_len=32)
        assert m.has_mtp and not dsv3.Model.from_pretrained(path, max_seq_len=32).has_mtp
        _, h = m.forward(IDS[:6], hidden=True)
        outs.append((h, m.mtp_forward(IDS[1:7], h, logits="all")[0]))
        ref = m.generate(IDS[:6], 8)
        assert np.array_equal(ref, m.generate(IDS[:6], 8, speculative="mtp", num_draft=2))
    m = dsv3.Model.from_pretrained(dst, mtp=True, precision="exact", max_seq_len=32)
    m.forward(IDS[:6])
    assert np.array_equal(m.mtp_forward(IDS[1:7], outs[0][0], logits="all")[0], outs[0][1])
    plain = str(tmp_path / "plain")
    write_checkpoint(plain, tiny_config(), layout=layout, shards=1)
    with pytest.raises(CheckpointError, match="no MTP layer"):
        dsv3.Model.from_pretrained(plain, mtp=True)


def _chi2_limit(dof, z=3.719):
    """Wilson-Hilferty: the chi-square quantile with upper tail ~1e-4 (z = 3.719)."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def _chi2(counts, probs):
    n = counts.sum()
    keep = probs > 0
    assert counts[~keep].sum() == 0  # never a token of probability 0
    e = n * probs[keep]
    return float(((counts[keep] - e) ** 2 / e).sum()), int(keep.sum()) - 1


def test_spec_accept_rule_gives_the_target_distribution():
    """Drafts from q, the C rule (accept w.p. min(1, p/q), else resample from norm(max(0, p - q))): the
    tokens follow p (chi-square, 60000 draws, limit at tail 1e-4); accepted drafts follow min(p, q)."""
    from dsv3._native import lib
    rng = np.random.default_rng(0)
    p = np.array([0.05, 0.3, 0.0, 0.25, 0.1, 0.3])
    q = np.array([0.4, 0.1, 0.2, 0.05, 0.25, 0.0])
    state = np.array([12345], np.int64)
    counts, acc = np.zeros(6), np.zeros(6)
    for d in rng.choice(6, size=60000, p=q):
        ok, tok = lib.spec_accept(p, q, int(d), state)
        counts[tok] += 1
        acc[tok] += ok
    stat, dof = _chi2(counts, p)
    assert stat < _chi2_limit(dof), (stat, counts / counts.sum())
    np.testing.assert_allclose(acc / 60000, np.minimum(p, q), atol=0.01)
    with pytest.raises(ValueError, match="probability 0 under q"):
        lib.spec_accept(p, q, 5, state)


def test_sample_probs_is_the_samplers_distribution():
    from dsv3._native import lib
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(50).astype(np.float32)
    for params in ([1.0, 0, 1.0, 0.0, 1.0], [0.7, 5, 1.0, 0.0, 1.0], [1.3, 0, 0.8, 0.05, 1.2], [0.0, 0, 1, 0, 1]):
        par = np.array(params, np.float64)
        seen = np.array([3, 7, 7], np.int64)
        probs = lib.sample_probs(logits, par, seen)
        assert abs(probs.sum() - 1) < 1e-12
        st = np.array([99], np.int64)
        draws = lib.sample_rows(np.repeat(logits[None], 4000, 0), np.repeat(par[None], 4000, 0),
                                np.tile(seen, 4000), np.arange(4001, dtype=np.int64) * 3, st + np.arange(4000), 0)[0]
        stat, dof = _chi2(np.bincount(draws, minlength=50).astype(float), probs)
        assert dof == 0 or stat < _chi2_limit(dof), params
    v = logits.astype(np.float64)
    v[[3, 7]] = np.where(v[[3, 7]] < 0, v[[3, 7]] * 1.2, v[[3, 7]] / 1.2)  # independent: penalty, T=1.3
    e = np.exp((v - v.max()) / 1.3)
    order = np.argsort(-e, kind="stable")
    keep = order[:np.searchsorted(np.cumsum(e[order] / e.sum()), 0.8) + 1]
    ref = np.zeros(50)
    ref[keep] = e[keep]
    ref[ref < 0.05 * e.max()] = 0
    np.testing.assert_allclose(lib.sample_probs(logits, np.array([1.3, 0, 0.8, 0.05, 1.2]), np.array([3, 7, 7])),
                               ref / ref.sum(), rtol=1e-6, atol=1e-12)


def test_sampled_speculative_has_the_plain_distribution():
    """Three tokens sampled with MTP drafts (top-k 3, temperature 1: 27 outcomes): their joint distribution
    equals the exact plain-sampling one computed from the model's logits (chi-square, limit at tail 1e-4)."""
    _, _, ncfg, tensors = build("tiny")
    n = ncfg["num_hidden_layers"]
    m = dsv3.Model.from_tensors(ncfg, agreeing_mtp(_main_tensors(tensors, n), n, 0.4), precision="exact", mtp=True,
                                max_seq_len=16)
    prompt = IDS[:4]

    def topk_probs(ids):
        m.reset()
        lo = m.forward(np.asarray(ids, np.int64), logits="last")[0].astype(np.float64)
        top = np.argsort(-lo, kind="stable")[:3]
        e = np.exp(lo[top] - lo[top].max())
        return dict(zip(top.tolist(), e / e.sum()))

    exact = {}
    for a, pa in topk_probs(prompt).items():
        for b, pb in topk_probs(list(prompt) + [a]).items():
            for c, pc in topk_probs(list(prompt) + [a, b]).items():
                exact[(a, b, c)] = pa * pb * pc
    keys = sorted(exact)
    counts = np.zeros(len(keys))
    drafted = accepted = 0
    N = 1500
    for seed in range(N):
        out = m.generate(prompt, 3, do_sample=True, top_k=3, seed=seed, speculative="mtp", num_draft=2)
        counts[keys.index(tuple(int(t) for t in out))] += 1
        drafted += m.speculative_stats.drafted
        accepted += m.speculative_stats.accepted
    assert 0.1 < accepted / drafted < 0.95  # both branches of the rule ran
    stat, dof = _chi2(counts, np.array([exact[k] for k in keys]))
    assert stat < _chi2_limit(dof), stat


def test_batch_slot_truncate():
    """The batched engine's slots roll back too: a truncated slot continues as if the dropped tokens never came."""
    _, _, ncfg, tensors = build("tiny")
    m = dsv3.Model.from_tensors(ncfg, _main_tensors(tensors, ncfg["num_hidden_layers"]), precision="exact",
                                max_seq_len=32)
    b = dsv3._lib.Batch(m._native, 2, 16)
    seq = lambda slot, n: np.array([[slot, n, 2]], np.int64)  # noqa: E731
    b.forward(IDS[:5], seq(0, 5))
    b.forward(IDS[:5], seq(1, 5))
    b.forward(np.array([90, 91]), seq(0, 2))
    b.truncate(0, 5)
    assert b.length(0) == 5
    assert np.array_equal(b.forward(IDS[5:8], seq(0, 3)), b.forward(IDS[5:8], seq(1, 3)))
    with pytest.raises(ValueError, match="holds 8 tokens, cannot copy 99"):
        b.truncate(0, 99)
