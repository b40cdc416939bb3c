"""The Gradio app: a shared top bar (model, template, precision, load/unload) and one tab per module.

A tab module defines ``build(ctx: AppContext) -> None`` and is listed in ``TABS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
from pathlib import Path

import gradio as gr

from workbench.config.base import WorkbenchError
from workbench.config.model import DTYPES, ENGINES
from workbench.data.templates import TEMPLATES
from workbench.infer.api import check_exposure
from workbench.infer.session import ModelManager
from workbench.models import bundled, registry
from workbench.ui.binding import bind
from workbench.ui.context import AppContext, error_text, model_args_from, model_choices
from workbench.ui.forms import NONE_CHOICE
from workbench.ui.i18n import I18N, T

# (English title, Chinese title, module). Add a tab by adding a line.
TABS: list[tuple[str, str, str]] = [
    ("Data", "数据", "workbench.ui.data_tab"),
    ("Train", "训练", "workbench.ui.train_tab"),
    ("Chat", "对话", "workbench.ui.chat_tab"),
    ("Evaluate", "评测", "workbench.ui.eval_tab"),
    ("Export", "导出", "workbench.ui.export_tab"),
]

CSS = """
#wb-status {min-height: 2.5em}
.wb-error {color: #b91c1c}
"""


def template_choices() -> list[str]:
    return ["auto", *[name for name in TEMPLATES if name != "auto"]]


def build_top_bar(ctx: AppContext) -> None:
    with gr.Row(equal_height=True):
        ctx.model = gr.Dropdown(
            choices=model_choices(), value=registry.MODELS and "smollm2-135m-instruct", allow_custom_value=True,
            label=T("Model (alias, local directory or hub id)", "模型（别名、本地目录或 Hub ID）"), scale=4,
            elem_id="wb-model",
        )
        ctx.template = gr.Dropdown(choices=template_choices(), value="auto", label=T("Chat template", "对话模板"),
                                   scale=1, elem_id="wb-template")
        ctx.dtype = gr.Dropdown(choices=list(DTYPES), value="auto", label=T("Precision", "精度"), scale=1,
                                elem_id="wb-dtype")
        ctx.quantization = gr.Dropdown(choices=[NONE_CHOICE, "4", "8"], value=NONE_CHOICE,
                                       label=T("Quantization (bits)", "量化（比特）"), scale=1,
                                       elem_id="wb-quantization")
        ctx.engine = gr.Dropdown(choices=list(ENGINES), value=ENGINES[0], label=T("Engine", "生成引擎"), scale=1,
                                 elem_id="wb-engine")
        with gr.Column(scale=1, min_width=120):
            ctx.load_button = gr.Button(T("Load model", "加载模型"), variant="primary", elem_id="wb-load")
            ctx.unload_button = gr.Button(T("Unload", "卸载"), elem_id="wb-unload")
    ctx.status = gr.Markdown(elem_id="wb-status")

    # Every page load (a reload, a second tab) shows what the server has loaded, not the defaults.
    gr.on(None, bind(top_bar_state, ctx), outputs=[*ctx.model_inputs(), ctx.template, ctx.status], queue=False,
          show_progress="hidden")
    ctx.model.change(bind(on_model_change, ctx), inputs=ctx.model, outputs=ctx.template)
    ctx.template.change(bind(remember_template, ctx), inputs=[ctx.template, ctx.model], queue=False,
                        show_progress="hidden")
    loaded = ctx.load_button.click(loading_note, outputs=ctx.status).then(
        bind(on_load, ctx), inputs=[*ctx.model_inputs(), ctx.template], outputs=ctx.status
    )
    unloaded = ctx.unload_button.click(bind(on_unload, ctx.manager), outputs=ctx.status)
    ctx.model_changed = [loaded, unloaded]


def top_bar_state(ctx: AppContext):
    """(model, dtype, quantization, engine, template, status) as the server has them: the loaded model's options,
    or the form left as it is when nothing is loaded; the model list is read again (new exports, downloads)."""
    manager, args = ctx.manager, ctx.manager.args
    choices = model_choices()
    status = f"⏳ Loading {ctx.loading}…" if ctx.loading else manager.status()
    if manager.current() is None or args is None:
        return gr.update(choices=choices), gr.update(), gr.update(), gr.update(), gr.update(), status
    quant = str(args.quantization_bit) if args.quantization_bit else NONE_CHOICE
    return (gr.update(choices=choices, value=args.model_name_or_path), args.infer_dtype, quant, args.engine,
            ctx.chosen_template, status)


def is_loaded(ctx: AppContext, model: str | None) -> bool:
    """Whether the top bar's ``model`` is the one the server has loaded."""
    args = ctx.manager.args
    return args is not None and ctx.manager.current() is not None and (model or "").strip() == args.model_name_or_path


def remember_template(ctx: AppContext, template: str, model: str) -> None:
    """The template chosen for the loaded model (a top bar showing another model does not change it)."""
    if is_loaded(ctx, model):
        ctx.chosen_template = template or "auto"


def on_model_change(ctx: AppContext, model: str):
    """A known or merged model's own chat template; for the loaded model (a page load restoring it) the template
    chosen for it."""
    if is_loaded(ctx, model):
        return gr.update(value=ctx.chosen_template)
    model = model or ""
    known = registry.lookup(model) or registry.exported_template(model)
    return gr.update(value=registry.default_template(model)) if known else gr.update()


def loading_note():
    return "⏳ Loading…"


def on_load(ctx: AppContext, model: str, dtype: str, quantization: str, engine: str, template: str):
    manager = ctx.manager
    ctx.loading = (model or "").strip() or "the model"  # what a page opened meanwhile says
    try:
        manager.load(model_args_from(model, dtype, quantization, engine))
    except Exception as exc:  # shown to the user; error_text logs the traceback of a bug
        # What is loaded now (the model as it was, or nothing), so the line never claims more than the server has.
        return f"❌ **Could not load the model.** {error_text(exc, mark=False)}\n\n{manager.status()}"
    finally:
        ctx.loading = None
    ctx.chosen_template = template or "auto"
    return "✅ " + manager.status()


def on_unload(manager: ModelManager):
    manager.unload()
    return manager.status()


def create_app(manager: ModelManager | None = None) -> gr.Blocks:
    ctx = AppContext(manager=manager or ModelManager())
    with gr.Blocks(title="Workbench") as app:
        gr.Markdown(T("# Workbench\nFine-tune, chat with, evaluate and export language models on your machine.",
                      "# Workbench\n在本机微调、对话、评测和导出大语言模型。"))
        build_top_bar(ctx)
        with gr.Tabs():
            for title_en, title_zh, module_name in TABS:
                module = importlib.import_module(module_name)
                with gr.Tab(T(title_en, title_zh), id=module_name.rsplit(".", 1)[-1]):
                    module.build(ctx)
        clear_unset_numbers(app, skip=ctx.restored_on_load)
    app.workbench_context = ctx  # type: ignore[attr-defined]
    return app


def clear_unset_numbers(app: gr.Blocks, skip: list | tuple = ()) -> None:
    """An optional number (max_samples, eval_steps, ...) whose value is None is drawn as 0 by the browser, and
    that 0 is what an untouched form would send: blank those fields when the page loads (except those in ``skip``,
    which a tab restores itself)."""
    unset = [block for block in app.blocks.values() if isinstance(block, gr.Number) and block.value is None
             and not any(block is other for other in skip)]
    if unset:
        app.load(bind(blanks, len(unset)), outputs=unset, show_progress="hidden", queue=False)


def blanks(count: int):
    updates = [gr.update(value=None) for _ in range(count)]
    return updates[0] if count == 1 else tuple(updates)


def parse_auth(value: str | None):
    """``user:pass`` or a file of ``user:pass`` lines."""
    if not value:
        return None
    path = Path(value).expanduser()
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [value]
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            where = f"{path} line {number}" if path.is_file() else "--auth"
            raise WorkbenchError(f"{where}: expected user:password")
        user, password = line.split(":", 1)
        pairs.append((user, password))
    if not pairs:
        raise WorkbenchError(f"--auth {value}: no user:password entries")
    return pairs


def configure_webui(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("WORKBENCH_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WORKBENCH_PORT", "7860")))
    parser.add_argument("--auth", default=None, help="user:password, or a file with one user:password per line "
                                                     "(required with --share or a --host beyond loopback)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--insecure-no-auth", dest="insecure_no_auth", action="store_true",
                        help="allow --share or a --host beyond loopback without --auth (your own proxy authenticates)")


def prepare_bundled_model_in_background() -> None:
    """Convert the bundled GGUF while the page opens, so the first Load takes seconds, not half a minute."""
    def convert():
        try:
            bundled.ensure_converted()
        except WorkbenchError as exc:
            print(f"note: {exc}", file=sys.stderr, flush=True)

    if not bundled.is_converted():
        threading.Thread(target=convert, name="convert-bundled-model", daemon=True).start()


def run_webui(args) -> int:
    auth = parse_auth(args.auth)
    # Beyond loopback (or over --share) only with a password, or when the user says a proxy takes care of it.
    warning = check_exposure(args.host, protected=bool(auth), auth_flag="--auth", share=args.share,
                             insecure=getattr(args, "insecure_no_auth", False))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    prepare_bundled_model_in_background()
    app = create_app()
    print(f"Workbench on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    app.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, auth=auth, share=args.share, i18n=I18N, css=CSS,
        show_error=True, footer_links=["gradio", "settings"],
    )
    return 0
