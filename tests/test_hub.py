"""Model cards, pushing (Hub client replaced at its network boundary), pipelines, and trust_remote_code loading in
an interpreter where hf_scratch_gpt cannot be imported."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from saved_models import save_tiny_model_folder
from transformers import pipeline

import hf_scratch_gpt
from hf_scratch_gpt.generation import build_generation_config, generate_text
from hf_scratch_gpt.hub import plan_upload, push_to_hub, render_model_card, validate_model_card, write_model_card

REPO_ROOT = Path(hf_scratch_gpt.__file__).resolve().parent.parent
CARD_FIELDS = dict(
    repo_id="someone/tiny-scratch-gpt",
    license="apache-2.0",
    datasets=["wikitext"],
    perplexity=123.456,
    eval_dataset="wikitext",
    eval_split="test",
)
EXPECTED_UPLOAD = [
    "README.md",
    "checks_scratch_gpt.py",
    "config.json",
    "configuration_scratch_gpt.py",
    "decoding_scratch_gpt.py",
    "fused_loss_scratch_gpt.py",
    "generation_config.json",
    "model.safetensors",
    "modeling_scratch_gpt.py",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = save_tiny_model_folder(folder)
    write_model_card(folder, "trained_from_scratch", **CARD_FIELDS)
    return folder, model, tokenizer


@pytest.fixture
def folder_copy(saved_folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved_folder[0], target)
    return target


# ------------------------------------------------------------------------------------------------------ model cards
def test_card_metadata_parses_back_through_huggingface_hub(saved_folder):
    folder, model, _ = saved_folder
    card_path = folder / "README.md"
    metadata = metadata_load(card_path)  # the YAML block, as the Hub reads it
    assert metadata["license"] == "apache-2.0"
    assert metadata["tags"] == ["text-generation", "gpt2", "custom_code"]
    assert metadata["datasets"] == ["wikitext"]
    assert metadata["pipeline_tag"] == "text-generation"
    assert metadata["library_name"] == "transformers"
    assert "base_model" not in metadata
    model_name, results = model_index_to_eval_results(metadata["model-index"])
    assert model_name == "tiny-scratch-gpt"
    (result,) = results
    assert (result.task_type, result.dataset_type, result.dataset_split) == ("text-generation", "wikitext", "test")
    assert (result.metric_type, result.metric_value) == ("perplexity", 123.456)
    data = validate_model_card(card_path)
    assert data.eval_results[0].metric_value == 123.456
    text = card_path.read_text()
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} |" in text  # tied head counted once
    assert "Perplexity **123.456** on `wikitext` (split `test`)" in text


def test_fine_tuned_card_has_base_model():
    card = render_model_card("fine_tuned", base_model="openai-community/gpt2", **CARD_FIELDS, n_layer=2, n_head=4,
                             n_embd=64, n_positions=128, vocab_size=300, parameters="1")
    data = validate_model_card(card, kind="fine_tuned")
    assert data.base_model == "openai-community/gpt2"
    assert "A fine-tune of [`openai-community/gpt2`]" in str(card)
    with pytest.raises(ValueError, match="base_model"):
        render_model_card("fine_tuned", **CARD_FIELDS)


def test_card_without_perplexity_has_no_model_index():
    fields = {k: v for k, v in CARD_FIELDS.items() if k not in ("perplexity", "eval_dataset", "eval_split")}
    card = render_model_card("trained_from_scratch", **fields, n_layer=1, n_head=1, n_embd=8, n_positions=8,
                             vocab_size=9, parameters="1")
    assert "model-index" not in card.data.to_dict()
    assert "Not evaluated." in str(card)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"perplexity": 10.0, "eval_dataset": None}, "eval_dataset"),
        ({"license": ""}, "license"),
    ],
)
def test_render_model_card_rejects_incomplete_metadata(change, message):
    with pytest.raises(ValueError, match=message):
        render_model_card("trained_from_scratch", **{**CARD_FIELDS, **change})


# Issue 27: a card never claims an impossible perplexity or names an id the Hub cannot have.
NOT_PERPLEXITIES = ["nan", "inf", "-inf", "-5", "0", "0.5", "abc"]
BAD_REPO_IDS = ["a/b/c", "-bad", "x..y", "", "a b", "me/tiny.git"]


@pytest.mark.parametrize("text", NOT_PERPLEXITIES)
def test_card_refuses_a_value_that_cannot_be_a_perplexity(text, saved_folder, capsys):
    from hf_scratch_gpt.cli import main

    value = float(text) if text != "abc" else text
    with pytest.raises(ValueError, match=r"perplexity .* is not a perplexity: expected a finite number >= 1"):
        render_model_card("trained_from_scratch", **{**CARD_FIELDS, "perplexity": value})
    before = (saved_folder[0] / "README.md").read_text()
    with pytest.raises(SystemExit) as exit_info:  # the CLI applies the same rule while parsing the flag
        main(["card", str(saved_folder[0]), "--repo-id", "me/x", "--license", "mit", f"--perplexity={text}",
              "--eval-dataset", "wikitext"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"argument --perplexity: expected a finite number >= 1 (a perplexity), got {text!r}" in err
    assert (saved_folder[0] / "README.md").read_text() == before


def test_perplexity_one_and_above_is_accepted():
    for value in (1, 1.0, 12.5):
        card = render_model_card("trained_from_scratch", **{**CARD_FIELDS, "perplexity": value})
        assert card.data.eval_results[0].metric_value == float(value)


@pytest.mark.parametrize("repo_id", BAD_REPO_IDS)
def test_card_and_push_refuse_an_invalid_repo_id(repo_id, folder_copy, monkeypatch, capsys):
    from hf_scratch_gpt.cli import main

    hub = FakeHub(monkeypatch)
    message = rf"repo_id {re.escape(repr(repo_id))} is not a valid Hub repo id"
    with pytest.raises(ValueError, match=message):
        write_model_card(folder_copy, "trained_from_scratch", **{**CARD_FIELDS, "repo_id": repo_id})
    with pytest.raises(ValueError, match=message):
        push_to_hub(folder_copy, repo_id, dry_run=True)
    assert main(["card", str(folder_copy), f"--repo-id={repo_id}", "--license", "mit"]) == 1
    assert main(["push", str(folder_copy), "--dry-run", "--", repo_id]) == 1  # `--`: "-bad" is no option
    captured = capsys.readouterr()
    assert captured.out == "" and hub.calls == []
    lines = captured.err.splitlines()
    assert len(lines) == 2 and all(f"repo_id {repo_id!r} is not a valid Hub repo id" in line for line in lines)


@pytest.mark.parametrize("field", ["base_model", "datasets"])
def test_card_refuses_an_invalid_base_model_or_dataset_id(field):
    value = "a/b/c" if field == "base_model" else ["wikitext", "a/b/c"]
    with pytest.raises(ValueError, match=r"(base_model|dataset) 'a/b/c' is not a valid Hub repo id"):
        render_model_card("fine_tuned", **{**CARD_FIELDS, "base_model": "gpt2", field: value})


def test_unknown_card_kind():
    with pytest.raises(ValueError, match="unknown model card kind 'blog_post'"):
        render_model_card("blog_post", **CARD_FIELDS)


def test_validate_model_card_catches_missing_tags_and_bad_model_index():
    with pytest.raises(ValueError, match=r"lacks the tags \['custom_code'\]"):
        validate_model_card(ModelCard("---\nlicense: mit\ntags:\n- text-generation\n- gpt2\n---\n# x\n"))
    with pytest.raises(ValueError, match="model-index|model_index"):
        validate_model_card(ModelCard("---\nlicense: mit\nmodel-index:\n- name: x\n  results:\n  - bad: 1\n---\n"))


def _snippet_loading(card, folder):
    """The card's usage snippet with its repo id (a Hub id: the card refuses anything else) replaced by a local
    folder, so that it runs offline."""
    (snippet,) = re.findall(r"```python\n(.*?)```", str(card), flags=re.S)
    quoted = f'"{CARD_FIELDS["repo_id"]}"'
    assert snippet.count(quoted) == 2, snippet  # the model and the tokenizer
    return snippet.replace(quoted, repr(str(folder)))


def test_card_usage_snippet_runs(saved_folder, capsys):
    folder, model, tokenizer = saved_folder
    card = render_model_card("trained_from_scratch", **CARD_FIELDS, n_layer=2, n_head=4, n_embd=64, n_positions=128,
                             vocab_size=300, parameters="1")
    snippet = _snippet_loading(card, folder)
    exec(compile(snippet, "model-card-snippet", "exec"), {})
    (expected,) = generate_text(model, tokenizer, "Once upon a time", build_generation_config(model, max_new_tokens=40))
    assert capsys.readouterr().out == expected.text + "\n"


# ----------------------------------------------------------------------------------------------------------- push
class FakeHub:
    """Records what HfApi would send; nothing leaves the process."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.uploaded: dict[str, bytes] = {}
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_branch", self.create_branch)
        monkeypatch.setattr(HfApi, "create_commit", self.create_commit)
        monkeypatch.setattr(HfApi, "upload_folder", self.forbidden)
        monkeypatch.setattr(HfApi, "upload_file", self.forbidden)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        for operation in operations:
            self.uploaded[operation.path_in_repo] = Path(operation.path_or_fileobj).read_bytes()
        return f"https://huggingface.co/{repo_id}/commit/0123"

    def forbidden(self, *args, **kwargs):
        raise AssertionError("push_to_hub must send one explicit commit")


def test_push_uploads_exactly_the_model_files(folder_copy, monkeypatch):
    # Things a training run leaves in a folder that must not be published.
    torch.save({"step": 1}, folder_copy / "optimizer.pt")
    torch.save({}, folder_copy / "pytorch_model.bin")
    (folder_copy / "checkpoint-10").mkdir()
    (folder_copy / "checkpoint-10" / "trainer_state.json").write_text("{}")
    hub = FakeHub(monkeypatch)
    plan = push_to_hub(folder_copy, "someone/tiny-scratch-gpt", private=True, revision="v1")
    assert sorted(hub.uploaded) == EXPECTED_UPLOAD == plan.files
    assert plan.skipped == ["checkpoint-10/trainer_state.json", "optimizer.pt", "pytorch_model.bin"]
    for name, content in hub.uploaded.items():
        assert content == (folder_copy / name).read_bytes(), name
    assert [call[0] for call in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][2]["private"] is True and hub.calls[0][2]["exist_ok"] is True
    assert hub.calls[1][2]["branch"] == "v1"
    assert hub.calls[2][2]["revision"] == "v1"
    assert plan.commit_url == "https://huggingface.co/someone/tiny-scratch-gpt/commit/0123"
    card = ModelCard(hub.uploaded["README.md"].decode())
    assert card.data.license == "apache-2.0" and "custom_code" in card.data.tags
    assert card.data.eval_results[0].metric_type == "perplexity"
    config = json.loads(hub.uploaded["config.json"])
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_scratch_gpt.ScratchGPTForCausalLM"
    assert hub.uploaded["modeling_scratch_gpt.py"] == (REPO_ROOT / "hf_scratch_gpt" / "modeling_scratch_gpt.py").read_bytes()


def test_push_public_to_main_creates_no_branch(folder_copy, monkeypatch):
    hub = FakeHub(monkeypatch)
    push_to_hub(folder_copy, "someone/tiny")
    assert [call[0] for call in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][2]["private"] is False and hub.calls[1][2]["revision"] is None


def test_dry_run_sends_nothing(folder_copy, monkeypatch):
    hub = FakeHub(monkeypatch)
    plan = push_to_hub(folder_copy, "someone/tiny", dry_run=True)
    assert plan.files == EXPECTED_UPLOAD and hub.calls == [] and plan.commit_url is None


@pytest.mark.parametrize(
    "breakage, error, message",
    [
        (lambda d: (d / "README.md").unlink(), FileNotFoundError, r"README\.md not found: write a model card"),
        (lambda d: (d / "tokenizer.json").unlink(), FileNotFoundError, "has no tokenizer"),
        (lambda d: (d / "modeling_scratch_gpt.py").unlink(), FileNotFoundError, "modeling_scratch_gpt.py"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 16), ValueError, r"model\.safetensors is not a readable"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({k: v for k, v in json.loads((d / "config.json").read_text()).items() if k != "auto_map"})
            ),
            ValueError,
            "no auto_map",
        ),
        (lambda d: (d / "README.md").write_text("---\nlicense: mit\n---\n# x\n"), ValueError, "lacks the tags"),
    ],
)
def test_push_refuses_incomplete_folders_before_any_network_call(folder_copy, monkeypatch, breakage, error, message):
    breakage(folder_copy)
    hub = FakeHub(monkeypatch)
    with pytest.raises(error, match=message):
        push_to_hub(folder_copy, "someone/tiny")
    assert hub.calls == []


def test_plan_upload_includes_shards_and_index(folder_copy):
    from hf_scratch_gpt.loading import load_model

    model = load_model(folder_copy)
    (folder_copy / "model.safetensors").unlink()
    model.save_pretrained(folder_copy, max_shard_size="100KB")
    files, _ = plan_upload(folder_copy)
    shards = [name for name in files if name.startswith("model-")]
    assert len(shards) >= 2 and "model.safetensors.index.json" in files and "model.safetensors" not in files


# ------------------------------------------------------------------------------------------------------ pipelines
def test_pipeline_after_import(saved_folder):
    folder, model, tokenizer = saved_folder
    generator = pipeline("text-generation", model=str(folder))
    assert type(generator.model) is hf_scratch_gpt.ScratchGPTForCausalLM
    (output,) = generator("Hello world", max_new_tokens=8, do_sample=False, return_tensors=True)
    (expected,) = generate_text(model, tokenizer, "Hello world", build_generation_config(model, max_new_tokens=8))
    assert output["generated_token_ids"] == expected.token_ids
    (text_output,) = generator("Hello world", max_new_tokens=8, do_sample=False)
    assert text_output["generated_text"] == expected.text


# ------------------------------------------------------------------------- loading without the package installed
REMOTE_CODE_SCRIPT = """
import importlib, importlib.util, json, os, sys

# Make hf_scratch_gpt unimportable: no path entry that holds the package (the repository root; the venv's
# site-packages stays, it only has the editable-install finder), and no editable-install finder.
sys.path[:] = [
    p for p in sys.path
    if p not in ("", ".") and os.path.abspath(p) != REPO_ROOT and not os.path.isdir(os.path.join(p, "hf_scratch_gpt"))
]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
importlib.invalidate_caches()
assert importlib.util.find_spec("hf_scratch_gpt") is None, importlib.util.find_spec("hf_scratch_gpt")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

model = AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)
generation_config = GenerationConfig.from_pretrained(FOLDER)
ids = tokenizer(PROMPT, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
generator = pipeline("text-generation", model=FOLDER, trust_remote_code=True)
generated = generator(PROMPT, max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
exec(compile(SNIPPET, "model-card-snippet", "exec"), {})  # prints its generated text
assert "hf_scratch_gpt" not in sys.modules
print(json.dumps({
    "model_class": type(model).__module__ + "." + type(model).__name__,
    "ids": ids.tolist(),
    "logits": logits.tolist(),
    "eos_token_id": generation_config.eos_token_id,
    "pipeline_ids": generated,
}))
"""


def test_trust_remote_code_without_the_package(saved_folder, tmp_path):
    source, model, tokenizer = saved_folder
    folder = tmp_path / "downloaded"  # as if from the Hub: only the pushed files, away from the repository
    folder.mkdir()
    for name in plan_upload(source)[0]:
        shutil.copy(source / name, folder / name)
    card = render_model_card("trained_from_scratch", **CARD_FIELDS, n_layer=2, n_head=4, n_embd=64, n_positions=128,
                             vocab_size=300, parameters="1")
    snippet = _snippet_loading(card, folder)
    prompt = "Hello world"
    script = (
        f"REPO_ROOT = {str(REPO_ROOT)!r}\nFOLDER = {str(folder)!r}\nPROMPT = {prompt!r}\nSNIPPET = {snippet!r}\n"
        + REMOTE_CODE_SCRIPT
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    # Not splitlines(): the random model's text holds control characters that it would also split on.
    snippet_output, report_line = completed.stdout.rstrip("\n").rsplit("\n", 1)
    report = json.loads(report_line)
    assert report["model_class"].startswith("transformers_modules.")  # the repo's code, not the package's
    assert report["model_class"].endswith("modeling_scratch_gpt.ScratchGPTForCausalLM")
    ids = torch.tensor(report["ids"])
    assert ids.tolist() == tokenizer("Hello world", return_tensors="pt").input_ids.tolist()
    # A fresh load: the fixture's model may have generated already (generate stores the weights for decoding, a
    # layout whose kernels round differently); the remote code must equal the package as loaded, to 1e-6.
    fresh = hf_scratch_gpt.load_model(source).eval()
    with torch.no_grad():
        expected_logits = fresh(ids).logits
    torch.testing.assert_close(torch.tensor(report["logits"]), expected_logits, rtol=1e-6, atol=1e-6)
    assert report["eos_token_id"] == model.generation_config.eos_token_id
    (expected,) = generate_text(model, tokenizer, prompt, build_generation_config(model, max_new_tokens=8))
    assert report["pipeline_ids"] == expected.token_ids
    (snippet_expected,) = generate_text(
        model, tokenizer, "Once upon a time", build_generation_config(model, max_new_tokens=40)
    )
    assert snippet_output == snippet_expected.text


def test_push_refuses_missing_code_files_message(folder_copy):
    (folder_copy / "configuration_scratch_gpt.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['configuration_scratch_gpt.py'\]"):
        plan_upload(folder_copy)


def test_saved_folder_holds_code_auto_map_tokenizer_and_generation_config(saved_folder):
    folder, _, _ = saved_folder
    names = {path.name for path in folder.iterdir()}
    assert set(EXPECTED_UPLOAD) <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_scratch_gpt.ScratchGPTConfig",
        "AutoModel": "modeling_scratch_gpt.ScratchGPTModel",
        "AutoModelForCausalLM": "modeling_scratch_gpt.ScratchGPTForCausalLM",
        "AutoModelForSequenceClassification": "modeling_scratch_gpt.ScratchGPTForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_scratch_gpt.ScratchGPTForTokenClassification",
    }
    generation_config = json.loads((folder / "generation_config.json").read_text())
    assert generation_config["eos_token_id"] == 0


def test_push_as_gpt2_uploads_the_plain_transformers_export(folder_copy, monkeypatch):
    """push --as gpt2: the files export_gpt2 writes (checked in transformers alone), no custom code, one commit."""
    hub = FakeHub(monkeypatch)
    plan = push_to_hub(folder_copy, "someone/tiny-gpt2", as_gpt2=True)
    assert sorted(hub.uploaded) == plan.files and "model.safetensors" in plan.files
    assert not [name for name in plan.files if name.endswith(".py")], plan.files
    config = json.loads(hub.uploaded["config.json"])
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert [call[0] for call in hub.calls] == ["create_repo", "create_commit"]
    repo = folder_copy.parent / "uploaded"
    repo.mkdir()
    for name, content in hub.uploaded.items():
        (repo / name).write_bytes(content)
    from transformers import GPT2LMHeadModel

    from hf_scratch_gpt import load_model, to_hf_gpt2

    expected = to_hf_gpt2(load_model(folder_copy)).state_dict()
    for name, tensor in GPT2LMHeadModel.from_pretrained(repo).state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert push_to_hub(folder_copy, "someone/tiny-gpt2", as_gpt2=True, dry_run=True).files == plan.files
