"""dsv3.convert / `dsv3 convert|verify|info`: every source layout x every target format, resume,
verification, expert parallelism, bad arguments. Expected values come from quantising the source's
canonical tensors directly with dsv3.quant (what loading the source with that format does)."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3.checkpoint import open_checkpoint
from dsv3.convert import convert, info, read_dsv3_checkpoint, verify
from dsv3.convert.plan import FORMATS, Options, target_format
from dsv3.testing.checkpoints import tiny_config, write_checkpoint

from cli_helpers import interrupted_convert_resumes_byte_identical, run_cli

LAYOUTS = ("hf", "hf_fused", "fp8_block", "nvfp4")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    out = {}
    for layout in LAYOUTS:
        out[layout] = write_checkpoint(str(root / layout), tiny_config(), layout=layout, seed=1, shards=2)
    # moe_intermediate 128: fp8 block rows split exactly, so gate_up is stored fused
    out["fp8_i128"] = write_checkpoint(str(root / "fp8_i128"), tiny_config(moe_intermediate_size=128),
                                       layout="fp8_block", seed=2, shards=1)
    return out


def as_float(v):
    return np.asarray(quant.dequantize(v)) if isinstance(v, quant.QuantizedTensor) else np.asarray(v, np.float32)


def stored(v):
    """Stored arrays of a value as bytes, for bit-exact comparisons."""
    if isinstance(v, quant.QuantizedTensor):
        return v.fmt, {k: (np.asarray(a).dtype.str, np.asarray(a).shape, np.asarray(a).tobytes())
                       for k, a in v.arrays.items()}
    return str(v.dtype), {"weight": (v.dtype.str, v.shape, np.ascontiguousarray(v).tobytes())}


def expected(src, fmt):
    """What loading `src` with `fmt` gives: each canonical tensor quantised on its own."""
    out = {}
    opts = Options(format=fmt)
    for name, v in open_checkpoint(src).canonical_tensors():
        t = target_format(name, tuple(v.shape), opts)
        if t is None:
            out[name] = v
        elif t == "bf16":
            out[name] = v if getattr(v, "dtype", None) == ml_dtypes.bfloat16 else \
                as_float(v).astype(ml_dtypes.bfloat16)
        elif isinstance(v, quant.QuantizedTensor) and v.fmt == t:
            out[name] = v
        else:
            out[name] = quant.quantize(as_float(v), t)
    return out


def converted(dst):
    return dict(read_dsv3_checkpoint(dst))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_matches_direct_quantisation(sources, tmp_path, layout, fmt):
    dst = str(tmp_path / "out")
    convert(sources[layout], dst, format=fmt, quiet=True, shard_bytes=40_000)
    got, want = converted(dst), expected(sources[layout], fmt)
    assert sorted(got) == sorted(want)
    for name in want:
        assert stored(got[name]) == stored(want[name]), name
    assert verify(dst) == []
    ckpt = open_checkpoint(dst)
    assert ckpt.layout == "dsv3"
    assert sorted(n for n, _ in ckpt.canonical_tensors()) == sorted(want)


def test_same_format_is_copied_bit_exactly_and_gate_up_fused(sources, tmp_path):
    src = sources["fp8_i128"]
    dst = str(tmp_path / "out")
    convert(src, dst, format="fp8_block", quiet=True)
    with open(os.path.join(dst, mfname("index"))) as f:
        keys = json.load(f)["weight_map"]
    assert "model.layers.1.mlp.experts.3.gate_up_proj.weight" in keys
    assert "model.layers.1.mlp.experts.3.gate_up_proj.weight_scale_inv" in keys
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" not in keys
    got = converted(dst)
    for name, v in open_checkpoint(src).canonical_tensors():
        assert stored(got[name]) == stored(v), name


def mfname(kind):
    return {"index": "model.safetensors.index.json", "manifest": "dsv3-manifest.json"}[kind]


def test_bf16_fp8_bf16_round_trip_within_fp8_tolerance(sources, tmp_path):
    src = sources["hf"]
    convert(src, str(tmp_path / "fp8"), format="fp8_block", quiet=True)
    convert(str(tmp_path / "fp8"), str(tmp_path / "bf16"), format="bf16", quiet=True)
    back = converted(str(tmp_path / "bf16"))
    fp8 = converted(str(tmp_path / "fp8"))
    for name, v in open_checkpoint(src).canonical_tensors():
        x, y = as_float(v), as_float(back[name])
        assert y.shape == x.shape
        q = fp8[name]
        if not isinstance(q, quant.QuantizedTensor):
            assert np.array_equal(x, y), name
            continue
        # e4m3: 3 mantissa bits (relative 2^-4 after rounding), subnormal step 2^-9 of the block scale
        s = np.repeat(np.repeat(q.arrays["weight_scale_inv"], 128, 0), 128, 1)[:x.shape[0], :x.shape[1]]
        tol = np.abs(x) * (2.0 ** -4 + 2.0 ** -8) + s * 2.0 ** -9
        assert np.all(np.abs(x - y) <= tol), name


def test_interrupted_conversion_resumes_byte_identical(sources, tmp_path):
    src = sources["hf"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = ["convert", src, None, "--format", "int8", "--shard-size", "30KB"]
    names = interrupted_convert_resumes_byte_identical(args, a, b)
    assert mfname("index") not in names


def test_verify_catches_corrupted_tensor(sources, tmp_path):
    dst = str(tmp_path / "out")
    convert(sources["hf"], dst, format="fp8_block", quiet=True, shard_bytes=40_000)
    assert run_cli("verify", dst).returncode == 0
    with open(os.path.join(dst, mfname("manifest"))) as f:
        m = json.load(f)
    name = "model.layers.2.self_attn.o_proj.weight"
    rec = m["tensors"][name]
    path = os.path.join(dst, rec["shard"])
    with open(path, "rb") as f:
        head = int.from_bytes(f.read(8), "little")
        start = json.loads(f.read(head))[name]["data_offsets"][0] + 8 + head
    with open(path, "r+b") as f:
        f.seek(start + 5)
        byte = f.read(1)
        f.seek(start + 5)
        f.write(bytes([byte[0] ^ 0x01]))
    r = run_cli("verify", dst)
    assert r.returncode == 1
    assert name in r.stdout and "sha256" in r.stdout
    assert verify(dst) == [f"{name}: sha256 mismatch in {rec['shard']}"]


def test_expert_parallel_output_loads(sources, tmp_path):
    src = sources["fp8_block"]
    one, two = str(tmp_path / "ep1"), str(tmp_path / "ep2")
    convert(src, one, format="fp8_block", quiet=True)
    convert(src, two, format="fp8_block", ep=2, quiet=True)
    a, b = converted(one), converted(two)
    assert sorted(a) == sorted(b)
    for n in a:
        assert stored(a[n]) == stored(b[n]), n
    with open(os.path.join(two, "config.json")) as f:
        ep = json.load(f)["dsv3"]["expert_parallel"]
    assert ep["size"] == 2 and [r["experts"] for r in ep["ranks"]] == [[0, 4], [4, 8]]
    with open(os.path.join(two, mfname("index"))) as f:
        wm = json.load(f)["weight_map"]
    for key, fname in wm.items():
        if ".mlp.experts." in key:
            e = int(key.split(".mlp.experts.")[1].split(".")[0])
            assert fname in ep["ranks"][e // 4]["files"], key
        else:
            assert fname in ep["shared_files"], key
    assert verify(two) == []


def test_keep_mtp_copies_mtp_layer_verbatim(tmp_path):
    src = write_checkpoint(str(tmp_path / "src"), tiny_config(), layout="fp8_block", mtp=True, shards=1)
    dst = str(tmp_path / "dst")
    convert(src, dst, format="bf16", keep_mtp=True, quiet=True)
    with open(os.path.join(dst, mfname("index"))) as f:
        keys = json.load(f)["weight_map"]
    mtp = [k for k in keys if k.startswith("model.layers.3.")]
    assert mtp
    from dsv3.safetensors_io import open_safetensors
    with open_safetensors(src) as r, open_safetensors(dst) as w:
        for k in mtp:
            assert r.get(k).tobytes() == w.get(k).tobytes()
    assert not any(n.startswith("model.layers.3.") for n in converted(dst))


@pytest.mark.parametrize("path_kind", ["source", "converted"])
def test_info_reports_layout_formats_and_nothing_missing(sources, tmp_path, path_kind):
    path = sources["fp8_block"]
    if path_kind == "converted":
        path = str(tmp_path / "out")
        convert(sources["fp8_block"], path, format="int4", quiet=True)
    out = info(path)
    assert out["layout"] == ("fp8_block" if path_kind == "source" else "dsv3")
    assert out["missing"] == [] and out["unexpected"] == []
    assert sum(c for c, _ in out["formats"].values()) == out["tensors"]
    assert ("int4" if path_kind == "converted" else "fp8_block") in out["formats"]
    r = run_cli("info", path)
    assert r.returncode == 0, r.stderr
    assert "layout" in r.stdout and "tensors" in r.stdout


def test_bad_arguments_give_clear_errors(sources, tmp_path):
    src = sources["hf"]
    with pytest.raises(ValueError, match="unknown format 'fp7'"):
        convert(src, str(tmp_path / "x"), format="fp7")
    with pytest.raises(ValueError, match="inside the source"):
        convert(src, os.path.join(src, "sub"), format="bf16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert(str(tmp_path / "nope"), str(tmp_path / "y"), format="bf16")
    with pytest.raises(ValueError, match="must divide the number of routed experts"):
        convert(src, str(tmp_path / "z"), format="bf16", ep=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert(src, str(tmp_path / "busy"), format="bf16")
    r = run_cli("convert", src, str(tmp_path / "w"), "--format", "fp7")
    assert r.returncode == 2 and "invalid choice: 'fp7'" in r.stderr
    r = run_cli("convert", str(tmp_path / "nope"), str(tmp_path / "w"), "--format", "bf16")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = run_cli("verify", str(tmp_path))
    assert r.returncode == 1 and "dsv3-manifest.json" in r.stderr


def test_resume_refuses_other_options(sources, tmp_path):
    dst = str(tmp_path / "out")
    convert(sources["hf"], dst, format="bf16", quiet=True)
    with pytest.raises(ValueError, match="other options"):
        convert(sources["hf"], dst, format="int8", quiet=True)


def test_writer_output_is_valid_safetensors(sources, tmp_path):
    from safetensors import safe_open
    dst = str(tmp_path / "out")
    convert(sources["nvfp4"], dst, format="int8", quiet=True, shard_bytes=40_000)
    with open(os.path.join(dst, mfname("manifest"))) as f:
        m = json.load(f)
    for fname in m["shards"]:
        with safe_open(os.path.join(dst, fname), framework="numpy") as f:
            keys = set(f.keys())
        assert keys == {k for k, v in m["tensors"].items() if v["shard"] == fname}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_converted_logits_equal_direct_load(sources, tmp_path, layout, fmt):
    dst = str(tmp_path / "out")
    convert(sources[layout], dst, format=fmt, quiet=True)
    ids = np.array([3, 17, 42, 5, 9], dtype=np.int64)
    got = dsv3.Model.from_pretrained(dst).forward(ids)
    cfg = open_checkpoint(sources[layout]).config
    want = dsv3.Model.from_tensors(cfg, expected(sources[layout], fmt)).forward(ids)
    assert np.array_equal(got, want)


def test_dsv3_convert_is_callable_and_records_packed_layout(sources, tmp_path):
    dst = str(tmp_path / "out")
    dsv3.convert(sources["hf"], dst, format="int8", quiet=True)
    with open(os.path.join(dst, "config.json")) as f:
        sec = json.load(f)["dsv3"]
    assert sec["layout"] == "dsv3" and sec["quantization"]["default"] == "int8"
    if hasattr(quant, "pack"):
        assert sec["quantization"]["formats"]["int8"]["packed"] == quant.PACKED_LAYOUT
    with open(os.path.join(dst, "config.json")) as f:
        assert "quantization_config" not in json.load(f)


def test_info_reports_missing_tensors_of_a_broken_source(tmp_path):
    from dsv3.safetensors_io import open_safetensors, save_safetensors
    src = write_checkpoint(str(tmp_path / "src"), tiny_config(), layout="hf", shards=1)
    path = os.path.join(src, "model.safetensors")
    with open_safetensors(path) as r:
        tensors = {k: np.array(r.get(k)) for k in r.keys() if k != "model.layers.1.mlp.experts.2.up_proj.weight"}
    save_safetensors(path, tensors)
    out = info(src)
    assert out["missing"] == ["model.layers.1.mlp.experts.2.up_proj.weight"]
    assert "error" in out and out["layout"] == "hf"
    r = run_cli("info", src)
    assert r.returncode == 1 and "experts.2.up_proj" in r.stdout  # a broken checkpoint is an error (issue 9)


@pytest.mark.parametrize("layout,fmt", [("hf", "bf16"), ("hf_fused", "bf16"), ("fp8_block", "fp8_block")])
def test_no_requantisation_gives_the_source_logits_bit_exactly(sources, tmp_path, layout, fmt):
    dst = str(tmp_path / "out")
    convert(sources[layout], dst, format=fmt, quiet=True)
    ids = np.array([7, 1, 64, 12], dtype=np.int64)
    assert np.array_equal(dsv3.Model.from_pretrained(dst).forward(ids),
                          dsv3.Model.from_pretrained(sources[layout]).forward(ids))


def test_v32_indexer_tensors_are_converted_and_load(tmp_path):
    cfg = tiny_config(model_type="deepseek_v32", index_n_heads=4, index_head_dim=16, index_topk=2)
    src = write_checkpoint(str(tmp_path / "src"), cfg, layout="fp8_block", shards=1, scale=0.3)
    from dsv3.safetensors_io import open_safetensors
    with open_safetensors(src) as r:  # the hub layout: FP8 wq_b / wk with scales, BF16 weights_proj
        assert r.dtype("model.layers.0.self_attn.indexer.wq_b.weight") == "F8_E4M3"
        assert "model.layers.0.self_attn.indexer.wk.weight_scale_inv" in r
        assert r.dtype("model.layers.0.self_attn.indexer.weights_proj.weight") == "BF16"
    ids = np.array([7, 1, 64, 12, 5, 9, 30, 2], dtype=np.int64)
    want = dsv3.Model.from_pretrained(src, precision="exact").forward(ids)
    # int8 everywhere: the quantised indexer picks other rows for some queries (a discrete change: the
    # logits of the first index_topk positions, which see every row, stay within int8's tolerance; the
    # later ones may not), so V3.2 conversions keep attention (indexer included) in bf16 via --attention
    for fmt, att, tol in (("fp8_block", None, 0), ("bf16", None, 2e-2), ("int8", "bf16", 5e-2), ("int8", None, None)):
        dst = str(tmp_path / f"{fmt}-{att}")
        convert(src, dst, format=fmt, attention=att, quiet=True)
        names = converted(dst)
        assert "model.layers.2.self_attn.indexer.wq_b.weight" in names
        assert "model.layers.2.self_attn.indexer.k_norm.bias" in names
        with open_safetensors(dst) as w:  # weights_proj and the LayerNorm are never quantised
            assert w.dtype("model.layers.1.self_attn.indexer.weights_proj.weight") == "F32"  # read as float32
            assert w.dtype("model.layers.1.self_attn.indexer.k_norm.weight") in ("BF16", "F32")
        assert verify(dst) == []
        got = dsv3.Model.from_pretrained(dst, precision="exact").forward(ids)
        scale = np.abs(want).max()
        assert np.isfinite(got).all() and np.abs(got[:2] - want[:2]).max() / scale <= 5e-2, fmt
        if tol is not None:
            assert np.abs(got - want).max() / scale <= tol, (fmt, att)


def test_interrupted_expert_parallel_conversion_resumes_byte_identical(sources, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = ["convert", sources["fp8_block"], None, "--format", "nvfp4", "--ep", "2", "--shard-size", "20KB", "--quiet"]
    r = run_cli(*[a if x is None else x for x in args], env_extra={"DSV3_CONVERT_FAIL_AFTER": "60"})
    assert r.returncode == 75, r.stderr
    assert run_cli(*[a if x is None else x for x in args]).returncode == 0
    convert(sources["fp8_block"], b, format="nvfp4", ep=2, quiet=True, shard_bytes=20 << 10)
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for n in os.listdir(a):
        with open(os.path.join(a, n), "rb") as fa, open(os.path.join(b, n), "rb") as fb:
            assert fa.read() == fb.read(), n


def test_peak_memory_is_bounded_by_the_largest_tensor_not_the_checkpoint(tmp_path):
    cfg = tiny_config(hidden_size=512, moe_intermediate_size=512, intermediate_size=512, n_routed_experts=16,
                      n_group=4, topk_group=2, num_hidden_layers=3)
    src = write_checkpoint(str(tmp_path / "src"), cfg, layout="hf", shards=2)
    code = f"""
import dsv3
def hwm():
    return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
from dsv3.checkpoint import open_checkpoint
largest = max(v.nbytes for _, v in open_checkpoint({src!r}).canonical_tensors())
total = sum(v.nbytes for _, v in open_checkpoint({src!r}).canonical_tensors())
before = hwm()
dsv3.convert({src!r}, {str(tmp_path / "dst")!r}, format="bf16", quiet=True)
print(largest, total, hwm() - before)
"""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    largest, total, growth = map(int, r.stdout.split())
    assert total > 40 << 20 and largest <= 1 << 20
    assert growth < 3 * largest + (24 << 20), (growth, total)


# ---------------------------------------------------------------- damaged / hostile inputs (issue 9)
def _shard_of(dst, name):
    with open(os.path.join(dst, "dsv3-manifest.json")) as f:
        return json.load(f)["tensors"][name]["shard"]


def test_verify_names_a_damaged_header_entry_and_checks_the_rest(sources, tmp_path):
    # a flipped bit turns "data_offsets" into "data_offsetr" (same length): verify used to raise
    # KeyError('data_offsets') without naming the shard, and stop
    dst = str(tmp_path / "out")
    convert(sources["hf"], dst, format="int8", quiet=True, shard_bytes=20_000)
    a, b = "model.layers.0.self_attn.o_proj.weight", "model.layers.2.mlp.experts.3.down_proj.weight"
    sa, sb = _shard_of(dst, a), _shard_of(dst, b)
    assert sa != sb
    with open(os.path.join(dst, sa), "r+b") as f:
        head = f.read(8 + int.from_bytes(f.read(8), "little"))
        at = head.index(json.dumps(a).encode() + b':{"dtype":')
        at = head.index(b'"data_offsets"', at)
        f.seek(at + len('"data_offset'))
        f.write(b"r")
    with open(os.path.join(dst, sb), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        start = 8 + n + json.loads(f.read(n))[b]["data_offsets"][0]
    with open(os.path.join(dst, sb), "r+b") as f:
        f.seek(start)
        byte = f.read(1)
        f.seek(start)
        f.write(bytes([byte[0] ^ 0x10]))
    problems = verify(dst)
    assert any(p.startswith(f"{a}: bad header entry in {sa}") and "data_offsets" in p for p in problems), problems
    assert f"{b}: sha256 mismatch in {sb}" in problems
    assert len(problems) == 2, problems  # the other tensors of the damaged shard still verify
    r = run_cli("verify", dst)
    assert r.returncode == 1 and a in r.stdout and sa in r.stdout and b in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/tmp/abs.safetensors", "sub/x.safetensors", ".."])
def test_verify_refuses_manifest_shard_names_outside_the_checkpoint(sources, tmp_path, bad):
    dst = str(tmp_path / "out")
    convert(sources["hf"], dst, format="bf16", quiet=True)
    (tmp_path / "outside.safetensors").write_bytes(b"\0" * 16)
    mpath = os.path.join(dst, "dsv3-manifest.json")
    with open(mpath) as f:
        m = json.load(f)
    name = sorted(m["tensors"])[0]
    m["tensors"][name]["shard"] = bad
    m["shards"][bad] = {"items": [], "complete": True, "size": 16}
    with open(mpath, "w") as f:
        json.dump(m, f)
    with pytest.raises(ValueError, match="must be a plain file name") as e:
        verify(dst)
    assert repr(bad) in str(e.value)
    r = run_cli("verify", dst)
    assert r.returncode == 1 and "plain file name" in r.stderr and "Traceback" not in r.stderr


def _rewrite_tensors(dst, change):
    """Replace a converted checkpoint's shards by one shard holding change(tensors)."""
    from dsv3.safetensors_io import open_safetensors, save_sharded
    with open_safetensors(dst) as r:
        tensors = {k: np.array(r.get(k)) for k in r.keys()}
    for n in os.listdir(dst):
        if n.endswith(".safetensors") or n == "model.safetensors.index.json":
            os.remove(os.path.join(dst, n))
    save_sharded(dst, iter(change(tensors).items()), 1 << 30)


def _edit_config(dst, change):
    p = os.path.join(dst, "config.json")
    with open(p) as f:
        c = json.load(f)
    change(c)
    with open(p, "w") as f:
        json.dump(c, f)


def _load_all(path):
    with open_checkpoint(path) as ck:
        return dict(ck.canonical_tensors())


_W = "model.layers.0.self_attn.o_proj."
_GU = "model.layers.1.mlp.experts.0.gate_up_proj.weight"
# name -> (damage to the tensors, damage to config.json, error expected); the old errors in comments
DAMAGE = {
    "scale_without_weight": (lambda t: {k: v for k, v in t.items() if k != _W + "weight"}, None,
                             repr(_W + "weight")),  # KeyError('weight')
    "fused_scalar": (lambda t: dict(t, **{_GU: np.array(1, np.uint8)}), None, repr(_GU)),  # IndexError
    "quantization_not_object": (None, lambda c: c["dsv3"].__setitem__("quantization", ["int4"]),
                                r"dsv3\.quantization must be an object"),  # AttributeError
    "tensors_not_object": (None, lambda c: c["dsv3"]["quantization"].__setitem__("tensors", [_W + "weight"]),
                           r"dsv3\.quantization\.tensors"),  # AttributeError
    "no_num_hidden_layers": (None, lambda c: c.pop("num_hidden_layers"), "num_hidden_layers"),  # KeyError
    "bad_params": (None, lambda c: c["dsv3"]["quantization"]["formats"]["int4"].__setitem__("scale", 3),
                   r"tensor '.*' \(int4\)"),  # TypeError
    "norm_as_int": (lambda t: dict(t, **{"model.norm.weight": np.zeros(32, np.int16)}), None,
                    "'model.norm.weight' has dtype int16"),  # TypeError from Model.from_tensors
}


@pytest.fixture(scope="module")
def converted_int4(sources, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("int4") / "out")
    convert(sources["hf"], dst, format="int4", quiet=True)
    return dst


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_converted_checkpoint_gives_value_errors_naming_the_tensor_or_field(converted_int4, tmp_path, case):
    import shutil
    tensors, config, msg = DAMAGE[case]
    d = str(tmp_path / case)
    shutil.copytree(converted_int4, d)
    if tensors:
        _rewrite_tensors(d, tensors)
    if config:
        _edit_config(d, config)
    with pytest.raises(ValueError, match=msg):
        dsv3.Model.from_pretrained(d, max_seq_len=4)
    r = run_cli("info", d)
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)


def test_read_dsv3_checkpoint_without_num_hidden_layers(converted_int4, tmp_path):
    import shutil
    d = str(tmp_path / "x")
    shutil.copytree(converted_int4, d)
    _edit_config(d, lambda c: c.pop("num_hidden_layers"))  # was KeyError; the default (61) skips nothing
    assert len(list(read_dsv3_checkpoint(d))) == len(list(read_dsv3_checkpoint(converted_int4)))


def test_second_conversion_into_one_destination_is_refused(sources, tmp_path):
    import fcntl
    dst = tmp_path / "out"
    dst.mkdir()
    lock = dst / ".dsv3-convert.lock"
    with open(lock, "w") as holder:  # what a running conversion holds
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        with pytest.raises(OSError, match=f"another conversion is writing to {dst} \\(pid 4242\\)"):
            convert(sources["hf"], str(dst), format="bf16", quiet=True)
        r = run_cli("convert", sources["hf"], str(dst), "--format", "bf16", "--quiet")
        assert r.returncode == 1 and "another conversion is writing to" in r.stderr and "(pid 4242)" in r.stderr
        assert os.listdir(dst) == [lock.name]  # nothing written, nothing removed
    # a lock file left by a killed conversion (nobody holds it) does not block, and goes away
    convert(sources["hf"], str(dst), format="bf16", quiet=True)
    assert not lock.exists() and verify(str(dst)) == []


def test_concurrent_conversions_one_wins_one_is_refused(sources, tmp_path):
    dst = str(tmp_path / "out")
    procs = [subprocess.Popen([sys.executable, "-m", "dsv3", "convert", sources["nvfp4"], dst, "--format", "int4",
                               "--quiet"], env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errs = " ".join(e for _, e in outs)
    # both may succeed one after the other (the second then resumes a complete conversion), but
    # never a confusing failure: a refusal names the other writer
    assert codes in ([0, 0], [0, 1]), (codes, errs)
    if codes == [0, 1]:
        assert "another conversion is writing to" in errs and "Traceback" not in errs
    assert verify(dst) == []


def test_cli_unexpected_error_is_one_line_unless_debug(sources, monkeypatch, capsys):
    import dsv3.cli
    import dsv3.convert

    def boom(path):
        raise RuntimeError("boom in info")
    monkeypatch.setattr(dsv3.convert, "info", boom)
    monkeypatch.delenv("DSV3_DEBUG", raising=False)
    assert dsv3.cli.main(["info", sources["hf"]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dsv3 info: error: RuntimeError: boom in info" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom in info"):
        dsv3.cli.main(["--debug", "info", sources["hf"]])
    monkeypatch.setenv("DSV3_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom in info"):
        dsv3.cli.main(["info", sources["hf"]])
