"""The loop without a base dataset: a learned reject gate in front of a shipped bundle.

An owner of the shipped bird model (AIY Birds V1: 964 species + background) has no labelled
photo folder, so there is no head to retrain. What the owner does have is the device's own
evidence: frames it alerted on that the owner rejected. ``feeder-sync init --from-bundle``
starts a workspace whose baseline *is* the shipped bundle; ``train`` then puts a reject gate
in front of its species head, inside the same ONNX file:

    field logit = logsumexp(base logits) + alpha * (max_j cos(embedding, n_j) - tau)

where ``n_j`` are the embeddings of the owner's field negatives (rejected frames, and other
mined samples labelled as nothing of interest). The softmax over ``[base logits, field
logit]`` gives the field class ``<negative>_field`` the probability sigmoid(alpha * (s - tau))
and scales every species by the rest: the species' order among themselves is the base
model's, so the base model's species accuracy can only change where a frame looks like what
the owner rejected. ``tau`` is the lower ``cover`` quantile of each negative's similarity to
its nearest *other* negative (so a new frame as close to the rejected ones as they are to each
other is caught), raised above every positive the owner confirmed (``correct`` / corrected
replies), which must stay species.

Nearest-prototype rather than a logistic head: with no positive photos a discriminative head
has nothing to separate the negatives from, while a similarity gate needs only the negatives
and is conservative by construction (far from every rejected frame, nothing changes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from feederd.bundle import METADATA_PREFIX, read_bundle
from feederd.classifier import EMBEDDING, PROBS
from feederd.errors import SyncError

logger = logging.getLogger(__name__)

ALPHA = 60.0  # sharpness: 0.1 of cosine similarity moves P(field) from 0.05 to 0.95
COVER = 0.5  # tau: this quantile of the negatives' nearest-other-negative similarity
GUARD = 0.02  # tau stays this far above every confirmed positive's similarity


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), np.float32)


def nearest(x: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Each row's largest cosine similarity to the prototypes (-1 without prototypes)."""
    if not len(prototypes) or not len(x):
        return np.full(len(x), -1.0)
    return np.asarray((unit(x) @ unit(prototypes).T).max(axis=1), np.float64)


def threshold(negatives: np.ndarray, positives: np.ndarray, cover: float = COVER,
              guard: float = GUARD) -> float:
    """``tau``: see the module docstring. Needs at least two negatives."""
    if len(negatives) < 2:
        raise SyncError("the reject gate needs at least two field negatives (frames the owner "
                        "rejected); reply 'not a bird' to false alerts, pull, and train again")
    sims = unit(negatives) @ unit(negatives).T
    np.fill_diagonal(sims, -1.0)
    tau = float(np.quantile(sims.max(axis=1), cover))
    if len(positives):
        tau = max(tau, float(nearest(positives, negatives).max()) + guard)
    return min(tau, 0.999)


def field_probability(x: np.ndarray, prototypes: np.ndarray, tau: float,
                      alpha: float = ALPHA) -> np.ndarray:
    """P(field) the gated bundle gives embeddings ``x``."""
    return np.asarray(1.0 / (1.0 + np.exp(-alpha * (nearest(x, prototypes) - tau))))


def gated_probs(base: np.ndarray, x: np.ndarray, prototypes: np.ndarray, tau: float,
                alpha: float = ALPHA) -> np.ndarray:
    """The gated bundle's probabilities from the base ones (N x C) and embeddings: N x C+1."""
    field = field_probability(x, prototypes, tau, alpha)[:, None]
    return np.hstack([base * (1.0 - field), field]).astype(np.float32)


# --- the ONNX graph ---------------------------------------------------------------------------

def gated_bundle(base: Path, prototypes: np.ndarray, tau: float, field_label: str, out: Path,
                 meta: dict[str, Any], alpha: float = ALPHA) -> Path:
    """``base`` with the reject gate in front of its softmax; ``meta`` replaces its metadata
    (labels must end with ``field_label``)."""
    from feederd.sync.build import _write_bundle, write_metadata

    model = onnx.load(str(base))
    graph = model.graph
    softmax = _final_softmax(graph)
    if softmax is None or not any(o.name == EMBEDDING for o in graph.output):
        raise SyncError(f"{base}: a reject gate needs a bundle whose '{PROBS}' is a Softmax "
                        f"and which has an '{EMBEDDING}' output")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    logits = softmax.input[0]
    nodes, inits = _gate_nodes(logits, unit(prototypes).T, tau, alpha, opset)
    softmax.input[0] = "gate_logits"
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    _sort(graph)
    for output in graph.output:
        if output.name == PROBS:
            output.type.tensor_type.shape.dim[1].dim_value = len(meta["labels"])

    def build(dynamic: bool) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        write_metadata(copy, meta)
        return copy

    spec = read_bundle(base).input
    return _write_bundle(build, meta, out, spec)


def _sort(graph: onnx.GraphProto) -> None:
    """Order the nodes so each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        placed = [n for n in pending if all(name in ready for name in n.input)]
        if not placed:
            raise SyncError("the reject gate's graph has a cycle; this is a bug")
        for node in placed:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in placed]
    del graph.node[:]
    graph.node.extend(ordered)


def _final_softmax(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The Softmax that makes ``probs``, through any Flatten, Reshape or Identity after it."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(PROBS)
    while node is not None and node.op_type in ("Flatten", "Reshape", "Identity"):
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type == "Softmax" else None


def _gate_nodes(logits: str, prototypes_t: np.ndarray, tau: float, alpha: float, opset: int
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    inits = [numpy_helper.from_array(prototypes_t.astype(np.float32), "gate_prototypes"),
             numpy_helper.from_array(np.array([tau], np.float32), "gate_tau"),
             numpy_helper.from_array(np.array([alpha], np.float32), "gate_alpha"),
             numpy_helper.from_array(np.array([1e-12], np.float32), "gate_eps"),
             numpy_helper.from_array(np.array([1], np.int64), "gate_axes")]

    def reduce(op: str, source: str, name: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node(op, [source, "gate_axes"], [name], name=name, keepdims=1)
        return helper.make_node(op, [source], [name], name=name, axes=[1], keepdims=1)

    nodes = [
        helper.make_node("Flatten", [logits], ["gate_base"], name="gate_base", axis=1),
        reduce("ReduceL2", EMBEDDING, "gate_norm"),
        helper.make_node("Max", ["gate_norm", "gate_eps"], ["gate_norm_safe"],
                         name="gate_norm_safe"),
        helper.make_node("Div", [EMBEDDING, "gate_norm_safe"], ["gate_unit"], name="gate_unit"),
        helper.make_node("MatMul", ["gate_unit", "gate_prototypes"], ["gate_sims"],
                         name="gate_sims"),
        reduce("ReduceMax", "gate_sims", "gate_nearest"),
        helper.make_node("Sub", ["gate_nearest", "gate_tau"], ["gate_over"], name="gate_over"),
        helper.make_node("Mul", ["gate_over", "gate_alpha"], ["gate_score"], name="gate_score"),
        reduce("ReduceLogSumExp", "gate_base", "gate_lse"),
        helper.make_node("Add", ["gate_lse", "gate_score"], ["gate_field"], name="gate_field"),
        helper.make_node("Concat", ["gate_base", "gate_field"], ["gate_logits"],
                         name="gate_logits", axis=1),
    ]
    return nodes, inits


def base_metadata(base: Path) -> dict[str, Any]:
    """The base bundle's ``feederd.*`` metadata, decoded."""
    import json

    model = onnx.load(str(base), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value) for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}


__all__ = ["field_probability", "gated_bundle", "gated_probs", "nearest",
           "threshold", "unit"]
