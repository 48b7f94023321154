"""Turning one source value into the arrays stored for it, and back.

A value is a numpy array (float32 / bfloat16) or a dsv3.quant.QuantizedTensor. On disk a
quantised tensor `X.weight` is stored as its QuantizedTensor arrays named as checkpoints name
them: `X.weight` (codes), `X.weight_scale_inv` (fp8_block), `X.weight_scale`, `X.weight_scale_2`,
`X.input_scale` (nvfp4; int8/int4 use `X.weight_scale`), or its packed layout `X.weight_packed` (--pack;
dsv3.quant's table and dsv3/convert/__init__.py say where each is described).
"""
import ml_dtypes
import numpy as np

from .plan import ROW_BLOCK

# QuantizedTensor array name -> keyword of dsv3.quant.from_checkpoint
FROM_CHECKPOINT_ARG = {"weight": "weight", "weight_scale_inv": "scale", "weight_scale": "scale",
                       "weight_scale_2": "scale2", "input_scale": "input_scale", "weight_packed": "weight_packed"}


def _quant():
    from .. import quant
    return quant


def is_quantized(v):
    return not isinstance(v, np.ndarray)


def value_format(v):
    """'f32' / 'bf16' for arrays, the QuantizedTensor's fmt otherwise."""
    if is_quantized(v):
        return v.fmt
    if v.dtype == np.float32:
        return "f32"
    if v.dtype == ml_dtypes.bfloat16:
        return "bf16"
    return str(v.dtype)


def value_nbytes(v):
    return int(v.nbytes)


def to_float(v):
    """float32 array of any value (dequantises in C)."""
    if is_quantized(v):
        return np.asarray(_quant().dequantize(v), dtype=np.float32)
    return np.asarray(v, dtype=np.float32)


def _stored(qt, pack=False):
    """Arrays and params of a QuantizedTensor as stored: with pack, its packed kernel layout
    (dsv3.quant.pack: int4 -> "weight_packed"); otherwise the checkpoint layout (dsv3.quant.stored_layout,
    which records layout version "ckpt-1" in params['packed'] and shares the arrays)."""
    qt = _quant().pack(qt) if pack else _quant().stored_layout(qt)
    return dict(qt.arrays), dict(qt.params)


def convert_value(v, fmt, group=128, pack=False):
    """Arrays to store for value v in format fmt (None: as stored); group: int4's K group; pack: store
    the packed kernel layout (formats that have one; the caller decides which tensors: plan.Item.pack).

    Returns (arrays dict {suffix: ndarray}, params dict). Same format -> the source codes and
    scales are copied bit-exactly; otherwise dequantise (C) then quantise (C)."""
    if fmt is None:
        return _stored(v, pack) if is_quantized(v) else ({"weight": v}, {})
    if fmt == "bf16":
        if not is_quantized(v) and v.dtype == ml_dtypes.bfloat16:
            return {"weight": v}, {}
        if is_quantized(v) and v.fmt == "bf16":
            return {"weight": v.arrays["weight"]}, {}
        return {"weight": to_float(v).astype(ml_dtypes.bfloat16)}, {}
    params = {"group": group} if fmt == "int4" else {}
    if is_quantized(v) and v.fmt == fmt and all(v.params.get(k) == p for k, p in params.items()):
        return _stored(v, pack)
    return _stored(_quant().quantize(to_float(v), fmt, **params), pack)


def fuse_rows(parts, fmt, rows):
    """Stored arrays of gate_up from those of gate and up (each `rows` rows): {key: [gate part,
    up part]} (row concatenation, done by the writer) or a shared scalar, which must be equal.
    Blocked scales must split exactly at `rows`."""
    (a, pa), (b, pb) = parts
    if pa != pb or set(a) != set(b):
        raise ValueError(f"cannot fuse gate/up stored with different parameters: {pa} vs {pb}")
    out = {}
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if x.ndim == 0 or x.size == 1 and key in ("weight_scale_2", "input_scale"):
            if x.tobytes() != y.tobytes():
                raise ValueError(f"cannot fuse gate/up: {key} differs ({x} vs {y})")
            out[key] = x
            continue
        if key != "weight" and rows % ROW_BLOCK.get(fmt, 1):
            raise ValueError(f"cannot fuse gate/up: {rows} rows do not fill {fmt} scale blocks")
        out[key] = [x, y]  # written one after the other = concatenated along rows, without a copy
    return out, pa


def split_rows(arrays, fmt, rows):
    """Inverse of fuse_rows: zero-copy row slices (first `rows` rows, then the rest)."""
    first, second = {}, {}
    for key, x in arrays.items():
        if x.ndim == 0 or x.size == 1 and key in ("weight_scale_2", "input_scale"):
            first[key] = second[key] = x
            continue
        r = rows if key == "weight" else rows // ROW_BLOCK.get(fmt, 1)
        first[key], second[key] = x[:r], x[r:]
    return first, second


def make_value(arrays, fmt, params, shape=None):
    """Value (array or QuantizedTensor, zero copy) from stored arrays; shape: (N, K) of a packed tensor
    (its one array does not carry it)."""
    if fmt in (None, "bf16", "f32") and set(arrays) == {"weight"}:
        return arrays["weight"]
    kwargs = {FROM_CHECKPOINT_ARG[k]: v for k, v in arrays.items()}
    if "weight_packed" in kwargs:
        kwargs["shape"] = shape
    return _quant().from_checkpoint(fmt, **kwargs, **params)
