"""Peak memory of ``python -m workbench export`` on the bundled model, against a baseline process that
only loads the same model and reads every weight once (the "loaded model itself": safetensors are
memory-mapped, so an untouched model is not resident yet). The issue allows about one extra copy.

Usage: python bench/export_memory.py   (last line: one JSON object with the figures)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = """
import json, resource
from workbench.config.model import ModelArgs
from workbench.models.loader import load_model
import torch
loaded = load_model(ModelArgs(model_name_or_path="smollm2-135m-instruct", infer_dtype="float32"), adapters={})
# Weights are memory-mapped lazily: read every one, as a model in use would, so all of it is resident.
with torch.no_grad():
    total = sum(float(p.sum()) for p in loaded.model.parameters())
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_adapter(model_dir: Path, out: Path) -> Path:
    """A rank-16 LoRA on every attention and MLP projection, with non-zero B (like a trained adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(out)
    (out / "workbench_run.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct"}))
    return out


def main() -> int:
    from workbench.models.bundled import ensure_converted

    model_dir = Path(ensure_converted())
    weights_mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**20
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        adapter = make_adapter(model_dir, Path(tmp) / "adapter")
        baseline = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, env=env, cwd=ROOT)
        if baseline.returncode != 0:
            sys.stderr.write(baseline.stderr)
            return 1
        baseline_mb = json.loads(baseline.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        out = Path(tmp) / "merged"
        progress = Path(tmp) / "progress.jsonl"
        export = subprocess.run(
            [sys.executable, "-m", "workbench", "export", "--model", "smollm2-135m-instruct", "--adapter", str(adapter),
             "--out", str(out), "--dtype", "float32", "--progress-file", str(progress)],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )
        if export.returncode != 0:
            sys.stderr.write(export.stderr)
            return 1
        record = json.loads((out / "workbench_export.json").read_text())
        steps = [json.loads(line) for line in progress.read_text().splitlines()]
    for s in steps:
        print(f"  after step {s['step'] - 1} → before '{s['message'][:60]}': peak {s['peak_rss_mb']:.0f} MiB")
    extra = record["peak_rss_mb"] - baseline_mb
    figures = {
        "model_weights_mb": round(weights_mb, 1),
        "baseline_load_peak_rss_mb": round(baseline_mb, 1),
        "export_peak_rss_mb": record["peak_rss_mb"],
        "extra_over_loaded_model_mb": round(extra, 1),
        "extra_in_model_copies": round(extra / weights_mb, 2),
        "export_seconds": record["seconds"],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
