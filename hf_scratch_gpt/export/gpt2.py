"""Export to a plain transformers GPT-2 folder (`GPT2LMHeadModel`), which loads without this package.

The weights go through `to_hf_gpt2` (a name table and one transpose, exact) and are saved with
`GPT2LMHeadModel.save_pretrained`: `config.json` (model_type gpt2, architectures GPT2LMHeadModel, no `auto_map`),
`model.safetensors`, `generation_config.json` (the source's own when it has one). The tokenizer files are copied as
they are, and a card and `export_report.json` say how the folder was checked:

- weights bit for bit: `from_hf_gpt2` of the folder equals the source state dict exactly (names, dtypes, values);
- in a new Python process in which importing `hf_scratch_gpt` raises, `AutoModelForCausalLM.from_pretrained`
  with `trust_remote_code=False` loads a `GPT2LMHeadModel` from transformers itself with every tensor received,
  its float32 logits on the check prompt agree with ScratchGPT's to float32 rounding (GPT-2's Conv1D `addmm` and
  ScratchGPT's `F.linear` sum in different orders: equal to rounding, not to the bit), and `AutoTokenizer` encodes
  the check text to the source tokenizer's ids.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch

from ..gpt2_weights import from_hf_gpt2, to_hf_gpt2
from ..loading import GENERATION_CONFIG_NAME, TOKENIZER_FILES, folder_file
from .common import (
    CHECK_TEXT,
    EXPORT_REPORT_NAME,
    README_NAME,
    WARM_UP_VECTOR_MATH,
    ExportReport,
    check_against_reference,
    check_destination,
    check_prompt,
    format_figure,
    load_source,
    publish_folder,
    reference_logits,
    replaceable_folder_check,
    staging_folder,
    write_json,
)
from .cards import render_export_card

logger = logging.getLogger(__name__)

FORMAT = "gpt2"
# What an export folder holds: an existing folder of only these (and an export_report.json saying "gpt2") may be
# replaced with overwrite=True.
EXPORTED_FILE = re.compile(
    r"config\.json|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
    + "|".join(re.escape(name) for name in TOKENIZER_FILES)
    + rf"|{re.escape(README_NAME)}|{re.escape(EXPORT_REPORT_NAME)}"
)
check_replaceable = replaceable_folder_check(FORMAT, EXPORTED_FILE)
# ScratchGPT config fields GPT2Config has no place for. Both only shape training; neither changes a logit.
TRAINING_ONLY_FIELDS = ("label_smoothing", "loss_chunk_size")
PLAIN_CHECK_TIMEOUT_S = 600

# Run in a new interpreter: arguments FOLDER, IDS (JSON list), TEXT, LOGITS_OUT (.npy). Importing hf_scratch_gpt
# raises; the first vector-math calls are made before the forward (common.WARM_UP_VECTOR_MATH: a new process's
# first tanh can be slightly off); the model and tokenizer load with trust_remote_code=False; prints one
# JSON line of facts.
PLAIN_TRANSFORMERS_CHECK = textwrap.dedent(
    """
    import json, sys

    class RefuseHfScratchGpt:
        def find_spec(self, name, path=None, target=None):
            if name == "hf_scratch_gpt" or name.startswith("hf_scratch_gpt."):
                raise ImportError("the plain-transformers check must not import hf_scratch_gpt")
            return None

    sys.meta_path.insert(0, RefuseHfScratchGpt())
    folder, ids, text, logits_out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]

    import numpy as np
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    WARM_UP_VECTOR_MATH

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=False, dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
    np.save(logits_out, logits.numpy())
    facts = {
        "config_class": type(config).__module__ + "." + type(config).__name__,
        "model_class": type(model).__module__ + "." + type(model).__name__,
        "auto_map": getattr(config, "auto_map", None),
        "loading_info": {key: sorted(map(str, value)) for key, value in info.items()},
        "transformers": transformers.__version__,
    }
    if text:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        facts["tokenizer_class"] = type(tokenizer).__module__ + "." + type(tokenizer).__name__
        facts["text_ids"] = tokenizer(text, add_special_tokens=False).input_ids
    facts["imported"] = sorted(
        name for name in sys.modules if name.split(".")[0] in ("hf_scratch_gpt", "transformers_modules")
    )
    print(json.dumps(facts))
    """
).replace("WARM_UP_VECTOR_MATH\n", WARM_UP_VECTOR_MATH)


def run_plain_transformers(folder: Path, ids: list[int], text: str | None) -> tuple[torch.Tensor, dict]:
    """Load `folder` in a new process without hf_scratch_gpt; return its float32 logits on `ids` (1, T, V) and the
    facts it reports (classes, loading info, the tokenizer's ids for `text`)."""
    with tempfile.TemporaryDirectory(prefix="gpt2-export-check-") as scratch:
        logits_file = Path(scratch) / "logits.npy"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        result = subprocess.run(
            [sys.executable, "-c", PLAIN_TRANSFORMERS_CHECK, str(folder), json.dumps(ids), text or "",
             str(logits_file)],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=PLAIN_CHECK_TIMEOUT_S,
        )  # fmt: skip
        if result.returncode != 0:
            raise ValueError(
                f"the exported GPT-2 folder does not load with plain transformers (exit {result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        logits = torch.from_numpy(np.load(logits_file, allow_pickle=False))
    return logits, facts


def check_plain_facts(facts: dict) -> list[str]:
    """`ValueError` for any sign that the folder needed something besides transformers; the checks, in words."""
    expected = {
        "config_class": "transformers.models.gpt2.configuration_gpt2.GPT2Config",
        "model_class": "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel",
    }
    for key, value in expected.items():
        if facts[key] != value:
            raise ValueError(f"plain transformers loaded the export as {facts[key]}, expected {value}")
    if facts["auto_map"]:
        raise ValueError(f"the exported config.json has an auto_map {facts['auto_map']}; a plain GPT-2 has none")
    if facts["imported"]:
        raise ValueError(f"loading the export imported {facts['imported']}; it must need transformers alone")
    leftovers = {key: value for key, value in facts["loading_info"].items() if value}
    if leftovers:
        raise ValueError(f"GPT2LMHeadModel did not receive the export's tensors exactly: {leftovers}")
    return [
        f"loads as {expected['model_class']} with transformers {facts['transformers']} alone (trust_remote_code="
        "False, hf_scratch_gpt unimportable, no custom code imported, every tensor received)",
    ]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers of its width (so that NaNs and -0.0 compare by bits, not by value)."""
    integers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.contiguous().view(integers[tensor.element_size()])


def check_weights_round_trip(folder: Path, source_state: dict[str, torch.Tensor]) -> str:
    """`ValueError` unless `from_hf_gpt2(folder)` gives `source_state` exactly: names, dtypes and every bit."""
    back = from_hf_gpt2(folder).state_dict()
    if back.keys() != source_state.keys():
        raise ValueError(
            f"the export's weights read back under other names: missing {sorted(source_state.keys() - back.keys())}, "
            f"extra {sorted(back.keys() - source_state.keys())}"
        )
    for name, tensor in source_state.items():
        theirs = back[name]
        if theirs.dtype != tensor.dtype or theirs.shape != tensor.shape or not torch.equal(bits(theirs), bits(tensor)):
            raise ValueError(f"the export's {name} is not the source's bit for bit ({theirs.dtype} vs {tensor.dtype})")
    return "weights bit for bit: from_hf_gpt2 of the export equals the source state dict (names, dtypes, values)"


def export_gpt2(model_dir: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> ExportReport:
    """Export the ScratchGPT folder `model_dir` to `out`, a plain `GPT2LMHeadModel` folder that loads with
    transformers alone (see the module docstring for what is checked before `out` is written).

    `out` must not exist, unless `overwrite` and it is an earlier gpt2 export. Returns the `ExportReport`.
    """
    source_dir, out = Path(model_dir), Path(out)
    check_destination(source_dir, out, overwrite, check_replaceable)
    source = load_source(source_dir)
    model, config = source.model, source.model.config
    # Compared bit for bit after the round trip; copied now, before anything can touch the model.
    source_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    ids = check_prompt(config, source.tokenizer)

    with staging_folder(out) as tmp:
        gpt2 = to_hf_gpt2(model)
        generation_file = folder_file(source.folder, GENERATION_CONFIG_NAME)
        if generation_file is not None:
            from transformers import GenerationConfig

            gpt2.generation_config = GenerationConfig.from_pretrained(source.folder)
        gpt2.save_pretrained(tmp)
        del gpt2
        tokenizer_files = [name for name in TOKENIZER_FILES if folder_file(source.folder, name) is not None]
        if source.tokenizer is not None:
            for name in tokenizer_files:
                shutil.copyfile(source.folder / name, tmp / name)

        checks = [check_weights_round_trip(tmp, source_state)]
        del source_state
        text = CHECK_TEXT if source.tokenizer is not None else None
        logits, facts = run_plain_transformers(tmp, ids, text)
        checks += check_plain_facts(facts)
        if text is not None:
            expected_ids = source.tokenizer(text, add_special_tokens=False).input_ids
            if facts["text_ids"] != expected_ids:
                raise ValueError(
                    f"the exported tokenizer ({facts['tokenizer_class']}) encodes the check text to "
                    f"{facts['text_ids'][:12]}..., the source's to {expected_ids[:12]}..."
                )
            checks.append(f"AutoTokenizer ({facts['tokenizer_class']}) encodes the check text to the source's ids")
        reference = reference_logits(model, torch.tensor([ids]))
        figures = check_against_reference(logits, reference, "the exported GPT2LMHeadModel")

        training_only = ", ".join(f"{name}={getattr(config, name)!r}" for name in TRAINING_ONLY_FIELDS)
        not_carried = [
            f"ScratchGPT's training-only config fields {training_only} (GPT2Config has no such fields; they change "
            "no logit)",
        ]
        if source.tokenizer is None:
            not_carried.append("a tokenizer: the source folder has none")
        report = ExportReport(
            format=FORMAT, out=str(out), source=str(source.folder), dtype=str(model.dtype).removeprefix("torch."),
            files=[], runtime=f"transformers {facts['transformers']} (GPT2LMHeadModel, float32)",
            prompt_tokens=len(ids), checks=checks, not_carried=not_carried, **figures,
        )  # fmt: skip
        card = render_export_card(
            "exported_gpt2.md", source, out.name, tags=["gpt2"],
            model_path=str(out), head="tied to the token embedding" if config.tie_word_embeddings else "untied",
            activation_function=config.activation_function, dtype=report.dtype,
            tokenizer="copied from the source" if source.tokenizer is not None else "none (the source has none)",
            has_tokenizer=source.tokenizer is not None, transformers_version=facts["transformers"],
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


__all__ = ["export_gpt2", "run_plain_transformers"]
