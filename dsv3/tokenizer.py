"""Text <-> token ids for a checkpoint: ``tokenizer.json`` through the ``tokenizers`` package, the chat
template of ``tokenizer_config.json`` rendered as transformers renders it (jinja2, sandboxed, same
options and globals), and incremental detokenisation for streaming.

    tok = dsv3.Tokenizer.from_pretrained("path/to/checkpoint")
    ids = tok.encode("Hello")                       # BOS first, as the checkpoint's post-processor says
    text = tok.decode(ids)                          # special tokens skipped
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    dec = tok.decoder(); pieces = [dec.push(t) for t in ids] + [dec.flush()]
"""
import json
import os
from datetime import datetime

__all__ = ["Tokenizer", "IncrementalDecoder"]


def _token_text(v):
    """tokenizer_config.json holds special tokens as strings or AddedToken dicts."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _compile_template(source):
    """A jinja2 template with transformers' environment: sandboxed, trim_blocks, lstrip_blocks,
    loopcontrols, tojson (ensure_ascii False), raise_exception and strftime_now."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer:
    """A checkpoint's tokenizer: ``tokenizer.json`` (byte-level BPE or any ``tokenizers`` model) and the
    special tokens and chat template of ``tokenizer_config.json``.

    BOS/EOS: the tokenizer config's ``bos_token`` / ``eos_token``, else the model config's
    ``bos_token_id`` / ``eos_token_id`` (pass ``config``). ``eos_token_ids`` gathers every id that ends a
    generation: the tokenizer's EOS, the model config's and ``generation_config.json``'s.
    """

    def __init__(self, tokenizer, config=None, model_config=None, generation_config=None):
        self._tok = tokenizer
        cfg = dict(config or {})
        self.config = cfg
        self.chat_template = cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        self._template = None
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.pad_token = _token_text(cfg.get("pad_token"))
        self.unk_token = _token_text(cfg.get("unk_token"))
        self.add_bos_token = bool(cfg.get("add_bos_token", False))
        self.add_eos_token = bool(cfg.get("add_eos_token", False))
        self.model_max_length = cfg.get("model_max_length")
        mc = model_config or {}
        get = mc.get if isinstance(mc, dict) else (lambda k, d=None: getattr(mc, k, d))
        self.bos_token_id = self.token_to_id(self.bos_token) if self.bos_token else None
        if self.bos_token_id is None and get("bos_token_id") is not None:
            self.bos_token_id = int(get("bos_token_id"))
            self.bos_token = self.id_to_token(self.bos_token_id)
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None
        eos = []
        for src in (self.eos_token_id, get("eos_token_id"), (generation_config or {}).get("eos_token_id")):
            for v in (src if isinstance(src, (list, tuple)) else [src]):
                if v is not None and int(v) not in eos:
                    eos.append(int(v))
        if self.eos_token_id is None and eos:
            self.eos_token_id = eos[0]
            self.eos_token = self.id_to_token(eos[0])
        self.eos_token_ids = tuple(eos)

    @classmethod
    def from_pretrained(cls, path):
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, ``config.json``, ``generation_config.json``
        when present) from a checkpoint directory or a hub id in the local Hugging Face cache."""
        from tokenizers import Tokenizer as _HFTokenizer

        from .paths import resolve_checkpoint_dir
        path = resolve_checkpoint_dir(path)  # a directory, or a hub id in the local cache; clear errors
        f = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(f):
            raise OSError(f"{path}: no tokenizer.json (a checkpoint needs one for text in and out; "
                          f"token ids still work without it)")
        tok = _HFTokenizer.from_file(f)

        def read(name):
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                return None
            with open(p, encoding="utf-8") as fh:
                try:
                    return json.load(fh)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}: not valid JSON ({e})") from None

        return cls(tok, read("tokenizer_config.json"), read("config.json"), read("generation_config.json"))

    # ---- ids ----
    @property
    def vocab_size(self):
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token):
        """Id of a token string, or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, i):
        """Token string of an id, or None."""
        return self._tok.id_to_token(int(i))

    def encode(self, text, add_special_tokens=True):
        """Token ids of ``text``. With ``add_special_tokens`` the post-processor's tokens (BOS) are added,
        and BOS is put first when the tokenizer config asks for it and the post-processor did not."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None and \
                (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        if add_special_tokens and self.add_eos_token and self.eos_token_id is not None and \
                (not ids or ids[-1] != self.eos_token_id):
            ids = ids + [self.eos_token_id]
        return list(ids)

    def decode(self, ids, skip_special_tokens=True):
        """Text of ``ids`` (special tokens skipped by default)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decoder(self, skip_special_tokens=True):
        """An :class:`IncrementalDecoder` for streaming."""
        return IncrementalDecoder(self, skip_special_tokens)

    # ---- chat ----
    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, chat_template=None,
                            **kwargs):
        """Render ``messages`` (a list of {"role", "content"} dicts) with the chat template, as
        transformers' ``apply_chat_template`` does (the special tokens and ``kwargs`` are template
        variables); ``tokenize`` returns ids (the rendered text encoded without adding special tokens,
        since the template writes them), else the text."""
        source = chat_template or self.chat_template
        if not source:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json); pass chat_template= "
                             "or send plain text")
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of dicts with 'role' and 'content'")
        import jinja2
        if chat_template is not None:
            template = _compile_template(chat_template)
        else:
            if self._template is None:
                self._template = _compile_template(source)
            template = self._template
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                   "unk_token": self.unk_token}
        variables = {k: v for k, v in special.items() if v is not None}
        variables.update(kwargs)
        try:
            text = template.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"chat template: {e}") from None
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self):
        return (f"dsv3.Tokenizer(vocab {self.vocab_size}, bos {self.bos_token_id}, eos {list(self.eos_token_ids)}, "
                f"chat template {'yes' if self.chat_template else 'no'})")


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces without ever splitting a UTF-8 character.

    ``push(id)`` returns the new text (possibly ""); ``flush()`` returns what is still held back.
    Text is decoded over a small window of earlier tokens (so decoders that drop a leading space see
    their context); a piece is released only when the window's text no longer ends in an incomplete
    character (U+FFFD), so the concatenation of the pieces equals ``decode(all ids)``.
    """

    _HOLD = 8  # tokens held back at most while the text ends in U+FFFD (a real U+FFFD in the text)

    def __init__(self, tokenizer, skip_special_tokens=True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids = []
        self._prefix = 0  # window start
        self._read = 0  # ids whose text has been released

    def _decode(self, ids):
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id):
        """Add one id; returns the text it completes."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(before) and (not now.endswith("\ufffd") or len(self.ids) - self._read > self._HOLD):
            piece = now[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            return piece
        return ""

    def flush(self):
        """The text still held back (incomplete characters become U+FFFD)."""
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""
