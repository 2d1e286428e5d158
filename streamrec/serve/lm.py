"""The language-model scorer: ``LMScorer`` answers a batch of requests with ONE call of a trained ``ItemLM``.

Backends (``Settings.backend``):

    torch       torch fp32 on the CPU
    onnx        ONNX Runtime fp32 (``export.py``; exported on first use when missing or stale)
    onnx-int8   ONNX Runtime, dynamic int8 backbone matmuls, fp32 item-scoring matmul   <- auto without CUDA
    cuda-bf16   torch bf16 on the GPU (item-scoring matmul in fp32)                     <- auto with CUDA
    cuda-fp8    fp8 e4m3 Linear layers through ``torch._scaled_mm`` (Hopper/Ada): weights per output channel,
                activations per token; the item-scoring matmul in fp8 too (per-item scales)
    cuda-int8   the same with int8 and ``torch._int_mm`` (int32 accumulation)
  The cuda-* backends run top-k on the device and copy back only k ids and scores per request. ``device="cpu"``
  runs their exact arithmetic on the CPU (slowly) -- that is how the tests and ``bench/scorer_bench.py --quality``
  check their ranking quality on a machine without a GPU.

One call per batch: histories are encoded with the vocabulary (unknown items skipped), cut to the last ``max_len``
items, left-padded to the smallest of a few fixed widths (powers of two from 8, and ``max_len``) that fits the
batch's longest history -- so ONNX Runtime and CUDA see at most ~4 shapes per batch size -- and scored in one
forward pass. Excluded items and padding get -inf before the top-k. ``group_lengths=N`` (off by default) trades
the single call, for batches of at least N requests, for one call per padded width present (at most
``len(buckets)``): with short, long-tailed histories (Amazon-like) a large batch padded to its longest history is
mostly padding, which on a CPU costs real time -- 1.45-2.6x throughput at batch 64-1024 with N=32 in
docs/benchmarks.md; below ~32 requests the extra calls cost more than the padding. On a GPU keep it off.

Blend: the ranking is the model's logits plus the bonus terms ``streamrec train`` validated with it (``blend.json``,
``model/blend.py``): co-occurrence with the recent items from the fallback's online counts, and, for a text-aware
model, title similarity for items with fewer than a few interactions (``serve/blend.py``). No file: the model alone.

Empty histories (no item the model knows): the model has never been trained to predict a first item, so those
requests are answered from a popularity prior instead and marked ``fallback=True`` (reason ``empty-history``):
counts of the items seen by ``observe`` (``popularity.Popularity``: total and top-N maintained per count, bounded
in items; warm-started from the ``popularity.json`` {item_id: count} that ``streamrec train`` writes); before any
count exists, the model's own average next-item distribution after one item (mean softmax over up to 256
single-item histories, computed once with the serving backend).

Cold start: ``on_item(item_id, record)`` queues an unknown item with its title (``coldstart.ColdStartQueue``: the
trainer's text, embedded before the next scoring call, up to 256 items per call, kept queued through encoder
failures); ``flush_items`` appends them with ``add_items`` + ``set_item_text`` (``ItemLM``, or ``ItemTable`` on the
ONNX path), computes only their rows (``item_embeddings(tokens)``) and appends them to the backend's table
(``append_rows``: spare capacity, so existing rows are neither recomputed, re-uploaded nor re-quantised). Every
backend takes the item table as data (the ONNX graphs take it as an input, see ``export.py``), so new items are
readable in histories and recommendable at once, with no re-export. Needs a model trained with text
(``text_dim > 0``); otherwise unknown items are ignored. The additions live in memory only (the next training run
learns them properly).

Warm-up: ``build_lm_scorer`` runs one dummy batch per padded width (and batch size 1 and ``max_batch_size``)
before the worker starts, so CUDA initialisation and kernel selection do not happen inside real batches.

No torch on the ONNX path: with ``onnx``/``onnx-int8`` the model is read as an ``ItemTable`` (numpy, from the
safetensors file) instead of an ``ItemLM``, and torch is imported only for the torch backends (and for an export
on first use). The lean CPU image, which has no torch, serves that way.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from streamrec.serve.backends import OrtBackend
from streamrec.serve.blend import ServedBlend
from streamrec.serve.coldstart import ColdStartQueue
from streamrec.serve.popularity import Popularity
from streamrec.model.artifacts import (ENCODER_SUBDIR, FILES, is_current, model_fingerprint, onnx_dir, read_blend,
                                      resolve_model_dir)
from streamrec.model.vocab import PAD, ItemVocab
from streamrec.scoring import CooccurrenceScorer, ScoreRequest, Scored

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "cuda-bf16", "cuda-fp8", "cuda-int8")
_TORCH_MODES = {"torch": "fp32", "cuda-bf16": "bf16", "cuda-fp8": "fp8", "cuda-int8": "int8"}
PRIOR_SAMPLE = 256


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:   # the lean CPU image: no torch, so no CUDA either
        return False
    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``cuda-bf16`` when torch sees a GPU, else ``onnx-int8``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda-bf16" if _cuda_available() else "onnx-int8"
    return backend


def length_buckets(max_len: int, smallest: int = 8) -> list[int]:
    """Padded widths: 8, 16, 32, ... below ``max_len``, then ``max_len`` itself."""
    widths, w = [], smallest
    while w < max_len:
        widths.append(w)
        w *= 2
    return widths + [max_len]


def _load_model(model_dir: Path, backend: str):
    """The ONNX graphs hold the backbone: their backends only need the item table (numpy, no torch)."""
    if backend in ("onnx", "onnx-int8"):
        from streamrec.model.table import ItemTable
        return ItemTable.load(model_dir)
    from streamrec.model.itemlm import ItemLM
    return ItemLM.from_pretrained(model_dir).float().eval()   # CPU fp32 master copy


def _item_table(model, tokens: Sequence[int] | None = None):
    """[n_table, hidden] float32 (with ``tokens``: only those rows): numpy from an ``ItemTable``, a CPU tensor from
    an ``ItemLM``."""
    from streamrec.model.table import ItemTable
    if isinstance(model, ItemTable):
        return model.item_embeddings(tokens)
    import torch
    with torch.no_grad():
        return model.item_embeddings(tokens).detach().float().contiguous()


def _default_threads(backend: str) -> int:
    if backend in _TORCH_MODES:
        import torch
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0))


def _exported_encoder(model_dir: Path, threads: int):
    """The title encoder ``streamrec export`` wrote next to the model (ONNX, no torch), or None."""
    from streamrec.model.text_onnx import OnnxTextEncoder, has_encoder
    directory = onnx_dir(model_dir) / ENCODER_SUBDIR
    return OnnxTextEncoder(directory, threads=threads) if has_encoder(directory) else None


def _read_json(*paths: Path) -> dict:
    for p in paths:
        if p.is_file():
            try:
                v = json.loads(p.read_text())
                if isinstance(v, dict):
                    return v
            except ValueError:
                log.warning("unreadable %s", p)
    return {}


# --- the scorer ---------------------------------------------------------------------------------------------------

def model_version(model_dir: str | Path) -> str:
    """The trainer's version (``metrics.json``, else ``train_config.json`` "version"), else a hash of the config
    and weights."""
    weights, artefacts = resolve_model_dir(model_dir)
    for name in ("metrics.json", "train_config.json"):
        v = _read_json(weights / name, artefacts / name).get("version")
        if v:
            return str(v)
    return "itemlm-" + model_fingerprint(weights)[:12]


class LMScorer:
    """The ``Scorer`` over one trained model directory (``ItemLM.save_pretrained`` + ``vocab.json``)."""

    name = "itemlm"

    def __init__(self, model_dir: str | Path, backend: str = "auto", *, device: str | None = None,
                 threads: int | None = None, max_len: int | None = None, fallback: Any = None,
                 embed_fn: Callable[[list[str]], Any] | None = None, onnx_path: str | Path | None = None,
                 export_if_missing: bool = True, group_lengths: int = 0, cooc_weight: float | None = None,
                 text_weight: float | None = None):
        self.model_dir, artefacts = resolve_model_dir(model_dir)
        self.backend_name = resolve_backend(backend)
        self.model = _load_model(self.model_dir, self.backend_name)
        self.vocab = ItemVocab.load(self.model_dir)
        cfg = self.model.config
        if len(self.vocab) != cfg.n_items:
            raise ValueError(f"{self.model_dir}: vocab.json has {len(self.vocab)} items, the model {cfg.n_items}")
        self.version = model_version(self.model_dir)
        trained_len = getattr(cfg, "max_len", None) or cfg.max_position_embeddings   # the trainer records max_len
        self.max_len = min(max_len or trained_len, cfg.max_position_embeddings)
        text_model = _read_json(self.model_dir / "train_config.json",
                                artefacts / "train_config.json").get("text_model") or None
        self.buckets = length_buckets(self.max_len)
        self.group_lengths = group_lengths
        self.fallback = fallback          # the app answers from it when score() raises
        self.threads = threads or _default_threads(self.backend_name)
        self._lock = threading.RLock()
        self.cold_start = ColdStartQueue(
            cfg.text_dim, embed_fn or (_exported_encoder(self.model_dir, self.threads) if cfg.text_dim else None),
            text_model)
        self._prior: np.ndarray | None = None
        self.popularity = Popularity()
        self._pop_lock = threading.Lock()
        counts = {str(k): int(v) for k, v in
                  _read_json(self.model_dir / "popularity.json", artefacts / "popularity.json").items()}
        self.popularity.update(counts)
        self.cold_start_added = 0
        # the served ranking adds the bonus terms validated with the model (blend.json, serve/blend.py)
        self.blend = ServedBlend(read_blend(self.model_dir), cooc_weight, text_weight)
        for item_id, n in counts.items():
            if item_id in self.vocab:
                self.blend.count(self.vocab.id_to_token[item_id], n)
        self.backend = self._make_backend(device, onnx_path, export_if_missing)
        self._refresh_table()

    # --- construction ---------------------------------------------------------------------------------------
    def _make_backend(self, device, onnx_path, export_if_missing):
        name = self.backend_name
        if name in ("onnx", "onnx-int8"):
            kind = "fp32" if name == "onnx" else "int8"
            return OrtBackend(self._onnx_file(kind, onnx_path, export_if_missing), name, self.threads)
        import torch
        from streamrec.serve.torch_backends import TorchBackend
        mode = _TORCH_MODES[name]
        if device is None:
            device = "cpu" if name == "torch" else "cuda"
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"backend {name} needs a CUDA device (torch.cuda.is_available() is False); "
                               f"use onnx-int8 or torch on the CPU")
        if mode == "fp8" and torch.device(device).type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            raise RuntimeError("cuda-fp8 needs compute capability 8.9+ (Ada/Hopper); use cuda-int8 or cuda-bf16")
        return TorchBackend(self.model, name, mode, device)

    def _onnx_file(self, kind: str, onnx_path, export_if_missing: bool) -> Path:
        if onnx_path is not None:   # an explicit file: trust it
            return Path(onnx_path)
        directory = onnx_dir(self.model_dir)
        if is_current(self.model_dir, directory, [kind]):
            return directory / FILES[kind]
        if not export_if_missing:
            raise FileNotFoundError(f"no current {FILES[kind]} under {directory}; run python -m streamrec.model.export")
        log.info("exporting %s to ONNX (missing or made from other weights)", self.model_dir)
        try:
            from streamrec.model.export import export
        except ImportError as exc:   # the lean CPU image serves ONNX but cannot make it
            raise FileNotFoundError(f"no current {FILES[kind]} under {directory}, and exporting needs torch ({exc}): "
                                    f"run `streamrec export {self.model_dir}` where the [torch] extra is "
                                    f"installed (the compose `export` service)") from exc
        try:
            return export(self.model_dir, ("fp32", "int8"), directory, threads=self.threads)[kind]
        except OSError:   # e.g. a read-only model directory: export into a cache keyed by the weights
            import tempfile
            cache = Path(tempfile.gettempdir()) / "streamrec-onnx" / model_fingerprint(self.model_dir)[:16]
            if not is_current(self.model_dir, cache, [kind]):
                export(self.model_dir, ("fp32", "int8"), cache, threads=self.threads)
            return cache / FILES[kind]

    def _refresh_table(self) -> None:
        self.backend.set_table(_item_table(self.model))
        self._prior = None
        if self.model.config.text_dim:
            self.blend.set_text(self.model.item_text)

    # --- Scorer protocol --------------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        with self._lock:
            self.flush_items()
            tokens = [self.vocab.encode(r.history)[-self.max_len:] for r in requests]
            out: list[Scored | None] = [None] * len(requests)
            rows = [i for i, t in enumerate(tokens) if t and r_k(requests[i]) > 0]
            split = bool(self.group_lengths) and len(rows) >= self.group_lengths
            groups: dict[int, list[int]] = {}
            for i in rows:   # one group = one model call; split: one group per padded width
                groups.setdefault(self._width(len(tokens[i])) if split else 0, []).append(i)
            for group in groups.values():
                self._score_rows(group, tokens, requests, out)
            for i, r in enumerate(requests):
                if out[i] is None:
                    out[i] = self._prior_answer(r)
            return out   # type: ignore[return-value]

    def _width(self, length: int) -> int:
        return next(w for w in self.buckets if w >= length)

    def _score_rows(self, rows: list[int], tokens: list[list[int]], requests: Sequence[ScoreRequest],
                    out: list) -> None:
        width = self._width(max(len(tokens[i]) for i in rows))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(rows):
            ids[j, width - len(tokens[i]):] = tokens[i]
        mask = (ids != PAD).astype(np.int64)
        excl_r, excl_c = [], []
        tok = self.vocab.id_to_token
        for j, i in enumerate(rows):
            cols = [tok[x] for x in requests[i].exclude if x in tok]
            excl_r.extend([j] * len(cols))
            excl_c.extend(cols)
        excl = (np.asarray(excl_r, dtype=np.int64), np.asarray(excl_c, dtype=np.int64))
        k = max(requests[i].k for i in rows)
        bonus = self.blend.bonus([tokens[i] for i in rows], [requests[i].history for i in rows], self.vocab,
                                 self.fallback)
        vals, idx = self.backend.topk(ids, mask, excl, k, bonus)   # the model call
        names = self.vocab.items
        for j, i in enumerate(rows):
            items = [(names[t], float(s)) for s, t in zip(vals[j], idx[j]) if np.isfinite(s)]
            out[i] = Scored(items[: requests[i].k], self.name, self.version)

    def observe(self, history: Sequence[str], item_id: str) -> None:
        with self._pop_lock:
            self.popularity.add(item_id)
        token = self.vocab.id_to_token.get(item_id)
        if token is not None:
            self.blend.count(token)
        if self.fallback is not None:   # keep the fallback as current as it would be on its own
            self.fallback.observe(history, item_id)

    def on_item(self, item_id: str, record: dict | None) -> None:
        """Catalog update: queue an unknown item that has a title, so the model can score it (cold start)."""
        if record is None or not self.model.config.text_dim or item_id in self.vocab:
            return
        self.cold_start.offer(item_id, record.get("title"))

    # --- cold start ---------------------------------------------------------------------------------------------
    def flush_items(self) -> int:
        """Add up to ``coldstart.FLUSH_LIMIT`` queued cold-start items now (``score`` does it first thing); returns
        how many were added. Only the new rows are computed and handed to the backend (``append_rows``): the table
        of existing items is neither recomputed nor uploaded again."""
        with self._lock:
            embedded = self.cold_start.embed_next(self.vocab)
            if embedded is None:
                return 0
            pending, emb = embedded
            new = self.model.add_items(len(pending))
            for (item_id, _), token in zip(pending, new):
                if self.vocab.add(item_id) != token:
                    raise RuntimeError("vocabulary and item table out of step")
            self.model.set_item_text(list(new), emb)
            rows = _item_table(self.model, new)
            if not self.backend.append_rows(rows):   # past the backend's spare capacity: one full upload
                self._refresh_table()
            elif self.model.config.text_dim:
                self.blend.set_text(self.model.item_text)
            self._prior = None   # the model prior covers every item: recomputed on its next use
            self.cold_start.done(pending)
            self.cold_start_added += len(pending)
            log.info("cold start: %d item(s) added, %d items now", len(pending), len(self.vocab))
            return len(pending)

    def warm_up(self, batch_sizes: Sequence[int] = (1,)) -> int:
        """One dummy batch per padded width and batch size through the scoring path, before the worker reports
        ready: on a GPU the CUDA context, cuBLASLt handles and kernel choice are set up here rather than inside the
        first real batches, under the scorer timeout. Returns the number of model calls made."""
        calls = 0
        with self._lock:
            for width in self.buckets:
                history = tuple(self.vocab.items[1 + i % len(self.vocab)] for i in range(width))
                for n in batch_sizes:
                    requests = [ScoreRequest(f"warm-up-{j}", history, 10) for j in range(n)]
                    self._score_rows(list(range(n)), [self.vocab.encode(history)] * n, requests, [None] * n)
                    calls += 1
        log.info("warmed up %s: %d model calls (widths %s, batch sizes %s)", self.backend_name, calls, self.buckets,
                 list(batch_sizes))
        return calls

    # --- empty histories ------------------------------------------------------------------------------------
    def _prior_answer(self, r: ScoreRequest) -> Scored:
        k = r_k(r)
        if k <= 0:
            return Scored([], self.name, self.version)
        with self._pop_lock:   # observe() counts on the event loop's thread while this runs in the model's
            total = self.popularity.total
            ranked = self.popularity.ranked(k, r.exclude) if total else []
        if ranked:
            items = [(i, n / total) for i, n in ranked if i not in r.exclude]
            reason = "empty-history: popularity"
        else:
            prior = self.model_prior()
            tok = self.vocab.id_to_token
            p = prior.copy()
            p[[tok[x] for x in r.exclude if x in tok]] = -np.inf
            order = np.argsort(-p, kind="stable")[: k]
            items = [(self.vocab.items[t], float(p[t])) for t in order if np.isfinite(p[t]) and t != PAD]
            reason = "empty-history: model prior"
        return Scored(items[:k], self.name, self.version, fallback=True, fallback_reason=reason)

    def model_prior(self) -> np.ndarray:
        """[n_table] mean next-item probability after one item (a sample of up to 256 items); cached."""
        if self._prior is None:
            n = len(self.vocab)
            rng = np.random.default_rng(0)
            sample = rng.choice(np.arange(1, n + 1), size=min(PRIOR_SAMPLE, n), replace=False)
            ids = np.zeros((len(sample), self.buckets[0]), dtype=np.int64)
            ids[:, -1] = sample
            logits = self.backend.logits(ids, (ids != PAD).astype(np.int64)).astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            prior = p.mean(axis=0)
            prior[PAD] = -np.inf
            self._prior = prior
        return self._prior

    def info(self) -> dict[str, Any]:
        return {"scorer": self.name, "version": self.version, "backend": self.backend_name,
                **self.blend.info(),
                "items": len(self.vocab), "cold_start_added": self.cold_start_added, "buckets": self.buckets,
                "model_calls": self.backend.calls}


def r_k(r: ScoreRequest) -> int:
    return max(0, int(r.k))


def build_lm_scorer(settings, model_dir: str | Path | None = None, fallback: Any = None) -> LMScorer:
    """The worker's language-model scorer (``model_dir``, default ``Settings.model_dir``; ``Settings.backend``),
    with a co-occurrence fallback: ``fallback`` when given (a hot-swap keeps the running one and its online
    counts), else loaded from ``cooc.json`` in the model directory when the trainer left one there."""
    model_dir = model_dir or settings.model_dir
    if not model_dir:
        raise ValueError("the lm scorer needs a model directory (--model-dir / STREAMREC_MODEL_DIR)")
    if fallback is None:
        weights, artefacts = resolve_model_dir(model_dir)
        cooc = next((p for p in (artefacts / "cooc.json", weights / "cooc.json") if p.is_file()), None)
        fallback = CooccurrenceScorer.load(cooc) if cooc is not None else CooccurrenceScorer()
    if settings.scorer_threads and resolve_backend(settings.backend) in _TORCH_MODES:
        import torch   # torch backends take it from here, ONNX Runtime from its session options
        torch.set_num_threads(settings.scorer_threads)
    scorer = LMScorer(model_dir, backend=settings.backend, fallback=fallback,
                      threads=settings.scorer_threads or None, group_lengths=settings.group_lengths,
                      **({} if settings.blend else {"cooc_weight": 0.0, "text_weight": 0.0}))
    scorer.warm_up(sorted({1, settings.max_batch_size}))   # before the worker starts, so before it is ready
    return scorer
