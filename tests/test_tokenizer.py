"""dsv3.Tokenizer against transformers on tokenizer files written by dsv3.testing.tokenizer_files."""
import json
import os

import numpy as np
import pytest

import dsv3
from dsv3.testing.tokenizer_files import BOS, EOS, write_tokenizer

TEXTS = ["Hello! How are you today?", "", " leading space", "Café naïve 🙂 日本語のテキスト",
         "The capital of France is Paris.\nNew line\ttab", "<｜User｜>inline special", "emoji only 🚀🌍✨"]
CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! 🙂"},
     {"role": "user", "content": "Tell me a story"}],
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tokenizer(str(tmp_path_factory.mktemp("tok")), vocab_size=512)


@pytest.fixture(scope="module")
def pair(files):
    transformers = pytest.importorskip("transformers")
    return dsv3.Tokenizer.from_pretrained(files), transformers.AutoTokenizer.from_pretrained(files)


def test_files_are_real_formats(files):
    with open(os.path.join(files, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    assert tj["model"]["type"] == "BPE" and tj["decoder"]["type"] == "ByteLevel"
    assert [t["content"] for t in tj["added_tokens"]][:2] == [BOS, EOS]
    with open(os.path.join(files, "tokenizer_config.json"), encoding="utf-8") as f:
        tc = json.load(f)
    assert tc["bos_token"]["content"] == BOS and "chat_template" in tc


def test_encode_decode_match_transformers(pair):
    tok, hf = pair
    for text in TEXTS:
        assert tok.encode(text) == hf(text).input_ids, text
        assert tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False).input_ids
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)
    assert tok.bos_token_id == hf.bos_token_id == 0 and tok.eos_token_id == hf.eos_token_id == 1


@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(pair, gen):
    tok, hf = pair
    for chat in CHATS:
        text = tok.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
        assert text == hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
        ids = tok.apply_chat_template(chat, add_generation_prompt=gen)
        ref = hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True)
        ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        assert ids == list(ref)
        assert ids.count(0) == 1  # one BOS: the template's, none added by encoding


def test_chat_template_errors(files):
    tok = dsv3.Tokenizer.from_pretrained(files)
    with pytest.raises(ValueError, match="chat template: nope"):
        tok.apply_chat_template(CHATS[0], chat_template="{{ raise_exception('nope') }}")
    with pytest.raises(TypeError, match="list of dicts"):
        tok.apply_chat_template("hi")
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        tok.apply_chat_template(CHATS[0])


def test_incremental_decoder_never_splits_characters(files):
    tok = dsv3.Tokenizer.from_pretrained(files)
    for text in TEXTS + ["🙂🙂🙂 日本語 Zürich ✨ …"]:
        ids = tok.encode(text)
        dec = tok.decoder()
        pieces = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == tok.decode(ids) == text.replace("<｜User｜>", "")  # specials skipped
        assert not any("\ufffd" in p for p in pieces)
    # byte-level tokens that hold parts of one character: the character comes out whole, once
    ids = tok.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1
    dec = tok.decoder()
    assert [dec.push(i) for i in ids][-1] == "🙂" and dec.flush() == ""


def test_special_tokens_from_configs(tmp_path, files):
    import shutil
    d = tmp_path / "ck"
    shutil.copytree(files, d)
    (d / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 3]}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 4}))
    tok = dsv3.Tokenizer.from_pretrained(str(d))
    assert tok.eos_token_ids == (1, 3, 4) and tok.bos_token_id == 0


def test_errors(tmp_path):
    with pytest.raises(OSError, match="no tokenizer.json"):
        dsv3.Tokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="vocab_size >= "):
        write_tokenizer(str(tmp_path), vocab_size=99)


def test_checkpoint_writer_includes_tokenizer(tmp_path):
    from dsv3.parity import default_config
    from dsv3.testing.checkpoints import write_checkpoint
    write_checkpoint(str(tmp_path), dsv3.load_config(default_config()), shards=1, tokenizer=True)
    m = dsv3.Model.from_pretrained(str(tmp_path), max_seq_len=32)
    assert m.tokenizer is not None and m.tokenizer.vocab_size <= 512
    out = m.generate("Hello", 4)
    assert isinstance(out, str)
    ids = m.generate(np.array(m.tokenizer.encode("Hello")), 4)
    assert out == m.tokenizer.decode(ids)
