"""The ACL grants per role: pure data from the settings and topics/topics.json (no broker)."""

from __future__ import annotations

import pytest

from streamrec.config import Settings
from streamrec.stream import acls
from streamrec.stream.topics import load_specs


def covered(grants, name):
    return [g for g in grants if g.resource == "topic" and (
        g.name == name if g.pattern == "literal" else name.startswith(g.name))]


def test_worker_may_read_its_inputs_write_its_outputs_and_nothing_else():
    s = Settings(topic_prefix="t-", app_id="app")
    g = acls.grants(s, "worker")
    ops = lambda name: sorted(x.operation for x in covered(g, name))   # noqa: E731
    assert ops("t-interactions") == ["read", "write"]
    assert ops("t-items") == ["read"]
    assert ops("t-recommendations") == ["write"] and ops("t-interactions-dlq") == ["write"]
    assert ops("t-user-erasure") == ["read", "write"]   # its agent reads erase requests, re-keys, sweeps
    for spec in load_specs(s):
        if spec.internal:
            assert ops(spec.name) == ["read", "write"], spec.name
    assert ops("other-topic") == [] and ops("t-something-else") == []
    assert {(x.resource, x.name, x.pattern) for x in g if x.resource != "topic"} == {
        ("group", "app", "literal"), ("transactional_id", "app-", "prefixed")}
    assert not {x.operation for x in g} & {"create", "delete", "alter", "all", "alter_configs"}


def test_with_the_default_names_the_prefixed_grant_covers_no_data_topic():
    s = Settings()
    g = acls.grants(s, "worker")
    prefixed = [x for x in g if x.pattern == "prefixed"]
    for spec in load_specs(s):
        if not spec.internal:
            assert not [x for x in prefixed if x.resource == "topic" and spec.name.startswith(x.name)], spec.name


def test_reader_and_producer_touch_only_their_topics():
    s = Settings()
    assert {(x.name, x.operation) for x in acls.grants(s, "reader")} == {
        ("recommendations", "read"), ("interactions-dlq", "read")}
    assert {(x.name, x.operation) for x in acls.grants(s, "producer")} == {
        ("interactions", "write"), ("items", "write")}


def test_topics_role_can_create_and_inspect_every_declared_topic():
    s = Settings()
    g = acls.grants(s, "topics")
    for spec in load_specs(s):
        assert {x.operation for x in g if x.name == spec.name} == {"create", "describe", "describe_configs"}


def test_kafka_acls_are_built_for_the_principal():
    from kafka.admin import ACLOperation, ACLResourcePatternType, ResourceType
    built = acls.to_kafka_acls("User:w", acls.grants(Settings(), "worker"))
    tx = [a for a in built if a.resource_pattern.resource_type == ResourceType.TRANSACTIONAL_ID]
    assert [(a.operation, a.resource_pattern.pattern_type) for a in tx] == [
        (ACLOperation.WRITE, ACLResourcePatternType.PREFIXED)]
    assert {a.principal for a in built} == {"User:w"}


def test_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="unknown role"):
        acls.grants(Settings(), "admin")


def test_eraser_may_only_write_erase_requests():
    g = acls.grants(Settings(topic_prefix="t-"), "eraser")
    assert [(x.resource, x.name, x.operation) for x in g] == [("topic", "t-user-erasure", "write")]
