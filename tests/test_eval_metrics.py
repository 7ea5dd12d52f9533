"""Answer scorers on known cases, and the LongBench loader on small hand-written files."""

import json

import pytest

from dhsa.eval.longbench import load_longbench, score_dataset, score_sample
from dhsa.eval.metrics import (
    classification_accuracy,
    code_similarity,
    edit_similarity,
    lcs_length,
    normalize_answer,
    qa_f1,
    rouge_l,
    string_match_all,
)


def test_string_match_all_fraction_case_insensitive():
    assert string_match_all("The numbers are 123 and ABC-9.", ["123", "abc-9"]) == 1.0
    assert string_match_all("only 123 here", ["123", "456", "789", "000"]) == 0.25
    assert string_match_all("", ["1"]) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])


def test_normalize_and_qa_f1():
    assert normalize_answer("The  Eiffel, Tower!") == "eiffel tower"
    assert qa_f1("the Eiffel Tower", ["Eiffel Tower"]) == 1.0
    # prediction "paris france" vs "paris": precision 1/2, recall 1 -> F1 2/3
    assert qa_f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)
    assert qa_f1("Paris, France", ["London", "France"]) == pytest.approx(2 / 3)
    assert qa_f1("Berlin", ["Paris"]) == 0.0


def test_rouge_l_against_lcs():
    assert lcs_length("a b c d e".split(), "a c e f".split()) == 3
    # pred 5 tokens, ref 4 tokens, LCS 3: P 3/5, R 3/4
    expected = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    assert rouge_l(
        "police killed the gunman quickly", ["police kill gunman quickly"]
    ) == pytest.approx(2 * (3 / 4) * (3 / 4) / (3 / 4 + 3 / 4))
    assert rouge_l("x1 b x2 d e", ["b d e q"]) == pytest.approx(expected)
    assert rouge_l("", ["anything"]) == 0.0


def test_classification_accuracy_longbench_rule():
    classes = ["Location", "Human being", "Entity", "Description and abstract concept"]
    assert classification_accuracy("Location", ["Location"], classes) == 1.0
    assert classification_accuracy("Location or Entity", ["Location"], classes) == 0.5
    assert classification_accuracy("Entity", ["Location"], classes) == 0.0
    # "Human" alone is no class; the longer class containing a found one wins.
    assert classification_accuracy("Human being", ["Human being"], classes) == 1.0


def test_edit_and_code_similarity():
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    reply = "```python\n# the next line\nreturn x + 1\nmore"
    assert code_similarity(reply, ["return x + 1"]) == 1.0
    assert code_similarity("retrn x", ["return x"]) == pytest.approx(1 - 1 / 8)


def _write(tmp_path, records):
    path = tmp_path / "lb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def test_longbench_loader_and_scores(tmp_path):
    records = [
        {
            "input": "Who?",
            "context": "Ann met Bob.",
            "answers": ["Ann"],
            "dataset": "hotpotqa",
            "_id": "1",
        },
        {
            "input": "Sum?",
            "context": "long report",
            "answers": ["a short summary"],
            "dataset": "gov_report",
        },
        {
            "input": "Q",
            "context": "c",
            "answers": ["Location"],
            "dataset": "trec",
            "all_classes": ["Location", "Entity"],
        },
        {"input": "", "context": "def f():", "answers": ["return 1"], "dataset": "lcc"},
    ]
    samples = load_longbench(_write(tmp_path, records))
    assert [s.dataset for s in samples] == ["hotpotqa", "gov_report", "trec", "lcc"]
    assert "Ann met Bob." in samples[0].prompt() and "Who?" in samples[0].prompt()
    assert score_sample("Ann", samples[0]) == 1.0
    # articles dropped: "summary" vs "short summary", P 1, R 1/2
    assert score_sample("a summary", samples[1]) == pytest.approx(2 / 3)
    # trec scores only the first line of the reply
    assert score_sample("Location\nEntity", samples[2]) == 1.0
    assert score_sample("return 1", samples[3]) == 1.0
    scores = score_dataset(["Bob", "a short summary", "Entity", "return 1"], samples)
    assert scores["hotpotqa"] == {"score": 0.0, "samples": 1}
    assert scores["gov_report"]["score"] == pytest.approx(100.0)
    assert scores["trec"]["score"] == 0.0


def test_longbench_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_longbench(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*lacks fields"):
        load_longbench(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_longbench(bad)
    path = _write(tmp_path, [{"input": "q", "context": "c", "answers": ["a"], "dataset": "zzz"}])
    with pytest.raises(ValueError, match="not supported"):
        load_longbench(path)
    path = _write(tmp_path, [{"input": "q", "context": "c", "answers": ["a"], "dataset": "trec"}])
    with pytest.raises(ValueError, match="all_classes"):
        load_longbench(path)
