"""Speculative decoding in the batched engine (Engine(..., speculative="mtp")): the per-slot MTP caches
(_dsv3.BatchMTP), the verification chunk of a batched step (logits mode 3), and the engine's output equal to
plain decoding (greedy, bit for bit) and to Model.generate(..., speculative="mtp") (sampled: the same drafts
and draws), whatever else is in the batch."""
import numpy as np
import pytest

import dsv3
from dsv3.engine import Engine
from dsv3.testing.mtp import agreeing_mtp
from mtp_helpers import build, finish_speculative_engine
from serve_helpers import load

IDS = np.array([3, 17, 5, 60, 2, 9, 41, 77, 12], np.int64)


def _main_tensors(tensors, n):
    return {k: v for k, v in tensors.items() if not k.startswith(f"model.layers.{n}.")}


def _tiny(damp, max_seq_len=64, **kw):
    """The tiny transformers-shaped model with an MTP layer: agreeing (damp) or random (None)."""
    _, _, ncfg, tensors = build("tiny")
    n = ncfg["num_hidden_layers"]
    t = tensors if damp is None else agreeing_mtp(_main_tensors(tensors, n), n, damp)
    return dsv3.Model.from_tensors(ncfg, t, precision="exact", mtp=True, max_seq_len=max_seq_len, **kw), ncfg


@pytest.fixture(scope="module")
def text_model():
    """The serving tests' checkpoint (f32, tokenizer) with an MTP layer that agrees part of the time."""
    base = load(max_seq_len=128)
    n = base.config.num_hidden_layers
    t = agreeing_mtp(dict(base._checkpoint.canonical_tensors()), n, 0.3)
    m = dsv3.Model.from_tensors(base.config, t, mtp=True, max_seq_len=128)
    m.tokenizer = base.tokenizer
    return m


def test_batch_verify_chunk_equals_decode_steps():
    """A verification chunk (mode 3) in a step with a prefill and a decode token: its rows are bitwise the
    logits of token-by-token decoding, and the other sequences' rows are unchanged by it."""
    m, ncfg = _tiny(0.4)
    V = ncfg["vocab_size"]
    m.reset()
    m.forward(IDS, logits="none")
    steps = [m.forward(IDS[i:i + 1], logits="last")[0] for i in range(4)]
    m.reset()
    pre = m.forward(IDS[:5], logits="last")[0]
    m.reset()
    m.forward(IDS[:3], logits="none")
    dec = m.forward(IDS[3:4], logits="last")[0]
    b = dsv3._lib.Batch(m._native, 3, 32)
    b.forward(IDS, np.array([[2, 9, 0]], np.int64))
    b.forward(IDS[:3], np.array([[0, 3, 0]], np.int64))
    lo, hid = b.forward(np.concatenate([IDS[:5], IDS[3:4], IDS[:4]]),
                        np.array([[1, 5, 1], [0, 1, 1], [2, 4, 3]], np.int64), hidden=True)
    assert lo.shape == (1 + 1 + 4, V) and hid.shape == (6, ncfg["hidden_size"])
    assert np.array_equal(lo[0], pre) and np.array_equal(lo[1], dec)
    assert np.array_equal(lo[2:], np.stack(steps))
    assert [b.length(i) for i in range(3)] == [4, 5, 13]
    with pytest.raises(ValueError, match="logits mode"):
        b.forward(IDS[:1], np.array([[0, 1, 6]], np.int64))


def test_batch_hidden_all_modes_run_the_head_on_the_last_row_only():
    """Modes 4 / 5 (DSV3_BATCH_HIDDEN_ALL + none / last): the hidden states of every new token, logits of none /
    the last one only (the returned logits have 0 / 1 rows: the head ran on no other row), bitwise mode 2's
    rows, in a step beside other sequences."""
    m, ncfg = _tiny(0.4)
    V, D = ncfg["vocab_size"], ncfg["hidden_size"]
    b = dsv3._lib.Batch(m._native, 3, 32)
    lo_all, hid_all = b.forward(IDS, np.array([[0, 9, 2]], np.int64), hidden=True)
    lo, hid = b.forward(np.concatenate([IDS[:4], IDS[:2]]), np.array([[1, 4, 4], [2, 2, 1]], np.int64), hidden=True)
    assert lo.shape == (1, V) and hid.shape == (4 + 1, D)
    assert np.array_equal(hid[:4], hid_all[:4]) and np.array_equal(lo[0], lo_all[1])
    assert np.array_equal(hid[4], hid_all[1])
    lo, hid = b.forward(IDS[4:], np.array([[1, 5, 5]], np.int64), hidden=True)
    assert lo.shape == (1, V) and hid.shape == (5, D)
    assert np.array_equal(lo[0], lo_all[-1]) and np.array_equal(hid, hid_all[4:])
    assert b.forward(IDS[:3], np.array([[2, 3, 5]], np.int64)).shape == (1, V)  # hidden not asked
    assert [b.length(i) for i in range(3)] == [9, 9, 5]


class _CountingBatch:
    """The engine's Batch with every forward's (modes, logits rows, hidden rows) recorded."""

    def __init__(self, batch):
        self.batch, self.calls = batch, []

    def __getattr__(self, name):
        return getattr(self.batch, name)

    def forward(self, ids, seqs, hidden=False):
        out = self.batch.forward(ids, seqs, hidden=hidden)
        lo, hid = out if hidden else (out, None)
        self.calls.append(([tuple(s) for s in seqs.tolist()], lo.shape[0], None if hid is None else hid.shape[0]))
        return out


def test_kv_budget_counts_the_mtp_caches():
    """A speculative engine's slots hold the MTP layer's latent cache too: kv_budget_bytes admits fewer of them
    (a budget of 3 plain slots fits 2 speculative ones: 3 L rows < 3 (L + 1) rows per token), kv_cache_bytes
    counts it, and so does the MTP model's cache_bytes_per_token (its own MTP cache); at most that many
    sequences run at once."""
    m, ncfg = _tiny(0.4, max_seq_len=32)
    L, row = ncfg["num_hidden_layers"], 4 * (ncfg["kv_lora_rank"] + ncfg["qk_rope_head_dim"])  # f32 latent rows
    assert dsv3._lib.batch_token_bytes(m._native) == L * row
    assert dsv3._lib.batch_token_bytes(m._native, mtp=True) == m.cache_bytes_per_token == (L + 1) * row
    assert m.cache_bytes == 32 * (L + 1) * row
    plain_model = dsv3.Model.from_tensors(ncfg, _main_tensors(build("tiny")[3], L), precision="exact", max_seq_len=32)
    assert plain_model.cache_bytes_per_token == dsv3._lib.batch_token_bytes(plain_model._native, mtp=True) == L * row
    budget = 3 * 32 * L * row
    plain = Engine(m, max_batch=8, kv_budget_bytes=budget)
    spec = Engine(m, max_batch=8, kv_budget_bytes=budget, speculative="mtp")
    assert (plain.max_batch, spec.max_batch) == (3, 3 * L // (L + 1))
    assert plain.kv_cache_bytes == 3 * 32 * L * row and spec.kv_cache_bytes == spec.max_batch * 32 * (L + 1) * row
    assert spec.kv_cache_bytes <= budget
    assert spec.spec.mtp.slots == spec.max_batch and "kv_cache_bytes=" in repr(spec) and "mtp" in repr(spec)
    for e in (plain, spec):
        reqs = [e.submit(IDS[:3 + i], max_new_tokens=4) for i in range(4)]
        e.step()
        assert len(e.running) == e.max_batch and len(e.waiting) == 4 - e.max_batch
        while not e.idle:
            e.step()
        ref = [m.generate(IDS[:3 + i], 4) for i in range(4)]
        assert all(np.array_equal(r.output().token_ids, x) for r, x in zip(reqs, ref))
    with pytest.raises(ValueError, match="holds no slot"):
        Engine(m, kv_budget_bytes=32 * L * row, speculative="mtp")
    Engine(m, kv_budget_bytes=32 * L * row)  # one plain slot fits


def test_engine_speculative_prefill_computes_last_logits_only():
    """A speculative engine's prefill chunks ask for hidden states of every prompt token (the MTP layer's
    input) and logits of the prompt's last token only: a 9-token prompt in chunks of 4 computes 0, 0, 1 logits
    rows (not 4, 4, 1), and the tokens are plain greedy's."""
    m, ncfg = _tiny(0.4)
    ref = m.generate(IDS, 6)
    e = Engine(m, max_batch=2, speculative="mtp", num_draft=2, prefill_chunk=4)
    e.batch = _CountingBatch(e.batch)
    out = e.generate([IDS], max_new_tokens=6)[0]
    assert np.array_equal(out.token_ids, ref)
    prefill = [c for c in e.batch.calls if c[0][0][2] >= 4]
    assert [(c[0][0][1:], c[1], c[2]) for c in prefill] == [((4, 4), 0, 4), ((4, 4), 0, 4), ((1, 5), 1, 1)]
    for seqs, rows, hrows in e.batch.calls[3:]:  # the rounds: verification chunks (k + 1 rows) or decode rows
        assert rows == hrows == sum(n if mode == 3 else 1 for _, n, mode in seqs)


def test_batch_mtp_slots_equal_the_models_mtp_layer():
    """BatchMTP: each slot's MTP forward is bitwise the model's own MTP forward of that sequence alone
    (several sequences per call, logits none / last / all), with copy_prefix / truncate / release and checks."""
    m, ncfg = _tiny(None)
    D, V = ncfg["hidden_size"], ncfg["vocab_size"]
    rng = np.random.default_rng(3)
    hid = rng.standard_normal((12, D), dtype=np.float32)
    toks = rng.integers(0, V, 12)
    m.reset()  # the same calls, one sequence at a time, on the model's own MTP cache
    ref_c, g_c = m.mtp_forward(toks[:3], hid[:3], logits="all")
    m.reset()
    m.mtp_forward(toks[:5], hid[:5], logits="none")
    ref_a, g_a = m.mtp_forward(toks[5:7], hid[5:7], logits="all")
    ref_b, g_b = m.mtp_forward(toks[7:9], hid[7:9], logits="last")
    bm = dsv3._lib.BatchMTP(m._native, 3, 16)
    assert (bm.slots, bm.capacity) == (3, 16)
    lo, g = bm.forward(toks[:5], hid[:5], np.array([[2, 5, 0]], np.int64))
    assert lo.shape == (0, V) and bm.length(2) == 5
    lo, g = bm.forward(toks[5:7], hid[5:7], np.array([[2, 2, 2]], np.int64))
    assert np.array_equal(lo, ref_a) and np.array_equal(g, g_a)
    bm.copy_prefix(2, 0, 7)
    lo, g = bm.forward(np.concatenate([toks[7:9], toks[:3]]), np.concatenate([hid[7:9], hid[:3]]),
                       np.array([[0, 2, 1], [1, 3, 2]], np.int64))
    assert np.array_equal(lo[0], ref_b[0]) and np.array_equal(g[0], g_b[-1])
    assert np.array_equal(lo[1:], ref_c) and np.array_equal(g[1:], g_c)
    assert [bm.length(i) for i in range(3)] == [9, 3, 7]
    bm.truncate(0, 7)
    lo2, _ = bm.forward(toks[7:9], hid[7:9], np.array([[0, 2, 1]], np.int64))
    assert np.array_equal(lo2[0], ref_b[0])
    bm.release(1)
    assert bm.length(1) == 0
    for ids, h, seqs, msg in [(toks[:1], hid[:1], [[3, 1, 1]], "out of range"),
                              (toks[:2], hid[:2], [[1, 1, 1], [1, 1, 1]], "twice"),
                              (toks[:1], hid[:1], [[1, 1, 3]], "logits mode"),
                              (toks[:2], hid[:2], [[1, 1, 1]], "ids holds"),
                              (toks[:1], hid[:2], [[1, 1, 1]], "hidden"),
                              (np.array([V]), hid[:1], [[1, 1, 1]], "out of range"),
                              (np.zeros(17, np.int64), np.zeros((17, D), np.float32), [[1, 17, 1]], "do not fit")]:
        with pytest.raises(ValueError, match=msg):
            bm.forward(np.asarray(ids, np.int64), np.ascontiguousarray(h), np.array(seqs, np.int64))
    assert bm.length(1) == 0
    with pytest.raises(ValueError, match="cannot copy"):
        bm.copy_prefix(1, 0, 1)
    with pytest.raises(TypeError):
        bm.forward(toks[:1], hid[:1].astype(np.float64), np.array([[1, 1, 1]], np.int64))
    plain = dsv3.Model.from_tensors(ncfg, _main_tensors(build("tiny")[3], ncfg["num_hidden_layers"]),
                                    precision="exact", max_seq_len=16)
    with pytest.raises(ValueError, match="no MTP layer"):
        dsv3._lib.BatchMTP(plain._native, 2, 8)
    with pytest.raises(ValueError, match="mtp=True"):
        Engine(plain, speculative="mtp")
    with pytest.raises(ValueError, match="num_draft"):
        Engine(m, speculative="mtp", num_draft=0)
    with pytest.raises(ValueError, match="speculative"):
        Engine(m, speculative="eagle")


@pytest.mark.parametrize("damp,kw", [(0.0, {}), (0.4, {}), (None, {}), (0.4, {"attention": "naive"}),
                                     (0.4, {"kv_cache_dtype": "bf16"})])
def test_engine_greedy_speculative_equals_plain(damp, kw):
    """Greedy: the speculative engine's tokens are plain decoding's (Model.generate and the engine without
    speculation), bit for bit, for several draft lengths, prompts joining as others leave, at every acceptance
    level, naive attention and a bf16 latent cache too; its acceptance counts are Model.generate's (the same
    drafts); and a sequence running into max_seq_len stops where plain decoding does."""
    m, ncfg = _tiny(damp, **kw)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, ncfg["vocab_size"], n) for n in (5, 1, 12, 3, 9)]
    news = [20, 11, 16, 1, 25]
    ref, stats = [], []
    for p, n in zip(prompts, news):
        ref.append(m.generate(p, n))
        m.generate(p, n, speculative="mtp", num_draft=3)
        stats.append(m.speculative_stats)
    for k in (1, 3, 4):
        e = Engine(m, max_batch=3, speculative="mtp", num_draft=k)
        reqs = [e.submit(p, max_new_tokens=n) for p, n in zip(prompts, news)]
        finish_speculative_engine(e, reqs, ref, stats, damp, k)
    full_plain = Engine(m, max_batch=2, max_seq_len=30).generate([IDS, IDS[:4]], max_new_tokens=60)
    full_spec = Engine(m, max_batch=2, max_seq_len=30, speculative="mtp", num_draft=3).generate(
        [IDS, IDS[:4]], max_new_tokens=60)
    for a, b in zip(full_plain, full_spec):
        assert np.array_equal(a.token_ids, b.token_ids) and a.finish_reason == b.finish_reason == "length"


KW = [dict(max_new_tokens=10), dict(max_new_tokens=14, do_sample=True, seed=5, top_p=0.9),
      dict(max_new_tokens=7, do_sample=True, seed=1, temperature=0.7, repetition_penalty=1.3),
      dict(max_new_tokens=12, stop=["e"]), dict(max_new_tokens=16, logprobs=3),
      dict(max_new_tokens=9, do_sample=True, seed=2, top_k=4, logprobs=2), dict(max_new_tokens=13, repetition_penalty=1.4)]
PROMPTS = ["Hello", "Tell me a story about a robot who learns to paint", "日本語", "The quick brown fox",
           [{"role": "user", "content": "Hi"}], "Café 🙂", "Once upon a time"]


def test_engine_speculative_text_stops_logprobs_streaming(text_model):
    """Text requests with stop strings, logprobs, penalties and sampling, more requests than slots: each
    request's output is Model.generate(..., speculative="mtp")'s (the same drafts, acceptance draws and
    tokens, so sampled requests do not depend on the rest of the batch), greedy ones also plain greedy's;
    streamed chunks (several per step when drafts are accepted) add up to the output."""
    m = text_model
    e = Engine(m, max_batch=3, speculative="mtp", num_draft=3)
    reqs = [e.submit(p, **k) for p, k in zip(PROMPTS, KW)]
    streamed = {r.id: [] for r in reqs}
    multi = 0
    while not e.idle:
        for r in e.step():
            streamed[r.id].extend(r.new_chunks)
            multi += len(r.new_chunks) > 1
    assert multi > 0 and e.speculative_stats.accepted > 0
    for i, (p, k, r) in enumerate(zip(PROMPTS, KW, reqs)):
        out = r.output()
        one = m.generate(p, return_dict=True, speculative="mtp", num_draft=3, **k)
        assert np.array_equal(one.token_ids, out.token_ids), i
        assert one.text == out.text and one.finish_reason == out.finish_reason, i
        assert one.logprobs == out.logprobs and one.top_logprobs == out.top_logprobs, i
        if not k.get("do_sample"):
            plain = m.generate(p, return_dict=True, **k)
            assert np.array_equal(plain.token_ids, out.token_ids) and plain.text == out.text, i
            assert plain.logprobs == out.logprobs and plain.top_logprobs == out.top_logprobs, i
        chunks = streamed[r.id]
        assert "".join(c.text for c in chunks) == out.text
        assert [c.token_id for c in chunks] == list(out.token_ids)
        assert chunks[-1].finish_reason == out.finish_reason and all(c.finish_reason is None for c in chunks[:-1])
    assert reqs[3].output().finish_reason == "stop" and "e" not in reqs[3].output().text


def test_engine_speculative_alone_equals_in_a_batch(text_model):
    """A sampled request gives the same tokens alone and next to others (prefill chunks of 4 tokens)."""
    kw = dict(max_new_tokens=12, do_sample=True, seed=7, temperature=0.8)
    alone = Engine(text_model, max_batch=1, speculative="mtp", num_draft=2, prefill_chunk=4).generate(
        ["The quick brown fox"], **kw)[0]
    e = Engine(text_model, max_batch=4, speculative="mtp", num_draft=2, prefill_chunk=4)
    others = [e.submit(p, max_new_tokens=n) for p, n in (("Hello", 20), ("A much longer prompt than that one", 6))]
    r = e.submit("The quick brown fox", **kw)
    e.submit("Hi", max_new_tokens=3, do_sample=True, seed=1)
    while not e.idle:
        e.step()
    assert np.array_equal(alone.token_ids, r.output().token_ids) and alone.text == r.output().text
    assert all(o.finished for o in others)


def test_engine_speculative_prefix_cache_and_cancel(text_model):
    """With the prefix cache, a conversation's next turn takes the cached prompt rows of the main and MTP
    caches (one fewer position for the MTP layer) and still gives plain greedy's tokens; a cancelled
    speculative request frees its slot."""
    m = text_model
    e = Engine(m, max_batch=2, speculative="mtp", num_draft=2, prefix_cache=True)
    turn1 = [{"role": "user", "content": "Tell me a story"}]
    first = e.generate([turn1], max_new_tokens=10)[0]
    turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "More"}]
    second = e.generate([turn2], max_new_tokens=10)[0]
    assert e.prefix_hit_tokens > 0
    assert second.text == m.generate(turn2, 10)
    assert first.text == m.generate(turn1, 10)
    r = e.submit("Hello", max_new_tokens=30)
    e.step()
    e.step()
    e.cancel(r)
    assert r.finished and len(e.free) == e.max_batch and e.idle
