"""Fixtures of the feeder-sync tests: a small real backbone and dataset, an initialised
workspace (built once by the real ``feeder-sync init``, copied for each test) and a local
device reached through the real ``feederd`` command line."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from sync.helpers import make_backbone, make_dataset, run_sync, sync_config

COUNTS = {"robin": 24, "jay": 24, "other": 40}


@pytest.fixture(scope="session")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("backbone") / "tiny.onnx")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dataset") / "data", COUNTS)


@dataclass
class Setup:
    """One test's feeder-sync config, workspace and local device."""

    tmp: Path
    config: Path

    @property
    def workspace(self) -> Path:
        return self.tmp / "workspace" / "feeder"


def init_args(backbone: Path, dataset: Path) -> list[str]:
    return ["init", "--device", "feeder", "--backbone", str(backbone), "--embedding-output",
            "features", "--preprocess", "rgb", "--data", str(dataset),
            "--negative-labels", "other"]


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, backbone: Path, dataset: Path) -> Path:
    """A workspace initialised once by the real CLI."""
    tmp = tmp_path_factory.mktemp("template")
    config = sync_config(tmp)
    run_sync(config, *init_args(backbone, dataset))
    return tmp / "workspace"


@pytest.fixture()
def setup(tmp_path: Path, template: Path) -> Setup:
    """A fresh copy of the initialised workspace and an empty local device."""
    shutil.copytree(template, tmp_path / "workspace", symlinks=True)
    return Setup(tmp_path, sync_config(tmp_path))
