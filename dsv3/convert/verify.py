"""`dsv3 verify`: every tensor of a converted checkpoint against its manifest."""
import os

from . import manifest as mf
from .writer import hash_file_tensors


def verify(path):
    """Check every shard's tensors (presence, dtype, shape, sha256) against dsv3-manifest.json.

    Returns a list of problems, one string per bad tensor or file (empty: all good); a damaged
    header entry is reported with its shard and tensor, and the shard's other tensors are still
    checked. Raises OSError / ValueError if `path` has no readable manifest, or a malformed one
    (e.g. a shard name that is not a plain file name)."""
    from ..paths import resolve_checkpoint_dir
    path = resolve_checkpoint_dir(path)  # a directory, or a hub id in the local cache; clear errors
    m = mf.load(path)
    if m is None:
        raise FileNotFoundError(f"{path} has no {mf.MANIFEST}: not a dsv3-converted checkpoint")
    problems = []
    if not m.get("complete"):
        problems.append(f"{mf.MANIFEST}: conversion is not complete (re-run dsv3 convert to resume it)")
    by_shard = {}
    for name, rec in m["tensors"].items():
        by_shard.setdefault(rec["shard"], {})[name] = rec
    for fname in m["shards"]:
        want = by_shard.get(fname, {})
        fpath = os.path.join(path, fname)  # a plain file name: checked by manifest.load
        if not os.path.isfile(fpath):
            problems.append(f"{fname}: missing file ({len(want)} tensors)")
            continue
        bad = []
        try:
            hashes, header = hash_file_tensors(fpath, bad)
        except (OSError, ValueError) as e:
            problems.append(f"{fname}: unreadable ({e})")
            continue
        bad_names = set()
        for name, msg in bad:
            problems.append(f"{name}: bad header entry in {fname} ({msg})")
            bad_names.add(name)
        for name, rec in sorted(want.items()):
            if name in bad_names:
                continue
            if name not in header:
                problems.append(f"{name}: missing from {fname}")
            elif header[name]["shape"] != rec["shape"] or header[name]["dtype"] != rec["dtype"]:
                problems.append(f"{name}: {header[name]['dtype']}{header[name]['shape']} in {fname}, "
                                f"manifest says {rec['dtype']}{rec['shape']}")
            elif hashes[name] != rec["sha256"]:
                problems.append(f"{name}: sha256 mismatch in {fname}")
        for name in sorted(set(header) - set(want)):
            problems.append(f"{name}: in {fname} but not in the manifest")
    for fname in sorted(set(by_shard) - set(m["shards"])):
        problems.append(f"{fname}: holds {len(by_shard[fname])} tensors of the manifest but is not one of its shards")
    return problems
