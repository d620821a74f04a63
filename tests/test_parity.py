"""ScratchGPT against transformers' GPT2LMHeadModel with identical weights: logits, loss, gradients, cache."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    GPT2_SHAPES, assert_close_rel, assert_models_agree, labels_from, left_padded_batch,
    random_gpt2, right_padded_batch, unpadded_case,
)
from transformers import DynamicCache

import hf_scratch_gpt
from hf_scratch_gpt.gpt2_weights import TRANSPOSED_SUFFIXES


def test_logits_and_loss_unpadded(gpt2_pair):
    gpt2, ours = gpt2_pair
    input_ids, labels = unpadded_case(gpt2.config.vocab_size)
    assert_models_agree(gpt2, ours, input_ids, labels=labels)


@pytest.mark.parametrize("make_batch", [left_padded_batch, right_padded_batch], ids=["left", "right"])
def test_logits_and_loss_padded(gpt2_pair, make_batch):
    gpt2, ours = gpt2_pair
    input_ids, attention_mask = make_batch([12, 5, 9, 1], gpt2.config.vocab_size)
    labels = labels_from(input_ids, attention_mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does for left padding
    keep = attention_mask.bool()  # padding positions' outputs are meaningless on both sides
    assert_models_agree(
        gpt2, ours, input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels, keep=keep
    )


def test_padded_rows_equal_unpadded_rows(gpt2_pair):
    """Each left-padded row gives the logits of the same sequence run alone (attention_mask + position_ids)."""
    _, ours = gpt2_pair
    lengths = [11, 4, 7]
    input_ids, attention_mask = left_padded_batch(lengths, ours.config.vocab_size)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        for row, length in enumerate(lengths):
            alone = ours(input_ids[row:row + 1, -length:]).logits
            assert_close_rel(batched[row:row + 1, -length:], alone)


def test_gradients_equal_gpt2(gpt2_pair):
    gpt2, ours = gpt2_pair
    gpt2.train(), ours.train()  # dropout is 0: train mode only to exercise that path
    input_ids, attention_mask = right_padded_batch([9, 6, 3], gpt2.config.vocab_size, seed=3)
    labels = labels_from(input_ids, attention_mask)
    gpt2(input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss.backward()
    ours(input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss.backward()
    expected = dict(gpt2.named_parameters())
    compared = 0
    for name, param in ours.named_parameters():
        reference = expected[name].grad
        if name.endswith(TRANSPOSED_SUFFIXES):
            reference = reference.t()
        assert_close_rel(param.grad, reference, msg=lambda m, name=name: f"{name}: {m}")
        compared += 1
    assert compared == len(list(ours.parameters())) > 0


def test_incremental_decoding_equals_full_forward(gpt2_pair):
    gpt2, ours = gpt2_pair
    input_ids = torch.randint(0, gpt2.config.vocab_size, (2, 14), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = ours(input_ids).logits
        cache = DynamicCache(config=ours.config)
        prefix = ours(input_ids[:, :6], past_key_values=cache, use_cache=True)
        steps = [prefix.logits]
        for t in range(6, input_ids.size(1)):
            out = ours(input_ids[:, t:t + 1], past_key_values=prefix.past_key_values, use_cache=True)
            steps.append(out.logits)
        assert out.past_key_values.get_seq_length() == input_ids.size(1)
        gpt2_full = gpt2(input_ids).logits
    assert_close_rel(torch.cat(steps, dim=1), full)
    assert_close_rel(full, gpt2_full)


def test_incremental_decoding_with_left_padding(gpt2_pair):
    _, ours = gpt2_pair
    input_ids, attention_mask = left_padded_batch([8, 3], ours.config.vocab_size, seed=7)
    extra = torch.randint(1, ours.config.vocab_size, (2, 3), generator=torch.Generator().manual_seed(8))
    full_ids = torch.cat([input_ids, extra], dim=1)
    full_mask = torch.cat([attention_mask, torch.ones_like(extra)], dim=1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = ours(full_ids, attention_mask=full_mask, position_ids=position_ids).logits
        width = input_ids.size(1)
        out = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids[:, :width], use_cache=True)
        steps = [out.logits]
        for t in range(width, full_ids.size(1)):
            out = ours(
                full_ids[:, t:t + 1], attention_mask=full_mask[:, :t + 1], position_ids=position_ids[:, t:t + 1],
                past_key_values=out.past_key_values, use_cache=True,
            )
            steps.append(out.logits)
    keep = full_mask.bool()
    assert_close_rel(torch.cat(steps, dim=1)[keep], full[keep])


def test_eager_equals_sdpa(gpt2_pair):
    _, ours = gpt2_pair
    input_ids, attention_mask = left_padded_batch([10, 4], ours.config.vocab_size, seed=9)
    with torch.no_grad():
        sdpa_plain = ours(input_ids).logits
        sdpa_padded = ours(input_ids, attention_mask=attention_mask).logits
        ours.set_attn_implementation("eager")
        assert ours.config._attn_implementation == "eager"
        eager_plain = ours(input_ids).logits
        eager_padded = ours(input_ids, attention_mask=attention_mask).logits
    keep = attention_mask.bool()
    assert_close_rel(eager_plain, sdpa_plain)
    assert_close_rel(eager_padded[keep], sdpa_padded[keep])


def test_output_hidden_states_and_attentions_match_gpt2(gpt2_pair):
    gpt2, ours = gpt2_pair
    gpt2.set_attn_implementation("eager")
    ours.set_attn_implementation("eager")
    input_ids = torch.randint(0, gpt2.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = gpt2(input_ids, output_hidden_states=True, output_attentions=True)
        actual = ours(input_ids, output_hidden_states=True, output_attentions=True)
    assert len(actual.hidden_states) == ours.config.n_layer + 1
    assert len(actual.attentions) == ours.config.n_layer
    for mine, theirs in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close_rel(mine, theirs)
    for mine, theirs in zip(actual.attentions, expected.attentions, strict=True):
        assert_close_rel(mine, theirs)


def test_inputs_embeds_equal_input_ids(gpt2_pair):
    _, ours = gpt2_pair
    input_ids = torch.randint(0, ours.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        by_ids = ours(input_ids, labels=input_ids)
        by_embeds = ours(inputs_embeds=ours.get_input_embeddings()(input_ids), labels=input_ids)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)
    torch.testing.assert_close(by_embeds.loss, by_ids.loss)


def test_gradient_checkpointing_gives_same_gradients(gpt2_pair):
    _, ours = gpt2_pair
    ours.train()
    input_ids = torch.randint(0, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(6))
    ours(input_ids, labels=input_ids).loss.backward()
    plain = {name: p.grad.clone() for name, p in ours.named_parameters()}
    ours.zero_grad()
    ours.activation_checkpointing_enable()
    assert ours.transformer.gradient_checkpointing
    ours(input_ids, labels=input_ids).loss.backward()
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], msg=lambda m, name=name: f"{name}: {m}")


def test_bf16_logits_close_to_float32(gpt2_pair):
    _, ours = gpt2_pair
    input_ids = torch.randint(0, ours.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = ours(input_ids, labels=input_ids)
        low = ours.to(torch.bfloat16)(input_ids, labels=input_ids)
    assert low.logits.dtype == torch.bfloat16
    assert low.loss.dtype == torch.float32  # the loss is computed in float32 whatever the model dtype
    torch.testing.assert_close(low.loss, reference.loss, rtol=3e-2, atol=3e-2)


def _gelu_swapped_pair():
    """The 1L-3H-48 pair with exact GELU in place of GPT-2's tanh approximation in ScratchGPT's MLP only."""
    gpt2 = random_gpt2(**GPT2_SHAPES["1L-3H-48"])
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2).eval()
    ours.transformer.h[0].mlp.act = F.gelu
    input_ids = torch.randint(0, gpt2.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    return gpt2, ours, input_ids


def test_a_parity_failure_names_the_side_and_the_module():
    """With ScratchGPT's GELU changed, the comparison fails naming ScratchGPT as the further from the float64
    forward and the MLP's output projection as the first module whose output differs."""
    gpt2, ours, input_ids = _gelu_swapped_pair()
    with pytest.raises(AssertionError) as failure:
        assert_models_agree(gpt2, ours, input_ids, labels=input_ids)
    message = str(failure.value)
    assert "ScratchGPT is the further from it" in message
    module_rows = message.split("module by module:\n")[1].splitlines()[1:]
    rows = [line.rsplit(":", 1) for line in module_rows]
    first_apart = next(name.strip() for name, values in rows if float(values.split(",")[0]) > 0)
    assert first_apart == "transformer.h.0.mlp.c_proj", message
