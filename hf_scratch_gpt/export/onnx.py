"""Export to ONNX: one graph from token ids (+ attention mask) to logits, checked with onnxruntime.

The graph has **no KV cache**: inputs `input_ids` (int64, [batch, sequence]) and `attention_mask` (int64, [batch,
sequence], 1 = attend, 0 = padding), output `logits` (float32, [batch, sequence, vocab]); batch and sequence are
dynamic axes (sequence up to `n_positions`). Positions are 0..sequence-1 whatever the mask, as in the PyTorch
forward without `position_ids`: pad on the right to batch sequences of different lengths. Scoring and feature
extraction use it as it is; generating with it recomputes the whole prefix at every step.

Exported with `torch.onnx.export(..., dynamo=True)` (torch.export, then onnxscript's translation; it needs the
`onnxscript` package) in float32, whatever the stored dtype (bfloat16/float16 weights widen exactly). The check:
`onnx.checker`, then onnxruntime (CPU) on a batch of two check prompts (the second right-padded) and on a shorter
batch of one, each against the float32/float64 PyTorch logits: float32 rounding (see `common.float32_bound`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from ..gpt2_weights import config_to_gpt2
from ..loading import GENERATION_CONFIG_NAME, TOKENIZER_FILES, folder_file
from .cards import render_export_card
from .common import (
    EXPORT_REPORT_NAME,
    README_NAME,
    ExportReport,
    ReferenceLogits,
    check_against_reference,
    check_destination,
    check_prompt,
    format_figure,
    library_version,
    load_source,
    publish_folder,
    reference_logits,
    replaceable_folder_check,
    staging_folder,
    write_json,
)

logger = logging.getLogger(__name__)

FORMAT = "onnx"
MODEL_NAME = "model.onnx"
EXTERNAL_DATA_NAME = "model.onnx.data"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)
# A protobuf file cannot exceed 2 GiB: larger graphs keep their weights in model.onnx.data beside it.
MAX_SINGLE_FILE_BYTES = 1_800_000_000
EXPORTED_FILE = re.compile(
    rf"{re.escape(MODEL_NAME)}|{re.escape(EXTERNAL_DATA_NAME)}|config\.json|generation_config\.json|"
    + "|".join(re.escape(name) for name in TOKENIZER_FILES)
    + rf"|{re.escape(README_NAME)}|{re.escape(EXPORT_REPORT_NAME)}"
)
check_replaceable = replaceable_folder_check(FORMAT, EXPORTED_FILE)


def _import_onnx_stack():
    """onnx, onnxruntime (and onnxscript, which torch's exporter imports); ImportError with the install line."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) translates with it: fail here, by name)
    except ImportError as error:
        raise ImportError(
            f"the ONNX export needs onnx, onnxscript and onnxruntime ({error}): pip install 'hf-scratch-gpt[export]'"
        ) from error
    return onnx, onnxruntime


class LogitsGraph(nn.Module):
    """The exported function: (input_ids, attention_mask) → logits, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_graph(model: nn.Module, path: Path) -> None:
    """Write the float32 graph of `model` (eval) to `path` with dynamic batch and sequence axes."""
    n_positions = model.config.n_positions
    if n_positions < 2:
        raise ValueError(f"the ONNX export needs n_positions >= 2 for a dynamic sequence axis, got {n_positions}")
    # Example sizes: neither 0 nor 1 (torch.export specialises those), the sequence not equal to the batch.
    example_length = min(n_positions, 5)
    example = torch.zeros(2, example_length, dtype=torch.long)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=n_positions)
    dynamic = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    parameter_bytes = sum(p.numel() for p in model.parameters()) * 4
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms", ...
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            torch.onnx.export(
                LogitsGraph(model).eval(), (example, torch.ones_like(example)), str(path), dynamo=True,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic,
                external_data=parameter_bytes > MAX_SINGLE_FILE_BYTES, verbose=False,
            )  # fmt: skip
    finally:
        registration.setLevel(level)


def check_inputs(ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (input_ids, attention_mask) batches the graph is run on: the prompt beside a right-padded copy of itself
    (batch 2, padding: the last quarter), then its first half alone (another batch size and length)."""
    full = torch.tensor([ids, ids])
    mask = torch.ones_like(full)
    mask[1, len(ids) - max(len(ids) // 4, 1) :] = 0
    if len(ids) == 1:
        mask[1] = 1
    half = torch.tensor([ids[: max(len(ids) // 2, 1)]])
    return [(full, mask), (half, torch.ones_like(half))]


def run_onnxruntime(path: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The graph's logits for each batch, run by onnxruntime's CPU provider."""
    _, onnxruntime = _import_onnx_stack()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [entry.name for entry in session.get_inputs()]
    if names != list(INPUT_NAMES) or [entry.name for entry in session.get_outputs()] != list(OUTPUT_NAMES):
        raise ValueError(f"the ONNX graph has inputs {names}, expected {list(INPUT_NAMES)} → {list(OUTPUT_NAMES)}")
    outputs = []
    for input_ids, attention_mask in batches:
        (logits,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        outputs.append(torch.from_numpy(logits))
    return outputs


def check_graph_file(path: Path) -> dict:
    """onnx.checker on the saved graph; its opset and IR version and the axes of its inputs and output."""
    onnx, _ = _import_onnx_stack()
    onnx.checker.check_model(str(path))  # a path: external data, if any, is checked too
    graph_model = onnx.load(str(path), load_external_data=False)

    def axes(value_info) -> list:
        return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]

    facts = {
        "opset": {entry.domain or "ai.onnx": entry.version for entry in graph_model.opset_import},
        "ir_version": graph_model.ir_version,
        "inputs": {entry.name: axes(entry) for entry in graph_model.graph.input},
        "outputs": {entry.name: axes(entry) for entry in graph_model.graph.output},
    }
    for name, shape in {**facts["inputs"], **facts["outputs"]}.items():
        if any(isinstance(size, int) for size in shape[:2]):
            raise ValueError(f"the ONNX graph's {name} has shape {shape}: batch and sequence must be dynamic axes")
    return facts


def export_onnx(model_dir: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> ExportReport:
    """Export the ScratchGPT folder `model_dir` to the folder `out`: `model.onnx` (see the module docstring) with the
    GPT-2 `config.json`, the generation config and tokenizer files, a card and `export_report.json`.

    `out` must not exist, unless `overwrite` and it is an earlier onnx export. Returns the `ExportReport`.
    """
    onnx, onnxruntime = _import_onnx_stack()
    source_dir, out = Path(model_dir), Path(out)
    check_destination(source_dir, out, overwrite, check_replaceable)
    source = load_source(source_dir)
    model, config = source.model, source.model.config
    stored_dtype = model.dtype
    model.float()  # exact: every bfloat16/float16 value is a float32 value
    ids = check_prompt(config, source.tokenizer)
    batches = check_inputs(ids)

    with staging_folder(out) as tmp:
        export_graph(model, tmp / MODEL_NAME)
        facts = check_graph_file(tmp / MODEL_NAME)
        exported = run_onnxruntime(tmp / MODEL_NAME, batches)
        runs = []
        for (input_ids, attention_mask), logits in zip(batches, exported):
            reference: ReferenceLogits = reference_logits(model, input_ids, attention_mask)
            what = f"onnxruntime on a batch of shape {tuple(input_ids.shape)}"
            runs.append({"shape": list(input_ids.shape), **check_against_reference(logits, reference, what)})
        # Reported: the run nearest its bound (each was held to its own).
        tightest = max(runs, key=lambda run: run["max_abs_error"] / run["bound"])
        figures = {key: value for key, value in tightest.items() if key != "shape"}

        config_to_gpt2(config).save_pretrained(tmp)  # config.json: what the graph computes, in GPT-2's terms
        if folder_file(source.folder, GENERATION_CONFIG_NAME) is not None:
            shutil.copyfile(source.folder / GENERATION_CONFIG_NAME, tmp / GENERATION_CONFIG_NAME)
        if source.tokenizer is not None:
            for name in TOKENIZER_FILES:
                if folder_file(source.folder, name) is not None:
                    shutil.copyfile(source.folder / name, tmp / name)

        runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
        not_carried = [
            "a KV cache: the graph recomputes the whole sequence (inputs input_ids, attention_mask → logits)",
            "position_ids: positions are 0..sequence-1 whatever the mask (pad on the right)",
        ]
        if stored_dtype != torch.float32:
            not_carried.append(f"the stored dtype {str(stored_dtype).removeprefix('torch.')}: the graph is float32")
        report = ExportReport(
            format=FORMAT, out=str(out), source=str(source.folder), dtype="float32", files=[], runtime=runtime,
            prompt_tokens=len(ids), not_carried=not_carried,
            checks=[
                f"onnx.checker {onnx.__version__}: valid (opset {facts['opset']}, IR {facts['ir_version']})",
                f"dynamic axes: inputs {facts['inputs']}, output {facts['outputs']}",
                "onnxruntime logits on batch 2 (one row right-padded) and batch 1 (half length) agree with ScratchGPT "
                "to float32 rounding (compared where a position attends to at least one token)",
            ],
            details={
                "runs": runs, "opset": facts["opset"], "ir_version": facts["ir_version"], "torch": torch.__version__,
                "onnxscript": library_version("onnxscript"), "exporter": "torch.onnx.export(dynamo=True)",
            },
            **figures,
        )  # fmt: skip
        card = render_export_card(
            "exported_onnx.md", source, out.name, tags=["onnx", "gpt2"], library_name="onnx",
            model_path=str(out), model_file=MODEL_NAME, runtime=runtime, torch_version=torch.__version__,
            opset=facts["opset"].get("ai.onnx"), has_tokenizer=source.tokenizer is not None,
            max_abs_diff=format_figure(report.max_abs_diff), max_abs_error=format_figure(report.max_abs_error),
            source_error=format_figure(report.source_error), bound=format_figure(report.bound),
            bound_rule=report.bound_rule, prompt_tokens=report.prompt_tokens, not_carried=not_carried,
        )  # fmt: skip
        (tmp / README_NAME).write_text(card, encoding="utf-8")
        report.files = sorted([*(entry.name for entry in tmp.iterdir()), EXPORT_REPORT_NAME])
        write_json(tmp / EXPORT_REPORT_NAME, report.to_dict())
        publish_folder(tmp, out, overwrite, check_replaceable)
    logger.info(report.summary())
    return report


__all__ = ["export_onnx", "LogitsGraph"]
