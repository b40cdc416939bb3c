"""Evaluation throughput: one-at-a-time ``generate`` against our batched generation, and the base + 3
adapters evaluated together (mixed adapter batches) against each evaluated on its own. Same run, same machine.

Setting (issue 7): the bundled SmolLM2-135M-Instruct in float32 on the CPU, greedy decoding, the first 32
examples (16 for the adapter comparison) of a demo task (default: translation,
``demo_translation_zh_en_test``) rendered with the model's chat template, the task's ``max_new_tokens``
(translation: 128; answers stop earlier at the end-of-turn token), batches of 16 rows, prompts sorted by
length as the runner does.

The machine is shared, so its load moves during a run: the two sides of each comparison are timed
*interleaved* — chunk by chunk, alternating which side goes first — and both see the same load.

* sequential — the plain baseline: ``model.generate`` on one unpadded prompt at a time.
* batched — ``workbench.infer.batch.generate_batch_output``, what the runner calls: rows of the scheduler
  (continuous batching, up to 16 rows side by side).
  The whole runner (``workbench.evaluate.runner.evaluate``, as ``python -m workbench eval`` runs it) is
  run once more on the same examples for its wall time and to compare its predictions.
* together — base + 3 LoRA adapters (random, small: they nudge the answers like a trained adapter), each
  batch of 16 rows = 4 prompts under all four models (one base projection + each row's LoRA delta).
* separately — each model on its own, batches of 16 prompts, the same 64 rows in all. Evaluating one
  checkpoint after another also loads the model four times instead of once; the load time is measured
  and added in the "with loading" figures.

Greedy outputs are compared after decoding (fp32: they should match; a difference would come from
padding changing float rounding, and is counted). Examples/s counts generate time only.
Usage: python bench/eval_throughput.py [--examples 32] [--adapter-examples 16] [--batch-size 16]
       [--max-new-tokens N] [--threads N]
Last output line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
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
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def random_lora(base_dir: str, out_dir: Path, seed: int) -> str:
    """A LoRA on q/v/o/down projections with small random A and B (B=0 would leave the model unchanged)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="translation")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--adapter-examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="most tokens per answer (default: the task's own, 128 for translation)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own, one per core). On a machine shared with other "
                             "work, 1 avoids threads spinning while their partner is descheduled")
    opts = parser.parse_args()
    if opts.batch_size % 4:
        parser.error("--batch-size must be a multiple of 4 (base + 3 adapters per prompt)")

    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    from workbench.config.eval import EvalArgs
    from workbench.config.generation import GenerationArgs
    from workbench.config.model import ModelArgs
    from workbench.data.templates import resolve_template
    from workbench.evaluate.runner import encode_examples, evaluate, load_predictions
    from workbench.evaluate.tasks import build_tasks
    from workbench.infer.batch import generate_batch_output
    from workbench.models.bundled import ensure_converted
    from workbench.models.loader import load_model

    quiet = lambda m: None  # noqa: E731
    model_dir = str(ensure_converted())
    model_args = ModelArgs(model_name_or_path="smollm2-135m-instruct", infer_dtype="float32", device="cpu")
    B = opts.batch_size
    n = max(opts.examples, opts.adapter_examples)
    (task,) = build_tasks([opts.task], max_samples=n, max_new_tokens=opts.max_new_tokens)
    opts.max_new_tokens = task.max_new_tokens
    gen = GenerationArgs(max_new_tokens=task.max_new_tokens)
    figures: dict = {"model": "smollm2-135m-instruct", "dtype": "float32", "device": "cpu",
                     "threads": torch.get_num_threads(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                     "task": task.name, "dataset": task.dataset, "max_new_tokens": opts.max_new_tokens,
                     "batch_size": B}

    started = time.perf_counter()
    loaded = load_model(model_args)
    load_plain = time.perf_counter() - started
    template = resolve_template("auto", model_args.model_name_or_path)
    stops = template.stop_token_ids(loaded.tokenizer)
    all_ids, _ = encode_examples(template, loaded.tokenizer, task.examples, None, None)
    model, tok = loaded.model, loaded.tokenizer

    def one(ids):
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=opts.max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(new) if t in stops), len(new))
        return tok.decode(new[:cut], skip_special_tokens=True).strip(), cut

    def timed(fn):
        began = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - began

    # ---- sequential vs batched, interleaved chunk by chunk ----
    ex = sorted(range(opts.examples), key=lambda i: -len(all_ids[i]))  # the runner's order
    one(all_ids[ex[-1]])  # warm-up: the first call allocates
    sequential, batched = {}, {}
    seq_s = bat_s = 0.0
    seq_tokens = bat_tokens = 0
    for c, start in enumerate(range(0, len(ex), B)):
        chunk = ex[start:start + B]

        def run_seq(chunk=chunk):
            return [one(all_ids[i]) for i in chunk]

        def run_bat(chunk=chunk):
            return generate_batch_output(loaded, [all_ids[i] for i in chunk], None, gen, stops)

        order = (run_seq, run_bat) if c % 2 == 0 else (run_bat, run_seq)
        for fn in order:
            value, spent = timed(fn)
            if fn is run_seq:
                seq_s += spent
                seq_tokens += sum(k for _, k in value)
                sequential.update({i: text for i, (text, _) in zip(chunk, value)})
            else:
                bat_s += spent
                bat_tokens += value.new_tokens
                batched.update(dict(zip(chunk, value.texts)))
        print(f"chunk {c + 1}: sequential {seq_s:.1f}s, batched {bat_s:.1f}s so far", flush=True)
    differ = [task.examples[i].id for i in ex if sequential[i] != batched[i]]
    figures.update({
        "examples": len(ex),
        "sequential_seconds": round(seq_s, 2), "sequential_examples_per_s": round(len(ex) / seq_s, 3),
        "sequential_new_tokens": seq_tokens,
        "batched_seconds": round(bat_s, 2), "batched_examples_per_s": round(len(ex) / bat_s, 3),
        "batched_new_tokens": bat_tokens,
        "speedup_batched_vs_sequential": round(seq_s / bat_s, 2),
        "outputs_compared": len(ex), "outputs_differ": len(differ), "outputs_differ_ids": differ,
    })
    del loaded, model

    with tempfile.TemporaryDirectory(prefix="wb-bench-eval-") as tmp:
        tmp = Path(tmp)
        # ---- the whole runner once: wall time and its predictions ----
        began = time.perf_counter()
        res = evaluate(model_args, EvalArgs(task=opts.task, max_samples=opts.examples, batch_size=B,
                                            max_new_tokens=opts.max_new_tokens),
                       gen, adapters={}, output_dir=tmp / "runner", log=quiet)
        runner_wall = time.perf_counter() - began
        runner_preds = [p["prediction"] for p in load_predictions(tmp / "runner", "base", task.name)]
        figures.update({
            "runner_generate_seconds": res["timing"]["generate_seconds"],
            "runner_examples_per_s": res["timing"]["examples_per_second"],
            "runner_wall_seconds_incl_load_and_scoring": round(runner_wall, 2),
            "runner_outputs_differ_from_sequential": sum(
                p != sequential[i] for i, p in enumerate(runner_preds)),
        })

        # ---- base + 3 adapters: together vs separately, interleaved round by round ----
        adapters = {f"lora{k}": random_lora(model_dir, tmp / f"lora{k}", k) for k in (1, 2, 3)}
        variants = ["base", *adapters]
        began = time.perf_counter()
        loaded = load_model(model_args, adapters=adapters)
        load_all = time.perf_counter() - began
        began = time.perf_counter()
        del loaded
        loaded_one = load_model(model_args, adapters={"lora1": adapters["lora1"]})
        load_one = time.perf_counter() - began
        del loaded_one
        loaded = load_model(model_args, adapters=adapters)
        m = opts.adapter_examples
        ad = sorted(range(m), key=lambda i: -len(all_ids[i]))
        per_call = B // len(variants)
        together: dict = {}
        alone: dict = {}
        tog_s = sep_s = 0.0
        together_calls = [ad[k:k + per_call] for k in range(0, m, per_call)]
        separate_calls = [(v, ad[k:k + B]) for v in variants for k in range(0, m, B)]
        for r in range(max(len(together_calls), len(separate_calls))):
            jobs = []
            if r < len(together_calls):
                chunk = together_calls[r]
                rows = [(i, v) for i in chunk for v in variants]
                jobs.append(("together", rows))
            if r < len(separate_calls):
                v, chunk = separate_calls[r]
                jobs.append(("alone", [(i, v) for i in chunk]))
            if r % 2:
                jobs.reverse()
            for kind, rows in jobs:
                out, spent = timed(lambda rows=rows: generate_batch_output(
                    loaded, [all_ids[i] for i, _ in rows], [None if v == "base" else v for _, v in rows], gen, stops))
                target = together if kind == "together" else alone
                target.update({(i, v): t for (i, v), t in zip(rows, out.texts)})
                if kind == "together":
                    tog_s += spent
                else:
                    sep_s += spent
            print(f"round {r + 1}: together {tog_s:.1f}s, separately {sep_s:.1f}s so far", flush=True)
        keys = [(i, v) for i in ad for v in variants]
        figures.update({
            "adapters_examples": m, "adapters_rows": len(keys),
            "together_generate_seconds": round(tog_s, 2), "separately_generate_seconds": round(sep_s, 2),
            "together_speedup_generate": round(sep_s / tog_s, 2),
            "load_seconds_base_plus_3_adapters": round(load_all, 2),
            "load_seconds_base_plus_1_adapter": round(load_one, 2),
            "load_seconds_base_only": round(load_plain, 2),
            # One load for all four, against four loads (the base, then each adapter on a fresh base).
            "together_seconds_with_loading": round(tog_s + load_all, 2),
            "separately_seconds_with_loading": round(sep_s + load_plain + 3 * load_one, 2),
            "together_speedup_with_loading": round((sep_s + load_plain + 3 * load_one) / (tog_s + load_all), 2),
            "together_vs_separately_outputs_differ": sum(together[k] != alone[k] for k in keys),
            "adapter_answers_that_differ_from_base": sum(together[(i, v)] != together[(i, "base")]
                                                         for i in ad for v in adapters),
        })
    figures["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews all
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
