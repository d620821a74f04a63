"""Builders for checkpoints in OpenAI's exact GPT-2 release layout (tiny shapes, random weights), written with
TensorFlow's TF1 `Saver` like OpenAI's own, plus a small byte-level BPE as `encoder.json` / `vocab.bpe`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

END_OF_TEXT = "<|endoftext|>"
# Text the BPE is trained on: enough variety that merges cover letters, digits, punctuation, spaces and some
# non-ASCII; anything else still encodes through the 256 byte tokens.
BPE_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello, world! It's a test; they're here, we've won.",
    "GPT-2 is a transformer language model. Language models predict the next token in the text.",
    "Numbers like 1999, 2024 and 3.14159 appear too.  Runs   of    spaces\n\nand\nnewlines\n\n\n.",
    "Ünïcödé: café, naïve, Straße, 東京, Привет мир, 🙂🚀 emoji, and tabs\tbetween\twords.",
] * 20
TINY_HPARAMS = {"n_ctx": 32, "n_embd": 32, "n_head": 4, "n_layer": 2}


def write_tiny_bpe(folder: Path, vocab_size: int = 320) -> dict[str, int]:
    """Train a byte-level BPE, write it as OpenAI does (encoder.json with <|endoftext|> last, vocab.bpe)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_CORPUS, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    model = json.loads(bpe._tokenizer.to_str())["model"]
    encoder = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    encoder[END_OF_TEXT] = len(encoder)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return encoder


def random_openai_variables(hparams: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Every GPT-2 variable under its TF name and TF shape, with weights large enough to give O(1) logits."""
    rng = np.random.default_rng(seed)
    c, v, t = hparams["n_embd"], hparams["n_vocab"], hparams["n_ctx"]

    def normal(*shape, std=0.2):
        return rng.normal(0.0, std, shape).astype(np.float32)

    variables = {"model/wte": normal(v, c), "model/wpe": normal(t, c, std=0.1)}
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}"
        variables.update({
            f"{h}/ln_1/g": 1 + normal(c, std=0.1), f"{h}/ln_1/b": normal(c, std=0.1),
            f"{h}/attn/c_attn/w": normal(1, c, 3 * c), f"{h}/attn/c_attn/b": normal(3 * c, std=0.1),
            f"{h}/attn/c_proj/w": normal(1, c, c), f"{h}/attn/c_proj/b": normal(c, std=0.1),
            f"{h}/ln_2/g": 1 + normal(c, std=0.1), f"{h}/ln_2/b": normal(c, std=0.1),
            f"{h}/mlp/c_fc/w": normal(1, c, 4 * c), f"{h}/mlp/c_fc/b": normal(4 * c, std=0.1),
            f"{h}/mlp/c_proj/w": normal(1, 4 * c, c), f"{h}/mlp/c_proj/b": normal(c, std=0.1),
        })
    variables["model/ln_f/g"] = 1 + normal(c, std=0.1)
    variables["model/ln_f/b"] = normal(c, std=0.1)
    return variables


def save_tf1_checkpoint(folder: Path, variables: dict[str, np.ndarray]) -> None:
    """`checkpoint`, `model.ckpt.index`, `model.ckpt.data-00000-of-00001`, `model.ckpt.meta` via TF1 Saver."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf_variables = [tf.compat.v1.Variable(value, name=name) for name, value in variables.items()]
        saver = tf.compat.v1.train.Saver(tf_variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(folder / "model.ckpt"), write_meta_graph=True)


def write_openai_checkpoint(folder: Path, hparams: dict[str, int] | None = None, seed: int = 0,
                            variables: dict[str, np.ndarray] | None = None, bpe_from: Path | None = None) -> dict:
    """A complete OpenAI-layout folder. `variables` replaces the random ones (for broken-checkpoint tests);
    `bpe_from` copies encoder.json / vocab.bpe from another folder instead of retraining."""
    folder.mkdir(parents=True, exist_ok=True)
    if bpe_from is not None:
        for name in ("encoder.json", "vocab.bpe"):
            (folder / name).write_bytes((bpe_from / name).read_bytes())
        encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    else:
        encoder = write_tiny_bpe(folder)
    hparams = {"n_vocab": len(encoder), **TINY_HPARAMS, **(hparams or {})}
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2))
    if variables is None:
        variables = random_openai_variables(hparams, seed)
    save_tf1_checkpoint(folder, variables)
    return hparams
