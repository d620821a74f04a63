"""The explicit Accelerate training loop (hf_scratch_gpt/training/loop.py), in one or several processes.

    python examples/accelerate_loop.py --output_dir runs/loop --max_steps 200
    torchrun --nproc_per_node 2 examples/accelerate_loop.py --output_dir runs/loop2      # DDP (gloo on CPU)
    accelerate launch --config_file examples/accelerate_fsdp.yaml examples/accelerate_loop.py ...  # FSDP2, CPU or GPUs
    torchrun --nproc_per_node 2 examples/accelerate_loop.py --fsdp true ...                         # the same FSDP2
"""

import json
import sys

from hf_scratch_gpt.training.loop import loop_from_argv

DEFAULTS = ["--output_dir", "runs/loop", "--max_steps", "200", "--global_batch_size", "16",
            "--config_overrides", "n_positions=128,n_embd=128,n_layer=4,n_head=4"]  # fmt: skip

if __name__ == "__main__":
    result = loop_from_argv(DEFAULTS + sys.argv[1:])
    if "plot" in result:  # the main process reports
        print(json.dumps({k: result[k] for k in ("eval_loss", "eval_perplexity", "processes", "model_dir", "plot")}, indent=2))
