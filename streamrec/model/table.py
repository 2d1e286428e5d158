"""The item table of a saved ``ItemLM`` in numpy, for serving without torch (the ONNX Runtime backends).

The ONNX graphs take the item table as an input (``export.py``), so on the ONNX path the worker needs from the
weights only what ``ItemLM.item_embeddings()`` computes -- id embedding + projected text embedding -- and the same
cold-start growth as ``ItemLM.add_items`` / ``set_item_text``. ``ItemTable`` does exactly that from
``model.safetensors`` and ``config.json``: same method names, same numbers (checked against the torch model in
tests/unit/test_lean_serving.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

WEIGHTS = "model.safetensors"
KEYS = ("item_emb.weight", "item_text", "text_proj.weight")


class ItemTable:
    """``item_embeddings() = item_emb + item_text @ text_proj.T`` ([n_items + 1, hidden], float32)."""

    def __init__(self, config: dict, item_emb: np.ndarray, item_text: np.ndarray | None = None,
                 text_proj: np.ndarray | None = None):
        self.config = SimpleNamespace(**config)
        self.item_emb = np.asarray(item_emb, dtype=np.float32)
        if self.config.text_dim:
            if item_text is None or text_proj is None:
                raise ValueError("a model with text_dim > 0 needs item_text and text_proj.weight")
            self.item_text = np.asarray(item_text, dtype=np.float32)
            self.text_proj = np.asarray(text_proj, dtype=np.float32)

    @classmethod
    def load(cls, model_dir: str | Path) -> "ItemTable":
        from safetensors import safe_open   # the Rust reader, no torch
        d = Path(model_dir)
        config = json.loads((d / "config.json").read_text())
        path = d / WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the ONNX backends read the item table from {WEIGHTS} "
                                    f"(ItemLM.save_pretrained writes it)")
        tensors = {}
        with safe_open(str(path), framework="np") as f:
            for key in KEYS:
                if key in f.keys():
                    dtype = f.get_slice(key).get_dtype()
                    if dtype not in ("F32", "F16", "F64"):
                        raise ValueError(f"{path}: {key} is {dtype}; save the model in float32 for the ONNX path")
                    tensors[key] = f.get_tensor(key)
        if "item_emb.weight" not in tensors:
            raise ValueError(f"{path} has no item_emb.weight: not an ItemLM checkpoint")
        return cls(config, tensors["item_emb.weight"], tensors.get("item_text"), tensors.get("text_proj.weight"))

    def item_embeddings(self, tokens: Sequence[int] | None = None) -> np.ndarray:
        """The whole table, or with ``tokens`` only those rows (what serving appends for cold-start items instead
        of recomputing the table), as ``ItemLM.item_embeddings``."""
        if tokens is None:
            w, text = self.item_emb, getattr(self, "item_text", None)
        else:
            idx = np.asarray(list(tokens), dtype=np.int64)
            w, text = self.item_emb[idx], (self.item_text[idx] if self.config.text_dim else None)
        if self.config.text_dim:
            w = w + text @ self.text_proj.T
        return np.ascontiguousarray(w, dtype=np.float32)

    def set_item_text(self, token_ids: Sequence[int], embeddings) -> None:
        if not self.config.text_dim:
            raise ValueError("this model was trained without item text (text_dim=0)")
        self.item_text[np.asarray(list(token_ids), dtype=np.int64)] = np.asarray(embeddings, dtype=np.float32)

    def add_items(self, count: int) -> range:
        """Grow by ``count`` cold-start items: zero id embedding, text via ``set_item_text`` (as ``ItemLM``)."""
        old = self.item_emb.shape[0]
        self.item_emb = np.concatenate([self.item_emb, np.zeros((count, self.item_emb.shape[1]), np.float32)])
        if self.config.text_dim:
            self.item_text = np.concatenate([self.item_text, np.zeros((count, self.item_text.shape[1]), np.float32)])
        self.config.n_items += count
        self.config.vocab_size = old + count
        return range(old, old + count)
