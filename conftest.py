"""Settings for the whole test session: tests/ and the notebooks nbval runs."""

from __future__ import annotations

import os
import tempfile

import pytest

# jp_fetch and friends: a real Jupyter server with authentication on, for tests/test_server.py.
pytest_plugins = ["pytest_jupyter.jupyter_server"]


def pytest_configure(config: pytest.Config) -> None:
    # Nothing a test or a notebook under test runs may touch the user's ~/.nbmonitor.
    os.environ["NBMONITOR_REPO"] = tempfile.mkdtemp(prefix="nbmonitor-tests-")
