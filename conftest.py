"""Settings for the whole test session: tests/ and the notebooks nbval runs."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Nothing a test or a notebook under test runs may touch the user's ~/.nbmonitor.
    os.environ["NBMONITOR_REPO"] = tempfile.mkdtemp(prefix="nbmonitor-tests-")
