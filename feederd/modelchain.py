"""Which model the daemon serves: a damaged one never keeps the feeder down.

Candidates, in order: the configured ``classifier.model`` (alone: a bundle the owner names is
used or refused, exit 2), else the installed ``current``, then ``previous``, then the model
shipped with feederd (:func:`feederd.assets.default_model_path`). Each is loaded in full and
checked on *real* frames as well as the synthetic test images (:func:`real_frames`): a model
can be finite on a grey and a noise image and NaN on a feeder. A refused candidate is logged
as an error and the next one tried; the one that serves says why it serves in
:meth:`Choice.describe`, which goes to the retained ``model`` topic and the health file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from feederd.assets import DEMO_CLIP, check_frame_paths, default_model_path
from feederd.classifier import Classifier
from feederd.errors import FeederError, ModelError
from feederd.modelstore import PREVIOUS, store_for

if TYPE_CHECKING:
    from feederd.config import Settings

logger = logging.getLogger(__name__)

SPOOL_SAMPLES = 8
Frames = Sequence[tuple[str, np.ndarray]]


@dataclass(frozen=True)
class Choice:
    """The model that serves, where it came from, and why the candidates before it did not."""

    classifier: Classifier
    source: str  # "configured", "current", "previous" or "bundled"
    refused: tuple[str, ...] = ()

    @property
    def fallback(self) -> str:
        """Empty when the first candidate serves, else what was refused and why."""
        return "; ".join(self.refused)

    def describe(self) -> dict[str, Any]:
        """The bundle's description plus ``source`` and, after a fallback, ``fallback``."""
        info = self.classifier.bundle.describe()
        info["source"] = self.source
        if self.refused:
            info["fallback"] = self.fallback
        return info


def candidates(settings: Settings) -> list[tuple[str, Path]]:
    """(source, path) in the order they are tried; see the module docstring."""
    if settings.classifier.model:
        return [("configured", Path(settings.classifier.model).expanduser())]
    store = store_for(settings)
    found: list[tuple[str, Path]] = []
    if target := store.current_target():
        found.append(("current", store.dir / target))
    with contextlib.suppress(OSError):
        found.append(("previous", store.dir / os.readlink(store.dir / PREVIOUS)))
    found.append(("bundled", default_model_path()))
    seen: set[Path] = set()
    unique = []
    for source, path in found:
        if path.absolute() not in seen:
            seen.add(path.absolute())
            unique.append((source, path))
    return unique


def load_model(settings: Settings, *, skip: Collection[Path] = (),
               frames: Frames | None = None,
               load: Callable[[Path], Classifier] | None = None) -> Choice:
    """The first candidate that loads and passes on real frames; raises ModelError if none.

    ``skip``: files known to be faulty (non-finite outputs at run time); ``load``: how the
    daemon builds a classifier from a file (default: with the configured threads only).
    """
    load = load or (lambda path: Classifier(path, settings.classifier.threads))
    frames = real_frames(settings) if frames is None else frames
    refused: list[str] = []
    for source, path in candidates(settings):
        if path.absolute() in {p.absolute() for p in skip}:
            refused.append(f"{source} model {path.name} gave non-finite outputs on frames")
            continue
        try:
            classifier = load(path)
            classifier.check_on(frames)
        except ModelError as exc:
            if source == "configured":
                raise
            refused.append(f"{source} model refused: {exc}")
            logger.error("%s model %s refused (%s); trying the next", source, path, exc)
            continue
        if refused:
            logger.error("serving the %s model %s instead: %s", source,
                         classifier.bundle.version, "; ".join(refused))
        return Choice(classifier, source, tuple(refused))
    raise ModelError("no usable model: " + "; ".join(refused))


def real_frames(settings: Settings | None = None, *, spool: bool = True) -> list[tuple[str,
                                                                                      np.ndarray]]:
    """A few frames of the bundled clip and, if ``spool``, the newest spool samples."""
    frames = clip_frames()
    if spool and settings is not None:
        frames.extend(spool_frames(settings))
    return frames


def clip_frames() -> list[tuple[str, np.ndarray]]:
    """Stills of the bundled clip (:func:`feederd.assets.check_frame_paths`), read as JPEG
    without FFmpeg; none if they cannot be read: then only the synthetic checks run, which is
    what a damaged install gets anyway."""
    frames = []
    for path in check_frame_paths():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            frames.append((f"frame {int(path.stem.rsplit('-', 1)[-1])} of {DEMO_CLIP}", image))
    return frames


def spool_frames(settings: Settings, count: int = SPOOL_SAMPLES) -> list[tuple[str, np.ndarray]]:
    """The newest samples of the spool (read-only; none if there is no usable spool)."""
    from feederd.spool import Spool

    try:
        with Spool(settings.spool_dir, settings.spool, writer=False) as store:
            newest = store.ls(max(0, store.last_seq - 4 * count), 4 * count)[-count:]
            files = [(s.id, store.file(s)) for s in newest]
    except (FeederError, OSError):
        return []
    frames = []
    for sample_id, file in files:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is not None:
            frames.append((f"spool sample {sample_id}", image))
    return frames
