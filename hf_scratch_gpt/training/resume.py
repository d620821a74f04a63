"""Checks run before either training loop resumes from a checkpoint folder (which may come from anyone).

Resuming must never run code from the folder, and never silently reset something the folder lacks:

- Nothing is unpickled. Weights are read from safetensors; the few torch files (optimizer state, RNG states) are
  read with `torch.load(weights_only=True)`, torch's restricted unpickler that rebuilds only tensors and plain
  containers and refuses any other object (a booby-trapped pickle fails with an error instead of running).
  The Accelerate loop keeps its own state (step, tokens seen, history and the LR scheduler) in `loop_state.json`;
  it no longer registers the scheduler with Accelerate, whose `custom_checkpoint_0.pkl` is read with
  `weights_only=False` (arbitrary code). Sharded FSDP checkpoints (torch.distributed.checkpoint) are refused: their
  `.metadata` file is read with plain `pickle.load`.
- Every part must be there: weights (each tensor with the model's shape; for a LoRA run the adapter's, from
  adapter_model.safetensors, with the rank, alpha and targets of this run), optimizer, scheduler, the RNG state of this
  process and the loop's counters. Transformers' Trainer skips a missing optimizer/scheduler/RNG file with an info
  log and loads weights with `strict=False`; Accelerate ignores an unreadable RNG file.

Each check raises `FileNotFoundError`/`ValueError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..lora import check_adapter_matches, check_adapter_weights, is_peft_model
from ..loading import SAFE_WEIGHTS_NAME, check_tensor_shapes, read_json_file, read_tensor_shapes

# What `Accelerator.save_state` writes (one process; FSDP with FULL_STATE_DICT writes `pytorch_model_fsdp.bin`).
ACCELERATE_WEIGHT_NAMES = (SAFE_WEIGHTS_NAME, "pytorch_model_fsdp.bin")
ACCELERATE_OPTIMIZER_NAME = "optimizer.bin"
ACCELERATE_RNG_TEMPLATE = "random_states_{}.pkl"
ACCELERATE_PICKLE_GLOB = "custom_checkpoint_*.pkl"  # Accelerate unpickles these with weights_only=False
LOOP_STATE_NAME = "loop_state.json"
LOOP_STATE_KEYS = ("step", "tokens_seen", "history", "scheduler")
# What `Trainer._save_checkpoint` writes and `Trainer` reads back on resume.
TRAINER_OPTIMIZER_NAME = "optimizer.pt"
TRAINER_SCHEDULER_NAME = "scheduler.pt"
TRAINER_STATE_NAME = "trainer_state.json"


def check_torch_file(path: Path) -> Any:
    """Read a torch file with the restricted unpickler (as Accelerate and Trainer then do) and return its content.

    `mmap=True`: tensors are mapped, not read, so checking a large optimizer state costs little memory.
    """
    from accelerate.utils import load

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the checkpoint is incomplete and cannot be resumed exactly")
    try:
        return load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # UnpicklingError (a disallowed global: a pickle that would run code), EOFError, ...
        raise ValueError(
            f"{path} is not a plain tensor file: torch.load(weights_only=True) refused it ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); hf_scratch_gpt never unpickles anything else"
        ) from error


def check_checkpoint_weights(weight_file: Path, model: nn.Module) -> None:
    """Every tensor of `model` is in the safetensors file with its shape (one side of a tied pair suffices)."""
    if not weight_file.is_file():
        raise FileNotFoundError(f"{weight_file} not found: the checkpoint has no model weights")
    found = read_tensor_shapes(weight_file)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if getattr(model.config, "tie_word_embeddings", False) and isinstance(tied, dict):
        for target, source in tied.items():  # safetensors stores one tensor per shared storage
            if (target in found) != (source in found):
                found.setdefault(target, found.get(source))
                found.setdefault(source, found.get(target))
    check_tensor_shapes(
        found, expected, dict.fromkeys(found, weight_file), lacking=f"{weight_file} lacks tensors the model has",
        hint="; resuming would leave them as they are",
    )  # fmt: skip


def _refuse_code_bearing_files(folder: Path) -> None:
    pickles = sorted(path.name for path in folder.glob(ACCELERATE_PICKLE_GLOB))
    if pickles:
        raise ValueError(
            f"checkpoint {folder} holds {pickles}: Accelerate would read it with pickle (weights_only=False), which "
            f"can run arbitrary code, so hf_scratch_gpt refuses it. Checkpoints this version writes keep the "
            f"scheduler in {LOOP_STATE_NAME}; one written by an older version (or by someone else) cannot be resumed"
        )
    metadata = sorted(str(path.relative_to(folder)) for path in folder.rglob(".metadata"))
    if metadata:
        raise ValueError(
            f"checkpoint {folder} is a sharded torch.distributed.checkpoint ({metadata}), whose metadata is read with "
            f"pickle; hf_scratch_gpt resumes only full-state checkpoints (fsdp_state_dict_type: FULL_STATE_DICT)"
        )


def read_loop_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The loop's own state (`loop_state.json`) of a checkpoint folder holding no code-bearing file, with every key."""
    folder = Path(folder)
    _refuse_code_bearing_files(folder)
    state_file = folder / LOOP_STATE_NAME
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} not found: the checkpoint lacks the loop's step, history and scheduler")
    loop_state = read_json_file(state_file)
    missing = [key for key in LOOP_STATE_KEYS if not isinstance(loop_state, dict) or key not in loop_state]
    if missing:
        raise ValueError(f"{state_file} lacks {missing}; resuming would reset them")
    if not isinstance(loop_state["scheduler"], dict):
        raise ValueError(f"{state_file}: 'scheduler' must be the scheduler's state dict (a JSON object)")
    return loop_state


def read_loop_checkpoint(folder: str | os.PathLike, model: nn.Module, process_index: int) -> dict[str, Any]:
    """Check an Accelerate-loop checkpoint before `Accelerator.load_state` reads it; return its loop state.

    `model` is the unwrapped model the weights go into. (FSDP checkpoints are per-process safetensors shards,
    checked as `training/fsdp.py` reads them.)
    """
    folder = Path(folder)
    loop_state = read_loop_state(folder)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        check_checkpoint_weights(folder / SAFE_WEIGHTS_NAME, model)
    elif (folder / ACCELERATE_WEIGHT_NAMES[1]).is_file():
        check_torch_file(folder / ACCELERATE_WEIGHT_NAMES[1])
    else:
        raise FileNotFoundError(f"checkpoint {folder} has none of {list(ACCELERATE_WEIGHT_NAMES)}: no model weights")
    check_torch_file(folder / ACCELERATE_OPTIMIZER_NAME)
    rng_state = check_torch_file(folder / ACCELERATE_RNG_TEMPLATE.format(process_index))
    if not isinstance(rng_state, dict) or "torch_manual_seed" not in rng_state:
        raise ValueError(f"{folder / ACCELERATE_RNG_TEMPLATE.format(process_index)} holds no RNG state")
    return loop_state


def check_trainer_checkpoint(folder: str | os.PathLike, model: nn.Module, world_size: int, process_index: int) -> None:
    """Check a `Trainer` checkpoint before `Trainer` resumes from it (single process or DDP, not FSDP/DeepSpeed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {folder} does not exist")
    if is_peft_model(model):  # a LoRA run's checkpoint holds the adapter, safetensors only, the same as this run's
        check_adapter_matches(folder, model)
        check_adapter_weights(folder, model)
    else:
        check_checkpoint_weights(folder / SAFE_WEIGHTS_NAME, model)
    state_file = folder / TRAINER_STATE_NAME
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} not found: the checkpoint lacks the trainer's step and log history")
    read_json_file(state_file)
    check_torch_file(folder / TRAINER_OPTIMIZER_NAME)
    check_torch_file(folder / TRAINER_SCHEDULER_NAME)
    rng_name = "rng_state.pth" if world_size <= 1 else f"rng_state_{process_index}.pth"
    check_torch_file(folder / rng_name)


__all__ = ["check_checkpoint_weights", "check_torch_file", "check_trainer_checkpoint", "read_loop_checkpoint", "read_loop_state"]
