"""Fuzz targets for dsv3's input readers, a seed corpus built by code, and a structure-aware mutator.

Targets (each takes one ``bytes`` input):
- ``safetensors``: the bytes are a .safetensors file; open it, read every tensor.
- ``config``: the bytes are a config.json; load_config it and derive every value the C core gets.
- ``checkpoint``: the bytes pack a checkpoint directory (see :func:`pack_files`); verify it (when
  it has a dsv3 manifest), open_checkpoint it, read every canonical tensor, build a dsv3.Model and
  run one forward step (``dsv3 info`` when the checkpoint is refused).

An input may only fail with one of :data:`CLEAN_ERRORS` (the documented errors for bad files:
ValueError, which SafetensorsError / CheckpointError / JSONInputError are, OSError, and
NotImplementedError for well-formed but unsupported formats). Anything else is a finding.

Used by ``python -m tests.fuzz`` (atheris, coverage guided) and by tests/test_fuzz.py (a seeded
random mutator, no atheris needed, CI-sized).
"""
import io
import json
import os
import random
import struct
import tempfile

CLEAN_ERRORS = (ValueError, OSError, NotImplementedError)
TARGETS = ("safetensors", "config", "checkpoint")
# file names a packed checkpoint may hold (an input picks them by index: no path comes from the input)
FILE_NAMES = ("config.json", "model.safetensors", "model.safetensors.index.json",
              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "hf_quant_config.json",
              "dsv3-manifest.json", "model-00001-of-00001.safetensors")


def fuzz_config(**overrides):
    """A very small valid config (dense + MoE layer, q LoRA, yarn), for fast fuzzing."""
    from dsv3.testing.checkpoints import tiny_config
    d = tiny_config(vocab_size=16, hidden_size=16, intermediate_size=16, moe_intermediate_size=16,
                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=16,
                    kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4,
                    n_group=2, topk_group=1, num_experts_per_tok=2, max_position_embeddings=64)
    d.update(overrides)
    return d


# ---------------------------------------------------------------- packing a directory into bytes
def pack_files(files):
    """{name in FILE_NAMES: bytes} -> one input: per file, u8 name index, u32 LE length, data."""
    out = io.BytesIO()
    for name, data in files.items():
        out.write(struct.pack("<BI", FILE_NAMES.index(name), len(data)))
        out.write(data)
    return out.getvalue()


def unpack_files(data):
    """Inverse of pack_files, lenient: a truncated record keeps what is there; a later record of
    the same name replaces the earlier one."""
    files, pos = {}, 0
    while pos + 5 <= len(data):
        idx, n = struct.unpack_from("<BI", data, pos)
        pos += 5
        files[FILE_NAMES[idx % len(FILE_NAMES)]] = data[pos:pos + n]
        pos += n
    return files


def _dir_files(path):
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path)) if n in FILE_NAMES}


# ---------------------------------------------------------------- seed corpus
def seeds(target):
    """Seed inputs (list of bytes) for a target, built from dsv3's own writers."""
    from dsv3.testing.checkpoints import write_checkpoint
    cfg = fuzz_config()
    if target == "config":
        fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "configs")
        out = [json.dumps(cfg).encode()]
        for name in sorted(os.listdir(fix)):
            for f in ("config.json", "hf_quant_config.json"):
                p = os.path.join(fix, name, f)
                if os.path.isfile(p) and f == "config.json":
                    out.append(open(p, "rb").read())
        new = dict(cfg)
        rs = dict(new.pop("rope_scaling"))
        rs["rope_type"] = rs.pop("type")
        new["rope_parameters"] = rs
        out.append(json.dumps(new).encode())
        out.append(json.dumps(dict(cfg, quantization_config={
            "quant_method": "modelopt", "quant_algo": "NVFP4",
            "config_groups": {"g": {"weights": {"group_size": 16}}}})).encode())
        return out
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        if target == "safetensors":
            import ml_dtypes
            import numpy as np
            from dsv3.safetensors_io import save_safetensors
            p = os.path.join(tmp, "a.safetensors")
            save_safetensors(p, {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                 "b": np.ones(3, ml_dtypes.bfloat16), "q": np.zeros((2, 2), np.uint8),
                                 "e": np.zeros((0, 4), ml_dtypes.float8_e4m3fn)})
            out.append(open(p, "rb").read())
            write_checkpoint(os.path.join(tmp, "fp8"), cfg, layout="fp8_block", shards=1)
            out.append(open(os.path.join(tmp, "fp8", "model.safetensors"), "rb").read())
            return out
        for layout, shards in (("hf", 1), ("hf", 2), ("hf_fused", 1), ("fp8_block", 1), ("nvfp4", 1)):
            d = os.path.join(tmp, f"{layout}{shards}")
            write_checkpoint(d, cfg, layout=layout, shards=shards)
            out.append(pack_files(_dir_files(d)))
        from dsv3.convert import convert
        for fmt in ("int4", "nvfp4", "fp8_block"):
            d = os.path.join(tmp, "conv-" + fmt)
            convert(os.path.join(tmp, "hf1"), d, format=fmt, quiet=True)
            out.append(pack_files(_dir_files(d)))
    return out


# ---------------------------------------------------------------- targets
def _touch(a):
    import numpy as np
    a = np.asarray(a)
    if a.size:
        a.reshape(-1)[:: max(1, a.size // 7)].tobytes()


def run_safetensors(data, tmp):
    from dsv3.safetensors_io import open_safetensors
    p = os.path.join(tmp, "x.safetensors")
    with open(p, "wb") as f:
        f.write(data)
    with open_safetensors(p) as r:
        for k in r.keys():
            a = r.get(k)
            assert a.shape == r.shape(k) and a.nbytes == r.nbytes(k), k
            _touch(a)


def run_config(data, tmp):
    from dsv3.config import load_config
    p = os.path.join(tmp, "config.json")
    with open(p, "wb") as f:
        f.write(data)
    c = load_config(p)
    c.to_native()
    assert load_config(c.to_dict()) == c, "to_dict round trip"


def run_checkpoint(data, tmp):
    from dsv3.checkpoint import CheckpointError
    d = os.path.join(tmp, "ckpt")
    if os.path.isdir(d):
        for n in os.listdir(d):
            os.remove(os.path.join(d, n))
    else:
        os.makedirs(d)
    for name, blob in unpack_files(data).items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(blob)
    if os.path.isfile(os.path.join(d, "dsv3-manifest.json")):  # `dsv3 verify`
        from dsv3.convert import verify
        try:
            problems = verify(d)
            assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
        except CLEAN_ERRORS:
            pass
    try:
        _load_and_run(d)
    except CheckpointError:  # `dsv3 info` then reports from the headers alone
        from dsv3.convert import info
        info(d)
        raise


def _load_and_run(d):
    import numpy as np
    import dsv3
    from dsv3 import quant
    from dsv3.checkpoint import open_checkpoint
    with open_checkpoint(d) as ck:
        tensors = {}
        for name, v in ck.canonical_tensors():
            tensors[name] = v
            if isinstance(v, quant.QuantizedTensor):
                _touch(quant.dequantize(v))
            else:
                _touch(v)
        cfg = ck.config
        # keep a fuzzed config from asking for a big KV cache or workspace
        if cfg.hidden_size * max(cfg.vocab_size, cfg.n_routed_experts * cfg.moe_intermediate_size) > 1 << 22:
            return
        m = dsv3.Model.from_tensors(cfg, tensors, max_seq_len=4)
        logits = m.forward(np.array([1 % cfg.vocab_size, 0], np.int64))
        assert logits.shape[-1] == cfg.vocab_size


RUNNERS = {"safetensors": run_safetensors, "config": run_config, "checkpoint": run_checkpoint}


def run_one(target, data, tmp):
    """Run one input; returns None, or the exception if it is not a clean one (a finding)."""
    try:
        RUNNERS[target](data, tmp)
    except CLEAN_ERRORS:
        return None
    except Exception as e:  # noqa: BLE001 - anything else is what fuzzing looks for
        return e
    return None


# ---------------------------------------------------------------- structure-aware mutator
_INTERESTING = [0, -1, 1, 2, 7, 8, 255, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**63,
                10**400, 0.5, 1.0, 5e-324, 1e-300, 1e300, float("nan"), float("inf"), -0.0, True, False, None,
                "", "F32", "BF16", "F8_E4M3", "U8", "I64", "yarn", "linear", "fp8", "modelopt", "NVFP4", "../x",
                "/etc/passwd", "\u0000", [], {}, [0], [0, 0], [[[[]]]], {"a": {}}, "x" * 300]


def _nodes(v, path=()):
    yield path, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _nodes(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _nodes(x, path + (i,))


def _set(root, path, value):
    if not path:
        return value
    cur = root
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return root


def mutate_json_value(v, rng):
    """One random structural change of a parsed JSON value (returns the new value)."""
    nodes = list(_nodes(v))
    path, node = rng.choice(nodes)
    op = rng.randrange(8)
    if op == 0 and path:  # delete
        parent = v
        for p in path[:-1]:
            parent = parent[p]
        del parent[path[-1]]
        return v
    if op == 1 and isinstance(node, (int, float)) and not isinstance(node, bool):
        return _set(v, path, rng.choice([node + 1, node - 1, -node, node * 2, node // 2 if isinstance(node, int)
                                         else node / 3, node * 8 + 3]))
    if op == 2:  # nest
        return _set(v, path, rng.choice([[node], {"x": node}]))
    if op == 3 and isinstance(node, dict) and nodes:  # add a key copied from elsewhere
        k, x = rng.choice(nodes)
        node[str(k[-1]) if k else "k"] = x
        return v
    if op == 4 and isinstance(node, list):
        node.append(rng.choice(node) if node else 0)
        return v
    if op == 5:  # deep nesting
        deep = node
        for _ in range(rng.choice([70, 1000, 5000])):
            deep = [deep]
        return _set(v, path, deep)
    return _set(v, path, rng.choice(_INTERESTING))


def _dumps(v, rng):
    try:
        return json.dumps(v, separators=rng.choice([(",", ":"), (", ", ": ")])).encode()
    except (RecursionError, ValueError):
        return b"[]"


def _mutate_json_bytes(data, rng):
    try:
        v = json.loads(data)
    except (ValueError, RecursionError):
        return _mutate_bytes(data, rng)
    return _dumps(mutate_json_value(v, rng), rng)


def _mutate_bytes(data, rng):
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        op = rng.randrange(5)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            i = rng.randrange(len(b))
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("{"), ord("["), ord('"'), ord("9")])
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 8])))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.choice([1, 4, 16, 1000])]
        elif b:
            i = rng.randrange(len(b))
            n = rng.choice([1, 7, 8, 9])
            b[i:i + 8] = struct.pack("<Q", (struct.unpack("<Q", bytes(b[i:i + 8]).ljust(8, b"\0"))[0] + n) % 2**64)
    return bytes(b)


def _mutate_safetensors(data, rng):
    if len(data) < 8 or rng.random() < 0.2:
        return _mutate_bytes(data, rng)
    (n,) = struct.unpack_from("<Q", data)
    if n > len(data) - 8:
        return _mutate_bytes(data, rng)
    head, body = data[8:8 + n], data[8 + n:]
    r = rng.random()
    if r < 0.7:
        head = _mutate_json_bytes(head, rng)
        if rng.random() < 0.7:
            head += b" " * (-len(head) % 8)
    elif r < 0.9:
        body = _mutate_bytes(body, rng)
    else:
        return struct.pack("<Q", rng.choice([n + 1, n - 1, n + 4, 0, 2**63]) % 2**64) + head + body
    return struct.pack("<Q", len(head)) + head + body


def mutate(target, data, rng):
    """One structure-aware mutation of an input of ``target``."""
    if target == "config":
        return _mutate_json_bytes(data, rng) if rng.random() < 0.9 else _mutate_bytes(data, rng)
    if target == "safetensors":
        return _mutate_safetensors(data, rng)
    files = unpack_files(data)
    if not files or rng.random() < 0.05:
        return _mutate_bytes(data, rng)
    name = rng.choice(sorted(files))
    if rng.random() < 0.05:
        del files[name]
    elif name.endswith(".json"):
        files[name] = _mutate_json_bytes(files[name], rng)
    else:
        files[name] = _mutate_safetensors(files[name], rng)
    return pack_files(files)


def random_fuzz(target, seconds, seed=0, max_runs=None, corpus=None, min_runs=0):
    """Seeded random mutation fuzzing (no coverage feedback, no atheris) for ``seconds`` or
    ``max_runs`` inputs, but at least ``min_runs`` inputs (so a loaded machine still runs a fixed
    minimum of work). Inputs that ran cleanly are kept as parents. Returns (runs, findings)
    where findings is a list of (input bytes, exception)."""
    import time
    rng = random.Random(seed)
    pool = list(corpus if corpus is not None else seeds(target))
    findings, runs = [], 0
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        while (runs < min_runs or time.monotonic() < deadline) and (max_runs is None or runs < max_runs):
            data = rng.choice(pool)
            for _ in range(rng.choice([1, 1, 2, 3])):
                data = mutate(target, data, rng)
            err = run_one(target, data, tmp)
            runs += 1
            if err is not None:
                findings.append((data, err))
                if len(findings) >= 5:
                    break
            elif len(pool) < 200 and rng.random() < 0.1:
                pool.append(data)
    return runs, findings
