"""Text → documents → train/validation split → token ids → fixed-size blocks; plus the fine-tuning collator.

The causal-LM path follows transformers' `run_clm` example: tokenize every document in a batched `datasets.map`,
concatenate, cut into blocks of `block_size` tokens and set `labels = input_ids` (the model shifts them).
Documents are separated by the tokenizer's end-of-text token, as in GPT-2's training data.

Sources (`load_documents`):
- `None` or `"pydoc"`: the embedded default corpus, the documentation topics that ship inside every CPython
  (`pydoc_data.topics`, about 465 k characters), split into paragraphs; no download.
- a `.txt` file: its paragraphs (blocks separated by a blank line) are the documents.
- a `.jsonl` / `.json` file: one document per record, text in `text_column`.
- anything else: the name of a Hugging Face dataset (`datasets.load_dataset(name, config)`); needs the Hub.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, DatasetDict, load_dataset

from .modeling_scratch_gpt import IGNORE_INDEX
from .openai.tokenizer import END_OF_TEXT

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "pydoc"
PARAGRAPH_SEPARATOR = "\n\n"
LOCAL_FILE_BUILDERS = {".jsonl": "json", ".json": "json"}  # extension → datasets builder for record files


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


def load_documents(
    source: str | None = None,
    text_column: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
) -> Dataset:
    """A `Dataset` with one document per row in column `text_column` (see the module docstring for sources).

    Raises `FileNotFoundError` for a missing local file and `ValueError` when the source has no usable text
    (no rows, or only empty / whitespace-only text), so a bad corpus fails before any training starts.
    """
    if source is None or source == DEFAULT_CORPUS:
        dataset = Dataset.from_dict({text_column: default_corpus_documents()})
        name = "the embedded pydoc corpus"
    else:
        extension = os.path.splitext(source)[1].lower()
        looks_local = extension in (".txt", *LOCAL_FILE_BUILDERS) or os.path.sep in source
        if looks_local and not os.path.isfile(source):
            raise FileNotFoundError(f"text source {source!r} does not exist (expected a .txt or .jsonl file)")
        if extension == ".txt":
            with open(source, encoding="utf-8") as handle:
                dataset = Dataset.from_dict({text_column: split_paragraphs(handle.read())})
        elif extension in LOCAL_FILE_BUILDERS:
            dataset = load_dataset(LOCAL_FILE_BUILDERS[extension], data_files=source, split="train")
        elif looks_local:
            raise ValueError(f"unsupported text file {source!r}: expected a .txt, .json or .jsonl file")
        else:  # a dataset on the Hugging Face Hub (or in the local datasets cache)
            dataset = load_dataset(source, dataset_config, split=dataset_split)
        name = repr(source)
    if text_column not in dataset.column_names:
        raise ValueError(f"{name} has no column {text_column!r}; its columns are {dataset.column_names}")
    dataset = dataset.filter(lambda batch: [bool(t and t.strip()) for t in batch[text_column]], batched=True)
    if len(dataset) == 0:
        raise ValueError(f"{name} contains no text: every document is empty or whitespace-only")
    return dataset


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


def iterate_texts(dataset: Dataset, text_column: str = "text", batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of raw texts (what `tokenizers`' trainer consumes)."""
    for start in range(0, len(dataset), batch_size):
        yield dataset[start : start + batch_size][text_column]


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
def tokenize_documents(
    dataset: Dataset | DatasetDict, tokenizer, text_column: str = "text", append_eos: bool = True, num_proc=None
) -> Dataset | DatasetDict:
    """Batched `map`: text → `input_ids`, with the end-of-text token after each document."""
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError("the tokenizer has no eos_token; pass append_eos=False or set one")

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [eos_id] for row in ids] if append_eos else ids}

    column_names = dataset["train"].column_names if isinstance(dataset, DatasetDict) else dataset.column_names
    return dataset.map(tokenize, batched=True, remove_columns=column_names, num_proc=num_proc, desc="Tokenizing")


def group_into_blocks(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """run_clm's `group_texts`: concatenate every column, drop the remainder, cut into `block_size` chunks.

    `labels` is a copy of `input_ids`: the model shifts them itself.
    """
    concatenated = {key: [token for row in examples[key] for token in row] for key in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size  # the remainder (< block_size) is dropped
    blocks = {
        key: [values[start : start + block_size] for start in range(0, total, block_size)]
        for key, values in concatenated.items()
    }
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def build_lm_datasets(
    documents: DatasetDict, tokenizer, block_size: int, text_column: str = "text", num_proc=None
) -> DatasetDict:
    """Tokenize every split and group it into blocks. Raises `ValueError` when a split yields no block."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (one input and one target), got {block_size}")
    tokenized = tokenize_documents(documents, tokenizer, text_column=text_column, num_proc=num_proc)
    token_counts = {split: sum(len(row) for row in tokenized[split]["input_ids"]) for split in tokenized}
    # Group the whole split in one map batch: only one remainder (< block_size) is dropped per split.
    blocks = tokenized.map(
        group_into_blocks,
        batched=True,
        batch_size=None,
        fn_kwargs={"block_size": block_size},
        num_proc=num_proc,
        desc=f"Grouping into blocks of {block_size}",
    )
    for split, dataset in blocks.items():
        if len(dataset) == 0:
            raise ValueError(
                f"block_size {block_size} is larger than the {token_counts[split]} tokens of the {split!r} split; "
                "use a smaller block_size or more text"
            )
        logger.info("%s: %d tokens → %d blocks of %d", split, token_counts[split], len(dataset), block_size)
    return blocks


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
    """Batched-map function: `input_ids` = prompt + completion + eos, `prompt_length` = number of prompt tokens.

    Truncated to `max_length` from the right (the prompt is kept whole when it fits).
    """
    prompts = tokenizer(examples[prompt_column], add_special_tokens=False)["input_ids"]
    completions = tokenizer(examples[completion_column], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    input_ids = [(prompt + completion + eos)[:max_length] for prompt, completion in zip(prompts, completions)]
    return {"input_ids": input_ids, "prompt_length": [min(len(p), max_length) for p in prompts]}


@dataclass
class CompletionCollator:
    """Pads variable-length examples into a batch for fine-tuning.

    Each feature has `input_ids` and optionally `prompt_length` (tokens at the start that are context, not target).
    Returns `input_ids` (padded with `pad_token_id`), `attention_mask` (0 on padding) and `labels` = `input_ids`
    with -100 on padding and on the prompt, so only completion tokens are scored.
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
            prompt_length = int(feature.get("prompt_length", 0))
            labels[row, start + prompt_length : start + length] = ids[prompt_length:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


__all__ = [
    "CompletionCollator",
    "DEFAULT_CORPUS",
    "END_OF_TEXT",
    "build_lm_datasets",
    "default_corpus_documents",
    "group_into_blocks",
    "iterate_texts",
    "load_documents",
    "split_paragraphs",
    "split_train_validation",
    "tokenize_documents",
    "tokenize_prompt_completion",
    "train_bpe_tokenizer",
]
