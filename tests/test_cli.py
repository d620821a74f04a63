"""The command line as a user meets it: one-line errors (the traceback only with --debug), every training flag
listed by `train --help`, options checked before any work starts, and quiet output where the work is quick."""

import json
import math
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from saved_models import save_tiny_model_folder

import hf_scratch_gpt
import hf_scratch_gpt_cli
import hf_scratch_gpt_cli as cli  # the command line's code (hf_scratch_gpt.cli re-exports its public names)
from hf_scratch_gpt.cli import main

EXAMPLES = Path(hf_scratch_gpt.__file__).resolve().parent.parent / "examples"
SMALL = "n_positions=32,n_embd=32,n_layer=2,n_head=2"


def test_smoke_command(capsys):
    assert main(["smoke", "--text", "hello world"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == len("hello world")
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-3)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-errors") / "model"
    save_tiny_model_folder(folder)
    return folder


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `hf-scratch-gpt ARGV` (argparse's own errors exit through SystemExit)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *expected_fragments):
    """The error is one line, the last one, with no traceback (libraries may log their own lines before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), err
    assert lines and "Traceback" not in err, err
    assert [line for line in lines if line.startswith("hf-scratch-gpt")] == lines[-1:], err
    assert ": error: " in lines[-1], lines[-1]
    for fragment in expected_fragments:
        assert fragment in lines[-1], lines[-1]


# ---------------------------------------------------------------------------------------------------------------------
# One line per ordinary mistake
# ---------------------------------------------------------------------------------------------------------------------
def test_missing_model_folder(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    code, _, err = run_cli(["evaluate", tmp_path / "no-such-model", "--text-file", text], capsys)
    assert code == 1
    assert_one_line_error(code, err, "no-such-model")


def test_binary_text_file_names_the_file(model_folder, tmp_path, capsys):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ok \xf0\x28\x8c\x28 " * 20)
    code, _, err = run_cli(["evaluate", model_folder, "--text-file", binary], capsys)
    assert_one_line_error(code, err, "binary.txt", "UTF-8")


def test_bad_jsonl_line_through_the_installed_command(model_folder, tmp_path):
    """In a subprocess, as a user runs it (datasets logs its own line first; the last line is ours)."""
    import subprocess

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "hf_scratch_gpt.cli", "evaluate", str(model_folder), "--dataset", str(bad)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result.returncode, result.stderr, "bad.jsonl", "line 2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_device_is_refused_before_loading(model_folder, tmp_path, capsys):
    code, _, err = run_cli(["evaluate", model_folder, "--text-file", tmp_path / "unused.txt", "--device", "cuda"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "--device", "'cuda' is not available")


def test_negative_retries(tmp_path, capsys):
    code, _, err = run_cli(["download-openai", "124M", tmp_path, "--retries", "-1"], capsys)
    assert_one_line_error(code, err, "--retries", "-1")
    assert not any(tmp_path.iterdir())


def test_sampling_value_error_from_the_library(model_folder, capsys):
    code, _, err = run_cli(["generate", model_folder, "--prompt", "Hi", "--temperature", "0"], capsys)
    assert code == 1
    assert_one_line_error(code, err, "temperature")


def test_beams_with_stream_refused_before_loading(tmp_path, capsys):
    # The folder does not exist: the refusal must come first, not "model folder ... does not exist".
    code, _, err = run_cli(["generate", tmp_path / "none", "--prompt", "Hi", "--num-beams", "4", "--stream"], capsys)
    assert_one_line_error(code, err, "--stream", "--num-beams 4")


def test_unknown_flag_of_the_chosen_loop(tmp_path, capsys):
    argv = ["train", "--loop", "accelerate", "--output_dir", tmp_path / "out", "--eval_strategy", "steps"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--eval_strategy", "train --loop accelerate --help")
    assert not (tmp_path / "out").exists()


def test_bad_flag_value_of_train(tmp_path, capsys):
    code, _, err = run_cli(["train", "--output_dir", tmp_path, "--max_steps", "many"], capsys)
    assert_one_line_error(code, err, "--max_steps", "many")


def test_loop_eval_steps_zero_refused_before_training(tmp_path, capsys):
    # Was a ZeroDivisionError at the first step.
    argv = ["train", "--loop", "accelerate", "--output_dir", tmp_path / "out", "--eval_steps", "0"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--eval_steps", "got 0")
    assert not (tmp_path / "out").exists()


def test_unknown_subcommand_flag_is_one_line(model_folder, capsys):
    code, _, err = run_cli(["generate", model_folder, "--prompt", "Hi", "--beams", "2"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "--beams")


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path, monkeypatch):
    argv = ["evaluate", str(tmp_path / "missing"), "--text-file", str(tmp_path / "t.txt")]
    with pytest.raises(FileNotFoundError, match="missing"):
        main(["--debug", *argv])
    monkeypatch.setenv(cli.DEBUG_ENVIRONMENT_VARIABLE, "1")
    with pytest.raises(FileNotFoundError, match="missing"):
        main(argv)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise ZeroDivisionError("a bug, not a user mistake")

    monkeypatch.setattr(cli, "_smoke", broken)
    with pytest.raises(ZeroDivisionError):
        main(["smoke"])


def test_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_smoke", interrupted)
    code, _, err = run_cli(["smoke"], capsys)
    assert code == 130 and err.strip() == "hf-scratch-gpt: interrupted"


def test_wrapping_error_shows_its_cause():
    try:
        try:
            raise ValueError("JSON parse error in row 1")
        except ValueError as cause:
            from datasets.exceptions import DatasetGenerationError

            raise DatasetGenerationError("An error occurred while generating the dataset") from cause
    except Exception as error:  # noqa: BLE001
        line = cli.describe_error(error)
    assert line == "An error occurred while generating the dataset: JSON parse error in row 1"


# ---------------------------------------------------------------------------------------------------------------------
# Help
# ---------------------------------------------------------------------------------------------------------------------
def test_train_help_lists_every_flag_of_the_trainer(capsys):
    from transformers import TrainingArguments

    from hf_scratch_gpt.training.components import DataArguments, ModelArguments

    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    for dataclass_type in (ModelArguments, DataArguments, TrainingArguments):
        for name, field in dataclass_type.__dataclass_fields__.items():
            if field.init and not name.startswith("_"):
                assert f"--{name}" in out, name


def test_train_help_of_the_accelerate_loop(capsys):
    from hf_scratch_gpt.training.loop import LoopArguments

    code, out, _ = run_cli(["train", "--loop", "accelerate", "--help"], capsys)
    assert code == 0
    for name in LoopArguments.__dataclass_fields__:
        assert f"--{name}" in out, name
    assert "--eval_strategy " not in out and "--preset" in out and "--dataset" in out


@pytest.mark.parametrize("script", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_every_example_answers_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith(f"usage: {script}") and len(out.splitlines()) < 50, out


HEAVY_MODULES = ("torch", "transformers", "datasets", "numpy", "hf_scratch_gpt")


def test_help_and_usage_mistakes_import_nothing_heavy():
    """`--help` of the command and of every subcommand but `train`, and a refused flag, answer from the standard
    library alone (milliseconds): the package import, which loads torch and transformers, is the handler's."""
    script = """
import argparse, json, sys
import hf_scratch_gpt_cli as cli
(subcommands,) = [a.choices for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
runs = [["--help"], ["generate", "model", "--bogus"], ["download-openai", "9B", "out"], ["card", "m", "--kind", "x"]]
runs += [[name, "--help"] for name in subcommands if name != "train"]
for argv in runs:
    try:
        cli.main(argv)
    except SystemExit:
        pass
loaded = {name.split(".")[0] for name in sys.modules}
print(json.dumps({"heavy": sorted(loaded & set(HEAVY)), "subcommands": list(subcommands)}))
""".replace("HEAVY", repr(HEAVY_MODULES))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["heavy"] == [], report
    assert {"demo", "train", "evaluate", "generate", "card", "push", "download-openai"} <= set(report["subcommands"])


def test_the_installed_command_is_the_light_module():
    """pyproject's console script is `hf_scratch_gpt_cli:main`, and `python -m hf_scratch_gpt.cli` runs the same."""
    pyproject = (EXAMPLES.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert 'hf-scratch-gpt = "hf_scratch_gpt_cli:main"' in pyproject
    from hf_scratch_gpt import cli as package_cli

    assert package_cli.main is hf_scratch_gpt_cli.main


def test_python_m_hf_scratch_gpt_runs_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hf_scratch_gpt", "smoke", "--text", "abc"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == 3


def test_values_the_parser_repeats_agree_with_the_package(capsys):
    from hf_scratch_gpt.demo import DemoOptions
    from hf_scratch_gpt.hub import CARD_TEMPLATES
    from hf_scratch_gpt.openai.download import OPENAI_BASE_URL, OPENAI_SIZES

    assert hf_scratch_gpt_cli.OPENAI_SIZES == OPENAI_SIZES
    assert hf_scratch_gpt_cli.OPENAI_BASE_URL == OPENAI_BASE_URL
    assert hf_scratch_gpt_cli.CARD_KINDS == tuple(sorted(CARD_TEMPLATES))
    code, out, _ = run_cli(["demo", "--help"], capsys)
    assert code == 0
    text, defaults = " ".join(out.split()), DemoOptions()
    for shown in (f"(default: {defaults.output_dir})", f"'{defaults.dataset}' (the default", f"(default: {defaults.preset})",
                  f"(default: {defaults.max_steps})"):  # fmt: skip
        assert shown in text, shown


# ---------------------------------------------------------------------------------------------------------------------
# Options checked before training
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_new_tokens", 0, "--max-new-tokens must be an integer >= 1, got 0"),
        ("max_new_tokens", 1000, "--max-new-tokens 1000 plus the longest sample prompt"),
        ("eval_steps", 0, "--eval-steps must be an integer >= 1"),
        ("tokenizer_vocab_size", 100, "--vocab-size must be at least 257"),
        ("preset", "7B", "unknown preset '7B'"),
    ],
)
def test_demo_checks_options_before_training(tmp_path, option, value, message):
    from hf_scratch_gpt.demo import DemoOptions, run_demo

    options = DemoOptions(output_dir=str(tmp_path / "demo"), dataset=str(tmp_path / "missing.txt"), **{option: value})
    with pytest.raises(ValueError, match=message):
        run_demo(options)
    assert not (tmp_path / "demo").exists()


def test_demo_on_a_small_corpus_fails_before_training(tmp_path, corpus_file):
    """The validation split is smaller than one batch: refused up front, not a KeyError after training."""
    from hf_scratch_gpt.demo import DemoOptions, run_demo

    small = tmp_path / "small.txt"
    small.write_text(corpus_file.read_text(encoding="utf-8")[:12_000], encoding="utf-8")
    options = DemoOptions(output_dir=str(tmp_path / "demo"), dataset=str(small), tokenizer_vocab_size=300,
                          config_overrides=SMALL, max_new_tokens=8)  # fmt: skip
    with pytest.raises(ValueError, match=r"the validation split has \d+ examples, fewer than 16"):
        run_demo(options)
    assert not list((tmp_path / "demo").glob("checkpoint-*"))


# ---------------------------------------------------------------------------------------------------------------------
# Quiet where quick
# ---------------------------------------------------------------------------------------------------------------------
def test_perplexity_of_a_loss_that_requires_grad_does_not_warn(tiny_model):
    tiny_model.train()
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 8))
    loss = tiny_model(ids, labels=ids).loss
    assert loss.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = hf_scratch_gpt.perplexity(loss)
    assert value == math.exp(loss.item())


def test_evaluate_prints_json_without_a_loading_bar_and_shows_progress_over_documents(model_folder, tmp_path, capsys):
    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"text": f"Hello world {i}."}) + "\n" for i in range(3)), encoding="utf-8")
    code, out, err = run_cli(["evaluate", model_folder, "--dataset", documents], capsys)
    assert code == 0 and json.loads(out)["tokens"] > 0
    assert "Loading weights" not in err
    assert "evaluating" in err  # the progress bar over documents
    from transformers.utils import logging as transformers_logging

    assert transformers_logging.is_progress_bar_enabled()  # the CLI's silence does not outlive the command


def test_progress_bars_only_on_the_main_process():
    import datasets
    from transformers.utils import logging as transformers_logging

    from hf_scratch_gpt.training.components import progress_bars_on_main_process_only

    datasets.enable_progress_bars()
    transformers_logging.enable_progress_bar()
    try:
        progress_bars_on_main_process_only(True)
        assert datasets.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
        progress_bars_on_main_process_only(False)
        assert not datasets.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars()
        transformers_logging.enable_progress_bar()


def test_no_pin_memory_warning_on_cpu(tmp_path, corpus_file, recwarn):
    from transformers import TrainingArguments

    from hf_scratch_gpt.training.components import DataArguments, ModelArguments
    from hf_scratch_gpt.training.trainer import train_with_trainer

    training_args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    train_with_trainer(ModelArguments(config_overrides=SMALL, tokenizer_vocab_size=300),
                       DataArguments(dataset=str(corpus_file), validation_fraction=0.1), training_args)  # fmt: skip
    assert not [str(w.message) for w in recwarn if "pin_memory" in str(w.message)]

