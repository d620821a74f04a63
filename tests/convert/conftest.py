"""Fixtures for the peer-checkpoint converter tests: each source project's file written as that project writes it
(tiny shapes, random weights, offline), and its conversion, built once per session."""

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "openai"))  # write_tiny_bpe: a byte-level BPE, no TensorFlow

from openai_checkpoints import write_tiny_bpe  # noqa: E402
from peer_models import (  # noqa: E402
    BookGPTModel,
    LlmcConfig,
    LlmcGPT,
    NanoConfig,
    NanoGPT,
    book_config,
    randomize,
    save_nanogpt_checkpoint,
    write_llmc_model,
    write_meta_pkl,
)

@pytest.fixture(scope="session")
def bpe_folder(tmp_path_factory) -> Path:
    """A GPT-2-style BPE folder (vocab.json + merges.txt): 320 byte-level tokens and <|endoftext|> last, 321."""
    folder = tmp_path_factory.mktemp("bpe")
    write_tiny_bpe(folder)
    shutil.move(folder / "encoder.json", folder / "vocab.json")
    shutil.move(folder / "vocab.bpe", folder / "merges.txt")
    return folder


@pytest.fixture(scope="session")
def meta_pkl(tmp_path_factory) -> Path:
    return write_meta_pkl(tmp_path_factory.mktemp("shakespeare_char") / "meta.pkl")


def _convert(function, source: Path, out: Path, **kwargs):
    return out, function(source, out, **kwargs)


@pytest.fixture(scope="session")
def nano_bpe(tmp_path_factory, bpe_folder):
    """nanoGPT with biases, torch's sdpa (flash) attention, vocabulary 384 = the 321-token BPE padded to a
    multiple of 64 (nanoGPT's 50257 → 50304 in miniature), converted with the BPE folder as its tokenizer.
    Returns (model, ckpt.pt, output folder, report)."""
    from hf_scratch_gpt.convert import convert_nanogpt

    root = tmp_path_factory.mktemp("nano_bpe")
    model = randomize(NanoGPT(NanoConfig(vocab_size=384, bias=True)), seed=0)
    ckpt = save_nanogpt_checkpoint(model, root / "out-owt" / "ckpt.pt")
    return (model, ckpt, *_convert(convert_nanogpt, ckpt, root / "converted", tokenizer=bpe_folder))


@pytest.fixture(scope="session")
def nano_char(tmp_path_factory, meta_pkl):
    """nanoGPT with bias=False, compiled (`_orig_mod.` keys), dropout 0.2, shakespeare_char's 65 characters,
    converted with its meta.pkl."""
    from hf_scratch_gpt.convert import convert_nanogpt

    root = tmp_path_factory.mktemp("nano_char")
    model = randomize(NanoGPT(NanoConfig(vocab_size=65, bias=False, dropout=0.2)), seed=1)
    ckpt = save_nanogpt_checkpoint(model, root / "out-shakespeare-char" / "ckpt.pt", compiled=True)
    model.eval()
    return (model, ckpt, *_convert(convert_nanogpt, ckpt, root / "converted", tokenizer=meta_pkl))


@pytest.fixture(scope="session")
def llmc_model():
    """llm.c's GPT with the BPE's 321-token vocabulary (written padded to 384)."""
    return randomize(LlmcGPT(LlmcConfig(vocab_size=321)), seed=2)


@pytest.fixture(scope="session", params=["float32", "bfloat16"])
def llmc_converted(request, tmp_path_factory, llmc_model, bpe_folder):
    """(stored dtype, model.bin, output folder, report) for write_model's two dtypes."""
    from hf_scratch_gpt.convert import convert_llmc

    root = tmp_path_factory.mktemp(f"llmc_{request.param}")
    source = write_llmc_model(llmc_model, root / "model.bin", request.param)
    return (request.param, source, *_convert(convert_llmc, source, root / "converted", tokenizer=bpe_folder))


@pytest.fixture(scope="session", params=[False, True], ids=["no_qkv_bias", "qkv_bias"])
def lfs_converted(request, tmp_path_factory):
    """(book model, model.pth, output folder, report): without qkv_bias saved as a bare state dict, with it as
    ch05's {"model_state_dict", "optimizer_state_dict"}."""
    import torch

    from hf_scratch_gpt.convert import convert_lfs

    root = tmp_path_factory.mktemp("lfs")
    model = randomize(BookGPTModel(book_config(qkv_bias=request.param)), seed=3)
    source = root / "model.pth"
    if request.param:
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
        torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, source)
    else:
        torch.save(model.state_dict(), source)
    return (model, source, *_convert(convert_lfs, source, root / "converted", n_head=4))
