import json
import logging
import os

import ml_dtypes
import numpy as np
import pytest

from dsv3.checkpoint import CheckpointError, canonical_shapes, open_checkpoint
from dsv3.config import load_config
from dsv3.safetensors_io import open_safetensors, save_safetensors
from dsv3.testing.checkpoints import quantize_fp8_block, quantize_nvfp4, tiny_config, write_checkpoint


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def raw_tensors(path):
    with open_safetensors(path) as r:
        return {k: np.array(r.get(k)) for k in r.keys()}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_hf_round_trip(tmp_path, dtype):
    p = write_checkpoint(tmp_path / "c", tiny_config(), layout="hf", dtype=dtype, shards=3)
    raw = raw_tensors(p)
    assert sorted(os.listdir(p)) == ["config.json", "model-00001-of-00003.safetensors",
                                     "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                                     "model.safetensors.index.json"]
    with open_checkpoint(p) as ck:
        assert ck.layout == "hf"
        names = [n for n, _ in ck.canonical_tensors()]
        assert names == [n for n, _, _ in canonical_shapes(ck.config)] and len(set(names)) == len(names)
        for n, v in ck.canonical_tensors():
            src = raw[n]
            if ".mlp.gate." in n:
                assert v.dtype == np.float32 and np.array_equal(v, src.astype(np.float32))
            else:
                assert v.dtype == src.dtype and np.array_equal(bits(v), bits(src)), n
                assert not v.flags.owndata  # zero copy
        s = ck.summary()
        assert s["missing"] == [] and s["unexpected"] == [] and s["layout"] == "hf"
        assert s["canonical"] == len(names)
        if dtype == "bfloat16":
            assert s["by_dtype"]["F32"]["count"] == 2  # the two correction biases
        assert sum(v["count"] for v in s["by_dtype"].values()) == len(raw)


def test_hf_fused_round_trip(tmp_path):
    cfg = tiny_config()
    a = raw_tensors(write_checkpoint(tmp_path / "a", cfg, layout="hf", shards=1))
    p = write_checkpoint(tmp_path / "b", cfg, layout="hf_fused", shards=2)
    raw = raw_tensors(p)
    assert raw["model.layers.1.mlp.experts.gate_up_proj"].shape == (8, 32, 32)
    assert raw["model.layers.1.mlp.experts.down_proj"].shape == (8, 32, 16)
    assert not any(".experts.0." in n for n in raw)
    with open_checkpoint(p) as ck:
        assert ck.layout == "hf_fused"
        seen = 0
        for n, v in ck.canonical_tensors():
            ref = a[n].astype(np.float32) if ".mlp.gate." in n else a[n]
            assert np.array_equal(bits(v), bits(ref)), n
            if ".experts." in n:
                assert v.base is not None
                seen += 1
        assert seen == 2 * 8 * 3
        assert ck.summary()["unexpected"] == []


def test_sharded_equals_single(tmp_path):
    cfg = tiny_config(q_lora_rank=None, attention_bias=True)
    with open_checkpoint(write_checkpoint(tmp_path / "s", cfg, shards=1)) as a, \
            open_checkpoint(write_checkpoint(tmp_path / "m", cfg, shards=4)) as b:
        ta, tb = list(a.canonical_tensors()), list(b.canonical_tensors())
        assert [n for n, _ in ta] == [n for n, _ in tb]
        assert any(n.endswith("q_proj.weight") for n, _ in ta) and any(n.endswith("o_proj.bias") for n, _ in ta)
        for (n, x), (_, y) in zip(ta, tb):
            assert np.array_equal(bits(x), bits(y)), n


@pytest.mark.parametrize("ue8m0", [False, True])
def test_fp8_round_trip(tmp_path, ue8m0):
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    if ue8m0:
        qc["scale_fmt"] = "ue8m0"
    cfg = tiny_config(hidden_size=160, quantization_config=qc)  # 160 = 1 full + 1 partial block of 128
    p = write_checkpoint(tmp_path / "f", cfg, layout="fp8_block", shards=2)
    raw = raw_tensors(p)
    assert raw["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].dtype == ml_dtypes.float8_e4m3fn
    assert raw["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (1, 2)
    assert raw["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    assert raw["model.layers.1.mlp.gate.weight"].dtype == ml_dtypes.bfloat16
    assert raw["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == np.float32
    with open_checkpoint(p) as ck:
        assert ck.layout == "fp8_block"
        nq = 0
        for n, v in ck.canonical_tensors():
            if n + "_scale_inv" in raw:
                nq += 1
                assert v.fmt == "fp8_block" and v.params["ue8m0"] == ue8m0
                assert np.array_equal(bits(v.arrays["weight"]), bits(raw[n]))
                assert np.array_equal(v.arrays["weight_scale_inv"], raw[n + "_scale_inv"])
            elif ".mlp.gate." in n:
                assert v.dtype == np.float32
            else:
                assert np.array_equal(bits(v), bits(raw[n]))
        assert nq > 0


def test_fp8_unsupported_block_size_is_refused(tmp_path):
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [16, 16]}
    p = write_checkpoint(tmp_path / "f", tiny_config(quantization_config=qc), layout="fp8_block")
    with open_checkpoint(p) as ck, pytest.raises(NotImplementedError, match="16x16.*128x128"):
        list(ck.canonical_tensors())
        assert ck.summary()["by_format"]["fp8_block"] == nq


def test_fp8_quantiser_reference():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 37)).astype(np.float32)
    w[:16, :16] = 0  # all-zero block -> scale 1
    q, s = quantize_fp8_block(w, (16, 16))
    assert s.shape == (2, 3) and s[0, 0] == 1.0
    blk = np.abs(w[16:20, 32:37]).max()
    assert s[1, 2] == np.float32(blk / np.float32(448))
    deq = q.astype(np.float32) * np.repeat(np.repeat(s, 16, 0), 16, 1)[:20, :37]
    assert np.all(np.abs(deq - w) <= np.abs(w) * 2**-4 + 1e-6)
    _, su = quantize_fp8_block(w, (16, 16), ue8m0=True)
    assert np.all(np.log2(su) == np.round(np.log2(su))) and np.all(su >= s)


def test_nvfp4_quantiser_reference():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 32)).astype(np.float32)
    packed, bs, s2 = quantize_nvfp4(w)
    assert packed.shape == (4, 16) and bs.shape == (4, 2) and s2.shape == ()
    mags = np.array([0, .5, 1, 1.5, 2, 3, 4, 6], np.float32)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(4, 32)
    val = mags[codes & 7] * np.where(codes & 8, -1, 1)
    deq = val * np.repeat(bs.astype(np.float32), 16, 1) * s2
    scale = np.repeat(bs.astype(np.float32), 16, 1) * s2
    assert np.all(np.abs(deq - w) <= scale * 1.0 + 1e-7)  # within one E2M1 step (<= 1 at the top)
    # exact ties round to the even code: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4
    t = np.zeros((1, 16), np.float32)
    t[0, :8] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]
    packed, bs, s2 = quantize_nvfp4(t)
    assert float(bs.astype(np.float32)[0, 0]) * float(s2) == pytest.approx(1.0)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(16)
    assert list(mags[codes[:8]]) == [0, 1, 1, 2, 2, 4, 4, 6]


def test_nvfp4_round_trip(tmp_path):
    p = write_checkpoint(tmp_path / "n", tiny_config(), layout="nvfp4", shards=2)
    assert json.load(open(os.path.join(p, "hf_quant_config.json")))["quantization"]["quant_algo"] == "NVFP4"
    raw = raw_tensors(p)
    with open_checkpoint(p) as ck:
        assert ck.layout == "nvfp4" and ck.config.quantization.method == "nvfp4"
        kinds = {}
        for n, v in ck.canonical_tensors():
            base = n[: -len("weight")]
            if base + "weight_scale_2" in raw:
                kinds[n] = "q"
                assert np.array_equal(v.arrays["weight"], raw[n])
                assert np.array_equal(bits(v.arrays["weight_scale"]), bits(raw[base + "weight_scale"]))
                assert v.arrays["weight_scale_2"] == raw[base + "weight_scale_2"]
                assert v.arrays["input_scale"] == raw[base + "input_scale"]
            else:
                kinds[n] = "f"
        assert kinds["model.layers.1.self_attn.o_proj.weight"] == "f"
        assert kinds["model.layers.1.mlp.experts.3.up_proj.weight"] == "q"
        assert kinds["model.layers.0.mlp.down_proj.weight"] == "q"
        assert kinds["lm_head.weight"] == "f" and kinds["model.layers.1.mlp.gate.weight"] == "f"


def test_mtp_skipped_with_log_and_v32_indexer_loaded(tmp_path, caplog):
    cfg = tiny_config(model_type="deepseek_v32", index_n_heads=4, index_head_dim=16, index_topk=8)
    p = write_checkpoint(tmp_path / "m", cfg, mtp=True, indexer=True)
    raw = raw_tensors(p)
    assert "model.layers.3.eh_proj.weight" in raw and "model.layers.3.mlp.experts.7.down_proj.weight" in raw
    assert "model.layers.0.self_attn.indexer.wk.weight" in raw
    with caplog.at_level(logging.INFO, logger="dsv3.checkpoint"):
        ck = open_checkpoint(p)
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "mtp" in msgs and "indexer" not in msgs
    s = ck.summary()
    assert s["unexpected"] == [] and s["skipped"]["mtp"] > 0 and "indexer" not in s["skipped"]
    assert not any(n.startswith("model.layers.3.") for n in ck.names())
    names = ck.names()  # the V3.2 indexer's tensors are canonical (hub names), weights_proj read as float32
    for i in range(3):
        for part in ("wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias", "weights_proj.weight"):
            assert f"model.layers.{i}.self_attn.indexer.{part}" in names
    assert ck.tensor("model.layers.0.self_attn.indexer.weights_proj.weight").dtype == np.float32
    ck.close()


def test_indexer_tensors_skipped_under_a_v3_config(tmp_path, caplog):
    p = write_checkpoint(tmp_path / "m", tiny_config(), indexer=True)
    with caplog.at_level(logging.INFO, logger="dsv3.checkpoint"):
        ck = open_checkpoint(p)
    assert "indexer" in " ".join(r.getMessage() for r in caplog.records)
    s = ck.summary()
    assert s["unexpected"] == [] and s["skipped"]["indexer"] == 5 * 3
    assert not any(".indexer." in n for n in ck.names())
    ck.close()


def _edit(p, fn):
    """Rewrite the single-file checkpoint at p with fn(tensors) applied."""
    f = os.path.join(p, "model.safetensors")
    t = raw_tensors(p)
    fn(t)
    save_safetensors(f, t)


def test_missing_tensor(tmp_path):
    p = write_checkpoint(tmp_path / "x", tiny_config(), shards=1)
    _edit(p, lambda t: t.pop("model.layers.2.mlp.experts.5.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight"):
        open_checkpoint(p)


def test_misshaped_tensor(tmp_path):
    p = write_checkpoint(tmp_path / "x", tiny_config(), shards=1)
    n = "model.layers.1.self_attn.kv_b_proj.weight"
    _edit(p, lambda t: t.__setitem__(n, np.zeros((10, 16), ml_dtypes.bfloat16)))
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(p)
    assert n in str(e.value) and "[10, 16]" in str(e.value) and "[256, 16]" in str(e.value)


def test_wrong_dtype_and_unexpected(tmp_path, caplog):
    p = write_checkpoint(tmp_path / "x", tiny_config(), shards=1)
    _edit(p, lambda t: t.__setitem__("model.norm.weight", np.zeros(32, np.int32)))
    with pytest.raises(CheckpointError, match="model.norm.weight.*I32"):
        open_checkpoint(p)
    p = write_checkpoint(tmp_path / "y", tiny_config(), shards=1)
    _edit(p, lambda t: t.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq", np.zeros(8, np.float32)))
    with caplog.at_level(logging.WARNING, logger="dsv3.checkpoint"):
        with open_checkpoint(p) as ck:
            assert ck.summary()["unexpected"] == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert "unexpected" in caplog.text


def test_tied_and_v2(tmp_path):
    cfg = tiny_config(tie_word_embeddings=True)
    with open_checkpoint(write_checkpoint(tmp_path / "t", cfg, shards=1)) as ck:
        assert "lm_head.weight" not in ck.names()
    v2 = tiny_config(model_type="deepseek_v2", scoring_func="softmax", topk_method="group_limited_greedy",
                     norm_topk_prob=False)
    with open_checkpoint(write_checkpoint(tmp_path / "v2", v2, shards=2)) as ck:
        assert not any("e_score_correction_bias" in n for n in ck.names())
        assert load_config(os.path.join(ck.path, "config.json")).model_type == "deepseek_v2"


def test_dsv3_layout_needs_a_finished_conversion(tmp_path):
    # converted checkpoints are read by dsv3/convert/layout.py (tests in test_convert.py)
    p = write_checkpoint(tmp_path / "d", tiny_config(), shards=1)
    open(os.path.join(p, "dsv3-manifest.json"), "w").write("{}")
    with pytest.raises(ValueError, match="interrupted conversion"):
        open_checkpoint(p)
    with pytest.raises(FileNotFoundError):
        open_checkpoint(tmp_path / "nothing")


@pytest.mark.parametrize("layout", ["hf", "hf_fused"])
def test_transformers_loads_written_checkpoint(tmp_path, layout):
    """Independent check of names/shapes/sharding: transformers loads the files with nothing missing
    or unexpected, and its fused experts equal our canonical per-expert views."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    p = write_checkpoint(tmp_path / layout, tiny_config(), layout=layout, dtype="float32", shards=2)
    model, info = AutoModelForCausalLM.from_pretrained(p, output_loading_info=True, dtype=torch.float32)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    with open_checkpoint(p) as ck:
        t = dict(ck.canonical_tensors())
    for i in (1, 2):
        gu, dn = sd[f"model.layers.{i}.mlp.experts.gate_up_proj"], sd[f"model.layers.{i}.mlp.experts.down_proj"]
        for e in range(8):
            x = f"model.layers.{i}.mlp.experts.{e}."
            assert np.array_equal(gu[e, :16], t[x + "gate_proj.weight"])
            assert np.array_equal(gu[e, 16:], t[x + "up_proj.weight"])
            assert np.array_equal(dn[e], t[x + "down_proj.weight"])
    for n, v in t.items():
        if ".mlp.experts." not in n:
            assert np.array_equal(sd[n], np.asarray(v, np.float32)), n


@pytest.mark.parametrize("field", ["num_hidden_layers", "n_routed_experts", "vocab_size"])
def test_config_far_larger_than_its_tensors_is_refused_at_once(tmp_path, field):
    # found by fuzzing (issue 9): num_hidden_layers 2**31 - 1 made open_checkpoint enumerate
    # billions of tensor names (minutes, GBs) before noticing that they were missing
    from dsv3.convert import info
    path = write_checkpoint(str(tmp_path / "c"), tiny_config(), layout="hf", shards=1)
    with open(os.path.join(path, "config.json")) as f:
        c = json.load(f)
    c[field] = 2**31 - 1 if field != "n_routed_experts" else 2**24
    if field == "n_routed_experts":
        c["n_group"] = 1
        c["topk_group"] = 1
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f)
    with pytest.raises(CheckpointError, match="calls for more parameters than its"):
        open_checkpoint(path)
    out = info(path)
    assert "calls for more parameters" in out["error"] and out["missing"] == []
