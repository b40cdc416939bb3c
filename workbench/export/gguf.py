"""GGUF files for llama.cpp, Ollama and LM Studio: a merged model, or a LoRA adapter alone.

Written with the ``gguf`` package (llama.cpp's own Python library, maintained with llama.cpp): its
``GGUFWriter`` writes the file, tensor names come from its ``TensorNameMap`` (the table llama.cpp's
converter uses), metadata keys from its constants, 8-bit quantization from ``gguf.quants`` and the
SentencePiece vocabulary and merges from ``gguf.vocab``. No PyPI package ships llama.cpp's
``convert_hf_to_gguf.py`` in a usable form (see docs/EXPORT.md), so the few decisions that
script makes for the Llama and Qwen2 families are made here, each where it is needed:

* Llama (and Mistral, which llama.cpp runs as ``llama``) stores the rows of the query and key
  projections permuted for its rotary embedding (:func:`permute_rows`); Qwen2 does not.
* 1-D tensors (norms, biases) stay float32; 2-D weights take the requested type (``q8_0`` falls back to
  f16 for a row length that is not a multiple of 32, as llama.cpp does).
* A tied output layer is not written (llama.cpp reuses ``token_embd``).
* The tokenizer: byte-level BPE (SmolLM2, Qwen2, Llama 3) as ``gpt2`` with its merges and the
  pre-tokenizer named by the split rule of ``tokenizer.json``; SentencePiece (Llama 2, Mistral) as
  ``llama`` from ``tokenizer.model``. Special tokens, whether BOS/EOS are added, and the chat template.

Tensors are converted and written one at a time (``add_tensor_info`` first, then ``write_tensor_data``),
so the peak memory is the model plus one converted tensor.

The LoRA adapter file follows llama.cpp's format (``general.type`` adapter, ``adapter.type`` lora,
``adapter.lora.alpha``, ``<tensor>.lora_a`` / ``.lora_b``); llama.cpp scales it by alpha / rank, so a
per-module scaling that differs from that (rsLoRA, rank or alpha patterns) is folded into ``lora_b``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from workbench.config.base import WorkbenchError

GGUF_MAGIC = b"GGUF"
SUPPORTED = "Llama, Mistral and Qwen2 models (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
CONVERT_HINT = ("export a merged safetensors model instead (--format safetensors) and convert that directory with "
                "llama.cpp's convert_hf_to_gguf.py")
# HF architecture → (gguf MODEL_ARCH member, whether llama.cpp keeps q/k rows permuted for its RoPE).
_ARCHITECTURES = {
    "LlamaForCausalLM": ("LLAMA", True),
    "MistralForCausalLM": ("LLAMA", True),
    "Qwen2ForCausalLM": ("QWEN2", False),
}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# The pre-tokenizer names preferred where several name one split rule (llama.cpp's converter writes these).
_PREFERRED_PRE = ("llama-bpe", "qwen2", "tekken", "gpt-4o", "deepseek-r1-qwen")


@dataclass(frozen=True)
class Architecture:
    hf_class: str
    arch: Any  # gguf.MODEL_ARCH
    name: str  # the gguf architecture name: llama, qwen2
    permute_qk: bool


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _as_dict(config: Any) -> dict:
    return config if isinstance(config, dict) else config.to_dict()


def read_model_config(model_path: str | Path) -> dict:
    path = Path(model_path) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkbenchError(f"cannot read {path}: {exc}") from None


def architecture_of(config: Any) -> Architecture:
    """The GGUF architecture for a transformers config, or a clear refusal naming what can be written."""
    import gguf

    cfg = _as_dict(config)
    classes = list(cfg.get("architectures") or [])
    hf_class = next((c for c in classes if c in _ARCHITECTURES), None) or _MODEL_TYPES.get(cfg.get("model_type", ""))
    if hf_class is None:
        what = classes[0] if classes else cfg.get("model_type") or "an unknown architecture"
        raise WorkbenchError(f"GGUF export writes {SUPPORTED}; this model is {what}, which it cannot write. "
                             f"To get a GGUF of it, {CONVERT_HINT}")
    member, permute = _ARCHITECTURES[hf_class]
    arch = getattr(gguf.MODEL_ARCH, member)
    return Architecture(hf_class, arch, gguf.MODEL_ARCH_NAMES[arch], permute)


def permute_rows(weights, n_head: int):
    """llama.cpp's layout of a Llama query/key projection (or bias): within each head, the rotary pairs
    (i, i + d/2) of transformers' layout become neighbours (2i, 2i + 1)."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _heads(cfg: dict) -> tuple[int, int]:
    heads = int(cfg["num_attention_heads"])
    return heads, int(cfg.get("num_key_value_heads") or heads)


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _qk_heads(hf_name: str, cfg: dict) -> int | None:
    """The head count a Llama q/k projection (weight or bias) is permuted with, or None for other tensors."""
    heads, kv_heads = _heads(cfg)
    if ".q_proj." in hf_name + ".":
        return heads
    if ".k_proj." in hf_name + ".":
        return kv_heads
    return None


def _rope(cfg: dict) -> tuple[str, dict, float]:
    """(rope type, its parameters, theta) from a transformers 5 ``rope_parameters`` or an older config."""
    params = cfg.get("rope_parameters")
    if not isinstance(params, dict) or ("rope_type" not in params and "rope_theta" not in params):
        params = dict(cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    rope_type = str(params.get("rope_type") or params.get("type") or "default")
    return rope_type, params, theta


def check_model_config(config: Any) -> Architecture:
    """Everything about the model this exporter refuses, before any weight is loaded."""
    cfg = _as_dict(config)
    arch = architecture_of(cfg)
    rope_type, _, _ = _rope(cfg)
    allowed = ("default", "linear", "yarn") + (("llama3",) if arch.name == "llama" else ())
    if rope_type not in allowed:
        raise WorkbenchError(f"the model uses RoPE scaling {rope_type!r}, which this GGUF export does not write "
                             f"(it writes {', '.join(allowed)}); {CONVERT_HINT}")
    return arch


# ---- tensors -------------------------------------------------------------------------------------

QUANT_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def tensor_type(name: str, shape: tuple[int, ...], quant: str):
    """The GGML type a tensor is stored as: 1-D tensors stay float32; q8_0 needs rows in blocks of 32."""
    import gguf

    qtype = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith(".bias"):
        return qtype.F32
    wanted = getattr(qtype, QUANT_TYPES[quant])
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if shape[-1] % block:
        return qtype.F16
    return wanted


def _nbytes(shape: tuple[int, ...], ggml_type) -> tuple[tuple[int, ...], Any, int]:
    """(shape as passed to the writer, numpy dtype, bytes) of a tensor stored as ``ggml_type``."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType
    count = math.prod(shape)
    if ggml_type == qtype.F32:
        return shape, np.float32, count * 4
    if ggml_type == qtype.F16:
        return shape, np.float16, count * 2
    byte_shape = gguf.quant_shape_to_byte_shape(shape, ggml_type)
    return byte_shape, np.uint8, math.prod(byte_shape)


def convert(array, ggml_type):
    """A float32 numpy array → the bytes (or float array) the writer stores for ``ggml_type``."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType
    if ggml_type == qtype.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == qtype.F16:
        return np.ascontiguousarray(array.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), ggml_type)


@dataclass
class PlannedTensor:
    name: str  # the GGUF name
    shape: tuple[int, ...]
    ggml_type: Any
    load: Callable[[], Any]  # → float32 numpy array, in GGUF layout


def write_gguf(path: Path, arch_name: str, metadata: Callable[[Any], None], tensors: list[PlannedTensor],
               *, on_tensor: Callable[[int, int], None] | None = None) -> int:
    """Write ``path``: metadata (a function given the writer), then the tensors one at a time; returns bytes."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch_name)
    try:
        metadata(writer)
        for t in tensors:
            shape, dtype, nbytes = _nbytes(t.shape, t.ggml_type)
            raw = None if t.ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else t.ggml_type
            writer.add_tensor_info(t.name, shape, dtype, nbytes, raw_dtype=raw)
        try:
            writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
        except Exception:  # only a label; older gguf releases compute it differently
            pass
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for index, t in enumerate(tensors):
            data = convert(t.load(), t.ggml_type)
            writer.write_tensor_data(data)
            del data
            if on_tensor is not None:
                on_tensor(index + 1, len(tensors))
    finally:
        writer.close()
    return path.stat().st_size


def _numpy(tensor):
    import torch

    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def plan_model_tensors(state_dict: dict, cfg: dict, arch: Architecture, quant: str,
                       extra: Iterable[PlannedTensor] = ()) -> list[PlannedTensor]:
    """Every weight of a merged model under its GGUF name (from gguf's TensorNameMap), with its storage type."""
    import gguf

    name_map = gguf.get_tensor_name_map(arch.arch, int(cfg["num_hidden_layers"]))
    tied = bool(cfg.get("tie_word_embeddings"))
    embed = state_dict.get("model.embed_tokens.weight")
    planned: list[PlannedTensor] = list(extra)
    for hf_name, tensor in state_dict.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and (tied or (embed is not None and tensor.data_ptr() == embed.data_ptr())):
            continue  # llama.cpp reuses token_embd for a tied output layer
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise WorkbenchError(f"GGUF export: the weight {hf_name} has no GGUF name for {arch.name}; "
                                 f"{CONVERT_HINT}")
        heads = _qk_heads(hf_name, cfg) if arch.permute_qk else None

        def load(tensor=tensor, heads=heads):
            array = _numpy(tensor)
            return permute_rows(array, heads) if heads else array

        shape = tuple(int(s) for s in tensor.shape)
        planned.append(PlannedTensor(name, shape, tensor_type(name, shape, quant), load))
    return planned


def rope_metadata(writer, config: Any) -> None:
    """RoPE keys: the base frequency, and linear or YaRN scaling."""
    import gguf

    rope_type, params, theta = _rope(_as_dict(config))
    writer.add_rope_freq_base(theta)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        original = params.get("original_max_position_embeddings")
        if original:
            writer.add_rope_scaling_orig_ctx_len(int(original))


def rope_tensors(config: Any) -> list[PlannedTensor]:
    """For Llama 3.1-style RoPE scaling, the per-frequency factors llama.cpp reads (``rope_freqs``): the plain
    inverse frequencies divided by transformers' scaled ones."""
    import gguf

    cfg = _as_dict(config)
    rope_type, _, theta = _rope(cfg)
    if rope_type != "llama3":
        return []
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = _head_dim(cfg)
    plain = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, device="cpu")
    factors = (plain / scaled).float().numpy()
    name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
    return [PlannedTensor(name, tuple(factors.shape), gguf.GGMLQuantizationType.F32, lambda: factors)]


def model_metadata(writer, config: Any, arch: Architecture, quant: str) -> None:
    import gguf

    cfg = _as_dict(config)
    heads, kv_heads = _heads(cfg)
    head_dim = _head_dim(cfg)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(cfg.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    if arch.name == "llama":
        writer.add_rope_dimension_count(head_dim)
    if cfg.get("head_dim") or head_dim != int(cfg["hidden_size"]) // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


# ---- tokenizer -----------------------------------------------------------------------------------

def _flatten(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [item for sub in pre.get("pretokenizers", []) for item in _flatten(sub)]
    return [pre]


def _known_splits() -> dict[str, str]:
    """Split regex → llama.cpp pre-tokenizer name, from transformers' GGUF tables (the rules it reads back)."""
    splits: dict[str, list[str]] = {}
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # another transformers layout: at least Qwen2's rule
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        GGUF_PRE_TOKENIZER_SPLITS = {"qwen2": PRETOKENIZE_REGEX}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        splits.setdefault(regex, []).append(name)
    return {regex: next((p for p in _PREFERRED_PRE if p in names), names[0]) for regex, names in splits.items()}


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """The llama.cpp name of a byte-level BPE tokenizer's pre-tokenizer (how text is split before merging)."""
    items = _flatten(tokenizer_json.get("pre_tokenizer"))
    kinds = [item.get("type") for item in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and items[1].get("use_regex", True):
        return "smollm"  # GPT-2's rule after splitting digits one by one (SmolLM, StarCoder)
    if kinds == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
        regex = (items[0].get("pattern") or {}).get("Regex")
        name = _known_splits().get(regex)
        if name:
            return name
    raise WorkbenchError(
        "GGUF export: this byte-level BPE tokenizer splits text with a rule this exporter does not know "
        f"(pre_tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}), so llama.cpp would tokenize "
        f"differently; {CONVERT_HINT}"
    )


@dataclass
class Vocabulary:
    model: str  # llama.cpp tokenizer model: gpt2 | llama
    pre: str
    tokens: list[str | bytes]
    types: list[int]
    scores: list[float] | None
    merges: list[str]
    add_space_prefix: bool | None = None


def _byte_level_vocab(tokenizer, tokenizer_json: dict, n_vocab: int) -> Vocabulary:
    import gguf

    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab:
        raise WorkbenchError(f"GGUF export: the tokenizer has {len(vocab)} tokens but the model only {n_vocab} "
                             "embedding rows")
    by_id = {i: token for token, i in vocab.items()}
    added = {int(i): t for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows beyond the tokenizer (Qwen2.5 pads to a multiple of 128)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return Vocabulary("gpt2", bpe_pre_tokenizer(tokenizer_json), tokens, [int(t) for t in types], None, [])


def _sentencepiece_vocab(model_file: Path, n_vocab: int) -> Vocabulary:
    import gguf
    from gguf.vocab import SentencePieceVocab

    spm = SentencePieceVocab(model_file.parent)
    tokens, scores, types = [], [], []
    for text, score, kind in spm.all_tokens():
        tokens.append(text)
        scores.append(float(score))
        types.append(int(kind))
    if len(tokens) > n_vocab:
        raise WorkbenchError(f"GGUF export: the tokenizer has {len(tokens)} tokens but the model only {n_vocab} "
                             "embedding rows")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    add_space_prefix = None
    try:  # what llama.cpp's converter reads from the model's normalizer
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_file.read_bytes())
        add_space_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
    except Exception:
        pass
    return Vocabulary("llama", "default", tokens, types, scores, [], add_space_prefix)


def read_vocabulary(tokenizer, tokenizer_dirs: list[Path], n_vocab: int) -> Vocabulary:
    """The vocabulary in llama.cpp's terms, from the first directory holding tokenizer files."""
    tokenizer_json = None
    for directory in tokenizer_dirs:
        if (directory / "tokenizer.model").is_file():
            return _sentencepiece_vocab(directory / "tokenizer.model", n_vocab)
        if tokenizer_json is None and (directory / "tokenizer.json").is_file():
            tokenizer_json = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    if tokenizer_json is None:
        where = ", ".join(map(str, tokenizer_dirs))
        raise WorkbenchError(f"GGUF export: no tokenizer.json or tokenizer.model in {where}")
    model = tokenizer_json.get("model") or {}
    decoder = (tokenizer_json.get("decoder") or {}).get("type")
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder == "ByteLevel":
        return _byte_level_vocab(tokenizer, tokenizer_json, n_vocab)
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        raise WorkbenchError("GGUF export: this SentencePiece-style tokenizer needs its tokenizer.model file, which is "
                             f"not in {', '.join(map(str, tokenizer_dirs))}; copy it there from the original model")
    raise WorkbenchError(f"GGUF export: a {model.get('type')} tokenizer cannot be written (byte-level BPE and "
                         f"SentencePiece can); {CONVERT_HINT}")


def _adds(tokenizer, token_id: int | None, at_start: bool) -> bool:
    """Whether encoding a text adds this special token at its start (BOS) or end (EOS)."""
    if token_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if not with_special or with_special == plain:
        return False
    return (with_special[0] if at_start else with_special[-1]) == token_id


def tokenizer_metadata(writer, tokenizer, tokenizer_dirs: list[Path], n_vocab: int) -> Vocabulary:
    """Vocabulary, merges, special tokens, BOS/EOS behaviour and the chat template of ``tokenizer``."""
    from gguf.vocab import SpecialVocab

    vocab = read_vocabulary(tokenizer, tokenizer_dirs, n_vocab)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    source = next((d for d in tokenizer_dirs
                   if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()), tokenizer_dirs[0])
    special = SpecialVocab(source, load_merges=vocab.model == "gpt2", n_vocab=n_vocab)
    # The ids and BOS/EOS behaviour of the tokenizer Workbench trained with, not a guess from its files.
    special.special_token_ids = {}
    for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            special.special_token_ids[kind] = token_id
    special.add_special_token = {
        "bos": _adds(tokenizer, getattr(tokenizer, "bos_token_id", None), at_start=True),
        "eos": _adds(tokenizer, getattr(tokenizer, "eos_token_id", None), at_start=False),
    }
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    if vocab.model == "gpt2" and not special.merges:
        raise WorkbenchError(f"GGUF export: no BPE merges found in {source}")
    special.add_to_gguf(writer, quiet=True)
    return vocab


# ---- the two exports -----------------------------------------------------------------------------

def general_metadata(writer, *, kind: str, name: str, base_name: str, description: str) -> None:
    writer.add_type(kind)
    writer.add_name(name)
    writer.add_description(description)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base_name)


def write_model(model, tokenizer, tokenizer_dirs: list[Path], path: Path, *, quant: str, name: str,
                base_name: str, description: str, on_tensor: Callable[[int, int], None] | None = None) -> dict:
    """Write a (merged) transformers model and its tokenizer as one GGUF file."""
    config = model.config
    cfg = _as_dict(config)
    arch = check_model_config(cfg)
    n_vocab = int(model.get_input_embeddings().weight.shape[0])
    state_dict = model.state_dict()
    info: dict[str, Any] = {}

    def metadata(writer) -> None:
        general_metadata(writer, kind="model", name=name, base_name=base_name, description=description)
        model_metadata(writer, {**cfg, "vocab_size": n_vocab}, arch, quant)
        rope_metadata(writer, config)
        info["vocab"] = tokenizer_metadata(writer, tokenizer, tokenizer_dirs, n_vocab)

    tensors = plan_model_tensors(state_dict, cfg, arch, quant, extra=rope_tensors(config))
    size = write_gguf(path, arch.name, metadata, tensors, on_tensor=on_tensor)
    fallback = sorted({t.name for t in tensors if quant == "q8_0" and len(t.shape) > 1
                       and t.ggml_type.name != "Q8_0"})
    return {"architecture": arch.name, "tensors": len(tensors), "bytes": size, "quant": quant,
            "tokenizer": f"{info['vocab'].model} ({info['vocab'].pre})", "f16_fallback": fallback}


# ---- LoRA adapter --------------------------------------------------------------------------------

_PEFT_PREFIX = "base_model.model."


def _adapter_weights(adapter_dir: Path) -> Path:
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise WorkbenchError(f"{adapter_dir}: no adapter_model.safetensors (a GGUF LoRA is written from safetensors "
                             "weights; legacy .bin adapters are not read)")
    return path


def check_lora_adapter(config: dict, adapter_dir: Path, model_cfg: dict) -> None:
    """What llama.cpp's LoRA format cannot hold, refused before anything is written."""
    from safetensors import safe_open

    name = adapter_dir.name
    for key, what in (("use_dora", "DoRA"), ("lora_bias", "a LoRA bias (lora_bias)")):
        if config.get(key):
            raise WorkbenchError(f"adapter {name} uses {what}, which llama.cpp's GGUF LoRA format cannot hold; "
                                 "merge it into the model instead (export --format gguf without --adapter_only)")
    if config.get("modules_to_save"):
        raise WorkbenchError(f"adapter {name} trains {', '.join(config['modules_to_save'])} in full (modules_to_save "
                             "/ additional_target), which a GGUF LoRA adapter cannot hold; merge it into the model "
                             "instead (export --format gguf without --adapter_only)")
    with safe_open(str(_adapter_weights(adapter_dir)), framework="pt") as f:
        keys = list(f.keys())
    odd = [k for k in keys if ".lora_A." not in k and ".lora_B." not in k]
    if odd:
        raise WorkbenchError(f"adapter {name} holds {odd[0]}, which is not a LoRA A/B matrix of a linear layer; a GGUF "
                             "LoRA adapter cannot hold it: merge it into the model instead (export --format gguf "
                             "without --adapter_only)")
    if model_cfg.get("tie_word_embeddings") and any(k.endswith("lm_head.lora_A.weight") for k in keys):
        raise WorkbenchError(f"adapter {name} adapts lm_head, which this model ties to its embeddings (the base GGUF "
                             "has no output tensor to adapt); merge it into the model instead")


def _lora_pairs(adapter_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(module name in the base model, key of A, key of B) for every adapted linear layer."""
    from safetensors import safe_open

    with safe_open(str(_adapter_weights(adapter_dir)), framework="pt") as f:
        keys = set(f.keys())
    for key in sorted(keys):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        b_key = module + ".lora_B.weight"
        if b_key not in keys:
            raise WorkbenchError(f"{adapter_dir}: {key} has no matching lora_B")
        yield (module[len(_PEFT_PREFIX):] if module.startswith(_PEFT_PREFIX) else module), key, b_key


def _module_alpha(config: dict, module: str) -> float:
    pattern = config.get("alpha_pattern") or {}
    if pattern:
        from peft.utils.other import get_pattern_key

        key = get_pattern_key(list(pattern), module)
        if key in pattern:
            return float(pattern[key])
    return float(config.get("lora_alpha") or config.get("r") or 8)


def write_lora(adapter_dir: Path, adapter_config: dict, model_cfg: dict, path: Path, *, quant: str, name: str,
               base_name: str, description: str, on_tensor: Callable[[int, int], None] | None = None) -> dict:
    """Write one PEFT LoRA adapter as a llama.cpp GGUF LoRA adapter (no base weights are loaded)."""
    import gguf
    from safetensors import safe_open

    arch = check_model_config(model_cfg)
    check_lora_adapter(adapter_config, adapter_dir, model_cfg)
    name_map = gguf.get_tensor_name_map(arch.arch, int(model_cfg["num_hidden_layers"]))
    alpha = float(adapter_config.get("lora_alpha") or adapter_config.get("r") or 8)
    rslora = bool(adapter_config.get("use_rslora"))
    weights = str(_adapter_weights(adapter_dir))
    tensors: list[PlannedTensor] = []
    folded = 0
    with safe_open(weights, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for module, a_key, b_key in _lora_pairs(adapter_dir):
        base = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if base is None:
            raise WorkbenchError(f"adapter {adapter_dir.name} adapts {module}, which has no GGUF tensor for "
                                 f"{arch.name}; merge it into the model instead")
        rank = shapes[a_key][0]
        scaling = _module_alpha(adapter_config, module) / (math.sqrt(rank) if rslora else rank)
        factor = scaling * rank / alpha  # llama.cpp applies alpha / rank; fold the rest into B
        if not math.isclose(factor, 1.0, rel_tol=1e-6):
            folded += 1
        heads = _qk_heads(module + ".weight", model_cfg) if arch.permute_qk else None

        def load_a(key=a_key):
            with safe_open(weights, framework="pt") as f:
                return _numpy(f.get_tensor(key))

        def load_b(key=b_key, factor=factor, heads=heads):
            with safe_open(weights, framework="pt") as f:
                array = _numpy(f.get_tensor(key))
            if factor != 1.0:
                array = array * factor
            return permute_rows(array, heads) if heads else array

        for suffix, key, load in ((".lora_a", a_key, load_a), (".lora_b", b_key, load_b)):
            tensor_name = base + suffix
            tensors.append(PlannedTensor(tensor_name, shapes[key], tensor_type(tensor_name, shapes[key], quant), load))
    if not tensors:
        raise WorkbenchError(f"adapter {adapter_dir.name} has no LoRA weights")

    def metadata(writer) -> None:
        general_metadata(writer, kind="adapter", name=name, base_name=base_name, description=description)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)

    size = write_gguf(path, arch.name, metadata, tensors, on_tensor=on_tensor)
    return {"architecture": arch.name, "tensors": len(tensors), "bytes": size, "quant": quant, "alpha": alpha,
            "modules": len(tensors) // 2, "modules_with_scaling_folded_into_lora_b": folded}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata (arrays as their length), for records and tests."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            out[key] = len(field.data)
            continue
        try:
            out[key] = field.contents()
        except Exception:
            continue
    return out
