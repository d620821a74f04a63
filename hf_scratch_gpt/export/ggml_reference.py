"""A float64 evaluation of a GGUF's weights as ggml's CPU backend computes llama.cpp's gpt2 graph.

llama.cpp does not compute the model's float32 function, even from an F32 file; it computes what the file holds,
with three roundings of its own (ggml-cpu, llama.cpp as vendored by llama-cpp-python 0.3.36):

- GELU is a lookup table over F16 inputs (`GGML_GELU_FP16`, ggml-cpu/vec.h): the input is rounded to F16, the
  output is the tanh-GELU of that value rounded to F16 (0 at or below -10, the input itself at or above 10);
- a matrix product with an F16 weight first converts the activations to F16 (the F16 type's `vec_dot_type`);
- a matrix product with a Q8_0 weight first quantizes the activations to Q8_0 (blocks of 32 along the reduced
  dimension, scale max|x|/127 kept in F16, values round(x · 127/max|x|), half to even as its AVX code rounds).

Everything else is float32 arithmetic of the same graph (with an F32 KV cache). So this reference evaluates the
ScratchGPT graph in float64 on the file's dequantized weights with exactly those three roundings; llama.cpp must
then agree with it to float32 rounding, for every tensor type. Its difference to the exact (float64) model is the
format's own cost, measured rather than bounded by a constant.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..modeling_scratch_gpt import ScratchGPTForCausalLM

GELU_TABLE_LIMIT = 10.0  # ggml_vec_gelu_f32: 0 at or below -10, x at or above 10, the table between
Q8_0_BLOCK = 32


def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """ggml's CPU GELU: tanh-GELU (computed in float32, as ggml_gelu_f32 does) of the F16-rounded input, rounded to
    F16."""
    rounded = x.to(torch.float16).to(torch.float32)
    gelu = 0.5 * rounded * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * rounded * (1.0 + 0.044715 * rounded * rounded)))
    table = gelu.to(torch.float16).to(x.dtype)
    return torch.where(x <= -GELU_TABLE_LIMIT, torch.zeros_like(x), torch.where(x >= GELU_TABLE_LIMIT, x, table))


def round_to_f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(x.dtype)


def round_to_q8_0(x: torch.Tensor) -> torch.Tensor:
    """Activations as ggml quantizes them to Q8_0 before a product with a Q8_0 weight, dequantized."""
    shape = x.shape
    blocks = x.to(torch.float32).reshape(-1, shape[-1] // Q8_0_BLOCK, Q8_0_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    quants = torch.round(blocks * inverse)  # half to even, as _mm256_round_ps(_MM_ROUND_NEAREST)
    scale = (amax / 127.0).to(torch.float16)
    return (quants.to(torch.float64) * scale.to(torch.float64)).reshape(shape).to(x.dtype)


def activation_rounding(qtype_name: str):
    """What ggml does to a product's activations for a weight of this GGML type (None: nothing)."""
    return {"F32": None, "F16": round_to_f16, "Q8_0": round_to_q8_0}[qtype_name]


def ggml_reference_logits(
    model: ScratchGPTForCausalLM, file_tensors: dict[str, tuple[torch.Tensor, Any]], input_ids: torch.Tensor
) -> torch.Tensor:
    """Float64 logits (B, T, V) of the graph llama.cpp runs on a GGUF.

    `file_tensors`: ScratchGPT state-dict name → (the file's values dequantized to float64, GGML type), for every
    tensor of the model (the tied head is the embedding). `model` gives the config only.
    """
    config = model.config
    with torch.device("meta"):
        reference = ScratchGPTForCausalLM(config)
    state = {name: values for name, (values, _) in file_tensors.items()}
    types = {name: qtype.name for name, (_, qtype) in file_tensors.items()}
    head = "lm_head.weight"
    if config.tie_word_embeddings:
        state[head], types[head] = state["transformer.wte.weight"], types["transformer.wte.weight"]
    reference.load_state_dict(state, strict=True, assign=True)
    reference.eval()

    hooks = []
    for name, module in reference.named_modules():
        if isinstance(module, torch.nn.Linear):
            rounding = activation_rounding(types[f"{name}.weight"])
            if rounding is not None:
                hooks.append(module.register_forward_pre_hook(lambda _, args, r=rounding: (r(args[0]),)))
    for block in reference.transformer.h:
        block.mlp.act = ggml_gelu
    try:
        with torch.no_grad():
            return reference(input_ids=input_ids, use_cache=False).logits
    finally:
        for hook in hooks:
            hook.remove()


__all__ = ["ggml_gelu", "ggml_reference_logits", "round_to_f16", "round_to_q8_0"]
