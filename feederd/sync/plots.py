"""Figures of an evaluation: confusion matrices as PNG (matplotlib, Agg: no display needed).

A confusion matrix is coloured by *row share* - each cell's count over its true class's count -
so the diagonal reads as per-class recall and a class with few test images is as visible as a
common one; the counts themselves are printed in the cells. The deployed model and the
candidate sit side by side on one colour scale, each titled with its false alerts on field
negatives, which is what the promotion gate weighs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

CMAP = "Blues"
PAIR_PNG = "confusion.png"  # a report's deployed and candidate matrices side by side


class Matrix(Protocol):
    """What a figure needs of one model's score (``evaluate.Score`` has it)."""

    version: str
    labels: list[str]
    confusion: dict[str, dict[str, int]]  # true label -> predicted label -> count

    @property
    def false_alerts(self) -> int: ...

    @property
    def negatives_total(self) -> int: ...


def columns(confusion: Mapping[str, Mapping[str, int]], labels: Sequence[str]) -> list[str]:
    """The predicted labels: the model's own, then any other label it was credited with."""
    seen = {p for row in confusion.values() for p in row}
    return [*labels, *sorted(seen - set(labels))]


def row_shares(counts: np.ndarray) -> np.ndarray:
    """Each count over its row's total (0 for an empty row)."""
    totals = counts.sum(axis=1, keepdims=True).astype(float)
    return np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)


def title(score: Matrix, role: str | None = None) -> str:
    """``role: version`` and the false-alert figures of the gate."""
    name = f"{role}: {score.version}" if role else score.version
    total = score.negatives_total
    rate = f" ({score.false_alerts / total:.1%})" if total else ""
    return f"{name}\nfalse alerts {score.false_alerts} / {total} field negatives{rate}"


def confusion_png(score: Matrix, out: Path) -> Path:
    """One model's confusion matrix."""
    return confusion_pair_png([(None, score)], out)


def confusion_pair_png(panels: Sequence[tuple[str | None, Matrix]], out: Path) -> Path:
    """Confusion matrices side by side (e.g. deployed, candidate), one shared colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [_grid(score) for _, score in panels]
    width = sum(1.6 + 0.62 * len(cols) for _, _, cols in grids) + 1.2
    height = 1.9 + 0.5 * max(len(rows) for _, rows, _ in grids)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False,
                             layout="constrained")
    for n, (ax, (role, score), grid) in enumerate(zip(axes[0], panels, grids, strict=True)):
        _panel(ax, grid, title(score, role))
        if n == 0:
            ax.set_ylabel("truth", fontsize=8)
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), CMAP)
    bar = fig.colorbar(scale, ax=list(axes[0]), fraction=0.05, pad=0.02)
    bar.set_label("share of the true class (diagonal: recall)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def _grid(score: Matrix) -> tuple[np.ndarray, list[str], list[str]]:
    truth = list(score.confusion)
    predicted = columns(score.confusion, score.labels)
    counts = np.array([[score.confusion[t].get(p, 0) for p in predicted] for t in truth],
                      dtype=int).reshape(len(truth), len(predicted))
    return counts, truth, predicted


def _panel(ax: Any, grid: tuple[np.ndarray, list[str], list[str]], heading: str) -> None:
    counts, truth, predicted = grid
    ax.set_title(heading, fontsize=9)
    if not counts.size:
        ax.text(0.5, 0.5, "no held-out images", ha="center", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    shares = row_shares(counts)
    ax.imshow(shares, cmap=CMAP, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(predicted)), predicted, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(truth)), truth, fontsize=8)
    ax.set_xlabel("predicted", fontsize=8)
    for (r, c), value in np.ndenumerate(counts):
        ax.text(c, r, str(value), ha="center", va="center", fontsize=8,
                color="white" if shares[r, c] > 0.55 else "black")
