"""What users see (issue 13): rich display and short reprs, progress, paths at every entry point,
model_type required, from_tensors interop (transformers configs, torch tensors, fused state dicts, dtype
spellings), converted checkpoints refused by transformers, CLI (--version, descriptions, --json, quiet
re-runs), no stale references."""
import json
import os
import re

import ml_dtypes
import numpy as np
import pytest

import dsv3
from dsv3.checkpoint import open_checkpoint
from dsv3.config import load_config
from dsv3.convert import convert
from dsv3.display import Summary
from dsv3.testing.checkpoints import tiny_config, write_checkpoint

from cli_helpers import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux")
    src = write_checkpoint(str(root / "hf"), tiny_config(), layout="hf", dtype="float32", seed=1, shards=1)
    dst = str(root / "conv")
    convert(src, dst, format="bf16", quiet=True)
    return {"hf": src, "conv": dst, "root": root}


# ---- display ----
def test_config_repr_is_short_and_html_is_a_table():
    cfg = load_config(tiny_config())
    r = repr(cfg)
    assert len(r) < 160 and "deepseek_v3" in r and "hidden=32" in r and "layers=3" in r, r
    h = cfg._repr_html_()
    assert "<table" in h and "kv_lora_rank" in h and "color:inherit" in h


def test_model_and_checkpoint_display(ckpts):
    for path in (ckpts["hf"], ckpts["conv"]):
        with open_checkpoint(path) as ck:
            s = ck.summary()
            assert isinstance(s, Summary) and s["model_type"] == "deepseek_v3"
            assert "<table" in s._repr_html_() and "<table" in ck._repr_html_()
            assert len(repr(ck)) < 400 and path in repr(ck) and ck.layout in repr(ck)
    m = dsv3.Model.from_pretrained(ckpts["hf"], progress=False)
    r = repr(m)
    assert r.startswith("dsv3.Model(deepseek_v3") and "3 layers" in r and len(r) < 300, r
    assert "<table" in m._repr_html_() and "parameters" in m._repr_html_() and "0/4096" in m._repr_html_()


def test_cpu_info_is_a_summary():
    info = dsv3.cpu_info()
    assert isinstance(info, Summary) and info["isa"] in info["supported_isas"]
    assert "<table" in info._repr_html_() and "num_threads" in info._repr_html_()


def test_progress_bars_are_tqdm_auto_and_opt_in(ckpts, capsys):
    dsv3.Model.from_pretrained(ckpts["hf"], progress=True)
    assert "load" in capsys.readouterr().err
    dsv3.Model.from_pretrained(ckpts["hf"], progress=False)
    assert "load" not in capsys.readouterr().err
    pytest.importorskip("transformers")
    from dsv3 import parity
    rep = parity.run(modules=["rmsnorm"], progress=True)
    assert rep.passed and "parity" in capsys.readouterr().err
    parity.run(modules=["rmsnorm"], progress=False)
    assert "parity" not in capsys.readouterr().err
    for dirpath, _, files in os.walk(os.path.join(ROOT, "dsv3")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f)).read()
                assert not re.search(r"^\s*(from tqdm import|import tqdm\b)", text, re.M), f"{f}: use tqdm.auto"


# ---- paths and configs ----
def test_model_type_is_required():
    cfg = tiny_config()
    del cfg["model_type"]
    with pytest.raises(ValueError, match="model_type.*required"):
        load_config(cfg)
    pytest.importorskip("transformers")
    from dsv3.parity_hf import hf_config_from
    with pytest.raises(ValueError, match="model_type is missing"):
        hf_config_from(cfg)


def test_every_entry_point_resolves_paths_the_same_way(ckpts, tmp_path, monkeypatch):
    from dsv3.convert import info, verify
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    for call in (lambda p: dsv3.Model.from_pretrained(p), info, verify,
                 lambda p: convert(p, str(tmp_path / "out"), format="bf16", quiet=True)):
        with pytest.raises(ValueError, match="GGUF files are not supported"):
            call(str(gguf))
    r = run_cli("info", str(gguf))
    assert r.returncode == 1 and "GGUF" in r.stderr and "Traceback" not in r.stderr
    # a hub id in a (fake) local cache: the snapshot is the converted checkpoint
    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny" / "snapshots" / ("a" * 40)
    snap.parent.mkdir(parents=True)
    os.symlink(ckpts["conv"], snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    m = dsv3.Model.from_pretrained("org/tiny", progress=False)
    assert m._path == str(snap)
    assert info("org/tiny")["layout"] == "dsv3" and verify("org/tiny") == []


# ---- interop ----
def _hf_state(seed=1):
    pytest.importorskip("transformers")
    from dsv3 import parity, parity_hf
    hf_cfg = parity_hf.hf_config_from(parity.default_config())
    sd = parity_hf.random_state_dict(parity_hf.build_model(hf_cfg), seed)
    return hf_cfg, sd


def test_from_tensors_takes_transformers_configs_torch_tensors_and_fused_state_dicts():
    import torch
    from dsv3 import parity, parity_hf
    hf_cfg, sd = _hf_state()
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in sd)
    canonical = parity_hf.hf_to_canonical(sd)
    ids = np.array([3, 5, 7, 11], np.int64)
    cfg = load_config(parity.default_config())
    ref = dsv3.Model.from_tensors(cfg, canonical).forward(ids)
    got = dsv3.Model.from_tensors(hf_cfg, {k: torch.from_numpy(v) for k, v in sd.items()}).forward(ids)
    np.testing.assert_array_equal(got, ref)
    # bfloat16 torch tensors: imported without a float32 copy, equal to the same weights from numpy
    bf = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}
    from dsv3.model import _canonical_tensors
    views = _canonical_tensors(bf)
    w = "model.embed_tokens.weight"
    assert views[w].dtype == ml_dtypes.bfloat16 and views[w].__array_interface__["data"][0] == bf[w].data_ptr()
    ref_bf = dsv3.Model.from_tensors(cfg,
                                     {k: v.astype(ml_dtypes.bfloat16) for k, v in canonical.items()}, dtype="bf16")
    got_bf = dsv3.Model.from_tensors(hf_cfg, bf, dtype=torch.bfloat16)
    np.testing.assert_array_equal(got_bf.forward(ids), ref_bf.forward(ids))


def test_dtype_spellings_are_read_by_one_normaliser():
    import torch
    from dsv3.model import _dtype_arg
    for spelling in ("bf16", "bfloat16", torch.bfloat16, ml_dtypes.bfloat16):
        assert _dtype_arg(spelling) == "bfloat16"
    for spelling in ("f32", "float32", torch.float32, np.float32, np.dtype(np.float32)):
        assert _dtype_arg(spelling) == "float32"
    for bad in ("float16", torch.int8, "fp7"):
        with pytest.raises(ValueError, match="dtype must be"):
            _dtype_arg(bad)


def test_transformers_refuses_a_converted_checkpoint_and_dsv3_loads_it(ckpts):
    transformers = pytest.importorskip("transformers")
    with open(os.path.join(ckpts["conv"], "config.json")) as f:
        raw = json.load(f)
    assert raw["model_type"] == "dsv3_converted" and raw["dsv3"]["model_type"] == "deepseek_v3"
    with pytest.raises((ValueError, KeyError), match="dsv3_converted"):
        transformers.AutoConfig.from_pretrained(ckpts["conv"])
    with pytest.raises((ValueError, KeyError), match="dsv3_converted"):
        transformers.AutoModelForCausalLM.from_pretrained(ckpts["conv"])
    cfg = load_config(ckpts["conv"])
    assert cfg.model_type == "deepseek_v3"
    a = dsv3.Model.from_pretrained(ckpts["conv"], progress=False)
    b = dsv3.Model.from_pretrained(ckpts["hf"], progress=False, dtype="bf16")
    ids = np.array([2, 4, 6], np.int64)
    la, lb = a.forward(ids), b.forward(ids)  # bf16 weights both ways (where stored differs: rounding only)
    assert np.linalg.norm(la - lb) / np.linalg.norm(lb) < 2e-2


# ---- CLI ----
def test_cli_version_and_descriptions():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"dsv3 {dsv3.__version__}"
    r = run_cli("--help")
    desc = r.stdout.split("\n\n")[1].replace("\n", " ").strip()
    assert desc.endswith(".") and "CPU" in desc, desc
    from dsv3.cli import SUBCOMMANDS, build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in SUBCOMMANDS:
        d = sub.choices[name].description
        assert d and len(d) > 20 and d.rstrip().endswith((".", ")")), (name, d)


def test_cli_convert_json_quiet_rerun_and_verify_json(ckpts):
    dst = str(ckpts["root"] / "cli")
    r = run_cli("convert", ckpts["hf"], dst, "--format", "bf16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["already_complete"] is False and out["tensors"] > 0 and r.stderr == ""
    r = run_cli("convert", ckpts["hf"], dst, "--format", "bf16")
    assert r.returncode == 0 and "already complete" in r.stdout and "wrote" not in r.stdout, r.stdout
    assert r.stderr == "", r.stderr  # no progress bar, no log lines
    r = run_cli("convert", ckpts["hf"], dst, "--format", "bf16", "--json")
    assert json.loads(r.stdout)["already_complete"] is True
    r = run_cli("verify", dst, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"path": dst, "ok": True, "problems": []}
    r = run_cli("verify", ckpts["hf"], "--json")
    assert r.returncode == 1 and "dsv3-manifest.json" in r.stderr and "Traceback" not in r.stderr


# ---- stale references ----
def test_no_references_to_files_outside_the_repo_and_dependencies_match_imports():
    py, src = [], []
    for top in ("dsv3", "csrc", "examples", "tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            found = [os.path.join(dirpath, f) for f in files if f.endswith((".py", ".c", ".h", ".md"))]
            src += found
            py += [p for p in found if top == "dsv3" and p.endswith(".py")]
    text = {p: open(p).read() for p in py}
    for p in src:
        if p.endswith("test_ux.py"):
            continue
        t = open(p, errors="replace").read()
        assert "COMMON.md" not in t and "DESIGN.md" not in t and "REFERENCE.md" not in t, p
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        deps = re.search(r"^dependencies = \[(.*?)\]", f.read(), re.S | re.M).group(1)
    imports_st = any(re.search(r"^\s*(import safetensors|from safetensors)", t, re.M) for t in text.values())
    assert imports_st == ('"safetensors' in deps)


@pytest.mark.parametrize("overrides", [{}, dict(model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"],
                                            q_lora_rank=None, topk_method="group_limited_greedy",
                                            scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=16.0)])
def test_a_transformers_config_object_means_the_same_model(overrides):
    pytest.importorskip("transformers")
    from dsv3.model import _from_transformers_config
    from dsv3.parity_hf import hf_config_from
    d = tiny_config(**overrides)
    want, got = load_config(d).to_native(), _from_transformers_config(hf_config_from(d)).to_native()
    assert set(want) == set(got)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
