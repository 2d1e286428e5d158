"""The item vocabulary: external item ids <-> token ids, saved as ``vocab.json`` next to a model (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

PAD = 0


class ItemVocab:
    """External item id (string) <-> token id (1..n). Saved as ``vocab.json`` next to the model."""

    def __init__(self, items: Iterable[str] = ()):
        self.id_to_token: dict[str, int] = {}
        self.items: list[str] = [""]   # token 0 = padding
        for item in items:
            self.add(item)

    def add(self, item: str) -> int:
        tok = self.id_to_token.get(item)
        if tok is None:
            tok = self.id_to_token[item] = len(self.items)
            self.items.append(item)
        return tok

    def __len__(self) -> int:        # number of items, padding excluded
        return len(self.items) - 1

    def __contains__(self, item: str) -> bool:
        return item in self.id_to_token

    def encode(self, history: Iterable[str]) -> list[int]:
        """Token ids of the known items of a history (unknown items are skipped: the model can't read them)."""
        return [self.id_to_token[i] for i in history if i in self.id_to_token]

    def save(self, directory: str | Path) -> None:
        Path(directory, "vocab.json").write_text(json.dumps({"items": self.items[1:]}))

    @classmethod
    def load(cls, directory: str | Path) -> "ItemVocab":
        return cls(json.loads(Path(directory, "vocab.json").read_text())["items"])
