"""The vllm engine (workbench/infer/vllm_backend.py): which engine can run where, every refusal, and the client side
of vLLM's OpenAI-compatible server.

vLLM needs a CUDA GPU and is not installed here, so the server in these tests is tests/fake_vllm_server.py, a
stand-in: a real subprocess started exactly as vLLM is (``PYTHON -m vllm.entrypoints.openai.api_server ...``
through a wrapper interpreter named by WORKBENCH_VLLM_PYTHON), checking the flags as vLLM does and streaming
server-sent events over real HTTP. It records its flags and the request bodies, so the tests see what vLLM would
get. Where a test needs a CUDA GPU to be present (the installation checks), torch.cuda.is_available is patched
and the test says so. The GPU run with vLLM itself is not verified by this file.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

import fake_vllm_server
from chat_helpers import make_adapter
from workbench.config.base import WorkbenchError
from workbench.config.generation import GenerationArgs
from workbench.infer import vllm_backend
from workbench.infer.engine import ContextLengthError, RowSpec
from workbench.infer.vllm_backend import (FORCED_TOOL_CALL, NO_CUDA, NOT_INSTALLED, VllmBackend,
                                          select_engine_problem)

STOP_ID = 2  # the end-of-turn id the tests pass as the template's stop token


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """Two real PEFT adapters of the tiny model, rank 4 and rank 12 (vLLM needs --max-lora-rank 16 for both)."""
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {"a": str(make_adapter(tiny_model_dir, root / "a", seed=1, r=4)),
            "b": str(make_adapter(tiny_model_dir, root / "b", seed=2, r=12))}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> Path:
    """The fake vLLM installed as WORKBENCH_VLLM_PYTHON; returns the file it records into. Server logs go to
    tmp_path too (the ones an error names are kept)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("WORKBENCH_VLLM_PYTHON", str(fake_vllm_server.install(tmp_path)))
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    return record


def events(record: Path, kind: str) -> list[dict]:
    if not record.exists():
        return []
    return [e for e in map(json.loads, record.read_text().splitlines()) if e["event"] == kind]


def wait_for(predicate, timeout: float = 30):
    """Poll until ``predicate()`` is truthy (a condition, not a duration, is what the tests check)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)
    return value


@pytest.fixture()
def start(tiny_model_dir, tokenizer, adapters, fake):
    """Start a backend on the tiny model (adapters a and b unless given); every one is closed afterwards."""
    started = []

    def _start(chosen=None, **kwargs) -> VllmBackend:
        kwargs = {"dtype": "bfloat16", "startup_timeout": 60, **kwargs}
        backend = VllmBackend.start(str(tiny_model_dir), adapters if chosen is None else chosen,
                                    tokenizer=tokenizer, stop_token_ids=[STOP_ID], **kwargs)
        started.append(backend)
        return backend

    yield _start
    for backend in started:
        backend.close()


def greedy(**kwargs) -> GenerationArgs:
    return GenerationArgs(**{"max_new_tokens": 4, **kwargs})


# -- which engine can run here ----------------------------------------------------------------------

def test_transformers_runs_anywhere_and_unknown_engines_are_named():
    for device in ("auto", "cpu", "cuda", "mps"):
        assert select_engine_problem("transformers", device) is None
    assert select_engine_problem("tensorrt", "auto") == "engine 'tensorrt' is not one of: transformers, vllm"


def test_vllm_on_a_machine_without_cuda_says_it_needs_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    for device in ("auto", "cuda", "cuda:0"):
        assert select_engine_problem("vllm", device) == NO_CUDA
    assert NO_CUDA == "the vllm engine needs a CUDA GPU; this machine has none — use engine transformers"


def test_vllm_refuses_a_cpu_device_and_bitsandbytes_quantization():
    assert select_engine_problem("vllm", "cpu") == (
        "the vllm engine runs on CUDA GPUs only, but device is cpu; set device to auto or cuda, "
        "or use engine transformers")
    assert "device is mps" in select_engine_problem("vllm", "mps")
    for bits in (4, 8):
        problem = select_engine_problem("vllm", "auto", quantization_bit=bits)
        assert problem == (f"the vllm engine does not load bitsandbytes-quantized models (quantization_bit={bits}); "
                           "clear quantization_bit or use engine transformers")


def test_vllm_not_installed_names_the_make_command(monkeypatch, tmp_path):
    import torch

    # As on a CUDA machine (none here): the installation is what is checked next.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORKBENCH_VLLM_PYTHON", raising=False)
    if vllm_backend.vllm_python().exists():
        pytest.skip(".venv/vllm exists here")
    assert NOT_INSTALLED == "vLLM is not installed: run `make extras EXTRAS=vllm` (it installs into .venv/vllm)"
    assert select_engine_problem("vllm", "auto") == NOT_INSTALLED
    monkeypatch.setenv("WORKBENCH_VLLM_PYTHON", str(tmp_path / "missing" / "python"))
    assert select_engine_problem("vllm", "cuda") == (
        f"{NOT_INSTALLED} (WORKBENCH_VLLM_PYTHON={tmp_path / 'missing' / 'python'} is not an executable file)")
    # A real interpreter without the package (this environment's own: vllm cannot live beside our transformers)
    import sys

    monkeypatch.setenv("WORKBENCH_VLLM_PYTHON", sys.executable)
    assert select_engine_problem("vllm", "auto") == f"{NOT_INSTALLED} ({sys.executable} has no vllm package)"
    assert select_engine_problem("vllm", "cuda:3") == "device cuda:3 does not exist: this machine has 1 CUDA GPU(s) " \
                                                      "(cuda:0 … cuda:0)"


def test_vllm_is_usable_with_a_gpu_and_the_package(monkeypatch, fake):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a CUDA machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_engine_problem("vllm", "auto") is None
    assert select_engine_problem("vllm", "cuda:1") is None


def test_start_refuses_without_vllm_before_anything_runs(tiny_model_dir, tokenizer, tmp_path):
    with pytest.raises(WorkbenchError) as err:
        VllmBackend.start(str(tiny_model_dir), {}, dtype="auto", tokenizer=tokenizer, stop_token_ids=[STOP_ID],
                          python=str(tmp_path / "no-python"))
    assert str(err.value).startswith(NOT_INSTALLED)


# -- adapters → server flags ------------------------------------------------------------------------

def test_bad_adapters_and_options_are_refused_before_the_server_starts(start, fake, tmp_path, adapters):
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match=rf"adapter x: {empty}/adapter_config.json does not exist"):
        start({"x": str(empty)})
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "use_dora": True}))
    with pytest.raises(WorkbenchError, match="adapter d: DoRA adapters .* are not served by vLLM"):
        start({"d": str(dora)})
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "rank_pattern": {"q": 1024}}))
    with pytest.raises(WorkbenchError, match="LoRA rank 1024, but vLLM serves ranks up to 512"):
        start({"h": str(huge)})
    with pytest.raises(WorkbenchError, match="infer_dtype 'fp8' is not one of"):
        start({}, dtype="fp8")
    with pytest.raises(WorkbenchError, match="may not be named 'base'"):
        start({"base": adapters["a"]})
    assert events(fake, "start") == []  # nothing was started for any of them


def test_max_lora_rank_is_the_smallest_choice_vllm_accepts():
    assert vllm_backend.max_lora_rank([4]) == 8
    assert vllm_backend.max_lora_rank([4, 12]) == 16
    assert vllm_backend.max_lora_rank([16]) == 16
    assert vllm_backend.max_lora_rank([300]) == 320
    assert vllm_backend.max_lora_rank([1]) == 1


# -- the server and its rows ------------------------------------------------------------------------

def test_serves_base_and_adapters_and_streams_each_row(start, fake, tokenizer, tiny_model_dir, adapters):
    backend = start(max_model_len=512)
    assert backend.adapter_names == ["a", "b"]
    argv = events(fake, "start")[0]["argv"]
    flag = {name: argv[argv.index(name) + 1] for name in
            ("--model", "--served-model-name", "--host", "--dtype", "--max-loras", "--max-lora-rank",
             "--max-model-len")}
    assert flag == {"--model": str(tiny_model_dir), "--served-model-name": "base", "--host": "127.0.0.1",
                    "--dtype": "bfloat16", "--max-loras": "2", "--max-lora-rank": "16", "--max-model-len": "512"}
    assert "--enable-lora" in argv
    modules = [json.loads(m) for m in argv[argv.index("--lora-modules") + 1:argv.index("--lora-modules") + 3]]
    assert modules == [{"name": n, "path": str(Path(p).resolve())} for n, p in adapters.items()]

    prompt = tokenizer("Who are you?")["input_ids"]
    rows = {name: backend.submit(RowSpec(prompt, adapter=name, label=name), greedy())
            for name in (None, "a", "b")}
    deltas = {name: list(handle) for name, handle in rows.items()}  # iterating streams each row's deltas
    assert deltas[None] == ["base:", " w1", " w2", " w3"]
    assert deltas["b"] == ["b:", " w1", " w2", " w3"]
    for name, handle in rows.items():
        handle.wait(30)
        assert handle.finish_reason == "length"
        assert handle.text == f"{name or 'base'}: w1 w2 w3"
        assert handle.token_ids == [999, 1001, 1002, 1003]
        assert handle.completion_tokens == 4 == handle.usage["completion_tokens"]
        assert handle.usage["prompt_tokens"] == len(prompt) == handle.prompt_tokens
        assert handle.first_token_at is not None and handle.first_token_at >= handle.created_at

    bodies = {b["model"]: b for b in (e["body"] for e in events(fake, "request"))}
    assert set(bodies) == {"base", "a", "b"}  # the adapter picks the served model
    for body in bodies.values():
        assert body["prompt"] == prompt  # token ids rendered here, never re-templated by vLLM
        assert body["max_tokens"] == 4 and body["temperature"] == 0.0 and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["stop_token_ids"] == [STOP_ID] and body["return_token_ids"] is True
        assert "seed" not in body and "stop" not in body


def test_sampling_options_stop_strings_and_end_of_turn(start, fake, monkeypatch):
    backend = start({})
    sampled = backend.submit(RowSpec([1, 2, 3], max_new_tokens=3),
                             greedy(do_sample=True, temperature=0.5, top_p=0.8, top_k=0, seed=7,
                                    repetition_penalty=1.2))
    sampled.wait(30)
    body = events(fake, "request")[-1]["body"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"], body["repetition_penalty"],
            body["max_tokens"]) == (0.5, 0.8, 0, 7, 1.2, 3)

    by_string = backend.submit(RowSpec([1, 2, 3], stop=(" w2",)), greedy(max_new_tokens=10)).wait(30)
    assert events(fake, "request")[-1]["body"]["stop"] == [" w2"]
    assert (by_string.text, by_string.finish_reason) == ("base: w1", "stop")
    assert by_string.completion_tokens == 3  # base:, w1 and the token that completed the stop string

    monkeypatch.setenv("FAKE_VLLM_EOS_AFTER", "2")  # the server reads its environment at start: restart it
    backend.close()
    backend = start({})
    by_token = backend.submit(RowSpec([1, 2, 3]), greedy(max_new_tokens=10)).wait(30)
    assert (by_token.text, by_token.finish_reason) == ("base: w1", "stop")
    # the end-of-turn token is not text and not among the ids, but it counts (as with the transformers engine)
    assert by_token.token_ids == [999, 1001]
    assert by_token.completion_tokens == 3 == by_token.usage["completion_tokens"]


def test_cancelling_a_row_closes_its_stream_and_leaves_the_others_going(start, fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_STALL", "a")  # after its first token, a's next one never comes
    backend = start()
    long = backend.submit(RowSpec([5, 6], adapter="a"), greedy(max_new_tokens=5000))
    other = backend.submit(RowSpec([5, 6], adapter="b"), greedy(max_new_tokens=20))
    assert next(iter(long)) == "a:"  # streaming has begun; its reader now waits for a token
    long.cancel()
    long.wait(30)  # the stream is shut under the waiting reader (the stall lasts 60 s)
    assert long.finish_reason == "cancelled" and long.error is None and long.text == "a:"
    gone = wait_for(lambda: events(fake, "disconnected"))  # the server saw the client leave
    assert gone == [{"event": "disconnected", "model": "a", "chunks_sent": 1}]
    other.wait(30)
    assert other.finish_reason == "length" and other.text.endswith(" w19")
    assert [e["model"] for e in wait_for(lambda: events(fake, "finished"))] == ["b"]


def test_a_server_that_dies_at_startup_shows_its_log(start, fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DIE", "CUDA error: out of memory (simulated)")
    with pytest.raises(WorkbenchError) as err:
        start()
    message = str(err.value)
    assert message.startswith("the vllm server exited with code 1 while starting; last lines of its log (")
    assert "RuntimeError: CUDA error: out of memory (simulated)" in message
    assert "vllm.entrypoints.openai.api_server --model" in message  # the command is the log's first line
    log = message.split("last lines of its log (", 1)[1].split(")", 1)[0]
    assert "CUDA error" in Path(log).read_text()  # kept for the user after the failed start


def test_a_server_that_never_answers_is_stopped_after_the_timeout(start, fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_HANG", "1")
    with pytest.raises(WorkbenchError,
                       match=r"(?s)did not answer /health within 1.5 s .*so it was stopped; last lines.*HANG"):
        start(startup_timeout=1.5)
    pid = events(fake, "start")[0]["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_adapters_that_are_not_served_are_clear_errors(start, fake, monkeypatch, adapters):
    backend = start({"a": adapters["a"]})
    with pytest.raises(WorkbenchError, match=r"^unknown model or adapter 'nope'; available: base, a$"):
        backend.submit(RowSpec([1], adapter="nope"), greedy())
    assert events(fake, "request") == []
    backend.close()

    monkeypatch.setenv("FAKE_VLLM_REFUSE", "a")  # listed, but its requests are answered 404
    backend = start({"a": adapters["a"]})
    handle = backend.submit(RowSpec([1], adapter="a"), greedy())
    with pytest.raises(WorkbenchError, match=r"adapter 'a' is not served by the vllm server: The model `a` does not"):
        handle.wait(30)
    assert handle.finish_reason is None
    assert backend.submit(RowSpec([1]), greedy()).wait(30).finish_reason == "length"  # the base still answers
    backend.close()

    monkeypatch.setenv("FAKE_VLLM_UNSERVED", "b")  # missing from /v1/models: refused at start
    with pytest.raises(WorkbenchError, match=r"the vllm server does not serve b \(it serves: a, base\)"):
        start()


def test_a_prompt_longer_than_the_context_is_a_context_length_error(start):
    backend = start({}, max_model_len=64)
    handle = backend.submit(RowSpec(list(range(60))), greedy(max_new_tokens=10))
    with pytest.raises(ContextLengthError, match="maximum context length is 64 tokens"):
        handle.wait(30)


def test_forcing_a_tool_call_is_refused(start, fake):
    backend = start({})
    with pytest.raises(WorkbenchError) as err:
        backend.submit(RowSpec([1], constraint=lambda ids, scores: scores), greedy())
    assert str(err.value) == FORCED_TOOL_CALL
    assert events(fake, "request") == []
    assert FORCED_TOOL_CALL == "forcing a tool call is not supported with the vllm engine; use engine transformers"


def test_close_stops_the_server_and_a_dead_server_is_reported(start, fake):
    backend = start({})
    pid = backend.process.pid
    assert backend.log_path.is_file()
    backend.close()
    backend.close()  # idempotent
    assert backend.process.poll() is not None
    assert not backend.log_path.exists()  # a clean run leaves no log behind; one an error names is kept
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(WorkbenchError, match="the vllm engine was closed"):
        backend.submit(RowSpec([1]), greedy())

    backend = start({})
    os.killpg(backend.process.pid, signal.SIGKILL)  # the server dies under us (as on a GPU fault)
    backend.process.wait(30)
    with pytest.raises(WorkbenchError, match=r"the vllm server exited with code -9 earlier; last lines of its log"):
        backend.submit(RowSpec([1]), greedy())


# -- the wiring: ModelManager / ChatEngine / evaluation rows with engine vllm ---------------------------------

def test_manager_refuses_vllm_on_this_machine_and_keeps_the_loaded_model(tiny_model_dir):
    """The top bar's and the CLI's path: on a machine without CUDA, loading with engine vllm is refused with the
    reason, and the model already loaded stays loaded."""
    import torch

    from workbench.config.model import ModelArgs
    from workbench.infer.session import ModelManager

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    manager = ModelManager()
    manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir)))
    with pytest.raises(WorkbenchError, match="needs a CUDA GPU|CUDA GPUs only"):
        manager.load(ModelArgs(model_name_or_path=str(tiny_model_dir), engine="vllm"))
    assert manager.current() is not None and manager.current().label == str(tiny_model_dir)


def test_chat_engine_streams_and_compares_through_the_vllm_server(tiny_model_dir, adapters, fake, monkeypatch):
    """load_for_chat(engine=vllm) → ChatEngine: a chat answer and a base-vs-adapter compare stream from the
    (fake) server; adapters cannot be attached at run time. torch.cuda.is_available is patched (no GPU here)."""
    import torch

    from workbench.config.model import ModelArgs
    from workbench.infer.batch import generate_batch_output
    from workbench.infer.engine import ChatEngine
    from workbench.infer.session import ModelManager, load_for_chat

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    loaded = load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir), engine="vllm"), adapters)
    try:
        assert loaded.model is None and loaded.backend is not None and "vllm engine" in loaded.describe()
        engine = ChatEngine(loaded, "smollm2")
        assert engine.adapter_names == ["a", "b"] and engine.stats()["engine"] == "vllm"
        reply = engine.chat([{"role": "user", "content": "Hello"}], GenerationArgs(max_new_tokens=8), variant="a")
        assert reply.text and reply.finish_reason in ("stop", "length")
        batch = engine.compare([{"role": "user", "content": "Hi"}], GenerationArgs(max_new_tokens=6))
        assert [r.label for r in batch.wait()] == ["base", "a", "b"] and all(r.text for r in batch.rows)
        sent = [e["body"]["model"] for e in events(fake, "request")]
        assert {"a", "b"} <= set(sent)
        out = generate_batch_output(loaded, [[1, 2, 3], [4, 5]], [None, "b"], GenerationArgs(max_new_tokens=4), [2])
        assert len(out.texts) == 2
        manager = ModelManager()
        manager.loaded = loaded
        with pytest.raises(WorkbenchError, match="serves the adapters it was started with"):
            manager.detach("a")
    finally:
        engine_close = ChatEngine(loaded, "smollm2")
        engine_close.close("test over")
