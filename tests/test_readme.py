"""The README's tour is code users paste into a notebook: it must run as written."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_tour_runs(tmp_path, capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(r"## Tour\n```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python block under '## Tour'"
    code = m.group(1).replace('"/tmp/ckpt"', repr(str(tmp_path / "ckpt")))
    exec(compile(code, "README.md:Tour", "exec"), {"__name__": "readme_tour"})
    out = capsys.readouterr().out
    assert "fp8_block" in out and "dsv3.Model(" in out
