"""Events on against events off: replay held-out interactions through POST /events and score /recommend before each.

    python -m benchmarks.events_replay --dataset ml-100k --data-dir ../shared/data
    python -m benchmarks.events_replay --dataset gowalla --data-dir ../shared/data --users 2000

Issue #31 asks whether what a user just did makes their next recommendation better. The stream is the data's own
future, never selected on:

- a file with timestamps (ml-100k's ``.inter``): the cut is the ``--cut-quantile`` of all timestamps (default 0.8:
  80 % of the interactions before it). The interactions before the cut are written to a ``.inter`` under the work
  folder and `recsys-train` trains on that file as a user would (its own validation and test split come from it, so
  nothing after the cut is selected on); `recsys-index build` indexes the bundle. The interactions after the cut are
  the stream, in time order (ties: by user id, then item id).
- a LightGCN split (Gowalla: ``train.txt`` / ``test.txt``, no timestamps, so no time order exists): the bundle is
  trained on ``train.txt`` (or given with ``--bundle``), and the stream is a seeded random 10 % (``--stream-fraction``,
  at least one) of each test user's test items, in a random order per user, the users interleaved at random; at most
  ``--users`` users are streamed.

Each mode gets a fresh redis-server and `recsys-serve` (one worker, index on the CPU). Before each event of user u
the replay asks ``GET /recommend?user_id=u&k=20&exclude_seen=true`` and records: a hit (the event's item is in the
20), Recall@20 over u's remaining held-out items (the items of this and every later event of u; on a LightGCN split
also the test items never streamed), whether an item u consumed earlier in the stream was recommended (the
already-consumed rate), and the answer's ``source``. With events ``on`` it then posts the event (its own
``event_id``, the data's timestamp when there is one); with events ``off`` (the static bundle codes, no events key)
it posts nothing. Unknown users (new after the cut) get ``popular`` with events off and ``events`` codes after their
first event with them on. Records (one per dataset, mode and group: all, known and new users, and per source) are
appended to benchmarks/results/events_replay.json; a table and a plot (hit rate against how many earlier stream
events the user had) end the run.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import RESULTS, ROOT, append_records, benchmark_parser, commit, markdown_table, progress
from benchmarks.serving import machine
from benchmarks.serving_stack import RedisProcess, ServiceProcess
from index.bundle import Bundle, resolve_bundle_path

K = 20
EVENTS_KEY = "replay-key"
TRAIN_ARGS = {
    # ml-100k: the quality protocol's schedule (docs/benchmarks/quality.md), a few minutes on 2 cores.
    "inter": "--method hq --bits 2 --epochs 300 --eval-every 5 --patience 6 --lr-decay-patience 3 "
    "--batch-size 2048 --lr 5e-3 --refit",
    # Gowalla: 20-30 s an epoch on 2 cores, so a short run of a fixed length (about 6 minutes).
    "lightgcn": "--method hq --bits 2 --epochs 10 --eval-every 0 --batch-size 8192 --lr 5e-3",
}
BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 10**9))  # earlier stream events of the user, for the plot


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    timestamp: float | None


@dataclass
class Replay:
    """What the replay streams and what it scores against."""

    dataset: str
    order: str  # how the stream is ordered, said in the output and the records
    events: list[Event]
    held_out: dict[str, set[str]]  # per user: every item they consume after the bundle (stream, and never streamed)
    before: dict[str, set[str]] = field(default_factory=dict)  # per user: items of the training file (pre-cut)
    prior: list[Event] = field(default_factory=list)  # the training file's interactions in time order (pre-cut)
    training_data: Path | None = None  # what recsys-train reads


def read_inter(path: Path) -> tuple[list[str], list[str], np.ndarray, str]:
    """(users, items, timestamps, header) of a RecBole ``.inter`` file with a ``timestamp`` column."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    names = [name.split(":")[0] for name in header]
    if "timestamp" not in names:
        raise SystemExit(f"{path}: no timestamp column, so no time order (use a LightGCN split instead)")
    u, i, t = names.index("user_id"), names.index("item_id"), names.index("timestamp")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return [r[u] for r in rows], [r[i] for r in rows], np.array([float(r[t]) for r in rows]), lines[0]


def time_replay(path: Path, quantile: float, work: Path) -> Replay:
    """Cut at the timestamp quantile; the earlier rows go to a training file, the later ones are the stream."""
    users, items, stamps, header = read_inter(path)
    cut = float(np.quantile(stamps, quantile))
    lines = path.read_text().splitlines()[1:]
    training = work / f"{path.stem}_before_cut.inter"
    kept = [line for line, stamp in zip(lines, stamps, strict=True) if stamp < cut]
    training.write_text("\n".join([header, *kept]) + "\n")
    before: dict[str, set[str]] = defaultdict(set)
    rows: dict[bool, list[tuple[float, str, str]]] = {True: [], False: []}
    for user, item, stamp in zip(users, items, stamps.tolist(), strict=True):
        rows[stamp < cut].append((stamp, user, item))
        if stamp < cut:
            before[user].add(item)
    for side in rows.values():
        side.sort(key=lambda row: (row[0], int(row[1]) if row[1].isdigit() else row[1], row[2]))
    events = [Event(user, item, stamp) for stamp, user, item in rows[False]]
    prior = [Event(user, item, stamp) for stamp, user, item in rows[True]]
    held_out: dict[str, set[str]] = defaultdict(set)
    for event in events:
        held_out[event.user_id].add(event.item_id)
    order = f"time order from the {quantile:.0%} quantile of timestamps ({cut:.0f}); ties by user, then item"
    return Replay(path.stem, order, events, dict(held_out), dict(before), prior, training)


def random_replay(folder: Path, fraction: float, max_users: int, seed: int) -> Replay:
    """A seeded ``fraction`` of each test user's items (at least one), users interleaved at random."""
    rng = np.random.default_rng(seed)
    test: dict[str, list[str]] = {}
    for line in (folder / "test.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            test[fields[0]] = fields[1:]
    users = sorted(test, key=int)
    if len(users) > max_users:
        users = [users[i] for i in sorted(rng.choice(len(users), max_users, replace=False))]
    queues = {}
    for user in users:
        items = test[user]
        chosen = rng.choice(len(items), math.ceil(fraction * len(items)), replace=False)
        queues[user] = [items[i] for i in chosen]  # rng.choice's order is random: the user's order
    slots = np.array([user for user in users for _ in queues[user]])
    rng.shuffle(slots)
    position = dict.fromkeys(users, 0)
    events = []
    for user in slots.tolist():
        events.append(Event(user, queues[user][position[user]], None))
        position[user] += 1
    held_out = {user: set(test[user]) for user in users}
    order = (
        f"no timestamps: a random {fraction:.0%} of each user's test items (at least one), {len(users):,} users "
        f"(seed {seed}), random order per user, users interleaved at random"
    )
    return Replay(folder.name, order, events, held_out, training_data=folder)


def train_bundle(data: Path, train_args: str, work: Path) -> Path:
    """`recsys-train` on ``data`` as a user would run it, then `recsys-index build`; the bundle root."""
    root = work / "bundles"
    scripts = Path(sys.executable).parent
    train = [str(scripts / "recsys-train"), "--dataset", str(data), "--bundle-root", str(root), "--device", "cpu"]
    command = [*train, *shlex.split(train_args)]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    subprocess.run([str(scripts / "recsys-index"), "build", "--bundle-root", str(root)], cwd=ROOT, check=True)
    return root


def trained_before_cut(bundle: Bundle, data: Replay) -> bool:
    """Whether a given bundle knows exactly the users and items of the data before the cut (a time replay's
    ``--bundle`` must be one this benchmark trained on the same cut)."""
    items = set().union(*data.before.values())
    return set(bundle.user_ids) == set(data.before) and set(bundle.item_ids) == items


@dataclass
class Answer:
    """One /recommend before one event, scored."""

    user_id: str
    user_known: bool
    earlier: int  # the user's earlier stream events
    source: str
    hit: bool
    recall: float
    consumed: int  # recommended items the user consumed earlier in the stream
    consumed_any: int  # ... or before the cut (items the bundle may not know they saw)


def replay(url: str, data: Replay, bundle: Bundle, *, post: bool, desc: str) -> tuple[list[Answer], dict[str, int]]:
    """Ask before each event, then (``post``) record it; the answers and the events' statuses."""
    consumed: dict[str, set[str]] = defaultdict(set)
    remaining = {user: set(items) for user, items in data.held_out.items()}
    statuses: dict[str, int] = defaultdict(int)
    answers: list[Answer] = []
    headers = {"X-API-Key": EVENTS_KEY}
    with httpx.Client(base_url=url, timeout=30) as client:
        for number, event in enumerate(progress(data.events, desc=desc, unit="event")):
            user = event.user_id
            got = client.get("/recommend", params={"user_id": user, "k": K, "exclude_seen": "true"})
            got.raise_for_status()
            body = got.json()
            items = [item["item_id"] for item in body["items"]]
            earlier = consumed[user]
            answers.append(Answer(
                user_id=user, user_known=bundle.user_row(user) is not None, earlier=len(earlier), source=body["source"],
                hit=event.item_id in items,
                recall=len(remaining[user].intersection(items)) / len(remaining[user]),
                consumed=len(earlier.intersection(items)),
                consumed_any=len((earlier | data.before.get(user, set())).intersection(items)),
            ))  # fmt: skip
            if post:
                payload: dict[str, Any] = {"user_id": user, "item_id": event.item_id, "event_id": f"replay-{number}"}
                if event.timestamp is not None:
                    payload["timestamp"] = event.timestamp
                sent = client.post("/events", json={"events": [payload]}, headers=headers)
                sent.raise_for_status()
                statuses[sent.json()["results"][0]["status"]] += 1
            earlier.add(event.item_id)
            remaining[user].discard(event.item_id)
    return answers, dict(statuses)


def summarise(answers: Iterable[Answer]) -> dict[str, Any]:
    rows = list(answers)
    if not rows:
        return {"events": 0}
    return {
        "events": len(rows),
        "users": len({a.user_id for a in rows}),
        "hit_rate": round(float(np.mean([a.hit for a in rows])), 4),
        "recall": round(float(np.mean([a.recall for a in rows])), 4),
        "consumed_rate": round(float(np.mean([a.consumed > 0 for a in rows])), 4),
        "consumed_per_answer": round(float(np.mean([a.consumed for a in rows])), 3),
        "consumed_any_rate": round(float(np.mean([a.consumed_any > 0 for a in rows])), 4),
        # what the plot draws: [fewest, most earlier stream events of the user, hits, events] per bucket
        "hits_by_earlier": [
            [
                low,
                high,
                sum(a.hit for a in rows if low <= a.earlier <= high),
                sum(low <= a.earlier <= high for a in rows),
            ]
            for low, high in BUCKETS
        ],
    }


def groups(answers: list[Answer]) -> dict[str, list[Answer]]:
    """The rows of the table. Users known or new, and whether the user had an earlier stream event, pick the same
    events in every mode (compare them across modes); a source depends on the mode (compare within one)."""
    out: dict[str, list[Answer]] = {"all": answers}
    for known, who in ((True, "known users"), (False, "new users")):
        out[who] = [a for a in answers if a.user_known == known]
        out[f"{who}, after an event"] = [a for a in answers if a.user_known == known and a.earlier > 0]
    for source in sorted({a.source for a in answers}):
        out[f"source {source}"] = [a for a in answers if a.source == source]
    return {name: rows for name, rows in out.items() if rows}


@dataclass(frozen=True)
class Mode:
    """One replay: ``off`` (no events key: the bundle's codes), ``on`` (every event posted, ``recent_items`` kept per
    user), ``primed`` (as ``on``, after every interaction before the cut was posted too: what Redis would hold had
    events been posted all along) or ``recoded`` (nothing of the stream posted, but each known user re-coded from
    their trained items alone: one event of an item they trained on, so their fresh code holds no new item, only the
    zero ego)."""

    kind: str
    recent_items: int = 50

    @property
    def name(self) -> str:
        cap = f", {self.recent_items} recent" if self.recent_items != 50 else ""
        return f"{self.kind}{cap}" if self.kind in ("on", "primed") else self.kind


def event_bodies(events: list[Event], prefix: str) -> list[dict[str, Any]]:
    """The JSON of ``events`` for POST /events, each with its own event id."""
    return [
        {"user_id": e.user_id, "item_id": e.item_id, "event_id": f"{prefix}-{n}"}
        | ({"timestamp": e.timestamp} if e.timestamp is not None else {})
        for n, e in enumerate(events)
    ]


def post_events(url: str, events: list[dict[str, Any]], desc: str, batch: int = 1000) -> None:
    """Post events in batches of at most ``batch`` (the service's default limit), in order."""
    with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": EVENTS_KEY}) as client:
        for start in progress(range(0, len(events), batch), desc=desc, unit="batch"):
            client.post("/events", json={"events": events[start : start + batch]}).raise_for_status()


def recode_known(url: str, data: Replay, bundle: Bundle) -> int:
    """Post, for each known user of the stream, one event of the first item they trained on (mode ``recoded``)."""
    events = []
    first = min((e.timestamp for e in data.events if e.timestamp is not None), default=None)
    for user in sorted({e.user_id for e in data.events}):
        row = bundle.user_row(user)
        seen = bundle.seen_items(row) if row is not None else np.empty(0, dtype=np.int64)
        if seen.size:
            event: dict[str, Any] = {"user_id": user, "item_id": bundle.item_ids[int(seen[0])], "event_id": "recode"}
            if first is not None:
                event["timestamp"] = first - 1
            events.append(event)
    post_events(url, events, desc="re-code known users")
    return len(events)


def run_mode(mode: Mode, data: Replay, bundle_root: Path, work: Path) -> tuple[list[Answer], dict[str, Any]]:
    """A fresh redis-server and service for one mode, and the replay against them."""
    bundle = Bundle.load(resolve_bundle_path(bundle_root))
    settings = {"RECSYS_EVENTS_RECENT_ITEMS": str(mode.recent_items)}
    if mode.kind != "off":
        settings["RECSYS_EVENTS_API_KEY"] = EVENTS_KEY
    redis = RedisProcess.start(work / "redis.log")
    recoded = 0
    try:
        service = ServiceProcess.start(
            name=f"events {mode.name}", bundle=bundle_root, redis_url=redis.url, device="cpu", backend="auto",
            workers=1, log=work / "service.log", settings=settings, extra_env={}, timeout_s=300,
        )  # fmt: skip
        try:
            if mode.kind == "recoded":
                recoded = recode_known(service.url, data, bundle)
            if mode.kind == "primed":
                post_events(service.url, event_bodies(data.prior, "prior"), desc="post the interactions before the cut")
            started = time.monotonic()
            answers, statuses = replay(
                service.url, data, bundle, post=mode.kind in ("on", "primed"), desc=f"{data.dataset} {mode.name}"
            )
            seconds = time.monotonic() - started
        finally:
            service.stop()
    finally:
        redis.stop()
    info = {"statuses": statuses, "recoded_users": recoded, "seconds": round(seconds, 1),
            "model_version": bundle.manifest.model_version, "recent_items": mode.recent_items}  # fmt: skip
    return answers, info


def hit_curve(answers: list[Answer], known: bool) -> list[float | None]:
    out: list[float | None] = []
    for low, high in BUCKETS:
        rows = [a.hit for a in answers if a.user_known == known and low <= a.earlier <= high]
        out.append(float(np.mean(rows)) if len(rows) >= 20 else None)
    return out


def plot(results: dict[str, list[Answer]], dataset: str, path: Path) -> None:
    """HitRate@20 against the user's earlier stream events, one line per mode, one panel each for known and new
    users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{low}" if low == high else (f"{low}–{high}" if high < 10**9 else f"{low}+") for low, high in BUCKETS]
    panels = [known for known in (True, False) if any(a.user_known == known for rows in results.values() for a in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    markers = ["--s", "-o", ":^", "-.d", "-v", ":x", "--*"]
    for ax, known in zip(axes[0], panels, strict=True):
        for number, (mode, answers) in enumerate(results.items()):
            style = markers[number % len(markers)]
            curve = hit_curve(answers, known)
            xs = [i for i, v in enumerate(curve) if v is not None]
            ax.plot(xs, [curve[i] for i in xs], style, label=f"events {mode}")
        ax.set_xticks(range(len(BUCKETS)), labels)
        ax.set_xlabel("the user's earlier events in the stream")
        ax.set_title(f"{dataset}, {'known' if known else 'new'} users", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"HitRate@{K} of the next item")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--dataset", default="ml-100k", help="a name under --data-dir, or a path (.inter or folder)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cut-quantile", type=float, default=0.8, help="share of interactions before the cut")
    parser.add_argument("--stream-fraction", type=float, default=0.1, help="LightGCN split: test items streamed")
    parser.add_argument("--users", type=int, default=2000, help="LightGCN split: most users streamed")
    parser.add_argument("--seed", type=int, default=31, help="LightGCN split: which users and items, and their order")
    parser.add_argument("--train-args", default=None, help="recsys-train options (default: one per kind of data)")
    parser.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="serve this bundle, do not train (a time replay's must come from the same cut)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["off", "on", "primed", "recoded"],
        default=["off", "on"],
        help="off: no events; on: every event posted; primed: the same after posting the data before the cut; "
        "recoded: known users re-coded from their trained items, nothing posted",
    )
    parser.add_argument(
        "--recent-items",
        nargs="+",
        type=int,
        default=[50],
        help="RECSYS_EVENTS_RECENT_ITEMS of the service: modes 'on' and 'primed' run once per value",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where training files and bundles go (temp)")
    parser.add_argument("--out", type=Path, default=RESULTS / "events_replay.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: results/events_replay_<dataset>.png)")
    args = parser.parse_args(argv)
    source = args.dataset if Path(args.dataset).exists() else args.data_dir / args.dataset
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="events-replay-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        inter = source if source.suffix == ".inter" else next(iter(sorted(source.glob("*.inter"))), None)
        if inter is not None:
            data = time_replay(inter, args.cut_quantile, work)
            kind = "inter"
        else:
            data = random_replay(source, args.stream_fraction, args.users, args.seed)
            kind = "lightgcn"
        print(f"{data.dataset}: {len(data.events):,} events of {len(data.held_out):,} users; {data.order}")
        train_args = args.train_args if args.train_args is not None else TRAIN_ARGS[kind]
        if args.bundle is not None:
            bundle_root, train_args = args.bundle, f"(given bundle {args.bundle})"
            if kind == "inter" and not trained_before_cut(Bundle.load(resolve_bundle_path(args.bundle)), data):
                parser.error(f"{args.bundle} was not trained on the interactions before this cut")
        else:
            assert data.training_data is not None
            bundle_root = train_bundle(data.training_data, train_args, work)
        results: dict[str, list[Answer]] = {}
        info: dict[str, dict[str, Any]] = {}
        modes = [
            Mode(kind, cap) for kind in args.modes for cap in (args.recent_items if kind in ("on", "primed") else [50])
        ]
        for mode in modes:
            results[mode.name], info[mode.name] = run_mode(mode, data, bundle_root, work)
    meta = {
        "commit": commit(), "machine": machine(), "cores": os.cpu_count(),
        "command": shlex.join(["python", "-m", "benchmarks.events_replay", *(argv or sys.argv[1:])]),
        "dataset": data.dataset, "order": data.order, "train_args": train_args, "k": K,
        "stream_events": len(data.events), "stream_users": len(data.held_out),
    }  # fmt: skip
    records, table = [], []
    for mode, answers in results.items():
        for group, rows in groups(answers).items():
            summary = summarise(rows)
            records.append({**meta, **info[mode], "mode": mode, "group": group, **summary})
            table.append([data.dataset, mode, group, f"{summary['events']:,}", summary["hit_rate"], summary["recall"],
                          f"{summary['consumed_rate']:.1%}", f"{summary['consumed_any_rate']:.1%}"])  # fmt: skip
    append_records(args.out, records)
    plot(results, data.dataset, args.plot or RESULTS / f"events_replay_{data.dataset}.png")
    header = ["dataset", "events", "group", "n", f"HitRate@{K}", f"Recall@{K}", "consumed (stream)", "consumed (any)"]
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
