"""Small tokenizer files in the real formats, for tests and the demo (no hub).

``write_tokenizer(path, vocab_size)`` trains a byte-level BPE with the ``tokenizers`` package on a
built-in text and writes ``tokenizer.json`` and ``tokenizer_config.json`` the way DeepSeek-V3's
checkpoints hold them: special tokens ``<｜begin▁of▁sentence｜>`` (id 0, BOS), ``<｜end▁of▁sentence｜>``
(id 1, EOS), ``<｜▁pad▁｜>``, ``<｜User｜>``, ``<｜Assistant｜>``; a post-processor that puts BOS in front
of every encoded text; and a DeepSeek-style chat template (system prompt after BOS, ``<｜User｜>`` /
``<｜Assistant｜>`` turns, EOS after each assistant turn).
"""
import json
import os

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SPECIAL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT)  # ids 0..4 in this order

# DeepSeek-V3's template without its tool-call branches.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

# The training text: plain prose plus accented letters, CJK and emoji, so that some tokens hold
# partial UTF-8 characters (what incremental detokenisation must not split).
TEXT = """\
The quick brown fox jumps over the lazy dog. A model reads text as tokens and writes tokens back as text.
DeepSeek models use multi-head latent attention and a mixture of experts; each token visits a few experts.
Hello! How are you today? I am fine, thank you. What is the capital of France? The capital of France is Paris.
Tell me a story about a robot who learns to paint. Once upon a time, a small robot found a brush in the sand.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026. Code: def add(a, b): return a + b
Café, naïve, façade, Zürich, São Paulo, smörgåsbord. Привет, как дела? Γειά σου κόσμε.
日本語のテキストも少し含めます。中文文本也包括在内。한국어 문장도 있습니다.
Emoji: 🙂 🚀 🌍 ✨ — dashes, “quotes”, and ‘apostrophes’ … ellipsis.
"""


def _corpus(repeat=20):
    lines = TEXT.splitlines()
    return [line for _ in range(repeat) for line in lines]


def build_tokenizer(vocab_size=512):
    """A trained ``tokenizers.Tokenizer`` (byte-level BPE, DeepSeek special tokens and BOS post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    base = 256 + len(SPECIAL_TOKENS)
    if vocab_size < base + 8:
        raise ValueError(f"a byte-level tokenizer needs vocab_size >= {base + 8} (256 bytes, "
                         f"{len(SPECIAL_TOKENS)} special tokens, some merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, 0)]),
    ])
    return tok


def _added(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_tokenizer(path, vocab_size=512, model_max_length=16384):
    """Write tokenizer.json and tokenizer_config.json into directory ``path``; returns ``path``."""
    tok = build_tokenizer(vocab_size)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": _added(BOS), "eos_token": _added(EOS),
           "pad_token": _added(PAD), "unk_token": None, "chat_template": CHAT_TEMPLATE,
           "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": model_max_length,
           "sp_model_kwargs": {}, "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    return path
