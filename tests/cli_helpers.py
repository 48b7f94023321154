"""The `python -m dsv3 ...` subprocess the CLI tests run (this checkout first on PYTHONPATH)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env_extra=None, timeout=300):
    """Runs `python -m dsv3 *args` with this checkout importable; returns the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "dsv3", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def interrupted_convert_resumes_byte_identical(args, a, b):
    """`dsv3 <args>` (args has None where the destination goes) into a, failed after 25 tensors written
    (DSV3_CONVERT_FAIL_AFTER: exit 75, no config.json, finished and .partial shards left), then resumed: it keeps
    the finished shards and the result is byte for byte an uninterrupted conversion into b. Returns the
    directory listing of a after the failure (for the caller's own checks)."""
    def at(d):
        return [d if x is None else x for x in args]
    r = run_cli(*at(a), "--quiet", env_extra={"DSV3_CONVERT_FAIL_AFTER": "25"})
    assert r.returncode == 75, r.stderr
    names = os.listdir(a)
    assert "config.json" not in names
    done = [n for n in names if n.endswith(".safetensors")]
    assert done and any(n.endswith(".partial") for n in names)
    r = run_cli(*at(a))
    assert r.returncode == 0, r.stderr
    assert f"keeping {len(done)} of" in r.stderr
    r = run_cli(*at(b), "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for n in os.listdir(a):
        with open(os.path.join(a, n), "rb") as fa, open(os.path.join(b, n), "rb") as fb:
            assert fa.read() == fb.read(), n
    return names
