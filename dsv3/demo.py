"""The main job (`dsv3 demo`): write a tiny DeepSeek-V3 checkpoint in a real on-disk layout, load it
with dsv3, generate a few tokens, then check it module by module against transformers.

Steps: 1. write (dsv3.testing.checkpoints.write_checkpoint; default DeepSeek's FP8 hub layout, sharded,
with MTP tensors); 2. convert (issue 5: not yet, see CONVERT_STEP); 3. load with dsv3.Model.from_pretrained;
4. generate greedily; 5. parity on the same config and weights (transformers gets the canonical tensors,
FP8 ones dequantised to float32).
"""
import os
import shutil
import tempfile

import numpy as np

LAYOUTS = ("fp8_block", "hf", "hf_fused")


def _convert(src_dir, work_dir, log):
    """CONVERT_STEP: the place for the conversion of issue 5 (e.g. to the "dsv3" layout). Returns the
    directory to load. Today the written checkpoint is loaded as it is."""
    return src_dir


def run(layout="fp8_block", keep=None, seed=0, new_tokens=8, log=print):
    """Run the demo; returns the ParityReport of step 5. ``keep``: directory to write the checkpoint
    into and keep (default: a temporary directory, removed afterwards)."""
    import dsv3
    from . import parity
    from .checkpoint import open_checkpoint
    from .testing.checkpoints import write_checkpoint

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    parity.require_torch()  # fail before doing any work when torch/transformers are missing
    work = os.path.abspath(keep) if keep else tempfile.mkdtemp(prefix="dsv3-demo-")
    try:
        ckpt_dir = os.path.join(work, f"checkpoint-{layout}")
        os.makedirs(ckpt_dir, exist_ok=True)
        config = dsv3.load_config(parity.default_config())
        log(f"[1/5] writing a tiny DeepSeek-V3 checkpoint ({layout}, sharded, with MTP) to {ckpt_dir}")
        # weights ~ N(0, 1/hidden): activations stay near unit size and the logits are far from flat
        write_checkpoint(ckpt_dir, config, layout=layout, seed=seed, shards=3, mtp=True,
                         scale=float(config.hidden_size) ** -0.5)
        for name in sorted(os.listdir(ckpt_dir)):
            log(f"      {name}  ({os.path.getsize(os.path.join(ckpt_dir, name))} bytes)")

        log("[2/5] conversion: none yet (issue 5 inserts it here)")
        load_dir = _convert(ckpt_dir, work, log)

        log(f"[3/5] loading with dsv3.Model.from_pretrained({load_dir!r})")
        model = dsv3.Model.from_pretrained(load_dir)
        log(repr(model))

        prompt = np.random.default_rng([seed, 3]).integers(2, config.vocab_size, size=6).astype(np.int64)
        log(f"[4/5] greedy generation of {new_tokens} tokens after prompt {prompt.tolist()}")
        model.reset()
        tokens = parity._dsv3_generate(model, prompt, new_tokens)
        log(f"      -> {np.asarray(tokens).tolist()}")

        log("[5/5] parity against transformers on the same config and weights")
        ckpt = open_checkpoint(load_dir)
        try:
            tensors = dict(ckpt.canonical_tensors())
            report = parity.run(config=ckpt.config, tensors=tensors, model=model, seed=seed)
        finally:
            close = getattr(ckpt, "close", None)
            if close:
                close()
        report.info["checkpoint"] = layout
        return report
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
