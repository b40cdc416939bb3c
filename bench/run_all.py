"""Run every benchmark in bench/ (one after another: they share 2 cores) and print each one's figures.

Each script's last output line is one JSON object; this collects them into bench/results/latest.json.
Usage: python bench/run_all.py [name ...]   (e.g. train_throughput chat_latency)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    unknown = sorted(set(names) - {p.stem for p in scripts})
    if unknown:
        print(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(p.stem for p in scripts)}",
              file=sys.stderr)
        return 2
    if names:
        scripts = [p for p in scripts if p.stem in names]
    results, failed = {}, []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        sys.stdout.write(proc.stdout[-4000:])
        lines = [l for l in proc.stdout.strip().splitlines() if l.strip()]
        if proc.returncode != 0 or not lines:
            failed.append(script.name)
            sys.stderr.write(proc.stderr[-4000:])
            continue
        try:
            results[script.stem] = json.loads(lines[-1])
        except ValueError:
            failed.append(script.name)
        print(f"   ({time.perf_counter() - started:.0f}s)", flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    sys.path.insert(0, str(HERE.parent))
    from workbench.machine import cpu_has_native_bf16, cpu_model

    summary = {"machine": {"cpu": cpu_model(), "native_bf16": cpu_has_native_bf16(), "cpu_count": os.cpu_count(),
                           "platform": platform.platform()}, "results": results}
    (out / "latest.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
