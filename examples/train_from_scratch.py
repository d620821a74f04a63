"""Train a small GPT from scratch with transformers' Trainer on the embedded corpus (or your .txt/.jsonl).

    python examples/train_from_scratch.py --output_dir runs/scratch --max_steps 300

Any TrainingArguments / ModelArguments / DataArguments flag works (e.g. --dataset my.txt --preset tiny
--config_overrides n_embd=128,n_layer=4 --gradient_accumulation_steps 4 --label_smoothing_factor 0.1).
"""

import json
import sys

from hf_scratch_gpt.training.trainer import train_from_argv

DEFAULTS = ["--output_dir", "runs/scratch", "--max_steps", "200", "--per_device_train_batch_size", "16",
            "--learning_rate", "2e-3", "--eval_strategy", "steps", "--eval_steps", "50", "--logging_steps", "10",
            "--save_steps", "100", "--report_to", "none",
            "--config_overrides", "n_positions=128,n_embd=128,n_layer=4,n_head=4"]  # fmt: skip

if __name__ == "__main__":
    result = train_from_argv(DEFAULTS + sys.argv[1:])  # later flags override the defaults
    print(json.dumps({k: result[k] for k in ("eval_loss", "eval_perplexity", "eval_accuracy", "model_dir", "plot")}, indent=2))
