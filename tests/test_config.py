import pytest

from hf_scratch_gpt import PRESETS, ScratchGPTConfig, ScratchGPTForCausalLM

OPENAI_SIZES = {"124M": (12, 12, 768), "355M": (24, 16, 1024), "774M": (36, 20, 1280), "1558M": (48, 25, 1600)}


@pytest.mark.parametrize("name", sorted(OPENAI_SIZES))
def test_openai_presets(name):
    config = ScratchGPTConfig.from_preset(name)
    assert (config.n_layer, config.n_head, config.n_embd) == OPENAI_SIZES[name]
    assert (config.vocab_size, config.n_positions) == (50257, 1024)
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == OPENAI_SIZES[name]
    assert config.max_position_embeddings == 1024


def test_124M_parameter_count():
    """The 124M preset really has GPT-2 small's 124,439,808 parameters (tied head counted once)."""
    import torch

    with torch.device("meta"):
        model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("124M"))
    assert model.num_parameters() == 124_439_808


def test_tiny_preset_and_overrides():
    config = ScratchGPTConfig.from_preset("tiny", n_layer=3)
    assert config.n_layer == 3 and config.n_embd == PRESETS["tiny"]["n_embd"]


def test_attribute_map_sets_gpt2_fields():
    config = ScratchGPTConfig(hidden_size=48, num_attention_heads=6, num_hidden_layers=2, max_position_embeddings=16)
    assert (config.n_embd, config.n_head, config.n_layer, config.n_positions) == (48, 6, 2, 16)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"n_embd": 65, "n_head": 12}, "n_embd (65)"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_head": -2}, "n_head"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_positions": 2.5}, "n_positions"),
        ({"n_inner": 0}, "n_inner"),
        ({"attn_pdrop": 1.0}, "attn_pdrop"),
        ({"resid_pdrop": -0.1}, "resid_pdrop"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon"),
        ({"activation_function": "swish"}, "activation_function"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        # Wrong types and non-finite values (issue 12.9): named, never a TypeError or a silently truthy string.
        ({"layer_norm_epsilon": float("inf")}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon"),
        ({"initializer_range": float("nan")}, "initializer_range"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
        ({"use_cache": 1}, "use_cache"),
        ({"resid_pdrop": "0.1"}, "resid_pdrop"),
        ({"embd_pdrop": None}, "embd_pdrop"),
        ({"label_smoothing": "0.1"}, "label_smoothing"),
        ({"activation_function": ["relu"]}, "activation_function"),
        ({"loss_chunk_size": 2.0}, "loss_chunk_size"),
        # Special tokens outside the vocabulary (transformers only warns about these).
        ({"bos_token_id": -7}, "bos_token_id"),
        ({"eos_token_id": 50257}, "eos_token_id"),
        ({"eos_token_id": [50256, 60000]}, "eos_token_id"),
        ({"pad_token_id": 1.5}, "pad_token_id"),
        # A shape that cannot be allocated is named before any allocation.
        ({"n_positions": 10**12}, "n_positions=1000000000000"),
        ({"n_layer": 10**6}, "n_layer=1000000"),
    ],
)
def test_invalid_values_raise_naming_the_field(overrides, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        ScratchGPTConfig(**overrides)


def test_valid_special_token_ids_and_flags_are_accepted():
    config = ScratchGPTConfig(eos_token_id=[50256, 0], bos_token_id=0, pad_token_id=50256, tie_word_embeddings=False)
    assert config.eos_token_id == [50256, 0] and config.tie_word_embeddings is False


def test_preset_special_ids_follow_an_overridden_vocab_size():
    """Presets put <|endoftext|> at the last id; an overridden vocab_size moves it there, explicit ids win."""
    config = ScratchGPTConfig.from_preset("tiny", vocab_size=97)
    assert (config.bos_token_id, config.eos_token_id) == (96, 96)
    config = ScratchGPTConfig.from_preset("124M", vocab_size=300, bos_token_id=0, eos_token_id=1)
    assert (config.bos_token_id, config.eos_token_id) == (0, 1)
    assert ScratchGPTConfig.from_preset("124M").eos_token_id == 50256
    assert (ScratchGPTConfig().bos_token_id, ScratchGPTConfig().eos_token_id) == (50256, 50256)  # GPT-2's


@pytest.mark.parametrize("vocab_size", [1, 2, 97, 300, 50256, 50304])
def test_a_bare_config_builds_for_any_vocabulary(vocab_size):
    """Issue 26: no special ids given, bos = eos = the last id (GPT-2's <|endoftext|> place), for every vocabulary."""
    config = ScratchGPTConfig(vocab_size=vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (vocab_size - 1, vocab_size - 1, None)


@pytest.mark.parametrize("field", ["bos_token_id", "eos_token_id", "pad_token_id"])
@pytest.mark.parametrize("value", [300, 50256, -1])
def test_an_explicit_id_outside_a_small_vocabulary_is_refused(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be None or a token id in \[0, vocab_size=300\).*got {value}"):
        ScratchGPTConfig(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2, **{field: value})


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"bos_token_id": None, "eos_token_id": None},  # None given means "no such token": kept, not the default
        {"bos_token_id": 5, "eos_token_id": None},
        {"bos_token_id": 3, "eos_token_id": [4, 299], "pad_token_id": 0},
    ],
)
def test_special_ids_given_or_not_survive_save_and_load(given, tmp_path):
    """Only ids not given follow the vocabulary. config.json always holds both ids, so loading gives the saved ones
    back (None included), not the default; to_dict, to_diff_dict and from_dict agree."""
    import json

    config = ScratchGPTConfig(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2, **given)
    expected = {"bos_token_id": 299, "eos_token_id": 299, "pad_token_id": None, **given}
    assert {name: getattr(config, name) for name in expected} == expected
    for serialised in (config.to_dict(), config.to_diff_dict()):
        assert {name: serialised[name] for name in expected} == expected
        assert ScratchGPTConfig.from_dict(serialised).to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {name: saved[name] for name in expected} == expected
    loaded = ScratchGPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    # A loaded config with another vocabulary keeps the saved ids (all inside 300 < 1000), not 999.
    assert ScratchGPTConfig.from_pretrained(tmp_path, vocab_size=1000).bos_token_id == expected["bos_token_id"]


def test_a_config_json_without_special_ids_gets_the_default(tmp_path):
    """A hand-written config.json that leaves the ids out loads with the default rule, like the constructor."""
    import json

    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "scratch_gpt", "vocab_size": 97, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    ))
    config = ScratchGPTConfig.from_pretrained(tmp_path)
    assert (config.bos_token_id, config.eos_token_id) == (96, 96)


def test_model_forward_default_config_values():
    """transformers' common model test of that name (tests/test_modeling_common.py, 5.23): the config of a small model,
    rebuilt from its diff dict without pad/eos/bos/sep ids and tie_word_embeddings, builds a model that runs."""
    import torch

    config = ScratchGPTConfig(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    config_dict = config.to_diff_dict()
    for name in ("pad_token_id", "eos_token_id", "bos_token_id", "sep_token_id", "tie_word_embeddings"):
        config_dict.pop(name, None)
    config = ScratchGPTConfig(**config_dict)
    assert (config.bos_token_id, config.eos_token_id, config.tie_word_embeddings) == (98, 98, True)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(config, name, 0)
    model = ScratchGPTForCausalLM(config).eval()
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 98]])).logits.shape == (1, 3, 99)


def test_saved_config_is_validated_when_loaded(tmp_path):
    """A hand-edited config.json with a truthy string is refused on load, naming the field."""
    import json

    ScratchGPTConfig.from_preset("tiny").save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["tie_word_embeddings"] = "no"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tie_word_embeddings must be True or False, got 'no'"):
        ScratchGPTConfig.from_pretrained(tmp_path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ScratchGPTConfig.from_preset("huge")


def test_config_round_trip(tmp_path):
    config = ScratchGPTConfig.from_preset("tiny", label_smoothing=0.05)
    config.save_pretrained(tmp_path)
    loaded = ScratchGPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
