"""Weight exchange with GPT2LMHeadModel, Auto-class registration, save/load round trips."""

import json
import logging

import pytest
import torch
from helpers import assert_close_rel, random_gpt2
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTModel, from_hf_gpt2, to_hf_gpt2


def test_round_trip_through_gpt2_is_exact(gpt2_pair):
    gpt2, ours = gpt2_pair
    back = to_hf_gpt2(ours)
    assert isinstance(back, GPT2LMHeadModel)
    original, returned = gpt2.state_dict(), back.state_dict()
    for name, tensor in original.items():
        assert torch.equal(returned[name], tensor), name
    again = from_hf_gpt2(back)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_from_hf_gpt2_folder(tmp_path):
    gpt2 = random_gpt2(seed=3)
    gpt2.save_pretrained(tmp_path)
    ours = from_hf_gpt2(tmp_path)
    input_ids = torch.randint(0, gpt2.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids).logits, gpt2(input_ids).logits, rtol=1e-5, atol=1e-5)


def test_head_is_tied(gpt2_pair):
    _, ours = gpt2_pair
    assert ours.lm_head.weight.data_ptr() == ours.transformer.wte.weight.data_ptr()


def test_from_hf_gpt2_refuses_unsupported_options():
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_hf_gpt2(GPT2LMHeadModel(config))


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-identical logits (same model class, same weights, same inputs), or a message with the numbers."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The same names, and bit-identical tensors of the same dtype under each."""
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def small_vocab_gpt2(seed: int = 0, **config) -> GPT2LMHeadModel:
    """GPT2LMHeadModel of vocabulary 97 whose GPT2Config keeps its own special ids unless `config` gives them:
    bos = eos = 50256, outside the vocabulary (transformers only warns)."""
    torch.manual_seed(seed)
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=97, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, **config,
    ))
    with torch.no_grad():
        for param in gpt2.parameters():
            param.normal_(0.0, 0.3)  # logits of order 1 (init's are of order 1e-2)
    return gpt2.eval()


def test_small_vocabulary_gpt2_comes_in_and_goes_back_out_exactly(caplog):
    """Issue 26: a GPT-2 with its own small vocabulary (GPT2Config's bos = eos = 50256 outside it) comes in with
    those ids as None and a warning naming them, computes GPT-2's logits, and goes back out bit-identical."""
    gpt2 = small_vocab_gpt2()
    assert (gpt2.config.bos_token_id, gpt2.config.eos_token_id) == (50256, 50256)
    with caplog.at_level(logging.WARNING, logger="hf_scratch_gpt.gpt2_weights"):
        ours = from_hf_gpt2(gpt2)
    assert (ours.config.bos_token_id, ours.config.eos_token_id, ours.config.pad_token_id) == (None, None, None)
    for name in ("bos_token_id", "eos_token_id"):
        assert f"GPT2Config.{name}=50256 holds an id outside the vocabulary [0, 97)" in caplog.text
    input_ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    back = to_hf_gpt2(ours)
    assert (back.config.bos_token_id, back.config.eos_token_id) == (None, None)  # not GPT2Config's 50256 again
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "tie_word_embeddings"):
        assert getattr(back.config, name) == getattr(gpt2.config, name), name
    assert_same_state(back.state_dict(), gpt2.state_dict())
    with torch.no_grad():
        expected = gpt2(input_ids).logits
        assert_close_rel(ours(input_ids).logits, expected)  # another implementation: equal to float32 rounding
        assert_same_logits(back(input_ids).logits, expected)


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"bos_token_id": 0, "eos_token_id": 96, "pad_token_id": 5}, (0, 96, 5)),  # inside: kept as they are
        ({"bos_token_id": None, "eos_token_id": None}, (None, None, None)),
        ({"pad_token_id": -1}, (None, None, None)),  # as Hub configs hold it
        ({"bos_token_id": 1, "eos_token_id": [3, 50256, 96]}, (1, [3, 96], None)),  # only the id outside goes
        ({"bos_token_id": 1, "eos_token_id": [97, 50256]}, (1, None, None)),
    ],
)
def test_gpt2_special_ids_map_to_ids_inside_the_vocabulary(given, expected):
    gpt2 = small_vocab_gpt2(**given)
    ours = from_hf_gpt2(gpt2)
    assert (ours.config.bos_token_id, ours.config.eos_token_id, ours.config.pad_token_id) == expected
    back = to_hf_gpt2(ours)
    assert (back.config.bos_token_id, back.config.eos_token_id, back.config.pad_token_id) == expected


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_round_trip_is_bit_exact_tied_or_untied(tie):
    """Issue 27: an untied lm_head is carried both ways (it was left randomly initialised); a tied one stays one
    Parameter with wte. GPT-2 → ScratchGPT → GPT-2 gives the same state dict and logits, bit for bit."""
    gpt2 = random_gpt2(seed=5, tie_word_embeddings=tie)
    assert (gpt2.lm_head.weight is gpt2.transformer.wte.weight) == tie
    ours = from_hf_gpt2(gpt2)
    assert ours.config.tie_word_embeddings is tie
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == tie
    torch.testing.assert_close(ours.lm_head.weight, gpt2.lm_head.weight, rtol=0, atol=0)
    back = to_hf_gpt2(ours)
    assert back.config.tie_word_embeddings is tie
    assert (back.lm_head.weight is back.transformer.wte.weight) == tie
    assert_same_state(back.state_dict(), gpt2.state_dict())
    input_ids = torch.randint(0, gpt2.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = gpt2(input_ids).logits
        assert_close_rel(ours(input_ids).logits, expected)
        assert_same_logits(back(input_ids).logits, expected)


@pytest.mark.parametrize("tie", [True, False])
def test_scratch_round_trip_is_bit_exact_tied_or_untied(tie, tiny_config):
    """The other way round: ScratchGPT → GPT-2 → ScratchGPT, from ScratchGPT's own random init."""
    tiny_config.tie_word_embeddings = tie
    torch.manual_seed(4)
    ours = ScratchGPTForCausalLM(tiny_config).eval()
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == tie
    gpt2 = to_hf_gpt2(ours)
    assert (gpt2.lm_head.weight is gpt2.transformer.wte.weight) == tie
    torch.testing.assert_close(gpt2.lm_head.weight, ours.lm_head.weight, rtol=0, atol=0)
    again = from_hf_gpt2(gpt2)
    assert (again.lm_head.weight is again.transformer.wte.weight) == tie
    assert_same_state(again.state_dict(), ours.state_dict())
    input_ids = torch.randint(0, tiny_config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ours(input_ids).logits
        assert_close_rel(gpt2(input_ids).logits, expected)
        assert_same_logits(again(input_ids).logits, expected)


def test_a_head_untied_behind_a_tied_config_is_refused():
    """A GPT-2 whose config says tied but whose lm_head is its own, different tensor: exchanging only wte would
    change its logits silently, so it is refused, with the size of the difference."""
    gpt2 = random_gpt2(seed=6)
    gpt2.lm_head.weight = torch.nn.Parameter(gpt2.transformer.wte.weight.detach() + 0.5)
    with pytest.raises(ValueError, match=r"tie_word_embeddings=True but its lm_head.weight is not "
                                         r"transformer.wte.weight \(max \|difference\| 0.5\)"):
        from_hf_gpt2(gpt2)


def test_a_tensor_the_name_table_does_not_know_is_refused():
    """Nothing in the source is dropped silently: a tensor outside the name table is named."""
    gpt2 = random_gpt2(seed=7)
    gpt2.transformer.h[0].attn.register_buffer("extra_scale", torch.ones(3))
    with pytest.raises(ValueError, match=r"unexpected \['transformer.h.0.attn.extra_scale'\]"):
        from_hf_gpt2(gpt2)


def test_auto_classes_build_the_model(tiny_config):
    assert isinstance(AutoConfig.for_model("scratch_gpt"), ScratchGPTConfig)
    assert isinstance(AutoModelForCausalLM.from_config(tiny_config), ScratchGPTForCausalLM)
    assert isinstance(AutoModel.from_config(tiny_config), ScratchGPTModel)


def test_save_pretrained_round_trip_is_exact(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    assert {"configuration_scratch_gpt.py", "modeling_scratch_gpt.py"} <= files  # custom code for the Hub
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "scratch_gpt"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_scratch_gpt.ScratchGPTForCausalLM"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is ScratchGPTForCausalLM
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    input_ids = torch.randint(0, tiny_model.config.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, tiny_model(input_ids).logits, rtol=0, atol=0)


def test_init_uses_scaled_residual_projection():
    config = ScratchGPTConfig(vocab_size=64, n_positions=16, n_embd=256, n_layer=8, n_head=4, bos_token_id=63, eos_token_id=63)
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(config)
    block = model.transformer.h[0]
    std = config.initializer_range
    assert block.attn.c_attn.weight.std().item() == pytest.approx(std, rel=0.05)
    residual_std = std / (2 * config.n_layer) ** 0.5
    assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert torch.equal(block.ln_1.weight, torch.ones_like(block.ln_1.weight))


def test_public_api():
    for name in ("ScratchGPTConfig", "ScratchGPTForCausalLM", "from_hf_gpt2", "to_hf_gpt2"):
        assert name in hf_scratch_gpt.__all__ and hasattr(hf_scratch_gpt, name)
