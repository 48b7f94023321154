"""Streaming safetensors shard writer.

Tensors are appended to `<final>.partial` as they are produced (nothing is buffered beyond the
tensor being written); the JSON header goes into space reserved at the start of the file (padded
with spaces, which the safetensors format allows) once the shard is complete; then the file is
renamed to its final name. An interrupted run therefore leaves only `*.partial` files,
which no reader takes for a checkpoint shard.
"""
import hashlib
import json
import os
import shutil

import ml_dtypes
import numpy as np

PARTIAL_SUFFIX = ".partial"
_DTYPES = {
    np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
    np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16", np.dtype(np.uint16): "U16", np.dtype(np.int32): "I32",
    np.dtype(np.uint32): "U32", np.dtype(np.int64): "I64", np.dtype(np.uint64): "U64",
    np.dtype(np.bool_): "BOOL",
}
# bytes reserved in the header per array, on top of its name (dtype, shape, offsets as JSON)
_ENTRY_RESERVE = 128


def safetensors_dtype(dtype):
    try:
        return _DTYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors") from None


def array_bytes(arr):
    """Zero-copy byte view of an array (made contiguous if it is not)."""
    arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1).view(np.uint8))


def sha256_of(arr):
    """sha256 of the bytes an array (or list of row blocks) is stored as."""
    h = hashlib.sha256()
    for p in arr if isinstance(arr, (list, tuple)) else [arr]:
        h.update(array_bytes(p))
    return h.hexdigest()


class ShardWriter:
    """Writes one shard. `names_hint`: base names of the tensors the shard will hold (sizes the
    reserved header; 4 arrays per name are assumed, the most a quantised tensor has)."""

    def __init__(self, path, names_hint):
        self.path = path
        self.tmp = path + PARTIAL_SUFFIX
        self.reserve = sum(4 * (len(n) + 24 + _ENTRY_RESERVE) for n in names_hint) + 64
        self.reserve += -self.reserve % 8
        self.entries = {}
        self.offset = 0
        self.f = open(self.tmp, "wb")
        self.f.seek(8 + self.reserve)

    def add(self, name, arr, digest=None):
        """Append one array (or a list of arrays forming its row blocks, written one after the
        other = concatenated along axis 0 without a copy); returns its manifest record.
        `digest`: its sha256 (or a function returning it, called after writing) if the caller
        computes it; otherwise it is computed here."""
        if name in self.entries:
            raise ValueError(f"tensor {name} written twice to {os.path.basename(self.path)}")
        parts = [np.asarray(a) for a in arr] if isinstance(arr, (list, tuple)) else [np.asarray(arr)]
        first = parts[0]
        if any(p.dtype != first.dtype or p.shape[1:] != first.shape[1:] or p.ndim == 0 for p in parts[1:]):
            raise ValueError(f"tensor {name}: parts do not concatenate ({[(p.dtype, p.shape) for p in parts]})")
        shape = [sum(p.shape[0] for p in parts)] + list(first.shape[1:]) if len(parts) > 1 else list(first.shape)
        dtype = safetensors_dtype(first.dtype)
        h = hashlib.sha256() if digest is None else None
        start = self.offset
        for p in parts:
            data = array_bytes(p)
            self.f.write(data)
            if h is not None:
                h.update(data)
            self.offset += data.nbytes
        self.entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, self.offset]}
        if h is not None:
            digest = h.hexdigest()
        elif callable(digest):
            digest = digest()
        return {"dtype": dtype, "shape": shape, "nbytes": self.offset - start, "sha256": digest}

    def _header(self):
        header = {"__metadata__": {"format": "pt", "writer": "dsv3.convert"}}
        header.update(self.entries)
        return json.dumps(header, separators=(",", ":")).encode()

    def finish(self):
        """Write the header and rename to the final name; returns the file size."""
        header = self._header()
        if len(header) <= self.reserve:
            header += b" " * (self.reserve - len(header))
            self.f.seek(0)
            self.f.write(len(header).to_bytes(8, "little"))
            self.f.write(header)
        else:  # reservation too small (unexpected): rewrite with the data moved
            self._rewrite(header)
        self.f.close()  # no fsync: a shard damaged by a crash fails its checksums on resume / verify
        os.replace(self.tmp, self.path)
        return os.path.getsize(self.path)

    def _rewrite(self, header):
        header += b" " * (-len(header) % 8)
        moved = self.tmp + ".2"
        with open(moved, "wb") as out:
            out.write(len(header).to_bytes(8, "little"))
            out.write(header)
            self.f.flush()
            with open(self.tmp, "rb") as src:
                src.seek(8 + self.reserve)
                shutil.copyfileobj(src, out, 16 << 20)
        self.f.close()
        os.replace(moved, self.tmp)
        self.f = open(self.tmp, "r+b")

    def abort(self):
        try:
            self.f.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def hash_file_tensors(path, bad=None):
    """({name: sha256}, {name: {"dtype", "shape"}}) of every tensor in a safetensors file
    (streamed, bounded memory). The header is validated by safetensors_io.read_header (a malformed
    one raises ValueError naming the file and tensor); with ``bad`` (a list), malformed entries are
    appended to it as (name, message) and the other tensors are still hashed."""
    from ..safetensors_io import read_header
    out, header = {}, {}
    with open(path, "rb") as f:
        h = read_header(path, f, bad)
        for name, (dtype, shape, a, b) in h.tensors.items():
            f.seek(h.data_start + a)
            digest = hashlib.sha256()
            left = b - a
            while left:
                chunk = f.read(min(left, 16 << 20))
                if not chunk:
                    raise ValueError(f"{path}: truncated in tensor {name!r}")
                digest.update(chunk)
                left -= len(chunk)
            out[name] = digest.hexdigest()
            header[name] = {"dtype": dtype, "shape": list(shape)}
    return out, header
