"""What a scorer is: a request, an answer, and the ``Scorer`` protocol every scorer implements.

A scorer answers a *batch* of requests in one call, so the language-model scorer can run one forward pass per
micro-batch (``serve/batching.py``); the co-occurrence scorer simply loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class ScoreRequest:
    user_id: str
    history: tuple[str, ...]                 # item ids, oldest first
    k: int = 10
    exclude: frozenset[str] = field(default_factory=frozenset)   # never recommend these (already consumed)
    state_version: int = 0                   # events applied to the user's state so far: newer state wins


@dataclass
class Scored:
    items: list[tuple[str, float]]           # best first
    scorer: str
    version: str
    fallback: bool = False
    fallback_reason: str = ""


class Scorer(Protocol):
    name: str
    version: str

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]: ...

    def observe(self, history: Sequence[str], item_id: str) -> None:
        """Learn online from an applied event (history is the user's items before it). May do nothing."""
