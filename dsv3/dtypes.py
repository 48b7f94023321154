"""Storage dtypes of DeepSeek checkpoints: conversions to and from float32, and zero-copy import of
DLPack tensors (torch) as numpy arrays.

Conversions run in C on every ISA path (scalar / avx2 / avx512) and equal ml_dtypes bit for bit:
bfloat16, float8_e4m3fn, float8_e5m2, float8_e8m0fnu (ue8m0 scales) and float4_e2m1fn (one code
per byte; NVFP4 weights pack two per byte, see dsv3.quant).
"""
import ml_dtypes
import numpy as np

from ._native import lib

#: dtype name -> numpy dtype for every storage dtype the converters handle
DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
    "float4_e2m1fn": np.dtype(ml_dtypes.float4_e2m1fn),
}
_ALIASES = {"f32": "float32", "bf16": "bfloat16", "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2",
            "ue8m0": "float8_e8m0fnu", "e2m1": "float4_e2m1fn"}


def dtype_name(dtype):
    """Canonical name ('bfloat16', 'float8_e4m3fn', ...) of a numpy dtype, type, torch dtype, name or
    alias ('bf16', 'f32', 'e4m3', ...): the one place dsv3 reads a dtype spelling.

    Raises TypeError for dtypes dsv3 does not convert.
    """
    if isinstance(dtype, str) and dtype in _ALIASES:
        return _ALIASES[dtype]
    if type(dtype).__module__ == "torch":  # torch.bfloat16 etc., without importing torch
        dtype = str(dtype).removeprefix("torch.")
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"not a dtype: {dtype!r}") from e
    for name, d in DTYPES.items():
        if dt == d:
            return name
    raise TypeError(f"unsupported dtype {dt}: expected one of {', '.join(DTYPES)}")


def _check_array(a, what):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")


def to_float32(a, isa=None):
    """Decode an array of a storage dtype to a new float32 array of the same shape.

    ``a``: C-contiguous numpy array of dtype bfloat16, float8_e4m3fn, float8_e5m2, float8_e8m0fnu,
    float4_e2m1fn (or float32: copied). ``isa``: None (active path) or 'scalar'/'avx2'/'avx512'.
    Bit-exact with ``a.astype(numpy.float32)`` under ml_dtypes, NaNs included.
    """
    _check_array(a, "to_float32: a")
    dtype_name(a.dtype)
    return lib.convert(a, "float32", isa=isa)


def from_float32(a, dtype, isa=None):
    """Encode a float32 array as ``dtype`` (name, alias such as 'e4m3'/'ue8m0', or ml_dtypes type).

    Rounds to nearest even like ml_dtypes: e4m3fn overflow and inf become NaN, e5m2 overflow becomes
    inf, e2m1 saturates at +-6, ue8m0 rounds halfway cases up and maps zero/negatives to NaN.
    Returns a new array of the same shape (float4_e2m1fn: one code per byte).
    """
    _check_array(a, "from_float32: a")
    if a.dtype != np.float32:
        raise TypeError(f"from_float32: a must be float32, got {a.dtype}")
    return lib.convert(a, dtype_name(dtype), isa=isa)


def as_array(obj):
    """Zero-copy numpy view of ``obj``: a numpy array is returned as is; any object with
    ``__dlpack__`` (torch tensors included) is imported through DLPack, keeping the producer's
    memory alive for as long as the array (or a view of it) lives.

    Supported DLPack tensors: CPU, C-contiguous, dtype float32, float16, bfloat16, float8_e4m3fn,
    float8_e5m2, float8_e8m0fnu, uint8, int8, int32, int64 (bf16/fp8 come back as ml_dtypes arrays).
    Raises TypeError for other objects or dtypes, ValueError for non-CPU or non-contiguous tensors.
    """
    if isinstance(obj, np.ndarray):
        return obj
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"as_array: expected a numpy array or an object with __dlpack__, got "
                        f"{type(obj).__name__}")
    return lib.from_dlpack(obj)
