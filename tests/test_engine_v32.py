"""DeepSeek-V3.2 (sparse attention, the lightning indexer) in the batched engine: each slot caches its own
index keys and each token attends to the rows its indexer selects among its own sequence's. A ragged batch
equals each sequence run alone through Model.forward with the same chunks, bitwise in exact mode
(index_topk 8, prompts up to 30 tokens, so most queries select); slot reuse, truncate and copy_prefix keep
the index keys in step with the latent rows; the Engine (its KV budget counts the index keys), generate
through the engine and the OpenAI server run V3.2; speculative decoding with the MTP layer (its per-slot
index-key caches in BatchMTP) equals plain greedy and the single-sequence speculative path."""
import os
import tempfile

import numpy as np
import pytest

import dsv3
from dsv3.engine import Engine
from dsv3.model import _native_config
from dsv3.parity import default_config
from dsv3.testing.checkpoints import write_checkpoint
from dsv3.testing.mtp import agreeing_mtp
from mtp_helpers import finish_speculative_engine
from serve_helpers import served

TOPK = 8


def v32_config(**over):
    cfg = default_config()
    cfg.update(model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"], index_n_heads=8,
               index_head_dim=16, index_topk=TOPK, **over)
    return cfg


@pytest.fixture(scope="module")
def ckpt():
    d = os.path.join(tempfile.mkdtemp(prefix="dsv3-v32-engine-"), "v32")
    cfg = dsv3.load_config(v32_config())
    write_checkpoint(d, cfg, layout="hf", dtype="float32", shards=1, scale=cfg.hidden_size ** -0.5, tokenizer=True)
    return d


@pytest.fixture(scope="module")
def model(ckpt):
    return dsv3.Model.from_pretrained(ckpt, max_seq_len=128, precision="exact")


def single(model, chunks, isa=None, kv=None):
    """Each chunk (ids, logits mode) fed alone through Model.forward after the previous ones."""
    model.reset()
    out = []
    for ids, mode in chunks:
        lo = model._native.forward(np.asarray(ids, np.int64), isa=isa, logits={0: "none", 1: "last", 2: "all"}[mode])
        out.append(None if mode == 0 else lo)
    return out


def test_ragged_steps_bitwise_equal_one_at_a_time(model):
    """Four sequences of different lengths, chunked prefill crossing index_topk inside a chunk, decode
    tokens and prefill chunks in one step, slots out of order: every logits row equals the sequence run
    alone (Model.forward with the same chunks), bitwise; a dense model (index_topk huge) differs, so the
    selection is exercised."""
    rng = np.random.default_rng(0)
    p = [rng.integers(0, 512, n) for n in (30, 5, 13, 21)]
    d = rng.integers(0, 512, (4, 3))
    slots = [3, 0, 2, 5]
    # per sequence: its chunks in step order (None: not in that step)
    plan = [
        [(p[0][:6], 2), (p[0][6:17], 2), (p[0][17:], 1), (d[0][:1], 1), (d[0][1:], 2)],
        [(p[1], 2), (d[1][:1], 1), (d[1][1:2], 1), (d[1][2:], 1), None],
        [(p[2][:12], 0), (p[2][12:], 1), (d[2][:1], 2), (d[2][1:], 2), None],
        [None, (p[3][:7], 1), (p[3][7:], 2), (d[3][:1], 1), (d[3][1:], 2)],
    ]
    ref = [single(model, [c for c in chunks if c is not None]) for chunks in plan]
    model.reset()
    b = dsv3._lib.Batch(model._native, 6, 64)
    got = [[] for _ in plan]
    for step in range(5):
        seqs, ids, who = [], [], []
        for i, chunks in enumerate(plan):
            if chunks[step] is not None:
                seqs.append([slots[i], len(chunks[step][0]), chunks[step][1]])
                ids.append(chunks[step][0])
                who.append(i)
        lo = b.forward(np.concatenate(ids).astype(np.int64), np.array(seqs, np.int64))
        r = 0
        for i, (_, n, mode) in zip(who, seqs):
            k = {0: 0, 1: 1, 2: n}[mode]
            got[i].append(lo[r:r + k] if mode else None)
            r += k
        assert r == len(lo)
    for i in range(len(plan)):
        assert len(got[i]) == len(ref[i])
        for g, want in zip(got[i], ref[i]):
            assert (g is None) == (want is None)
            if g is not None:
                assert np.array_equal(g, want), (i, np.abs(g - want).max())
    assert [b.length(s) for s in slots] == [33, 8, 16, 24]
    # the whole sequence 0 at once through Model.forward equals its chunked logits within rounding
    model.reset()
    full = model.forward(np.concatenate([p[0], d[0]]))
    assert np.allclose(full[5:17], np.concatenate(ref[0][:2])[5:], atol=1e-4 * np.abs(full).max())
    # the selection matters: dense attention over the same weights gives other logits past index_topk
    dense = dsv3.Model.from_tensors(dict(_native_config(model.config), index_topk=10 ** 6),
                                    dict(model._checkpoint.canonical_tensors()), precision="exact", max_seq_len=128)
    df = dense.forward(np.concatenate([p[0], d[0]]))
    assert np.allclose(df[:TOPK], full[:TOPK], atol=1e-4 * np.abs(full).max())
    assert np.abs(df[TOPK:] - full[TOPK:]).max() > 1e-2 * np.abs(full).max()


def test_slot_reuse_truncate_and_copy_prefix(model):
    """A released slot serves a new sequence as a fresh one; truncate then new tokens equals Model.forward
    then Model.truncate then the same tokens; copy_prefix gives another slot the index keys with the latent
    rows (its continuation equals the source's own), bitwise."""
    rng = np.random.default_rng(1)
    a, bb, c = rng.integers(0, 512, 20), rng.integers(0, 512, 17), rng.integers(0, 512, 6)
    b = dsv3._lib.Batch(model._native, 3, 48)
    b.forward(np.concatenate([a, bb]), np.array([[1, 20, 0], [2, 17, 0]], np.int64))
    b.release(1)
    lo = b.forward(np.concatenate([c, bb[:1]]), np.array([[1, 6, 2], [2, 1, 1]], np.int64))
    assert np.array_equal(lo[:6], single(model, [(c, 2)])[0])
    assert np.array_equal(lo[6], single(model, [(bb, 0), (bb[:1], 1)])[1][0])
    # truncate slot 2 (18 tokens) to 11, then 9 new tokens (past index_topk) and a decode token
    b.truncate(2, 11)
    new = rng.integers(0, 512, 9)
    lo = b.forward(new, np.array([[2, 9, 2]], np.int64))
    model.reset()
    model.forward(np.concatenate([bb, bb[:1]]), logits="none")
    model.truncate(11)
    want = model.forward(new)
    assert np.array_equal(lo, want)
    # copy slot 2's first 15 rows to slot 0; both continue with the same tokens: equal rows
    b.copy_prefix(2, 0, 15)
    b.truncate(2, 15)
    tail = rng.integers(0, 512, 10)
    lo = b.forward(np.concatenate([tail, tail]), np.array([[0, 10, 2], [2, 10, 2]], np.int64))
    assert np.array_equal(lo[:10], lo[10:])
    model.truncate(15)
    assert np.array_equal(lo[:10], model.forward(tail))
    with pytest.raises(ValueError, match="cannot copy"):
        b.copy_prefix(1, 0, 7)


@pytest.mark.parametrize("kv", ["f32", "bf16"])
def test_verification_chunk_equals_decode_steps(ckpt, kv):
    """The speculative verification mode (logits mode 3) on V3.2: each token of a chunk selects its own top-k
    over its own prefix and attends as its one-token decode step (Model.forward one token at a time), bitwise,
    for chunks below, across and past index_topk, beside a prefill and a decode token of other sequences; a
    dense prefill of the same tokens (mode 2) differs, so the per-token form is what is tested."""
    m = dsv3.Model.from_pretrained(ckpt, max_seq_len=64, precision="exact", kv_cache_dtype=kv)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 512, 20)
    for past, n in [(2, 4), (5, 6), (12, 5)]:  # rows seen by the chunk's tokens: <= topk, across it, > topk
        ref = single(m, [(ids[:past], 0)] + [(ids[past + j:past + j + 1], 1) for j in range(n)])[1:]
        b = dsv3._lib.Batch(m._native, 3, 32)
        b.forward(ids[:past], np.array([[1, past, 0]], np.int64))
        b.forward(ids[:3], np.array([[2, 3, 0]], np.int64))
        lo, hid = b.forward(np.concatenate([ids[:7], ids[past:past + n], ids[3:4]]),
                            np.array([[0, 7, 1], [1, n, 3], [2, 1, 1]], np.int64), hidden=True)
        assert lo.shape == (1 + n + 1, 512) and hid.shape == (1 + n + 1, m.config.hidden_size)
        assert np.array_equal(lo[1:1 + n], np.concatenate(ref)), (past, n)
        assert np.array_equal(lo[0], single(m, [(ids[:7], 1)])[0][0])
        assert np.array_equal(lo[-1], single(m, [(ids[:3], 0), (ids[3:4], 1)])[1][0])
        assert [b.length(i) for i in range(3)] == [7, past + n, 4]
        b.truncate(1, past)
        prefill = b.forward(ids[past:past + n], np.array([[1, n, 2]], np.int64))
        if past + n <= TOPK:  # dense: a prefill chunk attends in another form than the decode steps
            assert not np.array_equal(prefill, lo[1:1 + n])


@pytest.mark.parametrize("kv,keys", [("bf16", "f32"), ("fp8", "fp8")])
def test_cache_dtypes_and_fp8_index_keys(ckpt, kv, keys):
    """A bf16 / fp8 latent cache (the selected rows gathered in that layout) and FP8 index keys: batched
    equals one at a time, bitwise."""
    m = dsv3.Model.from_pretrained(ckpt, max_seq_len=64, precision="exact", kv_cache_dtype=kv, index_keys=keys)
    rng = np.random.default_rng(2)
    p = [rng.integers(0, 512, n) for n in (19, 11)]
    nxt = rng.integers(0, 512, 2)
    ref = [single(m, [(q, 2), (nxt[i:i + 1], 1)]) for i, q in enumerate(p)]
    b = dsv3._lib.Batch(m._native, 2, 32)
    lo = b.forward(np.concatenate(p), np.array([[0, 19, 2], [1, 11, 2]], np.int64))
    assert np.array_equal(lo[:19], ref[0][0]) and np.array_equal(lo[19:], ref[1][0])
    lo = b.forward(nxt[::-1].copy(), np.array([[1, 1, 1], [0, 1, 1]], np.int64))
    assert np.array_equal(lo[0], ref[1][1][0]) and np.array_equal(lo[1], ref[0][1][0])


def test_threads_and_isa_do_not_change_the_bits(model):
    """One thread gives the bits of many; the AVX2 and scalar kernel paths each equal their own
    one-at-a-time run."""
    rng = np.random.default_rng(3)
    p = [rng.integers(0, 512, n) for n in (17, 12, 4)]
    seqs = np.array([[0, 17, 2], [1, 12, 2], [2, 4, 2]], np.int64)
    ids = np.concatenate(p)
    runs = {}
    before = dsv3.get_num_threads()
    for nt in (before, 1):
        dsv3.set_num_threads(nt)
        try:
            runs[nt] = dsv3._lib.Batch(model._native, 3, 32).forward(ids, seqs)
        finally:
            dsv3.set_num_threads(before)
    assert np.array_equal(runs[before], runs[1])
    for isa in ("avx2", "scalar"):
        if isa not in dsv3.cpu_info()["supported_isas"]:
            continue
        lo = dsv3._lib.Batch(model._native, 3, 32).forward(ids, seqs, isa=isa)
        ref = np.concatenate([single(model, [(q, 2)], isa=isa)[0] for q in p])
        assert np.array_equal(lo, ref), isa


def test_engine_generates_v32_and_counts_index_keys(model):
    """Engine.generate of several prompts together (chunked prefill, slots reused) equals Model.generate
    one at a time; the slots' bytes include the index keys (per token and layer: the latent row plus
    index_head_dim f32 keys), and kv_budget_bytes limits the slots by that size."""
    c = model.config
    per_token = c.num_hidden_layers * 4 * (c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim)
    assert model.cache_bytes_per_token == per_token
    eng = Engine(model, max_batch=3, max_seq_len=64, prefill_chunk=7)
    assert eng.kv_cache_bytes == 3 * 64 * per_token
    assert Engine(model, max_batch=8, max_seq_len=64, kv_budget_bytes=2 * 64 * per_token + 1).max_batch == 2
    with pytest.raises(ValueError, match="holds no slot"):
        Engine(model, max_batch=2, max_seq_len=64, kv_budget_bytes=64 * per_token - 1)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, 512, n) for n in (14, 3, 22, 9, 11)]
    outs = eng.generate(prompts, max_new_tokens=10)
    for pr, o in zip(prompts, outs):
        model.reset()
        assert list(o.token_ids) == list(model.generate(pr, max_new_tokens=10)), len(pr)
    # prefix cache: a prompt extending another's shares its rows (index keys included)
    eng = Engine(model, max_batch=2, max_seq_len=64, prefill_chunk=7, prefix_cache=True)
    first = eng.generate([prompts[2]], max_new_tokens=4)[0]
    longer = np.concatenate([prompts[2], first.token_ids, rng.integers(0, 512, 5)])
    got = eng.generate([longer], max_new_tokens=6)[0]
    assert eng.prefix_hit_tokens >= len(prompts[2])
    model.reset()
    ref = model.generate(longer, max_new_tokens=6, return_dict=True)
    assert list(got.token_ids) == list(ref.token_ids)


def test_generate_text_through_engine(model):
    """Text in, text out through the engine on the checkpoint's tokenizer, as Model.generate."""
    eng = Engine(model, max_batch=2, max_seq_len=96)
    texts = ["Hello there, how are you today?", "Tell me a story about a dragon and a knight"]
    outs = eng.generate(texts, max_new_tokens=8)
    for t, o in zip(texts, outs):
        model.reset()
        assert o.text == model.generate(t, 8)


def test_many_sparse_queries_in_one_step(model):
    """Two long prefills and two decode tokens in one step: more sparse queries than one gather group holds
    (64), so the groups' boundaries fall inside a sequence; every row equals that sequence run alone."""
    rng = np.random.default_rng(5)
    p = [rng.integers(0, 512, n) for n in (12, 9, 90, 50)]
    nxt = rng.integers(0, 512, 2)
    ref = [single(model, [(p[0], 0), (nxt[:1], 1)])[1], single(model, [(p[1], 0), (nxt[1:], 1)])[1],
           single(model, [(p[2], 2)])[0], single(model, [(p[3], 2)])[0]]
    b = dsv3._lib.Batch(model._native, 4, 100)
    b.forward(np.concatenate(p[:2]), np.array([[0, 12, 0], [3, 9, 0]], np.int64))
    lo = b.forward(np.concatenate([nxt[:1], p[2], nxt[1:], p[3]]),
                   np.array([[0, 1, 1], [1, 90, 2], [3, 1, 1], [2, 50, 2]], np.int64))
    assert np.array_equal(lo[0], ref[0][0]) and np.array_equal(lo[1:91], ref[2])
    assert np.array_equal(lo[91], ref[1][0]) and np.array_equal(lo[92:], ref[3])


def test_serve_command_v32(ckpt):
    """`dsv3 serve` on a V3.2 checkpoint: a completion and a streamed chat reply (prompts longer than
    index_topk) equal Model.generate."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    pytest.importorskip("httpx")
    with served(ckpt, "--max-batch", "3", "--model-name", "v32") as port:
        m = dsv3.Model.from_pretrained(ckpt, max_seq_len=64)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        prompt = "Once upon a time, in a land far away, there lived"
        assert len(m.tokenizer.encode(prompt)) > TOPK
        r = c.completions.create(model="v32", prompt=prompt, max_tokens=8, temperature=0)
        assert r.choices[0].text == m.generate(prompt, 8)
        msgs = [{"role": "user", "content": "Tell me about the sea and the ships on it"}]
        parts = [ev.choices[0].delta.content or "" for ev in
                 c.chat.completions.create(model="v32", messages=msgs, max_tokens=8, seed=3, stream=True)]
        assert "".join(parts) == m.generate(msgs, 8, do_sample=True, seed=3)


# ---- speculative decoding with the MTP layer (BatchMTP's per-slot MTP index keys) ----
@pytest.fixture(scope="module")
def mtp_ckpt():
    d = os.path.join(tempfile.mkdtemp(prefix="dsv3-v32-mtp-"), "v32")
    cfg = dsv3.load_config(v32_config())
    write_checkpoint(d, cfg, layout="hf", dtype="float32", shards=1, mtp=True, scale=cfg.hidden_size ** -0.5)
    return d


def mtp_model(ckpt, damp, max_seq_len=64, **kw):
    """The V3.2 checkpoint with its random MTP layer (damp None) or one that agrees with the main model."""
    m = dsv3.Model.from_pretrained(ckpt, max_seq_len=max_seq_len, precision="exact", mtp=True, **kw)
    if damp is None:
        return m
    n = m.config.num_hidden_layers
    t = {k: v for k, v in dict(m._checkpoint.canonical_tensors()).items() if not k.startswith(f"model.layers.{n}.")}
    return dsv3.Model.from_tensors(m.config, agreeing_mtp(t, n, damp), precision="exact", mtp=True,
                                   max_seq_len=max_seq_len, **kw)


@pytest.mark.parametrize("kw", [{}, {"kv_cache_dtype": "bf16", "index_keys": "fp8"}])
def test_batch_mtp_slots_equal_the_models_mtp_layer(mtp_ckpt, kw):
    """BatchMTP on V3.2: each slot's MTP forward (chunks crossing index_topk, several sequences per call) is
    bitwise the model's own MTP forward of that sequence alone (its index keys in the slot's own cache);
    copy_prefix gives another slot the index keys with the latent rows, truncate / release drop them with the
    rows (a slot refilled with other tokens equals a fresh sequence), and dense attention differs."""
    m = mtp_model(mtp_ckpt, None, **kw)
    D, V = m.config.hidden_size, m.config.vocab_size
    rng = np.random.default_rng(8)
    hid = rng.standard_normal((40, D), dtype=np.float32)
    toks = rng.integers(0, V, 40)

    def alone(chunks):
        m.reset()
        return [m.mtp_forward(toks[a:b], hid[a:b], logits="all") for a, b in chunks]

    ref = alone([(0, 6), (6, 13), (13, 14), (14, 20)])
    bm = dsv3._lib.BatchMTP(m._native, 3, 32)
    out = [bm.forward(toks[0:6], hid[0:6], np.array([[1, 6, 2]], np.int64))]
    lo, g = bm.forward(np.concatenate([toks[6:13], toks[20:23]]), np.concatenate([hid[6:13], hid[20:23]]),
                       np.array([[1, 7, 2], [2, 3, 0]], np.int64))
    out.append((lo, g))
    for a, b in ((13, 14), (14, 20)):
        out.append(bm.forward(toks[a:b], hid[a:b], np.array([[1, b - a, 2]], np.int64)))
    for (l1, g1), (l2, g2) in zip(out, ref):
        assert np.array_equal(l1, l2) and np.array_equal(g1, g2)
    # slot 0 takes slot 1's first 13 positions, then runs 13..20 past index_topk: slot 1's rows
    bm.copy_prefix(1, 0, 13)
    lo, g = bm.forward(toks[13:20], hid[13:20], np.array([[0, 7, 2]], np.int64))
    assert np.array_equal(lo, np.concatenate([ref[2][0], ref[3][0]]))
    # slot 1 truncated to 9, then other tokens: as that sequence alone (no stale index key is read)
    bm.truncate(1, 9)
    other = alone([(0, 6), (6, 9), (25, 36)])[2]
    lo, g = bm.forward(toks[25:36], hid[25:36], np.array([[1, 11, 2]], np.int64))
    assert np.array_equal(lo, other[0]) and np.array_equal(g, other[1])
    bm.release(2)
    lo, _ = bm.forward(toks[:13], hid[:13], np.array([[2, 13, 2]], np.int64))
    assert np.array_equal(lo, alone([(0, 13)])[0][0])
    assert [bm.length(i) for i in range(3)] == [20, 20, 13]
    dense = dsv3.Model.from_tensors(dict(_native_config(m.config), index_topk=10 ** 6),
                                    dict(m._checkpoint.canonical_tensors()), precision="exact", mtp=True,
                                    max_seq_len=64, **kw)
    assert not np.array_equal(dense.mtp_forward(toks[:20], hid[:20], logits="all")[0][TOPK:],
                              np.concatenate([r[0] for r in ref])[TOPK:])


@pytest.mark.parametrize("damp", [0.0, 0.4, None])
def test_engine_speculative_v32_equals_plain_and_single_sequence(mtp_ckpt, damp):
    """Engine(model, speculative="mtp") on V3.2, prompts and generations crossing index_topk, sequences joining
    as others leave: greedy tokens equal plain decoding (Model.generate and the plain engine) bit for bit and
    the single-sequence speculative path's, with the same acceptance counts (the same drafts); an agreeing MTP
    layer accepts every draft."""
    m = mtp_model(mtp_ckpt, damp)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 512, n) for n in (5, 1, 14, 3, 10)]
    news = [20, 11, 16, 2, 25]
    ref, stats = [], []
    for p, n in zip(prompts, news):
        ref.append(m.generate(p, n))
        assert np.array_equal(m.generate(p, n, speculative="mtp", num_draft=3), ref[-1])
        stats.append(m.speculative_stats)
    plain = Engine(m, max_batch=3).generate(prompts, max_new_tokens=25)
    for k in (1, 3):
        e = Engine(m, max_batch=3, speculative="mtp", num_draft=k, prefill_chunk=6)
        reqs = [e.submit(p, max_new_tokens=n) for p, n in zip(prompts, news)]
        finish_speculative_engine(e, reqs, ref, stats, damp, k)
        for i in range(len(reqs)):
            assert np.array_equal(plain[i].token_ids[:news[i]], ref[i])


def test_engine_speculative_v32_counts_the_mtp_index_keys(mtp_ckpt):
    """A speculative V3.2 engine's slots also hold the MTP layer's latent rows and index keys: per token one
    more layer of (latent row + index-key row); kv_cache_bytes and kv_budget_bytes count it; sampled output
    is reproducible by seed and equals Model.generate's with the same seed (the same drafts and draws)."""
    m = mtp_model(mtp_ckpt, 0.3)
    c = m.config
    L, layer = c.num_hidden_layers, 4 * (c.kv_lora_rank + c.qk_rope_head_dim + c.index_head_dim)
    assert dsv3._lib.batch_token_bytes(m._native) == L * layer
    assert dsv3._lib.batch_token_bytes(m._native, mtp=True) == m.cache_bytes_per_token == (L + 1) * layer
    budget = 4 * 64 * L * layer
    spec = Engine(m, max_batch=8, kv_budget_bytes=budget, speculative="mtp", num_draft=3)
    assert spec.max_batch == 4 * L // (L + 1) and spec.kv_cache_bytes == spec.max_batch * 64 * (L + 1) * layer
    assert Engine(m, max_batch=8, kv_budget_bytes=budget).max_batch == 4
    kw = dict(max_new_tokens=18, do_sample=True, seed=4, temperature=0.8)
    prompts = [np.arange(3, 12), np.arange(20, 23)]
    reqs = [spec.submit(p, **kw) for p in prompts]
    while not spec.idle:
        spec.step()
    assert spec.speculative_stats.accepted > 0
    for p, r in zip(prompts, reqs):
        one = m.generate(p, speculative="mtp", num_draft=3, **kw)
        assert np.array_equal(one, r.output().token_ids)
        assert np.array_equal(m.generate(p, speculative="mtp", num_draft=3, **kw), one)  # reproducible by seed
