"""The book's GPTModel state dict → ScratchGPT: logits equal to GPTModel's forward with and without qkv_bias, the
untied head, both ways the book saves, the head count the caller gives, and state dicts that do not fit."""

import json

import pytest
import torch
from helpers import assert_close_float32
from output_checks import assert_nothing_written
from peer_models import BookGPTModel, book_config, randomize
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hf_scratch_gpt.convert import convert_lfs


def test_logits_equal_the_books_forward(lfs_converted):
    book, _, out, report = lfs_converted
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 96, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_logits, their_logits = ours(ids).logits, book(ids)
    # The book's LayerNorm and GELU are written out element by element; torch's kernels fuse them: float32 rounding.
    assert_close_float32(ours_logits, their_logits, reduction=4 * 64, name="logits")
    assert report.verified and report.relative_diff < 1e-4


def test_untied_head_and_stacked_qkv(lfs_converted):
    book, _, out, report = lfs_converted
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["activation_function"] == "gelu_new"
    assert config["n_head"] == 4 and config["n_inner"] is None
    attention = book.trf_blocks[1].att
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("lm_head.weight"), book.out_head.weight)
        assert torch.equal(handle.get_tensor("transformer.h.1.attn.c_attn.weight"),
                           torch.cat([attention.W_query.weight, attention.W_key.weight, attention.W_value.weight]))
        bias = handle.get_tensor("transformer.h.1.attn.c_attn.bias")
    if attention.W_query.bias is None:
        assert not bias.any() and any("stacked bias is zero" in note for note in report.notes)
    else:
        assert torch.equal(bias, torch.cat([attention.W_query.bias, attention.W_key.bias, attention.W_value.bias]))
    assert "trf_blocks.*.att.mask (causal mask buffers)" in report.ignored_variables


def test_model_and_optimizer_file_drops_the_optimizer(lfs_converted):
    book, source, out, report = lfs_converted
    saved = torch.load(source, weights_only=True)
    assert ("optimizer_state_dict" in report.ignored_variables) == ("model_state_dict" in saved)
    assert "--n-head 4" in (out / "README.md").read_text()


@pytest.mark.parametrize("n_head, message", [(5, r"width 64 .* not divisible by n_head=5"),
                                             (0, r"n_head \(--n-head\) must be a positive integer, got 0"),
                                             (True, r"must be a positive integer, got True")])
def test_head_count_must_fit(lfs_converted, tmp_path, n_head, message):
    _, source, _, _ = lfs_converted
    with pytest.raises(ValueError, match=message):
        convert_lfs(source, tmp_path / "out", n_head=n_head)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("trf_blocks.1.norm2.scale"),
         r"lacks 1 tensor the model needs \(trf_blocks\.1\.norm2\.scale\)"),
        (lambda s: s.update({"trf_blocks.0.att.W_qkv.weight": torch.zeros(192, 64)}),
         r"has 1 entry this model does not have \(trf_blocks\.0\.att\.W_qkv\.weight\)"),
        (lambda s: s.update({"pos_emb.weight": torch.zeros(32, 48)}), r"pos_emb\.weight has shape \(32, 48\)"),
        (lambda s: s.update({"trf_blocks.1.norm1.scale": torch.zeros(64, dtype=torch.long)}),
         r"trf_blocks\.1\.norm1\.scale is torch\.int64, not a floating-point tensor"),
        (lambda s: s.pop("tok_emb.weight"), r"is not a GPTModel state dict from the book"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("trf_blocks.1.att.W_") and k.endswith(".bias")],
         r"lacks 3 tensors the model needs"),
    ],
    ids=["missing", "unexpected", "shape", "dtype", "not_the_book", "mixed_qkv_bias"],
)
def test_state_dicts_that_do_not_fit(tmp_path, change, message):
    book = randomize(BookGPTModel(book_config(qkv_bias=True)), seed=7)
    state = dict(book.state_dict())
    change(state)
    source = tmp_path / "model.pth"
    torch.save(state, source)
    with pytest.raises(ValueError, match=message) as error:
        convert_lfs(source, tmp_path / "out", n_head=4)
    assert str(source) in str(error.value)
    assert_nothing_written(tmp_path / "out")


def test_wider_feed_forward_and_compiled_model(tmp_path):
    """A GPTModel whose feed-forward is not 4·C (n_inner), saved from torch.compile (the `_orig_mod.` keys)."""
    book = randomize(BookGPTModel(book_config(emb_dim=32, n_heads=2)), seed=8)
    with torch.no_grad():
        for block in book.trf_blocks:  # ff widened to 3·C, as a variant of the book's FeedForward would be
            block.ff.layers[0] = torch.nn.Linear(32, 96)
            block.ff.layers[2] = torch.nn.Linear(96, 32)
    book = randomize(book, seed=8)
    torch.save(torch.compile(book).state_dict(), tmp_path / "model.pth")
    report = convert_lfs(tmp_path / "model.pth", tmp_path / "out", n_head=2)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_inner"] == 96
    assert any("_orig_mod." in note for note in report.notes)
    ids = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()(ids).logits
        assert_close_float32(ours, book(ids), reduction=96, name="logits")
