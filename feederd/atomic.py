"""Whole-or-nothing files: write under a temporary name, fsync, rename, fsync the directory.

One helper for every durable write in feederd (the spool's samples, the model store, the
feeder-sync workspace), so that every temporary file has the same recognisable name,
``.tmp-<final name>.<random>``, and :func:`remove_stale` can clean what a kill -9 or a power
cut left behind. A reader sees the old file or the new one, never a part of either.

Directory fsync: a rename is durable only once the directory holding it is fsynced. Writers of
many files at once (a spool batch) pass ``sync_dir=False`` and call :func:`fsync_dir` once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20


def temp_name(final: Path) -> Path:
    """A fresh temporary name beside ``final`` that :func:`remove_stale` recognises."""
    return final.with_name(f"{TMP_PREFIX}{final.name}.{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    """Make the renames and unlinks in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_file(final: Path, fsync: bool = True) -> Iterator[tuple[IO[bytes], Path]]:
    """``(handle, temporary path)`` beside ``final``: flushed and fsynced on a clean exit.

    The caller renames it (:func:`publish`), or it is removed on any error. The name is
    exclusive (``O_EXCL``), so two writers never share one. ``fsync=False`` is for files
    that are rewritten anyway after a power cut (still whole-or-nothing for a crash).
    """
    tmp = temp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def publish(tmp: Path, final: Path, *, sync_dir: bool = True) -> None:
    """Rename a finished temporary file over ``final`` (removing it if the rename fails)."""
    try:
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(final.parent)


def write_bytes(final: Path, data: bytes, *, sync_dir: bool = True,
                fsync: bool = True) -> None:
    """Write ``final`` whole or not at all (``fsync=False``: see :func:`temp_file`)."""
    with temp_file(final, fsync) as (handle, tmp):
        handle.write(data)
    publish(tmp, final, sync_dir=sync_dir)


def write_json(final: Path, data: Any) -> None:
    """:func:`write_bytes` of ``data`` as indented, key-sorted JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes(final, text.encode("utf-8"))


def copy_file(source: Path, final: Path, check: Callable[[Path], None] | None = None) -> None:
    """Copy ``source`` to ``final`` durably, in chunks (memory stays flat for big files).

    ``check`` sees the finished temporary copy before it is renamed and may raise to refuse
    it (the copy is then removed).
    """
    with temp_file(final) as (handle, tmp), source.open("rb") as src:
        shutil.copyfileobj(src, handle, CHUNK)
    try:
        if check is not None:
            check(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, final)


def symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically: a reader sees the old target or the new."""
    tmp = temp_name(link)
    os.symlink(target, tmp)
    publish(tmp, link)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of ours (or an older feederd's ``.<name>.<random>.tmp``)."""
    return name.startswith(TMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))


def remove_stale(directory: Path, min_age_s: float = 0.0) -> list[str]:
    """Remove temporary files a crash left in ``directory``; -> the names removed.

    Call it only where no writer can be busy (the directory's lock is held, or at start-up
    before any writer runs); ``min_age_s`` spares files younger than that. Errors are logged,
    never raised: a stale file costs disk space, not correctness.
    """
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    except OSError as exc:
        logger.warning("cannot look for stale temporary files in %s: %s", directory, exc)
        return removed
    for entry in entries:
        try:
            if not is_temporary(entry.name) or entry.is_dir(follow_symlinks=False) or \
                    now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                continue
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
        except OSError as exc:
            logger.warning("cannot remove the stale temporary file %s: %s", entry.path, exc)
            continue
        removed.append(entry.name)
        logger.warning("removed %s (%d bytes), a temporary file left by an interrupted write",
                       entry.path, size)
    if removed:
        with contextlib.suppress(OSError):
            fsync_dir(directory)
    return removed
