"""FSDP for the Accelerate loop: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), the same code on CPU and GPU.

`shard_model` makes each `ScratchGPTBlock` one FSDP unit and the model the root unit (embeddings, final LayerNorm and
the tied head): parameters, gradients and optimizer state are split across the processes along dim 0, and a block's
full weights exist only while it runs.

Why the loop shards the model itself instead of handing it to Accelerate's FSDP plugin: accelerate 1.15 turns
the plugin on only for GPU-like devices. On CPU (`Accelerator(cpu=True)` under torchrun, distributed type
MULTI_CPU) it drops the plugin without a word and wraps the model in DistributedDataParallel, so FSDP could never run
in the CPU test suite. `fully_shard` runs on gloo (CPU) and NCCL alike, so the code the tests run is the code
that runs on GPUs. An accelerate config asking for FSDP (`examples/accelerate_fsdp.yaml`) is read by
`fsdp_options_from_accelerate_env` and routed here.

Checkpoints are sharded: each process writes its own shard of the weights and of the optimizer state
(`fsdp-shard-{rank}-of-{world}.safetensors`), the main process the layout, optimizer hyper-parameters and
scheduler state as JSON. Nothing is pickled. Resuming needs the same number of processes (the file names say it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from ..loading import read_json_file

logger = logging.getLogger(__name__)

FSDP_LAYOUT_NAME = "fsdp_layout.json"
FSDP_SHARD_TEMPLATE = "fsdp-shard-{rank}-of-{world}.safetensors"
SCHEDULER_STATE_NAME = "scheduler.json"
FSDP_UNIT = "ScratchGPTBlock"  # the one layer class the model lists in _no_split_modules


@dataclass(frozen=True)
class FSDPOptions:
    """What the loop's FSDP route can be told (from `--fsdp` or from an accelerate FSDP config)."""

    reshard_after_forward: bool = True  # free a block's gathered weights after its forward (ZeRO-3); False = ZeRO-2


_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _env_flag(name: str, default: str = "false") -> bool:
    return _BOOLEANS.get(os.environ.get(name, default).strip().lower(), False)


def fsdp_options_from_accelerate_env() -> FSDPOptions | None:
    """The FSDP settings `accelerate launch --config_file <FSDP config>` exports, or None when none were asked for.

    Only what this route implements is accepted; anything else raises `ValueError` naming the setting, rather than
    training with a setting silently dropped. Consumes `ACCELERATE_USE_FSDP`: on GPUs the `Accelerator` would
    otherwise set up its own FSDP as well (and refuse `prepare` without the model), while this loop shards itself.
    """
    if not _env_flag("ACCELERATE_USE_FSDP"):
        return None
    os.environ.pop("ACCELERATE_USE_FSDP")
    version = os.environ.get("FSDP_VERSION", "2")
    if version != "2":
        raise ValueError(
            f"accelerate config: fsdp_version {version} is not supported; this loop uses FSDP2 (set fsdp_version: 2)"
        )
    wrap = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", FSDP_UNIT)
    if wrap and wrap != FSDP_UNIT:
        raise ValueError(
            f"accelerate config: fsdp_transformer_layer_cls_to_wrap is {wrap!r}; this model's FSDP unit is "
            f"{FSDP_UNIT!r}"
        )
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if policy.upper() != "TRANSFORMER_BASED_WRAP":
        raise ValueError(f"accelerate config: fsdp_auto_wrap_policy {policy!r} is not supported; this loop wraps each "
                         f"{FSDP_UNIT} (TRANSFORMER_BASED_WRAP)")  # fmt: skip
    for name in ("FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING"):
        if _env_flag(name):
            raise ValueError(f"accelerate config: {name.lower()}: true is not supported by this loop's FSDP route")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    if reshard not in _BOOLEANS:  # FSDP2 takes a bool (accelerate refuses FSDP1 strategy names with version 2 too)
        raise ValueError(
            f"accelerate config: fsdp_reshard_after_forward must be true or false for FSDP2, got {reshard!r}"
        )
    return FSDPOptions(reshard_after_forward=_BOOLEANS[reshard])


def shard_model(model: nn.Module, options: FSDPOptions = FSDPOptions()) -> nn.Module:
    """`fully_shard` each ScratchGPTBlock, then the whole model (in place; the model must already be on its device).

    Build the optimizer AFTER this: the parameters become DTensors holding this process's rows.
    """
    for block in model.transformer.h:
        fully_shard(block, reshard_after_forward=options.reshard_after_forward)
    # The root unit holds wte (= the tied lm_head), wpe and ln_f; its weights stay gathered after forward because
    # the head needs wte again at the end of the same forward.
    fully_shard(model, reshard_after_forward=options.reshard_after_forward)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` for sharded gradients: the norm is taken over the full gradients.

    Each process's norm covers only its rows; `full_tensor()` reduces them to the global norm, which every process
    then applies to its shard, so the update equals the unsharded one.
    """
    parameters = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    scale = min(1.0, max_norm / (float(total) + 1e-6))
    if scale < 1.0:
        torch._foreach_mul_([p.grad for p in parameters], scale)
    return total


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU, on the main process (empty elsewhere). Every process must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (not FSDP) model of the same class holding `state_dict`, to `save_pretrained` from.

    `fully_shard` swaps the model's class for a generated `FSDP<Class>` subclass, whose name `save_pretrained`
    would write into config.json's `architectures`.
    """
    plain_class = next(cls for cls in type(model).__mro__ if cls is not type(model) and not issubclass(cls, FSDPModule))
    plain = plain_class(model.config)
    missing, unexpected = plain.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if key not in plain._tied_weights_keys]
    if missing or unexpected:
        raise ValueError(
            f"full state dict does not match {plain_class.__name__}: missing {missing}, unexpected {unexpected}"
        )
    plain.tie_weights()
    return plain


# ---------------------------------------------------------------------------------------------------------------------
# Sharded checkpoints: safetensors per process + JSON, no pickle
# ---------------------------------------------------------------------------------------------------------------------
def _local(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).detach().cpu().contiguous()


def save_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, directory: Path) -> None:
    """Write this process's shard of the weights and optimizer state into `directory` (which must exist).

    Keys: `model/<parameter name>` (this process's rows), `optimizer/<index>/<state name>` (index = position in the
    optimizer's parameter list), `rng/cpu` (and `rng/cuda`). The main process also writes the layout (global
    shapes, world size) and the optimizer's param groups and the scheduler state as JSON.
    """
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    tensors: dict[str, torch.Tensor] = {}
    names = {}
    for name, param in model.named_parameters():
        tensors[f"model/{name}"] = _local(param)
        names[id(param)] = name
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"optimizer/{index}/{key}"] = _local(value) if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(directory / FSDP_SHARD_TEMPLATE.format(rank=rank, world=world)))
    if rank == 0:
        groups = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
        layout = {
            "world_size": world,
            "parameters": {names[id(p)]: list(p.shape) for p in params},
            "optimizer_parameter_order": [names[id(p)] for p in params],
            "param_groups": groups,
            "param_group_sizes": [len(group["params"]) for group in optimizer.param_groups],
        }
        (directory / FSDP_LAYOUT_NAME).write_text(json.dumps(layout, indent=2), encoding="utf-8")
        (directory / SCHEDULER_STATE_NAME).write_text(json.dumps(scheduler.state_dict(), indent=2), encoding="utf-8")


def _like(saved: torch.Tensor, reference: torch.Tensor, what: str) -> torch.Tensor:
    """`saved` (this process's rows) as a tensor laid out like `reference` (a DTensor shard or a plain tensor)."""
    local = reference.to_local() if isinstance(reference, DTensor) else reference
    if saved.shape != local.shape:
        raise ValueError(
            f"{what}: the checkpoint holds a shard of shape {tuple(saved.shape)}, expected {tuple(local.shape)}"
        )
    saved = saved.to(device=local.device, dtype=local.dtype)
    if isinstance(reference, DTensor):
        return DTensor.from_local(saved, reference.device_mesh, reference.placements, shape=reference.shape,
                                  stride=reference.stride())  # fmt: skip
    return saved


def load_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, directory: Path) -> None:
    """Restore what `save_sharded_checkpoint` wrote; the model must be sharded the same way over as many processes."""
    directory = Path(directory)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    layout_file = directory / FSDP_LAYOUT_NAME
    if not layout_file.is_file():
        raise FileNotFoundError(f"{layout_file} not found: {directory} is not a sharded (FSDP) checkpoint of this loop")
    layout = read_json_file(layout_file)
    if layout["world_size"] != world:
        raise ValueError(
            f"{directory} was saved by {layout['world_size']} processes; resume it with as many (this run has {world})"
        )
    shard_file = directory / FSDP_SHARD_TEMPLATE.format(rank=rank, world=world)
    if not shard_file.is_file():
        raise FileNotFoundError(f"{shard_file} not found: the checkpoint is incomplete")
    saved = load_file(str(shard_file))

    names = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = f"model/{name}"
            if key not in saved:
                raise ValueError(f"{shard_file} has no tensor {key!r}")
            local = param.to_local() if isinstance(param, DTensor) else param
            _like(saved[key], param, f"{shard_file}: {key}")  # shape check
            local.copy_(saved[key])
            names[id(param)] = name

    torch_optimizer = getattr(optimizer, "optimizer", optimizer)
    params = [p for group in torch_optimizer.param_groups for p in group["params"]]
    if [names.get(id(p)) for p in params] != layout["optimizer_parameter_order"]:
        raise ValueError(f"{layout_file}: the optimizer's parameters differ from the checkpoint's")
    state = {}
    for index, param in enumerate(params):
        prefix = f"optimizer/{index}/"
        entries = {key[len(prefix):]: value for key, value in saved.items() if key.startswith(prefix)}
        if not entries:
            raise ValueError(f"{shard_file} has no optimizer state for parameter {names[id(param)]!r}")
        state[index] = {
            key: (value if key == "step" else _like(value, param, f"{shard_file}: {prefix}{key}"))
            for key, value in entries.items()
        }
    groups = [{**group, "params": list(range(start, start + size))}
              for group, start, size in zip(layout["param_groups"], _starts(layout["param_group_sizes"]),
                                            layout["param_group_sizes"])]  # fmt: skip
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    torch_optimizer.load_state_dict({"state": state, "param_groups": groups})

    scheduler_file = directory / SCHEDULER_STATE_NAME
    if not scheduler_file.is_file():
        raise FileNotFoundError(f"{scheduler_file} not found: the checkpoint is incomplete")
    scheduler.load_state_dict(read_json_file(scheduler_file))
    torch.set_rng_state(saved["rng/cpu"])
    if torch.cuda.is_available() and "rng/cuda" in saved:
        torch.cuda.set_rng_state(saved["rng/cuda"])


def _starts(sizes: list[int]) -> list[int]:
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return starts


__all__ = [
    "FSDPOptions",
    "clip_grad_norm_",
    "fsdp_options_from_accelerate_env",
    "full_state_dict",
    "is_sharded",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
    "shard_model",
    "unsharded_copy",
]
