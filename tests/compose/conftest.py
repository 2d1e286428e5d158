"""The users' own scenario against a running compose deployment, from the host (``scripts/compose-test.sh``).

These tests need the stack that script brings up: it exports STREAMREC_COMPOSE (a ``docker compose`` command for
its project), KAFKA_HOST_PORT and WORKER_CPU_HTTP_PORT. Without STREAMREC_COMPOSE nothing here is collected, so the
ordinary suite (scripts/test.sh) does not see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

collect_ignore_glob = [] if os.environ.get("STREAMREC_COMPOSE") else ["test_*.py"]


class Compose:
    """The compose project under test, seen from the host: its CLI, the broker's host port, the worker's."""

    def __init__(self) -> None:
        self.cmd = os.environ["STREAMREC_COMPOSE"]
        self.bootstrap = f"127.0.0.1:{os.environ['KAFKA_HOST_PORT']}"
        self.worker_url = f"http://127.0.0.1:{os.environ['WORKER_CPU_HTTP_PORT']}"

    def run(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([self.cmd, *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        if check and p.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}\n"
                                 f"{p.stderr[-3000:]}")
        return p

    def logs(self, service: str, tail: int = 80) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), service, check=False).stdout

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.worker_url + path, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body or b"{}")
            except ValueError:
                return e.code, {"raw": body.decode(errors="replace")}

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.get("/ready")
                if last[0] == 200:
                    return
            except OSError as exc:   # the port is not open yet while the container restarts
                last = exc
            time.sleep(2)
        raise AssertionError(f"worker-cpu not ready after {timeout:.0f} s (last: {last}); logs:\n"
                             f"{self.logs('worker-cpu')}")


@pytest.fixture(scope="session")
def compose() -> Compose:
    return Compose()
