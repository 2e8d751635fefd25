"""The one rule for a test that needs something the machine may lack (a tool, root, the
shared data): skip on a developer's machine that lacks it, FAIL where it must be there.

It must be there under CI (``CI=true``; ``.ci/run`` installs every tool and CI copies
``../shared``) and wherever ``FEEDERD_REQUIRE_SHARED_DATA=1`` says so (the team's machines):
there a missing tool, folder or permission is a broken setup, never a silent skip.
``tests/conftest.py`` re-exports these helpers; ``brokers.py`` uses them too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

STRICT = (os.environ.get("CI") == "true"
          or os.environ.get("FEEDERD_REQUIRE_SHARED_DATA") == "1")
"""Whether a missing prerequisite fails the test instead of skipping it."""

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it where everything must be there (:data:`STRICT`)."""
    if STRICT:
        pytest.fail(f"{reason} (CI and FEEDERD_REQUIRE_SHARED_DATA=1 must run this test; "
                    ".ci/run installs what it needs)")
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    """``name`` on PATH or in an sbin folder (daemons such as mosquitto and sshd live there)."""
    if found := shutil.which(name):
        return found
    path = os.pathsep.join(SBIN)
    return shutil.which(name, path=path)


def require_tool(name: str, package: str | None = None) -> str:
    """The path of the tool ``name``; else skip or fail (naming the Debian package)."""
    if (found := find_tool(name)) is not None:
        return found
    skip_or_fail(f"{name} is not installed (apt-get install {package or name})")


def require_root(what: str) -> None:
    """Skip or fail unless running as root (``what`` says why root is needed)."""
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root")


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder; else skip or fail."""
    if not path.is_dir():
        skip_or_fail(f"{what}: {path} is absent")
    return path


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "3m") at ``mount``, unmounted afterwards."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here (root needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
