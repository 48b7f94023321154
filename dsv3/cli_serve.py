"""`dsv3 serve CHECKPOINT`: an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions with
streaming, /v1/models, /health) over the batched engine. Needs the `serve` extra (FastAPI, uvicorn)."""
import sys

from . import cli_speculative
from .model import KV_CACHE_DTYPES


def add_arguments(parser):
    parser.add_argument("checkpoint", help="checkpoint directory (with tokenizer.json for text)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    parser.add_argument("--max-seq-len", type=int, default=4096, help="tokens per sequence (default 4096)")
    parser.add_argument("--model-name", help="name clients pass as 'model' (default: the directory's name)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="convert unquantised weights at load")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="f32",
                        help="latent KV cache storage: f32 (default), bf16 (half) or fp8 (about a quarter)")
    parser.add_argument("--prefix-cache", action="store_true",
                        help="reuse the cached rows of prompt prefixes other requests fed (a conversation's next "
                             "turn, shared system prompts, n > 1); results then equal uncached ones within f32 "
                             "rounding, not bitwise")
    cli_speculative.add_arguments(parser, "output is")


def run(args):
    try:
        from .server import serve
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"dsv3 serve: {e}; install the server extra: pip install 'dsv3[serve]'", file=sys.stderr)
        return 1
    from .checkpoint import CheckpointError
    bad = cli_speculative.bad_num_draft(args, "serve")
    if bad is not None:
        return bad
    print(f"dsv3 serve: loading {args.checkpoint}; OpenAI API at http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        serve(args.checkpoint, host=args.host, port=args.port, max_batch=args.max_batch, max_seq_len=args.max_seq_len,
              model_name=args.model_name, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
              prefix_cache=args.prefix_cache, speculative=args.speculative, num_draft=args.num_draft)
    except CheckpointError as e:
        rc = cli_speculative.no_mtp_layer(args, "serve", e)
        if rc is None:
            raise
        return rc
    return 0
