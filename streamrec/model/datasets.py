"""Interaction data sets on disk -> events and per-user sequences (pure file parsing, no Kafka).

Readers: MovieLens ``ratings.dat`` (``u::i::r::t``), ``u.data`` (tab-separated), ``ratings.csv`` (ml-latest), per-user
sequence files (``user item item ...``, as the Amazon sets in ICLRec/S3-Rec), generic CSV with a header, and
JSONL of interaction events. Event ids are derived from the file and line, so replaying a file twice produces the
same ids and the worker applies each event once.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from streamrec.events import EVENT_TYPES, Interaction

SEQUENCE_BASE_TS = 1_600_000_000.0   # sequence files carry no time: position i becomes base + i minutes


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    if name.endswith(".dat"):
        return "movielens-dat"
    if name == "u.data":
        return "movielens-100k"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".txt"):
        return "sequences"
    raise ValueError(f"cannot tell the format of {path}; pass --format")


def read_events(path: str | Path, fmt: str = "auto") -> list[Interaction]:
    """All interactions of a file, sorted by timestamp (stable, so ties keep file order)."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {"jsonl": _jsonl, "movielens-dat": _ml_dat, "movielens-100k": _ml_100k, "csv": _csv,
               "sequences": _sequences}
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(readers)}")
    events = list(readers[fmt](path))
    events.sort(key=lambda e: e.timestamp)
    return events


def _rating(stem: str, n: int, user: str, item: str, rating: str, ts: str) -> Interaction:
    return Interaction(f"{stem}-{n}", user, item, "rating", float(ts), float(rating))


def _ml_dat(path: Path) -> Iterator[Interaction]:
    with path.open(encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                u, i, r, t = line.strip().split("::")
                yield _rating(path.stem, n, u, i, r, t)


def _ml_100k(path: Path) -> Iterator[Interaction]:
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                u, i, r, t = line.split("\t")
                yield _rating(path.stem, n, u, i, r, t.strip())


_CSV_ALIASES = {"user_id": ("user_id", "userId", "user"), "item_id": ("item_id", "movieId", "itemId", "item"),
                "timestamp": ("timestamp", "ts", "time"), "value": ("value", "rating"),
                "event_type": ("event_type", "type"), "event_id": ("event_id", "id")}


def _csv(path: Path) -> Iterator[Interaction]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = {k: next((a for a in aliases if a in (reader.fieldnames or [])), None)
                for k, aliases in _CSV_ALIASES.items()}
        if not cols["user_id"] or not cols["item_id"]:
            raise ValueError(f"{path}: CSV needs user and item columns, has {reader.fieldnames}")
        for n, row in enumerate(reader, 1):
            value = float(row[cols["value"]]) if cols["value"] and row[cols["value"]] != "" else None
            etype = row[cols["event_type"]] if cols["event_type"] else ("rating" if value is not None else "view")
            if etype not in EVENT_TYPES:
                raise ValueError(f"{path}:{n + 1}: unknown event type {etype!r}")
            yield Interaction(row[cols["event_id"]] if cols["event_id"] else f"{path.stem}-{n}",
                              row[cols["user_id"]], row[cols["item_id"]], etype,
                              float(row[cols["timestamp"]]) if cols["timestamp"] else SEQUENCE_BASE_TS + n,
                              value)


def _sequences(path: Path) -> Iterator[Interaction]:
    with path.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            user, items = parts[0], parts[1:]
            for pos, item in enumerate(items):
                yield Interaction(f"{path.stem}-{user}-{pos}", user, item, "purchase", SEQUENCE_BASE_TS + 60.0 * pos)


def _jsonl(path: Path) -> Iterator[Interaction]:
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            etype = d.get("event_type", "view")
            if etype not in EVENT_TYPES:   # as the CSV reader: fail loudly rather than replay dead letters
                raise ValueError(f"{path}:{n}: unknown event type {etype!r}")
            value = d.get("value")
            yield Interaction(str(d.get("event_id") or f"{path.stem}-{n}"), str(d["user_id"]), str(d["item_id"]),
                              etype, float(d.get("timestamp", SEQUENCE_BASE_TS + n)),
                              None if value is None else float(value), d.get("properties") or {})


def sequences(events: Iterable[Interaction]) -> dict[str, list[str]]:
    """Per-user item sequences in time order (events must already be time-sorted)."""
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e.user_id].append(e.item_id)
    return dict(out)


def read_sequences(path: str | Path, fmt: str = "auto") -> dict[str, list[str]]:
    return sequences(read_events(path, fmt))


def read_titles(path: str | Path) -> dict[str, str]:
    """Item titles: ``Beauty_items.tsv`` (id, asin, title) or MovieLens ``movies.csv`` (movieId, title, genres)."""
    path = Path(path)
    titles: dict[str, str] = {}
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3 and parts[0].isdigit():
                    titles[parts[0]] = parts[2]
    else:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                genres = row.get("genres", "").replace("|", ", ")
                titles[row["movieId"]] = f"{row['title']} ({genres})" if genres else row["title"]
    return titles


def synthetic(n_users: int = 200, n_items: int = 100, length: int = 20, n_clusters: int = 5,
              seed: int = 0) -> dict[str, list[str]]:
    """Users who walk mostly within one cluster of items, mostly to the "next" item in it.

    Learnable structure (next-item transitions, cluster affinity) with noise, for tests and the demo.
    """
    rng = random.Random(seed)
    per = n_items // n_clusters
    out = {}
    for u in range(n_users):
        c = rng.randrange(n_clusters)
        pos = rng.randrange(per)
        seq = []
        for _ in range(length):
            r = rng.random()
            if r < 0.7:
                pos = (pos + 1) % per
            elif r < 0.9:
                pos = rng.randrange(per)
            else:
                c = rng.randrange(n_clusters)
            seq.append(str(1 + c * per + pos))
        out[f"u{u}"] = seq
    return out


def synthetic_titles(n_items: int = 100, n_clusters: int = 5) -> dict[str, str]:
    themes = ["hiking boots trail outdoor", "lipstick makeup beauty", "lego bricks toy kids", "espresso coffee grinder",
              "mystery novel book", "guitar strings music", "yoga mat fitness", "dog food pet"]
    per = n_items // n_clusters
    return {str(1 + c * per + p): f"{themes[c % len(themes)]} model {p}" for c in range(n_clusters) for p in range(per)}


def write_sequences(seqs: dict[str, list[str]], path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in seqs.items()))
    return path
