"""Data at corpus scale: local sources through datasets' builders, bounded-batch packing that gives exactly the blocks
of the earlier whole-split path, streaming = cached, labels from the collator, bad files named with their line."""

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset, DatasetDict, IterableDatasetDict
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_scratch_gpt.data import (
    CompletionCollator,
    LMBlockCollator,
    build_lm_datasets,
    default_corpus_documents,
    group_into_blocks,
    iterate_texts,
    load_documents,
    pack_blocks,
    split_paragraphs,
    split_stream_train_validation,
    split_train_validation,
    train_bpe_tokenizer,
)


# ---- the path as it was before bounded batches (commit 19a807b), kept verbatim as the reference -------------------
def todays_group_into_blocks(examples, block_size):
    concatenated = {key: [token for row in examples[key] for token in row] for key in examples}
    total = (len(concatenated["input_ids"]) // block_size) * block_size
    blocks = {
        key: [values[start : start + block_size] for start in range(0, total, block_size)]
        for key, values in concatenated.items()
    }
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def todays_blocks(documents: DatasetDict, tokenizer, block_size, text_column="text"):
    eos_id = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [eos_id] for row in ids]}

    tokenized = documents.map(tokenize, batched=True, remove_columns=documents["train"].column_names)
    blocks = tokenized.map(todays_group_into_blocks, batched=True, batch_size=None, fn_kwargs={"block_size": block_size})
    return {split: blocks[split]["input_ids"] for split in blocks}


def todays_txt_documents(path):
    with open(path, encoding="utf-8") as handle:
        return split_paragraphs(handle.read())


# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer([default_corpus_documents()[:3000]], vocab_size=500)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """Three .txt files of pydoc topics (one in a sub-folder), paragraphs split across the 10 MB-free small files."""
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("folder")
    (folder / "sub").mkdir()
    names = sorted(topics)
    for index, relative in enumerate(["a.txt", "b.txt", "sub/c.txt"]):
        (folder / relative).write_text("\n\n".join(topics[n] for n in names[index * 15 : (index + 1) * 15]), "utf-8")
    return folder


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path_factory, monkeypatch):
    """A fresh datasets cache for this module, so cache reuse is tested on files this module wrote."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets"))


def test_blocks_identical_to_the_whole_split_path_on_pydoc(bpe):
    documents = split_train_validation(load_documents("pydoc"), 0.05, seed=0)
    new = build_lm_datasets(documents, bpe, block_size=64)
    old = todays_blocks(documents, bpe, 64)
    for split in ("train", "validation"):
        assert new[split]["input_ids"] == old[split] and len(old[split]) > 10


def test_folder_matches_todays_per_file_paragraphs_and_blocks_and_reuses_the_cache(text_folder, bpe):
    documents = load_documents(str(text_folder))
    expected = [doc for name in ("a.txt", "b.txt", "sub/c.txt") for doc in todays_txt_documents(text_folder / name)]
    assert documents["text"] == expected
    assert documents.cache_files  # in the Arrow cache, memory-mapped; not a Python list
    split = split_train_validation(documents, 0.1, seed=0)
    new = build_lm_datasets(split, bpe, block_size=48, num_proc=1)
    assert new["train"]["input_ids"] == todays_blocks(split, bpe, 48)["train"]
    cache_file = new["train"].cache_files[0]["filename"]
    assert os.path.basename(cache_file).startswith("blocks-")
    again = build_lm_datasets(split_train_validation(load_documents(str(text_folder)), 0.1, 0), bpe, 48, num_proc=1)
    assert again["train"].cache_files[0]["filename"] == cache_file  # second run: fingerprints match, no rework


def test_two_tokenizer_processes_give_the_same_blocks(text_folder, bpe):
    split = split_train_validation(load_documents(str(text_folder)), 0.1, seed=0)
    one = build_lm_datasets(split, bpe, block_size=40, num_proc=1)
    two = build_lm_datasets(split, bpe, block_size=40, num_proc=2)
    assert two["train"]["input_ids"] == one["train"]["input_ids"]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=40),
    block_size=st.integers(2, 17),
    batch_size=st.integers(1, 9),
)
def test_bounded_batches_carry_the_remainder_and_drop_at_most_one(lengths, block_size, batch_size):
    rows, next_id = [], 0
    for length in lengths:
        rows.append(list(range(next_id, next_id + length)))
        next_id += length
    tokenized = Dataset.from_dict({"input_ids": rows})
    blocks, tokens = pack_blocks(tokenized, block_size, batch_size=batch_size)
    assert tokens == next_id
    assert blocks["input_ids"] == group_into_blocks({"input_ids": rows}, block_size)["input_ids"]
    assert next_id - len(blocks) * block_size < block_size  # only one remainder, shorter than a block, is dropped


def test_streamed_blocks_equal_cached_blocks(text_folder, bpe):
    cached_documents = load_documents(str(text_folder))
    streamed_documents = load_documents(str(text_folder), streaming=True)
    cached = build_lm_datasets(DatasetDict(train=cached_documents, validation=cached_documents), bpe, 32)
    streamed = build_lm_datasets(
        IterableDatasetDict(train=streamed_documents, validation=streamed_documents), bpe, 32, shuffle_buffer=0
    )
    streamed_ids = [row["input_ids"] for row in streamed["validation"]]
    assert streamed_ids == cached["validation"]["input_ids"] and len(streamed_ids) > 100
    shuffled = build_lm_datasets(IterableDatasetDict(train=streamed_documents, validation=streamed_documents), bpe, 32,
                                 shuffle_buffer=50)  # fmt: skip
    shuffled_ids = [row["input_ids"] for row in shuffled["train"]]
    assert shuffled_ids != streamed_ids and sorted(shuffled_ids) == sorted(streamed_ids)  # same blocks, new order


def test_stream_split_is_deterministic_disjoint_and_complete():
    stream = Dataset.from_dict({"text": [f"doc {i}" for i in range(400)]}).to_iterable_dataset()
    parts = split_stream_train_validation(stream, validation_fraction=0.1, seed=3)
    train = [row["text"] for row in parts["train"]]
    validation = [row["text"] for row in parts["validation"]]
    assert sorted(train + validation) == sorted(f"doc {i}" for i in range(400)) and not set(train) & set(validation)
    assert 20 <= len(validation) <= 60
    assert validation == [row["text"] for row in split_stream_train_validation(stream, 0.1, seed=3)["validation"]]


def test_lm_collator_derives_labels_with_no_masking():
    batch = LMBlockCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10]}])
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 9, 10]]))
    torch.testing.assert_close(batch["labels"], batch["input_ids"])  # packed blocks: no -100 anywhere
    assert batch["labels"].dtype == torch.long and batch["labels"].data_ptr() != batch["input_ids"].data_ptr()
    padded = CompletionCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "prompt_length": 0},
                                                 {"input_ids": [8], "prompt_length": 0}])  # fmt: skip
    torch.testing.assert_close(padded["labels"], torch.tensor([[5, 6, 7], [8, -100, -100]]))  # -100 on padding only
    with pytest.raises(ValueError, match="same length"):
        LMBlockCollator()([{"input_ids": [1, 2]}, {"input_ids": [3]}])


def test_jsonl_parquet_and_glob_sources(tmp_path):
    texts = ["first document", "second one", "third"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    pq.write_table(pa.table({"text": texts[::-1]}), tmp_path / "b.parquet")
    assert load_documents(str(tmp_path / "a.jsonl"))["text"] == texts
    assert load_documents(str(tmp_path / "b.parquet"))["text"] == texts[::-1]
    assert load_documents(str(tmp_path / "*.jsonl"))["text"] == texts
    with pytest.raises(ValueError, match="mixes file kinds"):
        load_documents(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_documents(str(tmp_path / "*.txt"))


def test_bad_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n\ntext\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"one\n\ntwo\nthr\xffee\n")
    with pytest.raises(ValueError, match=r"bad\.txt line 4: not valid UTF-8"):
        load_documents(str(tmp_path))


def test_empty_file_in_a_folder_is_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("alpha\n\nbeta", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="hf_scratch_gpt.data"):
        documents = load_documents(str(tmp_path))
    assert documents["text"] == ["alpha", "beta"]
    assert "skipping 1 empty file" in caplog.text and "empty.txt" in caplog.text


def test_jsonl_record_without_text_or_with_bad_json_names_the_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"text": "a"}\n{"body": "no text here"}\n{"text": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 record\(s\) have no text in 'text'.*records\.jsonl line 2"):
        load_documents(str(path))
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"records\.jsonl line 3: not valid JSON"):
        load_documents(str(path))


def test_hub_id_with_owner_reaches_load_dataset_and_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"could not reach the Hugging Face Hub to load dataset 'someone/corpus'"):
        load_documents("someone/corpus", dataset_config="v1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(str(tmp_path / "missing" / "corpus"))  # a path, not a Hub id
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents("./corpus_that_is_not_here")


def test_iterate_texts_reads_in_batches():
    documents = Dataset.from_dict({"text": [f"t{i}" for i in range(5)], "other": list(range(5))})
    assert list(iterate_texts(documents, batch_size=2)) == [["t0", "t1"], ["t2", "t3"], ["t4"]]


def test_evaluate_a_dataset_folder_batch_by_batch_with_a_progress_bar(tmp_path, text_folder, bpe, capsys):
    from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from hf_scratch_gpt.evaluation import evaluate_model, evaluate_texts

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", vocab_size=len(bpe), n_positions=64)).eval()
    model.save_pretrained(tmp_path)
    bpe.save_pretrained(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text((text_folder / "a.txt").read_text("utf-8")[:3000], "utf-8")
    (tmp_path / "docs" / "b.txt").write_text((text_folder / "b.txt").read_text("utf-8")[:2000], "utf-8")
    result = evaluate_model(str(tmp_path), dataset=str(tmp_path / "docs"))
    assert "evaluating" in capsys.readouterr().err  # the progress bar
    texts = load_documents(str(tmp_path / "docs"))["text"]
    expected = evaluate_texts(model, bpe, iter(texts))  # any iterable: a generator is read once, lazily
    assert result["tokens"] == expected["tokens"] and result["loss"] == pytest.approx(expected["loss"], rel=1e-6)


@pytest.mark.slow
def test_data_pipeline_benchmark_at_1_gb_and_20_training_steps(tmp_path):
    """benchmarks/data_pipeline.py at 1 GB plus `hf-scratch-gpt train` for 20 steps on it (hours on 2 busy cores)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"
    spec = importlib.util.spec_from_file_location("data_pipeline", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    output = tmp_path / "result.json"
    bench.main(["--sizes-mb", "1000", "--train-steps", "20", "--workdir", str(tmp_path / "work"), "--output", str(output)])
    (row,) = json.loads(output.read_text())["rows"]
    assert row["size_bytes"] >= 10**9 and row["blocks"]["train"] > 0.9 * row["tokens"] / 1024
    assert row["train"]["steps"] == 20 and row["train"]["train_loss"] > 0


def test_data_memory_stages_benchmark_reports_every_long_stage(tmp_path, capsys):
    """benchmarks/data_memory_stages.py (the README's per-stage memory table) at 2 MB: it runs the pipeline's stages
    and reports positive memory for every one, in order (each is sampled at its start, so a stage shorter than the
    sampling period is still there), then cleans up its workdir."""
    import importlib.util
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_memory_stages.py"
    spec = importlib.util.spec_from_file_location("data_memory_stages", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--size-mb", "2", "--workdir", str(tmp_path / "work")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"2 MB, [\d,]+ documents, [\d.]+ s", lines[0]), lines
    stages = [line.split()[0] for line in lines[1:]]
    assert stages == ["import", "load", "split", "tokenize", "pack", "end"], lines
    for line in lines[1:]:
        anonymous = float(re.search(r"anonymous ([\d.]+) GiB", line).group(1))
        assert anonymous > 0, line
    assert not (tmp_path / "work").exists()
