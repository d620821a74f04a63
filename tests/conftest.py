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
from helpers import GPT2_SHAPES, parity_pair

# GPT-2's "gelu_new" is torch.tanh. torch computes tanh (exp, log, erf, ...) of float32 CPU tensors with MKL's
# vector math, one chunk of >= 2048 elements per thread; on AVX-512 Xeons the very first such call in a process,
# made by two threads at once, returned one thread's chunk up to 5e-5 off in a few percent of processes (issue 15).
# Make those first calls here, on every thread, before any test compares numbers.
_first_calls = torch.linspace(0.01, 4.0, 4 * 2048 * torch.get_num_threads())
for _function in (torch.tanh, torch.exp, torch.log, torch.sqrt, torch.erf, torch.sin, torch.cos, torch.atan):
    _function(_first_calls)


@pytest.fixture(params=sorted(GPT2_SHAPES))
def gpt2_pair(request):
    """(GPT2LMHeadModel, ScratchGPTForCausalLM) with identical weights, both sdpa, eval mode (checked)."""
    gpt2, ours = parity_pair(request.param)
    for model in (gpt2, ours):
        implementation = model.config._attn_implementation
        assert implementation == "sdpa" and not model.training, (type(model).__name__, implementation, model.training)
    theirs, mine = gpt2.state_dict(), hf_scratch_gpt.to_hf_gpt2(ours).state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype == torch.float32 and torch.equal(mine[name], tensor), name
    return gpt2, ours


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
