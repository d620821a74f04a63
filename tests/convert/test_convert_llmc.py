"""llm.c's model.bin → ScratchGPT: logits equal to llm.c's GPT-2 forward for both of write_model's dtypes (versions
3 and 5), the padded vocabulary cut where llm.c's softmax stops, and files that are not llm.c model files."""

import json

import numpy as np
import pytest
import torch
from helpers import assert_close_float32
from output_checks import assert_nothing_written
from peer_models import LlmcConfig, LlmcGPT, randomize, write_llmc_model, write_llmc_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_scratch_gpt.convert import convert_llmc


def source_as_stored(model: LlmcGPT, stored: str) -> LlmcGPT:
    """llm.c's model with the weights the file holds: bfloat16 files hold the weights rounded to bfloat16."""
    if stored == "float32":
        return model
    rounded = LlmcGPT(model.config).eval()
    rounded.load_state_dict({name: tensor.to(torch.bfloat16).float() for name, tensor in model.state_dict().items()})
    return rounded


def test_logits_equal_llmcs_forward(llmc_converted, llmc_model):
    stored, _, out, report = llmc_converted
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    theirs = source_as_stored(llmc_model, stored)
    ids = torch.randint(0, 321, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_logits, their_logits = ours(ids).logits, theirs(ids)
    assert ours_logits.shape == their_logits.shape == (3, 32, 321)
    # NewGELU written out against torch's fused tanh GELU: equal to float32 rounding.
    assert_close_float32(ours_logits, their_logits, reduction=4 * 64, name=f"logits ({stored})")
    assert report.verified and report.relative_diff < 1e-4


def test_padded_rows_cut_to_the_vocabulary_llmc_uses(llmc_converted):
    stored, source, out, report = llmc_converted
    header = np.fromfile(source, dtype="<i4", count=8)
    assert list(header[[0, 1, 3, 7]]) == [20240326, {"float32": 3, "bfloat16": 5}[stored], 321, 384]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 321 and config["activation_function"] == "gelu_new"
    assert config["tie_word_embeddings"] is True and config["eos_token_id"] == 320
    assert any("rows 321..383" in note and "(they were zeros)" in note for note in report.notes)
    assert (stored == "bfloat16") == any("bfloat16 (version 5)" in note for note in report.notes)
    assert f"version {header[1]} ({stored})" in (out / "README.md").read_text()
    assert AutoTokenizer.from_pretrained(out)("hello")["input_ids"]


def test_llmc_tokenizer_file_is_refused_with_the_reason(llmc_converted, tmp_path):
    _, source, _, _ = llmc_converted
    tokenizer_bin = write_llmc_tokenizer(tmp_path / "gpt2_tokenizer.bin", [bytes([i]) for i in range(256)], eot=255)
    with pytest.raises(ValueError, match=r"gpt2_tokenizer\.bin is llm\.c's tokenizer file.*cannot encode"):
        convert_llmc(source, tmp_path / "out", tokenizer=tokenizer_bin)
    assert_nothing_written(tmp_path / "out")


def _patched(source, path, header_changes: dict[int, int] | None = None, cut: int = 0, extra: bytes = b""):
    data = bytearray(source.read_bytes())
    for slot, value in (header_changes or {}).items():
        data[4 * slot: 4 * slot + 4] = int(value).to_bytes(4, "little", signed=True)
    data = data[: len(data) - cut] + extra
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"header_changes": {0: 12345}}, r"magic number 12345, expected 20240326"),
        ({"header_changes": {0: 20240328}}, r"this is llm\.c's tokenizer file"),
        ({"header_changes": {1: 4}}, r"llm\.c model version 4 is not supported \(supported: 3 = float32, 5 = bfloat16"),
        ({"header_changes": {1: 1}}, r"version 1 is not supported"),
        ({"cut": 10}, r"model\.bin is truncated: its header .* needs \d+ bytes, the file has \d+"),
        ({"extra": b"\0" * 8}, r"is 8 bytes longer than its header describes"),
        ({"header_changes": {5: 3}}, r"header n_embd=64 is not divisible by n_head=3"),
        ({"header_changes": {7: 100}}, r"padded_vocab_size=100 is smaller than vocab_size=321"),
        ({"header_changes": {4: 0}}, r"header fields must be positive, got \{'n_layer': 0\}"),
        ({"header_changes": {4: 2**31 - 1}}, r"model\.bin is truncated"),
        ({"header_changes": {6: 32}}, r"model\.bin is \d+ bytes longer than its header describes"),
    ],
    ids=["magic", "tokenizer_magic", "version_4", "version_1", "truncated", "extra_bytes", "heads", "padding",
         "zero_layers", "absurd_layers", "wrong_width"],
)
def test_bad_model_files(llmc_converted, tmp_path, changes, message):
    _, source, _, _ = llmc_converted
    bad = _patched(source, tmp_path / "model.bin", **changes)
    with pytest.raises(ValueError, match=message) as error:
        convert_llmc(bad, tmp_path / "out")
    assert str(bad) in str(error.value)
    assert_nothing_written(tmp_path / "out")


def test_file_shorter_than_the_header(tmp_path):
    short = tmp_path / "model.bin"
    short.write_bytes(np.array([20240326, 3, 32], dtype="<i4").tobytes())
    with pytest.raises(ValueError, match=r"model\.bin is truncated: 12 bytes, shorter than llm\.c's 1024-byte header"):
        convert_llmc(short, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_gpt2_vocabulary_size(tmp_path):
    """write_model's real case: 50257 tokens padded to 50304; bos/eos default to <|endoftext|> without a tokenizer."""
    model = randomize(LlmcGPT(LlmcConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=16)), seed=6)
    source = write_llmc_model(model, tmp_path / "gpt2_tiny.bin", "float32")
    assert np.fromfile(source, dtype="<i4", count=8)[7] == 50304
    report = convert_llmc(source, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"]) == (50257, 50256) and report.tokenizer is None
    ids = torch.tensor([[0, 50256, 31, 40000, 7, 7, 12]])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()(ids).logits
        assert_close_float32(ours, model(ids), reduction=4 * 16, name="logits")
