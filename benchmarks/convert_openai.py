"""Scale benchmark of the OpenAI checkpoint converter on synthetic checkpoints of the real shapes.

    python benchmarks/convert_openai.py --size 124M [--size 1558M] [--dtype float32] [--workdir /tmp/convbench]

For each size: writes a synthetic TF checkpoint (random weights, OpenAI's shapes and file names, a synthetic
50257-token BPE), times copying its data file on the same disk, then runs the converter in a fresh subprocess
and reports wall time and peak resident memory above that process's baseline (after importing torch,
transformers and the package, before TensorFlow), first without and then with verification, and finally loads
the output with `AutoModelForCausalLM.from_pretrained` and generates a few tokens.

`measure_conversion(ckpt_dir, out_dir, **kwargs)` is the function other benchmarks can call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Runs in a fresh interpreter so peak RSS belongs to the conversion alone. VmHWM is the kernel's high-water mark.
_CHILD = r"""
import json, sys, time
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import hf_scratch_gpt
from hf_scratch_gpt.openai.convert import convert_openai_checkpoint
baseline = rss("VmRSS:")
start = time.perf_counter()
report = convert_openai_checkpoint(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "baseline_rss": baseline, "peak_rss": rss("VmHWM:"),
                  "peak_above_baseline": rss("VmHWM:") - baseline, "report": report.to_dict()}))
"""


def measure_conversion(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, **convert_kwargs) -> dict:
    """Convert in a fresh subprocess; returns seconds, baseline/peak RSS in bytes, and the ConversionReport."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ckpt_dir), str(out_dir), json.dumps(convert_kwargs)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"conversion failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_synthetic_bpe(folder: Path, n_vocab: int) -> None:
    """256 byte tokens + (n_vocab - 257) two-symbol merges + <|endoftext|>: GPT-2's vocabulary size and format."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "openai"))
    from openai_bpe_reference import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = [(a, b) for a in symbols for b in symbols][: n_vocab - 257]
    encoder = {s: i for i, s in enumerate(symbols)}
    encoder.update({a + b: 256 + i for i, (a, b) in enumerate(merges)})
    encoder["<|endoftext|>"] = len(encoder)
    (folder / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                      encoding="utf-8")


def write_synthetic_checkpoint(folder: Path, size: str, seed: int = 0) -> dict:
    """OpenAI's file layout with random weights of the real shapes. The bundle is written by one SaveV2 call (a
    single data file, as OpenAI's), so the writer holds the whole model once; only the converter is measured."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from hf_scratch_gpt.configuration_scratch_gpt import PRESETS
    from hf_scratch_gpt.openai.names import dimensions, expected_variables, tf_shape_for

    preset = PRESETS[size]
    hparams = {"n_vocab": preset["vocab_size"], "n_ctx": preset["n_positions"], "n_embd": preset["n_embd"],
               "n_head": preset["n_head"], "n_layer": preset["n_layer"]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2))
    write_synthetic_bpe(folder, hparams["n_vocab"])
    tf.random.set_seed(seed)
    dims = dimensions(hparams)
    names, tensors = [], []
    for name, rule in expected_variables(hparams["n_layer"]).items():
        shape = tf_shape_for(rule, dims)
        is_gain = name.endswith("/g")
        tensors.append(tf.random.normal(shape, mean=1.0 if is_gain else 0.0, stddev=0.02))
        names.append(name)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    return hparams


def time_copy(path: Path) -> float:
    target = path.with_name(path.name + ".copy")
    start = time.perf_counter()
    with open(path, "rb") as source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink, 16 << 20)
        sink.flush()
        os.fsync(sink.fileno())
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


GIB = 1 << 30


def benchmark_conversion(size: str, workdir: str | os.PathLike = "/tmp/convert_openai_bench") -> dict:
    """Write a synthetic `size` checkpoint, time copying its data file, convert it (no verification) in a fresh
    process; returns the numbers `benchmarks/compare_gpt2.py` reports. Cleans up after itself."""
    work = Path(workdir) / size
    shutil.rmtree(work, ignore_errors=True)
    try:
        write_synthetic_checkpoint(work / "ckpt", size)
        copy_seconds = time_copy(work / "ckpt" / "model.ckpt.data-00000-of-00001")
        result = measure_conversion(work / "ckpt", work / "out", verify=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"size": size, "convert_s": result["seconds"], "copy_s": copy_seconds,
            "peak_rss_bytes": result["peak_above_baseline"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", choices=("124M", "355M", "774M", "1558M"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--workdir", default="/tmp/convert_openai_bench")
    parser.add_argument("--skip-verify-run", action="store_true", help="only the --no-verify conversion")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    args = parser.parse_args()
    for size in args.size or ["124M"]:
        work = Path(args.workdir) / size
        shutil.rmtree(work, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic_checkpoint(work / "ckpt", size)
        data = work / "ckpt" / "model.ckpt.data-00000-of-00001"
        print(f"[{size}] wrote synthetic checkpoint ({data.stat().st_size / GIB:.2f} GiB) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        copy_seconds = time_copy(data)
        print(f"[{size}] copy of the data file: {copy_seconds:.1f} s", flush=True)
        runs = [("no-verify", {"verify": False})] + ([] if args.skip_verify_run else [("verify", {"verify": True})])
        for label, kwargs in runs:
            out = work / f"out-{label}"
            result = measure_conversion(work / "ckpt", out, dtype=args.dtype, **kwargs)
            report = result["report"]
            print(f"[{size}] convert {args.dtype} {label}: {result['seconds']:.1f} s "
                  f"({result['seconds'] / copy_seconds:.2f}x copy), peak RSS {result['peak_rss'] / GIB:.2f} GiB = "
                  f"baseline {result['baseline_rss'] / GIB:.2f} + {result['peak_above_baseline'] / GIB:.2f} GiB, "
                  f"files {report['weight_files']}"
                  + (f", max |Δlogits| {report['max_abs_diff']:.3g}" if report["verified"] else ""), flush=True)
        generated = subprocess.run(
            [sys.executable, "-c", (
                "import sys, hf_scratch_gpt; from transformers import AutoModelForCausalLM, AutoTokenizer;"
                "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]);"
                "ids = m.generate(**t('Hello, world', return_tensors='pt'), max_new_tokens=8, do_sample=False);"
                "print(repr(t.decode(ids[0])))"), str(out)],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if generated.returncode != 0:
            raise RuntimeError(f"loading and generating from {out} failed:\n{generated.stderr[-4000:]}")
        print(f"[{size}] from_pretrained + generate: {generated.stdout.strip()}", flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
