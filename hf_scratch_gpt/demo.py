"""`hf-scratch-gpt demo`: the whole workflow on a CPU in about five minutes, with no download.

The run is a fixed amount of work (`max_steps` steps; seeded split, initialisation, batches, dropout and sampling),
never a time budget, so the same options give the same perplexity and samples however fast or busy the machine is.
(A CPU of another kind, or another thread count, rounds float32 differently; over many steps that can move the
figures slightly.)

1. Text: the embedded corpus (CPython's pydoc topics, ~465 k characters), split into train/validation paragraphs.
2. A byte-level BPE tokenizer trained on the train split.
3. A small GPT trained from scratch with `Trainer` (periodic evaluation, loss plot, metrics.json).
4. Held-out evaluation: token-weighted loss, perplexity, bits per byte, next-token accuracy, and the perplexity of
   a unigram model fitted on the train split (the baseline a model that ignores context would reach).
5. Samples from `model.generate`: greedy, temperature sampling, top-k sampling.
6. The model folder (weights, config, tokenizer) loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

logger = logging.getLogger(__name__)

# The demo's model: the `tiny` preset widened to what 2 CPU cores train well in a few minutes. The corpus is
# small (~20 passes over it in the default run), so dropout 0.2 keeps the model from memorising it.
DEMO_CONFIG_OVERRIDES = "n_positions=128,n_embd=128,n_layer=4,n_head=4,resid_pdrop=0.2,embd_pdrop=0.2,attn_pdrop=0.2"
DEMO_PROMPTS = ("The", "def")
# The demo measures validation perplexity in two ways; both are printed and stored, each with its protocol.
PER_DOCUMENT_PROTOCOL = "each held-out document scored alone, after <|endoftext|> (as `hf-scratch-gpt evaluate`)"
VALIDATION_FILE = "validation.jsonl"  # the held-out documents, so `evaluate --dataset` reproduces the number


@dataclass
class DemoOptions:
    output_dir: str = "runs/demo"
    dataset: str = "pydoc"
    preset: str = "tiny"
    config_overrides: str = DEMO_CONFIG_OVERRIDES
    tokenizer_vocab_size: int = 4096
    max_steps: int = 1200  # fixed work, never a time budget: the result must not depend on the machine's speed
    batch_size: int = 16
    learning_rate: float = 2e-3
    eval_steps: int = 100
    seed: int = 0
    max_new_tokens: int = 60
    prompts: tuple[str, ...] = field(default=DEMO_PROMPTS)


# What the default run costs, for the estimate the demo gives before it starts: seconds per training step (its
# share of the evaluations every 100 steps included) and the fixed part (imports, tokenizer, final evaluation,
# samples), on the project's 2-core machine when idle (2026-11-24: 1100 steps in 4 min, 4 min 8 s in all).
SECONDS_PER_DEFAULT_STEP = 0.22
SECONDS_OUTSIDE_TRAINING = 20.0


def expected_seconds(options: DemoOptions) -> float | None:
    """Seconds the run should take on 2 idle CPU cores; None for a model, batch or corpus other than the default's,
    whose cost per step is not known in advance (the progress lines estimate it once training runs)."""
    default = DemoOptions()
    if (options.preset, options.config_overrides, options.dataset, options.batch_size, options.eval_steps) != (
        default.preset, default.config_overrides, default.dataset, default.batch_size, default.eval_steps
    ):
        return None
    return SECONDS_OUTSIDE_TRAINING + SECONDS_PER_DEFAULT_STEP * options.max_steps


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def plan_line(options: DemoOptions) -> str:
    """What the demo will do and how long it should take: reported before anything runs."""
    seconds = expected_seconds(options)
    expected = (
        f"about {format_duration(seconds)} on 2 idle CPU cores (longer when the cores are busy)"
        if seconds is not None
        else "no estimate for this model, batch or corpus; the progress lines give one once training runs"
    )
    return (
        f"demo: {options.max_steps} training steps (batch {options.batch_size}) on {options.dataset!r}, evaluated "
        f"every {options.eval_steps} steps, then held-out evaluation and samples; expected time: {expected}"
    )


class StepProgress(TrainerCallback):
    """Reports `step N/total` with the latest training and validation loss and the time left, after each
    evaluation (Trainer's own bar shows the steps in between)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.start = time.monotonic()
        self.train_loss: float | None = None
        self.reported_step = 0  # the final evaluation after training repeats the last step's: reported once

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.train_loss = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or state.global_step == self.reported_step:
            return
        self.reported_step = state.global_step
        elapsed = time.monotonic() - self.start
        left = elapsed / state.global_step * (state.max_steps - state.global_step)
        train = f"train loss {self.train_loss:.3f}, " if self.train_loss is not None else ""
        self.report(
            f"step {state.global_step}/{state.max_steps}: {train}validation loss {metrics['eval_loss']:.3f} "
            f"(perplexity {math.exp(metrics['eval_loss']):.1f}); {format_duration(elapsed)} so far, "
            f"about {format_duration(left)} of training left"
        )


def unigram_perplexity(train_ids: list[list[int]], eval_ids: list[list[int]], vocab_size: int) -> float:
    """Perplexity on `eval_ids` of token frequencies counted on `train_ids` (add-one smoothed): no context at all."""
    counts = Counter(token for row in train_ids for token in row)
    total = sum(counts.values()) + vocab_size
    nll = [-math.log((counts[token] + 1) / total) for row in eval_ids for token in row]
    return math.exp(sum(nll) / len(nll))


def generate_samples(model, tokenizer, prompts: tuple[str, ...], max_new_tokens: int, seed: int) -> list[dict]:
    """One sample per (prompt, decoding strategy)."""
    strategies = {
        "greedy": dict(do_sample=False),
        "temperature=0.8": dict(do_sample=True, temperature=0.8, top_k=0),
        "top_k=40": dict(do_sample=True, top_k=40, temperature=1.0),
    }
    samples = []
    model.eval()
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        for name, kwargs in strategies.items():
            torch.manual_seed(seed)
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
            )
            text = tokenizer.decode(output[0], skip_special_tokens=True)
            samples.append({"prompt": prompt, "strategy": name, "text": text})
    return samples


# Command-line flag of each option (for messages); the others are `--` + the name with dashes.
OPTION_FLAGS = {"tokenizer_vocab_size": "--vocab-size"}
BYTE_LEVEL_ALPHABET = 257  # 256 byte tokens + <|endoftext|>: the smallest vocabulary the demo's tokenizer can have


def _flag(name: str) -> str:
    return OPTION_FLAGS.get(name, "--" + name.replace("_", "-"))


def check_demo_options(options: DemoOptions) -> None:
    """Refuse a bad option before any data is loaded or any step is trained (not minutes later, at sampling)."""
    from .configuration_scratch_gpt import ScratchGPTConfig
    from .training.components import parse_overrides

    for name in ("max_steps", "batch_size", "eval_steps", "max_new_tokens"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{_flag(name)} must be an integer >= 1, got {value!r}")
    if not options.learning_rate > 0:
        raise ValueError(f"--learning-rate must be > 0, got {options.learning_rate}")
    if options.tokenizer_vocab_size < BYTE_LEVEL_ALPHABET:
        raise ValueError(
            f"--vocab-size must be at least {BYTE_LEVEL_ALPHABET} (256 byte tokens + <|endoftext|>), "
            f"got {options.tokenizer_vocab_size}"
        )
    config = ScratchGPTConfig.from_preset(options.preset, **parse_overrides(options.config_overrides))
    # A byte-level BPE never makes more tokens than the text has UTF-8 bytes: a bound known before it is trained.
    longest_prompt = max((len(prompt.encode("utf-8")) for prompt in options.prompts), default=0)
    if options.max_new_tokens + longest_prompt > config.n_positions:
        raise ValueError(
            f"--max-new-tokens {options.max_new_tokens} plus the longest sample prompt (up to {longest_prompt} "
            f"tokens) exceeds the model's context n_positions {config.n_positions}; use at most "
            f"{config.n_positions - longest_prompt}"
        )


def run_demo(options: DemoOptions, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, evaluate, sample; returns the numbers and the paths (the CLI prints them).

    `report` receives the plan (with the expected time) before anything runs and a progress line after each
    evaluation; by default they are logged (the CLI prints them)."""
    check_demo_options(options)
    report = report or logger.info
    report(plan_line(options))
    from .data import build_lm_datasets
    from .evaluation import evaluate_texts
    from .training.components import DataArguments, ModelArguments, load_and_split
    from .training.trainer import train_with_trainer, write_json

    start = time.monotonic()
    output_dir = Path(options.output_dir)
    model_args = ModelArguments(
        preset=options.preset,
        config_overrides=options.config_overrides,
        tokenizer_vocab_size=options.tokenizer_vocab_size,
    )
    data_args = DataArguments(dataset=options.dataset)
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(50, options.max_steps // 10),
        weight_decay=0.1,
        adam_beta2=0.95,
        eval_strategy="steps",
        eval_steps=options.eval_steps,
        logging_steps=max(1, options.eval_steps // 4),
        save_strategy="steps",
        save_steps=options.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,  # the saved model is the checkpoint with the lowest validation loss
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=options.seed,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_drop_last=True,
    )
    adopt_earlier_demo_folder(output_dir)
    trained = train_with_trainer(model_args, data_args, training_args, callbacks=[StepProgress(report)])

    # Evaluate the saved folder, exactly as a user would load it.
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir, use_safetensors=True)
    documents = load_and_split(data_args)  # the same deterministic split the training used
    documents["validation"].to_json(output_dir / VALIDATION_FILE, lines=True, force_ascii=False)
    held_out = evaluate_texts(model, tokenizer, documents["validation"]["text"])
    token_ids = build_lm_datasets(documents, tokenizer, block_size=2)  # every token, no remainder to speak of
    baseline = unigram_perplexity(
        token_ids["train"]["input_ids"], token_ids["validation"]["input_ids"], len(tokenizer)
    )
    samples = generate_samples(model, tokenizer, options.prompts, options.max_new_tokens, options.seed)
    result = {
        # Two protocols, two numbers: per document (what a user's `evaluate` gives) and Trainer's blocks (the plot).
        "validation_per_document": {**held_out, "protocol": PER_DOCUMENT_PROTOCOL},
        "validation_blocks": {
            "loss": trained["eval_loss"],
            "perplexity": trained["eval_perplexity"],
            "accuracy": trained["eval_accuracy"],
            "protocol": f"{trained['eval_protocol']} (Trainer's eval_perplexity; the loss plot's validation curve)",
        },
        "validation_file": str(output_dir / VALIDATION_FILE),
        "unigram_baseline_perplexity": baseline,
        "trained_steps": trained["global_step"],
        "num_input_tokens_seen": trained["num_input_tokens_seen"],
        "parameters": model.num_parameters(),
        "samples": samples,
        "model_dir": str(output_dir),
        "plot": trained.get("plot"),
        "metrics_file": trained.get("metrics_file"),
        "seconds": round(time.monotonic() - start, 1),
    }
    metrics_file = output_dir / "metrics.json"
    recorded = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    write_json({**recorded, "demo": result}, metrics_file)
    return result


def adopt_earlier_demo_folder(output_dir: Path) -> None:
    """A folder that an earlier demo wrote before `train` marked its outputs (its metrics.json has the demo's
    record) is the demo's own: mark it, so that running the demo again trains into it instead of being refused as
    a folder `train` did not write. Any other folder is left to `train`'s check."""
    from .training.components import TRAIN_OUTPUT_MARK

    metrics_file = output_dir / "metrics.json"
    if (output_dir / TRAIN_OUTPUT_MARK).exists() or not metrics_file.is_file():
        return
    try:
        recorded = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(recorded, dict) and isinstance(recorded.get("demo"), dict):
        (output_dir / TRAIN_OUTPUT_MARK).touch()


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What `hf-scratch-gpt demo` prints at the end: both validation perplexities, each with its protocol."""
    per_document, blocks = result["validation_per_document"], result["validation_blocks"]
    lines = [
        f"parameters: {result['parameters']:,}  steps: {result['trained_steps']}  "
        f"tokens seen: {result['num_input_tokens_seen']:,}  time: {result['seconds']} s",
        f"validation perplexity: {per_document['perplexity']:.2f}  ({per_document['protocol']}; "
        f"unigram baseline: {result['unigram_baseline_perplexity']:.2f})",
        f"validation perplexity: {blocks['perplexity']:.2f}  ({blocks['protocol']})",
        f"per document: bits per byte {per_document['bits_per_byte']:.3f}, next-token accuracy "
        f"{per_document['accuracy']:.3f}, over {per_document['tokens']:,} tokens",
    ]
    for sample in result["samples"]:
        lines.append(f"--- sample ({sample['strategy']}):\n{sample['text']}")
    lines.append(f"model folder: {result['model_dir']}\nloss plot: {result['plot']}\nmetrics: {result['metrics_file']}")
    lines.append(f"held-out documents: {result['validation_file']}")
    return lines
