"""What the tests of the real command share as fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.processes import stack_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of the test's own stack (home and ports of its own)."""
    return stack_env(tmp_path)
