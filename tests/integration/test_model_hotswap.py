"""Model hot-swap on the real broker: a worker serving version v1 under a live stream picks up v2 when it is dropped
into the model directory, without a restart and without losing or doubling an answer; a corrupt v3 is refused
while v2 keeps serving; writing v1 to CURRENT rolls back."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request

import pytest

from streamrec.model.datasets import synthetic

from .conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def train_tiny(out, seed: int) -> str:
    from streamrec.model.train import TrainConfig, train
    seqs = synthetic(n_users=150, n_items=40, length=12, seed=seed)
    cfg = TrainConfig(hidden_size=16, num_layers=1, num_heads=1, max_len=12, epochs=2, patience=2, batch_size=64,
                      num_threads=1, seed=seed)
    return train(cfg, seqs, out, progress=False, dataset_name="synthetic")["version"]


def metrics_text(worker) -> str:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{re.escape('{' + lab + '}') if lab else ''} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_metric(worker, name: str, value: float, timeout: float = 180, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.assert_alive()
        if sample(metrics_text(worker), name, **labels) >= value:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name}{labels} did not reach {value} in {timeout} s; log:\n{worker.tail()}")


def test_versions_switch_under_a_live_stream(stack, tmp_path):
    root, staging = tmp_path / "models", tmp_path / "staging"
    v1 = train_tiny(root / "v1", seed=3)
    v2 = train_tiny(staging / "v2", seed=4)
    assert v1 != v2
    worker = stack.worker(STREAMREC_MODEL_DIR=str(root), STREAMREC_MODEL_WATCH_S="1", STREAMREC_BACKEND="onnx-int8",
                          STREAMREC_SCORER_THREADS="1", STREAMREC_SCORER_TIMEOUT_S="20")
    users = [f"u{i}" for i in range(30)]
    items = [str(i) for i in range(1, 41)]
    produced: list = []

    def produce(n: int) -> None:
        evs = [event(users[(len(produced) + j) % len(users)], items[(len(produced) + 7 * j) % len(items)],
                     1_700_000_000 + len(produced) + j, n=len(produced) + j) for j in range(n)]
        produced.extend(evs)
        stack.produce_events(evs)

    def answered(n: int):
        return stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= n, timeout=180)

    produce(60)
    assert {m["scorer"]["version"] for _, m in answered(60) if not m["scorer"]["fallback"]} == {v1}

    # v2 dropped in (an atomic rename) while events keep arriving
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set() and len(produced) < 600:
            produce(10)
            time.sleep(0.3)

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        time.sleep(1)
        os.rename(staging / "v2", root / "v2")
        wait_metric(worker, "streamrec_model_swaps_total", 1)
        time.sleep(2)   # a few more batches after the swap
    finally:
        stop.set()
        feeder.join()
    recs = answered(len(produced))
    triggers = [m["trigger_event_id"] for _, m in recs]
    assert sorted(triggers) == sorted(e.event_id for e in produced)   # every event answered exactly once
    last_version: dict[str, str] = {}
    for _, m in recs:   # per user (one partition, in order): once v2 answers, v1 never again
        if m["scorer"]["fallback"]:
            continue
        assert not (last_version.get(m["user_id"]) == v2 and m["scorer"]["version"] == v1), m
        last_version[m["user_id"]] = m["scorer"]["version"]
    versions = [m["scorer"]["version"] for _, m in recs if not m["scorer"]["fallback"]]
    assert set(versions) == {v1, v2} and versions.count(v2) >= 10, (versions.count(v1), versions.count(v2))
    text = metrics_text(worker)
    assert sample(text, "streamrec_model_version_info", version=v2) == 1
    assert sample(text, "streamrec_model_version_info", version=v1) == 0
    print(f"live swap: {len(produced)} events, {len(recs)} answers, v1 {versions.count(v1)}, "
          f"v2 {versions.count(v2)}, fallback {len(recs) - len(versions)}")

    # a corrupt v3 (newest) is refused; v2 keeps serving
    (root / "v3").mkdir()
    (root / "v3" / "config.json").write_text("{not json")
    wait_metric(worker, "streamrec_model_refusals_total", 1, reason="load")
    n = len(produced)
    produce(60)
    recs = answered(len(produced))
    new = [m for _, m in recs if m["trigger_event_id"] in {e.event_id for e in produced[n:]}]
    assert len(new) == 60 and {m["scorer"]["version"] for m in new if not m["scorer"]["fallback"]} == {v2}
    assert "model version" in worker.tail(200) and "refused (load)" in worker.tail(200)

    # roll back: CURRENT names v1
    (root / "CURRENT").write_text("v1\n")
    wait_metric(worker, "streamrec_model_swaps_total", 2)
    n = len(produced)
    produce(60)
    recs = answered(len(produced))
    new = [m for _, m in recs if m["trigger_event_id"] in {e.event_id for e in produced[n:]}]
    assert len(new) == 60 and {m["scorer"]["version"] for m in new if not m["scorer"]["fallback"]} == {v1}
    assert sorted(m["trigger_event_id"] for _, m in recs) == sorted(e.event_id for e in produced)
    text = metrics_text(worker)
    assert sample(text, "streamrec_model_refusals_total", reason="load") == 1   # refused once, not every poll
    worker.assert_alive()
    print(f"after refusal and rollback: {len(produced)} events, {len(recs)} answers")
