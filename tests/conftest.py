import os
import subprocess
import sys

import pytest


def pytest_report_header(config):
    """Which kernel path and oneDNN the run uses: CI logs must say which ISA the suite ran on."""
    return _platform_lines()


def pytest_terminal_summary(terminalreporter):
    """With -q (the README's command) pytest prints no header: say it at the end instead."""
    if terminalreporter.verbosity < 0:
        terminalreporter.section("dsv3 platform")
        for line in _platform_lines():
            terminalreporter.write_line(line)


def _platform_lines():
    try:
        import dsv3
        info = dsv3.cpu_info()
    except Exception as e:  # the tests will report the failure itself
        return [f"dsv3: cannot import ({type(e).__name__}: {e})"]
    forced = os.environ.get("DSV3_ISA")
    lines = [f"dsv3 {dsv3.__version__}: kernel path {info['isa']}"
             f" ({'forced by DSV3_ISA' if forced else 'the best this CPU supports'}; CPU supports "
             f"{', '.join(info['supported_isas'])}), {info['num_threads']} threads"]
    if info["onednn"] is None:
        lines.append(f"oneDNN: unavailable ({info['onednn_error']})")
    else:
        has = [dt for dt, ok in info["onednn_matmul"].items() if ok]
        lacks = [dt for dt, ok in info["onednn_matmul"].items() if not ok]
        limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
        lines.append(f"oneDNN {info['onednn']}: ISA {info['onednn_isa']}"
                     + (f" (ONEDNN_MAX_CPU_ISA={limit})" if limit else "")
                     + f"; matmul for {', '.join(has) or 'nothing'}"
                     + (f"; none for {', '.join(lacks)} (those tests skip, dsv3's kernels run)" if lacks else ""))
    return lines


def run_python(code, env_extra=None, timeout=300):
    """Run python code in a fresh interpreter (e.g. under another DSV3_ISA); returns CompletedProcess."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def python_run():
    return run_python
