"""feeder-sync over a real OpenSSH server, and a device that cannot be reached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prerequisites import require_tool

from feederd.errors import TransportError
from feederd.sync.config import DeviceConfig
from feederd.sync.transport import SshTransport
from sync import sshd
from sync.conftest import Setup
from sync.helpers import (
    FEEDERD,
    add_samples,
    feederd,
    jpeg,
    photo,
    run_json,
    run_sync,
    spool_dir,
    sync_config,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshServer]:
    require_tool(str(sshd.SSHD), "openssh-server")
    for tool in ("ssh", "ssh-keygen"):
        require_tool(tool, "openssh-client")
    ssh = sshd.SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield ssh
    finally:
        ssh.stop()


@pytest.fixture()
def over_ssh(setup: Setup, server: sshd.SshServer) -> Setup:
    """The same workspace and device, reached through ssh -F <generated config>."""
    staging = setup.tmp / "staging"
    extra = (f'host = "{sshd.HOST_ALIAS}"\nssh_options = ["-F", "{server.ssh_config}"]\n'
             f'staging_dir = "{staging}"\n')
    sync_config(setup.tmp, transport="ssh", extra=extra)
    return setup


class TestRealSsh:
    def test_pull_streams_the_spool_over_ssh_and_acks(self, over_ssh: Setup) -> None:
        add_samples(spool_dir(over_ssh.tmp), [(jpeg(photo("squirrel", n)), "other", "user",
                                               ["rejected"]) for n in range(4)])
        result = run_json(over_ssh.config, "pull")
        assert result["received"] == 4 and result["acked"] == 4
        listing = feederd(over_ssh.tmp / "feederd.toml", "spool", "ls", "--json").stdout
        assert all(sample["synced"] for sample in json.loads(listing))

    def test_push_copies_the_bundle_and_installs_it(self, over_ssh: Setup) -> None:
        pushed = run_json(over_ssh.config, "push")["pushed"]
        listing = json.loads(feederd(over_ssh.tmp / "feederd.toml", "model", "ls",
                                     "--json").stdout)
        assert [(e["version"], e["current"]) for e in listing] == [(pushed, True)]
        assert list((over_ssh.tmp / "staging").iterdir()) == []

    def test_a_refused_bundle_over_ssh_is_bad_input(self, over_ssh: Setup,
                                                    server: sshd.SshServer) -> None:
        transport = SshTransport("feeder", DeviceConfig.model_validate({
            "host": sshd.HOST_ALIAS, "ssh_options": ["-F", str(server.ssh_config)],
            "feederd": FEEDERD,
            "feederd_config": str(over_ssh.tmp / "feederd.toml"),
            "staging_dir": str(over_ssh.tmp / "staging")}))
        broken = over_ssh.tmp / "broken.onnx"
        broken.write_bytes(b"not a model")
        with pytest.raises(Exception, match="rejected model install") as error:
            transport.install(broken)
        assert not isinstance(error.value, TransportError)


class TestUnreachable:
    def test_a_closed_port_is_a_clear_transport_error(self, tmp_path: Path) -> None:
        require_tool("ssh", "openssh-client")
        port = sshd.free_port()
        transport = SshTransport("feeder", DeviceConfig.model_validate({
            "host": "127.0.0.1", "ssh_options": ["-p", str(port), "-o",
                                                 "StrictHostKeyChecking=no"]}))
        with pytest.raises(TransportError, match="cannot reach device 'feeder' over ssh") as e, \
                transport.export(0) as stream:
            stream.read()
        assert "Connection refused" in str(e.value)

    def test_the_cli_exits_1_and_says_how_to_check(self, setup: Setup) -> None:
        require_tool("ssh", "openssh-client")
        extra = (f'host = "127.0.0.1"\nssh_options = ["-p", "{sshd.free_port()}", "-o", '
                 '"StrictHostKeyChecking=no"]\n')
        config = sync_config(setup.tmp, transport="ssh", extra=extra)
        proc = run_sync(config, "pull", check=False)
        assert proc.returncode == 1
        assert "cannot reach device 'feeder'" in proc.stderr
        assert "works without a password" in proc.stderr
