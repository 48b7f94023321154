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
