import gc
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors
import torch

from dsv3.safetensors_io import (SafetensorsError, open_safetensors, save_safetensors, save_sharded,
                                 shard_name)

RNG = np.random.default_rng(0)
ALL = {
    "F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "U8": np.uint8, "I8": np.int8,
    "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_,
}
TORCH = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8, "I8": torch.int8,
         "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}


def sample(dt, shape):
    if np.dtype(dt) == np.bool_:
        return RNG.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(np.dtype(dt), np.integer):
        return RNG.integers(-100 if np.dtype(dt).kind == "i" else 0, 100, shape).astype(dt)
    return (RNG.standard_normal(shape) * 3).astype(np.float32).astype(dt)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def test_round_trip_every_dtype(tmp_path):
    tensors = {f"t.{k}": sample(v, (3, 5)) for k, v in ALL.items()}
    tensors["scalar"] = np.array(2.5, np.float32)
    tensors["empty"] = np.zeros((0, 4), ml_dtypes.bfloat16)
    tensors["odd"] = sample(np.uint8, (7,))
    p = str(tmp_path / "a.safetensors")
    save_safetensors(p, tensors, metadata={"format": "pt", "x": "y"})
    with open_safetensors(p) as r:
        assert r.keys() == sorted(tensors) and r.metadata == {"format": "pt", "x": "y"}
        for name, a in tensors.items():
            b = r.get(name)
            assert b.dtype == a.dtype and b.shape == a.shape and r.shape(name) == a.shape
            assert np.array_equal(bits(a), bits(b)), name
            assert not b.flags.writeable
            assert r.nbytes(name) == a.nbytes and r.file_of(name) == p
    # safetensors' own reader (torch framework: it knows F8/BF16)
    with safetensors.safe_open(p, framework="pt") as f:
        assert f.metadata()["x"] == "y"
        for k, dt in ALL.items():
            t = f.get_tensor(f"t.{k}")
            assert t.dtype == TORCH[dt if isinstance(dt, str) else k]
            assert np.array_equal(t.view(torch.uint8).numpy() if k != "BOOL" else t.numpy().view(np.uint8),
                                  bits(tensors[f"t.{k}"]))
        assert f.get_tensor("scalar").item() == 2.5


def test_read_files_written_by_safetensors(tmp_path):
    p = str(tmp_path / "b.safetensors")
    ref = {"w": torch.randn(4, 6).to(torch.bfloat16), "q": torch.randn(8, 8).to(torch.float8_e4m3fn),
           "b": torch.arange(5, dtype=torch.int64)}
    from safetensors.torch import save_file
    save_file(ref, p)
    with open_safetensors(p) as r:
        assert r.dtype("w") == "BF16" and r.dtype("q") == "F8_E4M3" and r.dtype("b") == "I64"
        for k, t in ref.items():
            assert np.array_equal(bits(r.get(k)), t.contiguous().view(torch.uint8).numpy().reshape(-1)
                                  .view(np.uint8).reshape(bits(r.get(k)).shape))


def test_zero_copy_and_close_with_live_arrays(tmp_path):
    p = str(tmp_path / "c.safetensors")
    save_safetensors(p, {"a": np.arange(1000, dtype=np.float32)})
    r = open_safetensors(p)
    a = r.get("a")
    assert not a.flags.owndata and a.base is not None
    r.close()  # arrays alive: mapping stays until they go
    assert a[999] == 999.0 and float(a.sum()) == float(np.arange(1000).sum())
    with pytest.raises(SafetensorsError, match="closed"):
        r.get("a")
    del a
    gc.collect()


def test_sharded(tmp_path):
    tensors = {f"model.layers.{i}.w": sample(ml_dtypes.bfloat16, (16, 16)) for i in range(5)}
    ipath = save_sharded(tmp_path, iter(tensors.items()), max_shard_bytes=1100)
    idx = json.load(open(ipath))
    assert idx["metadata"]["total_size"] == 5 * 512
    assert sorted(set(idx["weight_map"].values())) == [shard_name(k, 3) for k in (1, 2, 3)]
    assert shard_name(1, 163) == "model-00001-of-00163.safetensors"
    for src in (ipath, str(tmp_path)):
        with open_safetensors(src) as r:
            assert r.keys() == sorted(tensors)
            for k, a in tensors.items():
                assert np.array_equal(bits(r.get(k)), bits(a))
                assert os.path.basename(r.file_of(k)) == idx["weight_map"][k]


def raw_file(path, header, data=b"", hlen=None, pad=True):
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb) if hlen is None else hlen))
        f.write(hb)
        f.write(data)
    return str(path)


def ent(dt, shape, b, e):
    return {"dtype": dt, "shape": shape, "data_offsets": [b, e]}


BAD = [
    ("short", lambda p: open(p, "wb").write(b"\x01\x00"), "too short", None),
    ("hlen_past_end", lambda p: raw_file(p, {"w": ent("F32", [1], 0, 4)}, b"\0" * 4, hlen=10_000), "past the end",
     None),
    ("hlen_cap", lambda p: raw_file(p, {}, hlen=2**40), "cap", None),
    ("bad_json", lambda p: raw_file(p, b"{\"w\": [", b""), "valid JSON", None),
    ("not_object", lambda p: raw_file(p, [1, 2]), "JSON object", None),
    ("unknown_dtype", lambda p: raw_file(p, {"w": ent("F7", [1], 0, 1)}, b"\0"), "unknown dtype", "w"),
    ("negative_dim", lambda p: raw_file(p, {"w": ent("F32", [-1, 4], 0, 16)}, b"\0" * 16), "non-negative", "w"),
    ("float_dim", lambda p: raw_file(p, {"w": ent("F32", [2.0], 0, 8)}, b"\0" * 8), "non-negative", "w"),
    ("offsets_past_end", lambda p: raw_file(p, {"w": ent("F32", [4], 0, 16)}, b"\0" * 8), "past the data", "w"),
    ("overlap", lambda p: raw_file(p, {"a": ent("F32", [4], 0, 16), "b": ent("F32", [4], 8, 24)}, b"\0" * 24),
     "overlaps", "b"),
    ("span_mismatch", lambda p: raw_file(p, {"w": ent("F32", [3], 0, 16)}, b"\0" * 16), "bytes but", "w"),
    ("huge_dims", lambda p: raw_file(p, {"w": ent("BF16", [2**62, 2**62], 0, 0)}), "too large", "w"),
    ("truncated_data", lambda p: raw_file(p, {"w": ent("BF16", [64], 0, 128)}, b"\0" * 100), "past the data", "w"),
    ("reversed_offsets", lambda p: raw_file(p, {"w": ent("U8", [0], 4, 0)}, b"\0" * 4), "begin <= end", "w"),
    ("missing_key", lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "needs dtype", "w"),
    ("bad_metadata", lambda p: raw_file(p, {"__metadata__": {"a": 1}}), "__metadata__", None),
    ("deep_nesting", lambda p: raw_file(p, b"[" * 100_000 + b"]" * 100_000), "nested", None),
    ("deep_in_entry", lambda p: raw_file(p, b'{"w":{"dtype":"U8","shape":' + b"[" * 5000 + b"]" * 5000
                                         + b',"data_offsets":[0,0]}}'), "nested", None),
    ("dtype_list", lambda p: raw_file(p, {"w": ent(["F32"], [1], 0, 4)}, b"\0" * 4), "unknown dtype", "w"),
    ("dtype_object", lambda p: raw_file(p, {"w": ent({"a": 1}, [1], 0, 4)}, b"\0" * 4), "unknown dtype", "w"),
    ("empty_huge_dim", lambda p: raw_file(p, {"w": ent("F32", [0, 2**64], 0, 0)}), "too large", "w"),
    ("empty_huge_dims", lambda p: raw_file(p, {"w": ent("U8", [2**32, 0, 2**32], 0, 0)}), "too large", "w"),
    ("duplicate_key", lambda p: raw_file(p, b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                         b'"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
     "duplicate", None),
]


@pytest.mark.parametrize("name,make,msg,tensor", BAD, ids=[b[0] for b in BAD])
def test_malformed_files(tmp_path, name, make, msg, tensor):
    p = str(tmp_path / f"{name}.safetensors")
    make(p)
    with pytest.raises(SafetensorsError) as e:
        open_safetensors(p)
    s = str(e.value)
    assert p in s and msg in s
    if tensor:
        assert repr(tensor) in s


def _sharded(tmp_path):
    save_sharded(tmp_path, iter([("a", np.zeros(4, np.float32)), ("b", np.ones(4, np.float32))]), 16)
    return tmp_path / "model.safetensors.index.json"


def test_index_missing_shard(tmp_path):
    ip = _sharded(tmp_path)
    os.unlink(tmp_path / shard_name(2, 2))
    with pytest.raises(SafetensorsError, match=r"'b'.*|does not exist") as e:
        open_safetensors(ip)
    assert "does not exist" in str(e.value) and "'b'" in str(e.value)


def test_index_key_absent_from_shard(tmp_path):
    ip = _sharded(tmp_path)
    idx = json.load(open(ip))
    idx["weight_map"]["c"] = shard_name(1, 2)
    json.dump(idx, open(ip, "w"))
    with pytest.raises(SafetensorsError) as e:
        open_safetensors(ip)
    assert "'c'" in str(e.value) and shard_name(1, 2) in str(e.value)


def test_index_unlisted_tensor_and_traversal(tmp_path):
    ip = save_sharded(tmp_path, iter([("a", np.zeros(4, np.float32)), ("b", np.ones(4, np.float32))]), 1 << 20)
    idx = json.load(open(ip))
    del idx["weight_map"]["a"]
    json.dump(idx, open(ip, "w"))
    with pytest.raises(SafetensorsError, match="'a' is not listed"):
        open_safetensors(ip)
    idx["weight_map"]["a"] = "../x.safetensors"
    json.dump(idx, open(ip, "w"))
    with pytest.raises(SafetensorsError, match="plain file name"):
        open_safetensors(ip)


def test_missing_paths_and_keys(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_safetensors(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_safetensors(tmp_path / "nope.safetensors")
    p = save_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.float32)})
    with open_safetensors(p) as r, pytest.raises(KeyError, match="'zz'"):
        r.get("zz")


def test_atomic_write_leaves_no_temp(tmp_path):
    with pytest.raises(SafetensorsError):
        save_safetensors(tmp_path / "y.safetensors", {"a": np.zeros(2, np.complex64)})
    assert os.listdir(tmp_path) == []


def test_corrupted_headers_never_crash(tmp_path):
    """Flip random bytes of a valid file's header: the reader either opens it or raises SafetensorsError."""
    p = str(tmp_path / "ok.safetensors")
    save_safetensors(p, {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(4, ml_dtypes.bfloat16)})
    blob = bytearray(open(p, "rb").read())
    hlen = struct.unpack("<Q", blob[:8])[0]
    rng = np.random.default_rng(3)
    q = str(tmp_path / "bad.safetensors")
    for _ in range(300):
        b = bytearray(blob)
        for i in rng.integers(0, 8 + hlen, size=rng.integers(1, 4)):
            b[i] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(0, len(b)))]
        open(q, "wb").write(bytes(b))
        try:
            with open_safetensors(q) as r:
                for k in r.keys():
                    r.get(k).sum()
        except SafetensorsError as e:
            assert q in str(e)


def test_index_nested_too_deeply_or_too_large(tmp_path):
    idx = _sharded(tmp_path)
    idx.write_text('{"weight_map": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(SafetensorsError, match="nested") as e:
        open_safetensors(idx)
    assert str(idx) in str(e.value)
    from dsv3 import jsonio
    with open(idx, "wb") as f:
        f.truncate(jsonio.MAX_INDEX_BYTES + 1)  # sparse: the cap is checked before reading
    with pytest.raises(SafetensorsError, match="cap"):
        open_safetensors(idx)


def _unaligned_copy(src, dst, extra=1):
    """Rewrite safetensors file src with a header whose length is 8k + extra (spec-valid)."""
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = f.read(n).rstrip(b" ")
        data = f.read()
    head += b" " * ((extra - len(head)) % 8)
    assert len(head) % 8 == extra
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)


def test_unaligned_header_is_read_with_copies_and_one_warning(tmp_path, caplog):
    import logging
    from safetensors.numpy import load_file
    tensors = {"f32": RNG.standard_normal((3, 5)).astype(np.float32), "u8": np.arange(7, dtype=np.uint8),
               "bf16": RNG.standard_normal(9).astype(ml_dtypes.bfloat16), "i64": np.arange(4, dtype=np.int64)}
    save_safetensors(tmp_path / "a.safetensors", tensors)
    _unaligned_copy(tmp_path / "a.safetensors", tmp_path / "b.safetensors", extra=3)
    lib = load_file(str(tmp_path / "b.safetensors"))  # the safetensors library reads it (spec-valid)
    with caplog.at_level(logging.WARNING, logger="dsv3.safetensors_io"):
        with open_safetensors(tmp_path / "b.safetensors") as r:
            for _ in range(2):
                got = {k: r.get(k) for k in r.keys()}
    for k, a in tensors.items():
        assert bits(got[k]).tobytes() == bits(a).tobytes() == np.ascontiguousarray(lib[k]).tobytes()
        assert got[k].flags.aligned and not got[k].flags.writeable
    assert got["u8"].base is not None and not got["u8"].flags.owndata  # an aligned tensor stays zero-copy
    warned = [r for r in caplog.records if "not a multiple of 8" in r.getMessage()]
    assert len(warned) == 1 and "b.safetensors" in warned[0].getMessage()


def test_model_loads_a_checkpoint_with_an_unaligned_header(tmp_path):
    import dsv3
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    src = write_checkpoint(str(tmp_path / "a"), tiny_config(), layout="fp8_block", shards=1)
    ids = np.array([3, 1, 4, 1, 5])
    want = dsv3.Model.from_pretrained(src, max_seq_len=8).forward(ids)
    _unaligned_copy(os.path.join(src, "model.safetensors"), tmp_path / "m.safetensors", extra=5)
    os.replace(tmp_path / "m.safetensors", os.path.join(src, "model.safetensors"))
    got = dsv3.Model.from_pretrained(src, max_seq_len=8).forward(ids)  # was: "... is not aligned"
    assert np.array_equal(got, want)


def test_json_nesting_depth_ignores_brackets_in_strings():
    from dsv3.jsonio import JSONInputError, nesting_depth, parse_json
    assert nesting_depth(b'{"a": [1, {"b": []}]}') == 4
    assert nesting_depth(b'{"a": "[[[[{{{{", "b": "\\\\\\"[[[["}') == 1  # escaped quote inside a string
    assert nesting_depth(b"12") == 0
    deep = b"[" * 65 + b"]" * 65
    assert nesting_depth(deep) == 65
    with pytest.raises(JSONInputError, match="nested 65 levels"):
        parse_json(deep, "x", 1 << 20)
    assert parse_json(b"[" * 64 + b"]" * 64, "x", 1 << 20) is not None
    assert parse_json(b'["' + b"[" * 1000 + b'"]', "x", 1 << 20) == ["[" * 1000]
    with pytest.raises(JSONInputError, match="cap"):
        parse_json(b"[1]", "x", 2)
    with pytest.raises(JSONInputError, match="duplicate key 'a'"):
        parse_json(b'{"a": 1, "a": 2}', "x", 100, unique_keys=True)
    assert parse_json(b'{"a": 1, "a": 2}', "x", 100) == {"a": 2}  # json's rule where duplicates are allowed
