"""The accuracy results page: Markdown built from the summary JSON files of niah, ruler, fidelity.

Each summary document (written beside its result file by ``dhsa niah``, ``dhsa ruler`` or
``dhsa fidelity``) becomes one section: the commands and devices of its runs, then the scores in
tables, one row per contender (``method@budget``). Nothing is computed here that the summaries do
not hold, so the page can be regenerated at any time from the recorded files.
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import ResultStore
from .summary import contender_name, format_table

KINDS = ("niah", "ruler", "fidelity")


def load_summary(path: str | Path) -> dict:
    """A summary document, read from a summary ``.json`` or built from a result ``.jsonl`` (a run
    stopped midway has no summary yet: its recorded cells are summarized as they stand).
    ValueError if the file is neither, or of no kind in :data:`KINDS`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"summary file not found: {path}")
    if path.suffix == ".jsonl":
        return _summarize_results(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(document, dict) or document.get("kind") not in KINDS:
        raise ValueError(
            f"{path} is not a summary of {KINDS} (the .json written beside a result file, or "
            "the .jsonl result file itself)"
        )
    return document


def _summarize_results(path: Path) -> dict:
    from .fidelity import fidelity_summary
    from .summary import niah_summary, ruler_summary

    store = ResultStore(path, ())
    kinds = {run.get("kind") for run in store.runs}
    if len(kinds) != 1 or not kinds <= set(KINDS) or not store.cells:
        raise ValueError(
            f"{path} is not a result file of one of {KINDS} with recorded cells (kinds {kinds})"
        )
    kind = kinds.pop()
    if kind == "fidelity":
        return fidelity_summary(store)
    return niah_summary(store) if kind == "niah" else ruler_summary(store)


def _runs(document: dict) -> str:
    seen, lines = set(), []
    for run in document.get("runs", []):
        key = (run.get("command"), run.get("device"))
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"- `{run.get('command')}` on {run.get('device')}, {run.get('date')}")
    return "\n".join(lines) if lines else "- (no run recorded)"


def _pivot(rows: list[dict], column: str, value: str = "score") -> tuple[list[dict], list]:
    """One row per (model, contender) with one field per distinct ``column`` value."""
    columns = sorted({r[column] for r in rows}, key=lambda c: (str(type(c)), c))
    table: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], contender_name(r["method"], r.get("budget")))
        entry = table.setdefault(key, {"model": key[0], "contender": key[1]})
        entry[f"{column}={r[column]}"] = f"{r[value]:.1f} ({r['samples']})"
    return list(table.values()), columns


def _score_section(document: dict, column: str, title: str) -> str:
    rows, columns = _pivot(document["by_length"], column)
    overall = {
        (r["model"], contender_name(r["method"], r.get("budget"))): r for r in document["overall"]
    }
    for row in rows:
        row["overall"] = f"{overall[(row['model'], row['contender'])]['score']:.1f}"
    header = [("model", "model"), ("contender", "contender")]
    header += [(f"{column}={c}", f"{c} tokens") for c in columns] + [("overall", "mean")]
    note = "Score %; in brackets, how many results each figure averages."
    return f"{title}\n\n{format_table(rows, header)}\n\n{note}"


def _models(document: dict, rows: str) -> str:
    return ", ".join(sorted({str(r["model"]) for r in document[rows]}))


def niah_section(document: dict) -> str:
    return "\n\n".join(
        [
            f"## Needle in a haystack: {_models(document, 'overall')}",
            _runs(document),
            _score_section(document, "length", "By length, all depths:"),
        ]
    )


def ruler_section(document: dict) -> str:
    parts = [
        f"## RULER-style tasks: {_models(document, 'overall')}",
        _runs(document),
        _score_section(document, "length", "Mean over tasks, by length:"),
    ]
    for length in sorted({r["length"] for r in document["tasks"]}):
        rows, tasks = _pivot([r for r in document["tasks"] if r["length"] == length], "task")
        header = [("model", "model"), ("contender", "contender")]
        header += [(f"task={t}", t) for t in tasks]
        parts.append(f"Per task at {length} tokens:\n\n{format_table(rows, header)}")
    return "\n\n".join(parts)


def fidelity_section(document: dict) -> str:
    columns = [
        ("model", "model"),
        ("length", "length"),
        ("budget", "budget"),
        ("method", "method"),
        ("recall", "attention recall"),
        ("output_error", "rel. output error"),
        ("density", "density"),
        ("worst_layer", "worst layer"),
        ("worst_recall", "its recall"),
    ]
    if any("top32" in r for r in document["overall"]):
        columns.insert(7, ("top32", "top-32 key recall"))
    rows = sorted(
        document["overall"], key=lambda r: (r["model"], r["length"], r["budget"], -r["recall"])
    )
    # Methods often differ in the third decimal: four are shown.
    rows = [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return "\n\n".join(
        [
            f"## Attention fidelity on real activations: {_models(document, 'overall')}",
            _runs(document),
            "Mean over layers of the dense softmax mass each selection keeps (recall), the "
            "relative "
            "output error against dense attention, and the fraction of the causal keys kept:",
            format_table(rows, columns),
            "Recall per layer, in the layers where the selection drops keys (density below 0.99; "
            "a sliding-window layer keeps its whole window under every method):",
            _selective_layers(document["layers"]),
        ]
        + _top32_layers(document["layers"])
    )


def _top32_layers(layers: list[dict]) -> list[str]:
    """The per-layer top-32 key recall table, when the records hold it."""
    if not any("top32" in r for r in layers):
        return []
    return [
        "Top-32 key recall per layer (per query head, the share of each query's 32 largest "
        "dense logits that the selection keeps, mean over heads; `oracle_topk` and "
        "`vertical_slash` are the reference rows):",
        _selective_layers(layers, "top32"),
    ]


def _selective_layers(layers: list[dict], value: str = "recall") -> str:
    """One row per (model, length, budget, layer) whose density is below 0.99, one ``value``
    column per method; the method with the highest value is marked in bold."""
    methods = sorted({r["method"] for r in layers if value in r})
    table: dict[tuple, dict] = {}
    for r in layers:
        if r["density"] >= 0.99 or value not in r:
            continue
        key = (r["model"], r["length"], r["budget"], r["layer"])
        table.setdefault(key, dict(zip(("model", "length", "budget", "layer"), key, strict=False)))
        table[key][r["method"]] = r[value]
    rows = []
    for key in sorted(table):
        row = table[key]
        best = max((row[m] for m in methods if m in row), default=None)
        rows.append(
            {
                k: (f"**{v:.3f}**" if v == best else f"{v:.3f}") if k in methods else v
                for k, v in row.items()
            }
        )
    columns = [(c, c) for c in ("model", "length", "budget", "layer")] + [(m, m) for m in methods]
    return format_table(rows, columns) if rows else "(none)"


SECTIONS = {"niah": niah_section, "ruler": ruler_section, "fidelity": fidelity_section}


def render_report(paths: list[str | Path], *, command: str, title: str) -> str:
    """The Markdown page for the summary files ``paths``, in the order given."""
    if not paths:
        raise ValueError("no summary files given")
    parts = [
        f"# {title}",
        f"Generated by `{command}` from:\n\n" + "\n".join(f"- `{p}`" for p in paths),
    ]
    for path in paths:
        document = load_summary(path)
        parts.append(f"<!-- {path} -->\n" + SECTIONS[document["kind"]](document))
    return "\n\n".join(parts) + "\n"
