"""dsv3: run, check and convert DeepSeek-V3-family models on CPUs, with a C99 compute core."""
from ._native import lib as _lib  # noqa: F401  (loads the extension, registers dtypes)
from . import ops, quant
from .checkpoint import open_checkpoint
from .config import DeepseekConfig, load_config
from .cpu import cpu_info, get_num_threads, set_isa, set_num_threads
from .model import Model
from .tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["cpu_info", "set_num_threads", "get_num_threads", "set_isa", "DeepseekConfig", "load_config",
           "open_checkpoint", "Model", "Tokenizer", "ops", "quant"]
from . import convert  # noqa: E402,F401  (dsv3.convert(src, dst, format=...) is callable)
