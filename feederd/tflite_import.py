"""``feederd model import``: a TFLite image classifier becomes a feederd bundle, on the device.

Needs only the ``tflite`` flatbuffer package (``pip install 'feederd[import]'``), never
TensorFlow: :mod:`feederd.tflite_graph` rewrites the graph operator by operator and
:mod:`feederd.onnx_proto` serialises it. Labels come from ``--labels`` or, when absent, from
the label file most TFLite models carry inside them (a zip appended to the flatbuffer); common
names from the same lines ("Scientific (Common)") or from ``--names``. The stable label rule is
in :mod:`feederd.species_names`. ``tools/convert_tflite.py`` is the maintainer's wrapper that
also measures the result against LiteRT.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feederd.atomic import write_bytes
from feederd.bundle import InputSpec, encode_metadata
from feederd.errors import ModelError
from feederd.onnx_proto import serialize_model
from feederd.species_names import (
    SpeciesNames,
    common_names,
    read_label_lines,
    species_names,
)

logger = logging.getLogger(__name__)

# Label files TFLite models embed, most useful first.
_EMBEDDED_LABELS = ("probability-labels-en.txt", "labels.txt")


def import_tflite(source: Path, out: Path, labels: Path | None = None,
                  names: Path | None = None, version: str | None = None,
                  created: str | None = None, metrics: Mapping[str, Any] | None = None,
                  mode: str = "qdq") -> Path:
    """Convert ``source`` (.tflite) into the bundle ``out``; returns ``out``.

    ``mode`` is ``qdq`` (the default: uint8 pixels in, int8 weights where exact), ``qdq-u8``
    (uint8 weights, float input: the earlier form) or ``fp32``: see
    :class:`feederd.tflite_graph.Converter`.
    The file is written to a temporary name and renamed, so ``out`` is never half-written;
    callers validate it with :func:`feederd.classifier.validate_bundle`.
    """
    try:
        from feederd.tflite_graph import convert_graph
    except ImportError as exc:
        raise ModelError("importing a TFLite model needs the tflite package: "
                         "pip install 'feederd[import]'") from exc
    data = _read(source)
    converted = convert_graph(data, str(source), mode)
    species = label_set(data, source, labels, names)
    width = converted.graph.outputs[-1].shape[1]
    if len(species.labels) != width:
        raise ModelError(f"{labels or source}: {len(species.labels)} labels for a model with "
                         f"{width} outputs; pass --labels with one line per output")
    spec = InputSpec((converted.height, converted.width), converted.layout, "RGB",
                     (converted.input_mean,) * 3, (converted.input_std,) * 3, 1.0)
    meta = {
        "labels": species.labels, "negative_labels": sorted(species.negative_labels),
        "input": spec, "version": version or source.stem, "parent_version": None,
        "created": created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "trained_on": {}, "display_names": species.display_names,
        "scientific_names": species.scientific_names,
        "metrics": {"source": source.name, "source_sha256": hashlib.sha256(data).hexdigest(),
                    "conversion": mode, **dict(metrics or {})},
    }
    blob = serialize_model(converted.graph, 13, encode_metadata(meta), "feederd-tflite-import")
    _write(out, blob)
    logger.info("wrote %s: %d labels, embedding %s", out, len(species.labels),
                converted.embedding_width)
    return out


def label_set(data: bytes, source: Path, labels: Path | None,
              names: Path | None) -> SpeciesNames:
    """Labels from ``labels`` or the model's embedded label file; common names also from
    ``names`` ("Scientific (Common)" lines, matched by scientific name)."""
    lines = read_label_lines(_text(labels)) if labels else embedded_labels(data, source)
    extra = common_names(read_label_lines(_text(names))) if names else None
    return species_names(lines, extra)


def embedded_labels(data: bytes, source: Path) -> list[str]:
    """The label lines packed into a .tflite file (TFLite metadata's associated files)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.namelist()
            chosen = next((m for m in _EMBEDDED_LABELS if m in members),
                          next((m for m in members if m.endswith(".txt")), None))
            if chosen is not None:
                return read_label_lines(archive.read(chosen).decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError):
        pass
    raise ModelError(f"{source}: the model carries no label file; pass --labels FILE "
                     "(one class name per line, in output order)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the TFLite model: {exc.strerror}") from exc


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the label file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: the label file is not UTF-8 text") from exc


def _write(out: Path, blob: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_bytes(out, blob)
    except OSError as exc:
        raise ModelError(f"{out}: cannot write the bundle: {exc.strerror}") from exc
