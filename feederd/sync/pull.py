"""``feeder-sync pull``: copy new spool samples from the device, verified and durable.

The device streams a tar (``manifest.jsonl`` plus one JPEG per sample). It is read as a stream,
never unpacked by ``tarfile``: every member name is checked (no absolute paths, no ``..``, no
links or devices), every JPEG's size and SHA-256 must match its manifest row, and each file is
written to a temporary name, fsynced and renamed to its content address before the rows that
point at it are committed. Rows are committed in sequence order, so the workspace's highest
sequence always means "everything up to here is stored" and the next pull resumes after it.
Only once the whole stream has been stored and the device's command has exited cleanly does
the device get ``spool ack`` - so nothing it drops was not safely on the laptop.

A corrupt or truncated stream, a checksum mismatch or a hostile member name raises
:class:`TransportError`; files of samples not yet committed are removed, so nothing partial is
ever visible.

A stream is trusted no further than the device's own format: only an uncompressed tar (what
``feederd spool export`` writes; a compressed one could expand a hundredfold on the disk),
members of at most ``SAMPLE_MAX_BYTES``, at most ``pull_max_mb`` (device config) in all; the
manifest's rows are checked by :mod:`feederd.sync.manifest` (absurd sequence numbers refuse the
stream; a label outside the label grammar or unprintable text is refused value by value and
counted in ``refused``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from feederd.atomic import publish, temp_file
from feederd.errors import SyncError, TransportError
from feederd.sync.manifest import (
    MANIFEST,
    MANIFEST_MAX_BYTES,
    SAMPLE_MAX_BYTES,
    damaged_header,
    last_seq_header,
    parse_manifest,
    refuse_unsafe_text,
    safe_name,
)
from feederd.sync.samples import SampleIndex
from feederd.sync.transport import Transport
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

COMMIT_EVERY = 64
CHUNK = 1 << 16


@dataclass
class PullResult:
    """What one pull did; ``acked`` is the sequence the device was told it may drop."""

    since: int
    received: int = 0
    last_seq: int = 0
    spool_id: str = ""
    acked: int | None = None
    bytes: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    damaged: list[int] = field(default_factory=list)
    max_bytes: int = 4096 * 2**20

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "received": self.received, "last_seq": self.last_seq,
                "spool_id": self.spool_id, "acked": self.acked, "bytes": self.bytes,
                "labels": self.labels, "refused": self.refused, "damaged": self.damaged}


def pull(workspace: Workspace, transport: Transport,
         progress: Callable[[int], None] | None = None) -> PullResult:
    """Receive everything after the last stored sequence, then ack it on the device."""
    workspace.create()
    with workspace.lock(), contextlib.closing(workspace.index()) as index:
        spool_id, since = index.cursor()
        try:
            result = _pull_once(workspace, transport, index, spool_id, since, progress)
        except SpoolChanged as changed:
            # The device rebuilt its spool (new id): its sequence numbers mean something
            # else now, so everything is pulled again; known samples are matched by id and
            # content hash and keep their review.
            logger.warning("the device's spool changed (%s -> %s); pulling it again from 0",
                           spool_id or "?", changed.spool_id)
            result = _pull_once(workspace, transport, index, changed.spool_id, 0, progress)
        state = workspace.load_state()
        acked = int(state.get("acked_seq", 0)) if state.get("spool_id") == result.spool_id \
            else 0
        if result.last_seq > acked:
            # Everything up to last_seq is fsynced and committed: only now may the device
            # drop it. A failed ack is retried by the next pull (the samples are already here).
            transport.ack(result.last_seq)
            result.acked = result.last_seq
        workspace.update_state(last_seq=result.last_seq, spool_id=result.spool_id,
                               acked_seq=result.acked if result.acked is not None else acked)
        workspace.record("pull", received=result.received, last_seq=result.last_seq)
    logger.info("pulled %d samples (up to sequence %d)", result.received, result.last_seq)
    return result


def _pull_once(workspace: Workspace, transport: Transport, index: SampleIndex, spool_id: str,
               since: int, progress: Callable[[int], None] | None) -> PullResult:
    result = PullResult(since=since, last_seq=since, spool_id=spool_id,
                        max_bytes=transport.config.pull_max_mb * 2**20)
    with transport.export(since) as stream:
        receive(stream, workspace, index, result, progress)
    return result


class SpoolChanged(Exception):
    """The export came from another spool than the last pull (it was rebuilt)."""

    def __init__(self, spool_id: str) -> None:
        super().__init__(spool_id)
        self.spool_id = spool_id


def receive(stream: IO[bytes], workspace: Workspace, index: SampleIndex, result: PullResult,
            progress: Callable[[int], None] | None = None) -> None:
    """Read one export stream into the workspace; raises TransportError on any defect."""
    receiver = _Receiver(workspace, index, result, progress)
    try:
        receiver.read(stream)
    except (tarfile.TarError, EOFError) as exc:
        receiver.discard()
        raise TransportError(f"the export stream from the device is corrupt or truncated "
                             f"({exc}); nothing after sequence {result.last_seq} was kept, "
                             "run the pull again") from exc
    except BaseException:
        receiver.discard()
        raise


SPOOL_ID_HEADER = "feederd.spool_id"


class _Receiver:
    """Matches tar members to manifest rows and commits complete rows in sequence order."""

    def __init__(self, workspace: Workspace, index: SampleIndex, result: PullResult,
                 progress: Callable[[int], None] | None) -> None:
        self.workspace = workspace
        self.index = index
        self.result = result
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] | None = None  # by member name
        self.files: dict[str, tuple[str, int, Path]] = {}  # unmatched: sha256, size, file
        self.seen: set[str] = set()
        self.created: set[Path] = set()  # files this pull stored, not yet committed
        self.ready: list[dict[str, Any]] = []

    def read(self, stream: IO[bytes]) -> None:
        # "r|", not "r|*": the device writes plain tar, and a compressed stream could
        # expand a hundredfold on this disk before it failed.
        _refuse_compressed(stream)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                self._member(tar, member)
        if self.rows is None:
            raise TransportError(f"the export stream has no {MANIFEST}; is the device's "
                                 "feederd a version that exports samples?")
        self._match()
        if missing := sorted(self.rows.values(), key=lambda r: r["seq"]):
            first = missing[0]
            raise TransportError(f"the export stream ended without the file of sample "
                                 f"{first['id']} (sequence {first['seq']}, {first['path']}): "
                                 "it is truncated; run the pull again")
        self._commit()

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = safe_name(member.name)
        if member.isdir():
            return
        if not member.isfile():
            raise TransportError(f"the export stream holds {member.name!r}, which is not a "
                                 "regular file (links and devices are refused)")
        handle = tar.extractfile(member)
        if handle is None:
            raise TransportError(f"cannot read {member.name!r} from the export stream")
        if name == MANIFEST:
            self._spool(member.pax_headers.get(SPOOL_ID_HEADER, ""))
            self._manifest(handle, member.size, last_seq_header(member.pax_headers))
            self.result.damaged = damaged_header(member.pax_headers)
        else:
            self._file(name, handle, member.size)
        self._match()
        if len(self.ready) >= COMMIT_EVERY:
            self._commit()

    def _spool(self, spool_id: str) -> None:
        """Refuse to mix two spools' sequence numbers (see :class:`SpoolChanged`)."""
        if spool_id and self.result.spool_id and spool_id != self.result.spool_id \
                and self.result.since > 0:
            raise SpoolChanged(spool_id)
        self.result.spool_id = spool_id or self.result.spool_id

    def _manifest(self, handle: IO[bytes], size: int, last_seq: int | None) -> None:
        if self.rows is not None:
            raise TransportError(f"the export stream holds two {MANIFEST} files")
        if size > MANIFEST_MAX_BYTES:
            raise TransportError(f"{MANIFEST} is {size} bytes, more than the "
                                 f"{MANIFEST_MAX_BYTES} accepted")
        rows = parse_manifest(handle.read(), self.result.since)
        for row in rows:
            if last_seq is not None and row["seq"] > last_seq:
                raise TransportError(f"{MANIFEST}: sample {row['id']} has sequence "
                                     f"{row['seq']}, beyond the stream's own last sequence "
                                     f"{last_seq}; the stream is inconsistent")
            self.result.refused += refuse_unsafe_text(row)
        self.rows = {row["path"]: row for row in rows}

    def _file(self, name: str, handle: IO[bytes], size: int) -> None:
        if name in self.seen:
            raise TransportError(f"the export stream holds {name!r} twice")
        if self.rows is not None and name not in self.rows:
            raise TransportError(f"the export stream holds {name!r}, which its manifest does "
                                 "not list")
        if size > SAMPLE_MAX_BYTES:
            raise TransportError(f"{name!r} is {size} bytes, more than a sample may be "
                                 f"({SAMPLE_MAX_BYTES})")
        if self.result.bytes + size > self.result.max_bytes:
            raise TransportError(f"the export stream carries more than "
                                 f"{self.result.max_bytes // 2**20} MB; raise pull_max_mb in "
                                 "the device's feeder-sync config if its spool is that large")
        digest, stored = self._store(handle)
        self.seen.add(name)
        self.files[name] = (digest, size, stored)
        self.result.bytes += size

    def _store(self, handle: IO[bytes]) -> tuple[str, Path]:
        """Write to a temporary file while hashing, fsync, rename to samples/ab/<sha>.jpg."""
        folder = self.workspace.samples_dir
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            return self._write(handle, folder, digest)
        except OSError as exc:
            raise SyncError(f"cannot store a pulled sample in {folder}: {exc.strerror}; "
                            "free some disk space and pull again") from exc

    def _write(self, handle: IO[bytes], folder: Path, digest: Any) -> tuple[str, Path]:
        with temp_file(folder / "incoming.jpg") as (out, tmp):
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        sha = digest.hexdigest()
        final = folder / sha[:2] / f"{sha}.jpg"
        if final.exists():
            tmp.unlink()
            return sha, final
        try:
            final.parent.mkdir(exist_ok=True)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        publish(tmp, final)
        self.created.add(final)
        return sha, final

    def _match(self) -> None:
        """Move rows whose file has arrived (and checks out) to the commit queue."""
        if self.rows is None:
            return
        if unknown := [n for n in self.files if n not in self.rows]:
            raise TransportError(f"the export stream holds {unknown[0]!r}, which its manifest "
                                 "does not list")
        for name in list(self.files):
            row = self.rows.pop(name)
            sha, size, stored = self.files.pop(name)
            if sha != row["sha256"] or size != row["size"]:
                raise TransportError(
                    f"checksum mismatch for sample {row['id']} (sequence {row['seq']}, "
                    f"{name}): the manifest says {row['size']} bytes sha256 "
                    f"{row['sha256'][:12]}..., the stream carried {size} bytes sha256 "
                    f"{sha[:12]}...; nothing after sequence {self.result.last_seq} was kept")
            row["file"] = str(stored.relative_to(self.workspace.dir))
            self.ready.append(row)

    def _commit(self) -> None:
        """Commit the ready rows that continue the sequence without a gap."""
        pending = min((r["seq"] for r in (self.rows or {}).values()), default=None)
        self.ready.sort(key=lambda r: r["seq"])
        batch = [r for r in self.ready if pending is None or r["seq"] < pending]
        if not batch:
            return
        self.index.commit(batch, self.result.spool_id, batch[-1]["seq"])
        for row in batch:
            self.created.discard(self.workspace.dir / row["file"])
            label = row.get("label") or "-"
            self.result.labels[label] = self.result.labels.get(label, 0) + 1
        self.ready = self.ready[len(batch):]
        self.result.received += len(batch)
        self.result.last_seq = batch[-1]["seq"]
        if self.progress:
            self.progress(len(batch))

    def discard(self) -> None:
        """Remove the files this pull stored for samples it did not commit (nothing partial
        stays; the next pull fetches them again)."""
        for path in self.created:
            with contextlib.suppress(OSError):
                path.unlink()
        self.created.clear()


COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz",
              b"\x28\xb5\x2f\xfd": "zstd"}


def _refuse_compressed(stream: IO[bytes]) -> None:
    """Name the problem when the stream is compressed (tarfile alone would say "corrupt")."""
    peek = getattr(stream, "peek", None)
    head = peek(8)[:8] if peek is not None else b""
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise TransportError(f"the export stream is {kind}-compressed; feederd exports "
                                 "plain tar, and a compressed stream is refused unread")


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A tqdm counter of stored samples on a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(unit=" samples", desc="pull", leave=False) as bar:
        yield bar.update

