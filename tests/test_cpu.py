import pytest

import dsv3
from dsv3._native import lib


def test_cpu_info_shape():
    info = dsv3.cpu_info()
    assert info["isa"] in ("scalar", "avx2", "avx512")
    assert info["isa"] in info["supported_isas"]
    assert "scalar" in info["supported_isas"]
    assert isinstance(info["features"], dict) and "avx2" in info["features"]
    assert info["num_threads"] >= 1


def test_threads_roundtrip():
    old = dsv3.get_num_threads()
    dsv3.set_num_threads(1)
    assert dsv3.get_num_threads() == 1
    dsv3.set_num_threads(old)
    with pytest.raises(ValueError, match="1..4096"):
        dsv3.set_num_threads(0)
    with pytest.raises(TypeError):
        dsv3.set_num_threads(1.5)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_env_forces_isa(python_run, isa):
    active, supported = lib.isa_info()
    best = supported[-1]
    r = python_run("import dsv3; print(dsv3.cpu_info()['isa'])", {"DSV3_ISA": isa})
    assert r.returncode == 0, r.stderr
    if isa in supported:
        assert r.stdout.strip() == isa
        assert "Warning" not in r.stderr, r.stderr
    else:  # an ISA this CPU lacks: a warning, and the best path it has
        assert r.stdout.strip() == best
        assert f"DSV3_ISA='{isa}' ignored" in r.stderr and "lacks" not in r.stdout
        assert f"using {best}" in r.stderr, r.stderr


@pytest.mark.parametrize("env,what", [
    ({"DSV3_ISA": "sse9"}, "DSV3_ISA='sse9' ignored (unknown ISA 'sse9'"),
    ({"DSV3_ISA": "AVX2 "}, "DSV3_ISA='AVX2 ' ignored"),
    ({"DSV3_NUM_THREADS": "two"}, "DSV3_NUM_THREADS='two' ignored (not a positive integer"),
    ({"DSV3_NUM_THREADS": "0"}, "DSV3_NUM_THREADS='0' ignored"),
    ({"DSV3_NUM_THREADS": "-3"}, "DSV3_NUM_THREADS='-3' ignored"),
    ({"DSV3_NUM_THREADS": "5000"}, "DSV3_NUM_THREADS='5000' ignored"),
    ({"DSV3_NUM_THREADS": "1e3"}, "DSV3_NUM_THREADS='1e3' ignored"),
])
def test_env_bad_values_warn_and_fall_back(python_run, env, what):
    """A bad DSV3_ISA / DSV3_NUM_THREADS does not make `import dsv3` fail: a RuntimeWarning says what
    was wrong and what is used instead (the best ISA / the default thread count), and it is left in
    the environment as the user set it."""
    default = python_run("import dsv3; print(dsv3.cpu_info()['isa'], dsv3.get_num_threads())",
                         {"DSV3_ISA": "", "DSV3_NUM_THREADS": ""})
    assert default.returncode == 0, default.stderr
    code = ("import os, warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import dsv3\n"
            "assert all(issubclass(x.category, RuntimeWarning) for x in w), w\n"
            "print(dsv3.cpu_info()['isa'], dsv3.get_num_threads())\n"
            "print(' | '.join(str(x.message) for x in w))\n"
            f"assert os.environ[{next(iter(env))!r}] == {next(iter(env.values()))!r}\n")
    full = {"DSV3_ISA": "", "DSV3_NUM_THREADS": ""}
    full.update(env)
    r = python_run(code, full)
    assert r.returncode == 0, r.stderr
    used, message = r.stdout.splitlines()
    assert used == default.stdout.strip()
    assert what in message, message
    assert "using " in message


def test_env_good_values_apply(python_run):
    r = python_run("import dsv3; print(dsv3.get_num_threads())", {"DSV3_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "1"
    r = python_run("import dsv3; print(dsv3.cpu_info()['isa'])", {"DSV3_ISA": "scalar"})
    assert r.returncode == 0 and r.stdout.strip() == "scalar" and not r.stderr


def test_import_from_source_tree_without_extension(tmp_path):
    """`python -c "import dsv3"` in a checkout where the extension is not built says what is wrong and
    what to do (it used to fail with a circular-import message)."""
    import os
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = tmp_path / "checkout"
    shutil.copytree(os.path.join(root, "dsv3"), tree / "dsv3",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    (tree / "csrc").mkdir()
    shutil.copy(os.path.join(root, "setup.py"), tree / "setup.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # an editable install of this project (as CI's `pip install -e`) would otherwise supply dsv3._dsv3 from the
    # real checkout through its import hook: drop the hook so the copied tree stands alone
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if '__editable__' not in getattr(f, '__module__', '')]; import dsv3")
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: you are importing dsv3 from its source tree"), r.stderr
    assert str(tree) in last and "python setup.py build_ext --inplace" in last and "pip install ." in last
    assert "circular import" not in last
    # the same package outside a source tree: a plain "the extension is missing" message
    os.remove(tree / "setup.py")
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("ImportError: dsv3's C extension (dsv3._dsv3) cannot be loaded")


def test_cli_info_cpu(python_run):
    r = python_run("import sys; from dsv3.cli import main; sys.exit(main(['info-cpu']))")
    assert r.returncode == 0, r.stderr
    assert "kernel path" in r.stdout
