"""Model.generate with text, chat messages and ids; the C sampler against transformers' logits processors."""
import numpy as np
import pytest

import dsv3
from dsv3 import _lib
from serve_helpers import load


@pytest.fixture(scope="module")
def model():
    return load(max_seq_len=96)


def sample_rows(logits, rows, seen=None, seeds=None, n_top=0, want_logprobs=True):
    logits = np.ascontiguousarray(np.atleast_2d(logits), np.float32)
    R = logits.shape[0]
    seen = [np.asarray(s, np.int64) for s in (seen or [[]] * R)]
    off = np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64)
    rngs = np.array(seeds if seeds is not None else list(range(R)), np.uint64).view(np.int64)
    out = _lib.sample_rows(logits, np.array(rows, np.float64).reshape(R, 5), np.concatenate(seen + [np.zeros(0, np.int64)]),
                           off, rngs, n_top, want_logprobs)
    return out, rngs


def support(logits, row, seen=(), draws=3000):
    """Tokens drawn at least once from many seeds."""
    L = np.repeat(np.asarray(logits, np.float32)[None], draws, 0)
    (tok, *_), _ = sample_rows(L, [row] * draws, [list(seen)] * draws, seeds=list(range(1, draws + 1)))
    return set(tok.tolist()), tok


def hf_support(logits, T, top_k, top_p, min_p, penalty=1.0, seen=()):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    s = torch.tensor(np.asarray(logits, np.float32))[None]
    ids = torch.tensor([list(seen) or [0]])
    if penalty != 1.0:
        s = RepetitionPenaltyLogitsProcessor(penalty)(ids, s)
    s = TemperatureLogitsWarper(T)(ids, s)
    if top_k:
        s = TopKLogitsWarper(top_k)(ids, s)
    if top_p < 1:
        s = TopPLogitsWarper(top_p)(ids, s)
    if min_p > 0:
        s = MinPLogitsWarper(min_p)(ids, s)
    return set(np.nonzero(np.isfinite(s[0].numpy()))[0].tolist()), torch.softmax(s[0], -1).numpy()


@pytest.mark.parametrize("T,top_k,top_p,min_p", [(1.0, 5, 1.0, 0.0), (0.7, 0, 0.6, 0.0), (1.3, 0, 1.0, 0.3),
                                                  (1.0, 8, 0.8, 0.05)])
def test_sampler_support_and_frequencies_match_transformers(T, top_k, top_p, min_p):
    logits = np.random.default_rng(1).standard_normal(12).astype(np.float32) * 1.5
    ours, toks = support(logits, (T, top_k, top_p, min_p, 1.0))
    ref, probs = hf_support(logits, T, top_k, top_p, min_p)
    assert ours == ref
    freq = np.bincount(toks, minlength=12) / len(toks)
    assert np.allclose(freq, probs, atol=0.035)


def test_repetition_penalty_matches_transformers():
    logits = np.array([2.0, 1.9, -0.5, -0.4, 0.1], np.float32)
    seen = [0, 3, 0]
    (tok, *_), _ = sample_rows(logits, [(0.0, 0, 1, 0, 1.5)], [seen])
    _, probs = hf_support(logits, 1.0, 0, 1.0, 0.0, penalty=1.5, seen=seen)
    assert tok[0] == int(np.argmax(probs)) == 1  # 2.0 / 1.5 < 1.9
    ours, toks = support(logits, (1.0, 0, 1.0, 0.0, 1.5), seen)
    assert np.allclose(np.bincount(toks, minlength=5) / len(toks), probs, atol=0.035)


def test_tiny_temperature_is_greedy_not_nan():
    """issue 9 defect 10: temperature 1e-40 overflowed logits / T to inf, then NaN, and drew the least likely."""
    logits = np.array([0.3, 2.5, -1.0, 2.4], np.float32)
    for T in (1e-40, 1e-30, 1e-8):
        (tok, *_), _ = sample_rows(np.repeat(logits[None], 50, 0), [(T, 0, 1, 0, 1)] * 50, seeds=range(50))
        assert set(tok.tolist()) == {1}
        assert _lib.sample(logits, T, 0, 1.0, 7)[0] == 1
        assert _lib.sample(logits, T, 2, 0.5, 7)[0] == 1


def test_logprobs_are_the_raw_log_softmax():
    logits = np.random.default_rng(2).standard_normal(40).astype(np.float32) * 3
    (tok, lp, top_ids, top_lp), _ = sample_rows(logits, [(1.0, 0, 1, 0, 1)], n_top=3)
    ref = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
    assert abs(lp[0] - ref[tok[0]]) < 1e-5
    assert top_ids[0].tolist() == np.argsort(-ref)[:3].tolist() and np.allclose(top_lp[0], np.sort(ref)[::-1][:3], atol=1e-5)


def test_sampler_rejects_bad_parameters():
    logits = np.zeros(4, np.float32)
    for row, msg in [((1.0, 0, 0.0, 0, 1), "top_p"), ((1.0, 0, 1, 1.5, 1), "min_p"), ((1.0, 0, 1, 0, 0.0), "repetition"),
                     ((np.nan, 0, 1, 0, 1), "temperature")]:
        with pytest.raises(ValueError, match=msg):
            sample_rows(logits, [row])


def test_sampler_rows_are_independent_and_first_error_wins():
    """sample_rows splits its rows over the threads: every row (token, logprob, top list, rng state) equals
    that row sampled alone, and with several bad rows the error is the first bad row's."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((9, 300)).astype(np.float32) * 3
    rows = [(0.0 if i % 3 == 0 else 0.8, i % 4 * 5, 0.9 if i % 2 else 1.0, 0.0, 1.0 + 0.1 * (i % 3)) for i in range(9)]
    seen = [list(range(i, i + 4)) for i in range(9)]
    (tok, lp, ti, tl), rngs = sample_rows(logits, rows, seen, seeds=range(10, 19), n_top=4)
    for i in range(9):
        (t1, l1, i1, p1), r1 = sample_rows(logits[i], [rows[i]], [seen[i]], seeds=[10 + i], n_top=4)
        assert t1[0] == tok[i] and l1[0] == lp[i] and r1[0] == rngs[i], i
        np.testing.assert_array_equal(i1[0], ti[i])
        np.testing.assert_array_equal(p1[0], tl[i])
    (tok2, lp2, _, _), rngs2 = sample_rows(logits, rows, seen, seeds=range(10, 19), want_logprobs=False)
    np.testing.assert_array_equal(tok2, tok)  # not asking for logprobs changes no draw
    np.testing.assert_array_equal(rngs2, rngs)
    assert np.isnan(lp2).all() and np.isfinite(lp).all()
    bad = list(rows)
    bad[5], bad[2] = (1.0, 0, 1, 1.5, 1), (1.0, 0, 0.0, 0, 1)  # row 2: top_p, row 5: min_p
    with pytest.raises(ValueError, match="top_p"):
        sample_rows(logits, bad, seen)


def test_text_in_text_out(model):
    tok = model.tokenizer
    out = model.generate("Hello! How are you", 10)
    assert isinstance(out, str)
    ids = model.generate(np.array(tok.encode("Hello! How are you")), 10)
    assert out == tok.decode(ids)
    chat = [{"role": "user", "content": "Hi"}]
    assert model.generate(chat, 6) == tok.decode(model.generate(np.array(tok.apply_chat_template(chat)), 6))


def test_stream_equals_non_stream(model):
    kw = dict(do_sample=True, seed=11, top_p=0.9)
    full = model.generate("Café 🙂 story", 16, return_dict=True, **kw)
    chunks = list(model.generate("Café 🙂 story", 16, stream=True, **kw))
    assert [c.token_id for c in chunks] == full.token_ids.tolist()
    assert "".join(c.text for c in chunks) == full.text
    assert chunks[-1].finish_reason == full.finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_seeded_sampling_and_greedy(model):
    a = model.generate("Hello", 12, do_sample=True, seed=4)
    assert a == model.generate("Hello", 12, do_sample=True, seed=4)
    greedy = model.generate("Hello", 12)
    assert model.generate("Hello", 12, do_sample=True, temperature=1e-40, seed=4) == greedy
    assert model.generate("Hello", 12, do_sample=False, temperature=5.0) == greedy


def test_logprobs_match_forward(model):
    out = model.generate("Hello", 5, logprobs=2)
    ids = np.concatenate([model.tokenizer.encode("Hello"), out.token_ids[:-1]])
    model.reset()
    logits = model.forward(ids)[-5:].astype(np.float64)
    ref = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    assert np.allclose(out.logprobs, ref[np.arange(5), out.token_ids], atol=1e-4)
    assert [t[0][0] for t in out.top_logprobs] == np.argmax(ref, 1).tolist()


def test_stop_strings_and_ids(model):
    greedy = model.generate("Hello", 20, return_dict=True)
    text = greedy.text
    assert len(text) > 6
    stop = text[3:5]
    out = model.generate("Hello", 20, stop=[stop], return_dict=True)
    assert out.finish_reason == "stop" and out.text == text[:text.find(stop)]
    pieces = list(model.generate("Hello", 20, stop=stop, stream=True))
    assert "".join(p.text for p in pieces) == out.text
    tid = int(greedy.token_ids[4])
    out = model.generate("Hello", 20, stop=tid, return_dict=True)
    k = greedy.token_ids.tolist().index(tid)
    assert out.token_ids.tolist() == greedy.token_ids[:k + 1].tolist() and out.finish_reason == "stop"


def test_bad_arguments(model):
    for kw, msg in [(dict(top_p=0), "top_p"), (dict(temperature=-1), "temperature"), (dict(min_p=2), "min_p"),
                    (dict(repetition_penalty=0), "repetition_penalty"), (dict(stop=[""]), "stop"),
                    (dict(stop=[1.5]), "stop"), (dict(top_k=-1), "top_k"), (dict(logprobs=-1), "logprobs")]:
        with pytest.raises(ValueError, match=msg):
            model.generate("Hello", 3, **kw)
    m2 = dsv3.Model.from_tensors(model.config, dict(model._checkpoint.canonical_tensors()), max_seq_len=16)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        m2.generate("text", 2)
