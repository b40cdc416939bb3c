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
