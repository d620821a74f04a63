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


# One entry per subcommand: a function that adds its parser (and sets `handler`).
SUBCOMMANDS: list[Callable] = [_add_smoke, _add_download_openai, _add_convert_openai]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-scratch-gpt", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
