"""`hf-scratch-gpt generate / card / push` and the examples that generate and push."""

import json
import runpy
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from saved_models import save_tiny_model_folder

import hf_scratch_gpt
from hf_scratch_gpt.cli import main
from hf_scratch_gpt.generation import DECODING_STRATEGIES, build_generation_config, generate_text

EXAMPLES = Path(hf_scratch_gpt.__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-model")
    model, tokenizer = save_tiny_model_folder(folder)
    return folder, model, tokenizer


def test_generate_greedy_prints_the_continuation(saved_folder, capsys):
    folder, model, tokenizer = saved_folder
    assert main(["generate", str(folder), "--prompt", "Hello world", "--max-new-tokens", "6"]) == 0
    (expected,) = generate_text(model, tokenizer, "Hello world", build_generation_config(model, max_new_tokens=6))
    assert capsys.readouterr().out == expected.text + "\n"


def test_generate_show_probs(saved_folder, capsys):
    folder, _, _ = saved_folder
    main(["generate", str(folder), "--prompt", "Hello", "--max-new-tokens", "3", "--show-probs", "4"])
    lines = capsys.readouterr().out.split("\n")
    start = lines.index("model probabilities: softmax of the raw logits (before temperature, top-k, top-p, penalties)")
    steps = [line for line in lines[start:] if line.startswith("step ")]
    candidates = [line for line in lines[start:] if line.startswith("    ")]
    assert len(steps) == 3 and len(candidates) == 3 * 4
    first_step_probabilities = [float(line.split()[0]) for line in candidates[:4]]
    assert first_step_probabilities == sorted(first_step_probabilities, reverse=True)
    assert 0 < sum(first_step_probabilities) <= 1.0 + 1e-4


def test_generate_sampling_with_seed_is_reproducible_and_streams(saved_folder, capsys):
    folder, _, _ = saved_folder
    argv = ["generate", str(folder), "--prompt", "Hi", "--max-new-tokens", "8", "--temperature", "1.2",
            "--top-k", "20", "--top-p", "0.95", "--seed", "3"]
    main(argv)
    first = capsys.readouterr().out
    main(argv + ["--stream"])
    assert capsys.readouterr().out == first


def test_generate_reports_a_missing_model_clearly(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "x"]) == 1  # one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("hf-scratch-gpt: error: ") and "missing" in err and "does not exist" in err
    with pytest.raises(FileNotFoundError, match="does not exist"):  # the library error, with --debug
        main(["--debug", "generate", str(tmp_path / "missing"), "--prompt", "x"])


def test_card_then_push_dry_run(saved_folder, tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved_folder[0], folder)
    assert main(["card", str(folder), "--repo-id", "me/tiny", "--license", "mit", "--dataset", "wikitext",
                 "--perplexity", "12.5", "--eval-dataset", "wikitext"]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "README.md")
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("dry run must not create a repo"))
    assert main(["push", str(folder), "me/tiny", "--private", "--revision", "dev", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "would upload to me/tiny@dev (private):"
    assert [line.strip() for line in out[1:]] == [
        "README.md", "checks_scratch_gpt.py", "config.json", "configuration_scratch_gpt.py",
        "decoding_scratch_gpt.py", "fused_loss_scratch_gpt.py", "generation_config.json",
        "model.safetensors", "modeling_scratch_gpt.py", "tokenizer.json", "tokenizer_config.json",
    ]


def test_push_command_uploads(saved_folder, tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved_folder[0], folder)
    main(["card", str(folder), "--repo-id", "me/tiny", "--license", "mit"])
    sent = {}

    def create_commit(self, repo_id, operations, **kwargs):
        sent["files"] = sorted(operation.path_in_repo for operation in operations)
        return "https://huggingface.co/me/tiny/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **k: sent.setdefault("repo", (repo_id, k)))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    assert main(["push", str(folder), "me/tiny"]) == 0
    assert sent["repo"] == ("me/tiny", {"repo_type": "model", "private": False, "exist_ok": True})
    assert "model.safetensors" in sent["files"] and "README.md" in sent["files"]
    assert capsys.readouterr().out.splitlines()[-1] == "https://huggingface.co/me/tiny/commit/1"


def _run_example(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_generate_example_runs_every_strategy(monkeypatch, capsys):
    _run_example("generate_strategies.py", ["--max-new-tokens", "5"], monkeypatch)
    out = capsys.readouterr().out
    for name in DECODING_STRATEGIES:
        assert f"[{name}]" in out
    assert out.count("'The meaning of life is") == len(DECODING_STRATEGIES)


def test_generate_example_on_a_folder(saved_folder, monkeypatch, capsys):
    folder, model, tokenizer = saved_folder
    _run_example("generate_strategies.py", [str(folder), "--prompt", "Hello", "--max-new-tokens", "4"], monkeypatch)
    (greedy,) = generate_text(model, tokenizer, "Hello", build_generation_config(model, max_new_tokens=4))
    assert f"  {greedy.text!r}" in capsys.readouterr().out.split("\n")


def test_push_example_dry_run(saved_folder, tmp_path, monkeypatch, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(saved_folder[0], folder)
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("dry run must not create a repo"))
    _run_example("push_to_hub.py", [str(folder), "me/tiny", "--license", "mit", "--dry-run"], monkeypatch)
    out = capsys.readouterr().out
    assert "would upload to me/tiny:" in out and "  model.safetensors" in out
    assert json.loads((folder / "config.json").read_text())["model_type"] == "scratch_gpt"
    assert (folder / "README.md").is_file()
