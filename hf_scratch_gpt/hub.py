"""Sharing on the Hugging Face Hub: model cards rendered from `model_cards/`, and pushing a saved folder.

A pushed folder holds everything a user without this package needs: weights (safetensors), `config.json` with
`auto_map`, the two code files, the tokenizer, `generation_config.json`, and a card whose metadata carries the
license, tags, datasets, base model and perplexity (as `model-index`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .loading import (
    CONFIG_NAME,
    TOKENIZER_FILE_SETS,
    TOKENIZER_FILES,
    check_model_folder,
    check_tokenizer_files,
    check_weight_files,
    existing_folder,
    file_in_folder,
    folder_file,
    read_json_object,
    read_tensor_shapes,
    read_text_file,
)

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


def check_repo_id(repo_id: str, what: str = "repo_id") -> str:
    """`repo_id` when huggingface_hub's own validator accepts it ("name" or "owner/name", letters, digits, '-', '_',
    '.', no '--' or '..', at most 96 characters); `ValueError` naming it otherwise. Hub ids written into a card or
    pushed to must be ids the Hub can have: a card's links and usage snippet would otherwise point nowhere."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repo id: {error}") from error
    return repo_id


def check_perplexity(value: Any, source: str = "perplexity") -> float:
    """`value` as a float when it can be a perplexity: a finite number >= 1 (exp of a mean negative log-likelihood,
    which is >= 0). `ValueError` naming `source` and the value otherwise: nan, inf or 0.5 in a card is a wrong claim.
    `hf-scratch-gpt card --perplexity` applies the same rule when it parses the flag."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{source} {value!r} is not a perplexity: expected a finite number >= 1")
    return float(value)


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
    check_repo_id(repo_id)
    if base_model is not None:
        check_repo_id(base_model, "base_model")
    for dataset in datasets or []:
        check_repo_id(dataset, "dataset")
    if perplexity is not None:
        perplexity = check_perplexity(perplexity)
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
                metric_value=perplexity,
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
    metrics = read_json_object(model_dir, METRICS_FILE)
    if metrics is None:
        return {}
    arguments = _metrics_value(metrics, "arguments", "a JSON object", path) or {}
    source = _metrics_value(metrics, "dataset", "a string", path)
    source = source or _metrics_value(arguments, "dataset", "a string", path, "arguments.")
    if not source:
        return {}
    if source in LOCAL_DATASETS:
        fields: dict[str, Any] = {"training_data": f"Trained on {LOCAL_DATASETS[source]}.", "eval_dataset": source}
    elif Path(source).suffix.lower() in LOCAL_FILE_SUFFIXES or source.startswith((".", "/", "~")):
        name = Path(source).name
        fields = {"training_data": f"Trained on the local file `{name}` (not published).", "eval_dataset": name}
    else:
        fields = {"datasets": [source], "eval_dataset": source}
    demo = _metrics_value(metrics, "demo", "a JSON object", path) or {}
    per_document = _metrics_value(demo, "validation_per_document", "a JSON object", path, "demo.")
    if per_document:
        where = "demo.validation_per_document."
        perplexity = _metrics_value(per_document, "perplexity", "a number", path, where)
        protocol = _metrics_value(per_document, "protocol", "a string", path, where)
        perplexity = check_perplexity(perplexity, f"{path}: {where}perplexity")
    elif "eval_perplexity" in metrics:
        perplexity = check_perplexity(metrics["eval_perplexity"], f"{path}: eval_perplexity")
        protocol = _metrics_value(metrics, "eval_protocol", "a string", path)
    else:
        return fields
    fields.update(
        perplexity=perplexity,
        eval_dataset_name=f"{fields['eval_dataset']} (held-out documents)",
        eval_split="validation",
        eval_protocol=f"held-out documents of the training source; {protocol}" if protocol else None,
    )
    return fields


# The JSON kinds metrics.json fields must have, as the Python types json.loads gives them.
JSON_KINDS = {"a JSON object": dict, "a string": str, "a number": (int, float)}


def _metrics_value(mapping: dict, key: str, kind: str, path: Path, where: str = ""):
    """`mapping[key]` (None when absent or null); `ValueError` naming the file and key unless it is `kind` (a key of
    `JSON_KINDS`): a metrics.json of another shape would otherwise end in an AttributeError or a wrong card."""
    value = mapping.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, JSON_KINDS[kind])):
        raise ValueError(f"{path}: {where}{key} must be {kind}, got {value!r}")
    return value


def write_model_card(model_dir: str | os.PathLike, kind: str, **card_fields: Any) -> Path:
    """Render a card for the saved model in `model_dir` (sizes read from it) and write it as `README.md`.

    Fields left out (or None) default to what the folder's `metrics.json` records (`card_fields_from_metrics`):
    the training data, and the measured perplexity with its data and protocol. Given fields override them; giving
    `datasets` replaces the recorded training data, giving `perplexity` the whole recorded measurement.

    The card is written to a temporary file in the folder, then moved over `README.md` (`os.replace`): an
    interrupted write leaves the old card, and a link at `README.md` is replaced, never written through. A
    `README.md` that is already a link is refused (`ValueError` naming where it points), so that replacing it
    stays the user's decision: remove the link, and run again.
    """
    model_dir = existing_folder(model_dir)
    path = file_in_folder(model_dir, CARD_NAME)
    if path.is_symlink():
        raise ValueError(
            f"{path} is a link to {os.readlink(path)}; the model card is not written through a link (it could "
            f"overwrite a file elsewhere): remove the link (or replace it with a copy) and write the card again"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; the model card is written as a file of that name")
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
    _replace_file(path, str(card))
    logger.info("wrote model card %s", path)
    return path


def _replace_file(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to a new file next to `path`, then move it over `path`: a link at `path` is replaced, not
    followed, and a crash leaves the old file."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as error:  # e.g. a command-line value that was not UTF-8 (surrogate-escaped)
        raise ValueError(f"the text for {path} is not valid Unicode ({error}); give UTF-8 text") from error
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # O_EXCL: never opens an existing file (or a link someone placed there); mode 0o666 is narrowed by the umask.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
        text = read_text_file(path)
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
    the tokenizer files, the card. Left out: anything else (pickles, optimizer states, checkpoints, logs). A file
    that would be uploaded but is a link out of the folder is refused, by name (`folder_file`): it is neither sent
    nor silently left out.
    """
    model_dir = existing_folder(model_dir)
    check_model_folder(model_dir)  # config + weights readable, inside the folder, names and shapes match
    weights = [path.name for path in check_weight_files(model_dir)]
    candidates = [*REQUIRED_FILES, *OPTIONAL_FILES, *TOKENIZER_FILES, "model.safetensors.index.json"]
    present = {name for name in candidates if folder_file(model_dir, name) is not None}
    config = read_json_object(model_dir, CONFIG_NAME)
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or "AutoModelForCausalLM" not in auto_map:
        raise ValueError(
            f"{model_dir / CONFIG_NAME} has no auto_map for AutoModelForCausalLM: the model would not load with "
            f"trust_remote_code where hf_scratch_gpt is not installed; re-save it with save_pretrained after "
            f"`import hf_scratch_gpt`"
        )
    missing = [name for name in REQUIRED_FILES if name not in present]
    if CARD_NAME in missing:
        raise FileNotFoundError(
            f"{model_dir / CARD_NAME} not found: write a model card first (hf_scratch_gpt.hub.write_model_card or "
            f"`hf-scratch-gpt card {model_dir} ...`)"
        )
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}; save the model with save_pretrained after `import hf_scratch_gpt`")
    tokenizer_files = check_tokenizer_files(model_dir)  # each one readable and well formed
    if not any(all(name in tokenizer_files for name in names) for names in TOKENIZER_FILE_SETS):
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer (expected tokenizer.json, or vocab.json + merges.txt): save it with "
            f"tokenizer.save_pretrained({str(model_dir)!r})"
        )
    validate_model_card(model_dir / CARD_NAME)
    files = sorted(present | set(weights))
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
    commit_message: str | None = None,
    dry_run: bool = False,
    as_gpt2: bool = False,
) -> PushPlan:
    """Upload a saved model folder to the Hub repo `repo_id` in one commit (creating the repo, and the branch
    `revision` when given). With `dry_run=True` nothing is sent: the returned plan lists what would be uploaded.

    `as_gpt2=True` uploads the model as a plain transformers `GPT2LMHeadModel` instead (no custom code, no
    `trust_remote_code`): the folder `hf_scratch_gpt.export.export_gpt2` writes, checked in transformers alone,
    into a temporary folder first (`plan.model_dir` is then that export, gone once the push returns).
    """
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="hf-scratch-gpt-push-") as scratch:
        if as_gpt2:
            from .export import export_gpt2

            source = Path(scratch) / "gpt2"
            files, skipped = sorted(export_gpt2(model_dir, source).files), []
        else:
            source = Path(model_dir)
            files, skipped = plan_upload(source)
        plan = PushPlan(
            repo_id=repo_id, private=private, revision=revision, model_dir=source, files=files, skipped=skipped
        )
        if skipped:
            logger.info("not uploading %s (not part of a model repo)", skipped)
        if dry_run:
            return plan

        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, repo_type="model", branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source / name)) for name in files]
        default_message = "Upload as a plain GPT-2 (weights, tokenizer, card)" if as_gpt2 else (
            "Upload ScratchGPT model (weights, tokenizer, code, card)"
        )
        commit = api.create_commit(
            repo_id, operations=operations, commit_message=commit_message or default_message, repo_type="model",
            revision=revision,
        )
    plan.commit_url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("pushed %d files to %s (%s)", len(files), repo_id, plan.commit_url)
    return plan


__all__ = [
    "CARD_TEMPLATES",
    "MODEL_CARDS_DIR",
    "PushPlan",
    "card_fields_from_metrics",
    "check_perplexity",
    "check_repo_id",
    "model_facts",
    "plan_upload",
    "push_to_hub",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]
