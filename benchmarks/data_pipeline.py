"""Data pipeline at corpus scale: wall time, MB/s and peak memory of load → split → tokenize → pack, next to the
raw throughput of the tokenizer's own `encode_batch` on the same text and cores (the ceiling).

    python benchmarks/data_pipeline.py                      # 100 MB and 1 GB (slow: hours on 2 busy cores)
    python benchmarks/data_pipeline.py --sizes-mb 100 300   # other sizes
    python benchmarks/data_pipeline.py --sizes-mb 1000 --train-steps 20   # also `hf-scratch-gpt train` 20 steps

Corpora are generated locally (no download): the Python standard library's own source files, concatenated and
repeated up to the size, written as 8 `.txt` files in a folder; their paragraphs (blocks between blank lines) are
the documents, as `load_documents` reads any `.txt`. The tokenizer is the demo's: a 4096-token byte-level BPE,
trained once on the first 4 MB. Each measurement runs in a fresh process with an empty `datasets` cache (then once
more on the filled cache: the cache-hit figure). Peak RSS is the process's high-water mark (`ru_maxrss`, which also
counts the memory-mapped Arrow pages it touched; the kernel can drop those at any time) and the largest sampled sum
of proportional anonymous memory (`Pss_Anon`) of the process and its worker processes: the memory the pipeline
itself holds, with pages that forked workers share with their parent counted once.
Writes `runs/benchmarks/data_pipeline.json` (the README's run is kept in `benchmarks/data_pipeline.json`) and prints
a Markdown table. Everything it writes under --workdir is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

BLOCK_SIZE = 1024
FILES = 8
HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, resource, sys, threading, time
import psutil

def anon_bytes(process):
    # proportional share of anonymous memory: pages a forked worker shares with its parent count once in the sum
    try:
        with open(f"/proc/{process.pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

peak_anon = 0
stop = threading.Event()
def sample():
    global peak_anon
    me = psutil.Process()
    while not stop.is_set():
        total = anon_bytes(me) + sum(anon_bytes(child) for child in me.children(recursive=True))
        peak_anon = max(peak_anon, total)
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()

mode, corpus, tokenizer_dir = sys.argv[1], sys.argv[2], sys.argv[3]
import datasets
datasets.disable_progress_bars()
from transformers import AutoTokenizer
from hf_scratch_gpt.data import build_lm_datasets, load_documents, split_train_validation
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
start = time.perf_counter()  # after the imports: the figures are the data path's own
if mode == "pipeline":
    workers = None if sys.argv[5] == "default" else int(sys.argv[5])
    documents = split_train_validation(load_documents(corpus, num_proc=workers), 0.05, seed=0)
    blocks = build_lm_datasets(documents, tokenizer, int(sys.argv[4]), num_proc=workers)
    result = {"blocks": {split: len(blocks[split]) for split in blocks}}
else:  # the ceiling: the Rust tokenizer's batch encoder on the same paragraphs, all cores (Rayon)
    backend = tokenizer.backend_tokenizer
    encode_seconds, tokens, batch, carry = 0.0, 0, [], ""
    def flush(batch):
        global encode_seconds, tokens
        t = time.perf_counter()
        encodings = backend.encode_batch_fast(batch, add_special_tokens=False)
        encode_seconds += time.perf_counter() - t
        tokens += sum(len(e.ids) for e in encodings)
    for name in sorted(os.listdir(corpus)):
        with open(os.path.join(corpus, name), encoding="utf-8") as handle:
            while chunk := handle.read(10 << 20):
                parts = (carry + chunk).split("\n\n")
                carry = parts.pop()
                batch.extend(p for p in parts if p.strip())
                if len(batch) >= 20000:
                    flush(batch); batch = []
        if carry.strip():
            batch.append(carry)
        carry = ""
    if batch:
        flush(batch)
    result = {"encode_seconds": encode_seconds, "tokens": tokens}
result["seconds"] = time.perf_counter() - start
stop.set()
result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result["peak_rss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
result["peak_anon"] = peak_anon
print("RESULT " + json.dumps(result))
"""


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(path for path in root.rglob("*.py") if "site-packages" not in path.parts)


def generate_corpus(folder: Path, size_bytes: int) -> int:
    """`FILES` .txt files totalling about `size_bytes` of UTF-8 text (standard-library sources, repeated)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [path.read_bytes() for path in stdlib_sources()]
    per_file, written = size_bytes // FILES, 0
    index = 0
    for number in range(FILES):
        with open(folder / f"part-{number:02d}.txt", "wb") as handle:
            size = 0
            while size < per_file:
                data = sources[index % len(sources)]
                index += 1
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                handle.write(data + b"\n\n")
                size += len(data) + 2
            written += size
    return written


def train_tokenizer(corpus: Path, out: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    from hf_scratch_gpt.data import split_paragraphs, train_bpe_tokenizer

    text = (corpus / "part-00.txt").read_text(encoding="utf-8")[: 4 << 20]
    train_bpe_tokenizer([split_paragraphs(text)], vocab_size=4096).save_pretrained(out)


def run_child(mode: str, corpus: Path, tokenizer_dir: Path, cache: Path, workers: str) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(HERE.parent), "TOKENIZERS_PARALLELISM": "true"}  # fmt: skip
    wall = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(corpus), str(tokenizer_dir), str(BLOCK_SIZE), workers],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :]), "process_seconds": time.perf_counter() - wall}


def train_steps(corpus: Path, tokenizer_dir: Path, cache: Path, out: Path, steps: int) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(HERE.parent)}  # fmt: skip
    command = [
        sys.executable, "-m", "hf_scratch_gpt.cli", "train", "--output_dir", str(out), "--dataset", str(corpus),
        "--tokenizer_name_or_path", str(tokenizer_dir), "--preset", "tiny",
        "--config_overrides", "n_embd=128,n_layer=4,n_head=4,n_positions=1024", "--max_steps", str(steps),
        "--per_device_train_batch_size", "4", "--logging_steps", "5", "--eval_strategy", "no",
        "--save_strategy", "no", "--max_eval_samples", "16", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train failed:\n{done.stderr[-4000:]}")
    peak_kb = next(int(l.split()[-1]) for l in done.stderr.splitlines() if "Maximum resident set size" in l)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_kb * 1024, "steps": metrics["global_step"],
            "train_loss": metrics["train_loss"], "eval_loss": metrics["eval_loss"]}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", default="default", help="--preprocessing_num_workers ('default': the cores)")
    parser.add_argument("--train-steps", type=int, default=0, help="also train N steps on the largest corpus")
    parser.add_argument("--workdir", default="/tmp/hf_scratch_gpt_data_bench")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--output", default=str(HERE.parent / "runs" / "benchmarks" / "data_pipeline.json"),
                        help="where the JSON goes (default: runs/benchmarks/data_pipeline.json, not a tracked file)")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    rows = []
    try:
        for size_mb in args.sizes_mb:
            corpus = work / f"corpus-{size_mb}mb"
            size = generate_corpus(corpus, size_mb * 10**6)
            tokenizer_dir = work / "tokenizer"
            if not tokenizer_dir.is_dir():
                train_tokenizer(corpus, tokenizer_dir)
            cache = work / f"cache-{size_mb}mb"
            shutil.rmtree(cache, ignore_errors=True)
            ceiling = run_child("encode", corpus, tokenizer_dir, cache, args.workers)
            cold = run_child("pipeline", corpus, tokenizer_dir, cache, args.workers)
            warm = run_child("pipeline", corpus, tokenizer_dir, cache, args.workers)
            row = {
                "size_bytes": size,
                "pipeline_seconds": cold["seconds"],
                "pipeline_mb_per_s": size / 1e6 / cold["seconds"],
                "encode_batch_seconds": ceiling["encode_seconds"],
                "encode_batch_mb_per_s": size / 1e6 / ceiling["encode_seconds"],
                "tokens": ceiling["tokens"],
                "peak_rss": max(cold["peak_rss"], cold["peak_rss_children"]),
                "peak_anon": cold["peak_anon"],
                "cache_hit_seconds": warm["seconds"],
                "cache_hit_process_seconds": warm["process_seconds"],
                "blocks": cold["blocks"],
            }
            row["fraction_of_encode_batch"] = row["pipeline_mb_per_s"] / row["encode_batch_mb_per_s"]
            if args.train_steps and size_mb == max(args.sizes_mb):
                row["train"] = train_steps(corpus, tokenizer_dir, cache, work / "train-run", args.train_steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(corpus, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    import datasets
    import tokenizers
    import torch
    import transformers

    record = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "versions": {"datasets": datasets.__version__, "tokenizers": tokenizers.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},  # fmt: skip
        "block_size": BLOCK_SIZE,
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print("| text | pipeline | MB/s | encode_batch MB/s | share | peak RSS | peak anon. | cache hit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['size_bytes'] / 1e6:.0f} MB | {row['pipeline_seconds']:.1f} s | {row['pipeline_mb_per_s']:.2f} | "
              f"{row['encode_batch_mb_per_s']:.2f} | {row['fraction_of_encode_batch']:.0%} | "
              f"{row['peak_rss'] / 2**30:.2f} GiB | {row['peak_anon'] / 2**30:.2f} GiB | "
              f"{row['cache_hit_seconds']:.1f} s |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
