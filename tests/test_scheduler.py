"""The continuous-batching scheduler (workbench/infer/scheduler.py) on the tiny model in float32: its greedy answers
equal PEFT's own ``generate`` row by row (rows joining mid-flight, mixed adapters of different ranks and targets,
chunked prefill, DoRA through PEFT's path), callers share decode steps, and unloading or detaching ends the rows
it concerns with a message."""

from __future__ import annotations

import threading

import pytest

from chat_helpers import make_adapter
from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.infer.engine import ChatEngine, RowHandle, RowSpec
from workbench.infer.scheduler import EngineClosedError, Scheduler
from workbench.infer.session import ModelManager, load_for_chat

PROMPTS = ["Hello, who are you?", "Write a long story about a dragon who learns to cook. " * 6, "2+2?"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sched-adapters")
    return {"a": str(make_adapter(tiny_model_dir, root / "a", seed=1, r=8,
                                  targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"))),
            "b": str(make_adapter(tiny_model_dir, root / "b", seed=2, r=4, targets=("q_proj", "v_proj")))}


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapters):
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32"), adapters)
    return ChatEngine(loaded, "smollm2")


def peft_greedy(engine: ChatEngine, ids: list[int], adapter: str | None, new_tokens: int, **sampling) -> list[int]:
    """What PEFT's own generate answers for one row alone (the reference the engine must equal)."""
    import torch

    import contextlib

    x = torch.tensor([ids])
    stops = engine.stop_token_ids()
    model = engine.loaded.model
    if any(getattr(m, "use_dora", {}).get(adapter) for m in model.modules()) or adapter is None:
        # PEFT refuses adapter_names with DoRA: the reference is the adapter made active (or all disabled)
        context = model.disable_adapter() if adapter is None else contextlib.nullcontext(model.set_adapter(adapter))
        kwargs = {}
    else:
        context, kwargs = contextlib.nullcontext(), {"adapter_names": [adapter]}
    with torch.inference_mode(), context:
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=stops[0], **kwargs, **sampling)
    tokens = out[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    return tokens[:cut]


def ids_for(engine, text: str) -> list[int]:
    return engine.spec([{"role": "user", "content": text}], GenerationArgs()).prompt_ids


def test_fast_lora_path_is_used_and_rows_equal_peft_generate(engine):
    gen = GenerationArgs(max_new_tokens=20)
    specs = [RowSpec(ids_for(engine, p), v, 20) for p in PROMPTS for v in (None, "a", "b")]
    batch = engine.start(specs, gen)
    batch.wait()
    assert engine.scheduler._multilora is not None  # plain LoRA adapters: base projection once + deltas
    for spec, row in zip(specs, batch.rows):
        assert row.token_ids == peft_greedy(engine, spec.prompt_ids, spec.adapter, 20), (spec.adapter, len(spec.prompt_ids))


def test_rows_joining_a_running_batch_answer_as_if_alone(engine):
    """A row submitted while others are mid-answer joins at the next step (its cache merged, left-padded) and
    still answers exactly what it answers alone; the first row is not disturbed."""
    gen = GenerationArgs(max_new_tokens=40)
    first = engine.submit(RowSpec(ids_for(engine, PROMPTS[0]), "a", 40), gen)
    started = iter(first)
    next(started)  # the first row is decoding
    late = [engine.submit(RowSpec(ids_for(engine, p), v, 12), gen) for p, v in ((PROMPTS[1], None), (PROMPTS[2], "b"))]
    for row in (first, *late):
        row.wait()
    assert first.token_ids == peft_greedy(engine, first.spec.prompt_ids, "a", 40)
    for row in late:
        assert row.token_ids == peft_greedy(engine, row.spec.prompt_ids, row.spec.adapter, 12)
    assert engine.scheduler.largest_batch >= 2


def test_two_callers_share_decode_steps(engine):
    """Two threads asking at once: the second answer starts streaming before the first one finishes."""
    gen = GenerationArgs(max_new_tokens=120)
    long_row = engine.submit(RowSpec(ids_for(engine, PROMPTS[0]), None, 120), gen)
    next(iter(long_row))
    seen: dict[str, int] = {}

    def second():
        row = engine.submit(RowSpec(ids_for(engine, PROMPTS[2]), "a", 5), GenerationArgs(max_new_tokens=5))
        row.wait()
        seen["long_tokens_when_second_done"] = len(long_row.token_ids)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join()
    long_row.wait()
    assert seen["long_tokens_when_second_done"] < 120  # the short answer did not wait for the long one


def test_chunked_prefill_equals_whole_prefill_and_lets_others_decode(engine):
    """A prompt prefilled in 8-token chunks answers like one prefilled whole; meanwhile a running row goes on."""
    scheduler = Scheduler(engine.loaded, chunk_tokens=8)
    try:
        gen = GenerationArgs(max_new_tokens=60)
        stops = engine.stop_token_ids()
        running = scheduler.submit(RowHandle(RowSpec(ids_for(engine, PROMPTS[0]), "b", 60)), gen, stops)
        next(iter(running))
        before = len(running.token_ids)
        long_ids = ids_for(engine, PROMPTS[1])
        assert len(long_ids) > 80
        long_row = scheduler.submit(RowHandle(RowSpec(long_ids, "a", 10)), GenerationArgs(max_new_tokens=10), stops)
        next(iter(long_row))
        assert len(running.token_ids) - before >= 3 or running.done  # it decoded while the long prompt prefilled
        long_row.wait()
        running.wait()
        assert long_row.token_ids == peft_greedy(engine, long_ids, "a", 10)
        assert running.token_ids == peft_greedy(engine, running.spec.prompt_ids, "b", 60)
    finally:
        scheduler.close("test over")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prompts_arriving_together_are_prefilled_in_one_padded_batch(tiny_model_dir, adapters, attention):
    """Rows of different prompt lengths and adapters submitted at once go through one left-padded prefill (the
    padding masked: a boolean mask for SDPA, an additive one for eager attention) and still answer exactly what
    each answers alone."""
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32",
                                     attn_implementation=attention), adapters)
    engine = ChatEngine(loaded, "smollm2")
    try:
        texts = [PROMPTS[2], PROMPTS[0], "Name three colours of the rainbow, please.", PROMPTS[2] + " And 3+3?"]
        specs = [RowSpec(ids_for(engine, t), v, 16) for t, v in zip(texts, (None, "a", "b", "a"))]
        assert len({len(s.prompt_ids) for s in specs}) == 4  # every row but the longest is padded
        batch = engine.start(specs, GenerationArgs(max_new_tokens=16))
        batch.wait()
        assert engine.scheduler.largest_prefill == 4
        for spec, row in zip(specs, batch.rows):
            assert row.token_ids == peft_greedy(engine, spec.prompt_ids, spec.adapter, 16), spec.adapter
    finally:
        engine.close("test over")


def test_repetition_penalty_matches_transformers(engine):
    ids = ids_for(engine, PROMPTS[0])
    row = engine.submit(RowSpec(ids, "a", 24), GenerationArgs(max_new_tokens=24, repetition_penalty=1.3)).wait()
    assert row.token_ids == peft_greedy(engine, ids, "a", 24, repetition_penalty=1.3)


def test_a_seed_reproduces_a_sampled_answer(engine):
    ids = ids_for(engine, PROMPTS[0])
    sampled = GenerationArgs(max_new_tokens=16, do_sample=True, temperature=1.0, seed=7)
    one = engine.submit(RowSpec(ids, None, 16), sampled).wait().token_ids
    two = engine.submit(RowSpec(ids, None, 16), sampled).wait().token_ids
    other = engine.submit(RowSpec(ids, None, 16), GenerationArgs(max_new_tokens=16, do_sample=True,
                                                                   temperature=1.0, seed=8)).wait().token_ids
    assert one == two and one != other


def test_dora_adapter_goes_through_peft_and_matches(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                                     init_lora_weights=False)).save_pretrained(tmp_path / "dora")
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32"),
                           {"d": str(tmp_path / "dora")})
    engine = ChatEngine(loaded, "smollm2")
    try:
        ids = ids_for(engine, PROMPTS[0])
        batch = engine.start([RowSpec(ids, None, 12), RowSpec(ids, "d", 12)], GenerationArgs(max_new_tokens=12))
        batch.wait()
        assert engine.scheduler._multilora is None  # DoRA rescales outputs: PEFT's mixed-batch forward
        assert batch.rows[1].token_ids == peft_greedy(engine, ids, "d", 12)
        assert batch.rows[0].token_ids == peft_greedy(engine, ids, None, 12)
    finally:
        engine.close("test over")


def test_unload_and_detach_end_the_rows_they_concern(tiny_model_dir, adapters):
    manager = ModelManager()
    manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir), infer_dtype="float32"), dict(adapters))
    engine = manager.engine("smollm2")
    ids = ids_for(engine, PROMPTS[0])
    gen = GenerationArgs(max_new_tokens=400)
    on_a = engine.submit(RowSpec(ids, "a", 400), gen)
    on_base = engine.submit(RowSpec(ids, None, 30), GenerationArgs(max_new_tokens=30))
    next(iter(on_a))
    manager.detach("a")
    with pytest.raises(WorkbenchError, match="adapter 'a' was detached while it was answering"):
        on_a.wait()
    assert on_base.wait().finish_reason in ("length", "stop")
    running = engine.submit(RowSpec(ids, "b", 400), gen)
    waiting = [engine.submit(RowSpec(ids, None, 400), gen) for _ in range(20)]  # more than max_rows: some queue
    next(iter(running))
    manager.unload()
    for row in (running, *waiting):
        with pytest.raises(EngineClosedError, match="the model was unloaded; the answer was stopped"):
            row.wait()
    with pytest.raises(WorkbenchError, match="no model is loaded"):
        manager.engine()
