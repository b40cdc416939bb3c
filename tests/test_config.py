"""Options declared once: coercion, ranges, choices, cross-field rules, YAML and CLI generation."""

import argparse
from dataclasses import dataclass

import pytest

from workbench.config import GenerationArgs, ModelArgs, OptionError, WorkbenchError
from workbench.config.base import Options, add_arguments, from_mapping, load_yaml, option, split_mapping


@dataclass
class Demo(Options):
    rate: float = option(1e-4, "learning rate", min=0.0)
    steps: int = option(10, "steps", min=1)
    mode: str = option("a", "mode", choices=("a", "b"))
    flag: bool = option(False, "a flag")
    targets: str = option("q_proj,v_proj", "targets")
    maybe: int | None = option(None, "optional")

    def validate(self):
        if self.mode == "b" and self.flag:
            raise OptionError("flag", "cannot be set with mode b")


def test_strings_from_yaml_or_cli_are_coerced():
    d = from_mapping(Demo, {"rate": "5e-6", "steps": "3", "flag": "true", "maybe": "none", "targets": ["q", "v"]})
    assert d.rate == 5e-6 and d.steps == 3 and d.flag is True and d.maybe is None and d.targets == "q,v"


@pytest.mark.parametrize(
    "values, option_name, words",
    [
        ({"rate": -1}, "rate", "below the minimum"),
        ({"steps": 0}, "steps", "below the minimum"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"mode": "c"}, "mode", "not one of"),
        ({"flag": "maybe"}, "flag", "true or false"),
        ({"mode": "b", "flag": True}, "flag", "cannot be set"),
    ],
)
def test_bad_values_name_the_option(values, option_name, words):
    with pytest.raises(OptionError) as err:
        from_mapping(Demo, values)
    assert err.value.option == option_name
    assert words in str(err.value) and str(err.value).startswith(option_name)


def test_unknown_keys_are_named():
    with pytest.raises(OptionError) as err:
        from_mapping(Demo, {"rate": 1, "lerning_rate": 2})
    assert "lerning_rate" in str(err.value)


def test_split_mapping_distributes_and_reports():
    (model, gen), warnings = split_mapping(
        [ModelArgs, GenerationArgs], {"model_name_or_path": "x/y", "max_new_tokens": 5, "old_key": 1},
        ignored={"old_key": "not used by Workbench"},
    )
    assert model.model_name_or_path == "x/y" and gen.max_new_tokens == 5
    assert warnings and "old_key" in warnings[0]
    with pytest.raises(OptionError, match="bogus"):
        split_mapping([ModelArgs], {"bogus": 1})


def test_generated_cli_flags_accept_llama_factory_style_booleans():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo)
    ns = parser.parse_args(["--flag", "--rate", "2e-5", "--mode", "b"])
    assert vars(ns) == {"flag": True, "rate": "2e-5", "mode": "b"}  # only what was typed
    with pytest.raises(OptionError):
        from_mapping(Demo, vars(ns))  # mode b + flag is refused by the cross-field rule
    ns = parser.parse_args(["--flag", "false"])
    assert from_mapping(Demo, vars(ns)).flag is False


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(WorkbenchError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(WorkbenchError, match="list.yaml: expected a mapping"):
        load_yaml(listy)
    with pytest.raises(WorkbenchError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_model_and_generation_rules():
    with pytest.raises(OptionError, match="quantization_bit"):
        ModelArgs(quantization_bit=3)
    with pytest.raises(OptionError, match="device"):
        ModelArgs(device="tpu")
    with pytest.raises(OptionError, match="temperature"):
        GenerationArgs(do_sample=True, temperature=0.0)
    assert GenerationArgs().generate_kwargs()["do_sample"] is False


# ---- what the forms call the options --------------------------------------------------------------------

def _option_classes():
    from workbench.config.data import DataArgs
    from workbench.config.eval import EvalArgs
    from workbench.config.export import ExportArgs, MergeAdaptersArgs, OutputOptions
    from workbench.config.train import FinetuningArgs, LaunchArgs, TrainArgs

    return (ModelArgs, DataArgs, FinetuningArgs, TrainArgs, LaunchArgs, GenerationArgs, EvalArgs, OutputOptions,
            ExportArgs, MergeAdaptersArgs)


def test_every_option_a_form_shows_has_hand_written_labels():
    """A form never shows a label made from the option's name ("Lora rank", "Use dora", "Bf16")."""
    from workbench.config.base import option_fields

    labels = {}
    for cls in _option_classes():
        for name, f in option_fields(cls).items():
            if not f.metadata.get("ui", True):
                continue  # not in any form (TrainingArguments pass-through options among them)
            label = f.metadata.get("label")
            assert label and f.metadata.get("label_zh"), f"{cls.__name__}.{name} has no English/Chinese label"
            assert "_" not in label, f"{cls.__name__}.{name}: {label!r} spells the option's name"
            labels[name] = label
    assert len(labels) > 90
    assert labels["lora_rank"] == "LoRA rank" and labels["use_dora"] == "Use DoRA"
    assert labels["bf16"] == "bf16 mixed precision" and labels["val_size"] == "Validation split"
    assert labels["lr_scheduler_type"] == "Learning-rate schedule"


def test_the_forms_use_the_labels_and_sensible_steps():
    """The Train tab's form: English labels as written, learning_rate steps by 1e-5 (not 1 from 5e-5)."""
    import gradio as gr

    from workbench.config.train import TrainArgs
    from workbench.ui.forms import option_components
    from workbench.ui.i18n import english

    with gr.Blocks():
        comps = option_components(TrainArgs, only=("learning_rate", "bf16", "lr_scheduler_type", "warmup_ratio",
                                                   "per_device_train_batch_size"))
        gen = option_components(GenerationArgs, only=("temperature",))
    assert english(comps["learning_rate"].label) == "Learning rate"
    assert english(comps["bf16"].label) == "bf16 mixed precision"
    assert english(comps["lr_scheduler_type"].label) == "Learning-rate schedule"
    assert comps["learning_rate"].step == pytest.approx(1e-5)
    assert comps["warmup_ratio"].step == pytest.approx(0.01)
    assert comps["per_device_train_batch_size"].step == 1
    assert gen["temperature"].step == pytest.approx(0.1)


# ---- the default dataset folder: in the Workbench home, never the project's data/ -----------------------

def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_default_dataset_folder_is_in_the_home_and_starts_with_the_demo_sets(wb_home, monkeypatch):
    import json

    from workbench.config.data import DataArgs
    from workbench.data.loader import load_records
    from workbench.data.registry import save_entry
    from workbench.paths import default_dataset_dir, project_data_dir

    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    project = project_data_dir()
    before = _tree(project)
    folder = default_dataset_dir()
    assert folder == wb_home / "data" and DataArgs().dataset_path() == folder
    demo_info = json.loads((project / "dataset_info.json").read_text())
    assert json.loads((folder / "dataset_info.json").read_text()) == demo_info
    for entry in demo_info.values():  # copies of the project's demo files
        assert (folder / entry["file_name"]).read_bytes() == (project / entry["file_name"]).read_bytes()
    assert len(load_records(DataArgs(dataset="identity"))) == 60
    # Saving goes into the home's folder; the project's data/ is never written.
    save_entry(folder, "mine", {"file_name": "identity.json"})
    assert "mine" in json.loads((folder / "dataset_info.json").read_text())
    assert (folder / "dataset_info.json.bak").is_file()
    assert _tree(project) == before
    # Made once: what the user removed stays removed.
    (folder / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "identity.json"}}))
    assert list(json.loads((default_dataset_dir() / "dataset_info.json").read_text())) == ["mine"]


def test_an_explicit_dataset_folder_keeps_working(wb_home, tmp_path, monkeypatch):
    """$WORKBENCH_DATA (an existing folder is used as it is, the project's data/ too) and dataset_dir."""
    from workbench.config.data import DataArgs
    from workbench.paths import default_dataset_dir, project_data_dir

    monkeypatch.setenv("WORKBENCH_DATA", str(project_data_dir()))
    assert default_dataset_dir() == project_data_dir()
    mine = tmp_path / "mine"
    monkeypatch.setenv("WORKBENCH_DATA", str(mine))
    assert default_dataset_dir() == mine and (mine / "identity.json").is_file()  # a new one starts with the demos
    assert DataArgs(dataset_dir=str(tmp_path)).dataset_path() == tmp_path
    assert not (wb_home / "data").exists()


def test_the_cli_defaults_to_the_home_dataset_folder(tmp_path, cli):
    home = tmp_path / "home"
    result = cli("data", "check", "identity", "--json", env={"WORKBENCH_HOME": str(home), "WORKBENCH_DATA": ""})
    assert result.returncode == 0, result.stderr
    assert "identity" in result.stdout and (home / "data" / "dataset_info.json").is_file()


def test_builtin_eval_tasks_find_their_demo_sets_in_any_folder(tmp_path):
    """A dataset folder of the user's own (no demo entries) still evaluates the built-in tasks on the demo sets."""
    from workbench.evaluate.tasks import build_tasks

    (task,) = build_tasks(["qa"], dataset_dir=str(tmp_path), max_samples=2)
    assert task.dataset == "demo_qa_test" and len(task.examples) == 2
