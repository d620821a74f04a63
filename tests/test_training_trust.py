"""`train` on both paths (Trainer, Accelerate loop) does what it says or refuses in one line (issue 27): only
completion tokens are scored, a run with no target token never starts, and `--output_dir` is required."""
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import SMALL
from test_cli import assert_one_line_error, run_cli
from hf_scratch_gpt.data import train_bpe_tokenizer
from hf_scratch_gpt.training import loop, trainer

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
    """Every (training mode, input_ids, attention_mask, labels) the model's forward receives in the run."""
    module = trainer if loop_name == "trainer" else loop
    received, build = [], module.build_model

    def build_and_watch(*args, **kwargs):
        model = build(*args, **kwargs)

        def record(module_, args_, kwargs_):
            if kwargs_.get("labels") is not None:
                received.append((module_.training, *(kwargs_[k].clone() for k in ("input_ids", "attention_mask", "labels"))))

        model.register_forward_pre_hook(record, with_kwargs=True)
        return model

    monkeypatch.setattr(module, "build_model", build_and_watch)
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


# ---------------------------------------------------------------------------------------------------------------------
# Values Trainer or datasets failed on with a traceback: one line, before anything is read or written
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name, flag, value, message", [
    ("trainer", "--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be an integer >= 1, got 0"),
    ("accelerate", "--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be an integer >= 1, got 0"),
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


@pytest.mark.parametrize("value, kind", [({"a": 1}, "an object"), (3, "a number"), (["x"], "an array"), (False, "a boolean")])
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
