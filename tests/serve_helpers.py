"""A random-weight checkpoint with a tokenizer written by dsv3.testing (shared by the serving tests)."""
import functools
import os
import tempfile

import dsv3
from dsv3.parity import default_config
from dsv3.testing.checkpoints import write_checkpoint


@functools.lru_cache(maxsize=None)
def checkpoint_dir(dtype="float32"):
    """The embedded default config (vocab 512), float32 or bfloat16 weights ~ N(0, 1/hidden), tokenizer files."""
    d = os.path.join(tempfile.mkdtemp(prefix="dsv3-serve-test-"), dtype)
    cfg = dsv3.load_config(default_config())
    write_checkpoint(d, cfg, layout="hf", dtype=dtype, shards=1, scale=cfg.hidden_size ** -0.5, tokenizer=True)
    return d


def load(max_seq_len=256, dtype="float32"):
    return dsv3.Model.from_pretrained(checkpoint_dir(dtype), max_seq_len=max_seq_len)
