"""Model backends of ``serve.lm.LMScorer``. Here: ONNX Runtime on the CPU, numpy only (no torch: the lean CPU image
serves with it). The torch backends (CPU fp32, CUDA bf16 / fp8 / int8) are in ``torch_backends.py``.

A backend holds one copy of the model for one device and precision, takes the item table as data
(``set_table``: new cold-start items need no re-export) and answers ``topk(ids, mask, exclusions, k, bonus)`` for
a padded batch in one call (``bonus``: sparse terms (rows, cols, values) added to the logits first -- the blend of
``model/blend.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def spare_capacity(n: int) -> int:
    """Rows to allocate for an item table of ``n`` rows: room for cold-start items to be appended in place (a full
    re-upload only when it runs out: about every n/4 new items)."""
    return n + max(256, n // 4)


Bonus = list[tuple[np.ndarray, np.ndarray, np.ndarray]]   # sparse terms (rows, cols, values), each without repeats


def _np_topk(logits: np.ndarray, excl: tuple[np.ndarray, np.ndarray], k: int,
             bonus: Bonus = ()) -> tuple[np.ndarray, np.ndarray]:
    for rows, cols, values in bonus:
        logits[rows, cols] += values
    if len(excl[0]):
        logits[excl] = -np.inf
    k = min(k, logits.shape[1])
    if k < logits.shape[1]:
        idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(logits.shape[1]), logits.shape).copy()
    vals = np.take_along_axis(logits, idx, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


class OrtBackend:
    """ONNX Runtime on the CPU; the item table is fed as an input on every call (no copy: a numpy view)."""

    def __init__(self, path: Path, name: str, threads: int):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3   # the overridable item_table initializer is intended
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name, self.path, self.calls = name, path, 0
        self.table: np.ndarray | None = None   # a view of the first rows of _buf: what the session is fed
        self._buf: np.ndarray | None = None

    def set_table(self, table) -> None:   # numpy (ItemTable) or a CPU torch tensor (ItemLM): both read as arrays
        table = np.asarray(table, dtype=np.float32)
        n = table.shape[0]
        self._buf = np.empty((spare_capacity(n), table.shape[1]), dtype=np.float32)
        self._buf[:n] = table
        self.table = self._buf[:n]

    def append_rows(self, rows) -> bool:
        """Cold-start rows (numpy or a CPU tensor) after the existing ones, in place; False when the spare capacity
        is used up."""
        rows = np.asarray(rows, dtype=np.float32)
        n, m = self.table.shape[0], self.table.shape[0] + rows.shape[0]
        if m > self._buf.shape[0]:
            return False
        self._buf[n:m] = rows
        self.table = self._buf[:m]
        return True

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "item_table": self.table})[0]

    def topk(self, ids, mask, excl, k, bonus: Bonus = ()):
        return _np_topk(self.logits(ids, mask), excl, k, bonus)
