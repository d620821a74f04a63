"""`train` on both paths (Trainer, Accelerate loop) does what it says or refuses in one line (issue 27): only
completion tokens are scored, a run with no target token never starts, `--output_dir` is required, a folder that
train did not write is never replaced without `--overwrite_output_dir`, two runs never share a folder, and a final
model is never published without its weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import SMALL
from test_cli import assert_one_line_error, run_cli
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.data import train_bpe_tokenizer
from hf_scratch_gpt.training import components, final_save, loop, trainer
from hf_scratch_gpt.training.components import (
    TRAIN_OUTPUT_MARK, OutputDirInUseError, claim_output_dir, publish_directory,
)  # fmt: skip

PAIRS = [{"prompt": f"Q: what is {a} plus {b}?\nA:", "completion": f" {a + b}"} for a in range(6) for b in range(6)]
LOOPS = ("trainer", "accelerate")


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory):
    """pairs.jsonl (36 prompt/completion records) and a byte-level BPE trained on them (tokenizer/)."""
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in PAIRS), encoding="utf-8")
    tokenizer = train_bpe_tokenizer([[pair["prompt"] + pair["completion"] for pair in PAIRS]], vocab_size=300)
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def train_flags(loop_name, output_dir, pairs_folder, *extra):
    """`hf-scratch-gpt train` flags for a 2-step fine-tuning run of the small model on the pairs, on either path (no
    checkpoint, no evaluation during training: the final one runs anyway)."""
    common = [
        "--output_dir", str(output_dir), "--dataset", str(pairs_folder / "pairs.jsonl"), "--prompt_column", "prompt",
        "--tokenizer_name_or_path", str(pairs_folder / "tokenizer"), "--config_overrides", SMALL,
        "--validation_fraction", "0.2", "--max_steps", "2", "--learning_rate", "3e-3", "--disable_tqdm", "true",
        "--use_cpu", "true",
    ]  # fmt: skip
    if loop_name == "trainer":
        common += ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--save_strategy", "no",
                   "--report_to", "none"]  # fmt: skip
    else:  # two accumulation micro-batches of 2 per step
        common += ["--global_batch_size", "4", "--gradient_accumulation_steps", "2", "--eval_steps", "100",
                   "--save_steps", "100"]  # fmt: skip
    return common + [str(item) for item in extra]


def run_train(loop_name, flags):
    return (trainer.train_from_argv if loop_name == "trainer" else loop.loop_from_argv)(flags)


def watch_labels(monkeypatch, loop_name):
    """Every (training mode, input_ids, attention_mask, labels) the model's forward receives in the run (both loops
    build their model through `components.set_up_training`)."""
    received, build = [], components.build_model

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)

        def record(module_, args_, kwargs_):
            if kwargs_.get("labels") is not None:
                tensors = (kwargs_[key].clone() for key in ("input_ids", "attention_mask", "labels"))
                received.append((module_.training, *tensors))

        model.register_forward_pre_hook(record, with_kwargs=True)
        return model

    monkeypatch.setattr(components, "build_model", build_and_watch)
    return received


# ---------------------------------------------------------------------------------------------------------------------
# What the loss scores
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name", LOOPS)
def test_only_completion_tokens_reach_the_loss(tmp_path, pairs_folder, monkeypatch, loop_name):
    """The labels the model receives in a real run score exactly each pair's completion and eos: Trainer (whose
    remove_unused_columns dropped the prompt length, so 64 of 64 tokens were scored) and the Accelerate loop."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pairs_folder / "tokenizer")
    expected = {}  # the pair's ids (prompt + completion + eos) → the labels that score only completion + eos
    for pair in PAIRS:
        prompt = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(pair["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        expected[tuple(prompt + completion)] = [-100] * len(prompt) + completion
    received = watch_labels(monkeypatch, loop_name)
    run_train(loop_name, train_flags(loop_name, tmp_path / "out", pairs_folder))

    assert sum(training for training, *_ in received) == (2 if loop_name == "trainer" else 4)  # steps × micro-batches
    scored = completion_tokens = 0
    for _, input_ids, attention_mask, labels in received:
        for ids, mask, row_labels in zip(input_ids, attention_mask.bool(), labels):
            wanted = expected[tuple(ids[mask].tolist())]
            assert row_labels[mask].tolist() == wanted
            assert (row_labels[~mask] == -100).all()  # padding
            scored += int((row_labels != -100).sum())
            completion_tokens += sum(label != -100 for label in wanted)
    assert scored == completion_tokens and 0 < scored < int(sum(mask.sum() for _, _, mask, _ in received)) / 3


@pytest.mark.parametrize("loop_name", LOOPS)
def test_pairs_with_no_target_token_are_refused_before_training(tmp_path, pairs_folder, loop_name):
    """block_size 4 keeps only prompt tokens: every label would be -100 (loss 0, eval perplexity 1)."""
    flags = train_flags(loop_name, tmp_path / "out", pairs_folder, "--block_size", "4")
    with pytest.raises(ValueError, match=r"the train split has no target token: each of its \d+ prompt/completion "
                                         r"pairs is cut at block_size 4"):  # fmt: skip
        run_train(loop_name, flags)
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name", LOOPS)
def test_output_dir_is_required(tmp_path, pairs_folder, monkeypatch, capsys, loop_name):
    """Without --output_dir (flags or a .json file) the run is refused in one line; nothing goes to ./trainer_output."""
    monkeypatch.chdir(tmp_path)
    flags = train_flags(loop_name, "unused", pairs_folder)[2:]
    code, _, err = run_cli(["train", "--loop", loop_name, *flags], capsys)
    assert_one_line_error(code, err, "the following arguments are required: --output_dir")
    arguments = dict(zip((flag.removeprefix("--") for flag in flags[::2]), flags[1::2]))
    Path("args.json").write_text(json.dumps(arguments), encoding="utf-8")
    code, _, err = run_cli(["train", "--loop", loop_name, "args.json"], capsys)
    assert_one_line_error(code, err, "args.json lacks the required output_dir")
    assert sorted(os.listdir(tmp_path)) == ["args.json"]


def save_other_model(folder: Path) -> dict[str, bytes]:
    """Another model's folder (config, weights, a card): what `train` must not replace. Returns its files."""
    torch.manual_seed(1)
    ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", vocab_size=64)).save_pretrained(folder)
    (folder / "README.md").write_text("# someone's model\n", encoding="utf-8")
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_folder_train_did_not_write_is_kept_unless_overwrite_is_given(tmp_path, pairs_folder, capsys, loop_name):
    other = tmp_path / "other"
    before = save_other_model(other)
    flags = train_flags(loop_name, other, pairs_folder)
    code, _, err = run_cli(["train", "--loop", loop_name, *flags], capsys)
    assert_one_line_error(
        code, err, f"--output_dir {other} holds files that train did not write", "--overwrite_output_dir"
    )
    assert {path.name: path.read_bytes() for path in other.iterdir()} == before  # nothing added, nothing replaced

    run_train(loop_name, [*flags, "--overwrite_output_dir", "true"])
    assert (other / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert (other / TRAIN_OUTPUT_MARK).is_file()  # from now on the folder is a train output
    run_train(loop_name, flags)  # so a second run into it (here: from scratch again) needs no flag


def test_resuming_into_its_own_output_folder_needs_no_flag(tmp_path, pairs_folder):
    flags = train_flags("trainer", tmp_path / "run", pairs_folder, "--save_strategy", "steps", "--save_steps", "2")
    trainer.train_from_argv(flags)
    result = trainer.train_from_argv([*flags, "--max_steps", "3", "--resume_from_checkpoint", "last"])
    assert result["resumed_from"] == str(tmp_path / "run" / "checkpoint-2") and result["global_step"] == 3


HOLD_LOCK = """
import sys, time
from hf_scratch_gpt.training.components import claim_output_dir
with claim_output_dir(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, pairs_folder, capsys, loop_name):
    """Another process holds the folder (as a running `train` does): the run is refused in one line naming the
    folder and that process, and writes nothing."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "holding\n"
        flags = train_flags(loop_name, out, pairs_folder)
        code, _, err = run_cli(["train", "--loop", loop_name, *flags], capsys)
        assert_one_line_error(code, err, f"--output_dir {out} is in use by another train run (process {holder.pid} on ")
        assert sorted(os.listdir(out)) == [TRAIN_OUTPUT_MARK]
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0
    run_train(loop_name, flags)  # the lock went with the process that held it
    assert (out / "model.safetensors").is_file()


def test_the_lock_is_exclusive_within_one_process_and_released_after(tmp_path):
    with claim_output_dir(tmp_path / "out"):
        with pytest.raises(OutputDirInUseError, match=rf"process {os.getpid()} on "):
            with claim_output_dir(tmp_path / "out"):
                pass
    with claim_output_dir(tmp_path / "out"):
        pass


def test_a_final_save_without_its_weights_is_never_published(tmp_path):
    out = tmp_path / "out"
    before = save_other_model(out)
    staging = final_save.start_final_save(out)
    (staging / "config.json").write_text("{}", encoding="utf-8")
    (staging / "metrics.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors'\]; nothing was published"):
        final_save.publish_final_save(staging, out)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before

    (staging / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    (staging / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"lacks \['model-00002-of-00002.safetensors'\]"):
        final_save.publish_final_save(staging, out)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


def test_a_checkpoint_without_its_required_files_is_never_published(tmp_path):
    staging = tmp_path / ".incomplete-checkpoint-2"
    staging.mkdir()
    (staging / "trainer_state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors'\]: it is not published"):
        publish_directory(staging, tmp_path / "checkpoint-2", required=("trainer_state.json", "model.safetensors"))
    assert not (tmp_path / "checkpoint-2").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Values Trainer or datasets failed on with a traceback: one line, before anything is read or written
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name, flag, value, message", [
    ("trainer", "--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be an integer >= 1, got 0"),
    ("accelerate", "--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be an integer >= 1"),
    ("trainer", "--num_train_epochs", "inf", "--num_train_epochs must be a finite number, got inf"),
    ("trainer", "--dataset", "", "dataset '' is empty: expected 'pydoc'"),
    ("accelerate", "--dataset", "", "dataset '' is empty: expected 'pydoc'"),
])  # fmt: skip
def test_bad_training_values_are_one_line(tmp_path, pairs_folder, capsys, loop_name, flag, value, message):
    max_steps = "-1" if flag == "--num_train_epochs" else "2"
    flags = train_flags(loop_name, tmp_path / "out", pairs_folder, "--max_steps", max_steps, flag, value)
    code, _, err = run_cli(["train", "--loop", loop_name, *flags], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "value, kind", [({"a": 1}, "an object"), (3, "a number"), (["x"], "an array"), (False, "a boolean")]
)
@pytest.mark.parametrize("field", ["prompt", "completion"])  # the prompt was an AttributeError ('strip') traceback
@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_text_field_that_is_not_a_string_is_one_line_naming_the_file_and_line(
    tmp_path, pairs_folder, capsys, loop_name, field, value, kind
):
    data = tmp_path / "pairs.jsonl"
    records = [PAIRS[0], {**PAIRS[1], field: value}, PAIRS[2]]
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    flags = train_flags(loop_name, tmp_path / "out", pairs_folder, "--dataset", data)
    code, _, err = run_cli(["train", "--loop", loop_name, *flags], capsys)
    assert_one_line_error(code, err, f"pairs.jsonl line 2: field {field!r} holds {kind}", "expected a string")
