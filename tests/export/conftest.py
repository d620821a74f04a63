"""Tiny saved ScratchGPT folders to export: the usual tied GPT-2 shape with its byte-level BPE tokenizer, and
variants that exercise what a plain GPT-2 has less often (an untied head, a vocabulary padded beyond the
tokenizer, another activation, an MLP width that is not a multiple of 32, bfloat16 weights, no tokenizer)."""

import pytest
from export_models import save_variant
from saved_models import save_tiny_model_folder, train_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return train_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """(folder, model, tokenizer): the tied tiny model of saved_models, as a trained model's folder holds it."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tokenizer = save_tiny_model_folder(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="session")
def untied_folder(tmp_path_factory, tokenizer):
    """Untied head, vocabulary padded 20 ids beyond the tokenizer, MLP width 80 (rows not a multiple of 32),
    GELU's tanh form as `gelu_pytorch_tanh`: everything llama.cpp's gpt2 can carry, none of it the default."""
    folder = tmp_path_factory.mktemp("untied") / "model"
    model = save_variant(
        folder, tokenizer, vocab_size=len(tokenizer) + 20, tie_word_embeddings=False, n_inner=80,
        activation_function="gelu_pytorch_tanh",
    )  # fmt: skip
    return folder, model


@pytest.fixture(scope="session")
def no_tokenizer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bare") / "model"
    return folder, save_variant(folder, None, seed=2)
