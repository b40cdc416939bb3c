"""Chat tab: talk to the loaded model or one of its adapters, or compare base and adapters side by side
(one column per variant, all generated together in one batch, each with its own history).

Under the compare columns, the user judges the answers on screen (:mod:`workbench.ui.chat_compare`).

The model comes from the top bar; adapters are attached here (finished runs or any adapter directory)
and stay unmerged. Everything runs through :mod:`workbench.infer` (the engine, the model manager);
this module only turns conversations into chat bubbles and back.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.infer.engine import BASE, parse_tools, strip_tool_calls
from workbench.jobs.runs import list_adapters
from workbench.config.model import adapter_name_for, parse_adapter_specs
from workbench.ui.binding import bind
from workbench.ui.chat_compare import (GENERATED, MAX_COLUMNS, Claim, base_name, build_judging, claim_session,
                                       label_of, release_session, session_key, variant_labels, wire_judging)
from workbench.ui.context import ADAPTERS_VERSION, RUNS_VERSION, AppContext, error_text
from workbench.ui.forms import collect, option_components
from workbench.ui.i18n import T

CHAT, COMPARE = "chat", "compare"
GEN_FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
TOOLS_EXAMPLE = json.dumps([{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}], indent=2)


def adapter_choices() -> list[tuple[str, str]]:
    """Finished training runs as (label, "NAME=DIR")."""
    return [(f"{name} ({base})" if base else name, f"{name}={path}") for name, path, base in list_adapters()]


def wanted_adapters(selected: list[str] | None) -> dict[str, str]:
    """Picked runs ("NAME=DIR") and typed entries (a directory, or NAME=DIR) → {name: dir}."""
    specs = []
    for item in selected or []:
        item = str(item).strip()
        if not item:
            continue
        specs.append(item if "=" in item else f"{adapter_name_for(item)}={item}")
    return parse_adapter_specs(specs)


# -- conversation ↔ chat bubbles ----------------------------------------------------------------------

def engine_notes(engine, messages: list[dict], tools: list[dict] | None) -> str:
    """The engine's notes on its template, as lines under the status (empty when there are none)."""
    uses_tools = bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    return "".join(f"\n\n⚠️ {note}" for note in engine.notes(tools=uses_tools))


def bubbles(messages: list[dict], partial: str | None = None) -> list[dict]:
    """Our conversation (user / assistant with tool_calls / tool turns) as Chatbot messages."""
    out: list[dict] = []
    for m in messages:
        role = m["role"]
        if role == "user":
            out.append({"role": "user", "content": m.get("content") or ""})
        elif role == "tool":
            out.append({"role": "user", "content": f"📎 Tool result:\n```\n{m.get('content') or ''}\n```"})
        else:
            if m.get("content"):
                out.append({"role": "assistant", "content": m["content"]})
            for call in m.get("tool_calls") or []:
                out.append({"role": "assistant", "metadata": {"title": f"🔧 Tool call: {call['name']}"},
                            "content": "```json\n" + json.dumps(call.get("arguments", {}), ensure_ascii=False,
                                                                 indent=2) + "\n```"})
            if not m.get("content") and not m.get("tool_calls"):
                out.append({"role": "assistant", "content": ""})
    if partial is not None:
        out.append({"role": "assistant", "content": strip_tool_calls(partial) if "<tool_call>" in partial
                    else partial})
    return out


def drop_answer(messages: list[dict]) -> list[dict]:
    """The conversation up to (and with) its last user or tool turn: what Regenerate answers again."""
    messages = list(messages)
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def called_tool(messages: list[dict]) -> bool:
    """Whether the conversation's last answer called a tool (what a tool result answers)."""
    return bool(messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"))


def generated_meta(gen: GenerationArgs, tools: list[dict] | None, batch: str) -> dict:
    """What an answer of a compare batch was generated with (kept with the answer for judgements)."""
    return {"batch": batch, "time": time.time(), "sampling": {k: getattr(gen, k) for k in GEN_FIELDS},
            "system": gen.system, "tools": tools}


def compare_turns(convs: dict[str, list[dict]], chosen: list[str], turn: dict | None = None,
                  regenerate: bool = False) -> tuple[dict[str, list[dict]], list[str]]:
    """What each compare column answers next: (the chosen columns' conversations, the columns that answer).

    A user message goes to every column. A tool result goes only to the columns whose last answer called a
    tool; the others keep their conversation and do not answer. Regenerate answers again only the columns
    that have a question to answer (a column added mid-conversation has none yet).
    """
    out: dict[str, list[dict]] = {}
    answering: list[str] = []
    for v in chosen or []:
        conv = list(convs.get(v) or [])
        if regenerate:
            conv = drop_answer(conv)
        if turn is not None and turn.get("role") == "tool":
            if called_tool(conv):
                conv = conv + [turn]
                answering.append(v)
        elif turn is not None:
            conv = conv + [turn]
            answering.append(v)
        elif conv:
            answering.append(v)
        out[v] = conv
    return out, answering


def column_updates(chosen: list[str], convs: dict[str, list[dict]], partial: dict[str, str] | None = None,
                   labels: dict[str, str] | None = None):
    """The compare columns: one per chosen variant (its conversation, and its answer so far), the rest hidden;
    each titled with its name in ``labels`` (see :func:`variant_labels`)."""
    chosen = list(chosen or [])[:MAX_COLUMNS]
    out = []
    for i in range(MAX_COLUMNS):
        if i < len(chosen):
            name = chosen[i]
            out.append(gr.update(visible=True, label=label_of(labels or {}, name),
                                 value=bubbles(convs.get(name, []), (partial or {}).get(name))))
        else:
            out.append(gr.update(visible=False, value=[]))
    return out


# -- the tab ------------------------------------------------------------------------------------------

@dataclass
class ChatView:
    """What the chat handlers read: the app, the components whose values reach them (as one {component: value}
    dict) and what each browser session is generating now."""
    ctx: AppContext
    mode: Any
    message: Any
    variant: Any
    compare_pick: Any
    history: Any        # gr.State: chat mode, one conversation
    histories: Any      # gr.State: compare mode, {variant: conversation}
    observation: Any
    system: Any
    tools_box: Any
    gen_inputs: dict[str, Any]
    active: dict[str, Claim] = field(default_factory=dict)  # session → its claim on generating now (Stop)

    def inputs(self) -> set:
        """Event inputs as a set: the handler gets one {component: value} dict (and the request)."""
        return {self.mode, self.message, self.variant, self.compare_pick, self.history, self.histories,
                self.observation, self.ctx.template, self.system, self.tools_box, *self.gen_inputs.values()}


def build(ctx: AppContext) -> None:
    runs_version = ctx.version(RUNS_VERSION)
    adapters_version = ctx.version(ADAPTERS_VERSION)
    history = gr.State([])
    histories = gr.State({})

    gr.Markdown(T(
        "Load a model in the top bar, attach adapters here, then chat. **Compare** answers with the base model "
        "and each selected adapter in one batch, one column each. Adapters stay unmerged.",
        "在顶部栏加载模型，在这里挂载适配器，然后对话。**对比**模式下，基座模型和所选适配器在同一批次中生成回答，每个一列。"
        "适配器不会被合并。"))
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            with gr.Accordion(T("Adapters", "适配器"), open=True):
                adapter_pick = gr.Dropdown(
                    choices=adapter_choices(), value=[], multiselect=True, allow_custom_value=True,
                    label=T("Finished runs, or type an adapter directory (or NAME=DIR)",
                            "已完成的训练，或输入适配器目录（或 名称=目录）"), elem_id="chat-adapters")
                with gr.Row():
                    attach_btn = gr.Button(T("Attach", "挂载"), variant="primary", elem_id="chat-attach")
                    refresh_btn = gr.Button(T("Refresh list", "刷新列表"), elem_id="chat-refresh")
                adapter_status = gr.Markdown(elem_id="chat-adapter-status")
            with gr.Accordion(T("Generation", "生成参数"), open=False, elem_id="chat-gen"):
                system = gr.Textbox(label=T("System prompt (empty: the template's default)", "系统提示词（留空使用模板默认）"),
                                    lines=2, elem_id="chat-system")
                gen_inputs = option_components(GenerationArgs, only=GEN_FIELDS)
            with gr.Accordion(T("Tools (function calling)", "工具（函数调用）"), open=False):
                tools_box = gr.Code(value="", language="json", label=T("Tool definitions (JSON list)", "工具定义（JSON 列表）"),
                                    interactive=True, lines=6, elem_id="chat-tools")
                gr.Markdown(T("For tool-capable templates (qwen, chatml, smollm2); tool calls show as 🔧 bubbles. "
                              "Example:\n```json\n" + TOOLS_EXAMPLE + "\n```",
                              "适用于支持工具的模板（qwen、chatml、smollm2）；工具调用显示为 🔧 气泡。示例：\n```json\n"
                              + TOOLS_EXAMPLE + "\n```"))
        with gr.Column(scale=3):
            with gr.Row(equal_height=True):
                mode = gr.Radio(choices=[(T("Chat", "对话"), CHAT), (T("Compare", "对比"), COMPARE)], value=CHAT,
                                label=T("Mode", "模式"), scale=1, elem_id="chat-mode")
                variant = gr.Dropdown(choices=[BASE], value=BASE, label=T("Answer with", "回答者"), scale=2,
                                      elem_id="chat-variant")
                compare_pick = gr.CheckboxGroup(choices=[BASE], value=[BASE], visible=False, scale=2,
                                                label=T("Compare (one column each)", "对比（每个一列）"),
                                                elem_id="chat-compare-variants")
            chatbot = gr.Chatbot(height=460, label=T("Chat", "对话"), elem_id="chat-bot", buttons=["copy"])
            with gr.Row(visible=False, equal_height=False) as compare_row:
                columns = [gr.Chatbot(height=460, label=BASE, visible=(i == 0), elem_id=f"chat-col-{i}",
                                      buttons=["copy"]) for i in range(MAX_COLUMNS)]
            judging = build_judging()
            # One line that grows: Enter sends (a taller box would take Enter as a new line), Shift+Enter breaks a line.
            message = gr.Textbox(placeholder=T("Type a message: Enter sends, Shift+Enter starts a new line",
                                               "输入消息：回车发送，Shift+回车换行"), show_label=False,
                                 lines=1, max_lines=8, elem_id="chat-input")
            with gr.Row():
                send_btn = gr.Button(T("Send", "发送"), variant="primary", elem_id="chat-send")
                stop_btn = gr.Button(T("Stop", "停止"), variant="stop", elem_id="chat-stop")
                regen_btn = gr.Button(T("Regenerate", "重新生成"), elem_id="chat-regenerate")
                clear_btn = gr.Button(T("Clear", "清空"), elem_id="chat-clear")
            with gr.Row(equal_height=True):
                observation = gr.Textbox(label=T("Tool result (observation) to send back", "返回给模型的工具结果"),
                                         lines=1, scale=4, elem_id="chat-observation")
                observe_btn = gr.Button(T("Send tool result", "发送工具结果"), scale=1, elem_id="chat-observe")
            status = gr.Markdown(elem_id="chat-status")

    view = ChatView(ctx, mode, message, variant, compare_pick, history, histories, observation, system, tools_box,
                    gen_inputs)
    attach_btn.click(bind(on_attach, ctx.manager), [adapter_pick, variant, compare_pick],
                     [variant, compare_pick, adapter_status])
    for trigger in (refresh_btn.click, runs_version.change, adapters_version.change):
        trigger(refresh_adapter_choices, None, adapter_pick)
    for changed in ctx.model_changed:
        changed.then(bind(refresh_variants, ctx.manager), [variant, compare_pick], [variant, compare_pick, adapter_status])
    # Every page load (a reload, a second tab) shows the adapters the server has attached.
    gr.on(None, bind(page_state, ctx.manager), outputs=[variant, compare_pick, adapter_status, adapter_pick],
          queue=False, show_progress="hidden")
    mode.change(bind(on_mode, ctx.manager), [mode, compare_pick],
                [variant, compare_pick, chatbot, compare_row, *columns])
    compare_pick.change(bind(show_columns, ctx.manager), [compare_pick, histories], columns)

    inputs = view.inputs()
    # Send, Regenerate and Send tool result are disabled while the session generates (see dispatch).
    outputs = [message, chatbot, *columns, history, histories, status, send_btn, regen_btn, observe_btn]
    send = bind(on_send, view)
    send_btn.click(send, inputs, outputs)
    # Enter while an answer streams reaches the server (which says it is busy) instead of being dropped unseen.
    message.submit(send, inputs, outputs, trigger_mode="multiple")
    regen_btn.click(bind(on_regenerate, view), inputs, outputs)
    observe_btn.click(bind(on_observe, view), inputs, [observation, *outputs[1:]])
    stop_btn.click(bind(on_stop, view.active), None, status, queue=False)
    clear_btn.click(on_clear, None, [chatbot, history, histories, *columns, status, observation])
    wire_judging(judging, ctx, view.active, mode, compare_pick, histories, clear_btn)
    mode.change(judging_visible, mode, judging.box)


# -- adapters and mode --------------------------------------------------------------------------------

def adapter_summary(manager) -> str:
    loaded = manager.current()
    if loaded is None:
        return "No model loaded: load one in the top bar first."
    if not loaded.adapters:
        return f"Attached adapters: none — {loaded.label} answers as **{base_name(loaded)}**."
    return "Attached adapters: " + ", ".join(f"**{n}** (`{p}`)" for n, p in loaded.adapters.items())


def variant_choices(manager) -> list[tuple[str, str]]:
    """(label, variant) for the pickers: the loaded model itself, then each attached adapter."""
    labels = variant_labels(manager)
    return [(label_of(labels, name), name) for name in [BASE, *manager.adapters]]


def refresh_variants(manager, current_variant, current_compare):
    """(variant picker, compare picker, adapter summary) for the model and adapters loaded now."""
    choices = variant_choices(manager)
    names = [name for _, name in choices]
    keep = current_variant if current_variant in names else BASE
    chosen = [v for v in (current_compare or []) if v in names] or [BASE]
    return gr.update(choices=choices, value=keep), gr.update(choices=choices, value=chosen), adapter_summary(manager)


def page_state(manager):
    """(variant picker, compare picker, adapter summary, adapter picker) on a page load: the adapters attached on the
    server, in the compare picker as after Attach, and as the adapter picker's selection (so the next Attach keeps
    them unless the user removes them)."""
    attached = [f"{name}={path}" for name, path in manager.adapters.items()]
    every = [BASE, *manager.adapters][:MAX_COLUMNS]
    return (*refresh_variants(manager, BASE, every), gr.update(choices=adapter_choices(), value=attached))


def refresh_adapter_choices():
    return gr.update(choices=adapter_choices())


def on_attach(manager, selected, current_variant, current_compare):
    try:
        wanted = wanted_adapters(selected)
        attached, detached = manager.set_adapters(wanted)
    except Exception as exc:
        v, c, summary = refresh_variants(manager, current_variant, current_compare)
        return v, c, summary + "\n\n" + error_text(exc)
    v, c, summary = refresh_variants(manager, current_variant, current_compare)
    choices = variant_choices(manager)
    c = gr.update(choices=choices, value=[name for _, name in choices][:MAX_COLUMNS])
    note = []
    if attached:
        note.append("✅ attached " + ", ".join(attached))
    if detached:
        note.append("detached " + ", ".join(detached))
    return v, c, summary + ("\n\n" + "; ".join(note) if note else "")


def on_mode(manager, m, chosen):
    """(variant picker, compare picker, chatbot, compare row, *columns) for chat or compare mode."""
    compare = m == COMPARE
    updates = [gr.update(visible=not compare), gr.update(visible=compare), gr.update(visible=not compare),
               gr.update(visible=compare)]
    return (*updates, *column_updates(chosen if compare else [], {}, labels=variant_labels(manager)))


def show_columns(manager, chosen, convs):
    """The compare columns after the choice of variants changed."""
    return column_updates(chosen, convs, labels=variant_labels(manager))


def judging_visible(m):
    return gr.update(visible=m == COMPARE)


# -- generation ---------------------------------------------------------------------------------------
# The send / regenerate / tool-result handlers yield (message box, chatbot, *columns, history, histories, status,
# send button, regenerate button, tool-result button).

BUTTONS = 3  # Send, Regenerate, Send tool result: disabled from a request's start to its end
BUSY = ("⏳ An answer is still being generated here: nothing was sent, and your message is kept. Send it when the "
        "answer is complete, or press Stop.")


def buttons(interactive: bool | None = None) -> tuple:
    """The three buttons' updates: enabled, disabled, or (None) left as they are."""
    return tuple(gr.update() if interactive is None else gr.update(interactive=interactive) for _ in range(BUTTONS))


def status_only(text: str) -> tuple:
    """The chat outputs left as they are, with ``text`` as the status."""
    return (*[gr.update()] * (MAX_COLUMNS + 4), text, *buttons())


def read_settings(view: ChatView, data: dict):
    values = {name: data[comp] for name, comp in view.gen_inputs.items()}
    gen = collect(GenerationArgs, {**values, "system": data[view.system]})
    tools = parse_tools(data[view.tools_box], source="Tools JSON")
    engine = view.ctx.manager.engine(data[view.ctx.template] or "auto")
    return engine, gen, tools


def run_chat(view: ChatView, conv: list[dict], who: str, data: dict, claim: Claim):
    """Stream one answer to ``conv``; yields (chatbot, history, status)."""
    name = label_of(variant_labels(view.ctx.manager), who)
    try:
        engine, gen, tools = read_settings(view, data)
        row = engine.stream(conv, gen, variant=who, tools=tools)
    except Exception as exc:
        yield gr.update(), gr.update(), error_text(exc)
        return
    claim.run(row)
    try:
        yield bubbles(conv, ""), gr.update(), f"⏳ {name} is answering…"
        for _ in row.updates():  # coalesced: the page gets the latest text, not one re-render per token
            yield bubbles(conv, row.text), gr.update(), gr.update()
        reply = engine.reply(row)
    except Exception as exc:
        yield bubbles(conv), conv, error_text(exc)
        return
    conv = conv + [reply.message()]
    note = {"stop": "", "length": " (cut at max_new_tokens)", "cancelled": " (stopped)"}.get(
        reply.finish_reason or "", "")
    calls = f" — called {', '.join(c['name'] for c in reply.tool_calls)}; paste the result below" \
        if reply.tool_calls else ""
    speed = reply.completion_tokens / reply.seconds if reply.seconds else 0
    yield (bubbles(conv), conv,
           f"✅ {name}: {reply.completion_tokens} tokens, {speed:.1f} tokens/s{note}{calls}"
           + engine_notes(engine, conv, tools))


def run_compare(view: ChatView, convs: dict[str, list[dict]], chosen: list[str], data: dict, claim: Claim,
                answering: list[str] | None = None):
    """Stream the answers of ``answering`` (default: every chosen variant) from one batch, showing every
    chosen column; yields (*columns, histories, status)."""
    answering = list(chosen or []) if answering is None else answering
    labels = variant_labels(view.ctx.manager)
    try:
        if not chosen:
            raise WorkbenchError("choose at least one model or adapter to compare")
        if len(chosen) > MAX_COLUMNS:
            raise WorkbenchError(f"compare shows at most {MAX_COLUMNS} columns; choose fewer")
        if not answering:
            raise WorkbenchError("none of the chosen columns has anything to answer")
        engine, gen, tools = read_settings(view, data)
        batch = engine.compare({v: convs[v] for v in answering}, gen, tools=tools)
    except Exception as exc:
        yield (*[gr.update()] * MAX_COLUMNS, gr.update(), error_text(exc))
        return
    claim.run(batch)
    try:
        yield (*column_updates(chosen, convs, {v: "" for v in answering}, labels), gr.update(),
               f"⏳ {', '.join(label_of(labels, v) for v in answering)} answering in one batch…")
        for _ in batch.updates():
            partial = {row.label: row.text for row in batch.rows}
            yield (*column_updates(chosen, convs, partial, labels), gr.update(), gr.update())
        replies = [engine.reply(row) for row in batch.rows]
    except Exception as exc:
        yield (*column_updates(chosen, convs, labels=labels), gr.update(), error_text(exc))
        return
    convs = dict(convs)
    meta = generated_meta(gen, tools, uuid.uuid4().hex)
    for name, reply in zip(answering, replies):
        convs[name] = convs[name] + [{**reply.message(), GENERATED: meta}]
    stopped = " (stopped)" if any(r.finish_reason == "cancelled" for r in replies) else ""
    summary = ", ".join(f"{label_of(labels, r.variant)}: {r.completion_tokens} tokens" for r in replies)
    yield (*column_updates(chosen, convs, labels=labels), convs, f"✅ one batch — {summary}{stopped}"
           + engine_notes(engine, [m for c in convs.values() for m in c], tools))


def dispatch(view: ChatView, data: dict, turn: dict | None, request, clear_input=False, regenerate=False):
    """Run chat or compare under the session's claim (refused with a note while it generates already), with the
    buttons disabled from start to end; yields the handlers' outputs."""
    key = session_key(request)
    claim = claim_session(view.active, key)
    if claim is None:
        yield status_only(BUSY)
        return
    last = (*[gr.update()] * (MAX_COLUMNS + 5),)
    try:
        yield (*last, *buttons(False))
        for last in generate(view, data, turn, claim, clear_input, regenerate):
            yield (*unshared(last), *buttons())
    finally:
        release_session(view.active, key, claim)
    # The buttons come back with the last outputs repeated (Gradio sends no edit for them), not with empty updates,
    # which would go out as diffs deleting the answers' values.
    yield (*unshared(last), *buttons(True))


def unshared(outputs: tuple) -> tuple:
    """The outputs with each update dict copied: Gradio pops an update's value while it postprocesses it, so an
    update yielded twice goes out the second time without its value — a diff deleting the value, and the last
    message of the stream (the full final values) without the answer; a compare column then kept its next-to-last
    text (seen in CI and in a fresh-clone run, turn 1 of the preferences journey)."""
    return tuple(dict(o) if isinstance(o, dict) else o for o in outputs)


def generate(view: ChatView, data: dict, turn: dict | None, claim: Claim, clear_input: bool, regenerate: bool):
    """Chat or compare; yields (message box, chatbot, *columns, history, histories, status). The message box is
    emptied once the request got going (an error before that keeps what the user typed)."""
    m, who, chosen = data[view.mode], data[view.variant], data[view.compare_pick]
    conv, convs = data[view.history], data[view.histories]
    box = gr.update(value="") if clear_input else gr.update()
    if m == COMPARE:
        base, answering = compare_turns(dict(convs or {}), chosen, turn, regenerate)
        first = True
        for *cols, new_convs, note in run_compare(view, base, chosen, data, claim, answering):
            failed = isinstance(note, str) and note.startswith("❌")
            yield (gr.update() if failed else (box if first else gr.update()), gr.update(), *cols, gr.update(),
                   new_convs, note)
            first = False
        return
    conv = list(conv or [])
    if regenerate:
        conv = drop_answer(conv)
    if turn is not None:
        conv = conv + [turn]
    first = True
    for bot, new_conv, note in run_chat(view, conv, who, data, claim):
        failed = isinstance(note, str) and note.startswith("❌")
        yield (gr.update() if failed else (box if first else gr.update()), bot,
               *[gr.update()] * MAX_COLUMNS, new_conv, gr.update(), note)
        first = False


def on_send(view: ChatView, data: dict, request: gr.Request):
    text = (data[view.message] or "").strip()
    if not text:
        yield status_only("Type a message first.")
        return
    turn = {"role": "user", "content": text}
    yield from dispatch(view, data, turn, request, clear_input=True)


def on_regenerate(view: ChatView, data: dict, request: gr.Request):
    m, chosen, conv, convs = data[view.mode], data[view.compare_pick], data[view.history], data[view.histories]
    has = bool(compare_turns(convs or {}, chosen, regenerate=True)[1]) if m == COMPARE \
        else bool(drop_answer(conv or []))
    if not has:
        yield status_only("Nothing to regenerate yet.")
        return
    yield from dispatch(view, data, None, request, regenerate=True)


def on_observe(view: ChatView, data: dict, request: gr.Request):
    """Send a tool's result back; yields (tool result box, chatbot, *columns, history, histories, status, *buttons)."""
    m, chosen, conv, convs = data[view.mode], data[view.compare_pick], data[view.history], data[view.histories]
    text = (data[view.observation] or "").strip()
    if not text:
        yield status_only("Paste the tool's result first.")
        return
    turn = {"role": "tool", "content": text}
    if m == COMPARE:
        if not compare_turns(convs or {}, chosen, turn)[1]:
            yield status_only("❌ The last answer of every chosen column called no tool; a tool result answers a "
                              "tool call.")
            return
    elif not called_tool(conv or []):
        yield status_only("❌ The last answer called no tool; a tool result answers a tool call.")
        return
    yield from dispatch(view, data, turn, request, clear_input=True)


def on_stop(active: dict, request: gr.Request):
    running = active.get(session_key(request))
    if running is None:
        return "Nothing is generating."
    running.cancel()
    # The answer ends within a decode step and its handler writes "(stopped)"; a "Stopping…" written here could
    # reach the page after that (this event is not queued) and stay there.
    return gr.update()


def on_clear():
    return ([], [], {}, *[gr.update(value=[]) for _ in range(MAX_COLUMNS)], "", "")
