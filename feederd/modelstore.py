"""The device's installed model versions, with ``current`` and ``previous`` links.

::

    <state_dir>/models/
      feeder-20250601120000.onnx     one file per version, named after feederd.version
      feeder-20250608120000.onnx
      current  -> feeder-20250608120000.onnx
      previous -> feeder-20250601120000.onnx

A link is swapped by creating the new symlink under a temporary name and ``os.replace``-ing it
over the old one, so a reader (the daemon polling :meth:`ModelStore.current_target`) sees the
old target or the new one, never none. An install validates the candidate (a full load and
test inference), runs it beside the current model on recent labelled spool samples and refuses
a clear regression; a refused or broken bundle leaves the current model serving.

This module never imports ``onnx``: metadata is read by :mod:`feederd.bundle` and inference
is :mod:`feederd.classifier`'s.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from feederd.atomic import copy_file, remove_stale, symlink
from feederd.bundle import Bundle, file_sha256, read_bundle
from feederd.errors import ModelError, SpoolError

if TYPE_CHECKING:
    from feederd.config import Settings, SpoolConfig

logger = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
NOTHING_LABELS = frozenset({"not_a_bird", "none", "nothing", "background", "negative"})
"""Labels that mean "nothing of interest" even when a model does not list them."""

Samples = Sequence[tuple[bytes, str]]


@dataclass(frozen=True)
class Comparison:
    """How the candidate and the current model did on the same labelled spool samples."""

    samples: int
    candidate_right: int
    current_right: int
    skipped: int = 0

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_right / self.samples if self.samples else 0.0

    @property
    def current_accuracy(self) -> float:
        return self.current_right / self.samples if self.samples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "candidate_right": self.candidate_right,
                "current_right": self.current_right, "skipped": self.skipped,
                "candidate_accuracy": round(self.candidate_accuracy, 4),
                "current_accuracy": round(self.current_accuracy, 4)}


class ModelStore:
    """Versions by name in ``models_dir``; see the module docstring for the layout.

    ``samples`` returns recent labelled spool samples as ``(jpeg_bytes, label)`` pairs for
    :meth:`install_file`; ``max_drop`` is the accuracy loss on them (0-1) that counts as a
    clear regression once there are at least ``min_samples``.
    """

    def __init__(self, models_dir: Path, samples: Callable[[], Samples] | None = None, *,
                 threads: int = 2, min_confidence: float = 0.5, max_drop: float = 0.10,
                 min_samples: int = 8, keep: int = 10) -> None:
        self.dir = Path(models_dir)
        self._samples = samples
        self.threads = threads
        self.min_confidence = min_confidence
        self.max_drop = max_drop
        self.min_samples = min_samples
        self.keep = keep

    # --- reading --------------------------------------------------------------------------

    def current_target(self) -> str:
        """The ``current`` link's target name ("" if none): one readlink, cheap to poll."""
        try:
            return os.readlink(self.dir / CURRENT)
        except OSError:
            return ""

    def current_path(self) -> Path | None:
        """The installed current bundle, or None when nothing is installed."""
        return self._link(CURRENT)

    def previous_path(self) -> Path | None:
        return self._link(PREVIOUS)

    def _link(self, name: str) -> Path | None:
        try:
            target = os.readlink(self.dir / name)
        except OSError:
            return None
        path = self.dir / target
        return path if path.is_file() else None

    def ls(self) -> list[dict[str, Any]]:
        """Every installed version, newest first, with ``current``/``previous`` flags."""
        if not self.dir.is_dir():
            return []
        current, previous = self.current_target(), os.readlink(self.dir / PREVIOUS) \
            if (self.dir / PREVIOUS).is_symlink() else ""
        entries = []
        for path in sorted(self.dir.glob("*.onnx"), key=lambda p: p.stat().st_mtime,
                           reverse=True):
            entry: dict[str, Any] = {"file": path.name, "size": path.stat().st_size,
                                     "current": path.name == current,
                                     "previous": path.name == previous}
            try:
                bundle = read_bundle(path)
                entry.update({"version": bundle.version, "parent_version": bundle.parent_version,
                              "created": bundle.created, "labels": list(bundle.labels),
                              "display_names": bundle.display_names,
                              "metrics": bundle.metrics, "sha256": bundle.sha256})
            except ModelError as exc:
                entry["error"] = str(exc)
            entries.append(entry)
        return entries

    # --- changing -------------------------------------------------------------------------

    def install_file(self, file: Path, force: bool = False) -> dict[str, Any]:
        """:meth:`install` with the store's own recent labelled spool samples."""
        samples = self._samples() if self._samples is not None else ()
        return self.install(file, samples, force=force)

    def install(self, file: Path, spool_samples: Samples = (), *,
                force: bool = False) -> dict[str, Any]:
        """Validate, compare with the current model, copy in and make ``file`` current.

        Raises :class:`ModelError` (and changes nothing) if the bundle fails validation, if
        another file already holds its version, or if it does clearly worse than the current
        model on ``spool_samples`` (unless ``force``).
        """
        from feederd.classifier import validate_bundle
        from feederd.modelchain import SPOOL_SAMPLES, clip_frames

        recent, _ = _decode(spool_samples[-SPOOL_SAMPLES:])
        frames = [*clip_frames(), *((f"spool sample {n}", image)
                                    for n, image in enumerate(recent, 1))]
        bundle = validate_bundle(Path(file), frames)  # real frames too: see modelchain
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            remove_stale(self.dir)  # what an interrupted install left: none can run now
            return self._install(Path(file), bundle, spool_samples, force)

    def _install(self, file: Path, bundle: Bundle, samples: Samples,
                 force: bool) -> dict[str, Any]:
        name = f"{_safe(bundle.version)}.onnx"
        target = self.dir / name
        if target.exists() and file_sha256(target) != bundle.sha256:
            raise ModelError(f"a different model with version '{bundle.version}' is already "
                             f"installed ({target}); build the new one with another version")
        current = self.current_path()
        info: dict[str, Any] = {"installed": bundle.version, "file": name,
                                "previous": _version_of(current)}
        if current is not None and current.name == name:
            return {**info, "unchanged": True}
        if current is not None and samples:
            comparison = self.compare(file, current, samples)
            info["comparison"] = comparison.as_dict()
            self._refuse_regression(bundle, current, comparison, force)
        if not target.exists():
            copy_file(file, target, _check_copy(file, bundle.sha256))
        if current is not None:
            self._point(PREVIOUS, current.name)
        self._point(CURRENT, name)
        self._prune()
        logger.info("installed model %s (previous: %s)", bundle.version, info["previous"])
        return info

    def _refuse_regression(self, bundle: Bundle, current: Path, result: Comparison,
                           force: bool) -> None:
        if result.samples < self.min_samples:
            return
        drop = result.current_accuracy - result.candidate_accuracy
        if drop <= self.max_drop:
            return
        message = (f"model {bundle.version} does clearly worse than the current model "
                   f"{_version_of(current)} on {result.samples} recent labelled spool samples: "
                   f"right on {result.candidate_right} ({result.candidate_accuracy:.0%}) "
                   f"against {result.current_right} ({result.current_accuracy:.0%}), "
                   f"{drop * 100:.0f} points worse (at most {self.max_drop * 100:.0f} "
                   "allowed); the current model keeps serving")
        if not force:
            raise ModelError(message + "; use --force to install it anyway")
        logger.warning("%s; installing anyway (--force)", message)

    def compare(self, candidate: Path, current: Path, samples: Samples) -> Comparison:
        """Run both models on the labelled samples; count who is right on each.

        One model at a time, so that memory holds one bundle, not two.
        """
        images, labels = _decode(samples)
        new_probs, new = _probabilities(candidate, images, self.threads)
        old_probs, old = _probabilities(current, images, self.threads)
        negatives = NOTHING_LABELS | new.negative_labels | old.negative_labels
        new_right = sum(self._right(new, p, label, negatives)
                        for p, label in zip(new_probs, labels, strict=True))
        old_right = sum(self._right(old, p, label, negatives)
                        for p, label in zip(old_probs, labels, strict=True))
        return Comparison(len(images), int(new_right), int(old_right),
                          skipped=len(samples) - len(images))

    def _right(self, bundle: Bundle, probs: np.ndarray, label: str,
               negatives: frozenset[str]) -> bool:
        """A negative sample is right when it would not alert; a species when it is named."""
        top = int(np.argmax(probs))
        said = bundle.labels[top]
        if label in negatives:
            return bundle.is_negative(said) or float(probs[top]) < self.min_confidence
        return said == label

    def rollback(self) -> dict[str, Any]:
        """Make ``previous`` current again (and the current one previous)."""
        with self._locked():
            current, previous = self.current_path(), self.previous_path()
            if previous is None:
                raise ModelError(f"no previous model to roll back to in {self.dir}; "
                                 "'feederd model ls' lists what is installed")
            self._point(CURRENT, previous.name)
            if current is not None:
                self._point(PREVIOUS, current.name)
            logger.info("rolled back from %s to %s", _version_of(current),
                        _version_of(previous))
            return {"current": _version_of(previous), "previous": _version_of(current),
                    "file": previous.name}

    def _point(self, link: str, target: str) -> None:
        """Swap ``link`` to ``target`` atomically: symlink under a temp name, then rename."""
        symlink(target, self.dir / link)

    def _prune(self) -> None:
        """Keep the newest ``keep`` versions besides ``current`` and ``previous``."""
        pinned = {self.current_target(), os.readlink(self.dir / PREVIOUS)
                  if (self.dir / PREVIOUS).is_symlink() else ""}
        files = sorted((p for p in self.dir.glob("*.onnx") if p.name not in pinned),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[self.keep:]:
            logger.info("removing old model file %s", old.name)
            old.unlink(missing_ok=True)

    def remove_stale(self) -> list[str]:
        """Remove the temporary files an interrupted install left; -> their names.

        A kill -9 or a power cut during ``model install`` leaves a partial copy (as large
        as the bundle) that nothing else would ever remove. Skipped while an install runs.
        """
        if not self.dir.is_dir():
            return []
        try:
            with self._locked(blocking=False):
                return remove_stale(self.dir)
        except BlockingIOError:
            logger.info("a model install is running; stale files in %s are left for later",
                        self.dir)
            return []

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def store_for(settings: Settings) -> ModelStore:
    """The device's store, comparing candidates on the spool's recent owner-labelled samples."""
    return ModelStore(settings.models_dir,
                      lambda: recent_labelled(settings.spool_dir, settings.spool),
                      threads=settings.classifier.threads,
                      min_confidence=settings.visits.min_confidence)


def recent_labelled(spool_dir: Path, cfg: SpoolConfig, limit: int = 200) -> list[tuple[bytes,
                                                                                         str]]:
    """The newest ``limit`` samples the owner labelled, as (JPEG bytes, label) pairs.

    Read-only (the daemon may be running); no spool yet means no samples.
    """
    from feederd.spool import Spool

    try:
        spool = Spool(spool_dir, cfg, writer=False)
    except SpoolError:
        return []
    try:
        found: collections.deque[Any] = collections.deque(maxlen=limit)
        since = 0
        while batch := spool.ls(since, 1000):
            found.extend(s for s in batch if s.label and s.label_source == "user")
            since = batch[-1].seq
        pairs = []
        for sample in found:
            with contextlib.suppress(OSError):
                pairs.append((spool.file(sample).read_bytes(), str(sample.label)))
        return pairs
    finally:
        spool.close()


def _decode(samples: Samples) -> tuple[list[np.ndarray], list[str]]:
    """Decode JPEGs; an undecodable sample is skipped (and logged), never fatal."""
    images: list[np.ndarray] = []
    labels: list[str] = []
    for data, label in samples:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("skipping an undecodable spool sample (%d bytes)", len(data))
            continue
        images.append(image)
        labels.append(label)
    return images, labels


def _probabilities(path: Path, images: list[np.ndarray],
                   threads: int) -> tuple[np.ndarray, Bundle]:
    """The model's probabilities on ``images``; the model is released on return."""
    from feederd.classifier import Classifier

    model = Classifier(path, threads)
    probs, _ = model.classify_batch(images)
    return probs, model.bundle


def _version_of(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return read_bundle(path).version
    except ModelError:
        return path.stem


def _safe(version: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", version).lstrip(".")
    return name or "model"


def _check_copy(source: Path, sha256: str) -> Callable[[Path], None]:
    """A check that the copy is the validated file (``source`` may change meanwhile)."""
    def check(copy: Path) -> None:
        if file_sha256(copy) != sha256:
            raise ModelError(f"{source} changed while it was being installed; copy it again")
    return check
