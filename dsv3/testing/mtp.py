"""An MTP layer that agrees with its main model, for speculative-decoding tests and benchmarks.

``agreeing_mtp(tensors, num_hidden_layers, damp)`` returns the main model's tensors with every layer's
output projections (o_proj, the MLP/expert down projections) scaled by ``damp``, plus an MTP layer that
predicts what such a model predicts: eh_proj = [I | 0] passes enorm(embed(t_{p+1})) through, its decoder
block is a copy of the last layer with zero output projections (an identity that still costs a full
layer's work), shared_head.norm is the model's final norm and the head is the model's lm_head (absent).
With damp = 0 the main model is a bigram model (logits = lm_head(norm(embed(token)))) and the MTP layer
predicts its next-next token exactly (acceptance 1); as damp grows the layers move the main model away
from the bigram and acceptance falls."""
import re

import numpy as np

__all__ = ["agreeing_mtp"]

_OUT = re.compile(r"\.(self_attn\.o_proj|mlp\.down_proj|mlp\.experts\.\d+\.down_proj|mlp\.shared_experts\.down_proj)"
                  r"\.weight$")


def agreeing_mtp(tensors, num_hidden_layers, damp=0.0):
    """(main tensors with damped layers + the agreeing MTP layer's tensors), float32 numpy, canonical names."""
    N = num_hidden_layers
    out = {}
    for name, v in tensors.items():
        v = np.asarray(v, np.float32)
        out[name] = (v * np.float32(damp)) if _OUT.search(name) else v
    D = out["model.embed_tokens.weight"].shape[1]
    last, mtp = f"model.layers.{N - 1}.", f"model.layers.{N}."
    for name, v in tensors.items():
        if name.startswith(last):
            w = np.asarray(v, np.float32)
            out[mtp + name[len(last):]] = np.zeros_like(w) if _OUT.search(name) else w.copy()
    eh = np.zeros((D, 2 * D), np.float32)
    eh[:, :D] = np.eye(D, dtype=np.float32)
    out.update({mtp + "enorm.weight": np.ones(D, np.float32), mtp + "hnorm.weight": np.ones(D, np.float32),
                mtp + "eh_proj.weight": eh, mtp + "shared_head.norm.weight": out["model.norm.weight"].copy()})
    return out
