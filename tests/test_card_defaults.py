"""`hf-scratch-gpt card` fills its defaults from the folder's metrics.json (training data, measured perplexity and
its protocol); flags override them (issue 13.7: the README's `--dataset wikitext --perplexity 41.2` used to end
up in the card of a model trained on pydoc)."""

import json
import shutil

import pytest
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from saved_models import save_tiny_model_folder

from hf_scratch_gpt.cli import main
from hf_scratch_gpt.hub import card_fields_from_metrics

# What `hf-scratch-gpt demo` writes (only the keys the card reads, with the demo's own protocol strings).
DEMO_METRICS = {
    "eval_loss": 4.2067,
    "eval_perplexity": 67.15,
    "dataset": "pydoc",
    "eval_protocol": "128-token blocks across document boundaries",
    "demo": {
        "validation_per_document": {
            "perplexity": 53.97,
            "protocol": "each held-out document scored alone, after <|endoftext|> (as `hf-scratch-gpt evaluate`)",
        },
    },
}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card-defaults")
    save_tiny_model_folder(folder)
    return folder


@pytest.fixture
def folder_with_metrics(model_folder, tmp_path):
    def make(metrics):
        folder = tmp_path / "model"
        shutil.copytree(model_folder, folder)
        (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
        return folder

    return make


def card_metadata(folder):
    metadata = metadata_load(folder / "README.md")
    _, results = model_index_to_eval_results(metadata["model-index"]) if "model-index" in metadata else (None, [])
    return metadata, results


def test_demo_card_takes_dataset_perplexity_and_protocol_from_metrics(folder_with_metrics):
    folder = folder_with_metrics(DEMO_METRICS)
    assert main(["card", str(folder), "--repo-id", "you/my-gpt", "--license", "apache-2.0"]) == 0
    metadata, (result,) = card_metadata(folder)
    assert "datasets" not in metadata  # pydoc is no Hub dataset: described in the text, not linked
    assert (result.dataset_type, result.dataset_split, result.metric_value) == ("pydoc", "validation", 53.97)
    text = (folder / "README.md").read_text()
    assert "Trained on the Python documentation embedded in CPython (`pydoc_data.topics`)." in text
    assert "Perplexity **53.970** on `pydoc` (split `validation`)" in text
    assert "each held-out document scored alone, after <|endoftext|>" in text
    assert "wikitext" not in text and "41.2" not in text


def test_train_card_takes_eval_perplexity_and_a_hub_dataset(folder_with_metrics):
    folder = folder_with_metrics({"eval_perplexity": 30.5, "dataset": "someone/corpus",
                                  "eval_protocol": "64-token blocks across document boundaries"})  # fmt: skip
    assert main(["card", str(folder), "--repo-id", "you/my-gpt", "--license", "mit"]) == 0
    metadata, (result,) = card_metadata(folder)
    assert metadata["datasets"] == ["someone/corpus"]
    assert (result.dataset_type, result.metric_value) == ("someone/corpus", 30.5)
    assert "64-token blocks across document boundaries" in (folder / "README.md").read_text()


def test_flags_override_the_recorded_fields(folder_with_metrics):
    folder = folder_with_metrics(DEMO_METRICS)
    assert main(["card", str(folder), "--repo-id", "you/my-gpt", "--license", "apache-2.0", "--dataset", "wikitext",
                 "--perplexity", "41.2", "--eval-dataset", "wikitext", "--eval-split", "test"]) == 0  # fmt: skip
    metadata, (result,) = card_metadata(folder)
    assert metadata["datasets"] == ["wikitext"]
    assert (result.dataset_type, result.dataset_split, result.metric_value) == ("wikitext", "test", 41.2)
    text = (folder / "README.md").read_text()
    assert "pydoc" not in text and "53.97" not in text and "Protocol:" not in text


def test_loop_metrics_and_local_files(tmp_path):
    metrics = {"eval_perplexity": 9.0, "arguments": {"dataset": "data/my.jsonl"}}  # as the Accelerate loop writes
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    fields = card_fields_from_metrics(tmp_path)
    assert fields["training_data"] == "Trained on the local file `my.jsonl` (not published)."
    assert (fields["eval_dataset"], fields["perplexity"], fields["eval_protocol"]) == ("my.jsonl", 9.0, None)
    assert "datasets" not in fields


def test_no_metrics_no_defaults_and_a_broken_file_is_named(tmp_path):
    assert card_fields_from_metrics(tmp_path) == {}
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json is not valid JSON"):
        card_fields_from_metrics(tmp_path)


# Issue 27: a metrics.json of another shape is named with the key at fault (it ended in AttributeError/TypeError).
WRONG_SHAPES = {
    "a list": ([], r"metrics\.json must hold a JSON object, got list"),
    "a string": ("x", r"metrics\.json must hold a JSON object, got str"),
    "dataset a number": ({"dataset": 3}, r"metrics\.json: dataset must be a string, got 3"),
    "arguments a list": ({"arguments": []}, r"metrics\.json: arguments must be a JSON object, got \[\]"),
    "arguments.dataset a list": ({"arguments": {"dataset": ["x"]}}, r"metrics\.json: arguments\.dataset must be a"),
    "demo a list": ({"dataset": "pydoc", "demo": []}, r"metrics\.json: demo must be a JSON object"),
    "per-document perplexity missing": (
        {"dataset": "pydoc", "demo": {"validation_per_document": {"protocol": "p"}}},
        r"metrics\.json: demo\.validation_per_document\.perplexity None is not a perplexity",
    ),
    "eval_perplexity a string": ({"dataset": "pydoc", "eval_perplexity": "x"}, r"eval_perplexity 'x' is not a"),
    "eval_perplexity nan": ({"dataset": "pydoc", "eval_perplexity": float("nan")}, r"eval_perplexity nan is not a"),
    "eval_protocol a number": ({"dataset": "pydoc", "eval_perplexity": 9.0, "eval_protocol": 1}, r"eval_protocol must"),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_metrics_of_the_wrong_shape_are_named(folder_with_metrics, capsys, case):
    metrics, message = WRONG_SHAPES[case]
    folder = folder_with_metrics(metrics)
    with pytest.raises(ValueError, match=message):
        card_fields_from_metrics(folder)
    assert main(["card", str(folder), "--repo-id", "you/my-gpt", "--license", "mit"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hf-scratch-gpt: error: ") and "metrics.json" in err
    assert not (folder / "README.md").exists()
