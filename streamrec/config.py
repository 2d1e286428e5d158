"""The one settings object. Every knob has a default, a ``STREAMREC_*`` environment variable and a CLI flag.

Precedence: CLI flag > environment variable > default. Nothing else in the package reads ``os.environ``.

Secrets (fields marked ``secret``) are also read from a file named by ``STREAMREC_<FIELD>_FILE``, as Kubernetes
and compose mount secrets, and are never shown: not in ``repr``, ``as_dict`` (what the worker logs), nor in
error messages of this module.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "STREAMREC_"


@dataclass
class Settings:
    # --- Kafka connection -------------------------------------------------------------------
    kafka_bootstrap: str = field(default="127.0.0.1:9092", metadata={"help": "Kafka bootstrap servers, comma-separated"})
    kafka_security_protocol: str = field(default="PLAINTEXT", metadata={"help": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"})
    kafka_sasl_mechanism: str = field(default="", metadata={"help": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL only)"})
    kafka_sasl_username: str = field(default="", metadata={"help": "SASL user name", "file": True})
    kafka_sasl_password: str = field(default="", repr=False, metadata={
        "help": "SASL password: pass it in a secret env var or a file (STREAMREC_KAFKA_SASL_PASSWORD_FILE), "
                "never as a flag (other users see command lines)", "file": True, "secret": True})
    kafka_ssl_cafile: str = field(default="", metadata={"help": "CA bundle that signed the broker certificate"})
    kafka_ssl_certfile: str = field(default="", metadata={"help": "client certificate (mutual TLS)"})
    kafka_ssl_keyfile: str = field(default="", metadata={"help": "client private key (mutual TLS)"})
    # --- topics -------------------------------------------------------------------------------
    topics_file: str = field(default=str(REPO_ROOT / "topics" / "topics.json"), metadata={"help": "topic declarations"})
    topic_prefix: str = field(default="", metadata={"help": "prefix added to every topic name (isolates tenants/tests)"})
    # --- worker -------------------------------------------------------------------------------
    app_id: str = field(default="streamrec", metadata={"help": "Faust app id = consumer group and changelog prefix"})
    data_dir: str = field(default="var/worker", metadata={"help": "RocksDB table directory (one per worker)"})
    rocksdb_write_buffer_mb: int = field(default=8, metadata={
        "help": "RocksDB memtable size per table partition (two of them at most); Faust's default is 3 x 64 MB"})
    rocksdb_block_cache_mb: int = field(default=32, metadata={
        "help": "RocksDB block cache per table partition; Faust's default is 2 GB, which a worker's RSS grows into"})
    web_port: int = field(default=6066, metadata={"help": "HTTP port: /health, /ready, /metrics, /recommendations/{user}"})
    web_host: str = field(default="127.0.0.1", metadata={"help": "HTTP bind address (0.0.0.0 in containers)"})
    web_advertised_host: str = field(default="", metadata={
        "help": "host name other workers reach this one by (pod DNS name); lookups of a user are forwarded to the "
                "worker owning their partition at this name. Empty = this machine's host name"})
    log_level: str = field(default="info", metadata={"help": "crit, error, warn, info or debug"})
    log_format: str = field(default="text", metadata={"help": "text, or json (one JSON object per line)"})
    log_repeat_interval_s: float = field(default=30.0, metadata={
        "help": "a repeated warning/error (same logger and message template) is logged once per this many "
                "seconds, then one line with the count of the others (0 = log every one)"})
    ready_broker_timeout_s: float = field(default=15.0, metadata={
        "help": "/ready fails when the broker has not answered the worker's metadata probe for this long"})
    session_timeout_s: float = field(default=10.0, metadata={"help": "consumer group session timeout"})
    processing_guarantee: str = field(default="at_least_once", metadata={"help": "at_least_once or exactly_once"})
    processes: int = field(default=1, metadata={
        "help": "worker processes on this machine (one per core, at most the interactions partitions); each gets "
                "data_dir/p<i> and web_port+i"})
    take_batch: int = field(default=256, metadata={"help": "events the agent takes from the stream per batch"})
    producer_linger_ms: int = field(default=5, metadata={"help": "how long the producer waits to fill a batch"})
    producer_compression: str = field(default="none", metadata={
        "help": "producer compression: none, gzip, or lz4/zstd/snappy (those need the cramjam package)"})
    take_within_s: float = field(default=0.02, metadata={"help": "longest wait to fill an agent batch"})
    # --- user state ---------------------------------------------------------------------------
    history_size: int = field(default=50, metadata={"help": "recent items kept per user"})
    dedupe_window: int = field(default=256, metadata={"help": "recent event ids kept per user to drop redeliveries"})
    max_event_bytes: int = field(default=16384, metadata={"help": "larger events go to the dead-letter topic"})
    # --- scoring ------------------------------------------------------------------------------
    top_k: int = field(default=10, metadata={"help": "items per recommendation"})
    explain: bool = field(default=True, metadata={
        "help": "each recommended item carries the history item behind it (and its title when known)"})
    user_retention_days: float = field(default=0.0, metadata={
        "help": "erase the state of users whose last event is older than this (0 = keep every user forever); "
                "swept every retention_sweep_s through the user-erasure topic, with a changelog tombstone"})
    retention_sweep_s: float = field(default=3600.0, metadata={"help": "how often the retention sweep runs"})
    recommend_seen: bool = field(default=False, metadata={
        "help": "may recommend items the user already interacted with (repeat consumption: food, music, news)"})
    scorer: str = field(default="auto", metadata={
        "help": "auto (lm when model_dir holds a trained model, else cooc), lm, cooc, or none (no scoring: empty answers, to measure the framework alone)"})
    model_dir: str = field(default="", metadata={"help": "trained item language model directory (streamrec train)"})
    backend: str = field(default="auto", metadata={
        "help": "auto (cuda-bf16 if a GPU is visible, else onnx-int8), torch, onnx, onnx-int8, cuda-bf16, cuda-fp8, "
                "cuda-int8"})
    scorer_threads: int = field(default=0, metadata={"help": "CPU threads of the model (0 = torch's default)"})
    group_lengths: int = field(default=0, metadata={
        "help": "split a batch into groups of similar history length, N requests or more each (0 = one call)"})
    blend: bool = field(default=True, metadata={
        "help": "serve the model with the blend validated with it (blend.json: co-occurrence and young-item title "
                "terms); false = the model alone (less CPU per request, lower quality: docs/evaluation.md)"})
    reranker_dir: str = field(default="", metadata={
        "help": "local Hugging Face causal LM directory: re-rank the first stage's candidates LlamaRec-style "
                "(item titles come from the items topic)"})
    rerank_candidates: int = field(default=20, metadata={"help": "first-stage candidates the re-ranker sees (<= 26)"})
    max_batch_size: int = field(default=64, metadata={"help": "micro-batch: flush at this many requests"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "micro-batch: flush after this long"})
    max_queue: int = field(default=4096, metadata={"help": "micro-batch: pending requests before callers wait"})
    scorer_timeout_s: float = field(default=2.0, metadata={"help": "model call longer than this falls back to cooc"})
    model_watch_s: float = field(default=30.0, metadata={
        "help": "how often to look for a new model version under model_dir (subdirectories; CURRENT names the one "
                "to serve, else the newest) and hot-swap it in; 0 = never"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if overrides.get(f.name) is not None:   # the flag wins: don't parse (or fail on) an env value it hides
                continue
            raw = environ.get(env_name(f.name))
            if f.metadata.get("file") and environ.get(file_env_name(f.name)):
                if raw:
                    raise ValueError(f"set {env_name(f.name)} or {file_env_name(f.name)}, not both")
                raw = _read_secret_file(file_env_name(f.name), environ[file_env_name(f.name)])
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def topic(self, logical_name: str) -> str:
        """Physical topic name for a logical one declared in topics/."""
        return f"{self.topic_prefix}{logical_name}"

    def kafka_python_security(self) -> dict[str, Any]:
        """Security keyword arguments for kafka-python clients."""
        proto = self.kafka_security_protocol.upper()
        kw: dict[str, Any] = {"security_protocol": proto}
        if proto.startswith("SASL"):
            kw.update(sasl_mechanism=self.kafka_sasl_mechanism or "PLAIN",
                      sasl_plain_username=self.kafka_sasl_username,
                      sasl_plain_password=self.kafka_sasl_password)
        if "SSL" in proto:
            kw.update(ssl_cafile=self.kafka_ssl_cafile or None, ssl_certfile=self.kafka_ssl_certfile or None,
                      ssl_keyfile=self.kafka_ssl_keyfile or None)
        return kw

    def ssl_context(self):
        """The TLS context for SSL / SASL_SSL (None otherwise): the CA file, or the system CAs, and the client
        certificate for mutual TLS. Hostname checking stays on."""
        if "SSL" not in self.kafka_security_protocol.upper():
            return None
        import ssl
        ctx = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        if self.kafka_ssl_certfile:
            ctx.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile or None)
        return ctx

    def as_dict(self) -> dict[str, Any]:
        """Every setting, secrets masked: safe to log."""
        d = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if d.get(name):
                d[name] = "***"
        return d


# The settings every Kafka client of the CLI takes (the tools, topics, training from the stream).
KAFKA_SETTINGS = ["kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                  "kafka_sasl_password", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "topic_prefix",
                  "topics_file", "app_id"]

SECRET_FIELDS = tuple(f.name for f in fields(Settings) if f.metadata.get("secret"))


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _flag_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"{raw!r} is not a boolean (true/false, 1/0, yes/no, on/off)")
    return value in _TRUE


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def file_env_name(field_name: str) -> str:
    """``STREAMREC_<FIELD>_FILE``: the variable naming a file that holds the value (fields marked ``file``)."""
    return env_name(field_name) + "_FILE"


def env_names() -> set[str]:
    """Every environment variable Settings reads."""
    return ({env_name(f.name) for f in fields(Settings)}
            | {file_env_name(f.name) for f in fields(Settings) if f.metadata.get("file")})


def _read_secret_file(var: str, path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:   # the reason and the path, never the content
        raise ValueError(f"{var}={path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    return text.rstrip("\r\n")   # `echo pw > file` and kubectl --from-file both may end it with a newline


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        return kind(raw)
    except ValueError as exc:
        shown = "***" if f.metadata.get("secret") else repr(raw)
        raise ValueError(f"{env_name(f.name)}={shown} is not a valid {kind.__name__}") from exc


def add_arguments(parser, names: list[str] | None = None) -> None:
    """Add ``--flag`` options for settings (all, or the named ones) to an argparse parser."""
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]
        if kind is bool:   # argparse's type=bool would read "--flag false" as True
            kind = _flag_bool
        env = env_name(f.name) + (f" or {file_env_name(f.name)}" if f.metadata.get("file") else "")
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                            help=f"{f.metadata.get('help', '')} [env {env}, default {f.default!r}]")


def from_args(args) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.from_env(**overrides)
