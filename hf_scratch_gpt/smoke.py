"""A seconds-long check that the installed package works: tiny model, loss and perplexity of one sentence."""

import torch

from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import ScratchGPTForCausalLM, perplexity


def smoke_run(text: str, seed: int = 0) -> dict:
    """Untrained tiny model on the UTF-8 bytes of `text` (byte ids < 256 fit the tiny vocabulary).

    An untrained model is close to uniform, so the perplexity is close to the vocabulary size.
    """
    if not text:
        raise ValueError("text must not be empty")
    torch.manual_seed(seed)
    config = ScratchGPTConfig.from_preset("tiny")
    model = ScratchGPTForCausalLM(config).eval()
    input_ids = torch.tensor([list(text.encode("utf-8"))[: config.n_positions]])
    with torch.no_grad():
        loss = model(input_ids, labels=input_ids).loss
    return {
        "parameters": model.num_parameters(),
        "tokens": input_ids.numel(),
        "loss": round(loss.item(), 4),
        "perplexity": round(perplexity(loss), 2),
        "vocab_size": config.vocab_size,
    }
