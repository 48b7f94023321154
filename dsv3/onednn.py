"""oneDNN: located in the onednn-cpu-gomp wheel and loaded at run time (dlopen, once, lazily).

The extension has no link-time dependency on oneDNN: when the library is missing, dsv3 still works
and ``status()`` says why oneDNN is unavailable. ``DSV3_ONEDNN_LIB`` overrides the library path.
"""
import os
import sys
import threading

from ._native import lib

_lock = threading.Lock()
_state = None  # {"onednn": version or None, "onednn_error": reason or None}


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
    """{"onednn": "3.2.0 (gomp)" or None, "onednn_error": None or why it could not be loaded}.

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
        return dict(_state)


def available():
    """True when oneDNN is loaded (loading it on first use)."""
    return status()["onednn"] is not None


def linear(x, w, bias=None):
    """y = x @ w.T (+ bias) with oneDNN: x float32 [m, k], w float32 or bfloat16 [n, k], bias float32 [n].

    For bfloat16 weights x is rounded to bfloat16 first (oneDNN's bf16 matmul takes bf16 inputs);
    accumulation and output are float32. Raises RuntimeError when oneDNN is unavailable.
    """
    st = status()
    if st["onednn"] is None:
        raise RuntimeError(f"oneDNN is unavailable: {st['onednn_error']}")
    return lib.onednn_linear(x, w, bias)
