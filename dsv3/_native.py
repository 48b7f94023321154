"""Loads the C extension once: registers ml_dtypes' dtypes with it and loads oneDNN.

OpenMP wait policy. GNU OpenMP's default lets idle threads spin for ~300000 iterations after each
parallel region. On machines whose cores are shared with other work (cloud VMs, CI, several jobs on
2 cores), the spinning threads steal the CPU from the thread that still has work: decode was
measured 3-10x slower there. Unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, dsv3 sets
GOMP_SPINCOUNT=1000 (~20 us of spinning, then sleep) before libgomp starts: on an idle machine this
costs nothing measurable (decode within noise of the default), under contention it keeps the fast
case (see BENCHMARKS.md, "Forward pass"). libgomp reads its environment once, when it is loaded:
if another library loaded it earlier (e.g. ``import torch`` before ``import dsv3``, which shares
torch's libgomp), the setting cannot apply; ``OMP_WAIT_POLICY_APPLIED`` says what happened.

Environment settings. ``DSV3_ISA`` (scalar / avx2 / avx512) and ``DSV3_NUM_THREADS`` (1..4096) are
applied here, after the extension is loaded, through the same C setters as ``dsv3.set_isa`` and
``dsv3.set_num_threads``: a value they refuse (a typo, an ISA this CPU lacks) gives a
``RuntimeWarning`` saying what was wrong and what is used instead, and ``import dsv3`` goes on
(the C core's own start-up does not see them, so it cannot fail on them).
"""
import os
import warnings
from importlib.machinery import EXTENSION_SUFFIXES

import ml_dtypes

DEFAULT_SPINCOUNT = "1000"
_ENV_SETTINGS = ("DSV3_ISA", "DSV3_NUM_THREADS")


def _set_default_wait_policy():
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "user"
    try:
        with open("/proc/self/maps") as f:
            if any("libgomp" in line for line in f):
                return "too late (libgomp already loaded)"
    except OSError:
        pass
    os.environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    return f"GOMP_SPINCOUNT={DEFAULT_SPINCOUNT}"


def _source_tree_without_extension():
    """The directory holding the dsv3 package when it is a source checkout with no built extension
    in it (setup.py and csrc/ beside it, no dsv3/_dsv3*.so), else None."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(pkg)
    if not (os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc"))):
        return None
    if any(os.path.exists(os.path.join(pkg, "_dsv3" + suffix)) for suffix in EXTENSION_SUFFIXES):
        return None
    return root


def _import_extension():
    try:
        from . import _dsv3
    except ImportError as e:
        root = _source_tree_without_extension()
        if root is None:
            raise ImportError(f"dsv3's C extension (dsv3._dsv3) cannot be loaded: {e}. Reinstall dsv3 "
                              "(pip install --force-reinstall dsv3, or pip install . from its source).") from e
        raise ImportError(
            f"you are importing dsv3 from its source tree ({root}) without a built C extension: the "
            "dsv3 package there has no _dsv3 module. Either build it in place (python setup.py build_ext "
            "--inplace), or install dsv3 (pip install .) and import it from another directory "
            "(Python puts the current directory first on sys.path, so this checkout hides the "
            "installed copy).") from e
    return _dsv3


def _apply_env(lib, settings):
    """Apply DSV3_ISA / DSV3_NUM_THREADS with the C setters; warn and keep the default on refusal."""
    isa = settings.get("DSV3_ISA")
    if isa:
        try:
            lib.set_isa(isa)
        except (ValueError, RuntimeError) as e:
            warnings.warn(f"DSV3_ISA={isa!r} ignored ({e}); using {lib.isa_info()[0]}, the best path this CPU "
                          "supports", RuntimeWarning, stacklevel=3)
    threads = settings.get("DSV3_NUM_THREADS")
    if threads:
        try:
            if not (threads.isascii() and threads.isdigit()):
                raise ValueError("not a positive integer")
            lib.set_num_threads(int(threads))
        except (ValueError, RuntimeError) as e:
            warnings.warn(f"DSV3_NUM_THREADS={threads!r} ignored ({e}; expected an integer 1..4096); using "
                          f"{lib.num_threads()} threads, the default", RuntimeWarning, stacklevel=3)


OMP_WAIT_POLICY_APPLIED = _set_default_wait_policy()

# the C core's start-up (run by the import) must not read the settings: _apply_env does
_settings = {k: os.environ.pop(k) for k in _ENV_SETTINGS if k in os.environ}
try:
    _dsv3 = _import_extension()  # after the environment above
finally:
    os.environ.update(_settings)  # child processes see them as the user set them

_dsv3._register_dtypes(bfloat16=ml_dtypes.bfloat16, float8_e4m3fn=ml_dtypes.float8_e4m3fn,
                       float8_e5m2=ml_dtypes.float8_e5m2, float8_e8m0fnu=ml_dtypes.float8_e8m0fnu,
                       float4_e2m1fn=ml_dtypes.float4_e2m1fn)
_apply_env(_dsv3, _settings)

lib = _dsv3
