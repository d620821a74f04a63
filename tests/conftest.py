"""Shared fixtures: tiny configs, paired GPT-2 / ScratchGPT models with the same random weights. All offline."""

import os

# Any Hub lookup must fail at once (not after ~23 s of retries) so that a test reaching for the network is noticed.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

# Shapes a bug in head splitting, MLP width or layer indexing would show up in.
GPT2_SHAPES = {
    "2L-4H-32": dict(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4),
    "3L-2H-24-inner40": dict(vocab_size=61, n_positions=24, n_embd=24, n_layer=3, n_head=2, n_inner=40),
    "1L-3H-48": dict(vocab_size=128, n_positions=64, n_embd=48, n_layer=1, n_head=3),
}


def random_gpt2(seed: int = 0, attn_implementation: str = "sdpa", **shape) -> GPT2LMHeadModel:
    """GPT2LMHeadModel with random weights of a usefully large scale (logits of order 1, not 1e-3), no dropout."""
    torch.manual_seed(seed)
    config = GPT2Config(
        **{**GPT2_SHAPES["2L-4H-32"], **shape},
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
        attn_implementation=attn_implementation,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))  # non-trivial biases and LayerNorm affines
            else:
                param.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture(params=sorted(GPT2_SHAPES))
def gpt2_pair(request):
    """(GPT2LMHeadModel, ScratchGPTForCausalLM) with identical weights, both sdpa, eval mode."""
    gpt2 = random_gpt2(**GPT2_SHAPES[request.param])
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    ours.set_attn_implementation("sdpa")
    return gpt2, ours.eval()


@pytest.fixture
def tiny_config() -> ScratchGPTConfig:
    return ScratchGPTConfig.from_preset("tiny", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture
def tiny_model(tiny_config) -> ScratchGPTForCausalLM:
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(tiny_config).eval()
