"""dsv3: run, check and convert DeepSeek-V3-family models on CPUs, with a C99 compute core."""
from ._native import lib as _lib  # noqa: F401  (loads the extension, registers dtypes)
from .cpu import cpu_info, get_num_threads, set_isa, set_num_threads

__version__ = "0.1.0"
__all__ = ["cpu_info", "set_num_threads", "get_num_threads", "set_isa"]
from . import ops, quant  # noqa: E402,F401  (quantised linear layers)
