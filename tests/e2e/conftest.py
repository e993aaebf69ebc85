"""Fixtures of the end-to-end tests: a running SLURM cluster for the `slurm/` scripts' tests."""

from __future__ import annotations

import pytest

from tests.slurm_jobs import require_cluster


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skips the module's tests without a running cluster (`pytest.mark.usefixtures`)."""
    require_cluster()
