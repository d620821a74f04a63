"""`hf-scratch-gpt` command line: each subcommand parses its arguments and calls one library function.

A mistake in the input (a missing folder, a bad flag value, a file that is not UTF-8, no network) ends in one line
`hf-scratch-gpt: error: ...` on stderr and exit code 1; `--debug` or HF_SCRATCH_GPT_DEBUG=1 shows the traceback.
"""

# This module lives outside the `hf_scratch_gpt` package on purpose: importing the package registers its classes with
# transformers' Auto classes, which loads torch and transformers (seconds). Building the parser imports nothing but
# the standard library, so `--help`, every subcommand's `--help` except `train`'s (which lists the dataclass flags of
# transformers' `TrainingArguments`) and usage mistakes answer at once; each handler imports what it needs from the
# package. The few values the parser shows that the package also defines (checkpoint sizes, card kinds) are written
# here once more, and a test checks that both agree. `python -m hf_scratch_gpt.cli` runs the same command line.

import argparse
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager

PROG = "hf-scratch-gpt"
# The package's own values, repeated so that building the parser imports nothing (tests/test_cli.py checks they agree):
# hf_scratch_gpt.openai.download.OPENAI_SIZES / OPENAI_BASE_URL and hf_scratch_gpt.hub.CARD_TEMPLATES.
OPENAI_SIZES = ("124M", "355M", "774M", "1558M")
OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
CARD_KINDS = ("fine_tuned", "openai_checkpoint", "trained_from_scratch")
DEBUG_ENVIRONMENT_VARIABLE = "HF_SCRATCH_GPT_DEBUG"
# Errors that a user's input or environment causes; their messages name the file, value or flag, so the CLI prints
# the message alone. ValueError includes json.JSONDecodeError, UnicodeDecodeError and pyarrow's ArrowInvalid;
# OSError includes FileNotFoundError, the downloader's DownloadError and huggingface_hub's HTTP errors; ImportError
# is a missing optional dependency (TensorFlow for convert-openai); MemoryError (and the allocation failures below) a
# size asked for that this machine cannot hold. Anything else is a bug: it keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, MemoryError)
# Library errors of the same kind, as (module, class) so that checking for them imports nothing: an error can only
# be of a class whose module is already loaded.
EXPECTED_LIBRARY_ERRORS = (
    ("datasets.exceptions", "DatasetsError"),  # e.g. DatasetGenerationError for a bad .jsonl line
    ("safetensors", "SafetensorError"),
    ("hf_scratch_gpt.training.components", "NonFiniteLossError"),
    ("torch", "OutOfMemoryError"),  # an accelerator's allocation failure; its message gives the size
)
# torch's CPU allocator reports a failed allocation as a plain RuntimeError, recognised by its message (the one
# RuntimeError taken as expected: a model or batch too large for this machine, not a bug).
CPU_ALLOCATION_FAILURE = re.compile(
    r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory): you tried to allocate (\d+) bytes"
)
# Errors whose own message only says that something failed ("An error occurred while generating the dataset"); the
# one line adds their cause, which says what (e.g. "JSON parse error: ... in row 1").
WRAPPING_LIBRARY_ERRORS = (("datasets.exceptions", "DatasetGenerationError"),)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a usage mistake reported in one line (argparse prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` for integers >= minimum, whose refusal says what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _perplexity(text: str) -> float:
    """A perplexity: a finite number >= 1 (exp of a mean negative log-likelihood). The same rule as
    hf_scratch_gpt.hub.check_perplexity (tests/test_hub.py checks both refuse the same values), here so that the
    refusal names the flag."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 1 (a perplexity), got {text!r}")
    return value


def _device(text: str) -> str:
    """A torch device this machine has ('cpu', 'cuda', 'cuda:1', 'mps'), checked before any model is loaded."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device name ({error})") from None
    available = {
        "cpu": lambda: True,
        "cuda": lambda: torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": lambda: torch.backends.mps.is_available(),
    }
    if not available.get(device.type, lambda: False)():
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine (try cpu)")
    return text


@contextmanager
def _no_weight_loading_bar():
    """No "Loading weights" progress bar while a saved folder loads: it takes a moment, the bar is noise."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _smoke(args: argparse.Namespace) -> int:
    from hf_scratch_gpt.smoke import smoke_run

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
    from hf_scratch_gpt.openai.download import download_openai_checkpoint

    for path in download_openai_checkpoint(args.size, args.dir, base_url=args.base_url, retries=args.retries):
        print(path)
    return 0


def _add_download_openai(subparsers) -> None:
    parser = subparsers.add_parser(
        "download-openai", help="download one of OpenAI's GPT-2 TensorFlow checkpoints (resumable)"
    )
    parser.add_argument("size", choices=OPENAI_SIZES)
    parser.add_argument("dir", help="folder to download the seven checkpoint files into")
    parser.add_argument("--base-url", default=OPENAI_BASE_URL,
                        help="folder URL holding one subfolder per size (default: OpenAI's public storage)")
    parser.add_argument("--retries", type=_non_negative_int, default=5,
                        help="retries per file after a cut connection, a timeout or a 5xx (an unreachable host: 1)")
    parser.set_defaults(handler=_download_openai)


def _convert_openai(args: argparse.Namespace) -> int:
    from hf_scratch_gpt.openai.convert import convert_openai_checkpoint

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
    parser.add_argument("--max-shard-size", default="5GB",
                        help="bytes, or a size with a unit: 2GB, 500MB, 2GiB; larger outputs are sharded")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits check against the reference")
    parser.set_defaults(handler=_convert_openai)


# `convert --from`: OpenAI's TF checkpoints and the peer projects' files (hf_scratch_gpt.convert.CONVERTERS).
CONVERT_FORMATS = ("openai", "nanogpt", "llmc", "lfs")
# `export --to` (hf_scratch_gpt.export.EXPORT_FORMATS) and the GGUF tensor types.
EXPORT_FORMATS = ("gpt2", "onnx", "gguf")
GGUF_TYPES = ("f32", "f16", "q8_0")


def _convert(args: argparse.Namespace) -> int:
    if args.source_format != "lfs" and args.n_head is not None:
        raise ValueError(f"--n-head is read from the file for --from {args.source_format}; it is only for --from lfs")
    if args.source_format == "openai":
        if args.tokenizer is not None:
            raise ValueError("--tokenizer is not used with --from openai: the checkpoint folder holds its tokenizer")
        return _convert_openai(argparse.Namespace(ckpt_dir=args.src, out_dir=args.out, **{
            name: getattr(args, name) for name in ("dtype", "max_shard_size", "overwrite", "no_verify")
        }))
    if args.no_verify or args.max_shard_size != "5GB":
        raise ValueError(f"--no-verify and --max-shard-size are for --from openai only, not --from {args.source_format}")
    from hf_scratch_gpt.convert import CONVERTERS

    extra = {}
    if args.source_format == "lfs":
        if args.n_head is None:
            raise ValueError("--from lfs needs --n-head N: the book's state dict does not record the head count")
        extra["n_head"] = args.n_head
    report = CONVERTERS[args.source_format](
        args.src, args.out, tokenizer=args.tokenizer, dtype=args.dtype, overwrite=args.overwrite,
        command=" ".join([PROG, *sys.argv[1:]]), **extra,
    )
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint of OpenAI, nanoGPT, llm.c or the LLMs-from-scratch book into a "
        "checked from_pretrained folder"
    )
    parser.add_argument("src", help="openai: the checkpoint folder; nanogpt: ckpt.pt; llmc: model.bin; lfs: model.pth")
    parser.add_argument("out")
    parser.add_argument("--from", dest="source_format", choices=CONVERT_FORMATS, required=True)
    parser.add_argument("--tokenizer", default=None,
                        help="nanogpt/llmc/lfs: a GPT-2 BPE folder (vocab.json + merges.txt, or tokenizer.json), or "
                        "nanoGPT's meta.pkl (read without running code); without it no tokenizer is written")
    parser.add_argument("--n-head", type=int, default=None, help="lfs: attention heads per block (not in the file)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--max-shard-size", default="5GB", help="openai: larger outputs are sharded (2GB, 500MB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT the converter wrote")
    parser.add_argument("--no-verify", action="store_true", help="openai: skip the logits check")
    parser.set_defaults(handler=_convert)


def _export(args: argparse.Namespace) -> int:
    from hf_scratch_gpt.export import export_model

    options = {"overwrite": args.overwrite}
    if args.to == "gguf":
        options.update(dtype=args.gguf_type, llama_cpp=not args.no_llama_cpp)
    elif args.gguf_type != "f32" or args.no_llama_cpp:
        raise ValueError(f"--gguf-type and --no-llama-cpp are for --to gguf only, not --to {args.to}")
    report = export_model(args.model, args.out, args.to, **options)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a saved folder to plain transformers GPT-2, ONNX or GGUF (llama.cpp), checked there"
    )
    parser.add_argument("model", help="a saved ScratchGPT folder")
    parser.add_argument("out", help="gpt2: a folder; onnx: a folder; gguf: a .gguf file")
    parser.add_argument("--to", choices=EXPORT_FORMATS, required=True)
    parser.add_argument("--gguf-type", choices=GGUF_TYPES, default="f32", help="gguf: the tensor type")
    parser.add_argument("--no-llama-cpp", action="store_true",
                        help="gguf: check the file without running it in llama.cpp (which needs the llama extra, "
                        "llama-cpp-python); the tensors, metadata and tokenizer are still checked")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT an export wrote")
    parser.set_defaults(handler=_export)


def _merge_lora(args: argparse.Namespace) -> int:
    from hf_scratch_gpt.lora import merge_lora

    with _no_weight_loading_bar():
        report = merge_lora(args.adapter, args.out, base=args.base, overwrite=args.overwrite)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_merge_lora(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge-lora", help="merge a LoRA adapter (train --lora_r) into its base model: a plain folder that needs no peft"
    )
    parser.add_argument("adapter", help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("out", help="the folder to write the merged model into")
    parser.add_argument("--base", default=None,
                        help="the base model folder (default: base_model_name_or_path in adapter_config.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT an earlier merge wrote")
    parser.set_defaults(handler=_merge_lora)


def _train(args: argparse.Namespace) -> int:
    if args.loop == "accelerate":
        from hf_scratch_gpt.training.loop import loop_from_argv as run
    else:
        from hf_scratch_gpt.training.trainer import train_from_argv as run

    result = run(args.training_arguments)  # `--help` is among them: the loop's own parser lists every flag
    if result.get("plot"):  # the main process of a multi-process run reports
        print(json.dumps(result, indent=2, default=str))
    return 0


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train from a preset or fine-tune a folder (Trainer, or --loop accelerate); "
        "`train [--loop accelerate] --help` lists every flag",
        add_help=False,  # `--help` goes to the chosen loop's parser, which knows the dataclass flags
    )
    parser.add_argument("--loop", choices=("trainer", "accelerate"), default="trainer")
    parser.set_defaults(handler=_train, passes_extra_arguments=True)


# `evaluate` flags of each path, to refuse one path's flag on the other (name: value when left out).
PERPLEXITY_FLAGS = {"dataset_config": None, "split": None, "validation_fraction": None, "split_seed": None,
                    "text_column": "text", "stride": None}  # fmt: skip
LM_EVAL_FLAGS = {"num_fewshot": None, "limit": None, "batch_size": None, "include_path": None}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _evaluate(args: argparse.Namespace) -> int:
    other = PERPLEXITY_FLAGS if args.tasks else LM_EVAL_FLAGS
    misplaced = [_flag(name) for name, default in other.items() if getattr(args, name) != default]
    if misplaced:
        where = "--text-file/--dataset (perplexity)" if args.tasks else "--tasks (lm-eval)"
        raise ValueError(f"{', '.join(misplaced)} only apply with {where}, not with the options given")
    if args.output is not None and os.path.lexists(args.output):
        raise FileExistsError(f"--output {args.output} exists; choose a new file name (it is not replaced)")
    with _no_weight_loading_bar():
        if args.tasks:
            from hf_scratch_gpt.lm_eval_tasks import evaluate_tasks

            result = evaluate_tasks(
                args.model, [name.strip() for name in args.tasks.split(",") if name.strip()],
                num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size or 1,
                include_path=args.include_path, device=args.device, dtype=args.dtype,
            )  # fmt: skip
        else:
            from hf_scratch_gpt.evaluation import evaluate_model

            result = evaluate_model(
                args.model, text_file=args.text_file, dataset=args.dataset, dataset_config=args.dataset_config,
                dataset_split=args.split, text_column=args.text_column, stride=args.stride, device=args.device,
                validation_fraction=args.validation_fraction, split_seed=args.split_seed, dtype=args.dtype,
            )  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.output is not None:
        with open(args.output, "x", encoding="utf-8") as file:
            file.write(text + "\n")
    print(text)
    return 0


def _limit(text: str) -> int | float:
    """lm-eval's --limit: a number of documents per task (an integer >= 1) or a share of them (0 < x < 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value >= 1 and value == int(value):
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"expected documents per task (an integer >= 1) or a share (0 < x < 1), got {text!r}")


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="loss, perplexity, bits per byte, next-token accuracy of a model folder, or lm-eval "
        "benchmark tasks with --tasks (prints JSON)"
    )
    parser.add_argument("model", help="folder with the model and its tokenizer")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-file", help="a UTF-8 text file, scored as one text")
    source.add_argument("--dataset", help="'pydoc', a .jsonl file or a Hugging Face dataset name; per document")
    source.add_argument("--tasks", help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy (needs the lm-eval "
                        "extra; most tasks download their dataset from the Hub)")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument(
        "--split", default=None,
        help="a Hub dataset's split (default: test). pydoc and .txt/.jsonl files have none; for the corpus the model "
        "was trained on (MODEL/metrics.json's dataset), training's own split of it: validation (the documents it "
        "held out), train, or all (default, with a warning). Any other local file, e.g. the validation.jsonl the "
        "demo writes (already a split), is scored whole; validation/train is refused for it",
    )
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="pydoc/.txt/.jsonl: the held-out share training used (default: training's, 0.05)")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="pydoc/.txt/.jsonl: the seed of training's split (default: training's, 0)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--stride", type=_positive_int, default=None,
                        help="sliding-window step (default: n_positions // 2)")
    parser.add_argument("--num-fewshot", type=_non_negative_int, default=None,
                        help="--tasks: examples shown before each question (default: each task's own, mostly 0)")
    parser.add_argument("--limit", type=_limit, default=None,
                        help="--tasks: at most this many documents per task, or a share (0.1); for quick checks")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="--tasks: requests per forward (default 1)")
    parser.add_argument("--include-path", action="append", default=None, metavar="DIR",
                        help="--tasks: a folder of your own task YAML files (repeatable)")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="also write the JSON result to FILE (a new file: an existing one is not replaced)")
    parser.add_argument("--device", type=_device, default=None, help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    _add_inference_dtype(parser)
    parser.set_defaults(handler=_evaluate)


def _demo(args: argparse.Namespace) -> int:
    if args.max_minutes is not None:  # refused before anything is imported or trained
        raise ValueError(
            f"--max-minutes {args.max_minutes:g}: the demo no longer stops on a time budget (its result depended on "
            "the machine's speed); it trains a fixed number of steps: choose them with --max-steps"
        )
    from tqdm.auto import tqdm

    from hf_scratch_gpt.demo import DemoOptions, run_demo, summary_lines

    given = dict(
        output_dir=args.output_dir, dataset=args.dataset, preset=args.preset, config_overrides=args.config_overrides,
        tokenizer_vocab_size=args.vocab_size, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, eval_steps=args.eval_steps, seed=args.seed,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    options = DemoOptions(**{name: value for name, value in given.items() if value is not None})
    # The plan and the progress lines go through tqdm.write, which keeps Trainer's progress bar intact.
    result = run_demo(options, report=lambda line: tqdm.write(line, file=sys.stdout))
    print("\n".join(summary_lines(result)))
    return 0


def _add_demo(subparsers) -> None:
    # An option left out keeps `hf_scratch_gpt.demo.DemoOptions`' default (not repeated here: see the module doc).
    parser = subparsers.add_parser(
        "demo",
        help="train a tokenizer and a small GPT on the embedded corpus (~5 min on 2 CPU cores), evaluate, sample; "
        "a fixed number of steps, so the same options give the same result however fast the machine is",
    )
    parser.add_argument("--output-dir", help="where the model, tokenizer and figures go (default: runs/demo)")
    parser.add_argument("--dataset", help="'pydoc' (the default: embedded), a .txt/.jsonl file or a dataset name")
    parser.add_argument("--preset", help="model size preset (default: tiny)")
    parser.add_argument("--config-overrides", help="comma-separated config fields, e.g. n_layer=2,n_embd=64")
    parser.add_argument("--vocab-size", type=int, help="size of the byte-level BPE trained on the corpus")
    parser.add_argument("--max-steps", type=int, help="training steps (default: 1200); the run's length is set by "
                        "steps, never by time, so its result does not depend on the machine's speed")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--eval-steps", type=int)
    parser.add_argument("--max-minutes", type=float, help=argparse.SUPPRESS)  # removed; refused with the reason
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--seed", type=int)
    parser.set_defaults(handler=_demo)


def _generate(args: argparse.Namespace) -> int:
    if args.stream and args.num_beams > 1:  # refused before the model is loaded
        raise ValueError(
            f"--stream prints each token as it is chosen, but beam search (--num-beams {args.num_beams}) only knows "
            "the best sequence at the end; use one of the two"
        )
    from hf_scratch_gpt.generation import build_generation_config, format_steps, generate_text
    from hf_scratch_gpt.loading import load_model, load_tokenizer

    with _no_weight_loading_bar():
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


def _add_inference_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
        help="load the weights in this dtype. auto (default): the checkpoint's, but float32 for a bf16/fp16 "
        "checkpoint on a CPU without bf16/fp16 instructions, where half precision is several times slower",
    )


def _add_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="continue a prompt with a saved model (greedy by default; sampling with --temperature/--top-k/--top-p)"
    )
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=_positive_int, default=50)
    parser.add_argument("--temperature", type=float, default=None, help="sample with this temperature (> 0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with probability >= p")
    parser.add_argument("--num-beams", type=_positive_int, default=1,
                        help="beam search with this many beams (greedy: 1); not with --stream")
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated (not with beams)")
    parser.add_argument(
        "--show-probs", type=_non_negative_int, default=0, metavar="K",
        help="for each generated position, print the K most likely next tokens: softmax of the raw logits",
    )
    parser.add_argument("--revision", default=None, help="Hub revision when MODEL is a repo id")
    _add_inference_dtype(parser)
    parser.set_defaults(handler=_generate)


def _chat(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from hf_scratch_gpt.chat import ChatSession, chat_loop, require_chat_template
    from hf_scratch_gpt.generation import build_generation_config
    from hf_scratch_gpt.loading import load_model, load_tokenizer

    def notice(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    with _no_weight_loading_bar():
        tokenizer = load_tokenizer(args.model, revision=args.revision)
        require_chat_template(tokenizer, args.model, use_package_template=args.use_package_template)
        if args.use_package_template:
            notice("rendering the conversation with the package's chat template (the tokenizer has none of its own)")
        model = load_model(args.model, revision=args.revision, dtype=args.dtype)
    max_new_tokens = args.max_new_tokens or min(128, model.config.n_positions // 2)
    generation_config = build_generation_config(
        model, max_new_tokens=max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )  # fmt: skip
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    session = ChatSession(model, tokenizer, generation_config, system=args.system, notice=notice)
    interactive = sys.stdin.isatty()

    def read_line() -> str | None:
        if interactive:
            try:
                return input("> ")
            except EOFError:
                print()
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    # The streamer prints the reply's text as it is generated (not the prompt, not the end token), then a newline.
    chat_loop(session, read_line, lambda: TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True), notice)
    return 0


def _add_chat(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat", help="talk to a model folder whose tokenizer has a chat template: a line of stdin per message; "
        "/reset starts over, /exit or the end of input stops",
    )
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument("--system", default=None, help="a system message that opens the conversation (kept when "
                        "old exchanges are dropped to fit the context)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=None,
                        help="at most this many tokens per reply, kept free in the context for it (default: 128, or "
                        "half the context of a model with fewer than 256 positions)")
    parser.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default: greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with probability >= p")
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--use-package-template", action="store_true",
                        help="for a tokenizer without a chat template: render the conversation with this package's")
    parser.add_argument("--revision", default=None, help="Hub revision when MODEL is a repo id")
    _add_inference_dtype(parser)
    parser.set_defaults(handler=_chat)


def _card(args: argparse.Namespace) -> int:
    from hf_scratch_gpt.hub import write_model_card

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
    parser = subparsers.add_parser("card", help="write README.md (model card with Hub metadata) into a saved model folder")
    parser.add_argument("model_dir")
    parser.add_argument("--kind", choices=CARD_KINDS, default="trained_from_scratch")
    parser.add_argument("--repo-id", required=True, help="the Hub id the usage snippet loads, e.g. you/my-gpt")
    parser.add_argument("--license", required=True, help="e.g. apache-2.0, mit")
    parser.add_argument("--dataset", action="append", help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model (fine-tunes)")
    parser.add_argument("--perplexity", type=_perplexity, default=None, help="measured perplexity (a number >= 1)")
    parser.add_argument("--eval-dataset", default=None, help="dataset the perplexity was measured on")
    parser.add_argument("--eval-split", default=None)
    parser.add_argument("--language", default=None)
    parser.add_argument("--training-details", default=None, help="a paragraph of markdown for the card")
    parser.set_defaults(handler=_card)


def _push(args: argparse.Namespace) -> int:
    from hf_scratch_gpt.hub import push_to_hub

    plan = push_to_hub(
        args.model_dir, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run,
        as_gpt2=args.as_format == "gpt2",
    )
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
    parser.add_argument("--as", dest="as_format", choices=("scratch_gpt", "gpt2"), default="scratch_gpt",
                        help="gpt2: push the plain transformers GPT-2 export (no custom code, no trust_remote_code)")
    parser.set_defaults(handler=_push)


# One entry per subcommand: a function that adds its parser (and sets `handler`).
SUBCOMMANDS: list[Callable] = [
    _add_smoke, _add_download_openai, _add_convert_openai, _add_convert, _add_export, _add_train, _add_merge_lora,
    _add_evaluate, _add_demo, _add_generate, _add_chat, _add_card, _add_push,
]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--debug", action="store_true",
        help=f"show the full traceback of an error (also: {DEBUG_ENVIRONMENT_VARIABLE}=1)",
    )  # fmt: skip
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def _loaded_classes(names: Sequence[tuple[str, str]]) -> tuple[type[BaseException], ...]:
    """The classes among (module, class) pairs whose module is loaded; an error can only be of such a class."""
    return tuple(
        getattr(sys.modules[module], name)
        for module, name in names
        if module in sys.modules and hasattr(sys.modules[module], name)
    )


def _cpu_allocation_bytes(error: BaseException) -> int | None:
    """The size torch's CPU allocator failed to allocate, when `error` is that failure; None otherwise."""
    match = CPU_ALLOCATION_FAILURE.search(str(error)) if isinstance(error, RuntimeError) else None
    return int(match.group(1)) if match else None


def is_expected_error(error: BaseException) -> bool:
    """An error of the user's input or environment (printed as one line), as opposed to a bug (a traceback)."""
    expected = EXPECTED_ERRORS + _loaded_classes(EXPECTED_LIBRARY_ERRORS)
    return isinstance(error, expected) or _cpu_allocation_bytes(error) is not None


def describe_error(error: BaseException) -> str:
    """The error's message on one line (with its cause for a wrapping error, its class for a missing module, the
    size for a failed allocation)."""
    message = str(error) or type(error).__name__
    size = _cpu_allocation_bytes(error)
    if size is not None:
        message = (
            f"not enough memory: tried to allocate {size:,} bytes ({size / 2**30:,.1f} GiB) at once; choose a smaller "
            f"model (n_embd, n_layer, vocab_size), batch or dtype"
        )
    elif isinstance(error, MemoryError):
        detail = f": {error}" if str(error) else ""
        message = f"not enough memory (MemoryError{detail}); choose a smaller model, batch or dtype"
    cause = error.__cause__ or error.__context__
    if isinstance(error, _loaded_classes(WRAPPING_LIBRARY_ERRORS)) and cause is not None:
        message = f"{message}: {cause}"
    if isinstance(error, ModuleNotFoundError):  # "No module named 'x'" alone does not say what is wrong
        message = f"{type(error).__name__}: {message}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _debug_requested(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "") not in ("", "0")


@contextmanager
def _package_warnings_on_one_line():
    """The package's own warnings (e.g. a dtype this CPU runs slowly) printed as one line, without the source line."""
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        shown_elsewhere = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.startswith("hf_scratch_gpt"):
                print(f"{PROG}: warning: {message}", file=file or sys.stderr)
            else:
                shown_elsewhere(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    with _package_warnings_on_one_line():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    # `train` hands its unknown flags to HfArgumentParser (run_clm-style dataclass fields); others accept none.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "passes_extra_arguments", False):
        args.training_arguments = extra
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if _debug_requested(args):
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if _debug_requested(args) or not is_expected_error(error):
            raise  # a bug (or --debug): the traceback is what is needed
        print(f"{PROG}: error: {describe_error(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
