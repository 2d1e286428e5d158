"""streamrec against a broker that requires TLS, SASL/SCRAM-SHA-512 and ACLs (deploy/kafka/kafka.sh sasl_ssl mode).

One secured broker for the module, in its own run dir, on STREAMREC_TEST_SECURE_KAFKA_PORT (it also takes the next
two ports; default: three free consecutive ports). Each principal gets exactly the grants of its role
(``streamrec acls apply``): ``streamrec`` the worker's, ``client`` the producer's and reader's, ``ops`` the topics
Job's; ``nobody`` has a password and no ACL at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamrec.config import Settings
from streamrec.stream import acls, topics

from .conftest import REPO_ROOT, Stack, event, free_port_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

USERS = ("streamrec", "client", "ops", "nobody")
T0 = 1_700_000_000.0


@dataclass
class SecureBroker:
    port: int
    run_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def anonymous_bootstrap(self) -> str:   # the credential-less PLAINTEXT listener
        return f"127.0.0.1:{self.port + 2}"

    @property
    def ca(self) -> Path:
        return self.run_dir / "tls" / "ca.crt"

    def password_file(self, user: str) -> Path:
        return self.run_dir / "secrets" / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def env(self, user: str) -> dict[str, str]:
        """A principal's client settings, as a deployment passes them: the password in a mounted file."""
        return {"STREAMREC_KAFKA_BOOTSTRAP": self.bootstrap, "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "STREAMREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "STREAMREC_KAFKA_SASL_USERNAME": user,
                "STREAMREC_KAFKA_SASL_PASSWORD_FILE": str(self.password_file(user)),
                "STREAMREC_KAFKA_SSL_CAFILE": str(self.ca)}

    def all_passwords(self) -> list[str]:
        return [self.password(u) for u in ("admin", *USERS)]


def _kafka_sh(env: dict[str, str], *args: str) -> None:
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "kafka" / "kafka.sh"), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180)


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> SecureBroker:
    if not os.environ.get("STREAMREC_KAFKA_BOOTSTRAP"):
        pytest.skip("integration tests run under scripts/test.sh (STREAMREC_KAFKA_BOOTSTRAP is not set)")
    for tool in ("java", "openssl"):
        if not shutil.which(tool):
            pytest.skip(f"the secured broker needs {tool}")
    port = int(os.environ.get("STREAMREC_TEST_SECURE_KAFKA_PORT") or free_port_run(3))
    # Under the checkout, not pytest's tmp: other pytest sessions of the same user prune old tmp dirs.
    run_dir = REPO_ROOT / "var" / "test-kafka-secure"
    env = {**os.environ, "STREAMREC_KAFKA_PORT": str(port), "STREAMREC_KAFKA_RUN_DIR": str(run_dir),
           "STREAMREC_KAFKA_SECURITY": "sasl_ssl", "STREAMREC_KAFKA_USERS": " ".join(USERS),
           "STREAMREC_PYTHON": sys.executable}
    _kafka_sh(env, "reset")
    _kafka_sh(env, "start")
    try:
        _kafka_sh(env, "wait", "90")
        yield SecureBroker(port, run_dir)
    finally:
        _kafka_sh(env, "stop")


def admin_settings(broker: SecureBroker, **kw) -> Settings:
    return Settings.from_env(broker.env("admin"), **kw)


def _secure_stack(broker, tmp_path):
    """Own names; the app id is not a prefix of the topic prefix, so the worker's prefixed grants (changelogs,
    transactional ids) cannot cover the data topics."""
    s = Stack(broker.bootstrap, tmp_path)
    s.extra_env = {**broker.env("client"), "STREAMREC_TOPIC_PREFIX": f"sec-{s.name}-",
                   "STREAMREC_APP_ID": f"secapp-{s.name}"}
    names = dict(topic_prefix=f"sec-{s.name}-", app_id=f"secapp-{s.name}")
    admin = admin_settings(broker, **names)
    for user, roles in (("streamrec", ["worker"]), ("client", ["producer", "reader"]), ("ops", ["topics"])):
        acls.apply(admin, f"User:{user}", roles)
    return s


@pytest.fixture
def secure_stack(broker, tmp_path):
    s = _secure_stack(broker, tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def applied_stack(broker, tmp_path_factory):
    """One set of topics and grants for the tests that only try to connect (they write nothing)."""
    s = _secure_stack(broker, tmp_path_factory.mktemp("applied"))
    report = topics.apply(admin_settings(broker, topic_prefix=s.settings.topic_prefix, app_id=s.settings.app_id))
    assert not report.drift, report.drift
    return s


def cli(args: list[str], env: dict[str, str], timeout: float = 60.0) -> tuple[int, str, float]:
    """Run ``streamrec ARGS`` with only these STREAMREC_* settings; (exit code, stdout+stderr, seconds)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    full.update(env)
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "streamrec", *args], env=full, cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t


def test_worker_topics_replay_and_tail_end_to_end_over_sasl_ssl(broker, secure_stack, tmp_path):
    s = secure_stack
    ops_env = {**s.env, **broker.env("ops")}
    rc, out, _ = cli(["topics", "apply"], ops_env)
    assert rc == 0, out
    assert out.count("created") == 7, out
    rc, out, _ = cli(["topics", "check"], ops_env)
    assert rc == 0 and out.count("ok ") == 7, out

    worker = s.worker(**broker.env("streamrec"))
    evs = [event(f"u{u}", item, T0 + 10 * u + i) for u in range(5) for i, item in enumerate("abc")]
    data = tmp_path / "events.jsonl"
    data.write_text("".join(e.to_bytes().decode() + "\n" for e in evs))
    rc, out, _ = cli(["replay", str(data), "--format", "jsonl", "--quiet"], s.env)
    assert rc == 0 and f"replayed {len(evs)} events" in out, out
    s.produce(s.topic("interactions"), [(b"u0", b"{not json, and the password is not in here")])

    rc, out, _ = cli(["tail", "--from-beginning", "--json", "--max-messages", str(len(evs)), "--timeout", "60"],
                     s.env, timeout=120)
    assert rc == 0, out
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {m["trigger_event_id"] for m in recs} == {e.event_id for e in evs}
    rc, out, _ = cli(["tail", "--dead-letters", "--from-beginning", "--json", "--max-messages", "1",
                      "--timeout", "60"], s.env, timeout=120)
    assert rc == 0 and '"error"' in out, out
    dead_letter = out

    # Secrets: nowhere in what the worker logs or serves, nor in a dead letter, nor in --help.
    pages = "".join(urllib.request.urlopen(worker.url + p, timeout=10).read().decode()
                    for p in ("/metrics", "/health", "/ready", "/recommendations/u1"))
    rc, help_text, _ = cli(["worker", "--help"], {**s.env, **broker.env("streamrec"),
                                                  "STREAMREC_KAFKA_SASL_PASSWORD_FILE": "",
                                                  "STREAMREC_KAFKA_SASL_PASSWORD": broker.password("streamrec")})
    assert rc == 0 and "STREAMREC_KAFKA_SASL_PASSWORD_FILE" in help_text
    worker.stop()
    log = worker.log_path.read_text()
    assert "streamrec_events_total" in pages or "# HELP" in pages
    assert '"kafka_sasl_password": "***"' in log     # the settings line is there, masked
    for secret in broker.all_passwords():
        for where, text in (("worker log", log), ("web pages", pages), ("dead letter", dead_letter),
                            ("--help", help_text)):
            assert secret not in text, f"a password appears in the {where}"


@pytest.mark.parametrize("case", ["wrong password", "unknown user", "untrusted CA", "no ACL", "partial ACL"])
@pytest.mark.parametrize("command", ["worker", "topics", "replay", "tail"])
def test_misconfiguration_fails_fast_naming_the_cause(broker, applied_stack, tmp_path, case, command):
    s = applied_stack
    user = {"worker": "streamrec", "topics": "ops"}.get(command, "client")
    env = {**s.env, **broker.env(user), "STREAMREC_DATA_DIR": str(tmp_path / "state"), "STREAMREC_WEB_PORT": "0"}
    if case == "wrong password":
        env.pop("STREAMREC_KAFKA_SASL_PASSWORD_FILE")
        env["STREAMREC_KAFKA_SASL_PASSWORD"] = "not-" + broker.password(user)
        expect = f"refused the credentials of user '{user}'"
    elif case == "unknown user":
        env["STREAMREC_KAFKA_SASL_USERNAME"] = "mallory"
        expect = "refused the credentials of user 'mallory'"
    elif case == "untrusted CA":
        other = tmp_path / "other-ca.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                        "-out", str(other), "-days", "1", "-subj", "/CN=some other CA"], check=True,
                       capture_output=True)
        env["STREAMREC_KAFKA_SSL_CAFILE"] = str(other)
        expect = "certificate of the broker at"
    elif case == "no ACL":
        env.update(broker.env("nobody"))
        expect = ("user 'nobody' (SCRAM-SHA-512) is not allowed to describe or create" if command == "topics" else
                  "user 'nobody' (SCRAM-SHA-512) may not use topic")
    else:   # partial: a real principal with the grants of another role
        other = {"worker": "client", "topics": "client", "replay": "ops", "tail": "streamrec"}[command]
        env.update(broker.env(other))
        expect = {"worker": "lacks READ on topic", "topics": "is not allowed to describe or create",
                  "replay": "lacks WRITE on topic", "tail": "lacks READ on topic"}[command]
    data = tmp_path / "one.jsonl"
    data.write_text(event("u", "i", T0).to_bytes().decode() + "\n")
    args = {"worker": ["worker"], "topics": ["topics", "check"], "tail": ["tail", "--timeout", "5"],
            "replay": ["replay", str(data), "--format", "jsonl", "--quiet"]}[command]
    rc, out, took = cli(args, env, timeout=60)
    assert rc == 78, (rc, out)
    assert took < 20, f"took {took:.1f} s"
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"streamrec {args[0]}: ") and expect in last, out
    assert "Traceback" not in out and len(out.splitlines()) <= 3, out     # one line (the worker adds its settings)
    for secret in broker.all_passwords():
        assert secret not in out


def test_client_without_credentials_cannot_read_recommendations(broker, secure_stack):
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError
    s = secure_stack
    rc, out, _ = cli(["topics", "apply"], {**s.env, **broker.env("ops")})
    assert rc == 0, out
    topic = s.topic("recommendations")
    Stack(broker.bootstrap, s.tmp, extra_env=broker.env("admin")).produce(topic, [(b"u", b'{"secret": "rec"}')])
    assert s.consume(topic, lambda rs: len(rs) == 1)   # the client principal (reader role) can

    # No credentials at all, on the credential-less listener: authenticated as ANONYMOUS, which no ACL allows.
    c = KafkaConsumer(topic, bootstrap_servers=broker.anonymous_bootstrap, auto_offset_reset="earliest",
                      group_id=None, consumer_timeout_ms=3000)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert not c.poll(timeout_ms=500), "an unauthenticated client read recommendations"
    finally:
        c.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.anonymous_bootstrap)
    try:
        assert [t["error_code"] for t in admin.describe_topics([topic])] == [29]   # TOPIC_AUTHORIZATION_FAILED
    finally:
        admin.close()
    # TLS without SASL on the SASL_SSL listener: the broker closes the connection before any request.
    with pytest.raises(KafkaError):
        KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, security_protocol="SSL", ssl_cafile=str(broker.ca),
                      auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=3000,
                      request_timeout_ms=5000, api_version_auto_timeout_ms=5000).poll(timeout_ms=3000)
    # And the streamrec CLI says so at once.
    env = {**s.env, "STREAMREC_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "STREAMREC_KAFKA_SASL_USERNAME": "",
           "STREAMREC_KAFKA_SASL_PASSWORD_FILE": ""}
    rc, out, took = cli(["tail", "--timeout", "5"], env)
    assert rc == 69 and took < 20 and "cannot reach Kafka" in out, out


def test_exactly_once_worker_needs_no_more_than_its_grants(broker, secure_stack):
    """Transactions (InitProducerId, AddPartitionsToTxn, TxnOffsetCommit) with only the worker role's grants:
    Write on its transactional-id prefix and Read on its group, no cluster ACL."""
    s = secure_stack
    report = topics.apply(admin_settings(broker, topic_prefix=s.settings.topic_prefix, app_id=s.settings.app_id))
    assert not report.drift
    s.worker(**broker.env("streamrec"), STREAMREC_PROCESSING_GUARANTEE="exactly_once")
    evs = [event(f"x{u}", item, T0 + 10 * u + i) for u in range(4) for i, item in enumerate("abcde")]
    s.produce_events(evs)
    recs = s.consume(s.topic("recommendations"), lambda rs: len(rs) >= len(evs), read_committed=True)
    assert {m["trigger_event_id"] for _, m in recs} == {e.event_id for e in evs}
    as_admin = Stack(broker.bootstrap, s.tmp, name=s.name, extra_env={**s.extra_env, **broker.env("admin")})
    states = as_admin.changelog_states(lambda st: len(st) == 4 and all(x["total"] == 5 for x in st.values()),
                                       read_committed=True)
    assert all(x["total"] == 5 for x in states.values())
