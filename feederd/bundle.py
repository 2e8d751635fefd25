"""The model bundle format: one ONNX file is one model version.

A bundle's ``metadata_props`` carry JSON strings under keys prefixed ``feederd.`` (see
``models/README.md``)::

    feederd.labels           ["blue_jay", "cardinal", "other"]   class names in output order
    feederd.negative_labels  ["other"]                           labels meaning "nothing here"
    feederd.input            {"size": [H, W], "layout": "NCHW", "color": "RGB",
                              "mean": [...], "std": [...], "scale": 0.00392}
    feederd.version          "demo-1"
    feederd.parent_version   null or the version this one was trained from
    feederd.created          ISO 8601 time
    feederd.trained_on       {"cardinal": 120, ...}
    feederd.metrics          {"accuracy": 0.97, ...}
    feederd.display_names    {"blue_jay": "Blue Jay", ...}        optional: names people read
    feederd.scientific_names {"blue_jay": "Cyanocitta cristata"}  optional, where the model knows

This module only parses and checks that metadata; it never imports onnxruntime, so the CLI can
describe a bundle and the laptop side can write one without the runtime. The graph itself
(outputs ``probs`` and ``embedding``, their shapes, a test inference) is checked by
:mod:`feederd.classifier`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from feederd.errors import ModelError
from feederd.onnxwire import read_metadata_props

logger = logging.getLogger(__name__)

METADATA_PREFIX = "feederd."
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")
REQUIRED_KEYS = ("labels", "input", "version")
MAX_VERSION_BYTES = 128

Layout = Literal["NCHW", "NHWC"]
Color = Literal["RGB", "BGR"]


@dataclass(frozen=True)
class InputSpec:
    """How a BGR uint8 image becomes the model input: ``x = (pixel * scale - mean) / std``.

    ``scale`` is feederd's addition to the design's input dict: models trained on 0-1 pixels
    (torchvision style) use 1/255, Caffe-style models (SqueezeNet) use 1 with means like
    (104, 117, 123). ``mean``/``std`` are per channel, in the model's own channel order.
    """

    size: tuple[int, int]
    layout: Layout = "NCHW"
    color: Color = "RGB"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The input tensor shape for ``batch`` images in this layout."""
        h, w = self.size
        return (batch, 3, h, w) if self.layout == "NCHW" else (batch, h, w, 3)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored under ``feederd.input``."""
        return {
            "size": list(self.size), "layout": self.layout, "color": self.color,
            "mean": list(self.mean), "std": list(self.std), "scale": self.scale,
        }


def default_scale(color: str, mean: tuple[float, ...]) -> float:
    """1/255 for an RGB model whose means are in 0-1 units, else 1 (Caffe style, 0-255)."""
    return 1.0 / 255.0 if color == "RGB" and max(mean, default=0.0) <= 1.0 else 1.0


@dataclass(frozen=True)
class Bundle:
    """What a bundle file says about itself; ``sha256`` identifies the exact file."""

    path: Path
    labels: tuple[str, ...]
    negative_labels: frozenset[str]
    input: InputSpec
    version: str
    parent_version: str | None
    created: str
    trained_on: dict[str, int]
    metrics: dict[str, Any]
    sha256: str
    display_names: dict[str, str] = field(default_factory=dict)
    scientific_names: dict[str, str] = field(default_factory=dict)

    def is_negative(self, label: str) -> bool:
        """True for labels that mean "nothing of interest" (``other``, ``squirrel``...)."""
        return label in self.negative_labels

    def display_name(self, label: str) -> str:
        """The name people read ("Blue Jay"); the stable label stays the key everywhere else.

        Bundles without display names get the label with underscores as spaces, so
        ``blue_jay`` still reads as "blue jay" in an alert.
        """
        return self.display_names.get(label) or label.replace("_", " ")

    def scientific_name(self, label: str) -> str | None:
        return self.scientific_names.get(label)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, as shown by ``feederd model ls`` and published on ``model``."""
        return {
            "version": self.version,
            "parent_version": self.parent_version,
            "created": self.created,
            "file": self.path.name,
            "sha256": self.sha256,
            "labels": list(self.labels),
            "negative_labels": sorted(self.negative_labels),
            "input": self.input.as_dict(),
            "trained_on": dict(self.trained_on),
            "metrics": dict(self.metrics),
            "display_names": dict(self.display_names),
            "scientific_names": dict(self.scientific_names),
        }


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (bundles can be tens of megabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Reader:
    """Reads and checks ``feederd.*`` keys; every error names the file and the key."""

    def __init__(self, meta: Mapping[str, str], path: Path) -> None:
        self.meta = meta
        self.path = path

    def fail(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self.path}: metadata key '{METADATA_PREFIX}{key}' {problem}; "
                          "rebuild the bundle with feeder-sync (see models/README.md)")

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        raw = self.meta.get(METADATA_PREFIX + key)
        if raw is None:
            if required:
                raise self.fail(key, "is missing")
            return default
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise self.fail(key, f"is not valid JSON ({exc})") from exc

    def string(self, key: str, default: str | None = None, required: bool = False) -> Any:
        value = self.get(key, default, required)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if required and not value:
            raise self.fail(key, "must not be empty")
        return value

    def version(self) -> str:
        """The version names the installed file (``models/<version>.onnx``): bounded, so that
        a file name cannot become too long for the file system (255 bytes)."""
        value: str = self.string("version", required=True)
        if len(value.encode()) > MAX_VERSION_BYTES:
            raise self.fail("version", f"is {len(value.encode())} bytes long; at most "
                            f"{MAX_VERSION_BYTES} are allowed (it names the installed file)")
        return value

    def labels(self) -> tuple[str, ...]:
        value = self.get("labels", required=True)
        if not isinstance(value, list) or not value:
            raise self.fail("labels", "must be a non-empty list of class names")
        if not all(isinstance(item, str) and item for item in value):
            raise self.fail("labels", "must contain only non-empty strings")
        if len(set(value)) != len(value):
            dupes = sorted({item for item in value if value.count(item) > 1})
            raise self.fail("labels", f"has duplicate names {dupes}")
        return tuple(value)

    def negative_labels(self, labels: tuple[str, ...]) -> frozenset[str]:
        value = self.get("negative_labels", [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail("negative_labels", "must be a list of label names")
        unknown = sorted(set(value) - set(labels))
        if unknown:
            raise self.fail("negative_labels", f"names {unknown}, which are not in labels")
        return frozenset(value)

    def counts(self, key: str) -> dict[str, int]:
        value = self.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(count, int) and not isinstance(count, bool) and count >= 0
            for count in value.values()
        ):
            raise self.fail(key, "must map labels to non-negative integer counts")
        return {str(name): int(count) for name, count in value.items()}

    def names(self, key: str, labels: tuple[str, ...]) -> dict[str, str]:
        value = self.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(name, str) for name in value.values()
        ):
            raise self.fail(key, "must map labels to name strings")
        unknown = sorted(set(value) - set(labels))
        if unknown:
            raise self.fail(key, f"names {unknown[:5]}, which are not in labels")
        return {str(label): name for label, name in value.items() if name}

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a JSON object, got {value!r}")
        return value

    def input_spec(self) -> InputSpec:
        value = self.get("input", required=True)
        if not isinstance(value, dict):
            raise self.fail("input", "must be a JSON object with size, layout, color, mean, std")
        unknown = sorted(set(value) - {"size", "layout", "color", "mean", "std", "scale"})
        if unknown:
            raise self.fail("input", f"has unknown fields {unknown}; allowed: size, layout, "
                            "color, mean, std, scale")
        size = self._size(value.get("size"))
        layout = self._choice(value, "layout", LAYOUTS, "NCHW")
        color = self._choice(value, "color", COLORS, "RGB")
        mean = self._channels(value, "mean", 0.0)
        std = self._channels(value, "std", 1.0)
        if any(item <= 0 for item in std):
            raise self.fail("input", f"std must be positive, got {list(std)}")
        scale = value.get("scale", default_scale(color, mean))
        if not _is_number(scale) or not 0 < scale < math.inf:
            raise self.fail("input", f"scale must be a positive number, got {scale!r}")
        return InputSpec(size, layout, color, mean, std, float(scale))

    def _size(self, size: Any) -> tuple[int, int]:
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                           for v in size)):
            raise self.fail("input", f"size must be [height, width] in pixels, got {size!r}")
        return (size[0], size[1])

    def _choice(self, value: dict[str, Any], field: str, allowed: tuple[str, ...],
                default: str) -> Any:
        choice = value.get(field, default)
        if choice not in allowed:
            raise self.fail("input", f"{field} must be one of {', '.join(allowed)}, "
                            f"got {choice!r}")
        return choice

    def _channels(self, value: dict[str, Any], field: str, default: float) -> tuple[float, ...]:
        items = value.get(field, [default] * 3)
        if not isinstance(items, list) or len(items) not in (1, 3) or not all(
            _is_number(v) and math.isfinite(v) for v in items
        ):
            raise self.fail("input", f"{field} must be a list of 1 or 3 numbers, got {items!r}")
        floats = tuple(float(v) for v in items)
        return floats * 3 if len(floats) == 1 else floats


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_metadata(meta: Mapping[str, str], path: Path, sha256: str) -> Bundle:
    """Build a :class:`Bundle` from an ONNX file's ``metadata_props``.

    Raises :class:`ModelError` naming the file and the missing or malformed key. Keys without
    the ``feederd.`` prefix (a producer's own notes) are ignored, as are unknown ``feederd.``
    keys, so that newer bundles still load on older devices.
    """
    reader = _Reader(meta, path)
    labels = reader.labels()
    return Bundle(
        path=path,
        labels=labels,
        negative_labels=reader.negative_labels(labels),
        input=reader.input_spec(),
        version=reader.version(),
        parent_version=reader.string("parent_version"),
        created=reader.string("created", "") or "",
        trained_on=reader.counts("trained_on"),
        metrics=reader.mapping("metrics"),
        sha256=sha256,
        display_names=reader.names("display_names", labels),
        scientific_names=reader.names("scientific_names", labels),
    )


def encode_metadata(meta: Mapping[str, object]) -> dict[str, str]:
    """The ``metadata_props`` entries for ``meta``: prefixed keys, JSON-encoded values."""
    encoded: dict[str, str] = {}
    for key, value in meta.items():
        if isinstance(value, InputSpec):
            value = value.as_dict()
        elif isinstance(value, frozenset | set | tuple):
            value = sorted(value) if isinstance(value, frozenset | set) else list(value)
        encoded[METADATA_PREFIX + key] = json.dumps(value, sort_keys=True, default=_plain)
    return encoded


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays found in metrics."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in bundle metadata")


def read_bundle(path: Path) -> Bundle:
    """Read a bundle's metadata without loading the graph (for ``feederd model ls``).

    Memory stays small whatever the bundle's size: the metadata is read from a memory map and
    the hash in chunks. Does not prove the model runs;
    :func:`feederd.classifier.validate_bundle` does that.
    """
    try:
        meta = read_metadata_props(path)
        sha256 = file_sha256(path)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such model file") from exc
    except (OSError, ValueError) as exc:  # mmap of a directory or special file: ValueError
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ModelError(f"{path}: cannot read model file: {reason}") from exc
    return parse_metadata(meta, path, sha256)
