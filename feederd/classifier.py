"""The classifier stage: an onnxruntime session plus the preprocessing its bundle asks for.

With :mod:`feederd.onnx_session` (which opens the session: memory mapping, thread and CPU-flag
options) this is the only module that imports onnxruntime. A :class:`Classifier` refuses a
bundle that would misbehave later (wrong shapes, labels not matching the outputs, NaN on a test
input) at load time, with a message naming the problem, so that ``feederd model install`` can
keep the running model serving. The hot path (:meth:`Classifier.classify`) is a crop, a resize
into a reused buffer, a bare ``session.run`` and a top-k: it adds well under 10% to the
inference on real models (``tools/bench/classifier_bench.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from feederd.bundle import Bundle, InputSpec, file_sha256, parse_metadata
from feederd.errors import ModelError
from feederd.onnx_session import open_session
from feederd.task import Task
from feederd.types import Box, Prediction

logger = logging.getLogger(__name__)

PROBS = "probs"
EMBEDDING = "embedding"
MIN_CROP_PX = 8
PROB_SUM_TOLERANCE = 1e-3


class Classifier:
    """One loaded, validated bundle. Not thread-safe: :meth:`prepare` reuses one buffer."""

    def __init__(self, path: Path, threads: int = 2, *, species: Sequence[str] = (),
                 exclude_species: Sequence[str] = ()) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.path = Path(path)
        self._session = open_session(self.path, threads)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.bundle: Bundle = parse_metadata(meta, self.path, _sha256(self.path))
        self._labels = self.bundle.labels
        # The owner's question, decided once per frame (feederd.task); built once per model.
        self.task = Task.for_bundle(self.bundle, species, exclude_species)
        self._input_name, self.fixed_batch, dtype = _check_input(self._session, self.bundle)
        self._output_names = _check_outputs(self._session, self.bundle)
        spec = self.bundle.input
        # BGR source channel of each model channel, and x = pixel * gain + offset per channel.
        self._channels = (2, 1, 0) if spec.color == "RGB" else (0, 1, 2)
        std = np.asarray(spec.std, np.float64)
        self._gain = (spec.scale / std).astype(np.float32)
        self._offset = (-np.asarray(spec.mean, np.float64) / std).astype(np.float32)
        self._unit_gain = bool(np.all(self._gain == 1))
        self._buffer = np.zeros(spec.shape(1), dtype)
        # Warm up: the first inference allocates arenas and picks kernels, so it is several
        # times slower than the rest and would trip the frame-loop watchdog on the first
        # visit. The same runs double as the numeric check of the bundle.
        self._check_inference()
        logger.info("loaded model %s (%s, %d labels)", self.bundle.version, self.path,
                    len(self._labels))

    @property
    def has_embedding(self) -> bool:
        """Whether the bundle has an ``embedding`` output (mining uses it for diversity)."""
        return len(self._output_names) > 1

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session, for benchmarks comparing against a bare ``run``."""
        return self._session

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def input_dtype(self) -> np.dtype:
        """float32, or uint8 for a bundle that takes the pixels as they are."""
        return self._buffer.dtype

    def crop(self, image_bgr: np.ndarray, box: Box | None, expand: float,
             min_side: int = 0) -> np.ndarray:
        """The region to classify: see :func:`square_crop`."""
        return square_crop(image_bgr, box, expand, min_side)

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """Resize, reorder and normalise into the reused (1, C, H, W) or (1, H, W, C) buffer
        (float32, or the pixels themselves for a uint8 input) and return it.

        The buffer is overwritten by the next call; pass it to :meth:`run` first.
        """
        self._prepare_into(image_bgr, self._buffer[0])
        return self._buffer

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A bare ``session.run``: probabilities (N, C) and the embedding (N, D) if any."""
        outputs = self._session.run(self._output_names, {self._input_name: batch})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def classify(self, image_bgr: np.ndarray, box: Box | None = None, expand: float = 1.6,
                 top_k: int = 3, min_side: int = 0) -> tuple[Prediction, np.ndarray]:
        """Classify the (expanded) box of a BGR frame; returns the prediction and the crop."""
        crop = self.crop(image_bgr, box, expand, min_side)
        probs, embedding = self.run(self.prepare(crop))
        return self._predict(probs[0], None if embedding is None else embedding[0], top_k), crop

    def classify_batch(self, images_bgr: Sequence[np.ndarray],
                       batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, C) and embeddings (N, D) of whole images, batched when possible.

        Models with a fixed batch size are fed that many at a time (padding the last batch),
        so feeder-sync can embed a folder with any backbone.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        size = self.fixed_batch or batch_size
        probs: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        buffer = np.zeros(self.bundle.input.shape(size), self._buffer.dtype)
        for start in range(0, len(images_bgr), size):
            chunk = images_bgr[start:start + size]
            for index, image in enumerate(chunk):
                self._prepare_into(image, buffer[index])
            batch = buffer if self.fixed_batch else buffer[:len(chunk)]
            chunk_probs, chunk_embedding = self.run(batch)
            probs.append(chunk_probs[:len(chunk)])
            if chunk_embedding is not None:
                embeddings.append(chunk_embedding[:len(chunk)])
        if not probs:
            return np.zeros((0, len(self._labels)), np.float32), None
        return np.concatenate(probs), np.concatenate(embeddings) if embeddings else None

    def _prepare_into(self, image_bgr: np.ndarray, out: np.ndarray) -> None:
        """Write one image into ``out`` (C, H, W or H, W, C) as the bundle's input spec says."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.size == 0:
            raise ValueError(f"expected a BGR image (H, W, 3), got shape {image_bgr.shape}")
        spec = self.bundle.input
        resized = resize_for_model(image_bgr, spec.width, spec.height)
        if out.dtype == np.uint8:  # the model quantizes the pixels itself
            if spec.layout == "NCHW":
                out[:] = resized.transpose(2, 0, 1)[list(self._channels)]
            elif self._channels == (2, 1, 0):
                cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=out)
            else:
                out[:] = resized
        elif spec.layout == "NCHW":
            # Contiguous planes make the two passes below about a third faster than strided
            # views of the interleaved image.
            planes = cv2.split(resized)
            for dst, src in enumerate(self._channels):
                if self._unit_gain:  # Caffe style: one pass instead of two
                    np.add(planes[src], self._offset[dst], out=out[dst])
                    continue
                np.multiply(planes[src], self._gain[dst], out=out[dst])
                np.add(out[dst], self._offset[dst], out=out[dst])
        else:
            np.multiply(resized[:, :, list(self._channels)], self._gain, out=out)
            np.add(out, self._offset, out=out)

    def _predict(self, probs: np.ndarray, embedding: np.ndarray | None,
                 top_k: int) -> Prediction:
        k = max(1, min(top_k, probs.shape[0]))
        if k < probs.shape[0]:
            top = np.argpartition(probs, -k)[-k:]
            top = top[np.argsort(-probs[top], kind="stable")]
        else:
            top = np.argsort(-probs, kind="stable")
        return Prediction(
            labels=tuple(self._labels[i] for i in top),
            scores=tuple(float(probs[i]) for i in top),
            probs=probs,
            embedding=embedding,
            decision=self.task.decide(probs),
        )

    def check_on(self, frames: Sequence[tuple[str, np.ndarray]]) -> None:
        """Refuse (ModelError) a model whose outputs on the named BGR frames are not finite
        probabilities."""
        for name, image in frames:
            try:
                probs, embedding = self.run(self.prepare(image))
            except Exception as exc:  # onnxruntime raises its own pybind error types
                raise ModelError(f"{self.path}: inference failed on {name}: {exc}") from exc
            self.check_outputs(probs, embedding, name)

    def _check_inference(self) -> None:
        """Run a grey and a noise image; refuse NaN, infinities or unnormalised probabilities."""
        height, width = self.bundle.input.size
        grey = np.full((height, width, 3), 128, np.uint8)
        noise = noise_image(height, width)
        for name, image in (("a grey test image", grey), ("a noise test image", noise)):
            try:
                probs, embedding = self.run(self.prepare(image))
            except Exception as exc:  # onnxruntime raises its own pybind error types
                raise ModelError(f"{self.path}: test inference failed: {exc}") from exc
            self.check_outputs(probs, embedding, name)

    def check_outputs(self, probs: np.ndarray, embedding: np.ndarray | None,
                      name: str) -> None:
        """Raise ModelError unless the outputs on ``name`` are finite probabilities."""
        where = f"{self.path}: on {name}"
        if probs.ndim != 2 or probs.shape[1] != len(self._labels):
            raise ModelError(f"{where} '{PROBS}' has shape {probs.shape}, expected "
                             f"(N, {len(self._labels)}) to match feederd.labels")
        if not np.isfinite(probs).all():
            raise ModelError(f"{where} '{PROBS}' contains NaN or infinity; the model is broken")
        sums = probs.sum(axis=1)
        if probs.min() < -PROB_SUM_TOLERANCE or np.abs(sums - 1).max() > PROB_SUM_TOLERANCE:
            raise ModelError(f"{where} '{PROBS}' is not a probability vector (sums to "
                             f"{sums.tolist()}); end the graph with a Softmax")
        if embedding is not None and (embedding.ndim != 2 or embedding.shape[0] != 1):
            raise ModelError(f"{where} '{EMBEDDING}' has shape {embedding.shape}, expected "
                             "(N, D); flatten it in the graph")
        if embedding is not None and not np.isfinite(embedding).all():
            raise ModelError(f"{where} '{EMBEDDING}' contains NaN or infinity")


def noise_image(height: int, width: int) -> np.ndarray:
    """A full-range, high-frequency BGR test image: a multiplicative hash of each pixel's index
    (Knuth's 2654435761). Not numpy.random: the daemon needs it for nothing else, and its
    import alone keeps ~5 MB resident."""
    index = np.arange(height * width * 3, dtype=np.uint32)
    hashed = (index * np.uint32(2654435761)) >> np.uint32(24)
    return hashed.astype(np.uint8).reshape(height, width, 3)


def validate_bundle(path: Path, frames: Sequence[tuple[str, np.ndarray]] = ()) -> Bundle:
    """Load ``path`` fully, test inference included (also on the named real ``frames``: a
    model can be finite on the synthetic test images and NaN on a feeder); return its
    metadata or raise ModelError.

    Used by ``feederd model install`` before a candidate may replace the current model.
    """
    classifier = Classifier(path, threads=1)
    classifier.check_on(frames)
    return classifier.bundle


def crop_square(box: Box, expand: float, width: int, height: int, min_side: int = 0) -> Box:
    """The square :func:`square_crop` cuts for ``box`` in a ``width`` x ``height`` frame.

    Its side is the box's longer side times ``expand``, at least ``min_side`` (a small or
    distant animal then keeps some context and is not upscaled into mush), at most the
    frame's longer side; it is moved inside the frame (it may reach past the shorter side).
    """
    if expand <= 0:
        raise ValueError(f"expand must be positive, got {expand}")
    side = max(round(max(box.w, box.h) * expand), MIN_CROP_PX, min_side)
    side = min(side, max(height, width))
    x0 = _place(box.x + box.w / 2, side, width)
    y0 = _place(box.y + box.h / 2, side, height)
    return Box(x0, y0, side, side)


def square_crop(image_bgr: np.ndarray, box: Box | None, expand: float,
                min_side: int = 0) -> np.ndarray:
    """A square crop around ``box`` grown by ``expand`` for context, moved inside the frame.

    When the square is larger than the frame it is padded by repeating the edge, so the
    animal keeps its aspect ratio. ``box=None`` returns the whole frame (not copied);
    otherwise the crop is a copy, safe to keep after the capture buffer is reused.
    """
    if box is None:
        return image_bgr
    height, width = image_bgr.shape[:2]
    square = crop_square(box, expand, width, height, min_side)
    x0, y0, side = square.x, square.y, square.w
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, width), min(y0 + side, height)
    crop = image_bgr[ys:ye, xs:xe]
    if crop.shape[0] == side and crop.shape[1] == side:
        return crop.copy()
    return cv2.copyMakeBorder(crop, ys - y0, y0 + side - ye, xs - x0, x0 + side - xe,
                              cv2.BORDER_REPLICATE)


def resize_for_model(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to the model input, averaging (not just sampling) when shrinking a lot.

    Bilinear alone aliases thin features and keeps sensor noise when a 300 px crop becomes
    64 px; ``INTER_AREA`` at a non-integer factor is ~30x slower than bilinear. Bilinear to
    twice the size, then the fast exact 2:1 area average, costs little more than bilinear.
    Training code must resize the same way (``tools/make_demo_assets.py`` does).
    """
    if image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _place(center: float, side: int, extent: int) -> int:
    """Start of a ``side``-long window centred on ``center``, kept inside ``[0, extent)``."""
    if side > extent:
        return (extent - side) // 2
    return min(max(round(center - side / 2), 0), extent - side)


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror}") from exc


def _check_input(session: ort.InferenceSession, bundle: Bundle
                 ) -> tuple[str, int | None, type[np.generic]]:
    """The input name, its fixed batch size (None when dynamic) and element type, checked
    against the metadata: float32, or uint8 for a model that takes the pixels as they are."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{bundle.path}: the model has {len(inputs)} inputs, expected one "
                         "image input")
    spec: InputSpec = bundle.input
    node = inputs[0]
    if node.type not in ("tensor(float)", "tensor(uint8)"):
        raise ModelError(f"{bundle.path}: input '{node.name}' is {node.type}, expected "
                         "tensor(float) or tensor(uint8); rebuild the bundle with feeder-sync "
                         "(it adds a cast)")
    dtype = np.uint8 if node.type == "tensor(uint8)" else np.float32
    if dtype == np.uint8 and (spec.scale != 1 or any(m != 0 for m in spec.mean)
                              or any(s != 1 for s in spec.std)):
        raise ModelError(f"{bundle.path}: input '{node.name}' takes uint8 pixels as they are, "
                         "but feederd.input asks for a normalisation; set mean 0, std 1 and "
                         "scale 1 (the graph itself must dequantize the pixels)")
    shape = list(node.shape)
    if len(shape) != 4:
        raise ModelError(f"{bundle.path}: input '{node.name}' has shape {shape}, expected "
                         f"4 dimensions ({spec.layout})")
    expected = spec.shape(1)
    for axis in range(1, 4):
        if isinstance(shape[axis], int) and shape[axis] != expected[axis]:
            raise ModelError(f"{bundle.path}: input '{node.name}' has shape {shape} but "
                             f"feederd.input says {spec.layout} size {list(spec.size)}; "
                             "fix the metadata or the graph")
    batch = shape[0]
    return node.name, batch if isinstance(batch, int) and batch > 0 else None, dtype


def _check_outputs(session: ort.InferenceSession, bundle: Bundle) -> list[str]:
    """``["probs"]`` or ``["probs", "embedding"]``, after checking their declared shapes."""
    outputs = {node.name: node for node in session.get_outputs()}
    if PROBS not in outputs:
        raise ModelError(f"{bundle.path}: no '{PROBS}' output (found {sorted(outputs)}); "
                         "build the bundle with feeder-sync")
    width = list(outputs[PROBS].shape)
    if len(width) != 2 or (isinstance(width[1], int) and width[1] != len(bundle.labels)):
        raise ModelError(f"{bundle.path}: output '{PROBS}' has shape {width} but "
                         f"feederd.labels names {len(bundle.labels)} classes")
    if EMBEDDING not in outputs:
        return [PROBS]
    if len(outputs[EMBEDDING].shape) != 2:
        raise ModelError(f"{bundle.path}: output '{EMBEDDING}' has shape "
                         f"{outputs[EMBEDDING].shape}, expected (N, D)")
    return [PROBS, EMBEDDING]
