"""Checkpoint conversion into the dsv3 layout: `convert`, `verify`, `info`, `read_dsv3_checkpoint`.

On-disk dsv3 layout (DST):
- config.json: the source's config without `quantization_config`, with `model_type` "dsv3_converted"
  and `architectures` ["Dsv3ConvertedCheckpoint"] (dsv3.config.CONVERTED_*: transformers refuses the
  directory), plus a "dsv3" section: {"layout": "dsv3", "format_version": 1, "model_type" (the real one), "quantization": {"default", "experts", "attention",
  "lm_head", "formats": {fmt: params}, "tensors": {base name: fmt} for every quantised tensor,
  "tensor_params": {base name: params} where they differ from "formats"}, "mtp_kept",
  "expert_parallel" (with --ep)}.
- model.safetensors.index.json + shards. Tensors use the canonical names; a quantised `X.weight` is
  stored as its QuantizedTensor arrays (`X.weight`, `X.weight_scale_inv` | `X.weight_scale`,
  `X.weight_scale_2`, `X.input_scale`). Routed experts are stored per expert as
  `...experts.E.gate_up_proj.weight` [2I, H] (gate rows first) and `...experts.E.down_proj.weight`
  when the format's scales split exactly at row I (bf16, int8, int4; fp8_block when I % 128 == 0);
  otherwise (nvfp4, whose gate and up have their own global scale) gate_proj / up_proj stay separate.
  kv_b_proj is stored as is (the reader hands it to the model unsplit).
- With --pack (the "pack" option; at least one int4 target format): every int4 tensor the engine packs
  (lib.tensor_packs: all but kv_b_proj) is stored as its packed kernel layout alone, one uint8 array
  `X.weight_packed` (csrc/linear/int4p.h, dsv3.quant.pack; no `X.weight` / `X.weight_scale`), whose data
  starts at a multiple of lib.PACKED_ALIGN (64) bytes in its shard (alignment fill entries before it:
  dsv3.safetensors_io.PAD_PREFIX, which the readers skip); its params in "formats" / "tensor_params" carry
  "packed": "int4p" (the checkpoint layout: "ckpt-1") and its shape is the config's (the tensor table).
  Routed experts' gate_proj / up_proj then stay separate. The loader checks size and alignment.
- Shard files: `model-KKKKK-of-NNNNN.safetensors`; with --ep N, the routed experts of rank r
  (experts [r*E/N, (r+1)*E/N), contiguous as in DeepSeek's convert.py) go to
  `model-ep<r>-of-ep<N>-KKKKK-of-NNNNN.safetensors` and everything else, once, to
  `model-shared-KKKKK-of-NNNNN.safetensors`; the index maps every tensor.
- The V3.2 indexer's tensors (self_attn.indexer.*) are canonical tensors of a deepseek_v32 config: wq_b
  and wk take the --attention format, k_norm and weights_proj stay float (as every norm and the router).
- Copied verbatim (source names and formats): with --keep-mtp the MTP layer's; the reader skips it, as
  open_checkpoint does.
- dsv3-manifest.json: source identity, options, per-shard state and per-tensor shard, dtype,
  shape, format and sha256 (see manifest.py).
- .dsv3-convert.lock: exists while a conversion writes DST (it holds an flock on it and its pid in
  it); a second conversion into DST is refused, naming that pid. Removed when the conversion ends.
"""
import sys
import types

from .layout import read_dsv3_checkpoint
from .run import convert
from .verify import verify
from .info import info

__all__ = ["convert", "verify", "info", "read_dsv3_checkpoint"]


class _CallableModule(types.ModuleType):
    """Lets `dsv3.convert(src, dst, format=...)` call convert() while dsv3.convert stays a package."""

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)

    __call__.__doc__ = convert.__doc__


sys.modules[__name__].__class__ = _CallableModule
