"""`hf-scratch-gpt convert --from …` and `export --to …` from the command line: each writes a folder that loads,
and a wrong combination of flags is one line naming the flag, before anything is read."""

import json

import pytest
import torch
from peer_models import NanoConfig, NanoGPT, book_config, randomize, save_nanogpt_checkpoint
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from hf_scratch_gpt_cli import main
from saved_models import save_tiny_model_folder


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_from_nanogpt_writes_a_folder_that_loads(tmp_path, capsys, meta_pkl):
    model = randomize(NanoGPT(NanoConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16)), seed=0)
    ckpt = save_nanogpt_checkpoint(model, tmp_path / "out-shakespeare-char" / "ckpt.pt")
    code, out, _ = run(["convert", str(ckpt), str(tmp_path / "converted"), "--from", "nanogpt",
                        "--tokenizer", str(meta_pkl)], capsys)
    assert code == 0
    assert json.loads(out)["max_abs_diff"] >= 0
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    ids = torch.arange(10)[None]
    with torch.no_grad():
        # nanoGPT's inference path projects only the last position: another matmul shape, float32 rounding apart
        torch.testing.assert_close(converted(ids).logits[:, -1:], model(ids)[0])


@pytest.mark.parametrize("argv, flag", [
    (["--from", "lfs"], "--n-head"),
    (["--from", "nanogpt", "--n-head", "4"], "--n-head"),
    (["--from", "nanogpt", "--no-verify"], "--no-verify"),
    (["--from", "openai", "--tokenizer", "tok"], "--tokenizer"),
])
def test_convert_flags_that_do_not_fit_the_format_are_one_line(tmp_path, capsys, argv, flag):
    code, _, err = run(["convert", str(tmp_path / "model.pth"), str(tmp_path / "out"), *argv], capsys)
    assert code == 1 and flag in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_export_to_gpt2_loads_with_transformers_alone(tmp_path, capsys):
    save_tiny_model_folder(tmp_path / "model")
    code, out, _ = run(["export", str(tmp_path / "model"), str(tmp_path / "gpt2"), "--to", "gpt2"], capsys)
    assert code == 0, out
    gpt2 = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["model_type"] == "gpt2"
    assert gpt2.config.vocab_size > 0


def test_export_gguf_type_is_for_gguf_only(tmp_path, capsys):
    save_tiny_model_folder(tmp_path / "model")
    code, _, err = run(["export", str(tmp_path / "model"), str(tmp_path / "x"), "--to", "gpt2", "--gguf-type", "f16"],
                       capsys)
    assert code == 1 and "--gguf-type" in err, err
    assert not (tmp_path / "x").exists()


def test_export_to_gguf_without_llama_cpp_checks_the_file(tmp_path, capsys):
    pytest.importorskip("gguf", reason="the export extra (gguf) is not installed")
    save_tiny_model_folder(tmp_path / "model")
    out = tmp_path / "tiny.gguf"
    code, printed, err = run(["export", str(tmp_path / "model"), str(out), "--to", "gguf", "--gguf-type", "f16",
                              "--no-llama-cpp"], capsys)
    assert code == 0, err
    assert out.read_bytes()[:4] == b"GGUF" and json.loads(printed)["max_abs_diff"] >= 0
