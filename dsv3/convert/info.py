"""`dsv3 info`: architecture, formats, tensor count, bytes per format, missing/unexpected tensors."""
import os

from .. import fused_experts
from .tensors import value_format


def expected_names(cfg):
    """Canonical names a model with config `cfg` needs (dsv3.checkpoint.canonical_shapes' names)."""
    from ..checkpoint import canonical_shapes
    return [n for n, _, _ in canonical_shapes(cfg)]


def info(path):
    """Summary of any checkpoint dsv3 reads (source or converted), as a dict: layout,
    architecture, tensor count, {format: [count, bytes]} ("int4 (packed)": tensors stored in the packed kernel
    layout by ``dsv3 convert --pack``, read in place by a fast-precision load), missing and unexpected canonical names
    (canonical names the config does not call for, and source tensors the reader did not use), and
    what the reader skipped (MTP layers; V3.2 indexer tensors under a non-V3.2 config); plus Checkpoint.summary()."""
    from ..checkpoint import CheckpointError, open_checkpoint
    from ..paths import resolve_checkpoint_dir
    path = resolve_checkpoint_dir(path)  # a directory, or a hub id in the local cache; clear errors
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as e:  # missing / mis-shaped tensors: report from the headers instead
        return _info_from_headers(path, str(e))
    cfg = ckpt.config
    formats, seen = {}, set()
    for name, v in ckpt.canonical_tensors():  # "int4 (packed)": stored in the packed kernel layout (--pack)
        f = formats.setdefault(value_format(v) + (" (packed)" if getattr(v, "is_packed", False) else ""), [0, 0])
        f[0] += 1
        f[1] += int(v.nbytes)
        seen.add(name)
    want = set(expected_names(cfg))
    summary = ckpt.summary() if callable(getattr(ckpt, "summary", None)) else {}
    return {"path": os.path.abspath(path), "layout": ckpt.layout, "architecture": _arch(cfg),
            "tensors": len(seen), "formats": formats,
            "missing": sorted((want - seen) | set(summary.get("missing", []))),
            "unexpected": sorted((seen - want) | set(summary.get("unexpected", []))),
            "skipped": summary.get("skipped", {}), "summary": summary}


def _arch(cfg):
    return {k: getattr(cfg, k, None) for k in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
        "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace", "vocab_size")}


def _info_from_headers(path, error):
    """info() for a checkpoint the reader refuses: names and dtypes from the safetensors headers."""
    from ..checkpoint import CheckpointError, check_config_fits, detect_layout
    from ..config import load_config
    from ..safetensors_io import open_safetensors
    cfg = load_config(path)
    with open_safetensors(path) as r:
        keys = list(r.keys())
        formats = {}
        for k in keys:
            f = formats.setdefault(r.dtype(k), [0, 0])
            f[0] += 1
            f[1] += r.nbytes(k)
        try:
            check_config_fits(cfg, r, path)
            fits = True
        except CheckpointError:  # the config does not describe these tensors: no list of missing names
            fits = False
    layout = detect_layout(path, keys)
    have = set(keys)
    missing = [] if not fits else [n for n in expected_names(cfg) if n not in have and not (
        layout == "hf_fused" and fused_experts.source_of(n) and fused_experts.source_of(n)[0] in have)]
    return {"path": os.path.abspath(path), "layout": layout, "architecture": _arch(cfg), "tensors": len(keys),
            "formats": formats, "missing": missing, "unexpected": [], "skipped": {}, "error": error}
