"""``dhsa niah``: needle in a haystack, length x depth, per attention method and budget."""

from __future__ import annotations

from pathlib import Path

from ..cli import CommandError

DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"


def add_parser(subparsers) -> None:
    from ..eval.options import add_grid_options, add_model_options

    p = subparsers.add_parser(
        "niah",
        help="needle-in-a-haystack accuracy of each attention method",
        description="Hides a magic-number needle at each depth of an essay haystack of each "
        "length, asks for it with greedy decoding and scores whether the reply contains it. "
        "Writes a resumable JSONL result file, a summary JSON and a length x depth heatmap PNG "
        "per method and budget.",
    )
    add_model_options(p, "benchmarks/accuracy/niah.jsonl")
    add_grid_options(p, lengths="1k,2k,4k,8k", samples=5)
    p.add_argument(
        "--depths",
        default=DEFAULT_DEPTHS,
        help="comma-separated needle depths in [0, 1] (default %(default)s)",
    )
    p.set_defaults(run=run)


def parse_depths(text: str) -> list[float]:
    try:
        depths = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as error:
        raise CommandError(f"--depths must be numbers in [0, 1], got {text!r}") from error
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise CommandError(f"--depths must be numbers in [0, 1], got {text!r}")
    return depths


def run(args) -> int:
    from ..eval.niah import niah_cell_sample
    from ..eval.session import run_session
    from ..eval.summary import SCORE_COLUMNS, format_table, write_niah_outputs

    store = run_session(
        args,
        kind="niah",
        item_field="depth",
        items=parse_depths(args.depths),
        sample_for=niah_cell_sample,
    )
    document, paths = write_niah_outputs(store, Path(args.out))
    print(format_table(document["by_length"], SCORE_COLUMNS))
    print("\n".join(f"wrote {p}" for p in paths))
    return 0
