"""Session fixtures for the OpenAI converter tests: one tiny OpenAI-layout checkpoint and its conversion, built
once (TensorFlow is slow to import; every test after the first reuses the files)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("tensorflow", reason="the OpenAI converter tests need the 'convert' extra (TensorFlow)")

from openai_checkpoints import write_openai_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def openai_ckpt(tmp_path_factory) -> Path:
    """A complete OpenAI-layout folder: 2 layers, width 32, 4 heads, context 32, a 321-token byte-level BPE."""
    folder = tmp_path_factory.mktemp("openai") / "tiny"
    write_openai_checkpoint(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def converted(openai_ckpt, tmp_path_factory):
    """(output folder, ConversionReport) of the float32 conversion of `openai_ckpt`."""
    from hf_scratch_gpt.openai.convert import convert_openai_checkpoint

    out = tmp_path_factory.mktemp("converted") / "tiny-hf"
    return out, convert_openai_checkpoint(openai_ckpt, out)
