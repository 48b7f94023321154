"""Checkpoints: detect the on-disk layout and hand out tensors under canonical names.

Layouts: "hf" (transformers 4.x / hub names, per-expert f32/bf16), "hf_fused" (transformers 5.x
``mlp.experts.gate_up_proj`` [E, 2I, H] + ``mlp.experts.down_proj`` [E, H, I]), "fp8_block" (DeepSeek
hub FP8 with ``.weight_scale_inv``), "nvfp4" (ModelOpt: U8 ``.weight`` + F8 ``.weight_scale`` +
``.weight_scale_2`` + ``.input_scale``), "dsv3" (converted by dsv3.convert; read by dsv3/convert/layout.py).

Every expected tensor is checked (presence, shape, dtype) against the config when the checkpoint is
opened, from the safetensors headers only. MTP layers (index >= num_hidden_layers) are skipped with a
log line. The V3.2 lightning indexer's ``self_attn.indexer.*`` tensors are canonical tensors of a
deepseek_v32 config (``wq_b``/``wk`` linears that may be FP8, ``k_norm`` weight + bias, ``weights_proj``
read as float32 like transformers); under any other config they are skipped with a log line.
"""
import logging
import math
import os
import re
from collections import Counter

import numpy as np

from . import fused_experts
from ._native import lib
from .config import load_config
from .display import CheckpointDisplay, Summary
from .safetensors_io import open_safetensors

log = logging.getLogger(__name__)
LAYOUTS = ("hf", "hf_fused", "fp8_block", "nvfp4", "dsv3")
DSV3_MANIFEST = "dsv3-manifest.json"
FLOAT_DTYPES = ("F32", "BF16", "F16")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def canonical_shapes(cfg):
    """Ordered list of (canonical_name, shape, kind) for a config; kind is 'linear' (a matmul
    weight, may be quantised), 'router' (kept float32) or 'vector' (norms, biases, embeddings,
    lm_head: float in every source checkpoint). Derived from the C tensor table
    (csrc/model/tensor_table.c), the one list of the tensors a model reads."""
    return list(iter_canonical_shapes(cfg))


def iter_canonical_shapes(cfg):
    """canonical_shapes(cfg) one decoder layer at a time (a config can ask for billions of tensors:
    see check_config_fits). Tensors the model may go without (lm_head when tied) are left out."""
    native = cfg.to_native()
    for part in range(cfg.num_hidden_layers + 2):  # before the layers, each layer, after them
        for name, shape, kind, optional in lib.tensor_slots(native, part):
            if not optional:
                yield name, shape, kind


def tensors_of_kind(kind):
    """Name suffixes (after ``model.layers.{i}``, or whole names) of the C tensor table's rows of
    ``kind`` ('linear', 'router', 'vector'), e.g. tensors_of_kind('router') -> ('.mlp.gate.weight', ...)."""
    return tuple(r["name"].split("{layer}", 1)[-1] for r in lib.tensor_table() if r["kind"] == kind)


def mtp_shapes(cfg):
    """(name, shape, kind) of the MTP layer (index num_hidden_layers): part num_hidden_layers + 2 of the C
    tensor table (enorm, hnorm, eh_proj, shared_head.norm, shared_head.head (optional: the model falls back
    to lm_head), then its decoder block). The layer's own embed_tokens copy is not listed: the model's
    embedding is shared (DeepSeek-V3 report, SGLang)."""
    slots = lib.tensor_slots(cfg.to_native(), cfg.num_hidden_layers + 2)
    return [(n, shape, kind) for n, shape, kind, _ in slots if not n.endswith(".embed_tokens.weight")]


MTP_HEAD = "shared_head.head.weight"  # optional in the MTP layer


def check_config_fits(cfg, reader, path):
    """Raise CheckpointError unless the tensors in ``reader`` could hold the parameters ``cfg``
    calls for (at 4 bits each, the smallest format): a config.json that does not belong to its
    tensors (say num_hidden_layers 2**31 - 1) is refused at once, before anything enumerates its
    tensors (which would take hours and all memory)."""
    have = sum(reader.nbytes(n) for n in reader.keys())
    _, need = lib.tensor_totals(cfg.to_native())  # counted by the C table, nothing listed
    if need > 2 * have:
        raise CheckpointError(
            f"{path}: the config calls for more parameters than its {have} bytes of tensors can hold "
            f"({need} values; num_hidden_layers={cfg.num_hidden_layers}, hidden_size={cfg.hidden_size}, "
            f"n_routed_experts={cfg.n_routed_experts}, vocab_size={cfg.vocab_size}): config.json does not "
            f"describe these tensors")


def detect_layout(path, names, dtypes=None):
    """Layout name from a checkpoint directory's file and tensor names (see module doc)."""
    if os.path.isfile(os.path.join(path, DSV3_MANIFEST)):
        return "dsv3"
    return tensor_layout(names)


def tensor_layout(names):
    """The source layout ("hf", "hf_fused", "fp8_block", "nvfp4") that tensor names are stored in."""
    names = list(names)
    if any(n.endswith(".weight_scale_inv") for n in names):
        return "fp8_block"
    if any(n.endswith(".weight_scale_2") for n in names):
        return "nvfp4"
    if any(fused_experts.is_fused(n) for n in names):
        return "hf_fused"
    return "hf"


#: source tensors read by no model yet and passed over knowingly: reason -> what they are
SKIP_REASONS = {"mtp": "layers >= num_hidden_layers (multi-token prediction)",
                "indexer": "V3.2 sparse-attention indexer"}


def layer_of(name):
    """Decoder layer index of a ``model.layers.N.`` name, else None."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def skip_reason(name, cfg):
    """Why source tensor ``name`` is skipped under config ``cfg`` (a key of SKIP_REASONS), or None when it
    is not: the one skip rule, used by the checkpoint readers (source and converted), ``dsv3 info`` and
    ``dsv3 convert`` (which copies skipped tensors verbatim). When such tensors become model weights (rows
    of the C tensor table, csrc/model/tensor_table.c), drop their case here. The indexer's tensors are
    weights of a deepseek_v32 config (``cfg.has_indexer``) and skipped under any other."""
    layer = layer_of(name)
    if layer is not None and layer >= cfg.num_hidden_layers:
        return "mtp"
    if ".self_attn.indexer." in name and not cfg.has_indexer:
        return "indexer"
    return None


class CheckpointError(ValueError):
    """A checkpoint that does not match its config."""


class CheckpointReader(CheckpointDisplay):
    """What every opened checkpoint is (source layouts: :class:`Checkpoint`; converted:
    dsv3.convert.layout.Dsv3Checkpoint): ``.path``, ``.config``, ``.layout``, ``.reader`` (the
    SafetensorsReader), ``names()``, ``canonical_tensors()``, ``summary()`` (the same keys for every
    layout), ``close()`` and use as a context manager. A layout supplies ``canonical_tensors()``,
    ``_format_counts()`` ({format: canonical tensors}), ``missing`` and ``unexpected``."""

    missing = unexpected = ()

    def __init__(self, path, config, reader, layout):
        self.path, self.config, self.reader, self.layout = path, config, reader, layout

    def names(self):
        """Canonical names in their stable order (the C tensor table's)."""
        return [n for n, _, _ in canonical_shapes(self.config)]

    def summary(self):
        """Counts and bytes per stored dtype, canonical tensors per format, and the missing / unexpected /
        skipped names (for ``dsv3 info``); layouts may add keys (a converted checkpoint: ``options``)."""
        r, by_dtype, skipped = self.reader, {}, Counter()
        for n in r.keys():
            d = by_dtype.setdefault(r.dtype(n), {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += r.nbytes(n)
            why = skip_reason(n, self.config)
            if why:
                skipped[why] += 1
        fmts = self._format_counts()
        out = {"path": self.path, "layout": self.layout, "model_type": getattr(self.config, "model_type", None),
               "num_tensors": len(r), "total_bytes": sum(v["bytes"] for v in by_dtype.values()),
               "by_dtype": by_dtype, "by_format": fmts, "canonical": sum(fmts.values()),
               "missing": list(self.missing), "unexpected": list(self.unexpected), "skipped": dict(skipped)}
        out.update(self._summary_extra())
        return Summary(out, title=f"checkpoint {self.path}")

    def _summary_extra(self):
        return {}

    def close(self):
        """Release the file mappings (arrays already handed out keep theirs alive)."""
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Checkpoint(CheckpointReader):
    """A source checkpoint (layouts hf, hf_fused, fp8_block, nvfp4; see the module doc):
    :class:`CheckpointReader` plus ``tensor(name)``. Arrays are zero-copy views valid while it is open."""

    def __init__(self, path, config, reader, layout, mtp=False, entries=None):
        super().__init__(path, config, reader, layout)
        self._only = entries is not None  # a planner of some tensors of the reader (a kept MTP layer)
        if entries is None:
            entries = canonical_shapes(config) + (mtp_shapes(config) if mtp else [])
        if (mtp or self._only) and not any(skip_reason(n, config) == "mtp" for n in reader.keys()):
            raise CheckpointError(f"{path}: mtp=True but the checkpoint has no MTP layer (no tensor "
                                  f"model.layers.{config.num_hidden_layers}.*; num_nextn_predict_layers="
                                  f"{getattr(config, 'num_nextn_predict_layers', None)})")
        self._entries = entries
        self._plan = {}        # canonical name -> (kind, detail)
        self._used = set()
        self.missing, self.skipped = [], Counter()
        self._build_plan()

    # ---- validation ----
    def _expect(self, name, shape, dtypes):
        r = self.reader
        if name not in r:
            self.missing.append(name)
            return False
        got = tuple(r.shape(name))
        if got != tuple(shape):
            raise CheckpointError(f"{self.path}: tensor {name!r} has shape {list(got)}, expected {list(shape)} "
                                  f"from the config")
        if r.dtype(name) not in dtypes:
            raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {r.dtype(name)}, expected "
                                  f"{' or '.join(dtypes)}")
        self._used.add(name)
        return True

    def _build_plan(self):
        cfg, r = self.config, self.reader
        fused_checked = {}
        for name, shape, kind in self._entries:
            if name.endswith("." + MTP_HEAD) and name not in r:
                continue  # the MTP layer without its own head uses lm_head
            if self.layout == "hf_fused" and fused_experts.source_of(name):
                self._plan_fused(name, shape, fused_checked)
                continue
            if kind == "linear" and self.layout == "fp8_block" and name + "_scale_inv" in r:
                self._plan_fp8(name, shape)
            elif kind == "linear" and self.layout == "nvfp4" and name + "_scale_2" in r:
                self._plan_nvfp4(name, shape)
            elif self._expect(name, shape, FLOAT_DTYPES):
                self._plan[name] = (kind, name)
        for n in r.keys():
            if n in self._used:
                continue
            why = skip_reason(n, cfg)
            if why:
                self.skipped[why] += 1
        for why, k in sorted(self.skipped.items()):
            log.info("%s: skipped %d %s tensors (%s)", self.path, k, why, SKIP_REASONS[why])
        if self.missing:
            more = f" (and {len(self.missing) - 5} more)" if len(self.missing) > 5 else ""
            raise CheckpointError(f"{self.path}: missing tensors for layout {self.layout}: "
                                  f"{', '.join(self.missing[:5])}{more}")
        if self.unexpected and not self._only:
            log.warning("%s: %d unexpected tensors, e.g. %s", self.path, len(self.unexpected), self.unexpected[0])

    def _plan_fp8(self, name, shape):
        q = self.config.quantization
        bn, bk = q.weight_block_size if q is not None and q.method == "fp8_block" else (128, 128)
        sname = name + "_scale_inv"
        sshape = (math.ceil(shape[0] / bn), math.ceil(shape[1] / bk))
        if self._expect(name, shape, ("F8_E4M3",)) and self._expect(sname, sshape, ("F32",)):
            self._plan[name] = ("fp8", (name, sname, bn, bk))

    def _plan_nvfp4(self, name, shape):
        n, k = shape
        if k % 16:
            raise CheckpointError(f"{self.path}: tensor {name!r}: NVFP4 needs K % 16 == 0, K = {k}")
        base = name[: -len("weight")]
        s2, ins = base + "weight_scale_2", base + "input_scale"
        ok = self._expect(name, (n, k // 2), ("U8",))
        ok = self._expect(base + "weight_scale", (n, k // 16), ("F8_E4M3",)) and ok
        for extra in (s2, ins):
            if extra in self.reader and self.reader.shape(extra) not in ((), (1,)):
                raise CheckpointError(f"{self.path}: tensor {extra!r} has shape {list(self.reader.shape(extra))}, "
                                      f"expected [] (a scalar)")
        ok = self._expect(s2, self.reader.shape(s2), ("F32",)) and ok
        has_in = ins in self.reader and self._expect(ins, self.reader.shape(ins), ("F32",))
        if ok:
            self._plan[name] = ("nvfp4", (name, base + "weight_scale", s2, ins if has_in else None))

    def _plan_fused(self, name, shape, checked):
        cfg = self.config
        src, e, part = fused_experts.source_of(name)
        if src not in checked:
            full = fused_experts.fused_shape(part, cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size)
            checked[src] = self._expect(src, full, FLOAT_DTYPES)
        if checked[src]:
            self._plan[name] = ("fused", (src, e, part))

    @property
    def unexpected(self):
        """Source tensors neither used nor knowingly skipped (MTP, indexer)."""
        return [n for n in self.reader.keys()
                if n not in self._used and not skip_reason(n, self.config)]

    # ---- access ----
    def names(self):
        """Canonical names in their stable order (the MTP layer's last, when loaded)."""
        return [n for n, _, _ in self._entries if n in self._plan]

    def tensor(self, name):
        """Value of one canonical tensor: numpy array (float32 / bfloat16) or QuantizedTensor."""
        try:
            kind, d = self._plan[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a canonical tensor of {self.path}") from None
        r = self.reader
        if kind == "fused":
            src, e, part = d
            return fused_experts.take(r.get(src), e, part)
        if kind == "fp8":
            from . import quant
            w, s, bn, bk = d
            q = self.config.quantization
            if (bn, bk) != (128, 128):  # DeepSeek's format; the kernels' scale grid is 128x128
                raise NotImplementedError(f"FP8 weight_block_size {bn}x{bk} ({w}): only 128x128 is supported")
            return quant.from_checkpoint("fp8_block", r.get(w), scale=r.get(s),
                                         ue8m0=bool(q is not None and q.scale_fmt == "ue8m0"))
        if kind == "nvfp4":
            from . import quant
            w, s, s2, ins = d
            return quant.from_checkpoint("nvfp4", r.get(w), scale=r.get(s), scale2=r.get(s2),
                                         input_scale=None if ins is None else r.get(ins), group=16)
        a = r.get(d)
        if kind == "router" or a.dtype == np.float16:
            return a.astype(np.float32, copy=False)  # router math is fp32; F16 has no compute path
        return a

    def canonical_tensors(self):
        """Yield (canonical_name, value) for every tensor of the config, in a stable order."""
        for name in self.names():
            yield name, self.tensor(name)

    def _format_counts(self):
        r, fmts = self.reader, Counter()
        for kind, d in self._plan.values():
            if kind in ("fp8", "nvfp4"):
                fmts["fp8_block" if kind == "fp8" else "nvfp4"] += 1
            else:
                src = d[0] if kind == "fused" else d
                fmts["bf16" if kind != "router" and r.dtype(src) == "BF16" else "f32"] += 1
        return dict(fmts)


def open_checkpoint(path, config=None, mtp=False):
    """Open a checkpoint directory (config.json + safetensors), or a hub id ("org/name[@rev]") already in
    the local Hugging Face cache (never downloaded). ``config`` overrides config.json. ``mtp``: also hand
    out the MTP layer's tensors (hub layout, or kept verbatim by ``dsv3 convert --keep-mtp``).
    Raises CheckpointError (ValueError) naming the tensor for missing or mis-shaped tensors."""
    from .paths import resolve_checkpoint_dir
    path = resolve_checkpoint_dir(path)  # a directory, or a hub id in the local Hugging Face cache
    cfg = load_config(path if config is None else config)
    if os.path.isfile(os.path.join(path, DSV3_MANIFEST)):
        from .convert.layout import open_dsv3
        return open_dsv3(path, cfg, mtp=mtp)
    reader = open_safetensors(path)
    try:
        check_config_fits(cfg, reader, path)
        layout = detect_layout(path, reader.keys())
        q = cfg.quantization
        if q is not None and {"fp8_block": "fp8_block", "nvfp4": "nvfp4"}[q.method] != layout:
            log.warning("%s: config says %s but the tensors are laid out as %s", path, q.method, layout)
        return Checkpoint(path, cfg, reader, layout, mtp=mtp)
    except BaseException:
        reader.close()
        raise
