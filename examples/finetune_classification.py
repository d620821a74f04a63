"""Fine-tune a model folder as a text classifier with Trainer; report the accuracy on held-out rows before and after.

    python examples/finetune_classification.py --model runs/demo --output_dir runs/classifier
    python examples/finetune_classification.py --model runs/demo --data my_labels.jsonl --output_dir runs/mine

The folder (trained here or converted) loads into `AutoModelForSequenceClassification`, which adds a new `score`
layer (reported as newly initialised) and reads it at each text's last token. --data holds one
{"text": ..., "label": ...} per line, the label a class name or an integer. Without --data, a built-in set of
sentences labelled by a rule (what each sentence is about: an animal, a food or a vehicle) is used; without
--model, a tiny model with random weights and a tokenizer trained on the texts are built, so it runs anywhere.
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

import hf_scratch_gpt  # registers ScratchGPT with the Auto classes
from hf_scratch_gpt.data import train_bpe_tokenizer

# The built-in set: each sentence is about one thing, and its label is the kind of thing.
TOPICS = {
    "animal": ["dog", "cat", "horse", "rabbit", "fox", "owl", "goat", "mouse", "tiger", "duck"],
    "food": ["apple", "bread", "soup", "cheese", "pear", "cake", "rice", "salad", "plum", "pie"],
    "vehicle": ["bus", "car", "train", "truck", "bicycle", "tram", "boat", "van", "scooter", "plane"],
}
TEMPLATES = [
    "I saw a {} this morning.",
    "My neighbour talked about the {} for an hour.",
    "There is a {} near the station.",
    "She drew a picture of a {}.",
    "We read a short story about a {}.",
]


def built_in_rows() -> list[dict]:
    return [{"text": t.format(word), "label": topic} for topic, words in TOPICS.items() for word in words for t in TEMPLATES]


def read_rows(path: str) -> list[dict]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
            raise SystemExit(f"{path}:{number}: expected an object with a string 'text' and a 'label', got {line[:80]}")
        rows.append({"text": row["text"], "label": row["label"]})
    if not rows:
        raise SystemExit(f"{path} holds no rows")
    return rows


def tiny_model_and_tokenizer(texts: list[str], num_labels: int):
    """A small random-weight classifier and a byte-level BPE trained on `texts`, when no --model is given."""
    tokenizer = train_bpe_tokenizer([texts], vocab_size=400)
    config = hf_scratch_gpt.ScratchGPTConfig.from_preset(
        "tiny", vocab_size=len(tokenizer), n_positions=64, n_layer=2, n_embd=64, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id, num_labels=num_labels,
    )  # fmt: skip
    return hf_scratch_gpt.ScratchGPTForSequenceClassification(config), tokenizer


def accuracy(trainer: Trainer, dataset: Dataset) -> float:
    predictions = trainer.predict(dataset)
    return float((np.argmax(predictions.predictions, axis=-1) == predictions.label_ids).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved or converted model folder with its tokenizer (default: a tiny new one)")
    parser.add_argument("--data", help="a .jsonl file of {'text': ..., 'label': ...} rows (default: the built-in set)")
    parser.add_argument("--output_dir", default="runs/classifier", help="where the fine-tuned classifier is saved")
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--held_out_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    output_dir = Path(args.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(f"--output_dir {output_dir} exists and is not empty; name a new folder")

    set_seed(args.seed)  # the new score layer (and the tiny model) start from the same weights every run
    rows = read_rows(args.data) if args.data else built_in_rows()
    names = sorted({str(row["label"]) for row in rows})
    if len(names) < 2:
        raise SystemExit(f"the rows have {len(names)} label; a classifier needs at least 2")
    label2id = {name: i for i, name in enumerate(names)}
    random.Random(args.seed).shuffle(rows)
    held_out_count = max(1, round(len(rows) * args.held_out_fraction))
    splits = {"train": rows[held_out_count:], "held_out": rows[:held_out_count]}

    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:  # GPT-2's own tokenizer has none; its eos pads (never inside a text here)
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=len(names), pad_token_id=tokenizer.pad_token_id
        )
    else:
        model, tokenizer = tiny_model_and_tokenizer([row["text"] for row in rows], len(names))
    # The score layer reads each row's last token that is not pad_token_id, so padding may be on either side.
    model.config.id2label, model.config.label2id = dict(enumerate(names)), label2id

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=model.config.n_positions)

    # Integer class ids (a column of bools or floats would make the loss multi-label, as in transformers).
    datasets = {
        name: Dataset.from_list([{"text": row["text"], "label": label2id[str(row["label"])]} for row in split])
        .map(encode, batched=True, remove_columns=["text"])
        for name, split in splits.items()
    }
    training_args = TrainingArguments(
        output_dir=str(output_dir), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, learning_rate=args.learning_rate, warmup_steps=args.max_steps // 10,
        logging_steps=max(1, args.max_steps // 5), save_strategy="no", report_to="none", seed=args.seed,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=training_args, train_dataset=datasets["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
    )  # fmt: skip
    before = accuracy(trainer, datasets["held_out"])
    trainer.train()
    after = accuracy(trainer, datasets["held_out"])
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    print(json.dumps({
        "labels": names, "train_rows": len(splits["train"]), "held_out_rows": len(splits["held_out"]),
        "accuracy_before": before, "accuracy_after": after, "model_dir": str(output_dir),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
