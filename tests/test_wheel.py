"""The wheel works where users install it: built from the sources, installed into a folder of its own and run from
outside the repository (`--help`, `smoke`, `card`), importing the installed copy and not the checkout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the wheel is built from: the sources, without virtualenvs, build output, runs or tests.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "tests", "*.egg-info", "__pycache__")


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    sources = tmp_path / "sources"
    shutil.copytree(ROOT, sources, ignore=NOT_SOURCES)  # the in-tree build writes build/ there, not in the checkout
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(sources)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("hf_scratch_gpt-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    located = _run([sys.executable, "-c", "import hf_scratch_gpt; print(hf_scratch_gpt.__file__)"], elsewhere, env)
    assert Path(located.strip()).is_relative_to(site), f"imported {located.strip()}, not the installed wheel"

    cli = [str(site / "bin" / "hf-scratch-gpt")]
    help_text = _run(cli + ["--help"], elsewhere, env)
    for command in ("smoke", "train", "evaluate", "generate", "card", "push"):
        assert command in help_text, f"--help does not list {command}:\n{help_text}"
    smoke = json.loads(_run(cli + ["smoke", "--text", "hello wheel"], elsewhere, env))
    assert smoke["tokens"] == len("hello wheel") and smoke["perplexity"] > 1, smoke

    model_dir = elsewhere / "model"
    save = "from hf_scratch_gpt import *; import sys; ScratchGPTForCausalLM(ScratchGPTConfig.from_preset('tiny'))" \
        ".save_pretrained(sys.argv[1])"
    _run([sys.executable, "-c", save, str(model_dir)], elsewhere, env)
    card_path = _run(cli + ["card", str(model_dir), "--repo-id", "you/tiny-gpt", "--license", "mit"], elsewhere, env)
    card = Path(card_path.strip()).read_text(encoding="utf-8")
    assert "you/tiny-gpt" in card and "license: mit" in card, card[:500]
