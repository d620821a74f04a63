"""An independent GPT-2 forward pass written straight from OpenAI's `model.py`, on OpenAI's own variable layout.

It shares no code with `modeling_scratch_gpt.py` or the name table: it reads TF variables by their TF names
(`model/h0/attn/c_attn/w`, shape [1, in, out]) and computes in float64 numpy, so the converted model's logits can be
checked against it. Variables are fetched one layer at a time, so memory stays near one layer plus the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# OpenAI's model.py: attention scores of masked positions are set to -1e10 before the softmax.
MASKED_SCORE = -1e10
LAYER_NORM_EPSILON = 1e-5
# Rows of wte turned into logits at a time, so the float64 copy of the embedding never exists whole.
VOCAB_CHUNK = 8192


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + LAYER_NORM_EPSILON) * g + b


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OpenAI's 1x1 "conv": x (T, in) @ w[0] (in, out) + b."""
    return x @ w[0].astype(np.float64) + b


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * np.power(x, 3))))


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def attention(x: np.ndarray, get: Callable[[str], np.ndarray], scope: str, n_head: int) -> np.ndarray:
    """x (T, C) → (T, C): fused QKV, per-head causal softmax(q kᵀ / sqrt(hs)) v, output projection."""
    seq_len, width = x.shape
    qkv = conv1d(x, get(f"{scope}/c_attn/w"), get(f"{scope}/c_attn/b"))  # (T, 3C)
    q, k, v = np.split(qkv, 3, axis=-1)  # each (T, C)
    heads = lambda t: t.reshape(seq_len, n_head, width // n_head).transpose(1, 0, 2)  # (nh, T, hs)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(width // n_head)  # (nh, T, T)
    causal = np.tril(np.ones((seq_len, seq_len), dtype=bool))
    scores = np.where(causal, scores, MASKED_SCORE)
    merged = (softmax(scores) @ v).transpose(1, 0, 2).reshape(seq_len, width)  # (T, C)
    return conv1d(merged, get(f"{scope}/c_proj/w"), get(f"{scope}/c_proj/b"))


def reference_logits(get: Callable[[str], np.ndarray], hparams: dict[str, int], tokens: list[int]) -> np.ndarray:
    """Logits (T, n_vocab) in float64 for one sequence of token ids; `get(tf_name)` returns a TF variable."""
    if not tokens or len(tokens) > hparams["n_ctx"]:
        raise ValueError(f"need 1..{hparams['n_ctx']} tokens, got {len(tokens)}")
    wte = get("model/wte")
    x = wte[tokens].astype(np.float64) + get("model/wpe")[: len(tokens)].astype(np.float64)  # (T, C)
    for layer in range(hparams["n_layer"]):
        scope = f"model/h{layer}"
        x = x + attention(
            layer_norm(x, get(f"{scope}/ln_1/g"), get(f"{scope}/ln_1/b")), get, f"{scope}/attn", hparams["n_head"]
        )
        h = layer_norm(x, get(f"{scope}/ln_2/g"), get(f"{scope}/ln_2/b"))
        h = gelu(conv1d(h, get(f"{scope}/mlp/c_fc/w"), get(f"{scope}/mlp/c_fc/b")))
        x = x + conv1d(h, get(f"{scope}/mlp/c_proj/w"), get(f"{scope}/mlp/c_proj/b"))
    x = layer_norm(x, get("model/ln_f/g"), get("model/ln_f/b"))
    # The output head is the transposed token embedding (tied weights).
    return np.concatenate(
        [x @ wte[start: start + VOCAB_CHUNK].astype(np.float64).T for start in range(0, wte.shape[0], VOCAB_CHUNK)],
        axis=-1,
    )


__all__ = ["reference_logits"]
