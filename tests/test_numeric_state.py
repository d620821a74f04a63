"""The guard of issue 15: process-wide numeric settings an earlier test leaves changed are named, not silent."""

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from numeric_state import differences, numeric_state
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.activations import ACT2CLS, QuickGELUActivation
from transformers.initialization import no_init_weights
from transformers.integrations import sdpa_attention
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface
from transformers.models.gpt2 import modeling_gpt2
from transformers.pytorch_utils import Conv1D

from hf_scratch_gpt import modeling_scratch_gpt

TESTS = Path(__file__).resolve().parent


@contextlib.contextmanager
def _setting(getter, setter, value):
    before = getter()
    setter(value)
    try:
        yield
    finally:
        setter(before)


@contextlib.contextmanager
def _matmul_precision(value):
    """set_float32_matmul_precision also writes the per-backend fp32_precision ('none' -> 'ieee'): restore both."""
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    saved = [backend.fp32_precision for backend in backends]
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision("highest")
        for backend, precision in zip(backends, saved, strict=True):
            backend.fp32_precision = precision


@contextlib.contextmanager
def _replaced(owner, name, value):
    """What an unrestored monkeypatch leaves: owner.name (an attribute, or a key of a mapping) set to value."""
    is_mapping = isinstance(owner, dict)
    before = owner[name] if is_mapping else getattr(owner, name)
    owner.__setitem__(name, value) if is_mapping else setattr(owner, name, value)
    try:
        yield
    finally:
        owner.__setitem__(name, before) if is_mapping else setattr(owner, name, before)


def _other_sdpa(*args, **kwargs):
    return sdpa_attention_forward(*args, **kwargs)


CHANGES = {
    "torch.get_num_threads()": lambda: _setting(torch.get_num_threads, torch.set_num_threads, 1),
    "torch.get_default_dtype()": lambda: _setting(torch.get_default_dtype, torch.set_default_dtype, torch.float64),
    "torch.get_float32_matmul_precision()": lambda: _matmul_precision("medium"),
    "torch.backends.mkldnn.matmul.fp32_precision": lambda: _setting(
        lambda: torch.backends.mkldnn.matmul.fp32_precision,
        lambda value: setattr(torch.backends.mkldnn.matmul, "fp32_precision", value),
        "bf16",
    ),
    "torch.is_autocast_enabled('cpu')": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    "sdpa flash/efficient/math/cudnn enabled": lambda: sdpa_kernel(SDPBackend.MATH),
    "denormals flushed (this thread, worker threads)": lambda: _setting(lambda: False, torch.set_flush_denormal, True),
    "torch.nn.init.normal_": no_init_weights,
    "PreTrainedModel.init_weights": no_init_weights,
    # The code the two forwards run through (transformers' GPT-2, its mask and attention functions, our model).
    "transformers.pytorch_utils.Conv1D.forward": lambda: _replaced(Conv1D, "forward", lambda self, x: x),
    "transformers.models.gpt2.modeling_gpt2.create_causal_mask": lambda: _replaced(
        modeling_gpt2, "create_causal_mask", lambda *args, **kwargs: None
    ),
    "transformers.integrations.sdpa_attention._is_torch_greater_or_equal_than_2_8": lambda: _replaced(
        sdpa_attention, "_is_torch_greater_or_equal_than_2_8", False
    ),
    "ALL_ATTENTION_FUNCTIONS['sdpa']": lambda: _replaced(AttentionInterface._global_mapping, "sdpa", _other_sdpa),
    "ACT2CLS['gelu_new']": lambda: _replaced(ACT2CLS, "gelu_new", QuickGELUActivation),
    "hf_scratch_gpt.modeling_scratch_gpt.ACTIVATIONS['gelu_new']": lambda: _replaced(
        modeling_scratch_gpt.ACTIVATIONS, "gelu_new", torch.nn.functional.gelu
    ),
    "hf_scratch_gpt.modeling_scratch_gpt.ScratchGPTLinear._column_parts": lambda: _replaced(
        modeling_scratch_gpt.ScratchGPTLinear, "_column_parts", lambda self, row: 0
    ),
    "hf_scratch_gpt.modeling_scratch_gpt.ScratchGPTAttention.forward": lambda: _replaced(
        modeling_scratch_gpt.ScratchGPTAttention, "forward", lambda self, *args, **kwargs: None
    ),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_numeric_state_names_each_change(name):
    before = numeric_state()
    with CHANGES[name]():
        changed = differences(before, numeric_state())
    assert any(line.startswith(f"{name}: ") for line in changed), changed
    assert differences(before, numeric_state()) == []  # restored: nothing left


def test_a_leaking_test_fails_by_name_and_a_clean_one_passes(tmp_path):
    """The suite's autouse guard (conftest.py), run on a throwaway test file in a fresh process."""
    (tmp_path / "test_leaks.py").write_text(textwrap.dedent("""
        import torch

        def test_clean():
            torch.set_num_threads(torch.get_num_threads())

        def test_leaks_default_dtype():
            torch.set_default_dtype(torch.float64)

        def test_after_the_leak():
            pass
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_leaks.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "test_leaks.py::test_leaks_default_dtype left process-wide numeric settings changed: " \
           "torch.get_default_dtype(): torch.float32 -> torch.float64" in output, output
    assert "3 passed, 2 errors" in output, output  # the leaking test's teardown and the module's end both fail
