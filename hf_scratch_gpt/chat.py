"""Talk to a model: `hf-scratch-gpt chat MODEL`, one conversation kept as chat messages.

Each turn appends the user's message, renders the whole conversation with the tokenizer's chat template
(`apply_chat_template(..., add_generation_prompt=True)`), generates the reply with transformers' `generate`
(streamed), stopping at the end token that closes an assistant turn, and appends the reply. The conversation is
kept within the model's context: when the rendered conversation plus the tokens reserved for the reply exceed
`n_positions`, the oldest exchanges are dropped whole (the system message stays), with a notice — the prompt is
never cut inside a message or a token.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, PreTrainedModel

from .chat_template import CHAT_TEMPLATE
from .generation import build_generation_config, check_generation_config

logger = logging.getLogger(__name__)

EXIT_COMMAND = "/exit"
RESET_COMMAND = "/reset"


class MessageTooLongError(ValueError):
    """A user message that, with the reply's room, does not fit the model's context even alone."""


def require_chat_template(tokenizer, model_path: str, use_package_template: bool = False) -> None:
    """Check that `tokenizer` has a chat template; with `use_package_template`, give one that has none this
    package's template (`chat_template.CHAT_TEMPLATE`) instead.

    A folder without a template is refused by default: its model was trained on plain text, and rendering a
    conversation in a format it never saw gives replies that look like a bug of the chat command.
    """
    if getattr(tokenizer, "chat_template", None):
        return
    if use_package_template:
        if tokenizer.eos_token is None:
            raise ValueError("the package's chat template closes each reply with the end token; this tokenizer has none")
        tokenizer.chat_template = CHAT_TEMPLATE
        return
    raise ValueError(
        f"the tokenizer in {model_path} has no chat template, so there is no conversation format this model knows: "
        f"fine-tune it on conversations (the fine-tuned folder keeps the template), or pass --use-package-template "
        f"to render the conversation with this package's template anyway (a model trained on plain text will not "
        f"chat well)"
    )


@dataclass
class Conversation:
    """The messages of one conversation: an optional system message, then user/assistant turns."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns.clear()

    def drop_oldest_exchange(self) -> bool:
        """Remove the oldest user message and the replies that follow it; False when only the last user message is
        left (it cannot be dropped: it is what is being answered)."""
        later_user = next((i for i, turn in enumerate(self.turns) if i > 0 and turn["role"] == "user"), None)
        if later_user is None:
            return False
        del self.turns[:later_user]
        return True


class ChatSession:
    """A model, its tokenizer (with a chat template) and a conversation; `reply` answers one user message."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        generation_config: GenerationConfig | None = None,
        system: str | None = None,
        notice: Callable[[str], None] = logger.warning,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template (see require_chat_template)")
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config if generation_config is not None else build_generation_config(model)
        check_generation_config(self.generation_config)
        room, limit = self.generation_config.max_new_tokens, model.config.n_positions
        if room is None or room >= limit:
            raise ValueError(
                f"max_new_tokens {room} leaves no room for the conversation in the model's context of {limit} "
                f"tokens; choose fewer (e.g. {limit // 2})"
            )
        self.conversation = Conversation(system=system)
        self.notice = notice

    def prompt_ids(self) -> torch.Tensor:
        """The conversation rendered by the chat template with the assistant's header, as (1, T) token ids."""
        encoded = self.tokenizer.apply_chat_template(
            self.conversation.messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return encoded["input_ids"]

    def fit_to_context(self) -> torch.Tensor:
        """The prompt ids, after dropping the oldest exchanges while the prompt plus `max_new_tokens` exceed the
        model's `n_positions`; `MessageTooLongError` when the newest user message alone does not leave that room."""
        limit = self.model.config.n_positions
        room = self.generation_config.max_new_tokens
        ids, dropped = self.prompt_ids(), 0
        while ids.size(1) + room > limit:
            if not self.conversation.drop_oldest_exchange():
                self.conversation.turns.pop()  # the message that does not fit is not kept
                raise MessageTooLongError(
                    f"this message takes {ids.size(1)} tokens with the chat template, and the reply needs "
                    f"{room} more (max_new_tokens): above the model's context of {limit} tokens; write a shorter "
                    f"message or lower max_new_tokens"
                )
            ids, dropped = self.prompt_ids(), dropped + 1
        if dropped:
            self.notice(
                f"the conversation no longer fits the model's context ({limit} tokens, {room} kept for the reply): "
                f"dropped the oldest {dropped} exchange{'s' if dropped > 1 else ''}"
            )
        return ids

    @torch.no_grad()
    def reply(self, message: str, streamer=None) -> str:
        """Append the user's `message`, generate the assistant's reply (to `streamer` as it comes), append it and
        return its text (without the end token)."""
        self.conversation.turns.append({"role": "user", "content": message})
        input_ids = self.fit_to_context().to(self.model.device)
        config = copy.deepcopy(self.generation_config)
        output = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
            streamer=streamer,
        )  # fmt: skip
        new_ids = output[0, input_ids.size(1) :]
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        self.conversation.turns.append({"role": "assistant", "content": text})
        return text


def chat_loop(
    session: ChatSession,
    read_line: Callable[[], str | None],
    make_streamer: Callable[[], object],
    notice: Callable[[str], None],
) -> int:
    """Answer lines from `read_line` (None at the end of input) until then or `/exit`; `/reset` starts the
    conversation again. Returns the number of replies given."""
    replies = 0
    while (line := read_line()) is not None:
        message = line.strip()
        if not message:
            continue
        if message == EXIT_COMMAND:
            break
        if message == RESET_COMMAND:
            session.conversation.reset()
            notice("conversation cleared")
            continue
        try:
            session.reply(message, streamer=make_streamer())
        except MessageTooLongError as error:  # a message too long for the context: say so, keep the conversation going
            notice(str(error))
            continue
        replies += 1
    return replies


__all__ = ["ChatSession", "Conversation", "EXIT_COMMAND", "MessageTooLongError", "RESET_COMMAND", "chat_loop", "require_chat_template"]
