"""Graph surgery on a backbone ONNX: the rewiring primitives :mod:`feederd.sync.build` uses.

:class:`Surgery` loads a backbone (opset raised to at least 7, initializers no longer graph
inputs), fixes its image input (float32, a dynamic or unit batch; a Cast for fp16 backbones),
and adds the few nodes a bundle needs: casts, a pooled and flattened embedding, a softmax over
the backbone's own output or over a linear head; :meth:`Surgery.set_outputs` then prunes
everything the outputs do not need. It knows nothing of bundles, metadata or files: which
outputs to make, and how the result is checked and written, is :mod:`feederd.sync.build`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from feederd.classifier import PROBS
from feederd.errors import SyncError

logger = logging.getLogger(__name__)

MIN_OPSET = 7
BATCH_DIM = "N"
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


class Surgery:
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
