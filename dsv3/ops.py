"""Single operations on numpy arrays (each one C call)."""
import ml_dtypes
import numpy as np

from ._native import lib
from . import onednn
from . import quant as _quant
from .quant import QuantizedTensor


def linear(x, w, bias=None, mode="weight_only", isa=None, precision=None):
    """y = x W^T (+ bias), float32.

    x: float32 or bfloat16 [..., K] (C-contiguous); w: QuantizedTensor, or a float32/bfloat16 array
    [N, K]; bias: float32 [N] or None. mode "weight_only" decodes weights in registers and keeps
    activations in f32 (large M on AVX-512: bf16 dot); "dynamic" quantises activations per token like
    DeepSeek's act_quant + fp8_gemm (fp8_block) or symmetric int8 per token (int8). isa forces a kernel
    path ("scalar", "avx2", "avx512"); None uses the active one.
    precision (mode "weight_only", small M): "exact" keeps activations at f32 level; "fast" lets int8/int4
    weights use activations quantised per block of 32 to int8 with integer dots, and fp8_block/nvfp4/bf16
    on AVX-512 x rounded to bf16 (see dsv3.quant.PRECISIONS); on AVX2 int4 weights keep the Q8 integer dots
    at large M too (from 12 rows); None is "exact"
    (dsv3.quant.OPS_DEFAULT_PRECISION: unlike dsv3.Model, whose default is the engine's "fast").

    With DSV3_LINEAR_ONEDNN=1 (opt-in), on the active path (isa None), float32 weights with >= 8 rows
    of x and bfloat16 weights with >= 32 rows run on oneDNN's matmul when oneDNN is available (loaded
    here on first use; measured faster for those shapes, see csrc/linear/linear.c). It is off by
    default because oneDNN's results can change with the thread count on small shapes; dsv3's own
    kernels never do.
    """
    precision = _quant.check_precision(precision, default=_quant.OPS_DEFAULT_PRECISION)
    native = w.to_native() if isinstance(w, QuantizedTensor) else w
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if (isa is None and isinstance(native, np.ndarray) and native.dtype in (np.float32, ml_dtypes.bfloat16)
            and x.ndim >= 1 and x.size >= 8 * max(x.shape[-1], 1)):
        onednn.status()  # loads oneDNN once (no-op afterwards; its absence is fine)
    if x.ndim == 2:
        return lib.linear(x, native, bias, mode, isa, precision)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension [..., K]")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use numpy.ascontiguousarray)")
    y = lib.linear(x.reshape(-1, x.shape[-1]), native, bias, mode, isa, precision)
    return y.reshape(x.shape[:-1] + (y.shape[-1],))
