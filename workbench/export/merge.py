"""Export: merge LoRA adapters into their base model (a standalone model that plain transformers
loads, or one GGUF file for llama.cpp / Ollama / LM Studio), write an adapter alone as a GGUF LoRA
adapter, or combine several adapters into one new adapter with PEFT's weighted adapter merging.
(The GGUF writing itself is :mod:`workbench.export.gguf`.)

All write into a hidden temporary directory (or file) beside the target and rename it into place at
the end, so a failure or an interruption leaves nothing half-written under the requested name.

Memory: the base model is loaded once and the adapters are merged into it in place
(``merge_and_unload``), so the peak is about one copy of the base plus the adapters and one layer's
scratch space; the peak resident memory is measured and recorded with every export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from workbench.config.base import OptionError, WorkbenchError
from workbench.config.export import (
    SAME_RANK_METHODS,
    ExportArgs,
    MergeAdaptersArgs,
)
from workbench.config.model import ModelArgs
from workbench.data.templates import get_template
from workbench.export.gguf import (
    check_lora_adapter,
    check_model_config,
    is_gguf_file,
    read_model_config,
    write_lora,
    write_model,
)
from workbench.models.adapters import read_adapter_config
from workbench.models.identity import other_base, same_model
from workbench.models.loader import attach_adapters, load_model, load_tokenizer, resolve_model_path
from workbench.paths import home, runs_dir
from workbench.rundir import ADAPTER_CONFIG, CONFIG_FILE, EXPORT_RECORD, RUN_RECORD, append_progress, timestamped

EXPORT, MERGE = "export", "merge-adapters"  # the two commands
# What marks a directory as an earlier export that --overwrite may replace.
EXPORT_MARKERS = (EXPORT_RECORD, RUN_RECORD, "config.json", ADAPTER_CONFIG)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Internal adapter names: users' names may collide with PEFT's "default" (the name saved at the top level).
_MERGED = "default"


def exports_dir() -> Path:
    """Where merged models go by default; the model pickers list what is here."""
    return Path(os.environ.get("WORKBENCH_EXPORTS") or home() / "exports").expanduser()


def list_exported_models() -> list[str]:
    """Merged model directories under :func:`exports_dir`, newest first (for the model pickers)."""
    root = exports_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
             and (p / EXPORT_RECORD).is_file() and (p / "config.json").is_file()]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


# ---- progress ------------------------------------------------------------------------------------

class Progress:
    """Numbered steps on stdout, and one JSON line per step in ``progress_file`` (what a Job's UI reads)."""

    def __init__(self, total: int, progress_file: str | Path | None = None,
                 echo: Callable[[str], None] | None = None):
        self.total, self.step_no, self.started = total, 0, time.perf_counter()
        self.file = Path(progress_file) if progress_file else None
        self.echo = echo or (lambda line: print(line, flush=True))

    def step(self, message: str) -> None:
        self.step_no += 1
        self._emit(message, self.step_no)

    def note(self, message: str) -> None:
        self.echo(f"note: {message}")

    def _emit(self, message: str, step: int) -> None:
        elapsed = time.perf_counter() - self.started
        self.echo(f"[{step}/{self.total}] {message}")
        if self.file is not None:
            record = {"step": step, "total_steps": self.total, "message": message, "elapsed": round(elapsed, 2),
                      "peak_rss_mb": peak_rss_mb()}
            append_progress(self.file, record)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ---- inputs --------------------------------------------------------------------------------------

@dataclass
class AdapterInfo:
    name: str
    path: Path
    config: dict
    run: dict = field(default_factory=dict)  # workbench_run.json of a training run, if any

    @property
    def rank(self) -> int:
        pattern = self.config.get("rank_pattern") or {}
        return max([int(self.config.get("r") or 0), *map(int, pattern.values())])

    @property
    def recorded_base(self) -> str | None:
        return self.run.get("base_model") or self.config.get("base_model_name_or_path")

    @property
    def quantization_bit(self) -> int | None:
        bits = self.run.get("quantization_bit")
        return int(bits) if bits else None


def read_adapters(adapters: dict[str, str]) -> list[AdapterInfo]:
    infos = []
    for name, path in adapters.items():
        path = Path(path).expanduser()
        config = read_adapter_config(path)
        peft_type = str(config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise WorkbenchError(f"adapter {name} ({path}) is a {peft_type} adapter; only LoRA adapters can be merged here")
        run: dict = {}
        run_file = path / RUN_RECORD
        if run_file.is_file():
            try:
                run = json.loads(run_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise WorkbenchError(f"{run_file}: not valid JSON ({exc})") from None
        infos.append(AdapterInfo(name, path.resolve(), config, run))
    return infos


def check_bases(model_name: str, infos: list[AdapterInfo]) -> None:
    """Adapters must come from one base model, and that base must be the model given."""
    recorded = [(i, i.recorded_base) for i in infos if i.recorded_base]
    if any(not same_model(base, recorded[0][1]) for _, base in recorded[1:]):
        listed = "; ".join(f"{i.name} → {base}" for i, base in recorded)
        raise WorkbenchError(
            f"the adapters were trained on different base models ({listed}); merge only adapters of one base model"
        )
    for info, _ in recorded:
        base = other_base(info.path, model_name)
        if base is not None:
            raise WorkbenchError(
                f"adapter {info.name} was trained on {base}, not on {model_name}; pass --model {base} "
                "(or --check_base false if that base model moved to another directory)"
            )


# ---- output directory ----------------------------------------------------------------------------

def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:80] or "export"


def default_out(command: str, model_name: str, adapter_names: list[str], method: str | None = None,
                opts: ExportArgs | None = None) -> Path:
    """A new directory for the result: exports/<model>-<adapters> for a merged model, runs/merged-<adapters>-<method>
    for a combined adapter (the runs directory is where the adapter pickers look); for a GGUF export a new file
    exports/<model>-<adapters>-<quant>.gguf (an adapter alone: exports/<adapter>-lora-<quant>.gguf)."""
    model_stem = Path(model_name.rstrip('/')).name
    if command == EXPORT and opts is not None and opts.is_gguf:
        parts = [*adapter_names, "lora"] if opts.adapter_only else [model_stem, *adapter_names]
        stem = safe_name("-".join([*parts, opts.quant]))
        path = exports_dir() / f"{stem}.gguf"
        if path.exists():
            path = exports_dir() / f"{timestamped(stem)}.gguf"
        return path
    if command == EXPORT:
        root, stem = exports_dir(), f"{model_stem}-{'-'.join(adapter_names)}"
    else:
        root, stem = runs_dir(), f"merged-{'-'.join(adapter_names)}-{method}"
    path = root / safe_name(stem)
    if path.exists() and any(path.iterdir()):
        path = root / timestamped(safe_name(stem))
    return path


def _describe(path: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output(out: Path, *, overwrite: bool, inputs: list[Path]) -> Path:
    """Refuse an unusable target before any work is done; return it absolute."""
    out = Path(os.path.abspath(out.expanduser()))
    if out.exists() and not out.is_dir():
        raise OptionError("out", f"{out} exists and is not a directory")
    for src in inputs:
        src = Path(os.path.abspath(src))
        if out == src or src in out.parents or out in src.parents:
            raise OptionError("out", f"{out} overlaps an input ({src}); write the result somewhere else")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OptionError(
                "out", f"{out} is not empty ({_describe(out)}); choose a new or empty directory, "
                "or pass --overwrite to replace an earlier export there",
            )
        if not any((out / marker).exists() for marker in EXPORT_MARKERS):
            raise OptionError(
                "out", f"{out} holds files that are not a model or adapter export ({_describe(out)}); "
                "--overwrite only replaces an earlier export, so remove them yourself or choose another directory",
            )
    return _writable_parent(out)


def _writable_parent(out: Path) -> Path:
    """The nearest existing ancestor must let us create the hidden staging entry beside the target."""
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise OptionError("out", f"cannot write to {out}: {ancestor} is not a writable directory")
    return out


def check_output_file(out: Path, *, overwrite: bool, inputs: list[Path]) -> Path:
    """Like :func:`check_output`, for a one-file export (GGUF): refuse an unusable target before any work."""
    out = Path(os.path.abspath(out.expanduser()))
    if out.is_dir():
        raise OptionError("out", f"{out} is a directory; a GGUF export is one file: give a path ending in .gguf")
    if not out.name.lower().endswith(".gguf"):
        raise OptionError("out", f"{out}: a GGUF export is one file; give a path ending in .gguf")
    for src in inputs:
        src = Path(os.path.abspath(src))
        if src in out.parents:
            raise OptionError("out", f"{out} lies inside an input ({src}); write the GGUF file somewhere else")
    if out.exists():
        if not overwrite:
            raise OptionError("out", f"{out} already exists; choose a new file name, or pass --overwrite to replace "
                                     "an earlier GGUF export")
        if not is_gguf_file(out):
            raise OptionError("out", f"{out} is not a GGUF file; --overwrite only replaces an earlier GGUF export, so "
                                     "remove it yourself or choose another name")
    return _writable_parent(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Staging:
    """A hidden entry beside the target (``.NAME.partial-PID``) that becomes the target only when everything is
    written; parents it had to create are removed again on failure. Subclasses say what the entry is."""

    def __init__(self, out: Path, overwrite: bool):
        self.out, self.overwrite = out, overwrite
        self.created_parents: list[Path] = []
        self.path = out.parent / f".{out.name}.partial-{os.getpid()}"

    def __enter__(self):
        self._remove_stale()
        missing = []
        parent = self.out.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            for directory in reversed(missing):
                directory.mkdir()
                self.created_parents.append(directory)
            self._create()
        except OSError as exc:
            self._cleanup()
            raise OptionError("out", f"cannot write to {self.out} ({exc.strerror or exc})") from None
        return self

    def _remove_stale(self) -> None:
        """Leftovers of an earlier export to this target whose process was killed outright (SIGKILL)."""
        if not self.out.parent.is_dir():
            return
        for path in self.out.parent.glob(f".{self.out.name}.partial-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                self._remove(path)

    def _cleanup(self) -> None:
        self._remove(self.path)
        for directory in reversed(self.created_parents):
            try:
                directory.rmdir()
            except OSError:
                pass

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.path.exists():
            self._cleanup()

    def _create(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _remove(path: Path) -> None:
        raise NotImplementedError


class StagingDir(_Staging):
    """A staging directory for a merged model or a combined adapter."""

    def _create(self) -> None:
        self.path.mkdir()

    @staticmethod
    def _remove(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def publish(self) -> None:
        """Rename the finished directory into place (replacing an earlier export only with overwrite)."""
        out = self.out
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            if not self.overwrite:  # something appeared while we worked
                raise OptionError("out", f"{out} was created by someone else while exporting; nothing was replaced")
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            self.path.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.path.rename(out)
        self.created_parents = []


class StagingFile(_Staging):
    """A staging file for a GGUF export."""

    def _create(self) -> None:
        self.path.touch()

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)

    def publish(self) -> None:
        if self.out.exists() and not self.overwrite:
            raise OptionError("out", f"{self.out} was created by someone else while exporting; nothing was replaced")
        os.replace(self.path, self.out)
        self.created_parents = []


# ---- export: adapters merged into the base model ------------------------------------------------

def _config_dtype(model_path: str) -> str:
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return dtype if dtype in ("bfloat16", "float16", "float32") else "float32"


def _quantization_of(infos: list[AdapterInfo], model_args: ModelArgs) -> dict:
    """The 4/8-bit settings the adapters were trained with (QLoRA), from their run records."""
    if model_args.quantization_bit:
        return {"quantization_bit": model_args.quantization_bit, "quantization_type": model_args.quantization_type,
                "double_quantization": model_args.double_quantization}
    bits = {i.name: i.quantization_bit for i in infos}
    if len(set(bits.values())) > 1:
        listed = ", ".join(f"{n}: {b or 'none'}" for n, b in bits.items())
        raise WorkbenchError(f"the adapters were trained on differently quantized bases ({listed}); export them one at a time")
    first = infos[0]
    if not first.quantization_bit:
        return {}
    settings = {"quantization_bit": first.quantization_bit}
    config_file = first.path / CONFIG_FILE
    if config_file.is_file():  # the training run's resolved options hold the 4-bit type and double quantization
        try:
            resolved = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            resolved = {}
        flat = {k: v for section in resolved.values() if isinstance(section, dict) for k, v in section.items()}
        flat.update({k: v for k, v in resolved.items() if not isinstance(v, dict)})
        for key in ("quantization_type", "double_quantization"):
            if key in flat:
                settings[key] = flat[key]
    return settings


def _template_note(infos: list[AdapterInfo], tokenizer) -> tuple[str | None, str | None]:
    """The chat template the adapter was trained with, and a note when the saved tokenizer's differs."""
    names = {i.run.get("template") for i in infos if i.run.get("template")}
    if len(names) != 1:
        return None, None
    name = names.pop()
    if name in ("auto", "jinja") or not getattr(tokenizer, "chat_template", None):
        return name, None
    try:
        sample = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
                  {"role": "user", "content": "What is 2+2?"}]
        ours = get_template(name).render(tokenizer, sample, add_generation_prompt=True)
        theirs = tokenizer.apply_chat_template(sample, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render this sample; nothing to compare
        return name, None
    if ours.strip() == theirs.strip():
        return name, None
    return name, (f"the adapter was trained with chat template {name!r}, which differs from the tokenizer's own "
                  f"chat template saved with the model; the workbench's template 'auto' uses {name!r} for this model "
                  f"(recorded in {EXPORT_RECORD}), other tools need template {name!r} chosen by hand")


def _verify_saved(staging: Path, expected: int) -> None:
    """Every tensor made it to disk, and no adapter weights leaked into the merged model."""
    from safetensors import safe_open

    keys: list[str] = []
    for shard in sorted(staging.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys.extend(f.keys())
    leftovers = [k for k in keys if ".lora_" in k or "base_layer" in k]
    if leftovers:
        raise WorkbenchError(f"internal error: the merged weights still hold adapter tensors ({leftovers[0]})")
    if len(keys) < expected:
        raise WorkbenchError(f"internal error: {len(keys)} tensors saved, {expected} expected")


def export_steps(opts: ExportArgs, adapter_count: int) -> int:
    """How many progress steps :func:`merge_into_model` / :func:`export_adapter_gguf` report."""
    if opts.is_gguf and opts.adapter_only:
        return 3
    return 7 if adapter_count else 5


def _display_name(model_name: str) -> str:
    return Path(str(model_name).rstrip("/")).name or str(model_name)


@dataclass
class _Merge:
    """What the steps of :func:`merge_into_model` share, once the request is checked."""

    model_args: ModelArgs
    opts: ExportArgs
    infos: list[AdapterInfo]
    model_path: str
    out: Path
    dtype_name: str
    quant: dict  # the QLoRA settings the adapters were trained with; empty for a full-precision base
    progress: Progress
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.infos]

    def tokenizer_source(self) -> str:
        """An adapter's own tokenizer (it may add tokens), else the base model's."""
        return next((str(i.path) for i in self.infos if any((i.path / f).is_file() for f in TOKENIZER_FILES)),
                    self.model_path)


def merge_into_model(model_args: ModelArgs, adapters: dict[str, str], opts: ExportArgs, *,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Merge ``adapters`` into the base model and save a standalone model into ``opts.out``: safetensors shards, or
    with ``format: gguf`` one GGUF file (then no adapter means: the base model itself, converted).

    Returns the record (output path, dtype, shards or GGUF details, notes, peak memory); a safetensors export also
    writes it to ``workbench_export.json``.
    """
    import torch

    if opts.is_gguf and opts.adapter_only:
        return export_adapter_gguf(model_args, adapters, opts, progress=progress)
    progress = progress or Progress(export_steps(opts, len(adapters)))
    started = time.perf_counter()
    if not adapters and not opts.is_gguf:
        raise OptionError("adapter", "give the adapter to merge: --adapter DIR (or NAME=DIR; repeat for several)")
    progress.step("checking the model, the adapter(s) and the output directory")
    merge = _check_merge(model_args, adapters, opts, progress)
    out = merge.out
    with (StagingFile(out, opts.overwrite) if opts.is_gguf else StagingDir(out, opts.overwrite)) as staging:
        loaded, model = _load_and_merge(merge)
        write = _write_gguf if opts.is_gguf else _write_safetensors
        record = write(merge, model, staging.path)
        record.update({
            "device": loaded.device,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": peak_rss_mb(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        if str(loaded.device).startswith("cuda"):
            record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if not opts.is_gguf:
            (staging.path / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        progress.step(f"moving the finished {'file' if opts.is_gguf else 'model'} into place: {out}")
        staging.publish()
    record["out"] = str(out)
    return record


def _check_merge(model_args: ModelArgs, adapters: dict[str, str], opts: ExportArgs, progress: Progress) -> _Merge:
    """The adapters, their base, the output path, the dtype and any QLoRA settings, before anything is loaded."""
    infos = read_adapters(adapters)
    if opts.check_base:
        check_bases(model_args.model_name_or_path, infos)
    model_path = resolve_model_path(model_args.model_name_or_path)
    if opts.is_gguf:
        check_model_config(read_model_config(model_path))
    names = [i.name for i in infos]
    out = Path(opts.out) if opts.out else default_out(EXPORT, model_args.model_name_or_path, names, opts=opts)
    inputs = [Path(model_path), *(i.path for i in infos)]
    out = (check_output_file(out, overwrite=opts.overwrite, inputs=inputs) if opts.is_gguf
           else check_output(out, overwrite=opts.overwrite, inputs=inputs))
    dtype_name = opts.dtype if opts.dtype != "auto" else _config_dtype(model_path)
    quant = _quantization_of(infos, model_args) if infos else {}
    return _Merge(model_args, opts, infos, model_path, out, dtype_name, quant, progress)


def _load_and_merge(merge: _Merge):
    """The base model loaded (dequantized for a QLoRA adapter), the adapters merged in, cast to the export dtype;
    returns (what load_model returned, the merged model)."""
    import torch

    model_args, quant, dtype_name, progress = merge.model_args, merge.quant, merge.dtype_name, merge.progress
    load_args = ModelArgs(**{**model_args.to_dict(), "model_name_or_path": merge.model_path, "infer_dtype": dtype_name,
                             "adapter_name_or_path": None, **quant})
    progress.step(f"loading the base model {model_args.model_name_or_path} ({dtype_name}"
                  f"{', %d-bit as in training' % quant['quantization_bit'] if quant else ''})")
    loaded = load_model(load_args, adapters={})
    model = loaded.model
    if quant:
        # A QLoRA adapter learned its update against the quantized weights, so it is merged into those
        # weights dequantized: the merged model then answers like the quantized base + adapter did.
        model = model.dequantize(dtype=loaded.dtype)
        merge.notes.append(
            f"QLoRA: the adapter was trained on a {quant['quantization_bit']}-bit base, so it was merged into the "
            f"dequantized {quant['quantization_bit']}-bit weights (saved as {dtype_name}), not into the original "
            "full-precision weights, so the merged model answers like the quantized base + adapter did"
        )
    if merge.infos:
        progress.step(f"attaching {len(merge.infos)} adapter(s): {', '.join(merge.names)}")
        named = {i.name: str(i.path) for i in merge.infos}
        peft_model = attach_adapters(model, named, base_label=model_args.model_name_or_path)
        progress.step("merging the adapter weights into the base weights")
        # In place (not PEFT's safe_merge, which clones each weight): the loaded weights are memory-mapped
        # copy-on-write, so adding the update in place costs no second copy of the model.
        model = peft_model.merge_and_unload(safe_merge=False, adapter_names=list(named))
        del peft_model
    broken = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if broken is not None:
        raise WorkbenchError(f"merging produced NaN or infinite values in {broken}: the adapter seems to be broken")
    target_dtype = getattr(torch, dtype_name)
    if model.dtype != target_dtype:
        model = model.to(target_dtype)
    model.config.dtype = target_dtype
    return loaded, model


def _write_gguf(merge: _Merge, model, staging: Path) -> dict[str, Any]:
    """The merged model as one GGUF file; returns its record."""
    model_args, opts, names, notes = merge.model_args, merge.opts, merge.names, merge.notes
    tokenizer_src = merge.tokenizer_source()
    merge.progress.step("reading the tokenizer and chat template")
    tokenizer = load_tokenizer(tokenizer_src, padding_side="left", trust_remote_code=model_args.trust_remote_code)
    template, template_note = _template_note(merge.infos, tokenizer)
    if template_note:
        notes.append(f"the adapter was trained with chat template {template!r}, which differs from the "
                     "tokenizer's own chat template that the GGUF carries; in llama.cpp or Ollama give a "
                     "matching template by hand (llama-cli --chat-template, a Modelfile TEMPLATE)")
    base = _display_name(model_args.model_name_or_path)
    name = f"{base} + {', '.join(names)}" if names else base
    description = (f"Workbench export: {base} with the adapter(s) {', '.join(names)} merged in"
                   if names else f"Workbench export of {base}")
    merge.progress.step(f"writing the GGUF file ({opts.quant}) to {merge.out}")
    info = write_model(model, tokenizer, [Path(tokenizer_src), Path(merge.model_path)], staging,
                       quant=opts.quant, name=name, base_name=base, description=description)
    fallback = info["f16_fallback"]
    if fallback:
        notes.append(f"{len(fallback)} tensor(s) have rows that are not a multiple of 32 and were stored as f16 "
                     f"instead of q8_0 (as llama.cpp does): {', '.join(fallback[:3])}"
                     f"{' ...' if len(fallback) > 3 else ''}")
    return {"kind": "gguf_model", "format": "gguf", "quant": opts.quant,
            "base_model": model_args.model_name_or_path, "base_model_path": merge.model_path,
            "adapters": {i.name: str(i.path) for i in merge.infos}, "template": template, "dtype": merge.dtype_name,
            "architecture": info["architecture"], "tokenizer": info["tokenizer"], "tensors": info["tensors"],
            "bytes": info["bytes"], "quantization_merged_from": merge.quant.get("quantization_bit"), "notes": notes}


def _write_safetensors(merge: _Merge, model, staging: Path) -> dict[str, Any]:
    """The merged model as safetensors shards with its tokenizer; returns its record."""
    opts = merge.opts
    # Tied weights (lm_head = embed_tokens) are stored once: count distinct tensors.
    expected = len({t.data_ptr() for t in model.state_dict().values()})
    merge.progress.step(f"saving safetensors shards of at most {opts.shard_size} into {merge.out}")
    model.save_pretrained(staging, max_shard_size=opts.shard_size)
    if model.generation_config is not None and not (staging / "generation_config.json").exists():
        model.generation_config.save_pretrained(staging)
    _verify_saved(staging, expected)

    merge.progress.step("saving the tokenizer and chat template")
    tokenizer = load_tokenizer(merge.tokenizer_source(), padding_side="left",
                               trust_remote_code=merge.model_args.trust_remote_code)
    tokenizer.save_pretrained(str(staging))
    template, template_note = _template_note(merge.infos, tokenizer)
    if template_note:
        merge.notes.append(template_note)
    shards = sorted(p.name for p in staging.glob("*.safetensors"))
    return {
        "kind": "merged_model",
        "format": "safetensors",
        "base_model": merge.model_args.model_name_or_path,
        "base_model_path": merge.model_path,
        "adapters": {i.name: str(i.path) for i in merge.infos},
        "template": template,
        "dtype": merge.dtype_name,
        "shard_size": opts.shard_size,
        "shards": shards,
        "quantization_merged_from": merge.quant.get("quantization_bit"),
        "notes": merge.notes,
    }


def export_adapter_gguf(model_args: ModelArgs, adapters: dict[str, str], opts: ExportArgs, *,
                        progress: Progress | None = None) -> dict[str, Any]:
    """Write one LoRA adapter alone as a llama.cpp GGUF LoRA adapter (the base model's weights are not loaded)."""
    progress = progress or Progress(export_steps(opts, len(adapters)))
    started = time.perf_counter()
    if len(adapters) != 1:
        raise OptionError("adapter_only", f"writes one adapter per GGUF file, got {len(adapters)}; give one --adapter "
                                          "(export several one at a time, or merge them into the model)")
    progress.step("checking the model, the adapter and the output file")
    infos = read_adapters(adapters)
    info = infos[0]
    if opts.check_base:
        check_bases(model_args.model_name_or_path, infos)
    model_path = resolve_model_path(model_args.model_name_or_path)
    model_cfg = read_model_config(model_path)
    check_adapter_gguf(info, model_cfg)
    out = Path(opts.out) if opts.out else default_out(EXPORT, model_args.model_name_or_path, [info.name], opts=opts)
    out = check_output_file(out, overwrite=opts.overwrite, inputs=[Path(model_path), info.path])
    notes = []
    if info.quantization_bit:
        notes.append(f"QLoRA: the adapter was trained on a {info.quantization_bit}-bit base; applied to a "
                     "full-precision base GGUF it answers slightly differently than in training (merging it into the "
                     "model uses the dequantized weights instead)")
    base = _display_name(model_args.model_name_or_path)
    with StagingFile(out, opts.overwrite) as staging:
        progress.step(f"writing the GGUF LoRA adapter ({opts.quant}) to {out}")
        written = write_lora(info.path, info.config, model_cfg, staging.path, quant=opts.quant,
                             name=f"{info.name} (LoRA for {base})", base_name=base,
                             description=f"Workbench export: LoRA adapter {info.name} for {base}")
        if written["modules_with_scaling_folded_into_lora_b"]:
            notes.append(f"{written['modules_with_scaling_folded_into_lora_b']} module(s) are scaled other than "
                         "lora_alpha / r (rsLoRA or rank/alpha patterns): that scaling is folded into lora_b, since "
                         "llama.cpp applies adapter.lora.alpha / r")
        progress.step(f"moving the finished file into place: {out}")
        staging.publish()
    return {"kind": "gguf_lora", "format": "gguf", "quant": opts.quant, "base_model": model_args.model_name_or_path,
            "base_model_path": model_path, "adapters": {info.name: str(info.path)}, "alpha": written["alpha"],
            "architecture": written["architecture"], "tensors": written["tensors"], "bytes": written["bytes"],
            "notes": notes, "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": peak_rss_mb(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "out": str(out)}


def check_adapter_gguf(info: AdapterInfo, model_cfg: dict) -> None:
    check_model_config(model_cfg)
    check_lora_adapter(info.config, info.path, model_cfg)


# ---- merge-adapters: several adapters combined into one -----------------------------------------

def check_combinable(infos: list[AdapterInfo], method: str) -> None:
    # PEFT's add_weighted_adapter silently builds a wrong adapter from these variants (peft issue #3761):
    # refuse them rather than write one. (rsLoRA is corrected below, see _fix_rslora_scaling.)
    unsupported = {"use_dora": "DoRA", "lora_bias": "a LoRA bias (lora_bias)", "kasa_config": "KaSA"}
    for info in infos:
        for key, what in unsupported.items():
            if info.config.get(key):
                raise WorkbenchError(
                    f"adapter {info.name} ({info.path}) uses {what}, which PEFT's weighted adapter merging does not "
                    "combine correctly; merge it into the model with export instead"
                )
    ranks = {i.name: i.rank for i in infos}
    if method in SAME_RANK_METHODS and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{n}: r={r}" for n, r in ranks.items())
        raise OptionError(
            "method",
            f"{method} needs adapters of equal rank, but they differ ({listed}); use cat (exact, rank "
            f"{sum(ranks.values())}) or svd (approximate, rank {max(ranks.values())} unless svd_rank is set)",
        )
    kinds = {type(i.config.get("target_modules")).__name__ for i in infos}
    if len(kinds) > 1:
        listed = ", ".join(f"{i.name}: {i.config.get('target_modules')!r}" for i in infos)
        raise WorkbenchError(
            f"the adapters name their target modules in different forms (a list vs a regular expression: {listed}); "
            "PEFT cannot combine those"
        )


def _fix_rslora_scaling(peft_model, name: str) -> None:
    """PEFT gives the combined adapter lora_alpha = r, i.e. scaling 1, but keeps use_rslora from the first
    input, which would scale it by sqrt(r) instead; the inputs' scalings are already folded in.
    (peft 0.21 has this bug, see peft PR #3449 / issue #3761; on a fixed peft this changes nothing.)"""
    from peft.tuners.lora import LoraLayer

    config = peft_model.peft_config[name]
    if not getattr(config, "use_rslora", False):
        return
    config.use_rslora = False
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.scaling[name] = 1.0


def combine_adapters(model_args: ModelArgs, adapters: dict[str, str], opts: MergeAdaptersArgs, *,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Combine ``adapters`` into one new adapter (standard PEFT layout) in ``opts.out``."""
    progress = progress or Progress(5)
    started = time.perf_counter()
    if len(adapters) < 2:
        raise OptionError("adapter", f"merge-adapters needs at least two adapters, got {len(adapters)}; "
                          "to merge one adapter into the model, use export")
    weights = opts.weight_list(len(adapters))
    progress.step("checking the adapters and the output directory")
    infos = read_adapters(adapters)
    check_combinable(infos, opts.method)
    if opts.check_base:
        check_bases(model_args.model_name_or_path, infos)
    model_path = resolve_model_path(model_args.model_name_or_path)
    out = Path(opts.out) if opts.out else default_out(MERGE, model_args.model_name_or_path, [i.name for i in infos],
                                                      opts.method)
    out = check_output(out, overwrite=opts.overwrite, inputs=[Path(model_path), *(i.path for i in infos)])

    with StagingDir(out, opts.overwrite) as staging:
        progress.step(f"loading the base model {model_args.model_name_or_path} and {len(infos)} adapters")
        internal = {f"input{n}": str(i.path) for n, i in enumerate(infos)}
        load_args = ModelArgs(**{**model_args.to_dict(), "model_name_or_path": model_path,
                                 "adapter_name_or_path": None, "quantization_bit": None})
        loaded = load_model(load_args, adapters=internal)
        peft_model = loaded.model
        density = opts.effective_density
        progress.step(f"combining with {opts.method} (weights {', '.join(f'{w:g}' for w in weights)}"
                      f"{f', density {density:g}' if density is not None else ''})")
        try:
            peft_model.add_weighted_adapter(
                adapters=list(internal), weights=weights, adapter_name=_MERGED, combination_type=opts.method,
                svd_rank=opts.svd_rank, density=density,
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise WorkbenchError(f"PEFT could not combine the adapters with {opts.method}: {exc}") from None
        _fix_rslora_scaling(peft_model, _MERGED)
        merged_config = peft_model.peft_config[_MERGED]

        progress.step(f"saving the combined adapter (rank {merged_config.r}) into {out}")
        peft_model.save_pretrained(str(staging.path), selected_adapters=[_MERGED])
        loaded.tokenizer.save_pretrained(str(staging.path))
        templates = {i.run.get("template") for i in infos if i.run.get("template")}
        record = {
            "stage": next((i.run["stage"] for i in infos if i.run.get("stage")), "sft"),
            "finetuning_type": "lora",
            "base_model": model_args.model_name_or_path,
            "template": templates.pop() if len(templates) == 1 else None,
            "dataset": ",".join(i.run["dataset"] for i in infos if i.run.get("dataset")) or None,
            "quantization_bit": None,
            "merged_from": [{"name": i.name, "path": str(i.path), "weight": w, "r": i.rank}
                            for i, w in zip(infos, weights)],
            "merge_method": opts.method,
            "density": density,
            "r": merged_config.r,
            "target_modules": sorted(merged_config.target_modules) if isinstance(merged_config.target_modules, (set, list))
            else merged_config.target_modules,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": peak_rss_mb(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging.path / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        progress.step(f"moving the finished adapter into place: {out}")
        staging.publish()
    record["out"] = str(out)
    return record
