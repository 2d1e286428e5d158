"""The ``streamrec`` command line: one subcommand per job. Settings: flags > STREAMREC_* env vars > defaults."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from streamrec import __version__
from streamrec.model import cli as model_cli
from streamrec.config import KAFKA_SETTINGS as KAFKA, add_arguments, from_args



def cmd_worker(args) -> int:
    settings = from_args(args)
    if settings.processes > 1:
        import os
        from streamrec.tools import processes
        return processes.run(settings, dict(os.environ))
    from faust.worker import Worker
    from streamrec.stream import access, logs
    from streamrec.stream.app import create_app

    class StreamrecWorker(Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            logs.install(logger, interval_s=settings.log_repeat_interval_s, fmt=settings.log_format)

    logging.getLogger(__name__).info("settings: %s", json.dumps(settings.as_dict()))
    access.check(settings, "worker")
    app = create_app(settings)
    StreamrecWorker(app, loglevel=settings.log_level).execute_from_commandline()
    return 0


def cmd_topics(args) -> int:
    from streamrec.stream import topics
    settings = from_args(args)
    if args.action == "list":
        for s in topics.load_specs(settings):
            print(f"{s.name:<40} partitions={s.partitions:<3} {' '.join(f'{k}={v}' for k, v in s.config.items())}")
        return 0
    from kafka.errors import ClusterAuthorizationFailedError, TopicAuthorizationFailedError
    from streamrec.stream import access
    access.check(settings, "topics")
    try:
        report = topics.apply(settings, create=args.action == "apply")
    except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
        raise access.AccessError(f"{access.who(settings)} is not allowed to describe or create the declared topics "
                                 f"({type(exc).__name__}). Grant: streamrec acls apply --role topics") from None
    for name in report.created:
        print(f"created  {name}")
    for name in report.ok:
        print(f"ok       {name}")
    for d in report.drift:
        print(f"DRIFT    {d}")
    return 1 if report.drift else 0


def cmd_acls(args) -> int:
    from streamrec.stream import acls
    settings = from_args(args)
    roles = args.role or ["worker"]
    if args.action == "list":
        for role in roles:
            print(f"# {role}")
            for g in acls.grants(settings, role):
                print(g)
        return 0
    if not args.principal:
        raise SystemExit("streamrec acls apply: --principal User:<name> is required")
    n = acls.apply(settings, args.principal, roles)
    print(f"granted {n} ACLs ({', '.join(roles)}) to {args.principal}")
    return 0


def cmd_replay(args) -> int:
    from streamrec.model.datasets import read_events
    from streamrec.stream import access
    from streamrec.tools.replay import replay
    settings = from_args(args)
    access.check(settings, "producer", settings.topic("interactions"))
    events = read_events(args.file, args.format)
    if args.limit:
        events = events[: args.limit]
    n = replay(settings, events, rate=args.rate, total=len(events), progress=not args.quiet)
    print(f"replayed {n} events from {args.file} to {settings.topic('interactions')}")
    return 0


def cmd_catalog(args) -> int:
    from streamrec.model.datasets import read_titles
    from streamrec.tools.replay import load_catalog
    from streamrec.stream import access
    settings = from_args(args)
    access.check(settings, "producer", settings.topic("items"))
    n = load_catalog(settings, read_titles(args.file), progress=not args.quiet)
    print(f"loaded {n} items from {args.file} to {settings.topic('items')}")
    return 0


def cmd_erase(args) -> int:
    from streamrec.stream import access
    from streamrec.tools.replay import request_erasure
    settings = from_args(args)
    access.check(settings, "eraser", settings.topic("user-erasure"))
    for r in request_erasure(settings, args.users, args.request_id):
        print(f"erase request {r['request_id']} for user {r['user_id']!r} -> {settings.topic('user-erasure')}")
    return 0


def cmd_tail(args) -> int:
    from streamrec.model.datasets import read_titles
    from streamrec.stream import access
    from streamrec.tools.tail import follow, printer
    settings = from_args(args)
    topic = settings.topic("interactions-dlq" if args.dead_letters else "recommendations")
    access.check(settings, "reader", topic)
    show = printer("dlq" if args.dead_letters else "rec", read_titles(args.titles) if args.titles else None)
    for _, msg in follow(settings, topic, from_beginning=args.from_beginning, max_messages=args.max_messages,
                         timeout_s=args.timeout):
        print(json.dumps(msg) if args.json else show(msg), flush=True)
    return 0


def cmd_prequential(args) -> int:
    from streamrec.model.datasets import read_events
    from streamrec.tools.prequential import prequential
    settings = from_args(args)
    events = read_events(args.file, args.format)
    if args.limit:
        events = events[: args.limit]
    warmup = int(len(events) * args.warmup_share) if args.warmup_share else args.warmup
    retrain = _retrainer(settings, args) if args.retrain_every else None
    report = prequential(settings, events, batch=args.batch, progress=not args.quiet, warmup=warmup,
                         retrain=retrain, retrain_every=args.retrain_every)
    text = json.dumps({"data": str(args.file), **report}, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


def _retrainer(settings, args):
    """Periodic retraining for ``streamrec prequential``: each call continues the current model on every event
    streamed so far (``train(init_from=...)``, the previous recipe, ``--retrain-epochs`` epochs) into a new
    versioned directory, and returns the scorer the worker would build from it."""
    import dataclasses
    import tempfile

    from streamrec.model.datasets import sequences
    from streamrec.model.train import train
    from streamrec.model.train_config import TrainConfig
    from streamrec.serve.build import build_scorer

    if not settings.model_dir:
        raise SystemExit("--retrain-every needs --model-dir (the model to start from)")
    base = Path(settings.model_dir)
    recipe = json.loads((base / "train_config.json").read_text())
    cfg = dataclasses.replace(TrainConfig.from_dict(recipe), epochs=args.retrain_epochs, patience=args.retrain_epochs,
                              max_minutes=0)
    work = Path(args.retrain_dir or tempfile.mkdtemp(prefix="streamrec-retrain-"))
    current = [base]

    def retrain(events):
        out = work / f"v{len(current)}"
        train(cfg, sequences(events), out, init_from=current[-1], progress=False, dataset_name="stream")
        current.append(out)
        logging.getLogger(__name__).info("retrained on %d events -> %s", len(events), out)
        return build_scorer(dataclasses.replace(settings, model_dir=str(out), scorer="lm"))

    return retrain


def cmd_split(args) -> int:
    from streamrec.model.datasets import read_events
    events = read_events(args.file, args.format)
    cut = int(len(events) * args.share)
    with open(args.out, "wb") as f:
        for e in events[:cut]:
            f.write(e.to_bytes() + b"\n")
    print(f"wrote the first {cut} of {len(events)} events (time order) of {args.file} to {args.out}")
    return 0


def cmd_generate(args) -> int:
    from streamrec.model.datasets import synthetic, synthetic_titles, write_sequences
    seqs = synthetic(args.users, args.items, args.length, seed=args.seed)
    out = write_sequences(seqs, args.out)
    if args.titles:
        Path(args.titles).write_text("".join(f"{i}\tsyn{i}\t{t}\n" for i, t in synthetic_titles(args.items).items()))
    print(f"wrote {sum(map(len, seqs.values()))} interactions of {len(seqs)} users to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run a Faust worker: interactions -> state -> scorer -> recommendations")
    add_arguments(w)
    w.set_defaults(func=cmd_worker)

    t = sub.add_parser("topics", help="create the declared topics or check them for drift")
    t.add_argument("action", choices=["apply", "check", "list"], help="apply: create missing + report drift")
    add_arguments(t, KAFKA)
    t.set_defaults(func=cmd_topics)

    a = sub.add_parser("acls", help="the Kafka ACLs each role needs: list them, or create them (admin credentials)")
    a.add_argument("action", choices=["list", "apply"])
    a.add_argument("--role", action="append", choices=["worker", "producer", "reader", "topics"],
                   help="worker (default), producer (replay, catalog), reader (tail), topics (topics apply); repeatable")
    a.add_argument("--principal", help="apply: whom to grant, e.g. User:streamrec")
    add_arguments(a, KAFKA)
    a.set_defaults(func=cmd_acls)

    r = sub.add_parser("replay", help="produce interaction events from a file, in timestamp order")
    r.add_argument("file", help="ratings.dat, u.data, ratings.csv, sequence .txt, CSV or JSONL")
    r.add_argument("--format", default="auto",
                   choices=["auto", "jsonl", "movielens-dat", "movielens-100k", "csv", "sequences"])
    r.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    r.add_argument("--limit", type=int, default=0, help="only the first N events (after sorting by time)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(r, KAFKA)
    r.set_defaults(func=cmd_replay)

    c = sub.add_parser("catalog", help="produce item records (titles) to the items topic")
    c.add_argument("file", help="Beauty_items.tsv-style TSV (id, asin, title) or MovieLens movies.csv")
    c.add_argument("--quiet", action="store_true")
    add_arguments(c, KAFKA)
    c.set_defaults(func=cmd_catalog)

    e = sub.add_parser("erase", help="request the erasure of users' state (their lookups answer 404 afterwards)")
    e.add_argument("users", nargs="+", metavar="USER", help="user id(s)")
    e.add_argument("--request-id", help="your reference for the request (default: a random id); logged by the "
                                        "worker instead of the user id")
    add_arguments(e, KAFKA)
    e.set_defaults(func=cmd_erase)

    tl = sub.add_parser("tail", help="follow the recommendations (or dead-letter) topic and print it")
    tl.add_argument("--dead-letters", action="store_true", help="follow the dead-letter topic instead")
    tl.add_argument("--from-beginning", action="store_true")
    tl.add_argument("--max-messages", type=int, default=0, help="stop after N messages (0 = never)")
    tl.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds of silence (0 = never)")
    tl.add_argument("--titles", help="titles file to show next to item ids")
    tl.add_argument("--json", action="store_true", help="print raw JSON messages")
    add_arguments(tl, KAFKA)
    tl.set_defaults(func=cmd_tail)

    q = sub.add_parser("prequential", help="replay a data file through the worker's pipeline offline and report "
                                           "the quality of what it served (each event judges the user's last list)")
    q.add_argument("file", help="ratings.dat, u.data, ratings.csv, sequence .txt, CSV or JSONL (time order)")
    q.add_argument("--format", default="auto",
                   choices=["auto", "jsonl", "movielens-dat", "movielens-100k", "csv", "sequences"])
    q.add_argument("--batch", type=int, default=64, help="events per pipeline batch (the worker's take batches)")
    q.add_argument("--limit", type=int, default=0, help="only the first N events (after sorting by time)")
    q.add_argument("--warmup", type=int, default=0, help="apply the first N events without judging them")
    q.add_argument("--warmup-share", type=float, default=0.0,
                   help="same, as a share of the events (0.5: judge the second half, e.g. after training on the "
                        "first half with `streamrec split`)")
    q.add_argument("--retrain-every", type=int, default=0, metavar="N",
                   help="after every N judged events, continue the model (--model-dir) on all events so far and "
                        "swap it in (periodic retraining; 0 = frozen)")
    q.add_argument("--retrain-epochs", type=int, default=3, help="epochs per retraining")
    q.add_argument("--retrain-dir", help="where the retrained versions go [default: a temporary directory]")
    q.add_argument("--json", help="also write the report here")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(q, ["scorer", "model_dir", "top_k", "recommend_seen", "explain", "history_size", "dedupe_window", "max_event_bytes",
                      "scorer_threads", "group_lengths", "backend", "reranker_dir", "rerank_candidates", "max_batch_size",
                      "max_wait_ms", "max_queue", "scorer_timeout_s"])
    q.set_defaults(func=cmd_prequential)

    s = sub.add_parser("split", help="write the first share of a data file's events (time order) as JSONL, e.g. "
                                     "to train on the past and replay the rest (prequential)")
    s.add_argument("file")
    s.add_argument("--format", default="auto",
                   choices=["auto", "jsonl", "movielens-dat", "movielens-100k", "csv", "sequences"])
    s.add_argument("--share", type=float, default=0.5)
    s.add_argument("--out", required=True, help="JSONL file (streamrec train/eval/replay read it)")
    s.set_defaults(func=cmd_split)

    g = sub.add_parser("generate", help="write a synthetic sequence data set (for demos and tests)")
    g.add_argument("out")
    g.add_argument("--users", type=int, default=300)
    g.add_argument("--items", type=int, default=100)
    g.add_argument("--length", type=int, default=20)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--titles", help="also write item titles (TSV) here")
    g.set_defaults(func=cmd_generate)

    model_cli.register(sub)    # train, eval, coldstart, export: the model side, in its own module
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("kafka", "aiokafka"):   # client connection chatter drowns the tools' own output
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from streamrec.stream.access import AccessError
    try:
        return args.func(args)
    except AccessError as exc:   # a misconfiguration: one clear line, no traceback, no retry loop
        print(f"streamrec {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
