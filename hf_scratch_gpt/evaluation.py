"""Language-model evaluation: token-weighted NLL, perplexity, bits per byte, next-token accuracy.

Definitions (every scored token counts once, whatever batch or window it sits in):
- `loss` = Σ token NLL (nats) / number of scored tokens — token-weighted, NOT a mean of per-batch means.
- `perplexity` = exp(loss).
- `bits_per_byte` = Σ token NLL / ln 2 / number of UTF-8 bytes of the scored text (comparable across tokenizers).
- `accuracy` = fraction of scored tokens that are the argmax prediction of the previous position.
- `tokens` = number of scored tokens.

Each text is prefixed with the tokenizer's bos token (GPT-2: `<|endoftext|>`), so its first token is scored
too and the scored text is the whole text. Texts longer than the context window are scored with transformers'
sliding-window method: windows of `n_positions` tokens advance by `stride`; in each window only the tokens not
scored by an earlier window are targets (the others are context, labels -100), so every token is scored exactly
once, with at least `n_positions - stride` tokens of context once the first window is full.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from datasets import Dataset

from .checks_scratch_gpt import IGNORE_INDEX

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).parent / "metrics"
# math.exp overflows (OverflowError) above log(largest float64) ≈ 709.78.
_LARGEST_EXP_ARGUMENT = math.log(sys.float_info.max)
# Splits of a source that has none of its own (the embedded corpus, a .txt or .jsonl file): the documents
# training held out ("validation") or trained on ("train"), split as training splits them; or "all" of them.
LOCAL_SPLITS = ("validation", "train", "all")
# Written beside the model by `train`, the Accelerate loop and the demo; its "dataset" names the corpus training split.
TRAINING_RECORD = "metrics.json"


def load_metric(name: str):
    """One of the package's `evaluate` modules (`perplexity`, `accuracy`) by path: works offline."""
    import evaluate

    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"unknown metric {name!r}; this package ships {available}")
    return evaluate.load(str(path))


@dataclass
class ScoreTotals:
    """Running sums over scored tokens; add them across texts, windows or processes, then call `metrics`."""

    nll_sum: float = 0.0
    tokens: int = 0
    correct: int = 0
    num_bytes: int = 0

    def __add__(self, other: "ScoreTotals") -> "ScoreTotals":
        return ScoreTotals(
            self.nll_sum + other.nll_sum,
            self.tokens + other.tokens,
            self.correct + other.correct,
            self.num_bytes + other.num_bytes,
        )

    def metrics(self) -> dict[str, float | int | None]:
        """The metrics as JSON-safe numbers: a NaN or infinite loss is an error, never printed as `NaN`/`Infinity`
        (not JSON); values that do not exist are None (`bits_per_byte` with no byte count, the perplexity of a
        loss above ~709 nats, where exp() leaves the float range)."""
        if self.tokens == 0:
            raise ValueError("no tokens were scored: the text is empty")
        loss = self.nll_sum / self.tokens
        if math.isnan(loss):
            raise ValueError(
                f"the loss is NaN over {self.tokens} scored tokens: the model's logits are not finite (NaN or "
                "infinite weights?); there are no metrics to report"
            )
        if math.isinf(loss):
            raise ValueError(
                f"the loss is infinite over {self.tokens} scored tokens: the model gives probability 0 to at least "
                "one of them (its logits hold -inf or inf); there are no metrics to report"
            )
        result = {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < _LARGEST_EXP_ARGUMENT else None,
            "bits_per_byte": self.nll_sum / math.log(2) / self.num_bytes if self.num_bytes else None,
            "accuracy": self.correct / self.tokens,
            "tokens": self.tokens,
            "bytes": self.num_bytes,
        }
        return result


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example (NLL sum, scored count, correct count) of (B, T, V) logits against (B, T) unshifted labels."""
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:]  # (B, T-1)
    mask = shift_labels != IGNORE_INDEX
    token_nll = F.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, T-1), 0 where masked
    correct = (shift_logits.argmax(dim=-1) == shift_labels) & mask
    return token_nll.sum(dim=1), mask.sum(dim=1), correct.sum(dim=1)


def sliding_windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, number of target tokens at the end of the window) for each window over `num_tokens` ids.

    transformers' perplexity recipe: windows start every `stride` tokens; the targets of a window are the tokens
    after the previous window's end. With stride < window every token (except the very first, which has no
    context) is scored exactly once.
    """
    if window < 2:
        raise ValueError(f"the context window must hold at least 2 tokens, got {window}")
    if not 1 <= stride < window:
        raise ValueError(
            f"stride must be in [1, {window - 1}] (below the context window {window}) so every window keeps at "
            f"least one token of context for its first target; got {stride}"
        )
    windows, previous_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        windows.append((begin, end, end - previous_end))
        previous_end = end
        if end == num_tokens:
            break
    return windows


@torch.no_grad()
def score_token_ids(model, input_ids: list[int], stride: int | None = None) -> ScoreTotals:
    """Score ids[1:] given ids[0:] with the sliding window; `num_bytes` is left 0 (the caller knows the text)."""
    window = model.config.n_positions
    stride = window // 2 if stride is None else stride
    device = next(model.parameters()).device
    ids = torch.tensor(input_ids, dtype=torch.long, device=device)
    totals = ScoreTotals()
    for begin, end, target_len in sliding_windows(len(input_ids), window, stride):
        window_ids = ids[begin:end].unsqueeze(0)  # (1, T)
        labels = window_ids.clone()
        labels[:, : window_ids.size(1) - target_len] = IGNORE_INDEX  # context only: scored by an earlier window
        logits = model(input_ids=window_ids).logits
        nll, count, correct = score_logits(logits, labels)
        totals = totals + ScoreTotals(nll.item(), int(count.item()), int(correct.item()))
    return totals


def score_text(model, tokenizer, text: str, stride: int | None = None) -> ScoreTotals:
    """Totals for one text: prefixed with bos (when the tokenizer has one) so that every token of it is scored."""
    if not text:
        raise ValueError("cannot score an empty text")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=bos is None)
    ids = encoding["input_ids"]
    if bos is not None:
        ids, scored_text = [bos] + ids, text
    else:  # no bos/eos: the first token has no context and is not scored, nor are its bytes counted
        if len(ids) < 2:
            raise ValueError("the text is a single token and the tokenizer has no bos token to predict it from")
        scored_text = text[encoding["offset_mapping"][1][0] :]
    totals = score_token_ids(model, ids, stride=stride)
    totals.num_bytes = len(scored_text.encode("utf-8"))
    return totals


def evaluate_texts(
    model, tokenizer, texts: Iterable[str], stride: int | None = None, progress: bool = False, total: int | None = None
) -> dict[str, float | int]:
    """Metrics over several texts, each scored on its own; the totals (not the per-text means) are combined.

    `texts` may be any iterable (e.g. a generator reading a large dataset batch by batch): only running sums are
    kept, so memory does not grow with the number of texts. `progress` shows a bar over `total` texts."""
    model.eval()
    totals = ScoreTotals()
    for text in tqdm(texts, total=total, desc="evaluating", unit="doc", disable=not progress):
        totals = totals + score_text(model, tokenizer, text, stride=stride)
    return totals.metrics()


def training_dataset_of(model_path: str | os.PathLike) -> str | None:
    """The `--dataset` the model in `model_path` was trained on, as training recorded it in the folder's
    metrics.json; None for a folder without that record (a converted, downloaded or hand-made model)."""
    path = Path(model_path) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not the JSON file training writes beside the model: {error}") from error
    dataset = record.get("dataset") if isinstance(record, dict) else None
    return dataset if isinstance(dataset, str) else None


def _source_files(source: str) -> tuple[str, ...] | None:
    """What a dataset source reads, comparable between two spellings of it: the embedded corpus, a Hub id, or the
    real paths of a local file's / folder's / glob's files; None when a local source does not exist here."""
    from .data import DEFAULT_CORPUS, _looks_like_path, resolve_local_files

    if source == DEFAULT_CORPUS:
        return (DEFAULT_CORPUS,)
    if not _looks_like_path(source):
        return (f"hub:{source}",)
    try:
        return tuple(os.path.realpath(path) for path in resolve_local_files(source)[1])
    except (FileNotFoundError, ValueError):
        return None


def is_training_corpus(dataset: str, training_dataset: str | None) -> bool | None:
    """Whether `dataset` is the corpus training split (the same files), or None when that is not known: no record
    of training's dataset, or a recorded local path that does not exist from here."""
    if training_dataset is None:
        return None
    trained_on, given = _source_files(training_dataset), _source_files(dataset)
    if trained_on is None or given is None:
        return None
    return trained_on == given


def load_evaluation_documents(
    dataset: str,
    text_column: str = "text",
    dataset_config: str | None = None,
    split: str | None = None,
    validation_fraction: float | None = None,
    split_seed: int | None = None,
    training_dataset: str | None = None,
) -> tuple[Dataset, str]:
    """(documents, name of the split scored) of `dataset`, by the split training used for it.

    A Hub dataset has splits of its own: `split` names one (default "test"). The embedded corpus and local
    .txt/.jsonl files have none: training holds out a deterministic share of the corpus it trains on
    (`data.split_train_validation` with `validation_fraction` and `split_seed`, defaults as in training), so for
    that corpus `split` is one of `LOCAL_SPLITS` and "validation" gives exactly the documents training never saw.
    Left unset, every document is scored ("all"), with a warning when they may include training's.

    `training_dataset` is the corpus the model was trained on, when known (`training_dataset_of`). A local source
    that is another corpus — such as the held-out documents the demo writes (`validation.jsonl`), which are
    already a split — is scored whole: asking for training's "validation" or "train" split of it is an error, as
    re-splitting it would score only a share of it.
    """
    from .data import DEFAULT_CORPUS, _looks_like_path, load_documents, split_train_validation

    if dataset != DEFAULT_CORPUS and not _looks_like_path(dataset):  # a Hub dataset id
        if validation_fraction is not None or split_seed is not None:
            raise ValueError(
                f"validation_fraction and split_seed apply to the embedded corpus and local files, not to the Hub "
                f"dataset {dataset!r}: choose one of its own splits with split"
            )
        split = split or "test"
        return load_documents(dataset, text_column, dataset_config, split), split
    if split is not None and split not in LOCAL_SPLITS:
        raise ValueError(
            f"split {split!r} does not exist for {dataset!r}: it has no splits of its own, so it is split as training "
            f"splits it; expected one of {list(LOCAL_SPLITS)}"
        )
    if split in (None, "all") and (validation_fraction is not None or split_seed is not None):
        raise ValueError(
            f"validation_fraction and split_seed choose training's split of {dataset!r}, but split is "
            f"{split!r} (every document): pass split='validation' or 'train' with them, or leave them out"
        )
    training_corpus = is_training_corpus(dataset, training_dataset)
    if training_corpus is False and split in ("validation", "train"):
        raise ValueError(
            f"split {split!r} selects training's {split} share of the corpus it trained on, but {dataset!r} is not "
            f"that corpus (this model was trained on {training_dataset!r}, per its {TRAINING_RECORD}); re-splitting it "
            f"would score only part of it. Leave out the split to score it whole (a file of held-out documents, "
            f"such as the validation.jsonl the demo writes, is a split already)"
        )
    if split is None:
        split = "all"
        if training_corpus:
            logger.warning(
                "scoring all documents of %r, the corpus this model was trained on, including those training learned "
                "from; pass split='validation' (--split validation) for only the ones it held out",
                dataset,
            )
        elif training_corpus is None:
            logger.warning(
                "scoring all documents of %r. If the model was trained on this corpus they include those it learned "
                "from, and split='validation' (--split validation) scores only the ones training held out; a file "
                "that holds only held-out documents (such as the demo's validation.jsonl) is scored as it should be",
                dataset,
            )
    documents = load_documents(dataset, text_column)
    if split == "all":
        return documents, split
    options = {"validation_fraction": validation_fraction, "seed": split_seed}
    parts = split_train_validation(documents, **{k: v for k, v in options.items() if v is not None})
    return parts[split], split


def load_evaluation_texts(dataset: str, text_column: str = "text", **options) -> tuple[list[str], str]:
    """`load_evaluation_documents` as a list of texts (small datasets; `evaluate_model` streams the documents)."""
    documents, split = load_evaluation_documents(dataset, text_column, **options)
    return documents[text_column], split


def _dataset_texts(dataset, text_column: str, batch_size: int = 1000) -> Iterator[str]:
    """The texts of a (memory-mapped) dataset, read one batch at a time instead of as one Python list."""
    for batch in dataset.select_columns([text_column]).iter(batch_size=batch_size):
        yield from batch[text_column]


def evaluate_model(
    model_path: str,
    text_file: str | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str | None = None,
    text_column: str = "text",
    stride: int | None = None,
    device: str | None = None,
    validation_fraction: float | None = None,
    split_seed: int | None = None,
    dtype="auto",
) -> dict[str, float | int | str | None]:
    """`hf-scratch-gpt evaluate`: metrics of a saved model folder (model + tokenizer) on a text file or dataset.

    A text file is scored as one text; a dataset document by document, from the split `load_evaluation_documents`
    picks (`dataset_split`; for the embedded corpus and local files the split training made of the corpus the
    folder's metrics.json names, a file that is not that corpus being scored whole). The result names the `split`
    scored and the number of `documents`. `dtype` is `load_model`'s (default "auto": the checkpoint's, float32 where
    the CPU has no instructions for it).
    """
    from .loading import load_model, load_tokenizer

    if (text_file is None) == (dataset is None):
        raise ValueError("pass exactly one of text_file or dataset")
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"model folder {model_path!r} does not exist")
    if text_file is not None:
        if dataset_split is not None or validation_fraction is not None or split_seed is not None:
            raise ValueError("a split (split, validation_fraction, split_seed) applies to a dataset, not to a text file")
        if not Path(text_file).is_file():
            raise FileNotFoundError(f"text file {text_file!r} does not exist")
        try:
            texts, count = [Path(text_file).read_text(encoding="utf-8")], 1
        except UnicodeDecodeError as error:
            raise ValueError(f"text file {text_file!r} is not UTF-8 text: {error}") from error
        split = None
        if not texts[0].strip():
            raise ValueError(f"text file {text_file!r} is empty or whitespace-only")
    else:
        documents, split = load_evaluation_documents(
            dataset, text_column, dataset_config, dataset_split, validation_fraction, split_seed,
            training_dataset=training_dataset_of(model_path),
        )
        texts, count = _dataset_texts(documents, text_column), len(documents)
    # load_model checks the folder first: a missing or mis-shaped tensor is an error, never a random init.
    tokenizer = load_tokenizer(model_path)
    on_cpu = device is None or torch.device(device).type == "cpu"
    model = load_model(model_path, dtype=None if dtype == "auto" and not on_cpu else dtype)
    if device:
        model.to(device)
    result: dict[str, float | int | str | None] = evaluate_texts(
        model, tokenizer, texts, stride=stride, progress=dataset is not None, total=count
    )
    result["stride"] = stride if stride is not None else model.config.n_positions // 2
    if split is not None:
        result["split"] = split
        result["documents"] = count
    return result


__all__ = [
    "ScoreTotals",
    "evaluate_model",
    "evaluate_texts",
    "is_training_corpus",
    "load_evaluation_documents",
    "load_evaluation_texts",
    "load_metric",
    "score_logits",
    "score_text",
    "score_token_ids",
    "sliding_windows",
    "training_dataset_of",
]
