"""Loading populates the page tables of the weights read in place (csrc/model/populate_weights.c): a model
loaded from a checkpoint has its expert matrices mapped (resident in its own page tables, /proc/self/smaps
Rss of the checkpoint's file mapping) before the first forward, so that decode takes no page fault when it
first reads an expert; DSV3_POPULATE=0 leaves them to be faulted in on first use."""
import json
import os
import subprocess
import sys

import pytest

from dsv3.testing.checkpoints import tiny_config, write_checkpoint

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")

CHILD = r"""
import json, sys
import dsv3
m = dsv3.Model.from_pretrained(sys.argv[1])
rss, cur = 0, None
for line in open("/proc/self/smaps"):
    f = line.split()
    if "-" in f[0] and len(f) >= 6:
        cur = f[-1]
    elif cur and cur.endswith(".safetensors") and f[0] == "Rss:":
        rss += int(f[1]) * 1024
m.reset()
m.forward([1, 2, 3])  # still computes after populating
print(json.dumps({"rss": rss}))
"""


def _rss(path, populate):
    env = dict(os.environ)
    env.pop("DSV3_POPULATE", None)
    if populate is not None:
        env["DSV3_POPULATE"] = populate
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss"]


def test_load_populates_the_expert_pages(tmp_path):
    # 16 experts of 3 x 256 x 256 bf16 in each of 2 MoE layers: 12.6 MB of experts, far more than the pages
    # loading itself touches (norms, router, fault-around)
    cfg = tiny_config(hidden_size=256, moe_intermediate_size=256, n_routed_experts=16, num_experts_per_tok=2)
    p = write_checkpoint(tmp_path / "c", cfg, layout="hf", dtype="bfloat16", shards=1)
    experts = 2 * 16 * 3 * 256 * 256 * 2
    on, forced, off = _rss(p, None), _rss(p, "1"), _rss(p, "0")
    assert on >= experts and forced >= experts, (on, forced, experts)
    assert off < experts // 2, (off, experts)


def test_load_populates_a_stored_packed_checkpoint(tmp_path):
    # dsv3 convert --pack: the int4 experts are read in place in their packed layout (codes and scales in one
    # array per weight), so those mapped pages are populated too
    from dsv3.convert import convert
    cfg = tiny_config(hidden_size=256, moe_intermediate_size=256, n_routed_experts=16, num_experts_per_tok=2)
    src = write_checkpoint(tmp_path / "c", cfg, layout="hf", dtype="bfloat16", shards=1)
    dst = str(tmp_path / "packed")
    convert(str(src), dst, format="int4", group=32, pack=True, quiet=True)
    experts = 2 * 16 * 3 * 256 * 256 * 5 // 8  # int4 codes (1/2 byte) + an f32 scale per 32 (1/8 byte)
    on, off = _rss(dst, None), _rss(dst, "0")
    assert on >= experts, (on, experts)
    assert off < experts // 2, (off, experts)
