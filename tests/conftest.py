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
from mkl_vml import warm_up_vml
from numeric_state import differences, numeric_state

# Issue 15: the first MKL VML call of each torch thread (GPT-2's torch.tanh) can be inaccurate; make it here.
VML_FIRST_CALLS = warm_up_vml()
# The numeric settings of this process before any test ran (see numeric_state.py).
PRISTINE_NUMERIC_STATE = numeric_state()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"issue 15: {VML_FIRST_CALLS}")


@pytest.fixture(autouse=True)
def numeric_state_left_as_found(request):
    """A test that changes a process-wide numeric setting (threads, default dtype, matmul precision, autocast, SDPA
    backends, denormal flushing, a patched torch/transformers function) and does not restore it fails here, by name,
    instead of silently changing the numbers of the tests after it."""
    before = numeric_state()
    yield
    after = numeric_state()
    changed = differences(before, after)
    if changed and differences(PRISTINE_NUMERIC_STATE, after):  # putting back the session's settings is no leak
        pytest.fail(f"{request.node.nodeid} left process-wide numeric settings changed: {'; '.join(changed)}")


@pytest.fixture(scope="module", autouse=True)
def numeric_state_restored_by_module(request):
    """The same for module-scoped fixtures: at the end of each test module the state is the session's first."""
    yield
    changed = differences(PRISTINE_NUMERIC_STATE, numeric_state())
    if changed:
        pytest.fail(f"{request.node.nodeid} left process-wide numeric settings changed: {'; '.join(changed)}")


@pytest.fixture(params=sorted(GPT2_SHAPES))
def gpt2_pair(request):
    """(GPT2LMHeadModel, ScratchGPTForCausalLM) with identical weights, both sdpa, eval mode.

    Checked before any test compares them: the process-wide numeric settings (and the code the forwards run through)
    are the ones the session started with, torch's MKL VML functions (GPT-2's torch.tanh) are accurate on every
    thread (`warm_up_vml`, issue 15), both models are in eval mode on sdpa, and they hold bit-identical float32
    weights (GPT-2's names and layout back from ours)."""
    changed = differences(PRISTINE_NUMERIC_STATE, numeric_state())
    if changed:
        pytest.fail(f"process-wide numeric settings differ from the start of the session: {'; '.join(changed)}")
    warm_up_vml()
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
