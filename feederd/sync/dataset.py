"""Training data: the base image folder, the labelled mined samples, and cached vectors.

The base dataset is an image folder, one sub-folder per label (``<label>/*.jpg``, nested
folders allowed, symlinks followed). Its held-out split is a pure function of the seed and each
file's path inside the folder, so ``init``, ``train`` and ``evaluate`` agree on it without
storing it, and adding photos later moves few others.

Backbone embeddings (and a bundle's probabilities) are cached in SQLite by the SHA-256 of the
image file's bytes, so a retrain after a pull embeds only the new images. The embedding model
is the bundle itself run by :class:`feederd.classifier.Classifier`, so training sees exactly
the preprocessing the device applies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from feederd.errors import SyncError
from feederd.mining.decisions import FALSE_POSITIVE_REASONS
from feederd.sync.samples import SampleIndex, training_label
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class Item:
    """One training or evaluation image. ``key`` names it stably (split, reports)."""

    path: Path
    label: str
    source: str  # "base", "mined" or "extra"
    key: str
    sample: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


def scan_folder(root: Path, source: str = "base") -> list[Item]:
    """Every image under ``root/<label>/``, sorted; SyncError when there are none."""
    root = root.expanduser()
    if not root.is_dir():
        raise SyncError(f"{root}: no such dataset folder; it must hold one sub-folder per "
                        "label with the images in it")
    items: list[Item] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if label_dir.name.startswith("."):
            continue
        for path in _images(label_dir):
            items.append(Item(path, label_dir.name, source, path.relative_to(root).as_posix()))
    if not items:
        raise SyncError(f"{root}: no images found; expected <label>/<image>.jpg")
    return items


def scan_images(root: Path, label: str, source: str = "extra") -> list[Item]:
    """Every image under ``root`` with one label (a folder of field negatives, say)."""
    if not root.is_dir():
        raise SyncError(f"{root}: no such image folder")
    items = [Item(p, label, source, f"{source}:{p.relative_to(root).as_posix()}")
             for p in _images(root)]
    if not items:
        raise SyncError(f"{root}: no images found")
    return items


def _images(folder: Path) -> list[Path]:
    found = []
    for base, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(base) / f for f in sorted(files)
                  if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")]
    return found


def split(items: Sequence[Item], holdout: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(train, test): per label, the ``holdout`` share with the smallest seeded key hash.

    Every label keeps at least one training image.
    """
    by_label: dict[str, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    train: list[Item] = []
    test: list[Item] = []
    for group in by_label.values():
        ranked = sorted(group, key=lambda i: _rank(seed, i.key))
        cut = min(round(len(ranked) * holdout), len(ranked) - 1)
        test += ranked[:cut]
        train += ranked[cut:]
    return train, test


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def mined_items(workspace: Workspace, use_pseudo: bool = False) -> list[Item]:
    """Pulled samples that have a training label (the owner's, or reviewed)."""
    with contextlib.closing(workspace.index()) as index:
        return _mined(workspace, index, use_pseudo)


def _mined(workspace: Workspace, index: SampleIndex, use_pseudo: bool) -> list[Item]:
    items = []
    for sample in index.all():
        label = training_label(sample, use_pseudo)
        if label:
            items.append(Item(workspace.dir / sample["file"], label, "mined",
                              f"sample:{sample['id']}:{sample['sha256'][:16]}", sample))
    return items


def device_positives(workspace: Workspace, species: Collection[str], confidence: float,
                     weak_after_s: float, now: float | None = None) -> list[Item]:
    """The owner's own positives from the device, for the gate's second recall test.

    Pulled samples whose training label is a species (replied ``correct``, corrected, or so
    reviewed), plus *weak* positives: frames the device said a species for (at least
    ``confidence``) that nobody rejected or labelled for ``weak_after_s`` seconds, in visits
    the owner never answered. Weak items carry ``sample["weak"] = True``.
    """
    with contextlib.closing(workspace.index()) as index:
        samples = index.all()
    answered = {s["visit_id"] for s in samples if training_label(s) or s.get("review_source")}
    now = time.time() if now is None else now
    items = []
    for sample in samples:
        label = training_label(sample)
        if label is None and sample["visit_id"] not in answered and \
                _weak(sample, species, confidence, now - weak_after_s):
            label, sample = str(sample["predicted"]), {**sample, "weak": True}
        if label is not None and label in species:
            items.append(Item(workspace.dir / sample["file"], label, "mined",
                              f"sample:{sample['id']}:{sample['sha256'][:16]}", sample))
    return items


def _weak(sample: Mapping[str, Any], species: Collection[str], confidence: float,
          before: float) -> bool:
    probs = sample.get("probs") or {}
    predicted = sample.get("predicted")
    return (predicted in species and float(sample.get("time") or before + 1) <= before
            and not FALSE_POSITIVE_REASONS.intersection(sample.get("reasons") or [])
            and float(probs.get(predicted, 0.0)) >= confidence)


# --- the embedder ---------------------------------------------------------------------------

PREPROCESS = {
    # Caffe-style ImageNet models (SqueezeNet 1.1 of the ONNX zoo): BGR, 0-255, minus means.
    "caffe": {"color": "BGR", "mean": (104.0, 117.0, 123.0), "std": (1.0, 1.0, 1.0),
              "scale": 1.0},
    # torchvision-style: RGB in 0-1, ImageNet mean and std.
    "rgb": {"color": "RGB", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "scale": 1.0 / 255.0},
    # the RGB pixels as they are: a model with a uint8 input that quantizes them itself
    # (the shipped AIY Birds V1 bundle, models/aiy_birds_v1.onnx, embedding output "embedding")
    "pixels": {"color": "RGB", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "scale": 1.0},
}


def input_spec_for(backbone: Path, preprocess: str) -> Any:
    """The InputSpec of ``backbone``: its input size and layout, the chosen preprocessing."""
    import onnx

    from feederd.bundle import InputSpec

    try:
        model = onnx.load(str(backbone), load_external_data=False)
    except FileNotFoundError as exc:
        raise SyncError(f"{backbone}: no such backbone model") from exc
    except Exception as exc:  # protobuf decode errors
        raise SyncError(f"{backbone}: not a readable ONNX model ({exc})") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise SyncError(f"{backbone}: expected one image input, found "
                        f"{[i.name for i in inputs]}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise SyncError(f"{backbone}: input shape {dims} is not NCHW or NHWC with 3 channels")
    layout = "NCHW" if dims[1] == 3 else "NHWC"
    size = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    if not all(size):
        raise SyncError(f"{backbone}: the input has no fixed height and width ({dims}); "
                        "export it with a fixed image size")
    p = PREPROCESS[preprocess]
    return InputSpec(size, layout, p["color"], p["mean"], p["std"], p["scale"])  # type: ignore[arg-type]


def embedder_key(backbone: Path, tensor: str, spec: dict[str, Any]) -> str:
    """Identity of the embedding function: backbone bytes, tensor, preprocessing."""
    digest = hashlib.sha256()
    with backbone.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(tensor.encode())
    digest.update(json.dumps(spec, sort_keys=True).encode())
    return "emb:" + digest.hexdigest()[:32]


# --- the vector cache -------------------------------------------------------------------------

class VectorCache:
    """float32 vectors by (model key, image SHA-256) in SQLite (WAL): embeddings, probs."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, "
                         "sha256 TEXT NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (model, sha256))")

    def close(self) -> None:
        self._db.close()

    def get(self, model: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(shas))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for sha, blob in self._db.execute(
                    f"SELECT sha256, vec FROM vectors WHERE model = ? AND sha256 IN ({marks})",
                    (model, *chunk)):
                found[sha] = np.frombuffer(blob, np.float32)
        return found

    def put(self, model: str, vectors: Mapping[str, np.ndarray]) -> None:
        rows = [(model, sha, np.ascontiguousarray(v, np.float32).tobytes())
                for sha, v in vectors.items()]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def count(self, model: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", (model,))
        return int(row.fetchone()[0])


def file_sha256(path: Path) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SyncError(f"{path}: cannot read image: {exc.strerror}") from exc


def _decode(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(_read(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SyncError(f"{path}: not a readable image; remove it from the dataset")
    return image


def _load(path: Path, render: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    image = _decode(path)
    return image if render is None else render(image)


Progress = Callable[[int], None]


class BundleRunner:
    """Runs one bundle over image files with a cache; decoding overlaps inference.

    ``output`` is ``"embedding"`` (backbone features) or ``"probs"``; ``key`` names what the
    cached vectors are (the embedder's identity, or a bundle's SHA-256). ``render`` turns each
    decoded image into what the model is shown (a device frame, see
    :mod:`feederd.sync.domain`); its identity must then be part of ``key``.
    """

    def __init__(self, bundle: Path, cache: VectorCache, key: str, output: str = "embedding",
                 threads: int = 2, batch_size: int = 16,
                 render: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        from feederd.classifier import Classifier

        self.classifier = Classifier(bundle, threads)
        if output == "embedding" and not self.classifier.has_embedding:
            raise SyncError(f"{bundle}: the model has no 'embedding' output to train on")
        self.cache = cache
        self.key = key
        self.output = output
        self.batch_size = batch_size
        self.render = render
        self.computed = 0

    def for_output(self, output: str, key: str) -> BundleRunner:
        """The same loaded model and cache, giving ``output`` cached under ``key``."""
        if output == "embedding" and not self.classifier.has_embedding:
            raise SyncError("the model has no 'embedding' output to train on")
        runner = copy.copy(self)
        runner.output, runner.key, runner.computed = output, key, 0
        return runner

    def derived(self, name: str, transform: Callable[[np.ndarray], np.ndarray]
                ) -> BundleRunner:
        """The same model and cache on ``transform`` of what this runner shows it (an
        augmented copy of every image, say); ``name`` joins the cache key."""
        inner = self.render
        runner = copy.copy(self)
        runner.key = f"{self.key}|{name}"
        runner.render = transform if inner is None else lambda image: transform(inner(image))
        runner.computed = 0
        return runner

    def vectors(self, paths: Sequence[Path], progress: Progress | None = None
                ) -> tuple[np.ndarray, list[str]]:
        """Vectors (N x D) for ``paths`` in order, and each file's SHA-256."""
        shas = [file_sha256(p) for p in paths]
        known = self.cache.get(self.key, shas)
        missing = list({sha: p for sha, p in zip(shas, paths, strict=True)
                        if sha not in known}.items())
        if progress and len(paths) - len(missing):
            progress(len(paths) - len(missing))
        for fresh in self._compute(missing, progress):
            self.cache.put(self.key, fresh)
            known.update(fresh)
        if not shas:
            return np.zeros((0, 0), np.float32), []
        return np.stack([known[sha] for sha in shas]), shas

    def _compute(self, missing: list[tuple[str, Path]], progress: Progress | None
                 ) -> Iterator[dict[str, np.ndarray]]:
        batches = [missing[i:i + self.batch_size]
                   for i in range(0, len(missing), self.batch_size)]
        for batch, images in zip(batches, _prefetch(batches, self.render), strict=True):
            probs, embedding = self.classifier.classify_batch(images, len(images))
            out = embedding if self.output == "embedding" else probs
            assert out is not None  # checked in __init__
            self.computed += len(batch)
            if progress:
                progress(len(batch))
            yield {sha: out[i] for i, (sha, _) in enumerate(batch)}


def _prefetch(batches: Sequence[Sequence[tuple[str, Path]]],
              render: Callable[[np.ndarray], np.ndarray] | None = None
              ) -> Iterator[list[np.ndarray]]:
    """Decoded (and rendered) batches, up to PREFETCH_BATCHES ahead in worker threads
    (cv2 releases the GIL, so JPEG decoding overlaps onnxruntime's inference)."""
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        pending: list[list[Future[np.ndarray]]] = []
        for index in range(len(batches)):
            while len(pending) <= PREFETCH_BATCHES and index + len(pending) < len(batches):
                nxt = batches[index + len(pending)]
                pending.append([pool.submit(_load, path, render) for _, path in nxt])
            current = pending.pop(0)
            yield [future.result() for future in current]


def embed_items(runner: BundleRunner, items: Sequence[Item],
                progress: Progress | None = None) -> np.ndarray:
    x, _ = runner.vectors([item.path for item in items], progress)
    return x


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[Progress | None]:
    """A tqdm bar on a terminal; nothing under scripts, cron or systemd."""
    if not enabled or total == 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=" img", leave=False) as bar:
        yield bar.update
