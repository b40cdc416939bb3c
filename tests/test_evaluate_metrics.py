"""Metrics against the libraries' own published test values and the official SQuAD v2.0 script, plus the
``score`` command and its bad inputs."""

from __future__ import annotations

import json
import random

import pytest

from workbench.config.base import WorkbenchError
from workbench.evaluate import metrics as M

SQUAD = "eval/squad_v2_dev_2articles.json"

# sacrebleu's test/test_bleu.py (README example): corpus BLEU with two reference streams.
SB_REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
SB_HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SB_PER_EXAMPLE = [list(r) for r in zip(*SB_REFS)]

# rouge-score's testdata/target.txt and prediction.txt (first two lines); expected values in its
# rouge_scorer_test.py come from the original ROUGE-1.5.5 Perl script.
RS_TARGETS = [
    "ZfbCUIUuePaiLVUlCaUXxkpu XPeWing tUHfPMuZ',-Xd Y BrUgVJing M-HV.-DgdDaY.rFDJCRing Ht-LM EKBDXkME,yz'RBr "
    "q'wtion wIojNbN wL,b .a-'XdQggyFl jB-RPP'iyOIcUxer tKM L",
    "KsJdPByEtAor fE-Qg Dpdbring cw-WeFyu vC MoBL Xdn g wkvcEiGvKtion BDFhrpMtion psing sbKao Q m qiing LMmer "
    "HqqLFXe,XPY,J XsurkMer ,ed nB'wH'bWVHjWFEing tQ.saefZwJtKrTlixYpMMsJing UCAPwNHeYVjDing c T BUySKtion "
    "gMPfJpwGw p'NvxAoping eu pBwMBKV'I DNxqelhu,PHPxDEq,mtion SN",
]
RS_PREDICTIONS = [
    "rFDJCRtion Ht-LM EKtDXkME,yz'RBr q'wer wrojNbN wL,b .a-'XdQggyFl jB-RPP'iyOIcUxi",
    "n cw-WeFyu vC MoBL Xdn g wkvcEiGvKtion BDFhrpMer pstion sbKao Q m qier LMmed HqqLFXe,XPY,J XsurkMeo ,ed "
    "nB'wH'bWVHjWFEer tQ.saefZwJtKrTlixYpMMNJtion UCAPwNHeYVjD",
]


# ---- BLEU ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hyps, tokenize, expected", [
    (SB_HYPS, None, 48.530827),  # default settings: 13a
    (SB_HYPS, "13a", 48.530827),
    (SB_HYPS, "intl", 43.91623493),
    (SB_HYPS, "none", 49.1919566),
    (["", "", ""], None, 0.0),  # empty hypotheses are scored, not removed
])
def test_bleu_matches_sacrebleu_published_values(hyps, tokenize, expected):
    result = M.bleu(hyps, SB_PER_EXAMPLE, tokenize=tokenize)
    assert abs(result.score - expected) < 1e-6
    assert result.signature.startswith("nrefs:2|case:mixed|eff:no|tok:")
    assert len(result.sentence) == 3
    assert result.sentence[0] == (pytest.approx(100.0) if hyps[0] else 0.0)


def test_bleu_picks_zh_tokenizer_for_chinese_targets():
    import sacrebleu

    hyps, refs = ["今天天气很好。", "我们去公园散步"], ["今天天气不错。", "我们去公园散步吧"]
    auto = M.bleu(hyps, refs)
    assert auto.tokenize == "zh" and "tok:zh" in auto.signature
    assert auto.score == pytest.approx(sacrebleu.BLEU(tokenize="zh").corpus_score(hyps, [refs]).score)
    # 13a would see each Chinese sentence as one or two "words": a very different number.
    assert M.bleu(hyps, refs, tokenize="13a").score != pytest.approx(auto.score)
    assert M.bleu(hyps, refs, target_lang="en").tokenize == "13a"
    assert M.bleu(["x"], ["hello"], target_lang="zh").tokenize == "zh"
    assert M.bleu(SB_HYPS, SB_PER_EXAMPLE).tokenize == "13a"


def test_sentence_bleu_matches_sacrebleu():
    import sacrebleu

    result = M.bleu(SB_HYPS, SB_PER_EXAMPLE)
    for hyp, refs, score in zip(SB_HYPS, SB_PER_EXAMPLE, result.sentence):
        assert score == pytest.approx(sacrebleu.sentence_bleu(hyp, refs).score)


def test_bleu_bad_inputs():
    with pytest.raises(WorkbenchError, match="2 predictions but 1 references"):
        M.bleu(["a", "b"], ["a"])
    with pytest.raises(WorkbenchError, match="no predictions"):
        M.bleu([], [])
    with pytest.raises(WorkbenchError, match="tokenize 'xx'"):
        M.bleu(["a"], ["a"], tokenize="xx")
    with pytest.raises(WorkbenchError, match="example 1 has no reference"):
        M.bleu(["a"], [[]])


# ---- ROUGE ---------------------------------------------------------------------------------------

def test_rouge_matches_rouge_score_published_values():
    # rouge_scorer_test.py: testRouge1 / testRouge2 / testRougeLConsecutive (F-measure, here ×100).
    assert M.rouge(["testing"], ["testing one two"]).scores["rouge1"] == pytest.approx(50.0)
    assert M.rouge(["testing one"], ["testing one two"]).scores["rouge2"] == pytest.approx(100 * 2 / 3)
    assert M.rouge(["testing one"], ["testing one two"]).scores["rougeL"] == pytest.approx(80.0)
    # testRouge1AgainstRouge155 / testRouge2… / testRougeL…: ROUGE-1.5.5 values, 5 decimals.
    per = M.rouge(RS_PREDICTIONS, RS_TARGETS).per_example
    assert [round(e["rouge1"] / 100, 5) for e in per] == [0.51163, 0.50000]
    assert [round(e["rouge2"] / 100, 5) for e in per] == [0.39024, 0.36364]
    assert [round(e["rougeL"] / 100, 5) for e in per] == [0.51163, 0.50000]
    stemmed = M.rouge(RS_PREDICTIONS, RS_TARGETS, use_stemmer=True).per_example
    assert [round(e["rouge1"] / 100, 5) for e in stemmed] == [0.51163, 0.52941]
    # The corpus number is the plain mean of the per-example F-measures.
    assert M.rouge(RS_PREDICTIONS, RS_TARGETS).scores["rouge1"] == pytest.approx((51.16279 + 50.0) / 2, abs=1e-3)


def test_rouge_english_text_uses_rouge_score_tokenizer_unchanged():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    pred, ref = "The cat sat on the mat, didn't it?", "A cat was sitting on the mat."
    ours = M.rouge([pred], [ref]).per_example[0]
    theirs = scorer.score(ref, pred)
    for t in ("rouge1", "rouge2", "rougeL"):
        assert ours[t] == pytest.approx(theirs[t].fmeasure * 100)


def test_rouge_chinese_does_not_collapse():
    from rouge_score import rouge_scorer

    pred, ref = "今天天气很好", "今天天气不错"
    # rouge-score alone drops every Chinese character: 0 whatever the overlap.
    assert rouge_scorer.RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure == 0.0
    chars = M.rouge([pred], [ref])
    assert chars.scores["rouge1"] == pytest.approx(100 * 4 / 6)  # 今 天 天 气 shared of 6 characters
    assert "character" in chars.tokenizer
    words = M.rouge([pred], [ref], cjk="jieba")
    assert 0 < words.scores["rouge1"] < 100 and "jieba" in words.tokenizer
    assert M.rouge(["完全没有关系"], [ref]).scores["rouge1"] == 0.0
    # Latin words inside Chinese text stay words.
    assert M.CJKTokenizer().tokenize("我用Python 3写代码") == ["我", "用", "python", "3", "写", "代", "码"]


def test_rouge_bad_inputs():
    with pytest.raises(WorkbenchError, match="1 predictions but 2 references"):
        M.rouge(["a"], ["a", "b"])
    with pytest.raises(WorkbenchError, match="unknown ROUGE type"):
        M.rouge(["a"], ["a"], rouge_types=["rougeX"])
    with pytest.raises(WorkbenchError, match="cjk tokenization 'words'"):
        M.rouge(["a"], ["a"], cjk="words")


# ---- SQuAD v2.0 ----------------------------------------------------------------------------------

def _squad_questions(path):
    data = json.loads(path.read_text())
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                yield para, qa


def test_squad_normalisation_and_f1_definitions():
    assert M.normalize_answer("The  Normans!") == "normans"
    assert M.normalize_answer("an apple, a pear") == "apple pear"
    assert M.qa_scores(["Normans"], "the Normans.") == (1, 1.0)
    exact, f1 = M.qa_scores(["France"], "in France")
    assert exact == 0 and f1 == pytest.approx(2 / 3)
    assert M.qa_scores(["France", "the French Republic"], "French Republic") == (1, 1.0)  # max over golds
    assert M.qa_scores([], "") == (1, 1.0)  # unanswerable: the empty answer is right
    assert M.qa_scores([], "Unanswerable.") == (1, 1.0)  # the converter's no-answer phrase
    assert M.qa_scores([], "Unanswerable.", no_answer_phrase=None) == (0, 0.0)
    assert M.qa_scores([], "France") == (0, 0.0)
    assert M.qa_scores(["France"], "") == (0, 0.0)
    assert M.qa_scores(["unanswerable"], "") == (1, 1.0)  # a demo row whose reference is the phrase


def test_squad_perfect_and_empty_predictions(shared_data):
    path = shared_data / SQUAD
    golds = M.load_squad_golds(path)
    assert len(golds) == 706 and sum(1 for a in golds.values() if a) == 386
    perfect = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "") for _, qa in _squad_questions(path)}
    scores = M.squad_v2(golds, perfect).scores
    assert scores == {"exact": 100.0, "f1": 100.0, "total": 706, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                      "HasAns_total": 386, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 320}
    empty = M.squad_v2(golds, {q: "" for q in golds}).scores
    assert empty["exact"] == pytest.approx(100 * 320 / 706) and empty["f1"] == pytest.approx(100 * 320 / 706)
    assert empty["HasAns_exact"] == 0.0 and empty["NoAns_exact"] == 100.0
    phrase = M.squad_v2(golds, {q: "unanswerable" for q in golds}).scores
    assert phrase == empty


def _seeded_predictions(path) -> dict[str, str]:
    """Seeded mix of right, empty, reformatted and random-span answers (same recipe as when the
    expected numbers below were produced with the official evaluate-v2.0.py)."""
    rng = random.Random(1)
    preds = {}
    data = json.loads(path.read_text())
    for article in data["data"]:
        for para in article["paragraphs"]:
            words = para["context"].split()
            for qa in para["qas"]:
                r = rng.random()
                if r < 0.25 and qa["answers"]:
                    preds[qa["id"]] = rng.choice(qa["answers"])["text"]
                elif r < 0.4:
                    preds[qa["id"]] = ""
                elif r < 0.5 and qa["answers"]:
                    preds[qa["id"]] = "The " + qa["answers"][0]["text"].upper() + "!!"
                else:
                    i = rng.randrange(len(words))
                    preds[qa["id"]] = " ".join(words[i:i + rng.randint(1, 6)])
    return preds


def test_squad_equals_official_script_output(shared_data):
    path = shared_data / SQUAD
    preds = _seeded_predictions(path)
    # Printed by the official SQuAD v2.0 evaluate-v2.0.py for these predictions.
    official = {"exact": 34.419263456090654, "f1": 36.124098016523845, "total": 706,
                "HasAns_exact": 30.82901554404145, "HasAns_f1": 33.947184455092824, "HasAns_total": 386,
                "NoAns_exact": 38.75, "NoAns_f1": 38.75, "NoAns_total": 320}
    scores = M.squad_v2(M.load_squad_golds(path), preds, no_answer_phrase=None).scores
    assert list(scores) == list(official)
    for key, value in official.items():
        assert scores[key] == pytest.approx(value, abs=1e-9)


def test_squad_missing_predictions_are_scored_wrong_and_named(shared_data):
    golds = M.load_squad_golds(shared_data / SQUAD)
    perfect = {q: (a[0] if a else "") for q, a in golds.items()}
    dropped = list(golds)[:3]
    partial = {q: v for q, v in perfect.items() if q not in dropped}
    partial["not-a-question"] = "x"
    result = M.squad_v2(golds, partial)
    assert result.missing == dropped and result.unknown == ["not-a-question"]
    assert result.scores["total"] == 706
    assert result.scores["exact"] == pytest.approx(100 * 703 / 706)


# ---- the score command -----------------------------------------------------------------------------

def test_score_squad_cli(cli, shared_data, tmp_path):
    path = shared_data / SQUAD
    preds = _seeded_predictions(path)
    missing = next(iter(preds))
    del preds[missing]
    pred_file = tmp_path / "preds.json"
    pred_file.write_text(json.dumps(preds))
    res = cli("score", "squad_v2", "--data", str(path), "--predictions", str(pred_file), "--no-answer-phrase", "")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact",
                         "NoAns_f1", "NoAns_total"]
    assert out["total"] == 706
    assert f"no prediction for 1 of 706 questions, scored as wrong: {missing}" in res.stderr


def test_score_bleu_and_rouge_cli(cli, tmp_path):
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("\n".join(SB_HYPS) + "\n")
    refs = []
    for k, stream in enumerate(SB_REFS):
        refs += ["--ref", str(tmp_path / f"ref{k}.txt")]
        (tmp_path / f"ref{k}.txt").write_text("\n".join(stream) + "\n")
    res = cli("score", "bleu", "--hyp", str(hyp), *refs)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bleu"] == pytest.approx(48.530827) and "tok:13a" in out["signature"]
    res = cli("score", "bleu", "--hyp", str(hyp), *refs, "--tokenize", "intl")
    assert json.loads(res.stdout)["bleu"] == pytest.approx(43.91623493)

    (tmp_path / "p.txt").write_text("\n".join(RS_PREDICTIONS) + "\n")
    (tmp_path / "t.txt").write_text("\n".join(RS_TARGETS) + "\n")
    res = cli("score", "rouge", "--hyp", str(tmp_path / "p.txt"), "--ref", str(tmp_path / "t.txt"))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rouge1"] == pytest.approx((51.16279 + 50.0) / 2, abs=1e-3) and out["n"] == 2


def test_score_cli_bad_inputs(cli, shared_data, tmp_path):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a\nb\nc\n")
    ref.write_text("a\nb\n")
    for metric in ("bleu", "rouge"):
        res = cli("score", metric, "--hyp", str(hyp), "--ref", str(ref))
        assert res.returncode == 1
        assert f"error: {hyp} has 3 lines but {ref} has 2; predictions and references must be line-aligned" in res.stderr
        assert "Traceback" not in res.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    res = cli("score", "rouge", "--hyp", str(empty), "--ref", str(ref))
    assert res.returncode == 1 and f"{empty}: holds no predictions" in res.stderr

    res = cli("score", "meteor", "--hyp", str(hyp), "--ref", str(ref))
    assert res.returncode == 2 and "invalid choice: 'meteor'" in res.stderr

    squad = str(shared_data / SQUAD)
    no_preds = tmp_path / "none.json"
    no_preds.write_text("{}")
    res = cli("score", "squad_v2", "--data", squad, "--predictions", str(no_preds))
    assert res.returncode == 1 and f"{no_preds}: holds no predictions" in res.stderr
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": "x",')
    res = cli("score", "squad_v2", "--data", squad, "--predictions", str(bad_json))
    assert res.returncode == 1 and f"{bad_json} line 1" in res.stderr and "not valid JSON" in res.stderr
    listed = tmp_path / "list.json"
    listed.write_text('["x"]')
    res = cli("score", "squad_v2", "--data", squad, "--predictions", str(listed))
    assert res.returncode == 1 and "expected an object {question_id: answer}" in res.stderr
    number = tmp_path / "number.json"
    number.write_text('{"56ddde6b9a695914005b9628": 3}')
    res = cli("score", "squad_v2", "--data", squad, "--predictions", str(number))
    assert res.returncode == 1 and "the prediction for 56ddde6b9a695914005b9628 is int, not text" in res.stderr
    res = cli("score", "squad_v2", "--data", str(hyp), "--predictions", str(no_preds))
    assert res.returncode == 1 and "not valid JSON" in res.stderr
    not_squad = tmp_path / "notsquad.json"
    not_squad.write_text('[{"question": "q"}]')
    res = cli("score", "squad_v2", "--data", str(not_squad), "--predictions", str(no_preds))
    assert res.returncode == 1 and "not a SQuAD file" in res.stderr
    no_answers = tmp_path / "noanswers.json"
    no_answers.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q1", "question": "?"}]}]}]}))
    res = cli("score", "squad_v2", "--data", str(no_answers), "--predictions", str(no_preds))
    assert res.returncode == 1 and "article 1 paragraph 1 question 1: 'answers' is missing" in res.stderr


def test_read_lines_splits_on_newlines_only(tmp_path):
    # U+2028, U+2029, U+0085, form feed and \x1c-\x1e are text inside a segment, not line ends.
    hyp = tmp_path / "hyp.txt"
    hyp.write_bytes("first\u2028still first\r\nsecond\x0cpage\u0085\u2029\x1c\x1d\x1e\nthird\n".encode("utf-8"))
    ref = tmp_path / "ref.txt"
    ref.write_bytes(b"one\ntwo\nthree")
    assert M.read_lines(hyp) == ["first\u2028still first", "second\x0cpage\u0085\u2029\x1c\x1d\x1e", "third"]
    hyps, refs = M.read_aligned(hyp, ref)  # three lines each: aligned
    assert len(hyps) == len(refs) == 3
    # One final newline adds no line; a blank line before it is kept; a lone "\r" stays inside its line.
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"a\r\n\r\nb\rc\n")
    assert M.read_lines(blank) == ["a", "", "b\rc"]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert M.read_lines(empty) == []
