"""A random-weight checkpoint with a tokenizer written by dsv3.testing (shared by the serving tests)."""
import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time

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


def free_port():
    """A loopback TCP port nobody listens on (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_serve(ckpt, port, *extra):
    """`python -m dsv3 serve ckpt --port port --max-seq-len 64 *extra` as a subprocess of this source tree."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.Popen([sys.executable, "-m", "dsv3", "serve", ckpt, "--port", str(port), "--max-seq-len", "64",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def served(ckpt, *extra):
    """`dsv3 serve` on ckpt (start_serve), waited for until /health answers (up to 60 s; a server that died
    fails with its output); yields the port and stops the server at the end."""
    import httpx

    port = free_port()
    p = start_serve(ckpt, port, *extra)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if p.poll() is not None:
                break
            time.sleep(0.1)
        assert p.poll() is None, p.stdout.read()[-3000:]
        yield port
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
