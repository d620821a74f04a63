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


# One entry per subcommand: a function that adds its parser (and sets `handler`).
SUBCOMMANDS: list[Callable] = [_add_smoke]


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
