"""Perplexity, bits per byte and next-token accuracy of a model folder on a text file (sliding window).

    python examples/evaluate_perplexity.py MODEL_FOLDER text.txt [STRIDE]
"""

import json
import sys

from hf_scratch_gpt.evaluation import evaluate_model

if __name__ == "__main__":
    model_dir, text_file = sys.argv[1], sys.argv[2]
    stride = int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(evaluate_model(model_dir, text_file=text_file, stride=stride), indent=2))
