"""Side-by-side benchmark: ScratchGPTForCausalLM against transformers' GPT2LMHeadModel (sdpa), same weights.

    python benchmarks/compare_gpt2.py                       # 124M shape, CPU, everything
    python benchmarks/compare_gpt2.py --device cuda --preset 355M --train-batch 16 --train-seq 1024

Measures, in one run and one process per measurement kind:
- training throughput (tokens/s, forward + backward + AdamW step) in float32 and in bf16 autocast, and the
  achieved FLOP/s as a fraction of the machine's matmul peak in the same dtype (measured here);
- peak memory of one training step (each model in its own child process, so peaks do not mix);
- greedy generation tokens/s (batch 1, with the KV cache; dynamic and static cache) and its fraction of the
  memory-bandwidth floor measured in the same run;
- bf16 decoding (both models cast) and int8 weight-only decoding of ours (transformers' TorchAoConfig; GPT-2's
  Conv1D has no nn.Linear to quantize), with the held-out perplexity change against float32;
- greedy tokens/s for 8 left-padded prompts and the time to first token of a 512-token prompt;
- the OpenAI-checkpoint converter's time and peak memory (benchmarks/convert_openai.py), unless skipped.
Prints a markdown table and writes the numbers as JSON (default runs/benchmarks/results.json; the README's
figures are kept in benchmarks/results.json and benchmarks/results_inference.json). Both models get the same config
(dropout off) and the same optimizer (AdamW, fused where the device supports it), so the ratios compare the models only.
"""

import argparse
import copy
import gc
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig
from hf_scratch_gpt.cpu import auto_dtype, describe_cpu

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------------------------
# Building the pair
# ---------------------------------------------------------------------------------------------------------------------
def build_pair(preset: str, device: str, seed: int = 0) -> tuple[GPT2LMHeadModel, torch.nn.Module]:
    """GPT2LMHeadModel (sdpa) with seeded random weights, and ScratchGPT holding the very same weights."""
    shape = {k: v for k, v in ScratchGPTConfig.from_preset(preset).to_dict().items()
             if k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "bos_token_id", "eos_token_id")}
    torch.manual_seed(seed)
    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    gpt2 = GPT2LMHeadModel(config)
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    ours.set_attn_implementation("sdpa")
    return gpt2.to(device), ours.to(device)


def count_flop_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but the position embedding (a lookup). The tied token
    embedding counts once, as the output head."""
    return model.num_parameters() - model.config.n_positions * model.config.n_embd


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6·N for the weights plus 12·n_layer·n_embd·T for attention scores and values
    (forward + backward, full T×T as in the PaLM/nanoGPT convention)."""
    config = model.config
    return 6 * count_flop_params(model) + 12 * config.n_layer * config.n_embd * seq_len


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------------
# Machine ceilings
# ---------------------------------------------------------------------------------------------------------------------
def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best achieved FLOP/s of a square matmul in `dtype` (what the training step's matmuls can reach)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def read_bandwidth(device: str, n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best bytes/s of streaming a large float32 tensor once (a reduction reads every byte, writes nothing)."""
    x = torch.ones(n_bytes // 4, device=device)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        x.sum()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return n_bytes / best


# ---------------------------------------------------------------------------------------------------------------------
# Training throughput
# ---------------------------------------------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def training_step(model, optimizer, input_ids, autocast_dtype: torch.dtype | None) -> None:
    with torch.autocast(input_ids.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss = model(input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def training_throughput(pair, device, batch, seq_len, steps, autocast_dtype) -> dict[str, float]:
    """Tokens/s of each model, steps interleaved (A B A B …) so drift in machine load hits both alike."""
    models = dict(zip(("gpt2", "ours"), pair))
    optimizers = {name: make_optimizer(model.train()) for name, model in models.items()}
    input_ids = torch.randint(0, pair[0].config.vocab_size, (batch, seq_len), device=device)
    for name, model in models.items():  # warm-up: allocates optimizer state, picks kernels
        training_step(model, optimizers[name], input_ids, autocast_dtype)
    times = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            synchronize(device)
            start = time.perf_counter()
            training_step(model, optimizers[name], input_ids, autocast_dtype)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    del optimizers
    gc.collect()
    return {name: batch * seq_len / statistics.median(t) for name, t in times.items()}


def profile_training_step(pair, device, batch, seq_len, rows: int = 15) -> str:
    """Where one float32 training step's time goes, per model: torch.profiler's ops by self time, grouped by input
    shape (so the head's (50257, 768) products, fills and adds stand apart from the blocks'). For comparing the two
    models on a CPU kind where their ratio differs from the tables' (e.g. an AVX2-only CPU)."""
    from torch.profiler import ProfilerActivity, profile

    input_ids = torch.randint(0, pair[0].config.vocab_size, (batch, seq_len), device=device)
    parts = []
    for name, model in zip(("GPT2LMHeadModel", "ScratchGPT"), pair):
        optimizer = make_optimizer(model.train())
        for _ in range(2):  # optimizer state allocated, kernels chosen
            training_step(model, optimizer, input_ids, None)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            training_step(model, optimizer, input_ids, None)
        table = profiler.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32, max_shapes_column_width=60
        )
        parts.append(f"{name}, one training step {batch}×{seq_len}:\n{table}")
        del optimizer
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Peak memory of one training step (child process per model)
# ---------------------------------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_step_memory_child(which: str, preset: str, device: str, batch: int, seq_len: int) -> dict:
    """Run in a fresh process: peak memory of one training step above the memory held just before it."""
    gpt2, ours = build_pair(preset, device)
    model = gpt2 if which == "gpt2" else ours
    del gpt2, ours
    gc.collect()
    optimizer = make_optimizer(model.train())
    # A small step first, so optimizer state exists before the measured step (it is the same for both models).
    training_step(model, optimizer, torch.randint(0, model.config.vocab_size, (1, 16), device=device), None)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=device)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        training_step(model, optimizer, input_ids, None)
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - before}
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to the current RSS
    training_step(model, optimizer, input_ids, None)
    return {"peak_bytes": (_rss_kib("VmHWM") - before) * 1024}


def peak_step_memory(preset, device, batch, seq_len) -> dict[str, float]:
    result = {}
    for which in ("gpt2", "ours"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", which, "--preset", preset, "--device", device,
             "--mem-batch", str(batch), "--mem-seq", str(seq_len)],
            capture_output=True, text=True, check=True,
        )
        result[which] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Greedy generation
# ---------------------------------------------------------------------------------------------------------------------
def generation_throughput(pair, device, new_tokens, prompt_len, repeats) -> dict[str, float]:
    """Batch-1 greedy tokens/s with the KV cache: GPT-2 and ours with the default dynamic cache, and ours with
    transformers' static cache (preallocated, no concatenation per step; not compiled)."""
    gpt2, ours = pair
    prompt = torch.randint(0, gpt2.config.vocab_size, (1, prompt_len), device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    static = dict(kwargs, cache_implementation="static", disable_compile=True)
    runs = {
        "gpt2": lambda: gpt2.eval().generate(prompt, **kwargs),
        "ours": lambda: ours.eval().generate(prompt, **kwargs),
        "ours_static": lambda: ours.generate(prompt, **static),
    }
    # min_new_tokens = max_new_tokens: every run decodes exactly `new_tokens` steps. On identical weights the ids
    # are equal too (tests/test_inference_speed.py holds that on small models); recorded here.
    reference = gpt2.generate(prompt, **kwargs)
    greedy_ids_equal = all(torch.equal(run(), reference) for name, run in runs.items() if name != "gpt2")
    best = interleaved_best(device, runs, repeats)
    return {**{name: new_tokens / seconds for name, seconds in best.items()}, "greedy_ids_equal": greedy_ids_equal}


def timed(device: str, fn) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_best(device: str, runs: dict, repeats: int) -> dict[str, float]:
    """Best seconds of each named zero-argument callable, run in rounds (A B C A B C …) so that changes in machine
    load hit all of them alike. Each is run once first (warm-up)."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(device, fn))
    return {name: min(t) for name, t in times.items()}


def held_out_perplexity(model, input_ids: torch.Tensor) -> float:
    """exp(mean next-token NLL) of `model` on `input_ids` (B, T), float32 loss whatever the weights' dtype."""
    with torch.no_grad():
        return math.exp(model(input_ids, labels=input_ids, use_cache=False).loss.item())


def quantize_int8(ours: torch.nn.Module):
    """ScratchGPT through transformers' TorchAoConfig int8 weight-only (saved and reloaded, as a user would);
    returns (model, None) or (None, reason)."""
    try:
        from hf_scratch_gpt.loading import int8_weight_only_config, load_model

        config = int8_weight_only_config()
        with tempfile.TemporaryDirectory() as folder:
            ours.save_pretrained(folder)
            return load_model(folder, quantization_config=config), None
    except Exception as error:  # report why, in the table, instead of stopping the benchmark
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


def dtype_and_quant_decoding(pair, device, new_tokens, prompt_len, repeats, eval_ids) -> dict:
    """bf16 decoding of both models and int8 weight-only decoding of ours, each side by side with GPT-2 in fp32,
    with the held-out perplexity of each against the fp32 model's (same eval tokens)."""
    gpt2, ours = pair
    prompt = torch.randint(0, gpt2.config.vocab_size, (1, prompt_len), device=device,
                           generator=torch.Generator(device).manual_seed(1))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    gpt2_bf16, ours_bf16 = copy.deepcopy(gpt2).to(torch.bfloat16), copy.deepcopy(ours).to(torch.bfloat16)
    ours_int8, int8_reason = quantize_int8(ours) if device == "cpu" else (None, "benchmarked on CPU only")
    runs = {
        "gpt2": lambda: gpt2.generate(prompt, **kwargs),
        "gpt2_bf16": lambda: gpt2_bf16.generate(prompt, **kwargs),
        "ours_bf16": lambda: ours_bf16.generate(prompt, **kwargs),
    }
    if ours_int8 is not None:
        runs["ours_int8"] = lambda: ours_int8.generate(prompt, **kwargs)
    best = interleaved_best(device, runs, repeats)
    result = {name: new_tokens / seconds for name, seconds in best.items()}
    reference = ours.generate(prompt, **kwargs)
    perplexity = {"fp32": held_out_perplexity(ours, eval_ids), "bf16": held_out_perplexity(ours_bf16, eval_ids)}
    result["bf16_ids_equal_fp32"] = torch.equal(ours_bf16.generate(prompt, **kwargs), reference)
    if ours_int8 is not None:
        perplexity["int8"] = held_out_perplexity(ours_int8, eval_ids)
        result["int8_ids_equal_fp32"] = torch.equal(ours_int8.generate(prompt, **kwargs), reference)
    result["perplexity"] = perplexity
    result["int8_reason"] = int8_reason
    if device == "cpu":
        result["auto_dtype_for_bf16"] = str(auto_dtype(torch.bfloat16)).removeprefix("torch.")
    return result


def batched_and_prefill(pair, device, new_tokens, prefill_len, repeats, batch: int = 8) -> dict:
    """Tokens/s generating for `batch` left-padded prompts of 4–16 tokens, and the time to the first token of a
    `prefill_len`-token prompt (one forward over the prompt plus the first greedy step), both models."""
    vocab = pair[0].config.vocab_size
    generator = torch.Generator().manual_seed(2)
    lengths = torch.randint(4, 17, (batch,), generator=generator).tolist()
    width = max(lengths)
    input_ids = torch.zeros((batch, width), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, length in enumerate(lengths):  # left padding, as generate() expects for decoder-only models
        input_ids[row, width - length:] = torch.randint(1, vocab, (length,), generator=generator)
        attention_mask[row, width - length:] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    long_prompt = torch.randint(0, vocab, (1, prefill_len), generator=generator).to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    first = dict(max_new_tokens=1, do_sample=False, pad_token_id=0)
    runs = {}
    for name, model in zip(("gpt2", "ours"), pair):
        runs[f"batch_{name}"] = lambda m=model: m.generate(input_ids, attention_mask=attention_mask, **kwargs)
        runs[f"prefill_{name}"] = lambda m=model: m.generate(long_prompt, **first)
    best = interleaved_best(device, runs, repeats)
    outputs = [m.generate(input_ids, attention_mask=attention_mask, **kwargs) for m in pair]
    return {
        "batch": batch, "prompt_lengths": lengths, "prefill_len": prefill_len,
        "batch_tokens_per_s": {n: batch * new_tokens / best[f"batch_{n}"] for n in ("gpt2", "ours")},
        "ttft_s": {n: best[f"prefill_{n}"] for n in ("gpt2", "ours")},
        "batch_ids_equal": torch.equal(*outputs),
    }


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoding step must read: every parameter except the position table (one row)."""
    element = next(model.parameters()).element_size()
    return (count_flop_params(model) + model.config.n_embd) * element


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------
def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def markdown_table(r: dict) -> str:
    """The table, headed by the machine (on CPU: model, cores and the flags that decide float32/bf16 speed) and
    the versions: a figure is only comparable with figures from the same kind of CPU."""
    head = f"{r['machine']}; torch {r['torch']}, transformers {r.get('transformers', '?')}, {r['threads']} threads"
    rows = [head, "", "| measurement | GPT2LMHeadModel | ScratchGPT | ratio |", "|---|---:|---:|---:|"]
    for dtype in ("float32", "bf16"):
        key = f"train_{dtype}"
        if key in r:
            t = r[key]
            rows.append(
                f"| training tokens/s, {dtype}{' autocast' if dtype == 'bf16' else ''} "
                f"({r['train_shape']}) | {t['gpt2']:.0f} | {t['ours']:.0f} | {t['ours'] / t['gpt2']:.2f}× |"
            )
            rows.append(
                f"| — fraction of {dtype} matmul peak ({r['matmul_peak_' + dtype] / 1e9:.0f} GFLOP/s) "
                f"| {t['mfu_gpt2']:.1%} | {t['mfu_ours']:.1%} | |"
            )
    if "memory" in r:
        m = r["memory"]
        rows.append(
            f"| peak training-step memory ({r['memory_shape']}) | {fmt_bytes(m['gpt2'])} | {fmt_bytes(m['ours'])} "
            f"| {m['ours'] / m['gpt2']:.2f}× |"
        )
    if "generation" in r:
        g = r["generation"]
        rows.append(
            f"| greedy generation tokens/s (batch 1, {r['generation_new_tokens']} new, cache) | {g['gpt2']:.1f} "
            f"| {g['ours']:.1f} | {g['ours'] / g['gpt2']:.2f}× |"
        )
        rows.append(
            f"| — ScratchGPT with `cache_implementation=\"static\"` | | {g['ours_static']:.1f} "
            f"| {g['ours_static'] / g['gpt2']:.2f}× |"
        )
        rows.append(
            f"| — fraction of the bandwidth floor ({g['floor_tokens_per_s']:.1f} tokens/s at "
            f"{r['read_bandwidth'] / 1e9:.1f} GB/s) | {g['gpt2'] / g['floor_tokens_per_s']:.1%} "
            f"| {g['ours'] / g['floor_tokens_per_s']:.1%} | |"
        )
    if "low_precision" in r:
        q, gpt2_fp32 = r["low_precision"], r["low_precision"]["gpt2"]
        ppl = q["perplexity"]
        rows.append(
            f"| greedy tokens/s, bf16 weights (batch 1) | {q['gpt2_bf16']:.1f} | {q['ours_bf16']:.1f} "
            f"| {q['ours_bf16'] / q['gpt2_bf16']:.2f}× ({q['ours_bf16'] / gpt2_fp32:.2f}× GPT-2 fp32) |"
        )
        rows.append(f"| — held-out perplexity, bf16 vs fp32 ({r['preset']} shape, random weights) | | "
                    f"{ppl['bf16']:.2f} vs {ppl['fp32']:.2f} | {ppl['bf16'] / ppl['fp32'] - 1:+.3%} |")
        if "auto_dtype_for_bf16" in q:
            rows.append(f"| — `--dtype auto` loads a bf16 checkpoint as (this CPU) | | {q['auto_dtype_for_bf16']} | |")
        if "ours_int8" in q:
            rows.append(
                f"| greedy tokens/s, int8 weight-only (TorchAoConfig, batch 1) | n/a (Conv1D, no nn.Linear) "
                f"| {q['ours_int8']:.1f} | {q['ours_int8'] / gpt2_fp32:.2f}× GPT-2 fp32 |"
            )
            rows.append(f"| — held-out perplexity, int8 vs fp32 | | {ppl['int8']:.2f} vs {ppl['fp32']:.2f} "
                        f"| {ppl['int8'] / ppl['fp32'] - 1:+.3%} |")
        else:
            rows.append(f"| int8 weight-only (TorchAoConfig) | | not run: {q['int8_reason']} | |")
    if "batched" in r:
        b = r["batched"]
        t, f = b["batch_tokens_per_s"], b["ttft_s"]
        rows.append(f"| greedy tokens/s, batch {b['batch']} left-padded ({r['generation_new_tokens']} new each) "
                    f"| {t['gpt2']:.1f} | {t['ours']:.1f} | {t['ours'] / t['gpt2']:.2f}× |")
        rows.append(f"| time to first token, {b['prefill_len']}-token prompt | {f['gpt2'] * 1e3:.0f} ms "
                    f"| {f['ours'] * 1e3:.0f} ms | {f['gpt2'] / f['ours']:.2f}× faster |")
    if "converter" in r:
        c = r["converter"]
        rows.append(
            f"| converter {c['size']}: time / peak RSS above baseline | | {c['convert_s']:.1f} s / "
            f"{fmt_bytes(c['peak_rss_bytes'])} | {c['convert_s'] / c['copy_s']:.2f}× copy time |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-seq", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=3, help="measured steps per model (median)")
    parser.add_argument("--mem-batch", type=int, default=8)
    parser.add_argument("--mem-seq", type=int, default=1024)
    parser.add_argument("--gen-new-tokens", type=int, default=128)
    parser.add_argument("--gen-prompt", type=int, default=16)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=512, help="prompt length for the time-to-first-token row")
    parser.add_argument("--convert-size", default="124M", help="OpenAI size for the converter benchmark")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "bf16", "memory", "generation", "lowprec", "batch", "convert"])
    # Under runs/ (ignored by git): a run never overwrites the tracked benchmarks/results*.json the README quotes.
    parser.add_argument("--out", default=str(HERE.parent / "runs" / "benchmarks" / "results.json"),
                        help="where the JSON goes (default: runs/benchmarks/results.json)")
    parser.add_argument("--profile-train", action="store_true",
                        help="print where one float32 training step's time goes in each model (torch.profiler, by "
                        "input shape) at --train-batch × --train-seq, then stop")
    parser.add_argument("--memory-child", choices=["gpt2", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        print(json.dumps(peak_step_memory_child(args.memory_child, args.preset, args.device, args.mem_batch, args.mem_seq)))
        return 0

    r: dict = {
        "machine": describe_cpu() if args.device == "cpu" else torch.cuda.get_device_name(),
        "device": args.device, "preset": args.preset, "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }
    pair = build_pair(args.preset, args.device)
    if args.profile_train:
        print(r["machine"])
        print(profile_training_step(pair, args.device, args.train_batch, args.train_seq))
        return 0
    # Generation first, while the two models still hold identical weights (training steps then move them apart
    # by rounding).
    if "generation" not in args.skip:
        r["read_bandwidth"] = read_bandwidth(args.device)
        g = generation_throughput(pair, args.device, args.gen_new_tokens, args.gen_prompt, args.gen_repeats)
        g["floor_tokens_per_s"] = r["read_bandwidth"] / weight_bytes_per_token(pair[1])
        r["generation"], r["generation_new_tokens"] = g, args.gen_new_tokens
        print(f"generation: {g}", file=sys.stderr)
    if "lowprec" not in args.skip:
        eval_len = min(256, pair[0].config.n_positions)
        eval_ids = torch.randint(0, pair[0].config.vocab_size, (2, eval_len), generator=torch.Generator().manual_seed(3))
        r["low_precision"] = dtype_and_quant_decoding(
            pair, args.device, args.gen_new_tokens, args.gen_prompt, args.gen_repeats, eval_ids.to(args.device)
        )
        print(f"low precision: {r['low_precision']}", file=sys.stderr)
    if "batch" not in args.skip:
        r["batched"] = batched_and_prefill(pair, args.device, args.gen_new_tokens, args.prefill, args.gen_repeats)
        print(f"batched: {r['batched']}", file=sys.stderr)
    if "train" not in args.skip:
        r["train_shape"] = f"{args.train_batch}×{args.train_seq}"
        per_token = flops_per_token(pair[1], args.train_seq)
        for label, dtype in (("float32", None), ("bf16", torch.bfloat16)):
            if label == "bf16" and "bf16" in args.skip:
                continue
            r[f"matmul_peak_{label}"] = matmul_peak(args.device, dtype or torch.float32)
            t = training_throughput(pair, args.device, args.train_batch, args.train_seq, args.train_steps, dtype)
            t.update({f"mfu_{k}": v * per_token / r[f"matmul_peak_{label}"] for k, v in list(t.items())})
            r[f"train_{label}"] = t
            print(f"train {label}: {t}", file=sys.stderr)
    del pair
    gc.collect()
    if "memory" not in args.skip:
        r["memory_shape"] = f"{args.mem_batch}×{args.mem_seq}, vocab 50257"
        r["memory"] = peak_step_memory(args.preset, args.device, args.mem_batch, args.mem_seq)
        print(f"memory: {r['memory']}", file=sys.stderr)
    if "convert" not in args.skip:
        sys.path.insert(0, str(HERE))
        from convert_openai import benchmark_conversion

        r["converter"] = benchmark_conversion(args.convert_size)
    table = markdown_table(r)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**r, "table": table}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
