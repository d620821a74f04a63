"""ScratchGPT: the GPT-2 architecture written from scratch as a transformers `PreTrainedModel`.

Reads top to bottom: loss → attention → MLP → block → pre-trained base → model → causal LM.
Module names match OpenAI's GPT-2 checkpoints and transformers' `GPT2LMHeadModel` (`transformer.wte`, `wpe`, `h`,
`ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`), so importing weights is a name map
plus one transpose (GPT-2 stores Conv1D weights as (in, out); we use `nn.Linear`, (out, in)).

This file ships to the Hub as custom code: it imports only torch, transformers (and safetensors, a dependency of
transformers) and its sibling configuration file.
"""


import json
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple, logging
from transformers.utils.generic import TransformersKwargs, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_scratch_gpt import ScratchGPTConfig

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100

# transformers 5.25 renamed the forward cache argument and the output field from `past_key_values` to `cache`
# (5.23 knows only `past_key_values`). The model takes the cache under either name and returns it under the field
# the installed transformers' output classes declare, which is the name its `generate` reads back.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
# Keywords a forward accepts besides its named parameters: what transformers' own models take through
# `**kwargs: Unpack[TransformersKwargs]` (output flags, attention-backend metadata, `num_items_in_batch`). Any
# other keyword is refused: one swallowed silently could carry state the model would then ignore (as the renamed
# cache did).
FORWARD_KWARGS = frozenset(TransformersKwargs.__optional_keys__ | TransformersKwargs.__required_keys__)


# ---------------------------------------------------------------------------------------------------------------------
# The loss: shift → flatten → cross-entropy with -100 masking
# ---------------------------------------------------------------------------------------------------------------------
def shift_and_flatten(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair the prediction at position t with the token at t+1 and flatten batch and time.

    logits: (B, T, V), labels: (B, T) → (N, V) and (N,) with N = B * (T - 1).
    """
    shift_logits = logits[..., :-1, :]  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[..., 1:]  # (B, T-1)
    return shift_logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1)


def _check_shift_labels(shift_labels: torch.Tensor, scores: torch.Tensor) -> None:
    """shift_labels must have one target per scored position: the shape of `scores` (B, T, ·) without its last dim."""
    if tuple(shift_labels.shape) != tuple(scores.shape[:-1]):
        raise ValueError(
            f"shift_labels shape {tuple(shift_labels.shape)} does not match the scored positions "
            f"{tuple(scores.shape[:-1])}: shift_labels are already aligned, one target per position"
        )


def _check_loss_inputs(
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    already_shifted: bool = False,
) -> None:
    """Raise `ValueError` for labels the loss cannot score and for a divisor that would silently give a wrong loss.

    - every label is a token id in [0, vocab_size) or -100 (otherwise cross-entropy fails with an IndexError, or a
      device-side assert on CUDA, that names neither the argument nor the vocabulary);
    - `num_items_in_batch` is >= 0, and not 0 while this batch has target tokens (the clamp that makes an
      all-masked batch's loss 0.0 would otherwise turn the mean into the plain sum).

    It reads the values (one host sync for all of them); while compiling it is skipped, like the input-id check.
    """
    kind = num_items_in_batch.dtype if torch.is_tensor(num_items_in_batch) else type(num_items_in_batch)
    if kind in (bool, torch.bool):  # True would divide by 1 without a word
        raise ValueError(f"num_items_in_batch must be a count of target tokens, got {num_items_in_batch!r}")
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    kept = labels.masked_fill(labels == IGNORE_INDEX, 0)
    targets = labels if already_shifted else labels[..., 1:]  # shift_labels are scored as given
    stats = [kept.min(), kept.max(), (targets != IGNORE_INDEX).sum()]
    if torch.is_tensor(num_items_in_batch):  # Trainer may pass a float or a (1,)-shaped tensor
        stats.append(num_items_in_batch.detach().reshape(-1)[0].to(labels.device))
    low, high, targets, *divisor = torch.stack([value.double() for value in stats]).tolist()
    if low < 0 or high >= vocab_size:
        bad = int(low if low < 0 else high)
        raise ValueError(
            f"{'shift_labels' if already_shifted else 'labels'} contains {bad}, outside the vocabulary "
            f"[0, {vocab_size}); use -100 to leave a position out "
            "of the loss"
        )
    if num_items_in_batch is None:
        return
    count = divisor[0] if divisor else float(num_items_in_batch)
    # It may be fractional: Trainer divides it by the tensor/context/sequence-parallel degree.
    if not 0 <= count < math.inf or (count == 0 and targets > 0):
        raise ValueError(
            f"num_items_in_batch is {count:g} but this batch has "
            f"{int(targets)} target tokens; it must count the unmasked targets of the whole (accumulated) batch"
        )


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose (shifted) label is not -100.

    - `labels` (B, T) are aligned with the input; the prediction at t is scored against `labels[t + 1]`.
    - `shift_labels` (B, T), when given, are the targets already aligned with the predictions (the prediction at t
      is scored against `shift_labels[t]`, -100 = not scored) and `labels` are ignored. Context/sequence
      parallelism (Accelerate CP, DeepSpeed Ulysses/ALST) shifts the full sequence before sharding it, so that a
      shard's last position still gets its target, and hands the model `shift_labels`.
    - Computed in float32 even when the model runs in bf16/fp16.
    - `num_items_in_batch` (what `Trainer` passes under gradient accumulation): the token losses are summed and
      divided by that count, so accumulated micro-batches give the same loss as one large batch.
    - When every label is -100 the loss is exactly 0.0 (and so are its gradients), never NaN: the sum over no
      tokens is 0 and the divisor is clamped to at least 1.
    """
    if shift_labels is not None:
        _check_shift_labels(shift_labels, logits)
        _check_loss_inputs(shift_labels, logits.size(-1), num_items_in_batch, already_shifted=True)
        flat_logits, flat_labels = logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1)  # (N, V), (N,)
    elif labels is not None:
        _check_loss_inputs(labels, logits.size(-1), num_items_in_batch)
        flat_logits, flat_labels = shift_and_flatten(logits, labels)
    else:
        raise ValueError("causal_lm_loss needs labels or shift_labels")
    summed = F.cross_entropy(
        flat_logits.float(),
        flat_labels.to(flat_logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    if num_items_in_batch is None:
        num_items_in_batch = (flat_labels != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(summed.device)
        return summed / num_items_in_batch.clamp(min=1)
    return summed / max(int(num_items_in_batch), 1)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weightᵀ, target_i), with the gradients computed chunk by chunk during the forward.

    The (N, V) logits exist only one chunk at a time (float32); what is kept for backward is the gradient with
    respect to `hidden` (N, C) and `weight` (V, C), scaled by the incoming gradient in `backward`. Under autocast
    the matmuls run in the autocast dtype, as `nn.Linear` would; the weight is cast once, not once per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing, chunk_size):
        # hidden (N, C), weight (V, C), targets (N,) with no -100 left: the caller keeps only scored rows.
        vocab_size = weight.size(0)
        device_type = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        want_grad_hidden, want_grad_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_grad_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grad_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device_type, enabled=False):
            weight_c = weight.to(compute_dtype)  # (V, C)
            for start in range(0, hidden.size(0), chunk_size):
                chunk = hidden[start : start + chunk_size].to(compute_dtype)  # (n, C)
                target = targets[start : start + chunk_size]  # (n,)
                logits = F.linear(chunk, weight_c).float()  # (n, V)
                token_loss = -logits.gather(1, target[:, None]).squeeze(1)
                if label_smoothing:
                    # (1 - ε) · NLL + ε · mean over the vocabulary of -log p, as F.cross_entropy(label_smoothing=ε)
                    token_loss = (1.0 - label_smoothing) * token_loss - label_smoothing * logits.mean(dim=-1)
                # log-sum-exp in place over the logits buffer (torch.logsumexp allocates two more (n, V) buffers).
                row_max = logits.amax(dim=-1, keepdim=True)  # (n, 1)
                unnormalized = logits.sub_(row_max).exp_()  # (n, V), the logits are gone from here on
                normalizer = unnormalized.sum(dim=-1, keepdim=True)  # (n, 1)
                token_loss += (row_max + normalizer.log()).squeeze(1)
                total += token_loss.sum()
                if not (want_grad_hidden or want_grad_weight):
                    continue
                # d(token_loss)/d(logits) = softmax - (1 - ε) · one_hot - ε / V, built in place.
                grad_logits = unnormalized.div_(normalizer)
                rows = torch.arange(grad_logits.size(0), device=grad_logits.device)
                grad_logits[rows, target] -= 1.0 - label_smoothing
                if label_smoothing:
                    grad_logits -= label_smoothing / vocab_size
                grad_logits = grad_logits.to(compute_dtype)
                if want_grad_hidden:
                    grad_hidden[start : start + chunk_size] = grad_logits @ weight_c
                if want_grad_weight:
                    grad_weight += grad_logits.t() @ chunk
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    chunk_size: int = 1024,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """`causal_lm_loss(hidden_states @ weightᵀ, labels, ..., shift_labels=...)` without holding the (B, T, V) logits.

    Same shift (or none with `shift_labels`), -100 masking, float32 accumulation, `num_items_in_batch` and
    label-smoothing semantics, equal to float32 rounding in value and gradients. Only the scored positions are projected, `chunk_size` at a time, so
    peak memory for the head is one (chunk_size, V) float32 buffer instead of the logits, their float32 copy and
    their gradient.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if shift_labels is not None:  # already aligned: position t is scored against shift_labels[t]
        _check_shift_labels(shift_labels, hidden_states)
        _check_loss_inputs(shift_labels, weight.size(0), num_items_in_batch, already_shifted=True)
        hidden = hidden_states.reshape(-1, hidden_states.size(-1))  # (N, C)
        targets = shift_labels.reshape(-1).to(hidden.device)  # (N,)
    elif labels is not None:
        _check_loss_inputs(labels, weight.size(0), num_items_in_batch)
        hidden = hidden_states[..., :-1, :].reshape(-1, hidden_states.size(-1))  # (N, C): position t predicts t+1
        targets = labels[..., 1:].reshape(-1).to(hidden.device)  # (N,)
    else:
        raise ValueError("chunked_causal_lm_loss needs labels or shift_labels")
    scored = targets != IGNORE_INDEX
    summed = _FusedLinearCrossEntropy.apply(hidden[scored], weight, targets[scored], label_smoothing, chunk_size)
    if num_items_in_batch is None:
        num_items_in_batch = scored.sum()
    if torch.is_tensor(num_items_in_batch):
        return summed / num_items_in_batch.to(summed.device).clamp(min=1)
    return summed / max(int(num_items_in_batch), 1)


def perplexity(loss: float | torch.Tensor) -> float:
    """Perplexity = exp(mean NLL per token, in nats)."""
    if isinstance(loss, torch.Tensor):
        loss = loss.detach()  # a loss straight from forward requires grad; float() of it warns
    return math.exp(float(loss))


# ---------------------------------------------------------------------------------------------------------------------
# Projections: nn.Linear, with a faster product for the few rows of a decoding step on CPU
# ---------------------------------------------------------------------------------------------------------------------
MIN_COLUMNS_PER_PART = 256
MAX_SPLIT_ROWS = 8


class ScratchGPTLinear(nn.Linear):
    """`nn.Linear` (same parameters, state dict and behaviour everywhere), whose product for a few rows on a CPU
    spreads over the threads.

    A decoding step multiplies one row per sequence by each weight. torch hands a single row to MKL's matrix-vector
    kernel, which runs on one thread whatever `torch.get_num_threads()` says (torch 2.13: 16–26 GB/s on the
    project's machine, where two threads read 32 GB/s), and a handful of rows to a matrix product that is slower
    still per byte. When the weight is stored (in, out) — the layout `generate` gives it, see
    `store_linear_weights_transposed` — its columns split into equal blocks that are (in, out/parts) matrices
    without a copy, and one `baddbmm` over those blocks runs them in parallel. Each output is the same dot product,
    summed in the order MKL's kernel for the block shape picks: for one row and for up to `MAX_SPLIT_ROWS` rows
    (batched decoding) equal to `F.linear` to float32 rounding (tested), not bit-identical (on an AVX-512 Xeon
    even `F.linear`'s one-row result depends on the weight's layout). Everything else (prefill and training
    batches, gradients, other devices or dtypes, quantized or distributed weights, the (out, in) layout,
    `torch.compile`) goes through `F.linear`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        parts = self._column_parts(input)
        if parts < 2:
            return F.linear(input, self.weight, self.bias)
        weight_t = self.weight.t()  # (in, out), contiguous in this layout
        fan_in, fan_out = weight_t.shape
        rows = input.numel() // fan_in
        width = fan_out // parts
        split = parts * width  # columns computed in blocks; the remainder (< parts) by F.linear
        flat = input.reshape(rows, fan_in)
        blocks = weight_t[:, :split].view(fan_in, parts, width).permute(1, 0, 2)  # (parts, in, width), a view
        if self.bias is None:
            output = torch.bmm(flat.expand(parts, rows, fan_in), blocks)
        else:
            output = torch.baddbmm(self.bias[:split].view(parts, 1, width), flat.expand(parts, rows, fan_in), blocks)
        output = output.view(1, split) if rows == 1 else output.permute(1, 0, 2).reshape(rows, split)
        if split < fan_out:
            bias = None if self.bias is None else self.bias[split:]
            output = torch.cat([output, F.linear(flat, self.weight[split:], bias)], dim=1)
        return output.view(*input.shape[:-1], fan_out)

    def _column_parts(self, input: torch.Tensor) -> int:
        """Blocks of columns to compute in parallel (below 2: use F.linear)."""
        weight = self.weight
        if (
            torch.compiler.is_compiling()  # first: nothing below becomes a guard of a compiled graph
            or torch.is_grad_enabled()  # training
            or input.device.type != "cpu"
            or input.dtype != torch.float32
            or weight.dtype != torch.float32
            or input.shape[-1] != weight.shape[1]  # F.linear's own error
            or input.numel() > MAX_SPLIT_ROWS * weight.shape[1]  # prefill and batches: MKL's matrix product
            or type(weight.data) is not torch.Tensor  # quantized (torchao) or distributed (DTensor) weights
            or weight.stride() != (1, weight.shape[0])  # only the decoding layout
        ):
            return 0
        return min(torch.get_num_threads(), weight.shape[0] // MIN_COLUMNS_PER_PART)


# ---------------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ·scale + mask)·v. query (B, nh, Tq, hs), key/value (B, nh, Tk, hs) → (B, Tq, nh, hs)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, Tq, Tk)
    if attention_mask is not None:  # additive (B, 1, Tq, Tk): 0 where allowed, dtype-min where masked
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(value.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)  # (B, Tq, nh, hs)
    return attn_output, attn_weights


class ScratchGPTAttention(nn.Module):
    """Causal multi-head self-attention with one fused QKV projection."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.attention_dropout = config.attn_pdrop
        self.c_attn = ScratchGPTLinear(config.n_embd, 3 * config.n_embd)  # q | k | v, heads contiguous inside each
        self.c_proj = ScratchGPTLinear(config.n_embd, config.n_embd)
        self.c_proj.writes_to_residual = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)

        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # (B, nh, past + T, hs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch, seq_len, -1)  # (B, T, C)
        attn_output = self.resid_dropout(self.c_proj(attn_output))
        return attn_output, attn_weights


# ---------------------------------------------------------------------------------------------------------------------
# MLP and block
# ---------------------------------------------------------------------------------------------------------------------
# GPT-2's "gelu_new" is the tanh approximation; torch's fused kernel computes the same formula in one pass
# instead of the six element-wise ops of the written-out version (equal to float32 rounding).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


class ScratchGPTMLP(nn.Module):
    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = ScratchGPTLinear(config.n_embd, inner)
        self.c_proj = ScratchGPTLinear(inner, config.n_embd)
        self.c_proj.writes_to_residual = True
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = ScratchGPTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        attn_output, _ = self.attn(
            self.ln_1(hidden_states), attention_mask=attention_mask, past_key_values=past_key_values, **kwargs
        )
        hidden_states = residual + attn_output

        residual = hidden_states
        hidden_states = residual + self.mlp(self.ln_2(hidden_states))
        return hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# Weight layout for decoding
# ---------------------------------------------------------------------------------------------------------------------
def store_linear_weights_transposed(model: nn.Module) -> None:
    """Keep every `nn.Linear` weight in (in, out) memory while it stays an (out, in) parameter.

    Why: a batch-1 decoding step is one matrix-vector product per weight, bound by how fast the weights are read.
    torch's CPU kernel reads a weight stored (in, out) — GPT-2's Conv1D layout — markedly faster than the (out, in)
    rows `nn.Linear` allocates (torch 2.13, 2 threads, all 124M-shape block weights: 18.5 vs 23.3 ms; the
    (50257, 768) head: 5.7 vs 11.4 ms). `F.linear` multiplies by `weight.t()`, which is then a contiguous (in, out)
    matrix, so it takes that kernel with no other change; in this layout `ScratchGPTLinear` also splits a one-row
    product into column blocks computed on all threads. The parameter keeps its name, shape (out, in) and values;
    only its strides become (1, out): `state_dict` keys and shapes and `save_pretrained` (it writes contiguous
    copies) are unchanged. `ScratchGPTForCausalLM.generate` calls this on a model in eval mode. The tied head shares
    its Parameter with `wte`, so the embedding is stored the same way (a row lookup of a few tokens does not mind
    the stride). Storage is swapped one matrix at a time: the model is never held twice. Quantized or distributed
    weights (tensor subclasses) and weights already laid out otherwise are left alone; the function is idempotent.
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight
            if type(weight.data) is torch.Tensor and weight.dim() == 2 and weight.is_contiguous() and min(weight.shape) > 1:
                weight.data = weight.data.t().contiguous().t()  # (out, in) shape, (in, out) memory


# ---------------------------------------------------------------------------------------------------------------------
# Pre-trained base, model, causal LM
# ---------------------------------------------------------------------------------------------------------------------
class ScratchGPTPreTrainedModel(PreTrainedModel):
    config: ScratchGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchGPTBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]  # the cache, by either name
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": ScratchGPTBlock,
        "attentions": OutputRecorder(ScratchGPTAttention, index=1),
    }

    def save_pretrained(self, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with the tied weights made contiguous while it runs.

        transformers' shared-tensor check flattens each shared tensor with `.view(-1)`, which fails on the
        transposed storage of the tied head/embedding; that one matrix is copied contiguous for the save and
        stored transposed again afterwards (the files are the same either way: safetensors are written contiguous).
        """
        if kwargs.get("state_dict") is not None:  # e.g. Accelerate's gathered state dict: views of our storage
            copies: dict[tuple, torch.Tensor] = {}  # one contiguous copy per shared storage, so ties stay visible

            def contiguous(tensor):
                if not torch.is_tensor(tensor) or tensor.is_contiguous():
                    return tensor
                key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
                return copies.setdefault(key, tensor.contiguous())

            kwargs["state_dict"] = {name: contiguous(tensor) for name, tensor in kwargs["state_dict"].items()}
        seen, tied = set(), []
        for _, param in self.named_parameters(remove_duplicate=False):  # a tied Parameter: once per owner
            if id(param) in seen and not param.is_contiguous():
                tied.append(param)
            seen.add(id(param))
        with torch.no_grad():
            for param in tied:
                param.data = param.data.contiguous()
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            with torch.no_grad():
                for param in tied:  # only what was changed above: a training model's storage is left as it is
                    param.data = param.data.t().contiguous().t()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's init: N(0, initializer_range) for weights and embeddings, zero biases, unit LayerNorms, and
        N(0, initializer_range / sqrt(2 * n_layer)) for the projections that write into the residual stream."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "writes_to_residual", False):
                # Two residual additions per layer: keep the stream's variance independent of depth. Decided on
                # the Linear itself because transformers skips parameter-less parents (attention, MLP) when
                # initialising custom-code models.
                std = std / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, safetensors only, with the weight files of a local folder checked
        before anything is read (`check_weight_files`) and a tensor missing from the files an error instead of a
        fresh random init.

        The class's own, so plain `AutoModelForCausalLM.from_pretrained` is guarded too, with the package imported
        or through trust_remote_code. Built on the public method only: no private loading step has to keep being
        called for the checks to run.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("ScratchGPT loads weights only from safetensors files (pickle can run code); "
                             "use_safetensors must be True or left out")
        kwargs["use_safetensors"] = True
        files = []
        if pretrained_model_name_or_path is not None:
            folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if folder.is_dir():
                for name in ("config.json", "generation_config.json"):
                    if (folder / name).exists():
                        file_in_folder(folder, name)
                files = check_weight_files(folder)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if model.config.tie_word_embeddings and isinstance(model, ScratchGPTForCausalLM):
            check_tied_head(model, files)
        if info["missing_keys"]:  # a tied lm_head.weight is not in it (tie_weights removed it)
            raise ValueError(
                f"the weights in {pretrained_model_name_or_path} lack tensors the model needs: "
                f"{sorted(info['missing_keys'])}; they would be randomly initialised. Save the model again "
                f"(or set tie_word_embeddings=true in config.json if lm_head is meant to share wte's weights)"
            )
        return (model, info) if want_info else model


SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Left by `train`'s final save while its files are being moved into place (see training/final_save.py).
INTERRUPTED_FINAL_SAVE_NAME = ".complete-final"
# safetensors dtypes a model's floating-point parameters can be loaded from; anything else (I8, BOOL, ...) would be
# cast to float silently.
FLOAT_WEIGHT_DTYPES = ("F64", "F32", "F16", "BF16")
# Weight formats that are read through pickle; never loaded.
UNSAFE_WEIGHT_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "training_args.bin")


def is_plain_file_name(name: object) -> bool:
    """True for a name that stays inside its folder: no separators, no drive, not '', '.' or '..'."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")


def file_in_folder(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name`, refused (`ValueError`) when it resolves outside the folder, through a symlink or `..`.

    The one exception is the layout of the Hub cache: a snapshot folder (`…/models--owner--name/snapshots/<rev>`)
    holds links into the same repository's `blobs/`, and those are followed.
    """
    path = Path(folder) / name
    real_folder, real = Path(folder).resolve(), path.resolve()
    allowed = [real_folder]
    if real_folder.parent.name == "snapshots":
        allowed.append(real_folder.parent.parent / "blobs")
    if not any(real.is_relative_to(root) for root in allowed):
        raise ValueError(
            f"{path} resolves to {real}, outside the model folder {folder}; links out of a model folder are not "
            f"followed (copy the file into the folder instead)"
        )
    return path


def check_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model folder (`model.safetensors`, or the shards its index lists), checked.

    Raises `FileNotFoundError`/`ValueError` naming the file for: a final save of `train` that was interrupted, a
    folder whose only weights are pickle files, an index that is not JSON with a `weight_map`, a shard name that is
    not a plain file name (`../x`, `/abs/x`), a listed shard that does not exist, a file that is a link out of the
    folder, a safetensors header that is unreadable (truncated or corrupted; safetensors' own error does not name
    the file), a tensor that is not floating point, and a tensor held by two files. Reads headers only.
    """
    folder = Path(folder)
    if (folder / INTERRUPTED_FINAL_SAVE_NAME).is_dir():
        raise ValueError(
            f"{folder} holds {INTERRUPTED_FINAL_SAVE_NAME}: a final save was interrupted while its files were being "
            f"moved into place; run the same `train` command again (it completes the move first)"
        )
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        file_in_folder(folder, index.name)
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {error}") from error
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names")
        names = sorted(set(weight_map.values()), key=str)
        for name in names:
            if not is_plain_file_name(name):
                raise ValueError(
                    f"{index} lists the shard {name!r}; a shard must be a plain file name inside {folder} "
                    f"(no directories, '..' or absolute paths)"
                )
        files = [folder / name for name in names]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {missing}")
    else:
        unsafe = [name for name in UNSAFE_WEIGHT_NAMES if (folder / name).exists()]
        if unsafe:
            raise FileNotFoundError(
                f"{folder} has no {SAFE_WEIGHTS_NAME}, only {unsafe}; ScratchGPT never loads pickle weights "
                f"(they can run arbitrary code). Convert them to safetensors in a trusted environment first."
            )
        raise FileNotFoundError(f"{single} not found (nor {SAFE_WEIGHTS_INDEX_NAME}); the folder has no model weights")
    holder: dict[str, Path] = {}  # tensor name → the file that holds it
    for file in files:
        file_in_folder(folder, file.name)
        try:
            with safe_open(str(file), framework="pt") as handle:
                dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
        except SafetensorError as error:
            raise ValueError(
                f"{file} is not a readable safetensors file ({error}); it is truncated or corrupted — "
                f"save or download it again"
            ) from error
        for name, dtype in dtypes.items():
            if dtype not in FLOAT_WEIGHT_DTYPES:
                raise ValueError(
                    f"{file}: tensor {name} has dtype {dtype}; ScratchGPT's weights are floating point "
                    f"({', '.join(FLOAT_WEIGHT_DTYPES)}) and are not cast from other types"
                )
            if name in holder:
                raise ValueError(f"tensor {name} is held by two weight files, {holder[name]} and {file}; keep one")
            holder[name] = file
    return files


def check_tied_head(model: "ScratchGPTForCausalLM", files: list[Path]) -> None:
    """A model whose config ties lm_head to wte must not come from files holding a different `lm_head.weight`:
    one of the two would silently win."""
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            if "lm_head.weight" not in handle.keys():
                continue
            head = handle.get_tensor("lm_head.weight")
        embedding = model.get_input_embeddings().weight
        if not torch.equal(head.to(embedding.device, embedding.dtype), embedding.detach()):
            raise ValueError(
                f"{file} holds an lm_head.weight that differs from transformer.wte.weight, but config.json says "
                f"tie_word_embeddings=true (they are one tensor); set it to false if the head is separate"
            )


def _check_inputs(
    config: ScratchGPTConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_length: int,
    position_ids: torch.Tensor | None = None,
) -> None:
    """Raise `ValueError` for inputs that would otherwise fail deep inside torch (or silently index garbage)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        batch, seq_len = input_ids.shape
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.size(-1) != config.n_embd:
            raise ValueError(
                f"inputs_embeds must be (batch, seq_len, {config.n_embd}), got shape {tuple(inputs_embeds.shape)}"
            )
        batch, seq_len = inputs_embeds.shape[:2]
    if batch == 0 or seq_len == 0:
        raise ValueError(f"empty input: batch size {batch}, sequence length {seq_len}; both must be >= 1")
    if position_ids is not None:
        if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
            raise ValueError(f"position_ids must be an integer tensor, got dtype {position_ids.dtype}")
        if position_ids.numel() == 0 or position_ids.size(-1) != seq_len:
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}, expected one position per new token "
                f"(..., {seq_len})"
            )
    # A 2-D mask marks each position 1 (attend) or 0 (padding); 0.5, 2 or -1 would silently weight attention.
    mask_2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    if mask_2d is not None and mask_2d.dtype.is_floating_point and not torch.compiler.is_compiling():
        mask_2d = torch.where(mask_2d == mask_2d.round(), mask_2d, torch.full_like(mask_2d, 0.5))
        if not torch.equal(mask_2d, mask_2d.round()):
            raise ValueError("attention_mask holds a fractional value; a 2-D mask is 1 (attend) or 0 (padding)")
    # (argument, values, exclusive bound, what it is, what it indexes): token ids index wte, positions index wpe.
    ranges = [
        ("input_ids", input_ids, config.vocab_size, "token id", "the vocabulary"),
        ("position_ids", position_ids, config.n_positions, "position", "the position table (n_positions)"),
        ("attention_mask", None if mask_2d is None else mask_2d.to(torch.int8), 2, "value", "0 (padding), 1 (attend):"),
    ]
    ranges = [entry for entry in ranges if entry[1] is not None]
    # The range checks read the ids (one device sync for both, a graph break under torch.compile); a compiled
    # model leaves them to the embedding lookups' own bounds checks.
    if ranges and not torch.compiler.is_compiling():
        device = ranges[0][1].device
        bounds = torch.stack([bound.to(device) for _, ids, *_ in ranges for bound in ids.aminmax()]).tolist()
        for (name, _, high, what, table), low, top in zip(ranges, bounds[0::2], bounds[1::2]):
            if low < 0 or top >= high:
                raise ValueError(f"{name} contains {what} {low if low < 0 else top}, outside {table} [0, {high})")
    total = past_length + seq_len
    # A static cache reports its length as a tensor: comparing it is a data-dependent branch under torch.compile.
    # (The compiled decode loop is bounded by the static cache's size, which generate() checks up front.)
    if not torch.compiler.is_compiling() and total > config.n_positions:
        raise ValueError(
            f"sequence length {total} (cached {past_length} + new {seq_len}) exceeds the model's n_positions "
            f"{config.n_positions}"
        )
    if attention_mask is not None and attention_mask.dim() == 2 and tuple(attention_mask.shape) != (batch, total):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, cached + new tokens) = "
            f"{(batch, total)}"
        )
    if attention_mask is not None and attention_mask.dim() not in (2, 4):
        raise ValueError(f"attention_mask must be 2-D (batch, length) or a prepared 4-D mask, got {attention_mask.dim()}-D")
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        # (batch or 1, heads or 1, new tokens, keys): keys may exceed cached + new (a static cache's full length),
        # but a mask broadcast over the query positions would drop causality.
        b, h, q, k = attention_mask.shape
        if b not in (1, batch) or h not in (1, config.n_head) or q != seq_len or k < total:
            raise ValueError(
                f"4-D attention_mask has shape {tuple(attention_mask.shape)}, expected (batch {batch} or 1, heads "
                f"{config.n_head} or 1, new tokens {seq_len}, keys >= {total})"
            )


def _one_cache(cache: object, past_key_values: object) -> Cache | None:
    """The cache passed as `cache` (transformers >= 5.25) or `past_key_values` (earlier), checked to be a `Cache`
    (the legacy tuple of (key, value) pairs would fail as an AttributeError)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not both")
    name, cache = ("cache", cache) if cache is not None else ("past_key_values", past_key_values)
    if cache is not None and not isinstance(cache, Cache):
        raise ValueError(
            f"{name} must be a transformers Cache (e.g. the DynamicCache the model returns with "
            f"use_cache=True), got {type(cache).__name__}; wrap a legacy tuple of (key, value) pairs with "
            "DynamicCache(ddp_cache_data=...)"
        )
    return cache


def _check_forward_kwargs(owner: str, kwargs: dict) -> None:
    """Refuse keywords outside `FORWARD_KWARGS`, as a plain function would (`TypeError` naming them)."""
    unknown = sorted(set(kwargs) - FORWARD_KWARGS)
    if unknown:
        raise TypeError(
            f"{owner}.forward() got unexpected keyword arguments {unknown}; besides its named parameters it takes "
            f"only {sorted(FORWARD_KWARGS)}"
        )


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """Embeddings → blocks → final LayerNorm; returns the last hidden state (and the cache)."""

    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([ScratchGPTBlock(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        _check_forward_kwargs(type(self).__name__, kwargs)
        cache = _one_cache(cache, past_key_values)
        past_length = cache.get_seq_length() if cache is not None else 0
        _check_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.size(1), device=inputs_embeds.device).unsqueeze(0) + past_length
        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))

        # None when the mask is plainly causal (sdpa then uses its is_causal kernel); 4-D additive/bool otherwise.
        # The cache is passed by position: its keyword is `past_key_values` before transformers 5.25, `cache` after.
        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids=position_ids)
        for block in self.h:
            hidden_states = block(hidden_states, causal_mask, cache, position_ids=position_ids, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_FIELD: cache if use_cache else None})


class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """ScratchGPTModel with a language-modelling head tied to the token embedding."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__(config)
        self.transformer = ScratchGPTModel(config)
        self.lm_head = ScratchGPTLinear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`, with the weights first stored for fast decoding
        (`store_linear_weights_transposed`, once; a model in training mode is left as it is).

        Done here rather than at construction: training, `Trainer` and Accelerate checkpoints keep the contiguous
        storage they expect (safetensors' shared-tensor check cannot read a transposed tied weight).
        """
        if not self.training:
            store_linear_weights_transposed(self)
        return super().generate(*args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the next-token loss, aligned with `input_ids` (the model shifts them). Positions set to
            -100 are ignored. When every position is -100 the loss is 0.0.
        cache (`Cache`, *optional*), or `past_key_values`:
            The key/value cache of earlier positions (`DynamicCache`, or the cache the previous call returned with
            `use_cache=True`). transformers 5.25 calls it `cache`, earlier versions `past_key_values`; either name
            is accepted (not both), and the output carries it under the installed version's name.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            Number of unmasked target tokens across the whole (accumulated) batch; when given, the loss is the sum
            of token losses divided by it. `Trainer` passes it under gradient accumulation.
        shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*, keyword):
            Targets already aligned with the predictions (position t is scored against `shift_labels[t]`, no shift;
            -100 is ignored). When given, the loss uses them and not `labels`. `Trainer` passes them under context
            parallelism, where the sequence is shifted before it is sharded.
        """
        # Taken from **kwargs, as transformers' own models do, not as a named parameter: Trainer treats every
        # forward parameter with "label" in its name as a label column (`find_labels`) and would then expect
        # `shift_labels` in every evaluation batch.
        shift_labels: torch.Tensor | None = kwargs.pop("shift_labels", None)
        _check_forward_kwargs(type(self).__name__, kwargs)
        reference = input_ids if input_ids is not None else None if inputs_embeds is None else inputs_embeds[..., 0]
        for name, targets in (("labels", labels), ("shift_labels", shift_labels)):
            if targets is None:
                continue
            if targets.dtype.is_floating_point or targets.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor of token ids, got dtype {targets.dtype}")
            if reference is not None and targets.shape != reference.shape:
                raise ValueError(
                    f"{name} shape {tuple(targets.shape)} does not match the input shape {tuple(reference.shape)}"
                )
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)

        loss, logits = None, None
        has_targets = labels is not None or shift_labels is not None
        if has_targets and self.training and self.config.loss_chunk_size > 0:
            # Memory-lean training path: the loss (and its gradients) without materialising the logits.
            loss = chunked_causal_lm_loss(
                hidden_states, self.lm_head.weight, labels, num_items_in_batch, self.config.label_smoothing,
                chunk_size=self.config.loss_chunk_size, shift_labels=shift_labels,
            )
        else:
            logits = self.lm_head(hidden_states)  # (B, T, V)
            if has_targets:
                loss = causal_lm_loss(
                    logits, labels, num_items_in_batch, self.config.label_smoothing, shift_labels=shift_labels
                )

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "ScratchGPTForCausalLM",
    "ScratchGPTLinear",
    "ScratchGPTModel",
    "ScratchGPTPreTrainedModel",
    "causal_lm_loss",
    "chunked_causal_lm_loss",
    "perplexity",
    "shift_and_flatten",
    "store_linear_weights_transposed",
]
