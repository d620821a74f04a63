"""The final save of `train` (model, config, code, tokenizer, metrics.json, loss.png) into `output_dir`, crash-safe.

`output_dir` also holds the run's checkpoints, so it cannot itself be swapped by one rename. Instead:
1. everything is written into `output_dir/.incomplete-final` (a kill here leaves the previous final model
   untouched; the folder is a staging folder, deleted at the next start like an incomplete checkpoint);
2. that folder is renamed to `output_dir/.complete-final` in one atomic rename: from here on the new model is
   complete on disk and the save is rolled forward, never back;
3. its files are moved into `output_dir` one by one (renames, no copies), weight files of the previous model that
   the new one does not have (e.g. shards when the new model is one file) are deleted, and the folder is removed.
A kill during step 3 leaves `.complete-final`; `finish_interrupted_final_save` (run at every start of `train`)
completes the move, and `hf_scratch_gpt.loading.check_model_folder` refuses the folder until then.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..loading import INTERRUPTED_FINAL_SAVE_NAME
from .components import STAGING_PREFIX

logger = logging.getLogger(__name__)

FINAL_STAGING_NAME = f"{STAGING_PREFIX}final"
FINAL_READY_NAME = INTERRUPTED_FINAL_SAVE_NAME  # loading.check_model_folder refuses a folder holding it
# Weight files of a saved model: what must not survive from the previous final model next to the new one.
WEIGHT_FILE_NAME = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")


def start_final_save(output_dir: str | os.PathLike) -> Path:
    """A fresh, empty staging folder inside `output_dir` for the final model and its files."""
    staging = Path(output_dir) / FINAL_STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def check_staged_model(staging: str | os.PathLike) -> None:
    """A staged final save must hold a complete model: config.json and its weights (model.safetensors, or the index
    and every shard it names). Raises `FileNotFoundError` naming what is missing."""
    staging = Path(staging)
    missing = [] if (staging / CONFIG_NAME).is_file() else [CONFIG_NAME]
    index = staging / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index ({error})") from error
        missing += [name for name in shards if not (staging / name).is_file()]
    elif not (staging / SAFE_WEIGHTS_NAME).is_file():
        missing.append(SAFE_WEIGHTS_NAME)
    if missing:
        raise FileNotFoundError(
            f"the final save in {staging} lacks {missing}; nothing was published, the model in {staging.parent} is "
            "left as it was"
        )


def publish_final_save(staging: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Make the completely written `staging` folder the final model in `output_dir` (see the module docstring).
    A staged folder without its config or weights is refused (`check_staged_model`) before anything moves."""
    staging, output_dir = Path(staging), Path(output_dir)
    check_staged_model(staging)
    for path in staging.iterdir():  # durable before the commit point (the rename below)
        if path.is_file():
            _fsync(path)
    ready = output_dir / FINAL_READY_NAME
    if ready.exists():  # left by an earlier interrupted move: finish it first, so files are never mixed
        _move_into(ready, output_dir)
    os.replace(staging, ready)
    _fsync(output_dir)
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


__all__ = ["check_staged_model", "finish_interrupted_final_save", "publish_final_save", "start_final_save"]
