"""Tiny saved model folders (model + byte-level BPE tokenizer + generation config + code) built offline."""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Tokenizer

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

EOS = "<|endoftext|>"
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello there! A small model writes small words.",
    "Tokens, logits, softmax, probabilities: the model predicts the next token.",
]


def train_tiny_tokenizer(vocab_size: int = 300) -> GPT2Tokenizer:
    """A GPT-2-style byte-level BPE (every byte is a token, so any text round-trips) with `<|endoftext|>` = id 0."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TRAINING_TEXT * 10, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    # GPT2Tokenizer(vocab=..., merges=...): the vocab_file/merges_file form builds an empty tokenizer in 5.23.
    tokenizer = GPT2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS)
    assert tokenizer.decode(tokenizer("Hello wörld 🙂").input_ids) == "Hello wörld 🙂"
    return tokenizer


def tiny_model_for(tokenizer, seed: int = 0) -> ScratchGPTForCausalLM:
    """Random tiny model whose vocabulary is the tokenizer's, with weights large enough for varied predictions."""
    eos_id = tokenizer.eos_token_id
    config = ScratchGPTConfig.from_preset(
        "tiny",
        vocab_size=len(tokenizer),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = ScratchGPTForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and "ln_" not in name:
                param.normal_(0.0, 0.2)  # logits of order 1: generation is not a constant token
    return model.eval()


def save_tiny_model_folder(path: Path, seed: int = 0) -> tuple[ScratchGPTForCausalLM, GPT2Tokenizer]:
    """save_pretrained of a tiny model and its tokenizer into `path` (what a trained model's folder holds)."""
    tokenizer = train_tiny_tokenizer()
    model = tiny_model_for(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer
