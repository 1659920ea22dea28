"""Without FAISS (neither the `cpu` nor the `gpu` extra installed) the index package imports and searches a bundle's
codes with numpy; what needs FAISS is refused in one line that names the extra."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index.bundle import INDEX_FILE, MANIFEST, Bundle
from index.cli import main as index_main
from index.codes import CodeLayout, encode_sign1
from index.item_index import ItemIndex
from index.retrieval import FaissMissing, available_backends, resolve_backend
from tests.conftest import TrainedBundle, without_faiss


def indexed_copy(bundle: TrainedBundle, path: Path) -> Bundle:
    """A copy of the bundle with its FAISS index built (by this process, which has FAISS)."""
    shutil.copytree(Bundle.load(bundle.root).path, path)
    assert index_main(["build", "--bundle-root", str(path), "--device", "cpu"]) == 0
    return Bundle.load(path)


def search_everyone(index: ItemIndex, bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    seen = [bundle.seen_items(row) for row in range(bundle.manifest.n_users)]
    found = index.search(np.asarray(bundle.user_codes), 20, exclude=seen)
    return found.ids, found.scores


def test_without_faiss_a_bundle_is_searched_by_numpy_with_faisss_answers(
    tmp_path: Path, ste_bundle: TrainedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = indexed_copy(ste_bundle, tmp_path / "copy")
    want = search_everyone(ItemIndex.for_bundle(bundle, device="cpu", backend="faiss-cpu"), bundle)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails as an absent package's does
    index = ItemIndex.for_bundle(bundle, device="cpu")  # its index.faiss is left unread
    assert index.backend == "numpy" and "faiss-cpu" not in available_backends()
    got = search_everyone(index, bundle)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert resolve_backend("auto", "cpu", (5_000_000, 32)) == "numpy"  # where FAISS would win, were it there
    for backend in ("faiss-cpu", "numpy+faiss-cpu"):
        with pytest.raises(FaissMissing, match=re.escape(f"the {backend} retrieval backend needs FAISS")):
            ItemIndex.for_bundle(bundle, device="cpu", backend=backend)
    with pytest.raises(FaissMissing, match="float32 item vectors.*`cpu` or `gpu` extra"):
        ItemIndex.build(np.ones((3, 8), np.float32), CodeLayout.FLOAT32, 8, device="cpu")
    with pytest.raises(FaissMissing, match="FAISS's index of the items needs FAISS"):
        ItemIndex.build(encode_sign1(np.ones((3, 8))), CodeLayout.SIGN1, 8, device="cpu").serialize()


IMPORTS = textwrap.dedent(
    """
    import importlib, sys
    import numpy as np
    import index, index.bundle, index.cli, index.item_index, index.retrieval
    from index.codes import CodeLayout, encode_sign1
    from index.item_index import ItemIndex
    from index.retrieval.faiss_backend import has_faiss, set_cpu_threads
    try:
        importlib.import_module("faiss")
        sys.exit("faiss was importable")
    except ImportError:
        pass
    set_cpu_threads(2)  # nothing to set without FAISS, and no error
    codes = encode_sign1(np.random.default_rng(0).standard_normal((50, 16)))
    index = ItemIndex.build(codes, CodeLayout.SIGN1, 16)
    assert not has_faiss() and index.backend == "numpy", index.backend
    print(index.search(codes[:3], 5).ids.tolist())
    """
)


def test_the_index_package_imports_and_searches_in_a_process_without_faiss(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", IMPORTS], env=without_faiss(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    codes = encode_sign1(np.random.default_rng(0).standard_normal((50, 16)))
    want = ItemIndex.build(codes, CodeLayout.SIGN1, 16, backend="faiss-cpu").search(codes[:3], 5).ids.tolist()
    assert json.loads(run.stdout) == want


def test_recsys_index_without_faiss_refuses_build_in_one_line_and_checks_the_codes(
    tmp_path: Path, ste_bundle: TrainedBundle
) -> None:
    bundle = indexed_copy(ste_bundle, tmp_path / "copy")
    manifest = (bundle.path / MANIFEST).read_bytes()
    env = without_faiss(tmp_path / "no-faiss")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "index.cli", *args, "--bundle-root", str(bundle.path), "--device", "cpu"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    built = cli("build")
    assert built.returncode == 2 and built.stderr.count("\n") == 1, built.stderr
    assert built.stderr.startswith("recsys-index: error: recsys-index build (index.faiss is FAISS's index")
    assert "install the project with the `cpu` or `gpu` extra" in built.stderr
    assert (bundle.path / MANIFEST).read_bytes() == manifest  # nothing written
    checked = cli("check")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["stored_index"] is True and report["stored_index_checked"] is False
    assert (bundle.path / INDEX_FILE).is_file()
