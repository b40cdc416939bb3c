"""What an outside probe found in the templates: jinja templates that drop tools, stop tokens the tokenizer
cannot encode, truncation that kept too little of the answer, and a deprecation warning in every log."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.config.base import WorkbenchError
from workbench.config.data import DataArgs
from workbench.data.loader import build_dataset
from workbench.data.templates import IGNORE_INDEX, get_template, parse_hermes_tool_calls

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


def trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


# -- 1. a jinja template that ignores tools ---------------------------------------------------------------

def test_jinja_template_that_ignores_tools_falls_back_to_hermes_with_a_note(tokenizer):
    jinja = get_template("jinja")
    # SmolLM2's own template drops `tools` and `tool_calls` (but renders a tool role's content).
    assert jinja.tool_rendering(tokenizer) == (False, False, True)
    note = jinja.tools_note(tokenizer)
    assert note and "ignores tool definitions, tool calls" in note and "Hermes" in note

    text = jinja.render(tokenizer, TOOL_CONVERSATION, tools=TOOLS, add_generation_prompt=False)
    assert "<tools>" in text and '"name": "get_weather"' in text  # the definitions reached the prompt
    ids, labels = jinja.encode_supervised(tokenizer, TOOL_CONVERSATION, tools=TOOLS)
    trained = trained_text(tokenizer, ids, labels)
    # The tool-call turn is trained as the call, not as an empty answer.
    assert parse_hermes_tool_calls(trained) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert trained.endswith("It is 21 degrees in Paris.<|im_end|>")
    # Conversations without tools render exactly as the tokenizer's own template does.
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert jinja.render(tokenizer, plain, add_generation_prompt=False) == tokenizer.apply_chat_template(
        plain, tokenize=False)


def test_jinja_template_that_renders_tools_is_used_as_it_is(tokenizer):
    qwen_like = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    from pathlib import Path

    qwen_like.chat_template = (Path(__file__).parent / "data" / "qwen2_5_chat_template.jinja").read_text()
    jinja = get_template("jinja")
    assert jinja.tool_rendering(qwen_like) == (True, True, True)
    assert jinja.tools_note(qwen_like) is None
    hf = [dict(m) for m in TOOL_CONVERSATION]
    hf[1] = {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert jinja.render(qwen_like, TOOL_CONVERSATION, tools=TOOLS, add_generation_prompt=False) == \
        qwen_like.apply_chat_template(hf, tools=TOOLS, tokenize=False)


def test_training_data_with_tools_logs_the_fallback_note(tokenizer, wb_home, shared_data):
    logs: list[str] = []
    args = DataArgs(dataset="glaive_toolcall_en_demo", dataset_dir=str(shared_data / "llamafactory"),
                    template="jinja", max_samples=20, cutoff_len=1024)
    out = build_dataset(args, tokenizer, "sft", log=logs.append)
    assert "Hermes" in out["stats"]["tools_note"]
    assert any(line.startswith("note: ") and "ignores tool definitions" in line for line in logs)
    trained = [trained_text(tokenizer, row["input_ids"], row["labels"]) for row in out["train"]]
    assert any("<tool_call>" in text for text in trained)  # tool-call turns are trained as calls


def test_chat_engine_names_the_fallback_when_tools_are_used(tokenizer):
    from types import SimpleNamespace

    from workbench.infer.engine import ChatEngine

    engine = ChatEngine(SimpleNamespace(tokenizer=tokenizer, label="custom-model", model=None), "jinja")
    assert engine.notes() == []
    (note,) = engine.notes(tools=True)
    assert "Hermes" in note
    assert any("another format" in n for n in ChatEngine(engine.loaded, "llama2").notes())


# -- 2. stop tokens the tokenizer cannot encode -------------------------------------------------------------

def test_template_whose_stop_token_is_not_one_token_is_refused_for_training(tokenizer, wb_home, shared_data):
    llama3 = get_template("llama3")
    problems = llama3.tokenizer_problems(tokenizer)
    assert any("'<|eot_id|>'" in p and "8 pieces" in p for p in problems)
    lf_dir = shared_data / "llamafactory"
    with pytest.raises(WorkbenchError) as err:
        build_dataset(DataArgs(dataset="identity", dataset_dir=str(lf_dir), template="llama3"), tokenizer, "sft")
    message = str(err.value)
    assert "template 'llama3'" in message and "<|eot_id|>" in message and "never learn to stop" in message
    assert "chatml" in message and "auto" in message  # names templates that fit
    # Plain-text pre-training does not use the template: not refused.
    assert len(build_dataset(DataArgs(dataset="identity", dataset_dir=str(lf_dir), template="llama3",
                                      cutoff_len=64), tokenizer, "pt")["train"]) > 0
    # Templates whose tokens this tokenizer has pass.
    for name in ("chatml", "qwen", "smollm2", "jinja"):
        assert get_template(name).tokenizer_problems(tokenizer) == []


def test_template_of_another_format_is_warned_about(tokenizer):
    (warning,) = get_template("llama2").tokenizer_warnings(tokenizer)
    assert "'<|im_start|>[INST]" in warning and "another format" in warning
    assert get_template("chatml").tokenizer_warnings(tokenizer) == []
    assert get_template("smollm2").tokenizer_warnings(tokenizer) == []


# -- 3. truncation keeps the response whenever it fits -------------------------------------------------------

def llamafactory_target_budget(source_len: int, target_len: int, cutoff_len: int) -> int:
    """LLaMA-Factory's proportional split (infer_seqlen), as the reference the probe compared against."""
    if target_len * 2 < cutoff_len:
        budget = cutoff_len
    elif source_len * 2 < cutoff_len:
        budget = cutoff_len - source_len
    else:
        budget = int(cutoff_len * (target_len / (source_len + target_len)))
    return min(budget, target_len)


@pytest.mark.parametrize("answer_words", [10, 30, 60, 200])
def test_truncation_keeps_at_least_as_much_answer_as_llamafactory(tokenizer, answer_words):
    template = get_template("chatml")
    prompt = "Summarize: " + " ".join(f"fact{i}" for i in range(150))
    answer = " ".join(f"point{i}" for i in range(answer_words))
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    full_ids, full_labels = template.encode_supervised(tokenizer, messages)
    target_len = sum(lab != IGNORE_INDEX for lab in full_labels)
    source_len = len(full_ids) - target_len - 1  # the newline after <|im_end|> is not trained
    stats: dict = {}
    ids, labels = template.encode_supervised(tokenizer, messages, cutoff_len=64, stats=stats)
    trained = sum(lab != IGNORE_INDEX for lab in labels)
    assert len(ids) <= 64
    assert trained >= llamafactory_target_budget(source_len, target_len, 64)
    if target_len <= 48:  # fits in three quarters of the budget: kept whole, with its end-of-turn token
        assert trained_text(tokenizer, ids, labels) == answer + "<|im_end|>"
    else:
        assert trained == 48  # the prompt keeps a quarter
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nSummarize: fact0") and "<|im_start|>assistant\n" in text
    assert stats["prompt_shortened"] == 1


# -- 8. log hygiene ------------------------------------------------------------------------------------------

def test_attaching_an_adapter_prints_no_deprecation_warning():
    """PEFT reads the deprecated `is_gradient_checkpointing` when an adapter is attached; chat, eval and export
    logs opened with that FutureWarning."""
    code = ("import workbench, warnings\n"
            "import transformers, peft\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "m = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
            " num_attention_heads=2, num_key_value_heads=2, vocab_size=64))\n"
            "peft.get_peft_model(m, peft.LoraConfig(r=2, target_modules=['q_proj']))\n"
            "warnings.warn('a real FutureWarning stays', FutureWarning)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "is_gradient_checkpointing" not in result.stderr
    assert "a real FutureWarning stays" in result.stderr


# -- the Data preview shows all of it ------------------------------------------------------------------------

def test_data_preview_shows_template_problems_tools_note_and_shortened_examples(cli, shared_data, tokenizer):
    lf = str(shared_data / "llamafactory")
    refused = cli("data", "preview", "identity", "--dataset-dir", lf, "--template", "llama3", "-n", "0")
    assert refused.returncode == 0, refused.stderr
    assert "warning: template llama3: it needs '<|eot_id|>' as one token" in refused.stdout
    assert "training with this template is refused" in refused.stdout
    tools = cli("data", "preview", "glaive_toolcall_en_demo", "--dataset-dir", lf, "--template", "jinja", "-n", "0",
                "--cutoff-len", "256")
    assert tools.returncode == 0, tools.stderr
    assert "warning: template jinja: the chat template of" in tools.stdout and "Hermes" in tools.stdout
    assert "with the prompt shortened to keep the answer" in tools.stdout


def test_length_stats_count_the_examples_cutoff_shortens(tokenizer):
    from workbench.data import records as R
    from workbench.data.stats import token_lengths

    long_prompt = " ".join(f"fact{i}" for i in range(200))
    records = [R.Conversation([{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "Short."}]),
               R.Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}])]
    stats = token_lengths(records, get_template("chatml"), tokenizer, cutoff_len=64)
    assert stats.summary()["over_cutoff"] == 1
    assert stats.shortening == {"prompt_shortened": 1, "truncated": 1}
    assert "1 with the prompt shortened to keep the answer" in stats.text()


def test_train_tab_plan_refuses_or_warns_about_the_template(tmp_path):
    from workbench.train import plan as train_plan

    values = {"model_name_or_path": "smollm2-135m-instruct", "dataset": "identity", "max_steps": 2}
    with pytest.raises(WorkbenchError, match="template 'llama3' does not fit the tokenizer"):
        train_plan.plan_training({**values, "template": "llama3"}, "l3", root=tmp_path)
    plan = train_plan.plan_training({**values, "template": "llama2"}, "l2", root=tmp_path)
    assert any(w.startswith("template llama2: template 'llama2' renders") for w in plan.warnings)
    assert not any("template" in w for w in train_plan.plan_training(values, "auto", root=tmp_path).warnings)
    # Plain-text pre-training has no template to check.
    train_plan.plan_training({**values, "template": "llama3", "stage": "pt"}, "pt", root=tmp_path)
