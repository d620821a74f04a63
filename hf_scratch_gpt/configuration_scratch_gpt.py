"""Configuration of ScratchGPT: GPT-2's field names, OpenAI's four released sizes as presets.

This file ships to the Hub next to ``modeling_scratch_gpt.py`` (custom code), so it imports only transformers.
"""

import math
from typing import Any

from transformers import PreTrainedConfig

# OpenAI's released GPT-2 sizes (hparams.json of each checkpoint) plus small shapes for tests and demos.
# Presets are data: ``ScratchGPTConfig.from_preset(name, **overrides)`` reads this table. None of them names
# bos/eos: the config's default puts <|endoftext|> at the last id (50256 for GPT-2's vocabulary), so an overridden
# vocab_size moves it along.
_OPENAI_COMMON: dict[str, Any] = {"vocab_size": 50257, "n_positions": 1024}
PRESETS: dict[str, dict[str, Any]] = {
    "124M": {**_OPENAI_COMMON, "n_layer": 12, "n_head": 12, "n_embd": 768},
    "355M": {**_OPENAI_COMMON, "n_layer": 24, "n_head": 16, "n_embd": 1024},
    "774M": {**_OPENAI_COMMON, "n_layer": 36, "n_head": 20, "n_embd": 1280},
    "1558M": {**_OPENAI_COMMON, "n_layer": 48, "n_head": 25, "n_embd": 1600},
    # Seconds-per-test size: every code path, none of the cost.
    "tiny": {"vocab_size": 512, "n_positions": 128, "n_layer": 2, "n_head": 4, "n_embd": 64},
}

# Activations the MLP accepts. "gelu_new" is GPT-2's tanh approximation (the OpenAI checkpoints use it).
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")

# Fields that must be integers >= 1.
_POSITIVE_INT_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# Fields that must be probabilities in [0, 1).
_DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "label_smoothing")
# Fields that must be finite numbers > 0.
_POSITIVE_FLOAT_FIELDS = ("layer_norm_epsilon", "initializer_range")
# Fields that must be real booleans: a string such as "no" or "false" would be truthy.
_BOOL_FIELDS = ("tie_word_embeddings", "use_cache")
# Special-token fields: None or token ids inside the vocabulary (eos may be a list of ids).
_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# A model whose parameters cannot exist: far beyond GPT-2 1558M (1.6e9), 4 TB in float32. Checked before any
# allocation so that a typo such as n_positions=10**12 is named here instead of failing inside torch.
MAX_PARAMETERS = 10**12


class _LastTokenId:
    """Default of `bos_token_id` / `eos_token_id`, meaning "not given": `__post_init__` replaces it with
    `vocab_size - 1`. A distinct object, not None, because None given explicitly means "no such token" and is kept;
    no config instance ever holds it after construction (so `to_dict`, `config.json` and copies never see it)."""

    def __repr__(self) -> str:
        return "<vocab_size - 1>"


_LAST_TOKEN_ID = _LastTokenId()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ScratchGPTConfig(PreTrainedConfig):
    r"""Configuration for [`ScratchGPTModel`] and [`ScratchGPTForCausalLM`].

    Field names follow GPT-2's (`n_embd`, `n_layer`, ...) so OpenAI's `hparams.json` and GPT-2 configs map one to
    one; `attribute_map` exposes the standard transformers names (`hidden_size`, `num_hidden_layers`,
    `num_attention_heads`, `max_position_embeddings`).

    Args:
        vocab_size: number of tokens.
        n_positions: longest sequence the position embedding covers.
        n_embd: width of the residual stream.
        n_layer: number of transformer blocks.
        n_head: attention heads per block; must divide `n_embd`.
        n_inner: MLP width; `None` means `4 * n_embd`.
        activation_function: one of `SUPPORTED_ACTIVATIONS`.
        resid_pdrop, embd_pdrop, attn_pdrop: dropout probabilities.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: standard deviation of the normal init; residual projections use
            `initializer_range / sqrt(2 * n_layer)` (GPT-2's scaled init).
        label_smoothing: label smoothing of the built-in loss (0.0 = plain cross-entropy).
        loss_chunk_size: in training mode with `labels`, the loss is computed by the memory-lean fused
            head + cross-entropy (`chunked_causal_lm_loss`), this many positions at a time, and `logits` is not
            returned (None). 0 selects the explicit path (`causal_lm_loss` on full logits) everywhere. Both
            paths agree to float32 rounding; eval mode always returns logits.
        bos_token_id, eos_token_id: id of `<|endoftext|>`, which GPT-2 uses for both. Not given, each is the last
            id of the vocabulary, `vocab_size - 1` (50256 for GPT-2's 50257 tokens, as OpenAI's checkpoints have it),
            so `ScratchGPTConfig(vocab_size=N)` is valid for every N >= 1. Given explicitly, the value is kept: `None`
            (no such token), or a token id in `[0, vocab_size)` (`eos_token_id` may be a list of them); an id outside
            the vocabulary is refused. The default is taken once, at construction: changing `vocab_size` later does
            not move the ids. Saved configs always hold both values, so a `config.json` loads with the ids it was
            saved with, None included.
        pad_token_id: `None` (the default) or a token id in `[0, vocab_size)`.
        tie_word_embeddings: output head shares the token embedding matrix.
    """

    model_type = "scratch_gpt"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache under 5.23's name and 5.25's
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float | int = 0.1
    embd_pdrop: float | int = 0.1
    attn_pdrop: float | int = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    label_smoothing: float | int = 0.0
    loss_chunk_size: int = 1024
    use_cache: bool = True
    bos_token_id: int | None = _LAST_TOKEN_ID  # type: ignore[assignment]  # resolved in __post_init__
    eos_token_id: int | list[int] | None = _LAST_TOKEN_ID  # type: ignore[assignment]
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # Before transformers' own post-init, which may already log the config (and so serialise these fields).
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is _LAST_TOKEN_ID:
                # An invalid vocab_size gets None here and is named by check_values.
                last_id = self.vocab_size - 1 if _is_int(self.vocab_size) and self.vocab_size >= 1 else None
                setattr(self, name, last_id)
        super().__post_init__(**kwargs)
        self.check_values()

    def validate_architecture(self):
        """Part of transformers' strict validation (also run by `save_pretrained`)."""
        self.check_values()

    def check_values(self) -> None:
        """Raise `ValueError` naming the first field whose type or value cannot build a working model.

        transformers' own checks do not cover these: `PreTrainedConfig`'s type validation (`@strict`) applies to
        its own fields only, and it merely warns about special-token ids outside the vocabulary.
        """
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ScratchGPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not _is_int(self.n_inner) or self.n_inner < 1):
            raise ValueError(f"ScratchGPTConfig.n_inner must be None or a positive integer, got {self.n_inner!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ScratchGPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"the remainder is {self.n_embd % self.n_head}"
            )
        self._check_size()
        for name in _DROPOUT_FIELDS:
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"ScratchGPTConfig.{name} must be a number in [0, 1), got {value!r}")
        for name in _POSITIVE_FLOAT_FIELDS:
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 < value < math.inf:
                raise ValueError(f"ScratchGPTConfig.{name} must be a finite number > 0, got {value!r}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"ScratchGPTConfig.{name} must be True or False, got {value!r}")
        if not _is_int(self.loss_chunk_size) or self.loss_chunk_size < 0:
            raise ValueError(f"ScratchGPTConfig.loss_chunk_size must be an integer >= 0, got {self.loss_chunk_size!r}")
        if not isinstance(self.activation_function, str) or self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"ScratchGPTConfig.activation_function must be one of {SUPPORTED_ACTIVATIONS}, "
                f"got {self.activation_function!r}"
            )
        for name in _TOKEN_ID_FIELDS:
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(_is_int(i) and 0 <= i < self.vocab_size for i in ids):
                raise ValueError(
                    f"ScratchGPTConfig.{name} must be None or a token id in [0, vocab_size={self.vocab_size})"
                    f"{' (or a list of them)' if name == 'eos_token_id' else ''}, got {value!r}"
                )

    def _check_size(self) -> None:
        """Refuse a shape whose parameters cannot be allocated, naming the field that makes it so."""
        inner = self.n_inner if self.n_inner is not None else 4 * self.n_embd
        # Parameters each field multiplies (biases and LayerNorms are negligible next to these).
        contributions = {
            "vocab_size": self.vocab_size * self.n_embd,  # wte (and an untied lm_head of the same size)
            "n_positions": self.n_positions * self.n_embd,  # wpe
            "n_layer": self.n_layer * (4 * self.n_embd * self.n_embd + 2 * self.n_embd * inner),
        }
        total = sum(contributions.values())
        if total > MAX_PARAMETERS:
            name = max(contributions, key=contributions.get)
            raise ValueError(
                f"ScratchGPTConfig.{name}={getattr(self, name)} gives a model of about {total:.2e} parameters "
                f"({contributions[name]:.2e} from {name} with n_embd={self.n_embd}); at most {MAX_PARAMETERS:.0e} "
                "can be built"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ScratchGPTConfig":
        """Config for a named preset (`124M`, `355M`, `774M`, `1558M`, `tiny`), with fields overridden.

        Presets leave the special ids to the config's default, `<|endoftext|>` (bos = eos) at the last id as in
        GPT-2, so they follow an overridden `vocab_size` (`from_preset("tiny", vocab_size=97)` has bos = eos = 96);
        ids given in `overrides` are kept.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["PRESETS", "SUPPORTED_ACTIVATIONS", "ScratchGPTConfig"]
