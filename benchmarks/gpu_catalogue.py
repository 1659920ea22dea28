"""Catalogue-scale bundles for the serving benchmark, published through the trainer's bundle writer.

    python -m benchmarks.gpu_catalogue --root /tmp/cat --items 200000 --users 20000 --layout sign1 --dim 256
    python -m benchmarks.gpu_catalogue --strip-cold-start var/serving/binary --root .carry/gowalla_hq

The service must load these exactly as it loads a trained model, so they go through ``publish_bundle``
(checksums, shapes, CURRENT) and are read back by ``Bundle.load`` in every worker. Codes are uniform random bits
(or unit-normal floats for the ``float32`` layout): search cost does not depend on what the codes mean, only on
their count and width. Each user has 20–200 seen items spread over the whole catalogue (one random item in each of
``count`` equal strata), so exclude-seen costs what it costs in production (the search over-fetches k + |seen|)
and the rows come out sorted, which the writer otherwise sorts item by item.

``--strip-cold-start`` copies a trained bundle without its cold-start arrays (the Gowalla ones are 31 MB of the
39): the benchmark's requests never send histories, and the copy must travel to the GPU machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from benchmarks.harness import benchmark_parser
from index.bundle import Bundle, BundleContent, publish_bundle
from index.codes import CodeLayout, code_width

SEEN_MIN, SEEN_MAX = 20, 200
POPULAR = 1000  # the fallback list: unknown users get its first k items


def user_id(row: int) -> str:
    return f"u{row}"


def item_id(row: int) -> str:
    return f"i{row}"


def random_codes(
    rng: np.random.Generator, rows: int, layout: CodeLayout, dim: int, chunk: int = 1 << 20
) -> npt.NDArray[np.generic]:
    """Uniform random bits, or unit-normal float vectors for ``float32``; made in chunks to bound the peak."""
    width = code_width(layout, dim)
    if layout is CodeLayout.FLOAT32:
        out_f = np.empty((rows, width), np.float32)
        for start in range(0, rows, chunk):
            out_f[start : start + chunk] = rng.standard_normal((min(chunk, rows - start), width), dtype=np.float32)
        return out_f
    out = np.empty((rows, width), np.uint8)
    for start in range(0, rows, chunk):
        out[start : start + chunk] = rng.integers(0, 256, (min(chunk, rows - start), width), dtype=np.uint8)
    return out


def seen_matrix(rng: np.random.Generator, n_users: int, n_items: int) -> sp.csr_matrix:
    """20–200 distinct items per user, one in each of ``count`` equal strata of the catalogue: rows come sorted."""
    if n_items < SEEN_MAX:
        raise ValueError(
            f"a catalogue needs at least {SEEN_MAX} items to give every user up to that many, not {n_items}"
        )
    counts = rng.integers(SEEN_MIN, SEEN_MAX + 1, n_users).astype(np.int64)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    owner = np.repeat(np.arange(n_users), counts)
    position = np.arange(indptr[-1], dtype=np.int64) - indptr[owner]
    stride = (n_items // counts)[owner]
    indices = position * stride + (rng.random(indptr[-1]) * stride).astype(np.int64)
    data = np.ones(indices.size, np.bool_)
    return sp.csr_matrix((data, indices, indptr), shape=(n_users, n_items))


def synthetic_content(
    *, n_items: int, n_users: int, layout: CodeLayout, dim: int, seed: int, version: str
) -> BundleContent:
    """A bundle's content: ids ``u<row>`` / ``i<row>``, random codes, seen items, a popularity list."""
    rng = np.random.default_rng(seed)
    bits = 1 if layout is CodeLayout.SIGN1 else 2 if layout is CodeLayout.PLANES2 else 32
    return BundleContent(
        model_version=version,
        dataset=f"synthetic-{n_items}x{n_users}",
        method="random-codes" if layout.is_binary else "random-floats",
        bits=bits,
        dim=dim,
        code_layout=layout,
        user_codes=random_codes(rng, n_users, layout, dim),
        item_codes=random_codes(rng, n_items, layout, dim),
        user_ids=[user_id(row) for row in range(n_users)],
        item_ids=[item_id(row) for row in range(n_items)],
        seen=seen_matrix(rng, n_users, n_items),
        popular=rng.choice(n_items, size=min(POPULAR, n_items), replace=False).astype(np.int64),
        training={"synthetic": {"seed": seed, "seen_per_user": [SEEN_MIN, SEEN_MAX]}},
    )


def publish_synthetic(root: Path, *, n_items: int, n_users: int, layout: CodeLayout, dim: int, seed: int = 23) -> Path:
    """Publish one synthetic bundle under ``root`` (made CURRENT); its version names its shape."""
    version = f"synthetic-{layout.value}-d{dim}-{n_items}x{n_users}"
    content = synthetic_content(n_items=n_items, n_users=n_users, layout=layout, dim=dim, seed=seed, version=version)
    return publish_bundle(root, content)


def strip_cold_start(source: Path, root: Path) -> Path:
    """Publish ``source``'s bundle again under ``root`` without its cold-start arrays (same version, codes, ids)."""
    bundle = Bundle.load(source)
    m = bundle.manifest
    seen = sp.csr_matrix(
        (np.ones(bundle.seen_indices.size, np.bool_), bundle.seen_indices, bundle.seen_indptr),
        shape=(m.n_users, m.n_items),
    )
    content = BundleContent(
        model_version=m.model_version,
        dataset=m.dataset,
        method=m.method,
        bits=m.bits,
        dim=m.dim,
        code_layout=m.code_layout,
        user_codes=bundle.user_codes,
        item_codes=bundle.item_codes,
        user_ids=bundle.user_ids,
        item_ids=bundle.item_ids,
        seen=seen,
        popular=bundle.popular,
        user_scales=bundle.user_scales,
        item_scales=bundle.item_scales,
        scale_mode=m.scale_mode,
        metrics=m.metrics,
        training={**m.training, "cold_start": "stripped for the serving benchmark"},
    )
    return publish_bundle(root, content)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--root", type=Path, required=True, help="bundle root to publish into (CURRENT names it)")
    parser.add_argument("--items", type=int, default=200_000, help="catalogue size")
    parser.add_argument("--users", type=int, default=20_000, help="users with codes and seen items")
    parser.add_argument("--layout", choices=[layout.value for layout in CodeLayout], default="sign1")
    parser.add_argument("--dim", type=int, default=256, help="code dimensions (sign1: bits; float32: floats)")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--strip-cold-start", type=Path, default=None, metavar="BUNDLE",
        help="instead: copy this trained bundle (or root with CURRENT) without cold_start.npz",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.strip_cold_start is not None:
        path = strip_cold_start(args.strip_cold_start, args.root)
    else:
        if args.items < 1 or args.users < 1:
            parser.error("--items and --users must be positive")
        layout = CodeLayout(args.layout)
        path = publish_synthetic(args.root, n_items=args.items, n_users=args.users, layout=layout, dim=args.dim)
    print(f"published {path} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
