"""The loop without a base dataset: a learned reject gate in front of a shipped bundle.

An owner of the shipped bird model (AIY Birds V1: 964 species + background) has no labelled
photo folder, so there is no head to retrain. What the owner does have is the device's own
evidence: frames it alerted on that the owner rejected. ``feeder-sync init --from-bundle``
starts a workspace whose baseline *is* the shipped bundle; ``train`` then puts a reject gate
in front of its species head, inside the same ONNX file:

    field logit = logsumexp(base logits) + alpha * (max_j cos(embedding, n_j) - tau)

where ``n_j`` are the embeddings of the owner's field negatives (rejected frames, and other
mined samples labelled as nothing of interest) and of augmented views of them. The softmax over
``[base logits, field logit]`` gives the field class ``<negative>_field`` the probability
sigmoid(alpha * (s - tau)) and scales every species by the rest: the species' order among
themselves is the base model's, so the base model's species accuracy can only change where a
frame looks like what the owner rejected.

Few rejections teach little on their own: 25 replies at a feeder are often a dozen animals
coming back. So each rejected frame also gives :data:`VIEWS`, the same frame as the camera
could have shown that animal (mirrored, closer, off-centre, lighter, darker), each through
the device's JPEG; a new squirrel facing the other way is then near one of them. ``tau`` is
chosen by cross-validation on the owner's own rejections: each rejected *visit* is held out in
turn and scored against the prototypes of the other visits (views included), and ``tau`` is the
similarity that would have caught ``cover`` of them (frames of one visit are near-duplicates of
each other, so holding out single frames would make every rejection look easy). It never goes
below ``floor`` (AIY embeddings of unrelated photos reach cosine ~0.5) and stays ``guard``
above every positive the owner confirmed (``correct`` / corrected replies). ``alpha`` puts
P(field) at 0.95 at the held-out visits' median similarity: a softer gate than a step, so a
squirrel a little below ``tau`` still loses some of its (usually modest) species confidence
while a bird far below keeps all of its.

Nearest-prototype rather than a logistic head: with no positive photos a discriminative head
has nothing to separate the negatives from (the species head's weight rows are no stand-in:
trained against them, a head calls a third of the CUB photos "field"), while a similarity
gate needs only the negatives and is conservative by construction (far from every rejected
frame, nothing changes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import helper, numpy_helper

from feederd.bundle import METADATA_PREFIX, read_bundle
from feederd.classifier import EMBEDDING, PROBS
from feederd.errors import SyncError

logger = logging.getLogger(__name__)

ALPHA = 60.0  # sharpness by default: 0.1 of cosine similarity moves P(field) 0.05 -> 0.95
ALPHA_RANGE = (15.0, 200.0)  # the sharpness calibrate() chooses stays within these
COVER = 0.75  # tau catches this share of the rejected visits, each held out in turn
FLOOR = 0.5  # tau never goes below this cosine similarity
GUARD = 0.02  # tau stays this far above every confirmed positive's similarity
MAX_PROTOTYPES = 1024  # 5 MB of float32 in the bundle and the device's memory
JPEG_QUALITY = 90  # the device's mining.jpeg_quality default: a view is stored as a sample is


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), np.float32)


def nearest(x: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Each row's largest cosine similarity to the prototypes (-1 without prototypes)."""
    if not len(prototypes) or not len(x):
        return np.full(len(x), -1.0)
    return np.asarray((unit(x) @ unit(prototypes).T).max(axis=1), np.float64)


def threshold(negatives: np.ndarray, positives: np.ndarray,
              groups: np.ndarray | None = None, prototypes: np.ndarray | None = None,
              prototype_groups: np.ndarray | None = None, *, cover: float = COVER,
              guard: float = GUARD, floor: float = FLOOR) -> float:
    """``tau`` of :func:`calibrate`."""
    return calibrate(negatives, positives, groups, prototypes, prototype_groups, cover=cover,
                     guard=guard, floor=floor)[0]


def calibrate(negatives: np.ndarray, positives: np.ndarray,
              groups: np.ndarray | None = None, prototypes: np.ndarray | None = None,
              prototype_groups: np.ndarray | None = None, *, cover: float = COVER,
              guard: float = GUARD, floor: float = FLOOR) -> tuple[float, float]:
    """``(tau, alpha)``: see the module docstring.

    ``groups``: each negative's visit (default: one each; fewer than two visits also count
    each frame on its own); ``prototypes`` and ``prototype_groups``: what the gate compares
    with (default: the negatives themselves), each with its negative's visit. ``alpha`` makes
    P(field) 0.95 at the held-out visits' median similarity: a backbone whose similarities
    spread little gets a sharper gate.
    """
    if len(negatives) < 2:
        raise SyncError("the reject gate needs at least two field negatives (frames the owner "
                        "rejected); reply 'not a bird' to false alerts, pull, and train again")
    if groups is None or len(np.unique(groups)) < 2:
        groups, prototype_groups = np.arange(len(negatives)), None
    if prototypes is None or prototype_groups is None:
        prototypes, prototype_groups = negatives, groups
    caught = [float(nearest(negatives[groups == g], prototypes[prototype_groups != g]).max())
              for g in np.unique(groups)]
    tau = max(float(np.quantile(caught, 1.0 - cover)), floor)
    alpha = float(np.clip(np.log(19.0) / max(float(np.median(caught)) - tau, 1e-3),
                          *ALPHA_RANGE))
    if len(positives):
        tau = max(tau, float(nearest(positives, prototypes).max()) + guard)
    return min(tau, 0.999), alpha


# --- augmented views of a rejected frame -------------------------------------------------------

Render = Callable[[np.ndarray], np.ndarray]


def _crop(share: float, fx: float, fy: float, mirror: bool) -> Render:
    """A ``share``-sized square window at (fx, fy) of the free room, mirrored or not."""
    def render(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        ch, cw = max(1, int(h * share)), max(1, int(w * share))
        y, x = int((h - ch) * fy), int((w - cw) * fx)
        out = image[y:y + ch, x:x + cw]
        return _stored(out[:, ::-1] if mirror else out)
    return render


def _light(gain: float) -> Render:
    return lambda image: _stored(np.clip(image * gain, 0, 255).astype(np.uint8))


def _stored(image: np.ndarray) -> np.ndarray:
    """As a mined sample is stored: JPEG at the device's quality, decoded again."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image),
                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SyncError(f"cannot encode a {image.shape} view of a rejected frame as JPEG")
    return np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR))


VIEWS: dict[str, Render] = {
    "mirror": _crop(1.0, 0.0, 0.0, True),
    **{f"crop80-{fx}{fy}{'m' if m else ''}": _crop(0.8, fx, fy, m)
       for fx, fy in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1)) for m in (False, True)},
    "crop65": _crop(0.65, 0.5, 0.5, False), "crop65m": _crop(0.65, 0.5, 0.5, True),
    "dark": _light(0.75), "light": _light(1.25),
}
"""Each rejected frame's augmented views (the frame itself is the prototype beside them), by
a stable name (cache keys)."""


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


__all__ = ["MAX_PROTOTYPES", "VIEWS", "calibrate", "field_probability", "gated_bundle",
           "gated_probs", "nearest", "threshold", "unit"]
