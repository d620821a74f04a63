"""Float64 building blocks of the peer projects' own forward passes, written out in plain torch.

Each converter composes its source project's forward from these (nanoGPT's `model.py`, llm.c's `train_gpt2.py`, the
book's `GPTModel`), reading the tensors under the source's own names and layout. Nothing here touches
`modeling_scratch_gpt.py`: the converted model is checked against a computation that shares no code with it.
"""

from __future__ import annotations

import math

import torch

# Rows of the output head turned into logits at a time, so a float64 copy of a 50k-row head never exists whole.
HEAD_CHUNK = 8192


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(biased variance + eps) · weight + bias over the last axis; `bias=None` adds nothing."""
    mean = x.mean(dim=-1, keepdim=True)
    variance = (x - mean).square().mean(dim=-1, keepdim=True)  # biased, as nn.LayerNorm and the book's LayerNorm
    out = (x - mean) / torch.sqrt(variance + eps) * weight.double()
    return out if bias is None else out + bias.double()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.Linear: x (T, in) · weight (out, in)ᵀ + bias."""
    out = x @ weight.double().T
    return out if bias is None else out + bias.double()


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, x · Φ(x) (torch's `nn.GELU()`, nanoGPT's MLP)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of the GELU (llm.c's `NewGELU`, the book's `GELU`)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def causal_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int) -> torch.Tensor:
    """q, k, v (T, C), heads side by side in C → (T, C): per head, softmax(q·kᵀ/√hs) over the positions up to
    each query, times v."""
    seq_len, width = q.shape
    head_dim = width // n_head
    heads = lambda t: t.reshape(seq_len, n_head, head_dim).transpose(0, 1)  # (nh, T, hs)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(1, 2) / math.sqrt(head_dim)  # (nh, T, T)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(diagonal=1)
    scores = scores.masked_fill(future, -math.inf)
    return (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(seq_len, width)  # (T, C)


def head_logits(x: torch.Tensor, head: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """x (T, C) · head (V, C)ᵀ → (T, rows) over the first `rows` rows of the head (all by default), in chunks."""
    rows = head.shape[0] if rows is None else rows
    return torch.cat(
        [x @ head[start: min(start + HEAD_CHUNK, rows)].double().T for start in range(0, rows, HEAD_CHUNK)], dim=-1
    )


__all__ = ["causal_self_attention", "gelu_erf", "gelu_tanh", "head_logits", "layer_norm", "linear"]
