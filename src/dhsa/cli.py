"""The ``dhsa`` command line: one subcommand per module in :mod:`dhsa.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys

from .models import FetchError

COMMAND_MODULES = [
    "dhsa.commands.bench",
    "dhsa.commands.models",
    "dhsa.commands.niah",
    "dhsa.commands.ruler",
    "dhsa.commands.fidelity",
    "dhsa.commands.report",
    "dhsa.commands.generate",
    "dhsa.commands.train_predictor",
]


class CommandError(Exception):
    """A problem the user can fix (bad argument, missing file): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dhsa", description="Dynamic Hierarchical Sparse Attention tools"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "dhsa " + " ".join(shlex.quote(a) for a in argv)
    if getattr(args, "no_progress", False):
        # Read when tqdm and huggingface_hub are first imported (after parsing: nothing heavy is
        # imported before), so the bars of transformers' GGUF conversion and of downloads, which
        # no option reaches, stay hidden too.
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except (CommandError, ValueError, TypeError, FileNotFoundError, FetchError) as error:
        print(f"dhsa {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dhsa {args.command}: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
