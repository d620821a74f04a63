"""Load a saved ScratchGPT folder (or Hub repo) with clear errors and without ever unpickling weights.

`from_pretrained` alone, on transformers 5.23, answers bad folders obscurely or not at all (measured, see
`tests/test_loading.py`; the model class's own `from_pretrained` now refuses the items marked *):

- a truncated or corrupted `model.safetensors` → `SafetensorError: Error while deserializing header: ...`
  without the file's name (*);
- a folder without `config.json` → "Unrecognized model in DIR. Should have a `model_type` key";
- `model_type: gpt2` → a size-mismatch report (and, for square projections, silently transposed weights);
  an unknown `model_type` → a `trust_remote_code` prompt;
- a folder holding only `pytorch_model.bin` → loads it through pickle (*);
- a checkpoint missing a tensor → loads with that tensor freshly initialised, only a logged report (*);
- a `model.safetensors.index.json` naming `../x.safetensors` or an absolute path → reads it (*).

`load_model` checks each of these first and raises `FileNotFoundError`/`ValueError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .configuration_scratch_gpt import ScratchGPTConfig
from .checks_scratch_gpt import (
    INTERRUPTED_FINAL_SAVE_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    UNSAFE_WEIGHT_NAMES,
    check_weight_files,
    is_plain_file_name,
)
from .modeling_scratch_gpt import ScratchGPTForCausalLM

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")
# What a Hub download of a model needs: config, weights as safetensors, tokenizer, generation config, code, card.
HUB_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.py", "*.md", "*.jinja"]


def resolve_model_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as it is; anything else is taken as a Hub repo id and downloaded (safetensors only).

    Raises `FileNotFoundError` for a path that does not exist and cannot be a repo id.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; expected a model folder (with {CONFIG_NAME}) or a Hub repo id")
    text = str(name_or_path)
    # A Hub id is "name" or "owner/name"; anything with more parts or a leading ./ ~ / is meant as a local path.
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text):
        raise FileNotFoundError(f"model folder {path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=HUB_DOWNLOAD_PATTERNS))
    except Exception as error:  # offline, unknown repo, gated, ...: say both readings of the argument failed
        raise FileNotFoundError(
            f"{text!r} is not a local folder, and downloading it as a Hub repo failed: {type(error).__name__}: {error}"
        ) from error


def read_config(folder: str | os.PathLike) -> ScratchGPTConfig:
    """Read `config.json` of a saved ScratchGPT folder; `FileNotFoundError`/`ValueError` naming the file."""
    config_file = Path(folder) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: a saved ScratchGPT folder needs the config.json written by save_pretrained"
        )
    try:
        config_dict = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config_dict, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(config_dict).__name__}")
    model_type = config_dict.get("model_type")
    if model_type != ScratchGPTConfig.model_type:
        hint = " (a transformers GPT-2 folder: import it with hf_scratch_gpt.from_hf_gpt2)" if model_type == "gpt2" else ""
        raise ValueError(
            f"{config_file} has model_type {model_type!r}, expected {ScratchGPTConfig.model_type!r}{hint}"
        )
    try:
        return ScratchGPTConfig.from_dict(config_dict)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_file} holds an invalid ScratchGPT config: {error}") from error


def read_tensor_shapes(weight_file: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a safetensors file, reading only its header.

    A truncated or corrupted file raises `ValueError` naming it (safetensors checks that the header is well formed
    and that its offsets cover exactly the bytes in the file).
    """
    try:
        with safe_open(str(weight_file), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except SafetensorError as error:
        raise ValueError(
            f"{weight_file} is not a readable safetensors file ({error}); it is truncated or corrupted — "
            f"save or download it again"
        ) from error


def check_model_folder(folder: str | os.PathLike) -> ScratchGPTConfig:
    """Check a saved folder without loading its weights: config, weight files, tensor names and shapes.

    Returns the config. Raises `FileNotFoundError`/`ValueError` naming the file at fault.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config = read_config(folder)
    expected = {name: tuple(tensor.shape) for name, tensor in _shape_only_state_dict(config).items()}
    found: dict[str, tuple[int, ...]] = {}
    origin: dict[str, Path] = {}
    for weight_file in check_weight_files(folder):
        for name, shape in read_tensor_shapes(weight_file).items():
            found[name], origin[name] = shape, weight_file
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(found) - tied)
    if missing:
        raise ValueError(f"weights in {folder} lack tensors the config needs: {missing}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(f"{origin[unexpected[0]]} holds tensors a ScratchGPT model does not have: {unexpected}")
    for name, shape in found.items():
        if shape != expected[name]:
            raise ValueError(
                f"{origin[name]}: tensor {name} has shape {shape}, but {folder / CONFIG_NAME} implies {expected[name]}"
            )
    return config


def _shape_only_state_dict(config: ScratchGPTConfig):
    """The model's state dict on the meta device: names and shapes without allocating memory."""
    import torch

    with torch.device("meta"):
        return ScratchGPTForCausalLM(config).state_dict()


# The dtypes a model can be loaded in, by the names the CLI and configs use. bfloat16 halves the bytes a decoding
# step reads (the issue measured ~1.5x GPT-2's fp32 decoding on AVX512-BF16 CPUs).
LOAD_DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype):
    """`torch.bfloat16` or `"bfloat16"` (likewise float32, float16) → the torch dtype; `ValueError` otherwise."""
    import torch

    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype
    else:
        name = None
    if name not in LOAD_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {list(LOAD_DTYPES)}")
    return getattr(torch, name)


def int8_weight_only_config():
    """transformers' `TorchAoConfig` for int8 weight-only quantization of every `nn.Linear` (pass it to `load_model`
    as `quantization_config=`). Needs the optional `quant` extra: `pip install 'hf-scratch-gpt[quant]'`."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as error:
        raise ImportError(
            "int8 weight-only quantization needs torchao: pip install 'hf-scratch-gpt[quant]' (torchao==0.18.*)"
        ) from error
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=Int8WeightOnlyConfig())


def load_model(
    name_or_path: str | os.PathLike, revision: str | None = None, dtype=None, **kwargs
) -> ScratchGPTForCausalLM:
    """Load a ScratchGPT model from a saved folder or a Hub repo id, checked first, safetensors only.

    `dtype` (`torch.bfloat16` or `"bfloat16"`, likewise float32/float16): the dtype the weights are loaded in;
    None keeps the checkpoint's own. Other `kwargs` go to `from_pretrained` (e.g. `attn_implementation`,
    `quantization_config`). Returns the model in eval mode.
    """
    if "use_safetensors" in kwargs and kwargs["use_safetensors"] is not True:
        raise ValueError("load_model reads safetensors only; use_safetensors must be True (or left out)")
    if dtype is not None:
        kwargs["dtype"] = resolve_dtype(dtype)
    folder = resolve_model_folder(name_or_path, revision=revision)
    check_model_folder(folder)
    kwargs["use_safetensors"] = True
    model, info = ScratchGPTForCausalLM.from_pretrained(folder, output_loading_info=True, **kwargs)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ValueError(f"loading {folder} did not match the checkpoint exactly: {info}")
    logger.info("loaded ScratchGPT (%d parameters) from %s", model.num_parameters(), folder)
    return model.eval()


def load_tokenizer(name_or_path: str | os.PathLike, revision: str | None = None):
    """The tokenizer saved with a model (folder or Hub repo id); `FileNotFoundError` when there is none."""
    from transformers import AutoTokenizer

    folder = resolve_model_folder(name_or_path, revision=revision)
    if not any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        raise FileNotFoundError(
            f"{folder} has no tokenizer (expected {' or '.join(' + '.join(s) for s in TOKENIZER_FILE_SETS)}); "
            f"save one next to the model with tokenizer.save_pretrained(folder)"
        )
    check_tokenizer_files(folder)
    return AutoTokenizer.from_pretrained(folder)


def check_tokenizer_files(folder: str | os.PathLike) -> None:
    """Raise `ValueError` naming the file when a tokenizer JSON file is not valid JSON (transformers raises a bare
    `JSONDecodeError` that does not say which file)."""
    for name in TOKENIZER_JSON_FILES:
        path = Path(folder) / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{path} is not valid JSON ({error}); save or download the tokenizer again") from error


__all__ = [
    "check_model_folder",
    "check_weight_files",
    "check_tokenizer_files",
    "int8_weight_only_config",
    "is_plain_file_name",
    "load_model",
    "load_tokenizer",
    "read_config",
    "read_tensor_shapes",
    "resolve_dtype",
    "resolve_model_folder",
]
