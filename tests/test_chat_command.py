"""`hf-scratch-gpt chat`: each reply printed equals `model.generate` (greedy) on the conversation rendered with the
chat template, turn by turn; old exchanges are dropped whole (system message kept) when the context is full."""

import io
import sys

import pytest
import torch
from saved_models import save_tiny_model_folder
from test_cli import assert_one_line_error, run_cli

import hf_scratch_gpt
from hf_scratch_gpt.chat import ChatSession, MessageTooLongError
from hf_scratch_gpt.chat_template import CHAT_TEMPLATE
from hf_scratch_gpt.generation import build_generation_config


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory):
    """A tiny model folder whose tokenizer has no chat template (a model trained on plain text)."""
    folder = tmp_path_factory.mktemp("chat") / "plain"
    save_tiny_model_folder(folder)
    return folder


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    """The same tiny model, its tokenizer saved with the package's chat template."""
    folder = tmp_path_factory.mktemp("chat") / "chat"
    _, tokenizer = save_tiny_model_folder(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def _chat(folder, lines, capsys, monkeypatch, *options):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    return run_cli(["chat", folder, *options], capsys)


def _greedy_reply(model, tokenizer, messages, max_new_tokens):
    """What the chat should answer: generate on the templated conversation, the reply's text."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    return tokenizer.decode(output[0, ids["input_ids"].size(1) :], skip_special_tokens=True)


def _expected_transcript(folder, lines, max_new_tokens, system=None):
    """The replies to `lines` as the chat should give them, from generate on the growing conversation; the
    conversation is cut as the spec says: oldest exchanges first, while prompt + max_new_tokens > n_positions."""
    model, tokenizer = hf_scratch_gpt.load_model(folder), hf_scratch_gpt.load_tokenizer(folder)
    head = [{"role": "system", "content": system}] if system else []
    turns, replies, dropped = [], [], 0
    for line in lines:
        if line == "/reset":
            turns = []
            continue
        turns.append({"role": "user", "content": line})
        while True:
            prompt = tokenizer.apply_chat_template(head + turns, add_generation_prompt=True)["input_ids"]
            if len(prompt) + max_new_tokens <= model.config.n_positions:
                break
            turns, dropped = turns[2:], dropped + 1  # one user message and its reply
        reply = _greedy_reply(model, tokenizer, head + turns, max_new_tokens)
        turns.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies, dropped


def test_each_reply_is_greedy_generate_on_the_templated_conversation(chat_folder, capsys, monkeypatch):
    lines = ["Hello", "How are you?", "/reset", "Hello"]
    code, out, err = _chat(chat_folder, lines, capsys, monkeypatch, "--max-new-tokens", "6")
    assert code == 0, err
    replies, dropped = _expected_transcript(chat_folder, lines, max_new_tokens=6)
    assert dropped == 0
    assert out == "".join(reply + "\n" for reply in replies), (out, replies)
    assert replies[0] != replies[1] and replies[2] == replies[0]  # the second turn saw the first; /reset forgot it
    assert "conversation cleared" in err


def test_a_full_context_drops_the_oldest_exchanges_and_keeps_the_system_message(chat_folder, capsys, monkeypatch):
    system = "You answer briefly."
    lines = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello there!", "Tokens, logits, softmax."]
    code, out, err = _chat(chat_folder, lines, capsys, monkeypatch, "--max-new-tokens", "40", "--system", system)
    assert code == 0, err
    replies, dropped = _expected_transcript(chat_folder, lines, max_new_tokens=40, system=system)
    assert dropped >= 1  # the case under test happened
    assert out == "".join(reply + "\n" for reply in replies), (out, replies)
    assert err.count("dropped the oldest") >= 1, err


def test_exit_stops_the_conversation(chat_folder, capsys, monkeypatch):
    code, out, err = _chat(chat_folder, ["Hello", "/exit", "Hello"], capsys, monkeypatch, "--max-new-tokens", "4")
    assert code == 0, err
    replies, _ = _expected_transcript(chat_folder, ["Hello"], max_new_tokens=4)
    assert out == replies[0] + "\n"


def test_a_folder_without_a_chat_template_is_one_line_saying_how(plain_folder, capsys, monkeypatch):
    code, out, err = _chat(plain_folder, ["Hello"], capsys, monkeypatch)
    assert_one_line_error(code, err, "has no chat template", "--use-package-template")
    assert out == ""


def test_the_package_template_on_request(plain_folder, chat_folder, capsys, monkeypatch):
    code, out, err = _chat(plain_folder, ["Hello"], capsys, monkeypatch, "--use-package-template",
                           "--max-new-tokens", "4")  # fmt: skip
    assert code == 0, err
    assert "package's chat template" in err
    assert out == _expected_transcript(chat_folder, ["Hello"], max_new_tokens=4)[0][0] + "\n"


class TokenCounter:
    """A streamer that counts what generate hands it: the prompt first, then each new token."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(value.numel())

    def end(self):
        pass


def test_generation_stops_at_the_end_token_that_closes_a_turn():
    """A model whose every prediction is the end token: the reply is one token, the turn is closed by it."""
    from saved_models import tiny_model_for, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_model_for(tokenizer)
    with torch.no_grad():  # logits = ln_f(h) . wte: a constant ln_f output along wte[eos] makes eos the argmax
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[tokenizer.eos_token_id])
    config = build_generation_config(model, max_new_tokens=10)
    session = ChatSession(model, tokenizer, config)
    counter = TokenCounter()
    assert session.reply("Hello", streamer=counter) == ""
    assert counter.calls[1:] == [1], counter.calls  # one new token: generation stopped at eos, not after 10
    rendered = tokenizer.apply_chat_template(session.conversation.messages(), tokenize=False)
    assert rendered == "<|user|>\nHello\n<|assistant|>\n<|endoftext|>", rendered


def test_a_message_longer_than_the_context_is_refused_and_not_kept():
    from saved_models import tiny_model_for, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_model_for(tokenizer)
    session = ChatSession(model, tokenizer, build_generation_config(model, max_new_tokens=4))
    with pytest.raises(MessageTooLongError, match="above the model's context of 128 tokens"):
        session.reply("word " * 200)
    assert session.conversation.turns == []
    with pytest.raises(ValueError, match="max_new_tokens 128 leaves no room"):
        ChatSession(model, tokenizer, build_generation_config(model, max_new_tokens=128))


def test_dropping_takes_the_oldest_user_message_with_its_reply_and_keeps_the_system_message():
    from hf_scratch_gpt.chat import Conversation

    turns = [{"role": role, "content": f"{role} {n}"} for n in range(3) for role in ("user", "assistant")][:-1]
    conversation = Conversation(system="Be brief.", turns=list(turns))
    assert conversation.drop_oldest_exchange()
    assert conversation.messages() == [{"role": "system", "content": "Be brief."}] + turns[2:]
    assert conversation.drop_oldest_exchange()
    assert conversation.turns == turns[4:]  # the message being answered stays
    assert not conversation.drop_oldest_exchange()
    assert conversation.turns == turns[4:]
