"""What every export shares: the source model, the check prompt, the float64 reference, the bound, publishing.

An export is checked the same way whatever its format. The source model's logits on a fixed prompt are computed
twice: in float32 (what the model computes) and in float64 (what exact arithmetic would give). The export is
reloaded in its target runtime, run on the same prompt, and its error against the float64 logits is compared with
the source's own float32 error: an export that agrees "to float32 rounding" is no further from exact arithmetic
than a few times the source model itself (`float32_bound`). Measured, not guessed: the bound scales with the
model's size and the prompt without a tolerance to tune.

Publishing: each export is built in a hidden temporary folder (or file) next to its destination and moved into
place only after its check has passed; on any failure nothing is left behind. An existing destination is refused
unless `overwrite=True`, and even then only an earlier export of the same format is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..loading import TOKENIZER_FILE_SETS, check_tokenizer_files, existing_folder, load_model, load_tokenizer
from ..modeling_scratch_gpt import ScratchGPTForCausalLM

logger = logging.getLogger(__name__)

# The text of the check prompt (encoded with the model's own tokenizer when it has one): words, digits,
# punctuation, accented letters and an emoji, so that byte-level BPE merges and raw bytes both occur.
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Hello world: 12345, naïve café 🙂!"
# Token ids appended to the encoded text: spread over the whole vocabulary, so rows of the embedding and head far
# from the tokenizer's (e.g. a vocabulary padded to 50304) are checked too.
SPREAD_FRACTIONS = (0.999999, 0.5, 0.25, 0.75, 0.125)
# Without a tokenizer: this many ids, (7 i + 3) mod vocab_size.
FALLBACK_PROMPT_LENGTH = 24
MAX_PROMPT_LENGTH = 64

EPS32 = torch.finfo(torch.float32).eps
# An export agrees "to float32 rounding" when its error against the float64 reference is at most this many times
# the source model's own float32 error (floored at eps32 * max|logit|, for a source whose error happens to be tiny).
# Two float32 implementations of the same graph that sum in different orders (GPT2LMHeadModel's Conv1D addmm,
# onnxruntime's MLAS kernels, ggml's) land within ~1-3x of each other; 8 leaves room without hiding a wrong weight,
# which shows as errors of the order of the logits themselves.
FLOAT32_FACTOR = 8.0

# torch's vectorised tanh (GPT-2's "gelu_new"), exp, erf, ... of float32 CPU tensors run one chunk of >= 2048
# elements per thread; on some CPUs the very first such call in a process can return one thread's chunk slightly
# inaccurate (up to ~5e-5). An export compares logits near float32 rounding, so every process that computes them
# (this one, the plain-transformers check) makes those first calls before.
VECTOR_MATH_FUNCTIONS = ("tanh", "exp", "log", "sqrt", "erf", "sin", "cos", "atan")


def warm_up_vector_math() -> None:
    """Make this process's first vector-math calls (see `VECTOR_MATH_FUNCTIONS`) before logits are compared."""
    values = torch.linspace(0.01, 4.0, 4 * 2048 * torch.get_num_threads())  # >= 2048 elements for every thread
    for name in VECTOR_MATH_FUNCTIONS:
        getattr(torch, name)(values)


# The same first calls, as source for a child process that cannot import this package.
WARM_UP_VECTOR_MATH = (
    "values = torch.linspace(0.01, 4.0, 4 * 2048 * torch.get_num_threads())\n"
    f"for name in {VECTOR_MATH_FUNCTIONS!r}:\n"
    "    getattr(torch, name)(values)\n"
)


EXPORT_REPORT_NAME = "export_report.json"
README_NAME = "README.md"


@dataclass
class ExportReport:
    """What an export wrote and how it was checked. `max_abs_diff` is the headline figure: max |export logits −
    ScratchGPT float32 logits| on the check prompt (over positions that attend to at least one token)."""

    format: str
    out: str
    source: str
    dtype: str
    files: list[str]
    runtime: str  # what reloaded and ran the export, with its version
    prompt_tokens: int
    max_abs_diff: float
    max_abs_error: float  # max |export − float64 reference|
    source_error: float  # max |ScratchGPT float32 − float64 reference|
    bound: float  # what max_abs_error (or the format's own measure) was held to
    bound_rule: str
    checks: list[str] = field(default_factory=list)
    not_carried: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.format} export {self.out} ({self.dtype}), checked with {self.runtime} on {self.prompt_tokens} "
            f"tokens: max |Δ logits| = {self.max_abs_diff:.3g} vs ScratchGPT float32 (error vs float64 "
            f"{self.max_abs_error:.3g}; bound {self.bound:.3g}: {self.bound_rule})"
        )


@dataclass
class Source:
    """A saved ScratchGPT folder, loaded and checked: the model (eval, its stored dtype) and its tokenizer (None when
    the folder has none)."""

    folder: Path
    model: ScratchGPTForCausalLM
    tokenizer: Any | None


def load_source(model_dir: str | os.PathLike) -> Source:
    """Load a saved ScratchGPT folder (checked by `load_model`; never unpickles) and its tokenizer if it has one."""
    folder = existing_folder(model_dir)
    model = load_model(folder)
    present = check_tokenizer_files(folder)
    has_tokenizer = any(all(name in present for name in names) for names in TOKENIZER_FILE_SETS)
    tokenizer = load_tokenizer(folder) if has_tokenizer else None
    if tokenizer is None:
        logger.info("%s has no tokenizer: the export is written without one", folder)
    return Source(folder=folder, model=model, tokenizer=tokenizer)


def check_text_ids(tokenizer, vocab_size: int) -> list[int]:
    """`CHECK_TEXT` encoded by `tokenizer` (no special tokens); `ValueError` when it encodes to nothing or to ids
    outside the model's vocabulary."""
    ids = list(tokenizer(CHECK_TEXT, add_special_tokens=False).input_ids)
    if not ids or max(ids) >= vocab_size or min(ids) < 0:
        raise ValueError(
            f"the tokenizer encodes the check text to {ids[:8]}..., which the model's vocabulary [0, {vocab_size}) "
            "cannot take"
        )
    return ids


def check_prompt(config, tokenizer) -> list[int]:
    """The fixed check prompt: the check text's tokens (with a tokenizer) then ids spread over the vocabulary, at
    most `n_positions` (and `MAX_PROMPT_LENGTH`) long."""
    vocab, length = config.vocab_size, min(config.n_positions, MAX_PROMPT_LENGTH)
    if tokenizer is None:
        return [(7 * i + 3) % vocab for i in range(min(length, FALLBACK_PROMPT_LENGTH))]
    spread = [int(fraction * (vocab - 1)) for fraction in SPREAD_FRACTIONS]
    text_ids = check_text_ids(tokenizer, vocab)
    return (text_ids[: max(length - len(spread), 1)] + spread)[:length]


@dataclass
class ReferenceLogits:
    """The source model's logits on the check inputs, in float32 and in float64 (same weights), and which positions
    count (those that attend to at least one token: a fully padded query row has no defined output)."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    float32: torch.Tensor  # (B, T, V)
    float64: torch.Tensor  # (B, T, V)

    @property
    def valid(self) -> torch.Tensor:
        """(B, T) bool: the positions whose logits are compared (a real token, causally after a real token)."""
        return self.attention_mask.bool() & (self.attention_mask.cumsum(-1) > 0)

    @property
    def scale(self) -> float:
        return self.float64[self.valid].abs().max().item()

    @property
    def source_error(self) -> float:
        return max_abs(self.float32, self.float64, self.valid)

    def float32_bound(self, factor: float = FLOAT32_FACTOR) -> float:
        """The most an export agreeing to float32 rounding may differ from the float64 logits."""
        return factor * max(self.source_error, EPS32 * self.scale)


def max_abs(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    """max |a − b| over the `valid` (B, T) positions, computed in float64."""
    return (torch.as_tensor(a).double()[valid] - torch.as_tensor(b).double()[valid]).abs().max().item()


def reference_logits(
    model: ScratchGPTForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> ReferenceLogits:
    """The model's float32 and float64 logits. The model is converted in place (float32 → float64 → its dtype is
    exact: every float32, bfloat16 or float16 value is a float64 value), so it is never held twice."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    warm_up_vector_math()
    original = model.dtype
    logits = {}
    try:
        with torch.no_grad():
            for dtype in (torch.float32, torch.float64):
                model.to(dtype)
                logits[dtype] = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        model.to(original)
    return ReferenceLogits(input_ids, attention_mask, logits[torch.float32], logits[torch.float64])


def check_against_reference(
    exported: torch.Tensor, reference: ReferenceLogits, what: str, bound: float | None = None, rule: str | None = None
) -> dict[str, Any]:
    """max |exported − float32 logits| and max |exported − float64 logits|; `ValueError` naming `what` when the
    latter exceeds `bound` (default: `reference.float32_bound()`)."""
    exported = torch.as_tensor(exported)
    if tuple(exported.shape) != tuple(reference.float64.shape):
        raise ValueError(
            f"{what} returned logits of shape {tuple(exported.shape)}, expected {tuple(reference.float64.shape)}"
        )
    valid = reference.valid
    if not torch.isfinite(exported.double()[valid]).all():
        raise ValueError(f"{what} returned non-finite logits")
    if bound is None:
        bound, rule = reference.float32_bound(), float32_rule()
    figures = {
        "max_abs_diff": max_abs(exported, reference.float32, valid),
        "max_abs_error": max_abs(exported, reference.float64, valid),
        "source_error": reference.source_error,
        "bound": bound,
        "bound_rule": rule,
    }
    if not figures["max_abs_error"] <= bound:
        raise ValueError(
            f"{what} does not reproduce the model: its logits differ from the float64 reference by up to "
            f"{figures['max_abs_error']:.4g}, more than the bound {bound:.4g} ({rule}); ScratchGPT's own float32 "
            f"logits differ by {figures['source_error']:.4g}. Nothing was written."
        )
    return figures


def float32_rule(factor: float = FLOAT32_FACTOR) -> str:
    return f"float32 rounding: {factor:g} x max(ScratchGPT float32 error, eps32 x largest logit)"


def library_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------------------------------
def check_destination(
    source: Path,
    out: Path,
    overwrite: bool,
    check_replaceable: Callable[[Path], None],
    source_name: str = "model folder",
    inside_source: bool = True,
) -> None:
    """Before anything is read, for every command that writes a folder from a source (convert, export, merge-lora):
    refuse a destination that is the source or holds it (replacing it would delete the source), one inside a source
    folder unless `inside_source`, and an existing one without `overwrite` or that `check_replaceable` refuses (only
    a folder the same command wrote may be replaced)."""
    source_resolved, out_resolved = source.resolve(), out.resolve()
    if out_resolved == source_resolved:
        raise ValueError(f"the output {out} is the {source_name} itself; choose another path")
    if out_resolved in source_resolved.parents:
        raise ValueError(f"the output {out} contains the {source_name} {source}; choose another path")
    if not inside_source and source_resolved in out_resolved.parents:
        raise ValueError(f"the output {out} lies inside the {source_name} {source}; choose a path outside it")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
        check_replaceable(out)


def replaceable_folder_check(format_name: str, file_pattern: re.Pattern) -> Callable[[Path], None]:
    """A check that an existing folder is an earlier export of `format_name` (its `export_report.json` says so) and
    holds only files such an export writes, i.e. a folder `overwrite=True` may delete."""

    def check(out: Path) -> None:
        if out.is_symlink() or not out.is_dir():
            raise FileExistsError(
                f"{out} exists and is not a folder; overwrite replaces only an earlier {format_name} export"
            )
        try:
            recorded = json.loads((out / EXPORT_REPORT_NAME).read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != format_name:
            raise FileExistsError(
                f"{out} exists and is not a {format_name} export (no {EXPORT_REPORT_NAME} saying so); overwrite "
                "replaces only an earlier export of the same format. Choose another destination"
            )
        foreign = sorted(
            entry.name for entry in out.iterdir()
            if entry.is_symlink() or not entry.is_file() or not file_pattern.fullmatch(entry.name)
        )  # fmt: skip
        if foreign:
            raise FileExistsError(
                f"{out} holds {foreign}, which a {format_name} export does not write; overwrite would delete them. "
                "Move them out or choose another destination"
            )

    return check


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A new hidden folder next to `out` (same filesystem: the final rename is atomic), deleted unless published."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_folder(tmp: Path, out: Path, overwrite: bool, check_replaceable: Callable[[Path], None]) -> None:
    """Move the complete, checked `tmp` to `out`. An existing `out` (only with `overwrite`, and only one
    `check_replaceable` accepts, checked again now) is moved aside first and deleted last: at every instant `out` is
    the old complete folder, absent, or the new one."""
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private; the export is an ordinary folder
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)  # fails rather than merging if `out` appeared meanwhile as a non-empty folder
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    check_replaceable(out)
    aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, aside)
    os.rename(tmp, out)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staging_file(out: Path) -> Iterator[Path]:
    """A new hidden file path next to `out`, deleted unless published."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def publish_file(tmp: Path, out: Path, overwrite: bool, check_replaceable: Callable[[Path], None]) -> None:
    """Move the complete, checked file `tmp` to `out`: without `overwrite` by a hard link that fails if `out`
    exists (never replacing a file that appeared meanwhile), with it by an atomic rename over the old file."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private; the export is an ordinary file
    if overwrite and (out.exists() or out.is_symlink()):
        check_replaceable(out)
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it") from None
    tmp.unlink()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def format_figure(value: float) -> str:
    return f"{value:.3g}"


__all__ = [
    "CHECK_TEXT",
    "EXPORT_REPORT_NAME",
    "ExportReport",
    "ReferenceLogits",
    "Source",
    "check_against_reference",
    "check_destination",
    "check_prompt",
    "load_source",
    "publish_file",
    "publish_folder",
    "reference_logits",
    "replaceable_folder_check",
    "staging_file",
    "staging_folder",
]
