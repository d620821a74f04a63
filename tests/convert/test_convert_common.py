"""What every peer converter shares: the output folder's rules (never a half-written or foreign folder replaced),
the `--tokenizer` argument (meta.pkl read without running anything, BPE folders, what is refused)."""

import json
import os
import pickle

import pytest
from output_checks import assert_nothing_written
from peer_models import SHAKESPEARE_CHARS, write_meta_pkl
from transformers import AutoModelForCausalLM

from hf_scratch_gpt.convert import CONVERTERS, convert_nanogpt
from hf_scratch_gpt.convert.common import char_tokenizer, read_char_vocabulary, read_plain_pickle


def test_every_format_has_a_converter():
    assert sorted(CONVERTERS) == ["lfs", "llmc", "nanogpt"]


# ---------------------------------------------------------------------------------------------------------------------
# the output folder
# ---------------------------------------------------------------------------------------------------------------------
def test_existing_output_needs_overwrite_and_is_replaced_whole(nano_bpe, tmp_path):
    _, ckpt, _, _ = nano_bpe
    out = tmp_path / "out"
    convert_nanogpt(ckpt, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        convert_nanogpt(ckpt, out, dtype="bfloat16")
    assert (out / "model.safetensors").read_bytes() == before
    report = convert_nanogpt(ckpt, out, dtype="bfloat16", overwrite=True)
    assert report.dtype == "bfloat16" and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or set-aside folder left


def test_foreign_folder_is_never_replaced(nano_bpe, tmp_path):
    _, ckpt, _, _ = nano_bpe
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a ScratchGPT model folder"):
        convert_nanogpt(ckpt, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_output_must_not_be_or_hold_the_source(nano_bpe, tmp_path):
    _, ckpt, _, _ = nano_bpe
    with pytest.raises(ValueError, match="is the source file itself"):
        convert_nanogpt(ckpt, ckpt)
    with pytest.raises(ValueError, match="contains the source file"):
        convert_nanogpt(ckpt, ckpt.parent, overwrite=True)


def test_missing_source_and_bad_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nanoGPT checkpoint \(ckpt\.pt\) not found: .*nothing\.pt"):
        convert_nanogpt(tmp_path / "nothing.pt", tmp_path / "out")
    with pytest.raises(ValueError, match="dtype must be one of"):
        convert_nanogpt(tmp_path / "nothing.pt", tmp_path / "out", dtype="int8")
    assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------------
# --tokenizer
# ---------------------------------------------------------------------------------------------------------------------
class RunsCode:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_meta_pkl_with_a_global_is_refused_without_running_it(nano_char, tmp_path):
    _, ckpt, _, _ = nano_char
    marker = tmp_path / "ran"
    meta = tmp_path / "meta.pkl"
    itos = dict(enumerate(SHAKESPEARE_CHARS))
    with open(meta, "wb") as f:
        pickle.dump({"vocab_size": 65, "itos": itos, "stoi": {c: i for i, c in itos.items()},
                     "hook": RunsCode(marker)}, f)
    with pytest.raises(ValueError, match=r"meta\.pkl is not a pickle of plain data: it refers to global (posix|os)\."
                                         r"system.*nothing in it was executed"):
        convert_nanogpt(ckpt, tmp_path / "out", tokenizer=meta)
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


def test_plain_pickle_reader_reads_only_plain_data(tmp_path):
    path = tmp_path / "plain.pkl"
    data = {"a": [1, 2.5, "x", None, True, (3, 4)], 7: {"nested": "é😀"}}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # nanoGPT's prepare.py writes the default, 4 or 5
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert read_plain_pickle(path) == data
    from collections import OrderedDict

    path.write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(ValueError, match="refers to global collections.OrderedDict"):
        read_plain_pickle(path)
    path.write_bytes(pickle.dumps(data)[:20])
    with pytest.raises(ValueError, match=r"plain\.pkl is not a readable pickle \(truncated or corrupted\)"):
        read_plain_pickle(path)


@pytest.mark.parametrize(
    "meta, message",
    [
        ([1, 2, 3], r"is not nanoGPT's meta\.pkl: expected a dict with vocab_size, itos and stoi"),
        ({"vocab_size": 2, "itos": {0: "a", 1: "bc"}, "stoi": {"a": 0, "bc": 1}}, r"single characters"),
        ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}, r"stoi is not the inverse of itos"),
        ({"vocab_size": 3, "itos": {0: "a", 1: "b"}, "stoi": {"a": 0, "b": 1}}, r"vocab_size is 3 but itos has 2"),
        ({"vocab_size": 2, "itos": {0: "a", 2: "b"}, "stoi": {"a": 0, "b": 2}}, r"ids 0\.\.n-1"),
    ],
    ids=["not_a_dict", "not_characters", "not_inverse", "wrong_size", "gap"],
)
def test_bad_meta_pkl(nano_char, tmp_path, meta, message):
    _, ckpt, _, _ = nano_char
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps(meta))
    with pytest.raises(ValueError, match=message):
        convert_nanogpt(ckpt, tmp_path / "out", tokenizer=path)
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_larger_than_the_model_is_refused(nano_char, bpe_folder, tmp_path):
    _, ckpt, _, _ = nano_char  # 65 ids; the BPE has 321 tokens
    with pytest.raises(ValueError, match=r"the tokenizer has 321 tokens but the model in .*ckpt\.pt has a vocabulary "
                                         r"of 65"):
        convert_nanogpt(ckpt, tmp_path / "out", tokenizer=bpe_folder)
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_paths_that_are_not_tokenizers(nano_char, tmp_path):
    _, ckpt, _, _ = nano_char
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        convert_nanogpt(ckpt, tmp_path / "out", tokenizer=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has neither vocab.json"):
        convert_nanogpt(ckpt, tmp_path / "out", tokenizer=tmp_path / "empty")
    (tmp_path / "input.txt").write_text("First Citizen:")
    with pytest.raises(ValueError, match="--tokenizer takes nanoGPT's meta.pkl or a tokenizer folder"):
        convert_nanogpt(ckpt, tmp_path / "out", tokenizer=tmp_path / "input.txt")
    assert_nothing_written(tmp_path / "out")


def test_saved_transformers_tokenizer_folder(nano_char, tmp_path):
    """A folder holding tokenizer.json (a tokenizer saved by transformers) is read with AutoTokenizer, offline."""
    _, ckpt, _, _ = nano_char
    char_tokenizer(dict(enumerate(SHAKESPEARE_CHARS))).save_pretrained(tmp_path / "saved")
    report = convert_nanogpt(ckpt, tmp_path / "out", tokenizer=tmp_path / "saved")
    assert "tokenizer.json" in report.tokenizer
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out") is not None


def test_meta_pkl_written_by_prepare_py_round_trips_unicode(tmp_path):
    """A character vocabulary beyond ASCII (another dataset's prepare.py): every character is its own token."""
    chars = "\n\t aäé€😀"
    tokenizer = char_tokenizer({i: c for i, c in enumerate(chars)})
    text = "ä 😀\t€\né  a"
    ids = tokenizer(text)["input_ids"]
    assert ids == [chars.index(c) for c in text] and tokenizer.decode(ids) == text
    assert read_char_vocabulary(write_meta_pkl(tmp_path / "meta.pkl", chars)) == dict(enumerate(chars))
