"""`dsv3 convert --pack`: int4 weights stored in the packed kernel layout (csrc/linear/int4p.h) and read in place.

- The round trip: every int4 tensor the engine packs (all but kv_b_proj) is stored as `X.weight_packed` alone,
  64-byte aligned in its shard; unpacking it gives the unpacked conversion's arrays bit for bit, and packing
  those gives it back (lib.pack_weight: the layout is tested against a numpy statement in test_int4_packed.py).
- Logits: the stored-packed checkpoint in the fast precision equals the same checkpoint packed at load bit for
  bit (the kernels read the same bytes), and the exact precision (which unpacks) equals the unpacked
  checkpoint's exact logits bit for bit.
- Zero copy: the packed arrays are views of the mmapped shard and the model owns no packed buffer
  (Model.packing: stored, nothing packed at load).
- pack=None / True / False, DSV3_PACK=0; misaligned and wrong-size packed tensors; --pack without an int4
  format; crash-safe resume; dsv3 verify / info; the safetensors library reads the shards.
"""
import json
import mmap
import os

import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3._native import lib
from dsv3.convert import convert, info, read_dsv3_checkpoint, verify
from dsv3.safetensors_io import PAD_PREFIX
from dsv3.testing.checkpoints import tiny_config, write_checkpoint

from cli_helpers import interrupted_convert_resumes_byte_identical, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = np.array([3, 17, 42, 5, 9, 61, 7], dtype=np.int64)
# moe_intermediate 40: expert rows not a multiple of 16 (padding rows of the last row group), down_proj K = 40
# (a partial chunk, a partial group of 32); hidden 64: two full 32-blocks
CONFIG = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=40)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    src = write_checkpoint(str(root / "src"), tiny_config(**CONFIG), layout="hf", seed=3, shards=2, scale=0.2)
    out = {"src": src, "packed": str(root / "packed"), "plain": str(root / "plain")}
    convert(src, out["packed"], format="int4", group=32, pack=True, quiet=True, shard_bytes=60_000)
    convert(src, out["plain"], format="int4", group=32, quiet=True, shard_bytes=60_000)
    return out


def _logits(path, **kw):
    return dsv3.Model.from_pretrained(path, **kw).forward(IDS)


def _with_env(key, value, fn):
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def test_round_trip_stores_exactly_the_packed_layout(ckpts):
    packed, plain = dict(read_dsv3_checkpoint(ckpts["packed"])), dict(read_dsv3_checkpoint(ckpts["plain"]))
    assert packed.keys() == plain.keys()
    n_packed = 0
    for name, v in packed.items():
        u = plain[name]
        if not isinstance(u, quant.QuantizedTensor) or u.fmt != "int4":
            assert not getattr(v, "is_packed", False), name
            continue
        assert v.is_packed == lib.tensor_packs(name) == ("kv_b_proj" not in name), name
        if not v.is_packed:
            continue
        n_packed += 1
        assert set(v.arrays) == {"weight_packed"} and v.shape == u.shape and v.params["group"] == 32
        back = quant.unpack(v)
        for key in ("weight", "weight_scale"):
            assert back.arrays[key].tobytes() == np.ascontiguousarray(u.arrays[key]).tobytes(), (name, key)
        assert quant.pack(u).arrays["weight_packed"].tobytes() == v.arrays["weight_packed"].tobytes(), name
        # zero copy: a view of the mmapped shard, at the kernels' alignment
        a = v.arrays["weight_packed"]
        assert not a.flags.owndata and a.ctypes.data % lib.PACKED_ALIGN == 0
        base = a
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap), name
    assert n_packed > 0
    # gate / up stay separate when packed (each its own layout); the plain int4 conversion fuses them
    with open(os.path.join(ckpts["packed"], "model.safetensors.index.json")) as f:
        keys = json.load(f)["weight_map"]
    assert not any("gate_up_proj" in k for k in keys) and any(k.endswith("gate_proj.weight_packed") for k in keys)
    with open(os.path.join(ckpts["plain"], "model.safetensors.index.json")) as f:
        assert any("gate_up_proj" in k for k in json.load(f)["weight_map"])
    with open(os.path.join(ckpts["packed"], "config.json")) as f:
        q = json.load(f)["dsv3"]["quantization"]
    assert q["formats"]["int4"] == {"group": 32, "packed": quant.INT4P_LAYOUT}
    assert all(p["packed"] == quant.PACKED_LAYOUT for n, p in q["tensor_params"].items()), q["tensor_params"]


def test_stored_packed_logits_equal_packing_at_load_bitwise(ckpts):
    m = dsv3.Model.from_pretrained(ckpts["packed"])  # fast precision by default
    p = m.packing
    assert p["stored"] > 0 and p["at_load"] == 0 and p["unpacked_at_load"] == 0  # read in place, nothing owned
    assert "packed, stored (read in place)" in repr(m)
    ref = dsv3.Model.from_pretrained(ckpts["plain"])
    assert ref.packing["at_load"] > 0 and ref.packing["stored"] == 0
    assert "packed at load (owned)" in repr(ref)
    got, want = m.forward(IDS), ref.forward(IDS)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_array_equal(got, want)
    # packed stored vs packed at load: both equal across the whole decode too (the kernels read the same bytes)
    m.reset()
    ref.reset()
    for t in IDS[:3]:
        np.testing.assert_array_equal(m.forward(np.array([t])), ref.forward(np.array([t])))


def test_exact_precision_unpacks_and_matches_the_unpacked_checkpoint(ckpts):
    m = dsv3.Model.from_pretrained(ckpts["packed"], precision="exact")
    assert m.packing["unpacked_at_load"] > 0 and m.packing["stored"] == 0 and m.packing["at_load"] == 0
    assert "unpacked at load (owned)" in repr(m)
    np.testing.assert_array_equal(m.forward(IDS), _logits(ckpts["plain"], precision="exact"))
    with pytest.raises(ValueError, match="fast precision only"):
        dsv3.Model.from_pretrained(ckpts["packed"], precision="exact", pack=True)


def test_pack_argument_and_dsv3_pack_env(ckpts):
    # pack=False: never packed; stored-packed weights unpacked: the unpacked checkpoint under DSV3_PACK=0
    m = dsv3.Model.from_pretrained(ckpts["packed"], pack=False)
    assert m.packing["stored"] == 0 and m.packing["at_load"] == 0 and m.packing["unpacked_at_load"] > 0
    plain_off = _with_env("DSV3_PACK", "0", lambda: dsv3.Model.from_pretrained(ckpts["plain"]))
    assert plain_off.packing == {"stored": 0, "at_load": 0, "unpacked_at_load": 0}
    want = plain_off.forward(IDS)
    np.testing.assert_array_equal(m.forward(IDS), want)
    np.testing.assert_array_equal(_logits(ckpts["plain"], pack=False), want)
    # pack=True packs even under DSV3_PACK=0: the packed-at-load logits
    forced = _with_env("DSV3_PACK", "0", lambda: dsv3.Model.from_pretrained(ckpts["plain"], pack=True))
    assert forced.packing["at_load"] > 0
    np.testing.assert_array_equal(forced.forward(IDS), _logits(ckpts["packed"]))
    # a stored-packed checkpoint is read in place whatever DSV3_PACK says (None: nothing is packed at load)
    stored = _with_env("DSV3_PACK", "0", lambda: dsv3.Model.from_pretrained(ckpts["packed"]))
    assert stored.packing["stored"] > 0 and stored.packing["at_load"] == 0
    with pytest.raises(TypeError, match="pack must be None, True or False"):
        dsv3.Model.from_pretrained(ckpts["packed"], pack="yes")


def test_misaligned_or_wrong_size_packed_tensors_give_clear_errors(ckpts, tmp_path):
    v = next(v for _, v in read_dsv3_checkpoint(ckpts["packed"]) if getattr(v, "is_packed", False))
    a = v.arrays["weight_packed"]
    raw = np.zeros(a.nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64 + 8  # 8 bytes past a 64-byte boundary
    shifted = raw[off:off + a.nbytes]
    shifted[:] = a
    with pytest.raises(ValueError, match=r"must start at a multiple of 64 bytes.*starts 8 bytes past"):
        quant.from_checkpoint("int4", weight_packed=shifted, shape=v.shape, group=32)
    with pytest.raises(ValueError, match=rf"expected {a.nbytes} bytes for shape \[{v.shape[0]}, {v.shape[1]}\]"):
        quant.from_checkpoint("int4", weight_packed=a[:-64], shape=v.shape, group=32)
    with pytest.raises(ValueError, match="not weight / scale as well"):
        quant.from_checkpoint("int4", weight=np.zeros((4, 16), np.uint8), weight_packed=a, shape=v.shape, group=32)
    # a shard whose data area moved by 8 bytes (re-saved by another tool): the loader names the tensor
    bad = tmp_path / "bad"
    bad.mkdir()
    for n in os.listdir(ckpts["packed"]):
        src = os.path.join(ckpts["packed"], n)
        with open(src, "rb") as f:
            blob = f.read()
        if n.endswith(".safetensors"):
            hlen = int.from_bytes(blob[:8], "little")
            blob = (hlen + 8).to_bytes(8, "little") + blob[8:8 + hlen] + b" " * 8 + blob[8 + hlen:]
        with open(bad / n, "wb") as f:
            f.write(blob)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.\d+\..*' \(int4\).*multiple of 64 bytes"):
        dsv3.Model.from_pretrained(str(bad))
    # the config's group disagrees with the stored bytes: the size check names the tensor
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for n in os.listdir(ckpts["packed"]):
        os.symlink(os.path.join(ckpts["packed"], n), wrong / n)
    os.remove(wrong / "config.json")
    with open(os.path.join(ckpts["packed"], "config.json")) as f:
        cfg = json.load(f)
    cfg["dsv3"]["quantization"]["formats"]["int4"]["group"] = 128
    with open(wrong / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=r"\(int4\).*packed.*expected \d+ bytes for shape.*group 128"):
        dsv3.Model.from_pretrained(str(wrong))


def test_native_model_refuses_a_packed_weight_in_the_exact_precision(ckpts):
    from dsv3.checkpoint import open_checkpoint
    ck = open_checkpoint(ckpts["packed"])
    tensors = {n: (v.to_native() if isinstance(v, quant.QuantizedTensor) else v) for n, v in ck.canonical_tensors()}
    with pytest.raises(ValueError, match="stored in the packed int4 layout, which only the fast precision reads"):
        lib.Model(ck.config.to_native(), tensors, 16)


def test_pack_needs_an_int4_format_and_records_the_option(ckpts, tmp_path):
    with pytest.raises(ValueError, match="--pack stores the packed kernel layout of int4 weights"):
        convert(ckpts["src"], str(tmp_path / "x"), format="int8", pack=True, quiet=True)
    r = run_cli("convert", ckpts["src"], str(tmp_path / "y"), "--format", "bf16", "--pack")
    assert r.returncode != 0 and "--pack stores the packed kernel layout" in r.stderr
    assert not os.path.exists(tmp_path / "y" / "config.json")
    # experts only in int4: those are packed, attention stays bf16
    dst = str(tmp_path / "experts")
    convert(ckpts["src"], dst, format="bf16", experts="int4", pack=True, quiet=True)
    vals = dict(read_dsv3_checkpoint(dst))
    assert all(v.is_packed for n, v in vals.items() if ".mlp.experts." in n)
    assert not any(getattr(v, "is_packed", False) for n, v in vals.items() if ".mlp.experts." not in n)
    with open(os.path.join(dst, "dsv3-manifest.json")) as f:
        assert json.load(f)["options"]["pack"] is True
    with open(os.path.join(ckpts["plain"], "dsv3-manifest.json")) as f:
        assert "pack" not in json.load(f)["options"]  # off: as manifests written before the option


def test_interrupted_packed_conversion_resumes_byte_identical(ckpts, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = ["convert", ckpts["src"], None, "--format", "int4", "--group", "32", "--pack", "--shard-size", "30KB"]
    interrupted_convert_resumes_byte_identical(args, a, b)
    assert verify(a) == []


def test_shards_are_valid_safetensors_and_info_says_packed(ckpts):
    from safetensors import safe_open
    with open(os.path.join(ckpts["packed"], "dsv3-manifest.json")) as f:
        m = json.load(f)
    pads = 0
    for fname in m["shards"]:
        with safe_open(os.path.join(ckpts["packed"], fname), framework="numpy") as f:
            keys = set(f.keys())
            for k in keys:
                if k.startswith(PAD_PREFIX):
                    pads += 1
                    assert not f.get_tensor(k).any()  # alignment fill: zeros
        assert {k for k in keys if not k.startswith(PAD_PREFIX)} == \
            {k for k, v in m["tensors"].items() if v["shard"] == fname}
    assert pads > 0  # some tensor needed fill before its packed layout
    assert verify(ckpts["packed"]) == []
    out = info(ckpts["packed"])
    assert out["formats"]["int4 (packed)"][0] > 0 and out["formats"]["int4"][0] == 3  # kv_b_proj, 3 layers
    assert out["missing"] == [] and out["unexpected"] == []
    r = run_cli("info", ckpts["packed"])
    assert r.returncode == 0 and "int4 (packed)" in r.stdout


@pytest.mark.parametrize("n,k,group", [(37, 96, 32), (16, 256, 128), (5, 40, 32), (130, 136, 128)])
def test_unpack_inverts_pack_bitwise(n, k, group):
    rng = np.random.default_rng(n * k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    qt = quant.quantize(w, "int4", group=group)
    p = quant.pack(qt)
    assert p.is_packed and p.arrays["weight_packed"].ctypes.data % lib.PACKED_ALIGN == 0
    assert p.nbytes == lib.pack_weight(qt.to_native()).nbytes
    u = quant.unpack(p)
    assert u.arrays["weight"].tobytes() == qt.arrays["weight"].tobytes()
    assert u.arrays["weight_scale"].tobytes() == qt.arrays["weight_scale"].tobytes()
    np.testing.assert_array_equal(quant.dequantize(p), quant.dequantize(qt))
    assert quant.pack(p) is p and quant.unpack(qt) is qt
    # formats without a packed layout: pack only records the checkpoint layout
    q8 = quant.quantize(w, "int8")
    assert quant.pack(q8).arrays["weight"] is q8.arrays["weight"]
    assert quant.pack(q8).params["packed"] == quant.PACKED_LAYOUT


@pytest.mark.parametrize("n,k,group", [(37, 96, 32), (16, 256, 128), (5, 40, 32), (130, 136, 128), (19, 1048, 32),
                                       (3, 8, 32), (17, 2, 32)])
def test_simd_packer_bitwise_equals_the_scalar_twin(n, k, group):
    """The packer's AVX2 / AVX-512 row steps (csrc/linear/int4p_pack_*.c) give the scalar packer's bytes: whole
    steps, the scalar tail after them (K / 8 not a multiple of 8 or 16), a partial last chunk, padding rows; codes
    -8 and 7 included. The scalar packer itself is checked against int4p.h in numpy (test_int4_packed.py)."""
    from test_int4_packed import layout_reference, random_int4
    qt, codes = random_int4(n, k, group, n + k)
    ref = lib.pack_weight(qt.to_native(), isa="scalar")
    c, s = layout_reference(codes, qt.arrays["weight_scale"], group)
    cb = c.size
    assert ref[:cb].tobytes() == c.tobytes() and ref[-s.size * 4:].tobytes() == s.tobytes()
    for isa in [i for i in ("avx2", "avx512") if i in lib.isa_info()[1]]:
        got = lib.pack_weight(qt.to_native(), isa=isa)
        assert got.tobytes() == ref.tobytes(), isa


def test_tensors_kept_as_stored_in_int4_are_packed_too(ckpts, tmp_path):
    """A tensor the options keep as stored (lm_head without --lm-head) that the source holds in int4 is packed
    like the converted ones: a fast load of the result packs nothing (the peers model's case: a --pack of a dsv3
    int4 conversion with an int4 lm_head)."""
    mid, dst = str(tmp_path / "mid"), str(tmp_path / "dst")
    convert(ckpts["src"], mid, format="int4", lm_head="int4", group=32, quiet=True)
    convert(mid, dst, format="int4", group=32, pack=True, quiet=True)
    vals = dict(read_dsv3_checkpoint(dst))
    assert vals["lm_head.weight"].is_packed
    m = dsv3.Model.from_pretrained(dst)
    assert m.packing["at_load"] == 0 and m.packing["stored"] > 0
    np.testing.assert_array_equal(m.forward(IDS), _logits(mid))
