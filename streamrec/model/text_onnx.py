"""The title encoder as ONNX, run without torch: cold-start embeddings on the lean CPU image.

``text.export_encoder`` (torch side, run by ``streamrec export``) writes a directory:

    model.onnx       the sentence encoder's transformer: input_ids, attention_mask[, token_type_ids]
                     -> last_hidden_state [batch, seq, dim]
    tokenizer.json   its fast tokenizer (the ``tokenizers`` library reads it, no transformers needed)
    encoder.json     source model, max_seq_length, dim, pooling, the export-time check against sentence-transformers

``OnnxTextEncoder`` tokenizes (truncated at max_seq_length, padded per batch), runs the graph, mean-pools over the
attention mask and L2-normalises: what sentence-transformers' Transformer -> Pooling(mean) -> Normalize does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
META = "encoder.json"


def has_encoder(directory: str | Path) -> bool:
    d = Path(directory)
    return all((d / f).is_file() for f in (MODEL, TOKENIZER, META))


class OnnxTextEncoder:
    """``encoder(texts) -> [len(texts), dim]`` float32, L2-normalised."""

    def __init__(self, directory: str | Path, threads: int = 1, batch_size: int = 64):
        import onnxruntime as ort
        from tokenizers import Tokenizer
        d = Path(directory)
        self.meta = json.loads((d / META).read_text())
        self.dim = int(self.meta["dim"])
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(d / TOKENIZER))
        self.tokenizer.enable_truncation(int(self.meta["max_seq_length"]))
        self.tokenizer.enable_padding(pad_id=int(self.meta.get("pad_id", 0)),
                                      pad_token=self.meta.get("pad_token", "[PAD]"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(d / MODEL), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = [self._batch(list(texts[i:i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch([str(t) for t in texts])
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.asarray([e.type_ids for e in enc], dtype=np.int64)
        hidden = self.session.run(None, feed)[0].astype(np.float32)
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)
