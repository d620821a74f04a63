"""llm.c's `model.bin` (`gpt2_124M.bin`, a training run's `model_*.bin`) → a checked ScratchGPT folder.

The layout is that of `write_model` in llm.c's `train_gpt2.py` (master, read 2026-12), which the C/CUDA trainers'
`gpt2_write_to_checkpoint` also write:
- a header of 256 little-endian int32: magic 20240326, version (3: every tensor float32; 5: every tensor bfloat16),
  block_size, vocab_size, n_layer, n_head, n_embd, padded_vocab_size, then zeros;
- the tensors back to back, no names, grouped by kind across layers: wte (padded_vocab_size, C), wpe, every layer's
  ln_1 weight, then every ln_1 bias, c_attn weight, c_attn bias, attention c_proj weight and bias, ln_2 weight and
  bias, c_fc weight and bias, MLP c_proj weight and bias, then ln_f weight and bias; Linear weights in
  nn.Linear's (out, in) layout, the MLP 4·C wide (`TENSOR_ORDER`).

llm.c's GPT-2 is GPT-2's own (tanh GELU, LayerNorm eps 1e-5, biases, wte tied to the head), so only the vocabulary
needs a decision: the rows past vocab_size are padding added at export (zeros), and llm.c's softmax and loss run
over the first vocab_size logits only, so they are cut and the model keeps vocab_size.

llm.c's tokenizer file (`gpt2_tokenizer.bin`) holds each token's bytes but not the merges, so it can decode but not
encode; the tokenizer comes from a GPT-2 BPE folder instead (`--tokenizer`).
"""

from __future__ import annotations

import math
import os
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from . import reference
from .common import (
    PeerConversionReport,
    SourceModel,
    check_dtype,
    check_output,
    existing_file,
    publish_conversion,
    read_tokenizer,
)

logger = logging.get_logger(__name__)

FORMAT = "llmc"
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
MAGIC = 20240326
# version → (what the tensors are stored as, numpy dtype of their bytes). bfloat16 is read as int16 bits.
VERSIONS: dict[int, tuple[str, str]] = {3: ("float32", "<f4"), 5: ("bfloat16", "<i2")}
# Other llm.c files, named when one is passed by mistake.
OTHER_MAGICS = {20240327: "llm.c's debug state file (write_state)", 20240328: "llm.c's tokenizer file"}
# Header slots after magic and version.
HEADER_FIELDS = {"block_size": 2, "vocab_size": 3, "n_layer": 4, "n_head": 5, "n_embd": 6, "padded_vocab_size": 7}
LAYER_NORM_EPSILON = 1e-5  # nn.LayerNorm's default, which train_gpt2.py uses
# train_gpt2.py's write_tensors order; names are its GPT's (and ScratchGPT's); "{}" = every layer in turn.
TENSOR_ORDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transformer.wte.weight", ("padded_vocab_size", "C")),
    ("transformer.wpe.weight", ("block_size", "C")),
    ("transformer.h.{}.ln_1.weight", ("C",)),
    ("transformer.h.{}.ln_1.bias", ("C",)),
    ("transformer.h.{}.attn.c_attn.weight", ("3C", "C")),
    ("transformer.h.{}.attn.c_attn.bias", ("3C",)),
    ("transformer.h.{}.attn.c_proj.weight", ("C", "C")),
    ("transformer.h.{}.attn.c_proj.bias", ("C",)),
    ("transformer.h.{}.ln_2.weight", ("C",)),
    ("transformer.h.{}.ln_2.bias", ("C",)),
    ("transformer.h.{}.mlp.c_fc.weight", ("4C", "C")),
    ("transformer.h.{}.mlp.c_fc.bias", ("4C",)),
    ("transformer.h.{}.mlp.c_proj.weight", ("C", "4C")),
    ("transformer.h.{}.mlp.c_proj.bias", ("C",)),
    ("transformer.ln_f.weight", ("C",)),
    ("transformer.ln_f.bias", ("C",)),
)


def read_header(path: Path) -> dict[str, int]:
    """The header's fields, checked: magic, a known version, positive sizes that fit together."""
    with open(path, "rb") as file:
        raw = file.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, shorter than llm.c's {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    magic, version = int(header[0]), int(header[1])
    if magic != MAGIC:
        what = OTHER_MAGICS.get(magic, "not an llm.c model file")
        raise ValueError(f"{path}: magic number {magic}, expected {MAGIC} (llm.c's model.bin); this is {what}")
    if version not in VERSIONS:
        known = ", ".join(f"{v} = {dtype}" for v, (dtype, _) in VERSIONS.items())
        raise ValueError(
            f"{path}: llm.c model version {version} is not supported (supported: {known}, the padded-vocabulary "
            f"versions train_gpt2.py writes today); write the model again with a current llm.c"
        )
    fields = {"version": version, **{name: int(header[slot]) for name, slot in HEADER_FIELDS.items()}}
    bad = {name: value for name, value in fields.items() if value < 1}
    if bad:
        raise ValueError(f"{path}: header fields must be positive, got {bad}")
    if fields["n_embd"] % fields["n_head"]:
        raise ValueError(f"{path}: header n_embd={fields['n_embd']} is not divisible by n_head={fields['n_head']}")
    if fields["padded_vocab_size"] < fields["vocab_size"]:
        raise ValueError(
            f"{path}: header padded_vocab_size={fields['padded_vocab_size']} is smaller than "
            f"vocab_size={fields['vocab_size']}"
        )
    return fields


def dimensions(fields: dict[str, int]) -> dict[str, int]:
    """The dimension names of `TENSOR_ORDER`, evaluated for one header."""
    width = fields["n_embd"]
    return {"C": width, "3C": 3 * width, "4C": 4 * width, "block_size": fields["block_size"],
            "padded_vocab_size": fields["padded_vocab_size"]}


def stored_elements(fields: dict[str, int]) -> int:
    """How many numbers the header says follow it (computed without listing the tensors, so an absurd header costs
    nothing before the file's size refutes it)."""
    dims = dimensions(fields)
    return sum(
        math.prod(dims[name] for name in shape) * (fields["n_layer"] if "{}" in template else 1)
        for template, shape in TENSOR_ORDER
    )


def tensor_layout(fields: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in file order."""
    dims = dimensions(fields)
    return [
        (template.format(layer), tuple(dims[name] for name in shape))
        for template, shape in TENSOR_ORDER
        for layer in (range(fields["n_layer"]) if "{}" in template else [None])
    ]


def read_tensors(path: Path, fields: dict[str, int]) -> dict[str, torch.Tensor]:
    """Every tensor of the file as float32 (bfloat16 widens exactly), after checking the file's size against the
    header: a truncated file or one with bytes to spare is an error naming both sizes."""
    stored, numpy_dtype = VERSIONS[fields["version"]]
    expected = HEADER_BYTES + stored_elements(fields) * np.dtype(numpy_dtype).itemsize
    actual = path.stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else f"{actual - expected} bytes longer than its header describes"
        raise ValueError(
            f"{path} is {problem}: its header ({stored}, n_layer={fields['n_layer']}, n_embd={fields['n_embd']}, "
            f"block_size={fields['block_size']}, padded_vocab_size={fields['padded_vocab_size']}) needs {expected} "
            f"bytes, the file has {actual}"
        )
    data = np.memmap(path, dtype=numpy_dtype, mode="r", offset=HEADER_BYTES)
    tensors, offset = {}, 0
    for name, shape in tensor_layout(fields):
        count = math.prod(shape)
        chunk = torch.from_numpy(np.array(data[offset: offset + count]))  # a copy: the memmap is read-only
        if stored == "bfloat16":
            chunk = chunk.view(torch.bfloat16)
        tensors[name] = chunk.to(torch.float32).reshape(shape)
        offset += count
    del data
    return tensors


def llmc_logits(tensors: dict[str, torch.Tensor], fields: dict[str, int], tokens: list[int]) -> torch.Tensor:
    """llm.c's GPT-2 forward (train_gpt2.py's GPT; the C code's layers) in float64 on the file's tensors:
    (T,) ids → (T, vocab_size), the logits llm.c's softmax reads (the padded rows' are never used)."""
    get = lambda name: tensors[name].double()  # noqa: E731
    ids = torch.tensor(tokens)
    x = get("transformer.wte.weight")[ids] + get("transformer.wpe.weight")[: len(tokens)]  # (T, C)
    for layer in range(fields["n_layer"]):
        h = f"transformer.h.{layer}"
        normed = reference.layer_norm(x, get(f"{h}.ln_1.weight"), get(f"{h}.ln_1.bias"), LAYER_NORM_EPSILON)
        q, k, v = reference.linear(normed, get(f"{h}.attn.c_attn.weight"), get(f"{h}.attn.c_attn.bias")).split(
            fields["n_embd"], dim=-1
        )
        attended = reference.causal_self_attention(q, k, v, fields["n_head"])
        x = x + reference.linear(attended, get(f"{h}.attn.c_proj.weight"), get(f"{h}.attn.c_proj.bias"))
        normed = reference.layer_norm(x, get(f"{h}.ln_2.weight"), get(f"{h}.ln_2.bias"), LAYER_NORM_EPSILON)
        hidden = reference.gelu_tanh(reference.linear(normed, get(f"{h}.mlp.c_fc.weight"), get(f"{h}.mlp.c_fc.bias")))
        x = x + reference.linear(hidden, get(f"{h}.mlp.c_proj.weight"), get(f"{h}.mlp.c_proj.bias"))
    x = reference.layer_norm(x, get("transformer.ln_f.weight"), get("transformer.ln_f.bias"), LAYER_NORM_EPSILON)
    return reference.head_logits(x, tensors["transformer.wte.weight"], rows=fields["vocab_size"])


def read_llmc_model(path: Path) -> SourceModel:
    """Read and check an llm.c `model.bin`; `ValueError` naming the file for anything that is not one."""
    fields = read_header(path)
    source = read_tensors(path, fields)
    vocab_size, padded = fields["vocab_size"], fields["padded_vocab_size"]
    tensors = dict(source)
    tensors["transformer.wte.weight"] = source["transformer.wte.weight"][:vocab_size].clone()
    stored = VERSIONS[fields["version"]][0]
    notes = []
    if padded > vocab_size:
        padding = source["transformer.wte.weight"][vocab_size:]
        largest = float(padding.abs().max())
        notes.append(
            f"wte's rows {vocab_size}..{padded - 1} (llm.c pads the vocabulary to {padded} at export) were dropped: "
            f"llm.c's softmax and loss run over the first {vocab_size} logits only"
            + (f" (those rows were not zero: max |w| = {largest:.3g})." if largest else " (they were zeros).")
        )
    if stored == "bfloat16":
        notes.append("The file stores bfloat16 (version 5); the weights were widened to float32 exactly.")
    return SourceModel(
        format=FORMAT, project="llm.c", forward="llm.c's GPT-2 forward (`GPT.forward`, train_gpt2.py)", path=path,
        description=f"llm.c model file, version {fields['version']} ({stored})",
        config={
            "vocab_size": vocab_size, "n_positions": fields["block_size"], "n_embd": fields["n_embd"],
            "n_layer": fields["n_layer"], "n_head": fields["n_head"], "activation_function": "gelu_new",
            "layer_norm_epsilon": LAYER_NORM_EPSILON, "tie_word_embeddings": True,
            # train_gpt2.py's GPT has no dropout.
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        },
        tensors=tensors,
        reference=lambda tokens: llmc_logits(source, fields, tokens),
        details={"header": repr(fields)},
        notes=notes,
        ignored=[f"wte rows {vocab_size}..{padded - 1} (vocabulary padding)"] if padded > vocab_size else [],
    )


def convert_llmc(
    src: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    command: str | None = None,
) -> PeerConversionReport:
    """Convert llm.c's `model.bin` (versions 3 and 5) into a ScratchGPT folder that loads with `from_pretrained`,
    verified against llm.c's GPT-2 forward before it is published.

    Args:
        src: the model file llm.c wrote (`gpt2_124M.bin`, `model_00010000.bin`, ...).
        out: the folder to create; refused if it exists unless `overwrite` (and then only a converted folder).
        tokenizer: a GPT-2 BPE folder (vocab.json + merges.txt, or tokenizer.json). llm.c's `gpt2_tokenizer.bin`
            is refused: it cannot encode. None: the folder is written without a tokenizer.
        dtype: "float32" (default; exact for both versions), "bfloat16" or "float16" for the stored weights.
        command: the command line recorded in the model card (defaults to the equivalent CLI call).
    """
    started = time.perf_counter()
    check_dtype(dtype)
    source, out = existing_file(src, "llm.c model file"), Path(out)
    check_output(source, out, overwrite)
    model = read_llmc_model(source)
    tokenizer_source = None if tokenizer is None else read_tokenizer(tokenizer, model.config["n_positions"])
    command = command or shlex.join(
        ["hf-scratch-gpt", "convert", str(source), str(out), "--from", FORMAT, "--dtype", dtype]
        + ([] if tokenizer is None else ["--tokenizer", str(tokenizer)])
    )
    return publish_conversion(model, out, tokenizer_source, dtype, overwrite, command, started)


__all__ = ["TENSOR_ORDER", "convert_llmc", "llmc_logits", "read_llmc_model"]
