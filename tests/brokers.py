"""Real Mosquitto brokers for tests, each on its own free loopback port.

Never the system broker on 1883: every broker here gets a generated config in a temporary
directory. Pieces:

- :class:`Mosquitto`: start / stop (SIGTERM) / kill (SIGKILL) / restart on the same port;
  optional password file and TLS listener (test CA from :func:`make_pki`).
- :class:`TcpGate`: a TCP forwarder in front of a broker that the test can close, so that a
  client's reconnection waits until the test is ready (e.g. a subscriber is listening).
- :class:`Probe`: a paho client that records what arrives and can wait for it.
- fixtures ``mosquitto_bin``, ``pki``, ``broker`` and ``make_broker``, registered for the whole
  suite by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prerequisites import require_tool

HOST = "127.0.0.1"
WAIT_S = 15.0


def find_mosquitto() -> str:
    """The broker binary (the MQTT tests run a real one); else skip, or fail under CI."""
    return require_tool("mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    """Poll ``condition`` until true; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(0.02)


# --- certificates -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a
    second CA that signed none of them."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(directory: Path) -> Pki:
    """Generate the test certificates with the ``openssl`` command (EC keys: fast)."""
    require_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    _self_signed_ca(directory, "ca", "feederd test CA")
    _self_signed_ca(directory, "other-ca", "some other CA")
    _signed_cert(directory, "server", "localhost",
                 "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed_cert(directory, "client", "feederd test client",
                 "extendedKeyUsage=clientAuth\n")
    return Pki(
        ca=directory / "ca.crt", server_cert=directory / "server.crt",
        server_key=directory / "server.key", client_cert=directory / "client.crt",
        client_key=directory / "client.key", other_ca=directory / "other-ca.crt",
    )


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _self_signed_ca(directory: Path, name: str, subject: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.crt", "-days", "2", "-subj", f"/CN={subject}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _signed_cert(directory: Path, name: str, subject: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + extensions)
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={subject}")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey",
             "ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
             "-extfile", f"{name}.ext")


# --- the broker ---------------------------------------------------------------------------------

class Mosquitto:
    """One broker process with one listener on 127.0.0.1:<port>."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        pki: Pki | None = None,
        require_certificate: bool = False,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.users = users
        self.pki = pki
        self.require_certificate = require_certificate
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        self._binary = find_mosquitto()
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Mosquitto:
        """Start and wait until the port accepts connections."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self._binary, "-c", str(self.config_path)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start on port {self.port}:\n{self.log()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt death (SIGKILL): clients see their connections drop."""
        self._end(signal.SIGKILL)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _write_config(self) -> None:
        lines = [f"listener {self.port} {self.host}", "persistence false",
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 "log_type information", "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read tmp
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self._password_file()}"]
        if self.pki is not None:
            lines += [f"cafile {self.pki.ca}", f"certfile {self.pki.server_cert}",
                      f"keyfile {self.pki.server_key}",
                      f"require_certificate {'true' if self.require_certificate else 'false'}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _password_file(self) -> Path:
        path = self.workdir / "passwords"
        path.unlink(missing_ok=True)
        tool = require_tool("mosquitto_passwd", "mosquitto")
        for index, (user, password) in enumerate((self.users or {}).items()):
            create = ["-c"] if index == 0 else []
            subprocess.run([tool, *create, "-b", str(path), user, password], check=True,
                           capture_output=True)
        path.chmod(0o600)
        return path


# --- a gate in front of a broker ----------------------------------------------------------------

class TcpGate:
    """Forwards 127.0.0.1:<port> to a broker while open; closed, it hangs up on newcomers.

    Lets a test hold a client's reconnection back (say, until a subscriber is listening)
    without touching the client. ``muted`` swallows what the client sends (counting the bytes
    in ``swallowed``), so a message can be caught in flight; ``cut`` drops every connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self.muted = False
        self.swallowed = 0
        self._server = socket.create_server((HOST, 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, name="tcp-gate", daemon=True).start()

    def cut(self) -> None:
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            if not self.open:
                downstream.close()
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=2)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self.muted:
                    self.swallowed += len(data)
                else:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# --- a test client ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    response_topic: str | None
    correlation_data: bytes | None


class Probe:
    """A paho client that subscribes, records every message, and waits for what it expects."""

    def __init__(self, broker: Mosquitto, *topics: str, protocol: str = "5",
                 port: int | None = None, **tls: Any) -> None:
        v5 = protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"probe-{id(self):x}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._pending = len(topics)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if tls:
            self.client.tls_set(**tls)
        self.client.connect(broker.host, port or broker.port)
        self.client.loop_start()
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        if topics and not self._subscribed.wait(WAIT_S):
            pytest.fail(f"probe could not subscribe to {topics}")

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = WAIT_S) -> list[Received]:
        wait_until(lambda: len(self.on(topic)) >= count, timeout,
                   f"{count} message(s) on {topic}")
        return self.on(topic)

    def publish(self, topic: str, payload: bytes | str, *, correlation_data: bytes | None = None,
                retain: bool = False) -> None:
        props = None
        if correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=1, retain=retain,
                            properties=props).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any,
                      properties: Any) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending <= 0:
                self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        props = message.properties
        received = Received(
            topic=message.topic, payload=bytes(message.payload), retain=bool(message.retain),
            qos=message.qos, response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None))
        with self._lock:
            self.messages.append(received)


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    return find_mosquitto()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_broker(tmp_path: Path, mosquitto_bin: str) -> Iterator[Callable[..., Mosquitto]]:
    """Make (and start) brokers with :class:`Mosquitto` options; all are stopped afterwards."""
    made: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"broker{len(made)}", **options)
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def broker(make_broker: Callable[..., Mosquitto]) -> Mosquitto:
    """A running anonymous broker on a free loopback port."""
    return make_broker()
