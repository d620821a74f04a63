"""`hf-scratch-gpt train --loop accelerate`: an explicit training loop you can read and change.

One optimizer step:  for each micro-batch: forward → loss → backward;  then clip → optimizer step →
scheduler step → zero grad.  Every `eval_steps`: token-weighted validation loss and perplexity.

Runs in one process, or in several under `torchrun --nproc_per_node N` / `accelerate launch` (DDP; gloo on CPU,
NCCL on GPUs). `--fsdp true`, or an accelerate config asking for FSDP (`examples/accelerate_fsdp.yaml`), shards the
model with PyTorch's FSDP2 instead (see `training/fsdp.py`), on CPU and GPU alike.

The loss is exact for any number of processes and accumulation steps: the global batch of
`global_batch_size` examples is split across processes (`split_batches=True`) and into `gradient_accumulation_steps`
micro-batches; each micro-batch's summed token loss is divided by the number of target tokens in the WHOLE global
batch (`num_items_in_batch`, counted across processes), and multiplied by the number of processes because DDP
averages gradients. So 2 processes × 2 examples give the same step as 1 process × 4 examples.

Checkpoints (`checkpoint-N`) are written into a staging folder and renamed when complete; model weights are
safetensors, and the step, history and LR scheduler state are JSON (`loop_state.json`): nothing a resume reads is
unpickled beyond `torch.load(weights_only=True)`, and the folder is checked first (`resume.py`). The final model is
staged and moved into place when complete (`final_save.py`). A NaN/inf loss stops the run before the bad update,
naming the step and the last good checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from contextlib import contextmanager, nullcontext
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..evaluation import score_logits
from .components import (
    DataArguments,
    FlagParser,
    ModelArguments,
    NonFiniteLossError,
    TrainingSetup,
    check_resume_step,
    check_training_length,
    claim_output_dir,
    eval_protocol,
    non_finite_message,
    release_process_group,
    set_up_training,
)
from .final_save import STAGING_PREFIX, publish_directory, publish_final_save, start_final_save, start_staging
from .fsdp import (
    FSDP_LAYOUT_NAME,
    FSDPOptions,
    fsdp_options_from_accelerate_env,
    full_state_dict,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    shard_model,
    unsharded_copy,
)
from .fsdp import clip_grad_norm_ as clip_sharded_grad_norm_
from .plots import plot_loss_curves
from .resume import LOOP_STATE_NAME, SAFE_WEIGHTS_NAME, read_loop_checkpoint, read_loop_state

logger = logging.getLogger(__name__)
MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")


@dataclass
class LoopArguments:
    _argument_group_name = "loop (LoopArguments)"  # a section of `--help` (a class attribute, not a flag)

    output_dir: str = field(metadata={"help": "Where checkpoints, the final model, metrics.json and loss.png go."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    global_batch_size: int = field(
        default=16, metadata={"help": "Examples per optimizer step, over all processes and accumulation steps."}
    )
    gradient_accumulation_steps: int = field(default=1)
    per_device_eval_batch_size: int = field(default=16)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.1)
    adam_beta2: float = field(default=0.95)
    lr_scheduler_type: str = field(default="cosine")
    warmup_steps: int = field(default=0)
    max_grad_norm: float = field(default=1.0)
    logging_steps: int = field(default=10)
    eval_steps: int = field(default=50)
    save_steps: int = field(default=100)
    seed: int = field(default=0)
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (Accelerate autocast)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'last' or a checkpoint folder."})
    disable_tqdm: bool = field(default=False)
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even when an accelerator is available."})
    fsdp: bool = field(
        default=False,
        metadata={"help": "Shard parameters, gradients and optimizer state over the processes (FSDP2, fully_shard on "
                  "each ScratchGPTBlock). Needs several processes (torchrun / accelerate launch)."},
    )  # fmt: skip
    # last, so that the fields before it keep their positions
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into --output_dir even though it holds files that no train run wrote (e.g. another "
                  "model); files of the same names are replaced. Without it such a folder is refused."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        # Checked here, before any data is loaded: a 0 would otherwise end in `step % 0` mid-run (max_steps is
        # checked by check_training_length, as for the Trainer path).
        for name in ("global_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
                     "logging_steps", "eval_steps", "save_steps"):  # fmt: skip
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name} must be an integer >= 1, got {value}")
        for name in ("warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"--mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}")


def _micro_batches(batch: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    size = next(iter(batch.values())).size(0)
    if size % count:
        raise ValueError(f"this process's batch of {size} does not split into {count} accumulation micro-batches")
    return [{key: value.chunk(count)[i] for key, value in batch.items()} for i in range(count)]


def _training_batches(accelerator: Accelerator, train_loader, step: int, steps_per_epoch: int | None):
    """Global batches from optimizer step `step` on, epoch after epoch, without end.

    A map-style dataset: each epoch is a new seeded shuffle, identical on every process, and a resumed run skips the
    batches of the current epoch already trained on. A stream (`--streaming`, length unknown): each epoch reshuffles
    its buffer (`set_epoch`), and a resumed run reads and discards the `step` batches already trained on.
    """
    epoch, to_skip = divmod(step, steps_per_epoch) if steps_per_epoch else (0, step)
    while True:
        train_loader.set_epoch(epoch)
        if steps_per_epoch and to_skip:
            loader, to_skip = accelerator.skip_first_batches(train_loader, to_skip), 0
        else:
            loader = train_loader
        yielded = False
        for batch in loader:
            if to_skip:  # a stream being fast-forwarded to where the checkpoint was taken
                to_skip -= 1
                continue
            yielded = True
            yield batch
        if not yielded and not to_skip:
            raise ValueError("the training data yielded no batch in a whole epoch; use more text or a smaller batch")
        epoch += 1


@torch.no_grad()
def evaluate_loss(model, dataloader, accelerator: Accelerator) -> dict[str, float]:
    """Token-weighted validation loss (Σ NLL / Σ scored tokens over all processes) and its perplexity."""
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    for batch in dataloader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        example_nll, example_tokens, _ = score_logits(logits, batch["labels"])
        # gather_for_metrics drops the examples duplicated to even out the last batch across processes
        example_nll, example_tokens = accelerator.gather_for_metrics((example_nll.double(), example_tokens))
        nll_sum += example_nll.sum()
        tokens += example_tokens.sum()
    model.train()
    loss = (nll_sum / tokens.clamp(min=1)).item()
    return {"eval_loss": loss, "eval_perplexity": math.exp(loss), "eval_tokens": int(tokens.item())}


def _fsdp_options(loop_args: LoopArguments) -> FSDPOptions | None:
    """FSDP settings from `--fsdp` or from an accelerate config with `distributed_type: FSDP` (read before the
    Accelerator exists: see `fsdp_options_from_accelerate_env`)."""
    from_config = fsdp_options_from_accelerate_env()
    if from_config is not None:
        return from_config
    return FSDPOptions() if loop_args.fsdp else None


def _no_gradient_sync(model, accelerator: Accelerator):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) for a micro-batch that is not the step's last."""
    if not hasattr(model, "set_requires_gradient_sync"):
        return accelerator.no_sync(model)

    @contextmanager
    def paused():
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    return paused()


def train_with_accelerate(
    model_args: ModelArguments, data_args: DataArguments, loop_args: LoopArguments
) -> dict[str, Any]:
    """Train with the explicit loop (see the module docstring); returns the final metrics and the output paths.

    `output_dir` must be new, empty or a folder a train run wrote (`--overwrite_output_dir` allows any other), and
    no other run may be writing into it (`claim_output_dir`, taken by the main process)."""
    if model_args.lora_r is not None:  # its checkpoints (Accelerator.save_state) and final save hold the full model
        raise ValueError("--lora_r: LoRA fine-tuning runs on the Trainer loop; leave out --loop accelerate")
    fsdp_options = _fsdp_options(loop_args)
    if fsdp_options is not None and loop_args.mixed_precision == "fp16":
        # fp16 needs a gradient scaler that understands sharded gradients (and clipping after unscaling); bf16 does not.
        raise ValueError("FSDP with --mixed_precision fp16 is not supported by this loop; use bf16 or no")
    check_training_length(loop_args.max_steps)
    accelerator = Accelerator(
        # accelerate picks MULTI_CPU (gloo) under torchrun only when told it runs on CPU; with no GPU/XPU/MPS that is
        # the only option, and without it each process would silently train alone.
        cpu=loop_args.use_cpu or not torch.accelerator.is_available(),
        gradient_accumulation_steps=1,  # accumulation is done by hand below, to keep the token count exact
        mixed_precision=loop_args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True),
    )
    with claim_output_dir(loop_args.output_dir, loop_args.overwrite_output_dir, accelerator.is_main_process):
        return _train_with_accelerate(model_args, data_args, loop_args, accelerator, fsdp_options)


def _train_with_accelerate(
    model_args: ModelArguments, data_args: DataArguments, loop_args: LoopArguments, accelerator: Accelerator,
    fsdp_options: FSDPOptions | None,
) -> dict[str, Any]:  # fmt: skip
    """prepare → resume → train (optimizer steps, with evaluations and checkpoints on the way) → finish → final save."""
    _check_processes(loop_args, accelerator.num_processes, fsdp_options)
    setup = set_up_training(
        model_args, data_args, loop_args.output_dir, loop_args.seed, loop_args.resume_from_checkpoint,
        is_main_process=accelerator.is_main_process, is_local_main_process=accelerator.is_local_main_process,
        main_process_first=accelerator.main_process_first,  # one process fills the datasets cache, the others read it
    )  # fmt: skip
    run = _prepare(accelerator, loop_args, fsdp_options, setup)
    if setup.resume is not None:
        _resume(run, setup.resume)
    _train(run)
    result = _finish(run, data_args, setup)
    _save_final_model(run, setup, result, arguments={**asdict(model_args), **asdict(data_args), **asdict(loop_args)})
    return result


@dataclass
class _Run:
    """One run of the loop: what `_prepare` builds, and the progress (step, tokens seen, history) each step updates."""

    accelerator: Accelerator
    args: LoopArguments
    fsdp_options: FSDPOptions | None
    output_dir: Path
    model: Any  # prepared by Accelerate (DDP) or sharded (FSDP2)
    optimizer: Any
    scheduler: Any
    train_loader: DataLoader
    eval_loader: DataLoader
    streaming: bool  # an IterableDataset: shuffled by its own seeded buffer, length unknown
    step: int = 0
    tokens_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fsdp(self) -> bool:
        return self.fsdp_options is not None


def _check_processes(loop_args: LoopArguments, processes: int, fsdp_options: FSDPOptions | None) -> None:
    """Before any data is read: the global batch splits evenly, and FSDP has several processes to shard over."""
    accumulation = loop_args.gradient_accumulation_steps
    if loop_args.global_batch_size % (processes * accumulation):
        raise ValueError(
            f"global_batch_size {loop_args.global_batch_size} must be divisible by processes ({processes}) × "
            f"gradient_accumulation_steps ({accumulation})"
        )
    if fsdp_options is not None and processes < 2:
        raise ValueError(
            "FSDP needs several processes: launch with `torchrun --nproc_per_node N` or `accelerate launch` "
            f"(this run has {processes})"
        )


def _prepare(
    accelerator: Accelerator, loop_args: LoopArguments, fsdp_options: FSDPOptions | None, setup: TrainingSetup
) -> _Run:
    """Data loaders, AdamW and the LR schedule, all handed to Accelerate (the model sharded first under FSDP)."""
    model = setup.model
    if fsdp_options is not None:
        # Shard before the optimizer exists: it must hold the sharded parameters (DTensors), not the full ones.
        model = shard_model(model.to(accelerator.device), fsdp_options)
    streaming = isinstance(setup.train_dataset, IterableDataset)
    train_loader = DataLoader(
        setup.train_dataset, batch_size=loop_args.global_batch_size, shuffle=not streaming, drop_last=True,
        collate_fn=setup.collator, generator=None if streaming else torch.Generator().manual_seed(loop_args.seed),
    )  # fmt: skip
    if not streaming and len(train_loader) == 0:
        raise ValueError(
            f"the training split has {len(setup.train_dataset)} examples, fewer than global_batch_size "
            f"{loop_args.global_batch_size}"
        )
    eval_loader = DataLoader(
        setup.eval_dataset, batch_size=loop_args.per_device_eval_batch_size, collate_fn=setup.collator
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # no weight decay on biases and LayerNorms
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": loop_args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=loop_args.learning_rate,
        betas=(0.9, loop_args.adam_beta2),
    )
    scheduler = get_scheduler(loop_args.lr_scheduler_type, optimizer, loop_args.warmup_steps, loop_args.max_steps)
    # The scheduler is not prepared (a prepared one may step once per process), nor registered for checkpointing
    # (Accelerate would pickle it and unpickle it with weights_only=False): its state dict goes into loop_state.json.
    if fsdp_options is not None:  # already sharded; accelerate would wrap it in DDP on top (MULTI_CPU/MULTI_GPU)
        optimizer, train_loader, eval_loader = accelerator.prepare(optimizer, train_loader, eval_loader)
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    return _Run(accelerator, loop_args, fsdp_options, Path(loop_args.output_dir), model, optimizer, scheduler,
                train_loader, eval_loader, streaming)  # fmt: skip


def _resume(run: _Run, checkpoint: str) -> None:
    """Load a checkpoint into the prepared run, checked first: nothing in the folder is unpickled, and nothing the
    folder lacks is silently reset (`resume.py`)."""
    if run.fsdp:
        loop_state = read_loop_state(checkpoint)
        load_sharded_checkpoint(run.model, run.optimizer, run.scheduler, Path(checkpoint))  # safetensors + JSON only
    else:
        model = run.accelerator.unwrap_model(run.model)
        loop_state = read_loop_checkpoint(checkpoint, model, run.accelerator.process_index)
        run.accelerator.load_state(checkpoint)
        run.scheduler.load_state_dict(loop_state["scheduler"])
    run.step, run.tokens_seen, run.history = loop_state["step"], loop_state["tokens_seen"], loop_state["history"]
    logger.info("resumed from %s at step %d", checkpoint, run.step)
    check_resume_step(run.step, run.args.max_steps, checkpoint)


def _train(run: _Run) -> None:
    """Optimizer steps up to `max_steps`, each followed by the logging, evaluation and checkpoint that are due."""
    args = run.args
    progress = tqdm(
        total=args.max_steps, initial=run.step, desc="training",
        disable=args.disable_tqdm or not run.accelerator.is_local_main_process,
    )  # fmt: skip
    run.model.train()
    steps_per_epoch = None if run.streaming else len(run.train_loader)
    batches = _training_batches(run.accelerator, run.train_loader, run.step, steps_per_epoch)  # endless
    while run.step < args.max_steps:
        batch = next(batches)
        loss = _optimizer_step(run, batch)
        run.step += 1
        run.tokens_seen += int(_sum_over_processes(run.accelerator, batch["input_ids"].numel()))
        progress.update(1)
        if run.step % args.logging_steps == 0 or run.step == args.max_steps:
            run.history.append({"step": run.step, "tokens": run.tokens_seen, "loss": loss.item(),
                                "learning_rate": run.scheduler.get_last_lr()[0]})  # fmt: skip
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if run.step % args.eval_steps == 0 or run.step == args.max_steps:
            metrics = evaluate_loss(run.model, run.eval_loader, run.accelerator)
            run.history.append({"step": run.step, "tokens": run.tokens_seen, **metrics})
            logger.info("step %d: %s", run.step, metrics)
        if run.step % args.save_steps == 0:
            _checkpoint(run)
    progress.close()


def _optimizer_step(run: _Run, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step on a global batch: for each micro-batch forward → loss → backward; then clip → optimizer
    step → scheduler step → zero grad. Returns the global batch's mean token loss, checked finite before the update."""
    accelerator = run.accelerator
    micro_batches = _micro_batches(batch, run.args.gradient_accumulation_steps)
    # Target tokens of the whole global batch: what every token loss is divided by.
    local_targets = sum((micro_batch["labels"][:, 1:] != -100).sum() for micro_batch in micro_batches)
    global_targets = _sum_over_processes(accelerator, local_targets)
    step_loss = torch.zeros((), device=accelerator.device)
    for index, micro_batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with nullcontext() if last else _no_gradient_sync(run.model, accelerator):  # all-reduce once per step
            with accelerator.autocast():
                loss = run.model(**micro_batch, num_items_in_batch=global_targets).loss  # forward → loss
            accelerator.backward(loss * accelerator.num_processes)  # backward (DDP and FSDP average over processes)
        step_loss += loss.detach()
    step_loss = _sum_over_processes(accelerator, step_loss)  # the global batch's mean token loss
    if not torch.isfinite(step_loss):
        run.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(non_finite_message(step_loss.item(), run.step + 1, run.output_dir))
    _clip_gradients(run)  # clip
    run.optimizer.step()  # optimizer step
    run.scheduler.step()  # scheduler step
    run.optimizer.zero_grad(set_to_none=True)  # zero grad
    return step_loss


def _sum_over_processes(accelerator: Accelerator, value: torch.Tensor | int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(value, device=accelerator.device)
    return accelerator.reduce(value, reduction="sum")


def _clip_gradients(run: _Run) -> None:
    if not run.args.max_grad_norm:
        return
    if run.fsdp:
        clip_sharded_grad_norm_(run.model.parameters(), run.args.max_grad_norm)  # the norm of the full gradients
    else:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)


def _checkpoint(run: _Run) -> Path:
    """`checkpoint-N`: weights, optimizer and RNG states, and the loop's own state as JSON (`loop_state.json`)."""
    loop_state = {"step": run.step, "tokens_seen": run.tokens_seen, "history": run.history,
                  "scheduler": run.scheduler.state_dict()}  # fmt: skip
    if run.fsdp:  # each process its own shard: safetensors + JSON, no pickle
        write_state = partial(save_sharded_checkpoint, run.model, run.optimizer, run.scheduler)
        weights = FSDP_LAYOUT_NAME
    else:  # model.safetensors, optimizer, RNG per process
        write_state = partial(_save_accelerate_state, run.accelerator)
        weights = SAFE_WEIGHTS_NAME
    return _save_checkpoint(run.accelerator, run.output_dir, run.step, loop_state, write_state, weights)


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, loop_state: dict,
                     write_state: Callable[[Path], None], weights: str) -> Path:  # fmt: skip
    """Every process writes into a staging folder (`write_state(folder)`: Accelerate's `save_state`, or each
    process's FSDP shard); the main process adds the loop state and publishes it as `checkpoint-N` once complete
    (never without the loop state and the `weights` file)."""
    name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
    staging = output_dir / f"{STAGING_PREFIX}{name}"
    if accelerator.is_main_process:
        start_staging(output_dir, name)  # before the other processes write their RNG states into it
    accelerator.wait_for_everyone()
    write_state(staging)
    if accelerator.is_main_process:
        (staging / LOOP_STATE_NAME).write_text(json.dumps(loop_state, indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_directory(staging, output_dir / name, required=(LOOP_STATE_NAME, weights))
    accelerator.wait_for_everyone()
    return output_dir / name


def _save_accelerate_state(accelerator: Accelerator, folder: Path) -> None:
    accelerator.save_state(str(folder), safe_serialization=True)


def _finish(run: _Run, data_args: DataArguments, setup: TrainingSetup) -> dict[str, Any]:
    """The final evaluation and the run's result (metrics, what was trained on, where the model goes)."""
    final = evaluate_loss(run.model, run.eval_loader, run.accelerator)
    run.accelerator.wait_for_everyone()
    return {
        "global_step": run.step,
        "num_input_tokens_seen": run.tokens_seen,  # the name Trainer uses for the same count
        "train_loss": next((row["loss"] for row in reversed(run.history) if "loss" in row), float("nan")),
        **final,
        "dataset": data_args.dataset,
        "eval_protocol": eval_protocol(data_args, setup.train_dataset, setup.eval_dataset),
        "processes": run.accelerator.num_processes,
        "fsdp": run.fsdp,
        "resumed_from": setup.resume,
        "model_dir": str(run.output_dir),
    }


def _save_final_model(run: _Run, setup: TrainingSetup, result: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Model, tokenizer, loss.png and metrics.json, staged and moved into `output_dir` when complete: a kill while
    saving never leaves truncated weights next to a new config (`final_save.py`). Adds `plot` and `metrics_file` to
    `result` (main process)."""
    accelerator, output_dir = run.accelerator, run.output_dir
    if run.fsdp:
        state_dict = full_state_dict(run.model)  # gathered from every process onto the main one (CPU)
        unwrapped = unsharded_copy(run.model, state_dict) if accelerator.is_main_process else None
    else:
        unwrapped = accelerator.unwrap_model(run.model)
        state_dict = accelerator.get_state_dict(run.model)  # full weights on the main process
    if accelerator.is_main_process:
        staging = start_final_save(output_dir)
        unwrapped.save_pretrained(staging, state_dict=state_dict)
        setup.tokenizer.save_pretrained(staging)
        plot_loss_curves(run.history, staging / "loss.png", title="ScratchGPT (Accelerate loop)",
                         validation_label=f"validation loss ({result['eval_protocol']})")  # fmt: skip
        result["plot"] = str(output_dir / "loss.png")
        result["metrics_file"] = str(output_dir / "metrics.json")
        record = {**result, "arguments": arguments, "history": run.history}
        (staging / "metrics.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        publish_final_save(staging, output_dir)
    accelerator.wait_for_everyone()


LOOP_HELP = """Train with the explicit Accelerate loop (hf_scratch_gpt/training/loop.py), in one process or under
torchrun / accelerate launch. The flags are the fields of ModelArguments, DataArguments and LoopArguments (sections
below); `--output_dir` is required. Trainer's flags (`--eval_strategy`, ...) do not apply here: see
`hf-scratch-gpt train --help`."""


def parse_loop_arguments(
    argv: Sequence[str], prog: str = "hf-scratch-gpt train --loop accelerate"
) -> tuple[ModelArguments, DataArguments, LoopArguments]:
    """Command-line flags (or one .json file) → the three dataclasses. `--help` lists every flag."""
    return FlagParser((ModelArguments, DataArguments, LoopArguments), prog, LOOP_HELP).parse_flags(argv)


def loop_from_argv(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line's run (`hf-scratch-gpt train --loop accelerate`, examples/accelerate_loop.py); at the end
    it releases the process group of a multi-process run (`release_process_group`), so a process trains through it
    once."""
    try:
        return train_with_accelerate(*parse_loop_arguments(sys.argv[1:] if argv is None else argv))
    finally:
        release_process_group()


__all__ = ["LoopArguments", "evaluate_loss", "loop_from_argv", "parse_loop_arguments", "train_with_accelerate"]
