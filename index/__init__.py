"""Bundles of low-bit codes and the exact Top-K Hamming search over them (FAISS among its backends, optional)."""

from index.bundle import Bundle, BundleContent, BundleError, Manifest, publish_bundle, resolve_bundle_path
from index.codes import CodeLayout, dequantize
from index.item_index import ItemIndex, SearchResult

__all__ = [
    "Bundle",
    "BundleContent",
    "BundleError",
    "CodeLayout",
    "ItemIndex",
    "Manifest",
    "SearchResult",
    "dequantize",
    "publish_bundle",
    "resolve_bundle_path",
]
