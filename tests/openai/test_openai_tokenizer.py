"""encoder.json + vocab.bpe → GPT2Tokenizer: the same ids as OpenAI's encoder.py and tokenizers' byte-level BPE."""

import json

import pytest
from openai_bpe_reference import OpenAIEncoder
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, GPT2Tokenizer

from hf_scratch_gpt.openai.tokenizer import openai_tokenizer, read_merges

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! It's they're we've I'm you'll he'd",
    "café naïve Straße 東京 Привет мир",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
    "runs    of     spaces   \n\n\n  and\t\ttabs \r\n end ",
    "   leading spaces and trailing   ",
    "numbers 1999 3.14159 -42 1e10",
    "one<|endoftext|>two <|endoftext|> three<|endoftext|>",
    "\x00\x01 control \x7f chars \u200b zero-width",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(openai_ckpt):
    return openai_tokenizer(openai_ckpt / "encoder.json", openai_ckpt / "vocab.bpe")


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_openai_encoder_and_tokenizers_bpe(tokenizer, openai_ckpt, text):
    ours = tokenizer(text)["input_ids"]
    assert ours == OpenAIEncoder(openai_ckpt).encode_with_special(text)

    encoder = json.loads((openai_ckpt / "encoder.json").read_text(encoding="utf-8"))
    bpe = ByteLevelBPETokenizer(encoder, read_merges(openai_ckpt / "vocab.bpe"))
    bpe.add_special_tokens(["<|endoftext|>"])
    assert ours == bpe.encode(text).ids
    assert tokenizer.decode(ours) == text  # byte-level: lossless


def test_tokenizer_really_encodes_and_has_special_tokens(tokenizer, openai_ckpt):
    encoder = json.loads((openai_ckpt / "encoder.json").read_text(encoding="utf-8"))
    assert len(tokenizer) == len(encoder)  # the v5 vocab_file pitfall gives length 1
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == encoder["<|endoftext|>"] == len(encoder) - 1
    assert len(tokenizer("The quick brown fox")["input_ids"]) > 0


def test_saved_tokenizer_loads_with_auto_and_from_vocab_merges(converted, tokenizer):
    out, _ = converted
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= {p.name for p in out.iterdir()}
    auto = AutoTokenizer.from_pretrained(out)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    from_files = GPT2Tokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    for text in TEXTS:
        expected = tokenizer(text)["input_ids"]
        assert auto(text)["input_ids"] == expected
        assert from_files(text)["input_ids"] == expected
    assert auto.model_max_length == 32  # n_ctx


def test_bad_tokenizer_files_are_named(tmp_path, openai_ckpt):
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match=r"vocab.bpe, line 2"):
        read_merges(tmp_path / "vocab.bpe")
    (tmp_path / "encoder.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match="endoftext"):
        openai_tokenizer(tmp_path / "encoder.json", openai_ckpt / "vocab.bpe")
    with pytest.raises(FileNotFoundError, match="missing.bpe"):
        openai_tokenizer(openai_ckpt / "encoder.json", tmp_path / "missing.bpe")
