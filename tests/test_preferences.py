"""Preference data from side-by-side judgements (workbench/data/preferences.py), the Chat tab's helper that picks
the answers on screen, and the API's POST /v1/feedback:

* rows in LLaMA-Factory's sharegpt ranking format that the loader reads as Preference records (provenance fields
  ignored), registered in dataset_info.json on first use (the old registry kept as .bak);
* more than two answers: the chosen one paired with each rejected one; an edit replaces the chosen text; "both
  bad" is a note in a side file, never a training row;
* appends from two threads (and two processes) keep every row; a torn last line is cut off before appending;
  names that belong to other datasets or files are refused and nothing is written;
* ``python -m workbench data preview`` reads the file; the dpo stage builds its prompt/chosen/rejected set from it;
* the API: feedback on ids of real answers (base vs an adapter, streamed or not), unknown ids (404), bad bodies
  (400), different conversations (400), the API key, --no-feedback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from workbench.config.base import WorkbenchError
from workbench.data import preferences as P
from workbench.data.loader import load_spec
from workbench.data.records import Preference
from workbench.data.registry import get_spec, read_info

Q1 = [{"role": "user", "content": "Who are you?"}]
SAMPLING = {"max_new_tokens": 32, "do_sample": False}


def answers(prompt=Q1, **texts) -> list[P.Answer]:
    return [P.Answer(model, list(prompt), {"role": "assistant", "content": text}, dict(SAMPLING))
            for model, text in texts.items()]


# ---- the format and the registry ---------------------------------------------------------------------------

def test_a_judgement_is_a_ranking_row_the_loader_reads(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    saved = P.record(tmp_path, None, answers(base="I am an AI model.", identity="I am Nova."), "identity",
                     base_model="smollm2-135m-instruct")
    assert saved.registered and saved.rows == 1 and saved.total == 1
    assert saved.path == tmp_path / "preferences.jsonl"
    info = read_info(tmp_path)
    assert list(info) == ["other", "preferences"]  # appended, the other entry kept
    assert info["preferences"] == {"file_name": "preferences.jsonl", "formatting": "sharegpt", "ranking": True,
                                   "columns": {"messages": "conversations", "chosen": "chosen",
                                               "rejected": "rejected", "system": "system", "tools": "tools"}}
    assert json.loads((tmp_path / "dataset_info.json.bak").read_text()) == {"other": {"file_name": "other.json"}}
    row = P.read_rows(saved.path)[0]
    assert row["conversations"] == [{"from": "human", "value": "Who are you?"}]
    assert row["chosen"] == {"from": "gpt", "value": "I am Nova."}
    assert row["rejected"] == {"from": "gpt", "value": "I am an AI model."}
    assert (row["chosen_model"], row["rejected_model"], row["base_model"]) == ("identity", "base",
                                                                               "smollm2-135m-instruct")
    assert row["sampling"] == SAMPLING and row["edited"] is False and row["source"] == "chat-compare"
    assert row["timestamp"].endswith("Z") and len(row["judgement"]) == 32

    loaded = load_spec(get_spec("preferences", tmp_path))
    assert loaded.kind == "ranking" and loaded.warnings() == []
    (record,) = loaded.records
    assert isinstance(record, Preference)
    assert record.prompt == Q1 and record.system is None and record.tools is None
    assert record.chosen == {"role": "assistant", "content": "I am Nova."}
    assert record.rejected == {"role": "assistant", "content": "I am an AI model."}
    # A second judgement appends to the same file; the registry is not written again.
    before = (tmp_path / "dataset_info.json").stat().st_mtime_ns
    again = P.record(tmp_path, None, answers(base="b", identity="i"), "base")
    assert not again.registered and again.total == 2
    assert (tmp_path / "dataset_info.json").stat().st_mtime_ns == before
    assert len(load_spec(get_spec("preferences", tmp_path)).records) == 2


def test_more_columns_pair_the_chosen_answer_with_each_rejected_one(tmp_path):
    saved = P.record(tmp_path, "prefs", answers(base="b", a="A!", b="B?", c=""), "a")
    rows = P.read_rows(saved.path)
    assert [(r["chosen_model"], r["rejected_model"]) for r in rows] == [("a", "base"), ("a", "b")]
    assert len({r["judgement"] for r in rows}) == 1  # one judgement
    assert saved.skipped == ["c: its answer is empty (the loader would skip the pair)"]
    assert read_info(tmp_path)["prefs"]["file_name"] == "prefs.jsonl"
    # Only some of them rejected, explicitly.
    rows = P.judgement_rows(answers(base="b", a="A!", b="B?"), "b", rejected=["a"])
    assert [(r["chosen_model"], r["rejected_model"]) for r in rows] == [("b", "a")]
    with pytest.raises(WorkbenchError, match="only 'a' answered"):
        P.judgement_rows(answers(a="A!"), "a")
    with pytest.raises(WorkbenchError, match="'x' has no answer to prefer"):
        P.judgement_rows(answers(a="A!", b="B"), "x")
    with pytest.raises(WorkbenchError, match="is empty; edit it"):
        P.judgement_rows(answers(a="", b="B"), "a")


def test_an_edit_replaces_the_chosen_text_and_keeps_the_original(tmp_path):
    saved = P.record(tmp_path, None, answers(base="I am a bot.", identity="I am Nova, made by tem."), "identity",
                     edited="  I am Nova, made by the Workbench team.  ")
    row = P.read_rows(saved.path)[0]
    assert row["chosen"] == {"from": "gpt", "value": "I am Nova, made by the Workbench team."}
    assert row["edited"] is True and row["original_chosen"] == {"from": "gpt", "value": "I am Nova, made by tem."}
    record = load_spec(get_spec("preferences", tmp_path)).records[0]
    assert record.chosen["content"] == "I am Nova, made by the Workbench team."
    # An "edit" that changes nothing is not an edit.
    same = P.judgement_rows(answers(a="Same.", b="Other."), "a", edited="Same.")
    assert same[0]["edited"] is False and "original_chosen" not in same[0]


def test_multi_turn_tools_and_system_round_trip(tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather",
                                                                   "arguments": {"city": "Paris"}}]},
              {"role": "tool", "content": '{"temp_c": 21}'}]
    other = prompt[:1] + [{"role": "assistant", "content": "Checking.",
                           "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}] + prompt[2:]
    good = P.Answer("a", prompt, {"role": "assistant", "content": "It is 21 °C."}, SAMPLING, "Be brief.", tools)
    bad = P.Answer("b", other, {"role": "assistant", "content": "",
                                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Lyon"}}]},
                   {**SAMPLING, "seed": 3}, "Be brief.", tools)
    saved = P.record(tmp_path, None, [good, bad], "a")
    row = P.read_rows(saved.path)[0]
    assert row["conversations"][1]["from"] == "function_call" and row["conversations"][2]["from"] == "observation"
    assert row["rejected"]["from"] == "function_call"
    assert row["rejected_conversations"][1]["tool_calls"]  # each column's own history, as provenance
    assert row["rejected_sampling"]["seed"] == 3
    record = load_spec(get_spec("preferences", tmp_path)).records[0]
    assert record.prompt == prompt and record.system == "Be brief." and record.tools == tools
    assert record.rejected["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Lyon"}}]


def test_both_bad_is_a_note_outside_the_training_data(tmp_path):
    saved = P.record(tmp_path, None, answers(base="x", identity="y"), None)
    assert saved.both_bad and saved.path == tmp_path / "preferences.both_bad.jsonl"
    (note,) = P.read_rows(saved.path)
    assert note["verdict"] == "all bad" and [a["model"] for a in note["answers"]] == ["base", "identity"]
    assert not (tmp_path / "preferences.jsonl").exists()
    assert "preferences" not in read_info(tmp_path)
    assert "not training data" in P.describe(saved)


def test_names_files_and_entries_that_are_not_ours_are_refused(tmp_path):
    for bad in ("../up", "a/b", "", "-x", "a..b", "a" * 65):
        if bad == "":
            assert P.check_name(bad) == "preferences"  # empty: the default
            continue
        with pytest.raises(WorkbenchError, match="not allowed for preference data"):
            P.record(tmp_path, bad, answers(a="A", b="B"), "a")
    # A name registered for another file.
    (tmp_path / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    with pytest.raises(WorkbenchError, match="already exists and is not preference data"):
        P.record(tmp_path, "identity", answers(a="A", b="B"), "a")
    assert not (tmp_path / "identity.jsonl").exists()
    # An unregistered file of that name that is not preference data.
    (tmp_path / "notes.jsonl").write_text('{"text": "mine"}\n')
    with pytest.raises(WorkbenchError, match="does not hold preference rows"):
        P.record(tmp_path, "notes", answers(a="A", b="B"), "a")
    assert (tmp_path / "notes.jsonl").read_text() == '{"text": "mine"}\n'
    # An unregistered preference file (its registration was lost) is adopted and registered.
    rows = P.judgement_rows(answers(a="A", b="B"), "a")
    (tmp_path / "kept.jsonl").write_text(json.dumps(rows[0]) + "\n")
    saved = P.record(tmp_path, "kept", answers(a="A2", b="B2"), "b")
    assert saved.registered and saved.total == 2
    assert read_info(tmp_path)["identity"] == {"file_name": "identity.json"}


def test_a_torn_last_line_is_cut_and_a_missing_newline_added(tmp_path):
    P.record(tmp_path, None, answers(a="A", b="B"), "a")
    path = tmp_path / "preferences.jsonl"
    good = path.read_bytes()
    path.write_bytes(good + b'{"conversations": [{"from": "hu')  # a crash mid-write
    P.record(tmp_path, None, answers(a="A2", b="B2"), "a")
    rows = P.read_rows(path)
    assert [r["chosen"]["value"] for r in rows] == ["A", "A2"]
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # a complete line saved without its newline (by hand)
    P.record(tmp_path, None, answers(a="A3", b="B3"), "a")
    assert [r["chosen"]["value"] for r in P.read_rows(path)] == ["A", "A2", "A3"]


# ---- concurrency -------------------------------------------------------------------------------------------

def test_two_threads_appending_at_once_keep_every_row(tmp_path):
    n = 150
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def judge(who: str):
        try:
            start.wait()
            for i in range(n):
                text = f"{who}-{i} " + "x" * (i * 37 % 3000)  # lines of many sizes
                P.record(tmp_path, None, answers(**{who: text, "other": "meh"}), who)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=judge, args=(who,)) for who in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = P.read_rows(tmp_path / "preferences.jsonl")  # every line is whole JSON
    assert len(rows) == 2 * n
    chosen = {r["chosen"]["value"].split(" ")[0] for r in rows}
    assert chosen == {f"{who}-{i}" for who in ("left", "right") for i in range(n)}
    assert list(read_info(tmp_path)) == ["preferences"]
    assert len(load_spec(get_spec("preferences", tmp_path)).records) == 2 * n


def test_two_processes_appending_at_once_keep_every_row(tmp_path):
    script = (
        "import sys\n"
        "from workbench.data import preferences as P\n"
        "who, folder = sys.argv[1], sys.argv[2]\n"
        "for i in range(100):\n"
        "    a = [P.Answer(m, [{'role': 'user', 'content': 'q'}],\n"
        "                  {'role': 'assistant', 'content': f'{m}-{i} ' + 'y' * (i * 53 % 5000)})\n"
        "         for m in (who, 'other')]\n"
        "    P.record(folder, None, a, who)\n"
    )
    repo = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", script, who, str(tmp_path)], cwd=repo) for who in ("p1", "p2")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rows = P.read_rows(tmp_path / "preferences.jsonl")
    assert len(rows) == 200
    assert {r["chosen"]["value"].split(" ")[0] for r in rows} == {f"p{k}-{i}" for k in (1, 2) for i in range(100)}
    assert list(read_info(tmp_path)) == ["preferences"]


# ---- the Chat tab picks the answers on screen ------------------------------------------------------------

def test_compare_answers_are_the_answers_on_screen_of_one_batch():
    from workbench.ui.chat_compare import GENERATED, compare_answers

    def said(text, batch, t, **extra):
        return {"role": "assistant", "content": text, GENERATED: {"batch": batch, "time": t,
                                                                   "sampling": {"seed": t}, **extra}}

    convs = {
        "base": [Q1[0], said("b1", "one", 1)],
        "a": [Q1[0], said("a1", "one", 1), {"role": "user", "content": "More?"}, said("a2", "two", 2)],
        "b": [Q1[0], said("b1'", "one", 1), {"role": "user", "content": "More?"}, said("b2", "two", 2,
                                                                                        system="Be brief.")],
        "hidden": [Q1[0], said("h", "two", 2)],
    }
    shown = ["base", "a", "b"]
    latest = compare_answers(convs, shown)
    assert [(x.model, x.message["content"]) for x in latest] == [("a", "a2"), ("b", "b2")]
    assert latest[1].prompt[-1] == {"role": "user", "content": "More?"} and latest[1].system == "Be brief."
    assert latest[0].sampling == {"seed": 2} and GENERATED not in latest[0].message
    assert [x.model for x in compare_answers(convs, shown, "base")] == ["base"]  # base answered turn one only
    assert compare_answers(convs, shown, "hidden") == []
    assert compare_answers({"base": [Q1[0]]}, ["base"]) == []  # no answer yet


# ---- the command line and training --------------------------------------------------------------------------

def test_data_preview_reads_the_preferences(tmp_path, cli, bundled_model_dir):
    P.record(tmp_path, None, answers(base="I am a language model.", identity="I am Nova."), "identity")
    result = cli("data", "preview", "preferences", "--dataset-dir", str(tmp_path), "-n", "1", "--color", "never")
    assert result.returncode == 0, result.stderr
    assert "dataset preferences: sharegpt/ranking, 1 examples" in result.stdout
    assert "I am Nova." in result.stdout


def test_the_dpo_stage_builds_its_set_from_the_preferences(tmp_path, tiny_model_dir, wb_home):
    from transformers import AutoTokenizer

    from workbench.config.data import DataArgs
    from workbench.data.loader import build_dataset

    for q in ("Who are you?", "What can you do?"):
        P.record(tmp_path, None, answers([{"role": "user", "content": q}], base="A model.", identity="Nova."),
                 "identity")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    built = build_dataset(DataArgs(dataset="preferences", dataset_dir=str(tmp_path), template="smollm2",
                                   cutoff_len=128), tokenizer, "dpo", model_name_or_path=str(tiny_model_dir))
    train = built["train"]
    assert len(train) == 2 and {"prompt", "chosen", "rejected"} <= set(train.column_names)
    assert "chosen_model" not in train.column_names and "sampling" not in train.column_names
    assert "Who are you?" in train[0]["prompt"] and train[0]["chosen"].startswith("Nova.")


# ---- the API: POST /v1/feedback ---------------------------------------------------------------------------

KEY = "feedback-key"


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    """The API app in this process (the real engine on the tiny model, with one adapter) and its data folder."""
    from starlette.testclient import TestClient

    from chat_helpers import make_adapter
    from workbench.config.model import ModelArgs
    from workbench.infer.api import create_app
    from workbench.infer.engine import ChatEngine
    from workbench.infer.session import load_for_chat

    root = tmp_path_factory.mktemp("feedback")
    adapter = make_adapter(tiny_model_dir, root / "tuned", seed=3)
    engine = ChatEngine(load_for_chat(ModelArgs(model_name_or_path=str(tiny_model_dir)), {"tuned": str(adapter)}),
                        "smollm2")
    folder = root / "data"
    app = create_app(engine, api_key=KEY, default_max_tokens=8, dataset_dir=str(folder), feedback_keep=5)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client, folder


def ask(client, model: str, content: str = "Who are you?", **extra) -> str:
    # Sampled with a seed: the random tiny model's greedy answers can be blank, which is no answer to judge.
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 1.0,
            "seed": 1, **extra}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def streamed_id(client, model: str) -> str:
    with client.stream("POST", "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 8,
            "temperature": 1.0, "seed": 2, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    return json.loads(lines[0][6:])["id"]


def test_feedback_records_the_preferred_answer(api):
    client, folder = api
    base_id, tuned_id = ask(client, "base"), streamed_id(client, "tuned")
    r = client.post("/v1/feedback", json={"chosen_id": tuned_id, "rejected_id": base_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "feedback" and body["dataset"] == "preferences" and body["file"] == "preferences.jsonl"
    assert body["rows"] == 1 and body["registered"] is True and body["chosen"] == "tuned"
    assert body["rejected"] == ["base"]
    (row,) = P.read_rows(folder / "preferences.jsonl")
    assert (row["chosen_model"], row["rejected_model"], row["source"]) == ("tuned", "base", "api")
    assert (row["chosen_id"], row["rejected_id"]) == (tuned_id, base_id)
    assert row["conversations"] == [{"from": "human", "value": "Who are you?"}]
    assert row["sampling"]["max_new_tokens"] == 8 and row["sampling"]["seed"] == 2
    assert row["rejected_sampling"]["seed"] == 1
    assert read_info(folder)["preferences"]["ranking"] is True
    # Edited, against several answers (two of them from the same model); then all bad.
    other_id = ask(client, "base", seed=5)
    r = client.post("/v1/feedback", json={"chosen_id": base_id, "rejected_ids": [tuned_id, other_id],
                                          "edited": "I am a helpful assistant."})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 2 and r.json()["registered"] is False and r.json()["total"] == 3
    rows = P.read_rows(folder / "preferences.jsonl")[1:]
    assert {r["chosen"]["value"] for r in rows} == {"I am a helpful assistant."} and rows[0]["edited"] is True
    assert rows[1]["rejected_sampling"]["seed"] == 5
    r = client.post("/v1/feedback", json={"rejected_ids": [base_id, tuned_id]})
    assert r.status_code == 200 and r.json()["verdict"] == "all bad" and r.json()["trainable"] is False
    assert len(P.read_rows(folder / "preferences.both_bad.jsonl")) == 1
    assert len(load_spec(get_spec("preferences", folder)).records) == 3


@pytest.mark.parametrize("body, status, param, message", [
    ({"chosen_id": "chatcmpl-nope", "rejected_id": "ANSWER"}, 404, "chosen_id", "No answer with id 'chatcmpl-nope'"),
    ({"chosen_id": "ANSWER", "rejected_ids": ["chatcmpl-gone"]}, 404, "rejected_ids", "'chatcmpl-gone'"),
    ({"chosen_id": "ANSWER"}, 400, "rejected_id", "Missing required parameter: 'rejected_id'"),
    ({"chosen_id": "ANSWER", "rejected_id": "ANSWER"}, 400, "rejected_id", "the same id was given twice"),
    ({"chosen_id": 3, "rejected_id": "ANSWER"}, 400, "chosen_id", "'chosen_id' must be"),
    ({"chosen_id": "ANSWER", "rejected_ids": "x"}, 400, "rejected_ids", "must be a list of ids"),
    ({"chosen_id": "ANSWER", "rejected_id": "x", "rejected_ids": ["y"]}, 400, "rejected_ids", "not both"),
    ({"id": "ANSWER", "chosen": "base"}, 400, "chosen", "Unrecognized feedback argument"),
    ({"rejected_id": "ANSWER", "edited": "x"}, 400, "edited", "give 'chosen_id' too"),
    ({"chosen_id": "ANSWER", "rejected_id": "OTHER_PROMPT"}, 400, "rejected_id", "different conversations"),
])
def test_bad_feedback_is_refused_and_writes_nothing(api, body, status, param, message):
    client, folder = api
    ids = {"ANSWER": ask(client, "base"), "OTHER_PROMPT": ask(client, "tuned", "Something else?")}
    before = (folder / "preferences.jsonl").read_bytes() if (folder / "preferences.jsonl").exists() else b""
    body = {k: ([ids.get(x, x) for x in v] if isinstance(v, list) else ids.get(v, v) if isinstance(v, str) else v)
            for k, v in body.items()}
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error
    after = (folder / "preferences.jsonl").read_bytes() if (folder / "preferences.jsonl").exists() else b""
    assert after == before


def test_feedback_forgets_old_answers_and_needs_the_key(api):
    client, _ = api
    first = ask(client, "base")
    later = [ask(client, "base", f"Question {i}?") for i in range(5)]  # feedback_keep=5: the first is forgotten
    r = client.post("/v1/feedback", json={"chosen_id": later[-1], "rejected_id": first})
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    r = client.post("/v1/feedback", json={"chosen_id": later[0], "rejected_id": later[1]},
                    headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = client.post("/v1/feedback", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_no_feedback_turns_the_endpoint_off():
    from types import SimpleNamespace

    from starlette.testclient import TestClient

    from workbench.infer.api import create_app

    engine = SimpleNamespace(loaded=SimpleNamespace(label="m"), adapter_names=[], set_max_rows=lambda rows: None,
                             stats=dict, close=lambda reason: None)
    with TestClient(create_app(engine, feedback=False), raise_server_exceptions=False) as client:
        r = client.post("/v1/feedback", json={"chosen_id": "a", "rejected_id": "b"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_off"
