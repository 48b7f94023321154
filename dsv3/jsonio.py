"""JSON from untrusted files, with a size cap and a nesting-depth cap.

Every reader of a checkpoint's JSON (safetensors headers, model.safetensors.index.json,
config.json, hf_quant_config.json, dsv3-manifest.json) goes through :func:`parse_json` /
:func:`read_json`, so that a hostile or damaged file fails with a ValueError naming the file
instead of a RecursionError (deep nesting), minutes of parsing (a huge file) or a TypeError later.
"""
import json
import os
import re

import numpy as np

MAX_DEPTH = 64                       # nesting of objects/arrays; real files use <= 4
MAX_CONFIG_BYTES = 16 << 20          # config.json / hf_quant_config.json (real ones: a few KiB)
MAX_INDEX_BYTES = 256 << 20          # index / manifest JSON (DeepSeek-V3's index: ~9 MB)

# a JSON string (escapes included); brackets inside strings do not nest
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class JSONInputError(ValueError):
    """Malformed, too large or too deeply nested JSON (the message names the file)."""


def nesting_depth(data):
    """Deepest nesting of objects/arrays in JSON text ``data`` (bytes), strings ignored. Linear
    time, no recursion; unbalanced input gives some depth and is left to the parser to reject."""
    bare = _STRING.sub(b'""', data) if b'"' in data else data
    steps = _OPEN[np.frombuffer(bare, np.uint8)]
    if not steps.any():
        return 0
    return int(np.cumsum(steps, dtype=np.int64).max())


def _no_duplicates(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise JSONInputError(f"duplicate key {dup!r}")
    return d


def parse_json(data, where, max_bytes, max_depth=MAX_DEPTH, unique_keys=False):
    """Parse JSON text (bytes or str) read from ``where`` (a name for messages). Raises
    JSONInputError (ValueError) when it is longer than ``max_bytes``, nested deeper than
    ``max_depth``, not UTF-8, not valid JSON, or (``unique_keys``) repeats a key in an object."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise JSONInputError(f"{where}: {len(data)} bytes of JSON exceeds the {max_bytes}-byte cap")
    # text with at most max_depth brackets cannot nest deeper (an index has 3): no scan needed
    depth = nesting_depth(data) if data.count(b"[") + data.count(b"{") > max_depth else 0
    if depth > max_depth:
        raise JSONInputError(f"{where}: JSON nested {depth} levels deep (at most {max_depth} allowed)")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates if unique_keys else None)
    except JSONInputError as e:
        raise JSONInputError(f"{where}: not valid JSON ({e})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError, int digit limit
        raise JSONInputError(f"{where}: not valid JSON ({e})") from None


def read_json(path, max_bytes, expect=dict, **kw):
    """Parse the JSON file ``path`` (see :func:`parse_json`); ``expect``: the required type of the
    top-level value (None: any). OSError when unreadable, JSONInputError when malformed."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise JSONInputError(f"{path}: {size} bytes exceeds the {max_bytes}-byte cap for this JSON file")
        data = f.read(max_bytes + 1)
    v = parse_json(data, path, max_bytes, **kw)
    if expect is not None and not isinstance(v, expect):
        raise JSONInputError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                             f"got {type(v).__name__}")
    return v
