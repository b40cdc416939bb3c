"""Chat templates against the tokenizers' own jinja templates, token for token, and label masks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from workbench.config.base import WorkbenchError
from workbench.data.templates import IGNORE_INDEX, TEMPLATES, get_template, resolve_template

DATA = Path(__file__).parent / "data"

# The classic ChatML jinja template (no default system prompt), as in many ChatML models' tokenizer_config.json.
CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am a small model."}],
    [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Translate 'cat' into French, as JSON: {\"fr\": ...}"},
        {"role": "assistant", "content": "{\"fr\": \"chat\"}"},
        {"role": "user", "content": "请把下面的句子翻译为英文：\n今天天气很好。"},
        {"role": "assistant", "content": "The weather is nice today.\n\n  Indeed. "},
    ],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ],
]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris and Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Zürich"}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "tool", "content": "{\"temp\": 18}"},
    {"role": "assistant", "content": "Paris is 21°C, Zürich 18°C."},
    {"role": "user", "content": "And Rome?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Rome"}}]},
]


def hf_messages(messages):
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{"type": "function", "function": c} for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


@pytest.fixture()
def tok_with(tokenizer):
    def make(chat_template: str):
        t = copy.deepcopy(tokenizer)
        t.chat_template = chat_template
        return t
    return make


def hf_ids(tokenizer, messages, tools=None, add_generation_prompt=False):
    return list(tokenizer.apply_chat_template(hf_messages(messages), tools=tools, tokenize=True,
                                              add_generation_prompt=add_generation_prompt)["input_ids"])


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("name", ["smollm2", "jinja"])
def test_smollm2_matches_bundled_tokenizer_template(tokenizer, name, index):
    """The bundled SmolLM2 tokenizer ships a ChatML jinja template with a default system prompt."""
    template = get_template(name)
    messages = CONVERSATIONS[index]
    ids, labels = template.encode_supervised(tokenizer, messages)
    assert ids == hf_ids(tokenizer, messages)
    assert template.render(tokenizer, messages, add_generation_prompt=False) == tokenizer.apply_chat_template(
        messages, tokenize=False)
    prompt = messages[:-1]
    assert template.encode_prompt(tokenizer, prompt) == hf_ids(tokenizer, prompt, add_generation_prompt=True)
    assert len(labels) == len(ids)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chatml_matches_plain_chatml_jinja(tok_with, index):
    tokenizer = tok_with(CHATML_JINJA)
    messages = CONVERSATIONS[index]
    ids, _ = get_template("chatml").encode_supervised(tokenizer, messages)
    assert ids == hf_ids(tokenizer, messages)
    assert get_template("chatml").encode_prompt(tokenizer, messages[:-1]) == hf_ids(
        tokenizer, messages[:-1], add_generation_prompt=True)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_qwen_matches_qwen2_5_jinja(tok_with, index):
    tokenizer = tok_with((DATA / "qwen2_5_chat_template.jinja").read_text())
    messages = CONVERSATIONS[index]
    template = get_template("qwen")
    assert template.encode_supervised(tokenizer, messages)[0] == hf_ids(tokenizer, messages)
    assert template.encode_prompt(tokenizer, messages[:-1]) == hf_ids(tokenizer, messages[:-1],
                                                                      add_generation_prompt=True)


@pytest.mark.parametrize("system", [None, "You are a weather bot."])
def test_qwen_tools_and_tool_calls_match_qwen2_5_jinja(tok_with, system):
    tokenizer = tok_with((DATA / "qwen2_5_chat_template.jinja").read_text())
    messages = ([{"role": "system", "content": system}] if system else []) + TOOL_CONVERSATION
    template = get_template("qwen")
    text = template.render(tokenizer, messages, tools=TOOLS, add_generation_prompt=False)
    assert text == tokenizer.apply_chat_template(hf_messages(messages), tools=TOOLS, tokenize=False)
    ids, labels = template.encode_supervised(tokenizer, messages, tools=TOOLS)
    assert ids == hf_ids(tokenizer, messages, tools=TOOLS)
    trained = tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call><|im_end|>'
        "Paris is 21°C, Zürich 18°C.<|im_end|>"
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>'
    )
    # The same conversation through the tokenizer's own template (jinja) gives the same ids and labels.
    assert get_template("jinja").encode_supervised(tokenizer, messages, tools=TOOLS) == (ids, labels)
    # A model's reply parses back into calls.
    reply = trained.split("<|im_end|>")[0]
    assert template.parse_tool_calls(reply) == [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                {"name": "get_weather", "arguments": {"city": "Zürich"}}]


def spans(tokenizer, ids, labels):
    """The trained token runs, decoded."""
    runs, current = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            current.append(i)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_multi_turn_masks(tokenizer):
    messages = CONVERSATIONS[1]
    template = get_template("smollm2")
    ids, labels = template.encode_supervised(tokenizer, messages)
    answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert spans(tokenizer, ids, labels) == answers
    # mask_history: only the last answer is trained.
    ids2, labels2 = template.encode_supervised(tokenizer, messages, mask_history=True)
    assert ids2 == ids
    assert spans(tokenizer, ids2, labels2) == answers[-1:]
    # train_on_prompt: every token is trained.
    _, labels3 = template.encode_supervised(tokenizer, messages, train_on_prompt=True)
    assert labels3 == ids
    # The end-of-turn token is trained and is a stop token, so a trained model stops.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in template.stop_token_ids(tokenizer)
    assert sum(1 for i, lab in zip(ids, labels) if lab == im_end) == 3
    # Mask by position: every prompt token (system, user turns, "<|im_start|>assistant\n" headers, the
    # newline after <|im_end|>) is -100.
    prompt_only = template.encode_prompt(tokenizer, messages[:1])
    assert all(lab == IGNORE_INDEX for lab in labels[: len(prompt_only)])
    assert labels[len(prompt_only)] != IGNORE_INDEX


def test_cutoff_shortens_the_prompt_but_keeps_the_response(tokenizer):
    template = get_template("smollm2")
    article = " ".join(f"word{i}" for i in range(600))
    messages = [{"role": "user", "content": "Summarize:\n" + article}, {"role": "assistant", "content": "A short summary."}]
    full_ids, _ = template.encode_supervised(tokenizer, messages)
    assert len(full_ids) > 256
    stats: dict = {}
    ids, labels = template.encode_supervised(tokenizer, messages, cutoff_len=256, stats=stats)
    assert len(ids) <= 256
    assert spans(tokenizer, ids, labels) == ["A short summary.<|im_end|>"]
    assert stats == {"prompt_shortened": 1, "truncated": 1}
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\nA short summary." in text
    assert "word0 " in text and "word599" not in text  # the article is cut from its end


def test_cutoff_keeps_part_of_a_long_response_and_reports_impossible_cases(tokenizer):
    template = get_template("chatml")
    long_answer = " ".join(["blah"] * 400)
    messages = [{"role": "user", "content": "x " * 300}, {"role": "assistant", "content": long_answer}]
    ids, labels = template.encode_supervised(tokenizer, messages, cutoff_len=128)
    assert len(ids) == 128
    assert sum(lab != IGNORE_INDEX for lab in labels) >= 128 // 4
    # The template's own tokens alone exceed the cutoff: no response token can stay.
    with pytest.raises(WorkbenchError, match="no response token is left within cutoff_len=8"):
        get_template("smollm2").encode_supervised(tokenizer, messages, cutoff_len=8)


def test_llama2_folds_the_system_prompt_into_the_first_turn(tokenizer):
    text = get_template("llama2").render(tokenizer, CONVERSATIONS[2], add_generation_prompt=False)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert text == f"{bos}[INST] <<SYS>>\nYou answer in one word.\n<</SYS>>\n\nCapital of France? [/INST] Paris {eos}"


def test_template_without_tool_format_refuses_tool_data(tokenizer):
    with pytest.raises(WorkbenchError, match="template 'llama3' has no tool-calling format"):
        get_template("llama3").render(tokenizer, TOOL_CONVERSATION, tools=TOOLS)


def test_template_names_and_resolution(bundled_model_dir, tiny_model_dir):
    assert {"qwen", "chatml", "smollm2", "llama2", "llama3", "mistral", "alpaca", "default", "jinja"} <= set(TEMPLATES)
    with pytest.raises(WorkbenchError, match="unknown template 'chatmlx'"):
        get_template("chatmlx")
    assert resolve_template("auto", "smollm2-135m-instruct").name == "smollm2"
    assert resolve_template("auto", str(bundled_model_dir)).name == "smollm2"
    assert resolve_template("auto", "Qwen/Qwen2.5-7B-Instruct").name == "qwen"
    assert resolve_template("auto", str(tiny_model_dir)).name == "jinja"  # not in the registry: its own template
    assert resolve_template("llama3", "smollm2-135m-instruct").name == "llama3"


def test_jinja_template_without_chat_template_is_a_clear_error(tok_with):
    tokenizer = tok_with(None)
    with pytest.raises(WorkbenchError, match="has no chat template"):
        get_template("jinja").render(tokenizer, CONVERSATIONS[0])


def test_bad_messages(tokenizer):
    template = get_template("chatml")
    with pytest.raises(WorkbenchError, match="must be from the user"):
        template.render(tokenizer, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(WorkbenchError, match="unknown role 'bot'"):
        template.render(tokenizer, [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
    with pytest.raises(WorkbenchError, match="content must be text"):
        template.render(tokenizer, [{"role": "user", "content": ["a"]}])
