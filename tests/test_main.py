"""main.py at its boundary: a mistake in the input is one line and exit status 2, a bug keeps its
traceback (main.py catches only the project's own error types)."""

import subprocess
import sys

import pytest

from tests.util import ROOT

RUN_MAIN = """
import sys
from absl import app
import main
from nm_hebb_jax.errors import RunError

def train_and_evaluate(config, workdir):
    raise {error}

main.train_and_evaluate = train_and_evaluate
sys.argv = ["main.py", "--config=configs/quickstart.py:smoke", "--workdir=/nonexistent-not-written"]
app.run(main.main)
"""


def _run(error: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_MAIN.format(error=error)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "error,status,last_line",
    [
        ('RunError("batch_size=30 is not divisible")', 2, "error: batch_size=30 is not divisible"),
        ('ValueError("an internal bug\\nits second line")', 1, "its second line"),
    ],
)
def test_input_errors_are_one_line_and_bugs_keep_their_traceback(error, status, last_line):
    proc = _run(error)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == last_line
    assert ("Traceback" in proc.stderr) == (status != 2)
