"""nanoGPT's `ckpt.pt` → a checked ScratchGPT folder.

nanoGPT's `train.py` saves `{model, optimizer, model_args, iter_num, best_val_loss, config}` with `torch.save`:
`model` is the model's state dict (keys prefixed `_orig_mod.` when it ran under `torch.compile`), `model_args` its
`GPTConfig` (n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout), `config` the script's plain settings.
All of it is tensors and plain Python data, so the file is read with `torch.load(weights_only=True)` and nothing in
it is ever run.

nanoGPT's `model.py` names its modules after GPT-2's checkpoint, which ScratchGPT does too, so the names carry over
unchanged. What differs, and what the conversion does about it:
- the MLP's `nn.GELU()` is the exact erf GELU, not GPT-2's tanh approximation: the config gets
  `activation_function="gelu"`, which is the same torch function, so the logits match nanoGPT's own;
- `bias=False` models have no Linear or LayerNorm biases: zero biases are stored, which computes the same
  function exactly (adding 0.0 changes no float);
- the vocabulary is kept at nanoGPT's size, 50304 for GPT-2 runs (GPT-2's 50257 padded to a multiple of 64):
  nanoGPT's logits and softmax run over all 50304 ids, so cutting the padding would change every probability and
  the loss. The ids past the tokenizer's are padding no text encodes to;
- `lm_head.weight` is `transformer.wte.weight` (tied), so it is checked equal and stored once;
- the attention's `bias` buffer (the causal mask, saved by torch < 2.0 models) is dropped.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import torch
from transformers.utils import logging

from . import reference
from .common import (
    GPT2_VOCAB_SIZE,
    PeerConversionReport,
    SourceModel,
    check_dtype,
    check_output,
    check_tensors,
    existing_file,
    load_torch_file,
    publish_conversion,
    read_tokenizer,
    count_layers,
    strip_compiled_prefix,
)

logger = logging.get_logger(__name__)

FORMAT = "nanogpt"
WHAT = "nanoGPT checkpoint (ckpt.pt)"
LAYER_NORM_EPSILON = 1e-5  # model.py's LayerNorm passes 1e-5 to F.layer_norm
# model_args entries that must be positive integers; `bias` must be a bool, `dropout` (optional) a number.
MODEL_ARG_INTS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
# nanoGPT's state-dict names (ScratchGPT's names too) and their shapes in model_args terms; "{}" is the layer.
# Biases exist only with bias=True.
WEIGHTS: dict[str, tuple[str, ...]] = {
    "transformer.wte.weight": ("vocab_size", "n_embd"),
    "transformer.wpe.weight": ("block_size", "n_embd"),
    "transformer.h.{}.ln_1.weight": ("n_embd",),
    "transformer.h.{}.attn.c_attn.weight": ("3*n_embd", "n_embd"),
    "transformer.h.{}.attn.c_proj.weight": ("n_embd", "n_embd"),
    "transformer.h.{}.ln_2.weight": ("n_embd",),
    "transformer.h.{}.mlp.c_fc.weight": ("4*n_embd", "n_embd"),
    "transformer.h.{}.mlp.c_proj.weight": ("n_embd", "4*n_embd"),
    "transformer.ln_f.weight": ("n_embd",),
    "lm_head.weight": ("vocab_size", "n_embd"),
}
BIASES: dict[str, tuple[str, ...]] = {
    "transformer.h.{}.ln_1.bias": ("n_embd",),
    "transformer.h.{}.attn.c_attn.bias": ("3*n_embd",),
    "transformer.h.{}.attn.c_proj.bias": ("n_embd",),
    "transformer.h.{}.ln_2.bias": ("n_embd",),
    "transformer.h.{}.mlp.c_fc.bias": ("4*n_embd",),
    "transformer.h.{}.mlp.c_proj.bias": ("n_embd",),
    "transformer.ln_f.bias": ("n_embd",),
}
# The causal mask buffer `CausalSelfAttention.bias`, (1, 1, block_size, block_size), present when model.py ran on a
# torch without scaled_dot_product_attention. Not a weight.
MASK_BUFFER = "transformer.h.{}.attn.bias"
# Checkpoint entries besides the weights: training state, not part of the model.
TRAINING_ENTRIES = ("optimizer", "iter_num", "best_val_loss", "config")


def check_model_args(model_args: object, path: Path) -> dict:
    if not isinstance(model_args, dict):
        raise ValueError(
            f"{path}: model_args must be a dict (nanoGPT's GPTConfig fields), got {type(model_args).__name__}"
        )
    missing = [key for key in (*MODEL_ARG_INTS, "bias") if key not in model_args]
    if missing:
        raise ValueError(f"{path}: model_args lacks {missing} (it has {sorted(model_args)})")
    for key in MODEL_ARG_INTS:
        value = model_args[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{path}: model_args[{key!r}] must be a positive integer, got {value!r}")
    if not isinstance(model_args["bias"], bool):
        raise ValueError(f"{path}: model_args['bias'] must be True or False, got {model_args['bias']!r}")
    dropout = model_args.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{path}: model_args['dropout'] must be a number in [0, 1), got {dropout!r}")
    if model_args["n_embd"] % model_args["n_head"]:
        raise ValueError(f"{path}: n_embd={model_args['n_embd']} is not divisible by n_head={model_args['n_head']}")
    return model_args


def expected_shapes(model_args: dict, table: dict[str, tuple[str, ...]]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor `table` describes, for these model_args."""
    dims = {key: model_args[key] for key in MODEL_ARG_INTS}
    dims.update({"3*n_embd": 3 * dims["n_embd"], "4*n_embd": 4 * dims["n_embd"]})
    shapes = {}
    for template, dim_names in table.items():
        for layer in range(model_args["n_layer"]) if "{}" in template else [None]:
            shapes[template.format(layer)] = tuple(dims[name] for name in dim_names)
    return shapes


def nanogpt_logits(tensors: dict[str, torch.Tensor], model_args: dict, tokens: list[int]) -> torch.Tensor:
    """nanoGPT's `GPT.forward` (model.py) in float64 on the checkpoint's own tensors: (T,) ids → (T, vocab_size)."""
    get = lambda name: tensors[name].double()  # noqa: E731
    bias = (lambda name: tensors[name]) if model_args["bias"] else (lambda name: None)  # noqa: E731
    ids = torch.tensor(tokens)
    x = get("transformer.wte.weight")[ids] + get("transformer.wpe.weight")[: len(tokens)]  # (T, C)
    width = model_args["n_embd"]
    for layer in range(model_args["n_layer"]):
        h = f"transformer.h.{layer}"
        normed = reference.layer_norm(x, get(f"{h}.ln_1.weight"), bias(f"{h}.ln_1.bias"), LAYER_NORM_EPSILON)
        qkv = reference.linear(normed, get(f"{h}.attn.c_attn.weight"), bias(f"{h}.attn.c_attn.bias"))  # (T, 3C)
        q, k, v = qkv.split(width, dim=-1)
        attended = reference.causal_self_attention(q, k, v, model_args["n_head"])
        x = x + reference.linear(attended, get(f"{h}.attn.c_proj.weight"), bias(f"{h}.attn.c_proj.bias"))
        normed = reference.layer_norm(x, get(f"{h}.ln_2.weight"), bias(f"{h}.ln_2.bias"), LAYER_NORM_EPSILON)
        hidden = reference.gelu_erf(reference.linear(normed, get(f"{h}.mlp.c_fc.weight"), bias(f"{h}.mlp.c_fc.bias")))
        x = x + reference.linear(hidden, get(f"{h}.mlp.c_proj.weight"), bias(f"{h}.mlp.c_proj.bias"))
    x = reference.layer_norm(x, get("transformer.ln_f.weight"), bias("transformer.ln_f.bias"), LAYER_NORM_EPSILON)
    return reference.head_logits(x, tensors["lm_head.weight"])


def read_nanogpt_checkpoint(path: Path) -> SourceModel:
    """Read and check a nanoGPT `ckpt.pt`; `ValueError` naming the file for anything that is not one."""
    checkpoint = load_torch_file(path, WHAT)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict) and "model_args" in checkpoint):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a nanoGPT checkpoint: train.py saves a dict with 'model' (the state dict) and "
            f"'model_args'; this file holds {found}"
        )
    model_args = check_model_args(checkpoint["model_args"], path)
    state, compiled = strip_compiled_prefix(checkpoint["model"], path)
    layers = count_layers(state, "transformer.h.")
    if layers != model_args["n_layer"]:
        raise ValueError(
            f"{path}: model_args has n_layer={model_args['n_layer']} but the state dict holds {layers} layers"
        )
    masks = [MASK_BUFFER.format(layer) for layer in range(model_args["n_layer"]) if MASK_BUFFER.format(layer) in state]
    for name in masks:
        del state[name]
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: a state dict may hold it under one name
    check_tensors(path, state, expected_shapes(model_args, {**WEIGHTS, **(BIASES if model_args["bias"] else {})}),
                  "its model_args")
    if not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
        raise ValueError(
            f"{path}: lm_head.weight differs from transformer.wte.weight; nanoGPT ties them, so this is not a nanoGPT "
            f"GPT's state dict"
        )
    source = {name: tensor.to(torch.float32) for name, tensor in state.items()}  # exact for bf16/fp16 weights

    tensors = {name: tensor for name, tensor in source.items() if name != "lm_head.weight"}
    notes = [
        "nanoGPT's MLP uses the exact erf GELU (`nn.GELU()`), so `activation_function` is `gelu`, not GPT-2's "
        "tanh `gelu_new`.",
    ]
    if model_args["vocab_size"] > GPT2_VOCAB_SIZE:
        notes.append(
            f"The vocabulary is kept at nanoGPT's {model_args['vocab_size']} ids (GPT-2's {GPT2_VOCAB_SIZE} padded "
            f"for speed): nanoGPT's logits and softmax cover all of them, so every probability and the loss stay "
            f"nanoGPT's exactly."
        )
    if not model_args["bias"]:
        tensors.update({name: torch.zeros(shape) for name, shape in expected_shapes(model_args, BIASES).items()})
        notes.append("Trained with `bias=False`: the Linear and LayerNorm biases are stored as zeros, which computes "
                     "exactly the same function.")
    if compiled:
        notes.append("The checkpoint came from a `torch.compile`d model; the `_orig_mod.` key prefix was removed.")
    training = {key: checkpoint[key] for key in TRAINING_ENTRIES if key in checkpoint}
    details = {"model_args": repr({key: model_args[key] for key in sorted(model_args)})}
    if "iter_num" in training:
        details["iter_num"] = str(training["iter_num"])
    if "best_val_loss" in training:
        loss = training["best_val_loss"]
        details["best_val_loss"] = f"{float(loss):.4f}" if isinstance(loss, (int, float, torch.Tensor)) else repr(loss)
    config = training.get("config")
    if isinstance(config, dict) and isinstance(config.get("dataset"), str):
        details["dataset (train.py config)"] = config["dataset"]
    dropout = float(model_args.get("dropout", 0.0))
    return SourceModel(
        format=FORMAT, project="nanoGPT", forward="nanoGPT's own forward (`GPT.forward`, model.py)", path=path,
        description="nanoGPT's train.py checkpoint (torch.save)",
        config={
            "vocab_size": model_args["vocab_size"], "n_positions": model_args["block_size"],
            "n_embd": model_args["n_embd"], "n_layer": model_args["n_layer"], "n_head": model_args["n_head"],
            "activation_function": "gelu", "layer_norm_epsilon": LAYER_NORM_EPSILON, "tie_word_embeddings": True,
            "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        },
        tensors=tensors,
        reference=lambda tokens: nanogpt_logits(source, model_args, tokens),
        details=details, notes=notes,
        ignored=[*training] + (["transformer.h.*.attn.bias (causal mask buffers)"] if masks else []),
    )


def convert_nanogpt(
    src: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    command: str | None = None,
) -> PeerConversionReport:
    """Convert nanoGPT's `ckpt.pt` into a ScratchGPT folder that loads with `from_pretrained`, verified against
    nanoGPT's forward before it is published.

    Args:
        src: the `ckpt.pt` nanoGPT's train.py wrote.
        out: the folder to create; refused if it exists unless `overwrite` (and then only a converted folder).
        tokenizer: nanoGPT's `meta.pkl` (character vocabulary, e.g. shakespeare_char), or a GPT-2 BPE folder
            (vocab.json + merges.txt, or tokenizer.json). None: the folder is written without a tokenizer.
        dtype: "float32" (default, exact), "bfloat16" or "float16" for the stored weights.
        command: the command line recorded in the model card (defaults to the equivalent CLI call).
    """
    started = time.perf_counter()
    check_dtype(dtype)
    source, out = existing_file(src, WHAT), Path(out)
    check_output(source, out, overwrite)
    model = read_nanogpt_checkpoint(source)
    tokenizer_source = None if tokenizer is None else read_tokenizer(tokenizer, model.config["n_positions"])
    command = command or shlex.join(
        ["hf-scratch-gpt", "convert", str(source), str(out), "--from", FORMAT, "--dtype", dtype]
        + ([] if tokenizer is None else ["--tokenizer", str(tokenizer)])
    )
    return publish_conversion(model, out, tokenizer_source, dtype, overwrite, command, started)


__all__ = ["convert_nanogpt", "nanogpt_logits", "read_nanogpt_checkpoint"]
