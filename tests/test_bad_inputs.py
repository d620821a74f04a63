"""Bad model inputs raise ValueError naming the value and what was expected (never an IndexError deep in torch)."""

import pytest
import torch
from transformers import DynamicCache


def test_token_id_at_or_above_vocab(tiny_model):
    vocab = tiny_model.config.vocab_size
    with pytest.raises(ValueError, match=rf"token id {vocab}\b.*\[0, {vocab}\)"):
        tiny_model(torch.tensor([[1, 2, vocab]]))


def test_negative_token_id(tiny_model):
    with pytest.raises(ValueError, match=r"token id -3\b"):
        tiny_model(torch.tensor([[1, -3, 2]]))


def test_sequence_longer_than_n_positions(tiny_model):
    n = tiny_model.config.n_positions
    with pytest.raises(ValueError, match=rf"sequence length {n + 1}.*n_positions {n}"):
        tiny_model(torch.zeros(1, n + 1, dtype=torch.long))


def test_sequence_longer_than_n_positions_with_cache(tiny_model):
    n = tiny_model.config.n_positions
    with torch.no_grad():
        out = tiny_model(torch.zeros(1, n - 2, dtype=torch.long), use_cache=True)
        assert isinstance(out.past_key_values, DynamicCache)
        with pytest.raises(ValueError, match=rf"sequence length {n + 1} \(cached {n - 2} \+ new 3\).*{n}"):
            tiny_model(torch.zeros(1, 3, dtype=torch.long), past_key_values=out.past_key_values, use_cache=True)


def test_labels_shape_mismatch(tiny_model):
    with pytest.raises(ValueError, match=r"labels shape \(2, 4\) does not match the input shape \(2, 5\)"):
        tiny_model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))


def test_float_labels(tiny_model):
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        tiny_model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 5))


def test_attention_mask_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), expected .* \(2, 5\)"):
        tiny_model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_empty_batch_or_sequence(tiny_model, shape):
    with pytest.raises(ValueError, match="empty input"):
        tiny_model(torch.zeros(shape, dtype=torch.long))


def test_float_input_ids(tiny_model):
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        tiny_model(torch.zeros(1, 3))


def test_both_or_neither_of_ids_and_embeds(tiny_model):
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        tiny_model()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        tiny_model(torch.zeros(1, 3, dtype=torch.long), inputs_embeds=torch.zeros(1, 3, tiny_model.config.n_embd))
