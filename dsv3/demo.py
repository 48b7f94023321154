"""The main job (`dsv3 demo`): write a tiny DeepSeek-V3 checkpoint in a real on-disk layout, load it
with dsv3, generate text from a text prompt, then check it module by module against transformers.

Steps: 1. write (dsv3.testing.checkpoints.write_checkpoint; default DeepSeek's FP8 hub layout, sharded,
with MTP tensors, and a small byte-level BPE tokenizer with a DeepSeek chat template); 2. convert it with
dsv3.convert into the dsv3 layout (FP8 stays FP8, codes and scales copied bit-exactly; the other layouts
become bf16; the tokenizer files are copied) and verify every checksum; 3. load with
dsv3.Model.from_pretrained; 4. text in, text out: the prompt is tokenised, decoded greedily and streamed
back as text (random weights: the words are noise, the path is the real one); 5. parity on the same
config and weights (transformers gets the canonical tensors, FP8 ones dequantised to float32).
"""
import os
import shutil
import tempfile

import numpy as np

LAYOUTS = ("fp8_block", "hf", "hf_fused")
PROMPT = "Hello! Tell me a story about a robot."


def _convert(src_dir, work_dir, fmt, log):
    """Convert the written checkpoint into the dsv3 layout and verify it; returns the directory to load."""
    from .convert import convert, verify
    dst = os.path.join(work_dir, f"converted-{fmt}")
    manifest = convert(src_dir, dst, format=fmt, quiet=True)
    problems = verify(dst)
    if problems:
        raise RuntimeError(f"dsv3 verify {dst}: " + "; ".join(map(str, problems)))
    log(f"      {len(manifest['tensors'])} tensors written to {dst}, every checksum verified")
    return dst


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
                         scale=float(config.hidden_size) ** -0.5, tokenizer=True)
        for name in sorted(os.listdir(ckpt_dir)):
            log(f"      {name}  ({os.path.getsize(os.path.join(ckpt_dir, name))} bytes)")

        fmt = "fp8_block" if layout == "fp8_block" else "bf16"
        log(f"[2/5] converting to the dsv3 layout ({fmt}) with dsv3.convert, then dsv3 verify")
        load_dir = _convert(ckpt_dir, work, fmt, log)

        log(f"[3/5] loading with dsv3.Model.from_pretrained({load_dir!r})")
        model = dsv3.Model.from_pretrained(load_dir, precision="exact")  # compared with transformers fp32
        log(repr(model))

        tok = model.tokenizer
        prompt = PROMPT
        ids = tok.encode(prompt)
        log(f"[4/5] text in, text out: {tok!r}")
        log(f"      prompt {prompt!r} -> {len(ids)} tokens {ids}")
        pieces, new_ids = [], []
        for chunk in model.generate(prompt, new_tokens, stream=True):  # greedy, streamed piece by piece
            pieces.append(chunk.text)
            new_ids.append(chunk.token_id)
        tokens = parity._dsv3_generate(model, np.asarray(ids, np.int64), new_tokens)
        if np.asarray(tokens).tolist()[:len(new_ids)] != new_ids:  # generate(text) may stop earlier, at EOS
            raise RuntimeError(f"generate(text) gave ids {new_ids}, the greedy loop on the same prompt ids {tokens}")
        log(f"      -> {len(new_ids)} new tokens {new_ids}")
        log(f"      -> text {''.join(pieces)!r} (random weights: noise words, real tokenizer path)")

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
