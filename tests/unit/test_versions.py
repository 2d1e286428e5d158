"""Model versions: which directory is served (CURRENT, newest, rollback), whether to load it, the checks a candidate
must pass, and the watcher that swaps it into the micro-batcher or refuses it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from streamrec import metrics
from streamrec.config import Settings
from streamrec.scoring import Scored, ScoreRequest
from streamrec.serve.batching import MicroBatcher
from streamrec.serve.build import serving_dir
from streamrec.serve.versions import (ModelWatcher, RefusedModel, check_answers, check_export, is_versioned,
                                      load_version, plan, sample_requests, select, stamp, version_of)

pytestmark = pytest.mark.timeout(120)


def fake_version(root: Path, name: str, mtime: float, nested: bool = False) -> Path:
    d = root / name
    weights = d / "model" if nested else d
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    os.utime(weights / "config.json", (mtime, mtime))
    return d


def test_newest_version_by_its_config_unless_current_names_one(tmp_path):
    v1 = fake_version(tmp_path, "v1", 1_000)
    v2 = fake_version(tmp_path, "v2", 2_000, nested=True)
    (tmp_path / "notes").mkdir()   # not a model: never selected
    assert is_versioned(tmp_path) and not is_versioned(v1)
    assert select(tmp_path) == v2
    (v1 / "onnx").mkdir()   # an export written into the older version later does not make it the newest
    assert select(tmp_path) == v2
    (tmp_path / "CURRENT").write_text("v1\n")   # roll back: the same operation as rolling out
    assert select(tmp_path) == v1
    assert serving_dir(str(tmp_path)) == str(v1)
    (tmp_path / "CURRENT").write_text("v2")
    assert select(tmp_path) == v2


def test_a_model_dir_that_is_one_model_is_served_as_before(tmp_path):
    v1 = fake_version(tmp_path, "v1", 1_000)
    assert serving_dir(str(v1)) == str(v1)
    assert serving_dir(str(tmp_path / "empty")) == ""
    (tmp_path / "empty").mkdir()
    assert serving_dir(str(tmp_path / "empty")) == ""


@pytest.mark.parametrize("name", ["", "..", "../elsewhere", "a/b"])
def test_current_must_name_a_subdirectory(tmp_path, name):
    fake_version(tmp_path, "v1", 1_000)
    (tmp_path / "CURRENT").write_text(name)
    with pytest.raises(RefusedModel) as err:
        select(tmp_path)
    assert err.value.reason == "current"


def test_version_of_a_scorer_dir(tmp_path):
    assert version_of(tmp_path, tmp_path / "v1" / "model") == (tmp_path / "v1").resolve()
    assert version_of(tmp_path, tmp_path / "v1") == (tmp_path / "v1").resolve()
    assert version_of(tmp_path / "a", tmp_path / "b") is None


def test_plan_loads_a_new_selection_once_and_a_refused_one_only_when_it_changes(tmp_path):
    v1, v2 = fake_version(tmp_path, "v1", 1_000), fake_version(tmp_path, "v2", 2_000)
    assert plan(v2, v1, {}, stamp(v2)) == v2
    assert plan(v1, v1, {}, stamp(v1)) is None
    assert plan(None, v1, {}, None) is None
    refused = {v2: stamp(v2)}
    assert plan(v2, v1, refused, stamp(v2)) is None          # refused as it is: not tried every poll
    (v2 / "model.safetensors").write_bytes(b"now complete")    # e.g. the copy finished
    assert plan(v2, v1, refused, stamp(v2)) == v2
    (v1 / "onnx").mkdir()
    (v1 / "onnx" / "model.onnx").write_bytes(b"x")   # the worker's own export does not count as a change
    assert stamp(v1) == stamp(v1.parent / "v1") and all("onnx" not in f[0] for f in stamp(v1))


GOOD_CHECKS = {"fp32_max_abs_diff_vs_torch": 2e-6, "fp32_padding_is_-inf": True,
               "fp32_top10_overlap_vs_torch": 1.0, "int8_top10_overlap_vs_fp32": 0.93}


def test_export_checks():
    assert check_export({"checks": GOOD_CHECKS}, "int8") == []
    assert check_export(None, "fp32") == ["no export report (onnx/export.json)"]
    bad = check_export({"checks": {**GOOD_CHECKS, "fp32_max_abs_diff_vs_torch": 0.5}}, "fp32")
    assert len(bad) == 1 and "fp32_max_abs_diff_vs_torch" in bad[0]
    assert check_export({"checks": {**GOOD_CHECKS, "fp32_padding_is_-inf": False}}, "fp32")
    assert check_export({"checks": {**GOOD_CHECKS, "fp32_max_abs_diff_vs_torch": float("nan")}}, "fp32")
    low_int8 = {**GOOD_CHECKS, "int8_top10_overlap_vs_fp32": 0.3}
    assert check_export({"checks": low_int8}, "fp32") == []      # int8 only matters when int8 serves
    assert check_export({"checks": low_int8}, "int8")
    no_int8 = {k: v for k, v in GOOD_CHECKS.items() if not k.startswith("int8")}
    assert "missing" in check_export({"checks": no_int8}, "int8")[0]


def test_answer_checks():
    reqs = sample_requests(["a", "b", "c"], n=5)
    assert len(reqs) == 5 and all(r.history and set(r.history) <= {"a", "b", "c"} for r in reqs)
    assert sample_requests([], n=5) == []
    good = [Scored([("x", 0.5)], "itemlm", "v2") for _ in reqs]
    assert check_answers(reqs, good, "v2") == []
    assert check_answers([], [], "v2")
    assert check_answers(reqs, good[:-1], "v2")
    assert check_answers(reqs, good, "v1")
    assert check_answers(reqs, good[:-1] + [Scored([], "itemlm", "v2")], "v2")
    assert check_answers(reqs, good[:-1] + [Scored([("x", float("nan"))], "itemlm", "v2")], "v2")
    assert check_answers(reqs, good[:-1] + [Scored([("x", 1.0)], "itemlm", "v2", fallback=True)], "v2")


# --- the watcher, with fake scorers -------------------------------------------------------------------------------

class Versioned:
    def __init__(self, model_dir: Path):
        self.model_dir, self.name, self.version = model_dir, "itemlm", model_dir.name
        self.items = []

    def score(self, requests):
        return [Scored([("i", 1.0)], self.name, self.version) for _ in requests]

    def observe(self, history, item_id):
        pass

    def on_item(self, item_id, record):
        self.items.append(item_id)


def counter(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_watcher_swaps_refuses_and_rolls_back(tmp_path):
    v1 = fake_version(tmp_path, "v1", 1_000)

    def load(version: Path):
        if (version / "corrupt").exists():
            raise RefusedModel("load", "unreadable weights")
        return Versioned(version)

    async def main():
        batcher = MicroBatcher(Versioned(v1), max_wait_ms=1)
        watcher = ModelWatcher(tmp_path, batcher, load, lambda: [("new-item", {"title": "t"})])
        seen = []

        async def ask():
            seen.append((await batcher.submit(ScoreRequest("u", ("a",)))).version)

        assert watcher.serving == v1.resolve() and await watcher.poll() is None
        await ask()
        fake_version(tmp_path, "v2", 2_000)
        swaps, refusals = counter("streamrec_model_swaps_total"), counter("streamrec_model_refusals_total", reason="load")
        assert await watcher.poll() == "swapped"
        assert batcher.scorer.items == ["new-item"]   # the catalog so far, for its cold start
        await ask()
        v3 = fake_version(tmp_path, "v3", 3_000)
        (v3 / "corrupt").write_text("")
        assert await watcher.poll() == "refused"
        assert await watcher.poll() is None       # refused once, not every poll
        await ask()
        (tmp_path / "CURRENT").write_text("v1")   # roll back
        assert await watcher.poll() == "swapped"
        await ask()
        assert counter("streamrec_model_swaps_total") - swaps == 2
        assert counter("streamrec_model_refusals_total", reason="load") - refusals == 1
        assert counter("streamrec_model_version_info", version="v1") == 1
        assert counter("streamrec_model_version_info", version="v2") == 0
        (tmp_path / "CURRENT").write_text("../x")
        assert await watcher.poll() == "refused" and batcher.version == "v1"
        await batcher.close()
        return seen

    assert asyncio.run(main()) == ["v1", "v2", "v2", "v1"]


# --- a real model: loaded, exported, checked; a corrupt one refused ----------------------------------------------

def save_model(d: Path, n_items: int = 30, seed: int = 0) -> None:
    import torch
    from streamrec.model.itemlm import ItemLM, ItemLMConfig
    from streamrec.model.vocab import ItemVocab
    torch.manual_seed(seed)
    model = ItemLM(ItemLMConfig(n_items=n_items, hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                                num_key_value_heads=1, intermediate_size=32, max_position_embeddings=8))
    with torch.no_grad():
        model.item_emb.weight.mul_(20)
    model.save_pretrained(d)
    ItemVocab(f"sku-{i}" for i in range(1, n_items + 1)).save(d)
    (d / "train_config.json").write_text(json.dumps({"version": d.name + "-version"}))


def test_load_version_exports_checks_and_refuses_a_corrupt_one(tmp_path, one_thread):
    from streamrec.scoring import CooccurrenceScorer
    settings = Settings(model_dir=str(tmp_path), backend="onnx", scorer_threads=1, max_batch_size=4)
    fallback = CooccurrenceScorer()
    save_model(tmp_path / "v1")
    scorer = load_version(tmp_path / "v1", settings, fallback)
    assert scorer.version == "v1-version" and scorer.fallback is fallback
    assert (tmp_path / "v1" / "onnx" / "export.json").is_file()   # exported on the way in
    save_model(tmp_path / "v2", seed=1)
    (tmp_path / "v2" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RefusedModel) as err:
        load_version(tmp_path / "v2", settings, fallback)
    assert err.value.reason == "load"
    with pytest.raises(RefusedModel) as err:
        load_version(tmp_path / "v9", settings, fallback)
    assert err.value.reason == "missing"
    report = tmp_path / "v1" / "onnx" / "export.json"   # an export whose own checks failed
    bad = json.loads(report.read_text())
    bad["checks"]["fp32_max_abs_diff_vs_torch"] = 0.5
    report.write_text(json.dumps(bad))
    with pytest.raises(RefusedModel) as err:
        load_version(tmp_path / "v1", settings, fallback)
    assert err.value.reason == "export-check"
