"""Generate from one prompt with every decoding strategy in `hf_scratch_gpt.generation.DECODING_STRATEGIES`.

    python examples/generate_strategies.py                       # a tiny random model: offline, seconds
    python examples/generate_strategies.py path/to/model-folder  # a trained or converted model (with tokenizer)

Greedy and beam search are deterministic; the sampling strategies use --seed.
"""

import argparse

import torch
from transformers import GPT2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

import hf_scratch_gpt  # registers ScratchGPT with the Auto classes
from hf_scratch_gpt.generation import DECODING_STRATEGIES, build_generation_config, generate_text
from hf_scratch_gpt.loading import load_model, load_tokenizer


def tiny_random_model_and_tokenizer():
    """A byte-level tokenizer (256 single-byte tokens + <|endoftext|>) and a random tiny model over it."""
    byte_tokens = bytes_to_unicode()  # byte → printable stand-in character, GPT-2's table
    vocab = {token: index for index, token in enumerate(byte_tokens[b] for b in range(256))}
    vocab["<|endoftext|>"] = 256
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                              eos_token="<|endoftext|>")
    config = hf_scratch_gpt.ScratchGPTConfig.from_preset("tiny", vocab_size=257, bos_token_id=256, eos_token_id=256)
    torch.manual_seed(0)
    return hf_scratch_gpt.ScratchGPTForCausalLM(config).eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="saved model folder or Hub id; a tiny random model when left out")
    parser.add_argument("--prompt", default="The meaning of life is")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.model:
        model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    else:
        model, tokenizer = tiny_random_model_and_tokenizer()

    for name, options in DECODING_STRATEGIES.items():
        config = build_generation_config(model, max_new_tokens=args.max_new_tokens, **options)
        (result,) = generate_text(model, tokenizer, args.prompt, config, seed=args.seed)
        print(f"[{name}] {options}")
        print(f"  {result.text!r}")


if __name__ == "__main__":
    main()
