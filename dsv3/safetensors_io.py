"""Safetensors reading (mmap, zero copy, validated) and writing (streaming, atomic, sharded): the one
reader (:func:`open_safetensors`), the one writer (:class:`SafetensorsWriter`) and the one dtype table.

Format: 8-byte little-endian header length L, L bytes of JSON header
``{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}``,
then the data area; offsets are relative to the data area.

Alignment fill: a writer asked to align a tensor's data (:meth:`SafetensorsWriter.add` ``align``: the packed
int4 layout wants 64 bytes) puts zero bytes before it as a uint8 entry named ``PAD_PREFIX`` + its offset, so
the spans stay contiguous as the format requires (the safetensors library reads the file); every reader here
(:func:`read_header`) leaves those entries out: they are not tensors of the checkpoint.
Arrays returned by :meth:`SafetensorsReader.get` are read-only numpy views of the memory-mapped
file. They stay valid while the reader is open; an array keeps its file's mapping alive through its
``.base``, so closing the reader while arrays are still referenced is safe (the mapping is released
when the last array goes away) but the reader itself can no longer hand out tensors.
"""
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct

import ml_dtypes
import numpy as np

from .jsonio import MAX_INDEX_BYTES, parse_json, read_json

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_ARRAY_BYTES = 2**63 - 1  # numpy's limit on an array's size (empty arrays included)
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAME_OF = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file or index."""


def dtype_name(dtype):
    """Safetensors dtype string for a numpy dtype (e.g. ml_dtypes.bfloat16 -> 'BF16')."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        raise SafetensorsError(f"big-endian dtype {dt} cannot be stored in safetensors")
    try:
        return _NAME_OF[dt]
    except KeyError:
        raise SafetensorsError(f"dtype {dt} has no safetensors equivalent") from None


class SafetensorsHeader:
    """A validated safetensors header: ``path``, ``metadata`` (str -> str), ``tensors`` (name ->
    (dtype name, shape tuple, begin, end), offsets relative to the data area), ``data_start``
    (absolute offset of the data area) and ``data_len``."""

    def __init__(self, path, metadata, tensors, data_start, data_len):
        self.path, self.metadata, self.tensors = path, metadata, tensors
        self.data_start, self.data_len = data_start, data_len


def _err(path, msg, name=None):
    where = f"{path}" + (f": tensor {name!r}" if name is not None else "")
    return SafetensorsError(f"{where}: {msg}")


def read_header(path, f=None, bad=None):
    """Read and validate the header of safetensors file ``path`` (``f``: the file, already open
    for binary reading). Returns a :class:`SafetensorsHeader`.

    Raises SafetensorsError (ValueError) naming the file (and tensor) for any malformed header.
    With ``bad`` (a list), a malformed *entry* is not fatal: ``(name, message)`` is appended to
    it and the entry left out (for ``dsv3 verify``, which reports every problem of a file)."""
    if f is None:
        with open(path, "rb") as fh:
            return read_header(path, fh, bad)
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise _err(path, f"file too short for a safetensors header ({size} bytes)")
    f.seek(0)
    (hlen,) = struct.unpack("<Q", f.read(8))
    if hlen > MAX_HEADER_BYTES:
        raise _err(path, f"header length {hlen} exceeds the {MAX_HEADER_BYTES}-byte cap")
    if 8 + hlen > size:
        raise _err(path, f"header length {hlen} runs past the end of the file ({size} bytes)")
    data_start, data_len = 8 + hlen, size - 8 - hlen
    try:
        hdr = parse_json(f.read(hlen), f"{path}: header", MAX_HEADER_BYTES, unique_keys=True)
    except ValueError as e:
        raise SafetensorsError(str(e)) from None
    if not isinstance(hdr, dict):
        raise _err(path, f"header must be a JSON object, got {type(hdr).__name__}")
    meta = hdr.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _err(path, "__metadata__ must map strings to strings")
    tensors = {}
    for name, info in hdr.items():
        if name.startswith(PAD_PREFIX):  # alignment fill, not a tensor
            continue
        try:
            tensors[name] = _entry(path, name, info, data_len)
        except SafetensorsError as e:
            if bad is None:
                raise
            bad.append((name, str(e)))
    spans = sorted((t[2], t[3], n) for n, t in tensors.items() if t[3] > t[2])
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            e = _err(path, f"data [{b1}, {e1}) overlaps tensor {n0!r} [{b0}, {e0})", n1)
            if bad is None:
                raise e
            bad.append((n1, str(e)))
            tensors.pop(n1, None)
    return SafetensorsHeader(path, meta, tensors, data_start, data_len)


def _entry(path, name, info, data_len):
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise _err(path, "entry needs dtype, shape and data_offsets", name)
    dt = info["dtype"]
    if not isinstance(dt, str) or dt not in DTYPES:
        raise _err(path, f"unknown dtype {dt!r}", name)
    shape = info["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _err(path, f"shape must be a list of non-negative integers, got {shape!r}", name)
    offs = info["data_offsets"]
    if (not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs)
            or not 0 <= offs[0] <= offs[1]):
        raise _err(path, f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}", name)
    if offs[1] > data_len:
        raise _err(path, f"data_offsets {offs} run past the data area ({data_len} bytes; file truncated?)", name)
    n, bound = 1, DTYPES[dt].itemsize
    for d in shape:  # Python ints: no overflow
        n *= d
        bound *= max(d, 1)  # numpy refuses shapes whose non-zero dims overflow, even when empty
    if bound > MAX_ARRAY_BYTES:
        raise _err(path, f"shape {shape} x {dt} is too large for an array (dimensions multiply to more than "
                         f"{MAX_ARRAY_BYTES} bytes)", name)
    nbytes = n * DTYPES[dt].itemsize
    if nbytes != offs[1] - offs[0]:
        raise _err(path, f"shape {shape} x {dt} = {nbytes} bytes but data_offsets span {offs[1] - offs[0]}", name)
    return dt, tuple(shape), offs[0], offs[1]


class _File:
    """One mapped .safetensors file with its validated header.

    Tensors are zero-copy views of the mapping when their offset in the file is a multiple of
    their element size. A file whose header length is not a multiple of 8 (the format recommends
    it, the safetensors library does not require it) can leave tensors unaligned: those are
    copied into aligned memory, and a warning says so once per file."""

    def __init__(self, path):
        self.path = path
        self.mm = None
        self._warned = False
        with open(path, "rb") as f:
            h = read_header(path, f)
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # size >= 8: never empty
        self.metadata, self.tensors = h.metadata, h.tensors
        self.data_start, self.data_len = h.data_start, h.data_len
        self._closed = False

    def array(self, name):
        dt, shape, b, e = self.tensors[name]
        if self._closed:
            raise SafetensorsError(f"{self.path}: reader is closed")
        dtype = DTYPES[dt]
        if e == b:
            a = np.empty(shape, dtype)
            a.flags.writeable = False
            return a
        off = self.data_start + b
        if off % dtype.itemsize == 0:
            return np.frombuffer(self.mm, dtype=dtype, count=(e - b) // dtype.itemsize, offset=off).reshape(shape)
        if not self._warned:
            self._warned = True
            log.warning("%s: header length %d is not a multiple of 8, so tensors are not aligned to their "
                        "element size: unaligned tensors are copied into memory instead of mapped (re-save "
                        "the file to read it zero-copy)", self.path, self.data_start - 8)
        a = np.frombuffer(self.mm, dtype=np.uint8, count=e - b, offset=off).copy().view(dtype).reshape(shape)
        a.flags.writeable = False
        return a

    def close(self):
        self._closed = True
        mm, self.mm = self.mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # arrays still reference the mapping: it is released with the last of them


class SafetensorsReader:
    """Tensors of one file, or of a sharded checkpoint (index + shards), by name. See module doc."""

    def __init__(self, files, where, source):
        self._files = files            # path -> _File
        self._where = where            # tensor name -> _File
        self.source = source

    # ---- queries ----
    def keys(self):
        """Tensor names, in sorted order."""
        return sorted(self._where)

    def __contains__(self, name):
        return name in self._where

    def __len__(self):
        return len(self._where)

    def _info(self, name):
        try:
            f = self._where[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in {self.source}") from None
        return f, f.tensors[name]

    def dtype(self, name):
        """Safetensors dtype string, e.g. 'BF16', 'F8_E4M3'."""
        return self._info(name)[1][0]

    def shape(self, name):
        """Shape tuple of tensor ``name``."""
        return self._info(name)[1][1]

    def nbytes(self, name):
        """Bytes of tensor ``name``'s data."""
        _, (_, _, b, e) = self._info(name)
        return e - b

    def file_of(self, name):
        """Path of the file holding ``name``."""
        return self._info(name)[0].path

    def get(self, name):
        """Zero-copy read-only numpy array (ml_dtypes types for BF16/F8), valid while the reader is open."""
        return self._info(name)[0].array(name)

    @property
    def metadata(self):
        """``__metadata__`` of the file (merged over shards)."""
        out = {}
        for f in self._files.values():
            out.update(f.metadata)
        return out

    @property
    def files(self):
        """Paths of the open files (one, or every shard)."""
        return list(self._files)

    # ---- lifetime ----
    def close(self):
        """Release the file mappings (arrays already handed out keep theirs alive)."""
        for f in self._files.values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_files(paths, source):
    files, where = {}, {}
    try:
        for p in paths:
            f = files[p] = _File(p)
            for name in f.tensors:
                if name in where:
                    raise SafetensorsError(f"{p}: tensor {name!r} also present in {where[name].path}")
                where[name] = f
    except BaseException:
        for f in files.values():
            f.close()
        raise
    return files, where


def shard_path(directory, name, where):
    """Path of shard file ``name`` listed by ``where`` (an index or manifest) in ``directory``.
    Raises SafetensorsError unless ``name`` is a plain file name (no directory part, not absolute,
    not '.' or '..', no NUL): a listing must not reach files outside its checkpoint directory."""
    if (not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", "..")
            or "\0" in name or "/" in name):
        raise SafetensorsError(f"{where}: shard name {name!r} must be a plain file name")
    return os.path.join(directory, name)


def _open_index(index_path):
    d = os.path.dirname(index_path)
    try:
        idx = read_json(index_path, MAX_INDEX_BYTES, expect=None)
    except ValueError as e:
        raise SafetensorsError(str(e)) from None
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise SafetensorsError(f"{index_path}: needs a 'weight_map' object mapping tensor names to file names")
    shards = sorted(set(wm.values()))
    for s in shards:
        if not os.path.isfile(shard_path(d, s, index_path)):
            bad = next(k for k, v in wm.items() if v == s)
            raise SafetensorsError(f"{index_path}: shard {s!r} (holding tensor {bad!r}) does not exist")
    files, where = _open_files([os.path.join(d, s) for s in shards], index_path)
    try:
        for name, s in wm.items():
            p = os.path.join(d, s)
            if name not in files[p].tensors:
                raise SafetensorsError(f"{index_path}: tensor {name!r} is mapped to {s} but that file lacks it")
        for name, f in where.items():
            if name not in wm:
                raise SafetensorsError(f"{f.path}: tensor {name!r} is not listed in {index_path}")
    except BaseException:
        for f in files.values():
            f.close()
        raise
    return files, where


def open_safetensors(path):
    """Open a .safetensors file, a ``model.safetensors.index.json``, or a directory holding either
    (index first, then model.safetensors, then every *.safetensors). Returns a
    :class:`SafetensorsReader`; use it as a context manager. Raises SafetensorsError (ValueError)
    naming the file and tensor for malformed input, FileNotFoundError when nothing is there."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, INDEX_NAME)):
            path = os.path.join(path, INDEX_NAME)
        elif os.path.isfile(os.path.join(path, SINGLE_NAME)):
            path = os.path.join(path, SINGLE_NAME)
        else:
            shards = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
            if not shards:
                raise FileNotFoundError(f"no safetensors files in {path}")
            files, where = _open_files([os.path.join(path, n) for n in shards], path)
            return SafetensorsReader(files, where, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file not found: {path}")
    if path.endswith(".json"):
        files, where = _open_index(path)
    else:
        files, where = _open_files([path], path)
    return SafetensorsReader(files, where, path)


# ---------------------------------------------------------------- writing
PARTIAL_SUFFIX = ".partial"
PAD_PREFIX = "__dsv3_align__."  # alignment fill entries (see the module doc)
# bytes reserved in the header per array, on top of its name (dtype, shape, offsets as JSON)
_ENTRY_RESERVE = 128


def array_bytes(arr):
    """Zero-copy byte view of an array (made contiguous if it is not)."""
    arr = np.ascontiguousarray(arr)
    return memoryview(arr.reshape(-1).view(np.uint8))


class SafetensorsWriter:
    """The one safetensors writer, streaming: tensors are appended to ``<path>.partial`` as they come
    (nothing is buffered beyond the tensor being written); the JSON header goes into space reserved at
    the start of the file (padded with spaces, which the format allows; the data area starts at a multiple
    of 8) once the file is complete; then the file is renamed to ``path``. An interrupted write leaves
    only a ``*.partial`` file, which no reader takes for a checkpoint shard. ``names_hint``: base names of
    the tensors it will hold (sizes the reserved header; 4 arrays per name are assumed, the most a
    quantised tensor has). ``metadata``: the header's ``__metadata__`` (str -> str; empty: none).
    ``hashes``: compute each array's sha256 while writing (returned by :meth:`add`). ``align``: the data
    area starts at a multiple of it (default 8), the most :meth:`add` may ask for."""

    def __init__(self, path, names_hint, metadata=None, hashes=True, align=8):
        self.path = path
        self.metadata = {"format": "pt"} if metadata is None else dict(metadata)
        self.hashes = hashes
        self.align = align
        self.tmp = path + PARTIAL_SUFFIX
        self.reserve = sum(4 * (len(n) + 24 + _ENTRY_RESERVE) for n in names_hint) + 64
        self.reserve += -(8 + self.reserve) % align
        self.entries = {}
        self.offset = 0
        self.f = open(self.tmp, "wb")
        self.f.seek(8 + self.reserve)

    def add(self, name, arr, digest=None, align=None):
        """Append one array (or a list of arrays forming its row blocks, written one after the
        other = concatenated along axis 0 without a copy); returns its manifest record.
        `digest`: its sha256 (or a function returning it, called after writing) if the caller
        computes it; otherwise it is computed here. `align`: its data starts at a multiple of this many
        bytes in the file (a divisor of the writer's ``align``; alignment fill before it, see the module doc)."""
        if name in self.entries:
            raise ValueError(f"tensor {name} written twice to {os.path.basename(self.path)}")
        if align and self.offset % align:
            if self.align % align:
                raise ValueError(f"tensor {name}: alignment {align} does not divide the writer's {self.align}")
            fill = -self.offset % align
            self.f.write(bytes(fill))
            self.entries[f"{PAD_PREFIX}{self.offset}"] = {"dtype": "U8", "shape": [fill],
                                                        "data_offsets": [self.offset, self.offset + fill]}
            self.offset += fill
        parts = [np.asarray(a) for a in arr] if isinstance(arr, (list, tuple)) else [np.asarray(arr)]
        first = parts[0]
        if any(p.dtype != first.dtype or p.shape[1:] != first.shape[1:] or p.ndim == 0 for p in parts[1:]):
            raise ValueError(f"tensor {name}: parts do not concatenate ({[(p.dtype, p.shape) for p in parts]})")
        shape = [sum(p.shape[0] for p in parts)] + list(first.shape[1:]) if len(parts) > 1 else list(first.shape)
        dtype = dtype_name(first.dtype)
        h = hashlib.sha256() if digest is None and self.hashes else None
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
        header = {"__metadata__": self.metadata} if self.metadata else {}
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
        header += b" " * (-(8 + len(header)) % self.align)
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


def _prepare(tensors):
    out = []
    for name, a in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise SafetensorsError(f"invalid tensor name {name!r}")
        a = np.asarray(a)
        out.append((name, dtype_name(a.dtype), a))
    # largest item size first keeps every tensor aligned to its element size (spans are contiguous)
    out.sort(key=lambda t: (-t[2].dtype.itemsize, t[0]))
    return out


def save_safetensors(path, tensors, metadata=None):
    """Write ``tensors`` (dict name -> numpy array, ml_dtypes for BF16/F8) to ``path`` with
    :class:`SafetensorsWriter` (the safetensors package cannot take every ml_dtypes type): largest
    element size first, so every tensor is aligned to its element size; the file appears atomically.
    ``metadata`` (str -> str) defaults to {"format": "pt"} so transformers accepts the file."""
    path = os.fspath(path)
    meta = {"format": "pt"} if metadata is None else dict(metadata)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SafetensorsError("metadata must map strings to strings")
    items = _prepare(tensors)
    w = SafetensorsWriter(path, [name for name, _, _ in items], metadata=meta, hashes=False)
    try:
        for name, _, a in items:
            w.add(name, a)
        w.finish()
    except BaseException:
        w.abort()
        raise
    return path


def shard_name(k, n):
    """'model-00001-of-00163.safetensors' (1-based k)."""
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def save_sharded(directory, tensors_iter, max_shard_bytes, metadata=None):
    """Write (name, array) pairs from ``tensors_iter`` into shards of at most ``max_shard_bytes``
    (a tensor larger than that gets a shard of its own) named like the hub's
    model-00001-of-0000N.safetensors, plus model.safetensors.index.json
    ({"metadata": {"total_size": N}, "weight_map": {...}}). Returns the index path."""
    directory = os.fspath(directory)
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
    os.makedirs(directory, exist_ok=True)
    groups, cur, cur_bytes, seen = [], {}, 0, set()
    for name, a in tensors_iter:
        if name in seen:
            raise SafetensorsError(f"tensor {name!r} given twice")
        seen.add(name)
        a = np.asarray(a)
        if cur and cur_bytes + a.nbytes > max_shard_bytes:
            groups.append(cur)
            cur, cur_bytes = {}, 0
        cur[name] = a
        cur_bytes += a.nbytes
    if cur or not groups:
        groups.append(cur)
    n = len(groups)
    weight_map, total = {}, 0
    for k, g in enumerate(groups, 1):
        fname = shard_name(k, n)
        save_safetensors(os.path.join(directory, fname), g, metadata)
        for name, a in g.items():
            weight_map[name] = fname
            total += a.nbytes
    return write_index(directory, weight_map, total)


def write_index(directory, weight_map, total_size):
    """Write ``model.safetensors.index.json`` ({"metadata": {"total_size": N}, "weight_map": {name: file}},
    names sorted) into ``directory`` atomically; returns its path."""
    index = {"metadata": {"total_size": int(total_size)}, "weight_map": dict(sorted(weight_map.items()))}
    ipath = os.path.join(directory, INDEX_NAME)
    tmp = f"{ipath}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    os.replace(tmp, ipath)
    return ipath
