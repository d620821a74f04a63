"""Comparison helpers shared by the tests."""

import torch

# "Relative error <= 1e-5 in float32": rtol 1e-5, with an absolute floor scaled to the tensor so values that
# happen to sit near zero are not held to an impossible relative bound.
RTOL = 1e-5


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, **kwargs) -> None:
    scale = expected.detach().abs().max().clamp(min=1.0).item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, **kwargs)


def left_padded_batch(lengths: list[int], vocab_size: int, pad_id: int = 0, seed: int = 0):
    """Random ids of the given lengths, left-padded to the longest; returns (input_ids, attention_mask)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length:] = torch.randint(1, vocab_size, (length,), generator=generator)
        attention_mask[row, width - length:] = 1
    return input_ids, attention_mask


def right_padded_batch(lengths: list[int], vocab_size: int, pad_id: int = 0, seed: int = 0):
    input_ids, attention_mask = left_padded_batch(lengths, vocab_size, pad_id, seed)
    for row, length in enumerate(lengths):
        input_ids[row] = torch.roll(input_ids[row], -(input_ids.size(1) - length))
        attention_mask[row] = torch.roll(attention_mask[row], -(input_ids.size(1) - length))
    return input_ids, attention_mask


def labels_from(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """labels = input_ids with -100 on padding."""
    return input_ids.masked_fill(attention_mask == 0, -100)
