"""The explicit Accelerate loop: 2 processes (torchrun, gloo on CPU) = 1 process with the same global batch;
resume equals uninterrupted; NaN stops before the update."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import SMALL, free_port, launch_temp
from hf_scratch_gpt.training.components import DataArguments, ModelArguments, NonFiniteLossError
from hf_scratch_gpt.training.loop import LoopArguments, train_with_accelerate


def loop_flags(output_dir, corpus_file, **overrides):
    flags = {
        "output_dir": str(output_dir), "dataset": str(corpus_file), "config_overrides": SMALL,
        "tokenizer_vocab_size": "300", "validation_fraction": "0.1", "max_steps": "6", "global_batch_size": "8",
        "gradient_accumulation_steps": "2", "logging_steps": "1", "eval_steps": "3", "save_steps": "3",
        "learning_rate": "3e-3", "disable_tqdm": "true", **overrides,
    }  # fmt: skip
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def history(output_dir, key):
    return [row[key] for row in json.loads((Path(output_dir) / "metrics.json").read_text())["history"] if key in row]


def test_two_processes_equal_one_process(tmp_path, corpus_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           **launch_temp(tmp_path / "temp")}  # fmt: skip
    command = ["-m", "hf_scratch_gpt.cli", "train", "--loop", "accelerate"]
    one = subprocess.run([sys.executable, *command, *loop_flags(tmp_path / "one", corpus_file)],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
         *command, *loop_flags(tmp_path / "two", corpus_file, gradient_accumulation_steps=1)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
    # The README's condition for this equality: dropout off (see test_split_invariance_needs_dropout_off).
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.0
    torch.testing.assert_close(torch.tensor(history(tmp_path / "two", "loss")), torch.tensor(history(tmp_path / "one", "loss")), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(history(tmp_path / "two", "eval_loss")), torch.tensor(history(tmp_path / "one", "eval_loss")), rtol=1e-5, atol=1e-5)
    assert history(tmp_path / "one", "loss")[-1] < history(tmp_path / "one", "loss")[0]


def run_in_process(output_dir, corpus_file, **overrides):
    from hf_scratch_gpt.training.loop import parse_loop_arguments

    return train_with_accelerate(*parse_loop_arguments(loop_flags(output_dir, corpus_file, **overrides)))


def test_resume_equals_uninterrupted_and_checkpoints_hold_safetensors(tmp_path, corpus_file):
    full = run_in_process(tmp_path / "full", corpus_file)
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "loop_state.json").is_file()
    # Resume a copy of the run from checkpoint-3 (as if it had been killed right after saving it).
    import shutil

    (tmp_path / "resumed").mkdir()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-3")
    resumed = run_in_process(tmp_path / "resumed", corpus_file, resume_from_checkpoint="last")
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)
    assert history(tmp_path / "resumed", "loss") == pytest.approx(history(tmp_path / "full", "loss"), abs=1e-6)


def test_nan_loss_stops_the_loop_naming_the_step(tmp_path, corpus_file):
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step 1"):
        run_in_process(tmp_path, corpus_file, learning_rate="1e-3", config_overrides=SMALL + ",initializer_range=1e30")


def test_resume_at_or_past_max_steps(tmp_path, corpus_file):
    """Issue 12.7: resumed at max_steps the loop ends there; a checkpoint past max_steps is refused, not reported
    as a run that 'ended' at a later step."""
    run_in_process(tmp_path, corpus_file)  # 6 steps, checkpoint-3 and checkpoint-6
    again = run_in_process(tmp_path, corpus_file, resume_from_checkpoint="last")
    assert again["resumed_from"].endswith("checkpoint-6") and again["global_step"] == 6
    with pytest.raises(ValueError, match=r"checkpoint-6 is at step 6, beyond max_steps 3"):
        run_in_process(tmp_path, corpus_file, resume_from_checkpoint="last", max_steps="3")


@pytest.mark.parametrize("max_steps", ["0", "-5"])
def test_a_loop_that_would_train_no_step_is_refused(tmp_path, corpus_file, max_steps):
    with pytest.raises(ValueError, match=rf"max_steps must be >= 1, got {max_steps}"):
        run_in_process(tmp_path, corpus_file, max_steps=max_steps)
    assert not (tmp_path / "metrics.json").exists()


def test_split_invariance_needs_dropout_off(tmp_path, corpus_file):
    """What the README states: splitting the global batch (here into 2 accumulation steps, as 2 processes would)
    leaves the loss curve unchanged with dropout off; with dropout on the masks differ, and so do the losses."""
    dropout_on = SMALL.replace("pdrop=0.0", "pdrop=0.1")
    assert dropout_on != SMALL
    curves = {}
    for name, overrides in {"off": SMALL, "on": dropout_on}.items():
        for accumulation in (1, 2):
            run_in_process(tmp_path / f"{name}{accumulation}", corpus_file, max_steps="2", config_overrides=overrides,
                           gradient_accumulation_steps=str(accumulation))  # fmt: skip
            curves[name, accumulation] = torch.tensor(history(tmp_path / f"{name}{accumulation}", "loss"))
    torch.testing.assert_close(curves["off", 2], curves["off", 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(curves["on", 2], curves["on", 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(curves["on", 2], curves["on", 1], rtol=0.01, atol=0.01)  # only slightly
