"""Weight exchange with transformers' `GPT2LMHeadModel`.

Module names are the same on both sides; the only difference is that GPT-2 stores its four projection weights
as `Conv1D` (in, out) and ScratchGPT uses `nn.Linear` (out, in). So the exchange is a name table plus one
transpose rule. It is checked both ways: every tensor the table names must be in the source and nothing else may
be, the target receives every tensor it has (so none is left randomly initialised), and a tied head must be tied.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import ScratchGPTForCausalLM

logger = logging.get_logger(__name__)

# GPT-2 name → ScratchGPT name ("{}" is the layer index). Identity by construction; kept explicit so a renamed
# module on either side fails loudly here instead of loading silently wrong.
GPT2_TO_SCRATCH: dict[str, str] = {
    "lm_head.weight": "lm_head.weight",  # its own tensor only when untied (see TIED_HEAD)
    "transformer.wte.weight": "transformer.wte.weight",
    "transformer.wpe.weight": "transformer.wpe.weight",
    "transformer.ln_f.weight": "transformer.ln_f.weight",
    "transformer.ln_f.bias": "transformer.ln_f.bias",
    **{
        f"transformer.h.{{}}.{name}": f"transformer.h.{{}}.{name}"
        for name in (
            "ln_1.weight", "ln_1.bias",
            "attn.c_attn.weight", "attn.c_attn.bias",
            "attn.c_proj.weight", "attn.c_proj.bias",
            "ln_2.weight", "ln_2.bias",
            "mlp.c_fc.weight", "mlp.c_fc.bias",
            "mlp.c_proj.weight", "mlp.c_proj.bias",
        )
    },
}
# With tie_word_embeddings the head is the token embedding itself, one Parameter under both names on each side: it
# is exchanged once, as the embedding, and the result checked to be tied. (The names are the same on both sides.)
TIED_HEAD: tuple[str, str] = ("lm_head.weight", "transformer.wte.weight")
# Conv1D weights: (in, out) in GPT-2, (out, in) here.
TRANSPOSED_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Config fields copied as they are (special-token ids: see `special_ids_in_vocabulary`).
SHARED_CONFIG_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
)
SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# GPT-2 options that change the computation and that ScratchGPT does not implement: field → the only value accepted.
UNSUPPORTED_GPT2_OPTIONS: dict[str, Any] = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expand_name_table(table: dict[str, str], n_layer: int) -> dict[str, str]:
    """Fill the "{}" layer index of every template for layers 0..n_layer-1."""
    expanded: dict[str, str] = {}
    for source, target in table.items():
        if "{}" in source:
            for i in range(n_layer):
                expanded[source.format(i)] = target.format(i)
        else:
            expanded[source] = target
    return expanded


def weight_name_table(n_layer: int, tie_word_embeddings: bool) -> dict[str, str]:
    """GPT-2 name → ScratchGPT name of every tensor exchanged for a model of this shape: the tied head is not one
    (it is the embedding)."""
    table = expand_name_table(GPT2_TO_SCRATCH, n_layer)
    if tie_word_embeddings:
        del table[TIED_HEAD[0]]
    return table


def _needs_transpose(name: str) -> bool:
    return name.endswith(TRANSPOSED_SUFFIXES)


def special_ids_in_vocabulary(gpt2_config: GPT2Config) -> dict[str, Any]:
    """GPT-2's bos/eos/pad ids as ScratchGPT takes them: an id outside `[0, vocab_size)` becomes None (or is dropped
    from an eos list; None if none is left), with a warning naming it.

    transformers accepts such ids with a warning (GPT2Config keeps its default 50256 whatever the vocabulary, and
    Hub configs hold e.g. pad_token_id=-1); GPT-2's forward never reads them, and no token the model can produce
    has them, so leaving them out changes no logits and no generated token. Everything else passes through as it
    is, for `ScratchGPTConfig` to accept or name.
    """
    vocab_size = gpt2_config.vocab_size
    ids: dict[str, Any] = {}
    for field in SPECIAL_TOKEN_FIELDS:
        value = kept = getattr(gpt2_config, field)
        if _is_int(vocab_size) and _is_int(value) and not 0 <= value < vocab_size:
            kept = None
        elif _is_int(vocab_size) and field == "eos_token_id" and isinstance(value, list) and all(map(_is_int, value)):
            kept = [i for i in value if 0 <= i < vocab_size] or None
        if kept != value:
            logger.warning(
                f"GPT2Config.{field}={value!r} holds an id outside the vocabulary [0, {vocab_size}), which no "
                f"token can have and GPT-2's forward never uses; ScratchGPTConfig.{field} is {kept!r}"
            )
        ids[field] = kept
    return ids


def config_from_gpt2(gpt2_config: GPT2Config) -> ScratchGPTConfig:
    """The ScratchGPT config of a GPT-2 config: the same fields, special-token ids outside the vocabulary left out
    (`special_ids_in_vocabulary`); GPT-2 options ScratchGPT does not implement are refused."""
    for field, accepted in UNSUPPORTED_GPT2_OPTIONS.items():
        value = getattr(gpt2_config, field, accepted)
        if value != accepted:
            raise ValueError(f"GPT2Config.{field}={value!r} is not supported by ScratchGPT (expected {accepted!r})")
    values = {field: getattr(gpt2_config, field) for field in SHARED_CONFIG_FIELDS}
    return ScratchGPTConfig(**{**values, **special_ids_in_vocabulary(gpt2_config)})


def config_to_gpt2(config: ScratchGPTConfig) -> GPT2Config:
    """The GPT-2 config of a ScratchGPT config, every shared field given explicitly (a special id that is None stays
    None instead of becoming GPT2Config's default 50256)."""
    return GPT2Config(**{field: getattr(config, field) for field in SHARED_CONFIG_FIELDS})


def _names(names: list[str]) -> str:
    return f"{names[:5]}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """One storage (a tied Parameter seen under two names: NaNs included), or equal values."""
    same_storage = (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())
    return same_storage or torch.equal(a, b)


def _translate(
    state: dict[str, torch.Tensor], table: dict[str, str], tie_word_embeddings: bool, source: str
) -> dict[str, torch.Tensor]:
    """Rename by `table` and transpose the Conv1D/Linear weights. Every table entry must be in `state` and nothing
    else may be, except the tied head's second name, which must then hold the embedding's values."""
    allowed = set(table) | ({TIED_HEAD[0]} if tie_word_embeddings else set())
    missing, unexpected = sorted(set(table) - set(state)), sorted(set(state) - allowed)
    if missing or unexpected:
        raise ValueError(
            f"the {source} does not hold the tensors of its config (n_layer, tie_word_embeddings="
            f"{tie_word_embeddings}): missing {_names(missing)}, unexpected {_names(unexpected)}"
        )
    head, embedding = TIED_HEAD
    if tie_word_embeddings and head in state and not _same_values(state[head], state[embedding]):
        raise ValueError(
            f"the {source}'s config says tie_word_embeddings=True but its {head} is not {embedding} (max |difference| "
            f"{(state[head].float() - state[embedding].float()).abs().max().item():.4g}); set tie_word_embeddings="
            "False in its config to exchange both"
        )
    return {
        target: (state[source].t() if _needs_transpose(source) else state[source]).contiguous()
        for source, target in table.items()
    }


def _load_every_tensor(model: torch.nn.Module, weights: dict[str, torch.Tensor], tie_word_embeddings: bool) -> None:
    """Load `weights` into `model`, which must receive a value for each of its tensors (none left as initialised)
    and have a place for each of `weights`; its head must be its embedding exactly when the config ties them."""
    head, embedding = TIED_HEAD
    if tie_word_embeddings:
        weights = {**weights, head: weights[embedding]}  # the same Parameter under its second name
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{type(model).__name__} would be left with tensors not received: {_names(missing)}; no place for "
            f"{_names(unexpected)}"
        )
    model.load_state_dict(weights, strict=True)
    shared = model.get_parameter(head) is model.get_parameter(embedding)
    if shared != tie_word_embeddings:
        raise ValueError(
            f"{type(model).__name__}'s {head} and {embedding} are {'one' if shared else 'two separate'} "
            f"Parameter{'' if shared else 's'}, but its config says tie_word_embeddings={tie_word_embeddings}"
        )


def from_hf_gpt2(model_or_path: GPT2LMHeadModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> ScratchGPTForCausalLM:
    """A `ScratchGPTForCausalLM` with the same weights as a `GPT2LMHeadModel` (an instance or a saved folder)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        gpt2 = GPT2LMHeadModel.from_pretrained(model_or_path, **from_pretrained_kwargs)
    elif isinstance(model_or_path, GPT2LMHeadModel):
        gpt2 = model_or_path
    else:
        raise TypeError(f"expected a GPT2LMHeadModel or a folder path, got {type(model_or_path).__name__}")
    config = config_from_gpt2(gpt2.config)
    table = weight_name_table(config.n_layer, config.tie_word_embeddings)
    weights = _translate(gpt2.state_dict(), table, config.tie_word_embeddings, "GPT2LMHeadModel")
    model = ScratchGPTForCausalLM(config).to(dtype=gpt2.dtype)
    _load_every_tensor(model, weights, config.tie_word_embeddings)
    return model.eval() if not gpt2.training else model


def to_hf_gpt2(model: ScratchGPTForCausalLM) -> GPT2LMHeadModel:
    """A transformers `GPT2LMHeadModel` with the same weights as `model` (and a config with the same fields)."""
    config = config_to_gpt2(model.config)
    table = weight_name_table(config.n_layer, config.tie_word_embeddings)
    inverse = {target: source for source, target in table.items()}
    weights = _translate(model.state_dict(), inverse, config.tie_word_embeddings, "ScratchGPTForCausalLM")
    gpt2 = GPT2LMHeadModel(config).to(dtype=model.dtype)
    _load_every_tensor(gpt2, weights, config.tie_word_embeddings)
    return gpt2.eval() if not model.training else gpt2


__all__ = ["from_hf_gpt2", "to_hf_gpt2", "config_from_gpt2", "config_to_gpt2", "GPT2_TO_SCRATCH", "TIED_HEAD"]
