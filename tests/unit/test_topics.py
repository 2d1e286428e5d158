"""Topics as code: topics/topics.json declarations, schemas, and apply()'s create/drift logic (fake admin)."""

from __future__ import annotations

import json

import pytest

from streamrec.stream import topics
from streamrec.config import Settings
from streamrec.stream.topics import DEAD_LETTER, INTERACTIONS, ITEMS, RECOMMENDATIONS, apply, load_specs, spec_for

LOGICAL = (INTERACTIONS, ITEMS, RECOMMENDATIONS, DEAD_LETTER)


def by_name(settings):
    return {s.name: s for s in load_specs(settings)}


def test_every_logical_topic_is_declared():
    for prefix in ("", "t1."):
        s = Settings(topic_prefix=prefix)
        for name in LOGICAL:
            spec = spec_for(s, name)
            assert spec.name == prefix + name and not spec.internal and spec.partitions >= 1


def test_undeclared_topic_is_a_key_error():
    with pytest.raises(KeyError, match="nope"):
        spec_for(Settings(), "nope")


def test_changelog_partitions_equal_their_source_topics():
    s = Settings(app_id="myapp", topic_prefix="p-")
    specs = by_name(s)
    assert specs["myapp-user_state-changelog"].partitions == specs["p-interactions"].partitions
    assert specs["myapp-catalog-changelog"].partitions == specs["p-items"].partitions
    # Faust names changelogs after the app id alone: no topic prefix, and they are marked internal
    assert {n for n, sp in specs.items() if sp.internal} == {"myapp-user_state-changelog", "myapp-catalog-changelog"}
    assert all(sp.config["cleanup.policy"] == "compact" for sp in specs.values() if sp.internal)


def test_recommendations_are_partitioned_like_interactions():
    specs = by_name(Settings())
    assert specs["recommendations"].partitions == specs["interactions"].partitions


def test_erase_requests_are_co_partitioned_with_interactions():
    # One agent reads both: Faust assigns co-subscribed topics of equal partition counts together, which is what
    # brings a user's erase request to the worker holding their state.
    specs = by_name(Settings())
    assert specs["user-erasure"].partitions == specs["interactions"].partitions
    assert specs["user-erasure"].schema == "erasure.schema.json"


def test_cleanup_policies():
    specs = by_name(Settings())
    assert specs["items"].config["cleanup.policy"] == "compact"
    for name in (INTERACTIONS, RECOMMENDATIONS, DEAD_LETTER):
        assert specs[name].config["cleanup.policy"] == "delete"
        assert int(specs[name].config["retention.ms"]) > 0


def test_config_values_are_strings_and_names_unique():
    doc = json.loads(topics.Path(Settings().topics_file).read_text())
    specs = load_specs(Settings())
    assert len({s.name for s in specs}) == len(specs) == len(doc["topics"])
    assert all(isinstance(v, str) for s in specs for v in s.config.values())


def test_declared_schemas_exist_and_are_valid_json_schemas():
    specs = load_specs(Settings())
    declared = {s.schema for s in specs if s.schema}
    assert declared == {p.name for p in topics.SCHEMA_DIR.glob("*.schema.json")}
    for name in declared:
        v = topics.validator(name)                 # check_schema() raises on a broken schema
        version = topics.load_schema(name)["properties"]["schema_version"]
        # every schema pins its versions: 1, or (recommendation) 1 and 2
        assert version == {"const": 1} or (name == "recommendation.schema.json" and version["enum"] == [1, 2])
        assert not v.is_valid({})
    assert all(s.schema is None for s in specs if s.internal)


def test_load_specs_from_another_file(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"topics": [
        {"name": "a", "partitions": "3", "config": {"retention.ms": 5}},
        {"name": "{app_id}-x-changelog", "partitions": 3, "internal": True}]}))
    specs = load_specs(Settings(topics_file=str(f), topic_prefix="p.", app_id="app"))
    assert [(s.name, s.partitions, s.replication_factor, s.config) for s in specs] == [
        ("p.a", 3, 1, {"retention.ms": "5"}), ("app-x-changelog", 3, 1, {})]


# --- apply(): create missing, report drift ------------------------------------------------------------------
class FakeAdmin:
    """Mimics kafka-python 3's KafkaAdminClient answers (describe_topics list, describe_configs dict)."""

    def __init__(self, existing: dict[str, int], configs: dict[str, dict] | None = None):
        self.existing = existing
        self.configs = configs or {}
        self.created: dict | None = None
        self.closed = False

    def describe_topics(self, names):
        return [{"name": n, "error_code": 0 if n in self.existing else 3,
                 "partitions": [{"partition_index": i} for i in range(self.existing.get(n, 0))]} for n in names]

    def describe_configs(self, resources, config_filter="all"):
        assert config_filter == "all"
        return {"topic": {r.name: {k: {"value": v} for k, v in self.configs.get(r.name, {}).items()}
                          for r in resources}}

    def create_topics(self, new, wait_for_metadata=True):
        self.created = new

    def close(self):
        self.closed = True


def healthy(settings):
    specs = load_specs(settings)
    return FakeAdmin({s.name: s.partitions for s in specs}, {s.name: dict(s.config) for s in specs})


def test_apply_all_ok():
    s = Settings()
    admin = healthy(s)
    report = apply(s, admin=admin)
    assert sorted(report.ok) == sorted(sp.name for sp in load_specs(s))
    assert report.drift == [] and report.created == [] and admin.created is None
    assert not admin.closed                     # a borrowed client is left open


def test_apply_reports_partition_and_config_drift():
    s = Settings()
    admin = healthy(s)
    admin.existing["interactions"] = 2
    admin.configs["items"]["cleanup.policy"] = "delete"
    admin.configs["recommendations"]["unrelated.setting"] = "x"        # undeclared keys are not drift
    report = apply(s, admin=admin)
    drift = {d.topic: d.problem for d in report.drift}
    assert drift == {"interactions": "partitions 2, declared 4", "items": "cleanup.policy=delete, declared compact"}
    assert "interactions" not in report.ok and "recommendations" in report.ok
    assert str(report.drift[0]).startswith(report.drift[0].topic + ": ")


def test_apply_creates_missing_topics_as_declared():
    s = Settings(topic_prefix="x.")
    admin = healthy(s)
    del admin.existing["x.items"], admin.existing["streamrec-user_state-changelog"]
    report = apply(s, admin=admin)
    assert sorted(report.created) == ["streamrec-user_state-changelog", "x.items"]
    assert admin.created["x.items"] == {"num_partitions": 1, "replication_factor": 1,
                                        "configs": {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}}
    assert admin.created["streamrec-user_state-changelog"]["num_partitions"] == 4
    assert report.drift == []


def test_apply_without_create_reports_missing():
    s = Settings()
    admin = healthy(s)
    del admin.existing["interactions-dlq"]
    report = apply(s, create=False, admin=admin)
    assert admin.created is None
    assert [(d.topic, d.problem) for d in report.drift] == [("interactions-dlq", "missing")]


def test_config_value_shapes():
    assert topics._config_value({"value": "1"}) == "1"
    assert topics._config_value({"config_value": "2"}) == "2"
    assert topics._config_value("3") == "3"
