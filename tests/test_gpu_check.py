"""benchmarks/gpu_check.py: its CPU subset runs (tiny shapes), its checks pass, and it says what it skipped."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    code = gpu_check.main(["--cpu", "--out", str(out)])
    return code, json.loads(out.read_text())


def test_cpu_subset_runs_every_check_and_passes(report):
    code, result = report
    assert code == 0, result["table"]
    by_check = {row["check"]: row for row in result["checks"]}
    for name in ("parity float32, sdpa", "parity bf16, sdpa", "parity float32, eager", "parity bf16, eager",
                 "torch.compile (aot_eager) vs eager, tiny", "Accelerate loop, 3 steps (no), cpu"):  # fmt: skip
        assert by_check[name]["status"] == "pass", by_check[name]
    assert by_check["parity float32, sdpa"]["numbers"]["grads"] <= 1e-5
    assert any(row["check"].startswith("training bf16 autocast, tiny") for row in result["checks"])
    assert any(row["check"].startswith("decoding float32, tiny") for row in result["checks"])
    memory = next(row for row in result["checks"] if row["check"].startswith("fused-loss training-step peak memory"))
    assert memory["status"] == "skipped"  # ran, but there are no allocator statistics on CPU


def test_cpu_subset_says_what_it_skipped(report):
    _, result = report
    skipped = "\n".join(result["skipped"])
    for part in ("flash_attention_2", "peak-memory", "355M", "inductor", "50 steps"):
        assert part in skipped
    assert "Skipped:" in result["table"] and result["plan"]["device"] == "cpu"


def test_a_failing_check_fails_the_run(monkeypatch, tmp_path):
    """The exit status carries a failure (so a GPU run that breaks parity is not reported as fine)."""
    failing = gpu_check.row("parity float32, sdpa", "fail", "logits 1e-2")
    monkeypatch.setattr(gpu_check, "run_checks", lambda plan, workdir: ([failing], []))
    assert gpu_check.main(["--cpu", "--out", str(tmp_path / "out.json")]) == 1
