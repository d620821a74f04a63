"""What both training paths (Trainer and the Accelerate loop) share: argument dataclasses (run_clm's shape),
tokenizer / model / dataset construction, the output folder's claim, resume and the non-finite-loss error.
Staged publishing of checkpoints and the final model is `final_save.py`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, HfArgumentParser, set_seed

from ..chat_template import ensure_chat_template
from ..configuration_scratch_gpt import PRESETS, ScratchGPTConfig
from ..data import (
    MESSAGES_COLUMN,
    STREAMING_EVAL_BLOCKS,
    CompletionCollator,
    LMBlockCollator,
    build_chat_datasets,
    build_lm_datasets,
    iterate_conversation_texts,
    iterate_texts,
    keep_pairs_with_targets,
    load_conversations,
    load_documents,
    looks_like_chat_data,
    split_stream_train_validation,
    split_train_validation,
    tokenize_prompt_completion,
    train_bpe_tokenizer,
)
from ..loading import check_tokenizer_files, load_model, read_json_file
from ..lora import DEFAULT_LORA_TARGETS, add_lora_adapter, check_lora_options, parse_lora_targets
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from .final_save import STAGING_PREFIX, prepare_output_dir, publish_directory, remove_stale_staging  # noqa: F401

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # the same names transformers' Trainer uses


@dataclass
class ModelArguments:
    """Which model to train: a preset from scratch, or a saved/converted folder to fine-tune."""

    _argument_group_name = "model (ModelArguments)"  # a section of `--help` (a class attribute, not a flag)

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Folder of a saved or converted ScratchGPT to fine-tune. Unset: from scratch."}
    )
    preset: str = field(default="tiny", metadata={"help": f"Shape when training from scratch: {sorted(PRESETS)}."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Override preset fields, e.g. 'n_embd=128,n_layer=4,n_positions=256'."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder. Unset: the model folder's, or a byte-level BPE trained on the train split."},
    )
    tokenizer_vocab_size: int = field(default=4096, metadata={"help": "Vocabulary size of a BPE trained here."})
    lora_r: int | None = field(
        default=None,
        metadata={"help": "Fine-tune --model_name_or_path with a LoRA adapter of this rank (PEFT; the base weights stay "
                  "frozen, checkpoints and the output hold only the adapter). Unset: train every weight."},
    )  # fmt: skip
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA: the update is scaled by lora_alpha / lora_r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA: dropout on the adapter's input."})
    lora_target: str = field(
        default=",".join(DEFAULT_LORA_TARGETS),
        metadata={"help": "LoRA: comma-separated Linear layers to adapt, by name (c_attn, c_proj, c_fc, attn.c_proj, "
                  "mlp.c_proj)."},
    )  # fmt: skip
    merge_lora: bool = field(
        default=False,
        metadata={"help": "LoRA: also write the merged model (base + adapter, a plain folder that needs no peft) into "
                  "OUTPUT_DIR/merged at the end."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        # Checked when the flags are parsed, before any data is read.
        if self.lora_r is None:
            if self.merge_lora:
                raise ValueError("--merge_lora merges a LoRA adapter: it needs --lora_r")
            return
        check_lora_options(self.lora_r, self.lora_alpha, self.lora_dropout)
        if self.model_name_or_path is None:
            raise ValueError(
                f"--lora_r {self.lora_r} adapts a trained model: pass its folder with --model_name_or_path (LoRA "
                "cannot train a model from scratch)"
            )


@dataclass
class DataArguments:
    """Which text, and how it becomes examples."""

    _argument_group_name = "data (DataArguments)"  # a section of `--help` (a class attribute, not a flag)

    dataset: str = field(
        default="pydoc",
        metadata={
            "help": "'pydoc' (embedded corpus); a .txt/.jsonl/.json/.parquet file, a folder or a glob of them; "
            "or a Hugging Face Hub dataset id (name or owner/name)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of a Hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset to train on."})
    text_column: str = field(default="text")
    validation_fraction: float = field(default=0.05, metadata={"help": "Share of documents held out."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/validation split."})
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training block (default: the model's n_positions)."}
    )
    prompt_column: str | None = field(
        default=None,
        metadata={"help": "Fine-tune on prompt/completion records: the prompt column (its tokens get label -100)."},
    )
    completion_column: str = field(default="completion")
    messages_column: str | None = field(
        default=None,
        metadata={"help": "Fine-tune on chat records {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}: the "
                  "column of messages; the loss is taken on assistant tokens only. Unset: 'messages' when a local "
                  "file's first record has it and no text column (docs/chat.md)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={"help": "Processes for tokenizing (as run_clm). Unset: the machine's cores for large corpora, "
                  "one process for small ones (under 10k documents per worker)."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read, tokenize and pack on the fly (IterableDataset, nothing cached); needs max_steps "
                  "and a tokenizer (--tokenizer_name_or_path or a model folder)."},
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "With --streaming: blocks in the seeded shuffle buffer of the train split."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": f"Cap on validation examples (blocks). Default: all; with --streaming {STREAMING_EVAL_BLOCKS}."},
    )


class FlagParser(HfArgumentParser):
    """`HfArgumentParser` for the command line: a short usage line instead of every flag, and a mistake (an unknown
    flag, a bad value) raises `ValueError` with one line, which the CLI prints without a traceback."""

    def __init__(self, dataclass_types, prog: str, description: str) -> None:
        super().__init__(
            dataclass_types, prog=prog, description=description, usage=f"{prog} [FLAGS] | {prog} ARGS.json",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    def error(self, message: str):
        raise ValueError(f"{self.prog}: {message} (`{self.prog} --help` lists the flags)")

    def parse_flags(self, argv: Sequence[str]) -> tuple[Any, ...]:
        """Flags, or a single .json file of them, → one instance per dataclass; refuses any flag it does not know,
        and a .json file that lacks a required one (as the flags do)."""
        argv = list(argv)
        if len(argv) == 1 and argv[0].endswith(".json"):
            path = os.path.abspath(argv[0])
            try:
                given = read_json_file(Path(argv[0]))
            except ValueError as error:  # not UTF-8, not JSON, or nested absurdly deep: named in one line
                self.error(str(error))
            if not isinstance(given, dict):
                self.error(f"{argv[0]} holds {type(given).__name__}, expected a JSON object of flag: value")
            missing = [name for name in self.required_fields() if name not in given]
            if missing:
                self.error(f"{argv[0]} lacks the required {', '.join(missing)}")
            return self.parse_json_file(json_file=path)
        *parsed, unknown = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return tuple(parsed)

    def required_fields(self) -> list[str]:
        """Fields without a default, or marked `metadata={"required": True}` (which HfArgumentParser hands to
        argparse as `required=True`)."""
        return [
            item.name for dtype in self.dataclass_types for item in dataclasses.fields(dtype) if item.init and (
                item.metadata.get("required")
                or (item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING)
            )
        ]  # fmt: skip


def progress_bars_on_main_process_only(is_local_main_process: bool) -> None:
    """Under torchrun every process runs the data pipeline; only one per machine shows its progress bars."""
    if not is_local_main_process:
        import datasets
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


def release_process_group() -> None:
    """End of a command-line run: destroy the process group of a multi-process run and free it (no-op in one
    process).

    Left to interpreter exit, gloo's threads can be torn down mid-flight and a process aborts ("terminate called
    without an active exception", SIGABRT) after a complete run, failing the launch. Destroying the group is not
    enough after FSDP2: DTensor keeps each DeviceMesh it has planned for in module-level caches, a mesh keeps its
    process groups, and so gloo's threads (`gloo_tcp_loop`, `pt_gloo_runloop`) ran on until exit; those caches are
    emptied here so the groups are freed, and their threads joined, now."""
    import gc
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    if "torch.distributed.tensor" in sys.modules:
        _clear_dtensor_caches()
    gc.collect()


def _clear_dtensor_caches() -> None:
    """Empty DTensor's caches that hold DeviceMeshes: the redistribution planners (a dict), the sharding
    propagation cache, and every `functools` cache defined in `torch.distributed` (e.g. `_gen_transform_infos`,
    `MeshTopoInfo.build_from_mesh`), found by walking the live objects so a cache a later torch adds is included."""
    import functools
    import gc

    from torch.distributed.tensor import _redistribute, debug

    getattr(_redistribute, "clear_redistribute_planner_cache", lambda: None)()
    getattr(debug, "_clear_sharding_prop_cache", lambda: None)()
    for obj in gc.get_objects():
        if not isinstance(obj, functools._lru_cache_wrapper):
            continue
        if (getattr(obj, "__module__", None) or "").startswith("torch.distributed"):
            obj.cache_clear()


def parse_overrides(text: str | None) -> dict[str, Any]:
    """'n_embd=128,n_layer=4,resid_pdrop=0.0' → {'n_embd': 128, 'n_layer': 4, 'resid_pdrop': 0.0}."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override {item!r} is not of the form key=value")
        if key not in ScratchGPTConfig.__dataclass_fields__:
            raise ValueError(f"config override {key!r} is not a ScratchGPTConfig field")
        for convert in (int, float):
            try:
                overrides[key] = convert(value)
                break
            except ValueError:
                continue
        else:
            overrides[key] = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return overrides


def detect_chat_data(data_args: DataArguments) -> str | None:
    """The column of chat messages when the data is conversations, else None. Sets `data_args.messages_column` to
    'messages' when it is unset and a local file's first record holds messages and no text column, so every later
    step (and the saved arguments) sees one answer. Refuses chat data with prompt/completion columns or streaming."""
    if data_args.messages_column is None and data_args.prompt_column is None and looks_like_chat_data(
        data_args.dataset, data_args.text_column, MESSAGES_COLUMN
    ):
        logger.info("%s holds conversations (%r): chat fine-tuning", data_args.dataset, MESSAGES_COLUMN)
        data_args.messages_column = MESSAGES_COLUMN
    if data_args.messages_column is not None:
        if data_args.prompt_column is not None:
            raise ValueError(
                "give either --messages_column (chat data) or --prompt_column (prompt/completion), not both"
            )
        if data_args.streaming:
            raise ValueError("--streaming is for language-model blocks; chat fine-tuning needs the cached path")
    return data_args.messages_column


def build_tokenizer(
    model_args: ModelArguments, train_documents, text_column: str = "text", messages_column: str | None = None
):
    """The tokenizer folder's (or the model folder's) tokenizer, or a byte-level BPE trained on the train split.
    For chat data (`messages_column`) it gets the package's chat template unless it already has one
    (`ensure_chat_template`)."""
    source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if source is not None:
        if not Path(source).is_dir():
            raise FileNotFoundError(f"tokenizer folder {source!r} does not exist")
        check_tokenizer_files(source)  # a corrupt tokenizer.json is named, not a bare JSONDecodeError
        tokenizer = AutoTokenizer.from_pretrained(source)
    elif not hasattr(train_documents, "__len__"):  # a stream: a BPE would have to read all of it first
        raise ValueError("--streaming needs a trained tokenizer: pass --tokenizer_name_or_path (or a model folder)")
    else:
        vocab_size = model_args.tokenizer_vocab_size
        logger.info("training a byte-level BPE tokenizer (vocab %d) on the train split", vocab_size)
        texts = (
            iterate_conversation_texts(train_documents, messages_column) if messages_column is not None
            else iterate_texts(train_documents, text_column)
        )  # fmt: skip
        tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    if messages_column is not None and ensure_chat_template(tokenizer):
        logger.info("the tokenizer had no chat template: it gets hf_scratch_gpt.chat_template.CHAT_TEMPLATE")
    return tokenizer


def build_model(model_args: ModelArguments, tokenizer) -> ScratchGPTForCausalLM:
    """From scratch: the preset with the tokenizer's vocabulary and special ids. Fine-tune: the saved folder; with
    `lora_r`, wrapped with a trainable LoRA adapter (`hf_scratch_gpt.lora.add_lora_adapter`, a PEFT model)."""
    if model_args.model_name_or_path is not None:
        if not Path(model_args.model_name_or_path).is_dir():
            raise FileNotFoundError(f"model folder {model_args.model_name_or_path!r} does not exist")
        # Checked first (config, safetensors only, every tensor present with its shape): never a random init.
        model = load_model(model_args.model_name_or_path)
    else:
        overrides = {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **parse_overrides(model_args.config_overrides),
        }
        model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset(model_args.preset, **overrides))
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    if model_args.lora_r is not None:  # the base is frozen; only the adapter trains (a PeftModelForCausalLM)
        model = add_lora_adapter(
            model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
            parse_lora_targets(model_args.lora_target), base_model_name_or_path=model_args.model_name_or_path,
        )  # fmt: skip
    return model


def build_datasets(data_args: DataArguments, tokenizer, model, documents) -> tuple[Any, Any, Any]:
    """(train, validation, collator): token blocks for language modelling, or padded prompt/completion pairs."""
    block_size = data_args.block_size or model.config.n_positions
    if block_size > model.config.n_positions:
        raise ValueError(f"block_size {block_size} exceeds the model's n_positions {model.config.n_positions}")
    if data_args.messages_column is not None:
        conversations = build_chat_datasets(
            documents, tokenizer, block_size, data_args.messages_column, num_proc=data_args.preprocessing_num_workers
        )
        validation = conversations["validation"]
        if data_args.max_eval_samples is not None:
            validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
        return conversations["train"], validation, CompletionCollator(pad_token_id=_pad_id(tokenizer))
    if data_args.prompt_column is None:
        blocks = build_lm_datasets(
            documents, tokenizer, block_size, text_column=data_args.text_column,
            num_proc=data_args.preprocessing_num_workers, shuffle_buffer=data_args.shuffle_buffer_size,
        )  # fmt: skip
        validation = blocks["validation"]
        cap = data_args.max_eval_samples or (STREAMING_EVAL_BLOCKS if data_args.streaming else None)
        if cap is not None:
            validation = validation.take(cap) if data_args.streaming else validation.select(range(min(cap, len(validation))))
        return blocks["train"], validation, LMBlockCollator()
    if data_args.streaming:
        raise ValueError("--streaming is for language-model blocks; prompt/completion fine-tuning needs the cached path")
    for column in (data_args.prompt_column, data_args.completion_column):
        if column not in documents["train"].column_names:
            raise ValueError(f"the dataset has no column {column!r}; its columns are {documents['train'].column_names}")
    pairs = documents.map(
        tokenize_prompt_completion,
        batched=True,
        remove_columns=documents["train"].column_names,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_length": block_size,
            "prompt_column": data_args.prompt_column,
            "completion_column": data_args.completion_column,
        },
        desc="Tokenizing prompt/completion pairs",
    )
    # Every pair left has a target token, so no batch trains (or evaluates) on 0 target tokens.
    train, validation = (keep_pairs_with_targets(pairs[split], split, block_size) for split in ("train", "validation"))
    return train, validation, CompletionCollator(pad_token_id=_pad_id(tokenizer))


def _pad_id(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    return pad_id


def eval_protocol(data_args: DataArguments, train_dataset, eval_dataset) -> str:
    """How `eval_loss`/`eval_perplexity` were measured, in words (for metrics.json, the plot and model cards)."""
    if data_args.messages_column is not None:
        return "assistant tokens of held-out conversations"
    if data_args.prompt_column is not None:
        return "completion tokens of held-out prompt/completion pairs"
    if not hasattr(eval_dataset, "__len__"):  # a stream (IterableDataset): every block has the same length
        block_size = len(next(iter(eval_dataset))["input_ids"])
    else:
        block_size = len(eval_dataset[0]["input_ids"]) if len(eval_dataset) else len(train_dataset[0]["input_ids"])
    return f"{block_size}-token blocks across document boundaries"


def load_and_split(data_args: DataArguments):
    if detect_chat_data(data_args) is not None:
        conversations = load_conversations(
            data_args.dataset, data_args.messages_column, data_args.dataset_config_name, data_args.dataset_split,
            num_proc=data_args.preprocessing_num_workers,
        )  # fmt: skip
        return split_train_validation(conversations, data_args.validation_fraction, data_args.split_seed)
    # For prompt/completion records the prompt and the completion are the columns that must exist and hold text.
    column = data_args.prompt_column or data_args.text_column
    completion = (data_args.completion_column,) if data_args.prompt_column is not None else ()
    documents = load_documents(
        data_args.dataset, column, data_args.dataset_config_name, data_args.dataset_split,
        streaming=data_args.streaming, num_proc=data_args.preprocessing_num_workers, other_text_columns=completion,
    )  # fmt: skip
    if data_args.streaming:
        return split_stream_train_validation(documents, data_args.validation_fraction, data_args.split_seed)
    return split_train_validation(documents, data_args.validation_fraction, data_args.split_seed)


@dataclass
class TrainingSetup:
    """What both training paths build before they train (`set_up_training`)."""

    tokenizer: Any
    model: ScratchGPTForCausalLM
    train_dataset: Any
    eval_dataset: Any
    collator: Any
    resume: str | None  # the checkpoint folder to resume from; None: from the start


def set_up_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    output_dir: str | os.PathLike,
    seed: int,
    resume_from_checkpoint: str | bool | None,
    is_main_process: bool = True,
    is_local_main_process: bool = True,
    main_process_first: Callable[[], AbstractContextManager] = nullcontext,
) -> TrainingSetup:
    """The start both training paths share, run once the output folder is claimed (`claim_output_dir`): seed, build
    the tokenizer, model and datasets, ready the output folder (`final_save.prepare_output_dir`, main process) and
    find the checkpoint to resume from (`resolve_resume`).

    `main_process_first`: the Accelerate loop passes `accelerator.main_process_first`, so that one process fills the
    datasets cache and the others read it; under `Trainer` every process builds its own."""
    set_seed(seed)
    progress_bars_on_main_process_only(is_local_main_process)
    with main_process_first():
        documents = load_and_split(data_args)
        tokenizer = build_tokenizer(model_args, documents["train"], data_args.text_column, data_args.messages_column)
        model = build_model(model_args, tokenizer)
        train_dataset, eval_dataset, collator = build_datasets(data_args, tokenizer, model, documents)
    if is_main_process:
        prepare_output_dir(output_dir)
    resume = resolve_resume(resume_from_checkpoint, output_dir)
    return TrainingSetup(tokenizer, model, train_dataset, eval_dataset, collator, resume)


# ---------------------------------------------------------------------------------------------------------------------
# Training length
# ---------------------------------------------------------------------------------------------------------------------
def check_training_length(max_steps: int, num_train_epochs: float | None = None) -> None:
    """Refuse a length that trains no step (or, for `max_steps=0`, Trainer's one stray step) yet reports success.

    `TrainingArguments` semantics: `max_steps > 0` wins; a negative `max_steps` (default -1) means "count
    `num_train_epochs`". The Accelerate loop counts steps only (`num_train_epochs=None`).
    """
    if num_train_epochs is None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        return
    if max_steps == 0 or (max_steps < 0 and not num_train_epochs > 0):
        raise ValueError(
            f"nothing to train: max_steps={max_steps} and num_train_epochs={num_train_epochs}; set max_steps >= 1, "
            "or leave max_steps at -1 and set num_train_epochs > 0"
        )


def check_resume_step(checkpoint_step: int, max_steps: int, checkpoint: str | os.PathLike) -> None:
    """A resumed run ends exactly at `max_steps`: refuse a checkpoint that is already past it."""
    if checkpoint_step > max_steps:
        raise ValueError(
            f"{checkpoint} is at step {checkpoint_step}, beyond max_steps {max_steps}: a resumed run cannot end at "
            f"max_steps; set max_steps >= {checkpoint_step} or resume from an earlier checkpoint"
        )


# ---------------------------------------------------------------------------------------------------------------------
# The output folder: train writes only into a folder it wrote itself, and one run at a time
# ---------------------------------------------------------------------------------------------------------------------
# Marks a folder as a train output, and is locked (fcntl.flock) for as long as a run writes into the folder. It holds
# the process id and host of the last run that claimed it. It stays when the run ends: removing a lock file that
# another process may have open would let two runs lock two different files.
TRAIN_OUTPUT_MARK = ".hf-scratch-gpt-train.lock"


class OutputDirInUseError(OSError):
    """Another train run holds the output folder's lock."""


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse (`FileExistsError`) an output folder that train did not write, e.g. another model: train would replace
    its config and weights. Fine: a new or empty folder, one a train run marked (`TRAIN_OUTPUT_MARK`: to resume or
    train again), or one that holds nothing but checkpoints (`checkpoint-N`, e.g. copied to resume from) and
    staging folders. `overwrite=True` (`--overwrite_output_dir`) trains into any other folder, with a warning."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} exists and is not a folder")
    if not output_dir.exists() or (output_dir / TRAIN_OUTPUT_MARK).is_file():
        return
    entries = sorted(
        entry.name for entry in output_dir.iterdir()
        if not (entry.is_dir() and (CHECKPOINT_PATTERN.match(entry.name) or entry.name.startswith(STAGING_PREFIX)))
    )  # fmt: skip
    if not entries:
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    if overwrite:
        logger.warning(
            "--overwrite_output_dir: training into %s, which train did not write (it holds %s); files of the same "
            "names are replaced", output_dir, shown,
        )  # fmt: skip
        return
    raise FileExistsError(
        f"--output_dir {output_dir} holds files that train did not write ({shown}); train would replace its model "
        "files. Choose a new or empty folder, or pass --overwrite_output_dir to train into it anyway"
    )


@contextmanager
def claim_output_dir(
    output_dir: str | os.PathLike, overwrite: bool = False, is_main_process: bool = True
) -> Iterator[None]:
    """For the duration of a run: `check_output_dir`, then hold an exclusive lock on the folder's
    `TRAIN_OUTPUT_MARK` (created if missing, which marks the folder as a train output). A second run into the same
    folder fails at once with `OutputDirInUseError` naming the process that holds it. The kernel releases the lock
    when the process ends, however it ends, so a killed run never leaves a stale lock. Only the main process of a
    multi-process run claims the folder (the others write into it under its claim)."""
    if not is_main_process:
        yield
        return
    import fcntl  # POSIX; the package's training runs on Linux and macOS

    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / TRAIN_OUTPUT_MARK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirInUseError(
                f"--output_dir {output_dir} is in use by another train run ({_describe_holder(fd)}); wait for it to "
                "end or choose another folder"
            ) from None
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"process {holder['pid']} on {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its id"


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before the optimizer applies the bad update."""


def non_finite_message(loss: float, step: int, output_dir: str | os.PathLike) -> str:
    last = last_checkpoint(output_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
    return (
        f"training stopped: the loss became {loss} at step {step}; the update was not applied and {kept}. "
        "Lower the learning rate, enable gradient clipping or check the data, then resume."
    )


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete `checkpoint-N` folder with the largest N (staging folders never match), or None."""
    if not Path(output_dir).is_dir():
        return None
    steps = [
        (int(match.group(1)), entry.name)
        for entry in Path(output_dir).iterdir()
        if entry.is_dir() and (match := CHECKPOINT_PATTERN.match(entry.name))
    ]
    return str(Path(output_dir) / max(steps)[1]) if steps else None


def resolve_resume(resume: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """None/False/'' → None; True/'last'/'true' → the last complete checkpoint (None when there is none); else a path."""
    if resume in (None, False, ""):
        return None
    if resume is True or str(resume).lower() in ("last", "true"):
        found = last_checkpoint(output_dir)
        if found is None:
            logger.warning("no complete checkpoint in %s; starting from scratch", output_dir)
        return found
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"checkpoint {resume!r} does not exist")
    return str(resume)
