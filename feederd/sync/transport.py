"""How feeder-sync talks to a device: the ``feederd`` command line, over SSH or locally.

Both transports run the same device commands (``feederd spool export``, ``spool ack``,
``model install``, ``model rollback``, ``model ls``); only how a command is started differs.
SSH uses the system ``ssh`` binary, so the user's keys, agent and ``~/.ssh/config`` just work
and no SSH library is needed. The local transport runs ``feederd`` as a subprocess with a
given config (a feeder on this machine, or tests exercising the real CLI).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from feederd.errors import SyncError, TransportError
from feederd.sync.config import DeviceConfig
from feederd.sync.workspace import safe_name

logger = logging.getLogger(__name__)

SSH_UNREACHABLE = 255  # ssh's own exit status for connection and authentication failures
USAGE_EXIT = 2  # feederd: bad input (a refused model, an unknown sample)
STDERR_TAIL = 2000
SSH_DEFAULTS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")


class Transport:
    """Runs ``feederd`` commands on one device. Subclasses say how a command starts."""

    def __init__(self, name: str, config: DeviceConfig) -> None:
        self.name = name
        self.config = config

    # --- subclass hooks -------------------------------------------------------------------

    def argv(self, args: Sequence[str]) -> list[str]:
        """The local argv that runs ``feederd ARGS`` on the device."""
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    @contextlib.contextmanager
    def staged(self, bundle: Path) -> Iterator[str]:
        """The bundle as a path the device's feederd can open, removed afterwards."""
        yield str(bundle.resolve())

    def describe(self) -> str:
        raise NotImplementedError

    # --- device commands ------------------------------------------------------------------

    def _feederd_args(self, *args: str) -> list[str]:
        extra = ["--config", self.config.feederd_config] if self.config.feederd_config else []
        return [*args, *extra]

    @contextlib.contextmanager
    def export(self, since: int) -> Iterator[IO[bytes]]:
        """Stream ``feederd spool export --since SINCE``: the tar on stdout, as it comes.

        On leaving the block the command must have exited with status 0, else
        :class:`TransportError`; if the block raised, the command is killed.
        """
        argv = self.argv(self._feederd_args("spool", "export", "--since", str(since)))
        with tempfile.TemporaryFile() as errors:
            proc = self._popen(argv, stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdout is not None
            try:
                yield proc.stdout
                proc.stdout.read()  # drain what the reader did not need, so it can exit
            except BaseException as exc:
                # A stream that broke because the command failed: its message is the cause.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if proc.wait(timeout=2) not in (0, None):
                        raise self._failure("spool export", proc.returncode,
                                            _tail(errors)) from exc
                proc.kill()
                proc.wait()
                raise
            finally:
                proc.stdout.close()
            status = self._wait(proc, argv)
            if status != 0:
                raise self._failure("spool export", status, _tail(errors))

    def ack(self, seq: int) -> dict[str, Any]:
        """``feederd spool ack SEQ``: the device may now drop what the laptop has stored."""
        return self._json("spool ack", self._feederd_args("spool", "ack", str(seq), "--json"))

    def install(self, bundle: Path, force: bool = False) -> dict[str, Any]:
        """Copy ``bundle`` to the device and run ``feederd model install`` on it."""
        with self.staged(bundle) as remote:
            args = ["model", "install", remote, "--json", *(["--force"] if force else [])]
            return self._json("model install", self._feederd_args(*args))

    def rollback(self) -> dict[str, Any]:
        return self._json("model rollback", self._feederd_args("model", "rollback", "--json"))

    def models(self) -> list[dict[str, Any]]:
        result = self._json("model ls", self._feederd_args("model", "ls", "--json"))
        return result if isinstance(result, list) else []

    # --- plumbing -------------------------------------------------------------------------

    def _popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        logger.debug("running %s", shlex.join(argv))
        try:
            return subprocess.Popen(argv, env=self.env(), stdin=kwargs.pop("stdin",
                                    subprocess.DEVNULL), **kwargs)
        except FileNotFoundError as exc:
            raise TransportError(f"device '{self.name}': cannot run {argv[0]!r}: not found; "
                                 f"{self._hint()}") from exc
        except OSError as exc:
            raise TransportError(f"device '{self.name}': cannot run {argv[0]!r}: "
                                 f"{exc.strerror}") from exc

    def _wait(self, proc: subprocess.Popen[bytes], argv: list[str]) -> int:
        try:
            return proc.wait(timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TransportError(f"device '{self.name}': {shlex.join(argv)} did not finish "
                                 f"within {self.config.timeout_s:.0f} s") from None

    def run(self, what: str, args: Sequence[str], stdin: IO[bytes] | None = None) -> bytes:
        """Run one device command to completion; its stdout, or an error naming ``what``."""
        argv = self.argv(args)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errors:
            proc = self._popen(argv, stdout=out, stderr=errors,
                               stdin=stdin if stdin is not None else subprocess.DEVNULL)
            status = self._wait(proc, argv)
            if status != 0:
                raise self._failure(what, status, _tail(errors))
            out.seek(0)
            return out.read()

    def _json(self, what: str, args: Sequence[str]) -> Any:
        output = self.run(what, args).decode("utf-8", "replace").strip()
        lines = [line for line in output.splitlines() if line.strip()]
        if not lines:
            return {}
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError as exc:
            raise TransportError(f"device '{self.name}': {what} printed no JSON "
                                 f"({lines[-1][:200]!r}); is feederd up to date there?") from exc

    def _failure(self, what: str, status: int, stderr: str) -> SyncError:
        message = stderr.strip() or f"exit status {status}"
        if status == USAGE_EXIT:
            # feederd refused the request (e.g. a bundle that fails validation or regresses);
            # the device is fine and keeps its current model.
            return SyncError(f"device '{self.name}' rejected {what}: {message}")
        return TransportError(f"device '{self.name}': {what} failed (exit {status}): "
                              f"{message}; {self._hint()}")

    def _hint(self) -> str:
        return f"check [devices.{self.name}] in the feeder-sync config ({self.describe()})"


class SshTransport(Transport):
    """``ssh HOST -- feederd ...``; the remote command line is quoted for the remote shell."""

    def __init__(self, name: str, config: DeviceConfig) -> None:
        super().__init__(name, config)
        if not config.host:
            raise SyncError(f"device '{name}' uses ssh but has no host; set "
                            f"[devices.{name}] host = \"user@host\"")

    def describe(self) -> str:
        return f"ssh {self.config.host}"

    def _ssh(self, remote: str) -> list[str]:
        # The user's options come first: ssh keeps the first value it sees for an option.
        return ["ssh", *self.config.ssh_options, *SSH_DEFAULTS, self.config.host, "--", remote]

    def argv(self, args: Sequence[str]) -> list[str]:
        return self._ssh(f"{self.config.feederd} {shlex.join(args)}")

    def _failure(self, what: str, status: int, stderr: str) -> SyncError:
        if status == SSH_UNREACHABLE:
            return TransportError(f"cannot reach device '{self.name}' over ssh "
                                  f"({self.config.host}): {stderr.strip() or 'ssh failed'}; "
                                  "check that it is on, the host name, and that "
                                  f"'ssh {self.config.host}' works without a password")
        return super()._failure(what, status, stderr)

    @contextlib.contextmanager
    def staged(self, bundle: Path) -> Iterator[str]:
        """Upload with ``cat > tmp && mv`` so a cut connection never leaves a half bundle."""
        directory = self.config.staging_dir.rstrip("/") or "/"
        final = f"{directory}/feeder-sync-{safe_name(bundle.stem)}-{uuid.uuid4().hex[:8]}.onnx"
        part = final + ".part"
        upload = (f"mkdir -p {shlex.quote(directory)} && cat > {shlex.quote(part)} && "
                  f"mv {shlex.quote(part)} {shlex.quote(final)}")
        try:
            with bundle.open("rb") as source:
                self._raw("upload", upload, source)
            yield final
        finally:
            with contextlib.suppress(SyncError):
                self._raw("clean-up", f"rm -f {shlex.quote(part)} {shlex.quote(final)}")

    def _raw(self, what: str, remote: str, stdin: IO[bytes] | None = None) -> None:
        argv = self._ssh(remote)
        with tempfile.TemporaryFile() as errors:
            proc = self._popen(argv, stdout=subprocess.DEVNULL, stderr=errors,
                               stdin=stdin if stdin is not None else subprocess.DEVNULL)
            status = self._wait(proc, argv)
            if status != 0:
                raise self._failure(what, status, _tail(errors))


class LocalTransport(Transport):
    """``feederd ...`` as a local subprocess (optionally with FEEDERD_STATE_DIR=path)."""

    def describe(self) -> str:
        return f"local {self.config.feederd!r}"

    def argv(self, args: Sequence[str]) -> list[str]:
        return [*shlex.split(self.config.feederd), *args]

    def env(self) -> dict[str, str] | None:
        if not self.config.path:
            return None
        return {**os.environ, "FEEDERD_STATE_DIR": str(Path(self.config.path).expanduser())}


def open_transport(name: str, config: DeviceConfig) -> Transport:
    if config.transport == "ssh":
        return SshTransport(name, config)
    return LocalTransport(name, config)


def _tail(handle: IO[bytes]) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - STDERR_TAIL))
    return handle.read().decode("utf-8", "replace")
