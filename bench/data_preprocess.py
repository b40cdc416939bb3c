"""Preprocessing speed: Workbench's batched tokenisation with label masks vs the usual per-example approach.

Data: LLaMA-Factory's alpaca_en_demo (999 single-turn) + glaive_toolcall_en_demo (300 multi-turn, tools),
from ../shared/data, with the bundled SmolLM2 tokenizer carrying Qwen2.5's chat template (it renders tools,
unlike SmolLM2's own) and Workbench's ``qwen`` template.

* ours — ``Template.encode_supervised_batch``: render each conversation once, tokenise the whole batch in one
  fast-tokenizer call with offsets, labels from character spans (what ``build_dataset`` runs);
* baseline — the common recipe: per example and per assistant turn, ``apply_chat_template`` on the prefix
  (with the generation prompt) and on the prefix plus the answer, tokenised, the difference trained.

Both give the same input_ids (checked). Also timed: ``build_dataset`` cold vs from its cache.
Last line: one JSON object with the figures.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from workbench.paths import models_dir  # noqa: E402

os.environ.setdefault("WORKBENCH_MODELS", str(models_dir()))  # reuse the converted bundled model
os.environ["WORKBENCH_HOME"] = tempfile.mkdtemp(prefix="wb-bench-data-")  # a cold dataset cache


def baseline_encode(tokenizer, messages, tools):
    ids, labels = [], []
    hf = []
    for m in messages:
        h = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            h["tool_calls"] = [{"type": "function", "function": c} for c in m["tool_calls"]]
        hf.append(h)
    prev = 0
    for i, m in enumerate(hf):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(hf[:i], tools=tools, tokenize=True, add_generation_prompt=True)["input_ids"]
        upto = tokenizer.apply_chat_template(hf[: i + 1], tools=tools, tokenize=True)["input_ids"]
        ids = list(upto)
        labels = labels[:prev] + [-100] * (len(before) - prev) + list(upto[len(before):])
        prev = len(upto)
    return ids, labels


def main() -> None:
    from transformers import AutoTokenizer

    from workbench.config.data import DataArgs
    from workbench.data.loader import build_dataset, load_records
    from workbench.data.templates import get_template
    from workbench.models.bundled import ensure_converted

    lf = ROOT.parent / "shared" / "data" / "llamafactory"
    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(log=lambda m: None))
    records = load_records(DataArgs(dataset="alpaca_en_demo,glaive_toolcall_en_demo", dataset_dir=str(lf)),
                           log=lambda m: None)
    convs = [(r.messages, r.system, r.tools) for r in records]
    tokenizer.chat_template = (ROOT / "tests" / "data" / "qwen2_5_chat_template.jinja").read_text()
    template = get_template("qwen")  # renders what the Qwen2.5 jinja template renders, tools included

    started = time.perf_counter()
    ours = []
    for i in range(0, len(convs), 1000):
        ours += template.encode_supervised_batch(tokenizer, convs[i:i + 1000])
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    base = [baseline_encode(tokenizer, m, t) for m, _, t in convs]
    base_s = time.perf_counter() - started
    ids_equal = all(o[0] == b[0] for o, b in zip(ours, base))

    args = DataArgs(dataset="alpaca_en_demo,glaive_toolcall_en_demo", dataset_dir=str(lf), cutoff_len=1024,
                    template="qwen")
    started = time.perf_counter()
    build_dataset(args, tokenizer, "sft", log=lambda m: None)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    out = build_dataset(args, tokenizer, "sft", log=lambda m: None)
    cached_s = time.perf_counter() - started
    assert out["stats"]["cached"]

    n = len(convs)
    result = {
        "examples": n,
        "ours_examples_per_s": round(n / ours_s, 1),
        "baseline_examples_per_s": round(n / base_s, 1),
        "speedup_vs_baseline": round(base_s / ours_s, 2),
        "input_ids_identical": ids_equal,
        "build_dataset_cold_s": round(cold_s, 3),
        "build_dataset_cached_s": round(cached_s, 3),
        "cache_speedup": round(cold_s / cached_s, 1),
    }
    print(f"ours {ours_s:.2f}s, baseline {base_s:.2f}s for {n} conversations; build cold {cold_s:.2f}s, "
          f"cached {cached_s:.3f}s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
