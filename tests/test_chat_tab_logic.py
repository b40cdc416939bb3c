"""The Chat tab's pure helpers without a browser: conversation → chat bubbles (tool calls and tool
results shown structured), what Regenerate answers again, which compare columns answer a tool result or a
regenerate, adapter picker entries → {name: dir}."""

from __future__ import annotations

import pytest

from workbench.config.base import WorkbenchError
from workbench.ui.chat_tab import bubbles, compare_turns, drop_answer, wanted_adapters

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
