#!/usr/bin/env python3
"""Build the demo assets: a synthetic feeder clip and a tiny model trained on the same cartoons.

    python tools/make_demo_assets.py            # writes models/demo.onnx, models/demo-clip.mp4
    python tools/make_demo_assets.py --check    # rebuild in a temp dir, compare (tolerances)

Everything is drawn here with OpenCV primitives from a fixed seed: no downloads, no shared data,
so the outputs can ship under the project's own license. The clip shows a feeder tray, a branch
and sky; cartoon birds (cardinal, blue jay, goldfinch) fly in, hop about and leave, and one
grey-brown squirrel climbs onto the tray. The model (``labels: blue_jay, cardinal, goldfinch,
other``) has never seen the squirrel, so it calls it a bird with little confidence: the mistake
feederd exists to mine. It recognises these cartoons only, not real birds.

The renderer is importable (``render_scene``, ``VISITS``...) so tests can draw fresh examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feederd.bundle import InputSpec  # noqa: E402
from feederd.classifier import Classifier, resize_for_model, square_crop  # noqa: E402
from feederd.sync.build import write_metadata  # noqa: E402
from feederd.types import Box  # noqa: E402

logger = logging.getLogger("make_demo_assets")

SEED = 20240601
WIDTH, HEIGHT, FPS = 480, 360, 10
CREATED = "2024-06-01T00:00:00Z"  # fixed, so a rebuild is byte-identical
VERSION = "demo-1"
LABELS = ("blue_jay", "cardinal", "goldfinch", "other")
NEGATIVE_LABELS = ("other",)
INPUT = InputSpec(size=(64, 64), layout="NCHW", color="RGB", mean=(0.5, 0.5, 0.5),
                  std=(0.25, 0.25, 0.25), scale=1 / 255)
POOL = 8  # 64x64 input -> 8x8 cells of colour -> 192-d embedding
HEAD_C = 0.02  # inverse L2 strength of the logistic-regression head
NOISE_SIGMA = 2.0
TRAY_Y = 250  # feet of animals standing on the tray

Colour = tuple[int, int, int]  # BGR


# --------------------------------------------------------------------------- drawing


class Painter:
    """Draws each primitive on the image and on a mask, so every drawing knows its box."""

    def __init__(self, image: np.ndarray, x: float, y: float, scale: float, facing: int) -> None:
        self.image = image
        self.mask = np.zeros(image.shape[:2], np.uint8)
        self.x, self.y, self.s, self.d = x, y, scale, facing

    def at(self, dx: float, dy: float) -> tuple[int, int]:
        """Image point of an offset in animal units (facing right, feet at the origin)."""
        return round(self.x + self.d * dx * self.s), round(self.y + dy * self.s)

    def ellipse(self, dx: float, dy: float, ax: float, ay: float, angle: float,
                colour: Colour) -> None:
        centre = self.at(dx, dy)
        axes = (max(1, round(ax * self.s)), max(1, round(ay * self.s)))
        angle = angle if self.d > 0 else 180 - angle
        for target, value in ((self.image, colour), (self.mask, 255)):
            cv2.ellipse(target, centre, axes, angle, 0, 360, value, -1, cv2.LINE_AA)

    def poly(self, points: list[tuple[float, float]], colour: Colour) -> None:
        pts = np.array([self.at(px, py) for px, py in points], np.int32)
        for target, value in ((self.image, colour), (self.mask, 255)):
            cv2.fillPoly(target, [pts], value, cv2.LINE_AA)

    def line(self, a: tuple[float, float], b: tuple[float, float], colour: Colour,
             width: float) -> None:
        thickness = max(1, round(width * self.s))
        for target, value in ((self.image, colour), (self.mask, 255)):
            cv2.line(target, self.at(*a), self.at(*b), value, thickness, cv2.LINE_AA)

    def box(self) -> Box:
        x, y, w, h = cv2.boundingRect(self.mask)
        return Box(x, y, w, h)


@dataclass(frozen=True)
class Look:
    """A species' colours and markings."""

    body: Colour
    belly: Colour
    wing: Colour
    head: Colour
    beak: Colour
    size: float
    crest: bool = False
    mask: Colour | None = None  # cardinal's black face
    cap: Colour | None = None  # goldfinch's black forehead
    necklace: Colour | None = None  # blue jay's black collar
    bars: Colour | None = None  # wing bars


SPECIES: dict[str, Look] = {
    "cardinal": Look(body=(40, 30, 205), belly=(60, 50, 215), wing=(35, 25, 160),
                     head=(45, 35, 215), beak=(60, 140, 250), size=1.0, crest=True,
                     mask=(25, 20, 25)),
    "blue_jay": Look(body=(205, 120, 45), belly=(235, 232, 228), wing=(215, 135, 30),
                     head=(210, 125, 50), beak=(30, 30, 30), size=1.1, crest=True,
                     necklace=(25, 25, 30), bars=(245, 245, 245)),
    "goldfinch": Look(body=(30, 215, 245), belly=(60, 225, 245), wing=(25, 25, 30),
                      head=(30, 215, 245), beak=(140, 170, 235), size=0.8,
                      cap=(20, 20, 25), bars=(240, 240, 240)),
}


def draw_bird(image: np.ndarray, species: str, x: float, y: float, scale: float = 1.0,
              facing: int = 1, pose: str = "perch") -> Box:
    """A cartoon bird with its feet at (x, y); pose: perch, peck, wings_up, wings_down."""
    look = SPECIES[species]
    p = Painter(image, x, y, scale * look.size, facing)
    flying = pose.startswith("wings")
    p.poly([(-12, -16), (-30, -10), (-29, -4), (-10, -10)], look.wing)  # tail
    if not flying:
        p.line((-2, -6), (-3, 0), (40, 40, 60), 1.5)
        p.line((3, -6), (4, 0), (40, 40, 60), 1.5)
    p.ellipse(-1, -15, 16, 10, -15, look.body)
    p.ellipse(3, -11, 11, 6, -15, look.belly)
    _draw_wing(p, look, pose)
    hx, hy = (13, -17) if pose == "peck" else (11, -27)
    if look.crest:
        p.poly([(hx - 2, hy - 6), (hx - 12, hy - 13), (hx - 7, hy - 1)], look.head)
    p.ellipse(hx, hy, 8, 7.5, 0, look.head)
    if look.cap is not None:
        p.ellipse(hx + 1, hy - 4, 6, 3.5, 0, look.cap)
    if look.mask is not None:
        p.ellipse(hx + 5, hy + 1, 4.5, 4, 0, look.mask)
    if look.necklace is not None:
        p.ellipse(hx - 1, hy + 7, 8, 2, -10, look.necklace)
    p.poly([(hx + 6, hy - 2), (hx + 15, hy + 1), (hx + 6, hy + 4)], look.beak)
    p.ellipse(hx + 3, hy - 1, 1.6, 1.6, 0, (10, 10, 10))
    return p.box()


def _draw_wing(p: Painter, look: Look, pose: str) -> None:
    if pose == "wings_up":
        p.poly([(-8, -20), (4, -20), (-6, -44), (-16, -40)], look.wing)
        bar = ((-8, -28), (0, -30))
    elif pose == "wings_down":
        p.poly([(-8, -16), (4, -16), (-2, 2), (-12, 0)], look.wing)
        bar = ((-6, -8), (1, -8))
    else:
        p.ellipse(-5, -16, 11, 5.5, -15, look.wing)
        bar = ((-11, -16), (-1, -18))
    if look.bars is not None:
        p.line(bar[0], bar[1], look.bars, 1.3)


SQUIRREL_FUR: Colour = (110, 122, 145)
SQUIRREL_TAIL: Colour = (95, 118, 160)


def draw_squirrel(image: np.ndarray, x: float, y: float, scale: float = 1.0, facing: int = 1,
                  pose: str = "sit") -> Box:
    """A grey-brown cartoon squirrel, feet at (x, y); pose: sit (upright) or run."""
    p = Painter(image, x, y, scale, facing)
    if pose == "run":
        p.ellipse(-30, -18, 16, 9, 35, SQUIRREL_TAIL)
        p.ellipse(-40, -30, 10, 8, 70, SQUIRREL_TAIL)
        p.ellipse(0, -11, 20, 9, 0, SQUIRREL_FUR)
        p.ellipse(20, -15, 9, 7, 10, SQUIRREL_FUR)
        hx, hy = 20, -15
        p.ellipse(-12, -3, 6, 3, 0, SQUIRREL_FUR)
        p.ellipse(10, -3, 6, 3, 0, SQUIRREL_FUR)
    else:
        p.ellipse(-16, -22, 9, 22, -15, SQUIRREL_TAIL)
        p.ellipse(-12, -44, 9, 7, 30, SQUIRREL_TAIL)
        p.ellipse(0, -16, 11, 16, -10, SQUIRREL_FUR)
        p.ellipse(3, -13, 6, 9, -10, (170, 180, 190))  # pale belly
        hx, hy = 5, -36
        p.ellipse(hx, hy, 9, 7, 15, SQUIRREL_FUR)
        p.ellipse(8, -22, 4, 2.5, 0, SQUIRREL_FUR)  # paws
    p.poly([(hx - 4, hy - 5), (hx - 2, hy - 13), (hx + 1, hy - 5)], SQUIRREL_FUR)  # ear
    p.ellipse(hx + 4, hy - 1, 1.6, 1.6, 0, (10, 10, 10))
    p.ellipse(hx + 9, hy + 1, 1.2, 1.2, 0, (40, 40, 50))
    return p.box()


def draw_animal(image: np.ndarray, kind: str, x: float, y: float, scale: float = 1.0,
                facing: int = 1, pose: str = "perch") -> Box:
    """A bird of species ``kind``, or the squirrel; returns its bounding box."""
    if kind == "squirrel":
        return draw_squirrel(image, x, y, scale, facing, "run" if pose == "run" else "sit")
    return draw_bird(image, kind, x, y, scale, facing, pose)


# --------------------------------------------------------------------------- scene


def make_background(seed: int = SEED, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The empty feeder: sky, hedge, grass, a pole with a seed tray, a branch with leaves."""
    rng = np.random.default_rng(seed)
    sx, sy = width / WIDTH, height / HEIGHT
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, low = np.array([225, 175, 120], np.float32), np.array([240, 222, 200], np.float32)
    image = np.broadcast_to(top + (low - top) * rows, (height, width, 3)).copy()
    _texture(image, rng, 0, int(0.40 * height), (230, 238, 242), 0.5, 25,
             fade=True)  # clouds
    hedge_top = (0.45 + 0.05 * np.sin(np.linspace(0, 9, width)))[None, :] * height
    hedge = np.arange(height)[:, None] >= hedge_top
    image[hedge & (np.arange(height)[:, None] < 0.80 * height)] = (150, 195, 165)
    _texture(image, rng, int(0.40 * height), int(0.80 * height), (115, 165, 130), 0.6, 4,
             where=hedge)
    image[int(0.80 * height):] = (120, 185, 155)
    _texture(image, rng, int(0.80 * height), height, (90, 145, 120), 0.7, 2)
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    _draw_feeder(canvas, sx, sy, rng)
    _draw_branch(canvas, sx, sy)
    return canvas


def _texture(image: np.ndarray, rng: np.random.Generator, y0: int, y1: int, colour: Colour,
             strength: float, blur: float, where: np.ndarray | None = None,
             fade: bool = False) -> None:
    """Blend ``colour`` in with blurred noise (clouds, leaves, grass)."""
    noise = cv2.GaussianBlur(rng.random((y1 - y0, image.shape[1])).astype(np.float32),
                             (0, 0), blur)
    noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
    alpha = (np.clip(noise * 1.6 - 0.5, 0, 1) * strength)[:, :, None]
    if fade:
        alpha *= np.linspace(1, 0, y1 - y0, dtype=np.float32)[:, None, None]
    region = image[y0:y1]
    blended = region * (1 - alpha) + np.array(colour, np.float32) * alpha
    if where is not None:
        keep = where[y0:y1, :, None]
        blended = np.where(keep, blended, region)
    image[y0:y1] = blended


def _draw_feeder(canvas: np.ndarray, sx: float, sy: float, rng: np.random.Generator) -> None:
    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x * sx), round(y * sy)

    cv2.rectangle(canvas, pt(234, TRAY_Y), pt(246, 360), (85, 85, 90), -1)  # pole
    cv2.rectangle(canvas, pt(150, TRAY_Y), pt(330, TRAY_Y + 18), (150, 180, 205), -1)  # tray
    for grain in range(TRAY_Y + 3, TRAY_Y + 18, 4):  # wood grain
        cv2.line(canvas, pt(152, grain), pt(328, grain + 1), (128, 158, 185), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, pt(150, TRAY_Y - 3), pt(330, TRAY_Y), (135, 165, 190), -1)  # rim
    for _ in range(70):  # seeds heaped on the tray
        x, y = rng.uniform(160, 320), rng.uniform(TRAY_Y - 6, TRAY_Y - 2)
        colour = (40, 45, 50) if rng.random() < 0.5 else (90, 135, 170)
        cv2.ellipse(canvas, pt(x, y), (2, 1), rng.uniform(0, 180), 0, 360, colour, -1,
                    cv2.LINE_AA)


def _draw_branch(canvas: np.ndarray, sx: float, sy: float) -> None:
    points = [(-10, 100), (80, 92), (170, 80), (260, 72), (300, 64)]
    for (x0, y0), (x1, y1), width in zip(points, points[1:], (10, 9, 7, 5), strict=False):
        cv2.line(canvas, (round(x0 * sx), round(y0 * sy)), (round(x1 * sx), round(y1 * sy)),
                 (55, 75, 95), max(1, round(width * sy)), cv2.LINE_AA)
    for x, y, angle in ((120, 80, -30), (210, 66, 20), (280, 58, -50), (60, 86, 40)):
        cv2.ellipse(canvas, (round(x * sx), round(y * sy)), (round(9 * sx), round(4 * sy)),
                    angle, 0, 360, (50, 130, 60), -1, cv2.LINE_AA)


def branch_y(x: float) -> float:
    """Top of the branch at ``x`` (where a perched bird's feet are)."""
    xs, ys = [-10, 80, 170, 260, 300], [100, 92, 80, 72, 64]
    return float(np.interp(x, xs, ys)) - 4


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = NOISE_SIGMA
              ) -> np.ndarray:
    """Mild sensor noise."""
    noisy = image.astype(np.float32) + rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_scene(kind: str | None, rng: np.random.Generator, x: float = 240, y: float = TRAY_Y,
                 scale: float = 1.0, facing: int = 1, pose: str = "perch",
                 background: np.ndarray | None = None) -> tuple[np.ndarray, Box | None]:
    """A noisy frame with one animal (``None``: empty) and its box; for tests and training."""
    frame = (make_background() if background is None else background).copy()
    box = draw_animal(frame, kind, x, y, scale, facing, pose) if kind else None
    return add_noise(frame, rng), box


# --------------------------------------------------------------------------- the clip


@dataclass(frozen=True)
class Visit:
    """One scripted visit: who, when, and the key positions of the path (x, y, pose)."""

    kind: str
    start_s: float
    end_s: float
    path: tuple[tuple[float, float, str], ...]


_HOPS = ((-40, TRAY_Y, "wings_up"), (200, TRAY_Y, "perch"), (200, TRAY_Y, "peck"),
         (235, TRAY_Y, "perch"), (235, TRAY_Y, "peck"), (270, TRAY_Y, "perch"),
         (270, TRAY_Y, "peck"), (240, TRAY_Y, "perch"), (520, 120, "wings_up"))
VISITS: tuple[Visit, ...] = (
    Visit("cardinal", 5.0, 13.0, _HOPS),
    Visit("blue_jay", 18.0, 26.0, (
        (520, 40, "wings_up"), (170, branch_y(170), "perch"), (170, branch_y(170), "perch"),
        (290, TRAY_Y, "perch"), (290, TRAY_Y, "peck"), (230, TRAY_Y, "perch"),
        (230, TRAY_Y, "peck"), (-40, 60, "wings_up"))),
    Visit("goldfinch", 31.0, 38.0, tuple((520 - x, y, pose) for x, y, pose in _HOPS)),
    Visit("squirrel", 43.0, 51.0, (
        (520, 300, "run"), (330, 300, "run"), (300, TRAY_Y, "sit"), (260, TRAY_Y, "sit"),
        (260, TRAY_Y, "sit"), (200, TRAY_Y, "sit"), (200, TRAY_Y, "sit"), (140, 300, "run"),
        (-60, 300, "run"))),
)
CLIP_SECONDS = 55.0
CHECK_FRAMES = 4  # stills of the clip that every model is checked on


def pose_at(visit: Visit, t: float, frame_index: int) -> tuple[float, float, int, str] | None:
    """Where the animal of ``visit`` is at time ``t``: (x, y, facing, pose), or None."""
    if not visit.start_s <= t < visit.end_s:
        return None
    legs = len(visit.path) - 1
    u = (t - visit.start_s) / (visit.end_s - visit.start_s) * legs
    i = min(int(u), legs - 1)
    f = u - i
    (x0, y0, pose0), (x1, y1, pose1) = visit.path[i], visit.path[i + 1]
    x, y = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
    moving = abs(x1 - x0) + abs(y1 - y0) > 1
    if moving and y0 == y1 and pose0 in ("perch", "peck"):  # a hop on the tray
        y -= 18 * math.sin(math.pi * f)
    facing = 1 if x1 >= x0 else -1
    if not moving:
        facing = 1 if visit.path[min(i + 2, legs)][0] >= x0 else -1
        pose = pose0 if pose0 != "peck" or frame_index % 4 < 2 else "perch"
    elif pose0.startswith("wings") or pose1.startswith("wings"):
        pose = "wings_up" if frame_index % 2 else "wings_down"
    else:
        pose = pose0
    return x, y, facing, pose


def clip_frames(seed: int = SEED, seconds: float = CLIP_SECONDS) -> Iterator[np.ndarray]:
    """The demo clip's frames, BGR uint8, 480x360 at 10 fps."""
    rng = np.random.default_rng(seed + 1)
    background = make_background(seed)
    for index in range(round(seconds * FPS)):
        t = index / FPS
        frame = background.copy()
        for visit in VISITS:
            if (where := pose_at(visit, t, index)) is not None:
                x, y, facing, pose = where
                draw_animal(frame, visit.kind, x, y, 1.0, facing, pose)
        yield add_noise(frame, rng)


def write_check_frames(clip: Path, out: Path, count: int = CHECK_FRAMES) -> list[Path]:
    """Stills spread over the encoded ``clip`` (its artefacts included) as
    ``demo-clip-frame-<index>.jpg``: every model is checked on them before it serves, read as
    JPEG so that the daemon never decodes video for it (feederd.modelchain.clip_frames)."""
    capture = cv2.VideoCapture(str(clip))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    written = []
    for index in np.linspace(0, total - 1, count).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, image = capture.read()
        if not ok:
            raise RuntimeError(f"{clip}: cannot read frame {index}")
        path = out / f"demo-clip-frame-{index:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        written.append(path)
    capture.release()
    return written


def write_clip(path: Path, seed: int = SEED, seconds: float = CLIP_SECONDS) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MPEG-4 video here")
    for frame in clip_frames(seed, seconds):
        writer.write(frame)
    writer.release()
    tmp.replace(path)


# --------------------------------------------------------------------------- training data


def training_crops(rng: np.random.Generator, per_class: int
                   ) -> tuple[list[np.ndarray], list[str]]:
    """Crops like the daemon's: a jittered, expanded square around a motion-like box."""
    backgrounds = [make_background(SEED + k) for k in range(4)]
    crops: list[np.ndarray] = []
    labels: list[str] = []
    for label in LABELS:
        for _ in range(per_class):
            background = backgrounds[rng.integers(len(backgrounds))]
            crops.append(_example(label, background, rng))
            labels.append(label)
    return crops, labels


def _example(label: str, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    frame = background.copy()
    if label == "other" and rng.random() < 0.3:  # any patch of the scene
        side = int(rng.uniform(24, 220))
        left, top = int(rng.integers(0, WIDTH - side)), int(rng.integers(0, HEIGHT - side))
        box = Box(left, top, side, side)
        expand = 1.0
    else:  # where a bird would be, drawn only for the bird classes
        x, y, pose = _random_place(rng)
        species = label if label != "other" else str(rng.choice(list(SPECIES)))
        canvas = frame if label != "other" else frame.copy()
        box = draw_bird(canvas, species, x, y, rng.uniform(0.7, 1.4),
                        int(rng.choice([-1, 1])), pose)
        box = _jitter_box(box, rng)
        expand = rng.uniform(1.3, 2.2)
    crop = square_crop(frame, box, expand)
    return _jpeg(add_noise(_lighting(crop, rng), rng), rng)


def _random_place(rng: np.random.Generator) -> tuple[float, float, str]:
    where = rng.random()
    if where < 0.5:
        return rng.uniform(150, 330), TRAY_Y, str(rng.choice(["perch", "peck", "perch"]))
    if where < 0.7:
        x = rng.uniform(20, 290)
        return x, branch_y(x), "perch"
    return rng.uniform(20, 460), rng.uniform(60, 330), str(rng.choice(["wings_up",
                                                                     "wings_down"]))


def _jitter_box(box: Box, rng: np.random.Generator) -> Box:
    """Motion boxes are coarse: grown, shifted, sometimes the union with a previous position."""
    grow = rng.uniform(0.9, 1.5, 2)
    w, h = max(4, int(box.w * grow[0])), max(4, int(box.h * grow[1]))
    dx, dy = rng.normal(0, 0.12, 2) * (box.w, box.h)
    return Box(int(box.x + box.w / 2 - w / 2 + dx), int(box.y + box.h / 2 - h / 2 + dy), w, h)


def _lighting(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    return np.clip(frame.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _jpeg(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Compression artefacts like the clip's MPEG-4 and the spool's JPEGs."""
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    return frame if decoded is None else decoded


# --------------------------------------------------------------------------- the model


def embed(crops: list[np.ndarray]) -> np.ndarray:
    """The model's embedding computed in numpy: normalised RGB, 8x8 average pool, flattened."""
    out = np.empty((len(crops), 3 * POOL * POOL), np.float32)
    cells = INPUT.size[0] // POOL
    for index, crop in enumerate(crops):
        resized = resize_for_model(crop, INPUT.width, INPUT.height)
        rgb = resized[:, :, ::-1].astype(np.float32) * INPUT.scale
        x = (rgb - np.array(INPUT.mean, np.float32)) / np.array(INPUT.std, np.float32)
        pooled = x.reshape(POOL, cells, POOL, cells, 3).mean(axis=(1, 3))
        out[index] = pooled.transpose(2, 0, 1).reshape(-1)
    return out


def train(rng: np.random.Generator, per_class: int = 500
          ) -> tuple[LogisticRegression, dict[str, object], dict[str, int]]:
    """Fit the head on rendered crops; report held-out accuracy and per-class recall."""
    crops, labels = training_crops(rng, per_class)
    features, targets = embed(crops), np.array([LABELS.index(lab) for lab in labels])
    order = rng.permutation(len(targets))
    held = order[: len(order) // 5]
    fit = order[len(order) // 5:]
    model = LogisticRegression(C=HEAD_C, max_iter=3000)
    model.fit(features[fit], targets[fit])
    predicted = model.predict(features[held])
    recall = {lab: float(np.mean(predicted[targets[held] == i] == i))
              for i, lab in enumerate(LABELS)}
    metrics: dict[str, object] = {
        "accuracy": round(float(np.mean(predicted == targets[held])), 4),
        "recall": {k: round(v, 4) for k, v in recall.items()},
        "held_out": len(held),
        "data": "synthetic cartoon crops rendered by tools/make_demo_assets.py",
    }
    trained_on = {lab: int(np.sum(targets[fit] == i)) for i, lab in enumerate(LABELS)}
    model.fit(features, targets)  # the shipped head sees every example
    return model, metrics, trained_on


def build_model(head: LogisticRegression) -> onnx.ModelProto:
    """input (N,3,64,64) -> AveragePool 8 -> Flatten = embedding -> Gemm -> Softmax = probs."""
    cells = INPUT.size[0] // POOL
    weights = numpy_helper.from_array(head.coef_.T.astype(np.float32), "head_weights")
    bias = numpy_helper.from_array(head.intercept_.astype(np.float32), "head_bias")
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[cells, cells],
                         strides=[cells, cells]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
        helper.make_node("Gemm", ["embedding", "head_weights", "head_bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "feederd-demo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *INPUT.size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(LABELS)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                       ["N", 3 * POOL * POOL])],
        [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="feederd tools/make_demo_assets.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(path: Path, seed: int = SEED) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    head, metrics, trained_on = train(rng)
    model = build_model(head)
    write_metadata(model, {
        "labels": list(LABELS), "negative_labels": list(NEGATIVE_LABELS),
        "input": INPUT.as_dict(), "version": VERSION, "parent_version": None,
        "created": CREATED, "trained_on": trained_on, "metrics": metrics,
    })
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return metrics


def clip_report(model: Path, clip: Path) -> dict[str, list[str]]:
    """What the model says per visit of the clip, on the boxes the renderer knows."""
    classifier = Classifier(model, threads=1)
    capture = cv2.VideoCapture(str(clip))
    report: dict[str, list[str]] = {}
    background = make_background()
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        for visit in VISITS:
            if (where := pose_at(visit, index / FPS, index)) is not None:
                x, y, facing, pose = where
                box = draw_animal(background.copy(), visit.kind, x, y, 1.0, facing, pose)
                if box.w and box.h and index % 5 == 0:
                    prediction, _ = classifier.classify(frame, box, 1.6)
                    report.setdefault(visit.kind, []).append(
                        f"{prediction.label}:{prediction.confidence:.2f}")
        index += 1
    return report


def write_truth(path: Path) -> None:
    """Who visits when: ``feederd demo`` marks the alert this script made wrong (the squirrel)."""
    visits = [{"kind": v.kind, "start_s": v.start_s, "end_s": v.end_s} for v in VISITS]
    path.write_text(json.dumps({"seconds": CLIP_SECONDS, "visits": visits}, indent=1) + "\n")


ASSETS = ("demo.onnx", "demo-clip.mp4", "demo-clip.json", "demo-clip-frame-000.jpg",
          "demo-clip-frame-183.jpg", "demo-clip-frame-366.jpg", "demo-clip-frame-549.jpg")
# Other numpy / scikit-learn / OpenCV releases round differently: the head's weights moved by
# 0.009 between numpy 1.26 and 2.4. Within these the assets behave the same.
WEIGHT_ATOL = 0.05
PIXEL_MAE = 2.0


def build(out: Path) -> dict[str, int]:
    """Write the assets into ``out``, log what the model says of the clip; sizes in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = write_model(out / "demo.onnx")
    logger.info("model metrics: %s", metrics)
    write_clip(out / "demo-clip.mp4")
    write_check_frames(out / "demo-clip.mp4", out)
    write_truth(out / "demo-clip.json")
    for kind, answers in clip_report(out / "demo.onnx", out / "demo-clip.mp4").items():
        logger.info("%-9s %s", kind, " ".join(answers))
    sizes = {name: (out / name).stat().st_size for name in ASSETS}
    logger.info("wrote %s: %s bytes", out, sizes)
    return sizes


def model_differences(built: Path, committed: Path) -> list[str]:
    """Same graph and metadata, weights within WEIGHT_ATOL, same labels on the clip."""
    a, b = onnx.load(str(built)), onnx.load(str(committed))
    problems = []
    if [n.op_type for n in a.graph.node] != [n.op_type for n in b.graph.node]:
        problems.append("demo.onnx: the graphs differ")
    if {p.key: p.value for p in a.metadata_props if p.key != "feederd.metrics"} != \
            {p.key: p.value for p in b.metadata_props if p.key != "feederd.metrics"}:
        problems.append("demo.onnx: the metadata differs")
    weights = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    for init in a.graph.initializer:
        mine, theirs = numpy_helper.to_array(init), weights.get(init.name)
        if theirs is None or mine.shape != theirs.shape:
            problems.append(f"demo.onnx: initializer {init.name} differs in shape")
        elif not np.allclose(mine, theirs, atol=WEIGHT_ATOL):
            problems.append(f"demo.onnx: {init.name} differs by up to "
                            f"{float(np.abs(mine - theirs).max()):.3f} (> {WEIGHT_ATOL})")
    return problems


def clip_differences(built: Path, committed: Path) -> list[str]:
    """Byte-identical, or the same frames within PIXEL_MAE grey levels (another encoder)."""
    if built.read_bytes() == committed.read_bytes():
        return []
    mine, theirs = cv2.VideoCapture(str(built)), cv2.VideoCapture(str(committed))
    worst, frames = 0.0, 0
    while True:
        ok_a, a = mine.read()
        ok_b, b = theirs.read()
        if ok_a != ok_b:
            return ["demo-clip.mp4: the clips have different lengths"]
        if not ok_a:
            break
        frames += 1
        worst = max(worst, float(np.abs(a.astype(np.int16) - b).mean()))
    logger.info("demo-clip.mp4: %d frames, worst mean difference %.2f grey levels", frames,
                worst)
    return [] if worst <= PIXEL_MAE else [f"demo-clip.mp4: frames differ by {worst:.2f} "
                                          f"grey levels on average (> {PIXEL_MAE})"]


def differences(built: Path, committed: Path) -> list[str]:
    missing = [f"{name}: missing in {committed}" for name in ASSETS
               if not (committed / name).is_file()]
    if missing:
        return missing
    problems = model_differences(built / "demo.onnx", committed / "demo.onnx")
    problems += clip_differences(built / "demo-clip.mp4", committed / "demo-clip.mp4")
    if (built / "demo-clip.json").read_text() != (committed / "demo-clip.json").read_text():
        problems.append("demo-clip.json: the script of the clip differs")
    labels = [clip_report(d / "demo.onnx", committed / "demo-clip.mp4") for d in (built,
                                                                                 committed)]
    if [[a.split(":")[0] for a in v] for v in labels[0].values()] != \
            [[a.split(":")[0] for a in v] for v in labels[1].values()]:
        problems.append("demo.onnx: the rebuilt model labels the clip differently")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models", help="output folder")
    parser.add_argument("--check", action="store_true", help="build in a temporary folder and "
                        "report whether the outputs match the ones in --out (within the "
                        "tolerances above)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.check:
        build(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        problems = differences(Path(tmp), args.out)
    for problem in problems:
        logger.error("%s", problem)
    logger.info("matches %s: %s", args.out, not problems)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
