"""`dsv3 chat` driven through stdin, and `dsv3 serve` started as a command on 127.0.0.1."""
import io
import os
import subprocess
import sys

import pytest

from serve_helpers import checkpoint_dir, load, served

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_chat_loop_streams_replies():
    from dsv3.cli_chat import chat
    m = load(max_seq_len=128)
    out = io.StringIO()
    turns = chat(m, system="Be brief.", max_new_tokens=6, temperature=0, stdin=io.StringIO("Hi\n\n/reset\nHello 🙂\n/quit\nignored\n"),
                 stdout=out)
    text = out.getvalue()
    assert turns == 2 and "(conversation reset)" in text and text.count("tokens/s") == 2
    first = m.generate([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], 6)
    assert first in text


def test_chat_command_reads_stdin():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "dsv3", "chat", checkpoint_dir(), "--max-new-tokens", "4",
                        "--temperature", "0", "--max-seq-len", "64"], input="Hello\nHi again\n", env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("tokens/s") == 2


def test_serve_command_answers_on_loopback():
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    with served(checkpoint_dir(), "--model-name", "tiny") as port:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == load(64).generate("Hello", 3)
