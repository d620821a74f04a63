"""`hf-scratch-gpt` command line: each subcommand parses its arguments and calls one library function."""

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def _smoke(args: argparse.Namespace) -> int:
    from .smoke import smoke_run

    print(json.dumps(smoke_run(args.text, seed=args.seed), indent=2))
    return 0


def _add_smoke(subparsers) -> None:
    parser = subparsers.add_parser(
        "smoke", help="build the tiny model, compute loss and perplexity of a sentence (no downloads)"
    )
    parser.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_smoke)


def _download_openai(args: argparse.Namespace) -> int:
    from .openai.download import download_openai_checkpoint

    for path in download_openai_checkpoint(args.size, args.dir, base_url=args.base_url, retries=args.retries):
        print(path)
    return 0


def _add_download_openai(subparsers) -> None:
    from .openai.download import OPENAI_BASE_URL, OPENAI_SIZES

    parser = subparsers.add_parser(
        "download-openai", help="download one of OpenAI's GPT-2 TensorFlow checkpoints (resumable)"
    )
    parser.add_argument("size", choices=OPENAI_SIZES)
    parser.add_argument("dir", help="folder to download the seven checkpoint files into")
    parser.add_argument("--base-url", default=OPENAI_BASE_URL,
                        help="folder URL holding one subfolder per size (default: OpenAI's public storage)")
    parser.add_argument("--retries", type=int, default=5, help="retries per file after a cut connection or 5xx")
    parser.set_defaults(handler=_download_openai)


def _convert_openai(args: argparse.Namespace) -> int:
    from .openai.convert import convert_openai_checkpoint

    report = convert_openai_checkpoint(
        args.ckpt_dir, args.out_dir, dtype=args.dtype, max_shard_size=args.max_shard_size,
        overwrite=args.overwrite, verify=not args.no_verify,
    )
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_convert_openai(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-openai", help="convert an OpenAI GPT-2 TF checkpoint folder into a from_pretrained folder"
    )
    parser.add_argument("ckpt_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--max-shard-size", default="5GB", help="e.g. 2GB, 500MB; larger outputs are sharded")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits check against the reference")
    parser.set_defaults(handler=_convert_openai)


def _train(args: argparse.Namespace) -> int:
    if args.loop == "accelerate":
        from .training.loop import loop_from_argv as run
    else:
        from .training.trainer import train_from_argv as run

    result = run(args.training_arguments)
    if result.get("plot"):  # the main process of a multi-process run reports
        print(json.dumps(result, indent=2, default=str))
    return 0


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train from a preset or fine-tune a folder (Trainer, or --loop accelerate); "
        "all other flags are run_clm-style dataclass fields (ModelArguments, DataArguments, TrainingArguments or LoopArguments)",
    )
    parser.add_argument("--loop", choices=("trainer", "accelerate"), default="trainer")
    parser.set_defaults(handler=_train, passes_extra_arguments=True)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model

    result = evaluate_model(
        args.model, text_file=args.text_file, dataset=args.dataset, dataset_config=args.dataset_config,
        dataset_split=args.split, text_column=args.text_column, stride=args.stride, device=args.device,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="loss, perplexity, bits per byte, next-token accuracy of a model folder (prints JSON)"
    )
    parser.add_argument("model", help="folder with the model and its tokenizer")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-file", help="a UTF-8 text file, scored as one text")
    source.add_argument("--dataset", help="'pydoc', a .jsonl file or a Hugging Face dataset name; per document")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window step (default: n_positions // 2)")
    parser.add_argument("--device", default=None)
    parser.set_defaults(handler=_evaluate)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    options = DemoOptions(
        output_dir=args.output_dir, dataset=args.dataset, preset=args.preset, config_overrides=args.config_overrides,
        tokenizer_vocab_size=args.vocab_size, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, eval_steps=args.eval_steps, max_minutes=args.max_minutes or None,
        seed=args.seed, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    result = run_demo(options)
    validation = result["validation"]
    print(f"parameters: {result['parameters']:,}  steps: {result['trained_steps']}  "
          f"tokens seen: {result['tokens_seen']:,}  time: {result['seconds']} s")  # fmt: skip
    print(f"validation perplexity: {validation['perplexity']:.2f}  (unigram baseline: "
          f"{result['unigram_baseline_perplexity']:.2f})")  # fmt: skip
    print(f"validation bits per byte: {validation['bits_per_byte']:.3f}  "
          f"next-token accuracy: {validation['accuracy']:.3f}  over {validation['tokens']:,} tokens")  # fmt: skip
    for sample in result["samples"]:
        print(f"--- sample ({sample['strategy']}):\n{sample['text']}")
    print(f"model folder: {result['model_dir']}\nloss plot: {result['plot']}\nmetrics: {result['metrics_file']}")
    return 0


def _add_demo(subparsers) -> None:
    from .demo import DemoOptions

    defaults = DemoOptions()
    parser = subparsers.add_parser(
        "demo", help="train a tokenizer and a small GPT on the embedded corpus (~5 min on CPU), evaluate, sample"
    )
    parser.add_argument("--output-dir", default=defaults.output_dir)
    parser.add_argument("--dataset", default=defaults.dataset, help="'pydoc', a .txt/.jsonl file or a dataset name")
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--config-overrides", default=defaults.config_overrides)
    parser.add_argument("--vocab-size", type=int, default=defaults.tokenizer_vocab_size)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--eval-steps", type=int, default=defaults.eval_steps)
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes, help="training time budget; 0: none")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.set_defaults(handler=_demo)


def _generate(args: argparse.Namespace) -> int:
    from .generation import build_generation_config, format_steps, generate_text
    from .loading import load_model, load_tokenizer

    model = load_model(args.model, revision=args.revision, dtype=args.dtype)
    tokenizer = load_tokenizer(args.model, revision=args.revision)
    generation_config = build_generation_config(
        model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
    )
    streamer = None
    if args.stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_special_tokens=True)  # prints the prompt, then each new piece
    (result,) = generate_text(
        model, tokenizer, args.prompt, generation_config, seed=args.seed, show_probs=args.show_probs, streamer=streamer
    )
    if not args.stream:
        print(result.text)
    if args.show_probs:
        print(format_steps(result.steps))
    return 0


def _add_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="continue a prompt with a saved model (greedy by default; sampling with --temperature/--top-k/--top-p)"
    )
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=None, help="sample with this temperature (> 0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with probability >= p")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (greedy: 1)")
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument(
        "--show-probs", type=int, default=0, metavar="K",
        help="for each generated position, print the K most likely next tokens: softmax of the raw logits",
    )
    parser.add_argument("--revision", default=None, help="Hub revision when MODEL is a repo id")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default=None,
        help="load the weights in this dtype (default: the checkpoint's); bfloat16 halves the bytes read per token",
    )
    parser.set_defaults(handler=_generate)


def _card(args: argparse.Namespace) -> int:
    from .hub import write_model_card

    path = write_model_card(
        args.model_dir,
        args.kind,
        repo_id=args.repo_id,
        license=args.license,
        datasets=args.dataset or None,
        base_model=args.base_model,
        perplexity=args.perplexity,
        eval_dataset=args.eval_dataset,
        eval_split=args.eval_split,
        language=args.language,
        training_details=args.training_details,
    )
    print(path)
    return 0


def _add_card(subparsers) -> None:
    from .hub import CARD_TEMPLATES

    parser = subparsers.add_parser("card", help="write README.md (model card with Hub metadata) into a saved model folder")
    parser.add_argument("model_dir")
    parser.add_argument("--kind", choices=sorted(CARD_TEMPLATES), default="trained_from_scratch")
    parser.add_argument("--repo-id", required=True, help="the Hub id the usage snippet loads, e.g. you/my-gpt")
    parser.add_argument("--license", required=True, help="e.g. apache-2.0, mit")
    parser.add_argument("--dataset", action="append", help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model (fine-tunes)")
    parser.add_argument("--perplexity", type=float, default=None)
    parser.add_argument("--eval-dataset", default=None, help="dataset the perplexity was measured on")
    parser.add_argument("--eval-split", default=None)
    parser.add_argument("--language", default=None)
    parser.add_argument("--training-details", default=None, help="a paragraph of markdown for the card")
    parser.set_defaults(handler=_card)


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    plan = push_to_hub(args.model_dir, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run)
    action = "would upload" if args.dry_run else "uploaded"
    target = f"{plan.repo_id}@{plan.revision}" if plan.revision else plan.repo_id
    print(f"{action} to {target} ({'private' if plan.private else 'public'}):")
    for name in plan.files:
        print(f"  {name}")
    if plan.skipped:
        print("left out: " + ", ".join(plan.skipped))
    if plan.commit_url:
        print(plan.commit_url)
    return 0


def _add_push(subparsers) -> None:
    parser = subparsers.add_parser("push", help="upload a saved model folder (weights, tokenizer, code, card) to the Hub")
    parser.add_argument("model_dir")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and list the files; send nothing")
    parser.set_defaults(handler=_push)


# One entry per subcommand: a function that adds its parser (and sets `handler`).
SUBCOMMANDS: list[Callable] = [_add_smoke, _add_download_openai, _add_convert_openai, _add_train, _add_evaluate, _add_demo, _add_generate, _add_card, _add_push]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-scratch-gpt", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `train` hands its unknown flags to HfArgumentParser (run_clm-style dataclass fields); others accept none.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "passes_extra_arguments", False):
        args.training_arguments = extra
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
