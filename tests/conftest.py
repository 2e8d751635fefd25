"""Shared fixtures: where the real data lives, and the rule that CI never skips it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prerequisites import (  # noqa: F401  (re-exported: the one skip rule, see there)
    STRICT,
    require_dir,
    require_root,
    require_tool,
    skip_or_fail,
    tmpfs,
)

# Real Mosquitto brokers for the MQTT tests (fixtures: broker, make_broker, pki, mosquitto_bin).
pytest_plugins = ["brokers"]

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FEEDERD_SHARED_DATA", REPO.parent / "shared" / "data"))
REQUIRE_SHARED = STRICT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images, clips and models of ../shared/data.

    A user's fresh clone has no ../shared, so tests using it skip; under CI (and with
    FEEDERD_REQUIRE_SHARED_DATA=1) that skip is a failure (:func:`skip_or_fail`).
    """
    return require_dir(SHARED_DATA, "the shared data")
