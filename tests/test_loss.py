"""The explicit loss path: shift → flatten → cross-entropy with -100 masking."""

import math

import pytest
import torch

from hf_scratch_gpt import causal_lm_loss, perplexity, shift_and_flatten


def hand_computed_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """softmax, gather the target probabilities, -log, mean over unmasked positions: one position at a time."""
    total, count = 0.0, 0
    batch, seq_len, _ = logits.shape
    for b in range(batch):
        for t in range(seq_len - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            probabilities = torch.softmax(logits[b, t].double(), dim=-1)
            total += -math.log(float(probabilities[target]))
            count += 1
    return total / count


def test_hand_computed_loss_matches():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator) * 3
    labels = torch.tensor([[1, 2, -100, 4, 5], [-100, 6, 0, -100, 3]])
    expected = hand_computed_loss(logits, labels)
    assert causal_lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_model_loss_is_the_explicit_path(tiny_model):
    input_ids = torch.randint(0, tiny_model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[1, :4] = -100
    with torch.no_grad():
        out = tiny_model(input_ids, labels=labels)
    assert out.loss.item() == pytest.approx(hand_computed_loss(out.logits, labels), rel=1e-5)


def test_shift_and_flatten_pairs_position_t_with_token_t_plus_1():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    labels = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    flat_logits, flat_labels = shift_and_flatten(logits, labels)
    assert flat_logits.shape == (6, 3) and flat_labels.shape == (6,)
    assert flat_labels.tolist() == [11, 12, 13, 21, 22, 23]
    torch.testing.assert_close(flat_logits[0], logits[0, 0])
    torch.testing.assert_close(flat_logits[3], logits[1, 0])


def test_all_masked_loss_is_zero_with_zero_gradients(tiny_model):
    tiny_model.train()
    input_ids = torch.randint(0, tiny_model.config.vocab_size, (2, 6))
    labels = torch.full_like(input_ids, -100)
    out = tiny_model(input_ids, labels=labels)
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss)
    out.loss.backward()
    for name, param in tiny_model.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) == 0, name


def test_num_items_in_batch_sums_then_divides():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 6), generator=generator)
    labels[0, 2:] = -100
    scored = int((labels[:, 1:] != -100).sum())
    mean = causal_lm_loss(logits, labels)
    for count in (scored, torch.tensor(scored), 4 * scored):
        expected = mean * scored / int(count)
        torch.testing.assert_close(causal_lm_loss(logits, labels, num_items_in_batch=count), expected)


def test_gradient_accumulation_halves_equal_full_batch():
    """Two micro-batches with num_items_in_batch = the full count sum to the one-batch loss."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 7, 13, generator=generator)
    labels = torch.randint(0, 13, (4, 7), generator=generator)
    labels[0, 3:] = -100  # uneven numbers of scored tokens per micro-batch
    labels[3, 1:] = -100
    total = (labels[:, 1:] != -100).sum()
    accumulated = causal_lm_loss(logits[:2], labels[:2], total) + causal_lm_loss(logits[2:], labels[2:], total)
    torch.testing.assert_close(accumulated, causal_lm_loss(logits, labels))


def test_label_smoothing_formula():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 5, 9, generator=generator)
    labels = torch.tensor([[0, 3, -100, 8, 1]])
    eps = 0.1
    flat_logits, flat_labels = shift_and_flatten(logits, labels)
    keep = flat_labels != -100
    log_probs = torch.log_softmax(flat_logits[keep], dim=-1)
    nll = -log_probs.gather(1, flat_labels[keep, None]).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    expected = ((1 - eps) * nll + eps * uniform).mean()
    torch.testing.assert_close(causal_lm_loss(logits, labels, label_smoothing=eps), expected)


def test_loss_in_float32_for_bf16_logits():
    logits = torch.randn(2, 4, 5).to(torch.bfloat16)
    labels = torch.randint(0, 5, (2, 4))
    loss = causal_lm_loss(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, causal_lm_loss(logits.float(), labels))


def test_perplexity_is_exp_loss():
    assert perplexity(torch.tensor(2.0)) == pytest.approx(math.exp(2.0))
    assert perplexity(0.0) == 1.0
