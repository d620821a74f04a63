"""OpenAI TF checkpoint → ScratchGPT folder: parity with GPT2LMHeadModel and the reference forward, dtypes,
sharding, Auto loading, and the reliability rows (bad checkpoints, a killed converter: no half-written output)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_close_rel
from openai_checkpoints import random_openai_variables, write_openai_checkpoint
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt.cli import main as cli_main
from hf_scratch_gpt.openai import convert as convert_module
from hf_scratch_gpt.openai.checkpoint import REQUIRED_FILES, import_tensorflow
from hf_scratch_gpt.openai.convert import OUTPUT_DTYPES, convert_openai_checkpoint, plan_shards
from hf_scratch_gpt.openai.names import expected_variables, map_openai_name
from hf_scratch_gpt.openai.reference import reference_logits


def tf_variables(ckpt: Path) -> dict[str, np.ndarray]:
    reader = import_tensorflow().train.load_checkpoint(str(ckpt / "model.ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def gpt2_from_tf_variables(ckpt: Path) -> GPT2LMHeadModel:
    """transformers' GPT-2 filled straight from the TF variables: its Conv1D weights are [in, out] = w[0], so this
    route shares nothing with the converter's transposes or name table."""
    hparams = json.loads((ckpt / "hparams.json").read_text())
    variables = tf_variables(ckpt)
    config = GPT2Config(vocab_size=hparams["n_vocab"], n_positions=hparams["n_ctx"], n_embd=hparams["n_embd"],
                        n_layer=hparams["n_layer"], n_head=hparams["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    state = {"transformer.wte.weight": variables["model/wte"], "transformer.wpe.weight": variables["model/wpe"],
             "transformer.ln_f.weight": variables["model/ln_f/g"], "transformer.ln_f.bias": variables["model/ln_f/b"]}
    for i in range(hparams["n_layer"]):
        for module in ("ln_1", "ln_2"):
            state[f"transformer.h.{i}.{module}.weight"] = variables[f"model/h{i}/{module}/g"]
            state[f"transformer.h.{i}.{module}.bias"] = variables[f"model/h{i}/{module}/b"]
        for module in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            dotted = module.replace("/", ".")
            state[f"transformer.h.{i}.{dotted}.weight"] = variables[f"model/h{i}/{module}/w"][0]
            state[f"transformer.h.{i}.{dotted}.bias"] = variables[f"model/h{i}/{module}/b"]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    model.tie_weights()
    return model


def random_tokens(n_vocab: int, batch: int = 3, length: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------------------------------
# the conversion is faithful
# ---------------------------------------------------------------------------------------------------------------------
def test_logits_equal_gpt2_and_the_reference_forward(converted, openai_ckpt):
    out, report = converted
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(ours, hf_scratch_gpt.ScratchGPTForCausalLM)
    gpt2 = gpt2_from_tf_variables(openai_ckpt)
    tokens = random_tokens(gpt2.config.vocab_size)
    with torch.no_grad():
        logits = ours(tokens).logits
        assert_close_rel(logits, gpt2(tokens).logits)

    variables = tf_variables(openai_ckpt)
    hparams = json.loads((openai_ckpt / "hparams.json").read_text())
    reference = reference_logits(variables.__getitem__, hparams, tokens[0].tolist())
    assert_close_rel(logits[0].double(), torch.from_numpy(reference))
    assert logits.abs().max() > 1.0  # weights large enough that a wrong transpose could not hide in rounding

    assert report.verified and report.verify_tokens > 1
    assert report.max_abs_diff < 1e-4
    assert f"{report.max_abs_diff:.3g}" in (out / "README.md").read_text()


def test_output_folder_config_card_and_generate(converted, openai_ckpt):
    out, report = converted
    hparams = json.loads((openai_ckpt / "hparams.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "scratch_gpt"
    assert (config["vocab_size"], config["n_positions"], config["n_embd"], config["n_head"], config["n_layer"]) == (
        hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_head"], hparams["n_layer"])
    assert config["eos_token_id"] == config["bos_token_id"] == hparams["n_vocab"] - 1
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_scratch_gpt.ScratchGPTForCausalLM"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == hparams["n_vocab"] - 1
    assert report.weight_files == ["model.safetensors"] and not (out / "model.safetensors.index.json").exists()

    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit"
    assert {"text-generation", "gpt2", "custom_code"} <= set(card.data.tags)
    assert "convert-openai" in card.text and str(openai_ckpt.name) in card.text

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("The quick brown", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    expected = gpt2_from_tf_variables(openai_ckpt).generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.tolist() == expected.tolist()
    assert isinstance(tokenizer.decode(generated[0]), str)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_outputs(dtype, converted, openai_ckpt, tmp_path):
    out32, _ = converted
    report = convert_openai_checkpoint(openai_ckpt, tmp_path / dtype, dtype=dtype)
    assert report.relative_diff <= OUTPUT_DTYPES[dtype].tolerance
    torch_dtype = OUTPUT_DTYPES[dtype].torch_dtype
    with safe_open(tmp_path / dtype / "model.safetensors", "pt") as f:
        assert {f.get_tensor(key).dtype for key in f.keys()} == {torch_dtype}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / dtype).eval()
    assert model.dtype == torch_dtype  # config.json records the dtype
    reference = AutoModelForCausalLM.from_pretrained(out32).eval()
    tokens = random_tokens(model.config.vocab_size, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits.float(), reference(tokens).logits, atol=0.15, rtol=0.05)
    # the stored weights are exactly the float32 ones rounded once
    with safe_open(tmp_path / dtype / "model.safetensors", "pt") as low, safe_open(out32 / "model.safetensors", "pt") as high:
        for key in high.keys():
            assert torch.equal(low.get_tensor(key), high.get_tensor(key).to(torch_dtype))


def test_sharded_output_with_index(converted, openai_ckpt, tmp_path):
    out32, _ = converted
    report = convert_openai_checkpoint(openai_ckpt, tmp_path / "sharded", max_shard_size=40_000, verify=False)
    assert len(report.weight_files) > 2
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == report.weight_files
    sizes = 0
    for name in report.weight_files:
        with safe_open(tmp_path / "sharded" / name, "pt") as f:
            for key in f.keys():
                assert index["weight_map"][key] == name
                sizes += f.get_tensor(key).numel() * 4
    assert index["metadata"]["total_size"] == sizes < report.total_bytes  # the files add their headers
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    whole = AutoModelForCausalLM.from_pretrained(out32)
    for (name, a), (_, b) in zip(sharded.state_dict().items(), whole.state_dict().items()):
        assert torch.equal(a, b), name


def test_plan_shards_is_greedy_and_gives_oversized_tensors_their_own_shard():
    items = [("a", 10), ("b", 10), ("c", 25), ("d", 5), ("e", 5)]
    assert plan_shards(items, 20) == [[0, 1], [2], [3, 4]]
    assert plan_shards(items, 1000) == [[0, 1, 2, 3, 4]]


def test_existing_output_is_refused_then_replaced_with_overwrite(converted, openai_ckpt, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted[0], out)
    (out / "model.safetensors").write_bytes(b"stale")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_openai_checkpoint(openai_ckpt, out, verify=False)
    assert (out / "model.safetensors").read_bytes() == b"stale"
    convert_openai_checkpoint(openai_ckpt, out, verify=False, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == (converted[0] / "model.safetensors").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["parent", "grandparent", "inside"])
def test_overwrite_never_deletes_the_source_checkpoint(openai_ckpt, tmp_path, where):
    """`convert-openai SRC OUT --overwrite` with OUT containing SRC used to delete SRC and its siblings (exit 0)."""
    source = tmp_path / "downloads" / "models" / "124M"
    shutil.copytree(openai_ckpt, source)
    (tmp_path / "downloads" / "models" / "notes.txt").write_text("mine")
    out = {"parent": source.parent, "grandparent": source.parent.parent, "inside": source / "hf"}[where]
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="(contains|lies inside) the checkpoint folder"):
        convert_openai_checkpoint(source, out, verify=False, overwrite=True)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("content", ["unrelated folder", "converted folder plus a user file", "a file"])
def test_overwrite_replaces_only_a_converted_model_folder(converted, openai_ckpt, tmp_path, content):
    out = tmp_path / "out"
    if content == "unrelated folder":
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
        (out / "config.json").write_text("{}")
    elif content == "converted folder plus a user file":
        shutil.copytree(converted[0], out)
        (out / "results").mkdir()
        (out / "results" / "eval.json").write_text("{}")
    else:
        out.write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="(not a ScratchGPT model folder|would delete them|not a folder)"):
        convert_openai_checkpoint(openai_ckpt, out, verify=False, overwrite=True)
    assert _tree(tmp_path) == before


def test_cli_converts_and_prints_the_report(openai_ckpt, tmp_path, capsys):
    assert cli_main(["convert-openai", str(openai_ckpt), str(tmp_path / "cli"), "--dtype", "float16",
                     "--max-shard-size", "50KB"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dtype"] == "float16" and printed["verified"] and len(printed["weight_files"]) > 1
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "cli").dtype == torch.float16


def test_verification_catches_a_wrong_mapping(openai_ckpt, tmp_path, monkeypatch):
    """A converter that forgot one transpose (square attn.c_proj: shapes still fit) must fail its own check."""
    correct = convert_module.to_output_tensor

    def forgets_c_proj_transpose(array, planned, dtype):
        tensor = correct(array, planned, dtype)
        return tensor.t().contiguous() if planned.tf_name.endswith("attn/c_proj/w") else tensor

    monkeypatch.setattr(convert_module, "to_output_tensor", forgets_c_proj_transpose)
    with pytest.raises(ValueError, match="verification failed"):
        convert_openai_checkpoint(openai_ckpt, tmp_path / "wrong")
    assert_no_output(tmp_path / "wrong")


# ---------------------------------------------------------------------------------------------------------------------
# the name table
# ---------------------------------------------------------------------------------------------------------------------
def test_name_table():
    assert len(expected_variables(3)) == 4 + 12 * 3
    rule = map_openai_name("model/h2/mlp/c_fc/w", 3)
    assert (rule.target, rule.layout) == ("transformer.h.2.mlp.c_fc.weight", "linear")
    assert map_openai_name("model/ln_f/g", 3).target == "transformer.ln_f.weight"
    for training_only in ("global_step", "model/h0/attn/c_attn/w/Adam", "model/wte/Adam_1", "beta1_power"):
        assert map_openai_name(training_only, 3) is None
    with pytest.raises(ValueError, match="layer 3.*n_layer=3"):
        map_openai_name("model/h3/ln_1/g", 3)
    with pytest.raises(ValueError, match="model/h0/attn/q_proj/w"):
        map_openai_name("model/h0/attn/q_proj/w", 3)


# ---------------------------------------------------------------------------------------------------------------------
# reliability: bad checkpoints give a clear error and no output folder
# ---------------------------------------------------------------------------------------------------------------------
def broken_copy(openai_ckpt: Path, folder: Path, edit) -> Path:
    hparams = json.loads((openai_ckpt / "hparams.json").read_text())
    variables = random_openai_variables(hparams, seed=0)
    edit(variables)
    write_openai_checkpoint(folder, variables=variables, bpe_from=openai_ckpt)
    return folder


VARIABLE_EDITS = {
    "unknown variable": (lambda v: v.update({"model/h0/attn/rotary/w": np.zeros((4,), np.float32)}),
                         "model/h0/attn/rotary/w"),
    "missing variable": (lambda v: v.pop("model/h1/mlp/c_proj/b"), "model/h1/mlp/c_proj/b"),
    "shape differs from hparams": (lambda v: v.update({"model/wpe": np.zeros((16, 32), np.float32)}),
                                   r"model/wpe.*\[16, 32\].*\[32, 32\]"),
    "extra layer": (lambda v: v.update({"model/h2/ln_1/g": np.ones((32,), np.float32)}), "model/h2/ln_1/g"),
}


@pytest.mark.parametrize("case", sorted(VARIABLE_EDITS))
def test_bad_variables_are_named_and_nothing_is_written(case, openai_ckpt, tmp_path):
    edit, message = VARIABLE_EDITS[case]
    ckpt = broken_copy(openai_ckpt, tmp_path / "ckpt", edit)
    with pytest.raises(ValueError, match=message):
        convert_openai_checkpoint(ckpt, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_training_only_variables_are_ignored(openai_ckpt, tmp_path):
    def add_adam(variables):
        variables["model/wte/Adam"] = np.zeros_like(variables["model/wte"])
        variables["global_step"] = np.array(7, dtype=np.int64)

    ckpt = broken_copy(openai_ckpt, tmp_path / "ckpt", add_adam)
    report = convert_openai_checkpoint(ckpt, tmp_path / "out")
    assert report.ignored_variables == ["global_step", "model/wte/Adam"]
    assert report.max_abs_diff < 1e-4


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_missing_checkpoint_file_is_named(missing, openai_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(openai_ckpt, ckpt)
    (ckpt / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        convert_openai_checkpoint(ckpt, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_truncated_data_file_is_named(openai_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(openai_ckpt, ckpt)
    data = ckpt / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.ckpt\.data-00000-of-00001 is truncated"):
        convert_openai_checkpoint(ckpt, tmp_path / "out")
    assert_no_output(tmp_path / "out")


def test_corrupted_data_file_names_the_variable(openai_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(openai_ckpt, ckpt)
    data = ckpt / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 16] = bytes(16)  # same length: only the CRC check can see it
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"cannot read variable 'model/"):
        convert_openai_checkpoint(ckpt, tmp_path / "out")
    assert_no_output(tmp_path / "out")


KILLED_CONVERTER = """
import sys, time
from hf_scratch_gpt.openai import checkpoint
read = checkpoint.OpenAICheckpoint.read
def slow_read(self, name):
    time.sleep(0.3)  # give the test time to kill us mid-write
    return read(self, name)
checkpoint.OpenAICheckpoint.read = slow_read
from hf_scratch_gpt.openai.convert import convert_openai_checkpoint
convert_openai_checkpoint(sys.argv[1], sys.argv[2], overwrite=True, max_shard_size=40_000)
"""


def test_killed_converter_leaves_the_previous_output_intact(converted, openai_ckpt, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = subprocess.Popen([sys.executable, "-c", KILLED_CONVERTER, str(openai_ckpt), str(out)],
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    # wait until the second shard is being written into the temporary folder, then kill -9
    while not list(tmp_path.glob(".out.partial-*/model-00002-of-*.safetensors")):
        assert process.poll() is None, "the converter finished or failed before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert AutoModelForCausalLM.from_pretrained(out) is not None
