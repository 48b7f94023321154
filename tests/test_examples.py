"""Every script in examples/ runs as a user would run it (a fresh process, its own work directory)
and exits 0: the examples cannot rot."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_every_example_is_listed_in_the_examples_readme():
    text = (ROOT / "examples" / "README.md").read_text()
    assert SCRIPTS and all(f"`{s}`" in text for s in SCRIPTS), SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    if script == "port_a_module.py":
        pytest.importorskip("transformers")
        pytest.importorskip("torch")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), str(tmp_path)], cwd=str(tmp_path),
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


NOTEBOOKS = sorted(p.name for p in (ROOT / "examples" / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    """Each notebook executes top to bottom in a real Jupyter kernel (nbclient) without an error cell."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if name == "parity.ipynb":
        pytest.importorskip("transformers")
        pytest.importorskip("matplotlib")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(str(ROOT / "examples" / "notebooks" / name), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("text/html" in o.get("data", {}) for o in outputs) or name != "parity.ipynb"
