"""Every load path compares what the weight files hold with what the model needs: a file that disagrees with the
config, holds a tensor twice, holds non-float weights, is a link out of the folder, or belongs to an interrupted
save is refused by name, for `load_model` and plain `from_pretrained` alike."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hf_scratch_gpt.loading import load_model
from hf_scratch_gpt.checks_scratch_gpt import INTERRUPTED_FINAL_SAVE_NAME
from saved_models import save_tiny_model_folder

LOADERS = {"load_model": load_model, "from_pretrained": AutoModelForCausalLM.from_pretrained}


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    save_tiny_model_folder(folder)
    return folder


@pytest.fixture
def model_folder(saved_folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    return target


def _rewrite(folder, change):
    """Rewrite model.safetensors with `change(state)` applied."""
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("loader", LOADERS)
def test_a_tied_config_with_a_different_head_in_the_file_is_refused(model_folder, loader):
    _rewrite(model_folder, lambda state: state.update({"lm_head.weight": state["transformer.wte.weight"] + 1.0}))
    with pytest.raises(ValueError, match=r"lm_head.weight that differs from transformer.wte.weight.*tie_word_embeddings"):
        LOADERS[loader](model_folder)


def test_a_tied_config_with_an_equal_head_in_the_file_loads(model_folder, saved_folder):
    _rewrite(model_folder, lambda state: state.update({"lm_head.weight": state["transformer.wte.weight"].clone()}))
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int32])
@pytest.mark.parametrize("loader", LOADERS)
def test_non_float_weights_are_refused_not_cast(model_folder, loader, dtype):
    _rewrite(model_folder, lambda state: state.update({"transformer.ln_f.bias": state["transformer.ln_f.bias"].to(dtype)}))
    with pytest.raises(ValueError, match=r"tensor transformer.ln_f.bias has dtype (I8|BOOL|I32); .*not cast"):
        LOADERS[loader](model_folder)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_tensor_in_two_shards_is_refused(model_folder, loader):
    model = load_model(model_folder)
    (model_folder / "model.safetensors").unlink()
    model.save_pretrained(model_folder, max_shard_size="20KB")
    index = json.loads((model_folder / "model.safetensors.index.json").read_text())
    first, second = sorted(set(index["weight_map"].values()))[:2]
    name = next(key for key, shard in index["weight_map"].items() if shard == first)
    shard = load_file(model_folder / second)
    shard[name] = load_file(model_folder / first)[name] * 2  # the same tensor again, with other values
    save_file(shard, model_folder / second, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"tensor {name} is held by two weight files, .*{first} and .*{second}"):
        LOADERS[loader](model_folder)


@pytest.mark.parametrize("loader", LOADERS)
def test_an_interrupted_final_save_is_refused(model_folder, loader):
    (model_folder / INTERRUPTED_FINAL_SAVE_NAME).mkdir()
    with pytest.raises(ValueError, match=r"a final save was interrupted"):
        LOADERS[loader](model_folder)


@pytest.mark.parametrize("loader", LOADERS)
def test_weights_linked_from_outside_the_folder_are_refused(model_folder, tmp_path, loader):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(model_folder / "model.safetensors", outside)
    os.symlink(outside, model_folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors resolves to .*elsewhere.safetensors, outside the model folder"):
        LOADERS[loader](model_folder)


@pytest.mark.parametrize("loader", LOADERS)
def test_the_hub_cache_layout_loads(saved_folder, tmp_path, loader):
    """models--owner--name/snapshots/<rev>/<file> -> ../../blobs/<hash>: the links of a Hub download are followed."""
    repo = tmp_path / "models--you--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for number, file in enumerate(sorted(saved_folder.iterdir())):
        shutil.copy(file, blobs / f"blob{number}")
        os.symlink(f"../../blobs/blob{number}", snapshot / file.name)
    loaded = LOADERS[loader](snapshot)
    expected = load_file(saved_folder / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=lambda text: f"{name}: {text}")


def test_a_symlink_loop_is_a_clear_error(model_folder):
    (model_folder / "model.safetensors").unlink()
    os.symlink(model_folder / "loop-b", model_folder / "loop-a")
    os.symlink(model_folder / "loop-a", model_folder / "loop-b")
    os.symlink(model_folder / "loop-a", model_folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors (is a symlink loop|resolves to)"):
        load_model(model_folder)
