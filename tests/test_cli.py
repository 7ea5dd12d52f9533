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


WATCHED = """
import sys, time
import torch
from dhsa.cli import second_interrupt_stops_at_once
torch.set_num_threads(1)
big = torch.ones(5000, 5000)
with second_interrupt_stops_at_once("test"):
    try:
        print("ready", flush=True)
        {body}
    except KeyboardInterrupt:
        print("caught", flush=True)
        sys.exit(7)
"""


def _start(body):
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-c", WATCHED.format(body=body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_second_ctrl_c_stops_a_long_native_call_at_once():
    import signal
    import time

    # One native call of seconds (Python checks for Ctrl-C only when it returns), as one
    # attention call over a long prompt.
    process = _start("big @ big")
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert process.poll() is None, "the first Ctrl-C waits for the current step"
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 130
    assert time.monotonic() - start < 5
    err = process.stderr.read()
    assert "stopping after the current step (Ctrl-C again stops at once)" in err
    assert "stopped at once; results written so far are kept" in err


def test_a_first_ctrl_c_stops_python_work_at_its_next_step():
    import signal

    process = _start("while True: time.sleep(0.01)")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 7
    assert process.stdout.read().strip() == "caught"


def test_the_package_still_offers_its_names_and_modules_after_a_plain_import():
    probe = (
        "import dhsa\n"
        "assert dhsa.methods.SELECTORS is dhsa.SELECTORS\n"
        "assert callable(dhsa.kernels.attend_torch) and dhsa.DHSAConfig().budget == 2048\n"
        "import dhsa.bench\n"
        "assert callable(dhsa.bench.measure.peak_extra_memory) and dhsa.bench.CONTENDERS\n"
        "assert set(dhsa.__all__) <= set(dir(dhsa))\n"
        "try:\n"
        "    dhsa.nosuchthing\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "module 'dhsa' has no attribute 'nosuchthing'"
