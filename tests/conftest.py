"""Shared fixtures: where the real data lives, and the rule that CI never skips it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real Mosquitto brokers for the MQTT tests (fixtures: broker, make_broker, pki, mosquitto_bin).
pytest_plugins = ["brokers"]

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FEEDERD_SHARED_DATA", REPO.parent / "shared" / "data"))
REQUIRE_SHARED = os.environ.get("FEEDERD_REQUIRE_SHARED_DATA") == "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images, clips and models of ../shared/data.

    A user's fresh clone has no ../shared, so tests using it skip; CI sets
    FEEDERD_REQUIRE_SHARED_DATA=1, which turns that skip into a failure.
    """
    if not SHARED_DATA.is_dir():
        if REQUIRE_SHARED:
            pytest.fail(f"FEEDERD_REQUIRE_SHARED_DATA=1 but {SHARED_DATA} is absent")
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
