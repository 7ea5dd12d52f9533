"""The command line starts fast: parsing and --help never load torch."""

import subprocess
import sys

import pytest

COMMANDS = ["bench", "generate", "niah", "ruler", "fidelity", "report", "train-predictor", "models"]


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS], ids=str)
def test_help_does_not_import_torch(argv):
    probe = (
        "import sys\n"
        "from dhsa.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stdout[-500:]
