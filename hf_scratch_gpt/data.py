"""Text → documents → train/validation split → token ids → fixed-size blocks; plus the collators.

The causal-LM path follows transformers' `run_clm` example: tokenize every document in a batched `datasets.map`,
concatenate, cut into blocks of `block_size` tokens. Documents are separated by the tokenizer's end-of-text token,
as in GPT-2's training data. Blocks store only `input_ids`; `LMBlockCollator` sets `labels = input_ids` per batch
(the model shifts them), so the dataset never holds a second copy of the tokens.

Built for corpora far larger than memory: local files are read by `datasets`' own builders into the Arrow cache
(memory-mapped, reused by fingerprint on the next run), tokenization runs in `num_proc` processes with the fast
tokenizer's batch encoder, and packing walks the token column in bounded batches, carrying the remainder from one
batch to the next, so memory does not grow with the corpus and at most one remainder (< block_size) is dropped per
split. `streaming=True` gives `IterableDataset`s that read, tokenize and pack on the fly (nothing is cached).

Sources (`load_documents`):
- `None` or `"pydoc"`: the embedded default corpus, the documentation topics that ship inside every CPython
  (`pydoc_data.topics`, about 465 k characters), split into paragraphs; no download.
- a `.txt` file: its paragraphs (blocks separated by a blank line) are the documents (`text` builder,
  `sample_by="paragraph"`).
- a `.jsonl` / `.json` file: one document per record, text in `text_column` (`json` builder); `.parquet` likewise.
- a folder (every supported file in it and below, sorted by path) or a glob such as `data/*.jsonl`; all files of
  one kind. Empty (0-byte) files are skipped with a warning that counts them.
- anything else: a Hugging Face Hub dataset id (`name` or `owner/name`) → `datasets.load_dataset(id, config,
  split=...)`; needs the Hub (or its local cache).

Conversations (`load_conversations`, `build_chat_datasets`): records `{"messages": [{"role", "content"}, ...]}`,
tokenized by the tokenizer's chat template, labels on the assistant's tokens only (docs/chat.md), one conversation
per example, padded by `CompletionCollator`.

Bad input fails before training with the file and line (row for Parquet) named: bad UTF-8, a malformed JSON line, a
line that is not a JSON object (e.g. an array), a record without the text field (or with null text), or a text field
that holds an object, array, number or boolean instead of a string (`check_text_records`, the one check of text
records).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, Value, load_dataset

from .checks_scratch_gpt import IGNORE_INDEX
from .openai.tokenizer import END_OF_TEXT

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "pydoc"
PARAGRAPH_SEPARATOR = "\n\n"
# extension → (datasets builder, its options). A .txt file's paragraphs are its documents, as `split_paragraphs`.
LOCAL_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".txt": ("text", {"sample_by": "paragraph"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
GLOB_CHARACTERS = "*?["
MAP_BATCH_SIZE = 1000  # documents per tokenizer call (run_clm's default) and per Arrow record batch written
MIN_DOCUMENTS_PER_WORKER = 10_000  # below this a worker process costs more to start than it saves
STREAMING_EVAL_BLOCKS = 1000  # default cap on streamed validation blocks: a stream has no end to wait for
TOKEN_TYPE = pa.int32()  # 4 bytes per token on disk and in memory; ids < 2^31


# ---------------------------------------------------------------------------------------------------------------------
# Raw text
# ---------------------------------------------------------------------------------------------------------------------
def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of `text` (separated by a blank line), without empty or whitespace-only ones."""
    return [paragraph for paragraph in text.split(PARAGRAPH_SEPARATOR) if paragraph.strip()]


def default_corpus_documents() -> list[str]:
    """The embedded corpus: CPython's pydoc topics (sorted by topic name, so the order is stable), as paragraphs."""
    from pydoc_data.topics import topics

    return [paragraph for name in sorted(topics) for paragraph in split_paragraphs(topics[name])]


def default_num_proc(num_rows: int | None = None) -> int | None:
    """Worker processes for `datasets.map`: the cores this process may use, one per `MIN_DOCUMENTS_PER_WORKER`
    documents at most; None (work in this process) when that is one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_rows is not None:
        cores = min(cores, num_rows // MIN_DOCUMENTS_PER_WORKER)
    return cores if cores > 1 else None


def _looks_like_path(source: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else with a separator, a leading '.', '/' or '~', a known
    extension or a glob character is meant as a local path."""
    normalized = source.replace(os.sep, "/")
    return (
        os.path.exists(source)
        or normalized.startswith((".", "/", "~"))
        or normalized.count("/") > 1
        or os.path.splitext(source)[1].lower() in LOCAL_BUILDERS
        or any(character in source for character in GLOB_CHARACTERS)
    )


def resolve_local_files(source: str) -> tuple[str, list[str]]:
    """(builder extension, sorted files) of a local file, folder or glob. Raises `FileNotFoundError` when nothing
    matches and `ValueError` for unsupported or mixed file kinds."""
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        candidates = [
            os.path.join(root, name) for root, _, names in os.walk(expanded) for name in names
            if os.path.splitext(name)[1].lower() in LOCAL_BUILDERS
        ]  # fmt: skip
        if not candidates:
            raise FileNotFoundError(f"folder {source!r} holds no {'/'.join(LOCAL_BUILDERS)} file")
    elif any(character in expanded for character in GLOB_CHARACTERS):
        candidates = [path for path in glob.glob(expanded, recursive=True) if os.path.isfile(path)]
        if not candidates:
            raise FileNotFoundError(f"no file matches {source!r}")
    elif os.path.isfile(expanded):
        candidates = [expanded]
    else:
        raise FileNotFoundError(
            f"text source {source!r} does not exist (expected a {'/'.join(LOCAL_BUILDERS)} file, a folder or a glob)"
        )
    extensions = sorted({os.path.splitext(path)[1].lower() for path in candidates})
    unsupported = [extension for extension in extensions if extension not in LOCAL_BUILDERS]
    if unsupported:
        raise ValueError(f"unsupported text file kind {unsupported} in {source!r}: expected {sorted(LOCAL_BUILDERS)}")
    builders = {LOCAL_BUILDERS[extension][0] for extension in extensions}
    if len(builders) > 1:
        raise ValueError(f"{source!r} mixes file kinds {extensions}; use one kind (.txt, .jsonl/.json or .parquet)")
    return extensions[0], sorted(os.path.abspath(path) for path in candidates)


def _skip_empty_files(files: list[str], source: str) -> list[str]:
    """Drop 0-byte files (the builders cannot infer a schema from them), with one warning counting them."""
    empty = [path for path in files if os.path.getsize(path) == 0]
    if empty:
        logger.warning(
            "skipping %d empty file(s) in %r: %s%s", len(empty), source, ", ".join(empty[:5]),
            " …" if len(empty) > 5 else "",
        )  # fmt: skip
    return [path for path in files if os.path.getsize(path) > 0]


def _json_kind(value: Any) -> str:
    """How an error names a JSON value's type: 'an object', 'an array', 'a boolean', 'a number', 'a string'."""
    kinds = (
        (bool, "a boolean"), (dict, "an object"), (list, "an array"), ((int, float), "a number"), (str, "a string")
    )  # bool first: it is an int
    return next((kind for types, kind in kinds if isinstance(value, types)), type(value).__name__)


def _preview(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_problem(record: Any, text_columns: Sequence[str]) -> str | None:
    """Why one JSON record is not a document with text in every one of `text_columns` (None if it is)."""
    if not isinstance(record, dict):
        return f"{_json_kind(record)} ({_preview(record)}), expected a JSON object with field {text_columns[0]!r}"
    for column in text_columns:
        value = record.get(column)
        if value is None:
            return f"no text in field {column!r} (keys: {sorted(record)})"
        if not isinstance(value, str):
            return f"field {column!r} holds {_json_kind(value)} ({_preview(value)}), expected a string"
    return None


def _parquet_problem(path: str, text_columns: Sequence[str]) -> str | None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=list(text_columns))
    except (pa.ArrowInvalid, KeyError, OSError) as error:
        return f"{path}: {error}"
    for column in text_columns:
        values = table.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            valid = pc.is_valid(values)
            if not pc.any(valid).as_py():
                return f"{path}: field {column!r} holds no text (type {values.type}, every row null)"
            row = pc.index(valid, True).as_py()
            value = values[row].as_py()
            return f"{path} row {row + 1}: field {column!r} holds {values.type} ({_preview(value)}), expected a string"
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            return f"{path} row {row + 1}: no text in field {column!r} (null)"
    return None


def _json_document(path: str) -> Any:
    """A .json file parsed whole (a list of records, or one record), or None when it is not one JSON document
    (e.g. JSON Lines in a .json file) or too large to read at once."""
    if os.path.getsize(path) > 1 << 28:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def locate_bad_input(files: list[str], builder: str, text_column: str | Sequence[str]) -> str | None:
    """The first problem a builder would trip on, or that makes a record unusable as text, as 'FILE line N: what'
    ('FILE row N' for Parquet, 'FILE record N' for a .json file holding one JSON list); None if none is found.

    A problem: bad UTF-8, a line that is not JSON, a line that is not a JSON object (e.g. an array), a record without
    text (missing field or null), or a field that holds something other than a string (an object, array, number or
    boolean). Only called after a builder failed or returned rows that are not all text: it re-reads the files, so
    the normal path pays nothing for it."""
    text_columns = [text_column] if isinstance(text_column, str) else list(text_column)
    for path in files:
        if builder == "parquet":
            problem = _parquet_problem(path, text_columns)
        else:  # a JSON list of strings is the json builder's text rows
            problem = _json_file_problem(
                path, builder, lambda record: _record_problem(record, text_columns), text_columns == ["text"]
            )
        if problem is not None:
            return problem
    return None


def _json_file_problem(path: str, builder: str, record_problem, strings_are_text: bool = False) -> str | None:
    """The first problem of one JSON/JSON Lines (or, for UTF-8 only, text) file: bad UTF-8, a line that is not JSON,
    or a record `record_problem` objects to, as 'FILE line N: what' ('FILE record N' in a .json file holding one
    JSON list); None if none is found."""
    if builder == "json" and path.lower().endswith(".json"):
        document = _json_document(path)
        if isinstance(document, list):
            for number, record in enumerate(document, start=1):
                problem = None if strings_are_text and isinstance(record, str) else record_problem(record)
                if problem is not None:
                    return f"{path} record {number}: {problem}"
            return None
        if isinstance(document, dict):
            problem = record_problem(document)
            return None if problem is None else f"{path}: {problem}"
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return f"{path} line {number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line)"
            if builder != "json" or not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                return f"{path} line {number}: not valid JSON ({error.msg})"
            problem = record_problem(record)
            if problem is not None:
                return f"{path} line {number}: {problem}"
    return None


def _json_lines_problem(path: str) -> str | None:
    """A .jsonl file whose first line opens a JSON array: `datasets`' json builder would read the whole file as one
    JSON list (a list of strings becomes text rows), not as one record per line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            stripped = (raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw).strip()  # a UTF-8 BOM
            if stripped:
                if stripped.startswith(b"["):
                    return f"{path} line {number}: a JSON array, expected one JSON object per line (JSON Lines)"
                return None
    return None


def _describe_feature(feature: Any) -> str:
    """A column's `datasets` feature in words: 'int64 values', 'objects', 'lists', 'mixed JSON values'."""
    if isinstance(feature, Value):
        return f"{feature.dtype} values"
    kinds = {"dict": "objects", "List": "lists", "LargeList": "lists", "Sequence": "lists", "Json": "mixed JSON values"}
    return kinds.get(type(feature).__name__, f"{type(feature).__name__} values")


def check_text_records(
    dataset: Dataset, text_columns: Sequence[str], name: str, files: list[str] | None = None, builder: str = ""
) -> None:
    """The one check that every record holds text: each of `text_columns` exists and is a string column without
    nulls. Raises `ValueError` naming the file and line (or row) of the first bad record when `files` are given,
    else the column and the type found."""
    for column in text_columns:
        if column not in dataset.column_names:
            raise ValueError(f"{name} has no column {column!r}; its columns are {dataset.column_names}")
        feature = dataset.features[column]
        is_text = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
        missing = dataset.data.column(column).null_count
        if is_text and not missing:
            continue
        problem = locate_bad_input(files, builder, text_columns) if files else None
        if not is_text:
            if problem is not None:  # it names the type of the first value that is not a string
                raise ValueError(f"cannot read {name}: {problem}")
            raise ValueError(f"{name}: field {column!r} holds {_describe_feature(feature)}, expected strings")
        raise ValueError(f"{name}: {missing} record(s) have no text in {column!r}; first: {problem or 'a null'}")


def _is_blank(path: str, chunk_size: int = 1 << 20) -> bool:
    with open(path, encoding="utf-8") as handle:
        while chunk := handle.read(chunk_size):
            if chunk.strip():
                return False
    return True


def _has_text(batch: dict[str, list], text_column: str) -> list[bool]:
    return [bool(text.strip()) for text in batch[text_column]]  # strings without nulls: check_text_records


def load_documents(
    source: str | None = None,
    text_column: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
    streaming: bool = False,
    num_proc: int | None = None,
    other_text_columns: Sequence[str] = (),
) -> Dataset | IterableDataset:
    """One document per row in column `text_column` (see the module docstring for sources).

    A `Dataset` backed by the Arrow cache, or with `streaming=True` an `IterableDataset` read lazily.
    `other_text_columns` (e.g. the completion of prompt/completion pairs) must hold text too; documents are kept or
    dropped (empty, whitespace-only) by `text_column` alone.
    Raises `FileNotFoundError` for a missing local path, `ConnectionError` when a Hub dataset cannot be reached, and
    `ValueError` naming the file and line (row for Parquet) for bad UTF-8, a malformed JSON line, a line that is not a
    JSON object, a record without text or whose text field is not a string (`check_text_records`), and when the
    source has no usable text (no rows, or only empty / whitespace-only text), so a bad corpus fails before any
    training starts.
    """
    text_columns = [text_column, *(column for column in other_text_columns if column != text_column)]
    if source is None or source == DEFAULT_CORPUS:
        dataset = Dataset.from_dict({text_column: default_corpus_documents()})
        return dataset.to_iterable_dataset() if streaming else dataset
    if not source.strip():
        raise ValueError(
            f"dataset {source!r} is empty: expected {DEFAULT_CORPUS!r}, a {'/'.join(LOCAL_BUILDERS)} file, a folder, "
            "a glob or a Hugging Face Hub dataset id"
        )
    files: list[str] = []
    builder = ""
    if _looks_like_path(source):
        extension, files = resolve_local_files(source)
        files = _skip_empty_files(files, source)
        if not files:
            raise ValueError(f"{source!r} contains no text: every file is empty")
        builder, options = LOCAL_BUILDERS[extension]
        if extension == ".jsonl":
            problem = next(filter(None, map(_json_lines_problem, files)), None)
            if problem is not None:
                raise ValueError(f"cannot read {source!r}: {problem}")
        try:
            dataset = load_dataset(
                builder, data_files=files, split="train", streaming=streaming,
                num_proc=None if streaming else _file_workers(num_proc, files), **options,
            )  # fmt: skip
        except Exception as error:  # the builders wrap the cause (UnicodeDecodeError, ArrowInvalid) in their own
            problem = locate_bad_input(files, builder, text_columns)
            if problem is not None:
                raise ValueError(f"cannot read {source!r}: {problem}") from error
            if builder != "parquet" and all(_is_blank(path) for path in files):  # e.g. only blank lines: no rows
                raise ValueError(f"{source!r} contains no text: every document is empty or whitespace-only") from error
            raise
        if builder == "text" and text_column != "text":
            dataset = dataset.rename_column("text", text_column)
    else:  # a dataset on the Hugging Face Hub (or in the local datasets cache)
        try:
            dataset = load_dataset(source, dataset_config, split=dataset_split, streaming=streaming)
        except ConnectionError as error:
            raise ConnectionError(
                f"could not reach the Hugging Face Hub to load dataset {source!r} ({error}); check the network, or "
                "unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE. A local path must exist (use ./NAME for a folder)"
            ) from error
    name = repr(source)
    if streaming:
        return _stream_with_text(dataset, text_columns, name, files, builder)
    check_text_records(dataset, text_columns, name, files, builder)
    dataset = dataset.filter(
        _has_text, batched=True, fn_kwargs={"text_column": text_column},
        num_proc=default_num_proc(len(dataset)) if num_proc is None else _positive_or_none(num_proc),
        desc="Dropping empty documents",
    )  # fmt: skip
    if len(dataset) == 0:
        raise ValueError(f"{name} contains no text: every document is empty or whitespace-only")
    return dataset


def _positive_or_none(num_proc: int | None) -> int | None:
    return num_proc if num_proc and num_proc > 1 else None


def _file_workers(num_proc: int | None, files: list[str]) -> int | None:
    """load_dataset parallelises over files: never more workers than files, and by default one per 64 MB."""
    if num_proc is None:
        return _positive_or_none(min(default_num_proc() or 1, len(files), sum(map(os.path.getsize, files)) >> 26))
    return _positive_or_none(min(num_proc, len(files)))


def _stream_with_text(
    dataset: IterableDataset, text_columns: Sequence[str], name: str, files: list[str], builder: str
) -> IterableDataset:
    """Streamed documents: a record without a string in each of `text_columns` is an error naming it (by file and
    line for local files, by position otherwise); blank ones (by the first column) are dropped."""

    def keep(example: dict[str, Any], index: int) -> bool:
        problem = _record_problem(example, text_columns)
        if problem is not None:
            located = locate_bad_input(files, builder, text_columns) if files else None
            raise ValueError(f"cannot read {name}: {located or f'record {index + 1}: {problem}'}")
        return bool(example[text_columns[0]].strip())

    return dataset.filter(keep, with_indices=True)


def split_train_validation(dataset: Dataset, validation_fraction: float = 0.05, seed: int = 0) -> DatasetDict:
    """Deterministic shuffled split into `train` and `validation` (same seed → same split)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    if len(dataset) < 2:
        raise ValueError(
            f"need at least 2 documents to split into train and validation, got {len(dataset)}; "
            "separate the text into paragraphs with blank lines"
        )
    parts = dataset.train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
    return DatasetDict(train=parts["train"], validation=parts["test"])


def in_validation(index: int, validation_fraction: float, seed: int) -> bool:
    """Whether document `index` is held out: a seeded hash of the index, uniform in [0, 1), below the fraction.
    Needs no length, so it splits a stream; about `validation_fraction` of the documents are held out."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < validation_fraction


def split_stream_train_validation(
    stream: IterableDataset, validation_fraction: float = 0.05, seed: int = 0
) -> IterableDatasetDict:
    """Deterministic split of a stream by a seeded hash of each document's position (see `in_validation`)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    keep_train = lambda _, index: not in_validation(index, validation_fraction, seed)  # noqa: E731
    keep_validation = lambda _, index: in_validation(index, validation_fraction, seed)  # noqa: E731
    return IterableDatasetDict(
        train=stream.filter(keep_train, with_indices=True),
        validation=stream.filter(keep_validation, with_indices=True),
    )


def iterate_texts(dataset: Dataset, text_column: str = "text", batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of raw texts (what `tokenizers`' trainer consumes), read from the Arrow cache one batch at a time."""
    for batch in dataset.select_columns([text_column]).iter(batch_size=batch_size):
        yield batch[text_column]


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer trained from scratch
# ---------------------------------------------------------------------------------------------------------------------
def train_bpe_tokenizer(texts: Iterable[Sequence[str]], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a GPT-2-style byte-level BPE on `texts` (an iterable of batches of strings).

    Byte-level: every string, any Unicode, emoji or control character, encodes and decodes back exactly; there is no
    unknown token. `<|endoftext|>` is the only special token (id 0) and serves as bos, eos and pad.
    Returns a transformers fast tokenizer (save it with `save_pretrained`, load it with `AutoTokenizer`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte symbols + {END_OF_TEXT} = 257")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex split + byte map
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=alphabet,  # all 256 bytes, even ones absent from the corpus → no unknown tokens
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        clean_up_tokenization_spaces=False,  # the clean-up rewrites " ." to "." and would break the round trip
        model_max_length=None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Token blocks for causal-LM training
# ---------------------------------------------------------------------------------------------------------------------
def _fast_backend(tokenizer):
    """The Rust tokenizer behind a transformers fast tokenizer, when calling it directly gives the same ids as
    `tokenizer(texts, add_special_tokens=False)` (it is what that call runs); else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if bool(getattr(tokenizer, "split_special_tokens", False)) != bool(backend.encode_special_tokens):
        return None
    return backend


def encode_to_arrow(texts: list[str], tokenizer, eos_id: int | None) -> pa.ListArray:
    """Token ids of each text (+ `eos_id` when given) as one Arrow list array of int32: one flat buffer and
    offsets, instead of a Python list of lists per document."""
    backend = _fast_backend(tokenizer)
    if backend is not None:
        rows = [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    else:
        rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    extra = 0 if eos_id is None else 1
    lengths = np.fromiter((len(row) + extra for row in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int32)
    for row, start, end in zip(rows, offsets[:-1], offsets[1:]):
        flat[start : end - extra] = row
    if extra:
        flat[offsets[1:] - 1] = eos_id
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=TOKEN_TYPE))


def _tokenize_batch(batch: dict[str, list], tokenizer, text_column: str, eos_id: int | None) -> pa.Table:
    return pa.table({"input_ids": encode_to_arrow(batch[text_column], tokenizer, eos_id)})


def tokenize_documents(
    dataset: Dataset | DatasetDict,
    tokenizer,
    text_column: str = "text",
    append_eos: bool = True,
    num_proc: int | None = None,
) -> Dataset | DatasetDict:
    """Batched `map`: text → `input_ids` (int32), with the end-of-text token after each document.

    `num_proc=None` uses `default_num_proc` (the machine's cores for large splits); 1 keeps it in this process.
    """
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError("the tokenizer has no eos_token; pass append_eos=False or set one")
    splits = dataset if isinstance(dataset, DatasetDict) else {"": dataset}
    tokenized = {}
    for split, documents in splits.items():
        tokenized[split] = documents.map(
            _tokenize_batch,
            batched=True,
            batch_size=MAP_BATCH_SIZE,
            remove_columns=documents.column_names,
            fn_kwargs={"tokenizer": tokenizer, "text_column": text_column, "eos_id": eos_id if append_eos else None},
            features=Features.from_arrow_schema(pa.schema({"input_ids": pa.list_(TOKEN_TYPE)})),
            num_proc=default_num_proc(len(documents)) if num_proc is None else _positive_or_none(num_proc),
            desc=f"Tokenizing {split}".rstrip(),
        )
    return DatasetDict(tokenized) if isinstance(dataset, DatasetDict) else tokenized[""]


def group_into_blocks(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """run_clm's `group_texts` on one in-memory batch: concatenate every column, drop the remainder, cut into
    `block_size` chunks. (`pack_blocks` does the same over a whole split in bounded memory.)"""
    concatenated = {key: [token for row in examples[key] for token in row] for key in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size  # the remainder (< block_size) is dropped
    return {
        key: [values[start : start + block_size] for start in range(0, total, block_size)]
        for key, values in concatenated.items()
    }


class _BlockCutter:
    """Cuts a stream of token arrays into `block_size` rows, carrying the remainder from one array to the next,
    so the blocks are those of the whole stream concatenated and only the final remainder is dropped."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.carry = np.empty(0, dtype=np.int32)
        self.tokens = 0

    def cut(self, tokens: np.ndarray) -> np.ndarray:
        """(n, block_size) blocks completed by `tokens`; keeps what is left over (< block_size) for the next call."""
        self.tokens += len(tokens)
        joined = np.concatenate([self.carry, tokens]) if len(self.carry) else tokens
        count = len(joined) // self.block_size
        self.carry = joined[count * self.block_size :].copy()
        return joined[: count * self.block_size].reshape(count, self.block_size)


def _blocks_table(blocks: np.ndarray, block_size: int) -> pa.Table:
    values = pa.array(blocks.reshape(-1), type=TOKEN_TYPE)
    return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, block_size)})


def _flat_tokens(table: pa.Table) -> np.ndarray:
    column = table.column("input_ids")
    pieces = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]  # respects slices
    return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]


def pack_blocks(tokenized: Dataset, block_size: int, batch_size: int = MAP_BATCH_SIZE) -> tuple[Dataset, int]:
    """(blocks, token count) of one tokenized split: its documents concatenated in order and cut into rows of
    `block_size` tokens, the one remainder (< block_size) dropped — the blocks `group_into_blocks` makes from the
    whole split, built `batch_size` documents at a time in bounded memory.

    The blocks go to an Arrow file next to the split's cache files, named by the split's fingerprint and the block
    size, so a second run on the same data reads them back at once (an in-memory split gives in-memory blocks).
    """
    from datasets.arrow_writer import ArrowWriter

    features = Features.from_arrow_schema(pa.schema({"input_ids": pa.list_(TOKEN_TYPE, block_size)}))
    cache_path = None
    if tokenized.cache_files:
        folder = os.path.dirname(tokenized.cache_files[0]["filename"])
        cache_path = os.path.join(folder, f"blocks-{tokenized._fingerprint}-{block_size}.arrow")
        counts_path = cache_path + ".tokens"
        if os.path.isfile(cache_path) and os.path.isfile(counts_path):
            logger.info("reusing cached blocks %s", cache_path)
            return Dataset.from_file(cache_path), int(open(counts_path).read())
    cutter = _BlockCutter(block_size)
    batches = tokenized.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=batch_size)
    if cache_path is None:
        tables = [_blocks_table(cutter.cut(_flat_tokens(batch)), block_size) for batch in batches]
        table = pa.concat_tables(tables) if tables else _blocks_table(np.empty((0, block_size), np.int32), block_size)
        return Dataset(_in_memory(table)), cutter.tokens
    staging = f"{cache_path}.{os.getpid()}.incomplete"
    with ArrowWriter(features=features, path=staging) as writer:
        for batch in batches:
            writer.write_table(_blocks_table(cutter.cut(_flat_tokens(batch)), block_size))
        writer.finalize()
    os.replace(staging, cache_path)  # complete files only: a killed run leaves no half-written cache behind
    with open(counts_path + f".{os.getpid()}", "w") as handle:
        handle.write(str(cutter.tokens))
    os.replace(counts_path + f".{os.getpid()}", counts_path)
    return Dataset.from_file(cache_path), cutter.tokens


def _in_memory(table: pa.Table):
    from datasets.table import InMemoryTable

    return InMemoryTable(table)


def stream_blocks(
    documents: IterableDataset, tokenizer, block_size: int, text_column: str = "text", append_eos: bool = True
) -> Iterator[dict[str, list[int]]]:
    """Read, tokenize and pack a stream on the fly: the same blocks `pack_blocks(tokenize_documents(...))` gives
    for the same documents in the same order. Raises `ValueError` if the stream ends before one block is full."""
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError("the tokenizer has no eos_token; pass append_eos=False or set one")
    cutter = _BlockCutter(block_size)
    blocks = 0
    for batch in documents.iter(batch_size=MAP_BATCH_SIZE):
        ids = encode_to_arrow(batch[text_column], tokenizer, eos_id if append_eos else None)
        for block in cutter.cut(ids.flatten().to_numpy(zero_copy_only=False)):
            blocks += 1
            yield {"input_ids": block.tolist()}
    if blocks == 0:
        raise ValueError(
            f"block_size {block_size} is larger than the {cutter.tokens} tokens of the stream; "
            "use a smaller block_size or more text"
        )


def build_lm_datasets(
    documents: DatasetDict | IterableDatasetDict,
    tokenizer,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
) -> DatasetDict | IterableDatasetDict:
    """Tokenize every split and pack it into blocks of `block_size` tokens (column `input_ids` only).

    A `DatasetDict` gives cached `Dataset`s (raises `ValueError` when a split yields no block); an
    `IterableDatasetDict` (streaming) gives `IterableDataset`s that tokenize and pack on the fly; the train split
    is shuffled through a buffer of `shuffle_buffer` blocks (seeded; `set_epoch` reshuffles), the others are not.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (one input and one target), got {block_size}")
    if isinstance(documents, IterableDatasetDict):
        features = Features.from_arrow_schema(pa.schema({"input_ids": pa.list_(TOKEN_TYPE, block_size)}))
        streams = {}
        for split, stream in documents.items():
            blocks = IterableDataset.from_generator(
                stream_blocks, features=features,
                gen_kwargs={"documents": stream, "tokenizer": tokenizer, "block_size": block_size,
                            "text_column": text_column},
            )  # fmt: skip
            if split == "train" and shuffle_buffer > 1:
                blocks = blocks.shuffle(seed=seed, buffer_size=shuffle_buffer)
            streams[split] = blocks
        return IterableDatasetDict(streams)
    tokenized = tokenize_documents(documents, tokenizer, text_column=text_column, num_proc=num_proc)
    blocks = {}
    for split, dataset in tokenized.items():
        blocks[split], tokens = pack_blocks(dataset, block_size)
        if len(blocks[split]) == 0:
            raise ValueError(
                f"block_size {block_size} is larger than the {tokens} tokens of the {split!r} split; "
                "use a smaller block_size or more text"
            )
        logger.info("%s: %d tokens → %d blocks of %d", split, tokens, len(blocks[split]), block_size)
    return DatasetDict(blocks)


@dataclass
class LMBlockCollator:
    """Stacks packed blocks into a batch: `input_ids` (B, T) int64 and `labels`, a copy of them (the model shifts).

    Packed blocks have no padding, so no label is -100; the labels are made here, per batch, instead of being
    stored as a second copy of every token in the dataset."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of blocks")
        lengths = {len(feature["input_ids"]) for feature in features}
        if len(lengths) != 1:
            raise ValueError(f"packed blocks must all have the same length, got lengths {sorted(lengths)}")
        input_ids = torch.tensor(np.asarray([feature["input_ids"] for feature in features]), dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning on prompt/completion pairs
# ---------------------------------------------------------------------------------------------------------------------
def tokenize_prompt_completion(
    examples: dict[str, list[str]],
    tokenizer,
    max_length: int,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
) -> dict[str, list]:
    """Batched-map function: `input_ids` = prompt + completion + eos, and `labels` = the same ids with -100 on the
    prompt, so that only the completion (and its eos) is scored.

    Both are truncated to `max_length` from the right (the prompt is kept whole when it fits). The prompt mask
    travels in `labels`, an argument of the model's forward, because `Trainer` (`remove_unused_columns=True`, its
    default) drops every other column, e.g. a prompt length, before the collator sees it.
    """
    prompts = tokenizer(examples[prompt_column], add_special_tokens=False)["input_ids"]
    completions = tokenizer(examples[completion_column], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    input_ids, labels = [], []
    for prompt, completion in zip(prompts, completions):
        input_ids.append((prompt + completion + eos)[:max_length])
        labels.append(([IGNORE_INDEX] * len(prompt) + completion + eos)[:max_length])
    return {"input_ids": input_ids, "labels": labels}


def _has_target(labels_batch: list[list[int]]) -> list[bool]:
    # labels[0] is never a target: no position predicts the first token
    return [any(label != IGNORE_INDEX for label in labels[1:]) for labels in labels_batch]


def keep_pairs_with_targets(pairs: Dataset, split: str, block_size: int) -> Dataset:
    """The tokenized prompt/completion pairs that keep at least one target token (a label other than -100 after the
    first position) within `block_size`; a pair whose prompt fills the block would add nothing but padding to a batch.

    Logs a warning counting the pairs left out; raises `ValueError` when none is left, so a run never trains (or
    evaluates) on 0 target tokens, where the loss is 0 and the eval perplexity 1 whatever the model does.
    """
    kept = pairs.filter(_has_target, batched=True, input_columns="labels", desc=f"Pairs with a target ({split})")
    if len(kept) == 0:
        raise ValueError(
            f"the {split} split has no target token: each of its {len(pairs)} prompt/completion pairs is cut at "
            f"block_size {block_size} before its completion starts (every label is -100); use a larger block_size "
            "(up to the model's n_positions) or shorter prompts"
        )
    if len(kept) < len(pairs):
        logger.warning(
            "%d of %d %s prompt/completion pairs have no completion token within block_size %d (the prompt fills it) "
            "and are left out", len(pairs) - len(kept), len(pairs), split, block_size,
        )  # fmt: skip
    return kept


@dataclass
class CompletionCollator:
    """Pads variable-length examples into a batch for fine-tuning.

    Each feature has `input_ids` and says which of them are targets, in one of two ways:
    - `labels` of the same length, -100 where a token is not scored (what `tokenize_prompt_completion` writes), or
    - `prompt_length`: the number of tokens at the start that are context, not target (0: every token is a target).
    A feature with neither is refused rather than read as "no prompt": `Trainer` with `remove_unused_columns=True`
    (its default) drops `prompt_length`, which is not an argument of the model's forward, and the prompt tokens
    would silently become targets.

    Returns `input_ids` (padded with `pad_token_id`), `attention_mask` (0 on padding) and `labels` (-100 on padding
    and on the prompt), so only completion tokens are scored.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        lengths = [len(feature["input_ids"]) for feature in features]
        if min(lengths) == 0:
            raise ValueError(f"example {lengths.index(0)} has no tokens")
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths)):
            start = width - length if self.padding_side == "left" else 0
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            input_ids[row, start : start + length] = ids
            attention_mask[row, start : start + length] = 1
            labels[row, start : start + length] = _example_labels(feature, ids, row)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _example_labels(feature: dict[str, Any], ids: torch.Tensor, row: int) -> torch.Tensor:
    """One example's labels, from its `labels` or its `prompt_length` (see `CompletionCollator`)."""
    has_labels, has_prompt_length = "labels" in feature, "prompt_length" in feature
    if has_labels and has_prompt_length:
        raise ValueError(f"example {row} has both labels and prompt_length; give one of them")
    if has_labels:
        labels = torch.as_tensor(feature["labels"], dtype=torch.long)
        if labels.shape != ids.shape:
            raise ValueError(f"example {row} has {len(ids)} input_ids but {labels.numel()} labels; expected one each")
        return labels
    if not has_prompt_length:
        raise ValueError(
            f"example {row} has neither labels nor prompt_length (its keys: {sorted(feature)}), so its prompt cannot "
            "be told from its completion; give prompt_length=0 to score every token. A Trainer with "
            "remove_unused_columns=True drops prompt_length (not an argument of the model's forward): put labels in "
            "the dataset, as tokenize_prompt_completion does"
        )
    prompt_length = feature["prompt_length"]
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, np.integer)):
        raise ValueError(f"example {row}: prompt_length must be an integer, got {prompt_length!r}")
    if not 0 <= prompt_length <= len(ids):
        raise ValueError(
            f"example {row}: prompt_length {prompt_length} is outside 0..{len(ids)} (the example's number of tokens)"
        )
    labels = ids.clone()
    labels[:prompt_length] = IGNORE_INDEX
    return labels


# ---------------------------------------------------------------------------------------------------------------------
# Chat / instruction fine-tuning on conversations
# ---------------------------------------------------------------------------------------------------------------------
CHAT_ROLES = ("system", "user", "assistant")
MESSAGES_COLUMN = "messages"


def conversation_problem(record: Any, messages_column: str = MESSAGES_COLUMN) -> str | None:
    """Why one record is not a conversation `{"messages": [{"role": ..., "content": ...}, ...]}` with at least one
    assistant turn and roles among `CHAT_ROLES` (None if it is one). Keys other than role and content are ignored."""
    expected = f"expected a JSON object with field {messages_column!r}: a list of {{role, content}} objects"
    if not isinstance(record, dict):
        return f"{_json_kind(record)} ({_preview(record)}), {expected}"
    messages = record.get(messages_column)
    if messages is None:
        return f"no {messages_column!r} field (keys: {sorted(record)}), {expected}"
    if not isinstance(messages, list):
        return f"field {messages_column!r} holds {_json_kind(messages)} ({_preview(messages)}), {expected}"
    if not messages:
        return f"field {messages_column!r} is an empty list: a conversation needs at least one assistant message"
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            kind = f"{_json_kind(message)} ({_preview(message)})"
            return f"message {number} is {kind}, expected an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            return f"message {number} has role {_preview(role)}, expected one of {', '.join(CHAT_ROLES)}"
        if not isinstance(content, str):
            kind = "no content" if content is None else f"content {_json_kind(content)} ({_preview(content)})"
            return f"message {number} ({role}) has {kind}, expected a string"
    if not any(message["role"] == "assistant" for message in messages):
        return "no assistant message: the loss is taken on assistant tokens only, so there is nothing to learn from"
    return None


def locate_bad_conversation(files: list[str], builder: str, messages_column: str = MESSAGES_COLUMN) -> str | None:
    """The first record of JSON `files` that is not a conversation (`conversation_problem`), or that is not JSON at
    all, as 'FILE line N: what' ('FILE record N' in a .json file holding one JSON list); None if none is found.
    Re-reads the files: called only once a problem is known to exist."""
    if builder != "json":
        return None
    for path in files:
        problem = _json_file_problem(path, builder, lambda record: conversation_problem(record, messages_column))
        if problem is not None:
            return problem
    return None


def _first_record(files: list[str], builder: str) -> Any:
    """The first record of the first file, or None when it cannot be read cheaply (a .jsonl line, a .json document's
    first element, a Parquet file's column names as keys)."""
    path = files[0]
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return dict.fromkeys(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError):
            return None
    if builder != "json":
        return None
    if path.lower().endswith(".json"):
        document = _json_document(path)
        if isinstance(document, list):
            return document[0] if document else None
        if isinstance(document, dict):
            return document
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    return json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    return None
    return None


def looks_like_chat_data(source: str | None, text_column: str = "text", messages_column: str = MESSAGES_COLUMN) -> bool:
    """Whether a local source holds conversations: its first record (or a Parquet file's columns) has
    `messages_column` and no `text_column`. A Hub dataset is not inspected (that would need the Hub): name its
    column explicitly (`--messages_column`)."""
    if source is None or source == DEFAULT_CORPUS or not source.strip() or not _looks_like_path(source):
        return False
    try:
        extension, files = resolve_local_files(source)
    except (FileNotFoundError, ValueError):
        return False  # `load_documents` names the problem
    files = [path for path in files if os.path.getsize(path) > 0]
    if not files:
        return False
    record = _first_record(files, LOCAL_BUILDERS[extension][0])
    return isinstance(record, dict) and messages_column in record and text_column not in record


def load_conversations(
    source: str,
    messages_column: str = MESSAGES_COLUMN,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    num_proc: int | None = None,
) -> Dataset:
    """One conversation per row in `messages_column`: a local .jsonl/.json/.parquet file, folder or glob, or a Hub
    dataset id. Every record is checked (`conversation_problem`) before anything is tokenized; the first bad one is a
    `ValueError` naming the file and line (record, for a .json list; row, where there is no file to name)."""
    if not source or not source.strip() or source == DEFAULT_CORPUS:
        raise ValueError(f"chat data needs a dataset of conversations, got {source!r}")
    files: list[str] = []
    builder = ""
    if _looks_like_path(source):
        extension, files = resolve_local_files(source)
        files = _skip_empty_files(files, source)
        builder, options = LOCAL_BUILDERS[extension]
        if builder == "text" or not files:
            raise ValueError(
                f"{source!r} holds no conversations: expected .jsonl/.json/.parquet records with a {messages_column!r} "
                "list of {role, content} messages"
            )
        if extension == ".jsonl":
            problem = next(filter(None, map(_json_lines_problem, files)), None)
            if problem is not None:
                raise ValueError(f"cannot read {source!r}: {problem}")
        try:
            dataset = load_dataset(
                builder, data_files=files, split="train", num_proc=_file_workers(num_proc, files), **options
            )
        except Exception as error:  # e.g. a content that is a string in one record and a number in another
            problem = locate_bad_conversation(files, builder, messages_column)
            if problem is not None:
                raise ValueError(f"cannot read {source!r}: {problem}") from error
            raise
    else:
        try:
            dataset = load_dataset(source, dataset_config, split=dataset_split)
        except ConnectionError as error:
            raise ConnectionError(
                f"could not reach the Hugging Face Hub to load dataset {source!r} ({error}); check the network, or "
                "unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE. A local path must exist (use ./NAME for a folder)"
            ) from error
    if messages_column not in dataset.column_names:
        located = locate_bad_conversation(files, builder, messages_column) if files else None
        raise ValueError(
            f"cannot read {source!r}: {located}" if located
            else f"{source!r} has no column {messages_column!r}; its columns are {dataset.column_names}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{source!r} holds no conversations")
    # Checked batch by batch from the Arrow cache: the corpus is never held in memory at once.
    row = 0
    for batch in dataset.select_columns([messages_column]).iter(batch_size=MAP_BATCH_SIZE):
        for messages in batch[messages_column]:
            row += 1
            problem = conversation_problem({messages_column: messages}, messages_column)
            if problem is not None:
                located = locate_bad_conversation(files, builder, messages_column) if files else None
                raise ValueError(f"cannot read {source!r}: {located or f'row {row}: {problem}'}")
    return dataset


def iterate_conversation_texts(
    dataset: Dataset, messages_column: str = MESSAGES_COLUMN, batch_size: int = MAP_BATCH_SIZE
) -> Iterator[list[str]]:
    """Batches of texts to train a tokenizer on: each message's content, and the role headers the chat template
    writes (so that they get merges too)."""
    headers = [f"<|{role}|>\n" for role in CHAT_ROLES]
    for batch in dataset.select_columns([messages_column]).iter(batch_size=batch_size):
        yield [text for messages in batch[messages_column] for message in messages
               for text in (headers[CHAT_ROLES.index(message["role"])], message["content"])]  # fmt: skip


def tokenize_conversations(
    examples: dict[str, list], tokenizer, max_length: int, messages_column: str = MESSAGES_COLUMN
) -> dict[str, list]:
    """Batched-map function: each conversation rendered and tokenized by the tokenizer's chat template; `labels` =
    the ids on assistant tokens (each assistant message's content and its end token, the template's
    `{% generation %}` span) and -100 on every other token (system, user, role headers). Cut to `max_length` from
    the right; `num_tokens` is the length before the cut (for counting the conversations cut).

    Raises `ValueError` when the template marks no token of a conversation as the assistant's: a template without
    `{% generation %}` markers would otherwise train on nothing."""
    encoded = tokenizer.apply_chat_template(
        examples[messages_column], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids, labels, num_tokens = [], [], []
    for ids, mask in zip(encoded["input_ids"], encoded["assistant_masks"]):
        if not any(mask):
            raise ValueError(
                "the tokenizer's chat template marks no assistant token of a conversation that has an assistant "
                "message; it needs {% generation %}...{% endgeneration %} around each assistant turn (as "
                "hf_scratch_gpt.chat_template.CHAT_TEMPLATE has)"
            )
        num_tokens.append(len(ids))
        input_ids.append(ids[:max_length])
        labels.append([token if marked else IGNORE_INDEX for token, marked in zip(ids[:max_length], mask)])
    return {"input_ids": input_ids, "labels": labels, "num_tokens": num_tokens}


def build_chat_datasets(
    conversations: DatasetDict,
    tokenizer,
    block_size: int,
    messages_column: str = MESSAGES_COLUMN,
    num_proc: int | None = None,
) -> DatasetDict:
    """Tokenize every split's conversations (`tokenize_conversations`): one conversation per example, never packed
    with another, so no conversation attends into another. A conversation longer than `block_size` is cut (a warning
    counts them); one left without an assistant token within the block is dropped (counted too)."""
    splits = {}
    for split, dataset in conversations.items():
        tokenized = dataset.map(
            tokenize_conversations,
            batched=True,
            batch_size=MAP_BATCH_SIZE,
            remove_columns=dataset.column_names,
            fn_kwargs={"tokenizer": tokenizer, "max_length": block_size, "messages_column": messages_column},
            num_proc=default_num_proc(len(dataset)) if num_proc is None else _positive_or_none(num_proc),
            desc=f"Tokenizing conversations ({split})",
        )
        cut = pc.sum(pc.greater(tokenized.data.column("num_tokens"), block_size)).as_py() or 0
        if cut:
            logger.warning(
                "%d of %d %s conversations are longer than block_size %d and are cut to it (their later tokens are "
                "not trained on)", cut, len(tokenized), split, block_size,
            )  # fmt: skip
        tokenized = tokenized.remove_columns("num_tokens")
        kept = tokenized.filter(
            _has_target, batched=True, input_columns="labels", desc=f"Conversations with a target ({split})"
        )
        if len(kept) == 0:
            raise ValueError(
                f"the {split} split has no assistant token within block_size {block_size}: each of its "
                f"{len(tokenized)} conversations is cut before its first assistant answer; use a larger block_size (up "
                "to the model's n_positions) or shorter conversations"
            )
        if len(kept) < len(tokenized):
            logger.warning(
                "%d of %d %s conversations have no assistant token within block_size %d and are left out",
                len(tokenized) - len(kept), len(tokenized), split, block_size,
            )  # fmt: skip
        splits[split] = kept
    return DatasetDict(splits)


__all__ = [
    "CHAT_ROLES",
    "CompletionCollator",
    "DEFAULT_CORPUS",
    "END_OF_TEXT",
    "LMBlockCollator",
    "build_chat_datasets",
    "build_lm_datasets",
    "check_text_records",
    "conversation_problem",
    "default_corpus_documents",
    "default_num_proc",
    "encode_to_arrow",
    "group_into_blocks",
    "in_validation",
    "iterate_conversation_texts",
    "iterate_texts",
    "keep_pairs_with_targets",
    "load_conversations",
    "load_documents",
    "locate_bad_conversation",
    "locate_bad_input",
    "looks_like_chat_data",
    "pack_blocks",
    "resolve_local_files",
    "split_paragraphs",
    "split_stream_train_validation",
    "split_train_validation",
    "stream_blocks",
    "tokenize_conversations",
    "tokenize_documents",
    "tokenize_prompt_completion",
    "train_bpe_tokenizer",
]
