"""The Train tab's logic without a browser: the generated form, form values ↔ options, run planning,
presets, the memory check with a chat model loaded, and the plot helpers."""

from __future__ import annotations

import shlex
import sys

import gradio as gr
import pytest
import yaml

from workbench.train import presets
from workbench.models import resources
from workbench.train import plan as train_plan
from workbench.train import launch as train_launch
from workbench.config.base import OptionError, WorkbenchError, option_fields
from workbench.ui import train_tab
from workbench.ui.plots import loss_figure, overlay_figure, progress_html


def test_every_training_option_has_exactly_one_place():
    fields = train_tab.form_fields()
    sections = {group: train_tab.section_names(fields, group) for group, *_ in train_tab.GROUPS}
    placed = [name for names in sections.values() for name in names]
    assert len(placed) == len(set(placed))
    expected = set()
    for cls in train_plan.train_option_classes():
        expected |= {n for n, f in option_fields(cls).items() if f.metadata.get("ui", True)}
    expected -= set(train_tab.TOP_BAR) | set(train_tab.SKIP)
    assert set(placed) == expected
    assert sections["basic"][:3] == ["stage", "finetuning_type", "dataset"]
    assert {"lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_dora", "use_rslora"} <= set(sections["lora"])
    assert {"num_processes", "deepspeed"} <= set(sections["distributed"])
    assert {"quantization_type", "double_quantization"} == set(sections["quantization"])
    assert {"val_size", "eval_strategy"} <= set(sections["eval"])
    assert {"save_steps", "resume_from_checkpoint", "report_to"} <= set(sections["output"])


def _components(names):
    fields = train_tab.form_fields()
    out = {}
    with gr.Blocks():
        from workbench.ui.forms import option_components

        for name in names:
            cls, _ = fields[name]
            if name == "dataset":
                out[name] = gr.Dropdown(choices=["identity"], multiselect=True, allow_custom_value=True)
            elif name == "deepspeed":
                out[name] = train_tab.deepspeed_dropdown(cls)
            else:
                out.update(option_components(cls, only=[name]))
    return out


def test_preset_values_survive_the_form_and_plan(tmp_path):
    """A preset shown in the form and read back plans the same config (plus the run's output_dir)."""
    values, _ = presets.load_preset("cpu_quickstart")
    names = list(train_tab.form_fields())
    comps = _components(names)
    raw = [train_tab.component_value(comps[n], n, values.get(n, train_tab._default(train_tab.form_fields()[n][0], n)))
           for n in names]
    collected = train_tab.collect_values(names, raw, values["model_name_or_path"], values.get("template", "auto"),
                                         "auto", "none")
    plan = train_plan.plan_training(collected, "from-preset", root=tmp_path)
    expected = train_plan.compact_config({**values, "output_dir": str(tmp_path / "from-preset")})
    assert plan.config == expected
    assert plan.argv == [sys.executable, "-m", "workbench", "train", str(tmp_path / "from-preset" / "config.yaml")]
    assert collected["report_to"] == "none"  # text "none" is a value, not the dropdown's unset entry


def test_collect_values_names_the_option_for_emptied_and_bad_boxes():
    names = ["learning_rate", "lora_alpha", "dataset", "quantization_type"]
    with pytest.raises(OptionError, match="learning_rate: a value is required"):
        train_tab.collect_values(names, [None, None, ["identity"], "nf4"], "m", "auto", "auto", "none")
    values = train_tab.collect_values(names, [1e-4, None, ["identity", "demo_qa"], "nf4"], "m", "auto", "auto", "4")
    assert values["lora_alpha"] is None and values["dataset"] == "identity,demo_qa" and values["quantization_bit"] == "4"
    with pytest.raises(OptionError, match="model_name_or_path"):
        train_tab.collect_values(names, [1e-4, None, [], "nf4"], "  ", "auto", "auto", "none")


def test_deepspeed_is_a_dropdown_of_presets_that_takes_a_typed_path():
    from workbench.infer.session import ModelManager
    from workbench.ui.app import build_top_bar
    from workbench.ui.context import AppContext

    ctx = AppContext(manager=ModelManager())
    with gr.Blocks() as demo:
        build_top_bar(ctx)
        train_tab.build(ctx)
    found = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "opt-deepspeed"]
    assert len(found) == 1
    box = found[0]
    assert isinstance(box, gr.Dropdown) and box.allow_custom_value and box.value == ""
    assert [value for _, value in box.choices] == ["", "z2", "z3", "z2_offload", "z3_offload"]
    # The empty entry is no DeepSpeed (as the empty text box was); a preset name or a typed JSON path is kept.
    assert train_tab.component_value(box, "deepspeed", None) == ""
    assert train_tab.component_value(box, "deepspeed", "z3") == "z3"
    for raw, expected in (("", None), ("z2_offload", "z2_offload"), (" /x/ds.json ", "/x/ds.json")):
        assert train_tab.collect_values(["deepspeed"], [raw], "m", "auto", "auto", "none")["deepspeed"] == expected


def test_preview_shows_the_accelerate_command_a_launched_run_expands_to(tmp_path, monkeypatch):
    single = train_plan.plan_training(_values(), "single", root=tmp_path)
    assert train_tab.preview_command(single) == single.command  # one process: just the command
    plan = train_plan.plan_training(_values(num_processes=2), "dp", root=tmp_path)
    first, second = train_tab.preview_command(plan).split("\n")
    assert first == plan.command and first.endswith("--launch --num_processes 2")
    prefix = "# which runs: "
    assert second.startswith(prefix)
    argv = shlex.split(second[len(prefix):])
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in argv
    assert argv[argv.index("--num_processes") + 1] == "2"
    # Exactly what `workbench train config.yaml --launch --num_processes 2` runs (without running it).
    import workbench.train.distributed as launch_module
    from workbench.train.cli import _launch

    launched = []
    monkeypatch.setattr(launch_module, "run_launch", lambda cmd, env, **kw: launched.append(cmd) or 0)
    _launch(plan.train_config, plan.launch, str(plan.path / "config.yaml"), {})
    assert launched == [argv]


def _values(**over):
    values = {"model_name_or_path": "smollm2-135m-instruct", "dataset": "identity", "max_steps": 4}
    values.update(over)
    return values


def test_plan_launch_resume_and_name_rules(tmp_path):
    plan = train_plan.plan_training(_values(num_processes=2), "dp", root=tmp_path)
    assert plan.argv[-3:] == ["--launch", "--num_processes", "2"]
    assert "num_processes" not in plan.config  # launch options travel on the command line
    with pytest.raises(OptionError, match="resume_from_checkpoint: run 'new' does not exist yet"):
        train_plan.plan_training(_values(resume_from_checkpoint="true"), "new", root=tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "log.txt").write_text("x")
    with pytest.raises(WorkbenchError, match="run 'old' already exists"):
        train_plan.plan_training(_values(), "old", root=tmp_path)
    with pytest.raises(OptionError, match="resume_from_checkpoint: true, but .* holds no checkpoint"):
        train_plan.plan_training(_values(resume_from_checkpoint="true"), "old", root=tmp_path)
    (tmp_path / "old" / "checkpoint-2").mkdir()
    (tmp_path / "old" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert train_plan.plan_training(_values(resume_from_checkpoint="true"), "old", root=tmp_path).reuse
    with pytest.raises(WorkbenchError, match="not allowed"):
        train_plan.plan_training(_values(), "../up", root=tmp_path)
    with pytest.raises(WorkbenchError, match="dataset 'nope' is not in"):
        train_plan.plan_training(_values(dataset="nope"), "x", root=tmp_path)
    with pytest.raises(OptionError, match="dataset: name at least one dataset"):
        train_plan.plan_training(_values(dataset=None), "x", root=tmp_path)


def test_presets_save_load_and_bad_files(wb_home):
    path = presets.save_preset("mine", {"learning_rate": 1e-4, "dataset": "identity", "output_dir": "/x"})
    assert path == wb_home / "presets" / "mine.yaml"
    values, where = presets.load_preset("mine")
    assert values == {"learning_rate": 1e-4, "dataset": "identity"} and where == path  # output_dir is per run
    presets.save_preset("cpu_quickstart", {"learning_rate": 2e-4})
    listed = presets.list_presets()
    assert "cpu_quickstart" in listed and "cpu_quickstart (mine)" in listed
    assert presets.load_preset("cpu_quickstart (mine)")[0] == {"learning_rate": 2e-4}
    # Qwen's finetune names in a preset load as the options the form has.
    (wb_home / "presets" / "qwen.yaml").write_text("model_max_length: 512\nlora_r: 16\nuse_lora: true\n")
    assert presets.load_preset("qwen")[0] == {"cutoff_len": 512, "lora_rank": 16, "finetuning_type": "lora"}
    (wb_home / "presets" / "typo.yaml").write_text("learning_rat: 0.1\n")
    with pytest.raises(OptionError, match=r"learning_rat: .*typo.yaml: unknown option"):
        presets.load_preset("typo")
    (wb_home / "presets" / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(WorkbenchError, match="broken.yaml: not valid YAML"):
        presets.load_preset("broken")
    for bad in ("../up", "a/b", ""):
        with pytest.raises(WorkbenchError, match="preset name"):
            presets.save_preset(bad, {})
    with pytest.raises(WorkbenchError, match="no preset named 'ghost'"):
        presets.load_preset("ghost")


def test_start_is_refused_when_the_chat_model_leaves_too_little_memory(tiny_model_dir, tmp_path, monkeypatch):
    from workbench.config.model import ModelArgs
    from workbench.infer.session import ModelManager

    manager = ModelManager()
    loaded = manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir)))
    plan = train_plan.plan_training(_values(model_name_or_path=str(tiny_model_dir)), "mem", root=tmp_path)
    train_plan.check_train_memory(plan, loaded)  # plenty of memory here: no complaint
    monkeypatch.setenv("WORKBENCH_MAX_MEMORY", "64MiB")  # a small machine
    with pytest.raises(WorkbenchError) as err:
        train_plan.check_train_memory(plan, loaded)
    text = str(err.value)
    assert "this training run needs about" in text and "only 64 MiB is available RAM, capped by WORKBENCH_MAX_MEMORY" in text
    assert f"The chat model {loaded.label} holds about" in text and "Unload" in text
    with pytest.raises(WorkbenchError, match="Lower the batch size"):
        train_plan.check_train_memory(plan, None)
    monkeypatch.setenv("WORKBENCH_MAX_MEMORY", "lots")
    with pytest.raises(WorkbenchError, match="WORKBENCH_MAX_MEMORY='lots'"):
        train_plan.check_train_memory(plan, None)


def test_memory_estimate_orders_methods_sensibly(bundled_model_dir):
    shape = resources.model_shape(bundled_model_dir)
    assert 130e6 < shape.params < 140e6 and shape.layers == 30 and shape.hidden == 576
    common = dict(weight_bytes=4, batch_size=4, cutoff_len=256, gradient_checkpointing=False)
    lora = resources.estimate_train_memory(shape, finetuning_type="lora", quantization_bit=None, **common)
    full = resources.estimate_train_memory(shape, finetuning_type="full", quantization_bit=None, **common)
    qlora = resources.estimate_train_memory(shape, finetuning_type="lora", quantization_bit=4, **common)
    assert qlora < lora < full
    assert full - lora > 12 * shape.params * 0.9  # optimizer state for every weight
    assert resources.parse_size("1.5GiB") == int(1.5 * (1 << 30)) and resources.parse_size("2048") == 2048


def test_plot_helpers():
    entries = [{"kind": "train", "step": i, "total_steps": 4, "loss": 2.0 / i, "reward_accuracy": 0.5 + i / 10}
               for i in range(1, 5)]
    entries.append({"kind": "eval", "step": 4, "total_steps": 4, "eval_loss": 0.9, "loss": None})
    fig = loss_figure(entries, "run")
    names = [t.name for t in fig.data]
    assert names == ["loss", "loss (smoothed)", "eval loss", "reward accuracy"]
    assert list(fig.data[0].y) == [2.0, 1.0, 2.0 / 3, 0.5] and fig.data[3].yaxis == "y2"
    over = overlay_figure({"a": entries, "b": entries[:2]})
    assert [t.name for t in over.data] == ["a (raw)", "a", "a eval", "b (raw)", "b"]
    html = progress_html(2, 4, state="running", elapsed=65, eta=30, tokens_per_second=1234.5)
    assert "step 2/4 · 50% · elapsed 1m05s · ETA 0m30s · 1,234 tokens/s" in html and 'data-percent="50"' in html
    assert 'data-percent="100"' in progress_html(3, 4, state="finished")


def test_abort_keeps_the_last_checkpoint_and_resume_continues(tiny_model_dir, tmp_path):
    """Abort a real training job after a checkpoint, then Start again with resume_from_checkpoint=true."""
    root = tmp_path / "runs"
    values = _values(model_name_or_path=str(tiny_model_dir), max_steps=100000, save_steps=3, logging_steps=1,
                     per_device_train_batch_size=2, cutoff_len=64)
    job = train_launch.start_training(train_plan.plan_training(values, "resumable", root=root))
    try:
        _abort_after_checkpoint(job)
    finally:
        if job.is_active():
            job.abort(grace=2)
    _resume_and_check(job, values, root)


def _abort_after_checkpoint(job) -> None:
    import time

    deadline = time.time() + 300
    while not (job.path / "checkpoint-3" / "trainer_state.json").is_file():
        assert time.time() < deadline and job.state == "running", job.tail_log()
        time.sleep(0.5)
    assert job.abort(grace=5)["state"] == "aborted"


def _resume_and_check(job, values, root) -> None:
    from workbench.jobs import store as jobs
    from workbench.train import plan as train_plan
    from workbench.train import launch as train_launch

    saved = [p for p in job.path.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    last = max(int(p.name.split("-")[1]) for p in saved)
    # An abort in the middle of a save leaves a checkpoint without trainer_state.json: resume must skip it.
    (job.path / "checkpoint-999999").mkdir()
    (job.path / "checkpoint-999999" / "adapter_model.safetensors").write_bytes(b"partial")

    with pytest.raises(WorkbenchError, match="already exists"):
        train_plan.plan_training(values, "resumable", root=root)
    plan = train_plan.plan_training({**values, "max_steps": last + 2, "resume_from_checkpoint": "true"}, "resumable",
                              root=root)
    resumed = train_launch.start_training(plan)
    try:
        st = resumed.wait(300)
    finally:
        if resumed.is_active():
            resumed.abort(grace=2)
    assert st["state"] == "finished", resumed.tail_log(40)
    log = resumed.tail_log(200)
    assert f"Resuming from {job.path / f'checkpoint-{last}'}" in log
    steps = [e["step"] for e in resumed.read_progress(0).entries if e.get("kind") == "train"]
    assert steps[-2:] == [last + 1, last + 2] and steps == sorted(steps)  # lines after the checkpoint were rewritten
    assert (job.path / "adapter_config.json").is_file() and jobs.get_job("resumable", root=root).state == "finished"


# ---- issue 18: estimates, signs of life, the form kept per browser, a run's config into the form ----------------

def _stand_in_progress(path, entries, config=None, state="finished"):
    """A run directory as a finished training job leaves it (status.json, config.yaml, progress.jsonl): the readers
    of those files are under test here, not the trainer."""
    import json
    import time

    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"name": path.name, "kind": "train", "state": state,
                                                  "created": time.time(), "started": time.time() - 60,
                                                  "ended": time.time()}))
    (path / "config.yaml").write_text(yaml.safe_dump(config or {}))
    (path / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_estimate_counts_examples_steps_and_tokens_and_names_its_basis(tiny_model_dir, tmp_path):
    from workbench.data.loader import load_records
    from workbench.jobs import runs

    values = _values(model_name_or_path=str(tiny_model_dir), max_steps=-1, num_train_epochs=2,
                     per_device_train_batch_size=4, gradient_accumulation_steps=2, val_size=0.1, cutoff_len=64)
    plan = train_plan.plan_training(values, "est", root=tmp_path)
    rows = len(load_records(plan.train_config.data, log=lambda m: None))
    est = train_plan.estimate_run(plan)
    held_out = max(1, round(rows * 0.1))
    assert est.train_examples == rows - held_out and est.eval_examples == held_out
    assert est.examples_per_step == 8
    batches = -(-est.train_examples // 4)
    assert est.steps_per_epoch == -(-batches // 2) and est.steps == 2 * est.steps_per_epoch
    assert 1 < est.tokens_per_example <= 64 and est.tokens_per_step == pytest.approx(8 * est.tokens_per_example)
    # No earlier run: a probe of this CPU, said to be rough.
    assert est.seconds > 0 and est.basis.startswith("rough estimate") and "matmul probe" in est.basis
    text = train_tab.estimate_markdown(est)
    assert f"**{est.train_examples:,}** training examples, {held_out} held out" in text
    assert f"**{est.steps:,}** steps" in text and "tokens per step" in text and "Estimate before Start" in text

    # An earlier run of the same model, method and precision times it instead, by its measured tokens/s.
    root = tmp_path / "runs"
    _stand_in_progress(root / "earlier", [
        {"kind": "train", "step": 5, "elapsed": 10.0, "tokens_per_second": 100.0, "loss": 1.0},
        {"kind": "eval", "step": 5, "eval_loss": 1.0},
        {"kind": "train", "step": 10, "elapsed": 20.0, "tokens_per_second": 50.0, "loss": 0.9}],
        config={**values, "output_dir": str(root / "earlier")})
    _stand_in_progress(root / "other-model", [{"kind": "train", "step": 1, "elapsed": 1.0, "loss": 1.0}],
                       config={**values, "model_name_or_path": "smollm2-135m-instruct"})
    pace = runs.comparable_pace({**plan.config, **plan.launch.to_dict()}, root=root)
    assert pace.run == "earlier" and pace.seconds_per_step == 2.0 and pace.tokens_per_second == 50.0
    timed = train_plan.estimate_run(plan, pace)
    assert timed.seconds == pytest.approx(timed.steps * timed.tokens_per_step / 50.0)
    assert timed.basis.startswith("estimate from run earlier")
    assert runs.comparable_pace({**values, "use_dora": True}, root=root) is None  # DoRA is another pace


def test_estimate_warns_of_slow_choices_and_counts_what_it_can(tiny_model_dir, tmp_path, monkeypatch):
    plan = train_plan.plan_training(_values(model_name_or_path=str(tiny_model_dir), use_dora=True,
                                            gradient_checkpointing=True), "slow", root=tmp_path)
    est = train_plan.estimate_run(plan)
    assert any(w.startswith("use_dora on a CPU") for w in est.warnings)
    assert any(w.startswith("gradient_checkpointing") for w in est.warnings)
    assert "🐢 **Slow here:** use_dora on a CPU" in train_tab.estimate_markdown(est)
    shape = resources.ModelShape(params=7_000_000_000, hidden=4096, layers=32, vocab=32000)
    full = train_plan.plan_training(_values(finetuning_type="full"), "full", root=tmp_path).train_config
    assert train_plan.slow_choices(full, "cpu", shape)[0].startswith("full fine-tuning of a 7.0B-parameter model")
    assert train_plan.slow_choices(full, "cuda", shape) == []
    # Streaming data is not counted before the run: max_steps is the length.
    stream = train_plan.plan_training(_values(model_name_or_path=str(tiny_model_dir), streaming=True, max_steps=7),
                                      "stream", root=tmp_path)
    est = train_plan.estimate_run(stream)
    assert est.train_examples is None and est.steps == 7 and est.notes[0].startswith("streaming data")


def test_eval_loss_rising_is_pointed_out():
    from workbench.train.callbacks import EVAL_RISES_WARN, eval_loss_rises

    evals = [{"kind": "eval", "step": s, "eval_loss": v} for s, v in ((10, 1.0), (20, 0.8), (30, 0.85), (40, 0.9),
                                                                     (50, 0.95))]
    assert eval_loss_rises(evals) == (3, [0.8, 0.85, 0.9, 0.95]) and EVAL_RISES_WARN == 3
    assert eval_loss_rises(evals[:4])[0] == 2 and eval_loss_rises([])[0] == 0
    from pathlib import Path

    text = train_tab.status_markdown(Path("/r/run"), {"state": "running"}, "", evals)
    assert "Overfitting?" in text and "rose 3 evaluations in a row (0.8000 → 0.8500 → 0.9000 → 0.9500)" in text
    assert "load_best_model_at_end" in text and "early_stopping_patience" in text
    assert "Overfitting?" not in train_tab.status_markdown(Path("/r/run"), {"state": "running"}, "", evals[:4])


def test_best_model_and_early_stopping_options_are_checked_before_a_run(tmp_path):
    fields = train_tab.form_fields()
    assert fields["load_best_model_at_end"][1] == "eval" and fields["early_stopping_patience"][1] == "eval"
    for name, value in (("load_best_model_at_end", True), ("early_stopping_patience", 2)):
        with pytest.raises(OptionError, match=f"{name}: needs an eval set"):
            train_plan.plan_training(_values(**{name: value}), "x", root=tmp_path)
        with pytest.raises(OptionError, match=f"{name}: needs evaluations"):
            train_plan.plan_training(_values(**{name: value}, val_size=0.1, eval_strategy="no"), "x", root=tmp_path)
    with pytest.raises(OptionError, match="save_strategy: load_best_model_at_end needs checkpoints"):
        train_plan.plan_training(_values(load_best_model_at_end=True, val_size=0.1, save_strategy="no"), "x",
                                 root=tmp_path)
    with pytest.raises(OptionError, match=r"eval_steps: .*save_steps \(100\) must be a multiple of eval_steps \(30\)"):
        train_plan.plan_training(_values(load_best_model_at_end=True, val_size=0.1, eval_steps=30), "x",
                                 root=tmp_path)
    plan = train_plan.plan_training(_values(load_best_model_at_end=True, early_stopping_patience=2, val_size=0.1,
                                            eval_steps=50), "ok", root=tmp_path)
    assert plan.config["load_best_model_at_end"] is True and plan.config["early_stopping_patience"] == 2


def test_phase_is_shown_until_the_first_progress_line(tmp_path):
    import time

    from workbench.rundir import read_phase, write_phase

    st = {"state": "running", "started": time.time() - 5}
    assert train_tab.phase_text(st, [], None).startswith("starting the training process")
    write_phase(tmp_path, "loading", "loading tiny and building the trainer (60 training examples ready)")
    phase = read_phase(tmp_path)
    assert phase["phase"] == "loading" and not list(tmp_path.glob(".*.tmp"))
    assert train_tab.phase_text(st, [], phase).startswith("loading tiny and building the trainer (60 training")
    write_phase(tmp_path, "training", "step 1 of 40 took 2.5 s", first_step_seconds=2.5)
    assert train_tab.phase_text(st, [], read_phase(tmp_path)) == "step 1 of 40 took 2.5 s"
    first = [{"kind": "train", "step": 5, "total_steps": 40, "loss": 1.0}]
    assert train_tab.phase_text(st, first, read_phase(tmp_path)) is None  # the progress bar says it now
    write_phase(tmp_path, "evaluating", "evaluating at step 10 of 40")
    assert train_tab.phase_text(st, first, read_phase(tmp_path)).startswith("evaluating at step 10 of 40")
    stale = {**read_phase(tmp_path), "time": st["started"] - 100}  # left by an earlier attempt of the run
    assert train_tab.phase_text(st, [], stale).startswith("starting")
    assert train_tab.phase_text({"state": "finished"}, [], read_phase(tmp_path)) is None
    html = progress_html(None, None, state="running", waiting="loading tiny")
    assert "⏳ loading tiny" in html and "waiting for the first step" not in html


def test_the_browser_draft_round_trip_keeps_what_the_form_still_offers():
    """on_restore with a draft as the browser stores it (save_draft_js: the names and the raw values in order)."""
    from workbench.infer.session import ModelManager
    from workbench.ui.app import build_top_bar
    from workbench.ui.context import AppContext

    ctx = AppContext(manager=ModelManager())
    with gr.Blocks() as demo:
        build_top_bar(ctx)
        train_tab.build(ctx)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    names = list(train_tab.form_fields())
    components = {n: by_id[f"opt-{n}"] for n in names}
    js = train_tab.save_draft_js(names)
    assert train_tab.DRAFT_KEY in js and train_tab.DRAFT_KEY in train_tab.READ_DRAFT_JS
    assert "if (window.wbTrainRestored)" in js and "wbTrainRestored = true" in train_tab.RESTORED_JS
    raw = {n: train_tab.component_value(components[n], n, train_tab._default(train_tab.form_fields()[n][0], n))
           for n in names}
    raw.update(learning_rate=0.002, max_samples=50, dataset=["identity"], lr_scheduler_type="no-longer-offered")
    top = {"model_name_or_path": "tiny-model-dir", "template": "auto", "infer_dtype": "float32",
           "quantization_bit": "none"}
    draft = {"names": [*names, *train_tab.TOP_KEYS], "values": [*raw.values(), *top.values()]}
    out = train_tab.on_restore(ctx, components, False, draft)
    note, updates, tops = out[0], out[1:1 + len(names)], out[1 + len(names):]
    assert "as you left it" in note and len(tops) == len(train_tab.TOP_KEYS)
    value = {n: u.get("value", "skipped") if isinstance(u, dict) else "skipped" for n, u in zip(names, updates)}
    assert value["learning_rate"] == 0.002 and value["max_samples"] == 50 and value["dataset"] == ["identity"]
    assert value["lr_scheduler_type"] == "skipped"  # a choice the form no longer offers is left at the default
    assert tops[0]["value"] == "tiny-model-dir"  # no model loaded: the top bar comes back too
    # A first visit (nothing stored, or something unreadable): the unset numbers are blanked by this tab, which
    # app.clear_unset_numbers leaves them to.
    for nothing in (None, "garbage", {"names": ["x"]}):
        first = train_tab.on_restore(ctx, components, False, nothing)
        assert first[0] == gr.skip()
        assert [u for n, u in zip(names, first[1:]) if n == "max_samples"][0]["value"] is None
    assert components["max_samples"] in ctx.restored_on_load


def test_a_runs_config_loads_into_the_form_under_a_new_name(tmp_path, monkeypatch):
    from workbench.jobs import runs

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    fields = train_tab.form_fields()
    comps = _components(list(fields))
    config = {"model_name_or_path": "some/model", "template": "chatml", "stage": "sft", "finetuning_type": "lora",
              "dataset": "identity,demo_qa", "learning_rate": 0.0003, "lora_rank": 16, "use_dora": True,
              "output_dir": str(tmp_path / "done"), "resume_from_checkpoint": "true", "adam_beta2": 0.95}
    _stand_in_progress(tmp_path / "done", [], config=config)
    assert runs.read_config(tmp_path / "done")["lora_rank"] == 16
    out = train_tab.on_load_run_config(comps, fields, {"name": "done"})
    note, updates = out[0], dict(zip(fields, out[1:1 + len(fields)]))
    top, run_name = out[1 + len(fields):-1], out[-1]
    assert note.startswith("✅ Loaded the config of run **done**") and "adam_beta2=0.95" in note
    assert updates["learning_rate"]["value"] == 0.0003 and updates["lora_rank"]["value"] == 16
    assert updates["use_dora"]["value"] is True and updates["dataset"]["value"] == ["identity", "demo_qa"]
    assert updates["resume_from_checkpoint"]["value"] == ""  # the new run starts afresh
    assert top[0]["value"] == "some/model" and top[1]["value"] == "chatml"
    assert run_name["value"].startswith("sft-lora-") and run_name["value"] != "done"
    assert train_tab.on_load_run_config(comps, fields, {"name": None})[0].startswith("Pick a run")


def test_a_run_reports_its_phases_and_stops_early_on_its_best_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """A real (in-process) run of the tiny model: phase.json says what it does before the first progress line
    (the writes are recorded on their way to the real file), and early stopping + load_best_model_at_end act."""
    import json

    from helpers import tiny_values

    import workbench.train.callbacks as callbacks
    import workbench.train.run as run
    from workbench.config.train import parse_train_config
    from workbench.rundir import read_phase, write_phase

    seen = []

    def record(directory, phase, text, **extra):
        seen.append((phase, text, extra))
        write_phase(directory, phase, text, **extra)

    monkeypatch.setattr(run, "write_phase", record)
    monkeypatch.setattr(callbacks, "write_phase", record)
    out = tmp_path / "best"
    values = tiny_values(tiny_model_dir, out, max_steps=8, val_size=0.25, eval_steps=2, save_steps=2,
                         load_best_model_at_end=True, early_stopping_patience=1, learning_rate=0.5)
    run.run_training(parse_train_config(values), log=lambda m: None)
    phases = [p for p, _, _ in seen]
    assert phases[:3] == ["tokenising", "loading", "training"] and phases[-1] == "saving"
    assert "evaluating" in phases
    assert seen[1][2]["train_examples"] > 0 and "training examples ready" in seen[1][1]
    first = next(extra for p, _, extra in seen if "first_step_seconds" in extra)
    assert first["step"] == 1 and first["total_steps"] == 8 and first["first_step_seconds"] > 0
    assert read_phase(out)["phase"] == "saving"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] and state["best_metric"] == min(
        e["eval_loss"] for e in state["log_history"] if "eval_loss" in e)
    assert "EarlyStoppingCallback" in state["stateful_callbacks"]
