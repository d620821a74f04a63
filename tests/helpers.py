"""Comparison helpers shared by the tests."""

import copy
import socket
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

# A training-test model: two layers, 32 wide, no dropout (so runs are deterministic and comparable).
SMALL = "n_positions=32,n_embd=32,n_layer=2,n_head=2,resid_pdrop=0.0,embd_pdrop=0.0,attn_pdrop=0.0"


def launch_temp(path: Path) -> dict[str, str]:
    """{"TMPDIR": path}, created, for the environment of a process a test launches: torchrun and `accelerate launch`
    leave an empty torchelastic_* directory in the temporary directory at every launch, and a test run should leave
    nothing in the user's /tmp (pytest keeps only its last few tmp_path trees)."""
    path.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(path)}


def free_port() -> str:
    """A TCP port nothing listens on now, for the rendezvous of a torchrun / `accelerate launch` a test starts: a fixed
    port fails with EADDRINUSE whenever two test runs (or a user's own launch) share the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


# "Relative error <= 1e-5 in float32": rtol 1e-5, with an absolute floor scaled to the tensor so values that
# happen to sit near zero are not held to an impossible relative bound.
RTOL = 1e-5


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, **kwargs) -> None:
    scale = expected.detach().abs().max().clamp(min=1.0).item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, **kwargs)


FLOAT32_EPS = torch.finfo(torch.float32).eps


def assert_close_float32(actual: torch.Tensor, expected: torch.Tensor, reduction: int, name: str) -> None:
    """Equal to float32 rounding of a sum over `reduction` terms computed in another order.

    Element-wise `rtol` alone cannot hold near zero: a gradient entry that is a sum of `reduction` terms of both
    signs keeps the rounding error of its terms, whose size is that of the tensor's large entries, not its own. So
    the absolute floor is the expected rounding error of such a sum, sqrt(reduction) · eps32 · max|expected|
    (errors of independent roundings add in quadrature); the relative part stays 1e-5. The message keeps
    torch's numbers (where, by how much) and adds the name and the floor.
    """
    atol = reduction**0.5 * FLOAT32_EPS * expected.detach().abs().max().item()
    torch.testing.assert_close(
        actual, expected, rtol=RTOL, atol=atol, msg=lambda text: f"{name} (atol = sqrt({reduction}) * eps32 * "
        f"max|expected| = {atol:.3g}): {text}"
    )


def float64_logits(model: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
    """The logits of a float64 copy of `model` (same weights, same inputs): what float32 rounding is judged by."""
    reference = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        return reference(*args, **kwargs).logits


def module_outputs(model: torch.nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
    """Every named submodule's output tensor (the first of a tuple) from one no-grad forward, in the order the
    modules ran, then the logits."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            if torch.is_tensor(output):
                outputs.setdefault(name, output.detach().clone())
        return hook

    hooks = [module.register_forward_hook(keep(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            outputs["logits"] = model(*args, **kwargs).logits
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def divergence_report(
    gpt2: torch.nn.Module, ours: torch.nn.Module, *args, keep: torch.Tensor | None = None, **kwargs
) -> str:
    """Where two models with the same weights part: for each module both have (same name, same output shape), in
    the order they ran, the largest |ScratchGPT - GPT2LMHeadModel| and each side's distance from a float64 copy of
    GPT-2. `keep` (batch, seq_len), if given, limits every output to those positions (padding's outputs mean
    nothing)."""
    reference = copy.deepcopy(gpt2).to(torch.float64)
    theirs, mine, exact = (module_outputs(model, *args, **kwargs) for model in (gpt2, ours, reference))
    lines = ["module: max |ScratchGPT - GPT2LMHeadModel|, |ScratchGPT - float64|, |GPT2LMHeadModel - float64|"]
    for name, expected in theirs.items():
        actual, precise = mine.get(name), exact.get(name)
        if actual is None or precise is None or actual.shape != expected.shape or not expected.is_floating_point():
            continue
        if keep is not None and expected.shape[:2] == keep.shape:
            actual, expected, precise = actual[keep], expected[keep], precise[keep]
        lines.append(
            f"  {name}: {(actual - expected).abs().max():.4g}, {(actual.double() - precise).abs().max():.4g}, "
            f"{(expected.double() - precise).abs().max():.4g}"
        )
    return "\n".join(lines)


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, reference: torch.Tensor, rtol: float = RTOL) -> None:
    """ScratchGPT's tensor `actual` equals GPT2LMHeadModel's `expected` (`assert_close_rel`, same tolerance), and each
    is checked against `reference`, the float64 forward of GPT-2's weights, so that a failure says which side is the
    further from it instead of only reporting that the two disagree. The reference is a float64 copy of GPT-2 as it
    is in this process: a change made to the GPT-2 model here moves it too, which `assert_models_agree`'s check
    against a new process does not miss."""

    def describe(message: str) -> str:
        ours = (actual.double() - reference).abs()
        theirs = (expected.double() - reference).abs()
        gap = (actual - expected).abs()
        where = tuple(int(i) for i in torch.nonzero(gap == gap.max())[0])
        side = "ScratchGPT" if ours.max() > theirs.max() else "GPT2LMHeadModel"
        return (
            f"{message}\nagainst the float64 forward: max |ScratchGPT - float64| = {ours.max():.4g}, "
            f"max |GPT2LMHeadModel - float64| = {theirs.max():.4g}; at {where}: ScratchGPT {actual[where]:.9g}, "
            f"GPT2LMHeadModel {expected[where]:.9g}, float64 {reference[where]:.9g}. {side} is the further from it."
        )

    assert_close_rel(actual, expected, rtol=rtol, msg=describe)
    assert_close_rel(actual.double(), reference, rtol=rtol, msg=describe)


def assert_models_agree(
    gpt2: torch.nn.Module, ours: torch.nn.Module, *args, keep: torch.Tensor | None = None, **kwargs
) -> None:
    """test_parity's comparison of one call `model(*args, **kwargs)`: ScratchGPT's logits equal GPT2LMHeadModel's
    and a float64 forward's (`assert_parity`), on the (batch, seq_len) positions `keep` if given, and so does the
    loss when the call has labels. A failure adds where the two models part, module by module."""
    select = (lambda tensor: tensor[keep]) if keep is not None else (lambda tensor: tensor)
    with torch.no_grad():
        theirs, mine = gpt2(*args, **kwargs), ours(*args, **kwargs)
    try:
        assert_parity(select(mine.logits), select(theirs.logits), select(float64_logits(gpt2, *args, **kwargs)))
        if theirs.loss is not None:
            assert_close_rel(mine.loss, theirs.loss, msg=lambda message: f"loss: {message}")
    except AssertionError as failure:
        report = divergence_report(gpt2, ours, *args, keep=keep, **kwargs)
        raise AssertionError(f"{failure}\nThe same inputs again, module by module:\n{report}") from None


def left_padded_batch(lengths: list[int], vocab_size: int, pad_id: int = 0, seed: int = 0):
    """Random ids of the given lengths, left-padded to the longest; returns (input_ids, attention_mask)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length:] = torch.randint(1, vocab_size, (length,), generator=generator)
        attention_mask[row, width - length:] = 1
    return input_ids, attention_mask


def right_padded_batch(lengths: list[int], vocab_size: int, pad_id: int = 0, seed: int = 0):
    input_ids, attention_mask = left_padded_batch(lengths, vocab_size, pad_id, seed)
    for row, length in enumerate(lengths):
        input_ids[row] = torch.roll(input_ids[row], -(input_ids.size(1) - length))
        attention_mask[row] = torch.roll(attention_mask[row], -(input_ids.size(1) - length))
    return input_ids, attention_mask


def unpadded_case(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """test_parity's unpadded inputs: (input_ids, labels) of shape
    (3, 17), with masked targets in the middle of row 0 and a row with a single scored token."""
    input_ids = torch.randint(0, vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[0, 3:7] = -100  # masked targets in the middle
    labels[2, :] = -100
    labels[2, 10] = input_ids[2, 10]  # a row with a single scored token
    return input_ids, labels


def labels_from(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """labels = input_ids with -100 on padding."""
    return input_ids.masked_fill(attention_mask == 0, -100)


# Shapes a bug in head splitting, MLP width or layer indexing would show up in.
GPT2_SHAPES = {
    "2L-4H-32": dict(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4),
    "3L-2H-24-inner40": dict(vocab_size=61, n_positions=24, n_embd=24, n_layer=3, n_head=2, n_inner=40),
    "1L-3H-48": dict(vocab_size=128, n_positions=64, n_embd=48, n_layer=1, n_head=3),
}


def random_gpt2(seed: int = 0, attn_implementation: str = "sdpa", **shape) -> GPT2LMHeadModel:
    """GPT2LMHeadModel with random weights of a usefully large scale (logits of order 1, not 1e-3), no dropout."""
    torch.manual_seed(seed)
    config = GPT2Config(
        **{**GPT2_SHAPES["2L-4H-32"], **shape},
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
        attn_implementation=attn_implementation,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))  # non-trivial biases and LayerNorm affines
            else:
                param.normal_(0.0, 0.2)
    return model.eval()


def parity_pair(shape: str):
    """(GPT2LMHeadModel, ScratchGPTForCausalLM) of a GPT2_SHAPES shape with identical weights, both sdpa, eval mode:
    what the parity tests compare (the `gpt2_pair` fixture)."""
    import hf_scratch_gpt

    gpt2 = random_gpt2(**GPT2_SHAPES[shape])
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    ours.set_attn_implementation("sdpa")
    return gpt2, ours.eval()


class StopAfter(TrainerCallback):
    """Interrupts training after optimizer step `step` (same schedule as the full run, unlike a smaller max_steps)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
