"""The negatives spool and on-device mining, end to end against the real running daemon.

Every test runs ``feederd run`` as a real process (real clips and photos, real SQLite, real
files, a real Mosquitto where MQTT matters) and looks at the spool only the way a user can:
``feederd spool ls | stats | export | ack``, the files on disk, the log and the MQTT topics.
The spool's own unit tests (tests/test_spool.py) cover the same faults one level down.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto, Probe, wait_until
from daemonproc import DaemonProcess, write_config
from prerequisites import tmpfs

from feederd.assets import demo_model_path

DEVICE = "feeder1"
TOPIC = f"feederd/{DEVICE}"
CLI = [sys.executable, "-m", "feederd.cli"]
FLICKER_REASONS = frozenset({"flicker_negative", "flicker_positive"})
REASONS = frozenset({"low_margin", "rejected", "corrected", "confirmed", "disagreement",
                     "missed_visit"}) | FLICKER_REASONS

# ImageNet-1k output indices of birds (cock .. great grey owl, black grouse .. black swan,
# white stork .. albatross); every other class means "no bird".
IMAGENET_BIRDS = frozenset([*range(7, 25), *range(80, 101), *range(127, 147)])


# --- configuration and the CLI ------------------------------------------------------------------

def config_file(tmp_path: Path, name: str = "feederd.toml", **sections: Any) -> Path:
    """A daemon config: the demo clip replayed as fast as possible once, no MQTT, small
    commit interval; ``sections`` are merged over it."""
    config: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "camera": {"source": "demo", "realtime": False, "loop": False},
        # the cartoon clip needs the cartoon model (run's default is AIY Birds V1)
        "classifier": {"model": str(demo_model_path())},
        "mqtt": {"enabled": False},
        "spool": {"commit_interval_s": 0.05},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) \
            else values
    return write_config(tmp_path / name, config)


def mqtt_section(broker: Mosquitto) -> dict[str, Any]:
    return {"enabled": True, "host": broker.host, "port": broker.port, "device_id": DEVICE,
            "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


def spool_dir(config: Path) -> Path:
    from feederd.config import load_settings

    return load_settings(config).spool_dir


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args, "--config", str(config)], capture_output=True,
                          timeout=120)


def spool_ls(config: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """``feederd spool ls --json`` (every sample); ``[]`` before the spool exists if allowed."""
    done = cli(config, "spool", "ls", "--json", "--limit", "10000000")
    if done.returncode != 0 and missing_ok and b"no spool in" in done.stderr:
        return []
    assert done.returncode == 0, done.stderr.decode()
    return list(json.loads(done.stdout))


def spool_stats(config: Path) -> dict[str, Any]:
    done = cli(config, "spool", "stats", "--json")
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout))


def run_to_end(config: Path, **env: str) -> str:
    """One whole replay (``camera.loop = false``): the daemon exits 0 at the end; -> its log."""
    done = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stderr


def by_id(samples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {s["id"]: s for s in samples}


def assert_index_and_files_agree(directory: Path, samples: list[dict[str, Any]]) -> None:
    """A complete file with the indexed size and sha256 per row; a row per file."""
    names = {p.name for p in (directory / "samples").iterdir()}
    assert not [n for n in names if n.startswith(".tmp-")], "temporary files left behind"
    listed = {s["file"] for s in samples}
    assert names - listed == set(), "sample files without a row"
    assert listed - names == set(), "rows without a file"
    for sample in samples:
        data = (directory / "samples" / sample["file"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == \
            (sample["size"], sample["sha256"]), sample["file"]


def untar(data: bytes) -> tuple[dict[str, bytes], list[dict[str, Any]], dict[str, str]]:
    """(JPEG members by name, manifest entries, manifest PAX headers) of an export stream;
    checks that the manifest is the last member."""
    members: dict[str, bytes] = {}
    order: list[str] = []
    pax: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for info in tar:
            extracted = tar.extractfile(info)
            assert extracted is not None, info.name
            members[info.name] = extracted.read()
            order.append(info.name)
            if info.name == "manifest.jsonl":
                pax = dict(info.pax_headers)
    assert order and order[-1] == "manifest.jsonl", order
    manifest = [json.loads(line) for line in members.pop("manifest.jsonl").splitlines()]
    return members, manifest, pax


def stats_messages(probe: Probe) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in probe.on(f"{TOPIC}/stats")]


# --- the SqueezeNet bundles (built once per module from ../shared/data) ---------------------------

def squeezenet(shared: Path, out: Path, version: str, birds_only: bool) -> Path:
    """The shared SqueezeNet 1.1 as a bundle; ``birds_only``: every non-bird ImageNet class is
    a negative label (nothing of interest), else there are none and every class alerts."""
    from feederd.sync.build import (
        SQUEEZENET_EMBEDDING,
        SQUEEZENET_INPUT,
        imagenet_bundle,
        read_labels,
    )

    source = shared / "models" / "squeezenet1.1"
    labels = read_labels(source / "labels.txt")
    negatives = [name for i, name in enumerate(labels) if i not in IMAGENET_BIRDS] \
        if birds_only else []
    return imagenet_bundle(source / "squeezenet1.1-fp32.onnx", source / "labels.txt",
                           SQUEEZENET_EMBEDDING, SQUEEZENET_INPUT, out, negatives,
                           version=version)


@pytest.fixture(scope="module")
def bird_bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "squeezenet-birds.onnx"
    return squeezenet(shared_data, out, "squeezenet-birds", birds_only=True)


@pytest.fixture(scope="module")
def any_class_bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "squeezenet-any.onnx"
    return squeezenet(shared_data, out, "squeezenet-any", birds_only=False)


# --- 1. the shared feeder clips -------------------------------------------------------------------

FLICKER_CLIP = "bird_10_03_2023--12_23_18.mp4"
CLIPS = (FLICKER_CLIP, "bird_09_20_2023--11_38_20.mp4", "bird_10_03_2023--12_30_26.mp4",
         "bird_10_03_2023--15_57_13.mp4")
FLICKER_CONFIDENCE = 0.5


class ClipRuns:
    """The clips replayed one after the other into one spool; what each run added."""

    def __init__(self, tmp: Path, shared: Path, bundle: Path) -> None:
        self.tmp, self.shared, self.bundle = tmp, shared, bundle
        self.added: dict[str, list[dict[str, Any]]] = {}
        self.samples: list[dict[str, Any]] = []

    def config(self, clip: str) -> Path:
        return config_file(
            self.tmp, f"{clip}.toml",
            camera={"source": str(self.shared / "video" / clip)},
            classifier={"model": str(self.bundle)},
            mining={"flicker_confidence": FLICKER_CONFIDENCE})

    def replay(self, clip: str) -> list[dict[str, Any]]:
        """Replay one clip to its end; -> the samples it added."""
        config = self.config(clip)
        before = {s["id"] for s in spool_ls(config, missing_ok=True)}
        run_to_end(config)
        self.samples = spool_ls(config)
        return [s for s in self.samples if s["id"] not in before]


@pytest.fixture(scope="module")
def clip_runs(shared_data: Path, bird_bundle: Path,
              tmp_path_factory: pytest.TempPathFactory) -> ClipRuns:
    runs = ClipRuns(tmp_path_factory.mktemp("clips"), shared_data, bird_bundle)
    for clip in CLIPS:
        runs.added[clip] = runs.replay(clip)
    return runs


@pytest.mark.shared_data
class TestFeederClips:
    """Four real feeder clips through the SqueezeNet ImageNet bundle, bird classes of interest.

    What the model sees. These clips are backlit: a titmouse on the tray is a dark silhouette,
    and SqueezeNet calls most frames mammals (mink, indri, siamang, American black bear),
    scenery (lakeside, valley, mobile home) or objects; it names a bird class in 8 of the 590
    frames classified over the 15 clips, mostly between frames that say no bird. They look like
    the isolated false positives ``flicker_negative`` is for, but none reaches the default
    ``flicker_confidence`` of 0.6 on any of the 15 clips (per-frame predictions checked; crop
    "full" and classify_fps 8 or 24 do not change that). The
    strongest is in ``bird_10_03_2023--12_23_18``: "black grouse" at 0.57 with "indri" 0.63,
    "polecat" 0.22 before it and "indri" 0.87, 0.45 after it. A 1000-class softmax spreads its
    mass (the typical top-1 here is 0.1-0.4), so these tests set ``flicker_confidence`` to 0.5;
    every other threshold is the default. With it, that frame is the one isolated bird across
    all 15 clips, and it is a titmouse (issue 11), so mining must not call it a false positive.
    """

    def test_the_spool_fills_with_samples_carrying_reasons_and_probabilities(
            self, clip_runs: ClipRuns) -> None:
        for clip, added in clip_runs.added.items():
            assert added, f"{clip} added no sample"
            assert len({s["visit_id"] for s in added}) >= 1
        for sample in clip_runs.samples:
            assert sample["reasons"] and set(sample["reasons"]) <= REASONS, sample
            probs = sample["probs"]
            assert sample["predicted"] in probs, sample
            assert all(0.0 <= p <= 1.0 for p in probs.values()), sample
            assert probs[sample["predicted"]] == max(probs.values())
            assert 0.0 <= sample["margin"] <= 1.0
            assert sample["model_version"] == "squeezenet-birds"
            assert sample["size"] > 0 and len(sample["sha256"]) == 64

    def test_the_isolated_bird_is_left_for_review_and_the_missed_visits_are_mined(
            self, clip_runs: ClipRuns) -> None:
        """Issue 11: the "black grouse" is a titmouse, and its neighbours' "nothing" were the
        model's own misses; the camera saw an animal there, so it is an unlabelled
        ``disagreement``, never a pseudo-labelled flicker negative. Every clip's visit, missed
        by the model, gives unlabelled ``missed_visit`` samples."""
        flickers = [s for s in clip_runs.samples if "flicker_negative" in s["reasons"]]
        assert flickers == []
        (review,) = [s for s in clip_runs.samples if "disagreement" in s["reasons"]]
        assert review["predicted"] == "black grouse" and review["label"] is None, review
        assert review["id"] in {s["id"] for s in clip_runs.added[FLICKER_CLIP]}
        for clip, added in clip_runs.added.items():
            missed = [s for s in added if "missed_visit" in s["reasons"]]
            assert missed, f"{clip}: no missed_visit sample"
            assert all(s["label"] is None and s["label_source"] is None for s in missed)

    def test_replaying_the_same_clips_again_adds_almost_nothing(
            self, clip_runs: ClipRuns, tmp_path: Path) -> None:
        """Diversity: the spool skips near-duplicates (perceptual hash) of what it holds."""
        again = ClipRuns(tmp_path, clip_runs.shared, clip_runs.bundle)
        shutil.copytree(clip_runs.tmp / "state", tmp_path / "state")
        first = sum(len(added) for added in clip_runs.added.values())
        second = sum(len(again.replay(clip)) for clip in CLIPS)
        assert first >= 20
        assert second <= first * 0.1, (first, second)


# --- diversity on the demo clip (no shared data needed) -----------------------------------------

class TestDemoDiversity:
    def test_replaying_the_demo_clip_twice_adds_nothing_the_second_time(
            self, tmp_path: Path) -> None:
        config = config_file(tmp_path)
        run_to_end(config)
        first = len(spool_ls(config))
        log = run_to_end(config)
        assert first > 0
        assert len(spool_ls(config)) == first, log

    def test_with_dedup_distance_0_the_second_replay_is_spooled_again(
            self, tmp_path: Path) -> None:
        """``mining.dedup_distance`` is the spool's near-duplicate distance too."""
        config = config_file(tmp_path, mining={"dedup_distance": 0})
        run_to_end(config)
        first = len(spool_ls(config))
        run_to_end(config)
        assert len(spool_ls(config)) == 2 * first


# --- 2. squirrels rejected by the owner -----------------------------------------------------------

SQUIRRELS = 10


@pytest.mark.shared_data
class TestSquirrelsRejected:
    """Squirrel photos replayed as visits; the owner answers "not a bird" to every alert.

    The bundle. SqueezeNet knows squirrels: with every non-bird ImageNet class as a negative
    label (the bundle of TestFeederClips) only 1 of the first 120 shared squirrel photos
    raises an alert at all ("indigo bunting"). So this scenario uses the same network built
    with no negative labels, as a bundle is before its owner has said what is not of interest
    (``visits.species`` empty): every class alerts. Of the first 10 photos, 5 raise an alert in
    our runs (tabby, dhole, fox squirrel twice, indigo bunting); the owner, who wants birds,
    rejects each one. Such a bundle has no negative class, so the collector teaches rejected
    frames as ``other`` (DESIGN: the class feeder-sync trains "nothing of interest" as).

    The replay runs as fast as it can and loops; the test replies to every alert as it
    arrives and checks the visits of the first pass (later passes show the same photos, whose
    frames the spool then skips as near-duplicates of the labelled ones).
    """

    def test_the_frames_of_rejected_visits_become_user_labelled_negatives(
            self, tmp_path: Path, broker: Mosquitto, shared_data: Path,
            any_class_bundle: Path) -> None:
        photos = tmp_path / "photos"
        photos.mkdir()
        source = sorted((shared_data / "images" / "squirrel" / "squirrel").glob("*.jpg"))
        for path in source[:SQUIRRELS]:
            (photos / path.name).symlink_to(path)
        config = config_file(
            tmp_path, camera={"source": str(photos), "loop": True, "width": 640,
                              "height": 480, "frames_per_image": 10, "folder_gap_s": 3.0},
            motion={"close_after_s": 0.5}, visits={"classify_fps": 8.0},
            classifier={"model": str(any_class_bundle)}, mqtt=mqtt_section(broker),
            jobs={"stats_interval_s": 1.0})
        probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/visit", f"{TOPIC}/stats")
        daemon = DaemonProcess(config)
        replied: list[str] = []

        def reply_to_new_alerts() -> bool:
            """Answer "not a bird" to the alerts not answered yet; -> True (for conditions)."""
            for message in probe.on(f"{TOPIC}/alert")[len(replied):]:
                event = json.loads(message.payload)["event_id"]
                probe.publish(f"{TOPIC}/feedback",
                              json.dumps({"event_id": event, "verdict": "not_a_bird"}))
                replied.append(event)
            return True

        def first_pass() -> list[dict[str, Any]]:
            return [json.loads(m.payload) for m in probe.on(f"{TOPIC}/visit")][:SQUIRRELS]

        try:
            wait_until(lambda: reply_to_new_alerts() and len(first_pass()) == SQUIRRELS,
                       120, f"the first {SQUIRRELS} visits")
            alerted = [v["event_id"] for v in first_pass() if v["alerted"]]
            assert len(alerted) >= 3, first_pass()
            wait_until(lambda: reply_to_new_alerts() and set(alerted) <= set(replied), 60,
                       "the alerts of the first pass")
            for event in alerted:
                daemon.wait_log(rf"reply not_a_bird on {event}: ", 30)
            wait_until(lambda: any(s.get("false_alerts_rejected", 0) >= len(alerted)
                                   for s in stats_messages(probe)), 30, "the stats sensor")
        finally:
            assert daemon.stop() == 0, daemon.log
            probe.close()
        samples = spool_ls(config)
        for event in alerted:
            mine = [s for s in samples if s["visit_id"] == event]
            assert mine, f"no sample of rejected visit {event}"
            for sample in mine:
                assert (sample["label"], sample["label_source"]) == ("other", "user"), sample
                assert "rejected" in sample["reasons"], sample
                assert sample["model_version"] == "squeezenet-any"
        quiet = {v["event_id"] for v in first_pass() if not v["alerted"]}
        assert not [s for s in samples if s["visit_id"] in quiet and s["label_source"]], \
            "visits nobody replied to got labels"


# --- 3. a full disk -------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (root needed: skipped with the reason here, a failure under CI)."""
    with tmpfs(tmp_path / "disk", "3m") as mount:
        yield mount


def fill_disk(path: Path) -> None:
    """Write ``path`` until the file system has no byte left."""
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
        with contextlib.suppress(OSError):
            os.fsync(out.fileno())


class TestFullDisk:
    def test_alerts_keep_flowing_while_spooling_pauses_and_it_resumes_when_space_returns(
            self, tmp_path: Path, tiny_disk: Path, broker: Mosquitto) -> None:
        # the demo clip in a loop; dedup off, so every pass has new samples to store
        config = config_file(
            tmp_path, camera={"loop": True}, mqtt=mqtt_section(broker),
            spool={"dir": str(tiny_disk / "spool"), "min_free_bytes": 256 * 1024,
                   "max_bytes": 2**20 * 64},
            mining={"dedup_distance": 0}, jobs={"stats_interval_s": 1.0})
        probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/stats")
        daemon = DaemonProcess(config)
        filler = tiny_disk / "filler"
        try:
            wait_until(lambda: len(spool_ls(config, missing_ok=True)) >= 5, 60, "samples")
            fill_disk(filler)
            daemon.wait_log(r"spool paused: ", 30)
            paused = len(spool_ls(config))
            alerts = len(probe.on(f"{TOPIC}/alert"))
            probe.wait_for(f"{TOPIC}/alert", alerts + 5, 30)
            wait_until(lambda: any(s["spool_paused"] and s["spool_pauses"] >= 1
                                   and s["spool_dropped_paused"] >= 1
                                   for s in stats_messages(probe)), 30, "paused in stats")
            assert len(spool_ls(config)) == paused
            filler.unlink()
            daemon.wait_log(r"spool resumed: ", 30)
            wait_until(lambda: len(spool_ls(config)) > paused, 30, "spooling again")
            wait_until(lambda: not stats_messages(probe)[-1]["spool_paused"], 30,
                       "resumed in stats")
            assert daemon.proc.poll() is None
        finally:
            assert daemon.stop() == 0, daemon.log
            probe.close()
        assert "Traceback" not in daemon.log
        assert_index_and_files_agree(spool_dir(config), spool_ls(config))


# --- 4. a corrupted index -------------------------------------------------------------------------

# The demo clip is a cartoon: one visit's hard frames are near-duplicates, which mining keeps
# once and spreads over the visit. Tests that need several samples from one replay keep them.
EVERY_HARD_FRAME = {"min_gap_s": 0.0, "dedup_cosine": 1.0, "visit_dedup_distance": 6}


class TestCorruptIndex:
    def test_a_truncated_spool_db_is_moved_aside_rebuilt_from_intact_files_and_reported(
            self, tmp_path: Path) -> None:
        config = config_file(tmp_path, mining=EVERY_HARD_FRAME)
        run_to_end(config)
        before = sorted(spool_ls(config), key=lambda s: s["id"])
        assert len(before) >= 4
        directory = spool_dir(config)
        db = directory / "spool.db"
        os.truncate(db, db.stat().st_size // 2)
        damaged = before[0]  # the lowest id: never handed out again
        sample = directory / "samples" / damaged["file"]
        os.truncate(sample, sample.stat().st_size // 2)

        running = config_file(tmp_path, "running.toml",
                              camera={"loop": True}, mining=EVERY_HARD_FRAME)
        daemon = DaemonProcess(running)
        try:
            daemon.wait_log(r"spool index .* was unusable", 60)
            daemon.wait_log(r"alert \S+: ", 60)  # and it goes on classifying
            report = spool_stats(config)["rebuilt"]
            listed = by_id(spool_ls(config))
            assert daemon.proc.poll() is None
        finally:
            assert daemon.stop() == 0, daemon.log
        assert report["recovered"] == len(before) - 1 and report["discarded"] == 1, report
        assert (directory / report["moved_to"]).is_file()
        for old in before[1:]:
            assert listed[old["id"]]["sha256"] == old["sha256"]
            assert listed[old["id"]]["reasons"] == old["reasons"]
        assert damaged["id"] not in listed
        assert "Traceback" not in daemon.log


# --- 5. kill -9 while spooling --------------------------------------------------------------------

KILL_ROUNDS = int(os.environ.get("FEEDERD_KILL_ROUNDS", "10"))


class TestKill9:
    # 10 rounds took 178 s on a 2-core machine at load 22: about 70 s a round is honest there.
    @pytest.mark.timeout(70 * KILL_ROUNDS + 120)
    def test_after_kill_9_at_random_moments_index_and_files_agree_and_nothing_committed_is_lost(
            self, tmp_path: Path) -> None:
        """Each round spools (the demo clip looping at full speed, dedup off, a commit every
        0.25 s), lists the committed samples while running, and kill -9s the daemon: in even
        rounds at a random moment, in odd ones as soon as a sample file is being written (a
        ``.tmp-`` file in ``samples/``), i.e. inside a batch, between its files and its rows.
        Then a daemon that does not spool (mining off) starts, which reconciles, and the
        index is checked against the files. Every odd round must have landed its kill inside
        a write (else it did not test that window). The default, KILL_ROUNDS, keeps the
        suite's time sane; FEEDERD_KILL_ROUNDS=50 runs the fault test's 50."""
        seed = int(os.environ.get("FEEDERD_KILL_SEED", random.randrange(2**32)))
        rng = random.Random(seed)
        config = config_file(tmp_path, camera={"loop": True}, mining={"dedup_distance": 0},
                             spool={"commit_interval_s": 0.25, "max_bytes": 2**40,
                                    "max_count": 10**9})
        directory = spool_dir(config)
        kept: dict[int, str] = {}
        missed: list[int] = []
        for round_ in range(KILL_ROUNDS):
            where = f"round {round_} (FEEDERD_KILL_SEED={seed})"
            daemon = DaemonProcess(config)
            daemon.wait_log(r"alert \S+: ", 60)
            time.sleep(rng.uniform(0.0, 1.0))
            kept.update((s["id"], s["sha256"]) for s in spool_ls(config))
            assert daemon.proc.poll() is None, f"{where}: daemon died:\n{daemon.log}"
            if round_ % 2:
                if not kill_while_writing(daemon, directory / "samples", timeout=10.0):
                    missed.append(round_)
            else:
                time.sleep(rng.uniform(0.0, 0.3))
                daemon.kill()

            checker = DaemonProcess(config, env={"FEEDERD_MINING__ENABLED": "false"})
            try:
                checker.wait_log(r"alert \S+: ", 60)  # the spool is open and reconciled
                samples = spool_ls(config)
                assert_index_and_files_agree(directory, samples)
                listed = {s["id"]: s["sha256"] for s in samples}
                lost = {i for i, sha in kept.items() if listed.get(i) != sha}
                assert not lost, f"{where}: committed samples lost: {sorted(lost)}"
            finally:
                assert checker.stop() == 0, checker.log
        assert len(kept) >= KILL_ROUNDS
        assert not missed, f"rounds {missed} found no sample being written within 10 s"


def kill_while_writing(daemon: DaemonProcess, samples: Path, timeout: float) -> bool:
    """kill -9 as soon as a sample file is being written (else after ``timeout``);
    -> whether one was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with os.scandir(samples) as entries:
            if any(entry.name.startswith(".tmp-") for entry in entries):
                daemon.kill()
                return True
    daemon.kill()
    return False


# --- 6. export and ack ----------------------------------------------------------------------------

class TestExportAndAck:
    def test_export_since_beyond_the_end_is_a_valid_empty_tar_with_a_manifest(
            self, tmp_path: Path) -> None:
        config = config_file(tmp_path)
        run_to_end(config)
        stats = spool_stats(config)
        done = cli(config, "spool", "export", "--since", str(stats["last_seq"] + 100))
        assert done.returncode == 0, done.stderr.decode()
        members, manifest, pax = untar(done.stdout)
        assert members == {} and manifest == []
        assert pax["feederd.count"] == "0"
        assert pax["feederd.last_seq"] == str(stats["last_seq"])
        assert pax["feederd.spool_id"] == stats["spool_id"]

    def test_ack_of_an_unknown_sequence_exits_2_naming_the_last_sequence(
            self, tmp_path: Path) -> None:
        config = config_file(tmp_path)
        run_to_end(config)
        stats = spool_stats(config)
        unknown = stats["last_seq"] + 1000
        done = cli(config, "spool", "ack", str(unknown))
        assert done.returncode == 2
        message = done.stderr.decode()
        assert f"cannot ack seq {unknown}" in message
        assert f"last sequence number is {stats['last_seq']}" in message
        assert "Traceback" not in message
        assert spool_stats(config)["unsynced"] == stats["unsynced"]

    def test_exports_taken_while_the_daemon_writes_verify_and_can_be_acked(
            self, tmp_path: Path) -> None:
        config = config_file(tmp_path, camera={"loop": True}, mining={"dedup_distance": 0})
        daemon = DaemonProcess(config)
        seen = 0
        try:
            wait_until(lambda: len(spool_ls(config, missing_ok=True)) >= 5, 60, "samples")
            for _ in range(3):
                wait_until(lambda n=seen: len(spool_ls(config)) > n, 60, "more samples")
                done = cli(config, "spool", "export", "--since", "0")
                assert done.returncode == 0, done.stderr.decode()
                members, manifest, pax = untar(done.stdout)
                assert int(pax["feederd.count"]) == len(manifest) > seen
                assert set(members) == {entry["file"] for entry in manifest}
                for entry in manifest:
                    data = members[entry["file"]]
                    assert len(data) == entry["size"]
                    assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
                seqs = [entry["seq"] for entry in manifest]
                assert seqs == sorted(seqs) and int(pax["feederd.last_seq"]) >= seqs[-1]
                seen = len(manifest)
            last = manifest[-1]["seq"]
            acked = cli(config, "spool", "ack", str(last), "--json")
            assert acked.returncode == 0, acked.stderr.decode()
            assert json.loads(acked.stdout)["acked"] == len(manifest)
            synced = [s for s in spool_ls(config) if s["seq"] <= last]
            assert synced and all(s["synced"] for s in synced)
            assert daemon.proc.poll() is None
        finally:
            assert daemon.stop() == 0, daemon.log
