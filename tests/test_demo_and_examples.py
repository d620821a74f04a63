"""The demo command end to end at a small size, `hf-scratch-gpt evaluate`, and every example script, as a user
runs them (subprocesses, offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import launch_temp

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SMALL = "n_positions=32,n_embd=32,n_layer=2,n_head=2"


def run(args, timeout=300, **env):
    completed = subprocess.run([sys.executable, *args], cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True,
                               timeout=timeout)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    stdout = run(["-m", "hf_scratch_gpt.cli", "demo", "--output-dir", str(out), "--max-steps", "40", "--learning-rate", "5e-3",
                  "--eval-steps", "20", "--vocab-size", "400", "--config-overrides", SMALL, "--max-new-tokens", "8",
                  "--batch-size", "8", "--max-minutes", "0"])  # fmt: skip
    return out, stdout


def test_demo_end_to_end_small(demo_run):
    out, stdout = demo_run
    assert "validation perplexity:" in stdout and "unigram baseline:" in stdout
    assert "sample (greedy)" in stdout and "sample (top_k=40)" in stdout and "sample (temperature=0.8)" in stdout
    assert f"model folder: {out}" in stdout and f"loss plot: {out / 'loss.png'}" in stdout
    demo = json.loads((out / "metrics.json").read_text())["demo"]
    assert demo["trained_steps"] == 40
    # At this toy size (80 steps of a 32-wide model) it beats a uniform guess; the full demo beats the unigram baseline.
    assert demo["validation_per_document"]["perplexity"] < 0.6 * 400
    assert 1 < demo["unigram_baseline_perplexity"] < 400
    assert (out / "loss.png").stat().st_size > 1000

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer) == 400


def test_evaluate_command_prints_json(demo_run, tmp_path):
    out, _ = demo_run
    text = tmp_path / "held_out.txt"
    text.write_text("The for statement is used to iterate over the elements of a sequence. " * 10, encoding="utf-8")
    result = json.loads(run(["-m", "hf_scratch_gpt.cli", "evaluate", str(out), "--text-file", str(text),
                             "--stride", "16"]))  # fmt: skip
    assert set(result) >= {"loss", "perplexity", "bits_per_byte", "accuracy", "tokens"}
    assert result["bytes"] == len(text.read_bytes()) and result["stride"] == 16
    example = json.loads(run(["examples/evaluate_perplexity.py", str(out), str(text), "16"]))
    assert example["perplexity"] == pytest.approx(result["perplexity"], rel=1e-9)


def last_json(stdout):
    """The JSON object a script prints last (Trainer also prints its log dicts to stdout)."""
    return json.loads(stdout[stdout.rindex("{\n") :])


def test_example_train_from_scratch_and_finetune(tmp_path):
    scratch = tmp_path / "scratch"
    result = last_json(run(["examples/train_from_scratch.py", "--output_dir", str(scratch), "--max_steps", "6",
                             "--eval_steps", "3", "--save_steps", "6", "--config_overrides", SMALL,
                             "--tokenizer_vocab_size", "300", "--per_device_train_batch_size", "4"]))  # fmt: skip
    assert result["eval_perplexity"] > 1 and Path(result["plot"]).is_file()
    temp = tmp_path / "temp"
    tuned = last_json(run(["examples/finetune_prompt_completion.py", str(scratch), "--output_dir", str(tmp_path / "ft"),
                           "--max_steps", "4", "--eval_steps", "2", "--save_steps", "4"],
                          **launch_temp(temp)))  # fmt: skip
    assert tuned["eval_perplexity"] > 1 and (tmp_path / "ft" / "model.safetensors").is_file()
    assert not any(temp.iterdir()), list(temp.iterdir())  # the built-in pairs' temporary file is gone


def test_example_accelerate_loop(tmp_path):
    result = last_json(run(["examples/accelerate_loop.py", "--output_dir", str(tmp_path), "--max_steps", "4",
                             "--eval_steps", "2", "--save_steps", "4", "--global_batch_size", "4",
                             "--config_overrides", SMALL, "--tokenizer_vocab_size", "300", "--disable_tqdm", "true"]))  # fmt: skip
    assert result["processes"] == 1 and result["eval_perplexity"] > 1


def test_fsdp_config_is_a_valid_accelerate_config():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "accelerate_fsdp.yaml"))
    assert config.distributed_type == "FSDP"
    assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "ScratchGPTBlock"
