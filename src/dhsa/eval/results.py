"""Resumable result files: one JSON record per line, appended and flushed as each cell finishes.

A file holds ``{"type": "run", ...}`` lines (one per invocation: command, device, date) and
``{"type": "cell", ...}`` lines (one per finished evaluation). A killed run loses at most the cell
in flight; a rerun with the same file skips every cell already recorded.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch


def describe_device(device: torch.device | str) -> str:
    """A readable name of the device results were measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results (tokenizer conversion, kernels)."""
    from importlib import metadata

    versions = {"torch": torch.__version__}
    for name in ("transformers", "triton"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    """Cells keyed by ``key_fields``, kept in the JSONL file at ``path``.

    A truncated last line (the process died mid-write) is ignored, so the cell runs again.
    """

    def __init__(self, path: str | Path, key_fields: Sequence[str]):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.runs: list[dict] = []
        self.cells: list[dict] = []
        self._done: set[tuple] = set()
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("type") == "run":
                    self.runs.append(record)
                elif record.get("type") == "cell":
                    self.cells.append(record)
                    self._done.add(self.key(record))

    def key(self, cell: dict) -> tuple:
        return tuple(cell.get(name) for name in self.key_fields)

    def done(self, cell: dict) -> bool:
        """Whether a cell with the same key values is already recorded."""
        return self.key(cell) in self._done

    def _append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def start_run(self, **fields) -> dict:
        """Record an invocation (command, device, model, ...) with the current date and the
        library versions."""
        record = {"type": "run", "date": now(), "versions": library_versions(), **fields}
        self._append(record)
        self.runs.append(record)
        return record

    def add(self, cell: dict) -> None:
        record = {"type": "cell", **cell}
        self._append(record)
        self.cells.append(record)
        self._done.add(self.key(record))


def _sort_key(values: tuple) -> tuple:
    """Numbers numerically, then everything else as text (None last)."""
    return tuple(
        (0, v, "") if isinstance(v, (int, float)) else (1, 0, "" if v is None else str(v))
        for v in values
    )


def mean_by(cells: Iterable[dict], fields: Sequence[str], value: str = "score") -> list[dict]:
    """Mean of ``value`` over cells sharing ``fields``: ``[{**fields, value, "samples"}]``."""
    groups: dict[tuple, list[float]] = {}
    for cell in cells:
        groups.setdefault(tuple(cell.get(f) for f in fields), []).append(float(cell[value]))
    return [
        {**dict(zip(fields, key, strict=False)), value: sum(vs) / len(vs), "samples": len(vs)}
        for key, vs in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))
    ]


def write_json(path: str | Path, document: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path
