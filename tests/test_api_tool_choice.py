"""tool_choice ``required`` and a named function (forced, constrained tool calls), ``none``, and the deprecated
``functions`` / ``function_call`` fields: a live server (``python -m workbench api``) on the tiny random model,
driven by the official ``openai`` client, plus the call constraint on its own with random scores.

A random model never writes a tool call by itself, so every call asserted here exists only because the
constraint forced it — and it must still parse."""

from __future__ import annotations

import json
import random

import openai
import pytest

from chat_helpers import api_server

from workbench.config.model import ModelArgs

KEY = "test-key-tools"
ASK = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a time zone",
                                      "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}},
]
NAMES = {"get_weather", "get_time"}
FUNCTIONS = [t["function"] for t in TOOLS]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with api_server(tiny_model_dir, tmp_path_factory.mktemp("api-tools"), key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from workbench.infer.engine import ChatEngine
    from workbench.infer.session import load_for_chat

    return ChatEngine(load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir)), {}), "smollm2")


def one_call(response, names=NAMES):
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and choice.message.function_call is None
    calls = choice.message.tool_calls
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name in names
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args, dict)
    return calls[0].function.name, args


def streamed(client, **kwargs) -> tuple[list, list]:
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert not "".join(d.content or "" for d in deltas)  # a forced call streams no content
    return chunks, finishes


# -- required and a named function -------------------------------------------------------------------

def test_required_returns_one_parseable_call(client):
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=40)
    one_call(r)
    assert 0 < r.usage.completion_tokens <= 40  # the forced prefix counts, and max_tokens bounds it all
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_required_with_sampling(client):
    for seed in (1, 2):
        r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=40, temperature=1.0, seed=seed)
        one_call(r)
        assert r.usage.completion_tokens <= 40


def test_named_function_fits_any_max_tokens_that_holds_a_call(client):
    """The shortest call (forced prefix + ' {}}\n</tool_call>') is the least max_tokens; from there on the call
    is closed in time, whatever the budget."""
    named = {"type": "function", "function": {"name": "get_time"}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=5)
    least = int(err.value.body["message"].split("the shortest call takes ")[1].split()[0])
    assert 15 < least < 40
    for max_tokens in (least, least + 3, 64):
        r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice=named,
                                           max_tokens=max_tokens)
        assert one_call(r, {"get_time"})[0] == "get_time"
        assert r.usage.completion_tokens <= max_tokens
    assert one_call(client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice=named,
                                                   max_tokens=least))[1] == {}


def test_forced_prefix_is_not_prompt(client):
    """usage: the prompt is the conversation with the tools; the forced prefix is part of the answer."""
    auto = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, max_tokens=1)
    named = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, max_tokens=40,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.usage.prompt_tokens == auto.usage.prompt_tokens
    assert named.usage.completion_tokens > 10  # '<tool_call>\n{"name": "get_weather", "arguments":' alone is ~16


def test_streaming_matches_non_streaming(client):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        whole = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice=choice,
                                               max_tokens=40)
        name, args = one_call(whole)
        chunks, finishes = streamed(client, model="base", messages=ASK, tools=TOOLS, tool_choice=choice,
                                    max_tokens=40)
        assert finishes == ["tool_calls"]
        calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert len(calls) == 1
        call = calls[0].choices[0].delta.tool_calls[0]
        assert call.index == 0 and call.id.startswith("call_") and call.type == "function"
        assert call.function.name == name and json.loads(call.function.arguments) == args  # greedy: same call
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_single_tool_required_is_that_tool(client):
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS[:1], tool_choice="required",
                                       max_tokens=40)
    assert one_call(r, {"get_weather"})[0] == "get_weather"


# -- none and auto -----------------------------------------------------------------------------------

def test_tool_choice_none_keeps_the_tools_out_of_the_prompt(client):
    plain = client.chat.completions.create(model="base", messages=ASK, max_tokens=8)
    none = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=8)
    auto = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, max_tokens=8)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens < auto.usage.prompt_tokens
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")


# -- the deprecated functions / function_call ----------------------------------------------------------

def test_legacy_named_function_call(client):
    r = client.chat.completions.create(model="base", messages=ASK, functions=FUNCTIONS,
                                       function_call={"name": "get_weather"}, max_tokens=40)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None and choice.message.content is None
    assert choice.message.function_call.name == "get_weather"
    assert isinstance(json.loads(choice.message.function_call.arguments), dict)
    # The same prompt as the tools form of the request.
    tools = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, max_tokens=40,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.usage == tools.usage
    assert json.loads(choice.message.function_call.arguments) == json.loads(
        tools.choices[0].message.tool_calls[0].function.arguments)


def test_legacy_streaming(client):
    chunks, finishes = streamed(client, model="base", messages=ASK, functions=FUNCTIONS,
                                function_call={"name": "get_time"}, max_tokens=40)
    assert finishes == ["function_call"]
    calls = [c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call]
    assert len(calls) == 1 and calls[0].name == "get_time" and isinstance(json.loads(calls[0].arguments), dict)
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)


def test_legacy_none_and_auto_map_to_tool_choice(client):
    kwargs = {"model": "base", "messages": ASK, "max_tokens": 4}
    none = client.chat.completions.create(functions=FUNCTIONS, function_call="none", **kwargs)
    plain = client.chat.completions.create(**kwargs)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    for function_call in ("auto", None):
        extra = {} if function_call is None else {"function_call": function_call}
        auto = client.chat.completions.create(functions=FUNCTIONS, **extra, **kwargs)
        tools = client.chat.completions.create(tools=TOOLS, **kwargs)
        assert auto.usage.prompt_tokens == tools.usage.prompt_tokens > plain.usage.prompt_tokens
        assert auto.choices[0].finish_reason in ("stop", "length", "function_call")


def test_legacy_history_is_read_as_tool_turns(client):
    legacy = [*ASK, {"role": "assistant", "content": None,
                     "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
              {"role": "function", "name": "get_weather", "content": "{\"temp_c\": 21}"}]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
    modern = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
              {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"}]
    a = client.chat.completions.create(model="base", messages=legacy, functions=FUNCTIONS, max_tokens=6)
    b = client.chat.completions.create(model="base", messages=modern, tools=TOOLS, max_tokens=6)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content


# -- what is refused -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, param, message", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_stock"}}}, "tool_choice",
     "the function 'get_stock' is not among the tools (the tools are: get_weather, get_time)"),
    ({"tool_choice": "required"}, "tool_choice", "required needs 'tools'"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice",
     "'get_time' is not among the tools (no tools were given)"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "'always' is not one of auto, none, required"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
     "tool_choice", "got 'allowed_tools'"),
    ({"tools": TOOLS, "tool_choice": "required", "max_tokens": 3}, "max_tokens", "too few for a forced tool call"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "max_tokens": 12},
     "max_tokens", "the shortest call takes"),
    ({"functions": FUNCTIONS, "function_call": {"name": "get_stock"}}, "function_call",
     "the function 'get_stock' is not among the tools"),
    ({"functions": FUNCTIONS, "function_call": "required"}, "function_call", "must be \"none\", \"auto\" or"),
    ({"functions": FUNCTIONS, "tools": TOOLS}, "functions", "not both"),
    ({"tools": TOOLS, "function_call": "auto"}, "function_call", "not both"),
    ({"functions": {"name": "f"}}, "functions", "must be a list"),
    ({"functions": [{"description": "no name"}]}, "functions", "needs a function name"),
])
def test_bad_tool_choices_get_openai_errors(client, kwargs, param, message):
    args = {"model": "base", "messages": ASK, "max_tokens": 16, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args)
    body = err.value.body
    assert err.value.status_code == 400 and body["param"] == param and message in body["message"], body
    assert body["type"] == "invalid_request_error"


def test_forced_call_needs_a_template_with_tools(engine):
    from workbench.infer.api import ApiError, ChatRequest
    from workbench.infer.engine import ChatEngine

    llama2 = ChatEngine(engine.loaded, "llama2")
    body = {"model": "base", "messages": ASK, "tools": TOOLS, "tool_choice": "required"}
    with pytest.raises(ApiError) as err:
        ChatRequest(body, llama2, base_names={"base"}, default_max_tokens=32)
    assert err.value.status == 400 and err.value.param == "tools" and "no tool-calling format" in err.value.message
    ChatRequest({**body, "tool_choice": "none"}, llama2, base_names={"base"}, default_max_tokens=32)


def test_a_forced_row_leaves_its_batch_mates_alone(engine):
    """A forced call and a plain answer generated in ONE batch: the constraint touches only its own row."""
    from workbench.config.generation import GenerationArgs
    from workbench.infer.api import ChatRequest, answer
    from workbench.infer.engine import RowSpec

    hi = [{"role": "user", "content": "Hello, who are you?"}]
    req = ChatRequest({"model": "base", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 32},
                      engine, base_names={"base"}, default_max_tokens=32)
    plain = ChatRequest({"model": "base", "messages": hi, "max_tokens": 12}, engine, base_names={"base"},
                        default_max_tokens=12)
    batch = engine.start([RowSpec(plain.prompt_ids, None, 12),
                          RowSpec(req.prompt_ids + req.forced_ids, None, req.gen_tokens, tools=True,
                                  constraint=req.constraint)], req.gen)
    batch.wait()
    assert batch.rows[0].text.strip() == engine.chat(hi, GenerationArgs(max_new_tokens=12)).text
    content, calls = answer(engine, batch.rows[1], req)
    assert content is None and len(calls) == 1 and calls[0]["name"] in NAMES
    assert isinstance(calls[0]["arguments"], dict)


def test_an_invalid_forced_call_is_a_readable_error(engine):
    """Should a forced call still not parse (the constraint makes that impossible), the client gets a 500 that
    says so and shows the text, never a silent non-call."""
    from workbench.infer.api import ApiError, ChatRequest, answer

    req = ChatRequest({"model": "base", "messages": ASK, "tools": TOOLS, "max_tokens": 32,
                       "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
                      engine, base_names={"base"}, default_max_tokens=32)

    class Row:
        text, finish_reason = ' {"tz": ', "length"

        def wait(self):
            return self

    with pytest.raises(ApiError) as err:
        answer(engine, Row(), req)
    assert err.value.status == 500 and err.value.code == "invalid_tool_call"
    assert "(length)" in err.value.message and '"get_time", "arguments": {"tz": ' in err.value.message


# -- the constraint on its own ------------------------------------------------------------------------

def run_constraint(tokenizer, names, limit, scores_of, keep=1):
    """Generate under the constraint with scores from ``scores_of(step, generated)``; the answer text."""
    from workbench.infer.api import ToolCallConstraint, ToolCallGrammar, token_texts

    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    texts = token_texts(tokenizer)
    constraint = ToolCallConstraint(ToolCallGrammar(names, texts), texts, stop, limit, keep=keep)
    generated: list[int] = []
    while len(generated) < limit:
        scores = constraint(generated, scores_of(len(generated), generated))
        token = int(scores.argmax())
        if token in stop:
            break
        generated.append(token)
    return generated, tokenizer.decode(generated, skip_special_tokens=True)


@pytest.mark.parametrize("names", [None, ["get_weather", "get_time", "天气_查询", "say \"hi\""]])
def test_random_scores_always_give_a_valid_call_within_the_limit(engine, names):
    import torch

    from workbench.data.templates import parse_hermes_tool_calls

    tokenizer = engine.loaded.tokenizer
    prefix = '<tool_call>\n{"name":' if names else '<tool_call>\n{"name": "get_weather", "arguments":'
    rng = random.Random(0)
    for trial in range(12):
        limit = rng.choice([16, 20, 32, 48]) if names else rng.choice([8, 10, 24, 48])  # at least the shortest call
        gen = torch.Generator().manual_seed(trial)
        ids, text = run_constraint(tokenizer, names, limit, lambda *_: torch.randn(49152, generator=gen) * 4)
        calls = parse_hermes_tool_calls(prefix + text)
        assert len(ids) <= limit
        assert len(calls) == 1 and isinstance(calls[0]["arguments"], dict), (limit, text)
        assert calls[0]["name"] in (names or ["get_weather"])


def test_a_model_that_calls_well_is_left_alone(engine):
    """Scores that already spell a good call (what a real tool-trained model does) pass unchanged."""
    import torch

    tokenizer = engine.loaded.tokenizer
    want = ' "get_time", "arguments": {"tz": "Asia/Tokyo", "hours": [1, 2.5e3, -0.25], "dst": false, ' \
           '"note": "caf\\u00e9 \\"x\\""}}\n</tool_call>'
    target = tokenizer.encode(want, add_special_tokens=False)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def teacher(step, generated):
        scores = torch.zeros(49152)
        scores[target[step] if step < len(target) else stop] = 10.0
        return scores

    ids, text = run_constraint(tokenizer, ["get_weather", "get_time"], len(target) + 8, teacher)
    assert ids == target and text == want


def test_json_automaton_accepts_json_and_its_closure_completes_any_prefix():
    from workbench.infer.api import _JSON_START, json_closure, json_step

    docs = ['{}', '{"a": 1}', '{"a": [1, -2.5e-3, 0, true, false, null, "x\\n\\u00e9"], "b": {"c": {}}}',
            '{ "k" : "v" , "e": [] , "n": -0}', '{"deep": [[[{"x": [0.1E+2]}]]]}']
    for doc in docs:
        state = _JSON_START
        for k, ch in enumerate(doc):
            closed = doc[:k] + json_closure(state)
            assert isinstance(json.loads(closed), dict), closed
            state = json_step(state, ch)
            assert state is not None, (doc, k)
        assert state[1] == "end"
    for bad in ['[]', '{"a" 1}', '{"a": 01}', '{"a": tru}', '{"a": "\x01"}', '{,}', '{"a": 1,}', '{"a": [1,]}',
                '{"a": "\\x"}', '{"a": .5}', '{"a": 1}}']:
        state = _JSON_START
        for ch in bad:
            state = json_step(state, ch) if state is not None else None
        assert state is None or state[1] != "end", bad
