"""The final save of `train` (both loops) is crash-safe: a failure or kill while writing leaves the previous final
model byte for byte; a kill while the complete new files are moved in is rolled forward at the next start."""

import os

import pytest
import torch
import transformers.modeling_utils

from test_accelerate_loop import run_in_process
from test_training import small_run_args
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.loading import load_model
from hf_scratch_gpt.training import final_save
from hf_scratch_gpt.training.components import TRAIN_OUTPUT_MARK
from hf_scratch_gpt.training.trainer import train_with_trainer


class SimulatedKill(Exception):
    pass


def die_mid_weight_write(monkeypatch):
    """save_pretrained writes half of model.safetensors, then the process "dies" (what SIGKILL mid-write leaves)."""
    original = transformers.modeling_utils.safe_save_file

    def half_then_die(tensors, filename, *args, **kwargs):
        original(tensors, filename, *args, **kwargs)
        if "checkpoint-" in str(filename):  # Trainer also saves a checkpoint at the last step: not this test's target
            return
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])
        raise SimulatedKill(filename)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", half_then_die)


def top_level_files(folder):
    """The files of the final model (not the run's lock, which holds the id of the last process that trained)."""
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file() and path.name != TRAIN_OUTPUT_MARK}


RUNS = {
    "trainer": lambda out, corpus, steps, seed: train_with_trainer(
        *small_run_args(out, corpus, max_steps=steps, save_steps=100, seed=seed)
    ),
    "accelerate": lambda out, corpus, steps, seed: run_in_process(
        out, corpus, max_steps=str(steps), save_steps="100", eval_steps="100", seed=str(seed)
    ),
}


@pytest.mark.parametrize("loop", sorted(RUNS))
def test_failed_final_save_keeps_the_previous_final_model(tmp_path, corpus_file, monkeypatch, loop):
    out = tmp_path / "run"
    RUNS[loop](out, corpus_file, 2, 0)
    before = top_level_files(out)
    assert {"model.safetensors", "config.json", "metrics.json", "loss.png"} <= set(before)
    previous = load_model(out)

    with monkeypatch.context() as patch:
        die_mid_weight_write(patch)
        with pytest.raises(SimulatedKill):
            RUNS[loop](out, corpus_file, 3, 1)
    assert top_level_files(out) == before  # weights, config, tokenizer, metrics and plot: all the previous run's
    for name, tensor in load_model(out).state_dict().items():
        torch.testing.assert_close(tensor, previous.state_dict()[name], rtol=0, atol=0)

    RUNS[loop](out, corpus_file, 3, 1)  # the next run cleans the staging folder up and publishes
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == [TRAIN_OUTPUT_MARK]  # no staging
    assert top_level_files(out)["model.safetensors"] != before["model.safetensors"]
    load_model(out)


def test_kill_while_moving_files_in_is_rolled_forward(tmp_path, monkeypatch):
    """Old final model sharded, new one a single file: after the roll-forward no old shard or index is left."""
    out = tmp_path / "run"
    torch.manual_seed(0)
    ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")).save_pretrained(out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").is_file()
    (out / "checkpoint-3").mkdir()  # the run's other contents are left alone
    torch.manual_seed(1)
    new = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", n_layer=1))
    staging = final_save.start_final_save(out)
    new.save_pretrained(staging)

    calls = []
    original_replace = os.replace

    def replace_then_die(source, target):
        calls.append(target)
        if len(calls) == 3:  # staging → .complete-final, one file moved, then killed
            raise SimulatedKill(target)
        return original_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(final_save.os, "replace", replace_then_die)
        with pytest.raises(SimulatedKill):
            final_save.publish_final_save(staging, out)
    with pytest.raises(ValueError, match=r"\.complete-final: a final save was interrupted"):
        load_model(out)

    final_save.finish_interrupted_final_save(out)
    assert not (out / ".complete-final").exists() and (out / "checkpoint-3").is_dir()
    assert not list(out.glob("model-*.safetensors")) and not (out / "model.safetensors.index.json").exists()
    loaded = load_model(out)
    assert loaded.config.n_layer == 1
    for name, tensor in new.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


KILLED_DURING_FINAL_SAVE = """
import os, sys, time
import transformers.modeling_utils as modeling_utils
original = modeling_utils.safe_save_file
def write_half_then_hang(tensors, filename, *args, **kwargs):
    original(tensors, filename, *args, **kwargs)
    if "checkpoint-" not in str(filename):  # the final model: leave half a file, then wait for SIGKILL
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])
        open(os.environ["MARKER"], "w").close()
        time.sleep(600)
modeling_utils.safe_save_file = write_half_then_hang
from hf_scratch_gpt.training.loop import loop_from_argv
loop_from_argv(sys.argv[1:])
"""


def test_sigkill_during_the_final_save_keeps_the_previous_final_model(tmp_path, corpus_file):
    import signal
    import subprocess
    import sys
    import time

    from test_accelerate_loop import loop_flags

    out = tmp_path / "run"
    RUNS["accelerate"](out, corpus_file, 2, 0)
    before = top_level_files(out)
    marker = tmp_path / "writing-final-weights"
    flags = loop_flags(out, corpus_file, max_steps="3", save_steps="100", eval_steps="100", seed="1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MARKER": str(marker)}
    victim = subprocess.Popen([sys.executable, "-c", KILLED_DURING_FINAL_SAVE, *flags], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert victim.poll() is None, f"the run ended (exit {victim.returncode}) before its final save"
        assert time.monotonic() < deadline, "the final save never started"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert top_level_files(out) == before
    load_model(out)
