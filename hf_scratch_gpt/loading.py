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
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from tokenizers.models import BPE

from .configuration_scratch_gpt import ScratchGPTConfig
from .checks_scratch_gpt import (
    INTERRUPTED_FINAL_SAVE_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    UNSAFE_WEIGHT_NAMES,
    check_weight_files,
    file_in_folder,
    is_plain_file_name,
)
from .modeling_scratch_gpt import ScratchGPTForCausalLM

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# Every file a saved tokenizer may hold: each one present is checked before transformers reads the folder.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja",
)  # fmt: skip
TOKENIZER_JSON_FILES = tuple(name for name in TOKENIZER_FILES if name.endswith(".json"))
# What a Hub download of a model needs: config, weights as safetensors, tokenizer, generation config, code, card.
HUB_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.py", "*.md", "*.jinja"]


def existing_folder(path: str | os.PathLike, what: str = "model folder") -> Path:
    """`path` when it is a folder; otherwise `NotADirectoryError` (it is a file) or `FileNotFoundError` (nothing)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{what} {path} is a file, expected a folder")
    raise FileNotFoundError(f"{what} {path} does not exist")


def folder_file(folder: str | os.PathLike, name: str) -> Path | None:
    """`folder/name`, or None when the folder has no entry of that name.

    Refused, naming the path: an entry that resolves outside the folder (a link out, or `..`; the Hub cache's links
    into its `blobs/` are allowed: `file_in_folder`), a link whose target does not exist, a folder or anything else
    that is not a regular file. An entry that cannot be examined (a folder without search permission) raises the
    `PermissionError` naming it, never "not found".
    """
    path = file_in_folder(folder, name)
    try:
        mode = path.stat().st_mode  # follows a link (file_in_folder has checked where it leads)
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(f"{path} is a link to {os.readlink(path)}, which does not exist") from None
        return None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a folder, expected a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a device, socket or pipe); expected a file")
    return path


def read_text_file(path: Path) -> str:
    """The UTF-8 text of `path`; `ValueError` naming it when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error})") from error


# The deepest nesting of arrays/objects accepted in a JSON file of a model folder. The files themselves nest a few
# levels (tokenizer.json: 5); transformers deep-copies a config recursively, and a config nested some hundreds of
# levels ends in a RecursionError there, after parsing succeeded.
MAX_JSON_DEPTH = 100


def read_json_file(path: Path) -> Any:
    """The parsed JSON of `path`; `ValueError` naming it for text that is not UTF-8 or not JSON, and for JSON nested
    deeper than `MAX_JSON_DEPTH` (Python's parser recurses: 100,000 '[' would end in a RecursionError)."""
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    except RecursionError:
        raise _too_deep(path, f"more than {sys.getrecursionlimit()}") from None
    depth = _json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise _too_deep(path, depth)
    return data


def _too_deep(path: Path, depth) -> ValueError:
    return ValueError(
        f"{path} nests JSON arrays/objects {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted (the files of a "
        f"model folder nest a few)"
    )


def _json_depth(data: Any) -> int:
    """How deeply arrays/objects nest in parsed JSON (a scalar: 0, `[]`: 1), walked without recursion."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_json_object(folder: str | os.PathLike, name: str) -> dict | None:
    """The JSON object in `folder/name` (checked by `folder_file`), or None when there is no such file."""
    path = folder_file(folder, name)
    if path is None:
        return None
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def resolve_model_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as it is; anything else is taken as a Hub repo id and downloaded (safetensors only).

    Raises `FileNotFoundError` for a path that does not exist and cannot be a repo id.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file, expected a model folder (with {CONFIG_NAME}) or a Hub repo id")
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
    config_dict = read_json_object(folder, CONFIG_NAME)
    if config_dict is None:
        adapter = (Path(folder) / "adapter_config.json").is_file()
        raise FileNotFoundError(
            f"{config_file} not found: a saved ScratchGPT folder needs the config.json written by save_pretrained"
            + ("; this folder holds a LoRA adapter: merge it into its base model with `hf-scratch-gpt merge-lora "
               "ADAPTER OUT` (or load it with hf_scratch_gpt.lora.load_lora_model)" if adapter else "")
        )
    model_type = config_dict.get("model_type")
    if model_type != ScratchGPTConfig.model_type:
        hint = " (a transformers GPT-2 folder: import it with hf_scratch_gpt.from_hf_gpt2)" if model_type == "gpt2" else ""
        raise ValueError(
            f"{config_file} has model_type {model_type!r}, expected {ScratchGPTConfig.model_type!r}{hint}"
        )
    for key in ("dtype", "torch_dtype"):  # transformers turns the name into getattr(torch, name) while loading
        if config_dict.get(key) is not None and not _is_float_dtype_name(config_dict[key]):
            raise ValueError(
                f"{config_file}: {key} {config_dict[key]!r} is not a floating-point torch dtype; expected e.g. "
                f"{list(LOAD_DTYPES)}"
            )
    try:
        return ScratchGPTConfig.from_dict(config_dict)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_file} holds an invalid ScratchGPT config: {error}") from error


def _is_float_dtype_name(name: object) -> bool:
    import torch

    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def check_generation_config_file(folder: str | os.PathLike) -> None:
    """Refuse a `generation_config.json` that is not a valid generation config, naming the file (transformers
    silently falls back to defaults for one that is not JSON, and names no file for a bad value)."""
    data = read_json_object(folder, GENERATION_CONFIG_NAME)
    if data is None:
        return
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        path = Path(folder) / GENERATION_CONFIG_NAME
        raise ValueError(f"{path} is not a valid generation config: {error}") from error


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
    folder = existing_folder(folder)
    config = read_config(folder)
    architectures = config.architectures or []
    if architectures and ScratchGPTForCausalLM.__name__ not in architectures:  # e.g. a classifier fine-tuned here
        raise ValueError(
            f"{folder / CONFIG_NAME} describes a {architectures[0]}, not a {ScratchGPTForCausalLM.__name__}: this "
            f"takes a language-model folder; load that one with its Auto class (e.g. "
            f"AutoModelForSequenceClassification.from_pretrained) and publish it with model.push_to_hub"
        )
    expected = {name: tuple(tensor.shape) for name, tensor in _shape_only_state_dict(config).items()}
    found: dict[str, tuple[int, ...]] = {}
    origin: dict[str, Path] = {}
    for weight_file in check_weight_files(folder):
        for name, shape in read_tensor_shapes(weight_file).items():
            found[name], origin[name] = shape, weight_file
    check_tensor_shapes(
        found, expected, origin, lacking=f"weights in {folder} lack tensors the config needs",
        model=f"the ScratchGPT model {folder / CONFIG_NAME} describes",
        optional={"lm_head.weight"} if config.tie_word_embeddings else (),
    )  # fmt: skip
    return config


def check_tensor_shapes(
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    origin: dict[str, Path],
    lacking: str,
    model: str = "the model",
    optional: Iterable[str] = (),
    hint: str = "",
) -> None:
    """The one check of weights against a model (a saved folder's, a training checkpoint's): every tensor of
    `expected` (name → shape) is in `found` (read from safetensors headers, `read_tensor_shapes`) unless `optional`,
    none is extra, and each has its shape. Raises `ValueError` naming the file (`origin`: name → file):
    "LACKING: [names]HINT", "FILE holds tensors MODEL does not have", "FILE: tensor NAME has shape ..., MODEL has ..."."""
    missing = sorted(set(expected) - set(found) - set(optional))
    if missing:
        raise ValueError(f"{lacking}: {missing}{hint}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ValueError(f"{origin[unexpected[0]]} holds tensors {model} does not have: {unexpected}")
    for name, shape in found.items():
        if shape != expected[name]:
            raise ValueError(f"{origin[name]}: tensor {name} has shape {shape}, {model} has {expected[name]}")


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
    None keeps the checkpoint's own; `"auto"` keeps it too, except a bf16/fp16 checkpoint on a CPU without
    instructions for that dtype, which loads in float32 (`hf_scratch_gpt.cpu.auto_dtype`). An explicit bf16/fp16 on
    such a CPU warns (`SlowDtypeWarning`). Other `kwargs` go to `from_pretrained` (e.g. `attn_implementation`,
    `quantization_config`). Returns the model in eval mode, on the CPU unless `device_map` says otherwise.
    """
    import torch

    from .cpu import auto_dtype, warn_if_slow_on_cpu

    if "use_safetensors" in kwargs and kwargs["use_safetensors"] is not True:
        raise ValueError("load_model reads safetensors only; use_safetensors must be True (or left out)")
    folder = resolve_model_folder(name_or_path, revision=revision)
    config = check_model_folder(folder)
    device = kwargs.get("device_map") if isinstance(kwargs.get("device_map"), str) else "cpu"
    if device == "auto":  # accelerate places the weights on the GPU when there is one
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        saved = getattr(torch, config.dtype) if isinstance(config.dtype, str) else config.dtype
        dtype = auto_dtype(saved, device=device)
    elif dtype is not None:
        dtype = resolve_dtype(dtype)
        warn_if_slow_on_cpu(dtype, device=device)
    if dtype is not None:
        kwargs["dtype"] = dtype
    check_generation_config_file(folder)
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
    present = check_tokenizer_files(folder)
    if not any(all(name in present for name in names) for names in TOKENIZER_FILE_SETS):
        raise FileNotFoundError(
            f"{folder} has no tokenizer (expected {' or '.join(' + '.join(s) for s in TOKENIZER_FILE_SETS)}); "
            f"save one next to the model with tokenizer.save_pretrained(folder)"
        )
    return AutoTokenizer.from_pretrained(folder)


def check_tokenizer_files(folder: str | os.PathLike) -> list[str]:
    """Check every tokenizer file the folder holds before transformers reads them; return their names.

    Each is refused, by name (`ValueError`, or `OSError` for a file that cannot be read): a link out of the folder
    (`folder_file`); a JSON file that is not a JSON object; a `tokenizer.json` the tokenizers library cannot build;
    a `vocab.json` that does not map tokens to ids >= 0; a `merges.txt` that is not UTF-8 or does not form a BPE
    with `vocab.json`. transformers and tokenizers would otherwise raise `KeyError: 'added_tokens'` or a bare
    `Exception: Error while initializing BPE` that names no file.
    """
    present = {name: path for name in TOKENIZER_FILES if (path := folder_file(folder, name)) is not None}
    contents = {}
    for name in TOKENIZER_JSON_FILES:
        if name in present:
            try:
                contents[name] = read_json_object(folder, name)
            except ValueError as error:
                raise ValueError(f"{error}; save or download the tokenizer again") from error
    if "tokenizer.json" in present:
        _build_with_tokenizers(present["tokenizer.json"], lambda: Tokenizer.from_file(str(present["tokenizer.json"])))
    if "vocab.json" in present:
        for token, token_id in contents["vocab.json"].items():
            if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
                raise ValueError(
                    f"{present['vocab.json']} maps the token {token!r} to {token_id!r}; a vocabulary maps each token "
                    f"to an integer id >= 0"
                )
    if "merges.txt" in present:
        read_text_file(present["merges.txt"])  # not UTF-8: named here
        if "vocab.json" in present:  # the vocabulary is checked: what the BPE still refuses is in merges.txt
            vocab, merges = str(present["vocab.json"]), str(present["merges.txt"])
            _build_with_tokenizers(present["merges.txt"], lambda: BPE.from_file(vocab, merges))
    return sorted(present)


def _build_with_tokenizers(path: Path, build) -> None:
    """Run `build` (a tokenizers-library constructor reading `path`); `ValueError` naming `path` when it fails."""
    try:
        build()
    except Exception as error:  # tokenizers raises a plain Exception for every malformed file
        raise ValueError(
            f"{path} is not a valid {path.name} ({error}); save or download the tokenizer again"
        ) from error


__all__ = [
    "check_model_folder",
    "check_tensor_shapes",
    "check_weight_files",
    "check_generation_config_file",
    "check_tokenizer_files",
    "existing_folder",
    "folder_file",
    "int8_weight_only_config",
    "is_plain_file_name",
    "load_model",
    "load_tokenizer",
    "read_config",
    "read_tensor_shapes",
    "resolve_dtype",
    "resolve_model_folder",
]
