"""The command-line boundary (nm_hebb_jax/cli.py): a bad flag, config field or config file is one
line and exit status 2 before anything runs; the project's errors print as one line with their
exit status; warnings print once as ``warning: ...``."""

import subprocess
import sys
import warnings

import pytest

from nm_hebb_jax import cli
from nm_hebb_jax.errors import (
    EXIT_INTERRUPTED,
    EXIT_NONFINITE,
    EXIT_STORAGE,
    NonFiniteError,
    Preempted,
    RunError,
    StorageError,
    warn,
)
from tests.util import ROOT

SMOKE = "--config=configs/quickstart.py:smoke"


def _run(*args, module=("main.py",)):
    return subprocess.run(
        [sys.executable, *module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (
            [SMOKE, "--workdir=/nonexistent-x", "--config.batchsize=3"],
            "error: --config.batchsize: no such config field; did you mean --config.batch_size?",
        ),
        (
            [SMOKE, "--workdir=/nonexistent-x", "--config.model.nme=vgg11"],
            "error: --config.model.nme: no such config field; did you mean --config.model.name?",
        ),
        (
            ["--config=configs/nope.py", "--workdir=/nonexistent-x"],
            "error: config file configs/nope.py does not exist: pass --config=<file>.py[:arg]",
        ),
        (
            ["--config=configs/nope.py", "--workdir=/nonexistent-x", "--config.seed=1"],
            "error: config file configs/nope.py does not exist",
        ),
        (
            ["--config=configs/quickstart.py:nonsense", "--workdir=/nonexistent-x"],
            "error: unknown config argument 'nonsense'; use 'smoke'",
        ),
        (
            [SMOKE, "--workdir=/nonexistent-x", "--config.batch_size=abc"],
            "error: flag --config.batch_size=abc: invalid literal",
        ),
        ([SMOKE], "error: flag --workdir=None: Flag --workdir must have a value"),
        ([SMOKE, "--workdir=/nonexistent-x", "--bogus=1"], "error: Unknown command line flag"),
    ],
)
def test_flag_and_config_file_mistakes_are_one_line(args, message):
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith(message), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]


def test_evaluation_flags_are_one_line_too():
    proc = _run("--workdir=/nonexistent-x", "--stepp=3", module=("-m", "nm_hebb_jax.evaluate"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: Unknown command line flag 'stepp'. Did you mean: step ? (--helpfull lists the "
        "flags)"
    ]


@pytest.mark.parametrize(
    "error,status,line",
    [
        (RunError("bad input"), 2, "error: bad input"),
        (NonFiniteError("nan"), EXIT_NONFINITE, "error: nan"),
        (StorageError("disk full"), EXIT_STORAGE, "error: disk full"),
        (Preempted("saved", exit_code=0), 0, "stopped: saved"),
        (Preempted("saved", exit_code=EXIT_INTERRUPTED), EXIT_INTERRUPTED, "stopped: saved"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "stopped: interrupted (Ctrl-C)"),
    ],
)
def test_reported_errors_print_one_line_and_exit_with_their_status(capsys, error, status, line):
    with pytest.raises(SystemExit) as e, cli.reported():
        raise error
    assert e.value.code == status
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ValueError, match="a bug"), cli.reported():
        raise ValueError("a bug")


def test_run_warnings_print_once_as_one_line(capsys):
    with cli.reported():
        for _ in range(3):
            warn("checkpoint step 9 is damaged;\n falling back")
        with pytest.warns(UserWarning, match="ordinary"):  # other warnings: as before
            warnings.warn("an ordinary warning", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: checkpoint step 9 is damaged; falling back"]
