"""The CPU decoding fast path: weights stored (in, out) for decoding, and `ScratchGPTLinear`, an `nn.Linear` whose
product for the few rows of a decoding step runs on all threads. Training, prefill and every other device or dtype
take plain `F.linear`. Also the check that a half-precision model is not run on a CPU without instructions for it
(`warn_if_slow_on_cpu`). Measurements: docs/performance.md.

Ships to the Hub with `modeling_scratch_gpt.py` (custom code): imports only torch and the standard library.
"""

import os
import platform
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MIN_COLUMNS_PER_PART = 256
MAX_SPLIT_ROWS = 8


class ScratchGPTLinear(nn.Linear):
    """`nn.Linear` (same parameters, state dict and behaviour everywhere), whose product for a few rows on a CPU
    spreads over the threads.

    A decoding step multiplies one row per sequence by each weight; torch hands a single row to a matrix-vector
    kernel that runs on one thread, and a handful of rows to a matrix product that is slower still per byte. When
    the weight is stored (in, out) — the layout `generate` gives it, see `store_linear_weights_transposed` — its
    columns split into equal blocks that are (in, out/parts) matrices without a copy, and one `baddbmm` over those
    blocks runs them in parallel. Each output is the same dot product summed in another order: equal to `F.linear`
    to float32 rounding (tested), not bit-identical. Everything else (prefill and training batches, gradients,
    other devices or dtypes, quantized or distributed weights, the (out, in) layout, `torch.compile`) goes through
    `F.linear`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        parts = self._column_parts(input)
        if parts < 2:
            return F.linear(input, self.weight, self.bias)
        weight_t = self.weight.t()  # (in, out), contiguous in this layout
        fan_in, fan_out = weight_t.shape
        rows = input.numel() // fan_in
        width = fan_out // parts
        split = parts * width  # columns computed in blocks; the remainder (< parts) by F.linear
        flat = input.reshape(rows, fan_in)
        blocks = weight_t[:, :split].view(fan_in, parts, width).permute(1, 0, 2)  # (parts, in, width), a view
        if self.bias is None:
            output = torch.bmm(flat.expand(parts, rows, fan_in), blocks)
        else:
            output = torch.baddbmm(self.bias[:split].view(parts, 1, width), flat.expand(parts, rows, fan_in), blocks)
        output = output.view(1, split) if rows == 1 else output.permute(1, 0, 2).reshape(rows, split)
        if split < fan_out:
            bias = None if self.bias is None else self.bias[split:]
            output = torch.cat([output, F.linear(flat, self.weight[split:], bias)], dim=1)
        return output.view(*input.shape[:-1], fan_out)

    def _column_parts(self, input: torch.Tensor) -> int:
        """Blocks of columns to compute in parallel (below 2: use F.linear)."""
        weight = self.weight
        if (
            torch.compiler.is_compiling()  # first: nothing below becomes a guard of a compiled graph
            or torch.is_grad_enabled()  # training
            or input.device.type != "cpu"
            or input.dtype != torch.float32
            or weight.dtype != torch.float32
            or input.shape[-1] != weight.shape[1]  # F.linear's own error
            or input.numel() > MAX_SPLIT_ROWS * weight.shape[1]  # prefill and batches: the matrix product
            or type(weight.data) is not torch.Tensor  # quantized (torchao) or distributed (DTensor) weights
            or weight.stride() != (1, weight.shape[0])  # only the decoding layout
        ):
            return 0
        return min(torch.get_num_threads(), weight.shape[0] // MIN_COLUMNS_PER_PART)


def store_linear_weights_transposed(model: nn.Module) -> None:
    """Keep every `nn.Linear` weight in (in, out) memory while it stays an (out, in) parameter.

    A batch-1 decoding step is one matrix-vector product per weight, bound by how fast the weights are read, and
    torch's CPU kernel reads a weight stored (in, out) — GPT-2's Conv1D layout — markedly faster than the (out, in)
    rows `nn.Linear` allocates. `F.linear` multiplies by `weight.t()`, which is then a contiguous (in, out) matrix,
    so it takes that kernel with no other change; in this layout `ScratchGPTLinear` also splits a one-row product
    into column blocks computed on all threads. The parameter keeps its name, shape (out, in) and values; only its
    strides become (1, out): `state_dict` keys and shapes and `save_pretrained` (see `contiguous_tied_weights`) are
    unchanged. `ScratchGPTForCausalLM.generate` calls this on a model in eval mode. The tied head shares its
    Parameter with `wte`, so the embedding is stored the same way (a row lookup of a few tokens does not mind the
    stride). Storage is swapped one matrix at a time: the model is never held twice. Quantized or distributed
    weights (tensor subclasses) and weights already laid out otherwise are left alone; the function is idempotent.
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight
            if type(weight.data) is torch.Tensor and weight.dim() == 2 and weight.is_contiguous() and min(weight.shape) > 1:
                weight.data = weight.data.t().contiguous().t()  # (out, in) shape, (in, out) memory


def contiguous_state_dict(state_dict: dict) -> dict:
    """`state_dict` with each tensor stored transposed copied contiguous, one copy per shared storage (so that ties
    stay visible to transformers' shared-tensor check, which flattens with `.view(-1)`)."""
    copies: dict[tuple, torch.Tensor] = {}

    def contiguous(tensor):
        if not torch.is_tensor(tensor) or tensor.is_contiguous():
            return tensor
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
        return copies.setdefault(key, tensor.contiguous())

    return {name: contiguous(tensor) for name, tensor in state_dict.items()}


@contextmanager
def contiguous_tied_weights(model: nn.Module):
    """While it runs, a tied Parameter stored transposed (the embedding shared with the head) is contiguous, as
    transformers' shared-tensor check needs; afterwards it is stored transposed again. The files are the same either
    way (safetensors are written contiguous); a training model's storage is left as it is."""
    seen, tied = set(), []
    for _, param in model.named_parameters(remove_duplicate=False):  # a tied Parameter: once per owner
        if id(param) in seen and not param.is_contiguous():
            tied.append(param)
        seen.add(id(param))
    with torch.no_grad():
        for param in tied:
            param.data = param.data.contiguous()
    try:
        yield
    finally:
        with torch.no_grad():
            for param in tied:
                param.data = param.data.t().contiguous().t()


# ---------------------------------------------------------------------------------------------------------------------
# Half precision on a CPU: fast only with instructions for it
# ---------------------------------------------------------------------------------------------------------------------
# The CPU features that make a dtype's matmuls native, by architecture (`torch.cpu.get_capabilities()` names).
NATIVE_FEATURES = {
    ("x86_64", torch.bfloat16): ("avx512_bf16", "amx_bf16"),
    ("x86_64", torch.float16): ("avx512_fp16", "amx_fp16"),
    ("aarch64", torch.bfloat16): ("bf16", "sve_bf16"),
    ("aarch64", torch.float16): ("fp16", "asimdhp"),
}
# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, formerly DNNL_MAX_CPU_ISA) can hide instructions the CPU has; these caps keep
# the bf16 / fp16 ones (oneDNN's names, upper case).
ONEDNN_ISAS_WITH = {
    torch.bfloat16: {"AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                     "ALL", "DEFAULT"},
    torch.float16: {"AVX2_VNNI_2", "AVX512_CORE_FP16", "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
                    "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT"},
}  # fmt: skip


class SlowDtypeWarning(UserWarning):
    """A half-precision model runs on a CPU that has no instructions for its dtype (torch emulates them, slowly)."""


def cpu_capabilities() -> dict:
    """torch's view of this CPU's features (`torch.cpu.get_capabilities()`, torch >= 2.8); {} where unknown."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if get is not None else {}


def has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has instructions for `dtype` matmuls (float32/float64: always). Respects oneDNN's ISA cap,
    so an AVX2-only machine emulated with ONEDNN_MAX_CPU_ISA=AVX2 counts as one."""
    if dtype in (torch.float32, torch.float64):
        return True
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    features = cpu_capabilities()
    if not any(features.get(name) for name in NATIVE_FEATURES.get((machine, dtype), ())):
        return False
    isa_cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return not isa_cap or isa_cap in ONEDNN_ISAS_WITH.get(dtype, ())


def warn_if_slow_on_cpu(dtype: torch.dtype | None, device: str | torch.device = "cpu") -> None:
    """Warn (once per process) that a bf16/fp16 model on this CPU runs without instructions for it."""
    if dtype is None or torch.device(device).type != "cpu" or has_native(dtype):
        return
    name = str(dtype).removeprefix("torch.")
    warnings.warn(  # stacklevel 1: one location, so Python's default filter shows it once per process
        f"{name} on a CPU without {name} instructions ({platform.machine()}, no "
        f"{'/'.join(NATIVE_FEATURES.get(('x86_64', dtype), ()))}): torch emulates them and inference is several times "
        f"slower than float32 (0.11x measured on AVX2); load the model in float32, or with dtype 'auto'",
        SlowDtypeWarning,
    )
