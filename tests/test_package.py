"""The package as a whole: a cheap import, a true README, a CI that runs the README's tests."""

from __future__ import annotations

import re
import subprocess
import sys

import nbmonitor

from .helpers import ROOT

HEAVY = ("IPython", "ipywidgets", "jupyter_server", "requests", "pynvml", "psutil", "filelock")


def test_import_nbmonitor_pulls_in_nothing_heavy() -> None:
    code = f"import sys, nbmonitor; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_is_exported_and_real() -> None:
    for name in nbmonitor.__all__:
        assert getattr(nbmonitor, name) is not None


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
