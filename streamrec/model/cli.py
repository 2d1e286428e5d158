"""Model-side subcommands of ``streamrec``: ``train``, ``eval``, ``coldstart`` and ``export``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

FORMATS = ["auto", "jsonl", "movielens-dat", "movielens-100k", "csv", "sequences"]

_HELP = {
    "hidden_size": "item embedding / transformer width",
    "num_layers": "transformer blocks",
    "num_heads": "attention heads",
    "intermediate_size": "MLP width (0 = 4 x hidden size)",
    "max_len": "longest history read by the model (training windows have max-len targets); 0 = the 99th "
               "percentile of the training histories, within 50..200",
    "embedding_dropout": "dropout on the input item embeddings (high for sparse data, e.g. 0.5 on Beauty)",
    "attention_dropout": "dropout on attention probabilities",
    "hidden_dropout": "dropout on every attention/MLP output before the residual add (SASRec style)",
    "initializer_range": "std of the normal weight initialisation",
    "id_dropout": "text models: share of items whose id embedding is dropped each step, so the model learns to rank "
                  "items known only by their text (cold start)",
    "use_text": "add projected all-MiniLM-L6-v2 title embeddings to item embeddings (needs --titles; on by default "
                "when --titles is given)",
    "text_model": "local sentence-transformers directory instead of the bundled all-MiniLM-L6-v2",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay (matrices and embeddings, not norms)",
    "batch_size": "training sequences per step (batches are bucketed by length); 0 = 6400 positions per step "
                  "at max-len (128 at 50, 32 at 200)",
    "grad_clip": "max gradient norm (0 = off)",
    "lr_patience": "multiply the lr by --lr-factor after every N evaluations without improvement (0 = constant lr)",
    "lr_factor": "lr decay factor on a validation plateau",
    "epochs": "maximum epochs",
    "patience": "early stopping: evaluations without a better validation NDCG@10",
    "eval_every": "validate every N epochs",
    "valid_users": "validate on a fixed random sample of N users each epoch (0 = all; final numbers use all)",
    "max_minutes": "stop training after this many minutes of wall time (0 = no limit); the best epoch is tested",
    "seed": "random seed (initialisation, batch order, dropout, samples)",
    "max_users": "quick runs: only N random users (0 = all)",
    "cold_items": "cold-start experiment: hold out this share of items from training entirely (see `coldstart`)",
    "device": "cpu, cuda or auto",
    "num_threads": "torch CPU threads",
    "eval_batch_size": "users per scoring batch in evaluation",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from streamrec.model.train_config import TrainConfig

    g = p.add_argument_group("hyper-parameters (defaults = TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{_HELP.get(f.name, '')} [default {f.default!r}]"
        if f.type in (bool, "bool"):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.name == "device":
            g.add_argument(flag, dest=f.name, choices=["cpu", "cuda", "auto"], default=None, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            g.add_argument(flag, dest=f.name, type=kind, default=None, help=help_)


def _config_from_args(args):
    from streamrec.model.train_config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name, None) is not None}
    return TrainConfig(**values)


def _read(args):
    from streamrec.model.datasets import read_sequences, read_titles, sequences

    if getattr(args, "from_kafka", False):
        from streamrec.config import from_args
        from streamrec.model.kafka_data import read_interactions
        events, _ = read_interactions(from_args(args))
        seqs = sequences(events)
    elif args.data:
        seqs = read_sequences(args.data, args.format)
    else:
        raise SystemExit("give a data file or --from-kafka")
    titles = read_titles(args.titles) if getattr(args, "titles", None) else None
    return seqs, titles


def cmd_train(args) -> int:
    import torch

    from streamrec.model.train import train

    cfg = _config_from_args(args)
    torch.set_num_threads(cfg.num_threads)
    seqs, titles = _read(args)
    if args.use_text is None and titles:          # titles given: the text-aware recipe, unless --no-use-text
        cfg = dataclasses.replace(cfg, use_text=True)
    if cfg.use_text and not titles:
        print("--use-text needs --titles", file=sys.stderr)
        return 2
    name = args.name or ("kafka" if args.from_kafka else Path(args.data).stem)
    m = train(cfg, seqs, args.out, titles=titles, resume=args.resume, progress=not args.quiet, dataset_name=name,
              init_from=args.init_from)
    t = m["test"]
    print(json.dumps({"version": m["version"], "out": str(args.out), "best_epoch": m["best_epoch"],
                      "stop_reason": m["stop_reason"], "train_seconds": m["train_seconds"],
                      "test": {k: round(t[k], 4) for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@50",
                                                           "NDCG@50", "MRR")}, "users": t["users"],
                      "blend": m["blend"], "test_lm_only_NDCG@10": round(m["test_lm_only"]["NDCG@10"], 4)},
                     indent=2))
    return 0


def _baseline_score_fn(kind: str, seqs, vocab, split_name: str):
    from streamrec.model.evaluate import cooc_score_fn, popularity_score_fn, train_sequences

    # baselines are fitted on exactly what the model trains on: items[:-2] of every user
    train_part = train_sequences(seqs)
    if kind == "popularity":
        return popularity_score_fn(train_part, vocab)
    from streamrec.scoring import CooccurrenceScorer
    return cooc_score_fn(CooccurrenceScorer().fit(train_part.values()), vocab)


def cmd_eval(args) -> int:
    import torch

    from streamrec.model.evaluate import build_vocab, evaluate, evaluate_many, leave_one_out, lm_score_fn

    torch.set_num_threads(args.num_threads)
    if bool(args.model) == bool(args.baseline):
        print("give exactly one of --model DIR or --baseline", file=sys.stderr)
        return 2
    seqs, _ = _read(args)
    if args.model:
        from streamrec.model.train import load_model_dir
        model, vocab = load_model_dir(args.model, args.device if args.device != "auto" else
                                      ("cuda" if torch.cuda.is_available() else "cpu"))
        max_len = args.max_len or getattr(model.config, "max_len", None) or model.config.max_position_embeddings
        score_fn = lm_score_fn(model, max_len, next(model.parameters()).device)
        name = getattr(model.config, "streamrec_version", str(args.model))
    else:
        vocab = build_vocab(seqs)
        score_fn = _baseline_score_fn(args.baseline, seqs, vocab, args.split)
        name = args.baseline
    split = leave_one_out(seqs, vocab, args.split, args.min_interactions)
    weights, parts = _blend(args, model, seqs, vocab, score_fn) if args.model and args.blend != "none" else ({}, None)
    if any(weights.values()):
        from streamrec.model.blend import blend_parts, blend_score_fn, last_batch
        from streamrec.model.evaluate import train_sequences
        lm_fn = last_batch(score_fn)
        if parts is None:
            parts = blend_parts(vocab, train_sequences(seqs), model.item_text if model.config.text_dim else None)
        fns = {"served": blend_score_fn(lm_fn, parts, weights), "lm": lm_fn}
        both = evaluate_many(fns, split, tuple(args.k), args.batch_size, keep_seen=args.keep_seen,
                             progress=not args.quiet)
        m = {**both["served"], "blend": weights,
             "lm_only": {k: v for k, v in both["lm"].items() if k[:2] in ("HR", "ND", "MR")}}
    else:
        m = evaluate(score_fn, split, tuple(args.k), args.batch_size, keep_seen=args.keep_seen,
                     progress=not args.quiet)
        if args.model:
            m["blend"] = weights
    m = {"scorer": name, "data": str(args.data), **m}
    text = json.dumps(m, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


def _blend(args, model, seqs, vocab, score_fn) -> tuple[dict[str, float], dict | None]:
    """The blend weights of a model (``model/blend.py``): the saved ones, or (``--blend choose``) chosen now on the
    validation split and saved; with the blend's terms when they were built to choose them (else None)."""
    from streamrec.model.artifacts import read_blend, resolve_model_dir
    from streamrec.model.blend import blend_parts, blend_record, choose_weights, save_blend, saved_weights
    from streamrec.model.evaluate import leave_one_out, train_sequences

    if args.blend == "saved":
        return saved_weights(read_blend(args.model)), None
    parts = blend_parts(vocab, train_sequences(seqs), model.item_text if model.config.text_dim else None)
    valid = leave_one_out(seqs, vocab, "valid", args.min_interactions)
    weights, tried = choose_weights(score_fn, parts, valid, args.batch_size, progress=not args.quiet)
    save_blend(resolve_model_dir(args.model)[0], blend_record(weights, tried))
    last = list(tried)[-1]
    print(f"blend: {weights} (validation NDCG@10 {tried[last][weights[last]]:.4f}, "
          f"the LM alone {tried[next(iter(tried))][0.0]:.4f})", file=sys.stderr)
    return weights, parts


def cmd_coldstart(args) -> int:
    import torch

    from streamrec.model.artifacts import read_blend
    from streamrec.model.blend import cold_start_blends, last_batch, save_blend
    from streamrec.model.datasets import read_sequences
    from streamrec.model.evaluate import cold_start_report, evaluate_many, leave_one_out, lm_score_fn
    from streamrec.model.train import load_model_dir

    torch.set_num_threads(args.num_threads)
    seqs = read_sequences(args.data, args.format)
    results = {}
    for run in args.run:
        run = Path(run)
        if not (run / "model_cold").is_dir():
            print(f"{run}: no model_cold/ (train with --cold-items)", file=sys.stderr)
            return 2
        cold = json.loads((run / "cold_items.json").read_text())
        model, vocab = load_model_dir(run / "model_cold")
        cfg = json.loads((run / "train_config.json").read_text())
        max_len = cfg.get("max_len", 50)
        blends, info = cold_start_blends(model, vocab, seqs, cold, read_blend(run), max_len, progress=not args.quiet)
        rep = cold_start_report(model, vocab, seqs, cold, tuple(args.k), max_len, progress=not args.quiet,
                                seed=args.seed, extra=blends)
        rep["blend"] = info
        if args.save_blend and "new_item_text_weight" in info:   # the worker serves new items with it from now on
            record = {**read_blend(run), "text_weight": info["new_item_text_weight"],
                      "text_weight_chosen_on": "validation NDCG@10 with held-out items (streamrec coldstart)"}
            save_blend(run / "model", record)
        # the warm test users (target seen in training), ranked by each blend among all items, new ones included
        cold_set = set(cold)
        warm = leave_one_out({u: s for u, s in seqs.items() if s and s[-1] not in cold_set}, vocab, "test")
        lm_fn = last_batch(lm_score_fn(model, max_len))
        fns = {"model": lm_fn, **{label: wrap(lm_fn) for label, wrap in blends.items()}}
        rep["warm_test"] = {label: {k: v for k, v in m.items() if k.startswith(("HR", "NDCG", "MRR", "users"))}
                            for label, m in evaluate_many(fns, warm, tuple(args.k), progress=not args.quiet).items()}
        rep["version"] = getattr(model.config, "streamrec_version", "")
        results[str(run)] = rep
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_export(args) -> int:
    from streamrec.model.export import run
    return run(args)


def register(sub) -> None:
    """Add ``train``, ``eval`` and ``coldstart`` to the ``streamrec`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser(
        "train", formatter_class=fmt,
        help="train the item language model (full-softmax next-item CE, early stopping on validation NDCG@10)",
        description="Train the item LM on every user's items[:-2], validate on items[-2], test the best epoch on "
                    "items[-1] (full ranking, seen items excluded).\n\nArtefacts in --out: model/ (HF model + "
                    "vocab.json), train_config.json, metrics.json, valid_ndcg.png, checkpoint.pt.\n\nExample:\n"
                    "  streamrec train ../shared/data/amazon/Beauty.txt --out artifacts/beauty --embedding-dropout 0.5")
    t.add_argument("data", nargs="?",
                   help="interactions: sequence .txt (user item item ...), ratings.csv, CSV, JSONL ... "
                        "(or --from-kafka)")
    t.add_argument("--from-kafka", action="store_true",
                   help="train on the interactions topic (from its beginning to its end now) instead of a file; "
                        "with --init-from: learn from the stream starting from the previous model")
    t.add_argument("--format", default="auto", choices=FORMATS, help="input format [default: from the file name]")
    t.add_argument("--titles", help="item titles (Beauty_items.tsv or MovieLens movies.csv), for --use-text")
    t.add_argument("--out", required=True, help="artefact directory")
    t.add_argument("--name", help="data set name in metrics.json [default: file stem]")
    t.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt (same data and hyper-parameters; --epochs, --patience, "
                        "--max-minutes and runtime flags may change)")
    t.add_argument("--init-from", metavar="DIR",
                   help="continue from a previous `streamrec train` output: keep its weights and item ids, append "
                        "new items (learning from new interactions); writes a new versioned model to --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(t)
    from streamrec.config import KAFKA_SETTINGS, add_arguments
    add_arguments(t.add_argument_group("Kafka (with --from-kafka)"), KAFKA_SETTINGS)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval", formatter_class=fmt,
        help="full-ranking leave-one-out evaluation of a trained model or a baseline",
        description="Rank every item for every user with >= 5 interactions; the target is the last item (test) or "
                    "the second-to-last (valid); the user's earlier items are excluded from the ranking unless "
                    "--keep-seen. rank = 1 + items with a strictly greater score. Baselines are fitted on items[:-2]."
                    "\n\nExamples:\n  streamrec eval ../shared/data/amazon/Beauty.txt --model artifacts/beauty\n"
                    "  streamrec eval ../shared/data/amazon/Beauty.txt --baseline cooc --json artifacts/cooc.json")
    e.add_argument("data", help="the same interaction file the model was trained on")
    e.add_argument("--format", default="auto", choices=FORMATS)
    src = e.add_argument_group("what to evaluate (one of)")
    src.add_argument("--model", help="artefact directory of `streamrec train` (or its model/ subdirectory)")
    src.add_argument("--baseline", choices=["popularity", "cooc"],
                     help="popularity: training counts; cooc: scoring.CooccurrenceScorer fitted on items[:-2]")
    e.add_argument("--split", choices=["test", "valid"], default="test")
    e.add_argument("--keep-seen", action="store_true", help="do not exclude the user's earlier items")
    e.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="cut-offs for HR@k and NDCG@k")
    e.add_argument("--min-interactions", type=int, default=5, help="drop users with fewer interactions")
    e.add_argument("--max-len", type=int, default=0, help="history length read by the model [default: its own]")
    e.add_argument("--batch-size", type=int, default=512, help="users per scoring batch")
    e.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    e.add_argument("--num-threads", type=int, default=2)
    e.add_argument("--blend", choices=["saved", "choose", "none"], default="saved",
                   help="--model: rank as the worker serves: the LM logits + weighted co-occurrence and (text-aware "
                        "models) young-item title bonuses. saved: the weights in the model's blend.json (none "
                        "there: the LM alone); choose: pick them on the validation split now and save them; none: "
                        "the LM alone")
    e.add_argument("--json", help="also write the metrics to this file")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser(
        "coldstart", formatter_class=fmt,
        help="cold-start report of runs trained with --cold-items (text-aware vs id-only)",
        description="For runs of `streamrec train --cold-items SHARE` (items held out of training entirely, then "
                    "added to the saved model as model_cold/ with ItemLM.add_items + set_item_text): rank the "
                    "held-out item for every user whose last item is one, among all items and among the cold items "
                    "only; ties broken at random; seen items excluded. Compares with a text-similarity scorer and "
                    "random order.\n\nExample:\n  streamrec coldstart ../shared/data/amazon/Beauty.txt "
                    "--run artifacts/beauty-text-cold --run artifacts/beauty-id-cold")
    c.add_argument("data", help="the interaction file the runs were trained on")
    c.add_argument("--format", default="auto", choices=FORMATS)
    c.add_argument("--run", action="append", required=True, help="artefact directory (repeat for several)")
    c.add_argument("--k", type=int, nargs="+", default=[10, 20, 50])
    c.add_argument("--seed", type=int, default=0, help="seed of the random tie-breaking")
    c.add_argument("--num-threads", type=int, default=2)
    c.add_argument("--save-blend", action="store_true",
                   help="write the title weight chosen here for new items into the run's model/blend.json (what "
                        "the worker serves)")
    c.add_argument("--json", help="also write the report here")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_coldstart)

    x = sub.add_parser(
        "export", help="export a trained model to ONNX (fp32 and dynamic int8) for the CPU backends",
        description="Writes MODEL_DIR/onnx/model.onnx and model.int8.onnx plus a report comparing them with torch. "
                    "The worker exports on first start when these are missing; run this ahead of time (e.g. in an "
                    "image build) to start faster.")
    x.add_argument("model_dir", help="trained model directory (streamrec train --out DIR, or DIR/model)")
    x.add_argument("--quantize", default="fp32,int8", help="comma-separated: fp32, int8")
    x.add_argument("--out-dir", default=None, help="default: MODEL_DIR/onnx")
    x.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    x.add_argument("--quantize-scoring", action="store_true",
                   help="also quantize the item-scoring matmul (slower and less accurate; measured in benchmarks)")
    x.set_defaults(func=cmd_export)
