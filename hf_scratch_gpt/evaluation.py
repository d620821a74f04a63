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

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .modeling_scratch_gpt import IGNORE_INDEX

METRICS_DIR = Path(__file__).parent / "metrics"


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

    def metrics(self) -> dict[str, float | int]:
        if self.tokens == 0:
            raise ValueError("no tokens were scored: the text is empty")
        loss = self.nll_sum / self.tokens
        result = {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_byte": self.nll_sum / math.log(2) / self.num_bytes if self.num_bytes else float("nan"),
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
    from tqdm.auto import tqdm

    model.eval()
    totals = ScoreTotals()
    for text in tqdm(texts, total=total, desc="evaluating", unit="doc", disable=not progress):
        totals = totals + score_text(model, tokenizer, text, stride=stride)
    return totals.metrics()


def _dataset_texts(dataset, text_column: str, batch_size: int = 1000) -> Iterator[str]:
    """The texts of a (memory-mapped) dataset, read one batch at a time instead of as one Python list."""
    for batch in dataset.select_columns([text_column]).iter(batch_size=batch_size):
        yield from batch[text_column]


def evaluate_model(
    model_path: str,
    text_file: str | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "test",
    text_column: str = "text",
    stride: int | None = None,
    device: str | None = None,
) -> dict[str, float | int]:
    """`hf-scratch-gpt evaluate`: metrics of a saved model folder (model + tokenizer) on a text file or dataset.

    A text file is scored as one text; a dataset (anything `data.load_documents` accepts) document by document.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import load_documents

    if (text_file is None) == (dataset is None):
        raise ValueError("pass exactly one of text_file or dataset")
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"model folder {model_path!r} does not exist")
    if text_file is not None:
        if not Path(text_file).is_file():
            raise FileNotFoundError(f"text file {text_file!r} does not exist")
        texts, count = [Path(text_file).read_text(encoding="utf-8")], 1
        if not texts[0].strip():
            raise ValueError(f"text file {text_file!r} is empty or whitespace-only")
    else:
        documents = load_documents(dataset, text_column, dataset_config, dataset_split)
        texts, count = _dataset_texts(documents, text_column), len(documents)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, use_safetensors=True)
    if device:
        model.to(device)
    result = evaluate_texts(model, tokenizer, texts, stride=stride, progress=dataset is not None, total=count)
    result["stride"] = stride if stride is not None else model.config.n_positions // 2
    return result


__all__ = [
    "ScoreTotals",
    "evaluate_model",
    "evaluate_texts",
    "load_metric",
    "score_logits",
    "score_text",
    "score_token_ids",
    "sliding_windows",
]
