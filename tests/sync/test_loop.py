"""feeder-sync push, rollback and loop against a local device's real feederd CLI."""

from __future__ import annotations

import json
import os

import numpy as np

from sync.conftest import Setup
from sync.helpers import (
    add_samples,
    feederd,
    jpeg,
    models_dir,
    photo,
    run_json,
    run_sync,
    spool_dir,
)


def device_models(setup: Setup) -> dict[str, bool]:
    listing = json.loads(feederd(setup.tmp / "feederd.toml", "model", "ls", "--json").stdout)
    return {entry["version"]: entry["current"] for entry in listing}


def rejected_squirrels(setup: Setup, count: int = 20, seed: int = 500) -> None:
    add_samples(spool_dir(setup.tmp), [(jpeg(photo("squirrel", seed + n)), "other", "user",
                                        ["rejected"]) for n in range(count)])


class TestPush:
    def test_push_installs_the_baseline_on_the_device(self, setup: Setup) -> None:
        out = run_json(setup.config, "push")
        assert device_models(setup) == {out["pushed"]: True}
        assert out["device"]["installed"] == out["pushed"]
        assert run_json(setup.config, "status")[0]["deployed"] == out["pushed"]

    def test_a_model_that_failed_the_gate_is_not_pushed_without_force(self, setup: Setup
                                                                      ) -> None:
        baseline = run_json(setup.config, "push")["pushed"]
        run_sync(setup.config, "train")
        assert run_json(setup.config, "evaluate")["gate"] == "fail"
        proc = run_sync(setup.config, "push", check=False)
        assert proc.returncode == 2 and "failed the gate" in proc.stderr
        assert device_models(setup) == {baseline: True}
        forced = run_json(setup.config, "push", "--force")
        assert device_models(setup)[forced["pushed"]] is True

    def test_a_model_never_evaluated_is_not_pushed(self, setup: Setup) -> None:
        run_sync(setup.config, "push")
        run_sync(setup.config, "train")
        proc = run_sync(setup.config, "push", check=False)
        assert proc.returncode == 2 and "has not been evaluated" in proc.stderr

    def test_rollback_returns_the_device_to_the_previous_model(self, setup: Setup) -> None:
        baseline = run_json(setup.config, "push")["pushed"]
        rejected_squirrels(setup)
        run_sync(setup.config, "loop")
        assert device_models(setup)[baseline] is False
        out = run_json(setup.config, "rollback")
        assert out["current"] == baseline
        assert os.readlink(models_dir(setup.tmp) / "current") == f"{baseline}.onnx"
        assert run_json(setup.config, "status")[0]["deployed"] == baseline


class TestLoop:
    def test_loop_pulls_trains_evaluates_and_pushes_when_the_gate_passes(self, setup: Setup
                                                                         ) -> None:
        run_sync(setup.config, "push")
        rejected_squirrels(setup)
        summary = run_json(setup.config, "loop")
        print("\n" + json.dumps({k: summary[k] for k in ("gate", "seconds")}))
        assert summary["pulled"]["received"] == 20
        assert summary["trained"]["mined_used"] == 20
        assert summary["gate"] == "pass"
        assert device_models(setup)[summary["pushed"]["pushed"]] is True
        status = run_json(setup.config, "status")[0]
        assert status["pulled"]["samples"] == 20 and status["labelled"]["samples"] == 20
        assert status["deployed"] == status["candidate"] and status["models"] == 2
        assert [h["event"] for h in status["history"]][-4:] == ["pull", "train", "evaluate",
                                                                 "push"]

    def test_a_second_loop_with_nothing_new_builds_nothing(self, setup: Setup) -> None:
        run_sync(setup.config, "push")
        rejected_squirrels(setup, 12)
        out = run_sync(setup.config, "loop").stdout
        assert "pull: 12 new samples" in out and "evaluate: gate" in out and "push:" in out
        again = run_json(setup.config, "loop")
        assert again["skipped"] and again["trained"] is None and again["pushed"] is None

    def test_empty_scenes_alone_build_nothing(self, setup: Setup) -> None:
        run_sync(setup.config, "push")
        rejected_squirrels(setup, 12)
        run_sync(setup.config, "loop")
        add_samples(spool_dir(setup.tmp), [(jpeg(np.full((48, 48, 3), 120, np.uint8)),
                                            "other", "pseudo", ["empty_scene"])])
        again = run_json(setup.config, "loop")
        assert again["pulled"]["received"] == 1
        assert again["skipped"] and again["trained"] is None
