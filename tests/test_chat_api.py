"""The OpenAI-compatible API as a live server (``python -m workbench api``) on loopback, driven by the
official ``openai`` client: models, answers (SSE and not) equal to the engine's, usage, batching of
concurrent requests, error objects and HTTP codes, API key, client disconnects."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import httpx
import openai
import pytest

from chat_helpers import api_server, make_adapter
from workbench.config.generation import GenerationArgs
from workbench.config.model import ModelArgs

KEY = "test-key-123"
HI = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("api-adapters")
    return {"a": str(make_adapter(tiny_model_dir, root / "a", seed=1)),
            "b": str(make_adapter(tiny_model_dir, root / "b", seed=2))}


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapters, tmp_path_factory):
    args = [a for name, path in adapters.items() for a in ("--adapter", f"{name}={path}")]
    with api_server(tiny_model_dir, tmp_path_factory.mktemp("api"), *args, key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapters):
    """The same model in this process: what the server must answer."""
    from workbench.infer.engine import ChatEngine
    from workbench.infer.session import load_for_chat

    return ChatEngine(load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir)), adapters), "smollm2")


def expected(engine, variant, messages=HI, n=16):
    return engine.chat(messages, GenerationArgs(max_new_tokens=n), variant=variant)


def health(server) -> dict:
    return json.loads(urllib.request.urlopen(server + "/health").read())


def test_models_lists_base_and_adapters(client, tiny_model_dir):
    ids = [m.id for m in client.models.list().data]
    assert ids == [str(tiny_model_dir), "a", "b"]
    assert client.models.retrieve("a").id == "a"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def test_completion_matches_the_engine_with_usage(client, engine):
    for model, variant in (("base", None), ("a", "a"), ("b", "b")):
        r = client.chat.completions.create(model=model, messages=HI, max_tokens=16)
        want = expected(engine, variant)
        assert r.choices[0].message.content == want.text
        assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
        assert r.usage.prompt_tokens == want.prompt_tokens
        assert r.usage.completion_tokens == want.completion_tokens
        assert r.usage.total_tokens == want.prompt_tokens + want.completion_tokens
        assert r.model == model and r.object == "chat.completion"


def test_streaming_sends_deltas_then_usage(client, engine):
    stream = client.chat.completions.create(model="a", messages=HI, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = expected(engine, "a")
    assert text.strip() == want.text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.completion_tokens


def test_ignore_eos_runs_to_max_tokens_through_end_of_turn_tokens(client, engine, monkeypatch):
    """vLLM's ``ignore_eos``: the row's stop ids are dropped (a benchmark's rows all run their max_tokens). The
    tiny random model rarely writes <|im_end|>, so its own first greedy token is made the end-of-turn token here."""
    from workbench.infer.engine import RowSpec

    ids = engine.spec(HI, GenerationArgs(max_new_tokens=6)).prompt_ids
    end = engine.submit(RowSpec(ids, None, 1), GenerationArgs(max_new_tokens=1)).wait().token_ids[0]
    monkeypatch.setattr(type(engine), "stop_token_ids", lambda self: [end])
    stopped = engine.submit(RowSpec(ids, None, 6), GenerationArgs(max_new_tokens=6)).wait()
    through = engine.submit(RowSpec(ids, None, 6, ignore_eos=True), GenerationArgs(max_new_tokens=6)).wait()
    assert (stopped.finish_reason, len(stopped.token_ids)) == ("stop", 0)
    assert (through.finish_reason, len(through.token_ids)) == ("length", 6)
    r = client.chat.completions.create(model="base", messages=HI, max_tokens=5, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_stop_strings(client, engine):
    full = expected(engine, "a").text
    stop = full[4:7]
    r = client.chat.completions.create(model="a", messages=HI, max_tokens=16, stop=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)].strip()
    assert r.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_never_interleaved(client, server, engine):
    prompts = [("a", "Hello, who are you?"), ("b", "Name three colours."), ("base", "Count to five."),
               ("a", "Say something nice."), ("b", "Hello, who are you?"), ("base", "What is two plus two?")]
    before = health(server)
    results: dict[int, str] = {}

    def ask(i, model, prompt):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=24)
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, m, p)) for i, (m, p) in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (model, prompt) in enumerate(prompts):
        variant = None if model == "base" else model
        assert results[i] == expected(engine, variant, [{"role": "user", "content": prompt}], 24).text, prompt
    after = health(server)
    assert after["rows"] - before["rows"] == len(prompts)
    assert after["largest_batch"] >= 2  # some requests shared decode steps


def test_tool_turns_round_trip(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
    ]
    r = client.chat.completions.create(model="a", messages=messages, tools=tools, max_tokens=5)
    assert r.usage.completion_tokens <= 5 and r.choices[0].finish_reason in ("length", "stop", "tool_calls")
    assert r.usage.prompt_tokens > 60  # the tool definitions and the observation are in the prompt


@pytest.mark.parametrize("kwargs, status, param, message", [
    ({"model": "zzz"}, 404, "model", "The model 'zzz' does not exist; available: "),
    ({"messages": []}, 400, "messages", "at least one message"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", "is not one of"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", "must be from the user"),
    ({"messages": [{"role": "system", "content": "only"}]}, 400, "messages", "only system messages"),
    ({"temperature": 7}, 400, "temperature", "must be between 0.0 and 2.0"),
    ({"top_p": 0}, 400, "top_p", "0 keeps no tokens"),
    ({"max_tokens": 0}, 400, "max_tokens", "must be at least 1"),
    ({"max_tokens": 5000}, 400, "messages", "exceeds the context of 2048 tokens"),
    ({"messages": [{"role": "user", "content": "word " * 2100}]}, 400, "messages", "context of 2048 tokens"),
    ({"n": 2}, 400, "n", "Only n=1"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "up to 4"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, 400, "tools", "needs a function name"),
    ({"presence_penalty": 1.0}, 400, "presence_penalty", "use 'repetition_penalty'"),
    ({"extra_body": {"frobnicate": 1}}, 400, "frobnicate", "Unrecognized request argument"),
    ({"extra_body": {"ignore_eos": "yes"}}, 400, "ignore_eos", "boolean"),
])
def test_bad_requests_get_openai_errors(client, kwargs, status, param, message):
    args = {"model": "a", "messages": HI, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**args)
    assert err.value.status_code == status
    body = err.value.body
    assert body["param"] == param and message in body["message"], body
    assert body["type"] == "invalid_request_error"


def test_raw_http_errors(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server + "/v1/chat/completions", json=[1, 2], headers=headers)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/chat/completions", json={"model": "a"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.get(server + "/v1/nothing-here", headers=headers)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server + "/v1/chat/completions", headers=headers)
    assert r.status_code == 405 and "error" in r.json()


def test_api_key_is_required(server):
    for key in ("wrong", None):
        c = openai.OpenAI(base_url=server + "/v1", api_key=key or "x", max_retries=0,
                          default_headers=None if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as err:
            c.models.list()
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"


def test_client_disconnect_cancels_its_row(server):
    before = health(server)["cancelled"]
    body = {"model": "a", "messages": HI, "max_tokens": 1900, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    deadline = time.time() + 120
    while health(server)["cancelled"] == before:
        assert time.time() < deadline, "the disconnected stream was not cancelled"
        time.sleep(0.5)


def test_tools_for_a_template_without_tools(engine):
    """The request check itself (one server per template would be slow): 400 naming 'tools'."""
    from workbench.infer.api import ApiError, ChatRequest
    from workbench.infer.engine import ChatEngine

    llama2 = ChatEngine(engine.loaded, "llama2")
    body = {"model": "a", "messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}
    with pytest.raises(ApiError) as err:
        ChatRequest(body, llama2, base_names={"base"}, default_max_tokens=8)
    assert err.value.status == 400 and err.value.param == "tools"
    assert "template 'llama2' has no tool-calling format" in err.value.message
    # tool_choice none: the tools are not used, so the request is fine.
    ChatRequest({**body, "tool_choice": "none"}, llama2, base_names={"base"}, default_max_tokens=8)


def test_bad_command_line(cli, tiny_model_dir, tmp_path):
    r = cli("api", "--model", str(tiny_model_dir), "--adapter", f"x={tmp_path}", "--port", "9")
    assert r.returncode == 1 and "adapter_config.json is missing" in r.stderr and "Traceback" not in r.stderr
    r = cli("api", "--model", str(tiny_model_dir), "--port", "70000")
    assert r.returncode == 1 and "--port 70000: not a TCP port" in r.stderr
    r = cli("api", "--model", str(tiny_model_dir), "--template", "nope")
    assert r.returncode == 1 and "unknown template 'nope'" in r.stderr
