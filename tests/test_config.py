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
