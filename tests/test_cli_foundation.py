"""The command line as a user runs it: real subprocesses."""

import pytest

from workbench.config import WorkbenchError
from workbench.ui.app import parse_auth


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("webui", "models", "chat"):
        assert command in result.stdout


def test_unknown_command(cli):
    result = cli("frobnicate")
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr


def test_models_lists_registry_and_local_state(cli, bundled_model_dir):
    result = cli("models")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("smollm2-135m-instruct"))
    assert "converted" in line
    assert "Qwen/Qwen2.5-3B-Instruct" in result.stdout


@pytest.mark.integration
def test_chat_answers_with_the_bundled_model(cli, bundled_model_dir):
    result = cli("chat", "--model", "smollm2-135m-instruct", "--prompt", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nosuch-model"], "unknown model 'nosuch-model'"),
        (["--model", "/definitely/not/here"], "does not exist"),
        (["--temperature", "-2"], "temperature: -2.0 is below the minimum"),
        (["--quantization_bit", "3"], "quantization_bit: 3 is not one of"),
    ],
)
def test_chat_bad_input_is_one_clear_line(cli, args, message):
    result = cli("chat", *args, "--prompt", "hi")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_auth_parsing(tmp_path):
    assert parse_auth("ann:secret") == [("ann", "secret")]
    f = tmp_path / "users.txt"
    f.write_text("# users\nann:a\nbob:b:with-colon\n")
    assert parse_auth(str(f)) == [("ann", "a"), ("bob", "b:with-colon")]
    f.write_text("ann\n")
    with pytest.raises(WorkbenchError, match="line 1: expected user:password"):
        parse_auth(str(f))


def test_webui_binds_loopback_by_default():
    import argparse

    from workbench.ui.app import configure_webui

    parser = argparse.ArgumentParser()
    configure_webui(parser)
    assert parser.parse_args([]).host == "127.0.0.1"


@pytest.mark.parametrize("argv, unknown", [
    (["train", "--learning_rat", "1e-4", "--dataset", "identity"], "--learning_rat"),
    (["jobs", "list", "--jso"], "--jso"),
])
def test_abbreviated_options_are_unknown_not_guessed(argv, unknown, capsys):
    """`--learning_rat` is not silently taken for --learning_rate (parsing only: nothing runs)."""
    from workbench.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser(argv[0]).parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and unknown in err


def test_importing_workbench_quiets_the_optional_bitsandbytes_kernel_warning():
    """bitsandbytes warns at import (on CPUs with AVX512-BF16) that an optional hub kernel is missing; it read like
    a failure at the top of every job log. Workbench's own import turns that one logger down."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import workbench, bitsandbytes"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernels-community" not in result.stderr


@pytest.mark.parametrize("command", [["data", "check", "--dataset-dir", "{folder}", "d"], ["score", "--help"],
                                     ["jobs", "list"], ["export", "--help"]])
def test_commands_that_need_no_model_start_without_torch(command, tmp_path):
    """Checking a dataset, scoring, listing jobs: answered in a fraction of a second, because they import neither
    torch nor transformers (tens of seconds on a busy 2-core machine). Only the command's own module is imported."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "d.json").write_text("")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json"}}))
    argv = [a.format(folder=tmp_path) for a in command]
    code = ("import sys; from workbench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'peft', 'gradio') if m in sys.modules))")
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=env)
    assert "usage:" not in result.stderr, result.stderr[-2000:]  # the command ran, not an argument error
    assert "heavy: []" in result.stdout, (result.stdout[-2000:], result.stderr[-2000:])
