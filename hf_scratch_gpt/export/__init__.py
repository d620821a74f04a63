"""Export a saved ScratchGPT folder to the runtimes where models run; each export is checked in its runtime.

| format | writes | checked with |
|---|---|---|
| `gpt2` | a plain `GPT2LMHeadModel` folder (transformers alone) | transformers in a process without this package |
| `onnx` | `model.onnx` (logits of input_ids + attention_mask; no KV cache) | onnxruntime |
| `gguf` | one GGUF file (llama.cpp's `gpt2` architecture; f32, f16, q8_0) | llama.cpp (llama-cpp-python) |

Each function builds its output next to the destination and publishes it only after the check has passed; it
returns an `ExportReport` with max |Δ logits| on a fixed prompt, which is also written into the export (its card
and `export_report.json`, or the GGUF's metadata). The heavy optional libraries (onnx, onnxruntime, onnxscript,
gguf, llama-cpp-python) are imported only by the format that needs them.
"""

from __future__ import annotations

import os
from typing import Any

from .common import ExportReport

EXPORT_FORMATS = ("gpt2", "onnx", "gguf")


def export_gpt2(model_dir: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> ExportReport:
    """See `hf_scratch_gpt.export.gpt2.export_gpt2`."""
    from .gpt2 import export_gpt2 as _export

    return _export(model_dir, out, **kwargs)


def export_onnx(model_dir: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> ExportReport:
    """See `hf_scratch_gpt.export.onnx.export_onnx` (needs onnx, onnxscript and onnxruntime)."""
    from .onnx import export_onnx as _export

    return _export(model_dir, out, **kwargs)


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> ExportReport:
    """See `hf_scratch_gpt.export.gguf.export_gguf` (needs gguf; its llama.cpp check needs llama-cpp-python)."""
    from .gguf import export_gguf as _export

    return _export(model_dir, out, **kwargs)


EXPORTERS = {"gpt2": export_gpt2, "onnx": export_onnx, "gguf": export_gguf}


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, to: str, **kwargs: Any) -> ExportReport:
    """Export `model_dir` to `out` in the format `to` (one of `EXPORT_FORMATS`); `kwargs` go to that format's
    function."""
    if to not in EXPORTERS:
        raise ValueError(f"unknown export format {to!r}; expected one of {list(EXPORT_FORMATS)}")
    return EXPORTERS[to](model_dir, out, **kwargs)


__all__ = ["EXPORT_FORMATS", "ExportReport", "export_gguf", "export_gpt2", "export_model", "export_onnx"]
