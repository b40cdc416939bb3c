"""Chat latency on the bundled SmolLM2-135M-Instruct (CPU by default), through the engine chat, compare, the API
and evaluation use (the continuous-batching scheduler), in float32 and in bfloat16:

* TTFT — from submitting a short greedy prompt to its first token (median of --repeats), base and an adapter row;
* decode tokens/s — one answer of 64 tokens, after its first token;
* the memory-bandwidth bound for that dtype, measured in the same run: bytes of weights read per token (every
  parameter once, tied embeddings once) ÷ the measured copy bandwidth (a 512 MiB tensor copied, read + write
  bytes counted as STREAM does) → ``share_of_bound``;
* compare — base + 1 adapter and base + 3 adapters side by side, every row a fixed 64 new tokens (only the pad
  token stops a row, and the model does not write it), as a ratio to ONE answer alone;
* the same one answer and compare batches through transformers' forward (the scheduler with ``lean=False``),
  interleaved with the lean forward: ``lean_forward_speedup*``.

Adapters: random LoRA (rank 8 on all 7 linear layers, like the quick start) made here in a temp directory.
Aims (issue 15): decode >= 60% of the bandwidth bound, TTFT <= 300 ms, base + 1 <= 1.3x, base + 3 <= 1.6x.
Usage: python bench/chat_latency.py [--device cpu|cuda] [--repeats N] [--dtypes float32,bfloat16].
The bandwidth probe and each dtype run in their own process (one process' allocations skewed the next figure).
Last line: one JSON object (the headline keys are for the bfloat16 run where it ran, else float32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 64
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(model_dir: Path, root: Path, n: int) -> dict[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for i in range(n):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS,
                                                      init_lora_weights=False))
        path = root / f"adapter{i + 1}"
        peft_model.save_pretrained(path)
        out[f"adapter{i + 1}"] = str(path)
    return out


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large tensor copy (read + write), best of 5."""
    import torch

    src = torch.empty(512 * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def measure(dtype: str, device: str, adapters: dict[str, str], repeats: int, bandwidth: float) -> dict:
    from workbench.config.generation import GenerationArgs
    from workbench.config.model import ModelArgs
    from workbench.infer.engine import ChatEngine, RowHandle, RowSpec
    from workbench.infer.session import load_for_chat

    started = time.perf_counter()
    loaded = load_for_chat(ModelArgs(model_name_or_path="smollm2-135m-instruct", device=device, infer_dtype=dtype),
                           adapters)
    load_seconds = time.perf_counter() - started
    engine = ChatEngine(loaded)
    names = list(adapters)
    short = GenerationArgs(max_new_tokens=8)
    engine.chat(PROMPT, short)  # warm-up (first calls allocate)
    engine.chat(PROMPT, short, variant=names[0])

    def ttft(variant):
        times = []
        for _ in range(repeats):
            row = engine.stream(PROMPT, short, variant=variant)
            next(iter(row))
            times.append(row.first_token_at - row.created_at)
            row.wait()
        return statistics.median(times)

    ttft_base, ttft_adapter = ttft(None), ttft(names[0])
    ids = engine.spec(PROMPT, short).prompt_ids
    gen = GenerationArgs(max_new_tokens=NEW_TOKENS)
    no_stop = [loaded.tokenizer.pad_token_id]  # every row runs its 64 steps
    scheduler = engine.scheduler

    def timed(variants):
        rows = [RowHandle(RowSpec(ids, v, NEW_TOKENS)) for v in variants]
        t0 = time.perf_counter()
        for row in rows:
            scheduler.submit(row, gen, no_stop)
        for row in rows:
            row.wait()
        assert all(len(r.token_ids) == NEW_TOKENS for r in rows), [len(r.token_ids) for r in rows]
        return time.perf_counter() - t0, rows

    timed([None])
    # Interleaved, so every side sees the same machine load; medians of the repeats.
    sides = {"one": [None], "plus1": [None, names[0]], "plus3": [None, *names]}
    times = {k: [] for k in sides}
    decode = []
    for _ in range(repeats):
        for key, variants in sides.items():
            seconds, rows = timed(variants)
            times[key].append(seconds)
            if key == "one":
                decode.append((NEW_TOKENS - 1) / (rows[0].finished_at - rows[0].first_token_at))
    one, plus1, plus3 = (statistics.median(times[k]) for k in ("one", "plus1", "plus3"))
    tokens_per_s = statistics.median(decode)
    lean_path = scheduler.stats()["forward"]
    # The same answers through transformers' forward (the scheduler without its lean forward), interleaved with
    # the lean forward again: the lean forward's speed-up for one answer and for each compare batch.
    forwards = {(lean, key): [] for lean in (True, False) for key in sides}
    decode_rates = {True: [], False: []}
    for _ in range(repeats):
        for lean in (True, False):
            scheduler.lean = lean
            for key, variants in sides.items():
                seconds, rows = timed(variants)
                forwards[lean, key].append(seconds)
                if key == "one":
                    decode_rates[lean].append((NEW_TOKENS - 1) / (rows[0].finished_at - rows[0].first_token_at))
    scheduler.lean = True
    med = {k: statistics.median(v) for k, v in forwards.items()}
    bound = bandwidth / weight_bytes(loaded.model)
    engine.close("benchmark over")
    return {
        "dtype": str(loaded.dtype).replace("torch.", ""), "load_seconds_base_plus_3": round(load_seconds, 2),
        "prompt_tokens": len(ids), "ttft_ms_base": round(ttft_base * 1000, 1),
        "ttft_ms_adapter": round(ttft_adapter * 1000, 1), "decode_tokens_per_s": round(tokens_per_s, 1),
        "weight_mib": round(weight_bytes(loaded.model) / 2**20, 1),
        "bound_tokens_per_s": round(bound, 1), "share_of_bound": round(tokens_per_s / bound, 3),
        "forward": lean_path,
        "decode_tokens_per_s_transformers_forward": round(statistics.median(decode_rates[False]), 1),
        "lean_forward_speedup": round(statistics.median(decode_rates[True]) / statistics.median(decode_rates[False]), 2),
        "lean_forward_speedup_base_plus_1": round(med[False, "plus1"] / med[True, "plus1"], 2),
        "lean_forward_speedup_base_plus_3": round(med[False, "plus3"] / med[True, "plus3"], 2),
        "base_plus_1_ratio_transformers_forward": round(med[False, "plus1"] / med[False, "one"], 2),
        "base_plus_3_ratio_transformers_forward": round(med[False, "plus3"] / med[False, "one"], 2),
        "one_answer_s": round(one, 3), "base_plus_1_batch_s": round(plus1, 3), "base_plus_1_ratio": round(plus1 / one, 2),
        "base_plus_3_batch_s": round(plus3, 3), "base_plus_3_ratio": round(plus3 / one, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one dtype (or 'bandwidth'), print JSON
    parser.add_argument("--adapters-dir", help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "bandwidth":
        print(json.dumps(copy_bandwidth(args.device)))
        return 0
    if args.worker:
        adapters = {p.name: str(p) for p in sorted(Path(args.adapters_dir).iterdir())}
        print(json.dumps(measure(args.worker, args.device, adapters, args.repeats, args.bandwidth)))
        return 0

    import torch

    from workbench.models.bundled import ensure_converted

    model_dir = Path(ensure_converted())
    tmp_dir = tempfile.TemporaryDirectory(prefix="wb-bench-chat-")  # removed when the script ends
    make_adapters(model_dir, Path(tmp_dir.name), 3)

    # Each measurement in its own process: in one process, decoding after the 1 GiB bandwidth copy (or after the
    # other dtype's run) was up to 2x slower here (2-core EPYC VM), which would measure the allocator, not the engine.
    def worker(*extra: str) -> dict | float:
        argv = [sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats), *extra]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(extra)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    bandwidth = worker("--worker", "bandwidth")
    runs = {}
    for dtype in args.dtypes.split(","):
        runs[dtype] = worker("--worker", dtype, "--adapters-dir", tmp_dir.name, "--bandwidth", str(bandwidth))
        print(dtype, json.dumps(runs[dtype]), flush=True)
    head = runs.get("bfloat16") or next(iter(runs.values()))
    from workbench.machine import cpu_model

    cpu = cpu_model()
    result = {
        "device": args.device, "cpu": cpu, "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2), "model": "smollm2-135m-instruct",
        "adapters": "random LoRA r=8 on all 7 linear layers", "new_tokens_per_row": NEW_TOKENS,
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2), "repeats": args.repeats,
        **{k: v for k, v in head.items()},
        **{f"{k}_{d}": v for d, r in runs.items() for k, v in r.items()
           if k in ("decode_tokens_per_s", "bound_tokens_per_s", "share_of_bound", "ttft_ms_base", "lean_forward_speedup",
                    "lean_forward_speedup_base_plus_1", "lean_forward_speedup_base_plus_3",
                    "base_plus_1_ratio", "base_plus_3_ratio")},
        "aim_share_of_bound_ge_60pct": head["share_of_bound"] >= 0.6, "aim_ttft_le_300ms": head["ttft_ms_base"] <= 300,
        "aim_base_plus_1_le_1_3x": head["base_plus_1_ratio"] <= 1.3,
        "aim_base_plus_3_le_1_6x": head["base_plus_3_ratio"] <= 1.6,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
