"""What this CPU computes natively, so that a half-precision model is never silently slower than float32.

Without bf16 (or fp16) instructions torch still runs a bf16 model, through slow emulation. `dtype="auto"` (the
default of `hf-scratch-gpt generate`/`evaluate`/`chat`) loads a half-precision checkpoint in float32 on such a CPU,
and a half-precision model there (asked for explicitly, or cast) warns when it is loaded or generates
(`SlowDtypeWarning`). `describe_cpu()` is the line benchmark tables start with.
"""

from __future__ import annotations

import os
import platform

import torch

from . import decoding_scratch_gpt
from .decoding_scratch_gpt import SlowDtypeWarning, has_native, warn_if_slow_on_cpu

# The flags a benchmark table names (the ones that decide float32 / bf16 speed).
REPORTED_FEATURES = ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def capabilities() -> dict:
    """torch's view of this CPU's features (`torch.cpu.get_capabilities()`, torch >= 2.8); {} where unknown."""
    return decoding_scratch_gpt.cpu_capabilities()


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo), else what torch or platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return capabilities().get("cpu_name") or platform.processor() or platform.machine()


def describe_cpu() -> str:
    """One line for benchmark tables: model name, logical cores and the features that decide the dtypes' speed."""
    features = capabilities()
    flags = [name for name in REPORTED_FEATURES if features.get(name)]
    limits = {name: os.environ.get(name) for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                                                      "MKL_ENABLE_INSTRUCTIONS")}
    extra = [f"{name}={value}" for name, value in limits.items() if value]
    shown = " ".join(flags) or "none of " + "/".join(REPORTED_FEATURES)
    text = f"{cpu_name()}, {os.cpu_count()} logical cores, flags: {shown}"
    return text + (f" (emulated limits: {', '.join(extra)})" if extra else "")


def auto_dtype(checkpoint_dtype: torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype | None:
    """`dtype="auto"`: the checkpoint's own dtype, except a half-precision one on a CPU without instructions for
    it, which loads in float32 (an exact widening: same numbers, faster there). None: keep what the checkpoint has."""
    if torch.device(device).type != "cpu" or checkpoint_dtype is None or has_native(checkpoint_dtype):
        return checkpoint_dtype
    return torch.float32


__all__ = ["SlowDtypeWarning", "auto_dtype", "capabilities", "cpu_name", "describe_cpu", "has_native",
           "warn_if_slow_on_cpu"]
