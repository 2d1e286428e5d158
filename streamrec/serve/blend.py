"""The blend of ``model/blend.py`` at serving time: the sparse bonus terms ``LMScorer`` adds to the logits.

    co-occurrence   cooc_weight x the fallback's ``neighbour_scores`` of each history (online counts)
    young titles    text_weight x cos(title(c), mean unit title of the last ``text_window`` history items), for the
                    ``text_top`` most similar of the items with a title and fewer than ``young_below``
                    interactions counted so far (the trainer's counts from ``popularity.json``, then every event
                    the worker applies)

Weights come from the model's ``blend.json`` (chosen on validation by ``streamrec train``); without it both are 0
and the model is served alone. Numpy only: the lean ONNX image serves it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

Bonus = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


class ServedBlend:
    """The weights of one model's blend and what its terms need: interactions per token (online) and unit titles."""

    def __init__(self, record: Mapping, cooc_weight: float | None = None, text_weight: float | None = None):
        self.cooc_weight = float(record.get("cooc_weight", 0.0) if cooc_weight is None else cooc_weight)
        self.text_weight = float(record.get("text_weight", 0.0) if text_weight is None else text_weight)
        self.young_below = int(record.get("young_below", 5))
        self.text_window = int(record.get("text_window", 5))
        self.text_top = int(record.get("text_top", 5))
        # Interactions per token. Not Popularity's counts: those are bounded and prune the rarest items first,
        # which are exactly the young ones this term needs to count (8 bytes per item of the table).
        self._counts = np.zeros(0, dtype=np.int64)
        self._unit_text: np.ndarray | None = None      # [n_table, d] unit title embeddings (0 rows: no title)
        self._has_text: np.ndarray | None = None

    # --- state -------------------------------------------------------------------------------------------------
    def count(self, token: int, n: int = 1) -> None:
        if token >= len(self._counts):
            self._counts = np.concatenate([self._counts, np.zeros(token + 1 - len(self._counts) + 1024, np.int64)])
        self._counts[token] += n

    def set_text(self, item_text: Any) -> None:
        """The model's title embeddings (numpy, or a CPU tensor): again after cold-start items were added."""
        if not self.text_weight:
            return
        t = np.asarray(item_text, dtype=np.float32)
        norm = np.linalg.norm(t, axis=1, keepdims=True)
        self._unit_text = np.divide(t, norm, out=np.zeros_like(t), where=norm > 0)
        self._has_text = norm[:, 0] > 0
        self._has_text[0] = False   # padding

    def young(self) -> np.ndarray:
        """Token ids of the items the title term applies to."""
        n = len(self._has_text)
        counts = self._counts[:n] if len(self._counts) >= n else np.pad(self._counts, (0, n - len(self._counts)))
        return np.flatnonzero(self._has_text & (counts < self.young_below))

    # --- the bonus ---------------------------------------------------------------------------------------------
    def bonus(self, tokens: Sequence[Sequence[int]], histories: Sequence[Sequence[str]], vocab, fallback) -> Bonus:
        """The terms for a batch (``tokens``: each history's token ids; ``histories``: the item ids)."""
        terms: Bonus = []
        if self.cooc_weight and hasattr(fallback, "blend_scores"):
            get = vocab.id_to_token.get
            per_row = fallback.blend_scores(histories)
            # flat comprehensions, then numpy: this runs for every request, the Python per item is what it costs
            rows = np.repeat(np.arange(len(per_row), dtype=np.int64), [len(s) for s in per_row])
            cols = np.fromiter((get(i, -1) for s in per_row for i in s), np.int64, len(rows))
            values = np.fromiter((v for s in per_row for v in s.values()), np.float32, len(rows))
            known = cols >= 0   # neighbours the model's vocabulary does not have (yet) cannot be ranked
            terms.append((rows[known], cols[known], self.cooc_weight * values[known]))
        if self.text_weight and self._unit_text is not None:
            young = self.young()
            if young.size:
                q = np.stack([self._unit_text[list(t[-self.text_window:])].mean(0) for t in tokens])
                sims = q @ self._unit_text[young].T                               # [B, n_young]
                m = min(self.text_top, young.size)                               # the m most similar per row
                best = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < young.size else \
                    np.broadcast_to(np.arange(young.size), sims.shape)
                rows = np.repeat(np.arange(len(tokens), dtype=np.int64), m)
                values = self.text_weight * np.take_along_axis(sims, best, 1)
                terms.append((rows, young[best].ravel(), values.ravel().astype(np.float32)))
        return terms

    def info(self) -> dict:
        return {"cooc_weight": self.cooc_weight, "text_weight": self.text_weight, "young_below": self.young_below}
