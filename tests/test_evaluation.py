"""Evaluation metrics against a direct computation; the evaluate modules; the sliding window."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_scratch_gpt.evaluation import evaluate_texts, load_metric, score_token_ids, sliding_windows


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, bos = 256 (fits the tiny preset's 512-token vocabulary)."""

    bos_token_id = 256
    eos_token_id = 256

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {"input_ids": list(text.encode("utf-8"))}


def direct_metrics(model, ids):
    """One forward pass over the whole sequence (it fits the context): the textbook formulas."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    log_probs = F.log_softmax(logits[:-1].double(), dim=-1)
    targets = torch.tensor(ids[1:])
    nll = -log_probs[torch.arange(len(targets)), targets]
    accuracy = (logits[:-1].argmax(-1) == targets).double().mean().item()
    return nll.sum().item(), len(targets), accuracy


def test_metrics_equal_direct_computation(tiny_model):
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé 😀"
    ids = [256] + list(text.encode("utf-8"))
    nll_sum, tokens, accuracy = direct_metrics(tiny_model, ids)
    result = evaluate_texts(tiny_model, ByteTokenizer(), [text], stride=32)
    assert result["tokens"] == tokens == len(text.encode("utf-8"))
    assert result["loss"] == pytest.approx(nll_sum / tokens, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll_sum / tokens), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nll_sum / math.log(2) / len(text.encode("utf-8")), rel=1e-5)
    assert result["accuracy"] == pytest.approx(accuracy)


def test_several_texts_are_token_weighted_not_mean_of_means(tiny_model):
    short, long = "ab", "a much longer text with many more tokens in it"
    per_text = [evaluate_texts(tiny_model, ByteTokenizer(), [t]) for t in (short, long)]
    both = evaluate_texts(tiny_model, ByteTokenizer(), [short, long])
    weighted = sum(r["loss"] * r["tokens"] for r in per_text) / sum(r["tokens"] for r in per_text)
    assert both["loss"] == pytest.approx(weighted, rel=1e-9)
    assert both["loss"] != pytest.approx((per_text[0]["loss"] + per_text[1]["loss"]) / 2, rel=1e-3)


def test_sliding_window_scores_every_token_once():
    windows = sliding_windows(num_tokens=300, window=128, stride=64)
    assert sum(target for _, _, target in windows) == 300
    assert windows[0] == (0, 128, 128) and windows[-1][1] == 300
    for begin, end, target in windows:
        assert end - begin <= 128 and target <= end - begin
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(300, 128, 128)


def test_long_text_sliding_window_matches_manual_windows(tiny_model):
    """A 300-token text with context 128: equal to scoring each token with its own (≥ 64-token) context."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (300,), generator=generator).tolist()
    totals = score_token_ids(tiny_model, ids, stride=64)
    expected_nll, expected_tokens = 0.0, 0
    previous_end = 0
    for begin in range(0, 300, 64):
        end = min(begin + 128, 300)
        with torch.no_grad():
            logits = tiny_model(torch.tensor([ids[begin:end]])).logits[0].double()
        log_probs = F.log_softmax(logits, -1)
        for position in range(max(previous_end, begin + 1), end):  # targets not scored by earlier windows
            expected_nll -= log_probs[position - begin - 1, ids[position]].item()
            expected_tokens += 1
        previous_end = end
        if end == 300:
            break
    assert totals.tokens == expected_tokens == 299
    assert totals.nll_sum == pytest.approx(expected_nll, rel=1e-5)


def test_evaluate_modules_load_offline_and_compute():
    perplexity = load_metric("perplexity").compute(nll_sum=[2.0, 4.0], num_tokens=[1, 3])
    assert perplexity["loss"] == pytest.approx(1.5) and perplexity["perplexity"] == pytest.approx(math.exp(1.5))
    accuracy = load_metric("accuracy").compute(predictions=[1, 2, 3, 4], references=[1, -100, 3, 5])
    assert accuracy == {"accuracy": pytest.approx(2 / 3), "tokens": 3}
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")


# Issue 12.8: metrics are valid JSON or an error, never `NaN` / `Infinity` in the output.
def test_nan_weights_give_an_error_not_a_nan_loss(tiny_model):
    with torch.no_grad():
        tiny_model.transformer.ln_f.weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"the loss is NaN over 5 scored tokens"):
        evaluate_texts(tiny_model, ByteTokenizer(), ["hello"])


def test_infinite_loss_is_an_error():
    from hf_scratch_gpt.evaluation import ScoreTotals

    with pytest.raises(ValueError, match="the loss is infinite over 3 scored tokens"):
        ScoreTotals(nll_sum=float("inf"), tokens=3, correct=0, num_bytes=3).metrics()


def test_metrics_that_do_not_exist_are_null_in_valid_json():
    import json

    from hf_scratch_gpt.evaluation import ScoreTotals

    metrics = ScoreTotals(nll_sum=800.0 * 4, tokens=4, correct=1, num_bytes=0).metrics()  # exp(800) overflows
    assert metrics["loss"] == 800.0 and metrics["perplexity"] is None and metrics["bits_per_byte"] is None
    json.dumps(metrics, allow_nan=False)  # raises on NaN / inf


# Issue 12.6: --split is honoured for sources training splits itself (embedded corpus, .txt, .jsonl).
@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    from saved_models import save_tiny_model_folder

    folder = tmp_path_factory.mktemp("model")
    save_tiny_model_folder(folder)
    return folder


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """40 short paragraphs as .txt and the same documents as .jsonl."""
    import json

    from pydoc_data.topics import topics

    paragraphs = [p.strip()[:200] for name in sorted(topics) for p in topics[name].split("\n\n") if p.strip()][:40]
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "corpus.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    return folder


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl"])
def test_evaluate_split_validation_scores_exactly_the_held_out_documents(saved_folder, small_corpus, name):
    from transformers import AutoTokenizer

    from hf_scratch_gpt import load_model
    from hf_scratch_gpt.data import load_documents, split_train_validation
    from hf_scratch_gpt.evaluation import evaluate_model

    source = str(small_corpus / name)
    parts = split_train_validation(load_documents(source), validation_fraction=0.25, seed=3)
    model, tokenizer = load_model(saved_folder), AutoTokenizer.from_pretrained(saved_folder)
    expected = evaluate_texts(model, tokenizer, parts["validation"]["text"])
    result = evaluate_model(str(saved_folder), dataset=source, dataset_split="validation",
                            validation_fraction=0.25, split_seed=3)  # fmt: skip
    assert (result["split"], result["documents"]) == ("validation", 10)
    assert result["tokens"] == expected["tokens"] and result["loss"] == pytest.approx(expected["loss"], rel=1e-12)
    train = evaluate_model(str(saved_folder), dataset=source, dataset_split="train", validation_fraction=0.25, split_seed=3)
    everything = evaluate_model(str(saved_folder), dataset=source)  # unset: every document, and it says so
    assert (train["documents"], everything["split"], everything["documents"]) == (30, "all", 40)
    assert train["tokens"] + result["tokens"] == everything["tokens"]


def test_evaluate_split_that_a_local_source_does_not_have(saved_folder, small_corpus):
    from hf_scratch_gpt.evaluation import evaluate_model

    with pytest.raises(ValueError, match=r"split 'test' does not exist for .*corpus.txt.*\['validation', 'train', 'all'\]"):
        evaluate_model(str(saved_folder), dataset=str(small_corpus / "corpus.txt"), dataset_split="test")
    with pytest.raises(ValueError, match="applies to a dataset, not to a text file"):
        evaluate_model(str(saved_folder), text_file=str(small_corpus / "corpus.txt"), dataset_split="validation")


def test_embedded_corpus_validation_split_is_the_one_training_holds_out():
    """The demo and `train` hold out split_train_validation(pydoc) with training's defaults: the same documents."""
    from hf_scratch_gpt.evaluation import load_evaluation_texts
    from hf_scratch_gpt.training.components import DataArguments, load_and_split

    texts, split = load_evaluation_texts("pydoc", split="validation")
    assert split == "validation" and texts == load_and_split(DataArguments(dataset="pydoc"))["validation"]["text"]


def test_cli_evaluate_honours_split(saved_folder, small_corpus, capsys):
    import json

    from hf_scratch_gpt.cli import main

    main(["evaluate", str(saved_folder), "--dataset", str(small_corpus / "corpus.txt"), "--split", "validation",
          "--validation-fraction", "0.25"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert (result["split"], result["documents"]) == ("validation", 10)


# Issue 26: a file that is already a split (the held-out documents the demo writes) is scored whole, never re-split.
@pytest.fixture(scope="module")
def trained_on_corpus(saved_folder, small_corpus, tmp_path_factory):
    """(model folder whose metrics.json says it was trained on corpus.txt, the file of its held-out documents):
    what `train`/the demo leave, with training's split of corpus.txt (fraction 0.25, seed 3) written out."""
    import json
    import shutil

    from hf_scratch_gpt.data import load_documents, split_train_validation

    folder = tmp_path_factory.mktemp("trained") / "model"
    shutil.copytree(saved_folder, folder)
    (folder / "metrics.json").write_text(json.dumps({"dataset": str(small_corpus / "corpus.txt")}), encoding="utf-8")
    corpus = load_documents(str(small_corpus / "corpus.txt"))
    held_out = split_train_validation(corpus, validation_fraction=0.25, seed=3)
    held_out["validation"].to_json(folder / "validation.jsonl", lines=True, force_ascii=False)
    return folder, folder / "validation.jsonl"


def test_a_file_that_is_already_a_split_is_scored_whole(trained_on_corpus, small_corpus, caplog):
    from transformers import AutoTokenizer

    from hf_scratch_gpt import load_model
    from hf_scratch_gpt.data import load_documents
    from hf_scratch_gpt.evaluation import evaluate_model

    folder, held_out = trained_on_corpus
    texts = load_documents(str(held_out))["text"]
    assert len(texts) == 10
    expected = evaluate_texts(load_model(folder), AutoTokenizer.from_pretrained(folder), texts)
    with caplog.at_level("WARNING", logger="hf_scratch_gpt.evaluation"):
        whole = evaluate_model(str(folder), dataset=str(held_out))
    assert not caplog.records  # nothing to warn about: the model was trained on another file
    assert (whole["split"], whole["documents"], whole["tokens"]) == ("all", 10, expected["tokens"])
    assert whole["loss"] == pytest.approx(expected["loss"], rel=1e-12)
    assert evaluate_model(str(folder), dataset=str(held_out), dataset_split="all") == whole
    # The same documents, taken from the training corpus by training's split: the same score.
    from_corpus = evaluate_model(str(folder), dataset=str(small_corpus / "corpus.txt"), dataset_split="validation",
                                 validation_fraction=0.25, split_seed=3)  # fmt: skip
    assert (from_corpus["documents"], from_corpus["tokens"]) == (10, whole["tokens"])
    assert from_corpus["loss"] == pytest.approx(whole["loss"], rel=1e-12)


@pytest.mark.parametrize("split", ["validation", "train"])
def test_training_split_of_a_file_that_is_not_the_training_corpus_is_refused(trained_on_corpus, split):
    from hf_scratch_gpt.evaluation import evaluate_model

    folder, held_out = trained_on_corpus
    message = rf"split '{split}' selects .*/{held_out.name}' is not that corpus .*corpus.txt.*Leave out the split"
    with pytest.raises(ValueError, match=message):
        evaluate_model(str(folder), dataset=str(held_out), dataset_split=split)


def test_training_corpus_is_recognised_however_it_is_spelled(trained_on_corpus, small_corpus, monkeypatch, caplog):
    from hf_scratch_gpt.evaluation import evaluate_model, is_training_corpus

    folder, held_out = trained_on_corpus
    monkeypatch.chdir(small_corpus)
    assert is_training_corpus("corpus.txt", str(small_corpus / "corpus.txt")) is True
    assert is_training_corpus(str(small_corpus / "*.txt"), "./corpus.txt") is True  # a glob matching only that file
    assert is_training_corpus("corpus.jsonl", "corpus.txt") is False
    assert is_training_corpus("pydoc", "pydoc") is True and is_training_corpus("pydoc", "corpus.txt") is False
    assert is_training_corpus("corpus.txt", None) is None  # no record: not known
    assert is_training_corpus("corpus.txt", "elsewhere/missing.txt") is None  # a record naming what is not here
    with caplog.at_level("WARNING", logger="hf_scratch_gpt.evaluation"):
        everything = evaluate_model(str(folder), dataset="corpus.txt")
    assert everything["documents"] == 40
    assert "the corpus this model was trained on" in caplog.text and "--split validation" in caplog.text


def test_split_options_without_a_split_are_refused(trained_on_corpus, small_corpus):
    from hf_scratch_gpt.evaluation import evaluate_model

    folder, _ = trained_on_corpus
    with pytest.raises(ValueError, match=r"validation_fraction and split_seed choose training's split .*split is None"):
        evaluate_model(str(folder), dataset=str(small_corpus / "corpus.txt"), validation_fraction=0.25)


def test_a_broken_training_record_is_named(trained_on_corpus, tmp_path):
    import shutil

    from hf_scratch_gpt.evaluation import training_dataset_of

    folder, _ = trained_on_corpus
    assert training_dataset_of(folder).endswith("corpus.txt")
    broken = tmp_path / "model"
    shutil.copytree(folder, broken)
    (broken / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.json is not the JSON file training writes"):
        training_dataset_of(broken)


def test_cli_scores_the_demos_held_out_file_whole_and_refuses_to_resplit_it(trained_on_corpus, capsys):
    import json

    from hf_scratch_gpt.cli import main

    folder, held_out = trained_on_corpus
    assert main(["evaluate", str(folder), "--dataset", str(held_out)]) == 0
    out, err = capsys.readouterr()
    assert (json.loads(out)["documents"], json.loads(out)["split"]) == (10, "all")
    assert "--split" not in err  # no advice to re-split it
    assert main(["evaluate", str(folder), "--dataset", str(held_out), "--split", "validation"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hf-scratch-gpt: error: split 'validation' selects training's validation share")
    assert "is not that corpus" in err and len(err.splitlines()) == 1
