"""Sharing on the Hugging Face Hub: model cards rendered from `model_cards/`, and pushing a saved folder.

A pushed folder holds everything a user without this package needs: weights (safetensors), `config.json` with
`auto_map`, the two code files, the tokenizer, `generation_config.json`, and a card whose metadata carries the
license, tags, datasets, base model and perplexity (as `model-index`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .loading import CONFIG_NAME, TOKENIZER_FILE_SETS, check_model_folder, check_weight_files, read_tensor_shapes

logger = logging.getLogger(__name__)

# Card templates: `model_cards/` at the repository root, reached through the package's `model_cards` link so that
# a built wheel (which copies the linked files in as package data) finds them at the same place.
MODEL_CARDS_DIR = Path(__file__).parent / "model_cards"
CARD_TEMPLATES: dict[str, str] = {
    "openai_checkpoint": "openai_checkpoint.md",
    "trained_from_scratch": "trained_from_scratch.md",
    "fine_tuned": "fine_tuned.md",
}
# Kinds of card whose model derives from another one: `base_model` is required for them.
KINDS_WITH_BASE_MODEL = ("fine_tuned",)
REQUIRED_TAGS = ("text-generation", "gpt2", "custom_code")
CARD_NAME = "README.md"
# Written by `train`, the Accelerate loop and `demo` into the model folder; `write_model_card` reads its defaults there.
METRICS_FILE = "metrics.json"
# Training sources that are not Hub datasets: described in the card's text instead of `datasets` metadata (which
# the Hub links to huggingface.co/datasets/<id>).
LOCAL_DATASETS = {"pydoc": "the Python documentation embedded in CPython (`pydoc_data.topics`)"}
LOCAL_FILE_SUFFIXES = (".txt", ".json", ".jsonl")
# The fields that describe one measurement; a caller giving `perplexity` replaces all of them.
MEASUREMENT_FIELDS = ("perplexity", "eval_dataset", "eval_dataset_name", "eval_split", "eval_protocol")

# What a pushed folder holds besides weights: code, config, tokenizer, card.
# The model's code as save_pretrained copies it next to the weights (the modeling file and its relative imports).
CODE_FILES = (
    "configuration_scratch_gpt.py", "modeling_scratch_gpt.py", "checks_scratch_gpt.py", "decoding_scratch_gpt.py",
    "fused_loss_scratch_gpt.py",
)
REQUIRED_FILES = (CONFIG_NAME, *CODE_FILES, CARD_NAME)
OPTIONAL_FILES = ("generation_config.json",)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja",
)


def render_model_card(
    kind: str,
    *,
    repo_id: str,
    license: str,
    datasets: list[str] | None = None,
    base_model: str | None = None,
    perplexity: float | None = None,
    eval_dataset: str | None = None,
    eval_dataset_name: str | None = None,
    eval_split: str | None = None,
    language: str | list[str] | None = None,
    tags: list[str] | None = None,
    templates_dir: str | os.PathLike | None = None,
    **template_fields: Any,
) -> ModelCard:
    """Render the `kind` template (a key of `CARD_TEMPLATES`) into a `ModelCard`.

    Metadata: `license`, tags (`text-generation`, `gpt2`, `custom_code` + `tags`), `datasets`, `base_model`
    (required for fine-tunes), and — when `perplexity` is given — a `model-index` entry for `eval_dataset`.
    `template_fields` fill the template's own placeholders (sizes, training details, ...); `repo_id` is also
    available there (the usage snippet loads it).
    """
    if kind not in CARD_TEMPLATES:
        raise ValueError(f"unknown model card kind {kind!r}; expected one of {sorted(CARD_TEMPLATES)}")
    if kind in KINDS_WITH_BASE_MODEL and not base_model:
        raise ValueError(f"a {kind!r} model card needs base_model (the Hub id of the model it was tuned from)")
    if not license:
        raise ValueError("license is required (e.g. 'apache-2.0', 'mit'; see hf.co/docs/hub/repositories-licenses)")
    if perplexity is not None and not eval_dataset:
        raise ValueError("perplexity needs eval_dataset: the Hub id (or name) of the data it was measured on")
    template = Path(templates_dir or MODEL_CARDS_DIR) / CARD_TEMPLATES[kind]
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} not found (pass templates_dir= to use another folder)")

    eval_results = None
    if perplexity is not None:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=eval_dataset,
                dataset_name=eval_dataset_name or eval_dataset,
                dataset_split=eval_split,
                metric_type="perplexity",
                metric_name="Perplexity",
                metric_value=float(perplexity),
            )
        ]
    model_name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        license=license,
        language=language,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[*REQUIRED_TAGS, *(tags or [])],
        datasets=list(datasets) if datasets else None,
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results,
    )
    fields = {
        "model_name": model_name,
        "repo_id": repo_id,
        "datasets": list(datasets or []),
        "base_model": base_model,
        "perplexity": perplexity,
        "eval_dataset": eval_dataset,
        "eval_split": eval_split,
        "description": None,
        "training_details": None,
        "training_data": None,  # markdown for a source that is not a Hub dataset
        "eval_protocol": None,  # how the perplexity was measured, in words
        **template_fields,
    }
    return ModelCard.from_template(card_data, template_path=str(template), **fields)


def model_facts(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Sizes of a saved model for its card, read from (and checked against) the folder's config and weights."""
    config = check_model_folder(model_dir)
    shapes: dict[str, tuple[int, ...]] = {}
    for weight_file in check_weight_files(model_dir):
        shapes.update(read_tensor_shapes(weight_file))
    parameters = sum(_numel(shape) for shape in shapes.values())  # the tied head is stored once
    return {
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_positions": config.n_positions,
        "vocab_size": config.vocab_size,
        "parameters": f"{parameters:,}",
    }


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def card_fields_from_metrics(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Card fields recorded in the folder's `metrics.json`: the training data and the measured validation
    perplexity with the data and protocol it was measured with. `{}` when the folder has no metrics.json.

    A `demo` folder holds two perplexities; the card takes the per-document one (what `hf-scratch-gpt evaluate`
    reproduces), a `train` folder its `eval_perplexity`.
    """
    path = Path(model_dir) / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    source = metrics.get("dataset") or metrics.get("arguments", {}).get("dataset")
    if not source:
        return {}
    if source in LOCAL_DATASETS:
        fields: dict[str, Any] = {"training_data": f"Trained on {LOCAL_DATASETS[source]}.", "eval_dataset": source}
    elif Path(source).suffix.lower() in LOCAL_FILE_SUFFIXES or source.startswith((".", "/", "~")):
        name = Path(source).name
        fields = {"training_data": f"Trained on the local file `{name}` (not published).", "eval_dataset": name}
    else:
        fields = {"datasets": [source], "eval_dataset": source}
    per_document = metrics.get("demo", {}).get("validation_per_document")
    if per_document:
        perplexity, protocol = per_document["perplexity"], per_document.get("protocol")
    elif "eval_perplexity" in metrics:
        perplexity, protocol = metrics["eval_perplexity"], metrics.get("eval_protocol")
    else:
        return fields
    fields.update(
        perplexity=perplexity,
        eval_dataset_name=f"{fields['eval_dataset']} (held-out documents)",
        eval_split="validation",
        eval_protocol=f"held-out documents of the training source; {protocol}" if protocol else None,
    )
    return fields


def write_model_card(model_dir: str | os.PathLike, kind: str, **card_fields: Any) -> Path:
    """Render a card for the saved model in `model_dir` (sizes read from it) and write it as `README.md`.

    Fields left out (or None) default to what the folder's `metrics.json` records (`card_fields_from_metrics`):
    the training data, and the measured perplexity with its data and protocol. Given fields override them; giving
    `datasets` replaces the recorded training data, giving `perplexity` the whole recorded measurement.
    """
    given = {key: value for key, value in card_fields.items() if value is not None}
    defaults = card_fields_from_metrics(model_dir)
    if "datasets" in given:
        defaults.pop("training_data", None)
    if "perplexity" in given:
        defaults = {key: value for key, value in defaults.items() if key not in MEASUREMENT_FIELDS}
    if defaults:
        logger.info("model card fields from %s: %s", Path(model_dir) / METRICS_FILE, sorted(defaults))
    card = render_model_card(kind, **{**model_facts(model_dir), **defaults, **given})
    validate_model_card(card, kind=kind)
    path = Path(model_dir) / CARD_NAME
    card.save(path)
    logger.info("wrote model card %s", path)
    return path


def validate_model_card(card: ModelCard | str | os.PathLike, kind: str | None = None) -> ModelCardData:
    """Offline check of a card's metadata; returns the parsed `ModelCardData`.

    `ModelCard.validate` asks the Hub's API. Offline we re-parse the card's text the way huggingface_hub does when
    it loads a card (`ModelCard(text)` → YAML → `ModelCardData`, whose `model-index` goes through
    `model_index_to_eval_results` and `_validate_eval_results`, raising on a malformed index), then check what this
    package promises: a license, the required tags, a base model for fine-tunes.
    """
    if isinstance(card, ModelCard):
        text = str(card)
    else:
        path = Path(card)
        if not path.is_file():
            raise FileNotFoundError(f"model card {path} not found")
        text = path.read_text(encoding="utf-8")
    try:
        data = ModelCard(text).data
    except ValueError as error:
        raise ValueError(f"model card metadata does not parse: {error}") from error
    if not text.startswith("---"):
        raise ValueError("model card has no YAML metadata block (it must start with '---')")
    if not data.license:
        raise ValueError("model card metadata has no license")
    missing_tags = [tag for tag in REQUIRED_TAGS if tag not in (data.tags or [])]
    if missing_tags:
        raise ValueError(f"model card metadata lacks the tags {missing_tags}")
    if kind in KINDS_WITH_BASE_MODEL and not data.base_model:
        raise ValueError(f"a {kind!r} model card needs base_model in its metadata")
    return data


@dataclass
class PushPlan:
    repo_id: str
    private: bool
    revision: str | None
    model_dir: Path
    files: list[str]  # paths relative to model_dir, uploaded under the same names
    skipped: list[str] = field(default_factory=list)  # present in the folder but not uploaded
    commit_url: str | None = None  # set after a real push


def plan_upload(model_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(files to upload, files left out) of a saved folder, after checking it is complete and loadable.

    Uploaded: config, generation config, safetensors weights (with their index when sharded), the two code files,
    the tokenizer files, the card. Left out: anything else (pickles, optimizer states, checkpoints, logs).
    """
    model_dir = Path(model_dir)
    check_model_folder(model_dir)  # config + weights readable, names and shapes match
    config = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    if "AutoModelForCausalLM" not in config.get("auto_map", {}):
        raise ValueError(
            f"{model_dir / CONFIG_NAME} has no auto_map for AutoModelForCausalLM: the model would not load with "
            f"trust_remote_code where hf_scratch_gpt is not installed; re-save it with save_pretrained after "
            f"`import hf_scratch_gpt`"
        )
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if CARD_NAME in missing:
        raise FileNotFoundError(
            f"{model_dir / CARD_NAME} not found: write a model card first (hf_scratch_gpt.hub.write_model_card or "
            f"`hf-scratch-gpt card {model_dir} ...`)"
        )
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}; save the model with save_pretrained after `import hf_scratch_gpt`")
    if not any(all((model_dir / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer (expected tokenizer.json, or vocab.json + merges.txt): save it with "
            f"tokenizer.save_pretrained({str(model_dir)!r})"
        )
    validate_model_card(model_dir / CARD_NAME)

    weights = [path.name for path in check_weight_files(model_dir)]
    if (model_dir / "model.safetensors.index.json").is_file():
        weights.append("model.safetensors.index.json")
    candidates = [*REQUIRED_FILES, *OPTIONAL_FILES, *TOKENIZER_FILES, *weights]
    files = sorted({name for name in candidates if (model_dir / name).is_file()})
    skipped = sorted(
        str(path.relative_to(model_dir)) for path in model_dir.rglob("*") if path.is_file()
        and str(path.relative_to(model_dir)) not in files
    )
    return files, skipped


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload ScratchGPT model (weights, tokenizer, code, card)",
    dry_run: bool = False,
) -> PushPlan:
    """Upload a saved model folder to the Hub repo `repo_id` in one commit (creating the repo, and the branch
    `revision` when given). With `dry_run=True` nothing is sent: the returned plan lists what would be uploaded."""
    model_dir = Path(model_dir)
    files, skipped = plan_upload(model_dir)
    plan = PushPlan(repo_id=repo_id, private=private, revision=revision, model_dir=model_dir, files=files, skipped=skipped)
    if skipped:
        logger.info("not uploading %s (not part of a model repo)", skipped)
    if dry_run:
        return plan

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, repo_type="model", branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model_dir / name)) for name in files]
    commit = api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, repo_type="model", revision=revision
    )
    plan.commit_url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("pushed %d files to %s (%s)", len(files), repo_id, plan.commit_url)
    return plan


__all__ = [
    "CARD_TEMPLATES",
    "MODEL_CARDS_DIR",
    "PushPlan",
    "card_fields_from_metrics",
    "model_facts",
    "plan_upload",
    "push_to_hub",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]
