"""Export to ONNX (no KV cache): a valid graph with dynamic batch and sequence axes whose onnxruntime logits agree
with ScratchGPT to float32 rounding on shapes and masks it was not checked on; nothing written on failure."""

import json

import numpy as np
import pytest
import torch
from export_models import save_variant
from helpers import assert_close_rel

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from hf_scratch_gpt.export import export_onnx  # noqa: E402
from hf_scratch_gpt.export import onnx as onnx_export  # noqa: E402
from hf_scratch_gpt.export.common import EXPORT_REPORT_NAME  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_folder, tmp_path_factory):
    folder, model, tokenizer = tiny_folder
    out = tmp_path_factory.mktemp("onnx") / "graph"
    return export_onnx(folder, out), out, model


def test_the_folder_holds_a_valid_graph_with_dynamic_axes(exported):
    report, out, model = exported
    assert report.files == sorted(p.name for p in out.iterdir())
    assert {"model.onnx", "config.json", "tokenizer.json", "README.md", EXPORT_REPORT_NAME} <= set(report.files)
    onnx.checker.check_model(str(out / "model.onnx"))
    graph = onnx.load(str(out / "model.onnx")).graph
    shapes = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }
    vocab = model.config.vocab_size
    assert shapes == {
        "input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
        "logits": ["batch", "sequence", vocab],
    }  # fmt: skip
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"


def test_report_and_card_carry_the_check(exported):
    report, out, _ = exported
    assert report.dtype == "float32" and report.runtime.startswith("onnxruntime ")
    assert 0 < report.max_abs_diff and report.max_abs_error <= report.bound
    assert any("KV cache" in item for item in report.not_carried)
    assert f"{report.max_abs_diff:.3g}" in (out / "README.md").read_text()
    assert json.loads((out / EXPORT_REPORT_NAME).read_text())["max_abs_diff"] == report.max_abs_diff


def test_onnxruntime_agrees_on_new_shapes_and_padding(exported):
    """Batch 3, length 11 (neither was exported nor checked), right padding of different lengths."""
    _, out, model = exported
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    keep = attention_mask.bool()
    assert_close_rel(torch.from_numpy(logits)[keep], expected[keep])
    full = session.run(None, {"input_ids": input_ids[:1, :2].numpy(), "attention_mask": np.ones((1, 2), np.int64)})[0]
    assert_close_rel(torch.from_numpy(full), expected[:1, :2])  # causal: a prefix's logits do not see the rest


def test_untied_bfloat16_model_with_exact_gelu(tmp_path, tokenizer):
    folder = tmp_path / "model"
    save_variant(folder, tokenizer, dtype=torch.bfloat16, tie_word_embeddings=False, activation_function="gelu")
    report = export_onnx(folder, tmp_path / "graph")
    assert report.max_abs_error <= report.bound
    assert any("bfloat16" in item for item in report.not_carried)


def test_a_wrong_graph_is_refused_and_nothing_written(tmp_path, tiny_folder, monkeypatch):
    """A graph exported from slightly different weights fails onnxruntime's check; no folder is published."""
    folder, _, _ = tiny_folder
    real = onnx_export.export_graph

    def perturbed(model, path):
        with torch.no_grad():
            model.transformer.h[1].attn.c_proj.bias[0] += 1e-3  # one feature: a uniform shift would vanish in ln_f
        real(model, path)
        with torch.no_grad():
            model.transformer.h[1].attn.c_proj.bias[0] -= 1e-3

    monkeypatch.setattr(onnx_export, "export_graph", perturbed)
    with pytest.raises(ValueError, match="does not reproduce the model"):
        export_onnx(folder, tmp_path / "graph")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_refused(tmp_path, tiny_folder):
    folder, _, _ = tiny_folder
    (tmp_path / "graph").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(folder, tmp_path / "graph")
    with pytest.raises(FileExistsError, match="not a onnx export"):
        export_onnx(folder, tmp_path / "graph", overwrite=True)
