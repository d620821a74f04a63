"""OpenAI TF checkpoint → a `from_pretrained`-ready ScratchGPT folder, streamed tensor by tensor, then verified.

Order of work, chosen so that a failure or a kill never leaves a half-written folder under the final name:
1. validate everything that can be checked without reading weights (files, hparams, names, shapes, data size);
2. write into a hidden temporary folder next to the target (same filesystem, so the final rename is atomic);
3. stream each variable: read it from TF, reshape/transpose/cast, append its bytes to the safetensors shard whose
   header was written up front from the plan, so peak memory is about one tensor, never the whole model;
4. config.json, generation_config.json, the model's code, the tokenizer, then verify, then the model card;
5. rename into place (an existing folder is only replaced with `overwrite=True`, after the new one is complete).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import logging
from transformers.utils.hub import convert_file_size_to_int

from ..configuration_scratch_gpt import PRESETS, ScratchGPTConfig
from ..export.common import check_destination
from ..hub import CARD_TEMPLATES, MODEL_CARDS_DIR
from ..loading import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from ..modeling_scratch_gpt import AUTO_MAP, ScratchGPTForCausalLM
from .checkpoint import OpenAICheckpoint, PlannedTensor
from .names import HPARAMS_TO_CONFIG, LINEAR, dimensions, target_shape_for
from .reference import reference_logits
from .tokenizer import END_OF_TEXT, read_encoder, save_openai_tokenizer

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class OutputDtype:
    torch_dtype: torch.dtype
    safetensors_code: str
    # Largest accepted max|logits - reference| / max(1, max|reference|): float32 rounding for float32; for the
    # 16-bit formats the rounding of weights and activations (a wrong mapping gives errors of order 1).
    tolerance: float


OUTPUT_DTYPES: dict[str, OutputDtype] = {
    "float32": OutputDtype(torch.float32, "F32", 1e-4),
    "bfloat16": OutputDtype(torch.bfloat16, "BF16", 1e-1),
    "float16": OutputDtype(torch.float16, "F16", 2e-2),
}
DEFAULT_MAX_SHARD_SIZE = "5GB"
VERIFY_TEXT = "Hello, world! The quick brown fox jumps over the lazy dog.\n\nIt was 1999 and    the year ended."
VERIFY_MAX_TOKENS = 32
MODEL_CARD_TEMPLATE = MODEL_CARDS_DIR / CARD_TEMPLATES["openai_checkpoint"]
# Every file a converted folder holds (weights, index, config, generation config, model code, tokenizer, card).
# `overwrite=True` replaces only a folder of these files whose config.json is a ScratchGPT one: anything else in
# it is someone's data, and the converter refuses rather than delete it.
CONVERTED_FILE_NAME = re.compile(
    r"^(config\.json|generation_config\.json|README\.md|(configuration|modeling|checks|decoding|fused_loss)_scratch_gpt\.py"
    r"|model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors"
    r"|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt"
    r"|chat_template\.jinja)$"
)


@dataclass
class ConversionReport:
    out_dir: str
    size: str
    dtype: str
    parameters: int
    weight_files: list[str]
    total_bytes: int
    seconds: float
    verified: bool
    verify_tokens: int = 0
    max_abs_diff: float | None = None
    relative_diff: float | None = None
    reference_logit_scale: float | None = None
    ignored_variables: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# safetensors, written as a stream
# ---------------------------------------------------------------------------------------------------------------------
class StreamingSafetensorsWriter:
    """Writes one safetensors file whose tensors arrive one at a time, in a fixed order known up front.

    Layout (the safetensors spec): 8-byte little-endian header length, the JSON header (padded with spaces to a
    multiple of 8), then the raw tensor bytes back to back in header order.
    """

    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: OutputDtype) -> None:
        self.path = path
        self.entries = entries
        self.dtype = dtype
        itemsize = torch.empty((), dtype=dtype.torch_dtype).element_size()
        header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in entries:
            nbytes = math.prod(shape) * itemsize
            header[name] = {"dtype": dtype.safetensors_code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        self.data_bytes = offset
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        self._file = open(path, "wb")
        self._file.write(len(encoded).to_bytes(8, "little"))
        self._file.write(encoded)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, expected_shape = self.entries[self._next]
        if name != expected_name or tuple(tensor.shape) != expected_shape or tensor.dtype != self.dtype.torch_dtype:
            raise ValueError(
                f"{self.path.name}: got {name} {tuple(tensor.shape)} {tensor.dtype}, expected {expected_name} "
                f"{expected_shape} {self.dtype.torch_dtype}"
            )
        # Raw bytes through a uint8 view (numpy has no bfloat16), no extra copy.
        self._file.write(tensor.contiguous().view(torch.uint8).numpy().data)
        self._next += 1

    def abort(self) -> None:
        """Close without the completeness check (the caller discards the file)."""
        self._file.close()

    def close(self) -> None:
        if self._next != len(self.entries):
            raise ValueError(f"{self.path.name}: {len(self.entries) - self._next} tensors were never written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def parse_shard_size(max_shard_size: int | str) -> int:
    """`max_shard_size` in bytes: a whole number of bytes (an int, or a string of digits: the converter records an
    int as such in the card's command line), or transformers' size strings ("5GB", "500MB", "2GiB"; "5Gb" is
    gigabits). `ValueError` naming the value and the flag otherwise (transformers' own error names neither)."""
    value = max_shard_size
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    try:
        size = None if isinstance(value, bool) else convert_file_size_to_int(value)
    except (ValueError, TypeError, AttributeError):
        size = None
    if not isinstance(size, int) or size < 1:
        raise ValueError(
            f"max_shard_size (--max-shard-size) {max_shard_size!r} is not a size: expected a whole number of bytes "
            f">= 1, or one with a unit, e.g. '5GB', '500MB', '2GiB'"
        )
    return size


def plan_shards(items: list[tuple[str, int]], max_shard_bytes: int) -> list[list[int]]:
    """Greedy, in order: start a new shard when the next tensor would push this one past the limit.

    A tensor larger than the limit gets a shard of its own (as transformers does).
    """
    shards: list[list[int]] = [[]]
    size = 0
    for index, (_, nbytes) in enumerate(items):
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(index)
        size += nbytes
    return shards


def to_output_tensor(array: np.ndarray, planned: PlannedTensor, dtype: OutputDtype) -> torch.Tensor:
    """TF layout → ours, in one copy: LINEAR [1, in, out] → (out, in); everything else as is; cast to `dtype`."""
    source = torch.from_numpy(array)
    if planned.rule.layout == LINEAR:
        source = source[0].t()
    elif source.dtype == dtype.torch_dtype:
        return source  # already in place: no second copy of the largest tensor (wte)
    output = torch.empty(source.shape, dtype=dtype.torch_dtype)
    output.copy_(source)
    return output


def write_weights(checkpoint: OpenAICheckpoint, folder: Path, dtype: OutputDtype, max_shard_bytes: int) -> list[str]:
    dims = dimensions(checkpoint.hparams)
    itemsize = torch.empty((), dtype=dtype.torch_dtype).element_size()
    shapes = [target_shape_for(item.rule, dims) for item in checkpoint.plan]
    shards = plan_shards([(item.rule.target, math.prod(s) * itemsize) for item, s in zip(checkpoint.plan, shapes)],
                         max_shard_bytes)
    names = (
        [SAFE_WEIGHTS_NAME] if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, indices in zip(names, shards):
        writer = StreamingSafetensorsWriter(
            folder / file_name, [(checkpoint.plan[i].rule.target, shapes[i]) for i in indices], dtype
        )
        try:
            for i in indices:
                planned = checkpoint.plan[i]
                writer.write(planned.rule.target, to_output_tensor(checkpoint.read(planned.tf_name), planned, dtype))
                weight_map[planned.rule.target] = file_name
        except BaseException:
            writer.abort()
            raise
        writer.close()
        total += writer.data_bytes
        logger.info(f"wrote {file_name} ({writer.data_bytes / 1e6:.1f} MB, {len(indices)} tensors)")
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


# ---------------------------------------------------------------------------------------------------------------------
# config, verification, card
# ---------------------------------------------------------------------------------------------------------------------
def size_name(hparams: dict[str, int]) -> str:
    """"124M" … "1558M" when the shape is one of OpenAI's releases, else "custom"."""
    for name, preset in PRESETS.items():
        if all(preset.get(field) == hparams[key] for key, field in HPARAMS_TO_CONFIG.items()):
            return name
    return "custom"


def config_from_hparams(hparams: dict[str, int], eos_token_id: int, dtype: str) -> ScratchGPTConfig:
    config = ScratchGPTConfig(
        **{field: hparams[key] for key, field in HPARAMS_TO_CONFIG.items()},
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, dtype=dtype,
    )
    config.architectures = [ScratchGPTForCausalLM.__name__]
    return config


def write_config_and_code(config: ScratchGPTConfig, folder: Path) -> None:
    """config.json (with `auto_map`), generation_config.json and the model's code, as `save_pretrained` writes
    them, without materialising any weights (the model is built on the meta device)."""
    with torch.device("meta"):
        skeleton = ScratchGPTForCausalLM(config)
    config.auto_map = dict(AUTO_MAP)  # every class, as save_pretrained writes it (the folder loads into a classifier)
    custom_object_save(skeleton, folder, config=config)
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)


def verify_conversion(checkpoint: OpenAICheckpoint, folder: Path, dtype_name: str, tokens: list[int]) -> dict:
    """Load the written folder with `AutoModelForCausalLM`, run `tokens`, and compare with the reference forward
    computed from the TF variables. Raises `ValueError` beyond the dtype's tolerance."""
    dtype = OUTPUT_DTYPES[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype.torch_dtype).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double().numpy()  # (T, V)
    del model
    reference = reference_logits(checkpoint.read, checkpoint.hparams, tokens)
    max_abs_diff = float(np.abs(logits - reference).max())
    scale = float(np.abs(reference).max())
    relative = max_abs_diff / max(1.0, scale)
    logger.info(f"verification: max |logits - reference| = {max_abs_diff:.3g} (logit scale {scale:.3g})")
    if not relative <= dtype.tolerance:  # also catches NaN
        raise ValueError(
            f"verification failed: the converted {dtype_name} model's logits differ from the reference forward by "
            f"{max_abs_diff:.4g} (relative {relative:.3g} > tolerance {dtype.tolerance})"
        )
    return {"verify_tokens": len(tokens), "max_abs_diff": max_abs_diff, "relative_diff": relative,
            "reference_logit_scale": scale}


def verification_tokens(tokenizer, n_ctx: int) -> list[int]:
    return tokenizer(VERIFY_TEXT)["input_ids"][: min(n_ctx, VERIFY_MAX_TOKENS)]


def render_model_card(report: ConversionReport, hparams: dict[str, int], source: Path, command: str,
                      eos_token_id: int) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    if not MODEL_CARD_TEMPLATE.is_file():
        raise FileNotFoundError(f"model card template not found: {MODEL_CARD_TEMPLATE}")
    card_data = ModelCardData(
        language="en", license="mit", library_name="transformers", pipeline_tag="text-generation",
        tags=["text-generation", "gpt2", "custom_code", "scratch_gpt"],
    )
    if report.verified:
        verification = (
            f"After conversion, the converted model (loaded with `AutoModelForCausalLM.from_pretrained`, "
            f"{report.dtype}) and an independent float64 reference forward computed from the original TensorFlow "
            f"variables were run on the same {report.verify_tokens} tokens. Maximum absolute difference of the "
            f"logits: **{report.max_abs_diff:.3g}** (logits up to {report.reference_logit_scale:.3g} in magnitude; "
            f"relative {report.relative_diff:.3g})."
        )
    else:
        verification = "Not verified: the conversion was run with `--no-verify`."
    card = ModelCard.from_template(
        card_data, template_path=str(MODEL_CARD_TEMPLATE),
        size=report.size, dtype=report.dtype, parameters=f"{report.parameters:,}",
        weight_files=", ".join(f"`{name}`" for name in report.weight_files),
        command=command, source=source.name, hparams=json.dumps(hparams), eos_token_id=eos_token_id,
        verification=verification, **hparams,
    )
    return str(card)


# ---------------------------------------------------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------------------------------------------------
def check_replaceable(out: Path) -> None:
    """Raise `FileExistsError` unless `out` is a folder a conversion wrote (a ScratchGPT config.json and only the
    files a converted folder holds), i.e. a folder `overwrite=True` may delete."""
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; the converter replaces only a converted model folder")
    try:
        model_type = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != ScratchGPTConfig.model_type:
        raise FileExistsError(
            f"{out} exists and is not a ScratchGPT model folder (no config.json with model_type "
            f"{ScratchGPTConfig.model_type!r}); --overwrite replaces only a folder the converter wrote. Choose "
            f"another output folder"
        )
    foreign = sorted(
        entry.name for entry in out.iterdir()
        if entry.is_symlink() or not entry.is_file() or not CONVERTED_FILE_NAME.match(entry.name)
    )  # fmt: skip
    if foreign:
        raise FileExistsError(
            f"{out} holds {foreign}, which a converted model folder does not; --overwrite would delete them. Move "
            f"them out or choose another output folder"
        )


def _replace_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the complete `tmp` to `out`. With an existing `out` (only when overwriting, and only a converted
    folder), the old folder is moved aside first and deleted last, so at every instant `out` is either the old
    complete folder, absent, or new."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    check_replaceable(out)  # again: the folder may have changed during the conversion
    aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, aside)
    os.rename(tmp, out)
    shutil.rmtree(aside, ignore_errors=True)


def convert_openai_checkpoint(
    ckpt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    verify: bool = True,
    command: str | None = None,
) -> ConversionReport:
    """Convert an OpenAI GPT-2 checkpoint folder into a ScratchGPT folder loadable with `from_pretrained`.

    Args:
        ckpt_dir: folder as OpenAI publishes it (see `hf_scratch_gpt.openai.checkpoint.REQUIRED_FILES`).
        out_dir: the folder to create; refused if it exists unless `overwrite`.
        dtype: "float32", "bfloat16" or "float16" for the stored weights.
        max_shard_size: bytes (int) or a size like "2GB"; above it the weights are sharded with an index.
        verify: compare the converted model's logits with a reference forward from the TF variables.
        command: the command line recorded in the model card (defaults to the equivalent CLI call).

    Returns a `ConversionReport` (files, sizes, time, verification figures).
    """
    started = time.perf_counter()
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {list(OUTPUT_DTYPES)}, got {dtype!r}")
    max_shard_bytes = parse_shard_size(max_shard_size)
    source, out = Path(ckpt_dir), Path(out_dir)
    # Replacing OUT deletes it: it must neither be, contain nor lie inside the checkpoint being read.
    check_destination(source, out, overwrite, check_replaceable, source_name="checkpoint folder", inside_source=False)

    checkpoint = OpenAICheckpoint(source)  # every check that needs no weight data happens here
    hparams = checkpoint.hparams
    encoder = read_encoder(source / "encoder.json")
    if len(encoder) > hparams["n_vocab"]:
        raise ValueError(
            f"{source / 'encoder.json'} has {len(encoder)} tokens but hparams.json n_vocab={hparams['n_vocab']}"
        )
    eos_token_id = encoder[END_OF_TEXT]
    command = command or shlex.join(
        ["hf-scratch-gpt", "convert-openai", str(source), str(out), "--dtype", dtype,
         "--max-shard-size", str(max_shard_size)] + ([] if verify else ["--no-verify"])
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        weight_files = write_weights(checkpoint, tmp, OUTPUT_DTYPES[dtype], max_shard_bytes)
        config = config_from_hparams(hparams, eos_token_id, dtype)
        write_config_and_code(config, tmp)
        tokenizer = save_openai_tokenizer(
            source / "encoder.json", source / "vocab.bpe", tmp, model_max_length=hparams["n_ctx"]
        )
        report = ConversionReport(
            out_dir=str(out), size=size_name(hparams), dtype=dtype, parameters=checkpoint.total_parameters,
            weight_files=weight_files, total_bytes=sum((tmp / name).stat().st_size for name in weight_files),
            seconds=0.0, verified=verify,
            ignored_variables=sorted(set(checkpoint.shapes) - {item.tf_name for item in checkpoint.plan}),
        )
        if verify:
            figures = verify_conversion(checkpoint, tmp, dtype, verification_tokens(tokenizer, hparams["n_ctx"]))
            for key, value in figures.items():
                setattr(report, key, value)
        (tmp / "README.md").write_text(render_model_card(report, hparams, source, command, eos_token_id))
        _replace_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - started
    logger.info(f"converted {source} → {out} in {report.seconds:.1f} s")
    return report


__all__ = [
    "OUTPUT_DTYPES",
    "ConversionReport",
    "StreamingSafetensorsWriter",
    "check_replaceable",
    "convert_openai_checkpoint",
    "parse_shard_size",
    "plan_shards",
]
