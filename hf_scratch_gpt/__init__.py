"""hf_scratch_gpt: a GPT-2 written from scratch that lives inside the Hugging Face ecosystem.

Importing the package registers `ScratchGPTConfig` and the models with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .configuration_scratch_gpt import PRESETS, ScratchGPTConfig
from .modeling_scratch_gpt import (
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    ScratchGPTForTokenClassification,
    ScratchGPTModel,
    ScratchGPTPreTrainedModel,
    causal_lm_loss,
    chunked_causal_lm_loss,
    perplexity,
    shift_and_flatten,
)
from .loading import load_model, load_tokenizer

__version__ = "0.1.0"

AutoConfig.register(ScratchGPTConfig.model_type, ScratchGPTConfig, exist_ok=True)
AutoModel.register(ScratchGPTConfig, ScratchGPTModel, exist_ok=True)
AutoModelForCausalLM.register(ScratchGPTConfig, ScratchGPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ScratchGPTConfig, ScratchGPTForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(ScratchGPTConfig, ScratchGPTForTokenClassification, exist_ok=True)
# save_pretrained then writes `auto_map` (every class of modeling_scratch_gpt.AUTO_MAP) and copies the
# configuration/modeling files, so the saved folder also loads with trust_remote_code=True where this package is
# not installed, into any of these classes.
ScratchGPTConfig.register_for_auto_class()
ScratchGPTModel.register_for_auto_class("AutoModel")
ScratchGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ScratchGPTForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
ScratchGPTForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
# `Trainer(label_smoothing_factor=...)` (and subclasses such as TRL's SFTTrainer) shifts the labels for its label
# smoother only when the model's class NAME is a value of this table; `AutoModelForCausalLM.register` does not add
# it there, so without this line plain Trainer smooths every prediction against its own input token. The auto
# mappings only read this table's entries whose model type is also in transformers' own config table, so the
# entry changes nothing else.
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(ScratchGPTConfig.model_type, ScratchGPTForCausalLM.__name__)


def from_hf_gpt2(*args, **kwargs):
    """See `hf_scratch_gpt.gpt2_weights.from_hf_gpt2`."""
    from .gpt2_weights import from_hf_gpt2 as _from_hf_gpt2

    return _from_hf_gpt2(*args, **kwargs)


def to_hf_gpt2(*args, **kwargs):
    """See `hf_scratch_gpt.gpt2_weights.to_hf_gpt2`."""
    from .gpt2_weights import to_hf_gpt2 as _to_hf_gpt2

    return _to_hf_gpt2(*args, **kwargs)


def convert_openai_checkpoint(*args, **kwargs):
    """See `hf_scratch_gpt.openai.convert.convert_openai_checkpoint` (imports TensorFlow only when called)."""
    from .openai.convert import convert_openai_checkpoint as _convert_openai_checkpoint

    return _convert_openai_checkpoint(*args, **kwargs)


__all__ = [
    "PRESETS",
    "ScratchGPTConfig",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
    "ScratchGPTForTokenClassification",
    "ScratchGPTModel",
    "ScratchGPTPreTrainedModel",
    "causal_lm_loss",
    "chunked_causal_lm_loss",
    "convert_openai_checkpoint",
    "from_hf_gpt2",
    "load_model",
    "load_tokenizer",
    "perplexity",
    "shift_and_flatten",
    "to_hf_gpt2",
]
