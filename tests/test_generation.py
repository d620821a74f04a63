"""Generation through GenerationMixin: equal to GPT2LMHeadModel.generate, cache-independent, batch-independent."""

import pytest
import torch
from helpers import left_padded_batch
from saved_models import save_tiny_model_folder
from transformers import TextStreamer

from hf_scratch_gpt.generation import (
    DECODING_STRATEGIES,
    build_generation_config,
    format_steps,
    generate_text,
    top_token_probabilities,
)

PAD = 0  # the fixture models' eos/pad id; prompts are drawn from 1..V-1


def _prompt(vocab_size: int, length: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def _no_eos(model, **options):
    """Options with eos disabled, so every run produces exactly max_new_tokens and comparisons see every step."""
    return dict(pad_token_id=PAD, eos_token_id=None, **options)


@pytest.mark.parametrize("strategy", sorted(DECODING_STRATEGIES))
def test_every_strategy_equals_gpt2_generate(gpt2_pair, strategy):
    gpt2, ours = gpt2_pair
    prompt = _prompt(gpt2.config.vocab_size)
    options = _no_eos(ours, max_new_tokens=10, **DECODING_STRATEGIES[strategy])
    torch.manual_seed(1)
    expected = gpt2.generate(prompt, **options)
    torch.manual_seed(1)
    actual = ours.generate(prompt, **options)
    assert actual.shape == (1, prompt.size(1) + 10)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ["greedy", "beam_search", "sampling_top_p"])
def test_cached_equals_uncached(gpt2_pair, strategy):
    _, ours = gpt2_pair
    prompt = _prompt(ours.config.vocab_size, seed=2)
    options = _no_eos(ours, max_new_tokens=8, **DECODING_STRATEGIES[strategy])
    torch.manual_seed(3)
    cached = ours.generate(prompt, use_cache=True, **options)
    torch.manual_seed(3)
    uncached = ours.generate(prompt, use_cache=False, **options)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def test_left_padded_batch_equals_one_by_one_and_gpt2(gpt2_pair):
    gpt2, ours = gpt2_pair
    lengths = [3, 7, 5]
    input_ids, attention_mask = left_padded_batch(lengths, ours.config.vocab_size, pad_id=PAD, seed=1)
    options = _no_eos(ours, max_new_tokens=6, do_sample=False)
    batch = ours.generate(input_ids, attention_mask=attention_mask, **options)
    torch.testing.assert_close(batch, gpt2.generate(input_ids, attention_mask=attention_mask, **options), rtol=0, atol=0)
    width = input_ids.size(1)
    for row, length in enumerate(lengths):
        alone = ours.generate(input_ids[row : row + 1, width - length :], **options)
        torch.testing.assert_close(batch[row : row + 1, width - length :], alone, rtol=0, atol=0)


def test_eos_stops_generation(gpt2_pair):
    _, ours = gpt2_pair
    prompt = _prompt(ours.config.vocab_size, seed=4)
    free = ours.generate(prompt, **_no_eos(ours, max_new_tokens=10, do_sample=False))[0, prompt.size(1) :].tolist()
    # Stop at the first generated token that has not appeared earlier in the continuation.
    stop_at = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    stopped = ours.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=PAD, eos_token_id=free[stop_at])
    assert stopped[0, prompt.size(1) :].tolist() == free[: stop_at + 1]


def test_max_new_tokens_and_repetition_penalty_change_the_output(gpt2_pair):
    _, ours = gpt2_pair
    prompt = _prompt(ours.config.vocab_size, seed=5)
    plain = ours.generate(prompt, **_no_eos(ours, max_new_tokens=12, do_sample=False))
    assert plain.shape[1] == prompt.size(1) + 12
    penalised = ours.generate(prompt, **_no_eos(ours, max_new_tokens=12, do_sample=False, repetition_penalty=5.0))
    # A strong penalty forbids repeats that plain greedy decoding of a random model makes.
    assert len(set(penalised[0].tolist())) > len(set(plain[0].tolist()))


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = save_tiny_model_folder(folder)
    return folder, model, tokenizer


def test_generate_text_greedy_matches_model_generate(saved_folder):
    _, model, tokenizer = saved_folder
    config = build_generation_config(model, max_new_tokens=7)
    (result,) = generate_text(model, tokenizer, "Hello world", config)
    prompt_ids = tokenizer("Hello world", return_tensors="pt").input_ids
    expected = model.generate(prompt_ids, generation_config=config)[0].tolist()
    assert result.token_ids == expected[: len(result.token_ids)]
    assert result.text == "Hello world" + tokenizer.decode(result.new_token_ids, skip_special_tokens=True)


def test_generate_text_batch_equals_single_prompts(saved_folder):
    _, model, tokenizer = saved_folder
    prompts = ["Hi", "The quick brown fox", "A small model writes"]
    config = build_generation_config(model, max_new_tokens=6)
    batch = generate_text(model, tokenizer, prompts, config)
    for prompt, result in zip(prompts, batch):
        (alone,) = generate_text(model, tokenizer, prompt, config)
        assert result.token_ids == alone.token_ids
        assert result.text == alone.text


def test_show_probs_are_softmax_of_the_model_logits(saved_folder):
    _, model, tokenizer = saved_folder
    config = build_generation_config(model, max_new_tokens=4, temperature=0.5, top_k=5)
    (result,) = generate_text(model, tokenizer, "Hello", config, seed=0, show_probs=3)
    assert len(result.steps) == len(result.new_token_ids) == 4
    ids = torch.tensor([result.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0]  # (T, V)
    prompt_length = len(result.token_ids) - len(result.new_token_ids)
    for position, step in enumerate(result.steps):
        probabilities = torch.softmax(logits[prompt_length - 1 + position], dim=-1)  # temperature 1: the raw model
        top = torch.topk(probabilities, 3)
        assert [candidate.token_id for candidate in step.top] == top.indices.tolist()
        torch.testing.assert_close(torch.tensor([c.probability for c in step.top]), top.values, rtol=1e-5, atol=1e-6)
        assert step.chosen.token_id == result.new_token_ids[position]
        assert step.chosen.probability == pytest.approx(probabilities[step.chosen.token_id].item(), rel=1e-5)
    assert "softmax of the raw logits" in format_steps(result.steps)


def test_top_token_probabilities():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    values, indices = top_token_probabilities(logits, 2)
    expected = torch.softmax(logits, dim=-1)
    assert indices.tolist() == [[2, 1], [0, 1]]
    torch.testing.assert_close(values, torch.stack([expected[0, [2, 1]], expected[1, [0, 1]]]))


def test_streamer_prints_the_generated_text(saved_folder, capsys):
    _, model, tokenizer = saved_folder
    config = build_generation_config(model, max_new_tokens=6)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    (result,) = generate_text(model, tokenizer, "Hello world", config, streamer=streamer)
    assert capsys.readouterr().out.rstrip("\n") == result.text.rstrip("\n")


def test_sampling_is_reproducible_with_a_seed(saved_folder):
    _, model, tokenizer = saved_folder
    config = build_generation_config(model, max_new_tokens=8, temperature=1.5)
    first = generate_text(model, tokenizer, "Hello", config, seed=7)[0].token_ids
    assert generate_text(model, tokenizer, "Hello", config, seed=7)[0].token_ids == first
    others = {tuple(generate_text(model, tokenizer, "Hello", config, seed=s)[0].token_ids) for s in range(8, 10)}
    assert others != {tuple(first)}


def test_build_generation_config_sampling_uses_only_the_given_cuts(tiny_model):
    greedy = build_generation_config(tiny_model, max_new_tokens=5)
    assert greedy.do_sample is False and greedy.max_new_tokens == 5
    sampled = build_generation_config(tiny_model, temperature=0.7)
    assert sampled.do_sample is True and sampled.temperature == 0.7
    assert sampled.top_k == 0 and sampled.top_p == 1.0  # not transformers' implicit top_k=50
    assert build_generation_config(tiny_model, top_p=0.9).top_p == 0.9
    assert sampled.pad_token_id == tiny_model.config.eos_token_id


@pytest.mark.parametrize(
    "options, named",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
        ({"do_sample": False, "temperature": 0.5}, "do_sample"),
    ],
)
def test_build_generation_config_rejects_bad_options(tiny_model, options, named):
    with pytest.raises(ValueError, match=named):
        build_generation_config(tiny_model, **options)


def test_show_probs_refuses_beam_search(saved_folder):
    _, model, tokenizer = saved_folder
    with pytest.raises(ValueError, match="beam"):
        generate_text(model, tokenizer, "Hi", build_generation_config(model, num_beams=2), show_probs=2)


def test_generation_longer_than_the_context_is_refused_up_front(saved_folder):
    _, model, tokenizer = saved_folder
    too_many = model.config.n_positions  # any prompt + n_positions new tokens is too long
    with pytest.raises(ValueError, match=rf"max_new_tokens {too_many} = \d+ exceeds the model's n_positions"):
        generate_text(model, tokenizer, "Hello", build_generation_config(model, max_new_tokens=too_many))


# Issue 27: options that transformers' own validation lets through are refused, naming the values.
def test_num_beams_zero_in_a_given_config_is_refused(saved_folder):
    from transformers import GenerationConfig

    _, model, tokenizer = saved_folder
    with pytest.raises(ValueError, match=r"num_beams must be an integer >= 1 .*got 0"):  # was ZeroDivisionError
        generate_text(model, tokenizer, "Hi", GenerationConfig(num_beams=0, max_new_tokens=3))


def test_min_new_tokens_above_max_new_tokens_is_refused(saved_folder):
    from transformers import GenerationConfig

    _, model, tokenizer = saved_folder
    with pytest.raises(ValueError, match=r"min_new_tokens 9 > max_new_tokens 3"):
        build_generation_config(model, max_new_tokens=3, min_new_tokens=9)
    with pytest.raises(ValueError, match=r"min_new_tokens 9 > max_new_tokens 3"):
        generate_text(model, tokenizer, "Hi", GenerationConfig(min_new_tokens=9, max_new_tokens=3))
    assert build_generation_config(model, max_new_tokens=3, min_new_tokens=3).min_new_tokens == 3


def test_max_length_past_n_positions_names_the_lengths(saved_folder):
    from transformers import GenerationConfig

    _, model, tokenizer = saved_folder
    n = model.config.n_positions
    config = GenerationConfig(max_length=n + 10, eos_token_id=None)  # no max_new_tokens: generate runs to max_length
    with pytest.raises(ValueError, match=rf"prompt length 2 with max_length {n + 10} .*exceeds .* n_positions {n}"):
        generate_text(model, tokenizer, "Hi", config)


def test_prompt_that_is_not_utf8_is_refused_naming_the_byte(saved_folder):
    _, model, tokenizer = saved_folder
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of a Latin-1 command-line argument
    with pytest.raises(ValueError, match=r"the prompt holds the byte\(s\) e9 \(not UTF-8\) at character 3"):
        generate_text(model, tokenizer, prompt, build_generation_config(model, max_new_tokens=2))
    with pytest.raises(ValueError, match=r"prompt 1 holds the lone surrogate '\\ud800' at character 0"):
        generate_text(model, tokenizer, ["ok", "\ud800"], build_generation_config(model, max_new_tokens=2))
