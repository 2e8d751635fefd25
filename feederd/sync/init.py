"""``feeder-sync init``: a device's workspace from a backbone and a labelled photo folder.

Checks the folder and the backbone's preprocessing once, at the edge, builds the embedder
(the backbone cut at its embedding), records the setup every later ``train`` reads from the
workspace state, and trains the baseline bundle on the base data alone: the model a candidate
is compared with until the owner deploys one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from feederd.errors import SyncError
from feederd.sync.config import TrainingConfig
from feederd.sync.dataset import PREPROCESS, embedder_key, input_spec_for, scan_folder
from feederd.sync.train import TrainResult, train
from feederd.sync.workspace import Workspace

EMBEDDER_FILE = "embedder.onnx"


def init_workspace(workspace: Workspace, cfg: TrainingConfig, *, backbone: Path,
                   embedding_output: str, preprocess: str, data: Path,
                   negative_labels: Sequence[str], holdout: float | None = None,
                   progress: bool = False) -> TrainResult:
    """Build the embedder from ``backbone``, embed ``data`` and train the baseline bundle."""
    from feederd.sync.build import embedding_model

    if preprocess not in PREPROCESS:
        raise SyncError(f"--preprocess must be one of {', '.join(PREPROCESS)}, "
                        f"got {preprocess!r}")
    backbone = backbone.expanduser().resolve()
    data = data.expanduser().resolve()
    base = scan_folder(data)
    labels = sorted({item.label for item in base})
    if missing := sorted(set(negative_labels) - set(labels)):
        raise SyncError(f"--negative-labels {missing} have no folder in {data} "
                        f"(labels found: {', '.join(labels)})")
    if len(labels) < 2:
        raise SyncError(f"{data}: found one label ({labels[0]}); a classifier needs at least "
                        "two sub-folders")
    spec = input_spec_for(backbone, preprocess)
    workspace.create()
    embedder = workspace.models_dir / EMBEDDER_FILE
    embedding_model(backbone, embedding_output, embedder, spec)
    setup = {"backbone": str(backbone), "embedding_output": embedding_output,
             "preprocess": preprocess, "input": spec.as_dict(), "data": str(data),
             "labels": labels, "negative_labels": sorted(set(negative_labels)),
             "base_negative_labels": sorted(set(negative_labels)),
             "holdout": cfg.holdout if holdout is None else holdout, "seed": cfg.seed,
             "embedder": str(embedder.relative_to(workspace.dir)),
             "embedder_key": embedder_key(backbone, embedding_output, spec.as_dict())}
    state = workspace.load_state()
    # A device may already run a model: ``deployed`` stays, so the new baseline is compared
    # with what the device really runs.
    state.update({"init": setup, "baseline": None, "candidate": None})
    workspace.save_state(state)
    result = train(workspace, cfg, allow_new_class=False, progress=progress, base_only=True)
    workspace.update_state(baseline=result.version)
    workspace.record("init", version=result.version, data=str(data))
    return result
