"""Every fast path equals the reference path: the fused chunked loss against the explicit loss, values and
gradients; the model's training mode (fused) against its eval mode (explicit)."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, causal_lm_loss, chunked_causal_lm_loss
from helpers import assert_close_float32


def _inputs(seed, batch=3, seq_len=9, width=16, vocab=37, masked_fraction=0.3):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq_len, width, generator=generator)
    weight = torch.randn(vocab, width, generator=generator) * 0.5
    labels = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    labels[torch.rand(batch, seq_len, generator=generator) < masked_fraction] = -100
    return hidden.requires_grad_(), weight.requires_grad_(), labels


def _both_paths(hidden, weight, labels, **kwargs):
    """(loss, grad_hidden, grad_weight) from the explicit path and from the fused chunked path."""
    results = []
    for fused in (False, True):
        h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        if fused:
            chunk_size = kwargs.pop("chunk_size", 4)
            loss = chunked_causal_lm_loss(h, w, labels, chunk_size=chunk_size, **kwargs)
        else:
            loss = causal_lm_loss(h @ w.t(), labels, **{k: v for k, v in kwargs.items() if k != "chunk_size"})
        (loss * 1.7).backward()  # a non-unit upstream gradient must be applied too
        results.append((loss.detach(), h.grad, w.grad))
    return results


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_fused_equals_explicit(chunk_size, label_smoothing):
    hidden, weight, labels = _inputs(seed=chunk_size)
    explicit, fused = _both_paths(hidden, weight, labels, label_smoothing=label_smoothing, chunk_size=chunk_size)
    for reference, fast in zip(explicit, fused, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_items", [5, 40])
def test_fused_num_items_in_batch(num_items):
    hidden, weight, labels = _inputs(seed=11)
    explicit, fused = _both_paths(hidden, weight, labels, num_items_in_batch=torch.tensor(num_items))
    for reference, fast in zip(explicit, fused, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


def test_fused_all_masked_is_zero_with_zero_gradients():
    hidden, weight, labels = _inputs(seed=3)
    labels[:] = -100
    loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=4)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_fused_under_bf16_autocast_close_to_explicit():
    hidden, weight, labels = _inputs(seed=5, width=32, vocab=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explicit, fused = _both_paths(hidden, weight, labels)
    assert fused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], explicit[0], rtol=2e-2, atol=2e-2)
    for reference, fast in zip(explicit[1:], fused[1:], strict=True):
        torch.testing.assert_close(fast, reference, rtol=5e-2, atol=5e-3)


def test_a_second_backward_through_the_fused_loss_is_refused_not_scaled_twice():
    hidden, weight, labels = _inputs(seed=6)
    loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=4)
    loss.backward(retain_graph=True)  # the gradient buffers are handed to autograd (and scaled in place) once
    first = weight.grad.clone()
    with pytest.raises(RuntimeError, match="backward ran twice through chunked_causal_lm_loss"):
        loss.backward()
    assert torch.equal(weight.grad, first)


def test_chunk_size_must_be_positive():
    hidden, weight, labels = _inputs(seed=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        chunked_causal_lm_loss(hidden, weight, labels, chunk_size=0)


def _model(loss_chunk_size, label_smoothing=0.0):
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(
        "tiny", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        loss_chunk_size=loss_chunk_size, label_smoothing=label_smoothing,
    )
    return ScratchGPTForCausalLM(config)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_model_training_path_equals_explicit_path(label_smoothing):
    """Fused (loss_chunk_size=5) and explicit (0) training steps give the same loss and parameter gradients."""
    fused_model = _model(5, label_smoothing).train()
    explicit_model = copy.deepcopy(fused_model)
    explicit_model.config.loss_chunk_size = 0
    input_ids = torch.randint(0, fused_model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[0, :5] = -100
    fused_out = fused_model(input_ids, labels=labels)
    explicit_out = explicit_model(input_ids, labels=labels)
    assert fused_out.logits is None and explicit_out.logits is not None  # documented: the fused path skips logits
    torch.testing.assert_close(fused_out.loss, explicit_out.loss, rtol=1e-6, atol=1e-6)
    fused_out.loss.backward()
    explicit_out.loss.backward()
    explicit_params = dict(explicit_model.named_parameters())
    for name, param in fused_model.named_parameters():
        # Each gradient sums the contributions of the batch's B·T positions (36 here), in another order per path.
        assert_close_float32(param.grad, explicit_params[name].grad, reduction=input_ids.numel(), name=name)


def test_eval_mode_always_returns_logits():
    model = _model(4).eval()
    input_ids = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        out = model(input_ids, labels=input_ids)
    assert out.logits.shape == (1, 6, model.config.vocab_size)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 8),
    vocab=st.integers(2, 20),
    seed=st.integers(0, 2**16),
    mask_probability=st.floats(0.0, 1.0),
    scale=st.floats(0.01, 30.0),
)
def test_loss_property_equals_reference_formula(batch, seq_len, vocab, seed, mask_probability, scale):
    """Random logits and labels with random -100 masks: the loss equals -mean log softmax at the targets."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq_len, vocab, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    labels[torch.rand(batch, seq_len, generator=generator) < mask_probability] = -100
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    scored = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)[scored]
    expected = -picked.mean() if scored.any() else torch.tensor(0.0, dtype=torch.float64)
    actual = causal_lm_loss(logits.float(), labels)
    assert not torch.isnan(actual)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)
    # The fused path with the logits as hidden states and an identity head computes the same loss.
    fused = chunked_causal_lm_loss(logits.float(), torch.eye(vocab), labels, chunk_size=3)
    torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-5)
