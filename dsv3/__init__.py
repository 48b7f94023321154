"""dsv3: run, check and convert DeepSeek-V3-family models on CPUs, with a C99 compute core."""
from ._native import lib as _lib  # noqa: F401  (loads the extension, registers dtypes)
from .cpu import cpu_info, get_num_threads, set_isa, set_num_threads

__version__ = "0.1.0"
__all__ = ["cpu_info", "set_num_threads", "get_num_threads", "set_isa"]
from .config import DeepseekConfig, load_config  # noqa: E402
__all__ += ["DeepseekConfig", "load_config"]
from .checkpoint import open_checkpoint  # noqa: E402
__all__ += ["open_checkpoint"]
