"""Model.forward reads the token ids it checked, not the caller's array again (issue 9, item 2).

The binding copies the ids while it holds the GIL and the core checks and reads only that copy.
Before, the core checked the caller's array with the GIL released and read it again to gather the
embedding rows: a thread writing an out-of-range id in between made it read far outside the
embedding (a crash). Here a thread flips the last id between a valid and a huge value as fast as it
can while the main thread runs forward again and again, for a few seconds, in a child process (a
crash must not take pytest down): every call must either succeed or reject the id with a
ValueError, and the child must exit normally. Before the fix the child crashed (SIGSEGV) in 3 of 3
runs of this test.
"""
import os
import subprocess
import sys

from dsv3.testing.checkpoints import tiny_config, write_checkpoint

_CHILD = r"""
import sys, threading, time
import numpy as np
from numpy.lib.stride_tricks import as_strided
import dsv3
m = dsv3.Model.from_pretrained(sys.argv[1], max_seq_len=16)
S = 16  # a cheap forward: many calls, each a chance to hit the window between check and read
ids = np.full(S, 5, np.int64)
good = m.forward(ids)[-1].copy()
BAD = 1 << 50  # its embedding row is at a non-canonical address: reading it crashes
# the writer: numpy copies a [BAD, 5, BAD, 5, ...] array into a stride-0 view of ids[-1] with the
# GIL released, so the last id flips millions of times a second while forward runs (a Python loop
# would hold the GIL and flip only when it gets it back, rarely inside the window)
last = as_strided(ids[-1:], shape=(1 << 20,), strides=(0,))
flips = np.tile(np.array([BAD, 5], np.int64), 1 << 19)
stop = threading.Event()

def flip():
    while not stop.is_set():
        np.copyto(last, flips)

t = threading.Thread(target=flip)
t.start()
ok = rejected = 0
end = time.monotonic() + float(sys.argv[2])
try:
    while time.monotonic() < end or (ok == 0 or rejected == 0) and time.monotonic() < end + 60:
        m.reset()
        try:
            out = m.forward(ids)
        except ValueError as e:
            assert "out of range" in str(e), e
            rejected += 1
            continue
        np.testing.assert_array_equal(out[-1], good)  # computed from the id that was checked
        ok += 1
finally:
    stop.set()
    t.join()
print("ok", ok, rejected)
"""


def test_ids_changed_by_another_thread_during_forward(tmp_path):
    ckpt = write_checkpoint(str(tmp_path / "ckpt"), tiny_config(num_hidden_layers=1), dtype="float32")
    # one compute thread: the writer thread gets the other core
    env = dict(os.environ, DSV3_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, ckpt, "5"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"child exited with {r.returncode} (negative: killed by a signal)\n{r.stderr[-3000:]}"
    words = r.stdout.split()
    assert words[0] == "ok" and int(words[1]) > 0 and int(words[2]) > 0, r.stdout
