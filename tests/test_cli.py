"""The `autograph` command line: the demo checks itself; bad arguments are refused."""
import subprocess
import sys

import pytest

from autograph.cli import main


def test_demo_passes_its_checks(capsys):
    assert main(["demo", "--steps", "4", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert "scan[" in out and "s_1 … s_4" in out


def test_demo_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "autograph", "demo", "--steps", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "all checks passed" in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "--steps must be a positive integer"),
    (["demo", "--batch", "-1"], "--batch must be a positive integer"),
    (["demo", "--steps", "many"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
