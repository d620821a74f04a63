"""The inference speed paths give GPT-2's numbers: the (in, out) weight storage, the static cache, bf16 loading,
int8 weight-only quantization (when torchao is installed), left-padded batches. Equality of ids and logits only;
timings live in benchmarks/compare_gpt2.py."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import hf_scratch_gpt
from hf_scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, load_model
from hf_scratch_gpt.loading import resolve_dtype
from hf_scratch_gpt.decoding_scratch_gpt import MAX_SPLIT_ROWS, ScratchGPTLinear, store_linear_weights_transposed

from helpers import assert_close_rel, left_padded_batch, random_gpt2


def _linear_weights(model):
    return {name: module.weight for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def _assert_stored_transposed(model):
    for name, weight in _linear_weights(model).items():
        out_features, in_features = weight.shape
        assert weight.stride() == (1, out_features), f"{name}: strides {weight.stride()}, shape {tuple(weight.shape)}"
        assert weight.t().is_contiguous(), name
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def _generate_once(model):
    model.generate(torch.tensor([[1, 2]]), max_new_tokens=1, do_sample=False, pad_token_id=0)
    return model


def test_generate_stores_weights_transposed_in_every_loading_path(tmp_path):
    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny"))
    _generate_once(model.train())  # training mode: left as constructed
    assert all(weight.is_contiguous() for weight in _linear_weights(model).values())
    _assert_stored_transposed(_generate_once(model.eval()))
    model.save_pretrained(tmp_path)
    _assert_stored_transposed(model)  # the save's contiguous copy of the tied weight is swapped back
    loaded = ScratchGPTForCausalLM.from_pretrained(tmp_path)
    assert all(weight.is_contiguous() for weight in _linear_weights(loaded).values())  # training code sees nn.Linear's
    _assert_stored_transposed(_generate_once(loaded))
    _assert_stored_transposed(_generate_once(load_model(tmp_path, dtype=torch.bfloat16)))
    _assert_stored_transposed(_generate_once(hf_scratch_gpt.from_hf_gpt2(random_gpt2())))
    _assert_stored_transposed(model.to(torch.bfloat16))  # .to keeps strides


def test_save_pretrained_leaves_a_contiguous_model_contiguous(tmp_path):
    """Trainer saves checkpoints mid-training: saving must not change a training model's storage."""
    model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "again", state_dict=model.state_dict())
    assert all(weight.is_contiguous() for weight in _linear_weights(model).values())


def test_save_pretrained_with_an_explicit_state_dict(tmp_path):
    """What the Accelerate loop does (`save_pretrained(dir, state_dict=accelerator.get_state_dict(model))`)."""
    model = _generate_once(ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")).eval())
    model.save_pretrained(tmp_path, state_dict=model.state_dict())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as saved:
        assert "lm_head.weight" not in saved.keys()  # still recognised as tied to wte
        torch.testing.assert_close(saved.get_tensor("transformer.h.0.attn.c_attn.weight"),
                                   model.transformer.h[0].attn.c_attn.weight, rtol=0, atol=0)
    reloaded = _generate_once(load_model(tmp_path))  # same storage as `model`, so the sums are the same
    input_ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


def test_storage_changes_neither_state_dict_nor_saved_file(tmp_path):
    torch.manual_seed(0)
    model = _generate_once(ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")).eval())
    contiguous = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as saved:
        for name in saved.keys():
            torch.testing.assert_close(saved.get_tensor(name), contiguous[name], rtol=0, atol=0, msg=name)
    for name, weight in _linear_weights(model).items():  # (out, in) shapes, as nn.Linear's contract says
        assert weight.shape == (weight.shape[0], weight.shape[1]) and name + ".weight" in contiguous
    assert tuple(model.transformer.h[0].attn.c_attn.weight.shape) == (3 * 64, 64)
    store_linear_weights_transposed(model)  # idempotent
    _assert_stored_transposed(model)


def test_transposed_storage_gives_the_same_logits_as_contiguous():
    model = hf_scratch_gpt.from_hf_gpt2(random_gpt2())
    contiguous = hf_scratch_gpt.from_hf_gpt2(random_gpt2())
    store_linear_weights_transposed(model)
    assert all(weight.is_contiguous() for weight in _linear_weights(contiguous).values())
    input_ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_rel(model(input_ids).logits, contiguous(input_ids).logits)
        # Batch 1, one token at a time (the matrix-vector path the storage is for), against the full pass.
        cache = None
        for position in range(input_ids.size(1)):
            step = model(input_ids[:, position : position + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            assert_close_rel(step.logits[:, -1], contiguous(input_ids[:, : position + 1]).logits[:, -1])


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("out_features", "bias"), [(768, True), (1001, True), (1001, False), (513, True)])
def test_split_row_product_equals_f_linear(out_features, bias, two_threads):
    """ScratchGPTLinear's product over column blocks (remainder columns included) equals F.linear to float32 rounding
    for one row and up to MAX_SPLIT_ROWS rows; other inputs take F.linear itself. Not bit-identical: MKL sums a
    row's dot products in a kernel-dependent order (on an AVX-512 Xeon even F.linear's result for one row changes
    with the weight's layout), so one row is held to the same tolerance as a batch."""
    layer = ScratchGPTLinear(256, out_features, bias=bias)
    store_linear_weights_transposed(layer)
    generator = torch.Generator().manual_seed(out_features)
    with torch.no_grad():
        for shape in [(1, 1, 256), (1, 256), (256,), (2, 1, 256), (5, 256), (MAX_SPLIT_ROWS, 1, 256)]:
            rows = torch.randn(shape, generator=generator)  # one row (a decoding step) or a batched decoding step
            assert layer._column_parts(rows) == 2
            torch.testing.assert_close(layer(rows), F.linear(rows, layer.weight, layer.bias))
        row = torch.randn(1, 256, generator=generator)
        assert layer._column_parts(torch.randn(MAX_SPLIT_ROWS + 1, 256)) == 0  # prefill, training batches
        assert ScratchGPTLinear(256, out_features)._column_parts(row) == 0  # nn.Linear's (out, in) layout
        assert layer._column_parts(row.double()) == 0
        assert layer._column_parts(torch.randn(1, 255)) == 0  # F.linear reports the shape mismatch
    assert layer._column_parts(row) == 0  # gradients enabled


def test_decoding_takes_the_split_product_and_keeps_gpt2s_ids(two_threads, monkeypatch):
    gpt2 = random_gpt2(vocab_size=1001, n_positions=40, n_embd=256, n_layer=2, n_head=4)
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    # Longer than MAX_SPLIT_ROWS: the prefill takes F.linear, every decoding step (one row) the split product.
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, gpt2.config.vocab_size, (1, MAX_SPLIT_ROWS + 1), generator=generator)
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    column_parts, chosen = ScratchGPTLinear._column_parts, []

    def recording(self, row):
        chosen.append(column_parts(self, row))
        return chosen[-1]

    monkeypatch.setattr(ScratchGPTLinear, "_column_parts", recording)
    actual = ours.generate(prompt, **kwargs)
    assert max(chosen) == 2  # c_attn, c_fc and the head (1001 columns: 2 × 500 + 1) took the split product
    expected = gpt2.generate(prompt, **kwargs)
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    for ours_logits, gpt2_logits in zip(actual.logits, expected.logits):
        assert_close_rel(ours_logits, gpt2_logits)
    input_ids, attention_mask = left_padded_batch([3, 9, 6, 1], gpt2.config.vocab_size, seed=2)
    chosen.clear()
    batched = ours.generate(input_ids, attention_mask=attention_mask, **kwargs)
    assert max(chosen) == 2  # 4 rows per decoding step
    torch.testing.assert_close(
        batched.sequences, gpt2.generate(input_ids, attention_mask=attention_mask, **kwargs).sequences, rtol=0, atol=0
    )
    monkeypatch.setattr(ScratchGPTLinear, "_column_parts", lambda self, row: 0)  # F.linear everywhere
    unsplit = ours.generate(prompt, **kwargs)
    for split_logits, plain_logits in zip(actual.logits, unsplit.logits):
        assert_close_rel(split_logits, plain_logits)  # float32 rounding, not bits: see the test above
    unsplit = ours.generate(input_ids, attention_mask=attention_mask, **kwargs)
    for split_logits, plain_logits in zip(batched.logits, unsplit.logits):
        assert_close_rel(split_logits, plain_logits)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_greedy_ids_and_step_logits_equal_gpt2(cache_implementation):
    gpt2 = random_gpt2(n_positions=40)
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    prompt = torch.randint(1, gpt2.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    expected = gpt2.generate(prompt, **kwargs)
    actual = ours.generate(prompt, cache_implementation=cache_implementation, **kwargs)
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    for step, (ours_logits, gpt2_logits) in enumerate(zip(actual.logits, expected.logits)):
        assert_close_rel(ours_logits, gpt2_logits, msg=lambda m, step=step: f"step {step}: {m}")


def test_static_cache_decode_step_captures_as_one_graph():
    """What generate(cache_implementation="static") compiles: one decoding step with a StaticCache, traced by
    dynamo with fullgraph=True (no data-dependent branch on the cache length), equal to the eager step."""
    from transformers import StaticCache

    ours = hf_scratch_gpt.from_hf_gpt2(random_gpt2(n_positions=40))
    prompt = torch.randint(1, ours.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(4))
    results = []
    for step_fn in (ours, torch.compile(ours, fullgraph=True, backend="eager")):
        torch._dynamo.reset()
        cache = StaticCache(config=ours.config, max_cache_len=16)
        with torch.no_grad():
            ours(prompt, past_key_values=cache, use_cache=True)
            positions = torch.tensor([[prompt.size(1)]])
            results.append(step_fn(prompt[:, -1:], past_key_values=cache, position_ids=positions, use_cache=True).logits)
    assert_close_rel(results[1], results[0])


@pytest.mark.slow
def test_compiled_static_cache_generation_equals_gpt2():
    """transformers' compiled decoding (static cache + torch.compile, inductor; a minute or more on 2 CPU cores)."""
    from transformers import CompileConfig

    gpt2 = random_gpt2(n_positions=40)
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    prompt = torch.randint(1, gpt2.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on CUDA-like devices only by default
    actual = ours.generate(prompt, cache_implementation="static", compile_config=compile_config, **kwargs)
    torch.testing.assert_close(actual, gpt2.generate(prompt, **kwargs), rtol=0, atol=0)


def test_left_padded_batch_greedy_ids_equal_gpt2():
    gpt2 = random_gpt2(n_positions=40)
    ours = hf_scratch_gpt.from_hf_gpt2(gpt2)
    input_ids, attention_mask = left_padded_batch([3, 9, 6, 1, 9, 4, 7, 2], gpt2.config.vocab_size, seed=2)
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    expected = gpt2.generate(input_ids, attention_mask=attention_mask, **kwargs)
    actual = ours.generate(input_ids, attention_mask=attention_mask, **kwargs)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_bfloat16_loading_equals_casting(tmp_path):
    """`load_model(dtype=...)` (what `generate --dtype` uses) gives exactly the float32 model cast to that dtype."""
    ours = hf_scratch_gpt.from_hf_gpt2(random_gpt2())
    ours.save_pretrained(tmp_path)
    by_name = load_model(tmp_path, dtype="bfloat16")
    by_dtype = load_model(tmp_path, dtype=torch.bfloat16)
    cast = ours.to(torch.bfloat16)
    assert by_name.dtype == by_dtype.dtype == torch.bfloat16
    input_ids = torch.randint(0, ours.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(by_name(input_ids).logits, cast(input_ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(by_dtype(input_ids).logits, cast(input_ids).logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(by_name.generate(input_ids[:1], **kwargs), cast.generate(input_ids[:1], **kwargs))


@pytest.mark.parametrize("bad", ["int8", "fp32", torch.int64, 16])
def test_unknown_dtype_is_a_value_error(bad):
    with pytest.raises(ValueError, match=r"dtype .* is not supported; expected one of \['float32', 'bfloat16'"):
        resolve_dtype(bad)


def test_generate_cli_dtype(tmp_path, capsys):
    from transformers import GPT2TokenizerFast

    from hf_scratch_gpt import cli

    ours = hf_scratch_gpt.from_hf_gpt2(random_gpt2())
    ours.save_pretrained(tmp_path)
    vocab = {chr(ord("a") + i): i for i in range(26)}
    vocab.update({f"t{i}": i for i in range(26, ours.config.vocab_size)})
    GPT2TokenizerFast(vocab=vocab, merges=[]).save_pretrained(tmp_path)
    assert cli.main(["generate", str(tmp_path), "--prompt", "abc", "--max-new-tokens", "4", "--dtype", "bfloat16"]) == 0
    bf16_text = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["generate", str(tmp_path), "--prompt", "abc", "--dtype", "int8"])
    assert bf16_text.startswith("abc")


def test_pipeline_with_dtype_loads_bfloat16(tmp_path):
    from transformers import GPT2TokenizerFast, pipeline

    ours = hf_scratch_gpt.from_hf_gpt2(random_gpt2())
    ours.save_pretrained(tmp_path)
    vocab = {chr(ord("a") + i): i for i in range(26)}
    vocab.update({f"t{i}": i for i in range(26, ours.config.vocab_size)})
    GPT2TokenizerFast(vocab=vocab, merges=[]).save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), dtype=torch.bfloat16)
    assert generator.model.dtype == torch.bfloat16
    _assert_stored_transposed(_generate_once(generator.model))
    expected = ours.to(torch.bfloat16).generate(torch.tensor([[0, 1, 2]]), max_new_tokens=4, do_sample=False)
    out = generator("abc", max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert list(out) == expected[0].tolist()


def test_int8_weight_only_quantizes_every_linear(tmp_path):
    """transformers' TorchAoConfig int8 weight-only: every block nn.Linear quantized, logits within int8 rounding."""
    pytest.importorskip("torchao")
    from transformers import TorchAoConfig

    from hf_scratch_gpt.loading import int8_weight_only_config

    ours = hf_scratch_gpt.from_hf_gpt2(random_gpt2())
    ours.save_pretrained(tmp_path)
    quantized = load_model(tmp_path, quantization_config=int8_weight_only_config())
    assert isinstance(int8_weight_only_config(), TorchAoConfig)
    for name, weight in _linear_weights(quantized).items():
        if name == "lm_head":  # transformers keeps the output head (tied to wte) in float, as for other models
            assert type(weight.data) is torch.Tensor and weight.dtype == torch.float32
        else:
            assert type(weight.data) is not torch.Tensor, f"{name} was not quantized ({type(weight.data).__name__})"
    input_ids = torch.randint(0, ours.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = ours(input_ids).logits, quantized(input_ids).logits
    # int8 per-channel weights: relative error of a dot product ~ 1/127 of the row's largest weight.
    torch.testing.assert_close(actual, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())
