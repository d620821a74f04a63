"""`transformers serve` (transformers' OpenAI-compatible server, the `serve` extra) answering with a model made here.

transformers 5.23-5.25 load a served model as `getattr(transformers, config.architectures[0])`
(transformers/cli/serving/model_manager.py, `ModelManager._load_model`): a class that is not in the `transformers`
namespace is refused, with `--trust-remote-code` or without, and importing `hf_scratch_gpt` does not help either (its
Auto-class registration puts nothing in that namespace). So a ScratchGPT folder is served through its plain GPT-2
export (`hf-scratch-gpt export --to gpt2`, a `GPT2LMHeadModel` folder with the tokenizer and chat template), and
the reply is held to ScratchGPT's own greedy `generate` on the source folder. `test_scratch_gpt_folder_is_refused`
keeps docs/generation.md's "export first" true: when transformers serves custom code, it fails and says so.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

for _module in ("fastapi", "uvicorn", "openai"):  # transformers' is_serve_available (pydantic comes with fastapi)
    pytest.importorskip(_module, reason="the `serve` extra: pip install -e '.[serve]'")

from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_scratch_gpt.chat_template import ensure_chat_template
from hf_scratch_gpt.export import export_gpt2
from helpers import free_port
from saved_models import save_tiny_model_folder

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hello there"}]
MAX_NEW_TOKENS = 6
START_TIMEOUT_S = 120


def serve_argv(folder: Path, port: str, *flags: str) -> list[str]:
    """`transformers serve FOLDER ...`: the console script's `main`, run by this interpreter."""
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder),
            "--host", "127.0.0.1", "--port", port, "--device", "cpu", *flags]  # fmt: skip


def serve_environment() -> dict[str, str]:
    # HF_HUB_DISABLE_UPDATE_CHECK: the CLI otherwise asks PyPI for a newer transformers once a day.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def chat_folders(tmp_path_factory) -> tuple[Path, Path]:
    """(ScratchGPT folder whose tokenizer has the package's chat template, its `export --to gpt2` folder)."""
    root = tmp_path_factory.mktemp("serve")
    source = root / "scratch"
    _, tokenizer = save_tiny_model_folder(source)
    assert ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(source)
    export_gpt2(source, root / "gpt2")
    return source, root / "gpt2"


def greedy_reply(folder: Path) -> tuple[str, int, int]:
    """(reply text without special tokens, prompt length, new tokens) of ScratchGPT's greedy generate on MESSAGES."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    new_ids = output[0, prompt_length:]
    return tokenizer.decode(new_ids, skip_special_tokens=True), prompt_length, len(new_ids)


def wait_until_healthy(server: subprocess.Popen, port: str, stderr_file: Path) -> None:
    """Poll GET /health (it answers once the preloaded model is in memory); fail with the server's stderr."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"transformers serve exited with {server.returncode}:\n{stderr_file.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve did not answer in {START_TIMEOUT_S} s:\n{stderr_file.read_text()[-4000:]}")


def post_json(port: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_serve_chat_completion_is_our_greedy_reply(chat_folders, tmp_path):
    source, gpt2_folder = chat_folders
    expected_text, prompt_length, new_tokens = greedy_reply(source)
    assert expected_text, "the tiny model's greedy reply is empty: nothing to compare"
    port, stderr_file = free_port(), tmp_path / "serve.stderr"
    with open(stderr_file, "w") as stderr:
        server = subprocess.Popen(serve_argv(gpt2_folder, port), env=serve_environment(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    try:
        wait_until_healthy(server, port, stderr_file)
        reply = post_json(port, "/v1/chat/completions", {
            "model": str(gpt2_folder), "messages": MESSAGES, "max_tokens": MAX_NEW_TOKENS, "temperature": 0,
        })  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    served = (reply["choices"][0]["message"]["content"], reply["usage"]["prompt_tokens"],
              reply["usage"]["completion_tokens"])  # fmt: skip
    assert served == (expected_text, prompt_length, new_tokens), (
        f"served (text, prompt tokens, new tokens) {served!r} != ScratchGPT's greedy generate "
        f"{(expected_text, prompt_length, new_tokens)!r}"
    )


def test_scratch_gpt_folder_is_refused(chat_folders, tmp_path):
    """What docs/generation.md says: serve loads `getattr(transformers, "ScratchGPTForCausalLM")`, which is not there."""
    source, _ = chat_folders
    try:
        completed = subprocess.run(serve_argv(source, free_port(), "--trust-remote-code"), env=serve_environment(),
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:  # it started serving (the preloaded model is loaded before the server starts)
        pytest.fail("transformers serve now serves a ScratchGPT folder: serve it directly (docs/generation.md)")
    refusal = "has no attribute ScratchGPTForCausalLM"
    assert completed.returncode != 0 and refusal in completed.stderr, (
        "transformers serve no longer refuses a ScratchGPT folder: serve it directly (docs/generation.md, "
        f"tests/test_serve.py); exit {completed.returncode}, stderr:\n{completed.stderr[-3000:]}"
    )
