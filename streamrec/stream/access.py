"""Can these settings reach Kafka and do what the component needs? One check, before any client starts.

Left to themselves the clients fail badly on a misconfiguration: kafka-python retries an untrusted certificate or
a refused password for 30 s and ends with "Unable to bootstrap"; Faust without the ACLs it needs logs "not
authorized" once and then waits forever, or later crash-loops on a refused delivery; ``tail`` without Read on its
topic prints nothing and exits 0. ``check`` instead connects once, names the cause (unreachable, TLS, credentials,
a missing topic, the missing ACL with the principal and the operation) and raises ``AccessError``, which the CLI
turns into one line on stderr and exit code 78 (EX_CONFIG; 69, EX_UNAVAILABLE, when no broker answered at all),
within seconds.

The ACLs checked are ``acls.grants(settings, role)``: the same list ``streamrec acls apply`` creates.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from streamrec.config import Settings
from streamrec.stream import acls
from streamrec.stream.topics import load_specs

EXIT_CODE = 78   # EX_CONFIG (sysexits.h): the configuration is wrong; retrying will not help


class AccessError(RuntimeError):
    """A misconfiguration, described without secrets."""

    exit_code = EXIT_CODE


class Unreachable(AccessError):
    """No bootstrap server answered: possibly a wrong address, possibly a broker that is down for now."""

    exit_code = 69   # EX_UNAVAILABLE


def check(settings: Settings, role: str, topic: str | None = None, timeout_s: float = 10.0) -> None:
    """Raise ``AccessError`` unless ``settings`` authenticate at the brokers and hold what ``role`` needs (on
    ``topic`` only, when given: ``tail`` reads one topic). The topics role is only authenticated: its topics may
    not exist yet, and CreateTopics names any refused one itself."""
    asyncio.run(_connect(settings, timeout_s))
    if role != "topics":
        _check_acls(settings, role, topic, timeout_s)


def who(settings: Settings) -> str:
    if settings.kafka_security_protocol.upper().startswith("SASL"):
        return f"user {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism or 'PLAIN'})"
    return "this client"


async def _connect(settings: Settings, timeout_s: float) -> None:
    """Open one authenticated connection to the first bootstrap server that accepts TCP."""
    from aiokafka import errors as aerrors
    from aiokafka.conn import create_conn
    proto = settings.kafka_security_protocol.upper()
    try:
        ssl_context = settings.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise AccessError(f"TLS files unusable (CA {settings.kafka_ssl_cafile or 'system'}, "
                          f"certificate {settings.kafka_ssl_certfile or 'none'}): {exc}") from None
    last = "no bootstrap server given"
    for server in filter(None, (s.strip() for s in settings.kafka_bootstrap.split(","))):
        host, _, port = server.rpartition(":")
        where = f"{server} ({proto})"
        try:
            conn = await asyncio.wait_for(create_conn(
                host, int(port), client_id="streamrec-access-check", request_timeout_ms=int(timeout_s * 1000),
                ssl_context=ssl_context, security_protocol=proto,
                sasl_mechanism=settings.kafka_sasl_mechanism or "PLAIN" if proto.startswith("SASL") else None,
                sasl_plain_username=settings.kafka_sasl_username or None,
                sasl_plain_password=settings.kafka_sasl_password or None), timeout_s)
        except ssl.SSLCertVerificationError as exc:
            raise AccessError(
                f"TLS: the certificate of the broker at {where} is not trusted: {exc.verify_message}. "
                f"STREAMREC_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile or '(system CAs)'} must hold the CA that "
                f"signed it") from None
        except ssl.SSLError as exc:
            raise AccessError(f"TLS handshake with {where} failed ({exc.reason or exc}): is this a TLS listener, "
                              f"and is STREAMREC_KAFKA_SECURITY_PROTOCOL right?") from None
        except (aerrors.SaslAuthenticationFailed, aerrors.AuthenticationFailedError) as exc:
            raise AccessError(f"Kafka at {where} refused the credentials of {who(settings)}: wrong password or "
                              f"unknown user ({_first_line(exc)})") from None
        except aerrors.UnsupportedSaslMechanismError as exc:
            raise AccessError(f"Kafka at {where} does not offer SASL mechanism "
                              f"{settings.kafka_sasl_mechanism or 'PLAIN'} ({_first_line(exc)})") from None
        except (OSError, asyncio.TimeoutError, aerrors.KafkaError) as exc:
            # Not fatal yet: another bootstrap server may answer. TLS or SASL against a listener that expects
            # the other shows up here as a closed connection or no answer.
            last = f"{where}: {_first_line(exc) or type(exc).__name__}"
            continue
        conn.close()
        return
    raise Unreachable(f"cannot reach Kafka: {last} (wrong address, broker down, or a security protocol the "
                      f"listener does not speak)")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _check_acls(settings: Settings, role: str, only: str | None, timeout_s: float) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import GroupAuthorizationFailedError, KafkaError
    needed = acls.grants(settings, role)
    changelogs = [s.name for s in load_specs(settings) if s.internal]
    topic_ops: dict[str, dict[str, acls.Grant]] = {}
    for g in needed:
        if g.resource != "topic" or (only is not None and g.name != only):
            continue
        names = [g.name] if g.pattern == "literal" else [n for n in changelogs if n.startswith(g.name)]
        for name in names:
            topic_ops.setdefault(name, {})[g.operation] = g
    if not topic_ops:
        return
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), client_id="streamrec-access-check",
                             request_timeout_ms=int(timeout_s * 1000), **settings.kafka_python_security())
    try:
        described = {t["name"]: t for t in admin.describe_topics(sorted(topic_ops))}
        for name, ops in topic_ops.items():
            t: dict[str, Any] = described.get(name, {})
            code = t.get("error_code", 0)
            if code == 29:   # TOPIC_AUTHORIZATION_FAILED: not even Describe
                g = next(iter(ops.values()))
                raise AccessError(f"{who(settings)} may not use topic {name!r}: Kafka's ACLs allow it nothing "
                                  f"there; it needs {_ops(ops)} ({g.why}). Grant: streamrec acls apply --role {role}")
            if code == 3:    # UNKNOWN_TOPIC_OR_PARTITION
                raise AccessError(f"topic {name!r} does not exist: run `streamrec topics apply` first")
            allowed = t.get("authorized_operations")
            if allowed is None:   # the broker has no authorizer (or did not say): nothing more to check
                continue
            missing = {op: g for op, g in ops.items() if op.upper() not in allowed}
            if missing:
                raise AccessError(f"{who(settings)} lacks {_ops(missing)} on topic {name!r} "
                                  f"({'; '.join(g.why for g in missing.values())}); it has "
                                  f"{', '.join(sorted(allowed)) or 'nothing'}. "
                                  f"Grant: streamrec acls apply --role {role}")
        for g in (g for g in needed if g.resource == "group"):
            try:
                info = admin.describe_groups([g.name]).get(g.name, {})
            except GroupAuthorizationFailedError:
                info = {"authorized_operations": []}
            except KafkaError:   # e.g. no coordinator yet on a fresh cluster: inconclusive, the consumer will retry
                continue
            allowed = info.get("authorized_operations")
            if allowed is not None and g.operation.upper() not in allowed:
                raise AccessError(f"{who(settings)} lacks {g.operation.upper()} on consumer group {g.name!r} "
                                  f"({g.why}). Grant: streamrec acls apply --role {role}")
    finally:
        admin.close()


def _ops(ops: dict[str, acls.Grant]) -> str:
    return " and ".join(op.upper() for op in sorted(ops))
