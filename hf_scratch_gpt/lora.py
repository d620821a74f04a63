"""LoRA adapters through PEFT: add one to a saved model for training, check and load a saved one, merge it.

What PEFT needs from the model, and what this module adds:
- Target names. PEFT matches `target_modules` against module names by suffix (`c_attn` matches every
  `transformer.h.N.attn.c_attn`) and has no default list for model_type `scratch_gpt`, so targets are always given:
  by default every projection inside the blocks (`DEFAULT_LORA_TARGETS`). `check_lora_targets` refuses a target
  that matches no `nn.Linear` (PEFT would wrap an embedding or LayerNorm, or fail on a parent module) and the head
  of a model whose head is tied to `wte` (merging would add the head's update to the embedding too).
- Every wrapped Linear must be called as a module. The model does: `ScratchGPTLinear`'s decoding fast path is its
  own `forward`, which the LoRA layer calls as its base layer before adding B·A·x; the fused training loss reads
  `lm_head.weight` directly, so `ScratchGPTForCausalLM.forward` takes it only while `lm_head` is a plain Linear.
- Nothing is unpickled: adapter weights are read from `adapter_model.safetensors` only (`check_adapter_folder`
  refuses a folder holding only `adapter_model.bin`, which PEFT would read with torch.load), and the base model
  through `load_model` (safetensors, checked).
- Nothing is silently missing: PEFT loads adapter weights with `strict=False` (a missing tensor keeps its initial
  value, with a warning); here every tensor of the adapter is checked by name and shape before it is loaded.

peft is an optional dependency (`pip install 'hf-scratch-gpt[lora]'`), imported when a function needs it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loading import (
    TOKENIZER_FILE_SETS,
    TOKENIZER_FILES,
    check_tensor_shapes,
    check_tokenizer_files,
    existing_folder,
    load_model,
    load_tokenizer,
    read_json_object,
    read_tensor_shapes,
)

logger = logging.getLogger(__name__)

# Every projection of a block, named as in modeling_scratch_gpt.py: attn.c_attn (q|k|v), attn.c_proj, mlp.c_fc and
# mlp.c_proj (`c_proj` matches both). The QLoRA paper's finding: adapting all of a block's Linears, not only
# attention's, is what lets LoRA match full fine-tuning.
DEFAULT_LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_PICKLE_NAME = "adapter_model.bin"  # PEFT's pickle format: never read
MERGE_FORMAT = "merged_lora"  # recorded in the merged folder's export_report.json (what `--overwrite` may replace)
# What a merged folder holds (save_pretrained's model files and code, the tokenizer's files, the report): an existing
# folder of only these, whose export_report.json says MERGE_FORMAT, may be replaced with overwrite=True.
MERGED_FILE = re.compile(
    r"config\.json|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
    r"[a-z_]+\.py|" + "|".join(re.escape(name) for name in (*TOKENIZER_FILES, "README.md", "export_report.json"))
)


def import_peft():
    """The peft module, or `ImportError` saying how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError("LoRA needs peft: pip install 'hf-scratch-gpt[lora]'") from error
    return peft


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a PEFT model (without importing peft when it is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


# ---------------------------------------------------------------------------------------------------------------------
# Options and targets
# ---------------------------------------------------------------------------------------------------------------------
def parse_lora_targets(text: str | None) -> list[str]:
    """'c_attn, c_proj' → ['c_attn', 'c_proj']; None or '' → the defaults."""
    targets = [part.strip() for part in (text or "").split(",") if part.strip()]
    return targets or list(DEFAULT_LORA_TARGETS)


def check_lora_options(r: int, alpha: float, dropout: float) -> None:
    """`ValueError` naming the flag for a rank < 1, an alpha that is not a positive number, a dropout outside [0, 1)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"--lora_r must be an integer >= 1 (the adapter's rank), got {r!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"--lora_alpha must be a finite number > 0 (the update is scaled by alpha / r), got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {dropout!r}")


def lora_target_names(model: nn.Module) -> list[str]:
    """The names a target may have: each `nn.Linear`'s own name and its parent-qualified name (`c_proj`,
    `attn.c_proj`, `mlp.c_proj`, ...), without the head when it is tied to the embedding."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not _is_tied_head(model, name):
            parts = name.split(".")
            names.add(parts[-1])
            if len(parts) > 1:
                names.add(".".join(parts[-2:]))
    return sorted(names)


def _is_tied_head(model: nn.Module, name: str) -> bool:
    return name.split(".")[-1] == "lm_head" and bool(getattr(model.config, "tie_word_embeddings", False))


def _matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of targets: the whole name, or its suffix after a dot."""
    return module_name == target or module_name.endswith("." + target)


def check_lora_targets(model: nn.Module, targets: list[str] | tuple[str, ...]) -> None:
    """Each target must name at least one `nn.Linear` of `model` and nothing else; `ValueError` naming it and the
    names that would do (`lora_target_names`)."""
    available = lora_target_names(model)
    modules = dict(model.named_modules())
    for target in targets:
        matched = [name for name in modules if name and _matches(name, target)]
        tied_head = [name for name in matched if _is_tied_head(model, name)]
        if tied_head:
            raise ValueError(
                f"LoRA target {target!r} is the head, which this model ties to transformer.wte "
                "(tie_word_embeddings): merging its update would change the embedding too. Available targets: "
                f"{', '.join(available)}"
            )
        not_linear = sorted(name for name in matched if not isinstance(modules[name], nn.Linear))
        if not matched or not_linear:
            found = f"matches {not_linear[:3]}, which are not Linear layers" if not_linear else "matches no module"
            raise ValueError(
                f"LoRA target {target!r} {found} of the model; available targets: {', '.join(available)}"
            )


# ---------------------------------------------------------------------------------------------------------------------
# Training: add an adapter
# ---------------------------------------------------------------------------------------------------------------------
def add_lora_adapter(
    model: nn.Module,
    r: int,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: list[str] | tuple[str, ...] = DEFAULT_LORA_TARGETS,
    base_model_name_or_path: str | os.PathLike | None = None,
):
    """`model` with a trainable LoRA adapter (a `PeftModelForCausalLM`; the base weights are frozen). The update of a
    target Linear W is (alpha / r) · B·A with A (r, in) random and B (out, r) zero, so the model starts unchanged.

    `base_model_name_or_path` is written into adapter_config.json (a local folder: its absolute path), from where
    `load_lora_model` and `hf-scratch-gpt merge-lora` find the base model again.
    """
    peft = import_peft()
    check_lora_options(r, alpha, dropout)
    targets = list(targets)
    check_lora_targets(model, targets)
    base = base_model_name_or_path
    if base is not None:
        # get_peft_model records the model's `name_or_path` (what from_pretrained was given, maybe a relative path)
        # as the adapter's base_model_name_or_path: make it the folder's absolute path, valid from any directory.
        model.name_or_path = str(Path(base).resolve()) if Path(base).is_dir() else str(base)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none", task_type="CAUSAL_LM"
    )  # fmt: skip
    return peft.get_peft_model(model, config)


# ---------------------------------------------------------------------------------------------------------------------
# A saved adapter: check, compare, load
# ---------------------------------------------------------------------------------------------------------------------
def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The LoRA `adapter_config.json` of `folder`, with its weights as `adapter_model.safetensors` (never the pickle
    `adapter_model.bin`); `FileNotFoundError`/`ValueError` naming the file."""
    folder = existing_folder(folder, "adapter folder")
    config = read_json_object(folder, ADAPTER_CONFIG_NAME)
    if config is None:
        raise FileNotFoundError(
            f"{folder / ADAPTER_CONFIG_NAME} not found: a LoRA adapter folder holds adapter_config.json and "
            f"{ADAPTER_WEIGHTS_NAME} (what `train --lora_r` and PeftModel.save_pretrained write)"
        )
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder / ADAPTER_CONFIG_NAME} has peft_type {config.get('peft_type')!r}, expected 'LORA'")
    if not (folder / ADAPTER_WEIGHTS_NAME).is_file():
        pickle_only = (folder / ADAPTER_PICKLE_NAME).is_file()
        raise FileNotFoundError(
            f"{folder} has no {ADAPTER_WEIGHTS_NAME}"
            + (f"; its {ADAPTER_PICKLE_NAME} is a pickle, which hf_scratch_gpt never loads (it can run code): save "
               "the adapter again with safe_serialization=True" if pickle_only else "")
        )  # fmt: skip
    return config


def check_adapter_weights(folder: str | os.PathLike, peft_model) -> None:
    """Every tensor of `peft_model`'s active adapter is in `folder/adapter_model.safetensors` with its shape, and the
    file holds no other (PEFT itself loads with strict=False, keeping a missing tensor's initial value)."""
    from peft import get_peft_model_state_dict

    weight_file = Path(folder) / ADAPTER_WEIGHTS_NAME
    found = read_tensor_shapes(weight_file)
    expected = {name: tuple(tensor.shape) for name, tensor in get_peft_model_state_dict(peft_model).items()}
    check_tensor_shapes(
        found, expected, dict.fromkeys(found, weight_file), lacking=f"{weight_file} lacks tensors the adapter has",
        model=f"the adapter {Path(folder) / ADAPTER_CONFIG_NAME} describes",
    )  # fmt: skip


# adapter_config.json fields that change what the adapter computes: a resume must continue with the same ones.
ADAPTER_SHAPE_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora", "bias")


def check_adapter_matches(folder: str | os.PathLike, peft_model) -> None:
    """The saved adapter_config.json of `folder` has the same rank, alpha, dropout and targets as `peft_model`'s
    active adapter (so that resuming continues the same computation); `ValueError` naming the differences."""
    saved = read_adapter_config(folder)
    current = peft_model.active_peft_config.to_dict()
    differences = []
    for name in ADAPTER_SHAPE_FIELDS:
        mine, theirs = current.get(name), saved.get(name)
        if name == "target_modules" and isinstance(mine, (set, list)) and isinstance(theirs, list):
            mine, theirs = sorted(mine), sorted(theirs)
        if mine != theirs:
            differences.append(f"{name} {theirs!r} (this run: {mine!r})")
    if differences:
        raise ValueError(
            f"{Path(folder) / ADAPTER_CONFIG_NAME} was trained with {', '.join(differences)}; pass the same LoRA flags "
            "to resume from it"
        )


def load_lora_model(adapter_folder: str | os.PathLike, base: str | os.PathLike | None = None):
    """The base model with the saved LoRA adapter of `adapter_folder` (a `PeftModelForCausalLM` in eval mode).

    `base`: the base model folder (or Hub id); by default the adapter's `base_model_name_or_path`. The base is
    loaded by `load_model` (checked, safetensors only), the adapter's weights only from safetensors, each tensor
    checked by name and shape before it is loaded."""
    peft = import_peft()
    from safetensors.torch import load_file

    adapter_folder = Path(adapter_folder)
    saved = read_adapter_config(adapter_folder)
    base = base if base is not None else saved.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter_folder / ADAPTER_CONFIG_NAME} names no base model (base_model_name_or_path); pass it "
            "(--base PATH)"
        )
    model = load_model(base)
    config = peft.LoraConfig.from_pretrained(str(adapter_folder))
    config.inference_mode = True
    if isinstance(config.target_modules, (list, set)):
        check_lora_targets(model, sorted(config.target_modules))
    peft_model = peft.get_peft_model(model, config)
    check_adapter_weights(adapter_folder, peft_model)
    result = peft.set_peft_model_state_dict(peft_model, load_file(adapter_folder / ADAPTER_WEIGHTS_NAME))
    if result.unexpected_keys:  # every adapter tensor was checked above: a key PEFT did not place is a bug here
        raise ValueError(f"PEFT did not place {result.unexpected_keys} of {adapter_folder / ADAPTER_WEIGHTS_NAME}")
    return peft_model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------------------------------
def merged_model(peft_model) -> nn.Module:
    """The base model with each adapter update added into its weight (W + (alpha / r)·B·A), LoRA layers removed: a
    plain `ScratchGPTForCausalLM`. Changes `peft_model`'s base weights in place."""
    return peft_model.merge_and_unload()


def save_merged_model(peft_model, tokenizer, folder: str | os.PathLike) -> list[str]:
    """Merge (`merged_model`) and `save_pretrained` the plain model (config, safetensors, generation config, code)
    and the tokenizer into `folder`. Returns the file names written."""
    model = merged_model(peft_model)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return sorted(path.name for path in Path(folder).iterdir())


@dataclass
class MergeReport:
    format: str
    out: str
    adapter: str
    base: str
    files: list[str]
    max_abs_diff: float  # max |merged logits − adapter logits| on a check prompt (float32 rounding)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _adapter_tokenizer(adapter_folder: Path, base: str | os.PathLike):
    """The tokenizer saved with the adapter (train saves one), else the base model's, else None."""
    for folder in (adapter_folder, Path(base)):
        if folder.is_dir():
            present = check_tokenizer_files(folder)
            if any(all(name in present for name in names) for names in TOKENIZER_FILE_SETS):
                return load_tokenizer(folder)
    return None


def merge_lora(
    adapter_folder: str | os.PathLike,
    out: str | os.PathLike,
    base: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> MergeReport:
    """Write the merged model of a saved LoRA adapter into `out`: a plain ScratchGPT folder that loads with
    `from_pretrained` without peft, with the adapter's (or else the base's) tokenizer.

    The folder is built next to `out` and moved into place when complete; an existing `out` is replaced only with
    `overwrite` and only when an earlier merge wrote it. The merged model's logits on a check prompt are compared
    with the adapter model's (reported as `max_abs_diff`: float32 rounding, W·x + B·(A·x) against (W + B·A)·x)."""
    from .export.common import (
        EXPORT_REPORT_NAME, check_destination, publish_folder, replaceable_folder_check, staging_folder, write_json,
    )  # fmt: skip

    adapter_folder, out = Path(adapter_folder), Path(out)
    saved = read_adapter_config(adapter_folder)
    base = base if base is not None else saved.get("base_model_name_or_path")
    check_replaceable = replaceable_folder_check(MERGE_FORMAT, MERGED_FILE)
    check_destination(adapter_folder, out, overwrite, check_replaceable)
    if base is not None and Path(base).is_dir():
        check_destination(Path(base), out, overwrite, check_replaceable)
    peft_model = load_lora_model(adapter_folder, base)
    tokenizer = _adapter_tokenizer(adapter_folder, base)
    config = peft_model.get_base_model().config
    check_ids = torch.arange(min(config.n_positions, 32)).remainder(config.vocab_size)[None]  # (1, T)
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=check_ids).logits
    with staging_folder(out) as tmp:
        files = save_merged_model(peft_model, tokenizer, tmp)
        merged = load_model(tmp)
        with torch.no_grad():
            max_abs_diff = (merged(input_ids=check_ids).logits - adapter_logits).abs().max().item()
        # The package's rule for logits computed in another order (tests/helpers.py assert_close_rel): within 1e-5
        # of the largest logit (at least 1e-5). A merge that lost or doubled an update is off by the update itself.
        bound = 1e-5 * max(1.0, adapter_logits.abs().max().item())
        if not max_abs_diff <= bound:
            raise ValueError(
                f"the merged model's logits differ from the adapter model's by {max_abs_diff:.3g} (more than float32 "
                f"rounding, {bound:.3g}) on a check prompt; nothing was written to {out}"
            )
        report = MergeReport(MERGE_FORMAT, str(out), str(adapter_folder), str(base), [*files, EXPORT_REPORT_NAME],
                             max_abs_diff)
        write_json(tmp / EXPORT_REPORT_NAME, {**report.to_dict(), "out": str(out)})
        publish_folder(tmp, out, overwrite, check_replaceable)
    return report


__all__ = [
    "DEFAULT_LORA_TARGETS", "MergeReport", "add_lora_adapter", "check_adapter_matches", "check_adapter_weights",
    "check_lora_options", "check_lora_targets", "load_lora_model", "lora_target_names", "merge_lora", "merged_model",
    "parse_lora_targets", "read_adapter_config", "save_merged_model",
]
