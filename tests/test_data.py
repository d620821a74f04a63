"""Data: documents, split, blocks, collator, the trained BPE tokenizer (round trip property)."""

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_scratch_gpt.data import (
    CompletionCollator,
    build_lm_datasets,
    group_into_blocks,
    iterate_texts,
    load_documents,
    split_train_validation,
    tokenize_prompt_completion,
    train_bpe_tokenizer,
)


@pytest.fixture(scope="module")
def pydoc_split():
    return split_train_validation(load_documents(None), validation_fraction=0.05, seed=0)


@pytest.fixture(scope="module")
def bpe(pydoc_split):
    return train_bpe_tokenizer(iterate_texts(pydoc_split["train"]), vocab_size=600)


def test_group_into_blocks_lengths_and_remainder():
    examples = {"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]}  # 11 tokens
    blocks = group_into_blocks(examples, block_size=4)
    assert blocks == {"input_ids": [[1, 2, 3, 4], [5, 6, 7, 8]]}  # remainder [9, 10, 11] dropped; no stored labels
    assert group_into_blocks({"input_ids": [[1, 2, 3]]}, block_size=4) == {"input_ids": []}


def test_default_corpus_split_is_deterministic_and_disjoint(pydoc_split):
    again = split_train_validation(load_documents("pydoc"), validation_fraction=0.05, seed=0)
    assert pydoc_split["validation"]["text"] == again["validation"]["text"]
    total_chars = sum(len(t) for split in pydoc_split.values() for t in split["text"])
    assert total_chars > 400_000  # the embedded corpus really is there
    assert len(pydoc_split["train"]) + len(pydoc_split["validation"]) == len(load_documents("pydoc"))
    assert len(pydoc_split["validation"]) == pytest.approx(0.05 * len(load_documents("pydoc")), abs=1)


def test_build_lm_datasets_blocks(pydoc_split, bpe):
    blocks = build_lm_datasets(pydoc_split, bpe, block_size=32)
    for split in ("train", "validation"):
        assert len(blocks[split]) > 0
        assert {len(row) for row in blocks[split]["input_ids"]} == {32}
        assert blocks[split].column_names == ["input_ids"]  # labels are made by the collator, not stored
    # one end-of-text token after each document; only the dropped remainder (< 32 tokens) can hold a few of them
    eos_count = sum(row.count(bpe.eos_token_id) for row in blocks["train"]["input_ids"])
    assert len(pydoc_split["train"]) - 32 < eos_count <= len(pydoc_split["train"])


def test_block_size_larger_than_corpus_is_a_clear_error(bpe):
    docs = split_train_validation(load_documents_from_texts(["short text one", "short text two", "three"]), 0.34, 0)
    with pytest.raises(ValueError, match=r"block_size 4096 is larger than the \d+ tokens"):
        build_lm_datasets(docs, bpe, block_size=4096)


def load_documents_from_texts(texts):
    from datasets import Dataset

    return Dataset.from_dict({"text": texts})


@pytest.mark.parametrize("content", ["", "   \n\n \t\n", "\n\n\n\n"])
def test_empty_or_whitespace_text_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="contains no text"):
        load_documents(str(path))


def test_whitespace_only_jsonl_and_missing_files(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["", "  ", "\n"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no text"):
        load_documents(str(path))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_documents(str(tmp_path / "nope.txt"))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no column 'text'"):
        load_documents(str(good))


def test_txt_paragraphs_are_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first paragraph\nline two\n\nsecond\n\n\n  \n\nthird", encoding="utf-8")
    texts = load_documents(str(path))["text"]
    assert texts[0] == "first paragraph\nline two" and texts[1] == "second" and texts[-1] == "third"
    assert all(t.strip() for t in texts)


def test_collator_pads_and_masks_padding_and_prompt():
    collator = CompletionCollator(pad_token_id=0)
    batch = collator([
        {"input_ids": [5, 6, 7, 8], "prompt_length": 2},
        {"input_ids": [9, 10], "prompt_length": 0},
        {"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
    ])  # fmt: skip
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0]]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]))
    torch.testing.assert_close(
        batch["labels"], torch.tensor([[-100, -100, 7, 8], [9, 10, -100, -100], [-100, 12, 13, -100]])
    )
    left = CompletionCollator(pad_token_id=0, padding_side="left")(
        [{"input_ids": [1, 2, 3], "prompt_length": 1}, {"input_ids": [4], "labels": [4]}]
    )
    torch.testing.assert_close(left["labels"], torch.tensor([[-100, 2, 3], [-100, -100, 4]]))
    torch.testing.assert_close(left["attention_mask"], torch.tensor([[1, 1, 1], [0, 0, 1]]))
    with pytest.raises(ValueError, match="empty"):
        collator([])


@pytest.mark.parametrize("feature, message", [
    ({"input_ids": [1, 2, 3]}, r"example 1 has neither labels nor prompt_length .*remove_unused_columns"),
    ({"input_ids": [1, 2, 3], "labels": [1, 2, 3], "prompt_length": 1}, "example 1 has both labels and prompt_length"),
    ({"input_ids": [1, 2, 3], "labels": [1, 2]}, "example 1 has 3 input_ids but 2 labels"),
    ({"input_ids": [1, 2, 3], "prompt_length": 4}, r"example 1: prompt_length 4 is outside 0\.\.3"),
    ({"input_ids": [1, 2, 3], "prompt_length": -1}, r"example 1: prompt_length -1 is outside 0\.\.3"),
    ({"input_ids": [1, 2, 3], "prompt_length": 1.5}, "example 1: prompt_length must be an integer, got 1.5"),
])  # fmt: skip
def test_collator_refuses_an_example_whose_targets_it_cannot_tell(feature, message):
    """A missing mask is an error, never "score every token": Trainer drops prompt_length before the collator."""
    with pytest.raises(ValueError, match=message):
        CompletionCollator(pad_token_id=0)([{"input_ids": [7, 8], "prompt_length": 1}, feature])


def test_prompt_completion_tokenization(bpe):
    out = tokenize_prompt_completion({"prompt": ["Q: list?"], "completion": [" A: a list."]}, bpe, max_length=64)
    prompt_ids = bpe("Q: list?", add_special_tokens=False)["input_ids"]
    completion_ids = bpe(" A: a list.", add_special_tokens=False)["input_ids"]
    assert sorted(out) == ["input_ids", "labels"]  # the mask travels in labels, which Trainer keeps
    assert out["input_ids"] == [prompt_ids + completion_ids + [bpe.eos_token_id]]
    assert out["labels"] == [[-100] * len(prompt_ids) + completion_ids + [bpe.eos_token_id]]
    assert bpe.decode(out["input_ids"][0][:-1]) == "Q: list? A: a list."
    pair = {"prompt": ["Q: list?"], "completion": [" A: a list."]}
    cut = tokenize_prompt_completion(pair, bpe, max_length=len(prompt_ids) + 1)
    assert cut["labels"] == [[-100] * len(prompt_ids) + completion_ids[:1]]


def test_pairs_without_a_target_token_are_left_out_with_a_count_or_refused(caplog):
    from datasets import Dataset

    from hf_scratch_gpt.data import keep_pairs_with_targets

    pairs = Dataset.from_dict({
        "input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        "labels": [[-100, -100, -100], [-100, 5, 6], [9, -100, -100]],  # the first label is never a target
    })  # fmt: skip
    with caplog.at_level("WARNING", logger="hf_scratch_gpt.data"):
        kept = keep_pairs_with_targets(pairs, "train", block_size=3)
    assert kept["input_ids"] == [[4, 5, 6]]
    assert "2 of 3 train prompt/completion pairs have no completion token within block_size 3" in caplog.text
    with pytest.raises(ValueError, match=r"the validation split has no target token: each of its 2 .*block_size 3"):
        keep_pairs_with_targets(pairs.select([0, 2]), "validation", block_size=3)


def test_trained_tokenizer_saves_and_reloads(bpe, tmp_path):
    from transformers import AutoTokenizer

    bpe.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    return x ** 2  # 😀"
    assert loaded(text)["input_ids"] == bpe(text)["input_ids"]
    assert len(loaded(text)["input_ids"]) < len(text.encode())  # it learned merges
    assert loaded.eos_token == "<|endoftext|>" and loaded.convert_tokens_to_ids("<|endoftext|>") == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_bpe_round_trip_is_lossless_for_any_unicode(bpe, text):
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text
    assert all(0 <= i < len(bpe) for i in ids)


# Control characters, zero-width and combining marks, multi-codepoint emoji, the special token's own text.
TRICKY_PIECES = ["\x00", "\x1b", "\r", "\n", "\t", " ", "  ", "\u200b", "\ufeff", "\u2028", "😀", "👩‍💻", "é", "e\u0301",
                 "<|endoftext|>", "a"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(TRICKY_PIECES), max_size=40).map("".join))
def test_bpe_round_trip_control_and_combining_characters(bpe, text):
    assert bpe.decode(bpe(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("value, kind", [({"a": 1}, "an object"), (7, "a number"), (["a", "b"], "an array"),
                                         (True, "a boolean")])  # fmt: skip
@pytest.mark.parametrize("streaming", [False, True])
def test_jsonl_text_field_that_is_not_a_string_names_the_file_line_and_type(tmp_path, value, kind, streaming):
    path = tmp_path / "records.jsonl"
    lines = [json.dumps({"text": "a document"}), json.dumps({"text": "another"}), json.dumps({"text": value})]
    for records in (lines[2:], lines):  # every record bad (one Arrow type), or one bad among strings (mixed types)
        path.write_text("\n".join(records) + "\n", encoding="utf-8")
        line = len(records)
        expected = rf"records\.jsonl line {line}: field 'text' holds {kind} \(.*\), expected a string"
        with pytest.raises(ValueError, match=expected):
            list(load_documents(str(path), streaming=streaming))


@pytest.mark.parametrize("values, arrow_type", [([1, 2], "int64"), ([{"a": 1}, {"a": 2}], "struct<a: int64>"),
                                                ([["x"], ["y"]], "list<"), ([True, False], "bool")])  # fmt: skip
def test_parquet_text_column_that_is_not_strings_names_the_file_row_and_type(tmp_path, values, arrow_type):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [None, *values]}), tmp_path / "docs.parquet")
    if arrow_type == "list<":  # its item's name differs between Arrow versions
        arrow_type = str(pq.read_schema(tmp_path / "docs.parquet").field("text").type)
    expected = rf"docs\.parquet row 2: field 'text' holds {re.escape(arrow_type)} .*expected a string"
    with pytest.raises(ValueError, match=expected):
        load_documents(str(tmp_path / "docs.parquet"))


@pytest.mark.parametrize("content, line", [
    ('{"text": "first"}\n["a", "b"]\n', 2),  # json's builder fails on the mixed lines
    ('["a", "b"]\n', 1),  # one array line: json's builder would silently read it as two text rows
])  # fmt: skip
def test_jsonl_line_that_is_an_array_names_the_file_and_line(tmp_path, content, line):
    path = tmp_path / "arrays.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"arrays\.jsonl line {line}: (an|a JSON) array.*expected .*JSON object"):
        load_documents(str(path))


def test_completion_field_is_checked_like_the_text(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Q: two?", "completion": 2}) + "\n", encoding="utf-8")
    expected = r"pairs\.jsonl line 1: field 'completion' holds a number \(2\), expected a string"
    with pytest.raises(ValueError, match=expected):
        load_documents(str(path), "prompt", other_text_columns=["completion"])


@pytest.mark.parametrize("source", ["", "  "])
def test_empty_dataset_name_is_a_clear_error(source):
    with pytest.raises(ValueError, match=rf"dataset '{source}' is empty: expected 'pydoc', a .txt"):
        load_documents(source)
