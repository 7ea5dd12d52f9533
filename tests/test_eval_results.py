"""Resumable result files and their summaries."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from dhsa.eval.results import ResultStore, mean_by  # noqa: E402
from dhsa.eval.summary import niah_summary, ruler_summary  # noqa: E402

KEY = ("model", "length", "depth", "method", "budget", "index")


def test_store_resumes_and_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path, KEY)
    store.start_run(command="dhsa niah --model m", device="cpu")
    cell = {
        "model": "m",
        "length": 1024,
        "depth": 0.5,
        "method": "dhsa",
        "budget": 1024,
        "index": 0,
        "score": 1.0,
    }
    store.add(cell)
    with path.open("a") as f:
        f.write('{"type": "cell", "model": "m", "length": 2048')  # killed mid-write
    again = ResultStore(path, KEY)
    assert again.done(cell)
    assert not again.done({**cell, "index": 1})
    assert not again.done({**cell, "budget": 2048})
    assert len(again.cells) == 1 and again.runs[0]["command"] == "dhsa niah --model m"
    assert "date" in again.runs[0]
    versions = again.runs[0]["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__, "the tokenizer conversion varies"


def test_mean_by_sorts_numbers_numerically():
    cells = [
        {"length": n, "score": s} for n, s in [(512, 1.0), (8192, 0.0), (512, 0.0), (1024, 1.0)]
    ]
    rows = mean_by(cells, ["length"])
    assert [r["length"] for r in rows] == [512, 1024, 8192]
    assert rows[0] == {"length": 512, "score": 0.5, "samples": 2}


def test_ruler_mean_is_mean_of_task_means(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl", ("task", "index"))
    base = {"model": "m", "method": "dense", "budget": None, "length": 4096}
    for index, score in enumerate([1.0, 1.0, 1.0, 0.0]):
        store.add({**base, "task": "a", "index": index, "score": score})
    store.add({**base, "task": "b", "index": 0, "score": 0.0})
    document = ruler_summary(store)
    assert {r["task"]: r["score"] for r in document["tasks"]} == {"a": 75.0, "b": 0.0}
    assert document["by_length"][0]["score"] == 37.5
    json.dumps(document)


def test_niah_summary_groups(tmp_path):
    store = ResultStore(tmp_path / "n.jsonl", KEY)
    for depth, score in [(0.0, 1.0), (1.0, 0.0)]:
        store.add(
            {
                "model": "m",
                "method": "dhsa",
                "budget": 1024,
                "length": 2048,
                "depth": depth,
                "index": 0,
                "score": score,
            }
        )
    document = niah_summary(store)
    assert [r["score"] for r in document["cells"]] == [100.0, 0.0]
    assert document["overall"][0]["score"] == 50.0


def test_niah_heatmaps_of_every_contender_get_plain_file_names(tmp_path):
    pytest.importorskip("matplotlib")
    from dhsa.eval.summary import write_niah_outputs

    store = ResultStore(tmp_path / "n.jsonl", KEY)
    for method, budget in [
        ("dense", None),
        ("dhsa", 1024),
        ("dhsa/per-layer", 1024),
        ("dhsa:learned", 2048),
    ]:
        store.add(
            {
                "model": "m",
                "method": method,
                "budget": budget,
                "length": 2048,
                "depth": 0.5,
                "index": 0,
                "score": 1.0,
            }
        )
    _, paths = write_niah_outputs(store, tmp_path / "n.jsonl")
    names = sorted(p.name for p in paths)
    assert names == [
        "n-dense.png",
        "n-dhsa-1024.png",
        "n-dhsa-learned-2048.png",
        "n-dhsa-per-layer-1024.png",
        "n.json",
    ]
    assert all(p.is_file() for p in paths)


def test_grid_resumes_and_keeps_chunkers_apart(tmp_path, monkeypatch):
    from dhsa import DHSAConfig
    from dhsa.eval import runner
    from dhsa.eval.generation import Contender

    def fake_answer(model, tokenizer, sample, contender, base):
        return {"method": contender.method, "budget": contender.budget, "score": 1.0}

    monkeypatch.setattr(runner, "answer_cell", fake_answer)
    store = ResultStore(tmp_path / "r.jsonl", runner.cell_key("task"))
    grid = dict(
        model_name="m",
        item_field="task",
        items=["vt"],
        lengths=[100],
        samples=2,
        contenders=[Contender("dense", None), Contender("dhsa", 1024)],
        make_sample=lambda length, index, item: None,
        progress=False,
    )
    assert runner.run_grid(store, None, None, base_config=DHSAConfig(), **grid) == 4
    assert runner.run_grid(store, None, None, base_config=DHSAConfig(), **grid) == 0
    fixed = DHSAConfig(chunker="fixed")
    assert runner.run_grid(store, None, None, base_config=fixed, **grid) == 2
    assert sorted(c["method"] for c in store.cells) == [
        "dense",
        "dense",
        "dhsa",
        "dhsa",
        "dhsa:fixed",
        "dhsa:fixed",
    ]
    assert (
        runner.run_grid(store, None, None, base_config=DHSAConfig(sparse_decode=False), **grid) == 2
    ), "dense decode is a contender of its own, dense is not"
    assert [c["method"] for c in store.cells].count("dhsa/dense-decode") == 2
