"""What this CPU computes natively, so that a half-precision load is never silently slower than float32.

On a CPU without bf16 (or fp16) instructions torch still runs bf16 models, through slow conversion paths: on a
2-core AVX2-only EPYC, greedy decoding in bf16 ran at 0.12x of float32. `dtype="auto"` (the default of
`hf-scratch-gpt generate`/`evaluate`/`chat`) therefore loads half-precision checkpoints in float32 on such CPUs,
and an explicit half-precision request there is warned about.
"""

from __future__ import annotations

import os
import platform
import warnings

import torch

# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, formerly DNNL_MAX_CPU_ISA) can hide instructions the CPU has; these caps keep
# the bf16 / fp16 matmul instructions (oneDNN's names, upper case).
_ONEDNN_ISAS_WITH_BF16 = {
    "AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
}
_ONEDNN_ISAS_WITH_FP16 = {
    "AVX2_VNNI_2", "AVX512_CORE_FP16", "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
}
# The CPU features that make a dtype native, by architecture (torch.cpu.get_capabilities() names).
_NATIVE_FEATURES = {
    ("x86_64", torch.bfloat16): ("avx512_bf16", "amx_bf16"),
    ("x86_64", torch.float16): ("avx512_fp16", "amx_fp16"),
    ("aarch64", torch.bfloat16): ("bf16", "sve_bf16"),
    ("aarch64", torch.float16): ("fp16", "asimdhp"),
}
# The flags a benchmark table names (the ones that decide float32 / bf16 speed).
REPORTED_FEATURES = ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def capabilities() -> dict:
    """torch's view of this CPU's features (`torch.cpu.get_capabilities()`, torch >= 2.8); {} where unknown."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if get is not None else {}


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
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    extra = [f"ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}"] if os.environ.get("ATEN_CPU_CAPABILITY") else []
    extra += [f"ONEDNN_MAX_CPU_ISA={isa_cap}"] if isa_cap else []
    extra += [f"MKL_ENABLE_INSTRUCTIONS={os.environ['MKL_ENABLE_INSTRUCTIONS']}"] if os.environ.get(
        "MKL_ENABLE_INSTRUCTIONS") else []
    text = f"{cpu_name()}, {os.cpu_count()} logical cores, flags: {' '.join(flags) or 'none of ' + '/'.join(REPORTED_FEATURES)}"
    return text + (f" (emulated limits: {', '.join(extra)})" if extra else "")


def has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has instructions for `dtype` matmuls (float32: always). Respects ONEDNN_MAX_CPU_ISA."""
    if dtype == torch.float32 or dtype == torch.float64:
        return True
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    features = capabilities()
    if not any(features.get(name) for name in _NATIVE_FEATURES.get((machine, dtype), ())):
        return False
    isa_cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    allowed = _ONEDNN_ISAS_WITH_BF16 if dtype == torch.bfloat16 else _ONEDNN_ISAS_WITH_FP16
    return not isa_cap or isa_cap in allowed


def auto_dtype(checkpoint_dtype: torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype | None:
    """`dtype="auto"`: the checkpoint's own dtype, except a half-precision one on a CPU without instructions for
    it, which loads in float32 (an exact widening: same numbers, faster there). None: keep what the checkpoint has."""
    if torch.device(device).type != "cpu" or checkpoint_dtype is None or has_native(checkpoint_dtype):
        return checkpoint_dtype
    return torch.float32


def warn_if_slow_on_cpu(dtype: torch.dtype | None, device: str | torch.device = "cpu") -> None:
    """Warn that an explicitly requested half-precision dtype has no instructions on this CPU (it runs, slowly)."""
    if dtype is None or torch.device(device).type != "cpu" or has_native(dtype):
        return
    name = str(dtype).removeprefix("torch.")
    warnings.warn(
        f"{name} requested, but this CPU ({cpu_name()}) has no {name} instructions: torch emulates them and "
        f"inference is several times slower than float32 (0.12x measured on an AVX2-only CPU); use float32 or "
        f"dtype 'auto'",
        SlowDtypeWarning,
        stacklevel=3,
    )


class SlowDtypeWarning(UserWarning):
    """A half-precision dtype was requested on a CPU that has no instructions for it."""
