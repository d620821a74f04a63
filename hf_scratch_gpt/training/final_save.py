"""Staged publishing, the one way `train` writes a checkpoint or its final model: everything is written into a
staging folder (`.incomplete-NAME`, never picked by a resume and deleted at the next start), its files are made
durable, and one rename publishes it. A run killed at any moment leaves either the previous folder or the new, complete
one; never a half-written `checkpoint-N` or truncated weights next to a new config.

- A checkpoint (`checkpoint-N`) is a folder of its own: `publish_directory` renames the staging folder to it.
- The final model (model, config, code, tokenizer, metrics.json, loss.png) goes into `output_dir` itself, which also
  holds the run's checkpoints, so it cannot be swapped by one rename. `publish_final_save` instead
  1. publishes the staging folder `output_dir/.incomplete-final` as `output_dir/.complete-final` (the commit point,
     `publish_directory`): from here on the new model is complete on disk and the save is rolled forward, never back;
  2. moves its files into `output_dir` one by one (renames, no copies), deletes weight files of the previous model
     that the new one does not have (e.g. shards when the new model is one file), and removes the folder.
  A kill during step 2 leaves `.complete-final`; `finish_interrupted_final_save` (run at every start of `train`)
  completes the move, and `hf_scratch_gpt.loading.check_model_folder` refuses the folder until then.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..loading import INTERRUPTED_FINAL_SAVE_NAME, read_json_file

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".incomplete-"  # never matches a checkpoint name, so a half-written checkpoint is never picked
FINAL_STAGING_NAME = f"{STAGING_PREFIX}final"
FINAL_READY_NAME = INTERRUPTED_FINAL_SAVE_NAME  # loading.check_model_folder refuses a folder holding it
# Weight files of a saved model or LoRA adapter: what must not survive from the previous final model next to the new
# one (a full model after an adapter, or an adapter after a full model, into the same folder).
WEIGHT_FILE_NAME = re.compile(
    r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$|^adapter_(model\.safetensors|config\.json)$"
)
# What a staged LoRA adapter must hold (PeftModel.save_pretrained, safetensors).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def start_staging(output_dir: str | os.PathLike, name: str) -> Path:
    """A fresh, empty staging folder `output_dir/.incomplete-NAME` for what will be published as `name`."""
    staging = Path(output_dir) / f"{STAGING_PREFIX}{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_directory(staging: Path, final: Path, required: Sequence[str] = ()) -> None:
    """Move a completely written folder to its final name in one rename (atomic on one filesystem), its files made
    durable first and the rename after.

    `required`: files the folder must hold (e.g. its weights); without one of them it is not published
    (`FileNotFoundError`), so a `checkpoint-N` that resume would pick is never an incomplete one."""
    staging, final = Path(staging), Path(final)
    missing = [name for name in required if not (staging / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{staging} lacks {missing}: it is not published as {final}")
    for path in staging.iterdir():  # durable before the commit point (the rename below)
        if path.is_file():
            _fsync(path)
    if final.exists():  # saving the same step again: move the old one aside first, then swap
        retired = final.with_name(f"{STAGING_PREFIX}retired-{final.name}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync(final.parent)  # make the rename itself durable


def remove_stale_staging(output_dir: str | os.PathLike) -> None:
    """Delete staging folders left by a run that was killed while saving (they were never complete)."""
    if Path(output_dir).is_dir():
        for entry in Path(output_dir).iterdir():
            if entry.is_dir() and entry.name.startswith(STAGING_PREFIX):
                logger.warning("removing incomplete checkpoint %s left by an interrupted save", entry)
                shutil.rmtree(entry, ignore_errors=True)


def prepare_output_dir(output_dir: str | os.PathLike) -> None:
    """At the start of a run (main process): the folder exists, a final save interrupted after its commit point is
    completed, and staging folders of saves interrupted before it are deleted."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    finish_interrupted_final_save(output_dir)
    remove_stale_staging(output_dir)


def start_final_save(output_dir: str | os.PathLike) -> Path:
    """A fresh, empty staging folder inside `output_dir` for the final model and its files."""
    return start_staging(output_dir, FINAL_STAGING_NAME.removeprefix(STAGING_PREFIX))


def check_staged_model(staging: str | os.PathLike, adapter: bool = False) -> None:
    """A staged final save must hold a complete model: config.json and its weights (model.safetensors, or the index
    and every shard it names); with `adapter`, a complete LoRA adapter (`ADAPTER_FILES`). Raises `FileNotFoundError`
    naming what is missing."""
    staging = Path(staging)
    if adapter:
        _refuse_incomplete(staging, [name for name in ADAPTER_FILES if not (staging / name).is_file()])
        return
    missing = [] if (staging / CONFIG_NAME).is_file() else [CONFIG_NAME]
    index = staging / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(read_json_file(index)["weight_map"].values()))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index ({error})") from error
        missing += [name for name in shards if not (staging / name).is_file()]
    elif not (staging / SAFE_WEIGHTS_NAME).is_file():
        missing.append(SAFE_WEIGHTS_NAME)
    _refuse_incomplete(staging, missing)


def _refuse_incomplete(staging: Path, missing: list[str]) -> None:
    if missing:
        raise FileNotFoundError(
            f"the final save in {staging} lacks {missing}; nothing was published, the model in {staging.parent} is "
            "left as it was"
        )


def publish_final_save(staging: str | os.PathLike, output_dir: str | os.PathLike, adapter: bool = False) -> None:
    """Make the completely written `staging` folder the final model in `output_dir` (see the module docstring).
    A staged folder without its config or weights (with `adapter`: without the adapter's) is refused
    (`check_staged_model`) before anything moves."""
    staging, output_dir = Path(staging), Path(output_dir)
    check_staged_model(staging, adapter=adapter)
    ready = output_dir / FINAL_READY_NAME
    if ready.exists():  # left by an earlier interrupted move: finish it first, so files are never mixed
        _move_into(ready, output_dir)
    publish_directory(staging, ready)  # the commit point
    _move_into(ready, output_dir)


def finish_interrupted_final_save(output_dir: str | os.PathLike) -> None:
    """Complete a final save that was killed after its commit point (a `.complete-final` folder is left)."""
    ready = Path(output_dir) / FINAL_READY_NAME
    if ready.is_dir():
        logger.warning("completing the final save of %s that was interrupted while moving files into place", output_dir)
        _move_into(ready, Path(output_dir))


def _move_into(ready: Path, output_dir: Path) -> None:
    new_names = {path.name for path in ready.iterdir()}
    for path in output_dir.iterdir():
        if path.is_file() and WEIGHT_FILE_NAME.match(path.name) and path.name not in new_names:
            path.unlink()
    for path in sorted(ready.iterdir()):
        os.replace(path, output_dir / path.name)  # files only (save_pretrained writes no folders)
    ready.rmdir()
    _fsync(output_dir)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "ADAPTER_FILES", "check_staged_model", "finish_interrupted_final_save", "prepare_output_dir", "publish_directory",
    "publish_final_save", "remove_stale_staging", "start_final_save", "start_staging",
]
