"""The training-mode fast path of the loss: `chunked_causal_lm_loss` gives `causal_lm_loss(hidden @ weightᵀ, ...)`
(same shift, -100 masking, float32 accumulation, `num_items_in_batch` and label smoothing; equal to float32 rounding
in value and gradients) without ever holding the (B, T, V) logits.

Ships to the Hub with `modeling_scratch_gpt.py` (custom code): imports only torch and its sibling checks.
"""

import torch
import torch.nn.functional as F

from .checks_scratch_gpt import IGNORE_INDEX, check_loss_inputs, check_shift_labels


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weightᵀ, target_i), with the gradients computed chunk by chunk during the forward.

    The (N, V) logits exist only one chunk at a time (float32); what is kept for backward is the gradient with
    respect to `hidden` (N, C) and `weight` (V, C), scaled in place by the incoming gradient in `backward` and
    handed over (so autograd adopts the (V, C) buffer instead of copying it; a second backward through the same
    graph is refused). Under autocast the matmuls run in the autocast dtype, as `nn.Linear` would; the weight is
    cast once, not once per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing, chunk_size):
        # hidden (N, C), weight (V, C), targets (N,) with no -100 left: the caller keeps only scored rows.
        vocab_size = weight.size(0)
        device_type = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        want_grad_hidden, want_grad_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_grad_hidden else None
        grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if want_grad_weight else None
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
                if want_grad_weight:  # float32: accumulated inside the product, no zero fill or (V, C) temporary
                    if compute_dtype != torch.float32:  # a half-precision product, accumulated in float32
                        product = grad_logits.t() @ chunk
                        grad_weight.copy_(product) if start == 0 else grad_weight.add_(product)
                    elif start == 0:
                        torch.mm(grad_logits.t(), chunk, out=grad_weight)
                    else:
                        grad_weight.addmm_(grad_logits.t(), chunk)
        if want_grad_weight and hidden.size(0) == 0:
            grad_weight.zero_()
        # Intermediates, not inputs or outputs: kept on ctx so that backward can hand the buffers over.
        ctx.grads = (grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grads = getattr(ctx, "grads", None)
        if grads is None:
            raise RuntimeError(
                "backward ran twice through chunked_causal_lm_loss, whose gradients are computed once in the "
                "forward; call the loss again for a second backward (retain_graph is not supported)"
            )
        del ctx.grads
        grad_hidden, grad_weight = grads
        if grad_hidden is not None:
            grad_hidden.mul_(grad_total.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(ctx.weight_dtype)
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
    label-smoothing semantics, equal to float32 rounding in value and gradients. Only the scored positions are
    projected, `chunk_size` at a time, so peak memory for the head is one (chunk_size, V) float32 buffer instead of
    the logits, their float32 copy and their gradient.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if shift_labels is not None:  # already aligned: position t is scored against shift_labels[t]
        check_shift_labels(shift_labels, hidden_states)
        check_loss_inputs(shift_labels, weight.size(0), num_items_in_batch, already_shifted=True)
        hidden = hidden_states.reshape(-1, hidden_states.size(-1))  # (N, C)
        targets = shift_labels.reshape(-1).to(hidden.device)  # (N,)
    elif labels is not None:
        check_loss_inputs(labels, weight.size(0), num_items_in_batch)
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
