"""Chat fine-tuning (issue 30): conversations tokenized by the chat template, the loss on assistant tokens only,
`train --dataset chat.jsonl` end to end on both loops, and one-line errors for records that are not conversations."""

import json
import logging
import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from helpers import assert_close_float32
from saved_models import save_tiny_model_folder, tiny_model_for, train_tiny_tokenizer
from test_cli import assert_one_line_error, run_cli
from transformers import AutoTokenizer, TrainingArguments

from hf_scratch_gpt import ScratchGPTForCausalLM
from hf_scratch_gpt.chat_template import CHAT_TEMPLATE, ensure_chat_template
from hf_scratch_gpt.data import CompletionCollator, build_chat_datasets, tokenize_conversations
from hf_scratch_gpt.loading import load_tokenizer
from hf_scratch_gpt.training.components import DataArguments, ModelArguments, build_tokenizer
from hf_scratch_gpt.training.trainer import ScratchGPTTrainer

IGNORE = -100
SYSTEM = "You answer briefly."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! The quick fox."},
    {"role": "user", "content": "And the dog?"},
    {"role": "assistant", "content": "Lazy dog."},
]
TINY = "n_positions=64,n_embd=32,n_layer=2,n_head=2,resid_pdrop=0.0,embd_pdrop=0.0,attn_pdrop=0.0"


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = train_tiny_tokenizer()
    assert ensure_chat_template(tokenizer)
    return tokenizer


def expected_ids_and_labels(tokenizer, messages):
    """The template written out by hand, piece by piece: role headers and non-assistant text are context (-100);
    each assistant message's content and its end token are targets; the next turn follows the end token directly."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, labels = [], []

    def add(piece_ids, target):
        ids.extend(piece_ids)
        labels.extend(piece_ids if target else [IGNORE] * len(piece_ids))

    for message in messages:
        add(encode(f"<|{message['role']}|>\n"), False)
        if message["role"] == "assistant":
            add(encode(message["content"]) + [tokenizer.eos_token_id], True)
        else:
            add(encode(message["content"] + "\n"), False)
    return ids, labels


def conversations_of(*conversations):
    return {"messages": [list(conversation) for conversation in conversations]}


# ---------------------------------------------------------------------------------------------------------------------
# Masks, token by token
# ---------------------------------------------------------------------------------------------------------------------
def test_only_assistant_content_and_its_end_token_are_labelled(chat_tokenizer):
    encoded = tokenize_conversations(conversations_of(CONVERSATION), chat_tokenizer, max_length=1000)
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    expected_ids, expected_labels = expected_ids_and_labels(chat_tokenizer, CONVERSATION)
    assert ids == expected_ids
    assert labels == expected_labels, [(i, t, l, e) for i, (t, l, e) in enumerate(zip(ids, labels, expected_labels))
                                       if l != e]  # fmt: skip
    # Restated: the labelled tokens are exactly each assistant answer's tokens followed by eos, in order.
    eos = chat_tokenizer.eos_token_id
    answers = [chat_tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [eos]
               for m in CONVERSATION if m["role"] == "assistant"]  # fmt: skip
    assert [label for label in labels if label != IGNORE] == [token for answer in answers for token in answer]
    assert chat_tokenizer.decode([label for label in labels if label != IGNORE]) == (
        "Hi! The quick fox.<|endoftext|>Lazy dog.<|endoftext|>"
    )
    assert chat_tokenizer.decode(ids) == chat_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert SYSTEM not in chat_tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])


def test_collated_batch_pads_with_ignored_labels(chat_tokenizer):
    short = CONVERSATION[1:3]
    encoded = tokenize_conversations(conversations_of(CONVERSATION, short), chat_tokenizer, max_length=1000)
    features = [{"input_ids": i, "labels": l} for i, l in zip(encoded["input_ids"], encoded["labels"])]
    batch = CompletionCollator(pad_token_id=chat_tokenizer.eos_token_id)(features)
    short_ids, short_labels = expected_ids_and_labels(chat_tokenizer, short)
    width = batch["input_ids"].shape[1]
    assert width == len(encoded["input_ids"][0]) > len(short_ids)
    padding = width - len(short_ids)
    assert batch["labels"][1].tolist() == short_labels + [IGNORE] * padding
    assert batch["attention_mask"][1].tolist() == [1] * len(short_ids) + [0] * padding


def test_a_template_without_generation_markers_is_refused(chat_tokenizer):
    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    with pytest.raises(ValueError, match="generation"):
        tokenize_conversations(conversations_of(CONVERSATION), tokenizer, max_length=1000)


def test_long_conversations_are_cut_and_counted_and_ones_without_targets_dropped(chat_tokenizer, caplog):
    ids, labels = expected_ids_and_labels(chat_tokenizer, CONVERSATION)
    first_target = next(t for t, label in enumerate(labels) if label != IGNORE)
    block = first_target + 3  # CONVERSATION is cut inside its first answer
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]
    short_ids, short_labels = expected_ids_and_labels(chat_tokenizer, short)
    no_answer_in_block = [{"role": "user", "content": "x " * block}, {"role": "assistant", "content": "y"}]
    split = Dataset.from_dict(conversations_of(CONVERSATION, short, no_answer_in_block))
    with caplog.at_level(logging.WARNING, logger="hf_scratch_gpt.data"):
        built = build_chat_datasets(DatasetDict(train=split), chat_tokenizer, block)["train"]
    assert len(short_ids) <= block < len(ids)
    assert built["input_ids"] == [ids[:block], short_ids]  # the third is left out: its answer is beyond the block
    assert built["labels"] == [labels[:block], short_labels]
    assert [label for label in labels[:block] if label != IGNORE] == ids[first_target:block]
    assert "2 of 3 train conversations are longer than block_size" in caplog.text
    assert "1 of 3 train conversations have no assistant token within block_size" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# The tokenizer of a chat run gets the template; one that has a template keeps it
# ---------------------------------------------------------------------------------------------------------------------
def test_build_tokenizer_adds_the_template_only_when_missing(tmp_path):
    plain, custom = tmp_path / "plain", tmp_path / "custom"
    train_tiny_tokenizer().save_pretrained(plain)
    theirs = train_tiny_tokenizer()
    theirs.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    theirs.save_pretrained(custom)
    chat = build_tokenizer(ModelArguments(tokenizer_name_or_path=str(plain)), None, messages_column="messages")
    assert chat.chat_template == CHAT_TEMPLATE
    assert build_tokenizer(ModelArguments(tokenizer_name_or_path=str(plain)), None).chat_template is None  # text data
    kept = build_tokenizer(ModelArguments(tokenizer_name_or_path=str(custom)), None, messages_column="messages")
    assert kept.chat_template == theirs.chat_template


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's loss on a batch is the hand-computed masked mean
# ---------------------------------------------------------------------------------------------------------------------
def test_trainer_loss_on_a_chat_batch_equals_the_hand_computed_masked_loss(chat_tokenizer, tmp_path):
    rows = [CONVERSATION, CONVERSATION[1:3], CONVERSATION[:3], CONVERSATION[1:]]
    encoded = tokenize_conversations(conversations_of(*rows), chat_tokenizer, max_length=1000)
    features = [{"input_ids": i, "labels": l} for i, l in zip(encoded["input_ids"], encoded["labels"])]
    batch = CompletionCollator(pad_token_id=chat_tokenizer.eos_token_id)(features)
    model = tiny_model_for(chat_tokenizer).train()  # train mode: the trainer's (fused, chunked) loss path
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = ScratchGPTTrainer(model=model, args=args, processing_class=chat_tokenizer)
    loss = trainer.compute_loss(model, dict(batch))

    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    log_probs = torch.log_softmax(logits, dim=-1)
    terms = []
    for row, ids in enumerate(encoded["input_ids"]):
        _, labels = expected_ids_and_labels(chat_tokenizer, rows[row])  # the masks written out by hand
        assert ids == expected_ids_and_labels(chat_tokenizer, rows[row])[0]
        terms += [-log_probs[row, t, labels[t + 1]] for t in range(len(labels) - 1) if labels[t + 1] != IGNORE]
    hand = torch.stack(terms).mean()
    assert len(terms) == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert_close_float32(loss.detach().double(), hand, reduction=len(terms), name="chat batch loss")


# ---------------------------------------------------------------------------------------------------------------------
# train --dataset chat.jsonl, end to end
# ---------------------------------------------------------------------------------------------------------------------
def write_chat_file(path, count=24):
    rows = []
    for i in range(count):
        a, b = i % 7, (3 * i) % 5
        messages = [{"role": "system", "content": "You add numbers."}] if i % 2 else []
        messages += [{"role": "user", "content": f"What is {a} plus {b}?"},
                     {"role": "assistant", "content": f"{a + b}."}]  # fmt: skip
        if i % 3 == 0:
            messages += [{"role": "user", "content": "Twice that?"},
                         {"role": "assistant", "content": f"{2 * (a + b)}."}]  # fmt: skip
        rows.append({"messages": messages})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


LOOP_FLAGS = {
    "trainer": ["--per_device_train_batch_size", "4", "--report_to", "none", "--logging_steps", "1"],
    "accelerate": ["--loop", "accelerate", "--global_batch_size", "4", "--logging_steps", "1"],
}


@pytest.mark.parametrize("loop", sorted(LOOP_FLAGS))
def test_train_on_chat_jsonl_saves_a_chat_model(tmp_path, capsys, loop):
    data = write_chat_file(tmp_path / "chat.jsonl")
    out = tmp_path / "out"
    code, _, err = run_cli([
        "train", "--dataset", data, "--output_dir", out, "--config_overrides", TINY, "--tokenizer_vocab_size", "300",
        "--validation_fraction", "0.2", "--max_steps", "3", "--use_cpu", "true", "--disable_tqdm", "true",
        *LOOP_FLAGS[loop],
    ], capsys)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_protocol"] == "assistant tokens of held-out conversations"
    losses = [row["loss"] for row in metrics["history"] if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
    assert math.isfinite(metrics["eval_loss"])
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE

    for tokenizer in (AutoTokenizer.from_pretrained(out), load_tokenizer(out)):
        assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    assert tokenizer.decode(prompt["input_ids"][0]) == "<|user|>\nWhat is 2 plus 3?\n<|assistant|>\n"
    model = ScratchGPTForCausalLM.from_pretrained(out).eval()
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert torch.equal(generated[:, : prompt["input_ids"].shape[1]], prompt["input_ids"])


def test_fine_tuning_a_folder_on_chat_data_keeps_its_own_template(tmp_path, capsys):
    folder = tmp_path / "model"
    _, tokenizer = save_tiny_model_folder(folder)
    theirs = CHAT_TEMPLATE.replace("<|' + message['role'] + '|>", "### ' + message['role'] + ':")
    tokenizer.chat_template = theirs
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    code, _, err = run_cli([
        "train", "--model_name_or_path", folder, "--dataset", write_chat_file(tmp_path / "chat.jsonl"),
        "--output_dir", out, "--validation_fraction", "0.2", "--max_steps", "1", "--use_cpu", "true",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true",
    ], capsys)  # fmt: skip
    assert code == 0, err
    assert AutoTokenizer.from_pretrained(out).chat_template == theirs


# ---------------------------------------------------------------------------------------------------------------------
# Records that are not conversations: one line naming the file and the record
# ---------------------------------------------------------------------------------------------------------------------
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
BAD_RECORDS = {
    "text record": ({"text": "just text"}, "line 3: no 'messages' field (keys: ['text'])"),
    "unknown role": ({"messages": [{"role": "bot", "content": "x"}]}, 'line 3: message 1 has role "bot"'),
    "content a number": (
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 7}]},
        "line 3: message 2 (assistant) has content a number (7), expected a string",
    ),
    "no content": ({"messages": [{"role": "user"}, GOOD["messages"][1]]}, "line 3: message 1 (user) has no content"),
    "no assistant": ({"messages": [{"role": "user", "content": "Hi"}]}, "line 3: no assistant message"),
    "messages a string": ({"messages": "Hi"}, "line 3: field 'messages' holds a string"),
    "empty messages": ({"messages": []}, "line 3: field 'messages' is an empty list"),
    "an array": ([1, 2], "line 3: an array ([1, 2]), expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, capsys, case):
    record, fragment = BAD_RECORDS[case]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in (GOOD, GOOD, record, GOOD)), encoding="utf-8")
    code, _, err = run_cli(["train", "--dataset", data, "--output_dir", tmp_path / "out", "--use_cpu", "true"], capsys)
    assert_one_line_error(code, err, f"{data} {fragment}")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_line_that_is_not_json_is_named(tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + '{"messages": [\n', encoding="utf-8")
    code, _, err = run_cli(["train", "--dataset", data, "--output_dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, f"{data} line 2: not valid JSON")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--streaming", "true", "--max_steps", "1"], "--streaming is for language-model blocks"),
        (["--messages_column", "messages", "--prompt_column", "prompt"], "not both"),
        (["--packing", "true"], "unrecognized arguments: --packing"),
    ],
)
def test_chat_data_refuses_streaming_prompt_columns_and_packing(tmp_path, capsys, flags, fragment):
    data = write_chat_file(tmp_path / "chat.jsonl")
    code, _, err = run_cli(["train", "--dataset", data, "--output_dir", tmp_path / "out", *flags], capsys)
    assert_one_line_error(code, err, fragment)


def test_a_text_file_named_as_chat_data_is_refused(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("one\n\ntwo\n", encoding="utf-8")
    code, _, err = run_cli(
        ["train", "--dataset", text, "--messages_column", "messages", "--output_dir", tmp_path / "out"], capsys
    )
    assert_one_line_error(code, err, "holds no conversations")


def test_text_records_are_still_language_modelling(tmp_path):
    """A .jsonl of text records is not taken for chat data (detection reads the first record)."""
    from hf_scratch_gpt.training.components import detect_chat_data

    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "hello", "messages": []}) + "\n", encoding="utf-8")
    assert detect_chat_data(DataArguments(dataset=str(data))) is None
    chat = write_chat_file(tmp_path / "chat.jsonl")
    arguments = DataArguments(dataset=str(chat))
    assert detect_chat_data(arguments) == "messages" == arguments.messages_column
