"""GPU check: what has to hold, and what it costs, on a CUDA machine — in one command.

    python benchmarks/gpu_check.py                      # CUDA: the full check (a few minutes on one H100)
    python benchmarks/gpu_check.py --out my_gpu.json    # where the JSON goes (default runs/benchmarks/gpu_check.json)

On CUDA it runs, with identical weights in ScratchGPTForCausalLM and transformers' GPT2LMHeadModel:
- parity: logits, loss and parameter gradients in float32 (relative error <= 1e-5, left-padded batch included),
  and logits/loss in bf16 (no further from the float32 result than GPT-2's own bf16 run, within 2x), with
  sdpa and, where the flash_attn package is installed, flash_attention_2 (bf16 only: the kernel has no float32);
- the fused training loss: peak memory of one training step at B8 x T1024 (124M), GPT-2 vs our explicit loss
  path (loss_chunk_size=0) vs our fused path (default);
- training tokens/s and MFU in bf16 autocast, side by side with GPT-2, at 124M and 355M (B8 x T1024, fused AdamW);
  MFU against the measured bf16 matmul peak and, for GPUs in SPEC_BF16_PEAK, against the data-sheet peak;
- decoding tokens/s (batch 1, 128 new tokens, KV cache, greedy) in float32 and bf16, with the bandwidth floor;
- torch.compile (inductor): loss and gradients equal eager's, and training tokens/s compiled vs eager;
- 50 optimizer steps of the Accelerate loop (hf_scratch_gpt/training/loop.py) in bf16 on the GPU.

Without CUDA it runs the CPU subset of the same code at tiny shapes (parity in float32/bf16 with sdpa, the training,
decoding and memory code paths, torch.compile with the aot_eager backend, 3 loop steps) and lists every part it
skipped and why; tests/test_gpu_check.py runs that subset. Speed numbers from the CPU subset mean nothing.
Prints a markdown table, writes JSON, exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_gpt2 import (  # noqa: E402  (the shared benchmark helpers live next to this file)
    build_pair,
    flops_per_token,
    generation_throughput,
    make_optimizer,
    matmul_peak,
    read_bandwidth,
    synchronize,
    training_step,
    training_throughput,
    weight_bytes_per_token,
)

from hf_scratch_gpt.gpt2_weights import TRANSPOSED_SUFFIXES  # noqa: E402

# Dense bf16 tensor-core peak from the vendors' data sheets (FLOP/s), matched against torch.cuda.get_device_name().
SPEC_BF16_PEAK = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
                  "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """Sizes of every check: the full CUDA plan and its tiny CPU subset (same code, other numbers)."""

    device: str
    parity_preset: str
    parity_batch: int
    parity_seq: int
    memory_preset: str
    memory_batch: int
    memory_seq: int
    train_presets: tuple[str, ...]
    train_batch: int
    train_seq: int
    train_steps: int
    decode_preset: str
    decode_new_tokens: int
    decode_prompt: int
    decode_repeats: int
    decode_dtypes: tuple[str, ...]
    compile_backend: str
    compile_speed: bool
    loop_steps: int
    loop_overrides: str
    loop_batch: int
    loop_mixed_precision: str


CUDA_PLAN = Plan(
    device="cuda", parity_preset="124M", parity_batch=4, parity_seq=256,
    memory_preset="124M", memory_batch=8, memory_seq=1024,
    train_presets=("124M", "355M"), train_batch=8, train_seq=1024, train_steps=10,
    decode_preset="124M", decode_new_tokens=128, decode_prompt=16, decode_repeats=3,
    decode_dtypes=("float32", "bfloat16"),
    compile_backend="inductor", compile_speed=True,
    loop_steps=50, loop_overrides="n_positions=256,n_embd=256,n_layer=4,n_head=4", loop_batch=16,
    loop_mixed_precision="bf16",
)  # fmt: skip
CPU_PLAN = Plan(
    device="cpu", parity_preset="tiny", parity_batch=2, parity_seq=16,
    memory_preset="tiny", memory_batch=2, memory_seq=32,
    train_presets=("tiny",), train_batch=2, train_seq=32, train_steps=1,
    decode_preset="tiny", decode_new_tokens=4, decode_prompt=4, decode_repeats=1, decode_dtypes=("float32",),
    compile_backend="aot_eager", compile_speed=False,
    loop_steps=3, loop_overrides="n_positions=32,n_embd=32,n_layer=2,n_head=2", loop_batch=8,
    loop_mixed_precision="no",
)  # fmt: skip
CPU_SKIPS = [
    "flash_attention_2 parity (needs CUDA and the flash_attn package)",
    "peak-memory numbers (CUDA allocator statistics; the CPU numbers are in benchmarks/compare_gpt2.py)",
    "124M/355M training tokens/s and MFU, decoding tokens/s at 124M (the CPU subset runs the code at tiny shapes)",
    "torch.compile with inductor and its speed (the CPU subset compiles with aot_eager)",
    "50 steps of the Accelerate loop on the GPU (the CPU subset runs 3)",
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_NOISE = 2**-8 / 10  # relative errors below this are rounding noise in bf16 (unit roundoff 2^-8)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(|expected|, 1) — the measure the parity tests hold to 1e-5 in float32."""
    expected = expected.detach().double()
    return ((actual.detach().double() - expected).abs().max() / expected.abs().max().clamp(min=1.0)).item()


def row(check: str, status: str, result: str, **numbers) -> dict:
    return {"check": check, "status": status, "result": result, "numbers": numbers}


# ---------------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------------
def parity_inputs(plan: Plan, vocab_size: int) -> dict[str, torch.Tensor]:
    """Random ids; labels with some -100; a left-padded attention mask for the padded forward."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (plan.parity_batch, plan.parity_seq), generator=generator)
    labels = input_ids.clone()
    labels[0, : plan.parity_seq // 4] = -100
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, : plan.parity_seq // 3] = 0  # the last row left-padded
    return {name: t.to(plan.device) for name, t in
            (("input_ids", input_ids), ("labels", labels), ("attention_mask", attention_mask))}  # fmt: skip


def forward_outputs(model, inputs) -> dict[str, torch.Tensor]:
    """Eval logits (unpadded, and padded on the real tokens), and the training-mode loss and its gradients."""
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        model.eval()
        logits = model(inputs["input_ids"]).logits.float()
        padded = model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()[mask]
    model.train()  # dropout is off in build_pair's config; ours takes its fused loss path here
    model.zero_grad(set_to_none=True)
    loss = model(inputs["input_ids"], labels=inputs["labels"], use_cache=False).loss
    loss.backward()
    grads = {name: param.grad.float() for name, param in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"logits": logits, "padded_logits": padded, "loss": loss.detach().float(), "grads": grads}


def gradient_error(ours: dict, gpt2: dict) -> tuple[float, str]:
    """Largest relative gradient error over all parameters (GPT-2's Conv1D gradients transposed to Linear's)."""
    worst, worst_name = 0.0, ""
    for name, grad in ours.items():
        reference = gpt2[name].t() if name.endswith(TRANSPOSED_SUFFIXES) else gpt2[name]
        error = relative_error(grad, reference)
        if error > worst:
            worst, worst_name = error, name
    return worst, worst_name


def check_parity(plan: Plan, attn: str) -> list[dict]:
    gpt2, ours = build_pair(plan.parity_preset, plan.device)
    gpt2.set_attn_implementation(attn if attn != "flash_attention_2" else "sdpa")
    inputs = parity_inputs(plan, ours.config.vocab_size)
    reference = forward_outputs(gpt2, inputs)  # float32 GPT-2 (sdpa): the reference for every comparison
    rows = []
    if attn != "flash_attention_2":  # flash has no float32 kernel
        ours.set_attn_implementation(attn)
        got = forward_outputs(ours, inputs)
        errors = {key: relative_error(got[key], reference[key]) for key in ("logits", "padded_logits", "loss")}
        errors["grads"], worst = gradient_error(got["grads"], reference["grads"])
        ok = max(errors.values()) <= 1e-5
        rows.append(row(f"parity float32, {attn}", "pass" if ok else "fail",
                        ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) + f" (bound 1e-5; worst grad {worst})",
                        **errors))  # fmt: skip
    # bf16: both models cast to bf16, each measured against the float32 reference. Ours may not be worse than
    # GPT-2's own bf16 error by more than 2x, except below a tenth of bf16's unit roundoff (2^-8), where both are noise.
    gpt2_bf16, ours_bf16 = copy.deepcopy(gpt2).to(torch.bfloat16), copy.deepcopy(ours).to(torch.bfloat16)
    for model in (gpt2_bf16, ours_bf16):
        model.set_attn_implementation(attn)
    got, theirs = forward_outputs(ours_bf16, inputs), forward_outputs(gpt2_bf16, inputs)
    numbers, ok = {}, True
    for key in ("logits", "padded_logits", "loss"):
        numbers[f"ours_{key}"] = relative_error(got[key], reference[key])
        numbers[f"gpt2_{key}"] = relative_error(theirs[key], reference[key])
        ok &= numbers[f"ours_{key}"] <= max(2 * numbers[f"gpt2_{key}"], BF16_NOISE)
    rows.append(row(f"parity bf16, {attn}", "pass" if ok else "fail",
                    ", ".join(f"{k} ours {numbers['ours_' + k]:.1e} / GPT-2 {numbers['gpt2_' + k]:.1e}"
                              for k in ("logits", "padded_logits", "loss")) + " (vs float32; bound 2x GPT-2's)",
                    **numbers))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Fused-loss memory
# ---------------------------------------------------------------------------------------------------------------------
def peak_step_bytes(model, plan: Plan) -> int | None:
    """Peak memory one training step allocates above what is held before it (CUDA allocator; None on CPU)."""
    optimizer = make_optimizer(model.train())
    training_step(model, optimizer, torch.randint(0, model.config.vocab_size, (1, 16), device=plan.device), None)
    input_ids = torch.randint(0, model.config.vocab_size, (plan.memory_batch, plan.memory_seq), device=plan.device)
    if plan.device != "cuda":
        training_step(model, optimizer, input_ids, None)  # the same code path; no allocator statistics to read
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    training_step(model, optimizer, input_ids, None)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def check_fused_loss_memory(plan: Plan) -> list[dict]:
    numbers = {}
    for name in ("gpt2", "ours_explicit", "ours_fused"):
        gpt2, ours = build_pair(plan.memory_preset, plan.device)
        model = gpt2 if name == "gpt2" else ours
        del gpt2, ours
        if name == "ours_explicit":
            model.config.loss_chunk_size = 0
        numbers[name] = peak_step_bytes(model, plan)
        del model
        gc.collect()
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    shape = f"B{plan.memory_batch}×T{plan.memory_seq}, {plan.memory_preset}"
    if numbers["gpt2"] is None:
        return [row(f"fused-loss training-step peak memory ({shape})", "skipped",
                    "ran the three training steps; peak memory needs CUDA allocator statistics")]  # fmt: skip
    gib = {k: v / 2**30 for k, v in numbers.items()}
    return [row(f"fused-loss training-step peak memory ({shape})", "measured",
                f"GPT-2 {gib['gpt2']:.2f} GiB, ours explicit {gib['ours_explicit']:.2f} GiB, ours fused "
                f"{gib['ours_fused']:.2f} GiB ({numbers['ours_fused'] / numbers['gpt2']:.2f}× GPT-2)",
                **numbers)]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Training throughput and MFU, decoding
# ---------------------------------------------------------------------------------------------------------------------
def spec_peak() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in SPEC_BF16_PEAK.items() if key in name), None)


def check_training_throughput(plan: Plan) -> list[dict]:
    rows = []
    measured_peak = matmul_peak(plan.device, torch.bfloat16, size=4096 if plan.device == "cuda" else 512)
    sheet_peak = spec_peak()
    for preset in plan.train_presets:
        pair = build_pair(preset, plan.device)
        tokens = training_throughput(pair, plan.device, plan.train_batch, plan.train_seq, plan.train_steps,
                                     torch.bfloat16)  # fmt: skip
        per_token = flops_per_token(pair[1], plan.train_seq)
        numbers = {**tokens, "flops_per_token": per_token, "measured_bf16_peak": measured_peak}
        mfu = {name: tokens[name] * per_token for name in ("gpt2", "ours")}  # achieved FLOP/s
        text = (f"tokens/s GPT-2 {tokens['gpt2']:.0f}, ours {tokens['ours']:.0f} "
                f"({tokens['ours'] / tokens['gpt2']:.2f}×); MFU vs measured bf16 matmul peak "
                f"{measured_peak / 1e12:.1f} TFLOP/s: GPT-2 {mfu['gpt2'] / measured_peak:.1%}, "
                f"ours {mfu['ours'] / measured_peak:.1%}")  # fmt: skip
        if sheet_peak:
            numbers["sheet_bf16_peak"] = sheet_peak
            text += (f"; vs data-sheet {sheet_peak / 1e12:.0f} TFLOP/s: GPT-2 {mfu['gpt2'] / sheet_peak:.1%}, "
                     f"ours {mfu['ours'] / sheet_peak:.1%}")  # fmt: skip
        rows.append(row(f"training bf16 autocast, {preset}, B{plan.train_batch}×T{plan.train_seq}", "measured", text,
                        **numbers))  # fmt: skip
        del pair
        gc.collect()
    return rows


def check_decoding(plan: Plan) -> list[dict]:
    rows = []
    bandwidth = read_bandwidth(plan.device, n_bytes=1 << (30 if plan.device == "cuda" else 24))
    for dtype_name in plan.decode_dtypes:
        gpt2, ours = build_pair(plan.decode_preset, plan.device)
        pair = (gpt2.to(DTYPES[dtype_name]), ours.to(DTYPES[dtype_name]))
        result = generation_throughput(pair, plan.device, plan.decode_new_tokens, plan.decode_prompt,
                                       plan.decode_repeats)  # fmt: skip
        floor = bandwidth / weight_bytes_per_token(pair[1])
        rows.append(row(
            f"decoding {dtype_name}, {plan.decode_preset}, batch 1, {plan.decode_new_tokens} new tokens", "measured",
            f"tokens/s GPT-2 {result['gpt2']:.1f}, ours {result['ours']:.1f} "
            f"({result['ours'] / result['gpt2']:.2f}×); "
            f"bandwidth floor {floor:.0f} tokens/s at {bandwidth / 1e9:.0f} GB/s; greedy ids equal: "
            f"{result['greedy_ids_equal']}",
            **result, floor_tokens_per_s=floor, read_bandwidth=bandwidth,
        ))  # fmt: skip
        del pair, gpt2, ours
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------------
def check_compile(plan: Plan) -> list[dict]:
    _, eager = build_pair(plan.parity_preset, plan.device)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend=plan.compile_backend)
    inputs = parity_inputs(plan, eager.config.vocab_size)
    losses, grads = {}, {}
    for name, model, params_of in (("eager", eager, eager), ("compiled", compiled, compiled_module)):
        params_of.train()
        start = time.perf_counter()
        loss = model(inputs["input_ids"], labels=inputs["labels"], use_cache=False).loss
        loss.backward()
        synchronize(plan.device)
        losses[name], grads[name] = loss.detach(), {n: p.grad for n, p in params_of.named_parameters()}
        if name == "compiled":
            compile_seconds = time.perf_counter() - start
    loss_error = relative_error(losses["compiled"], losses["eager"])
    grad_error = max(relative_error(grads["compiled"][n], g) for n, g in grads["eager"].items())
    # The bounds of tests/test_compile.py: loss 1e-5, gradients 1e-4 (a compiled backward may reorder sums).
    ok = loss_error <= 1e-5 and grad_error <= 1e-4
    rows = [row(f"torch.compile ({plan.compile_backend}) vs eager, {plan.parity_preset}", "pass" if ok else "fail",
                f"loss {loss_error:.1e}, gradients {grad_error:.1e} (bounds 1e-5 / 1e-4); first compiled step "
                f"{compile_seconds:.1f} s", loss_error=loss_error, grad_error=grad_error,
                compile_seconds=compile_seconds)]  # fmt: skip
    if plan.compile_speed:
        del eager, compiled, compiled_module
        gc.collect()
        preset = plan.train_presets[0]
        _, eager = build_pair(preset, plan.device)
        compiled = torch.compile(copy.deepcopy(eager))
        tokens = training_throughput((eager, compiled), plan.device, plan.train_batch, plan.train_seq,
                                     plan.train_steps, torch.bfloat16)  # fmt: skip  ('gpt2' = eager, 'ours' = compiled)
        rows.append(row(f"torch.compile training bf16, {preset}, B{plan.train_batch}×T{plan.train_seq}", "measured",
                        f"tokens/s eager {tokens['gpt2']:.0f}, compiled {tokens['ours']:.0f} "
                        f"({tokens['ours'] / tokens['gpt2']:.2f}×)",
                        eager=tokens["gpt2"], compiled=tokens["ours"]))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The Accelerate loop
# ---------------------------------------------------------------------------------------------------------------------
def check_accelerate_loop(plan: Plan, workdir: Path) -> list[dict]:
    from pydoc_data.topics import topics

    from hf_scratch_gpt.training.loop import parse_loop_arguments, train_with_accelerate

    corpus = workdir / "corpus.txt"
    size = 30_000 if plan.device != "cuda" else 1_000_000
    corpus.write_text("\n\n".join(topics[name] for name in sorted(topics))[:size], encoding="utf-8")
    flags = {"output_dir": workdir / "loop", "dataset": corpus, "config_overrides": plan.loop_overrides,
             "tokenizer_vocab_size": 300 if plan.device != "cuda" else 4096, "validation_fraction": 0.1,
             "max_steps": plan.loop_steps, "global_batch_size": plan.loop_batch, "logging_steps": 1,
             "eval_steps": plan.loop_steps, "save_steps": plan.loop_steps, "learning_rate": 3e-3,
             "mixed_precision": plan.loop_mixed_precision, "disable_tqdm": "true",
             "use_cpu": "true" if plan.device == "cpu" else "false"}  # fmt: skip
    argv = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    start = time.perf_counter()
    result = train_with_accelerate(*parse_loop_arguments(argv))
    seconds = time.perf_counter() - start
    history = json.loads((workdir / "loop" / "metrics.json").read_text())["history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    ok = result["global_step"] == plan.loop_steps and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    return [row(f"Accelerate loop, {plan.loop_steps} steps ({plan.loop_mixed_precision}), {plan.device}",
                "pass" if ok else "fail",
                f"loss {losses[0]:.3f} → {losses[-1]:.3f}, eval perplexity {result['eval_perplexity']:.1f}, "
                f"{result['num_input_tokens_seen'] / seconds:.0f} tokens/s over {seconds:.1f} s (data and tokenizer included)",
                first_loss=losses[0], last_loss=losses[-1], eval_perplexity=result["eval_perplexity"],
                seconds=seconds)]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------
def run_checks(plan: Plan, workdir: Path) -> tuple[list[dict], list[str]]:
    skipped = [] if plan.device == "cuda" else list(CPU_SKIPS)
    attns = ["sdpa", "eager"]
    if plan.device == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            attns.append("flash_attention_2")
        else:
            skipped.append("flash_attention_2 parity (the flash_attn package is not installed)")
    rows = []
    for attn in attns:
        rows += check_parity(plan, attn)
    rows += check_fused_loss_memory(plan)
    rows += check_training_throughput(plan)
    rows += check_decoding(plan)
    rows += check_compile(plan)
    rows += check_accelerate_loop(plan, workdir)
    return rows, skipped


def environment(plan: Plan) -> dict:
    import accelerate
    import transformers

    device = torch.cuda.get_device_name() if plan.device == "cuda" else f"{platform.machine()} CPU"
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "flash_attn": importlib.util.find_spec("flash_attn") is not None,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}  # fmt: skip


def markdown(rows: list[dict], skipped: list[str], env: dict) -> str:
    lines = [f"GPU check — {env['device']}, torch {env['torch']} (CUDA {env['cuda']}), transformers "
             f"{env['transformers']}, accelerate {env['accelerate']}, {env['date']}", "",
             "| check | status | result |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {r['check']} | {r['status']} | {r['result']} |" for r in rows]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {item}" for item in skipped]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE.parent / "runs" / "benchmarks" / "gpu_check.json"),
                        help="where the JSON goes (default: runs/benchmarks/gpu_check.json, not a tracked file)")
    parser.add_argument("--cpu", action="store_true", help="run the CPU subset even when CUDA is available")
    args = parser.parse_args(argv)
    plan = CPU_PLAN if args.cpu or not torch.cuda.is_available() else CUDA_PLAN
    if plan.device == "cuda":
        torch.set_float32_matmul_precision("highest")  # no TF32: the float32 parity bound is 1e-5
    if plan.device == "cpu":
        print("No CUDA device: running the CPU subset at tiny shapes (speed numbers mean nothing here).",
              file=sys.stderr)  # fmt: skip
    env = environment(plan)
    with tempfile.TemporaryDirectory() as workdir:
        rows, skipped = run_checks(plan, Path(workdir))
    table = markdown(rows, skipped, env)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": env, "plan": asdict(plan), "checks": rows,
                                          "skipped": skipped, "table": table}, indent=2, default=str))  # fmt: skip
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
