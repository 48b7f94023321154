"""One description per concept: the tensor table lives in C and Python derives from it; the router's
enum spellings, the skip rule, the fused-expert rule, the safetensors writer and the checkpoint
reader exist once. These tests fail when a second copy comes back (or the copies drift)."""
import math
import os
import re

import numpy as np
import pytest

import dsv3
from dsv3 import config as dconfig
from dsv3 import fused_experts
from dsv3._native import lib
from dsv3.checkpoint import canonical_shapes, open_checkpoint, skip_reason
from dsv3.config import load_config
from dsv3.testing.checkpoints import tiny_config, write_checkpoint

PKG = os.path.dirname(dsv3.__file__)
VARIANTS = {
    "v3": {}, "no_q_lora": dict(q_lora_rank=None), "attention_bias": dict(attention_bias=True),
    "tied": dict(tie_word_embeddings=True), "no_shared": dict(n_shared_experts=0),
    "greedy": dict(topk_method="greedy", n_group=1, topk_group=1),
    "noaux": dict(topk_method="noaux", n_group=1, topk_group=1),
    "v2": dict(model_type="deepseek_v2", scoring_func="softmax", topk_method="group_limited_greedy"),
}


def _sources():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                with open(path, encoding="utf-8") as fh:
                    yield os.path.relpath(path, PKG), fh.read()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_canonical_shapes_are_what_the_c_model_reads(variant):
    """canonical_shapes (Python) builds a native model with nothing missing and nothing unexpected, and
    its counts equal the C table's own totals."""
    cfg = load_config(tiny_config(**VARIANTS[variant]))
    shapes = canonical_shapes(cfg)
    assert len({n for n, _, _ in shapes}) == len(shapes)
    rng = np.random.default_rng(0)
    tensors = {n: (0.05 * rng.standard_normal(s)).astype(np.float32) + (1.0 if n.endswith("norm.weight") else 0.0)
               for n, s, _ in shapes}
    lib.Model(cfg.to_native(), tensors, 8)  # ValueError on a missing or unexpected name, or a wrong shape
    count, values = lib.tensor_totals(cfg.to_native())
    assert (count, values) == (len(shapes), sum(math.prod(s) for _, s, _ in shapes))
    with pytest.raises(ValueError, match="unexpected tensor"):
        lib.Model(cfg.to_native(), dict(tensors, **{"model.layers.0.self_attn.extra.weight": np.zeros(4, np.float32)}), 8)
    assert cfg.has_correction_bias == any(n.endswith("e_score_correction_bias") for n, _, _ in shapes)


def test_tensor_table_export_is_consistent():
    rows = lib.tensor_table()
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names)
    assert {r["kind"] for r in rows} <= {"linear", "router", "vector"}
    assert {r["scope"] for r in rows} == {"input", "layer", "dense", "moe", "expert", "output", "mtp"}
    for r in rows:
        assert ("{expert}" in r["name"]) == (r["scope"] == "expert"), r
        assert ("{layer}" in r["name"]) == (r["scope"] not in ("input", "output")), r
    cfg = load_config(tiny_config())
    L = cfg.num_hidden_layers
    mtp = [n for n, _, _, _ in lib.tensor_slots(cfg.to_native(), L + 2)]  # the MTP layer: its own rows, its block
    assert all(n.startswith(f"model.layers.{L}.") for n in mtp) and f"model.layers.{L}.eh_proj.weight" in mtp
    assert f"model.layers.{L}.self_attn.kv_b_proj.weight" in mtp
    with pytest.raises(ValueError, match="part must be in"):
        lib.tensor_slots(cfg.to_native(), L + 3)


def test_no_python_copy_of_the_tensor_table():
    """Tensor names that only the C table may spell: no dsv3 Python module lists them."""
    only_in_c = ("kv_a_proj_with_mqa", "q_a_layernorm", "q_b_proj", "kv_a_layernorm", "shared_experts.gate_proj",
                 "post_attention_layernorm.weight")
    # spelled inside a string literal (a table of names); attribute access on transformers' modules is not a copy
    found = [(f, n) for f, src in _sources() for n in only_in_c if re.search(r"[\"'][^\"'\n]*" + re.escape(n), src)]
    assert found == []


def test_router_spellings_come_from_the_c_enums():
    choices = lib.config_choices()
    assert dconfig.SCORING_FUNCS == choices["scoring_func"] and dconfig.TOPK_METHODS == choices["topk_method"]
    literal = re.compile(r"\(\s*\"(sigmoid|noaux_tc)\",")  # a tuple of spellings written out again
    assert [f for f, src in _sources() if literal.search(src)] == []


def test_skip_rule_is_written_once():
    from dsv3.testing.checkpoints import tiny_config
    v3 = dconfig.load_config(tiny_config(num_hidden_layers=3))
    v32 = dconfig.load_config(tiny_config(num_hidden_layers=3, model_type="deepseek_v32", index_topk=4,
                                          index_n_heads=2, index_head_dim=32))
    assert skip_reason("model.layers.3.mlp.gate.weight", v3) == "mtp"
    assert skip_reason("model.layers.0.self_attn.indexer.wk.weight", v3) == "indexer"
    assert skip_reason("model.layers.0.self_attn.indexer.wk.weight", v32) is None
    assert skip_reason("model.layers.0.self_attn.q_a_proj.weight", v3) is None
    users = [f for f, src in _sources() if ".self_attn.indexer." in src and not f.startswith("testing")]
    assert users == ["checkpoint.py"]


def test_fused_split_and_stack_are_inverse():
    rng = np.random.default_rng(1)
    per = {f"model.layers.1.mlp.experts.{e}.{p}.weight": rng.standard_normal((6, 4) if p != "down_proj" else (4, 6))
           for e in range(3) for p in ("gate_proj", "up_proj", "down_proj")}
    fused = fused_experts.stack(per)
    assert fused["model.layers.1.mlp.experts.gate_up_proj"].shape == (3, 12, 4)
    back = fused_experts.split(fused)
    assert set(back) == set(per) and all(np.array_equal(back[n], per[n]) for n in per)
    assert fused_experts.source_of("model.layers.1.mlp.experts.2.up_proj.weight") == (
        "model.layers.1.mlp.experts.gate_up_proj", 2, "up_proj")


def test_every_checkpoint_reader_has_the_same_summary_keys(tmp_path):
    from dsv3.checkpoint import CheckpointReader
    from dsv3.convert import convert
    src = write_checkpoint(str(tmp_path / "src"), tiny_config(), layout="hf_fused", shards=1, mtp=True, indexer=True)
    convert(src, str(tmp_path / "dst"), format="int8", keep_mtp=True)
    with open_checkpoint(src) as a, open_checkpoint(str(tmp_path / "dst")) as b:
        assert isinstance(a, CheckpointReader) and isinstance(b, CheckpointReader)
        sa, sb = a.summary(), b.summary()
        assert set(sb) - set(sa) == {"options"} and set(sa) <= set(sb)
        assert sa["canonical"] == sb["canonical"] == len(canonical_shapes(a.config))
        assert sa["skipped"] == sb["skipped"] and set(sa["skipped"]) == {"mtp", "indexer"}
        assert sb["by_format"].get("int8", 0) > 0


def test_one_safetensors_writer():
    """Only safetensors_io writes safetensors headers (no second writer or dtype table)."""
    writers = [f for f, src in _sources() if '"data_offsets"' in src and "json.dumps" in src]
    assert writers == ["safetensors_io.py"]
    tables = [f for f, src in _sources() if '"F8_E4M3"' in src and "ml_dtypes.float8_e4m3fn" in src]
    assert tables == ["safetensors_io.py"]


def test_native_config_keys_are_the_c_bindings():
    """DeepseekConfig.to_native() writes exactly the keys the binding reads (its key table), no more."""
    for variant in ("v3", "v2", "tied"):
        native = load_config(tiny_config(**VARIANTS[variant])).to_native()
        assert set(native) == set(lib.config_keys())
    native = load_config(tiny_config()).to_native()
    del native["rms_norm_eps"]
    with pytest.raises(ValueError, match="missing key 'rms_norm_eps'"):
        lib.tensor_totals(native)
