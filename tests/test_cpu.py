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
    supported = lib.isa_info()[1]
    r = python_run("import dsv3; print(dsv3.cpu_info()['isa'])", {"DSV3_ISA": isa})
    if isa in supported:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == isa
    else:
        assert r.returncode != 0 and "lacks it" in r.stderr


def test_env_bad_values(python_run):
    r = python_run("import dsv3", {"DSV3_ISA": "sse9"})
    assert r.returncode != 0 and "DSV3_ISA='sse9'" in r.stderr
    r = python_run("import dsv3", {"DSV3_NUM_THREADS": "two"})
    assert r.returncode != 0 and "DSV3_NUM_THREADS" in r.stderr
    r = python_run("import dsv3; print(dsv3.get_num_threads())", {"DSV3_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "1"


def test_cli_info_cpu(python_run):
    r = python_run("import sys; from dsv3.cli import main; sys.exit(main(['info-cpu']))")
    assert r.returncode == 0, r.stderr
    assert "kernel path" in r.stdout
