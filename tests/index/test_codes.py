"""The Hamming path must equal the float inner product of dequantized codes, for 1 and 2 bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index.codes import (
    CodeLayout,
    as_query,
    check_pairing,
    dequantize,
    encode_planes2,
    encode_sign1,
    item_search_form,
    query_search_form,
    scores_from_distances,
    search_bits,
    search_dim,
    unpack_bits,
)
from index.hamming import exact_scores
from index.item_index import ItemIndex
from index.retrieval import backend_for_index, stored_index


def random_codes(layout: CodeLayout, rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    if layout is CodeLayout.SIGN1:
        return encode_sign1(rng.standard_normal((n, dim)))
    return encode_planes2(rng.integers(0, 4, size=(n, dim)))


@pytest.mark.parametrize(
    ("user_layout", "layout"),
    [
        (CodeLayout.SIGN1, CodeLayout.SIGN1),
        (CodeLayout.PLANES2, CodeLayout.PLANES2),
        (CodeLayout.PLANES2, CodeLayout.SIGN1),  # asymmetric: <2h + o, s> = 3d - 2·Hamming([H H O], [S S S])
    ],
)
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.sampled_from([8, 16, 64, 72]),
    n_items=st.integers(1, 60),
    n_users=st.integers(1, 6),
)
def test_faiss_hamming_scores_equal_dequantized_matmul(
    user_layout: CodeLayout, layout: CodeLayout, seed: int, dim: int, n_items: int, n_users: int
) -> None:
    rng = np.random.default_rng(seed)
    items = random_codes(layout, rng, n_items, dim)
    users = random_codes(user_layout, rng, n_users, dim)
    expected = dequantize(users, user_layout, dim) @ dequantize(items, layout, dim).T

    np.testing.assert_array_equal(exact_scores(users, items, layout, dim, user_layout), expected)
    result = ItemIndex.build(items, layout, dim, device="cpu", user_layout=user_layout).search(users, n_items)
    for row in range(n_users):
        order = np.lexsort((np.arange(n_items), -expected[row]))
        np.testing.assert_array_equal(result.ids[row], order)
        np.testing.assert_array_equal(result.scores[row], expected[row, order])


def test_sign_codes_round_trip_and_zero_is_negative() -> None:
    values = np.array([[0.5, -0.1, 0.0, 2.0, -3.0, 1e-9, -1e-9, 0.0]])
    np.testing.assert_array_equal(
        dequantize(encode_sign1(values), CodeLayout.SIGN1, 8), [[1, -1, -1, 1, -1, 1, -1, -1]]
    )


def test_two_bit_levels_decode_to_odd_integers() -> None:
    levels = np.array([[0, 1, 2, 3, 3, 2, 1, 0]])
    codes = encode_planes2(levels)
    assert codes.shape == (1, 2)
    np.testing.assert_array_equal(unpack_bits(codes[:, :1], 8)[0], levels[0] >> 1)
    np.testing.assert_array_equal(dequantize(codes, CodeLayout.PLANES2, 8), 2 * levels - 3)


def test_two_bit_levels_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="0..3"):
        encode_planes2(np.array([[4, 0, 0, 0, 0, 0, 0, 0]]))


def test_the_asymmetric_search_form_keeps_three_copies_of_the_item_code() -> None:
    rng = np.random.default_rng(0)
    items = random_codes(CodeLayout.SIGN1, rng, 4, 16)
    assert search_bits(CodeLayout.SIGN1, 16, CodeLayout.PLANES2) == 48
    form = item_search_form(items, CodeLayout.SIGN1, 16, CodeLayout.PLANES2)
    np.testing.assert_array_equal(form, np.concatenate([items] * 3, axis=1))
    # an item's code as a query (levels ±3) finds the item itself at distance 0
    as_queries = as_query(items, CodeLayout.SIGN1, 16, CodeLayout.PLANES2)
    queries = query_search_form(as_queries, CodeLayout.PLANES2, 16, CodeLayout.SIGN1)
    np.testing.assert_array_equal(queries, form)


@pytest.mark.parametrize(
    ("user", "item"),
    [
        (CodeLayout.SIGN1, CodeLayout.PLANES2),
        (CodeLayout.FLOAT32, CodeLayout.SIGN1),
        (CodeLayout.SIGN1, CodeLayout.FLOAT32),
    ],
)
def test_pairs_without_an_exact_search_form_are_refused(user: CodeLayout, item: CodeLayout) -> None:
    with pytest.raises(ValueError, match="cannot be scored against"):
        check_pairing(user, item)


@pytest.mark.parametrize(
    ("user_layout", "layout"),
    [
        (CodeLayout.SIGN1, CodeLayout.SIGN1),
        (CodeLayout.PLANES2, CodeLayout.PLANES2),
        (CodeLayout.PLANES2, CodeLayout.SIGN1),
        (CodeLayout.FLOAT32, CodeLayout.FLOAT32),
    ],
)
def test_a_backends_distances_between_search_forms_give_the_dequantized_inner_products(
    user_layout: CodeLayout, layout: CodeLayout
) -> None:
    """Every layout: search forms in, distances out, ``scores_from_distances`` gives the exact scores."""
    rng = np.random.default_rng(6)
    dim = 16
    if layout is CodeLayout.FLOAT32:
        items, users = rng.standard_normal((40, dim)).astype(np.float32), rng.standard_normal((3, dim))
    else:
        items, users = random_codes(layout, rng, 40, dim), random_codes(user_layout, rng, 3, dim)
    forms = item_search_form(items, layout, dim, user_layout)
    assert forms.shape[1] * (8 if layout.is_binary else 1) == search_dim(layout, dim, user_layout)
    backend = backend_for_index(stored_index(forms), device="cpu")
    assert backend is not None
    found = backend.search(query_search_form(users, user_layout, dim, layout), 40)
    scores = scores_from_distances(found.distances, layout, dim, user_layout)
    expected = dequantize(np.asarray(users), user_layout, dim) @ dequantize(items, layout, dim).T
    np.testing.assert_allclose(scores, np.take_along_axis(expected, found.ids, axis=1), rtol=1e-5, atol=1e-5)


def test_float_search_forms_are_the_vectors_and_distances_their_negated_inner_products() -> None:
    vectors = np.arange(6, dtype=np.float64).reshape(2, 3)
    for form in (item_search_form(vectors, CodeLayout.FLOAT32, 3), query_search_form(vectors, CodeLayout.FLOAT32, 3)):
        assert form.dtype == np.float32 and form.flags.c_contiguous
        np.testing.assert_array_equal(form, vectors)
    distances = np.array([[-2.5, 0.0, 1.25]], np.float32)
    np.testing.assert_array_equal(scores_from_distances(distances, CodeLayout.FLOAT32, 3), [[2.5, 0.0, -1.25]])
    assert search_dim(CodeLayout.FLOAT32, 3) == 3 and search_dim(CodeLayout.PLANES2, 8) == 72
