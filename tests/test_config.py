import dataclasses
import json
import math
import os

import numpy as np
import pytest

from dsv3._native import lib
from dsv3.config import DeepseekConfig, load_config

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "configs")
NAMES = sorted(os.listdir(FIX))
NATIVE_KEYS = set(lib.config_keys())  # the binding's one key table (tests/test_one_description.py)


def raw(name):
    with open(os.path.join(FIX, name, "config.json")) as f:
        return json.load(f)


def test_fixture_set():
    for n in ("DeepSeek-V2", "DeepSeek-V2-Lite", "DeepSeek-V3", "DeepSeek-R1", "DeepSeek-V3.1",
              "DeepSeek-V3.2-Exp", "Kimi-K2", "Moonlight-16B", "DeepSeek-R1-FP4"):
        assert n in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fixture_values_match_json(name):
    c = load_config(os.path.join(FIX, name))
    d = raw(name)
    for k in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
              "num_attention_heads", "kv_lora_rank", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
              "first_k_dense_replace", "norm_topk_prob", "routed_scaling_factor", "rms_norm_eps",
              "scoring_func", "topk_method", "max_position_embeddings", "model_type", "n_group", "topk_group"):
        assert getattr(c, k) == d[k], k
    assert c.q_lora_rank == d["q_lora_rank"]
    assert c.rope.rope_theta == float(d["rope_theta"])
    assert c.qk_head_dim == d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
    assert set(c.to_native()) == NATIVE_KEYS
    # unknown keys are kept
    assert c.extra_fields["architectures"] == d["architectures"]


def test_specific_values():
    v3 = load_config(os.path.join(FIX, "DeepSeek-V3", "config.json"))
    assert v3.rope.rope_type == "yarn" and v3.rope.factor == 40 and v3.rope.original_max_position_embeddings == 4096
    assert v3.quantization.method == "fp8_block" and v3.quantization.weight_block_size == (128, 128)
    assert v3.quantization.scale_fmt is None
    assert load_config(os.path.join(FIX, "DeepSeek-V3.1")).quantization.scale_fmt == "ue8m0"
    assert [v3.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
    assert v3.num_nextn_predict_layers == 1 and v3.has_correction_bias
    v32 = load_config(os.path.join(FIX, "DeepSeek-V3.2-Exp"))
    assert (v32.index_n_heads, v32.index_head_dim, v32.index_topk) == (64, 128, 2048)
    moon = load_config(os.path.join(FIX, "Moonlight-16B"))
    assert moon.q_lora_rank is None and moon.rope.rope_type == "default" and moon.rms_norm_eps == 1e-5
    assert moon.to_native()["q_lora_rank"] == 0
    lite = load_config(os.path.join(FIX, "DeepSeek-V2-Lite"))
    assert lite.to_native()["group_mask_value"] == 0.0 and not lite.has_correction_bias
    assert v3.to_native()["group_mask_value"] == float("-inf")
    fp4 = load_config(os.path.join(FIX, "DeepSeek-R1-FP4"))
    assert fp4.quantization.method == "nvfp4" and fp4.quantization.group_size == 16
    assert fp4.quantization.is_excluded("model.layers.3.self_attn.o_proj")
    assert fp4.quantization.is_excluded("lm_head")
    assert not fp4.quantization.is_excluded("model.layers.3.mlp.experts.0.up_proj")


def test_nvfp4_in_config_json():
    d = raw("DeepSeek-R1-FP4")
    d["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4",
                                "config_groups": {"group_0": {"weights": {"group_size": 16, "num_bits": 4}}},
                                "ignore": ["lm_head"]}
    q = load_config(d).quantization
    assert q.method == "nvfp4" and q.exclude_modules == ("lm_head",)


def test_softmax_scale_v3_reference():
    # yarn_get_mscale, computed independently: 192^-0.5 * (0.1*ln 40 + 1)^2
    c = load_config(os.path.join(FIX, "DeepSeek-V3"))
    assert c.softmax_scale == pytest.approx(192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2, rel=1e-15)
    assert abs(c.softmax_scale - 0.13523378) < 1e-8


def _hf_rope(c):
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2RotaryEmbedding
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding, yarn_apply_mscale
    hf = c.to_hf_config()
    cls = DeepseekV2RotaryEmbedding if c.model_type == "deepseek_v2" else DeepseekV3RotaryEmbedding
    r = cls(hf)
    return r.inv_freq.numpy(), r.attention_scaling, yarn_apply_mscale(hf.rope_parameters, hf.qk_head_dim ** -0.5)


def _variants():
    out = [(n, raw(n)) for n in NAMES]
    base = raw("DeepSeek-V3")
    for extra in ({"rope_theta": 50000.0, "rope_scaling": {"type": "yarn", "factor": 8, "beta_fast": 16,
                                                          "beta_slow": 2, "mscale": 0.5, "mscale_all_dim": 1.0,
                                                          "original_max_position_embeddings": 2048}},
                  {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
                  {"rope_scaling": {"type": "linear", "factor": 2.0}},
                  {"rope_scaling": {"type": "yarn", "factor": 16, "attention_factor": 0.9, "truncate": False}},
                  {"rope_scaling": None, "rope_theta": 1e6, "qk_rope_head_dim": 32}):
        out.append((json.dumps(extra), dict(base, **extra)))
    return out


@pytest.mark.parametrize("name,d", _variants(), ids=[v[0][:30] for v in _variants()])
def test_derived_vs_transformers(name, d):
    c = load_config(d)
    inv, att, scale = _hf_rope(c)
    assert c.rope_inv_freq.dtype == np.float32 and c.rope_inv_freq.shape == (c.qk_rope_head_dim // 2,)
    ulp = np.abs(inv.view(np.int32).astype(np.int64) - c.rope_inv_freq.view(np.int32))
    assert ulp.max() <= 1, (inv, c.rope_inv_freq)
    assert c.rope_attention_scaling == pytest.approx(att, rel=1e-15)
    assert c.softmax_scale == pytest.approx(scale, rel=1e-15)


def test_legacy_and_new_rope_equal():
    d = raw("DeepSeek-V3")
    new = dict(d)
    rs = dict(new.pop("rope_scaling"))
    rs["rope_type"] = rs.pop("type")
    rs["rope_theta"] = new.pop("rope_theta")
    new["rope_parameters"] = rs
    assert load_config(d) == load_config(new)
    c = load_config(d)
    assert load_config(c.to_dict(legacy_rope=True)) == c


@pytest.mark.parametrize("name", NAMES)
def test_to_dict_round_trip(name):
    c = load_config(os.path.join(FIX, name))
    assert load_config(json.loads(json.dumps(c.to_dict()))) == c


def test_immutable():
    c = load_config(os.path.join(FIX, "DeepSeek-V3"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.hidden_size = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rope.factor = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.quantization.scale_fmt = "ue8m0"
    with pytest.raises(ValueError):
        c.rope_inv_freq[0] = 0.0
    n = c.to_native()
    n["rope_inv_freq"][0] = 0.0  # a copy: does not touch the config
    assert c.rope_inv_freq[0] == 1.0
    assert isinstance(c, DeepseekConfig)


def test_v2_defaults_and_required():
    d = {"model_type": "deepseek_v2", "num_experts_per_tok": 6}
    c = load_config(d)
    assert (c.vocab_size, c.hidden_size, c.moe_intermediate_size, c.scoring_func, c.topk_method) == \
        (102400, 4096, 1407, "softmax", "greedy")
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        load_config({"model_type": "deepseek_v2"})


BAD = [
    ({"n_routed_experts": 250}, "n_routed_experts"),
    ({"topk_group": 9}, "topk_group"),
    ({"num_experts_per_tok": 300}, "num_experts_per_tok"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"kv_lora_rank": -5}, "kv_lora_rank"),
    ({"qk_rope_head_dim": 63}, "qk_rope_head_dim"),
    ({"num_attention_heads": 2**24, "num_key_value_heads": 2**24}, "num_attention_heads*"),
    ({"rope_scaling": {"type": "dynamo", "factor": 2}}, "rope_type"),
    ({"scoring_func": "relu"}, "scoring_func"),
    ({"topk_method": "best"}, "topk_method"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 0]}}, "weight_block_size"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}}, "weight_block_size"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quant_method"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ({"model_type": "llama"}, "model_type"),
    ({"norm_topk_prob": "yes"}, "norm_topk_prob"),
    ({"vocab_size": 1.5}, "vocab_size"),
    ({"num_key_value_heads": 8}, "num_key_value_heads"),
    ({"rope_theta": -1}, "rope_theta"),
    ({"rope_scaling": {"type": "yarn", "factor": 0}}, "factor"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"n_group": 256, "topk_group": 4}, "n_group"),
    ({"rope_scaling": 5}, "rope_scaling=5: must be an object"),
    ({"rope_parameters": "yarn"}, "rope_parameters='yarn': must be an object"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_malformed_rejected(change, field):
    d = dict(raw("DeepSeek-V3"), **change)
    with pytest.raises(ValueError) as e:
        load_config(d)
    assert field in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(tmp_path)
    with pytest.raises(TypeError):
        load_config(3)


def test_to_hf_config_kimi_and_v2():
    k = load_config(os.path.join(FIX, "Kimi-K2")).to_hf_config()
    assert type(k).__name__ == "DeepseekV3Config" and k.n_routed_experts == 384
    v2 = load_config(os.path.join(FIX, "DeepSeek-V2")).to_hf_config()
    assert type(v2).__name__ == "DeepseekV2Config" and v2.topk_method == "group_limited_greedy"


# ---------------------------------------------------------------- hostile values (issue 9)
BAD_VALUES = [
    ({"rope_theta": 1.0}, "rope_scaling.rope_theta"),  # yarn divides by log(theta): was ZeroDivisionError
    ({"rope_theta": 0.5}, "rope_scaling.rope_theta"),
    ({"rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 5e-324, "original_max_position_embeddings": 4096}},
     "rope_parameters.beta_fast"),  # was OverflowError
    ({"rope_scaling": {"type": "yarn", "factor": 40, "beta_slow": 1e308, "original_max_position_embeddings": 4096}},
     "rope_parameters.beta_slow"),
    ({"rope_scaling": {"type": "yarn", "factor": 5e-324, "original_max_position_embeddings": 4096}},
     "rope_parameters"),
    ({"rope_theta": 10**400}, "rope_theta"),  # 400 digits: was OverflowError
    ({"routed_scaling_factor": 10**400}, "routed_scaling_factor"),
    ({"rms_norm_eps": -10**400}, "rms_norm_eps"),
    ({"rope_scaling": {"type": "yarn", "factor": 10**400}}, "rope_scaling.factor"),
    ({"rope_scaling": {"type": "yarn", "factor": 4, "mscale": 10**400}}, "rope_scaling.mscale"),
    ({"rope_scaling": {"type": "yarn", "factor": 4, "mscale_all_dim": 1e308}}, "rope_parameters"),
    ({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "config_groups": [1]}},
     "config_groups"),  # was AttributeError
    ({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "config_groups": {"g": 5}}},
     "config_groups.g"),
    ({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4",
                              "config_groups": {"g": {"weights": "w"}}}}, "config_groups.g.weights"),
    ({"rope_parameters": ["yarn"]}, "rope_parameters"),
]


@pytest.mark.parametrize("change,field", BAD_VALUES, ids=[f"{b[1]}{i}" for i, b in enumerate(BAD_VALUES)])
def test_hostile_values_give_value_errors_naming_the_field(change, field):
    d = dict(raw("DeepSeek-V3"), **change)
    with pytest.raises(ValueError) as e:
        load_config(d)
    assert str(e.value).startswith("config field ") and field in str(e.value) and len(str(e.value)) < 400


def test_deep_and_huge_config_files(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}")  # was RecursionError
    with pytest.raises(ValueError, match="nested") as e:
        load_config(tmp_path)
    assert str(p) in str(e.value)
    with pytest.raises(ValueError, match="nested"):
        load_config({"extra": json.loads("[" * 200 + "]" * 200)})
    deep = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested"):
        load_config({"extra": deep})
    with open(p, "wb") as f:  # sparse; was parsed for minutes at 1 GB
        f.truncate(20 << 20)  # over the cap, jsonio.MAX_CONFIG_BYTES (16 MiB)
    with pytest.raises(ValueError, match="cap") as e:
        load_config(tmp_path)
    assert str(p) in str(e.value)


def test_rope_scaling_wins_over_rope_parameters_as_in_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding
    d = raw("DeepSeek-V3")  # yarn factor 40 in rope_scaling
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 50000.0}
    for both in (d, dict(d, rope_theta=20000.0), dict(d, rope_parameters={"rope_type": "linear", "factor": 2.0})):
        c = load_config(both)
        hf_dict = {k: v for k, v in both.items() if k not in ("model_type", "quantization_config", "architectures",
                                                                "auto_map")}
        hf = transformers.DeepseekV3Config(**hf_dict)
        r = DeepseekV3RotaryEmbedding(hf)
        assert c.rope.rope_type == hf.rope_parameters["rope_type"] == "yarn"
        assert c.rope.rope_theta == hf.rope_parameters["rope_theta"]
        ulp = np.abs(r.inv_freq.numpy().view(np.int32).astype(np.int64) - c.rope_inv_freq.view(np.int32))
        assert ulp.max() <= 1
        assert c.rope_attention_scaling == pytest.approx(r.attention_scaling, rel=1e-15)
    # an empty or null rope_scaling leaves rope_parameters in force (transformers: `rope_scaling or ...`)
    for empty in ({}, None):
        c = load_config(dict(d, rope_scaling=empty))
        assert (c.rope.rope_type, c.rope.rope_theta) == ("default", 50000.0)
