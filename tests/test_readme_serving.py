"""The README's serving example runs as written (text in and out, streaming, the engine)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_serving_block_runs(tmp_path, capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(r"## Serving[^\n]*\n```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python block under '## Serving'"
    code = m.group(1).replace('"/tmp/ckpt-text"', repr(str(tmp_path / "ckpt")))
    ns = {"__name__": "readme_serving"}
    exec(compile(code, "README.md:Serving", "exec"), ns)
    model, outs = ns["model"], ns["outs"]
    assert [o.text for o in outs] == [model.generate(p, 8) for p in ["Hello!", "Tell me a story", "2 + 2 ="]]
    assert ns["out"].finish_reason in ("stop", "length") and len(ns["out"].logprobs) == len(ns["out"].token_ids)
