"""Half precision on a CPU without instructions for it: `dtype="auto"` widens to float32, an explicit request warns.

The CPU's features come from `hf_scratch_gpt.cpu.capabilities()`; the tests replace them (or cap oneDNN's ISA the way
an AVX2-only machine is emulated) so they hold on every machine.
"""

import warnings

import pytest
import torch

from hf_scratch_gpt import cpu, decoding_scratch_gpt, load_model
from hf_scratch_gpt_cli import main
from saved_models import save_tiny_model_folder

AVX2_ONLY = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False, "avx512_fp16": False}
SAPPHIRE_RAPIDS = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "avx512_fp16": True}


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16") / "model"
    model, _ = save_tiny_model_folder(folder)
    model.to(torch.bfloat16).save_pretrained(folder)  # a half-precision checkpoint (config.json says bfloat16)
    return folder


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(decoding_scratch_gpt.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return lambda features: monkeypatch.setattr(decoding_scratch_gpt, "cpu_capabilities", lambda: dict(features))


def test_native_dtypes_follow_the_cpu_features_and_the_onednn_cap(x86, monkeypatch):
    x86(AVX2_ONLY)
    assert [cpu.has_native(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == [True, False, False]
    x86(SAPPHIRE_RAPIDS)
    assert [cpu.has_native(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == [True, True, True]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the emulation of an AVX2-only CPU hides them again
    assert [cpu.has_native(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == [True, False, False]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert [cpu.has_native(d) for d in (torch.bfloat16, torch.float16)] == [True, False]


def test_auto_widens_a_bf16_checkpoint_to_float32_exactly_where_the_cpu_lacks_bf16(x86, bf16_folder):
    x86(SAPPHIRE_RAPIDS)
    native = load_model(bf16_folder, dtype="auto")
    assert {p.dtype for p in native.parameters()} == {torch.bfloat16}
    x86(AVX2_ONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cpu.SlowDtypeWarning)  # auto never warns: it chose the fast dtype
        widened = load_model(bf16_folder, dtype="auto")
    assert {p.dtype for p in widened.parameters()} == {torch.float32}
    for (name, a), (_, b) in zip(native.state_dict().items(), widened.state_dict().items()):
        assert torch.equal(a.float(), b), f"{name}: widening bf16 to float32 must not change a value"
    assert cpu.auto_dtype(torch.bfloat16, device="cuda") == torch.bfloat16  # not a CPU: the checkpoint's dtype


def test_an_explicit_half_precision_dtype_on_such_a_cpu_warns_and_still_loads_it(x86, bf16_folder):
    x86(AVX2_ONLY)
    with pytest.warns(cpu.SlowDtypeWarning, match=r"bfloat16 on a CPU without bfloat16 instructions"):
        model = load_model(bf16_folder, dtype="bfloat16")
    assert model.dtype == torch.bfloat16  # the user's word is kept
    x86(SAPPHIRE_RAPIDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cpu.SlowDtypeWarning)
        load_model(bf16_folder, dtype="bfloat16")
        load_model(bf16_folder, dtype="float32")


def test_cli_generate_prints_the_warning_on_one_line(bf16_folder, monkeypatch, capsys):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # machine-independent: the cap hides bf16 on every CPU
    argv = ["generate", str(bf16_folder), "--prompt", "Hello", "--max-new-tokens", "2"]
    assert main(argv + ["--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if "without bfloat16 instructions" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("hf-scratch-gpt: warning: "), err
    assert "Traceback" not in err and "warnings.warn" not in err, err
    assert main(argv) == 0  # --dtype auto (the default): float32, no warning
    assert "without bfloat16 instructions" not in capsys.readouterr().err


def test_a_model_cast_to_bf16_warns_when_it_generates(x86, bf16_folder):
    """pipeline(..., dtype=torch.bfloat16), from_pretrained(dtype=...) and .to(torch.bfloat16) do not pass through
    load_model: generate is where such a model is caught."""
    model = load_model(bf16_folder, dtype="float32").to(torch.bfloat16)
    prompt = torch.tensor([[1, 2, 3]])
    x86(AVX2_ONLY)
    with pytest.warns(cpu.SlowDtypeWarning, match="several times slower than float32"):
        model.generate(prompt, max_new_tokens=1, do_sample=False)
    x86(SAPPHIRE_RAPIDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cpu.SlowDtypeWarning)
        model.generate(prompt, max_new_tokens=1, do_sample=False)
        model.float().generate(prompt, max_new_tokens=1, do_sample=False)


def test_describe_cpu_names_the_model_and_the_deciding_flags(x86, monkeypatch):
    x86(AVX2_ONLY)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = cpu.describe_cpu()
    assert cpu.cpu_name() in line and "flags: avx2" in line and "avx512_bf16" not in line, line
    assert "emulated limits: " in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line, line
