"""`hf-scratch-gpt train`: transformers' `Trainer` with `HfArgumentParser` (the shape of the `run_clm` example).

What `ScratchGPTTrainer` adds to `Trainer`, and why:
- Label smoothing. The factor is moved into `config.label_smoothing`, which the model's own loss applies to the
  shifted targets in its memory-lean fused path, and `Trainer`'s label smoother (which needs the full (B, T, V)
  logits and their log-softmax) is switched off. A plain `Trainer` is right too, just heavier: it shifts the
  labels for its smoother only for class names in transformers' causal-LM table, and importing this package
  adds ours there (`hf_scratch_gpt/__init__.py`).
- Gradient accumulation. `Trainer` 5.23 counts `num_items_in_batch` over `labels[..., 1:]` for models whose
  `loss_type` is `ForCausalLM` (ours is), i.e. exactly the targets our loss scores; the model divides its summed
  token losses by that count, so k micro-batches give the loss and gradients of the one large batch.
- NaN/inf loss. Checked on every micro-batch before the optimizer step; training stops with `NonFiniteLossError`
  naming the step, and no checkpoint is written from the bad state. (A `TrainerCallback` cannot do this: callbacks
  never see the per-step loss, only logged averages, after the bad update has been applied.)
- Atomic checkpoints. Each checkpoint is written into a staging folder and renamed to `checkpoint-N` when complete,
  so a run killed while saving never leaves a half-written `checkpoint-N` for `resume_from_checkpoint` to pick.
- Safe resume. Before `Trainer` reads a checkpoint, `training/resume.py` checks it: every tensor present with the
  model's shape (Trainer loads with `strict=False`), optimizer, scheduler and RNG files present (Trainer skips missing
  ones) and readable with `torch.load(weights_only=True)`.
- Atomic final save. The final model, tokenizer, `metrics.json` and `loss.png` are staged and moved into `output_dir`
  only when complete (`training/final_save.py`).
- Metrics: `preprocess_logits_for_metrics` reduces each batch's logits to per-example NLL sums, scored counts and
  argmax ids (full logits are never gathered); `compute_metrics` turns them into the token-weighted NLL, `perplexity`
  and next-token `accuracy` through the package's `evaluate` modules. The token-weighted NLL replaces `Trainer`'s
  `eval_loss` (a mean of per-batch means, which weighs a short padded batch like a full one), so there is one
  validation loss and `eval_perplexity == exp(eval_loss)` exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..evaluation import load_metric, score_logits
from ..lora import is_peft_model, save_merged_model
from .components import (
    DataArguments,
    FlagParser,
    ModelArguments,
    NonFiniteLossError,
    check_resume_step,
    check_training_length,
    claim_output_dir,
    detect_chat_data,
    eval_protocol,
    non_finite_message,
    release_process_group,
    set_up_training,
)
from .final_save import (
    ADAPTER_FILES, FINAL_STAGING_NAME, STAGING_PREFIX, publish_directory, publish_final_save, start_final_save,
    start_staging,
)
from .plots import plot_loss_curves
from .resume import TRAINER_STATE_NAME, check_trainer_checkpoint

logger = logging.getLogger(__name__)

MERGED_DIR_NAME = "merged"  # `--merge_lora`: the merged model's folder inside output_dir
# compute_metrics' name for Σ NLL / scored tokens; `ScratchGPTTrainer.evaluation_loop` moves it to `eval_loss`.
TOKEN_WEIGHTED_NLL = "token_weighted_nll"


class ScratchGPTTrainer(Trainer):
    """`Trainer` made exact for ScratchGPT (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.args.fsdp and not self.is_fsdp_enabled:
            # accelerate 1.15 enables its FSDP plugin only on GPU-like devices; on CPU (MULTI_CPU) it drops it and
            # Trainer trains with DDP instead: refuse rather than train unsharded while the user asked for FSDP.
            raise ValueError(
                f"TrainingArguments(fsdp=...) asked for FSDP, but Accelerate did not enable it on this device "
                f"(distributed type {self.accelerator.distributed_type}); Trainer's FSDP needs GPUs. On CPU use "
                "`hf-scratch-gpt train --loop accelerate --fsdp true` under torchrun"
            )
        check_trainer_arguments(self.args)
        self._staging_root: str | None = None
        factor = self.args.label_smoothing_factor
        if factor:
            config = self.accelerator.unwrap_model(self.model).config
            if config.label_smoothing and config.label_smoothing != factor:
                raise ValueError(
                    f"label_smoothing_factor {factor} conflicts with the model's config.label_smoothing "
                    f"{config.label_smoothing}; set one of them"
                )
            config.label_smoothing = factor  # the model smooths against the shifted targets, fused
            self.label_smoother = None  # Trainer's would need the full logits

    def _run_epoch(self, *args, **kwargs):
        # Trainer checks max_steps only after an optimizer step: resumed from a checkpoint already at max_steps it
        # would train one step more (and save checkpoint-{max_steps + 1}, which the next resume goes on from).
        if self.state.global_step >= self.state.max_steps:
            check_resume_step(self.state.global_step, self.state.max_steps, kwargs.get("resume_from_checkpoint"))
            logger.info("step %d is already max_steps: nothing left to train", self.state.global_step)
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(non_finite_message(loss.item(), self.state.global_step + 1, self.args.output_dir))
        return loss

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # The first thing Trainer.train reads from a checkpoint: check the whole folder here, because Trainer alone
        # loads weights with strict=False and skips a missing optimizer, scheduler or RNG file with an info log.
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            check_trainer_checkpoint(
                resume_from_checkpoint, self.accelerator.unwrap_model(model if model is not None else self.model),
                self.args.world_size, self.args.process_index,
            )  # fmt: skip
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix=metric_key_prefix
        )
        nll = output.metrics.pop(f"{metric_key_prefix}_{TOKEN_WEIGHTED_NLL}", None)
        if nll is not None:  # one validation loss: the token-weighted one, of which eval_perplexity is the exp
            output.metrics[f"{metric_key_prefix}_loss"] = nll
        return output

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being saved, Trainer writes `<this>/checkpoint-N`: point it at the staging folder.
        return self._staging_root if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / f"{STAGING_PREFIX}{name}"
        self._staging_root = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every process has written its part (e.g. its RNG state)
        if self.args.should_save:
            # Trainer writes the weights as model.safetensors (a LoRA run: the adapter's files) unless FSDP or
            # DeepSpeed save them their own way.
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                weights = ()
            else:
                weights = ADAPTER_FILES if is_peft_model(self.model) else ("model.safetensors",)
            publish_directory(staging_root / name, run_dir / name, required=(TRAINER_STATE_NAME, *weights))
            shutil.rmtree(staging_root, ignore_errors=True)
            best = self.state.best_global_step
            if best and (run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best}").exists():
                self.state.best_model_checkpoint = str(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best}")
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


class LossHistoryCallback(TrainerCallback):
    """Keeps every logged `loss` / `eval_*` with its step and the number of tokens seen (for the plot)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        record = {key: value for key, value in logs.items() if key == "loss" or key.startswith("eval_")}
        if record and state.is_world_process_zero:
            self.history.append({"step": state.global_step, "tokens": int(state.num_input_tokens_seen), **record})


def preprocess_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, T, V) logits → (argmax ids (B, T-1), NLL sums (B,), scored counts (B,)): small enough to gather."""
    if isinstance(logits, tuple):
        logits = logits[0]
    nll_sum, counts, _ = score_logits(logits, labels)
    return logits[:, :-1, :].argmax(dim=-1), nll_sum.double(), counts


def build_compute_metrics():
    """`compute_metrics` for `Trainer`: eval `perplexity` (token-weighted) and next-token `accuracy`."""
    perplexity_metric = load_metric("perplexity")
    accuracy_metric = load_metric("accuracy")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predicted_ids, nll_sums, counts = eval_prediction.predictions
        shifted_labels = np.asarray(eval_prediction.label_ids)[:, 1:]  # the targets the predictions are for
        mask = shifted_labels != -100
        nll = perplexity_metric.compute(nll_sum=nll_sums.tolist(), num_tokens=counts.tolist())
        accuracy = accuracy_metric.compute(
            predictions=predicted_ids[:, : shifted_labels.shape[1]][mask].tolist(),
            references=shifted_labels[mask].tolist(),
        )
        return {"perplexity": nll["perplexity"], TOKEN_WEIGHTED_NLL: nll["loss"], "accuracy": accuracy["accuracy"]}

    return compute_metrics


def train_with_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train (from a preset or a saved folder), evaluate, save model + tokenizer, `metrics.json` and the loss plot.

    Returns the final metrics plus `model_dir`, `plot` and `metrics_file` paths.

    `output_dir` must be new, empty or a folder a train run wrote (`training_args.overwrite_output_dir`, a field of
    `ScratchTrainingArguments`, allows any other), and no other run may be writing into it (`claim_output_dir`).
    """
    check_trainer_arguments(training_args)  # before any data is read
    overwrite = getattr(training_args, "overwrite_output_dir", False)  # plain TrainingArguments have no such field
    with claim_output_dir(training_args.output_dir, overwrite, is_main_process=training_args.process_index == 0):
        return _train_with_trainer(model_args, data_args, training_args, callbacks)


def _train_with_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    callbacks: Sequence[TrainerCallback],
) -> dict[str, Any]:
    output_dir = Path(training_args.output_dir)
    padded = data_args.prompt_column is not None or detect_chat_data(data_args) is not None
    if training_args.include_num_input_tokens_seen == "no":
        # Tokens seen are the x axis of the second loss plot. Blocks have no padding; pairs and conversations count
        # real tokens only.
        training_args.include_num_input_tokens_seen = "non_padding" if padded else "all"
    # Non-finite losses must reach the check in `training_step`, not be hidden by averaging in the logs.
    training_args.logging_nan_inf_filter = False
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # pinning is for copies to an accelerator; on CPU torch warns

    setup = set_up_training(
        model_args, data_args, output_dir, training_args.seed, training_args.resume_from_checkpoint,
        is_main_process=training_args.process_index == 0,
        is_local_main_process=training_args.local_process_index == 0,
    )  # fmt: skip
    tokenizer, train_dataset, eval_dataset = setup.tokenizer, setup.train_dataset, setup.eval_dataset
    check_one_batch_each(training_args, train_dataset, eval_dataset)

    history = LossHistoryCallback()
    trainer = ScratchGPTTrainer(
        model=setup.model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=setup.collator,
        processing_class=tokenizer,
        compute_metrics=build_compute_metrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        callbacks=[history, *callbacks],
    )
    resume = setup.resume
    train_result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate()
    # The final model is written into a staging folder and moved into place only when complete, so a kill while
    # saving never leaves truncated weights next to a new config (training/final_save.py).
    staging = output_dir / FINAL_STAGING_NAME
    if trainer.is_world_process_zero():
        start_final_save(output_dir)
    trainer.accelerator.wait_for_everyone()
    # weights (safetensors), config, model code and tokenizer; every process takes part (FSDP gathers the weights).
    # A LoRA run saves the adapter (adapter_config.json, adapter_model.safetensors) and the tokenizer.
    trainer.save_model(str(staging), _internal_call=True)
    lora = is_peft_model(trainer.model)

    trained_now = train_result.global_step - trainer._initial_global_step  # steps run by this call
    protocol = eval_protocol(data_args, train_dataset, eval_dataset)
    result: dict[str, Any] = {
        # Trainer reports 0.0 when a resumed run had nothing left to train; there is no loss to report then.
        "train_loss": train_result.training_loss if trained_now else None,
        "global_step": train_result.global_step,
        **eval_metrics,
        "num_input_tokens_seen": int(trainer.state.num_input_tokens_seen),
        "dataset": data_args.dataset,
        "eval_protocol": protocol,
        "resumed_from": resume,
        "model_dir": str(output_dir),
    }
    if model_args.merge_lora:
        result["merged_model_dir"] = str(output_dir / MERGED_DIR_NAME)
    if trainer.is_world_process_zero():
        # After a resume, the callback only saw the new logs: rebuild the curve from the complete log history.
        records = _history_from_log(trainer.state.log_history) or history.history
        label = f"validation loss ({protocol})"
        plot_loss_curves(records, staging / "loss.png", validation_label=label)
        result["plot"] = str(output_dir / "loss.png")
        result["metrics_file"] = str(output_dir / "metrics.json")
        write_json({**result, "history": records}, staging / "metrics.json")
        publish_final_save(staging, output_dir, adapter=lora)
    trainer.accelerator.wait_for_everyone()
    if training_args.push_to_hub:  # what save_model(output_dir) did before the final save was staged
        trainer.push_to_hub(commit_message="Model save", revision=training_args.hub_revision)
    if model_args.merge_lora and trainer.is_world_process_zero():  # last: merging changes the trained model in place
        write_merged_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, output_dir)
    trainer.accelerator.wait_for_everyone()
    return result


def write_merged_model(peft_model, tokenizer, output_dir: Path) -> Path:
    """`--merge_lora`: the base model with the adapter merged into its weights, as a plain ScratchGPT folder
    `output_dir/merged` (config, safetensors, code, tokenizer), staged and published by one rename like a checkpoint."""
    staging = start_staging(output_dir, MERGED_DIR_NAME)
    save_merged_model(peft_model, tokenizer, staging)
    publish_directory(staging, output_dir / MERGED_DIR_NAME, required=("config.json", "model.safetensors"))
    return output_dir / MERGED_DIR_NAME


def check_trainer_arguments(training_args: TrainingArguments) -> None:
    """Refuse, before any data is read, values Trainer would fail on mid-run with a bare ZeroDivisionError or
    OverflowError, and lengths that train no step (`check_training_length`)."""
    if training_args.gradient_accumulation_steps < 1:
        raise ValueError(
            f"--gradient_accumulation_steps must be an integer >= 1, got {training_args.gradient_accumulation_steps}"
        )
    if not math.isfinite(training_args.num_train_epochs):
        raise ValueError(f"--num_train_epochs must be a finite number, got {training_args.num_train_epochs}")
    check_training_length(training_args.max_steps, training_args.num_train_epochs)


def check_one_batch_each(training_args: TrainingArguments, train_dataset, eval_dataset) -> None:
    """Before training: each split must fill one batch (a final `evaluate()` always runs). With
    `dataloader_drop_last`, a validation split smaller than one batch is silently empty, and Trainer fails only
    after training (`KeyError` for `metric_for_best_model`)."""
    processes = training_args.world_size
    for split, dataset, batch_size, flag in (
        ("train", train_dataset, training_args.per_device_train_batch_size, "per_device_train_batch_size"),
        ("validation", eval_dataset, training_args.per_device_eval_batch_size, "per_device_eval_batch_size"),
    ):
        try:
            size = len(dataset)
        except TypeError:  # a streamed dataset: its length is not known up front
            continue
        needed = batch_size * processes if training_args.dataloader_drop_last else processes
        if size < needed:
            raise ValueError(
                f"the {split} split has {size} examples, fewer than {needed} "
                + (f"(one batch: {flag} {batch_size} x {processes} processes, with dataloader_drop_last)"
                   if training_args.dataloader_drop_last else "(one per process)")
                + "; use more text, a larger validation share, a smaller batch size or a smaller block size"
            )


def _history_from_log(log_history: list[dict]) -> list[dict]:
    rows = []
    for entry in log_history:
        record = {k: v for k, v in entry.items() if k == "loss" or (k.startswith("eval_") and k != "eval_runtime")}
        if record and all(isinstance(v, (int, float)) and math.isfinite(v) for v in record.values()):
            rows.append({"step": entry["step"], "tokens": int(entry.get("num_input_tokens_seen", 0)), **record})
    return rows


def write_json(data: dict, path: Path) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


@dataclass
class ScratchTrainingArguments(TrainingArguments):
    """`TrainingArguments` of `hf-scratch-gpt train`: `output_dir` is required (transformers would write into
    ./trainer_output), and `overwrite_output_dir` lets a run train into a folder that another program wrote."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where checkpoints, the final model, metrics.json and loss.png go (required).",
                  "required": True},  # HfArgumentParser hands `required` to argparse
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into --output_dir even though it holds files that no train run wrote (e.g. another "
                  "model); files of the same names are replaced. Without it such a folder is refused."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.output_dir is None:  # e.g. a .json file of arguments without it
            raise ValueError("output_dir is required: the folder for checkpoints, the final model and its metrics")
        super().__post_init__()


TRAIN_HELP = """Train with transformers' Trainer (`--loop trainer`, the default): from a preset, or fine-tune a saved
folder with --model_name_or_path. The flags are the fields of ModelArguments and DataArguments (sections below) and
of transformers' TrainingArguments (options); `--output_dir` is required. The explicit Accelerate loop has its own
flags: `hf-scratch-gpt train --loop accelerate --help`."""


def parse_train_arguments(
    argv: Sequence[str], prog: str = "hf-scratch-gpt train"
) -> tuple[ModelArguments, DataArguments, ScratchTrainingArguments]:
    """Command-line flags (or one .json file) → the three dataclasses, as in run_clm. `--help` lists every flag."""
    return FlagParser((ModelArguments, DataArguments, ScratchTrainingArguments), prog, TRAIN_HELP).parse_flags(argv)


def train_from_argv(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line's run (`hf-scratch-gpt train`); at the end it releases the process group of a
    multi-process run (`release_process_group`), so a process trains through it once."""
    try:
        return train_with_trainer(*parse_train_arguments(sys.argv[1:] if argv is None else argv))
    finally:
        release_process_group()


__all__ = [
    "LossHistoryCallback",
    "ScratchGPTTrainer",
    "ScratchTrainingArguments",
    "build_compute_metrics",
    "check_trainer_arguments",
    "parse_train_arguments",
    "preprocess_logits_for_metrics",
    "train_from_argv",
    "train_with_trainer",
]
