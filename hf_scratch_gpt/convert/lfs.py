"""The "LLMs from scratch" book's `GPTModel` (Sebastian Raschka, ch04/ch05 `previous_chapters.py`) → a checked
ScratchGPT folder.

The book saves `torch.save(model.state_dict(), "model.pth")`, or `{"model_state_dict": ..., "optimizer_state_dict":
...}`; both are tensors and plain data, read with `torch.load(weights_only=True)`. Its modules map onto GPT-2's
(`WEIGHT_MAP`), with four differences:
- queries, keys and values are three Linears (`W_query`, `W_key`, `W_value`, biased only with `qkv_bias=True`):
  they are stacked in that order into `c_attn`, heads side by side inside each as the book's `view` splits them;
  without `qkv_bias` the stacked bias is zero, which computes the same function;
- LayerNorm is its own module with `scale`/`shift` and eps 1e-5 over the biased variance, i.e. nn.LayerNorm;
- the output head `out_head` is a separate matrix (`tie_word_embeddings=False`);
- `att.mask` is the causal mask buffer, not a weight: dropped.
The GELU is the tanh approximation written out, GPT-2's `gelu_new`. Shapes give every size but the number of heads,
which the caller supplies (`n_head`); the dropout rate is not in the file.
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
    PeerConversionReport,
    SourceModel,
    check_dtype,
    check_output,
    check_tensors,
    count_layers,
    existing_file,
    load_torch_file,
    publish_conversion,
    read_tokenizer,
    strip_compiled_prefix,
)

logger = logging.get_logger(__name__)

FORMAT = "lfs"
WHAT = "LLMs-from-scratch GPTModel state dict (model.pth)"
LAYER_NORM_EPSILON = 1e-5  # the book's LayerNorm: self.eps = 1e-5
# The book's names → ScratchGPT's, with the book's shapes in dimension names; "{}" is the block.
# V: vocabulary, T: context length, C: width, F: feed-forward width (4·C in the book).
WEIGHT_MAP: dict[str, tuple[str, tuple[str, ...]]] = {
    "tok_emb.weight": ("transformer.wte.weight", ("V", "C")),
    "pos_emb.weight": ("transformer.wpe.weight", ("T", "C")),
    "trf_blocks.{}.norm1.scale": ("transformer.h.{}.ln_1.weight", ("C",)),
    "trf_blocks.{}.norm1.shift": ("transformer.h.{}.ln_1.bias", ("C",)),
    "trf_blocks.{}.att.out_proj.weight": ("transformer.h.{}.attn.c_proj.weight", ("C", "C")),
    "trf_blocks.{}.att.out_proj.bias": ("transformer.h.{}.attn.c_proj.bias", ("C",)),
    "trf_blocks.{}.norm2.scale": ("transformer.h.{}.ln_2.weight", ("C",)),
    "trf_blocks.{}.norm2.shift": ("transformer.h.{}.ln_2.bias", ("C",)),
    "trf_blocks.{}.ff.layers.0.weight": ("transformer.h.{}.mlp.c_fc.weight", ("F", "C")),
    "trf_blocks.{}.ff.layers.0.bias": ("transformer.h.{}.mlp.c_fc.bias", ("F",)),
    "trf_blocks.{}.ff.layers.2.weight": ("transformer.h.{}.mlp.c_proj.weight", ("C", "F")),
    "trf_blocks.{}.ff.layers.2.bias": ("transformer.h.{}.mlp.c_proj.bias", ("C",)),
    "final_norm.scale": ("transformer.ln_f.weight", ("C",)),
    "final_norm.shift": ("transformer.ln_f.bias", ("C",)),
    "out_head.weight": ("lm_head.weight", ("V", "C")),
}
# Stacked in this order into c_attn (q | k | v, as GPT-2's fused projection).
QKV = ("W_query", "W_key", "W_value")
QKV_WEIGHT = "trf_blocks.{}.att.{}.weight"
QKV_BIAS = "trf_blocks.{}.att.{}.bias"
MASK_BUFFER = "trf_blocks.{}.att.mask"  # torch.triu(ones(T, T), 1): the causal mask, not a weight


def book_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The GPTModel state dict inside what `torch.save` wrote: the dict itself, or its `model_state_dict`."""
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state_dict"), dict):
        return loaded["model_state_dict"]
    if isinstance(loaded, dict) and "tok_emb.weight" in {str(k).removeprefix("_orig_mod.") for k in loaded}:
        return loaded
    found = sorted(map(str, loaded))[:8] if isinstance(loaded, dict) else type(loaded).__name__
    raise ValueError(
        f"{path} is not a GPTModel state dict from the book: expected tok_emb.weight, trf_blocks.*, out_head.weight "
        f"(or a dict with 'model_state_dict'); found {found}"
    )


def dimensions(state: dict[str, torch.Tensor], path: Path) -> dict[str, int]:
    """V, T, C, F and the layer count, read from the shapes."""
    for name in ("tok_emb.weight", "pos_emb.weight", "trf_blocks.0.ff.layers.0.weight"):
        if name not in state or not torch.is_tensor(state[name]) or state[name].dim() != 2:
            raise ValueError(f"{path}: {name} is missing or not a matrix; the shapes of the model cannot be read")
    (vocab, width), (context, _), (inner, _) = (state[name].shape for name in (
        "tok_emb.weight", "pos_emb.weight", "trf_blocks.0.ff.layers.0.weight"))
    return {"V": vocab, "T": context, "C": width, "F": inner, "L": count_layers(state, "trf_blocks.")}


def lfs_logits(state: dict[str, torch.Tensor], dims: dict[str, int], n_head: int, qkv_bias: bool,
               tokens: list[int]) -> torch.Tensor:
    """The book's `GPTModel.forward` in float64 on its own state dict: (T,) ids → (T, V)."""
    get = lambda name: state[name].double()  # noqa: E731
    ids = torch.tensor(tokens)
    x = get("tok_emb.weight")[ids] + get("pos_emb.weight")[: len(tokens)]  # (T, C)
    for block in range(dims["L"]):
        b = f"trf_blocks.{block}"
        normed = reference.layer_norm(x, get(f"{b}.norm1.scale"), get(f"{b}.norm1.shift"), LAYER_NORM_EPSILON)
        q, k, v = (
            reference.linear(normed, get(QKV_WEIGHT.format(block, part)),
                             get(QKV_BIAS.format(block, part)) if qkv_bias else None)
            for part in QKV
        )
        attended = reference.causal_self_attention(q, k, v, n_head)
        x = x + reference.linear(attended, get(f"{b}.att.out_proj.weight"), get(f"{b}.att.out_proj.bias"))
        normed = reference.layer_norm(x, get(f"{b}.norm2.scale"), get(f"{b}.norm2.shift"), LAYER_NORM_EPSILON)
        hidden = reference.gelu_tanh(
            reference.linear(normed, get(f"{b}.ff.layers.0.weight"), get(f"{b}.ff.layers.0.bias"))
        )
        x = x + reference.linear(hidden, get(f"{b}.ff.layers.2.weight"), get(f"{b}.ff.layers.2.bias"))
    x = reference.layer_norm(x, get("final_norm.scale"), get("final_norm.shift"), LAYER_NORM_EPSILON)
    return reference.head_logits(x, state["out_head.weight"])


def read_lfs_model(path: Path, n_head: int) -> SourceModel:
    """Read and check a book `GPTModel` state dict; `ValueError` naming the file for anything that is not one."""
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1:
        raise ValueError(f"n_head (--n-head) must be a positive integer, got {n_head!r}")
    loaded = load_torch_file(path, WHAT)
    state, compiled = strip_compiled_prefix(book_state_dict(loaded, path), path)
    dims = dimensions(state, path)
    if dims["C"] % n_head:
        raise ValueError(f"{path}: the width {dims['C']} (tok_emb.weight) is not divisible by n_head={n_head}")
    masks = [MASK_BUFFER.format(block) for block in range(dims["L"]) if MASK_BUFFER.format(block) in state]
    state = {name: tensor for name, tensor in state.items() if name not in masks}
    qkv_bias = QKV_BIAS.format(0, QKV[0]) in state
    expected = {}
    for template, (_, shape) in WEIGHT_MAP.items():
        for block in range(dims["L"]) if "{}" in template else [None]:
            expected[template.format(block)] = tuple(dims[name] for name in shape)
    for block in range(dims["L"]):
        for part in QKV:
            expected[QKV_WEIGHT.format(block, part)] = (dims["C"], dims["C"])
            if qkv_bias:
                expected[QKV_BIAS.format(block, part)] = (dims["C"],)
    check_tensors(path, state, expected, "tok_emb, pos_emb and ff.layers.0")
    source = {name: tensor.to(torch.float32) for name, tensor in state.items()}

    tensors = {}
    for template, (target, _) in WEIGHT_MAP.items():
        for block in range(dims["L"]) if "{}" in template else [None]:
            tensors[target.format(block)] = source[template.format(block)]
    for block in range(dims["L"]):
        tensors[f"transformer.h.{block}.attn.c_attn.weight"] = torch.cat(
            [source[QKV_WEIGHT.format(block, part)] for part in QKV]
        )  # (3C, C)
        tensors[f"transformer.h.{block}.attn.c_attn.bias"] = (
            torch.cat([source[QKV_BIAS.format(block, part)] for part in QKV]) if qkv_bias
            else torch.zeros(3 * dims["C"])
        )
    notes = [
        "The book's W_query, W_key and W_value were stacked into c_attn (q | k | v)"
        + ("." if qkv_bias else "; trained without qkv_bias, so the stacked bias is zero (the same function)."),
        "The output head (`out_head`) is separate from the token embedding, as in the book: "
        "`tie_word_embeddings=false`.",
        f"The number of heads ({n_head}) was given to the converter; the file does not record it.",
        "The dropout rate is not in the file; config.json has ScratchGPT's default (0.1, the book's "
        "GPT_CONFIG_124M drop_rate). Set it before further training if yours differed.",
    ]
    if compiled:
        notes.append("The state dict came from a `torch.compile`d model; the `_orig_mod.` key prefix was removed.")
    ignored = [name for name in ("optimizer_state_dict",) if isinstance(loaded, dict) and name in loaded]
    if masks:
        ignored.append("trf_blocks.*.att.mask (causal mask buffers)")
    return SourceModel(
        format=FORMAT, project="LLMs from scratch (the book)", forward="the book's `GPTModel.forward`", path=path,
        description="a GPTModel state dict saved with torch.save",
        config={
            "vocab_size": dims["V"], "n_positions": dims["T"], "n_embd": dims["C"], "n_layer": dims["L"],
            "n_head": n_head, "n_inner": None if dims["F"] == 4 * dims["C"] else dims["F"],
            "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPSILON, "tie_word_embeddings": False,
        },
        tensors=tensors,
        reference=lambda tokens: lfs_logits(source, dims, n_head, qkv_bias, tokens),
        details={"qkv_bias": str(qkv_bias), "n_head (given)": str(n_head)},
        notes=notes,
        ignored=ignored,
    )


def convert_lfs(
    src: str | os.PathLike,
    out: str | os.PathLike,
    n_head: int,
    tokenizer: str | os.PathLike | None = None,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    command: str | None = None,
) -> PeerConversionReport:
    """Convert the book's `GPTModel` state dict (`model.pth`) into a ScratchGPT folder that loads with
    `from_pretrained`, verified against the book's forward before it is published.

    Args:
        src: the file `torch.save(model.state_dict(), ...)` (or `{"model_state_dict": ...}`) wrote.
        out: the folder to create; refused if it exists unless `overwrite` (and then only a converted folder).
        n_head: the model's number of attention heads (`n_heads` in the book's config; 12 for GPT_CONFIG_124M).
            The file does not record it, and a wrong value gives a different model: the verification cannot catch
            it, since the reference uses the same value.
        tokenizer: a GPT-2 BPE folder (vocab.json + merges.txt, or tokenizer.json); the book uses tiktoken's
            "gpt2", which is GPT-2's BPE. None: the folder is written without a tokenizer.
        dtype: "float32" (default, exact), "bfloat16" or "float16" for the stored weights.
        command: the command line recorded in the model card (defaults to the equivalent CLI call).
    """
    started = time.perf_counter()
    check_dtype(dtype)
    source, out = existing_file(src, WHAT), Path(out)
    check_output(source, out, overwrite)
    model = read_lfs_model(source, n_head)
    tokenizer_source = None if tokenizer is None else read_tokenizer(tokenizer, model.config["n_positions"])
    command = command or shlex.join(
        ["hf-scratch-gpt", "convert", str(source), str(out), "--from", FORMAT, "--n-head", str(n_head),
         "--dtype", dtype] + ([] if tokenizer is None else ["--tokenizer", str(tokenizer)])
    )
    return publish_conversion(model, out, tokenizer_source, dtype, overwrite, command, started)


__all__ = ["WEIGHT_MAP", "convert_lfs", "lfs_logits", "read_lfs_model"]
