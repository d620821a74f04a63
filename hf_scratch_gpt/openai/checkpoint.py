"""Reading OpenAI's TF1 name-based checkpoints. The only module in the package that imports TensorFlow (lazily).

A checkpoint folder as OpenAI publishes it holds `checkpoint`, `hparams.json`, `encoder.json`, `vocab.bpe`,
`model.ckpt.index`, `model.ckpt.data-00000-of-00001` and `model.ckpt.meta`. The converter reads the first four
data files below plus the tokenizer pair; `checkpoint` and `.meta` (the TF graph) are not needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transformers.utils import logging

from ..loading import existing_folder, read_json_file
from .names import HPARAMS_TO_CONFIG, TensorRule, dimensions, expected_variables, map_openai_name, tf_shape_for

logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "model.ckpt"
# The files the converter reads; each missing one is named in the error.
REQUIRED_FILES = (
    "hparams.json",
    "encoder.json",
    "vocab.bpe",
    f"{CHECKPOINT_PREFIX}.index",
    f"{CHECKPOINT_PREFIX}.data-00000-of-00001",
)
INSTALL_HINT = "pip install 'hf-scratch-gpt[convert]'"


def import_tensorflow() -> Any:
    """TensorFlow, imported on first use, with its C++ start-up chatter silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"reading OpenAI's TensorFlow checkpoints needs TensorFlow, which is not installed: {INSTALL_HINT}"
        ) from error
    return tf


def read_hparams(path: str | os.PathLike) -> dict[str, int]:
    """hparams.json → {"n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"}, each a positive integer."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hparams file not found: {path}")
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object with {list(HPARAMS_TO_CONFIG)}, got {type(raw).__name__}")
    missing = [key for key in HPARAMS_TO_CONFIG if key not in raw]
    if missing:
        raise ValueError(f"{path} lacks {missing}; expected keys {list(HPARAMS_TO_CONFIG)}")
    for key in HPARAMS_TO_CONFIG:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    if raw["n_embd"] % raw["n_head"]:
        raise ValueError(f"{path}: n_embd={raw['n_embd']} is not divisible by n_head={raw['n_head']}")
    return {key: raw[key] for key in HPARAMS_TO_CONFIG}


@dataclass(frozen=True)
class PlannedTensor:
    tf_name: str
    rule: TensorRule
    tf_shape: tuple[int, ...]


class OpenAICheckpoint:
    """An opened, validated checkpoint folder: hparams, the plan of every weight, and tensor-by-tensor reads.

    Everything that can be checked without reading the weights is checked here, before any output is written:
    required files, hparams, every variable name known, none missing, every shape consistent with hparams, and the
    data file at least as long as the variables it must hold.
    """

    def __init__(self, ckpt_dir: str | os.PathLike) -> None:
        self.ckpt_dir = existing_folder(ckpt_dir, "checkpoint folder")
        missing = [name for name in REQUIRED_FILES if not (self.ckpt_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint folder {self.ckpt_dir} is missing {missing}")
        self.hparams = read_hparams(self.ckpt_dir / "hparams.json")
        self.prefix = self.ckpt_dir / CHECKPOINT_PREFIX
        self._tf = import_tensorflow()
        try:
            self._reader = self._tf.train.load_checkpoint(str(self.prefix))
        except Exception as error:  # TF raises its own OpError subclasses (DataLoss, NotFound, ...)
            raise ValueError(f"cannot open TensorFlow checkpoint {self.prefix}.index: {error}") from error
        self.shapes: dict[str, tuple[int, ...]] = {
            name: tuple(shape) for name, shape in self._reader.get_variable_to_shape_map().items()
        }
        self.dtypes = self._reader.get_variable_to_dtype_map()
        self.plan: list[PlannedTensor] = self._plan()
        self._check_data_size()

    def _plan(self) -> list[PlannedTensor]:
        n_layer = self.hparams["n_layer"]
        dims = dimensions(self.hparams)
        mapped = {name: map_openai_name(name, n_layer) for name in sorted(self.shapes)}
        ignored = sorted(name for name, rule in mapped.items() if rule is None)
        if ignored:
            logger.info(f"ignoring {len(ignored)} training-only variables, e.g. {ignored[:3]}")
        expected = expected_variables(n_layer)
        missing = [name for name in expected if name not in self.shapes]
        if missing:
            raise ValueError(
                f"checkpoint {self.prefix} is missing {len(missing)} variable(s) that hparams.json "
                f"(n_layer={n_layer}) requires: {missing[:5]}"
            )
        plan = []
        for tf_name, rule in expected.items():  # model order: wte, wpe, h0 … h{n-1}, ln_f
            want = tf_shape_for(rule, dims)
            if self.shapes[tf_name] != want:
                raise ValueError(
                    f"checkpoint variable {tf_name!r} has shape {list(self.shapes[tf_name])}, but hparams.json "
                    f"({self.hparams}) implies {list(want)}"
                )
            if self.dtypes[tf_name] != self._tf.float32:
                raise ValueError(f"checkpoint variable {tf_name!r} has dtype {self.dtypes[tf_name].name}, expected float32")
            plan.append(PlannedTensor(tf_name, rule, want))
        return plan

    def _check_data_size(self) -> None:
        """A truncated data file is caught here, before any output exists (TF would only fail on the read)."""
        data_file = self.ckpt_dir / REQUIRED_FILES[-1]
        needed = sum(
            math.prod(shape) * self.dtypes[name].size
            for name, shape in self.shapes.items()
            if self.dtypes[name].is_numpy_compatible and self.dtypes[name] != self._tf.string
        )
        have = data_file.stat().st_size
        if have < needed:
            raise ValueError(
                f"checkpoint data file {data_file} is truncated: {have} bytes, its variables need at least {needed}"
            )

    @property
    def total_parameters(self) -> int:
        return sum(math.prod(item.tf_shape) for item in self.plan)

    def read(self, tf_name: str) -> np.ndarray:
        """One variable as a float32 array (TF checks its CRC; a corrupt file raises here, naming the variable)."""
        try:
            return self._reader.get_tensor(tf_name)
        except Exception as error:
            raise ValueError(
                f"cannot read variable {tf_name!r} from {self.ckpt_dir / REQUIRED_FILES[-1]}: {error}"
            ) from error


__all__ = ["CHECKPOINT_PREFIX", "INSTALL_HINT", "OpenAICheckpoint", "REQUIRED_FILES", "import_tensorflow", "read_hparams"]
