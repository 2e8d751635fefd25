"""The linear head feeder-sync trains on cached embeddings, and its out-of-fold estimate.

A multinomial logistic regression on standardised backbone features: cheap to refit, which is
what lets every retrain, and the refits of the out-of-fold estimate, take seconds. The head is
saved beside its bundle (``<version>.head.npz``) so that evaluation can run it on cached
embeddings instead of running the whole bundle again. Which samples it trains on is
:mod:`feederd.sync.train`'s choice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feederd.atomic import write_bytes
from feederd.sync.config import TrainingConfig
from feederd.sync.dataset import Item
from feederd.sync.workspace import Workspace, safe_name


@dataclass
class Head:
    """A linear softmax head on raw embeddings: probs = softmax(((x - mean) / std) W + b)."""

    labels: list[str]
    weights: np.ndarray  # D x C, on standardised features
    bias: np.ndarray  # C
    mean: np.ndarray  # D
    std: np.ndarray  # D

    def probs(self, x: np.ndarray) -> np.ndarray:
        logits = ((x - self.mean) / self.std) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))

    def save(self, path: Path) -> None:
        """The head beside its bundle, so evaluation can run it on cached embeddings."""
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, bias=self.bias, mean=self.mean, std=self.std,
                 labels=np.array(self.labels))
        write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Head | None:
        try:
            with np.load(path) as data:
                return cls([str(x) for x in data["labels"]], data["weights"], data["bias"],
                           data["mean"], data["std"])
        except (OSError, KeyError, ValueError):
            return None


def fit_head(x: np.ndarray, y: Sequence[str], labels: Sequence[str], cfg: TrainingConfig,
             warm: Head | None = None) -> Head:
    """Standardise, fit a multinomial logistic regression, return it in ``labels`` order.

    ``warm``: start from that head (and keep its standardisation), which makes the refits of
    the out-of-fold estimate converge in a few iterations.
    """
    from sklearn.linear_model import LogisticRegression

    if warm is None:
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
    else:
        mean, std = warm.mean, warm.std
    classes = sorted(set(y))
    model = LogisticRegression(C=cfg.c, max_iter=cfg.max_iter, warm_start=warm is not None,
                               class_weight="balanced" if cfg.class_weight == "balanced"
                               else None)
    if warm is not None and len(classes) > 2:
        columns = [list(warm.labels).index(name) for name in classes]
        model.coef_ = warm.weights[:, columns].T.copy()
        model.intercept_ = warm.bias[columns].copy()
    with _quiet_convergence():
        model.fit((x - mean) / std, np.asarray(y))
    return _as_head(model, labels, mean, std, x.shape[1])


def _as_head(model: Any, labels: Sequence[str], mean: np.ndarray, std: np.ndarray,
             width: int) -> Head:
    classes = [str(c) for c in model.classes_]
    coef, intercept = model.coef_, model.intercept_
    if len(classes) == 2:
        # sklearn keeps one logit for two classes; softmax([-z/2, z/2]) == sigmoid(z).
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    w = np.zeros((width, len(labels)))
    b = np.full(len(labels), -30.0)  # a label without samples is never predicted
    for column, name in enumerate(classes):
        index = list(labels).index(name)
        w[:, index] = coef[column]
        b[index] = intercept[column]
    return Head(list(labels), w, b, mean, std)


@contextlib.contextmanager
def _quiet_convergence() -> Any:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def head_path(workspace: Workspace, version: str) -> Path:
    return workspace.models_dir / f"{safe_name(version)}.head.npz"


def out_of_fold(items: Sequence[Item], x: np.ndarray, y: Sequence[str], origin: np.ndarray,
                full: Head, cfg: TrainingConfig, shas: dict[str, str]
                ) -> dict[str, list[float]]:
    """Probabilities for each mined sample from a head that saw neither it nor its variants
    (rows of ``x`` come from ``items[origin[row]]``)."""
    mined = [n for n, item in enumerate(items) if item.source == "mined"]
    if not mined:
        return {}
    folds = min(cfg.folds, len(mined))
    fold_of = {n: int(_hash(f"{cfg.seed}:{items[n].key}"), 16) % folds for n in mined}
    oof: dict[str, list[float]] = {}
    for fold in range(folds):
        held = [n for n in mined if fold_of[n] == fold]
        if not held:
            continue
        keep = ~np.isin(origin, held)
        head = fit_head(x[keep], [y[int(i)] for i in np.flatnonzero(keep)], full.labels, cfg,
                        warm=full)
        for n, probs in zip(held, head.probs(x[held]), strict=True):
            oof[shas[items[n].key]] = [round(float(p), 6) for p in probs]
    return oof


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
