"""``streamrec worker --processes N``: N worker processes on one machine, one per core.

One Python process runs one event loop on one core; a worker scales out by partitions, so N processes in the same
consumer group share the ``interactions`` partitions (at most their count) like N machines would. Each child gets
its own RocksDB directory (``<data_dir>/p<i>``) and web port (``web_port + i``). The supervisor forwards SIGTERM /
SIGINT to every child, and when one child exits it stops the others and exits with that child's code, so the
orchestrator restarts the set as it would restart one worker.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamrec.config import Settings, env_name


def child_env(settings: Settings, index: int, base: dict[str, str]) -> dict[str, str]:
    """The environment of child ``index``: every setting spelled out (flags included), its own dir and port."""
    values = dataclasses.asdict(settings)
    values.update(processes=1, data_dir=str(Path(settings.data_dir) / f"p{index}"),
                  web_port=settings.web_port + index)
    env = dict(base)
    for name, value in values.items():
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def run(settings: Settings, base_env: dict[str, str]) -> int:
    envs = [child_env(settings, i, base_env) for i in range(settings.processes)]
    for env in envs:   # Faust creates its data dir but not the parents
        Path(env[env_name("data_dir")]).parent.mkdir(parents=True, exist_ok=True)
    children = [subprocess.Popen([sys.executable, "-m", "streamrec", "worker"], env=env) for env in envs]

    def forward(signum, _frame) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(c.poll() is None for c in children):
        time.sleep(0.5)
    code = next(c.returncode for c in children if c.returncode is not None)
    forward(signal.SIGTERM, None)
    for c in children:
        try:
            c.wait(60)
        except subprocess.TimeoutExpired:
            c.kill()
    return code
