"""Fixes from the option probes: non-finite numbers are refused by name everywhere (CLI, YAML, the Train tab's
form), a negative number is a flag's value, every transformers.TrainingArguments option reaches the trainer,
and Qwen's finetune.sh command line runs with only the model path changed."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from helpers import SHARED_DATA

from workbench.config.base import (OptionError, _base_type, coerce, from_mapping, load_yaml, option_fields,
                                   resolved_hints, split_mapping)
from workbench.config.data import DataArgs
from workbench.config.eval import EvalArgs
from workbench.config.export import MergeAdaptersArgs
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs
from workbench.config.train import (IGNORED_KEYS, TRAINING_ARGUMENTS_GROUP, UNSUPPORTED_KEYS, FinetuningArgs,
                                    LaunchArgs, TrainArgs, parse_train_config)

# Every options class with a number option (ExportArgs has none: shard_size is text such as 2GB).
ALL_OPTION_CLASSES = (ModelArgs, DataArgs, FinetuningArgs, TrainArgs, LaunchArgs, GenerationArgs, EvalArgs,
                      MergeAdaptersArgs)
QWEN_DATA = SHARED_DATA / "qwen" / "example_data.jsonl"
NON_FINITE = ("nan", "NaN", "inf", "-inf", "Infinity", "1e999", float("nan"), float("inf"), float("-inf"))


def numeric_options(cls):
    hints = resolved_hints(cls)
    return [name for name in option_fields(cls) if _base_type(hints[name])[0] in (int, float)]


# ---- A. non-finite numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL_OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_option_refuses_nan_and_infinity_by_name(cls):
    names = numeric_options(cls)
    assert names
    for name in names:
        for bad in NON_FINITE:
            with pytest.raises(OptionError) as err:
                from_mapping(cls, {name: bad})
            assert err.value.option == name, (name, bad)
            assert "not a finite number" in str(err.value) and str(err.value).startswith(f"{name}: ")


@pytest.mark.parametrize("values, option", [
    ({"learning_rate": "nan"}, "learning_rate"),
    ({"num_train_epochs": "nan"}, "num_train_epochs"),
    ({"learning_rate": "inf"}, "learning_rate"),
    ({"max_grad_norm": "nan"}, "max_grad_norm"),
    ({"max_grad_norm": float("inf")}, "max_grad_norm"),  # YAML's .inf
    ({"adam_beta2": "nan"}, "adam_beta2"),  # a pass-through TrainingArguments option too
    ({"cutoff_len": "inf"}, "cutoff_len"),
    ({"model_max_length": "nan"}, "model_max_length"),  # an alias: named as typed
])
def test_the_reported_non_finite_values_are_option_errors(values, option):
    with pytest.raises(OptionError) as err:
        parse_train_config({"dataset": "identity", **values})
    assert err.value.option == option


def test_merge_weights_must_be_finite():
    with pytest.raises(OptionError, match="weights: weight 2 .* not a finite number"):
        from_mapping(MergeAdaptersArgs, {"weights": "1,nan"})


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "nan"], "learning_rate: nan is not a finite number"),
    (["--num_train_epochs", "nan"], "num_train_epochs: nan is not a finite number"),
    (["--learning_rate", "-1e-4"], "learning_rate: -0.0001 is below the minimum"),
])
def test_cli_reports_one_line_naming_the_option(argv, message, capsys):
    from workbench.cli import main

    assert main(["train", "--dataset", "identity", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "expected one argument" not in err


def test_train_tab_form_values_go_through_the_same_checks(tmp_path):
    """The Train tab builds options from form values with collect_values → train_plan.plan_training (Preview/Start)
    and coerce (Save preset): a NaN or infinite number box is refused there, naming the option."""
    from workbench.train import plan as train_plan
    from workbench.ui import train_tab

    names = ["dataset", "learning_rate", "num_train_epochs", "max_grad_norm"]
    good = [["identity"], 1e-4, 1.0, 1.0]
    train_plan.plan_training(train_tab.collect_values(names, good, "m", "auto", "auto", "none"), "ok", root=tmp_path)
    for position, bad in ((1, float("nan")), (2, float("nan")), (1, float("inf")), (3, float("nan"))):
        raw = list(good)
        raw[position] = bad
        values = train_tab.collect_values(names, raw, "m", "auto", "auto", "none")
        with pytest.raises(OptionError) as err:
            train_plan.plan_training(values, f"bad{position}", root=tmp_path)
        assert err.value.option == names[position]
        with pytest.raises(OptionError) as err:  # the Save-preset path
            coerce(TrainArgs, names[position], bad)
        assert err.value.option == names[position]
    assert not (tmp_path / "bad1").exists()


# ---- negative numbers on the command line ----------------------------------------------------------------

@pytest.mark.parametrize("command, argv, expected", [
    ("train", ["--learning_rate", "-1e-4"], {"learning_rate": "-1e-4"}),
    ("train", ["--warmup_steps", "-.5", "--freeze_trainable_layers", "-2"],
     {"warmup_steps": "-.5", "freeze_trainable_layers": "-2"}),
    ("train", ["--max_grad_norm", "-inf", "--adam_epsilon", "-1E+3"], {"max_grad_norm": "-inf", "adam_epsilon": "-1E+3"}),
    ("chat", ["--temperature", "-2.5e-1"], {"temperature": "-2.5e-1"}),
])
def test_a_negative_number_is_the_value_of_a_flag(command, argv, expected):
    from workbench.cli import build_parser

    ns = vars(build_parser(command).parse_args([command, *argv]))
    assert {k: ns[k] for k in expected} == expected


# ---- B. TrainingArguments pass-through -------------------------------------------------------------------

def test_every_training_arguments_field_is_an_option_an_alias_ignored_or_refused():
    from transformers import TrainingArguments

    known = set(IGNORED_KEYS) | set(UNSUPPORTED_KEYS)
    for cls in (ModelArgs, DataArgs, FinetuningArgs, TrainArgs, LaunchArgs):
        known |= set(option_fields(cls)) | set(getattr(cls, "ALIASES", {}))
    missing = [f.name for f in dataclasses.fields(TrainingArguments) if f.init and f.name not in known]
    assert missing == []
    # Derived from the dataclass itself: type, default and help.
    hf = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    ours = option_fields(TrainArgs)
    for name in ("adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_kwargs", "optim_args", "neftune_noise_alpha",
                 "logging_first_step", "eval_on_start", "dataloader_drop_last", "ddp_backend"):
        meta = ours[name].metadata
        assert meta["passthrough"] and meta["ui"] is False and meta["cli_group"] == TRAINING_ARGUMENTS_GROUP
        assert ours[name].default == hf[name].default
        assert meta["help"] == " ".join(hf[name].metadata["help"].split())
    assert _base_type(resolved_hints(TrainArgs)["adam_beta2"])[0] is float
    assert ours["ddp_backend"].metadata["choices"] == tuple(hf["ddp_backend"].metadata["choices"])
    assert set(ours["logging_strategy"].metadata["choices"]) == {"no", "steps", "epoch"}


def test_pass_through_options_are_in_train_help_but_not_in_the_form(capsys):
    from workbench.cli import main
    from workbench.ui import train_tab

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert TRAINING_ARGUMENTS_GROUP in text
    for flag in ("--adam_beta2", "--lr_scheduler_kwargs", "--model_max_length", "--use_lora", "--q_lora", "--lora_r",
                 "--data_path", "--evaluation_strategy"):
        assert flag in text
    assert "adam_beta2" not in train_tab.form_fields()


def test_pass_through_values_reach_training_arguments(tmp_path):
    from transformers import TrainingArguments

    from workbench.train.run import training_arguments

    cfg = parse_train_config({"dataset": "identity", "adam_beta2": "0.95", "adam_epsilon": "1e-6",
                              "lr_scheduler_kwargs": '{"min_lr": 1e-6}', "logging_first_step": "true",
                              "data_seed": 3, "adam_beta1": 0.9})
    assert cfg.train.passthrough() == {"adam_beta2": 0.95, "adam_epsilon": 1e-6, "lr_scheduler_kwargs": {"min_lr": 1e-6},
                                       "logging_first_step": True, "data_seed": 3}  # adam_beta1 is the default
    kwargs = training_arguments(cfg, tmp_path, "cpu", has_eval=False)
    assert kwargs["adam_beta2"] == 0.95 and kwargs["data_seed"] == 3 and kwargs["learning_rate"] == 5e-5
    args = TrainingArguments(**kwargs)
    assert args.adam_beta2 == 0.95 and args.lr_scheduler_kwargs == {"min_lr": 1e-6} and args.logging_first_step
    # config.yaml keeps the pass-through options that were set, not all ninety of them
    written = cfg.to_dict()
    assert written["adam_beta2"] == 0.95 and "adam_beta1" not in written and "eval_on_start" not in written
    assert parse_train_config(written).train.passthrough() == cfg.train.passthrough()
    # streaming still gets its accelerator_config, merged with the user's
    cfg = parse_train_config({"dataset": "identity", "streaming": True, "max_steps": 2,
                              "accelerator_config": {"split_batches": True}})
    accel = training_arguments(cfg, tmp_path, "cpu", has_eval=False)["accelerator_config"]
    assert accel == {"split_batches": True, "dispatch_batches": False}


@pytest.mark.parametrize("values, option, words", [
    ({"remove_unused_columns": True}, "remove_unused_columns", "tokenised columns"),
    ({"label_smoothing_factor": "0.1"}, "label_smoothing_factor", "dpo_label_smoothing"),
    ({"use_cpu": "true"}, "use_cpu", "device: cpu"),
    ({"lora_bias": "all"}, "lora_bias", "lora_bias none"),
    ({"lr_scheduler_kwargs": "min_lr=1"}, "lr_scheduler_kwargs", "mapping"),
    ({"group_by_length": True, "train_sampling_strategy": "sequential"}, "train_sampling_strategy", "group_by_length"),
    ({"cutoff_len": 256, "model_max_length": 512}, "model_max_length", "another name for cutoff_len"),
    ({"lora_r": "x"}, "lora_r", "lora_rank"),
])
def test_training_arguments_that_cannot_apply_are_refused_by_name(values, option, words):
    with pytest.raises(OptionError) as err:
        parse_train_config({"dataset": "identity", **values})
    assert err.value.option == option and words in str(err.value)


def test_harmless_values_of_refused_and_ignored_keys():
    cfg = parse_train_config({"dataset": "identity", "remove_unused_columns": "false", "label_smoothing_factor": 0,
                              "lora_bias": "none", "hub_model_id": "me/x", "cutoff_len": 512, "model_max_length": "512"})
    assert cfg.data.cutoff_len == 512
    assert [w.split("'")[1] for w in cfg.warnings] == ["hub_model_id"]


# ---- Qwen's finetune.sh ----------------------------------------------------------------------------------

def qwen_command(model: str, data: str, out: str, *extra: str) -> list[str]:
    """QwenLM's examples/sft/finetune.sh command line (torchrun ... finetune.py), model/data/output substituted,
    plus the seed's --lora_r."""
    return [
        "--model_name_or_path", model, "--data_path", data, "--bf16", "True", "--output_dir", out,
        "--num_train_epochs", "5", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1",
        "--gradient_accumulation_steps", "8", "--evaluation_strategy", "no", "--save_strategy", "steps",
        "--save_steps", "10", "--save_total_limit", "10", "--learning_rate", "3e-4", "--weight_decay", "0.01",
        "--adam_beta2", "0.95", "--warmup_ratio", "0.01", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        "--report_to", "none", "--model_max_length", "512", "--lazy_preprocess", "True", "--use_lora",
        "--q_lora", "False", "--lora_r", "16", "--gradient_checkpointing", *extra,
    ]


def parse_cli(argv: list[str]):
    from workbench.cli import build_parser
    from workbench.train.cli import collect

    values, _, _ = collect(build_parser("train").parse_args(["train", *argv]))
    return parse_train_config(values)


def test_qwen_finetune_command_parses_into_the_expected_options(tiny_model_dir, tmp_path):
    from workbench.paths import project_presets_dir

    argv = qwen_command(str(tiny_model_dir), str(QWEN_DATA), str(tmp_path / "output_qwen"),
                        "--deepspeed", "ds_config_zero3.json")
    cfg = parse_cli(argv)
    assert cfg.model.model_name_or_path == str(tiny_model_dir) and cfg.model.quantization_bit is None
    assert cfg.data.dataset == str(QWEN_DATA) and cfg.data.cutoff_len == 512
    assert cfg.finetuning.finetuning_type == "lora" and cfg.finetuning.lora_rank == 16
    tr = cfg.train
    assert (tr.bf16, tr.num_train_epochs, tr.per_device_train_batch_size, tr.per_device_eval_batch_size) == (True, 5, 2, 1)
    assert (tr.gradient_accumulation_steps, tr.eval_strategy, tr.save_strategy, tr.save_steps) == (8, "no", "steps", 10)
    assert (tr.save_total_limit, tr.learning_rate, tr.weight_decay, tr.warmup_ratio) == (10, 3e-4, 0.01, 0.01)
    assert (tr.lr_scheduler_type, tr.logging_steps, tr.report_to, tr.gradient_checkpointing) == ("cosine", 1, "none", True)
    assert tr.passthrough() == {"adam_beta2": 0.95}
    assert tr.deepspeed == "ds_config_zero3.json"
    from workbench.config.train import resolve_deepspeed_config

    assert resolve_deepspeed_config(tr.deepspeed) == (project_presets_dir() / "deepspeed" / "ds_z3_config.json").resolve()
    assert [w.split("'")[1] for w in cfg.warnings] == ["lazy_preprocess"]
    # --use_lora also takes a value; --q_lora true is QLoRA; --use_lora false is full fine-tuning
    assert parse_cli(["--dataset", "identity", "--use_lora", "true", "--q_lora", "true"]).model.quantization_bit == 4
    assert parse_cli(["--dataset", "identity", "--use_lora", "False"]).finetuning.finetuning_type == "full"
    cfg = parse_cli(["--dataset", "identity", "--lora_target_modules", "q_proj", "v_proj"])
    assert cfg.finetuning.lora_target == "q_proj,v_proj"


def test_qwen_finetune_command_trains(tiny_model_dir, tmp_path, cli):
    """The copied command (model path changed; --deepspeed dropped: it needs CUDA GPUs) runs a few steps, and the
    TrainingArguments the trainer used carry adam_beta2 0.95 (so does the optimizer)."""
    import torch

    out = tmp_path / "output_qwen"
    argv = qwen_command(str(tiny_model_dir), str(QWEN_DATA), str(out), "--max_steps", "2")
    argv[argv.index("--model_max_length") + 1] = "64"
    result = cli("train", *argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ignoring option 'lazy_preprocess'" in result.stderr
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.adam_beta2 == 0.95 and args.weight_decay == 0.01 and args.activation_checkpointing
    optimizer = torch.load(out / "checkpoint-2" / "optimizer.pt", weights_only=False)
    assert tuple(optimizer["param_groups"][0]["betas"]) == (0.9, 0.95)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    resolved = parse_train_config(load_yaml(out / "config.yaml"))
    assert resolved.data.cutoff_len == 64 and resolved.train.adam_beta2 == 0.95
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress if p["kind"] == "train"] == [1, 2]
    assert all(math.isfinite(p["loss"]) for p in progress if p["kind"] == "train")


def test_split_mapping_resolves_aliases_generically():
    (data,), _ = split_mapping([DataArgs], {"model_max_length": "128", "data_path": "x.jsonl"})
    assert data.cutoff_len == 128 and data.dataset == "x.jsonl"
    assert from_mapping(DataArgs, {"model_max_length": 64}).cutoff_len == 64
