"""Summary documents of recorded cells: NIAH and RULER scores per contender, JSON and heatmaps.

Scores are reported as percentages (mean string-match score x 100). RULER's mean at a length is
the mean of the per-task means, as RULER reports it.
"""

from __future__ import annotations

import re
from pathlib import Path

from .results import ResultStore, mean_by, write_json


def _percent(rows: list[dict]) -> list[dict]:
    return [dict(r, score=round(100.0 * r["score"], 2)) for r in rows]


def contender_name(method: str, budget: int | None) -> str:
    return method if budget is None else f"{method}@{budget}"


def niah_summary(store: ResultStore, kind: str = "niah") -> dict:
    """Per contender: score per (length, depth), per length, and overall."""
    cells = store.cells
    return {
        "kind": kind,
        "runs": store.runs,
        "cells": _percent(mean_by(cells, ["model", "method", "budget", "length", "depth"])),
        "by_length": _percent(mean_by(cells, ["model", "method", "budget", "length"])),
        "overall": _percent(mean_by(cells, ["model", "method", "budget"])),
    }


def ruler_summary(store: ResultStore) -> dict:
    """Per contender: score per (length, task), the task mean per length, and overall."""
    tasks = mean_by(store.cells, ["model", "method", "budget", "length", "task"])
    by_length = mean_by(tasks, ["model", "method", "budget", "length"])
    return {
        "kind": "ruler",
        "runs": store.runs,
        "tasks": _percent(tasks),
        "by_length": _percent(by_length),
        "overall": _percent(mean_by(by_length, ["model", "method", "budget"])),
    }


def longbench_summary(store: ResultStore) -> dict:
    """Per contender: score per data set (mean over its samples) and overall (mean over the data
    sets, as LongBench averages)."""
    datasets = mean_by(store.cells, ["model", "method", "budget", "dataset"])
    return {
        "kind": "longbench",
        "runs": store.runs,
        "datasets": _percent(datasets),
        "overall": _percent(mean_by(datasets, ["model", "method", "budget"])),
    }


def write_ruler_outputs(store: ResultStore, out: Path) -> tuple[dict, list[Path]]:
    """The summary document, written as JSON beside ``out``."""
    document = ruler_summary(store)
    return document, [write_json(out.with_suffix(".json"), document)]


def write_niah_outputs(store: ResultStore, out: Path) -> tuple[dict, list[Path]]:
    """The summary document, written as JSON beside ``out``, and one length x depth heatmap PNG
    per contender (skipped without matplotlib)."""
    document = niah_summary(store)
    paths = [write_json(out.with_suffix(".json"), document)]
    try:
        from ..plots import plot_heatmap
    except ImportError:
        return document, paths
    contenders = {(r["method"], r["budget"]) for r in document["cells"]}
    for method, budget in sorted(contenders, key=lambda c: (c[0], c[1] or 0)):
        rows = [r for r in document["cells"] if (r["method"], r["budget"]) == (method, budget)]
        name = contender_name(method, budget)
        overall = next(
            r["score"]
            for r in document["overall"]
            if (r["method"], r["budget"]) == (method, budget)
        )
        paths.append(
            plot_heatmap(
                rows,
                x="length",
                y="depth",
                value="score",
                vmin=0,
                vmax=100,
                path=out.with_name(f"{out.stem}-{re.sub(r'[^A-Za-z0-9_.]+', '-', name)}.png"),
                title=f"NIAH {rows[0]['model']} {name}: {overall:.1f}",
            )
        )
    return document, paths


SCORE_COLUMNS = [
    ("model", "model"),
    ("method", "method"),
    ("budget", "budget"),
    ("length", "length"),
    ("score", "score %"),
    ("samples", "n"),
]


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``(field, header)`` columns; floats to two decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return "-" if value is None else str(value)

    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(r.get(f)) for f, _ in columns) + " |" for r in rows]
    return "\n".join(lines)
