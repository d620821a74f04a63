"""Loading saved folders: clear errors naming the file, safetensors only, no trust_remote_code with the package.

Each bad folder is checked twice: what `hf_scratch_gpt.load_model` says, and what `from_pretrained` itself does
(recorded so that a transformers upgrade that changes it is noticed).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hf_scratch_gpt import ScratchGPTForCausalLM
from hf_scratch_gpt.loading import check_model_folder, load_model, load_tokenizer, read_config


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    from hf_scratch_gpt import ScratchGPTConfig

    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")).eval()
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def folder_copy(good_folder, tmp_path):
    source, _ = good_folder
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def _truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def test_load_model_round_trip(good_folder):
    folder, model = good_folder
    loaded = load_model(folder)
    assert type(loaded) is ScratchGPTForCausalLM and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("keep_fraction", [0.5, 0.99, 0.001])
def test_truncated_safetensors(folder_copy, keep_fraction):
    weights = folder_copy / "model.safetensors"
    _truncate(weights, keep_fraction)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file.*truncated or corrupted"):
        load_model(folder_copy)
    # transformers' own answer (SafetensorError "Error while deserializing header") does not name the file; the
    # model class checks each weight file's header first, so plain from_pretrained names it too.
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        AutoModelForCausalLM.from_pretrained(folder_copy)


def test_corrupted_safetensors_header(folder_copy):
    weights = folder_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32  # garbage where the JSON header starts
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(weights).replace(".", r"\.")):
        load_model(folder_copy)


def test_missing_config(folder_copy):
    (folder_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_model(folder_copy)
    with pytest.raises(ValueError, match="Unrecognized model"):  # transformers: names the folder, not the file
        AutoModelForCausalLM.from_pretrained(folder_copy)


def test_invalid_json_config(folder_copy):
    (folder_copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        load_model(folder_copy)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", None])
def test_wrong_model_type(folder_copy, model_type):
    config_file = folder_copy / "config.json"
    config = json.loads(config_file.read_text())
    if model_type is None:
        del config["model_type"]
    else:
        config["model_type"] = model_type
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config\.json has model_type {model_type!r}, expected 'scratch_gpt'"):
        load_model(folder_copy)


def test_from_pretrained_with_gpt2_model_type_only_reports_shape_mismatches(folder_copy):
    """transformers builds a GPT2LMHeadModel and fails on the transposed non-square projections (a square-only
    model would load transposed weights silently) — why load_model checks model_type first."""
    config_file = folder_copy / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": "gpt2"}))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(folder_copy)


def test_pickle_only_folder_is_refused(good_folder, folder_copy):
    _, model = good_folder
    (folder_copy / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder_copy / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"only \['pytorch_model.bin'\].*never loads pickle"):
        load_model(folder_copy)
    with pytest.raises(ValueError, match="use_safetensors must be True"):
        load_model(folder_copy, use_safetensors=False)
    # from_pretrained alone would unpickle it; with use_safetensors=True (what load_model passes) it refuses.
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(folder_copy, use_safetensors=True)


def test_missing_tensor_is_an_error_not_a_random_init(folder_copy):
    weights = folder_copy / "model.safetensors"
    state = load_file(weights)
    del state["transformer.h.1.mlp.c_fc.bias"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lack tensors .*transformer\.h\.1\.mlp\.c_fc\.bias"):
        load_model(folder_copy)
    # transformers alone would initialise the missing tensor afresh; the model class refuses it.
    with pytest.raises(ValueError, match=r"lack tensors the model needs: \['transformer\.h\.1\.mlp\.c_fc\.bias'\]"):
        AutoModelForCausalLM.from_pretrained(folder_copy)


def test_shape_mismatch_names_the_file_and_tensor(folder_copy):
    config_file = folder_copy / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "n_positions": 64}))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor transformer\.wpe\.weight has shape \(128, 64\)"):
        check_model_folder(folder_copy)


def test_invalid_config_value_names_file_and_field(folder_copy):
    config_file = folder_copy / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "n_head": 5}))
    with pytest.raises(ValueError, match=r"config\.json holds an invalid ScratchGPT config.*n_head"):
        read_config(folder_copy)


def test_missing_folder_and_missing_tokenizer(tmp_path, good_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    folder, _ = good_folder
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_tokenizer(folder)


def test_hub_id_offline_fails_at_once_with_both_readings(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not a local folder, and downloading it as a Hub repo failed"):
        load_model("someone/not-cached-model")


def test_no_trust_remote_code_needed_with_the_package_installed(good_folder, tmp_path):
    """A fresh interpreter with the package imported loads our class from a folder with auto_map, with no prompt
    (stdin closed: a prompt would fail) and no trust_remote_code."""
    folder, _ = good_folder
    script = textwrap.dedent(
        f"""
        import hf_scratch_gpt
        from transformers import AutoConfig, AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
        config = AutoConfig.from_pretrained({str(folder)!r})
        assert type(model) is hf_scratch_gpt.ScratchGPTForCausalLM, type(model)
        assert type(config) is hf_scratch_gpt.ScratchGPTConfig, type(config)
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("OK")
    assert not (tmp_path / "modules").exists() or not any((tmp_path / "modules").rglob("modeling_scratch_gpt.py"))


# ---------------------------------------------------------------------------------------------------------------------
# issue 27: each bad file is named, never a traceback from deep inside json, torch or tokenizers
# ---------------------------------------------------------------------------------------------------------------------
def _edit_config(folder, **changes):
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **changes}))


@pytest.mark.parametrize("depth", [500, 100_000])  # 500: parses, then transformers' deepcopy recursed too deep
def test_deeply_nested_config_is_named(folder_copy, depth):
    config_file = folder_copy / "config.json"
    config_file.write_text(config_file.read_text().rstrip().rstrip("}") + f', "x": {"[" * depth}{"]" * depth}}}')
    with pytest.raises(ValueError, match=r"config\.json nests JSON arrays/objects .* levels deep; at most 100"):
        load_model(folder_copy)


def test_nesting_up_to_the_limit_still_loads(folder_copy):
    config_file = folder_copy / "config.json"
    config_file.write_text(config_file.read_text().rstrip().rstrip("}") + f', "x": {"[" * 99}{"]" * 99}}}')
    load_model(folder_copy)


@pytest.mark.parametrize("key, value", [("dtype", "evil"), ("dtype", "int8"), ("torch_dtype", 3)])
def test_config_dtype_that_is_no_float_dtype_is_named(folder_copy, key, value):
    _edit_config(folder_copy, **{key: value})
    with pytest.raises(ValueError, match=rf"config\.json: {key} {value!r} is not a floating-point torch dtype"):
        load_model(folder_copy)


def test_config_in_bfloat16_still_loads(folder_copy):
    _edit_config(folder_copy, dtype="bfloat16")
    assert read_config(folder_copy).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    from saved_models import save_tiny_model_folder

    folder = tmp_path_factory.mktemp("with-tokenizer")
    save_tiny_model_folder(folder)
    return folder


def _as_vocab_and_merges(folder):
    """Replace the folder's tokenizer.json by the classic GPT-2 pair vocab.json + merges.txt (same BPE)."""
    bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in bpe["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return bpe


TOKENIZER_BREAKAGES = {
    "tokenizer.json {}": ("tokenizer.json", "{}", r"tokenizer\.json is not a valid tokenizer\.json"),
    "tokenizer.json a list": ("tokenizer.json", "[]", r"tokenizer\.json must hold a JSON object, got list"),
    "tokenizer_config.json a string": ("tokenizer_config.json", '"x"', r"tokenizer_config\.json must hold a JSON"),
    "vocab.json a list": ("vocab.json", "[1, 2]", r"vocab\.json must hold a JSON object, got list"),
    "vocab.json string ids": ("vocab.json", '{"a": "0"}', r"vocab\.json maps the token 'a' to '0'; .* integer id >= 0"),
    "merges.txt three tokens": ("merges.txt", "#version: 0.2\na b c\n", r"merges\.txt is not a valid merges\.txt"),
    "merges.txt unknown tokens": ("merges.txt", "#version: 0.2\nQQQ ZZZ\n", r"merges\.txt is not a valid .*QQQ"),
    "merges.txt not UTF-8": ("merges.txt", b"#version: 0.2\n\xff\xfe x\n", r"merges\.txt is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_BREAKAGES))
def test_broken_tokenizer_file_is_named(tokenizer_folder, tmp_path, case):
    name, content, message = TOKENIZER_BREAKAGES[case]
    folder = tmp_path / "model"
    shutil.copytree(tokenizer_folder, folder)
    if name in ("vocab.json", "merges.txt"):
        _as_vocab_and_merges(folder)
    (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        load_tokenizer(folder)


def test_vocab_and_merges_pair_still_loads(tokenizer_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tokenizer_folder, folder)
    expected = load_tokenizer(folder)("Hello world").input_ids
    _as_vocab_and_merges(folder)
    assert load_tokenizer(folder)("Hello world").input_ids == expected


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"generation_config\.json is not valid JSON"),  # transformers silently used defaults
        ('{"max_new_tokens": -3}', r"generation_config\.json is not a valid generation config: .*max_new_tokens"),
        ("[]", r"generation_config\.json must hold a JSON object"),
    ],
)
def test_bad_generation_config_is_named(tokenizer_folder, tmp_path, content, message):
    folder = tmp_path / "model"
    shutil.copytree(tokenizer_folder, folder)
    (folder / "generation_config.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_model(folder)


def test_a_file_where_a_folder_is_expected_and_the_reverse(folder_copy):
    config_file = folder_copy / "config.json"
    with pytest.raises(NotADirectoryError, match=r"config\.json is a file, expected a folder"):
        check_model_folder(config_file)
    with pytest.raises(NotADirectoryError, match=r"config\.json is a file, expected a model folder"):
        load_model(config_file)
    config_file.unlink()
    config_file.mkdir()
    with pytest.raises(IsADirectoryError, match=r"config\.json is a folder, expected a file"):
        load_model(folder_copy)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root reads files whatever their mode (CAP_DAC_OVERRIDE), so chmod cannot make a file unreadable here",
)
@pytest.mark.parametrize("unreadable", ["config.json", "."])
def test_unreadable_file_or_folder_is_reported_as_unreadable_not_missing(folder_copy, unreadable):
    target = folder_copy / unreadable
    target.chmod(0)
    try:
        with pytest.raises(PermissionError, match=r"Permission denied: .*config\.json"):
            load_model(folder_copy)
    finally:
        target.chmod(0o755)
