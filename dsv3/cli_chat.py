"""`dsv3 chat CHECKPOINT`: an interactive chat in the terminal. Each reply streams token by token and
ends with its speed; /reset forgets the conversation, /quit (or end of input) leaves. ``--speculative mtp``
drafts tokens with the checkpoint's MTP layer (:mod:`dsv3.speculative`) and also shows the acceptance rate."""
import sys
import time

from . import cli_speculative
from .model import KV_CACHE_DTYPES


def add_arguments(parser):
    parser.add_argument("checkpoint", help="checkpoint directory with tokenizer.json and a chat template")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply at most (default 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--seed", type=int, help="seed of the sampler (default: random)")
    parser.add_argument("--max-seq-len", type=int, default=4096, help="conversation length in tokens (default 4096)")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="f32",
                        help="latent KV cache storage: f32 (default), bf16 (half) or fp8 (about a quarter)")
    cli_speculative.add_arguments(parser, "replies are")


def chat(model, system=None, max_new_tokens=256, temperature=0.7, top_p=0.95, seed=None, stdin=None, stdout=None,
         speculative=None, num_draft=2):
    """Run the chat loop over ``stdin``/``stdout`` until /quit or end of input; returns the turns taken.
    speculative, num_draft: as ``Model.generate`` (each reply then also reports the draft acceptance rate)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tok = model.tokenizer
    if tok is None or not tok.chat_template:
        raise ValueError("the checkpoint has no tokenizer with a chat template (tokenizer.json, tokenizer_config.json)")
    base = [{"role": "system", "content": system}] if system else []
    history, turns = list(base), 0
    spec = {} if speculative is None else {"speculative": speculative, "num_draft": num_draft}
    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False
    stdout.write("dsv3 chat: /reset forgets the conversation, /quit leaves\n")
    while True:
        if interactive:
            stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history = list(base)
            stdout.write("(conversation reset)\n")
            continue
        history.append({"role": "user", "content": line})
        try:
            stream = model.generate(history, max_new_tokens, do_sample=temperature > 0, temperature=temperature or None,
                                    top_p=top_p, seed=None if seed is None else seed + turns, stream=True,
                                    **spec)
            t0, n, reply, first = time.perf_counter(), 0, [], None
            for chunk in stream:
                if first is None:
                    first = time.perf_counter() - t0
                n += 1
                reply.append(chunk.text)
                stdout.write(chunk.text)
                stdout.flush()
        except ValueError as e:  # the conversation outgrew the cache
            stdout.write(f"\n(error: {e}; /reset to start over)\n")
            history.pop()
            continue
        dt = time.perf_counter() - t0
        rate = (n - 1) / (dt - first) if n > 1 and dt > first else float("nan")
        extra = ""
        if speculative is not None:
            st = model.speculative_stats
            extra = f", {st.acceptance_rate:.0%} of drafts accepted, {st.tokens_per_round:.2f} tokens per step"
        stdout.write(f"\n[{n} tokens, {rate:.1f} tokens/s, first token {first * 1000:.0f} ms{extra}]\n")
        history.append({"role": "assistant", "content": "".join(reply)})
        turns += 1
    return turns


def run(args):
    from .checkpoint import CheckpointError
    from .model import Model
    bad = cli_speculative.bad_num_draft(args, "chat")
    if bad is not None:
        return bad
    try:
        model = Model.from_pretrained(args.checkpoint, max_seq_len=args.max_seq_len,
                                      kv_cache_dtype=args.kv_cache_dtype, mtp=args.speculative == "mtp")
    except CheckpointError as e:
        rc = cli_speculative.no_mtp_layer(args, "chat", e)
        if rc is None:
            raise
        return rc
    chat(model, args.system, args.max_new_tokens, args.temperature, args.top_p, args.seed,
         speculative=args.speculative, num_draft=args.num_draft)
    return 0
