"""Bad model inputs raise ValueError naming the value and what was expected (never an IndexError deep in torch)."""

import math

import pytest
import torch
from transformers import DynamicCache

from hf_scratch_gpt.modeling_scratch_gpt import CACHE_FIELD


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


# Issue 12.10: labels, position ids and a legacy cache are named too (not IndexError / AttributeError).
@pytest.mark.parametrize("training", [False, True], ids=["explicit-loss", "fused-training-loss"])
@pytest.mark.parametrize("bad", [512, 4096, -7])
def test_label_outside_the_vocabulary(tiny_model, training, bad):
    tiny_model.train(training)
    labels = torch.tensor([[1, 2, bad, -100]])
    with pytest.raises(ValueError, match=rf"labels contains {bad}, outside the vocabulary \[0, 512\)"):
        tiny_model(torch.tensor([[1, 2, 3, 4]]), labels=labels)


def test_loss_functions_check_labels_at_their_input(tiny_model):
    from hf_scratch_gpt import causal_lm_loss, chunked_causal_lm_loss

    labels = torch.tensor([[1, 600]])
    with pytest.raises(ValueError, match=r"labels contains 600"):
        causal_lm_loss(torch.zeros(1, 2, 512), labels)
    with pytest.raises(ValueError, match=r"labels contains 600"):
        chunked_causal_lm_loss(torch.zeros(1, 2, 64), torch.zeros(512, 64), labels)


@pytest.mark.parametrize("training", [False, True], ids=["explicit-loss", "fused-training-loss"])
@pytest.mark.parametrize("count", [0, torch.tensor(0), -3, torch.tensor(-3)], ids=["0", "tensor-0", "-3", "tensor-neg"])
def test_num_items_in_batch_that_would_return_the_sum(tiny_model, training, count):
    tiny_model.train(training)
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"num_items_in_batch is -?[03] but this batch has 3 target tokens"):
        tiny_model(ids, labels=ids, num_items_in_batch=count)


@pytest.mark.parametrize("training", [False, True], ids=["explicit-loss", "fused-training-loss"])
def test_num_items_in_batch_zero_is_fine_for_an_all_masked_batch(tiny_model, training):
    """Trainer passes 0 when a whole accumulated batch is padding: the loss stays exactly 0.0 (no error)."""
    tiny_model.train(training)
    loss = tiny_model(torch.tensor([[1, 2, 3]]), labels=torch.full((1, 3), -100), num_items_in_batch=0).loss
    assert loss.item() == 0.0


@pytest.mark.parametrize("bad", [128, -1])
def test_position_ids_outside_the_position_table(tiny_model, bad):
    with pytest.raises(ValueError, match=rf"position_ids contains position {bad}, outside .* \[0, 128\)"):
        tiny_model(torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 1, bad]]))


def test_position_ids_of_the_wrong_length_or_dtype(tiny_model):
    with pytest.raises(ValueError, match=r"position_ids has shape \(1, 2\), expected .* \(\.\.\., 3\)"):
        tiny_model(torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="position_ids must be an integer tensor"):
        tiny_model(torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0.0, 1.0, 2.0]]))


def test_valid_position_ids_still_give_the_default_positions(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(ids, position_ids=torch.arange(3)[None]).logits, tiny_model(ids).logits)


def test_legacy_tuple_cache(tiny_model):
    with torch.no_grad():
        cache = tiny_model(torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
        legacy = tuple((layer.keys, layer.values) for layer in cache.layers)
        with pytest.raises(ValueError, match=r"past_key_values must be a transformers Cache .* got tuple"):
            tiny_model(torch.tensor([[4]]), past_key_values=legacy)
        # the conversion the message names works and gives the uncached logits
        converted = tiny_model(torch.tensor([[4]]), past_key_values=DynamicCache(ddp_cache_data=legacy)).logits
        torch.testing.assert_close(converted[:, -1], tiny_model(torch.tensor([[1, 2, 3, 4]])).logits[:, -1])


# The cache under either name. transformers 5.25 passes it to forward as `cache` (5.23: `past_key_values`); a
# forward that swallowed the name it does not know in **kwargs decoded every step without its past, silently.
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_cache_is_used_under_either_name(tiny_model, name):
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        prefix = tiny_model(ids[:, :3], use_cache=True)
        cache = getattr(prefix, CACHE_FIELD)
        assert cache.get_seq_length() == 3
        step = tiny_model(ids[:, 3:], use_cache=True, **{name: cache})
        full = tiny_model(ids).logits
    assert getattr(step, CACHE_FIELD).get_seq_length() == 4
    torch.testing.assert_close(step.logits[:, -1], full[:, -1])  # without its past the logits would differ
    assert not torch.allclose(tiny_model(ids[:, 3:]).logits[:, -1], full[:, -1])


def test_the_cache_given_twice_is_refused(tiny_model):
    with torch.no_grad():
        cache = getattr(tiny_model(torch.tensor([[1, 2]]), use_cache=True), CACHE_FIELD)
        with pytest.raises(ValueError, match=r"pass the cache once, as `cache` or as `past_key_values`, not both"):
            tiny_model(torch.tensor([[3]]), cache=cache, past_key_values=cache)


@pytest.mark.parametrize("keyword", ["token_type_ids", "cache_params", "head_mask", "past_key_value", "labelz"])
def test_an_unknown_keyword_is_refused_by_name(tiny_model, keyword):
    """Nothing is swallowed: an argument the model does not use is an error naming it, on the model and its base."""
    for model in (tiny_model, tiny_model.transformer):
        with pytest.raises(TypeError, match=rf"{type(model).__name__}\.forward\(\) got unexpected keyword arguments \['{keyword}'\]"):
            model(torch.tensor([[1, 2]]), **{keyword: torch.tensor([[0, 0]])})


def test_transformers_keywords_are_accepted(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        out = tiny_model(ids, output_hidden_states=True, output_attentions=False, return_dict=True)
    assert len(out.hidden_states) == tiny_model.config.n_layer + 1


@pytest.mark.parametrize("count", [True, torch.tensor(True), math.inf, torch.tensor(math.nan)], ids=str)
@pytest.mark.parametrize("training", [False, True], ids=["explicit-loss", "fused-loss"])
def test_num_items_in_batch_must_be_a_finite_count(tiny_model, training, count):
    tiny_model.train(training)
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"num_items_in_batch (must be a count of target tokens|is (inf|nan) but)"):
        tiny_model(ids, labels=ids, num_items_in_batch=count)


@pytest.mark.parametrize("count", [3.0, torch.tensor(3.0), torch.tensor(1.5)], ids=str)
def test_num_items_in_batch_may_be_a_float(tiny_model, count):
    """Trainer divides the count by the tensor/context-parallel degree, so a float (even fractional) is its value."""
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        summed = tiny_model(ids, labels=ids, num_items_in_batch=1).loss
        torch.testing.assert_close(tiny_model(ids, labels=ids, num_items_in_batch=count).loss, summed / float(count))


@pytest.mark.parametrize("value", [0.5, 2, -1])
def test_a_2d_mask_is_zero_or_one(tiny_model, value):
    mask = torch.ones(1, 4)
    mask[0, 1] = value
    for dtype in (torch.float32, torch.long):
        if dtype == torch.long and value == 0.5:
            continue
        with pytest.raises(ValueError, match=r"attention_mask .*(fractional value|value -?\d).*0 \(padding\)"):
            tiny_model(torch.tensor([[1, 2, 3, 4]]), attention_mask=mask.to(dtype))
    tiny_model(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.tensor([[0, 1, 1, 1]]).bool())  # bool is fine


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 1, 4), (1, 1, 4, 3), (2, 1, 4, 4), (1, 3, 4, 4)])
def test_a_4d_mask_must_cover_every_query_and_key(tiny_model, shape):
    """A (1, 1, 1, 1) mask broadcasts over all positions: every token would attend to every other (no causality)."""
    with pytest.raises(ValueError, match=r"4-D attention_mask has shape .*expected \(batch 1 or 1, heads 4 or 1"):
        tiny_model(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.zeros(shape))


def test_a_full_4d_mask_is_used(tiny_model):
    ids = torch.tensor([[1, 2, 3, 4]])
    causal = torch.full((4, 4), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(ids, attention_mask=causal).logits, tiny_model(ids).logits)


@pytest.mark.parametrize("num_beams", [0, -1, 1.5])
def test_generate_refuses_a_beam_count_below_one(tiny_model, num_beams):
    """transformers' own generate divides by num_beams: 0 was a ZeroDivisionError deep inside it."""
    from transformers import GenerationConfig

    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"num_beams must be an integer >= 1"):
        tiny_model.generate(ids, num_beams=num_beams, max_new_tokens=2)
    config = GenerationConfig(max_new_tokens=2)
    config.num_beams = num_beams  # set after construction: GenerationConfig's own validation runs at generate time
    with pytest.raises(ValueError, match=r"num_beams must be an integer >= 1"):
        tiny_model.generate(ids, generation_config=config)
