"""Checks of ScratchGPT's inputs, labels and weight files.

Each raises `ValueError` (`TypeError` for an unknown keyword, `FileNotFoundError` for a missing file) naming the bad
value and what was expected, where torch or transformers would fail obscurely, deep inside, or not at all. Ships
to the Hub with `modeling_scratch_gpt.py` (custom code): imports only torch, safetensors and transformers.
"""

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.cache_utils import Cache
from transformers.utils.generic import TransformersKwargs

from .configuration_scratch_gpt import ScratchGPTConfig

IGNORE_INDEX = -100  # a label left out of the loss

# Keywords a forward accepts besides its named parameters: what transformers' own models take through
# `**kwargs: Unpack[TransformersKwargs]` (output flags, attention-backend metadata, `num_items_in_batch`). Any
# other keyword is refused: one swallowed silently could carry state the model would then ignore (as the cache did
# when transformers 5.25 renamed it).
FORWARD_KWARGS = frozenset(TransformersKwargs.__optional_keys__ | TransformersKwargs.__required_keys__)


# ---------------------------------------------------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------------------------------------------------
def check_inputs(
    config: ScratchGPTConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_length: int,
    position_ids: torch.Tensor | None = None,
) -> None:
    """Raise `ValueError` for inputs that would otherwise fail deep inside torch (or silently index garbage)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        batch, seq_len = input_ids.shape
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.size(-1) != config.n_embd:
            raise ValueError(
                f"inputs_embeds must be (batch, seq_len, {config.n_embd}), got shape {tuple(inputs_embeds.shape)}"
            )
        batch, seq_len = inputs_embeds.shape[:2]
    if batch == 0 or seq_len == 0:
        raise ValueError(f"empty input: batch size {batch}, sequence length {seq_len}; both must be >= 1")
    if position_ids is not None:
        if position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool:
            raise ValueError(f"position_ids must be an integer tensor, got dtype {position_ids.dtype}")
        if position_ids.numel() == 0 or position_ids.size(-1) != seq_len:
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}, expected one position per new token "
                f"(..., {seq_len})"
            )
    # A 2-D mask marks each position 1 (attend) or 0 (padding); 0.5, 2 or -1 would silently weight attention.
    mask_2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    if mask_2d is not None and mask_2d.dtype.is_floating_point and not torch.compiler.is_compiling():
        mask_2d = torch.where(mask_2d == mask_2d.round(), mask_2d, torch.full_like(mask_2d, 0.5))
        if not torch.equal(mask_2d, mask_2d.round()):
            raise ValueError("attention_mask holds a fractional value; a 2-D mask is 1 (attend) or 0 (padding)")
    # (argument, values, exclusive bound, what it is, what it indexes): token ids index wte, positions index wpe.
    ranges = [
        ("input_ids", input_ids, config.vocab_size, "token id", "the vocabulary"),
        ("position_ids", position_ids, config.n_positions, "position", "the position table (n_positions)"),
        ("attention_mask", None if mask_2d is None else mask_2d.to(torch.int8), 2, "value", "0 (padding), 1 (attend):"),
    ]
    ranges = [entry for entry in ranges if entry[1] is not None]
    # The range checks read the ids (one device sync for both, a graph break under torch.compile); a compiled
    # model leaves them to the embedding lookups' own bounds checks.
    if ranges and not torch.compiler.is_compiling():
        device = ranges[0][1].device
        bounds = torch.stack([bound.to(device) for _, ids, *_ in ranges for bound in ids.aminmax()]).tolist()
        for (name, _, high, what, table), low, top in zip(ranges, bounds[0::2], bounds[1::2]):
            if low < 0 or top >= high:
                raise ValueError(f"{name} contains {what} {low if low < 0 else top}, outside {table} [0, {high})")
    total = past_length + seq_len
    # A static cache reports its length as a tensor: comparing it is a data-dependent branch under torch.compile.
    # (The compiled decode loop is bounded by the static cache's size, which generate() checks up front.)
    if not torch.compiler.is_compiling() and total > config.n_positions:
        raise ValueError(
            f"sequence length {total} (cached {past_length} + new {seq_len}) exceeds the model's n_positions "
            f"{config.n_positions}"
        )
    if attention_mask is not None and attention_mask.dim() == 2 and tuple(attention_mask.shape) != (batch, total):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch, cached + new tokens) = "
            f"{(batch, total)}"
        )
    if attention_mask is not None and attention_mask.dim() not in (2, 4):
        raise ValueError(f"attention_mask must be 2-D (batch, length) or a prepared 4-D mask, got {attention_mask.dim()}-D")
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        # (batch or 1, heads or 1, new tokens, keys): keys may exceed cached + new (a static cache's full length),
        # but a mask broadcast over the query positions would drop causality.
        b, h, q, k = attention_mask.shape
        if b not in (1, batch) or h not in (1, config.n_head) or q != seq_len or k < total:
            raise ValueError(
                f"4-D attention_mask has shape {tuple(attention_mask.shape)}, expected (batch {batch} or 1, heads "
                f"{config.n_head} or 1, new tokens {seq_len}, keys >= {total})"
            )


def one_cache(cache: object, past_key_values: object) -> Cache | None:
    """The cache passed as `cache` (transformers >= 5.25) or `past_key_values` (earlier), checked to be a `Cache`
    (the legacy tuple of (key, value) pairs would fail as an AttributeError)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not both")
    name, cache = ("cache", cache) if cache is not None else ("past_key_values", past_key_values)
    if cache is not None and not isinstance(cache, Cache):
        raise ValueError(
            f"{name} must be a transformers Cache (e.g. the DynamicCache the model returns with "
            f"use_cache=True), got {type(cache).__name__}; wrap a legacy tuple of (key, value) pairs with "
            "DynamicCache(ddp_cache_data=...)"
        )
    return cache


def check_forward_kwargs(owner: str, kwargs: dict) -> None:
    """Refuse keywords outside `FORWARD_KWARGS`, as a plain function would (`TypeError` naming them)."""
    unknown = sorted(set(kwargs) - FORWARD_KWARGS)
    if unknown:
        raise TypeError(
            f"{owner}.forward() got unexpected keyword arguments {unknown}; besides its named parameters it takes "
            f"only {sorted(FORWARD_KWARGS)}"
        )


def check_generate_options(kwargs: dict, default_config) -> None:
    """`generate`'s beam count: transformers divides by it (`num_beams=0` is a ZeroDivisionError deep inside)."""
    config = kwargs.get("generation_config") or default_config
    num_beams = kwargs.get("num_beams", getattr(config, "num_beams", 1))
    if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"num_beams must be an integer >= 1 (1: no beam search), got {num_beams!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------------
def check_shift_labels(shift_labels: torch.Tensor, scores: torch.Tensor) -> None:
    """shift_labels must have one target per scored position: the shape of `scores` (B, T, ·) without its last dim."""
    if tuple(shift_labels.shape) != tuple(scores.shape[:-1]):
        raise ValueError(
            f"shift_labels shape {tuple(shift_labels.shape)} does not match the scored positions "
            f"{tuple(scores.shape[:-1])}: shift_labels are already aligned, one target per position"
        )


def check_loss_inputs(
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    already_shifted: bool = False,
) -> None:
    """Raise `ValueError` for labels the loss cannot score and for a divisor that would silently give a wrong loss.

    - every label is a token id in [0, vocab_size) or -100 (otherwise cross-entropy fails with an IndexError, or a
      device-side assert on CUDA, that names neither the argument nor the vocabulary);
    - `num_items_in_batch` is >= 0, and not 0 while this batch has target tokens (the clamp that makes an
      all-masked batch's loss 0.0 would otherwise turn the mean into the plain sum).

    It reads the values (one host sync for all of them); while compiling it is skipped, like the input-id check.
    """
    kind = num_items_in_batch.dtype if torch.is_tensor(num_items_in_batch) else type(num_items_in_batch)
    if kind in (bool, torch.bool):  # True would divide by 1 without a word
        raise ValueError(f"num_items_in_batch must be a count of target tokens, got {num_items_in_batch!r}")
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    kept = labels.masked_fill(labels == IGNORE_INDEX, 0)
    targets = labels if already_shifted else labels[..., 1:]  # shift_labels are scored as given
    stats = [kept.min(), kept.max(), (targets != IGNORE_INDEX).sum()]
    if torch.is_tensor(num_items_in_batch):  # Trainer may pass a float or a (1,)-shaped tensor
        stats.append(num_items_in_batch.detach().reshape(-1)[0].to(labels.device))
    low, high, targets, *divisor = torch.stack([value.double() for value in stats]).tolist()
    if low < 0 or high >= vocab_size:
        bad = int(low if low < 0 else high)
        raise ValueError(
            f"{'shift_labels' if already_shifted else 'labels'} contains {bad}, outside the vocabulary "
            f"[0, {vocab_size}); use -100 to leave a position out "
            "of the loss"
        )
    if num_items_in_batch is None:
        return
    count = divisor[0] if divisor else float(num_items_in_batch)
    # It may be fractional: Trainer divides it by the tensor/context/sequence-parallel degree.
    if not 0 <= count < math.inf or (count == 0 and targets > 0):
        raise ValueError(
            f"num_items_in_batch is {count:g} but this batch has "
            f"{int(targets)} target tokens; it must count the unmasked targets of the whole (accumulated) batch"
        )


def check_classification_labels(labels: torch.Tensor, problem_type: str, logits: torch.Tensor) -> None:
    """Labels a classification loss can score, for `logits` (..., num_labels) pooled (B, n) or per token (B, T, n):
    class indices in [0, num_labels) or -100, one per row or per token (single-label); one float target per logit
    (multi-label), or per row with one label (regression). torch would otherwise broadcast a regression target
    silently, or fail with an IndexError (a device-side assert on CUDA) that names neither labels nor num_labels."""
    num_labels = logits.size(-1)
    if problem_type == "single_label_classification":
        rows = logits.shape[:-1]
        per_token = logits.dim() == 3
        if (tuple(labels.shape) != tuple(rows)) if per_token else labels.numel() != rows.numel():
            raise ValueError(
                f"labels shape {tuple(labels.shape)} does not match the {'tokens' if per_token else 'rows'} "
                f"{tuple(rows)}: one class index per {'token' if per_token else 'row'}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices for {problem_type}, got dtype {labels.dtype}")
        if labels.numel() and not torch.compiler.is_compiling():
            kept = labels.masked_fill(labels == IGNORE_INDEX, 0)
            low, high = (int(value) for value in kept.aminmax())
            if low < 0 or high >= num_labels:
                raise ValueError(
                    f"labels contains class {low if low < 0 else high}, outside [0, num_labels={num_labels}); "
                    "use -100 to leave an item out of the loss"
                )
        return
    if problem_type not in ("regression", "multi_label_classification"):
        raise ValueError(
            f"config.problem_type is {problem_type!r}; expected regression, single_label_classification or "
            "multi_label_classification"
        )
    one_target = problem_type == "regression" and num_labels == 1
    expected = logits.shape[:-1] if one_target else logits.shape
    if labels.shape != expected and not (one_target and labels.squeeze().shape == logits.squeeze().shape):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match {tuple(expected)} for {problem_type} with "
            f"num_labels={num_labels}: one target per {'row' if one_target else 'label of each row'}"
        )
    if problem_type == "multi_label_classification" and not labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be float targets (0.0 or 1.0 per label) for multi_label_classification, got dtype "
            f"{labels.dtype}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------------------------------
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Left by `train`'s final save while its files are being moved into place (see training/final_save.py).
INTERRUPTED_FINAL_SAVE_NAME = ".complete-final"
# safetensors dtypes a model's floating-point parameters can be loaded from; anything else (I8, BOOL, ...) would be
# cast to float silently.
FLOAT_WEIGHT_DTYPES = ("F64", "F32", "F16", "BF16")
# Weight formats that are read through pickle; never loaded.
UNSAFE_WEIGHT_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "training_args.bin")


def is_plain_file_name(name: object) -> bool:
    """True for a name that stays inside its folder: no separators, no drive, not '', '.' or '..'."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")


def file_in_folder(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name`, refused (`ValueError`) when it resolves outside the folder, through a symlink or `..`.

    The one exception is the layout of the Hub cache: a snapshot folder (`…/models--owner--name/snapshots/<rev>`)
    holds links into the same repository's `blobs/`, and those are followed.
    """
    path = Path(folder) / name
    try:
        real_folder, real = Path(folder).resolve(), path.resolve()
    except RuntimeError as error:  # Python < 3.13 reports a symlink loop as RuntimeError
        raise ValueError(f"{path} is a symlink loop ({error}); expected a file inside the model folder") from error
    allowed = [real_folder]
    if real_folder.parent.name == "snapshots":
        allowed.append(real_folder.parent.parent / "blobs")
    if not any(real.is_relative_to(root) for root in allowed):
        raise ValueError(
            f"{path} resolves to {real}, outside the model folder {folder}; links out of a model folder are not "
            f"followed (copy the file into the folder instead)"
        )
    return path


def check_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model folder (`model.safetensors`, or the shards its index lists), checked.

    Raises `FileNotFoundError`/`ValueError` naming the file for: a final save of `train` that was interrupted, a
    folder whose only weights are pickle files, an index that is not JSON with a `weight_map`, a shard name that is
    not a plain file name (`../x`, `/abs/x`), a listed shard that does not exist, a file that is a link out of the
    folder, a safetensors header that is unreadable (truncated or corrupted; safetensors' own error does not name
    the file), a tensor that is not floating point, and a tensor held by two files. Reads headers only.
    """
    folder = Path(folder)
    if (folder / INTERRUPTED_FINAL_SAVE_NAME).is_dir():
        raise ValueError(
            f"{folder} holds {INTERRUPTED_FINAL_SAVE_NAME}: a final save was interrupted while its files were being "
            f"moved into place; run the same `train` command again (it completes the move first)"
        )
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    for link in (path for path in (single, index) if path.is_symlink()):  # a dangling or looping link too
        file_in_folder(folder, link.name)
    if single.is_file():
        files = [single]
    elif index.is_file():
        file_in_folder(folder, index.name)
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {error}") from error
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names")
        names = sorted(set(weight_map.values()), key=str)
        for name in names:
            if not is_plain_file_name(name):
                raise ValueError(
                    f"{index} lists the shard {name!r}; a shard must be a plain file name inside {folder} "
                    f"(no directories, '..' or absolute paths)"
                )
        files = [folder / name for name in names]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {missing}")
    else:
        unsafe = [name for name in UNSAFE_WEIGHT_NAMES if (folder / name).exists()]
        if unsafe:
            raise FileNotFoundError(
                f"{folder} has no {SAFE_WEIGHTS_NAME}, only {unsafe}; ScratchGPT never loads pickle weights "
                f"(they can run arbitrary code). Convert them to safetensors in a trusted environment first."
            )
        raise FileNotFoundError(f"{single} not found (nor {SAFE_WEIGHTS_INDEX_NAME}); the folder has no model weights")
    holder: dict[str, Path] = {}  # tensor name → the file that holds it
    for file in files:
        file_in_folder(folder, file.name)
        try:
            with safe_open(str(file), framework="pt") as handle:
                dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
        except SafetensorError as error:
            raise ValueError(
                f"{file} is not a readable safetensors file ({error}); it is truncated or corrupted — "
                f"save or download it again"
            ) from error
        for name, dtype in dtypes.items():
            if dtype not in FLOAT_WEIGHT_DTYPES:
                raise ValueError(
                    f"{file}: tensor {name} has dtype {dtype}; ScratchGPT's weights are floating point "
                    f"({', '.join(FLOAT_WEIGHT_DTYPES)}) and are not cast from other types"
                )
            if name in holder:
                raise ValueError(f"tensor {name} is held by two weight files, {holder[name]} and {file}; keep one")
            holder[name] = file
    return files


def check_tied_head(model: nn.Module, files: list[Path]) -> None:
    """A model whose config ties lm_head to wte must not come from files holding a different `lm_head.weight`:
    one of the two would silently win."""
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            if "lm_head.weight" not in handle.keys():
                continue
            head = handle.get_tensor("lm_head.weight")
        embedding = model.get_input_embeddings().weight
        if not torch.equal(head.to(embedding.device, embedding.dtype), embedding.detach()):
            raise ValueError(
                f"{file} holds an lm_head.weight that differs from transformer.wte.weight, but config.json says "
                f"tie_word_embeddings=true (they are one tensor); set it to false if the head is separate"
            )


def check_folder_before_loading(folder: str | os.PathLike) -> list[Path]:
    """What `from_pretrained` checks in a local folder before transformers reads it: its config and generation config
    stay inside it, and its weight files pass `check_weight_files` (returned)."""
    for name in ("config.json", "generation_config.json"):
        if (Path(folder) / name).exists():
            file_in_folder(folder, name)
    return check_weight_files(folder)
