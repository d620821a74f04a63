"""Perplexity, bits per byte and next-token accuracy of a model folder on a text file (sliding window).

    python examples/evaluate_perplexity.py MODEL_FOLDER text.txt [STRIDE]
"""

import argparse
import json

from hf_scratch_gpt.evaluation import evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_folder", help="a saved model folder with its tokenizer")
    parser.add_argument("text_file", help="a UTF-8 text file, scored as one text")
    parser.add_argument("stride", nargs="?", type=int, default=None,
                        help="sliding-window step in tokens (default: n_positions // 2)")
    args = parser.parse_args()
    print(json.dumps(evaluate_model(args.model_folder, text_file=args.text_file, stride=args.stride), indent=2))


if __name__ == "__main__":
    main()
