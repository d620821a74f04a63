"""The context-parallel loss contract: `shift_labels` are targets already aligned with the predictions.

Under context/sequence parallelism (Accelerate CP, DeepSpeed Ulysses/ALST) the sequence is shifted BEFORE it is
sharded and `Trainer` hands each shard its aligned targets as `shift_labels`; a model that shifted `labels` instead
would train every shard against the wrong targets and give each shard's last token none. Both loss paths are held
to it: the explicit one (eval mode, or `loss_chunk_size=0`) and the fused chunked one (training mode).
"""

import pytest
import torch
import torch.nn.functional as F

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from hf_scratch_gpt.modeling_scratch_gpt import causal_lm_loss, chunked_causal_lm_loss
from helpers import assert_close_rel, random_gpt2

PATHS = ["explicit", "fused"]


def make_model(path: str) -> ScratchGPTForCausalLM:
    """A tiny model (no dropout) whose forward takes the given loss path; chunk 7 so the fused path loops."""
    torch.manual_seed(0)
    config = ScratchGPTConfig.from_preset("tiny", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_chunk_size=7)
    model = ScratchGPTForCausalLM(config)
    return model.train() if path == "fused" else model.eval()


def batch(model, batch_size=2, seq_len=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator)
    shift_labels = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator)
    shift_labels[0, 3] = shift_labels[1, -1] = -100
    return input_ids, shift_labels


def reference_loss(model, input_ids, shift_labels, num_items=None):
    """Σ_t CE(logits[t], shift_labels[t]) over targets != -100, in float64, / count (or / num_items)."""
    was_training = model.training
    with torch.no_grad():
        logits = model.eval()(input_ids).logits.double()  # eval mode: the logits
    model.train(was_training)
    summed = F.cross_entropy(logits.reshape(-1, logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100,
                             reduction="sum")  # fmt: skip
    return summed / (num_items if num_items is not None else (shift_labels != -100).sum())


@pytest.mark.parametrize("path", PATHS)
def test_loss_follows_shift_labels_and_ignores_labels(path):
    """transformers' test_causal_lm_loss_honors_shift_labels, for this model: with shift_labels given, the loss
    must move when shift_labels change and stay put when only labels change."""
    model = make_model(path)
    input_ids, shift_labels = batch(model)
    labels = input_ids.clone()
    other_labels = torch.roll(labels, 1, dims=1)
    other_shift_labels = torch.roll(shift_labels, 1, dims=1)
    loss = model(input_ids, labels=labels, shift_labels=shift_labels).loss
    assert torch.equal(model(input_ids, labels=other_labels, shift_labels=shift_labels).loss, loss)
    assert not torch.allclose(model(input_ids, labels=labels, shift_labels=other_shift_labels).loss, loss)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("with_labels", [True, False])
def test_loss_equals_cross_entropy_against_shift_labels_without_a_shift(path, with_labels):
    model = make_model(path)
    input_ids, shift_labels = batch(model)
    labels = input_ids if with_labels else None
    loss = make_model(path)(input_ids, labels=labels, shift_labels=shift_labels).loss
    assert_close_rel(loss.double(), reference_loss(model, input_ids, shift_labels))


@pytest.mark.parametrize("path", PATHS)
def test_num_items_in_batch_divides_the_summed_shift_label_losses(path):
    model = make_model(path)
    input_ids, shift_labels = batch(model)
    loss = model(input_ids, shift_labels=shift_labels, num_items_in_batch=torch.tensor(40)).loss
    assert_close_rel(loss.double(), reference_loss(model, input_ids, shift_labels, num_items=40))


@pytest.mark.parametrize("path", PATHS)
def test_shift_labels_from_labels_give_the_labels_loss_and_gradients(path):
    """pad(labels[:, 1:], -100) is what Trainer builds for context parallelism: it must give the labels loss."""
    input_ids, _ = batch(make_model(path))
    labels = input_ids.clone()
    labels[1, 5] = -100
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    results = []
    for kwargs in ({"labels": labels}, {"shift_labels": shift_labels}):
        model = make_model(path)
        loss = model(input_ids, **kwargs).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters()}))
    assert_close_rel(results[1][0], results[0][0])
    for name, grad in results[0][1].items():
        assert_close_rel(results[1][1][name], grad, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_and_explicit_agree_on_shift_labels_with_smoothing_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    shift_labels = torch.randint(0, 50, (2, 9))
    shift_labels[0, :4] = -100
    for smoothing in (0.0, 0.1):
        explicit = causal_lm_loss(hidden @ weight.t(), None, 11, smoothing, shift_labels=shift_labels)
        grads = torch.autograd.grad(explicit, (hidden, weight))
        fused = chunked_causal_lm_loss(hidden, weight, None, 11, smoothing, chunk_size=4, shift_labels=shift_labels)
        fused_grads = torch.autograd.grad(fused, (hidden, weight))
        assert_close_rel(fused, explicit)
        for got, expected in zip(fused_grads, grads):
            assert_close_rel(got, expected)


@pytest.mark.parametrize("path", PATHS)
def test_sequence_sharded_after_the_shift_gives_the_full_sequence_loss(path):
    """Context parallelism in miniature: cut the sequence in two after shifting; shard 2 attends to shard 1
    through the KV cache. Each shard's summed loss / the global count adds up to the full-sequence loss, the
    target of shard 1's last position (the first token of shard 2) included."""
    model = make_model(path)
    input_ids, _ = batch(model, batch_size=2, seq_len=12)
    shift_labels = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    count = (shift_labels != -100).sum()
    full = model(input_ids, shift_labels=shift_labels).loss
    first = model(input_ids[:, :6], shift_labels=shift_labels[:, :6], num_items_in_batch=count, use_cache=True)
    second = model(input_ids[:, 6:], shift_labels=shift_labels[:, 6:], num_items_in_batch=count,
                   past_key_values=first.past_key_values, use_cache=True)  # fmt: skip
    assert_close_rel(first.loss + second.loss, full)
    # Shifting each shard's own labels instead loses one target per shard boundary: a different loss.
    naive = model(input_ids[:, :6], labels=input_ids[:, :6], num_items_in_batch=count).loss
    assert not torch.allclose(naive, first.loss)


@pytest.mark.parametrize("path", PATHS)
def test_all_masked_shift_labels_give_zero_loss_and_zero_gradients(path):
    model = make_model(path)
    input_ids, _ = batch(model)
    loss = model(input_ids, shift_labels=torch.full_like(input_ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters() if p.grad is not None)


def test_parity_with_gpt2_lm_head_model_given_shift_labels():
    gpt2 = random_gpt2()
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2).eval()
    input_ids, shift_labels = batch(ours, seq_len=10)
    expected = gpt2(input_ids, labels=input_ids, shift_labels=shift_labels).loss
    assert_close_rel(ours(input_ids, labels=input_ids, shift_labels=shift_labels).loss, expected)


@pytest.mark.parametrize("path", PATHS)
def test_bad_shift_labels_are_refused(path):
    model = make_model(path)
    input_ids, shift_labels = batch(model)
    with pytest.raises(ValueError, match="shift_labels shape"):
        model(input_ids, shift_labels=shift_labels[:, :-1])
    with pytest.raises(ValueError, match="shift_labels must be an integer tensor"):
        model(input_ids, shift_labels=shift_labels.float())
    with pytest.raises(ValueError, match="shift_labels shape"):
        causal_lm_loss(torch.randn(2, 12, 5), None, shift_labels=shift_labels[:, 1:])


def test_trainer_sees_only_labels_as_the_label_column():
    """Trainer takes every forward parameter with "label" in its name as a label column; `shift_labels` must not be
    one, or evaluation batches without it lose their labels (the demo's evaluation broke that way)."""
    from transformers.utils.generic import find_labels

    assert find_labels(ScratchGPTForCausalLM) == ["labels"]


def test_trainer_trains_on_shift_labels_from_the_collator(tmp_path):
    """A collator that hands `shift_labels` (as context parallelism does) trains exactly like one that hands only
    `labels`, and Trainer's num_items_in_batch counts them; with shifted-again targets it would not."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids = torch.randint(0, 512, (8, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist()})

    def collate(rows, with_shift_labels):
        input_ids = torch.tensor([row["input_ids"] for row in rows])
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if with_shift_labels:
            batch["shift_labels"] = F.pad(input_ids[:, 1:], (0, 1), value=-100)
            batch["labels"] = torch.zeros_like(input_ids)  # ignored when shift_labels are given
        return batch

    losses = []
    for with_shift_labels in (False, True):
        torch.manual_seed(0)
        model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", resid_pdrop=0.0, embd_pdrop=0.0,
                                                                   attn_pdrop=0.0))  # fmt: skip
        args = TrainingArguments(output_dir=str(tmp_path / str(with_shift_labels)), use_cpu=True, max_steps=3,
                                 per_device_train_batch_size=2, gradient_accumulation_steps=2, logging_steps=1,
                                 report_to=[], save_strategy="no", learning_rate=1e-2, seed=0,
                                 data_seed=0)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=dataset,
                          data_collator=lambda rows, flag=with_shift_labels: collate(rows, flag))  # fmt: skip
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)
