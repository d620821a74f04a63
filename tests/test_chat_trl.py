"""TRL 1.16 on ScratchGPT with the package's chat template (the optional extra `trl`): SFTTrainer with
assistant_only_loss masks exactly the tokens our pipeline masks and reports the same first-step loss, its
padding-free packing keeps conversations apart, and DPOTrainer starts at log(2) and widens the margin."""

import copy
import math

import pytest
import torch
from datasets import Dataset
from helpers import assert_close_float32
from saved_models import tiny_model_for, train_tiny_tokenizer

from hf_scratch_gpt import ScratchGPTForCausalLM
from hf_scratch_gpt.chat_template import ensure_chat_template
from hf_scratch_gpt.data import CompletionCollator, tokenize_conversations

trl = pytest.importorskip("trl")

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! The quick fox."},
    {"role": "user", "content": "And the dog?"},
    {"role": "assistant", "content": "Lazy dog."},
]
ROWS = [CONVERSATION, CONVERSATION[1:3], CONVERSATION[:3], CONVERSATION[1:]]
SHORT_ROWS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}],
    CONVERSATION[:3],
    CONVERSATION[3:],
]
# TRL's configs default to bf16=True (autocast, on CPU too): float32 here, so that losses compare at float32 rounding.
COMMON = dict(
    report_to="none", use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, bf16=False
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = train_tiny_tokenizer()
    ensure_chat_template(tokenizer)
    return tokenizer


def our_batch(tokenizer, rows):
    encoded = tokenize_conversations({"messages": rows}, tokenizer, max_length=1000)
    features = [{"input_ids": i, "labels": l} for i, l in zip(encoded["input_ids"], encoded["labels"])]
    return CompletionCollator(pad_token_id=tokenizer.eos_token_id)(features)


def test_trl_trains_the_template_stop_token(chat_tokenizer):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(chat_tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(chat_tokenizer)


def test_sft_assistant_only_loss_masks_and_first_loss_equal_ours(chat_tokenizer, tmp_path):
    model = tiny_model_for(chat_tokenizer).train()
    reference = copy.deepcopy(model)
    config = trl.SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, max_steps=1, per_device_train_batch_size=len(ROWS),
        max_length=model.config.n_positions, **COMMON,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_dict({"messages": ROWS}), processing_class=chat_tokenizer
    )
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    ours = our_batch(chat_tokenizer, ROWS)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(theirs[key], ours[key]), (key, theirs[key], ours[key])

    with torch.no_grad():
        expected = reference(**ours).loss  # train mode, as TRL's step: no dropout in this model
    trainer.train()
    first = trainer.state.log_history[0]["loss"]
    targets = int((ours["labels"][:, 1:] != -100).sum())
    assert_close_float32(torch.tensor(first, dtype=torch.float64), expected.double(), targets, "SFT first-step loss")


def test_sft_padding_free_packing_keeps_conversations_apart(chat_tokenizer, tmp_path):
    """TRL's bfd packing puts several conversations in one row with position ids restarting at 0 and no attention
    mask; the model's causal mask is then block-diagonal (transformers' `create_causal_mask` reads the packed
    sequences from the position ids), so each token's logits are those of its conversation run alone."""
    model = tiny_model_for(chat_tokenizer)
    config = trl.SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, packing=True, packing_strategy="bfd",
        max_length=model.config.n_positions, per_device_train_batch_size=1, max_steps=1, **COMMON,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=copy.deepcopy(model), args=config, train_dataset=Dataset.from_dict({"messages": SHORT_ROWS}),
        processing_class=chat_tokenizer,
    )  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert "attention_mask" not in batch
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
    assert len(starts) >= 3, f"the first packed row should hold several conversations (starts {starts[:-1]})"
    with torch.no_grad():
        # use_cache=False, as TRL passes it: transformers reads packed sequences from the position ids only when
        # there is no cache (with an empty DynamicCache the mask is plainly causal, in GPT-2 too).
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        for start, end in zip(starts[:-1], starts[1:]):
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            assert_close_float32(packed[start:end], alone, model.config.n_embd, f"tokens {start}..{end}")
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_dpo_starts_at_log_2_and_widens_the_margin(chat_tokenizer, tmp_path):
    folder = tmp_path / "model"
    tiny_model_for(chat_tokenizer).save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    # Loaded from a folder: DPOTrainer builds its reference model from the policy's `name_or_path`.
    model = ScratchGPTForCausalLM.from_pretrained(folder)
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    pairs = Dataset.from_dict({
        "prompt": [user("Hello there"), user("Quick fox?")] * 2,
        "chosen": [answer("Hi!"), answer("The quick brown fox.")] * 2,
        "rejected": [answer("Lazy dog."), answer("No.")] * 2,
    })  # fmt: skip
    config = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, beta=0.1,
        **COMMON,
    )  # fmt: skip
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=pairs, processing_class=chat_tokenizer)
    trainer.train()
    steps = [row for row in trainer.state.log_history if "loss" in row]
    assert len(steps) == 4
    # The reference equals the policy at step 1: every log-ratio is 0 and the loss is -log σ(0) = log 2.
    first = torch.tensor(steps[0]["loss"], dtype=torch.float64)
    assert_close_float32(first, torch.tensor(math.log(2), dtype=torch.float64), 1, "first DPO loss")
    margins = [row["rewards/margins"] for row in steps]
    assert margins[0] == 0.0 and 0 < margins[1] < margins[-1], margins
    assert steps[-1]["loss"] < steps[0]["loss"]
