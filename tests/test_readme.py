"""Every fenced ```bash and ```python block of README.md and of the guides in docs/, run the way a user runs it:
from the repository root, after `make demo`, README first and then the guides in the order of DOCS (a guide's
command may use what an earlier file's command wrote, e.g. docs/converting.md uses README's converted GPT-2).

The stand-in for the repository root is a temporary folder with README.md and examples/ linked in, benchmarks/ copied,
where `runs/demo` comes from a small `hf-scratch-gpt demo` run (the substitution for `make demo` below). Commands
and snippets run verbatim, except:
- NOT_RUN: what needs the network or a GPU, or is this test suite itself, each with the reason;
- REDUCED: long runs, replaced by the same command with fewer steps or a smaller model;
- PYTHON_SUBSTITUTIONS: the Hub repo id in Python snippets, replaced by a local folder holding what a push uploads;
- STAND_INS: inputs a skipped step would have produced, or a user brings (the downloaded OpenAI checkpoint, a GPT-2
  folder, a text file, nanoGPT checkpoints).
Each table entry must appear in README.md or a guide: a stale entry fails `test_tables_match_the_readme`, so neither
the docs nor the tables can drift unnoticed. A command this file does not know how to run fails.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import GPT2_SHAPES, free_port, launch_temp, random_gpt2

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# README first, then the guides; training before scale-out and evaluation, converting after README's conversion.
DOCS = [README] + [ROOT / "docs" / f"{name}.md" for name in (
    "model", "training", "classification", "chat", "lora", "scale-out", "evaluation", "generation", "hub", "converting",
    "guarantees", "performance")]
LINKED = ("README.md", "examples")  # what README commands read from the repository root
# Copied, not linked: scripts there write their results under the root above them (runs/benchmarks/gpu_check.json),
# which must be the stand-in root, not the repository.
COPIED = ("benchmarks",)

# A model small enough that the README's training commands finish in seconds (2 layers, 32 wide).
SMALL_MODEL = "n_positions=128,n_embd=32,n_layer=2,n_head=2"  # the demo's context

NOT_RUN = {
    "hf-scratch-gpt export runs/demo runs/demo-q8_0.gguf --to gguf --gguf-type q8_0":
        "needs llama-cpp-python (the llama extra compiles llama.cpp); tests/export runs it with -m slow",
    "make test": "this test suite itself",
    ".venv/bin/python benchmarks/compare_gpt2.py": "benchmark: about 10 minutes on 2 cores (the README's table)",
    ".venv/bin/python benchmarks/compare_gpt2.py --device cuda --preset 355M --train-batch 16 --train-seq 1024":
        "needs a CUDA GPU",
    ".venv/bin/python benchmarks/compare_gpt2.py --skip memory convert": "benchmark: several minutes on 2 cores",
    ".venv/bin/python benchmarks/compare_gpt2.py --skip train memory convert --gen-new-tokens 64 "
    "--out runs/benchmarks/results_inference.json": "benchmark: about 3 minutes on 2 cores (the decoding rows)",
    "hf-scratch-gpt push runs/demo you/my-gpt --private": "network: uploads to the Hugging Face Hub",
    "hf-scratch-gpt download-openai 124M runs/gpt2-124M-tf":
        "network: downloads OpenAI's checkpoint (STAND_INS has one)",
    "hf-scratch-gpt convert path/to/gpt2_124M.bin runs/llmc-124M --from llmc --tokenizer runs/gpt2-124M":
        "covered by tests/convert (llm.c's model.bin written as train_gpt2.py writes it)",
    "hf-scratch-gpt convert path/to/model.pth runs/book-124M --from lfs --n-head 12":
        "covered by tests/convert (the book's GPTModel state dict)",
    "python benchmarks/data_pipeline.py --sizes-mb 100 1000 --train-steps 20":
        "benchmark: generates and tokenizes 1.1 GB of text, several minutes",
    "python benchmarks/data_memory_stages.py --size-mb 1000": "benchmark: tokenizes 1 GB of text, several minutes",
    "python benchmarks/convert_openai.py --size 124M --size 1558M":
        "benchmark: writes and converts a 5.8 GiB synthetic checkpoint",
    "hf-scratch-gpt evaluate runs/demo --tasks hellaswag,arc_easy --limit 200 --output runs/demo/lm-eval.json":
        "network: lm-eval downloads the tasks' datasets from the Hub (tests/test_lm_eval.py runs local tasks)",
    'hf-scratch-gpt chat runs/demo-chat --system "You answer briefly." --max-new-tokens 64':
        "interactive: reads the conversation from stdin (tests/test_chat_command.py feeds it)",
    "hf-scratch-gpt chat runs/demo --use-package-template":
        "interactive: reads the conversation from stdin (tests/test_chat_command.py feeds it)",
    "transformers serve runs/demo-chat-gpt2 --host 127.0.0.1 --port 8000":
        "a server that runs until stopped (tests/test_serve.py starts it and asks it over HTTP)",
    "curl http://127.0.0.1:8000/v1/chat/completions -H \"Content-Type: application/json\" -d '{\"model\": "
    "\"runs/demo-chat-gpt2\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 16, "
    "\"temperature\": 0}'": "asks the server above (tests/test_serve.py posts the same request)",
}

# README command → what runs instead (the same program and arguments, with fewer steps / a smaller model).
REDUCED = {
    # The Makefile's demo target runs `hf-scratch-gpt demo $(ARGS)` (checked in test_make_demo_is_the_demo_command).
    "make demo":
        f"hf-scratch-gpt demo --max-steps 4 --eval-steps 4 --batch-size 4 --vocab-size 300 --max-new-tokens 4 "
        f"--config-overrides {SMALL_MODEL}",
    "hf-scratch-gpt train --output_dir runs/x --preset tiny --config_overrides n_embd=128,n_layer=4 --dataset pydoc "
    "--max_steps 500 --eval_strategy steps --eval_steps 100 --gradient_accumulation_steps 4":
        f"hf-scratch-gpt train --output_dir runs/x --preset tiny --config_overrides {SMALL_MODEL} --dataset pydoc "
        "--max_steps 2 --eval_strategy steps --eval_steps 2 --gradient_accumulation_steps 2 "
        "--tokenizer_vocab_size 300 --per_device_eval_batch_size 64",
    "hf-scratch-gpt train --output_dir runs/mine --dataset my_text.txt --preset tiny --max_steps 1000":
        f"hf-scratch-gpt train --output_dir runs/mine --dataset my_text.txt --preset tiny --max_steps 2 "
        f"--config_overrides {SMALL_MODEL} --tokenizer_vocab_size 300 --per_device_eval_batch_size 64",
    "hf-scratch-gpt train --model_name_or_path runs/demo --dataset examples/pairs.jsonl --prompt_column prompt "
    "--output_dir runs/demo-ft":
        "hf-scratch-gpt train --model_name_or_path runs/demo --dataset examples/pairs.jsonl --prompt_column prompt "
        "--output_dir runs/demo-ft --max_steps 2",
    "hf-scratch-gpt train --model_name_or_path runs/x --dataset examples/pairs.jsonl --prompt_column prompt "
    "--output_dir runs/ft":
        "hf-scratch-gpt train --model_name_or_path runs/x --dataset examples/pairs.jsonl --prompt_column prompt "
        "--output_dir runs/ft --max_steps 2",
    "hf-scratch-gpt train --model_name_or_path runs/demo --lora_r 8 --dataset examples/pairs.jsonl --prompt_column "
    "prompt --output_dir runs/demo-lora --max_steps 200":
        "hf-scratch-gpt train --model_name_or_path runs/demo --lora_r 8 --dataset examples/pairs.jsonl --prompt_column "
        "prompt --output_dir runs/demo-lora --max_steps 2",
    "hf-scratch-gpt train --loop accelerate --output_dir runs/loop --global_batch_size 16 --max_steps 200":
        f"hf-scratch-gpt train --loop accelerate --output_dir runs/loop --global_batch_size 16 --max_steps 2 "
        f"--config_overrides {SMALL_MODEL} --tokenizer_vocab_size 300 --disable_tqdm true",
    "torchrun --nproc_per_node 2 -m hf_scratch_gpt.cli train --loop accelerate --output_dir runs/loop2":
        f"torchrun --nproc_per_node 2 -m hf_scratch_gpt.cli train --loop accelerate --output_dir runs/loop2 "
        f"--max_steps 2 --config_overrides {SMALL_MODEL} --tokenizer_vocab_size 300 --disable_tqdm true",
    "hf-scratch-gpt train --model_name_or_path runs/demo --dataset examples/chat.jsonl --output_dir runs/demo-chat":
        "hf-scratch-gpt train --model_name_or_path runs/demo --dataset examples/chat.jsonl --output_dir runs/demo-chat "
        "--max_steps 2",
    "hf-scratch-gpt train --model_name_or_path runs/demo --lora_r 8 --dataset examples/pairs.jsonl --prompt_column "
    "prompt --output_dir runs/lora":
        "hf-scratch-gpt train --model_name_or_path runs/demo --lora_r 8 --dataset examples/pairs.jsonl --prompt_column "
        "prompt --output_dir runs/lora --max_steps 2",
    "python examples/finetune_classification.py --model runs/demo --output_dir runs/demo-classifier":
        "python examples/finetune_classification.py --model runs/demo --output_dir runs/demo-classifier --max_steps 2",
    "python examples/finetune_classification.py --model runs/demo --output_dir runs/classifier":
        "python examples/finetune_classification.py --model runs/demo --output_dir runs/classifier --max_steps 2",
    "hf-scratch-gpt generate runs/demo --prompt \"The meaning of life is\" --max-new-tokens 40":
        "hf-scratch-gpt generate runs/demo --prompt \"The meaning of life is\" --max-new-tokens 8",
}

# In Python snippets: the Hub repo id → a local folder with exactly the files `push` uploads (made below).
PYTHON_SUBSTITUTIONS = {'"you/my-gpt"': '"hub/you/my-gpt"'}
STAND_INS = {
    "path/to/gpt2-folder": "a random GPT2LMHeadModel saved in transformers format",
    "runs/gpt2-124M-tf": "a tiny checkpoint in OpenAI's exact TF layout (tests/openai/openai_checkpoints.py)",
    "hub/you/my-gpt": "the files `push` would upload from runs/demo, with a model card",
    "my_text.txt": "paragraphs of the pydoc topics (a user's own text)",
    "path/to/out-shakespeare-char/ckpt.pt": "a tiny nanoGPT checkpoint over shakespeare_char's 65 characters",
    "path/to/meta.pkl": "shakespeare_char's meta.pkl, as nanoGPT's prepare.py writes it",
    "path/to/out/ckpt.pt": "a tiny nanoGPT checkpoint over the stand-in GPT-2 BPE (321 tokens padded to 384)",
}


# --------------------------------------------------------------------------------------------- reading the docs
def doc_name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def doc_blocks(path: Path) -> list[tuple[str, str, int, str]]:
    """(file, language, line number, body) of every fenced block of one Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((doc_name(path), match.group(1), line, match.group(2)))
    return blocks


def shell_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, normalised by shlex."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(shlex.join(argv))
    return commands


def key(command: str) -> str:
    return shlex.join(shlex.split(command))


BLOCKS = [block for path in DOCS for block in doc_blocks(path)]
RUN_BY_THE_WORKSPACE = {"make demo"}  # the workspace fixture runs it first (every other command needs runs/demo)
NOT_RUN = {key(command): reason for command, reason in NOT_RUN.items()}
REDUCED = {key(command): replacement for command, replacement in REDUCED.items()}


def test_docs_are_the_files_in_docs():
    """Every guide in docs/ is run (a new one must be added to DOCS, in an order where its inputs exist)."""
    assert sorted(DOCS[1:]) == sorted((ROOT / "docs").glob("*.md"))


def test_readme_has_only_bash_and_python_blocks():
    assert {language for _, language, _, _ in BLOCKS} <= {"bash", "python"}, "add a runner for the new block kind"


def test_tables_match_the_readme():
    """The tables name only commands, snippets and inputs that README.md or a guide still has."""
    commands = {command for _, language, _, body in BLOCKS if language == "bash" for command in shell_commands(body)}
    assert not set(NOT_RUN) - commands, f"NOT_RUN lists commands the docs no longer have: {set(NOT_RUN) - commands}"
    assert not set(REDUCED) - commands, f"REDUCED lists commands the docs no longer have: {set(REDUCED) - commands}"
    python = "\n".join(body for _, language, _, body in BLOCKS if language == "python")
    assert all(old in python for old in PYTHON_SUBSTITUTIONS), "a Python substitution no longer matches the docs"
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCS)
    assert all(path.split("/")[-1] in text for path in STAND_INS)


def test_readme_is_short():
    assert len(README.read_bytes()) <= 16_000, "README.md is for users: move details into a guide in docs/"


# Programs the README runs by their bare name: console scripts of the virtual environment `make` creates.
VENV_PROGRAMS = ("hf-scratch-gpt", "python", "torchrun", "accelerate", "transformers")
SYSTEM_PROGRAMS = ("curl",)  # not the venv's: a command the docs show but do not run (NOT_RUN)


def test_readme_says_how_to_activate_the_venv_before_any_bare_command():
    """`hf-scratch-gpt`, `python`, `torchrun` work as written only in the activated .venv (issue 26): the README says
    how, before the first block that needs it, and every bash command is `make`, a venv path or a venv program."""
    readme = README.read_text(encoding="utf-8")
    venv = re.search(r"^VENV \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M).group(1)
    activate = f"`. {venv}/bin/activate`"
    assert activate in readme, f"the README never says {activate}"
    activate_line = readme.count("\n", 0, readme.index(activate)) + 1
    programs = [(name, line, shlex.split(command)[0]) for name, language, line, body in BLOCKS if language == "bash"
                for command in shell_commands(body)]  # fmt: skip
    bare = [line for name, line, program in programs if name == "README.md" and program in VENV_PROGRAMS]
    assert bare and activate_line < min(bare), (activate_line, bare)
    for name, line, program in programs:
        venv_program = program == "make" or program.startswith(f"{venv}/bin/") or program in VENV_PROGRAMS
        assert venv_program or program in SYSTEM_PROGRAMS, (name, line, program)
    for path in DOCS[1:]:  # a guide relies on README's activation, and says so before its first command
        text = path.read_text(encoding="utf-8")
        if "```" in text:
            assert "activated `.venv`" in text[: text.index("```")], doc_name(path)
    interpreter_bin = Path(sys.executable).parent  # the venv the tests run in has each program the README names
    assert all((interpreter_bin / program).exists() for program in VENV_PROGRAMS), interpreter_bin


def test_make_demo_is_the_demo_command():
    """REDUCED replaces `make demo` by `hf-scratch-gpt demo ...`: that is what the Makefile runs."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^demo:.*\n\t(.*)$", makefile, flags=re.M).group(1)
    assert recipe == "$(VENV)/bin/hf-scratch-gpt demo $(ARGS)"


# ---------------------------------------------------------------------------------------------------- running them
def environment(workspace: Path) -> dict[str, str]:
    return {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_MODULES_CACHE": str(workspace / ".modules"), "OMP_NUM_THREADS": "1",
        "PET_MASTER_PORT": free_port(),  # torchrun's --master-port, so parallel test runs do not collide
        **launch_temp(workspace.parent / f"{workspace.name}-temp"),
    }  # fmt: skip


def run_subprocess(argv: list[str], workspace: Path) -> str:
    completed = subprocess.run(argv, cwd=workspace, env=environment(workspace), stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=600)  # fmt: skip
    output = f"{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    assert completed.returncode == 0, f"{shlex.join(argv)} failed:\n{output}"
    return completed.stdout


OUTPUTS: dict[str, str] = {}  # README command → what the CLI printed (read by the tests after the block tests)
BEFORE_COMMANDS: dict[str, str] = {}  # the stand-in root's files outside runs/, before the README's commands ran
BLOCKS_DONE: set[tuple[str, int]] = set()  # (file, line) of the blocks test_readme_block_runs ran (or skipped)
NOT_THE_COMMANDS = {"runs", "__pycache__", ".modules"}  # runs/ may change; the others are Python's and this test's


def files_outside_runs(root: Path) -> dict[str, str]:
    """Relative path → sha256 of each file under `root` (a link: its target, not followed), outside runs/."""
    import hashlib

    found = {}
    for folder, names, files in os.walk(root):
        names[:] = [name for name in names if name not in NOT_THE_COMMANDS and not (Path(folder) / name).is_symlink()]
        links = [name for name in os.listdir(folder) if (Path(folder) / name).is_symlink()]
        for name in sorted(set(files) | set(links)):
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            link = path.is_symlink()
            found[relative] = f"-> {os.readlink(path)}" if link else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_command(command: str, workspace: Path, monkeypatch, capsys=None) -> None:
    """One README shell command, as its program runs it (the CLI in this process: the same `main` the console
    script calls, minus the interpreter start)."""
    command = REDUCED.get(key(command), command)
    argv = shlex.split(command)
    program, args = argv[0], argv[1:]
    if program == "hf-scratch-gpt":
        from hf_scratch_gpt.cli import main

        monkeypatch.chdir(workspace)
        assert main(args) == 0, command
        if capsys is not None:
            OUTPUTS[key(command)] = capsys.readouterr().out
    elif program in ("python", ".venv/bin/python"):
        run_subprocess([sys.executable, *args], workspace)
    elif program == "torchrun":
        run_subprocess([sys.executable, "-m", "torch.distributed.run", *args], workspace)
    else:
        pytest.fail(f"docs command {command!r}: no runner for {program!r}; run it, or list it in NOT_RUN/REDUCED")


def run_python(body: str, workspace: Path) -> str:
    for old, new in PYTHON_SUBSTITUTIONS.items():
        body = body.replace(old, new)
    return run_subprocess([sys.executable, "-c", body], workspace)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The in-process commands use one thread, as the subprocesses do (OMP_NUM_THREADS=1): on a shared 2-core
    machine a second thread mostly spins, and the tiny models here gain nothing from it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, one_thread):
    """The repository root as a user has it after `make demo`, plus the STAND_INS."""
    root = tmp_path_factory.mktemp("repository")
    for name in LINKED:
        (root / name).symlink_to(ROOT / name)
    for name in COPIED:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    random_gpt2(**GPT2_SHAPES[sorted(GPT2_SHAPES)[0]]).save_pretrained(root / "path" / "to" / "gpt2-folder")
    try:
        sys.path.insert(0, str(ROOT / "tests" / "openai"))
        from openai_checkpoints import write_openai_checkpoint  # imports TensorFlow (the `convert` extra)

        write_openai_checkpoint(root / "runs" / "gpt2-124M-tf", seed=0)
    except ImportError:
        pass  # the conversion blocks are skipped below
    finally:
        sys.path.remove(str(ROOT / "tests" / "openai"))
    write_text_and_nanogpt_stand_ins(root)
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_command("make demo", root, monkeypatch)
    from hf_scratch_gpt.hub import plan_upload, write_model_card

    staging = root / ".hub-staging"
    shutil.copytree(root / "runs" / "demo", staging)
    write_model_card(staging, "trained_from_scratch", repo_id="you/my-gpt", license="apache-2.0")
    (root / "hub" / "you" / "my-gpt").mkdir(parents=True)
    for name in plan_upload(staging)[0]:
        shutil.copy(staging / name, root / "hub" / "you" / "my-gpt" / name)
    shutil.rmtree(staging)
    BEFORE_COMMANDS.update(files_outside_runs(root))
    return root


def write_text_and_nanogpt_stand_ins(root: Path) -> None:
    """my_text.txt (paragraphs, as a user's .txt has them) and nanoGPT's files, written as nanoGPT writes them."""
    from pydoc_data.topics import topics

    (root / "my_text.txt").write_text("\n\n".join(topics[name] for name in sorted(topics)[:40]), encoding="utf-8")
    sys.path.insert(0, str(ROOT / "tests" / "convert"))
    try:
        from peer_models import NanoConfig, NanoGPT, randomize, save_nanogpt_checkpoint, write_meta_pkl
    finally:
        sys.path.remove(str(ROOT / "tests" / "convert"))
    shape = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    write_meta_pkl(root / "path" / "to" / "meta.pkl")
    char_model = randomize(NanoGPT(NanoConfig(vocab_size=65, **shape)), seed=0)
    save_nanogpt_checkpoint(char_model, root / "path" / "to" / "out-shakespeare-char" / "ckpt.pt")
    bpe_model = randomize(NanoGPT(NanoConfig(vocab_size=384, bias=True)), seed=1)  # as tests/convert's nano_bpe
    save_nanogpt_checkpoint(bpe_model, root / "path" / "to" / "out" / "ckpt.pt")


def block_id(block) -> str:
    name, language, line, body = block
    first = next((text for text in body.splitlines() if text.strip() and not text.startswith("#")), "")
    return f"{name}@{line}:{language}:{first[:40]}"


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(block) for block in BLOCKS])
def test_readme_block_runs(block, workspace, monkeypatch, capsys):
    name, language, line, body = block
    if "gpt2-124M" in body and not (workspace / "runs" / "gpt2-124M-tf").is_dir():
        BLOCKS_DONE.add((name, line))
        pytest.skip("the conversion needs TensorFlow (the `convert` extra)")
    if language == "python":
        run_python(body, workspace)
    else:
        for command in shell_commands(body):
            if key(command) not in NOT_RUN and key(command) not in RUN_BY_THE_WORKSPACE:
                run_command(command, workspace, monkeypatch, capsys)
    BLOCKS_DONE.add((name, line))


def test_readme_commands_write_only_under_runs(workspace):
    """After every block ran: nothing was added or changed outside runs/ (issue 26: `save_pretrained("my-model")`,
    `benchmarks/gpu_check.json` and a converted checkpoint landed in the repository, next to tracked files)."""
    if len(BLOCKS_DONE) < len(BLOCKS):
        pytest.skip("checks what the block tests wrote: select it together with test_readme_block_runs")
    after = files_outside_runs(workspace)
    added = sorted(set(after) - set(BEFORE_COMMANDS))
    changed = sorted(path for path in BEFORE_COMMANDS if after.get(path) != BEFORE_COMMANDS[path])
    assert not added and not changed, f"README commands wrote outside runs/: added {added}, changed/removed {changed}"


def test_the_demo_writes_what_the_readme_names(workspace):
    demo = workspace / "runs" / "demo"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss.png", "metrics.json", "validation.jsonl"):
        assert (demo / name).is_file(), name
    assert not (demo / "model").exists()  # the README used to point there


def test_evaluate_reproduces_the_demos_per_document_perplexity(workspace, monkeypatch, capsys):
    """README: `hf-scratch-gpt evaluate runs/demo --dataset runs/demo/validation.jsonl` gives the demo's first
    (per-document) validation perplexity."""
    command = "hf-scratch-gpt evaluate runs/demo --dataset runs/demo/validation.jsonl"
    if command not in OUTPUTS:  # this test was selected without the README's evaluate block
        capsys.readouterr()
        run_command(command, workspace, monkeypatch, capsys)
    printed = json.loads(OUTPUTS[command])
    demo = json.loads((workspace / "runs" / "demo" / "metrics.json").read_text())["demo"]
    per_document = demo["validation_per_document"]
    assert (printed["tokens"], printed["bytes"]) == (per_document["tokens"], per_document["bytes"])
    assert printed["perplexity"] == pytest.approx(per_document["perplexity"], rel=1e-9)


def test_metrics_json_has_one_name_per_quantity(workspace):
    metrics = json.loads((workspace / "runs" / "demo" / "metrics.json").read_text())
    assert not {"eval_nll", "tokens_seen"} & set(metrics) and not {"validation", "tokens_seen"} & set(metrics["demo"])
    assert metrics["eval_perplexity"] == pytest.approx(2.718281828459045 ** metrics["eval_loss"], rel=1e-12)
    assert metrics["demo"]["validation_blocks"]["perplexity"] == metrics["eval_perplexity"]
    assert metrics["eval_protocol"] == "128-token blocks across document boundaries"
    assert metrics["num_input_tokens_seen"] == metrics["demo"]["num_input_tokens_seen"] == 4 * 4 * 128
