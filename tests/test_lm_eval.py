"""lm-eval tasks (`evaluate --tasks`, `hf_scratch_gpt.lm_eval_tasks`): local YAML tasks over local jsonl files, run
offline through lm-eval's HFLM. The log-likelihoods lm-eval computes for ScratchGPT equal those it computes for
transformers' GPT2LMHeadModel with the same weights; its bits per byte equals our own evaluation's."""

import json
import math
import sys

import pytest
import torch

pytest.importorskip("lm_eval")

from helpers import assert_close_float32  # noqa: E402
from saved_models import save_tiny_model_folder, tiny_model_for, train_tiny_tokenizer  # noqa: E402
from test_cli import assert_one_line_error, run_cli  # noqa: E402

import hf_scratch_gpt  # noqa: E402
from hf_scratch_gpt import lm_eval_tasks  # noqa: E402
from hf_scratch_gpt.evaluation import evaluate_texts  # noqa: E402

# lm-eval puts its target delimiter, a space, between question and choice.
QUESTIONS = [
    {"question": "The quick brown fox", "choices": ["jumps", "sleeps", "runs"], "answer": 0},
    {"question": "Hello", "choices": ["world", "there"], "answer": 1},
    {"question": "A small model writes", "choices": ["small words", "big words", "nothing"], "answer": 0},
    {"question": "Tokens, logits,", "choices": ["softmax", "lazy dog"], "answer": 0},
]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello there! A small model writes small words."]

MULTIPLE_CHOICE_TASK = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
ROLLING_TASK = """\
task: tiny_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A folder of two lm-eval tasks whose data are local jsonl files (no Hub)."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    questions = _jsonl(folder / "questions.jsonl", QUESTIONS)
    texts = _jsonl(folder / "texts.jsonl", [{"text": text} for text in TEXTS])
    (folder / "tiny_choice.yaml").write_text(MULTIPLE_CHOICE_TASK.format(data=questions), encoding="utf-8")
    (folder / "tiny_text.yaml").write_text(ROLLING_TASK.format(data=texts), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def local_manager(task_dir):
    """A TaskManager over the local tasks only (indexing lm-eval's ~14,000 own tasks takes seconds)."""
    return lm_eval_tasks.task_manager(task_dir, include_default_tasks=False)


def _loglikelihoods(result, task):
    """(log-likelihoods, is-greedy flags) of every request of `task`, in document order."""
    samples = sorted(result["samples"][task], key=lambda sample: sample["doc_id"])
    values, greedy = [], []
    for sample in samples:
        for response in sample["resps"]:
            loglikelihood = response[0]
            values.append(loglikelihood[0] if isinstance(loglikelihood, tuple) else loglikelihood)
            greedy.append(loglikelihood[1] if isinstance(loglikelihood, tuple) else None)
    return torch.tensor(values, dtype=torch.float64), greedy


def test_lm_eval_scores_scratch_gpt_as_it_scores_gpt2(local_manager):
    tokenizer = train_tiny_tokenizer()
    ours = tiny_model_for(tokenizer)
    gpt2 = hf_scratch_gpt.to_hf_gpt2(ours).eval()
    tasks = ["tiny_choice", "tiny_text"]
    longest = max(len(tokenizer(text).input_ids) + 1 for text in TEXTS)
    options = dict(batch_size=2, log_samples=True, bootstrap_iters=0, manager=local_manager)
    mine = lm_eval_tasks.run_lm_eval(ours, tokenizer, tasks, **options)
    theirs = lm_eval_tasks.run_lm_eval(gpt2, tokenizer, tasks, **options)
    for task in tasks:
        (actual, actual_greedy), (expected, expected_greedy) = _loglikelihoods(mine, task), _loglikelihoods(theirs, task)
        assert len(actual) == {"tiny_choice": sum(len(q["choices"]) for q in QUESTIONS), "tiny_text": 2}[task]
        # Each log-likelihood is a float32 sum over the request's scored tokens (at most a whole text's).
        assert_close_float32(actual, expected, reduction=longest, name=f"{task} log-likelihoods")
        assert actual_greedy == expected_greedy, task
    assert mine["results"]["tiny_choice"]["acc,none"] == theirs["results"]["tiny_choice"]["acc,none"]
    assert mine["n-samples"]["tiny_choice"]["effective"] == len(QUESTIONS)


def test_lm_eval_bits_per_byte_equals_our_evaluation(local_manager):
    """lm-eval's rolling log-likelihood prefixes each text with the eos token, as our evaluation does with bos (=
    eos here), and both divide the summed NLL by the UTF-8 bytes: on texts within one window the numbers agree."""
    tokenizer = train_tiny_tokenizer()
    model = tiny_model_for(tokenizer)
    result = lm_eval_tasks.run_lm_eval(model, tokenizer, ["tiny_text"], bootstrap_iters=0, manager=local_manager)
    ours = evaluate_texts(model, tokenizer, TEXTS)
    theirs = result["results"]["tiny_text"]["bits_per_byte,none"]
    assert math.isclose(theirs, ours["bits_per_byte"], rel_tol=1e-6), (theirs, ours)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-model") / "model"
    save_tiny_model_folder(folder)
    return folder


def test_cli_runs_a_local_task_and_writes_the_output(model_folder, task_dir, local_manager, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    # The CLI always indexes lm-eval's own tasks too; here only the local ones (seconds faster, same code path).
    monkeypatch.setattr(lm_eval_tasks, "task_manager", lambda include_path=None: local_manager)
    output = tmp_path / "result.json"
    argv = ["evaluate", model_folder, "--tasks", "tiny_choice", "--include-path", task_dir, "--batch-size", "3",
            "--limit", "3", "--output", output]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert json.loads(output.read_text(encoding="utf-8")) == printed
    tokenizer = train_tiny_tokenizer()
    expected = lm_eval_tasks.run_lm_eval(
        hf_scratch_gpt.load_model(model_folder), tokenizer, ["tiny_choice"], limit=3, bootstrap_iters=0,
        manager=local_manager,
    )["results"]["tiny_choice"]["acc,none"]
    task = printed["tasks"]["tiny_choice"]
    assert task["acc"] == expected and task["documents"] == 3 and task["num_fewshot"] == 0, printed
    assert set(task) == {"acc", "acc_stderr", "documents", "num_fewshot"}, task
    # The same output file again is refused: nothing a user has is replaced.
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--output", "exists")


def test_a_hub_task_offline_is_one_line_naming_it(model_folder, tmp_path, capsys, monkeypatch):
    """A task whose dataset is on the Hub (as most of lm-eval's are), with the Hub out of reach: a dataset id that
    no cache here holds, so the test does not depend on what a machine has downloaded."""
    (tmp_path / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: hf-scratch-gpt-tests/not-on-this-machine\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n",
        encoding="utf-8",
    )
    manager = lm_eval_tasks.task_manager(tmp_path, include_default_tasks=False)
    monkeypatch.setattr(lm_eval_tasks, "task_manager", lambda include_path=None: manager)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, out, err = run_cli(["evaluate", model_folder, "--tasks", "hub_task", "--include-path", tmp_path], capsys)
    assert_one_line_error(code, err, "lm-eval task 'hub_task' needs its dataset from the Hugging Face Hub",
                          "hf-scratch-gpt-tests/not-on-this-machine", "--include-path")  # fmt: skip
    assert out == ""


def test_an_unknown_task_is_one_line_with_close_names(model_folder, capsys):
    """The real index of lm-eval's own tasks (built in seconds): a misspelt task name gets the right ones."""
    code, _, err = run_cli(["evaluate", model_folder, "--tasks", "hellaswg"], capsys)
    assert_one_line_error(code, err, "unknown lm-eval task 'hellaswg'", "close names: hellaswag")


def test_without_lm_eval_the_error_names_the_extra(model_folder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    code, _, err = run_cli(["evaluate", model_folder, "--tasks", "hellaswag"], capsys)
    assert_one_line_error(code, err, "pip install 'hf-scratch-gpt[lm-eval]'")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--stride", "8"], "--stride only apply with --text-file/--dataset"),
        (["--split", "validation"], "--split only apply with --text-file/--dataset"),
    ],
)
def test_perplexity_flags_are_refused_with_tasks(model_folder, capsys, extra, fragment):
    code, _, err = run_cli(["evaluate", model_folder, "--tasks", "tiny_choice", *extra], capsys)
    assert_one_line_error(code, err, fragment)


def test_task_flags_are_refused_without_tasks(model_folder, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    code, _, err = run_cli(["evaluate", model_folder, "--text-file", text, "--num-fewshot", "2"], capsys)
    assert_one_line_error(code, err, "--num-fewshot only apply with --tasks")


def test_tasks_and_a_text_file_are_mutually_exclusive(model_folder, tmp_path, capsys):
    code, _, err = run_cli(["evaluate", model_folder, "--tasks", "x", "--text-file", tmp_path / "t.txt"], capsys)
    assert code == 2 and "not allowed with argument" in err, err


def test_perplexity_result_goes_to_output_too(model_folder, tmp_path, capsys):
    text, output = tmp_path / "t.txt", tmp_path / "perplexity.json"
    text.write_text("Hello world, hello there!", encoding="utf-8")
    code, out, err = run_cli(["evaluate", model_folder, "--text-file", text, "--output", output], capsys)
    assert code == 0, err
    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(out)
