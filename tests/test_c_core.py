"""The C core as a library of its own: csrc/tests/*.c (a plain-C99 runner, no Python, no numpy) is
compiled with the core sources under AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer on)
and run; any failed check or sanitizer report fails this test with the program's output.

The per-file ISA flags come from setup.py's ISA_FLAGS table (read with ast, setup() is not run), so
the kernels are built exactly as in the extension. The Python binding (csrc/python) and oneDNN
(csrc/onednn, dlopened at run time and needing its headers) are not part of the program:
csrc/tests/onednn_absent.c stands for a oneDNN that is not loaded.
"""
import ast
import concurrent.futures
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXCLUDED = ("python", "onednn", "tests")  # top-level folders of csrc/ that are not the core
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
CFLAGS = ["-std=c99", "-O1", "-g", "-fopenmp", "-Wall", "-Wextra", "-fno-strict-aliasing", "-D_GNU_SOURCE",
          *SAN_FLAGS, "-I" + os.path.join(ROOT, "csrc", "include"), "-I" + os.path.join(ROOT, "csrc")]
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehavior")


def setup_isa_flags():
    """setup.py's ISA_FLAGS table ({file suffix: [flags]}), evaluated without running setup()."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ISA_FLAGS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no ISA_FLAGS table")


def sources():
    """The core's C files (as setup.py collects them, minus the binding and oneDNN) and the runner."""
    core = [s for s in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.c"), recursive=True))
            if os.path.relpath(s, os.path.join(ROOT, "csrc")).split(os.sep)[0] not in EXCLUDED]
    tests = sorted(glob.glob(os.path.join(ROOT, "csrc", "tests", "*.c")))
    return core, tests


def compile_one(gcc, src, obj, isa_flags):
    extra = [f for suffix, flags in isa_flags.items() if src.endswith(suffix) for f in flags]
    r = subprocess.run([gcc, *CFLAGS, *extra, "-c", src, "-o", obj], capture_output=True, text=True)
    return src, r.returncode, r.stderr


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the C core tests need gcc with AddressSanitizer/UBSan")
    out = tmp_path_factory.mktemp("ctests")
    isa_flags = setup_isa_flags()
    core, tests = sources()
    jobs = [(s, str(out / (os.path.relpath(s, ROOT).replace(os.sep, "_")[:-2] + ".o"))) for s in core + tests]
    jobs.sort(key=lambda j: -os.path.getsize(j[0]))  # the big kernel files first: two jobs end together
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: compile_one(gcc, j[0], j[1], isa_flags), jobs))
    errors = [f"{src}:\n{err}" for src, rc, err in results if rc != 0]
    assert not errors, "compiling the C core tests failed:\n" + "\n".join(errors)
    warnings = [f"{src}:\n{err}" for src, rc, err in results if err.strip() and src in tests]
    assert not warnings, "warnings in csrc/tests:\n" + "\n".join(warnings)
    exe = str(out / "test_core")
    r = subprocess.run([gcc, *SAN_FLAGS, "-fopenmp", "-o", exe, *(o for _, o in jobs), "-lm", "-ldl"],
                       capture_output=True, text=True)
    assert r.returncode == 0, "linking the C core tests failed:\n" + r.stderr
    return exe


def c_concerns():
    """The runner's concerns, read from its table in csrc/tests/test_core.c (the one list: a concern added
    there is run here; a name matched only exactly, so a list written here once missed linear_plan)."""
    import re
    with open(os.path.join(ROOT, "csrc", "tests", "test_core.c")) as f:
        names = re.findall(r'\{"(\w+)", test_\w+\}', f.read())
    assert names, "no concern table found in csrc/tests/test_core.c"
    return names


@pytest.mark.parametrize("concern", c_concerns())
def test_c_core(runner, concern):
    """Runs one concern of the C runner under ASan/UBSan/LSan; its output is the failure message."""
    env = dict(os.environ)
    env.pop("DSV3_ISA", None)  # the runner tests every ISA itself
    # allocator_may_return_null: a size no machine holds must come back as a status, not an ASan abort
    env.update(ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1:"
                            "allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", OMP_NUM_THREADS="2")
    r = subprocess.run([runner, concern], capture_output=True, text=True, env=env, timeout=300)
    output = r.stdout + r.stderr
    assert r.returncode == 0 and not any(m in output for m in SANITIZER_MARKS), \
        f"C core tests ({concern}) failed with exit code {r.returncode}:\n{output[-20000:]}"
    assert f"{concern} " in r.stdout and "OK:" in r.stdout, output
