"""``dhsa ruler``: RULER-style synthetic tasks per attention method and budget."""

from __future__ import annotations

from pathlib import Path

from ..cli import CommandError


def add_parser(subparsers) -> None:
    from ..eval.options import add_grid_options, add_model_options

    p = subparsers.add_parser(
        "ruler",
        help="RULER-style task accuracy of each attention method",
        description="Generates RULER-style tasks (needle retrieval variants, variable tracking, "
        "common- and frequent-word extraction) reproducibly from a seed, answers them with "
        "greedy decoding and scores the fraction of expected strings in each reply. Writes a "
        "resumable JSONL result file and a summary JSON with per-task and mean scores.",
    )
    add_model_options(p, "benchmarks/accuracy/ruler.jsonl")
    add_grid_options(p, lengths="4k", samples=5)
    p.add_argument("--length", dest="lengths", help="alias of --lengths")
    p.add_argument("--tasks", default="all", help="comma-separated tasks or 'all'")
    p.set_defaults(run=run)


def parse_tasks(text: str) -> list[str]:
    from ..eval.ruler import TASKS

    if text == "all":
        return list(TASKS)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise CommandError(f"unknown tasks {unknown or text!r}: allowed 'all' or {sorted(TASKS)}")
    return tasks


def run(args) -> int:
    from ..eval.ruler import make_sample
    from ..eval.session import run_session
    from ..eval.summary import SCORE_COLUMNS, format_table, write_ruler_outputs

    store = run_session(
        args,
        kind="ruler",
        item_field="task",
        items=parse_tasks(args.tasks),
        sample_for=lambda length, index, task, count, essays, seed: make_sample(
            task, length, index, count, essays, seed
        ),
    )
    document, paths = write_ruler_outputs(store, Path(args.out))
    print(
        format_table(document["tasks"], SCORE_COLUMNS[:4] + [("task", "task")] + SCORE_COLUMNS[4:])
    )
    print()
    print(format_table(document["by_length"], SCORE_COLUMNS))
    print("\n".join(f"wrote {p}" for p in paths))
    return 0
