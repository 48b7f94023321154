"""`dsv3 chat --speculative mtp`: speculative decoding with the checkpoint's MTP layer in the chat CLI."""
import functools
import io
import os
import re
import subprocess
import sys
import tempfile

import dsv3
from dsv3.parity import default_config
from dsv3.testing.checkpoints import write_checkpoint
from serve_helpers import checkpoint_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def mtp_checkpoint_dir():
    """The serving tests' random checkpoint (embedded default config, f32, tokenizer files) with an MTP layer."""
    d = os.path.join(tempfile.mkdtemp(prefix="dsv3-chat-mtp-"), "ckpt")
    cfg = dsv3.load_config(default_config())
    write_checkpoint(d, cfg, layout="hf", dtype="float32", shards=1, scale=cfg.hidden_size ** -0.5, tokenizer=True,
                     mtp=True)
    return d


def _replies(text):
    """The reply texts of a chat transcript (what precedes each stats line)."""
    parts = re.split(r"\n\[\d+ tokens, [^\]\n]*\]\n", text.split("\n", 1)[1])  # after the banner line
    return parts[:-1]


def test_chat_speculative_greedy_replies_equal_plain():
    from dsv3.cli_chat import chat
    m = dsv3.Model.from_pretrained(mtp_checkpoint_dir(), max_seq_len=160, mtp=True)
    turns = "Hi\nTell me more\n"
    plain, spec = io.StringIO(), io.StringIO()
    assert chat(m, system="Be brief.", max_new_tokens=12, temperature=0, stdin=io.StringIO(turns), stdout=plain) == 2
    assert chat(m, system="Be brief.", max_new_tokens=12, temperature=0, stdin=io.StringIO(turns), stdout=spec,
                speculative="mtp", num_draft=3) == 2
    a, b = plain.getvalue(), spec.getvalue()
    assert _replies(a) == _replies(b) and len(_replies(a)) == 2
    assert b.count("of drafts accepted") == 2 and "of drafts accepted" not in a
    assert m.speculative_stats.rounds > 0  # the last reply really ran speculatively
    # the second reply continues the conversation the first one built, as plain generate does
    hist = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    first = m.generate(hist, 12)
    assert _replies(b)[0] == first


def test_chat_command_speculative_mtp():
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = [sys.executable, "-m", "dsv3", "chat", mtp_checkpoint_dir(), "--max-new-tokens", "6", "--temperature", "0",
            "--max-seq-len", "64"]
    r = subprocess.run(args + ["--speculative", "mtp", "--num-draft", "2"], input="Hello\n", env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("tokens/s") == 1 and "of drafts accepted" in r.stdout
    plain = subprocess.run(args, input="Hello\n", env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert _replies(plain.stdout) == _replies(r.stdout)


def test_chat_command_speculative_without_mtp_layer_says_so():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "dsv3", "chat", checkpoint_dir(), "--speculative", "mtp",
                        "--max-seq-len", "64"], input="Hello\n", env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "MTP layer" in r.stderr and "--keep-mtp" in r.stderr and "Traceback" not in r.stderr
