"""CPU features, kernel path and threads."""
from ._native import lib


def cpu_info():
    """Detected CPU features, the kernel path in use, the thread count and the oneDNN version.

    Returns a dict (a :class:`dsv3.display.Summary`, a table in notebooks): ``isa`` (active path), ``supported_isas``, ``features`` (CPUID flags),
    ``num_threads``, and oneDNN's state (:func:`dsv3.onednn.status`): ``onednn`` (version string,
    or None when oneDNN could not be loaded, with ``onednn_error`` saying why), ``onednn_isa`` and
    ``onednn_matmul`` ({"float32": bool, "bfloat16": bool}: whether oneDNN has that matmul here;
    dsv3 routes to oneDNN only where it has). Tests that need an ISA or a oneDNN primitive ask here.
    """
    active, supported = lib.isa_info()
    info = {"isa": active, "supported_isas": supported, "features": lib.cpu_features(),
            "num_threads": lib.num_threads()}
    from . import onednn
    info.update(onednn.status())
    from .display import Summary
    return Summary(info, title="dsv3 CPU")


def set_num_threads(n):
    """Set the number of threads every parallel C region uses (also: env DSV3_NUM_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    lib.set_num_threads(n)


def get_num_threads():
    return lib.num_threads()


def set_isa(name):
    """Force the kernel path ('scalar', 'avx2', 'avx512'); also: env DSV3_ISA at import."""
    lib.set_isa(name)
