"""OpenAI TensorFlow variable names → ScratchGPT parameter names, as data.

OpenAI's `model.py` stores every projection as a "conv1d" weight `w` of shape `[1, in, out]`; ScratchGPT uses
`nn.Linear` (out, in), so those are squeezed and transposed. LayerNorm gains/biases are `g`/`b`.
Shapes are written with the hparams.json dimension names so one table checks every size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# How a TF tensor becomes ours: "copy" as is, "linear" = squeeze the leading 1 of [1, in, out] and transpose.
COPY = "copy"
LINEAR = "linear"


@dataclass(frozen=True)
class TensorRule:
    target: str  # our parameter name; "{}" is the layer index
    tf_shape: tuple[str, ...]  # expected TF shape in dimension names (see `dimensions`)
    layout: str  # COPY or LINEAR


# "{}" is the layer index.
OPENAI_TO_SCRATCH: dict[str, TensorRule] = {
    "model/wte": TensorRule("transformer.wte.weight", ("n_vocab", "n_embd"), COPY),
    "model/wpe": TensorRule("transformer.wpe.weight", ("n_ctx", "n_embd"), COPY),
    "model/h{}/ln_1/g": TensorRule("transformer.h.{}.ln_1.weight", ("n_embd",), COPY),
    "model/h{}/ln_1/b": TensorRule("transformer.h.{}.ln_1.bias", ("n_embd",), COPY),
    "model/h{}/attn/c_attn/w": TensorRule("transformer.h.{}.attn.c_attn.weight", ("1", "n_embd", "3*n_embd"), LINEAR),
    "model/h{}/attn/c_attn/b": TensorRule("transformer.h.{}.attn.c_attn.bias", ("3*n_embd",), COPY),
    "model/h{}/attn/c_proj/w": TensorRule("transformer.h.{}.attn.c_proj.weight", ("1", "n_embd", "n_embd"), LINEAR),
    "model/h{}/attn/c_proj/b": TensorRule("transformer.h.{}.attn.c_proj.bias", ("n_embd",), COPY),
    "model/h{}/ln_2/g": TensorRule("transformer.h.{}.ln_2.weight", ("n_embd",), COPY),
    "model/h{}/ln_2/b": TensorRule("transformer.h.{}.ln_2.bias", ("n_embd",), COPY),
    "model/h{}/mlp/c_fc/w": TensorRule("transformer.h.{}.mlp.c_fc.weight", ("1", "n_embd", "4*n_embd"), LINEAR),
    "model/h{}/mlp/c_fc/b": TensorRule("transformer.h.{}.mlp.c_fc.bias", ("4*n_embd",), COPY),
    "model/h{}/mlp/c_proj/w": TensorRule("transformer.h.{}.mlp.c_proj.weight", ("1", "4*n_embd", "n_embd"), LINEAR),
    "model/h{}/mlp/c_proj/b": TensorRule("transformer.h.{}.mlp.c_proj.bias", ("n_embd",), COPY),
    "model/ln_f/g": TensorRule("transformer.ln_f.weight", ("n_embd",), COPY),
    "model/ln_f/b": TensorRule("transformer.ln_f.bias", ("n_embd",), COPY),
}

# Variables a training run leaves in a checkpoint that carry no weights: the step counter, Adam's moment slots
# (`…/Adam`, `…/Adam_1`) and bias-correction powers. Matched against the whole name.
TRAINING_ONLY_PATTERNS: tuple[str, ...] = (
    r"global_step",
    r".*/Adam(_\d+)?",
    r"beta[12]_power(_\d+)?",
    r".*/(Momentum|RMSProp(_\d+)?|Adagrad|ExponentialMovingAverage)",
)

# The hparams.json keys the converter needs and what each means in our config.
HPARAMS_TO_CONFIG: dict[str, str] = {
    "n_vocab": "vocab_size",
    "n_ctx": "n_positions",
    "n_embd": "n_embd",
    "n_head": "n_head",
    "n_layer": "n_layer",
}

_LAYER = re.compile(r"^model/h(\d+)/")


def dimensions(hparams: dict[str, int]) -> dict[str, int]:
    """The dimension names used in `TensorRule.tf_shape`, evaluated for one checkpoint's hparams."""
    n_embd = hparams["n_embd"]
    return {
        "1": 1,
        "n_vocab": hparams["n_vocab"],
        "n_ctx": hparams["n_ctx"],
        "n_embd": n_embd,
        "3*n_embd": 3 * n_embd,
        "4*n_embd": 4 * n_embd,
    }


def is_training_only(tf_name: str) -> bool:
    return any(re.fullmatch(pattern, tf_name) for pattern in TRAINING_ONLY_PATTERNS)


def expected_variables(n_layer: int) -> dict[str, TensorRule]:
    """Every TF variable a checkpoint with `n_layer` blocks must hold, with its rule (layer index filled in)."""
    expanded: dict[str, TensorRule] = {}
    for template, rule in OPENAI_TO_SCRATCH.items():
        layers = range(n_layer) if "{}" in template else [None]
        for i in layers:
            name = template.format(i) if i is not None else template
            target = rule.target.format(i) if i is not None else rule.target
            expanded[name] = TensorRule(target, rule.tf_shape, rule.layout)
    return expanded


def map_openai_name(tf_name: str, n_layer: int) -> TensorRule | None:
    """The rule for one TF variable; `None` for training-only variables; `ValueError` for anything else unknown."""
    if is_training_only(tf_name):
        return None
    table = expected_variables(n_layer)
    if tf_name in table:
        return table[tf_name]
    layer = _LAYER.match(tf_name)
    if layer and int(layer.group(1)) >= n_layer:
        raise ValueError(
            f"checkpoint variable {tf_name!r} belongs to layer {layer.group(1)}, but hparams.json has "
            f"n_layer={n_layer} (layers 0..{n_layer - 1})"
        )
    raise ValueError(
        f"unknown checkpoint variable {tf_name!r}: it is neither a GPT-2 weight (e.g. 'model/h0/attn/c_attn/w') "
        f"nor a known training-only variable"
    )


def tf_shape_for(rule: TensorRule, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[name] for name in rule.tf_shape)


def target_shape_for(rule: TensorRule, dims: dict[str, int]) -> tuple[int, ...]:
    """Our parameter's shape: LINEAR [1, in, out] becomes (out, in)."""
    shape = tf_shape_for(rule, dims)
    return (shape[2], shape[1]) if rule.layout == LINEAR else shape


__all__ = [
    "COPY",
    "HPARAMS_TO_CONFIG",
    "LINEAR",
    "OPENAI_TO_SCRATCH",
    "TRAINING_ONLY_PATTERNS",
    "TensorRule",
    "dimensions",
    "expected_variables",
    "is_training_only",
    "map_openai_name",
    "target_shape_for",
    "tf_shape_for",
]
