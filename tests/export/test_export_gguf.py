"""Export to GGUF for llama.cpp. Fast tests read the file back with gguf's own reader (tensors exactly, metadata
exactly, the tokenizer as llama.cpp's gpt2 vocabulary needs it) and check the ggml reference's roundings against
gguf's quantizer; the slow tests (llama-cpp-python, which compiles llama.cpp to install) run the file in llama.cpp."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from export_models import save_variant

gguf = pytest.importorskip("gguf")

from hf_scratch_gpt.export import export_gguf  # noqa: E402
from hf_scratch_gpt.export import gguf as gguf_export  # noqa: E402
from hf_scratch_gpt.export.ggml_reference import ggml_gelu, round_to_q8_0  # noqa: E402
from hf_scratch_gpt.gpt2_weights import weight_name_table  # noqa: E402

TYPES = gguf.GGMLQuantizationType
ARCH = "gpt2"


def expected_names(n_layer: int, tied: bool) -> set[str]:
    """The tensor names llama.cpp's gpt2 loads, from gguf's constants (not from the exporter)."""
    names = {gguf.TENSOR_NAMES[t] for t in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.POS_EMBD)}
    names = {f"{n}.weight" for n in names} | {"output_norm.weight", "output_norm.bias"}
    if not tied:
        names.add(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight")
    for i in range(n_layer):
        for tensor in (gguf.MODEL_TENSOR.ATTN_NORM, gguf.MODEL_TENSOR.ATTN_QKV, gguf.MODEL_TENSOR.ATTN_OUT,
                       gguf.MODEL_TENSOR.FFN_NORM, gguf.MODEL_TENSOR.FFN_UP, gguf.MODEL_TENSOR.FFN_DOWN):  # fmt: skip
            base = gguf.TENSOR_NAMES[tensor].format(bid=i)
            names |= {f"{base}.weight", f"{base}.bias"}
    assert set(gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2]) >= {
        gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT, gguf.MODEL_TENSOR.ATTN_QKV, gguf.MODEL_TENSOR.FFN_DOWN
    }
    return names


def read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def weights_by_gguf_name(model) -> dict[str, torch.Tensor]:
    """ScratchGPT's tensors under their GGUF names (the (out, in) Linear layout is GGUF's: no transposes)."""
    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    state = model.state_dict()
    return {
        name_map.get_name(gpt2, try_suffixes=(".weight", ".bias")): state[ours].float()
        for gpt2, ours in weight_name_table(config.n_layer, config.tie_word_embeddings).items()
    }


@pytest.fixture(scope="module")
def exports(tiny_folder, tmp_path_factory):
    folder, model, tokenizer = tiny_folder
    root = tmp_path_factory.mktemp("gguf")
    reports = {
        dtype: export_gguf(folder, root / f"tiny-{dtype}.gguf", dtype=dtype, llama_cpp=False)
        for dtype in gguf_export.GGUF_DTYPES
    }
    return reports, root, model, tokenizer


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_tensors_read_back_exactly(exports, dtype):
    reports, root, model, _ = exports
    _, tensors = read(root / f"tiny-{dtype}.gguf")
    assert set(tensors) == expected_names(model.config.n_layer, tied=True)
    for name, weight in weights_by_gguf_name(model).items():
        tensor = tensors[name]
        shape = tuple(int(n) for n in reversed(tensor.shape))
        assert shape == tuple(weight.shape), name
        stays_f32 = weight.dim() == 1 or name.startswith("position_embd")
        want = TYPES.F32 if stays_f32 or dtype == "f32" else TYPES[dtype.upper()]
        assert tensor.tensor_type == want, name
        values = np.asarray(tensor.data)
        if want == TYPES.F32:
            assert np.array_equal(values.reshape(shape), weight.numpy()), name
        elif want == TYPES.F16:
            assert np.array_equal(values.reshape(shape), weight.numpy().astype(np.float16)), name
        else:  # Q8_0: the bytes are gguf's own quantization of the weight (llama.cpp's reference quantizer)
            assert values.tobytes() == gguf.quants.quantize(weight.numpy(), TYPES.Q8_0).tobytes(), name
            restored = gguf.quants.dequantize(values, TYPES.Q8_0).reshape(shape)
            block_max = np.abs(weight.numpy().reshape(-1, 32)).max(axis=1).repeat(32).reshape(shape)
            # Half a step (max/127) of rounding, plus the scale's own F16 rounding (these scales are F16 normals)
            # times up to 127 steps.
            assert (block_max / 127 >= 2.0**-14).all()
            assert np.all(np.abs(restored - weight.numpy()) <= block_max / 127 * 0.5 + block_max * 2.0**-11), name


def test_metadata_is_llama_cpps_gpt2(exports, tiny_folder):
    reports, root, model, tokenizer = exports
    fields, _ = read(root / "tiny-f16.gguf")
    config = model.config
    assert fields["general.architecture"] == ARCH and fields["general.type"] == "model"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    assert fields[f"{ARCH}.context_length"] == config.n_positions
    assert fields[f"{ARCH}.embedding_length"] == config.n_embd
    assert fields[f"{ARCH}.feed_forward_length"] == 4 * config.n_embd
    assert fields[f"{ARCH}.block_count"] == config.n_layer
    assert fields[f"{ARCH}.attention.head_count"] == config.n_head
    assert fields[f"{ARCH}.attention.layer_norm_epsilon"] == pytest.approx(config.layer_norm_epsilon, rel=1e-7)
    # The tokenizer: GPT-2's BPE as llama.cpp's gpt2 vocabulary reads it.
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    vocab = tokenizer.get_vocab()
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = fields["tokenizer.ggml.token_type"]
    assert types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL and set(types) == {1, 3}
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(pair) for pair in merges]
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_eos_token"] is False


def test_the_check_figures_are_in_the_file(exports):
    reports, root, _, _ = exports
    for dtype, report in reports.items():
        fields, _ = read(root / f"tiny-{dtype}.gguf")
        assert fields["hf_scratch_gpt.export.max_abs_diff"] == report.max_abs_diff
        assert fields["hf_scratch_gpt.export.prompt_tokens"] == report.prompt_tokens
        assert json.loads(fields["hf_scratch_gpt.export.report"])["bound"] == report.bound
        assert "llama.cpp not run" in fields["hf_scratch_gpt.export.runtime"]
        assert fields["general.description"] == report.summary()


def test_reported_differences_grow_with_the_rounding(exports):
    """Without llama.cpp the figures are the ggml reference's: f32 differs from ScratchGPT by ggml's F16 GELU
    table alone, f16 and q8_0 by their weights and activations as well."""
    reports, _, _, _ = exports
    f32, f16, q8 = (reports[d] for d in ("f32", "f16", "q8_0"))
    assert f32.source_error < f32.max_abs_diff < f16.max_abs_diff < q8.max_abs_diff
    largest = max(r.details["format_error"] for r in reports.values())
    assert all(r.max_abs_error <= r.bound for r in reports.values()) and largest < 0.1 * q8.details["largest_logit"]


def test_untied_head_padded_vocabulary_and_q8_0_fallback(untied_folder, tmp_path, tokenizer):
    folder, model = untied_folder
    report = export_gguf(folder, tmp_path / "m.gguf", dtype="q8_0", llama_cpp=False)
    fields, tensors = read(tmp_path / "m.gguf")
    assert set(tensors) == expected_names(model.config.n_layer, tied=False)
    output = tensors["output.weight"]
    assert gguf.quants.dequantize(np.asarray(output.data), TYPES.Q8_0).shape == tuple(model.lm_head.weight.shape)
    assert fields[f"{ARCH}.feed_forward_length"] == 80
    # ffn_down's rows are 80 long, not a multiple of Q8_0's 32: F16, as llama.cpp's converter falls back.
    assert tensors["blk.0.ffn_down.weight"].tensor_type == TYPES.F16
    assert tensors["blk.0.ffn_up.weight"].tensor_type == TYPES.Q8_0
    assert any("blk.0.ffn_down.weight" in item for item in report.not_carried)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == model.config.vocab_size == len(tokenizer) + 20
    assert tokens[len(tokenizer)] == f"[PAD{len(tokenizer)}]" and types[-1] == gguf.TokenType.UNUSED


def test_what_llama_cpps_gpt2_cannot_carry_is_refused(tmp_path, tokenizer, no_tokenizer_folder):
    exact_gelu = tmp_path / "exact-gelu"
    save_variant(exact_gelu, tokenizer, activation_function="gelu")
    with pytest.raises(ValueError, match="activation_function is 'gelu'"):
        export_gguf(exact_gelu, tmp_path / "a.gguf", llama_cpp=False)
    folder, _ = no_tokenizer_folder
    with pytest.raises(ValueError, match="has no tokenizer"):
        export_gguf(folder, tmp_path / "b.gguf", llama_cpp=False)
    prefix_space = tmp_path / "prefix-space"
    save_variant(prefix_space, tokenizer)
    # A GPT-2 BPE that prepends a space (as RoBERTa's does): llama.cpp's "gpt-2" pre-tokenizer would not.
    settings = json.loads((prefix_space / "tokenizer_config.json").read_text())
    (prefix_space / "tokenizer_config.json").write_text(json.dumps({**settings, "add_prefix_space": True}))
    with pytest.raises(ValueError, match="not GPT-2's byte-level BPE"):
        export_gguf(prefix_space, tmp_path / "c.gguf", llama_cpp=False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_gguf(prefix_space, tmp_path / "d.gguf", dtype="q4_0", llama_cpp=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exact-gelu", "prefix-space"]


def test_existing_file_is_refused_and_only_a_gguf_replaced(tmp_path, tiny_folder):
    folder, _, _ = tiny_folder
    other = tmp_path / "notes.gguf"
    other.write_text("not a model")
    with pytest.raises(FileExistsError, match="already exists"):
        export_gguf(folder, other, llama_cpp=False)
    with pytest.raises(FileExistsError, match="not a GGUF file"):
        export_gguf(folder, other, overwrite=True, llama_cpp=False)
    assert other.read_text() == "not a model"
    out = tmp_path / "m.gguf"
    export_gguf(folder, out, llama_cpp=False)
    export_gguf(folder, out, dtype="f16", overwrite=True, llama_cpp=False)
    assert read(out)[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "notes.gguf"]


def test_llama_cpp_is_required_unless_declined(tmp_path, tiny_folder, monkeypatch):
    folder, _, _ = tiny_folder
    monkeypatch.setattr(gguf_export, "llama_cpp_available", lambda: False)
    with pytest.raises(ImportError, match="llama-cpp-python"):
        export_gguf(folder, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


# The ggml reference's roundings, against gguf's own implementations and torch's GELU.
def test_q8_0_activation_rounding_is_ggmls_quantization():
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(0)) * 3
    ours = round_to_q8_0(x.double()).numpy()
    theirs = gguf.quants.dequantize(gguf.quants.quantize(x.numpy(), TYPES.Q8_0), TYPES.Q8_0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_ggml_gelu_is_the_tanh_gelu_within_f16_rounding():
    x = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    table = ggml_gelu(x)
    exact = F.gelu(x, approximate="tanh")
    assert torch.equal(table[x <= -10], torch.zeros_like(table[x <= -10])) and torch.equal(table[x >= 10], x[x >= 10])
    assert ((table - exact).abs() <= 2.0**-9 * (x.abs() + 1e-3)).all()
    inside = table[x.abs() < 10]
    assert torch.equal(inside, inside.to(torch.float16).to(torch.float64))  # every table value is an F16


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_a_weight_in_the_wrong_layout_is_refused(tmp_path, tiny_folder, monkeypatch, dtype):
    """attn_output is square: written transposed it would load and run; the values check refuses it."""
    folder, _, _ = tiny_folder
    real = gguf_export.plan_tensors

    def transposed_attn_output(model, dtype):
        planned = real(model, dtype)
        for tensor in planned:
            if tensor.name == "blk.1.attn_output.weight":
                weight = model.state_dict()[tensor.source].t().contiguous().numpy()
                tensor.data, tensor.qtype = gguf_export.encode_tensor(gguf, weight, tensor.qtype)
        return planned

    monkeypatch.setattr(gguf_export, "plan_tensors", transposed_attn_output)
    with pytest.raises(ValueError, match="does not hold transformer.h.1.attn.c_proj.weight's values"):
        export_gguf(folder, tmp_path / "m.gguf", dtype=dtype, llama_cpp=False)
    assert list(tmp_path.iterdir()) == []


NO_LLAMA_CPP = "llama-cpp-python is not installed (pip install 'hf-scratch-gpt[llama]')"


# llama.cpp itself. llama-cpp-python compiles llama.cpp when it installs (tens of minutes on two cores), so it is
# not in the test extras: these run with `-m slow` where it is installed, and are skipped (saying so) elsewhere.
@pytest.fixture(scope="module")
def llama_cpp_reports(tiny_folder, untied_folder, tmp_path_factory):
    pytest.importorskip("llama_cpp", reason=NO_LLAMA_CPP)
    root = tmp_path_factory.mktemp("llama")
    reports = {}
    for name, folder in (("tiny", tiny_folder[0]), ("untied", untied_folder[0])):
        for dtype in gguf_export.GGUF_DTYPES:
            reports[name, dtype] = export_gguf(folder, root / f"{name}-{dtype}.gguf", dtype=dtype)
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "untied"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_runs_the_file_as_ggml_computes_it(llama_cpp_reports, model, dtype):
    report = llama_cpp_reports[model, dtype]
    assert report.runtime.startswith("llama.cpp (llama-cpp-python ")
    assert any("llama.cpp tokenizes the check text" in check for check in report.checks)
    fidelity, format_error = report.details["llama_cpp_fidelity"], report.details["format_error"]
    float32 = 8 * max(report.source_error, 2.0**-23 * report.details["largest_logit"])
    assert fidelity <= gguf_export.GGML_AGREEMENT * format_error + float32
    # llama.cpp is nearer the reference with ggml's F16 GELU table than the exact model is (measured 0.0-0.25 of
    # the way on these two-layer models; ~1.0 against a reference with an exact GELU).
    assert fidelity < 0.6 * format_error
    assert report.max_abs_error <= report.bound
    # The stated bounds on |llama.cpp − ScratchGPT float32| / largest logit, for these random models (measured:
    # f32 3.7e-4-4.8e-4, f16 2.1e-3-2.2e-3, q8_0 4.6e-2-4.9e-2; a briefly trained 4-layer model: 5e-5, 3e-4, 1.2e-2).
    relative = report.max_abs_diff / report.details["largest_logit"]
    assert relative <= {"f32": 1e-3, "f16": 5e-3, "q8_0": 1e-1}[dtype], relative


@pytest.mark.slow
def test_llama_cpp_refuses_a_file_with_a_wrong_hyperparameter(tmp_path, tiny_folder, monkeypatch):
    """A GGUF whose layer-norm epsilon is off reads back as written but does not compute the model in llama.cpp."""
    pytest.importorskip("llama_cpp", reason=NO_LLAMA_CPP)
    folder, _, _ = tiny_folder
    real = gguf_export.metadata

    def wrong_epsilon(*args):
        values = real(*args)
        values[f"{ARCH}.attention.layer_norm_epsilon"] = 1e-2
        return values

    monkeypatch.setattr(gguf_export, "metadata", wrong_epsilon)
    with pytest.raises(ValueError, match="llama.cpp does not compute this model"):
        export_gguf(folder, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_q8_0_limit_covers_subnormal_scales():
    """Blocks whose F16 scale is subnormal (largest value below 127 x 2^-14) round their scale coarser than 2^-11."""
    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * torch.logspace(-5, 0, 64).unsqueeze(1)
    restored = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), TYPES.Q8_0), TYPES.Q8_0)
    error = (torch.from_numpy(restored).double() - weight.double()).abs()
    limit = gguf_export.q8_0_rounding_limit(weight.double())
    assert (error <= limit).all()
    block_max = weight.abs().reshape(-1, 32).amax(dim=1, keepdim=True).expand(-1, 32).reshape(weight.shape).double()
    assert (error > block_max / 127 * 0.5 + block_max * 2.0**-11).any()  # the normal-scale formula alone fails
