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
