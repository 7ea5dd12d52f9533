"""``dhsa report``: the accuracy results page (Markdown) from recorded summary JSON files."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write the accuracy page (Markdown) from niah / ruler / fidelity summaries",
        description="Renders the summary JSON files that dhsa niah, ruler and fidelity write "
        "beside their result files into one Markdown page, with the commands that made them.",
    )
    p.add_argument(
        "summaries",
        nargs="+",
        help="summary .json files or result .jsonl files, in the order to show",
    )
    p.add_argument("--out", default="benchmarks/ACCURACY.md", help="Markdown file to write")
    p.add_argument("--title", default="Accuracy on real models", help="page title")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..eval.report import render_report

    page = render_report(args.summaries, command=args.command_line, title=args.title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}")
    return 0
