"""Standard benchmarks through EleutherAI's lm-evaluation-harness (`lm-eval`): `hf-scratch-gpt evaluate --tasks`.

lm-eval's `HFLM` wraps the model and tokenizer loaded here (not a model name it would load itself), so the
folder's checks, safetensors-only loading and `--dtype` apply as everywhere else. What HFLM takes from them:
`config.model_type` (`scratch_gpt` is in transformers' causal-LM name table, which this package's `__init__` fills;
the backend is named "causal" anyway), `config.n_positions` (its maximum length), `model.device`, `tie_weights()`,
`model(input_ids).logits`, and the tokenizer's eos token, used as the prefix of every request (GPT-2 has no bos
token of its own) and, when there is no pad token, as padding (HFLM sets it).

Tasks are lm-eval's (hellaswag, arc_easy, lambada_openai, ...) or YAML files in `include_path` folders. Most of
lm-eval's tasks read their dataset from the Hugging Face Hub: offline, such a task is refused by name in one line.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hf-scratch-gpt[lm-eval]'"
# lm-eval's result keys read "metric,filter"; tasks without a filter use this one.
NO_FILTER = "none"


def _lm_eval():
    """The lm_eval package, or an ImportError that says how to install it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401  (HFLM)
        import lm_eval.tasks  # noqa: F401  (TaskManager)
    except ImportError as error:
        raise ImportError(f"evaluating on lm-eval tasks needs the lm-eval package ({error}): {INSTALL_HINT}") from error
    return lm_eval


def _include_paths(include_path: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    if include_path is None:
        return []
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"include path {str(path)!r} is not a folder (expected a folder of task YAML files)")
    return [str(path) for path in paths]


def task_manager(include_path=None, include_default_tasks: bool = True):
    """lm-eval's `TaskManager` over its own tasks (indexing them takes seconds) and the YAML tasks in `include_path`
    (a folder or a list of folders; their tasks take precedence over lm-eval's of the same name)."""
    lm_eval = _lm_eval()
    paths = _include_paths(include_path)
    return lm_eval.tasks.TaskManager(include_path=paths or None, include_defaults=include_default_tasks)


def check_task_names(manager, names: Sequence[str]) -> None:
    """Refuse, in one message, a name that is neither a task, group or tag the manager knows nor a YAML file,
    listing the known names closest to it."""
    if not names:
        raise ValueError("no task given: pass task names, e.g. hellaswag,arc_easy")
    known = manager.all_tasks
    for name in names:
        if name in known or (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
            continue
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        suggestion = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(
            f"unknown lm-eval task {name!r}{suggestion} (lm-eval knows {len(known)} tasks, groups and tags; "
            f"`lm-eval ls tasks` lists them; --include-path DIR adds the YAML tasks in DIR)"
        )


def load_tasks(manager, names: Sequence[str]) -> list:
    """The Task and Group objects for `names`, each built (its dataset loaded) on its own, so that a dataset that
    cannot be had is reported with the task that needs it. `ConnectionError` for a Hub dataset offline."""
    from datasets.exceptions import DatasetsError

    check_task_names(manager, names)
    objects = []
    for name in names:
        try:
            loaded = manager.load([name])
        except ConnectionError as error:  # datasets: "Couldn't reach 'allenai/ai2_arc' on the Hub (...)"
            raise ConnectionError(
                f"lm-eval task {name!r} needs its dataset from the Hugging Face Hub, which cannot be reached ({error}); "
                f"run once with network access (the dataset is then cached), or evaluate a task whose data is local: "
                f"--include-path DIR with a task YAML whose dataset_path/dataset_kwargs name local files"
            ) from error
        except (OSError, DatasetsError) as error:
            raise type(error)(f"lm-eval task {name!r}: its dataset could not be loaded: {error}") from error
        objects.extend(_top_level(loaded))
    return objects


def _top_level(loaded: dict) -> list:
    """What `TaskManager.load` built for one name, as the objects to evaluate: the groups that are no other loaded
    group's subgroup, and the tasks in none of the groups (a task, or a tag's tasks)."""
    groups, tasks = loaded["groups"], loaded["tasks"]
    subgroups = {sub.name for group in groups.values() for sub in group.get_all_groups()}
    grouped = {task.task_name for group in groups.values() for task in group.get_all_tasks()}
    return [group for name, group in groups.items() if name not in subgroups] + [
        task for name, task in tasks.items() if name not in grouped
    ]


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 1,
    include_path=None,
    log_samples: bool = False,
    bootstrap_iters: int = 100_000,
    manager=None,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` of an in-memory causal LM (ours, or any transformers one) on `tasks` (names, or
    what `load_tasks` built); returns lm-eval's own result dict (`results`, `groups`, `n-shot`, `n-samples`, and
    `samples` with `log_samples`).

    `limit`: at most this many documents per task (a float below 1: that share). `manager`: a `task_manager(...)`
    to reuse (it indexes lm-eval's tasks, which takes seconds); otherwise one is built over `include_path`.
    """
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and not limit > 0:
        raise ValueError(f"limit must be > 0 (documents per task, or a share below 1), got {limit}")
    manager = manager if manager is not None else task_manager(include_path)
    names_only = all(isinstance(task, str) for task in tasks)
    task_objects = load_tasks(manager, list(tasks)) if names_only else list(tasks)
    # HFLM warns, for any model passed as an object, that "many other model arguments may be ignored" and not to
    # launch it with accelerate: true of its other uses, not of this one (one process, no other model arguments).
    hflm_logger = logging.getLogger(HFLM.__module__)
    level = hflm_logger.level
    hflm_logger.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    finally:
        hflm_logger.setLevel(level)
    return lm_eval.simple_evaluate(
        model=lm, tasks=task_objects, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
        log_samples=log_samples, bootstrap_iters=bootstrap_iters,
    )  # fmt: skip


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The part of lm-eval's result a user reads, JSON-safe: per task (and group) each metric with its stderr,
    the number of documents and shots. A metric key keeps lm-eval's filter only when it is not "none"
    ("exact_match,strict-match"); a value that is not a finite number (a stderr of one document) is None."""

    def metrics(entry: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in entry.items():
            if key in ("alias", "name", "sample_len") or "," not in key:
                continue
            metric, _, filter_name = key.partition(",")
            out[metric if filter_name == NO_FILTER else key] = _json_number(value)
        return out

    summary: dict[str, Any] = {"tasks": {}}
    for name, entry in result["results"].items():
        task = metrics(entry)
        if name in result.get("n-samples", {}):
            task["documents"] = result["n-samples"][name]["effective"]
        if name in result.get("n-shot", {}):
            task["num_fewshot"] = result["n-shot"][name]
        summary["tasks"][name] = task
    if result.get("groups"):
        summary["groups"] = {name: metrics(entry) for name, entry in result["groups"].items()}
    return summary


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_tasks(
    model_path: str | os.PathLike,
    tasks: Sequence[str],
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 1,
    include_path=None,
    device: str | None = None,
    dtype="auto",
) -> dict[str, Any]:
    """`hf-scratch-gpt evaluate MODEL --tasks ...`: lm-eval's metrics of a saved model folder (`summarize`d).

    The task names are checked, and their datasets loaded, before the model is: a misspelt task or a Hub dataset
    that cannot be reached is reported at once. `dtype` as in `evaluation.evaluate_model`.
    """
    import torch

    from .loading import load_model, load_tokenizer

    manager = task_manager(include_path)
    task_objects = load_tasks(manager, list(tasks))
    tokenizer = load_tokenizer(model_path)
    on_cpu = device is None or torch.device(device).type == "cpu"
    model = load_model(model_path, dtype=None if dtype == "auto" and not on_cpu else dtype)
    if device:
        model.to(device)
    result = run_lm_eval(
        model, tokenizer, task_objects, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, manager=manager
    )
    summary = summarize(result)
    summary["model"] = str(model_path)
    summary["dtype"] = str(model.dtype).removeprefix("torch.")
    summary["limit"] = limit
    return summary


__all__ = [
    "INSTALL_HINT",
    "check_task_names",
    "evaluate_tasks",
    "load_tasks",
    "run_lm_eval",
    "summarize",
    "task_manager",
]
