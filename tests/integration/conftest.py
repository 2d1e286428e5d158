"""Fixtures for integration tests against a real Kafka broker.

The broker is whatever STREAMREC_KAFKA_BOOTSTRAP names (``scripts/test.sh`` starts a local Apache Kafka and sets
it; the compose ``tests`` service points it at the compose broker). Without it these tests skip; with it set but
unreachable they fail. Each test gets its own topic prefix and Faust app id, so tests never see each other's data
and reruns against the same broker work.

Workers run as real ``streamrec worker`` subprocesses configured only through STREAMREC_* variables: the same
contract the container images and manifests use.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from streamrec.config import Settings
from streamrec.events import Interaction

REPO_ROOT = Path(__file__).resolve().parents[2]


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def bootstrap() -> str:
    value = os.environ.get("STREAMREC_KAFKA_BOOTSTRAP")
    if not value:
        pytest.skip("STREAMREC_KAFKA_BOOTSTRAP is not set (bash scripts/test.sh starts a broker and sets it)")
    if not _reachable(value):
        pytest.fail(f"STREAMREC_KAFKA_BOOTSTRAP={value} but nothing accepts connections there")
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """The first of ``n`` consecutive free ports (for a broker of this module: listener, controller, ...)."""
    for _ in range(50):
        first = free_port()
        try:
            socks = []
            for p in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


@dataclass
class Worker:
    """One ``streamrec worker`` subprocess."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAMREC_WEB_PORT']}"

    def start(self, ready_timeout: float = 120.0) -> "Worker":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamrec", "worker"], env=self.env, cwd=REPO_ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready(ready_timeout)
        return self

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                status, _ = self.get("/ready")
                if status == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout:.0f} s; log tail:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"worker exited with {self.proc.returncode}; log tail:\n{self.tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        """Graceful stop (SIGTERM, as Kubernetes and compose do): Faust commits offsets and closes tables."""
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()

    def kill(self) -> int:
        """Hard crash (SIGKILL): no commit, no flush, no table close."""
        self.proc.kill()
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    """Isolated topics + worker settings for one test."""

    bootstrap: str
    tmp: Path
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update({
            "STREAMREC_KAFKA_BOOTSTRAP": self.bootstrap,
            "STREAMREC_TOPIC_PREFIX": f"it-{self.name}-",
            "STREAMREC_APP_ID": f"it-{self.name}",
            "STREAMREC_DATA_DIR": str(self.tmp / "state"),
            "STREAMREC_SESSION_TIMEOUT_S": "6",
            "STREAMREC_LOG_LEVEL": "info",
            "HF_HUB_OFFLINE": "1",
        })
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def apply_topics(self) -> None:
        from streamrec.stream import topics
        report = topics.apply(self.settings, create=True)
        assert not report.drift, report.drift

    def worker(self, **env: str) -> Worker:
        w = Worker({**self.env, "STREAMREC_WEB_PORT": str(free_port()), **env},
                   self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        return w.start()

    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)

    def produce(self, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        from kafka import KafkaProducer
        p = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", **self.settings.kafka_python_security())
        try:
            for key, value in records:
                p.send(topic, key=key, value=value)
            p.flush()
        finally:
            p.close()

    def produce_events(self, events: list[Interaction]) -> None:
        self.produce(self.topic("interactions"), [(e.user_id.encode(), e.to_bytes()) for e in events])

    def consume(self, topic: str, until: Callable[[list], bool], timeout: float = 60.0,
                raw: bool = False, read_committed: bool = False) -> list:
        """Read ``topic`` from the beginning until ``until(records)`` holds; fail with what was read otherwise.
        ``read_committed``: skip records of aborted transactions, as a consumer of an exactly_once worker should."""
        from kafka import KafkaConsumer
        c = KafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                          enable_auto_commit=False, group_id=None, consumer_timeout_ms=500,
                          isolation_level="read_committed" if read_committed else "read_uncommitted",
                          **self.settings.kafka_python_security())
        got: list = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                # poll, not ``for r in c``: that iterator only returns after 500 ms without a record, so against a
                # steady stream the condition was first checked when the stream had ended (a "mid-stream" kill
                # then landed after the last event)
                for batch in c.poll(timeout_ms=500).values():
                    got.extend(r if raw else (r.key, json.loads(r.value)) for r in batch)
                if until(got):
                    return got
                for w in self.workers:
                    if w.proc is not None and w.proc.returncode is None and not w.alive():
                        w.assert_alive()
        finally:
            c.close()
        logs = "\n".join(w.tail(30) for w in self.workers)
        raise AssertionError(f"{topic}: condition not met in {timeout:.0f} s; {len(got)} records: "
                             f"{got[-5:]!r}\nworker logs:\n{logs}")

    def changelog_state(self, user_id: str, timeout: float = 30.0,
                        until: Callable[[dict], bool] = lambda s: True) -> dict:
        """The user's latest state as written to the user_state changelog (what RocksDB is restored from)."""
        topic = f"{self.settings.app_id}-user_state-changelog"
        key = user_id.encode()   # raw UTF-8 keys, compact JSON values (state.encode_state)

        def latest(records) -> dict | None:
            mine = [r for r in records if r.key == key and r.value is not None]
            return json.loads(mine[-1].value) if mine else None

        records = self.consume(topic, lambda rs: (s := latest(rs)) is not None and until(s), timeout, raw=True)
        return latest(records)

    def changelog_states(self, until: Callable[[dict], bool], timeout: float = 60.0,
                         read_committed: bool = False) -> dict[str, dict]:
        """Every user's latest state in the user_state changelog, once ``until(states)`` holds."""
        topic = f"{self.settings.app_id}-user_state-changelog"

        def latest(records) -> dict[str, dict]:
            out = {}
            for r in records:
                if r.value is not None:
                    out[r.key.decode()] = json.loads(r.value)
            return out

        return latest(self.consume(topic, lambda rs: until(latest(rs)), timeout, raw=True,
                                   read_committed=read_committed))

    def close(self) -> None:
        for w in self.workers:
            w.stop()


@pytest.fixture
def stack(bootstrap, tmp_path):
    s = Stack(bootstrap, tmp_path)
    s.apply_topics()
    yield s
    s.close()


@dataclass
class PrivateBroker:
    """A broker of one test's own (``deploy/kafka/kafka.sh``), for tests that stop and start it."""

    port: int
    run_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _sh(self, *args: str, timeout: float = 150) -> None:
        env = {**os.environ, "STREAMREC_KAFKA_PORT": str(self.port), "STREAMREC_KAFKA_RUN_DIR": str(self.run_dir),
               "STREAMREC_PYTHON": sys.executable, "STREAMREC_KAFKA_HEAP_OPTS": "-Xms128m -Xmx384m"}
        r = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "kafka" / "kafka.sh"), *args], env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"kafka.sh {' '.join(args)}: {r.stdout}{r.stderr}"

    def start(self) -> None:
        self._sh("start")
        self._sh("wait", "120")

    def stop(self) -> None:
        self._sh("stop")


def _private_broker_port() -> int:
    """A port pair (broker, controller) below the ephemeral range.

    While the broker is down, clients keep reconnecting from ephemeral ports; when one of them draws the broker's
    own port number, Linux connects the socket to itself and the restarted broker cannot bind ("Address already
    in use"). Ports below the range are never drawn. Derived from the suite's broker port when scripts/test.sh
    set one, so concurrent checkouts on one machine (each with its own test port) pick different ones.
    """
    if os.environ.get("STREAMREC_KAFKA_PORT"):
        return 20000 + (int(os.environ["STREAMREC_KAFKA_PORT"]) + 2) % 10000
    import random
    while True:
        port = random.randrange(20000, 30000, 2)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


@pytest.fixture
def private_broker(bootstrap, tmp_path):
    """Only where the suite has a broker (the same switch as every integration test), and where a local one can
    be started: Java and the broker jars (``kafka.sh fetch``, which scripts/test.sh runs). The compose ``tests``
    container has neither; its broker is another container that a test cannot stop."""
    import glob
    import shutil
    java = os.environ.get("STREAMREC_KAFKA_JAVA") or (os.path.join(os.environ["JAVA_HOME"], "bin", "java")
                                                       if os.environ.get("JAVA_HOME") else "java")
    jars = glob.glob(str(REPO_ROOT / "deploy" / "kafka" / ".cache" / "libs-*" / "kafka_*.jar"))
    if not shutil.which(java) or not jars:
        pytest.skip("needs a local broker it can stop and start: Java and the jars of deploy/kafka/kafka.sh fetch")
    broker = PrivateBroker(_private_broker_port(), tmp_path / "kafka")
    broker.start()
    yield broker
    broker.stop()


def event(user: str, item: str, ts: float, n: int | str | None = None, kind: str = "view") -> Interaction:
    return Interaction(event_id=f"{user}-{item}-{n if n is not None else int(ts)}", user_id=user, item_id=item,
                       event_type=kind, timestamp=ts, value=4.0 if kind == "rating" else None)
