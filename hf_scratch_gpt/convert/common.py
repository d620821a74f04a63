"""What every peer-checkpoint converter shares: safe readers, the tokenizer given with `--tokenizer`, and writing →
verifying → publishing a folder exactly as the OpenAI converter does (`hf_scratch_gpt.openai.convert`, whose
safetensors writer, config/code writer, replace-only-a-converted-folder rule and atomic rename are reused here).

A converter module reads its file into a `SourceModel` — ScratchGPT config fields, the tensors under ScratchGPT's
names, and the source project's own forward in float64 — and hands it to `publish_conversion`, which writes into a
hidden temporary folder next to the target, loads that folder with `AutoModelForCausalLM.from_pretrained`, compares
its logits with the source's forward, writes the model card, and only then renames the folder into place. Every
check of the input happens before anything is written; on any failure the temporary folder (and any parent folder
the conversion created) is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.utils import logging
from transformers.utils.hub import convert_file_size_to_int

from ..configuration_scratch_gpt import ScratchGPTConfig
from ..export.common import check_destination
from ..hub import MODEL_CARDS_DIR
from ..loading import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from ..openai.convert import (
    DEFAULT_MAX_SHARD_SIZE,
    OUTPUT_DTYPES,
    VERIFY_MAX_TOKENS,
    ConversionReport,
    OutputDtype,
    StreamingSafetensorsWriter,
    _replace_folder,
    check_replaceable,
    plan_shards,
    size_name,
    write_config_and_code,
)
from ..openai.tokenizer import END_OF_TEXT, openai_tokenizer, save_openai_tokenizer

logger = logging.get_logger(__name__)

# `torch.compile` wraps the model in an OptimizedModule whose state dict prefixes every key with this (nanoGPT's
# train.py saves the compiled module's state dict when run with compile=True).
COMPILED_PREFIX = "_orig_mod."
# GPT-2's BPE: 50257 tokens, <|endoftext|> the last. nanoGPT (no meta.pkl), llm.c and the book all use it.
GPT2_VOCAB_SIZE = 50257
GPT2_END_OF_TEXT_ID = 50256
MODEL_CARD_TEMPLATE = MODEL_CARDS_DIR / "converted_checkpoint.md"
# Fixed token ids the verification runs: drawn once from this seed over the model's whole vocabulary, so every
# region of the embedding (a wrong row order, a cut vocabulary) shows in the logits.
VERIFY_SEED = 29
# magic of llm.c's tokenizer file (`write_tokenizer` in train_gpt2.py), recognised to explain why it is refused.
LLMC_TOKENIZER_MAGIC = 20240328


# ---------------------------------------------------------------------------------------------------------------------
# what a converter hands over, and what it gets back
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class SourceModel:
    """A peer checkpoint read and checked.

    `config` holds ScratchGPTConfig fields (shape, activation, dropout, tying); `tensors` the weights under
    ScratchGPT's names (float32, (out, in) Linear layout; a tied `lm_head.weight` absent); `reference(ids)` the source
    project's own forward in float64, computed from the file's tensors under the source's own names, → (T, V).
    """

    format: str  # "nanogpt", "llmc", "lfs"
    project: str  # the project's name as the card shows it
    forward: str  # the forward pass the reference follows, as the card names it
    path: Path
    description: str  # what the file is, one phrase for the card
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    reference: Callable[[list[int]], torch.Tensor]
    details: dict[str, str] = field(default_factory=dict)  # facts from the file worth keeping (iter_num, version...)
    notes: list[str] = field(default_factory=list)  # what the conversion changed or chose, one sentence each
    ignored: list[str] = field(default_factory=list)  # entries of the file that are not carried over


@dataclass
class PeerConversionReport(ConversionReport):
    """`ConversionReport` plus where the model came from and what the conversion decided."""

    source_format: str = ""
    source: str = ""
    tokenizer: str | None = None  # what the folder's tokenizer is, None when it has none
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# reading files without running code
# ---------------------------------------------------------------------------------------------------------------------
def existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    return path


def load_torch_file(path: Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain Python data only, never a pickled class
    or function (those could run code). Every failure is a `ValueError` naming the file."""
    try:
        # Memory-mapped when the file is torch.save's zip format (the default since torch 1.6): tensors are read
        # lazily and no second copy of the checkpoint is made.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))  # torch names the global it refused
        what_global = f"the global {found.group(1)}" if found else "something other than tensors and plain data"
        raise ValueError(
            f"{path} holds {what_global}, which torch.load(weights_only=True) refuses: reading it would import and "
            f"possibly run code, so it is not read. A {what} holds only tensors and plain data"
        ) from None
    except Exception as error:  # torch's own errors for a truncated or foreign file are RuntimeError, EOFError, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} is not a readable {what} (truncated or not a torch.save file): {first_line}"
        ) from None


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, numbers, booleans and None only: every global — a class, a function,
    `os.system` — is refused before it is imported, so nothing in the file can run."""

    def find_class(self, module: str, name: str):
        raise _RefusedGlobal(f"global {module}.{name}")


def read_plain_pickle(path: Path) -> Any:
    """The object in a pickle file of plain data (nanoGPT's `meta.pkl`); `ValueError` naming the file otherwise."""
    try:
        with open(path, "rb") as file:
            return _PlainDataUnpickler(file).load()
    except _RefusedGlobal as error:
        raise ValueError(
            f"{path} is not a pickle of plain data: it refers to {error}, which would have to be imported (and could "
            f"run code). Refused; nothing in it was executed"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError) as error:
        raise ValueError(f"{path} is not a readable pickle (truncated or corrupted): {error!r}") from None


def strip_compiled_prefix(state: dict[str, Any], path: Path) -> tuple[dict[str, Any], bool]:
    """`state` with `_orig_mod.` removed from its keys (a `torch.compile`d model's state dict), and whether any key
    had it."""
    stripped = {key.removeprefix(COMPILED_PREFIX): value for key, value in state.items()}
    if len(stripped) != len(state):
        raise ValueError(f"{path}: the state dict has keys both with and without the {COMPILED_PREFIX!r} prefix")
    return stripped, any(key.startswith(COMPILED_PREFIX) for key in state)


def count_layers(state: dict[str, Any], prefix: str) -> int:
    """1 + the largest layer index among the keys `prefix{i}.…` (0 when there are none)."""
    indices = [key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)]
    return 1 + max((int(index) for index in indices if index.isdigit()), default=-1)


def check_tensors(
    path: Path, found: dict[str, Any], expected: dict[str, tuple[int, ...]], source_of_shapes: str
) -> None:
    """Every expected tensor present with its shape, floating point, and nothing else; `ValueError` naming the file,
    the tensors and the shapes otherwise."""
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing or unexpected:
        parts = []
        listed = lambda names: ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")  # noqa: E731
        if missing:
            plural = "s" if len(missing) > 1 else ""
            parts.append(f"lacks {len(missing)} tensor{plural} the model needs ({listed(missing)})")
        if unexpected:
            plural = "entries" if len(unexpected) > 1 else "entry"
            parts.append(f"has {len(unexpected)} {plural} this model does not have ({listed(unexpected)})")
        raise ValueError(f"{path} {' and '.join(parts)}")
    for name, shape in expected.items():
        tensor = found[name]
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            kind = tensor.dtype if torch.is_tensor(tensor) else type(tensor).__name__
            raise ValueError(f"{path}: {name} is {kind}, not a floating-point tensor")
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensor.shape)} but {source_of_shapes} give {shape}; the file is "
                f"inconsistent"
            )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# the tokenizer given with --tokenizer
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class TokenizerSource:
    """A tokenizer built and checked before anything is written; `save(folder)` writes its files."""

    tokenizer: PreTrainedTokenizerBase
    description: str
    save: Callable[[Path], None]


def char_tokenizer(itos: dict[int, str], model_max_length: int | None = None) -> PreTrainedTokenizerBase:
    """A transformers tokenizer that encodes and decodes as nanoGPT's character-level `encode`/`decode`:
    one id per character (`stoi[c]`), decoded by concatenation (`''.join(itos[i])`), no special tokens, no
    normalisation, no spaces added or removed. A character outside the vocabulary is an error, as in nanoGPT."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={char: i for i, char in itos.items()}, unk_token=None))
    # Every code point on its own, newlines and spaces included ([\s\S] rather than '.', which skips '\n').
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join the characters with nothing between them
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    # clean_up_tokenization_spaces would turn " ," into "," on decode: not nanoGPT's decode.
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **extra)


def read_char_vocabulary(path: Path) -> dict[int, str]:
    """`itos` of nanoGPT's `meta.pkl` ({vocab_size, itos, stoi}, as data/shakespeare_char/prepare.py writes it),
    checked: ids 0..n-1, one character each, `stoi` its inverse."""
    meta = read_plain_pickle(path)
    if not isinstance(meta, dict) or not {"vocab_size", "itos", "stoi"} <= meta.keys():
        keys = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{path} is not nanoGPT's meta.pkl: expected a dict with vocab_size, itos and stoi, got {keys}"
        )
    itos, stoi, size = meta["itos"], meta["stoi"], meta["vocab_size"]
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))) or len(itos) == 0:
        raise ValueError(f"{path}: itos must map the ids 0..n-1 to characters")
    bad = [(i, c) for i, c in itos.items() if not isinstance(c, str) or len(c) != 1]
    if bad:
        raise ValueError(f"{path}: itos must map ids to single characters (a character-level vocabulary); "
                         f"got {bad[:3]}")
    if stoi != {c: i for i, c in itos.items()}:
        raise ValueError(f"{path}: stoi is not the inverse of itos")
    if size != len(itos):
        raise ValueError(f"{path}: vocab_size is {size!r} but itos has {len(itos)} characters")
    return itos


def read_tokenizer(path: str | os.PathLike, model_max_length: int) -> TokenizerSource:
    """The tokenizer `--tokenizer PATH` names: nanoGPT's character vocabulary (`meta.pkl`), or a GPT-2 BPE folder
    (`vocab.json` + `merges.txt`, built as the OpenAI converter builds `encoder.json` + `vocab.bpe`; or a saved
    transformers tokenizer with `tokenizer.json`). Never downloads anything."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    if path.is_file():
        with open(path, "rb") as file:
            head = file.read(4)
        if len(head) == 4 and int.from_bytes(head, "little") == LLMC_TOKENIZER_MAGIC:
            raise ValueError(
                f"{path} is llm.c's tokenizer file: it holds each token's bytes for decoding but not the BPE merges, "
                f"so it cannot encode text. Pass a GPT-2 BPE folder instead (vocab.json + merges.txt, or "
                f"tokenizer.json)"
            )
        if path.suffix != ".pkl":
            raise ValueError(
                f"{path}: --tokenizer takes nanoGPT's meta.pkl or a tokenizer folder (vocab.json + merges.txt, or "
                f"tokenizer.json)"
            )
        itos = read_char_vocabulary(path)
        tokenizer = char_tokenizer(itos, model_max_length)
        every_id = list(range(len(itos)))
        every_char = "".join(itos[i] for i in every_id)
        if tokenizer(every_char, verbose=False)["input_ids"] != every_id or tokenizer.decode(every_id) != every_char:
            raise ValueError(f"the character tokenizer built from {path} does not reproduce its vocabulary")
        return TokenizerSource(tokenizer, f"nanoGPT's character vocabulary ({len(itos)} characters, from {path.name})",
                               lambda folder: tokenizer.save_pretrained(folder))
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        tokenizer = openai_tokenizer(vocab, merges, model_max_length)
        source = TokenizerSource(
            tokenizer, f"GPT-2 byte-level BPE ({len(tokenizer)} tokens, vocab.json + merges.txt)",
            lambda folder: save_openai_tokenizer(vocab, merges, folder, model_max_length),
        )
    elif (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, model_max_length=model_max_length)
        source = TokenizerSource(tokenizer, f"{type(tokenizer).__name__} ({len(tokenizer)} tokens, tokenizer.json)",
                                 lambda folder: tokenizer.save_pretrained(folder))
    else:
        raise FileNotFoundError(f"{path} has neither vocab.json + merges.txt nor tokenizer.json")
    # transformers can build a tokenizer that encodes nothing without complaint (DESIGN.md): make sure it encodes.
    if not tokenizer("Hello world")["input_ids"]:
        raise ValueError(f"the tokenizer in {path} encodes 'Hello world' to no tokens")
    return source


def special_token_ids(tokenizer: TokenizerSource | None, vocab_size: int, notes: list[str]) -> dict[str, int | None]:
    """bos/eos for the config: the tokenizer's; without one, GPT-2's <|endoftext|> (50256) when the vocabulary
    covers GPT-2's, which is what all three projects train with by default; else none."""
    if tokenizer is not None:
        return {"bos_token_id": tokenizer.tokenizer.bos_token_id, "eos_token_id": tokenizer.tokenizer.eos_token_id}
    if vocab_size >= GPT2_VOCAB_SIZE:
        notes.append(f"No tokenizer was given; bos/eos are set to {GPT2_END_OF_TEXT_ID} ({END_OF_TEXT} in GPT-2's "
                     f"BPE, the projects' default tokenizer).")
        return {"bos_token_id": GPT2_END_OF_TEXT_ID, "eos_token_id": GPT2_END_OF_TEXT_ID}
    return {"bos_token_id": None, "eos_token_id": None}


def check_tokenizer_fits(tokenizer: TokenizerSource | None, vocab_size: int, source: Path, notes: list[str]) -> None:
    if tokenizer is None:
        return
    size = len(tokenizer.tokenizer)
    if size > vocab_size:
        raise ValueError(
            f"the tokenizer has {size} tokens but the model in {source} has a vocabulary of {vocab_size}: they do not "
            f"belong together"
        )
    if size < vocab_size:
        notes.append(f"The model's vocabulary has {vocab_size} ids, the tokenizer {size} tokens: ids {size}..."
                     f"{vocab_size - 1} are padding that no text encodes to (their logits are kept as the source "
                     f"computes them).")


# ---------------------------------------------------------------------------------------------------------------------
# output folder: checks, weights, verification, card, publishing
# ---------------------------------------------------------------------------------------------------------------------
def check_dtype(dtype: str) -> None:
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {list(OUTPUT_DTYPES)}, got {dtype!r}")


def check_output(source: Path, out: Path, overwrite: bool) -> None:
    """Before anything is read: `out` is not the source file and does not contain it, and exists only when it may be
    replaced (a folder a conversion wrote, with `overwrite`)."""
    check_destination(source, out, overwrite, check_replaceable, source_name="source file")


def scratch_config(model: SourceModel, special_ids: dict[str, int | None], dtype: str) -> ScratchGPTConfig:
    config = ScratchGPTConfig(**model.config, **special_ids, dtype=dtype)
    config.architectures = [ScratchGPTForCausalLM.__name__]
    return config


def write_weights(
    tensors: dict[str, torch.Tensor], config: ScratchGPTConfig, folder: Path, dtype: OutputDtype
) -> list[str]:
    """The tensors as safetensors in the model's own parameter order (sharded past the OpenAI converter's default
    shard size, with an index); a tied `lm_head.weight` is not stored. Returns the file names."""
    with torch.device("meta"):
        skeleton = ScratchGPTForCausalLM(config)
    entries = [
        (name, tuple(tensor.shape)) for name, tensor in skeleton.state_dict().items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    ]  # fmt: skip
    mismatched = sorted({name for name, _ in entries} ^ set(tensors)) + [
        name for name, shape in entries if name in tensors and tuple(tensors[name].shape) != shape
    ]
    if mismatched:  # a converter's name table and the model disagree: a bug here, not in the user's file
        raise ValueError(f"converted tensors do not match ScratchGPT's parameters: {mismatched[:5]}")
    itemsize = torch.empty((), dtype=dtype.torch_dtype).element_size()
    shards = plan_shards([(name, tensors[name].numel() * itemsize) for name, _ in entries],
                         convert_file_size_to_int(DEFAULT_MAX_SHARD_SIZE))
    names = ([SAFE_WEIGHTS_NAME] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for file_name, indices in zip(names, shards):
        writer = StreamingSafetensorsWriter(folder / file_name, [entries[i] for i in indices], dtype)
        try:
            for i in indices:
                name = entries[i][0]
                writer.write(name, tensors[name].to(dtype.torch_dtype))
                weight_map[name] = file_name
        except BaseException:
            writer.abort()
            raise
        writer.close()
        total += writer.data_bytes
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


def verification_ids(vocab_size: int, n_positions: int) -> list[int]:
    """The fixed prompt every conversion is checked on: min(n_positions, 32) seeded ids over the whole vocabulary."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    return torch.randint(0, vocab_size, (min(n_positions, VERIFY_MAX_TOKENS),), generator=generator).tolist()


def verify_folder(folder: Path, dtype_name: str, tokens: list[int], reference: Callable[[list[int]], torch.Tensor],
                  source: Path) -> dict[str, float | int]:
    """Load `folder` as a user will, run `tokens`, compare with the source's float64 forward; `ValueError` beyond
    the dtype's tolerance (the OpenAI converter's: float32 rounding for float32)."""
    dtype = OUTPUT_DTYPES[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype.torch_dtype).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()  # (T, V)
    del model
    expected = reference(tokens)
    max_abs_diff = float((logits - expected).abs().max())
    scale = float(expected.abs().max())
    relative = max_abs_diff / max(1.0, scale)
    logger.info(f"verification: max |logits - source forward| = {max_abs_diff:.3g} (logit scale {scale:.3g})")
    if not relative <= dtype.tolerance:  # also catches NaN
        raise ValueError(
            f"verification failed: the converted {dtype_name} model's logits differ from the forward of {source} by "
            f"{max_abs_diff:.4g} (relative {relative:.3g} > tolerance {dtype.tolerance}); nothing was written"
        )
    return {"verify_tokens": len(tokens), "max_abs_diff": max_abs_diff, "relative_diff": relative,
            "reference_logit_scale": scale}


def render_model_card(model: SourceModel, report: PeerConversionReport, config: ScratchGPTConfig, command: str,
                      sha256: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    if not MODEL_CARD_TEMPLATE.is_file():
        raise FileNotFoundError(f"model card template not found: {MODEL_CARD_TEMPLATE}")
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation",
        tags=["text-generation", "gpt2", "custom_code", "scratch_gpt", model.format],
    )
    bullets = lambda lines: "\n".join(f"- {line}" for line in lines) or "- (none)"  # noqa: E731
    verification = (
        f"Before the folder was published, the converted model (loaded with `AutoModelForCausalLM.from_pretrained`, "
        f"{report.dtype}) and {model.forward}, recomputed in float64 from the tensors of "
        f"`{model.path.name}`, were run on the same {report.verify_tokens} fixed token ids (seed {VERIFY_SEED}). "
        f"Maximum absolute difference of the logits: **{report.max_abs_diff:.3g}** (logits up to "
        f"{report.reference_logit_scale:.3g} in magnitude; relative {report.relative_diff:.3g})."
    )
    card = ModelCard.from_template(
        card_data, template_path=str(MODEL_CARD_TEMPLATE),
        project=model.project, source=model.path.name, source_description=model.description, sha256=sha256,
        command=command, details=bullets(f"{key}: {value}" for key, value in model.details.items()),
        notes=bullets(report.notes), ignored=", ".join(f"`{name}`" for name in report.ignored_variables) or "nothing",
        tokenizer=report.tokenizer or "none: the source came without one and no `--tokenizer` was given",
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_positions=config.n_positions,
        vocab_size=config.vocab_size, activation=config.activation_function,
        tied="yes (lm_head = wte)" if config.tie_word_embeddings else "no (separate lm_head)",
        parameters=f"{report.parameters:,}", dtype=report.dtype,
        weight_files=", ".join(f"`{name}`" for name in report.weight_files), verification=verification,
    )
    return str(card)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it created, deepest first (removed again if the conversion fails)."""
    created = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        created.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def publish_conversion(
    model: SourceModel,
    out: Path,
    tokenizer: TokenizerSource | None,
    dtype: str,
    overwrite: bool,
    command: str,
    started: float,
) -> PeerConversionReport:
    """Write `model` into a temporary folder next to `out`, verify it against the source's forward, write the card,
    and rename it to `out` (replacing a converted folder only with `overwrite`). Nothing stays behind on failure."""
    notes = list(model.notes)
    check_tokenizer_fits(tokenizer, model.config["vocab_size"], model.path, notes)
    special_ids = special_token_ids(tokenizer, model.config["vocab_size"], notes)
    if tokenizer is None:
        logger.warning(f"no tokenizer given: {out} is written without one (pass --tokenizer PATH to include it)")
    config = scratch_config(model, special_ids, dtype)
    tokens = verification_ids(config.vocab_size, config.n_positions)
    sha256 = file_sha256(model.path)
    created = _make_parents(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        weight_files = write_weights(model.tensors, config, tmp, OUTPUT_DTYPES[dtype])
        write_config_and_code(config, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        hparams = {"n_vocab": config.vocab_size, "n_ctx": config.n_positions, "n_embd": config.n_embd,
                   "n_head": config.n_head, "n_layer": config.n_layer}
        report = PeerConversionReport(
            out_dir=str(out), size=size_name(hparams), dtype=dtype,
            parameters=sum(tensor.numel() for tensor in model.tensors.values()), weight_files=weight_files,
            total_bytes=sum((tmp / name).stat().st_size for name in weight_files), seconds=0.0, verified=True,
            ignored_variables=list(model.ignored), source_format=model.format, source=str(model.path),
            tokenizer=None if tokenizer is None else tokenizer.description, notes=notes,
        )
        for key, value in verify_folder(tmp, dtype, tokens, model.reference, model.path).items():
            setattr(report, key, value)
        (tmp / "README.md").write_text(render_model_card(model, report, config, command, sha256), encoding="utf-8")
        _replace_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    report.seconds = time.perf_counter() - started
    logger.info(f"converted {model.path} ({model.project}) → {out} in {report.seconds:.1f} s")
    return report


__all__ = [
    "COMPILED_PREFIX",
    "GPT2_VOCAB_SIZE",
    "PeerConversionReport",
    "SourceModel",
    "TokenizerSource",
    "char_tokenizer",
    "check_dtype",
    "check_output",
    "check_tensors",
    "count_layers",
    "existing_file",
    "load_torch_file",
    "publish_conversion",
    "read_char_vocabulary",
    "read_plain_pickle",
    "read_tokenizer",
    "strip_compiled_prefix",
    "verification_ids",
]
