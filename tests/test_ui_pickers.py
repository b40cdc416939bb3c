"""The adapter and model pickers of the Evaluate and Export tabs follow what appears on disk, without a
browser: the app is built in-process and the handlers of its events are called directly."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def app():
    from workbench.ui.app import create_app

    return create_app()


def component(app, elem_id: str):
    (found,) = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return found


def handler(app, trigger, event: str, target):
    """The function that ``trigger``'s ``event`` runs to update ``target``."""
    fns = [f for f in app.fns.values() if (trigger._id, event) in [tuple(t) for t in f.targets]
           and any(o is target for o in f.outputs)]
    assert fns, f"no {event} handler of {trigger} updates {target}"
    return fns[0]


def choices_of(update: dict) -> list:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in update["choices"]]


def fake_run(root, name: str) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (path / "workbench_run.json").write_text(json.dumps({"stage": "sft", "base_model": "smollm2-135m-instruct"}))
    return str(path)


def fake_export(root, name: str) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "workbench_export.json").write_text(json.dumps({"kind": "merged_model"}))
    return str(path)


def test_a_finished_training_run_refreshes_the_evaluate_and_export_adapter_pickers(app, wb_home, monkeypatch):
    monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
    runs_version = app.workbench_context.extras["runs_version"]  # what the Train tab bumps when a run finishes
    run = fake_run(wb_home / "runs", "fresh-run")
    for picker in ("wb-eval-adapters", "wb-export-adapters"):
        fn = handler(app, runs_version, "change", component(app, picker)).fn
        out = fn()
        update = out[0] if isinstance(out, tuple) else out
        assert run in choices_of(update), picker


def test_evaluate_model_pickers_offer_exported_models(app, wb_home, monkeypatch):
    """After an export finishes (the Export tab bumps adapters_version) or on Refresh, the Evaluate tab's base
    model picker lists the registry and the exported models, and the merged-models picker the exported ones."""
    from workbench.export.merge import exports_dir
    from workbench.models import registry

    monkeypatch.delenv("WORKBENCH_EXPORTS", raising=False)

    merged = fake_export(exports_dir(), "smollm2-135m-instruct-mine")
    adapters_version = app.workbench_context.extras["adapters_version"]
    refresh = component(app, "wb-eval-refresh")
    model, merged_picker = component(app, "wb-eval-model"), component(app, "opt-merged")
    assert merged_picker.allow_custom_value and merged_picker.multiselect  # typed directories still allowed
    for trigger, event in ((adapters_version, "change"), (refresh, "click")):
        fn = handler(app, trigger, event, model)
        out = dict(zip([id(o) for o in fn.outputs], fn.fn()))
        models = choices_of(out[id(model)])
        assert merged in models and set(registry.MODELS) <= set(models)
        assert choices_of(out[id(merged_picker)]) == [merged]


def test_merged_models_picked_in_the_tab_reach_the_command(tmp_path, wb_home):
    from workbench.ui.eval_tab import plan_from_form

    one, two = tmp_path / "merged-one", tmp_path / "merged-two"
    plan = plan_from_form("smollm2-135m-instruct", "auto", "none", [], ["qa"], "",
                          {"merged": [str(one), f"copy={two}", " "], "include_base": True})
    assert plan.config["eval"]["merged"] == f"{one},copy={two}"
    assert plan.command().count("--merged") == 2
    plan = plan_from_form("smollm2-135m-instruct", "auto", "none", [], ["qa"], "", {"merged": [], "include_base": True})
    assert "merged" not in plan.config["eval"]
