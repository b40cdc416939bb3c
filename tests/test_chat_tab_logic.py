"""The Chat tab's pure helpers without a browser: conversation → chat bubbles (tool calls and tool
results shown structured), what Regenerate answers again, which compare columns answer a tool result or a
regenerate, adapter picker entries → {name: dir}; what a page load shows, the marks on models that need a download,
and one answer at a time per browser session (Regenerate then Send on the tiny model, in-process)."""

from __future__ import annotations

import pytest

from workbench.config.base import WorkbenchError
from workbench.infer.engine import BASE
from workbench.ui.chat_compare import MAX_COLUMNS, base_name, claim_session, release_session
from workbench.ui.chat_tab import bubbles, compare_turns, drop_answer, wanted_adapters
from workbench.ui.context import model_args_from, model_choices

CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"role": "tool", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "It is 21 °C."},
]


def test_bubbles_show_tool_calls_and_results():
    out = bubbles(CONV)
    assert [b["role"] for b in out] == ["user", "assistant", "assistant", "user", "assistant"]
    call = out[2]
    assert call["metadata"]["title"] == "🔧 Tool call: get_weather" and '"city": "Paris"' in call["content"]
    assert out[3]["content"].startswith("📎 Tool result:") and '{"temp_c": 21}' in out[3]["content"]
    # A streaming answer hides the raw tool-call markup as it arrives.
    partial = bubbles(CONV[:1], 'Sure.\n<tool_call>\n{"name": "get_wea')
    assert partial[-1] == {"role": "assistant", "content": "Sure."}


def test_drop_answer_keeps_the_last_question():
    assert drop_answer(CONV) == CONV[:3]
    assert drop_answer(CONV[:1]) == CONV[:1]
    assert drop_answer([]) == []


def test_wanted_adapters_from_picker_entries(tmp_path):
    assert wanted_adapters(["identity=/runs/identity", str(tmp_path / "my-run"), " "]) == {
        "identity": "/runs/identity", "my-run": str(tmp_path / "my-run")}
    with pytest.raises(WorkbenchError, match="two adapters are named 'x'"):
        wanted_adapters(["x=/a", "x=/b"])


def test_compare_tool_result_goes_only_to_columns_that_called_a_tool():
    plain = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "Sunny, I think."}]
    convs = {"base": plain, "tooly": CONV[:2]}
    tool = {"role": "tool", "content": '{"temp_c": 21}'}
    out, answering = compare_turns(convs, ["base", "tooly"], tool)
    assert answering == ["tooly"]
    assert out == {"base": plain, "tooly": CONV[:3]}  # base's history is left as it was
    assert convs["tooly"] == CONV[:2]  # the input is not modified
    # No column called a tool: nobody answers (the tab says so instead of sending).
    assert compare_turns({"base": plain}, ["base"], tool)[1] == []
    # A user message goes to every column, an empty one included.
    user = {"role": "user", "content": "And tomorrow?"}
    out, answering = compare_turns(convs, ["base", "tooly", "new"], user)
    assert answering == ["base", "tooly", "new"] and out["new"] == [user] and out["base"] == plain + [user]


def test_compare_regenerate_skips_columns_added_mid_conversation():
    convs = {"base": CONV, "a": CONV}
    out, answering = compare_turns(convs, ["base", "a", "added"], regenerate=True)
    assert answering == ["base", "a"]  # "added" has no question yet: drop_answer([]) would be an empty batch row
    assert out == {"base": CONV[:3], "a": CONV[:3], "added": []}
    assert compare_turns({}, ["added"], regenerate=True)[1] == []


# -- what the app remembers, and one answer at a time (issue 18) ----------------------------------------------

COLUMNS, STATUS, HISTORY = 2, 2 + MAX_COLUMNS + 2, 2 + MAX_COLUMNS  # indexes in the send/regenerate handlers' outputs


def test_a_session_generates_one_answer_at_a_time():
    from workbench.infer.engine import RowHandle, RowSpec

    active: dict = {}
    first = claim_session(active, "tab-1")
    assert first is not None
    assert claim_session(active, "tab-1") is None  # a second Send or Regenerate of the same tab is refused
    assert claim_session(active, "tab-2") is not None  # another tab is not held up
    first.cancel()  # Stop pressed before the answer started...
    row = RowHandle(RowSpec([1, 2]))
    first.run(row)
    assert row.cancelled  # ...stops it as soon as it starts
    release_session(active, "tab-1", first)
    assert claim_session(active, "tab-1") is not None


def test_models_that_need_a_download_are_marked_and_keep_their_alias(tmp_path, monkeypatch):
    """A real (tiny) Hugging Face cache layout: a snapshot with config.json is what the loader finds offline."""
    import huggingface_hub.constants

    from workbench.models import registry

    snapshot = tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    choices = dict((value, label) for label, value in model_choices())
    assert set(registry.MODELS) <= set(choices)
    assert choices["smollm2-135m-instruct"] == "smollm2-135m-instruct"  # bundled: always on disk
    assert choices["qwen2.5-0.5b-instruct"] == "qwen2.5-0.5b-instruct"  # in the cache
    assert choices["qwen2.5-3b-instruct"] == "qwen2.5-3b-instruct (not downloaded)"


def test_the_engine_reaches_the_model_options():
    assert model_args_from("smollm2-135m-instruct", "float32", "none", "vllm").engine == "vllm"
    args = model_args_from("smollm2-135m-instruct", "auto", "4")
    assert args.engine == "transformers" and args.quantization_bit == 4


def test_a_merged_model_answers_under_its_own_name(tmp_path):
    from workbench.models.loader import LoadedModel

    merged = tmp_path / "my-merged"
    merged.mkdir()
    (merged / "workbench_export.json").write_text('{"kind": "merged_model"}')
    loaded = LoadedModel(None, None, str(merged), str(merged) + "/", "cpu", "float32", None)
    assert base_name(loaded) == "my-merged"
    plain = LoadedModel(None, None, str(tmp_path), "smollm2-135m-instruct", "cpu", "float32", None)
    assert base_name(plain) == BASE and base_name(None) == BASE


@pytest.fixture(scope="module")
def loaded_manager(tiny_model_dir):
    """The tiny model loaded as the app loads it (float32 on CPU), with one adapter attached."""
    from chat_helpers import make_adapter
    from workbench.infer.session import ModelManager

    manager = ModelManager()
    manager.load(model_args_from(str(tiny_model_dir), "float32", "none"))
    adapter = make_adapter(tiny_model_dir, tiny_model_dir.parent / "logic-adapter", seed=5)
    manager.set_adapters({"mine": str(adapter)})
    yield manager
    manager.unload()


def test_a_page_load_shows_what_the_server_has_loaded(loaded_manager, tiny_model_dir):
    from workbench.infer.session import ModelManager
    from workbench.ui.app import top_bar_state
    from workbench.ui.chat_tab import page_state
    from workbench.ui.context import AppContext

    ctx = AppContext(manager=loaded_manager, chosen_template="chatml")
    model, dtype, quant, engine, template, status = top_bar_state(ctx)
    assert model["value"] == str(tiny_model_dir) and dtype == "float32" and quant == "none"
    assert engine == "transformers" and template == "chatml" and status == loaded_manager.status()
    variant, compare, summary, picker = page_state(loaded_manager)
    assert [value for _, value in variant["choices"]] == [BASE, "mine"] and "**mine**" in summary
    assert picker["value"] == [f"mine={loaded_manager.adapters['mine']}"]  # Attach again keeps it attached
    # Nothing loaded: the form is left as the user has it, and the status says so.
    empty = top_bar_state(AppContext(manager=ModelManager()))
    assert "value" not in empty[0] and empty[-1] == "No model loaded."
    # A page opened while a Load runs (the manager holds nothing in between) says so.
    assert top_bar_state(AppContext(manager=ModelManager(), loading="qwen2.5-0.5b-instruct"))[-1] == \
        "⏳ Loading qwen2.5-0.5b-instruct…"


def chat_view(manager):
    """The Chat tab's handlers' view, with names standing in for the components (the handlers read one
    {component: value} dict)."""
    from workbench.ui.chat_tab import GEN_FIELDS, ChatView
    from workbench.ui.context import AppContext

    ctx = AppContext(manager=manager, template="template")
    return ChatView(ctx, "mode", "message", "variant", "compare", "history", "histories", "observation", "system",
                    "tools", {name: name for name in GEN_FIELDS})


def form(view, message="", history=None, max_new_tokens=8) -> dict:
    from dataclasses import asdict

    from workbench.config.generation import GenerationArgs

    gen = {name: value for name, value in asdict(GenerationArgs(max_new_tokens=max_new_tokens)).items()
           if name in view.gen_inputs}
    return {"mode": "chat", "message": message, "variant": BASE, "compare": [BASE], "history": history or [],
            "histories": {}, "observation": "", "template": "auto", "system": "", "tools": "", **gen}


def test_send_while_regenerating_is_refused_and_no_answer_is_lost(loaded_manager):
    import gradio as gr

    from workbench.ui.chat_tab import BUSY, on_regenerate, on_send

    view = chat_view(loaded_manager)
    request = gr.Request(session_hash="tab-1")
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "old answer"}]
    regenerating = on_regenerate(view, form(view, "And then?", history), request)
    first = next(regenerating)
    assert all(b == gr.update(interactive=False) for b in first[-3:])  # Send, Regenerate, tool result disabled
    refused = list(on_send(view, form(view, "And then?", history), request))
    assert len(refused) == 1 and refused[0][STATUS] == BUSY
    assert refused[0][0] == gr.update() and refused[0][-3:] == (gr.update(),) * 3  # message kept, still disabled
    rest = list(regenerating)
    assert rest[-1][-3:] == (gr.update(interactive=True),) * 3
    regenerated = [out[HISTORY] for out in rest if isinstance(out[HISTORY], list)][-1]
    assert len(regenerated) == 2 and regenerated[0] == history[0]
    sent = list(on_send(view, form(view, "And then?", regenerated), request))
    answered = [out[HISTORY] for out in sent if isinstance(out[HISTORY], list)][-1]
    assert answered[:2] == regenerated and answered[2] == {"role": "user", "content": "And then?"}
    assert sent[1][0] == gr.update(value="") and not view.active  # the box emptied, the session free again


def as_sent(outputs, updates_of):
    """Each yield as Gradio sends it: before it asks for the next yield it postprocesses this one, and
    ``postprocess_update_dict`` pops the value out of every update dict it gets (the real function, on a Chatbot: the
    block's own label stands in for the session copy Gradio uses)."""
    import gradio as gr
    from gradio.blocks import postprocess_update_dict

    block = gr.Chatbot()
    for out in outputs:
        yield tuple(postprocess_update_dict(block, o) if i in updates_of and isinstance(o, dict) else o
                    for i, o in enumerate(out))


@pytest.mark.parametrize("mode", ["chat", "compare"])
def test_the_buttons_come_back_without_emptying_the_last_answer(loaded_manager, mode):
    """Gradio streams each yield as a diff of the one before, applied in place to what the page got last, and ends
    with the last yield's full values. The yield that re-enables the buttons repeats the answer's outputs — as new
    update dicts: Gradio pops the value out of an update it postprocesses, so the same dict yielded again would go
    out without the answer (a diff deleting it, and no answer in the final values; a compare column then kept its
    next-to-last text)."""
    import gradio as gr
    from gradio.utils import diff

    from workbench.ui.chat_tab import COMPARE, on_send

    view = chat_view(loaded_manager)
    data = {**form(view, "Hi", max_new_tokens=4), "mode": COMPARE if mode == "compare" else "chat"}
    request = gr.Request(session_hash=f"tab-{mode}")
    outs = list(as_sent(on_send(view, data, request), updates_of=range(COLUMNS, COLUMNS + MAX_COLUMNS)))
    answer, last = outs[-2], outs[-1]
    assert last[-3:] == (gr.update(interactive=True),) * 3
    assert [diff(a, b) for a, b in zip(answer[:-3], last[:-3])] == [[]] * (len(last) - 3)
    if mode == "compare":  # the final values hold the answer
        assert last[COLUMNS]["value"][-1]["role"] == "assistant" and last[COLUMNS]["value"][-1]["content"]
    assert "tokens" in last[STATUS] and not view.active
