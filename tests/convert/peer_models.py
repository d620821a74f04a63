"""The three source projects' models and file writers, rebuilt for the tests from their own code's structure: the
same module and parameter names, the same torch operations in the same order, and files written byte for byte as
the projects write them. Nothing here imports hf_scratch_gpt.

- nanoGPT (`model.py`, `train.py`, `data/shakespeare_char/prepare.py`, 2025-11): `NanoGPT`,
  `save_nanogpt_checkpoint`, `write_meta_pkl`.
- llm.c (`train_gpt2.py`, 2025-05): `LlmcGPT`, `write_llmc_model`, `write_llmc_tokenizer`.
- LLMs from scratch (ch04/ch05 `previous_chapters.py`, 2026-04): `BookGPTModel`.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Weights large enough for O(1) logits (the projects' 0.02 init gives logits too flat to tell a wrong mapping
    from a right one): norm gains near 1, everything else N(0, 0.2), biases N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", ".scale")):
                parameter.copy_(1 + 0.1 * noise)
            elif parameter.dim() == 1:
                parameter.copy_(0.1 * noise)
            else:
                parameter.copy_(0.2 * noise)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# nanoGPT
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class NanoConfig:
    block_size: int = 32
    vocab_size: int = 96
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True


class NanoLayerNorm(nn.Module):
    """model.py's LayerNorm: F.layer_norm with an optional bias."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    """model.py's CausalSelfAttention. `flash=False` is its path on a torch without scaled_dot_product_attention:
    the causal mask is then a registered buffer named `bias`, saved in the state dict."""

    def __init__(self, config: NanoConfig, flash: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout, self.flash = config.n_head, config.n_embd, config.dropout, flash
        if not flash:
            mask = torch.tril(torch.ones(config.block_size, config.block_size))
            self.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                               is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
            y = self.attn_dropout(att) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, config: NanoConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # the exact erf GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoBlock(nn.Module):
    def __init__(self, config: NanoConfig, flash: bool) -> None:
        super().__init__()
        self.ln_1 = NanoLayerNorm(config.n_embd, bias=config.bias)
        self.attn = NanoAttention(config, flash)
        self.ln_2 = NanoLayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """model.py's GPT: ModuleDict `transformer` (wte, wpe, drop, h, ln_f), `lm_head` tied to wte."""

    def __init__(self, config: NanoConfig, flash: bool = True) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([NanoBlock(config, flash) for _ in range(config.n_layer)]),
            ln_f=NanoLayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:  # the training path computes every position's logits
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return self.lm_head(x[:, [-1], :]), None


def nanogpt_model_args(config: NanoConfig) -> dict:
    """train.py's model_args: n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout."""
    return {key: value for key, value in asdict(config).items()}


# train.py's `config`: every plain global of the script (ints, floats, bools, strings).
TRAIN_PY_CONFIG = {
    "out_dir": "out-shakespeare-char", "eval_interval": 250, "log_interval": 10, "eval_iters": 200,
    "eval_only": False, "always_save_checkpoint": False, "init_from": "scratch", "wandb_log": False,
    "wandb_project": "shakespeare-char", "wandb_run_name": "mini-gpt", "dataset": "shakespeare_char",
    "gradient_accumulation_steps": 1, "batch_size": 64, "block_size": 256, "n_layer": 6, "n_head": 6,
    "n_embd": 384, "dropout": 0.2, "bias": False, "learning_rate": 1e-3, "max_iters": 5000,
    "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0, "decay_lr": True, "warmup_iters": 100,
    "lr_decay_iters": 5000, "min_lr": 1e-4, "backend": "nccl", "device": "cpu", "dtype": "float32",
    "compile": False,
}


# data/shakespeare_char/prepare.py's 65 characters, in its sorted order.
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def write_meta_pkl(path: Path, chars: str = SHAKESPEARE_CHARS) -> Path:
    """nanoGPT's meta.pkl exactly as data/shakespeare_char/prepare.py writes it: pickle.dump of
    {vocab_size, itos, stoi} with the default protocol."""
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return path


def save_nanogpt_checkpoint(model: NanoGPT, path: Path, compiled: bool = False, extra: dict | None = None) -> Path:
    """Save `model` as nanoGPT's train.py does: an AdamW with its two parameter groups takes one step (so the
    optimizer state is real), then `torch.save({model, optimizer, model_args, iter_num, best_val_loss, config})`.
    `compiled=True` saves the state dict of `torch.compile(model)`, as train.py does with compile=True."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99),
    )
    model.train()
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), generator=generator)
    _, loss = model(idx, idx)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    raw_model = torch.compile(model) if compiled else model
    losses = torch.tensor([1.4697, 1.4712, 1.4688])
    checkpoint = {
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": nanogpt_model_args(model.config),
        "iter_num": 5000,
        "best_val_loss": losses.mean(),  # estimate_loss() returns tensors
        "config": dict(TRAIN_PY_CONFIG),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# llm.c
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class LlmcConfig:
    block_size: int = 32
    vocab_size: int = 300
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64


class LlmcNewGELU(nn.Module):
    """train_gpt2.py's NewGELU: the tanh approximation written out."""

    def forward(self, input):
        return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


class LlmcAttention(nn.Module):
    """train_gpt2.py's CausalSelfAttention on its default (FLASH = 0) path: explicit scores and a mask buffer."""

    def __init__(self, config: LlmcConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        self.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class LlmcMLP(nn.Module):
    def __init__(self, config: LlmcConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = LlmcNewGELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class LlmcBlock(nn.Module):
    def __init__(self, config: LlmcConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = LlmcAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = LlmcMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LlmcGPT(nn.Module):
    """train_gpt2.py's GPT (no dropout; lm_head tied to wte)."""

    def __init__(self, config: LlmcConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([LlmcBlock(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        """Every position's logits (train_gpt2.py's training path, `targets` given)."""
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


LLMC_MAGIC = 20240326
LLMC_VERSIONS = {"float32": 3, "bfloat16": 5}


def llmc_pad_vocab(tensor: torch.Tensor, multiple: int = 128) -> torch.Tensor:
    """train_gpt2.py's pad_vocab: zero rows up to the next multiple of 128. (It also asserts V == 50257, "just
    being defensive"; the tests use small vocabularies, so that assertion is left out.)"""
    V, C = tensor.shape
    Vp = ((V + multiple - 1) // multiple) * multiple
    return tensor if Vp == V else F.pad(tensor, (0, 0, 0, Vp - V), value=0)


def llmc_tensor_bytes(tensor: torch.Tensor, dtype: str) -> bytes:
    """write_fp32 / write_bf16: the tensor's raw little-endian bytes (bfloat16 through an int16 view)."""
    t = tensor.detach().cpu()
    if dtype == "float32":
        return t.to(torch.float32).numpy().tobytes()
    return t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def write_llmc_model(model: LlmcGPT, path: Path, dtype: str = "float32") -> Path:
    """train_gpt2.py's write_model: a 256-int32 header, then write_tensors' order (each kind for all layers)."""
    config, L = model.config, model.config.n_layer
    header = torch.zeros(256, dtype=torch.int32)
    header[0], header[1] = LLMC_MAGIC, LLMC_VERSIONS[dtype]
    header[2], header[3], header[4] = config.block_size, config.vocab_size, config.n_layer
    header[5], header[6] = config.n_head, config.n_embd
    params = {name: param.cpu() for name, param in model.named_parameters()}
    params["transformer.wte.weight"] = llmc_pad_vocab(params["transformer.wte.weight"])
    header[7] = params["transformer.wte.weight"].size(0)
    order = ["transformer.wte.weight", "transformer.wpe.weight"]
    for kind in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"):
        order += [f"transformer.h.{i}.{kind}" for i in range(L)]
    order += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(header.numpy().tobytes())
        for name in order:
            file.write(llmc_tensor_bytes(params[name], dtype))
    return path


def write_llmc_tokenizer(path: Path, tokens: list[bytes], eot: int) -> Path:
    """train_gpt2.py's write_tokenizer: header (magic 20240328, version 2, n, eot), then length-prefixed bytes."""
    header = torch.zeros(256, dtype=torch.int32)
    header[0], header[1], header[2], header[3] = 20240328, 2, len(tokens), eot
    with open(path, "wb") as file:
        file.write(header.numpy().tobytes())
        for token in tokens:
            file.write(bytes([len(token)]) + token)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# LLMs from scratch (the book)
# ---------------------------------------------------------------------------------------------------------------------
def book_config(**overrides) -> dict:
    """GPT_CONFIG_124M's keys, tiny."""
    return {"vocab_size": 96, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0,
            "qkv_bias": False, **overrides}


class BookMultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, num_tokens, _ = x.shape
        split = lambda t: t.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        keys, queries, values = split(self.W_key(x)), split(self.W_query(x)), split(self.W_value(x))
        attn_scores = queries @ keys.transpose(2, 3)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = self.dropout(torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1))
        context_vec = (attn_weights @ values).transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


class BookLayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * ((x - mean) / torch.sqrt(var + self.eps)) + self.shift


class BookGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))))


class BookFeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]), BookGELU(),
                                    nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]))

    def forward(self, x):
        return self.layers(x)


class BookTransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = BookMultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["drop_rate"],
                                          cfg["n_heads"], cfg["qkv_bias"])
        self.ff = BookFeedForward(cfg)
        self.norm1 = BookLayerNorm(cfg["emb_dim"])
        self.norm2 = BookLayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = self.drop_shortcut(self.att(self.norm1(x))) + x
        return self.drop_shortcut(self.ff(self.norm2(x))) + x


class BookGPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[BookTransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = BookLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(in_idx.shape[1], device=in_idx.device))
        x = self.trf_blocks(self.drop_emb(x))
        return self.out_head(self.final_norm(x))
