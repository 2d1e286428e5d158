"""What a user does with `docker compose --profile cpu up`: from the host, produce events to the compose Kafka's host
port with a plain Kafka client, read `recommendations`, look users up over HTTP; restart the worker; train, export
and serve a model; and the gpu profile's configuration (it cannot run here). Run by scripts/compose-test.sh, in this
order (later tests change the stack: restart, model)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1200)]

SCHEMAS = Path(__file__).resolve().parents[2] / "topics" / "schemas"
RUN = uuid.uuid4().hex[:6]   # this run's users and events: reruns against a kept broker never mix


def validator(name: str):
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def interaction(user: str, item: str, n: int, event_id: str | None = None) -> dict:
    return {"schema_version": 1, "event_id": event_id or f"{user}-{n}", "user_id": user, "item_id": item,
            "event_type": "view", "timestamp": 1_700_000_000 + n}


class Subscriber:
    """A consumer of one topic from its current end: it sees only what is produced after it was made."""

    def __init__(self, bootstrap: str, topic: str):
        self.c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                               consumer_timeout_ms=500)
        parts = [TopicPartition(topic, p) for p in sorted(self.c.partitions_for_topic(topic) or ())]
        assert parts, f"topic {topic} does not exist on the compose broker"
        self.c.assign(parts)
        self.c.seek_to_end(*parts)
        for p in parts:
            self.c.position(p)   # resolve the end offsets now, before anything is produced

    def read_until(self, done, timeout: float, what: str, logs) -> list:
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += [(r.key, r.value) for r in self.c]
            if done(got):
                return got
        raise AssertionError(f"{what}: not complete after {timeout:.0f} s; read {len(got)}: {got[-3:]!r}\n{logs()}")

    def close(self):
        self.c.close()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            p.send(topic, key=key, value=value)
        p.flush(30)
    finally:
        p.close()


def send_events(compose, events: list[dict], timeout: float = 120) -> dict[str, dict]:
    """Produce ``events`` keyed by user; return the recommendation answering each one, by event id."""
    sub = Subscriber(compose.bootstrap, "recommendations")
    try:
        produce(compose.bootstrap, "interactions", [(e["user_id"].encode(), json.dumps(e).encode()) for e in events])
        want = {e["event_id"] for e in events}
        records = sub.read_until(lambda rs: want <= {json.loads(v)["trigger_event_id"] for _, v in rs}, timeout,
                                 "recommendations", lambda: compose.logs("worker-cpu"))
    finally:
        sub.close()
    schema = validator("recommendation.schema.json")
    answers = {}
    for key, value in records:
        msg = json.loads(value)
        schema.validate(msg)
        assert key.decode() == msg["user_id"]
        answers[msg["trigger_event_id"]] = msg
    return answers


# --- the gpu profile: configuration only (no CUDA base image or GPU here) --------------------------------------

def test_gpu_profile_configuration(compose):
    cfg = json.loads(compose.run("--profile", "cpu", "--profile", "gpu", "config", "--format", "json").stdout)
    gpu = cfg["services"]["worker-gpu"]
    assert gpu["image"].startswith("streamrec-gpu:") and gpu["build"]["target"] == "gpu"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["STREAMREC_BACKEND"].startswith("cuda-")
    assert [p["published"] for p in gpu["ports"]] == [os.environ["WORKER_GPU_HTTP_PORT"]]
    assert {v["target"]: v.get("read_only", False) for v in gpu["volumes"]} == \
        {"/var/lib/streamrec": False, "/models": True}
    assert gpu["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    # the same settings as the CPU worker, apart from the backend and the advertised host
    cpu = cfg["services"]["worker-cpu"]
    differ = {k for k in set(cpu["environment"]) | set(gpu["environment"])
              if cpu["environment"].get(k) != gpu["environment"].get(k)}
    assert differ == {"STREAMREC_BACKEND", "STREAMREC_WEB_ADVERTISED_HOST"}


# --- the users' scenario ----------------------------------------------------------------------------------------

USERS = [f"host-{RUN}-{u}" for u in range(8)]
ITEMS = [f"sku-{i}" for i in range(12)]


def test_every_event_from_the_host_is_answered_with_a_valid_recommendation(compose):
    events = [interaction(u, ITEMS[(3 * j + n) % len(ITEMS)], n) for j, u in enumerate(USERS) for n in range(3)]
    answers = send_events(compose, events)
    assert set(answers) >= {e["event_id"] for e in events}
    for e in events:
        msg = answers[e["event_id"]]
        assert msg["user_id"] == e["user_id"] and not msg.get("redelivered")
        seen = {x["item_id"] for x in events if x["user_id"] == e["user_id"] and x["timestamp"] <= e["timestamp"]}
        assert not seen & {it["item_id"] for it in msg["items"]}, "a seen item was recommended"


def test_a_malformed_event_goes_to_the_dead_letter_topic(compose):
    sub = Subscriber(compose.bootstrap, "interactions-dlq")
    try:
        produce(compose.bootstrap, "interactions", [(b"host-bad", b"{not json")])
        [(_, value)] = sub.read_until(lambda rs: len(rs) >= 1, 60, "interactions-dlq",
                                      lambda: compose.logs("worker-cpu"))
    finally:
        sub.close()
    dead = json.loads(value)
    validator("dead_letter.schema.json").validate(dead)
    assert dead["error"] == "not_json" and dead["source_topic"] == "interactions", dead


def test_users_are_looked_up_over_http(compose):
    status, body = compose.get(f"/recommendations/{USERS[0]}")
    assert status == 200, body
    validator("recommendation.schema.json").validate(body)
    assert body["user_id"] == USERS[0]
    assert compose.get(f"/recommendations/nobody-{RUN}")[0] == 404


def test_a_restarted_worker_keeps_its_state(compose):
    """`docker compose restart worker-cpu` (SIGTERM, same container and state volume): the users' state is still
    there. Proof: an event it saw before the restart comes again and is recognised as a redelivery."""
    compose.run("restart", "worker-cpu", timeout=180)
    compose.wait_ready()
    user = USERS[1]
    again = interaction(user, "whatever", 0, event_id=f"{user}-0")   # the same event id as before the restart
    fresh = interaction(user, ITEMS[0], 99)
    answers = send_events(compose, [again, fresh])
    assert answers[again["event_id"]].get("redelivered"), "the state from before the restart is gone"
    assert not answers[fresh["event_id"]].get("redelivered")
    status, body = compose.get(f"/recommendations/{user}")
    if status == 500:
        pytest.xfail(f"known bug (issue 10, being fixed in stream/app.py): lookup after a restart is HTTP 500: "
                     f"{body}")
    assert status == 200, body
    validator("recommendation.schema.json").validate(body)


# --- train -> export -> the cpu worker serves the model (ONNX Runtime, no torch in its image) -------------------

@pytest.mark.skipif(os.environ.get("STREAMREC_COMPOSE_MODEL", "1") == "0", reason="STREAMREC_COMPOSE_MODEL=0")
def test_train_export_and_serve_a_model_without_torch(compose):
    compose.run("--profile", "train", "run", "--rm", "export", timeout=1500)
    compose.run("--profile", "cpu", "up", "-d", "--no-build", "worker-cpu", env={"STREAMREC_MODEL_DIR": "/models/demo"},
                timeout=180)
    compose.wait_ready(300)
    probe = ("import importlib.util as u, json; from streamrec.config import Settings; "
             "print(json.dumps({'torch': bool(u.find_spec('torch')), 'model_dir': Settings.from_env().model_dir, "
             "'vocab': json.load(open('/models/demo/model/vocab.json'))['items']}))")
    info = json.loads(compose.run("exec", "-T", "worker-cpu", "python", "-c", probe).stdout.strip().splitlines()[-1])
    assert not info["torch"], "the cpu image has torch installed"
    assert info["model_dir"] == "/models/demo"
    vocab = info["vocab"]

    # cold start: a new catalog item is embedded by the exported ONNX title encoder (the image has no torch)
    new_item = f"new-{RUN}"
    record = {"schema_version": 1, "item_id": new_item, "title": "Rose lip balm with shea butter"}
    produce(compose.bootstrap, "items", [(new_item.encode(), json.dumps(record).encode())])
    user = f"model-{RUN}"
    events = [interaction(user, vocab[n % len(vocab)], n) for n in range(3)]
    events.append(interaction(user, new_item, 3))
    answers = send_events(compose, events, timeout=180)
    for e in events:
        scorer = answers[e["event_id"]]["scorer"]
        assert scorer["name"] == "itemlm" and not scorer["fallback"], scorer
    logs = compose.logs("worker-cpu", 400)
    assert "cold start: 1 item(s) added" in logs, logs[-3000:]
    status, body = compose.get(f"/recommendations/{user}")
    assert status == 200 and body["scorer"]["name"] == "itemlm", body
