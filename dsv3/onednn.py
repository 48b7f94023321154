"""oneDNN: located in the onednn-cpu-gomp wheel and loaded at run time (dlopen, once, lazily).

The extension has no link-time dependency on oneDNN: when the library is missing, dsv3 still works
and ``status()`` says why oneDNN is unavailable. ``DSV3_ONEDNN_LIB`` overrides the library path.

Loaded is not enough: oneDNN 3.2 has no bf16 matmul below AVX-512 (e.g. on AMD Zen 3). Whether it
has one for a dtype on this CPU is asked once (:func:`supports`) and dsv3 routes a linear to oneDNN
only where it has; elsewhere dsv3's own kernels run. oneDNN's ISA is its own best unless limited:
``ONEDNN_MAX_CPU_ISA=AVX2`` (read by oneDNN) or a ``DSV3_ISA`` forced below the CPU's best when
oneDNN is first loaded (dsv3 then limits oneDNN to the same level), so an AVX-512 machine can
stand for an AVX2-only one, oneDNN included.
"""
import os
import sys
import threading

from ._native import lib

_lock = threading.Lock()
_state = None  # see status()
MATMUL_DTYPES = ("float32", "bfloat16")


def find_library():
    """Path of libdnnl.so.3: $DSV3_ONEDNN_LIB, else the onednn-cpu-gomp distribution's files, else
    <prefix>/lib. Raises OSError naming the places searched."""
    env = os.environ.get("DSV3_ONEDNN_LIB")
    if env:
        return env
    tried = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        try:
            dist = distribution("onednn-cpu-gomp")
            for f in dist.files or []:
                if os.path.basename(str(f)) == "libdnnl.so.3":
                    path = os.path.realpath(str(dist.locate_file(f)))
                    if os.path.exists(path):
                        return path
                    tried.append(path)
        except PackageNotFoundError:
            tried.append("distribution onednn-cpu-gomp (not installed)")
    except ImportError:  # pragma: no cover
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = os.path.join(prefix, "lib", "libdnnl.so.3")
        if os.path.exists(path):
            return path
        tried.append(path)
    raise OSError("libdnnl.so.3 not found (install onednn-cpu-gomp==2023.2.0); looked in: " + ", ".join(tried))


def status():
    """What oneDNN dsv3 has: a dict with

    - ``onednn``: version ("3.2.0 (gomp)"), or None when it could not be loaded;
    - ``onednn_error``: why it could not be loaded, else None;
    - ``onednn_isa``: the ISA oneDNN's kernels use ("avx512_core_bf16", "avx2", ...), or None;
    - ``onednn_matmul``: {"float32": bool, "bfloat16": bool}, whether it has a matmul for weights
      of that dtype on this CPU (all False when not loaded).

    The first call locates and loads the library; later calls return the same answer.
    """
    global _state
    with _lock:
        if _state is None:
            try:
                version = lib.onednn_load(find_library())
                _state = {"onednn": version, "onednn_error": None}
            except (OSError, RuntimeError, ValueError) as e:
                _state = {"onednn": None, "onednn_error": str(e)}
            _state["onednn_isa"] = lib.onednn_isa()
            _state["onednn_matmul"] = {dt: lib.onednn_supports(dt) for dt in MATMUL_DTYPES}
        out = dict(_state)
        out["onednn_matmul"] = dict(_state["onednn_matmul"])
        return out


def supports(dtype):
    """True when oneDNN is loaded and has a matmul for weights of ``dtype`` ("float32" or
    "bfloat16", or a numpy dtype of either) on this CPU (loading it on first use). False for
    bfloat16 below AVX-512 (oneDNN 3.2), where dsv3's own kernels run instead."""
    import numpy as np
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in MATMUL_DTYPES:
        raise ValueError(f"oneDNN matmul dtypes are {', '.join(MATMUL_DTYPES)}; got {dtype!r}")
    return status()["onednn_matmul"][name]


def why_not(dtype):
    """The reason :func:`supports` is False for ``dtype`` (for test skips and messages), or None."""
    st = status()
    if st["onednn"] is None:
        return f"oneDNN unavailable: {st['onednn_error']}"
    if not supports(dtype):
        return (f"oneDNN {st['onednn']} has no {dtype} matmul on this CPU (oneDNN ISA {st['onednn_isa']}; "
                "oneDNN 3.2 needs AVX-512 for bf16)")
    return None


def available():
    """True when oneDNN is loaded (loading it on first use)."""
    return status()["onednn"] is not None


def linear(x, w, bias=None):
    """y = x @ w.T (+ bias) with oneDNN: x float32 [m, k], w float32 or bfloat16 [n, k], bias float32 [n].

    For bfloat16 weights x is rounded to bfloat16 first (oneDNN's bf16 matmul takes bf16 inputs);
    accumulation and output are float32. Raises RuntimeError when oneDNN is unavailable or has no
    matmul for w's dtype on this CPU (see :func:`supports`).
    """
    st = status()
    if st["onednn"] is None:
        raise RuntimeError(f"oneDNN is unavailable: {st['onednn_error']}")
    return lib.onednn_linear(x, w, bias)
