"""Quantised weights: formats, quantisation, dequantisation, checkpoint wrapping.

A :class:`QuantizedTensor` holds a weight ``W [N, K]`` in one storage format, with its arrays named
as in a checkpoint (all math runs in C, see csrc/include/dsv3_quant.h for the exact layouts):

============  ===============================================================================
``f32``       ``weight`` float32 [N, K]
``bf16``      ``weight`` bfloat16 [N, K]
``fp8_block`` ``weight`` float8_e4m3fn [N, K], ``weight_scale_inv`` float32 [ceil(N/128), ceil(K/128)]
              (DeepSeek; params ``ue8m0``: scales are powers of two, as V3.1 produces them)
``nvfp4``     ``weight`` uint8 [N, K/2] (e2m1, element 2i in the low nibble), ``weight_scale``
              float8_e4m3fn [N, K/16], ``weight_scale_2`` float32 scalar, optional ``input_scale``
              (NVIDIA ModelOpt). K % 16 == 0.
``int8``      ``weight`` int8 [N, K], ``weight_scale`` float32 [N] (symmetric per output channel)
``int4``      ``weight`` uint8 [N, K/2] (two's complement nibbles, element 2i low), ``weight_scale``
              float32 [N, ceil(K/group)], params ``group`` in {32, 128}
============  ===============================================================================

Packing: the kernels read these checkpoint layouts directly (rows of codes stream contiguously; the
large-M path decodes bf16 tiles on the fly), except int4 in the fast precision, whose kernels read a packed
layout (16 rows interleaved, pre-decoded f32 scales: csrc/linear/int4p.h; the formats that have one:
``lib.packed_formats()``). A model loaded in the fast precision builds it once at load (an owned copy;
``DSV3_PACK=0`` or ``Model.from_pretrained(..., pack=False)`` keeps the stored layout), or reads it in place
from a checkpoint that stores it (``dsv3 convert --pack``). :func:`pack` gives a tensor in that layout:

============  ===============================================================================
``int4``      params ``packed`` = ``"int4p"``: one array ``weight_packed`` uint8 [bytes]
              (``lib.pack_weight``), no ``weight`` / ``weight_scale``; the shape (N, K) and ``group``
              come with it (a checkpoint: the config's tensor shapes and dsv3.quantization params);
              its data must start at a multiple of ``lib.PACKED_ALIGN`` (64) bytes
============  ===============================================================================

and :func:`unpack` the stored layout back (an owned copy). For the other formats the kernel layout is the
checkpoint layout itself: :func:`pack` only records it (params ``packed`` = ``"ckpt-1"``, as
:func:`stored_layout` does for every format). :func:`packed_native` gives a weight's packed layout next to
its stored arrays for :func:`dsv3.ops.linear`.
"""
import numpy as np
import ml_dtypes

from ._native import lib

FORMATS = ("f32", "bf16", "fp8_block", "nvfp4", "int8", "int4")
# Activation precision of the linear kernels (dsv3_weight.act, csrc/include/dsv3_linear.h):
#   "exact": activations kept at f32 level (f32, or bf16 hi + lo); matches transformers fp32 (parity work);
#   "fast":  int8/int4 weights take activations quantised per block of 32 to int8 (scale = amax/127,
#            round half to even) with integer dots; fp8_block/nvfp4/bf16 on AVX-512 take them rounded once
#            to bf16. Accuracy against transformers fp32: tests/test_fast_mode.py.
PRECISIONS = ("exact", "fast")
DEFAULT_PRECISION = "fast"  # the engine default (dsv3.Model); the ONE place it is set
# dsv3.ops.linear is a building block checked against references: it stays exact unless asked.
OPS_DEFAULT_PRECISION = "exact"
PACKED_LAYOUT = "ckpt-1"  # the checkpoint layout itself (params["packed"] of stored_layout)
INT4P_LAYOUT = "int4p"   # the packed int4 kernel layout (csrc/linear/int4p.h), stored as "weight_packed"
PACKED_ARRAY = "weight_packed"
_SCALE_NAME = {"fp8_block": "weight_scale_inv", "nvfp4": "weight_scale", "int8": "weight_scale",
               "int4": "weight_scale"}
_PARAMS = {"f32": {}, "bf16": {}, "fp8_block": {"ue8m0": False}, "nvfp4": {"group": 16},
           "int8": {}, "int4": {"group": 128}}


def check_precision(precision, default=None):
    """``precision`` validated; None gives ``default``, or :data:`DEFAULT_PRECISION` when that is None."""
    if precision is None:
        return DEFAULT_PRECISION if default is None else default
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'exact' or 'fast', got {precision!r}")
    return precision


def native_weight(value, precision):
    """The binding's weight dict for a :class:`QuantizedTensor` or a float32/bfloat16 2-D array, with the
    activation precision its kernels may use (``"act"``); other values are returned unchanged."""
    precision = check_precision(precision)
    if isinstance(value, QuantizedTensor):
        d = value.to_native()
    elif isinstance(value, dict) and "format" in value:  # already a native dict (to_native())
        d = dict(value)
    elif (isinstance(value, np.ndarray) and value.ndim == 2
          and value.dtype in (np.float32, ml_dtypes.bfloat16)):
        d = {"format": "f32" if value.dtype == np.float32 else "bf16", "shape": value.shape, "data": value}
    else:
        return value
    d["act"] = precision
    return d


def packed_native(value):
    """The binding's weight dict of an int4 :class:`QuantizedTensor` (or its native dict) with its packed
    kernel layout added (``"packed"``: uint8, csrc/linear/int4p.h) and ``"act": "fast"``: a packed weight runs
    in the fast precision only (``dsv3.ops.linear(..., precision="fast")``)."""
    d = value.to_native() if isinstance(value, QuantizedTensor) else dict(value)
    if d.get("packed") is None or d.get("data") is not None:
        d.pop("packed", None)
        d["packed"] = lib.pack_weight(d)
    d["act"] = "fast"
    return d


def nan_scanned_native(value):
    """The binding's weight dict of a :class:`QuantizedTensor` (or its native dict) with ``"nan_free"`` set by one
    scan of its codes (fp8_block: no e4m3 NaN code S.1111.111), as a model loader prepares its weights: the fast
    fp8 kernels then skip their per-row NaN checks (csrc/linear/dot_fp_avx2.c). The dict promises what the scan
    found; changing ``"data"`` afterwards voids it."""
    d = value.to_native() if isinstance(value, QuantizedTensor) else dict(value)
    d["nan_free"] = lib.weight_nan_free(d)
    return d


def _check_fmt(fmt):
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _params(fmt, given):
    params = dict(_PARAMS[fmt])
    for key, value in given.items():
        if key == "packed":
            known = (PACKED_LAYOUT, INT4P_LAYOUT) if fmt in lib.packed_formats() else (PACKED_LAYOUT,)
            if value not in known:
                raise ValueError(f"unknown packed layout {value!r} for {fmt} (this build reads "
                                 f"{' or '.join(repr(k) for k in known)})")
        elif key not in params:
            raise TypeError(f"{fmt}: unexpected parameter {key!r} (allowed: {', '.join(params) or 'none'})")
        params[key] = value
    if fmt == "int4" and params["group"] not in (32, 128):
        raise ValueError(f"int4: group must be 32 or 128, got {params['group']!r}")
    if fmt == "nvfp4" and params["group"] != 16:
        raise ValueError(f"nvfp4: group is fixed at 16, got {params['group']!r}")
    if fmt == "fp8_block":
        params["ue8m0"] = bool(params["ue8m0"])
    return params


class QuantizedTensor:
    """A weight W [N, K] in a storage format; ``arrays`` are named as in a checkpoint.

    Attributes: ``fmt`` (format name), ``shape`` (N, K), ``arrays`` (dict of numpy arrays, zero-copy
    views when built by :func:`from_checkpoint`), ``params`` (format parameters).
    """

    __slots__ = ("fmt", "shape", "arrays", "params")

    def __init__(self, fmt, shape, arrays, params=None):
        _check_fmt(fmt)
        self.fmt = fmt
        self.shape = (int(shape[0]), int(shape[1]))
        self.arrays = dict(arrays)
        self.params = _params(fmt, params or {})

    @property
    def nbytes(self):
        """Bytes of all stored arrays."""
        return int(sum(np.asarray(a).nbytes for a in self.arrays.values()))

    @property
    def is_packed(self):
        """Whether the arrays hold the packed kernel layout (``weight_packed``) instead of the stored one."""
        return self.params.get("packed") == INT4P_LAYOUT

    def to_native(self):
        """The dict the C binding accepts (dsv3_py_weight): format, shape, data, scale, scale2, group (a packed
        tensor: data and scale None, ``packed`` its packed layout)."""
        if self.is_packed:
            return {"format": self.fmt, "shape": self.shape, "data": None, "scale": None,
                    "group": int(self.params.get("group", 0)), "ue8m0": 0, "packed": self.arrays[PACKED_ARRAY]}
        d = {"format": self.fmt, "shape": self.shape, "data": self.arrays["weight"],
             "scale": self.arrays.get(_SCALE_NAME.get(self.fmt, ""), None),
             "group": int(self.params.get("group", 0)), "ue8m0": int(self.params.get("ue8m0", False))}
        if self.fmt == "nvfp4":
            d["scale2"] = float(np.asarray(self.arrays["weight_scale_2"], dtype=np.float32).reshape(-1)[0])
        return d

    def __repr__(self):
        return f"QuantizedTensor({self.fmt!r}, shape={self.shape}, params={self.params}, nbytes={self.nbytes})"


def _validate(qt):
    """Checks every array against the format (dtype, shape, contiguity) in C without computing."""
    # a packed tensor: the fast precision (the only one reading that layout); size and alignment checked
    lib.linear(np.zeros((0, qt.shape[1]), np.float32), qt.to_native(), precision="fast" if qt.is_packed else None)
    return qt


def quantize(w, fmt, **params):
    """Quantise ``w`` (float32 [N, K]) to ``fmt``; returns a :class:`QuantizedTensor`.

    params: fp8_block ``ue8m0=False``; int4 ``group=128`` (32 or 128). Rounding rules: fp8_block as
    DeepSeek (S = amax/448, 1 if 0; ue8m0 rounds S up to a power of two; e4m3 RNE); nvfp4 as ModelOpt;
    int8/int4 symmetric, S = amax/127 (/7), round half to even.

    Non-finite weights: the scaled formats (fp8_block, nvfp4, int8, int4) raise ValueError naming the
    first NaN/inf as ``weight[row, col]`` (a NaN would be stored as a finite code, an inf would turn
    its whole scale block into NaN); f32 and bf16 store NaN/inf as they are.
    """
    _check_fmt(fmt)
    params = _params(fmt, params)
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating) and w.dtype != ml_dtypes.bfloat16:
        raise TypeError(f"quantize: w must be a float array, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"quantize: w must be 2-D [N, K], got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = lib.quantize(w, fmt, group=int(params.get("group", 0)) if fmt == "int4" else 0,
                       ue8m0=bool(params.get("ue8m0", False)))
    arrays = {"weight": out["data"]}
    if fmt in _SCALE_NAME:
        arrays[_SCALE_NAME[fmt]] = out["scale"]
    if fmt == "nvfp4":
        arrays["weight_scale_2"] = np.array(out["scale2"], dtype=np.float32)
    return QuantizedTensor(fmt, w.shape, arrays, params)


def dequantize(qt):
    """float32 [N, K] = code * scale, computed in C (the reference the kernels are tested against)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize expects a QuantizedTensor, got {type(qt).__name__}")
    return lib.dequantize(qt.to_native())


def from_checkpoint(fmt, weight=None, scale=None, scale2=None, input_scale=None, weight_packed=None, shape=None,
                    **params):
    """Wrap arrays read from a checkpoint (e.g. safetensors) without copying.

    fp8_block: weight [N, K] float8_e4m3fn, scale = weight_scale_inv; nvfp4: weight uint8 [N, K/2],
    scale = weight_scale (float8_e4m3fn), scale2 = weight_scale_2, input_scale optional; int8/int4:
    scale = weight_scale. A packed int4 tensor (``dsv3 convert --pack``): weight_packed (uint8, 64-byte
    aligned), shape = (N, K), params group (and ``packed="int4p"``), no weight / scale. Arrays are
    checked (dtype, shape, contiguity, alignment) and kept as given.
    """
    _check_fmt(fmt)
    if weight_packed is not None:
        if weight is not None or scale is not None:
            raise ValueError(f"from_checkpoint: a packed {fmt} tensor has only its packed array "
                             f"({PACKED_ARRAY}), not weight / scale as well")
        if shape is None:
            raise ValueError("from_checkpoint: a packed tensor needs its shape (N, K)")
        if params.get("packed", INT4P_LAYOUT) != INT4P_LAYOUT:
            raise ValueError(f"from_checkpoint: params say layout {params['packed']!r} but the packed array "
                             f"({PACKED_ARRAY}, layout {INT4P_LAYOUT!r}) is given")
        params = dict(params, packed=INT4P_LAYOUT)
        return _validate(QuantizedTensor(fmt, shape, {PACKED_ARRAY: weight_packed}, params))
    if params.get("packed") == INT4P_LAYOUT:
        raise ValueError(f"from_checkpoint: params say packed layout {INT4P_LAYOUT!r} but no packed array "
                         f"({PACKED_ARRAY}) is given")
    if not isinstance(weight, np.ndarray) or weight.ndim != 2:
        raise ValueError(f"from_checkpoint: weight must be a 2-D numpy array, got {type(weight).__name__}"
                         + (f" with shape {weight.shape}" if isinstance(weight, np.ndarray) else ""))
    n, kk = weight.shape
    shape = (n, 2 * kk) if fmt in ("nvfp4", "int4") else (n, kk)
    arrays = {"weight": weight}
    if fmt in _SCALE_NAME:
        if scale is None:
            raise ValueError(f"from_checkpoint: {fmt} needs scale ({_SCALE_NAME[fmt]})")
        arrays[_SCALE_NAME[fmt]] = scale
    elif scale is not None:
        raise ValueError(f"from_checkpoint: {fmt} has no scale")
    if fmt == "nvfp4":
        if scale2 is None:
            raise ValueError("from_checkpoint: nvfp4 needs scale2 (weight_scale_2)")
        arrays["weight_scale_2"] = scale2
        if input_scale is not None:
            arrays["input_scale"] = input_scale
    return _validate(QuantizedTensor(fmt, shape, arrays, params))


def stored_layout(qt):
    """``qt`` in the checkpoint layout, recorded as version ``PACKED_LAYOUT`` ("ckpt-1") in
    ``params['packed']``: shares the arrays (a packed tensor is unpacked: an owned copy)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"stored_layout expects a QuantizedTensor, got {type(qt).__name__}")
    if qt.is_packed:
        qt = unpack(qt)
    params = dict(qt.params)
    params["packed"] = PACKED_LAYOUT
    return QuantizedTensor(qt.fmt, qt.shape, qt.arrays, params)


def pack(qt):
    """The kernel layout of ``qt``: for int4 the packed layout (params ``packed`` = "int4p", one array
    ``weight_packed`` built by ``lib.pack_weight``: one pass over the codes, an owned array); for the formats
    without one (``lib.packed_formats()``) the checkpoint layout itself (:func:`stored_layout`: the arrays are
    shared). An already packed tensor is returned as it is."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"pack expects a QuantizedTensor, got {type(qt).__name__}")
    if qt.is_packed:
        return qt
    if qt.fmt not in lib.packed_formats():
        return stored_layout(qt)
    params = {k: v for k, v in qt.params.items() if k != "packed"}
    params["packed"] = INT4P_LAYOUT
    return QuantizedTensor(qt.fmt, qt.shape, {PACKED_ARRAY: lib.pack_weight(qt.to_native())}, params)


def unpack(qt):
    """The stored (checkpoint) layout of a packed tensor (:func:`pack`'s inverse, bit for bit; owned arrays of
    the stored size, one pass in C); other tensors are returned as they are."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"unpack expects a QuantizedTensor, got {type(qt).__name__}")
    if not qt.is_packed:
        return qt
    out = lib.unpack_weight(qt.to_native())
    params = {k: v for k, v in qt.params.items() if k != "packed"}
    return QuantizedTensor(qt.fmt, qt.shape, {"weight": out["data"], _SCALE_NAME[qt.fmt]: out["scale"]}, params)
