"""Load and run a converted checkpoint: hub FP8 layout -> dsv3 int4 experts -> verify -> generate.

    python examples/run_converted.py [WORKDIR]
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

import dsv3
from dsv3.testing.checkpoints import tiny_config, write_checkpoint


def main(workdir):
    workdir = Path(workdir)
    cfg = dsv3.load_config(tiny_config(hidden_size=64, moe_intermediate_size=32, vocab_size=128))
    hub = write_checkpoint(workdir / "hub-fp8", cfg, layout="fp8_block", seed=0)  # DeepSeek's FP8 layout

    # int4 (group 32) routed experts, everything else bf16; quiet=True: no progress bar in logs
    dst = workdir / "dsv3-int4"
    dsv3.convert(hub, dst, format="bf16", experts="int4", quiet=True)
    problems = dsv3.convert.verify(dst)  # sha256 of every tensor against the manifest
    if problems:
        raise SystemExit("verify failed:\n" + "\n".join(problems))

    model = dsv3.Model.from_pretrained(dst, max_seq_len=64)  # zero-copy: shards stay memory-mapped
    print(model)

    prompt = np.array([3, 14, 15, 92, 65], dtype=np.int64)
    logits = model.forward(prompt)             # prefill: [5, vocab]
    step = model.forward(np.array([35]))       # one decode step against the latent cache: [1, vocab]
    assert logits.shape == (5, cfg.vocab_size) and step.shape == (1, cfg.vocab_size)
    assert np.isfinite(logits).all() and np.isfinite(step).all()
    assert model.cache_len == 6

    greedy = model.generate(prompt, max_new_tokens=8)
    again = model.generate(prompt, max_new_tokens=8)
    assert np.array_equal(greedy, again), "greedy decoding must be deterministic"
    sampled = model.generate(prompt, max_new_tokens=8, temperature=0.8, top_k=20, seed=1234)
    print("greedy :", greedy.tolist())
    print("sampled:", sampled.tolist())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(sys.argv[1]))
    with tempfile.TemporaryDirectory() as d:
        sys.exit(main(d))
