"""Issue 27: inputs that ended in a traceback (or in an error naming neither file nor value) now end in one line
`hf-scratch-gpt: error: ...` naming the file or value; the mapping lives in `main` (expected error classes), and
the library raises those classes with the names in the message."""

import json
import os
import shutil
import sys

import pytest
from saved_models import save_tiny_model_folder
from test_cli import assert_one_line_error, run_cli

import hf_scratch_gpt_cli as cli  # the command line's code
from hf_scratch_gpt.openai.checkpoint import REQUIRED_FILES


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-errors") / "model"
    save_tiny_model_folder(folder)
    return folder


@pytest.fixture
def model_folder(saved_folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved_folder, target)
    return target


def _edit_config(folder, text_of):
    config_file = folder / "config.json"
    config_file.write_text(text_of(config_file.read_text()))


def _nested(text, depth=10**5):
    """A config.json with one more key whose value is an array nested `depth` deep."""
    return text.rstrip().rstrip("}") + f', "x": {"[" * depth}{"]" * depth}}}'


BROKEN_FOLDERS = {
    "config.json nested 100,000 deep": (
        lambda folder: _edit_config(folder, _nested),
        "config.json nests JSON arrays/objects more than",
    ),
    "config.json dtype evil": (
        lambda folder: _edit_config(folder, lambda text: json.dumps({**json.loads(text), "dtype": "evil"})),
        "config.json: dtype 'evil' is not a floating-point torch dtype",
    ),
    "tokenizer.json {}": (
        lambda folder: (folder / "tokenizer.json").write_text("{}"),
        "tokenizer.json is not a valid tokenizer.json",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_generate_on_a_broken_folder_is_one_line(model_folder, capsys, case):
    breakage, fragment = BROKEN_FOLDERS[case]
    breakage(model_folder)
    code, out, err = run_cli(["generate", model_folder, "--prompt", "Hi", "--max-new-tokens", "2"], capsys)
    assert_one_line_error(code, err, fragment)
    assert out == ""


def test_prompt_that_is_not_utf8_is_one_line(saved_folder, capsys):
    prompt = os.fsdecode(b"caf\xe9")  # how Python hands a Latin-1 argument to sys.argv (surrogateescape)
    code, _, err = run_cli(["generate", saved_folder, "--prompt", prompt, "--max-new-tokens", "2"], capsys)
    assert_one_line_error(code, err, "the prompt holds the byte(s) e9 (not UTF-8) at character 3")


@pytest.mark.parametrize("command", ["card", "push", "generate"])
def test_a_file_where_a_model_folder_is_expected_is_one_line(saved_folder, capsys, command):
    file = saved_folder / "config.json"
    argv = {
        "card": ["card", file, "--repo-id", "me/x", "--license", "mit"],
        "push": ["push", file, "me/x", "--dry-run"],
        "generate": ["generate", file, "--prompt", "Hi"],
    }[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"{file} is a file, expected a")
    assert "does not exist" not in err


def _openai_folder(tmp_path, hparams_text):
    """An OpenAI-layout folder whose hparams.json is `hparams_text` (the other files need only exist: hparams.json
    is read first)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in REQUIRED_FILES:
        (folder / name).write_text("{}")
    (folder / "hparams.json").write_text(hparams_text)
    return folder


@pytest.mark.parametrize(
    "hparams_text, fragment",
    [('"a string"', "hparams.json must hold a JSON object with ['n_vocab'"), ("[1]", "got list")],
)
def test_hparams_json_that_is_no_object_is_one_line(tmp_path, capsys, hparams_text, fragment):
    code, _, err = run_cli(["convert-openai", _openai_folder(tmp_path, hparams_text), tmp_path / "out"], capsys)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("size", ["abc", "0", "1.5GB", "5XB", "", "-5GB"])
def test_max_shard_size_errors_name_the_flag_and_value(tmp_path, capsys, size):
    code, _, err = run_cli(["convert-openai", tmp_path / "ckpt", tmp_path / "out", f"--max-shard-size={size}"], capsys)
    assert_one_line_error(code, err, f"max_shard_size (--max-shard-size) {size!r} is not a size")


def test_a_digit_string_shard_size_is_bytes():
    from hf_scratch_gpt.openai.convert import parse_shard_size

    assert (parse_shard_size("1000"), parse_shard_size(1000), parse_shard_size("2KiB")) == (1000, 1000, 2048)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bounds the address space with RLIMIT_AS (Linux)")
def test_a_config_that_cannot_be_allocated_is_one_line_naming_the_size(tmp_path, capsys):
    """Within the parameter cap (4.1e11 < 1e12), but wte alone is 1.6 TB. The address space is bounded for the
    test, so the allocation fails at once on any machine (with memory overcommit it could otherwise succeed and be
    written to)."""
    import resource

    overrides = "vocab_size=100000000,n_embd=4096,n_head=16,n_layer=1"
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + 8 * 2**30, hard))
    try:
        code, _, err = run_cli(["train", "--preset", "tiny", "--config_overrides", overrides, "--output_dir",
                                tmp_path / "out", "--max_steps", "1"], capsys)  # fmt: skip
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert_one_line_error(code, err, "not enough memory: tried to allocate 1,638,400,000,000 bytes (1,525.9 GiB)")


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug inside torch, not an allocation")

    monkeypatch.setattr(cli, "_smoke", broken)
    with pytest.raises(RuntimeError, match="a bug inside torch"):
        cli.main(["smoke"])


def test_memory_error_is_one_line(monkeypatch, capsys):
    def out_of_memory(args):
        raise MemoryError

    monkeypatch.setattr(cli, "_smoke", out_of_memory)
    code, _, err = run_cli(["smoke"], capsys)
    assert_one_line_error(code, err, "not enough memory (MemoryError); choose a smaller model, batch or dtype")
