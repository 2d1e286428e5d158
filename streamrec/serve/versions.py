"""Model versions under one model directory, and swapping them into a running worker (no restart).

    $STREAMREC_MODEL_DIR/v1/ ...        each a `streamrec train` output (or its model/ directory)
    $STREAMREC_MODEL_DIR/v2/ ...
    $STREAMREC_MODEL_DIR/CURRENT        optional: the name of the subdirectory to serve ("v1")

The version served is the one CURRENT names, else the newest subdirectory holding a model (by the modification time
of its ``config.json``: an ONNX export written into an older version later must not make it the newest). Rolling
back is the same operation as rolling out: write the old name to CURRENT. A model directory that is itself one
trained model (no versions) is served as before and never watched.

A candidate is loaded off the event loop (``ModelWatcher``: its own daemon thread, exporting to ONNX if needed),
then checked: the export's own checks (ONNX fp32 vs torch, int8 vs fp32, in ``onnx/export.json``) must be within
the limits below, and the scorer must answer a handful of requests sampled from its own vocabulary with items.
Only then is it swapped into the micro-batcher, between batches (``MicroBatcher.swap``); the co-occurrence fallback
and its online counts stay. A version that fails is refused once (log line + ``streamrec_model_refusals_total``)
and not tried again until its files change; the old one keeps serving.

The decisions (``select``, ``plan``, ``check_export``, ``check_answers``) are pure functions of their inputs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from streamrec import metrics
from streamrec.model.artifacts import ONNX_SUBDIR, read_report, resolve_model_dir
from streamrec.scoring import ScoreRequest, Scored

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
# Limits on the export's own checks (model/export.py): what tests/unit/test_export.py expects of a good export,
# with some room for tiny models.
MAX_FP32_ABS_DIFF = 1e-3
MIN_FP32_TOP10_OVERLAP = 0.95
MIN_INT8_TOP10_OVERLAP = 0.8
CHECK_REQUESTS = 8


class RefusedModel(Exception):
    """A model version that must not be served; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- which directory --------------------------------------------------------------------------------------------

def has_model(model_dir: str | Path) -> bool:
    """A `streamrec train` output directory or its model/ subdirectory (HF config.json next to vocab.json)."""
    return any((Path(model_dir) / sub / "config.json").is_file() for sub in ("", "model"))


def is_versioned(root: str | Path) -> bool:
    """A directory of model versions (not itself a model)."""
    return bool(root) and Path(root).is_dir() and not has_model(root)


def _trained_at(version: Path) -> float:
    return (resolve_model_dir(version)[0] / "config.json").stat().st_mtime


def select(root: str | Path) -> Path | None:
    """The version to serve: the subdirectory CURRENT names, else the newest one holding a model; None when there
    is none. A CURRENT that does not name a plain subdirectory raises ``RefusedModel``; whether the directory it
    names holds a good model is for the checks to say."""
    root = Path(root)
    current = root / CURRENT
    if current.is_file():
        name = current.read_text().strip()
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise RefusedModel("current", f"{current} holds {name!r}, not the name of a subdirectory of {root}")
        return root / name
    versions = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and has_model(d)]
    return max(versions, key=lambda d: (_trained_at(d), d.name), default=None)


def version_of(root: str | Path, model_dir: str | Path) -> Path | None:
    """The version subdirectory of ``root`` that ``model_dir`` (e.g. a scorer's weights dir, ``v1/model``) is in."""
    root, model_dir = Path(root).resolve(), Path(model_dir).resolve()
    try:
        rel = model_dir.relative_to(root)
    except ValueError:
        return None
    return root / rel.parts[0] if rel.parts else None


def stamp(version: Path) -> tuple | None:
    """What a version's files look like (names, sizes, times; the ONNX exports the worker writes left out): a
    refused version is tried again only when this changes, e.g. once a slow copy has finished."""
    if not version.is_dir():
        return None
    return tuple(sorted((str(p.relative_to(version)), s.st_size, s.st_mtime_ns)
                        for p in version.rglob("*") if ONNX_SUBDIR not in p.relative_to(version).parts
                        and p.is_file() and (s := p.stat())))


def plan(selected: Path | None, serving: Path | None, refused: dict[Path, tuple | None],
         selected_stamp: tuple | None) -> Path | None:
    """The version to load now, or None: the selected one, unless it is already served or was refused as it is."""
    if selected is None or selected == serving:
        return None
    if selected in refused and refused[selected] == selected_stamp:
        return None
    return selected


# --- the checks -------------------------------------------------------------------------------------------------

def check_export(report: dict | None, kind: str) -> list[str]:
    """Problems with an ONNX export's own checks (``onnx/export.json``) for serving ``kind`` (fp32 or int8)."""
    if not report:
        return ["no export report (onnx/export.json)"]
    checks = report.get("checks") or {}
    problems = []

    def need(key: str, ok: Callable[[Any], bool], what: str) -> None:
        value = checks.get(key)
        if value is None:
            problems.append(f"{key} missing from the export report")
        elif not ok(value):
            problems.append(f"{key} = {value} ({what})")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    need("fp32_max_abs_diff_vs_torch", lambda v: number(v) and v <= MAX_FP32_ABS_DIFF, f"limit {MAX_FP32_ABS_DIFF}")
    need("fp32_padding_is_-inf", lambda v: v is True, "padding must score -inf")
    need("fp32_top10_overlap_vs_torch", lambda v: number(v) and v >= MIN_FP32_TOP10_OVERLAP,
         f"at least {MIN_FP32_TOP10_OVERLAP}")
    if kind == "int8":
        need("int8_top10_overlap_vs_fp32", lambda v: number(v) and v >= MIN_INT8_TOP10_OVERLAP,
             f"at least {MIN_INT8_TOP10_OVERLAP}")
    return problems


def sample_requests(items: Sequence[str], n: int = CHECK_REQUESTS, seed: int = 0) -> list[ScoreRequest]:
    """``n`` requests with histories of 1-5 items drawn from a model's vocabulary (``items``, padding excluded)."""
    rng = random.Random(seed)
    return [ScoreRequest(f"model-check-{i}", tuple(rng.choice(items) for _ in range(1 + i % 5)), 10)
            for i in range(n)] if items else []


def check_answers(requests: Sequence[ScoreRequest], results: Sequence[Scored], version: str) -> list[str]:
    """Problems with a candidate's answers to ``sample_requests``: each must come from the model itself (not a
    fallback), carry its version, and hold items with finite scores."""
    if not requests:
        return ["the model has no items"]
    if len(results) != len(requests):
        return [f"{len(results)} answers to {len(requests)} requests"]
    problems = []
    for r, s in zip(requests, results):
        if s.fallback:
            problems.append(f"{r.user_id}: answered by a fallback ({s.fallback_reason})")
        elif not s.items:
            problems.append(f"{r.user_id}: no items")
        elif not all(math.isfinite(score) for _, score in s.items):
            problems.append(f"{r.user_id}: non-finite scores")
        elif s.version != version:
            problems.append(f"{r.user_id}: version {s.version!r}, expected {version!r}")
    return problems


# --- loading (blocking: runs in the watcher's thread) -------------------------------------------------------------

def load_version(version: Path, settings: Any, fallback: Any) -> Any:
    """Build, export if needed, and check the LM scorer of ``version``; ``RefusedModel`` when it must not serve."""
    if not version.is_dir():
        raise RefusedModel("missing", f"{version} is not a directory")
    if not has_model(version):
        raise RefusedModel("not-a-model", f"{version} holds no trained model (config.json)")
    from streamrec.serve.lm import build_lm_scorer   # onnxruntime: only once there is a model
    try:
        scorer = build_lm_scorer(settings, version, fallback)
    except Exception as exc:
        raise RefusedModel("load", f"{type(exc).__name__}: {exc}") from exc
    onnx_path = getattr(scorer.backend, "path", None)
    if onnx_path is not None:   # the ONNX backends: the export's own checks must have passed
        problems = check_export(read_report(Path(onnx_path).parent),
                                "fp32" if scorer.backend_name == "onnx" else "int8")
        if problems:
            raise RefusedModel("export-check", "; ".join(problems))
    requests = sample_requests(scorer.vocab.items[1:])
    try:
        results = scorer.score(requests)
    except Exception as exc:
        raise RefusedModel("score-check", f"scoring failed: {type(exc).__name__}: {exc}") from exc
    problems = check_answers(requests, results, scorer.version)
    if problems:
        raise RefusedModel("score-check", "; ".join(problems[:3]))
    return scorer


def note_serving(version: str, previous: str | None = None) -> None:
    if previous is not None and previous != version:
        try:
            metrics.MODEL_VERSION.remove(previous)
        except KeyError:
            pass
    metrics.MODEL_VERSION.labels(version).set(1)


# --- the watcher ----------------------------------------------------------------------------------------------------

class ModelWatcher:
    """Polled by the worker's timer: selects, loads (in its own daemon thread), checks and swaps model versions."""

    def __init__(self, root: str | Path, batcher: Any, load: Callable[[Path], Any],
                 catalog: Callable[[], Iterable[tuple[str, dict | None]]] | None = None):
        from streamrec.serve.batching import DaemonThreadExecutor
        self.root, self.batcher, self.load = Path(root).resolve(), batcher, load
        self.catalog = catalog   # the item records seen so far: a new model learns the cold-start items too
        self.serving = version_of(self.root, getattr(batcher.scorer, "model_dir", ""))
        self.refused: dict[Path, tuple | None] = {}
        self._bad_current: str | None = None
        self._pool = DaemonThreadExecutor("model-loader")   # a stop never waits for a load in progress

    @classmethod
    def for_worker(cls, settings: Any, scorer: Any,
                   catalog: Callable[[], Iterable[tuple[str, dict | None]]] | None = None) -> "ModelWatcher | None":
        """The watcher for a worker's scorer, or None when there is nothing to watch."""
        from streamrec.serve.batching import MicroBatcher
        from streamrec.serve.lm import LMScorer
        if settings.model_watch_s <= 0 or not is_versioned(settings.model_dir):
            return None
        if not isinstance(scorer, MicroBatcher) or not isinstance(scorer.scorer, LMScorer):
            log.warning("model versions under %s are not watched: only a plain item-LM scorer (no re-ranker, a "
                        "version present at start) is hot-swapped", settings.model_dir)
            return None
        return cls(settings.model_dir, scorer, lambda v: load_version(v, settings, scorer.fallback), catalog)

    async def poll(self) -> str | None:
        """One look: "swapped", "refused" or None (nothing to do)."""
        try:
            selected = select(self.root)
        except RefusedModel as exc:
            if str(exc) != self._bad_current:   # once per bad CURRENT, not every poll
                self._bad_current = str(exc)
                metrics.MODEL_REFUSALS.labels(exc.reason).inc()
                log.error("model version refused: %s; still serving %s", exc, self.batcher.version)
            return "refused"
        self._bad_current = None
        selected_stamp = stamp(selected) if selected is not None else None
        target = plan(selected, self.serving, self.refused, selected_stamp)
        if target is None:
            return None
        log.info("loading model version %s (serving %s)", target, self.batcher.version)
        try:
            scorer = await asyncio.get_running_loop().run_in_executor(self._pool, self.load, target)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, RefusedModel) else "error"
            self.refused[target] = selected_stamp
            metrics.MODEL_REFUSALS.labels(reason).inc()
            log.error("model version %s refused (%s): %s; still serving %s", target, reason, exc,
                      self.batcher.version)
            return "refused"
        if self.catalog is not None:   # queued only; embedded by the model thread before its first batch
            for item_id, record in self.catalog():
                scorer.on_item(str(item_id), record)
        previous = self.batcher.version
        self.batcher.swap(scorer)
        self.serving = target
        self.refused.pop(target, None)
        metrics.MODEL_SWAPS.inc()
        note_serving(scorer.version, previous)
        log.info("model swapped: %s -> %s (%s)", previous, scorer.version, target)
        return "swapped"
