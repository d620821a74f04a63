"""torch.compile is a documented option: the compiled model's loss and gradients equal the eager model's."""

import copy

import pytest
import torch

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM


def _compiled_vs_eager(backend: str, loss_chunk_size: int):
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset(
        "tiny", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_chunk_size=loss_chunk_size
    )
    eager = ScratchGPTForCausalLM(config).train()
    to_compile = copy.deepcopy(eager)
    compiled = torch.compile(to_compile, backend=backend)
    input_ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[1, :5] = -100
    torch._dynamo.reset()
    expected = eager(input_ids, labels=labels, use_cache=False)
    actual = compiled(input_ids, labels=labels, use_cache=False)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    actual.loss.backward()
    compiled_params = dict(to_compile.named_parameters())
    for name, param in eager.named_parameters():
        torch.testing.assert_close(compiled_params[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss_chunk_size", [0, 8])
def test_compiled_graph_equals_eager(loss_chunk_size):
    """Graph capture and autograd through dynamo (aot_eager: no code generation, seconds)."""
    _compiled_vs_eager("aot_eager", loss_chunk_size)


@pytest.mark.slow
def test_inductor_equals_eager():
    """The default inductor backend (generates and compiles C++; about a minute or two on 2 CPU cores)."""
    _compiled_vs_eager("inductor", 8)
