"""nanoGPT's ckpt.pt → ScratchGPT: logits bit-identical to nanoGPT's own forward (exact GELU, sdpa attention),
bias=False, torch.compile's `_orig_mod.` keys, the padded vocabulary, the mask buffers of the slow attention path,
meta.pkl and BPE tokenizers, and files that are not what they claim."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import assert_close_float32
from output_checks import assert_nothing_written
from peer_models import SHAKESPEARE_CHARS, NanoConfig, NanoGPT, randomize, save_nanogpt_checkpoint
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_scratch_gpt
from hf_scratch_gpt.convert import convert_nanogpt


def tokens(vocab_size: int, length: int = 32, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def both_logits(nano: NanoGPT, out: Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(converted model's logits, nanoGPT's own) for `ids`; nanoGPT returns every position's logits when given
    targets."""
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(ours, hf_scratch_gpt.ScratchGPTForCausalLM)
    with torch.no_grad():
        return ours(ids).logits, nano(ids, ids)[0]


# ---------------------------------------------------------------------------------------------------------------------
# the conversion is faithful
# ---------------------------------------------------------------------------------------------------------------------
def test_logits_bit_identical_to_nanogpts_forward(nano_bpe):
    nano, _, out, report = nano_bpe
    ours, theirs = both_logits(nano, out, tokens(384))
    assert ours.shape == theirs.shape == (3, 32, 384)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["tie_word_embeddings"] is True
    assert report.verified and report.max_abs_diff < 1e-4 * max(1.0, report.reference_logit_scale)


def test_gelu_new_would_not_match(nano_bpe):
    """The activation field is what makes the logits exact: the same weights under GPT-2's tanh GELU differ."""
    nano, _, out, _ = nano_bpe
    tanh_model = AutoModelForCausalLM.from_pretrained(out, activation_function="gelu_new").eval()
    ids = tokens(384)
    with torch.no_grad():
        assert not torch.equal(tanh_model(ids).logits, nano(ids, ids)[0])


def test_bias_false_and_compiled_checkpoint_are_exact(nano_char):
    nano, ckpt, out, report = nano_char
    saved = torch.load(ckpt, weights_only=True)
    assert all(key.startswith("_orig_mod.") for key in saved["model"])  # a real torch.compile state dict
    assert not any(key.endswith(".bias") for key in saved["model"])  # bias=False
    ours, theirs = both_logits(nano, out, tokens(65))
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        biases = [name for name in handle.keys() if name.endswith(".bias")]
        assert len(biases) == 2 * 6 + 1  # six per layer and ln_f's
        assert all(not handle.get_tensor(name).any() for name in biases)
    assert any("bias=False" in note for note in report.notes) and any("_orig_mod." in note for note in report.notes)
    config = json.loads((out / "config.json").read_text())
    assert config["resid_pdrop"] == config["attn_pdrop"] == config["embd_pdrop"] == 0.2  # model_args' dropout
    assert config["bos_token_id"] is None and config["eos_token_id"] is None  # character vocabulary: no specials


def test_padded_vocabulary_kept_for_exact_logits(nano_bpe):
    """vocab 384 for a 321-token BPE (nanoGPT's 50304 for 50257): every logit is nanoGPT's, the softmax too."""
    nano, _, out, report = nano_bpe
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 384
    assert len(AutoTokenizer.from_pretrained(out)) == 321
    assert any("ids 321...383 are padding" in note for note in report.notes)
    assert "ids 321...383 are padding" in (out / "README.md").read_text()


def test_gpt2_sized_vocabulary_without_tokenizer(tmp_path):
    """The real 50304; no tokenizer given: no tokenizer files, bos/eos GPT-2's <|endoftext|> (nanoGPT's default)."""
    nano = randomize(NanoGPT(NanoConfig(vocab_size=50304, block_size=16, n_layer=1, n_head=2, n_embd=16)), seed=4)
    ckpt = save_nanogpt_checkpoint(nano, tmp_path / "ckpt.pt")
    report = convert_nanogpt(ckpt, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["bos_token_id"]) == (50304, 50256, 50256)
    assert report.tokenizer is None and any("kept at nanoGPT's 50304 ids" in note for note in report.notes)
    assert not any(name.startswith("tokenizer") for name in os.listdir(tmp_path / "out"))
    ids = torch.tensor([[0, 50256, 50303, 17, 31000, 5, 9, 50000]])
    ours, theirs = both_logits(nano, tmp_path / "out", ids)
    assert torch.equal(ours, theirs)


def test_slow_attention_path_drops_its_mask_buffers(tmp_path):
    """model.py on a torch without sdpa saves each attention's causal mask as `attn.bias`; it is not a weight."""
    nano = randomize(NanoGPT(NanoConfig(), flash=False), seed=5)
    ckpt = save_nanogpt_checkpoint(nano, tmp_path / "ckpt.pt")
    assert "transformer.h.0.attn.bias" in torch.load(ckpt, weights_only=True)["model"]
    report = convert_nanogpt(ckpt, tmp_path / "out")
    assert "transformer.h.*.attn.bias (causal mask buffers)" in report.ignored_variables
    ours, theirs = both_logits(nano, tmp_path / "out", tokens(96))
    # Explicit softmax(q·kᵀ)·v against sdpa: equal to float32 rounding, not bit for bit.
    assert_close_float32(ours, theirs, reduction=4 * 64, name="logits")


def test_meta_pkl_tokenizer_encodes_and_decodes_like_nanogpt(nano_char, meta_pkl):
    _, _, out, report = nano_char
    with open(meta_pkl, "rb") as f:
        meta = pickle.load(f)  # the test's own file
    stoi, itos = meta["stoi"], meta["itos"]
    encode = lambda s: [stoi[c] for c in s]  # noqa: E731  (nanoGPT's sample.py)
    decode = lambda l: "".join([itos[i] for i in l])  # noqa: E731, E741
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak , speak .  What's this ?"
            "\n   3 $&-; done!\n")
    assert tokenizer(text)["input_ids"] == encode(text)
    assert tokenizer.decode(encode(text)) == decode(encode(text)) == text
    every = list(range(len(SHAKESPEARE_CHARS)))
    assert tokenizer.decode(every) == decode(every) and tokenizer(decode(every))["input_ids"] == every
    assert report.tokenizer.startswith("nanoGPT's character vocabulary (65 characters")
    with pytest.raises(Exception):  # nanoGPT's encode raises KeyError for a character outside its vocabulary
        tokenizer("#")


def test_char_model_generates_what_nanogpt_generates(nano_char):
    nano, _, out, _ = nano_char
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([[18, 47, 56, 57, 58, 1, 15, 47]])
    expected = prompt
    with torch.no_grad():
        for _ in range(12):  # nanoGPT's generate with greedy choice instead of sampling
            logits, _ = nano(expected)
            expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        generated = ours.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(generated, expected)


def test_bpe_folder_tokenizer_is_saved_and_encodes(nano_bpe, bpe_folder):
    _, _, out, report = nano_bpe
    tokenizer = AutoTokenizer.from_pretrained(out)
    vocab = json.loads((bpe_folder / "vocab.json").read_text(encoding="utf-8"))
    ids = tokenizer("The quick brown fox")["input_ids"]
    assert ids and all(0 <= i < 321 for i in ids) and tokenizer.decode(ids) == "The quick brown fox"
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == vocab["<|endoftext|>"] == 320
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 320
    assert report.tokenizer.startswith("GPT-2 byte-level BPE (321 tokens")


def test_card_says_where_the_model_came_from(nano_bpe):
    _, ckpt, out, report = nano_bpe
    card = (out / "README.md").read_text()
    assert "nanoGPT" in card and "ckpt.pt" in card and "iter_num: 5000" in card
    assert f"**{report.max_abs_diff:.3g}**" in card
    assert "--from nanogpt" in card and "activation_function` is `gelu`" in card
    assert report.ignored_variables == ["optimizer", "iter_num", "best_val_loss", "config"]


def test_bfloat16_output(nano_bpe, tmp_path):
    _, ckpt, _, _ = nano_bpe
    report = convert_nanogpt(ckpt, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("transformer.wte.weight").dtype == torch.bfloat16
    assert report.dtype == "bfloat16" and report.relative_diff < 1e-1


# ---------------------------------------------------------------------------------------------------------------------
# files that are not what they claim: clear errors naming the file, nothing written
# ---------------------------------------------------------------------------------------------------------------------
class RunsCode:
    """What a malicious checkpoint would hold: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_holding_code_is_refused_without_running_it(nano_bpe, tmp_path):
    nano, _, _, _ = nano_bpe
    marker = tmp_path / "ran"
    ckpt = save_nanogpt_checkpoint(nano, tmp_path / "ckpt.pt", extra={"config": {"hook": RunsCode(marker)}})
    with pytest.raises(ValueError, match=r"ckpt\.pt holds the global (posix|os)\.system.*weights_only"):
        convert_nanogpt(ckpt, tmp_path / "out")
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


def test_checkpoint_config_with_a_class_is_named(nano_bpe, tmp_path):
    """A train.py whose config holds a non-plain object (here a Path) cannot be read with weights_only."""
    nano, _, _, _ = nano_bpe
    ckpt = save_nanogpt_checkpoint(nano, tmp_path / "ckpt.pt", extra={"config": {"out_dir": Path("out")}})
    with pytest.raises(ValueError, match=r"holds the global pathlib\.\w*Path"):
        convert_nanogpt(ckpt, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_truncated_checkpoint(nano_bpe, tmp_path):
    _, ckpt, _, _ = nano_bpe
    data = ckpt.read_bytes()
    cut = tmp_path / "ckpt.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ckpt\.pt is not a readable nanoGPT checkpoint"):
        convert_nanogpt(cut, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def _rewrite(ckpt: Path, path: Path, change) -> Path:
    checkpoint = torch.load(ckpt, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.pop("model_args"), r"is not a nanoGPT checkpoint.*'model_args'"),
        (lambda c: c["model_args"].update(n_embd=48), r"transformer\.wte\.weight has shape \(384, 64\) but its "
                                                      r"model_args give \(384, 48\)"),
        (lambda c: c["model_args"].update(n_layer=3), r"model_args has n_layer=3 but the state dict holds 2 layers"),
        (lambda c: c["model_args"].update(n_head=5), r"n_embd=64 is not divisible by n_head=5"),
        (lambda c: c["model_args"].update(bias=False), r"has 13 entries this model does not have"),
        (lambda c: c["model"].pop("transformer.h.1.mlp.c_fc.weight"),
         r"lacks 1 tensor the model needs \(transformer\.h\.1\.mlp\.c_fc\.weight\)"),
        (lambda c: c["model"].update({"lm_head.weight": c["model"]["lm_head.weight"] + 1}), r"lm_head\.weight differs"),
    ],
    ids=["no_model_args", "width", "layers", "heads", "bias_flag", "missing_tensor", "untied_head"],
)
def test_inconsistent_checkpoint(nano_bpe, tmp_path, change, message):
    _, ckpt, _, _ = nano_bpe
    bad = _rewrite(ckpt, tmp_path / "ckpt.pt", change)
    with pytest.raises(ValueError, match=message) as error:
        convert_nanogpt(bad, tmp_path / "sub" / "out")
    assert str(bad) in str(error.value)
    assert_nothing_written(tmp_path / "sub" / "out")
    assert not (tmp_path / "sub").exists()


def test_failed_verification_publishes_nothing(nano_bpe, tmp_path, monkeypatch):
    import hf_scratch_gpt.convert.nanogpt as nanogpt_module

    _, ckpt, _, _ = nano_bpe
    real = nanogpt_module.nanogpt_logits
    monkeypatch.setattr(nanogpt_module, "nanogpt_logits", lambda *args: real(*args) + 1e-2)
    out = tmp_path / "new" / "parents" / "out"
    with pytest.raises(ValueError, match="verification failed"):
        convert_nanogpt(ckpt, out)
    assert_nothing_written(out)
    assert not (tmp_path / "new").exists()  # the parent folders the conversion made are gone too
