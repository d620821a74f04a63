"""The card (README.md) of an exported folder, rendered from `model_cards/exported_*.md`.

Its metadata describes the export (library, pipeline, tags) and keeps what the source's card says about where the
model comes from (license, datasets, language, base model); the source card's text is not copied, since it tells
how to load the ScratchGPT folder, not the export.
"""

from __future__ import annotations

import logging
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..hub import CARD_NAME, MODEL_CARDS_DIR
from .common import Source

logger = logging.getLogger(__name__)

# Card metadata fields carried over from the source's card when it has them.
CARRIED_CARD_FIELDS = ("license", "datasets", "language", "base_model")
EXPORT_TAG = "hf-scratch-gpt-export"


def source_card_fields(source: Source) -> dict[str, Any]:
    """`CARRIED_CARD_FIELDS` of the source folder's card ({} without one; a card that cannot be read is logged
    and skipped: it is the export's description, not its content)."""
    path = source.folder / CARD_NAME
    if not path.is_file():
        return {}
    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception as error:  # a malformed card: huggingface_hub raises several kinds
        logger.warning("the card %s cannot be read (%s); the export's card does not carry its metadata", path, error)
        return {}
    return {name: data[name] for name in CARRIED_CARD_FIELDS if data.get(name)}


def render_export_card(template: str, source: Source, model_name: str, *, tags: list[str], **fields: Any) -> str:
    """The card text: `template` (a file of `model_cards/`) rendered with `fields`."""
    card_data = ModelCardData(
        library_name=fields.pop("library_name", "transformers"),
        pipeline_tag="text-generation",
        tags=[*tags, "text-generation", EXPORT_TAG],
        **source_card_fields(source),
    )
    card = ModelCard.from_template(
        card_data, template_path=str(MODEL_CARDS_DIR / template), model_name=model_name, source=str(source.folder),
        n_layer=source.model.config.n_layer, n_head=source.model.config.n_head, n_embd=source.model.config.n_embd,
        n_positions=source.model.config.n_positions, vocab_size=source.model.config.vocab_size, **fields,
    )  # fmt: skip
    return str(card)


__all__ = ["render_export_card"]
