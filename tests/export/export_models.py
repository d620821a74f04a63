"""Tiny saved ScratchGPT folders with chosen config overrides, for the export tests (fixtures: conftest.py)."""

from pathlib import Path

import torch

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM


def save_variant(path: Path, tokenizer=None, seed: int = 1, dtype=torch.float32, **overrides) -> ScratchGPTForCausalLM:
    """save_pretrained of a random tiny model with `overrides` (and `tokenizer`, when given) into `path`."""
    vocab_size = overrides.pop("vocab_size", len(tokenizer) if tokenizer is not None else 97)
    eos = tokenizer.eos_token_id if tokenizer is not None else vocab_size - 1
    config = ScratchGPTConfig.from_preset(
        "tiny", vocab_size=vocab_size, bos_token_id=eos, eos_token_id=eos,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = ScratchGPTForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and "ln_" not in name:
                param.normal_(0.0, 0.2)  # logits of order 1, as saved_models does
            elif "ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)  # LayerNorm parameters that are not 1 and 0
    model = model.to(dtype).eval()
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model
