"""What the package never does with a folder it is given (see SECURITY.md): run code from it, read files outside
it, or hand back a model with tensors it did not find in it. Every loader is tried: `load_model`, plain
`from_pretrained` with the package imported, `evaluate`, and `train --model_name_or_path`."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.evaluation import evaluate_model
from hf_scratch_gpt.loading import load_model, load_tokenizer
from hf_scratch_gpt.training.components import ModelArguments, build_model, build_tokenizer
from saved_models import save_tiny_model_folder


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    model, _ = save_tiny_model_folder(folder)
    return folder, model


@pytest.fixture
def model_folder(saved_folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved_folder[0], target)
    return target


def _shard(folder, max_shard_size="20KB"):
    """Re-save the folder's weights as several shards with a model.safetensors.index.json."""
    model = load_model(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    return index


def _all_loaders(folder):
    """Each way the package (or a plain user) loads a model folder."""
    return {
        "load_model": lambda: load_model(folder),
        "from_pretrained": lambda: AutoModelForCausalLM.from_pretrained(folder),
        "evaluate": lambda: evaluate_model(str(folder), text_file=str(folder / "tokenizer.json")),
        "train --model_name_or_path": lambda: build_model(
            ModelArguments(model_name_or_path=str(folder)), AutoTokenizer.from_pretrained(folder)
        ),
    }


# ---------------------------------------------------------------------------------------------------------------------
# model.safetensors.index.json must not lead out of the folder
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "absolute"])
@pytest.mark.parametrize("loader", ["load_model", "from_pretrained", "evaluate", "train --model_name_or_path"])
def test_weight_map_cannot_name_a_file_outside_the_folder(model_folder, tmp_path, where, loader):
    index = _shard(model_folder)
    shard = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(model_folder / shard, outside / shard)  # a valid shard, but not in the folder
    escaped = f"../outside/{shard}" if where == "parent" else str(outside / shard)
    index["weight_map"] = {key: escaped if name == shard else name for key, name in index["weight_map"].items()}
    (model_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lists the shard .*outside.*plain file name"):
        _all_loaders(model_folder)[loader]()


def test_sharded_folder_still_loads_everywhere(model_folder, saved_folder):
    _shard(model_folder)
    expected = saved_folder[1].state_dict()
    for name, load in _all_loaders(model_folder).items():
        if name == "evaluate":
            assert load()["tokens"] > 0
            continue
        loaded = load().state_dict()
        for key, tensor in expected.items():
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=f"{name}: {key}")


# ---------------------------------------------------------------------------------------------------------------------
# missing tensors: an error, never a fresh random init
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", ["load_model", "from_pretrained", "evaluate", "train --model_name_or_path"])
def test_missing_tensor_is_refused_by_every_loader(model_folder, loader):
    weights = model_folder / "model.safetensors"
    state = load_file(weights)
    del state["transformer.h.0.attn.c_attn.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lack tensors .*transformer\.h\.0\.attn\.c_attn\.weight"):
        _all_loaders(model_folder)[loader]()


@pytest.mark.parametrize("loader", ["load_model", "from_pretrained", "evaluate", "train --model_name_or_path"])
def test_untied_config_without_lm_head_is_refused(model_folder, loader):
    config_file = model_folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match=r"lack tensors .*lm_head\.weight"):
        _all_loaders(model_folder)[loader]()


def test_base_model_loads_from_a_causal_lm_folder(saved_folder):
    """The missing-key check must not refuse what is legitimately absent (the base model has no lm_head)."""
    from transformers import AutoModel

    folder, model = saved_folder
    base = AutoModel.from_pretrained(folder)
    torch.testing.assert_close(base.wte.weight, model.transformer.wte.weight, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# pickle is never read, and damaged files are named
# ---------------------------------------------------------------------------------------------------------------------
def test_plain_from_pretrained_refuses_pickle_weights(model_folder):
    state = load_file(model_folder / "model.safetensors")
    (model_folder / "model.safetensors").unlink()
    torch.save(state, model_folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"only \['pytorch_model\.bin'\]; ScratchGPT never loads pickle weights"):
        AutoModelForCausalLM.from_pretrained(model_folder)
    with pytest.raises(ValueError, match=r"use_safetensors must be True"):
        AutoModelForCausalLM.from_pretrained(model_folder, use_safetensors=False)


def test_plain_from_pretrained_names_a_truncated_shard(model_folder):
    index = _shard(model_folder)
    shard = model_folder / sorted(set(index["weight_map"].values()))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{shard.name} is not a readable safetensors file"):
        AutoModelForCausalLM.from_pretrained(model_folder)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_corrupt_tokenizer_file_is_named(model_folder, name):
    (model_folder / name).write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match=rf"{name} is not valid JSON"):
        load_tokenizer(model_folder)
    with pytest.raises(ValueError, match=rf"{name} is not valid JSON"):
        build_tokenizer(ModelArguments(model_name_or_path=str(model_folder)), None)
    with pytest.raises(ValueError, match=rf"{name} is not valid JSON"):
        evaluate_model(str(model_folder), text_file=str(model_folder / "config.json"))


def test_model_class_hooks_keep_a_good_folder_exact(saved_folder):
    folder, model = saved_folder
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(loaded) is ScratchGPTForCausalLM
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0, msg=key)
    assert isinstance(loaded.config, ScratchGPTConfig)


# ---------------------------------------------------------------------------------------------------------------------
# no link out of the folder is followed: not for reading, writing or uploading (issue 27)
# ---------------------------------------------------------------------------------------------------------------------
PRECIOUS = "a file outside the model folder\n"


def _link_out(folder, name, outside):
    """Replace `folder/name` by a link to `outside` (which gets the file's content, or PRECIOUS when there is none)."""
    target = folder / name
    if target.exists():
        shutil.move(target, outside)
    else:
        outside.write_text(PRECIOUS)
    target.symlink_to(outside)
    return outside


def _card(folder):
    from hf_scratch_gpt.hub import write_model_card

    return write_model_card(folder, "trained_from_scratch", repo_id="me/tiny", license="mit")


def test_card_is_never_written_through_a_link_out(model_folder, tmp_path, capsys):
    from hf_scratch_gpt.cli import main

    outside = _link_out(model_folder, "README.md", tmp_path / "outside.md")
    with pytest.raises(ValueError, match=r"README\.md resolves to .*outside\.md, outside the model folder"):
        _card(model_folder)
    assert main(["card", str(model_folder), "--repo-id", "me/tiny", "--license", "mit"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "README.md resolves to" in err and "outside the model folder" in err
    assert outside.read_text() == PRECIOUS


def test_card_refuses_a_link_inside_the_folder_and_replaces_a_plain_file(model_folder):
    """A link that stays inside is not followed either: writing through it would change the file it names, and
    replacing the link is the user's decision (remove it). A plain README.md is replaced whole, leaving no temp file."""
    (model_folder / "notes.md").write_text(PRECIOUS)
    (model_folder / "README.md").symlink_to("notes.md")
    with pytest.raises(ValueError, match=r"README\.md is a link to notes\.md; the model card is not written through"):
        _card(model_folder)
    assert (model_folder / "notes.md").read_text() == PRECIOUS
    (model_folder / "README.md").unlink()
    (model_folder / "README.md").write_text("an old card\n")
    _card(model_folder)
    assert (model_folder / "README.md").read_text().startswith("---\n")
    assert not (model_folder / "README.md").is_symlink()
    assert sorted(path.name for path in model_folder.iterdir() if path.name.startswith(".")) == []


def test_push_refuses_a_file_linked_from_outside_by_name(model_folder, tmp_path, capsys):
    from hf_scratch_gpt.cli import main
    from hf_scratch_gpt.hub import plan_upload

    _card(model_folder)
    _link_out(model_folder, "merges.txt", tmp_path / "outside-merges.txt")
    with pytest.raises(ValueError, match=r"merges\.txt resolves to .*outside-merges\.txt, outside the model folder"):
        plan_upload(model_folder)
    assert main(["push", str(model_folder), "me/tiny", "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "merges.txt" not in captured.out  # no plan printed
    assert captured.err.count("\n") == 1 and "merges.txt resolves to" in captured.err


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_model_files_linked_from_outside_are_refused_before_they_are_read(model_folder, tmp_path, name):
    outside = _link_out(model_folder, name, tmp_path / f"outside-{name}")
    message = rf"{name} resolves to .*outside-{name}, outside the model folder"
    # AutoModelForCausalLM reads config.json (AutoConfig) before any of the package's code runs; the load is refused.
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(model_folder)
    outside.write_text("{not json")  # an error about the content would mean the file was read
    for load in (lambda: load_model(model_folder), lambda: ScratchGPTForCausalLM.from_pretrained(model_folder)):
        with pytest.raises(ValueError, match=message):
            load()


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"])
def test_tokenizer_files_linked_from_outside_are_refused(model_folder, tmp_path, name):
    _link_out(model_folder, name, tmp_path / f"outside-{name}")
    message = rf"{name} resolves to .*outside-{name}, outside the model folder"
    with pytest.raises(ValueError, match=message):
        load_tokenizer(model_folder)
    with pytest.raises(ValueError, match=message):
        build_tokenizer(ModelArguments(model_name_or_path=str(model_folder)), None)
    with pytest.raises(ValueError, match=message):
        evaluate_model(str(model_folder), text_file=str(tmp_path / f"outside-{name}"))


def _hub_cache_snapshot(folder, cache, repo="models--me--tiny"):
    """The Hub cache's layout of `folder`: snapshots/<rev>/<name> -> ../../blobs/<sha>, as snapshot_download makes."""
    import hashlib

    blobs, snapshot = cache / repo / "blobs", cache / repo / "snapshots" / ("0" * 40)
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blobs / sha)
        (snapshot / path.name).symlink_to(f"../../blobs/{sha}")
    return snapshot


def test_hub_cache_layout_still_loads(saved_folder, tmp_path):
    folder, model = saved_folder
    snapshot = _hub_cache_snapshot(folder, tmp_path / "hub")
    assert all(path.is_symlink() for path in snapshot.iterdir())
    for loaded in (load_model(snapshot), AutoModelForCausalLM.from_pretrained(snapshot)):
        for key, tensor in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0, msg=key)
    expected = AutoTokenizer.from_pretrained(folder)("Hello world").input_ids
    assert load_tokenizer(snapshot)("Hello world").input_ids == expected


def test_hub_cache_link_into_another_repository_is_refused(saved_folder, tmp_path):
    folder, _ = saved_folder
    snapshot = _hub_cache_snapshot(folder, tmp_path / "hub")
    other = _hub_cache_snapshot(folder, tmp_path / "hub", repo="models--someone--else")
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to((other / "tokenizer.json").resolve())
    with pytest.raises(ValueError, match=r"tokenizer\.json resolves to .*models--someone--else.*outside the model"):
        load_tokenizer(snapshot)
