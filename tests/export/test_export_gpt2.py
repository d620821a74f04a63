"""Export to a plain transformers GPT-2 folder: loads without hf_scratch_gpt, weights bit for bit, logits to float32
rounding, every config variant carried (untied head, activations, bfloat16), nothing written on failure."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from export_models import save_variant
from safetensors.torch import load_file

from hf_scratch_gpt import ScratchGPTForCausalLM, from_hf_gpt2, to_hf_gpt2
from hf_scratch_gpt.export import export_gpt2, export_model
from hf_scratch_gpt.export import gpt2 as gpt2_export
from hf_scratch_gpt.export.common import CHECK_TEXT, EXPORT_REPORT_NAME


def leftovers(parent: Path) -> list[str]:
    """Hidden staging folders/files an export leaves next to its destination (none, ever)."""
    return sorted(entry.name for entry in parent.iterdir() if entry.name.startswith("."))


def assert_same_bits(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name].view(torch.int16 if tensor.element_size() == 2 else torch.int32),
                           tensor.contiguous().view(torch.int16 if tensor.element_size() == 2 else torch.int32)), name


def in_process_plain_check(folder, ids, text):
    """`run_plain_transformers` in this process (no new interpreter, so hf_scratch_gpt is importable): the same
    loading, logits and facts, for the tests whose subject is not that isolation (which the module's own export,
    `test_plain_transformers_user_...` and `test_the_check_refuses_...` exercise)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=False, dtype=torch.float32, output_loading_info=True
    )
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([ids]), use_cache=False).logits
    facts = {
        "config_class": type(config).__module__ + "." + type(config).__name__,
        "model_class": type(model).__module__ + "." + type(model).__name__,
        "auto_map": getattr(config, "auto_map", None),
        "loading_info": {key: sorted(map(str, value)) for key, value in info.items()},
        "transformers": transformers.__version__,
        "imported": [],
    }
    if text:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        facts["tokenizer_class"] = type(tokenizer).__module__ + "." + type(tokenizer).__name__
        facts["text_ids"] = tokenizer(text, add_special_tokens=False).input_ids
    return logits, facts


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(gpt2_export, "run_plain_transformers", in_process_plain_check)


@pytest.fixture(scope="module")
def exported(tiny_folder, tmp_path_factory):
    folder, model, tokenizer = tiny_folder
    out = tmp_path_factory.mktemp("gpt2") / "plain"
    return export_gpt2(folder, out), out, model, tokenizer


def test_the_folder_is_a_plain_gpt2(exported):
    report, out, model, _ = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert "auto_map" not in config and not list(out.glob("*.py"))
    assert sorted(p.name for p in out.iterdir()) == report.files == [
        "README.md", "config.json", EXPORT_REPORT_NAME, "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json",
    ]
    # The weights file is GPT-2's layout: Conv1D (in, out) weights, the tied head stored once.
    assert_same_bits(load_file(out / "model.safetensors"), {
        name: tensor for name, tensor in to_hf_gpt2(model).state_dict().items() if name != "lm_head.weight"
    })  # fmt: skip


def test_report_card_and_metadata_carry_the_check(exported):
    report, out, _, _ = exported
    assert report.format == "gpt2" and report.dtype == "float32"
    assert 0 < report.max_abs_diff <= report.bound and report.max_abs_error <= report.bound
    assert report.prompt_tokens > 20 and report.runtime.startswith("transformers ")
    assert any("bit for bit" in check for check in report.checks)
    assert json.loads((out / EXPORT_REPORT_NAME).read_text()) == json.loads(json.dumps(report.to_dict()))
    card = (out / "README.md").read_text()
    assert f"{report.max_abs_diff:.3g}" in card and "library_name: transformers" in card


# A new interpreter in which importing hf_scratch_gpt raises: load the export with plain transformers, print its
# logits on the ids and its greedy continuation.
PLAIN_USER = textwrap.dedent(
    """
    import json, sys
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_scratch_gpt":
                raise ImportError("no hf_scratch_gpt here")
    sys.meta_path.insert(0, Refuse())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    folder = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(sys.argv[2], return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    print(json.dumps({"ids": ids[0].tolist(), "generated": generated[0].tolist(), "class": type(model).__name__}))
    """
)


def test_plain_transformers_user_generates_what_scratch_gpt_generates(exported):
    _, out, model, tokenizer = exported
    result = subprocess.run([sys.executable, "-c", PLAIN_USER, str(out), CHECK_TEXT], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    ids = tokenizer(CHECK_TEXT, return_tensors="pt").input_ids
    assert facts["class"] == "GPT2LMHeadModel" and facts["ids"] == ids[0].tolist()
    ours = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert facts["generated"] == ours[0].tolist()


def test_the_check_refuses_a_folder_that_needs_hf_scratch_gpt(tiny_folder):
    """The plain-transformers check can fail: the ScratchGPT folder itself (custom code, auto_map) does not load."""
    folder, _, _ = tiny_folder
    with pytest.raises(ValueError, match="does not load with plain transformers"):
        gpt2_export.run_plain_transformers(folder, [1, 2, 3], None)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_untied_head_padded_vocabulary_and_other_activations(tmp_path, tokenizer, activation, in_process):
    folder = tmp_path / "model"
    model = save_variant(folder, tokenizer, vocab_size=len(tokenizer) + 7, tie_word_embeddings=False,
                         activation_function=activation)  # fmt: skip
    report = export_gpt2(folder, tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["activation_function"] == activation and config["tie_word_embeddings"] is False
    assert "lm_head.weight" in load_file(tmp_path / "plain" / "model.safetensors")
    assert_same_bits(from_hf_gpt2(tmp_path / "plain").state_dict(), model.state_dict())
    assert report.max_abs_error <= report.bound


def test_bfloat16_weights_stay_bfloat16_bit_for_bit(tmp_path, tokenizer, in_process):
    folder = tmp_path / "model"
    model = save_variant(folder, tokenizer, dtype=torch.bfloat16)
    report = export_gpt2(folder, tmp_path / "plain")
    assert report.dtype == "bfloat16"
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["dtype"] == "bfloat16"
    assert_same_bits(from_hf_gpt2(tmp_path / "plain").state_dict(), model.state_dict())


def test_a_folder_without_tokenizer_exports_without_one(tmp_path, no_tokenizer_folder, in_process):
    folder, _ = no_tokenizer_folder
    report = export_model(folder, tmp_path / "plain", to="gpt2")
    assert not (tmp_path / "plain" / "tokenizer.json").exists()
    assert any("tokenizer" in item for item in report.not_carried)


def test_existing_destination_is_refused_and_kept(tmp_path, tiny_folder):
    folder, _, _ = tiny_folder
    out = tmp_path / "plain"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        export_gpt2(folder, out)
    with pytest.raises(FileExistsError, match="not a gpt2 export"):
        export_gpt2(folder, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and leftovers(tmp_path) == []


def test_overwrite_replaces_an_earlier_export_only(tmp_path, tiny_folder, in_process):
    folder, _, _ = tiny_folder
    out = tmp_path / "plain"
    export_gpt2(folder, out)
    export_gpt2(folder, out, overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        export_gpt2(folder, out, overwrite=True)
    assert leftovers(tmp_path) == []


def test_the_model_folder_itself_is_refused(tiny_folder):
    folder, _, _ = tiny_folder
    with pytest.raises(ValueError, match="model folder itself"):
        export_gpt2(folder, folder, overwrite=True)
    with pytest.raises(ValueError, match="contains the model folder"):
        export_gpt2(folder, folder.parent, overwrite=True)


def test_a_failed_check_writes_nothing(tmp_path, tiny_folder, monkeypatch):
    """A GPT-2 whose weights differ from the source (here: one value) fails the round trip; nothing is published."""
    folder, _, _ = tiny_folder
    real = gpt2_export.to_hf_gpt2

    def off_by_one_value(model: ScratchGPTForCausalLM):
        gpt2 = real(model)
        with torch.no_grad():
            gpt2.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
        return gpt2

    monkeypatch.setattr(gpt2_export, "to_hf_gpt2", off_by_one_value)
    with pytest.raises(ValueError, match="bit for bit"):
        export_gpt2(folder, tmp_path / "plain")
    assert list(tmp_path.iterdir()) == []


def test_logits_beyond_float32_rounding_fail_the_check(tmp_path, tiny_folder, monkeypatch):
    folder, _, _ = tiny_folder

    def shifted(*args):
        logits, facts = in_process_plain_check(*args)
        return logits + 1e-3 * logits.abs().max(), facts

    monkeypatch.setattr(gpt2_export, "run_plain_transformers", shifted)
    with pytest.raises(ValueError, match="does not reproduce the model"):
        export_gpt2(folder, tmp_path / "plain")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model("x", "y", to="tflite")
