"""Integration: a real Kafka broker works with the project's Kafka clients.

Runs the checks of deploy/kafka/compat_check.py (kafka-python, aiokafka, consumer groups, compacted
topics, Faust RocksDB tables with changelog recovery, transactions, Faust exactly-once) against the
broker at STREAMREC_KAFKA_BOOTSTRAP (default 127.0.0.1:9092). Start a local one with:

    deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait
    STREAMREC_KAFKA_BOOTSTRAP=127.0.0.1:9092 pytest -m integration tests/integration/test_kafka_compat.py

Every check uses fresh topic, group and Faust app names, so reruns against the same broker work.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_PATH = REPO_ROOT / "deploy" / "kafka" / "compat_check.py"


def _load_compat_check():
    name = "streamrec_deploy_kafka_compat_check"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CHECK_PATH)
    assert spec is not None and spec.loader is not None, f"cannot load {CHECK_PATH}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cc = _load_compat_check()

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def bootstrap() -> str:
    from_env = os.environ.get("STREAMREC_KAFKA_BOOTSTRAP")
    address = from_env or cc.DEFAULT_BOOTSTRAP
    if not cc.broker_reachable(address):
        if not from_env:
            pytest.skip(f"no Kafka broker: STREAMREC_KAFKA_BOOTSTRAP is unset and nothing listens on "
                        f"{address} (start one: deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait)")
        pytest.fail(f"STREAMREC_KAFKA_BOOTSTRAP={from_env} but nothing accepts connections there")
    pytest.importorskip("kafka", reason="kafka-python is not installed")
    pytest.importorskip("aiokafka", reason="aiokafka is not installed")
    return address


@pytest.fixture
def faust_available() -> None:
    pytest.importorskip("faust", reason="faust-streaming is not installed")
    pytest.importorskip("rocksdict", reason="rocksdict is not installed")


def test_protocol_versions_overlap(bootstrap: str) -> None:
    """(0) every request aiokafka needs has a version the broker still accepts (KIP-896)."""
    print(cc.check_protocol(bootstrap))


def test_kafka_python_produce_consume(bootstrap: str) -> None:
    """(a) kafka-python produce/consume with a group and commit."""
    print(cc.check_kafka_python(bootstrap))


def test_aiokafka_produce_consume(bootstrap: str) -> None:
    """(b) aiokafka idempotent producer and consumer."""
    print(cc.check_aiokafka(bootstrap))


def test_consumer_group_resumes_from_committed_offset(bootstrap: str) -> None:
    """(c) group join, commit, leave; a new member resumes from the committed offsets."""
    print(cc.check_consumer_group(bootstrap))


def test_compacted_topic(bootstrap: str) -> None:
    """(d) cleanup.policy=compact topic created via kafka-python admin and read back."""
    print(cc.check_compacted_topic(bootstrap))


def test_faust_table_recovers_from_changelog(bootstrap: str, faust_available: None) -> None:
    """(e) Faust rocksdb:// table survives losing its datadir (recovered from the changelog)."""
    print(cc.check_faust_table_recovery(bootstrap))


def test_transactions_read_committed(bootstrap: str) -> None:
    """(f1) aiokafka transactions: aborted records invisible to read_committed consumers."""
    print(cc.check_transactions(bootstrap))


def test_faust_exactly_once(bootstrap: str, faust_available: None) -> None:
    """(f2) Faust processing_guarantee='exactly_once' processes events inside transactions."""
    print(cc.check_faust_exactly_once(bootstrap))
