"""Topics as code: the declarations in ``topics/topics.json``, their JSON Schemas, and ``apply`` (create + drift)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from streamrec.config import REPO_ROOT, Settings

SCHEMA_DIR = REPO_ROOT / "topics" / "schemas"

# Logical names used in code; the physical name adds STREAMREC_TOPIC_PREFIX.
INTERACTIONS = "interactions"
ITEMS = "items"
RECOMMENDATIONS = "recommendations"
DEAD_LETTER = "interactions-dlq"
ERASURE = "user-erasure"


@dataclass(frozen=True)
class TopicSpec:
    name: str                       # physical name
    partitions: int
    replication_factor: int
    config: dict[str, str]
    schema: str | None = None
    internal: bool = False
    description: str = ""


@dataclass
class Drift:
    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)


def load_specs(settings: Settings) -> list[TopicSpec]:
    doc = json.loads(Path(settings.topics_file).read_text())
    specs = []
    for t in doc["topics"]:
        name = settings.topic_prefix + t["name"].format(app_id=settings.app_id)
        if t.get("internal"):   # Faust names changelogs after the app id alone, without our prefix
            name = t["name"].format(app_id=settings.app_id)
        specs.append(TopicSpec(name=name, partitions=int(t["partitions"]),
                               replication_factor=int(t.get("replication_factor", 1)),
                               config={k: str(v) for k, v in t.get("config", {}).items()},
                               schema=t.get("schema"), internal=bool(t.get("internal")),
                               description=t.get("description", "")))
    return specs


def spec_for(settings: Settings, logical_name: str) -> TopicSpec:
    wanted = settings.topic(logical_name)
    for s in load_specs(settings):
        if s.name == wanted:
            return s
    raise KeyError(f"topic {logical_name!r} is not declared in {settings.topics_file}")


@lru_cache(maxsize=None)
def load_schema(filename: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / filename).read_text())


def validator(filename: str):
    """A jsonschema validator for one of the message schemas (used by tools and tests, not the hot path)."""
    import jsonschema
    schema = load_schema(filename)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def admin_client(settings: Settings):
    from kafka.admin import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="streamrec-topics",
                            request_timeout_ms=15000, **settings.kafka_python_security())


def apply(settings: Settings, *, create: bool = True, admin=None) -> ApplyReport:
    """Create missing topics (unless ``create`` is False) and report any existing one that differs."""
    from kafka.admin import ConfigResource, ConfigResourceType
    specs = load_specs(settings)
    own = admin is None
    admin = admin or admin_client(settings)
    report = ApplyReport()
    try:
        described = admin.describe_topics([s.name for s in specs])
        denied = [t["name"] for t in described if t.get("error_code") == 29]   # not "missing": not ours to see
        if denied:
            from kafka.errors import TopicAuthorizationFailedError
            raise TopicAuthorizationFailedError(", ".join(denied))
        existing = {t["name"]: t for t in described if t.get("error_code", 0) == 0}
        missing = [s for s in specs if s.name not in existing]
        if missing and create:
            admin.create_topics({s.name: {"num_partitions": s.partitions, "replication_factor": s.replication_factor,
                                          "configs": s.config} for s in missing}, wait_for_metadata=True)
            report.created = [s.name for s in missing]
        elif missing:
            report.drift += [Drift(s.name, "missing") for s in missing]
        present = [s for s in specs if s.name in existing]
        configs = {}
        if present:
            res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s.name) for s in present],
                                         config_filter="all")
            configs = res.get("topic", res) if isinstance(res, dict) else {}
        for s in present:
            problems = []
            n = len(existing[s.name].get("partitions", []))
            if n != s.partitions:
                problems.append(f"partitions {n}, declared {s.partitions}")
            actual = {k: _config_value(v) for k, v in configs.get(s.name, {}).items()}
            for k, want in s.config.items():
                if k in actual and str(actual[k]) != want:
                    problems.append(f"{k}={actual[k]}, declared {want}")
            if problems:
                report.drift.append(Drift(s.name, "; ".join(problems)))
            else:
                report.ok.append(s.name)
    finally:
        if own:
            admin.close()
    return report


def _config_value(v: Any) -> Any:
    if isinstance(v, dict):
        return v.get("value", v.get("config_value"))
    return v
