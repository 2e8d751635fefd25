"""``feeder-sync train``: a logistic-regression head on cached backbone embeddings.

Retraining only the head is what makes a retrain after a handful of mined samples take seconds
and stay sound: the backbone's features are fixed, the embeddings of every image ever seen are
cached, and a linear classifier on standardised features needs little data. The head is
written into a full bundle (backbone + head, ``probs`` and ``embedding`` outputs) by
:func:`feederd.sync.build.head_bundle`, with the scaler folded into its weights.

Negatives (labels in ``negative_labels``) are capped at ``neg_per_pos`` per positive sample so
that ``other`` does not swamp the species; the owner's field negatives are kept first, as they
are the mistakes the device actually made. A lookalike such as ``squirrel`` may be its own
class, listed as negative. A mined label the base dataset lacks is an error unless new classes
are allowed, since a typo in a reply would otherwise become a class.

For the gate, every mined sample the candidate trains on also gets an *out-of-fold*
prediction (a head trained without it), so the evaluation of "fewer false alerts on field
negatives" is not measured on the very samples the head memorised. The head itself and that
estimate are :mod:`feederd.sync.head`'s; the workspace's first baseline is
:mod:`feederd.sync.init`'s.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from feederd.atomic import write_bytes, write_json
from feederd.errors import SyncError
from feederd.sync.config import TrainingConfig
from feederd.sync.dataset import (
    Item,
    VectorCache,
    mined_items,
    progress_bar,
    scan_folder,
    split,
)
from feederd.sync.domain import augmented, embedders
from feederd.sync.head import Head, fit_head, head_path, out_of_fold
from feederd.sync.samples import EVIDENCE_REASONS
from feederd.sync.workspace import Workspace, safe_name

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    version: str
    path: Path
    parent: str | None
    labels: list[str]
    trained_on: dict[str, int]
    metrics: dict[str, Any]
    mined_used: int
    embedded: int
    seconds: float
    dropped_negatives: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "file": str(self.path), "parent": self.parent,
                "labels": self.labels, "trained_on": self.trained_on, "metrics": self.metrics,
                "mined_used": self.mined_used, "newly_embedded": self.embedded,
                "dropped_negatives": self.dropped_negatives,
                "seconds": round(self.seconds, 2)}


# --- the training set -------------------------------------------------------------------------


def cap_negatives(items: Sequence[Item], negatives: set[str], per_positive: float,
                  seed: int) -> tuple[list[Item], int]:
    """All positives; negatives up to ``per_positive`` per positive, field negatives first."""
    positives = [i for i in items if i.label not in negatives]
    negative = [i for i in items if i.label in negatives]
    limit = round(per_positive * len(positives)) if positives else len(negative)
    if len(negative) <= limit:
        return list(items), 0
    rng = np.random.default_rng(seed)
    mined = [i for i in negative if i.source in ("mined", "scene")]
    base = [i for i in negative if i.source not in ("mined", "scene")]
    keep = _sample(mined, limit, rng) + _sample(base, max(0, limit - len(mined)), rng)
    return positives + keep, len(negative) - len(keep)


def _sample(items: list[Item], count: int, rng: np.random.Generator) -> list[Item]:
    if len(items) <= count:
        return items
    chosen = sorted(rng.choice(len(items), size=count, replace=False))
    return [items[i] for i in chosen]


FIELD_SUFFIX = "_field"


def field_negative(item: Item, base_negatives: set[str]) -> Item:
    """A mined sample labelled ``other`` trains as ``other_field`` (see ``field_class``);
    the device's empty scenes stay in ``other``, as the empty-feeder crops made here do."""
    reasons = set((item.sample or {}).get("reasons") or ())
    if item.label in base_negatives and not reasons & EVIDENCE_REASONS:
        return replace(item, label=item.label + FIELD_SUFFIX)
    return item


def check_labels(base_labels: Sequence[str], mined: Sequence[Item], allow_new_class: bool
                 ) -> list[str]:
    """The label list of the new head: the base labels (their order kept), plus new ones."""
    new = sorted({item.label for item in mined} - set(base_labels))
    if new and not allow_new_class:
        counts = Counter(item.label for item in mined if item.label in new)
        listed = ", ".join(f"{name} ({counts[name]} samples)" for name in new)
        raise SyncError(f"mined samples carry labels the base dataset lacks: {listed}; "
                        "relabel them with 'feeder-sync review --label ID=LABEL', or add them "
                        "as new classes with --allow-new-class (and --negative-label NAME "
                        "for a lookalike that must not alert)")
    return [*base_labels, *new]


def species_recall(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
                   ) -> dict[str, float]:
    recall = {}
    for name in labels:
        total = sum(1 for t in y_true if t == name)
        if total:
            hits = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p == name)
            recall[name] = hits / total
    return recall


# --- training ---------------------------------------------------------------------------------

@dataclass
class _Data:
    """Everything a train run looks at, embedded."""

    train: list[Item]
    test: list[Item]
    x: dict[str, np.ndarray]  # item key -> embedding
    shas: dict[str, str]  # item key -> image SHA-256
    variants: dict[str, list[np.ndarray]] = field(default_factory=dict)  # key -> augmented


def _rows(items: Sequence[Item], data: _Data) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The training matrix: each item, then the augmented variants of each; and for every
    row the index of the item it comes from (variants leave a fold with their original)."""
    rows = [data.x[i.key] for i in items]
    y = [i.label for i in items]
    origin = list(range(len(items)))
    for n, item in enumerate(items):
        for vector in data.variants.get(item.key, []):
            rows.append(vector)
            y.append(item.label)
            origin.append(n)
    return np.stack(rows), y, np.asarray(origin)


def train(workspace: Workspace, cfg: TrainingConfig, *, allow_new_class: bool | None = None,
          negative_labels: Sequence[str] = (), version: str | None = None,
          progress: bool = False, base_only: bool = False) -> TrainResult:
    """Train a head on base + labelled mined samples and write the candidate bundle.

    ``base_only``: ignore the pulled samples (``init``'s baseline is the base data alone, also
    when re-run in a workspace that holds pulled samples).
    """
    started = time.perf_counter()
    state = workspace.require().load_state()
    setup = _setup(state, workspace)
    if setup.get("from_bundle"):
        from feederd.sync.frombundle import train_gate

        result: TrainResult = train_gate(workspace, cfg, setup, version, progress)
        return result
    mined = [] if base_only else mined_items(workspace, cfg.use_pseudo)
    base_negatives = set(setup.get("base_negative_labels", setup["negative_labels"]))
    if cfg.field_class:
        mined = [field_negative(item, base_negatives) for item in mined]
    field_labels = sorted({i.label for i in mined if i.label.endswith(FIELD_SUFFIX)}
                          - set(setup["labels"]))
    chosen_negatives = set(setup["negative_labels"]) | set(negative_labels)
    negatives = chosen_negatives | set(field_labels)
    allow = cfg.allow_new_class if allow_new_class is None else allow_new_class
    labels = check_labels([*setup["labels"], *field_labels], mined, allow)
    if unknown := sorted(negatives - set(labels)):
        raise SyncError(f"negative labels {unknown} name no class in the data "
                        f"(classes: {', '.join(labels)})")
    data, embedded = _embed(workspace, setup, cfg, mined, progress)
    timings = {"embed_s": time.perf_counter() - started}
    items, dropped = cap_negatives([*data.train, *mined], negatives, cfg.neg_per_pos,
                                   cfg.seed)
    x, y, origin = _rows(items, data)
    fit_started = time.perf_counter()
    head = fit_head(x, y, labels, cfg)
    timings["fit_s"] = time.perf_counter() - fit_started
    oof = out_of_fold(items, x, y, origin, head, cfg, data.shas)
    timings["oof_s"] = time.perf_counter() - fit_started - timings["fit_s"]
    metrics = _metrics(head, data, labels, negatives, len(items), dropped, cfg)
    parent = state.get("deployed") or state.get("baseline")
    version = version or _next_version(workspace, state)
    trained_on = dict(sorted(Counter(i.label for i in items).items()))
    path = _write_bundle(workspace, setup, head, sorted(negatives), version, parent,
                         trained_on, metrics)
    head.save(head_path(workspace, version))
    _write_sidecar(workspace, version, parent, items, data.shas, oof, dropped)
    _remember(workspace, version, parent, path, trained_on, metrics, sorted(chosen_negatives))
    result = TrainResult(version, path, parent, labels, trained_on, metrics,
                         sum(1 for i in items if i.source == "mined"), embedded,
                         time.perf_counter() - started, dropped, timings)
    logger.info("trained %s on %d samples (%d mined) in %.1f s", version, len(items),
                result.mined_used, result.seconds)
    return result


def _setup(state: dict[str, Any], workspace: Workspace) -> dict[str, Any]:
    setup = state.get("init")
    if not setup:
        raise SyncError(f"workspace of '{workspace.device}' was never initialised; run "
                        "'feeder-sync init --backbone ... --data ...' first")
    return dict(setup)


def _embed(workspace: Workspace, setup: dict[str, Any], cfg: TrainingConfig,
           mined: Sequence[Item], progress: bool) -> tuple[_Data, int]:
    base = scan_folder(Path(setup["data"]))
    train_items, test_items = split(base, float(setup["holdout"]), int(setup["seed"]))
    photos = [*train_items, *test_items]
    scenes = _scene_items(workspace, setup, cfg)
    train_items, mined = [*train_items, *scenes], [*scenes, *mined]
    cache = VectorCache(workspace.cache_path)
    try:
        rendered, frames = embedders(workspace, setup, cfg.view, cache, cfg.threads,
                                     cfg.batch_size)
        total = (len(photos) + len(mined)) + len(cfg.augment) * (len(train_items) + len(mined))
        with progress_bar(total, "embed", progress) as bar:
            x_photos, sha_photos = rendered.vectors([i.path for i in photos], bar)
            x_mined, sha_mined = frames.vectors([i.path for i in mined], bar)
            variants, computed = augmented(cfg.augment, rendered, frames, train_items, mined,
                                          bar)
    finally:
        cache.close()
    keys = [i.key for i in [*photos, *mined]]
    vectors = [*x_photos, *x_mined]
    data = _Data(train_items, test_items, dict(zip(keys, vectors, strict=True)),
                 dict(zip(keys, [*sha_photos, *sha_mined], strict=True)), variants)
    computed += rendered.computed + (frames.computed if frames is not rendered else 0)
    return data, computed


def _scene_items(workspace: Workspace, setup: dict[str, Any], cfg: TrainingConfig
                 ) -> list[Item]:
    """The empty-feeder crops of :func:`feederd.sync.domain.empty_scenes` as files in the
    workspace (written once per view), labelled with the base negative label."""
    import cv2

    from feederd.sync.domain import empty_scenes, view_key

    negatives = sorted(setup.get("base_negative_labels") or setup["negative_labels"])
    if cfg.view.domain == "photo" or not cfg.view.empty_scenes or not negatives:
        return []
    folder = workspace.dir / "scenes" / safe_name(view_key(cfg.view))
    paths = [folder / f"{n:04d}.jpg" for n in range(cfg.view.empty_scenes)]
    if not all(p.exists() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for path, scene in zip(paths, empty_scenes(cfg.view, len(paths), cfg.seed),
                               strict=True):
            write_bytes(path, cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                        .tobytes())
    return [Item(p, negatives[0], "scene", f"scene:{p.name}") for p in paths]


def _metrics(head: Head, data: _Data, labels: list[str], negatives: set[str], samples: int,
             dropped: int, cfg: TrainingConfig) -> dict[str, Any]:
    metrics: dict[str, Any] = {"samples": samples, "negatives_dropped": dropped,
                               "c": cfg.c, "class_weight": cfg.class_weight}
    if not data.test:
        return metrics
    probs = head.probs(np.stack([data.x[i.key] for i in data.test]))
    y_true = [i.label for i in data.test]
    y_pred = [labels[k] for k in probs.argmax(axis=1)]
    species = [name for name in labels if name not in negatives]
    recall = species_recall(y_true, y_pred, species)
    metrics.update({
        "holdout_samples": len(data.test),
        "holdout_accuracy": round(float(np.mean([t == p for t, p in zip(y_true, y_pred,
                                                                          strict=True)])), 4),
        "mean_species_recall": round(float(np.mean(list(recall.values()))), 4)
        if recall else None,
        "recall": {name: round(value, 4) for name, value in recall.items()},
    })
    return metrics


def _next_version(workspace: Workspace, state: dict[str, Any]) -> str:
    number = len(state.get("models", {})) + 1
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    version = f"{workspace.device}-v{number}-{stamp}"
    while workspace.model_path(version).exists():
        number += 1
        version = f"{workspace.device}-v{number}-{stamp}"
    return version


def _write_bundle(workspace: Workspace, setup: dict[str, Any], head: Head,
                  negatives: list[str], version: str, parent: str | None,
                  trained_on: dict[str, int], metrics: dict[str, Any]) -> Path:
    from feederd.bundle import InputSpec
    from feederd.sync.build import head_bundle

    spec = setup["input"]
    input_spec = InputSpec(tuple(spec["size"]), spec["layout"], spec["color"],
                           tuple(spec["mean"]), tuple(spec["std"]), float(spec["scale"]))
    return head_bundle(Path(setup["backbone"]), setup["embedding_output"], input_spec,
                       head.weights, head.bias, head.labels, negatives,
                       workspace.model_path(version), version, parent, trained_on, metrics,
                       embedding_scaler=(head.mean, head.std))


def _write_sidecar(workspace: Workspace, version: str, parent: str | None,
                   items: Sequence[Item], shas: dict[str, str], oof: dict[str, list[float]],
                   dropped: int) -> None:
    """What the bundle cannot say: which images it trained on, and out-of-fold answers."""
    write_json(workspace.sidecar_path(version), {
        "version": version, "parent": parent,
        "trained_shas": sorted({shas[i.key] for i in items}),
        "mined": sorted(str(i.sample["id"]) for i in items if i.source == "mined" and i.sample),
        "oof": oof, "negatives_dropped": dropped,
    })


def _remember(workspace: Workspace, version: str, parent: str | None, path: Path,
              trained_on: dict[str, int], metrics: dict[str, Any],
              negatives: list[str]) -> None:
    state = workspace.load_state()
    state.setdefault("models", {})[version] = {
        "file": str(path.relative_to(workspace.dir)), "parent": parent,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trained_on": trained_on, "metrics": metrics, "gate": None,
    }
    state["candidate"] = version
    state.setdefault("init", {})["negative_labels"] = negatives
    workspace.save_state(state)
    workspace.record("train", version=version, samples=sum(trained_on.values()))
