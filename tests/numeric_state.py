"""The process-wide settings that decide which kernel computes a float32 forward, or how it rounds.

Issue 15: the parity tests compare two models in one process that earlier tests have used. Anything process-wide
that an earlier test leaves changed (thread count, default dtype, a reduced-precision matmul mode, autocast, an SDPA
backend switched off, flushed denormals, a patched torch or transformers function such as the `torch.nn.init`
functions `transformers.initialization.no_init_weights` replaces while it runs, or a function, layer method, flag or
registry entry replaced in one of the modules the two forwards run through) would change the numbers of one or both
models without any test failing where it happened. `numeric_state()` reads all of it; `conftest.py` compares it
before and after every test and at the start of every parity comparison, so such a leak fails in the test that
caused it, by name, instead of as an unexplained deviation later.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import inspect
import sys

import torch
import torch.nn.functional as F


def _qualified(function) -> str:
    """A function's module-qualified name and identity: a replaced function shows up even under the same name."""
    if isinstance(function, functools.partial):
        return f"{function!r}@{id(function):#x}"
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
    return f"{name}@{id(function):#x}"


def _load_libm():
    try:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None


_LIBM = _load_libm()  # found once: find_library may run a subprocess


def _fegetround():
    try:
        return _LIBM.fegetround() if _LIBM is not None else None
    except AttributeError:
        return None


def _denormals_flushed() -> tuple[bool, bool]:
    """(flushed on the calling thread, flushed on any OpenMP worker): an x87/SSE control word set by a library
    (e.g. one built with -ffast-math) turns 1e-39 into 0 on the threads it was set on."""
    tiny = torch.full((8,), 1e-39) * 1.0
    many = torch.full((1 << 18,), 1e-39) * 1.0  # big enough for torch to split it over the worker threads
    return bool((tiny == 0).all()), bool((many == 0).any())


def _matmul_precision() -> str:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:  # torch refuses to answer once a per-backend fp32_precision disagrees with it
        return "<differs per backend>"


# The modules a forward of either model runs through. A test that replaces a function, a layer's forward or a flag in
# one of them (monkeypatching `modeling_gpt2.create_causal_mask`, `Conv1D.forward`, an `ACT2CLS` entry, ...) and does
# not put it back changes that model's numbers in every test after it. Imported here, once, so that a module a later
# test imports first does not read as a change.
FORWARD_MODULES = (
    "hf_scratch_gpt.modeling_scratch_gpt",
    "transformers.models.gpt2.modeling_gpt2",
    "transformers.masking_utils",
    "transformers.integrations.sdpa_attention",
    "transformers.pytorch_utils",
    "transformers.activations",
    "transformers.modeling_layers",
    "transformers.utils.generic",
)


def _code_path() -> dict[str, object]:
    """Every function and scalar flag of FORWARD_MODULES and every method of the layers they define, and the
    registries the models look their attention, mask and activation functions up in, each by identity."""
    from transformers.activations import ACT2CLS
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from hf_scratch_gpt.modeling_scratch_gpt import ACTIVATIONS

    state: dict[str, object] = {}
    for module_name in FORWARD_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("__"):  # dunders, and the `__compiled_fn_*` / `__resume_at_*` torch.compile adds
                continue
            key = f"{module_name}.{name}"
            if type(value) in (bool, int, float, str):
                state[key] = value
            elif inspect.isfunction(value) or inspect.isbuiltin(value) or isinstance(value, functools.partial):
                state[key] = _qualified(value)
            elif inspect.isclass(value) and issubclass(value, torch.nn.Module):
                state[key] = _qualified(value)
                if value.__module__ == module_name:  # the layers defined there: each method, as the class has it
                    for method_name, method in vars(value).items():
                        if callable(method) or isinstance(method, (staticmethod, classmethod, property)):
                            state[f"{key}.{method_name}"] = (
                                _qualified(method) if inspect.isfunction(method) else f"{method!r}@{id(method):#x}"
                            )
    for registry_name, registry in (
        ("ALL_ATTENTION_FUNCTIONS", ALL_ATTENTION_FUNCTIONS),
        ("ALL_MASK_ATTENTION_FUNCTIONS", ALL_MASK_ATTENTION_FUNCTIONS),
        ("ACT2CLS", ACT2CLS),
        ("hf_scratch_gpt.modeling_scratch_gpt.ACTIVATIONS", ACTIVATIONS),
    ):
        for name in registry.keys():
            entry = registry[name]  # ACT2CLS holds a class or (class, keyword arguments)
            state[f"{registry_name}[{name!r}]"] = (
                f"{_qualified(entry[0])}{entry[1]!r}" if isinstance(entry, tuple) else _qualified(entry)
            )
    return state


def numeric_state() -> dict[str, object]:
    import transformers.initialization as hf_init
    from transformers import PreTrainedModel

    state: dict[str, object] = {
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.get_default_device()": torch.get_default_device(),
        "torch.get_float32_matmul_precision()": _matmul_precision(),
        "torch.backends.mkldnn.enabled": torch.backends.mkldnn.enabled,
        "torch.backends.cpu.get_cpu_capability()": torch.backends.cpu.get_cpu_capability(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled(),
        "torch.is_autocast_enabled('cpu')": torch.is_autocast_enabled("cpu"),
        "torch.get_autocast_dtype('cpu')": torch.get_autocast_dtype("cpu"),
        # The SDPA backend switches: sdpa_kernel(...) sets these, and the CPU dispatcher reads them too.
        "sdpa flash/efficient/math/cudnn enabled": (
            torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled(),
            torch.backends.cuda.cudnn_sdp_enabled(),
        ),
        "denormals flushed (this thread, worker threads)": _denormals_flushed(),
        "fegetround()": _fegetround(),
    }
    for owner, name in (
        ("torch.backends", torch.backends),
        ("torch.backends.mkldnn", torch.backends.mkldnn),
        ("torch.backends.mkldnn.matmul", getattr(torch.backends.mkldnn, "matmul", None)),
        ("torch.backends.cuda.matmul", torch.backends.cuda.matmul),
    ):
        if name is not None and hasattr(name, "fp32_precision"):
            state[f"{owner}.fp32_precision"] = name.fp32_precision
    functions = {
        "F.scaled_dot_product_attention": F.scaled_dot_product_attention,
        "F.layer_norm": F.layer_norm,
        "F.gelu": F.gelu,
        "F.linear": F.linear,
        "F.embedding": F.embedding,
        "F.softmax": F.softmax,
        "torch.addmm": torch.addmm,
        "torch.matmul": torch.matmul,
        "torch.tanh": torch.tanh,
        "torch.nn.Linear.forward": torch.nn.Linear.forward,
        "torch.nn.LayerNorm.forward": torch.nn.LayerNorm.forward,
        "PreTrainedModel.init_weights": PreTrainedModel.init_weights,
    }
    for module_name in hf_init.TORCH_MODULES_TO_PATCH:  # what no_init_weights / guard_torch_init_functions replace
        module = sys.modules.get(module_name)
        for function_name in hf_init.TORCH_INIT_FUNCTIONS:
            if module is not None and hasattr(module, function_name):
                functions[f"{module_name}.{function_name}"] = getattr(module, function_name)
    state.update({name: _qualified(function) for name, function in functions.items()})
    state.update(_code_path())
    return state


def differences(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """One 'name: before -> after' line per setting that differs."""
    return [
        f"{name}: {before.get(name, '<absent>')!s} -> {after.get(name, '<absent>')!s}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]
