"""``python -m workbench chat`` as a real subprocess: one answer, --compare, --use, the interactive loop,
and a clear one-line error for every bad input of the issue."""

from __future__ import annotations

import json

import pytest

from chat_helpers import make_adapter


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-adapters")
    return {"a": str(make_adapter(tiny_model_dir, root / "a", seed=1)),
            "b": str(make_adapter(tiny_model_dir, root / "b", seed=2))}


def adapter_args(adapters):
    return [arg for name, path in adapters.items() for arg in ("--adapter", f"{name}={path}")]


def sections(stdout: str) -> dict[str, str]:
    out, name = {}, None
    for line in stdout.splitlines():
        if line.startswith("=== ") and line.endswith(" ==="):
            name = line[4:-4]
            out[name] = ""
        elif name is not None:
            out[name] += line + "\n"
    return {k: v.strip() for k, v in out.items()}


@pytest.mark.integration
def test_bundled_model_answers_paris(cli, bundled_model_dir):
    r = cli("chat", "--model", "smollm2-135m-instruct", "--prompt", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_compare_prints_every_variant_under_its_name(cli, tiny_model_dir, adapters):
    common = ["chat", "--model", str(tiny_model_dir), *adapter_args(adapters), "--prompt", "Hello there",
              "--max_new_tokens", "8", "--template", "smollm2"]
    r = cli(*common, "--compare")
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("===")] == [
        "=== base ===", "=== a ===", "=== b ==="]
    got = sections(r.stdout)
    assert got["a"] != got["b"]
    # The batched answers equal each variant answering alone.
    alone_b = cli(*common, "--use", "b")
    assert alone_b.returncode == 0 and alone_b.stdout.strip() == got["b"]
    alone_first = cli(*common)  # without --use: the first adapter answers
    assert alone_first.stdout.strip() == got["a"]


def test_interactive_session(cli, tiny_model_dir, adapters, tmp_path):
    import subprocess
    import sys

    from helpers import REPO_ROOT

    lines = "Hello there\n/tool 42\n/use zzz\n/use b\nHi\n/clear\nHi\n\n"
    r = subprocess.run([sys.executable, "-m", "workbench", "chat", "--model", str(tiny_model_dir),
                        *adapter_args(adapters), "--max_new_tokens", "4"],
                       input=lines, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    assert "Chatting with" in r.stderr and "as a." in r.stderr
    assert "error: /tool sends a tool result, but the last answer called no tool" in r.stderr
    assert "error: unknown model or adapter 'zzz'; available: base, a, b" in r.stderr
    assert "(new conversation with b)" in r.stderr and "(new conversation)" in r.stderr
    assert len([line for line in r.stdout.splitlines() if line.startswith("> ")]) >= 3


@pytest.mark.parametrize("case", ["missing_files", "other_base", "bad_tools_json", "tools_file_missing",
                                  "no_tool_template", "too_long", "bad_use", "use_and_compare", "bad_template",
                                  "bad_option"])
def test_bad_input_is_one_clear_line(cli, tiny_model_dir, bundled_model_dir, adapters, tmp_path, case):
    model = ["chat", "--model", str(tiny_model_dir), "--max_new_tokens", "2"]
    if case == "missing_files":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "adapter_config.json").write_text("{}")
        args, expect = [*model, "--adapter", f"x={tmp_path / 'broken'}", "--prompt", "hi"], \
            "adapter weights are missing (expected adapter_model.safetensors)"
    elif case == "other_base":
        other = make_adapter(bundled_model_dir, tmp_path / "other", seed=3)
        args, expect = [*model, "--adapter", f"other={other}", "--prompt", "hi"], \
            "was trained on"
    elif case == "bad_tools_json":
        args, expect = [*model, "--tools", "[{\"name\": }]", "--prompt", "hi"], "--tools: not valid JSON (line 1"
    elif case == "tools_file_missing":
        args, expect = [*model, "--tools", str(tmp_path / "tools.json"), "--prompt", "hi"], "tools.json: no such file"
    elif case == "no_tool_template":
        tools = tmp_path / "tools.json"
        tools.write_text(json.dumps([{"name": "f"}]))
        args, expect = [*model, "--template", "llama2", "--tools", str(tools), "--prompt", "hi"], \
            "template 'llama2' has no tool-calling format"
    elif case == "too_long":
        args, expect = [*model, "--prompt", "word " * 2100], "context of 2048 tokens"
    elif case == "bad_use":
        args, expect = [*model, *adapter_args(adapters), "--use", "c", "--prompt", "hi"], "--use c: no adapter"
    elif case == "use_and_compare":
        args, expect = [*model, *adapter_args(adapters), "--use", "a", "--compare", "--prompt", "hi"], "choose one"
    elif case == "bad_template":
        args, expect = [*model, "--template", "nope", "--prompt", "hi"], "unknown template 'nope'"
    else:
        args, expect = [*model, "--temperature", "9", "--prompt", "hi"], "temperature: 9.0 is above the maximum 5.0"
    r = cli(*args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
