"""The chat engine on the tiny model with two random LoRA adapters: streaming, per-row stops, compare in one
batch (equal to each variant alone), tool turns, context limits; ModelManager attach/detach and base checks."""

from __future__ import annotations

import json
import threading

import pytest

from chat_helpers import make_adapter
from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.infer.engine import (
    ChatEngine, ContextLengthError, RowHandle, RowSpec, ToolsNotSupportedError, parse_tools, strip_tool_calls,
)
from workbench.infer.session import ModelManager, load_for_chat

HI = [{"role": "user", "content": "Hello, who are you?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-adapters")
    return {"a": str(make_adapter(tiny_model_dir, root / "a", seed=1)),
            "b": str(make_adapter(tiny_model_dir, root / "b", seed=2, targets=("q_proj", "v_proj", "o_proj")))}


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapters):
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir)), adapters)
    return ChatEngine(loaded, "smollm2")


def gen(**kw) -> GenerationArgs:
    return GenerationArgs(**{"max_new_tokens": 12, **kw})


def test_stream_deltas_make_the_reply(engine):
    row = engine.stream(HI, gen(), variant="a")
    deltas = list(row)
    reply = engine.reply(row)
    assert len(deltas) > 1 and "".join(deltas) == row.text
    assert reply.text == row.text.strip() and reply.finish_reason == "length"
    assert reply.completion_tokens == 12 and reply.prompt_tokens == len(row.spec.prompt_ids)
    assert reply.ttft is not None and reply.ttft <= reply.seconds


def test_compare_in_one_batch_equals_each_variant_alone(engine):
    alone = {v: engine.stream(HI, gen(), variant=v).wait().text for v in engine.variants}
    assert len(set(alone.values())) == 3, "the adapters must change the answer"
    batch = engine.compare(HI, gen())
    assert [r.label for r in batch.rows] == ["base", "a", "b"]
    batch.wait()
    assert {r.label: r.text for r in batch.rows} == alone


def test_compare_with_per_variant_histories_of_different_lengths(engine):
    long_history = HI + [{"role": "assistant", "content": "I am a test."},
                         {"role": "user", "content": "Tell me more about the weather in Paris, in detail please."}]
    histories = {"base": HI, "b": long_history}
    batch = engine.compare(histories, gen())
    batch.wait()
    assert len(batch.rows[0].spec.prompt_ids) < len(batch.rows[1].spec.prompt_ids)  # rows are left-padded
    assert batch.rows[0].text == engine.stream(HI, gen()).wait().text
    assert batch.rows[1].text == engine.stream(long_history, gen(), variant="b").wait().text


def test_updates_follow_every_row_until_done(engine):
    batch = engine.compare(HI, gen(max_new_tokens=6), variants=["base", "a"])
    seen = 0
    for _ in batch.updates():
        seen += 1
    assert batch.done and seen >= 2 and all(r.finish_reason == "length" for r in batch.rows)


def test_stop_string_cuts_the_answer(engine):
    full = engine.stream(HI, gen(max_new_tokens=16), variant="a").wait().text
    assert len(full) > 6
    stop = full[3:6]
    cut = full.index(stop)
    spec = RowSpec(engine.spec(HI, gen(max_new_tokens=16), variant="a").prompt_ids, "a", 16, (stop,))
    row = engine.start([spec], gen(max_new_tokens=16)).rows[0].wait()
    assert row.text == full[:cut] and row.finish_reason == "stop"


def test_per_row_limits_and_cancel_in_one_batch(engine):
    ids = engine.spec(HI, gen()).prompt_ids
    batch = engine.start([RowSpec(ids, None, 3), RowSpec(ids, "a", 9)], gen(max_new_tokens=9))
    batch.wait()
    assert [len(r.token_ids) for r in batch.rows] == [3, 9]
    # Cancelling one row of a long batch stops that row; the other goes on to its limit.
    batch = engine.start([RowSpec(ids, "a", 400), RowSpec(ids, "b", 30)], gen(max_new_tokens=400))
    first = next(iter(batch.rows[0]))
    assert first
    batch.rows[0].cancel()
    batch.wait()
    assert batch.rows[0].finish_reason == "cancelled" and len(batch.rows[0].token_ids) < 400
    assert batch.rows[1].finish_reason == "length" and len(batch.rows[1].token_ids) == 30


def test_generations_never_interleave(engine):
    """Two threads asking at once: each answer equals the answer it gets alone (the lock serialises batches)."""
    expected = {v: engine.stream(HI, gen(), variant=v).wait().text for v in ("a", "b")}
    results = {}

    def ask(v):
        results[v] = engine.chat(HI, gen(), variant=v).text

    threads = [threading.Thread(target=ask, args=(v,)) for v in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {v: t.strip() for v, t in expected.items()}


def test_unknown_variant_and_empty_conversation(engine):
    with pytest.raises(WorkbenchError, match="unknown model or adapter 'c'; available: base, a, b"):
        engine.stream(HI, gen(), variant="c")
    with pytest.raises(WorkbenchError, match="at least one message"):
        engine.stream([], gen())


def test_prompt_longer_than_the_context(engine):
    long = [{"role": "user", "content": "word " * 2100}]
    with pytest.raises(ContextLengthError, match=r"the prompt is \d+ tokens, but .* context of 2048 tokens"):
        engine.stream(long, gen())
    near = [{"role": "user", "content": "word " * 2000}]
    ids, room = engine.encode(near, max_new_tokens=500)
    assert room == 2048 - len(ids)  # chat: the answer is shortened to fit
    with pytest.raises(ContextLengthError, match="lower max_tokens"):
        engine.encode(near, max_new_tokens=500, strict_length=True)


def test_tools_json_is_checked():
    assert parse_tools("") is None
    assert parse_tools('{"name": "f"}') == [{"type": "function", "function": {"name": "f"}}]
    assert parse_tools([WEATHER_TOOL]) == [WEATHER_TOOL]
    with pytest.raises(WorkbenchError, match=r"tools: not valid JSON \(line 1, column 3"):
        parse_tools("[{oops}]")
    with pytest.raises(WorkbenchError, match="tool 1 needs a function name"):
        parse_tools('[{"description": "no name"}]')
    with pytest.raises(WorkbenchError, match="expected a JSON list"):
        parse_tools("42")
    with pytest.raises(WorkbenchError, match="only 'function' is supported"):
        parse_tools('[{"type": "retrieval", "function": {"name": "x"}}]')
    with pytest.raises(WorkbenchError, match="parameters must be a JSON schema object"):
        parse_tools('[{"name": "x", "parameters": "city"}]')


def test_template_without_tools_refuses_tools(tiny_model_dir, engine):
    llama2 = ChatEngine(engine.loaded, "llama2")
    with pytest.raises(ToolsNotSupportedError, match="template 'llama2' has no tool-calling format"):
        llama2.stream(HI, gen(), tools=[WEATHER_TOOL])


def test_tool_call_reply_and_observation_turn(engine):
    # A reply that calls a tool (the text a tool-trained model writes) is parsed into structured calls.
    spec = RowSpec([1, 2, 3], None, tools=True)
    row = RowHandle(spec)
    row._emit('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    row._finish("stop")
    reply = engine.reply(row)
    assert reply.tool_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert reply.content == "Let me check."
    assert reply.message() == {"role": "assistant", "content": "Let me check.", "tool_calls": reply.tool_calls}
    # Without tools offered, the same text is just text.
    plain = RowHandle(RowSpec([1], None))
    plain._emit(row.text)
    plain._finish("stop")
    assert engine.reply(plain).tool_calls == []
    # The observation turn goes into the prompt (Hermes <tool_response>) and the model continues.
    history = [{"role": "user", "content": "Weather in Paris?"}, reply.message(),
               {"role": "tool", "content": json.dumps({"temp_c": 21})}]
    ids, _ = engine.encode(history, tools=[WEATHER_TOOL])
    text = engine.loaded.tokenizer.decode(ids)
    assert '<tool_response>\n{"temp_c": 21}\n</tool_response>' in text and "get_weather" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert engine.chat(history, gen(max_new_tokens=4), tools=[WEATHER_TOOL]).completion_tokens == 4
    assert strip_tool_calls("a <tool_call>{...}</tool_call> b <tool_call>{unfinished") == "a  b"


def test_manager_attach_detach_and_base_checks(tiny_model_dir, bundled_model_dir, adapters, tmp_path):
    manager = ModelManager()
    manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir)))
    base_answer = manager.engine().chat(HI, gen()).text
    manager.attach("a", adapters["a"])
    manager.attach("b", adapters["b"])
    engine = manager.engine()
    assert engine.variants == ["base", "a", "b"]
    assert engine.chat(HI, gen()).text == base_answer  # attaching adapters leaves "base" the base
    with pytest.raises(WorkbenchError, match="already attached"):
        manager.attach("a", adapters["b"])
    manager.detach("a")
    assert manager.engine().variants == ["base", "b"]
    manager.detach("b")
    assert manager.engine().variants == ["base"] and not hasattr(manager.loaded.model, "peft_config")
    assert manager.engine().chat(HI, gen()).text == base_answer
    with pytest.raises(WorkbenchError, match="'b' is not attached"):
        manager.detach("b")

    # An adapter trained on another base: named in its config (the real bundled model here).
    other = make_adapter(bundled_model_dir, tmp_path / "other", seed=3)
    with pytest.raises(WorkbenchError, match=r"adapter other .* was trained on .*smollm2-135m-instruct, but the "
                                             r"loaded model is .*tiny-model"):
        manager.attach("other", other)
    # Same name recorded, but shapes that do not fit (a 32-wide model posing as the tiny one).
    from helpers import make_tiny_model
    import json as _json
    narrow_dir = tmp_path / "narrow"
    make_tiny_model(bundled_model_dir, narrow_dir)
    config = _json.loads((narrow_dir / "config.json").read_text())
    config.update(hidden_size=32, intermediate_size=64)
    (narrow_dir / "config.json").write_text(_json.dumps(config))
    from transformers import AutoConfig, AutoModelForCausalLM
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(narrow_dir)).save_pretrained(narrow_dir)
    narrow = make_adapter(narrow_dir, tmp_path / "narrow-adapter", seed=4, base_name=str(tiny_model_dir))
    with pytest.raises(WorkbenchError, match="does not fit base model .*input size 64 but the adapter expects 32"):
        manager.attach("narrow", narrow)
    # A workbench run records its base model in workbench_run.json.
    recorded = make_adapter(tiny_model_dir, tmp_path / "recorded", seed=5)
    (recorded / "workbench_run.json").write_text(_json.dumps({"base_model": "qwen2.5-0.5b-instruct"}))
    (tmp_path / "recorded" / "adapter_config.json").write_text(
        (tmp_path / "recorded" / "adapter_config.json").read_text().replace(str(tiny_model_dir), "Qwen/Qwen2.5-0.5B-Instruct"))
    with pytest.raises(WorkbenchError, match="was trained on qwen2.5-0.5b-instruct"):
        manager.attach("recorded", recorded)
    # Missing files.
    with pytest.raises(WorkbenchError, match="adapter_config.json is missing"):
        manager.attach("x", tmp_path)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text("{}")
    with pytest.raises(WorkbenchError, match="adapter weights are missing"):
        manager.attach("x", tmp_path / "noweights")
    with pytest.raises(WorkbenchError, match="adapter name 'base' is not allowed"):
        manager.attach("base", adapters["a"])
    assert manager.adapters == {}


def test_set_adapters_checks_everything_first(tiny_model_dir, bundled_model_dir, adapters, tmp_path):
    manager = ModelManager()
    with pytest.raises(WorkbenchError, match="no model is loaded"):
        manager.set_adapters({"a": adapters["a"]})
    manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir)), adapters={"a": adapters["a"]})
    assert manager.adapters == {"a": adapters["a"]}
    assert manager.set_adapters({"a": adapters["a"], "b": adapters["b"]}) == (["b"], [])
    with pytest.raises(WorkbenchError, match="does not exist"):
        manager.set_adapters({"b": adapters["b"], "c": str(tmp_path / "missing")})
    assert set(manager.adapters) == {"a", "b"}  # nothing changed
    assert manager.set_adapters({"b": adapters["b"]}) == ([], ["a"])
    manager.unload()
    assert manager.status() == "No model loaded."


def test_quantized_base_with_adapters(tiny_model_dir, adapters):
    """4-bit base (bitsandbytes on CPU) + two adapters in one batch."""
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir), quantization_bit=4), adapters)
    engine = ChatEngine(loaded, "smollm2")
    assert loaded.model.get_base_model().is_loaded_in_4bit
    batch = engine.compare(HI, gen(max_new_tokens=5))
    batch.wait()
    alone = [engine.stream(HI, gen(max_new_tokens=5), variant=v).wait().text for v in engine.variants]
    assert [r.text for r in batch.rows] == alone and len(set(alone)) == 3


def test_sampling_with_a_seed_repeats(engine):
    g = gen(do_sample=True, temperature=1.0, top_p=0.95, top_k=0, seed=7, max_new_tokens=10)
    first = engine.stream(HI, g, variant="a").wait().text
    assert engine.stream(HI, g, variant="a").wait().text == first
    other = engine.stream(HI, gen(do_sample=True, temperature=1.0, top_k=0, seed=8, max_new_tokens=10), variant="a")
    assert other.wait().text != first


def test_row_updates_coalesce_deltas_for_a_slow_reader():
    """The Chat tab re-renders the whole conversation per wake-up: deltas that arrived meanwhile are one wake-up."""
    row = RowHandle(RowSpec([1], None))
    row._emit("Hel")
    row._emit("lo")
    updates = row.updates()
    next(updates)
    assert row.text == "Hello"
    row._emit(" world")
    row._finish("stop")
    assert list(updates) == []  # the end arrived with the last delta: the reader shows row.text once more itself
    assert row.text == "Hello world"
    failing = RowHandle(RowSpec([1], None))
    failing._emit("x")
    failing._finish(error=RuntimeError("the model was unloaded"))
    with pytest.raises(RuntimeError, match="unloaded"):
        list(failing.updates())
