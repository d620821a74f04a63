"""Shared fixtures: tiny configs, paired GPT-2 / ScratchGPT models with the same random weights. All offline."""

import os

# Any Hub lookup must fail at once (not after ~23 s of retries) so that a test reaching for the network is noticed.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from helpers import GPT2_SHAPES, random_gpt2


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


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """~30 k characters of real prose (pydoc topics) as a .txt file."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(topics[name] for name in sorted(topics)[:12])[:30_000], encoding="utf-8")
    return path
