"""ScratchGPT: the GPT-2 architecture written from scratch as a transformers `PreTrainedModel`.

Reads top to bottom: attention → MLP → block → pre-trained base → model → the loss → causal LM → the
classification heads (sequence and token, GPT-2's semantics).
Module names match OpenAI's GPT-2 checkpoints and transformers' `GPT2LMHeadModel` (`transformer.wte`, `wpe`, `h`,
`ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`), so importing weights is a name map
plus one transpose (GPT-2 stores Conv1D weights as (in, out); we use `nn.Linear`, (out, in)).

Beside it, named for what they are: `fused_loss_scratch_gpt.py` (the training-mode loss without the logits),
`decoding_scratch_gpt.py` (the CPU decoding layout and projection) and `checks_scratch_gpt.py` (input, label and
weight-file checks). They ship to the Hub with this file as custom code and import only torch, transformers,
safetensors and the configuration file.
"""

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .checks_scratch_gpt import (
    IGNORE_INDEX,
    check_classification_labels,
    check_folder_before_loading,
    check_forward_kwargs,
    check_generate_options,
    check_inputs,
    check_loss_inputs,
    check_shift_labels,
    check_tied_head,
    one_cache,
)
from .configuration_scratch_gpt import ScratchGPTConfig
from .decoding_scratch_gpt import (
    ScratchGPTLinear,
    contiguous_state_dict,
    contiguous_tied_weights,
    store_linear_weights_transposed,
    warn_if_slow_on_cpu,
)
from .fused_loss_scratch_gpt import chunked_causal_lm_loss

logger = logging.get_logger(__name__)

# transformers 5.25 renamed the forward cache argument and the output field from `past_key_values` to `cache`
# (5.23 knows only `past_key_values`). The model takes the cache under either name and returns it under the field
# the installed transformers' output classes declare, which is the name its `generate` reads back.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

# Every Auto class this file serves → its class, as a saved config's `auto_map` names them. `save_pretrained` writes
# all of them (not only the saved model's own), so that a folder saved from any of the classes loads into the
# others with trust_remote_code where hf_scratch_gpt is not installed: a causal-LM folder into a classifier.
AUTO_MAP = {
    "AutoModel": "modeling_scratch_gpt.ScratchGPTModel",
    "AutoModelForCausalLM": "modeling_scratch_gpt.ScratchGPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_scratch_gpt.ScratchGPTForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_scratch_gpt.ScratchGPTForTokenClassification",
}


# ---------------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ·scale + mask)·v. query (B, nh, Tq, hs), key/value (B, nh, Tk, hs) → (B, Tq, nh, hs)."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, Tq, Tk)
    if attention_mask is not None:  # additive (B, 1, Tq, Tk): 0 where allowed, dtype-min where masked
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(value.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)  # (B, Tq, nh, hs)
    return attn_output, attn_weights


class ScratchGPTAttention(nn.Module):
    """Causal multi-head self-attention with one fused QKV projection."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.attention_dropout = config.attn_pdrop
        self.c_attn = ScratchGPTLinear(config.n_embd, 3 * config.n_embd)  # q | k | v, heads contiguous inside each
        self.c_proj = ScratchGPTLinear(config.n_embd, config.n_embd)
        self.c_proj.writes_to_residual = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)

        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # (B, nh, past + T, hs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch, seq_len, -1)  # (B, T, C)
        attn_output = self.resid_dropout(self.c_proj(attn_output))
        return attn_output, attn_weights


# ---------------------------------------------------------------------------------------------------------------------
# MLP and block
# ---------------------------------------------------------------------------------------------------------------------
# GPT-2's "gelu_new" is the tanh approximation; torch's fused kernel computes the same formula in one pass
# instead of the six element-wise ops of the written-out version (equal to float32 rounding).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


class ScratchGPTMLP(nn.Module):
    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = ScratchGPTLinear(config.n_embd, inner)
        self.c_proj = ScratchGPTLinear(inner, config.n_embd)
        self.c_proj.writes_to_residual = True
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = ScratchGPTMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        attn_output, _ = self.attn(
            self.ln_1(hidden_states), attention_mask=attention_mask, past_key_values=past_key_values, **kwargs
        )
        hidden_states = residual + attn_output

        residual = hidden_states
        hidden_states = residual + self.mlp(self.ln_2(hidden_states))
        return hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# Pre-trained base, model
# ---------------------------------------------------------------------------------------------------------------------
class ScratchGPTPreTrainedModel(PreTrainedModel):
    config: ScratchGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchGPTBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]  # the cache, by either name
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": ScratchGPTBlock,
        "attentions": OutputRecorder(ScratchGPTAttention, index=1),
    }

    # Weights a folder may lack, built fresh (and reported as newly initialised) instead of refused: a task head
    # put on a model trained or converted for another task. The transformer's weights are never among them.
    _head_keys_initialised_when_missing: tuple[str, ...] = ()

    def save_pretrained(self, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; weights stored transposed for decoding (`store_linear_weights_transposed`)
        are made contiguous while it runs, as transformers' shared-tensor check needs. The files are the same.
        A registered model's config gets every class of `AUTO_MAP` in its `auto_map`."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        if kwargs.get("state_dict") is not None:  # e.g. Accelerate's gathered state dict: views of our storage
            kwargs["state_dict"] = contiguous_state_dict(kwargs["state_dict"])
        with contiguous_tied_weights(self):
            return super().save_pretrained(*args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's init: N(0, initializer_range) for weights and embeddings, zero biases, unit LayerNorms, and
        N(0, initializer_range / sqrt(2 * n_layer)) for the projections that write into the residual stream."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "writes_to_residual", False):
                # Two residual additions per layer: keep the stream's variance independent of depth. Decided on
                # the Linear itself because transformers skips parameter-less parents (attention, MLP) when
                # initialising custom-code models.
                std = std / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, safetensors only, with the weight files of a local folder checked
        before anything is read (`check_folder_before_loading`), a tied head checked against the files, and a
        tensor missing from the files (or of another shape, with `ignore_mismatched_sizes=True`) an error instead
        of a fresh random init. The one exception is a classification head's own layer
        (`_head_keys_initialised_when_missing`): a causal-LM folder loads into a classifier with that layer new,
        which transformers' loading report lists as MISSING.

        The class's own, so plain `AutoModelForCausalLM.from_pretrained` is guarded too, with the package imported
        or through trust_remote_code. Built on the public method only: no private loading step has to keep being
        called for the checks to run.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("ScratchGPT loads weights only from safetensors files (pickle can run code); "
                             "use_safetensors must be True or left out")
        kwargs["use_safetensors"] = True
        files = []
        if pretrained_model_name_or_path is not None:
            folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if folder.is_dir():
                files = check_folder_before_loading(folder)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if model.config.tie_word_embeddings and isinstance(model, ScratchGPTForCausalLM):
            check_tied_head(model, files)
        # A tied lm_head.weight is not among the missing keys (tie_weights removed it).
        fresh_allowed = set(cls._head_keys_initialised_when_missing)
        missing = sorted(set(info["missing_keys"]) - fresh_allowed)
        mismatched = sorted({key for key, *_ in info["mismatched_keys"]} - fresh_allowed)
        if mismatched:  # only reported with ignore_mismatched_sizes=True (transformers refuses them otherwise)
            raise ValueError(
                f"the weights in {pretrained_model_name_or_path} hold tensors of another shape than the model's: "
                f"{mismatched}; ignore_mismatched_sizes=True would randomly initialise them (it is allowed only "
                f"for a classification head's own layer, e.g. a different num_labels)"
            )
        if missing:
            raise ValueError(
                f"the weights in {pretrained_model_name_or_path} lack tensors the model needs: "
                f"{missing}; they would be randomly initialised. Save the model again "
                f"(or set tie_word_embeddings=true in config.json if lm_head is meant to share wte's weights)"
            )
        return (model, info) if want_info else model


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """Embeddings → blocks → final LayerNorm; returns the last hidden state (and the cache)."""

    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([ScratchGPTBlock(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        check_forward_kwargs(type(self).__name__, kwargs)
        cache = one_cache(cache, past_key_values)
        past_length = cache.get_seq_length() if cache is not None else 0
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, past_length, position_ids)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.size(1), device=inputs_embeds.device).unsqueeze(0) + past_length
        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))

        # None when the mask is plainly causal (sdpa then uses its is_causal kernel); 4-D additive/bool otherwise.
        # The cache is passed by position: its keyword is `past_key_values` before transformers 5.25, `cache` after.
        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids=position_ids)
        for block in self.h:
            hidden_states = block(hidden_states, causal_mask, cache, position_ids=position_ids, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_FIELD: cache if use_cache else None})


# ---------------------------------------------------------------------------------------------------------------------
# The loss: shift → flatten → cross-entropy with -100 masking
# ---------------------------------------------------------------------------------------------------------------------
def shift_and_flatten(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair the prediction at position t with the token at t+1 and flatten batch and time.

    logits: (B, T, V), labels: (B, T) → (N, V) and (N,) with N = B * (T - 1).
    """
    shift_logits = logits[..., :-1, :]  # (B, T-1, V): position t predicts token t+1
    shift_labels = labels[..., 1:]  # (B, T-1)
    return shift_logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose (shifted) label is not -100.

    - `labels` (B, T) are aligned with the input; the prediction at t is scored against `labels[t + 1]`.
    - `shift_labels` (B, T), when given, are the targets already aligned with the predictions (the prediction at t
      is scored against `shift_labels[t]`, -100 = not scored) and `labels` are ignored. Context/sequence
      parallelism (Accelerate CP, DeepSpeed Ulysses/ALST) shifts the full sequence before sharding it, so that a
      shard's last position still gets its target, and hands the model `shift_labels`.
    - Computed in float32 even when the model runs in bf16/fp16.
    - `num_items_in_batch` (what `Trainer` passes under gradient accumulation): the token losses are summed and
      divided by that count, so accumulated micro-batches give the same loss as one large batch.
    - When every label is -100 the loss is exactly 0.0 (and so are its gradients), never NaN: the sum over no
      tokens is 0 and the divisor is clamped to at least 1.
    """
    if shift_labels is not None:
        check_shift_labels(shift_labels, logits)
        check_loss_inputs(shift_labels, logits.size(-1), num_items_in_batch, already_shifted=True)
        flat_logits, flat_labels = logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1)  # (N, V), (N,)
    elif labels is not None:
        check_loss_inputs(labels, logits.size(-1), num_items_in_batch)
        flat_logits, flat_labels = shift_and_flatten(logits, labels)
    else:
        raise ValueError("causal_lm_loss needs labels or shift_labels")
    summed = F.cross_entropy(
        flat_logits.float(),
        flat_labels.to(flat_logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    if num_items_in_batch is None:
        num_items_in_batch = (flat_labels != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(summed.device)
        return summed / num_items_in_batch.clamp(min=1)
    return summed / max(int(num_items_in_batch), 1)


def perplexity(loss: float | torch.Tensor) -> float:
    """Perplexity = exp(mean NLL per token, in nats)."""
    if isinstance(loss, torch.Tensor):
        loss = loss.detach()  # a loss straight from forward requires grad; float() of it warns
    return math.exp(float(loss))


# ---------------------------------------------------------------------------------------------------------------------
# Causal LM
# ---------------------------------------------------------------------------------------------------------------------
class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """ScratchGPTModel with a language-modelling head tied to the token embedding."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__(config)
        self.transformer = ScratchGPTModel(config)
        self.lm_head = ScratchGPTLinear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`, with the beam count checked, a `SlowDtypeWarning` for a bf16/fp16 model on a CPU
        without instructions for it, and the weights first stored for fast decoding (`store_linear_weights_transposed`,
        once; a model in training mode is left as it is).

        Done here rather than at construction: training, `Trainer` and Accelerate checkpoints keep the contiguous
        storage they expect (safetensors' shared-tensor check cannot read a transposed tied weight).
        """
        check_generate_options(kwargs, self.generation_config)
        warn_if_slow_on_cpu(self.dtype, self.device)
        if not self.training:
            store_linear_weights_transposed(self)
        return super().generate(*args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the next-token loss, aligned with `input_ids` (the model shifts them). Positions set to
            -100 are ignored. When every position is -100 the loss is 0.0.
        cache (`Cache`, *optional*), or `past_key_values`:
            The key/value cache of earlier positions (`DynamicCache`, or the cache the previous call returned with
            `use_cache=True`). transformers 5.25 calls it `cache`, earlier versions `past_key_values`; either name
            is accepted (not both), and the output carries it under the installed version's name.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            Number of unmasked target tokens across the whole (accumulated) batch; when given, the loss is the sum
            of token losses divided by it. `Trainer` passes it under gradient accumulation.
        shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*, keyword):
            Targets already aligned with the predictions (position t is scored against `shift_labels[t]`, no shift;
            -100 is ignored). When given, the loss uses them and not `labels`. `Trainer` passes them under context
            parallelism, where the sequence is shifted before it is sharded.
        """
        # Taken from **kwargs, as transformers' own models do, not as a named parameter: Trainer treats every
        # forward parameter with "label" in its name as a label column (`find_labels`) and would then expect
        # `shift_labels` in every evaluation batch.
        shift_labels: torch.Tensor | None = kwargs.pop("shift_labels", None)
        check_forward_kwargs(type(self).__name__, kwargs)
        reference = input_ids if input_ids is not None else None if inputs_embeds is None else inputs_embeds[..., 0]
        for name, targets in (("labels", labels), ("shift_labels", shift_labels)):
            if targets is None:
                continue
            if targets.dtype.is_floating_point or targets.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor of token ids, got dtype {targets.dtype}")
            if reference is not None and targets.shape != reference.shape:
                raise ValueError(
                    f"{name} shape {tuple(targets.shape)} does not match the input shape {tuple(reference.shape)}"
                )
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)

        loss, logits = None, None
        has_targets = labels is not None or shift_labels is not None
        # The fused loss reads lm_head.weight itself: only while lm_head is a plain Linear. A wrapped head (e.g. a
        # PEFT LoRA layer, not an nn.Linear) is called as a module, so its own forward is never bypassed.
        if has_targets and self.training and self.config.loss_chunk_size > 0 and isinstance(self.lm_head, nn.Linear):
            # Memory-lean training path: the loss (and its gradients) without materialising the logits.
            loss = chunked_causal_lm_loss(
                hidden_states, self.lm_head.weight, labels, num_items_in_batch, self.config.label_smoothing,
                chunk_size=self.config.loss_chunk_size, shift_labels=shift_labels,
            )
        else:
            logits = self.lm_head(hidden_states)  # (B, T, V)
            if has_targets:
                loss = causal_lm_loss(
                    logits, labels, num_items_in_batch, self.config.label_smoothing, shift_labels=shift_labels
                )

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

# ---------------------------------------------------------------------------------------------------------------------
# Classification heads: transformers' GPT2ForSequenceClassification and GPT2ForTokenClassification
# ---------------------------------------------------------------------------------------------------------------------
def last_non_pad_positions(
    config: ScratchGPTConfig, input_ids: torch.Tensor | None, batch_size: int, owner: str
) -> torch.Tensor | int:
    """Where each row's sequence ends, GPT-2's rule: the rightmost position whose id is not `pad_token_id`, so left
    and right padding both work (a row of nothing but padding gives 0; a pad id equal to eos treats a trailing eos
    as padding). Without a pad token only a batch of one is accepted, ending at the last position; with
    `inputs_embeds` padding cannot be seen, and the last position is taken (with a warning)."""
    if config.pad_token_id is None and batch_size != 1:
        raise ValueError(
            "Cannot handle batch sizes > 1 if no padding token is defined. "
            f"{owner} pools each row at its last token that is not padding: set config.pad_token_id (e.g. to the "
            f"tokenizer's pad_token_id, or its eos_token_id if it has no pad token); batch size {batch_size}"
        )
    if config.pad_token_id is None:
        return -1
    if input_ids is None:
        logger.warning_once(
            f"{owner} will not detect padding tokens in `inputs_embeds`. Results may be unexpected if using padding "
            "tokens in conjunction with `inputs_embeds.`"
        )
        return -1
    non_pad = (input_ids != config.pad_token_id).to(torch.int32)  # (B, T)
    positions = torch.arange(input_ids.size(-1), device=input_ids.device, dtype=torch.int32)
    return (positions * non_pad).argmax(-1)  # (B,)


def infer_problem_type(num_labels: int, labels: torch.Tensor) -> str:
    """transformers' rule: one label is regression, integer labels pick one class, anything else is multi-label."""
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    problem_type: str,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of GPT-2's classification heads, computed in float32. `logits` (..., num_labels): pooled (B, n) or
    per token (B, T, n), the latter always single-label.

    - regression: mean squared error (with one label, of the squeezed logits and labels);
    - single_label_classification: cross-entropy of class indices, -100 ignored;
    - multi_label_classification: binary cross-entropy with logits, a float target per label.

    The mean is over the scored items; with `num_items_in_batch` (what `Trainer` passes under gradient accumulation
    and counts as the labels that are not -100) the sum is divided by it instead, so accumulated micro-batches give
    the loss of one large batch for every problem type.
    """
    check_classification_labels(labels, problem_type, logits)
    logits, labels = logits.float(), labels.to(logits.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    num_labels = logits.size(-1)
    if problem_type == "regression":
        if num_labels == 1:
            logits, labels = logits.squeeze(), labels.squeeze()
        loss = F.mse_loss(logits, labels, reduction=reduction)
    elif problem_type == "single_label_classification":
        loss = F.cross_entropy(
            logits.view(-1, num_labels), labels.view(-1), ignore_index=IGNORE_INDEX, reduction=reduction
        )
    else:
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction=reduction)
    if num_items_in_batch is None:
        return loss
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class ScratchGPTForSequenceClassification(ScratchGPTPreTrainedModel):
    """ScratchGPTModel with a linear `score` layer (no bias) read at each row's last token that is not padding."""

    _head_keys_initialised_when_missing = ("score.weight",)

    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = ScratchGPTModel(config)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.Tensor` of shape `(batch_size,)` or `(batch_size, num_labels)`, *optional*):
            Class indices in `[0, num_labels)` (single-label; -100 leaves a row out), float targets (regression
            when `num_labels == 1`, else multi-label), as `config.problem_type` says; when it is None it is set from
            the first labels seen, as transformers does (see `infer_problem_type`).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            Number of scored items across the whole (accumulated) batch; the loss is then their sum divided by it.
        """
        check_forward_kwargs(type(self).__name__, kwargs)
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        batch_size = logits.size(0)
        last = last_non_pad_positions(self.config, input_ids, batch_size, type(self).__name__)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last]  # (B, num_labels)

        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                self.config.problem_type = infer_problem_type(self.num_labels, labels)
            loss = classification_loss(pooled_logits, labels, self.config.problem_type, num_items_in_batch)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class ScratchGPTForTokenClassification(ScratchGPTPreTrainedModel):
    """ScratchGPTModel with dropout and a linear `classifier` layer (with bias) at every position."""

    _head_keys_initialised_when_missing = ("classifier.weight", "classifier.bias")

    def __init__(self, config: ScratchGPTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = ScratchGPTModel(config)
        # GPT-2's choice: config.classifier_dropout, else config.hidden_dropout, else 0.1 (not resid_pdrop).
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.classifier = nn.Linear(config.n_embd, self.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            A class index in `[0, num_labels)` for each token, aligned with the input (no shift); -100 leaves a
            token (e.g. padding) out of the loss.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*):
            Number of labels that are not -100 across the whole (accumulated) batch; the loss is then the sum of
            token losses divided by it.
        """
        check_forward_kwargs(type(self).__name__, kwargs)
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, "single_label_classification", num_items_in_batch)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "AUTO_MAP",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
    "ScratchGPTForTokenClassification",
    "ScratchGPTLinear",
    "ScratchGPTModel",
    "ScratchGPTPreTrainedModel",
    "causal_lm_loss",
    "chunked_causal_lm_loss",
    "classification_loss",
    "infer_problem_type",
    "last_non_pad_positions",
    "perplexity",
    "shift_and_flatten",
    "store_linear_weights_transposed",
]
