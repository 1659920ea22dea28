"""`recsys-generate`: write a synthetic interaction file that ``recsys-train --dataset PATH`` reads like a user's.

The in-memory ``--dataset synthetic`` never touches a file, so it cannot show what loading a real
log costs. This command draws the same kind of data (power-law user activity by default, Zipf item
popularity, communities) block by block of users, in threads, and streams it to a ``.csv``
(``user_id,item_id``) or RecBole ``.inter`` file: memory holds a few blocks, never the whole set.

    recsys-generate --users 10000000 --items 10000000 --interactions-per-user 20.1 --out /data/big.csv

Users are written as ``0..users-1`` and items as ``0..items-1`` (items never drawn do not appear), in
``(user, item)`` order, without duplicate pairs. The same options give the same file, whatever the
number of threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.command_line import Terminated, raise_on_sigterm, say_ending
from index.out_of_memory import out_of_memory
from index.threads import in_order, usable_cores
from trainer.data.int_text import format_rows
from trainer.data.synthetic import MIN_ITEMS_PER_USER, SyntheticConfig, SyntheticDraw
from trainer.options import Bounds

USERS_PER_BLOCK = 1 << 16  # fixed, not per machine: a block's random stream is its index, so this shapes the data
HEADERS = {".csv": ("user_id,item_id\n", ","), ".inter": ("user_id:token\titem_id:token\n", "\t")}


@dataclass(frozen=True)
class Written:
    """What ``write_synthetic`` put in the file."""

    path: Path
    interactions: int
    bytes: int
    seconds: float


def write_synthetic(config: SyntheticConfig, out: Path, *, threads: int | None = None) -> Written:
    """Draw ``config``'s interactions block by block and write them to ``out`` (``.csv`` or ``.inter``).

    The file appears complete or not at all: it is written beside ``out`` and renamed into place.

    Example::

        written = write_synthetic(SyntheticConfig(n_users=10**6, n_items=10**6, activity="power-law"), Path("x.csv"))
    """
    if out.suffix not in HEADERS:
        raise ValueError(f"{out}: expected a .csv or .inter path, got suffix {out.suffix!r}")
    header, sep = HEADERS[out.suffix]
    started = time.perf_counter()
    draw = SyntheticDraw.build(config)
    n_blocks = -(-config.n_users // USERS_PER_BLOCK)
    workers = threads or usable_cores()

    def block_text(index: int) -> tuple[int, bytes]:
        users, items = np.divmod(draw.block(index, USERS_PER_BLOCK), config.n_items)
        return users.shape[0], format_rows([users, items], sep)

    out.parent.mkdir(parents=True, exist_ok=True)
    unfinished = out.with_name(f".{out.name}.{os.getpid()}.partial")
    interactions = 0
    try:
        with ThreadPoolExecutor(workers) as pool, unfinished.open("wb") as file:
            file.write(header.encode())
            bar = tqdm(total=config.n_users, unit="user", unit_scale=True, desc=out.name, disable=None)
            with bar:
                blocks = (partial(block_text, index) for index in range(n_blocks))
                for index, (rows, text) in enumerate(in_order(pool, blocks, window=2 * workers)):
                    file.write(text)
                    interactions += rows
                    bar.update(min(USERS_PER_BLOCK, config.n_users - index * USERS_PER_BLOCK))
        os.replace(unfinished, out)
    finally:
        unfinished.unlink(missing_ok=True)
    return Written(out, interactions, out.stat().st_size, time.perf_counter() - started)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-generate",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Example: recsys-generate --users 1000000 --items 1000000 --out data/synthetic-1m.csv",
    )
    defaults = SyntheticConfig()
    parser.add_argument("--users", type=int, required=True, help="number of users (every one gets >= 3 items)")
    parser.add_argument("--items", type=int, required=True, help="number of items in the catalogue")
    parser.add_argument("--interactions-per-user", type=float, default=20.0,
                        help="mean distinct items per user (default 20; > 3)")  # fmt: skip
    parser.add_argument("--max-items-per-user", type=int, default=10_000,
                        help="cap on one user's items (default 10000; at most half the items are used)")  # fmt: skip
    parser.add_argument("--activity", choices=["power-law", "geometric"], default="power-law",
                        help="distribution of items per user (default power-law, like real logs)")  # fmt: skip
    parser.add_argument("--communities", type=int, default=100, help="latent user-item communities (default 100)")
    parser.add_argument("--community-affinity", type=float, default=defaults.community_affinity,
                        help="share of a user's draws from their own community (default 0.8)")  # fmt: skip
    parser.add_argument("--popularity-exponent", type=float, default=defaults.popularity_exponent,
                        help="Zipf exponent of item popularity (default 1.0)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    parser.add_argument("--out", type=Path, required=True, help="the file to write: PATH.csv or PATH.inter")
    return parser


# What each number may be, checked by flag before anything is drawn (the config's own checks name its fields).
BOUNDS = {
    "--users": Bounds(at_least=1),
    "--items": Bounds(at_least=MIN_ITEMS_PER_USER),
    "--interactions-per-user": Bounds(at_least=MIN_ITEMS_PER_USER),
    "--max-items-per-user": Bounds(at_least=MIN_ITEMS_PER_USER),
    "--communities": Bounds(at_least=1),
    "--community-affinity": Bounds(at_least=0, at_most=1),
    "--popularity-exponent": Bounds(at_least=0),
    "--seed": Bounds(at_least=0),
    "--threads": Bounds(at_least=1),
}


def check_bounds(args: argparse.Namespace) -> None:
    for flag, bounds in BOUNDS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and (reason := bounds.refusal(value)) is not None:
            raise ValueError(f"{flag} {reason}")


def main(argv: list[str] | None = None) -> int:
    raise_on_sigterm()
    args = build_parser().parse_args(argv)
    try:
        check_bounds(args)
        config = SyntheticConfig(
            n_users=args.users,
            n_items=args.items,
            mean_items_per_user=args.interactions_per_user,
            max_items_per_user=args.max_items_per_user,
            activity=args.activity,
            n_communities=args.communities,
            community_affinity=args.community_affinity,
            popularity_exponent=args.popularity_exponent,
            seed=args.seed,
        )
        written = write_synthetic(config, args.out, threads=args.threads)
    except (ValueError, OSError) as error:
        print(f"recsys-generate: error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:
        print(f"recsys-generate: error: out of memory ({out_of_memory(error)}); fewer --users, --items or "
              "--communities, or a machine with more memory", file=sys.stderr)  # fmt: skip
        return 2
    except (KeyboardInterrupt, Terminated) as error:
        return say_ending("recsys-generate", error, interrupted="no partial file is left at --out")
    print(
        f"{written.path}: {args.users} users, {args.items} items, {written.interactions} interactions, "
        f"{written.bytes / 1e6:.1f} MB in {written.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
