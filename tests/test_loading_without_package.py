"""What a saved folder loads with in plain transformers, where hf_scratch_gpt cannot be imported (issue 13.4), as
the README's table "What loads where" states it. Each case runs in a fresh interpreter with stdin closed (a script
with no terminal), so an interactive `[y/N]` trust_remote_code question shows up in its output instead of
waiting.

Why a question at all: `AutoTokenizer.from_pretrained(folder)` first reads `config.json` through `AutoConfig`
(models/auto/tokenization_auto.py), and the folder's `config.json` carries `auto_map` → custom code, which is
what lets the model load with `trust_remote_code=True` without the package. The tokenizer files themselves are a
standard fast tokenizer (`tokenizer.json`, `tokenizer_class` "TokenizersBackend", no `auto_map`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from saved_models import save_tiny_model_folder

import hf_scratch_gpt

REPO_ROOT = Path(hf_scratch_gpt.__file__).resolve().parent.parent
PROMPT_TEXT = "Do you wish to run the custom code? [y/N]"

# Make hf_scratch_gpt unimportable (as in tests/test_hub.py): drop every path entry that holds the package and the
# editable-install finder. Then evaluate each of CASES in order, printing a marker line before each and its report
# (one JSON line) after it; any question transformers asks lands between the two.
SCRIPT = """
import importlib, importlib.util, json, os, sys

sys.path[:] = [
    p for p in sys.path
    if p not in ("", ".") and os.path.abspath(p) != REPO_ROOT and not os.path.isdir(os.path.join(p, "hf_scratch_gpt"))
]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
importlib.invalidate_caches()
assert importlib.util.find_spec("hf_scratch_gpt") is None

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

for name, code in CASES.items():
    print(MARKER + name, flush=True)
    try:
        loaded = eval(code)
        report = {"class": type(loaded).__module__ + "." + type(loaded).__name__}
        if hasattr(loaded, "encode"):
            report["ids"] = loaded("Hello world").input_ids
    except Exception as error:
        report = {"error": type(error).__name__, "message": str(error)}
    report["imported_custom_code"] = any(name.startswith("transformers_modules") for name in sys.modules)
    assert "hf_scratch_gpt" not in sys.modules
    print("\\n" + json.dumps(report), flush=True)
"""
MARKER = "=== case: "
# In this order: custom code, once imported by a case, stays in sys.modules for the later ones.
CASES = {
    "tokenizer files alone": "AutoTokenizer.from_pretrained(TOKENIZER_ONLY)",
    "fast class on the folder": "PreTrainedTokenizerFast.from_pretrained(FOLDER)",
    "AutoTokenizer, trust_remote_code=False": "AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=False)",
    "AutoTokenizer, no argument": "AutoTokenizer.from_pretrained(FOLDER)",
    "model, no argument": "AutoModelForCausalLM.from_pretrained(FOLDER)",
    "AutoTokenizer, trust_remote_code=True": "AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)",
    # The folder is a causal LM's: its auto_map names the heads too, so it loads into one with its score layer new.
    "classifier, trust_remote_code=True":
        "AutoModelForSequenceClassification.from_pretrained(FOLDER, trust_remote_code=True, num_labels=3)",
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Case name → (report, what the case printed), from one interpreter without the package, stdin closed."""
    root = tmp_path_factory.mktemp("plain")
    folder = root / "model"
    _, tokenizer = save_tiny_model_folder(folder)
    tokenizer_only = root / "tokenizer-only"
    tokenizer_only.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (folder / name).is_file():
            shutil.copy(folder / name, tokenizer_only / name)
    cases = {
        name: code.replace("TOKENIZER_ONLY", repr(str(tokenizer_only))).replace("FOLDER", repr(str(folder)))
        for name, code in CASES.items()
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "modules"), TOKENIZERS_PARALLELISM="false")
    script = f"REPO_ROOT = {str(REPO_ROOT)!r}\nCASES = {cases!r}\nMARKER = {MARKER!r}\n" + SCRIPT
    completed = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=180)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = {}
    for chunk in completed.stdout.split(MARKER)[1:]:
        name, _, rest = chunk.partition("\n")
        printed, _, report = rest.rstrip("\n").rpartition("\n")
        results[name] = (json.loads(report), printed)
    assert list(results) == list(CASES)
    return results, folder, tokenizer("Hello world").input_ids


def test_saved_tokenizer_files_are_a_standard_fast_tokenizer(outcomes):
    _, folder, _ = outcomes
    assert "auto_map" not in json.loads((folder / "tokenizer_config.json").read_text())
    assert "AutoConfig" in json.loads((folder / "config.json").read_text())["auto_map"]  # what asks the question


NO_QUESTION_CASES = ["tokenizer files alone", "fast class on the folder", "AutoTokenizer, trust_remote_code=False"]


@pytest.mark.parametrize("case", NO_QUESTION_CASES)
def test_tokenizer_loads_without_the_package_without_a_question_and_without_custom_code(outcomes, case):
    results, _, expected_ids = outcomes
    report, printed = results[case]
    assert report.get("ids") == expected_ids, report
    assert PROMPT_TEXT not in printed
    assert report["imported_custom_code"] is False


def test_plain_auto_tokenizer_on_the_folder_asks_the_trust_question(outcomes):
    """The README says so: AutoTokenizer.from_pretrained(folder) asks [y/N] (config.json's auto_map); with no
    terminal the question gets no answer, and transformers falls back to the tokenizer files."""
    results, _, expected_ids = outcomes
    report, printed = results["AutoTokenizer, no argument"]
    assert PROMPT_TEXT in printed
    assert report["ids"] == expected_ids and report["imported_custom_code"] is False


def test_model_without_trust_remote_code_is_refused(outcomes):
    results, _, _ = outcomes
    report, printed = results["model, no argument"]
    assert PROMPT_TEXT in printed
    assert report["error"] == "ValueError" and "trust_remote_code=True" in report["message"]
    assert report["imported_custom_code"] is False


def test_tokenizer_with_trust_remote_code_runs_the_folders_config_code(outcomes):
    results, _, expected_ids = outcomes
    report, printed = results["AutoTokenizer, trust_remote_code=True"]
    assert report["ids"] == expected_ids and PROMPT_TEXT not in printed
    assert report["imported_custom_code"] is True


def test_causal_lm_folder_loads_into_a_classifier_with_trust_remote_code(outcomes):
    results, _, _ = outcomes
    report, printed = results["classifier, trust_remote_code=True"]
    assert report["class"].startswith("transformers_modules.") and PROMPT_TEXT not in printed, report
    assert report["class"].endswith(".modeling_scratch_gpt.ScratchGPTForSequenceClassification"), report
