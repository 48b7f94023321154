"""transformers 5.x fused routed experts vs dsv3's per-expert canonical names: the one split / stack rule.

transformers 5.x keeps a MoE layer's routed experts as two tensors: ``mlp.experts.gate_up_proj``
[E, 2I, H] (rows 0..I-1 of expert e are its gate, rows I..2I-1 its up) and ``mlp.experts.down_proj``
[E, H, I]. dsv3's canonical names are per expert: ``mlp.experts.{e}.{gate,up,down}_proj.weight``.
Every other name is the same on both sides. (A dsv3-converted checkpoint's own ``experts.{e}.gate_up_proj.weight``
is a storage detail of dsv3.convert, not this rule.)
"""
import re

import numpy as np

#: a transformers 5.x fused routed-expert tensor: groups (prefix ``model.layers.N.mlp.experts``, part)
FUSED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
#: a canonical per-expert weight: groups (prefix ``model.layers.N.mlp.experts``, expert, part)
PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_PARTS = ("gate_proj", "up_proj", "down_proj")


def is_fused(name):
    """Whether ``name`` is a transformers 5.x fused expert tensor (``...mlp.experts.gate_up_proj`` / ``down_proj``)."""
    return FUSED.match(name) is not None


def source_of(name):
    """(fused tensor name, expert index, part) that canonical per-expert ``name`` is cut from, or None
    when ``name`` is not a routed expert's weight."""
    m = PER_EXPERT.match(name)
    if not m:
        return None
    prefix, e, part = m.group(1), int(m.group(2)), m.group(3)
    return f"{prefix}.{'down_proj' if part == 'down_proj' else 'gate_up_proj'}", e, part


def fused_shape(part, n_experts, inter, hidden):
    """Shape of the fused tensor holding ``part`` (gate_up_proj [E, 2I, H], down_proj [E, H, I])."""
    return (n_experts, hidden, inter) if part == "down_proj" else (n_experts, 2 * inter, hidden)


def take(fused, e, part):
    """Expert ``e``'s ``part`` of a fused array (a view): gate = gate_up[e, :I], up = gate_up[e, I:], down = down[e]."""
    a = fused[e]
    if part == "down_proj":
        return a
    inter = a.shape[0] // 2
    return a[:inter] if part == "gate_proj" else a[inter:]


def split(tensors):
    """transformers 5.x names -> canonical names: fused experts become per-expert views; the rest passes through."""
    out = {}
    for name, v in tensors.items():
        m = FUSED.match(name)
        if not m:
            out[name] = v
            continue
        v = np.asarray(v)
        prefix, kind = m.groups()
        parts = _PARTS[:2] if kind == "gate_up_proj" else _PARTS[2:]
        for e in range(v.shape[0]):
            for part in parts:
                out[f"{prefix}.{e}.{part}.weight"] = take(v, e, part)
    return out


def stack(tensors, dtype=None):
    """canonical names -> transformers 5.x names: per-expert weights stacked into the fused ``gate_up_proj``
    [E, 2I, H] and ``down_proj`` [E, H, I]; everything else passes through. ``dtype``: cast every array to it
    (None: keep). ValueError when experts are not 0..E-1 or a part is missing."""
    cast = (lambda v: np.asarray(v)) if dtype is None else (lambda v: np.asarray(v, dtype=dtype))
    out, experts = {}, {}
    for name, v in tensors.items():
        m = PER_EXPERT.match(name)
        if m:
            prefix, e, kind = m.groups()
            experts.setdefault(prefix, {}).setdefault(int(e), {})[kind] = v
        else:
            out[name] = cast(v)
    for prefix, per in experts.items():
        ids = sorted(per)
        if ids != list(range(len(ids))):
            raise ValueError(f"{prefix}: expert indices are not 0..{len(ids) - 1}: {ids[:8]}...")
        for e in ids:
            missing = set(_PARTS) - set(per[e])
            if missing:
                raise ValueError(f"{prefix}.{e}: missing {sorted(missing)}")
        out[f"{prefix}.gate_up_proj"] = np.stack(
            [np.concatenate([cast(per[e]["gate_proj"]), cast(per[e]["up_proj"])], axis=0) for e in ids])
        out[f"{prefix}.down_proj"] = np.stack([cast(per[e]["down_proj"]) for e in ids])
    return out
