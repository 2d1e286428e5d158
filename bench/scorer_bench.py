#!/usr/bin/env python
"""LMScorer throughput and latency by backend and batch size, and the ranking checks of the low-precision backends.

    python bench/scorer_bench.py                       # CPU: torch fp32, onnx fp32, onnx int8
    python bench/scorer_bench.py --device cuda         # GPU: fp32 reference, bf16, fp8, int8 (+ TFLOP/s vs peak)
    python bench/scorer_bench.py --quality             # + NDCG@10 of every backend on a model trained here
    python bench/scorer_bench.py --quality --model-dir artifacts/beauty --eval-sequences data/Beauty.txt

Speed runs on a random model of a realistic size (default: hidden 64, 2 layers, 12,101 items as Amazon Beauty,
max_len 50) with request histories drawn like Beauty's (5-core: at least 5 items, mean 8.9: 4 + Geometric(1/4.88),
cut at max_len), k=10, each user's history excluded. Every point is timed in the same run, so the ratios printed
side by side (batched vs batch 1, int8 vs fp32) compare like with like.

Correctness (every run): the top-10 of each backend vs the fp32 reference on 512 requests (overlap, and an NDCG
proxy that grades the reference's top-10 by rank; 1.0 = identical lists). ``--quality``: NDCG@10 of the next item
(leave-one-out) for every backend, relative to fp32 -- the project's rule is within 1% for quantized modes. With
``--device cpu`` the cuda-* modes run their exact arithmetic on the CPU (emulation: quality only, not speed).

FLOPs are counted analytically per call on the padded batch the kernels actually run (q/k/v/o, gate/up/down,
QK^T and AV, and the [batch, hidden] x [hidden, items] scoring matmul); ``useful`` counts real tokens only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.model.export import export                                      # noqa: E402
from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab               # noqa: E402
from streamrec.scoring import ScoreRequest                               # noqa: E402
from streamrec.model.train import next_item_loss                             # noqa: E402
from streamrec.serve.lm import LMScorer, length_buckets                   # noqa: E402

# Dense peak TFLOP/s (bf16, fp8, int8 TOPS) without sparsity, from NVIDIA's data sheets.
PEAKS = {"H100 SXM": (989.4, 1978.9, 1978.9), "H100 NVL": (835.0, 1670.0, 1670.0), "H100 PCIe": (756.0, 1513.0, 1513.0),
         "H100": (989.4, 1978.9, 1978.9), "H200": (989.4, 1978.9, 1978.9), "H800": (989.4, 1978.9, 1978.9),
         "GH200": (989.4, 1978.9, 1978.9), "A100": (312.0, None, 624.0), "L40S": (362.1, 733.0, 733.0),
         "L4": (121.0, 242.5, 242.5)}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def beauty_lengths(rng, n: int, max_len: int) -> np.ndarray:
    return np.minimum(4 + rng.geometric(1 / 4.88, size=n), max_len)


def random_model(directory: Path, args) -> ItemLMConfig:
    torch.manual_seed(0)
    cfg = ItemLMConfig(n_items=args.items, hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=args.heads, num_key_value_heads=args.heads,
                       intermediate_size=4 * args.hidden, max_position_embeddings=args.max_len, text_dim=args.text_dim)
    model = ItemLM(cfg)
    with torch.no_grad():   # a random model with a trained-like logit spread (std ~1.5 rather than ~0.2)
        model.item_emb.weight.normal_(0, 1.5 / math.sqrt(args.hidden))
        model.item_emb.weight[0].zero_()
        if args.text_dim:
            model.item_text.normal_()
    model.save_pretrained(directory)
    ItemVocab(str(i) for i in range(1, args.items + 1)).save(directory)
    return cfg


def make_requests(rng, n: int, n_items: int, max_len: int, k: int = 10) -> list[ScoreRequest]:
    out = []
    for u, length in enumerate(beauty_lengths(rng, n, max_len)):
        hist = tuple(str(i) for i in rng.integers(1, n_items + 1, size=int(length)))
        out.append(ScoreRequest(f"u{u}", hist, k, frozenset(hist)))
    return out


def flops(cfg: ItemLMConfig, lengths: list[int], width: int, n_table: int) -> tuple[float, float]:
    """(executed, useful) FLOPs of one call: padded batch vs real tokens (causal attention pairs)."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    linear = 2 * (2 * h * h + 2 * h * kv + 3 * h * inter)
    b = len(lengths)
    executed = layers * b * (width * linear + 2 * 2 * width * width * h) + b * 2 * h * n_table
    useful = sum(layers * (n * linear + 2 * 2 * (n * (n + 1) / 2) * h) for n in lengths) + b * 2 * h * n_table
    return float(executed), float(useful)


def device_peak(name: str, mode: str) -> float | None:
    col = {"bf16": 0, "fp8": 1, "int8": 2}.get(mode)   # no tensor-core peak for the fp32 reference
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in name and col is not None:
            return PEAKS[key][col]
    return None


def machine() -> dict:
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    import onnxruntime
    info["onnxruntime"] = onnxruntime.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return info


# --- correctness ---------------------------------------------------------------------------------------------------

def ranking_agreement(ref: list, got: list) -> dict:
    overlaps, proxies = [], []
    for a, b in zip(ref, got):
        ra = [i for i, _ in a.items][:10]
        rb = [i for i, _ in b.items][:10]
        overlaps.append(len(set(ra) & set(rb)) / max(1, len(ra)))
        gain = {item: len(ra) - r for r, item in enumerate(ra)}   # graded: the reference's #1 counts most
        dcg = sum(gain.get(item, 0) / math.log2(r + 2) for r, item in enumerate(rb))
        idcg = sum(gain[item] / math.log2(r + 2) for r, item in enumerate(ra))
        proxies.append(dcg / idcg if idcg else 1.0)
    return {"top10_overlap": float(np.mean(overlaps)), "ndcg_proxy": float(np.mean(proxies))}


def score_all(scorer, requests, batch=64):
    out = []
    for i in range(0, len(requests), batch):
        out.extend(scorer.score(requests[i:i + batch]))
    return out


# --- speed ---------------------------------------------------------------------------------------------------------

def time_backend(scorer, cfg, batches_by_size, args) -> list[dict]:
    rows = []
    n_table = cfg.n_items + 1
    for bs, batches in batches_by_size.items():
        for b in batches:   # warm-up: every padded width this point will see (ORT/cuBLAS pick kernels per shape)
            scorer.score(b)
        lat, sizes, ex, use = [], [], 0.0, 0.0
        deadline = time.perf_counter() + args.seconds
        i = 0
        while len(lat) < args.min_calls or (time.perf_counter() < deadline and len(lat) < args.max_calls):
            b = batches[i % len(batches)]
            i += 1
            t = time.perf_counter()
            scorer.score(b)
            lat.append(time.perf_counter() - t)
            lengths = [min(len(r.history), scorer.max_len) for r in b]
            split = bool(scorer.group_lengths) and len(lengths) >= scorer.group_lengths
            groups = {}
            for n in lengths:   # the calls score() made: one, or one per padded width (group_lengths)
                groups.setdefault(scorer._width(n) if split else 0, []).append(n)
            for g in groups.values():
                e, u = flops(cfg, g, scorer._width(max(g)), n_table)
                ex, use = ex + e, use + u
            sizes.append(len(b))
        total = sum(lat)
        row = {"batch": bs, "calls": len(lat), "req_per_s": sum(sizes) / total,
               "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
               "tflops": ex / total / 1e12, "useful_fraction": use / ex, "gflop_per_req": ex / sum(sizes) / 1e9}
        rows.append(row)
        log(f"  {scorer.backend_name:<10} batch {bs:>5}: {row['req_per_s']:>10.1f} req/s  p50 {row['p50_ms']:.2f} ms"
            f"  p99 {row['p99_ms']:.2f} ms  ({len(lat)} calls)")
        if row["p50_ms"] > args.max_latency_ms:
            log(f"  {scorer.backend_name}: p50 over {args.max_latency_ms} ms, larger batches skipped")
            break
    return rows


def speed(args, info) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="scorer-bench-"))
    model_dir = tmp / "model"
    cfg = random_model(model_dir, args)
    backends = args.backends.split(",") if args.backends else (
        ["torch", "cuda-bf16", "cuda-fp8", "cuda-int8"] if args.device == "cuda" else
        ["torch", "onnx", "onnx-int8", "onnx-int8:groups"])
    result = {"model": {"items": cfg.n_items, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                        "heads": cfg.num_attention_heads, "intermediate": cfg.intermediate_size,
                        "max_len": args.max_len, "buckets": length_buckets(args.max_len)}, "backends": {}}
    if any(b.startswith("onnx") for b in backends):
        t = time.perf_counter()
        paths = export(model_dir, ("fp32", "int8"), threads=torch.get_num_threads())
        result["export_s"] = time.perf_counter() - t
        result["export_checks"] = json.loads(paths["report"].read_text())["checks"]
        log(f"exported in {result['export_s']:.1f} s: {result['export_checks']}")
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    batches_by_size = {bs: [make_requests(rng, bs, cfg.n_items, args.max_len)
                            for _ in range(max(1, min(args.distinct_batches, 4096 // bs)))] for bs in sizes}
    check = make_requests(np.random.default_rng(2), 512, cfg.n_items, args.max_len)
    ref_device = "cuda" if args.device == "cuda" else "cpu"
    reference = score_all(LMScorer(model_dir, "torch", device=ref_device), check)
    gpu = info.get("gpu", "")
    for spec in backends:
        name, _, option = spec.partition(":")   # "NAME:groups" = the same backend with group_lengths=32
        # --device cpu with a cuda-* backend named: its arithmetic on the CPU (an emulation: no speed meaning)
        device = ref_device if (name == "torch" or name.startswith("cuda")) else None
        label = "cuda-fp32" if (name == "torch" and args.device == "cuda") else name
        label += " (groups)" if option == "groups" else ""
        label += " (cpu emulation)" if (name.startswith("cuda") and args.device == "cpu") else ""
        log(f"{label}:")
        try:
            scorer = LMScorer(model_dir, name, device=device, group_lengths=32 if option == "groups" else 0)
        except RuntimeError as exc:   # e.g. cuda-fp8 on a GPU without fp8: unsupported here, not broken
            log(f"  skipped: {exc}")
            result["backends"][label] = {"skipped": str(exc)}
            continue
        try:
            entry = {"agreement_vs_fp32": ranking_agreement(reference, score_all(scorer, check)),
                     "points": time_backend(scorer, cfg, batches_by_size, args)}
        except Exception as exc:   # a kernel/layout error on this device: report it, go on with the others
            log(f"  FAILED: {type(exc).__name__}: {exc}")
            result["backends"][label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        mode = {"cuda-bf16": "bf16", "cuda-fp8": "fp8", "cuda-int8": "int8", "cuda-fp32": "fp32"}.get(label)
        peak = device_peak(gpu, mode) if (gpu and mode) else None
        if peak:
            for p in entry["points"]:
                p["peak_fraction"] = p["tflops"] / peak
            entry["peak_tflops"] = peak
        result["backends"][label] = entry
    return result


# --- quality -------------------------------------------------------------------------------------------------------

def train_synthetic(directory: Path, args) -> tuple[list[list[str]], list[str]]:
    from streamrec.model.datasets import synthetic
    seqs = synthetic(n_users=args.q_users, n_items=args.q_items, length=20, n_clusters=10, seed=0)
    vocab = ItemVocab(sorted({i for s in seqs.values() for i in s}, key=int))
    torch.manual_seed(0)
    model = ItemLM(ItemLMConfig(n_items=len(vocab), hidden_size=args.hidden, num_hidden_layers=args.layers,
                                num_attention_heads=args.heads, num_key_value_heads=args.heads,
                                intermediate_size=4 * args.hidden, max_position_embeddings=args.max_len,
                                text_dim=args.text_dim))
    train = [vocab.encode(s[:-1]) for s in seqs.values()]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    t = time.perf_counter()
    for step in range(args.q_steps):
        batch = [train[i][-args.max_len:] for i in torch.randint(0, len(train), (128,))]
        loss, _ = next_item_loss(model, batch, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"trained {args.q_steps} steps in {time.perf_counter() - t:.0f} s, loss {loss.item():.3f}")
    model.eval().save_pretrained(directory)
    vocab.save(directory)
    return [s[:-1] for s in seqs.values()], [s[-1] for s in seqs.values()]


def quality(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="scorer-quality-"))
    if args.model_dir:
        from streamrec.model.datasets import read_sequences
        model_dir = Path(args.model_dir)
        seqs = read_sequences(args.eval_sequences)
        histories, targets = [s[:-1] for s in seqs.values()], [s[-1] for s in seqs.values()]
        source = f"{args.model_dir} on {args.eval_sequences}, last item of every user, seen items excluded"
    else:
        model_dir = tmp / "model"
        histories, targets = train_synthetic(model_dir, args)
        source = f"synthetic(users={args.q_users}, items={args.q_items}, clusters=10), trained here"
    export(model_dir, ("fp32", "int8"), tmp / "onnx", threads=torch.get_num_threads())
    export(model_dir, ("int8",), tmp / "onnx-q", quantize_scoring=True, threads=torch.get_num_threads())
    # a trained model on real data: the trainer's protocol (seen items excluded); synthetic walks: nothing excluded
    requests = [ScoreRequest(f"u{i}", tuple(h), 10, frozenset(h) if args.model_dir else frozenset())
                for i, h in enumerate(histories)]
    cuda = args.device == "cuda"
    variants = [("fp32 (torch)", "torch", {"device": "cuda" if cuda else "cpu"}),
                ("onnx fp32", "onnx", {"onnx_path": tmp / "onnx" / "model.onnx"}),
                ("onnx-int8 (scoring fp32, shipped)", "onnx-int8", {"onnx_path": tmp / "onnx" / "model.int8.onnx"}),
                ("onnx-int8 + int8 scoring matmul", "onnx-int8", {"onnx_path": tmp / "onnx-q" / "model.int8.onnx"})]
    suffix = "" if cuda else " (cpu emulation)"
    variants += [(f"{b}{suffix}", b, {"device": "cuda" if cuda else "cpu"}) for b in ("cuda-bf16", "cuda-fp8", "cuda-int8")]
    rows, base, ref = [], None, None
    for label, backend, kw in variants:
        try:
            scorer = LMScorer(model_dir, backend, **kw)
        except RuntimeError as exc:
            rows.append({"variant": label, "skipped": str(exc)})
            continue
        try:
            answers = score_all(scorer, requests, batch=256)
        except Exception as exc:
            rows.append({"variant": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        ndcg = hr = 0.0
        for a, t in zip(answers, targets):
            ids = [i for i, _ in a.items]
            if t in ids:
                ndcg += 1 / math.log2(ids.index(t) + 2)
                hr += 1
        ndcg, hr = ndcg / len(targets), hr / len(targets)
        base = ndcg if base is None else base
        ref = answers if ref is None else ref
        rows.append({"variant": label, "ndcg@10": ndcg, "hr@10": hr, "relative": ndcg / base - 1,
                     **ranking_agreement(ref, answers)})
        log(f"  {label:<38} NDCG@10 {ndcg:.4f} ({ndcg / base - 1:+.2%})  HR@10 {hr:.4f}")
    return {"source": source, "users": len(targets), "rows": rows}


# --- report --------------------------------------------------------------------------------------------------------

def markdown(info, res) -> str:
    out = [f"Machine: {info.get('gpu') or info['cpu']} ({info['cpus']} CPUs, torch threads {info['threads']}, "
           f"1-min load {info.get('load_avg_1m', 0):.1f}), torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
           f"{info['date']}", ""]
    sp = res.get("speed")
    if sp:
        m = sp["model"]
        out += [f"Model: {m['items']} items, hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads, "
                f"intermediate {m['intermediate']}, max_len {m['max_len']} (padded widths {m['buckets']}); "
                f"random weights; Beauty-like history lengths; k=10.", ""]
        if "export_s" in sp:
            c = sp["export_checks"]
            out += [f"Export: {sp['export_s']:.1f} s; fp32 ONNX vs torch max |diff| "
                    f"{c['fp32_max_abs_diff_vs_torch']:.2e}; int8 vs fp32 top-10 overlap "
                    f"{c['int8_top10_overlap_vs_fp32']:.3f}.", ""]
        names = [n for n, e in sp["backends"].items() if "points" in e]
        for n, e in sp["backends"].items():
            if "points" not in e:
                out += [f"{n}: {e.get('error') or e.get('skipped')}", ""]
        out += ["Agreement with fp32 (512 requests): " + "; ".join(
            f"{n} top-10 overlap {sp['backends'][n]['agreement_vs_fp32']['top10_overlap']:.3f}, "
            f"NDCG proxy {sp['backends'][n]['agreement_vs_fp32']['ndcg_proxy']:.3f}" for n in names), ""]
        sizes = sorted({p["batch"] for n in names for p in sp["backends"][n]["points"]})
        pts = {n: {p["batch"]: p for p in sp["backends"][n]["points"]} for n in names}
        head = "| batch | " + " | ".join(f"{n} req/s | {n} p50 / p99 ms" for n in names) + " |"
        out += [head, "|" + "---|" * (1 + 2 * len(names))]
        for bs in sizes:
            cells = []
            for n in names:
                p = pts[n].get(bs)
                cells += ([f"{p['req_per_s']:.0f}", f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}"] if p else ["-", "-"])
            out.append(f"| {bs} | " + " | ".join(cells) + " |")
        out += ["", "Ratios from the same run (throughput):", ""]
        pairs = [(a, b) for a, b in (("onnx-int8", "onnx"), ("onnx", "torch"), ("onnx-int8 (groups)", "onnx-int8"),
                                     ("cuda-bf16", "cuda-fp32"), ("cuda-fp8", "cuda-bf16"), ("cuda-int8", "cuda-bf16"))
                 if a in names and b in names]
        head = "| batch | " + " | ".join([f"{n} batched/batch-1" for n in names] + [f"{a} / {b}" for a, b in pairs]) \
            + " |"
        out += [head, "|" + "---|" * (1 + len(names) + len(pairs))]
        for bs in sizes:
            cells = [f"{pts[n][bs]['req_per_s'] / pts[n][1]['req_per_s']:.1f}x" if bs in pts[n] and 1 in pts[n] else "-"
                     for n in names]
            cells += [f"{pts[a][bs]['req_per_s'] / pts[b][bs]['req_per_s']:.2f}x"
                      if bs in pts[a] and bs in pts[b] else "-" for a, b in pairs]
            out.append(f"| {bs} | " + " | ".join(cells) + " |")
        out += ["", "Compute per backend: achieved TFLOP/s on the executed (padded) FLOPs"
                + (", % of the GPU's dense peak" if any("peak_tflops" in sp["backends"][n] for n in names) else "")
                + "; MFLOP executed per request; useful = real-token FLOPs / executed:", "",
                "| batch | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
        for bs in sizes:
            cells = []
            for n in names:
                p = pts[n].get(bs)
                if not p:
                    cells.append("-")
                    continue
                peak = f", {100 * p['peak_fraction']:.2f}% peak" if "peak_fraction" in p else ""
                cells.append(f"{p['tflops']:.4f}{peak}; {1e3 * p['gflop_per_req']:.1f} MF; {p['useful_fraction']:.2f}")
            out.append(f"| {bs} | " + " | ".join(cells) + " |")
    q = res.get("quality")
    if q:
        out += ["", f"Ranking quality, next-item NDCG@10 (leave-one-out, {q['users']} users; {q['source']}):", "",
                "| variant | NDCG@10 | vs fp32 | HR@10 | top-10 overlap vs fp32 |", "|---|---|---|---|---|"]
        for r in q["rows"]:
            if "error" in r or "skipped" in r:
                what = "error" if "error" in r else "skipped"
                out.append(f"| {r['variant']} | {what}: {r[what][:80]} | | | |")
            else:
                out.append(f"| {r['variant']} | {r['ndcg@10']:.4f} | {r['relative']:+.2%} | {r['hr@10']:.4f} | "
                           f"{r['top10_overlap']:.3f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backends", default="", help="comma-separated (default: all for the device); NAME:groups = "
                   "that backend with group_lengths=32 (batches of 32+: one call per padded width)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256,512,1024")
    p.add_argument("--items", type=int, default=12101)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--text-dim", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (more than the "
                   "idle cores makes OpenMP spin: on a shared box keep 1)")
    p.add_argument("--seconds", type=float, default=1.0, help="timing budget per point")
    p.add_argument("--min-calls", type=int, default=3)
    p.add_argument("--max-calls", type=int, default=2000)
    p.add_argument("--distinct-batches", type=int, default=8, help="batches cycled per point (varied widths)")
    p.add_argument("--max-latency-ms", type=float, default=5000.0, help="stop a backend's sweep past this p50")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--quality", action="store_true", help="NDCG@10 per backend on a trained model")
    p.add_argument("--model-dir", default="", help="--quality: a trained model directory instead of training one")
    p.add_argument("--eval-sequences", default="", help="--quality with --model-dir: sequences file (leave-one-out)")
    p.add_argument("--q-users", type=int, default=3000)
    p.add_argument("--q-items", type=int, default=2000)
    p.add_argument("--q-steps", type=int, default=600)
    p.add_argument("--json", default="", help="also write the raw results here")
    p.add_argument("--min-overlap", type=float, default=0.85,
                   help="self-check: least mean top-10 overlap with fp32 (random model, so near-ties count)")
    p.add_argument("--max-ndcg-drop", type=float, default=0.01, help="self-check: largest relative NDCG@10 drop")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(args.threads)
    info = machine()
    log(json.dumps(info))
    res: dict = {"machine": info, "args": vars(args)}
    if not args.no_speed:
        res["speed"] = speed(args, info)
    if args.quality:
        res["quality"] = quality(args)
    res["self_check"] = self_check(res, args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    print(markdown(info, res))
    print("\n" + "\n".join(res["self_check"]["lines"]))
    return 0 if res["self_check"]["ok"] else 1


def self_check(res: dict, args) -> dict:
    """PASS/FAIL lines: every backend ran; its top-10 agrees with fp32; quantized NDCG@10 within 1% of fp32."""
    lines, ok = [], True
    for label, e in res.get("speed", {}).get("backends", {}).items():
        if "skipped" in e:
            lines.append(f"SKIP {label}: {e['skipped']}")
        elif "error" in e:
            ok = False
            lines.append(f"FAIL {label}: {e['error']}")
        else:
            a = e["agreement_vs_fp32"]
            good = a["top10_overlap"] >= args.min_overlap
            ok &= good
            lines.append(f"{'PASS' if good else 'FAIL'} {label}: top-10 overlap {a['top10_overlap']:.3f} "
                         f"(>= {args.min_overlap}), NDCG proxy {a['ndcg_proxy']:.3f}")
    for r in res.get("quality", {}).get("rows", []):
        if "skipped" in r:
            lines.append(f"SKIP {r['variant']}: {r['skipped']}")
        elif "error" in r:
            ok = False
            lines.append(f"FAIL {r['variant']}: {r['error']}")
        elif "scoring matmul" not in r["variant"]:   # that one is a measured alternative, not shipped
            good = r["relative"] >= -args.max_ndcg_drop
            ok &= good
            lines.append(f"{'PASS' if good else 'FAIL'} {r['variant']}: NDCG@10 {r['relative']:+.2%} vs fp32 "
                         f"(>= -{args.max_ndcg_drop:.0%})")
    lines.append("SELF-CHECK " + ("PASSED" if ok else "FAILED"))
    return {"ok": ok, "lines": lines}


if __name__ == "__main__":
    raise SystemExit(main())
