"""Zero-point-0 int8 weights for the convolutions where that changes no answer.

onnxruntime runs a ``QLinearConv`` whose weights are int8 with zero point 0 in its symmetric
kernels (``MlasConvSym``/``MlasConvSymDepthwise``), which fuse the requantization into the
convolution instead of writing int32 results and rescaling them in a second pass; on the AIY
model the depthwise layers that qualify run about twice as fast. A TFLite uint8 weight tensor
``q`` with zero point ``z`` holds the same real values as int8 ``q - z`` with zero point 0, but
only if every ``q - z`` fits -127..127 (-128 could wrap in the ARM64 kernel without dot product,
which adds two products in int16). Most MobileNet layers have one to four channels that do not
fit, and re-scaling those channels changes answers: in AIY, rounding 8 channels of one layer to
a grid 5% coarser changes 2% of top-1 answers. So a layer is rewritten only when it is exact:

- every channel fits; or
- the channels that do not fit are never read: every convolution that consumes the layer gives
  that channel real weight 0 (a depthwise consumer passes the question on to its own consumers).
  Such a channel's weights are set to 0, since nothing downstream can see its values;
- the weights that do not fit multiply an input channel that is its zero point everywhere: the
  convolution producing it gives it real weight 0 and a bias that the clamp below it (a ReLU, or
  a uint8 grid whose zero point is 0) turns into 0. Those weights are set to 0 first.

Anything else that consumes a layer (an ``Add``, a pool, a graph output) counts as reading every
channel. On x86 without VNNI the classifier's ``session.x64quantprecision`` turns these weights
back into uint8 like the others (see :mod:`feederd.cpuflags`), so the rewrite is exact there too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from feederd.onnx_proto import Graph, Node

logger = logging.getLogger(__name__)

LIMIT = 127  # |q - z| that every onnxruntime int8 kernel sums without wrapping
_ELEMENTWISE = frozenset({"QuantizeLinear", "DequantizeLinear", "Clip", "Relu"})


class _Convs:
    """The graph's Conv nodes with their integer weights, producers and consumers."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.nodes for out in node.outputs}
        self.readers: dict[str, list[Node]] = {}
        for node in graph.nodes:
            for name in node.inputs[:1]:  # the data input; the rest are constants
                self.readers.setdefault(name, []).append(node)
        self.outputs = {info.name for info in graph.outputs}
        self._unused: dict[tuple[str, int], bool] = {}

    def weight_names(self, conv: Node) -> tuple[str, str] | None:
        """The (integers, zero point) initializers behind a Conv's weight, if quantized."""
        dq = self.producer.get(conv.inputs[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.inputs) < 3:
            return None
        q, zero = dq.inputs[0], dq.inputs[2]
        inits = self.graph.initializers
        if q not in inits or zero not in inits or inits[q].dtype not in (np.uint8, np.int8):
            return None
        return q, zero

    def centered(self, conv: Node) -> np.ndarray | None:
        """The weights as ``q - z`` in int32, [out channels, ...]; None if not quantized."""
        names = self.weight_names(conv)
        if names is None:
            return None
        q, zero = (self.graph.initializers[name] for name in names)
        shape = (-1,) + (1,) * (q.ndim - 1) if zero.size > 1 else ()
        return q.astype(np.int32) - zero.astype(np.int32).reshape(shape)

    def consumers(self, value: str) -> Iterator[Node | None]:
        """The Convs that read ``value`` through element-wise nodes; None for any other reader."""
        pending = [value]
        while pending:
            name = pending.pop()
            if name in self.outputs:
                yield None
            for node in self.readers.get(name, []):
                if node.op_type == "Conv":
                    yield node
                elif node.op_type in _ELEMENTWISE:
                    pending.extend(node.outputs)
                else:
                    yield None

    def unused(self, conv: Node, channel: int) -> bool:
        """Whether nothing downstream depends on output ``channel`` of ``conv``."""
        key = (conv.name, channel)
        if key not in self._unused:
            self._unused[key] = False  # a cycle (none in an inference graph) reads as used
            self._unused[key] = all(self._ignores(reader, channel)
                                    for reader in self.consumers(conv.outputs[0]))
        return self._unused[key]

    def zero_inputs(self, conv: Node) -> list[int]:
        """The input channels of ``conv`` that hold its zero point whatever the image."""
        chain = self._producer_chain(conv.inputs[0])
        if chain is None:
            return []
        producer, clamped = chain
        weights = self.centered(producer)
        if weights is None:
            return []
        bias = self._bias(producer, weights.shape[0])
        silent = ~weights.reshape(weights.shape[0], -1).any(axis=1)
        return [int(c) for c in np.flatnonzero(silent & ((bias == 0) | ((bias < 0) & clamped)))]

    def _producer_chain(self, value: str) -> tuple[Node, bool] | None:
        """The Conv behind ``value`` (DequantizeLinear <- QuantizeLinear <- Relu/Clip... <-
        Conv), and whether that chain turns negative values into exactly 0."""
        dq = self.producer.get(value)
        quantize = self.producer.get(dq.inputs[0]) if dq is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or quantize is None \
                or quantize.op_type != "QuantizeLinear" or len(quantize.inputs) < 3:
            return None
        zero = self.graph.initializers.get(quantize.inputs[2])
        clamped = zero is not None and zero.size == 1 and int(zero.reshape(())) == \
            np.iinfo(zero.dtype).min
        node = self.producer.get(quantize.inputs[0])
        while node is not None and node.op_type in ("Relu", "Clip"):
            low = self.graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
            clamped |= node.op_type == "Relu" or (low is not None and float(low) == 0.0)
            node = self.producer.get(node.inputs[0])
        return (node, clamped) if node is not None and node.op_type == "Conv" else None

    def _bias(self, conv: Node, channels: int) -> np.ndarray:
        """The int32 bias of a Conv (zeros when it has none; ones, i.e. unknown, when it is not
        a quantized constant)."""
        if len(conv.inputs) < 3:
            return np.zeros(channels, np.int64)
        dq = self.producer.get(conv.inputs[2])
        bias = self.graph.initializers.get(dq.inputs[0]) if dq is not None else None
        if bias is None or bias.dtype != np.int32:
            return np.ones(channels, np.int64)
        return bias.astype(np.int64).reshape(-1)

    def _ignores(self, reader: Node | None, channel: int) -> bool:
        if reader is None:
            return False
        weights = self.centered(reader)
        if weights is None:
            return False
        group = int(reader.attributes.get("group", 1))  # type: ignore[arg-type]
        if group == 1:
            return not np.any(weights[:, channel])
        if group == weights.shape[0] and weights.shape[1] == 1:  # depthwise, multiplier 1
            return self.unused(reader, channel)
        return False


def make_symmetric(graph: Graph) -> list[str]:
    """Give zero point 0 to the weights of every Conv where the rules above make that exact,
    in place; returns the names of those Convs."""
    convs = _Convs(graph)
    plans: list[tuple[Node, np.ndarray]] = []
    for conv in (node for node in graph.nodes if node.op_type == "Conv"):
        weights = convs.centered(conv)
        if weights is None:
            continue
        silent = convs.zero_inputs(conv)
        group = int(conv.attributes.get("group", 1))  # type: ignore[arg-type]
        if group == 1:
            weights[:, silent] = 0
        elif group == len(weights) and weights.shape[1] == 1:  # depthwise, multiplier 1
            weights[silent] = 0
        wide = np.abs(weights).reshape(weights.shape[0], -1).max(axis=1) > LIMIT
        if all(convs.unused(conv, int(channel)) for channel in np.flatnonzero(wide)):
            weights[wide] = 0
            plans.append((conv, weights))
    for conv, weights in plans:  # after the analysis, which reads the original weights
        names = convs.weight_names(conv)
        assert names is not None
        q, zero = names
        graph.initializers[q] = weights.astype(np.int8)
        graph.initializers[zero] = np.zeros_like(graph.initializers[zero], dtype=np.int8)
    logger.debug("zero-point-0 int8 weights in %d of %d convolutions", len(plans),
                 sum(node.op_type == "Conv" for node in graph.nodes))
    return [conv.name for conv, _ in plans]
