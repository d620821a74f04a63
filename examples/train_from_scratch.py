"""Train a small GPT from scratch with transformers' Trainer on the embedded corpus (or your .txt/.jsonl).

    python examples/train_from_scratch.py --output_dir runs/scratch --max_steps 300

Any TrainingArguments / ModelArguments / DataArguments flag works (e.g. --dataset my.txt --preset tiny
--config_overrides n_embd=128,n_layer=4 --gradient_accumulation_steps 4 --label_smoothing_factor 0.1).
"""

import argparse
import json

from hf_scratch_gpt.training.trainer import train_from_argv

DEFAULTS = ["--output_dir", "runs/scratch", "--max_steps", "200", "--per_device_train_batch_size", "16",
            "--learning_rate", "2e-3", "--eval_strategy", "steps", "--eval_steps", "50", "--logging_steps", "10",
            "--save_steps", "100", "--report_to", "none",
            "--config_overrides", "n_positions=128,n_embd=128,n_layer=4,n_head=4"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, usage="%(prog)s [TRAINER FLAGS]",
        epilog="Every flag is a field of ModelArguments, DataArguments or TrainingArguments"
        "\nand overrides this script's defaults (`hf-scratch-gpt train --help` lists them all).",
        allow_abbrev=False,  # only --help/-h are this script's; every other flag passes through
    )  # fmt: skip
    _, flags = parser.parse_known_args()
    result = train_from_argv(DEFAULTS + flags)  # later flags override the defaults
    if "plot" in result:  # the main process of a torchrun run reports (the others have no plot)
        print(json.dumps({k: result[k] for k in ("eval_loss", "eval_perplexity", "eval_accuracy", "model_dir", "plot")}, indent=2))


if __name__ == "__main__":
    main()
