"""tools/pi-emulation/run.py: feederd installed and run as a systemd service in Debian 12 and
13 roots under systemd-nspawn (real systemd, real journald, real watchdog, a real broker).

It needs root, systemd-nspawn and debootstrap (the roots are built once and cached in
/var/cache/feederd-pi-roots), and takes minutes: ~3 min per release with cached roots, ~8 min
more to build both roots. Skipped where those are missing (a failure under CI and with
FEEDERD_REQUIRE_SHARED_DATA=1: tests/prerequisites.py). The test carries its own time limit;
`-m "not pi_emulation"` leaves it out of a quick run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prerequisites import require_root, require_tool

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "pi-emulation" / "run.py"
LIMIT_S = 2400


def require_emulation_tools() -> None:
    """Root and the tools .ci/run installs: skip without them here, fail under CI."""
    require_root("the Pi emulation (systemd-nspawn)")
    for tool, package in (("systemd-nspawn", "systemd-container"),
                          ("debootstrap", "debootstrap"), ("nsenter", "util-linux"),
                          ("mosquitto", "mosquitto")):
        require_tool(tool, package)


@pytest.mark.pi_emulation
@pytest.mark.slow
@pytest.mark.timeout(LIMIT_S + 60)
def test_feederd_runs_as_a_service_on_debian_12_and_13() -> None:
    require_emulation_tools()
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert [s["suite"] for s in summary["suites"]] == ["bookworm", "trixie"]
    for suite in summary["suites"]:
        assert [c["ok"] for c in suite["checks"]] == [True] * 10, suite
