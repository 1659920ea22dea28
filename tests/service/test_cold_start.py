"""Inductive cold start: a user the model never saw is coded from the items given in the request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from index.bundle import COLD_START_FILE, Bundle, BundleError
from index.hash_codes import group_indices
from index.item_index import ItemIndex
from service.cold_start import ColdStart
from tests.conftest import RedisServer, TrainedBundle
from tests.service.test_api import local_settings, running_service
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.export import cold_start_section, export_bundle
from trainer.hashing import HashedInput
from trainer.train import train


@pytest.fixture(scope="module")
def hashed_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Dataset) -> TrainedBundle:
    config = TrainConfig.of(method="hq", bits=1, dim=32, epochs=15, batch_size=1024, lr=5e-3, eval_every=5,
                         device="cpu", input_layer="hash", hash_bits=32, hash_groups=4)  # fmt: skip
    root = tmp_path_factory.mktemp("bundles-hash-hq1")
    report = export_bundle(train(tiny_data, config), tiny_data, config, root)
    return TrainedBundle(root, report, tiny_data)


@pytest.fixture(scope="module")
def hashed_service(hashed_bundle: TrainedBundle, redis_server: RedisServer) -> Iterator[str]:
    with running_service(local_settings(hashed_bundle.root, redis_server.url)) as url:
        yield url


def test_a_known_users_history_gives_back_nearly_its_own_code(hashed_bundle: TrainedBundle) -> None:
    bundle = Bundle.load(hashed_bundle.root)
    assert bundle.cold_start is not None
    train_items = hashed_bundle.data.train
    agree: dict[bool, list[float]] = {True: [], False: []}
    for use_ego in (True, False):
        cold = ColdStart(bundle.cold_start, use_hashed_ego=use_ego)
        for row in range(bundle.manifest.n_users):
            items = train_items.indices[train_items.indptr[row] : train_items.indptr[row + 1]].astype(np.int64)
            if items.size:
                code = cold.code(items)
                agree[use_ego].append(np.mean(np.unpackbits(code) == np.unpackbits(bundle.user_codes[row])))
    # The same items give the same hash code and propagation; only the item degrees (exported with the
    # validation items) differ a little from the ones training used.
    assert np.mean(agree[True]) > 0.98
    assert np.mean(agree[False]) > 0.8  # the served default leaves the ego out, and stays close


def test_unknown_user_with_a_history_is_answered_from_its_code(
    hashed_service: str, hashed_bundle: TrainedBundle
) -> None:
    bundle = Bundle.load(hashed_bundle.root)
    history = [bundle.item_ids[i] for i in bundle.seen_items(0)]
    body = {"user_ids": ["newcomer", "no-history"], "k": 10, "histories": {"newcomer": [*history, "no-such-item"]}}
    response = httpx.post(f"{hashed_service}/recommend", json=body)
    assert response.status_code == 200
    newcomer, other = response.json()["results"]
    assert newcomer["source"] == "history" and other["source"] == "popular"
    got = [item["item_id"] for item in newcomer["items"]]
    assert not set(got) & set(history)  # what they told us they have seen is excluded
    rows = bundle.item_rows(history)
    assert bundle.cold_start is not None
    code = ColdStart(bundle.cold_start).code(rows)  # the service's default path
    expected = ItemIndex.for_bundle(bundle, device="cpu").search(code[None, :], 10, exclude=[rows])
    assert got == [bundle.item_ids[i] for i in expected.ids[0]]


def test_a_history_of_unknown_items_falls_back_to_popular(hashed_service: str) -> None:
    body = {"user_ids": ["newcomer"], "histories": {"newcomer": ["nope-1", "nope-2"]}}
    assert httpx.post(f"{hashed_service}/recommend", json=body).json()["results"][0]["source"] == "popular"


def test_methods_without_a_cold_start_path_use_popular(bigear_bundle: TrainedBundle, redis_server: RedisServer) -> None:
    bundle = Bundle.load(bigear_bundle.root)
    assert bundle.cold_start is None
    with running_service(local_settings(bigear_bundle.root, redis_server.url)) as url:
        body = {"user_ids": ["newcomer"], "histories": {"newcomer": [bundle.item_ids[0]]}}
        assert httpx.post(f"{url}/recommend", json=body).json()["results"][0]["source"] == "popular"


def test_a_corrupted_cold_start_file_is_refused(hashed_bundle: TrainedBundle, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(Bundle.load(hashed_bundle.root).path, copy)
    target = copy / COLD_START_FILE
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="cold_start.npz"):
        Bundle.load(copy)


@pytest.mark.parametrize("hops", [(0,), (1,), (3,)])
def test_serving_codes_a_known_users_items_as_training_coded_the_user(
    tiny_data: Dataset, hops: tuple[int, ...]
) -> None:
    config = TrainConfig.of(method="fp", dim=16, epochs=1, batch_size=1024, eval_every=1, device="cpu",
                         input_layer="hash", hash_bits=64, hash_groups=8, hash_hops=hops)  # fmt: skip
    result = train(tiny_data, config)
    inputs = result.model.inputs
    assert isinstance(inputs, HashedInput)
    section = cold_start_section(result.model, result.quantizer, tiny_data)
    assert section is not None and section.hashed is not None
    assert ("item_basis" in section.hashed.propagation) == (max(hops) >= 2)
    train_rows = tiny_data.train
    for user in (0, 9, 71):
        items = train_rows.indices[train_rows.indptr[user] : train_rows.indptr[user + 1]].astype(np.int64)
        bits = section.hashed.hash_bits(items)
        assert np.array_equal(group_indices(bits[None, :], 8)[0], inputs.groups_of[user].numpy())


def test_a_wider_deeper_decoder_decodes_the_same_in_serving(tiny_data: Dataset) -> None:
    config = TrainConfig.of(method="fp", dim=16, epochs=2, batch_size=1024, eval_every=1, device="cpu",
                         input_layer="hash", hash_bits=32, hash_groups=4, hash_hidden=24, hash_depth=2)  # fmt: skip
    result = train(tiny_data, config)
    inputs = result.model.inputs
    assert isinstance(inputs, HashedInput) and len([m for m in inputs.mlp if isinstance(m, torch.nn.Linear)]) == 3
    section = cold_start_section(result.model, result.quantizer, tiny_data)
    assert section is not None and section.hashed is not None and len(section.hashed.weights) == 3
    assert int(section.to_arrays()["hash_mlp_layers"]) == 3
    items = np.array([0, 3, 5], np.int64)
    bits = section.hashed.hash_bits(items)
    with torch.no_grad():
        want = inputs.decode(torch.from_numpy(group_indices(bits[None, :], 4))).numpy()[0]
    got = section.ego(items, hashed_ego=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
