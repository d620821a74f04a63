"""`--streaming`: Trainer (max_steps) and the Accelerate loop train from IterableDatasets, and a resumed run
reaches the same losses as an uninterrupted one."""

import json
import math
from pathlib import Path

import pytest
from helpers import SMALL, StopAfter
from transformers import TrainingArguments

from hf_scratch_gpt.data import iterate_texts, load_documents, train_bpe_tokenizer
from hf_scratch_gpt.training.components import DataArguments, ModelArguments
from hf_scratch_gpt.training.loop import parse_loop_arguments, train_with_accelerate
from hf_scratch_gpt.training.trainer import train_with_trainer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus_file):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(iterate_texts(load_documents(str(corpus_file))), vocab_size=300).save_pretrained(folder)
    return folder


def losses(output_dir, key="loss"):
    return [row[key] for row in json.loads((Path(output_dir) / "metrics.json").read_text())["history"] if key in row]


def streaming_trainer_args(output_dir, corpus_file, tokenizer_dir, **overrides):
    model_args = ModelArguments(config_overrides=SMALL, tokenizer_name_or_path=str(tokenizer_dir))
    data_args = DataArguments(dataset=str(corpus_file), validation_fraction=0.1, streaming=True,
                              shuffle_buffer_size=64, max_eval_samples=16)  # fmt: skip
    training_args = TrainingArguments(**{
        "output_dir": str(output_dir), "max_steps": 6, "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 1, "eval_strategy": "no",
        "save_steps": 3, "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": 0, **overrides,
    })  # fmt: skip
    return model_args, data_args, training_args


def test_trainer_streams_and_resumes_to_the_same_losses(tmp_path, corpus_file, tokenizer_dir):
    full = train_with_trainer(*streaming_trainer_args(tmp_path / "full", corpus_file, tokenizer_dir))
    assert full["global_step"] == 6 and full["eval_perplexity"] == pytest.approx(math.exp(full["eval_loss"]), rel=1e-6)
    assert full["num_input_tokens_seen"] == 6 * 4 * 32  # full blocks of n_positions=32 tokens, no padding
    args = streaming_trainer_args(tmp_path / "resumed", corpus_file, tokenizer_dir)
    assert train_with_trainer(*args, callbacks=[StopAfter(3)])["global_step"] == 3
    resumed = train_with_trainer(
        *streaming_trainer_args(tmp_path / "resumed", corpus_file, tokenizer_dir, resume_from_checkpoint="last")
    )
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert losses(tmp_path / "resumed")[-3:] == pytest.approx(losses(tmp_path / "full")[-3:], abs=1e-6)
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)


def loop_flags(output_dir, corpus_file, tokenizer_dir, **overrides):
    flags = {
        "output_dir": str(output_dir), "dataset": str(corpus_file), "config_overrides": SMALL,
        "tokenizer_name_or_path": str(tokenizer_dir), "validation_fraction": "0.1", "streaming": "true",
        "shuffle_buffer_size": "64", "max_eval_samples": "16", "max_steps": "6", "global_batch_size": "4",
        "logging_steps": "1", "eval_steps": "3", "save_steps": "3", "learning_rate": "3e-3", "disable_tqdm": "true",
        **overrides,
    }  # fmt: skip
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def test_accelerate_loop_streams_and_resumes_to_the_same_losses(tmp_path, corpus_file, tokenizer_dir):
    full = train_with_accelerate(*parse_loop_arguments(loop_flags(tmp_path / "full", corpus_file, tokenizer_dir)))
    assert full["global_step"] == 6 and full["num_input_tokens_seen"] == 6 * 4 * 32
    (tmp_path / "resumed").mkdir()
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = train_with_accelerate(*parse_loop_arguments(
        loop_flags(tmp_path / "resumed", corpus_file, tokenizer_dir, resume_from_checkpoint="last")
    ))  # fmt: skip
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)


def test_streaming_without_a_tokenizer_is_a_clear_error(tmp_path, corpus_file):
    model_args, data_args, training_args = streaming_trainer_args(tmp_path, corpus_file, "unused")
    model_args.tokenizer_name_or_path = None
    with pytest.raises(ValueError, match="--streaming needs a trained tokenizer"):
        train_with_trainer(model_args, data_args, training_args)
