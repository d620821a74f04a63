"""OpenAI's `encoder.json` + `vocab.bpe` → a transformers GPT-2 tokenizer (byte-level BPE).

`encoder.json` is the token → id map; `vocab.bpe` is a `#version` line followed by one merge ("a b") per line, in
priority order. The result is saved with `tokenizer.json` (what `AutoTokenizer` loads) and also `vocab.json` +
`merges.txt`, the classic GPT-2 file pair.

Built from the parsed dict and list: `GPT2Tokenizer(vocab_file=..., merges_file=...)` silently builds an empty
tokenizer in transformers 5.23, so file paths are never handed to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import GPT2Tokenizer

from ..loading import read_json_file, read_text_file

END_OF_TEXT = "<|endoftext|>"
MERGES_VERSION_LINE = "#version: 0.2"


def read_encoder(encoder_json: str | os.PathLike) -> dict[str, int]:
    path = Path(encoder_json)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {path}")
    encoder = read_json_file(path)
    if not isinstance(encoder, dict) or not all(isinstance(i, int) for i in encoder.values()):
        raise ValueError(f"{path} must map token strings to integer ids")
    if END_OF_TEXT not in encoder:
        raise ValueError(f"{path} has no {END_OF_TEXT!r} token; GPT-2 uses it as bos/eos")
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise ValueError(f"{path}: token ids must be exactly 0..{len(encoder) - 1} without gaps or repeats")
    return encoder


def read_merges(vocab_bpe: str | os.PathLike) -> list[tuple[str, str]]:
    path = Path(vocab_bpe)
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges not found: {path}")
    merges: list[tuple[str, str]] = []
    for line_number, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}, line {line_number}: expected a merge 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def openai_tokenizer(
    encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike, model_max_length: int | None = None
) -> GPT2Tokenizer:
    """A `GPT2Tokenizer` that encodes exactly as OpenAI's `encoder.py`, with `<|endoftext|>` as bos/eos/unk."""
    encoder = read_encoder(encoder_json)
    merges = read_merges(vocab_bpe)
    unknown = sorted({piece for merge in merges for piece in merge if piece not in encoder} |
                     {"".join(merge) for merge in merges if "".join(merge) not in encoder})
    if unknown:
        raise ValueError(f"{vocab_bpe}: merges use tokens missing from {encoder_json}: {unknown[:5]}")
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = GPT2Tokenizer(
        vocab=encoder, merges=merges, unk_token=END_OF_TEXT, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
        add_prefix_space=False, **extra,
    )
    # Catch the silent-empty-tokenizer failure mode rather than saving a tokenizer that encodes nothing.
    if len(tokenizer) != len(encoder) or tokenizer.convert_tokens_to_ids(END_OF_TEXT) != encoder[END_OF_TEXT]:
        raise ValueError(
            f"tokenizer built from {encoder_json} has {len(tokenizer)} tokens, expected {len(encoder)}"
        )
    return tokenizer


def save_openai_tokenizer(
    encoder_json: str | os.PathLike,
    vocab_bpe: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_max_length: int | None = None,
) -> GPT2Tokenizer:
    """Save the tokenizer (`tokenizer.json`, `tokenizer_config.json`) plus `vocab.json` and `merges.txt`."""
    tokenizer = openai_tokenizer(encoder_json, vocab_bpe, model_max_length)
    out = Path(out_dir)
    tokenizer.save_pretrained(out)
    (out / "vocab.json").write_text(json.dumps(read_encoder(encoder_json), ensure_ascii=False), encoding="utf-8")
    merges = read_merges(vocab_bpe)
    (out / "merges.txt").write_text(
        "\n".join([MERGES_VERSION_LINE, *(f"{a} {b}" for a, b in merges)]) + "\n", encoding="utf-8"
    )
    return tokenizer


__all__ = ["END_OF_TEXT", "openai_tokenizer", "read_encoder", "read_merges", "save_openai_tokenizer"]
