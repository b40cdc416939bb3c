"""Chat latency on the bundled SmolLM2-135M-Instruct (CPU by default): time to first token, decode speed,
and base + adapters answering in ONE batch compared with one answer alone.

* TTFT — from the engine call (template, tokenise, start generating) to the first streamed text, short
  prompt, greedy; median of several runs (base, and an adapter row);
* decode tokens/s — one answer, after its first token;
* compare — base + 1 adapter and base + 3 adapters in one ``generate`` (PEFT mixed adapter batch), each
  row a fixed 64 new tokens (the end-of-turn token does not stop them, so every run does the same work),
  as a ratio to ONE answer alone; and the baseline the peers use, base then adapter in two passes.

Adapters: random LoRA (rank 8 on all linear layers, like the quick start) made here in a temp directory.
Aims (issue 6): TTFT <= 300 ms for a short prompt, base + 1 adapter <= 1.3x one answer.
Usage: python bench/chat_latency.py [--device cpu|cuda] [--repeats N]. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from workbench.config.generation import GenerationArgs
    from workbench.config.model import ModelArgs
    from workbench.infer.engine import ChatEngine, RowHandle, RowSpec, generate_rows
    from workbench.infer.session import load_for_chat
    from workbench.models.bundled import ensure_converted

    model_dir = Path(ensure_converted())
    tmp_dir = tempfile.TemporaryDirectory(prefix="wb-bench-chat-")  # removed when the script ends
    adapters = make_adapters(model_dir, Path(tmp_dir.name), 3)
    started = time.perf_counter()
    loaded = load_for_chat(ModelArgs(model_name_or_path="smollm2-135m-instruct", device=args.device), adapters)
    load_seconds = time.perf_counter() - started
    engine = ChatEngine(loaded)
    names = list(adapters)

    # -- TTFT and decode speed through the streaming path the UI, CLI and API use ------------------
    short = GenerationArgs(max_new_tokens=8)
    engine.chat(PROMPT, short)  # warm-up (first call allocates)
    engine.chat(PROMPT, short, variant=names[0])

    def ttft(variant):
        times = []
        for _ in range(args.repeats):
            row = engine.stream(PROMPT, short, variant=variant)
            next(iter(row))  # the first text delta
            times.append(time.perf_counter() - row.created_at)
            row.wait()
        return statistics.median(times)

    ttft_base = ttft(None)
    ttft_adapter = ttft(names[0])
    prompt_tokens = len(engine.spec(PROMPT, short).prompt_ids)

    # -- fixed-length batches: the same 64 new tokens for every row ---------------------------------
    ids = engine.spec(PROMPT, short).prompt_ids
    gen = GenerationArgs(max_new_tokens=NEW_TOKENS)
    # Only the pad token stops a row (and the model does not write it here), so every row runs 64 steps.
    no_stop = [loaded.tokenizer.pad_token_id]

    def timed(variants: list[str | None]) -> tuple[float, list[RowHandle]]:
        rows = [RowHandle(RowSpec(ids, v, NEW_TOKENS)) for v in variants]
        t0 = time.perf_counter()
        with engine.lock:
            generate_rows(loaded, rows, gen, no_stop)
        return time.perf_counter() - t0, rows

    def median_time(variants):
        runs = [timed(variants) for _ in range(args.repeats)]
        for _, rows in runs:
            assert all(len(r.token_ids) == NEW_TOKENS for r in rows), [len(r.token_ids) for r in rows]
        return statistics.median(t for t, _ in runs), runs[-1][1]

    timed([None])  # warm-up
    one, rows = median_time([None])
    decode = (NEW_TOKENS - 1) / (rows[0].finished_at - rows[0].first_token_at)
    one_adapter, _ = median_time([names[0]])
    plus1, _ = median_time([None, names[0]])
    plus3, _ = median_time([None, *names])
    sequential = statistics.median(timed([None])[0] + timed([names[0]])[0] for _ in range(args.repeats))

    result = {
        "device": loaded.device, "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2), "model": "smollm2-135m-instruct (float32)",
        "adapters": "random LoRA r=8 on all 7 linear layers", "load_seconds_base_plus_3": round(load_seconds, 2),
        "prompt_tokens": prompt_tokens, "ttft_ms_base": round(ttft_base * 1000, 1),
        "ttft_ms_adapter": round(ttft_adapter * 1000, 1), "decode_tokens_per_s": round(decode, 1),
        "new_tokens_per_row": NEW_TOKENS,
        "one_answer_s": round(one, 3), "one_adapter_answer_s": round(one_adapter, 3),
        "base_plus_1_batch_s": round(plus1, 3), "base_plus_1_ratio": round(plus1 / one, 2),
        "base_plus_3_batch_s": round(plus3, 3), "base_plus_3_ratio": round(plus3 / one, 2),
        "base_then_adapter_two_passes_s": round(sequential, 3),
        "batched_vs_two_passes_speedup": round(sequential / plus1, 2),
        "aim_ttft_le_300ms": ttft_base <= 0.300, "aim_base_plus_1_le_1_3x": plus1 / one <= 1.3,
        "repeats": args.repeats,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
