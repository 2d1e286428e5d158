"""The Kafka ACLs each streamrec role needs, as data, and ``apply`` (create them through the Admin API).

One list serves three readers: ``streamrec acls list`` prints it for the operator of a managed cluster,
``streamrec acls apply`` creates it with admin credentials, and the secured-broker tests run every component
with exactly these grants and nothing more. docs/deployment.md shows the list for the default settings.

A Read or Write grant implies Describe on the same resource in Kafka, so Describe is listed only where nothing
else is granted.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.config import Settings
from streamrec.stream.topics import DEAD_LETTER, ERASURE, INTERACTIONS, ITEMS, RECOMMENDATIONS, load_specs

ROLES = ("worker", "producer", "reader", "eraser", "topics")


@dataclass(frozen=True)
class Grant:
    resource: str        # topic, group, transactional_id
    name: str
    pattern: str         # literal or prefixed
    operation: str       # read, write, create, describe, describe_configs
    why: str

    def __str__(self) -> str:
        name = self.name + ("*" if self.pattern == "prefixed" else "")
        return f"{self.operation.upper():<16} {self.resource:<16} {name:<40} {self.why}"


def grants(settings: Settings, role: str) -> list[Grant]:
    """What ``role`` needs on a cluster with ``allow.everyone.if.no.acl.found=false``.

    worker   ``streamrec worker`` (Faust): its input, its outputs, its group, its own changelogs and transactions.
    producer ``streamrec replay`` / ``catalog``, or an app that sends events.
    reader   ``streamrec tail`` or an app that consumes recommendations (without a consumer group; an app with a
             group also needs Read on that group).
    eraser   ``streamrec erase``, or the privacy tooling that sends erase requests.
    topics   ``streamrec topics apply`` (the topics Job): create and inspect the declared topics, nothing else.
    """
    t = settings.topic
    # Faust names changelogs "<app_id>-<table>-changelog" and transactional ids "<app_id>-<group>-<partition>";
    # the app id is also the consumer group. The prefix must not cover the data topics: keep topic_prefix from
    # starting with "<app_id>-".
    own = settings.app_id + "-"
    if role == "worker":
        return [
            Grant("topic", t(INTERACTIONS), "literal", "read", "the events"),
            Grant("topic", t(INTERACTIONS), "literal", "write", "events produced under another key are re-keyed"),
            Grant("topic", t(ITEMS), "literal", "read", "the catalog"),
            Grant("topic", t(RECOMMENDATIONS), "literal", "write", "the output"),
            Grant("topic", t(DEAD_LETTER), "literal", "write", "bad input, with the reason"),
            Grant("topic", t(ERASURE), "literal", "read", "erase requests (read by the same agent)"),
            Grant("topic", t(ERASURE), "literal", "write", "mis-keyed erase requests re-keyed; the retention sweep"),
            Grant("topic", own, "prefixed", "read", "table changelogs (recovery)"),
            Grant("topic", own, "prefixed", "write", "table changelogs"),
            Grant("group", settings.app_id, "literal", "read", "the consumer group (offsets)"),
            Grant("transactional_id", own, "prefixed", "write", "processing_guarantee=exactly_once only"),
        ]
    if role == "producer":
        return [Grant("topic", t(INTERACTIONS), "literal", "write", "replay"),
                Grant("topic", t(ITEMS), "literal", "write", "catalog")]
    if role == "reader":
        return [Grant("topic", t(RECOMMENDATIONS), "literal", "read", "tail"),
                Grant("topic", t(DEAD_LETTER), "literal", "read", "tail --dead-letters")]
    if role == "eraser":
        return [Grant("topic", t(ERASURE), "literal", "write", "streamrec erase")]
    if role == "topics":
        out = []
        for s in load_specs(settings):
            out += [Grant("topic", s.name, "literal", "create", "topics apply creates it"),
                    Grant("topic", s.name, "literal", "describe", "topics apply sees whether it exists"),
                    Grant("topic", s.name, "literal", "describe_configs", "topics apply checks its config")]
        return out
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def to_kafka_acls(principal: str, items: list[Grant]) -> list:
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType
    return [ACL(principal=principal, host="*", operation=ACLOperation[g.operation.upper()],
                permission_type=ACLPermissionType.ALLOW,
                resource_pattern=ResourcePattern(ResourceType[g.resource.upper()], g.name,
                                                 ACLResourcePatternType[g.pattern.upper()]))
            for g in items]


def apply(settings: Settings, principal: str, roles: list[str], admin=None) -> int:
    """Create the grants of ``roles`` for ``principal`` (e.g. ``User:streamrec``); returns how many were sent.

    Creating an ACL that exists is a no-op in Kafka, so this is safe to rerun.
    """
    from streamrec.stream.topics import admin_client
    if ":" not in principal:
        raise ValueError(f"principal {principal!r} needs a type, e.g. User:{principal}")
    acls = to_kafka_acls(principal, [g for r in roles for g in grants(settings, r)])
    own = admin is None
    admin = admin or admin_client(settings)
    try:
        result = admin.create_acls(acls)
    finally:
        if own:
            admin.close()
    if result["failed"]:
        raise RuntimeError(f"{len(result['failed'])} of {len(acls)} ACLs were refused: {result['failed'][0]!r}")
    return len(acls)
