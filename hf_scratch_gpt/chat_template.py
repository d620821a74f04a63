"""The chat template of models trained here: plain-text role headers, each assistant turn closed by the end token.

A GPT-2 vocabulary has one special token, so the roles are spelled in ordinary text (`<|user|>` is several BPE
pieces); the assistant's turn ends with `eos_token`, which is what stops `generate`, and the next turn follows it
directly (so a trainer scoring the completion, such as TRL's DPO, stops there too). `{% generation %}` marks the
assistant's text and its end token for `apply_chat_template(..., return_assistant_tokens_mask=True)`.
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('chat roles are system, user and assistant, not ' ~ message['role']) }}"
    "{%- endif %}"
    "{{- '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


def ensure_chat_template(tokenizer) -> bool:
    """Give `tokenizer` this package's chat template unless it already has one; returns whether it was added.

    A template the user (or the checkpoint) brought is kept: nothing a user wrote is replaced.
    """
    if getattr(tokenizer, "chat_template", None):
        return False
    if tokenizer.eos_token is None:
        raise ValueError("the chat template ends each assistant turn with the end token; this tokenizer has none")
    tokenizer.chat_template = CHAT_TEMPLATE
    return True
