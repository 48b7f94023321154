"""benchmarks/bench_peers.py without llama.cpp: test names, ratios per rep, the table, the streamed checkpoint
writer (same tensors as dsv3.testing.checkpoints.write_checkpoint) and the tokenizer the GGUF converter reads."""
import json
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import peers_model as pm  # noqa: E402
import peers_report as rep  # noqa: E402


def test_parse_test_names():
    assert rep.parse_test("pp512") == ("pp", 512, 0)
    assert rep.parse_test("tg64") == ("tg", 64, 0)
    assert rep.parse_test("tg64@d1024") == ("tg", 64, 1024)
    for name in ("tg64@d1024", "pp128", "tg1"):
        assert rep.test_name(*rep.parse_test(name)) == name
    for bad in ("pp0", "pp128@d8", "tg", "x64", "tg64@1024"):
        with pytest.raises(ValueError):
            rep.parse_test(bad)


def test_wait_env():
    assert rep.wait_env("passive") == {"OMP_WAIT_POLICY": "passive"}
    assert rep.wait_env("active") == {"OMP_WAIT_POLICY": "active"}
    assert rep.wait_env("spin1000") == {"GOMP_SPINCOUNT": "1000"}
    with pytest.raises(ValueError):
        rep.wait_env("lazy")


def _s(engine, fmt, rep_, tps, test="tg64", threads=2, wait="passive"):
    return {"engine": engine, "fmt": fmt, "threads": threads, "wait": wait, "test": test, "rep": rep_, "tps": tps}


def test_summarize_ratio_per_rep_and_pairs():
    samples = [_s("llama", "Q8_0", 0, 10.0), _s("dsv3", "int8", 0, 5.0),
               _s("llama", "Q8_0", 1, 20.0), _s("dsv3", "int8", 1, 30.0),
               _s("llama", "Q8_0", 2, 40.0), _s("dsv3", "int8", 2, 40.0),
               _s("dsv3", "fp8_block", 0, 8.0),  # pairs with Q8_0 too (rep 0 only)
               _s("dsv3", "bf16", 0, 1.0)]       # no BF16 peer sample: no row
    rows = rep.summarize(samples)
    assert [(r["fmt"], r["peer"]) for r in rows] == [("int8", "Q8_0"), ("fp8_block", "Q8_0")]
    r = rows[0]
    # per-rep ratios 0.5, 1.5, 1.0 (not the ratio of the medians, 30/20 = 1.5)
    assert r["ratio"] == {"min": 0.5, "median": 1.0, "max": 1.5, "n": 3}
    assert r["dsv3"]["median"] == 30.0 and r["llama"]["median"] == 20.0
    assert r["ratio_of_medians"] == 1.5
    assert rows[1]["ratio"] == {"min": 0.8, "median": 0.8, "max": 0.8, "n": 1}
    md = rep.markdown(rows)
    lines = md.splitlines()
    assert len(lines) == 4
    assert "| passive | 2 | int8 ~ Q8_0 | tg64 | 30.0 (5.0-40.0) | 20.0 (10.0-40.0) | **1.00x** (0.50-1.50) |" == lines[2]


def test_summarize_orders_rows():
    samples = []
    for t in ("tg64@d1024", "tg64", "pp512", "pp128"):
        for th in (2, 1):
            samples += [_s("llama", "BF16", 0, 1.0, t, th), _s("dsv3", "bf16", 0, 2.0, t, th)]
    rows = rep.summarize(samples)
    assert [(r["threads"], r["test"]) for r in rows] == [
        (1, "pp128"), (1, "pp512"), (1, "tg64"), (1, "tg64@d1024"),
        (2, "pp128"), (2, "pp512"), (2, "tg64"), (2, "tg64@d1024")]
    assert all(r["ratio"]["median"] == 2.0 for r in rows)


def test_sizes():
    # issue 10's model: hidden 2048, 16 heads, q_lora 768, kv_lora 512, 4 layers, 64 experts top-6 in 8 groups
    d = pm.model_config("default")
    assert (d["hidden_size"], d["num_attention_heads"], d["q_lora_rank"], d["kv_lora_rank"]) == (2048, 16, 768, 512)
    assert (d["num_hidden_layers"], d["n_routed_experts"], d["num_experts_per_tok"], d["n_group"]) == (4, 64, 6, 8)
    assert (d["n_shared_experts"], d["vocab_size"]) == (2, 32000)
    # parameters counted independently: embeddings + lm_head, attention, routed + shared experts, router, norms
    H, V, L, E, I_ = 2048, 32000, 4, 64, 1024
    attn = H * 768 + 768 * 16 * 192 + H * 576 + 512 * 16 * 256 + 16 * 128 * H + 768 + 512
    moe = E * 3 * H * I_ + 3 * H * 2 * I_ + E * H + E
    assert pm.param_count(d) == 2 * V * H + L * (attn + moe + 2 * H) + H
    assert pm.model_config("tiny", num_hidden_layers=3)["num_hidden_layers"] == 3
    with pytest.raises(ValueError):
        pm.model_config("huge")


def test_streamed_writer_matches_write_checkpoint(tmp_path):
    from dsv3.checkpoint import open_checkpoint
    from dsv3.testing.checkpoints import write_checkpoint

    cfg = pm.model_config("tiny", num_hidden_layers=3)
    a = pm.write_hf_checkpoint(str(tmp_path / "a"), cfg, seed=5)
    b = write_checkpoint(str(tmp_path / "b"), cfg, layout="hf", dtype="bfloat16", seed=5)
    ta, tb = dict(open_checkpoint(a).canonical_tensors()), dict(open_checkpoint(b).canonical_tensors())
    assert ta.keys() == tb.keys()
    for k in ta:
        x, y = np.asarray(ta[k]), np.asarray(tb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), k
    with open(os.path.join(a, "model.safetensors.index.json")) as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) == 3 + 2  # one per layer, embeddings, tail


def test_tokenizer_vocab_and_converter_view(tmp_path):
    vocab, merges = pm.tokenizer_vocab(300)
    assert sorted(vocab.values()) == list(range(300))
    assert vocab[pm.BOS] == 0 and vocab[pm.EOS] == 1 and len(merges) == 300 - 258
    for a, b in merges:  # every merge joins two tokens that exist, into a token that exists
        assert a in vocab and b in vocab and a + b in vocab
    with pytest.raises(ValueError):
        pm.tokenizer_vocab(100)
    tokenizers = pytest.importorskip("tokenizers")
    pm.write_tokenizer(str(tmp_path), 1024)
    # what convert_hf_to_gguf.py reads (through transformers' AutoTokenizer, which wraps this file)
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    v = tok.get_vocab(with_added_tokens=True)
    assert max(v.values()) == 1023 and len(v) == 1024
    assert v[pm.BOS] == 0 and v[pm.EOS] == 1
    with open(tmp_path / "tokenizer_config.json") as f:
        tc = json.load(f)
    assert (tc["bos_token"], tc["eos_token"]) == (pm.BOS, pm.EOS)
    text = "Hello, world! 3.14 \u00fcn\u00efcode"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges are used
    assert tok.encode(pm.BOS + "a", add_special_tokens=False).ids[0] == 0
