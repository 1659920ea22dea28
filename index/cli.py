"""`recsys-index`: build a bundle's FAISS index (and store it in the bundle), or check a bundle.

`build` needs FAISS (the `cpu` or `gpu` extra): without it, it refuses in one line (exit 2) rather than succeed
without writing the file it is run for. A bundle without `index.faiss` serves as it is: every backend searches its
item codes, and a FAISS backend builds its index from them. `check` runs anywhere; where FAISS is not installed it
cannot read a stored index, and says so (`stored_index_checked`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np

from index.bundle import INDEX_FILE, Bundle, BundleError, add_file_to_bundle
from index.codes import item_search_form
from index.command_line import ENDINGS, raise_on_sigterm, say_ending
from index.item_index import IndexSelfCheckError, ItemIndex
from index.out_of_memory import out_of_memory
from index.retrieval import (
    BACKENDS,
    DevicePreference,
    has_faiss,
    import_faiss,
    stored_index,
    write_stored_index,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-index", description="FAISS indexes for bundles (build needs the `cpu` or `gpu` extra)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("build", "build the item index of a bundle, self-check it and add it to the bundle"),
        ("check", "verify a bundle (checksums, shapes) and self-check its index"),
    ):
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument(
            "--bundle-root", type=Path, default=Path("var/bundles"), help="a bundle, or a root whose CURRENT names one"
        )
        command.add_argument(
            "--device", choices=get_args(DevicePreference), default="auto", help="where to build/search"
        )
        command.add_argument(
            "--backend",
            choices=list(BACKENDS),
            default="auto",
            help="Hamming search backend (auto: fastest here); float bundles always search by FAISS inner product",
        )
    return parser


def build(bundle_root: Path, device: DevicePreference, backend: str = "auto") -> dict[str, object]:
    import_faiss("recsys-index build (index.faiss is FAISS's index of the items)")
    bundle = Bundle.load(bundle_root)
    started = time.perf_counter()
    stored = stored_index_of(bundle)
    index = ItemIndex.build(
        bundle.item_codes, bundle.layout, bundle.dim, device=device, backend=backend, user_layout=bundle.user_layout,
        stored=stored,
    )  # fmt: skip
    index.self_check()
    add_file_to_bundle(bundle.path, INDEX_FILE, partial(write_stored_index, stored))  # `check` reads it back
    return {
        "bundle": str(bundle.path),
        "items": index.n_items,
        "layout": str(bundle.layout),
        "on_gpu": index.on_gpu,
        "backend": index.backend,
        "seconds": round(time.perf_counter() - started, 3),
    }


BUILD_CHUNK = 1 << 20  # items whose search forms are computed at once: the index holds the only copy of them all


def stored_index_of(bundle: Bundle) -> Any:
    """FAISS's index of the bundle's items, their search forms added a chunk at a time."""
    n_items = bundle.manifest.n_items
    forms = (
        item_search_form(bundle.item_codes[start : start + BUILD_CHUNK], bundle.layout, bundle.dim, bundle.user_layout)
        for start in range(0, max(n_items, 1), BUILD_CHUNK)
    )
    index = stored_index(next(forms))
    for chunk in forms:
        index.add(np.ascontiguousarray(chunk))
    return index


def check(bundle_root: Path, device: DevicePreference, backend: str = "auto") -> dict[str, object]:
    bundle = Bundle.load(bundle_root)
    ItemIndex.for_bundle(bundle, device=device, backend=backend)
    return {
        "bundle": str(bundle.path),
        "model_version": bundle.manifest.model_version,
        "stored_index": bundle.index_path is not None,
        "stored_index_checked": bundle.index_path is not None and has_faiss(),
        "metrics": bundle.manifest.metrics,
    }


def main(argv: list[str] | None = None) -> int:
    raise_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    action = build if args.command == "build" else check
    try:
        print(json.dumps(action(args.bundle_root, cast(DevicePreference, args.device), args.backend)))
    except (BundleError, IndexSelfCheckError, ValueError, RuntimeError, MemoryError) as error:
        if (allocation := out_of_memory(error)) is not None:
            print(f"recsys-index: error: out of memory ({allocation}); --device cpu holds the codes in host "
                  "memory instead", file=sys.stderr)  # fmt: skip
        else:
            print(f"recsys-index: error: {error}", file=sys.stderr)
        return 2
    except ENDINGS as error:
        return say_ending("recsys-index", error, interrupted="the bundle is as it was")
    return 0


if __name__ == "__main__":
    sys.exit(main())
