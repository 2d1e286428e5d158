"""What a scorer is: a request, an answer, and the ``Scorer`` protocol every scorer implements.

A scorer answers a *batch* of requests in one call, so the language-model scorer can run one forward pass per
micro-batch (``serve/batching.py``); the co-occurrence scorer simply loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Collection, Iterator, Protocol, Sequence


@dataclass(frozen=True)
class ScoreRequest:
    user_id: str
    history: tuple[str, ...]                 # item ids, oldest first
    k: int = 10
    # never recommend these (already consumed, unavailable); scorers ask ``in`` (and may iterate, len)
    exclude: Collection[str] = field(default_factory=frozenset)
    state_version: int = 0                   # events applied to the user's state so far: newer state wins


class Exclusion(Collection[str]):
    """A user's seen items plus the catalog's unavailable ones, without copying either: built per request, while
    the unavailable set is shared by every request (it can hold the whole catalog's deletions)."""

    __slots__ = ("seen", "unavailable")

    def __init__(self, seen: AbstractSet[str], unavailable: AbstractSet[str]):
        self.seen, self.unavailable = seen, unavailable

    def __contains__(self, item: object) -> bool:
        return item in self.seen or item in self.unavailable

    def __iter__(self) -> Iterator[str]:
        yield from self.unavailable
        unavailable = self.unavailable
        yield from (i for i in self.seen if i not in unavailable)

    def __len__(self) -> int:
        unavailable = self.unavailable
        return len(unavailable) + sum(1 for i in self.seen if i not in unavailable)


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
