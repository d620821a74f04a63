"""Text generation with transformers' `GenerationMixin` (KV cache, greedy / sampling / beam search).

`ScratchGPTForCausalLM.generate` is transformers' own; this module only turns user options into a
`GenerationConfig`, tokenizes prompts (left-padded batches), and reads the model's next-token probabilities
(softmax of the raw logits) for the "show the distribution" view.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

logger = logging.getLogger(__name__)

# Named decoding strategies: the `generate` options each one sets (the examples run every entry).
# Sampling entries set `top_k` explicitly because transformers otherwise applies a default top_k of 50.
DECODING_STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "beam_search": {"do_sample": False, "num_beams": 4, "early_stopping": True},
    "greedy_repetition_penalty": {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.3},
    "sampling_temperature": {"do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 1.0},
    "sampling_top_k": {"do_sample": True, "temperature": 1.0, "top_k": 40, "top_p": 1.0},
    "sampling_top_p": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.9},
}


@dataclass
class TokenProbability:
    token_id: int
    token: str  # the decoded text of this one token
    probability: float


@dataclass
class GenerationStep:
    """One generated position: the token chosen and the model's most likely next tokens there."""

    chosen: TokenProbability
    top: list[TokenProbability]


@dataclass
class GenerationResult:
    prompt: str
    text: str  # prompt + continuation
    completion: str  # the continuation only
    token_ids: list[int]  # prompt + continuation, padding removed
    new_token_ids: list[int]
    # Filled when top-k probabilities were asked for: one entry per generated token. The probabilities are the
    # model's own distribution, softmax(raw logits), before temperature / top-k / top-p / repetition penalty.
    steps: list[GenerationStep] = field(default_factory=list)


def build_generation_config(
    model: PreTrainedModel,
    max_new_tokens: int = 50,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    repetition_penalty: float | None = None,
    do_sample: bool | None = None,
    **overrides: Any,
) -> GenerationConfig:
    """The model's generation config with these options applied.

    Sampling is on when `do_sample=True` or any of `temperature`/`top_k`/`top_p` is given; otherwise decoding is
    greedy (or beam search with `num_beams > 1`). When sampling, the distribution is exactly the one the options
    describe: a top-k or top-p cut only when asked for (transformers would otherwise apply top_k=50).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (leave it out for greedy decoding), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no cut), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty is not None and not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = none), got {repetition_penalty}")
    sampling_options_given = any(value is not None for value in (temperature, top_k, top_p))
    if do_sample is None:
        do_sample = sampling_options_given
    elif not do_sample and sampling_options_given:
        raise ValueError("temperature/top_k/top_p only apply when sampling; do_sample=False contradicts them")

    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "num_beams": num_beams}
    if do_sample:
        options.update(
            temperature=1.0 if temperature is None else temperature,
            top_k=0 if top_k is None else top_k,
            top_p=1.0 if top_p is None else top_p,
        )
    if repetition_penalty is not None:
        options["repetition_penalty"] = repetition_penalty
    options.update(overrides)
    config.update(**options)
    if config.pad_token_id is None and config.eos_token_id is not None:
        # GPT-2 has no padding token; padded positions are masked out, so reusing eos changes no number.
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    check_generation_config(config)
    config.validate(strict=True)
    return config


def check_generation_config(config: GenerationConfig) -> None:
    """Refuse what transformers' own `validate` lets through and `generate` then fails on or quietly ignores:
    `num_beams` below 1 (a ZeroDivisionError inside beam bookkeeping), and a minimum length above the maximum
    (generation stops at the maximum, so the minimum silently does not hold). Values may come from the model's
    generation_config.json as well as from the caller. None is "unset" (transformers' default applies)."""
    num_beams = config.num_beams
    if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"num_beams must be an integer >= 1 (1: no beam search), got {num_beams!r}")
    for low, high in (("min_new_tokens", "max_new_tokens"), ("min_length", "max_length")):
        minimum, maximum = getattr(config, low), getattr(config, high)
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ValueError(f"{low} {minimum} > {high} {maximum}: the minimum cannot exceed the maximum")


def prepare_tokenizer_for_batches(tokenizer):
    """Left padding (a decoder continues from the right end of each row) with eos as pad when there is none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def top_token_probabilities(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax over the vocabulary, then the k largest: logits (B, V) → probabilities (B, k), token ids (B, k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    probabilities = torch.softmax(logits.float(), dim=-1)  # (B, V), float32 so bf16 models give stable numbers
    return torch.topk(probabilities, k=min(k, probabilities.size(-1)), dim=-1)


def generate_text(
    model: PreTrainedModel,
    tokenizer,
    prompts: str | list[str],
    generation_config: GenerationConfig | None = None,
    seed: int | None = None,
    show_probs: int = 0,
    streamer=None,
) -> list[GenerationResult]:
    """Generate a continuation for each prompt (a batch is left-padded); one `GenerationResult` per prompt.

    `show_probs=K` records, for every generated position, the K most likely next tokens under the model
    (softmax of the raw logits) and the probability of the token actually chosen. `streamer` (e.g.
    `transformers.TextStreamer`) receives tokens as they are produced; it needs a single prompt.
    """
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompt_list:
        raise ValueError("no prompts given")
    if generation_config is None:
        generation_config = build_generation_config(model)
    if show_probs and generation_config.num_beams > 1:
        raise ValueError("show_probs needs one sequence per prompt; it is not defined for beam search (num_beams > 1)")
    if streamer is not None and len(prompt_list) > 1:
        raise ValueError(f"streaming needs a single prompt, got {len(prompt_list)}")
    for index, prompt in enumerate(prompt_list):
        _check_prompt_text(prompt, "the prompt" if len(prompt_list) == 1 else f"prompt {index}")
    check_generation_config(generation_config)

    prepare_tokenizer_for_batches(tokenizer)
    encoded = tokenizer(prompt_list, return_tensors="pt", padding=True).to(model.device)
    if encoded["input_ids"].size(1) == 0:
        raise ValueError("the prompt encodes to no tokens; give at least one character of text")
    _check_length(encoded["input_ids"].size(1), generation_config, model)
    if seed is not None:
        torch.manual_seed(seed)
    # A copy, so the caller's config is not changed; raw logits are only kept when they will be shown.
    run_config = copy.deepcopy(generation_config)
    run_config.return_dict_in_generate = True
    run_config.output_logits = bool(show_probs)
    with torch.no_grad():
        output = model.generate(**encoded, generation_config=run_config, streamer=streamer)
    prompt_width = encoded["input_ids"].size(1)
    results = []
    for row, prompt in enumerate(prompt_list):
        prompt_ids = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
        new_ids = output.sequences[row, prompt_width:].tolist()
        new_ids = _strip_after_eos(new_ids, generation_config)
        steps = _steps(output.logits, row, new_ids, tokenizer, show_probs) if show_probs else []
        completion = tokenizer.decode(new_ids, skip_special_tokens=True)
        results.append(
            GenerationResult(
                prompt=prompt,
                text=prompt + completion,
                completion=completion,
                token_ids=prompt_ids + new_ids,
                new_token_ids=new_ids,
                steps=steps,
            )
        )
    return results


def _check_prompt_text(prompt: object, which: str) -> None:
    """A prompt must be a str that is valid Unicode: a lone surrogate (what Python makes of bytes that are not UTF-8
    on a command line, `surrogateescape`) would otherwise fail inside the tokenizer with a TypeError."""
    if not isinstance(prompt, str):
        raise ValueError(f"{which} must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = prompt[error.start : error.end]
        try:
            shown = "the byte(s) " + bad.encode("utf-8", "surrogateescape").hex(" ") + " (not UTF-8)"
        except UnicodeEncodeError:
            shown = f"the lone surrogate {bad!r}"
        raise ValueError(f"{which} holds {shown} at character {error.start}; give UTF-8 text") from None


def _check_length(prompt_length: int, generation_config: GenerationConfig, model: PreTrainedModel) -> None:
    """Refuse, before generating, a run that would go past the position table: the model would otherwise stop
    midway with an error about position_ids. Without max_new_tokens, `generate` runs to max_length tokens in all
    (the given config's, else the model's generation config's)."""
    n_positions = getattr(model.config, "n_positions", None)
    if n_positions is None:
        return
    max_length = generation_config.max_length
    if max_length is None:
        max_length = getattr(model.generation_config, "max_length", None)
    if generation_config.max_new_tokens is not None:
        longest = prompt_length + generation_config.max_new_tokens
        how = f"prompt length {prompt_length} + max_new_tokens {generation_config.max_new_tokens} = {longest}"
    elif max_length is not None:
        longest = max(prompt_length, max_length)
        how = f"prompt length {prompt_length} with max_length {max_length} (no max_new_tokens)"
    else:
        longest, how = prompt_length, f"prompt length {prompt_length}"
    if longest > n_positions:
        raise ValueError(f"{how} exceeds the model's n_positions {n_positions}")


def _strip_after_eos(new_ids: list[int], generation_config: GenerationConfig) -> list[int]:
    """Drop the padding a finished row gets while other rows of the batch keep generating (keep the eos itself)."""
    eos = generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    for position, token_id in enumerate(new_ids):
        if token_id in eos_ids:
            return new_ids[: position + 1]
    return new_ids


def _steps(logits: tuple[torch.Tensor, ...], row: int, new_ids: list[int], tokenizer, k: int) -> list[GenerationStep]:
    """`logits` from generate(output_logits=True): one (B, V) tensor of raw logits per generated position."""
    steps = []
    for position, chosen_id in enumerate(new_ids):
        step_logits = logits[position][row : row + 1]  # (1, V)
        probabilities = torch.softmax(step_logits.float(), dim=-1)[0]  # (V,)
        top_probabilities, top_ids = top_token_probabilities(step_logits, k)
        top = [
            TokenProbability(int(token_id), tokenizer.decode([int(token_id)]), float(probability))
            for probability, token_id in zip(top_probabilities[0], top_ids[0])
        ]
        chosen = TokenProbability(chosen_id, tokenizer.decode([chosen_id]), float(probabilities[chosen_id]))
        steps.append(GenerationStep(chosen=chosen, top=top))
    return steps


def format_steps(steps: list[GenerationStep]) -> str:
    """A readable table of `GenerationResult.steps` (what `hf-scratch-gpt generate --show-probs` prints)."""
    lines = ["model probabilities: softmax of the raw logits (before temperature, top-k, top-p, penalties)"]
    for position, step in enumerate(steps, start=1):
        lines.append(f"step {position}: chose {step.chosen.token!r} (id {step.chosen.token_id}, p={step.chosen.probability:.4f})")
        for candidate in step.top:
            lines.append(f"    {candidate.probability:.4f}  {candidate.token!r} (id {candidate.token_id})")
    return "\n".join(lines)


__all__ = [
    "DECODING_STRATEGIES",
    "GenerationResult",
    "GenerationStep",
    "TokenProbability",
    "build_generation_config",
    "check_generation_config",
    "format_steps",
    "generate_text",
    "prepare_tokenizer_for_batches",
    "top_token_probabilities",
]
