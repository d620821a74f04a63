"""OpenAI's GPT-2 `encoder.py` BPE, transcribed as an independent route to the token ids (tests only)."""

import json
from functools import lru_cache
from pathlib import Path

import regex

# The pre-tokenisation pattern of OpenAI's encoder.py.
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


class OpenAIEncoder:
    def __init__(self, folder: Path) -> None:
        self.encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
        lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]
        self.ranks = {tuple(line.split()): rank for rank, line in enumerate(lines)}

    def bpe(self, token: str) -> list[str]:
        word = list(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        byte_encoder = bytes_to_unicode()
        ids = []
        for piece in PATTERN.findall(text):
            token = "".join(byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self.bpe(token))
        return ids

    def encode_with_special(self, text: str, special: str = "<|endoftext|>") -> list[int]:
        """OpenAI's encoder has no special tokens; the GPT-2 convention maps the literal marker to its id."""
        ids: list[int] = []
        for i, chunk in enumerate(text.split(special)):
            if i:
                ids.append(self.encoder[special])
            ids.extend(self.encode(chunk))
        return ids
