"""The device's view of a photo: train and evaluate on what the classifier really sees.

A frame the device mines is not a photo: it is the square crop of a camera frame around the
motion box (grown by ``classifier.crop_expand``), JPEG-encoded at ``mining.jpeg_quality``, and
only then resized to the model input. Base photos are tightly framed and never JPEG'd twice. A
head trained on base photos plus mined device frames can learn "looks like a device frame"
as the mark of the field-negative class, and a gate that tests on raw photos cannot see the
cost: species lose recall on the device while the report says nothing changed (issue 16: crow
0.858 -> 0.809 on device frames, unchanged on photos).

So every base photo (and every extra test photo) is rendered as the device would see it
before it is embedded, with the device's own functions: the photo is scaled into a frame of
the camera's size on the plain grey of an empty feeder (:func:`feederd.capture.folder.fit_image`
and :func:`~feederd.capture.folder.place`, as the image-folder replay shows it), the real
:class:`~feederd.motion.MotionDetector` finds its box against the empty frame,
:func:`feederd.classifier.square_crop` cuts the crop the classifier gets, and the crop goes
through the JPEG encoding a mined sample has. The model-input resize is the classifier's own
(:func:`feederd.classifier.resize_for_model`), applied by the embedder as for any image.

``domain = "photo"`` keeps the old recipe (raw photos), for comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from feederd.capture.folder import BACKGROUND_GREY, fit_image, place
from feederd.classifier import square_crop
from feederd.config import MotionConfig
from feederd.motion import MotionDetector, downscale_grey
from feederd.sync.config import ViewConfig
from feederd.sync.dataset import BundleRunner, Item, Progress, VectorCache
from feederd.sync.workspace import Workspace
from feederd.types import Box, Frame

logger = logging.getLogger(__name__)

Render = Callable[[np.ndarray], np.ndarray]


def renderer(view: ViewConfig) -> Render | None:
    """The function turning a decoded photo into a device frame; None for raw photos."""
    if view.domain == "photo":
        return None
    return DeviceView(view).render


def view_key(view: ViewConfig) -> str:
    """Identity of the rendering, for cache keys: '' for raw photos."""
    if view.domain == "photo":
        return ""
    text = json.dumps(view.model_dump(), sort_keys=True)
    return "view:" + hashlib.sha256(text.encode()).hexdigest()[:16]


class DeviceView:
    """Renders photos as device frames; thread-safe (each call has its own detector)."""

    def __init__(self, view: ViewConfig) -> None:
        self.view = view
        self._motion = MotionConfig()
        self._empty = np.full((view.height, view.width, 3), BACKGROUND_GREY, np.uint8)
        self._empty_grey = downscale_grey(self._empty, self._motion.height)

    def render(self, photo: np.ndarray) -> np.ndarray:
        """The JPEG-decoded crop the device would store for ``photo`` (BGR)."""
        view = self.view
        picture = fit_image(photo, view.width, view.height, view.fill)
        frame = place(self._empty.copy(), picture)
        box = self.motion_box(frame) if view.crop == "motion" else None
        crop = square_crop(frame, box, view.crop_expand)
        return jpeg_roundtrip(crop, view.jpeg_quality)

    def motion_box(self, frame: np.ndarray) -> Box | None:
        """Where the device's motion gate sees the photo arrive on the empty feeder."""
        detector = MotionDetector(self._motion)
        detector.detect(Frame(0, 0.0, 0.0, self._empty, self._empty_grey))
        grey = downscale_grey(frame, self._motion.height)
        return detector.detect(Frame(1, 0.1, 0.0, frame, grey)).box


def empty_scenes(view: ViewConfig, count: int, seed: int = 0) -> list[np.ndarray]:
    """What the device classifies when nothing is there: crops of the empty feeder.

    A visit does not end when the animal leaves: the frames after it still differ from the
    background, so the classifier sees the motion box on the empty feeder (and lighting
    changes move the whole frame). A base dataset of bird photos never shows that, and a head
    trained on it may call the empty feeder a species on every visit. These crops (the
    empty frame at lighting levels from 0.7x to 1.3x, boxes of an animal's sizes anywhere in
    the frame, sensor noise, the device's crop and JPEG) train as nothing of interest.
    """
    rng = np.random.default_rng(seed)
    scenes = []
    for n in range(count):
        level = BACKGROUND_GREY * (0.7 + 0.6 * n / max(1, count - 1))
        noise = rng.normal(0, 2.0, (view.height, view.width, 1))
        frame = np.clip(level + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
        side = int(rng.uniform(0.2, 0.8) * min(view.width, view.height))
        x, y = int(rng.integers(0, view.width - side)), int(rng.integers(0, view.height - side))
        box = Box(x, y, side, side) if view.crop == "motion" else None
        scenes.append(jpeg_roundtrip(square_crop(frame, box, view.crop_expand),
                                     view.jpeg_quality))
    return scenes


def _flip(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def _zoom(image: np.ndarray, share: float = 0.8) -> np.ndarray:
    """The centre ``share`` of the crop: the animal a little nearer the camera."""
    height, width = image.shape[:2]
    h, w = max(1, round(height * share)), max(1, round(width * share))
    top, left = (height - h) // 2, (width - w) // 2
    return np.ascontiguousarray(image[top:top + h, left:left + w])


AUGMENTS: dict[str, Render] = {"flip": _flip, "zoom": _zoom}
"""Label-preserving variants of a device frame, trained beside it (``training.augment``): a
squirrel seen once at the feeder also comes facing the other way and a little nearer."""


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` as a mined sample stores it: JPEG at ``quality``, decoded again."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} image as JPEG")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return np.asarray(decoded)


def embedders(workspace: Workspace, setup: Mapping[str, Any], view: ViewConfig,
              cache: VectorCache, threads: int, batch_size: int
              ) -> tuple[BundleRunner, BundleRunner]:
    """(photos, device frames): the workspace's embedder run on rendered base or test photos,
    and on pulled samples as they are (they already are device frames)."""
    path = workspace.dir / setup["embedder"]
    key = str(setup["embedder_key"])
    frames = BundleRunner(path, cache, key, "embedding", threads, batch_size)
    if view.domain == "photo":
        return frames, frames
    photos = BundleRunner(path, cache, f"{key}|{view_key(view)}", "embedding", threads,
                          batch_size, renderer(view))
    return photos, frames


def augmented(names: Sequence[str], rendered: BundleRunner, frames: BundleRunner,
              train_items: Sequence[Item], mined: Sequence[Item], bar: Progress | None
              ) -> tuple[dict[str, list[np.ndarray]], int]:
    """Embeddings of the augmented variants (``names``, see ``training.augment``) of every
    training image (base photos rendered first) by item key, and how many were computed.

    A reply teaches one frame of one squirrel; its mirror image and a nearer crop are the
    same squirrel. The base photos get the same variants, so augmentation never becomes
    the mark of the field class."""
    photos = [i for i in train_items if i.source == "base"]
    out: dict[str, list[np.ndarray]] = {}
    computed = 0
    for name in names:
        for runner, group in ((rendered, photos), (frames, mined)):
            if not group:
                continue
            derived = runner.derived(f"aug:{name}", AUGMENTS[name])
            x, _ = derived.vectors([i.path for i in group], bar)
            computed += derived.computed
            for item, vector in zip(group, x, strict=True):
                out.setdefault(item.key, []).append(vector)
    return out, computed
