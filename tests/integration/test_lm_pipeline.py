"""The worker with the language-model scorer: a tiny model trained here on CPU, served through ONNX Runtime int8
behind the micro-batcher, end to end on the real broker."""

from __future__ import annotations

import re

import pytest

from streamrec.stream import topics
from streamrec.model.datasets import synthetic

from .conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from streamrec.model.train import TrainConfig, train
    seqs = synthetic(n_users=150, n_items=40, length=12, seed=3)
    out = tmp_path_factory.mktemp("tiny-lm")
    cfg = TrainConfig(hidden_size=16, num_layers=1, num_heads=1, max_len=12, epochs=3, patience=3, batch_size=64,
                      num_threads=1, seed=0)
    metrics = train(cfg, seqs, out, progress=False, dataset_name="synthetic")
    return out, seqs, metrics


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_worker_serves_lm_recommendations_micro_batched(stack, tiny_model):
    import urllib.request
    model_dir, seqs, _ = tiny_model
    worker = stack.worker(STREAMREC_MODEL_DIR=str(model_dir), STREAMREC_BACKEND="onnx-int8",
                          STREAMREC_SCORER_THREADS="1", STREAMREC_MAX_WAIT_MS="50", STREAMREC_MAX_BATCH_SIZE="64")
    users = list(seqs)[:40]
    evs = [event(u, item, 1_700_000_000 + 10 * n, n=n) for u in users for n, item in enumerate(seqs[u][:3])]
    stack.produce_events(evs)

    schema = topics.validator("recommendation.schema.json")
    recs = stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= len(evs), timeout=120)
    assert len(recs) == len(evs)
    vocab = {i for s in seqs.values() for i in s}
    last = {}
    for key, msg in recs:
        schema.validate(msg)
        assert msg["scorer"]["name"] == "itemlm" and not msg["scorer"]["fallback"], msg["scorer"]
        assert key.decode() == msg["user_id"]
        assert {it["item_id"] for it in msg["items"]} <= vocab
        last[msg["user_id"]] = msg
    for u in users:   # the newest answer excludes everything the user has seen
        seen = set(seqs[u][:3])
        assert len(last[u]["items"]) == 10 and not {it["item_id"] for it in last[u]["items"]} & seen

    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    calls = metric(text, "streamrec_score_batch_size_count")
    requests = metric(text, "streamrec_score_batch_size_sum")
    # One model call served many users: far fewer calls than requests.
    assert calls >= 1 and requests / calls >= 4, (calls, requests)
