"""The OpenAI wire format for dsv3.server: request bodies -> Engine arguments (with 400-class errors that
name the field) and logprobs in the completions / chat shapes. No web framework here."""


class BadRequest(Exception):
    """A request the server refuses: HTTP ``status`` (400, or 404 for an unknown model) and the field."""

    def __init__(self, message, status=400, param=None):
        super().__init__(message)
        self.status, self.param = status, param


def opt(body, key, types, default=None, check=None, what=None):
    """body[key] (``default`` when absent or null), checked against ``types`` and ``check``."""
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in types:
        raise BadRequest(f"'{key}' must be {what}, got {v!r}", param=key)
    if not isinstance(v, types):
        raise BadRequest(f"'{key}' must be {what}, got {type(v).__name__}", param=key)
    if check is not None and not check(v):
        raise BadRequest(f"'{key}' must be {what}, got {v!r}", param=key)
    return v


_NUM = (int, float)


MAX_CHOICES = 16  # most completions one request may ask for ('n')


def choice_count(body):
    """OpenAI ``n``: how many completions of the prompt to return (1..MAX_CHOICES)."""
    return opt(body, "n", (int,), 1, what=f"an int in [1, {MAX_CHOICES}]", check=lambda v: 1 <= v <= MAX_CHOICES)


def choice_seed(kw, i):
    """Keyword arguments of choice i of a request: the request's seed + i (choices sample independently;
    a greedy request gives n equal choices, as OpenAI's)."""
    if i == 0 or kw.get("seed") is None:
        return kw
    return dict(kw, seed=(kw["seed"] + i) & (2**64 - 1))


def sampling_args(body, chat):
    """OpenAI body -> Engine.make_request keyword arguments (``n``: :func:`choice_count`)."""
    choice_count(body)
    for k in ("frequency_penalty", "presence_penalty"):
        if opt(body, k, _NUM, 0, what="a number") != 0:
            raise BadRequest(f"'{k}' is not supported (use repetition_penalty)", param=k)
    if opt(body, "echo", (bool,), False, what="a bool"):
        raise BadRequest("'echo' is not supported", param="echo")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    kw = {"max_new_tokens": opt(body, key, (int,), 16 if not chat else 1 << 30, what="an int >= 0",
                                 check=lambda v: v >= 0)}
    t = opt(body, "temperature", _NUM, 1.0, what="a number in [0, 2]", check=lambda v: 0 <= v <= 2)
    kw["do_sample"] = t > 0
    kw["temperature"] = float(t) if t > 0 else None
    kw["top_p"] = float(opt(body, "top_p", _NUM, 1.0, what="a number in (0, 1]", check=lambda v: 0 < v <= 1))
    kw["top_k"] = opt(body, "top_k", (int,), 0, what="an int >= 0 (0: off)", check=lambda v: v >= 0)
    kw["min_p"] = float(opt(body, "min_p", _NUM, 0.0, what="a number in [0, 1]", check=lambda v: 0 <= v <= 1))
    kw["repetition_penalty"] = float(opt(body, "repetition_penalty", _NUM, 1.0, what="a number in (0, 100]",
                                          check=lambda v: 0 < v <= 100))
    seed = opt(body, "seed", (int,), None, what="an int")
    kw["seed"] = None if seed is None else seed & (2**64 - 1)
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("'stop' must be a non-empty string or a list of up to 16 of them", param="stop")
        kw["stop"] = stop
    if chat:
        if opt(body, "logprobs", (bool,), False, what="a bool"):
            kw["logprobs"] = opt(body, "top_logprobs", (int,), 0, what="an int in [0, 20]",
                                  check=lambda v: 0 <= v <= 20)
    else:
        lp = opt(body, "logprobs", (int,), None, what="an int in [0, 5]", check=lambda v: 0 <= v <= 5)
        if lp is not None:
            kw["logprobs"] = lp
    return kw


def prompt_of(body):
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return p
    raise BadRequest("'prompt' must be a string or a list of token ids (one prompt per request)", param="prompt")


def messages_of(body):
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'", param="messages")
        c = m.get("content")
        if isinstance(c, list):  # content parts: keep the text ones
            if not all(isinstance(p, dict) for p in c):
                raise BadRequest(f"messages[{i}].content parts must be objects", param="messages")
            c = "".join(p.get("text", "") for p in c if p.get("type") == "text" and isinstance(p.get("text"), str))
        if c is None:
            c = ""
        if not isinstance(c, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts", param="messages")
        out.append({"role": m["role"], "content": c})
    return out


def token_str(tok, i):
    return tok.decode([i], skip_special_tokens=False) if tok is not None else str(i)


def chat_logprobs(tok, chunks):
    content = []
    for c in chunks:
        if c.logprob is None:
            continue
        s = token_str(tok, c.token_id)
        content.append({"token": s, "logprob": c.logprob, "bytes": list(s.encode("utf-8")),
                        "top_logprobs": [{"token": token_str(tok, i), "logprob": lp,
                                          "bytes": list(token_str(tok, i).encode("utf-8"))}
                                         for i, lp in (c.top_logprobs or [])]})
    return {"content": content}


def completion_logprobs(tok, chunks):
    toks = [token_str(tok, c.token_id) for c in chunks]
    offs, o = [], 0
    for c in chunks:
        offs.append(o)
        o += len(c.text)
    return {"tokens": toks, "token_logprobs": [c.logprob for c in chunks],
            "top_logprobs": [{token_str(tok, i): lp for i, lp in (c.top_logprobs or [])} for c in chunks],
            "text_offset": offs}
