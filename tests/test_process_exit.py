"""Multi-process runs end cleanly: every process exits 0, the main process reports once, and no gloo thread is left.

A 2-process FSDP run used to abort now and then after a complete run: rank 1 died at interpreter exit with
"terminate called without an active exception" (SIGABRT), failing the launch (1 launch in ~50 here). The process
group was destroyed, but DTensor's module-level caches kept the DeviceMeshes and so the gloo process groups alive,
their threads (`gloo_tcp_loop`, `pt_gloo_runloop`) running into interpreter teardown. Whether the abort happens
depends on timing; whether the threads are left does not, so that is what is checked here.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SMALL, free_port, launch_temp

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip

# Runs an example as `python examples/X.py ...` would, then reports the process's gloo threads (Linux /proc).
WRAPPER = textwrap.dedent("""
    import glob, json, os, runpy, sys
    example = sys.argv.pop(1)
    sys.argv[0] = example
    runpy.run_path(example, run_name="__main__")
    names = [open(path).read().strip() for path in glob.glob("/proc/self/task/*/comm")]
    print("THREADS " + json.dumps({"rank": os.environ.get("RANK"), "gloo": sorted(n for n in names if "gloo" in n)}))
""")

COMMON = ["--config_overrides", SMALL, "--tokenizer_vocab_size", "300", "--validation_fraction", "0.1",
          "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
CASES = {
    "loop-fsdp": ("examples/accelerate_loop.py", ["--fsdp", "true", "--global_batch_size", "8", "--eval_steps", "2",
                                                  "--save_steps", "2"]),
    "trainer-ddp": ("examples/train_from_scratch.py", ["--use_cpu", "true", "--per_device_train_batch_size", "4",
                                                       "--eval_steps", "2", "--save_steps", "2"]),
}  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux /proc")
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_exit_cleanly_and_leave_no_gloo_thread(case, tmp_path, corpus_file):
    example, flags = CASES[case]
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
         str(tmp_path / "wrapper.py"), example, "--output_dir", str(tmp_path / "run"), "--dataset", str(corpus_file),
         *COMMON, *flags],
        cwd=ROOT, env={**ENV, **launch_temp(tmp_path / "temp")}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    reports = [json.loads(line[len("THREADS "):]) for line in completed.stdout.splitlines() if line.startswith("THREADS ")]
    assert sorted(report["rank"] for report in reports) == ["0", "1"], completed.stdout[-2000:]
    assert all(report["gloo"] == [] for report in reports), reports
    assert completed.stdout.count('"model_dir"') == 1  # the main process reports, once
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2
