"""A trained model's files, without torch: where the weights and the ONNX exports live, and whether an export is
current (made from the weights on disk). The worker's ONNX path reads these; ``export.py`` writes them.

    <dir>/config.json, model.safetensors, vocab.json     ItemLM.save_pretrained + ItemVocab.save
    <dir>/onnx/model.onnx, model.int8.onnx, export.json   export.py
    <dir>/onnx/text-encoder/                             the title encoder as ONNX (text.export_encoder)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

ONNX_SUBDIR = "onnx"
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
REPORT = "export.json"
ENCODER_SUBDIR = "text-encoder"


# --- model directories ---------------------------------------------------------------------------------------------

def resolve_model_dir(path: str | Path) -> tuple[Path, Path]:
    """(weights directory, artefact directory): ``streamrec train --out DIR`` puts the model in ``DIR/model`` and
    ``metrics.json``/``train_config.json`` in ``DIR``; either path is accepted."""
    d = Path(path)
    if not (d / "config.json").is_file() and (d / "model" / "config.json").is_file():
        return d / "model", d
    parent = d.parent
    if (parent / "metrics.json").is_file() or (parent / "train_config.json").is_file():
        return d, parent
    return d, d



# --- fingerprints --------------------------------------------------------------------------------------------------

def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of ``config.json`` and the weight files: identifies the trained model an export was made from."""
    d = resolve_model_dir(model_dir)[0]
    h = hashlib.sha256()
    files = [d / "config.json"] + sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def onnx_dir(model_dir: str | Path) -> Path:
    return resolve_model_dir(model_dir)[0] / ONNX_SUBDIR


def read_report(directory: str | Path) -> dict | None:
    p = Path(directory) / REPORT
    return json.loads(p.read_text()) if p.is_file() else None


def is_current(model_dir: str | Path, directory: str | Path | None = None, kinds: Iterable[str] = ("fp32",)) -> bool:
    """True when ``directory`` holds exports of the given kinds made from the model's current weights."""
    directory = Path(directory) if directory is not None else onnx_dir(model_dir)
    report = read_report(directory)
    if not report or report.get("fingerprint") != model_fingerprint(model_dir):
        return False
    return all(k in report.get("files", {}) and (directory / report["files"][k]).is_file() for k in kinds)


# --- the blend with the co-occurrence scorer ---------------------------------------------------------------------------

BLEND_FILE = "blend.json"   # {"cooc_weight": w, ...}: written by model/blend.py, read by serve/lm.py


def read_blend(model_dir: str | Path) -> dict:
    """The blend a trained model was validated with (weights directory first, then the artefact directory); {} when
    none was chosen (an older model: served as the LM alone)."""
    for d in resolve_model_dir(model_dir):
        p = d / BLEND_FILE
        if p.is_file():
            return json.loads(p.read_text())
    return {}
