"""Reader of the dsv3 (converted) layout: canonical (name, value) pairs, zero copy.

A damaged checkpoint (config.json's "dsv3" section or the stored arrays) raises ValueError naming
the field or tensor."""
import logging
import os
import re

from ..checkpoint import CheckpointReader, layer_of, skip_reason
from .tensors import make_value, split_rows

log = logging.getLogger("dsv3.convert")
_SUFFIXES = ("weight_scale_inv", "weight_scale_2", "weight_scale", "input_scale", "weight_packed", "weight")
_GATE_UP = re.compile(r"^(.*\.experts\.\d+\.)gate_up_proj\.weight$")


def dsv3_section(path):
    """The "dsv3" section of a directory's config.json, or None if it is not a dsv3 checkpoint."""
    from ..jsonio import MAX_CONFIG_BYTES, read_json
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return None
    sec = read_json(cfg, MAX_CONFIG_BYTES).get("dsv3")
    return sec if isinstance(sec, dict) and sec.get("layout") == "dsv3" else None


def _quant_section(sec, path):
    """(tensors {base: fmt}, formats {fmt: params}, tensor_params {base: params}) of a dsv3
    section, checked: ValueError naming the field of config.json that is malformed."""
    where = f"{os.path.join(path, 'config.json')}: dsv3.quantization"
    q = sec.get("quantization", {})
    if not isinstance(q, dict):
        raise ValueError(f"{where} must be an object, got {type(q).__name__}")
    out = []
    for key, kind in (("tensors", str), ("formats", dict), ("tensor_params", dict)):
        v = q.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, kind) for k, x in v.items()):
            raise ValueError(f"{where}.{key} must map names to {'strings' if kind is str else 'objects'}")
        out.append(v)
    return tuple(out)


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


def _value(path, base, parts, arrays, fmt, params, shapes):
    """make_value for one stored tensor; ValueError naming it when its arrays do not fit. shapes():
    {canonical name: shape} of the config (a packed tensor's shape comes from there)."""
    if "weight" not in arrays and "weight_packed" not in arrays:
        raise ValueError(f"{path}: tensor {base!r} is missing; only {sorted(parts.values())} are stored")
    if fmt is None and set(arrays) != {"weight"}:
        raise ValueError(f"{path}: tensor {base!r} is stored with {sorted(parts.values())} but config.json's "
                         f"dsv3.quantization.tensors gives it no format")
    shape = None
    if "weight_packed" in arrays:
        shape = shapes().get(base)
        if shape is None:
            raise ValueError(f"{path}: tensor {base!r} is stored packed but is not a tensor of the config")
    try:
        return make_value(arrays, fmt, params, shape)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: tensor {base!r} ({fmt}): {e}") from None


def read_dsv3_checkpoint(path, reader=None, config=None):
    """Yield (canonical name, value) for a dsv3 checkpoint directory: numpy arrays (zero-copy
    views of the mmapped shards) or dsv3.quant.QuantizedTensor built with from_checkpoint (zero
    copy). Fused gate_up tensors are yielded as their gate_proj and up_proj row views. Layers >=
    num_hidden_layers (a kept MTP layer) are skipped with a log line. ``config``: the loaded config
    (default: load_config(path))."""
    sec = dsv3_section(path)
    if sec is None:
        raise ValueError(f"{path} is not a dsv3 checkpoint (config.json has no dsv3 layout section)")
    if config is None:
        from ..config import load_config
        config = load_config(path)
    n_layers = config.num_hidden_layers
    fmts, formats, tparams = _quant_section(sec, path)
    if reader is None:
        from ..safetensors_io import open_safetensors
        reader = open_safetensors(path)
    skipped, shape_table = set(), {}

    def shapes():
        if not shape_table:
            from ..checkpoint import canonical_shapes
            shape_table.update((n, tuple(s)) for n, s, _ in canonical_shapes(config))
        return shape_table

    for base, parts in _group_arrays(list(reader.keys())).items():
        why = skip_reason(base, config)  # copied verbatim by convert, not canonical tensors
        if why == "mtp":
            skipped.add(layer_of(base))
        if why:
            continue
        if None in parts:
            yield base, reader.get(parts[None])
            continue
        fmt = fmts.get(base)
        params = tparams.get(base, formats.get(fmt, {})) if fmt else {}
        arrays = {suf: reader.get(key) for suf, key in parts.items()}
        m = _GATE_UP.match(base)
        if m:
            w = arrays.get("weight")
            if w is None or w.ndim == 0 or w.shape[0] % 2:
                raise ValueError(f"{path}: tensor {base!r} (gate and up rows, fused) needs an even number of rows, "
                                 f"got shape {None if w is None else list(w.shape)}")
            gate, up = split_rows(arrays, fmt, w.shape[0] // 2)
            yield m.group(1) + "gate_proj.weight", _value(path, base, parts, gate, fmt, params, shapes)
            yield m.group(1) + "up_proj.weight", _value(path, base, parts, up, fmt, params, shapes)
        else:
            yield base, _value(path, base, parts, arrays, fmt, params, shapes)
    for layer in sorted(skipped):
        log.info("skipping MTP layer %d of %s (kept verbatim by --keep-mtp)", layer, path)


class Dsv3Checkpoint(CheckpointReader):
    """A converted checkpoint opened by dsv3.checkpoint.open_checkpoint (layout "dsv3"): a
    dsv3.checkpoint.CheckpointReader, values zero-copy (numpy arrays or QuantizedTensor)."""

    def __init__(self, path, config, reader, mtp=False):
        super().__init__(path, config, reader, "dsv3")
        self._formats = {}
        self._mtp = None
        self._check()
        if mtp:  # the MTP layer is stored verbatim in its source layout: planned as the source reader does
            from ..checkpoint import Checkpoint, mtp_shapes, tensor_layout
            n = config.num_hidden_layers
            keys = [k for k in reader.keys() if (layer_of(k) or 0) >= n]
            self._mtp = Checkpoint(path, config, reader, tensor_layout(keys), entries=mtp_shapes(config))

    def _check(self):
        """Every canonical tensor of the config is there, with its shape and a float (or quantised)
        type: CheckpointError (ValueError) naming the tensor otherwise. Reads headers only."""
        import ml_dtypes
        import numpy as np
        from ..checkpoint import CheckpointError, canonical_shapes
        from .tensors import value_format
        want = {n: s for n, s, _ in canonical_shapes(self.config)}
        floats = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
        seen, fmts = set(), {}
        for name, v in self._main_tensors():
            if name not in want:
                raise CheckpointError(f"{self.path}: tensor {name!r} is not one the config calls for")
            if tuple(v.shape) != tuple(want[name]):
                raise CheckpointError(f"{self.path}: tensor {name!r} has shape {list(v.shape)}, expected "
                                      f"{list(want[name])} from the config")
            if isinstance(v, np.ndarray) and v.dtype not in floats:
                raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {v.dtype}, expected a float type "
                                      f"or a quantised format")
            seen.add(name)
            fmts[value_format(v)] = fmts.get(value_format(v), 0) + 1
        missing = [n for n in want if n not in seen]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise CheckpointError(f"{self.path}: missing tensors for the config (num_hidden_layers="
                                  f"{self.config.num_hidden_layers}): {', '.join(missing[:5])}{more}")
        self._formats = fmts

    def canonical_tensors(self):
        """Yield (canonical_name, value); values are zero-copy, valid while the checkpoint is open. With
        mtp, the MTP layer's tensors come last."""
        yield from self._main_tensors()
        if self._mtp is not None:
            yield from self._mtp.canonical_tensors()

    def _main_tensors(self):
        """The canonical tensors of the converted layers (the MTP layer's, kept verbatim, excluded)."""
        return read_dsv3_checkpoint(self.path, self.reader, self.config)

    def _format_counts(self):
        return dict(self._formats)

    def _summary_extra(self):
        q = dsv3_section(self.path).get("quantization", {})
        return {"options": {k: v for k, v in q.items() if k in ("default", "experts", "attention", "lm_head")}}


def open_dsv3(path, config, mtp=False):
    """Open a dsv3 checkpoint directory whose config is already loaded (the open_checkpoint hook)."""
    if dsv3_section(path) is None:
        raise ValueError(f"{path}: has a dsv3 manifest but config.json has no dsv3 section "
                         f"(an interrupted conversion? re-run dsv3 convert to finish it)")
    from ..safetensors_io import open_safetensors
    from ..checkpoint import check_config_fits
    reader = open_safetensors(path)
    try:
        check_config_fits(config, reader, path)
        return Dsv3Checkpoint(path, config, reader, mtp=mtp)
    except BaseException:
        reader.close()
        raise
