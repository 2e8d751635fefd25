"""A TFLite image classifier's graph, rewritten as ONNX, operator by operator.

Read with the ``tflite`` flatbuffer package only (no TensorFlow). Each quantized TFLite tensor
becomes a ``QuantizeLinear``/``DequantizeLinear`` pair with the model's own scale and zero
point, so ONNX Runtime fuses the pairs back into integer kernels (``QLinearConv``...) that
round activations where the TFLite model rounds them: an fp32 graph with the same weights
changes about 5% of top-1 answers, QDQ about 0.1% (figures in ``models/README.md``). Two
deliberate departures from the TFLite graph, because a feederd bundle needs them:

- the final softmax is left in float (``probs`` must sum to 1; the uint8 softmax of the
  TFLite model sums to 0.08-1.0 after rounding);
- the input of the final fully connected layer (the pre-logits average pool of a MobileNet)
  is also an output, ``embedding``, flattened to (N, D).

The bundle's input is the model's own: uint8 RGB pixels, NHWC, as they are (a Transpose to the
NCHW graph follows, which onnxruntime's NHWC transformer removes again); a model without a
uint8 input (and the ``fp32`` mode) takes NCHW float ``(pixel - zero_point) * scale``. The
weights of ordinary and fully connected layers are stored as int8 (``TensorGraph._signed``):
the same real values, but onnxruntime then runs its u8s8 kernels, a quarter faster on x86 with
VNNI; where it is exact, a layer's weights get zero point 0 as well, for onnxruntime's fused
symmetric kernels (:mod:`feederd.tflite_symmetric`).
Only the operators of MobileNet-style classifiers are supported; anything else raises
:class:`~feederd.errors.ModelError` naming the operator.

Three layers, one module each: :mod:`feederd.tflite_tensors` (tensors and their QDQ form),
:mod:`feederd.tflite_ops` (one emitter per operator) and this driver (load, dispatch, finish).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tflite

from feederd.bundle import Layout
from feederd.errors import ModelError
from feederd.onnx_proto import FLOAT, UINT8, Graph, ValueInfo
from feederd.tflite_ops import PROBS, OperatorEmitter
from feederd.tflite_symmetric import make_symmetric

logger = logging.getLogger(__name__)

OPSET = 13


@dataclass(frozen=True)
class ConvertedGraph:
    """The ONNX graph and what the bundle metadata needs to know about its input."""

    graph: Graph
    height: int
    width: int
    input_mean: float  # pixel value that means 0 (the input zero point; 0 for uint8 pixels)
    input_std: float  # pixels per unit (1 / input scale; 1 for uint8 pixels)
    embedding_width: int | None
    layout: Layout = "NCHW"  # of the input: NHWC when it takes uint8 pixels


def load_model(data: bytes, source: str) -> Any:
    """The flatbuffer root of a ``.tflite`` file; ModelError if it is not one."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{source}: not a TFLite model (no TFL3 identifier)")
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise ModelError(f"{source}: {model.SubgraphsLength()} subgraphs; only single-graph "
                         "classifiers can be imported")
    return model


class Converter(OperatorEmitter):
    """Walks the operators of one subgraph and emits ONNX nodes.

    The tensors and their QDQ form are :class:`~feederd.tflite_tensors.TensorGraph`'s, the
    per-operator emitters :class:`~feederd.tflite_ops.OperatorEmitter`'s; this class only
    dispatches. ``mode`` is one of :data:`~feederd.tflite_tensors.MODES`.
    """

    def __init__(self, model: Any, source: str, mode: str = "qdq") -> None:
        super().__init__(model, source, mode)
        self.consumers = self._count_consumers()
        self._handlers: dict[str, Callable[[Any, Any], None]] = {
            "CONV_2D": self._conv, "DEPTHWISE_CONV_2D": self._conv, "ADD": self._add,
            "AVERAGE_POOL_2D": self._pool, "MAX_POOL_2D": self._pool,
            "FULLY_CONNECTED": self._fully_connected, "SOFTMAX": self._softmax,
            "RESHAPE": self._flatten, "SQUEEZE": self._flatten,
        }

    # --- driving ------------------------------------------------------------------------------

    def convert(self) -> ConvertedGraph:
        if self.sub.InputsLength() != 1 or self.sub.OutputsLength() != 1:
            raise ModelError(f"{self.source}: expected one image input and one output, found "
                             f"{self.sub.InputsLength()} and {self.sub.OutputsLength()}")
        height, width, mean, std = self._input()
        for index in range(self.sub.OperatorsLength()):
            op = self.sub.Operators(index)
            name = self._opname(op)
            handler = self._handlers.get(name)
            if handler is None:
                raise ModelError(f"{self.source}: operator {name} (#{index}) is not supported by "
                                 "feederd's importer (it handles MobileNet-style classifiers: "
                                 f"{', '.join(sorted(self._handlers))})")
            handler(op, self._options(op))
        if PROBS not in {o for node in self.graph.nodes for o in node.outputs}:
            self._append_softmax(self.sub.Outputs(0))
        self.graph.outputs.append(ValueInfo(PROBS, FLOAT, ("N", self._width(self.sub.Outputs(0)))))
        if self.compact:
            make_symmetric(self.graph)
        layout: Layout = "NHWC" if self.graph.inputs[0].elem_type == UINT8 else "NCHW"
        return ConvertedGraph(self.graph, height, width, mean, std, self.embedding_width, layout)

    def _options(self, op: Any) -> Any:
        table = op.BuiltinOptions()
        if table is None:
            return None
        kinds = {value: name for name, value in vars(tflite.BuiltinOptions).items()
                 if not name.startswith("_")}
        options = getattr(tflite, kinds[op.BuiltinOptionsType()])()
        options.Init(table.Bytes, table.Pos)
        return options

    def _count_consumers(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for index in range(self.sub.OperatorsLength()):
            op = self.sub.Operators(index)
            for j in range(op.InputsLength()):
                counts[op.Inputs(j)] = counts.get(op.Inputs(j), 0) + 1
        return counts


def convert_graph(data: bytes, source: str, mode: str = "qdq") -> ConvertedGraph:
    """The ONNX graph of TFLite file bytes ``data`` (``source`` names it in errors)."""
    return Converter(load_model(data, source), source, mode).convert()
