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
weights of ordinary and fully connected layers are stored as int8 (``_signed``): the same real
values, but onnxruntime then runs its u8s8 kernels, a quarter faster on x86 with VNNI.
Only the operators of MobileNet-style classifiers are supported; anything else raises
:class:`~feederd.errors.ModelError` naming the operator.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from feederd.bundle import Layout
from feederd.errors import ModelError
from feederd.onnx_proto import FLOAT, UINT8, Graph, Node, ValueInfo

logger = logging.getLogger(__name__)

INPUT = "image"
PROBS = "probs"
EMBEDDING = "embedding"
OPSET = 13
MODES = ("qdq", "qdq-u8", "fp32")
_NUMPY = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8,
          tflite.TensorType.INT32: np.int32, tflite.TensorType.FLOAT32: np.float32}
_OPNAMES = {value: name for name, value in vars(tflite.BuiltinOperator).items()
            if not name.startswith("_")}


@dataclass(frozen=True)
class Quant:
    """Per-tensor or per-axis affine quantization: real = scale * (q - zero_point)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


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


class Converter:
    """Walks the operators of one subgraph and emits ONNX nodes.

    ``mode`` is one of :data:`MODES`: ``qdq`` (shipped) takes uint8 NHWC pixels and stores the
    weights of non-depthwise layers as int8 (see :meth:`_signed`); ``qdq-u8`` is the earlier
    form, float NCHW input and every weight uint8 (u8u8 kernels); ``fp32`` dequantizes the
    weights and drops activation rounding (for comparisons: it changes answers).
    """

    def __init__(self, model: Any, source: str, mode: str = "qdq") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model = model
        self.sub = model.Subgraphs(0)
        self.source = source
        self.quantized = mode != "fp32"
        self.compact = mode == "qdq"  # uint8 input, int8 weights where exact
        self.graph = Graph(name="feederd_tflite")
        self.values: dict[int, str] = {}  # TFLite tensor index -> float ONNX name
        self.consumers = self._count_consumers()
        self.embedding_width: int | None = None
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
        layout: Layout = "NHWC" if self.graph.inputs[0].elem_type == UINT8 else "NCHW"
        return ConvertedGraph(self.graph, height, width, mean, std, self.embedding_width, layout)

    def _opname(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return _OPNAMES.get(builtin, f"builtin {builtin}")

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

    # --- tensors ------------------------------------------------------------------------------

    def _tensor(self, index: int) -> Any:
        return self.sub.Tensors(index)

    def _shape(self, index: int) -> list[int]:
        return [int(v) for v in self._tensor(index).ShapeAsNumpy()]

    def _width(self, index: int) -> int:
        return self._shape(index)[-1]

    def _quant(self, index: int) -> Quant | None:
        q = self._tensor(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength())
        return Quant(np.asarray(q.ScaleAsNumpy(), np.float32), np.asarray(zero, np.int64),
                     int(q.QuantizedDimension()))

    def _dtype(self, index: int) -> Any:
        kind = self._tensor(index).Type()
        if kind not in _NUMPY:
            raise ModelError(f"{self.source}: tensor {self._tensor(index).Name().decode()} has "
                             f"TFLite type {kind}; only uint8, int8, int32 and float32 import")
        return _NUMPY[kind]

    def _constant(self, index: int) -> np.ndarray:
        buffer = self.model.Buffers(self._tensor(index).Buffer())
        raw = buffer.DataAsNumpy() if buffer is not None else 0
        if isinstance(raw, int):
            raise ModelError(f"{self.source}: constant tensor #{index} has no data")
        return np.frombuffer(raw.tobytes(), self._dtype(index)).reshape(self._shape(index))

    def _weight(self, index: int, array: np.ndarray, axis_map: dict[int, int],
                signed: bool = False) -> str:
        """A constant as a float ONNX value: DQ of the stored integers, or dequantized now."""
        name = f"w{index}"
        quant = self._quant(index)
        if quant is None or array.dtype == np.float32:
            self.graph.initializers[name] = array.astype(np.float32)
            return name
        axis = axis_map.get(quant.axis, 0)
        if not self.quantized:
            shape = [1] * array.ndim
            if quant.scale.size > 1:
                shape[axis] = -1
            real = (array.astype(np.float64) - quant.zero_point.reshape(shape)) \
                * quant.scale.reshape(shape)
            self.graph.initializers[name] = real.astype(np.float32)
            return name
        if signed and self._signed(array):
            array = (array.astype(np.int16) - 128).astype(np.int8)
            quant = Quant(quant.scale, quant.zero_point - 128, quant.axis)
        self.graph.initializers[name + "_q"] = array
        return self._dequantize(name + "_q", name, quant, array.dtype, axis)

    def _signed(self, array: np.ndarray) -> bool:
        """Whether uint8 weights may be stored as int8 (minus 128): only when all of them lie
        in 1..255, i.e. -127..127 after the shift (TFLite's narrow weight range).

        Every onnxruntime kernel then computes the same integers as with uint8 weights: VNNI
        (x86) and UDOT (ARM64 with dot product) sum in int32, and the NEON kernel for CPUs
        without dot product (Pi 4) flips the activations to int8 and adds two products in
        int16, which cannot wrap when |weight| <= 127 (2 * 128 * 127 < 32768). Only x86 without
        VNNI saturates (PMADDUBSW): the classifier then asks onnxruntime to convert the weights
        back to uint8 (``session.x64quantprecision``).
        """
        return (self.compact and array.dtype == np.uint8 and array.ndim > 1
                and int(array.min()) >= 1)

    def _dequantize(self, source: str, target: str, quant: Quant, dtype: Any,
                    axis: int = 1) -> str:
        self._scale_zero(target, quant, dtype)
        attrs = {"axis": axis} if quant.scale.size > 1 else {}
        self.graph.nodes.append(Node("DequantizeLinear", (source, target + "_s", target + "_z"),
                                     (target,), f"dq_{target}", attrs))
        return target

    def _scale_zero(self, name: str, quant: Quant, dtype: Any) -> None:
        single = quant.scale.size == 1
        scale = quant.scale.reshape(()) if single else quant.scale
        zero = quant.zero_point.reshape(()) if single else quant.zero_point
        self.graph.initializers[name + "_s"] = scale.astype(np.float32)
        self.graph.initializers[name + "_z"] = zero.astype(dtype)

    def _emit(self, index: int, value: str) -> None:
        """Register the float result of a TFLite op, re-rounded to its uint8/int8 grid."""
        quant = self._quant(index)
        if quant is None:
            self.values[index] = value
            return
        dtype = self._dtype(index)
        name = f"t{index}"
        if not self.quantized:
            self.values[index] = self._range_clip(value, name, quant, dtype)
            return
        self._scale_zero(name + "_o", quant, dtype)
        self.graph.nodes.append(Node("QuantizeLinear", (value, name + "_o_s", name + "_o_z"),
                                     (name + "_q",), f"q_{name}"))
        self.values[index] = self._dequantize(name + "_q", name, quant, dtype)

    def _range_clip(self, value: str, name: str, quant: Quant, dtype: Any) -> str:
        """fp32 variant: clamp to the tensor's quantized range, which is where converters put
        a ReLU6 (the fused activation itself is often NONE)."""
        info = np.iinfo(dtype)
        scale, zero = float(quant.scale.reshape(-1)[0]), float(quant.zero_point.reshape(-1)[0])
        self.graph.initializers[name + "_lo"] = np.array(scale * (info.min - zero), np.float32)
        self.graph.initializers[name + "_hi"] = np.array(scale * (info.max - zero), np.float32)
        self.graph.nodes.append(Node("Clip", (value, name + "_lo", name + "_hi"),
                                     (name + "_c",), f"clip_{name}"))
        return name + "_c"

    def _value(self, index: int) -> str:
        try:
            return self.values[index]
        except KeyError:
            raise ModelError(f"{self.source}: tensor #{index} is used before it is computed "
                             "(constant activations are not supported)") from None

    def _activation(self, value: str, kind: int, name: str) -> str:
        """TFLite's fused activation as an ONNX node (ORT folds it into the next Quantize)."""
        act = tflite.ActivationFunctionType
        if kind == act.NONE:
            return value
        if kind == act.RELU:
            self.graph.nodes.append(Node("Relu", (value,), (name + "_act",), name + "_relu"))
        elif kind in (act.RELU6, act.RELU_N1_TO_1):
            low, high = (0.0, 6.0) if kind == act.RELU6 else (-1.0, 1.0)
            self.graph.initializers[name + "_lo"] = np.array(low, np.float32)
            self.graph.initializers[name + "_hi"] = np.array(high, np.float32)
            self.graph.nodes.append(Node("Clip", (value, name + "_lo", name + "_hi"),
                                         (name + "_act",), name + "_clip"))
        else:
            raise ModelError(f"{self.source}: fused activation {kind} is not supported")
        return name + "_act"

    # --- operators ----------------------------------------------------------------------------

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


def convert_graph(data: bytes, source: str, mode: str = "qdq") -> ConvertedGraph:
    """The ONNX graph of TFLite file bytes ``data`` (``source`` names it in errors)."""
    return Converter(load_model(data, source), source, mode).convert()
