"""feeder-sync pull: real spools through the real feederd CLI, and hostile streams."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from feederd.config import SpoolConfig
from feederd.errors import TransportError
from feederd.spool import Spool
from feederd.sync.config import DeviceConfig
from feederd.sync.pull import pull
from feederd.sync.transport import LocalTransport
from feederd.sync.workspace import Workspace
from sync.conftest import Setup
from sync.helpers import add_samples, feederd, jpeg, photo, run_sync, spool_dir

STREAM_DEVICE = Path(__file__).with_name("stream_device.py")


def squirrels(count: int, seed: int = 500) -> list[tuple[bytes, str, str, list[str]]]:
    return [(jpeg(photo("squirrel", seed + n)), "other", "user", ["rejected"])
            for n in range(count)]


def rows(setup: Setup) -> list[dict[str, object]]:
    db = sqlite3.connect(setup.workspace / "samples.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM samples ORDER BY seq")]
    finally:
        db.close()


def stored_files(setup: Setup) -> list[Path]:
    return sorted(p for p in (setup.workspace / "samples").rglob("*") if p.is_file())


def device_synced(setup: Setup) -> list[bool]:
    out = feederd(setup.tmp / "feederd.toml", "spool", "ls", "--json").stdout
    return [bool(s["synced"]) for s in json.loads(out)]


class TestPullFromARealSpool:
    def test_samples_arrive_verified_and_the_device_is_acked(self, setup: Setup) -> None:
        last = add_samples(spool_dir(setup.tmp), squirrels(5))
        result = json.loads(run_sync(setup.config, "pull", "--json").stdout)
        assert result["received"] == 5 and result["last_seq"] == last == result["acked"]
        stored = rows(setup)
        assert [r["label"] for r in stored] == ["other"] * 5
        for row in stored:
            data = (setup.workspace / str(row["file"])).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert device_synced(setup) == [True] * 5

    def test_a_second_pull_fetches_only_what_is_new(self, setup: Setup) -> None:
        add_samples(spool_dir(setup.tmp), squirrels(3))
        run_sync(setup.config, "pull")
        add_samples(spool_dir(setup.tmp), squirrels(2, seed=900))
        result = json.loads(run_sync(setup.config, "pull", "--json").stdout)
        assert result["since"] == 3 and result["received"] == 2
        assert len(rows(setup)) == 5

    def test_a_pull_with_nothing_new_changes_nothing(self, setup: Setup) -> None:
        add_samples(spool_dir(setup.tmp), squirrels(2))
        run_sync(setup.config, "pull")
        result = json.loads(run_sync(setup.config, "pull", "--json").stdout)
        assert result["received"] == 0 and result["acked"] is None
        assert len(rows(setup)) == 2

    def test_a_late_reply_updates_the_sample_and_keeps_the_review(self, setup: Setup) -> None:
        spool = spool_dir(setup.tmp)
        add_samples(spool, [(jpeg(photo("squirrel", 1)), None, None, ["low_margin"])])
        run_sync(setup.config, "pull")
        sample_id = rows(setup)[0]["id"]
        run_sync(setup.config, "review", "--label", f"{sample_id}=jay")
        with Spool(spool, SpoolConfig(commit_interval_s=0)) as store:
            store.label_visit("20250101T000000.000Z-0001", "other", "user", "rejected")
        run_sync(setup.config, "pull")
        [row] = rows(setup)
        assert row["label"] == "other" and row["label_source"] == "user"
        assert row["review_label"] == "jay"

    def test_pull_shows_a_clear_error_when_the_device_command_fails(self, setup: Setup) -> None:
        (setup.tmp / "feederd.toml").write_text("[nonsense]\nkey = 1\n")
        proc = run_sync(setup.config, "pull", check=False)
        assert proc.returncode == 2
        assert "rejected spool export" in proc.stderr and "nonsense" in proc.stderr
        assert rows(setup) == []


def flip_a_bit(path: Path) -> None:
    """Bit rot: one bit of the JPEG body changes; size and metadata stay as they were."""
    data = bytearray(path.read_bytes())
    data[len(data) - 40] ^= 0x10
    path.write_bytes(bytes(data))


class TestDamagedSpoolFiles:
    """Issue 9, fault 6: one bit-rotted spool JPEG blocked every future pull."""

    def test_a_rotten_file_is_quarantined_and_the_pull_carries_on(self, setup: Setup) -> None:
        spool = spool_dir(setup.tmp)
        add_samples(spool, squirrels(4))
        rotten = sorted((spool / "samples").glob("*.jpg"))[1]
        flip_a_bit(rotten)
        first = json.loads(run_sync(setup.config, "pull", "--json").stdout)
        assert first["received"] == 3 and first["damaged"] == [int(rotten.stem)]
        assert first["acked"] == first["last_seq"] == 4
        assert not rotten.exists() and (spool / "quarantine" / rotten.name).exists()
        add_samples(spool, squirrels(2, seed=900))
        second = json.loads(run_sync(setup.config, "pull", "--json").stdout)
        assert second["received"] == 2 and second["damaged"] == []
        assert len(rows(setup)) == 5

    def test_the_damage_shows_in_spool_stats_and_doctor(self, setup: Setup) -> None:
        spool = spool_dir(setup.tmp)
        add_samples(spool, squirrels(2))
        flip_a_bit(sorted((spool / "samples").glob("*.jpg"))[0])
        run_sync(setup.config, "pull")
        config = setup.tmp / "feederd.toml"
        stats = json.loads(feederd(config, "spool", "stats", "--json").stdout)
        assert stats["quarantined"] == 1 and stats["samples"] == 1
        assert stats["quarantine"][0]["id"] == 1
        doctor = json.loads(feederd(config, "doctor", "--json", check=False).stdout)
        (check,) = [c for c in doctor if c["name"] == "spool"]
        assert not check["ok"] and "1 damaged sample file(s) quarantined" in check["detail"]


# --- hostile and broken streams ---------------------------------------------------------------

def tar_stream(samples: list[bytes], *, manifest_first: bool = False, start: int = 1,
               tamper: dict[str, object] | None = None, names: dict[int, str] | None = None,
               extra: list[tarfile.TarInfo] | None = None, mode: str = "w|",
               headers: dict[str, str] | None = None) -> bytes:
    """An export stream like feederd's (``file`` names the JPEG, manifest last by default)."""
    rows_, files = [], []
    for n, data in enumerate(samples):
        seq = start + n
        name = (names or {}).get(n, f"{seq:08d}.jpg")
        rows_.append({"id": seq, "seq": seq, "file": name, "sha256":
                      hashlib.sha256(data).hexdigest(), "size": len(data), "visit_id": "v",
                      "time": 1.0, "reasons": ["rejected"], "predicted": "robin",
                      "probs": {"robin": 0.9}, "margin": 0.8, "label": "other",
                      "label_source": "user", "model_version": "v0", "phash": "0"})
        files.append((name, data))
    if tamper:
        rows_[0].update(tamper)
    manifest = ("".join(json.dumps(r) + "\n" for r in rows_)).encode()
    members = [("manifest.jsonl", manifest), *files] if manifest_first else \
        [*files, ("manifest.jsonl", manifest)]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for info in extra or []:
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name == "manifest.jsonl":
                info.pax_headers = {"feederd.spool_id": "spool-a", **(headers or {})}
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class StreamDevice:
    """A device whose ``feederd spool export`` sends a prepared stream (real subprocess)."""

    def __init__(self, tmp: Path, **device: object) -> None:
        self.stream = tmp / "stream.tar"
        self.acks = tmp / "acks.log"
        self.acks.touch()
        self.workspace = Workspace(tmp / "ws", "feeder").create()
        command = f"{sys.executable} {STREAM_DEVICE} {self.stream} {self.acks}"
        self.transport = LocalTransport("feeder", DeviceConfig(transport="local",
                                                               feederd=command, **device))

    def send(self, data: bytes) -> StreamDevice:
        self.stream.write_bytes(data)
        return self

    def pull(self) -> object:
        return pull(self.workspace, self.transport)

    def acked(self) -> list[int]:
        return [int(x) for x in self.acks.read_text().split()]

    def stored(self) -> tuple[int, list[Path]]:
        with self.workspace.index() as index:
            count = index.count()
        files = [p for p in self.workspace.samples_dir.rglob("*") if p.is_file()]
        return count, files


@pytest.fixture()
def device(tmp_path: Path) -> StreamDevice:
    return StreamDevice(tmp_path)


def images(count: int) -> list[bytes]:
    return [jpeg(photo("squirrel", 70 + n)) for n in range(count)]


class TestBrokenStreams:
    def test_a_well_formed_stream_with_the_manifest_first_is_accepted(
            self, device: StreamDevice) -> None:
        device.send(tar_stream(images(3), manifest_first=True)).pull()
        assert device.stored()[0] == 3 and device.acked() == [3]

    def test_garbage_is_a_transport_error_and_stores_nothing(self, device: StreamDevice
                                                             ) -> None:
        device.send(b"this is not a tar stream" * 100)
        with pytest.raises(TransportError, match="corrupt or truncated"):
            device.pull()
        assert device.stored() == (0, []) and device.acked() == []

    def test_a_truncated_stream_leaves_no_partial_state(self, device: StreamDevice) -> None:
        whole = tar_stream(images(4))
        device.send(whole[:len(whole) // 2])
        with pytest.raises(TransportError):
            device.pull()
        assert device.stored() == (0, []) and device.acked() == []
        assert not list(device.workspace.samples_dir.rglob(".incoming-*"))

    def test_an_interrupted_pull_resumes_and_acks_once_complete(self, device: StreamDevice
                                                                ) -> None:
        whole = tar_stream(images(6))
        device.send(whole[:int(len(whole) * 0.6)])
        with pytest.raises(TransportError):
            device.pull()
        device.send(whole).pull()
        count, files = device.stored()
        assert count == 6 and len(files) == 6 and device.acked() == [6]

    def test_a_checksum_mismatch_is_refused(self, device: StreamDevice) -> None:
        device.send(tar_stream(images(3), tamper={"sha256": "0" * 64}))
        with pytest.raises(TransportError, match="checksum mismatch for sample 1"):
            device.pull()
        assert device.stored() == (0, []) and device.acked() == []

    def test_a_size_mismatch_is_refused(self, device: StreamDevice) -> None:
        device.send(tar_stream(images(2), tamper={"size": 5}))
        with pytest.raises(TransportError, match="checksum mismatch"):
            device.pull()

    @pytest.mark.parametrize("name", ["/etc/cron.d/evil.jpg", "../../evil.jpg",
                                      "samples/../../evil.jpg"])
    def test_member_names_that_escape_are_refused(self, device: StreamDevice, name: str
                                                  ) -> None:
        device.send(tar_stream(images(1), names={0: name}))
        with pytest.raises(TransportError, match="refusing tar member"):
            device.pull()
        assert device.stored() == (0, [])

    @pytest.mark.parametrize("path", ["/tmp/evil.jpg", "../evil.jpg"])
    def test_manifest_entries_that_escape_are_refused(self, device: StreamDevice, path: str
                                                      ) -> None:
        device.send(tar_stream(images(2), tamper={"file": path}, manifest_first=True))
        with pytest.raises(TransportError, match="refusing tar member"):
            device.pull()
        assert device.stored() == (0, [])

    def test_links_are_refused(self, device: StreamDevice) -> None:
        link = tarfile.TarInfo("00000009.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        device.send(tar_stream(images(1), extra=[link]))
        with pytest.raises(TransportError, match="not a regular file"):
            device.pull()

    def test_a_file_the_manifest_does_not_list_is_refused(self, device: StreamDevice) -> None:
        stray = tarfile.TarInfo("stray.jpg")
        device.send(tar_stream(images(1), extra=[stray]))
        with pytest.raises(TransportError, match="does not list"):
            device.pull()

    def test_a_stream_without_a_manifest_is_refused(self, device: StreamDevice) -> None:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w|") as tar:
            info = tarfile.TarInfo("00000001.jpg")
            data = images(1)[0]
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        device.send(out.getvalue())
        with pytest.raises(TransportError, match=r"no manifest\.jsonl"):
            device.pull()
        assert device.stored() == (0, [])

    def test_a_rebuilt_spool_is_pulled_again_from_zero_without_duplicates(
            self, device: StreamDevice) -> None:
        device.send(tar_stream(images(3))).pull()
        rebuilt = tar_stream(images(3)).replace(b"spool-a", b"spool-b")
        device.send(rebuilt).pull()
        assert device.stored()[0] == 3
        assert device.acked() == [3, 3]


def stored_bytes(device: StreamDevice) -> int:
    return sum(p.stat().st_size for p in device.workspace.samples_dir.rglob("*") if p.is_file())


class TestHostileStreams:
    """Issue 9, fault 11: what a broken or hostile device can send is bounded and checked."""

    def test_a_compressed_stream_is_refused_before_anything_is_written(
            self, device: StreamDevice) -> None:
        bomb = bytes(12 * 2**20)  # 12 MB of zeros: ~12 KB gzipped
        device.send(tar_stream([bomb], mode="w|gz"))
        with pytest.raises(TransportError, match="compressed"):
            device.pull()
        assert stored_bytes(device) == 0 and device.acked() == []

    def test_a_member_larger_than_a_sample_may_be_is_refused_unread(
            self, device: StreamDevice) -> None:
        device.send(tar_stream([bytes(17 * 2**20)]))
        with pytest.raises(TransportError, match="more than a sample may be"):
            device.pull()
        assert stored_bytes(device) == 0 and device.acked() == []

    def test_a_stream_larger_than_pull_max_mb_is_refused_and_nothing_kept(
            self, tmp_path: Path) -> None:
        device = StreamDevice(tmp_path, pull_max_mb=1)
        rng = np.random.default_rng(1)
        device.send(tar_stream([rng.bytes(600_000) for _ in range(3)]))
        with pytest.raises(TransportError, match="pull_max_mb"):
            device.pull()
        assert stored_bytes(device) == 0 and device.acked() == []

    @pytest.mark.parametrize("seq", [2**62, 2**48 + 1])
    def test_an_absurd_sequence_number_is_refused_and_not_acked(
            self, device: StreamDevice, seq: int) -> None:
        device.send(tar_stream(images(2), tamper={"seq": seq}))
        with pytest.raises(TransportError, match="absurd"):
            device.pull()
        assert device.stored() == (0, []) and device.acked() == []

    def test_a_sequence_beyond_the_streams_own_last_sequence_is_refused(
            self, device: StreamDevice) -> None:
        device.send(tar_stream(images(3), headers={"feederd.last_seq": "2"}))
        with pytest.raises(TransportError, match="beyond the stream's own last sequence"):
            device.pull()
        assert device.acked() == []

    def test_an_absurd_last_sequence_header_is_refused(self, device: StreamDevice) -> None:
        device.send(tar_stream(images(1), headers={"feederd.last_seq": str(2**62)}))
        with pytest.raises(TransportError, match="not a plausible sequence number"):
            device.pull()

    @pytest.mark.parametrize("label", ["\x1b[2J\x1b[31mcardinal", "../..", "a/b", "bad label",
                                       "x" * 101])
    def test_a_label_outside_the_grammar_is_refused_and_the_sample_kept(
            self, device: StreamDevice, label: str) -> None:
        result = device.send(tar_stream(images(2), tamper={"label": label})).pull()
        assert result.refused == 1 and result.received == 2  # type: ignore[attr-defined]
        with device.workspace.index() as index:
            labels = sorted((s["id"], s["label"], s["label_source"]) for s in index.all())
        assert labels == [("1", None, None), ("2", "other", "user")]
        assert device.acked() == [2]

    def test_terminal_escapes_in_other_text_fields_are_dropped(self, device: StreamDevice
                                                             ) -> None:
        escape = "\x1b]0;owned\x07"
        device.send(tar_stream(images(1), tamper={
            "predicted": escape, "visit_id": escape, "model_version": escape,
            "reasons": ["rejected", escape], "probs": {escape: 0.5, "robin": 0.5}})).pull()
        with device.workspace.index() as index:
            (sample,) = index.all()
        assert (sample["predicted"], sample["visit_id"], sample["model_version"]) == \
            (None, None, None)
        assert sample["reasons"] == ["rejected"]
        assert sample["probs"] == {"robin": 0.5}
