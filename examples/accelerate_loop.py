"""The explicit Accelerate training loop (hf_scratch_gpt/training/loop.py), in one or several processes.

    python examples/accelerate_loop.py --output_dir runs/loop --max_steps 200
    torchrun --nproc_per_node 2 examples/accelerate_loop.py --output_dir runs/loop2      # DDP (gloo on CPU)
    accelerate launch --config_file examples/accelerate_fsdp.yaml examples/accelerate_loop.py ...  # FSDP2, CPU or GPUs
    torchrun --nproc_per_node 2 examples/accelerate_loop.py --fsdp true ...                         # the same FSDP2
"""

import argparse
import json

from hf_scratch_gpt.training.loop import loop_from_argv

DEFAULTS = ["--output_dir", "runs/loop", "--max_steps", "200", "--global_batch_size", "16",
            "--config_overrides", "n_positions=128,n_embd=128,n_layer=4,n_head=4"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, usage="%(prog)s [LOOP FLAGS]",
        epilog="Every flag is a field of ModelArguments, DataArguments or LoopArguments"
        "\nand overrides this script's defaults (`hf-scratch-gpt train --loop accelerate --help` lists them all).",
        allow_abbrev=False,  # only --help/-h are this script's; every other flag passes through
    )  # fmt: skip
    _, flags = parser.parse_known_args()
    result = loop_from_argv(DEFAULTS + flags)
    if "plot" in result:  # the main process reports
        print(json.dumps({k: result[k] for k in ("eval_loss", "eval_perplexity", "processes", "model_dir", "plot")}, indent=2))


if __name__ == "__main__":
    main()
