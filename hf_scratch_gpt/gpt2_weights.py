"""Weight exchange with transformers' `GPT2LMHeadModel`.

Module names are the same on both sides; the only difference is that GPT-2 stores its four projection weights
as `Conv1D` (in, out) and ScratchGPT uses `nn.Linear` (out, in). So the exchange is a name table plus one
transpose rule.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import ScratchGPTForCausalLM

# GPT-2 name → ScratchGPT name ("{}" is the layer index). Identity by construction; kept explicit so a renamed
# module on either side fails loudly here instead of loading silently wrong.
GPT2_TO_SCRATCH: dict[str, str] = {
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
# Conv1D weights: (in, out) in GPT-2, (out, in) here.
TRANSPOSED_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Config fields copied as they are.
SHARED_CONFIG_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
)
# GPT-2 options that change the computation and that ScratchGPT does not implement: field → the only value accepted.
UNSUPPORTED_GPT2_OPTIONS: dict[str, Any] = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


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


def _needs_transpose(name: str) -> bool:
    return name.endswith(TRANSPOSED_SUFFIXES)


def config_from_gpt2(gpt2_config: GPT2Config) -> ScratchGPTConfig:
    for field, accepted in UNSUPPORTED_GPT2_OPTIONS.items():
        value = getattr(gpt2_config, field, accepted)
        if value != accepted:
            raise ValueError(f"GPT2Config.{field}={value!r} is not supported by ScratchGPT (expected {accepted!r})")
    return ScratchGPTConfig(**{field: getattr(gpt2_config, field) for field in SHARED_CONFIG_FIELDS})


def config_to_gpt2(config: ScratchGPTConfig) -> GPT2Config:
    return GPT2Config(**{field: getattr(config, field) for field in SHARED_CONFIG_FIELDS})


def _translate(state: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename by `table` and transpose the Conv1D/Linear weights; every table entry must be present."""
    missing = sorted(set(table) - set(state))
    if missing:
        raise ValueError(f"weights missing from the source model: {missing[:5]}{' …' if len(missing) > 5 else ''}")
    return {
        target: (state[source].t() if _needs_transpose(source) else state[source]).contiguous()
        for source, target in table.items()
    }


def from_hf_gpt2(model_or_path: GPT2LMHeadModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> ScratchGPTForCausalLM:
    """A `ScratchGPTForCausalLM` with the same weights as a `GPT2LMHeadModel` (an instance or a saved folder)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        gpt2 = GPT2LMHeadModel.from_pretrained(model_or_path, **from_pretrained_kwargs)
    elif isinstance(model_or_path, GPT2LMHeadModel):
        gpt2 = model_or_path
    else:
        raise TypeError(f"expected a GPT2LMHeadModel or a folder path, got {type(model_or_path).__name__}")
    config = config_from_gpt2(gpt2.config)
    table = expand_name_table(GPT2_TO_SCRATCH, config.n_layer)
    weights = _translate(gpt2.state_dict(), table)
    model = ScratchGPTForCausalLM(config).to(dtype=gpt2.dtype)
    model.load_state_dict(weights, strict=False)  # lm_head.weight is tied to wte, not stored separately
    model.tie_weights()
    return model.eval() if not gpt2.training else model


def to_hf_gpt2(model: ScratchGPTForCausalLM) -> GPT2LMHeadModel:
    """A transformers `GPT2LMHeadModel` with the same weights as `model`."""
    config = config_to_gpt2(model.config)
    inverse = {target: source for source, target in expand_name_table(GPT2_TO_SCRATCH, config.n_layer).items()}
    weights = _translate(model.state_dict(), inverse)
    gpt2 = GPT2LMHeadModel(config).to(dtype=model.dtype)
    gpt2.load_state_dict(weights, strict=False)
    gpt2.tie_weights()
    return gpt2.eval() if not model.training else gpt2


__all__ = ["from_hf_gpt2", "to_hf_gpt2", "config_from_gpt2", "config_to_gpt2", "GPT2_TO_SCRATCH"]
