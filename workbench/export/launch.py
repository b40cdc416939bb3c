"""The Export tab's path: check a request at once (:func:`preflight`), then run ``export`` or ``merge-adapters``
as a Job (:func:`start_export_job`) with the exact argv the command line would use."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from workbench.config.base import OptionError, option_flags
from workbench.config.export import ExportArgs, MergeAdaptersArgs
from workbench.export.merge import (
    EXPORT,
    MERGE,
    check_adapter_gguf,
    check_bases,
    check_combinable,
    check_output,
    check_output_file,
    default_out,
    read_adapters,
    safe_name,
)
from workbench.jobs import store as jobs
from workbench.paths import PROJECT_ROOT, run_path
from workbench.rundir import PROGRESS_FILE, timestamped


def command_argv(command: str, model_name: str, adapters: dict[str, str], opts: ExportArgs | MergeAdaptersArgs,
                 progress_file: str | Path | None = None) -> list[str]:
    """The exact ``python -m workbench export|merge-adapters ...`` argv for these options."""
    argv = [sys.executable, "-m", "workbench", command, "--model", model_name]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    argv += option_flags(opts.to_dict(non_default_only=True))
    if progress_file is not None:
        argv += ["--progress-file", str(progress_file)]
    return argv


def preflight(command: str, model_name: str, adapters: dict[str, str], opts: ExportArgs | MergeAdaptersArgs) -> Path:
    """The quick checks the command makes before loading anything, so a form gets its answer at once;
    returns the output directory the command will write."""
    gguf = command == EXPORT and opts.is_gguf
    if command == MERGE:
        if len(adapters) < 2:
            raise OptionError("adapter", f"combining needs at least two adapters, got {len(adapters)}")
        opts.weight_list(len(adapters))
    elif gguf and opts.adapter_only and len(adapters) != 1:
        raise OptionError("adapter_only", f"writes one adapter per GGUF file; choose exactly one adapter "
                                          f"(got {len(adapters)})")
    elif not adapters and not gguf:
        raise OptionError("adapter", "choose the adapter to merge into the model")
    infos = read_adapters(adapters)
    if command == MERGE:
        check_combinable(infos, opts.method)
    if opts.check_base:
        check_bases(model_name, infos)
    if gguf:
        config = _local_model_config(model_name)
        if config is not None:  # a hub model is checked by the command, once it is resolved
            from workbench.export.gguf import check_model_config

            check_model_config(config)
            if opts.adapter_only:
                check_adapter_gguf(infos[0], config)
    names = [i.name for i in infos]
    out = (Path(opts.out) if opts.out
           else default_out(command, model_name, names, getattr(opts, "method", None), opts=opts if gguf else None))
    model_dir = Path(model_name).expanduser()
    inputs = [*(i.path for i in infos), *([model_dir] if model_dir.exists() else [])]
    if gguf:
        return check_output_file(out, overwrite=opts.overwrite, inputs=inputs)
    return check_output(out, overwrite=opts.overwrite, inputs=inputs)


def _local_model_config(model_name: str) -> dict | None:
    """config.json of a local model directory or of the converted bundled model, without loading or converting."""
    from workbench.export.gguf import read_model_config
    from workbench.models import registry

    path = Path(model_name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return read_model_config(path)
    info = registry.lookup(model_name)
    if info is not None and info.bundled:
        from workbench.models.bundled import cached_dir, is_converted

        if is_converted():
            return read_model_config(cached_dir())
    return None


def start_export_job(command: str, model_name: str, adapters: dict[str, str],
                     opts: ExportArgs | MergeAdaptersArgs):
    """Check the request, then run the command as a Job; returns (job, output directory)."""
    out = preflight(command, model_name, adapters, opts)
    opts = replace(opts, out=str(out))
    name = safe_name(f"{command}-{out.name}")[:100]
    if run_path(name).exists():
        name = timestamped(name[:80])
    argv = command_argv(command, model_name, adapters, opts, progress_file=run_path(name) / PROGRESS_FILE)
    config = {"command": command, "model_name_or_path": model_name, "adapters": dict(adapters), **opts.to_dict()}
    # Exclusive: a merge holds a whole model in memory, so it waits for training or evaluation to finish.
    job = jobs.start_job("export", name, argv, config, exclusive=True, cwd=PROJECT_ROOT)
    return job, out


