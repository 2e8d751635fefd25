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
float32 interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from feederd.atomic import publish, temp_name
from feederd.bundle import METADATA_PREFIX, InputSpec, encode_metadata
from feederd.classifier import EMBEDDING, PROBS, Classifier
from feederd.errors import SyncError

logger = logging.getLogger(__name__)

MIN_OPSET = 7
BATCH_DIM = "N"

SQUEEZENET_INPUT = InputSpec(size=(224, 224), layout="NCHW", color="BGR",
                             mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), scale=1.0)
"""Caffe-style preprocessing of the ONNX-zoo SqueezeNet 1.1 (BGR, 0-255, minus the means)."""
SQUEEZENET_EMBEDDING = "fire9/concat_1"
"""SqueezeNet 1.1's last feature map (512 x 13 x 13); pooled, a good 512-d embedding."""

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


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
        surgery = _Surgery(backbone, dynamic)
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
        surgery = _Surgery(backbone, dynamic)
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
    probe = _Surgery(backbone, dynamic=False)
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


class _Surgery:
    """A loaded backbone being rewired: helpers add nodes, outputs, casts; unused nodes go."""

    def __init__(self, backbone: Path, dynamic: bool) -> None:
        self.path = backbone
        self.model = _load(backbone)
        self.graph = self.model.graph
        self.dynamic = dynamic
        self.types = _tensor_types(self.model)
        del self.graph.value_info[:]  # stale once the batch dimension changes
        self.widths: dict[str, int | None] = {}
        self._names = {name for node in self.graph.node for name in node.output}
        if PROBS in self._names:  # a bundle as the backbone: its own head's output goes
            self._rename(PROBS, self.fresh(f"backbone_{PROBS}"))
        self.input_name = self._float_input()

    def _rename(self, old: str, new: str) -> None:
        for node in self.graph.node:
            node.output[:] = [new if n == old else n for n in node.output]
            node.input[:] = [new if n == old else n for n in node.input]

    def fresh(self, base: str) -> str:
        """A tensor name not used yet in the graph."""
        name, index = base, 0
        while name in self._names or name in self.types:
            index += 1
            name = f"{base}_{index}"
        self._names.add(name)
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.graph.node.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        self._names.add(output)
        return output

    def as_float(self, name: str) -> str:
        """``name`` itself if it is float32, else a Cast of it to float32."""
        elem = self.types.get(name, (TensorProto.FLOAT, None))[0]
        if elem == TensorProto.FLOAT:
            return name
        return self.add("Cast", [name], self.fresh(f"{name}_float"), to=TensorProto.FLOAT)

    def probabilities(self, output: str, name: str) -> str:
        """``name`` = the backbone output as N x C probabilities."""
        producer = next((n for n in self.graph.node if output in n.output), None)
        elem = self.types.get(output, (TensorProto.FLOAT, None))[0]
        if producer is not None and producer.op_type == "Softmax" and elem == TensorProto.FLOAT:
            return self.add("Flatten", [output], name, axis=1)
        softmax = producer is not None and producer.op_type == "Softmax"
        logits = producer.input[0] if producer is not None and softmax else output
        flat = self.add("Flatten", [self.as_float(logits)], self.fresh("logits_flat"), axis=1)
        return self.add("Softmax", [flat], name, axis=1)

    def pooled(self, tensor: str, name: str) -> str:
        """``name`` = ``tensor`` global-average-pooled and flattened to N x D, in float32."""
        if tensor not in self._names:
            raise SyncError(f"{self.path}: no tensor named '{tensor}'; candidates near the "
                            f"end of the graph: {self._candidates()}")
        source = self.as_float(tensor)
        shape = self.types.get(tensor, (None, None))[1]
        channels = shape[1] if shape is not None and len(shape) >= 2 else None
        self.widths[name] = channels if isinstance(channels, int) and channels > 0 else None
        if shape is not None and len(shape) == 2:  # a bundle's own embedding is named so
            return source if source == name else self.add("Identity", [source], name)
        pooled = self.add("GlobalAveragePool", [source], self.fresh(f"{tensor}_gap"))
        return self.add("Flatten", [pooled], name, axis=1)

    def width(self, pooled: str) -> int | None:
        """D of a tensor made by :meth:`pooled`, when shape inference knew the channels."""
        return self.widths.get(pooled)

    def linear_softmax(self, embedding: str, weights: np.ndarray, bias: np.ndarray,
                       name: str) -> str:
        w_name, b_name = self.fresh("head_weights"), self.fresh("head_bias")
        self.graph.initializer.extend([
            numpy_helper.from_array(weights.astype(np.float32), w_name),
            numpy_helper.from_array(bias.astype(np.float32), b_name),
        ])
        logits = self.add("Gemm", [embedding, w_name, b_name], self.fresh("head_logits"))
        return self.add("Softmax", [logits], name, axis=1)

    def set_outputs(self, outputs: list[tuple[str, int | None]]) -> None:
        """Make ``outputs`` (name, width) the graph outputs and drop everything unused."""
        batch: str | int = BATCH_DIM if self.dynamic else 1
        del self.graph.output[:]
        for name, width in outputs:
            dims: list[str | int | None] = [batch, width if width else "D"]
            self.graph.output.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        _prune(self.graph)

    def _float_input(self) -> str:
        """Fix the image input: float32, batch dimension dynamic or 1; returns its name."""
        initializers = {init.name for init in self.graph.initializer}
        inputs = [i for i in self.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise SyncError(f"{self.path}: expected one image input, found "
                            f"{[i.name for i in inputs]}")
        image = inputs[0]
        tensor = image.type.tensor_type
        if tensor.elem_type not in (*_FLOATS, TensorProto.UINT8) or len(tensor.shape.dim) != 4:
            raise SyncError(f"{self.path}: input '{image.name}' must be a 4-D float tensor "
                            "(or uint8 pixels, for a model that quantizes them itself)")
        dim0 = tensor.shape.dim[0]
        dim0.Clear()
        if self.dynamic:
            dim0.dim_param = BATCH_DIM
        else:
            dim0.dim_value = 1
        if tensor.elem_type == TensorProto.FLOAT16:
            self._cast_input_to_fp16(image)
        return image.name

    def _cast_input_to_fp16(self, image: onnx.ValueInfoProto) -> None:
        inner = self.fresh(f"{image.name}_fp16")
        for node in self.graph.node:
            node.input[:] = [inner if name == image.name else name for name in node.input]
        self.graph.node.insert(0, helper.make_node("Cast", [image.name], [inner], name=inner,
                                                   to=TensorProto.FLOAT16))
        image.type.tensor_type.elem_type = TensorProto.FLOAT
        self.types[inner] = (TensorProto.FLOAT16, self.types.get(image.name, (0, None))[1])

    def _candidates(self) -> list[str]:
        return [n.output[0] for n in self.graph.node[-12:] if n.output]


def _load(backbone: Path) -> onnx.ModelProto:
    """Load a backbone, make initializers non-inputs (IR >= 4) and require opset >= 7."""
    try:
        model = onnx.load(str(backbone))
    except FileNotFoundError as exc:
        raise SyncError(f"{backbone}: no such backbone model") from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        raise SyncError(f"{backbone}: not a readable ONNX model ({exc})") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        from onnx import version_converter

        logger.info("converting %s from opset %d to %d", backbone, opset, MIN_OPSET)
        model = version_converter.convert_version(model, MIN_OPSET)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    return model


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int | str] | None]]:
    """Element type and shape of every tensor shape inference can tell (before surgery)."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception as exc:  # inference is a nicety; surgery works without it
        logger.warning("shape inference failed (%s); assuming float tensors", exc)
        inferred = model
    graph = inferred.graph
    found: dict[str, tuple[int, list[int | str] | None]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        shape = ([d.dim_value if d.HasField("dim_value") else d.dim_param
                  for d in tensor.shape.dim] if tensor.HasField("shape") else None)
        found[info.name] = (tensor.elem_type, shape)
    for init in graph.initializer:
        found[init.name] = (init.data_type, list(init.dims))
    return found


def _prune(graph: onnx.GraphProto) -> None:
    """Remove nodes and initializers that no graph output depends on."""
    needed = {output.name for output in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


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

