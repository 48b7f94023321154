"""The batched engine: a ragged batch equals one sequence at a time, bitwise (f32 weights)."""
import numpy as np
import pytest

import dsv3
from dsv3.engine import Engine
from serve_helpers import load


@pytest.fixture(scope="module")
def model():
    return load(max_seq_len=128)


def test_batch_forward_bitwise_equals_single_sequence(model):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 512, n) for n in (9, 3, 17, 1)]
    ref = []
    for p in prompts:
        model.reset()
        ref.append((model.forward(p), model.forward(np.array([7]))[0], model.forward(np.array([8, 9]))))
    b = dsv3._lib.Batch(model._native, 5, 64)
    # step 1: four prefills of different lengths, all/last/none logits, slots out of order
    seqs = np.array([[3, 9, 2], [0, 3, 1], [4, 17, 2], [1, 1, 0]], np.int64)
    lo = b.forward(np.concatenate(prompts), seqs)
    assert lo.shape == (9 + 1 + 17, 512)
    assert np.array_equal(lo[:9], ref[0][0]) and np.array_equal(lo[9], ref[1][0][-1])
    assert np.array_equal(lo[10:], ref[2][0])
    # step 2: decode tokens and a 2-token chunk share a step, hidden states asked
    lo, hid = b.forward(np.array([7, 7, 7, 8, 7]), np.array([[1, 1, 1], [3, 1, 1], [0, 2, 2], [4, 1, 1]], np.int64),
                        hidden=True)
    assert np.array_equal(lo[0], ref[3][1]) and np.array_equal(lo[1], ref[0][1])
    assert np.array_equal(lo[2], ref[1][1]) and np.array_equal(lo[4], ref[2][1])
    assert [b.length(i) for i in range(5)] == [5, 2, 0, 10, 18]
    head = dict(model._checkpoint.canonical_tensors())["lm_head.weight"]
    assert np.allclose(hid @ np.asarray(head, np.float32).T, lo, atol=1e-4)


@pytest.mark.parametrize("isa,form", [(None, None), (None, "absorbed"), ("avx2", None), ("scalar", "absorbed")])
def test_many_decode_sequences_in_one_step_bitwise(model, isa, form, monkeypatch):
    """Eleven sequences of different lengths decode in one step (the absorbed attention of all of them in
    one call: token tiles of 8 across sequences, W_UK/W_UV once), with a prefill chunk splitting the decode
    tokens into two runs (DSV3_MLA_FORM=absorbed: the chunk joins that call too): every row equals that
    sequence run alone, bitwise, on every kernel path."""
    if isa is not None and isa not in dsv3.cpu_info()["supported_isas"]:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    if form:
        monkeypatch.setenv("DSV3_MLA_FORM", form)
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, 512, n) for n in (1, 5, 2, 9, 3, 12, 4, 7, 6, 2, 30)]
    nxt = rng.integers(0, 512, len(prompts))
    ref = []
    for p, t in zip(prompts, nxt):
        model.reset()
        model._native.forward(p, isa=isa, logits="none")
        ref.append(model._native.forward(np.array([t]), isa=isa)[0])
    model.reset()
    chunk = rng.integers(0, 512, 3)
    ref_chunk = model._native.forward(chunk, isa=isa)[-1]
    model.reset()
    b = dsv3._lib.Batch(model._native, 12, 64)
    slots = [5, 0, 11, 3, 7, 1, 2, 9, 4, 10, 8]  # out of order
    b.forward(np.concatenate(prompts), np.array([[s, len(p), 0] for s, p in zip(slots, prompts)], np.int64),
              isa=isa)
    seqs = [[s, 1, 1] for s in slots]
    seqs.insert(6, [6, 3, 1])  # a new prompt between the decode tokens
    ids = np.concatenate([nxt[:6], chunk, nxt[6:]])
    lo = b.forward(ids, np.array(seqs, np.int64), isa=isa)
    assert lo.shape == (12, 512)
    got = np.concatenate([lo[:6], lo[7:]])
    for i in range(len(prompts)):
        assert np.array_equal(got[i], ref[i]), i
    assert np.array_equal(lo[6], ref_chunk)


def test_batch_errors_leave_state(model):
    b = dsv3._lib.Batch(model._native, 2, 8)
    b.forward(np.array([1, 2]), np.array([[0, 2, 1]], np.int64))
    for ids, seqs, msg in [([1, 2], [[0, 1, 1], [0, 1, 1]], "twice"), ([1] * 7, [[0, 7, 1]], "do not fit"),
                           ([600], [[1, 1, 1]], "out of range"), ([1], [[2, 1, 1]], "slot 2"),
                           ([1], [[1, 1, 6]], "logits mode"), ([1, 2], [[1, 1, 1]], "ids holds")]:
        with pytest.raises(ValueError, match=msg):
            b.forward(np.array(ids, np.int64), np.array(seqs, np.int64))
    assert (b.length(0), b.length(1)) == (2, 0)
    with pytest.raises(ValueError, match="at least one slot"):
        dsv3._lib.Batch(model._native, 0, 8)
    with pytest.raises(TypeError, match="dsv3._dsv3.Model"):
        dsv3._lib.Batch(object(), 1, 8)


KW = [dict(max_new_tokens=10), dict(max_new_tokens=14, do_sample=True, seed=5, top_p=0.9),
      dict(max_new_tokens=7, do_sample=True, seed=1, temperature=0.7, repetition_penalty=1.3),
      dict(max_new_tokens=9, min_p=0.1, do_sample=True, seed=9), dict(max_new_tokens=12, stop=["e"]),
      dict(max_new_tokens=5, do_sample=True, seed=2, top_k=4, logprobs=2)]
PROMPTS = ["Hello", "Tell me a story about a robot who learns to paint", "日本語", "The quick brown fox",
           [{"role": "user", "content": "Hi"}], "Café 🙂"]


@pytest.mark.parametrize("max_batch,chunk", [(6, 256), (3, 4)])
def test_engine_equals_one_at_a_time(model, max_batch, chunk):
    """Continuous batching (fewer slots than requests: sequences join as others leave; small prefill
    chunks share steps with decodes) gives each request its single-sequence result: bitwise when prompts
    are prefilled whole; with 4-token chunks the same tokens, logprobs within f32 rounding."""
    e = Engine(model, max_batch=max_batch, max_seq_len=128, prefill_chunk=chunk)
    outs = [None] * len(PROMPTS)
    reqs = [e.submit(p, **k) for p, k in zip(PROMPTS, KW)]
    while not e.idle:
        e.step()
        assert len(e.running) <= max_batch
    for i, (p, k, r) in enumerate(zip(PROMPTS, KW, reqs)):
        one = model.generate(p, return_dict=True, **k)
        out = r.output()
        assert np.array_equal(one.token_ids, out.token_ids), i
        assert one.text == out.text and one.finish_reason == out.finish_reason
        if k.get("logprobs") and chunk >= 64:  # whole prompts: the same operations, bitwise
            assert one.logprobs == out.logprobs and one.top_logprobs == out.top_logprobs
        elif k.get("logprobs"):  # 4-token prefill chunks may take the other attention form (absorbed vs
            # expanded, dsv3_mla_prefer_expanded) than the whole prompt: the same math, f32 rounding apart
            np.testing.assert_allclose(one.logprobs, out.logprobs, rtol=1e-5, atol=1e-5)
        outs[i] = out
    assert len(e.free) == e.max_batch


def test_engine_bf16_small_batch_equals_single(model):
    """bf16 weights with fewer rows than the linear's GEMM threshold: still bitwise."""
    m = load(max_seq_len=64, dtype="bfloat16")
    e = Engine(m, max_batch=4, prefill_chunk=8)
    outs = e.generate(PROMPTS[:4], max_new_tokens=8)
    for p, out in zip(PROMPTS[:4], outs):
        assert np.array_equal(m.generate(p, 8, return_dict=True).token_ids, out.token_ids)


def test_cancel_budget_and_errors(model):
    e = Engine(model, max_batch=8, max_seq_len=32, kv_budget_bytes=3 * 32 * 3 * 40 * 4)
    assert e.max_batch == 3
    a, b = e.submit("Hello", max_new_tokens=50), e.submit("Hi", max_new_tokens=50)
    e.step()
    e.cancel(a)
    assert a.finished and len(e.free) == 2
    while not b.finished:
        e.step()
    assert b.output().finish_reason == "length" and len(b.output().token_ids) < 32  # the slot filled up
    with pytest.raises(ValueError, match="does not fit"):
        e.submit(np.arange(33) % 500)
    full = e.submit(np.arange(32) % 500, max_new_tokens=5)  # a prompt that fills the slot still gets one token
    while not full.finished:
        e.step()
    ref = model.generate(np.arange(32) % 500, 5, return_dict=True)  # model max_seq_len 128: not full there
    assert full.output().token_ids.tolist() == ref.token_ids[:1].tolist() and full.output().finish_reason == "length"
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        e.submit(np.array([1, 999]))
    with pytest.raises(ValueError, match="top_p"):
        e.submit("x", top_p=2)
    with pytest.raises(ValueError, match="holds no slot"):
        Engine(model, kv_budget_bytes=10)


def test_engine_naive_attention_equals_single():
    """The expanded-K/V attention path in the engine: same tokens as the single-sequence model."""
    from serve_helpers import checkpoint_dir
    m = dsv3.Model.from_pretrained(checkpoint_dir(), attention="naive", max_seq_len=64)
    e = Engine(m, max_batch=3, prefill_chunk=3)
    outs = e.generate(PROMPTS[:4], max_new_tokens=6, do_sample=True, seed=3)
    for p, out in zip(PROMPTS[:4], outs):
        assert np.array_equal(m.generate(p, 6, do_sample=True, seed=3, return_dict=True).token_ids, out.token_ids)


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_batch_forward_equals_single_on_other_isas(model, isa):
    if isa not in dsv3.cpu_info()["supported_isas"]:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 512, n) for n in (4, 6)]
    refs = []
    for p in prompts:
        model.reset()
        refs.append(model._native.forward(p, isa=isa))
    b = dsv3._lib.Batch(model._native, 2, 32)
    lo = b.forward(np.concatenate(prompts), np.array([[1, 4, 2], [0, 6, 2]], np.int64), isa=isa)
    assert np.array_equal(lo[:4], refs[0]) and np.array_equal(lo[4:], refs[1])


def test_prefix_cache_next_turn_and_shared_prefix(model):
    """With prefix_cache, a prompt that starts with tokens a slot holds (the previous turn's prompt and the
    tokens generated and fed after it) copies those rows and feeds only the rest: the cached-token counts are
    exact, and the results equal the uncached model's (tokens; logprobs within f32 rounding)."""
    rng = np.random.default_rng(21)
    p = rng.integers(0, 512, 12)
    e = Engine(model, max_batch=2, max_seq_len=128, prefix_cache=True)
    first = e.generate([p], max_new_tokens=6, logprobs=0)[0]
    turn2 = np.concatenate([p, first.token_ids, rng.integers(0, 512, 3)])  # the next turn of a conversation
    cases = [(turn2, 12 + 5),  # the last generated token was sampled, never fed: not in the cache
             (p, 11),  # the same prompt: all but its last token (whose logits are sampled)
             (np.concatenate([p[:5], [(p[5] + 1) % 512], p[6:]]), 5)]  # diverges at token 5
    for prompt, hit in cases:
        req = e.submit(prompt, max_new_tokens=6, logprobs=0)
        while not req.finished:
            e.step()
        assert req.cached_tokens == hit
        ref = model.generate(prompt, 6, logprobs=0, return_dict=True)
        out = req.output()
        assert np.array_equal(out.token_ids, ref.token_ids)
        np.testing.assert_allclose(out.logprobs, ref.logprobs, rtol=1e-5, atol=1e-5)
    assert e.prefix_hit_tokens == 17 + 11 + 5
    # two requests at once: the second takes the rows of the first's running slot once they exist
    a = e.submit(turn2, max_new_tokens=3)
    e.step()
    b = e.submit(np.concatenate([turn2, [9, 9]]), max_new_tokens=3)
    while not (a.finished and b.finished):
        e.step()
    assert b.cached_tokens >= len(turn2)
    assert np.array_equal(b.output().token_ids, model.generate(np.concatenate([turn2, [9, 9]]), 3,
                                                               return_dict=True).token_ids)
    # the same prompt three times at once (OpenAI n): the later ones wait one step for the first's rows
    e3 = Engine(model, max_batch=4, max_seq_len=128, prefix_cache=True)
    reqs = [e3.submit(turn2, max_new_tokens=4, do_sample=True, seed=s) for s in (1, 2, 3)]
    while not all(r.finished for r in reqs):
        e3.step()
    assert [r.cached_tokens for r in reqs] == [0, len(turn2) - 1, len(turn2) - 1]
    for s, r in zip((1, 2, 3), reqs):
        ref = model.generate(turn2, 4, do_sample=True, seed=s, return_dict=True)
        assert np.array_equal(r.output().token_ids, ref.token_ids)
    off = Engine(model, max_batch=2, max_seq_len=128)  # off by default: nothing is reused
    off.generate([p], max_new_tokens=2)
    assert off.submit(p, max_new_tokens=1).cached_tokens == 0 and off.prefix_hit_tokens == 0


def test_copy_prefix_checks(model):
    b = dsv3._lib.Batch(model._native, 2, 16)
    b.forward(np.arange(5), np.array([[0, 5, 0]], np.int64))
    with pytest.raises(ValueError, match="holds 5 tokens, cannot copy 6"):
        b.copy_prefix(0, 1, 6)
    with pytest.raises(ValueError, match="out of range"):
        b.copy_prefix(0, 2, 1)
    b.copy_prefix(0, 1, 3)
    assert (b.length(0), b.length(1)) == (5, 3)
    b.copy_prefix(0, 0, 2)
    assert b.length(0) == 2
    lo = b.forward(np.array([3, 2]), np.array([[1, 1, 1], [0, 1, 1]], np.int64))  # rows 0..2 / 0..1 copied
    model.reset()
    ref3 = model.forward(np.arange(4))[-1]
    model.reset()
    ref2 = model.forward(np.array([0, 1, 2]))[-1]
    assert np.allclose(lo[0], ref3, atol=1e-5) and np.allclose(lo[1], ref2, atol=1e-5)
