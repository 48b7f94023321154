"""dsv3-manifest.json: what a converted checkpoint was made from, how, and a checksum per tensor.

{
  "manifest_version": 1, "dsv3_version": "...", "complete": bool,
  "source": {"path", "layout", "index", "index_sha256", "files": [{"name", "size", "mtime_ns"}]},
  "options": {...},                                   # plan.Options
  "shards": {file: {"items": [base names], "complete": bool, "size": int}},
  "items": {base name: {"shard", "format", "params", "sources", "raw"}},  # one per converted tensor
  "tensors": {name: {"shard", "dtype", "shape", "nbytes", "format", "sha256"}}  # one per stored array
}
It is rewritten atomically (temp name + rename) each time a shard completes; "complete" turns
true only after the index and config.json are in place.
"""
import hashlib
import json
import os

MANIFEST = "dsv3-manifest.json"
MANIFEST_VERSION = 1
INDEX = "model.safetensors.index.json"


def source_identity(src, layout):
    """Identity of a source checkpoint directory: its index (name + sha256) and the name, size
    and mtime of every safetensors file."""
    src = os.path.abspath(src)
    names = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))
    index = INDEX if os.path.isfile(os.path.join(src, INDEX)) else None
    digest = None
    if index:
        with open(os.path.join(src, index), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    files = []
    for n in names:
        st = os.stat(os.path.join(src, n))
        files.append({"name": n, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"path": src, "layout": layout, "index": index, "index_sha256": digest, "files": files}


def write_json_atomic(path, obj):
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(dst):
    """The manifest of `dst`, or None if there is none. Raises ValueError naming the field when it
    is malformed: wrong version, a shard name that is not a plain file name (the check the index
    reader applies), or a tensor record without its shard, dtype, shape and sha256."""
    from ..jsonio import MAX_INDEX_BYTES, read_json
    from ..safetensors_io import shard_path
    path = os.path.join(dst, MANIFEST)
    if not os.path.isfile(path):
        return None
    m = read_json(path, MAX_INDEX_BYTES)
    if m.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: unsupported manifest version {m.get('manifest_version')!r}")
    shards, tensors = m.get("shards"), m.get("tensors")
    if not isinstance(shards, dict) or not all(isinstance(v, dict) for v in shards.values()):
        raise ValueError(f"{path}: 'shards' must be an object of objects")
    if not isinstance(tensors, dict):
        raise ValueError(f"{path}: 'tensors' must be an object")
    for name in shards:
        shard_path(dst, name, path)
    for name, rec in tensors.items():
        if not (isinstance(rec, dict) and isinstance(rec.get("shard"), str) and isinstance(rec.get("dtype"), str)
                and isinstance(rec.get("sha256"), str) and isinstance(rec.get("shape"), list)):
            raise ValueError(f"{path}: record of tensor {name!r} needs shard, dtype, sha256 (strings) and shape "
                             f"(a list), got {rec!r}"[:500])
        shard_path(dst, rec["shard"], f"{path}: tensor {name!r}")
    return m


def save(dst, manifest):
    write_json_atomic(os.path.join(dst, MANIFEST), manifest)


def new(source, options, shards, version):
    return {"manifest_version": MANIFEST_VERSION, "dsv3_version": version, "complete": False,
            "source": source, "options": options,
            "shards": {f: {"items": items, "complete": False, "size": None} for f, items in shards.items()},
            "tensors": {}}
