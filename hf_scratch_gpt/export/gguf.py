"""Export to one GGUF file for llama.cpp (architecture `gpt2`), written with `gguf` (llama.cpp's gguf-py).

Followed: llama.cpp's `convert_hf_to_gguf.py` for GPT2LMHeadModel (its `conversion/gpt2.py` and the tensor-type
rules of `conversion/base.py`, as vendored by llama-cpp-python 0.3.36, whose gguf-py is 0.19.0):

- tensor names come from the installed gguf's own map (`gguf.get_tensor_name_map(MODEL_ARCH.GPT2, n_layer)`):
  token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down}, output_norm,
  output. The converter transposes GPT-2's Conv1D weights to (out, in); ScratchGPT's `nn.Linear` weights already
  are (out, in), so they are written as they are. A tied head is not written (llama.cpp then reuses token_embd, as
  for the converter's own GPT-2 files); an untied head is written as `output.weight`.
- tensor types: 1-D tensors, norms and position_embd stay F32; every other weight takes the requested type (F32,
  F16 or Q8_0; a Q8_0 row not a multiple of 32 long falls back to F16, as the converter does).
- metadata: `gpt2.{context_length, embedding_length, feed_forward_length, block_count, attention.head_count,
  attention.layer_norm_epsilon}`, `general.{architecture, type, name, file_type, quantization_version}`, and the
  tokenizer: `tokenizer.ggml.model = "gpt2"`, `pre = "gpt-2"`, the token list and types (padding ids beyond the
  tokenizer as `[PAD{i}]`, UNUSED), the BPE merges, bos/eos/unk/pad ids, add_bos/add_eos as the tokenizer does.

What llama.cpp's gpt2 cannot carry is refused: an activation other than GELU's tanh form (llama.cpp's gpt2 graph
always applies GELU-tanh), and a tokenizer that is not GPT-2's byte-level BPE (or none: llama.cpp's gpt2 vocabulary
needs tokens and merges).

The check, before the file is published: every tensor holds its ScratchGPT tensor's values up to its type's own
rounding (F32 bit for bit), and `gguf.GGUFReader` reads every tensor and metadata value back exactly. Then
llama.cpp (llama-cpp-python, in a child process) loads the file, tokenizes the check text as the source tokenizer
does, and evaluates the check prompt.

llama.cpp does not compute the model's float32 function, even from an F32 file: its CPU GELU is an F16 lookup
table, and products with F16/Q8_0 weights round their activations to F16/Q8_0 (`ggml_reference`). So its logits
are compared with a float64 evaluation of the file's own weights with exactly those roundings, whose distance to
the exact model is the format's own error (`format_error`, measured for this model and prompt). The two cannot
agree to float32 rounding: both round at the same places, but a value within float32 rounding of a rounding
boundary (of an F16, of a Q8_0 step) lands on one side in llama.cpp and on the other in the reference, and past the
first such value their roundings are independent, more so the deeper the model. Measured (2 to 12 layers, widths
64 to 768, f32/f16/q8_0): llama.cpp lies within 0.0 to 0.66 x `format_error` of the reference (to 5e-7 where no
value met a boundary; 0.66 at 12 layers), and ~1.0 x from a reference with an exact GELU. It is held to
`GGML_AGREEMENT` x `format_error` + float32 rounding (independent rounding noise of one size differs by about
sqrt(2) of it); a wrong tensor, layout or hyperparameter gives errors of the order of the logits. Its difference to
ScratchGPT's float32 logits (`max_abs_diff`) is then at most 3 x `format_error` + float32 rounding. The figures
are written into the published file's metadata (`hf_scratch_gpt.export.*`, `general.description`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..gpt2_weights import weight_name_table
from ..modeling_scratch_gpt import ScratchGPTForCausalLM
from .common import (
    CHECK_TEXT,
    ExportReport,
    check_destination,
    check_prompt,
    check_text_ids,
    float32_rule,
    library_version,
    load_source,
    max_abs,
    publish_file,
    reference_logits,
    staging_file,
)

logger = logging.getLogger(__name__)

FORMAT = "gguf"
GGUF_DTYPES = ("f32", "f16", "q8_0")
# llama.cpp's gpt2 graph applies ggml_gelu, GELU's tanh approximation, whatever the file says.
GELU_TANH_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
TOKENIZER_MODEL = "gpt2"
TOKENIZER_PRE = "gpt-2"
KEY_PREFIX = "hf_scratch_gpt.export."
GGUF_MAGIC = b"GGUF"
# llama.cpp is held to this many times the format's own error from the ggml reference (see the module docstring).
GGML_AGREEMENT = 2.0
# What ggml does to the activations of a product with each type of weight (see ggml_reference).
rounded_activations = {"f32": "", "f16": ", activations rounded to F16", "q8_0": ", activations quantized to Q8_0"}
LLAMA_CHECK_TIMEOUT_S = 600


def _import_gguf():
    try:
        import gguf
    except ImportError as error:
        raise ImportError(
            f"the GGUF export needs the gguf package ({error}): pip install 'hf-scratch-gpt[export]'"
        ) from error
    return gguf


def check_replaceable(out: Path) -> None:
    """Only an existing GGUF file may be replaced with overwrite=True (not a folder, a link or another file)."""
    if out.is_symlink() or not out.is_file():
        raise FileExistsError(f"{out} exists and is not a file; overwrite replaces only an earlier GGUF file")
    with open(out, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise FileExistsError(f"{out} exists and is not a GGUF file; overwrite replaces only a GGUF file")


# ---------------------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class PlannedTensor:
    """One tensor of the file: its GGUF name, the ScratchGPT tensor it comes from, its GGML type and the array given
    to the writer (float32/float16 values, or Q8_0 blocks as uint8)."""

    name: str
    source: str
    qtype: Any  # gguf.GGMLQuantizationType
    data: np.ndarray
    shape: tuple[int, ...]  # the logical (numpy-order) shape


def tensor_type(gguf, name: str, ndim: int, requested):
    """The converter's rule: 1-D tensors, norms, position_embd and anything not a weight stay F32."""
    position_embd = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight"
    if ndim <= 1 or name.endswith("_norm.weight") or name == position_embd or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    return requested


def encode_tensor(gguf, array: np.ndarray, qtype) -> tuple[np.ndarray, Any]:
    """`array` (float32) as the writer takes it in `qtype`; Q8_0 of rows not a multiple of 32 falls back to F16."""
    types = gguf.GGMLQuantizationType
    if qtype == types.F32:
        return array, qtype
    if qtype == types.F16:
        return array.astype(np.float16), qtype
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:
        return array.astype(np.float16), types.F16


def plan_tensors(model: ScratchGPTForCausalLM, dtype: str) -> list[PlannedTensor]:
    """Every tensor of the file, in the type `dtype` asks for, named by gguf's own GPT-2 tensor map."""
    gguf = _import_gguf()
    config = model.config
    requested = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
    requested = gguf.GGMLQuantizationType[requested]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, config.n_layer)
    state = model.state_dict()
    planned = []
    for gpt2_name, scratch_name in weight_name_table(config.n_layer, config.tie_word_embeddings).items():
        name = name_map.get_name(gpt2_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"gguf {gguf.__name__} has no GPT-2 tensor name for {gpt2_name}")
        array = state[scratch_name].detach().to(torch.float32).contiguous().numpy()
        data, qtype = encode_tensor(gguf, array, tensor_type(gguf, name, array.ndim, requested))
        planned.append(PlannedTensor(name, scratch_name, qtype, data, tuple(array.shape)))
    return planned


def q8_0_rounding_limit(source: torch.Tensor) -> torch.Tensor:
    """The most a Q8_0 value may differ from its source value: half a step d = max|block|/127, plus up to 127 times
    the rounding of d to the F16 the block stores (relative 2^-11, but absolute 2^-25 for a subnormal F16 scale, i.e.
    a block whose largest value is below 127 x 2^-14), plus float32 slack."""
    blocks = source.reshape(-1, 32)
    amax = blocks.abs().amax(dim=1, keepdim=True)
    step = amax / 127
    stored = step.to(torch.float32).to(torch.float16).to(step.dtype)
    limit = step / 2 + 127 * (stored - step).abs() + amax * 1e-6
    return limit.expand(-1, 32).reshape(source.shape)


def check_values(gguf, tensors: list[PlannedTensor], model: ScratchGPTForCausalLM) -> str:
    """`ValueError` unless every tensor holds its source's values, in the source's layout, up to its type's own
    rounding: F32 bit for bit, F16 the source rounded to F16, Q8_0 within `q8_0_rounding_limit`. (Without this a
    wrongly laid out weight would be wrong in the ggml reference too.)"""
    state = model.state_dict()
    types = gguf.GGMLQuantizationType
    for tensor in tensors:
        source = state[tensor.source].detach().to(torch.float64)
        values = dequantized(gguf, tensor)
        if tensor.qtype == types.F32:
            exact = torch.equal(values, source)
        elif tensor.qtype == types.F16:
            exact = torch.equal(values, source.to(torch.float16).to(torch.float64))
        else:
            exact = bool(((values - source).abs() <= q8_0_rounding_limit(source)).all())
        if not exact:
            raise ValueError(
                f"the GGUF tensor {tensor.name} ({tensor.qtype.name}) does not hold {tensor.source}'s values "
                f"(max |difference| {(values - source).abs().max().item():.4g})"
            )
    return "every tensor holds its ScratchGPT tensor's values: F32 bit for bit, F16/Q8_0 within their own rounding"


def dequantized(gguf, tensor: PlannedTensor) -> torch.Tensor:
    """The values the file holds for `tensor`, as float64."""
    values = gguf.quants.dequantize(tensor.data, tensor.qtype) if tensor.data.dtype == np.uint8 else tensor.data
    return torch.from_numpy(np.asarray(values, dtype=np.float64).reshape(tensor.shape))


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Vocabulary:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos / eos / unk / pad → id
    add_bos: bool
    add_eos: bool


def gguf_vocabulary(tokenizer, config) -> Vocabulary:
    """The tokenizer as llama.cpp's `gpt2` vocabulary takes it (as the converter's `get_vocab_base` and gguf's
    `SpecialVocab` build it). `ValueError` for a tokenizer llama.cpp's GPT-2 pre-tokenizer would not reproduce."""
    gguf = _import_gguf()
    if tokenizer is None:
        raise ValueError(
            "the model folder has no tokenizer; llama.cpp's gpt2 needs the BPE tokens and merges in the GGUF. Save the "
            "tokenizer next to the model (tokenizer.save_pretrained(folder)) and export again"
        )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model_spec, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    is_gpt2_bpe = (
        model_spec.get("type") == "BPE" and not spec.get("normalizer") and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
    )  # fmt: skip
    if not is_gpt2_bpe:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}: model {model_spec.get('type')!r}, pre-tokenizer "
            f"{pre.get('type')!r}, normalizer {spec.get('normalizer')!r}) is not GPT-2's byte-level BPE, which "
            f"llama.cpp's gpt2 vocabulary (pre-tokenizer {TOKENIZER_PRE!r}) reproduces"
        )
    vocab_size = config.vocab_size
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"the tokenizer has ids up to {max(vocab.values())}, beyond the model's vocab_size {vocab_size}"
        )
    by_id = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.NORMAL)
    # tokenizer.json holds merges as "a b" strings or (since tokenizers 0.20) [a, b] pairs, whose parts may hold a
    # space: encoded as chr(ord(" ") + 256), as gguf's SpecialVocab does.
    merges = [
        merge if isinstance(merge, str) else " ".join(part.replace(" ", chr(ord(" ") + 256)) for part in merge)
        for merge in model_spec.get("merges", [])
    ]
    if not merges:
        raise ValueError("the tokenizer has no BPE merges; llama.cpp's gpt2 vocabulary needs them")
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    candidates = {
        "bos": config.bos_token_id, "eos": eos, "unk": tokenizer.unk_token_id,
        "pad": config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id,
    }  # fmt: skip
    special_ids = {kind: int(i) for kind, i in candidates.items() if i is not None and 0 <= i < vocab_size}
    plain = check_text_ids(tokenizer, vocab_size)
    with_special = list(tokenizer(CHECK_TEXT).input_ids)
    start = with_special.index(plain[0]) if plain[0] in with_special else 0
    return Vocabulary(
        tokens=tokens, types=[int(t) for t in types], merges=merges, special_ids=special_ids,
        add_bos=start > 0, add_eos=len(with_special) > start + len(plain),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Writing and reading back
# ---------------------------------------------------------------------------------------------------------------------
def metadata(config, dtype: str, name: str, vocabulary: Vocabulary) -> dict[str, Any]:
    """Key → value of every metadata entry besides general.architecture (which the writer adds)."""
    gguf = _import_gguf()
    keys, arch = gguf.Keys, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2]
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }  # fmt: skip
    n_inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
    values = {
        keys.General.TYPE: gguf.GGUFType.MODEL,
        keys.General.NAME: name,
        keys.LLM.BLOCK_COUNT.format(arch=arch): config.n_layer,
        keys.LLM.CONTEXT_LENGTH.format(arch=arch): config.n_positions,
        keys.LLM.EMBEDDING_LENGTH.format(arch=arch): config.n_embd,
        keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): n_inner,
        keys.Attention.HEAD_COUNT.format(arch=arch): config.n_head,
        keys.Attention.LAYERNORM_EPS.format(arch=arch): float(config.layer_norm_epsilon),
        keys.General.FILE_TYPE: int(file_type[dtype]),
        keys.General.QUANTIZATION_VERSION: gguf.GGML_QUANT_VERSION,
        keys.Tokenizer.MODEL: TOKENIZER_MODEL,
        keys.Tokenizer.PRE: TOKENIZER_PRE,
        keys.Tokenizer.LIST: vocabulary.tokens,
        keys.Tokenizer.TOKEN_TYPE: vocabulary.types,
        keys.Tokenizer.MERGES: vocabulary.merges,
        keys.Tokenizer.ADD_BOS: vocabulary.add_bos,
        keys.Tokenizer.ADD_EOS: vocabulary.add_eos,
    }
    special_keys = {
        "bos": keys.Tokenizer.BOS_ID, "eos": keys.Tokenizer.EOS_ID, "unk": keys.Tokenizer.UNK_ID,
        "pad": keys.Tokenizer.PAD_ID,
    }  # fmt: skip
    values.update({special_keys[kind]: token_id for kind, token_id in vocabulary.special_ids.items()})
    return values


def write_gguf(path: Path, tensors: list[PlannedTensor], values: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the file: `values` with the writer's typed adders (as the converter does), `extra` (strings, floats,
    ints) under their own keys, then the tensors."""
    gguf = _import_gguf()
    keys = gguf.Keys
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    adders = {
        keys.General.TYPE: writer.add_type, keys.General.NAME: writer.add_name,
        keys.General.FILE_TYPE: writer.add_file_type,
        keys.General.QUANTIZATION_VERSION: writer.add_quantization_version,
        keys.Tokenizer.MODEL: writer.add_tokenizer_model, keys.Tokenizer.PRE: writer.add_tokenizer_pre,
        keys.Tokenizer.LIST: writer.add_token_list, keys.Tokenizer.TOKEN_TYPE: writer.add_token_types,
        keys.Tokenizer.MERGES: writer.add_token_merges, keys.Tokenizer.ADD_BOS: writer.add_add_bos_token,
        keys.Tokenizer.ADD_EOS: writer.add_add_eos_token, keys.Tokenizer.BOS_ID: writer.add_bos_token_id,
        keys.Tokenizer.EOS_ID: writer.add_eos_token_id, keys.Tokenizer.UNK_ID: writer.add_unk_token_id,
        keys.Tokenizer.PAD_ID: writer.add_pad_token_id,
    }  # fmt: skip
    arch_adders = {
        "block_count": writer.add_block_count, "context_length": writer.add_context_length,
        "embedding_length": writer.add_embedding_length, "feed_forward_length": writer.add_feed_forward_length,
        "attention.head_count": writer.add_head_count, "attention.layer_norm_epsilon": writer.add_layer_norm_eps,
    }  # fmt: skip
    for key, value in values.items():
        adder = adders.get(key) or arch_adders[key.split(".", 1)[1]]
        adder(value)
    for key, value in extra.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        else:
            writer.add_uint32(key, int(value))
    for tensor in tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_back(path: Path, tensors: list[PlannedTensor], values: dict[str, Any], extra: dict[str, Any]) -> str:
    """`ValueError` unless `gguf.GGUFReader` finds exactly `tensors` (name, type, shape, every byte) and every
    metadata value in `values` and `extra`."""
    gguf = _import_gguf()
    reader = gguf.GGUFReader(str(path))
    found = {tensor.name: tensor for tensor in reader.tensors}
    expected = {tensor.name: tensor for tensor in tensors}
    if found.keys() != expected.keys():
        raise ValueError(
            f"{path} holds tensors {sorted(found.keys() - expected.keys())} it should not and lacks "
            f"{sorted(expected.keys() - found.keys())}"
        )
    for name, tensor in expected.items():
        read = found[name]
        shape = tuple(int(n) for n in reversed(read.shape))  # ggml order (ne0 first) → numpy order
        if read.tensor_type != tensor.qtype or shape != tensor.shape:
            raise ValueError(
                f"{path}: {name} reads back as {read.tensor_type.name} {shape}, was written as {tensor.qtype.name} "
                f"{tensor.shape}"
            )
        if np.asarray(read.data).tobytes() != np.ascontiguousarray(tensor.data).tobytes():
            raise ValueError(f"{path}: the bytes of {name} do not read back as written")
    wanted = {gguf.Keys.General.ARCHITECTURE: gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2], **values, **extra}
    for key, value in wanted.items():
        field = reader.get_field(key)
        if field is None:
            raise ValueError(f"{path} lacks the metadata {key}")
        read = field.contents()
        if isinstance(value, float):
            same = abs(float(read) - value) <= abs(value) * 1e-7  # layer_norm_epsilon is stored as float32
        elif isinstance(value, list):
            same = list(read) == list(value)
        else:
            same = read == value
        if not same:
            shown = read if not isinstance(read, list) else f"{read[:5]}... ({len(read)})"
            raise ValueError(f"{path}: metadata {key} reads back as {shown!r}")
    return (
        f"gguf.GGUFReader {library_version('gguf')}: every tensor (name, type, shape, bytes) and metadata value reads "
        "back as written"
    )


# ---------------------------------------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------------------------------------
# Run in a new process (a crash in native code cannot take the caller with it): arguments GGUF, IDS (JSON), TEXT,
# LOGITS_OUT, N_CTX. KV cache in F32 (type_k/type_v = GGML_TYPE_F32) and no flash attention: the only roundings
# left are the file's and ggml's own, which `ggml_reference` reproduces. ggml's generic CPU kernels: the extra buffer
# types (weight repacking, AMX) are off, as llama.cpp's `--no-repack` does; llama-cpp-python 0.3.36 built for an
# AMX-INT8 Xeon crashes (general protection fault in its AMX Q8_0 product) on any prompt longer than one token.
LLAMA_CPP_CHECK = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import llama_cpp
    import llama_cpp.llama_cpp as bindings
    from llama_cpp import Llama

    default_model_params = bindings.llama_model_default_params

    def generic_kernels_params():
        params = default_model_params()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = generic_kernels_params
    path, ids, text, logits_out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    GGML_TYPE_F32 = 0
    llm = Llama(
        model_path=path, n_ctx=int(sys.argv[5]), n_batch=len(ids), n_ubatch=len(ids), logits_all=True,
        type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, n_gpu_layers=0, verbose=False,
    )
    llm.eval(ids)
    np.save(logits_out, np.array(llm.scores[: len(ids)], dtype=np.float32))
    facts = {"llama_cpp_python": llama_cpp.__version__, "n_vocab": llm.n_vocab(), "n_embd": llm.n_embd(),
             "n_ctx_train": int(llm.metadata["gpt2.context_length"]),
             "architecture": llm.metadata.get("general.architecture"),
             "extra_buffer_types": bool(llm.model_params.use_extra_bufts)}
    if text:
        facts["text_ids"] = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        facts["detokenized"] = llm.detokenize(facts["text_ids"]).decode("utf-8", "replace")
    print(json.dumps(facts))
    """
)


def llama_cpp_available() -> bool:
    from importlib.util import find_spec

    return find_spec("llama_cpp") is not None


def run_llama_cpp(path: Path, ids: list[int], text: str | None, n_ctx: int) -> tuple[torch.Tensor, dict]:
    """llama.cpp's logits (1, T, V) for `ids` from the GGUF at `path`, and its facts (tokenization of `text`...)."""
    with tempfile.TemporaryDirectory(prefix="gguf-export-check-") as scratch:
        logits_file = Path(scratch) / "logits.npy"
        result = subprocess.run(
            [sys.executable, "-c", LLAMA_CPP_CHECK, str(path), json.dumps(ids), text or "", str(logits_file),
             str(n_ctx)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=LLAMA_CHECK_TIMEOUT_S,
        )  # fmt: skip
        if result.returncode != 0:
            raise ValueError(
                f"llama.cpp could not run the GGUF (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        logits = torch.from_numpy(np.load(logits_file, allow_pickle=False)).unsqueeze(0)
    return logits, facts


# ---------------------------------------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------------------------------------
def export_gguf(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "f32",
    overwrite: bool = False,
    llama_cpp: bool = True,
) -> ExportReport:
    """Export the ScratchGPT folder `model_dir` to the GGUF file `out` (see the module docstring).

    Args:
        dtype: "f32", "f16" or "q8_0": the type of the 2-D weights (norms, biases, position_embd stay F32).
        overwrite: replace an existing GGUF file at `out`.
        llama_cpp: run the file in llama.cpp (needs llama-cpp-python) and hold its logits to the ggml reference.
            False checks the file with `gguf.GGUFReader` and the reference only (recorded in the report and the
            file: "llama.cpp not run").

    Returns the `ExportReport`; its figures are also in the file's metadata.
    """
    gguf = _import_gguf()
    from .ggml_reference import ggml_reference_logits

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {list(GGUF_DTYPES)}, got {dtype!r}")
    if llama_cpp and not llama_cpp_available():
        raise ImportError(
            "checking the GGUF in llama.cpp needs llama-cpp-python (pip install 'hf-scratch-gpt[llama]', which "
            "compiles llama.cpp), or pass llama_cpp=False (--no-llama-cpp) to check it with gguf's reader only"
        )
    source_dir, out = Path(model_dir), Path(out)
    check_destination(source_dir, out, overwrite, check_replaceable)
    source = load_source(source_dir)
    model, config = source.model, source.model.config
    if config.activation_function not in GELU_TANH_ACTIVATIONS:
        raise ValueError(
            f"the model's activation_function is {config.activation_function!r}; llama.cpp's gpt2 architecture always "
            f"applies GELU's tanh approximation ({' / '.join(GELU_TANH_ACTIVATIONS)}), so a GGUF cannot carry it"
        )
    vocabulary = gguf_vocabulary(source.tokenizer, config)
    stored_dtype = model.dtype
    model.float()  # exact widening of bfloat16/float16 weights
    tensors = plan_tensors(model, dtype)
    values = metadata(config, dtype, source.folder.resolve().name, vocabulary)
    ids = check_prompt(config, source.tokenizer)
    prompt = torch.tensor([ids])

    reference = reference_logits(model, prompt)
    ggml = ggml_reference_logits(model, {t.source: (dequantized(gguf, t), t.qtype) for t in tensors}, prompt)
    format_error = max_abs(ggml, reference.float64, reference.valid)
    with tempfile.TemporaryDirectory(prefix="gguf-export-") as scratch:
        checked = Path(scratch) / "checked.gguf"
        write_gguf(checked, tensors, values, {})
        checks = [check_values(gguf, tensors, model), read_back(checked, tensors, values, {})]
        if llama_cpp:
            logits, facts = run_llama_cpp(checked, ids, CHECK_TEXT, config.n_positions)
            expected_text_ids = check_text_ids(source.tokenizer, config.vocab_size)
            if facts["text_ids"] != expected_text_ids:
                raise ValueError(
                    f"llama.cpp tokenizes the check text to {facts['text_ids'][:12]}..., the model's tokenizer to "
                    f"{expected_text_ids[:12]}...; the GGUF's vocabulary does not reproduce the tokenizer"
                )
            sizes = (facts["n_vocab"], facts["n_ctx_train"], facts["n_embd"])
            if sizes != (config.vocab_size, config.n_positions, config.n_embd):
                raise ValueError(
                    f"llama.cpp reads the GGUF's vocabulary, context and width as {sizes}, expected "
                    f"{(config.vocab_size, config.n_positions, config.n_embd)}"
                )
            if facts["extra_buffer_types"]:
                raise ValueError("llama.cpp ran with its extra buffer types on; the check needs its generic kernels")
            runtime = (
                f"llama.cpp (llama-cpp-python {facts['llama_cpp_python']}, CPU, generic kernels as --no-repack, "
                "F32 KV cache)"
            )
            checks.append(f"llama.cpp tokenizes the check text to the model tokenizer's {len(expected_text_ids)} ids")
            exported = logits
        else:
            runtime = "llama.cpp not run (llama_cpp=False): gguf.GGUFReader and the float64 ggml reference only"
            exported = ggml.to(torch.float32)
        fidelity = max_abs(exported, ggml, reference.valid)
        float32_bound = reference.float32_bound()
        agreement = GGML_AGREEMENT * format_error + float32_bound
        if not fidelity <= agreement:
            raise ValueError(
                f"llama.cpp's logits differ from the float64 evaluation of the GGUF's own weights with ggml's "
                f"roundings by up to {fidelity:.4g}, more than {GGML_AGREEMENT:g} x the format's own error "
                f"({format_error:.4g}) + float32 rounding ({float32_bound:.4g}); llama.cpp does not compute this model "
                "from the file. "
                "Nothing was written."
            )
        if llama_cpp:
            checks.append(
                f"llama.cpp's logits lie within {fidelity:.3g} of a float64 evaluation of the file's weights with "
                f"ggml's roundings (<= {GGML_AGREEMENT:g} x its distance {format_error:.3g} to the exact model "
                f"+ float32 rounding {float32_bound:.3g})"
            )
        figures = {
            "max_abs_diff": max_abs(exported, reference.float32, reference.valid),
            "max_abs_error": max_abs(exported, reference.float64, reference.valid),
            "source_error": reference.source_error,
            "bound": agreement + format_error,
            "bound_rule": (
                f"{GGML_AGREEMENT + 1:g} x the format's own error measured by the float64 ggml reference "
                f"({format_error:.3g}: {dtype} weights, ggml's F16 GELU table{rounded_activations[dtype]}) + "
                f"{float32_rule()}"
            ),
        }
        if not figures["max_abs_error"] <= figures["bound"]:  # implied by the check above; kept as a guard
            raise ValueError(f"the GGUF's logits differ from the model's by {figures['max_abs_error']:.4g}: {figures}")
        not_carried = [
            "float32 activations throughout: llama.cpp's CPU GELU reads an F16 table (input and output rounded to "
            f"F16){rounded_activations[dtype]}; with the {dtype} weights this rounding accounts for {format_error:.3g} "
            "of the logits here",
            "ScratchGPT's training-only config fields (label_smoothing, loss_chunk_size) and the generation config",
        ]
        if stored_dtype != torch.float32:
            not_carried.append(f"the stored dtype {str(stored_dtype).removeprefix('torch.')} (written from float32)")
        fallbacks = sorted(t.name for t in tensors if dtype == "q8_0" and t.qtype == gguf.GGMLQuantizationType.F16)
        if fallbacks:
            not_carried.append(
                f"Q8_0 for {fallbacks} (rows not a multiple of 32): written as F16, as the converter does"
            )
        report = ExportReport(
            format=FORMAT, out=str(out), source=str(source.folder), dtype=dtype, files=[out.name], runtime=runtime,
            prompt_tokens=len(ids), checks=checks, not_carried=not_carried,
            details={"gguf": library_version("gguf"), "format_error": format_error, "llama_cpp_fidelity": fidelity,
                     "largest_logit": reference.scale, "tensor_types": {t.name: t.qtype.name for t in tensors}},
            **figures,
        )  # fmt: skip
        extra = {
            KEY_PREFIX + "source": str(source.folder),
            KEY_PREFIX + "runtime": runtime,
            KEY_PREFIX + "prompt_tokens": len(ids),
            KEY_PREFIX + "max_abs_diff": report.max_abs_diff,
            KEY_PREFIX + "max_abs_error": report.max_abs_error,
            KEY_PREFIX + "source_error": report.source_error,
            KEY_PREFIX + "format_error": format_error,
            KEY_PREFIX + "bound": report.bound,
            KEY_PREFIX + "report": json.dumps(report.to_dict()),
            gguf.Keys.General.DESCRIPTION: report.summary(),
        }
        with staging_file(out) as tmp:
            write_gguf(tmp, tensors, values, extra)  # the checked file plus the figures: same tensors, read back
            read_back(tmp, tensors, values, extra)
            publish_file(tmp, out, overwrite, check_replaceable)
    logger.info(report.summary())
    return report


__all__ = ["GGUF_DTYPES", "export_gguf", "gguf_vocabulary", "plan_tensors", "read_back", "run_llama_cpp"]
