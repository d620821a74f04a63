"""Trainer path: loss goes down, gradient accumulation and label smoothing are exact, resume (also after a kill)
reaches the same final loss, half-written checkpoints are never picked, NaN stops the run."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import SMALL, StopAfter
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, causal_lm_loss
from hf_scratch_gpt.data import CompletionCollator
from hf_scratch_gpt.training.components import (
    DataArguments, ModelArguments, NonFiniteLossError, build_datasets, last_checkpoint, load_and_split,
)
from hf_scratch_gpt.training.trainer import ScratchGPTTrainer, train_with_trainer

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def small_run_args(output_dir, corpus_file, **overrides):
    model_args = ModelArguments(config_overrides=SMALL, tokenizer_vocab_size=300)
    data_args = DataArguments(dataset=str(corpus_file), validation_fraction=0.1)
    training_args = TrainingArguments(**{
        "output_dir": str(output_dir), "max_steps": 8, "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 1, "eval_strategy": "no",
        "save_steps": 4, "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": 0, **overrides,
    })  # fmt: skip
    return model_args, data_args, training_args


def test_a_few_trainer_steps_lower_the_loss_and_write_outputs(tmp_path, corpus_file):
    result = train_with_trainer(*small_run_args(tmp_path, corpus_file, max_steps=12, eval_strategy="steps", eval_steps=6))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    losses = [row["loss"] for row in metrics["history"] if "loss" in row]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert result["eval_perplexity"] == math.exp(result["eval_loss"])  # one validation loss, exactly
    assert 0.0 <= result["eval_accuracy"] <= 1.0
    assert (tmp_path / "loss.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(model, ScratchGPTForCausalLM) and len(tokenizer) == model.config.vocab_size == 300


def test_trainer_eval_loss_is_the_token_weighted_nll(tmp_path, corpus_file):
    """eval_loss is Σ NLL / scored tokens over the validation blocks (not Trainer's mean of per-batch means), and
    metrics.json has one key per quantity."""
    result = train_with_trainer(*small_run_args(tmp_path, corpus_file, max_steps=2, save_strategy="no"))
    from hf_scratch_gpt.evaluation import score_logits

    model = ScratchGPTForCausalLM.from_pretrained(tmp_path).eval()
    data_args = DataArguments(dataset=str(corpus_file), validation_fraction=0.1)
    _, validation, _ = build_datasets(data_args, AutoTokenizer.from_pretrained(tmp_path), model, load_and_split(data_args))
    blocks = torch.tensor(validation["input_ids"])  # the run's own validation blocks
    with torch.no_grad():
        nll, counts, _ = score_logits(model(blocks).logits.double(), blocks)
    assert result["eval_loss"] == pytest.approx((nll.sum() / counts.sum()).item(), rel=1e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not {"eval_nll", "tokens_seen", "eval_token_weighted_nll"} & set(metrics)
    assert metrics["num_input_tokens_seen"] == 2 * 4 * 32
    assert metrics["eval_protocol"] == "32-token blocks across document boundaries"


def variable_length_pairs(n=16, vocab=97, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 20, (1,), generator=generator))
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        prompt_length = int(torch.randint(0, length - 1, (1,), generator=generator))
        # the mask travels in labels: Trainer's remove_unused_columns would drop a prompt_length column
        rows.append({"input_ids": ids, "labels": [-100] * prompt_length + ids[prompt_length:]})
    return Dataset.from_list(rows)


def make_tiny_model():
    """Tiny model with a large-scale embedding, so its predictions are far from uniform (smoothing shows)."""
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", vocab_size=97, n_positions=32, **NO_DROPOUT))
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0.0, 1.0)
    return model


def run_tiny_trainer(tmp_path, batch, accumulation, label_smoothing=0.0, steps=3, optim="adamw_torch"):
    model = make_tiny_model()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0, label_smoothing_factor=label_smoothing,
        lr_scheduler_type="constant", data_seed=0, optim=optim, learning_rate=1e-2 if optim != "sgd" else 0.5,
    )  # fmt: skip
    trainer = ScratchGPTTrainer(
        model=model, args=args, train_dataset=variable_length_pairs(), data_collator=CompletionCollator(0)
    )
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return losses, model


def test_gradient_accumulation_4x2_equals_1x8_on_padded_variable_length_data(tmp_path):
    # SGD: the update is the gradient itself (Adam would amplify float noise in the exactly-zero key-bias gradient)
    accumulated, model_a = run_tiny_trainer(tmp_path / "a", batch=2, accumulation=4, optim="sgd")
    large, model_b = run_tiny_trainer(tmp_path / "b", batch=8, accumulation=1, optim="sgd")
    assert len(accumulated) == len(large) == 3
    torch.testing.assert_close(torch.tensor(accumulated), torch.tensor(large), rtol=0, atol=1e-5)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_label_smoothing_through_trainer_equals_models_own_smoothed_loss(tmp_path):
    """Trainer's loss for one step of 8 examples = causal_lm_loss with label_smoothing on shifted labels."""
    losses, _ = run_tiny_trainer(tmp_path, batch=8, accumulation=1, label_smoothing=0.1, steps=1)
    model = make_tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path / "x"), per_device_train_batch_size=8, use_cpu=True, seed=0,
                             data_seed=0, report_to="none")  # fmt: skip
    trainer = ScratchGPTTrainer(model=model, args=args, train_dataset=variable_length_pairs(), data_collator=CompletionCollator(0))
    batch = next(iter(trainer.get_train_dataloader()))  # the same first batch (same seeds)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = causal_lm_loss(logits, batch["labels"], label_smoothing=0.1).item()
    unsmoothed = causal_lm_loss(logits, batch["labels"]).item()
    assert losses[0] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - unsmoothed) > 1e-2  # the smoothing is really on


def smoothed_loss_by_hand(logits, labels, epsilon, shift=True):
    """(1 - ε)·NLL + ε·mean over the vocabulary of -log p, position t against token t+1 (unshifted: against token
    t, the mistake to rule out), mean over unmasked targets."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    log_probs = torch.log_softmax(logits.double(), dim=-1)  # (B, T', V)
    targets = labels
    mask = targets != -100
    nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    uniform = -log_probs.mean(dim=-1)
    return (((1 - epsilon) * nll + epsilon * uniform)[mask].sum() / mask.sum()).item()


@pytest.mark.parametrize("accumulation", [1, 2])
def test_plain_trainer_label_smoothing_uses_shifted_labels(tmp_path, accumulation):
    """Issue 12.12: a plain `transformers.Trainer` (what TRL's SFTTrainer and users' subclasses build on) smooths
    against the shifted labels, because importing the package lists the class in transformers' causal-LM table."""
    from transformers import Trainer

    def trainer_for(model, output_dir, **overrides):
        args = TrainingArguments(**{
            "output_dir": str(output_dir), "max_steps": 1, "per_device_train_batch_size": 8 // accumulation,
            "gradient_accumulation_steps": accumulation, "logging_steps": 1, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": 0, "data_seed": 0,
            "label_smoothing_factor": 0.1, **overrides,
        })  # fmt: skip
        return Trainer(model=model, args=args, train_dataset=variable_length_pairs(), data_collator=CompletionCollator(0))

    trainer = trainer_for(make_tiny_model(), tmp_path / "run")
    trainer.train()
    (logged,) = [row["loss"] for row in trainer.state.log_history if "loss" in row]

    model = make_tiny_model()
    loader = iter(trainer_for(model, tmp_path / "x").get_train_dataloader())  # the same batches (same seeds)
    batches = [next(loader) for _ in range(accumulation)]
    width = max(b["input_ids"].size(1) for b in batches)
    pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)  # noqa: E731
    input_ids = torch.cat([pad(b["input_ids"], 0) for b in batches])
    labels = torch.cat([pad(b["labels"], -100) for b in batches])
    attention_mask = torch.cat([pad(b["attention_mask"], 0) for b in batches])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    expected = smoothed_loss_by_hand(logits, labels, 0.1)
    unshifted = smoothed_loss_by_hand(logits, labels, 0.1, shift=False)
    assert logged == pytest.approx(expected, abs=1e-5)
    assert abs(expected - unshifted) > 0.05  # what an unshifted smoother would have logged is far off


def test_resume_from_checkpoint_reaches_the_same_final_loss(tmp_path, corpus_file):
    full = train_with_trainer(*small_run_args(tmp_path / "full", corpus_file))
    first = train_with_trainer(*small_run_args(tmp_path / "resumed", corpus_file), callbacks=[StopAfter(4)])
    assert first["global_step"] == 4
    resumed = train_with_trainer(*small_run_args(tmp_path / "resumed", corpus_file, resume_from_checkpoint="last"))
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)
    full_log = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    resumed_log = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [r["loss"] for r in resumed_log if "loss" in r][-1] == pytest.approx([r["loss"] for r in full_log if "loss" in r][-1], abs=1e-6)


def test_resume_at_max_steps_trains_no_further_step(tmp_path, corpus_file):
    """Issue 12.7: Trainer checks max_steps only after a step, so a resume from checkpoint-{max_steps} trained
    one more step (and saved checkpoint-{max_steps + 1}, from which the next resume went on)."""
    first = train_with_trainer(*small_run_args(tmp_path, corpus_file, max_steps=4, save_steps=2))
    assert first["global_step"] == 4 and last_checkpoint(tmp_path).endswith("checkpoint-4")
    weights = {k: v.clone() for k, v in ScratchGPTForCausalLM.from_pretrained(tmp_path).state_dict().items()}
    for _ in range(2):  # repeated resumes do not creep forward either
        resumed = train_with_trainer(
            *small_run_args(tmp_path, corpus_file, max_steps=4, save_steps=2, resume_from_checkpoint="last")
        )
        assert resumed["resumed_from"].endswith("checkpoint-4")
        assert resumed["global_step"] == 4 and resumed["train_loss"] is None  # nothing trained: no loss to report
        assert last_checkpoint(tmp_path).endswith("checkpoint-4")
    for name, value in ScratchGPTForCausalLM.from_pretrained(tmp_path).state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match=r"checkpoint-4 is at step 4, beyond max_steps 3"):
        train_with_trainer(*small_run_args(tmp_path, corpus_file, max_steps=3, resume_from_checkpoint="last"))


@pytest.mark.parametrize("lengths", [{"max_steps": -5, "num_train_epochs": 0}, {"max_steps": 0, "num_train_epochs": 3}])
def test_a_run_that_would_train_no_step_is_refused(tmp_path, corpus_file, lengths):
    """Issue 12.8: max_steps -5 with 0 epochs trained 0 steps and reported success; max_steps 0 trained 1 step."""
    with pytest.raises(ValueError, match=rf"nothing to train: max_steps={lengths['max_steps']} and num_train_epochs="):
        train_with_trainer(*small_run_args(tmp_path, corpus_file, **lengths))
    assert not (tmp_path / "metrics.json").exists()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **lengths)
    with pytest.raises(ValueError, match="nothing to train"):
        ScratchGPTTrainer(model=make_tiny_model(), args=args, train_dataset=variable_length_pairs())


class PoisonWeightsAfter(TrainerCallback):
    """Sets one weight to NaN after optimizer step `step`, so the next step's loss is NaN."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.transformer.wte.weight[:, 0] = float("nan")


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file):
    args = small_run_args(tmp_path, corpus_file, save_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6; .*checkpoint-4"):
        train_with_trainer(*args, callbacks=[PoisonWeightsAfter(5)])
    assert last_checkpoint(tmp_path).endswith("checkpoint-4")
    model = ScratchGPTForCausalLM.from_pretrained(tmp_path / "checkpoint-4")
    assert all(torch.isfinite(p).all() for p in model.parameters())


RUN_SCRIPT = """
import os, sys
from hf_scratch_gpt.training import trainer as trainer_module
crash_step = int(os.environ.get("CRASH_WHILE_SAVING_STEP", "0"))
if crash_step:  # die after the weights of that checkpoint are written, before the rest (a kill mid-save)
    original = trainer_module.ScratchGPTTrainer._save_rng_state
    def dying(self, output_dir):
        if self.state.global_step == crash_step:
            os._exit(17)
        return original(self, output_dir)
    trainer_module.ScratchGPTTrainer._save_rng_state = dying
pause_step = int(os.environ.get("PAUSE_AFTER_CHECKPOINT_STEP", "0"))
if pause_step:  # hold still once that checkpoint is complete, so the test's SIGKILL lands at a known step
    import time
    original_save = trainer_module.ScratchGPTTrainer._save_checkpoint
    def save_then_pause(self, *args, **kwargs):
        result = original_save(self, *args, **kwargs)
        if self.state.global_step == pause_step:
            open(os.environ["PAUSE_MARKER"], "w").close()
            time.sleep(600)
        return result
    trainer_module.ScratchGPTTrainer._save_checkpoint = save_then_pause
trainer_module.train_from_argv(sys.argv[1:])
"""


def cli_args(output_dir, corpus_file, *extra):
    return [
        sys.executable, "-c", RUN_SCRIPT, "--output_dir", str(output_dir), "--dataset", str(corpus_file),
        "--config_overrides", SMALL, "--tokenizer_vocab_size", "300", "--validation_fraction", "0.1",
        "--max_steps", "8", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--save_steps", "2", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", *extra,
    ]  # fmt: skip


def final_logged_loss(output_dir):
    history = json.loads((Path(output_dir) / "metrics.json").read_text())["history"]
    return [row["loss"] for row in history if "loss" in row][-1]


def test_killed_mid_run_then_resumed_reaches_the_same_final_loss(tmp_path, corpus_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(cli_args(tmp_path / "full", corpus_file), check=True, env=env, capture_output=True, timeout=300)

    # 1. Killed (SIGKILL) mid-run, right after checkpoint-4 is complete (the victim holds still there, so the
    #    kill does not race with later checkpoints on a fast machine).
    marker = tmp_path / "paused-after-checkpoint-4"
    victim = subprocess.Popen(cli_args(tmp_path / "killed", corpus_file), stdout=subprocess.DEVNULL,
                              env={**env, "PAUSE_AFTER_CHECKPOINT_STEP": "4", "PAUSE_MARKER": str(marker)},
                              stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert victim.poll() is None, f"the run ended (exit {victim.returncode}) before checkpoint-4"
        assert time.monotonic() < deadline, "checkpoint-4 never appeared"
        time.sleep(0.05)
    assert (tmp_path / "killed" / "checkpoint-4").is_dir()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # 2. Dies while writing checkpoint-6 (weights written, the rest not): that checkpoint must not exist.
    crashed = subprocess.run(cli_args(tmp_path / "killed", corpus_file, "--resume_from_checkpoint", "last"),
                             env={**env, "CRASH_WHILE_SAVING_STEP": "6"}, capture_output=True, timeout=300)  # fmt: skip
    assert crashed.returncode == 17
    assert last_checkpoint(tmp_path / "killed").endswith("checkpoint-4")
    assert any(p.name.startswith(".incomplete-") for p in (tmp_path / "killed").iterdir())
    # 3. Resume: from checkpoint-4, to the same final loss; the stale staging folder is cleaned up.
    subprocess.run(cli_args(tmp_path / "killed", corpus_file, "--resume_from_checkpoint", "last"), check=True,
                   env=env, capture_output=True, timeout=300)  # fmt: skip
    assert final_logged_loss(tmp_path / "killed") == pytest.approx(final_logged_loss(tmp_path / "full"), abs=1e-6)
    assert not any(p.name.startswith(".incomplete-") for p in (tmp_path / "killed").iterdir())
