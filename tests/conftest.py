import os
import subprocess
import sys

import pytest


def run_python(code, env_extra=None, timeout=300):
    """Run python code in a fresh interpreter (e.g. under another DSV3_ISA); returns CompletedProcess."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def python_run():
    return run_python
