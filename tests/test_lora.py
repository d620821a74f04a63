"""LoRA through PEFT (issue 30.3): the adapter is applied on every path (training loss, cached generation), merging
gives the adapter model's logits to float32 rounding, train saves and resumes the adapter alone, merge-lora writes
a plain folder, and mistakes are one line."""

import copy
import json
import shutil

import pytest
import torch
from helpers import SMALL, StopAfter, assert_close_rel, float64_logits
from saved_models import save_tiny_model_folder
from test_cli import assert_one_line_error, run_cli
from transformers import TrainingArguments

pytest.importorskip("peft")

from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, causal_lm_loss  # noqa: E402
from hf_scratch_gpt.loading import load_model  # noqa: E402
from hf_scratch_gpt.lora import (  # noqa: E402
    add_lora_adapter, check_lora_targets, load_lora_model, merge_lora, merged_model,
)
from hf_scratch_gpt.training.components import DataArguments, ModelArguments  # noqa: E402
from hf_scratch_gpt.training.trainer import train_with_trainer  # noqa: E402

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def tiny_model(seed=0, **overrides) -> ScratchGPTForCausalLM:
    # n_embd 128: c_fc has 512 outputs, so a one-row decoding step can take ScratchGPTLinear's split fast path.
    config = ScratchGPTConfig.from_preset("tiny", n_embd=128, n_head=4, n_layer=2, vocab_size=97, **NO_DROPOUT,
                                          **overrides)
    torch.manual_seed(seed)
    return ScratchGPTForCausalLM(config)


def trained_adapter(model, targets=("c_attn", "c_proj", "c_fc"), steps=3):
    """`model` with a rank-4 LoRA adapter after a few SGD steps on random tokens (every lora_B nonzero)."""
    peft_model = add_lora_adapter(model, r=4, alpha=8.0, targets=targets)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    generator = torch.Generator().manual_seed(1)
    peft_model.train()
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=generator)
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora_b = {name: p for name, p in peft_model.named_parameters() if "lora_B" in name}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values()), "the adapter did not train"
    return peft_model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# The adapter is never bypassed
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("untied_head", [False, True])
def test_the_training_loss_goes_through_every_adapted_layer(untied_head):
    """Training mode takes the fused loss, which reads lm_head.weight itself: with the head adapted (possible when
    it is not tied) the model must compute the loss from the wrapped head's output instead. The training-mode loss
    equals the loss of the eval-mode logits (dropout 0), and differs from the base model's."""
    overrides = {"tie_word_embeddings": False} if untied_head else {}
    targets = ("c_attn", "c_proj", "c_fc", "lm_head") if untied_head else ("c_attn", "c_proj", "c_fc")
    peft_model = trained_adapter(tiny_model(**overrides), targets=targets)
    assert peft_model.get_base_model().config.loss_chunk_size > 0  # the fused path is on
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
        peft_model.train()
        training_loss = peft_model(input_ids=ids, labels=ids).loss
        with peft_model.disable_adapter():
            base_loss = peft_model(input_ids=ids, labels=ids).loss
        peft_model.eval()
    assert_close_rel(training_loss, causal_lm_loss(logits, ids), msg=lambda m: f"training loss: {m}")
    assert abs(training_loss - base_loss) > 1e-3, (training_loss, base_loss)


def test_cached_generation_goes_through_the_adapter():
    """generate() with the KV cache (one-row decoding steps, weights stored for the decoding fast path) gives the
    logits of the adapter model's full forward over the same tokens, and other tokens than the base model."""
    peft_model = trained_adapter(tiny_model())
    prompt = torch.tensor([[5, 17, 42, 8, 64, 3]])
    out = peft_model.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, use_cache=True,
                              return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    with torch.no_grad():
        full = peft_model(input_ids=out.sequences).logits  # (1, T, V), no cache
        with peft_model.disable_adapter():
            base = peft_model.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    steps = torch.stack(out.logits, dim=1)  # (1, 12, V): the logits each cached step chose from
    assert_close_rel(steps, full[:, prompt.shape[1] - 1 : -1], msg=lambda m: f"cached vs full logits: {m}")
    assert not torch.equal(out.sequences, base), "the adapter did not change generation"


# ---------------------------------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------------------------------
def test_merged_model_gives_the_adapter_models_logits():
    """(W + s·B·A)·x against W·x + s·B·(A·x): the same products summed in another order, so equal to float32
    rounding (the package's rule, `assert_close_rel`: 1e-5 of the largest logit), and both as close to the float64
    forward of the adapter model."""
    peft_model = trained_adapter(tiny_model())
    ids = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids).logits
    reference = float64_logits(peft_model, input_ids=ids)
    merged = merged_model(copy.deepcopy(peft_model))
    assert type(merged) is ScratchGPTForCausalLM and not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        base_logits = tiny_model()(input_ids=ids).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-2  # the adapter matters
    assert_close_rel(merged_logits, adapter_logits, msg=lambda m: f"merged vs adapter: {m}")
    assert_close_rel(merged_logits.double(), reference, msg=lambda m: f"merged vs float64: {m}")


# ---------------------------------------------------------------------------------------------------------------------
# Training with the command line's arguments
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora") / "base"
    save_tiny_model_folder(folder)
    return folder


def lora_run_args(output_dir, base_folder, corpus_file, model_overrides=(), **overrides):
    model_args = ModelArguments(**{"model_name_or_path": str(base_folder), "lora_r": 4, **dict(model_overrides)})
    data_args = DataArguments(dataset=str(corpus_file), validation_fraction=0.1, block_size=32, max_eval_samples=16)
    training_args = TrainingArguments(**{
        "output_dir": str(output_dir), "max_steps": 6, "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8, "learning_rate": 1e-2, "logging_steps": 1, "eval_strategy": "no",
        "save_steps": 3, "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": 0, **overrides,
    })  # fmt: skip
    return model_args, data_args, training_args


ADAPTER_OUTPUT = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def test_train_saves_only_the_adapter_and_merges(tmp_path, base_folder, corpus_file, capsys):
    base_weights = (base_folder / "model.safetensors").read_bytes()
    result = train_with_trainer(*lora_run_args(tmp_path / "run", base_folder, corpus_file,
                                               model_overrides={"merge_lora": True}))
    run = tmp_path / "run"
    for folder in (run, run / "checkpoint-3", run / "checkpoint-6"):
        names = {path.name for path in folder.iterdir()}
        assert ADAPTER_OUTPUT <= names and not names & {"model.safetensors", "config.json"}, (folder, names)
    assert {"metrics.json", "loss.png"} <= {path.name for path in run.iterdir()}
    from safetensors import safe_open

    with safe_open(str(run / "adapter_model.safetensors"), "pt") as handle:
        names = list(handle.keys())
        assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
        assert any(handle.get_tensor(n).abs().max() > 0 for n in names if ".lora_B." in n)
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_folder.resolve()) and config["r"] == 4
    assert (base_folder / "model.safetensors").read_bytes() == base_weights  # the base is left as it was

    # --merge_lora's folder and `hf-scratch-gpt merge-lora` of the saved adapter: the same plain model.
    assert result["merged_model_dir"] == str(run / "merged")
    capsys.readouterr()  # training's own log lines
    code, out, err = run_cli(["merge-lora", run, tmp_path / "merged-cli"], capsys)
    assert code == 0, err
    assert json.loads(out)["max_abs_diff"] < 1e-4
    trained, merged_cli = load_model(run / "merged"), load_model(tmp_path / "merged-cli")
    assert type(trained) is ScratchGPTForCausalLM and not (run / "merged" / "adapter_config.json").exists()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, merged_cli.state_dict()[name]), name
    base = load_model(base_folder)
    assert not torch.equal(trained.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    # the adapter as PEFT loads it gives the merged model's logits
    ids = torch.arange(20)[None] % base.config.vocab_size
    with torch.no_grad():
        assert_close_rel(trained(input_ids=ids).logits, load_lora_model(run)(input_ids=ids).logits)

    # the adapter folder is not a model folder: generate says what it is and what to do
    code, _, err = run_cli(["generate", run, "--prompt", "Hello"], capsys)
    assert_one_line_error(code, err, "this folder holds a LoRA adapter: merge it into its base model")

    # merge-lora never replaces a folder without --overwrite, and only one a merge wrote
    code, _, err = run_cli(["merge-lora", run, tmp_path / "merged-cli"], capsys)
    assert_one_line_error(code, err, "already exists; pass overwrite=True (--overwrite)")
    code, _, err = run_cli(["merge-lora", run, base_folder, "--overwrite"], capsys)
    assert_one_line_error(code, err, "is not a merged_lora export")
    code, _, err = run_cli(["merge-lora", run, tmp_path / "merged-cli", "--overwrite"], capsys)
    assert code == 0, err


def test_resume_from_an_adapter_checkpoint_continues_exactly(tmp_path, base_folder, corpus_file):
    full = train_with_trainer(*lora_run_args(tmp_path / "full", base_folder, corpus_file))
    first = train_with_trainer(*lora_run_args(tmp_path / "resumed", base_folder, corpus_file), callbacks=[StopAfter(3)])
    assert first["global_step"] == 3
    resumed = train_with_trainer(
        *lora_run_args(tmp_path / "resumed", base_folder, corpus_file, resume_from_checkpoint="last")
    )
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["global_step"] == 6
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)
    from safetensors.torch import load_file

    full_adapter = load_file(tmp_path / "full" / "adapter_model.safetensors")
    resumed_adapter = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert full_adapter.keys() == resumed_adapter.keys()
    for name, tensor in full_adapter.items():
        torch.testing.assert_close(resumed_adapter[name], tensor, rtol=1e-6, atol=1e-7, msg=name)

    # A checkpoint of other LoRA flags, or holding its adapter only as a pickle, is refused before anything loads.
    with pytest.raises(ValueError, match=r"adapter_config.json was trained with r 4 \(this run: 8\)"):
        train_with_trainer(*lora_run_args(tmp_path / "resumed", base_folder, corpus_file, model_overrides={"lora_r": 8},
                                          resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3")))
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    (checkpoint / "adapter_model.safetensors").rename(checkpoint / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="adapter_model.bin is a pickle, which hf_scratch_gpt never loads"):
        train_with_trainer(*lora_run_args(tmp_path / "resumed", base_folder, corpus_file,
                                          resume_from_checkpoint=str(checkpoint)))


# ---------------------------------------------------------------------------------------------------------------------
# Mistakes: one line each
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, fragment", [
    (["--lora_r", "0"], "--lora_r must be an integer >= 1 (the adapter's rank), got 0"),
    (["--lora_r", "-2"], "--lora_r must be an integer >= 1"),
    (["--lora_r", "4", "--lora_alpha", "0"], "--lora_alpha must be a finite number > 0"),
    (["--lora_r", "4", "--lora_dropout", "1"], "--lora_dropout must be in [0, 1)"),
    (["--merge_lora", "true"], "--merge_lora merges a LoRA adapter: it needs --lora_r"),
])  # fmt: skip
def test_bad_lora_flags_are_one_line(tmp_path, base_folder, capsys, flags, fragment):
    code, _, err = run_cli(["train", "--model_name_or_path", base_folder, "--output_dir", tmp_path / "o", *flags], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_lora_without_a_base_model_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["train", "--lora_r", "8", "--output_dir", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--lora_r 8 adapts a trained model: pass its folder with --model_name_or_path")


def test_lora_on_the_accelerate_loop_is_one_line(tmp_path, base_folder, capsys):
    code, _, err = run_cli(["train", "--loop", "accelerate", "--model_name_or_path", base_folder, "--lora_r", "8",
                            "--output_dir", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "LoRA fine-tuning runs on the Trainer loop; leave out --loop accelerate")


def test_an_unknown_target_is_one_line_naming_the_available_ones(tmp_path, base_folder, corpus_file, capsys):
    code, _, err = run_cli(["train", "--model_name_or_path", base_folder, "--lora_r", "4", "--lora_target",
                            "c_attn,q_proj", "--dataset", corpus_file, "--output_dir", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "LoRA target 'q_proj' matches no module of the model; available targets: "
                          "attn.c_attn, attn.c_proj, c_attn, c_fc, c_proj, mlp.c_fc, mlp.c_proj")


@pytest.mark.parametrize("target, fragment", [
    ("ln_1", "LoRA target 'ln_1' matches ["),
    ("attn", "which are not Linear layers"),
    ("lm_head", "is the head, which this model ties to transformer.wte"),
])  # fmt: skip
def test_targets_other_than_linear_layers_are_refused(target, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        check_lora_targets(tiny_model(), [target])


def test_merge_lora_refuses_a_pickled_adapter_and_a_missing_base(tmp_path, base_folder, capsys):
    peft_model = add_lora_adapter(load_model(base_folder), r=2, base_model_name_or_path=base_folder)
    peft_model.save_pretrained(tmp_path / "adapter")
    shutil.copytree(tmp_path / "adapter", tmp_path / "pickled")
    (tmp_path / "pickled" / "adapter_model.safetensors").rename(tmp_path / "pickled" / "adapter_model.bin")
    code, _, err = run_cli(["merge-lora", tmp_path / "pickled", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "adapter_model.bin is a pickle, which hf_scratch_gpt never loads")
    code, _, err = run_cli(["merge-lora", tmp_path / "adapter", tmp_path / "out", "--base", tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, "nowhere does not exist")
    assert not (tmp_path / "out").exists()
    report = merge_lora(tmp_path / "adapter", tmp_path / "out")  # base from adapter_config.json
    assert report.base == str(base_folder.resolve()) and (tmp_path / "out" / "model.safetensors").is_file()
