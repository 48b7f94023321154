"""Reader of the dsv3 (converted) layout: canonical (name, value) pairs, zero copy."""
import json
import logging
import os
import re

from .plan import layer_of
from .tensors import make_value, split_rows

log = logging.getLogger("dsv3.convert")
_SUFFIXES = ("weight_scale_inv", "weight_scale_2", "weight_scale", "input_scale", "weight")
_GATE_UP = re.compile(r"^(.*\.experts\.\d+\.)gate_up_proj\.weight$")


def dsv3_section(path):
    """The "dsv3" section of a directory's config.json, or None if it is not a dsv3 checkpoint."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return None
    with open(cfg) as f:
        sec = json.load(f).get("dsv3")
    return sec if isinstance(sec, dict) and sec.get("layout") == "dsv3" else None


def _group_arrays(keys):
    """{base name (…weight): {suffix: on-disk key}}; keys without a known suffix map to themselves."""
    groups = {}
    for key in keys:
        for suf in _SUFFIXES:
            if key.endswith("." + suf):
                groups.setdefault(key[:-len(suf)] + "weight", {})[suf] = key
                break
        else:
            groups.setdefault(key, {})[None] = key
    return groups


def read_dsv3_checkpoint(path, reader=None):
    """Yield (canonical name, value) for a dsv3 checkpoint directory: numpy arrays (zero-copy
    views of the mmapped shards) or dsv3.quant.QuantizedTensor built with from_checkpoint (zero
    copy). Fused gate_up tensors are yielded as their gate_proj and up_proj row views. Layers >=
    num_hidden_layers (a kept MTP layer) are skipped with a log line."""
    sec = dsv3_section(path)
    if sec is None:
        raise ValueError(f"{path} is not a dsv3 checkpoint (config.json has no dsv3 layout section)")
    with open(os.path.join(path, "config.json")) as f:
        n_layers = json.load(f)["num_hidden_layers"]
    q = sec.get("quantization", {})
    fmts, formats, tparams = q.get("tensors", {}), q.get("formats", {}), q.get("tensor_params", {})
    if reader is None:
        from ..safetensors_io import open_safetensors
        reader = open_safetensors(path)
    skipped = set()
    for base, parts in _group_arrays(list(reader.keys())).items():
        layer = layer_of(base)
        if layer is not None and layer >= n_layers:
            skipped.add(layer)
            continue
        if ".self_attn.indexer." in base:  # V3.2 indexer: copied verbatim, not a canonical tensor
            continue
        if None in parts:
            yield base, reader.get(parts[None])
            continue
        fmt = fmts.get(base)
        params = tparams.get(base, formats.get(fmt, {})) if fmt else {}
        arrays = {suf: reader.get(key) for suf, key in parts.items()}
        m = _GATE_UP.match(base)
        if m:
            rows = arrays["weight"].shape[0] // 2
            gate, up = split_rows(arrays, fmt, rows)
            yield m.group(1) + "gate_proj.weight", make_value(gate, fmt, params)
            yield m.group(1) + "up_proj.weight", make_value(up, fmt, params)
        else:
            yield base, make_value(arrays, fmt, params)
    for layer in sorted(skipped):
        log.info("skipping MTP layer %d of %s (kept verbatim by --keep-mtp)", layer, path)


class Dsv3Checkpoint:
    """A converted checkpoint opened by dsv3.checkpoint.open_checkpoint: ``.path``, ``.config``,
    ``.layout`` ("dsv3"), ``.reader``, ``canonical_tensors()``, ``summary()``, ``close()``."""

    layout = "dsv3"

    def __init__(self, path, config, reader):
        self.path, self.config, self.reader = path, config, reader

    def canonical_tensors(self):
        """Yield (canonical_name, value); values are zero-copy, valid while the checkpoint is open."""
        return read_dsv3_checkpoint(self.path, self.reader)

    def summary(self):
        """Counts and bytes per stored dtype and per format (for ``dsv3 info``)."""
        r, by_dtype, by_format = self.reader, {}, {}
        for n in r.keys():
            d = by_dtype.setdefault(r.dtype(n), {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += int(r.get(n).nbytes)
        sec = dsv3_section(self.path)
        for base, fmt in sec.get("quantization", {}).get("tensors", {}).items():
            by_format[fmt] = by_format.get(fmt, 0) + 1
        skipped = {}
        for n in r.keys():
            layer = layer_of(n)
            why = "mtp" if layer is not None and layer >= self.config.num_hidden_layers else \
                "indexer" if ".self_attn.indexer." in n else None
            if why:
                skipped[why] = skipped.get(why, 0) + 1
        return {"path": self.path, "layout": "dsv3", "model_type": getattr(self.config, "model_type", None),
                "num_tensors": len(list(r.keys())), "total_bytes": sum(v["bytes"] for v in by_dtype.values()),
                "by_dtype": by_dtype, "quantised_by_format": by_format, "skipped": skipped,
                "options": {k: v for k, v in sec.get("quantization", {}).items()
                            if k in ("default", "experts", "attention", "lm_head")}}

    def close(self):
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_dsv3(path, config):
    """Open a dsv3 checkpoint directory whose config is already loaded (the open_checkpoint hook)."""
    if dsv3_section(path) is None:
        raise ValueError(f"{path}: has a dsv3 manifest but config.json has no dsv3 section "
                         f"(an interrupted conversion? re-run dsv3 convert to finish it)")
    from ..safetensors_io import open_safetensors
    return Dsv3Checkpoint(path, config, open_safetensors(path))
