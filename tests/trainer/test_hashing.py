"""Hash codes are regenerable from the seed, balanced, the same for a node seen or unseen; the decoder is small."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from index.hash_codes import hop_parts, split_points
from trainer.cli import main as cli_main
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.hashing import (
    HashedInput,
    cold_user_bits,
    graph_codes,
    group_indices,
    parameter_count,
    projection_rows,
    side_codes,
)
from trainer.train import train


def test_projection_rows_are_regenerated_not_stored() -> None:
    full = projection_rows(np.arange(1000), 0, 64, seed=3, side=1)
    assert np.array_equal(projection_rows(np.array([7, 500]), 0, 64, seed=3, side=1), full[[7, 500]])
    assert np.array_equal(projection_rows(np.arange(1000), 32, 32, seed=3, side=1), full[:, 32:])
    assert not np.array_equal(projection_rows(np.arange(1000), 0, 64, seed=4, side=1), full)
    assert abs(full.mean()) < 0.02 and abs(full.std() - 1) < 0.02  # standard Gaussians


def test_bits_split_each_side_in_half(tiny_data: Dataset) -> None:
    bits, _ = side_codes(tiny_data.train, 64, seed=0, side=1)
    assert bits.shape == (tiny_data.n_users, 64)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) <= 0.05)


def test_a_new_user_with_the_same_items_gets_the_same_code(tiny_data: Dataset) -> None:
    codes, medians = graph_codes(tiny_data.train, 64, seed=5)
    for user in (0, 17, 123):
        items = tiny_data.train.indices[tiny_data.train.indptr[user] : tiny_data.train.indptr[user + 1]]
        assert np.array_equal(cold_user_bits(items, 64, medians["user"], seed=5), codes[user])


@pytest.mark.parametrize(
    ("bits", "hops"), [(64, (0,)), (64, (1,)), (64, (2,)), (192, (0, 2)), (144, (0, 1, 2)), (128, (2, 0, 1, 3))]
)
@pytest.mark.parametrize("drop_user", [False, True])  # an odd user count: np.median would be one user's value
def test_a_new_user_gets_the_same_code_as_a_trained_one(
    tiny_data: Dataset, bits: int, hops: tuple[int, ...], drop_user: bool
) -> None:
    train_rows = sp.csr_matrix(tiny_data.train[:-1] if drop_user else tiny_data.train)
    codes, arrays = graph_codes(train_rows, bits, seed=5, hops=hops)
    propagation = {k: v for k, v in arrays.items() if k not in ("user", "item")}
    assert ("item_basis" in propagation) == any(h >= 2 for h in hops)  # one hop regenerates z from the seed
    for user in range(train_rows.shape[0]):
        items = train_rows.indices[train_rows.indptr[user] : train_rows.indptr[user + 1]]
        got = cold_user_bits(items, bits, arrays["user"], seed=5, hops=hops, propagation=propagation)
        assert np.array_equal(got, codes[user]), user
    if max(hops) >= 1:
        with pytest.raises(ValueError, match="item degrees"):
            cold_user_bits(np.array([0, 1]), bits, arrays["user"], seed=5, hops=hops)
        with pytest.raises(ValueError, match="item degrees"):
            cold_user_bits(np.array([0, 1]), bits, arrays["user"], seed=5, hops=hops, propagation={})


def test_split_points_halve_each_column_and_match_no_value() -> None:
    values = np.array([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0], [2.0, 2.0, 5.0], [2.0, 7.0, 5.0], [9.0, 2.0, 5.0]], np.float32)
    points = split_points(values)
    assert not np.any(values == points[None, :])  # nobody sits on a threshold ...
    assert (values > points).sum(axis=0).tolist() == [2, 1, 0]  # ... the middle rank splits where values differ


def test_propagated_codes_agree_with_their_items_and_stay_balanced(tiny_data: Dataset) -> None:
    n_users = tiny_data.n_users
    coo = tiny_data.train.tocoo()
    random_items = np.random.default_rng(0).integers(0, tiny_data.n_items, coo.nnz)
    agreement = {}
    for hops in ((0,), (2,), (6,)):
        codes, _ = graph_codes(tiny_data.train, 128, seed=3, hops=hops)
        users, items = codes[:n_users], codes[n_users:]
        assert np.all(np.abs(codes.mean(axis=0) - 0.5) <= 0.05)  # median thresholds: every bit splits each side
        linked = (users[coo.row] == items[coo.col]).mean()
        unlinked = (users[coo.row] == items[random_items]).mean()
        agreement[hops] = linked - unlinked
        # Without the trivial √degree direction removed, many steps would make every bit the same degree test.
        correlation = np.corrcoef(users.T.astype(np.float64))
        assert np.abs(correlation[np.triu_indices(128, 1)]).mean() < 0.5  # 0.77 at 6 hops without
    assert abs(agreement[(0,)]) < 0.02  # raw rows: the two sides' projections are independent
    assert agreement[(2,)] > 0.1 and agreement[(6,)] > 0.1  # one projection: a user's bits match its items'


def test_hop_counts_split_the_bits_evenly() -> None:
    assert hop_parts(192, (0, 2)) == [(0, 96, 0), (96, 96, 2)]
    with pytest.raises(ValueError, match="split evenly"):
        hop_parts(100, (0, 1, 2))
    with pytest.raises(ValueError, match="hops"):
        hop_parts(64, (-1,))


def test_group_indices_read_each_group_as_an_integer() -> None:
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 1]], dtype=bool)
    assert group_indices(bits, 2).tolist() == [[1 + 4 + 8, 8]]
    with pytest.raises(ValueError, match="groups"):
        group_indices(np.zeros((1, 64), bool), 2)  # 32-bit groups: codebooks of 2^32 rows


def test_decoder_parameters_do_not_grow_with_nodes() -> None:
    small = HashedInput(np.zeros((10, 8), np.int64), 8, 64)
    large = HashedInput(np.zeros((100_000, 8), np.int64), 8, 64)
    assert parameter_count(small) == parameter_count(large) == 8 * 256 * 64 + 2 * (64 * 64 + 64)
    assert large().shape == (100_000, 64) and large.ego(torch.tensor([3, 4])).shape == (2, 64)
    deep = HashedInput(np.zeros((10, 8), np.int64), 8, 64, hidden=256, depth=2)  # Kang et al.-style decoder
    assert parameter_count(deep) == 8 * 256 * 64 + (64 * 256 + 256) + (256 * 256 + 256) + (256 * 64 + 64)
    assert deep().shape == (10, 64)
    with pytest.raises(ValueError, match="hidden layer"):
        HashedInput(np.zeros((10, 8), np.int64), 8, 64, depth=0)


def test_a_per_node_residual_adds_n_times_r_parameters_and_moves_only_its_node() -> None:
    plain = HashedInput(np.zeros((1000, 8), np.int64), 8, 64, seed=1)
    mixed = HashedInput(np.zeros((1000, 8), np.int64), 8, 64, residual_dim=4)
    assert parameter_count(mixed) == parameter_count(plain) + 1000 * 4 + 4 * 64
    assert mixed.residual is not None
    before = mixed().detach()
    with torch.no_grad():
        mixed.residual[7] += 1.0
    moved = (mixed().detach() - before).abs().sum(dim=1)
    assert moved[7] > 0.01 and moved[torch.arange(1000) != 7].max() < 1e-5  # same codes: only node 7's residual differs
    assert torch.allclose(mixed.ego(torch.tensor([7, 8])), mixed()[[7, 8]], atol=1e-6)


@pytest.mark.parametrize("residual_dim", [0, 3])
def test_the_fixed_lookup_backward_gives_embedding_bags_gradients(residual_dim: int) -> None:
    indices = np.random.default_rng(0).integers(0, 16, (500, 32))
    lookup, bag = (
        HashedInput(indices, 4, 8, residual_dim=residual_dim, codebook_backward=b) for b in ("lookup", "bag")
    )
    bag.load_state_dict(lookup.state_dict())
    nodes = torch.tensor([3, 3, 499, 0, 17, 3])  # a batch repeats nodes: their gradients add up
    weights = torch.randn(500, 8), torch.randn(6, 8)
    grads = []
    for layer in (lookup, bag):
        torch.testing.assert_close(layer.ego(nodes), layer()[nodes])
        ((layer() * weights[0]).sum() + (layer.ego(nodes) * weights[1]).sum()).backward()  # type: ignore[no-untyped-call]
        grads.append({name: p.grad for name, p in layer.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-5, atol=1e-5)
    assert lookup.codebook.grad is not None and lookup.codebook.grad.abs().sum() > 0


def test_loaded_codes_bring_their_lookup_with_them() -> None:
    rng = np.random.default_rng(1)
    trained = HashedInput(rng.integers(0, 16, (200, 8)), 4, 8)
    fresh = HashedInput(rng.integers(0, 16, (200, 8)), 4, 8)  # other codes: a checkpoint's replace them
    fresh.load_state_dict(trained.state_dict())
    reference = HashedInput(trained.groups_of.numpy(), 4, 8, codebook_backward="bag")
    reference.load_state_dict(trained.state_dict())
    for layer in (fresh, reference):
        layer().pow(2).sum().backward()  # type: ignore[no-untyped-call]
    assert fresh.codebook.grad is not None and reference.codebook.grad is not None
    torch.testing.assert_close(fresh.codebook.grad, reference.codebook.grad)


def test_training_with_the_hashed_input_learns(tiny_data: Dataset) -> None:
    config = TrainConfig.of(method="fp", dim=16, epochs=20, eval_every=5, batch_size=1024, lr=5e-3, device="cpu",
                            input_layer="hash", hash_bits=32, hash_groups=4)  # fmt: skip
    result = train(tiny_data, config)
    assert isinstance(result.model.inputs, HashedInput)
    assert (
        result.history[-1]["loss"] < 0.6 < result.history[0]["loss"]
        or result.history[-1]["loss"] < result.history[0]["loss"]
    )
    assert parameter_count(result.model.inputs) < (tiny_data.n_users + tiny_data.n_items) * 16 * 2


def test_resuming_under_other_hash_codes_is_refused(tmp_path: Path, tiny_data: Dataset) -> None:
    base = TrainConfig.of(
        method="fp", dim=16, epochs=2, eval_every=1, batch_size=2048, device="cpu", input_layer="hash",
        hash_bits=32, hash_groups=4, hash_hops=(0,), checkpoint_dir=tmp_path,
    )  # fmt: skip
    train(tiny_data, base)
    again = base.with_options(epochs=3, resume=True)
    assert train(tiny_data, again).epochs_trained == 3  # the same codes: it resumes
    with pytest.raises(ValueError, match="--resume: .* hash_hops \\[0\\], this run asks for \\[3\\]"):
        train(tiny_data, again.with_options(hash_hops=(3,)))
    with pytest.raises(ValueError, match="input_layer hash, this run asks for table"):
        train(tiny_data, again.with_options(input_layer="table"))


def test_hash_input_refuses_gnaq_and_warm_start(tiny_data: Dataset) -> None:
    with pytest.raises(ValueError, match="gnaq"):
        train(tiny_data, TrainConfig.of(method="gnaq", dim=16, epochs=1, device="cpu", input_layer="hash"))
    with pytest.raises(ValueError, match="warm start"):
        train(
            tiny_data, TrainConfig.of(method="ste", dim=16, epochs=1, device="cpu", input_layer="hash", warm_start=True)
        )


def test_unused_sparse_rows_get_codes_too() -> None:
    adjacency = sp.csr_matrix((np.ones(2, np.float32), ([0, 0], [1, 2])), shape=(3, 4))  # users 1, 2: no items
    bits, medians = side_codes(adjacency, 8, seed=1, side=1)
    assert bits.shape == (3, 8) and medians.shape == (8,)


def _saved_bytes(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """What autograd keeps for the backward while ``run`` builds its graph (bytes of saved tensors)."""
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, saved[0]


def test_a_chunked_decode_recomputes_chunks_with_the_same_gradients_and_saves_less() -> None:
    indices = np.random.default_rng(2).integers(0, 16, (1000, 16))
    whole = HashedInput(indices, 4, 32, codebook_backward="bag")
    chunked = HashedInput(indices, 4, 32, codebook_backward="bag", decode_chunk=300)  # 4 chunks, the last short
    chunked.load_state_dict(whole.state_dict())
    weights = torch.randn(1000, 32)
    saved = []
    for layer in (whole, chunked):
        out, nbytes = _saved_bytes(layer)
        saved.append(nbytes)
        (out * weights).sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(chunked().detach(), whole().detach())
    for (name, p), q in zip(whole.named_parameters(), chunked.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5)
    # whole: the codebook sums and the MLP's activations of every node; chunked: the chunks' node ids alone
    assert saved[1] * 20 < saved[0]
    with torch.no_grad():
        torch.testing.assert_close(chunked(), whole())


def test_a_chunked_decode_refuses_the_lookup_backward_and_negative_chunks() -> None:
    with pytest.raises(ValueError, match="bag"):
        HashedInput(np.zeros((10, 8), np.int64), 8, 64, decode_chunk=4)
    with pytest.raises(ValueError, match="decode_chunk"):
        HashedInput(np.zeros((10, 8), np.int64), 8, 64, codebook_backward="bag", decode_chunk=-1)


def test_decode_chunk_trains_the_model_a_whole_decode_trains(tiny_data: Dataset) -> None:
    base = TrainConfig.of(method="hq", bits=2, dim=16, epochs=3, eval_every=1, batch_size=1024, lr=5e-3,
                          device="cpu", input_layer="hash", hash_bits=32, hash_groups=4)  # fmt: skip
    whole = train(tiny_data, base)
    chunked = train(tiny_data, base.with_options(decode_chunk=100))
    inputs = chunked.model.inputs
    assert isinstance(inputs, HashedInput) and inputs.decode_chunk == 100 and inputs.lookup_t is None
    assert [h["epoch"] for h in chunked.history] == [h["epoch"] for h in whole.history]
    for ours, theirs in zip(chunked.history, whole.history, strict=True):  # the same steps, up to summation order
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(chunked.model.inputs(), whole.model.inputs(), rtol=1e-3, atol=1e-4)


def test_decode_chunk_is_refused_without_the_hashed_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--decode-chunk", "1000", "--bundle-root", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip() == (
        "recsys-train: error: --decode-chunk decodes the hashed input layer: use it with --input-layer hash"
    )
    assert cli_main(["--input-layer", "hash", "--hash-bits", "12", "--bundle-root", str(tmp_path / "b")]) == 2
    assert "--hash-bits 12 must split into --hash-groups 8 groups" in capsys.readouterr().err  # before any data
