"""Which tensor gets which format, and which output shard it goes to.

The plan is computed from the source's canonical tensors (names, shapes, formats only; no data is
read) and the options, before anything is written. It is deterministic, so an interrupted run can
compare it with the plan stored in the manifest and resume shard by shard.
"""
import dataclasses
import math
import re

from ..fused_experts import PER_EXPERT

FORMATS = ("bf16", "fp8_block", "nvfp4", "int8", "int4")
# rows sharing one scale entry in each stored format (fp8_block: 128x128 blocks; others per row)
ROW_BLOCK = {"fp8_block": 128, "nvfp4": 1, "int8": 1, "int4": 1}
DEFAULT_SHARD_BYTES = 4 << 30



@dataclasses.dataclass(frozen=True)
class Options:
    """Conversion options (everything that changes the bytes written)."""
    format: str = "bf16"
    experts: str = None      # routed experts (default: format)
    attention: str = None    # self_attn linears incl. the V3.2 indexer's (default: format)
    lm_head: str = None      # None: lm_head stays as stored
    keep_mtp: bool = False
    ep: int = 1
    shard_bytes: int = DEFAULT_SHARD_BYTES
    group: int = 128         # K group of int4 scales (32 or 128)
    pack: bool = False       # store int4 tensors the engine packs in the packed kernel layout (tensors.py)

    def validate(self):
        for field in ("format", "experts", "attention", "lm_head"):
            v = getattr(self, field)
            if (v is not None or field == "format") and v not in FORMATS:
                where = "" if field == "format" else f" for {field}"
                raise ValueError(f"unknown format {v!r}{where}; expected one of {', '.join(FORMATS)}")
        if isinstance(self.group, bool) or self.group not in (32, 128):
            raise ValueError(f"group (int4 K group) must be 32 or 128, got {self.group!r}")
        if isinstance(self.ep, bool) or not isinstance(self.ep, int) or self.ep < 1:
            raise ValueError(f"ep must be a positive int, got {self.ep!r}")
        if not isinstance(self.shard_bytes, int) or self.shard_bytes < 1:
            raise ValueError(f"shard_bytes must be a positive int, got {self.shard_bytes!r}")
        if not isinstance(self.pack, bool):
            raise ValueError(f"pack must be a bool, got {self.pack!r}")
        if self.pack:
            from .._native import lib
            chosen = {self.format, self.experts, self.attention, self.lm_head} - {None}
            if not chosen & set(lib.packed_formats()):
                raise ValueError(f"--pack stores the packed kernel layout of {' / '.join(lib.packed_formats())} "
                                 f"weights, but no weight is converted to it (formats: "
                                 f"{', '.join(sorted(chosen))}); use --format int4 (or --experts int4 ...)")
        return self

    def to_dict(self):
        d = dataclasses.asdict(self)
        if not self.pack:  # absent when off: manifests written before the option still resume
            del d["pack"]
        return d

    def packs(self, name, fmt):
        """Whether tensor `name` converted to `fmt` is stored in the packed layout: --pack, a format with one,
        and a tensor the engine packs (lib.tensor_packs: the engine's one rule). fmt: the stored format."""
        if not self.pack or fmt is None:
            return False
        from .._native import lib
        return fmt in lib.packed_formats() and lib.tensor_packs(name)


@dataclasses.dataclass
class Item:
    """One output tensor (its arrays are written together): `name` is its on-disk base name
    (e.g. ...experts.5.gate_up_proj.weight), `sources` the canonical names it is made of."""
    name: str
    sources: tuple
    fmt: str            # target format, or None: stored as in the source
    group: str          # "shared" or "ep<r>"
    src_bytes: int
    est_bytes: int
    raw: bool = False   # copied verbatim from the source files (--keep-mtp)
    shard: str = None
    pack: bool = False  # stored in the packed kernel layout (Options.packs)


def is_routed_expert(name):
    return ".mlp.experts." in name


def target_format(name, shape, opts):
    """Format of canonical tensor `name` (None: keep as stored). Norms, the router gate, the
    correction bias, biases, embeddings, the indexer's weights_proj and (unless opts.lm_head) the
    lm_head are never quantised. A format the shape cannot hold falls back to bf16."""
    if not name.endswith(".weight") or len(shape) != 2:
        return None
    last = name.rsplit(".", 2)[-2]
    if "norm" in last or name.endswith(".mlp.gate.weight") or "embed_tokens" in name \
            or last == "weights_proj":
        return None
    if name.startswith("lm_head."):
        fmt = opts.lm_head
    elif ".self_attn." in name:
        fmt = opts.attention or opts.format
    elif is_routed_expert(name):
        fmt = opts.experts or opts.format
    else:
        fmt = opts.format
    if fmt in ("nvfp4",) and shape[1] % 16:
        return "bf16"
    if fmt == "int4" and shape[1] % 2:
        return "bf16"
    return fmt


def estimate_bytes(fmt, shape, src_nbytes):
    """Stored bytes of a tensor of `shape` in `fmt` (sizes the shards; need not be exact)."""
    if fmt is None:
        return int(src_nbytes)
    n, k = shape
    if fmt == "bf16":
        return 2 * n * k
    if fmt == "fp8_block":
        return n * k + 4 * math.ceil(n / 128) * math.ceil(k / 128)
    if fmt == "nvfp4":
        return n * k // 2 + n * k // 16 + 8
    if fmt == "int8":
        return n * k + 4 * n
    return n * k // 2 + 4 * n * math.ceil(k / 32)


def can_fuse_gate_up(fmt, rows, packed=False):
    """gate and up of one expert are stored as one gate_up [2I, H] tensor when the format's
    scales split exactly at row I (fp8_block needs I % 128 == 0; nvfp4 has a per-tensor global
    scale, so its gate and up stay separate); packed tensors stay separate (each its own packed layout,
    which the reader hands to the model as is)."""
    if fmt in (None, "nvfp4") or packed:
        return False
    return rows % ROW_BLOCK.get(fmt, 1) == 0


def _group(name, opts, n_experts):
    """Output group: "shared", or "ep<r>" for routed experts of rank r (contiguous ranges, as DeepSeek's convert.py)."""
    m = re.search(r"\.mlp\.experts\.(\d+)\.", name)
    if opts.ep == 1 or not m:
        return "shared"
    return f"ep{int(m.group(1)) // (n_experts // opts.ep)}"


def build_items(entries, opts, n_experts):
    """entries: iterable of (canonical name, shape, nbytes, src_fmt) in source order.
    Returns the output items in the order they complete while streaming the same source."""
    items, pending = [], {}
    for name, shape, nbytes, src_fmt in entries:
        fmt = target_format(name, shape, opts)
        m = PER_EXPERT.match(name)
        pack = opts.packs(name, fmt or src_fmt)  # kept as stored (fmt None): packed if stored in such a format
        if m and m.group(3) in ("gate_proj", "up_proj") and can_fuse_gate_up(fmt, shape[0], pack):
            prefix = f"{m.group(1)}.{m.group(2)}."
            got = pending.setdefault(prefix, {})
            got[m.group(3)] = (name, shape, nbytes)
            if len(got) < 2:
                continue
            del pending[prefix]
            (gn, gs, gb), (un, us, ub) = got["gate_proj"], got["up_proj"]
            if gs[1] != us[1] or gs[0] != us[0]:
                raise ValueError(f"{gn} {gs} and {un} {us} have different shapes")
            fused = (gs[0] + us[0], gs[1])
            items.append(Item(prefix + "gate_up_proj.weight", (gn, un), fmt, _group(gn, opts, n_experts),
                              gb + ub, estimate_bytes(fmt, fused, gb + ub)))
            continue
        items.append(Item(name, (name,), fmt, _group(name, opts, n_experts), nbytes,
                          estimate_bytes(fmt, shape, nbytes), pack=pack))
    if pending:
        raise ValueError(f"experts with gate_proj but no up_proj (or the reverse): {sorted(pending)[:3]}")
    return items


def shard_file_name(group, k, n, ep):
    if ep == 1:
        return f"model-{k:05d}-of-{n:05d}.safetensors"
    if group == "shared":
        return f"model-shared-{k:05d}-of-{n:05d}.safetensors"
    return f"model-{group}-of-ep{ep}-{k:05d}-of-{n:05d}.safetensors"


def assign_shards(items, opts):
    """Sets item.shard: per group, consecutive items up to opts.shard_bytes (estimated) per file.
    Returns {shard file: [item names]} in writing order."""
    by_group = {}
    for it in items:
        by_group.setdefault(it.group, []).append(it)
    shards = {}
    for group in sorted(by_group, key=lambda g: (g != "shared", int(g[2:]) if g != "shared" else 0)):
        parts, size = [[]], 0
        for it in by_group[group]:
            if parts[-1] and size + it.est_bytes > opts.shard_bytes:
                parts.append([])
                size = 0
            parts[-1].append(it)
            size += it.est_bytes
        for k, part in enumerate(parts, 1):
            fname = shard_file_name(group, k, len(parts), opts.ep)
            for it in part:
                it.shard = fname
            shards[fname] = [it.name for it in part]
    return shards
