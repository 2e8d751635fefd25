"""``feeder-sync init --from-bundle`` and its ``train``: improve a shipped bundle without any
labelled photo folder, from the owner's replies and the device's mined samples alone.

The baseline is the shipped bundle itself (copied into the workspace); each ``train`` builds
the reject gate of :mod:`feederd.sync.reject` from every labelled pulled sample (negatives and
their augmented views are the prototypes, confirmed species guard the threshold) into one ONNX
file. The gate's answers on the samples it was built from are written out-of-fold (each fold
of rejected *visits* removed, views included, from the prototypes and the threshold), so
``evaluate`` grades "fewer false alerts" on visits the candidate did not memorise.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feederd.bundle import read_bundle
from feederd.errors import SyncError
from feederd.sync.config import TrainingConfig
from feederd.sync.dataset import BundleRunner, Item, VectorCache, mined_items
from feederd.sync.reject import (
    MAX_PROTOTYPES,
    VIEWS,
    base_metadata,
    calibrate,
    gated_bundle,
    gated_probs,
)
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

FIELD = "_field"


def init_from_bundle(workspace: Workspace, cfg: TrainingConfig, bundle_path: Path) -> Any:
    """A workspace whose baseline is ``bundle_path`` (validated and copied), no training."""
    from feederd.classifier import Classifier
    from feederd.sync.train import TrainResult

    started = time.perf_counter()
    source = bundle_path.expanduser().resolve()
    classifier = Classifier(source, threads=1)  # full validation, as the device does
    if not classifier.has_embedding:
        raise SyncError(f"{source}: the bundle has no 'embedding' output to build on")
    bundle = classifier.bundle
    workspace.create()
    path = workspace.model_path(bundle.version)
    shutil.copyfile(source, path)
    negatives = sorted(bundle.negative_labels)
    setup = {"from_bundle": str(path.relative_to(workspace.dir)), "data": None,
             "labels": list(bundle.labels), "negative_labels": negatives,
             "base_negative_labels": negatives, "input": bundle.input.as_dict(),
             "holdout": cfg.holdout, "seed": cfg.seed,
             "embedder": str(path.relative_to(workspace.dir)),
             "embedder_key": f"emb:{bundle.sha256[:32]}"}
    state = workspace.load_state()
    state.update({"init": setup, "baseline": bundle.version, "candidate": bundle.version})
    state.setdefault("models", {})[bundle.version] = {
        "file": str(path.relative_to(workspace.dir)), "parent": None, "gate": None,
        "created": bundle.created, "trained_on": dict(bundle.trained_on), "metrics": {}}
    workspace.save_state(state)
    workspace.record("init", version=bundle.version, bundle=str(source))
    return TrainResult(bundle.version, path, None, list(bundle.labels),
                       dict(bundle.trained_on), dict(bundle.metrics), 0, 0,
                       time.perf_counter() - started)


def train_gate(workspace: Workspace, cfg: TrainingConfig, setup: dict[str, Any],
               version: str | None, progress: bool) -> Any:
    """The reject gate on the base bundle from the labelled pulled samples."""
    from feederd.sync import train as training

    started = time.perf_counter()
    state = workspace.load_state()
    base = workspace.dir / setup["from_bundle"]
    labels, base_negatives = list(setup["labels"]), set(setup["base_negative_labels"])
    field_label = sorted(base_negatives)[0] + FIELD if base_negatives else "other" + FIELD
    mined = mined_items(workspace, cfg.use_pseudo)
    if unknown := sorted({i.label for i in mined} - set(labels) - {field_label}):
        raise SyncError(f"mined samples carry labels the bundle lacks: {', '.join(unknown)}; "
                        "relabel them with 'feeder-sync review --label ID=LABEL' (a shipped "
                        "bundle cannot learn new classes here)")
    negative = [i for i in mined if i.label in base_negatives or i.label == field_label]
    positive = [i for i in mined if i not in negative]
    x_neg, x_pos, probs, shas, views = _embed(workspace, setup, cfg, negative, positive)
    groups = _visits(negative)
    view_groups = np.tile(groups, len(VIEWS))
    protos, proto_groups = _capped(np.vstack([x_neg, views]),
                                   np.concatenate([groups, view_groups]))
    tau, alpha = calibrate(x_neg, x_pos, groups, protos, proto_groups)
    oof = _out_of_fold(negative, positive, x_neg, x_pos, probs, shas, cfg, groups,
                       (protos, proto_groups))
    parent = state.get("deployed") or state.get("baseline")
    version = version or training._next_version(workspace, state)
    trained_on = dict(sorted(Counter(
        [field_label] * len(negative) + [i.label for i in positive]).items()))
    metrics = {"reject_gate": {"prototypes": len(protos), "negatives": len(negative),
                               "visits": len(np.unique(groups)), "guards": len(positive),
                               "tau": round(tau, 4), "alpha": round(alpha, 2)}}
    meta = _metadata(base, field_label, version, parent, trained_on, metrics)
    path = gated_bundle(base, protos, tau, field_label, workspace.model_path(version), meta,
                        alpha)
    items = [*negative, *positive]
    training._write_sidecar(workspace, version, parent, items, shas, oof, 0)
    training._remember(workspace, version, parent, path, trained_on, metrics,
                       sorted(base_negatives | {field_label}))
    logger.info("reject gate %s: %d rejected frames of %d visits, %d prototypes, tau %.3f",
                version, len(negative), len(np.unique(groups)), len(protos), tau)
    return training.TrainResult(version, path, parent, [*labels, field_label], trained_on,
                                metrics, len(items), 0, time.perf_counter() - started)


def _embed(workspace: Workspace, setup: dict[str, Any], cfg: TrainingConfig,
           negative: Sequence[Item], positive: Sequence[Item]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str], np.ndarray]:
    """Embeddings of both sets, the base bundle's probabilities of all, the hashes, and the
    embeddings of every negative's augmented views (:data:`VIEWS`, one kind after another):
    one model load and one cache for all of them."""
    everything = [*negative, *positive]
    paths = [i.path for i in everything]
    cache = VectorCache(workspace.cache_path)
    try:
        bundle = workspace.dir / setup["from_bundle"]
        embed = BundleRunner(bundle, cache, setup["embedder_key"], "embedding", cfg.threads,
                             cfg.batch_size)
        x, sha_list = embed.vectors(paths)
        probs, _ = embed.for_output("probs", f"probs:{read_bundle(bundle).sha256}"
                                    ).vectors(paths)
        parts = [embed.derived(f"view:{name}", render).vectors(paths[:len(negative)])[0]
                 for name, render in VIEWS.items()]
    finally:
        cache.close()
    shas = {i.key: sha for i, sha in zip(everything, sha_list, strict=True)}
    width = x.shape[1] if x.size else 0
    views = np.vstack([p.reshape(-1, width) for p in parts])
    return (x[:len(negative)].reshape(-1, width), x[len(negative):].reshape(-1, width),
            probs, shas, views)


def _visits(items: Sequence[Item]) -> np.ndarray:
    """Each item's visit as a small integer (an item without one is a visit of its own)."""
    names = [(i.sample or {}).get("visit_id") or i.key for i in items]
    index = {name: n for n, name in enumerate(dict.fromkeys(names))}
    return np.array([index[name] for name in names], int)


def _capped(protos: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_PROTOTYPES (the device holds them all in memory): the rejected frames
    first, then their views one kind at a time (``_embed`` orders them so)."""
    if len(protos) > MAX_PROTOTYPES:
        logger.info("reject gate: %d prototypes, keeping the first %d (rejected frames "
                    "first, then their views)", len(protos), MAX_PROTOTYPES)
    return protos[:MAX_PROTOTYPES], groups[:MAX_PROTOTYPES]


def _out_of_fold(negative: Sequence[Item], positive: Sequence[Item], x_neg: np.ndarray,
                 x_pos: np.ndarray, probs: np.ndarray, shas: dict[str, str],
                 cfg: TrainingConfig, groups: np.ndarray,
                 prototypes: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    """Each sample's gated probabilities from a gate built without its fold (of visits)."""
    items = [*negative, *positive]
    x = np.vstack([x_neg, x_pos]) if len(x_pos) else x_neg
    visits = np.unique(groups)
    folds = max(2, min(cfg.folds, len(visits)))
    fold_of = np.concatenate([groups % folds, np.arange(len(positive)) % folds])
    protos, proto_groups = prototypes
    oof: dict[str, list[float]] = {}
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        keep = fold_of[:len(negative)] != fold
        keep_protos = proto_groups % folds != fold
        if keep.sum() < 2 or not len(held):
            continue
        tau, alpha = calibrate(x_neg[keep], x_pos[fold_of[len(negative):] != fold],
                               groups[keep], protos[keep_protos], proto_groups[keep_protos])
        gated = gated_probs(probs[held], x[held], protos[keep_protos], tau, alpha)
        for n, row in zip(held, gated, strict=True):
            oof[shas[items[n].key]] = [round(float(p), 6) for p in row]
    return oof


def _metadata(base: Path, field_label: str, version: str, parent: str | None,
              trained_on: dict[str, int], metrics: dict[str, Any]) -> dict[str, Any]:
    from feederd.sync.build import now_iso

    meta = base_metadata(base)
    meta["labels"] = [*meta["labels"], field_label]
    meta["negative_labels"] = sorted({*meta.get("negative_labels", []), field_label})
    if "display_names" in meta:
        meta["display_names"] = {**meta["display_names"],
                                 field_label: "Not a bird (learned at this feeder)"}
    metrics = {**metrics, "base_version": meta.get("version")}
    meta.update({"version": version, "parent_version": parent, "created": now_iso(),
                 "trained_on": trained_on, "metrics": metrics})
    return meta
