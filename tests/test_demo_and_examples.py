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
                  "--batch-size", "8"])  # fmt: skip
    return out, stdout


def test_demo_end_to_end_small(demo_run):
    out, stdout = demo_run
    # Up front: what it will do and how long it should take; while training: step/total with the losses.
    assert stdout.startswith("demo: 40 training steps (batch 8) on 'pydoc', evaluated every 20 steps")
    assert "expected time: no estimate for this model" in stdout.splitlines()[0]
    assert "step 20/40: train loss " in stdout and "step 40/40: train loss " in stdout
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


def test_evaluate_scores_the_demos_held_out_file_whole(demo_run, capsys):
    """`evaluate runs/demo --dataset runs/demo/validation.jsonl` scores every held-out document (the demo's
    per-document number), with no advice to pass --split; --split validation would re-split it and is refused."""
    from hf_scratch_gpt.cli import main

    out, _ = demo_run
    held_out = out / "validation.jsonl"
    lines = held_out.read_text(encoding="utf-8").splitlines()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--dataset", str(held_out)]) == 0
    printed, err = capsys.readouterr()
    result, demo = json.loads(printed), json.loads((out / "metrics.json").read_text())["demo"]
    assert (result["split"], result["documents"]) == ("all", len(lines)) and len(lines) > 100
    assert result["tokens"] == demo["validation_per_document"]["tokens"]
    assert result["perplexity"] == pytest.approx(demo["validation_per_document"]["perplexity"], rel=1e-9)
    assert "--split" not in err
    assert main(["evaluate", str(out), "--dataset", str(held_out), "--split", "validation"]) == 1
    assert "is not that corpus" in capsys.readouterr().err


def test_demo_runs_a_fixed_number_of_steps_not_a_time_budget(capsys):
    from dataclasses import fields

    from hf_scratch_gpt.cli import main
    from hf_scratch_gpt.demo import DemoOptions, expected_seconds, plan_line

    names = {option.name for option in fields(DemoOptions)}
    assert "max_steps" in names
    assert not [name for name in names if any(unit in name for unit in ("minute", "second", "time"))], names
    default = DemoOptions()
    assert 4 * 60 <= expected_seconds(default) <= 6 * 60  # "about five minutes" on 2 idle cores
    assert plan_line(default).startswith(f"demo: {default.max_steps} training steps (batch 16) on 'pydoc'")
    assert "expected time: about 4 min" in plan_line(default) or "expected time: about 5 min" in plan_line(default)
    # The flag of the old time budget is refused with the reason, before anything runs.
    assert main(["demo", "--max-minutes", "4", "--output-dir", "never-written"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hf-scratch-gpt: error: --max-minutes 4: the demo no longer stops on a time budget")
    assert "--max-steps" in err and not (ROOT / "never-written").exists()


def test_demo_result_is_reproducible(tmp_path, corpus_file):
    """The same options give the same numbers and samples: the run is a fixed number of seeded steps (two short runs
    in this process; `make demo` is the same at 1200 steps)."""
    from hf_scratch_gpt.demo import DemoOptions, run_demo

    def demo(name):
        options = DemoOptions(output_dir=str(tmp_path / name), dataset=str(corpus_file), config_overrides=SMALL,
                              tokenizer_vocab_size=300, max_steps=6, eval_steps=3, batch_size=4,
                              max_new_tokens=6)  # fmt: skip
        reported = []
        return run_demo(options, report=reported.append), reported

    (first, first_report), (second, _) = demo("first"), demo("second")
    assert first["trained_steps"] == second["trained_steps"] == 6
    assert [line.split(":")[0] for line in first_report] == ["demo", "step 3/6", "step 6/6"]
    for measure in ("validation_per_document", "validation_blocks"):
        for name in ("loss", "perplexity", "accuracy"):
            assert first[measure][name] == pytest.approx(second[measure][name], rel=1e-12, abs=0), (measure, name)
    assert first["unigram_baseline_perplexity"] == second["unigram_baseline_perplexity"]
    assert [sample["text"] for sample in first["samples"]] == [sample["text"] for sample in second["samples"]]
    assert len({sample["text"] for sample in first["samples"]}) > 1  # not an empty or constant output
    assert first["validation_per_document"]["perplexity"] < 300  # it learned something (uniform guess: 300)


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


def test_a_folder_an_earlier_demo_wrote_is_trained_into_again(tmp_path):
    """Before train marked its outputs, a demo folder had no mark; the demo adopts its own, nothing else."""
    from hf_scratch_gpt.demo import adopt_earlier_demo_folder
    from hf_scratch_gpt.training.components import TRAIN_OUTPUT_MARK, check_output_dir

    earlier, other = tmp_path / "demo", tmp_path / "other"
    for folder, record in ((earlier, {"demo": {"trained_steps": 1200}}), (other, {"eval_loss": 1.0})):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        (folder / "metrics.json").write_text(json.dumps(record))
        adopt_earlier_demo_folder(folder)
    assert (earlier / TRAIN_OUTPUT_MARK).exists() and not (other / TRAIN_OUTPUT_MARK).exists()
    check_output_dir(earlier)
    with pytest.raises(FileExistsError, match="holds files that train did not write"):
        check_output_dir(other)


def test_example_finetune_classification(tmp_path):
    """The built-in labelled set on a tiny new model: held-out accuracy from chance to well above it. Then a saved
    causal-LM folder with a --data file: the classifier it writes loads back and scores as the script reported."""
    result = last_json(run(["examples/finetune_classification.py", "--output_dir", str(tmp_path / "tiny"),
                            "--max_steps", "60"]))  # fmt: skip
    assert (result["train_rows"], result["held_out_rows"]) == (120, 30)
    assert result["accuracy_before"] < 0.5 and result["accuracy_after"] >= 0.6, result

    from saved_models import save_tiny_model_folder

    save_tiny_model_folder(tmp_path / "lm")
    rows = [{"text": f"{word} number {i}", "label": word == "cat"} for i in range(8) for word in ("cat", "dog")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "classifier"
    result = last_json(run(["examples/finetune_classification.py", "--model", str(tmp_path / "lm"), "--data",
                            str(tmp_path / "rows.jsonl"), "--output_dir", str(out), "--max_steps", "4"]))  # fmt: skip
    assert result["labels"] == ["False", "True"] and result["held_out_rows"] == 3

    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "False", 1: "True"} and model.config.pad_token_id == 0
    assert model.score.weight.shape == (2, model.config.n_embd)
    lm_weights = load_file(tmp_path / "lm" / "model.safetensors")
    assert not model.transformer.wte.weight.equal(lm_weights["transformer.wte.weight"])  # fine-tuned, saved
    # An output folder that holds files is not written into (checked in this process: nothing is trained).
    import runpy

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit, match="exists and is not empty"):
        patch.setattr(sys, "argv", ["finetune_classification.py", "--output_dir", str(out)])
        runpy.run_path(str(ROOT / "examples" / "finetune_classification.py"), run_name="__main__")
