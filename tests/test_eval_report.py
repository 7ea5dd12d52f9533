"""``dhsa report``: the accuracy page rendered from summary documents built from known cells."""

import json

from dhsa.cli import main
from dhsa.eval.fidelity import fidelity_summary
from dhsa.eval.results import ResultStore
from dhsa.eval.summary import niah_summary, ruler_summary


def store_with(path, key, runs, cells):
    store = ResultStore(path, key)
    for run in runs:
        store.start_run(**run)
    for cell in cells:
        store.add(cell)
    return store


def write(path, document):
    path.write_text(json.dumps(document))
    return path


def test_report_tables_hold_the_recorded_scores(tmp_path):
    run = {"kind": "niah", "command": "dhsa niah --model m", "device": "cpu"}
    niah = store_with(
        tmp_path / "n.jsonl",
        ["model", "method", "budget", "length", "depth", "i"],
        [run, run],
        [
            {
                "model": "m",
                "method": "dense",
                "budget": None,
                "length": 4096,
                "depth": 0.5,
                "i": 0,
                "score": 1.0,
            },
            {
                "model": "m",
                "method": "dense",
                "budget": None,
                "length": 4096,
                "depth": 0.0,
                "i": 0,
                "score": 0.0,
            },
            {
                "model": "m",
                "method": "dhsa",
                "budget": 1024,
                "length": 4096,
                "depth": 0.5,
                "i": 0,
                "score": 1.0,
            },
            {
                "model": "m",
                "method": "dhsa",
                "budget": 1024,
                "length": 8192,
                "depth": 0.5,
                "i": 0,
                "score": 0.25,
            },
        ],
    )
    ruler = store_with(
        tmp_path / "r.jsonl",
        ["model", "method", "budget", "length", "task"],
        [{"kind": "ruler", "command": "dhsa ruler", "device": "cuda"}],
        [
            {
                "model": "m",
                "method": "dhsa",
                "budget": 2048,
                "length": 4096,
                "task": "niah_single_1",
                "score": 0.5,
            },
            {
                "model": "m",
                "method": "dhsa",
                "budget": 2048,
                "length": 4096,
                "task": "vt",
                "score": 1.0,
            },
        ],
    )
    fidelity = store_with(
        tmp_path / "f.jsonl",
        ["model", "method", "budget", "length", "layer"],
        [],
        [
            {
                "model": "m",
                "method": "dhsa",
                "budget": 1024,
                "length": 4096,
                "layer": layer,
                "recall": recall,
                "output_error": 0.1,
                "density": 0.25,
            }
            for layer, recall in ((0, 0.9), (1, 0.7))
        ],
    )
    paths = [
        write(tmp_path / "n.json", niah_summary(niah)),
        write(tmp_path / "r.json", ruler_summary(ruler)),
        write(tmp_path / "f.json", fidelity_summary(fidelity)),
    ]
    out = tmp_path / "ACCURACY.md"
    assert main(["report", *map(str, paths), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("`dhsa niah --model m` on cpu") == 1, "repeated runs are listed once"
    assert "| m | dense | 50.0 (2) | - | 50.0 |" in page
    assert "| m | dhsa@1024 | 100.0 (1) | 25.0 (1) | 62.5 |" in page
    assert "| m | dhsa@2048 | 75.0 (2) | 75.0 |" in page
    assert "| niah_single_1 | vt |" in page and "| m | dhsa@2048 | 50.0 (1) | 100.0 (1) |" in page
    assert "| m | 4096 | 1024 | dhsa | 0.8000 | 0.1000 | 0.2500 | 1 | 0.7000 |" in page
    assert "## Needle in a haystack: m" in page and "## RULER-style tasks: m" in page


def test_report_rejects_files_that_are_not_summaries(tmp_path, capsys):
    bad = write(tmp_path / "x.json", {"records": []})
    assert main(["report", str(bad), "--out", str(tmp_path / "a.md")]) == 2
    assert "not a summary" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "a.md")]) == 2
    assert "not found" in capsys.readouterr().err


def test_report_summarizes_result_files_of_unfinished_runs(tmp_path):
    run = {"kind": "ruler", "command": "dhsa ruler --model m", "device": "cpu"}
    store_with(
        tmp_path / "r.jsonl",
        ["model", "method", "budget", "length", "task"],
        [run],
        [
            {
                "model": "m",
                "method": "dense",
                "budget": None,
                "length": 2048,
                "task": "vt",
                "score": 0.5,
            },
        ],
    )
    with (tmp_path / "r.jsonl").open("a") as f:
        f.write('{"type": "cell", "model": "m", "method": "dense", "bud')  # killed mid-write
    out = tmp_path / "a.md"
    assert main(["report", str(tmp_path / "r.jsonl"), "--out", str(out)]) == 0
    assert "| m | dense | 50.0 (1) | 50.0 |" in out.read_text()
    store_with(tmp_path / "empty.jsonl", ["model"], [run], [])
    assert main(["report", str(tmp_path / "empty.jsonl"), "--out", str(out)]) == 2


def test_report_lists_recall_per_selective_layer_and_marks_the_best(tmp_path):
    cells = [
        {
            "model": "m",
            "method": method,
            "budget": 1024,
            "length": 4096,
            "layer": layer,
            "recall": recall,
            "output_error": 0.1,
            "density": density,
        }
        for layer, density, recalls in (
            (0, 1.0, (1.0, 1.0)),
            (1, 0.25, (0.6, 0.7)),
            (2, 0.25, (0.9, 0.8)),
        )
        for method, recall in zip(("dhsa", "block_sparse"), recalls, strict=False)
    ]
    store = store_with(
        tmp_path / "f.jsonl", ["model", "method", "budget", "length", "layer"], [], cells
    )
    out = tmp_path / "a.md"
    path = write(tmp_path / "f.json", fidelity_summary(store))
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    assert "| model | length | budget | layer | block_sparse | dhsa |" in page
    assert "| m | 4096 | 1024 | 1 | **0.700** | 0.600 |" in page
    assert "| m | 4096 | 1024 | 2 | 0.800 | **0.900** |" in page
    assert "| m | 4096 | 1024 | 0 |" not in page, "a layer that keeps every key is left out"
