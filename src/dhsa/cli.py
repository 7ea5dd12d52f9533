"""The ``dhsa`` command line: one subcommand per module in :mod:`dhsa.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import shlex
import signal
import socket
import sys
import threading

from .models import FetchError

COMMAND_MODULES = [
    "dhsa.commands.bench",
    "dhsa.commands.models",
    "dhsa.commands.niah",
    "dhsa.commands.ruler",
    "dhsa.commands.longbench",
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


@contextlib.contextmanager
def second_interrupt_stops_at_once(command: str):
    """Ctrl-C handling for long runs: the first Ctrl-C stops the command at its next Python step
    (results already written are kept); a second one ends the process at once.

    Python acts on Ctrl-C only between bytecodes, so it waits for the native operation under way,
    and one attention call over a long prompt on the CPU can take minutes. The signal's C handler
    also writes to a wakeup socket, read by a watcher thread that runs while that operation holds
    no interpreter lock. Result files are appended a record per line and a partial last line is
    skipped when read, so stopping at once loses at most the cell in progress.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        received = 0
        while data := reader.recv(64):
            received += data.count(signal.SIGINT)
            if received == 1:
                print(
                    f"dhsa {command}: interrupted, stopping after the current step "
                    "(Ctrl-C again stops at once)",
                    file=sys.stderr,
                    flush=True,
                )
            elif received > 1:
                print(
                    f"dhsa {command}: stopped at once; results written so far are kept",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(130)

    watcher = threading.Thread(target=watch, name="dhsa-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        writer.close()
        watcher.join()
        reader.close()


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
    # Commands that start subprocesses (models fetch runs pip) keep the usual Ctrl-C: a blocked
    # SIGINT would be inherited by the child.
    hard_stop = getattr(args, "hard_stop", True)
    interrupts = (
        second_interrupt_stops_at_once(args.command) if hard_stop else contextlib.nullcontext()
    )
    try:
        with interrupts:
            return int(args.run(args) or 0)
    except (CommandError, ValueError, TypeError, FileNotFoundError, FetchError) as error:
        print(f"dhsa {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dhsa {args.command}: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
