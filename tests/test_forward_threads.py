"""Thread scaling of the forward pass: the MoE decode block splits every expert's output columns over all
threads (so more threads than routed experts still all work), results are bitwise independent of the thread
count on every path (decode, small and large prefill, every weight format), the logits option of forward,
and set_num_threads from another thread while a forward runs (issue 9, defect 1)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dsv3
import dsv3.quant
from hf_reference import build_hf, canonical_tensors, native_config

IDS = np.array([3, 17, 42, 5, 9, 11, 98, 0, 64, 23, 7, 7, 51, 2, 8, 33, 1, 90, 4, 6], dtype=np.int64)


@pytest.fixture
def threads():
    """Restores the thread count after the test."""
    before = dsv3.get_num_threads()
    yield
    dsv3.set_num_threads(before)


def model_of(name="yarn", fmt=None, attention="absorbed"):
    """dsv3.Model of test config `name`; fmt: every MLP / expert matrix quantised to that format."""
    hf = build_hf(name)
    tensors = canonical_tensors(hf)
    if fmt in ("fp8_block", "int4", "nvfp4", "int8"):
        for k, v in list(tensors.items()):
            if ".mlp." in k and v.ndim == 2 and ".gate.weight" not in k:
                tensors[k] = dsv3.quant.quantize(np.ascontiguousarray(v, np.float32), fmt)
    return dsv3.Model.from_tensors(native_config(hf.config), tensors, attention=attention, max_seq_len=64,
                                   dtype="bfloat16" if fmt == "bf16" else None)


def run(m, prefill):
    """Prefill IDS[:prefill], then decode 3 tokens; all the logits, concatenated."""
    m.reset()
    out = [m.forward(IDS[:prefill])]
    out += [m.forward(IDS[i:i + 1]) for i in range(prefill, prefill + 3)]
    return np.concatenate(out)


def test_moe_decode_every_thread_works(threads):
    """yarn: top-2 of 8 routed experts + 1 shared; 8 threads > 3 experts, and every thread ran linear work
    in the decode MoE block (the debug counter of the last block)."""
    m = model_of("yarn")
    dsv3.set_num_threads(8)
    m.forward(IDS[:3])
    m.forward(IDS[3:4])
    work = m._native._moe_work()
    assert len(work) == 8, work
    assert all(w > 0 for w in work), work
    # the split is a fixed partition of the same items: their total does not depend on the thread count
    dsv3.set_num_threads(1)
    m.forward(IDS[4:5])
    one = m._native._moe_work()
    assert len(one) == 1 and one[0] == sum(work), (one, work)


@pytest.mark.parametrize("fmt", [None, "bf16", "fp8_block", "int4", "nvfp4"])
def test_bitwise_identical_across_thread_counts(fmt, threads):
    """Decode (one region per MoE block), a prefill of 5 (decode path: s <= 8) and of 20 tokens (grouped
    rows per expert), with 1, 2, 3 and 8 threads: bitwise the same logits."""
    m = model_of("yarn", fmt)
    ref = None
    for n in (1, 2, 3, 8):
        dsv3.set_num_threads(n)
        got = np.concatenate([run(m, 5), run(m, 17)])
        if ref is None:
            ref = got
        else:
            assert np.array_equal(got, ref), f"{n} threads differ from 1 (max {np.max(np.abs(got - ref))})"


def test_grouped_config_bitwise_across_threads(threads):
    """grouped: top-3 of 16, 2 shared experts, 3 layers; naive attention too."""
    for attention in ("absorbed", "naive"):
        m = model_of("grouped", attention=attention)
        ref = None
        for n in (1, 3, 8):
            dsv3.set_num_threads(n)
            got = run(m, 4)
            ref = got if ref is None else ref
            assert np.array_equal(got, ref), (attention, n)


def test_logits_modes():
    m = model_of("yarn")
    full = m.forward(IDS[:7])
    after_full = m.forward(IDS[7:8], logits="all")
    m.reset()
    last = m.forward(IDS[:7], logits="last")
    assert last.shape == (1, full.shape[1]) and last.dtype == np.float32
    # the lm_head on one row: the same row of logits (same kernels per row at this M, f32 rounding at most)
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-5, atol=1e-5 * np.max(np.abs(full[-1])))
    m.reset()
    none = m.forward(IDS[:7], logits="none")
    assert none.shape == (0, full.shape[1])
    assert m.cache_len == 7
    # the cache does not depend on which logits were asked for
    assert np.array_equal(m.forward(IDS[7:8]), after_full)
    with pytest.raises(ValueError, match="logits"):
        m.forward(IDS[:1], logits="first")
    with pytest.raises(ValueError, match="logits"):
        m._native.forward(IDS[:1], logits="everything")
    assert m.cache_len == 8  # refused calls leave the cache alone


def test_generate_asks_for_the_last_logits():
    """generate (greedy) equals argmax over forward(..., logits='all') rows fed back one at a time."""
    m = model_of("yarn")
    got = m.generate(IDS[:5], 6)
    m.reset()
    row = m.forward(IDS[:5])[-1]
    want = []
    for _ in range(6):
        tok = int(np.argmax(row))
        want.append(tok)
        row = m.forward(np.array([tok], np.int64))[-1]
    assert list(got) == want


STRESS = textwrap.dedent("""
    import random, sys, threading, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    import dsv3
    from hf_reference import build_hf, canonical_tensors, native_config
    hf = build_hf("grouped")
    cfg, tensors = native_config(hf.config), canonical_tensors(hf)
    ids = np.arange(1, 60, dtype=np.int64) % 90
    rng = random.Random(0)
    errors = []
    dsv3.set_num_threads(1)
    want = {{}}
    for attention in ("naive", "absorbed"):
        ref = dsv3.Model.from_tensors(cfg, tensors, attention=attention, max_seq_len=64)
        want[attention] = [ref.forward(ids[:2]), ref.forward(ids[2:50]), ref.forward(ids[50:51])]
    stop = time.time() + {seconds}
    runs = 0
    while time.time() < stop:
        # a fresh model whose scratch was sized for 1 thread; 16 threads are set while its prefill runs
        # (after it sized its scratch, before the router / naive attention open their regions)
        dsv3.set_num_threads(1)
        attention = rng.choice(["naive", "absorbed"])
        m = dsv3.Model.from_tensors(cfg, tensors, attention=attention, max_seq_len=64)
        m.forward(ids[:2])

        def work():
            try:  # results do not depend on the thread count: the same logits as with 1 thread
                if not np.array_equal(m.forward(ids[2:50]), want[attention][1]):
                    errors.append(f"run {{runs}}: prefill logits differ ({{attention}})")
                if not np.array_equal(m.forward(ids[50:51]), want[attention][2]):
                    errors.append(f"run {{runs}}: decode logits differ ({{attention}})")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        t = threading.Thread(target=work)
        t.start()
        time.sleep(rng.uniform(0, 0.004))
        dsv3.set_num_threads(16)
        t.join()
        del m
        runs += 1
    print("runs", runs, "errors", errors[:5], len(errors))
    sys.exit(1 if errors else 0)
""")


def test_set_num_threads_during_forward_is_safe():
    """Issue 9 defect 1: set_num_threads (1 <-> 16) from one thread while two others run forward / probes
    must not corrupt the heap nor the results: every call pins the thread count it sized its scratch for. Fresh
    models sized for 1 thread see 16 set during their prefill; their logits must equal the 1-thread ones. Run in
    a child process (a corrupted heap aborts it), with glibc's heap checks on."""
    tests = os.path.dirname(os.path.abspath(__file__))
    # heap checks on, and no mmap for big blocks (an overflow then hits the next chunk's header)
    env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165", MALLOC_MMAP_THRESHOLD_="4294967295")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", STRESS.format(tests=tests, seconds=6)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
