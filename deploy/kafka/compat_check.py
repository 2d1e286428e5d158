#!/usr/bin/env python3
"""Round-trip compatibility checks between a Kafka broker and the project's Kafka clients.

Proves that a broker release works with what streamrec actually uses: kafka-python (admin, tools)
and aiokafka through Faust (streams, RocksDB tables, changelog recovery, exactly-once).

    python deploy/kafka/compat_check.py --bootstrap 127.0.0.1:9092          # all checks
    python deploy/kafka/compat_check.py --only transactions,faust_exactly_once
    python deploy/kafka/compat_check.py --list

Prints one PASS/FAIL line per check and exits 1 if any check failed (2 on bad usage or an
unreachable broker). Every run uses fresh topic names, group ids, Faust app ids and temporary
Faust data dirs, so it can be re-run against the same broker. Topics it creates are left behind
(they are tiny; `deploy/kafka/kafka.sh reset` wipes them with everything else).

The checks are plain functions ``check_<name>(bootstrap) -> str`` (the string is a short detail
line) that raise on failure; tests/integration/test_kafka_compat.py imports this file and calls
them one by one.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# Faust workers: a short session timeout keeps group joins fast (see /work/shared/notes/faust.md).
FAUST_SESSION_TIMEOUT_S = 10.0
FAUST_PARTITIONS = 2
WORKER_START_TIMEOUT_S = 25.0


class CheckFailed(AssertionError):
    """A check ran but the broker/client behaviour was wrong."""


def _uid(prefix: str) -> str:
    return f"cc-{prefix}-{uuid.uuid4().hex[:10]}"


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def broker_reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the first bootstrap address."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------- helpers

def _admin(bootstrap: str):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-compat-check",
                            request_timeout_ms=15000)


def create_topics(bootstrap: str, topics: dict[str, tuple[int, dict[str, str]]]) -> None:
    """Create topics explicitly ({name: (partitions, configs)}) and wait until they have leaders."""
    admin = _admin(bootstrap)
    try:
        admin.create_topics(
            {name: {"num_partitions": parts, "replication_factor": 1, "configs": dict(configs)}
             for name, (parts, configs) in topics.items()},
            timeout_ms=15000, wait_for_metadata=True)
    finally:
        admin.close()


def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = _admin(bootstrap)
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                     config_filter="all")
    finally:
        admin.close()
    entries = res["topic"][topic]
    return {k: (v.get("value") if isinstance(v, dict) else v) for k, v in entries.items()}


def topic_partitions(bootstrap: str, topic: str) -> int | None:
    admin = _admin(bootstrap)
    try:
        meta = admin.describe_topics([topic])
    finally:
        admin.close()
    for t in meta:
        if t.get("name") == topic and t.get("error_code", 0) == 0:
            return len(t.get("partitions") or [])
    return None


def read_all_kafka_python(bootstrap: str, topic: str, expected: int, timeout: float = 15.0,
                          isolation_level: str = "read_uncommitted"):
    """Read a topic from the beginning without a group until `expected` records (or timeout)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", isolation_level=isolation_level,
                             client_id="streamrec-compat-check")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic) or set()
        _expect(bool(parts), f"topic {topic} has no partitions in metadata")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


async def _aio_read(bootstrap: str, topic: str, expected: int, timeout: float = 15.0,
                    isolation_level: str = "read_uncommitted", settle: float = 0.0):
    """Read a topic from the beginning with aiokafka (no group). After reaching `expected`,
    keeps polling `settle` seconds more to catch unexpected extra records."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                isolation_level=isolation_level)
    await consumer.start()
    try:
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        settle_until = time.monotonic() + settle
        while time.monotonic() < settle_until:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


# ------------------------------------------------------------------ (0) protocol version overlap

# Requests the project's clients really send (producer, consumer, group coordinator, Faust's topic
# creation, transactions). If the broker supports none of aiokafka's versions of one of these,
# that feature cannot work.
CRITICAL_AIOKAFKA_APIS = {
    "ProduceRequest", "FetchRequest", "OffsetRequest", "MetadataRequest", "OffsetCommitRequest",
    "OffsetFetchRequest", "FindCoordinatorRequest", "JoinGroupRequest", "HeartbeatRequest",
    "LeaveGroupRequest", "SyncGroupRequest", "ApiVersionRequest", "CreateTopicsRequest",
    "InitProducerIdRequest", "AddPartitionsToTxnRequest", "AddOffsetsToTxnRequest",
    "EndTxnRequest", "TxnOffsetCommitRequest",
}


def _aiokafka_request_classes() -> dict[str, tuple[int, list[int]]]:
    import importlib
    import inspect
    import pkgutil

    import aiokafka.protocol as proto
    from aiokafka.protocol.api import Request

    out: dict[str, tuple[int, list[int]]] = {}
    for mod_info in pkgutil.iter_modules(proto.__path__):
        mod = importlib.import_module(f"aiokafka.protocol.{mod_info.name}")
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, Request) and cls is not Request and getattr(cls, "_CLASSES", None):
                out[name] = (cls.API_KEY, sorted({c.API_VERSION for c in cls._CLASSES}))
    return out


async def _broker_api_versions(bootstrap: str) -> dict[int, tuple[int, int]]:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node_id = next(iter(client.cluster.brokers())).nodeId
        conn = await client._get_conn(node_id)  # the ApiVersions this connection negotiated
        _expect(conn is not None, f"cannot connect to broker node {node_id}")
        return dict(conn._versions)
    finally:
        await client.close()


def check_protocol(bootstrap: str) -> str:
    """Every request aiokafka 0.14 needs has a version the broker accepts (KIP-896 removals)."""
    broker = asyncio.run(_broker_api_versions(bootstrap))
    chosen, missing_critical, missing_other = [], [], []
    for name, (key, versions) in sorted(_aiokafka_request_classes().items(), key=lambda x: x[1][0]):
        short = name.removesuffix("Request")
        if key not in broker:
            (missing_critical if name in CRITICAL_AIOKAFKA_APIS else missing_other).append(
                f"{short}(key {key} not offered by broker)")
            continue
        lo, hi = broker[key]
        usable = [v for v in versions if lo <= v <= hi]
        if not usable:
            entry = f"{short}(client v{versions[0]}-{versions[-1]}, broker v{lo}-{hi})"
            (missing_critical if name in CRITICAL_AIOKAFKA_APIS else missing_other).append(entry)
        elif name in CRITICAL_AIOKAFKA_APIS:
            chosen.append(f"{short} v{max(usable)} (broker v{lo}-{hi})")
    _expect(not missing_critical, "no common version for: " + ", ".join(missing_critical))
    detail = "aiokafka will use: " + "; ".join(chosen)
    if missing_other:
        detail += " | unusable but unused by streamrec: " + ", ".join(missing_other)
    return detail


# ------------------------------------------------------------------------ (a) kafka-python

def check_kafka_python(bootstrap: str) -> str:
    """kafka-python: produce (acks=all, gzip) and consume with a group, commit."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic, group, n = _uid("kp"), _uid("kp-group"), 50
    create_topics(bootstrap, {topic: (1, {})})
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             compression_type="gzip")
    try:
        futures = [producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
                                 headers=[("h", b"1")]) for i in range(n)]
        producer.flush(timeout=15)
        offsets = [f.get(timeout=15).offset for f in futures]
    finally:
        producer.close(timeout=5)
    _expect(offsets == list(range(n)), f"unexpected produce offsets {offsets[:5]}...")

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=10000, heartbeat_interval_ms=1000)
    try:
        got = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                got.extend(batch)
        _expect(len(got) == n, f"consumed {len(got)} of {n} records")
        _expect([r.value for r in got] == [f"v{i}".encode() for i in range(n)],
                "values differ or out of order")
        _expect(got[0].headers == [("h", b"1")], f"headers lost: {got[0].headers}")
        consumer.commit()
        committed = consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()
    _expect(committed == n, f"committed offset {committed}, expected {n}")
    return f"produced/consumed {n} gzip records with headers; group {group} committed offset {n}"


# ----------------------------------------------------------------------------- (b) aiokafka

async def _aiokafka_roundtrip(bootstrap: str, topic: str, n: int) -> list:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
                                enable_idempotence=True)
    await producer.start()
    try:
        futs = [await producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
                                    headers=[("h", b"1")]) for i in range(n)]
        metas = [await f for f in futs]
    finally:
        await producer.stop()
    _expect([m.offset for m in metas] == list(range(n)), "unexpected produce offsets")
    return await _aio_read(bootstrap, topic, n)


def check_aiokafka(bootstrap: str) -> str:
    """aiokafka: idempotent gzip producer (acks=all) and consumer read back."""
    topic, n = _uid("aio"), 50
    create_topics(bootstrap, {topic: (1, {})})
    got = asyncio.run(_aiokafka_roundtrip(bootstrap, topic, n))
    _expect(len(got) == n, f"consumed {len(got)} of {n}")
    _expect([r.value for r in got] == [f"v{i}".encode() for i in range(n)], "values differ")
    _expect(list(got[0].headers) == [("h", b"1")], f"headers lost: {got[0].headers}")
    return f"produced (idempotent, gzip) and consumed {n} records"


# ------------------------------------------------------------------------- (c) consumer group

async def _group_phase(bootstrap: str, topic: str, group: str, take: int | None, timeout: float):
    """Consume with a group. take=N: process the first N records, commit exactly those, leave.
    take=None: read whatever remains until idle. Returns the (partition, offset) list processed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=10000, heartbeat_interval_ms=1000)
    await consumer.start()
    try:
        processed: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        idle_since = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            recs = sorted((r for b in batches.values() for r in b),
                          key=lambda r: (r.partition, r.offset))
            if not recs:
                if take is None and processed:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 1.5:
                        break
                continue
            idle_since = None
            for r in recs:
                if take is not None and len(processed) >= take:
                    break
                processed.append((r.partition, r.offset))
            if take is not None and len(processed) >= take:
                break
        if take is not None:
            to_commit: dict = {}
            for p, off in processed:
                tp = TopicPartition(topic, p)
                to_commit[tp] = max(to_commit.get(tp, 0), off + 1)
            await consumer.commit(to_commit)
            for tp, off in to_commit.items():
                got = await consumer.committed(tp)
                _expect(got == off, f"committed({tp}) = {got}, expected {off}")
        return processed
    finally:
        await consumer.stop()  # leaves the group


def check_consumer_group(bootstrap: str) -> str:
    """aiokafka group: join, commit part, leave; a new member resumes from the committed offsets."""
    topic, group = _uid("grp"), _uid("grp-group")
    n_per_part, take = 10, 7
    create_topics(bootstrap, {topic: (2, {})})
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for p in (0, 1):
            for i in range(n_per_part):
                producer.send(topic, value=f"p{p}-{i}".encode(), partition=p)
        producer.flush(timeout=15)
    finally:
        producer.close(timeout=5)
    everything = {(p, o) for p in (0, 1) for o in range(n_per_part)}

    t0 = time.monotonic()
    first = asyncio.run(_group_phase(bootstrap, topic, group, take, timeout=20))
    t_first = time.monotonic() - t0
    _expect(len(first) == take, f"first member processed {len(first)} records, expected {take}")

    # Cross-check with kafka-python's admin client what the group coordinator stored.
    admin = _admin(bootstrap)
    try:
        stored = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    expected_commits = {}
    for p, off in first:
        expected_commits[p] = max(expected_commits.get(p, 0), off + 1)
    stored_plain = {tp.partition: om.offset for tp, om in stored.items() if tp.topic == topic}
    _expect(stored_plain == expected_commits,
            f"admin sees committed {stored_plain}, expected {expected_commits}")

    t0 = time.monotonic()
    second = asyncio.run(_group_phase(bootstrap, topic, group, None, timeout=20))
    t_second = time.monotonic() - t0
    _expect(not (set(first) & set(second)), f"re-delivered after commit: {set(first) & set(second)}")
    _expect(set(first) | set(second) == everything,
            f"missing after resume: {sorted(everything - set(first) - set(second))}")
    return (f"member 1 processed+committed {take}/{len(everything)} ({t_first:.1f}s incl. join), "
            f"member 2 resumed with exactly the other {len(second)} ({t_second:.1f}s); "
            f"admin list_group_offsets agrees: {stored_plain}")


# --------------------------------------------------------------------- (d) compacted topic

def check_compacted_topic(bootstrap: str) -> str:
    """kafka-python admin creates a cleanup.policy=compact topic; keyed writes + tombstone read back."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    topic = _uid("compact")
    create_topics(bootstrap, {topic: (1, {"cleanup.policy": "compact",
                                          "min.cleanable.dirty.ratio": "0.01",
                                          "segment.ms": "1000"})})
    cfg = topic_configs(bootstrap, topic)
    _expect(cfg.get("cleanup.policy") == "compact", f"cleanup.policy is {cfg.get('cleanup.policy')}")

    writes = [(b"a", b"a1"), (b"b", b"b1"), (b"a", b"a2"), (b"c", b"c1"), (b"b", b"b2"),
              (b"a", b"a3"), (b"c", None)]  # None = tombstone
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    rejected = None
    try:
        for k, v in writes:
            producer.send(topic, key=k, value=v)
        producer.flush(timeout=15)
        # A compacted topic must refuse records without a key.
        try:
            producer.send(topic, value=b"no-key").get(timeout=15)
        except KafkaError as e:
            rejected = type(e).__name__
    finally:
        producer.close(timeout=5)
    _expect(rejected is not None, "broker accepted a keyless record on a compacted topic")

    recs = read_all_kafka_python(bootstrap, topic, len(writes))
    _expect(len(recs) >= len({k for k, _ in writes}), f"read back only {len(recs)} records")
    latest: dict[bytes, bytes | None] = {}
    for r in recs:
        latest[r.key] = r.value
    live = {k: v for k, v in latest.items() if v is not None}
    _expect(live == {b"a": b"a3", b"b": b"b2"}, f"latest values per key wrong: {live}")
    _expect(b"c" in latest and latest[b"c"] is None, "tombstone for key c not read back")
    return (f"cleanup.policy=compact confirmed by describe_configs; {len(recs)} records read back, "
            f"latest-per-key correct incl. tombstone; keyless record rejected ({rejected})")


# ------------------------------------------------------------------------- Faust subprocesses

FAUST_APP = textwrap.dedent('''
    """Faust app used by compat_check.py (generated; configured through CC_* environment vars)."""
    import json
    import os

    import faust

    E = os.environ
    PARTS = int(E["CC_PARTITIONS"])
    app = faust.App(
        E["CC_APP_ID"],
        broker="kafka://" + E["CC_BOOTSTRAP"],
        store="rocksdb://",
        datadir=E["CC_DATADIR"],
        processing_guarantee=E["CC_GUARANTEE"],
        topic_partitions=PARTS,
        topic_replication_factor=1,
        table_standby_replicas=0,
        broker_session_timeout=float(E["CC_SESSION_TIMEOUT"]),
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="json",
    )
    source = app.topic(E["CC_SOURCE"], partitions=PARTS, key_serializer="raw", value_serializer="json")
    output = (app.topic(E["CC_OUTPUT"], partitions=PARTS, key_serializer="raw", value_serializer="json")
              if E.get("CC_OUTPUT") else None)
    # key_type=bytes -> Faust picks the "raw" key serializer for the table (json otherwise).
    totals = app.Table("totals", default=int, partitions=PARTS, key_type=bytes, value_type=int)


    @app.agent(source)
    async def process(stream):
        async for key, event in stream.items():
            totals[key] += int(event["n"])
            if output is not None:
                await output.send(key=key, value={"seq": event["seq"], "total": totals[key]})


    if output is not None and E.get("CC_CONSUME_OUTPUT") == "1":
        @app.agent(output)
        async def sink(stream):  # makes the app consume its own output topic (see the EOS check)
            async for _ in stream:
                pass


    @app.timer(0.25)
    async def snapshot():
        # "ready": recovery finished and stream partitions were seeked to their committed offsets.
        state = {
            "ready": app.tables.recovery.completed.is_set(),
            "totals": {k.decode() if isinstance(k, bytes) else str(k): v for k, v in totals.items()},
        }
        tmp = E["CC_STATE"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, E["CC_STATE"])


    if __name__ == "__main__":
        app.main()
''')


class FaustWorker:
    """One `python app.py worker` subprocess in its own session (killed as a group)."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str):
        self.workdir = workdir
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.state_path = Path(env["CC_STATE"])
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.state_path.unlink(missing_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(self.workdir / "cc_faust_app.py"), "worker", "-l",
             os.environ.get("STREAMREC_COMPAT_FAUST_LOGLEVEL", "warn"),
             "--without-web"],
            cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> float:
        """Graceful stop (SIGTERM -> Faust commits and leaves the group); SIGKILL the group if it
        hangs. Returns the seconds the shutdown took."""
        if self.proc is None:
            return 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:  # hung: kill its whole process group (it runs in its own)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()
        return time.monotonic() - t0

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def errors_in_log(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines()
                if any(s in ln for s in ("[ERROR]", "Traceback", "Exception", "CRITICAL"))]

    def wait_state(self, expected: dict, timeout: float) -> float:
        """Wait until the table snapshot equals `expected`; returns the seconds it took."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise CheckFailed(f"Faust worker exited (rc={self.proc.returncode}) before reaching "
                                  f"the expected state; last state {last}\n{self.log_tail()}")
            last = self.state()
            if last is not None and last["ready"] and last["totals"] == expected:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise CheckFailed(f"Faust table state after {timeout:.0f}s: {last}, expected {expected}\n"
                          f"--- worker log tail ---\n{self.log_tail()}")


def _faust_env(bootstrap: str, app_id: str, source: str, workdir: Path, datadir: Path,
               guarantee: str, output: str | None = None,
               consume_output: bool = False) -> dict[str, str]:
    return {
        "CC_CONSUME_OUTPUT": "1" if consume_output else "0",
        "CC_BOOTSTRAP": bootstrap, "CC_APP_ID": app_id, "CC_SOURCE": source,
        "CC_OUTPUT": output or "", "CC_DATADIR": str(datadir), "CC_GUARANTEE": guarantee,
        "CC_STATE": str(workdir / "state.json"), "CC_PARTITIONS": str(FAUST_PARTITIONS),
        "CC_SESSION_TIMEOUT": str(FAUST_SESSION_TIMEOUT_S),
    }


def _produce_events(bootstrap: str, topic: str, events: list[tuple[str, int]], seq0: int = 0):
    """Keyed JSON events; the default partitioner keeps each key on one partition, as Faust's
    table routing requires."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i, (key, n) in enumerate(events):
            producer.send(topic, key=key.encode(),
                          value=json.dumps({"n": n, "seq": seq0 + i}).encode())
        producer.flush(timeout=15)
    finally:
        producer.close(timeout=5)


def _expected_totals(events: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, n in events:
        out[k] = out.get(k, 0) + n
    return out


def _group_committed_total(bootstrap: str, group: str, topic: str) -> int:
    admin = _admin(bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return sum(om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset >= 0)


def _end_offsets_total(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in parts]).values())
    finally:
        consumer.close()


def _make_workdir(prefix: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=f"streamrec-{prefix}-"))
    (workdir / "cc_faust_app.py").write_text(FAUST_APP)
    return workdir


# --------------------------------------------------------- (e) Faust table + changelog recovery

def check_faust_table_recovery(bootstrap: str, keep_temp: bool = False,
                               produce_before_restart: bool = False) -> str:
    """Faust (rocksdb:// via rocksdict) Table: process, stop, delete datadir, restart -> the table
    comes back from the changelog topic Faust created itself (auto.create.topics.enable=false).

    produce_before_restart=True writes the second batch of events *before* the restarted worker
    runs its changelog recovery. With faust-streaming 0.15.3 that intermittently processes the
    batch twice (a Faust race, independent of the broker: see deploy/kafka/README.md), so the
    default writes it once the restarted worker reports that recovery completed."""
    app_id, source = _uid("faust"), _uid("faust-src")
    changelog = f"{app_id}-totals-changelog"
    create_topics(bootstrap, {source: (FAUST_PARTITIONS, {})})  # only the source: Faust makes the rest
    workdir = _make_workdir("faust-table")
    datadir = workdir / "datadir"
    env = _faust_env(bootstrap, app_id, source, workdir, datadir, "at_least_once")
    keys = [f"user-{i}" for i in range(8)]
    phase1 = [(keys[i % len(keys)], i % 5 + 1) for i in range(200)]
    phase2 = [(keys[i % len(keys)], 10) for i in range(16)]
    worker = FaustWorker(workdir, env, "worker1")
    try:
        _produce_events(bootstrap, source, phase1)
        t0 = time.monotonic()
        worker.start()
        t_proc1 = worker.wait_state(_expected_totals(phase1), WORKER_START_TIMEOUT_S)
        errors = worker.errors_in_log()
        _expect(not errors, "worker logged errors:\n" + "\n".join(errors[:10]))
        t_stop1 = worker.stop()
        # The graceful stop must have committed the source offsets; otherwise the restarted worker
        # would re-count the source from scratch and the final check could not tell that from a
        # real changelog recovery.
        committed = _group_committed_total(bootstrap, app_id, source)
        _expect(committed == len(phase1),
                f"group {app_id} committed {committed} source offsets after stop, expected {len(phase1)}")
        tables = list((datadir / "v1" / "tables").glob("totals-*.db"))
        _expect(bool(tables), f"no RocksDB table files under {datadir}/v1/tables")
        # Faust created its internal topics through the admin API.
        cl_parts = topic_partitions(bootstrap, changelog)
        _expect(cl_parts == FAUST_PARTITIONS,
                f"changelog {changelog} has {cl_parts} partitions, expected {FAUST_PARTITIONS}")
        cl_policy = topic_configs(bootstrap, changelog).get("cleanup.policy")
        _expect(cl_policy == "compact", f"changelog cleanup.policy={cl_policy}")
        leader_parts = topic_partitions(bootstrap, f"{app_id}-__assignor-__leader")
        _expect(leader_parts is not None, "Faust did not create its __assignor-__leader topic")
        cl_records = read_all_kafka_python(bootstrap, changelog, len(phase1), timeout=5)
        _expect(len(cl_records) >= len(keys), f"changelog has only {len(cl_records)} records")

        # Lose all local state and restart. The source offsets are committed at the end, so the
        # phase-1 totals can only come back from the changelog. Then new events must be applied
        # on top, exactly once.
        shutil.rmtree(datadir)
        if produce_before_restart:
            _produce_events(bootstrap, source, phase2, seq0=len(phase1))
        worker = FaustWorker(workdir, env, "worker2")
        worker.start()
        if produce_before_restart:
            t_recover = 0.0
        else:
            t_recover = worker.wait_state(_expected_totals(phase1), WORKER_START_TIMEOUT_S)
            _expect(bool(list((datadir / "v1" / "tables").glob("totals-*.db"))),
                    "restarted worker has no RocksDB table files")
            _produce_events(bootstrap, source, phase2, seq0=len(phase1))
        t_proc2 = worker.wait_state(_expected_totals(phase1 + phase2), WORKER_START_TIMEOUT_S)
        errors = worker.errors_in_log()
        _expect(not errors, "restarted worker logged errors:\n" + "\n".join(errors[:10]))
        t_stop2 = worker.stop()
        total = time.monotonic() - t0
        return (f"200 events -> table via rocksdict ({t_proc1:.1f}s from worker start); Faust created "
                f"{changelog} ({cl_parts} partitions, compact, {len(cl_records)} records) and the "
                f"assignor topic; source offsets committed on SIGTERM ({committed}); after deleting "
                f"the datadir the restarted worker recovered the table from the changelog "
                f"({t_recover:.1f}s from start) and applied 16 new events exactly once "
                f"({t_proc2:.1f}s); stops {t_stop1:.1f}s/"
                f"{t_stop2:.1f}s; total {total:.1f}s")
    finally:
        worker.stop()
        if not keep_temp:
            shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------- (f1) transactions

async def _transactions(bootstrap: str, topic: str) -> tuple[list, list]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=_uid("txn-id"),
                                enable_idempotence=True, acks="all")
    await producer.start()
    try:
        async with producer.transaction():          # committed
            for v in (b"c1", b"c2", b"c3"):
                await producer.send(topic, key=b"k", value=v)
        await producer.begin_transaction()          # aborted
        for v in (b"x1", b"x2"):
            await producer.send(topic, key=b"k", value=v)
        await producer.abort_transaction()
        await producer.begin_transaction()          # committed
        await producer.send(topic, key=b"k", value=b"c4")
        await producer.commit_transaction()
    finally:
        await producer.stop()
    committed = await _aio_read(bootstrap, topic, 4, isolation_level="read_committed", settle=1.0)
    uncommitted = await _aio_read(bootstrap, topic, 6, isolation_level="read_uncommitted", settle=0.5)
    return committed, uncommitted


def check_transactions(bootstrap: str) -> str:
    """aiokafka transactional producer: commit, abort, commit; read_committed hides the aborted."""
    topic = _uid("txn")
    create_topics(bootstrap, {topic: (1, {})})
    committed, uncommitted = asyncio.run(_transactions(bootstrap, topic))
    got = [r.value for r in committed]
    _expect(got == [b"c1", b"c2", b"c3", b"c4"], f"read_committed consumer saw {got}")
    raw = [r.value for r in uncommitted]
    _expect(raw == [b"c1", b"c2", b"c3", b"x1", b"x2", b"c4"], f"read_uncommitted consumer saw {raw}")
    return ("InitProducerId/AddPartitionsToTxn/EndTxn v0 accepted; read_committed saw c1..c4 only, "
            "read_uncommitted also the 2 aborted records")


# -------------------------------------------------------------------- (f2) Faust exactly-once

def check_faust_exactly_once(bootstrap: str, keep_temp: bool = False,
                             consume_output: bool = True) -> str:
    """Faust processing_guarantee='exactly_once' starts and processes events into a Table and an
    output topic inside Kafka transactions; read_committed sees every output exactly once."""
    app_id, source, output = _uid("faust-eos"), _uid("eos-src"), _uid("eos-out")
    changelog = f"{app_id}-totals-changelog"
    create_topics(bootstrap, {source: (FAUST_PARTITIONS, {}), output: (FAUST_PARTITIONS, {})})
    workdir = _make_workdir("faust-eos")
    env = _faust_env(bootstrap, app_id, source, workdir, workdir / "datadir", "exactly_once",
                     output=output, consume_output=consume_output)
    keys = [f"user-{i}" for i in range(6)]
    events = [(keys[i % len(keys)], 1 + i % 3) for i in range(120)]
    worker = FaustWorker(workdir, env, "worker-eos")
    try:
        _produce_events(bootstrap, source, events)
        worker.start()
        t_proc = worker.wait_state(_expected_totals(events), WORKER_START_TIMEOUT_S)
        outs = asyncio.run(_aio_read(bootstrap, output, len(events), timeout=10,
                                     isolation_level="read_committed", settle=1.0))
        seqs = sorted(json.loads(r.value)["seq"] for r in outs)
        _expect(seqs == list(range(len(events))),
                f"read_committed output has {len(seqs)} records (expected each of {len(events)} once)"
                f"; duplicates={len(seqs) - len(set(seqs))}\n{worker.log_tail()}")
        finals: dict[str, int] = {}
        for r in sorted(outs, key=lambda r: json.loads(r.value)["seq"]):
            finals[r.key.decode()] = json.loads(r.value)["total"]
        _expect(finals == _expected_totals(events), f"final totals in output {finals}")
        errors = worker.errors_in_log()
        _expect(not errors, "worker logged errors:\n" + "\n".join(errors[:10]))
        t_stop = worker.stop()
        # Transactional writes leave commit markers (control records) in a partition: its end
        # offset exceeds its record count. That proves the writes really went through transactions.
        cl_records = read_all_kafka_python(bootstrap, changelog, len(events), timeout=5)
        cl_markers = _end_offsets_total(bootstrap, changelog) - len(cl_records)
        out_markers = _end_offsets_total(bootstrap, output) - len(outs)
        _expect(cl_markers > 0, f"no transaction markers in {changelog}: table writes not transactional")
        if consume_output:
            _expect(out_markers > 0, "no transaction markers in the output topic: sends not transactional")
        committed = _group_committed_total(bootstrap, app_id, source)
        _expect(committed == len(events),
                f"source offsets committed (TxnOffsetCommit) = {committed}, expected {len(events)}")
        return (f"exactly_once worker processed {len(events)} events ({t_proc:.1f}s from start); "
                f"read_committed output: each event once, totals correct; transaction markers: "
                f"changelog {cl_markers}, output {out_markers}"
                f"{'' if consume_output else ' (output topic not consumed by the app)'}; "
                f"source offsets committed in the transactions: {committed}; clean stop {t_stop:.1f}s")
    finally:
        worker.stop()
        if not keep_temp:
            shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- main

CHECKS: list[tuple[str, str, Callable[[str], str]]] = [
    ("protocol", "0", check_protocol),
    ("kafka_python", "a", check_kafka_python),
    ("aiokafka", "b", check_aiokafka),
    ("consumer_group", "c", check_consumer_group),
    ("compacted_topic", "d", check_compacted_topic),
    ("faust_table_recovery", "e", check_faust_table_recovery),
    ("transactions", "f1", check_transactions),
    ("faust_exactly_once", "f2", check_faust_exactly_once),
]


def run_checks(bootstrap: str, names: list[str] | None = None, verbose: bool = False,
               keep_temp: bool = False, out=sys.stdout) -> dict[str, tuple[bool, str, float]]:
    results: dict[str, tuple[bool, str, float]] = {}
    for name, label, fn in CHECKS:
        if names and name not in names:
            continue
        t0 = time.monotonic()
        try:
            if keep_temp and "keep_temp" in inspect.signature(fn).parameters:
                detail = fn(bootstrap, keep_temp=True)
            else:
                detail = fn(bootstrap)
            ok = True
        except Exception as e:  # report every failure, keep going
            ok = False
            detail = f"{type(e).__name__}: {e}"
            if verbose or not isinstance(e, CheckFailed):
                detail += "\n" + traceback.format_exc()
        dt = time.monotonic() - t0
        results[name] = (ok, detail, dt)
        print(f"{'PASS' if ok else 'FAIL'} ({label}) {name} [{dt:.1f}s]: {detail}", file=out, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("STREAMREC_KAFKA_BOOTSTRAP",
                                                              DEFAULT_BOOTSTRAP))
    parser.add_argument("--only", help="comma-separated check names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks for every failure")
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep the Faust work dirs (/tmp/streamrec-faust-*: app, logs, datadir)")
    args = parser.parse_args(argv)
    if args.list:
        for name, label, fn in CHECKS:
            print(f"{label:>2} {name:22} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if not args.verbose:
        # aiokafka logs benign retries (e.g. NotLeaderForPartition right after a topic is created).
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
    names = [n.strip() for n in args.only.split(",")] if args.only else None
    unknown = set(names or []) - {n for n, _, _ in CHECKS}
    if unknown:
        parser.error(f"unknown checks: {sorted(unknown)}")
    if not broker_reachable(args.bootstrap):
        print(f"FAIL: nothing listens on {args.bootstrap} (start it: deploy/kafka/kafka.sh start && "
              f"deploy/kafka/kafka.sh wait)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    results = run_checks(args.bootstrap, names, verbose=args.verbose, keep_temp=args.keep_temp)
    failed = [n for n, (ok, _, _) in results.items() if not ok]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed against {args.bootstrap} "
          f"in {time.monotonic() - t0:.1f}s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
