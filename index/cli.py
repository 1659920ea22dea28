"""`recsys-index`: build a bundle's FAISS index (and store it in the bundle), or check a bundle."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import cast, get_args

from index.bundle import INDEX_FILE, Bundle, BundleError, add_file_to_bundle
from index.item_index import IndexSelfCheckError, ItemIndex
from index.retrieval import BACKENDS, DevicePreference


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-index", description="FAISS binary indexes for bundles.")
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
    bundle = Bundle.load(bundle_root)
    started = time.perf_counter()
    index = ItemIndex.build(
        bundle.item_codes, bundle.layout, bundle.dim, device=device, backend=backend, user_layout=bundle.user_layout
    )
    index.self_check(bundle.item_codes)
    add_file_to_bundle(bundle.path, INDEX_FILE, index.serialize())
    Bundle.load(bundle.path)  # re-verify what readers will now see
    return {
        "bundle": str(bundle.path),
        "items": index.n_items,
        "layout": str(bundle.layout),
        "on_gpu": index.on_gpu,
        "backend": index.backend,
        "seconds": round(time.perf_counter() - started, 3),
    }


def check(bundle_root: Path, device: DevicePreference, backend: str = "auto") -> dict[str, object]:
    bundle = Bundle.load(bundle_root)
    ItemIndex.for_bundle(bundle, device=device, backend=backend)
    return {
        "bundle": str(bundle.path),
        "model_version": bundle.manifest.model_version,
        "stored_index": bundle.index_path is not None,
        "metrics": bundle.manifest.metrics,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    action = build if args.command == "build" else check
    try:
        print(json.dumps(action(args.bundle_root, cast(DevicePreference, args.device), args.backend)))
    except (BundleError, IndexSelfCheckError, ValueError, RuntimeError) as error:
        print(f"recsys-index: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
