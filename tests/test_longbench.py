"""``dhsa longbench`` on a tiny random model and a hand-written LongBench JSONL file."""

import json

import pytest

from dhsa.cli import main
from dhsa.eval.longbench import load_longbench, score_sample, truncate_middle

transformers = pytest.importorskip("transformers")
from test_generate import char_tokenizer, hf_greedy, save_tiny  # noqa: E402

CONTEXT = "The quick brown fox jumps over the lazy dog. The magic number is 4711. " * 3
RECORDS = [
    {
        "dataset": "qasper",
        "input": "What is the magic number?",
        "context": CONTEXT,
        "answers": ["4711"],
        "_id": "q1",
    },
    {
        "dataset": "trec",
        "input": "What kind of question is this?",
        "context": CONTEXT,
        "answers": ["number"],
        "all_classes": ["number", "place"],
        "_id": "t1",
    },
    {
        "dataset": "samsum",
        "input": "Summarize.",
        "context": CONTEXT,
        "answers": ["a fox jumps"],
        "_id": "s1",
    },
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "longbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def run_longbench(model, data, out, *extra):
    return main(
        [
            "longbench",
            "--model",
            model,
            "--data",
            str(data),
            "--out",
            str(out),
            "--methods",
            "dense,dhsa",
            "--budgets",
            "1024",
            "--max-new-tokens",
            "5",
            "--no-progress",
            *extra,
        ]
    )


def test_longbench_scores_every_sample_with_its_metric_and_resumes(tiny_llama, data, tmp_path):
    out = tmp_path / "lb.jsonl"
    assert run_longbench(tiny_llama, data, out) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    cells = [r for r in records if r["type"] == "cell"]
    samples = load_longbench(data)
    assert sorted((c["method"], c["index"]) for c in cells) == sorted(
        (m, i) for m in ("dense", "dhsa") for i in range(3)
    )
    for cell in cells:
        sample = samples[cell["index"]]
        assert cell["dataset"] == sample.dataset and cell["id"] == sample.id
        assert cell["score"] == score_sample(cell["reply"], sample)
        if cell["method"] == "dense":
            assert cell["reply"] == hf_greedy(tiny_llama, sample.prompt(), 5)
    replies = {(c["method"], c["index"]): c["reply"] for c in cells}
    assert all(replies["dhsa", i] == replies["dense", i] for i in range(3)), "budget covers all"
    summary = json.loads(out.with_suffix(".json").read_text())
    assert {(r["method"], r["dataset"], r["samples"]) for r in summary["datasets"]} == {
        (m, d, 1) for m in ("dense", "dhsa") for d in ("qasper", "samsum", "trec")
    }
    dense = [r for r in summary["datasets"] if r["method"] == "dense"]
    overall = next(r for r in summary["overall"] if r["method"] == "dense")
    assert overall["score"] == pytest.approx(sum(r["score"] for r in dense) / 3, abs=0.01)
    assert run_longbench(tiny_llama, data, out) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["type"] == "cell" for r in again) == len(cells), "recorded cells do not run again"


def test_long_prompts_lose_their_middle(tiny_llama, data, tmp_path):
    tokenizer = char_tokenizer()
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    assert truncate_middle(tokenizer, text, 20) == text[:10] + text[-10:]
    assert truncate_middle(tokenizer, text, 100) == text
    out = tmp_path / "lb.jsonl"
    assert run_longbench(tiny_llama, data, out, "--max-length", "64", "--limit", "1") == 0
    cells = [json.loads(x) for x in out.read_text().splitlines() if '"cell"' in x]
    assert len(cells) == 2 and all(c["prompt_tokens"] <= 64 + 1 for c in cells)  # + BOS


def test_longbench_refuses_bad_arguments(tiny_llama, data, tmp_path, capsys):
    out = tmp_path / "lb.jsonl"
    assert run_longbench(tiny_llama, tmp_path / "missing.jsonl", out) == 2
    assert "LongBench file not found" in capsys.readouterr().err
    assert run_longbench(tiny_llama, data, out, "--limit", "0") == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert not out.exists()
