"""Configuration of ScratchGPT: GPT-2's field names, OpenAI's four released sizes as presets.

This file ships to the Hub next to ``modeling_scratch_gpt.py`` (custom code), so it imports only transformers.
"""


from typing import Any

from transformers import PreTrainedConfig

# OpenAI's released GPT-2 sizes (hparams.json of each checkpoint) plus small shapes for tests and demos.
# Presets are data: ``ScratchGPTConfig.from_preset(name, **overrides)`` reads this table.
_OPENAI_COMMON: dict[str, Any] = {"vocab_size": 50257, "n_positions": 1024}
PRESETS: dict[str, dict[str, Any]] = {
    "124M": {**_OPENAI_COMMON, "n_layer": 12, "n_head": 12, "n_embd": 768},
    "355M": {**_OPENAI_COMMON, "n_layer": 24, "n_head": 16, "n_embd": 1024},
    "774M": {**_OPENAI_COMMON, "n_layer": 36, "n_head": 20, "n_embd": 1280},
    "1558M": {**_OPENAI_COMMON, "n_layer": 48, "n_head": 25, "n_embd": 1600},
    # Seconds-per-test size: every code path, none of the cost.
    "tiny": {
        "vocab_size": 512, "n_positions": 128, "n_layer": 2, "n_head": 4, "n_embd": 64,
        "bos_token_id": 511, "eos_token_id": 511,
    },
}

# Activations the MLP accepts. "gelu_new" is GPT-2's tanh approximation (the OpenAI checkpoints use it).
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")

# Fields that must be integers >= 1.
_POSITIVE_INT_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# Fields that must be probabilities in [0, 1).
_DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


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
        tie_word_embeddings: output head shares the token embedding matrix.
    """

    model_type = "scratch_gpt"
    keys_to_ignore_at_inference = ["past_key_values"]
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
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_values()

    def validate_architecture(self):
        """Part of transformers' strict validation (also run by `save_pretrained`)."""
        self.check_values()

    def check_values(self) -> None:
        """Raise `ValueError` naming the first field whose value cannot build a model."""
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ScratchGPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (
            isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int) or self.n_inner < 1
        ):
            raise ValueError(f"ScratchGPTConfig.n_inner must be None or a positive integer, got {self.n_inner!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ScratchGPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"the remainder is {self.n_embd % self.n_head}"
            )
        for name in _DROPOUT_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ScratchGPTConfig.{name} must be in [0, 1), got {value!r}")
        if isinstance(self.loss_chunk_size, bool) or not isinstance(self.loss_chunk_size, int) or self.loss_chunk_size < 0:
            raise ValueError(f"ScratchGPTConfig.loss_chunk_size must be an integer >= 0, got {self.loss_chunk_size!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"ScratchGPTConfig.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"ScratchGPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"ScratchGPTConfig.initializer_range must be > 0, got {self.initializer_range!r}")
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"ScratchGPTConfig.activation_function must be one of {SUPPORTED_ACTIVATIONS}, "
                f"got {self.activation_function!r}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ScratchGPTConfig":
        """Config for a named preset (`124M`, `355M`, `774M`, `1558M`, `tiny`), with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["PRESETS", "SUPPORTED_ACTIVATIONS", "ScratchGPTConfig"]
