"""Convert's use of the one safetensors writer (dsv3.safetensors_io.SafetensorsWriter, streaming: see there)
and the checksums the manifest records."""
import hashlib

from ..safetensors_io import PARTIAL_SUFFIX, SafetensorsWriter, array_bytes

__all__ = ["PARTIAL_SUFFIX", "ShardWriter", "array_bytes", "sha256_of", "hash_file_tensors"]
METADATA = {"format": "pt", "writer": "dsv3.convert"}


def ShardWriter(path, names_hint, align=8):
    """A SafetensorsWriter for one output shard of dsv3 convert (records sha256 digests); align: the most
    any of its tensors asks for (64 with --pack: the packed int4 layout, lib.PACKED_ALIGN)."""
    return SafetensorsWriter(path, names_hint, metadata=METADATA, align=align)


def sha256_of(arr):
    """sha256 of the bytes an array (or list of row blocks) is stored as."""
    h = hashlib.sha256()
    for p in arr if isinstance(arr, (list, tuple)) else [arr]:
        h.update(array_bytes(p))
    return h.hexdigest()


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
