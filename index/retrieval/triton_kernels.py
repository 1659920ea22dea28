"""The Triton kernels of the GPU Hamming search: distances of (query × item) tiles, the sample that sets each
query's bound, and the passes that collect the keys of the items within it.

How they fit together, and why, is in index.retrieval.triton_backend, which launches them; every size they take is
a ``tl.constexpr``, so one compiled variant serves each tile shape and code width.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _popcount(x, USE_POPC: tl.constexpr):
    if USE_POPC:
        return libdevice.popc(x)
    else:  # the interpreter has no popc: SWAR on unsigned words
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _tile_distances(
    queries_ptr, codes_ptr, q_offs, n_offs, q_mask, n_mask,
    n_queries, n_items,
    WORDS: tl.constexpr, USE_POPC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    distances = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.int32)
    # Row offsets in int64: words · n_items passes 2^31 beyond ~268M items of 256 bits (n_items may be a constexpr 1).
    stride = tl.zeros((1,), dtype=tl.int64) + n_items
    for word in tl.static_range(WORDS):
        row = stride * word
        q = tl.load(queries_ptr + word * n_queries + q_offs, mask=q_mask, other=0)
        c = tl.load(codes_ptr + row + n_offs, mask=n_mask, other=0)
        distances += _popcount(q[:, None] ^ c[None, :], USE_POPC)
    return distances


@triton.jit
def _code_words(codes_ptr, tile, n_items, BLOCK_N: tl.constexpr, FIRST: tl.constexpr, WIDTH: tl.constexpr,
                WORDS: tl.constexpr):  # fmt: skip
    """Words ``FIRST … FIRST + WIDTH`` of a tile's items, ``[BLOCK_N, WIDTH]``; words past ``WORDS`` and items past
    the catalogue (or a tile past the last) read as zeros."""
    n_offs = tile.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # int64: a prefetched tile may pass 2^31 items
    w_offs = FIRST + tl.arange(0, WIDTH)
    rows = w_offs[None, :].to(tl.int64) * n_items  # int64: words · n_items passes 2^31 on large catalogues
    mask = (n_offs < n_items)[:, None] & (w_offs[None, :] < WORDS)
    return tl.load(codes_ptr + rows + n_offs[:, None], mask=mask, other=0)


@triton.jit
def _unpacked(words):
    """``[BLOCK_N, WIDTH]`` words → their bits as int8 0/1, ``[32 · WIDTH, BLOCK_N]``: bit b of word w at row
    32·w + r(b), r reversing b's five bits (the order of the query signs' columns, ``query_signs``).

    Five ``join``s double the shifts each time (x, x >> 1; then those, >> 2; …), so each thread holds a whole
    word's 32 bits side by side and writes them to shared memory in wide stores, not one byte at a time."""
    spread = tl.join(words, words >> 1)
    spread = tl.join(spread, spread >> 2)
    spread = tl.join(spread, spread >> 4)
    spread = tl.join(spread, spread >> 8)
    spread = tl.join(spread, spread >> 16)
    bits = (spread & 1).to(tl.int8)
    return tl.trans(tl.reshape(bits, (words.shape[0], words.shape[1] * 32)))


@triton.jit
def _mma_scan_kernel(
    signs_ptr, min_dots_ptr, codes_ptr, counts_ptr, tile_flags_ptr,
    n_padded_queries, n_items, n_tiles, flag_words,
    WORDS: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
):  # fmt: skip
    """Tensor-core pass: which (query, item tile) pairs hold an item within the query's bound.

    A persistent program walks its share of the item tiles, loading the next tile's codes while it scores the
    current one (one tile per program left the SMs waiting on memory at small batches). A tile's item bits are
    unpacked once (int8 0/1; ``HEAD`` words, a power of two, then ``TAIL`` more, so 576-bit codes are 16 + 2
    words rather than 32) and multiplied with every query block's ±1 bits (``signs``, query-major, padded to
    whole blocks); an item is within the bound when its product reaches ``min_dots`` = popcount(q) − bound.
    Only tiles with such an item do more: they add their count to the query's total and set the tile's bit in
    the query's row of ``tile_flags`` for ``_gather_kernel``. Neither atomic returns a value, so nothing waits.
    """
    step = tl.num_programs(0)
    head_cols = tl.arange(0, HEAD * 32)
    tail_cols = HEAD * 32 + tl.arange(0, max(TAIL, 1) * 32)
    head_next = _code_words(codes_ptr, tl.program_id(0), n_items, BLOCK_N, 0, HEAD, WORDS)
    tail_next = _code_words(codes_ptr, tl.program_id(0), n_items, BLOCK_N, HEAD, max(TAIL, 1), WORDS)
    if ONE_BLOCK:  # every query in one block: its signs stay in registers for all of the program's tiles
        q_offs = tl.arange(0, BLOCK_Q)
        q_rows = q_offs * ((HEAD + TAIL) * 32)
        head_signs = tl.load(signs_ptr + q_rows[:, None] + head_cols[None, :])
        if TAIL > 0:
            tail_signs = tl.load(signs_ptr + q_rows[:, None] + tail_cols[None, :])
    for tile in range(tl.program_id(0), n_tiles, step):
        head_bits = _unpacked(head_next)  # [32 · HEAD, BLOCK_N]
        if TAIL > 0:
            tail_bits = _unpacked(tail_next)
        head_next = _code_words(codes_ptr, tile + step, n_items, BLOCK_N, 0, HEAD, WORDS)
        if TAIL > 0:
            tail_next = _code_words(codes_ptr, tile + step, n_items, BLOCK_N, HEAD, TAIL, WORDS)
        n_mask = tile * BLOCK_N + tl.arange(0, BLOCK_N) < n_items
        for q_start in range(0, n_padded_queries, BLOCK_Q):
            # Queries are the rows: a row's columns sit in one quad of threads, so the per-query sum over the
            # tile's items needs no exchange between warps (items as rows did: a barrier per block).
            q_offs = q_start + tl.arange(0, BLOCK_Q)
            if not ONE_BLOCK:
                q_rows = q_offs * ((HEAD + TAIL) * 32)
                head_signs = tl.load(signs_ptr + q_rows[:, None] + head_cols[None, :])
                if TAIL > 0:
                    tail_signs = tl.load(signs_ptr + q_rows[:, None] + tail_cols[None, :])
            dots = tl.dot(head_signs, head_bits, out_dtype=tl.int32)
            if TAIL > 0:
                dots = tl.dot(tail_signs, tail_bits, dots, out_dtype=tl.int32)
            min_dots = tl.load(min_dots_ptr + q_offs)
            hits = tl.sum(((dots >= min_dots[:, None]) & n_mask[None, :]).to(tl.int32), axis=1)
            listed = hits > 0  # most (query, tile) pairs hold no answer: their atomics are masked off
            tl.atomic_add(counts_ptr + q_offs, hits, mask=listed, sem="relaxed")
            flags = tile_flags_ptr + q_offs.to(tl.int64) * flag_words + tile // 32
            tl.atomic_or(flags, tl.full((BLOCK_Q,), 1, tl.int32) << (tile % 32), mask=listed, sem="relaxed")


@triton.jit
def _gather_kernel(
    queries_ptr, codes_ptr, bounds_ptr, tile_flags_ptr, entries_ptr, filled_ptr, keys_ptr,
    n_queries, n_items, flag_words, capacity, n_entries,
    WORDS: tl.constexpr, USE_POPC: tl.constexpr, BLOCK_N: tl.constexpr, ENTRIES: tl.constexpr,
):  # fmt: skip
    """Keys of the items within the bound in the tiles ``_mma_scan_kernel`` flagged, by popcounts.

    ``entries`` lists the non-zero flag words as (query, word) pairs (``torch.nonzero_static``, padded with
    -1); each program (``GATHER_WARPS`` warps, one by default) takes ``ENTRIES`` of them and scores the flagged
    tiles of each word in turn.
    Scoring a program's words side by side (``[ENTRIES, BLOCK_N]`` per step, 4 warps) is slower at large batches
    (its registers leave fewer warps resident to hide the loads), faster only at small ones.
    """
    first = tl.program_id(0) * ENTRIES
    stride = tl.zeros((1,), dtype=tl.int64) + n_items
    for entry in range(first, tl.minimum(first + ENTRIES, n_entries)):
        query = tl.load(entries_ptr + 2 * entry)
        if query >= 0:
            word = tl.load(entries_ptr + 2 * entry + 1)
            flags = tl.load(tile_flags_ptr + query * flag_words + word)
            bound = tl.load(bounds_ptr + query)
            while flags != 0:
                lowest = flags & -flags
                flags = flags ^ lowest
                tile = word * 32 + _popcount(lowest - 1, USE_POPC)
                n_offs = tile * BLOCK_N + tl.arange(0, BLOCK_N)
                n_mask = n_offs < n_items
                distances = tl.zeros((BLOCK_N,), dtype=tl.int32)
                for w in tl.static_range(WORDS):
                    q = tl.load(queries_ptr + w * n_queries + query)
                    c = tl.load(codes_ptr + stride * w + n_offs, mask=n_mask, other=0)
                    distances += _popcount(q ^ c, USE_POPC)
                hit = (distances <= bound) & n_mask
                start = tl.atomic_add(filled_ptr + query, tl.sum(hit.to(tl.int32)))
                slots = start + tl.cumsum(hit.to(tl.int32), axis=0) - 1
                keys = (distances.to(tl.int64) << 32) | n_offs.to(tl.int64)
                tl.store(keys_ptr + query * capacity + slots, keys, mask=hit & (slots < capacity))


@triton.jit
def _sample_kernel(
    queries_ptr, codes_ptr, out_ptr, n_queries, n_items, n_sample, n_groups,
    WORDS: tl.constexpr, USE_POPC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    """Distances of the first ``n_sample`` items of ``codes_ptr`` (the backend's spread sample, ``n_items`` of
    them), the nearest of each ``GROUP`` consecutive ones kept (``sample_group``): ``[n_queries, n_groups]`` int16."""
    q_offs = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    n_offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    q_mask, n_mask = q_offs < n_queries, n_offs < n_sample
    distances = _tile_distances(
        queries_ptr, codes_ptr, q_offs, n_offs, q_mask, n_mask, n_queries, n_items, WORDS, USE_POPC, BLOCK_Q, BLOCK_N
    )
    distances = tl.where(n_mask[None, :], distances, 0x7FFF)  # past the sample: never a group's minimum (int16 max)
    nearest = tl.min(tl.reshape(distances, (BLOCK_Q, BLOCK_N // GROUP, GROUP)), axis=2)
    g_offs = tl.program_id(0) * (BLOCK_N // GROUP) + tl.arange(0, BLOCK_N // GROUP)
    out = out_ptr + q_offs[:, None].to(tl.int64) * n_groups + g_offs[None, :]
    tl.store(out, nearest.to(tl.int16), mask=q_mask[:, None] & (g_offs < n_groups)[None, :])


@triton.jit
def _collect_kernel(
    queries_ptr, codes_ptr, bounds_ptr, counts_ptr, keys_ptr,
    n_queries, n_items, capacity,
    WORDS: tl.constexpr, USE_POPC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    q_offs = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    n_offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    q_mask, n_mask = q_offs < n_queries, n_offs < n_items
    distances = _tile_distances(
        queries_ptr, codes_ptr, q_offs, n_offs, q_mask, n_mask, n_queries, n_items, WORDS, USE_POPC, BLOCK_Q, BLOCK_N
    )
    bounds = tl.load(bounds_ptr + q_offs, mask=q_mask, other=-1)
    hit = (distances <= bounds[:, None]) & n_mask[None, :]
    if tl.max(hit.to(tl.int32)) > 0:  # most tiles hold no answer: skip their atomics and key arithmetic
        counters = counts_ptr + q_offs[:, None] + tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.int32)
        slots = tl.atomic_add(counters, tl.full((BLOCK_Q, BLOCK_N), 1, tl.int32), mask=hit)
        keys = (distances.to(tl.int64) << 32) | n_offs[None, :].to(tl.int64)
        out = keys_ptr + q_offs[:, None].to(tl.int64) * capacity + slots
        tl.store(out, keys, mask=hit & (slots < capacity))
