"""Resuming either training loop from a checkpoint folder someone else wrote: no code runs (booby-trapped pickles
leave no marker), and a checkpoint missing a tensor, optimizer, scheduler or RNG state is refused, not reset."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from test_accelerate_loop import run_in_process
from test_training import small_run_args
from hf_scratch_gpt.training.trainer import train_with_trainer


class _Payload:
    """Unpickling this runs `open(path, "w")`: it would create the marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def booby_trap(path, marker):
    """Replace a torch file by one that creates `marker` when unpickled without weights_only."""
    import torch

    torch.save({"state": _Payload(marker)}, path)


@pytest.fixture(scope="module")
def loop_checkpoint(tmp_path_factory, corpus_file):
    run = tmp_path_factory.mktemp("loop") / "run"
    run_in_process(run, corpus_file, max_steps="3", save_steps="3", eval_steps="3")
    return run / "checkpoint-3"


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory, corpus_file):
    run = tmp_path_factory.mktemp("trainer") / "run"
    train_with_trainer(*small_run_args(run, corpus_file, max_steps=2, save_steps=2))
    return run / "checkpoint-2"


def _resume_loop(checkpoint, tmp_path, corpus_file):
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copytree(checkpoint, run / checkpoint.name)
    return lambda: run_in_process(run, corpus_file, max_steps="4", save_steps="3", eval_steps="3",
                                  resume_from_checkpoint="last"), run / checkpoint.name  # fmt: skip


def test_loop_checkpoint_holds_no_pickle_of_arbitrary_objects(loop_checkpoint):
    """The scheduler lives in loop_state.json; Accelerate's custom_checkpoint_0.pkl (weights_only=False) is gone."""
    assert not list(loop_checkpoint.glob("custom_checkpoint_*.pkl"))
    state = json.loads((loop_checkpoint / "loop_state.json").read_text())
    assert state["scheduler"]["last_epoch"] == 3


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl"])
def test_loop_resume_never_runs_a_booby_trapped_pickle(loop_checkpoint, tmp_path, corpus_file, name):
    resume, checkpoint = _resume_loop(loop_checkpoint, tmp_path, corpus_file)
    marker = tmp_path / "code-ran"
    booby_trap(checkpoint / name, marker)
    with pytest.raises(ValueError, match=rf"{name}.*(pickle|weights_only)"):
        resume()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["loop_state.json", "optimizer.bin", "random_states_0.pkl", "model.safetensors"])
def test_loop_resume_refuses_a_missing_part(loop_checkpoint, tmp_path, corpus_file, name):
    resume, checkpoint = _resume_loop(loop_checkpoint, tmp_path, corpus_file)
    (checkpoint / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{name}"):
        resume()


def test_loop_resume_refuses_missing_scheduler_state_and_missing_tensor(loop_checkpoint, tmp_path, corpus_file):
    resume, checkpoint = _resume_loop(loop_checkpoint, tmp_path, corpus_file)
    state_file = checkpoint / "loop_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({key: value for key, value in state.items() if key != "scheduler"}))
    with pytest.raises(ValueError, match=r"loop_state\.json lacks \['scheduler'\]"):
        resume()
    state_file.write_text(json.dumps(state))
    weights = load_file(checkpoint / "model.safetensors")
    del weights["transformer.ln_f.bias"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks tensors the model has: \['transformer\.ln_f\.bias'\]"):
        resume()


def _resume_trainer(checkpoint, tmp_path, corpus_file):
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copytree(checkpoint, run / checkpoint.name)
    args = small_run_args(run, corpus_file, max_steps=3, save_steps=2, resume_from_checkpoint="last")
    return lambda: train_with_trainer(*args), run / checkpoint.name


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_trainer_resume_never_runs_a_booby_trapped_pickle(trainer_checkpoint, tmp_path, corpus_file, name):
    resume, checkpoint = _resume_trainer(trainer_checkpoint, tmp_path, corpus_file)
    marker = tmp_path / "code-ran"
    booby_trap(checkpoint / name, marker)
    with pytest.raises(ValueError, match=rf"{name}.*weights_only"):
        resume()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"])
def test_trainer_resume_refuses_a_missing_part(trainer_checkpoint, tmp_path, corpus_file, name):
    resume, checkpoint = _resume_trainer(trainer_checkpoint, tmp_path, corpus_file)
    (checkpoint / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{name}"):
        resume()


def test_trainer_resume_refuses_a_missing_tensor(trainer_checkpoint, tmp_path, corpus_file):
    resume, checkpoint = _resume_trainer(trainer_checkpoint, tmp_path, corpus_file)
    weights = load_file(checkpoint / "model.safetensors")
    del weights["transformer.h.0.mlp.c_proj.weight"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks tensors the model has: \['transformer\.h\.0\.mlp\.c_proj\.weight'\]"):
        resume()
