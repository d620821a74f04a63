"""Fine-tune a saved or converted ScratchGPT folder on prompt/completion pairs with Trainer.

The prompt tokens get label -100, so only the completion is learned.

    python examples/finetune_prompt_completion.py MODEL_FOLDER pairs.jsonl --output_dir runs/finetuned

pairs.jsonl holds one {"prompt": ..., "completion": ...} per line. Without a file, a few built-in pairs are used.
"""

import argparse
import json
import tempfile
from pathlib import Path

from hf_scratch_gpt.training.trainer import train_from_argv

BUILT_IN_PAIRS = [
    {"prompt": f"Q: what is {a} plus {b}?\nA:", "completion": f" {a + b}"} for a in range(10) for b in range(10)
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s MODEL_FOLDER [PAIRS.jsonl] [TRAINER FLAGS]",
        epilog="Any other flag is a field of ModelArguments, DataArguments or TrainingArguments and overrides this\n"
        "script's defaults (`hf-scratch-gpt train --help` lists them all).",
        allow_abbrev=False,  # every flag but --help/-h passes through to the Trainer's parser
    )  # fmt: skip
    parser.add_argument("model_folder", help="a saved or converted model folder with its tokenizer")
    parser.add_argument("pairs", nargs="?", help="a .jsonl file of prompt/completion records (default: built-in pairs)")
    args, rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as scratch:  # the built-in pairs' file is removed after the run
        if args.pairs is None:
            args.pairs = str(Path(scratch) / "pairs.jsonl")
            Path(args.pairs).write_text("".join(json.dumps(p) + "\n" for p in BUILT_IN_PAIRS), encoding="utf-8")
        result = train_from_argv([
            "--model_name_or_path", args.model_folder, "--dataset", args.pairs, "--prompt_column", "prompt",
            "--completion_column", "completion", "--validation_fraction", "0.1", "--output_dir", "runs/finetuned",
            "--max_steps", "100", "--per_device_train_batch_size", "8", "--learning_rate", "5e-4",
            "--eval_strategy", "steps", "--eval_steps", "50", "--logging_steps", "10", "--report_to", "none", *rest,
        ])  # fmt: skip
    if "plot" in result:  # the main process of a torchrun run reports (the others have no plot)
        print(json.dumps({k: result[k] for k in ("eval_loss", "eval_perplexity", "eval_accuracy", "model_dir")}, indent=2))


if __name__ == "__main__":
    main()
