"""Chat tab: talk to the loaded model or one of its adapters, or compare base and adapters side by side
(one column per variant, all generated together in one batch, each with its own history).

Under the compare columns, the user judges the answers on screen ("👍 this one is better", optionally edited
first, or "👎 both bad"); :mod:`workbench.data.preferences` keeps each judgement as ranking data for rm / dpo.

The model comes from the top bar; adapters are attached here (finished runs or any adapter directory)
and stay unmerged. Everything runs through :mod:`workbench.infer` (the engine, the model manager);
this module only turns conversations into chat bubbles and back.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.data import preferences
from workbench.infer.engine import BASE, parse_tools, strip_tool_calls
from workbench.models.adapters import adapter_name_for, parse_adapter_specs
from workbench.paths import project_data_dir
from workbench.ui.context import ADAPTERS_VERSION, DATASETS_VERSION, RUNS_VERSION, AppContext, error_text
from workbench.ui.forms import collect, option_components
from workbench.ui.i18n import T

MAX_COLUMNS = 4  # compare columns on screen (the engine itself takes any number of variants)
CHAT, COMPARE = "chat", "compare"
GEN_FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
TOOLS_EXAMPLE = json.dumps([{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}], indent=2)


GENERATED = "generated"  # an answer's key in the compare histories: its batch and settings (never rendered)
MAX_JUDGED = 200  # fingerprints of judged turns remembered per session (a turn is judged once)




def adapter_choices() -> list[tuple[str, str]]:
    """Finished training runs as (label, "NAME=DIR")."""
    try:
        from workbench.jobs.runs import list_adapters
    except ImportError:  # the runs module is optional for the chat tab
        return []
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


def compare_answers(convs: dict[str, list[dict]], shown: list[str], column: str | None = None
                    ) -> list[preferences.Answer]:
    """The answers on screen that were generated together with ``column``'s last answer (default: the most recent
    batch): the last answer of each shown column from that batch. A column that did not answer that turn (it
    called no tool, or has no answer yet) is left out."""
    found = []
    for name in list(shown or [])[:MAX_COLUMNS]:
        conv = list(convs.get(name) or [])
        split = preferences.last_answer(conv)
        if split is None:
            continue
        meta = conv[-1].get(GENERATED) or {}
        answer = preferences.Answer(name, split[0], split[1], meta.get("sampling"), meta.get("system"),
                                    meta.get("tools"))
        found.append((answer, meta.get("batch"), meta.get("time", 0.0)))
    if column is not None:
        batches = [b for a, b, _ in found if a.model == column]
        if not batches:
            return []
        batch = batches[0]
    elif found:
        batch = max(found, key=lambda f: f[2])[1]
    else:
        return []
    return [a for a, b, _ in found if b == batch]


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


def build(ctx: AppContext) -> None:
    runs_version = ctx.version(RUNS_VERSION)
    adapters_version = ctx.version(ADAPTERS_VERSION)
    history = gr.State([])        # chat mode: one conversation
    histories = gr.State({})      # compare mode: {variant: conversation}
    active: dict[str, Any] = {}   # session → the batch generating now (for Stop)

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
            # Judging the answers on screen (compare mode): each judgement is kept as ranking data.
            with gr.Column(visible=False, elem_id="chat-judge") as judge_box:
                gr.Markdown(T(
                    "**Which answer is better?** Each judgement of the answers on screen is kept as preference data "
                    "(chosen / rejected) in the Data tab's folder, for training with stage `rm` or `dpo`.",
                    "**哪个回答更好？** 对屏幕上回答的每次评判都会作为偏好数据（优选 / 劣选）保存在数据标签页的目录中，"
                    "可用于 `rm` 或 `dpo` 阶段训练。"))
                judge_cols, prefer_btns, edit_btns = [], [], []
                with gr.Row(equal_height=True):
                    for i in range(MAX_COLUMNS):
                        with gr.Column(visible=(i == 0), min_width=160) as judge_col:
                            prefer_btns.append(gr.Button(f"👍 {BASE}", size="sm", elem_id=f"chat-prefer-{i}"))
                            edit_btns.append(gr.Button(T("✏️ Edit it, then keep", "✏️ 编辑后保留"), size="sm",
                                                       elem_id=f"chat-edit-{i}"))
                        judge_cols.append(judge_col)
                with gr.Row(equal_height=True):
                    both_bad_btn = gr.Button(T("👎 Both bad (none is better)", "👎 都不好（没有更好的）"), size="sm",
                                             scale=1, elem_id="chat-both-bad")
                    pref_name = gr.Textbox(value=preferences.DEFAULT_DATASET, scale=2, elem_id="chat-pref-name",
                                           label=T("Keep judgements in dataset", "评判保存到数据集"))
                with gr.Column(visible=False) as edit_box:
                    edit_text = gr.Textbox(label=T("Edit the better answer, then keep it", "编辑更好的回答，然后保留"),
                                           lines=4, elem_id="chat-edit-text")
                    with gr.Row():
                        keep_btn = gr.Button(T("Keep the edited answer as the better one", "将编辑后的回答保留为更好的回答"),
                                             variant="primary", elem_id="chat-edit-keep")
                        cancel_btn = gr.Button(T("Cancel", "取消"), elem_id="chat-edit-cancel")
                judge_status = gr.Markdown(elem_id="chat-judge-status")
            message = gr.Textbox(placeholder=T("Type a message and press Enter", "输入消息后按回车"), show_label=False,
                                 lines=2, elem_id="chat-input")
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

    # Event inputs as a set: the handler gets one {component: value} dict (and the request).
    inputs = {mode, message, variant, compare_pick, history, histories, observation, ctx.template, system, tools_box,
              *gen_inputs.values()}

    # -- helpers --------------------------------------------------------------------------------
    def read_settings(data: dict):
        values = {name: data[comp] for name, comp in gen_inputs.items()}
        gen = collect(GenerationArgs, {**values, "system": data[system]})
        tools = parse_tools(data[tools_box], source="Tools JSON")
        engine = ctx.manager.engine(data[ctx.template] or "auto")
        return engine, gen, tools

    def variants_update():
        loaded = ctx.manager.current()
        names = [BASE, *(loaded.adapters if loaded else {})]
        return names

    def adapter_summary() -> str:
        loaded = ctx.manager.current()
        if loaded is None:
            return "No model loaded: load one in the top bar first."
        if not loaded.adapters:
            return f"Attached adapters: none — {loaded.label} answers as **base**."
        return "Attached adapters: " + ", ".join(f"**{n}** (`{p}`)" for n, p in loaded.adapters.items())

    def refresh_variants(current_variant, current_compare):
        names = variants_update()
        keep = current_variant if current_variant in names else BASE
        chosen = [v for v in (current_compare or []) if v in names] or [BASE]
        return (gr.update(choices=names, value=keep), gr.update(choices=names, value=chosen), adapter_summary())

    # -- adapters -------------------------------------------------------------------------------
    def on_attach(selected, current_variant, current_compare):
        try:
            wanted = wanted_adapters(selected)
            attached, detached = ctx.manager.set_adapters(wanted)
        except Exception as exc:
            v, c, summary = refresh_variants(current_variant, current_compare)
            return v, c, summary + "\n\n" + error_text(exc)
        v, c, summary = refresh_variants(current_variant, current_compare)
        names = list(ctx.manager.adapters)
        c = gr.update(choices=[BASE, *names], value=[BASE, *names][:MAX_COLUMNS])
        note = []
        if attached:
            note.append("✅ attached " + ", ".join(attached))
        if detached:
            note.append("detached " + ", ".join(detached))
        return v, c, summary + ("\n\n" + "; ".join(note) if note else "")

    attach_btn.click(on_attach, [adapter_pick, variant, compare_pick], [variant, compare_pick, adapter_status])
    for trigger in (refresh_btn.click, runs_version.change, adapters_version.change):
        trigger(lambda: gr.update(choices=adapter_choices()), None, adapter_pick)
    ctx.status.change(refresh_variants, [variant, compare_pick], [variant, compare_pick, adapter_status])

    # -- mode -----------------------------------------------------------------------------------
    def on_mode(m, chosen):
        compare = m == COMPARE
        updates = [gr.update(visible=not compare), gr.update(visible=compare), gr.update(visible=not compare),
                   gr.update(visible=compare)]
        return (*updates, *column_updates(chosen if compare else [], {}))

    def column_updates(chosen: list[str], convs: dict[str, list[dict]], partial: dict[str, str] | None = None):
        chosen = list(chosen or [])[:MAX_COLUMNS]
        out = []
        for i in range(MAX_COLUMNS):
            if i < len(chosen):
                name = chosen[i]
                out.append(gr.update(visible=True, label=name,
                                     value=bubbles(convs.get(name, []), (partial or {}).get(name))))
            else:
                out.append(gr.update(visible=False, value=[]))
        return out

    mode.change(on_mode, [mode, compare_pick], [variant, compare_pick, chatbot, compare_row, *columns])
    compare_pick.change(lambda chosen, convs: column_updates(chosen, convs), [compare_pick, histories], columns)

    # -- generation -----------------------------------------------------------------------------
    def run_chat(conv: list[dict], who: str, data: dict, request):
        """Stream one answer to ``conv``; yields (chatbot, history, status)."""
        try:
            engine, gen, tools = read_settings(data)
            row = engine.stream(conv, gen, variant=who, tools=tools)
        except Exception as exc:
            yield gr.update(), gr.update(), error_text(exc)
            return
        key = request.session_hash if request else "-"
        active[key] = row
        try:
            yield bubbles(conv, ""), gr.update(), f"⏳ {who} is answering…"
            for _ in row:
                yield bubbles(conv, row.text), gr.update(), gr.update()
            reply = engine.reply(row)
        except Exception as exc:
            yield bubbles(conv), conv, error_text(exc)
            return
        finally:
            active.pop(key, None)
        conv = conv + [reply.message()]
        note = {"stop": "", "length": " (cut at max_new_tokens)", "cancelled": " (stopped)"}.get(
            reply.finish_reason or "", "")
        calls = f" — called {', '.join(c['name'] for c in reply.tool_calls)}; paste the result below" \
            if reply.tool_calls else ""
        speed = reply.completion_tokens / reply.seconds if reply.seconds else 0
        yield (bubbles(conv), conv,
               f"✅ {who}: {reply.completion_tokens} tokens, {speed:.1f} tokens/s{note}{calls}"
               + engine_notes(engine, conv, tools))

    def run_compare(convs: dict[str, list[dict]], chosen: list[str], data: dict, request,
                    answering: list[str] | None = None):
        """Stream the answers of ``answering`` (default: every chosen variant) from one batch, showing every
        chosen column; yields (*columns, histories, status)."""
        answering = list(chosen or []) if answering is None else answering
        try:
            if not chosen:
                raise WorkbenchError("choose at least one model or adapter to compare")
            if len(chosen) > MAX_COLUMNS:
                raise WorkbenchError(f"compare shows at most {MAX_COLUMNS} columns; choose fewer")
            if not answering:
                raise WorkbenchError("none of the chosen columns has anything to answer")
            engine, gen, tools = read_settings(data)
            batch = engine.compare({v: convs[v] for v in answering}, gen, tools=tools)
        except Exception as exc:
            yield (*[gr.update()] * MAX_COLUMNS, gr.update(), error_text(exc))
            return
        key = request.session_hash if request else "-"
        active[key] = batch
        try:
            yield (*column_updates(chosen, convs, {v: "" for v in answering}), gr.update(),
                   f"⏳ {', '.join(answering)} answering in one batch…")
            for _ in batch.updates():
                partial = {row.label: row.text for row in batch.rows}
                yield (*column_updates(chosen, convs, partial), gr.update(), gr.update())
            replies = [engine.reply(row) for row in batch.rows]
        except Exception as exc:
            yield (*column_updates(chosen, convs), gr.update(), error_text(exc))
            return
        finally:
            active.pop(key, None)
        convs = dict(convs)
        meta = generated_meta(gen, tools, uuid.uuid4().hex)
        for name, reply in zip(answering, replies):
            convs[name] = convs[name] + [{**reply.message(), GENERATED: meta}]
        stopped = " (stopped)" if any(r.finish_reason == "cancelled" for r in replies) else ""
        summary = ", ".join(f"{r.variant}: {r.completion_tokens} tokens" for r in replies)
        yield (*column_updates(chosen, convs), convs, f"✅ one batch — {summary}{stopped}"
               + engine_notes(engine, [m for c in convs.values() for m in c], tools))

    def on_send(data: dict, request: gr.Request):
        text = (data[message] or "").strip()
        if not text:
            yield (gr.update(), gr.update(), *[gr.update()] * MAX_COLUMNS, gr.update(), gr.update(),
                   "Type a message first.")
            return
        turn = {"role": "user", "content": text}
        yield from dispatch(data, turn, request, clear_input=True)

    def dispatch(data: dict, turn: dict | None, request, clear_input=False, regenerate=False):
        """Run chat or compare; yields (message box, chatbot, *columns, history, histories, status)."""
        m, who, chosen = data[mode], data[variant], data[compare_pick]
        conv, convs = data[history], data[histories]
        box = gr.update(value="") if clear_input else gr.update()
        if m == COMPARE:
            base, answering = compare_turns(dict(convs or {}), chosen, turn, regenerate)
            first = True
            for *cols, new_convs, note in run_compare(base, chosen, data, request, answering):
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
        for bot, new_conv, note in run_chat(conv, who, data, request):
            failed = isinstance(note, str) and note.startswith("❌")
            yield (gr.update() if failed else (box if first else gr.update()), bot,
                   *[gr.update()] * MAX_COLUMNS, new_conv, gr.update(), note)
            first = False

    def on_regenerate(data: dict, request: gr.Request):
        m, chosen, conv, convs = data[mode], data[compare_pick], data[history], data[histories]
        has = bool(compare_turns(convs or {}, chosen, regenerate=True)[1]) if m == COMPARE \
            else bool(drop_answer(conv or []))
        if not has:
            yield (gr.update(), gr.update(), *[gr.update()] * MAX_COLUMNS, gr.update(), gr.update(),
                   "Nothing to regenerate yet.")
            return
        yield from dispatch(data, None, request, regenerate=True)

    def on_observe(data: dict, request: gr.Request):
        m, chosen, conv, convs = data[mode], data[compare_pick], data[history], data[histories]
        text = (data[observation] or "").strip()
        if not text:
            yield (gr.update(), gr.update(), *[gr.update()] * MAX_COLUMNS, gr.update(), gr.update(),
                   "Paste the tool's result first.")
            return
        turn = {"role": "tool", "content": text}
        if m == COMPARE:
            called = compare_turns(convs or {}, chosen, turn)[1]
            if not called:
                yield (gr.update(), gr.update(), *[gr.update()] * MAX_COLUMNS, gr.update(), gr.update(),
                       "❌ The last answer of every chosen column called no tool; a tool result answers a tool call.")
                return
        elif not called_tool(conv or []):
            yield (gr.update(), gr.update(), *[gr.update()] * MAX_COLUMNS, gr.update(), gr.update(),
                   "❌ The last answer called no tool; a tool result answers a tool call.")
            return
        for out in dispatch(data, turn, request):
            yield (gr.update(value="") if not str(out[-1]).startswith("❌") else gr.update(), *out[1:])

    def on_stop(request: gr.Request):
        running = active.get(request.session_hash if request else "-")
        if running is None:
            return "Nothing is generating."
        running.cancel()
        return "Stopping…"

    def on_clear():
        return ([], [], {}, *[gr.update(value=[]) for _ in range(MAX_COLUMNS)], "", "")

    # -- judging compare answers --------------------------------------------------------------------
    judged = gr.State([])      # fingerprints of the turns judged in this session (each turn is judged once)
    pending = gr.State(None)   # an edit in progress: {"column", "fingerprint"}
    datasets_version = ctx.version(DATASETS_VERSION)  # bumped when a dataset is registered (Train tab picker)
    folder_input = ctx.extras.get("data_dir")  # the Data tab's folder box: judgements go where datasets are
    if folder_input is None:
        folder_input = gr.State(str(project_data_dir()))

    def judge_columns(shown):
        shown = list(shown or [])[:MAX_COLUMNS]
        cols = [gr.update(visible=i < len(shown)) for i in range(MAX_COLUMNS)]
        labels = [gr.update(value=f"👍 {shown[i]}") if i < len(shown) else gr.update() for i in range(MAX_COLUMNS)]
        return (*cols, *labels)

    def turn_to_judge(shown, convs, column: str | None, judged_fps, request) -> list:
        """The answers a judgement is about: those on screen, never new ones; refused while they are generating."""
        if active.get(request.session_hash if request else "-") is not None:
            raise WorkbenchError("the answers are still being generated: judge them when they are complete "
                                 "(or press Stop)")
        answers = compare_answers(convs or {}, shown, column)
        if not answers:
            raise WorkbenchError(f"{column or 'no column'} has no answer on screen yet: send a message first")
        if preferences.fingerprint(answers) in (judged_fps or []):
            raise WorkbenchError("these answers were judged already; ask the next question (or Regenerate) to judge "
                                 "again")
        return answers

    def keep(folder, name, answers, column, edited=None):
        loaded = ctx.manager.current()
        folder = str(folder or "").strip() or str(project_data_dir())
        return preferences.record(folder, name, answers, column, edited=edited,
                                  base_model=loaded.label if loaded else None)

    def kept(answers, column, saved, judged_fps, version, edited=False):
        others = ", ".join(f"**{a.model}**" for a in answers if a.model != column)
        verdict = f"👍 **{column}**{' (edited)' if edited else ''} over {others}"
        fps = [*(judged_fps or []), preferences.fingerprint(answers)][-MAX_JUDGED:]
        return (f"✅ {verdict}. {preferences.describe(saved)}", fps, version + 1 if saved.registered else gr.skip(),
                gr.update(visible=False), None)

    def prefer_handler(index: int):
        def on_prefer(shown, convs, name, folder, judged_fps, version, request: gr.Request):
            try:
                shown = list(shown or [])[:MAX_COLUMNS]
                if index >= len(shown):
                    raise WorkbenchError("that column is not shown")
                column = shown[index]
                answers = turn_to_judge(shown, convs, column, judged_fps, request)
                saved = keep(folder, name, answers, column)
            except Exception as exc:
                return error_text(exc), gr.skip(), gr.skip(), gr.update(), gr.skip()
            return kept(answers, column, saved, judged_fps, version)
        return on_prefer

    def edit_handler(index: int):
        def on_edit(shown, convs, judged_fps, request: gr.Request):
            try:
                shown = list(shown or [])[:MAX_COLUMNS]
                if index >= len(shown):
                    raise WorkbenchError("that column is not shown")
                column = shown[index]
                answers = turn_to_judge(shown, convs, column, judged_fps, request)
            except Exception as exc:
                return gr.update(), gr.update(), gr.skip(), error_text(exc)
            mine = next(a for a in answers if a.model == column)
            if len(answers) < 2:
                return gr.update(), gr.update(), gr.skip(), error_text(WorkbenchError(
                    f"only {column} answered this turn: there is nothing to compare its answer with"))
            return (gr.update(visible=True), gr.update(value=mine.message.get("content") or ""),
                    {"column": column, "fingerprint": preferences.fingerprint(answers)},
                    f"✏️ Edit **{column}**'s answer, then press *Keep the edited answer*.")
        return on_edit

    def on_keep(text, edit, shown, convs, name, folder, judged_fps, version, request: gr.Request):
        try:
            if not edit:
                raise WorkbenchError("press ✏️ under an answer first")
            if not (text or "").strip():
                raise WorkbenchError("the edited answer is empty")
            column = edit["column"]
            answers = turn_to_judge(shown, convs, column, judged_fps, request)
            if preferences.fingerprint(answers) != edit["fingerprint"]:
                raise WorkbenchError("the answers on screen changed since you started editing (a new or regenerated "
                                     "answer); press ✏️ again")
            saved = keep(folder, name, answers, column, edited=text)
        except Exception as exc:
            return error_text(exc), gr.skip(), gr.skip(), gr.update(), gr.skip()
        original = next(a for a in answers if a.model == column).message.get("content") or ""
        return kept(answers, column, saved, judged_fps, version, edited=text.strip() != original.strip())

    def on_both_bad(shown, convs, name, folder, judged_fps, request: gr.Request):
        try:
            answers = turn_to_judge(shown, convs, None, judged_fps, request)
            saved = keep(folder, name, answers, None)
        except Exception as exc:
            return error_text(exc), gr.skip(), gr.update(), gr.skip()
        fps = [*(judged_fps or []), preferences.fingerprint(answers)][-MAX_JUDGED:]
        names = ", ".join(f"**{a.model}**" for a in answers)
        return f"👎 {names}: {preferences.describe(saved)}", fps, gr.update(visible=False), None

    judge_inputs = [compare_pick, histories, pref_name, folder_input, judged, datasets_version]
    judge_outputs = [judge_status, judged, datasets_version, edit_box, pending]
    for i in range(MAX_COLUMNS):
        prefer_btns[i].click(prefer_handler(i), judge_inputs, judge_outputs)
        edit_btns[i].click(edit_handler(i), [compare_pick, histories, judged], [edit_box, edit_text, pending,
                                                                                 judge_status])
    keep_btn.click(on_keep, [edit_text, pending, *judge_inputs], judge_outputs)
    cancel_btn.click(lambda: (gr.update(visible=False), None, ""), None, [edit_box, pending, judge_status])
    both_bad_btn.click(on_both_bad, judge_inputs[:-1], [judge_status, judged, edit_box, pending])
    compare_pick.change(judge_columns, compare_pick, [*judge_cols, *prefer_btns])
    mode.change(lambda m: gr.update(visible=m == COMPARE), mode, judge_box)

    outputs = [message, chatbot, *columns, history, histories, status]
    send_btn.click(on_send, inputs, outputs)
    message.submit(on_send, inputs, outputs)
    regen_btn.click(on_regenerate, inputs, outputs)
    observe_btn.click(on_observe, inputs, [observation, *outputs[1:]])
    stop_btn.click(on_stop, None, status, queue=False)
    clear_btn.click(on_clear, None, [chatbot, history, histories, *columns, status, observation])
    clear_btn.click(lambda: ([], None, gr.update(visible=False), ""), None, [judged, pending, edit_box, judge_status])
