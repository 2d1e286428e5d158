"""Learning from the stream: `streamrec train --from-kafka` reads the interactions topic, `--init-from` continues
from the previous model; the new versioned model knows the items that appeared since."""

from __future__ import annotations

import json

import pytest

from streamrec.events import Interaction
from streamrec.model.datasets import synthetic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TINY = ["--hidden-size", "16", "--num-layers", "1", "--num-heads", "1", "--max-len", "12", "--epochs", "1",
        "--batch-size", "64", "--num-threads", "1", "--quiet"]


def events_of(seqs: dict[str, list[str]], t0: float) -> list[Interaction]:
    return [Interaction(f"{u}-{n}-{t0}", u, item, "view", t0 + n) for u, s in seqs.items() for n, item in enumerate(s)]


def test_train_from_kafka_then_continue_from_the_previous_model(stack, tmp_path, monkeypatch, capsys):
    from streamrec.cli import main
    from streamrec.model.kafka_data import read_interactions
    from streamrec.model.train import load_model_dir

    seqs = synthetic(80, 25, 10, seed=3)
    stack.produce_events(events_of(seqs, 1000.0))
    stack.produce(stack.topic("interactions"), [(b"u", b"{not json"), (None, b'{"schema_version": 1}')])
    events, skipped = read_interactions(stack.settings)
    assert len(events) == sum(map(len, seqs.values())) and skipped == 2
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)

    for k, v in stack.env.items():
        if k.startswith("STREAMREC_"):
            monkeypatch.setenv(k, v)
    assert main(["train", "--from-kafka", "--out", str(tmp_path / "v1"), *TINY]) == 0
    first = json.loads((tmp_path / "v1" / "metrics.json").read_text())
    assert first["dataset"] == "kafka" and first["data"]["interactions"] == len(events)

    # new interactions arrive, with items nobody had seen: the next model continues from v1 and knows them
    stack.produce_events([Interaction(f"late-{u}", u, "brand-new", "view", 5000.0) for u in list(seqs)[:20]])
    assert main(["train", "--from-kafka", "--init-from", str(tmp_path / "v1"), "--out", str(tmp_path / "v2"),
                 *TINY]) == 0
    second = json.loads((tmp_path / "v2" / "metrics.json").read_text())
    _, vocab1 = load_model_dir(tmp_path / "v1")
    model, vocab2 = load_model_dir(tmp_path / "v2")
    assert second["version"] != first["version"] and second["data"]["init_from"] == str(tmp_path / "v1")
    assert "brand-new" in vocab2 and vocab2.items[: len(vocab1.items)] == vocab1.items
    assert model.config.n_items == len(vocab2)
