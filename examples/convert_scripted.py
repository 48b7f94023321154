"""A scripted conversion: per-group formats, verification before use, a damaged shard detected and
repaired by re-running the conversion, and the converted model checked against its source.

    python examples/convert_scripted.py [WORKDIR]
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import dsv3
from dsv3.testing.checkpoints import tiny_config, write_checkpoint


def flip_a_byte(shard):
    """Damage one byte of tensor data (past the header) in a shard, as a bad disk or copy would."""
    with open(shard, "r+b") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len + 17)
        b = f.read(1)
        f.seek(8 + header_len + 17)
        f.write(bytes([b[0] ^ 0x40]))


def main(workdir):
    workdir = Path(workdir)
    cfg = tiny_config(hidden_size=128, moe_intermediate_size=64, intermediate_size=128, vocab_size=256)
    src = write_checkpoint(workdir / "hub-fp8", cfg, layout="fp8_block", seed=0, mtp=True)

    # Attention and lm_head in bf16, routed experts in int4, the rest int8; keep the MTP
    # layer; shards of ~100 kB so this small model spans several files.
    dst = workdir / "converted"
    opts = dict(format="int8", experts="int4", attention="bf16", keep_mtp=True, shard_bytes=100_000, quiet=True)
    manifest = dsv3.convert(src, dst, **opts)
    print(f"converted into {len(manifest['shards'])} shards, {len(manifest['tensors'])} tensors")
    summary = dsv3.convert.info(str(dst))
    print(json.dumps({k: summary[k] for k in ("layout", "formats") if k in summary}, indent=1, default=str))

    assert dsv3.convert.verify(dst) == [], "a fresh conversion must verify"

    shard = sorted(p for p in os.listdir(dst) if p.endswith(".safetensors"))[0]
    flip_a_byte(dst / shard)
    problems = dsv3.convert.verify(dst)
    print("after damaging", shard, "->", problems)
    assert problems and all(shard in p for p in problems), problems

    dsv3.convert(src, dst, **opts)   # same options: resumes, rewriting only what fails its checksums
    assert dsv3.convert.verify(dst) == [], "re-running the conversion repairs the damaged shard"

    # The converted model against its source (both run by dsv3): int4 experts and int8 weights
    # change the logits a little; the same prompt must give close logits and the same top choice mostly.
    ids = np.arange(2, 34, dtype=np.int64)
    ref = dsv3.Model.from_pretrained(src).forward(ids)
    got = dsv3.Model.from_pretrained(dst).forward(ids)
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"converted vs source logits: relative L2 error {rel:.3f}, top-1 agreement {top1:.0%}")
    assert rel < 0.2 and top1 >= 0.6, (rel, top1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(sys.argv[1]))
    with tempfile.TemporaryDirectory() as d:
        sys.exit(main(d))
