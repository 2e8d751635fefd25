"""The operator emitters of the TFLite importer: one method per supported TFLite operator.

Each emitter reads one TFLite operator (its tensors and builtin options) and appends the
equivalent ONNX nodes, leaving the QDQ rounding of its result to :class:`TensorGraph`. Only the
operators of MobileNet-style classifiers are here; the driver (:mod:`feederd.tflite_graph`)
dispatches to them by name and rejects every other operator with a
:class:`~feederd.errors.ModelError` that names it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import tflite

from feederd.errors import ModelError
from feederd.onnx_proto import FLOAT, UINT8, Node, ValueInfo
from feederd.tflite_tensors import TensorGraph

logger = logging.getLogger(__name__)

INPUT = "image"
PROBS = "probs"
EMBEDDING = "embedding"


class OperatorEmitter(TensorGraph):
    """The ONNX nodes of each supported TFLite operator, and of the graph's image input."""

    def __init__(self, model: Any, source: str, mode: str = "qdq") -> None:
        super().__init__(model, source, mode)
        self.embedding_width: int | None = None

    def _opname(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return _OPNAMES.get(builtin, f"builtin {builtin}")

    def _input(self) -> tuple[int, int, float, float]:
        index = self.sub.Inputs(0)
        shape = self._shape(index)
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{self.source}: input shape {shape} is not an NHWC RGB image")
        quant = self._quant(index)
        mean, std = (0.0, 1.0) if quant is None else (float(quant.zero_point.reshape(-1)[0]),
                                                      1.0 / float(quant.scale.reshape(-1)[0]))
        if self.compact and quant is not None and self._dtype(index) == np.uint8:
            self.graph.inputs.append(ValueInfo(INPUT, UINT8, ("N", shape[1], shape[2], 3)))
            self.graph.nodes.append(Node("Transpose", (INPUT,), ("image_nchw",), "image_nchw",
                                         {"perm": (0, 3, 1, 2)}))
            self.values[index] = self._dequantize("image_nchw", f"t{index}", quant, np.uint8)
            return shape[1], shape[2], 0.0, 1.0  # the pixels themselves
        self.graph.inputs.append(ValueInfo(INPUT, FLOAT, ("N", 3, shape[1], shape[2])))
        self._emit(index, INPUT)
        return shape[1], shape[2], mean, std

    def _conv(self, op: Any, options: Any) -> None:
        x, w, out = op.Inputs(0), op.Inputs(1), op.Outputs(0)
        depthwise = isinstance(options, tflite.DepthwiseConv2DOptions)
        kernel = self._constant(w)
        if depthwise:  # [1, KH, KW, C*M] -> [C*M, 1, KH, KW]
            weight = self._weight(w, kernel.transpose(3, 0, 1, 2), {3: 0})
            group = self._shape(x)[3]
        else:  # [O, KH, KW, I] -> [O, I, KH, KW]
            weight = self._weight(w, kernel.transpose(0, 3, 1, 2), {0: 0}, signed=True)
            group = 1
        inputs = [self._value(x), weight]
        if op.InputsLength() > 2 and op.Inputs(2) >= 0:
            inputs.append(self._weight(op.Inputs(2), self._constant(op.Inputs(2)), {0: 0}))
        strides = (options.StrideH(), options.StrideW())
        dilations = (options.DilationHFactor(), options.DilationWFactor())
        pads = self._pads(x, kernel.shape[1:3], strides, dilations, options.Padding())
        name = f"conv{out}"
        self.graph.nodes.append(Node("Conv", tuple(inputs), (name,), name, {
            "strides": strides, "dilations": dilations, "pads": pads, "group": group,
            "kernel_shape": tuple(kernel.shape[1:3])}))
        self._emit(out, self._activation(name, options.FusedActivationFunction(), name))

    def _pads(self, x: int, kernel: tuple[int, ...], strides: tuple[int, int],
              dilations: tuple[int, int], padding: int) -> tuple[int, ...]:
        """ONNX [top, left, bottom, right] for TFLite SAME (extra row/column at the end)."""
        if padding == tflite.Padding.VALID:
            return (0, 0, 0, 0)
        size = self._shape(x)[1:3]
        begin, end = [], []
        for extent, k, s, d in zip(size, kernel, strides, dilations, strict=True):
            total = max((math.ceil(extent / s) - 1) * s + (k - 1) * d + 1 - extent, 0)
            begin.append(total // 2)
            end.append(total - total // 2)
        return (*begin, *end)

    def _add(self, op: Any, options: Any) -> None:
        out, name = op.Outputs(0), f"add{op.Outputs(0)}"
        self.graph.nodes.append(Node("Add", (self._value(op.Inputs(0)),
                                             self._value(op.Inputs(1))), (name,), name))
        self._emit(out, self._activation(name, options.FusedActivationFunction(), name))

    def _pool(self, op: Any, options: Any) -> None:
        x, out = op.Inputs(0), op.Outputs(0)
        kind = "MaxPool" if self._opname(op) == "MAX_POOL_2D" else "AveragePool"
        kernel = (options.FilterHeight(), options.FilterWidth())
        strides = (options.StrideH(), options.StrideW())
        pads = self._pads(x, kernel, strides, (1, 1), options.Padding())
        name = f"pool{out}"
        self.graph.nodes.append(Node(kind, (self._value(x),), (name,), name, {
            "kernel_shape": kernel, "strides": strides, "pads": pads}))
        self._emit(out, self._activation(name, options.FusedActivationFunction(), name))

    def _flatten(self, op: Any, options: Any) -> None:
        """RESHAPE/SQUEEZE to (N, D) after a 1x1 pool: a Flatten (order-safe only at 1x1)."""
        x, out = op.Inputs(0), op.Outputs(0)
        shape = self._shape(x)
        if len(self._shape(out)) != 2 or (len(shape) == 4 and shape[1] * shape[2] != 1):
            raise ModelError(f"{self.source}: only reshapes of a 1x1 feature map to (N, D) "
                             f"are supported, got {shape} -> {self._shape(out)}")
        name = f"flat{out}"
        self.graph.nodes.append(Node("Flatten", (self._value(x),), (name,), name, {"axis": 1}))
        self._emit(out, name)

    def _fully_connected(self, op: Any, options: Any) -> None:
        x, w, out = op.Inputs(0), op.Inputs(1), op.Outputs(0)
        shape = self._shape(x)
        if len(shape) == 4 and shape[1] * shape[2] != 1:
            raise ModelError(f"{self.source}: a fully connected layer on a {shape} feature map "
                             "is not supported (only on a pooled 1x1 map)")
        flat = f"flat{x}_emb"
        self.graph.nodes.append(Node("Flatten", (self._value(x),), (flat,), flat, {"axis": 1}))
        self._embedding(flat, shape[-1])
        weight = self._weight(w, self._constant(w), {0: 0}, signed=True)
        inputs = [self._value(x) if len(shape) == 2 else self._requantized(x, flat), weight]
        if op.InputsLength() > 2 and op.Inputs(2) >= 0:
            inputs.append(self._weight(op.Inputs(2), self._constant(op.Inputs(2)), {0: 0}))
        name = f"fc{out}"
        self.graph.nodes.append(Node("Gemm", tuple(inputs), (name,), name, {"transB": 1}))
        self._emit(out, self._activation(name, options.FusedActivationFunction(), name))

    def _requantized(self, index: int, flat: str) -> str:
        """The flattened input re-wrapped in Q/DQ, so ORT can fuse the Gemm into QGemm."""
        quant = self._quant(index)
        if not self.quantized or quant is None:
            return flat
        dtype, name = self._dtype(index), f"t{index}_flat"
        self._scale_zero(name + "_o", quant, dtype)
        self.graph.nodes.append(Node("QuantizeLinear", (flat, name + "_o_s", name + "_o_z"),
                                     (name + "_q",), f"q_{name}"))
        return self._dequantize(name + "_q", name, quant, dtype)

    def _embedding(self, flat: str, width: int) -> None:
        if self.embedding_width is not None:
            return  # the first fully connected layer's input is the embedding
        self.graph.nodes.append(Node("Identity", (flat,), (EMBEDDING,), "embedding"))
        self.graph.outputs.append(ValueInfo(EMBEDDING, FLOAT, ("N", width)))
        self.embedding_width = width

    def _softmax(self, op: Any, options: Any) -> None:
        if op.Outputs(0) != self.sub.Outputs(0):
            raise ModelError(f"{self.source}: a softmax that is not the last operator is not "
                             "supported")
        logits = self._value(op.Inputs(0))
        beta = float(options.Beta()) if options is not None else 1.0
        if beta != 1.0:
            self.graph.initializers["softmax_beta"] = np.array(beta, np.float32)
            self.graph.nodes.append(Node("Mul", (logits, "softmax_beta"), ("logits_beta",),
                                         "softmax_beta"))
            logits = "logits_beta"
        self.graph.nodes.append(Node("Softmax", (logits,), (PROBS,), "softmax", {"axis": 1}))

    def _append_softmax(self, output: int) -> None:
        """A model ending in logits gets a float softmax, so ``probs`` are probabilities."""
        logger.info("%s: the model ends without a softmax; adding one", self.source)
        self.graph.nodes.append(Node("Softmax", (self._value(output),), (PROBS,), "softmax",
                                     {"axis": 1}))


_OPNAMES = {value: name for name, value in vars(tflite.BuiltinOperator).items()
            if not name.startswith("_")}
