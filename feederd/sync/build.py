"""Graph surgery that turns a backbone ONNX into feederd bundles (laptop side).

Every bundle this module writes has one float32 image input with a dynamic batch dimension
(when the graph allows it), a ``probs`` output (N x C, softmax) and an ``embedding`` output
(N x D, global-average-pooled feature map), plus ``feederd.*`` metadata; see
``models/README.md``. Each file is checked with ``onnx.checker``, written atomically and then
loaded by :class:`feederd.classifier.Classifier`, so a bundle that leaves here is one the
device accepts.

Three shapes of bundle:

- :func:`imagenet_bundle`: the backbone's own classifier (e.g. SqueezeNet's 1,000 ImageNet
  classes) plus an embedding; a ready-made demo on real photos.
- :func:`head_bundle`: the backbone cut at the embedding tensor with a trained linear head,
  which is what ``feeder-sync train`` produces.
- :func:`embedding_model`: the cut backbone with a one-class placeholder head, for caching
  embeddings of an image folder before any head exists.

fp16 backbones keep their fp16 weights; casts at the input and outputs give the bundle the same
float32 interface. The rewiring itself (loading, casts, pooling, heads, pruning) is
:class:`feederd.sync.surgery.Surgery`'s; this module decides what each bundle is made of, and
checks and writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from feederd.atomic import publish, temp_name
from feederd.bundle import METADATA_PREFIX, InputSpec, encode_metadata
from feederd.classifier import EMBEDDING, PROBS, Classifier
from feederd.errors import SyncError
from feederd.sync.surgery import Surgery

logger = logging.getLogger(__name__)

SQUEEZENET_INPUT = InputSpec(size=(224, 224), layout="NCHW", color="BGR",
                             mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), scale=1.0)
"""Caffe-style preprocessing of the ONNX-zoo SqueezeNet 1.1 (BGR, 0-255, minus the means)."""
SQUEEZENET_EMBEDDING = "fire9/concat_1"
"""SqueezeNet 1.1's last feature map (512 x 13 x 13); pooled, a good 512-d embedding."""


def now_iso() -> str:
    """Creation time for metadata: UTC to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_labels(labels_txt: Path) -> list[str]:
    """Class names from a labels file: ``name`` or ``index,name[, synonym...]`` per line.

    ImageNet-style lines keep their first name (``goldfinch, Carduelis carduelis`` ->
    ``goldfinch``); a name that occurs twice (ImageNet has two ``crane``) gets its index.
    """
    try:
        lines = [line.strip() for line in labels_txt.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise SyncError(f"{labels_txt}: cannot read labels: {exc.strerror}") from exc
    names = [_label_name(line) for line in lines if line]
    seen = {name for name in names if names.count(name) > 1}
    return [f"{name}_{index}" if name in seen else name for index, name in enumerate(names)]


def _label_name(line: str) -> str:
    head, _, rest = line.partition(",")
    text = rest if head.strip().isdigit() and rest else line
    return text.split(",")[0].strip()


def write_metadata(model: onnx.ModelProto, meta: Mapping[str, object]) -> None:
    """Replace the model's ``feederd.*`` metadata with ``meta`` (JSON-encoded, prefixed)."""
    kept = [(p.key, p.value) for p in model.metadata_props
            if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *encode_metadata(meta).items()]:
        model.metadata_props.add(key=key, value=value)


def imagenet_bundle(backbone: Path, labels_txt: Path, embedding_tensor: str,
                    input_spec: InputSpec, out: Path, negative_labels: Iterable[str] = (),
                    version: str | None = None, created: str | None = None) -> Path:
    """The backbone's own classifier as ``probs`` plus a pooled ``embedding``.

    The backbone's final Softmax is kept (flattened to N x C); a backbone ending in logits, or
    an fp16 one, gets a float32 Softmax instead.
    """
    labels = read_labels(labels_txt)
    version = version or f"{backbone.stem}-imagenet"

    def build(dynamic: bool) -> onnx.ModelProto:
        surgery = Surgery(backbone, dynamic)
        if len(surgery.graph.output) != 1:
            raise SyncError(f"{backbone}: expected one classifier output, found "
                            f"{[o.name for o in surgery.graph.output]}")
        probs = surgery.probabilities(surgery.graph.output[0].name, PROBS)
        embedding = surgery.pooled(embedding_tensor, EMBEDDING)
        surgery.set_outputs([(probs, len(labels)), (embedding, surgery.width(embedding))])
        return surgery.model

    meta = _metadata(labels, negative_labels, input_spec, version, None, created, {},
                     {"source": "imagenet", "backbone": backbone.name})
    return _write_bundle(build, meta, out, input_spec)


def head_bundle(backbone: Path, embedding_tensor: str, input_spec: InputSpec,
                weights: np.ndarray, bias: np.ndarray, labels: Sequence[str],
                negative_labels: Iterable[str], out: Path, version: str,
                parent_version: str | None = None, trained_on: Mapping[str, int] | None = None,
                metrics: Mapping[str, Any] | None = None,
                embedding_scaler: tuple[np.ndarray, np.ndarray] | None = None,
                created: str | None = None) -> Path:
    """The backbone cut at ``embedding_tensor`` with a linear softmax head.

    ``weights`` is D x C (sklearn's ``coef_.T``), ``bias`` C; for two classes pass both
    columns. ``embedding_scaler`` = (mean, std) of a StandardScaler fitted on the embeddings:
    it is folded into the Gemm, so ``embedding`` stays the raw pooled features that
    feeder-sync caches and retrains on.
    """
    weights, bias = np.asarray(weights, np.float64), np.asarray(bias, np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(labels) or bias.shape != (len(labels),):
        raise SyncError(f"head shapes {weights.shape} and {bias.shape} do not match "
                        f"{len(labels)} labels; weights must be D x C and bias C")
    weights, bias = _fold_scaler(weights, bias, embedding_scaler)

    def build(dynamic: bool) -> onnx.ModelProto:
        surgery = Surgery(backbone, dynamic)
        embedding = surgery.pooled(embedding_tensor, EMBEDDING)
        if (width := surgery.width(embedding)) not in (weights.shape[0], None):
            raise SyncError(f"{backbone}: '{embedding_tensor}' pools to {width} features but "
                            f"the head weights have {weights.shape[0]} rows")
        probs = surgery.linear_softmax(embedding, weights, bias, PROBS)
        surgery.set_outputs([(probs, len(labels)), (embedding, weights.shape[0])])
        return surgery.model

    meta = _metadata(list(labels), negative_labels, input_spec, version, parent_version,
                     created, dict(trained_on or {}), dict(metrics or {}))
    return _write_bundle(build, meta, out, input_spec)


EMBEDDING_ONLY_LABEL = "embedding_only"


def embedding_model(backbone: Path, embedding_tensor: str, out: Path,
                    input_spec: InputSpec, version: str | None = None) -> Path:
    """A bundle for caching embeddings: the cut backbone, ``embedding``, one dummy class.

    Its ``probs`` is always 1 for the single negative label ``embedding_only``, so the
    :class:`~feederd.classifier.Classifier` (and its batching) can run it, and installed on a
    device by mistake it would never alert.
    """
    probe = Surgery(backbone, dynamic=False)
    width = probe.width(probe.pooled(embedding_tensor, EMBEDDING))
    if width is None:
        raise SyncError(f"{backbone}: cannot infer the width of '{embedding_tensor}'; "
                        "export the backbone with static spatial shapes")
    return head_bundle(backbone, embedding_tensor, input_spec, np.zeros((width, 1)),
                       np.zeros(1), [EMBEDDING_ONLY_LABEL], [EMBEDDING_ONLY_LABEL], out,
                       version or f"{backbone.stem}-embedding")


def _fold_scaler(weights: np.ndarray, bias: np.ndarray,
                 scaler: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``(x - mean) / std`` into the head: W' = W / std, b' = b - (mean / std) W."""
    if scaler is None:
        return weights, bias
    mean, std = (np.asarray(v, np.float64).reshape(-1) for v in scaler)
    if mean.shape != (weights.shape[0],) or std.shape != mean.shape or (std <= 0).any():
        raise SyncError(f"embedding_scaler must be two positive vectors of length "
                        f"{weights.shape[0]}")
    scaled = weights / std[:, None]
    return scaled, bias - (mean / std) @ weights


def _metadata(labels: list[str], negative_labels: Iterable[str], spec: InputSpec,
              version: str, parent: str | None, created: str | None,
              trained_on: dict[str, int], metrics: dict[str, Any]) -> dict[str, object]:
    negatives = sorted(set(negative_labels))
    if unknown := [name for name in negatives if name not in labels]:
        raise SyncError(f"negative_labels {unknown} are not among the labels")
    return {
        "labels": labels, "negative_labels": negatives, "input": spec.as_dict(),
        "version": version, "parent_version": parent, "created": created or now_iso(),
        "trained_on": trained_on, "metrics": metrics,
    }


def _write_bundle(build: Callable[[bool], onnx.ModelProto], meta: dict[str, object],
                  out: Path, spec: InputSpec) -> Path:
    """Build with a dynamic batch, else batch 1; validate; only then replace ``out``.

    A bundle that fails validation is never left at ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    try:
        _save(build(True), meta, tmp)
        if not _runs_batch_of_two(tmp, spec):
            logger.warning("%s: the graph does not accept a dynamic batch; writing batch "
                           "size 1", out)
            _save(build(False), meta, tmp)
            Classifier(tmp, threads=1)
        publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote bundle %s (%s)", out, meta["version"])
    return out


def _save(model: onnx.ModelProto, meta: dict[str, object], path: Path) -> None:
    write_metadata(model, meta)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise SyncError(f"{path}: the built graph is invalid: {exc}") from exc
    onnx.save(model, str(path))


def _runs_batch_of_two(out: Path, spec: InputSpec) -> bool:
    """Load the bundle (full validation) and try a batch of two images."""
    classifier = Classifier(out, threads=1)
    try:
        probs, _ = classifier.run(np.zeros(spec.shape(2), classifier.input_dtype))
    except Exception:  # onnxruntime's pybind errors: a Reshape with a fixed batch, etc.
        return False
    return bool(probs.shape[0] == 2)
