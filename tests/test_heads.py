"""The classification heads against transformers' GPT2ForSequenceClassification / GPT2ForTokenClassification (same
weights: logits, loss, problem types, padding on either side, gradients), their loss under gradient accumulation,
their checks, and loading a causal-LM folder into them (the new layer reported, every other tensor required)."""

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
)

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTForSequenceClassification, ScratchGPTForTokenClassification
from helpers import (
    assert_close_float32,
    assert_close_rel,
    assert_models_agree,
    labels_from,
    left_padded_batch,
    random_gpt2,
    right_padded_batch,
)
from saved_models import save_tiny_model_folder

PAD = 0  # left_padded_batch pads with 0 and draws real ids from [1, vocab)
HEADS = {  # kind → (GPT-2's class, ours, the head's own tensors)
    "sequence": (GPT2ForSequenceClassification, ScratchGPTForSequenceClassification, ("score.weight",)),
    "token": (GPT2ForTokenClassification, ScratchGPTForTokenClassification, ("classifier.weight", "classifier.bias")),
}


def head_pair(kind: str, num_labels: int = 3, pad_token_id: int | None = PAD, **config):
    """(GPT-2 head, our head) in eval mode with identical weights: the transformer mapped by `from_hf_gpt2`, the
    head's layer copied 1:1 (it is an nn.Linear on both sides)."""
    gpt2_class, our_class, head_keys = HEADS[kind]
    gpt2_lm = random_gpt2()
    ours_lm = hf_scratch_gpt.from_hf_gpt2(gpt2_lm)
    configs = [copy.deepcopy(gpt2_lm.config), copy.deepcopy(ours_lm.config)]
    for cfg in configs:
        cfg.num_labels, cfg.pad_token_id = num_labels, pad_token_id
        for name, value in config.items():
            setattr(cfg, name, value)
    theirs, ours = gpt2_class(configs[0]), our_class(configs[1])
    theirs.transformer.load_state_dict(gpt2_lm.transformer.state_dict())
    ours.transformer.load_state_dict(ours_lm.transformer.state_dict())
    torch.manual_seed(1)
    for key in head_keys:
        value = torch.randn_like(theirs.get_parameter(key))
        theirs.get_parameter(key).data.copy_(value)
        ours.get_parameter(key).data.copy_(value)
    for model in (theirs, ours):
        model.set_attn_implementation("sdpa")
    return theirs.eval(), ours.eval()


def batch(padding: str, lengths=(5, 9, 2, 7)):
    make = left_padded_batch if padding == "left" else right_padded_batch
    return make(list(lengths), vocab_size=97, pad_id=PAD, seed=3)


# Labels of each problem type for a batch of 4 rows (num_labels, labels).
PROBLEMS = {
    "regression": (1, torch.tensor([0.5, -1.25, 2.0, 0.0])),
    "single_label_classification": (3, torch.tensor([2, 0, 1, 2])),
    "multi_label_classification": (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])),
}


# --------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("problem_type", sorted(PROBLEMS))
def test_sequence_classification_equals_gpt2(padding, problem_type):
    """Rows of different lengths, padded on either side: the pooled logits (the last token that is not padding),
    the loss, and the problem type inferred from the labels are GPT-2's."""
    num_labels, labels = PROBLEMS[problem_type]
    theirs, ours = head_pair("sequence", num_labels=num_labels)
    input_ids, attention_mask = batch(padding)
    assert_models_agree(theirs, ours, input_ids, attention_mask=attention_mask, labels=labels)
    assert ours.config.problem_type == theirs.config.problem_type == problem_type
    # The pooled row is each row's last real token: changing what sits after it (padding) changes nothing.
    if padding == "right":
        with torch.no_grad():
            alone = ours(input_ids[1:2, :9]).logits  # row 1 is 9 long, unpadded
        assert_close_rel(ours(input_ids, attention_mask=attention_mask).logits[1:2].detach(), alone)


def test_sequence_classification_explicit_problem_type_and_single_row_without_pad_token():
    theirs, ours = head_pair("sequence", num_labels=2, pad_token_id=None, problem_type="multi_label_classification")
    input_ids = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(0))
    assert_models_agree(theirs, ours, input_ids, labels=torch.tensor([[1.0, 0.0]]))


def test_sequence_classification_without_pad_token_refuses_batches_like_gpt2():
    theirs, ours = head_pair("sequence", pad_token_id=None)
    input_ids, _ = batch("left")
    for model in (theirs, ours):
        with pytest.raises(ValueError, match="Cannot handle batch sizes > 1 if no padding token is defined"):
            model(input_ids)


def test_sequence_classification_with_inputs_embeds_takes_the_last_position_like_gpt2():
    theirs, ours = head_pair("sequence")
    embeds = torch.randn(2, 5, theirs.config.n_embd, generator=torch.Generator().manual_seed(0))
    assert_models_agree(theirs, ours, inputs_embeds=embeds)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_token_classification_equals_gpt2(padding):
    theirs, ours = head_pair("token", num_labels=5)
    input_ids, attention_mask = batch(padding)
    labels = labels_from(input_ids % 5, attention_mask)  # -100 on padding
    keep = attention_mask.bool()
    assert_models_agree(theirs, ours, input_ids, attention_mask=attention_mask, labels=labels, keep=keep)


def test_token_classification_dropout_is_gpt2s_choice():
    for config, expected in (({}, 0.1), ({"classifier_dropout": 0.3}, 0.3), ({"hidden_dropout": 0.2}, 0.2)):
        theirs, ours = head_pair("token", **config)
        assert ours.dropout.p == theirs.dropout.p == expected, config


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_gradients_equal_gpt2(kind):
    """One backward through each head: the head's and the first layer's gradients are GPT-2's (Conv1D transposed)."""
    theirs, ours = head_pair(kind)
    input_ids, attention_mask = batch("left")
    labels = PROBLEMS["single_label_classification"][1] if kind == "sequence" else labels_from(input_ids % 3, attention_mask)
    for model in (theirs, ours):
        model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    head = HEADS[kind][2][0]
    assert_close_float32(ours.get_parameter(head).grad, theirs.get_parameter(head).grad, input_ids.numel(), head)
    name = "transformer.h.0.attn.c_attn.weight"
    assert_close_float32(ours.get_parameter(name).grad, theirs.get_parameter(name).grad.t(), input_ids.numel(), name)


# --------------------------------------------------------------------------------------- loss under accumulation
@pytest.mark.parametrize("problem_type", sorted(PROBLEMS) + ["token"])
def test_num_items_in_batch_makes_accumulated_halves_equal_the_whole_batch(problem_type):
    """What Trainer does under gradient accumulation: each micro-batch's loss summed and divided by the count of the
    whole batch's labels that are not -100 (`labels.ne(-100).sum()`); the halves then add up to the full batch's
    mean, for every problem type."""
    kind = "token" if problem_type == "token" else "sequence"
    num_labels, labels = PROBLEMS.get(problem_type, (3, None))
    _, ours = head_pair(kind, num_labels=num_labels)
    input_ids, attention_mask = batch("right")
    if labels is None:
        labels = labels_from(input_ids % 3, attention_mask)
    else:
        labels = labels.clone()
        if problem_type == "single_label_classification":
            labels[1] = -100  # a row left out of the loss
    with torch.no_grad():
        whole = ours(input_ids, attention_mask=attention_mask, labels=labels).loss
        count = labels.ne(-100).sum()
        halves = sum(
            ours(input_ids[rows], attention_mask=attention_mask[rows], labels=labels[rows], num_items_in_batch=count).loss
            for rows in (slice(0, 2), slice(2, 4))
        )
    assert_close_float32(halves, whole, input_ids.numel(), "accumulated loss")


# --------------------------------------------------------------------------------------------------- checks
def test_bad_labels_and_keywords_are_named():
    _, sequence = head_pair("sequence")
    input_ids, attention_mask = batch("left")
    with pytest.raises(ValueError, match=r"labels contains class 3, outside \[0, num_labels=3\)"):
        sequence(input_ids, labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels shape \(3,\) does not match the rows \(4,\)"):
        sequence(input_ids, labels=torch.tensor([0, 1, 2]))
    _, regression = head_pair("sequence", num_labels=1)
    with pytest.raises(ValueError, match=r"labels shape \(4, 2\) does not match \(4,\) for regression"):
        regression(input_ids, labels=torch.zeros(4, 2))
    _, token = head_pair("token")
    with pytest.raises(ValueError, match=r"labels shape \(4,\) does not match the tokens \(4, 9\)"):
        token(input_ids, labels=torch.tensor([0, 1, 2, 0]))
    for model in (sequence, token):
        with pytest.raises(TypeError, match="unexpected keyword arguments \\['token_typo_ids'\\]"):
            model(input_ids, attention_mask=attention_mask, token_typo_ids=input_ids)


# --------------------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads") / "lm"
    model, _ = save_tiny_model_folder(folder)
    return folder, model


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_causal_lm_folder_loads_into_a_head_with_the_head_reported_new(lm_folder, kind, caplog):
    folder, lm = lm_folder
    auto = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}[kind]
    model, info = auto.from_pretrained(folder, num_labels=3, output_loading_info=True)
    assert type(model) is HEADS[kind][1] and model.config.num_labels == 3
    assert set(info["missing_keys"]) == set(HEADS[kind][2]) and not info["unexpected_keys"]
    report = caplog.text  # transformers' loading report, a warning
    assert "LOAD REPORT" in report, report
    assert all(re.search(rf"{key} +\| MISSING", report) for key in HEADS[kind][2]), report
    for name, tensor in lm.transformer.state_dict().items():
        assert torch.equal(model.transformer.state_dict()[name], tensor), name


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_missing_transformer_weight_is_still_refused(lm_folder, tmp_path, kind):
    folder, _ = lm_folder
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(broken / "model.safetensors")
    del weights["transformer.ln_f.bias"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lack tensors the model needs: \['transformer.ln_f.bias'\]"):
        HEADS[kind][1].from_pretrained(broken, num_labels=3)


def test_a_transformer_weight_of_another_shape_is_refused_even_with_ignore_mismatched_sizes(lm_folder):
    folder, lm = lm_folder
    with pytest.raises(ValueError, match=r"another shape than the model's: \['transformer.wte.weight'\]"):
        AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=3, vocab_size=lm.config.vocab_size + 1, ignore_mismatched_sizes=True
        )


def test_untied_lm_head_in_the_folder_is_reported_unexpected_and_ignored(tmp_path):
    _, tokenizer = save_tiny_model_folder(tmp_path / "tied")
    config = hf_scratch_gpt.ScratchGPTConfig.from_pretrained(tmp_path / "tied")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    hf_scratch_gpt.ScratchGPTForCausalLM(config).save_pretrained(tmp_path / "untied")
    assert "lm_head.weight" in load_file(tmp_path / "untied" / "model.safetensors")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "untied", num_labels=2, output_loading_info=True
    )
    assert info["unexpected_keys"] == {"lm_head.weight"} and info["missing_keys"] == {"score.weight"}
    assert not hasattr(model, "lm_head")


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_classifier_round_trips_exactly(lm_folder, tmp_path, kind):
    folder, _ = lm_folder
    auto = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}[kind]
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    model = auto.from_pretrained(folder, id2label=labels, label2id={v: k for k, v in labels.items()}, pad_token_id=0)
    model.config.problem_type = "single_label_classification"
    model.save_pretrained(tmp_path / "classifier")
    config = json.loads((tmp_path / "classifier" / "config.json").read_text())
    assert config["architectures"] == [HEADS[kind][1].__name__]
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith("ScratchGPTForSequenceClassification")
    again, info = auto.from_pretrained(tmp_path / "classifier", output_loading_info=True)
    assert not any(info[name] for name in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert again.config.id2label == labels and again.config.problem_type == "single_label_classification"
    assert again.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    input_ids, attention_mask = left_padded_batch([4, 6], vocab_size=50, pad_id=0, seed=0)
    with torch.no_grad():
        assert torch.equal(again.eval()(input_ids, attention_mask=attention_mask).logits,
                           model.eval()(input_ids, attention_mask=attention_mask).logits)  # fmt: skip
    # The classifier folder still loads as the causal LM it came from (the head file's extra tensors unexpected).
    lm, info = AutoModelForCausalLM.from_pretrained(tmp_path / "classifier", output_loading_info=True)
    assert info["unexpected_keys"] == set(HEADS[kind][2])


def test_a_classifier_loads_with_another_number_of_labels_when_asked(lm_folder, tmp_path):
    """transformers' way to re-use a classifier for another label set: ignore_mismatched_sizes=True builds the score
    layer afresh (reported as mismatched); the transformer's weights are still all required."""
    folder, _ = lm_folder
    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).save_pretrained(tmp_path / "two")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "two", num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert model.score.weight.shape == (3, model.config.n_embd)
    assert [key for key, *_ in info["mismatched_keys"]] == ["score.weight"] and not info["missing_keys"]


def test_commands_for_language_models_name_a_classifier_folder_for_what_it_is(lm_folder, tmp_path, capsys):
    """generate/evaluate/chat/export/push read a causal-LM folder; a classifier's is refused by its architecture, not
    by a tensor-name mismatch the user would have to decode."""
    from hf_scratch_gpt_cli import main

    folder, _ = lm_folder
    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, pad_token_id=0).save_pretrained(
        tmp_path / "classifier"
    )
    for argv in (["generate", tmp_path / "classifier", "--prompt", "Hi"], ["push", tmp_path / "classifier", "you/x",
                                                                            "--dry-run"]):
        assert main([str(arg) for arg in argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("hf-scratch-gpt: error: "), err
        assert "describes a ScratchGPTForSequenceClassification, not a ScratchGPTForCausalLM" in err, err
