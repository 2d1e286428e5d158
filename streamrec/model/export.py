"""Export an item language model directory to ONNX, and quantize it to int8 for CPU serving.

Written into ``<model_dir>/onnx/`` (or ``out_dir``):

    model.onnx        fp32 graph (dynamo exporter, falls back to the TorchScript exporter)
    model.int8.onnx   dynamic int8: the backbone's Linear layers as MatMulInteger (QInt8 weights per channel,
                      QUInt8 activations quantized per call); the item-scoring matmul stays fp32 (see below)
    export.json       the source weights' fingerprint (serving re-exports when it no longer matches), the
                      exporter used, versions and the export-time checks

Graph signature (both files)::

    input_ids       [batch, seq]      int64    left-padded histories (0 = padding)
    attention_mask  [batch, seq]      int64
    item_table      [n_table, hidden] float32  OPTIONAL: ItemLM.item_embeddings(), baked in as an initializer that
                                                is also a graph input, so callers that feed only the first two
                                                inputs get the exported catalog, and a caller may feed a longer table
    logits          [batch, n_table]  float32  next-item scores, index 0 (padding) = -inf

Why the item table is an input: a cold-start item (``ItemLM.add_items`` + ``set_item_text``) only changes the
table, never the backbone, so the serving process computes the grown table with torch and feeds it to the same
ONNX session: new items are readable in histories and scorable at once, without re-exporting.

Why the scoring matmul ``h @ item_table.T`` is not quantized: its B operand is that runtime input, so dynamic
quantization could only quantize it per call and per tensor (one uint8 scale for the whole catalog) -- that costs a
pass over the table on every call and puts the quantization error exactly where items are ranked against each
other. ``MatMulConstBOnly`` already skips it; we also list it in ``nodes_to_exclude`` so the decision is explicit.
``quantize_scoring=True`` quantizes it anyway, for measuring: on the trained Beauty model it cost 0.38% NDCG@10
(vs +0.05% without) and tripled batch-1 latency (docs/benchmarks.md).
The attention matmuls (activation x activation) stay fp32 for the same reason.

    python -m streamrec.model.export MODEL_DIR [--quantize fp32,int8] [--out-dir DIR]
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

# The artefact files and their fingerprints are torch-free (the serving side reads them); re-exported here.
from streamrec.model.artifacts import (ENCODER_SUBDIR, FILES, ONNX_SUBDIR, REPORT, is_current,  # noqa: F401
                                       model_fingerprint, onnx_dir, read_report, resolve_model_dir)
from streamrec.model.itemlm import PAD, ItemLM, left_pad

log = logging.getLogger(__name__)

OPSET = 18
INPUTS = ("input_ids", "attention_mask", "item_table")
OUTPUT = "logits"
_EXTERNAL_DATA_BYTES = 1_500_000_000   # above this, save weights next to the graph (protobuf's 2 GiB limit)


class TableLM(nn.Module):
    """``ItemLM.forward`` with the item table passed in instead of recomputed on every call.

    ``table`` is ``ItemLM.item_embeddings()`` (id embedding + projected text embedding). It is both the lookup table
    for the history tokens and the matrix every item is scored with, exactly as in ``ItemLM``; the serving backends
    and the ONNX graph all run this module, so they share one definition.
    """

    def __init__(self, model: ItemLM):
        super().__init__()
        self.backbone = model.backbone

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """[batch, hidden]: the last position's hidden state of left-padded histories."""
        x = nn.functional.embedding(input_ids, item_table)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)   # positions count from the first item
        out = self.backbone(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        return out.last_hidden_state[:, -1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        h = self.hidden(input_ids, attention_mask, item_table)
        logits = h.to(item_table.dtype) @ item_table.T
        return logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) == PAD, float("-inf"))


# --- export --------------------------------------------------------------------------------------------------------

def load_for_export(model_dir: str | Path) -> ItemLM:
    # Eager attention: an additive-mask softmax, no NaN guards for fully padded rows; it exports to a smaller graph
    # than SDPA's decomposition and gives the same numbers (checked below against the model as saved).
    return ItemLM.from_pretrained(model_dir, attn_implementation="eager").float().eval()


def _example_inputs(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # batch 2, seq 7: sizes 0/1 would be specialised by torch.export, so the example avoids them.
    n = table.shape[0] - 1
    hist = [[1 + (i % n) for i in range(3)], [1 + (i % n) for i in range(3, 10)]]
    ids, mask = left_pad(hist, 7)
    return ids, mask, table


def _torch_export(module: nn.Module, args, path: Path, exporter: str) -> str:
    names = dict(input_names=list(INPUTS), output_names=[OUTPUT])
    errors = []
    for kind in (["dynamo", "torchscript"] if exporter == "auto" else [exporter]):
        try:
            with torch.no_grad(), _quiet():
                if kind == "dynamo":
                    from torch.export import Dim
                    batch, seq, n_table = Dim("batch"), Dim("seq"), Dim("n_table")
                    torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET, external_data=False, verbose=False,
                                      dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                      "attention_mask": {0: batch, 1: seq},
                                                      "item_table": {0: n_table}}, **names)
                else:
                    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                    "attention_mask": {0: "batch", 1: "seq"},
                                                    "item_table": {0: "n_table"},
                                                    OUTPUT: {0: "batch", 1: "n_table"}}, **names)
            return kind
        except Exception as exc:   # try the other exporter, report both if neither works
            log.warning("ONNX export with the %s exporter failed: %s", kind, exc)
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' and quantizer's progress chatter (they log at WARNING on the root logger)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def scoring_matmul(model) -> str | None:
    """Name of the MatMul that scores every item (``h @ item_table.T``): its B operand is a transpose of the table."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        src = node.input[1]
        seen = 0
        while src in producers and seen < 4 and producers[src].op_type in ("Transpose", "Identity", "Cast"):
            src = producers[src].input[0]
            seen += 1
        if src == "item_table" and node.input[0] != "item_table":
            return node.name
    return None


def _with_default_table(path_in: Path, path_out: Path, table: np.ndarray) -> None:
    """Bake the table in as the default value of the ``item_table`` input (an initializer that is also an input)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path_in))
    if "item_table" not in {i.name for i in m.graph.input}:
        raise RuntimeError(f"{path_in}: exported graph has no item_table input")
    inits = [i for i in m.graph.initializer if i.name != "item_table"]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table, dtype=np.float32), "item_table"))
    big = m.ByteSize() > _EXTERNAL_DATA_BYTES
    onnx.save(m, str(path_out), save_as_external_data=big, all_tensors_to_one_file=True,
              location=path_out.name + ".data")


def _quantize_int8(raw: Path, out: Path, quantize_scoring: bool) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    graph = onnx.load(str(raw))
    scoring = scoring_matmul(graph)
    if scoring is None:
        raise RuntimeError("could not find the item-scoring MatMul in the exported graph")
    options = dict(per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                   op_types_to_quantize=["MatMul", "Gemm"])
    if quantize_scoring:
        # Quantize the weight matmuls and the scoring matmul (dynamic uint8 on both of its operands), nothing else.
        weights = {i.name for i in graph.graph.initializer}
        nodes = [n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
        options.update(nodes_to_quantize=nodes + [scoring], extra_options={"MatMulConstBOnly": False})
    else:
        options.update(nodes_to_exclude=[scoring])
    with _quiet():
        quantize_dynamic(str(raw), str(out), **options)
    # reduce_range: 7-bit weights, so u8 x s8 products cannot saturate on CPUs without VNNI (AVX2-only).
    return {"mode": "dynamic", "weights": "QInt8 per channel, reduce_range", "activations": "QUInt8 per call",
            "ops": ["MatMul", "Gemm"], "scoring_matmul": scoring, "scoring_matmul_quantized": quantize_scoring}


def _check_histories(n_items: int, max_len: int, count: int = 64, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.geometric(1 / 8, size=count), 1, max_len)
    return [rng.integers(1, n_items + 1, size=int(n)).tolist() for n in lengths]


def _session(path: Path, threads: int = 2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3   # the overridable item_table initializer is intended; don't warn about it
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean |top-k(a) & top-k(b)| / k over rows."""
    ta = np.argsort(-a, axis=1, kind="stable")[:, :k]
    tb = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))


def export(model_dir: str | Path, quantize: Sequence[str] = ("fp32", "int8"), out_dir: str | Path | None = None, *,
           exporter: str = "auto", quantize_scoring: bool = False,
           check_histories: Sequence[Sequence[int]] | None = None, threads: int = 2,
           text_encoder: bool | None = None) -> dict[str, Path]:
    """Export ``model_dir`` to ONNX (fp32, and int8 when asked); returns {"fp32"|"int8"|"report": path}.

    ``text_encoder``: also export the title encoder (``text.export_encoder`` into ``<out>/text-encoder``), so that
    cold-start items are embedded without torch. None = when the model reads item text and was made by
    ``streamrec train`` (its ``train_config.json`` names the encoder: ``text_model``, empty = the bundled one).

    ``check_histories``: token-id histories (ideally real ones) for the export-time checks -- max |fp32 ONNX - torch|
    and the mean top-10 overlap of int8 vs fp32; random histories when not given. Results go to ``export.json``.
    """
    unknown = set(quantize) - set(FILES)
    if unknown:
        raise ValueError(f"unknown quantize kind(s) {sorted(unknown)}; choose from {sorted(FILES)}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError("exporter must be auto, dynamo or torchscript")
    started = time.perf_counter()
    model_dir = resolve_model_dir(model_dir)[0]
    out = Path(out_dir) if out_dir is not None else onnx_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model_dir)
    model = load_for_export(model_dir)
    cfg = model.config
    with torch.no_grad():
        table = model.item_embeddings().detach().float().contiguous()
    module = TableLM(model).eval()
    report: dict = {"fingerprint": fingerprint, "model_dir": str(model_dir), "opset": OPSET,
                    "n_items": cfg.n_items, "hidden_size": cfg.hidden_size, "text_dim": cfg.text_dim,
                    "attn_implementation": "eager", "inputs": list(INPUTS), "output": OUTPUT,
                    "versions": _versions(), "files": {}, "checks": {}}
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="streamrec-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        report["exporter"] = _torch_export(module, _example_inputs(table), raw, exporter)
        table_np = table.numpy()
        fp32 = out / FILES["fp32"]
        _with_default_table(raw, fp32, table_np)
        paths["fp32"] = fp32
        report["files"]["fp32"] = fp32.name
        if "int8" in quantize:
            raw_q = Path(tmp) / "raw.int8.onnx"
            report["quantization"] = _quantize_int8(raw, raw_q, quantize_scoring)
            int8 = out / FILES["int8"]
            _with_default_table(raw_q, int8, table_np)
            paths["int8"] = int8
            report["files"]["int8"] = int8.name

    # --- export-time checks -----------------------------------------------------------------------------------
    hists = [list(h) for h in check_histories] if check_histories else \
        _check_histories(cfg.n_items, cfg.max_position_embeddings)
    ids, mask = left_pad(hists, cfg.max_position_embeddings)
    reference = ItemLM.from_pretrained(model_dir).float().eval()   # the model as training saved it (its own attn)
    with torch.no_grad():
        ref = reference(ids, mask).numpy()
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}   # table from the baked default
    got = _session(paths["fp32"], threads).run(None, feed)[0]
    finite = np.isfinite(ref)
    report["checks"]["n_histories"] = len(hists)
    report["checks"]["fp32_max_abs_diff_vs_torch"] = float(np.abs(got[finite] - ref[finite]).max())
    report["checks"]["fp32_padding_is_-inf"] = bool(np.all(np.isneginf(got[:, PAD])))
    report["checks"]["fp32_top10_overlap_vs_torch"] = top_k_overlap(got, ref)
    if "int8" in paths:
        q = _session(paths["int8"], threads).run(None, feed)[0]
        report["checks"]["int8_top10_overlap_vs_fp32"] = top_k_overlap(q, got)
        report["checks"]["int8_max_abs_diff_vs_fp32"] = float(np.abs(q[finite] - got[finite]).max())
    train_cfg = resolve_model_dir(model_dir)[1] / "train_config.json"
    if text_encoder is None:
        text_encoder = bool(cfg.text_dim) and train_cfg.is_file()
    if text_encoder:
        from streamrec.model.text import export_encoder
        text_model = json.loads(train_cfg.read_text()).get("text_model") if train_cfg.is_file() else None
        meta = export_encoder(out / ENCODER_SUBDIR, text_model or None)
        if meta["dim"] != cfg.text_dim:
            raise ValueError(f"the text encoder gives {meta['dim']}-d embeddings, the model reads {cfg.text_dim}")
        report["text_encoder"] = {k: meta[k] for k in ("source", "dim", "check_max_abs_diff_vs_sentence_transformers")}
        paths["text_encoder"] = out / ENCODER_SUBDIR
    report["seconds"] = round(time.perf_counter() - started, 2)
    rp = out / REPORT
    rp.write_text(json.dumps(report, indent=2))
    paths["report"] = rp
    if "fp32" not in quantize:   # the int8 graph is made from it; keep it only when asked
        paths.pop("fp32").unlink()
        report["files"].pop("fp32")
        rp.write_text(json.dumps(report, indent=2))
    log.info("exported %s -> %s (%s exporter, checks %s)", model_dir, out, report["exporter"], report["checks"])
    return paths


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def run(args) -> int:
    """``streamrec export`` (arguments defined in ``model/cli.py``)."""
    paths = export(args.model_dir, tuple(k for k in args.quantize.split(",") if k), args.out_dir,
                   exporter=args.exporter, quantize_scoring=args.quantize_scoring)
    print(json.dumps(json.loads(paths["report"].read_text())["checks"], indent=2))
    for kind, path in paths.items():
        print(f"{kind:<7} {path}")
    return 0
