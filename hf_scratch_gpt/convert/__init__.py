"""Import of models trained with other from-scratch GPT-2 projects: nanoGPT's `ckpt.pt`, llm.c's `model.bin` and
the "LLMs from scratch" book's `GPTModel` state dict, each into a `from_pretrained`-ready ScratchGPT folder that is
verified against the source project's own forward before it is published (`common.publish_conversion`).

One function per format; `CONVERTERS` maps the CLI's `--from` names to them. OpenAI's TensorFlow checkpoints have
their own converter, `hf_scratch_gpt.openai.convert`.
"""

from .common import PeerConversionReport
from .lfs import convert_lfs
from .llmc import convert_llmc
from .nanogpt import convert_nanogpt

CONVERTERS = {"nanogpt": convert_nanogpt, "llmc": convert_llmc, "lfs": convert_lfs}

__all__ = ["CONVERTERS", "PeerConversionReport", "convert_lfs", "convert_llmc", "convert_nanogpt"]
